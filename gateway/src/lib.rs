//! edgegate: the citizen-facing edge API gateway, built on Pingora. This crate holds
//! the binary's pieces: the Pingora server and `ProxyHttp` impl (`server`, `proxy`),
//! the route table (`router`), endpoint choice (`balancer`), the live snapshot
//! (`snapshot`), the admin listener (`admin`), metrics, logging, and the demo pods.

pub mod access;
pub mod admin;
pub mod balancer;
pub mod caching;
pub mod demo;
pub mod forwarded;
pub mod health;
pub mod l2;
pub mod logging;
pub mod metrics;
pub mod pod;
pub mod process;
pub mod proxy;
pub mod reload;
pub mod retry;
pub mod revalidate;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod watch;
