//! One endpoint pick: P2C over peak-EWMA (with the local/remote check) and round robin.
//!
//! Run: cargo bench -p edgegate-benches --bench balancer_pick
//!
//! Target (issue 4): ≤ 100 ns per pick.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use edgegate::balancer::{Pool, Tried};
use edgegate_config::Config;

fn pool(policy: &str, local: usize, remote: usize) -> Pool {
    let mut eps: Vec<String> = (0..local).map(|i| format!("{{address: \"10.42.0.{}:8080\"}}", i + 1)).collect();
    eps.extend((0..remote).map(|i| format!("{{address: \"10.43.0.{}:8080\", locality: remote}}", i + 1)));
    let yaml = format!(
        "listeners: [{{name: p, address: \"127.0.0.1:0\"}}]\nupstreams:\n  g:\n    endpoints: [{}]\n    balancer: {{policy: {policy}}}\n",
        eps.join(", ")
    );
    let config = Config::from_yaml(&yaml).expect("valid");
    let pool = Pool::new(&config.upstreams[0], None, 0);
    // Give the endpoints distinct, realistic latency estimates.
    for (i, ep) in pool.endpoints.iter().enumerate() {
        ep.ewma.observe(Duration::from_micros(800 + 150 * i as u64), 1, Duration::from_secs(10));
    }
    pool
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer_pick");
    for (policy, local, remote) in
        [("peak_ewma", 4, 0), ("peak_ewma", 4, 2), ("peak_ewma", 16, 4), ("round_robin", 4, 2)]
    {
        let p = pool(policy, local, remote);
        let id = format!("{policy}/{local}local+{remote}remote");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| black_box(p.pick(black_box(1_000), Tried::default())))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
