//! Upstream connections are kept alive and reused across requests.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connection_is_reused() {
    let p = pod("svc").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: r, upstream: svc, public: true}}]\n",
        group("svc", &[p.addr])
    )))
    .await;
    let c = client();
    for i in 0..20 {
        let resp = c.get(gw.url(&format!("/req/{i}"))).send().await.expect("request");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.expect("body");
    }
    assert_eq!(p.requests(), 20);
    assert_eq!(p.connections(), 1, "20 sequential requests should share one pooled upstream connection");

    // A fresh client connection still gets the pooled upstream connection.
    let resp = client().get(gw.url("/again")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(p.connections(), 1);
}
