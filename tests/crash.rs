//! The crash harness: "acknowledged means durable, and nothing is done twice", checked the way
//! Jepsen checks databases, against the real daemon binary.
//!
//! Eight senders post signed Stripe notifications over loopback as Stripe does: every
//! notification until it gets a 2xx, retrying on connection errors and 5xx; about 10% are
//! delivered again after their 2xx; a tenth of the payments also get a `processing` event, in
//! random order with their `succeeded`; some requests carry a bad signature. Meanwhile the
//! daemon is killed with SIGKILL at random moments (while it takes notifications and while its
//! worker decides them), the store's `PRAGMA integrity_check` is run, and the daemon restarted.
//! At the end the worker is drained and the harness checks:
//! - every acknowledged notification is in the inbox exactly once (lost = 0, duplicate rows = 0);
//! - nothing that was not sent, or failed verification, is there;
//! - every order has exactly one `fulfil` and one `order_confirmed` notice (missing = 0).
//!
//! It prints its figures. Defaults: 20 kills, 5,000 payments (what `.ci/run` runs). A longer
//! run: `RECONCILED_CRASH_KILLS=500 RECONCILED_CRASH_PAYMENTS=50000 cargo test --release --test
//! crash -- --nocapture`. `RECONCILED_CRASH_SEED` repeats a run.
//!
//! The harness proves it can fail: built with `--features test-ack-before-commit` (answers
//! before storing) it must find losses, and with `--features test-no-dedup` duplicate rows;
//! under those features the test passes only if it does.
//!
//! A second harness does the same for deliveries to a sink (see
//! [`every_action_is_delivered_with_one_webhook_id_across_sigkills`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use reconciled::provider::stripe;
use rusqlite::Connection;

// The guard every test that spawns a process uses; this binary needs only part of it.
#[allow(dead_code)]
#[path = "it/process.rs"]
mod process;

use process::ChildGuard;

#[path = "support/crash.rs"]
mod support;

use support::{env_or, event, Rng};

const SECRET: &str = "whsec_crash_harness_0123456789";
const SENDERS: usize = 8;

/// One notification to deliver.
#[derive(Clone)]
struct Delivery {
    id: String,
    body: Vec<u8>,
    /// Signed with the wrong secret: must be refused and never stored.
    forged: bool,
    /// Already a redelivery (not to be repeated again).
    again: bool,
}

/// What the senders saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    acknowledged: Mutex<HashSet<String>>,
    acks: AtomicU64,
    refused: Mutex<HashSet<String>>,
}

/// The daemon under test; its guard kills it if the harness panics, so none outlives the test.
struct Daemon {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
    /// A crash point the next start aborts at (builds with the `failpoints` feature).
    failpoint: Option<&'static str>,
}

impl Daemon {
    /// The daemon binary under test, not started, logging into `dir`.
    fn new(dir: &Path, config: PathBuf) -> Daemon {
        Daemon {
            bin: PathBuf::from(env!("CARGO_BIN_EXE_reconciled")),
            config,
            log: dir.join("daemon.log"),
            child: None,
            failpoint: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = ChildGuard::spawn(
            Command::new(&self.bin)
                .args(["serve", "--config", self.config.to_str().unwrap()])
                .env("RECONCILED_LOG", "warn")
                .env("RECONCILED_FAILPOINT", self.failpoint.unwrap_or(""))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill_now(); // SIGKILL
        }
    }
}

async fn post(addr: SocketAddr, body: &[u8], signature: &str) -> Option<u16> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("/webhooks/stripe")
        .header("host", addr.to_string())
        .header("stripe-signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp =
        tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.ok()?.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

async fn sender(
    addr: SocketAddr,
    queue: Arc<Mutex<VecDeque<Delivery>>>,
    seen: Arc<Seen>,
    mut rng: Rng,
) {
    loop {
        let Some(d) = queue.lock().unwrap().pop_front() else { return };
        loop {
            let secret = if d.forged { "whsec_not_the_secret" } else { SECRET };
            let sig = stripe::sign(secret.as_bytes(), reconciled::time::now_ms() / 1000, &d.body);
            seen.requests.fetch_add(1, Ordering::Relaxed);
            match post(addr, &d.body, &sig).await {
                Some(s) if (200..300).contains(&s) && !d.forged => {
                    seen.acks.fetch_add(1, Ordering::Relaxed);
                    seen.acknowledged.lock().unwrap().insert(d.id.clone());
                    if !d.again && rng.below(10) == 0 {
                        queue.lock().unwrap().push_back(Delivery { again: true, ..d.clone() });
                    }
                    break;
                }
                Some(400) if d.forged => {
                    seen.refused.lock().unwrap().insert(d.id.clone());
                    break;
                }
                Some(s) if (200..300).contains(&s) => panic!("a forged notification got {s}"),
                Some(s) if s < 500 => panic!("{} got {s}", d.id),
                // Down, restarting, or 503: retry, as Stripe does (faster).
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// A shop with orders 1..=`payments` (10.00 USD each, pending) and a configuration for the
/// daemon under test, with `extra` tables appended. Returns the store's path, the daemon's
/// address and the configuration file.
fn setup(dir: &Path, payments: u64, extra: &str) -> (PathBuf, SocketAddr, PathBuf) {
    let db = dir.join("inbox.db");
    let shop = dir.join("shop.db");
    let conn = Connection::open(&shop).unwrap();
    conn.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, total TEXT NOT NULL, currency TEXT NOT NULL)",
    )
    .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 1..=payments {
        tx.execute("INSERT INTO orders VALUES (?1, 'pending', '10.00', 'USD')", [i]).unwrap();
    }
    tx.commit().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("reconciled.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\nshutdown_grace_secs = 1\n[store]\npath = \"{}\"\n\
             [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
             [shop]\ndriver = \"sqlite\"\nurl = \"{}\"\n\
             query = \"SELECT id AS order_id, status, total AS amount, currency FROM orders WHERE id = :reference\"\n\
             [shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"paid\"]\ncancelled = [\"cancelled\"]\n\
             [worker]\nlease = \"1s\"\nretry_base = \"50ms\"\nretry_max = \"500ms\"\n{extra}",
            db.display(),
            shop.display()
        ),
    )
    .unwrap();
    (db, addr, config)
}

fn integrity(db: &Path) -> String {
    let conn = Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_means_stored_once_and_acted_on_once_across_sigkills() {
    let kills = env_or("RECONCILED_CRASH_KILLS", 20);
    let payments = env_or("RECONCILED_CRASH_PAYMENTS", 5000);
    let seed = env_or("RECONCILED_CRASH_SEED", reconciled::time::now_ms() as u64) | 1;
    let dir = tempfile::tempdir().unwrap();
    let (db, addr, config) = setup(dir.path(), payments, "");
    // The deliveries, shuffled: a payment's processing and succeeded events in either order.
    let mut rng = Rng(seed);
    let mut all = Vec::new();
    for i in 1..=payments {
        let id = format!("evt_ok_{i}");
        all.push(Delivery { body: event(&id, "succeeded", i), id, forged: false, again: false });
        if i % 10 == 0 {
            let id = format!("evt_processing_{i}");
            all.push(Delivery {
                body: event(&id, "processing", i),
                id,
                forged: false,
                again: false,
            });
        }
        if i % 100 == 0 {
            let id = format!("evt_forged_{i}");
            all.push(Delivery { body: event(&id, "succeeded", i), id, forged: true, again: false });
        }
    }
    for i in (1..all.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        all.swap(i, j);
    }
    let sent: HashSet<String> = all.iter().filter(|d| !d.forged).map(|d| d.id.clone()).collect();
    let forged: HashSet<String> = all.iter().filter(|d| d.forged).map(|d| d.id.clone()).collect();

    let mut daemon = Daemon::new(dir.path(), config);
    daemon.start();
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(VecDeque::from(all)));
    let seen = Arc::new(Seen::default());
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            tokio::spawn(sender(
                addr,
                queue.clone(),
                seen.clone(),
                Rng(seed.wrapping_add(n as u64 * 7919) | 1),
            ))
        })
        .collect();
    let sending = Arc::new(AtomicBool::new(true));

    // The killer: SIGKILL at random moments, check the store, restart.
    let mut done_kills = 0;
    let mut kills_while_sending = 0;
    while done_kills < kills {
        tokio::time::sleep(Duration::from_millis(30 + rng.below(300))).await;
        if senders.iter().all(|s| s.is_finished()) {
            sending.store(false, Ordering::Relaxed);
        } else {
            kills_while_sending += 1;
        }
        daemon.kill();
        done_kills += 1;
        let check = integrity(&db);
        assert_eq!(check, "ok", "integrity_check after kill {done_kills}");
        daemon.start();
    }
    for s in senders {
        tokio::time::timeout(Duration::from_secs(300), s).await.expect("senders finish").unwrap();
    }

    // Drain: the worker decides everything that is stored.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open = Connection::open(&db).and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM inbox WHERE status IN ('pending', 'processing', 'parked')",
                [],
                |r| r.get::<_, i64>(0),
            )
        });
        if open.is_ok_and(|n| n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not drain the inbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.kill();
    assert_eq!(integrity(&db), "ok");

    let conn = Connection::open(&db).unwrap();
    let mut rows: HashMap<String, i64> = HashMap::new();
    {
        let mut stmt = conn.prepare("SELECT dedup_key FROM inbox").unwrap();
        for key in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            // A build without dedup suffixes its keys: count them by the event id.
            let key = key.unwrap();
            let id = key.split('#').next().unwrap().to_owned();
            *rows.entry(id).or_default() += 1;
        }
    }
    let acknowledged = seen.acknowledged.lock().unwrap().clone();
    let lost = acknowledged.iter().filter(|id| !rows.contains_key(*id)).count();
    let duplicate_rows: i64 = rows.values().map(|n| n - 1).sum();
    let strangers = rows.keys().filter(|id| !sent.contains(*id)).count();
    let forged_stored = rows.keys().filter(|id| forged.contains(*id)).count();
    let mut actions: HashMap<String, i64> = HashMap::new();
    {
        let mut stmt = conn.prepare("SELECT idempotency_key FROM outbox").unwrap();
        for key in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            *actions.entry(key.unwrap()).or_default() += 1;
        }
    }
    let duplicate_actions: i64 = actions.values().map(|n| n - 1).sum();
    let mut missing_actions = 0;
    for i in 1..=payments {
        for key in [format!("fulfil:order:{i}"), format!("notify:order_confirmed:{i}")] {
            if !actions.contains_key(&key) {
                missing_actions += 1;
            }
        }
    }
    println!(
        "crash harness (seed {seed}): {done_kills} kills ({kills_while_sending} while notifications were being sent), \
         {} requests, {} notifications sent, {} acknowledged ({} 2xx answers), {} forged refused; \
         lost {lost}, duplicate rows {duplicate_rows}, rows never sent {strangers}, forged stored {forged_stored}, \
         duplicate actions {duplicate_actions}, missing actions {missing_actions}; {:.1} s",
        seen.requests.load(Ordering::Relaxed),
        sent.len(),
        acknowledged.len(),
        seen.acks.load(Ordering::Relaxed),
        seen.refused.lock().unwrap().len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(acknowledged.len(), sent.len(), "every notification was eventually acknowledged");
    assert!(kills_while_sending > 0, "some kills hit the daemon while it took notifications");
    assert_eq!((strangers, forged_stored), (0, 0));
    if cfg!(feature = "test-ack-before-commit") {
        assert!(lost > 0, "an ack-before-commit build must lose acknowledged notifications");
    } else if cfg!(feature = "test-no-dedup") {
        assert!(duplicate_rows > 0, "a build without dedup must store duplicates");
    } else {
        assert_eq!((lost, duplicate_rows, duplicate_actions, missing_actions), (0, 0, 0, 0));
    }
}

/// What the shop's receiver saw: every request's webhook-id, and each 2xx it answered with
/// the idempotency key of the action in the body.
#[derive(Default)]
struct Received {
    requests: AtomicU64,
    failed: AtomicU64,
    /// webhook-id → idempotency keys of the bodies that carried it, answered 2xx.
    delivered: Mutex<HashMap<String, HashSet<String>>>,
    /// webhook-id → how many 2xx answers it got.
    answered: Mutex<HashMap<String, u64>>,
}

/// A receiver that fails about a third of its requests: a 500, a connection closed without
/// an answer, or an answer slower than the sink's timeout.
async fn receive(listener: tokio::net::TcpListener, seen: Arc<Received>, seed: u64) {
    let rng = Arc::new(Mutex::new(Rng(seed)));
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let (seen, rng) = (seen.clone(), rng.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (seen, rng) = (seen.clone(), rng.clone());
                async move {
                    let id = req
                        .headers()
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    seen.requests.fetch_add(1, Ordering::Relaxed);
                    let roll = rng.lock().unwrap().below(9);
                    let answer = |status: u16| {
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap()
                    };
                    match roll {
                        0 | 1 => {
                            seen.failed.fetch_add(1, Ordering::Relaxed);
                            return Ok(answer(500));
                        }
                        // Closed without an answer.
                        2 => {
                            seen.failed.fetch_add(1, Ordering::Relaxed);
                            return Err("dropped");
                        }
                        // Slower than the sink's timeout of 1 s.
                        3 if rng.lock().unwrap().below(8) == 0 => {
                            seen.failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            return Ok(answer(500));
                        }
                        _ => {}
                    }
                    let key = body
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["data"]["idempotency_key"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    seen.delivered.lock().unwrap().entry(id.clone()).or_default().insert(key);
                    *seen.answered.lock().unwrap().entry(id).or_default() += 1;
                    Ok::<_, &str>(answer(204))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// "Every action reaches its sink, and every repeat is recognisable", across SIGKILLs: the
/// daemon is killed while it takes notifications and delivers actions to a receiver that fails
/// a third of its requests. At the end every action is delivered, every action reached the
/// receiver with a 2xx at least once, and each webhook-id stands for one action (a repeat after
/// a kill carried the same id). Defaults: 10 kills, 500 payments; longer with
/// `RECONCILED_CRASH_DELIVERY_KILLS` and `RECONCILED_CRASH_DELIVERY_PAYMENTS`.
///
/// Built with `--features test-deliver-ignores-answer` (a dispatcher that does not wait for the
/// receiver's answer) it must find actions the receiver never accepted; the test then passes
/// only if it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_action_is_delivered_with_one_webhook_id_across_sigkills() {
    if cfg!(any(feature = "test-ack-before-commit", feature = "test-no-dedup")) {
        eprintln!("skipped: this build is broken on purpose for the ingest harness");
        return;
    }
    let kills = env_or("RECONCILED_CRASH_DELIVERY_KILLS", 10);
    let payments = env_or("RECONCILED_CRASH_DELIVERY_PAYMENTS", 500);
    let seed = env_or("RECONCILED_CRASH_SEED", reconciled::time::now_ms() as u64) | 1;
    let dir = tempfile::tempdir().unwrap();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = receiver.local_addr().unwrap();
    let received = Arc::new(Received::default());
    tokio::spawn(receive(receiver, received.clone(), seed.wrapping_mul(31) | 1));
    let sink = format!(
        "[[sink]]\nname = \"shop\"\nkind = \"http\"\nurl = \"http://{hook}/hook\"\n\
         secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\ntimeout_secs = 1\n\
         retry_base = \"20ms\"\nretry_max = \"200ms\"\n"
    );
    let (db, addr, config) = setup(dir.path(), payments, &sink);

    let mut rng = Rng(seed);
    let all: VecDeque<Delivery> = (1..=payments)
        .map(|i| {
            let id = format!("evt_ok_{i}");
            Delivery { body: event(&id, "succeeded", i), id, forged: false, again: false }
        })
        .collect();
    let mut daemon = Daemon::new(dir.path(), config);
    daemon.start();
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(all));
    let seen = Arc::new(Seen::default());
    let senders: Vec<_> = (0..2)
        .map(|n| tokio::spawn(sender(addr, queue.clone(), seen.clone(), Rng(seed + n * 2 + 1))))
        .collect();

    // Kills spread over the notifications and the deliveries. With crash points compiled in,
    // every other run dies right after a delivery's answer and before recording it: the
    // delivery must go out again, with the same webhook-id.
    for n in 1..=kills {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        daemon.kill();
        assert_eq!(integrity(&db), "ok", "integrity_check after kill {n}");
        let crash_point = cfg!(feature = "failpoints") && n % 2 == 0 && n < kills;
        daemon.failpoint = crash_point.then_some("deliver_before_record");
        daemon.start();
    }
    for s in senders {
        tokio::time::timeout(Duration::from_secs(300), s).await.expect("senders finish").unwrap();
    }
    let expected = payments as i64 * 2;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = Connection::open(&db).and_then(|c| {
            c.query_row(
                "SELECT (SELECT count(*) FROM outbox), \
                 (SELECT count(*) FROM deliveries WHERE state = 'delivered')",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
        });
        if done.is_ok_and(|(actions, delivered)| actions == expected && delivered == expected) {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.kill();

    let conn = Connection::open(&db).unwrap();
    let keys: Vec<String> = conn
        .prepare("SELECT idempotency_key FROM outbox")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let undelivered: i64 = conn
        .query_row("SELECT count(*) FROM deliveries WHERE state != 'delivered'", [], |r| r.get(0))
        .unwrap();
    let delivered = received.delivered.lock().unwrap();
    let answered = received.answered.lock().unwrap();
    let never_accepted = keys
        .iter()
        .filter(|k| !delivered.contains_key(&reconciled::deliver::webhook_id(k)))
        .count();
    let ids_with_two_actions = delivered.values().filter(|keys| keys.len() != 1).count();
    let mismatched = delivered
        .iter()
        .filter(|(id, keys)| keys.iter().any(|k| &reconciled::deliver::webhook_id(k) != *id))
        .count();
    let repeats: u64 = answered.values().map(|n| n - 1).sum();
    println!(
        "delivery crash harness (seed {seed}): {kills} kills, {} actions, {} requests to the \
         receiver ({} failed on purpose), {repeats} repeats of an accepted delivery; \
         never accepted {never_accepted}, undelivered {undelivered}, webhook-ids standing for \
         two actions {ids_with_two_actions}, ids not matching their action {mismatched}; {:.1} s",
        keys.len(),
        received.requests.load(Ordering::Relaxed),
        received.failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(keys.len() as i64, expected, "every payment decided: fulfil and notice");
    assert_eq!((ids_with_two_actions, mismatched), (0, 0));
    if cfg!(feature = "test-deliver-ignores-answer") {
        assert!(never_accepted > 0, "a dispatcher ignoring answers must leave actions unaccepted");
    } else {
        assert_eq!((never_accepted, undelivered), (0, 0));
    }
    if cfg!(feature = "failpoints") && !cfg!(feature = "test-deliver-ignores-answer") {
        assert!(
            repeats > 0,
            "runs that died between an accepted delivery and its record repeat it"
        );
    }
}
