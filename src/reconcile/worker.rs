//! The worker: claims stored notifications, finds their orders, decides, and has the store
//! commit the actions, the payment state and the row's new status in one transaction.
//!
//! ## Concurrency
//! A claim is held in memory by the pass that read the rows (see
//! [`crate::store::sqlite::queue`]): one daemon owns a store, and its worker writes its batches
//! one after another; rows a crashed run was deciding are still due and are simply taken
//! again. Due rows are claimed in batches in arrival order; a batch's orders are looked up
//! with no transaction open ([`super::prepare`]: the shop may be slow), then the whole batch is
//! decided and written in one transaction ([`Store::decide_batch`] with the [`Decider`]),
//! reading payment state inside it so rows of the same payment in one batch see each other.
//! The steps overlap: while one batch is written, the next is parsed and looked up (see
//! [`Worker::work_through`]); a batch is still written only after the one before it
//! committed. A refund that carries no order reference is matched through the payment's
//! earlier notification (`payments.order_id`): if that notification is in the batch just
//! before it, still being written, the lookup does not see it yet. A refund or dispute names
//! the order all the same (payment state is read inside the transaction); a payment event is
//! parked and matched on its retry, as for two rows of one batch.
//!
//! A row whose payment has an earlier row still unfinished (parked, retrying) waits behind
//! it: one payment's notifications are decided in order of arrival. Every action has a UNIQUE
//! idempotency key, so a crash after the commit and a replay emit nothing twice.
//!
//! The worker wakes when the ingest path stores a row ([`tokio::sync::Notify`]) or when the
//! earliest parked row falls due; it does not poll on a fixed tick.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::apply::Decider;
use super::apply::Verdict;
use super::policy::{DecisionMode, Policy, WorkerConfig};
use super::prepare::Prepared;
use crate::deliver::Routes;
use crate::domain::{Action, ActionKind};
use crate::endpoint::Endpoints;
use crate::metrics::Metrics;
use crate::shop::{OrderSource, ShopConfig};
use crate::store::{Applied, Claimed, Store, StoreError};

/// Longest sleep with nothing due: how soon rows another process stored (a `reconciled
/// backfill` beside a daemon on a SQLite store) are taken up.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// The most payments left open reviewed in one check.
const OPEN_CHECK_BATCH: usize = 500;
/// Wait before reconnecting to an unreachable shop database.
const RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    /// Rows claimed.
    pub claimed: usize,
    /// Actions newly written to the outbox.
    pub actions: usize,
}

/// New settings for a running worker, from a reloaded configuration. They take effect
/// between two passes: a batch is always decided with one set of settings.
#[derive(Debug)]
pub struct Update {
    /// The endpoints' providers (secrets, confirmation settings).
    pub endpoints: Arc<Endpoints>,
    /// The shop's order query settings.
    pub shop: ShopConfig,
    /// A connection to the shop database for the new settings; `None` keeps the current one
    /// (the shop's settings did not change).
    pub source: Option<OrderSource>,
    /// The decision policy.
    pub policy: Policy,
    /// Retries and batches.
    pub config: WorkerConfig,
    /// Which sinks each kind of action goes to.
    pub sinks: Routes,
}

/// The worker's parts.
#[derive(Debug)]
pub struct Worker {
    /// The store it claims from and writes decisions to.
    pub(super) store: Store,
    /// The shop's order query settings.
    pub(super) shop: ShopConfig,
    /// Plans each row: the policy and the retry settings.
    decider: Arc<Decider>,
    /// The endpoints' providers, by endpoint name: they parse and confirm stored rows.
    pub(super) endpoints: Arc<Endpoints>,
    /// Bumped after each batch it decided: wakes the sinks' dispatchers and the admin API's
    /// long polls.
    written: Option<watch::Sender<u64>>,
    /// Decisions, actions and failed shop lookups are counted here.
    pub(super) metrics: Arc<Metrics>,
}

impl Worker {
    /// A worker over `store`.
    pub fn new(
        store: Store,
        endpoints: Arc<Endpoints>,
        shop: ShopConfig,
        policy: Policy,
        config: WorkerConfig,
    ) -> Worker {
        let decider = Decider { policy, config, sinks: Routes::default() };
        let metrics = Arc::new(Metrics::default());
        Worker { store, shop, decider: Arc::new(decider), endpoints, written: None, metrics }
    }

    /// Counts its decisions, actions and failed shop lookups in `metrics`.
    pub fn counting_in(mut self, metrics: Arc<Metrics>) -> Worker {
        self.metrics = metrics;
        self
    }

    /// Writes a delivery to each of `sinks` that takes it with every new live action, and
    /// bumps `written` after each batch that wrote actions (the dispatchers wait on it).
    pub fn delivering_to(mut self, sinks: Routes, written: watch::Sender<u64>) -> Worker {
        let Decider { policy, config, .. } = *self.decider;
        self.decider = Arc::new(Decider { policy, config, sinks });
        self.written = Some(written);
        self
    }

    fn config(&self) -> &WorkerConfig {
        &self.decider.config
    }

    /// Takes new settings; returns the shop connection they bring, if any.
    fn update(&mut self, update: Update) -> Option<OrderSource> {
        self.endpoints = update.endpoints;
        self.shop = update.shop;
        self.decider =
            Arc::new(Decider { policy: update.policy, config: update.config, sinks: update.sinks });
        tracing::info!(
            driver = self.shop.driver.as_str(),
            mode = %update.policy.mode,
            "reconciliation worker: new settings in effect"
        );
        update.source
    }

    /// Runs until `shutdown`: connects to the shop (retrying while it is unreachable), then
    /// processes due rows whenever woken. New settings from `updates` (a reloaded
    /// configuration) take effect between passes.
    pub async fn run(
        mut self,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
        mut updates: tokio::sync::mpsc::Receiver<Update>,
    ) {
        let source = loop {
            match OrderSource::connect(&self.shop).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::error!(error = %e, "shop database unreachable; notifications stay stored and wait");
                    tokio::select! {
                        () = tokio::time::sleep(RECONNECT_DELAY) => {}
                        Some(update) = updates.recv() => {
                            if let Some(source) = self.update(update) {
                                break source;
                            }
                        }
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        };
        // One daemon owns a store: rows still `processing` were claimed under a lease by a run of
        // an earlier version that crashed. Release them at once instead of after the lease.
        match self.store.release_claims().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                rows = n,
                "released rows claimed by a previous run that stopped mid-batch"
            ),
            Err(e) => {
                tracing::error!(error = %crate::error::error_chain(&e), "cannot release rows of a previous run; they wait for their lease")
            }
        }
        tracing::info!(driver = %self.shop.driver.as_str(), "reconciliation worker started");
        let mut source = Arc::new(source);
        let mut open_checked: Option<tokio::time::Instant> = None;
        loop {
            let mut wait = match self.work_through(&source, &shutdown).await {
                Ok(_) if shutdown.is_cancelled() => break,
                Ok(_) => self.next_due().await.unwrap_or(IDLE_WAKE),
                Err(e) => {
                    tracing::error!(error = %crate::error::error_chain(&e), "worker pass failed; retrying");
                    self.config().retry_base
                }
            };
            let every = self.open_check_every();
            if open_checked.is_none_or(|at| at.elapsed() >= every) {
                if let Err(e) = self.review_open_payments().await {
                    tracing::error!(error = %crate::error::error_chain(&e), "check of payments left open failed; trying again later");
                }
                open_checked = Some(tokio::time::Instant::now());
            }
            wait = wait.min(every);
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(wait.min(IDLE_WAKE)) => {}
                Some(update) = updates.recv() => {
                    if let Some(new) = self.update(update) {
                        let old = std::mem::replace(&mut source, Arc::new(new));
                        if let Ok(old) = Arc::try_unwrap(old) {
                            old.close().await;
                        }
                    }
                }
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
    ) -> Result<PassStats, StoreError> {
        let batch = self.config().batch;
        let mut stats = PassStats::default();
        // Claimed, to be prepared.
        let mut next = self.store.claim(crate::time::now_ms(), batch, HashSet::new()).await?;
        // Prepared, to be decided and written.
        let mut ready: Option<(Vec<Claimed>, Vec<Prepared>)> = None;
        while !next.is_empty() || ready.is_some() {
            let taken: HashSet<i64> = next.iter().map(|r| r.id).collect();
            let to_write = ready.take();
            // A task of its own: the next claim starts the moment the batch commits, even while
            // this task is busy parsing (a join! here would only poll it between two awaits).
            let (store, decider) = (self.store.clone(), self.decider.clone());
            let metrics = self.metrics.clone();
            let write = async move {
                let (count, actions) = match to_write {
                    Some((rows, prepared)) => {
                        let count = rows.len();
                        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                        let out = store.decide_batch(rows, prepared, decider).await?;
                        log_decisions(&ids, &out);
                        count_decisions(&metrics, &out);
                        (count, out.iter().map(Applied::written).sum())
                    }
                    None => (0, 0),
                };
                let more = store.claim(crate::time::now_ms(), batch, taken).await?;
                Ok::<_, StoreError>((count, actions, more))
            };
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
            if count > 0 {
                self.announce_written();
            }
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

    /// Decides one payment's rows (`ids`, in order) again through the current code and the
    /// shop's current data, as if the payment had never been seen (`reset`: its stored state
    /// is set aside), each row on what the rows before it tell. For each row: its verdict,
    /// the actions it emits that are not in the outbox (`added`), and the actions in the outbox
    /// from it that the current code no longer emits (`dropped`). With `dry_run` nothing is
    /// kept and no provider is asked to confirm anything; otherwise the rows are decided again
    /// for real and only the added actions are written (the outbox is append-only). `None` if
    /// the payment gained a row meanwhile (the daemon decided a new notification): nothing
    /// was changed; read its rows again and retry.
    pub async fn rerun(
        &self,
        source: &OrderSource,
        ids: &[i64],
        reset: Option<(String, String)>,
        dry_run: bool,
    ) -> Result<Option<Vec<Rerun>>, StoreError> {
        let mut rows = Vec::with_capacity(ids.len());
        let mut before = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = self.store.claim_one(*id).await? {
                before.push(self.store.actions_of(row.id).await?);
                rows.push(row);
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let prepared = self.prepare(source, &rows, !dry_run).await;
        let Some(applied) =
            self.store.rerun(rows, prepared, reset, dry_run, self.decider.clone()).await?
        else {
            return Ok(None);
        };
        let shadow = self.decider.policy.mode == DecisionMode::Shadow;
        let mut out = Vec::with_capacity(ids.len());
        for ((id, applied), before) in ids.into_iter().zip(applied).zip(before) {
            let planned: HashSet<&str> = applied
                .actions
                .iter()
                .flat_map(|(a, _)| {
                    std::iter::once(a.idempotency_key.as_str()).chain(a.earlier_key.as_deref())
                })
                .collect();
            let dropped = before
                .into_iter()
                .filter(|o| o.shadow == shadow && !planned.contains(o.idempotency_key.as_str()))
                .collect();
            let added =
                applied.actions.into_iter().filter(|(_, now)| *now).map(|(a, _)| a).collect();
            out.push(Rerun { id, verdict: applied.decision, added, dropped });
        }
        Ok(Some(out))
    }

    /// Wakes the sinks' dispatchers and the admin API's long polls: actions were written.
    fn announce_written(&self) {
        if let Some(w) = &self.written {
            w.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// How often payments left open are looked for: a quarter of the shorter of the two
    /// policy times, within 1 s and 10 minutes.
    fn open_check_every(&self) -> Duration {
        let policy = &self.decider.policy;
        (policy.pending_review_after.min(policy.authorization_review_after) / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(600))
    }

    /// Writes a review for each payment left open longer than the policy allows (once per
    /// payment and status); returns how many were written.
    pub async fn review_open_payments(&self) -> Result<usize, StoreError> {
        let policy = self.decider.policy;
        let now = crate::time::now_ms();
        let shortest = policy.pending_review_after.min(policy.authorization_review_after);
        let before = now.saturating_sub(i64::try_from(shortest.as_millis()).unwrap_or(i64::MAX));
        let open = self.store.open_payments(before, OPEN_CHECK_BATCH).await?;
        let reviews: Vec<_> = open
            .into_iter()
            .filter_map(|p| {
                let review = super::apply::open_payment_review(&p, &policy, now)?;
                Some((p, review))
            })
            .collect();
        if reviews.is_empty() {
            return Ok(0);
        }
        let sinks = self.decider.sinks.of(ActionKind::Review).to_vec();
        let reasons: Vec<(String, Option<String>)> =
            reviews.iter().map(|(_, a)| (a.reason.clone(), a.order_id.clone())).collect();
        let written = self.store.review_open(reviews, sinks).await?;
        let mut count = 0;
        for ((reason, order), written) in reasons.into_iter().zip(written) {
            if written {
                count += 1;
                self.metrics.action(ActionKind::Review.as_str());
                tracing::info!(order = order.as_deref().unwrap_or("-"), "review: {reason}");
            }
        }
        if count > 0 {
            self.announce_written();
        }
        Ok(count)
    }

    /// When the next parked row or lease falls due, from now.
    async fn next_due(&self) -> Option<Duration> {
        let due = self.store.next_due().await.ok().flatten()?;
        Some(Duration::from_millis(u64::try_from(due - crate::time::now_ms()).unwrap_or(0).max(1)))
    }
}

/// One row decided again by [`Worker::rerun`].
#[derive(Debug, Clone)]
pub struct Rerun {
    /// The inbox row.
    pub id: i64,
    /// Its decision; `None` if it was not decided (its provider was not asked to confirm it,
    /// or it cannot be read: its status says which).
    pub verdict: Option<Verdict>,
    /// Actions it emits that were not in the outbox (written, unless a dry run).
    pub added: Vec<Action>,
    /// Actions in the outbox from it that the current code no longer emits.
    pub dropped: Vec<crate::store::OutboxRow>,
}

/// One INFO line per decided row, after its commit: the row, the outcome, and the actions
/// written now. Never a body, an email address or a secret.
fn log_decisions(ids: &[i64], applied: &[Applied<Verdict>]) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    for (id, applied) in ids.iter().zip(applied) {
        let Some(verdict) = &applied.decision else { continue };
        tracing::info!(
            inbox_id = *id,
            outcome = %verdict.outcome,
            actions = ?Written(&applied.actions),
            note = ?verdict.note,
            "decided"
        );
    }
}

/// Counts each handled row by its outcome, and each action written now by its kind.
fn count_decisions(metrics: &Metrics, applied: &[Applied<Verdict>]) {
    for a in applied {
        if let Some(outcome) = a.outcome {
            metrics.decision(outcome);
        }
        for (action, _) in a.actions.iter().filter(|(_, now)| *now) {
            metrics.action(action.kind.as_str());
        }
    }
}

/// The actions written now, for a log line: `fulfil 1001 100.00 USD, notify_customer 1001`
/// (quoted by its Debug, as a field's text is).
struct Written<'a>(&'a [(Action, bool)]);

impl std::fmt::Debug for Written<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl std::fmt::Display for Written<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut written = self.0.iter().filter(|(_, now)| *now).map(|(a, _)| a).peekable();
        if written.peek().is_none() {
            return f.write_str("none");
        }
        for (n, a) in written.enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            f.write_str(a.kind.as_str())?;
            if let Some(order) = &a.order_id {
                write!(f, " {order}")?;
            }
            if let Some(amount) = &a.amount {
                write!(f, " {amount}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A row changed by someone else (an `inbox replay`) between the read that claims it and
    /// the decision's transaction keeps what they wrote: the worker writes nothing for it.
    #[tokio::test]
    async fn a_row_changed_after_its_claim_is_left_as_the_other_writer_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let shop_path = dir.path().join("shop.db");
        let shop = rusqlite::Connection::open(&shop_path).unwrap();
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
        let store = Store::open_tool(&config.store).await.unwrap();
        // Another writer, on its own connection, as `inbox replay` would be.
        let other = rusqlite::Connection::open(&config.store.path).unwrap();
        let body = r#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","created":1795000000,"data":{"object":{"id":"pi_1","object":"payment_intent","amount":1999,"amount_received":1999,"currency":"usd","metadata":{"order_id":"7"},"status":"succeeded"}}}"#;
        other
            .execute(
                "INSERT INTO inbox (endpoint, provider, dedup_key, event_type, received_at, \
                 last_received_at, remote_addr, headers, body) VALUES ('stripe', 'stripe', 'evt_1', \
                 'payment_intent.succeeded', 1, 1, '127.0.0.1:1', '{}', ?1)",
                [body.as_bytes()],
            )
            .unwrap();
        let shop_config = config.shop.clone().unwrap();
        let source = OrderSource::connect(&shop_config).await.unwrap();
        let endpoints = Arc::new(Endpoints::new(&config.endpoints).unwrap());
        let worker =
            Worker::new(store.clone(), endpoints, shop_config, config.policy, config.worker);

        let claimed = store.claim(crate::time::now_ms(), 10, HashSet::new()).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let prepared = worker.prepare(&source, &claimed, true).await;
        // Meanwhile another writer decides the row.
        other.execute("UPDATE inbox SET status = 'done', outcome = 'by replay'", []).unwrap();
        let out =
            store.decide_batch(claimed.clone(), prepared, worker.decider.clone()).await.unwrap();
        assert!(out[0].decision.is_none() && out[0].actions.is_empty(), "nothing decided: {out:?}");
        let (status, outcome, actions) = other
            .query_row(
                "SELECT status, outcome, (SELECT count(*) FROM outbox) FROM inbox",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)),
            )
            .unwrap();
        assert_eq!((status.as_str(), outcome.as_str(), actions), ("done", "by replay", 0));

        // Unchanged, the same claim is decided: the order is paid and both actions written.
        other.execute("UPDATE inbox SET status = 'pending', outcome = NULL", []).unwrap();
        let prepared = worker.prepare(&source, &claimed, true).await;
        let out = store.decide_batch(claimed, prepared, worker.decider.clone()).await.unwrap();
        assert_eq!(out[0].written(), 2, "fulfil and its notice: {out:?}");
        source.close().await;
    }
}
