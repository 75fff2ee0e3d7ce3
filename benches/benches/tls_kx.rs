//! A full TLS 1.3 handshake's key exchange, the server's side (what the gateway computes for
//! each new client): X25519 (aws-lc) beside X25519MLKEM768, the post-quantum hybrid a
//! client that offers it gets; and the client's side of the hybrid (the gateway's own
//! connections to TLS upstreams and Redis).
//!
//! Run: cargo bench -p edgegate-benches --bench tls_kx

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rustls::NamedGroup;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let provider = edgegate::tls_keys::provider();
    for name in [NamedGroup::X25519, NamedGroup::X25519MLKEM768] {
        let group = provider.kx_groups.iter().find(|g| g.name() == name).expect("offered");
        let share = group.start().expect("a client key").pub_key().to_vec();
        c.bench_function(&format!("tls_kx/server {name:?}"), |b| {
            b.iter(|| group.start_and_complete(black_box(&share)).expect("agrees"))
        });
        let server = group.start_and_complete(&share).expect("agrees").pub_key;
        c.bench_function(&format!("tls_kx/client {name:?}"), |b| {
            b.iter(|| group.start().expect("a key").complete(black_box(&server)).is_ok())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
