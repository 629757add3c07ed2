//! Backfill: the Stripe events a webhook never brought, listed from the API and stored
//! through the same inbox path.
//!
//! Stripe lists events newest first; a pass stores them oldest first:
//! - from a **cursor** (an event id), it asks for the events just newer than it
//!   (`ending_before`), stores the page oldest first, and moves the cursor to the page's
//!   newest event, until nothing newer is left;
//! - from a **time** (`--since 72h`, or the first pass of an endpoint with no cursor yet), it
//!   first walks back (`starting_after`, `created[gte]`) to the oldest page of the window,
//!   stores it, and goes on from there as from a cursor.
//!
//! Each event is stored with its id as the dedup key, so one already received by webhook adds
//! nothing (and does not count as a delivery). The cursor is kept in the store (`meta`) and
//! moved only once the page's rows are committed: a pass killed between the two lists the
//! page again, and storing it again changes nothing. Events of types no decision uses are
//! counted and passed over. A kept cursor Stripe no longer lists (it keeps events for 30 days)
//! is said in a WARN line, and the pass goes on from the oldest event Stripe still has.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::stripe::{EventPage, ListedEvent, Page, StripeApi};
use super::ApiError;
use crate::domain::Source;
use crate::provider::{stripe, ProviderKind};
use crate::store::{NewRow, Store, StoreError};

/// How far back the first pass of an endpoint with no cursor looks: about as long as Stripe
/// retries a webhook.
pub const FIRST_WINDOW: Duration = Duration::from_secs(72 * 3600);
/// How long Stripe keeps events to list.
pub const STRIPE_KEEPS: Duration = Duration::from_secs(30 * 86_400);
/// The daemon's first pass, this long after start.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(2);

/// Where a pass starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// From the cursor kept in the store, or the last [`FIRST_WINDOW`] if there is none.
    Resume,
    /// The events created at or after this time (unix seconds).
    Since(i64),
    /// The events created after this one.
    After(String),
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Pages asked for.
    pub pages: u64,
    /// Events listed.
    pub seen: u64,
    /// Events stored as new rows (with `dry_run`: that would be).
    pub stored: u64,
    /// Events the inbox held already (received by webhook, or by an earlier pass).
    pub had: u64,
    /// Events of types no decision uses, passed over.
    pub not_used: u64,
    /// The newest event listed: where the next pass starts.
    pub cursor: Option<String>,
}

/// Why a pass stopped early; what it did before is in the summary.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// Stripe gave no usable answer.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The store could not take the events.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One endpoint's backfill.
#[derive(Debug)]
pub struct Backfill {
    /// The Stripe API.
    pub api: Arc<StripeApi>,
    /// The store to fill.
    pub store: Store,
    /// The endpoint the events are stored under.
    pub endpoint: Arc<str>,
    /// List and count only: nothing is written, the cursor included.
    pub dry_run: bool,
    /// The daemon's metrics (`reconciled_asked_total`), if any.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The `meta` key of an endpoint's cursor.
pub fn cursor_key(endpoint: &str) -> String {
    format!("backfill_cursor:{endpoint}")
}

/// The `meta` key of when the daemons' timer last took an endpoint's pass (see [`run`]).
pub fn turn_key(endpoint: &str) -> String {
    format!("backfill_turn:{endpoint}")
}

impl Backfill {
    /// One pass from `start` to the newest event; stops early (between pages) on `stop`.
    /// On an error, the summary so far is returned with it.
    pub async fn pass(
        &self,
        start: Start,
        stop: &CancellationToken,
    ) -> Result<Summary, (PassError, Summary)> {
        let mut summary = Summary::default();
        match self.run(start, stop, &mut summary).await {
            Ok(()) => Ok(summary),
            Err(e) => Err((e, summary)),
        }
    }

    async fn run(
        &self,
        start: Start,
        stop: &CancellationToken,
        summary: &mut Summary,
    ) -> Result<(), PassError> {
        // The kept cursor, until its first page is listed: Stripe may have let it go.
        let mut kept = None;
        let start = match start {
            Start::Resume => match self.store.meta(&cursor_key(&self.endpoint)).await? {
                Some(cursor) => {
                    kept = Some(cursor.clone());
                    Start::After(cursor)
                }
                None => Start::Since(crate::time::now_ms() / 1000 - FIRST_WINDOW.as_secs() as i64),
            },
            other => other,
        };
        let mut cursor = match start {
            Start::After(id) => id,
            Start::Since(since) => match self.oldest_page(since, stop, summary).await? {
                Some(page) => self.take(page, summary).await?,
                None => return Ok(()),
            },
            Start::Resume => unreachable!("resolved above"),
        };
        while !stop.is_cancelled() {
            let listed = self.list(&Page::Newer { than: cursor }, summary).await;
            let page = match (listed, kept.take()) {
                (Err(e), Some(gone)) if is_missing(&e) => {
                    // Stripe keeps events for 30 days: the daemon was away longer than that, or
                    // the cursor is from another account. Everything Stripe still has, then.
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        cursor = %gone,
                        "backfill: Stripe no longer lists the cursor's event (it keeps events for 30 days); \
                         resuming from the oldest event it still has: events between the two cannot be listed"
                    );
                    let since = crate::time::now_ms() / 1000 - STRIPE_KEEPS.as_secs() as i64;
                    match self.oldest_page(since, stop, summary).await? {
                        Some(page) => {
                            cursor = self.take(page, summary).await?;
                            continue;
                        }
                        None => return Ok(()),
                    }
                }
                (listed, _) => listed?,
            };
            let more = page.has_more;
            if page.events.is_empty() {
                break;
            }
            cursor = self.take(page, summary).await?;
            if !more {
                break;
            }
        }
        Ok(())
    }

    async fn list(&self, page: &Page, summary: &mut Summary) -> Result<EventPage, ApiError> {
        summary.pages += 1;
        self.api.events(page).await
    }

    /// Walks back through the events created since `since` to the oldest page. None when there
    /// is none, or when `stop` came before the walk reached it: a page that is not the oldest
    /// must not move the cursor past the older ones.
    async fn oldest_page(
        &self,
        since: i64,
        stop: &CancellationToken,
        summary: &mut Summary,
    ) -> Result<Option<EventPage>, PassError> {
        let mut page = self.list(&Page::Newest { since: Some(since) }, summary).await?;
        while page.has_more {
            if stop.is_cancelled() {
                return Ok(None);
            }
            let Some(oldest) = page.events.last() else { break };
            let back = Page::Older { than: oldest.id.clone(), since: Some(since) };
            let older = self.list(&back, summary).await?;
            if older.events.is_empty() {
                break;
            }
            page = older;
        }
        Ok((!page.events.is_empty()).then_some(page))
    }

    /// Stores a page (newest first, as listed) oldest first, then moves the cursor to its
    /// newest event; returns that event's id.
    async fn take(&self, page: EventPage, summary: &mut Summary) -> Result<String, PassError> {
        let newest = page.events.first().map(|e| e.id.clone()).unwrap_or_default();
        let mut inserts = Vec::new();
        for event in page.events.into_iter().rev() {
            summary.seen += 1;
            if !stripe::USED_TYPES.contains(&event.kind.as_str()) {
                summary.not_used += 1;
                continue;
            }
            if self.dry_run {
                match self.store.find(ProviderKind::Stripe, &event.id).await? {
                    Some(_) => summary.had += 1,
                    None => summary.stored += 1,
                }
                continue;
            }
            let store = self.store.clone();
            let row = self.row(event);
            // Sent together, so they share the writer's commits.
            inserts.push(tokio::spawn(async move { store.insert(row).await }));
        }
        for insert in inserts {
            let stored = insert.await.map_err(|_| StoreError::WriterDied)??;
            if stored.added {
                summary.stored += 1;
            } else {
                summary.had += 1;
            }
        }
        if !self.dry_run {
            // Every row of the page is committed: only now may the cursor pass it.
            crate::failpoint::failpoint("backfill_before_cursor");
            self.store.set_meta(&cursor_key(&self.endpoint), &newest).await?;
        }
        summary.cursor = Some(newest.clone());
        Ok(newest)
    }

    fn row(&self, event: ListedEvent) -> NewRow {
        let payment_key = if self.store.is_shared() {
            stripe::parse(&event.raw).ok().map(|n| n.payment_id.unwrap_or(n.event_id))
        } else {
            None
        };
        NewRow {
            endpoint: self.endpoint.clone(),
            provider: ProviderKind::Stripe,
            dedup_key: event.id,
            event_type: Some(event.kind),
            received_at_ms: crate::time::now_ms(),
            remote_addr: self.api.host().to_owned(),
            headers_json: "{}".into(),
            body_len: event.raw.len(),
            body: crate::store::body::pack(&event.raw),
            payment_key,
            source: Source::Backfill,
        }
    }
}

/// Stripe does not know the event a listing started from (`resource_missing`; Stripe answers
/// an unknown id with a 404, and a malformed one with a 400).
fn is_missing(e: &ApiError) -> bool {
    matches!(e, ApiError::Refused { status: 400 | 404, code: Some(code), .. } if code == "resource_missing")
}

/// The daemon's backfill of one endpoint: a pass [`FIRST_PASS_AFTER`] start, then every
/// `every`, each resuming from the cursor; `wake` is woken when a pass stored something.
///
/// Each pass first takes the endpoint's turn in the store ([`Store::take_turn`], for nine
/// tenths of `every`): of several daemons sharing a store, the first whose timer comes round
/// makes the period's pass and the others pass their turn, so Stripe is asked once a period,
/// not once per daemon. A daemon started again within the period likewise waits for the next.
/// A pass that fails or is stopped gives the turn back.
pub async fn run(
    backfill: Backfill,
    every: Duration,
    wake: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut wait = FIRST_PASS_AFTER.min(every);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        wait = every;
        match backfill.store.take_turn(&turn_key(&backfill.endpoint), every.mul_f64(0.9)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(endpoint = %backfill.endpoint, "backfill: this period's pass was made already");
                continue;
            }
            Err(e) => {
                tracing::warn!(endpoint = %backfill.endpoint, error = %crate::error::error_chain(&e), "backfill pass skipped: the store cannot be written");
                continue;
            }
        }
        let result = backfill.pass(Start::Resume, &shutdown).await;
        if result.is_err() || shutdown.is_cancelled() {
            // Not finished: the turn is given back, so that the next daemon whose timer comes
            // round (or this one, started again) makes the pass.
            if let Err(e) = backfill.store.set_meta(&turn_key(&backfill.endpoint), "0").await {
                tracing::debug!(error = %e, "backfill turn not given back; it lapses with the period");
            }
        }
        let summary = match &result {
            Ok(s) | Err((_, s)) => s,
        };
        if let Some(m) = &backfill.metrics {
            m.asked(&backfill.endpoint, "backfill", "stored", summary.stored);
            m.asked(&backfill.endpoint, "backfill", "had", summary.had);
            m.asked(&backfill.endpoint, "backfill", "failed", u64::from(result.is_err()));
        }
        if summary.stored > 0 {
            wake.notify_one();
            tracing::warn!(
                endpoint = %backfill.endpoint,
                stored = summary.stored,
                had = summary.had,
                "backfill stored events the webhook never brought"
            );
        } else {
            tracing::debug!(endpoint = %backfill.endpoint, seen = summary.seen, "backfill: nothing missing");
        }
        if let Err((e, _)) = result {
            tracing::warn!(
                endpoint = %backfill.endpoint,
                error = %crate::error::error_chain(&e),
                "backfill pass stopped; the next one resumes from the cursor"
            );
        }
    }
}
