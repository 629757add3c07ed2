//! Delivering actions to sinks: an HTTP receiver that verifies every delivery with the
//! official Standard Webhooks library (`scripts/webhook_receiver.py`), and a command.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;

use crate::cli::{bin, run, write_config};
use crate::harness::{
    self, config_text_on, config_text_with, on_both_stores, pi_event, shop_config, Daemon, Shop,
    SECRET,
};
use crate::process::ChildGuard;

/// A Standard Webhooks secret (`whsec_` and base64 of 24 bytes).
const SINK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The receiver, its request log and the file that sets how it answers.
struct Receiver {
    _child: ChildGuard,
    port: u16,
    log: PathBuf,
    mode: PathBuf,
}

impl Receiver {
    fn start(python: &str, dir: &Path, mode: &str) -> Receiver {
        let (log, mode_file) = (dir.join("received.jsonl"), dir.join("mode"));
        std::fs::write(&mode_file, mode).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/webhook_receiver.py");
        let mut child = ChildGuard::spawn(
            Command::new(python)
                .args([script, SINK_SECRET])
                .arg(&log)
                .arg(&mode_file)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout()).read_line(&mut first).unwrap();
        let port = first.trim().parse().expect("the receiver prints its port");
        Receiver { _child: child, port, log, mode: mode_file }
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(&self.mode, mode).unwrap();
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn sinks(port: u16, out: &Path, retry_max: &str, extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"shop\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         secrets = [\"{SINK_SECRET}\"]\nretry_base = \"100ms\"\nretry_max = \"{retry_max}\"\n{extra}\n\
         [[sink]]\nname = \"mailer\"\nkind = \"exec\"\nactions = [\"notify_customer\"]\n\
         command = [\"/bin/sh\", \"-c\", \"cat >> '{}' && echo \\\" $RECONCILED_ACTION_KIND\\\" >> '{}'\"]\n",
        out.display(),
        out.display()
    )
}

/// Waits until every delivery is in `state` (and there are `n` of them).
fn settle_deliveries(
    store: &reconciled::store::StoreConfig,
    n: usize,
    state: &str,
) -> Vec<reconciled::store::DeliveryRow> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows =
            harness::reading_store(
                store,
                |s| async move { s.deliveries(Default::default()).await },
            )
            .unwrap();
        if rows.len() == n && rows.iter().all(|d| d.state == state) {
            return rows;
        }
        assert!(Instant::now() < deadline, "deliveries never all {state}: {rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The PHP receiver in `contrib/php/receiver.php`, run by PHP's own server, accepts every
/// delivery and handles each action once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_php_example_receiver_handles_each_action_once() {
    let php = Command::new("php").arg("--version").output().is_ok_and(|o| o.status.success());
    if !php {
        assert!(std::env::var_os("CI").is_none(), "CI must run the PHP receiver test (php-cli)");
        eprintln!("skipped: php is not installed (apt-get install php-cli)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    std::fs::create_dir(&done).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/php/receiver.php");
    let _server = ChildGuard::spawn(
        Command::new("php")
            .args(["-S", &format!("127.0.0.1:{port}"), script])
            .env("RECONCILED_SINK_SECRET", SINK_SECRET)
            .env("RECONCILED_DONE_DIR", &done)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "php -S never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    shop.add(1002, "pending", "100.00", "USD");
    let sink = format!(
        "[[sink]]\nname = \"shop\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/\"\n\
         secrets = [\"{SINK_SECRET}\"]\nretry_base = \"100ms\"\nretry_max = \"300ms\"\n"
    );
    let d = Daemon::start_with(dir.path(), "", "", &shop_config(&shop, &sink)).await;
    for (event, pi, order, amount) in
        [("evt_1", "pi_1", "1001", 10000), ("evt_2", "pi_2", "1002", 6000)]
    {
        let body = pi_event(event, "succeeded", pi, order, amount, "usd");
        assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    }
    d.settle().await;
    settle_deliveries(&d.store, 4, "delivered");
    let db = d.db.clone();
    d.stop().await;
    let actions =
        harness::reading(&db, |s| async move { s.outbox(Default::default()).await }).unwrap();
    let mut handled: Vec<String> = std::fs::read_dir(&done)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    handled.sort();
    let mut expected: Vec<String> =
        actions.iter().map(|a| reconciled::deliver::webhook_id(&a.idempotency_key)).collect();
    expected.sort();
    assert_eq!(handled, expected, "each action handled once, under its webhook-id");
    // A forged delivery is refused.
    let (code, _) = harness::request(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        "POST",
        "/",
        &[("webhook-id", "act_x"), ("webhook-timestamp", "1"), ("webhook-signature", "v1,AAAA")],
        "{}".into(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

/// A command that runs past the sink's timeout is killed with everything it started, and the
/// delivery is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_sink_past_its_timeout_is_killed_with_its_children_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let pidfile = dir.path().join("child.pid");
    let sink = format!(
        "[[sink]]\nname = \"slow\"\nkind = \"exec\"\nactions = [\"fulfil\"]\ntimeout_secs = 1\n\
         retry_base = \"10s\"\nretry_max = \"10s\"\n\
         command = [\"/bin/sh\", \"-c\", \"sleep 60 & echo $! > '{}'; wait\"]\n",
        pidfile.display()
    );
    let d = Daemon::start_with(dir.path(), "", "", &shop_config(&shop, &sink)).await;
    let body = pi_event("evt_1", "succeeded", "pi_1", "1001", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    d.settle().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let rows =
            harness::reading(&d.db, |s| async move { s.deliveries(Default::default()).await })
                .unwrap();
        if rows.first().is_some_and(|r| r.attempts == 1) {
            break rows[0].clone();
        }
        assert!(Instant::now() < deadline, "no attempt recorded: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row.state, "retrying", "{row:?}");
    assert!(row.last_error.as_deref().unwrap_or("").contains("ran past 1 s"), "{row:?}");
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::process::running(pid) {
        assert!(Instant::now() < deadline, "the command's child {pid} outlived the timeout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.stop().await;
}

/// `check-config` refuses an exec sink whose program cannot be run, and says whether each HTTP
/// sink accepts connections now (a warning only: the shop may be down).
#[test]
fn check_config_checks_the_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let db = dir.path().join("inbox.db");
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http = |name: &str, port: u16| {
        format!(
            "[[sink]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/\"\nsecrets = [\"{SINK_SECRET}\"]\n"
        )
    };
    let exec = |program: &str| {
        format!("[[sink]]\nname = \"mailer\"\nkind = \"exec\"\ncommand = [\"{program}\"]\n")
    };
    let check = |sinks: String| {
        let text = config_text_with(&db, "", "", &shop_config(&shop, &sinks));
        run(bin().args(["check-config", "--config"]).arg(write_config(dir.path(), &text)), b"")
    };
    let out = check(format!(
        "{}{}{}",
        http("up", open.local_addr().unwrap().port()),
        http("down", closed),
        exec("sh")
    ));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("sink up: 127.0.0.1:") && out.stdout.contains("accepts connections"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("warning: sink down: cannot connect"), "{}", out.stdout);
    let out = check(exec("/nonexistent/mail-action"));
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    assert!(
        out.stderr.contains("sink \"mailer\".command")
            && out.stderr.contains("/nonexistent/mail-action is not an executable file"),
        "{}",
        out.stderr
    );
}

// What needs nothing of SQLite runs against both stores.
on_both_stores! {
/// Every action goes to every sink that takes it; each HTTP delivery verifies with the
/// official library, carries the action exactly as `outbox list --json` prints it, and keeps
/// its webhook-id across retries; one order's actions arrive in order even when the first
/// needs a retry; the command gets only the kinds it takes.
async fn actions_reach_every_sink_verified_in_order_and_once_delivered_stay_so(store) {
    let Some(python) = crate::sdk::sdk_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&python, dir.path(), "fail-first");
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    shop.add(1002, "pending", "100.00", "USD");
    let out = dir.path().join("mailer.out");
    let extra = shop_config(&shop, &sinks(receiver.port, &out, "300ms", ""));
    let d = Daemon::start_on(&store, dir.path(), "", "", &extra).await;
    for (event, pi, order, amount) in
        [("evt_1", "pi_1", "1001", 10000), ("evt_2", "pi_2", "1002", 6000)]
    {
        let body = pi_event(event, "succeeded", pi, order, amount, "usd");
        assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    }
    d.settle().await;
    // fulfil + notify for 1001, refund + notify for 1002: 4 to the shop, 2 to the mailer.
    let states = settle_deliveries(&d.store, 6, "delivered");
    assert!(states.iter().filter(|s| s.sink == "shop").all(|s| s.attempts == 2), "{states:?}");
    assert!(states.iter().filter(|s| s.sink == "mailer").all(|s| s.attempts == 1), "{states:?}");
    let (db, store_config) = (d.db.clone(), d.store.clone());
    d.stop().await;

    let actions =
        harness::reading_store(&store_config, |s| async move { s.outbox(Default::default()).await }).unwrap();
    let got = receiver.received();
    assert_eq!(got.len(), 8, "each of 4 actions failed once, then was delivered: {got:#?}");
    assert!(got.iter().all(|r| r["verified"] == true), "a signature did not verify: {got:#?}");
    for action in &actions {
        let id = reconciled::deliver::webhook_id(&action.idempotency_key);
        let mine: Vec<&Value> = got.iter().filter(|r| r["webhook_id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 2, "{id}: {got:#?}");
        let data = serde_json::to_value(action).unwrap();
        for r in &mine {
            assert_eq!(r["body"]["data"], data);
            assert_eq!(r["body"]["type"], format!("action.{}", action.kind.as_str()));
        }
        assert_eq!(
            (mine[0]["status"].as_i64(), mine[1]["status"].as_i64()),
            (Some(500), Some(204))
        );
    }
    // Per order: the notice is first sent only after the fulfilment (or refund) was delivered.
    for order in ["1001", "1002"] {
        let of_order: Vec<&Value> =
            got.iter().filter(|r| r["body"]["data"]["order_id"] == order).collect();
        let kinds: Vec<(&str, i64)> = of_order
            .iter()
            .map(|r| (r["body"]["data"]["kind"].as_str().unwrap(), r["status"].as_i64().unwrap()))
            .collect();
        let first = if order == "1001" { "fulfil" } else { "refund" };
        assert_eq!(
            kinds,
            [(first, 500), (first, 204), ("notify_customer", 500), ("notify_customer", 204)],
            "order {order}"
        );
    }
    let mailed = std::fs::read_to_string(&out).unwrap();
    // Each run wrote the envelope, then the kind from its environment, on one line.
    let runs: Vec<&str> = mailed.lines().collect();
    assert_eq!(runs.len(), 2, "{mailed}");
    assert!(runs.iter().all(|l| l.ends_with("} notify_customer")), "{mailed}");
    assert_eq!(mailed.matches("\"type\":\"action.notify_customer\"").count(), 2, "{mailed}");
    assert!(!mailed.contains("\"kind\":\"fulfil\""), "{mailed}");

    // The command line shows the deliveries and their attempts.
    let cfg = write_config(dir.path(), &config_text_on(&store, &db, "", "", &extra));
    let list = run(bin().args(["outbox", "list", "--config"]).arg(&cfg), b"");
    assert!(list.stdout.contains("delivery: mailer delivered, shop delivered"), "{}", list.stdout);
    let show = run(bin().args(["outbox", "show", "1", "--config"]).arg(&cfg), b"");
    assert!(
        show.stdout.contains("attempt 1 to shop") && show.stdout.contains("HTTP 500"),
        "{}",
        show.stdout
    );
    let owed = run(bin().args(["outbox", "list", "--undelivered", "--config"]).arg(&cfg), b"");
    assert!(owed.stdout.contains("(no actions)"), "{}", owed.stdout);
}

/// A receiver that keeps failing: the backoff honours its `Retry-After`, the delivery turns
/// `dead` after `give_up_after` and is listed as owed; `outbox retry --dead` sends it again
/// once the receiver is back, with the same webhook-id.
async fn a_failing_sink_goes_dead_and_retry_brings_it_back(store) {
    let Some(python) = crate::sdk::sdk_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&python, dir.path(), "retry-after 1");
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let out = dir.path().join("mailer.out");
    let sink = sinks(receiver.port, &out, "5s", "give_up_after = \"3s\"\nactions = [\"fulfil\"]");
    let extra = shop_config(&shop, &sink);
    let d = Daemon::start_on(&store, dir.path(), "", "", &extra).await;
    let body = pi_event("evt_1", "succeeded", "pi_1", "1001", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    d.settle().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let rows = harness::reading_store(&d.store, |s| async move {
            s.deliveries(reconciled::store::DeliveryFilter {
                sink: Some("shop".into()),
                ..Default::default()
            })
            .await
        })
        .unwrap();
        if rows.iter().any(|r| r.state == "dead") {
            break rows;
        }
        assert!(Instant::now() < deadline, "never dead: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Retry-After: 1 stretched the 100 ms backoff to a second: about 3 tries in the 3 s
    // before giving up, where the backoff alone would have made a dozen.
    let tries = receiver.received().len();
    assert!((2..=4).contains(&tries), "{tries} attempts in the 3 s before giving up: {dead:?}");
    assert!(dead[0].last_error.as_deref().unwrap_or("").contains("503"), "{dead:?}");

    let cfg = write_config(dir.path(), &config_text_on(&store, &d.db, "", "", &extra));
    let owed = run(
        bin().args(["outbox", "list", "--undelivered", "--sink", "shop", "--config"]).arg(&cfg),
        b"",
    );
    assert!(owed.stdout.contains("shop dead"), "{}", owed.stdout);
    // For monitoring: outbox status exits 1 while a delivery is dead.
    let status = run(bin().args(["outbox", "status", "--config"]).arg(&cfg), b"");
    assert_eq!(status.code, Some(1), "{}", status.stdout);
    let shop_line = status.stdout.lines().find(|l| l.starts_with("shop ")).unwrap_or_default();
    let cells: Vec<&str> = shop_line.split_whitespace().collect();
    assert_eq!(cells[..5], ["shop", "0", "0", "1", "0"], "{}", status.stdout);
    assert!(status.stderr.contains("1 dead deliveries"), "{}", status.stderr);
    receiver.set_mode("ok");
    let retried = run(bin().args(["outbox", "retry", "--dead", "--config"]).arg(&cfg), b"");
    assert_eq!(retried.code, Some(0), "{}", retried.stderr);
    assert!(retried.stdout.starts_with("1 delivery is due again"), "{}", retried.stdout);
    let states = settle_deliveries(&d.store, 2, "delivered");
    assert!(states.iter().any(|s| s.sink == "shop"));
    let got = receiver.received();
    let ids: std::collections::HashSet<&str> =
        got.iter().map(|r| r["webhook_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one action, one webhook-id across every attempt: {got:#?}");
    assert_eq!(got.last().unwrap()["status"], 204);
    let status = run(bin().args(["outbox", "status", "--config"]).arg(&cfg), b"");
    assert_eq!(status.code, Some(0), "{}{}", status.stdout, status.stderr);
    d.stop().await;
}

/// Shadow actions are recorded for comparison and delivered to no sink.
async fn shadow_actions_are_delivered_nowhere(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let out = dir.path().join("sink.out");
    let sink = format!(
        "[[sink]]\nname = \"all\"\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"cat >> '{}'\"]\n\
         [policy]\nmode = \"shadow\"\n",
        out.display()
    );
    let d = Daemon::start_on(&store, dir.path(), "", "", &shop_config(&shop, &sink)).await;
    let body = pi_event("evt_1", "succeeded", "pi_1", "1001", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    d.settle().await;
    // Give a dispatcher that wrongly had something the time to send it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store_config = d.store.clone();
    d.stop().await;
    let shadow = harness::reading_store(&store_config, |s| async move {
        s.outbox(reconciled::store::OutboxFilter { shadow: true, ..Default::default() }).await
    })
    .unwrap();
    assert_eq!(shadow.len(), 2, "the decision was recorded: {shadow:?}");
    let deliveries =
        harness::reading_store(&store_config, |s| async move { s.deliveries(Default::default()).await }).unwrap();
    assert!(deliveries.is_empty(), "{deliveries:?}");
    assert!(!out.exists(), "a shadow action was delivered");
}
}
