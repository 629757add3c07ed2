//! The SQLite backend: one database file in WAL mode.
//!
//! ## Concurrency
//! Notifications are written by one writer thread ([`writer`]) with its own connection:
//! request handlers send it rows over a bounded channel and wait for the answer; it drains
//! whatever has queued up (up to `max_batch`) into one transaction, commits (one fsync for the
//! whole group), and only then answers every waiter. A handler therefore never answers 2xx
//! before the commit that holds its row. A checkpoint thread ([`checkpoint`]) with a second
//! connection keeps the WAL bounded. The worker's claims and decision batches, and the
//! command line's reads and replays, go through a third connection (`work`), on tokio's
//! blocking threads; the pruner opens a fourth. SQLite's locks serialize the writers
//! (`busy_timeout` bounds the wait); WAL lets readers read while they write.
//!
//! One daemon owns a SQLite store: claims are held in memory (see [`queue`]), and the daemon
//! holds an exclusive lock beside the database while it runs ([`owner`]).

pub mod batch;
pub mod checkpoint;
mod deliver;
pub mod owner;
pub mod prune;
pub mod queue;
pub mod read;
pub mod schema;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::Connection;
use tokio_util::sync::CancellationToken;

use super::{Applied, Claimed, FailureRecord, NewRow, Planner, StoreConfig, StoreError, Stored};
use crate::provider::ProviderKind;

/// The writer thread, seen from the handlers.
#[derive(Debug)]
struct WriterHandle {
    /// Queue to the writer thread.
    tx: crate::store::queue::Queue,
    /// The writer thread, joined once by [`Sqlite::close`].
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Cancelled if the writer thread ends without a `Shutdown` command.
    died: CancellationToken,
    /// Each group commit's duration, in seconds.
    commit_seconds: Histogram,
}

/// A SQLite store.
#[derive(Debug)]
pub struct Sqlite {
    /// The database file.
    path: PathBuf,
    /// How long a connection waits for another's lock.
    busy_timeout: Duration,
    /// The group-commit writer; `None` for a store that takes no notifications.
    writer: Option<WriterHandle>,
    /// The connection for claims, decisions, replays and reads.
    work: Arc<Mutex<Connection>>,
    /// The daemon's lock on the store; `None` for the command line's tools and readers.
    owner: Mutex<Option<owner::Owner>>,
}

impl Sqlite {
    /// Opens and migrates the database; with `ingest`, starts the writer and checkpoint
    /// threads too; with `own`, takes the daemon's lock on the store first.
    pub fn open(config: &StoreConfig, ingest: bool, own: bool) -> Result<Sqlite, StoreError> {
        // Taken before anything else touches the file: a refused daemon changes nothing.
        let owner = if own { Some(owner::Owner::take(&config.path)?) } else { None };
        let writer = if ingest { Some(start_writer(config)?) } else { None };
        let work = schema::open_writer(&config.path, config.busy_timeout)?;
        // A decision batch dirties a few hundred pages: with SQLite's default 2 MB cache they
        // would be spilled to the WAL mid-transaction, written twice. Best effort: only speed.
        if let Err(e) = work.execute_batch("PRAGMA cache_size = -16384") {
            tracing::debug!(error = %e, "worker page cache left at its default");
        }
        Ok(Sqlite {
            path: config.path.clone(),
            busy_timeout: config.busy_timeout,
            writer,
            work: Arc::new(Mutex::new(work)),
            owner: Mutex::new(owner),
        })
    }

    /// Opens an existing store read-only.
    pub fn open_reader(path: &Path) -> Result<Sqlite, StoreError> {
        let conn = schema::open_reader(path)?;
        Ok(Sqlite {
            path: path.to_owned(),
            busy_timeout: Duration::from_secs(5),
            writer: None,
            work: Arc::new(Mutex::new(conn)),
            owner: Mutex::new(None),
        })
    }

    pub(super) async fn insert(&self, row: NewRow) -> Result<Stored, StoreError> {
        self.writer.as_ref().ok_or(StoreError::Closed)?.tx.insert(row).await
    }

    pub(super) fn record_failure(&self, failure: FailureRecord) {
        if let Some(writer) = &self.writer {
            writer.tx.record_failure(failure);
        }
    }

    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        self.writer.as_ref().ok_or(StoreError::Closed)?.tx.probe().await
    }

    pub(super) async fn died(&self) {
        match &self.writer {
            Some(writer) => writer.died.cancelled().await,
            None => std::future::pending().await,
        }
    }

    pub(super) fn commit_seconds(&self) -> Option<Histogram> {
        self.writer.as_ref().map(|w| w.commit_seconds.clone())
    }

    pub(super) fn is_dead(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.died.is_cancelled())
    }

    pub(super) async fn close(&self) {
        let Some(writer) = &self.writer else { return };
        writer.tx.shutdown().await;
        let thread = writer.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(owner) = self.owner.lock().unwrap_or_else(|p| p.into_inner()).take() {
            owner.release();
        }
    }

    /// Runs `f` on the work connection, on a blocking thread.
    async fn on_work<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, rusqlite::Error> {
        let work = self.work.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = work.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| {
            rusqlite::Error::ToSqlConversionFailure(format!("store task failed: {e}").into())
        })?
    }

    /// A read on the work connection.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.on_work(move |c| f(c)).await.map_err(|e| StoreError::Read(std::sync::Arc::new(e)))
    }

    /// A write on the work connection, for the store's handle.
    pub(super) async fn write_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write(f).await
    }

    /// A write on the work connection.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.on_work(f).await.map_err(|e| StoreError::Write(std::sync::Arc::new(e)))
    }

    pub(super) async fn release_claims(&self) -> Result<usize, StoreError> {
        self.write(queue::release_claims).await
    }

    pub(super) async fn claim(
        &self,
        now: i64,
        limit: usize,
        taken: HashSet<i64>,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.read(move |c| queue::claim(c, now, limit, &taken)).await
    }

    pub(super) async fn claim_one(&self, id: i64) -> Result<Option<Claimed>, StoreError> {
        self.read(move |c| queue::claim_one(c, id, crate::time::now_ms())).await
    }

    pub(super) async fn order_of_payment(
        &self,
        provider: ProviderKind,
        payment_id: String,
    ) -> Result<Option<String>, StoreError> {
        self.read(move |c| queue::order_of_payment(c, provider, &payment_id)).await
    }

    pub(super) async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(queue::next_due).await
    }

    pub(super) async fn decide_batch<P, T>(
        &self,
        rows: Vec<Claimed>,
        prepared: Vec<P>,
        planner: Arc<T>,
    ) -> Result<Vec<Applied<T::Decision>>, StoreError>
    where
        P: Send + 'static,
        T: Planner<P>,
    {
        self.write(move |c| batch::decide(c, &rows, &prepared, &*planner)).await
    }

    pub(super) async fn prune(
        &self,
        retention_days: u64,
        dry_run: bool,
    ) -> Result<(i64, u64), StoreError> {
        self.write(move |c| {
            let cutoff = prune::cutoff_now(c, crate::time::now_ms(), retention_days)?;
            let n = if dry_run {
                u64::try_from(prune::count_prunable(c, cutoff)?).unwrap_or(0)
            } else {
                prune::prune(c, cutoff, &|| false)?
            };
            Ok((cutoff, n))
        })
        .await
    }

    pub(super) async fn prune_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.write(move |c| prune::prune(c, cutoff_ms, &|| false)).await
    }
}

/// Opens the writer's and the checkpointer's connections and starts their threads.
fn start_writer(config: &StoreConfig) -> Result<WriterHandle, StoreError> {
    let conn = schema::open_writer(&config.path, config.busy_timeout)?;
    let open_err =
        |e: rusqlite::Error| StoreError::Open { path: config.path.clone(), message: e.to_string() };
    // Checkpoints run on their own thread (see checkpoint::Checkpointer), which also gives the
    // WAL file's space back when idle; a restart of the WAL cuts its file back only to the
    // limit. The page cache is sized by checkpoint::CacheSize.
    let wal_max_bytes = config.wal_max_mb.saturating_mul(1 << 20);
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {wal_max_bytes};"
    ))
    .map_err(open_err)?;
    let page_size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(open_err)?;
    let cache = checkpoint::CacheSize::set(&conn).map_err(open_err)?;
    let mut wal_path = config.path.clone().into_os_string();
    wal_path.push("-wal");
    let checkpoint_conn = Connection::open(&config.path).map_err(open_err)?;
    checkpoint_conn.busy_timeout(config.busy_timeout).map_err(open_err)?;
    let checkpointer = checkpoint::Checkpointer::start(
        checkpoint_conn,
        wal_path.into(),
        wal_max_bytes,
        page_size + 24,
    )
    .map_err(|e| StoreError::Open {
        path: config.path.clone(),
        message: format!("cannot start checkpoint thread: {e}"),
    })?;
    let (tx, rx) = crate::store::queue::Queue::new();
    let commit_seconds = crate::store::commit_histogram();
    let settings = writer::Settings {
        max_batch: config.max_batch,
        failures_kept: config.failures_kept,
        cache,
        commit_seconds: commit_seconds.clone(),
    };
    let died = CancellationToken::new();
    let guard = super::DeathGuard::new(died.clone());
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer::run(conn, rx, settings, Some(checkpointer), guard))
        .map_err(|e| StoreError::Open {
            path: config.path.clone(),
            message: format!("cannot start writer thread: {e}"),
        })?;
    Ok(WriterHandle { tx, thread: Mutex::new(Some(thread)), died, commit_seconds })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::{body, NewRow, Store, StoreConfig};

    fn config(path: PathBuf, wal_max_mb: u64) -> StoreConfig {
        StoreConfig {
            path,
            url: None,
            tls_ca: None,
            busy_timeout: std::time::Duration::from_secs(5),
            max_batch: crate::config::DEFAULT_MAX_BATCH,
            failures_kept: 10,
            retention_days: crate::config::DEFAULT_RETENTION_DAYS,
            wal_max_mb,
        }
    }

    /// Without the writer's restart the WAL only grows while writes never pause: this burst
    /// writes about 8 KB of WAL per row, 5,000 rows, so 40 MB; the file must stay near 2 MiB.
    /// Once nothing is written for a few seconds, the checkpointer gives the file's space back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sustained_burst_keeps_the_wal_file_near_its_limit_and_idle_gives_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.db");
        let store = Store::open(&config(path.clone(), 2)).await.unwrap();
        let wal = dir.path().join("inbox.db-wal");
        let body = Bytes::from(vec![b'x'; 2600]);
        let largest = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for task in 0..32 {
            let (store, body, wal, largest) =
                (store.clone(), body.clone(), wal.clone(), largest.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..160 {
                    let row = NewRow {
                        endpoint: Arc::from("stripe"),
                        provider: crate::provider::ProviderKind::Stripe,
                        dedup_key: format!("evt_{task}_{n}"),
                        event_type: Some("payment_intent.succeeded".into()),
                        received_at_ms: crate::time::now_ms(),
                        remote_addr: "127.0.0.1".into(),
                        headers_json: "{}".into(),
                        // Stored raw, so that the WAL grows by the full 2,600 bytes a row.
                        body: body::Packed { bytes: body.clone(), encoding: None },
                        body_len: body.len(),
                        payment_key: None,
                        source: crate::domain::Source::Webhook,
                    };
                    assert_eq!(store.insert(row).await.unwrap().delivery_count, 1);
                    let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
                    largest.fetch_max(len, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let burst_end = std::fs::metadata(&wal).unwrap().len();
        assert!(burst_end > 1 << 20, "the file is kept for reuse during the burst: {burst_end}");
        let deadline = std::time::Instant::now() + checkpoint::WAL_IDLE * 3;
        while std::fs::metadata(&wal).unwrap().len() > 0 {
            assert!(std::time::Instant::now() < deadline, "the idle WAL file was not truncated");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Everything is in the database file now, and still readable while the store is open.
        let reader = schema::open_reader(&path).unwrap();
        let rows: i64 = reader.query_row("SELECT count(*) FROM inbox", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 32 * 160);
        drop(reader);
        store.close().await;
        let conn = rusqlite::Connection::open(&path).unwrap();
        let rows: i64 = conn.query_row("SELECT count(*) FROM inbox", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 32 * 160);
        let largest = largest.load(std::sync::atomic::Ordering::Relaxed);
        // The limit, plus what one batch of 256 rows (about 3 MB) can add before the check.
        assert!(largest > 0 && largest < 8 << 20, "the WAL file reached {largest} bytes");
    }

    fn row_at(endpoint: &str, key: &str, at_ms: i64, source: crate::domain::Source) -> NewRow {
        let body = Bytes::from_static(b"{}");
        NewRow {
            endpoint: Arc::from(endpoint),
            provider: crate::provider::ProviderKind::Stripe,
            dedup_key: key.into(),
            event_type: None,
            received_at_ms: at_ms,
            remote_addr: "127.0.0.1".into(),
            headers_json: "{}".into(),
            body: body::Packed { bytes: body.clone(), encoding: None },
            body_len: body.len(),
            payment_key: None,
            source,
        }
    }

    /// A periodic job's turn is taken once a period: again within it, nothing changes; once
    /// the period has passed, it is taken again; another key is a turn of its own.
    #[tokio::test]
    async fn a_turn_is_taken_once_a_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&config(dir.path().join("inbox.db"), 64)).await.unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert!(store.take_turn("turn:a", hour).await.unwrap(), "the first turn");
        let taken = store.meta("turn:a").await.unwrap().expect("recorded");
        assert!(!store.take_turn("turn:a", hour).await.unwrap(), "again within the hour");
        assert_eq!(store.meta("turn:a").await.unwrap(), Some(taken.clone()), "unchanged");
        assert!(store.take_turn("turn:b", hour).await.unwrap(), "another key");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let short = std::time::Duration::from_millis(1);
        assert!(store.take_turn("turn:a", short).await.unwrap(), "the period has passed");
        assert_ne!(store.meta("turn:a").await.unwrap(), Some(taken), "moved on");
        store.close().await;
    }
    /// An endpoint's last stored time is written with the first notification it stores, then
    /// only once it has moved on by a second (one page fewer for most batches); each endpoint
    /// on its own, a repeat counting like a new one, a backfilled row not at all. The store's
    /// gauges read what was written.
    #[tokio::test]
    async fn endpoint_activity_is_written_at_most_once_a_second() {
        use crate::domain::Source::{Backfill, Webhook};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&config(dir.path().join("inbox.db"), 64)).await.unwrap();
        let last = |store: Store| async move { store.gauges().await.unwrap().last_stored };
        let t = 1_800_000_000_000;
        store.insert(row_at("stripe", "evt_1", t, Webhook)).await.unwrap();
        assert_eq!(last(store.clone()).await, [("stripe".into(), t)]);
        store.insert(row_at("stripe", "evt_2", t + 999, Webhook)).await.unwrap();
        store.insert(row_at("other", "evt_3", t + 999, Webhook)).await.unwrap();
        assert_eq!(last(store.clone()).await, [("other".into(), t + 999), ("stripe".into(), t)]);
        // A repeat a second later moves it on; a backfilled row a minute later does not.
        let again = store.insert(row_at("stripe", "evt_2", t + 1_500, Webhook)).await.unwrap();
        assert_eq!(again.delivery_count, 2);
        store.insert(row_at("stripe", "evt_4", t + 60_000, Backfill)).await.unwrap();
        assert_eq!(
            last(store.clone()).await,
            [("other".into(), t + 999), ("stripe".into(), t + 1_500)]
        );
        store.close().await;
    }
}
