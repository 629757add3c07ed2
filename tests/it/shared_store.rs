//! The PostgreSQL store, shared by several daemons, on the real server: each test makes a
//! database of its own and drops it. Skipped without `RECONCILED_TEST_POSTGRES_URL` (source
//! scripts/dbs.sh), except under CI, where it fails.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use reconciled::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::{pi_event, shop_config, PgDb, Shop, SECRET};

/// The configuration of one daemon on the shared store `url`, with the shop.
fn config_text(url: &str, shop: &Shop, more: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n\
         [store]\nurl = \"{url}\"\n\
         [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\ntolerance_secs = 300\n\
         {}",
        shop_config(shop, more)
    )
}

/// A daemon in this process.
struct Daemon {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    async fn start(dir: &Path, text: &str) -> Daemon {
        let config = Config::from_toml(text, &dir.join("test.toml")).expect("config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (_, reloads) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            reconciled::daemon::run(&config, listener, token, reloads, |_| {}).await
        });
        Daemon { addr, shutdown, task }
    }

    async fn post(&self, body: &[u8]) -> (StatusCode, String) {
        crate::harness::post_signed(self.addr, body.to_vec()).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("daemon task").expect("daemon ran");
    }
}

/// Waits (bounded) until no row waits to be decided.
async fn settle(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open: i64 = client
            .query_one("SELECT count(*) FROM inbox WHERE status IN ('pending', 'processing')", &[])
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} rows still undecided");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn action_counts(client: &tokio_postgres::Client) -> HashMap<String, i64> {
    client
        .query("SELECT idempotency_key, count(*) FROM outbox GROUP BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Two daemons on one store: payments sent to either, every tenth delivered again to the
/// other. Every notification is stored once (a repeat raises its delivery count), every
/// order gets one `fulfil` and one `order_confirmed`, and both daemons decided rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_share_one_store_and_decide_each_payment_once() {
    let Some(db) = PgDb::create("two_daemons").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    const ORDERS: i64 = 120;
    for i in 1..=ORDERS {
        shop.add(i, "pending", "10.00", "USD");
    }
    let text = config_text(&db.url, &shop, "");
    let a = Daemon::start(dir.path(), &text).await;
    let b = Daemon::start(dir.path(), &text).await;
    let daemons = [&a, &b];
    let mut sends = Vec::new();
    for i in 1..=ORDERS {
        let body = pi_event(
            &format!("evt_{i}"),
            "succeeded",
            &format!("pi_{i}"),
            &i.to_string(),
            1000,
            "usd",
        );
        let first = daemons[(i % 2) as usize];
        let again = (i % 10 == 0).then(|| daemons[((i + 1) % 2) as usize]);
        sends.push(async move {
            let (status, _) = first.post(&body).await;
            assert_eq!(status, StatusCode::OK);
            if let Some(other) = again {
                let (status, text) = other.post(&body).await;
                assert_eq!(status, StatusCode::OK, "{text}");
            }
        });
    }
    futures_util::future::join_all(sends).await;
    let client = db.client().await;
    settle(&client).await;
    let rows: i64 = client.query_one("SELECT count(*) FROM inbox", &[]).await.unwrap().get(0);
    assert_eq!(rows, ORDERS, "one row per notification");
    let repeats: i64 = client
        .query_one("SELECT coalesce(sum(count), 0)::bigint FROM inbox_redeliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(repeats, ORDERS / 10, "each repeat counted once");
    let actions = action_counts(&client).await;
    for i in 1..=ORDERS {
        for key in [format!("fulfil:order:{i}"), format!("notify:order_confirmed:{i}")] {
            assert_eq!(actions.get(&key), Some(&1), "{key}");
        }
    }
    assert_eq!(actions.len() as i64, 2 * ORDERS, "{actions:?}");
    a.stop().await;
    b.stop().await;
    drop(db);
}

/// Two payments of one order arriving at two daemons at the same moment: one pays the order,
/// the other is refunded, whichever daemon decides first (decisions about one order are
/// serialised across daemons).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_payments_of_one_order_on_two_daemons_give_one_fulfil_and_one_refund() {
    let Some(db) = PgDb::create("double_pay").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    const ORDERS: i64 = 60;
    for i in 1..=ORDERS {
        shop.add(i, "pending", "10.00", "USD");
    }
    let text = config_text(&db.url, &shop, "");
    let a = Daemon::start(dir.path(), &text).await;
    let b = Daemon::start(dir.path(), &text).await;
    let mut sends = Vec::new();
    for i in 1..=ORDERS {
        for (n, daemon) in [(1, &a), (2, &b)] {
            let body = pi_event(
                &format!("evt_{i}_{n}"),
                "succeeded",
                &format!("pi_{i}_{n}"),
                &i.to_string(),
                1000,
                "usd",
            );
            sends.push(async move {
                let (status, text) = daemon.post(&body).await;
                assert_eq!(status, StatusCode::OK, "{text}");
            });
        }
    }
    futures_util::future::join_all(sends).await;
    let client = db.client().await;
    settle(&client).await;
    let per_order: Vec<(String, i64, i64)> = client
        .query(
            "SELECT order_id, count(*) FILTER (WHERE kind = 'fulfil'), \
             count(*) FILTER (WHERE kind = 'refund') FROM outbox GROUP BY order_id ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(per_order.len() as i64, ORDERS);
    for (order, fulfils, refunds) in per_order {
        assert_eq!((fulfils, refunds), (1, 1), "order {order}");
    }
    a.stop().await;
    b.stop().await;
    drop(db);
}

/// Daemons starting together on an empty database migrate it once; a store migrated by a
/// newer version is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemons_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(db) = PgDb::create("migrate").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[store]\nurl = \"{}\"\n[[endpoint]]\nname = \"s\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n",
        db.url
    );
    let config = Config::from_toml(&text, &dir.path().join("t.toml")).unwrap();
    let opens = (0..4).map(|_| reconciled::store::Store::open_tool(&config.store));
    for store in futures_util::future::join_all(opens).await {
        store.expect("every store opens").close().await;
    }
    let client = db.client().await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM reconciled_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let latest = reconciled::store::postgres::schema::latest_version();
    assert_eq!(versions, (1..=latest).collect::<Vec<_>>());
    client.execute("INSERT INTO reconciled_schema VALUES ($1, 0)", &[&(latest + 1)]).await.unwrap();
    let err = reconciled::store::Store::open_tool(&config.store).await.unwrap_err();
    assert!(err.to_string().contains("newer than this build"), "{err}");
    drop(db);
}

/// A session whose commits are not durable is refused at start, with the setting named; a
/// wrong password is an error that never shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_would_lose_acknowledged_commits_is_refused() {
    let Some(db) = PgDb::create("durable").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let open = |url: String| {
        let text = format!(
            "[store]\nurl = \"{url}\"\n[[endpoint]]\nname = \"s\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n"
        );
        let config = Config::from_toml(&text, &dir.path().join("t.toml")).unwrap();
        async move { reconciled::store::Store::open(&config.store).await }
    };
    let off = format!("{}?options=-c%20synchronous_commit%3Doff", db.url);
    let err = open(off).await.unwrap_err().to_string();
    assert!(err.contains("synchronous_commit is off"), "{err}");
    let scheme_end = db.url.find("://").unwrap() + 3;
    let at = db.url[scheme_end..].find('@').map_or(scheme_end, |i| scheme_end + i + 1);
    let wrong = format!("{}nosuchuser:Sekr1t-pw@{}", &db.url[..scheme_end], &db.url[at..]);
    let err = open(wrong).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("Sekr1t-pw"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    drop(db);
}

/// The command line reads a shared store through the configuration, as it reads a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_reads_a_shared_store() {
    let Some(db) = PgDb::create("cli").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(7, "pending", "10.00", "USD");
    let text = config_text(&db.url, &shop, "");
    let daemon = Daemon::start(dir.path(), &text).await;
    let body = pi_event("evt_cli", "succeeded", "pi_cli", "7", 1000, "usd");
    assert_eq!(daemon.post(&body).await.0, StatusCode::OK);
    assert_eq!(daemon.post(&body).await.0, StatusCode::OK);
    settle(&db.client().await).await;
    let path = dir.path().join("reconciled.toml");
    std::fs::write(&path, &text).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reconciled"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let inbox = run(&["inbox", "list", "--json"]);
    let row: serde_json::Value = serde_json::from_str(inbox.lines().next().unwrap()).unwrap();
    assert_eq!(
        (row["dedup_key"].as_str(), row["delivery_count"].as_i64()),
        (Some("evt_cli"), Some(2))
    );
    assert_eq!(row["status"], "done");
    let outbox = run(&["outbox", "list", "--json"]);
    let kinds: Vec<String> = outbox
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["fulfil", "notify_customer"]);
    let show = run(&["inbox", "show", "1"]);
    assert!(show.contains("evt_cli"), "{show}");
    // A replay beside the running daemon decides the row again and adds nothing.
    let replay = run(&["inbox", "replay", "--provider", "stripe"]);
    assert!(
        replay.contains("replayed 1 rows: 0 actions emitted (+), 0 no longer emitted (-)"),
        "{replay}"
    );
    let prune = run(&["inbox", "prune", "--dry-run"]);
    assert!(prune.contains("would prune 0 finished notifications"), "{prune}");
    let check = run(&["check"]);
    assert!(check.starts_with("OK"), "{check}");
    let failures = run(&["failures"]);
    assert!(!failures.contains("evt_cli"), "{failures}");
    daemon.stop().await;
    drop(db);
}

/// A TCP proxy in front of the PostgreSQL server that the test can cut (every connection
/// closed, new ones refused) and restore: the database going away and coming back.
struct Proxy {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let is_up = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !is_up.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let mut cuts = cuts.clone();
                // Only a cut after this connection was made ends it.
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The database going away: notifications are answered 503 (never 2xx), `/readyz` turns 503,
/// and once it is back the daemon stores, decides and answers ready again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_database_answers_503_and_the_daemon_recovers_by_itself() {
    let Some(db) = PgDb::create("outage").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for i in 1..=3 {
        shop.add(i, "pending", "10.00", "USD");
    }
    let host = db.url.split('@').nth(1).unwrap_or(&db.url["postgres://".len()..]);
    let target = host.split('/').next().unwrap().to_owned();
    let proxy = Proxy::start(target.clone()).await;
    let url = db.url.replace(&target, &proxy.addr.to_string());
    let daemon = Daemon::start(dir.path(), &config_text(&url, &shop, "")).await;
    let event = |i: i64| {
        pi_event(&format!("evt_{i}"), "succeeded", &format!("pi_{i}"), &i.to_string(), 1000, "usd")
    };
    assert_eq!(daemon.post(&event(1)).await.0, StatusCode::OK);

    proxy.cut();
    let (status, _) = daemon.post(&event(2)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not stored, so not acknowledged");
    let (ready, _) =
        crate::harness::request(daemon.addr, "GET", "/readyz", &[], bytes::Bytes::new()).await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = daemon.post(&event(2)).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not recover: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(daemon.post(&event(3)).await.0, StatusCode::OK);
    let (ready, _) =
        crate::harness::request(daemon.addr, "GET", "/readyz", &[], bytes::Bytes::new()).await;
    assert_eq!(ready, StatusCode::OK);
    let client = db.client().await;
    settle(&client).await;
    let actions = action_counts(&client).await;
    for i in 1..=3 {
        assert_eq!(actions.get(&format!("fulfil:order:{i}")), Some(&1), "{actions:?}");
    }
    daemon.stop().await;
    drop(db);
}

/// `store copy` moves a SQLite store into PostgreSQL with everything in it: the copied
/// notifications stay deduplicated (a repeat is a duplicate, its count carried on), their
/// decisions and actions are there, new rows continue after the old ids; a second copy into
/// the now non-empty store is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sqlite_store_copied_to_postgres_keeps_its_rows_and_its_dedup() {
    let Some(db) = PgDb::create("copy").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for i in 1..=4 {
        shop.add(i, "pending", "10.00", "USD");
    }
    let event = |i: i64| {
        pi_event(&format!("evt_{i}"), "succeeded", &format!("pi_{i}"), &i.to_string(), 1000, "usd")
    };
    let old = crate::harness::Daemon::start_with(dir.path(), "", "", &shop_config(&shop, "")).await;
    for i in 1..=3 {
        assert_eq!(old.post_stripe(SECRET, &event(i)).await.0, StatusCode::OK);
    }
    assert_eq!(old.post_stripe(SECRET, &event(1)).await.0, StatusCode::OK);
    old.settle().await;
    let sqlite = old.db.clone();
    old.stop().await;

    let copy = |to: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_reconciled"))
            .args(["store", "copy", "--from"])
            .arg(&sqlite)
            .args(["--to", to])
            .output()
            .unwrap()
    };
    let out = copy(&db.url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("inbox 3") && said.contains("outbox 6"), "{said}");

    let client = db.client().await;
    let counts: i64 = client
        .query_one("SELECT delivery_count + coalesce((SELECT count FROM inbox_redeliveries WHERE inbox_id = inbox.id), 0)::bigint FROM inbox WHERE dedup_key = 'evt_1'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(counts, 2, "the repeat delivery is carried over");
    let daemon = Daemon::start(dir.path(), &config_text(&db.url, &shop, "")).await;
    let (status, body) = daemon.post(&event(2)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "duplicate\n", "a copied notification is still known");
    assert_eq!(daemon.post(&event(4)).await, (StatusCode::OK, "stored\n".to_owned()));
    settle(&client).await;
    let rows: Vec<(i64, String, i64)> = client
        .query(
            "SELECT i.id, i.dedup_key, (i.delivery_count + coalesce(r.count, 0))::bigint FROM inbox i \
             LEFT JOIN inbox_redeliveries r ON r.inbox_id = i.id ORDER BY i.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let keys: Vec<(&str, i64)> = rows.iter().map(|(_, k, n)| (k.as_str(), *n)).collect();
    assert_eq!(keys, [("evt_1", 2), ("evt_2", 2), ("evt_3", 1), ("evt_4", 1)]);
    assert!(rows[3].0 > rows[2].0, "new ids continue after the copied ones: {rows:?}");
    let actions = action_counts(&client).await;
    assert_eq!(actions.len(), 8, "three copied orders and the new one, two actions each");
    assert!(actions.values().all(|n| *n == 1), "{actions:?}");
    daemon.stop().await;

    let again = copy(&db.url);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("is not empty"), "{err}");
    drop(db);
}

/// Pruning on the shared store: finished rows past retention go with their actions, a pruned
/// refund's key is kept as spent, and a row still owed a delivery, a dead row and a recent
/// row stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_the_shared_store_keeps_what_is_still_needed() {
    let Some(db) = PgDb::create("prune").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let text = config_text(&db.url, &shop, "");
    let path = dir.path().join("reconciled.toml");
    std::fs::write(&path, &text).unwrap();
    // The schema, as a daemon makes it.
    let config = Config::from_toml(&text, &path).unwrap();
    reconciled::store::Store::open_tool(&config.store).await.unwrap().close().await;
    let client = db.client().await;
    let day = 86_400_000i64;
    let now = reconciled::time::now_ms();
    for (id, status, age_days) in [
        (1i64, "done", 100i64),
        (2, "done", 100),
        (3, "dead", 100),
        (4, "done", 100),
        (5, "done", 1),
    ] {
        let at = now - age_days * day;
        client
            .execute(
                "INSERT INTO inbox (id, endpoint, provider, dedup_key, received_at, last_received_at, \
                 remote_addr, headers, body, status, processed_at) \
                 VALUES ($1, 'stripe', 'stripe', $2, $3, $3, '-', '{}', '\\x00', $4, $3)",
                &[&id, &format!("evt_{id}"), &at, &status],
            )
            .await
            .unwrap();
    }
    let old = now - 100 * day;
    for (id, inbox, kind, key) in [
        (1i64, 1i64, "refund", "refund:stripe:pi_1"),
        (2, 2, "fulfil", "fulfil:order:2"),
        (3, 4, "fulfil", "fulfil:order:4"),
    ] {
        client
            .execute(
                "INSERT INTO outbox (id, kind, provider, reason, idempotency_key, inbox_id, event_id, \
                 created_at) VALUES ($1, $2, 'stripe', '-', $3, $4, 'evt', $5)",
                &[&id, &kind, &key, &inbox, &old],
            )
            .await
            .unwrap();
    }
    // Row 4's action is still owed to a sink.
    client
        .execute(
            "INSERT INTO deliveries (action_id, sink, state, next_at, created_at) \
             VALUES (3, 'shop', 'retrying', 0, $1)",
            &[&old],
        )
        .await
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reconciled"))
        .args(["inbox", "prune", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.starts_with("pruned 2 finished notifications"), "{said}");
    let left: Vec<i64> = client
        .query("SELECT id FROM inbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [3, 4, 5], "dead, owed and recent rows stay");
    let spent: Vec<String> = client
        .query("SELECT idempotency_key FROM outbox_spent_keys", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(spent, ["refund:stripe:pi_1"], "a pruned refund's key stays spent");
    let actions: i64 = client.query_one("SELECT count(*) FROM outbox", &[]).await.unwrap().get(0);
    assert_eq!(actions, 1, "the pruned rows' actions went with them");
    drop(db);
}

/// A password in the store's URL never reaches a log line, even at `trace`, through traffic,
/// the worker and a stop, nor the output of `check-config` or the read commands. (The test
/// server trusts loopback, so the password is sent but not needed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_password_never_reaches_a_log_line() {
    const PASSWORD: &str = "SEKRIT4store0007";
    let Some(db) = PgDb::create("secret").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1, "pending", "10.00", "USD");
    let scheme_end = db.url.find("://").unwrap() + 3;
    let rest = &db.url[scheme_end..];
    let (user, host) = match rest.split_once('@') {
        Some((user, host)) => (user.split(':').next().unwrap(), host),
        None => ("postgres", rest),
    };
    let url = format!("{}{user}:{PASSWORD}@{host}", &db.url[..scheme_end]);
    let path = dir.path().join("reconciled.toml");
    let addr = crate::harness::free_addr();
    let text = config_text(&url, &shop, "").replace("127.0.0.1:0", &addr.to_string());
    std::fs::write(&path, text).unwrap();
    let bin = env!("CARGO_BIN_EXE_reconciled");
    // Into a file: a trace fills a pipe nobody reads until the end.
    let log = dir.path().join("daemon.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = crate::process::ChildGuard::spawn(
        std::process::Command::new(bin)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RECONCILED_LOG", "trace")
            .stdout(file.try_clone().unwrap())
            .stderr(file),
    )
    .unwrap();
    crate::harness::accepting(addr).await;
    let body = pi_event("evt_s", "succeeded", "pi_s", "1", 1000, "usd");
    assert_eq!(crate::harness::post_signed(addr, body.clone()).await.0, StatusCode::OK);
    assert_eq!(crate::harness::post_signed(addr, body).await.0, StatusCode::OK);
    settle(&db.client().await).await;
    let (_, _) = crate::harness::request(addr, "GET", "/readyz", &[], bytes::Bytes::new()).await;
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "the daemon stopped cleanly: {status}");
    let mut shown = std::fs::read_to_string(&log).unwrap();
    assert!(shown.contains("stored"), "the trace holds the traffic: {shown:.2000}");
    for args in [&["check-config"][..], &["inbox", "list"], &["outbox", "list"], &["check"]] {
        let out =
            std::process::Command::new(bin).args(args).arg("--config").arg(&path).output().unwrap();
        shown += &String::from_utf8_lossy(&out.stdout);
        shown += &String::from_utf8_lossy(&out.stderr);
    }
    assert!(shown.contains("<redacted>"), "check-config shows the URL redacted");
    assert!(!shown.contains(PASSWORD), "the password was shown:\n{shown}");
    drop(db);
}
