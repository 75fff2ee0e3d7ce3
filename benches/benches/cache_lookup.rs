//! A cache hit's lookup: build the key from the request and fetch the entry.
//!
//! Run: cargo bench -p edgegate-benches --bench cache_lookup

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgegate_filters::cache::{request_key, Cached, ResponseCache};
use edgegate_filters::normalise::CanonicalRequest;

fn bench(c: &mut Criterion) {
    let route = edgegate_benches::route_cache();
    let mut headers = http::HeaderMap::new();
    headers.insert("accept-encoding", http::HeaderValue::from_static("gzip, br"));
    headers.insert("accept-language", http::HeaderValue::from_static("zh-CN"));
    headers.insert("user-agent", http::HeaderValue::from_static("zwfw-app/5.2"));
    let cache = ResponseCache::new(64 << 20);
    // The requests' canonical forms, made once: the key and the lookup are what is measured.
    let requests: Vec<CanonicalRequest> = (0..10_000)
        .map(|i| {
            CanonicalRequest::new(Some(b"zwfw.gov.cn"), format!("/api/catalogue/{i}").as_bytes()).expect("canonical")
        })
        .collect();
    for canonical in &requests {
        let key = request_key("GET", canonical, Some("lang=zh"), &headers, &route, None).expect("cacheable");
        cache.insert(
            key,
            Cached {
                status: 200,
                headers: vec![(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))],
                body: Bytes::from_static(br#"{"service":"catalogue","items":[1,2,3]}"#),
                stored: Instant::now(),
                fresh_for: Duration::from_secs(3600),
                stale_for: Duration::ZERO,
                revalidate_for: Duration::ZERO,
                head: Default::default(),
            },
        );
    }
    let mut i = 0usize;
    c.bench_function("cache_lookup/key+hit (10,000 entries)", |b| {
        b.iter(|| {
            i = (i + 7) % 10_000;
            let key = request_key("GET", black_box(&requests[i]), Some("lang=zh"), &headers, &route, None)
                .expect("cacheable");
            black_box(cache.get(&key).expect("hit"))
        })
    });
}

/// What the fleet's key costs a Redis entry: encrypting it when a node stores it
/// (`encrypt`, its name included) and opening it when a node reads it (`decrypt`), for an
/// answer of 2 KiB and one at the 1 MiB bound — beside the tag alone that entries carried
/// before (`seal`, `open`; purges still do) — and the index of host and path a purge walks.
/// None is on a cache hit's path: they run only when the in-process level misses.
fn bench_seal(c: &mut Criterion) {
    use edgegate::cache::l2::{Sealer, ENTRY};
    let sealer = Sealer::new(b"q8Xv2Lr6Tn0Ws4Yk1Hb7Jd3Mf9Pc5Ga2Ue8Zo6Ri0=").expect("key");
    let key = "edgegate:cache:sealed:2e8d2f3c582f0b2166de6e6e0fa97f3e";
    for (name, size) in [("2 KiB", 2 << 10), ("1 MiB", 1 << 20)] {
        let entry = vec![b'x'; size];
        let sealed = sealer.seal(ENTRY, key, &entry);
        c.bench_function(&format!("cache_l2/seal ({name})"), |b| {
            b.iter(|| black_box(sealer.seal(ENTRY, key, black_box(&entry))))
        });
        c.bench_function(&format!("cache_l2/open ({name})"), |b| {
            b.iter(|| black_box(sealer.open(ENTRY, key, black_box(&sealed)).expect("opens").len()))
        });
        let encrypted = sealer.encrypt(ENTRY, key, &entry).expect("encrypts");
        c.bench_function(&format!("cache_l2/encrypt ({name})"), |b| {
            b.iter(|| black_box(sealer.encrypt(ENTRY, key, black_box(&entry)).expect("encrypts")))
        });
        c.bench_function(&format!("cache_l2/decrypt ({name})"), |b| {
            b.iter(|| black_box(sealer.decrypt(ENTRY, key, black_box(&encrypted)).expect("opens").len()))
        });
    }
    // The index a purge walks: an entry's name and member, made when a node stores it, and
    // one member opened, what a purge spends on each entry in Redis.
    let cache_key = "zwfw.gov.test\n/api/catalogue/1\nlang=zh\naccept-encoding=gzip";
    c.bench_function("cache_l2/name and index member", |b| {
        b.iter(|| black_box(sealer.stored_name(black_box(cache_key)).1.expect("a member").len()))
    });
    let member = sealer.stored_name(cache_key).1.expect("a member");
    let ciphers = sealer.index_ciphers();
    c.bench_function("cache_l2/index member opened", |b| {
        b.iter(|| black_box(sealer.indexed(ciphers, black_box(&member)).expect("opens").1.len()))
    });
}

criterion_group!(benches, bench, bench_seal);
criterion_main!(benches);
