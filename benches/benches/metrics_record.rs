//! Recording one request's metrics through the pre-resolved per-route handles (status
//! class counter + duration histogram by class), a policy decision, a cache result, the
//! route's in-flight count and the endpoint's attempt result and response time — and, for
//! scale, rendering the whole registry as a Prometheus scrape does.
//!
//! Run: cargo bench -p edgegate-benches --bench metrics_record

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgegate::metrics::Metrics;

fn bench(c: &mut Criterion) {
    let metrics = Metrics::new();
    let routes: Vec<_> = (0..100).map(|i| metrics.route(&format!("route-{i}"))).collect();
    let route = &routes[7];
    let mut g = c.benchmark_group("metrics_record");
    g.bench_function("request", |b| b.iter(|| route.record(black_box(200), black_box(Duration::from_micros(830)))));
    g.bench_function("request+policy+cache", |b| {
        b.iter(|| {
            route.record(black_box(200), black_box(Duration::from_micros(830)));
            route.policy.allow.inc();
            route.policy.evaluation.observe(black_box(Duration::from_nanos(1_600)));
            route.cache_miss.inc();
        })
    });
    // Everything a proxied, policy-checked, cache-missed request records (target ≤ 100 ns).
    let endpoint = edgegate::balancer::endpoint::EndpointState::new(
        "10.42.0.15:8080".parse().expect("address"),
        Duration::from_millis(30),
        0,
    );
    let inflight = std::sync::atomic::AtomicUsize::new(0);
    g.bench_function("proxied_request_all", |b| {
        b.iter(|| {
            use std::sync::atomic::Ordering;
            inflight.fetch_add(1, Ordering::AcqRel);
            route.policy.allow.inc();
            route.policy.evaluation.observe(black_box(Duration::from_nanos(1_600)));
            route.cache_miss.inc();
            endpoint.stats.duration.observe(black_box(Duration::from_micros(610)));
            endpoint.stats.count_result(edgegate::balancer::endpoint::UpstreamResult::Response);
            route.record(black_box(200), black_box(Duration::from_micros(830)));
            inflight.fetch_sub(1, Ordering::AcqRel);
        })
    });
    for r in &routes {
        r.record(200, Duration::from_millis(1));
    }
    g.bench_function("render/100_routes", |b| b.iter(|| metrics.render().len()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
