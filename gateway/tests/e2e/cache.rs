//! The response cache through the real gateway: hits after misses without touching the
//! pod, keys that separate hosts and varied headers, Cache-Control and Set-Cookie
//! respected, expiry, and never a cached answer past the policy.

use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::support::*;

async fn fetch(url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Option<String>, String) {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (status, x_cache, age) = (resp.status().as_u16(), h("x-cache"), h("age"));
    (status, x_cache, age, resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_misses_keys_and_cache_control() {
    let p = pod("catalogue").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes:\n  - {{name: catalogue, upstream: catalogue, public: true, cache: {{ttl: 1s, vary: [accept-language]}}}}\n",
        group("catalogue", &[p.addr])
    )))
    .await;
    let url = gw.url("/services?b=2&a=1");

    let (s, x, _, first) = fetch(&url, &[]).await;
    assert_eq!((s, x.as_deref()), (200, Some("MISS")));
    let (s, x, age, again) = fetch(&gw.url("/services?a=1&b=2"), &[]).await;
    assert_eq!((s, x.as_deref()), (200, Some("HIT")), "same key: query order normalised");
    assert!(age.is_some(), "a hit carries Age");
    assert_eq!(again, first, "the cached body");
    assert_eq!(p.requests(), 1, "a hit does not touch the pod");

    // Different Host, different Accept-Language: separate entries.
    assert_eq!(fetch(&url, &[("host", "other.gov.test")]).await.1.as_deref(), Some("MISS"));
    assert_eq!(fetch(&url, &[("accept-language", "zh-CN")]).await.1.as_deref(), Some("MISS"));
    assert_eq!(fetch(&url, &[("accept-language", "zh-CN")]).await.1.as_deref(), Some("HIT"));
    assert_eq!(p.requests(), 3);

    // What the upstream says must not be stored is not stored.
    for q in ["cache_control=no-store", "cache_control=private", "set_cookie=1", "status=500"] {
        let u = gw.url(&format!("/services?{q}"));
        fetch(&u, &[]).await;
        let (_, x, _, _) = fetch(&u, &[]).await;
        assert_eq!(x.as_deref(), Some("MISS"), "{q} must not be cached");
    }
    // A request with Authorization on a non-public cache route bypasses the cache.
    let before = p.requests();
    fetch(&url, &[("authorization", "Bearer whoever")]).await;
    fetch(&url, &[("authorization", "Bearer whoever")]).await;
    assert_eq!(p.requests(), before + 2);

    // TTL expiry.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(fetch(&url, &[]).await.1.as_deref(), Some("MISS"), "expired after its 1 s ttl");

    let metrics = gw.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with(r#"edgegate_cache_lookups_total{result="hit",route="catalogue"} "#)),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l.starts_with("edgegate_cache_entries ")), "{metrics}");
}

/// A GET with a body ("fat GET", written as raw bytes) goes to the pod and is not stored:
/// its answer, which may depend on the body, never becomes the plain GET's cached answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_neither_served_from_nor_stored_in_the_cache() {
    let p = pod("catalogue").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes:\n  - {{name: catalogue, upstream: catalogue, public: true, cache: {{ttl: 60s}}}}\n",
        group("catalogue", &[p.addr])
    )))
    .await;
    let fat = "GET /services HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nevil!";
    let (status, text, _) = raw_exchange(gw.addr(), fat.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    assert!(text.contains("\"body_bytes\":5"), "the pod got the body: {text}");
    assert!(!text.to_ascii_lowercase().contains("x-cache: hit"), "{text}");

    let (s, x, _, body) = fetch(&gw.url("/services"), &[("host", "h.test")]).await;
    assert_eq!((s, x.as_deref()), (200, Some("MISS")), "the fat GET's answer was not stored: {body}");
    assert!(body.contains("\"body_bytes\":0"), "{body}");
    // Once the plain GET is stored, a fat GET still goes to the pod, not to the entry.
    let (s, x, _, body) = fetch(&gw.url("/services"), &[("host", "h.test")]).await;
    assert_eq!((s, x.as_deref()), (200, Some("HIT")), "{body}");
    let before = p.requests();
    let (status, text, _) = raw_exchange(gw.addr(), fat.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    assert!(text.contains("\"body_bytes\":5"), "{text}");
    assert_eq!(p.requests(), before + 1);
}

/// Cache hits pipelined on one connection are answered in order, each whole, without the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_for_a_cached_page_are_each_answered_from_the_cache() {
    let p = pod("catalogue").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes:\n  - {{name: catalogue, upstream: catalogue, public: true, cache: {{ttl: 60s}}}}\n",
        group("catalogue", &[p.addr])
    )))
    .await;
    let (s, x, _, first) = fetch(&gw.url("/services"), &[("host", "h.test")]).await;
    assert_eq!((s, x.as_deref()), (200, Some("MISS")), "{first}");
    let before = p.requests();
    let get = "GET /services HTTP/1.1\r\nHost: h.test\r\n\r\n";
    let last = "GET /services HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n";
    let (status, text, closed) = raw_exchange(gw.addr(), [get, get, last].concat().as_bytes()).await;
    assert_eq!((status, closed), (Some(200), true), "{text}");
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    for a in answers {
        assert!(a.starts_with("200 ") && a.to_ascii_lowercase().contains("\r\nx-cache: hit\r\n"), "{a}");
        assert!(a.ends_with(&first), "each answer carries the whole page: {a}");
    }
    assert_eq!(p.requests(), before, "hits never reach the pod");
}

/// The `Host` the echo pod saw, from a raw answer's JSON body.
fn echoed_host(text: &str) -> String {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let echo: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    echo["headers"]["host"].as_str().unwrap_or_default().to_owned()
}

/// The pod is sent the canonical host, with the port as named, and the port keys the answer:
/// a `Host` spelled otherwise, or with a port, cannot put its own value into a page cached
/// for everyone (the echo pod reflects `Host`, as a pod building links from it would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_a_pod_sees_is_the_one_in_the_cache_key() {
    let p = pod("catalogue").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes:\n  - {{name: catalogue, upstream: catalogue, public: true, cache: {{ttl: 60s}}}}\n",
        group("catalogue", &[p.addr])
    )))
    .await;
    let get = |host: &str| format!("GET /services HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    // A port first: stored under its own key, and the pod saw the canonical name with it.
    let (status, text, _) = raw_exchange(gw.addr(), get("H.Test.:1337").as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    assert_eq!(echoed_host(&text), "h.test:1337");
    // The plain host is not served that page: a miss, and the pod saw the plain name.
    let (status, text, _) = raw_exchange(gw.addr(), get("H.TEST.").as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    assert!(text.contains("X-Cache: MISS") || text.to_ascii_lowercase().contains("x-cache: miss"), "{text}");
    assert_eq!(echoed_host(&text), "h.test");
    // Every spelling of the plain host is now that entry, and names the plain host.
    for host in ["h.test", "H.test", "h.test."] {
        let (_, text, _) = raw_exchange(gw.addr(), get(host).as_bytes()).await;
        assert!(text.to_ascii_lowercase().contains("x-cache: hit"), "{host}: {text}");
        assert_eq!(echoed_host(&text), "h.test", "{host}");
    }
    assert_eq!(p.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_never_bypasses_the_policy() {
    let issuer = Issuer::new();
    let (p, gw) = citizen_routes(
        policy_dir(&issuer),
        "  - {name: forms, upstream: svc, policy: data.government.digital.allow, cache: {ttl: 60s, public: true}}\n",
    )
    .await;
    let citizen = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({})));
    let admin = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({"role": "admin"})));
    let url = gw.url("/forms/residence");
    assert_eq!(fetch(&url, &[("authorization", &citizen)]).await.1.as_deref(), Some("MISS"));
    assert_eq!(fetch(&url, &[("authorization", &citizen)]).await.1.as_deref(), Some("HIT"));
    let (status, x, _, _) = fetch(&url, &[("authorization", &admin)]).await;
    assert_eq!((status, x), (403, None), "the policy runs before the cache");
    assert_eq!(fetch(&url, &[]).await.0, 401);
    assert_eq!(p.requests(), 1);
}

/// A pod — a compromised one, or one with a bug — chooses its answers' `max-age`. One of
/// 2^64 − 1 seconds on a route with a stale window overflowed when the window was added to
/// it: storing the answer panicked, and every request for that path lost its connection
/// with no answer. Read as 2^31 seconds (RFC 9111's ceiling), the answer is stored and
/// served, also to the other node through Redis. Sent as raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_max_age_past_any_clock_is_stored_and_served() {
    let p = pod("offices").await;
    let redis = RedisServer::start().await;
    let yaml = config(&format!(
        "cache: {{memory: 16MiB, redis: {{url: \"{}\", timeout: 500ms}}}}\nupstreams:\n{}routes: [{{name: hours, upstream: offices, public: true, cache: {{ttl: 5s, stale_if_error: 1m, stale_while_revalidate: 1m}}}}]\n",
        redis.url(),
        group("offices", &[p.addr])
    ));
    let (a, b) = (Gateway::start(&yaml).await, Gateway::start(&yaml).await);
    let get = "GET /hours?cache_control=max-age=18446744073709551615 HTTP/1.1\r\nHost: zwfw.gov.test\r\nConnection: close\r\n\r\n";
    let x_cache = |text: &str| text.lines().find_map(|l| l.strip_prefix("x-cache: ")).map(str::to_owned);
    for expected in ["MISS", "HIT"] {
        let (status, text, _) = raw_exchange(a.addr(), get.as_bytes()).await;
        assert_eq!((status, x_cache(&text).as_deref()), (Some(200), Some(expected)), "{text}");
    }
    // A's write to Redis is in the background: B asks once it is there.
    let mut conn = redis.connection().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while redis::AsyncCommands::keys::<_, Vec<String>>(&mut conn, "edgegate:cache:*").await.expect("KEYS").is_empty() {
        assert!(std::time::Instant::now() < deadline, "A's answer never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, text, _) = raw_exchange(b.addr(), get.as_bytes()).await;
    assert_eq!((status, x_cache(&text).as_deref()), (Some(200), Some("HIT")), "{text}");
    assert_eq!(p.requests(), 1, "the pod answered once for both nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_cover_for_a_dead_upstream() {
    let p = pod("offices").await;
    let addr = p.addr;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  offices: {{endpoints: [{{address: \"{addr}\"}}], retry: {{attempts: 0}}}}\nroutes:\n  - {{name: hours, upstream: offices, public: true, cache: {{ttl: 500ms, stale_if_error: 1m}}}}\n  - {{name: plain, match: {{path_prefix: /plain/}}, upstream: offices, public: true}}\n"
    )))
    .await;
    let url = gw.url("/office-hours");
    let (_, x, _, body) = fetch(&url, &[]).await;
    assert_eq!(x.as_deref(), Some("MISS"));
    drop(p); // the pod is gone
    tokio::time::sleep(Duration::from_millis(700)).await; // past freshness
    let (status, x, _, stale_body) = fetch(&url, &[]).await;
    assert_eq!((status, x.as_deref()), (200, Some("STALE")), "the stale answer covers for the dead pod");
    assert_eq!(stale_body, body);
    assert_eq!(fetch(&gw.url("/plain/x"), &[]).await.0, 502, "uncached routes still fail");
    assert_eq!(fetch(&gw.url("/never-cached"), &[]).await.0, 502, "nothing stale to serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_upstream_request() {
    let p = pod("forms").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: forms, upstream: forms, public: true, cache: {{ttl: 60s}}}}]\n",
        group("forms", &[p.addr])
    )))
    .await;
    // The pod takes a second, so all ten requests arrive while the first is in flight.
    let url = gw.url("/forms/schema?delay_ms=1000");
    let requests: Vec<_> = (0..10).map(|_| tokio::spawn(fetch_owned(url.clone()))).collect();
    let mut states = Vec::new();
    for r in requests {
        let (status, x_cache) = r.await.expect("join");
        assert_eq!(status, 200);
        states.push(x_cache.unwrap_or_default());
    }
    states.sort();
    assert_eq!(p.requests(), 1, "one upstream request for ten concurrent misses");
    assert_eq!(states.iter().filter(|s| *s == "MISS").count(), 1, "{states:?}");
    assert_eq!(states.iter().filter(|s| *s == "HIT").count(), 9, "{states:?}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.lines().any(|l| l == r#"edgegate_cache_lookups_total{result="coalesced",route="forms"} 9"#),
        "{metrics}"
    );
}

async fn fetch_owned(url: String) -> (u16, Option<String>) {
    let (status, x, _, _) = fetch(&url, &[]).await;
    (status, x)
}

/// A pod and a gateway caching its answers for a minute on one public route.
async fn cached_catalogue() -> (edgegate::pod::Pod, Gateway) {
    let p = pod("catalogue").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: c, upstream: catalogue, public: true, cache: {{ttl: 60s}}}}]\n",
        group("catalogue", &[p.addr])
    )))
    .await;
    (p, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_prefix_on_the_admin_listener() {
    let (_pod, gw) = cached_catalogue().await;
    let host = [("host", "zwfw.gov.test")];
    for path in ["/catalogue/a", "/catalogue/b", "/forms/x"] {
        fetch(&gw.url(path), &host).await;
        assert_eq!(fetch(&gw.url(path), &host).await.1.as_deref(), Some("HIT"));
    }
    let resp = client().delete(gw.admin_url("/-/cache?prefix=zwfw.gov.test/catalogue/")).send().await.expect("purge");
    assert_eq!(resp.status(), 200);
    assert_eq!(fetch(&gw.url("/catalogue/a"), &host).await.1.as_deref(), Some("MISS"), "purged");
    assert_eq!(fetch(&gw.url("/catalogue/b"), &host).await.1.as_deref(), Some("MISS"), "purged");
    assert_eq!(fetch(&gw.url("/forms/x"), &host).await.1.as_deref(), Some("HIT"), "outside the prefix");
    client().delete(gw.admin_url("/-/cache")).send().await.expect("purge all");
    assert_eq!(fetch(&gw.url("/forms/x"), &host).await.1.as_deref(), Some("MISS"), "no prefix purges everything");
}

/// An answer that was on its way from the pod when a purge ran was stored after the purge,
/// so the purge missed it: what the operator purged came back from the cache until it
/// expired. An answer whose request arrived before a purge of its key is now not stored;
/// one outside the purge's prefix is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_in_flight_when_its_purge_runs_is_not_kept() {
    let (p, gw) = cached_catalogue().await;
    let host = [("host", "zwfw.gov.test")];
    let purge = |prefix: &'static str| {
        let url = gw.admin_url(&format!("/-/cache?prefix={prefix}"));
        async move { client().delete(url).send().await.expect("purge").status().as_u16() }
    };
    for (path, prefix, kept) in [
        ("/catalogue/slow?delay_ms=800", "zwfw.gov.test/catalogue/", false),
        ("/forms/slow?delay_ms=800", "zwfw.gov.test/catalogue/", true),
    ] {
        let url = gw.url(path);
        let in_flight = tokio::spawn(async move { fetch(&url, &[("host", "zwfw.gov.test")]).await.1 });
        // The request is at the pod (it answers in 0.8 s) when the purge runs.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(purge(prefix).await, 200);
        assert_eq!(in_flight.await.expect("join").as_deref(), Some("MISS"));
        let before = p.requests();
        let again = fetch(&gw.url(path), &host).await.1;
        assert_eq!(again.as_deref(), Some(if kept { "HIT" } else { "MISS" }), "{path} after a purge of {prefix}");
        assert_eq!(p.requests(), before + usize::from(!kept), "{path}");
    }
}

/// A purge's prefix names the entries of the requests it is written for, however either
/// was spelled: the cache keys entries by the canonical path (`%7e` is `~`, other escapes
/// in upper case), and the prefix is put in that form too — a lower-case escape, an
/// escaped `~`, raw UTF-8 or a prefix escaped once more for the query each purge what they
/// name, and the answer says the prefix as it was applied. Sent as raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_prefix_names_its_entries_however_either_is_spelled() {
    let (_pod, gw) = cached_catalogue().await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: zwfw.gov.test\r\nConnection: close\r\n\r\n");
    let x_cache = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("x-cache: ").or_else(|| l.strip_prefix("X-Cache: ")))
            .map(str::to_owned)
    };
    let paths = ["/%7Euser/a", "/%E5%8A%9E%E4%BA%8B/form", "/%e8%a1%a8/1", "/kept/1"];
    for path in paths {
        raw_exchange(gw.addr(), get(path).as_bytes()).await;
        let (status, text, _) = raw_exchange(gw.addr(), get(path).as_bytes()).await;
        assert_eq!((status, x_cache(&text).as_deref()), (Some(200), Some("HIT")), "{path}: {text}");
    }
    for (query, applied) in [
        ("prefix=zwfw.gov.test/%7euser/", "zwfw.gov.test/~user/"),
        ("prefix=zwfw.gov.test/%e5%8a%9e", "zwfw.gov.test/%E5%8A%9E"),
        ("prefix=zwfw.gov.test%2F%25E8%25A1%25A8%2F", "zwfw.gov.test/%E8%A1%A8/"),
    ] {
        // As raw bytes too: no client library re-spells the query.
        let delete = format!("DELETE /-/cache?{query} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        let (status, text, _) = raw_exchange(gw.admin, delete.as_bytes()).await;
        assert_eq!(status, Some(200), "{query}: {text}");
        let body: serde_json::Value =
            serde_json::from_str(text.split_once("\r\n\r\n").map_or("", |(_, b)| b)).expect("JSON");
        assert_eq!(body["purged"], applied, "{query}");
    }
    for (path, after) in paths.into_iter().zip(["MISS", "MISS", "MISS", "HIT"]) {
        let (status, text, _) = raw_exchange(gw.addr(), get(path).as_bytes()).await;
        assert_eq!((status, x_cache(&text).as_deref()), (Some(200), Some(after)), "{path}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let p = pod("hours").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: hours, upstream: hours, public: true, cache: {{ttl: 500ms, stale_while_revalidate: 1m}}}}]\n",
        group("hours", &[p.addr])
    )))
    .await;
    let url = gw.url("/office-hours");
    let (_, x, _, first) = fetch(&url, &[]).await;
    assert_eq!(x.as_deref(), Some("MISS"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, x, _, stale) = fetch(&url, &[]).await;
    assert_eq!((status, x.as_deref()), (200, Some("STALE")), "expired but within the window");
    assert_eq!(stale, first);
    // One background request refreshes the entry; until it lands, answers stay STALE.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let fresh = loop {
        let (_, x, _, body) = fetch(&url, &[]).await;
        if x.as_deref() == Some("HIT") {
            break body;
        }
        assert_eq!(x.as_deref(), Some("STALE"));
        assert!(std::time::Instant::now() < deadline, "the entry was never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(fresh, first, "the refreshed entry is the pod's new answer");
    assert_eq!(p.requests(), 2, "exactly one background refresh");
}

// A background refresh asks the pod as the request that found the entry stale would have:
// with the canonical host and the port the entry is keyed by, never the client's spelling
// and never without the port (the refreshed page is then served to every spelling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_sends_the_host_the_entry_is_keyed_by() {
    let p = pod("hours").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: hours, upstream: hours, public: true, cache: {{ttl: 500ms, stale_while_revalidate: 1m}}}}]\n",
        group("hours", &[p.addr])
    )))
    .await;
    let get = |host: &str| format!("GET /office-hours HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = |text: &str| -> (String, String) {
        let head = text.split_once("\r\n\r\n").map_or(text, |(h, _)| h);
        let cache = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("x-cache")))
            .map_or(String::new(), |(_, v)| v.trim().to_owned());
        (cache, echoed_host(text))
    };
    let (_, text, _) = raw_exchange(gw.addr(), get("Hours.Test.:1337").as_bytes()).await;
    assert_eq!(answer(&text), ("MISS".to_owned(), "hours.test:1337".to_owned()), "{text}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Found stale under another spelling of the same host and port: the refresh goes out.
    let (_, text, _) = raw_exchange(gw.addr(), get("HOURS.test:1337").as_bytes()).await;
    assert_eq!(answer(&text).0, "STALE", "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text, _) = raw_exchange(gw.addr(), get("hours.test:1337").as_bytes()).await;
        let (cache, host) = answer(&text);
        if cache == "HIT" {
            assert_eq!(host, "hours.test:1337", "the refreshed entry is the pod's answer to the refresh: {text}");
            break;
        }
        assert_eq!(cache, "STALE", "{text}");
        assert!(std::time::Instant::now() < deadline, "the entry was never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.requests(), 2, "one request and one background refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_entries_and_client_no_cache() {
    let issuer = Issuer::new();
    let (p, gw) = citizen_routes(policy_dir(&issuer), "  - {name: mine, upstream: svc, policy: data.government.digital.allow, cache: {ttl: 60s, per_user: true, honour_client_no_cache: true}}\n").await;
    let one = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-1"})));
    let two = format!("Bearer {}", issuer.token(Algorithm::ES256, serde_json::json!({"sub": "citizen-2"})));
    let url = gw.url("/my/applications");
    assert_eq!(fetch(&url, &[("authorization", &one)]).await.1.as_deref(), Some("MISS"));
    assert_eq!(fetch(&url, &[("authorization", &one)]).await.1.as_deref(), Some("HIT"));
    assert_eq!(fetch(&url, &[("authorization", &two)]).await.1.as_deref(), Some("MISS"), "another citizen's entry");
    assert_eq!(p.requests(), 2);
    // no-cache from the client: a fresh answer from the pod, which is stored for later.
    let (_, x, _, _) = fetch(&url, &[("authorization", &one), ("cache-control", "no-cache")]).await;
    assert_eq!(x.as_deref(), Some("MISS"));
    assert_eq!(p.requests(), 3);
    assert_eq!(fetch(&url, &[("authorization", &one)]).await.1.as_deref(), Some("HIT"));
    assert_eq!(p.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_status_header_name_and_set_cookie_are_configurable() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "cache: {{status_header: X-Edge-Cache}}\nupstreams:\n{}routes: [{{name: r, upstream: svc, public: true, cache: {{ttl: 60s, cache_set_cookie: true}}}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    let url = gw.url("/with-cookie?set_cookie=1");
    let first = client().get(&url).send().await.expect("request");
    assert_eq!(first.headers()["x-edge-cache"], "MISS");
    assert!(first.headers().get("x-cache").is_none());
    let second = client().get(&url).send().await.expect("request");
    assert_eq!(second.headers()["x-edge-cache"], "HIT", "Set-Cookie answers are cached when the route says so");
    assert_eq!(p.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hit_carries_its_own_age_and_request_id() {
    let p = pod("catalogue").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes:\n  - {{name: catalogue, upstream: catalogue, public: true, cache: {{ttl: 1h}}}}\n",
        group("catalogue", &[p.addr])
    )))
    .await;
    let url = gw.url("/services/permits");
    let hit = |id: &'static str| {
        let url = url.clone();
        async move {
            let resp = client().get(&url).header("x-request-id", id).send().await.expect("request");
            let all = |n: &str| -> Vec<String> {
                resp.headers().get_all(n).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
            };
            (all("x-cache"), all("age"), all("x-request-id"), all("content-length"), all("date"), all("connection"))
        }
    };
    assert_eq!(hit("first-miss").await.0, ["MISS"]);
    let (x, age, id, len, date, connection) = hit("hit-one").await;
    assert_eq!((x, id), (vec!["HIT".to_owned()], vec!["hit-one".to_owned()]));
    assert_eq!(age.len(), 1, "one Age header: {age:?}");
    assert_eq!(len.len(), 1, "one Content-Length header: {len:?}");
    assert_eq!(date.len(), 1, "one Date header: {date:?}");
    assert_eq!(connection, ["keep-alive"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (x, age, id, ..) = hit("hit-two").await;
    assert_eq!((x, id), (vec!["HIT".to_owned()], vec!["hit-two".to_owned()]), "the second hit's own request id");
    let age: u64 = age.first().and_then(|a| a.parse().ok()).expect("numeric Age");
    assert!(age >= 1, "Age counts from storage, not from the first hit: {age}");
    assert_eq!(p.requests(), 1);
}

/// An HTTP/1 hit is written from the entry's serialised head: byte for byte a well-formed
/// answer (status line, the stored fields, one each of `Date`, `Connection`, `Age`,
/// `Content-Length`), the exact body, and the connection kept alive for the next request —
/// or closed when the client asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_hit_is_one_well_formed_answer_on_a_kept_alive_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = pod("catalogue").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes:\n  - {{name: catalogue, upstream: catalogue, public: true, cache: {{ttl: 1h}}}}\n",
        group("catalogue", &[p.addr])
    )))
    .await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for (id, close) in [("miss", false), ("hit-1", false), ("hit-2", false), ("hit-3", true)] {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let request = format!(
            "GET /services/permits HTTP/1.1\r\nHost: zwfw.example.gov.cn\r\nX-Request-Id: {id}\r\n{connection}\r\n"
        );
        conn.write_all(request.as_bytes()).await.expect("write");
        let head = read_head(&mut conn, &mut buf).await.expect("an answer on the same connection");
        let fields: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let len: usize =
            fields.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).expect("length");
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        answers.push((head, fields, body));
    }
    let miss_body = &answers[0].2;
    for (i, (head, fields, body)) in answers.iter().enumerate().skip(1) {
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let count = |name: &str| fields.iter().filter(|(k, _)| k == name).count();
        let value = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        for once in ["date", "connection", "age", "content-length", "x-cache", "x-request-id", "content-type"] {
            assert_eq!(count(once), 1, "{once} once: {head}");
        }
        assert_eq!(value("x-cache"), Some("HIT"), "{head}");
        assert_eq!(value("x-request-id"), Some(format!("hit-{i}").as_str()), "{head}");
        assert_eq!(value("connection"), Some(if i == 3 { "close" } else { "keep-alive" }), "{head}");
        assert_eq!(body, miss_body, "the stored body, exactly");
    }
    let mut rest = [0u8; 64];
    let n =
        tokio::time::timeout(Duration::from_secs(5), conn.read(&mut rest)).await.expect("closed in time").unwrap_or(0);
    assert_eq!(n, 0, "closed after the answer to `Connection: close`, nothing more sent");
    assert_eq!(p.requests(), 1);
}
