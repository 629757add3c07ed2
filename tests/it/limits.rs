//! Body size, timeouts and the connection cap, exercised over raw sockets.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{self, event, Daemon, SECRET};

/// Reads until the peer closes or `limit` passes; returns what was read and whether it closed.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

/// Reads one response's status line within `limit`.
async fn status_line(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    tokio::time::timeout(limit, async {
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        Some(())
    })
    .await
    .ok()??;
    Some(String::from_utf8_lossy(&buf).trim_end().to_owned())
}

#[tokio::test]
async fn oversize_bodies_get_413_whether_declared_or_chunked() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "max_body_bytes = 4096", "").await;
    let big = vec![b'x'; 10_000];
    let sig = harness::signed(SECRET, &big);
    let (status, _) = d.post("/webhooks/stripe", &[("stripe-signature", &sig)], big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked: no length up front, so the limit is enforced while reading.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    for _ in 0..3 {
        s.write_all(b"800\r\n").await.unwrap();
        s.write_all(&[b'y'; 0x800]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let line = status_line(&mut s, Duration::from_secs(5)).await;
    assert_eq!(line.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));

    // A body exactly at the limit is fine (it is refused for its signature, not its size).
    let at_limit = vec![b'z'; 4096];
    let sig = harness::signed(SECRET, &at_limit);
    let (status, text) = d.post("/webhooks/stripe", &[("stripe-signature", &sig)], at_limit).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(d.rows().is_empty());
    d.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "header_read_timeout_secs = 1", "").await;
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Sig").await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "connection still open after 10 s");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
    // The daemon is still serving.
    assert_eq!(d.get("/healthz").await.0, StatusCode::OK);
    d.stop().await;
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_and_free_their_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d =
        Daemon::start_in(dir.path(), "header_read_timeout_secs = 1\nmax_connections = 1", "").await;
    // Connects and never sends a byte.
    let mut silent = TcpStream::connect(d.addr).await.unwrap();
    let (_, closed) = read_until_close(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection kept its slot");
    // Sends one request, then idles on keep-alive.
    let mut idle = TcpStream::connect(d.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (resp, closed) = read_until_close(&mut idle, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(closed, "an idle keep-alive connection kept its slot");
    // The single slot is free again.
    assert_eq!(d.get("/healthz").await.0, StatusCode::OK);
    d.stop().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "request_timeout_secs = 1", "").await;
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\nContent-Length: 100\r\n\r\n{\"id\":").await.unwrap();
    let line = status_line(&mut s, Duration::from_secs(5)).await;
    assert_eq!(line.as_deref(), Some("HTTP/1.1 408 Request Timeout"));
    assert!(d.rows().is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "max_connections = 2", "").await;
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // Two keep-alive connections, each served once and then held open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(get).await.unwrap();
        assert_eq!(
            status_line(&mut s, Duration::from_secs(5)).await.as_deref(),
            Some("HTTP/1.1 200 OK")
        );
        held.push(s);
    }
    // A third is not served while both slots are taken...
    let mut third = TcpStream::connect(d.addr).await.unwrap();
    third.write_all(get).await.unwrap();
    assert_eq!(status_line(&mut third, Duration::from_millis(500)).await, None);
    // ...and is served as soon as one closes.
    drop(held.pop());
    assert_eq!(
        status_line(&mut third, Duration::from_secs(5)).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    drop(held);
    drop(third);
    d.stop().await;
}

#[tokio::test]
async fn bodies_are_stored_intact_across_many_writes() {
    // A body trickled in small pieces is assembled exactly.
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = event("evt_trickled");
    let sig = harness::signed(SECRET, &body);
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    let head = format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(97) {
        s.write_all(piece).await.unwrap();
        s.flush().await.unwrap();
    }
    let (resp, _) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    let conn = d.read();
    let stored: Vec<u8> = conn.query_row("SELECT body FROM inbox", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, body);
    d.stop().await;
}
