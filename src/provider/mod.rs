//! Provider adapters: verify a notification's raw bytes and identify it for the inbox.
//!
//! Each provider lives in one file with the same small surface (`verify`, `identify`); the
//! dispatch on [`ProviderKind`] is here. Nothing is parsed before its signature checks out.

pub mod adflex;
mod hmac;
pub mod paypal;
pub mod paypal_ipn;
pub mod stripe;
pub mod worldpay;
pub mod worldpay_xml;

use std::time::Duration;

use hyper::HeaderMap;
use serde::Serialize;

use crate::config::{Endpoint, ProviderKind};
use crate::money::Money;

/// What a notification says happened to a payment, in the provider-neutral terms of the
/// decision table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Authorized, capture pending.
    Authorized,
    /// The money is captured.
    Succeeded,
    /// Processing (asynchronous methods, bank debits).
    Pending,
    /// Declined or failed.
    Failed,
    /// Canceled or expired before succeeding.
    Canceled,
    /// Refunded by the provider (possibly at our request).
    Refunded,
    /// A refund failed.
    RefundFailed,
    /// A dispute (chargeback) was opened.
    Disputed,
    /// A dispute was closed (won or lost).
    DisputeClosed,
    /// Nothing to reconcile (stored and marked ignored).
    Ignored,
}

impl Kind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Authorized => "authorized",
            Kind::Succeeded => "succeeded",
            Kind::Pending => "pending",
            Kind::Failed => "failed",
            Kind::Canceled => "canceled",
            Kind::Refunded => "refunded",
            Kind::RefundFailed => "refund_failed",
            Kind::Disputed => "disputed",
            Kind::DisputeClosed => "dispute_closed",
            Kind::Ignored => "ignored",
        }
    }
}

/// The canonical notification every provider adapter produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Provider name (`stripe`).
    pub provider: &'static str,
    /// The provider's event id (the dedup key).
    pub event_id: String,
    /// What happened.
    pub kind: Kind,
    /// The provider's own event type, for people.
    pub raw_type: String,
    /// The payment the event is about (`pi_…`); events of one payment share it.
    pub payment_id: Option<String>,
    /// The shop's reference (order id) the payment was created with.
    pub merchant_reference: Option<String>,
    /// The amount the event is about (paid, refunded, disputed), exact.
    pub amount: Option<Money>,
    /// When the provider says it happened, unix seconds.
    pub occurred_at: i64,
    /// The customer's email as the provider knows it.
    pub customer_email: Option<String>,
    /// The refund or dispute object's id, when the event is about one.
    pub object_id: Option<String>,
    /// The idempotency key of the API request that caused the event (our own refunds).
    pub request_key: Option<String>,
    /// Another id of this same payment at the provider: the authorization a capture settles
    /// (PayPal). It is never taken for another payment of the order.
    pub related_payment_id: Option<String>,
    /// A short human detail (decline message, dispute reason, why ignored).
    pub detail: Option<String>,
}

/// Reads a stored, verified body into a canonical notification. `endpoint` is the
/// configuration of the endpoint it arrived on, for adapters whose format is configurable.
pub fn parse(
    provider: &str,
    endpoint: Option<&Endpoint>,
    body: &[u8],
) -> Result<Notification, String> {
    match provider {
        "paypal" => paypal::parse(endpoint.and_then(|e| e.paypal.as_ref()), body),
        "paypal-ipn" => paypal_ipn::parse(endpoint.and_then(|e| e.ipn.as_ref()), body),
        "adflex" => {
            let default = crate::config::AdflexFields::default();
            adflex::parse(endpoint.map_or(&default, |e| &e.fields), body)
        }
        "stripe" => stripe::parse(body),
        "worldpay" => worldpay::parse(body),
        "worldpay-xml" => worldpay_xml::parse(body),
        other => Err(format!("no adapter for provider \"{other}\"")),
    }
}

/// A verified notification, ready to be stored.
#[derive(Debug)]
pub struct Accepted {
    /// The provider's own id for this notification; `UNIQUE(provider, dedup_key)`.
    pub dedup_key: String,
    /// The provider's event type, for listing (`payment_intent.succeeded`).
    pub event_type: Option<String>,
    /// The request headers needed to verify the row again later, as a JSON object.
    pub headers_json: String,
}

/// Why a notification was refused. The `reason` is safe to send back and to log: it never
/// holds a secret, and it is short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A required header is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// The signature header cannot be parsed.
    #[error("malformed {header} header: {detail}")]
    MalformedHeader {
        /// Which header.
        header: &'static str,
        /// What is wrong with it.
        detail: &'static str,
    },
    /// No signature matches any configured secret.
    #[error("no signature matches the endpoint's secrets")]
    BadSignature,
    /// The signed timestamp is older than the tolerance.
    #[error("timestamp is older than the tolerance ({age_secs}s > {tolerance_secs}s)")]
    Stale {
        /// How old the timestamp is.
        age_secs: i64,
        /// The configured tolerance.
        tolerance_secs: u64,
    },
    /// The signed timestamp is further in the future than the tolerance.
    #[error("timestamp is in the future beyond the tolerance ({ahead_secs}s > {tolerance_secs}s)")]
    Future {
        /// How far ahead of our clock.
        ahead_secs: i64,
        /// The configured tolerance.
        tolerance_secs: u64,
    },
    /// The signature is good but the body is not a notification we understand. Parser errors
    /// may quote the body, so only the first [`MAX_DETAIL_CHARS`] characters are shown.
    #[error("malformed body: {}", cut(.0))]
    MalformedBody(String),
    /// The signing certificate or its URL is not acceptable (PayPal).
    #[error("{0}")]
    Certificate(String),
    /// The signing certificate cannot be had right now (PayPal): answered 503, PayPal retries.
    #[error("{0}")]
    CertificateUnavailable(String),
    /// The notification is for another account (PayPal IPN `receiver_email`/`receiver_id`).
    #[error("{0} is not this endpoint's")]
    WrongReceiver(&'static str),
}

impl Rejection {
    /// A short machine-friendly name, stored with the failure record.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingHeader(_) => "missing_header",
            Rejection::MalformedHeader { .. } => "malformed_header",
            Rejection::BadSignature => "bad_signature",
            Rejection::Stale { .. } => "stale_timestamp",
            Rejection::Future { .. } => "future_timestamp",
            Rejection::MalformedBody(_) => "malformed_body",
            Rejection::Certificate(_) => "bad_certificate",
            Rejection::CertificateUnavailable(_) => "certificate_unavailable",
            Rejection::WrongReceiver(_) => "wrong_receiver",
        }
    }

    /// Whether the sender should simply try again later (answered 503, not 400).
    pub fn is_temporary(&self) -> bool {
        matches!(self, Rejection::CertificateUnavailable(_))
    }
}

/// Verifies a request for `endpoint` and identifies it. `now` is unix seconds. `certs` is
/// the endpoint's certificate source when it is a PayPal webhook endpoint (the only provider
/// whose verification may need the network).
pub async fn accept(
    endpoint: &Endpoint,
    certs: Option<&paypal::CertSource>,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Accepted, Rejection> {
    match endpoint.provider {
        ProviderKind::Paypal => match certs {
            Some(certs) => certs.accept(headers, body, now).await,
            None => Err(Rejection::CertificateUnavailable(
                "no certificate source for this PayPal endpoint".into(),
            )),
        },
        ProviderKind::PaypalIpn => match &endpoint.ipn {
            Some(settings) => paypal_ipn::accept(settings, headers, body),
            None => Err(Rejection::WrongReceiver("receiver_email")),
        },
        ProviderKind::Stripe => stripe::accept(endpoint, headers, body, now),
        ProviderKind::Worldpay => worldpay::accept(endpoint, headers, body, now),
        ProviderKind::WorldpayXml => worldpay_xml::accept(endpoint, headers, body, now),
        ProviderKind::Adflex => adflex::accept(endpoint, headers, body, now),
    }
}

/// The body and content type of the answer to a stored (or duplicate) notification: what
/// each provider expects to read back.
pub fn acknowledgement(kind: ProviderKind, duplicate: bool) -> (&'static str, &'static str) {
    match (kind, duplicate) {
        // Worldpay's XML service retries anything but exactly `[OK]`.
        (ProviderKind::WorldpayXml, _) => ("text/plain", "[OK]"),
        // IPN wants an empty 200.
        (ProviderKind::PaypalIpn, _) => ("text/plain", ""),
        (_, false) => ("text/plain; charset=utf-8", "stored\n"),
        (_, true) => ("text/plain; charset=utf-8", "duplicate\n"),
    }
}

/// Providers that report the same payments through two channels share a family: a PayPal
/// capture comes as a webhook and, when IPN is on too, as an IPN with the same id.
pub fn family(provider: &str) -> &str {
    match provider {
        "paypal-ipn" => "paypal",
        other => other,
    }
}

/// Most characters of a [`Rejection::MalformedBody`] detail in the reason. serde_json and
/// quick-xml quote what they refuse (a string of the wrong type, an unknown entity, a closing
/// tag) in full, and the reason is sent back, logged and stored with the failure record.
pub const MAX_DETAIL_CHARS: usize = 200;

/// `detail` cut to [`MAX_DETAIL_CHARS`] characters, with `…` when something was cut.
fn cut(detail: &str) -> std::borrow::Cow<'_, str> {
    match detail.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &detail[..end]).into(),
        None => detail.into(),
    }
}

/// Longest notification id (dedup key) or event type accepted from any provider.
pub(crate) const MAX_ID_LEN: usize = 255;

/// Whether `s` can be a notification id or type: non-empty, at most [`MAX_ID_LEN`] bytes, no
/// control characters.
pub(crate) fn is_plain_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control)
}

/// A required header as text: [`Rejection::MissingHeader`] when absent, and
/// [`Rejection::MalformedHeader`] when it is not visible ASCII. `label` names it in both.
pub(crate) fn header_text<'a>(
    headers: &'a HeaderMap,
    name: &str,
    label: &'static str,
) -> Result<&'a str, Rejection> {
    let value = headers.get(name).ok_or(Rejection::MissingHeader(label))?;
    value
        .to_str()
        .map_err(|_| Rejection::MalformedHeader { header: label, detail: "not visible ASCII" })
}

/// A string at a path of JSON object keys, if present and non-empty.
pub(crate) fn str_at(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Serialises the named headers that are present into a JSON object (lower-case names).
pub(crate) fn keep_headers(headers: &HeaderMap, names: &[&str]) -> String {
    let mut map = serde_json::Map::new();
    for name in names {
        if let Some(v) = headers.get(*name) {
            map.insert(
                (*name).to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            );
        }
    }
    serde_json::Value::Object(map).to_string()
}

/// The HTTPS client for PayPal's certificate URL and IPN postback: https only, no redirects
/// (a redirect could lead anywhere), bounded in time, trusting the public web PKI plus the
/// PEM certificates in `extra_roots` (a test CA, a corporate proxy's).
pub fn https_client(
    extra_roots: Option<&[u8]>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("reconciled/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = extra_roots {
        let roots = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("tls_ca_file: {}", crate::error::error_chain(&e)))?;
        if roots.is_empty() {
            return Err("tls_ca_file holds no certificate".into());
        }
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTPS client: {}", crate::error::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz targets' check that a reason is short: a signed Worldpay event whose
    /// `eventDetails` is a long string, or a Worldpay XML document with a long unknown entity
    /// or closing tag, made a reason as long as the body.
    #[test]
    fn malformed_body_reasons_quote_at_most_a_little_of_the_body() {
        let long = "x".repeat(5000);
        let event = format!(r#"{{"eventId":"e-1","eventDetails":"{long}"}}"#);
        let xml_attribute = format!(r#"<paymentService merchantCode="&{long};"/>"#);
        let xml_text = format!("<paymentService>&{long};</paymentService>");
        let xml_end = format!("<paymentService></{long}>");
        let refusals = [
            worldpay::identify(event.as_bytes()).unwrap_err(),
            Rejection::MalformedBody(worldpay_xml::read(xml_attribute.as_bytes()).unwrap_err()),
            Rejection::MalformedBody(worldpay_xml::read(xml_text.as_bytes()).unwrap_err()),
            Rejection::MalformedBody(worldpay_xml::read(xml_end.as_bytes()).unwrap_err()),
        ];
        for rejection in refusals {
            let reason = rejection.to_string();
            assert!(reason.starts_with("malformed body: "), "{reason}");
            assert!(reason.ends_with("xxx…"), "{reason}");
            assert_eq!(reason.chars().count(), "malformed body: ".len() + MAX_DETAIL_CHARS + 1);
        }
        // Short details are shown whole; a cut never splits a character.
        assert_eq!(
            Rejection::MalformedBody("not JSON".into()).to_string(),
            "malformed body: not JSON"
        );
        let wide = Rejection::MalformedBody("é".repeat(MAX_DETAIL_CHARS + 1)).to_string();
        assert_eq!(wide, format!("malformed body: {}…", "é".repeat(MAX_DETAIL_CHARS)));
        let exact = Rejection::MalformedBody("é".repeat(MAX_DETAIL_CHARS)).to_string();
        assert_eq!(exact, format!("malformed body: {}", "é".repeat(MAX_DETAIL_CHARS)));
    }
}
