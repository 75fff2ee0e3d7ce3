//! The HTTP client edgegate sends to collectors with: the audit log's centre
//! (`audit.forward.url`) and the OpenTelemetry endpoint (`tracing.otlp.endpoint`).
//!
//! Both take the same care: no redirect is followed (a `301` or `302` to a POST is followed
//! as a GET without the body, and a 200 to that GET would count records or spans delivered
//! that no collector received), each request has a timeout, and an `https://` collector is
//! verified against the system's CA certificates — those of `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` when set, as for TLS upstreams, else the distribution's bundle. A
//! certificate in them that the TLS library cannot take as a root is skipped (and said
//! once), not allowed to fail the client: one odd certificate an operator added to the
//! system's bundle must not cost the collector its TLS, nor leave a client with other rules.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgegate_config::files;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

/// Where distributions keep their whole CA bundle, first found first (Debian and its
/// derivatives, then the Red Hat family).
const SYSTEM_BUNDLES: [&str; 2] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

/// A client for a collector: requests time out after `timeout`, no redirect is followed,
/// `https://` is verified against [`system_roots`]. An error only when the TLS library
/// cannot be set up at all; then there is no client (never one with other rules).
/// `field` names the collector's setting in what is logged.
pub fn client(field: &str, timeout: Duration) -> Result<reqwest::Client, String> {
    let roots = system_roots(std::env::var_os("SSL_CERT_FILE"), std::env::var_os("SSL_CERT_DIR"));
    if roots.skipped > 0 || !roots.unreadable.is_empty() {
        tracing::warn!(
            collector = field,
            skipped = roots.skipped,
            unreadable = ?roots.unreadable,
            trusted = roots.certificates.len(),
            "some of the system's CA certificates cannot be used to verify a collector; skipped"
        );
    }
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    for der in roots.certificates {
        let certificate = reqwest::Certificate::from_der(&der).map_err(|e| format!("a CA certificate: {e}"))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|e| format!("the collector's HTTP client: {e}"))
}

/// The CA certificates a collector is verified against.
#[derive(Debug, Default)]
pub struct Roots {
    /// Each one the TLS library takes as a trust anchor (DER), once (a hashed directory
    /// often holds the bundle's certificates again).
    pub certificates: Vec<Vec<u8>>,
    /// Certificates found that it does not (malformed, or of a kind it cannot use).
    pub skipped: usize,
    /// Files named that could not be read (missing, not a regular file, too large).
    pub unreadable: Vec<PathBuf>,
}

/// The CA certificates of `cert_file` and of the files in `cert_dir` (the values of
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`); with neither, of the first system bundle found.
/// Each file read is a regular file of at most [`files::CA_BUNDLE`] bytes.
pub fn system_roots(cert_file: Option<std::ffi::OsString>, cert_dir: Option<std::ffi::OsString>) -> Roots {
    let mut roots = Roots::default();
    let mut anchors = rustls::RootCertStore::empty();
    let mut take = |path: &Path, roots: &mut Roots| {
        let Ok(pem) = files::read(path, files::CA_BUNDLE) else {
            roots.unreadable.push(path.to_owned());
            return;
        };
        for der in CertificateDer::pem_slice_iter(&pem) {
            match der {
                Ok(der) if roots.certificates.iter().any(|c| c[..] == der[..]) => {}
                Ok(der) if anchors.add(der.clone()).is_ok() => roots.certificates.push(der.to_vec()),
                _ => roots.skipped += 1,
            }
        }
    };
    if cert_file.is_none() && cert_dir.is_none() {
        if let Some(bundle) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
            take(bundle, &mut roots);
        }
        return roots;
    }
    if let Some(file) = cert_file {
        take(Path::new(&file), &mut roots);
    }
    if let Some(dir) = cert_dir {
        // OpenSSL's hashed directory: each certificate in a file of its own (`*.0`), often
        // a link to the bundle's source; a file that is no certificate adds nothing.
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.sort();
        for name in names.iter().filter(|p| p.is_file()) {
            take(name, &mut roots);
        }
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(der: &[u8]) -> String {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----\n")
    }

    fn ca(name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).expect("certificate").der().to_vec()
    }

    /// A bundle holding, beside two good CAs, a certificate no TLS library takes (framed as
    /// PEM, its DER a bare integer): the two are trusted, the odd one skipped and counted —
    /// it does not cost the others. A directory's files are read as well; a missing file
    /// is named.
    #[test]
    fn certificates_the_tls_library_cannot_take_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second, third) = (ca("first"), ca("second"), ca("third"));
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, pem(&first) + &pem(&[0x02, 0x01, 0x00]) + &pem(&second)).expect("write");
        let hashed = dir.path().join("hashed");
        std::fs::create_dir(&hashed).expect("mkdir");
        std::fs::write(hashed.join("1a2b3c4d.0"), pem(&third)).expect("write");
        std::fs::write(hashed.join("README"), "not a certificate").expect("write");
        // The bundle's first certificate again, as a hashed directory holds it: once.
        std::fs::write(hashed.join("5e6f7a8b.0"), pem(&first)).expect("write");

        let roots = system_roots(Some(bundle.clone().into()), Some(hashed.into()));
        assert_eq!(roots.certificates, vec![first.clone(), second, third]);
        assert_eq!(roots.skipped, 1);
        assert!(roots.unreadable.is_empty(), "{:?}", roots.unreadable);
        client("audit.forward", Duration::from_secs(1)).expect("a client with the good ones");

        let missing = dir.path().join("missing.pem");
        let roots = system_roots(Some(missing.clone().into()), None);
        assert_eq!((roots.certificates.len(), roots.unreadable), (0, vec![missing]));
        // A FIFO is not waited on: it is not a regular file.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert_eq!(system_roots(Some(fifo.clone().into()), None).unreadable, vec![fifo]);
        let roots = system_roots(Some(bundle.into()), None);
        assert_eq!((roots.certificates.first(), roots.skipped), (Some(&first), 1));
    }
}
