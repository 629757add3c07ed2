//! Provider adapters: verify a notification's raw bytes and identify it for the inbox.
//!
//! Each provider lives in one file with the same small surface (`verify`, `identify`); the
//! dispatch on [`ProviderKind`] is here. Nothing is parsed before its signature checks out.

pub mod stripe;

use hyper::HeaderMap;

use crate::config::{Endpoint, ProviderKind};

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
/// holds a secret.
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
    /// The signature is good but the body is not a notification we understand.
    #[error("malformed body: {0}")]
    MalformedBody(String),
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
        }
    }
}

/// Verifies a request for `endpoint` and identifies it. `now` is unix seconds.
pub fn accept(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Accepted, Rejection> {
    match endpoint.provider {
        ProviderKind::Stripe => stripe::accept(endpoint, headers, body, now),
    }
}

/// Serialises the named headers that are present into a JSON object (lower-case names).
pub(crate) fn keep_headers(headers: &HeaderMap, names: &[&'static str]) -> String {
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
