//! Prometheus metrics, served at `GET /metrics` on the admin listener.
//!
//! Counters and histograms are kept in memory as things happen (requests, decisions,
//! deliveries); the gauges that describe the store (rows waiting, rows given up on, when each
//! endpoint last stored a notification, what each sink is owed) are read from it at each
//! scrape, through indexes that stay small in a healthy store, so a restart never makes a
//! provider look silent. Label values come from a closed set (the configuration's endpoint and
//! sink names, fixed outcome and reason codes), never from a request: an unknown endpoint in a
//! URL is not a label, and no secret or token is ever one.
//!
//! Names follow the Prometheus naming guide: base units (seconds), `_total` for counters, and
//! timestamps (`…_timestamp_seconds`) where the time of an event is the truth, so an alert
//! computes the age with `time() - …`.

use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::store::StoreGauges;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A timestamp gauge, in seconds with a fractional part.
type Timestamp = Gauge<f64, std::sync::atomic::AtomicU64>;

/// What became of a webhook request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RequestResult {
    /// Stored now.
    stored,
    /// Already stored: acknowledged, counted as a repeat.
    duplicate,
    /// Refused: failed verification or authentication, or a bad request.
    rejected,
    /// Not stored (store or provider unavailable): answered 503, the provider retries.
    unavailable,
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DeliveryResult {
    /// The sink took it.
    delivered,
    /// It failed and is tried again.
    failed,
    /// It failed and was given up on.
    dead,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointResult {
    endpoint: String,
    result: RequestResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointReason {
    endpoint: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkResult {
    sink: String,
    result: DeliveryResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AskedLabels {
    endpoint: String,
    what: &'static str,
    result: &'static str,
}

/// A label set with no labels: for a gauge that is absent when it has no value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Every metric of one daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<EndpointResult, Counter>,
    verification_failures: Family<EndpointReason, Counter>,
    request_seconds: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    last_stored: Family<EndpointLabel, Timestamp>,
    silent_after: Family<EndpointLabel, Gauge>,
    inbox_rows: Family<StatusLabel, Gauge>,
    oldest_due: Family<NoLabels, Timestamp>,
    decisions: Family<OutcomeLabel, Counter>,
    actions: Family<KindLabel, Counter>,
    deliveries: Family<SinkResult, Counter>,
    undelivered: Family<SinkLabel, Gauge>,
    dead_deliveries: Family<SinkLabel, Gauge>,
    oldest_undelivered: Family<SinkLabel, Timestamp>,
    store_ready: Gauge,
    shop_lookup_errors: Counter,
    asked: Family<AskedLabels, Counter>,
    /// The configured sinks, each shown (with zeros) even before it has a delivery.
    sinks: Mutex<Vec<String>>,
    /// The configured endpoints and their `silent_after`, for the admin page.
    endpoints: Mutex<Vec<(String, Option<std::time::Duration>)>>,
    /// One scrape at a time: each sets the store's gauges afresh, then encodes them.
    rendering: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(None)
    }
}

impl Metrics {
    /// A fresh set; `commit_seconds` is the store writer's histogram, if it has one.
    pub fn new(commit_seconds: Option<Histogram>) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            verification_failures: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram),
            last_stored: Family::default(),
            silent_after: Family::default(),
            inbox_rows: Family::default(),
            oldest_due: Family::default(),
            decisions: Family::default(),
            actions: Family::default(),
            deliveries: Family::default(),
            undelivered: Family::default(),
            dead_deliveries: Family::default(),
            oldest_undelivered: Family::default(),
            store_ready: Gauge::default(),
            shop_lookup_errors: Counter::default(),
            asked: Family::default(),
            sinks: Mutex::new(Vec::new()),
            endpoints: Mutex::new(Vec::new()),
            rendering: Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "reconciled_webhook_requests",
            "Webhook requests to a configured endpoint, by what became of them",
            m.requests.clone(),
        );
        r.register(
            "reconciled_verification_failures",
            "Requests refused by verification or authentication, by reason",
            m.verification_failures.clone(),
        );
        r.register(
            "reconciled_webhook_last_stored_timestamp_seconds",
            "When the endpoint last stored a notification (new or a repeat), from the store",
            m.last_stored.clone(),
        );
        r.register(
            "reconciled_endpoint_silent_after_seconds",
            "The endpoint's silent_after: longer without a notification is worth an alert",
            m.silent_after.clone(),
        );
        if let Some(commit) = commit_seconds {
            r.register(
                "reconciled_ingest_commit_duration_seconds",
                "How long each group commit of the inbox took",
                commit,
            );
        }
        r.register(
            "reconciled_http_request_duration_seconds",
            "Time from a webhook request's arrival to its answer",
            m.request_seconds.clone(),
        );
        r.register(
            "reconciled_inbox_rows",
            "Inbox rows still to be decided, or given up on (dead), by status",
            m.inbox_rows.clone(),
        );
        r.register(
            "reconciled_inbox_oldest_due_timestamp_seconds",
            "When the oldest row waiting to be decided fell due; absent when none is due",
            m.oldest_due.clone(),
        );
        r.register(
            "reconciled_decisions",
            "Inbox rows the worker has handled, by what became of them",
            m.decisions.clone(),
        );
        r.register(
            "reconciled_actions",
            "Actions written to the outbox, by kind",
            m.actions.clone(),
        );
        r.register(
            "reconciled_sink_deliveries",
            "Delivery attempts to a sink, by result",
            m.deliveries.clone(),
        );
        r.register(
            "reconciled_sink_undelivered",
            "Actions the sink has not taken: owed, or given up on",
            m.undelivered.clone(),
        );
        r.register(
            "reconciled_sink_dead",
            "Deliveries to the sink that were given up on (outbox retry sends them again)",
            m.dead_deliveries.clone(),
        );
        r.register(
            "reconciled_sink_oldest_undelivered_timestamp_seconds",
            "When the oldest action still owed to the sink was written; absent when none is owed",
            m.oldest_undelivered.clone(),
        );
        r.register(
            "reconciled_store_ready",
            "1 when the store takes notifications, 0 when it does not",
            m.store_ready.clone(),
        );
        r.register(
            "reconciled_shop_lookup_errors",
            "Failed lookups of orders in the shop's database",
            m.shop_lookup_errors.clone(),
        );
        r.register(
            "reconciled_asked",
            "Answers from a provider's API: events a backfill listed, payments an inquiry looked \
             up; by what asked and whether the answer was stored as a new row (stored), was \
             there already or showed no move (had), or did not come (failed)",
            m.asked.clone(),
        );
        r.register(
            "reconciled_build",
            "The running version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics { registry, ..m }
    }

    /// A webhook request to `endpoint` ended with `result` after `seconds`.
    pub fn request(&self, endpoint: &str, result: RequestResult, seconds: f64) {
        self.requests.get_or_create(&EndpointResult { endpoint: endpoint.into(), result }).inc();
        self.request_seconds
            .get_or_create(&EndpointLabel { endpoint: endpoint.into() })
            .observe(seconds);
    }

    /// A request to `endpoint` was refused for `reason` (a fixed code).
    pub fn verification_failure(&self, endpoint: &str, reason: &'static str) {
        self.verification_failures
            .get_or_create(&EndpointReason { endpoint: endpoint.into(), reason })
            .inc();
    }

    /// The worker handled a row: `outcome` is its new status (`done`, `parked`, `retry`, …).
    pub fn decision(&self, outcome: &'static str) {
        self.decisions.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// An action of `kind` was written.
    pub fn action(&self, kind: &'static str) {
        self.actions.get_or_create(&KindLabel { kind }).inc();
    }

    /// A delivery attempt to `sink` ended with `result`.
    pub fn delivery(&self, sink: &str, result: DeliveryResult) {
        self.deliveries.get_or_create(&SinkResult { sink: sink.into(), result }).inc();
    }

    /// `n` answers from `endpoint`'s provider API: `what` is `backfill` or `inquiry`,
    /// `result` is `stored`, `had` or `failed`.
    pub fn asked(&self, endpoint: &str, what: &'static str, result: &'static str, n: u64) {
        self.asked
            .get_or_create(&AskedLabels { endpoint: endpoint.into(), what, result })
            .inc_by(n);
    }

    /// A lookup in the shop's database failed.
    pub fn shop_lookup_error(&self) {
        self.shop_lookup_errors.inc();
    }

    /// The configured endpoints with their `silent_after`, and the configured sinks; called at
    /// start and on each reload.
    pub fn configure<'a>(
        &self,
        endpoints: impl IntoIterator<Item = (&'a str, Option<std::time::Duration>)>,
        sinks: impl IntoIterator<Item = &'a str>,
    ) {
        let endpoints: Vec<(String, Option<std::time::Duration>)> =
            endpoints.into_iter().map(|(e, after)| (e.to_owned(), after)).collect();
        self.silent_after.clear();
        for (endpoint, after) in &endpoints {
            let Some(after) = after else { continue };
            let secs = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
            self.silent_after
                .get_or_create(&EndpointLabel { endpoint: endpoint.clone() })
                .set(secs);
        }
        *self.endpoints.lock().unwrap_or_else(|p| p.into_inner()) = endpoints;
        let mut configured = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        *configured = sinks.into_iter().map(str::to_owned).collect();
    }

    /// The configured endpoints and their `silent_after`.
    pub fn endpoints(&self) -> Vec<(String, Option<std::time::Duration>)> {
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The text for one scrape: `gauges` as the store has them now (`None` when it could not
    /// be read: the store gauges are left out, and `reconciled_store_ready` is 0), `ready`
    /// whether the store takes notifications.
    pub fn render(&self, gauges: Option<&StoreGauges>, ready: bool) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|p| p.into_inner());
        self.store_ready.set(i64::from(ready));
        self.inbox_rows.clear();
        self.oldest_due.clear();
        self.last_stored.clear();
        self.undelivered.clear();
        self.dead_deliveries.clear();
        self.oldest_undelivered.clear();
        if let Some(g) = gauges {
            for (status, n) in &g.inbox {
                self.inbox_rows.get_or_create(&StatusLabel { status }).set(*n);
            }
            if let Some(ms) = g.oldest_due_ms {
                self.oldest_due.get_or_create(&NoLabels {}).set(seconds(ms));
            }
            for (endpoint, ms) in &g.last_stored {
                self.last_stored
                    .get_or_create(&EndpointLabel { endpoint: endpoint.clone() })
                    .set(seconds(*ms));
            }
            let configured = self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for sink in &configured {
                let label = SinkLabel { sink: sink.clone() };
                self.undelivered.get_or_create(&label).set(0);
                self.dead_deliveries.get_or_create(&label).set(0);
            }
            for s in &g.sinks {
                let label = SinkLabel { sink: s.sink.clone() };
                self.undelivered.get_or_create(&label).set(s.owed + s.dead);
                self.dead_deliveries.get_or_create(&label).set(s.dead);
                if let Some(ms) = s.oldest_owed_ms {
                    self.oldest_undelivered.get_or_create(&label).set(seconds(ms));
                }
            }
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SinkGauges;

    /// The value of the sample whose name and labels are exactly `series`, if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next())
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn counters_and_store_gauges_are_rendered_with_their_labels() {
        let m = Metrics::new(Some(crate::store::commit_histogram()));
        m.configure(
            [("stripe", Some(std::time::Duration::from_secs(21600))), ("paypal", None)],
            ["shop", "mailer"],
        );
        m.request("stripe", RequestResult::stored, 0.003);
        m.request("stripe", RequestResult::stored, 0.004);
        m.request("stripe", RequestResult::duplicate, 0.002);
        m.verification_failure("stripe", "bad_signature");
        m.decision("done");
        m.action("fulfil");
        m.delivery("shop", DeliveryResult::failed);
        m.asked("stripe", "backfill", "stored", 3);
        let gauges = StoreGauges {
            inbox: vec![("pending", 3), ("dead", 1)],
            oldest_due_ms: Some(1_700_000_000_500),
            last_stored: vec![("stripe".into(), 1_700_000_001_000)],
            sinks: vec![SinkGauges {
                sink: "shop".into(),
                owed: 2,
                dead: 1,
                oldest_owed_ms: Some(1_700_000_000_000),
            }],
        };
        let text = m.render(Some(&gauges), true);
        let at = |s: &str| sample(&text, s);
        assert_eq!(
            at(r#"reconciled_webhook_requests_total{endpoint="stripe",result="stored"}"#),
            Some(2.0)
        );
        assert_eq!(
            at(r#"reconciled_webhook_requests_total{endpoint="stripe",result="duplicate"}"#),
            Some(1.0)
        );
        assert_eq!(
            at(
                r#"reconciled_verification_failures_total{endpoint="stripe",reason="bad_signature"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            at(r#"reconciled_http_request_duration_seconds_count{endpoint="stripe"}"#),
            Some(3.0)
        );
        assert_eq!(at(r#"reconciled_inbox_rows{status="pending"}"#), Some(3.0));
        assert_eq!(at("reconciled_inbox_oldest_due_timestamp_seconds"), Some(1_700_000_000.5));
        assert_eq!(
            at(r#"reconciled_webhook_last_stored_timestamp_seconds{endpoint="stripe"}"#),
            Some(1_700_000_001.0)
        );
        assert_eq!(
            at(r#"reconciled_endpoint_silent_after_seconds{endpoint="stripe"}"#),
            Some(21600.0)
        );
        assert!(!text.contains(r#"reconciled_endpoint_silent_after_seconds{endpoint="paypal"}"#));
        assert_eq!(at(r#"reconciled_sink_undelivered{sink="shop"}"#), Some(3.0));
        assert_eq!(at(r#"reconciled_sink_dead{sink="shop"}"#), Some(1.0));
        // A configured sink with nothing owed shows zeros and no oldest timestamp.
        assert_eq!(at(r#"reconciled_sink_undelivered{sink="mailer"}"#), Some(0.0));
        assert!(!text
            .contains(r#"reconciled_sink_oldest_undelivered_timestamp_seconds{sink="mailer"}"#));
        assert_eq!(
            at(r#"reconciled_sink_deliveries_total{sink="shop",result="failed"}"#),
            Some(1.0)
        );
        assert_eq!(at(r#"reconciled_decisions_total{outcome="done"}"#), Some(1.0));
        assert_eq!(at(r#"reconciled_actions_total{kind="fulfil"}"#), Some(1.0));
        assert_eq!(at("reconciled_store_ready"), Some(1.0));
        assert_eq!(
            at(r#"reconciled_asked_total{endpoint="stripe",what="backfill",result="stored"}"#),
            Some(3.0)
        );
        assert_eq!(at("reconciled_shop_lookup_errors_total"), Some(0.0));
        assert_eq!(
            at(&format!("reconciled_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
            Some(1.0)
        );
        assert_eq!(at("reconciled_ingest_commit_duration_seconds_count"), Some(0.0));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn gauges_without_a_value_are_absent_and_an_unreadable_store_is_not_ready() {
        let m = Metrics::default();
        let with = StoreGauges { oldest_due_ms: Some(1000), ..Default::default() };
        assert!(m
            .render(Some(&with), true)
            .contains("reconciled_inbox_oldest_due_timestamp_seconds "));
        // Nothing due any more: the series goes away rather than keeping a stale time.
        let text = m.render(Some(&StoreGauges::default()), true);
        assert!(!text.contains("reconciled_inbox_oldest_due_timestamp_seconds "), "{text}");
        let text = m.render(None, false);
        assert_eq!(sample(&text, "reconciled_store_ready"), Some(0.0));
        assert!(!text.contains("reconciled_inbox_rows{"));
    }
}
