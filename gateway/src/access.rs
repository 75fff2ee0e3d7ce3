//! Identity and policy for the request path (steps 4 and 5): compiled per snapshot by
//! [`compile`]; decided per request by `edgegate_filters::access`, whose outcome is
//! counted here by [`count`].

use std::path::Path;
use std::sync::Arc;

use edgegate_config::{files, Access, Config};
pub use edgegate_filters::access::Guards;
use edgegate_filters::access::{AccessOutcome, AccessVerdict, AdminToken};
use edgegate_filters::identity::Verifier;
use edgegate_filters::policy::{self, PolicySet};

use crate::metrics::PolicyMetrics;

/// Reads and compiles the policies, the JWKS and the admin token a config refers to. Paths are relative
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
            Err(e) => {
                // A decision no policy defines (a typo) is the route's error: name the
                // route's field and the rules that do exist.
                let known = policy::rule_names(&dir);
                let mut named = false;
                for (i, r) in config.routes.iter().enumerate() {
                    if let Access::Policy { decision, .. } = &r.access {
                        if !known.iter().any(|k| k == decision) {
                            errors.push(format!(
                                "routes[{i}].policy: {decision:?} is not a rule of the policies in {} (rules there: {})",
                                dir.display(),
                                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                            ));
                            named = true;
                        }
                    }
                }
                if !named {
                    errors.extend(e.into_iter().map(|e| format!("policies.dir: {e}")));
                }
            }
        }
    }
    if let Some(jwt) = &config.jwt {
        let path = base.join(&jwt.keys);
        match files::read_text(&path, files::KEY_FILE) {
            Err(e) => errors.push(format!("identity.jwt.keys: cannot read {}: {e}", path.display())),
            Ok(text) => match Verifier::new(jwt, &text) {
                Ok(v) => guards.verifier = Some(Arc::new(v)),
                Err(e) => errors.push(format!("identity.jwt.keys: {}: {e}", path.display())),
            },
        }
    }
    if let Some(token_file) = &config.admin.token_file {
        let path = base.join(token_file);
        match files::read_text(&path, files::KEY_FILE) {
            Err(e) => errors.push(format!("admin.token_file: cannot read {}: {e}", path.display())),
            Ok(text) => match AdminToken::new(&text) {
                Ok(t) => guards.admin_token = Some(t),
                Err(e) => errors.push(format!("admin.token_file: {}: {e}", path.display())),
            },
        }
    }
    if errors.is_empty() {
        Ok(guards)
    } else {
        Err(errors)
    }
}

/// Counts an access outcome on the route's policy metrics, and logs what an operator
/// must know (evaluation errors; refused tokens at debug).
pub fn count(route: &str, verdict: &AccessVerdict, metrics: &PolicyMetrics) {
    if let Some(t) = verdict.evaluation {
        metrics.evaluation.observe(t);
    }
    if verdict.remembered {
        metrics.remembered.inc();
    }
    match &verdict.outcome {
        // Nothing decided: the route is public, or the request was over its rate limit
        // (counted in `edgegate_rate_limited_total`) before the policy ran.
        // The request waits for its worker's turn and is decided (and counted) again.
        AccessOutcome::Public | AccessOutcome::RateLimited { .. } | AccessOutcome::AwaitsTurn => {}
        AccessOutcome::Allowed => metrics.allow.inc(),
        AccessOutcome::Denied => metrics.deny.inc(),
        AccessOutcome::NoPolicy => metrics.no_policy.inc(),
        AccessOutcome::Throttled { .. } => {
            metrics.token_checks_limited.inc();
            tracing::debug!(route, "new bearer token not checked: the client's budget of checks is used up");
        }
        AccessOutcome::Unauthenticated { reason, .. } => {
            metrics.unauthenticated.inc();
            if let Some(reason) = reason {
                tracing::debug!(route, reason, "bearer token refused");
            }
        }
        AccessOutcome::Error(e) => {
            metrics.errors.inc();
            tracing::error!(route, error = %e, "policy evaluation failed; denying");
        }
    }
}
