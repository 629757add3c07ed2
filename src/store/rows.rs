//! The rows the store takes and gives back, the same for every backend.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::body;
use crate::domain::{ActionKind, InboxStatus, Source};
use crate::provider::ProviderKind;

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
    /// Its payment (the payment id, or the event id when it names none), when the store
    /// wants it at once ([`super::Store::is_shared`]); otherwise the worker sets it.
    pub payment_key: Option<String>,
    /// How it came: a webhook, or asked of the provider's API. A row asked for is
    /// deduplicated like any other, but a repeat of it never counts as a delivery.
    pub source: Source,
}

/// The outcome of storing a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The inbox row id.
    pub id: i64,
    /// Deliveries seen so far, this one included when it is a webhook.
    pub delivery_count: i64,
    /// Whether this made a new row (else the dedup key was stored already).
    pub added: bool,
}

impl Stored {
    /// Whether this repeated a notification already stored.
    pub fn is_duplicate(&self) -> bool {
        !self.added
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

/// A claimed inbox row, as the worker reads it.
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
    /// When the worker first tried it, unix ms (now, if this is the first time).
    pub first_tried_at: i64,
    /// The raw body (empty if it could not be read back; see `unreadable`).
    pub body: Vec<u8>,
    /// Why the stored body could not be turned back into the raw bytes.
    pub unreadable: Option<String>,
    /// Failed attempts before this one.
    pub attempts: u32,
    /// When its provider confirmed it (providers that confirm, such as PayPal IPN).
    pub verified_at: Option<i64>,
    /// The headers kept with it, a JSON object: whether and how it must be confirmed (a
    /// PayPal webhook stored unverified keeps what PayPal's API needs). Read only for PayPal
    /// webhook rows not confirmed yet, the only ones that need them; `{}` for the others.
    pub headers: String,
    /// Its status when it was read: the decision is written only if it is still the same.
    pub status: InboxStatus,
}

/// An inbox row without its body, for listings.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InboxSummary {
    /// Row id.
    pub id: i64,
    /// Endpoint name.
    pub endpoint: String,
    /// Provider name (as stored: a row may come from a provider this build does not know).
    pub provider: String,
    /// The provider's notification id.
    pub dedup_key: String,
    /// The provider's event type.
    pub event_type: Option<String>,
    /// First delivery, unix milliseconds.
    pub received_at: i64,
    /// Latest delivery, unix milliseconds.
    pub last_received_at: i64,
    /// Peer address of the first delivery.
    pub remote_addr: String,
    /// Deliveries seen.
    pub delivery_count: i64,
    /// How it came (a webhook, a backfill, an inquiry).
    pub source: Source,
    /// Where the row stands.
    pub status: InboxStatus,
    /// Body length in bytes.
    pub body_len: i64,
    /// What the worker decided, for people.
    pub outcome: Option<String>,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Why the last attempt failed (a `dead` row keeps it).
    pub last_error: Option<String>,
    /// PayPal IPN: when PayPal answered VERIFIED to the postback, unix milliseconds.
    pub verified_at: Option<i64>,
    /// A waiting row (`pending` or `parked`): when the worker takes it next, unix
    /// milliseconds; `None` for a row due at once or finished.
    pub next_attempt_at: Option<i64>,
    /// When the worker first tried the row, unix milliseconds; `None` before that.
    pub first_tried_at: Option<i64>,
}

/// A full inbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    /// Everything but the headers and body.
    pub summary: InboxSummary,
    /// The kept headers, a JSON object.
    pub headers: String,
    /// The raw body, byte for byte.
    pub body: Vec<u8>,
}

/// A recorded verification failure.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// Row id.
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Endpoint name.
    pub endpoint: String,
    /// Peer address.
    pub remote_addr: String,
    /// Short code.
    pub reason: String,
    /// The message sent back.
    pub detail: String,
    /// Body length.
    pub body_len: i64,
}

/// Filters for [`list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only rows with this status.
    pub status: Option<InboxStatus>,
    /// Only rows from this provider.
    pub provider: Option<String>,
    /// Only rows that came this way (a webhook, a backfill, an inquiry).
    pub source: Option<Source>,
    /// Only rows with an id above this.
    pub after: Option<i64>,
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Only the newest this many of the matching rows (still listed oldest first).
    pub last: Option<u64>,
}

/// Which outbox rows to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxFilter {
    /// Only rows with an id above this.
    pub after: Option<i64>,
    /// Only actions of this kind.
    pub kind: Option<ActionKind>,
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Shadow actions (decided in shadow mode, never carried out) instead of live ones.
    pub shadow: bool,
    /// Only the newest this many (still in order).
    pub last: Option<u64>,
}

/// What the store holds about one order's payments, for the payment status API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderPayments {
    /// The payments matched to the order.
    pub payments: Vec<PaymentSummary>,
    /// A live refund action names the order.
    pub refunded: bool,
    /// A live review action names the order.
    pub review: bool,
}

/// One payment of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentSummary {
    /// Provider name.
    pub provider: String,
    /// The provider's payment id.
    pub payment_id: String,
    /// `pending`, `authorized`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// Whether it is the payment that paid the order.
    #[serde(skip)]
    pub fulfilled: bool,
    /// The amount its latest action names, as a decimal string.
    pub amount: Option<String>,
    /// Its currency (ISO 4217).
    pub currency: Option<String>,
}

/// A delivery owed to a sink: its action, and how many attempts it has had.
#[derive(Debug, Clone)]
pub struct Owed {
    /// The action, as `outbox list --json` prints it.
    pub action: OutboxRow,
    /// Attempts so far.
    pub attempts: u32,
    /// When the action was written (unix ms): the give-up clock runs from here.
    pub created_at: i64,
}

/// One delivery attempt and what it came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Which attempt (1 for the first).
    pub number: u32,
    /// When it started (unix ms).
    pub at: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// Delivered; or why not, with when to try again (`None`: never, the delivery is dead).
    pub result: Result<(), (String, Option<i64>)>,
}

impl Attempt {
    /// Its result, as the metrics count it.
    pub fn metric(&self) -> crate::metrics::DeliveryResult {
        match &self.result {
            Ok(()) => crate::metrics::DeliveryResult::delivered,
            Err((_, Some(_))) => crate::metrics::DeliveryResult::failed,
            Err((_, None)) => crate::metrics::DeliveryResult::dead,
        }
    }
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this action's.
    pub action_id: Option<i64>,
    /// Only this sink's.
    pub sink: Option<String>,
    /// Only those not delivered (pending, retrying, dead).
    pub undelivered: bool,
    /// At most this many.
    pub limit: Option<u64>,
}

/// A delivery's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The action.
    pub action_id: i64,
    /// The sink.
    pub sink: String,
    /// `pending`, `retrying`, `delivered` or `dead`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// When it is tried next, RFC 3339 UTC (pending and retrying only).
    pub next_attempt_at: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered, RFC 3339 UTC.
    pub delivered_at: Option<String>,
}

/// A sink's deliveries, counted by state.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SinkCounts {
    /// The sink.
    pub sink: String,
    /// Never tried yet.
    pub pending: i64,
    /// Failed, to be tried again.
    pub retrying: i64,
    /// Given up on.
    pub dead: i64,
    /// Delivered.
    pub delivered: i64,
    /// When the oldest action it is still owed (or gave up on) was written, RFC 3339 UTC.
    pub oldest_undelivered: Option<String>,
}

/// One recorded attempt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttemptRow {
    /// The sink.
    pub sink: String,
    /// Which attempt.
    pub attempt: u32,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// How long it took.
    pub duration_ms: i64,
    /// Whether it delivered.
    pub delivered: bool,
    /// The answer or error, shortened.
    pub detail: Option<String>,
}

/// An outbox row, as consumers read it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id: consumers remember the last one they handled (`--after`).
    pub id: i64,
    /// `fulfil`, `refund`, `notify_customer` or `review`.
    pub kind: ActionKind,
    /// The shop's order id.
    pub order_id: Option<String>,
    /// Provider name.
    pub provider: String,
    /// The endpoint (provider account) the notification arrived on: refund through it.
    pub endpoint: Option<String>,
    /// The provider's payment id.
    pub payment_id: Option<String>,
    /// The amount as a decimal string with the currency's digits (`"100.00"`).
    pub amount: Option<String>,
    /// The amount in minor units.
    pub amount_minor: Option<i64>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// Why, for people.
    pub reason: String,
    /// For `notify_customer`: which message.
    pub template: Option<String>,
    /// Where to send it.
    pub customer_email: Option<String>,
    /// Unique per logical action; pass it on (for example as Stripe's `Idempotency-Key`).
    pub idempotency_key: String,
    /// The inbox row that caused it.
    pub inbox_id: i64,
    /// The provider's event id that caused it.
    pub event_id: String,
    /// When it was written, RFC 3339 UTC.
    pub created_at: String,
    /// Decided in shadow mode: recorded for comparison, never to be carried out.
    pub shadow: bool,
}

/// What the metrics read from the store at each scrape: only what indexes give cheaply (the
/// rows waiting or given up on, never the finished millions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Inbox rows by status, for `pending`, `processing`, `parked` and `dead`.
    pub inbox: Vec<(&'static str, i64)>,
    /// When the oldest row waiting to be decided fell due (unix ms), if any is due.
    pub oldest_due_ms: Option<i64>,
    /// When each endpoint last stored a notification (unix ms).
    pub last_stored: Vec<(String, i64)>,
    /// Each sink with deliveries owed or dead.
    pub sinks: Vec<SinkGauges>,
}

/// One sink's deliveries that are not done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkGauges {
    /// The sink.
    pub sink: String,
    /// Owed: pending or retrying.
    pub owed: i64,
    /// Given up on.
    pub dead: i64,
    /// When the oldest action still owed (not dead) was written (unix ms).
    pub oldest_owed_ms: Option<i64>,
}

/// A payment still open (pending, or authorized and not captured) and not yet reviewed for
/// its status: what the check for payments left open reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPayment {
    /// Its provider.
    pub provider: ProviderKind,
    /// The provider's id for it.
    pub payment_id: String,
    /// `Pending` or `Authorized`.
    pub status: crate::domain::PaymentStatus,
    /// The order it was matched to.
    pub order_id: Option<String>,
    /// When its last notification was decided (unix ms).
    pub since_ms: i64,
    /// That notification's inbox row, its provider id, and its endpoint.
    pub inbox_id: i64,
    /// The provider's id of that notification.
    pub event_id: String,
    /// The endpoint it arrived on.
    pub endpoint: String,
}

/// Which inbox rows a bulk replay takes (every condition given must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySelection {
    /// These rows (none: any).
    pub ids: Vec<i64>,
    /// With this status.
    pub status: Option<InboxStatus>,
    /// From this provider.
    pub provider: Option<String>,
    /// Arrived on this endpoint.
    pub endpoint: Option<String>,
    /// About a payment matched to this order.
    pub order: Option<String>,
    /// First delivered at or after this (unix ms).
    pub since_ms: Option<i64>,
    /// First delivered before this (unix ms).
    pub until_ms: Option<i64>,
}
