//! Adflex server-to-server notifications.
//!
//! **Assumed format.** Adflex's notification format is not public. This adapter assumes a
//! JSON notification carrying the transaction fields of Adflex's hosted payment page API:
//! `transactionGUID`, `reference`, `amount.value` (a decimal string), `amount.currency` and
//! `statusCode`. Every path is configurable per endpoint (`[endpoint.fields]`). Authenticity
//! comes from one or more of: an HMAC-SHA256 of the raw body, hex, in a configured header
//! (`signature_header` with `secrets`), HTTP basic auth, or a source-address allow-list (the
//! last two are checked by the HTTP layer).
//!
//! The same transaction is notified again as its status moves, so the dedup key is
//! `{transactionGUID}:{statusCode}`.

use hyper::HeaderMap;
use serde_json::Value;

use super::hmac::MacKey;
use super::{keep_headers, Accepted, Kind, Notification, Rejection};
use crate::money::{Currency, Money};
use crate::secret::Secret;
use crate::settings::{ConfigError, Resolver};

/// `provider = "adflex"` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The header carrying a hex HMAC-SHA256 of the body, if notifications are signed
    /// (keyed with `secrets`); lower case.
    pub signature_header: Option<String>,
    /// Signing secrets for `signature_header`; any of them verifies.
    pub secrets: Vec<Secret>,
    /// `secrets`, each keyed for HMAC once.
    keys: Vec<MacKey>,
    /// Where each field sits in the JSON notification.
    pub fields: Fields,
}

/// Dotted JSON paths of the Adflex notification's fields. The format is not public: these
/// defaults follow Adflex's hosted payment page API and can be changed per endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// The transaction's GUID (the payment id).
    pub transaction_id: String,
    /// The merchant's reference (order id).
    pub reference: String,
    /// The amount, a decimal string.
    pub amount: String,
    /// The ISO 4217 currency.
    pub currency: String,
    /// The status code (`Authorised`, `Settled`, `Declined`, …).
    pub status: String,
}

impl Default for Fields {
    fn default() -> Fields {
        Fields {
            transaction_id: "transactionGUID".into(),
            reference: "reference".into(),
            amount: "amount.value".into(),
            currency: "amount.currency".into(),
            status: "statusCode".into(),
        }
    }
}

/// The endpoint keys Adflex reads.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    signature_header: Option<String>,
    #[serde(default, deserialize_with = "crate::secret::secret_list")]
    secrets: Vec<Secret>,
    #[serde(default)]
    fields: RawFields,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFields {
    transaction_id: Option<String>,
    reference: Option<String>,
    amount: Option<String>,
    currency: Option<String>,
    status: Option<String>,
}

impl Settings {
    pub(crate) fn resolve(raw: Raw, r: &Resolver<'_>) -> Result<Settings, ConfigError> {
        if !r.has_trust() && raw.signature_header.is_none() {
            return Err(r.invalid(
                "signature_header",
                "adflex needs signature_header (with secrets), basic_auth or allow_from",
            ));
        }
        if raw.signature_header.is_some() == raw.secrets.is_empty() {
            return Err(r.invalid("secrets", "signature_header and secrets go together"));
        }
        r.secrets("secrets", &raw.secrets)?;
        let d = Fields::default();
        let f = raw.fields;
        Ok(Settings {
            signature_header: raw.signature_header.map(|h| h.to_ascii_lowercase()),
            keys: raw.secrets.iter().map(MacKey::new).collect(),
            secrets: raw.secrets,
            fields: Fields {
                transaction_id: f.transaction_id.unwrap_or(d.transaction_id),
                reference: f.reference.unwrap_or(d.reference),
                amount: f.amount.unwrap_or(d.amount),
                currency: f.currency.unwrap_or(d.currency),
                status: f.status.unwrap_or(d.status),
            },
        })
    }

    pub(crate) fn describe(&self) -> Vec<String> {
        let mut out = match &self.signature_header {
            Some(h) => vec![format!("signed in {h}, {} secret(s)", self.secrets.len())],
            None => vec!["unsigned".into()],
        };
        out.extend(self.secrets.iter().map(Secret::hint));
        out
    }
}

/// The `{hex}` signature of `body` for a signed test request.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    super::hmac::hex_mac(secret, &[body])
}

fn verify(keys: &[MacKey], header: &str, body: &[u8]) -> Result<(), Rejection> {
    let mut sig = [0u8; 32];
    let text = header.trim();
    let text = text.strip_prefix("sha256=").unwrap_or(text);
    hex::decode_to_slice(text, &mut sig).map_err(|_| Rejection::MalformedHeader {
        header: "signature",
        detail: "not 64 hex digits",
    })?;
    let ok = super::hmac::verify_any(keys, &[body], [sig.as_slice()]);
    if ok {
        Ok(())
    } else {
        Err(Rejection::BadSignature)
    }
}

/// A value at a dotted path (`amount.value`), as text: strings as they are, numbers as
/// written.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, key| cur.get(key))
}

fn text_at(v: &Value, path: &str) -> Option<String> {
    match at(v, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ids(v: &Value, f: &Fields) -> Result<(String, String), Rejection> {
    let valid = |s: &String| super::is_plain_id(s);
    let id = text_at(v, &f.transaction_id).filter(valid).ok_or_else(|| {
        Rejection::MalformedBody(format!("no {} in the notification", f.transaction_id))
    })?;
    let status = text_at(v, &f.status)
        .filter(valid)
        .ok_or_else(|| Rejection::MalformedBody(format!("no {} in the notification", f.status)))?;
    Ok((id, status))
}

/// Verifies (when the endpoint signs) and identifies a request.
pub fn accept(
    settings: &Settings,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejection> {
    if let Some(name) = &settings.signature_header {
        let value = super::header_text(headers, name, "signature")?;
        verify(&settings.keys, value, body)?;
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::MalformedBody(format!("not JSON: {e}")))?;
    let (id, status) = ids(&v, &settings.fields)?;
    // The configured signature header is kept too, so the row can be verified again.
    let mut kept = vec!["content-type", "user-agent"];
    kept.extend(settings.signature_header.as_deref());
    let headers_json = keep_headers(headers, &kept);
    Ok(Accepted { dedup_key: format!("{id}:{status}"), event_type: Some(status), headers_json })
}

/// What an Adflex `statusCode` means. Assumptions (the format is not public): `Authorised`
/// and `Settled` count as paid, `AuthorisedOnly` as authorized (capture later); a refund or a
/// chargeback comes as the transaction's own GUID with `Refunded` or `Chargeback`.
pub fn kind(status: &str) -> Kind {
    match status {
        "Authorised" | "Settled" => Kind::Succeeded,
        "AuthorisedOnly" => Kind::Authorized,
        "MerchantPending" => Kind::Pending,
        "Declined" | "MerchantRejected" | "ReferralA" => Kind::Failed,
        "Cancelled" => Kind::Canceled,
        "Refunded" | "PartiallyRefunded" => Kind::Refunded,
        "Chargeback" | "ChargedBack" => Kind::Disputed,
        _ => Kind::Ignored,
    }
}

/// Reads a stored notification with the endpoint's field paths.
pub fn parse(fields: &Fields, body: &[u8]) -> Result<Notification, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let (id, status) = ids(&v, fields).map_err(|e| e.to_string())?;
    // The amount must be a decimal string (as in Adflex's API): a JSON number could be minor
    // units or whole units, and guessing wrong is a 100x error.
    let value = match at(&v, &fields.amount) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.starts_with('-') => Some(s.clone()),
        Some(_) => {
            return Err(format!(
                "{} must be a non-negative decimal string such as \"49.99\"",
                fields.amount
            ))
        }
    };
    let amount = match (value, text_at(&v, &fields.currency)) {
        (Some(value), Some(code)) => {
            let currency = Currency::parse(&code).map_err(|e| e.to_string())?;
            Some(
                Money::parse_exact(&value, currency)
                    .map_err(|e| format!("{}: {e}", fields.amount))?,
            )
        }
        _ => None,
    };
    let kind = kind(&status);
    Ok(Notification {
        provider: super::ProviderKind::Adflex,
        event_id: format!("{id}:{status}"),
        kind,
        raw_type: status.clone(),
        payment_id: Some(id),
        merchant_reference: text_at(&v, &fields.reference),
        amount,
        occurred_at: 0,
        customer_email: None,
        object_id: None,
        request_key: None,
        related_payment_id: None,
        detail: (kind == Kind::Ignored)
            .then(|| format!("Adflex status {status} needs no reconciliation")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"transactionGUID":"3f1c2a9e-0d1b-4c1e-9a7e-5b2f6c8d9e01","reference":"3001","amount":{"value":"49.99","currency":"GBP"},"statusCode":"Authorised"}"#;

    #[test]
    fn statuses_map_and_amounts_are_exact() {
        let n = parse(&Fields::default(), BODY).unwrap();
        assert_eq!(n.kind, Kind::Succeeded);
        assert_eq!(n.merchant_reference.as_deref(), Some("3001"));
        assert_eq!(n.amount.unwrap().minor, 4999);
        assert_eq!(n.event_id, "3f1c2a9e-0d1b-4c1e-9a7e-5b2f6c8d9e01:Authorised");
        for (s, k) in [
            ("Authorised", Kind::Succeeded),
            ("Settled", Kind::Succeeded),
            ("AuthorisedOnly", Kind::Authorized),
            ("Declined", Kind::Failed),
            ("MerchantRejected", Kind::Failed),
            ("Cancelled", Kind::Canceled),
            ("MerchantPending", Kind::Pending),
            ("ReferralA", Kind::Failed),
            ("MerchantAccepted", Kind::Ignored),
            ("CardRegistered", Kind::Ignored),
            ("Validated", Kind::Ignored),
        ] {
            assert_eq!(kind(s), k, "{s}");
        }
    }

    #[test]
    fn field_paths_are_configurable() {
        let fields = Fields {
            transaction_id: "txn.guid".into(),
            reference: "txn.merchantRef".into(),
            amount: "txn.total".into(),
            currency: "txn.ccy".into(),
            status: "txn.state".into(),
        };
        let body = br#"{"txn":{"guid":"g-1","merchantRef":"7","total":"10.50","ccy":"EUR","state":"Settled"}}"#;
        let n = parse(&fields, body).unwrap();
        assert_eq!(
            (n.payment_id.as_deref(), n.amount.unwrap().minor, n.kind),
            (Some("g-1"), 1050, Kind::Succeeded)
        );
        assert!(parse(&Fields::default(), body).is_err(), "default paths do not find it");
        // A number or a negative amount is refused rather than guessed.
        for bad in [&br#"{"transactionGUID":"g","statusCode":"Settled","amount":{"value":4999,"currency":"GBP"}}"#[..],
                    br#"{"transactionGUID":"g","statusCode":"Settled","amount":{"value":"-1.00","currency":"GBP"}}"#] {
            assert!(parse(&Fields::default(), bad).is_err());
        }
    }

    #[test]
    fn signatures() {
        let secrets = [MacKey::new(&Secret::new("adflex_secret"))];
        let sig = sign(b"adflex_secret", BODY);
        verify(&secrets, &sig, BODY).unwrap();
        verify(&secrets, &format!("sha256={}", sig.to_uppercase()), BODY).unwrap();
        assert_eq!(verify(&secrets, &sig, b"{}").unwrap_err(), Rejection::BadSignature);
        assert_eq!(verify(&secrets, "zz", BODY).unwrap_err().code(), "malformed_header");
    }
}
