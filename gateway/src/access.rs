//! Identity and policy for the request path (steps 4 and 5): compiled per snapshot by
//! [`compile`], applied per request by [`decide`]. Default deny: a route is served only
//! when it is explicitly public or its Rego decision is `true`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use edgegate_config::{Access, Config, IdentityMode};
use edgegate_filters::identity::{Identity, Verifier};
use edgegate_filters::policy::{self, PolicySet};
use edgegate_filters::{Decision, Reply};
use http::HeaderMap;

use crate::metrics::PolicyMetrics;

/// Identity and policy, compiled for one snapshot.
#[derive(Default)]
pub struct Guards {
    pub policies: Option<Arc<PolicySet>>,
    pub verifier: Option<Arc<Verifier>>,
}

/// Reads and compiles the policies and the JWKS a config refers to. Paths are relative
/// to `base`, the config file's directory. Errors name the config field.
pub fn compile(config: &Config, base: &Path) -> Result<Guards, Vec<String>> {
    let mut errors = Vec::new();
    let mut guards = Guards::default();
    if let Some(p) = &config.policies {
        let dir = base.join(&p.dir);
        let mut decisions: Vec<&str> = config
            .routes
            .iter()
            .filter_map(|r| match &r.access {
                Access::Policy { decision, .. } => Some(decision.as_str()),
                _ => None,
            })
            .collect();
        decisions.sort_unstable();
        decisions.dedup();
        let loaded = if decisions.is_empty() {
            // Nothing to decide yet, but a broken file is still an error.
            policy::engine_for(&dir).map(|_| None)
        } else {
            PolicySet::load(&dir, &decisions).map(Some)
        };
        match loaded {
            Ok(set) => guards.policies = set.map(Arc::new),
            Err(e) => errors.extend(e.into_iter().map(|e| format!("policies.dir: {e}"))),
        }
    }
    if let Some(jwt) = &config.jwt {
        let path = base.join(&jwt.keys);
        match std::fs::read_to_string(&path) {
            Err(e) => errors.push(format!("identity.jwt.keys: cannot read {}: {e}", path.display())),
            Ok(text) => match Verifier::new(jwt, &text) {
                Ok(v) => guards.verifier = Some(Arc::new(v)),
                Err(e) => errors.push(format!("identity.jwt.keys: {}: {e}", path.display())),
            },
        }
    }
    if errors.is_empty() {
        Ok(guards)
    } else {
        Err(errors)
    }
}

/// What the request looks like to identity and policy.
pub struct Subject<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub encrypted: bool,
    pub client_ip: Option<IpAddr>,
}

/// Steps 4–5 for one request. `user_id` receives the verified user's id, for per-user
/// caching.
pub fn decide(
    guards: &Guards,
    access: &Access,
    audit_enabled: bool,
    s: &Subject<'_>,
    metrics: &PolicyMetrics,
    user_id: &mut Option<String>,
) -> Decision {
    let (decision, mode, action) = match access {
        Access::Public => return Decision::Continue,
        Access::Unset => {
            metrics.no_policy.inc();
            return Decision::Respond(Reply::new(403, "forbidden"));
        }
        Access::Policy { decision, identity, action } => (decision, identity, action),
    };
    let identity = match &guards.verifier {
        Some(v) => v.verify(s.headers.get(http::header::AUTHORIZATION).map(|h| h.as_bytes())),
        None => Identity::Anonymous,
    };
    let user = match &identity {
        Identity::User(u) => Some(u),
        Identity::Anonymous | Identity::Invalid(_) => None,
    };
    *user_id = user.map(|u| u.id.clone());
    if user.is_none() && *mode == IdentityMode::Required {
        metrics.unauthenticated.inc();
        let challenge = match identity {
            Identity::Invalid(reason) => {
                tracing::debug!(route = s.route, reason, "bearer token refused");
                r#"Bearer realm="edgegate", error="invalid_token""#
            }
            _ => r#"Bearer realm="edgegate""#,
        };
        return Decision::Respond(
            Reply::new(401, "unauthenticated").with_header("www-authenticate", challenge.to_owned()),
        );
    }
    let Some(policies) = &guards.policies else {
        // Validation requires `policies` for any route naming a decision.
        metrics.errors.inc();
        return Decision::Respond(Reply::new(403, "forbidden"));
    };
    let started = Instant::now();
    let input = policy::input(
        &policy::Request {
            action,
            user,
            data_encrypted: s.encrypted,
            audit_enabled,
            method: s.method,
            host: s.host,
            path: s.path,
            query: s.query,
            headers: s.headers,
            route: s.route,
            source_ip: s.client_ip.map(|ip| ip.to_string()),
        },
        policies.needs_request,
    );
    let verdict = policies.allows(decision, input);
    metrics.evaluation.observe(started.elapsed().as_secs_f64());
    match verdict {
        Ok(true) => {
            metrics.allow.inc();
            Decision::Continue
        }
        Ok(false) => {
            metrics.deny.inc();
            Decision::Respond(Reply::new(403, "forbidden"))
        }
        Err(e) => {
            // Fail closed.
            metrics.errors.inc();
            tracing::error!(route = s.route, decision = %decision, error = %e, "policy evaluation failed; denying");
            Decision::Respond(Reply::new(403, "forbidden"))
        }
    }
}
