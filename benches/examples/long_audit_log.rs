//! Writes an audit log as a node's would look after a long time: `RECORDS` records in
//! batches of `EVERY`, a checkpoint signed after each batch, and the key pair beside it
//! (`key.pem`, `key.pub`). For measuring a walk of a long log (docs/benchmarks.md):
//!
//!     cargo run --release -p edgegate-benches --example long_audit_log -- DIR 1200000 3
//!     /usr/bin/time -v target/release/edgegate audit verify --db DIR/audit.db --key DIR/key.pub

use std::path::Path;

use edgegate_filters::audit::store::{generate_key_pair, load_signing_key};
use edgegate_filters::audit::{Durability, Record, Store};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: long_audit_log DIR RECORDS EVERY";
    let dir = Path::new(args.get(1).expect(usage));
    let records: u64 = args.get(2).and_then(|n| n.parse().ok()).expect(usage);
    let every: u64 = args.get(3).and_then(|n| n.parse().ok()).filter(|&n| n > 0).expect(usage);
    std::fs::create_dir_all(dir).expect("create DIR");
    let (private, public) = generate_key_pair().expect("key pair");
    std::fs::write(dir.join("key.pem"), private).expect("write key.pem");
    std::fs::write(dir.join("key.pub"), public).expect("write key.pub");
    let key = load_signing_key(&dir.join("key.pem")).expect("signing key");
    let mut store = Store::open(&dir.join("audit.db"), "edge-0142", Durability::Normal).expect("open the log");
    let t0 = 1_700_000_000_000;
    let mut written = 0;
    while written < records {
        let batch: Vec<Record> = (written..(written + every).min(records))
            .map(|i| Record {
                time_ms: t0 + i,
                request_id: format!("{i:032x}"),
                route: "permits".into(),
                client_ip: "10.1.2.3".into(),
                user: "citizen-42".into(),
                method: "GET".into(),
                host: "services.example.gov.cn".into(),
                path: format!("/api/permits/{i}"),
                outcome: "allow".into(),
                config: "c".repeat(64),
                status: 200,
                upstream: "10.42.0.7:8080".into(),
                cache: "miss".into(),
                ..Record::default()
            })
            .collect();
        store.append(&batch).expect("append");
        written += batch.len() as u64;
        store.checkpoint(Some(&key), t0 + written).expect("checkpoint");
    }
}
