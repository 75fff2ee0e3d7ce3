//! Identity and default-deny policy through the real gateway, with tokens signed by keys
//! generated here: only what the policy allows reaches a pod.

use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn policy_config(pod: &edgegate::pod::Pod, behind_tls: bool, audit: bool) -> String {
    policy_yaml(
        &format!("  - {{name: public, address: \"127.0.0.1:0\", behind_tls: {behind_tls}}}\n"),
        pod.addr,
        "  - {name: services, match: {path_prefix: /api/}, upstream: svc, policy: data.government.digital.allow}
  - {name: catalogue, match: {path_prefix: /catalogue/}, upstream: svc, policy: data.government.digital.allow, identity: optional}
  - {name: forgotten, match: {path_prefix: /forgotten/}, upstream: svc}
",
        if audit { "audit: {db: audit.db}\n" } else { "audit: {}\n" },
    )
}

/// A token issuer, a pod, and a gateway in front of it behind TLS with the audit log on: the
/// shipped policy allows citizens.
async fn citizen_gateway() -> (Issuer, edgegate::pod::Pod, Gateway) {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let gw =
        Gateway::launch(&policy_config(&p, true, true), Launch { dir: Some(policy_dir(&issuer)), ..Launch::default() })
            .await;
    (issuer, p, gw)
}

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
    let mut req = client().get(gw.url(path)).header("x-user-role", "citizen");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, challenge, resp.json().await.unwrap_or_default())
}

/// A pod and a citizens' gateway in front of it (as [`citizen_gateway`]) whose clients may
/// have new tokens checked at `budget` (`new_tokens_per_client`), with `extra` config lines.
async fn budgeted_gateway(issuer: &Issuer, budget: &str, extra: &str) -> (edgegate::pod::Pod, Gateway) {
    let p = pod("svc").await;
    let yaml = policy_config(&p, true, true)
        .replace("keys: jwks.json}}\n", &format!("keys: jwks.json, new_tokens_per_client: {budget}}}}}\n{extra}"));
    let gw = Gateway::launch(&yaml, Launch { dir: Some(policy_dir(issuer)), ..Launch::default() }).await;
    (p, gw)
}

/// A gateway for a flood of forgeries amid citizens (as [`budgeted_gateway`]): a budget of
/// new-token checks no flood here spends, each client named by the trusted proxy's
/// `X-Forwarded-For`, and a citizen's token whose signature the forgeries borrow.
async fn flood_gateway() -> (Issuer, edgegate::pod::Pod, Gateway, String) {
    let issuer = Issuer::new();
    let (p, gw) = budgeted_gateway(&issuer, "{rate: 1, burst: 100000}", "trusted_proxies: [127.0.0.1/32]\n").await;
    let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
    (issuer, p, gw, good)
}

/// An administrator's claims under the signature of `good`, made different by `n`: a
/// well-formed token whose signature never verifies, each one new.
fn forgery(issuer: &Issuer, good: &str, n: usize) -> String {
    forge(&issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin", "n": n})), good)
}

/// A GET of `/api/permits` with `token`, from `client` when given (named by the trusted
/// proxy's `X-Forwarded-For`), on a connection closed after it.
fn token_request(token: &str, client: Option<&str>) -> String {
    let forwarded = client.map(|c| format!("X-Forwarded-For: {c}\r\n")).unwrap_or_default();
    format!("GET /api/permits HTTP/1.1\r\nHost: h.test\r\nAuthorization: Bearer {token}\r\n{forwarded}Connection: close\r\n\r\n")
}

/// Sends `requests` at once, each on a connection of its own opened before any is sent;
/// returns once they are being sent. Each task gives its whole answer (read until the
/// gateway closes, 30 s at most), and counts it in `answered` once it has it.
async fn all_at_once(
    addr: std::net::SocketAddr,
    requests: Vec<String>,
    answered: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<String>> {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len() + 1));
    let clients = requests
        .into_iter()
        .map(|request| {
            let (start, answered) = (std::sync::Arc::clone(&start), std::sync::Arc::clone(answered));
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                start.wait().await;
                s.write_all(request.as_bytes()).await.expect("write");
                let mut answer = Vec::new();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut answer)).await;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    start.wait().await;
    clients
}

/// Sends the `flood` of forgeries all at once and, once a third of it waits in line for its
/// checks on the one worker, the `citizen`'s request: the citizen is answered 200 while at
/// least a quarter of the flood is still unanswered, and every forgery 401.
async fn citizen_amid_flood(gw: &Gateway, flood: Vec<String>, citizen: &str) {
    let n = flood.len();
    let answered = std::sync::Arc::default();
    let flood = all_at_once(gw.addr(), flood, &answered).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(&gw.metrics().await, "edgegate_jwt_checks_waiting") < (n / 3) as f64 {
        assert!(std::time::Instant::now() < deadline, "the flood never stood in line");
    }
    let (status, text, _) = raw_exchange(gw.addr(), citizen.as_bytes()).await;
    let flood_answered = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status, Some(200), "{text}");
    assert!(
        flood_answered <= n - n / 4,
        "the citizen waited for the flood: {flood_answered} of its {n} forgeries answered first"
    );
    for c in flood {
        let answer = c.await.expect("client");
        assert!(answer.starts_with("HTTP/1.1 401 "), "a forgery: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_citizens_with_valid_tokens_reach_the_pod() {
    let (issuer, p, gw) = citizen_gateway().await;

    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let (status, _, body) = get(&gw, "/api/permits", Some(&issuer.token(alg, serde_json::json!({})))).await;
        assert_eq!(status, 200, "{alg:?} citizen: {body}");
    }
    let (status, _, body) =
        get(&gw, "/api/permits", Some(&issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin"})))).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    // No token: 401 with a challenge, whatever identity-looking headers the client sends.
    let (status, challenge, body) = get(&gw, "/api/permits", None).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthenticated")));
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="edgegate""#));

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let tampered = {
        let other = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "someone-else"}));
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = other.split('.').nth(1).expect("payload");
        parts.join(".")
    };
    for (what, token) in [
        ("expired", issuer.token(Algorithm::ES256, serde_json::json!({"exp": now - 3600}))),
        ("wrong issuer", issuer.token(Algorithm::ES256, serde_json::json!({"iss": "https://evil.example"}))),
        ("wrong audience", issuer.token(Algorithm::EdDSA, serde_json::json!({"aud": "other"}))),
        ("tampered", tampered),
    ] {
        let (status, challenge, _) = get(&gw, "/api/permits", Some(&token)).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="edgegate", error="invalid_token""#), "{what}");
    }

    // identity: optional — no token reaches the policy, which denies.
    assert_eq!(get(&gw, "/catalogue/forms", None).await.0, 403);
    // Neither public nor a policy: default deny.
    let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
    assert_eq!(get(&gw, "/forgotten/x", Some(&good)).await.0, 403);

    assert_eq!(p.requests(), 2, "refused requests never reach the upstream");
    let metrics = gw.metrics().await;
    for line in [
        r#"edgegate_policy_decisions_total{result="allow",route="services"} 2"#,
        r#"edgegate_policy_decisions_total{result="deny",route="services"} 1"#,
        r#"edgegate_policy_decisions_total{result="unauthenticated",route="services"} 5"#,
        r#"edgegate_policy_decisions_total{result="deny",route="catalogue"} 1"#,
        r#"edgegate_policy_decisions_total{result="no_policy",route="forgotten"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line} in\n{metrics}");
    }
    assert!(metrics.contains(r#"edgegate_policy_evaluation_seconds_count{route="services"} 3"#), "{metrics}");
}

/// Two `Authorization` fields: the gateway would verify one token and the pod could read the
/// other (a citizen's allowed, an administrator's acted on). Refused before identity, in
/// either order and in any spelling of the name, and nothing reaches the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_two_credentials_is_refused_before_identity() {
    let (issuer, p, gw) = citizen_gateway().await;
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let admin = issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin"}));
    let request =
        |fields: &str| format!("GET /api/permits HTTP/1.1\r\nHost: h.test\r\n{fields}Connection: close\r\n\r\n");
    // One credential: the citizen's is allowed (the setup lets a request through).
    let (status, text, _) =
        raw_exchange(gw.addr(), request(&format!("Authorization: Bearer {citizen}\r\n")).as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    let reached = p.requests();
    for fields in [
        format!("Authorization: Bearer {citizen}\r\nAuthorization: Bearer {admin}\r\n"),
        format!("Authorization: Bearer {admin}\r\nauthorization: Bearer {citizen}\r\n"),
        format!("authorization: Bearer {citizen}\r\nX-Other: 1\r\nAUTHORIZATION: Bearer {citizen}\r\n"),
    ] {
        let (status, text, closed) = raw_exchange(gw.addr(), request(&fields).as_bytes()).await;
        assert_eq!(status, Some(400), "{text}");
        assert!(text.contains("\"error\":\"duplicate_authorization\"") && text.contains("\"request_id\":\""), "{text}");
        assert!(closed, "the connection must be closed after the refusal");
    }
    assert_eq!(p.requests(), reached, "a refused request reached the pod");
}

/// A token the gateway has not verified lately costs a signature check, several times a
/// proxied request's CPU, and one that never verifies is checked anew each time: a client
/// replaying forged tokens could spend the node's CPU with 401s that no route's rate limit
/// counts. Each client address has a budget of such checks; past it a new token gets 429
/// with `Retry-After` unchecked, while tokens already verified pass as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_new_tokens_has_a_budget_of_checks() {
    let issuer = Issuer::new();
    let (p, gw) = budgeted_gateway(&issuer, "{rate: 1, burst: 2}", "trusted_proxies: [127.0.0.1/32]\n").await;
    let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let forged = |n: usize| forgery(&issuer, &good, n);
    let addr = gw.addr();
    let ask = |token: String, client: &'static str| async move {
        let request = token_request(&token, Some(client).filter(|c| !c.is_empty()));
        let (status, text, _) = raw_exchange(addr, request.as_bytes()).await;
        (status, text)
    };
    assert_eq!(ask(good.clone(), "").await.0, Some(200));
    assert_eq!(ask(forged(1), "").await.0, Some(401));
    let (status, text) = ask(forged(2), "").await;
    assert_eq!(status, Some(429), "{text}");
    let head = text.to_ascii_lowercase();
    assert!(head.contains("\r\nretry-after: 1\r\n") && !head.contains("www-authenticate"), "{text}");
    assert!(text.contains("\"error\":\"too_many_new_tokens\"") && text.contains("\"request_id\":\""), "{text}");
    // A new token, valid or not, waits; the verified one passes.
    let other = issuer.token(Algorithm::EdDSA, serde_json::json!({"sub": "citizen-7"}));
    assert_eq!(ask(other.clone(), "").await.0, Some(429));
    assert_eq!(ask(good.clone(), "").await.0, Some(200));
    // Another client (named by the trusted proxy) has its own budget.
    assert_eq!(ask(other, "198.51.100.20").await.0, Some(200));
    // And after a second the client may try one more.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(ask(forged(3), "").await.0, Some(401));
    assert_eq!(p.requests(), 3, "no refused request reached the pod");
    let metrics = gw.metrics().await;
    let line = r#"edgegate_policy_decisions_total{result="token_checks_limited",route="services"} 2"#;
    assert!(metrics.lines().any(|l| l == line), "missing {line} in\n{metrics}");
    // Checked: the good token, the first forgery, the other client's, the last forgery.
    assert!(metrics.lines().any(|l| l == "edgegate_jwt_signature_checks_total 4"), "{metrics}");
}

/// A burst of requests whose tokens never verify, from clients each within their budget,
/// takes turns on the worker: their signature checks run one per scheduler round in line,
/// not back to back while everything else waits. Every one is still refused 401 with the
/// reason in a JSON body, none reaches the pod, and a citizen's token sent amid them passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_forged_tokens_takes_turns_for_its_checks_and_every_one_is_refused() {
    let issuer = Issuer::new();
    let (p, gw) = budgeted_gateway(&issuer, "{rate: 1, burst: 1000}", "").await;
    let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let before = metric(&gw.metrics().await, "edgegate_jwt_check_waits_total");
    // 64 clients connect, then all send at once: the one worker has more requests needing
    // a check than one round's turn, and they wait in line.
    const N: usize = 64;
    let requests =
        (0..=N).map(|i| token_request(&if i == N { good.clone() } else { forgery(&issuer, &good, i) }, None));
    let clients = all_at_once(gw.addr(), requests.collect(), &Default::default()).await;
    for (i, c) in clients.into_iter().enumerate() {
        let answer = c.await.expect("client");
        if i == N {
            assert!(answer.starts_with("HTTP/1.1 200 "), "the citizen: {answer}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 401 "), "forgery {i}: {answer}");
            assert!(
                answer.contains("\"error\":\"unauthenticated\"") && answer.contains("\"request_id\":\""),
                "{answer}"
            );
        }
    }
    assert_eq!(p.requests(), 1, "only the citizen reached the pod");
    let m = gw.metrics().await;
    assert!(metric(&m, "edgegate_jwt_check_waits_total") > before, "checks waited for the turn");
    // Every one that waited left the line; each was checked once.
    assert_eq!(metric(&m, "edgegate_jwt_checks_waiting"), 0.0);
    assert_eq!(metric(&m, "edgegate_jwt_signature_checks_total"), (N + 1) as f64);
    let line = r#"edgegate_policy_decisions_total{result="unauthenticated",route="services"}"#;
    assert_eq!(metric(&m, line), N as f64, "each refusal counted once, not once per pass");
}

/// A client address that sent a forged token has its next tokens' checks wait behind every
/// other client's: a flood of forgeries from it, hundreds in line on the one worker, does
/// not hold up a citizen's first request from another address, whose check goes next. The
/// flood is still answered, each forgery 401, none reaching the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_an_address_that_forged_waits_behind_a_new_citizen() {
    let (issuer, p, gw, good) = flood_gateway().await;
    const FORGER: &str = "203.0.113.66";
    let first = token_request(&forgery(&issuer, &good, 0), Some(FORGER));
    let (status, text, _) = raw_exchange(gw.addr(), first.as_bytes()).await;
    assert_eq!(status, Some(401), "{text}");
    let put_last = metric(&gw.metrics().await, "edgegate_jwt_checks_put_last_total");
    // Its flood of N new forgeries, and amid it a citizen's new token from another address.
    const N: usize = 300;
    let flood = (1..=N).map(|i| token_request(&forgery(&issuer, &good, i), Some(FORGER)));
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-9"}));
    citizen_amid_flood(&gw, flood.collect(), &token_request(&citizen, Some("198.51.100.40"))).await;
    assert_eq!(p.requests(), 1, "only the citizen reached the pod");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "edgegate_jwt_checks_put_last_total") - put_last,
        N as f64,
        "the flood's checks, not the citizen's"
    );
    assert_eq!(metric(&m, "edgegate_jwt_checks_waiting"), 0.0);
}

/// A client address whose token verified lately has its next token's check go before
/// everyone else's: a citizen fetching a new token, from where its last one verified, is not
/// held up by a flood of forgeries from addresses never seen before (each forging once, so
/// none is put last), hundreds in line on the one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_citizens_new_token_goes_before_a_flood_from_unseen_addresses() {
    let (issuer, p, gw, good) = flood_gateway().await;
    const CITIZEN: &str = "198.51.100.50";
    let first = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-9"}));
    let (status, text, _) = raw_exchange(gw.addr(), token_request(&first, Some(CITIZEN)).as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    let m = gw.metrics().await;
    let (put_first, put_last) =
        (metric(&m, "edgegate_jwt_checks_put_first_total"), metric(&m, "edgegate_jwt_checks_put_last_total"));
    // A flood from 300 addresses never seen, and amid it the citizen's client's new token.
    let flood =
        (1..=300).map(|i| token_request(&forgery(&issuer, &good, i), Some(&format!("10.0.{}.{}", i / 256, i % 256))));
    let second = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-9", "n": 2}));
    citizen_amid_flood(&gw, flood.collect(), &token_request(&second, Some(CITIZEN))).await;
    assert_eq!(p.requests(), 2, "only the citizen reached the pod");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "edgegate_jwt_checks_put_first_total") - put_first, 1.0, "the citizen's second check");
    assert_eq!(metric(&m, "edgegate_jwt_checks_put_last_total") - put_last, 0.0, "no address forged twice");
}

/// A request that waits `limits.token_check_wait` for its worker's turn to check its token
/// is answered 503 `try_again` with `Retry-After` and a JSON body, not held until the line
/// empties; it never reaches the pod, and leaves the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_check_that_waits_too_long_is_answered_try_again() {
    let issuer = Issuer::new();
    let (p, gw) = budgeted_gateway(&issuer, "{rate: 1, burst: 100000}", "limits: {token_check_wait: 1ms}\n").await;
    let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
    const N: usize = 200;
    let requests = (0..N).map(|i| token_request(&forgery(&issuer, &good, i), None));
    let clients = all_at_once(gw.addr(), requests.collect(), &Default::default()).await;
    let (mut refused, mut again) = (0, 0);
    for c in clients {
        let answer = c.await.expect("client");
        if answer.starts_with("HTTP/1.1 401 ") {
            refused += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
            assert!(answer.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "{answer}");
            assert!(answer.contains("\"error\":\"try_again\"") && answer.contains("\"request_id\":\""), "{answer}");
            again += 1;
        }
    }
    assert!(refused > 0 && again > 0, "{refused} checked and refused, {again} asked to come again");
    assert_eq!(p.requests(), 0);
    let m = gw.metrics().await;
    let line = r#"edgegate_policy_decisions_total{result="token_check_timed_out",route="services"}"#;
    assert_eq!(metric(&m, line), again as f64);
    assert_eq!(metric(&m, "edgegate_jwt_checks_waiting"), 0.0, "those that gave up left the line");
    assert_eq!(metric(&m, "edgegate_jwt_signature_checks_total"), refused as f64, "no check for those asked again");
}

/// A forged token sent again and again (a flood replaying it, or a client retrying) is
/// checked once: each time after, it is refused from memory, still 401 with the reason in
/// a JSON body, and never reaches the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_sent_again_is_refused_without_another_check() {
    let (issuer, p, gw) = citizen_gateway().await;
    let good = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let forged = forge(&issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin"})), &good);
    let before = metric(&gw.metrics().await, "edgegate_jwt_signature_checks_total");
    for _ in 0..20 {
        let (status, challenge, body) = get(&gw, "/api/permits", Some(&forged)).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("unauthenticated")), "{body}");
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="edgegate", error="invalid_token""#));
    }
    let after = metric(&gw.metrics().await, "edgegate_jwt_signature_checks_total");
    assert_eq!(after - before, 1.0, "checked once, refused from memory 19 times");
    assert_eq!(p.requests(), 0);
}

/// A reload that leaves `identity.jwt` and the JWKS as they were keeps the verified tokens
/// and the clients' budgets: every citizen's token checked again after each reload would be
/// a CPU spike, and would run a shared address into its budget. A changed JWKS starts
/// afresh: a token signed by a key no longer there is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_verified_tokens_unless_the_keys_change() {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let yaml = |extra: &str| {
        policy_config(&p, true, true).replace(
            "keys: jwks.json}}\n",
            &format!("keys: jwks.json, new_tokens_per_client: {{rate: 1, burst: 1}}}}}}\n{extra}"),
        )
    };
    let gw = Gateway::launch(&yaml(""), Launch { dir: Some(policy_dir(&issuer)), ..Launch::default() }).await;
    let reload = || async {
        let outcome: serde_json::Value =
            client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
        assert_eq!(outcome["result"], "applied", "{outcome}");
    };
    let a = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let b = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-8"}));
    assert_eq!(get(&gw, "/api/permits", Some(&a)).await.0, 200, "A is checked: the budget is spent");
    // Another setting changes; identity does not.
    gw.write_config(&yaml("logging: {access_log: true}\n"));
    reload().await;
    // (Rebuilt, the verifier would have a fresh budget for B, and would check A with it.)
    assert_eq!(get(&gw, "/api/permits", Some(&b)).await.0, 429, "the spent budget is still spent");
    assert_eq!(get(&gw, "/api/permits", Some(&a)).await.0, 200, "and A is still remembered");
    // The identity provider's keys change: A's key is gone, and so is A.
    let rotated = Issuer::new();
    std::fs::write(gw.dir.path().join("config/jwks.json"), &rotated.jwks).expect("jwks");
    reload().await;
    assert_eq!(get(&gw, "/api/permits", Some(&a)).await.0, 401, "a token of a removed key is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_listener_or_audit_off_denies_even_citizens() {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let token = issuer.token(Algorithm::ES256, serde_json::json!({}));
    for (behind_tls, audit) in [(false, true), (true, false)] {
        let gw = Gateway::launch(
            &policy_config(&p, behind_tls, audit),
            Launch { dir: Some(policy_dir(&issuer)), ..Launch::default() },
        )
        .await;
        assert_eq!(get(&gw, "/api/permits", Some(&token)).await.0, 403, "behind_tls {behind_tls}, audit {audit}");
    }
    assert_eq!(p.requests(), 0);
}

/// As `citizen_gateway`, with no watcher: the tests reload it themselves.
async fn reloaded_by_hand() -> (Issuer, edgegate::pod::Pod, Gateway) {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let gw = Gateway::launch(
        &policy_config(&p, true, true),
        Launch { dir: Some(policy_dir(&issuer)), no_watch: true, ..Launch::default() },
    )
    .await;
    (issuer, p, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_reload_and_broken_policies_are_rejected() {
    let (issuer, _pod, gw) = reloaded_by_hand().await;
    let admin = issuer.token(Algorithm::EdDSA, serde_json::json!({"role": "admin"}));
    assert_eq!(get(&gw, "/api/x", Some(&admin)).await.0, 403);

    let policy = gw.dir.path().join("config/policy/government.rego");
    let original = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(
        &policy,
        original.replace(r#"input.user.role == "citizen""#, r#"input.user.role in {"citizen", "admin"}"#),
    )
    .expect("write");
    let c = client();
    let outcome: serde_json::Value =
        c.post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied", "a changed policy file is a changed config: {outcome}");
    assert_eq!(get(&gw, "/api/x", Some(&admin)).await.0, 200);

    std::fs::write(&policy, "package government.digital\nimport rego.v1\nallow if {\n").expect("break");
    let resp = c.post(gw.admin_url("/-/reload")).send().await.expect("reload");
    assert_eq!(resp.status(), 422);
    let outcome: serde_json::Value = resp.json().await.expect("JSON");
    assert!(outcome["errors"].to_string().contains("policies.dir"), "{outcome}");
    assert!(outcome["errors"].to_string().contains("government.rego"), "{outcome}");
    // The previous policy keeps deciding.
    assert_eq!(get(&gw, "/api/x", Some(&admin)).await.0, 200);
    assert_eq!(
        get(&gw, "/api/x", Some(&issuer.token(Algorithm::ES256, serde_json::json!({"role": "clerk"})))).await.0,
        403
    );

    // A rule of 31 nested brackets: the parser's backtracking held this reload for about a
    // quarter of an hour. Refused with the reason, the previous policy still deciding.
    let nested = format!("{}1{}", "[".repeat(31), "]".repeat(31));
    std::fs::write(
        &policy,
        format!("package government.digital\nimport rego.v1\nallow if {{\n  x := {nested}\n  x\n}}\n"),
    )
    .expect("nest");
    let resp = c.post(gw.admin_url("/-/reload")).send().await.expect("reload");
    assert_eq!(resp.status(), 422);
    let outcome: serde_json::Value = resp.json().await.expect("JSON");
    assert!(outcome["errors"].to_string().contains("too complex to parse"), "{outcome}");
    assert_eq!(get(&gw, "/api/x", Some(&admin)).await.0, 200);
}

/// A verified token's repeated requests are given the decision the policy made on its
/// first (`edgegate_policy_decisions_remembered_total`), and a remembered decision never
/// outlives what it was made on: a changed policy decides afresh at the next request, and a
/// policy that reads the clock is evaluated on every request. (The audit log failing under
/// a remembered allow: `a_failing_log_refuses_citizens_until_it_recovers`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_decisions_are_remembered_until_the_policy_changes() {
    let (issuer, p, gw) = reloaded_by_hand().await;
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let counts = |m: &str| {
        [
            r#"edgegate_policy_decisions_total{result="allow",route="services"}"#,
            r#"edgegate_policy_decisions_total{result="deny",route="services"}"#,
            r#"edgegate_policy_decisions_remembered_total{route="services"}"#,
            r#"edgegate_policy_evaluation_seconds_count{route="services"}"#,
        ]
        .map(|series| metric(m, series))
    };
    for _ in 0..5 {
        assert_eq!(get(&gw, "/api/x", Some(&citizen)).await.0, 200);
    }
    assert_eq!(counts(&gw.metrics().await), [5.0, 0.0, 4.0, 1.0], "allowed five times, evaluated once");

    let policy = gw.dir.path().join("config/policy/government.rego");
    let original = std::fs::read_to_string(&policy).expect("policy");
    let reload = |text: String| {
        let gw = &gw;
        let policy = &policy;
        async move {
            std::fs::write(policy, text).expect("write");
            let outcome: serde_json::Value =
                client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
            assert_eq!(outcome["result"], "applied", "{outcome}");
        }
    };
    // Citizens are no longer allowed: the remembered allow is not the new policy's.
    reload(original.replace(r#"input.user.role == "citizen""#, r#"input.user.role == "clerk""#)).await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "/api/x", Some(&citizen)).await.0, 403);
    }
    assert_eq!(counts(&gw.metrics().await), [5.0, 3.0, 6.0, 2.0]);

    // A policy reading the clock decides anew each time.
    reload(original.replace(r#"input.audit.enabled == true"#, "input.audit.enabled == true\n\ttime.now_ns() > 0"))
        .await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "/api/x", Some(&citizen)).await.0, 200);
    }
    assert_eq!(counts(&gw.metrics().await), [8.0, 3.0, 6.0, 5.0]);
    assert_eq!(p.requests(), 8, "only allowed requests reached the pod");
}

/// Requests without a token on an `identity: optional` route are decided once per question
/// and then given that decision (`edgegate_policy_decisions_remembered_total`); for a policy
/// that decides by the client's address and a header, per address and value of the header:
/// a client named by the trusted proxy as another address, or sending another value, is
/// never given the allow 10.9.9.9's counter requests got, and never reaches the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_decisions_are_remembered_per_address_when_the_policy_reads_it() {
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let dir = policy_dir(&issuer);
    let rule = "package catalogue\nimport rego.v1\nallow if { input.route == \"catalogue\"; input.source.ip == \"10.9.9.9\"; input.request.headers[\"x-channel\"] == \"counter\" }\n";
    std::fs::write(dir.path().join("config/policy/catalogue.rego"), rule).expect("policy");
    let yaml = policy_config(&p, true, true)
        .replace("data.government.digital.allow, identity: optional", "data.catalogue.allow, identity: optional")
        + "trusted_proxies: [127.0.0.1/32]\n";
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), ..Launch::default() }).await;
    let from = |ip: &'static str, channel: &'static str| {
        let gw = &gw;
        async move {
            let req = client().get(gw.url("/catalogue/x")).header("x-forwarded-for", ip).header("x-channel", channel);
            req.send().await.expect("request").status().as_u16()
        }
    };
    for _ in 0..3 {
        assert_eq!(from("10.9.9.9", "counter").await, 200);
        assert_eq!(from("10.9.9.8", "counter").await, 403, "another address is not given 10.9.9.9's allow");
        assert_eq!(from("10.9.9.9", "web").await, 403, "another channel is not given the counter's allow");
    }
    let m = gw.metrics().await;
    let series = |s: &str| metric(&m, s);
    assert_eq!(series(r#"edgegate_policy_decisions_total{result="allow",route="catalogue"}"#), 3.0);
    assert_eq!(series(r#"edgegate_policy_decisions_total{result="deny",route="catalogue"}"#), 6.0);
    // Each question is evaluated once per worker that meets it (two here).
    let evaluated = series(r#"edgegate_policy_evaluation_seconds_count{route="catalogue"}"#);
    assert!((3.0..=6.0).contains(&evaluated), "evaluated {evaluated} times");
    assert_eq!(series(r#"edgegate_policy_decisions_remembered_total{route="catalogue"}"#), 9.0 - evaluated);
    assert_eq!(p.requests(), 3, "only 10.9.9.9's counter requests reached the pod");
    // As raw bytes: the header sent twice (counter beside web) is a new question, refused,
    // not given the counter's remembered allow; the name in another case is the same header.
    let raw = |fields: &str| {
        format!("GET /catalogue/x HTTP/1.1\r\nHost: h.test\r\nX-Forwarded-For: 10.9.9.9\r\n{fields}Connection: close\r\n\r\n")
    };
    let (status, text, _) = raw_exchange(gw.addr(), raw("x-channel: counter\r\nx-channel: web\r\n").as_bytes()).await;
    assert_eq!(status, Some(403), "{text}");
    let (status, text, _) = raw_exchange(gw.addr(), raw("X-CHANNEL: counter\r\n").as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    assert_eq!(p.requests(), 4, "the doubled header never reached the pod");
}

/// Files a reload reads that never answer (a FIFO: the read waits for a writer) or never end
/// (`/dev/zero`: read until memory runs out), or that are too large or too many, are refused
/// at once with the file and the reason; the previous config keeps serving, and the next
/// good reload applies. Before, a FIFO held the reload (and every later one) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_never_answer_or_never_end_are_refused_at_reload() {
    let (issuer, _pod, gw) = reloaded_by_hand().await;
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({}));
    assert_eq!(get(&gw, "/api/x", Some(&citizen)).await.0, 200);
    let config = gw.dir.path().join("config");
    let policy = config.join("policy");
    let fifo = |path: &std::path::Path| {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    };
    let c = client();
    let reload = || async {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(20), c.post(gw.admin_url("/-/reload")).send())
            .await
            .expect("the reload answers instead of waiting on the file")
            .expect("reload");
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.expect("JSON"))
    };
    let big_rego = |n: usize| format!("package filler{n}\n{}", "# filler\n".repeat(115_000));
    type Setup = Box<dyn Fn()>;
    let remove = |paths: Vec<std::path::PathBuf>| -> Setup {
        Box::new(move || paths.iter().for_each(|p| std::fs::remove_file(p).expect("rm")))
    };
    let (extra, data, jwks) = (policy.join("extra.rego"), policy.join("data.json"), config.join("jwks.json"));
    let fillers: Vec<_> = (0..5).map(|n| policy.join(format!("filler{n}.rego"))).collect();
    let notes: Vec<_> = (0..1_000).map(|n| policy.join(format!("note{n}.txt"))).collect();
    let cases: Vec<(Setup, Setup, &str, &str)> = vec![
        (
            Box::new({
                let f = extra.clone();
                move || fifo(&f)
            }),
            remove(vec![extra]),
            "extra.rego",
            "not a regular file (a FIFO)",
        ),
        (
            Box::new({
                let f = data.clone();
                move || std::os::unix::fs::symlink("/dev/zero", &f).expect("symlink")
            }),
            remove(vec![data]),
            "data.json",
            "not a regular file (a device)",
        ),
        (
            Box::new({
                let f = jwks.clone();
                move || {
                    std::fs::rename(&f, f.with_extension("kept")).expect("mv");
                    fifo(&f);
                }
            }),
            Box::new(move || std::fs::rename(jwks.with_extension("kept"), &jwks).expect("mv")),
            "identity.jwt.keys",
            "not a regular file (a FIFO)",
        ),
        (
            Box::new({
                let files = fillers.clone();
                move || files.iter().enumerate().for_each(|(n, f)| std::fs::write(f, big_rego(n)).expect("write"))
            }),
            remove(fillers),
            "filler4.rego",
            "the Rego files of the directory pass 4 MiB together",
        ),
        (
            Box::new({
                let files = notes.clone();
                move || files.iter().for_each(|f| std::fs::write(f, "").expect("write"))
            }),
            remove(notes),
            "policy",
            "has more than 1000 entries",
        ),
    ];
    for (break_it, mend_it, file, reason) in &cases {
        break_it();
        let (status, outcome) = reload().await;
        assert_eq!(status, 422, "{reason}: {outcome}");
        let errors = outcome["errors"].to_string();
        assert!(errors.contains(file) && errors.contains(reason), "{reason}: {outcome}");
        // The previous config keeps serving: the same policy, the same keys.
        assert_eq!(get(&gw, "/api/x", Some(&citizen)).await.0, 200, "{reason}");
        mend_it();
    }
    // Mended, a changed policy applies.
    std::fs::write(policy.join("extra.rego"), "package extra\nimport rego.v1\nok := true\n").expect("write");
    let (status, outcome) = reload().await;
    assert_eq!((status, outcome["result"].as_str()), (200, Some("applied")), "{outcome}");
    assert_eq!(get(&gw, "/api/x", Some(&citizen)).await.0, 200);
}

#[test]
fn check_reports_broken_policies_and_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("policy")).expect("mkdir");
    std::fs::write(dir.path().join("policy/p.rego"), "package p\nallow if {\n").expect("write");
    std::fs::write(dir.path().join("jwks.json"), "{\"keys\": []}").expect("write");
    let cfg = dir.path().join("edgegate.yaml");
    std::fs::write(
        &cfg,
        "listeners: [{name: p, address: \"127.0.0.1:0\"}]\npolicies: {dir: policy}\nidentity: {jwt: {issuer: i, audience: a, keys: jwks.json}}\nupstreams: {svc: {endpoints: [{address: \"10.0.0.1:80\"}]}}\nroutes: [{name: r, upstream: svc, policy: data.p.allow}]\n",
    )
    .expect("write");
    let out = output(std::process::Command::new(BIN).arg("check").arg("--config").arg(&cfg));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policies.dir:") && stderr.contains("p.rego"), "{stderr}");
    assert!(stderr.contains("identity.jwt.keys:") && stderr.contains("no keys"), "{stderr}");
}

#[test]
fn policy_test_command_runs_the_shipped_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/policy");
    let out = output(std::process::Command::new(BIN).args(["policy", "test", dir]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("PASS data.government.digital.test_citizen_allowed"));
    assert!(stdout.contains("PASS: 8/8"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_policy_file_reloads_through_the_watcher() {
    let (issuer, _pod, gw) = citizen_gateway().await;
    let admin = issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin"}));
    assert_eq!(get(&gw, "/api/x", Some(&admin)).await.0, 403);
    // The policy lives in a subdirectory of the config directory: it is watched too.
    let policy = gw.dir.path().join("config/policy/government.rego");
    let text = std::fs::read_to_string(&policy).expect("policy");
    std::fs::write(
        &policy,
        text.replace(r#"input.user.role == "citizen""#, r#"input.user.role in {"citizen", "admin"}"#),
    )
    .expect("write");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while get(&gw, "/api/x", Some(&admin)).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "policy edit never applied");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gw.admin_json("/-/config").await["last_reload"]["trigger"], "watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgegate_token_mints_tokens_the_gateway_accepts_from_its_own_jwks() {
    let (issuer, _pod, gw) = citizen_gateway().await;
    let keys = tempfile::tempdir().expect("tempdir");
    for (alg, pem) in &issuer.pems {
        let kid = if *alg == Algorithm::ES256 { "es" } else { "ed" };
        let key = keys.path().join(format!("{kid}.pem"));
        std::fs::write(&key, pem).expect("write key");
        let mint = |claims: serde_json::Value, ttl: &str| {
            let out = output(std::process::Command::new(BIN).args(["token", "--key"]).arg(&key).args([
                "--kid",
                kid,
                "--ttl",
                ttl,
                "--claims",
                &claims.to_string(),
            ]));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let claims = |role: &str| serde_json::json!({"sub": "citizen-9", "iss": ISSUER, "aud": AUDIENCE, "role": role});
        assert_eq!(get(&gw, "/api/x", Some(&mint(claims("citizen"), "5m"))).await.0, 200, "{alg:?} citizen");
        assert_eq!(get(&gw, "/api/x", Some(&mint(claims("admin"), "5m"))).await.0, 403, "{alg:?} admin");
        let mut expired = claims("citizen");
        expired["exp"] = serde_json::json!(1_000_000_000);
        assert_eq!(get(&gw, "/api/x", Some(&mint(expired, "5m"))).await.0, 401, "{alg:?} expired");
    }
    // A file that is no key, and claims that are no object, are named.
    let bad = keys.path().join("bad.pem");
    std::fs::write(&bad, "not a key").expect("write");
    let out = output(std::process::Command::new(BIN).args(["token", "--key"]).arg(&bad).args(["--claims", "{}"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a PEM private key"));
    let out = output(
        std::process::Command::new(BIN)
            .args(["token", "--key"])
            .arg(keys.path().join("es.pem"))
            .args(["--claims", "[1]"]),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be a JSON object"));
}

/// A route's rate limit is checked once the caller is known and before the policy runs:
/// a citizen over the limit is answered 429 without a policy evaluation — however dear the
/// request would make one (here an 11 KiB query of distinct names on a route whose policy
/// reads the query whole) — and requests the policy denies count against the limit too, so a
/// client cannot probe a route without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_costs_no_policy_evaluation() {
    let issuer = Issuer::new();
    let dir = policy_dir(&issuer);
    // The shipped policy, and a rule that reads the query whole (so its input carries all of
    // it, and it is evaluated on every request).
    std::fs::write(
        dir.path().join("config/policy/reads_query.rego"),
        "package government.reads\nimport rego.v1\ndefault allow := false\nallow if { input.request.query.form == \"permit\"; count(input.request.query) > 1; data.government.digital.allow }\n",
    )
    .expect("write policy");
    let (p, gw) = citizen_routes(dir, "  - {name: forms, match: {path_prefix: /forms/}, upstream: svc, policy: data.government.reads.allow, rate_limit: {rate: 1, burst: 3, key: user}}\n").await;
    let citizen = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let evaluations = |m: &str| metric(m, r#"edgegate_policy_evaluation_seconds_count{route="forms"}"#);
    let hostile: String = (0..2500).map(|i| format!("{}{}=&", (b'a' + (i % 26) as u8) as char, i / 26)).collect();
    let path = format!("/forms/apply?form=permit&{hostile}");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let resp = client().get(gw.url(&path)).bearer_auth(&citizen).send().await.expect("request");
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    let m = gw.metrics().await;
    assert_eq!(evaluations(&m), 3.0, "the limited requests were evaluated: {m}");
    assert_eq!(metric(&m, r#"edgegate_rate_limited_total{route="forms"}"#), 5.0);
    assert_eq!(p.requests(), 3);

    // A citizen whose every request is denied is limited all the same.
    let other = issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-2"}));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = client().get(gw.url("/forms/apply?form=other")).bearer_auth(&other).send().await.expect("request");
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [403, 403, 403, 429, 429, 429]);
    let m = gw.metrics().await;
    assert_eq!(evaluations(&m), 6.0, "{m}");
    assert_eq!(p.requests(), 3, "no denied request reached the pod");
}

/// A pod and a gateway whose `/catalogue/` route (identity optional) is decided by
/// `data.catalogue.allow` of `rule`, the whole of `config/policy/catalogue.rego` (whose
/// path is handed back to be rewritten); `no_watch`: reloads only when asked.
async fn catalogue_policy(rule: &str, no_watch: bool) -> (edgegate::pod::Pod, Gateway, std::path::PathBuf) {
    let p = pod("svc").await;
    let dir = policy_dir(&Issuer::new());
    let policy = dir.path().join("config/policy/catalogue.rego");
    std::fs::write(&policy, rule).expect("policy");
    let yaml = policy_config(&p, true, true)
        .replace("data.government.digital.allow, identity: optional", "data.catalogue.allow, identity: optional");
    let gw = Gateway::launch(&yaml, Launch { dir: Some(dir), no_watch, ..Launch::default() }).await;
    (p, gw, policy)
}

/// A raw GET of `/catalogue/x?{query}` on a connection of its own.
fn catalogue_get(query: &str) -> String {
    format!("GET /catalogue/x?{query} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n")
}

/// A policy that hands a number from the request to a builtin that makes something that
/// big (`numbers.range(1, to_number(input.request.query.n))`) let any client ask for
/// 240 GB in one decision: the allocation failed and the process aborted, taking every
/// connection of the node with it. Now the builtin refuses past its bound, the request is
/// refused (403, JSON, request id) without reaching the pod, the refusal counted as an
/// error with its reason logged, and the gateway goes on answering — a small `n` is allowed
/// as before. Sent as raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_a_client_chooses_for_a_policy_builtin_costs_a_403_not_the_process() {
    let rule =
        "package catalogue\nimport rego.v1\nallow if count(numbers.range(1, to_number(input.request.query.n))) < 10\n";
    let (p, gw, _) = catalogue_policy(rule, false).await;
    let get = catalogue_get;
    let (status, text, _) = raw_exchange(gw.addr(), get("n=5").as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    for n in ["10000000000", "9223372036854775807", "-9223372036854775808", "100001"] {
        let (status, text, _) = raw_exchange(gw.addr(), get(&format!("n={n}")).as_bytes()).await;
        assert_eq!(status, Some(403), "n={n}: {text}");
        assert!(text.contains("\"request_id\""), "n={n}: {text}");
    }
    let (status, text, _) = raw_exchange(gw.addr(), get("n=3").as_bytes()).await;
    assert_eq!(status, Some(200), "the gateway lives on: {text}");
    assert_eq!(p.requests(), 2, "only the small ranges reached the pod");
    let m = gw.metrics().await;
    // The builtin's error ends the evaluation: an error, a deny, with its reason logged.
    assert_eq!(metric(&m, r#"edgegate_policy_decisions_total{result="error",route="catalogue"}"#), 4.0);
    gw.wait_for_log("numbers.range: 10000000000 elements, more than 100000", std::time::Duration::from_secs(10)).await;
}

/// A policy written the usual way — a value bound from the request, then `not` of a check
/// on it — must not open to a client that leaves the value out or sends one its builtin
/// cannot read. Either made the check undefined in the gateway's compiled policy, so
/// `not` of it was true: a request with no `district`, or `n=abc`, was served. Now the
/// first is a deny (Rego: a binding of nothing fails the body), the second an error with
/// its reason (a deny too); the pod sees only the requests the policy allows. Raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_a_client_leaves_out_or_garbles_never_opens_a_policy() {
    let rule = r#"package catalogue
import rego.v1
allow if {
	district := input.request.query.district
	not district in {"7", "9"}
	not too_many
}
too_many if to_number(input.request.query.n) > 5
"#;
    let (p, gw, _) = catalogue_policy(rule, false).await;
    let get = catalogue_get;
    for (query, expected) in [
        ("district=3&n=2", 200),
        ("district=3", 200),
        ("district=7&n=2", 403),
        ("district=3&n=9", 403),
        ("n=2", 403),
        ("", 403),
        ("district=3&n=abc", 403),
        ("district=3&n=", 403),
        ("district=3&n=%00", 403),
    ] {
        let (status, text, _) = raw_exchange(gw.addr(), get(query).as_bytes()).await;
        assert_eq!(status, Some(expected), "{query:?}: {text}");
        if expected == 403 {
            assert!(text.contains("\"error\":\"forbidden\"") && text.contains("\"request_id\""), "{query:?}: {text}");
        }
    }
    assert_eq!(p.requests(), 2, "only the allowed requests reached the pod");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, r#"edgegate_policy_decisions_total{result="error",route="catalogue"}"#), 3.0, "{m}");
    assert_eq!(metric(&m, r#"edgegate_policy_decisions_total{result="deny",route="catalogue"}"#), 4.0, "{m}");
    gw.wait_for_log("to_number: could not parse string as number", std::time::Duration::from_secs(10)).await;
}

/// A policy whose rules call each other in a cycle passed `edgegate check` and was applied
/// by a reload; the first request it decided recursed until the worker's stack overflowed
/// and the process aborted — every connection of the node lost, with the config already
/// kept as last-known-good. Now the reload is refused, the cycle named, and the running
/// policy goes on deciding (raw bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_whose_rules_call_each_other_is_refused_and_the_node_keeps_deciding() {
    let rule = "package catalogue\nimport rego.v1\nallow if input.request.query.ok == \"1\"\n";
    let (p, gw, policy) = catalogue_policy(rule, true).await;
    let get = catalogue_get;
    assert_eq!(raw_exchange(gw.addr(), get("ok=1").as_bytes()).await.0, Some(200));

    let cycle = "package catalogue\nimport rego.v1\nallow if { input.request.query.ok == \"1\"; not blocked }\n\
                 blocked if suspended\nsuspended if { input.request.query.ok == \"0\"; blocked }\n";
    std::fs::write(&policy, cycle).expect("policy");
    let resp = client().post(gw.admin_url("/-/reload")).send().await.expect("reload");
    assert_eq!(resp.status(), 422);
    let outcome: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(outcome["result"], "error");
    let errors = outcome["errors"].to_string();
    assert!(
        errors.contains("recursion: data.catalogue.blocked -> data.catalogue.suspended -> data.catalogue.blocked"),
        "{errors}"
    );

    for (query, status) in [("ok=1", 200), ("ok=0", 403), ("ok=1", 200)] {
        let (got, text, _) = raw_exchange(gw.addr(), get(query).as_bytes()).await;
        assert_eq!(got, Some(status), "{query}: the policy before the reload decides: {text}");
    }
    assert_eq!(p.requests(), 3);
}
