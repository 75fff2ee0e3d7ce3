// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::connectors::{ConnectorOptions, TransportConnector};
use crate::protocols::http::v1::client::HttpSession;
use crate::upstreams::peer::Peer;

use pingora_error::Result;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

// edgegate patch 39: HTTP/1 client sessions are handed out and taken back in a box (see
// `protocols::http::client::HttpSession::H1`).
pub struct Connector {
    transport: TransportConnector,
}

impl Connector {
    pub fn new(options: Option<ConnectorOptions>) -> Self {
        Connector {
            transport: TransportConnector::new(options),
        }
    }

    pub async fn get_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        peer: &P,
    ) -> Result<(Box<HttpSession>, bool)> {
        // edgegate patch 76: the peer is hashed once per session; the session keeps the key
        // and is released under it.
        let key = peer.reuse_hash();
        let (stream, reused) = self.transport.get_stream_keyed(peer, key).await?;
        let mut http = HttpSession::new_boxed_with_options(stream, peer);
        http.set_pool_key(key);
        Ok((http, reused))
    }

    pub async fn reused_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        peer: &P,
    ) -> Option<Box<HttpSession>> {
        let key = peer.reuse_hash();
        let stream = self.transport.reused_stream_keyed(peer, key).await?;
        let mut http = HttpSession::new_boxed_with_options(stream, peer);
        http.set_pool_key(key);
        Some(http)
    }

    pub async fn release_http_session<P: Peer + Send + Sync + 'static>(
        &self,
        mut session: Box<HttpSession>,
        peer: &P,
        idle_timeout: Option<Duration>,
    ) {
        session.respect_keepalive();
        // edgegate patch 76: under the key the connection was taken or made with: the peer
        // as it was then, whose settings the connection has (a session made elsewhere has
        // none, and the peer is hashed).
        let key = session.pool_key();
        if let Some(stream) = session.reuse_boxed().await {
            let key = key.unwrap_or_else(|| peer.reuse_hash());
            self.transport.release_stream(stream, key, idle_timeout);
        }
    }

    /// Return the number of times a pooled connection was found to contain
    /// unexpected data from the server.
    pub fn unexpected_data_connection_count(&self) -> u64 {
        self.transport.unexpected_data_connection_count()
    }

    /// Return a shared reference to the unexpected data connection counter for periodic metric reporting.
    pub fn unexpected_data_connection_counter(&self) -> Arc<AtomicU64> {
        self.transport.unexpected_data_connection_counter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::l4::socket::SocketAddr;
    use crate::upstreams::peer::HttpPeer;
    use crate::upstreams::peer::Peer;
    use pingora_http::RequestHeader;
    use std::fmt::{Display, Formatter, Result as FmtResult};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_http(http: &mut HttpSession, expected_status: u16) {
        let mut req = Box::new(RequestHeader::build("GET", b"/", None).unwrap());
        req.append_header("Host", "one.one.one.one").unwrap();
        http.write_request_header(req).await.unwrap();
        http.read_response().await.unwrap();
        http.respect_keepalive();

        assert_eq!(http.get_status().unwrap(), expected_status);
        while http.read_body_bytes().await.unwrap().is_some() {}
    }

    #[tokio::test]
    async fn test_connect() {
        let connector = Connector::new(None);
        let peer = HttpPeer::new(("1.1.1.1", 80), false, "".into());
        // make a new connection to 1.1.1.1
        let (http, reused) = connector.get_http_session(&peer).await.unwrap();
        let server_addr = http.server_addr().unwrap();
        assert_eq!(*server_addr, "1.1.1.1:80".parse::<SocketAddr>().unwrap());
        assert!(!reused);

        // this http is not even used, so not be able to reuse
        connector.release_http_session(http, &peer, None).await;
        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(!reused);

        get_http(&mut http, 301).await;
        connector.release_http_session(http, &peer, None).await;
        let (_, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(reused);
    }

    /// A local server that answers every request on a connection, keep-alive, with the
    /// connection's number (the first accepted is 1) as its body.
    async fn keepalive_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut accepted = 0u32;
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                accepted += 1;
                let connection = accepted;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let body = format!("connection {connection}");
                            let response = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (address, server)
    }

    /// Sends a GET on `http` and reads the answer's head; its body too when `read_body`.
    async fn body_of(http: &mut HttpSession, read_body: bool) -> Option<String> {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("Host", "pod.local").unwrap();
        http.write_request_header(Box::new(req)).await.unwrap();
        http.read_response().await.unwrap();
        http.respect_keepalive();
        assert_eq!(http.get_status().unwrap(), 200);
        if !read_body {
            return None;
        }
        let mut body = Vec::new();
        while let Some(b) = http.read_body_bytes().await.unwrap() {
            body.extend_from_slice(&b);
        }
        Some(String::from_utf8(body).unwrap())
    }

    // edgegate patch 39: sessions go out and come back in a box. Against a local server: a
    // session whose response was read to its end goes back to the pool and the next one
    // reuses its connection (and works); one whose body was left unread is closed, so the
    // next one opens a new connection.
    #[tokio::test]
    async fn boxed_sessions_are_pooled_only_when_their_response_was_read() {
        let (address, server) = keepalive_server().await;

        let connector = Connector::new(None);
        let peer = HttpPeer::new(address, false, "".into());
        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(!reused);
        assert_eq!(body_of(&mut http, true).await.unwrap(), "connection 1");
        let first_digest = http.digest() as *const _;
        connector.release_http_session(http, &peer, None).await;

        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(reused, "a session read to its end goes back to the pool");
        // edgegate patch 40: the session on the reused connection has the first one's digest.
        assert!(std::ptr::eq(http.digest(), first_digest), "the digest came back with the connection");
        assert_eq!(
            http.digest().socket_digest.as_ref().unwrap().peer_addr().unwrap().as_inet(),
            Some(&address)
        );
        assert_eq!(body_of(&mut http, true).await.unwrap(), "connection 1");
        connector.release_http_session(http, &peer, None).await;

        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(reused);
        // The body of this one is left unread: its connection must not be pooled.
        assert!(body_of(&mut http, false).await.is_none());
        connector.release_http_session(http, &peer, None).await;
        assert!(connector.reused_http_session(&peer).await.is_none());

        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(!reused);
        assert_eq!(body_of(&mut http, true).await.unwrap(), "connection 2");
        server.abort();
    }

    // edgegate patch 76: a session goes back to the pool under the key it was taken with,
    // hashed once: a peer changed in between (here its group key, part of its reuse hash)
    // does not file the connection under settings it was not made with, and the peer as it
    // was finds it again.
    #[tokio::test]
    async fn a_session_is_released_under_the_key_it_was_taken_with() {
        let (address, server) = keepalive_server().await;
        let connector = Connector::new(None);
        let mut peer = HttpPeer::new(address, false, "".into());
        let first_key = peer.reuse_hash();
        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(!reused);
        assert_eq!(http.pool_key(), Some(first_key));
        assert_eq!(body_of(&mut http, true).await.unwrap(), "connection 1");
        peer.group_key = 7;
        assert_ne!(peer.reuse_hash(), first_key);
        connector.release_http_session(http, &peer, None).await;
        assert!(
            connector.reused_http_session(&peer).await.is_none(),
            "not filed under the changed peer's key"
        );
        peer.group_key = 0;
        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(reused, "found under the key it was taken with");
        assert_eq!(body_of(&mut http, true).await.unwrap(), "connection 1");
        server.abort();
    }

    #[tokio::test]
    async fn malformed_response_is_not_returned_to_pool() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request_byte = [0];
            stream.read_exact(&mut request_byte).await.unwrap();
            stream
                .write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\n\
Transfer-Encoding: chunked\r\n\
\r\n\
ZZ\r\n",
                )
                .await
                .unwrap();
            std::future::pending::<()>().await;
        });

        let connector = Connector::new(None);
        let peer = HttpPeer::new(address, false, "".into());
        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(!reused);

        let request = RequestHeader::build("GET", b"/", None).unwrap();
        http.write_request_header(Box::new(request)).await.unwrap();
        assert!(matches!(
            http.read_response_task().await.unwrap(),
            crate::protocols::http::HttpTask::Header(_, false)
        ));
        assert!(http.read_response_task().await.is_err());

        connector.release_http_session(http, &peer, None).await;
        assert!(connector.reused_http_session(&peer).await.is_none());
        server.abort();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn test_reuse_rejects_fd_mismatch() {
        use std::os::unix::prelude::AsRawFd;

        #[derive(Clone)]
        struct MismatchPeer {
            reuse_hash: u64,
            address: SocketAddr,
        }

        impl Display for MismatchPeer {
            fn fmt(&self, f: &mut Formatter<'_>) -> FmtResult {
                write!(f, "{:?}", self.address)
            }
        }

        impl Peer for MismatchPeer {
            fn address(&self) -> &SocketAddr {
                &self.address
            }

            fn tls(&self) -> bool {
                false
            }

            fn sni(&self) -> &str {
                ""
            }

            fn reuse_hash(&self) -> u64 {
                self.reuse_hash
            }

            fn matches_fd<V: AsRawFd>(&self, _fd: V) -> bool {
                false
            }
        }

        let connector = Connector::new(None);
        let peer = HttpPeer::new(("1.1.1.1", 80), false, "".into());
        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(!reused);
        get_http(&mut http, 301).await;
        connector.release_http_session(http, &peer, None).await;

        let mismatch_peer = MismatchPeer {
            reuse_hash: peer.reuse_hash(),
            address: peer.address().clone(),
        };

        assert!(connector
            .reused_http_session(&mismatch_peer)
            .await
            .is_none());
    }

    #[tokio::test]
    #[cfg(feature = "any_tls")]
    async fn test_connect_tls() {
        let connector = Connector::new(None);
        let peer = HttpPeer::new(("1.1.1.1", 443), true, "one.one.one.one".into());
        // make a new connection to https://1.1.1.1
        let (http, reused) = connector.get_http_session(&peer).await.unwrap();
        let server_addr = http.server_addr().unwrap();
        assert_eq!(*server_addr, "1.1.1.1:443".parse::<SocketAddr>().unwrap());
        assert!(!reused);

        // this http is not even used, so not be able to reuse
        connector.release_http_session(http, &peer, None).await;
        let (mut http, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(!reused);

        get_http(&mut http, 200).await;
        connector.release_http_session(http, &peer, None).await;
        let (_, reused) = connector.get_http_session(&peer).await.unwrap();
        assert!(reused);
    }
}
