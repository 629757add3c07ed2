//! The worker: claims stored notifications, finds their orders, decides, and commits the
//! actions, the payment state and the row's new status in one transaction.
//!
//! ## Concurrency
//! A claim is held in memory by the pass that read the rows: nothing is written to claim them,
//! and the decision's transaction writes a row only if its status and attempts are unchanged
//! since it was read. One daemon owns a store and writes its batches one after another; rows
//! a crashed run was deciding are still due and are simply taken again. Due rows are claimed
//! in batches in arrival order; a batch's orders are looked up with no transaction open (the
//! shop may be slow), then the whole batch is decided and written in one
//! `BEGIN IMMEDIATE … COMMIT`, reading payment state inside it so rows of the same payment in
//! one batch see each other. The steps overlap: while one batch is written, the next is
//! parsed and looked up (see [`Worker::work_through`]); a batch is still written only after
//! the one before it committed. A refund that carries no order reference is matched through
//! the payment's earlier notification (`payments.order_id`): if that notification is in the
//! batch just before it, still being written, the lookup does not see it yet. A refund or
//! dispute names the order all the same (payment state is read inside the transaction); a
//! payment event is parked and matched on its retry, as for two rows of one batch.
//!
//! A row whose payment has an earlier row still unfinished (parked, retrying) waits behind
//! it: one payment's notifications are decided in order of arrival. Every action has a UNIQUE
//! idempotency key, so a crash after the commit and a replay emit nothing twice.
//!
//! The worker wakes when the ingest path stores a row ([`tokio::sync::Notify`]) or when the
//! earliest parked row falls due; it does not poll on a fixed tick.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::decide::{decide, Action, Decision, Facts, Outcome, PaymentState, PaymentStatus};
use crate::endpoint::Endpoints;
use crate::provider::{self, Confirmation, Kind, Notification, ProviderKind};
use crate::reconcile::policy::{Policy, WorkerConfig};
use crate::shop::ShopConfig;
use crate::shop::{cut_reference, Lookup, Order, OrderSource, ShopError};

/// Longest sleep with nothing due: a safety net for rows written by other processes.
const IDLE_WAKE: Duration = Duration::from_secs(30);
/// Confirmations (IPN postbacks) of one batch in flight at once.
const CONFIRMATIONS_AT_ONCE: usize = 8;
/// Confirmations per pass; further unconfirmed rows wait for the next pass.
const CONFIRMATIONS_PER_PASS: usize = 16;
/// Wait before reconnecting to an unreachable shop database.
const RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// The condition of the `inbox_due` partial index (schema.sql, migration 9), word for word:
/// SQLite uses a partial index only for a query that repeats its condition.
macro_rules! unfinished {
    () => {
        "(status = 'pending' OR status = 'parked' OR status = 'processing')"
    };
}

/// A claimed inbox row.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Row id.
    pub id: i64,
    /// Which provider sent it; `None` for a name this build does not know.
    pub provider: Option<ProviderKind>,
    /// The endpoint it arrived on.
    pub endpoint: String,
    /// First delivery, unix ms.
    pub received_at: i64,
    /// When the worker first tried it, unix ms.
    pub first_tried_at: i64,
    /// The raw body (empty if it could not be read back; see `unreadable`).
    pub body: Vec<u8>,
    /// Why the stored body could not be turned back into the raw bytes.
    pub unreadable: Option<String>,
    /// Failed attempts before this one.
    pub attempts: u32,
    /// When the provider confirmed it (see [`Provider::confirm`](crate::provider::Provider::confirm)).
    pub verified_at: Option<i64>,
    /// Its status when it was read: the decision is written only if it is still the same.
    pub status: String,
}

impl Claimed {
    /// Whether the row must be confirmed with its provider before anything is decided on it.
    fn needs_confirmation(&self) -> bool {
        self.provider.is_some_and(|p| p.confirmed_by().is_some()) && self.verified_at.is_none()
    }
}

/// A claimed row after the no-transaction phase.
#[derive(Debug)]
enum Prepared {
    /// The body could not be read: it will not get better by retrying.
    Unreadable(String),
    /// The provider refused to confirm it (PayPal answered INVALID to the IPN postback): not
    /// a genuine notification.
    Refused(String),
    /// The confirmation failed (network, timeout, an unexpected answer): try again later. The
    /// payment it names (read, not acted on) makes later rows of that payment wait behind it.
    /// `counts`: whether the failure uses up an attempt (not when the provider is down).
    Unconfirmed { error: String, payment_key: Option<String>, counts: bool },
    /// Parsed, and the order looked up (or the lookup failed). `verified` is set when the
    /// row was confirmed by its provider in this pass (recorded with the row).
    Ready { n: Box<Notification>, order: Result<Option<Order>, ShopError>, verified: bool },
}

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    /// Rows claimed.
    pub claimed: usize,
    /// Actions newly written to the outbox.
    pub actions: usize,
}

/// The worker's fixed parts.
#[derive(Debug)]
pub struct Worker {
    /// Its own connection to the store.
    conn: Arc<Mutex<Connection>>,
    /// The shop's order query settings.
    shop: ShopConfig,
    /// Decision policy.
    policy: Policy,
    /// Retries, batch size.
    config: WorkerConfig,
    /// The endpoints' providers, by endpoint name: they parse and confirm stored rows.
    endpoints: Arc<Endpoints>,
}

impl Worker {
    /// A worker over the store at `conn`.
    pub fn new(
        conn: Connection,
        endpoints: Arc<Endpoints>,
        shop: ShopConfig,
        policy: Policy,
        config: WorkerConfig,
    ) -> Worker {
        // A batch dirties a few hundred pages: with SQLite's default 2 MB cache they would be
        // spilled to the WAL mid-transaction, written twice. Best effort: only speed.
        if let Err(e) = conn.execute_batch("PRAGMA cache_size = -16384") {
            tracing::debug!(error = %e, "worker page cache left at its default");
        }
        Worker { conn: Arc::new(Mutex::new(conn)), shop, policy, config, endpoints }
    }

    /// Runs until `shutdown`: connects to the shop (retrying while it is unreachable), then
    /// processes due rows whenever woken.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let source = loop {
            match OrderSource::connect(&self.shop).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::error!(error = %e, "shop database unreachable; notifications stay stored and wait");
                    tokio::select! {
                        () = tokio::time::sleep(RECONNECT_DELAY) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        };
        // One daemon owns a store: rows still `processing` were claimed under a lease by a run of
        // an earlier version that crashed. Release them at once instead of after the lease.
        match self
            .blocking(|_, conn| {
                conn.execute(
                    "UPDATE inbox SET status = 'pending', claimed_by = NULL, claimed_until = NULL WHERE status = 'processing'",
                    [],
                )
            })
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(rows = n, "released rows claimed by a previous run that stopped mid-batch"),
            Err(e) => tracing::error!(error = %e, "cannot release rows of a previous run; they wait for their lease"),
        }
        tracing::info!(driver = ?self.shop.driver, "reconciliation worker started");
        let source = Arc::new(source);
        loop {
            let wait = match self.work_through(&source, &shutdown).await {
                Ok(_) if shutdown.is_cancelled() => break,
                Ok(_) => self.next_due().await.unwrap_or(IDLE_WAKE),
                Err(e) => {
                    tracing::error!(error = %e, "worker pass failed; retrying");
                    self.config.retry_base
                }
            };
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(wait.min(IDLE_WAKE)) => {}
                () = shutdown.cancelled() => break,
            }
        }
        if let Ok(s) = Arc::try_unwrap(source) {
            s.close().await;
        }
        tracing::info!("reconciliation worker stopped");
    }

    /// Works through the rows that are due, batch after batch, until none is left or
    /// `shutdown` is cancelled, as a pipeline: while one batch is decided and written (on the
    /// store's thread), the next is parsed and its orders looked up, and the one after it is
    /// claimed as soon as the write commits. A batch is always decided after the one before it
    /// committed, so it sees that batch's payments and waits behind its unfinished rows.
    pub async fn work_through(
        &self,
        source: &OrderSource,
        shutdown: &CancellationToken,
    ) -> Result<PassStats, rusqlite::Error> {
        let mut stats = PassStats::default();
        let none = HashSet::new();
        let now = crate::time::now_ms();
        // Claimed, to be prepared.
        let mut next = self.blocking(move |w, conn| w.claim(conn, now, &none)).await?;
        // Prepared, to be decided and written.
        let mut ready: Option<(Vec<Claimed>, Vec<Prepared>)> = None;
        while !next.is_empty() || ready.is_some() {
            let taken: HashSet<i64> = next.iter().map(|r| r.id).collect();
            let batch = ready.take();
            let write = self.blocking(move |w, conn| {
                let (count, actions) = match batch {
                    Some((rows, prepared)) => {
                        let out = w.apply(conn, &rows, prepared, Mode::Worker)?;
                        (rows.len(), out.iter().map(|(_, a)| a.len()).sum())
                    }
                    None => (0, 0),
                };
                let more = w.claim(conn, crate::time::now_ms(), &taken)?;
                Ok((count, actions, more))
            });
            let prepare = async {
                if next.is_empty() {
                    Vec::new()
                } else {
                    self.prepare(source, &next, true).await
                }
            };
            let (written, prepared) = tokio::join!(write, prepare);
            let (count, actions, more) = written?;
            stats.claimed += count;
            stats.actions += actions;
            if shutdown.is_cancelled() {
                // What was claimed and prepared is still due: the next run takes it.
                break;
            }
            if !next.is_empty() {
                ready = Some((std::mem::take(&mut next), prepared));
            }
            next = more;
        }
        Ok(stats)
    }

    /// Re-runs the decision for one row through the current code. With `dry_run` nothing is
    /// written; otherwise the row is processed as the worker would, and (being idempotent)
    /// emits only what was not emitted before. Returns the decision and the new actions.
    pub async fn replay(
        &self,
        source: &OrderSource,
        id: i64,
        dry_run: bool,
    ) -> Result<Option<(Decision, Vec<Action>)>, rusqlite::Error> {
        let row = self
            .blocking(move |_, conn| {
                conn.query_row(
                    "SELECT id, provider, endpoint, received_at, coalesce(first_tried_at, ?2), body, attempts, \
                     verified_at, status, body_encoding, body_len FROM inbox WHERE id = ?1",
                    params![id, crate::time::now_ms()],
                    claimed_row,
                )
                .optional()
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let prepared = self.prepare(source, std::slice::from_ref(&row), !dry_run).await;
        let mode = if dry_run { Mode::DryRun } else { Mode::Replay };
        let mut out = self.blocking(move |w, conn| w.apply(conn, &[row], prepared, mode)).await?;
        Ok(out.pop().map(|(d, a)| {
            let d = d.unwrap_or_else(|| Decision {
                outcome: Outcome::Park,
                actions: vec![],
                payment: None,
                note: "not decided: see the row's status and last error (inbox show)".into(),
            });
            (d, a)
        }))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WorkerRef, &mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> rusqlite::Result<T> {
        let conn = self.conn.clone();
        let w = WorkerRef { policy: self.policy, config: self.config };
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&w, &mut conn)
        })
        .await
        .map_err(|e| {
            rusqlite::Error::ToSqlConversionFailure(format!("worker task failed: {e}").into())
        })?
    }

    /// Parses each row and looks its order up; no transaction is open meanwhile. Lookups are
    /// deduplicated and run concurrently, up to the shop's pool size.
    ///
    /// Rows whose provider confirms notifications (IPN) are confirmed first (when `confirm`;
    /// a dry run does not) and nothing is decided on an unconfirmed one. At most
    /// [`CONFIRMATIONS_PER_PASS`] are confirmed per pass, so a slow provider holds up the rest
    /// of the batch for a bounded time.
    async fn prepare(
        &self,
        source: &OrderSource,
        rows: &[Claimed],
        confirm: bool,
    ) -> Vec<Prepared> {
        use futures_util::stream::{self, StreamExt};
        let not_now =
            |message: &str| Confirmation::Failed { message: message.into(), transient: true };
        let mut answers: HashMap<i64, Confirmation> = HashMap::new();
        let mut pending = Vec::new();
        for row in rows.iter().filter(|r| r.needs_confirmation() && r.unreadable.is_none()) {
            if !confirm {
                answers.insert(row.id, not_now("dry run: not confirmed with the provider"));
            } else if pending.len() == CONFIRMATIONS_PER_PASS {
                answers.insert(row.id, not_now("waiting for its turn to be confirmed"));
            } else {
                pending.push((row.id, row.endpoint.clone(), row.body.clone()));
            }
        }
        let answered: Vec<(i64, Confirmation)> =
            stream::iter(pending)
                .map(|(id, endpoint, body)| async move {
                    (id, self.confirm(id, &endpoint, &body).await)
                })
                .buffer_unordered(CONFIRMATIONS_AT_ONCE)
                .collect()
                .await;
        answers.extend(answered);
        let mut parsed = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(e) = &row.unreadable {
                parsed.push(Err(Prepared::Unreadable(e.clone())));
                continue;
            }
            match answers.get(&row.id) {
                None | Some(Confirmation::Confirmed) => {}
                Some(Confirmation::Refused(why)) => {
                    parsed.push(Err(Prepared::Refused(why.clone())));
                    continue;
                }
                Some(Confirmation::Failed { message, transient }) => {
                    let payment_key =
                        self.parse(row).ok().map(|n| n.payment_id.unwrap_or(n.event_id));
                    parsed.push(Err(Prepared::Unconfirmed {
                        error: message.clone(),
                        payment_key,
                        counts: !transient,
                    }));
                    continue;
                }
            }
            match self.parse(row) {
                Err(e) => parsed.push(Err(Prepared::Unreadable(e))),
                Ok(n) if n.kind == Kind::Ignored => parsed.push(Ok((n, None))),
                Ok(n) => {
                    let mut reference = n
                        .merchant_reference
                        .as_deref()
                        .map(|r| cut_reference(self.shop.reference_pattern.as_ref(), r));
                    if reference.is_none() {
                        reference = self.known_order(&n).await;
                    }
                    let lookup = Lookup { reference, psp_reference: n.payment_id.clone() };
                    parsed.push(Ok((n, Some(lookup))));
                }
            }
        }
        let mut unique: Vec<Lookup> =
            parsed.iter().filter_map(|p| p.as_ref().ok()?.1.clone()).collect();
        unique.sort_by(|a, b| {
            (&a.reference, &a.psp_reference).cmp(&(&b.reference, &b.psp_reference))
        });
        unique.dedup();
        let orders = source.find_many(&unique, &self.shop.status, self.shop.pool_size).await;
        let found: HashMap<Lookup, Result<Option<Order>, ShopError>> =
            unique.into_iter().zip(orders).collect();
        parsed
            .into_iter()
            .zip(rows)
            .map(|(p, row)| {
                let verified = answers.contains_key(&row.id);
                match p {
                    Err(prepared) => prepared,
                    Ok((n, None)) => Prepared::Ready { n: Box::new(n), order: Ok(None), verified },
                    Ok((n, Some(lookup))) => {
                        let order = found.get(&lookup).cloned().unwrap_or(Ok(None));
                        Prepared::Ready { n: Box::new(n), order, verified }
                    }
                }
            })
            .collect()
    }

    /// Reads a row's body with its endpoint's provider, or with the provider's defaults when
    /// the endpoint is no longer configured.
    fn parse(&self, row: &Claimed) -> Result<Notification, String> {
        let kind = row.provider.ok_or("no adapter for this row's provider")?;
        match self.endpoints.get(&row.endpoint) {
            Some(e) if e.provider.kind() == kind => e.provider.parse(&row.body),
            _ => provider::parse_unconfigured(kind, &row.body),
        }
    }

    /// Confirms a row with its endpoint's provider.
    async fn confirm(&self, id: i64, endpoint: &str, body: &[u8]) -> Confirmation {
        let Some(registered) = self.endpoints.get(endpoint) else {
            return Confirmation::Failed {
                message: format!(
                    "endpoint \"{endpoint}\" is no longer configured; cannot confirm the notification"
                ),
                transient: false,
            };
        };
        let answer = registered.provider.confirm(body).await;
        match &answer {
            Confirmation::Failed { message, .. } => {
                tracing::warn!(inbox_id = id, error = %message, "confirmation failed; will retry")
            }
            other => tracing::debug!(inbox_id = id, answer = ?other, "confirmation answered"),
        }
        answer
    }

    /// The order our records matched this payment to before (refunds and disputes often
    /// carry no merchant reference).
    async fn known_order(&self, n: &Notification) -> Option<String> {
        let (provider, payment) = (n.provider.as_str(), n.payment_id.clone()?);
        self.blocking(move |_, conn| {
            conn.query_row(
                "SELECT order_id FROM payments WHERE provider = ?1 AND payment_id = ?2",
                params![provider, payment],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
        })
        .await
        .ok()
        .flatten()
    }

    /// When the next parked row or lease falls due, from now.
    async fn next_due(&self) -> Option<Duration> {
        let due: Option<i64> = self
            .blocking(|_, conn| {
                conn.query_row(
                    "SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM inbox WHERE status IN ('pending', 'parked') \
                     UNION ALL SELECT min(claimed_until) FROM inbox WHERE status = 'processing')",
                    [],
                    |r| r.get(0),
                )
            })
            .await
            .ok()
            .flatten();
        due.map(|t| {
            Duration::from_millis(u64::try_from(t - crate::time::now_ms()).unwrap_or(0).max(1))
        })
    }
}

/// The parts of a [`Worker`] the blocking phase needs.
struct WorkerRef {
    policy: Policy,
    config: WorkerConfig,
}

fn claimed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Claimed> {
    let encoding: Option<String> = r.get(9)?;
    let (body, unreadable) =
        match crate::store::body::unpack(r.get(5)?, encoding.as_deref(), r.get(10)?) {
            Ok(body) => (body, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
    Ok(Claimed {
        id: r.get(0)?,
        provider: ProviderKind::from_name(&r.get::<_, String>(1)?),
        endpoint: r.get(2)?,
        received_at: r.get(3)?,
        first_tried_at: r.get(4)?,
        body,
        unreadable,
        attempts: r.get(6)?,
        verified_at: r.get(7)?,
        status: r.get(8)?,
    })
}

/// Who is applying a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The worker, on rows it claimed: rows no longer claimed by it are skipped.
    Worker,
    /// `inbox replay`: one row, whatever its status.
    Replay,
    /// `inbox replay --dry-run`: decide, write nothing.
    DryRun,
}

impl WorkerRef {
    /// Reads the oldest due rows. The claim is held in memory: nothing is written until the
    /// decision, whose transaction writes a row only if its status and attempts are still
    /// those read here (see [`WorkerRef::unchanged`]). One daemon owns a store and its worker
    /// writes one batch at a time, so nothing else is deciding these rows meanwhile; a crash
    /// leaves them due, and the next run takes them again.
    ///
    /// Rows in `taken` (read by an earlier claim and not yet decided) are left out: the next
    /// batch is claimed while the one before it is still being prepared.
    fn claim(
        &self,
        conn: &mut Connection,
        now: i64,
        taken: &HashSet<i64>,
    ) -> rusqlite::Result<Vec<Claimed>> {
        let rows = {
            // `processing` rows were claimed under a lease by an earlier version.
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT id, provider, endpoint, received_at, coalesce(first_tried_at, ?1), body, attempts, \
                   verified_at, status, body_encoding, body_len \
                 FROM inbox INDEXED BY inbox_due WHERE ",
                unfinished!(),
                " AND ((status <> 'processing' AND next_attempt_at <= ?1) \
                     OR (status = 'processing' AND claimed_until < ?1)) \
                 ORDER BY id LIMIT ?2",
            ))?;
            let limit = (self.config.batch + taken.len()) as i64;
            let rows = stmt.query_map(params![now, limit], |r| {
                // Checked before the body is read and decompressed.
                Ok(if taken.contains(&r.get(0)?) { None } else { Some(claimed_row(r)?) })
            })?;
            let mut out = Vec::with_capacity(self.config.batch);
            for row in rows {
                if let Some(row) = row? {
                    out.push(row);
                }
                if out.len() == self.config.batch {
                    break;
                }
            }
            out
        };
        if !rows.is_empty() {
            crate::failpoint::failpoint("worker_after_claim");
        }
        Ok(rows)
    }

    /// Decides and writes a batch in one transaction. Returns each row's decision (None for
    /// rows that only got an error status) and the actions newly written for it.
    fn apply(
        &self,
        conn: &mut Connection,
        rows: &[Claimed],
        prepared: Vec<Prepared>,
        mode: Mode,
    ) -> rusqlite::Result<Vec<(Option<Decision>, Vec<Action>)>> {
        let now = crate::time::now_ms();
        // Most batches have no store error: decide them without a savepoint per row. If one
        // row fails, the whole batch is rolled back and done again with each row in its own
        // savepoint, so that the error holds up only that row.
        match self.apply_batch(conn, rows, &prepared, mode, now, false) {
            Ok(out) => Ok(out),
            Err(e) => {
                tracing::debug!(error = %e, "batch failed; deciding it again row by row");
                self.apply_batch(conn, rows, &prepared, mode, now, true)
            }
        }
    }

    fn apply_batch(
        &self,
        conn: &mut Connection,
        rows: &[Claimed],
        prepared: &[Prepared],
        mode: Mode,
        now: i64,
        isolate: bool,
    ) -> rusqlite::Result<Vec<(Option<Decision>, Vec<Action>)>> {
        let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let ours = match mode {
            Mode::Worker => self.unchanged(&tx, rows)?,
            Mode::Replay | Mode::DryRun => HashSet::new(),
        };
        let mut out = Vec::with_capacity(rows.len());
        for (row, prep) in rows.iter().zip(prepared) {
            if mode == Mode::Worker && !ours.contains(&row.id) {
                // Someone else (an `inbox replay`) decided it meanwhile: theirs stands.
                tracing::warn!(inbox_id = row.id, "row changed while being decided; skipped");
                out.push((None, vec![]));
                continue;
            }
            if !isolate {
                out.push(self.apply_one(&tx, row, prep, now)?);
                continue;
            }
            let sp = tx.savepoint()?;
            match self.apply_one(&sp, row, prep, now) {
                Ok(result) => {
                    sp.commit()?;
                    out.push(result);
                }
                Err(e) => {
                    drop(sp);
                    tracing::error!(inbox_id = row.id, error = %e, "store error while deciding; will retry");
                    self.failed(&tx, row, None, &e.to_string(), now, true)?;
                    out.push((None, vec![]));
                }
            }
        }
        crate::failpoint::failpoint("worker_before_commit");
        if mode == Mode::DryRun {
            tx.rollback()?;
        } else {
            tx.commit()?;
        }
        Ok(out)
    }

    /// Which of `rows` (sorted by id) still have the status and attempts they were read with,
    /// in one query.
    fn unchanged(&self, tx: &Connection, rows: &[Claimed]) -> rusqlite::Result<HashSet<i64>> {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(HashSet::new());
        };
        let mut stmt = tx.prepare_cached(concat!(
            "SELECT id, status, attempts FROM inbox INDEXED BY inbox_due WHERE ",
            unfinished!(),
            " AND id BETWEEN ?1 AND ?2",
        ))?;
        let now: HashMap<i64, (String, u32)> = stmt
            .query_map(params![first.id, last.id], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows
            .iter()
            .filter(|r| {
                now.get(&r.id).is_some_and(|(status, attempts)| {
                    *status == r.status && *attempts == r.attempts
                })
            })
            .map(|r| r.id)
            .collect())
    }

    fn apply_one(
        &self,
        tx: &Connection,
        row: &Claimed,
        prep: &Prepared,
        now: i64,
    ) -> rusqlite::Result<(Option<Decision>, Vec<Action>)> {
        if let Prepared::Ready { verified: true, .. } = prep {
            tx.prepare_cached("UPDATE inbox SET verified_at = ?2 WHERE id = ?1")?
                .execute(params![row.id, now])?;
        }
        let (n, order) = match prep {
            Prepared::Unreadable(e) => {
                set_status(tx, row, "dead", None, Some(e), now, None)?;
                tracing::error!(inbox_id = row.id, error = %e, "notification cannot be read; marked dead");
                return Ok((None, vec![]));
            }
            Prepared::Refused(why) => {
                set_status(tx, row, "rejected", Some(why), None, now, None)?;
                tracing::warn!(inbox_id = row.id, "{why}; rejected with no action");
                return Ok((None, vec![]));
            }
            Prepared::Unconfirmed { error, payment_key, counts } => {
                // The provider or the network down is not the row's fault: no attempt is used up.
                self.failed(tx, row, payment_key.as_deref(), error, now, *counts)?;
                return Ok((None, vec![]));
            }
            Prepared::Ready { n, order: Err(e), .. } => {
                // An unreachable database is not this row's fault: it does not use up attempts.
                let counts = !matches!(e, ShopError::Connect { .. });
                let key = n.payment_id.clone().unwrap_or_else(|| n.event_id.clone());
                self.failed(tx, row, Some(&key), &e.to_string(), now, counts)?;
                return Ok((None, vec![]));
            }
            Prepared::Ready { n, order: Ok(order), .. } => (&**n, order.as_ref()),
        };
        let payment_key = n.payment_id.clone().unwrap_or_else(|| n.event_id.clone());

        // One payment's notifications in order of arrival: wait behind an earlier one that is
        // still to be decided (retrying, or claimed). A row parked because its order is not
        // there yet does not block: a later notification may well name the order.
        let blocker: Option<(i64, i64)> = tx
            .prepare_cached(
                "SELECT id, next_attempt_at FROM inbox WHERE provider = ?1 AND payment_key = ?2 AND id < ?3 \
                 AND status IN ('pending', 'processing') LIMIT 1",
            )?
            .query_row(params![n.provider.as_str(), payment_key, row.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((earlier, its_next)) = blocker {
            let note = format!("waiting for earlier notification {earlier} of the same payment");
            let next = its_next.max(now + self.config.retry_base.as_millis() as i64);
            tx.prepare_cached(
                "UPDATE inbox SET status = 'pending', payment_key = ?2, outcome = ?3, next_attempt_at = ?4, \
                 first_tried_at = coalesce(first_tried_at, ?5), claimed_by = NULL, claimed_until = NULL \
                 WHERE id = ?1",
            )?
            .execute(params![row.id, payment_key, note, next, row.first_tried_at])?;
            return Ok((None, vec![]));
        }

        let payment = load_payment(tx, n.provider.as_str(), &payment_key)?;
        let order_id = order.map(|o| o.order_id.clone());
        // Another payment that paid this order: not this one, under any of its ids, through
        // any channel of its provider (a PayPal capture comes as a webhook and as an IPN).
        let same_payment = |provider: &str, id: &str| {
            ProviderKind::from_name(provider).map(ProviderKind::family) == Some(n.provider.family())
                && (id == payment_key || Some(id) == n.related_payment_id.as_deref())
        };
        let paid_by_other: Option<String> = match &order_id {
            Some(oid) => {
                let mut stmt = tx.prepare_cached(
                    "SELECT provider, payment_id FROM payments WHERE order_id = ?1 AND fulfilled = 1 \
                     AND status IN ('succeeded', 'authorized')",
                )?;
                let mut payers = stmt
                    .query_map([oid], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                payers
                    .find_map(|p| match p {
                        Ok((provider, id)) if same_payment(&provider, &id) => None,
                        Ok((provider, id)) => Some(Ok(format!("{provider}:{id}"))),
                        Err(e) => Some(Err(e)),
                    })
                    .transpose()?
            }
            None => None,
        };
        let own_refund = match &n.request_key {
            Some(key) => tx
                .prepare_cached(
                    "SELECT 1 FROM outbox WHERE idempotency_key = ?1 AND kind = 'refund' \
                     UNION ALL SELECT 1 FROM outbox_spent_keys WHERE idempotency_key = ?1",
                )?
                .exists([key])?,
            None => false,
        };
        let window = self.policy.unmatched_retry_for.as_millis() as i64;
        let decision = decide(
            Facts {
                notification: n,
                payment: payment.as_ref(),
                order,
                paid_by_other: paid_by_other.as_deref(),
                own_refund,
                unmatched_expired: now - row.first_tried_at >= window,
            },
            &self.policy,
        );

        let mut written = Vec::new();
        match decision.outcome {
            Outcome::Park => {
                let elapsed = now - row.first_tried_at;
                let base = self.config.retry_base.as_millis() as i64;
                let delay = (elapsed / 2).clamp(base, self.config.retry_max.as_millis() as i64);
                let next = (now + delay).min(row.first_tried_at + window);
                tx.prepare_cached(
                    "UPDATE inbox SET status = 'parked', payment_key = ?2, outcome = ?3, next_attempt_at = ?4, \
                     first_tried_at = coalesce(first_tried_at, ?5), claimed_by = NULL, claimed_until = NULL \
                     WHERE id = ?1",
                )?
                .execute(params![row.id, payment_key, decision.note, next, row.first_tried_at])?;
            }
            Outcome::Done | Outcome::Ignored => {
                for action in &decision.actions {
                    if insert_action(tx, action, n, row, now)? {
                        written.push(action.clone());
                    }
                }
                if let Some(state) = &decision.payment {
                    save_payment(tx, n.provider.as_str(), &payment_key, state, row.id, now)?;
                }
                let status = if decision.outcome == Outcome::Ignored { "ignored" } else { "done" };
                set_status(tx, row, status, Some(&decision.note), None, now, Some(&payment_key))?;
            }
        }
        tracing::debug!(inbox_id = row.id, event = %n.event_id, note = %decision.note, actions = written.len(), "decided");
        Ok((Some(decision), written))
    }

    /// A failed attempt: retry with backoff, or `dead` when attempts run out. With `counts`
    /// false (the shop database is unreachable) the attempt is not counted: the row waits as
    /// long as the outage lasts, backing off up to `retry_max`.
    fn failed(
        &self,
        tx: &Connection,
        row: &Claimed,
        payment_key: Option<&str>,
        error: &str,
        now: i64,
        counts: bool,
    ) -> rusqlite::Result<()> {
        let attempts = row.attempts + u32::from(counts);
        if attempts >= self.config.max_attempts {
            tracing::error!(
                inbox_id = row.id,
                attempts,
                error,
                "giving up on notification; marked dead"
            );
            tx.prepare_cached(
                "UPDATE inbox SET status = 'dead', attempts = ?2, last_error = ?3, payment_key = coalesce(?4, payment_key), \
                 first_tried_at = coalesce(first_tried_at, ?6), claimed_by = NULL, claimed_until = NULL, \
                 processed_at = ?5 WHERE id = ?1",
            )?
            .execute(params![row.id, attempts, error, payment_key, now, row.first_tried_at])?;
            return Ok(());
        }
        let (base, max) =
            (self.config.retry_base.as_millis() as i64, self.config.retry_max.as_millis() as i64);
        let delay = if counts {
            base.saturating_mul(1 << attempts.saturating_sub(1).min(20)).min(max)
        } else {
            ((now - row.first_tried_at) / 2).clamp(base, max)
        };
        tracing::warn!(
            inbox_id = row.id,
            attempts,
            retry_in_ms = delay,
            error,
            "notification will be retried"
        );
        tx.prepare_cached(
            "UPDATE inbox SET status = 'pending', attempts = ?2, last_error = ?3, next_attempt_at = ?4, \
             payment_key = coalesce(?5, payment_key), first_tried_at = coalesce(first_tried_at, ?6), \
             claimed_by = NULL, claimed_until = NULL WHERE id = ?1",
        )?
        .execute(params![row.id, attempts, error, now + delay, payment_key, row.first_tried_at])?;
        Ok(())
    }
}

/// A row's final status; `first_tried_at` is kept if an earlier attempt set it.
fn set_status(
    tx: &Connection,
    row: &Claimed,
    status: &str,
    outcome: Option<&str>,
    error: Option<&str>,
    now: i64,
    payment_key: Option<&str>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE inbox SET status = ?2, outcome = coalesce(?3, outcome), last_error = coalesce(?4, last_error), \
         processed_at = ?5, payment_key = coalesce(?6, payment_key), first_tried_at = coalesce(first_tried_at, ?7), \
         claimed_by = NULL, claimed_until = NULL WHERE id = ?1",
    )?
    .execute(params![row.id, status, outcome, error, now, payment_key, row.first_tried_at])?;
    Ok(())
}

fn load_payment(
    tx: &Connection,
    provider: &str,
    payment_id: &str,
) -> rusqlite::Result<Option<PaymentState>> {
    tx.prepare_cached("SELECT status, ever_succeeded, order_id, fulfilled FROM payments WHERE provider = ?1 AND payment_id = ?2")?
        .query_row(params![provider, payment_id], |r| {
            let status: String = r.get(0)?;
            Ok(PaymentState {
                status: PaymentStatus::parse(&status).unwrap_or(PaymentStatus::Pending),
                ever_succeeded: r.get(1)?,
                order_id: r.get(2)?,
                fulfilled: r.get(3)?,
            })
        })
        .optional()
}

fn save_payment(
    tx: &Connection,
    provider: &str,
    payment_id: &str,
    state: &PaymentState,
    inbox_id: i64,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO payments (provider, payment_id, status, ever_succeeded, order_id, fulfilled, updated_at, last_inbox_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (provider, payment_id) DO UPDATE SET status = excluded.status, \
           ever_succeeded = max(ever_succeeded, excluded.ever_succeeded), \
           order_id = coalesce(excluded.order_id, order_id), fulfilled = excluded.fulfilled, \
           updated_at = excluded.updated_at, last_inbox_id = excluded.last_inbox_id",
    )?
    .execute(params![provider, payment_id, state.status.as_str(), state.ever_succeeded, state.order_id, state.fulfilled, now, inbox_id])?;
    Ok(())
}

/// A new action; nothing if its idempotency key is already in the outbox. A single-row
/// `VALUES` insert on purpose: an `INSERT … SELECT` may write several rows, so SQLite would keep
/// a statement journal for it (a copy of every page it touches) inside the batch's transaction.
const INSERT_ACTION: &str =
    "INSERT INTO outbox (kind, order_id, provider, payment_id, amount_minor, currency, \
     reason, template, customer_email, idempotency_key, inbox_id, event_id, created_at, endpoint) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
     ON CONFLICT (idempotency_key) DO NOTHING";

/// Writes an action unless its idempotency key is already in the outbox, or was spent by a
/// pruned refund (`outbox_spent_keys`); true if written.
fn insert_action(
    tx: &Connection,
    a: &Action,
    n: &Notification,
    row: &Claimed,
    now: i64,
) -> rusqlite::Result<bool> {
    let spent = tx
        .prepare_cached("SELECT 1 FROM outbox_spent_keys WHERE idempotency_key = ?1")?
        .exists([&a.idempotency_key])?;
    if spent {
        return Ok(false);
    }
    let changed = tx.prepare_cached(INSERT_ACTION)?.execute(params![
        a.kind.as_str(),
        a.order_id,
        n.provider.as_str(),
        n.payment_id,
        a.amount.map(|m| m.minor),
        a.amount.map(|m| m.currency.code().to_owned()),
        a.reason,
        a.template,
        a.customer_email,
        a.idempotency_key,
        row.id,
        n.event_id,
        now,
        row.endpoint,
    ])?;
    Ok(changed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// An action is written by a single-row insert: SQLite checks its foreign key at once
    /// (`Halt`) instead of counting violations for the statement's end (`FkCounter`), which is
    /// what it does for a statement that may write several rows, and such a statement keeps a
    /// statement journal: a copy of every page it changes inside the batch's transaction.
    #[test]
    fn an_action_is_written_by_a_single_row_insert() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            crate::store::schema::open_writer(&dir.path().join("s.db"), Duration::from_secs(1))
                .unwrap();
        let ops = crate::store::schema::explain(&conn, INSERT_ACTION);
        assert!(!ops.iter().any(|(op, _)| op == "FkCounter"), "{ops:?}");
        // SQLITE_CONSTRAINT_FOREIGNKEY: the foreign key is still enforced, at once.
        assert!(ops.iter().any(|(op, p1)| op == "Halt" && *p1 == 787), "{ops:?}");
    }

    /// A row changed by someone else (an `inbox replay`) between the read that claims it and
    /// the decision's transaction keeps what they wrote: the worker writes nothing for it.
    #[tokio::test]
    async fn a_row_changed_after_its_claim_is_left_as_the_other_writer_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let shop_path = dir.path().join("shop.db");
        let shop = Connection::open(&shop_path).unwrap();
        shop.execute_batch(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, total TEXT, currency TEXT);
             INSERT INTO orders VALUES (7, 'pending', '19.99', 'USD');",
        )
        .unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n\
             [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"whsec_t\"]\n\
             [shop]\ndriver = \"sqlite\"\nurl = \"{}\"\nquery = \"SELECT id AS order_id, status, \
             total AS amount, currency FROM orders WHERE id = :reference\"\n\
             [shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"processing\"]\n\
             cancelled = [\"cancelled\"]\n",
            dir.path().join("inbox.db").display(),
            shop_path.display()
        );
        let config = Config::from_toml(&text, &dir.path().join("t.toml")).unwrap();
        let conn =
            crate::store::schema::open_writer(&config.store.path, Duration::from_secs(5)).unwrap();
        let body = r#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","created":1795000000,"data":{"object":{"id":"pi_1","object":"payment_intent","amount":1999,"amount_received":1999,"currency":"usd","metadata":{"order_id":"7"},"status":"succeeded"}}}"#;
        conn.execute(
            "INSERT INTO inbox (endpoint, provider, dedup_key, event_type, received_at, \
             last_received_at, remote_addr, headers, body) VALUES ('stripe', 'stripe', 'evt_1', \
             'payment_intent.succeeded', 1, 1, '127.0.0.1:1', '{}', ?1)",
            [body.as_bytes()],
        )
        .unwrap();
        let shop_config = config.shop.clone().unwrap();
        let source = OrderSource::connect(&shop_config).await.unwrap();
        let endpoints = Arc::new(Endpoints::new(&config.endpoints).unwrap());
        let worker = Worker::new(conn, endpoints, shop_config, config.policy, config.worker);

        let now = crate::time::now_ms();
        let claimed =
            worker.blocking(move |w, conn| w.claim(conn, now, &HashSet::new())).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let prepared = worker.prepare(&source, &claimed, true).await;
        // Meanwhile another writer decides the row.
        worker
            .blocking(|_, conn| {
                conn.execute("UPDATE inbox SET status = 'done', outcome = 'by replay'", [])
            })
            .await
            .unwrap();
        let rows = claimed.clone();
        let out = worker
            .blocking(move |w, conn| w.apply(conn, &rows, prepared, Mode::Worker))
            .await
            .unwrap();
        assert!(out[0].0.is_none() && out[0].1.is_empty(), "nothing decided: {out:?}");
        let (status, outcome, actions) = worker
            .blocking(|_, conn| {
                conn.query_row(
                    "SELECT status, outcome, (SELECT count(*) FROM outbox) FROM inbox",
                    [],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)),
                )
            })
            .await
            .unwrap();
        assert_eq!((status.as_str(), outcome.as_str(), actions), ("done", "by replay", 0));

        // Unchanged, the same claim is decided: the order is paid and both actions written.
        worker
            .blocking(|_, conn| {
                conn.execute("UPDATE inbox SET status = 'pending', outcome = NULL", [])
            })
            .await
            .unwrap();
        let prepared = worker.prepare(&source, &claimed, true).await;
        let out = worker
            .blocking(move |w, conn| w.apply(conn, &claimed, prepared, Mode::Worker))
            .await
            .unwrap();
        assert_eq!(out[0].1.len(), 2, "fulfil and its notice: {out:?}");
        source.close().await;
    }
}
