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
//! - X25519MLKEM768, the hybrid of ML-KEM-768 (FIPS 203) and X25519 that browsers and
//!   mobile TLS stacks now offer first: a session's keys then stay secret even against
//!   whoever records the traffic today and has a quantum computer later (citizens' data are
//!   kept for years). Preferred over every other group; TLS 1.3 only. ring has no ML-KEM.
//!
//! Other keys (ECDSA, Ed25519), the other groups, the record encryption and the tickets stay
//! with ring. Installed as the process's default provider before anything uses TLS; the
//! certificates are loaded through it whatever the default.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::agreement;
use aws_lc_rs::kem;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as alc, KeyPair, RsaEncoding, RsaKeyPair};
use pingora_rustls::sign::{Signer, SigningKey};
use pingora_rustls::{CryptoProvider, PrivateKeyDer, SignatureScheme};
use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, KeyProvider, SharedSecret, SupportedKxGroup};
use rustls::pki_types::{alg_id, SubjectPublicKeyInfoDer};
use rustls::{NamedGroup, ProtocolVersion, SignatureAlgorithm};

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
        if peer.len() != 32 {
            return Err(invalid_share());
        }
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        // aws-lc refuses a peer key of small order (an all-zero shared secret).
        agreement::agree_ephemeral(self.private, peer, (), |secret| Ok(SharedSecret::from(secret)))
            .map_err(|()| invalid_share())
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_ref()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// An ML-KEM-768 encapsulation key's bytes (the post-quantum half of a client's share).
const MLKEM768_KEY: usize = 1184;
/// An ML-KEM-768 ciphertext's bytes (the post-quantum half of a server's share).
const MLKEM768_CIPHERTEXT: usize = 1088;
/// An X25519 public key's bytes.
const X25519_KEY: usize = 32;

/// X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem): each share is the ML-KEM-768 part, then the
/// X25519 part; the secret is ML-KEM's shared secret, then X25519's. A session key is safe
/// while either holds.
struct X25519MlKem768;

impl std::fmt::Debug for X25519MlKem768 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("X25519MLKEM768 (aws-lc)")
    }
}

/// A peer's key share refused: the peer misbehaving.
fn invalid_share() -> rustls::Error {
    rustls::Error::from(rustls::PeerMisbehaved::InvalidKeyShare)
}

/// ML-KEM's secret then X25519's, as one (rustls' `SharedSecret` wipes it when dropped).
fn hybrid_secret(post_quantum: &[u8], classical: &[u8]) -> SharedSecret {
    SharedSecret::from([post_quantum, classical].concat())
}

impl SupportedKxGroup for X25519MlKem768 {
    /// A client's side (the gateway's own connections to TLS upstreams and Redis).
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let random = |_| rustls::Error::FailedToGetRandomBytes;
        let decapsulation = kem::DecapsulationKey::generate(&kem::ML_KEM_768).map_err(random)?;
        let encapsulation = decapsulation.encapsulation_key().map_err(random)?.key_bytes().map_err(random)?;
        let classical = X25519.start()?;
        let share = [encapsulation.as_ref(), classical.pub_key()].concat();
        Ok(Box::new(HybridExchange { decapsulation, classical, share }))
    }

    /// A server's side: encapsulate to the client's ML-KEM key, agree on X25519.
    fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, rustls::Error> {
        if client_share.len() != MLKEM768_KEY + X25519_KEY {
            return Err(invalid_share());
        }
        let (post_quantum, classical) = client_share.split_at(MLKEM768_KEY);
        let key = kem::EncapsulationKey::new(&kem::ML_KEM_768, post_quantum).map_err(|_| invalid_share())?;
        let (ciphertext, secret) = key.encapsulate().map_err(|_| invalid_share())?;
        let classical = X25519.start_and_complete(classical)?;
        Ok(CompletedKeyExchange {
            group: NamedGroup::X25519MLKEM768,
            pub_key: [ciphertext.as_ref(), &classical.pub_key].concat(),
            secret: hybrid_secret(secret.as_ref(), classical.secret.secret_bytes()),
        })
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

struct HybridExchange {
    decapsulation: kem::DecapsulationKey<kem::AlgorithmId>,
    classical: Box<dyn ActiveKeyExchange>,
    share: Vec<u8>,
}

impl ActiveKeyExchange for HybridExchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        if peer.len() != MLKEM768_CIPHERTEXT + X25519_KEY {
            return Err(invalid_share());
        }
        let (ciphertext, classical) = peer.split_at(MLKEM768_CIPHERTEXT);
        let secret = self.decapsulation.decapsulate(ciphertext.into()).map_err(|_| invalid_share())?;
        let classical = self.classical.complete(classical)?;
        Ok(hybrid_secret(secret.as_ref(), classical.secret_bytes()))
    }

    /// The X25519 half alone, for a server that does not take the hybrid.
    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((NamedGroup::X25519, self.classical.pub_key()))
    }

    fn complete_hybrid_component(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        self.classical.complete(peer)
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

/// ring's provider with RSA keys loaded for aws-lc, X25519 from aws-lc, and X25519MLKEM768
/// from aws-lc first among the groups (see the module's comment).
pub fn provider() -> &'static CryptoProvider {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    static KEYS: OnceLock<Keys> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let ring = rustls::crypto::ring::default_provider();
        let keys = KEYS.get_or_init(|| Keys { fallback: ring.key_provider });
        let kx_groups = std::iter::once(&X25519MlKem768 as &dyn SupportedKxGroup)
            .chain(ring.kx_groups.iter().map(|&g| {
                if g.name() == NamedGroup::X25519 {
                    &X25519 as &dyn SupportedKxGroup
                } else {
                    g
                }
            }))
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
        assert_eq!(&names[..2], [NamedGroup::X25519MLKEM768, NamedGroup::X25519], "{names:?}");
        assert_eq!(format!("{:?}", default.kx_groups[0]), "X25519MLKEM768 (aws-lc)");
        assert_eq!(format!("{:?}", default.kx_groups[1]), "X25519 (aws-lc)");
    }

    /// The hybrid against a client built from other implementations — RustCrypto's
    /// ML-KEM-768 and ring's X25519 — laid out as the draft says (ML-KEM's part first in
    /// each share and in the secret): both sides come to the same 64-byte secret. Then
    /// the gateway's own client side against its server side, and shares of the wrong
    /// length or a broken encapsulation key refused.
    #[test]
    fn the_hybrid_exchange_agrees_with_other_implementations_and_refuses_bad_shares() {
        use ml_kem::kem::Decapsulate;
        use ml_kem::{EncodedSizeUser, KemCore, MlKem768};
        let group = provider().kx_groups[0];
        assert!(group.usable_for_version(ProtocolVersion::TLSv1_3));
        assert!(!group.usable_for_version(ProtocolVersion::TLSv1_2), "TLS 1.3 only");

        let (decapsulation, encapsulation) = MlKem768::generate(&mut rand_core::OsRng);
        let x25519 = rustls::crypto::ring::kx_group::X25519.start().expect("a key");
        let client_share = [encapsulation.as_bytes().as_slice(), x25519.pub_key()].concat();
        assert_eq!(client_share.len(), 1184 + 32);
        let server = group.start_and_complete(&client_share).expect("agrees");
        assert_eq!(server.group, NamedGroup::X25519MLKEM768);
        assert_eq!(server.pub_key.len(), 1088 + 32);
        let (ciphertext, server_x25519) = server.pub_key.split_at(1088);
        let ciphertext = ml_kem::Ciphertext::<MlKem768>::try_from(ciphertext).expect("a ciphertext");
        let post_quantum = decapsulation.decapsulate(&ciphertext).expect("decapsulates");
        let classical = x25519.complete(server_x25519).expect("agrees");
        let client_secret = [post_quantum.as_slice(), classical.secret_bytes()].concat();
        assert_eq!(client_secret.len(), 64);
        assert_eq!(server.secret.secret_bytes(), &client_secret[..]);

        // The gateway as a client (its connections to TLS upstreams and Redis).
        let ours = group.start().expect("a key");
        assert_eq!(ours.pub_key().len(), 1184 + 32);
        assert_eq!(ours.hybrid_component().map(|(g, k)| (g, k.len())), Some((NamedGroup::X25519, 32)));
        let answered = group.start_and_complete(ours.pub_key()).expect("agrees");
        let secret = ours.complete(&answered.pub_key).expect("agrees");
        assert_eq!(secret.secret_bytes(), answered.secret.secret_bytes());

        let refused = rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::InvalidKeyShare);
        for bad in
            [&client_share[..32], &client_share[..client_share.len() - 1], &[client_share.as_slice(), b"x"].concat()]
        {
            assert_eq!(group.start_and_complete(bad).err(), Some(refused.clone()), "{} bytes", bad.len());
        }
        // An encapsulation key whose coefficients are out of range (FIPS 203's check).
        let mut broken = client_share.clone();
        broken[..2].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(group.start_and_complete(&broken).err(), Some(refused.clone()), "an out-of-range key");
        let client = group.start().expect("a key");
        assert_eq!(client.complete(&answered.pub_key[..100]).err(), Some(refused), "a short server share");
    }

    /// The `RSAPublicKey` inside a SubjectPublicKeyInfo (what ring's RSA verifiers take).
    fn rsa_public_key(spki: &SubjectPublicKeyInfoDer<'_>) -> Vec<u8> {
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_ref()).expect("an SPKI");
        parsed.subject_public_key.data.to_vec()
    }
}
