//! Request path steps 4–5, "identity" and "policy": who the caller is and whether the
//! route's Rego decision lets them in, decided on the canonical request. Default deny: a
//! route is served only when it is explicitly public or its decision is `true`. The
//! result is an [`AccessOutcome`] value — counted by the gateway, later audited — and
//! only then turned into a reply.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgegate_config::{Access, IdentityMode};
use http::HeaderMap;

use crate::identity::{Identity, TokenCheck, Verifier};
use crate::policy::{self, PolicySet};
use crate::Reply;

/// Identity and policy, compiled for one config snapshot.
#[derive(Default, Clone)]
pub struct Guards {
    pub policies: Option<Arc<PolicySet>>,
    pub verifier: Option<Arc<Verifier>>,
    /// What the admin listener's mutating endpoints require.
    pub admin_token: Option<AdminToken>,
}

/// The admin listener's bearer token.
#[derive(Clone)]
pub struct AdminToken(Box<[u8]>);

impl AdminToken {
    /// The file's content, surrounding whitespace removed; at least 16 bytes.
    pub fn new(text: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.len() < 16 {
            return Err(format!("the token must be at least 16 characters, found {}", token.len()));
        }
        if token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        Ok(AdminToken(token.as_bytes().into()))
    }

    /// Whether an `Authorization` header carries this token, compared in constant time.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else { return false };
        given.len() == self.0.len() && given.iter().zip(self.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// What the request looks like to identity and policy: the canonical host and path, the
/// query as received.
pub struct Subject<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub encrypted: bool,
    pub client_ip: Option<IpAddr>,
    /// The audit sink is accepting records (`input.audit.enabled`).
    pub audit_enabled: bool,
}

/// How the access step ended for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessOutcome {
    /// The route is explicitly public: no identity, no policy.
    Public,
    /// The route's decision was `true`.
    Allowed,
    /// Identity is required and there was no valid bearer token; `invalid_token` when one
    /// was sent but refused.
    Unauthenticated { invalid_token: bool, reason: Option<&'static str> },
    /// A token the gateway has not verified recently, from a client whose budget of
    /// signature checks (`identity.jwt.new_tokens_per_client`) is used up: 429, whatever
    /// the route's identity mode (the token is neither verified nor ignored).
    Throttled { retry_after: Duration },
    /// Over the route's rate limit (`routes[].rate_limit`), checked once the caller is known
    /// and before the policy runs: 429, and the policy is not evaluated.
    RateLimited { retry_after: Duration },
    /// The route's decision was not `true`.
    Denied,
    /// The route is neither public nor guarded by a policy: default deny.
    NoPolicy,
    /// The policy could not be evaluated: fail closed.
    Error(String),
    /// The token's signature is to be checked once the worker's turn for a dear step is
    /// held ([`TokenCheck::Later`]): the caller waits for it and decides again with
    /// [`TokenCheck::Charged`]. Nothing was counted or evaluated; were it answered, 503.
    AwaitsTurn,
}

impl AccessOutcome {
    /// The outcome of a decision the policy made: `true` allows.
    fn decided(allowed: bool) -> AccessOutcome {
        if allowed {
            AccessOutcome::Allowed
        } else {
            AccessOutcome::Denied
        }
    }

    /// The outcome's name in metrics and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            AccessOutcome::Public => "public",
            AccessOutcome::Allowed => "allowed",
            AccessOutcome::Unauthenticated { .. } => "unauthenticated",
            AccessOutcome::Throttled { .. } => "token_checks_limited",
            AccessOutcome::RateLimited { .. } => "rate_limited",
            AccessOutcome::Denied => "denied",
            AccessOutcome::NoPolicy => "no_policy",
            AccessOutcome::Error(_) => "error",
            AccessOutcome::AwaitsTurn => "awaits_turn",
        }
    }

    /// The reply for a refused request; `None` when the request goes on.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            AccessOutcome::Public | AccessOutcome::Allowed => None,
            AccessOutcome::Unauthenticated { invalid_token, .. } => {
                let challenge = if *invalid_token {
                    r#"Bearer realm="edgegate", error="invalid_token""#
                } else {
                    r#"Bearer realm="edgegate""#
                };
                Some(Reply::new(401, "unauthenticated").with_header("www-authenticate", challenge.to_owned()))
            }
            AccessOutcome::Throttled { retry_after } => {
                Some(Reply::too_many_requests("too_many_new_tokens", *retry_after))
            }
            AccessOutcome::RateLimited { retry_after } => Some(Reply::too_many_requests("rate_limited", *retry_after)),
            AccessOutcome::Denied | AccessOutcome::NoPolicy | AccessOutcome::Error(_) => {
                Some(Reply::new(403, "forbidden"))
            }
            AccessOutcome::AwaitsTurn => Some(try_again()),
        }
    }
}

/// The reply to a request whose token could not be checked in time (it waited
/// `limits.token_check_wait` for its worker's turn): 503 `try_again`, `Retry-After: 1`.
pub fn try_again() -> Reply {
    Reply::new(503, "try_again").with_header("retry-after", "1".to_owned())
}

/// The access step's result: the outcome, the verified user's id (for per-user caching
/// and audit), how long the policy took, when it ran, and whether the decision was the one
/// the policy made before on the same input ([`PolicySet::remembered`]).
#[derive(Debug)]
pub struct AccessVerdict {
    pub outcome: AccessOutcome,
    pub user_id: Option<String>,
    pub evaluation: Option<Duration>,
    pub remembered: bool,
}

/// Steps 4–5 for one request on `access`, the route's rule.
pub fn decide(guards: &Guards, access: &Access, s: &Subject<'_>) -> AccessVerdict {
    decide_limited(guards, access, s, TokenCheck::Now, |_| None)
}

/// As [`decide`], with the route's rate limit between the two steps: once the caller is
/// known (`limit` is given the verified user's id, if any) and before the policy runs, so
/// that a client over its limit costs the node no policy evaluation — however dear its
/// request makes one — and requests the policy denies count against the limit too. `limit`
/// answers how long to wait when the request is over it. A request refused for want of a
/// token (401) or for a spent budget of new-token checks (429) is refused before it.
pub fn decide_limited(
    guards: &Guards,
    access: &Access,
    s: &Subject<'_>,
    check: TokenCheck,
    limit: impl FnOnce(Option<&str>) -> Option<Duration>,
) -> AccessVerdict {
    let verdict = |outcome| AccessVerdict { outcome, user_id: None, evaluation: None, remembered: false };
    let (decision, mode, action) = match access {
        Access::Public => return verdict(AccessOutcome::Public),
        Access::Unset => return verdict(AccessOutcome::NoPolicy),
        Access::Policy { decision, identity, action } => (decision, identity, action),
    };
    let identity = match &guards.verifier {
        Some(v) => v.verify_at(s.headers.get(http::header::AUTHORIZATION).map(|h| h.as_bytes()), s.client_ip, check),
        None => Identity::Anonymous,
    };
    let user = match &identity {
        Identity::User(u) => Some(&**u),
        Identity::Throttled(retry_after) => return verdict(AccessOutcome::Throttled { retry_after: *retry_after }),
        Identity::AwaitsTurn => return verdict(AccessOutcome::AwaitsTurn),
        Identity::Anonymous | Identity::Invalid(_) => None,
    };
    let user_id = user.map(|u| u.id().to_owned());
    if user.is_none() && *mode == IdentityMode::Required {
        let reason = match identity {
            Identity::Invalid(reason) => Some(reason),
            _ => None,
        };
        return AccessVerdict {
            outcome: AccessOutcome::Unauthenticated { invalid_token: reason.is_some(), reason },
            user_id,
            evaluation: None,
            remembered: false,
        };
    }
    if let Some(retry_after) = limit(user.map(|u| u.id())) {
        let outcome = AccessOutcome::RateLimited { retry_after };
        return AccessVerdict { outcome, user_id, evaluation: None, remembered: false };
    }
    let Some(policies) = &guards.policies else {
        // Validation requires `policies` for any route naming a decision.
        return AccessVerdict {
            outcome: AccessOutcome::Error("no policies are loaded".into()),
            user_id,
            evaluation: None,
            remembered: false,
        };
    };
    let asked = policy::Asked {
        decision,
        action,
        route: s.route,
        method: s.method,
        host: s.host,
        path: s.path,
        headers: s.headers,
        query: s.query,
        encrypted: s.encrypted,
        audit: s.audit_enabled,
        ip: s.client_ip,
    };
    if let Some(allowed) = policies.remembered(user, &asked) {
        return AccessVerdict { outcome: AccessOutcome::decided(allowed), user_id, evaluation: None, remembered: true };
    }
    let started = Instant::now();
    let input = policy::input(
        &policy::Request {
            action,
            user,
            data_encrypted: s.encrypted,
            audit_enabled: s.audit_enabled,
            method: s.method,
            host: s.host,
            path: s.path,
            query: s.query,
            headers: s.headers,
            route: s.route,
            source_ip: s.client_ip,
        },
        &policies.request,
    );
    let outcome = match policies.allows(decision, input) {
        Ok(allowed) => {
            policies.remember(user, &asked, allowed);
            AccessOutcome::decided(allowed)
        }
        Err(e) => AccessOutcome::Error(format!("{decision}: {e}")),
    };
    AccessVerdict { outcome, user_id, evaluation: Some(started.elapsed()), remembered: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(headers: &HeaderMap) -> Subject<'_> {
        Subject {
            route: "r",
            method: "GET",
            host: "h",
            path: "/",
            query: None,
            headers,
            encrypted: true,
            client_ip: None,
            audit_enabled: true,
        }
    }

    fn policy_route(identity: IdentityMode) -> Access {
        Access::Policy { decision: "data.x.allow".into(), identity, action: "service_request".into() }
    }

    #[test]
    fn the_admin_token_is_compared_whole() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in it!!").is_err());
        let t = AdminToken::new("  0123456789abcdef-secret\n").expect("token");
        assert!(t.accepts(Some(b"Bearer 0123456789abcdef-secret")));
        for wrong in [
            &b"Bearer 0123456789abcdef-secreT"[..],
            b"Bearer 0123456789abcdef-secret2",
            b"Bearer ",
            b"0123456789abcdef-secret",
            b"bearer 0123456789abcdef-secret",
        ] {
            assert!(!t.accepts(Some(wrong)), "{}", String::from_utf8_lossy(wrong));
        }
        assert!(!t.accepts(None));
    }

    #[test]
    fn public_and_unset_routes_never_consult_identity() {
        let none = HeaderMap::new();
        let guards = Guards::default();
        assert_eq!(decide(&guards, &Access::Public, &subject(&none)).outcome, AccessOutcome::Public);
        let unset = decide(&guards, &Access::Unset, &subject(&none));
        assert_eq!(unset.outcome, AccessOutcome::NoPolicy);
        assert_eq!(unset.outcome.reply().map(|r| r.status), Some(403), "default deny");
    }

    #[test]
    fn a_policy_route_without_policies_fails_closed() {
        let none = HeaderMap::new();
        let v = decide(&Guards::default(), &policy_route(IdentityMode::Optional), &subject(&none));
        assert!(matches!(v.outcome, AccessOutcome::Error(_)));
        assert_eq!(v.outcome.reply().map(|r| r.status), Some(403));
    }

    #[test]
    fn required_identity_without_a_token_is_a_401_challenge() {
        let none = HeaderMap::new();
        let v = decide(&Guards::default(), &policy_route(IdentityMode::Required), &subject(&none));
        assert_eq!(v.outcome, AccessOutcome::Unauthenticated { invalid_token: false, reason: None });
        let reply = v.outcome.reply().expect("refused");
        assert_eq!(reply.status, 401);
        assert_eq!(reply.headers, vec![("www-authenticate", r#"Bearer realm="edgegate""#.to_owned())]);
    }

    /// The rate limit is asked once the caller is known (here anonymous, on an optional
    /// route) and before the policy: over it, 429 `rate_limited` with its wait, and no
    /// policy is consulted (here none is loaded, which would otherwise be an error). A
    /// request refused for want of a token is refused before it, and a public route never
    /// asks it here.
    #[test]
    fn the_rate_limit_is_asked_between_identity_and_policy() {
        let none = HeaderMap::new();
        let mut asked = Vec::new();
        let wait = Duration::from_secs(2);
        let v = decide_limited(
            &Guards::default(),
            &policy_route(IdentityMode::Optional),
            &subject(&none),
            TokenCheck::Now,
            |user| {
                asked.push(user.map(str::to_owned));
                Some(wait)
            },
        );
        assert_eq!(v.outcome, AccessOutcome::RateLimited { retry_after: wait });
        assert_eq!(v.evaluation, None, "the policy did not run");
        let reply = v.outcome.reply().expect("refused");
        assert_eq!((reply.status, reply.error), (429, "rate_limited"));
        assert_eq!(asked, vec![None]);
        let under = decide_limited(
            &Guards::default(),
            &policy_route(IdentityMode::Optional),
            &subject(&none),
            TokenCheck::Now,
            |_| None,
        );
        assert!(matches!(under.outcome, AccessOutcome::Error(_)), "under the limit, on to the policy");
        for access in [policy_route(IdentityMode::Required), Access::Public] {
            let v = decide_limited(&Guards::default(), &access, &subject(&none), TokenCheck::Now, |_| panic!("asked"));
            assert_ne!(v.outcome.name(), "rate_limited");
        }
    }

    /// A verified token's second request on the same question is given the decision the
    /// policy made on the first, without evaluating; anything else in the input the policy
    /// reads — whether the audit log accepts records, whether the connection is encrypted,
    /// the route — is a new question (the client's address is not: the shipped policy does
    /// not read it), and a reloaded policy (a new set) decides afresh. An error is never
    /// remembered.
    #[test]
    fn a_tokens_decisions_are_remembered_for_the_same_input_and_set_only() {
        let issuer = crate::testing::Issuer::new();
        let jwt = edgegate_config::Jwt {
            issuer: crate::testing::ISSUER.into(),
            audience: crate::testing::AUDIENCE.into(),
            keys: "jwks.json".into(),
            role_claim: "role".into(),
            leeway: Duration::from_secs(5),
            new_tokens_per_client: edgegate_config::DEFAULT_NEW_TOKENS_PER_CLIENT,
        };
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy");
        const ALLOW: &str = "data.government.digital.allow";
        let set = || Arc::new(PolicySet::load(&shipped, &[ALLOW]).expect("compiles"));
        let mut guards = Guards {
            policies: Some(set()),
            verifier: Some(Arc::new(Verifier::new(&jwt, &issuer.jwks).expect("verifier"))),
            admin_token: None,
        };
        assert!(guards.policies.as_ref().is_some_and(|p| p.remembers()), "the shipped policy is pure");
        let mut headers = HeaderMap::new();
        let token = issuer.token(jsonwebtoken::Algorithm::ES256, serde_json::json!({}));
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        let route = Access::Policy {
            decision: ALLOW.into(),
            identity: IdentityMode::Required,
            action: "service_request".into(),
        };
        let mut s = subject(&headers);
        s.client_ip = Some("10.1.2.3".parse().expect("ip"));
        let ask = |guards: &Guards, s: &Subject<'_>| {
            let v = decide(guards, &route, s);
            (v.outcome.name(), v.remembered, v.evaluation.is_some())
        };
        assert_eq!(ask(&guards, &s), ("allowed", false, true), "the first request is evaluated");
        assert_eq!(ask(&guards, &s), ("allowed", true, false), "the second is remembered");
        assert_eq!(ask(&guards, &s), ("allowed", true, false));

        // The audit log stops accepting records: a new question, evaluated and denied, and
        // its denial remembered in turn; the allow is still there when the log is back.
        s.audit_enabled = false;
        assert_eq!(ask(&guards, &s), ("denied", false, true));
        assert_eq!(ask(&guards, &s), ("denied", true, false));
        s.audit_enabled = true;
        assert_eq!(ask(&guards, &s), ("allowed", true, false));

        // Plain HTTP, another route: each evaluated first; another address is not read.
        s.encrypted = false;
        assert_eq!(ask(&guards, &s), ("denied", false, true));
        s.encrypted = true;
        s.client_ip = Some("10.1.2.4".parse().expect("ip"));
        assert_eq!(ask(&guards, &s), ("allowed", true, false));
        s.route = "other";
        assert_eq!(ask(&guards, &s), ("allowed", false, true));
        assert_eq!(ask(&guards, &s), ("allowed", true, false));

        // The same policy reloaded is a new set: nothing it did not decide is remembered.
        guards.policies = Some(set());
        assert_eq!(ask(&guards, &s), ("allowed", false, true));
        assert_eq!(ask(&guards, &s), ("allowed", true, false));

        // A set that fails to evaluate is asked every time.
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            tmp.path().join("p.rego"),
            "package government.digital\nimport rego.v1\nallow if count([x | some x in numbers.range(1, 100000); some y in numbers.range(1, 1000)]) > 0\n",
        )
        .expect("write");
        guards.policies = Some(Arc::new(PolicySet::load(tmp.path(), &[ALLOW]).expect("compiles")));
        for _ in 0..2 {
            assert_eq!(ask(&guards, &s), ("error", false, true));
        }
    }

    /// On an `identity: optional` route a request without a token, or with one that does
    /// not verify, is decided once per question and then given that decision: by a policy
    /// that reads the client's address, per address — a client is never given the answer
    /// another address got.
    #[test]
    fn decisions_without_a_token_are_remembered_per_question_and_address_when_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            tmp.path().join("p.rego"),
            "package x\nimport rego.v1\nallow if { input.action == \"service_request\"; input.source.ip == \"10.1.2.3\" }\n",
        )
        .expect("write");
        let guards = Guards {
            policies: Some(Arc::new(PolicySet::load(tmp.path(), &["data.x.allow"]).expect("compiles"))),
            verifier: None,
            admin_token: None,
        };
        let headers = HeaderMap::new();
        let route = policy_route(IdentityMode::Optional);
        let from = |ip: &str| Subject { client_ip: Some(ip.parse().expect("ip")), ..subject(&headers) };
        let ask = |s: &Subject<'_>| {
            let v = decide(&guards, &route, s);
            (v.outcome.name(), v.remembered, v.evaluation.is_some())
        };
        let (a, b) = (from("10.1.2.3"), from("10.1.2.4"));
        assert_eq!(ask(&a), ("allowed", false, true), "evaluated first");
        assert_eq!(ask(&b), ("denied", false, true), "another address: evaluated, not A's answer");
        assert_eq!(ask(&a), ("allowed", true, false));
        assert_eq!(ask(&b), ("denied", true, false));
        let other_route = Subject { route: "other", ..from("10.1.2.3") };
        assert_eq!(ask(&other_route), ("allowed", false, true), "another route");
    }
}
