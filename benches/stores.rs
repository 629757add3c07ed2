//! The two stores side by side: prints figures, asserts nothing about speed.
//!
//! `source scripts/dbs.sh && cargo bench --bench stores` (PostgreSQL from
//! `RECONCILED_TEST_POSTGRES_URL`; each run gets a database of its own). In one invocation,
//! alternated round by round:
//!
//! - **Ingest**: the daemon binary, over loopback, `CONNS` connections (default 32) posting
//!   signed Stripe events (a new id each), closed loop for `SECS` seconds (default 10), to one
//!   daemon on SQLite, one daemon on PostgreSQL, and two daemons sharing one PostgreSQL
//!   database (half the connections each). Requests per second, p99, and a check that the
//!   store holds exactly the acknowledged rows.
//! - **Worker**: `N` stored notifications (default 20,000), each its own order in a SQLite
//!   shop, decided by one worker on SQLite, one on PostgreSQL, and two workers (two stores'
//!   handles, as two daemons) sharing the PostgreSQL database.
//!
//! `ROUNDS` (default 2) sets how many alternated rounds. Under `cargo test` it is a smoke run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use reconciled::config::Config;
use reconciled::store::Store;

const SECRET: &str = "whsec_bench_stores";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn event(id: &str, order: u64) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","api_version":"2024-06-20","created":1795000000,"livemode":false,"type":"payment_intent.succeeded","data":{{"object":{{"id":"pi_{id}","object":"payment_intent","amount":1999,"amount_received":1999,"currency":"usd","metadata":{{"order_id":"{order}"}},"receipt_email":"buyer{order}@example.com","status":"succeeded"}}}}}}"#
    )
}

/// Where a run keeps its store.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sqlite,
    Postgres,
    PostgresTwo,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Sqlite => "SQLite, one daemon",
            Kind::Postgres => "PostgreSQL, one daemon",
            Kind::PostgresTwo => "PostgreSQL, two daemons",
        }
    }
}

/// Drops a run's database.
async fn drop_database(admin: &str, name: &str) {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
}

/// A fresh database on the server, for one run.
async fn database(admin: &str, name: &str) -> String {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    format!("{base}/{name}")
}

fn shop(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("shop.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, total TEXT, currency TEXT); BEGIN",
    )
    .unwrap();
    for i in 1..=n {
        conn.execute("INSERT INTO orders VALUES (?1, 'pending', '19.99', 'USD')", [i]).unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    path
}

fn config_text(store: &str, listen: &str, shop: &Path) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\n[store]\n{store}\n\
         [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
         [shop]\ndriver = \"sqlite\"\nurl = \"{}\"\n\
         query = \"SELECT id AS order_id, status, total AS amount, currency FROM orders WHERE id = :reference\"\n\
         [shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"paid\"]\ncancelled = [\"cancelled\"]\n",
        shop.display()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "daemon at {addr} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One closed-loop client connection until `until`; latencies in microseconds.
async fn client(
    addr: String,
    prefix: String,
    until: Instant,
    acks: Arc<AtomicU64>,
    lat: Arc<Mutex<Vec<u64>>>,
) {
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut mine = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let body = event(&format!("evt_{prefix}_{n}"), 1);
        let sig = reconciled::provider::stripe::sign(
            SECRET.as_bytes(),
            reconciled::time::now_ms() / 1000,
            body.as_bytes(),
        );
        let req = hyper::Request::post("/webhooks/stripe")
            .header("host", "bench")
            .header("stripe-signature", sig)
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let t = Instant::now();
        // The connection takes the next request only once it has finished the last one.
        sender.ready().await.expect("the connection is open");
        let resp = sender.send_request(req).await.expect("request sent");
        let ok = resp.status() == 200;
        resp.into_body().collect().await.unwrap();
        assert!(ok, "a request was not acknowledged");
        mine.push(t.elapsed().as_micros() as u64);
        acks.fetch_add(1, Ordering::Relaxed);
    }
    lat.lock().unwrap().extend(mine);
}

async fn stored_rows(store: &str) -> u64 {
    let text = format!("[store]\n{store}\n[[endpoint]]\nname = \"s\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n");
    let config = Config::from_toml(&text, Path::new("/nonexistent/bench.toml")).unwrap();
    let s = Store::open_configured_reader(&config.store).await.unwrap();
    s.count().await.unwrap() as u64
}

/// One ingest run: requests/s and p99 ms.
async fn ingest(kind: Kind, admin: Option<&str>, round: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), 1);
    let name = format!("bench_ingest_{}_{round}", std::process::id());
    let store = match kind {
        Kind::Sqlite => format!("path = \"{}\"", dir.path().join("inbox.db").display()),
        _ => format!("url = \"{}\"", database(admin.unwrap(), &name).await),
    };
    let daemons = if kind == Kind::PostgresTwo { 2 } else { 1 };
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for n in 0..daemons {
        let addr = format!("127.0.0.1:{}", free_port());
        let path = dir.path().join(format!("d{n}.toml"));
        // No worker: this measures taking notifications.
        let text = config_text(&store, &addr, &shop);
        let text = text.split("[shop]").next().unwrap().to_owned();
        std::fs::write(&path, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_reconciled"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RECONCILED_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        children.push(Killed(child));
        ready(&addr).await;
        addrs.push(addr);
    }
    let conns = env_or("CONNS", 32);
    let secs = env_or("SECS", 10);
    let until = Instant::now() + Duration::from_secs(secs);
    let acks = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let addr = addrs[c as usize % addrs.len()].clone();
            tokio::spawn(client(addr, format!("{round}_{c}"), until, acks.clone(), lat.clone()))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(children);
    let acks = acks.load(Ordering::Relaxed);
    let rows = stored_rows(&store).await;
    assert_eq!(rows, acks, "{}: the store holds exactly the acknowledged rows", kind.label());
    if kind != Kind::Sqlite {
        drop_database(admin.unwrap(), &name).await;
    }
    let mut lat = std::mem::take(&mut *lat.lock().unwrap());
    lat.sort_unstable();
    let p99 = lat[((lat.len() as f64 * 0.99) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    (acks as f64 / elapsed, p99)
}

/// One worker run: notifications decided per second.
async fn worker(kind: Kind, admin: Option<&str>, n: u64, round: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let shop = shop(dir.path(), n);
    let name = format!("bench_worker_{}_{round}", std::process::id());
    let store = match kind {
        Kind::Sqlite => format!("path = \"{}\"", dir.path().join("inbox.db").display()),
        _ => format!("url = \"{}\"", database(admin.unwrap(), &name).await),
    };
    let config =
        Config::from_toml(&config_text(&store, "127.0.0.1:0", &shop), &dir.path().join("b.toml"))
            .unwrap();
    // Stored through the store's own ingest path, as the daemon stores them.
    {
        let s = Store::open(&config.store).await.unwrap();
        let mut pending = Vec::new();
        for i in 1..=n {
            let raw = bytes::Bytes::from(event(&format!("evt_{i}"), i));
            let row = reconciled::store::NewRow {
                endpoint: Arc::from("stripe"),
                provider: reconciled::provider::ProviderKind::Stripe,
                dedup_key: format!("evt_{i}"),
                event_type: Some("payment_intent.succeeded".into()),
                received_at_ms: reconciled::time::now_ms(),
                remote_addr: "127.0.0.1:1".into(),
                headers_json: "{}".into(),
                body_len: raw.len(),
                body: reconciled::store::body::pack(&raw),
                payment_key: s.is_shared().then(|| format!("pi_evt_{i}")),
                source: reconciled::domain::Source::Webhook,
            };
            let s = s.clone();
            pending.push(tokio::spawn(async move { s.insert(row).await.unwrap() }));
            if pending.len() >= 512 {
                for p in pending.drain(..) {
                    p.await.unwrap();
                }
            }
        }
        for p in pending {
            p.await.unwrap();
        }
        s.close().await;
    }
    let workers = if kind == Kind::PostgresTwo { 2 } else { 1 };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let shop = config.shop.clone().unwrap();
            let source = reconciled::shop::OrderSource::connect(&shop).await.unwrap();
            let store = Store::open_tool(&config.store).await.unwrap();
            let endpoints =
                Arc::new(reconciled::endpoint::Endpoints::new(&config.endpoints).unwrap());
            let w = reconciled::reconcile::worker::Worker::new(
                store.clone(),
                endpoints,
                shop,
                config.policy,
                config.worker,
            );
            let never = tokio_util::sync::CancellationToken::new();
            let done = w.work_through(&source, &never).await.unwrap().claimed;
            store.close().await;
            done
        }));
    }
    let mut decided = 0;
    for t in tasks {
        decided += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let s = Store::open_configured_reader(&config.store).await.unwrap();
    let actions = s
        .outbox(reconciled::store::OutboxFilter { limit: None, ..Default::default() })
        .await
        .unwrap()
        .len() as u64;
    assert_eq!(
        actions,
        2 * n,
        "{}: every notification decided once, two actions each",
        kind.label()
    );
    assert!(decided >= n as usize);
    s.close().await;
    if kind != Kind::Sqlite {
        drop_database(admin.unwrap(), &name).await;
    }
    n as f64 / secs
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let admin = std::env::var("RECONCILED_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty());
    let rounds = env_or("ROUNDS", if benching { 2 } else { 1 });
    let n = env_or("N", if benching { 20_000 } else { 200 });
    if !benching {
        std::env::set_var("SECS", std::env::var("SECS").unwrap_or_else(|_| "1".into()));
        println!("smoke run; for figures: cargo bench --bench stores");
    }
    let mut kinds = vec![Kind::Sqlite];
    match &admin {
        Some(_) => kinds.extend([Kind::Postgres, Kind::PostgresTwo]),
        None => {
            println!("RECONCILED_TEST_POSTGRES_URL is not set: SQLite only (source scripts/dbs.sh)")
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut ingest_runs: HashMap<&str, Vec<(f64, f64)>> = HashMap::new();
        let mut worker_runs: HashMap<&str, Vec<f64>> = HashMap::new();
        for round in 0..rounds {
            // The order flips every round, so a drift of the machine falls on every store.
            let order: Vec<Kind> = if round % 2 == 0 {
                kinds.clone()
            } else {
                kinds.iter().rev().copied().collect()
            };
            for kind in &order {
                let r = ingest(*kind, admin.as_deref(), round).await;
                println!("round {round} ingest, {}: {:.0} req/s, p99 {:.1} ms", kind.label(), r.0, r.1);
                ingest_runs.entry(kind.label()).or_default().push(r);
            }
            for kind in &order {
                let r = worker(*kind, admin.as_deref(), n, round).await;
                println!("round {round} worker, {}: {:.0} notifications/s", kind.label(), r);
                worker_runs.entry(kind.label()).or_default().push(r);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let base_ingest = mean(&ingest_runs[Kind::Sqlite.label()].iter().map(|r| r.0).collect::<Vec<_>>());
        let base_worker = mean(&worker_runs[Kind::Sqlite.label()]);
        println!("\n| store | ingest req/s | × SQLite | p99 ms | worker notifications/s | × SQLite |");
        println!("|---|---|---|---|---|---|");
        for kind in &kinds {
            let runs = &ingest_runs[kind.label()];
            let rps = mean(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
            let p99 = mean(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
            let w = mean(&worker_runs[kind.label()]);
            println!(
                "| {} | {rps:.0} | {:.2} | {p99:.1} | {w:.0} | {:.2} |",
                kind.label(),
                rps / base_ingest,
                w / base_worker
            );
        }
        println!("(mean of {rounds} alternated rounds; ingest {} connections, {} s per run; worker N = {n})", env_or("CONNS", 32), env_or("SECS", 10));
    });
}
