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
pub fn verify(keys: &[(String, Secret)], header: &str, body: &[u8]) -> Result<(), Rejection> {
    let entries = parse_header(header)?;
    let mut known = false;
    // One MAC per configured key named in the header, however many entries name it.
    for (id, secret) in keys {
        let named: Vec<_> = entries.iter().filter(|e| e.key_id == id.as_str()).collect();
        if named.is_empty() {
            continue;
        }
        known = true;
        let keyed = super::hmac::Keyed::new(secret.expose(), &[body]);
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
        Ok(Settings { keys: raw.keys })
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
    verify(&settings.keys, header, body)?;
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
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"eventId":"bb55ca5a-e05c-47e1-8e94-e88bac1a0a17","eventTimestamp":"2018-06-13T14:18:13.407","eventDetails":{"classification":"payment","transactionReference":"2001","type":"authorized","amount":{"value":2500,"currencyCode":"EUR"}}}"#;

    fn keys(list: &[(&str, &str)]) -> Vec<(String, Secret)> {
        list.iter().map(|(id, s)| ((*id).to_owned(), Secret::new(*s))).collect()
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), RFC 4231 style
        // public test vector.
        assert_eq!(
            signature(b"key", b"The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert_eq!(
            sign("7", b"key", b"The quick brown fox jumps over the lazy dog"),
            "7/SHA256/f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn accepted_headers() {
        let k = keys(&[("1", "old-secret"), ("2", "new-secret")]);
        let s1 = signature(b"old-secret", BODY);
        let s2 = signature(b"new-secret", BODY);
        let junk = "0".repeat(64);
        let cases = [
            format!("1/SHA256/{s1}"),
            format!("2/SHA256/{s2}"),
            format!("1/SHA256/{s1},2/SHA256/{s2}"),
            format!("2/SHA256/{s2},1/SHA256/{s1}"),
            format!("2/SHA256/{s2}, 1/SHA256/{junk}"),
            format!("1/SHA256/{junk},2/SHA256/{s2}"),
            format!("1/SHA256/{}", s1.to_uppercase()),
            format!("1/sha256/{s1}"),
            format!("9/SHA256/{junk},1/SHA256/{s1}"),
            format!("1/SHA512/{},1/SHA256/{s1}", "0".repeat(128)),
            format!(" 1 / SHA256 / {s1} "),
        ];
        for header in cases {
            verify(&k, &header, BODY).unwrap_or_else(|e| panic!("{header}: {e}"));
        }
    }

    #[test]
    fn refused_headers() {
        let k = keys(&[("1", "old-secret"), ("2", "new-secret")]);
        let s1 = signature(b"old-secret", BODY);
        let junk = "0".repeat(64);
        let tampered = BODY.iter().map(|b| if *b == b'5' { b'6' } else { *b }).collect::<Vec<_>>();
        let cases: Vec<(String, &[u8], &str, Option<&str>)> = vec![
            // Tampered body, wrong secret, a signature under the other key's id.
            (format!("1/SHA256/{s1}"), &tampered, "bad_signature", None),
            (sign("1", b"guess", BODY), BODY, "bad_signature", None),
            (format!("2/SHA256/{s1}"), BODY, "bad_signature", None),
            (format!("1/SHA256/{junk},2/SHA256/{junk}"), BODY, "bad_signature", None),
            // Only unknown key ids: distinguishable from a wrong secret.
            (
                sign("3", b"old-secret", BODY),
                BODY,
                "malformed_header",
                Some("no entry for a configured key id"),
            ),
            (
                sign("10", b"new-secret", BODY),
                BODY,
                "malformed_header",
                Some("no entry for a configured key id"),
            ),
            // Garbled.
            (String::new(), BODY, "malformed_header", None),
            ("garbage".into(), BODY, "malformed_header", None),
            (format!("1/{s1}"), BODY, "malformed_header", None),
            (format!("1/SHA256/{s1}/x"), BODY, "malformed_header", None),
            (format!("/SHA256/{s1}"), BODY, "malformed_header", None),
            (format!("1/SHA256/{s1},"), BODY, "malformed_header", None),
            (
                "1/SHA256/xyz".into(),
                BODY,
                "malformed_header",
                Some("the SHA256 signature is not 64 hex digits"),
            ),
            (
                format!("1/SHA256/{}", &s1[..62]),
                BODY,
                "malformed_header",
                Some("the SHA256 signature is not 64 hex digits"),
            ),
            (
                format!("1/MD5/{s1}"),
                BODY,
                "malformed_header",
                Some("no SHA256 entry (only other algorithms)"),
            ),
            (vec![format!("1/SHA256/{s1}"); 17].join(","), BODY, "malformed_header", None),
        ];
        for (header, body, code, detail) in cases {
            let err = verify(&k, &header, body).unwrap_err();
            assert_eq!(err.code(), code, "{header:?}");
            if let (Some(want), Rejection::MalformedHeader { detail: got, .. }) = (detail, &err) {
                assert_eq!(*got, want, "{header:?}");
            }
        }
        // Sixteen entries are still a rotation, not an attack.
        verify(&k, &vec![format!("1/SHA256/{s1}"); 16].join(","), BODY).unwrap();
    }

    #[test]
    fn accept_reads_the_header_and_the_envelope() {
        let endpoint = &Settings { keys: keys(&[("1", "s1")]) };
        let mut headers = HeaderMap::new();
        assert_eq!(
            accept(endpoint, &headers, BODY).unwrap_err(),
            Rejection::MissingHeader("Event-Signature")
        );
        headers.insert(HEADER, sign("1", b"s1", BODY).parse().unwrap());
        headers.insert("authorization", "Basic eDp5".parse().unwrap());
        headers
            .insert("content-type", "application/vnd.worldpay.events-v1.hal+json".parse().unwrap());
        let a = accept(endpoint, &headers, BODY).unwrap();
        assert_eq!(a.dedup_key, "bb55ca5a-e05c-47e1-8e94-e88bac1a0a17");
        assert_eq!(a.event_type.as_deref(), Some("authorized"));
        let kept: Value = serde_json::from_str(&a.headers_json).unwrap();
        assert!(kept.get("event-signature").is_some() && kept.get("content-type").is_some());
        assert!(kept.get("authorization").is_none());
        // Signed garbage is refused as a body, not as a signature.
        let garbage = b"{\"eventId\":\"\"}";
        headers.insert(HEADER, sign("1", b"s1", garbage).parse().unwrap());
        assert_eq!(accept(endpoint, &headers, garbage).unwrap_err().code(), "malformed_body");
    }

    #[test]
    fn identify_refuses_what_is_not_an_event() {
        assert_eq!(
            identify(BODY).unwrap(),
            EventId {
                id: "bb55ca5a-e05c-47e1-8e94-e88bac1a0a17".into(),
                kind: "authorized".into()
            }
        );
        let long = format!(r#"{{"eventId":"{}","eventDetails":{{"type":"x"}}}}"#, "a".repeat(256));
        for bad in [
            &b"not json"[..],
            b"[1]",
            br#"{"eventDetails":{"type":"authorized"}}"#,
            br#"{"eventId":"","eventDetails":{"type":"authorized"}}"#,
            br#"{"eventId":"a\nb","eventDetails":{"type":"authorized"}}"#,
            br#"{"eventId":"e1"}"#,
            br#"{"eventId":"e1","eventDetails":{}}"#,
            br#"{"eventId":"e1","eventDetails":{"type":""}}"#,
            br#"{"eventId":7,"eventDetails":{"type":"authorized"}}"#,
            br#"{"eventId":"a","eventId":"b","eventDetails":{"type":"authorized"}}"#,
            long.as_bytes(),
        ] {
            assert_eq!(
                identify(bad).unwrap_err().code(),
                "malformed_body",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn event(classification: &str, kind: &str, amount: &str) -> Vec<u8> {
        format!(
            r#"{{"eventId":"e-{kind}","eventTimestamp":"2024-03-01T10:00:00.123","eventDetails":{{"classification":"{classification}","transactionReference":"2001","downstreamReference":"3378792436","type":"{kind}","date":"2024-03-01"{amount}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn every_listed_type_maps() {
        let payment = [
            ("sentForAuthorization", Kind::Pending),
            ("authorized", Kind::Authorized),
            ("sentForSettlement", Kind::Succeeded),
            ("settled", Kind::Succeeded),
            ("settlementFailed", Kind::Disputed),
            ("cancelled", Kind::Canceled),
            ("refused", Kind::Failed),
            ("expired", Kind::Canceled),
            ("error", Kind::Failed),
            ("sentForRefund", Kind::Refunded),
            ("refundFailed", Kind::RefundFailed),
            ("cancelledByCustomer", Kind::Canceled),
            ("requestExpired", Kind::Canceled),
            ("tokenCreated", Kind::Ignored),
            ("chargedBack", Kind::Disputed),
            ("chargebackReversed", Kind::DisputeClosed),
            ("somethingNew", Kind::Ignored),
        ];
        let amount = r#","amount":{"value":2500,"currencyCode":"EUR"}"#;
        for (t, kind) in payment {
            let n = parse(&event("payment", t, amount)).unwrap();
            assert_eq!(n.kind, kind, "{t}");
            assert_eq!(n.raw_type, t);
            assert_eq!(n.provider, super::super::ProviderKind::Worldpay);
            assert_eq!(n.event_id, format!("e-{t}"));
            assert_eq!(n.payment_id.as_deref(), Some("2001"), "{t}");
            assert_eq!(n.merchant_reference.as_deref(), Some("2001"), "{t}");
            assert_eq!(
                n.amount.map(|m| (m.minor, m.currency.code().to_owned())),
                Some((2500, "EUR".to_owned())),
                "{t}"
            );
            assert_eq!(n.occurred_at, 1_709_287_200, "{t}");
            if kind == Kind::Ignored {
                assert!(n.detail.is_some(), "{t}");
            }
        }
        for t in ["informationRequested", "chargebackWon", "anythingElse"] {
            let n = parse(&event("chargeback", t, amount)).unwrap();
            assert_eq!(n.kind, Kind::Disputed, "{t}");
            assert_eq!(n.detail, Some(format!("chargeback: {t}")));
        }
        let n = parse(&event("payout", "sentForSettlement", amount)).unwrap();
        assert_eq!(n.kind, Kind::Ignored);
    }

    #[test]
    fn amounts() {
        let cases: &[(&str, Option<(i64, &str)>)] = &[
            ("", None),
            (r#","amount":null"#, None),
            (r#","amount":{"value":5000,"currencyCode":"JPY"}"#, Some((5000, "JPY"))),
            (r#","amount":{"value":12345,"currencyCode":"KWD"}"#, Some((12345, "KWD"))),
            (r#","amount":{"value":0,"currencyCode":"GBP"}"#, Some((0, "GBP"))),
        ];
        for (json, want) in cases {
            let n = parse(&event("payment", "authorized", json)).unwrap();
            let got = n.amount.map(|m| (m.minor, m.currency.code().to_owned()));
            assert_eq!(got, want.map(|(m, c)| (m, c.to_owned())), "{json}");
        }
        for bad in [
            r#","amount":{"value":"25.00","currencyCode":"EUR"}"#,
            r#","amount":{"value":25.5,"currencyCode":"EUR"}"#,
            r#","amount":{"value":2500}"#,
            r#","amount":{"value":2500,"currencyCode":"XYZ"}"#,
        ] {
            assert!(parse(&event("payment", "authorized", bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp("1970-01-01T00:00:00"), Some(0));
        assert_eq!(timestamp("2018-06-13T14:18:13.407"), Some(1_528_899_493));
        assert_eq!(timestamp("2024-02-29T23:59:59"), Some(1_709_251_199));
        assert_eq!(timestamp("2000-03-01 00:00:00.5"), Some(951_868_800));
        for bad in [
            "",
            "2018-06-13",
            "2018-06-13T14:18",
            "2018-06-13T14:18:13Z",
            "2018-06-13T14:18:13.",
            "2018-06-13T14:18:13+01:00",
            "2023-02-29T00:00:00",
            "2018-13-01T00:00:00",
            "2018-06-31T00:00:00",
            "2018-06-13T24:00:00",
            "+018-06-13T14:18:13",
            "2018-06-13T14:1a:13",
            "２０18-06-13T14:18:13",
        ] {
            assert_eq!(timestamp(bad), None, "{bad}");
        }
        let n = parse(br#"{"eventId":"e","eventTimestamp":"soon","eventDetails":{"type":"x"}}"#);
        assert_eq!(n.unwrap().occurred_at, 0);
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/worldpay/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn fixtures_map_to_canonical_notifications() {
        type Expected<'a> = (&'a str, Kind, &'a str, Option<(i64, &'a str)>);
        let cases: &[Expected<'_>] = &[
            ("sentForAuthorization.json", Kind::Pending, "2003", Some((1999, "GBP"))),
            ("authorized.json", Kind::Authorized, "2001", Some((2500, "EUR"))),
            ("sentForSettlement.json", Kind::Succeeded, "2001", Some((2500, "EUR"))),
            ("settled.json", Kind::Succeeded, "2001", Some((2500, "EUR"))),
            ("refused.json", Kind::Failed, "2002", Some((4550, "EUR"))),
            ("sentForRefund.json", Kind::Refunded, "2001", Some((2500, "EUR"))),
            ("informationRequested.json", Kind::Disputed, "2001", Some((2500, "EUR"))),
            ("tokenCreated.json", Kind::Ignored, "2004", None),
        ];
        for (file, kind, reference, amount) in cases {
            let body = fixture(file);
            let n = parse(&body).unwrap();
            assert_eq!(n.kind, *kind, "{file}");
            assert_eq!(n.payment_id.as_deref(), Some(*reference), "{file}");
            assert_eq!(n.merchant_reference.as_deref(), Some(*reference), "{file}");
            let got = n.amount.map(|m| (m.minor, m.currency.code().to_owned()));
            assert_eq!(got, amount.map(|(m, c)| (m, c.to_owned())), "{file}");
            assert!(n.occurred_at > 1_700_000_000, "{file}");
            let id = identify(&body).unwrap();
            assert_eq!((id.id, id.kind), (n.event_id, n.raw_type), "{file}");
        }
        assert_eq!(
            parse(&fixture("sentForRefund.json")).unwrap().object_id.as_deref(),
            Some("refund-2001-1")
        );
    }
}
