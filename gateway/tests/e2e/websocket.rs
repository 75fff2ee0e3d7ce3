//! WebSocket routes: the handshake goes through with its `Upgrade`, the 101 comes back,
//! and bytes then flow both ways; everywhere else `Upgrade` is refused before any pod
//! hears of it (`h2c`, which clients offer on every plain request, is ignored). A handshake
//! the pod turns down opens no tunnel: what the client sent behind it never reaches the pod.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A WebSocket-speaking pod: answers a handshake with 101, then echoes every byte,
/// upper-cased, so the test sees the pod (not the gateway) answering. Returns its address
/// and a channel of the request heads it received.
async fn echo_pod() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let _ = tx.send(head.clone());
                let lower = head.to_ascii_lowercase();
                if !(lower.contains("\r\nupgrade: websocket\r\n") && lower.contains("\r\nconnection: upgrade\r\n")) {
                    let _ = conn.write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                }
                let reply = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if conn.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let mut rest = buf[end..].to_vec();
                loop {
                    if !rest.is_empty() {
                        let upper: Vec<u8> = rest.iter().map(u8::to_ascii_uppercase).collect();
                        if conn.write_all(&upper).await.is_err() {
                            return;
                        }
                        rest.clear();
                    }
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => rest.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, rx)
}

const HANDSHAKE: &str = "GET /ws/chat HTTP/1.1\r\nHost: h.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await.expect("head in time").expect("read");
        assert!(n > 0, "closed before the head ended: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_routes_upgrade_and_carry_bytes_both_ways() {
    let (ws, mut heads) = echo_pod().await;
    let p = pod("svc").await;
    p.record_targets();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}{}routes:\n  - {{name: chat, match: {{path_prefix: /ws/}}, upstream: ws, public: true, websocket: true, timeouts: {{read: 30s}}}}\n  - {{name: api, match: {{path_prefix: /api/}}, upstream: svc, public: true}}\n",
        group("ws", &[ws]),
        group("svc", &[p.addr])
    )))
    .await;

    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(HANDSHAKE.as_bytes()).await.expect("write");
    let head = read_head(&mut s).await;
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 101"), "{head}");
    assert!(lower.contains("upgrade: websocket") && lower.contains("connection: upgrade"), "{head}");
    assert!(lower.contains("x-request-id:"), "{head}");
    let seen = heads.recv().await.expect("the pod saw the handshake");
    assert!(seen.to_ascii_lowercase().contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="), "{seen}");
    // Bytes after the upgrade are the pod's business: several exchanges, both ways.
    for msg in ["hello", "second message", "third"] {
        s.write_all(msg.as_bytes()).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(got, msg.to_ascii_uppercase().as_bytes());
    }
    drop(s);

    // Not a WebSocket handshake on a WebSocket route: refused.
    let post = HANDSHAKE.replacen("GET", "POST", 1).replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n");
    let (status, text, _) = raw_exchange(gw.addr(), post.as_bytes()).await;
    assert_eq!(status, Some(400), "{text}");
    assert!(text.contains(r#""error":"bad_upgrade""#), "{text}");
    let other = HANDSHAKE.replace("Upgrade: websocket", "Upgrade: IRC/6.9");
    assert_eq!(raw_exchange(gw.addr(), other.as_bytes()).await.0, Some(400));
    assert!(heads.try_recv().is_err(), "refused handshakes never reach the pod");

    // Any upgrade on a route that did not ask for it: refused, the pod hears nothing.
    for proto in ["websocket", "TLS/1.0"] {
        let req = format!("GET /api/x HTTP/1.1\r\nHost: h.test\r\nUpgrade: {proto}\r\nConnection: Upgrade\r\n\r\n");
        let (status, text, closed) = raw_exchange(gw.addr(), req.as_bytes()).await;
        assert_eq!(status, Some(400), "{text}");
        assert!(text.contains(r#""error":"upgrade_not_allowed""#), "{text}");
        assert!(closed);
    }
    assert_eq!(p.targets(), Vec::<String>::new());
    // `Upgrade: h2c` (curl --http2 on plain HTTP) is declined by ignoring it.
    let req = "GET /api/h2c HTTP/1.1\r\nHost: h.test\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings, close\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let (status, text, _) = raw_exchange(gw.addr(), req.as_bytes()).await;
    assert_eq!(status, Some(200), "{text}");
    assert!(!text.to_ascii_lowercase().contains("upgrade"), "{text}");
    assert_eq!(p.targets(), vec!["/api/h2c".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_the_pod_turns_down_opens_no_tunnel() {
    // A pod that turns every handshake down (403), keeping the connection open.
    let (pod_addr, seen) = raw_pod(|_| vec![b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_vec()]).await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes:\n  - {{name: chat, match: {{path_prefix: /ws/}}, upstream: ws, public: true, websocket: true}}\n  - {{name: internal, match: {{path_prefix: /internal/}}, upstream: ws}}\n",
        group("ws", &[pod_addr])
    )))
    .await;
    // The handshake and, behind it in the same write, a request for a route the client may
    // not use: were the connection taken for a tunnel whatever the pod answered, the second
    // request would reach the pod unrouted and unauthorised.
    let hidden = "GET /internal/secrets HTTP/1.1\r\nHost: h.test\r\n\r\n";
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(format!("{HANDSHAKE}{hidden}").as_bytes()).await.expect("write");
    let first = read_head(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 403"), "the pod's answer comes back: {first}");
    // Then the request behind it is an ordinary (pipelined) request on the connection: the
    // gateway's to route and refuse — never a second answer from the pod, never a tunnel.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert!(rest.starts_with("HTTP/1.1 403") && rest.contains(r#""error":"forbidden""#), "{rest}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pod_saw = received(&seen, false);
    assert!(pod_saw.contains("GET /ws/chat"), "{pod_saw}");
    assert!(!pod_saw.contains("/internal/"), "the pod got the hidden request: {pod_saw}");
}
