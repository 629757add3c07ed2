//! Body size, timeouts and the connection cap, exercised over raw sockets, and slow clients:
//! headers or a body trickled in, answers never read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::{self, event, Daemon, SECRET};

/// Reads until the peer closes or `limit` passes; returns what was read and whether it closed.
async fn read_until_close(
    stream: &mut (impl AsyncRead + Unpin),
    limit: Duration,
) -> (String, bool) {
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
async fn status_line(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Option<String> {
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
    let stored = crate::harness::reading(&d.db, |s| async move { s.show(1).await })
        .unwrap()
        .expect("row 1 stored")
        .body;
    assert_eq!(stored, body);
    d.stop().await;
}

/// How a slow client's connection ended.
#[derive(Debug)]
struct CutOff {
    /// When the client saw the connection closed or reset.
    at: Instant,
    /// Bytes (trickling clients) or requests (a client that never reads) sent before that.
    sent: usize,
    /// What the server answered, if anything.
    answer: String,
    /// When the client's last write went through.
    last_sent: Instant,
}

/// Connects and sends `request` one byte every `every`, never idle for longer, while reading
/// whatever comes back. Returns once the first byte is sent; the task ends when the server
/// closes the connection (or after 30 s, which fails the test).
async fn trickle_headers(addr: SocketAddr, request: String, every: Duration) -> JoinHandle<CutOff> {
    let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
    let bytes = request.into_bytes();
    wr.write_all(&bytes[..1]).await.unwrap();
    let sent = Arc::new(AtomicUsize::new(1));
    let last_sent = Arc::new(Mutex::new(Instant::now()));
    let (counter, last) = (sent.clone(), last_sent.clone());
    let writer = tokio::spawn(async move {
        for b in &bytes[1..] {
            tokio::time::sleep(every).await;
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            *last.lock().unwrap() = Instant::now();
        }
    });
    tokio::spawn(async move {
        let (answer, closed) = read_until_close(&mut rd, Duration::from_secs(30)).await;
        let at = Instant::now();
        writer.abort();
        assert!(closed, "a client trickling its headers was still connected after 30 s");
        let last_sent = *last_sent.lock().unwrap();
        CutOff { at, sent: sent.load(Ordering::Relaxed), answer, last_sent }
    })
}

/// Connects, sends complete headers for a signed notification, then its body in pieces of
/// `piece` bytes every `every`, while reading the answer. Returns once the headers are sent;
/// the task ends when the server closes the connection.
async fn trickle_body(
    addr: SocketAddr,
    body: Vec<u8>,
    piece: usize,
    every: Duration,
) -> JoinHandle<CutOff> {
    let sig = harness::signed(SECRET, &body);
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let last_sent = Arc::new(Mutex::new(Instant::now()));
    let (counter, last) = (sent.clone(), last_sent.clone());
    let writer = tokio::spawn(async move {
        for chunk in body.chunks(piece) {
            tokio::time::sleep(every).await;
            if wr.write_all(chunk).await.is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
            *last.lock().unwrap() = Instant::now();
        }
    });
    tokio::spawn(async move {
        let (answer, closed) = read_until_close(&mut rd, Duration::from_secs(30)).await;
        let at = Instant::now();
        writer.abort();
        assert!(closed, "a client trickling its body was still connected after 30 s");
        let last_sent = *last_sent.lock().unwrap();
        CutOff { at, sent: sent.load(Ordering::Relaxed), answer, last_sent }
    })
}

/// Connects with a small receive buffer and pipelines `GET /healthz` requests as fast as the
/// server takes them, never reading an answer. Returns once the first batch is sent; the task
/// ends when a write fails because the server closed or reset the connection.
async fn never_read(addr: SocketAddr) -> JoinHandle<CutOff> {
    const BATCH: usize = 64;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let batch = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(BATCH);
    wr.write_all(batch.as_bytes()).await.unwrap();
    tokio::spawn(async move {
        // Held, never read from.
        let _rd = rd;
        let mut sent = BATCH;
        let mut last_sent = Instant::now();
        let cut = tokio::time::timeout(Duration::from_secs(30), async {
            while wr.write_all(batch.as_bytes()).await.is_ok() {
                sent += BATCH;
                last_sent = Instant::now();
            }
        })
        .await;
        assert!(cut.is_ok(), "a client that never reads was still connected after 30 s");
        CutOff { at: Instant::now(), sent, answer: String::new(), last_sent }
    })
}

/// A request that would be served if it ever arrived whole: the padding makes it take over a
/// minute at one byte every half second.
fn padded_healthz() -> String {
    format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n", "p".repeat(120))
}

#[tokio::test]
async fn headers_trickled_a_byte_at_a_time_are_cut_off_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "header_read_timeout_secs = 2", "").await;
    assert_eq!(d.get("/healthz").await.0, StatusCode::OK);
    let every = Duration::from_millis(500);

    // A new connection: the clock runs from the start, however steadily bytes come in.
    let started = Instant::now();
    let cut = trickle_headers(d.addr, padded_healthz(), every).await.await.unwrap();
    let after = cut.at - started;
    eprintln!(
        "trickled headers: {} bytes, one per {every:?}, answered {:?} and closed after {after:?} \
         ({:?} after its last byte)",
        cut.sent,
        cut.answer.lines().next().unwrap_or("nothing"),
        cut.at - cut.last_sent
    );
    assert!(cut.sent >= 3, "the client was not trickling: {cut:?}");
    assert!(!cut.answer.contains(" 200 "), "{cut:?}");
    assert!(after >= Duration::from_millis(1500), "cut off before the timeout: {after:?}");
    assert!(after < Duration::from_secs(8), "cut off only after {after:?}");

    // A kept-alive connection trickling its second request: the clock restarts when the first
    // answer is sent, and runs out the same way.
    let (mut rd, mut wr) = TcpStream::connect(d.addr).await.unwrap().into_split();
    wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(
        status_line(&mut rd, Duration::from_secs(5)).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for b in padded_healthz().bytes() {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    let (rest, closed) = read_until_close(&mut rd, Duration::from_secs(30)).await;
    let after = started.elapsed();
    writer.abort();
    eprintln!("trickled second request on a kept-alive connection: cut off after {after:?}");
    assert!(closed, "still connected after 30 s");
    assert!(!rest.contains(" 200 "), "the trickled request was served: {rest}");
    assert!(after < Duration::from_secs(8), "cut off only after {after:?}");

    assert_eq!(d.get("/healthz").await.0, StatusCode::OK);
    d.stop().await;
}

#[tokio::test]
async fn a_body_trickled_slowly_but_steadily_gets_408_and_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "request_timeout_secs = 1", "").await;
    assert_eq!(d.get("/healthz").await.0, StatusCode::OK);
    // 16 bytes every 100 ms: never idle, and about 17 s for the whole signed event.
    let body = event("evt_trickled_body");
    let total = body.len();
    let started = Instant::now();
    let cut = trickle_body(d.addr, body, 16, Duration::from_millis(100)).await.await.unwrap();
    let after = cut.at - started;
    eprintln!(
        "trickled body: {} of {total} bytes sent, answered {:?} and closed after {after:?} \
         ({:?} after its last piece)",
        cut.sent,
        cut.answer.lines().next().unwrap_or("nothing"),
        cut.at - cut.last_sent
    );
    assert!(
        cut.answer.is_empty() || cut.answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{cut:?}"
    );
    assert!(cut.sent >= 5 * 16 && cut.sent < total, "the client was not trickling: {cut:?}");
    assert!(after >= Duration::from_millis(900), "cut off before the timeout: {after:?}");
    assert!(after < Duration::from_secs(8), "cut off only after {after:?}");
    assert!(d.rows().is_empty(), "a body that never arrived whole was stored");
    // The same event sent normally is stored: it was refused for its pace, not its content.
    let (status, text) = d.post_stripe(SECRET, &event("evt_trickled_body")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(d.rows(), vec![("evt_trickled_body".to_owned(), 1)]);
    d.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    // The header and body timeouts are long, so only the write stall can end this connection.
    let d = Daemon::start_in(
        dir.path(),
        "max_connections = 1\nwrite_timeout_secs = 1\nheader_read_timeout_secs = 60\nrequest_timeout_secs = 60",
        "",
    )
    .await;
    assert_eq!(d.get("/healthz").await.0, StatusCode::OK);
    let started = Instant::now();
    let reader = never_read(d.addr).await;
    // The only slot is taken: a normal notification waits in the backlog until the stalled
    // connection is cut off, and is then served.
    let posted = tokio::time::timeout(
        Duration::from_secs(30),
        d.post_stripe(SECRET, &event("evt_after_stall")),
    )
    .await;
    let served = started.elapsed();
    let (status, text) = posted.expect("the client that never reads kept the only slot for 30 s");
    assert_eq!(status, StatusCode::OK, "{text}");
    let cut = reader.await.unwrap();
    let after = cut.at - started;
    eprintln!(
        "never-reading client: {} pipelined requests sent, cut off after {after:?}, {:?} after \
         its own writes stopped going through; the waiting notification was answered after \
         {served:?}",
        cut.sent,
        cut.at - cut.last_sent
    );
    assert!(after < Duration::from_secs(15), "cut off only after {after:?}");
    assert_eq!(d.rows(), vec![("evt_after_stall".to_owned(), 1)]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_is_served_while_slow_clients_hold_the_other_slots() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(
        dir.path(),
        "max_connections = 4\nheader_read_timeout_secs = 2\nrequest_timeout_secs = 2\nwrite_timeout_secs = 2",
        "",
    )
    .await;
    assert_eq!(d.get("/healthz").await.0, StatusCode::OK);
    let started = Instant::now();
    // Three of the four slots: headers trickled, a body trickled, answers never read.
    let slow = vec![
        ("headers", trickle_headers(d.addr, padded_healthz(), Duration::from_millis(500)).await),
        ("body", trickle_body(d.addr, event("evt_slow"), 16, Duration::from_millis(100)).await),
        ("never reads", never_read(d.addr).await),
    ];
    let (status, text) = d.post_stripe(SECRET, &event("evt_served")).await;
    let served = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{text}");
    for (kind, task) in &slow {
        assert!(
            !task.is_finished(),
            "the {kind} client was cut off before the notification was served"
        );
    }
    eprintln!("normal notification answered 200 after {served:?} with 3 slow clients connected");
    for (kind, task) in slow {
        let cut = task.await.unwrap();
        eprintln!(
            "  {kind} client cut off after {:?} (its last write went through {:?} before)",
            cut.at - started,
            cut.at - cut.last_sent
        );
        assert!(!cut.answer.contains(" 200 "), "{kind}: {cut:?}");
    }
    assert_eq!(d.rows(), vec![("evt_served".to_owned(), 1)]);
    d.stop().await;
}
