//! What the adapters produce: the canonical [`Notification`] a stored body is read into, the
//! [`Accepted`] identity of a verified request, and the [`Rejection`] of one that is not.

use serde::Serialize;

use super::ProviderKind;
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
    /// Which provider sent it.
    pub provider: ProviderKind,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{worldpay, worldpay_xml};

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
