//! Request normalisation on the hot path: the canonical host and path (request path step
//! 1; target ≤ 150 ns for a typical request), the framing checks, the rate-limit check, an incoming request id (kept if valid), the
//! hop-by-hop headers to strip, X-Forwarded-For, and the cache key's query normalisation.
//!
//! Run: cargo bench -p edgegate-benches --bench normalise

use std::net::{IpAddr, Ipv4Addr};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgegate::forwarded::forwarded_for;
use edgegate_filters::cache::request_key;
use edgegate_filters::headers::names_to_strip;
use edgegate_filters::normalise::CanonicalRequest;
use edgegate_filters::RequestId;
use http::{HeaderMap, HeaderValue};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalise");
    for (name, host, path) in [
        ("canonical/typical", &b"zwfw.example.gov.cn"[..], &b"/api/permits/residence/42"[..]),
        ("canonical/upper_host_port_dot", &b"ZWFW.Example.Gov.CN.:8443"[..], &b"/api/permits/residence/42"[..]),
        ("canonical/ipv6_literal", &b"[2001:db8::1]:443"[..], &b"/api/permits/residence/42"[..]),
        (
            "canonical/escapes_and_dots",
            &b"zwfw.example.gov.cn"[..],
            &b"/api/./permits/%7euser/../residence/%e4%b8%ad"[..],
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| CanonicalRequest::new(Some(black_box(host)), black_box(path)).map(|c| c.path().len()))
        });
    }
    // The framing checks on a typical browser-like head (request smuggling shapes).
    let raw_head = b"GET /api/permits/residence/42?lang=zh HTTP/1.1\r\nHost: zwfw.example.gov.cn\r\nUser-Agent: zwfw-app/5.2 (Android 14)\r\nAccept: application/json\r\nAccept-Encoding: gzip, br\r\nAccept-Language: zh-CN,zh;q=0.9\r\nAuthorization: Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig\r\n\r\n";
    // The same fields parsed, as the gateway hands them over (the field-name scan reads them).
    let mut typical = HeaderMap::new();
    for (k, v) in [
        ("host", "zwfw.example.gov.cn"),
        ("user-agent", "zwfw-app/5.2 (Android 14)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "zh-CN,zh;q=0.9"),
        ("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig"),
    ] {
        typical.insert(k, HeaderValue::from_static(v));
    }
    g.bench_function("framing/typical_head", |b| {
        b.iter(|| {
            let head = edgegate_filters::framing::Head {
                raw: Some(black_box(&raw_head[..])),
                method: "GET",
                headers: &typical,
                authority: None,
                query: Some("lang=zh"),
                max_bytes: 16 * 1024,
                max_headers: 100,
            };
            edgegate_filters::framing::check(&head).is_ok()
        })
    });
    // The same checks on a head whose target is a 12 KiB query of 2,500 distinct names, the
    // most a client can make the walk over the request line cost (the head limit is 16 KiB).
    let long_query: String = (0..2500).map(|i| format!("{}{}=&", (b'a' + (i % 26) as u8) as char, i / 26)).collect();
    let long_head =
        format!("GET /forms/apply?{long_query} HTTP/1.1\r\nHost: zwfw.example.gov.cn\r\nAccept: */*\r\n\r\n");
    let mut few = HeaderMap::new();
    few.insert("host", HeaderValue::from_static("zwfw.example.gov.cn"));
    few.insert("accept", HeaderValue::from_static("*/*"));
    g.bench_function("framing/12KiB_query", |b| {
        b.iter(|| {
            let head = edgegate_filters::framing::Head {
                raw: Some(black_box(long_head.as_bytes())),
                method: "GET",
                headers: &few,
                authority: None,
                query: Some(&long_query),
                max_bytes: 16 * 1024,
                max_headers: 100,
            };
            edgegate_filters::framing::check(&head).is_ok()
        })
    });
    // The request target parsed into a URI, as the HTTP/1 reader does for every request
    // (the `http` crate's scan of the path and query), typical and at 12 KiB.
    let typical_target = bytes::Bytes::from_static(b"/api/permits/residence/42?lang=zh");
    g.bench_function("uri/typical_target", |b| {
        b.iter(|| http::Uri::from_maybe_shared(black_box(typical_target.clone())).is_ok())
    });
    let long_target = bytes::Bytes::from(format!("/forms/apply?{long_query}"));
    g.bench_function("uri/12KiB_query", |b| {
        b.iter(|| http::Uri::from_maybe_shared(black_box(long_target.clone())).is_ok())
    });
    // The rate-limit step: one key's GCRA check (a map lookup and one compare-exchange).
    let limiter = edgegate_filters::ratelimit::RateLimiter::new(&edgegate_config::RateLimit {
        global_nodes: None,
        rate: 1_000_000,
        burst: 1_000_000,
        key: edgegate_config::RateLimitKey::ClientIp,
    });
    g.bench_function("ratelimit/check", |b| b.iter(|| limiter.check(black_box("203.0.113.7"))));
    g.bench_function("request_id/keep_valid", |b| {
        b.iter(|| RequestId::parse(black_box(b"0f8e2c1a-5b7d-4e3f-9a6b-1c2d3e4f5a6b")).is_some())
    });
    g.bench_function("request_id/generate", |b| b.iter(RequestId::generate));

    let mut with_connection = typical.clone();
    with_connection.insert("connection", HeaderValue::from_static("keep-alive, x-trace"));
    with_connection.insert("x-trace", HeaderValue::from_static("1"));
    with_connection.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    g.bench_function("hop_by_hop/typical", |b| b.iter(|| names_to_strip(black_box(&typical)).len()));
    g.bench_function("hop_by_hop/connection_tokens", |b| b.iter(|| names_to_strip(black_box(&with_connection)).len()));

    let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let earlier = HeaderValue::from_static("198.51.100.4");
    g.bench_function("x_forwarded_for/new", |b| b.iter(|| forwarded_for(None, black_box(ip)).map(|v| v.len())));
    g.bench_function("x_forwarded_for/append", |b| {
        b.iter(|| forwarded_for(Some(black_box(&earlier)), black_box(ip)).map(|v| v.len()))
    });

    let route = edgegate_benches::route_cache();
    typical.remove("authorization");
    let catalogue = CanonicalRequest::new(Some(b"zwfw.example.gov.cn"), b"/catalogue/permits/list").expect("canonical");
    for (name, query) in
        [("cache_key/no_query", None), ("cache_key/query_4_pairs_unsorted", Some("z=1&lang=zh&page=2&a=b"))]
    {
        g.bench_function(name, |b| {
            b.iter(|| request_key("GET", black_box(&catalogue), query, &typical, &route, None).map(|k| k.len()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
