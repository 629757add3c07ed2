//! Deliveries stored unverified and checked by PayPal's API before they are decided
//! (`verify = "api"`, and `verify = "certs_then_api"` when no certificate is to be had).
//!
//! PayPal's `verify-webhook-signature` compares the event it is given with the event PayPal
//! actually sent in that transmission, so it catches what the offline check cannot: another
//! body made to have a genuine delivery's CRC-32. The request is made by the API client
//! (`crate::ask::paypal`, which implements [`SignatureApi`]); this module decides which rows
//! need it, keeps what it needs, and turns a row into its arguments.
//!
//! A row stored unverified is the one that keeps `PAYPAL-TRANSMISSION-SIG` with its headers
//! ([`KEPT_UNVERIFIED`]); a row verified offline never does ([`super::KEPT_HEADERS`]). So
//! whether a row still needs PayPal's word is read from the row itself, whatever the endpoint's
//! `verify` says now: a row stored under `api` is never decided unchecked after the endpoint is
//! switched back to `certs`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use hyper::HeaderMap;

use super::{CertSource, Settings, Verify};
use super::{AUTH_ALGO, CERT_URL, TRANSMISSION_ID, TRANSMISSION_SIG, TRANSMISSION_TIME};
use crate::provider::{keep_headers, Accepted, Confirmation, Rejection};

/// Headers kept with a row stored unverified: everything PayPal's API needs to check it, the
/// signature included.
///
/// Keeping the signature is safe for these rows, unlike for rows verified offline: such a row
/// is decided only once PayPal's API has compared the stored body with the event PayPal
/// actually sent, so a signature read from the store and sent again with a forged body of the
/// same CRC-32 gets `FAILURE`, and its row ends `rejected`. (The offline check of a `certs`
/// or `certs_then_api` endpoint cannot tell such a forgery, whoever holds a genuine
/// delivery's headers; that is the weakness only `verify = "api"` removes.)
pub const KEPT_UNVERIFIED: &[&str] =
    &[TRANSMISSION_ID, TRANSMISSION_TIME, TRANSMISSION_SIG, CERT_URL, AUTH_ALGO, "content-type"];

/// Whether a stored PayPal row was stored unverified (its kept headers hold the transmission
/// signature), so that PayPal's API must check it before it is decided.
pub fn stored_unverified(headers_json: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(headers_json)
        .is_ok_and(|kept| kept.contains_key(TRANSMISSION_SIG))
}

/// The transmission headers kept with a row stored unverified, as sent (outer spaces aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTransmission {
    /// `PAYPAL-AUTH-ALGO`.
    pub auth_algo: String,
    /// `PAYPAL-CERT-URL`.
    pub cert_url: String,
    /// `PAYPAL-TRANSMISSION-ID`.
    pub transmission_id: String,
    /// `PAYPAL-TRANSMISSION-SIG`, base64.
    pub transmission_sig: String,
    /// `PAYPAL-TRANSMISSION-TIME`.
    pub transmission_time: String,
}

impl StoredTransmission {
    /// Reads the kept headers of a row stored unverified.
    pub fn read(headers_json: &str) -> Result<StoredTransmission, String> {
        let kept: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(headers_json)
                .map_err(|e| format!("the kept headers are not a JSON object: {e}"))?;
        let get = |name: &str| {
            kept.get(name)
                .and_then(|v| v.as_str())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("the kept headers have no {name}"))
        };
        Ok(StoredTransmission {
            auth_algo: get(AUTH_ALGO)?,
            cert_url: get(CERT_URL)?,
            transmission_id: get(TRANSMISSION_ID)?,
            transmission_sig: get(TRANSMISSION_SIG)?,
            transmission_time: get(TRANSMISSION_TIME)?,
        })
    }
}

/// PayPal's webhook-signature check, as the provider layer sees it: implemented by the API
/// client (`crate::ask::paypal::PaypalApi`), which the daemon builds from an endpoint's
/// `[endpoint.api]`.
pub trait SignatureApi: Send + Sync + std::fmt::Debug {
    /// Asks PayPal whether `event` (a stored body, byte for byte) is what it sent in the
    /// transmission `t` to the webhook `webhook_id`: `SUCCESS` confirms it, `FAILURE` refuses
    /// it; no answer is a failure, transient when PayPal or the network is down.
    fn verify<'a>(
        &'a self,
        t: &'a StoredTransmission,
        webhook_id: &'a str,
        event: &'a [u8],
    ) -> BoxFuture<'a, Confirmation>;
}

/// A PayPal webhook endpoint at run time: its certificates, and PayPal's API when the
/// endpoint has an `[endpoint.api]`.
#[derive(Debug)]
pub struct Webhooks {
    certs: CertSource,
    api: Option<Arc<dyn SignatureApi>>,
}

impl Webhooks {
    /// The runtime for a `paypal` endpoint. `api` is required when `verify` asks PayPal's API
    /// (the configuration's checks make sure there is one).
    pub fn new(
        settings: &Settings,
        api: Option<Arc<dyn SignatureApi>>,
    ) -> Result<Webhooks, String> {
        if settings.verify != Verify::Certs && api.is_none() {
            return Err(format!(
                "verify = \"{}\" needs PayPal's API ([endpoint.api])",
                settings.verify.as_str()
            ));
        }
        Ok(Webhooks { certs: CertSource::new(settings)?, api })
    }

    /// The endpoint's settings.
    pub fn settings(&self) -> &Settings {
        self.certs.settings()
    }

    /// Verifies (or, as `verify` says, only checks the form of) and identifies a request.
    pub async fn accept(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Accepted, Rejection> {
        self.certs.accept(headers, body, now).await
    }

    /// Has PayPal's API check a row stored unverified; any other row is confirmed at once (it
    /// was verified when it arrived).
    pub async fn confirm(&self, headers_json: &str, body: &[u8]) -> Confirmation {
        if !stored_unverified(headers_json) {
            return Confirmation::Confirmed;
        }
        let t = match StoredTransmission::read(headers_json) {
            Ok(t) => t,
            Err(why) => {
                return Confirmation::Failed {
                    message: format!("cannot ask PayPal's API: {why}"),
                    transient: false,
                }
            }
        };
        match &self.api {
            Some(api) => api.verify(&t, &self.settings().webhook_id, body).await,
            None => Confirmation::Failed {
                message: "stored unverified, but the endpoint has no [endpoint.api] to ask PayPal's API with"
                    .into(),
                transient: false,
            },
        }
    }
}

/// What a delivery stored unverified is stored as: its headers with the signature, and an
/// inbox key of its event id and a digest of its bytes. Like an IPN message, it must not claim
/// the event id alone: a forgery sent first with a real event id would make PayPal's genuine
/// delivery look like a duplicate, and be dropped. Byte-identical resends still collapse into
/// one row, and two verified rows of one event are decided as one (decisions are keyed by the
/// event id).
pub(super) fn unverified(
    headers: &HeaderMap,
    body: &[u8],
    id: &str,
    event_type: String,
) -> Accepted {
    Accepted {
        dedup_key: crate::provider::paypal_ipn::inbox_key(id, body),
        event_type: Some(event_type),
        headers_json: keep_headers(headers, KEPT_UNVERIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_that_kept_the_signature_ask_the_api() {
        let verified = r#"{"paypal-transmission-id":"t","paypal-cert-url":"u"}"#;
        let unverified = r#"{"paypal-transmission-id":" t-1 ","paypal-transmission-time":"2026-11-22T10:00:00Z","paypal-transmission-sig":"c2ln","paypal-cert-url":"https://api.paypal.com/v1/notifications/certs/C","paypal-auth-algo":"SHA256withRSA"}"#;
        assert!(!stored_unverified(verified));
        assert!(!stored_unverified("not json"));
        assert!(stored_unverified(unverified));
        let t = StoredTransmission::read(unverified).unwrap();
        assert_eq!((t.transmission_id.as_str(), t.transmission_sig.as_str()), ("t-1", "c2ln"));
        let missing = unverified.replace("\"paypal-auth-algo\"", "\"x\"");
        assert!(StoredTransmission::read(&missing).unwrap_err().contains("paypal-auth-algo"));
    }
}
