//! The process's TLS crypto: ring's provider with two parts taken from aws-lc (through
//! aws-lc-rs), where it is much the faster on the machines measured:
//! - an RSA certificate's key signs with aws-lc: a full handshake's signature is most of
//!   its CPU, and ring's RSA 2048 signing takes ~420 µs of a core where aws-lc's takes ~220
//!   (OpenSSL's, which nginx uses, ~210). The worker makes that signature inside one poll of
//!   the handshake, so it is also the longest step a connected client's request can wait
//!   behind;
//! - the X25519 key exchange (what nearly every client offers; made on every full handshake
//!   and every TLS 1.3 resumption): ~27 µs with aws-lc for the server's key and the shared
//!   secret, ~47 µs with ring.
//!
//! Other keys (ECDSA, Ed25519), the other groups, the record encryption and the tickets stay
//! with ring. Installed as the process's default provider before anything uses TLS; the
//! certificates are loaded through it whatever the default.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::agreement;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as alc, KeyPair, RsaEncoding, RsaKeyPair};
use pingora_rustls::sign::{Signer, SigningKey};
use pingora_rustls::{CryptoProvider, PrivateKeyDer, SignatureScheme};
use rustls::crypto::{ActiveKeyExchange, KeyProvider, SharedSecret, SupportedKxGroup};
use rustls::pki_types::{alg_id, SubjectPublicKeyInfoDer};
use rustls::{NamedGroup, SignatureAlgorithm};

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

/// X25519 from aws-lc.
struct X25519;

impl std::fmt::Debug for X25519 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("X25519 (aws-lc)")
    }
}

impl SupportedKxGroup for X25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &SystemRandom::new())
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let public = private.compute_public_key().map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        Ok(Box::new(X25519Exchange { private, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Exchange {
    private: agreement::EphemeralPrivateKey,
    public: agreement::PublicKey,
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let invalid = || rustls::Error::from(rustls::PeerMisbehaved::InvalidKeyShare);
        if peer.len() != 32 {
            return Err(invalid());
        }
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        // aws-lc refuses a peer key of small order (an all-zero shared secret).
        agreement::agree_ephemeral(self.private, peer, (), |secret| Ok(SharedSecret::from(secret)))
            .map_err(|()| invalid())
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_ref()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// ring's provider with RSA keys loaded for aws-lc and X25519 from aws-lc (see the module's
/// comment).
pub fn provider() -> &'static CryptoProvider {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    static KEYS: OnceLock<Keys> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let ring = rustls::crypto::ring::default_provider();
        let keys = KEYS.get_or_init(|| Keys { fallback: ring.key_provider });
        let kx_groups = ring
            .kx_groups
            .iter()
            .map(|&g| if g.name() == NamedGroup::X25519 { &X25519 as &dyn SupportedKxGroup } else { g })
            .collect();
        CryptoProvider { kx_groups, key_provider: keys, ..ring }
    })
}

/// Makes [`provider`] the process's default, before anything uses TLS (Pingora installs
/// ring's where none is; it then keeps this one). `true` when it is the default.
pub fn install() -> bool {
    let ours = provider();
    let _ = ours.clone().install_default();
    // The default is a copy: it is this one if it loads keys as this one does.
    CryptoProvider::get_default().is_some_and(|current| std::ptr::addr_eq(current.key_provider, ours.key_provider))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    const RSA_PEM: &str = include_str!("../tests/e2e/fixtures/test-only-rsa2048.key");

    fn provider() -> &'static CryptoProvider {
        super::provider()
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

    #[test]
    fn the_x25519_exchange_agrees_with_rings_and_refuses_bad_peer_keys() {
        let group = provider().kx_groups.iter().find(|g| g.name() == NamedGroup::X25519).expect("X25519 offered");
        assert_eq!(format!("{group:?}"), "X25519 (aws-lc)");
        // A client using ring's X25519 and this server come to the same secret.
        let ring_x25519 = rustls::crypto::ring::kx_group::X25519;
        let server = group.start().expect("a key");
        let client = ring_x25519.start().expect("a key");
        let client_pub = client.pub_key().to_vec();
        let ours = server.pub_key().to_vec();
        let from_server = server.complete(&client_pub).expect("agrees");
        let from_client = client.complete(&ours).expect("agrees");
        assert_eq!(from_server.secret_bytes(), from_client.secret_bytes());
        // A key share of the wrong length, or of small order (all zeros: the shared secret
        // would be zero), is the peer misbehaving.
        for bad in [vec![9; 31], vec![0; 32]] {
            let err = group.start().expect("a key").complete(&bad).err().expect("refused");
            assert_eq!(err, rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::InvalidKeyShare), "{bad:?}");
        }
    }

    #[test]
    fn it_is_the_processs_provider() {
        assert!(install(), "edgegate's provider is the default once installed");
        let default = CryptoProvider::get_default().expect("a default");
        let names: Vec<_> = default.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(names.first(), Some(&NamedGroup::X25519), "X25519 still first: {names:?}");
        assert_eq!(format!("{:?}", default.kx_groups[0]), "X25519 (aws-lc)");
    }

    /// The `RSAPublicKey` inside a SubjectPublicKeyInfo (what ring's RSA verifiers take).
    fn rsa_public_key(spki: &SubjectPublicKeyInfoDer<'_>) -> Vec<u8> {
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_ref()).expect("an SPKI");
        parsed.subject_public_key.data.to_vec()
    }
}
