//! What the upstream and the client see: forwarding headers added, request ids kept or
//! generated, hop-by-hop headers removed in both directions.

use crate::support::*;

async fn gateway_with_echo_pod() -> (Gateway, edgegate::pod::Pod) {
    let p = pod("echo").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: echo, upstream: echo, public: true}}]\n",
        group("echo", &[p.addr])
    )))
    .await;
    (gw, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_id_pass_through() {
    let (gw, _pod) = gateway_with_echo_pod().await;
    let resp = client()
        .get(gw.url("/who"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "citizen-req-1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers()["x-request-id"], "citizen-req-1");
    let echo: serde_json::Value = resp.json().await.expect("JSON");
    let seen = &echo["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "an untrusted client's own list is replaced");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-request-id"], "citizen-req-1");
}

/// The client's request id and trace are found however the client wrote their names, on
/// requests the gateway forwards and on those it refuses — before its checks walk the
/// fields (a head too large), while they do (a method override) and after (a bad path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_request_id_and_trace_are_kept_in_any_case_forwarded_or_refused() {
    let (gw, _pod) = gateway_with_echo_pod().await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let forwarded = format!(
        "GET /who HTTP/1.1\r\nHost: h.test\r\nX-REQUEST-ID: citizen-req-7\r\nTraceParent: {trace}\r\n\
         Connection: close\r\n\r\n"
    );
    let (status, text, _) = raw_exchange(gw.addr(), forwarded.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    assert!(text.to_ascii_lowercase().contains("\r\nx-request-id: citizen-req-7\r\n"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echo: serde_json::Value = serde_json::from_str(body).expect("the pod's JSON");
    assert_eq!(echo["headers"]["x-request-id"], "citizen-req-7");
    let tp = echo["headers"]["traceparent"].as_str().expect("a traceparent");
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "the client's trace continues: {tp}");

    let long = "a".repeat(20 * 1024);
    for (request, code) in [
        (
            "GET /who HTTP/1.1\r\nHost: h.test\r\nX-Request-Id: citizen-req-8\r\nX-HTTP-Method-Override: DELETE\r\n\r\n"
                .to_owned(),
            "method_override",
        ),
        (
            format!("GET /who HTTP/1.1\r\nHost: h.test\r\nx-request-id: citizen-req-8\r\nX-Padding: {long}\r\n\r\n"),
            "request_header_too_large",
        ),
        ("GET /a/%2e%2e/%2e%2e/x HTTP/1.1\r\nHost: h.test\r\nX-Request-ID: citizen-req-8\r\n\r\n".to_owned(), "path_traversal"),
    ] {
        let (status, text, _) = raw_exchange(gw.addr(), request.as_bytes()).await;
        assert!(matches!(status, Some(400 | 431)), "{code}: {text}");
        assert!(text.contains(&format!("\"error\":\"{code}")), "{code}: {text}");
        assert!(text.to_ascii_lowercase().contains("\r\nx-request-id: citizen-req-8\r\n"), "{code}: {text}");
        assert!(text.contains("\"request_id\":\"citizen-req-8\""), "{code}: {text}");
    }
}

/// Every request of a kept-alive connection tells the pod the connection's peer in
/// `X-Forwarded-For` (the value is formatted once per connection and shared), whatever a
/// request claims: three pipelined requests, the second and third with lists of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_connection_carries_its_peer_in_x_forwarded_for() {
    let (gw, _pod) = gateway_with_echo_pod().await;
    let requests = "GET /one HTTP/1.1\r\nHost: h.test\r\n\r\n\
                    GET /two HTTP/1.1\r\nHost: h.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n\
                    GET /three HTTP/1.1\r\nHost: h.test\r\nx-forwarded-for: 7.7.7.7, 8.8.8.8\r\nConnection: close\r\n\r\n";
    let (status, text, _) = raw_exchange(gw.addr(), requests.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    let seen: Vec<serde_json::Value> = text
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|answer| serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default()).expect("JSON"))
        .collect();
    assert_eq!(seen.len(), 3, "{text}");
    for (echo, path) in seen.iter().zip(["/one", "/two", "/three"]) {
        assert_eq!(echo["path"], path, "{text}");
        assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1", "{path}: {text}");
    }
}

/// The policy's `input.source.ip` and the pod's `X-Forwarded-For` follow the trusted
/// proxy rule: a client cannot claim another address; a trusted proxy can tell us its
/// client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    use jsonwebtoken::Algorithm;
    let issuer = Issuer::new();
    let p = pod("svc").await;
    let dir = policy_dir(&issuer);
    std::fs::write(
        dir.path().join("config/policy/source.rego"),
        "package edgegate.source\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.source.ip == input.request.headers[\"x-expect-ip\"]\n",
    )
    .expect("policy");
    let yaml = |trusted: &str| {
        policy_yaml(
            "  - {name: public, address: \"127.0.0.1:0\"}\n",
            p.addr,
            "  - {name: r, upstream: svc, policy: data.edgegate.source.allow}\n",
            &format!("trusted_proxies: [{trusted}]\n"),
        )
    };
    let gw = Gateway::launch(&yaml("10.0.0.0/8"), Launch { dir: Some(dir), no_watch: true, ..Launch::default() }).await;
    let token = issuer.token(Algorithm::ES256, serde_json::json!({}));
    let ask = |claimed: &'static str, expect: &'static str| {
        client()
            .get(gw.url("/x"))
            .bearer_auth(&token)
            .header("x-forwarded-for", claimed)
            .header("x-expect-ip", expect)
            .send()
    };
    // 127.0.0.1 is not trusted: its claim is ignored by the policy and dropped upstream.
    assert_eq!(ask("198.51.100.7", "198.51.100.7").await.expect("req").status(), 403);
    let resp = ask("198.51.100.7", "127.0.0.1").await.expect("req");
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");

    // Trusted: the right-most address the proxy reports is the client, and the list grows.
    gw.write_config(&yaml("127.0.0.0/8"));
    let outcome: serde_json::Value =
        client().post(gw.admin_url("/-/reload")).send().await.expect("reload").json().await.expect("JSON");
    assert_eq!(outcome["result"], "applied");
    let resp = ask("203.0.113.1, 198.51.100.7", "198.51.100.7").await.expect("req");
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.1, 198.51.100.7, 127.0.0.1");
}

/// A gateway config with one public route to the echo pod at `pod`, after `trusted` (a
/// `trusted_proxies` line, or nothing).
fn echo_config(pod: std::net::SocketAddr, trusted: &str) -> String {
    config(&format!(
        "{trusted}upstreams:\n{}routes: [{{name: echo, upstream: echo, public: true}}]\n",
        group("echo", &[pod])
    ))
}

/// Fields that state what only a proxy in front can know — the client's address, the host,
/// scheme, port or prefix it used — reach the pod from a trusted proxy only. Sent as raw
/// bytes, in any spelling, beside fields that must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_claims_reach_the_pod_only_from_trusted_proxies() {
    let p = pod("echo").await;
    let yaml = |trusted: &str| echo_config(p.addr, trusted);
    let claims = "Forwarded: for=10.0.0.3;host=evil.example;proto=https\r\nX-Real-IP: 10.0.0.2\r\n\
        x-client-ip: 10.0.0.4\r\nTrue-Client-IP: 10.0.0.5\r\nX-Cluster-Client-IP: 10.0.0.6\r\n\
        X-FORWARDED-HOST: evil.example\r\nX-Forwarded-Port: 8443\r\nX-Forwarded-Scheme: https\r\n\
        X-Forwarded-Ssl: on\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Server: evil\r\n";
    let request = format!(
        "GET /who HTTP/1.1\r\nHost: h.test\r\n{claims}X-Custom: kept\r\nX-Forwarded-For: 203.0.113.9\r\n\
         Connection: close\r\n\r\n"
    );
    // The names sent, lower-cased: every field the gateway lists as a proxy's claim.
    let claimed: Vec<String> =
        claims.split("\r\n").filter_map(|l| l.split_once(':')).map(|(n, _)| n.trim().to_ascii_lowercase()).collect();
    let mut listed: Vec<String> = edgegate_filters::framing::PROXY_CLAIMS.iter().map(|n| n.to_string()).collect();
    let mut sent = claimed.clone();
    listed.sort();
    sent.sort();
    assert_eq!(sent, listed, "the test sends every claim the gateway lists");
    let seen = |text: &str| -> serde_json::Value {
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
    };

    let gw = Gateway::start(&yaml("")).await;
    let (status, text, _) = raw_exchange(gw.addr(), request.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    let echo = seen(&text);
    for name in &claimed {
        assert!(echo["headers"].get(name).is_none(), "{name} reached the pod from a client: {echo}");
    }
    assert_eq!(echo["headers"]["x-custom"], "kept");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");

    // From a trusted proxy every one of them passes as sent.
    let trusted = Gateway::start(&yaml("trusted_proxies: [127.0.0.0/8]\n")).await;
    let (status, text, _) = raw_exchange(trusted.addr(), request.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    let echo = seen(&text);
    for name in &claimed {
        assert!(echo["headers"].get(name).is_some(), "{name} from a trusted proxy was removed: {echo}");
    }
    assert_eq!(echo["headers"]["x-forwarded-host"], "evil.example");
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
}

/// Servers that hand fields to an application as CGI-style variables (WAGI for WebAssembly,
/// WSGI, PHP) read `X_Forwarded_For` and `X-Forwarded-For` as one `HTTP_X_FORWARDED_FOR`,
/// so an underscore spelling of a field the gateway sets or removes is the same claim in
/// disguise. None reaches the pod, not even from a trusted proxy (which passes its
/// client's fields on as they came); other fields with underscores pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_the_fields_a_proxy_sets_never_reach_the_pod() {
    let p = pod("echo").await;
    let yaml = |trusted: &str| echo_config(p.addr, trusted);
    let disguised = [
        "X_Forwarded_For",
        "x-forwarded_for",
        "X_Forwarded_Proto",
        "X_Request_Id",
        "X_Real_IP",
        "X_FORWARDED_HOST",
        "True_Client_IP",
        "x_cluster_client_ip",
    ];
    let fields: String = disguised.iter().map(|n| format!("{n}: 6.6.6.6\r\n")).collect();
    let request =
        format!("GET /who HTTP/1.1\r\nHost: h.test\r\n{fields}X_Custom_Thing: kept\r\nConnection: close\r\n\r\n");
    for trusted in ["", "trusted_proxies: [127.0.0.0/8]\n"] {
        let gw = Gateway::start(&yaml(trusted)).await;
        let (status, text, _) = raw_exchange(gw.addr(), request.as_bytes()).await;
        assert_eq!(status, Some(200), "{text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let echo: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        let headers = echo["headers"].as_object().unwrap_or_else(|| panic!("{echo}"));
        for name in disguised {
            let name = name.to_ascii_lowercase();
            assert!(!headers.contains_key(&name), "{trusted:?}: {name} reached the pod: {echo}");
        }
        assert!(!body.contains("6.6.6.6"), "{trusted:?}: {echo}");
        assert_eq!(echo["headers"]["x_custom_thing"], "kept", "{trusted:?}: {echo}");
        assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1", "{trusted:?}: {echo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_request_ids_are_replaced() {
    let (gw, _pod) = gateway_with_echo_pod().await;
    let c = client();
    let mut ids = Vec::new();
    for sent in [None, Some("has spaces in it"), Some(&*"x".repeat(65))] {
        let mut req = c.get(gw.url("/"));
        if let Some(v) = sent {
            req = req.header("x-request-id", v);
        }
        let resp = req.send().await.expect("request");
        let id = resp.headers()["x-request-id"].to_str().expect("ascii").to_owned();
        let echo: serde_json::Value = resp.json().await.expect("JSON");
        assert_eq!(echo["headers"]["x-request-id"], id.as_str(), "upstream and client see the same id");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "generated id {id:?}");
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "each request gets its own id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (gw, _pod) = gateway_with_echo_pod().await;
    let resp = raw_request(
        gw.addr(),
        "GET /hop HTTP/1.1\r\nHost: zwfw.example.gov.cn\r\nConnection: keep-alive, X-Client-Private\r\n\
         X-Client-Private: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
         Trailer: X-Checksum\r\nProxy-Authenticate: Basic\r\nX-Pod-Hop-Test: 1\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let echo = resp.json();
    let seen = echo["headers"].as_object().expect("headers");
    for gone in [
        "x-client-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "proxy-authorization",
        "upgrade",
        "http2-settings",
        "trailer",
        "proxy-authenticate",
        "connection",
    ] {
        assert!(!seen.contains_key(gone), "upstream received hop-by-hop {gone}: {seen:?}");
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["host"], "zwfw.example.gov.cn", "Host is forwarded unchanged");
    // The pod answered with `Connection: x-pod-private`, `X-Pod-Private` and `Keep-Alive`.
    assert_eq!(resp.header("x-pod-private"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("keep-alive"), None, "{:?}", resp.headers);
    assert_ne!(resp.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("x-pod-private"));
}

/// A pod's spelling of its field names is not kept (HTTP/1 names are case-insensitive):
/// well-known names go out in their usual capitalisation, others in lower case (as every
/// HTTP/2 hop sends them); the values pass byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_header_name_spelling_is_not_kept_and_its_values_pass_unchanged() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let pod = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_head(&mut conn, &mut buf).await.is_some() {
                    let reply = b"HTTP/1.1 200 OK\r\nX-Permit-Status: Open, In Review\r\nCONTENT-TYPE: text/plain\r\n\
                                  Content-Length: 2\r\n\r\nok";
                    if conn.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: permits, upstream: permits, public: true}}]\n",
        group("permits", &[pod])
    )))
    .await;
    let (status, text, _) =
        raw_exchange(gw.addr(), b"GET /permits/1 HTTP/1.1\r\nHost: zwfw.example.gov.cn\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(status, Some(200), "{text}");
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    assert!(head.contains("\r\nx-permit-status: Open, In Review\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Type: text/plain\r\n"), "{head}");
    assert!(!head.contains("X-Permit-Status") && !head.contains("CONTENT-TYPE"), "{head}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_at_the_pod_and_start_when_absent_or_malformed() {
    let (gw, _pod) = gateway_with_echo_pod().await;
    let seen = |resp: serde_json::Value| resp["headers"]["traceparent"].as_str().map(str::to_owned);
    let parts = |tp: &str| tp.split('-').map(str::to_owned).collect::<Vec<_>>();

    // A client's trace: same trace id and flags, a new parent id (edgegate's hop); its
    // tracestate passes unchanged.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = client()
        .get(gw.url("/traced"))
        .header("traceparent", incoming)
        .header("tracestate", "city=zwfw")
        .send()
        .await
        .expect("request");
    let echo: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(echo["headers"]["tracestate"], "city=zwfw");
    let tp = seen(echo).expect("the pod received a traceparent");
    let p = parts(&tp);
    assert_eq!((p[0].as_str(), p[1].as_str(), p[3].as_str()), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"), "{tp}");
    assert_ne!(p[2], "00f067aa0ba902b7", "edgegate is the pod's parent: {tp}");
    assert_eq!(p[2].len(), 16);

    // None, or a malformed one (upper-case hex, all-zero id, garbage): a new trace, not
    // sampled, each request its own.
    let mut ids = Vec::new();
    for header in [
        None,
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        Some("garbage"),
    ] {
        let mut req = client().get(gw.url("/untraced"));
        if let Some(h) = header {
            req = req.header("traceparent", h);
        }
        let echo: serde_json::Value = req.send().await.expect("request").json().await.expect("JSON");
        let tp = seen(echo).expect("a traceparent is always sent");
        let p = parts(&tp);
        assert_eq!(p.len(), 4, "{tp}");
        assert_eq!((p[0].len(), p[1].len(), p[2].len(), p[3].as_str()), (2, 32, 16, "00"), "{tp}");
        assert!(p[1].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{tp}");
        assert!(p[1].bytes().any(|b| b != b'0'), "{tp}");
        assert_ne!(p[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        ids.push(p[1].clone());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every new trace has its own id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_edgegate_starts_are_sampled_by_config_and_a_clients_choice_is_kept() {
    let p = pod("echo").await;
    let gw = Gateway::start(&config(&format!(
        "tracing: {{sample_ratio: 1.0}}\nupstreams:\n{}routes: [{{name: echo, upstream: echo, public: true}}]\n",
        group("echo", &[p.addr])
    )))
    .await;
    let flags = |header: Option<&'static str>| {
        let mut req = client().get(gw.url("/sampled"));
        if let Some(h) = header {
            req = req.header("traceparent", h);
        }
        async move {
            let echo: serde_json::Value = req.send().await.expect("request").json().await.expect("JSON");
            let tp = echo["headers"]["traceparent"].as_str().expect("a traceparent").to_owned();
            tp.rsplit('-').next().expect("flags").to_owned()
        }
    };
    assert_eq!(flags(None).await, "01", "a trace edgegate starts is sampled at ratio 1.0");
    assert_eq!(flags(Some("garbage")).await, "01");
    assert_eq!(
        flags(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")).await,
        "00",
        "the client decided not to sample: kept"
    );
}

/// The gateway neither compresses nor decompresses: a client's `Accept-Encoding` reaches
/// the pod as sent, and the pod's answer reaches the client as the pod wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_pass_without_compression_either_way() {
    let (gw, _pod) = gateway_with_echo_pod().await;
    let resp = raw_request(
        gw.addr(),
        "GET /enc HTTP/1.1\r\nHost: zwfw.example.gov.cn\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-encoding"), None, "{:?}", resp.headers);
    let echo = resp.json();
    assert_eq!(echo["headers"]["accept-encoding"], "gzip, deflate, br, zstd");
}
