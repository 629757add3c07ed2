//! The `reconciled` binary as an operator runs it: exit codes, messages, signals.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{self, config_text, event, Daemon, FIXTURE_EVENT, SECRET};
use crate::process::{ChildGuard, EXIT_WITHIN};

pub(crate) fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reconciled"));
    cmd.env("RECONCILED_LOG", "info");
    cmd
}

pub(crate) struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child =
        ChildGuard::spawn(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()))
            .unwrap();
    child.stdin().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("reconciled.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_prints_a_redacted_summary() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config_text(&dir.path().join("x.db"), "", ""));
    let out = run(bin().arg("check-config").arg("--config").arg(&cfg), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("endpoint stripe: POST /webhooks/stripe, provider stripe"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("2 secret(s)"));
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
}

#[test]
fn a_bad_config_exits_2_naming_file_and_key_but_not_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&dir.path().join("x.db"), "", "")
        .replace("tolerance_secs = 300", "tolerance_secs = \"five minutes\"");
    let cfg = write_config(dir.path(), &text);
    for sub in ["check-config", "serve"] {
        let out = run(bin().arg(sub).arg("--config").arg(&cfg), b"");
        assert_eq!(out.code, Some(2), "{sub}: {}", out.stderr);
        let want =
            format!("reconciled: {}: endpoint[0].tolerance_secs: invalid type", cfg.display());
        assert!(out.stderr.contains(&want), "{sub}: {}", out.stderr);
        assert!(!out.stderr.contains(SECRET));
    }
    // A secret given with the wrong shape is refused without being echoed.
    let text = config_text(&dir.path().join("x.db"), "", "").replace(
        &format!("secrets = [\"{SECRET}\", \"{}\"]", harness::ROLLED),
        &format!("secrets = \"{SECRET}\""),
    );
    let out =
        run(bin().arg("check-config").arg("--config").arg(write_config(dir.path(), &text)), b"");
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("endpoint[0].secrets: must be a list"), "{}", out.stderr);
    assert!(!out.stderr.contains(SECRET), "{}", out.stderr);
    // A missing file is an error naming it.
    let out = run(bin().args(["check-config", "--config", "/nonexistent/reconciled.toml"]), b"");
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("/nonexistent/reconciled.toml: cannot read: No such file"),
        "{}",
        out.stderr
    );
}

#[test]
fn default_config_is_valid_once_its_placeholder_secret_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin().arg("default-config"), b"");
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("[[endpoint]]") && out.stdout.contains("tolerance_secs"));
    // As printed, it must not run: its secret is public.
    let cfg = write_config(dir.path(), &out.stdout);
    let refused = run(bin().arg("check-config").arg("--config").arg(&cfg), b"");
    assert_eq!(refused.code, Some(2));
    assert!(
        refused.stderr.contains("endpoint \"stripe\".secrets[0]: is the example's placeholder"),
        "{}",
        refused.stderr
    );
    let text =
        out.stdout.replace(reconciled::secret::PLACEHOLDER_SECRET, "whsec_from_the_dashboard");
    let cfg = write_config(dir.path(), &text);
    let out = run(bin().arg("check-config").arg("--config").arg(&cfg), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn the_demo_refuses_a_non_loopback_address() {
    let out = run(bin().args(["serve", "--demo", "--listen", "0.0.0.0:0"]), b"");
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("not a loopback address"), "{}", out.stderr);
}

/// Starts `serve` as a child process and returns it with the address it logged.
fn spawn_serve(
    args: &[&str],
    dir: &Path,
) -> (ChildGuard, SocketAddr, std::thread::JoinHandle<String>) {
    spawn_serve_with(args, dir, &[])
}

/// As [`spawn_serve`], with environment variables for the child only (never `set_var`: the
/// in-process daemons of other tests share this process's environment).
pub(crate) fn spawn_serve_with(
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
) -> (ChildGuard, SocketAddr, std::thread::JoinHandle<String>) {
    let mut child = ChildGuard::spawn(
        bin()
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let (addr, _, rest) = harness::listening(&mut child);
    let rest = std::thread::spawn(move || rest.join().unwrap().join("\n"));
    (child, addr, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inbox.db");
    let cfg = write_config(dir.path(), &config_text(&db, "", ""));
    let (mut child, addr, stderr) =
        spawn_serve(&["serve", "--config", cfg.to_str().unwrap()], dir.path());

    // Start a request and send only half of its body.
    let body = event("evt_in_flight");
    let sig = harness::signed(SECRET, &body);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: {sig}\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    let (first, second) = body.split_at(body.len() / 2);
    s.write_all(first).await.unwrap();
    // Make sure the server is reading this request before the signal.
    assert_eq!(
        harness::request(addr, "GET", "/healthz", &[], Default::default()).await.0,
        StatusCode::OK
    );

    assert!(child.signal("TERM"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused once shutdown began...
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after SIGTERM");
    // ...but the in-flight request completes and is stored.
    s.write_all(second).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    drop(s);

    let status = tokio::task::spawn_blocking(move || child.wait_within(EXIT_WITHIN)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", stderr.join().unwrap());
    let conn = harness::sql(&db);
    let n: i64 = conn
        .query_row("SELECT count(*) FROM inbox WHERE dedup_key = 'evt_in_flight'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

/// Invariant 1 at the process level: after a 200, SIGKILL loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_notification_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inbox.db");
    let cfg = write_config(dir.path(), &config_text(&db, "", ""));
    let (mut child, addr, stderr) =
        spawn_serve(&["serve", "--config", cfg.to_str().unwrap()], dir.path());
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("evt_before_kill_{i}");
        let body = event(&id);
        let (status, _) = harness::post_signed(addr, body).await;
        assert_eq!(status, StatusCode::OK);
        acked.push(id);
    }
    child.kill_now(); // SIGKILL: no drain, no checkpoint
    let log = stderr.join().unwrap();
    assert!(!log.contains(SECRET), "secret in the daemon's log");
    let conn = harness::sql(&db);
    let mut stmt = conn.prepare("SELECT dedup_key FROM inbox ORDER BY id").unwrap();
    let stored: Vec<String> =
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(stored, acked);
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

// Multi-threaded: the curl child is waited for synchronously while the server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_output_is_accepted_and_its_curl_command_works() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = harness::fixture("payment_intent.succeeded.json");

    let out = run(bin().args(["sign", "stripe", "--secret", SECRET]), &body);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let header =
        out.stdout.trim().strip_prefix("Stripe-Signature: ").expect("a header line").to_owned();
    let (status, text) =
        d.post("/webhooks/stripe", &[("stripe-signature", &header)], body.clone()).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "stored\n"));

    // A fixed timestamp gives a reproducible signature (and this one is too old to accept).
    let out =
        run(bin().args(["sign", "stripe", "--secret", SECRET, "--timestamp", "1700000000"]), &body);
    let t = out.stdout.trim().strip_prefix("Stripe-Signature: ").unwrap();
    assert!(t.starts_with("t=1700000000,v1="));
    let (status, text) = d.post("/webhooks/stripe", &[("stripe-signature", t)], body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("older than the tolerance"));

    // --curl prints a command that, run by a shell, delivers a signed event (here: a duplicate).
    let url = format!("http://{}/webhooks/stripe", d.addr);
    let out = run(bin().args(["sign", "stripe", "--secret", SECRET, "--curl", &url]), &body);
    assert_eq!(out.code, Some(0));
    assert!(!out.stdout.contains(SECRET), "the curl command carries no secret");
    let sh = run(Command::new("sh").arg("-c").arg(out.stdout.trim()), b"");
    assert!(sh.stdout.starts_with("HTTP/1.1 200 OK"), "{} {}", sh.stdout, sh.stderr);
    assert!(sh.stdout.ends_with("duplicate\n"), "{}", sh.stdout);
    assert_eq!(d.rows(), vec![(FIXTURE_EVENT.to_owned(), 2)]);
    d.stop().await;
}

#[tokio::test]
async fn inbox_list_and_show_read_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = harness::fixture("charge.succeeded.json");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    assert_eq!(d.post_stripe(SECRET, &harness::fixture("thin_event.json")).await.0, StatusCode::OK);
    assert_eq!(d.post_stripe("whsec_wrong", &body).await.0, StatusCode::BAD_REQUEST);
    // Failure records are written behind the answer.
    d.wait_for("the failure record", |c| {
        c.query_row("SELECT count(*) FROM verify_failures", [], |r| r.get::<_, i64>(0)).unwrap()
            == 1
    })
    .await;
    let db = d.db.to_str().unwrap().to_owned();

    let out = run(bin().args(["inbox", "list", "--db", &db, "--json"]), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["event_type"], "charge.succeeded");
    assert_eq!(rows[0]["status"], "pending");
    assert_eq!(rows[0]["body_len"], body.len());

    let out = run(bin().args(["inbox", "list", "--db", &db, "--status", "done"]), b"");
    assert!(out.stdout.contains("(no notifications)"), "{}", out.stdout);
    let out = run(bin().args(["inbox", "list", "--db", &db, "--provider", "stripe"]), b"");
    assert!(
        out.stdout.contains("charge.succeeded") && out.stdout.contains("v1.billing.meter"),
        "{}",
        out.stdout
    );

    let out = run(bin().args(["inbox", "show", "1", "--db", &db]), b"");
    assert_eq!(out.code, Some(0));
    assert!(out.stdout.contains("stripe-signature: t="), "{}", out.stdout);
    assert!(out.stdout.contains(std::str::from_utf8(&body).unwrap()), "raw body printed");
    let out = run(bin().args(["inbox", "show", "1", "--db", &db, "--json"]), b"");
    let row: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(row["body"].as_str().unwrap().as_bytes(), &body[..]);
    let out = run(bin().args(["inbox", "show", "99", "--db", &db]), b"");
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no inbox row with id 99"));

    let out = run(bin().args(["failures", "--db", &db]), b"");
    assert!(out.stdout.contains("bad_signature"), "{}", out.stdout);
    let out = run(bin().args(["inbox", "list", "--db", "/nonexistent.db"]), b"");
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no such store"), "{}", out.stderr);
    d.stop().await;
}

/// The operator's reconciliation commands against a real store and shop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_outbox_and_replay_commands() {
    use crate::harness::{config_text_with, pi_event, shop_config, Shop};
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let db = dir.path().join("inbox.db");
    let text = config_text_with(&db, "", "", &shop_config(&shop, ""));
    let cfg = write_config(dir.path(), &text);
    let cfg_s = cfg.to_str().unwrap().to_owned();

    // check-config reaches the shop and runs the query once...
    let out = run(bin().args(["check-config", "--config", &cfg_s]), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("reachable; the order query returns"), "{}", out.stdout);
    // ...and names the key when it cannot.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, text.replace("FROM orders", "FROM no_such_table")).unwrap();
    let out = run(bin().args(["check-config", "--config", broken.to_str().unwrap()]), b"");
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("shop.query") && out.stderr.contains("no such table"),
        "{}",
        out.stderr
    );

    let d = crate::harness::Daemon::start_with(dir.path(), "", "", &shop_config(&shop, "")).await;
    let (status, _) = d
        .post_stripe(SECRET, &pi_event("evt_cli", "succeeded", "pi_cli", "1001", 10000, "usd"))
        .await;
    assert_eq!(status, StatusCode::OK);
    d.settle().await;
    d.stop().await;

    let out = run(bin().args(["outbox", "list", "--json", "--config", &cfg_s]), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    let fulfil = &rows[0];
    for key in [
        "id",
        "kind",
        "order_id",
        "provider",
        "payment_id",
        "amount",
        "amount_minor",
        "currency",
        "reason",
        "template",
        "customer_email",
        "idempotency_key",
        "inbox_id",
        "event_id",
        "created_at",
    ] {
        assert!(fulfil.get(key).is_some(), "outbox JSON lacks {key}: {fulfil}");
    }
    assert_eq!(fulfil["kind"], "fulfil");
    assert_eq!(fulfil["amount"], "100.00");
    assert_eq!(fulfil["amount_minor"], 10000);
    assert_eq!(fulfil["currency"], "USD");
    assert_eq!(fulfil["customer_email"], "buyer@example.com");
    assert_eq!(fulfil["idempotency_key"], "fulfil:order:1001");
    let after =
        run(bin().args(["outbox", "list", "--json", "--after", "1", "--config", &cfg_s]), b"");
    assert_eq!(after.stdout.lines().count(), 1);
    let kind = run(bin().args(["outbox", "list", "--kind", "fulfil", "--config", &cfg_s]), b"");
    assert!(
        kind.stdout.contains("fulfil") && !kind.stdout.contains("order_confirmed"),
        "{}",
        kind.stdout
    );
    let tail = run(bin().args(["outbox", "tail", "--config", &cfg_s]), b"");
    assert!(tail.stdout.contains("order_confirmed"), "{}", tail.stdout);

    // Replaying the processed row changes nothing: its actions are planned again, and are
    // already in the outbox.
    let out = run(bin().args(["inbox", "replay", "1", "--dry-run", "--config", &cfg_s]), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("row 1 stripe "), "{}", out.stdout);
    assert!(
        out.stdout.contains("replayed 1 rows: 0 actions would emit (+), 0 no longer emitted (-)"),
        "{}",
        out.stdout
    );
    // A second payment for the same order, replayed dry, shows the refund it would emit
    // and writes nothing.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let body = pi_event("evt_cli_2", "succeeded", "pi_cli_2", "1001", 10000, "usd");
    conn.execute(
        "INSERT INTO inbox (endpoint, provider, dedup_key, event_type, received_at, last_received_at, remote_addr, headers, body, status) \
         VALUES ('stripe', 'stripe', 'evt_cli_2', 'payment_intent.succeeded', 0, 0, '127.0.0.1:1', '{}', ?1, 'dead')",
        [body],
    )
    .unwrap();
    let out = run(bin().args(["inbox", "replay", "2", "--dry-run", "--config", &cfg_s]), b"");
    assert!(out.stdout.contains("  + refund 100.00 USD"), "{}", out.stdout);
    let n: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2, "a dry run writes nothing");
    let out = run(bin().args(["inbox", "replay", "2", "--config", &cfg_s]), b"");
    assert!(out.stdout.contains("  + refund 100.00 USD"), "{}", out.stdout);
    assert!(out.stdout.contains("2 actions emitted (+)"), "{}", out.stdout);
    let status: String =
        conn.query_row("SELECT status FROM inbox WHERE id = 2", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "done");
    let out = run(bin().args(["inbox", "replay", "2", "--config", &cfg_s]), b"");
    assert!(out.stdout.contains("0 actions emitted (+)"), "{}", out.stdout);
    // No row matches: exit 2.
    let out = run(bin().args(["inbox", "replay", "99", "--config", &cfg_s]), b"");
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    assert!(out.stderr.contains("no inbox row matches the selection"), "{}", out.stderr);
    let n: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 4, "the refund and its notice, once");
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once it answers, watchdog pings while
/// the store commits, STOPPING=1 on SIGTERM. A unix datagram socket plays systemd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_pings_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inbox.db");
    let cfg = write_config(dir.path(), &config_text(&db, "", ""));
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // systemd names the watched process in WATCHDOG_PID; `exec` keeps the shell's pid.
    let mut child = ChildGuard::spawn(
        Command::new("sh")
            .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_reconciled"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "200000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let recv = move || {
        let mut buf = [0u8; 512];
        let n = systemd.recv(&mut buf).expect("a notification within 10 s");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), systemd)
    };
    let (first, systemd) = tokio::task::spawn_blocking(recv).await.unwrap();
    assert!(first.starts_with("READY=1\nSTATUS=listening on http://127.0.0.1:"), "{first:?}");
    let addr: SocketAddr = first.rsplit("http://").next().unwrap().trim().parse().unwrap();
    assert_eq!(
        harness::request(addr, "GET", "/readyz", &[], Default::default()).await.0,
        StatusCode::OK
    );
    let mut systemd = systemd;
    for _ in 0..2 {
        let (ping, s) = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 512];
            let n = systemd.recv(&mut buf).expect("a watchdog ping within 10 s");
            (String::from_utf8_lossy(&buf[..n]).into_owned(), systemd)
        })
        .await
        .unwrap();
        assert_eq!(ping.trim_end(), "WATCHDOG=1");
        systemd = s;
    }
    assert!(child.signal("TERM"));
    let rest = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = systemd.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if seen.last().is_some_and(|m| m.starts_with("STOPPING=1")) {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    assert!(rest.last().is_some_and(|m| m.starts_with("STOPPING=1")), "{rest:?}");
    let status = tokio::task::spawn_blocking(move || child.wait_within(EXIT_WITHIN)).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `inbox prune` deletes finished rows past `retention_days` with their actions, keeps the
/// rest, and the daemon still knows every kept dedup key afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_prune_deletes_only_finished_rows_past_retention() {
    use crate::harness::{config_text_with, pi_event, shop_config, Shop};
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for order in [1001, 1002, 1003] {
        shop.add(order, "pending", "10.00", "USD");
    }
    let db = dir.path().join("inbox.db");
    let text = config_text_with(&db, "", "retention_days = 45", &shop_config(&shop, ""));
    let cfg = write_config(dir.path(), &text);
    let cfg_s = cfg.to_str().unwrap().to_owned();
    let events: Vec<Vec<u8>> = [1001, 1002, 1003]
        .iter()
        .map(|o| {
            pi_event(
                &format!("evt_{o}"),
                "succeeded",
                &format!("pi_{o}"),
                &o.to_string(),
                1000,
                "usd",
            )
        })
        .collect();
    let d =
        Daemon::start_with(dir.path(), "", "retention_days = 45", &shop_config(&shop, "")).await;
    for body in &events {
        assert_eq!(d.post_stripe(SECRET, body).await.0, StatusCode::OK);
    }
    d.settle().await;
    d.stop().await;

    // Age the rows: 1001 was last delivered 46 days ago, 1002 44 days ago; 1003 is new.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let day = 86_400_000_i64;
    let now = reconciled::time::now_ms();
    for (key, days) in [("evt_1001", 46), ("evt_1002", 44)] {
        conn.execute(
            "UPDATE inbox SET received_at = ?2, last_received_at = ?2, processed_at = ?2 WHERE dedup_key = ?1",
            rusqlite::params![key, now - days * day],
        )
        .unwrap();
    }
    drop(conn);

    let out = run(bin().args(["inbox", "prune", "--dry-run", "--config", &cfg_s]), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("would prune 1 finished notifications"), "{}", out.stdout);
    let out = run(bin().args(["inbox", "prune", "--config", &cfg_s]), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("pruned 1 finished notifications"), "{}", out.stdout);

    let conn = harness::sql(&db);
    let keys: Vec<String> = conn
        .prepare("SELECT dedup_key FROM inbox ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(keys, ["evt_1002", "evt_1003"]);
    let orders: Vec<String> =
        harness::reading(&db, |s| async move { s.outbox(Default::default()).await })
            .unwrap()
            .into_iter()
            .map(|r| r.order_id.unwrap_or_default())
            .collect();
    assert_eq!(orders, ["1002", "1002", "1003", "1003"], "the pruned row's actions went with it");
    drop(conn);

    // The kept keys still deduplicate.
    let d =
        Daemon::start_with(dir.path(), "", "retention_days = 45", &shop_config(&shop, "")).await;
    assert_eq!(d.post_stripe(SECRET, &events[1]).await, (StatusCode::OK, "duplicate\n".into()));
    d.stop().await;

    // A retention below 45 days is refused, naming the key.
    let low = write_config(dir.path(), &text.replace("retention_days = 45", "retention_days = 7"));
    let out = run(bin().args(["inbox", "prune", "--config", low.to_str().unwrap()]), b"");
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("store.retention_days"), "{}", out.stderr);
}
