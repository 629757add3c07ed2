//! Stripe: `Stripe-Signature` verification and event identification.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`; the signed string is the `t` value
//! as sent, a `.`, and the raw body; the MAC is HMAC-SHA256 keyed with the secret's UTF-8
//! bytes. A request is accepted when any `v1` matches any configured secret (several are live
//! while a secret is rolled). As in Stripe's SDKs the signature is checked before the age; we
//! also refuse timestamps too far in the future. Both snapshot events (`object: "event"`) and
//! thin events (`object: "v2.core.event"`) are accepted; the event `id` is the dedup key.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use serde::Deserialize;
use sha2::Sha256;

use super::{keep_headers, Accepted, Rejection};
use crate::config::{Endpoint, Secret};

type HmacSha256 = Hmac<Sha256>;

/// The signature header.
pub const HEADER: &str = "stripe-signature";
/// Headers kept with the row: enough to verify it again.
const KEPT_HEADERS: &[&str] = &[HEADER, "content-type", "user-agent"];
/// Longest event id we accept; Stripe's are about 30 characters.
const MAX_EVENT_ID_LEN: usize = 255;
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
    if v1.is_empty() {
        return Err(malformed("no v1= signature"));
    }
    Ok(SignatureHeader { timestamp_text, timestamp, v1 })
}

/// The `v1` signature of `body` at `timestamp`, as lower-case hex.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, &timestamp.to_string(), body).finalize().into_bytes())
}

/// A complete `Stripe-Signature` header value for a test request.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", signature(secret, timestamp, body))
}

fn mac(secret: &[u8], timestamp_text: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks the signature (constant-time) and then the timestamp against `now` (unix seconds).
pub fn verify(
    secrets: &[Secret],
    tolerance_secs: u64,
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), Rejection> {
    let parsed = parse_header(header)?;
    let matched = secrets.iter().any(|secret| {
        let keyed = mac(secret.expose(), parsed.timestamp_text, body);
        parsed.v1.iter().any(|sig| keyed.clone().verify_slice(sig).is_ok())
    });
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
    if env.id.is_empty() || env.id.len() > MAX_EVENT_ID_LEN || env.id.chars().any(char::is_control)
    {
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

/// Verifies and identifies a request to a Stripe endpoint.
pub fn accept(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Accepted, Rejection> {
    let header = headers.get(HEADER).ok_or(Rejection::MissingHeader("Stripe-Signature"))?;
    let header = header.to_str().map_err(|_| Rejection::MalformedHeader {
        header: "Stripe-Signature",
        detail: "not visible ASCII",
    })?;
    verify(&endpoint.secrets, endpoint.tolerance.as_secs(), header, body, now)?;
    let event = identify(body)?;
    Ok(Accepted {
        dedup_key: event.id,
        event_type: Some(event.kind),
        headers_json: keep_headers(headers, KEPT_HEADERS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{}}}"#;

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn known_vector_matches_stripe_python() {
        // Produced by stripe-python 16.1.0 WebhookSignature.generate_signature_header for this
        // body, secret "whsec_test_secret" and timestamp 1700000000.
        let body = br#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{}}}"#;
        assert_eq!(
            signature(b"whsec_test_secret", NOW, body),
            "9138fc0dca8803648b76c0505002e1bb00aef8475dd05eb8ac7684df60f8ee8f"
        );
    }

    #[test]
    fn accepts_any_v1_against_any_secret() {
        let good = signature(b"whsec_new", NOW, BODY);
        let header = format!("t={NOW},v1={},v0=abc,v1={good}", "0".repeat(64));
        verify(&secrets(&["whsec_old", "whsec_new"]), 300, &header, BODY, NOW).unwrap();
    }

    #[test]
    fn refusals() {
        let s = secrets(&["whsec_a"]);
        let ok = sign(b"whsec_a", NOW, BODY);
        let cases: Vec<(String, Vec<u8>, i64, &str)> = vec![
            (ok.clone(), b"{}".to_vec(), NOW, "bad_signature"),
            (sign(b"whsec_b", NOW, BODY), BODY.to_vec(), NOW, "bad_signature"),
            (ok.clone(), BODY.to_vec(), NOW + 301, "stale_timestamp"),
            (ok.clone(), BODY.to_vec(), NOW - 301, "future_timestamp"),
            (format!("t={NOW}"), BODY.to_vec(), NOW, "malformed_header"),
            (
                format!("v1={}", signature(b"whsec_a", NOW, BODY)),
                BODY.to_vec(),
                NOW,
                "malformed_header",
            ),
            ("garbage".into(), BODY.to_vec(), NOW, "malformed_header"),
            (format!("t=-5,v1={}", "0".repeat(64)), BODY.to_vec(), NOW, "malformed_header"),
            (format!("t=1,t=2,v1={}", "0".repeat(64)), BODY.to_vec(), NOW, "malformed_header"),
            (format!("t={NOW},v1=XYZ"), BODY.to_vec(), NOW, "malformed_header"),
        ];
        for (header, body, now, code) in cases {
            let err = verify(&s, 300, &header, &body, now).unwrap_err();
            assert_eq!(err.code(), code, "header {header:?} at {now}");
        }
        // Exactly at the tolerance is still accepted, both ways.
        verify(&s, 300, &ok, BODY, NOW + 300).unwrap();
        verify(&s, 300, &ok, BODY, NOW - 300).unwrap();
    }

    #[test]
    fn identify_snapshot_and_thin_events() {
        let e = identify(BODY).unwrap();
        assert_eq!(e, EventId { id: "evt_1".into(), kind: "payment_intent.succeeded".into() });
        let thin = br#"{"id":"evt_test_65R","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered","created":"2024-09-17T06:20:52.246Z","related_object":{"id":"mtr_1","type":"billing.meter","url":"/v1/billing/meters/mtr_1"}}"#;
        assert_eq!(identify(thin).unwrap().id, "evt_test_65R");
        for bad in [
            &br#"not json"#[..],
            br#"{"id":"evt_1","object":"charge","type":"x"}"#,
            br#"{"id":"","object":"event","type":"x"}"#,
            br#"{"object":"event","type":"x"}"#,
            br#"{"id":"a","id":"b","object":"event","type":"x"}"#,
            br#"[1,2]"#,
        ] {
            assert_eq!(
                identify(bad).unwrap_err().code(),
                "malformed_body",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
