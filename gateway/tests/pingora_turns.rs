//! The tests of a module of the vendored Pingora (edgegate patch 96, TLS handshakes taking
//! turns with a worker's other tasks). Pingora is not a member of this workspace, so its
//! own tests do not run with `cargo test --workspace`; the module is compiled here too, with
//! its tests, on the same tokio.
#[allow(dead_code)]
#[path = "../../third_party/pingora-core/src/listeners/tls/turns.rs"]
mod turns;
