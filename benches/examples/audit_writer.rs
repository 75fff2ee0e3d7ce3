//! The audit writer's work per record, without the rest of the gateway: records built by the
//! request path's own function, formatted as the writer takes them, inserted 32 at a time,
//! committed 1,000 at a time (`synchronous=FULL`), the WAL copied into the database every
//! 4,000 and a checkpoint every 1,000 — the writer's steps at saturation. Run under
//! callgrind twice with different counts; the difference divided by the records between
//! them is the writer's instructions per record (docs/benchmarks.md):
//!
//!     cargo build --release -p edgegate-benches --example audit_writer
//!     valgrind --tool=callgrind target/release/examples/audit_writer DIR 4000
//!     valgrind --tool=callgrind target/release/examples/audit_writer DIR 24000
//!
//! `COMMIT=N` commits every N records instead, `WAL_EVERY=N` copies the WAL every N,
//! `NORMAL=1` writes with `synchronous=NORMAL`; under `/usr/bin/time` it gives the CPU a
//! record costs on the machine, system time included.

use std::path::Path;

use edgegate_filters::audit::{Durability, Store};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn record(i: u64) -> edgegate::audit::Queued {
    edgegate::audit::record(&edgegate::audit::RecordParts {
        request_id: "ee1420ccee07a3fdbf1a4040f24998f6",
        route: "permits",
        client_ip: Some(std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8])),
        user: None,
        method: "GET",
        host: "permits.example.gov.cn",
        path: "/api/permits/42",
        query: Some("a=1"),
        keep_query: false,
        outcome: "public",
        rule: "",
        config: "sha256:5f6a8136f8f407830ae47792dec5d2f3b2b9a4e24da386159f3e48518e5816eb",
        status: 200,
        bytes: 37,
        duration_us: 400 + i % 900,
        upstream: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 41551))),
        cache: "",
        trace: edgegate_filters::trace::TraceContext::from_header(None),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: audit_writer DIR RECORDS";
    let dir = Path::new(args.get(1).expect(usage));
    let records: u64 = args.get(2).and_then(|n| n.parse().ok()).expect(usage);
    std::fs::create_dir_all(dir).expect("create DIR");
    let path = dir.join(format!("writer-{records}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (per_commit, wal_every) = (env("COMMIT", 1_000).max(1), env("WAL_EVERY", 4_000).max(1));
    let durability = if env("NORMAL", 0) == 1 { Durability::Normal } else { Durability::Full };
    let mut store = Store::open(&path, "edge-0142", durability).expect("open the log");
    store.manual_wal_checkpoints().expect("manual WAL checkpoints");
    let mut written = 0;
    while written < records {
        let batch: Vec<_> = (written..(written + per_commit).min(records)).map(|i| record(i).formatted()).collect();
        store.begin().expect("begin");
        for step in batch.chunks(32) {
            store.insert(step).expect("insert");
        }
        store.commit().expect("commit");
        written += batch.len() as u64;
        if written % 1_000 == 0 {
            store.checkpoint(None, 1_700_000_000_000 + written).expect("checkpoint");
        }
        if written % wal_every == 0 {
            store.wal_checkpoint().expect("WAL checkpoint");
        }
    }
}
