//! The PostgreSQL backend: one database shared by any number of daemons.
//!
//! ## Concurrency
//! - **Ingest.** Each daemon has one writer task with a connection of its own ([`writer`]); it
//!   groups the requests that queue up into one transaction and answers 2xx only after the
//!   commit. Ingest transactions of all daemons take one advisory lock in turn, so ids grow in
//!   the order rows become visible. The session must have `synchronous_commit` on (checked at
//!   start). A stored row is announced with `NOTIFY`, which wakes the worker of every daemon.
//! - **Claims.** The worker claims due rows with `FOR UPDATE SKIP LOCKED` in a transaction that
//!   stays open while it looks up their orders, and decides them in that same transaction
//!   ([`batch`]). Another daemon skips locked rows; a daemon that dies aborts its transaction,
//!   and its rows are due again at once: no lease, no time-based rescue. A row is claimed only
//!   if no earlier row of its payment is still waiting (the payment is known from the moment
//!   the row is stored), so one payment's rows are decided in arrival order on every daemon.
//!   Decisions about one order are serialised by an advisory lock per order.
//! - **Deliveries** are leased: a dispatcher takes the deliveries it is owed with `SKIP LOCKED`
//!   and moves their next attempt past the time it may take, so no other daemon delivers them
//!   meanwhile; a daemon that dies mid-delivery leaves them to be retried when that passes.
//! - **Periodic jobs** (pruning) run on one daemon at a time, under an advisory lock.

mod batch;
pub mod read;
pub mod schema;
mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use futures_util::StreamExt;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Applied, Attempt, AttemptRow, Claimed, DeliveryFilter, DeliveryRow, FailureRecord, NewRow,
    Owed, Planner, StoreConfig, StoreError, Stored,
};
use crate::secret::DbUrl;

/// The advisory locks of the store: `(CLASS, n)` pairs, apart from the per-order locks (one
/// `bigint` key each, a separate key space in PostgreSQL).
pub(crate) mod locks {
    /// "reco": the class of every lock reconciled takes with two keys.
    pub const CLASS: i32 = 0x7265_636f;
    /// Schema migrations.
    pub const MIGRATE: i32 = 1;
    /// One ingest transaction at a time.
    pub const INGEST: i32 = 2;
    /// One pruner at a time.
    pub const PRUNE: i32 = 3;
}

/// `NOTIFY` channel: a notification was stored.
pub(crate) const INBOX_CHANNEL: &str = "reconciled_inbox";
/// `NOTIFY` channel: actions were written.
pub(crate) const OUTBOX_CHANNEL: &str = "reconciled_outbox";

/// Connections for claims, decisions and reads.
const POOL_SIZE: usize = 8;
/// A claim not decided within this is given up (its transaction rolled back).
const CLAIM_MAX: Duration = Duration::from_secs(50);

/// A claim's open transaction, held until the batch is decided.
struct Claim {
    client: Object,
    at: Instant,
}

/// The writer task, seen from the handlers.
#[derive(Debug)]
struct WriterHandle {
    tx: super::queue::Queue,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    died: CancellationToken,
    commit_seconds: Histogram,
}

/// A PostgreSQL store.
pub struct Postgres {
    url: DbUrl,
    /// Extra trusted roots for the server's certificate.
    tls_ca: Option<crate::db_tls::CaPem>,
    pool: Pool,
    writer: Option<WriterHandle>,
    /// Open claim transactions, by the id of their first row.
    claims: Mutex<HashMap<i64, Claim>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("url", &self.url).finish_non_exhaustive()
    }
}

fn write_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Write(Arc::new(e))
}

fn read_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    StoreError::Read(Arc::new(e))
}

impl Postgres {
    /// Connects, checks that commits are durable, migrates; with `ingest`, starts the writer.
    /// With `migrate` false (a reader), the store must exist and is not changed.
    pub async fn open(
        url: &DbUrl,
        tls_ca: Option<crate::db_tls::CaPem>,
        config: Option<&StoreConfig>,
        ingest: bool,
        migrate: bool,
    ) -> Result<Postgres, StoreError> {
        let mut client = schema::connect(url, tls_ca.as_deref()).await?;
        schema::check_durable(&client, url).await?;
        if migrate {
            schema::migrate(&mut client, url).await?;
        } else {
            schema::check_version(&client, url).await?;
        }
        let pool = schema::pool(url, tls_ca.as_deref(), POOL_SIZE)?;
        let writer = match (ingest, config) {
            (true, Some(config)) => {
                let (tx, rx) = super::queue::Queue::new();
                let commit_seconds = crate::store::commit_histogram();
                let died = CancellationToken::new();
                let settings = writer::Settings {
                    url: url.clone(),
                    tls_ca: tls_ca.clone(),
                    max_batch: config.max_batch,
                    failures_kept: config.failures_kept,
                    commit_seconds: commit_seconds.clone(),
                };
                let guard = super::DeathGuard::new(died.clone());
                let task = tokio::spawn(writer::run(Some(client), rx, settings, guard));
                Some(WriterHandle { tx, task: Mutex::new(Some(task)), died, commit_seconds })
            }
            _ => None,
        };
        Ok(Postgres { url: url.clone(), tls_ca, pool, writer, claims: Mutex::new(HashMap::new()) })
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            StoreError::Read(Arc::new(Unreachable(schema::scrub(
                &self.url,
                &crate::error::error_chain(&e),
            ))))
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

    pub(super) fn is_dead(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.died.is_cancelled())
    }

    pub(super) fn commit_seconds(&self) -> Option<Histogram> {
        self.writer.as_ref().map(|w| w.commit_seconds.clone())
    }

    pub(super) async fn close(&self) {
        if let Some(writer) = &self.writer {
            writer.tx.shutdown().await;
            let task = writer.task.lock().map(|mut t| t.take()).unwrap_or(None);
            if let Some(task) = task {
                let _ = task.await;
            }
        }
        // Undecided claims are rolled back: their rows are due again for any daemon.
        let claims: Vec<Claim> = self.lock_claims().drain().map(|(_, c)| c).collect();
        for claim in claims {
            drop(Object::take(claim.client));
        }
        self.pool.close();
    }

    fn lock_claims(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Claim>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listens for the other daemons' news until `shutdown`: a stored notification wakes
    /// `inbox`, written actions bump `outbox`. Reconnects when the connection drops; the
    /// worker's and the dispatchers' timers cover what is missed meanwhile.
    pub(super) async fn listen(
        url: DbUrl,
        tls_ca: Option<crate::db_tls::CaPem>,
        inbox: Arc<Notify>,
        outbox: tokio::sync::watch::Sender<u64>,
        shutdown: CancellationToken,
    ) {
        loop {
            let (settings, tls) = match schema::settings(&url, tls_ca.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for other daemons' news");
                    return;
                }
            };
            let connected = tokio::select! {
                c = settings.connect(tls) => c,
                () = shutdown.cancelled() => return,
            };
            match connected {
                Ok((client, mut connection)) => {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    let sql = format!("LISTEN {INBOX_CHANNEL}; LISTEN {OUTBOX_CHANNEL}");
                    let listen = client.batch_execute(&sql);
                    // The connection is driven by the message stream: poll both.
                    let mut listen = std::pin::pin!(listen);
                    let mut listening = false;
                    loop {
                        tokio::select! {
                            r = &mut listen, if !listening => {
                                listening = true;
                                if let Err(e) = r {
                                    tracing::warn!(error = %e, "LISTEN failed");
                                    break;
                                }
                                // Anything stored while not listening is looked at now.
                                inbox.notify_one();
                                outbox.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            m = messages.next() => match m {
                                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                    if n.channel() == INBOX_CHANNEL {
                                        inbox.notify_one();
                                    } else if n.channel() == OUTBOX_CHANNEL {
                                        outbox.send_modify(|n| *n = n.wrapping_add(1));
                                    }
                                }
                                Some(Ok(_)) => {}
                                Some(Err(e)) => {
                                    tracing::debug!(error = %e, "listening connection failed");
                                    break;
                                }
                                None => break,
                            },
                            () = shutdown.cancelled() => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %schema::scrub(&url, &crate::error::error_chain(&e)), "cannot connect to listen");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// No leases to release: a claim is a transaction, gone with the daemon that held it.
    pub(super) async fn release_claims(&self) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Claims the oldest due rows in a transaction that stays open until they are decided.
    pub(super) async fn claim(
        &self,
        now: i64,
        limit: usize,
        _taken: HashSet<i64>,
    ) -> Result<Vec<Claimed>, StoreError> {
        // Claims left undecided too long (their batch failed) are given up.
        let stale: Vec<Claim> = {
            let mut claims = self.lock_claims();
            let old: Vec<i64> = claims
                .iter()
                .filter(|(_, c)| c.at.elapsed() > CLAIM_MAX)
                .map(|(k, _)| *k)
                .collect();
            old.into_iter().filter_map(|k| claims.remove(&k)).collect()
        };
        for claim in stale {
            drop(Object::take(claim.client));
        }
        let client = self.conn().await?;
        client.batch_execute("BEGIN").await.map_err(read_err)?;
        let rows = match batch::claim(&client, now, limit).await {
            Ok(rows) => rows,
            Err(e) => {
                drop(Object::take(client));
                return Err(read_err(e));
            }
        };
        match rows.first() {
            None => {
                client.batch_execute("COMMIT").await.map_err(read_err)?;
            }
            Some(first) => {
                crate::failpoint::failpoint("worker_after_claim");
                self.lock_claims().insert(first.id, Claim { client, at: Instant::now() });
            }
        }
        Ok(rows)
    }

    pub(super) async fn claim_one(&self, id: i64) -> Result<Option<Claimed>, StoreError> {
        let client = self.conn().await?;
        batch::claim_one(&client, id, crate::time::now_ms()).await.map_err(read_err)
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
        let Some(first) = rows.first() else { return Ok(Vec::new()) };
        let claim = self.lock_claims().remove(&first.id);
        let (client, locked) = match claim {
            Some(c) => (c.client, true),
            None => {
                let client = self.conn().await?;
                client.batch_execute("BEGIN").await.map_err(write_err)?;
                (client, false)
            }
        };
        match batch::decide(&client, &rows, &prepared, &*planner, locked).await {
            Ok(out) => Ok(out),
            Err(e) => {
                // The transaction is unusable: the connection goes, and with it the locks.
                drop(Object::take(client));
                Err(write_err(e))
            }
        }
    }

    pub(super) async fn rerun<P, T>(
        &self,
        rows: Vec<Claimed>,
        prepared: Vec<P>,
        reset: Option<(String, String)>,
        dry_run: bool,
        planner: Arc<T>,
    ) -> Result<Option<Vec<Applied<T::Decision>>>, StoreError>
    where
        P: Send + 'static,
        T: Planner<P>,
    {
        let client = self.conn().await?;
        match batch::rerun(&client, &rows, &prepared, reset, dry_run, &*planner).await {
            Ok(out) => Ok(out),
            Err(e) => {
                drop(Object::take(client));
                Err(write_err(e))
            }
        }
    }

    pub(super) async fn review_open(
        &self,
        reviews: Vec<(super::OpenPayment, crate::domain::Action)>,
        sinks: Vec<Arc<str>>,
        now: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let client = self.conn().await?;
        match batch::review_open(&client, &reviews, &sinks, now).await {
            Ok(out) => Ok(out),
            Err(e) => {
                drop(Object::take(client));
                Err(write_err(e))
            }
        }
    }

    /// Runs a read on a pooled connection.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    {
        let client = self.conn().await?;
        f(&client).await.map_err(read_err)
    }

    /// Runs a write on a pooled connection (its own transaction, if it needs one).
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    {
        let client = self.conn().await?;
        match f(&client).await {
            Ok(v) => Ok(v),
            Err(e) => {
                drop(Object::take(client));
                Err(write_err(e))
            }
        }
    }

    pub(super) async fn prune(
        &self,
        retention_days: u64,
        dry_run: bool,
    ) -> Result<(i64, u64), StoreError> {
        let client = self.conn().await?;
        read::prune(&client, retention_days, dry_run).await.map_err(write_err)
    }

    pub(super) async fn prune_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let client = self.conn().await?;
        read::prune_before(&client, cutoff_ms).await.map_err(write_err)
    }

    /// The daemon's pruning task: a minute after start, then hourly, on whichever daemon
    /// takes the pruning lock.
    pub(super) async fn run_pruner(
        self: Arc<Self>,
        retention_days: u64,
        shutdown: CancellationToken,
    ) {
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            wait = crate::store::sqlite::prune::INTERVAL;
            match self.prune(retention_days, false).await {
                Ok((_, 0)) => {}
                Ok((cutoff, n)) => tracing::info!(
                    rows = n,
                    before = %crate::time::format_utc(cutoff),
                    "pruned finished notifications"
                ),
                Err(e) => {
                    tracing::error!(error = %crate::error::error_chain(&e), "pruning failed; trying again later")
                }
            }
        }
    }

    pub(super) async fn owed(
        &self,
        sink: String,
        now: i64,
        limit: usize,
        in_flight: Duration,
    ) -> Result<Vec<Owed>, StoreError> {
        let until = now.saturating_add(i64::try_from(in_flight.as_millis()).unwrap_or(i64::MAX));
        self.lease(sink, now, limit, until).await
    }

    pub(super) async fn lease(
        &self,
        sink: String,
        now: i64,
        limit: usize,
        until: i64,
    ) -> Result<Vec<Owed>, StoreError> {
        self.write(move |c| Box::pin(read::lease(c, sink, now, limit, until))).await
    }

    pub(super) async fn record_attempt(
        &self,
        sink: String,
        action_id: i64,
        attempt: Attempt,
    ) -> Result<bool, StoreError> {
        self.write(move |c| Box::pin(read::record_attempt(c, sink, action_id, attempt))).await
    }

    pub(super) async fn delivery_state(
        &self,
        sink: String,
        action_id: i64,
    ) -> Result<Option<(String, u32, i64)>, StoreError> {
        self.read(move |c| Box::pin(read::delivery_state(c, sink, action_id))).await
    }

    pub(super) async fn next_delivery(&self, sink: String) -> Result<Option<i64>, StoreError> {
        self.read(move |c| {
            Box::pin(async move {
                c.query_one(
                    "SELECT min(next_at) FROM deliveries WHERE sink = $1 \
                     AND state IN ('pending', 'retrying')",
                    &[&sink],
                )
                .await
                .map(|r| r.get(0))
            })
        })
        .await
    }

    pub(super) async fn deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(move |c| Box::pin(read::deliveries(c, filter))).await
    }

    pub(super) async fn attempts(&self, action_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
        self.read(move |c| Box::pin(read::attempts(c, action_id))).await
    }

    pub(super) async fn retry_deliveries(
        &self,
        action_id: Option<i64>,
        dead_only: bool,
        sink: Option<String>,
        now: i64,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE deliveries SET state = CASE WHEN attempts = 0 THEN 'pending' ELSE 'retrying' END, \
                     next_at = $4 \
                     WHERE ($1::bigint IS NULL OR action_id = $1) AND ($3::text IS NULL OR sink = $3) \
                     AND (state = 'dead' OR (NOT $2 AND state = 'retrying'))",
                    &[&action_id, &dead_only, &sink, &now],
                )
                .await
                .map(|n| n as usize)
            })
        })
        .await
    }
}

/// The pool could not give a connection: the database is unreachable or every connection busy.
#[derive(Debug)]
struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no store connection: {}", self.0)
    }
}

impl std::error::Error for Unreachable {}

impl Postgres {
    /// The extra trusted roots for the server's certificate.
    pub(crate) fn tls_ca(&self) -> Option<crate::db_tls::CaPem> {
        self.tls_ca.clone()
    }

    /// The store's URL.
    pub(crate) fn url(&self) -> &DbUrl {
        &self.url
    }
}
