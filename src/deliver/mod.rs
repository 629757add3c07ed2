//! Delivering actions to the shop: `[[sink]]`s, and one dispatcher per sink.
//!
//! When the worker writes an action, the same transaction writes a delivery row for each sink
//! whose `actions` hold its kind ([`Routes`]; shadow actions get none). A dispatcher per sink
//! reads the deliveries it is owed in the order their actions were written, sends each, and
//! records the attempt: delivered on a 2xx answer ([`http`]) or exit 0 ([`exec`]); otherwise
//! due again after a backoff that doubles from `retry_base` up to `retry_max` (±20% jitter,
//! longer if the receiver asks with `Retry-After`), and `dead` once the action is older than
//! `give_up_after`. One order's actions go out in order on each sink: a delivery waiting for a
//! retry holds back the later ones of the same order, not other orders', and a dead one holds
//! back nothing.
//!
//! A delivery is marked delivered only after the receiver said so: a crash between the two
//! sends it again, with the same `webhook-id` (see [`webhook_id`]), which the receiver
//! deduplicates by. Claims are held in the dispatcher's memory, like the worker's: one daemon
//! owns a SQLite store.

pub mod config;
pub mod exec;
pub mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::config::{SinkConfig, Target};
use crate::domain::ActionKind;
use crate::metrics::Metrics;
use crate::store::{Attempt, OutboxRow, Owed, Store};

/// Deliveries a dispatcher takes at once.
const BATCH: usize = 32;
/// Deliveries taken at a time from a store several daemons share.
const SHARED_BATCH: usize = 4;
/// Added to the time a batch of deliveries may take before another daemon may take them.
const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(15);
/// Longest sleep with nothing due: deliveries made due again by `outbox retry` (another
/// process) go out within this.
const IDLE_WAKE: Duration = Duration::from_secs(5);
/// Longest error text kept per attempt.
const MAX_DETAIL: usize = 512;

/// Which sinks take which kind of action.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_kind: [Vec<Arc<str>>; 4],
}

impl Routes {
    /// The routes of the configured sinks.
    pub fn new(sinks: &[SinkConfig]) -> Routes {
        let mut routes = Routes::default();
        for (i, kind) in ActionKind::ALL.into_iter().enumerate() {
            routes.by_kind[i] =
                sinks.iter().filter(|s| s.takes(kind)).map(|s| s.name.clone()).collect();
        }
        routes
    }

    /// The sinks that take actions of `kind`.
    pub fn of(&self, kind: ActionKind) -> &[Arc<str>] {
        let i = ActionKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        &self.by_kind[i]
    }
}

/// The envelope every sink gets: `{"type": "action.<kind>", "timestamp": …, "data": <the
/// action as outbox list --json prints it>}`.
pub fn envelope(action: &OutboxRow, now_ms: i64) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: String,
        timestamp: String,
        data: &'a OutboxRow,
    }
    let e = Envelope {
        kind: format!("action.{}", action.kind.as_str()),
        timestamp: crate::time::format_utc(now_ms),
        data: action,
    };
    serde_json::to_vec(&e).expect("an action serializes")
}

/// The delivery's `webhook-id`: `act_` and the first 32 hex digits of the SHA-256 of the
/// action's idempotency key. The same for an action across retries, restarts and daemons; only
/// `[A-Za-z0-9_]`, and no provider- or shop-controlled text.
pub fn webhook_id(idempotency_key: &str) -> String {
    let digest = sha2::Sha256::digest(idempotency_key.as_bytes());
    format!("act_{}", &hex::encode(digest)[..32])
}

/// The delay before attempt `attempts + 1`, after `attempts` failed ones: `base` doubling per
/// attempt up to `max`, then ±20% (`jitter` in [0, 1) picks where), never below what the
/// receiver asked for with `Retry-After` (itself capped at `max`).
pub fn backoff(
    base: Duration,
    max: Duration,
    attempts: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let doubled = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20)).min(max);
    let spread = doubled.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    match retry_after {
        Some(asked) => spread.max(asked.min(max)),
        None => spread,
    }
}

/// What one attempt came to, before the backoff is worked out.
#[derive(Debug)]
pub struct Outcome {
    /// Delivered, or why not.
    pub result: Result<(), String>,
    /// A delay the receiver asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
}

/// The dispatchers running, one per sink; replaced sink by sink when the configuration is
/// reloaded (an unchanged sink's dispatcher goes on undisturbed).
#[derive(Debug)]
pub struct Running {
    store: Store,
    written: watch::Receiver<u64>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    by_name: std::collections::HashMap<Arc<str>, (SinkConfig, tokio::task::JoinHandle<()>)>,
}

impl Running {
    /// No dispatcher yet.
    pub fn new(
        store: Store,
        written: watch::Receiver<u64>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Running { store, written, shutdown, metrics, by_name: Default::default() }
    }

    /// Runs a dispatcher for each of `sinks`: a sink that is new or changed gets a new one
    /// (a delivery the old one had under way is sent again, with the same webhook-id), a sink
    /// no longer configured stops.
    pub fn set(&mut self, sinks: &[SinkConfig]) -> Result<(), String> {
        let mut next = std::collections::HashMap::with_capacity(sinks.len());
        for sink in sinks.iter().filter(|s| !matches!(s.target, Target::Pull { .. })) {
            match self.by_name.remove(&sink.name) {
                Some((old, task)) if &old == sink => {
                    next.insert(sink.name.clone(), (old, task));
                }
                previous => {
                    if let Some((_, task)) = previous {
                        task.abort();
                    }
                    let dispatcher = Dispatcher::new(self.store.clone(), sink.clone())
                        .map_err(|e| format!("sink \"{}\": {e}", sink.name))?
                        .counting_in(self.metrics.clone());
                    let task =
                        tokio::spawn(dispatcher.run(self.written.clone(), self.shutdown.clone()));
                    next.insert(sink.name.clone(), (sink.clone(), task));
                }
            }
        }
        for (name, (_, task)) in self.by_name.drain() {
            tracing::info!(sink = %name, "sink removed from the configuration; its deliveries wait");
            task.abort();
        }
        self.by_name = next;
        Ok(())
    }

    /// Stops every dispatcher (a delivery cut short is still owed).
    pub async fn stop(&mut self) {
        for (_, (_, task)) in self.by_name.drain() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Checks that each sink's dispatcher can be built (its HTTP client), without starting any.
pub fn check(sinks: &[SinkConfig]) -> Result<(), String> {
    for sink in sinks {
        if let Target::Http { tls_ca, .. } = &sink.target {
            http::Sender::new(tls_ca.as_deref(), sink.timeout)
                .map_err(|e| format!("sink \"{}\": {e}", sink.name))?;
        }
    }
    Ok(())
}

/// One sink's dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    store: Store,
    sink: SinkConfig,
    http: Option<http::Sender>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// A dispatcher for `sink` over `store`.
    pub fn new(store: Store, sink: SinkConfig) -> Result<Dispatcher, String> {
        let http = match &sink.target {
            Target::Http { tls_ca, .. } => {
                Some(http::Sender::new(tls_ca.as_deref(), sink.timeout)?)
            }
            Target::Exec { .. } | Target::Pull { .. } => None,
        };
        Ok(Dispatcher { store, sink, http, metrics: Arc::new(Metrics::default()) })
    }

    /// Counts its attempts in `metrics`.
    pub fn counting_in(mut self, metrics: Arc<Metrics>) -> Dispatcher {
        self.metrics = metrics;
        self
    }

    /// Delivers until `shutdown`, waking when `written` changes (the worker wrote actions) or
    /// when the next retry falls due.
    pub async fn run(self, mut written: watch::Receiver<u64>, shutdown: CancellationToken) {
        let name = self.sink.name.clone();
        tracing::info!(sink = %name, kind = self.sink.target.kind(), "delivering actions");
        loop {
            let wait = match self.pass(&shutdown).await {
                Ok(()) if shutdown.is_cancelled() => break,
                Ok(()) => match self.store.next_delivery(&name).await {
                    Ok(Some(due)) => Duration::from_millis(
                        u64::try_from(due - crate::time::now_ms()).unwrap_or(0).max(1),
                    ),
                    Ok(None) => IDLE_WAKE,
                    Err(_) => self.sink.retry_base,
                },
                Err(e) => {
                    tracing::error!(sink = %name, error = %crate::error::error_chain(&e), "delivery pass failed; retrying");
                    self.sink.retry_base
                }
            };
            tokio::select! {
                changed = written.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(wait.min(IDLE_WAKE)) => {}
                () = shutdown.cancelled() => break,
            }
        }
        tracing::info!(sink = %name, "delivery stopped");
    }

    /// Delivers what is due, batch after batch, until nothing is.
    async fn pass(&self, shutdown: &CancellationToken) -> Result<(), crate::store::StoreError> {
        loop {
            let now = crate::time::now_ms();
            // On a store several daemons share, what is taken is leased for as long as
            // delivering it may take: a small batch, so that a daemon that dies mid-batch
            // holds up little, not for long.
            let batch = if self.store.is_shared() { SHARED_BATCH } else { BATCH };
            let in_flight = self.sink.timeout * batch as u32 + IN_FLIGHT_MARGIN;
            let owed = self.store.owed(&self.sink.name, now, batch, in_flight).await?;
            if owed.is_empty() {
                return Ok(());
            }
            for delivery in owed {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let id = delivery.action.id;
                let attempt = self.attempt(&delivery).await;
                crate::failpoint::failpoint("deliver_before_record");
                let result = attempt.metric();
                if self.store.record_attempt(&self.sink.name, id, attempt).await? {
                    self.metrics.delivery(&self.sink.name, result);
                }
            }
        }
    }

    /// Sends one delivery and works out its new state.
    async fn attempt(&self, delivery: &Owed) -> Attempt {
        let started = Instant::now();
        let at = crate::time::now_ms();
        let number = delivery.attempts + 1;
        let body = envelope(&delivery.action, at);
        let id = webhook_id(&delivery.action.idempotency_key);
        let outcome = match (&self.sink.target, &self.http) {
            (Target::Http { url, secrets, .. }, Some(sender)) => {
                sender.send(url, secrets, &id, at / 1000, &body, &self.sink.name, number).await
            }
            (Target::Exec { command }, _) => {
                exec::run(command, &body, &delivery.action, &id, self.sink.timeout).await
            }
            (Target::Http { .. }, None) | (Target::Pull { .. }, _) => {
                Outcome { result: Err("not delivered by a dispatcher".into()), retry_after: None }
            }
        };
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        // Test-only and broken on purpose: whatever the receiver said, call it delivered.
        #[cfg(feature = "test-deliver-ignores-answer")]
        let outcome = Outcome { result: Ok(()), ..outcome };
        let result = match outcome.result {
            Ok(()) => {
                tracing::info!(sink = %self.sink.name, action_id = delivery.action.id, attempt = number, "delivered");
                Ok(())
            }
            Err(mut error) => {
                cut(&mut error);
                let now = crate::time::now_ms();
                let give_up = delivery.created_at
                    + i64::try_from(self.sink.give_up_after.as_millis()).unwrap_or(i64::MAX);
                let delay = backoff(
                    self.sink.retry_base,
                    self.sink.retry_max,
                    number,
                    jitter(delivery.action.id, number),
                    outcome.retry_after,
                );
                let next = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                if next > give_up {
                    tracing::error!(sink = %self.sink.name, action_id = delivery.action.id, attempt = number, %error, "delivery failed for good; marked dead");
                    Err((error, None))
                } else {
                    tracing::warn!(sink = %self.sink.name, action_id = delivery.action.id, attempt = number, %error, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                    Err((error, Some(next)))
                }
            }
        };
        Attempt { number, at, duration_ms, result }
    }
}

/// A number in [0, 1) that spreads retries of different actions apart, the same for one
/// action and attempt (so a test can reason about it).
fn jitter(action_id: i64, attempt: u32) -> f64 {
    let digest = sha2::Sha256::digest(format!("{action_id}:{attempt}").as_bytes());
    f64::from(u16::from_be_bytes([digest[0], digest[1]])) / 65536.0
}

/// Shortens an error text to what an attempt row keeps.
fn cut(text: &mut String) {
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_ids_are_stable_and_plain() {
        let a = webhook_id("refund:payment:stripe:pi_1");
        assert_eq!(a, webhook_id("refund:payment:stripe:pi_1"));
        assert_ne!(a, webhook_id("refund:payment:stripe:pi_2"));
        assert_eq!(a.len(), 4 + 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{a}");
    }

    #[test]
    fn backoff_doubles_within_its_bounds_and_honours_retry_after() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        for (attempts, expected) in [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (40, 3600)] {
            for jitter in [0.0, 0.5, 0.999] {
                let d = backoff(base, max, attempts, jitter, None).as_secs_f64();
                let e = expected as f64;
                assert!(d >= e * 0.8 - 1e-9 && d <= e * 1.2 + 1e-9, "{attempts} {jitter}: {d}");
            }
        }
        let asked = Some(Duration::from_secs(120));
        assert_eq!(backoff(base, max, 1, 0.5, asked), Duration::from_secs(120));
        // A receiver cannot push a retry beyond retry_max.
        let greedy = Some(Duration::from_secs(86_400));
        assert_eq!(backoff(base, max, 1, 0.5, greedy), max);
    }

    #[test]
    fn routes_send_each_kind_to_the_sinks_that_take_it() {
        let sink = |name: &str, kinds: &[ActionKind]| SinkConfig {
            name: Arc::from(name),
            actions: kinds.to_vec(),
            timeout: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            give_up_after: Duration::from_secs(1),
            target: Target::Exec { command: vec!["/bin/true".into()] },
        };
        let routes = Routes::new(&[
            sink("shop", &ActionKind::ALL),
            sink("mailer", &[ActionKind::NotifyCustomer]),
        ]);
        let names = |k| routes.of(k).iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names(ActionKind::Refund), ["shop"]);
        assert_eq!(names(ActionKind::NotifyCustomer), ["shop", "mailer"]);
    }
}
