//! End-to-end tests: the real `edgegate` binary, real upstream pods, real sockets on
//! ephemeral ports. One test binary, so the gateway library links once.

mod support;

mod admin;
mod audit;
mod bodies;
mod bodyless;
mod cache;
mod canonical;
mod check;
mod demo;
mod deploy;
mod discovery;
mod errors;
mod h2;
mod headers;
mod keepalive;
mod lb;
mod limits;
mod metrics;
mod policy;
mod redis;
mod reload;
mod resumption;
mod routing;
mod shutdown;
mod slowloris;
mod smuggling;
mod tls;
mod tracing;
mod websocket;
