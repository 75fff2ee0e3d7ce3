//! The audit trail's costs: what the request path pays to emit a record (build it and
//! queue it for the writer thread; target < 1 µs), and how many records per second the
//! writer commits to SQLite with `synchronous=FULL` and `NORMAL` (target ≥ 50k/s), and how
//! fast a log verifies.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgegate_config::Config;
use edgegate_filters::audit::{Durability, Store};

/// A record built by the logging step's own function, from typical parts (an IP and an
/// endpoint address formatted, a query redacted).
fn record(i: u64) -> edgegate::audit::Queued {
    edgegate::audit::record(&edgegate::audit::RecordParts {
        request_id: "01JD6X8Q7M3V9K2N4P5R6S7T8U",
        route: "services",
        client_ip: Some(std::net::IpAddr::from([203, 0, 113, 7])),
        user: Some("citizen-42"),
        method: "GET",
        host: "zwfw.example.gov.cn",
        path: "/api/permits/2024/applications",
        query: Some("id=42&lang=zh"),
        keep_query: false,
        outcome: "allowed",
        rule: "data.government.digital.allow",
        config: "5f2c0e9a1b7d3c4e",
        status: 200,
        bytes: 512 + i % 7,
        duration_us: 1_800,
        upstream: Some(std::net::SocketAddr::from(([10, 42, 0, 15], 8080))),
        cache: "",
        trace: edgegate_filters::trace::TraceContext::from_header(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )),
    })
}

// The gateway's allocator, so allocation costs are the production ones.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");

    // The request path: build and queue, with the real writer committing behind it. Each
    // sample queues at most a few thousand records, then waits (untimed) for the writer
    // to catch up, so the queue never fills and every push takes the normal path.
    let config = Config::from_yaml(&format!(
        "listeners: [{{name: p, address: '127.0.0.1:0'}}]\nupstreams: {{a: {{endpoints: [{{address: '127.0.0.1:9'}}]}}}}\nroutes: [{{name: r, upstream: a, public: true}}]\naudit: {{db: {}}}\n",
        dir.path().join("emit.db").display()
    ))
    .expect("valid config");
    let registry = prometheus::Registry::new();
    let sink =
        edgegate::audit::AuditSink::start(&config.audit, dir.path(), &registry).expect("sink").expect("audit on");
    let mut g = c.benchmark_group("audit");
    g.bench_function("emit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(4_000);
                let started = Instant::now();
                for i in 0..n {
                    sink.push(record(i));
                }
                total += started.elapsed();
                left -= n;
                while sink.queued() > 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            total
        })
    });

    // The writer: one transaction of 1,000 records (numbered, chained, inserted, committed).
    g.throughput(Throughput::Elements(1_000));
    for (name, durability) in [("commit_1000_full", Durability::Full), ("commit_1000_normal", Durability::Normal)] {
        let mut store = Store::open(&dir.path().join(format!("{name}.db")), "edge-1", durability).expect("store");
        // As the writer gets them: addresses formatted.
        // Each batch dropped inside the measured routine, as the writer drops it after the commit.
        g.bench_function(name, |b| {
            b.iter_batched(
                || (0..1_000).map(|i| record(i).formatted()).collect::<Vec<_>>(),
                |batch| store.append(&batch).expect("append"),
                criterion::BatchSize::LargeInput,
            )
        });
    }

    // The background verifier (and `edgegate audit verify`): walk 100,000 records, one
    // checkpoint per 1,000, re-hashing each.
    let path = dir.path().join("verify.db");
    let mut store = Store::open(&path, "edge-1", Durability::Normal).expect("store");
    for b in 0..100 {
        let batch: Vec<_> = (0..1_000).map(|i| record(b * 1_000 + i).formatted()).collect();
        store.append(&batch).expect("append");
        store.checkpoint(None, 1_000 + b).expect("checkpoint");
    }
    drop(store);
    g.throughput(Throughput::Elements(100_000));
    g.sample_size(10);
    g.bench_function("verify_100k", |b| {
        b.iter(|| {
            let report = edgegate_filters::audit::store::verify(&path, None).expect("verifies");
            assert_eq!(report.records, 100_000);
        })
    });
    // What the verifier does between whole walks: the 1,000 records (one checkpoint)
    // appended since the last good walk ended at record 100,000.
    let head = edgegate_filters::audit::store::verify(&path, None).expect("verifies").head;
    let mut store = Store::open(&path, "edge-1", Durability::Normal).expect("store");
    let batch: Vec<_> = (0..1_000).map(|i| record(100_000 + i).formatted()).collect();
    store.append(&batch).expect("append");
    store.checkpoint(None, 2_000).expect("checkpoint");
    drop(store);
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("verify_after_1k_of_101k", |b| {
        b.iter(|| {
            let report =
                edgegate_filters::audit::store::verify_after(&path, None, Some(head), u64::MAX).expect("verifies");
            assert_eq!((report.walked, report.records), (1_000, 101_000));
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
