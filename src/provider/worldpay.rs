//! Access Worldpay events (JSON): `Event-Signature` verification, event identification and
//! the mapping of payment, chargeback and payout events to canonical notifications.
//!
//! The header holds one or more comma-separated `{keyId}/SHA256/{hex}` entries, in any order
//! (keys rotate with increasing ids, so two may be live at once). Each entry is the
//! HMAC-SHA256 of the raw body, keyed with the secret configured for its key id (taken as its
//! UTF-8 bytes); the hex is compared case-insensitively by decoding it, and the MAC in
//! constant time. Nothing but the body is signed, so there is no timestamp to check: replays
//! are harmless because `eventId` is the dedup key.
//!
//! Assumptions (marked `[?]` in `fixtures/worldpay/README.md`): the secret is used as its
//! UTF-8 bytes, not hex- or base64-decoded; `transactionReference` identifies one payment
//! (it is on every event, chargebacks included, while `downstreamReference` is not);
//! `eventTimestamp` without a zone is UTC; `amount.value` is in the currency's ISO 4217 minor
//! units.

use std::borrow::Cow;

use hyper::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::hmac::MacKey;
use super::{
    header_text, is_plain_id, keep_headers, str_at, Accepted, Kind, Notification, Rejection,
};
use crate::money::{Currency, Money};
use crate::secret::Secret;
use crate::settings::{ConfigError, Resolver};

/// The signature header.
pub const HEADER: &str = "event-signature";
/// The header's name as people write it, for rejections.
const HEADER_NAME: &str = "Event-Signature";
/// Headers kept with the row: enough to verify it again.
const KEPT_HEADERS: &[&str] = &[HEADER, "content-type", "user-agent"];
/// More entries than this in one header is an attack, not a key rotation.
const MAX_ENTRIES: usize = 16;

/// One well-formed `{keyId}/SHA256/{hex}` entry of an `Event-Signature` header.
#[derive(Debug, PartialEq, Eq)]
pub struct SignatureEntry<'a> {
    /// The key id the entry was made with.
    pub key_id: &'a str,
    /// The HMAC-SHA256, decoded from hex of either case.
    pub mac: [u8; 32],
}

/// Parses an `Event-Signature` header. Entries of another algorithm than SHA256 and entries
/// whose hex is not 64 hex digits can never match and are skipped; an entry that is not
/// `keyId/algorithm/signature` at all makes the header malformed.
pub fn parse_header(value: &str) -> Result<Vec<SignatureEntry<'_>>, Rejection> {
    let malformed = |detail| Rejection::MalformedHeader { header: HEADER_NAME, detail };
    let mut entries = Vec::new();
    // A SHA256 entry was sent, but its signature is not 64 hex digits.
    let mut sha256_unreadable = false;
    for (n, item) in value.split(',').enumerate() {
        if n == MAX_ENTRIES {
            return Err(malformed("too many entries"));
        }
        let mut parts = item.trim().split('/');
        let (Some(key_id), Some(algorithm), Some(hex_mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected comma-separated keyId/SHA256/hex entries"));
        };
        let key_id = key_id.trim();
        if key_id.is_empty() {
            return Err(malformed("an entry has an empty key id"));
        }
        if !algorithm.trim().eq_ignore_ascii_case("SHA256") {
            continue;
        }
        let mut mac = [0u8; 32];
        // `hex` decodes upper- and lower-case digits alike.
        if hex::decode_to_slice(hex_mac.trim(), &mut mac).is_ok() {
            entries.push(SignatureEntry { key_id, mac });
        } else {
            sha256_unreadable = true;
        }
    }
    if entries.is_empty() && sha256_unreadable {
        return Err(malformed("the SHA256 signature is not 64 hex digits"));
    }
    if entries.is_empty() {
        return Err(malformed("no SHA256 entry (only other algorithms)"));
    }
    Ok(entries)
}

/// The signature of `body` with `secret`, as lower-case hex.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    super::hmac::hex_mac(secret, &[body])
}

/// A complete `Event-Signature` header value for a test request: `{key_id}/SHA256/{hex}`.
pub fn sign(key_id: &str, secret: &[u8], body: &[u8]) -> String {
    format!("{key_id}/SHA256/{}", signature(secret, body))
}

/// Checks the header against the configured `(key id, secret)` pairs, in constant time per
/// comparison. Accepts when any entry whose key id is configured matches. When no entry names
/// a configured key id the answer is a malformed header ("no entry for a configured key id"),
/// so an operator can tell a missing key from a wrong secret or a tampered body
/// ([`Rejection::BadSignature`]).
pub fn verify(keys: &[(String, MacKey)], header: &str, body: &[u8]) -> Result<(), Rejection> {
    let entries = parse_header(header)?;
    let mut known = false;
    // One MAC per configured key named in the header, however many entries name it.
    for (id, key) in keys {
        let named: Vec<_> = entries.iter().filter(|e| e.key_id == id.as_str()).collect();
        if named.is_empty() {
            continue;
        }
        known = true;
        let keyed = key.keyed(&[body]);
        if named.iter().any(|e| keyed.matches(&e.mac)) {
            return Ok(());
        }
    }
    if known {
        Err(Rejection::BadSignature)
    } else {
        Err(Rejection::MalformedHeader {
            header: HEADER_NAME,
            detail: "no entry for a configured key id",
        })
    }
}

/// The part of an event the inbox needs, borrowed: the body is parsed once, in full.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, rename = "eventId")]
    event_id: Cow<'a, str>,
    #[serde(borrow, rename = "eventDetails")]
    details: Details<'a>,
}

#[derive(Deserialize)]
struct Details<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

/// What the inbox records about a verified event.
#[derive(Debug, PartialEq, Eq)]
pub struct EventId {
    /// `eventId` (a UUID): the dedup key.
    pub id: String,
    /// `eventDetails.type` (`authorized`, `sentForSettlement`, …).
    pub kind: String,
}

/// Reads `eventId` and `eventDetails.type` of an event.
pub fn identify(body: &[u8]) -> Result<EventId, Rejection> {
    let env: Envelope<'_> = serde_json::from_slice(body)
        .map_err(|e| Rejection::MalformedBody(format!("not an Access Worldpay event: {e}")))?;
    let id = env.event_id;
    if !is_plain_id(&id) {
        return Err(Rejection::MalformedBody(
            "eventId is empty, too long or has control characters".into(),
        ));
    }
    let kind = env.details.kind;
    if !is_plain_id(&kind) {
        return Err(Rejection::MalformedBody(
            "eventDetails.type is empty, too long or has control characters".into(),
        ));
    }
    Ok(EventId { id: id.into_owned(), kind: kind.into_owned() })
}

/// `provider = "worldpay"` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Signing secrets by key id (`Event-Signature: {keyId}/SHA256/{hex}`).
    pub keys: Vec<(String, Secret)>,
    /// `keys`, each secret keyed for HMAC once.
    macs: Vec<(String, MacKey)>,
}

/// The endpoint keys Access Worldpay reads.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    #[serde(default, deserialize_with = "crate::secret::secret_map")]
    keys: Vec<(String, Secret)>,
}

impl Settings {
    pub(crate) fn resolve(raw: Raw, r: &Resolver<'_>) -> Result<Settings, ConfigError> {
        if raw.keys.is_empty() {
            return Err(r.invalid(
                "keys",
                "at least one key id = \"secret\" is required (Event-Signature)",
            ));
        }
        if let Some((id, _)) =
            raw.keys.iter().find(|(id, s)| id.is_empty() || s.expose().is_empty())
        {
            return Err(r.invalid("keys", format!("key id \"{id}\" or its secret is empty")));
        }
        Ok(Settings::new(raw.keys))
    }

    fn new(keys: Vec<(String, Secret)>) -> Settings {
        let macs = keys.iter().map(|(id, secret)| (id.clone(), MacKey::new(secret))).collect();
        Settings { keys, macs }
    }

    pub(crate) fn describe(&self) -> Vec<String> {
        self.keys.iter().map(|(id, k)| format!("key {id}: {}", k.hint())).collect()
    }
}

/// Verifies and identifies a request to an Access Worldpay endpoint. Nothing but the body is
/// signed: there is no timestamp to check.
pub fn accept(
    settings: &Settings,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejection> {
    let header = header_text(headers, HEADER, HEADER_NAME)?;
    verify(&settings.macs, header, body)?;
    let event = identify(body)?;
    Ok(Accepted {
        dedup_key: event.id,
        event_type: Some(event.kind),
        headers_json: keep_headers(headers, KEPT_HEADERS),
    })
}

/// What a payment event `type` means. Documented per row in `fixtures/worldpay/README.md`.
///
/// Both `sentForSettlement` (the capture) and `settled` are `Succeeded`: whichever arrives
/// first counts, and the other is a no-op for the same payment id, so a merchant subscribed to
/// only one of them is served too. `settlementFailed` comes after the capture was counted, when
/// a plain failure would be discarded as stale; it is mapped to `Disputed` so that it always
/// reaches an admin (`review`) — money we counted did not arrive.
fn payment_kind(kind: &str) -> Option<Kind> {
    Some(match kind {
        // Asked the issuer; asynchronous methods may stay here for a while.
        "sentForAuthorization" => Kind::Pending,
        "authorized" => Kind::Authorized,
        "sentForSettlement" | "settled" => Kind::Succeeded,
        "settlementFailed" => Kind::Disputed,
        "refused" | "error" => Kind::Failed,
        "cancelled" | "expired" | "cancelledByCustomer" | "requestExpired" => Kind::Canceled,
        "sentForRefund" => Kind::Refunded,
        "refundFailed" => Kind::RefundFailed,
        // A payment event in Worldpay's own list [doc] (docs/providers.md, Worldpay).
        "chargedBack" => Kind::Disputed,
        // [?] the reversal of a chargeback.
        "chargebackReversed" => Kind::DisputeClosed,
        "tokenCreated" => Kind::Ignored,
        _ => return None,
    })
}

/// Reads a verified Access Worldpay event into a canonical notification.
///
/// `payment_id` and `merchant_reference` are both `eventDetails.transactionReference` (the
/// shop's own reference, unique per payment, present on every event); a refund's
/// `eventDetails.reference` becomes `object_id`. Every `chargeback` event is `Disputed` (the
/// list of its types is not published); `payout` events are ignored.
pub fn parse(body: &[u8]) -> Result<Notification, String> {
    let event: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let event_id = str_at(&event, &["eventId"]).ok_or("event has no eventId")?;
    let details = event.get("eventDetails").ok_or("event has no eventDetails")?;
    let raw_type = str_at(details, &["type"]).ok_or("event has no eventDetails.type")?;
    let classification = str_at(details, &["classification"]).unwrap_or_default();
    let reference = str_at(details, &["transactionReference"]);
    let mut n = Notification {
        provider: super::ProviderKind::Worldpay,
        event_id,
        kind: Kind::Ignored,
        raw_type: raw_type.clone(),
        payment_id: reference.clone(),
        merchant_reference: reference,
        amount: None,
        occurred_at: str_at(&event, &["eventTimestamp"]).and_then(|t| timestamp(&t)).unwrap_or(0),
        customer_email: None,
        object_id: str_at(details, &["reference"]),
        request_key: None,
        related_payment_id: None,
        detail: None,
    };
    match classification.as_str() {
        "payout" => n.detail = Some(format!("payout event {raw_type}: nothing to reconcile")),
        "chargeback" => {
            n.kind = Kind::Disputed;
            n.detail = Some(format!("chargeback: {raw_type}"));
        }
        other if !other.is_empty() && other != "payment" => {
            n.detail = Some(format!("classification {other}: not a payment event"));
        }
        // `payment`, and events that do not say.
        _ => match payment_kind(&raw_type) {
            Some(kind) => {
                n.kind = kind;
                n.detail = match raw_type.as_str() {
                    "settlementFailed" => {
                        Some("settlement failed after capture: the money did not arrive".into())
                    }
                    "chargedBack" => Some("charged back".into()),
                    "tokenCreated" => Some("tokenCreated: a stored card, not a payment".into()),
                    _ => None,
                };
            }
            None => n.detail = Some(format!("{raw_type} needs no reconciliation")),
        },
    }
    n.amount = amount(details).transpose()?;
    Ok(n)
}

/// `amount {value, currencyCode}`: integer minor units of the currency (its ISO exponent).
/// Absent on some event types; present but unreadable is an error.
fn amount(details: &Value) -> Option<Result<Money, String>> {
    let amount = details.get("amount").filter(|a| !a.is_null())?;
    let value = amount.get("value").and_then(Value::as_i64);
    let code = amount.get("currencyCode").and_then(Value::as_str);
    let (Some(value), Some(code)) = (value.filter(|v| *v >= 0), code) else {
        return Some(Err("amount needs a non-negative integer value and a currencyCode".into()));
    };
    Some(
        Currency::parse(code)
            .and_then(|c| Money::from_scaled(value, c.exponent(), c))
            .map_err(|e| format!("amount: {e}")),
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]` without a zone, read as UTC, to unix seconds. `None` for
/// anything else.
pub(crate) fn timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        digits.iter().try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && (sep(10, b'T') || sep(10, b' '))) {
        return None;
    }
    if !(sep(13, b':') && sep(16, b':')) {
        return None;
    }
    match b.get(19..) {
        None | Some([]) => {}
        Some([b'.', rest @ ..]) if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    crate::time::utc_seconds(
        num(0, 4)?,
        num(5, 2)?,
        num(8, 2)?,
        num(11, 2)?,
        num(14, 2)?,
        num(17, 2)?,
    )
}

#[cfg(test)]
#[path = "worldpay_tests.rs"]
mod tests;
