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

criterion_group!(benches, bench);
criterion_main!(benches);
