//! Bearer tokens' signatures checked with ring's verifiers, installed as jsonwebtoken's
//! process-wide crypto provider. jsonwebtoken's RustCrypto backend (its other choice needs
//! aws-lc, a C library built with every build) took ~160 µs for an ES256 check; ring — already
//! in the process for TLS — verifies P-256 with hand-written field arithmetic. A token that
//! never verifies is checked anew each time, so this is what a flood of forged tokens costs
//! a node. Signing, and the algorithms edgegate does not accept (`HS*`, `ES384`, `PS*`),
//! stay with the RustCrypto backend.

use std::sync::OnceLock;

use jsonwebtoken::crypto::{rust_crypto, CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};

/// A key of an accepted algorithm, checked with ring.
struct RingVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> std::result::Result<(), Error> {
        let checked = match (self.algorithm, self.key.kind()) {
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point).verify(message, signature)
            }
            (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(key)) => {
                UnparsedPublicKey::new(&sig::ED25519, key).verify(message, signature)
            }
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(&sig::RSA_PKCS1_2048_8192_SHA256, message, signature)
            }
            (Algorithm::RS256, DecodingKeyKind::SecretOrDer(der)) => {
                UnparsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, der).verify(message, signature)
            }
            _ => Err(ring::error::Unspecified),
        };
        checked.map_err(|_| Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let family = match algorithm {
        Algorithm::ES256 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        Algorithm::RS256 => AlgorithmFamily::Rsa,
        _ => return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    };
    // A key of another family never checks a token of this algorithm (no HMAC secret
    // taken for an RSA key, or the other way round).
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier { algorithm: *algorithm, key: key.clone() }))
}

static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();

/// Makes ring's verifiers jsonwebtoken's for this process; `true` when they are. jsonwebtoken
/// settles on its provider at its first use, so every entry point of this crate that uses it
/// calls this first (a process that used it before keeps the RustCrypto backend: slower, as
/// correct).
pub(crate) fn install() -> bool {
    let ours =
        PROVIDER.get_or_init(|| CryptoProvider { verifier_factory: verifier, ..rust_crypto::DEFAULT_PROVIDER.clone() });
    match ours.install_default() {
        Ok(()) => true,
        Err(current) => std::ptr::eq(current, ours),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{forge, Issuer};

    /// The signed part and the signature of a compact token.
    fn parts(token: &str) -> (&str, Vec<u8>) {
        use base64::Engine;
        let (message, signature) = token.rsplit_once('.').expect("a compact token");
        (message, base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).expect("base64url"))
    }

    fn jwks_key(issuer: &Issuer, kid: &str) -> DecodingKey {
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&issuer.jwks).expect("jwks");
        let jwk = set.keys.iter().find(|k| k.common.key_id.as_deref() == Some(kid)).expect("kid");
        DecodingKey::from_jwk(jwk).expect("key")
    }

    #[test]
    fn ring_checks_es256_and_eddsa_signatures_and_refuses_forgeries() {
        let issuer = Issuer::new();
        assert!(install(), "ring's verifiers are jsonwebtoken's in this process");
        for (alg, kid) in [(Algorithm::ES256, "es"), (Algorithm::EdDSA, "ed")] {
            let key = jwks_key(&issuer, kid);
            let check = verifier(&alg, &key).expect("a ring verifier");
            let good = issuer.token(alg, serde_json::json!({}));
            let (message, signature) = parts(&good);
            assert!(check.verify(message.as_bytes(), &signature).is_ok(), "{alg:?}: a good signature");
            // The claims of another token under this one's signature.
            let forged = forge(&issuer.token(alg, serde_json::json!({"role": "admin"})), &good);
            let (message, signature) = parts(&forged);
            assert!(check.verify(message.as_bytes(), &signature).is_err(), "{alg:?}: a forgery");
            // One bit of the signature flipped.
            let (message, mut signature) = parts(&good);
            signature[7] ^= 1;
            assert!(check.verify(message.as_bytes(), &signature).is_err(), "{alg:?}: a flipped bit");
        }
    }

    #[test]
    fn rs256_signatures_are_checked_with_the_jwks_modulus() {
        use rsa::traits::PublicKeyParts;
        use rsa::RsaPrivateKey;
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa keygen");
        let key = DecodingKey::from_rsa_raw_components(&private.n().to_bytes_be(), &private.e().to_bytes_be());
        let signing = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private);
        let message = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaXRpemVuLTQyIn0";
        let signature = rsa::signature::SignatureEncoding::to_vec(&rsa::signature::Signer::sign(&signing, message));
        let check = verifier(&Algorithm::RS256, &key).expect("a ring verifier");
        assert!(check.verify(message, &signature).is_ok());
        assert!(check.verify(b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9", &signature).is_err());
    }

    #[test]
    fn a_key_of_another_family_checks_nothing() {
        let issuer = Issuer::new();
        let ec = jwks_key(&issuer, "es");
        // An EC point offered as an RSA or Ed25519 key, a secret as an EC key: refused
        // before any check.
        for alg in [Algorithm::RS256, Algorithm::EdDSA] {
            assert!(verifier(&alg, &ec).is_err(), "{alg:?} with an EC key");
        }
        assert!(verifier(&Algorithm::ES256, &DecodingKey::from_secret(b"secret")).is_err());
    }
}
