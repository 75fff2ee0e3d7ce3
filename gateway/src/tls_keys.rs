//! The private keys of the listeners' certificates. An RSA key signs with aws-lc (through
//! aws-lc-rs): a full handshake's signature is most of its CPU, and ring's RSA 2048 signing
//! takes ~420 µs of a core where aws-lc's takes ~220 (OpenSSL's, which nginx uses, ~210).
//! The worker makes that signature inside one poll of the handshake, so it is also the
//! longest step a connected client's request can wait behind. Other keys (ECDSA, Ed25519),
//! and everything else TLS does, stay with ring.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as alc, KeyPair, RsaEncoding, RsaKeyPair};
use pingora_rustls::sign::{Signer, SigningKey};
use pingora_rustls::{CryptoProvider, PrivateKeyDer, SignatureScheme};
use rustls::crypto::KeyProvider;
use rustls::pki_types::{alg_id, SubjectPublicKeyInfoDer};
use rustls::SignatureAlgorithm;

/// The schemes an RSA key signs with, in the order of preference (rustls' own): PSS before
/// PKCS#1 v1.5, larger hashes first.
const SCHEMES: [(SignatureScheme, &dyn RsaEncoding); 6] = [
    (SignatureScheme::RSA_PSS_SHA512, &alc::RSA_PSS_SHA512),
    (SignatureScheme::RSA_PSS_SHA384, &alc::RSA_PSS_SHA384),
    (SignatureScheme::RSA_PSS_SHA256, &alc::RSA_PSS_SHA256),
    (SignatureScheme::RSA_PKCS1_SHA512, &alc::RSA_PKCS1_SHA512),
    (SignatureScheme::RSA_PKCS1_SHA384, &alc::RSA_PKCS1_SHA384),
    (SignatureScheme::RSA_PKCS1_SHA256, &alc::RSA_PKCS1_SHA256),
];

/// An RSA private key signing with aws-lc.
struct RsaKey(Arc<RsaKeyPair>);

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaKey(aws-lc)")
    }
}

impl RsaKey {
    fn parse(der: &PrivateKeyDer<'_>) -> Option<RsaKey> {
        let pair = match der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()).ok()?,
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).ok()?,
            _ => return None,
        };
        Some(RsaKey(Arc::new(pair)))
    }
}

impl SigningKey for RsaKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let (scheme, encoding) = SCHEMES.iter().find(|(s, _)| offered.contains(s))?;
        Some(Box::new(RsaSigner { key: Arc::clone(&self.0), scheme: *scheme, encoding: *encoding }))
    }

    /// For rustls' check that the key is the certificate's.
    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(rustls::sign::public_key_to_spki(&alg_id::RSA_ENCRYPTION, self.0.public_key()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }
}

struct RsaSigner {
    key: Arc<RsaKeyPair>,
    scheme: SignatureScheme,
    encoding: &'static dyn RsaEncoding,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaSigner({:?}, aws-lc)", self.scheme)
    }
}

impl Signer for RsaSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(self.encoding, &SystemRandom::new(), message, &mut signature)
            .map_err(|_| rustls::Error::General("RSA signing failed".into()))?;
        Ok(signature)
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// Loads RSA keys for aws-lc, any other through `fallback` (the process's provider: ring).
#[derive(Debug)]
struct Keys {
    fallback: &'static dyn KeyProvider,
}

impl KeyProvider for Keys {
    fn load_private_key(&self, der: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        match RsaKey::parse(&der) {
            Some(key) => Ok(Arc::new(key)),
            None => self.fallback.load_private_key(der),
        }
    }
}

static KEYS: OnceLock<Keys> = OnceLock::new();
static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();

/// `provider` (the process's, which never changes once installed) with its private keys
/// loaded as above: what certificates are loaded with.
pub fn key_loading(provider: &CryptoProvider) -> &'static CryptoProvider {
    PROVIDER.get_or_init(|| {
        let keys = KEYS.get_or_init(|| Keys { fallback: provider.key_provider });
        CryptoProvider { key_provider: keys, ..provider.clone() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    const RSA_PEM: &str = include_str!("../tests/e2e/fixtures/test-only-rsa2048.key");

    fn provider() -> &'static CryptoProvider {
        pingora_rustls::install_default_crypto_provider();
        key_loading(CryptoProvider::get_default().expect("the process's provider"))
    }

    #[test]
    fn an_rsa_key_signs_with_aws_lc_and_the_signature_verifies() {
        let der = PrivateKeyDer::from_pem_slice(RSA_PEM.as_bytes()).expect("the fixture's key");
        let key = provider().key_provider.load_private_key(der).expect("loads");
        assert_eq!(format!("{key:?}"), "RsaKey(aws-lc)");
        assert_eq!(key.algorithm(), SignatureAlgorithm::RSA);
        // A TLS 1.3 client offers PSS; one that only checks PKCS#1 v1.5 gets that; one with
        // no RSA scheme gets nothing from this key.
        let public = key.public_key().expect("its public key");
        let spki = rsa_public_key(&public);
        for (offered, verify) in [
            (
                vec![SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::RSA_PSS_SHA256],
                &ring::signature::RSA_PSS_2048_8192_SHA256,
            ),
            (vec![SignatureScheme::RSA_PKCS1_SHA256], &ring::signature::RSA_PKCS1_2048_8192_SHA256),
        ] {
            let signer = key.choose_scheme(&offered).expect("a scheme");
            assert_eq!(signer.scheme(), offered[offered.len() - 1]);
            let message = b"the server's handshake transcript";
            let signature = signer.sign(message).expect("signs");
            let checker = ring::signature::UnparsedPublicKey::new(verify, &spki);
            assert!(checker.verify(message, &signature).is_ok(), "{:?}", signer.scheme());
            assert!(checker.verify(b"another transcript", &signature).is_err());
        }
        assert!(key.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).is_none());
    }

    #[test]
    fn other_keys_load_as_before() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let der = PrivateKeyDer::from_pem_slice(pair.serialize_pem().as_bytes()).expect("pem");
        let key = provider().key_provider.load_private_key(der).expect("loads");
        assert_eq!(key.algorithm(), SignatureAlgorithm::ECDSA);
        assert_ne!(format!("{key:?}"), "RsaKey(aws-lc)");
    }

    /// The `RSAPublicKey` inside a SubjectPublicKeyInfo (what ring's RSA verifiers take).
    fn rsa_public_key(spki: &SubjectPublicKeyInfoDer<'_>) -> Vec<u8> {
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_ref()).expect("an SPKI");
        parsed.subject_public_key.data.to_vec()
    }
}
