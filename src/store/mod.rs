//! The SQLite store: the inbox of verified notifications and the verification-failure log.
//!
//! ## Concurrency
//! All writes go through one writer thread ([`writer`]) that owns the only read-write
//! connection. Request handlers send it rows over a bounded channel and wait for the answer;
//! the writer drains whatever has queued up (up to `max_batch`) into one transaction, commits
//! (one fsync for the whole group), and only then answers every waiter. A handler therefore
//! never answers 2xx before the commit that holds its row. The CLI reads with its own
//! read-only connections ([`read`]); WAL lets it do so while the daemon writes.

pub mod body;
pub mod prune;
pub mod read;
pub mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Requests queued for the writer beyond this wait (backpressure on the handlers).
const QUEUE_DEPTH: usize = 8192;

/// `[store]`: the SQLite inbox file and its writer.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file (created if missing).
    pub path: PathBuf,
    /// Wait for another process's lock before failing the batch.
    pub busy_timeout: Duration,
    /// Most rows per group commit.
    pub max_batch: usize,
    /// Verification failures kept; the table never grows past this.
    pub failures_kept: u64,
    /// Finished inbox rows (and their actions) are deleted this many days after their last
    /// delivery; never fewer than [`crate::config::MIN_RETENTION_DAYS`].
    pub retention_days: u64,
    /// The WAL's size, in MiB, past which the writer restarts it during a sustained burst.
    pub wal_max_mb: u64,
}

/// A store failure. Callers branch on it: anything here means "not stored", answer 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("store {}: {message}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The database was written by a newer version of reconciled.
    #[error("store {}: schema version {found} is newer than this build knows ({known}); upgrade reconciled", path.display())]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: u32,
        /// The newest version this build knows.
        known: u32,
    },
    /// A write or commit failed; nothing in the batch was stored.
    #[error("store write failed")]
    Write(#[source] rusqlite::Error),
    /// The writer has stopped (shutdown).
    #[error("store is closed")]
    Closed,
    /// The writer thread ended without being asked to (a panic); the daemon must restart.
    #[error("the store writer stopped unexpectedly")]
    WriterDied,
}

impl StoreError {
    fn open(path: &Path, e: rusqlite::Error) -> StoreError {
        StoreError::Open { path: path.to_owned(), message: e.to_string() }
    }
}

/// A verified notification to store.
#[derive(Debug)]
pub struct NewRow {
    /// The endpoint name it arrived on.
    pub endpoint: Arc<str>,
    /// Which provider sent it.
    pub provider: crate::provider::ProviderKind,
    /// The provider's id for the notification.
    pub dedup_key: String,
    /// The provider's event type.
    pub event_type: Option<String>,
    /// Arrival time, unix milliseconds.
    pub received_at_ms: i64,
    /// Peer address.
    pub remote_addr: String,
    /// Headers needed to verify again, as a JSON object.
    pub headers_json: String,
    /// The body as stored (see [`body::pack`]); raw bodies are shared with the request.
    pub body: body::Packed,
    /// The raw body's length in bytes.
    pub body_len: usize,
}

/// The outcome of storing a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The inbox row id.
    pub id: i64,
    /// Deliveries seen so far, this one included; above 1 means a duplicate.
    pub delivery_count: i64,
}

impl Stored {
    /// Whether this delivery repeated one already stored.
    pub fn is_duplicate(&self) -> bool {
        self.delivery_count > 1
    }
}

/// A request that failed verification, for the capped forensic log.
#[derive(Debug)]
pub struct FailureRecord {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The endpoint name.
    pub endpoint: Arc<str>,
    /// Peer address.
    pub remote_addr: String,
    /// Short code (`bad_signature`).
    pub reason: &'static str,
    /// The message sent back.
    pub detail: String,
    /// The full body length.
    pub body_len: usize,
    /// The start of the body (at most [`FAILURE_BODY_PREFIX`] bytes).
    pub body_prefix: Bytes,
}

/// Bytes of a failed request's body kept for forensics.
pub const FAILURE_BODY_PREFIX: usize = 1024;

pub(crate) enum Command {
    Insert(NewRow, oneshot::Sender<Result<Stored, StoreError>>),
    Failure(FailureRecord),
    Probe(oneshot::Sender<Result<(), StoreError>>),
    Shutdown,
}

/// A cloneable handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Store {
    /// Queue to the writer thread.
    tx: mpsc::Sender<Command>,
    /// The writer thread, joined once by [`Store::close`].
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Cancelled if the writer thread ends without a `Shutdown` command.
    died: CancellationToken,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Insert(..) => "Insert",
            Command::Failure(_) => "Failure",
            Command::Probe(_) => "Probe",
            Command::Shutdown => "Shutdown",
        })
    }
}

impl Store {
    /// Opens and migrates the database, then starts the writer thread.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let conn = schema::open_writer(&config.path, config.busy_timeout)?;
        let open_err = |e: rusqlite::Error| StoreError::open(&config.path, e);
        // Checkpoints run on their own thread (see writer::Checkpointer), which also gives the
        // WAL file's space back when idle; a restart of the WAL cuts its file back only to the
        // limit. The page cache is sized by writer::CacheSize.
        let wal_max_bytes = config.wal_max_mb.saturating_mul(1 << 20);
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {wal_max_bytes};"
        ))
        .map_err(open_err)?;
        let page_size: u64 =
            conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(open_err)?;
        let cache = writer::CacheSize::set(&conn).map_err(open_err)?;
        let mut wal_path = config.path.clone().into_os_string();
        wal_path.push("-wal");
        let checkpoint_conn = rusqlite::Connection::open(&config.path).map_err(open_err)?;
        checkpoint_conn.busy_timeout(config.busy_timeout).map_err(open_err)?;
        let checkpointer = writer::Checkpointer::start(
            checkpoint_conn,
            wal_path.into(),
            wal_max_bytes,
            page_size + 24,
        )
        .map_err(|e| StoreError::Open {
            path: config.path.clone(),
            message: format!("cannot start checkpoint thread: {e}"),
        })?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let settings = writer::Settings {
            max_batch: config.max_batch,
            failures_kept: config.failures_kept,
            cache,
        };
        let died = CancellationToken::new();
        let guard = writer::DeathGuard::new(died.clone());
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run(conn, rx, settings, Some(checkpointer), guard))
            .map_err(|e| StoreError::Open {
                path: config.path.clone(),
                message: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Store { tx, thread: Arc::new(Mutex::new(Some(thread))), died })
    }

    /// Resolves if the writer thread ends unexpectedly.
    pub async fn died(&self) {
        self.died.cancelled().await;
    }

    /// Whether the writer thread ended unexpectedly.
    pub fn is_dead(&self) -> bool {
        self.died.is_cancelled()
    }

    /// Stores a verified notification; resolves once its transaction has committed.
    pub async fn insert(&self, row: NewRow) -> Result<Stored, StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Command::Insert(row, done)).await.map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Records a failed verification. Best effort: dropped once the writer's queue is half
    /// full, so a flood of bad requests cannot crowd out good ones.
    pub fn record_failure(&self, failure: FailureRecord) {
        if self.tx.capacity() < QUEUE_DEPTH / 2
            || self.tx.try_send(Command::Failure(failure)).is_err()
        {
            tracing::debug!("verification failure not recorded: writer queue busy");
        }
    }

    /// Checks that the store can commit a write right now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Command::Probe(done)).await.map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits everything queued so far, checkpoints the WAL and stops the writer. Later
    /// inserts fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: PathBuf, wal_max_mb: u64) -> StoreConfig {
        StoreConfig {
            path,
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
        let store = Store::open(&config(path.clone(), 2)).unwrap();
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
        let deadline = std::time::Instant::now() + writer::WAL_IDLE * 3;
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
}
