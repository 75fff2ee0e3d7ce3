//! edgegate: the citizen-facing edge API gateway, built on Pingora. This crate holds
//! the binary's pieces: the Pingora server and `ProxyHttp` impl (`server`, `proxy`),
//! the route table (`router`), endpoint choice (`balancer`, `peer`, `health`), the
//! response cache's request-path glue (`cache`), the live snapshot (`snapshot`) beside
//! the process state (`state`), reload and the admin listener (`control`), metrics,
//! logging, and the demo pods. docs/architecture.md maps the request path onto them.

pub mod access;
pub mod audit;
pub mod balancer;
pub mod cache;
pub mod collector;
pub mod connection;
pub mod control;
pub mod cpu;
pub mod demo;
pub mod discovery;
pub mod forwarded;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod peer;
pub mod pod;
pub mod process;
pub mod proxy;
pub mod ratelimit;
pub mod retry;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod tickets;
pub mod tls;
pub mod tls_keys;
