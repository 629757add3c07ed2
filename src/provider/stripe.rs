//! Stripe: `Stripe-Signature` verification and event identification.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`; the signed string is the `t` value
//! as sent, a `.`, and the raw body; the MAC is HMAC-SHA256 keyed with the secret's UTF-8
//! bytes. A request is accepted when any `v1` matches any configured secret (several are live
//! while a secret is rolled). As in Stripe's SDKs the signature is checked before the age; we
//! also refuse timestamps too far in the future. Both snapshot events (`object: "event"`) and
//! thin events (`object: "v2.core.event"`) are accepted; the event `id` is the dedup key.

use std::borrow::Cow;

use hyper::HeaderMap;
use serde::Deserialize;

use serde_json::Value;

use super::hmac::MacKey;
use super::{
    header_text, is_plain_id, keep_headers, str_at, Accepted, Kind, Notification, Rejection,
};
use crate::money::{stripe_exponent, Currency, Money};
use crate::secret::Secret;
use crate::settings::{ConfigError, Resolver};

/// The signature header.
pub const HEADER: &str = "stripe-signature";
/// Headers kept with the row: enough to verify it again.
const KEPT_HEADERS: &[&str] = &[HEADER, "content-type", "user-agent"];
/// More signatures than this in one header is an attack, not a secret roll.
const MAX_SIGNATURES: usize = 16;

/// A parsed `Stripe-Signature` header.
#[derive(Debug)]
pub struct SignatureHeader<'a> {
    /// The `t` value exactly as sent: it is part of the signed string.
    pub timestamp_text: &'a str,
    /// The `t` value as unix seconds.
    pub timestamp: i64,
    /// Every `v1` signature that is well-formed hex of the right length.
    pub v1: Vec<[u8; 32]>,
}

/// Parses a `Stripe-Signature` header. Unknown schemes (`v0`) are ignored; a `v1` that is not
/// 64 hex digits can never match and is skipped.
pub fn parse_header(value: &str) -> Result<SignatureHeader<'_>, Rejection> {
    let malformed = |detail| Rejection::MalformedHeader { header: "Stripe-Signature", detail };
    let mut timestamp_text = None;
    let mut v1 = Vec::new();
    // A `v1` was sent, but none of them is 64 hex digits.
    let mut v1_unreadable = false;
    for item in value.split(',') {
        let Some((key, val)) = item.split_once('=') else {
            return Err(malformed("expected comma-separated key=value pairs"));
        };
        match key.trim() {
            "t" if timestamp_text.is_none() => timestamp_text = Some(val.trim()),
            "t" => return Err(malformed("more than one t")),
            "v1" => {
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(val.trim(), &mut sig).is_ok() {
                    if v1.len() == MAX_SIGNATURES {
                        return Err(malformed("too many signatures"));
                    }
                    v1.push(sig);
                } else {
                    v1_unreadable = true;
                }
            }
            _ => {}
        }
    }
    let timestamp_text = timestamp_text.ok_or(malformed("no t= timestamp"))?;
    if timestamp_text.is_empty() || !timestamp_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("t= is not unix seconds"));
    }
    let timestamp = timestamp_text.parse().map_err(|_| malformed("t= is out of range"))?;
    if v1.is_empty() && v1_unreadable {
        return Err(malformed("the v1= signature is not 64 hex digits"));
    }
    if v1.is_empty() {
        return Err(malformed("no v1= signature"));
    }
    Ok(SignatureHeader { timestamp_text, timestamp, v1 })
}

/// The `v1` signature of `body` at `timestamp`, as lower-case hex.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    super::hmac::hex_mac(secret, &[timestamp.to_string().as_bytes(), b".", body])
}

/// A complete `Stripe-Signature` header value for a test request.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", signature(secret, timestamp, body))
}

/// Checks the signature (constant-time) and then the timestamp against `now` (unix seconds).
pub fn verify(
    secrets: &[Secret],
    tolerance_secs: u64,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), Rejection> {
    let keys: Vec<MacKey> = secrets.iter().map(MacKey::new).collect();
    verify_keyed(&keys, tolerance_secs, header, body, now)
}

/// [`verify`] with the secrets keyed beforehand (an endpoint's [`Settings`]).
fn verify_keyed(
    keys: &[MacKey],
    tolerance_secs: u64,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), Rejection> {
    let parsed = parse_header(header)?;
    let signed: [&[u8]; 3] = [parsed.timestamp_text.as_bytes(), b".", body];
    let matched =
        super::hmac::verify_any(keys, &signed, parsed.v1.iter().map(|sig| sig.as_slice()));
    if !matched {
        return Err(Rejection::BadSignature);
    }
    let age = now.saturating_sub(parsed.timestamp);
    let tolerance = i64::try_from(tolerance_secs).unwrap_or(i64::MAX);
    if age > tolerance {
        return Err(Rejection::Stale { age_secs: age, tolerance_secs });
    }
    if -age > tolerance {
        return Err(Rejection::Future { ahead_secs: -age, tolerance_secs });
    }
    Ok(())
}

/// The part of an event envelope the inbox needs. Borrowed: the body is parsed once, in full
/// (so malformed JSON is refused), without copying strings that need no unescaping.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    object: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// What the inbox records about a verified event.
#[derive(Debug, PartialEq, Eq)]
pub struct EventId {
    /// `evt_…`: the dedup key.
    pub id: String,
    /// `payment_intent.succeeded`, or a thin event's type.
    pub kind: String,
}

/// Reads the envelope of a snapshot or thin event.
pub fn identify(body: &[u8]) -> Result<EventId, Rejection> {
    let env: Envelope<'_> = serde_json::from_slice(body)
        .map_err(|e| Rejection::MalformedBody(format!("not a Stripe event: {e}")))?;
    if env.object != "event" && env.object != "v2.core.event" {
        return Err(Rejection::MalformedBody(format!(
            "object is \"{}\", expected \"event\" or \"v2.core.event\"",
            truncate(&env.object, 40)
        )));
    }
    if !is_plain_id(&env.id) {
        return Err(Rejection::MalformedBody(
            "event id is empty, too long or has control characters".into(),
        ));
    }
    Ok(EventId { id: env.id.into_owned(), kind: env.kind.into_owned() })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Stripe's own default signature tolerance.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// Beyond a day a tolerance is a typo (and a day is already a long replay window).
const MAX_TOLERANCE_SECS: u64 = 86_400;

/// `provider = "stripe"` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Signing secrets; any of them verifies (several are live while a secret is rolled).
    pub secrets: Vec<Secret>,
    /// Largest accepted distance between a signature's timestamp and now, either way.
    pub tolerance: std::time::Duration,
    /// `secrets`, each keyed for HMAC once.
    keys: Vec<MacKey>,
}

/// The endpoint keys Stripe reads.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    #[serde(default, deserialize_with = "crate::secret::secret_list")]
    secrets: Vec<Secret>,
    tolerance_secs: Option<u64>,
}

impl Settings {
    pub(crate) fn resolve(raw: Raw, r: &Resolver<'_>) -> Result<Settings, ConfigError> {
        if raw.secrets.is_empty() {
            return Err(r.invalid("secrets", "at least one signing secret is required"));
        }
        r.secrets("secrets", &raw.secrets)?;
        let tolerance = r.bounded(
            "tolerance_secs",
            raw.tolerance_secs,
            DEFAULT_TOLERANCE_SECS,
            MAX_TOLERANCE_SECS,
        )?;
        let keys = raw.secrets.iter().map(MacKey::new).collect();
        Ok(Settings {
            secrets: raw.secrets,
            tolerance: std::time::Duration::from_secs(tolerance),
            keys,
        })
    }

    pub(crate) fn describe(&self) -> Vec<String> {
        let mut out = vec![
            format!("tolerance {}s", self.tolerance.as_secs()),
            format!("{} secret(s)", self.secrets.len()),
        ];
        out.extend(self.secrets.iter().map(Secret::hint));
        out
    }
}

/// Verifies and identifies a request to a Stripe endpoint.
pub fn accept(
    settings: &Settings,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Accepted, Rejection> {
    let header = header_text(headers, HEADER, "Stripe-Signature")?;
    verify_keyed(&settings.keys, settings.tolerance.as_secs(), header, body, now)?;
    let event = identify(body)?;
    Ok(Accepted {
        dedup_key: event.id,
        event_type: Some(event.kind),
        headers_json: keep_headers(headers, KEPT_HEADERS),
    })
}

/// The event types a decision uses: what a backfill stores (others are counted and passed
/// over). Every other type parses as [`Kind::Ignored`].
pub const USED_TYPES: &[&str] = &[
    "payment_intent.succeeded",
    "payment_intent.processing",
    "payment_intent.partially_funded",
    "payment_intent.amount_capturable_updated",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "charge.succeeded",
    "charge.captured",
    "charge.pending",
    "charge.failed",
    "charge.expired",
    "charge.refunded",
    "charge.refund.updated",
    "refund.created",
    "refund.failed",
    "charge.dispute.created",
    "charge.dispute.closed",
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "source.chargeable",
    "source.canceled",
    "source.failed",
];

/// Reads a verified Stripe event into a canonical notification.
///
/// Snapshot events carry the object as it was (`data.object`); thin events carry only a
/// pointer and are marked ignored (there is nothing to reconcile without the snapshot).
/// The merchant reference is `metadata.order_id` (or `metadata.reference`,
/// `metadata.order_number`), and for Checkout Sessions `client_reference_id` first.
pub fn parse(body: &[u8]) -> Result<Notification, String> {
    let event: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let event_id = str_at(&event, &["id"]).ok_or("event has no id")?;
    let raw_type = str_at(&event, &["type"]).ok_or("event has no type")?;
    let mut n = Notification {
        provider: super::ProviderKind::Stripe,
        event_id,
        kind: Kind::Ignored,
        raw_type: raw_type.clone(),
        payment_id: None,
        merchant_reference: None,
        amount: None,
        occurred_at: event.get("created").and_then(Value::as_i64).unwrap_or(0),
        customer_email: None,
        object_id: None,
        request_key: str_at(&event, &["request", "idempotency_key"]),
        related_payment_id: None,
        detail: None,
    };
    if str_at(&event, &["object"]).as_deref() == Some("v2.core.event") {
        n.detail = Some("thin event: no snapshot to reconcile".into());
        return Ok(n);
    }
    let obj = &event["data"]["object"];
    let id = str_at(obj, &["id"]);
    let reference = str_at(obj, &["metadata", "order_id"])
        .or_else(|| str_at(obj, &["metadata", "reference"]))
        .or_else(|| str_at(obj, &["metadata", "order_number"]));
    let (family, action) = raw_type.rsplit_once('.').unwrap_or((raw_type.as_str(), ""));
    match family {
        "payment_intent" => {
            n.payment_id = id;
            n.merchant_reference = reference;
            // API versions before 2022-11-15 embed the charges, whose billing details may
            // hold the email the PaymentIntent lacks; later ones name only `latest_charge`.
            n.customer_email = str_at(obj, &["receipt_email"])
                .or_else(|| str_at(&obj["charges"]["data"][0], &["billing_details", "email"]));
            let (kind, field) = match action {
                "succeeded" => (Kind::Succeeded, "amount_received"),
                "processing" | "partially_funded" => (Kind::Pending, "amount"),
                "amount_capturable_updated" => (Kind::Authorized, "amount_capturable"),
                "payment_failed" => (Kind::Failed, "amount"),
                "canceled" => (Kind::Canceled, "amount"),
                "requires_action" => {
                    n.detail = Some("waiting for the customer to authenticate".into());
                    (Kind::Ignored, "amount")
                }
                _ => (Kind::Ignored, "amount"),
            };
            n.kind = kind;
            n.amount = amount(obj, field).or_else(|| amount(obj, "amount")).transpose()?;
            n.detail = n.detail.take().or_else(|| {
                str_at(obj, &["last_payment_error", "message"])
                    .or_else(|| str_at(obj, &["cancellation_reason"]))
            });
        }
        "charge" => {
            n.payment_id = str_at(obj, &["payment_intent"]).or(id);
            n.merchant_reference = reference;
            n.customer_email = str_at(obj, &["billing_details", "email"])
                .or_else(|| str_at(obj, &["receipt_email"]));
            let captured = obj.get("captured").and_then(Value::as_bool).unwrap_or(true);
            let (kind, field) = match action {
                "succeeded" if captured => (Kind::Succeeded, "amount_captured"),
                "succeeded" => (Kind::Authorized, "amount"),
                "captured" => (Kind::Succeeded, "amount_captured"),
                "pending" => (Kind::Pending, "amount"),
                "failed" => (Kind::Failed, "amount"),
                "expired" => (Kind::Canceled, "amount"),
                "refunded" => (Kind::Refunded, "amount_refunded"),
                _ => (Kind::Ignored, "amount"),
            };
            if kind == Kind::Refunded {
                // The refund this event is about (the newest first), as refund.created names
                // it: the two make one review.
                n.object_id = str_at(&obj["refunds"]["data"][0], &["id"]);
            }
            n.kind = kind;
            n.amount = amount(obj, field)
                .filter(|a| !matches!(a, Ok(m) if m.minor == 0 && field == "amount_captured"))
                .or_else(|| amount(obj, "amount"))
                .transpose()?;
            n.detail = str_at(obj, &["failure_message"]);
        }
        "charge.refund" | "refund" => {
            n.payment_id = str_at(obj, &["payment_intent"]).or_else(|| str_at(obj, &["charge"]));
            n.merchant_reference = reference;
            n.object_id = id;
            let failed = str_at(obj, &["status"]).as_deref() == Some("failed");
            n.kind = match (family, action) {
                ("refund", "created") => Kind::Refunded,
                ("refund", "failed") => Kind::RefundFailed,
                (_, "updated") if failed => Kind::RefundFailed,
                _ => Kind::Ignored,
            };
            n.amount = amount(obj, "amount").transpose()?;
            n.detail = str_at(obj, &["failure_reason"]).or_else(|| str_at(obj, &["reason"]));
        }
        "charge.dispute" => {
            n.payment_id = str_at(obj, &["payment_intent"]).or_else(|| str_at(obj, &["charge"]));
            n.merchant_reference = reference;
            n.object_id = id;
            n.kind = match action {
                "created" => Kind::Disputed,
                "closed" => Kind::DisputeClosed,
                _ => Kind::Ignored,
            };
            n.amount = amount(obj, "amount").transpose()?;
            n.detail = match action {
                "closed" => str_at(obj, &["status"]).map(|s| format!("dispute closed: {s}")),
                _ => str_at(obj, &["reason"]).map(|r| format!("dispute reason: {r}")),
            };
        }
        "checkout.session" => {
            n.payment_id = str_at(obj, &["payment_intent"]).or(id);
            n.merchant_reference = str_at(obj, &["client_reference_id"]).or(reference);
            n.customer_email = str_at(obj, &["customer_details", "email"])
                .or_else(|| str_at(obj, &["customer_email"]));
            n.kind = match (action, str_at(obj, &["payment_status"]).as_deref()) {
                ("completed", Some("paid")) => Kind::Succeeded,
                ("completed", Some("unpaid")) => Kind::Pending,
                ("async_payment_succeeded", _) => Kind::Succeeded,
                ("async_payment_failed", _) => Kind::Failed,
                ("expired", _) => Kind::Canceled,
                _ => Kind::Ignored,
            };
            n.amount = amount(obj, "amount_total").transpose()?;
        }
        "source" => {
            n.payment_id = id;
            n.merchant_reference = reference;
            n.customer_email = str_at(obj, &["owner", "email"]);
            n.kind = match action {
                // The funds can now be charged; the payment is on its way.
                "chargeable" => Kind::Pending,
                "canceled" => Kind::Canceled,
                "failed" => Kind::Failed,
                _ => Kind::Ignored,
            };
            n.amount = amount(obj, "amount").transpose()?;
        }
        _ => {}
    }
    if n.kind == Kind::Ignored && n.detail.is_none() {
        n.detail = Some(format!("{raw_type} needs no reconciliation"));
    }
    Ok(n)
}

/// `obj[field]` in Stripe's minor units with `obj.currency`, as exact money.
fn amount(obj: &Value, field: &str) -> Option<Result<Money, String>> {
    let minor = obj.get(field)?.as_i64()?;
    let code = obj.get("currency")?.as_str()?;
    Some(
        Currency::parse(code)
            .and_then(|c| Money::from_scaled(minor, stripe_exponent(c), c))
            .map_err(|e| format!("{field}: {e}")),
    )
}

#[cfg(test)]
#[path = "stripe_tests.rs"]
mod tests;
