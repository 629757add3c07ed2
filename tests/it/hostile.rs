//! Hostile input over raw sockets: malformed and abusive HTTP, request-smuggling forms, path
//! tricks, bodies that are signed but poisonous. Each gets a 4xx or a closed connection; none
//! crashes the daemon, adds a row, or grows its memory noticeably (checked on a spawned
//! daemon's RSS after many rounds).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use reconciled::provider::stripe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{ChildGuard, EXIT_WITHIN};

const SECRET: &str = "whsec_hostile_0123456789";

fn signed_request(body: &[u8]) -> Vec<u8> {
    let sig = stripe::sign(SECRET.as_bytes(), reconciled::time::now_ms() / 1000, body);
    let mut req = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// `(name, expected answer, raw request)`: each must be refused, with that status code or (for
/// `None`) by closing the connection.
fn corpus() -> Vec<(&'static str, Option<u16>, Vec<u8>)> {
    let ok_body = br#"{"id":"evt_smuggled","object":"event","type":"payment_intent.succeeded","data":{"object":{}}}"#;
    let mut deep = vec![b'['; 100_000];
    deep.extend(vec![b']'; 100_000]);
    let mut form = String::new();
    for i in 0..10_000 {
        form.push_str(&format!("f{i}=v&"));
    }
    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        (
            "Content-Length and Transfer-Encoding together",
            Some(400),
            format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", ok_body.len()).into_bytes(),
        ),
        (
            "two different Content-Lengths",
            Some(400),
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
        ),
        (
            "a bad chunk size",
            Some(400),
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "a chunk size that overflows",
            Some(400),
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        ("a declared body over the limit",
            Some(413), b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n".to_vec()),
        ("a huge header",
            Some(431), format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000)).into_bytes()),
        ("500 headers",
            Some(431), format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes()),
        ("a garbage request line",
            Some(400), b"GARBAGE\r\n\r\n".to_vec()),
        ("an HTTP/2 preface",
            None, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("a NUL in a header value",
            Some(400), b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1\0,v1=00\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("a signed body that is not UTF-8 JSON",
            Some(400), signed_request(b"\xff\xfe\xfd{\"id\":\"evt_x\"}")),
        ("a signed, deeply nested body",
            Some(400), signed_request(&deep)),
        (
            "a signed body with a duplicate id",
            Some(400),
            signed_request(br#"{"id":"evt_dup_a","id":"evt_dup_b","object":"event","type":"payment_intent.succeeded"}"#),
        ),
        ("a signed body with a control character in the id",
            Some(400), signed_request(b"{\"id\":\"evt_\\u0000x\",\"object\":\"event\",\"type\":\"t\"}")),
        ("10,000 form fields to the IPN endpoint",
            Some(400), {
            let mut r = format!("POST /webhooks/ipn HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", form.len()).into_bytes();
            r.extend_from_slice(form.as_bytes());
            r
        }),
        ("a path with dot segments",
            Some(404), b"POST /webhooks/../webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("a percent-encoded endpoint name",
            Some(404), b"POST /webhooks/%73tripe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("a trailing slash",
            Some(404), b"POST /webhooks/stripe/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("a doubled slash",
            Some(404), b"POST //webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("an unsigned body",
            Some(400), format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", ok_body.len()).into_bytes().into_iter().chain(ok_body.iter().copied()).collect()),
        ("GET on a webhook",
            Some(405), b"GET /webhooks/stripe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ]
}

/// Sends raw bytes; returns the status code of the answer, or `None` if the connection was
/// closed (or stayed silent for 5 s) without one.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything: a write error is fine.
    let _ = s.write_all(bytes).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok())
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("reconciled.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout_secs = 2\nrequest_timeout_secs = 2\n\
             [store]\npath = \"{}\"\n\
             [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
             [[endpoint]]\nname = \"ipn\"\nprovider = \"paypal-ipn\"\nreceiver_id = \"R1\"\n",
            dir.path().join("inbox.db").display()
        ),
    )
    .unwrap();
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_reconciled"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("RECONCILED_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let (addr, _, _output) = crate::harness::listening(&mut child);

    let corpus = corpus();
    for (name, expected, bytes) in &corpus {
        let status = send_raw(addr, bytes).await;
        assert_eq!(status, *expected, "{name}");
    }
    // Many rounds: memory must not grow with them.
    let before = rss_kb(child.id());
    for _ in 0..10 {
        for (_, _, bytes) in &corpus {
            send_raw(addr, bytes).await;
        }
    }
    let after = rss_kb(child.id());
    assert!(after < before + 32 * 1024, "RSS grew from {before} kB to {after} kB");

    let (status, _) =
        crate::harness::request(addr, "GET", "/healthz", &[], Default::default()).await;
    assert_eq!(status, hyper::StatusCode::OK, "the daemon is still up");
    let rows: i64 = crate::harness::sql(&dir.path().join("inbox.db"))
        .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "nothing hostile was stored");
    assert!(child.signal("TERM"));
    assert_eq!(
        tokio::task::spawn_blocking(move || child.wait_within(EXIT_WITHIN)).await.unwrap().code(),
        Some(0)
    );
}
