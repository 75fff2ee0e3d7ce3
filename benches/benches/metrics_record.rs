//! Recording one request's metrics through the pre-resolved per-route handles (status
//! class counter + duration histogram), a policy decision, a cache result — and, for
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
            route.policy.evaluation.observe(black_box(1.6e-6));
            route.cache_miss.inc();
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
