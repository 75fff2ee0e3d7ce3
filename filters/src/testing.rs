//! Test support, compiled for this crate's tests and for other crates' tests through the
//! `test-support` feature: a token issuer with freshly generated ES256 and EdDSA keys, its
//! JWKS, and signing; the fuzz targets' corpora. Never part of a production build.

/// Every input in a fuzz target's corpus (`fuzz/corpus/TARGET`), for replaying it as a
/// regression test; at least `min` of them, or the corpus went missing.
pub fn fuzz_corpus(target: &str, min: usize) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("fuzz corpus directory")
        .map(|entry| std::fs::read(entry.expect("entry").path()).expect("corpus file"))
        .collect();
    assert!(inputs.len() >= min, "{} holds {} inputs", dir.display(), inputs.len());
    inputs
}

/// A token issuer for tests: ES256 and EdDSA keys generated on the spot, their JWKS,
/// and signing.
pub struct Issuer {
    keys: Vec<(jsonwebtoken::Algorithm, jsonwebtoken::EncodingKey)>,
    pub jwks: String,
    /// The private keys as PEM, by algorithm (kid `es` for ES256, `ed` for EdDSA).
    pub pems: Vec<(jsonwebtoken::Algorithm, String)>,
}

pub const ISSUER: &str = "https://id.example.gov.cn";
pub const AUDIENCE: &str = "zwfw";

impl Default for Issuer {
    fn default() -> Self {
        Self::new()
    }
}

impl Issuer {
    pub fn new() -> Issuer {
        use jsonwebtoken::{Algorithm, EncodingKey};
        crate::token_crypto::install();
        let mut keys = Vec::new();
        let mut jwks = Vec::new();
        let mut pems = Vec::new();
        for (alg, rc) in [(Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256), (Algorithm::EdDSA, &rcgen::PKCS_ED25519)]
        {
            let pair = rcgen::KeyPair::generate_for(rc).expect("keygen");
            let pem = pair.serialize_pem();
            let raw = pair.public_key_raw();
            let (key, jwk) = match alg {
                Algorithm::ES256 => (
                    EncodingKey::from_ec_pem(pem.as_bytes()),
                    serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "es", "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])}),
                ),
                _ => (
                    EncodingKey::from_ed_pem(pem.as_bytes()),
                    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64url(raw)}),
                ),
            };
            keys.push((alg, key.expect("encoding key")));
            jwks.push(jwk);
            pems.push((alg, pem));
        }
        Issuer { keys, jwks: serde_json::json!({ "keys": jwks }).to_string(), pems }
    }

    /// A token with these claims on top of valid defaults (sub, iss, aud, exp in 5 min).
    pub fn token(&self, alg: jsonwebtoken::Algorithm, overrides: serde_json::Value) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut claims = serde_json::json!({"sub": "citizen-42", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "role": "citizen"});
        if let (Some(c), Some(o)) = (claims.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                c.insert(k.clone(), v.clone());
            }
        }
        let (_, key) = self.keys.iter().find(|(a, _)| *a == alg).expect("algorithm");
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(if alg == jsonwebtoken::Algorithm::ES256 { "es" } else { "ed" }.into());
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    }
}

/// The header and claims of `claimed` under the signature of `signed`: a well-formed token
/// whose signature never verifies (a forgery, e.g. an administrator's claims under a
/// citizen's signature).
pub fn forge(claimed: &str, signed: &str) -> String {
    let signature = signed.rsplit('.').next().expect("signature");
    format!("{}.{signature}", claimed.rsplit_once('.').expect("three parts").0)
}

pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// The `[patch.crates-io]` lines of a manifest: each patched crate and the path of its
    /// copy, as written.
    fn patches(manifest: &str) -> Vec<(String, String)> {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest)).expect("manifest");
        text.lines()
            .skip_while(|l| l.trim() != "[patch.crates-io]")
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with('['))
            .filter_map(|l| {
                let (name, rest) = l.split_once('=')?;
                let path = rest.split('"').nth(1)?;
                Some((name.trim().to_owned(), path.to_owned()))
            })
            .collect()
    }

    /// The packages of a lockfile: each name, and whether it comes from a registry (a path
    /// copy, such as a patched crate, has no `source`).
    fn locked(lockfile: &str) -> Vec<(String, bool)> {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(lockfile)).expect("lockfile");
        text.split("[[package]]")
            .skip(1)
            .map(|block| {
                let block = block.split("\n[[").next().unwrap_or_default();
                let name = block.lines().find_map(|l| l.strip_prefix("name = ")).unwrap_or_default();
                (name.trim_matches('"').to_owned(), block.lines().any(|l| l.starts_with("source = ")))
            })
            .collect()
    }

    // The fuzz targets are a workspace of their own, which inherits neither the workspace's
    // patches nor its lockfile: built against the crates as published, the filters did not
    // compile there (regorus without edgegate's patches), and with versions newer than the
    // patched copies a patch goes unused. Every crate the workspace patches that the fuzz
    // build uses is the workspace's copy: patched to the same path, and locked as that
    // path (no registry source).
    #[test]
    fn fuzz_builds_with_the_workspaces_patched_crates() {
        let workspace = patches("../Cargo.toml");
        assert!(workspace.len() >= 5, "the workspace's patches: {workspace:?}");
        let fuzz = patches("../fuzz/Cargo.toml");
        for (name, path) in &fuzz {
            let theirs = workspace.iter().find(|(n, _)| n == name).map(|(_, p)| format!("../{p}"));
            assert_eq!(theirs.as_ref(), Some(path), "fuzz/ patches {name} as the workspace does");
        }
        let packages = locked("../fuzz/Cargo.lock");
        assert!(packages.iter().any(|(n, _)| n == "edgegate-filters"), "the fuzz lockfile: {packages:?}");
        for (name, _) in &workspace {
            for (_, from_registry) in packages.iter().filter(|(n, _)| n == name) {
                assert!(!from_registry, "the fuzz build takes {name} as published, not the workspace's copy");
                assert!(fuzz.iter().any(|(n, _)| n == name), "fuzz/Cargo.toml does not patch {name}");
            }
        }
    }
}
