//! Deterministic crash points (feature `failpoints`): the daemon aborts at one step of storing
//! or deciding a notification. After a restart, and the redelivery a provider makes when it got
//! no 2xx, there is the same single inbox row and the same single set of actions.
#![cfg(feature = "failpoints")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::cli::{spawn_serve_with, write_config};
use crate::harness::{self, config_text_with, integrity, pi_event, shop_config, Shop};
use crate::process::{ChildGuard, EXIT_WITHIN};

/// A spawned daemon; its guard kills it if the test panics, so no daemon outlives its test.
struct Spawned {
    child: ChildGuard,
    addr: SocketAddr,
    log: std::thread::JoinHandle<String>,
}

impl Spawned {
    fn start(config: &Path, dir: &Path, failpoint: Option<&str>) -> Spawned {
        let env: Vec<(&str, &str)> =
            failpoint.map(|p| ("RECONCILED_FAILPOINT", p)).into_iter().collect();
        let (child, addr, log) =
            spawn_serve_with(&["serve", "--config", config.to_str().unwrap()], dir, &env);
        Spawned { child, addr, log }
    }

    /// Waits for the process to end on its own; returns whether it succeeded and its log.
    async fn exit(self) -> (bool, String) {
        let Spawned { mut child, log, .. } = self;
        let status =
            tokio::task::spawn_blocking(move || child.wait_within(EXIT_WITHIN)).await.unwrap();
        (status.success(), log.join().unwrap())
    }

    /// A graceful stop (SIGTERM); returns whether it exited 0 and its log.
    async fn terminate(self) -> (bool, String) {
        let Spawned { mut child, log, .. } = self;
        let status = tokio::task::spawn_blocking(move || child.terminate()).await.unwrap();
        (status.success(), log.join().unwrap())
    }
}

fn inbox(db: &Path) -> Vec<(String, String, i64)> {
    let conn = harness::sql(db);
    let mut stmt = conn.prepare("SELECT dedup_key, status, delivery_count FROM inbox").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    rows.map(Result::unwrap).collect()
}

fn outbox(db: &Path) -> Vec<String> {
    harness::reading(db, |s| async move { s.outbox(Default::default()).await })
        .unwrap()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect()
}

/// Where a crash point lies: before anything is stored, after the row is committed but before
/// the provider hears of it, or in the worker after the provider got its 200.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stage {
    NothingStored,
    StoredUnanswered,
    Acknowledged,
}

async fn crash_at(point: &str, stage: Stage) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let db = dir.path().join("inbox.db");
    let cfg = write_config(
        dir.path(),
        &config_text_with(&db, "", "", &shop_config(&shop, "lease = \"1s\"")),
    );
    let body = pi_event("evt_crash", "succeeded", "pi_crash", "1001", 10000, "usd");
    let deliver = |addr: SocketAddr| harness::try_post_signed(addr, body.clone());

    // First run: the daemon aborts at the point.
    let first = Spawned::start(&cfg, dir.path(), Some(point));
    let answer = deliver(first.addr).await;
    match stage {
        // The worker may die before or after the answer leaves: the row is committed either way.
        Stage::Acknowledged => assert!(
            matches!(&answer, Ok((StatusCode::OK, t)) if t == "stored\n") || answer.is_err(),
            "{answer:?}"
        ),
        _ => assert!(answer.is_err(), "no answer from a daemon that died at {point}: {answer:?}"),
    }
    let (ok, log) = first.exit().await;
    assert!(!ok, "the failpoint aborted the daemon");
    assert!(log.contains(&format!("failpoint {point}: aborting")), "{log}");
    assert_eq!(integrity(&db), "ok");
    let rows = inbox(&db).len();
    assert_eq!(rows, usize::from(stage != Stage::NothingStored), "rows after a crash at {point}");
    assert!(outbox(&db).is_empty(), "nothing was decided before the crash at {point}");

    // Restart. The provider delivers again (it retries anything without a 2xx, and may repeat
    // the rest), then once more for good measure.
    let second = Spawned::start(&cfg, dir.path(), None);
    let again = if stage == Stage::NothingStored { "stored\n" } else { "duplicate\n" };
    assert_eq!(deliver(second.addr).await, Ok((StatusCode::OK, again.to_owned())));
    let deadline = Instant::now() + Duration::from_secs(15);
    while outbox(&db).len() < 2 {
        assert!(Instant::now() < deadline, "no actions after the restart ({point})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deliver(second.addr).await, Ok((StatusCode::OK, "duplicate\n".to_owned())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, log) = second.terminate().await;
    assert!(ok, "{log}");

    assert_eq!(integrity(&db), "ok");
    let deliveries = if stage == Stage::NothingStored { 2 } else { 3 };
    assert_eq!(inbox(&db), [("evt_crash".to_owned(), "done".to_owned(), deliveries)]);
    assert_eq!(outbox(&db), ["fulfil:order:1001", "notify:order_confirmed:1001"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_verifying_stores_nothing_and_the_retry_is_decided_once() {
    crash_at("ingest_after_verify", Stage::NothingStored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_insert_commits_stores_nothing_and_the_retry_is_decided_once() {
    crash_at("ingest_before_commit", Stage::NothingStored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_commit_before_the_answer_makes_the_retry_a_duplicate() {
    crash_at("ingest_after_commit", Stage::StoredUnanswered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_worker_claims_decides_the_row_once_after_restart() {
    crash_at("worker_after_claim", Stage::Acknowledged).await;
}

/// Invariant 3: the worker dies between writing its actions and committing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_worker_commits_emits_every_action_exactly_once() {
    crash_at("worker_before_commit", Stage::Acknowledged).await;
}
