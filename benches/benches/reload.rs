//! Cost of applying a config: parse + validate the YAML, compile the snapshot (route
//! table, pools, metric handles, carrying over unchanged state), and swap it in.
//!
//! Run: cargo bench -p edgegate-benches --bench reload
//!
//! Target (issue 3): apply 1,000 routes in ≤ 5 ms.

use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use edgegate::access::Guards;
use edgegate::metrics::Metrics;
use edgegate::snapshot::Snapshot;
use edgegate_config::Config;

/// A config with `n` routes over 100 hosts and 50 upstream groups of 3 pods each.
fn yaml(n: usize) -> String {
    let mut s = String::from("listeners: [{name: public, address: \"127.0.0.1:0\"}]\nupstreams:\n");
    for g in 0..50 {
        s.push_str(&format!(
            "  svc-{g}: {{endpoints: [{{address: \"10.42.{g}.1:8080\"}}, {{address: \"10.42.{g}.2:8080\"}}, {{address: \"10.43.{g}.1:8080\", locality: remote}}]}}\n"
        ));
    }
    s.push_str("routes:\n");
    for i in 0..n {
        let host = i % 100;
        let methods = if i % 3 == 0 { ", methods: [GET, HEAD]" } else { "" };
        s.push_str(&format!(
            "  - {{name: route-{i}, match: {{host: svc{host}.zwfw.gov.cn, path_prefix: /api/service-{i}/{methods}}}, upstream: svc-{}, public: true, timeouts: {{connect: 500ms, read: 10s}}}}\n",
            i % 50
        ));
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("reload");
    group.sample_size(20);
    let metrics = Metrics::new();
    for n in [1_000usize, 10_000] {
        let text = yaml(n);
        let config = Config::from_yaml(&text).expect("bench config is valid");
        let live = ArcSwap::from_pointee(Snapshot::build(
            config.clone(),
            Guards::default(),
            Default::default(),
            1,
            &metrics,
            None,
        ));

        group.bench_with_input(BenchmarkId::new("parse_validate", n), &n, |b, _| {
            b.iter(|| Config::from_yaml(&text).expect("valid"))
        });
        group.bench_with_input(BenchmarkId::new("build_snapshot", n), &n, |b, _| {
            let prev = live.load_full();
            b.iter(|| Snapshot::build(config.clone(), Guards::default(), Default::default(), 2, &metrics, Some(&prev)))
        });
        group.bench_with_input(BenchmarkId::new("swap", n), &n, |b, _| {
            let prev = live.load_full();
            let next = Arc::new(Snapshot::build(
                config.clone(),
                Guards::default(),
                Default::default(),
                2,
                &metrics,
                Some(&prev),
            ));
            drop(prev);
            // The store itself; the old snapshot's drop happens when the last request
            // holding it finishes, not here, so it is kept alive outside the timing.
            b.iter_with_large_drop(|| live.swap(Arc::clone(&next)))
        });
        group.bench_with_input(BenchmarkId::new("apply_total", n), &n, |b, _| {
            b.iter(|| {
                let config = Config::from_yaml(&text).expect("valid");
                let prev = live.load_full();
                let next = Snapshot::build(
                    config,
                    Guards::default(),
                    Default::default(),
                    prev.generation + 1,
                    &metrics,
                    Some(&prev),
                );
                live.store(Arc::new(next));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
