//! Endpoint discovery from EndpointSlices, against an HTTP server started here that
//! answers the API server's list and watch calls with real-shaped EndpointSlice JSON (no
//! real API server can run on these machines): locality from `nodeName`, readiness and
//! terminating respected, changes applied without a reload and without failed requests,
//! the last endpoints kept and persisted when the API server goes away, and a restart
//! without the API server serving from the persisted copy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::support::*;

const NAMESPACE: &str = "gov-services";
const SERVICE: &str = "permits";

/// One EndpointSlice of the `permits` Service: one endpoint on `node` at `addr`.
fn slice(name: &str, addr: SocketAddr, node: &str, ready: bool, terminating: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": SERVICE, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": SERVICE, "uid": "0b1e3f4a-5c6d-4e7f-8a9b-0c1d2e3f4a5b", "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
        "endpoints": [{
            "addresses": [addr.ip().to_string()],
            "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating},
            "nodeName": node,
            "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": format!("{name}-pod"), "uid": "7d9c2b1e-0000-4000-8000-000000000001"},
            "zone": "edge-zone-a",
        }],
    })
}

#[derive(Default)]
struct ApiState {
    slices: BTreeMap<String, Value>,
    resource_version: u64,
    watchers: Vec<mpsc::UnboundedSender<String>>,
    lists: usize,
}

/// A stand-in for the API server: `GET …/endpointslices` lists, `…&watch=true` streams
/// watch events (chunked JSON lines) as the test changes slices.
struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state: Arc<Mutex<ApiState>> = Arc::default();
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (st, ts) = (Arc::clone(&state), Arc::clone(&tasks));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let task = tokio::spawn(serve(conn, Arc::clone(&st)));
                ts.lock().expect("lock").push(task.abort_handle());
            }
        });
        tasks.lock().expect("lock").push(accept.abort_handle());
        FakeApi { addr, state, tasks }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn apply(&self, s: Value) {
        let mut st = self.state.lock().expect("lock");
        st.resource_version += 1;
        let mut s = s;
        s["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        let name = s["metadata"]["name"].as_str().expect("name").to_owned();
        let kind = if st.slices.insert(name, s.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        let line = json!({"type": kind, "object": s}).to_string();
        st.watchers.retain(|w| w.send(line.clone()).is_ok());
    }

    fn delete(&self, name: &str) {
        let mut st = self.state.lock().expect("lock");
        st.resource_version += 1;
        if let Some(mut s) = st.slices.remove(name) {
            s["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
            let line = json!({"type": "DELETED", "object": s}).to_string();
            st.watchers.retain(|w| w.send(line.clone()).is_ok());
        }
    }

    /// The API server goes away: listener and every connection closed.
    fn kill(&self) {
        for t in self.tasks.lock().expect("lock").drain(..) {
            t.abort();
        }
    }
}

async fn serve(mut conn: tokio::net::TcpStream, state: Arc<Mutex<ApiState>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut conn, &mut buf).await else { return };
        let target = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let expected = format!("/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices");
        let selector = format!("labelSelector=kubernetes.io%2Fservice-name%3D{SERVICE}");
        if !target.starts_with(&expected) || !target.contains(&selector) {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
            let reply = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if target.contains("watch=true") || target.contains("watch=1") {
            let (tx, mut rx) = mpsc::unbounded_channel();
            state.lock().expect("lock").watchers.push(tx);
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while let Some(line) = rx.recv().await {
                let data = format!("{line}\n");
                let framed = format!("{:x}\r\n{data}\r\n", data.len());
                if conn.write_all(framed.as_bytes()).await.is_err() {
                    return;
                }
            }
            return;
        }
        let body = {
            let mut st = state.lock().expect("lock");
            st.lists += 1;
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSliceList",
                "metadata": {"resourceVersion": st.resource_version.to_string()},
                "items": st.slices.values().cloned().collect::<Vec<_>>(),
            })
            .to_string()
        };
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn gateway_yaml() -> String {
    config(&format!(
        "upstreams:\n  permits: {{discovery: {{kubernetes: {{namespace: {NAMESPACE}, service: {SERVICE}, port: http}}}}, outlier: {{consecutive_failures: 1000}}}}\nroutes: [{{name: api, upstream: permits, public: true}}]\n"
    ))
}

async fn discovered(gw: &Gateway) -> Value {
    gw.admin_json("/-/config").await["discovery"]["permits"].clone()
}

/// Polls `/-/config` until `ok` holds for the discovered group.
async fn wait_for(gw: &Gateway, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let d = discovered(gw).await;
        if ok(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{what}: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn addresses(d: &Value) -> Vec<(String, bool)> {
    d["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| (e["address"].as_str().unwrap_or_default().to_owned(), e["local"].as_bool().unwrap_or(false)))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends requests without pause until stopped; counts the ones that were not 200.
fn background_traffic(url: String) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, f) = (Arc::clone(&sent), Arc::clone(&failed));
    let task = tokio::spawn(async move {
        let c = client();
        loop {
            match c.get(&url).send().await {
                Ok(r) if r.status() == 200 => {}
                _ => {
                    f.fetch_add(1, Ordering::Relaxed);
                }
            }
            s.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (sent, failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_endpointslices_and_survive_the_api_server() {
    let api = FakeApi::start().await;
    let (a, b, c) = (pod("a").await, pod("b").await, pod("c").await);
    // a on this node, b on another; a pod that is not ready yet, on this node.
    api.apply(slice("permits-a", a.addr, "edge-1", true, false));
    api.apply(slice("permits-b", b.addr, "edge-2", true, false));
    api.apply(slice("permits-c", c.addr, "edge-1", false, false));
    let env =
        vec![("NODE_NAME".to_owned(), "edge-1".to_owned()), (edgegate::discovery::API_URL_ENV.to_owned(), api.url())];
    let gw = Gateway::launch(&gateway_yaml(), Launch { env: env.clone(), ..Launch::default() }).await;
    let d = wait_for(&gw, "the listed slices", |d| d["source"] == "api").await;
    assert_eq!(addresses(&d), vec![(a.addr.to_string(), true), (b.addr.to_string(), false)], "{d}");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"edgegate_discovery_endpoints{upstream="permits",locality="local"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"edgegate_discovery_stale{upstream="permits"} 0"#), "{metrics}");
    let generation = gw.admin_json("/-/config").await["generation"].clone();
    assert!(generation.is_u64(), "{generation}");

    // The local pod gets the traffic; the remote one is the fallback.
    let (sent, failed, traffic) = background_traffic(gw.url("/api/permits"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.requests() > 0 && b.requests() == 0, "a {} b {}", a.requests(), b.requests());

    // a starts terminating: no new requests go to it; b (remote) takes over.
    api.apply(slice("permits-a", a.addr, "edge-1", false, true));
    wait_for(&gw, "a terminating", |d| addresses(d) == vec![(b.addr.to_string(), false)]).await;
    // A request that picked `a` just before the change may still be on its way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a_then, b_then) = (a.requests(), b.requests());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.requests(), a_then, "a terminating pod gets no new requests");
    assert!(b.requests() > b_then, "the remote pod serves meanwhile");

    // c becomes ready on this node: it is preferred over the remote b.
    api.apply(slice("permits-c", c.addr, "edge-1", true, false));
    api.delete("permits-a");
    wait_for(&gw, "c ready, a gone", |d| addresses(d) == vec![(c.addr.to_string(), true), (b.addr.to_string(), false)])
        .await;
    let c_then = c.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.requests() > c_then, "the ready local pod serves");
    assert_eq!(gw.admin_json("/-/config").await["generation"], generation, "applied without a config reload");

    // The API server goes away: the last endpoints stay in use, are persisted, and the
    // state is reported.
    api.kill();
    let d = wait_for(&gw, "the API server's loss noticed", |d| !d["error"].is_null()).await;
    assert_eq!(addresses(&d), vec![(c.addr.to_string(), true), (b.addr.to_string(), false)]);
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"edgegate_discovery_stale{upstream="permits"} 1"#), "{metrics}");
    let c_then = c.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.requests() > c_then, "still serving from the last known endpoints");
    traffic.abort();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 50, "traffic ran: {sent}");
    assert_eq!(failed, 0, "no request failed across the changes ({sent} sent)");
    let persisted: Value = serde_json::from_slice(
        &std::fs::read(gw.dir.path().join("state/endpoints.json")).expect("persisted endpoints"),
    )
    .expect("JSON");
    assert_eq!(persisted["groups"]["permits"]["endpoints"].as_array().map(Vec::len), Some(2), "{persisted}");

    // Restart with the API server still down: it serves from the persisted endpoints.
    let dir = gw.stop().await;
    let gw = Gateway::launch(&gateway_yaml(), Launch { dir: Some(dir), env, ..Launch::default() }).await;
    let d = discovered(&gw).await;
    assert_eq!(d["source"], "persisted", "{d}");
    assert_eq!(addresses(&d), vec![(c.addr.to_string(), true), (b.addr.to_string(), false)]);
    let c_then = c.requests();
    for _ in 0..5 {
        assert_eq!(client().get(gw.url("/api/after-restart")).send().await.expect("request").status(), 200);
    }
    assert_eq!(c.requests(), c_then + 5, "the local pod, known from the persisted copy");
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"edgegate_discovery_stale{upstream="permits"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_nothing_discovered_answers_503_not_a_hang() {
    // No API server at all and no persisted copy: the route has no endpoint.
    let gw = Gateway::launch(
        &gateway_yaml(),
        Launch {
            env: vec![(edgegate::discovery::API_URL_ENV.to_owned(), format!("http://{}", closed_port()))],
            ..Launch::default()
        },
    )
    .await;
    let resp = client().get(gw.url("/api/x")).send().await.expect("request");
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.expect("JSON error");
    assert_eq!(body["error"], "no_endpoints", "{body}");
    let d = wait_for(&gw, "the error reported", |d| !d["error"].is_null()).await;
    assert_eq!(d["source"], "none", "{d}");
}
