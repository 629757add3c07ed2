//! Worker benchmark: prints figures, asserts nothing about speed.
//!
//! Run it with `cargo bench --bench worker`, or `RECONCILED_BENCH_N=20000 cargo bench --bench
//! worker` for a shorter run. It measures two things.
//!
//! Throughput: N stored `payment_intent.succeeded` notifications (default 100,000), each for
//! its own order, decided against a SQLite shop with an indexed order table, and, when
//! `RECONCILED_TEST_MYSQL_URL` is set (`source scripts/dbs.sh`), against MariaDB.
//!
//! Latency at light load: the whole daemon on loopback, 50 notifications/s over HTTP, time
//! from the inbox row's arrival to the `fulfil` row in the outbox.
//!
//! With one HTTP sink: the SQLite runs alternate with runs that have a `[[sink]]` configured,
//! so that every action also gets its delivery row in the decision's transaction (the
//! dispatcher, which sends them, is not running: this measures the worker), and the ratio.
//!
//! Every run checks afterwards that each notification produced exactly its two actions.

use std::path::Path;
use std::time::{Duration, Instant};

use reconciled::config::Config;
use reconciled::reconcile::worker::Worker;
use reconciled::shop::OrderSource;
use reconciled::store::Store;
use rusqlite::{params, Connection};

const SECRET: &str = "whsec_bench_worker";

fn event(i: u64) -> String {
    format!(
        r#"{{"id":"evt_bench_{i}","object":"event","api_version":"2024-06-20","created":1795000000,"livemode":false,"type":"payment_intent.succeeded","data":{{"object":{{"id":"pi_bench_{i}","object":"payment_intent","amount":1999,"amount_received":1999,"currency":"usd","metadata":{{"order_id":"{i}"}},"receipt_email":"buyer{i}@example.com","status":"succeeded"}}}}}}"#
    )
}

fn config(dir: &Path, shop: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n\
         [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n{shop}\n\
         [shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"processing\"]\ncancelled = [\"cancelled\"]\n",
        dir.join("inbox.db").display()
    );
    Config::from_toml(&text, &dir.join("bench.toml")).expect("bench config")
}

/// Fills the inbox directly (the benchmark measures the worker, not ingestion).
async fn fill_inbox(config: &Config, n: u64) {
    // Created and migrated as the daemon does, then filled with plain SQL.
    drop(Store::open_tool(&config.store).await.unwrap());
    let mut conn = Connection::open(&config.store.path).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO inbox (endpoint, provider, dedup_key, event_type, received_at, last_received_at, \
                 remote_addr, headers, body, body_encoding, body_len) VALUES ('stripe', 'stripe', ?1, \
                 'payment_intent.succeeded', ?2, ?2, '127.0.0.1:1', '{}', ?3, ?4, ?5)",
            )
            .unwrap();
        let now = reconciled::time::now_ms();
        for i in 1..=n {
            // Stored as the daemon stores it.
            let body = bytes::Bytes::from(event(i));
            let packed = reconciled::store::body::pack(&body);
            stmt.execute(params![
                format!("evt_bench_{i}"),
                now,
                &packed.bytes[..],
                packed.encoding,
                body.len() as i64
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

async fn drain(config: &Config, n: u64, label: &str) -> f64 {
    let shop = config.shop.clone().unwrap();
    let source = OrderSource::connect(&shop).await.expect("shop reachable");
    let store = Store::open_tool(&config.store).await.unwrap();
    let endpoints =
        std::sync::Arc::new(reconciled::endpoint::Endpoints::new(&config.endpoints).unwrap());
    let worker = Worker::new(store, endpoints, shop, config.policy, config.worker).delivering_to(
        reconciled::deliver::Routes::new(&config.sinks),
        tokio::sync::watch::channel(0).0,
    );
    let started = Instant::now();
    let never = tokio_util::sync::CancellationToken::new();
    let done = worker.work_through(&source, &never).await.expect("worker").claimed;
    let secs = started.elapsed().as_secs_f64();
    let check = Connection::open(&config.store.path).unwrap();
    let actions: i64 = check.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).unwrap();
    let finished: i64 = check
        .query_row("SELECT count(*) FROM inbox WHERE status = 'done'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (finished, actions),
        (n as i64, 2 * n as i64),
        "every notification decided, each with 2 actions"
    );
    let deliveries: i64 =
        check.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0)).unwrap();
    assert_eq!(deliveries, actions * config.sinks.len() as i64, "a delivery per action and sink");
    let rate = done as f64 / secs;
    println!(
        "worker, {label}: {done} notifications in {secs:.2} s = {rate:.0} notifications/s ({} actions)",
        actions
    );
    source.close().await;
    rate
}

async fn sqlite_throughput(n: u64, sink: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let shop_path = dir.path().join("shop.db");
    let shop = Connection::open(&shop_path).unwrap();
    shop.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, total DECIMAL(10,2), currency TEXT, email TEXT, transaction_id TEXT); CREATE INDEX orders_tx ON orders (transaction_id);").unwrap();
    shop.execute_batch("BEGIN").unwrap();
    for i in 1..=n {
        shop.execute("INSERT INTO orders VALUES (?1, 'pending', '19.99', 'USD', NULL, NULL)", [i])
            .unwrap();
    }
    shop.execute_batch("COMMIT").unwrap();
    let sink = if sink {
        "[[sink]]\nname = \"shop\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/hook\"\n\
         secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n"
    } else {
        ""
    };
    let config = config(
        dir.path(),
        &format!(
            "{sink}[shop]\ndriver = \"sqlite\"\nurl = \"{}\"\nquery = \"SELECT id AS order_id, status, total AS amount, currency, email AS customer_email, transaction_id AS psp_reference FROM orders WHERE id = :reference OR transaction_id = :psp_reference\"",
            shop_path.display()
        ),
    );
    fill_inbox(&config, n).await;
    let label = if config.sinks.is_empty() { "SQLite shop" } else { "SQLite shop, one HTTP sink" };
    drain(&config, n, label).await
}

async fn mariadb_throughput(n: u64) {
    let Ok(url) = std::env::var("RECONCILED_TEST_MYSQL_URL") else {
        println!("worker, MariaDB shop: skipped (RECONCILED_TEST_MYSQL_URL is not set; `source scripts/dbs.sh`)");
        return;
    };
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b).to_owned();
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await.expect("MariaDB reachable");
    use mysql_async::prelude::Queryable;
    conn.query_drop("DROP DATABASE IF EXISTS reconciled_bench").await.unwrap();
    conn.query_drop("CREATE DATABASE reconciled_bench").await.unwrap();
    conn.query_drop("CREATE TABLE reconciled_bench.orders (id BIGINT PRIMARY KEY, status VARCHAR(20), total DECIMAL(10,2), currency CHAR(3), email VARCHAR(100), transaction_id VARCHAR(64), KEY (transaction_id))").await.unwrap();
    for chunk in (1..=n).collect::<Vec<_>>().chunks(5000) {
        let values: Vec<String> =
            chunk.iter().map(|i| format!("({i}, 'pending', 19.99, 'USD', NULL, NULL)")).collect();
        conn.query_drop(format!("INSERT INTO reconciled_bench.orders VALUES {}", values.join(",")))
            .await
            .unwrap();
    }
    drop(conn);
    pool.disconnect().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            "[shop]\ndriver = \"mysql\"\nurl = \"{base}/reconciled_bench\"\nquery = \"SELECT id AS order_id, status, total AS amount, currency, email AS customer_email, transaction_id AS psp_reference FROM orders WHERE id = :reference OR transaction_id = :psp_reference\""
        ),
    );
    fill_inbox(&config, n).await;
    drain(&config, n, "MariaDB shop").await;
}

async fn latency(count: u64) {
    use http_body_util::{BodyExt, Full};
    let dir = tempfile::tempdir().unwrap();
    let shop_path = dir.path().join("shop.db");
    let shop = Connection::open(&shop_path).unwrap();
    shop.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, total DECIMAL(10,2), currency TEXT, email TEXT, transaction_id TEXT)").unwrap();
    for i in 1..=count {
        shop.execute("INSERT INTO orders VALUES (?1, 'pending', '19.99', 'USD', NULL, NULL)", [i])
            .unwrap();
    }
    let config = config(
        dir.path(),
        &format!(
            "[shop]\ndriver = \"sqlite\"\nurl = \"{}\"\nquery = \"SELECT id AS order_id, status, total AS amount, currency FROM orders WHERE id = :reference\"",
            shop_path.display()
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(async move {
            reconciled::daemon::run(
                &config,
                listener,
                shutdown,
                tokio::sync::mpsc::channel(1).1,
                |_| {},
            )
            .await
        })
    };
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 1..=count {
        tick.tick().await;
        let body = event(i);
        let t = reconciled::time::now_ms() / 1000;
        let sig = reconciled::provider::stripe::sign(SECRET.as_bytes(), t, body.as_bytes());
        let req = hyper::Request::post("/webhooks/stripe")
            .header("host", "bench")
            .header("stripe-signature", sig)
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        // The connection takes the next request only once it has finished the last one.
        sender.ready().await.expect("the connection to the daemon is open");
        let resp = sender.send_request(req).await.expect("notification sent to the daemon");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("the daemon's answer read");
    }
    let check = Connection::open(&config.store.path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while check
        .query_row("SELECT count(*) FROM outbox WHERE kind = 'fulfil'", [], |r| r.get::<_, i64>(0))
        .unwrap()
        < count as i64
    {
        assert!(Instant::now() < deadline, "actions did not all appear");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    server.await.expect("daemon task").expect("daemon stopped cleanly");
    let mut stmt = check
        .prepare("SELECT o.created_at - i.received_at FROM outbox o JOIN inbox i ON i.id = o.inbox_id WHERE o.kind = 'fulfil' ORDER BY 1")
        .unwrap();
    let lat: Vec<i64> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).saturating_sub(1).min(lat.len() - 1)];
    println!(
        "stored-to-action latency at 50 notifications/s over HTTP ({} notifications, SQLite shop): p50 {} ms, p99 {} ms, max {} ms",
        lat.len(),
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1]
    );
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this is a smoke run with the same checks.
    let benching = std::env::args().any(|a| a == "--bench");
    let default_n = if benching { 100_000 } else { 300 };
    let n: u64 =
        std::env::var("RECONCILED_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(default_n);
    if !benching {
        println!("smoke run (N = {n}); for figures: cargo bench --bench worker");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Alternated, so that a drift over the runs (the page cache, the machine) falls on
        // both: none, sink, none, sink.
        let mut none = 0.0;
        let mut sink = 0.0;
        for _ in 0..2 {
            none += sqlite_throughput(n, false).await;
            sink += sqlite_throughput(n, true).await;
        }
        println!("one HTTP sink against none (2 alternated pairs): {:.2}", sink / none);
        mariadb_throughput(n).await;
        latency(if benching { 200 } else { 20 }).await;
    });
}
