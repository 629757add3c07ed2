//! The crash harness for a store shared by two daemons: "acknowledged means durable, nothing is
//! done twice, and each payment's notifications are decided in order", with two real daemon
//! processes on one PostgreSQL database of a server of the harness's own (initdb, pg_ctl), so
//! that it can stop the database itself.
//!
//! Eight senders post signed Stripe notifications to either daemon, as Stripe does: each until
//! it gets a 2xx, retrying on connection errors and 5xx, about 10% delivered again after their
//! 2xx to the *other* daemon; a tenth of the payments first get a `processing` event, and their
//! `succeeded` is sent (to either daemon) the moment the `processing` is acknowledged, so that
//! the two are stored a moment apart and the daemons race to decide them. Meanwhile either daemon is killed with SIGKILL at random
//! moments and restarted, and now and then PostgreSQL is stopped with `pg_ctl stop -m
//! immediate` (its processes killed, recovery from its WAL at the next start) and started
//! again. At the end the workers drain the inbox and the harness checks:
//! - every acknowledged notification is in the inbox exactly once (lost = 0, duplicates = 0);
//! - nothing that was not sent is there;
//! - every order has exactly one `fulfil` and one `order_confirmed` (missing = 0, twice = 0);
//! - no row was decided twice (the daemons log each decision after its commit);
//! - each payment's rows were decided in arrival order: every payment whose `processing` came
//!   first got its `payment_pending` notice (decided after the `succeeded`, it is stale and
//!   sends none), and no later row has an earlier decision time.
//!
//! Defaults: 2,000 payments, 12 kills, a PostgreSQL stop every 4th (what `.ci/run` runs). Longer:
//! `RECONCILED_CRASH_KILLS=200 RECONCILED_CRASH_PAYMENTS=20000 cargo test --release --test
//! crash_shared -- --nocapture`. `RECONCILED_CRASH_SEED` repeats a run. PostgreSQL's server
//! binaries are looked for in `RECONCILED_PG_BIN` or `/usr/lib/postgresql/*/bin`; without them
//! the test is skipped, except under CI.
//!
//! It proves it can fail: built with `--features test-claim-unordered` (claims ignore the
//! payment's earlier rows) it must find rows decided out of order, and with
//! `--features test-claim-unlocked` (claims lock nothing) rows decided twice; under those
//! features the test passes only if it does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use reconciled::provider::stripe;

#[allow(dead_code)]
#[path = "it/process.rs"]
mod process;

use process::ChildGuard;

#[path = "support/crash.rs"]
mod support;

use support::{env_or, event, Rng};

const SECRET: &str = "whsec_crash_shared_0123456789";
const SENDERS: usize = 8;

/// A PostgreSQL server of the harness's own, in a directory it owns.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// As root, the server runs as the `postgres` user (it refuses root).
    as_postgres: bool,
}

impl Postgres {
    fn bin_dir() -> Option<PathBuf> {
        if let Ok(dir) = std::env::var("RECONCILED_PG_BIN") {
            return Some(PathBuf::from(dir));
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").exists())
            .collect();
        found.sort();
        found.pop()
    }

    fn cmd(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn init(base: &Path) -> Option<Postgres> {
        let Some(bin) = Postgres::bin_dir() else {
            assert!(std::env::var_os("CI").is_none(), "CI must run the shared-store crash harness");
            eprintln!("skipped: no PostgreSQL server binaries (set RECONCILED_PG_BIN)");
            return None;
        };
        let uid = Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let data = base.join("pgdata");
        std::fs::create_dir_all(&data).unwrap();
        if as_postgres {
            let ok =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(base).status().unwrap();
            assert!(ok.success(), "chown of the server's directory");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Postgres { bin, data, port, as_postgres };
        let out = pg
            .cmd("initdb")
            .args(["-D", pg.data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.start();
        Some(pg)
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100",
            self.port,
            self.data.display()
        );
        let out = self
            .cmd("pg_ctl")
            .args(["-D", self.data.to_str().unwrap(), "-o", &options, "-w", "-t", "60", "-l"])
            .arg(self.data.join("server.log"))
            .arg("start")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, without a checkpoint.
    fn stop_immediate(&self) {
        let out = self
            .cmd("pg_ctl")
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL reachable");
    tokio::spawn(connection);
    client
}

/// One daemon process; killed if the harness panics.
struct Daemon {
    config: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<ChildGuard>,
}

impl Daemon {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = ChildGuard::spawn(
            Command::new(env!("CARGO_BIN_EXE_reconciled"))
                .args(["serve", "--config", self.config.to_str().unwrap()])
                // Each decision is logged after its commit: the harness counts them.
                .env("RECONCILED_LOG", "warn,reconciled::reconcile::worker=info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill_now();
        }
    }

    /// Inbox ids this daemon logged as decided, with how often.
    fn decided(&self, into: &mut HashMap<i64, u32>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(" INFO ") && l.contains(": decided ")) {
            let Some(at) = line.find("inbox_id=") else { continue };
            let digits: String = line[at + 9..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(id) = digits.parse() {
                *into.entry(id).or_default() += 1;
            }
        }
    }
}

#[derive(Clone)]
struct Delivery {
    id: String,
    body: Vec<u8>,
    again: bool,
    /// Sent the moment this one is acknowledged.
    then: Option<Box<Delivery>>,
}

#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    acknowledged: Mutex<HashSet<String>>,
}

async fn post(addr: SocketAddr, body: &[u8]) -> Option<u16> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let sig = stripe::sign(SECRET.as_bytes(), reconciled::time::now_ms() / 1000, body);
    let req = Request::builder()
        .method("POST")
        .uri("/webhooks/stripe")
        .header("host", addr.to_string())
        .header("stripe-signature", sig)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp =
        tokio::time::timeout(Duration::from_secs(15), sender.send_request(req)).await.ok()?.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

/// Sends deliveries to either daemon until each is acknowledged; a repeat goes to the other.
async fn sender(
    addrs: [SocketAddr; 2],
    queue: Arc<Mutex<VecDeque<Delivery>>>,
    seen: Arc<Seen>,
    mut rng: Rng,
) {
    let mut follow: Option<Delivery> = None;
    loop {
        let next = follow.take().or_else(|| queue.lock().unwrap().pop_front());
        let Some(d) = next else { return };
        let mut target = rng.below(2) as usize;
        loop {
            seen.requests.fetch_add(1, Ordering::Relaxed);
            match post(addrs[target], &d.body).await {
                Some(s) if (200..300).contains(&s) => {
                    seen.acknowledged.lock().unwrap().insert(d.id.clone());
                    if !d.again && rng.below(10) == 0 {
                        let again = Delivery { again: true, then: None, ..d.clone() };
                        queue.lock().unwrap().push_back(again);
                    }
                    follow = d.then.map(|t| *t);
                    break;
                }
                Some(s) if s < 500 => panic!("{} got {s}", d.id),
                // Down, restarting, or 503 while the database is away: retry, on either.
                _ => {
                    target = rng.below(2) as usize;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_daemons_on_one_database_store_once_decide_once_and_in_order_across_kills() {
    let kills = env_or("RECONCILED_CRASH_KILLS", 12);
    let payments = env_or("RECONCILED_CRASH_PAYMENTS", 2000);
    let seed = env_or("RECONCILED_CRASH_SEED", reconciled::time::now_ms() as u64) | 1;
    let base = PathBuf::from(format!("/tmp/reconciled-crash-shared-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let Some(pg) = Postgres::init(&base) else { return };
    sql(&pg.url("postgres")).await.batch_execute("CREATE DATABASE reconciled").await.unwrap();
    let url = pg.url("reconciled");

    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop.db");
    let conn = rusqlite::Connection::open(&shop).unwrap();
    conn.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, total TEXT, currency TEXT)",
    )
    .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 1..=payments {
        tx.execute("INSERT INTO orders VALUES (?1, 'pending', '10.00', 'USD')", [i]).unwrap();
    }
    tx.commit().unwrap();
    let mut daemons: Vec<Daemon> = (0..2)
        .map(|n| {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let config = dir.path().join(format!("d{n}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"{addr}\"\nshutdown_grace_secs = 1\n[store]\nurl = \"{url}\"\n\
                     [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
                     [shop]\ndriver = \"sqlite\"\nurl = \"{}\"\n\
                     query = \"SELECT id AS order_id, status, total AS amount, currency FROM orders WHERE id = :reference\"\n\
                     [shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"paid\"]\ncancelled = [\"cancelled\"]\n\
                     [worker]\nretry_base = \"50ms\"\nretry_max = \"500ms\"\n",
                    shop.display()
                ),
            )
            .unwrap();
            Daemon { config, log: dir.path().join(format!("d{n}.log")), addr, child: None }
        })
        .collect();
    // The first start migrates; the second joins it.
    daemons[0].start();
    daemons[1].start();

    let mut rng = Rng(seed);
    let mut all = Vec::new();
    for i in 1..=payments {
        let id = format!("evt_ok_{i}");
        let ok = Delivery { body: event(&id, "succeeded", i), id, again: false, then: None };
        if i % 10 == 0 {
            let id = format!("evt_processing_{i}");
            let body = event(&id, "processing", i);
            all.push(Delivery { body, id, again: false, then: Some(Box::new(ok)) });
        } else {
            all.push(ok);
        }
    }
    for i in (1..all.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        all.swap(i, j);
    }
    let sent: HashSet<String> = all
        .iter()
        .flat_map(|d| std::iter::once(d.id.clone()).chain(d.then.as_ref().map(|t| t.id.clone())))
        .collect();
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(VecDeque::from(all)));
    let seen = Arc::new(Seen::default());
    let addrs = [daemons[0].addr, daemons[1].addr];
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            tokio::spawn(sender(
                addrs,
                queue.clone(),
                seen.clone(),
                Rng(seed.wrapping_add(n as u64 * 7919) | 1),
            ))
        })
        .collect();

    let (mut done_kills, mut pg_stops, mut while_sending) = (0, 0, 0);
    while done_kills < kills {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        if !senders.iter().all(|s| s.is_finished()) {
            while_sending += 1;
        }
        let victim = rng.below(2) as usize;
        daemons[victim].kill();
        done_kills += 1;
        if done_kills % 4 == 0 {
            pg.stop_immediate();
            pg_stops += 1;
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            pg.start();
        }
        daemons[victim].start();
    }
    for s in senders {
        tokio::time::timeout(Duration::from_secs(600), s).await.expect("senders finish").unwrap();
    }

    // Drain: the workers decide everything stored.
    let client = sql(&url).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM inbox WHERE status IN ('pending', 'processing', 'parked')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the workers did not drain the inbox ({open} left)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for d in &mut daemons {
        d.kill();
    }

    let mut rows: HashMap<String, i64> = HashMap::new();
    for r in client.query("SELECT dedup_key FROM inbox", &[]).await.unwrap() {
        *rows.entry(r.get(0)).or_default() += 1;
    }
    let acknowledged = seen.acknowledged.lock().unwrap().clone();
    let lost = acknowledged.iter().filter(|id| !rows.contains_key(*id)).count();
    let duplicate_rows: i64 = rows.values().map(|n| n - 1).sum();
    let strangers = rows.keys().filter(|id| !sent.contains(*id)).count();
    let mut actions: HashMap<String, i64> = HashMap::new();
    for r in client.query("SELECT idempotency_key FROM outbox", &[]).await.unwrap() {
        *actions.entry(r.get(0)).or_default() += 1;
    }
    let duplicate_actions: i64 = actions.values().map(|n| n - 1).sum();
    let missing_actions = (1..=payments)
        .flat_map(|i| [format!("fulfil:order:{i}"), format!("notify:order_confirmed:{i}")])
        .filter(|k| !actions.contains_key(k))
        .count();
    let mut decided = HashMap::new();
    for d in &daemons {
        d.decided(&mut decided);
    }
    let decided_twice = decided.values().filter(|n| **n > 1).count();
    // The log is read only if it holds the decisions (some are lost with a kill after the
    // commit, before the line is written).
    assert!(decided.len() as u64 > payments / 2, "decisions logged: {}", decided.len());
    // Arrival order: a payment whose `processing` was stored first was told it is pending.
    let unnoticed = (1..=payments)
        .filter(|i| i % 10 == 0)
        .filter(|i| !actions.contains_key(&format!("notify:payment_pending:stripe:pi_crash_{i}")))
        .count() as i64;
    // And a payment's later row never has an earlier decision time.
    let late: i64 = client
        .query_one(
            "SELECT count(*) FROM inbox a JOIN inbox b ON a.provider = b.provider \
             AND a.payment_key = b.payment_key AND a.id < b.id WHERE b.processed_at < a.processed_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out_of_order = unnoticed + late;
    println!(
        "shared-store crash harness (seed {seed}): {done_kills} daemon kills ({while_sending} while \
         sending), {pg_stops} PostgreSQL stops, {} requests, {} notifications sent, {} acknowledged; \
         lost {lost}, duplicate rows {duplicate_rows}, rows never sent {strangers}, duplicate \
         actions {duplicate_actions}, missing actions {missing_actions}, rows decided twice \
         {decided_twice} (of {} logged), rows decided out of order {out_of_order} ({unnoticed} \
         pending notices missing, {late} earlier decision times); {:.1} s",
        seen.requests.load(Ordering::Relaxed),
        sent.len(),
        acknowledged.len(),
        decided.len(),
        started.elapsed().as_secs_f64()
    );
    drop(pg);
    let _ = std::fs::remove_dir_all(&base);
    assert_eq!(acknowledged.len(), sent.len(), "every notification was eventually acknowledged");
    assert!(while_sending > 0, "some kills hit the daemons while they took notifications");
    assert_eq!(strangers, 0);
    if cfg!(feature = "test-claim-unordered") {
        assert!(out_of_order > 0, "claims that ignore earlier rows must decide some out of order");
    } else if cfg!(feature = "test-claim-unlocked") {
        assert!(decided_twice > 0, "claims that lock nothing must decide some rows twice");
    } else {
        assert_eq!(
            (lost, duplicate_rows, duplicate_actions, missing_actions, decided_twice, out_of_order),
            (0, 0, 0, 0, 0, 0)
        );
    }
}
