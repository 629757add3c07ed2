//! Operating it: `GET /metrics` on the admin listener after known traffic, and
//! `reconciled check` as cron or Nagios runs it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hyper::StatusCode;

use crate::cli::{bin, run};
use crate::harness::{self, pi_event, shop_config, Backend, Daemon, Shop, SECRET};

const TOKEN: &str = "admin-token-0123456789abcdef";

/// A writable connection to a store file, for setting up a state to check.
fn writable(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// A second Stripe endpoint, `quiet`, that sets `silent_after`; a sink nobody listens on
/// (its deliveries fail and wait an hour).
fn extra(admin: SocketAddr) -> String {
    let closed = harness::free_addr();
    format!(
        "[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
         [[endpoint]]\nname = \"quiet\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\nsilent_after = \"1h\"\n\
         [[sink]]\nname = \"shop\"\nkind = \"http\"\nurl = \"http://{closed}/hook\"\n\
         secrets = [\"{SINK_SECRET}\"]\nretry_base = \"1h\"\n"
    )
}

const SINK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn start(backend: &Backend, dir: &Path, shop: &Shop, admin: SocketAddr) -> Daemon {
    // A short busy timeout: a store held locked from outside fails its probe quickly.
    let store = match backend {
        Backend::Sqlite => "busy_timeout_ms = 300",
        Backend::Postgres(_) => "",
    };
    let d = Daemon::start_on(backend, dir, "", store, &shop_config(shop, &extra(admin))).await;
    harness::accepting(admin).await;
    d
}

async fn scrape(admin: SocketAddr) -> String {
    let (code, body) = harness::request(admin, "GET", "/metrics", &[], Default::default()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body
}

/// The value of the sample named exactly `series` (name and labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next())
        .map(|v| v.parse().unwrap())
}

// On both stores: the store's gauges are read through its API at each scrape.
harness::on_both_stores! {
/// Counts after known traffic: two notifications stored, one repeat, one refused; both
/// decided with their actions; the store's gauges; no token or secret anywhere in the text.
async fn metrics_count_known_traffic(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    shop.add(1002, "pending", "100.00", "USD");
    let admin = harness::free_addr();
    let before = harness::now();
    let d = start(&store, dir.path(), &shop, admin).await;
    let first = pi_event("evt_m1", "succeeded", "pi_m1", "1001", 10000, "usd");
    let second = pi_event("evt_m2", "succeeded", "pi_m2", "1002", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &first).await.0, StatusCode::OK);
    assert_eq!(d.post_stripe(SECRET, &second).await.0, StatusCode::OK);
    assert_eq!(d.post_stripe(SECRET, &first).await.0, StatusCode::OK);
    assert_eq!(d.post_stripe("whsec_wrong", &second).await.0, StatusCode::BAD_REQUEST);
    d.settle().await;

    let text = scrape(admin).await;
    let at = |s: &str| sample(&text, s);
    let requests = |result: &str| {
        at(&format!("reconciled_webhook_requests_total{{endpoint=\"stripe\",result=\"{result}\"}}"))
    };
    assert_eq!(requests("stored"), Some(2.0), "{text}");
    assert_eq!(requests("duplicate"), Some(1.0));
    assert_eq!(requests("rejected"), Some(1.0));
    assert_eq!(requests("unavailable"), None);
    assert_eq!(
        at(r#"reconciled_verification_failures_total{endpoint="stripe",reason="bad_signature"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"reconciled_http_request_duration_seconds_count{endpoint="stripe"}"#),
        Some(4.0)
    );
    assert_eq!(at(r#"reconciled_decisions_total{outcome="done"}"#), Some(2.0));
    assert_eq!(at(r#"reconciled_actions_total{kind="fulfil"}"#), Some(2.0));
    assert_eq!(at(r#"reconciled_actions_total{kind="notify_customer"}"#), Some(2.0));
    let last = at(r#"reconciled_webhook_last_stored_timestamp_seconds{endpoint="stripe"}"#)
        .expect("the endpoint's last stored time");
    assert!(last >= before as f64 && last <= harness::now() as f64 + 1.0, "{last}");
    // The quiet endpoint stored nothing: no timestamp, but its silent_after is there.
    assert!(!text.contains(r#"reconciled_webhook_last_stored_timestamp_seconds{endpoint="quiet"}"#));
    assert_eq!(at(r#"reconciled_endpoint_silent_after_seconds{endpoint="quiet"}"#), Some(3600.0));
    assert_eq!(at(r#"reconciled_endpoint_silent_after_seconds{endpoint="stripe"}"#), None);
    for status in ["pending", "processing", "parked", "dead"] {
        assert_eq!(at(&format!("reconciled_inbox_rows{{status=\"{status}\"}}")), Some(0.0));
    }
    assert!(!text.contains("reconciled_inbox_oldest_due_timestamp_seconds "), "nothing is due");
    assert_eq!(at("reconciled_store_ready"), Some(1.0));
    assert!(at("reconciled_ingest_commit_duration_seconds_count").unwrap() >= 1.0);
    assert_eq!(at("reconciled_shop_lookup_errors_total"), Some(0.0));
    assert!(text.contains("reconciled_build_info{version=\""));
    // The sink: one failed attempt per order (each order's second action waits behind its
    // first), all four actions owed, none dead.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(admin).await;
        let failed = r#"reconciled_sink_deliveries_total{sink="shop",result="failed"}"#;
        if sample(&text, failed) == Some(2.0) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no failed deliveries counted: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let at = |s: &str| sample(&text, s);
    assert_eq!(at(r#"reconciled_sink_undelivered{sink="shop"}"#), Some(4.0));
    assert_eq!(at(r#"reconciled_sink_dead{sink="shop"}"#), Some(0.0));
    let oldest = at(r#"reconciled_sink_oldest_undelivered_timestamp_seconds{sink="shop"}"#)
        .expect("the oldest owed action");
    assert!(oldest >= before as f64 && oldest <= harness::now() as f64 + 1.0, "{oldest}");
    for secret in [SECRET, TOKEN, SINK_SECRET, "whsec_wrong"] {
        assert!(!text.contains(secret), "a secret in the metrics");
    }
    // No token needed, but only GET; an unknown endpoint in a URL never becomes a label.
    let (code, _) = d.post("/webhooks/nosuch", &[], "x").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = harness::request(admin, "POST", "/metrics", &[], Default::default()).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!scrape(admin).await.contains("nosuch"));
    d.stop().await;
}

/// `reconciled_webhook_last_stored_timestamp_seconds` is read from the store: a restart does
/// not make a provider look silent, while the in-memory counters start again.
async fn the_last_stored_timestamp_survives_a_restart(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let admin = harness::free_addr();
    let d = start(&store, dir.path(), &shop, admin).await;
    let body = pi_event("evt_r1", "succeeded", "pi_r1", "1001", 10000, "usd");
    assert_eq!(
        d.post(
            "/webhooks/quiet",
            &[("stripe-signature", &harness::signed(SECRET, &body))],
            body.clone()
        )
        .await
        .0,
        StatusCode::OK
    );
    d.settle().await;
    let series = r#"reconciled_webhook_last_stored_timestamp_seconds{endpoint="quiet"}"#;
    let before = sample(&scrape(admin).await, series).expect("stored once");
    d.stop().await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A new address: the old one may have gone to another test meanwhile.
    let admin = harness::free_addr();
    let d = start(&store, dir.path(), &shop, admin).await;
    let text = scrape(admin).await;
    assert_eq!(sample(&text, series), Some(before), "{text}");
    assert_eq!(
        sample(&text, r#"reconciled_webhook_requests_total{endpoint="quiet",result="stored"}"#),
        None
    );
    d.stop().await;
}

/// A repeat delivery counts as activity too: an endpoint whose provider only retries is not
/// silent. Taken down at most once a second, so the second post comes a second later.
async fn a_repeat_delivery_moves_the_last_stored_time(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let admin = harness::free_addr();
    let d = start(&store, dir.path(), &shop, admin).await;
    let body = pi_event("evt_rep", "succeeded", "pi_rep", "1001", 10000, "usd");
    let series = r#"reconciled_webhook_last_stored_timestamp_seconds{endpoint="stripe"}"#;
    assert_eq!(d.post_stripe(SECRET, &body).await, (StatusCode::OK, "stored\n".to_owned()));
    let first = sample(&scrape(admin).await, series).expect("stored once");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, text) = d.post_stripe(SECRET, &body).await;
    assert_eq!(code, StatusCode::OK);
    assert!(text.contains("duplicate"), "{text}");
    let second = sample(&scrape(admin).await, series).expect("still there");
    assert!(second >= first + 1.0, "the repeat moved it: {first} -> {second}");
    d.stop().await;
}
}

/// A store that stops taking notifications shows `reconciled_store_ready 0`: the database
/// file is replaced by a directory under the running daemon, so the readiness probe fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_commit_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let admin = harness::free_addr();
    let d = start(&Backend::Sqlite, dir.path(), &shop, admin).await;
    assert_eq!(sample(&scrape(admin).await, "reconciled_store_ready"), Some(1.0));
    // Take the write lock from outside and hold it: the probe's commit cannot get through.
    let blocker = writable(&dir.path().join("inbox.db"));
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let text = scrape(admin).await;
    assert_eq!(sample(&text, "reconciled_store_ready"), Some(0.0), "{text}");
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(sample(&scrape(admin).await, "reconciled_store_ready"), Some(1.0));
    d.stop().await;
}

/// The same on a PostgreSQL store: a session outside the daemon holds the table the probe
/// writes locked, and `/metrics` answers within its time limit with the store not ready; a
/// notification waits for the lock (no 2xx before its commit), and once the lock is gone it is
/// stored and the store is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_store_that_cannot_commit_is_not_ready() {
    let Some(db) = harness::PgDb::create("metrics_not_ready").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let admin = harness::free_addr();
    let d = start(&Backend::Postgres(db.url.clone()), dir.path(), &shop, admin).await;
    assert_eq!(sample(&scrape(admin).await, "reconciled_store_ready"), Some(1.0));
    let mut blocker = db.client().await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let started = std::time::Instant::now();
    let text = scrape(admin).await;
    assert_eq!(sample(&text, "reconciled_store_ready"), Some(0.0), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the scrape waited {:?}",
        started.elapsed()
    );
    // A notification posted meanwhile waits for the lock, and is stored once it is gone.
    let addr = d.addr;
    let body = pi_event("evt_held", "succeeded", "pi_held", "1", 1000, "usd");
    let held = tokio::spawn(async move { harness::post_signed(addr, body).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "answered while the store could not commit");
    tx.rollback().await.unwrap();
    assert_eq!(held.await.unwrap(), (StatusCode::OK, "stored\n".to_owned()));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while sample(&scrape(admin).await, "reconciled_store_ready") != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "ready again once the lock is gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.stop().await;
    drop(db);
}

/// `reconciled check`: exit 0 and one OK line on a healthy store; then each problem the
/// shipped alerts know, one line each, with the Nagios exit code of the worst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_problem_with_nagios_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let admin = harness::free_addr();
    let d = start(&Backend::Sqlite, dir.path(), &shop, admin).await;
    let body = pi_event("evt_c1", "succeeded", "pi_c1", "1001", 10000, "usd");
    let sig = harness::signed(SECRET, &body);
    assert_eq!(
        d.post("/webhooks/quiet", &[("stripe-signature", &sig)], body).await.0,
        StatusCode::OK
    );
    d.settle().await;
    d.stop().await;
    let config = dir.path().join("check.toml");
    let db = dir.path().join("inbox.db");
    std::fs::write(
        &config,
        harness::config_text_with(&db, "", "", &shop_config(&shop, &extra(admin))),
    )
    .unwrap();
    let check = || run(bin().arg("check").arg("--config").arg(&config), b"");

    let ok = check();
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.starts_with("OK: 0 notifications waiting"), "{}", ok.stdout);

    // The quiet endpoint last stored two hours ago: a warning.
    let conn = writable(&db);
    let two_hours_ago = reconciled::time::now_ms() - 2 * 3600 * 1000;
    conn.execute(
        "UPDATE endpoint_activity SET last_stored_at = ?1 WHERE endpoint = 'quiet'",
        [two_hours_ago],
    )
    .unwrap();
    let silent = check();
    assert_eq!(silent.code, Some(1), "{}", silent.stdout);
    assert!(
        silent.stdout.starts_with("WARNING: endpoint \"quiet\" has stored nothing for 2h"),
        "{}",
        silent.stdout
    );

    // A dead row: a second warning line.
    conn.execute("UPDATE inbox SET status = 'dead' WHERE dedup_key = 'evt_c1'", []).unwrap();
    let dead = check();
    assert_eq!(dead.code, Some(1));
    assert_eq!(dead.stdout.lines().count(), 2, "{}", dead.stdout);
    assert!(dead.stdout.contains("WARNING: 1 notifications are dead"), "{}", dead.stdout);

    // A notification due for ten minutes that nobody decides: critical, and listed first.
    conn.execute(
        "INSERT INTO inbox (endpoint, provider, dedup_key, received_at, last_received_at, remote_addr, headers, body) \
         VALUES ('stripe', 'stripe', 'evt_stuck', ?1, ?1, '127.0.0.1:1', '{}', x'7b7d')",
        [reconciled::time::now_ms() - 10 * 60 * 1000],
    )
    .unwrap();
    let stuck = check();
    assert_eq!(stuck.code, Some(2), "{}", stuck.stdout);
    let first = stuck.stdout.lines().next().unwrap();
    assert!(
        first.starts_with(
            "CRITICAL: notifications are not being decided: 1 waiting, the oldest due for 10m"
        ),
        "{first}"
    );
    // A longer backlog limit: only the warnings again.
    let lenient =
        run(bin().arg("check").arg("--config").arg(&config).args(["--backlog-after", "1h"]), b"");
    assert_eq!(lenient.code, Some(1), "{}", lenient.stdout);

    // A store it cannot read: critical; a configuration it cannot read: unknown (3).
    std::fs::write(&db, b"this is not a database").unwrap();
    let broken = check();
    assert_eq!(broken.code, Some(2), "{}", broken.stdout);
    assert!(broken.stdout.starts_with("CRITICAL: cannot read the store"), "{}", broken.stdout);
    std::fs::write(&config, "[store]\n").unwrap();
    let unknown = check();
    assert_eq!(unknown.code, Some(3), "{}", unknown.stdout);
    assert!(
        unknown.stdout.starts_with("UNKNOWN: cannot read the configuration"),
        "{}",
        unknown.stdout
    );
}
