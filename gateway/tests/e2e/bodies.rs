//! Large and unusual bodies stream through intact with flat memory: a 100 MB upload
//! (Content-Length and chunked) and download, checked by SHA-256 at the far end;
//! `Expect: 100-continue`; HEAD; chunked responses.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const BIG: usize = 100 * 1024 * 1024;

/// Deterministic bytes, so both ends can hash without holding them.
fn pattern(offset: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = ((offset + i) % 251) as u8;
    }
}

fn pattern_sha(len: usize) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0;
    while off < len {
        let n = buf.len().min(len - off);
        pattern(off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n;
    }
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads exactly `n` bytes into the hash; false when the connection ends first.
async fn hash_exact(r: &mut BufReader<TcpStream>, n: usize, buf: &mut [u8], h: &mut Sha256) -> bool {
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len());
        if r.read_exact(&mut buf[..k]).await.is_err() {
            return false;
        }
        h.update(&buf[..k]);
        left -= k;
    }
    true
}

/// A pod that hashes request bodies (`POST`, Content-Length or chunked; answers
/// `100 Continue` first when asked), serves `len` pattern bytes on `GET /download/LEN`,
/// and a chunked body on `GET /chunked`.
async fn body_pod() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut r = BufReader::with_capacity(64 * 1024, conn);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_owned());
                    }
                    let header = |name: &str| {
                        head.iter().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
                        })
                    };
                    let request_line = head.first().cloned().unwrap_or_default();
                    let mut parts = request_line.split(' ');
                    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let reply = if method == "POST" {
                        if header("expect").as_deref() == Some("100-continue") {
                            let _ = r.get_mut().write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                        }
                        let mut h = Sha256::new();
                        let mut total = 0usize;
                        let mut buf = vec![0u8; 64 * 1024];
                        if header("transfer-encoding").as_deref() == Some("chunked") {
                            loop {
                                let mut size = String::new();
                                if r.read_line(&mut size).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                let n =
                                    usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
                                if !hash_exact(&mut r, n, &mut buf, &mut h).await {
                                    return;
                                }
                                total += n;
                                let mut crlf = String::new();
                                let _ = r.read_line(&mut crlf).await;
                                if n == 0 {
                                    break;
                                }
                            }
                        } else {
                            let n: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                            if !hash_exact(&mut r, n, &mut buf, &mut h).await {
                                return;
                            }
                            total += n;
                        }
                        let body = format!("{{\"bytes\":{total},\"sha256\":\"{}\"}}", hex(&h.finalize()));
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    } else if let Some(len) = target.strip_prefix("/download/").and_then(|l| l.parse::<usize>().ok()) {
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n");
                        if r.get_mut().write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        if method == "HEAD" {
                            continue;
                        }
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut off = 0;
                        while off < len {
                            let n = buf.len().min(len - off);
                            pattern(off, &mut buf[..n]);
                            if r.get_mut().write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            off += n;
                        }
                        continue;
                    } else {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                            .to_vec()
                    };
                    if r.get_mut().write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends a head, then `len` pattern bytes (chunked in 1 MiB chunks when `chunked`), and
/// reads the whole answer.
async fn upload(gw: &Gateway, len: usize, chunked: bool, expect: bool) -> String {
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    let framing = if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {len}") };
    let expect_line = if expect { "Expect: 100-continue\r\n" } else { "" };
    let head = format!("POST /up/x HTTP/1.1\r\nHost: h.test\r\n{framing}\r\n{expect_line}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("head");
    if expect {
        // A client that asked waits for the go-ahead before sending the body.
        let mut buf = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.expect("100 in time").expect("read");
        assert!(buf.starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&buf));
    }
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 1024 * 1024];
        let mut off = 0;
        while off < len {
            let n = buf.len().min(len - off);
            pattern(off, &mut buf[..n]);
            if chunked {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await.expect("chunk size");
            }
            wr.write_all(&buf[..n]).await.expect("body");
            if chunked {
                wr.write_all(b"\r\n").await.expect("chunk end");
            }
            off += n;
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await.expect("last chunk");
        }
        wr
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    drop(writer.await.expect("writer"));
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_intact_with_flat_memory() {
    let pod = body_pod().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: files, upstream: files, public: true, limits: {{body: 200MB}}, timeouts: {{read: 60s}}}}]\n",
        group("files", &[pod])
    )))
    .await;
    let want = pattern_sha(BIG);
    let before = rss_kib(gw.pid());
    let mut peak = before;

    for chunked in [false, true] {
        let answer = upload(&gw, BIG, chunked, false).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..answer.len().min(300)]);
        assert!(answer.contains(&format!("\"bytes\":{BIG}")), "chunked={chunked}: {answer}");
        assert!(answer.contains(&want), "chunked={chunked}: the pod hashed something else: {answer}");
        peak = peak.max(rss_kib(gw.pid()));
    }

    // Download: hashed as it arrives.
    let mut s = TcpStream::connect(gw.addr()).await.expect("connect");
    s.write_all(format!("GET /download/{BIG} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.expect("head");
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut h = Sha256::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let mut reads = 0u32;
    loop {
        let n =
            tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf)).await.expect("body in time").expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
        reads += 1;
        if reads.is_multiple_of(64) {
            peak = peak.max(rss_kib(gw.pid()));
        }
    }
    assert_eq!(total, BIG);
    assert_eq!(hex(&h.finalize()), want);
    // Streamed, not buffered: 300 MB went through, the gateway grew by a few MiB at most.
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(grown_mib < 40, "RSS grew by {grown_mib} MiB while streaming (from {before} KiB)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_head_and_chunked_answers() {
    let pod = body_pod().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n{}routes: [{{name: files, upstream: files, public: true}}]\n",
        group("files", &[pod])
    )))
    .await;
    // Expect: 100-continue: the go-ahead reaches the client, the body goes through.
    let answer = upload(&gw, 300_000, false, true).await;
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&pattern_sha(300_000)), "{answer}");
    // HEAD: the length, no body.
    let (status, text, _) =
        raw_exchange(gw.addr(), b"HEAD /download/5000 HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, Some(200), "{text}");
    assert!(text.to_ascii_lowercase().contains("content-length: 5000"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after a HEAD answer: {text:?}");
    // A chunked answer arrives whole.
    let (status, text, _) =
        raw_exchange(gw.addr(), b"GET /chunked HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, Some(200), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let decoded: String = body.split("\r\n").enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, s)| s).collect();
    assert_eq!(decoded, "hello world", "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_retried_on_another_endpoint_carries_its_whole_body() {
    let pod = body_pod().await;
    let dead = closed_port();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  files: {{endpoints: [{{address: \"{dead}\"}}, {{address: \"{pod}\"}}], balancer: {{policy: round_robin}}}}\nroutes: [{{name: files, upstream: files, public: true, limits: {{body: 4MiB}}}}]\n"
    )))
    .await;
    let want = pattern_sha(1_500_000);
    for chunked in [false, true, false, true, false, true] {
        // Half of these go to the dead endpoint first and are retried on the live one.
        let answer = upload(&gw, 1_500_000, chunked, false).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "chunked={chunked}: {answer}");
        assert!(answer.contains(&want) && answer.contains("\"bytes\":1500000"), "chunked={chunked}: {answer}");
    }
    let metrics = gw.metrics().await;
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("edgegate_upstream_retries_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(retries >= 1.0, "at least one upload was retried: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_body_was_sent_replays_it_whole_within_the_limit() {
    // One pod takes the whole request and hangs up without answering; the other answers.
    let (hangs_up, _) = raw_pod(|_| vec![Vec::new()]).await;
    let (answers, seen) = raw_pod(|_| vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()]).await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  files: {{endpoints: [{{address: \"{hangs_up}\"}}, {{address: \"{answers}\"}}], balancer: {{policy: round_robin}}}}\n\
         routes: [{{name: files, upstream: files, public: true, limits: {{body: 1000}}}}]\n"
    )))
    .await;
    // 600 bytes under a 1000-byte limit: a retry sends them again, and must not count them
    // twice (1200 would be refused 413).
    let body = "x".repeat(600);
    for _ in 0..4 {
        received(&seen, true);
        let put =
            format!("PUT /files/a HTTP/1.1\r\nHost: h.test\r\nContent-Length: 600\r\nConnection: close\r\n\r\n{body}");
        let (status, text, _) = raw_exchange(gw.addr(), put.as_bytes()).await;
        assert_eq!(status, Some(200), "{text}");
        let got = received(&seen, false);
        assert!(got.ends_with(&format!("\r\n\r\n{body}")), "the answering pod got {} bytes", got.len());
    }
    let metrics = gw.metrics().await;
    let retried: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("edgegate_upstream_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(retried >= 1.0, "nothing was retried: {metrics}");
}
