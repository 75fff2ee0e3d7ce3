//! Redis as the shared second cache level, with a real redis-server: one gateway's miss
//! becomes another's hit, a dead Redis costs no request, and purges reach every gateway.

use std::time::Duration;

use crate::support::*;

fn shared_config(pod: &edgegate::pod::Pod, redis_url: &str) -> String {
    config(&format!(
        "cache: {{memory: 16MiB, redis: {{url: \"{redis_url}\", timeout: 100ms}}}}\nupstreams:\n{}routes: [{{name: c, upstream: catalogue, public: true, cache: {{ttl: 60s}}}}]\n",
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

    // A's miss is stored in Redis; B answers from Redis without the pod.
    assert_eq!(x_cache(&a.url("/catalogue/1")).await, (200, Some("MISS".into())));
    until_hit(&b.url("/catalogue/1")).await;
    assert_eq!(p.requests(), 1, "B never asked the pod");
    assert!(b.metrics().await.lines().any(|l| l == "edgegate_cache_l2_hits_total 1"));

    // A purge on A's admin listener reaches B's in-process cache and Redis.
    let resp = client().delete(a.admin_url("/-/cache?prefix=zwfw.gov.test/catalogue/")).send().await.expect("purge");
    assert_eq!(resp.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while x_cache(&b.url("/catalogue/1")).await.1.as_deref() == Some("HIT") {
        assert!(std::time::Instant::now() < deadline, "B still serves the purged entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis dies: every request is still answered (L1 only), and the breaker opens.
    let port = redis.port;
    drop(redis);
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
