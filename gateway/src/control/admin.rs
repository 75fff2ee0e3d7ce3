//! The admin listener (default 127.0.0.1:9901), separate from citizen traffic:
//! `/healthz` (the process answers), `/readyz` (config loaded, listeners accepting,
//! not draining), `/metrics` (Prometheus text), `GET /-/config` (which config is
//! serving and how reloads went), `POST /-/reload` and `DELETE /-/cache?prefix=host/path`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use super::reload::{Outcome, Reloader};
use super::status::Trigger;
use crate::state::GatewayState;

pub struct AdminApp {
    state: Arc<GatewayState>,
    reloader: Option<Arc<Reloader>>,
}

impl AdminApp {
    pub fn new(state: Arc<GatewayState>, reloader: Option<Arc<Reloader>>) -> AdminApp {
        AdminApp { state, reloader }
    }

    fn answer(&self, method: &Method, path: &str, query: Option<&str>) -> (StatusCode, &'static str, Vec<u8>) {
        const JSON: &str = "application/json";
        match (method, path) {
            (&Method::GET, "/healthz") => (StatusCode::OK, JSON, br#"{"status":"alive"}"#.to_vec()),
            (&Method::GET, "/readyz") => {
                let generation = self.state.snapshot.load().generation;
                if self.state.lifecycle.draining.load(Ordering::Acquire) {
                    (StatusCode::SERVICE_UNAVAILABLE, JSON, br#"{"status":"draining"}"#.to_vec())
                } else if !self.state.lifecycle.is_ready() {
                    (StatusCode::SERVICE_UNAVAILABLE, JSON, br#"{"status":"starting"}"#.to_vec())
                } else {
                    // Audit health is reported, not a readiness condition: public routes
                    // are served either way, and policy decides about the rest.
                    let audit = match &self.state.audit {
                        Some(sink) if sink.accepting() => "accepting",
                        Some(_) => "failing",
                        None => "off",
                    };
                    let state_dir = {
                        let status = self.state.status();
                        match (&status.source, &status.persist_error) {
                            (None, _) => "none",
                            (Some(_), None) => "writable",
                            (Some(_), Some(_)) => "unwritable",
                        }
                    };
                    let body = format!(
                        r#"{{"status":"ready","config_generation":{generation},"audit":"{audit}","state_dir":"{state_dir}"}}"#
                    );
                    (StatusCode::OK, JSON, body.into_bytes())
                }
            }
            (&Method::GET, "/metrics") => {
                let body = self.state.metrics.render();
                (StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            (&Method::GET, "/-/config") => {
                let snapshot = self.state.snapshot.load();
                let mut doc = self.state.status().to_json(&snapshot);
                doc["audit"] = match &self.state.audit {
                    Some(sink) => serde_json::json!({
                        "db": sink.db.display().to_string(),
                        "node": sink.node,
                        "accepting": sink.accepting(),
                        "queued": sink.queued(),
                        "last_error": *sink.last_error.lock().unwrap_or_else(|p| p.into_inner()),
                        "verify": sink.last_verify.get(),
                    }),
                    None => serde_json::json!(null),
                };
                doc["discovery"] = serde_json::to_value(self.state.discovery.view()).unwrap_or_default();
                (StatusCode::OK, JSON, doc.to_string().into_bytes())
            }
            (&Method::DELETE, "/-/cache") => {
                let prefix = purge_prefix(query);
                match self.state.cache.responses.purge(&prefix) {
                    Ok(()) => {
                        tracing::info!(%prefix, "cache purged");
                        (StatusCode::OK, JSON, serde_json::json!({"purged": prefix}).to_string().into_bytes())
                    }
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        JSON,
                        serde_json::json!({"error": "purge_failed", "reason": e}).to_string().into_bytes(),
                    ),
                }
            }
            (&Method::POST, "/-/reload") => match &self.reloader {
                None => (
                    StatusCode::CONFLICT,
                    JSON,
                    br#"{"error":"reload_unavailable","reason":"serving the embedded config, there is no file to reload"}"#
                        .to_vec(),
                ),
                Some(r) => {
                    let outcome = r.reload(Trigger::Admin);
                    let status =
                        if matches!(outcome, Outcome::Rejected { .. }) { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
                    (status, JSON, outcome.to_json().to_string().into_bytes())
                }
            },
            (_, "/healthz" | "/readyz" | "/metrics" | "/-/config" | "/-/reload" | "/-/cache") => {
                (StatusCode::METHOD_NOT_ALLOWED, JSON, br#"{"error":"method_not_allowed"}"#.to_vec())
            }
            _ => (StatusCode::NOT_FOUND, JSON, br#"{"error":"not_found"}"#.to_vec()),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if mutating(&req.method, req.uri.path()) {
            let snapshot = self.state.snapshot.load();
            let authorization = req.headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
            if let Some(token) = &snapshot.guards.admin_token {
                if !token.accepts(authorization) {
                    tracing::warn!(path = req.uri.path(), client = ?session.client_addr(), "admin call without a valid token refused");
                    let mut resp = json_response(StatusCode::UNAUTHORIZED, br#"{"error":"unauthenticated"}"#.to_vec());
                    resp.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static(r#"Bearer realm="edgegate-admin""#),
                    );
                    return resp;
                }
            }
        }
        // A purge is published to every gateway sharing the Redis level (this one
        // included, through its subscription) and drops the entries there; the local purge
        // below runs regardless. The answer says how it went: a purge that left the shared
        // level as it was is no success — the other nodes keep serving what was purged.
        let mut shared = None;
        if req.method == Method::DELETE && req.uri.path() == "/-/cache" {
            if let Some(l2) = &self.state.cache.l2 {
                let prefix = purge_prefix(req.uri.query());
                let outcome = l2.publish_purge(&prefix).await;
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, %prefix, "purge not applied to redis nor published to other gateways");
                }
                shared = Some(outcome);
            }
        }
        let req = session.req_header();
        let (mut status, content_type, mut body) = self.answer(&req.method, req.uri.path(), req.uri.query());
        if let (Some(outcome), StatusCode::OK) = (shared, status) {
            (status, body) = shared_purge_answer(&body, outcome);
        }
        let mut resp = json_response(status, body);
        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        resp
    }
}

/// The local purge's answer (`{"purged": PREFIX}`) with what the shared level did: the
/// entries deleted from Redis, or — Redis unavailable, timing out or refusing — 503
/// `redis_purge_failed` with the reason (the local cache is purged either way; the purge
/// may be sent again).
fn shared_purge_answer(local: &[u8], outcome: Result<u64, String>) -> (StatusCode, Vec<u8>) {
    let mut doc: serde_json::Value = serde_json::from_slice(local).unwrap_or_else(|_| serde_json::json!({}));
    let status = match outcome {
        Ok(deleted) => {
            doc["redis_deleted"] = deleted.into();
            StatusCode::OK
        }
        Err(reason) => {
            doc["error"] = "redis_purge_failed".into();
            doc["reason"] = reason.into();
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (status, doc.to_string().into_bytes())
}

/// Endpoints that change what the gateway does: they need the admin token when one is
/// configured (it must be, unless the admin address is loopback).
fn mutating(method: &Method, path: &str) -> bool {
    matches!((method, path), (&Method::POST, "/-/reload") | (&Method::DELETE, "/-/cache"))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

/// The `prefix` parameter of a purge (the first, if sent twice; none: everything), in
/// the form the cache keys entries by ([`edgegate_filters::normalise::purge_prefix`]).
fn purge_prefix(query: Option<&str>) -> String {
    let value = query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("prefix=")));
    value.map(|v| edgegate_filters::normalise::purge_prefix(v.as_bytes())).unwrap_or_default()
}
