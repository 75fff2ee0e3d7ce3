//! Bearer-token verification: header decode, key lookup, signature, claim checks — a
//! forgery, checked every time — and the same token again, answered from the verified-token
//! cache.
//!
//! Run: cargo bench -p edgegate-benches --bench jwt_verify

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgegate_config::Jwt;
use edgegate_filters::identity::{Identity, Verifier};
use edgegate_filters::testing::{Issuer, AUDIENCE, ISSUER};
use jsonwebtoken::Algorithm;

fn bench(c: &mut Criterion) {
    let issuer = Issuer::new();
    let config = Jwt {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        keys: "jwks.json".into(),
        role_claim: "role".into(),
        leeway: Duration::from_secs(30),
        new_tokens_per_client: edgegate_config::DEFAULT_NEW_TOKENS_PER_CLIENT,
    };
    let verifier = Verifier::new(&config, &issuer.jwks).expect("verifier");
    let budget = edgegate_config::ClientRate { rate: u32::MAX, burst: u32::MAX };
    let unlimited =
        Verifier::new(&Jwt { new_tokens_per_client: budget, ..config.clone() }, &issuer.jwks).expect("verifier");
    let mut group = c.benchmark_group("jwt_verify");
    for (name, alg) in [("es256", Algorithm::ES256), ("eddsa", Algorithm::EdDSA)] {
        let header = format!("Bearer {}", issuer.token(alg, serde_json::json!({})));
        assert!(matches!(verifier.verify(Some(header.as_bytes()), None), Identity::User(_)));
        // First sight of a token: a fresh verifier each time, so the signature is checked.
        group.bench_function(format!("{name}/signature"), |b| {
            b.iter_batched(
                || Verifier::new(&config, &issuer.jwks).expect("verifier"),
                |fresh| black_box(fresh.verify(Some(header.as_bytes()), None)),
                criterion::BatchSize::SmallInput,
            )
        });
        // A forgery (another token's claims under this one's signature): never remembered,
        // so checked every time — what a flood of forged tokens costs a node. The client's
        // budget of checks is out of the way here.
        let forged = format!(
            "Bearer {}",
            edgegate_filters::testing::forge(&issuer.token(alg, serde_json::json!({"role": "admin"})), &header[7..])
        );
        assert_eq!(unlimited.verify(Some(forged.as_bytes()), None), Identity::Invalid("bad signature"));
        group.bench_function(format!("{name}/forged"), |b| {
            b.iter(|| black_box(unlimited.verify(Some(black_box(forged.as_bytes())), None)))
        });
        // The same token again: answered from the verified-token cache.
        group.bench_function(format!("{name}/remembered"), |b| {
            b.iter(|| black_box(verifier.verify(Some(black_box(header.as_bytes())), None)))
        });
    }
    // RS256 against an RSA 2048 key of its own JWKS (the test issuer signs ES256 and EdDSA).
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa keygen");
    let b64 = edgegate_filters::testing::b64url;
    let rsa_jwks = {
        use rsa::traits::PublicKeyParts;
        serde_json::json!({"keys": [{"kty": "RSA", "kid": "rsa", "n": b64(&private.n().to_bytes_be()), "e": b64(&private.e().to_bytes_be())}]})
            .to_string()
    };
    let pem = rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_pem(&private, rsa::pkcs8::LineEnding::LF).expect("pem");
    let token = |role: &str| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims =
            serde_json::json!({"sub": "citizen-42", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 3600, "role": role});
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("rsa".into());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key");
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    let good = token("citizen");
    let forged = format!("Bearer {}", edgegate_filters::testing::forge(&token("admin"), &good));
    let rsa_verifier =
        Verifier::new(&Jwt { new_tokens_per_client: budget, ..config.clone() }, &rsa_jwks).expect("verifier");
    assert_eq!(rsa_verifier.verify(Some(forged.as_bytes()), None), Identity::Invalid("bad signature"));
    group.bench_function("rs256/forged", |b| {
        b.iter(|| black_box(rsa_verifier.verify(Some(black_box(forged.as_bytes())), None)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
