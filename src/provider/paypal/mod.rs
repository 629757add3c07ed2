//! PayPal REST webhooks: transmission signature verification, certificates, and the mapping
//! of capture, authorization, order, refund, reversal and dispute events.
//!
//! PayPal signs `{transmission_id}|{transmission_time}|{webhook_id}|{crc32}` with RSA PKCS#1
//! v1.5 and SHA-256 (`PAYPAL-AUTH-ALGO: SHA256withRSA`), where `webhook_id` is the id of *our*
//! subscription (configuration, never taken from the request) and `crc32` is the CRC-32 (IEEE)
//! of the raw body as an unsigned decimal number. The signature is base64 in
//! `PAYPAL-TRANSMISSION-SIG`; the certificate holding the public key is at `PAYPAL-CERT-URL`.
//!
//! PayPal's SDK fetches that URL whatever host it names, which lets anyone make the server
//! fetch any URL (and sign with their own certificate). Here:
//! - the URL must be `https` on an allow-listed host (default: PayPal's API hosts), written
//!   plainly (nothing a URL parser would rewrite is accepted: [`check_cert_url`]), or the
//!   request is refused before anything is fetched, whether or not fetching is on;
//! - **pinned certificates** (PEM files in the config) are tried first, so verification works
//!   with no outbound network at all;
//! - fetching is opt-in (`cert_url_fetch = true`); a fetched certificate is cached by URL
//!   (bounded, least recently used out, one download per URL at a time: [`CertSource`]), and
//!   it, like a pinned one, must be within its validity dates and its subject must match the
//!   allowed patterns (default `*.paypal.com`).
//!
//! A certificate that cannot be fetched now is answered 503 (PayPal retries); a bad one 400.
//!
//! `verify` chooses how a delivery is verified: `certs` (the default) as above; `api`, where a
//! delivery with well-formed transmission headers is stored unverified and the worker has
//! PayPal's own `verify-webhook-signature` API check it before it is decided
//! (`by_api`); `certs_then_api`, the offline check first and the API only when the offline
//! check cannot decide because the certificate is not to be had.

mod by_api;
mod cert;
mod cert_source;

use base64::Engine;
use hyper::HeaderMap;
use serde_json::Value;

pub use by_api::{stored_unverified, SignatureApi, StoredTransmission, Webhooks};
pub use cert::{check_cert_url, sign, signed_message, verify_with, Certificate, CERT_PATH_PREFIX};
pub use cert_source::CertSource;

use super::{str_at, Kind, Notification, Rejection};
use crate::money::{Currency, Money};
use crate::settings::{ConfigError, Resolver};

/// PayPal's API hosts, the default `cert_hosts`: certificate URLs on any other host are refused.
pub const CERT_HOSTS: &[&str] =
    &["api.paypal.com", "api-m.paypal.com", "api.sandbox.paypal.com", "api-m.sandbox.paypal.com"];
/// The default `cert_subjects`.
pub const CERT_SUBJECTS: &[&str] = &["*.paypal.com"];

/// `provider = "paypal"` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The id of our webhook subscription: part of the signed string.
    pub webhook_id: String,
    /// Pinned signing certificates (PEM files), tried before any download.
    pub certs: Vec<Certificate>,
    /// Whether certificates may be downloaded from `PAYPAL-CERT-URL` (allowed hosts only).
    pub cert_url_fetch: bool,
    /// Hosts (`host` or `host:port`) a certificate URL may name.
    pub cert_hosts: Vec<String>,
    /// Subject name patterns a signing certificate must match (`*.paypal.com`).
    pub cert_subjects: Vec<String>,
    /// Extra trusted roots (PEM) for the HTTPS download.
    pub tls_ca: Option<Vec<u8>>,
    /// Which resource field holds the shop's order reference.
    pub reference: Reference,
    /// How deliveries are verified: offline, by PayPal's API, or offline first.
    pub verify: Verify,
}

/// `verify`: how a PayPal endpoint verifies a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// The transmission signature, checked offline against pinned or downloaded certificates.
    #[default]
    Certs,
    /// Stored unverified; the worker asks PayPal's API before deciding (`[endpoint.api]`).
    Api,
    /// Offline first; when no certificate is to be had (none pinned verifies and download is
    /// off, or the download failed), stored unverified and checked by PayPal's API.
    CertsThenApi,
}

impl Verify {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Verify::Certs => "certs",
            Verify::Api => "api",
            Verify::CertsThenApi => "certs_then_api",
        }
    }
}

/// Where a PayPal resource carries the shop's reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// `custom_id`, then `invoice_id`.
    #[default]
    CustomId,
    /// `invoice_id`, then `custom_id`.
    InvoiceId,
}

/// The endpoint keys PayPal webhooks read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    webhook_id: Option<String>,
    #[serde(default)]
    certs: Vec<std::path::PathBuf>,
    cert_url_fetch: Option<bool>,
    cert_hosts: Option<Vec<String>>,
    cert_subjects: Option<Vec<String>>,
    tls_ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    reference: Reference,
    #[serde(default)]
    verify: Verify,
}

impl Settings {
    pub(crate) fn resolve(raw: Raw, r: &Resolver<'_>) -> Result<Settings, ConfigError> {
        let webhook_id = raw.webhook_id.unwrap_or_default();
        if webhook_id.is_empty() || !webhook_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(r.invalid(
                "webhook_id",
                "the id of the webhook in PayPal's developer dashboard is required (it is part of what PayPal signs)",
            ));
        }
        let tls_ca = super::read_tls_ca(r, raw.tls_ca_file.as_deref())?;
        let mut certs = Vec::with_capacity(raw.certs.len());
        for (n, path) in raw.certs.iter().enumerate() {
            let key = format!("certs[{n}]");
            let pem = r.read(&key, path)?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|err| r.invalid(&key, format!("{}: {err}", r.beside(path).display())))?;
            certs.push(cert);
        }
        let cert_url_fetch = raw.cert_url_fetch.unwrap_or(false);
        let verify = raw.verify;
        if verify != Verify::Certs && !r.has_api() {
            return Err(r.invalid(
                "verify",
                format!(
                    "\"{}\" asks PayPal's API: add an [endpoint.api] table with the REST app's client_id and client_secret_file",
                    verify.as_str()
                ),
            ));
        }
        match verify {
            Verify::Certs if certs.is_empty() && !cert_url_fetch => {
                return Err(r.invalid(
                    "certs",
                    "pin PayPal's signing certificate (certs = [\"paypal-cert.pem\"]) and/or set cert_url_fetch = true (or verify = \"api\")",
                ));
            }
            // Nothing is checked offline: certificates would be silently unused.
            Verify::Api if !certs.is_empty() => {
                return Err(r.invalid(
                    "certs",
                    "is not used with verify = \"api\" (verify = \"certs_then_api\" checks them first)",
                ));
            }
            Verify::Api if cert_url_fetch => {
                return Err(r.invalid(
                    "cert_url_fetch",
                    "is not used with verify = \"api\" (verify = \"certs_then_api\" checks certificates first)",
                ));
            }
            _ => {}
        }
        let lower = |list: Option<Vec<String>>, default: &[&str]| -> Vec<String> {
            match list {
                Some(list) => list.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
                None => default.iter().map(|h| (*h).to_owned()).collect(),
            }
        };
        let cert_hosts = lower(raw.cert_hosts, CERT_HOSTS);
        if let Some(h) =
            cert_hosts.iter().find(|h| h.is_empty() || h.contains('/') || h.contains('@'))
        {
            return Err(r.invalid("cert_hosts", format!("\"{h}\" is not a host or host:port")));
        }
        let cert_subjects = lower(raw.cert_subjects, CERT_SUBJECTS);
        if cert_subjects.is_empty() {
            return Err(r.invalid("cert_subjects", "must not be empty"));
        }
        Ok(Settings {
            webhook_id,
            certs,
            cert_url_fetch,
            cert_hosts,
            cert_subjects,
            tls_ca,
            reference: raw.reference,
            verify,
        })
    }

    /// Warns about pinned certificates that are not valid now: they will not verify.
    pub(crate) fn warn_about_pinned(&self) {
        let now = crate::time::now_ms() / 1000;
        for (n, cert) in self.certs.iter().enumerate() {
            if let Err(why) = cert.check_validity(now) {
                tracing::warn!("pinned certificate certs[{n}]: {why}");
            }
        }
    }

    pub(crate) fn describe(&self) -> Vec<String> {
        let verify = match self.verify {
            Verify::Certs => "verified offline",
            Verify::Api => "verified by PayPal's API",
            Verify::CertsThenApi => "verified offline, else by PayPal's API",
        };
        vec![format!(
            "webhook id {}, {verify}: {} pinned certificate(s), certificate download {} (hosts {})",
            self.webhook_id,
            self.certs.len(),
            if self.cert_url_fetch { "on" } else { "off" },
            self.cert_hosts.join(" ")
        )]
    }
}

/// The headers PayPal sends with every webhook.
pub const TRANSMISSION_ID: &str = "paypal-transmission-id";
/// RFC 3339 time of the transmission, signed as sent.
pub const TRANSMISSION_TIME: &str = "paypal-transmission-time";
/// Base64 RSA signature.
pub const TRANSMISSION_SIG: &str = "paypal-transmission-sig";
/// Where the signing certificate is.
pub const CERT_URL: &str = "paypal-cert-url";
/// `SHA256withRSA`, the only algorithm accepted.
pub const AUTH_ALGO: &str = "paypal-auth-algo";
/// The only `PAYPAL-AUTH-ALGO` accepted.
pub const ALGORITHM: &str = "SHA256withRSA";
/// Headers kept with a row verified when it arrived.
/// The signature is not kept: PayPal signs only the body's CRC-32, so anyone who could read a
/// stored signature could make another body with the same CRC and reuse it. A row stored
/// unverified keeps it ([`by_api::KEPT_UNVERIFIED`]), which is what marks it as such.
const KEPT_HEADERS: &[&str] =
    &[TRANSMISSION_ID, TRANSMISSION_TIME, CERT_URL, AUTH_ALGO, "content-type"];
/// Longest header value we read (ids, times, URLs); a 4096-bit signature is 684 characters.
const MAX_HEADER_LEN: usize = 2048;

/// The transmission headers of one request.
#[derive(Debug)]
pub struct Transmission<'a> {
    /// `PAYPAL-TRANSMISSION-ID`.
    pub id: &'a str,
    /// `PAYPAL-TRANSMISSION-TIME`, as sent.
    pub time: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// `PAYPAL-CERT-URL`.
    pub cert_url: &'a str,
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejection> {
    let label = match name {
        TRANSMISSION_ID => "PAYPAL-TRANSMISSION-ID",
        TRANSMISSION_TIME => "PAYPAL-TRANSMISSION-TIME",
        TRANSMISSION_SIG => "PAYPAL-TRANSMISSION-SIG",
        CERT_URL => "PAYPAL-CERT-URL",
        _ => "PAYPAL-AUTH-ALGO",
    };
    let value = super::header_text(headers, name, label)?.trim();
    if value.is_empty() {
        return Err(Rejection::MalformedHeader { header: label, detail: "empty" });
    }
    if value.len() > MAX_HEADER_LEN {
        return Err(Rejection::MalformedHeader { header: label, detail: "longer than 2048 bytes" });
    }
    Ok(value)
}

/// Reads and checks the transmission headers (the algorithm must be `SHA256withRSA`).
pub fn parse_headers(headers: &HeaderMap) -> Result<Transmission<'_>, Rejection> {
    if header(headers, AUTH_ALGO)? != ALGORITHM {
        return Err(Rejection::MalformedHeader {
            header: "PAYPAL-AUTH-ALGO",
            detail: "only SHA256withRSA is accepted",
        });
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(header(headers, TRANSMISSION_SIG)?)
        .map_err(|_| Rejection::MalformedHeader {
            header: "PAYPAL-TRANSMISSION-SIG",
            detail: "not base64",
        })?;
    Ok(Transmission {
        id: header(headers, TRANSMISSION_ID)?,
        time: header(headers, TRANSMISSION_TIME)?,
        signature,
        cert_url: header(headers, CERT_URL)?,
    })
}

/// Reads the envelope: the event id (`WH-…`, the dedup key) and type.
pub fn identify(body: &[u8]) -> Result<(String, String), Rejection> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::MalformedBody(format!("not a PayPal event: {e}")))?;
    let id =
        str_at(&v, &["id"]).ok_or_else(|| Rejection::MalformedBody("event has no id".into()))?;
    if !super::is_plain_id(&id) {
        return Err(Rejection::MalformedBody(
            "event id is too long or has control characters".into(),
        ));
    }
    let kind = str_at(&v, &["event_type"])
        .ok_or_else(|| Rejection::MalformedBody("event has no event_type".into()))?;
    Ok((id, kind))
}

/// A PayPal amount: `{currency_code, value}` (v2) or `{currency, total}` (v1 sales), the value
/// a decimal string with at most the currency's decimals.
fn amount(v: &Value) -> Result<Option<Money>, String> {
    let value = str_at(v, &["value"]).or_else(|| str_at(v, &["total"]));
    let code = str_at(v, &["currency_code"]).or_else(|| str_at(v, &["currency"]));
    match (value, code) {
        (Some(value), Some(code)) => {
            let currency = Currency::parse(&code).map_err(|e| e.to_string())?;
            // Refund amounts are positive in the REST API; a sign would be a format change.
            let m = Money::parse_exact(value.trim_start_matches('-'), currency)
                .map_err(|e| format!("amount \"{value}\": {e}"))?;
            Ok(Some(m))
        }
        _ => Ok(None),
    }
}

/// The id of the linked object with relation `rel` (`up` for a refund's capture), from the
/// last path segment of its `href`.
fn linked_id(resource: &Value, rel: &str) -> Option<String> {
    resource.get("links")?.as_array()?.iter().find_map(|l| {
        if l.get("rel")?.as_str()? != rel {
            return None;
        }
        let href = l.get("href")?.as_str()?;
        let last = href.trim_end_matches('/').rsplit('/').next()?;
        (!last.is_empty()).then(|| last.to_owned())
    })
}

/// Reads a verified PayPal event into a canonical notification.
///
/// The payment id is the capture's id: what the shop records as PayPal's transaction id, what
/// an IPN for the same payment calls `txn_id`, what refunds (`links[rel=up]`) and disputes
/// (`seller_transaction_id`) name. A capture's pending and completed events share it; a
/// capture of an authorization names the authorization as its related payment, so the two
/// are never taken for two payments of one order. Checkout-order events carry the order id.
pub fn parse(settings: Option<&Settings>, body: &[u8]) -> Result<Notification, String> {
    let event: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let event_id = str_at(&event, &["id"]).ok_or("event has no id")?;
    let raw_type = str_at(&event, &["event_type"]).ok_or("event has no event_type")?;
    let prefer = settings.map_or(Reference::CustomId, |s| s.reference);
    let r = &event["resource"];
    let reference = |custom: &[&str], invoice: &[&str]| match prefer {
        Reference::CustomId => str_at(r, custom).or_else(|| str_at(r, invoice)),
        Reference::InvoiceId => str_at(r, invoice).or_else(|| str_at(r, custom)),
    };
    let mut n = Notification {
        provider: super::ProviderKind::Paypal,
        event_id,
        kind: Kind::Ignored,
        raw_type: raw_type.clone(),
        payment_id: None,
        merchant_reference: None,
        amount: None,
        occurred_at: str_at(&event, &["create_time"])
            .as_deref()
            .and_then(crate::time::parse_rfc3339)
            .unwrap_or(0),
        customer_email: None,
        object_id: None,
        request_key: None,
        related_payment_id: None,
        detail: None,
    };
    let id = str_at(r, &["id"]);
    match raw_type.as_str() {
        t if t.starts_with("PAYMENT.CAPTURE.") || t.starts_with("PAYMENT.AUTHORIZATION.") => {
            let action = t.rsplit('.').next().unwrap_or_default();
            let is_refund = matches!(action, "REFUNDED" | "REVERSED");
            n.merchant_reference = reference(&["custom_id"], &["invoice_id"]);
            n.amount = amount(&r["amount"])?;
            n.detail = str_at(r, &["status_details", "reason"]);
            if is_refund {
                // The resource is the refund; its capture is the payment.
                n.object_id = id.clone();
                n.payment_id = linked_id(r, "up").or(id);
                n.kind = Kind::Refunded;
                if action == "REVERSED" {
                    n.detail = Some(format!(
                        "reversed by PayPal (chargeback or reversal){}",
                        n.detail.map(|d| format!(": {d}")).unwrap_or_default()
                    ));
                }
            } else {
                n.payment_id = id;
                // A capture of an authorization is the same payment as far as the order goes.
                n.related_payment_id =
                    str_at(r, &["supplementary_data", "related_ids", "authorization_id"]);
                n.kind = match (t.starts_with("PAYMENT.CAPTURE."), action) {
                    (true, "COMPLETED") => Kind::Succeeded,
                    (true, "PENDING") => Kind::Pending,
                    (true, "DENIED" | "DECLINED") => Kind::Failed,
                    (false, "CREATED") => Kind::Authorized,
                    (false, "VOIDED") => Kind::Canceled,
                    _ => Kind::Ignored,
                };
            }
        }
        "CHECKOUT.ORDER.APPROVED" | "CHECKOUT.ORDER.COMPLETED" | "CHECKOUT.ORDER.SAVED" => {
            let unit = &r["purchase_units"][0];
            n.payment_id = id;
            n.merchant_reference = match prefer {
                Reference::CustomId => {
                    str_at(unit, &["custom_id"]).or_else(|| str_at(unit, &["invoice_id"]))
                }
                Reference::InvoiceId => {
                    str_at(unit, &["invoice_id"]).or_else(|| str_at(unit, &["custom_id"]))
                }
            }
            .or_else(|| str_at(unit, &["reference_id"]).filter(|r| r != "default"));
            n.amount = amount(&unit["amount"])?;
            n.customer_email = str_at(r, &["payer", "email_address"]);
            n.detail =
                Some("order events do not move money; the capture's own event decides".into());
        }
        "CHECKOUT.PAYMENT-APPROVAL.REVERSED" => {
            // Approved but never captured in time: PayPal gave the buyer their money back.
            n.payment_id = str_at(r, &["order_id"]).or(id);
            n.merchant_reference = reference(&["custom_id"], &["invoice_id"]);
            n.kind = Kind::Canceled;
            n.detail = Some("approved but not captured in time; PayPal refunded the buyer".into());
        }
        t if t.starts_with("CUSTOMER.DISPUTE.") => {
            let tx = &r["disputed_transactions"][0];
            n.object_id = str_at(r, &["dispute_id"]);
            n.payment_id = str_at(tx, &["seller_transaction_id"]);
            n.merchant_reference =
                str_at(tx, &["custom"]).or_else(|| str_at(tx, &["invoice_number"]));
            n.amount = amount(&r["dispute_amount"])?;
            n.detail = str_at(r, &["reason"]);
            n.kind = match t {
                "CUSTOMER.DISPUTE.CREATED" => Kind::Disputed,
                "CUSTOMER.DISPUTE.RESOLVED" => {
                    n.detail = str_at(r, &["dispute_outcome", "outcome_code"]).or(n.detail);
                    Kind::DisputeClosed
                }
                _ => Kind::Ignored,
            };
        }
        t if t.starts_with("PAYMENT.SALE.") => {
            // Legacy v1 sales: amount {total, currency}; refunds name their sale.
            let action = t.rsplit('.').next().unwrap_or_default();
            n.merchant_reference = match prefer {
                Reference::CustomId => {
                    str_at(r, &["custom"]).or_else(|| str_at(r, &["invoice_number"]))
                }
                Reference::InvoiceId => {
                    str_at(r, &["invoice_number"]).or_else(|| str_at(r, &["custom"]))
                }
            };
            n.amount = amount(&r["amount"])?;
            if matches!(action, "REFUNDED" | "REVERSED") {
                n.object_id = id.clone();
                n.payment_id = str_at(r, &["sale_id"]).or(id);
                n.kind = Kind::Refunded;
            } else {
                n.payment_id = id;
                n.kind = match action {
                    "COMPLETED" => Kind::Succeeded,
                    "PENDING" => Kind::Pending,
                    "DENIED" => Kind::Failed,
                    _ => Kind::Ignored,
                };
            }
        }
        _ => n.detail = Some("event type not reconciled".into()),
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, resource: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "WH-1", "event_type": kind, "create_time": "2026-11-20T10:14:05Z", "resource": resource
        }))
        .unwrap()
    }

    /// A transmission header that is there but empty, or absurdly long, says which.
    #[test]
    fn transmission_header_refusals_name_what_is_wrong() {
        let headers = |id: &str| {
            let mut h = HeaderMap::new();
            for (name, value) in [
                (AUTH_ALGO, ALGORITHM),
                (TRANSMISSION_SIG, "c2ln"),
                (TRANSMISSION_ID, id),
                (TRANSMISSION_TIME, "2026-11-20T10:14:05Z"),
                (CERT_URL, "https://api.paypal.com/v1/notifications/certs/CERT-1"),
            ] {
                h.insert(name, value.parse().unwrap());
            }
            h
        };
        let detail = |h: &HeaderMap| match parse_headers(h) {
            Err(Rejection::MalformedHeader { header, detail }) => (header, detail),
            other => panic!("{other:?}"),
        };
        assert_eq!(detail(&headers(" ")), ("PAYPAL-TRANSMISSION-ID", "empty"));
        let long = "a".repeat(MAX_HEADER_LEN + 1);
        assert_eq!(detail(&headers(&long)), ("PAYPAL-TRANSMISSION-ID", "longer than 2048 bytes"));
        assert_eq!(parse_headers(&headers("T-1")).unwrap().id, "T-1");
    }

    #[test]
    fn a_capture_is_its_own_payment_and_names_its_authorization() {
        let related = serde_json::json!({"related_ids": {"order_id": "ORDER-1", "authorization_id": "AUTH-1"}});
        let auth = parse(
            None,
            &event(
                "PAYMENT.AUTHORIZATION.CREATED",
                serde_json::json!({"id": "AUTH-1", "amount": {"currency_code": "USD", "value": "10.00"},
                    "custom_id": "1001", "supplementary_data": {"related_ids": {"order_id": "ORDER-1"}}}),
            ),
        )
        .unwrap();
        let capture = parse(
            None,
            &event(
                "PAYMENT.CAPTURE.COMPLETED",
                serde_json::json!({"id": "CAP-1", "amount": {"currency_code": "USD", "value": "10.00"},
                    "invoice_id": "INV-1001", "custom_id": "1001", "supplementary_data": related}),
            ),
        )
        .unwrap();
        assert_eq!((auth.kind, capture.kind), (Kind::Authorized, Kind::Succeeded));
        assert_eq!(auth.payment_id.as_deref(), Some("AUTH-1"));
        assert_eq!(capture.payment_id.as_deref(), Some("CAP-1"));
        assert_eq!(capture.related_payment_id, auth.payment_id);
        assert_eq!(capture.merchant_reference.as_deref(), Some("1001"));
        let invoice = Settings {
            webhook_id: "W".into(),
            certs: vec![],
            cert_url_fetch: false,
            cert_hosts: vec![],
            cert_subjects: vec![],
            tls_ca: None,
            reference: Reference::InvoiceId,
            verify: Verify::Certs,
        };
        let by_invoice = parse(
            Some(&invoice),
            &event(
                "PAYMENT.CAPTURE.COMPLETED",
                serde_json::json!({
            "id": "CAP-1", "invoice_id": "INV-1001", "custom_id": "1001"}),
            ),
        )
        .unwrap();
        assert_eq!(by_invoice.merchant_reference.as_deref(), Some("INV-1001"));
        assert_eq!(capture.amount.unwrap().minor, 1000);
        assert_eq!(capture.occurred_at, 1_795_169_645);
    }

    #[test]
    fn other_events_map_as_documented() {
        let cases = [
            (
                "CHECKOUT.PAYMENT-APPROVAL.REVERSED",
                serde_json::json!({"order_id": "O-1"}),
                Kind::Canceled,
                "O-1",
            ),
            (
                "PAYMENT.AUTHORIZATION.VOIDED",
                serde_json::json!({"id": "A-1"}),
                Kind::Canceled,
                "A-1",
            ),
            (
                "PAYMENT.CAPTURE.REVERSED",
                serde_json::json!({"id": "R-1", "links": [{"rel": "up", "href": "https://api.paypal.com/v2/payments/captures/C-9"}]}),
                Kind::Refunded,
                "C-9",
            ),
            (
                "PAYMENT.SALE.COMPLETED",
                serde_json::json!({"id": "S-1", "amount": {"total": "5.00", "currency": "EUR"}}),
                Kind::Succeeded,
                "S-1",
            ),
            (
                "PAYMENT.SALE.REFUNDED",
                serde_json::json!({"id": "RF-1", "sale_id": "S-1"}),
                Kind::Refunded,
                "S-1",
            ),
            (
                "CUSTOMER.DISPUTE.RESOLVED",
                serde_json::json!({"dispute_id": "PP-D-1", "disputed_transactions": [{"seller_transaction_id": "C-9"}]}),
                Kind::DisputeClosed,
                "C-9",
            ),
            (
                "CUSTOMER.DISPUTE.UPDATED",
                serde_json::json!({"dispute_id": "PP-D-1", "disputed_transactions": [{"seller_transaction_id": "C-9"}]}),
                Kind::Ignored,
                "C-9",
            ),
        ];
        for (kind, resource, expected, payment) in cases {
            let n = parse(None, &event(kind, resource)).unwrap();
            assert_eq!((n.kind, n.payment_id.as_deref()), (expected, Some(payment)), "{kind}");
        }
        let sale = parse(
            None,
            &event(
                "PAYMENT.SALE.COMPLETED",
                serde_json::json!({"id": "S-1", "amount": {"total": "5.00", "currency": "EUR"}}),
            ),
        )
        .unwrap();
        assert_eq!(sale.amount.unwrap().minor, 500);
        // An amount with more decimals than the currency has is refused, not rounded.
        assert!(parse(
            None,
            &event(
                "PAYMENT.CAPTURE.COMPLETED",
                serde_json::json!({"id": "C", "amount": {"currency_code": "JPY", "value": "10.5"}})
            )
        )
        .is_err());
    }
}
