//! The store: the inbox of verified notifications, the payments' states, the outbox of
//! actions, and the verification-failure log.
//!
//! [`Store`] is the one handle the rest of the daemon uses, an API of operations rather than
//! connections: store a notification ([`Store::insert`]), claim due rows, decide a batch in one
//! transaction ([`Store::decide_batch`], see [`batch`]), list and show rows, prune. A backend
//! owns its connections and its transactions; today there is one, SQLite ([`sqlite`]), and the
//! handle dispatches over a closed set so a second (a PostgreSQL store shared by several
//! daemons) is an additive variant.
//!
//! ## What a backend must guarantee
//! - **An insert resolves only once it is durable** (committed and synced): the HTTP layer
//!   answers 2xx on it. Concurrent inserts may share a commit; an error means nothing of the
//!   row was stored.
//! - **One row per `(provider, dedup_key)`**: a repeat delivery adds none and raises the row's
//!   `delivery_count`, and reports the existing id.
//! - **A decision batch is one transaction**: each row's facts are read and its plan written
//!   inside it, so an action, the payment's new state and the row's status are committed
//!   together or not at all; an action whose idempotency key is already in the outbox, or was
//!   spent by a pruned refund, is never written again.
//! - **A claimed row is decided only if it is unchanged** since it was read (status and
//!   attempts), so a replay and the worker never both decide it.
//! - **Rows of one payment are decided in arrival order**: the facts of a row include an
//!   earlier unfinished row of its payment.
//! - **Errors never hold a secret** and are [`StoreError`]s; a backend's own error is kept as
//!   the source.

pub mod batch;
pub mod body;
pub mod copy;
pub mod postgres;
pub(crate) mod queue;
mod rows;
pub mod sqlite;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::batch::{Applied, Planner};
pub use self::rows::{
    Attempt, AttemptRow, Claimed, DeliveryFilter, DeliveryRow, Failure, FailureRecord, InboxRow,
    InboxSummary, ListFilter, NewRow, OpenPayment, OrderPayments, OutboxFilter, OutboxRow, Owed,
    PaymentSummary, ReplaySelection, SinkCounts, SinkGauges, StoreGauges, Stored,
    FAILURE_BODY_PREFIX,
};
use crate::provider::ProviderKind;

/// `[store]`: the SQLite inbox file and its writer, or a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file (created if missing); unused with `url`.
    pub path: PathBuf,
    /// A PostgreSQL store shared by several daemons (`postgres://…`), instead of the file.
    pub url: Option<crate::secret::DbUrl>,
    /// Extra trusted roots (PEM) for the PostgreSQL server's certificate (`tls_ca_file`).
    pub tls_ca: Option<crate::db_tls::CaPem>,
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

/// The histogram of the group commit's durations, which a backend's ingest writer fills and the
/// metrics export: from half a millisecond (a batch on a fast disk) to 8 s (a stalled one).
pub fn commit_histogram() -> prometheus_client::metrics::histogram::Histogram {
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// A backend's own error, shared by every waiter of a failed batch.
pub type BackendError = Arc<dyn std::error::Error + Send + Sync>;

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
        /// Its schema version.
        found: u32,
        /// The newest version this build knows.
        known: u32,
    },
    /// Another daemon holds the store (one daemon owns a SQLite store).
    #[error(
        "store {} is in use by another reconciled daemon ({holder}, holding {}); one daemon \
         owns a SQLite store: stop the other one, or give this one a [store] path of its own",
        path.display(),
        lock.display()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
        /// Who holds it, as the holder wrote it into the lock file.
        holder: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The PostgreSQL store could not be reached, checked or migrated.
    #[error("store {url}: {message}")]
    Connect {
        /// The URL, its password redacted.
        url: String,
        /// What went wrong (never the password).
        message: String,
    },
    /// The PostgreSQL store was migrated by a newer version of reconciled.
    #[error("store {url}: schema version {found} is newer than this build knows ({known}); upgrade reconciled")]
    TooNewDb {
        /// The URL, its password redacted.
        url: String,
        /// Its schema version.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// A write or commit failed; nothing of it was stored.
    #[error("store write failed")]
    Write(#[source] BackendError),
    /// A read failed.
    #[error("store read failed")]
    Read(#[source] BackendError),
    /// The store takes no notifications: it is closed (shutdown), or was opened without an
    /// ingest writer (a command-line tool).
    #[error("store is closed")]
    Closed,
    /// The writer ended without being asked to (a panic); the daemon must restart.
    #[error("the store writer stopped unexpectedly")]
    WriterDied,
}

/// Held by a backend's ingest writer: cancels its token when dropped, unless the writer
/// stopped because it was asked to, so a panicking writer is noticed and the daemon stops
/// instead of answering 503 forever.
pub(crate) struct DeathGuard {
    token: CancellationToken,
    clean: bool,
}

impl DeathGuard {
    pub(crate) fn new(token: CancellationToken) -> DeathGuard {
        DeathGuard { token, clean: false }
    }

    /// The writer ends; `asked` if it was asked to (then the drop cancels nothing).
    pub(crate) fn finished(&mut self, asked: bool) {
        self.clean = asked;
    }
}

impl Drop for DeathGuard {
    fn drop(&mut self) {
        if !self.clean {
            tracing::error!("the store writer stopped unexpectedly");
            self.token.cancel();
        }
    }
}

/// The handle to the store. Cheap to clone; every clone is the same store.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(Arc<sqlite::Sqlite>),
    Postgres(Arc<postgres::Postgres>),
}

impl Store {
    /// Opens (creating and migrating if needed) the store for the daemon: it takes
    /// notifications, decides them and prunes.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        Store::open_as(config, true, true).await
    }

    /// Opens and migrates the store; with `ingest` it takes notifications, with `own` it
    /// takes the daemon's lock on a SQLite store (one daemon owns one; a PostgreSQL store is
    /// shared and has no such lock).
    async fn open_as(config: &StoreConfig, ingest: bool, own: bool) -> Result<Store, StoreError> {
        let backend = match &config.url {
            Some(url) => Backend::Postgres(Arc::new(
                postgres::Postgres::open(url, config.tls_ca.clone(), Some(config), ingest, true)
                    .await?,
            )),
            None => Backend::Sqlite(Arc::new(sqlite::Sqlite::open(config, ingest, own)?)),
        };
        Ok(Store { backend })
    }

    /// Opens (creating and migrating if needed) the store for a command that stores
    /// notifications beside a running daemon (`backfill`): it takes notifications through the
    /// same writer as the daemon's, decides nothing and holds no lock on the store.
    pub async fn open_feeder(config: &StoreConfig) -> Result<Store, StoreError> {
        Store::open_as(config, true, false).await
    }

    /// Opens (creating and migrating if needed) the store for a command that decides or
    /// prunes rows beside a running daemon (`inbox replay`, `inbox prune`): it takes no
    /// notifications.
    pub async fn open_tool(config: &StoreConfig) -> Result<Store, StoreError> {
        Store::open_as(config, false, false).await
    }

    /// Opens the store `config` names to read it (listing, showing, following the outbox):
    /// it must exist, and is not migrated.
    pub async fn open_configured_reader(config: &StoreConfig) -> Result<Store, StoreError> {
        match &config.url {
            Some(url) => Ok(Store {
                backend: Backend::Postgres(Arc::new(
                    postgres::Postgres::open(url, config.tls_ca.clone(), None, false, false)
                        .await?,
                )),
            }),
            None => Store::open_reader(&config.path),
        }
    }

    /// Opens an existing SQLite store read-only (listing, showing, following the outbox).
    pub fn open_reader(path: &Path) -> Result<Store, StoreError> {
        Ok(Store { backend: Backend::Sqlite(Arc::new(sqlite::Sqlite::open_reader(path)?)) })
    }

    /// Whether several daemons may share the store (PostgreSQL). Its rows carry their payment
    /// key from the moment they are stored ([`NewRow::payment_key`]), so each payment's rows
    /// are ordered across daemons, and deliveries are leased ([`Store::owed`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Where the store is, for messages (a URL's password redacted).
    pub fn location(config: &StoreConfig) -> String {
        match &config.url {
            Some(url) => url.redacted(),
            None => config.path.display().to_string(),
        }
    }

    /// Wakes `inbox` when another daemon stores a notification and bumps `outbox` when one
    /// writes actions, until `shutdown` (a store shared by several daemons; otherwise this
    /// daemon's own wake-ups are all there is, and nothing is started).
    pub fn listen(
        &self,
        inbox: Arc<tokio::sync::Notify>,
        outbox: tokio::sync::watch::Sender<u64>,
        shutdown: CancellationToken,
    ) {
        if let Backend::Postgres(s) = &self.backend {
            tokio::spawn(postgres::Postgres::listen(
                s.url().clone(),
                s.tls_ca(),
                inbox,
                outbox,
                shutdown,
            ));
        }
    }

    // Taking notifications.

    /// Stores a verified notification; resolves once it is durable.
    pub async fn insert(&self, row: NewRow) -> Result<Stored, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.insert(row).await,
            Backend::Postgres(s) => s.insert(row).await,
        }
    }

    /// Records a failed verification. Best effort: dropped when the store is busy, so a flood
    /// of bad requests cannot crowd out good ones.
    pub fn record_failure(&self, failure: FailureRecord) {
        match &self.backend {
            Backend::Sqlite(s) => s.record_failure(failure),
            Backend::Postgres(s) => s.record_failure(failure),
        }
    }

    /// Checks that the store can commit a write right now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.probe().await,
            Backend::Postgres(s) => s.probe().await,
        }
    }

    /// Resolves if the store's writer ends unexpectedly.
    pub async fn died(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.died().await,
            Backend::Postgres(s) => s.died().await,
        }
    }

    /// Whether the store's writer ended unexpectedly.
    pub fn is_dead(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(s) => s.is_dead(),
            Backend::Postgres(s) => s.is_dead(),
        }
    }

    /// Commits everything queued so far and stops taking notifications. Later inserts fail
    /// with [`StoreError::Closed`].
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(s) => s.close().await,
            Backend::Postgres(s) => s.close().await,
        }
    }

    /// A small fact kept in the store (such as a backfill's cursor), if set.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    use rusqlite::OptionalExtension;
                    c.query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| r.get(0))
                        .optional()
                })
                .await
            }
            Backend::Postgres(s) => {
                s.read(move |c| {
                    Box::pin(async move {
                        let r =
                            c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key]).await?;
                        Ok(r.map(|r| r.get(0)))
                    })
                })
                .await
            }
        }
    }

    /// Takes a periodic job's turn: records now under `key` (in `meta`) and answers true, unless
    /// a turn was taken there less than `period` ago (by this daemon or another sharing the
    /// store), when it changes nothing and answers false. Atomic: of daemons asking at once, one
    /// gets the turn.
    pub async fn take_turn(&self, key: &str, period: Duration) -> Result<bool, StoreError> {
        let now = crate::time::now_ms();
        let before = now.saturating_sub(i64::try_from(period.as_millis()).unwrap_or(i64::MAX));
        self.put_meta(key, &now.to_string(), Some(before)).await
    }

    /// Keeps a small fact in the store; resolves once it is committed.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.put_meta(key, value, None).await.map(drop)
    }

    /// Writes `value` under `key` in `meta`; with `if_at_most`, only over a value that is a
    /// number no greater than it (or is not a number). Answers whether it was written.
    async fn put_meta(
        &self,
        key: &str,
        value: &str,
        if_at_most: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        const UPSERT: &str = "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        match &self.backend {
            Backend::Sqlite(s) => {
                let sql = match if_at_most {
                    Some(_) => format!("{UPSERT} WHERE CAST(meta.value AS INTEGER) <= $3"),
                    None => UPSERT.to_owned(),
                };
                s.write_with(move |c| match if_at_most {
                    Some(n) => c.execute(&sql, rusqlite::params![key, value, n]),
                    None => c.execute(&sql, rusqlite::params![key, value]),
                })
                .await
                .map(|n| n == 1)
            }
            Backend::Postgres(s) => {
                let sql = match if_at_most {
                    Some(_) => format!(
                        "{UPSERT} WHERE CASE WHEN meta.value ~ '^[0-9]+$' \
                         THEN meta.value::bigint ELSE 0 END <= $3"
                    ),
                    None => UPSERT.to_owned(),
                };
                s.write(move |c| {
                    Box::pin(async move {
                        match if_at_most {
                            Some(n) => c.execute(&sql, &[&key, &value, &n]).await,
                            None => c.execute(&sql, &[&key, &value]).await,
                        }
                    })
                })
                .await
                .map(|n| n == 1)
            }
        }
    }

    // Deciding.

    /// Makes rows an earlier version left claimed (`processing`) due again; returns how many.
    pub async fn release_claims(&self) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.release_claims().await,
            Backend::Postgres(s) => s.release_claims().await,
        }
    }

    /// The oldest due rows, at most `limit`, leaving out the ids in `taken` (rows read by an
    /// earlier claim and not decided yet). The claim is held by the caller: nothing is written.
    pub async fn claim(
        &self,
        now: i64,
        limit: usize,
        taken: HashSet<i64>,
    ) -> Result<Vec<Claimed>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.claim(now, limit, taken).await,
            Backend::Postgres(s) => s.claim(now, limit, taken).await,
        }
    }

    /// One row, whatever its status, read as a claim (for a replay).
    pub async fn claim_one(&self, id: i64) -> Result<Option<Claimed>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.claim_one(id).await,
            Backend::Postgres(s) => s.claim_one(id).await,
        }
    }

    /// The order our records matched a payment to.
    pub async fn order_of_payment(
        &self,
        provider: ProviderKind,
        payment_id: &str,
    ) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.order_of_payment(provider, payment_id.to_owned()).await,
            Backend::Postgres(s) => {
                let (provider, id) = (provider.as_str(), payment_id.to_owned());
                s.read(move |c| {
                    Box::pin(async move {
                        let r = c
                            .query_opt(
                                "SELECT order_id FROM payments WHERE provider = $1 AND payment_id = $2",
                                &[&provider, &id],
                            )
                            .await?;
                        Ok(r.and_then(|r| r.get::<_, Option<String>>(0)))
                    })
                })
                .await
            }
        }
    }

    /// When the next waiting row falls due (unix ms), if any does.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.next_due().await,
            Backend::Postgres(s) => {
                s.read(|c| {
                    Box::pin(async move {
                        let r = c
                            .query_one(
                                "SELECT min(next_attempt_at) FROM inbox \
                                 WHERE status IN ('pending', 'parked')",
                                &[],
                            )
                            .await?;
                        Ok(r.get(0))
                    })
                })
                .await
            }
        }
    }

    /// Plans and writes a batch of claimed rows in one transaction (see [`batch`]). Returns,
    /// per row, the planner's decision and the actions newly written.
    pub async fn decide_batch<P, T>(
        &self,
        rows: Vec<Claimed>,
        prepared: Vec<P>,
        planner: Arc<T>,
    ) -> Result<Vec<Applied<T::Decision>>, StoreError>
    where
        P: Send + 'static,
        T: Planner<P>,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.decide_batch(rows, prepared, planner).await,
            Backend::Postgres(s) => s.decide_batch(rows, prepared, planner).await,
        }
    }

    // Pruning.

    /// The cutoff (unix ms) of a prune with `retention_days` now, and how many rows it would
    /// delete (`dry_run`) or deleted.
    pub async fn prune(
        &self,
        retention_days: u64,
        dry_run: bool,
    ) -> Result<(i64, u64), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune(retention_days, dry_run).await,
            Backend::Postgres(s) => s.prune(retention_days, dry_run).await,
        }
    }

    /// Deletes the finished rows (and their actions) older than `cutoff_ms`; returns how many.
    pub async fn prune_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.prune_before(cutoff_ms).await,
            Backend::Postgres(s) => s.prune_before(cutoff_ms).await,
        }
    }

    /// The daemon's pruning task: a minute after start, then hourly, until `shutdown`.
    pub async fn run_pruner(self, retention_days: u64, shutdown: CancellationToken) {
        match self.backend {
            Backend::Sqlite(s) => sqlite::prune::run(s, retention_days, shutdown).await,
            Backend::Postgres(s) => s.run_pruner(retention_days, shutdown).await,
        }
    }

    // Reading.

    /// Inbox rows in arrival order; with [`ListFilter::last`], only the newest of them (still
    /// in arrival order).
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<InboxSummary>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(move |c| sqlite::read::list(c, &filter)).await,
            Backend::Postgres(s) => {
                s.read(move |c| Box::pin(postgres::read::list(c, filter))).await
            }
        }
    }

    /// One inbox row with its headers and raw body.
    pub async fn show(&self, id: i64) -> Result<Option<InboxRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(move |c| sqlite::read::show(c, id)).await,
            Backend::Postgres(s) => {
                match s.read(move |c| Box::pin(postgres::read::show(c, id))).await? {
                    None => Ok(None),
                    Some(Ok(row)) => Ok(Some(row)),
                    Some(Err(e)) => Err(StoreError::Read(Arc::new(e))),
                }
            }
        }
    }

    /// The inbox row holding a provider's dedup key, if there is one.
    pub async fn find(
        &self,
        provider: crate::provider::ProviderKind,
        dedup_key: &str,
    ) -> Result<Option<InboxSummary>, StoreError> {
        let key = dedup_key.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| sqlite::read::find(c, provider.as_str(), &key)).await
            }
            Backend::Postgres(s) => {
                s.read(move |c| {
                    Box::pin(async move { postgres::read::find(c, provider.as_str(), &key).await })
                })
                .await
            }
        }
    }

    /// The actions an inbox row caused, in order.
    pub async fn actions_of(&self, inbox_id: i64) -> Result<Vec<OutboxRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(move |c| sqlite::read::actions_of(c, inbox_id)).await,
            Backend::Postgres(s) => {
                s.read(move |c| Box::pin(postgres::read::actions_of(c, inbox_id))).await
            }
        }
    }

    /// The payment (of `provider`) that our records say paid `order_id`, the latest if several.
    pub async fn paying_payment(
        &self,
        provider: crate::provider::ProviderKind,
        order_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let order = order_id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| sqlite::read::paying_payment(c, provider.as_str(), &order)).await
            }
            Backend::Postgres(s) => {
                s.read(move |c| {
                    Box::pin(async move {
                        postgres::read::paying_payment(c, provider.as_str(), &order).await
                    })
                })
                .await
            }
        }
    }

    /// The number of inbox rows.
    pub async fn count(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(sqlite::read::count).await,
            Backend::Postgres(s) => {
                s.read(|c| {
                    Box::pin(async move {
                        Ok(c.query_one("SELECT count(*) FROM inbox", &[]).await?.get(0))
                    })
                })
                .await
            }
        }
    }

    /// Recorded verification failures, newest first.
    pub async fn failures(&self, limit: u64) -> Result<Vec<Failure>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(move |c| sqlite::read::failures(c, limit)).await,
            Backend::Postgres(s) => {
                s.read(move |c| Box::pin(postgres::read::failures(c, limit))).await
            }
        }
    }

    /// Outbox rows in order: live actions, or with `filter.shadow` the shadow ones.
    pub async fn outbox(&self, filter: OutboxFilter) -> Result<Vec<OutboxRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(move |c| sqlite::read::outbox(c, &filter)).await,
            Backend::Postgres(s) => {
                s.read(move |c| Box::pin(postgres::read::outbox(c, filter))).await
            }
        }
    }

    /// The highest outbox id, or 0.
    pub async fn outbox_last_id(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(sqlite::read::outbox_last_id).await,
            Backend::Postgres(s) => {
                s.read(|c| {
                    Box::pin(async move {
                        Ok(c.query_one("SELECT coalesce(max(id), 0) FROM outbox", &[])
                            .await?
                            .get(0))
                    })
                })
                .await
            }
        }
    }

    // Delivering actions to sinks.

    /// The deliveries `sink` is owed and that are due at `now`, oldest first, at most `limit`,
    /// leaving out those held back behind an earlier delivery of the same order.
    /// A store shared by several daemons (PostgreSQL) leases what it returns for `in_flight`, so
    /// that no other daemon delivers it meanwhile; one daemon's SQLite store needs no lease.
    pub async fn owed(
        &self,
        sink: &str,
        now: i64,
        limit: usize,
        in_flight: Duration,
    ) -> Result<Vec<Owed>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.owed(sink.to_owned(), now, limit).await,
            Backend::Postgres(s) => s.owed(sink.to_owned(), now, limit, in_flight).await,
        }
    }

    /// Records an attempt to deliver an action to `sink` and the delivery's new state; false
    /// if the delivery was not owed (already delivered, or none).
    pub async fn record_attempt(
        &self,
        sink: &str,
        action_id: i64,
        attempt: Attempt,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.record_attempt(sink.to_owned(), action_id, attempt).await,
            Backend::Postgres(s) => s.record_attempt(sink.to_owned(), action_id, attempt).await,
        }
    }

    /// As [`Store::owed`], and leases what it returns until `until` (unix ms): it is not owed
    /// again before then (a pull sink's fetch).
    pub async fn lease(
        &self,
        sink: &str,
        now: i64,
        limit: usize,
        until: i64,
    ) -> Result<Vec<Owed>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.lease(sink.to_owned(), now, limit, until).await,
            Backend::Postgres(s) => s.lease(sink.to_owned(), now, limit, until).await,
        }
    }

    /// One delivery's state, attempts and its action's creation time (unix ms), if it exists.
    pub async fn delivery_state(
        &self,
        sink: &str,
        action_id: i64,
    ) -> Result<Option<(String, u32, i64)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.delivery_state(sink.to_owned(), action_id).await,
            Backend::Postgres(s) => s.delivery_state(sink.to_owned(), action_id).await,
        }
    }

    /// An order's payments and whether a live refund or review action names it.
    pub async fn order_payments(&self, order_id: &str) -> Result<OrderPayments, StoreError> {
        let order_id = order_id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => s.read(move |c| sqlite::read::order_payments(c, &order_id)).await,
            Backend::Postgres(s) => {
                s.read(move |c| Box::pin(postgres::read::order_payments(c, order_id))).await
            }
        }
    }

    /// One action by id.
    pub async fn action(&self, id: i64) -> Result<Option<OutboxRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(move |c| sqlite::read::action(c, id)).await,
            Backend::Postgres(s) => s.read(move |c| Box::pin(postgres::read::action(c, id))).await,
        }
    }

    /// When `sink`'s next owed delivery falls due (unix ms), if it is owed any.
    pub async fn next_delivery(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.next_delivery(sink.to_owned()).await,
            Backend::Postgres(s) => s.next_delivery(sink.to_owned()).await,
        }
    }

    /// Deliveries, by action and sink.
    pub async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.deliveries(filter).await,
            Backend::Postgres(s) => s.deliveries(filter).await,
        }
    }

    /// The ids of the rows a bulk replay selects, above `after`, in order, at most `limit`.
    pub async fn select(
        &self,
        selection: ReplaySelection,
        after: i64,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| sqlite::read::select(c, &selection, after, limit)).await
            }
            Backend::Postgres(s) => {
                s.read(move |c| Box::pin(postgres::read::select(c, selection, after, limit))).await
            }
        }
    }

    /// Every row of the payment row `id` was decided under (just `id` if none), in order, with
    /// that payment (`provider`, payment key).
    pub async fn payment_group(
        &self,
        id: i64,
    ) -> Result<(Vec<i64>, Option<(String, String)>), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    Ok(match sqlite::read::payment_of_row(c, id)? {
                        Some((provider, key)) => {
                            let ids = sqlite::read::rows_of_payment(c, &provider, &key)?;
                            (ids, Some((provider, key)))
                        }
                        None => (vec![id], None),
                    })
                })
                .await
            }
            Backend::Postgres(s) => {
                s.read(move |c| Box::pin(postgres::read::payment_group(c, id))).await
            }
        }
    }

    /// Decides `rows` (one payment's, in order) again as if the payment had never been seen
    /// (see [`sqlite::batch::rerun`]); with `dry_run` nothing is kept. `None` if the payment
    /// has other rows by now.
    pub async fn rerun<P, T>(
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
        match &self.backend {
            Backend::Sqlite(s) => {
                s.write_with(move |c| {
                    let reset = reset.as_ref().map(|(p, k)| (p.as_str(), k.as_str()));
                    sqlite::batch::rerun(c, &rows, &prepared, reset, dry_run, &*planner)
                })
                .await
            }
            Backend::Postgres(s) => s.rerun(rows, prepared, reset, dry_run, planner).await,
        }
    }

    /// Payments left open since before `before_ms` and not reviewed for their status yet.
    pub async fn open_payments(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<OpenPayment>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| sqlite::read::open_payments(c, before_ms, limit)).await
            }
            Backend::Postgres(s) => {
                s.read(move |c| Box::pin(postgres::read::open_payments(c, before_ms, limit))).await
            }
        }
    }

    /// Payments of `provider` whose id starts with `id_prefix`, open (pending, or authorized)
    /// since before `before_ms`, not inquired about since then and fewer than `max` times
    /// (see [`crate::ask::inquire`]); the longest open first, at most `limit`.
    pub async fn to_inquire(
        &self,
        provider: ProviderKind,
        id_prefix: &str,
        before_ms: i64,
        max: u32,
        limit: usize,
    ) -> Result<Vec<OpenPayment>, StoreError> {
        let (prefix, provider_name) = (id_prefix.to_owned(), provider.as_str());
        let (max, limit) = (i64::from(max), i64::try_from(limit).unwrap_or(i64::MAX));
        // payment id, status, order, since, last inbox row, its event id, its endpoint.
        type Open = (String, String, Option<String>, i64, i64, String, String);
        let rows: Vec<Open> =
            match &self.backend {
                Backend::Sqlite(s) => {
                    s.read(move |c| {
                        let mut stmt = c.prepare_cached(
                            "SELECT p.payment_id, p.status, p.order_id, p.updated_at, p.last_inbox_id, \
                             i.dedup_key, i.endpoint FROM payments p INDEXED BY payments_open \
                             JOIN inbox i ON i.id = p.last_inbox_id \
                             WHERE (p.status = 'pending' OR p.status = 'authorized') \
                             AND p.updated_at < ?1 AND p.provider = ?2 \
                             AND substr(p.payment_id, 1, length(?3)) = ?3 \
                             AND p.inquiries < ?4 AND (p.inquired_at IS NULL OR p.inquired_at < ?1) \
                             ORDER BY p.updated_at LIMIT ?5",
                        )?;
                        let rows = stmt.query_map(
                            rusqlite::params![before_ms, provider_name, prefix, max, limit],
                            |r| {
                                Ok((
                                    r.get(0)?,
                                    r.get(1)?,
                                    r.get(2)?,
                                    r.get(3)?,
                                    r.get(4)?,
                                    r.get(5)?,
                                    r.get(6)?,
                                ))
                            },
                        )?;
                        rows.collect()
                    })
                    .await?
                }
                Backend::Postgres(s) => {
                    s.read(move |c| {
                        Box::pin(async move {
                            let rows = c
                                .query(
                                    "SELECT p.payment_id, p.status, p.order_id, p.updated_at, \
                                     p.last_inbox_id, i.dedup_key, i.endpoint \
                                     FROM payments p JOIN inbox i ON i.id = p.last_inbox_id \
                                     WHERE p.status IN ('pending', 'authorized') \
                                     AND p.updated_at < $1 AND p.provider = $2 \
                                     AND starts_with(p.payment_id, $3) \
                                     AND p.inquiries < $4 \
                                     AND (p.inquired_at IS NULL OR p.inquired_at < $1) \
                                     ORDER BY p.updated_at LIMIT $5",
                                    &[&before_ms, &provider_name, &prefix, &(max as i32), &limit],
                                )
                                .await?;
                            Ok(rows
                                .iter()
                                .map(|r| {
                                    (
                                        r.get(0),
                                        r.get(1),
                                        r.get(2),
                                        r.get(3),
                                        r.get(4),
                                        r.get(5),
                                        r.get(6),
                                    )
                                })
                                .collect())
                        })
                    })
                    .await?
                }
            };
        Ok(rows
            .into_iter()
            .filter_map(|(payment_id, status, order_id, since_ms, inbox_id, event_id, endpoint)| {
                Some(OpenPayment {
                    provider,
                    payment_id,
                    status: crate::domain::PaymentStatus::parse(&status)?,
                    order_id,
                    since_ms,
                    inbox_id,
                    event_id,
                    endpoint,
                })
            })
            .collect())
    }

    /// Records an inquiry about a payment at `at_ms`.
    pub async fn inquired(
        &self,
        provider: ProviderKind,
        payment_id: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let (provider, id) = (provider.as_str(), payment_id.to_owned());
        match &self.backend {
            Backend::Sqlite(s) => {
                s.write_with(move |c| {
                    c.execute(
                        "UPDATE payments SET inquiries = inquiries + 1, inquired_at = ?3 \
                         WHERE provider = ?1 AND payment_id = ?2",
                        rusqlite::params![provider, id, at_ms],
                    )
                    .map(drop)
                })
                .await
            }
            Backend::Postgres(s) => {
                s.write(move |c| {
                    Box::pin(async move {
                        c.execute(
                            "UPDATE payments SET inquiries = inquiries + 1, inquired_at = $3 \
                             WHERE provider = $1 AND payment_id = $2",
                            &[&provider, &id, &at_ms],
                        )
                        .await
                        .map(drop)
                    })
                })
                .await
            }
        }
    }

    /// Writes the reviews of payments left open (each only if its payment has not changed
    /// since it was read), delivered to `sinks`; which were written.
    pub async fn review_open(
        &self,
        reviews: Vec<(OpenPayment, crate::domain::Action)>,
        sinks: Vec<Arc<str>>,
    ) -> Result<Vec<bool>, StoreError> {
        let now = crate::time::now_ms();
        match &self.backend {
            Backend::Sqlite(s) => {
                s.write_with(move |c| sqlite::batch::review_open(c, &reviews, &sinks, now)).await
            }
            Backend::Postgres(s) => s.review_open(reviews, sinks, now).await,
        }
    }

    /// What the metrics read at each scrape (see [`StoreGauges`]).
    pub async fn gauges(&self) -> Result<StoreGauges, StoreError> {
        let now = crate::time::now_ms();
        match &self.backend {
            Backend::Sqlite(s) => s.read(move |c| sqlite::read::gauges(c, now)).await,
            Backend::Postgres(s) => s.read(move |c| Box::pin(postgres::read::gauges(c, now))).await,
        }
    }

    /// Each group commit's duration, in seconds; `None` for a store that takes no
    /// notifications.
    pub fn commit_seconds(&self) -> Option<prometheus_client::metrics::histogram::Histogram> {
        match &self.backend {
            Backend::Sqlite(s) => s.commit_seconds(),
            Backend::Postgres(s) => s.commit_seconds(),
        }
    }

    /// Each sink's deliveries by state.
    pub async fn sink_counts(&self) -> Result<Vec<SinkCounts>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read(sqlite::read::sink_counts).await,
            Backend::Postgres(s) => s.read(|c| Box::pin(postgres::read::sink_counts(c))).await,
        }
    }

    /// The attempts to deliver one action, in order.
    pub async fn attempts(&self, action_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.attempts(action_id).await,
            Backend::Postgres(s) => s.attempts(action_id).await,
        }
    }

    /// Makes dead (and, unless `dead_only`, retrying) deliveries due now; of one action and/or
    /// one sink if given. Returns how many.
    pub async fn retry_deliveries(
        &self,
        action_id: Option<i64>,
        dead_only: bool,
        sink: Option<&str>,
    ) -> Result<usize, StoreError> {
        let now = crate::time::now_ms();
        match &self.backend {
            Backend::Sqlite(s) => {
                s.retry_deliveries(action_id, dead_only, sink.map(str::to_owned), now).await
            }
            Backend::Postgres(s) => {
                s.retry_deliveries(action_id, dead_only, sink.map(str::to_owned), now).await
            }
        }
    }
}
