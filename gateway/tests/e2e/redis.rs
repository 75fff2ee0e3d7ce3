//! Redis as the shared second cache level, with a real redis-server: one gateway's miss
//! becomes another's hit, a dead Redis costs no request, and purges reach every gateway.

use std::time::Duration;

use crate::support::*;

fn shared_config(pod: &edgegate::pod::Pod, redis_url: &str) -> String {
    shared_config_waiting(pod, redis_url, "100ms")
}

/// As `shared_config`, waiting `timeout` for each Redis command.
fn shared_config_waiting(pod: &edgegate::pod::Pod, redis_url: &str, timeout: &str) -> String {
    config(&format!(
        "cache: {{memory: 16MiB, redis: {{url: \"{redis_url}\", timeout: {timeout}}}}}\nupstreams:\n{}routes: [{{name: c, upstream: catalogue, public: true, cache: {{ttl: 60s}}}}]\n",
        group("catalogue", &[pod.addr])
    ))
}

async fn x_cache(url: &str) -> (u16, Option<String>) {
    let resp = client().get(url).header("host", "zwfw.gov.test").send().await.expect("request");
    (resp.status().as_u16(), resp.headers().get("x-cache").and_then(|v| v.to_str().ok()).map(str::to_owned))
}

/// Polls until `url` is answered from a cache (the L2 write is asynchronous).
async fn until_hit(url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if x_cache(url).await.1.as_deref() == Some("HIT") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{url} never became a cache hit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_share_answers_survive_a_dead_redis_and_share_purges() {
    let redis = RedisServer::start().await;
    let p = pod("catalogue").await;
    let a = Gateway::start(&shared_config(&p, &redis.url())).await;
    let b = Gateway::start(&shared_config(&p, &redis.url())).await;

    // A's miss is stored in Redis (after A has answered: the write is asynchronous); B
    // then answers from Redis without the pod.
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while redis.keys().await == 0 {
        assert!(std::time::Instant::now() < deadline, "A's answer never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_hit(&b.url("/catalogue/1")).await;
    assert_eq!(p.requests(), 1, "B never asked the pod");
    assert!(b.metrics().await.lines().any(|l| l == "edgegate_cache_l2_hits_total 1"));

    // A purge on A's admin listener reaches B's in-process cache and Redis.
    assert_eq!(client_purge(&a, "zwfw.gov.test/catalogue/").await, 1, "the one entry in Redis");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while x_cache(&b.url("/catalogue/1")).await.1.as_deref() == Some("HIT") {
        assert!(std::time::Instant::now() < deadline, "B still serves the purged entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis dies: every request is still answered (L1 only), and the breaker opens.
    let port = redis.port;
    drop(redis);
    // A purge then empties the gateway's own memory but says that Redis — where the other
    // nodes would still find the entries — was not purged.
    let resp = client().delete(a.admin_url("/-/cache?prefix=zwfw.gov.test/catalogue/")).send().await.expect("purge");
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(
        (&body["error"], &body["purged"]),
        (&"redis_purge_failed".into(), &"zwfw.gov.test/catalogue/".into()),
        "{body}"
    );
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
    for i in 0..30 {
        let (status, _) = x_cache(&b.url(&format!("/catalogue/down-{}", i % 5))).await;
        assert_eq!(status, 200, "request {i} failed while Redis was down");
    }
    assert!(b.metrics().await.lines().any(|l| l == "edgegate_cache_l2_breaker_open 1"), "{}", b.metrics().await);

    // Redis is back: after the breaker's pause, sharing works again.
    let _redis = RedisServer::start_on(port).await;
    // The breaker pauses for 5 s, then sharing resumes.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let path = format!("/catalogue/after-{n}");
        x_cache(&a.url(&path)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if x_cache(&b.url(&path)).await.1.as_deref() == Some("HIT") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sharing through Redis never recovered");
    }
}

/// Sleeps until the next Unix second begins; returns it.
async fn next_window() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    tokio::time::sleep(Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()))).await;
    now.as_secs() + 1
}

/// The instant `ms` milliseconds into Unix second `window`: a flood that ends there stays
/// in its windows however late the sleep before it woke.
fn in_window(window: u64, ms: u64) -> std::time::Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let at = Duration::from_secs(window) + Duration::from_millis(ms);
    std::time::Instant::now() + at.saturating_sub(now)
}

/// Fires requests at each of `urls` from 4 tasks apiece until `until`; counts statuses.
async fn hammer(urls: Vec<String>, until: std::time::Instant) -> std::collections::BTreeMap<u16, usize> {
    let mut tasks = Vec::new();
    for url in urls {
        for _ in 0..4 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut counts = std::collections::BTreeMap::new();
                while std::time::Instant::now() < until {
                    let status = c.get(&url).send().await.map_or(0, |r| r.status().as_u16());
                    *counts.entry(status).or_insert(0usize) += 1;
                }
                counts
            }));
        }
    }
    let mut all = std::collections::BTreeMap::new();
    for t in tasks {
        for (status, n) in t.await.expect("task") {
            *all.entry(status).or_insert(0) += n;
        }
    }
    all
}

/// One public route `/api/…` to `pod` with a fleet-wide limit of `rate` a second shared by
/// two nodes through `redis`, each command waiting at most `timeout`.
fn global_limit_config(redis: &RedisServer, pod: &edgegate::pod::Pod, rate: u32, timeout: &str) -> String {
    config(&format!(
        "cache: {{redis: {{url: \"{}\", timeout: {timeout}}}}}\nupstreams:\n{}routes: [{{name: api, upstream: svc, public: true, rate_limit: {{rate: {rate}, global: true, nodes: 2}}}}]\n",
        redis.url(),
        group("svc", &[pod.addr])
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_global_rate_budget_and_fall_back_without_redis() {
    let redis = RedisServer::start().await;
    let p = pod("svc").await;
    // A generous Redis timeout: on a loaded machine a sync slower than 100 ms would switch
    // to the local fallback (counted below), which the second part tests on its own.
    let yaml = global_limit_config(&redis, &p, 100, "500ms");
    let (a, b) = (Gateway::start(&yaml).await, Gateway::start(&yaml).await);

    // One window with A alone flooded: A learns through Redis that B is idle and takes more
    // than its first share (50) of the budget; without the sharing it would stop at 50.
    let w = next_window().await;
    let alone = hammer(vec![a.url("/api/x")], in_window(w, 950)).await;
    let admitted = alone.get(&200).copied().unwrap_or(0);
    assert!((80..=100).contains(&admitted), "A alone reaches most of the 100, never more: {alone:?}");

    // Two whole windows with both flooded by the same client. Each gateway alone never
    // admits more than the budget; together they keep to it but for what one admits while
    // its sync is late (the other cannot see it): up to its share of 50 again.
    let w = next_window().await;
    let (on_a, on_b) = tokio::join!(
        hammer(vec![a.url("/api/x")], in_window(w + 1, 950)),
        hammer(vec![b.url("/api/x")], in_window(w + 1, 950))
    );
    let (by_a, by_b) = (on_a.get(&200).copied().unwrap_or(0), on_b.get(&200).copied().unwrap_or(0));
    assert!(by_a <= 200 && by_b <= 200, "each alone within 2 windows × 100: {on_a:?} {on_b:?}");
    assert!((180..=300).contains(&(by_a + by_b)), "2 windows × 100 fleet-wide, + 50 a late sync: {on_a:?} {on_b:?}");
    for counts in [&on_a, &on_b] {
        assert!(counts.keys().all(|s| *s == 200 || *s == 429), "nothing but 200 and 429: {counts:?}");
        assert!(counts.get(&429).copied().unwrap_or(0) > 500, "the flood was refused: {counts:?}");
    }
    for g in [&a, &b] {
        let metrics = g.metrics().await;
        assert!(metrics.contains("\nedgegate_rate_limit_fallbacks_total 0\n"), "Redis answered every sync: {metrics}");
    }

    // Redis gone: each gateway keeps rate / nodes on its own, and nothing fails. The
    // first requests after the loss find it out (and may still use this window's share).
    drop(redis);
    let warmup = hammer(vec![a.url("/api/y")], std::time::Instant::now() + Duration::from_millis(1_500)).await;
    assert!(warmup.keys().all(|s| *s == 200 || *s == 429), "no errors while Redis goes away: {warmup:?}");
    let metrics = a.metrics().await;
    assert!(metrics.contains("\nedgegate_rate_limit_fallback 1\n"), "the fallback is reported: {metrics}");
    assert!(metrics.contains("\nedgegate_rate_limit_fallbacks_total 1\n"), "and counted once: {metrics}");
    // Steady state: 50/s (rate 100 over 2 nodes), its burst already spent.
    let counts = hammer(vec![a.url("/api/z")], std::time::Instant::now() + Duration::from_secs(2)).await;
    let admitted = counts.get(&200).copied().unwrap_or(0);
    assert!((85..=115).contains(&admitted), "local fallback of rate / nodes, 2 s at 50/s: {counts:?}");
    assert!(counts.keys().all(|s| *s == 200 || *s == 429), "no errors without Redis: {counts:?}");
}

/// Keeps `redis` busy for `how_long` (a script that spins: Redis runs one command at a
/// time), from a connection of its own; the task ends with the script's answer, 1.
async fn keep_busy(redis: &RedisServer, how_long: Duration) -> tokio::task::JoinHandle<redis::RedisResult<i64>> {
    let mut conn = redis.connection().await;
    let micros = how_long.as_micros() as u64;
    tokio::spawn(async move {
        let spin = "local t = redis.call('TIME'); local start = t[1] * 1000000 + t[2]; \
                    repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - start > tonumber(ARGV[1]); return 1";
        redis::cmd("EVAL").arg(spin).arg(0).arg(micros).query_async::<i64>(&mut conn).await
    })
}

/// The fleet-wide rate limit's sync waits for Redis as long as `cache.redis.timeout` says,
/// past the Redis client's own 500 ms, which used to fail every slower sync: with 3 s, a
/// Redis busy for 0.8 s (a script running) delays the syncs meanwhile and costs no fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_sync_waits_for_a_busy_redis_as_long_as_the_timeout_says() {
    let redis = RedisServer::start().await;
    let p = pod("svc").await;
    let yaml = global_limit_config(&redis, &p, 1000, "3s");
    let a = Gateway::start(&yaml).await;
    let c = client();
    // Counts to settle, so that syncs go to Redis.
    for _ in 0..5 {
        assert_eq!(c.get(a.url("/api/x")).send().await.expect("request").status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = keep_busy(&redis, Duration::from_millis(800)).await;
    // Requests while Redis is busy: each leaves a count for a sync that waits.
    let until = std::time::Instant::now() + Duration::from_millis(1_200);
    while std::time::Instant::now() < until {
        assert_eq!(c.get(a.url("/api/x")).send().await.expect("request").status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(busy.await.expect("the busy task").expect("the script ran"), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = a.metrics().await;
    assert!(metrics.contains("\nedgegate_rate_limit_fallbacks_total 0\n"), "a sync gave up on Redis: {metrics}");
}

/// A file holding `key` as the fleet's key, in a directory removed when dropped.
fn fleet_key(key: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fleet.key");
    std::fs::write(&path, key).expect("write key");
    (dir, path)
}

/// With the fleet's key the fleet-wide counters are named by a MAC, not by the client's
/// address: Redis holds no citizen's address, and whoever can write to it cannot fill one
/// client's counter to have it refused. Here a count of a billion is written where the
/// counter of this client (127.0.0.1) would be named without the key, for every second of
/// the test: a gateway alone still reaches most of the budget (counted as it was, it would
/// stop at its first share, 50). Two gateways with the key still share one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fleets_key_rate_counters_hide_the_client_and_cannot_be_filled_for_it() {
    use redis::AsyncCommands;
    let redis = RedisServer::start().await;
    let (_keys, fleet) = fleet_key("q7Bv2Lr9Xe4Tn1Ks8Wd3Fh6Mc0Pz5Ja+Gu2Yi7Ro4Sl=\n");
    let p = pod("svc").await;
    let yaml = config(&format!(
        "cache: {{redis: {{url: \"{}\", timeout: 500ms, key_file: \"{}\"}}}}\nupstreams:\n{}routes: [{{name: api, upstream: svc, public: true, rate_limit: {{rate: 100, global: true, nodes: 2}}}}]\n",
        redis.url(),
        fleet.display(),
        group("svc", &[p.addr])
    ));
    let (a, b) = (Gateway::start(&yaml).await, Gateway::start(&yaml).await);
    let mut conn = redis.connection().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let planted: Vec<String> = (now..now + 8).map(|w| format!("edgegate:rl:api:{w}:127.0.0.1")).collect();
    for k in &planted {
        let _: () = conn.set_ex(k, 1_000_000_000u64, 30).await.expect("SET");
    }

    let w = next_window().await;
    let alone = hammer(vec![a.url("/api/x")], in_window(w, 950)).await;
    let admitted = alone.get(&200).copied().unwrap_or(0);
    assert!((80..=100).contains(&admitted), "A alone reaches most of the 100, never more: {alone:?}");
    let counters: Vec<String> = conn.keys("edgegate:rl:*").await.expect("KEYS");
    let named: Vec<&String> = counters.iter().filter(|k| !planted.contains(k)).collect();
    assert!(!named.is_empty(), "the counts reached Redis: {counters:?}");
    for k in &named {
        let last = k.rsplit(':').next().unwrap_or_default();
        assert!(!k.contains("127.0.0.1"), "a counter named by the client's address: {k}");
        assert!(last.len() == 32 && last.bytes().all(|b| b.is_ascii_hexdigit()), "not a MAC's hex: {k}");
    }
    let planted_counts: Vec<Option<u64>> = conn.mget(&planted).await.expect("MGET");
    assert!(planted_counts.iter().flatten().all(|n| *n == 1_000_000_000), "nothing counted there: {planted_counts:?}");

    // Both flooded by the same client for two windows: one budget, as without the key.
    let w = next_window().await;
    let (on_a, on_b) = tokio::join!(
        hammer(vec![a.url("/api/x")], in_window(w + 1, 950)),
        hammer(vec![b.url("/api/x")], in_window(w + 1, 950))
    );
    let (by_a, by_b) = (on_a.get(&200).copied().unwrap_or(0), on_b.get(&200).copied().unwrap_or(0));
    assert!((180..=300).contains(&(by_a + by_b)), "2 windows × 100 fleet-wide, + 50 a late sync: {on_a:?} {on_b:?}");
    for g in [&a, &b] {
        let metrics = g.metrics().await;
        assert!(metrics.contains("\nedgegate_rate_limit_fallbacks_total 0\n"), "Redis answered every sync: {metrics}");
    }
}

/// A Redis, a pod, and a gateway that has answered one cached request, so that its entry is
/// (or is about to be) in Redis.
/// Each worker of the no-steal runtime (the default) reads and writes the shared level on a
/// Redis connection of its own, as it keeps its own pod connections: one shared connection
/// runs its reads and writes on the worker that opened it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_no_steal_worker_keeps_its_own_redis_connection() {
    let redis = RedisServer::start().await;
    let p = pod("catalogue").await;
    let gw = Gateway::start(&shared_config(&p, &redis.url()).replace("runtime: {threads: 1}", "runtime: {threads: 2}"))
        .await;
    // 24 client connections, each handed to either worker, each asking for a path of its
    // own: a lookup (GETRANGE) and a store (SET) each (all on one worker: 1 in 8 million).
    for i in 0..24 {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.expect("connect");
        let request = format!("GET /catalogue/{i} HTTP/1.1\r\nHost: zwfw.gov.test\r\n\r\n");
        assert_eq!(exchange(&mut s, request.as_bytes()).await.0, 200);
    }
    assert_eq!(p.requests(), 24);
    // The gateway's clients of the server that last sent a cache command (the purge
    // listener's last is `subscribe`; this test's own is `client|list`).
    let mut conn = redis.connection().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.expect("CLIENT LIST");
        let caching = list.lines().filter(|l| l.contains(" cmd=getrange ") || l.contains(" cmd=set ")).count();
        if caching == 2 && redis.keys().await == 24 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{caching} connections read and wrote the cache:\n{list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn one_answer_in_redis() -> (RedisServer, edgegate::pod::Pod, Gateway) {
    let redis = RedisServer::start().await;
    let p = pod("catalogue").await;
    let a = Gateway::start(&shared_config(&p, &redis.url())).await;
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    (redis, p, a)
}

/// A connection to `redis`, the one cache key a gateway stored in it, and the entry's bytes
/// (waiting for the asynchronous write).
async fn stored_entry(redis: &RedisServer) -> (redis::aio::MultiplexedConnection, String, Vec<u8>) {
    use redis::AsyncCommands;
    let mut conn = redis.connection().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let key = loop {
        let keys: Vec<String> = conn.keys("edgegate:cache:*").await.expect("KEYS");
        if let Some(k) = keys.into_iter().next() {
            break k;
        }
        assert!(std::time::Instant::now() < deadline, "the answer never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stored: Vec<u8> = conn.get(&key).await.expect("GET");
    (conn, key, stored)
}

/// An entry in the shared Redis is read like any other input: one that carries fields the
/// gateway writes itself for each answer — its framing (`Transfer-Encoding`), the
/// connection's fields, a request id — or a status no stored answer has, as another node
/// never stores it, would let whoever can write to Redis split every node's answers
/// (a chunked body behind a `Content-Length`) for every client. It is not served: the
/// request goes to the pod as on a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_entry_with_fields_no_node_stores_is_never_served() {
    use redis::AsyncCommands;
    let (redis, p, _a) = one_answer_in_redis().await;
    let (mut conn, key, stored) = stored_entry(&redis).await;
    let honest = edgegate::cache::l2::decode(&stored).expect("a node's own entry decodes");
    let smuggled = "0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned";
    for (name, value, status) in [
        ("transfer-encoding", "chunked", 200),
        ("content-length", "0", 200),
        ("connection", "keep-alive", 200),
        ("upgrade", "websocket", 200),
        ("x-request-id", "fixed", 200),
        ("content-type", "text/plain", 101),
    ] {
        let mut poisoned = edgegate::cache::l2::decode(&stored).expect("decodes");
        poisoned.status = status;
        poisoned.headers.push((http::HeaderName::from_static(name), http::HeaderValue::from_static(value)));
        poisoned.body = bytes::Bytes::from_static(smuggled.as_bytes());
        let _: () = conn.set(&key, edgegate::cache::l2::encode(&poisoned)).await.expect("SET");
        // A node that has not answered it yet reads it from Redis.
        let b = Gateway::start(&shared_config(&p, &redis.url())).await;
        let before = p.requests();
        let request = "GET /catalogue/1 HTTP/1.1\r\nHost: zwfw.gov.test\r\nConnection: close\r\n\r\n";
        let (status, text, _) = raw_exchange(b.addr(), request.as_bytes()).await;
        assert_eq!(status, Some(200), "{name}: {text}");
        assert!(!text.contains("poisoned"), "{name}: {text}");
        let head = text.split_once("\r\n\r\n").map_or(text.as_str(), |(h, _)| h).to_ascii_lowercase();
        assert!(!head.contains("transfer-encoding") && !head.contains("fixed"), "{name}: {text}");
        assert_eq!(p.requests(), before + 1, "{name}: the pod was not asked");
    }
    assert_eq!(honest.status, 200);
}

/// An entry far larger than any a gateway stores (a node keeps at most 1 MiB of body) is read
/// no further than that bound: whoever can write to Redis could otherwise make every node
/// that looks the key up read it whole, once per request that misses its memory (here
/// 64 MiB, eight requests at once), bounded only by the Redis timeout. Refused like a
/// foreign entry: the pod answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_entry_larger_than_any_gateway_stores_is_not_read_whole() {
    use redis::AsyncCommands;
    let (redis, p, _a) = one_answer_in_redis().await;
    let (mut conn, key, stored) = stored_entry(&redis).await;
    let mut huge = edgegate::cache::l2::decode(&stored).expect("a node's own entry decodes");
    huge.body = bytes::Bytes::from(vec![b'x'; 64 << 20]);
    let _: () = conn.set(&key, edgegate::cache::l2::encode(&huge)).await.expect("SET");
    drop(huge);
    // Long enough for a whole read of it on loopback: a Redis further away gets a longer one.
    let b = Gateway::start(&shared_config_waiting(&p, &redis.url(), "5s")).await;
    let before = p.requests();
    let answers = futures_util::future::join_all((0..8).map(|_| async {
        let resp = client().get(b.url("/catalogue/1")).header("host", "zwfw.gov.test").send().await.expect("request");
        (resp.status().as_u16(), resp.bytes().await.expect("body").len())
    }))
    .await;
    let peak = peak_rss_kib(b.pid());
    for (status, len) in answers {
        assert_eq!(status, 200);
        assert!(len < 1 << 20, "the huge entry was served ({len} bytes)");
    }
    assert!(p.requests() > before, "the pod answered");
    // One whole read holds the value twice (read, then its body copied): over 128 MiB.
    // Eight took the peak to 708 MiB; bounded, it stays near the idle gateway's ~50 MiB.
    assert!(peak < 160 * 1024, "B read the entry whole: peak resident memory {peak} KiB");
}

/// `cache.redis.timeout` is how long a gateway waits for Redis, also past the Redis client's
/// own defaults (500 ms a reply), which used to cut every longer wait short whatever the
/// config said: with a timeout of 3 s, a lookup made while Redis runs a script for 0.8 s
/// waits for it and is answered from Redis, not the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_timeout_over_half_a_second_is_waited_for_whole() {
    let redis = RedisServer::start().await;
    let p = pod("catalogue").await;
    let yaml = shared_config_waiting(&p, &redis.url(), "3s");
    let (a, b) = (Gateway::start(&yaml).await, Gateway::start(&yaml).await);
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    stored_entry(&redis).await;
    // B's connection to Redis is open before Redis gets busy.
    assert_eq!(x_cache(&b.url("/catalogue/2")).await, (200, Some("MISS".into())));
    let busy = keep_busy(&redis, Duration::from_millis(800)).await;
    // The script was sent first: Redis runs it before B's lookup.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!busy.is_finished(), "Redis was not kept busy");
    let before = p.requests();
    assert_eq!(x_cache(&b.url("/catalogue/1")).await, (200, Some("HIT".into())), "B gave up on Redis");
    assert_eq!(p.requests(), before, "the pod was asked");
    assert_eq!(busy.await.expect("the busy task").expect("the script ran"), 1);
}

/// Whoever can publish on the purge channel chooses the prefix every node applies and logs:
/// a 1 MiB one is applied (matching nothing) and logged by its first 256 characters and its
/// length, not written whole to each node's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_purge_of_a_megabyte_is_logged_by_its_start_and_length() {
    use redis::AsyncCommands;
    let redis = RedisServer::start().await;
    let p = pod("catalogue").await;
    let gw = Gateway::start(&shared_config(&p, &redis.url())).await;
    assert_eq!(x_cache(&gw.url("/catalogue/1")).await, (200, Some("MISS".into())));
    until_hit(&gw.url("/catalogue/1")).await;
    let mut conn = redis.connection().await;
    let huge = format!("zwfw.gov.test/{}", "x".repeat(1 << 20));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // The node subscribes in the background after it starts: publish until it has heard one.
    while !gw.stdout().contains("cache purged (published)") {
        let _: i64 = conn.publish("edgegate:cache:purge", &huge).await.expect("PUBLISH");
        assert!(std::time::Instant::now() < deadline, "the node never applied the published purge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gw.stdout();
    assert!(
        log.contains(&format!("\"bytes\":{}", huge.len())),
        "the length is logged: {}",
        &log[..log.len().min(2000)]
    );
    assert!(log.len() < 64 * 1024, "the prefix was logged whole: {} bytes of log", log.len());
    // Nothing matched it: the entry is still served from memory.
    assert_eq!(x_cache(&gw.url("/catalogue/1")).await, (200, Some("HIT".into())));
}

/// As `shared_config`, with the fleet's key in `key_file`.
fn sealed_config(pod: &edgegate::pod::Pod, redis_url: &str, key_file: &std::path::Path) -> String {
    shared_config(pod, redis_url)
        .replace("timeout: 100ms}", &format!("timeout: 100ms, key_file: \"{}\"}}", key_file.display()))
}

/// A Redis, the fleet's key, and two gateways in front of one pod sharing both.
struct Sealed {
    redis: RedisServer,
    /// Holds the key file.
    _keys: tempfile::TempDir,
    fleet: std::path::PathBuf,
    a: Gateway,
    b: Gateway,
}

impl Sealed {
    async fn start(p: &edgegate::pod::Pod) -> Sealed {
        let redis = RedisServer::start().await;
        let (_keys, fleet) = fleet_key("9Zt0p3xq1Jm4Vw8Rk2Ls6Hc5Nd7Fb0Ga+Ye3Ux1Qo4Ii=\n");
        let a = Gateway::start(&sealed_config(p, &redis.url(), &fleet)).await;
        let b = Gateway::start(&sealed_config(p, &redis.url(), &fleet)).await;
        Sealed { redis, _keys, fleet, a, b }
    }
}

/// With the fleet's key (`cache.redis.key_file`), whoever can write to Redis, or to the link
/// to it, no longer chooses what a node serves. An entry one gateway stored is served by
/// another; an entry in a node's own layout written by someone else is not, nor one sealed
/// under another key, nor a sealed entry moved from another key: each is a miss the pod
/// answers. A purge published unsealed is not applied; one from a gateway's admin
/// listener is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fleets_key_only_what_a_gateway_sealed_is_served_or_applied() {
    use edgegate::cache::l2::{decode, encode, Sealer, ENTRY};
    use redis::AsyncCommands;
    let p = pod("catalogue").await;
    let Sealed { redis, _keys, fleet, a, b } = Sealed::start(&p).await;

    // A's miss is encrypted into Redis; B answers it from there.
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    let (mut conn, key, stored) = stored_entry(&redis).await;
    assert_eq!(stored.first(), Some(&3), "the stored value is encrypted");
    assert!(decode(&stored).is_none(), "and is not a bare entry");
    until_hit(&b.url("/catalogue/1")).await;
    assert_eq!(p.requests(), 1, "B never asked the pod");

    // What whoever writes to Redis could put at that key, each read by a node that has not
    // answered the path yet.
    let sealer = Sealer::load(&fleet).expect("the fleet's key");
    let opened = sealer.decrypt(ENTRY, &key, &stored).expect("a node's entry opens under the fleet's key");
    let honest = decode(&opened).expect("and holds a node's entry");
    let mut forged = decode(&opened).expect("decodes");
    forged.body = bytes::Bytes::from_static(b"{\"message\":\"forged: pay the fine at evil.example\"}");
    let other_key = Sealer::new(b"another fleet's key, 32 bytes long").expect("key");
    assert_eq!(x_cache(&a.url("/catalogue/2")).await, (200, Some("MISS".into())));
    // The names say nothing of the path: /catalogue/2's is the other one.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let moved: Vec<u8> = loop {
        let keys: Vec<String> = conn.keys("edgegate:cache:*").await.expect("KEYS");
        if let Some(moved_key) = keys.iter().find(|k| **k != key) {
            break conn.get(moved_key).await.expect("GET");
        }
        assert!(std::time::Instant::now() < deadline, "/catalogue/2 never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for (what, value) in [
        ("an unsealed entry", encode(&forged)),
        ("an entry encrypted under another key", other_key.encrypt(ENTRY, &key, &encode(&forged)).expect("encrypted")),
        ("an entry tagged under the fleet's key, not encrypted", sealer.seal(ENTRY, &key, &encode(&forged))),
        ("another path's encrypted entry", moved),
    ] {
        let _: () = conn.set(&key, value).await.expect("SET");
        let c = Gateway::start(&sealed_config(&p, &redis.url(), &fleet)).await;
        let before = p.requests();
        let resp = client().get(c.url("/catalogue/1")).header("host", "zwfw.gov.test").send().await.expect("request");
        assert_eq!(resp.headers().get("x-cache").and_then(|v| v.to_str().ok()), Some("MISS"), "{what}");
        let body = resp.text().await.expect("body");
        assert!(body.contains("\"path\":\"/catalogue/1\"") && !body.contains("forged"), "{what}: {body}");
        assert_eq!(p.requests(), before + 1, "{what}: the pod was not asked");
        assert!(c.metrics().await.lines().any(|l| l == "edgegate_cache_l2_errors_total 1"), "{what}: not counted");
        // The log is written by its own thread: wait for the line.
        c.wait_for_log("not sealed with this fleet's key", Duration::from_secs(3)).await;
    }
    assert_eq!(honest.status, 200);

    // An unsealed purge is not applied: B keeps serving from memory.
    let prefix = "zwfw.gov.test/catalogue/";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.stdout().contains("a published purge is not sealed") {
        let _: i64 = conn.publish("edgegate:cache:purge", prefix).await.expect("PUBLISH");
        assert!(std::time::Instant::now() < deadline, "B never heard the published purge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b.stdout().contains("cache purged (published)"), "the unsealed purge was applied");
    assert_eq!(x_cache(&b.url("/catalogue/1")).await, (200, Some("HIT".into())));

    // A gateway's purge is sealed, and B applies it.
    let resp = client().delete(a.admin_url(&format!("/-/cache?prefix={prefix}"))).send().await.expect("purge");
    assert_eq!(resp.status(), 200);
    b.wait_for_log("cache purged (published)", Duration::from_secs(3)).await;
    assert_ne!(x_cache(&b.url("/catalogue/1")).await.1.as_deref(), Some("HIT"), "B still serves the purged entry");
}

/// With the fleet's key, whoever reads Redis reads no citizen's answer, query, host or
/// path: an entry's value is encrypted, its name is a MAC of its whole cache key — here with
/// a query carrying an identity number — and its member in the index purges walk holds the
/// host and path encrypted. Another node with the key still serves it. A purge crosses the
/// channel encrypted too, and the other node applies it, as it applies one tagged but not
/// encrypted (what gateways of the version before send, during an upgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fleets_key_redis_holds_no_answer_query_or_path_in_the_clear() {
    use edgegate::cache::l2::{Sealer, PURGE, PURGE_CHANNEL};
    use futures_util::StreamExt;
    use redis::AsyncCommands;
    let p = pod("catalogue").await;
    let Sealed { redis, _keys, fleet, a, b } = Sealed::start(&p).await;
    let path = "/catalogue/status?citizen=110105199001011234";
    let resp = client().get(a.url(path)).header("host", "zwfw.gov.test").send().await.expect("request");
    assert_eq!(resp.headers().get("x-cache").and_then(|v| v.to_str().ok()), Some("MISS"));
    let answer = resp.text().await.expect("body");
    assert!(answer.contains("110105199001011234") && answer.contains("/catalogue/status"), "the pod echoes: {answer}");
    let (mut conn, key, stored) = stored_entry(&redis).await;
    let hidden = key.strip_prefix("edgegate:cache:sealed:").expect("a sealed entry's name");
    assert!(hidden.len() == 32 && hidden.bytes().all(|b| b.is_ascii_hexdigit()), "the name is a MAC: {key:?}");
    let mut names: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.expect("KEYS");
    names.sort();
    assert_eq!(names, ["edgegate:cache-index".to_owned(), key.clone()], "the index and the entry");
    let index: Vec<Vec<u8>> =
        redis::cmd("ZRANGE").arg("edgegate:cache-index").arg(0).arg(-1).query_async(&mut conn).await.expect("ZRANGE");
    assert_eq!(index.len(), 1, "one member for the one entry");
    for clear in [&b"110105199001011234"[..], b"citizen", b"catalogue", b"zwfw", b"\"path\""] {
        let shown = String::from_utf8_lossy(clear);
        assert!(!stored.windows(clear.len()).any(|w| w == clear), "{shown} in the value");
        assert!(!index[0].windows(clear.len()).any(|w| w == clear), "{shown} in the index");
        assert!(!key.contains(&*shown), "{shown} in the name");
    }
    until_hit(&b.url(path)).await;
    assert_eq!(p.requests(), 1, "B answered from Redis");

    // What a subscriber to the purge channel reads.
    let mut channel = redis::Client::open(redis.url()).expect("url").get_async_pubsub().await.expect("pubsub");
    channel.subscribe(PURGE_CHANNEL).await.expect("SUBSCRIBE");
    let mut published = channel.into_on_message();
    let b = &b;
    let applied_by_b = |n: usize| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while b.stdout().matches("cache purged (published)").count() < n {
            assert!(std::time::Instant::now() < deadline, "B never applied purge {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // A purge as gateways of the version before publish it: tagged, not encrypted.
    let tagged = Sealer::load(&fleet).expect("the fleet's key").seal(PURGE, PURGE_CHANNEL, b"zwfw.gov.test/catalogue/");
    let _: i64 = conn.publish(PURGE_CHANNEL, &tagged).await.expect("PUBLISH");
    applied_by_b(1).await;
    // A purge from A's admin listener of the path.
    until_hit(&b.url(path)).await;
    let resp =
        client().delete(a.admin_url("/-/cache?prefix=zwfw.gov.test/catalogue/status")).send().await.expect("purge");
    assert_eq!(resp.status(), 200);
    let mut messages = Vec::new();
    while messages.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), published.next()).await.expect("a purge published");
        messages.push(msg.expect("the channel is open").get_payload::<Vec<u8>>().expect("bytes"));
    }
    assert_eq!(messages[0], tagged);
    let from_a = &messages[1];
    assert_eq!(from_a.first(), Some(&3), "encrypted");
    for clear in [&b"catalogue"[..], b"status", b"zwfw"] {
        assert!(!from_a.windows(clear.len()).any(|w| w == clear), "{} in the purge", String::from_utf8_lossy(clear));
    }
    applied_by_b(2).await;
    assert_ne!(x_cache(&b.url(path)).await.1.as_deref(), Some("HIT"), "B still serves the purged entry");
}

/// With the fleet's key a purge by prefix still finds its entries in Redis, though no name
/// says a path: it walks the index, opens each member and deletes the entries whose host
/// and path start with the prefix — those only — with their members. An entry named the
/// way gateways named them before (host and path in the name) is deleted by its name; a
/// prefix of a host does not reach the sealed names; a purge without a prefix empties both.
/// A node with an empty memory then misses what was purged and is served what was not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_fleets_key_a_purge_by_prefix_deletes_the_matching_entries_only() {
    use redis::AsyncCommands;
    let p = pod("catalogue").await;
    let Sealed { redis, _keys, fleet, a, .. } = Sealed::start(&p).await;
    for path in ["/catalogue/1", "/catalogue/2?id=7", "/forms/1"] {
        assert_eq!(x_cache(&a.url(path)).await, (200, Some("MISS".into())), "{path}");
    }
    let mut conn = redis.connection().await;
    let entries = |mut conn: redis::aio::MultiplexedConnection| async move {
        let keys: Vec<String> = conn.keys("edgegate:cache:*").await.expect("KEYS");
        let members: u64 = conn.zcard("edgegate:cache-index").await.expect("ZCARD");
        (keys.len(), members)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while entries(conn.clone()).await != (3, 3) {
        assert!(
            std::time::Instant::now() < deadline,
            "the answers never reached Redis: {:?}",
            entries(conn.clone()).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let legacy = "edgegate:cache:zwfw.gov.test\n/catalogue/9\n0123456789abcdef0123456789abcdef";
    let _: () = conn.set(legacy, "stored by an earlier gateway").await.expect("SET");

    assert_eq!(client_purge(&a, "se").await, 0);
    assert_eq!(entries(conn.clone()).await, (4, 3), "a host's prefix reached a sealed name");
    assert_eq!(client_purge(&a, "zwfw.gov.test/catalogue/").await, 3, "two sealed, one named as before");
    assert_eq!(entries(conn.clone()).await, (1, 1), "the catalogue's entries (and the old name) gone, the form's kept");
    let sealer = edgegate::cache::l2::Sealer::load(&fleet).expect("the fleet's key");
    let left: Vec<String> = conn.keys("edgegate:cache:*").await.expect("KEYS");
    let stored: Vec<u8> = conn.get(&left[0]).await.expect("GET");
    let form =
        edgegate::cache::l2::decode(&sealer.decrypt(edgegate::cache::l2::ENTRY, &left[0], &stored).expect("opens"))
            .expect("an entry");
    assert!(String::from_utf8_lossy(&form.body).contains("\"path\":\"/forms/1\""), "the form's entry is what is left");

    let c = Gateway::start(&sealed_config(&p, &redis.url(), &fleet)).await;
    let before = p.requests();
    assert_eq!(x_cache(&c.url("/forms/1")).await, (200, Some("HIT".into())), "the form is served from Redis");
    for path in ["/catalogue/1", "/catalogue/2?id=7"] {
        assert_eq!(x_cache(&c.url(path)).await, (200, Some("MISS".into())), "{path} was purged");
    }
    assert_eq!(p.requests(), before + 2);

    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while entries(conn.clone()).await != (3, 3) {
        assert!(std::time::Instant::now() < deadline, "C's answers never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client_purge(&a, "").await, 3);
    assert_eq!(entries(conn.clone()).await, (0, 0), "a purge of everything");
}

/// Whoever can write to Redis can break the index (here: a string where the sorted set
/// goes). A gateway's store then fails, and the entry it may have written without its member
/// is deleted: no entry stays in Redis that a purge could not find. Answers keep coming
/// from the pod and the in-process cache; the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_index_broken_no_entry_is_left_that_a_purge_cannot_find() {
    use redis::AsyncCommands;
    let p = pod("catalogue").await;
    let Sealed { redis, _keys, a, .. } = Sealed::start(&p).await;
    let mut conn = redis.connection().await;
    let _: () = conn.set("edgegate:cache-index", "not a sorted set").await.expect("SET");
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !a.metrics().await.lines().any(|l| l.starts_with("edgegate_cache_l2_errors_total ") && !l.ends_with(" 0")) {
        assert!(std::time::Instant::now() < deadline, "the failed store was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The pipeline ran whole before its failure was counted (the entry stored, if Redis
    // took it); the clean-up follows on the same connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let keys: Vec<String> = conn.keys("edgegate:cache:*").await.expect("KEYS");
        if keys.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "an entry without its member: {keys:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("HIT".into())), "served from memory");
    // The operator reads why: Redis's own words.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !a.stdout().contains("redis refused to store a cache entry") || !a.stdout().contains("WRONGTYPE") {
        assert!(std::time::Instant::now() < deadline, "the refusal was not logged: {}", a.stdout());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whoever can write to Redis chooses how long a name or an index member is (up to 512 MiB).
/// A purge reads neither back whole: names matching its pattern are deleted by Redis itself,
/// and index members longer than any gateway writes are dropped where they are. The purge
/// still deletes what it should, and the purging gateway's memory does not grow by what
/// was planted (64 MiB of each here; read back, each was copied at least once).
///
/// Redis itself takes a while over 64 MiB (matching the name, dropping the member): the
/// purging gateway is given a Redis timeout of a second (ten for a purge step), not the
/// other tests' 100 ms, so that a loaded machine still finishes the purge; what is
/// asserted (what is deleted, how far memory grows) does not depend on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_reads_no_planted_name_or_index_member_whole() {
    use redis::AsyncCommands;
    let p = pod("catalogue").await;
    let redis = RedisServer::start().await;
    let (_keys, fleet) = fleet_key("9Zt0p3xq1Jm4Vw8Rk2Ls6Hc5Nd7Fb0Ga+Ye3Ux1Qo4Ii=\n");
    let patient = sealed_config(&p, &redis.url(), &fleet).replace("timeout: 100ms,", "timeout: 1s,");
    assert_ne!(patient, sealed_config(&p, &redis.url(), &fleet), "the Redis timeout is raised");
    let a = Gateway::start(&patient).await;
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    let mut conn = redis.connection().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while conn.zcard::<_, u64>("edgegate:cache-index").await.expect("ZCARD") != 1 {
        assert!(std::time::Instant::now() < deadline, "the answer never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let planted = vec![b'x'; 64 << 20];
    let mut long_name = b"edgegate:cache:zwfw.gov.test\n/catalogue/".to_vec();
    long_name.extend_from_slice(&planted);
    let _: () = conn.set(&long_name, "planted").await.expect("SET");
    let _: () = conn.zadd("edgegate:cache-index", &planted, 1u64 << 50).await.expect("ZADD");
    drop(planted);
    drop(long_name);

    let before = peak_rss_kib(a.pid());
    client_purge(&a, "zwfw.gov.test/catalogue/").await;
    let grown = peak_rss_kib(a.pid()).saturating_sub(before);
    assert!(grown < 32 << 10, "the purge read what was planted: peak memory +{grown} KiB");
    let keys: Vec<Vec<u8>> = conn.keys("edgegate:cache:*").await.expect("KEYS");
    assert!(keys.is_empty(), "{} names left", keys.len());
    assert_eq!(conn.zcard::<_, u64>("edgegate:cache-index").await.expect("ZCARD"), 0, "the member and the planted one");
    let c = Gateway::start(&sealed_config(&p, &redis.url(), &fleet)).await;
    assert_eq!(x_cache(&c.url("/catalogue/1")).await, (200, Some("MISS".into())), "purged");
}

/// With a request head allowed past 16 KiB (`limits.header_bytes`), an answer whose host
/// and path are longer than an index member may hold is kept in the node's memory only: it
/// is not stored in Redis, where a purge would not read its member back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_path_outgrows_the_index_stays_in_memory() {
    use redis::AsyncCommands;
    let p = pod("catalogue").await;
    let redis = RedisServer::start().await;
    let (_keys, fleet) = fleet_key("9Zt0p3xq1Jm4Vw8Rk2Ls6Hc5Nd7Fb0Ga+Ye3Ux1Qo4Ii=\n");
    let config = format!("{}limits: {{header_bytes: 64KiB}}\n", sealed_config(&p, &redis.url(), &fleet));
    let a = Gateway::start(&config).await;
    let long = format!("/catalogue/{}", "a".repeat(17 << 10));
    assert_eq!(x_cache(&a.url(&long)).await, (200, Some("MISS".into())));
    assert_eq!(x_cache(&a.url(&long)).await, (200, Some("HIT".into())), "kept in memory");
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    let mut conn = redis.connection().await;
    // The short path's store follows the long one's on the same connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while conn.zcard::<_, u64>("edgegate:cache-index").await.expect("ZCARD") == 0 {
        assert!(std::time::Instant::now() < deadline, "the short path's answer never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let keys: Vec<String> = conn.keys("edgegate:cache:*").await.expect("KEYS");
    assert_eq!(
        (keys.len(), conn.zcard::<_, u64>("edgegate:cache-index").await.expect("ZCARD")),
        (1, 1),
        "the short path only"
    );
}

/// A Redis whose gateway user may run only the commands docs/configuration.md lists (an ACL,
/// as a managed Redis often has): entries are stored, read by another node and purged, and
/// the fleet-wide rate limit's sync goes through — nothing falls back or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_user_allowed_only_the_documented_commands_is_enough() {
    let allowed = [
        "getrange",
        "set",
        "del",
        "zadd",
        "zrem",
        "zremrangebyscore",
        "publish",
        "subscribe",
        "ping",
        "eval",
        "scan",
        "zscan",
        "incrby",
        "pexpire",
        "multi",
        "exec",
    ]
    .map(|c| format!("+{c}"));
    let mut args = vec!["--user", "default", "off", "--user", "edge", "on", ">edge-secret-1", "~*", "&*", "-@all"];
    args.extend(allowed.iter().map(String::as_str));
    let redis = RedisServer::start_with(&args).await;
    let url = format!("redis://edge:edge-secret-1@127.0.0.1:{}", redis.port);
    let p = pod("catalogue").await;
    let (_keys, fleet) = fleet_key("9Zt0p3xq1Jm4Vw8Rk2Ls6Hc5Nd7Fb0Ga+Ye3Ux1Qo4Ii=\n");
    let yaml = config(&format!(
        "cache: {{memory: 16MiB, redis: {{url: \"{url}\", timeout: 500ms, key_file: \"{}\"}}}}\nupstreams:\n{}routes: [{{name: c, match: {{path_prefix: /catalogue/}}, upstream: catalogue, public: true, cache: {{ttl: 60s}}}}, {{name: api, match: {{path_prefix: /api/}}, upstream: catalogue, public: true, rate_limit: {{rate: 1000, global: true, nodes: 2}}}}]\n",
        fleet.display(),
        group("catalogue", &[p.addr])
    ));
    let (a, b) = (Gateway::start(&yaml).await, Gateway::start(&yaml).await);
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    until_hit(&b.url("/catalogue/1")).await;
    assert_eq!(p.requests(), 1, "B served A's answer from Redis");
    for _ in 0..20 {
        assert_eq!(x_cache(&a.url("/api/x")).await.0, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client_purge(&a, "zwfw.gov.test/catalogue/").await, 1);
    for g in [&a, &b] {
        let metrics = g.metrics().await;
        assert!(metrics.contains("\nedgegate_rate_limit_fallbacks_total 0\n"), "a sync was refused: {metrics}");
        assert!(metrics.contains("\nedgegate_cache_l2_errors_total 0\n"), "a command was refused: {metrics}");
    }
}

/// Purges `prefix` on `gateway`'s admin listener (`DELETE /-/cache?prefix=…`).
/// Answers how many entries it deleted from Redis, as the answer says.
async fn client_purge(gateway: &Gateway, prefix: &str) -> u64 {
    let resp = client().delete(gateway.admin_url(&format!("/-/cache?prefix={prefix}"))).send().await.expect("purge");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(status, 200, "purge {prefix:?}: {body}");
    assert_eq!(body["purged"], prefix, "{body}");
    body["redis_deleted"].as_u64().unwrap_or_else(|| panic!("no count of what Redis lost: {body}"))
}

/// A Redis off the node is reached over TLS (`rediss://`, with `cache.redis.ca` naming the
/// CAs that may sign its certificate), so the entries — `per_user` ones included — and the
/// fleet-wide rate limits' counts do not cross the link in the clear. This Redis has no
/// plain port: one gateway's answer served by another proves both spoke TLS to it. A gateway
/// that does not trust the certificate never uses that Redis: its requests are answered by
/// the pod, and the failures counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_over_tls_is_shared_and_one_whose_certificate_is_not_trusted_is_not_used() {
    let ca = crate::tls::Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    ca.issue(dir.path(), "redis", &["127.0.0.1"]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
    std::fs::write(dir.path().join("other-ca.pem"), crate::tls::Ca::new().pem()).expect("write ca");
    let redis = RedisServer::start_tls(dir.path()).await;
    assert!(redis.url().starts_with("rediss://"));
    let p = pod("catalogue").await;
    let trusting = |pem: &str| {
        shared_config(&p, &redis.url())
            .replace("timeout: 100ms}", &format!("timeout: 2s, ca: \"{}\"}}", dir.path().join(pem).display()))
    };
    let a = Gateway::start(&trusting("ca.pem")).await;
    let b = Gateway::start(&trusting("ca.pem")).await;
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    until_hit(&b.url("/catalogue/1")).await;
    assert_eq!(p.requests(), 1, "B never asked the pod");
    assert!(b.metrics().await.lines().any(|l| l == "edgegate_cache_l2_hits_total 1"));

    let c = Gateway::start(&trusting("other-ca.pem")).await;
    assert_eq!(x_cache(&c.url("/catalogue/1")).await, (200, Some("MISS".into())));
    assert_eq!(p.requests(), 2, "C's request went to the pod");
    let metrics = c.metrics().await;
    assert!(metrics.lines().any(|l| l == "edgegate_cache_l2_hits_total 0"), "{metrics}");
    assert!(!metrics.lines().any(|l| l == "edgegate_cache_l2_errors_total 0"), "the failure is counted: {metrics}");
}

/// Rotating the fleet's key: a node given the new key with the old one as
/// `previous_key_file` still serves what nodes on the old key stored, and seals with the
/// new key only, which a node still on the old key misses (the pod answers it: a hit
/// rate's dip, never a wrong answer). A node on the new key alone no longer serves the
/// old key's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_node_serves_what_the_old_key_sealed_and_seals_with_the_new() {
    let redis = RedisServer::start().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let (old, new) = (keys.path().join("old.key"), keys.path().join("new.key"));
    std::fs::write(&old, format!("{}\n", "o".repeat(44))).expect("old key");
    std::fs::write(&new, format!("{}\n", "n".repeat(44))).expect("new key");
    let p = pod("catalogue").await;
    let rotating_config = sealed_config(&p, &redis.url(), &new)
        .replace("key_file: \"", &format!("previous_key_file: \"{}\", key_file: \"", old.display()));
    assert!(rotating_config.contains("previous_key_file"), "{rotating_config}");

    let on_old = Gateway::start(&sealed_config(&p, &redis.url(), &old)).await;
    assert_eq!(x_cache(&on_old.url("/catalogue/1")).await, (200, Some("MISS".into())));
    stored_entry(&redis).await;
    let rotating = Gateway::start(&rotating_config).await;
    until_hit(&rotating.url("/catalogue/1")).await;
    assert_eq!(p.requests(), 1, "the rotating node served the old key's entry from Redis");

    // What the rotating node stores is sealed with the new key: a node on the new key
    // alone serves it, a node still on the old key does not.
    assert_eq!(x_cache(&rotating.url("/catalogue/2")).await, (200, Some("MISS".into())));
    let on_new = Gateway::start(&sealed_config(&p, &redis.url(), &new)).await;
    until_hit(&on_new.url("/catalogue/2")).await;
    assert_eq!(p.requests(), 2);
    let still_old = Gateway::start(&sealed_config(&p, &redis.url(), &old)).await;
    assert_eq!(x_cache(&still_old.url("/catalogue/2")).await, (200, Some("MISS".into())), "the new key's entry");
    // And the node on the new key alone no longer serves the old key's entry.
    assert_eq!(x_cache(&on_new.url("/catalogue/1")).await, (200, Some("MISS".into())), "the old key dropped");

    // Its purge by prefix takes the old key's entries too, whose index members it cannot
    // open, whatever their path: the rotating node, which could still serve the old key's
    // /catalogue/1 from Redis, must not after it is purged. The new key's /catalogue/2 is
    // kept.
    use redis::AsyncCommands;
    let mut conn = redis.connection().await;
    let names = |mut conn: redis::aio::MultiplexedConnection| async move {
        let names: Vec<String> = conn.keys("edgegate:cache:*").await.expect("KEYS");
        names
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while names(conn.clone()).await.len() < 4 {
        assert!(std::time::Instant::now() < deadline, "entries under both keys: {:?}", names(conn.clone()).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client_purge(&on_new, "zwfw.gov.test/catalogue/1").await;
    let left = names(conn.clone()).await;
    assert_eq!(left.len(), 1, "left after the purge: {left:?}");
    let stored: Vec<u8> = conn.get(&left[0]).await.expect("GET");
    let new_sealer = edgegate::cache::l2::Sealer::load(&new).expect("the new key");
    let kept = edgegate::cache::l2::decode(
        &new_sealer.decrypt(edgegate::cache::l2::ENTRY, &left[0], &stored).expect("the new key's entry"),
    )
    .expect("an entry");
    assert!(String::from_utf8_lossy(&kept.body).contains("\"path\":\"/catalogue/2\""), "the new key's /catalogue/2");
    let before = p.requests();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while x_cache(&rotating.url("/catalogue/1")).await != (200, Some("MISS".into())) {
        assert!(std::time::Instant::now() < deadline, "the rotating node still serves the purged /catalogue/1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(p.requests(), before + 1, "from the pod");

    // Its purge of everything takes every entry: the one the rotating node just fetched
    // included, once its write (in the background) is in Redis.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while names(conn.clone()).await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the refetched entry: {:?}", names(conn.clone()).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client_purge(&on_new, "").await;
    let left: Vec<String> = conn.keys("edgegate:cache:*").await.expect("KEYS");
    assert!(left.is_empty(), "left after a purge of everything: {left:?}");
    assert_eq!(conn.zcard::<_, u64>("edgegate:cache-index").await.expect("ZCARD"), 0);
}
