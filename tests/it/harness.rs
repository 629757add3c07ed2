//! A small harness: start the daemon in-process on `127.0.0.1:0` with a temporary store,
//! talk to it over real sockets, stop it and wait for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use reconciled::config::Config;
use reconciled::provider::stripe;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::ChildGuard;

pub const SECRET: &str = "whsec_test_primary_0123456789";
pub const ROLLED: &str = "whsec_test_rolled_9876543210";
/// The id of `fixtures/stripe/payment_intent.succeeded.json`.
pub const FIXTURE_EVENT: &str = "evt_3PqR1001TestAbCdEf1tQz";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/stripe").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fixture of another provider: `fixtures/{dir}/{name}`.
pub fn fixture_in(dir: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(dir).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The succeeded-PaymentIntent fixture with its event id replaced.
pub fn event(id: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture("payment_intent.succeeded.json")).unwrap();
    assert!(text.contains(FIXTURE_EVENT));
    text.replace(FIXTURE_EVENT, id).into_bytes()
}

pub fn now() -> i64 {
    reconciled::time::now_ms() / 1000
}

pub fn signed(secret: &str, body: &[u8]) -> String {
    stripe::sign(secret.as_bytes(), now(), body)
}

/// Configuration text for a test daemon; `server` and `store` are extra keys for those tables.
pub fn config_text(db: &Path, server: &str, store: &str) -> String {
    config_text_with(db, server, store, "")
}

/// As [`config_text`], with more tables appended (`[shop]`, `[policy]`, `[worker]`).
pub fn config_text_with(db: &Path, server: &str, store: &str, extra: &str) -> String {
    config_text_on(&Backend::Sqlite, db, server, store, extra)
}

/// As [`config_text_with`], with the store on `backend` (a SQLite store is the file `db`).
pub fn config_text_on(
    backend: &Backend,
    db: &Path,
    server: &str,
    store: &str,
    extra: &str,
) -> String {
    let location = match backend {
        Backend::Sqlite => format!("path = \"{}\"", db.display()),
        Backend::Postgres(url) => format!("url = \"{url}\""),
    };
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n{server}\n\
         [store]\n{location}\n{store}\n\
         [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\", \"{ROLLED}\"]\ntolerance_secs = 300\n"
    );
    format!("{base}\n{extra}")
}

/// Where a test daemon keeps its store.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A PostgreSQL database of the test's own (see [`PgDb`]).
    Postgres(String),
}

const POSTGRES_VAR: &str = "RECONCILED_TEST_POSTGRES_URL";

/// A database of its own on the PostgreSQL test server, dropped when this is dropped.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

impl PgDb {
    /// A new database for the test `test`; `None` (skip) without a server, except under CI.
    pub async fn create(test: &str) -> Option<PgDb> {
        let admin = match std::env::var(POSTGRES_VAR) {
            Ok(url) if !url.trim().is_empty() => url,
            _ if std::env::var_os("CI").is_some() => {
                panic!("{POSTGRES_VAR} is not set, and CI must run the PostgreSQL store tests")
            }
            _ => {
                eprintln!("skipped: {POSTGRES_VAR} is not set (source scripts/dbs.sh)");
                return None;
            }
        };
        let short: String = test.chars().take(40).collect();
        let name = format!("rt_{short}_{}", std::process::id());
        let client = pg_connect(&admin).await;
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
        Some(PgDb { url: format!("{base}/{name}"), admin, name })
    }

    /// A connection to the test's database, for assertions in SQL.
    pub async fn client(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        on_own_runtime(move || async move {
            let client = pg_connect(&admin).await;
            let _ =
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        });
    }
}

pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL reachable");
    tokio::spawn(connection);
    client
}

/// Generates each test twice, in a module `sqlite` and a module `postgres`: the same scenario
/// against each store, the body given `$store: Backend` (the PostgreSQL one skipped without a
/// server, except under CI).
macro_rules! on_both_stores {
    ($( $(#[$meta:meta])* async fn $name:ident($store:ident) $body:block )*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $store = $crate::harness::Backend::Sqlite;
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::harness::PgDb::create(stringify!($name)).await else {
                        return;
                    };
                    let $store = $crate::harness::Backend::Postgres(db.url.clone());
                    $body
                    drop(db);
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;

/// A running daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    /// The SQLite store's file (unused on PostgreSQL).
    pub db: PathBuf,
    /// Its store, for reads through the store's API whatever the backend.
    pub store: reconciled::store::StoreConfig,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Daemon {
    /// Starts a daemon with a store in `dir`.
    pub async fn start_in(dir: &Path, server: &str, store: &str) -> Daemon {
        Daemon::start_with(dir, server, store, "").await
    }

    /// Starts a daemon with extra configuration tables (a shop, a policy).
    pub async fn start_with(dir: &Path, server: &str, store: &str, extra: &str) -> Daemon {
        Daemon::start_on(&Backend::Sqlite, dir, server, store, extra).await
    }

    /// As [`Daemon::start_with`], with the store on `backend`.
    pub async fn start_on(
        backend: &Backend,
        dir: &Path,
        server: &str,
        store: &str,
        extra: &str,
    ) -> Daemon {
        let db = dir.join("inbox.db");
        let config = Config::from_toml(
            &config_text_on(backend, &db, server, store, extra),
            &dir.join("test.toml"),
        )
        .expect("test config is valid");
        let store = config.store.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        // No reloads in process: the channel's sender is dropped (tests/it/reload.rs sends
        // SIGHUP to a spawned daemon).
        let (_, reloads) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            reconciled::daemon::run(&config, listener, token, reloads, |_| {})
                .await
                .expect("server runs");
        });
        Daemon { addr, db, store, shutdown, task }
    }

    /// Stops the daemon and waits until its store is closed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("server task");
    }

    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, String) {
        request(self.addr, "POST", path, headers, body.into()).await
    }

    /// Posts `body` to the Stripe endpoint, signed with `secret`.
    pub async fn post_stripe(&self, secret: &str, body: &[u8]) -> (StatusCode, String) {
        let sig = signed(secret, body);
        self.post("/webhooks/stripe", &[("stripe-signature", &sig)], body.to_vec()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        request(self.addr, "GET", path, &[], Bytes::new()).await
    }

    /// A read-only connection to the store's file, for assertions in SQL.
    pub fn read(&self) -> rusqlite::Connection {
        sql(&self.db)
    }

    /// `(dedup_key, delivery_count)` of every inbox row.
    pub fn rows(&self) -> Vec<(String, i64)> {
        self.inbox().into_iter().map(|r| (r.dedup_key, r.delivery_count)).collect()
    }

    /// Every inbox row, in order, read through the store's API.
    pub fn inbox(&self) -> Vec<reconciled::store::InboxSummary> {
        reading_store(&self.store, |s| async move { s.list(Default::default()).await }).unwrap()
    }
}

/// Reads a spawned daemon's stderr (piped) until it says where it listens. Returns that
/// address, the lines read so far, and a thread that collects the rest of its output (so the
/// daemon never blocks on a full pipe) until it exits.
pub fn listening(
    child: &mut ChildGuard,
) -> (SocketAddr, Vec<String>, std::thread::JoinHandle<Vec<String>>) {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("daemon exited before listening").unwrap();
        let addr = line
            .split("listening on http://")
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap());
        seen.push(line);
        if let Some(addr) = addr {
            let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect());
            return (addr, seen, rest);
        }
    }
}

/// A free loopback address, for a listener the daemon binds itself (`[admin] listen`).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Waits (bounded) until something accepts on `addr`: a listener the daemon binds as it starts.
pub async fn accepting(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing came to listen on {addr}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// POSTs `body` to the Stripe endpoint of a daemon at `addr`, signed with [`SECRET`].
pub async fn post_signed(addr: SocketAddr, body: Vec<u8>) -> (StatusCode, String) {
    let sig = signed(SECRET, &body);
    request(addr, "POST", "/webhooks/stripe", &[("stripe-signature", &sig)], body.into()).await
}

/// A read-only connection to a store file, for assertions in SQL.
pub fn sql(db: &Path) -> rusqlite::Connection {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(db, flags).expect("store readable");
    conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    conn
}

/// Runs `f` with the store's own read API on a store file, on a thread and a runtime of its
/// own, so that synchronous and asynchronous tests alike can call it.
/// As [`reading`], for the store a configuration names (a file, or a PostgreSQL database).
pub fn reading_store<T, F, Fut>(store: &reconciled::store::StoreConfig, f: F) -> T
where
    F: FnOnce(reconciled::store::Store) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let store = store.clone();
    on_own_runtime(move || async move {
        let opened = reconciled::store::Store::open_configured_reader(&store).await;
        f(opened.expect("store readable")).await
    })
}

pub fn reading<T, F, Fut>(db: &Path, f: F) -> T
where
    F: FnOnce(reconciled::store::Store) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let db = db.to_owned();
    on_own_runtime(move || f(reconciled::store::Store::open_reader(&db).expect("store readable")))
}

/// Runs the future `f` makes on a thread and a runtime of its own, and waits for it.
fn on_own_runtime<T, F, Fut>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(f())
    })
    .join()
    .expect("the work ran")
}

/// `PRAGMA integrity_check` of the store at `db`: `"ok"` when it is intact.
/// The store at `db` opened as the command-line tools open it (deciding and pruning beside a
/// daemon), handed to `f` on a thread and a runtime of its own.
pub fn as_tool<T, F, Fut>(db: &Path, f: F) -> T
where
    F: FnOnce(reconciled::store::Store) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let config = reconciled::store::StoreConfig {
        path: db.to_owned(),
        url: None,
        tls_ca: None,
        busy_timeout: std::time::Duration::from_secs(5),
        max_batch: reconciled::config::DEFAULT_MAX_BATCH,
        failures_kept: reconciled::config::DEFAULT_FAILURES_KEPT,
        retention_days: reconciled::config::DEFAULT_RETENTION_DAYS,
        wal_max_mb: reconciled::config::DEFAULT_WAL_MAX_MB,
    };
    on_own_runtime(move || async move {
        f(reconciled::store::Store::open_tool(&config).await.expect("store opens")).await
    })
}

pub fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

/// As [`post_signed`], but a connection that fails or closes without an answer is an `Err`.
pub async fn try_post_signed(
    addr: SocketAddr,
    body: Vec<u8>,
) -> Result<(StatusCode, String), String> {
    let sig = signed(SECRET, &body);
    try_request(addr, "POST", "/webhooks/stripe", &[("stripe-signature", &sig)], body.into()).await
}

/// One request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, String) {
    try_request(addr, method, path, headers, body).await.unwrap()
}

/// As [`request`], but a connection that fails or closes without an answer is an `Err`, as a
/// provider sees it when the daemon dies mid-request.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(StatusCode, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .map_err(|e| format!("response: {e}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A SQLite shop database in a test's directory. Only the test writes to it.
pub struct Shop {
    pub path: PathBuf,
}

/// A `[policy]` that sends a failed payment's notice to the customer at once, for tests of
/// what each provider's events lead to (the notice is held back by default).
pub const NOTICE_AT_ONCE: &str = "[policy]\nfailure_notice_delay = \"0s\"\n";

/// The `[shop]` table for a [`Shop`], plus a fast `[worker]`; `more` is appended.
pub fn shop_config(shop: &Shop, more: &str) -> String {
    format!(
        "[shop]\ndriver = \"sqlite\"\nurl = \"{}\"\n\
         query = \"SELECT id AS order_id, status, total AS amount, currency, email AS customer_email, transaction_id AS psp_reference FROM orders WHERE id = :reference OR transaction_id = :psp_reference\"\n\
         reference_pattern = \"^(\\\\d+)\"\n\
         [shop.status]\nawaiting_payment = [\"pending\", \"on-hold\"]\npaid = [\"processing\", \"completed\"]\ncancelled = [\"cancelled\", \"failed\"]\n\
         [worker]\nretry_base = \"50ms\"\nretry_max = \"200ms\"\n{more}\n",
        shop.path.display()
    )
}

impl Shop {
    pub fn create(dir: &Path) -> Shop {
        let path = dir.join("shop.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, total DECIMAL(10,3) NOT NULL, \
             currency TEXT NOT NULL, email TEXT, transaction_id TEXT)",
        )
        .unwrap();
        Shop { path }
    }

    pub fn add(&self, id: i64, status: &str, total: &str, currency: &str) {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        conn.execute(
            "INSERT INTO orders (id, status, total, currency, email) VALUES (?1, ?2, ?3, ?4, 'buyer@example.com')",
            rusqlite::params![id, status, total, currency],
        )
        .unwrap();
    }

    pub fn set(&self, id: i64, status: &str, transaction_id: Option<&str>) {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        conn.execute(
            "UPDATE orders SET status = ?2, transaction_id = ?3 WHERE id = ?1",
            rusqlite::params![id, status, transaction_id],
        )
        .unwrap();
    }
}

/// A Stripe PaymentIntent event (`payment_intent.{action}`) for a shop order.
pub fn pi_event(
    event_id: &str,
    action: &str,
    pi: &str,
    order: &str,
    amount: i64,
    currency: &str,
) -> Vec<u8> {
    let (status, received) = match action {
        "succeeded" => ("succeeded", amount),
        "processing" => ("processing", 0),
        "payment_failed" => ("requires_payment_method", 0),
        "canceled" => ("canceled", 0),
        "amount_capturable_updated" => ("requires_capture", 0),
        _ => ("requires_action", 0),
    };
    serde_json::to_vec_pretty(&serde_json::json!({
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": now(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": format!("payment_intent.{action}"),
        "data": {"object": {
            "id": pi,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": if action == "amount_capturable_updated" { amount } else { 0 },
            "amount_received": received,
            "currency": currency,
            "metadata": {"order_id": order},
            "status": status,
            "livemode": false
        }}
    }))
    .unwrap()
}

impl Daemon {
    /// Waits (bounded) until `check` holds on the store.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&rusqlite::Connection) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if check(&self.read()) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits until no inbox row is pending or being processed.
    pub async fn settle(&self) {
        self.until("the worker to finish", || {
            self.inbox().iter().all(|r| !matches!(r.status.as_str(), "pending" | "processing"))
        })
        .await;
    }

    /// Waits (bounded) until `check` holds; for checks through the store's API, on any backend.
    pub async fn until(&self, what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if check() {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The status of the inbox row holding `dedup_key`.
    pub fn status_of(&self, dedup_key: &str) -> Option<String> {
        self.inbox().into_iter().find(|r| r.dedup_key == dedup_key).map(|r| r.status.to_string())
    }

    /// `(kind, order_id, amount, template)` of every outbox row, in order.
    pub fn actions(&self) -> Vec<(String, String, String, String)> {
        reading_store(&self.store, |s| async move { s.outbox(Default::default()).await })
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.kind.to_string(),
                    r.order_id.unwrap_or_default(),
                    format!("{} {}", r.amount.unwrap_or_default(), r.currency.unwrap_or_default()),
                    r.template.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Every live action, in order, read through the store's API.
    pub fn outbox(&self) -> Vec<reconciled::store::OutboxRow> {
        reading_store(&self.store, |s| async move { s.outbox(Default::default()).await }).unwrap()
    }

    /// The status of every inbox row, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.inbox().into_iter().map(|r| r.status.to_string()).collect()
    }
}
