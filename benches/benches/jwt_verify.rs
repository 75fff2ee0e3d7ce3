//! Bearer-token verification: header decode, key lookup, signature, claim checks — and
//! the same token again, answered from the verified-token cache.
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
        // The same token again: answered from the verified-token cache.
        group.bench_function(format!("{name}/remembered"), |b| {
            b.iter(|| black_box(verifier.verify(Some(black_box(header.as_bytes())), None)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
