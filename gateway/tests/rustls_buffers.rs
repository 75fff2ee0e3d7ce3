//! The vendored rustls's patch (edgegate patch 99): a connection lets its read buffer go
//! when a read finds nothing more and nothing is buffered. What must not change: records
//! that arrive in pieces, with reads that find nothing between them, are still put back
//! together, and a connection that went idle reads its next request as before.
use std::io::{Read, Write};
use std::sync::Arc;

/// A socket's read side: each `read` takes the next piece, or finds nothing (`WouldBlock`)
/// where the piece is `None`.
struct Pieces(std::collections::VecDeque<Option<Vec<u8>>>);

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.pop_front() {
            Some(Some(mut piece)) => {
                let n = piece.len().min(buf.len());
                buf[..n].copy_from_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(Some(piece.split_off(n)));
                }
                Ok(n)
            }
            _ => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

fn connected() -> (rustls::ServerConnection, rustls::ClientConnection) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
    let cert =
        rcgen::CertificateParams::new(vec!["a.gov.test".into()]).expect("params").self_signed(&key).expect("cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
    let name = "a.gov.test".try_into().expect("name");
    let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
    while c.is_handshaking() || s.is_handshaking() {
        let mut wire = Vec::new();
        c.write_tls(&mut wire).expect("client writes");
        if !wire.is_empty() {
            s.read_tls(&mut &wire[..]).expect("server reads");
            s.process_new_packets().expect("server processes");
        }
        let mut wire = Vec::new();
        s.write_tls(&mut wire).expect("server writes");
        if !wire.is_empty() {
            c.read_tls(&mut &wire[..]).expect("client reads");
            c.process_new_packets().expect("client processes");
        }
    }
    (s, c)
}

/// What the server reads of `request` sent by the client and cut into pieces of `cut`
/// bytes, with a read that finds nothing before each piece and after the last.
fn read_in_pieces(
    s: &mut rustls::ServerConnection,
    c: &mut rustls::ClientConnection,
    request: &[u8],
    cut: usize,
) -> Vec<u8> {
    c.writer().write_all(request).expect("client writes");
    let mut wire = Vec::new();
    c.write_tls(&mut wire).expect("client encrypts");
    let mut pieces = std::collections::VecDeque::new();
    for piece in wire.chunks(cut) {
        pieces.push_back(None);
        pieces.push_back(Some(piece.to_vec()));
    }
    pieces.push_back(None);
    let mut socket = Pieces(pieces);
    let mut got = Vec::new();
    while !socket.0.is_empty() {
        match s.read_tls(&mut socket) {
            Ok(_) => {
                s.process_new_packets().expect("the record is whole and valid");
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.reader().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
    }
    got
}

#[test]
fn records_in_pieces_with_empty_reads_between_are_read_whole() {
    let (mut s, mut c) = connected();
    let request = b"GET /api/permits/42 HTTP/1.1\r\nHost: a.gov.test\r\n\r\n".repeat(40);
    // One byte at a time, then uneven pieces: the buffer holds a partial record across
    // reads that find nothing, and is let go only between records.
    for cut in [1, 7, 300, 5000] {
        assert_eq!(read_in_pieces(&mut s, &mut c, &request, cut), request, "pieces of {cut}");
    }
}

#[test]
fn a_connection_that_went_idle_reads_its_next_request() {
    let (mut s, mut c) = connected();
    let first = b"GET /a HTTP/1.1\r\nHost: a.gov.test\r\n\r\n";
    assert_eq!(read_in_pieces(&mut s, &mut c, first, 10_000), first);
    // Idle: reads that find nothing, nothing buffered.
    let mut nothing = Pieces(std::collections::VecDeque::from([None, None]));
    for _ in 0..2 {
        let err = s.read_tls(&mut nothing).expect_err("nothing to read");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
    let second = vec![b'x'; 20_000]; // more than one record
    assert_eq!(read_in_pieces(&mut s, &mut c, &second, 1_000), second);
}
