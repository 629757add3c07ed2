//! SIGHUP: the configuration is re-read and applied while the daemon runs, without dropping a
//! connection; a file that does not validate is refused and the old configuration stays.

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::bin;
use crate::harness::{self, pi_event, shop_config, Shop, ROLLED, SECRET};
use crate::process::ChildGuard;

/// A daemon spawned as operators run it, with its log read as it is written.
struct Running {
    child: ChildGuard,
    addr: std::net::SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Running {
    fn start(config: &Path) -> Running {
        let mut child = ChildGuard::spawn(
            bin()
                .args(["serve", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut running = Running { child, addr, log };
        let line = running.wait_for("listening on http://");
        running.addr = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        running
    }

    /// The first log line from now on that contains `text` (panics after 20 s).
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("the daemon never logged {text:?}");
    }

    fn hangup(&mut self) {
        assert!(self.child.signal("HUP"), "the daemon is gone");
    }

    async fn post(&self, secret: &str, body: Vec<u8>) -> (StatusCode, String) {
        let sig = harness::signed(secret, &body);
        harness::request(
            self.addr,
            "POST",
            "/webhooks/stripe",
            &[("stripe-signature", &sig)],
            body.into(),
        )
        .await
    }
}

fn config(dir: &Path, secret: &str, shop: &Shop, policy: &str, listen: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nshutdown_grace_secs = 5\n\
         [store]\npath = \"{}\"\n\
         [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{secret}\"]\ntolerance_secs = 300\n\n{}",
        dir.join("inbox.db").display(),
        shop_config(shop, policy)
    )
}

/// One request on an open keep-alive connection; returns the status line.
async fn on_connection(s: &mut TcpStream, secret: &str, body: &[u8]) -> String {
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        harness::signed(secret, body),
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n =
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or_default().to_owned()
}

fn actions(db: &Path, shadow: bool) -> Vec<(String, String)> {
    harness::reading(db, move |s| async move {
        s.outbox(reconciled::store::OutboxFilter { shadow, ..Default::default() }).await
    })
    .unwrap()
    .into_iter()
    .map(|a| (a.kind.as_str().to_owned(), a.order_id.unwrap_or_default()))
    .collect()
}

/// A rotated secret, another shop database and shadow mode take effect on SIGHUP, for new
/// notifications, while a connection opened before it goes on being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_configuration_without_dropping_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let first = Shop::create(dir.path());
    first.add(1001, "pending", "100.00", "USD");
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let second = Shop::create(&other_dir);
    second.add(1002, "pending", "50.00", "USD");
    let cfg = dir.path().join("reconciled.toml");
    std::fs::write(&cfg, config(dir.path(), SECRET, &first, "", "127.0.0.1:0")).unwrap();
    let mut d = Running::start(&cfg);
    let db = dir.path().join("inbox.db");

    let mut kept = TcpStream::connect(d.addr).await.unwrap();
    let body = pi_event("evt_before", "succeeded", "pi_1", "1001", 10000, "usd");
    assert_eq!(on_connection(&mut kept, SECRET, &body).await, "HTTP/1.1 200 OK");

    // The new file: the secret rotated, the shop moved, shadow mode.
    let shadow = "[policy]\nmode = \"shadow\"";
    std::fs::write(&cfg, config(dir.path(), ROLLED, &second, shadow, "127.0.0.1:0")).unwrap();
    d.hangup();
    d.wait_for("configuration reloaded: new notifications use it");
    d.wait_for("new settings in effect");

    // The connection opened before the reload is still served, under the new secret.
    let body = pi_event("evt_after", "succeeded", "pi_2", "1002", 5000, "usd");
    assert_eq!(on_connection(&mut kept, SECRET, &body).await, "HTTP/1.1 400 Bad Request");
    assert_eq!(on_connection(&mut kept, ROLLED, &body).await, "HTTP/1.1 200 OK");
    let (status, _) =
        d.post(SECRET, pi_event("evt_old", "succeeded", "pi_3", "1002", 5000, "usd")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the old secret still works");

    // Order 1002 is only in the new shop, and its actions are shadow ones.
    let pair = |order: &str| {
        vec![
            ("fulfil".to_owned(), order.to_owned()),
            ("notify_customer".to_owned(), order.to_owned()),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while actions(&db, true).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(actions(&db, true), pair("1002"));
    assert_eq!(actions(&db, false), pair("1001"));
    assert_eq!(d.child.terminate().code(), Some(0));
}

/// A file that does not validate, or names a shop that cannot be read, is refused with an
/// ERROR naming the problem, and the daemon goes on with the old configuration; settings that
/// need a restart are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_file_keeps_the_old_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let cfg = dir.path().join("reconciled.toml");
    let good = config(dir.path(), SECRET, &shop, "", "127.0.0.1:0");
    std::fs::write(&cfg, &good).unwrap();
    let mut d = Running::start(&cfg);

    // An unknown key: the file does not validate.
    std::fs::write(&cfg, good.replace("tolerance_secs = 300", "tolerance_secs = 300\nsecretz = 1"))
        .unwrap();
    d.hangup();
    let line = d.wait_for("configuration reload refused");
    assert!(line.contains("ERROR") && line.contains("secretz"), "{line}");
    assert!(!line.contains(SECRET), "{line}");
    let (status, text) =
        d.post(SECRET, pi_event("evt_1", "succeeded", "pi_1", "1001", 10000, "usd")).await;
    assert_eq!(status, StatusCode::OK, "{text}");

    // A valid file whose shop query lacks a column: refused too, the old query stays.
    std::fs::write(&cfg, good.replace("currency, email", "email")).unwrap();
    d.hangup();
    let line = d.wait_for("configuration reload refused");
    assert!(line.contains("no currency column"), "{line}");

    // The listen address cannot change under a running daemon: named, and the old one serves.
    std::fs::write(&cfg, good.replace("127.0.0.1:0", "127.0.0.1:1")).unwrap();
    d.hangup();
    let line = d.wait_for("take effect only at the next start");
    assert!(line.contains("server.listen"), "{line}");
    let (status, _) =
        d.post(SECRET, pi_event("evt_2", "succeeded", "pi_2", "1001", 10000, "usd")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d.child.terminate().code(), Some(0));
}

/// A sink's settings take effect on SIGHUP: the actions decided after the reload go to the
/// sink as it is now configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_a_changed_sink() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    shop.add(1002, "pending", "100.00", "USD");
    let sink = |out: &Path| {
        format!(
            "[[sink]]\nname = \"mailer\"\nkind = \"exec\"\nactions = [\"fulfil\"]\n\
             command = [\"/bin/sh\", \"-c\", \"cat >> '{}'\"]\n",
            out.display()
        )
    };
    let (first, second) = (dir.path().join("first.out"), dir.path().join("second.out"));
    let cfg = dir.path().join("reconciled.toml");
    std::fs::write(&cfg, config(dir.path(), SECRET, &shop, &sink(&first), "127.0.0.1:0")).unwrap();
    let mut d = Running::start(&cfg);
    let wait_for_file = |path: &Path, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(path).unwrap_or_default().contains(text) {
            assert!(Instant::now() < deadline, "{} never held {text}", path.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (status, _) =
        d.post(SECRET, pi_event("evt_1", "succeeded", "pi_1", "1001", 10000, "usd")).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_file(&first, "\"order_id\":\"1001\"");

    std::fs::write(&cfg, config(dir.path(), SECRET, &shop, &sink(&second), "127.0.0.1:0")).unwrap();
    d.hangup();
    d.wait_for("configuration reloaded");
    let (status, _) =
        d.post(SECRET, pi_event("evt_2", "succeeded", "pi_2", "1002", 10000, "usd")).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_file(&second, "\"order_id\":\"1002\"");
    assert!(!std::fs::read_to_string(&first).unwrap().contains("1002"));
    assert_eq!(d.child.terminate().code(), Some(0));
}
