//! PayPal's REST API, the part reconciled asks: whether a stored webhook is genuine
//! (`POST /v1/notifications/verify-webhook-signature`), with an OAuth 2.0 client-credentials
//! token (`POST /v1/oauth2/token`).
//!
//! PayPal compares the `webhook_event` it is given with the event it sent, as text: a client
//! that parses the event and writes it out again (other key order, spacing or number
//! formatting) gets `FAILURE` for genuine deliveries. The request is therefore built by
//! concatenation, with the stored body's bytes spliced in as they are ([`verify_request`]).
//!
//! The token is cached until shortly before it expires; a `401` to the check drops it, and
//! the check is sent once more with a new one. After PayPal or the network failed, the checks
//! that were waiting their turn fail at once instead of each waiting out the same outage.

use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::future::BoxFuture;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::http::snippet;
use super::{ApiError, ApiSettings, Credentials, Http};
use crate::provider::paypal::{SignatureApi, StoredTransmission};
use crate::provider::Confirmation;
use crate::secret::Secret;

/// Where tokens come from.
const TOKEN_PATH: &str = "/v1/oauth2/token";
/// Where webhooks are checked.
const VERIFY_PATH: &str = "/v1/notifications/verify-webhook-signature";
/// A token is renewed this long before it expires (or at half its lifetime, if shorter).
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// How long one token or check request may take at most (less if `timeout_secs` says so).
const TIMEOUT: Duration = Duration::from_secs(10);
/// After PayPal or the network failed, checks that start within this long fail at once: the
/// worker's other rows waiting their turn do not each wait out the same outage. Shorter than
/// any retry of a row (`worker.retry_base`, at least 1 s by default), so a row's next try asks.
const OUTAGE_MEMORY: Duration = Duration::from_millis(500);

/// What PayPal said of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// `SUCCESS`: PayPal sent this event in this transmission to this webhook.
    Success,
    /// `FAILURE`: it did not (a forged or altered body, another webhook's transmission).
    Failure,
}

/// A PayPal API client for one endpoint. `Debug` shows neither the secret nor the token.
pub struct PaypalApi {
    http: Http,
    client_id: String,
    client_secret: Secret,
    /// The cached token; held while one is fetched, so one fetch serves every waiting check.
    token: Mutex<Option<Token>>,
    /// One check at a time (with its token fetch and its retry).
    turn: Mutex<()>,
    /// The last outage: when, and what it was.
    outage: std::sync::Mutex<Option<(Instant, String)>>,
}

impl std::fmt::Debug for PaypalApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaypalApi")
            .field("base_url", &self.http.base_url())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// An access token and when to stop using it.
struct Token {
    value: Secret,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    expires_in: u64,
}

#[derive(Deserialize)]
struct VerifyAnswer {
    verification_status: String,
}

impl PaypalApi {
    /// The client for a PayPal endpoint's `[endpoint.api]`.
    pub fn new(settings: &ApiSettings) -> Result<PaypalApi, String> {
        let Credentials::Paypal { client_id, client_secret } = &settings.credentials else {
            return Err("not a PayPal API".into());
        };
        Ok(PaypalApi {
            http: settings.http()?,
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            token: Mutex::new(None),
            turn: Mutex::new(()),
            outage: std::sync::Mutex::new(None),
        })
    }

    /// Asks PayPal whether `event` (the stored body, byte for byte) is what it sent in the
    /// transmission `t` to the webhook `webhook_id`.
    pub async fn verify_webhook_signature(
        &self,
        t: &StoredTransmission,
        webhook_id: &str,
        event: &[u8],
    ) -> Result<Verification, ApiError> {
        let _turn = self.turn.lock().await;
        if let Some(e) = self.recent_outage() {
            return Err(e);
        }
        let result = self.verify_now(t, webhook_id, event).await;
        if let Err(e) = &result {
            if e.is_transient() {
                *lock(&self.outage) = Some((Instant::now(), e.to_string()));
            }
        }
        result
    }

    async fn verify_now(
        &self,
        t: &StoredTransmission,
        webhook_id: &str,
        event: &[u8],
    ) -> Result<Verification, ApiError> {
        let body = bytes::Bytes::from(verify_request(t, webhook_id, event));
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let bearer = format!("Bearer {}", String::from_utf8_lossy(token.expose()));
            let answer = self
                .http
                .send(
                    |c, base| {
                        c.post(format!("{base}{VERIFY_PATH}"))
                            .timeout(TIMEOUT.min(self.http.timeout()))
                            .header(CONTENT_TYPE, "application/json")
                            .header(ACCEPT, "application/json")
                            .body(body.clone())
                    },
                    &bearer,
                )
                .await?;
            match answer.status {
                200 => return read_verification(&answer.body),
                // Expired early or revoked: a new token, once.
                401 if !retried => {
                    tracing::info!(api = %self.http.base_url(), "PayPal refused the access token (401); fetching a new one");
                    self.forget(&token).await;
                    retried = true;
                }
                status => return Err(refused(status, &answer.body, "the webhook check")),
            }
        }
    }

    /// The cached token, or a new one.
    async fn token(&self) -> Result<Secret, ApiError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.value.clone());
        }
        *cached = None;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.client_id,
            String::from_utf8_lossy(self.client_secret.expose())
        ));
        let fetched = Instant::now();
        let answer = self
            .http
            .send(
                |c, base| {
                    c.post(format!("{base}{TOKEN_PATH}"))
                        .timeout(TIMEOUT.min(self.http.timeout()))
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .header(ACCEPT, "application/json")
                        .body("grant_type=client_credentials")
                },
                &format!("Basic {basic}"),
            )
            .await?;
        if answer.status != 200 {
            return Err(refused(answer.status, &answer.body, "the token request"));
        }
        // Read without naming the token in any error.
        let token: TokenAnswer = serde_json::from_slice(&answer.body).map_err(|_| {
            ApiError::Malformed("PayPal's token answer has no access_token and expires_in".into())
        })?;
        if token.access_token.is_empty()
            || token.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(ApiError::Malformed("PayPal's token answer holds no bearer token".into()));
        }
        // PayPal's last about nine hours; a day at most is believed.
        let lifetime = Duration::from_secs(token.expires_in.min(86_400));
        let renew_at = fetched + lifetime - RENEW_BEFORE.min(lifetime / 2);
        let value = Secret::new(token.access_token);
        tracing::debug!(api = %self.http.base_url(), expires_in = token.expires_in, "PayPal access token fetched");
        *cached = Some(Token { value: value.clone(), renew_at });
        Ok(value)
    }

    /// Drops `token` from the cache, unless another check has replaced it already.
    async fn forget(&self, token: &Secret) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == *token) {
            *cached = None;
        }
    }

    /// The outage met moments ago, if any.
    fn recent_outage(&self) -> Option<ApiError> {
        let outage = lock(&self.outage);
        let (at, why) = outage.as_ref()?;
        (at.elapsed() < OUTAGE_MEMORY)
            .then(|| ApiError::Unavailable(format!("{why} (moments ago; not asked again yet)")))
    }
}

impl SignatureApi for PaypalApi {
    fn verify<'a>(
        &'a self,
        t: &'a StoredTransmission,
        webhook_id: &'a str,
        event: &'a [u8],
    ) -> BoxFuture<'a, Confirmation> {
        Box::pin(async move {
            match self.verify_webhook_signature(t, webhook_id, event).await {
                Ok(Verification::Success) => Confirmation::Confirmed,
                Ok(Verification::Failure) => Confirmation::Refused(
                    "PayPal's API answered FAILURE to verify-webhook-signature: not sent by PayPal \
                     to this webhook, or altered"
                        .into(),
                ),
                Err(e) => Confirmation::Failed {
                    message: format!("PayPal's webhook signature check failed: {e}"),
                    transient: e.is_transient(),
                },
            }
        })
    }
}

/// The body of a `verify-webhook-signature` request: the transmission's fields and the webhook
/// id, each a JSON string, and `webhook_event` the stored body's own bytes (without outer
/// whitespace), never parsed and written out again.
pub fn verify_request(t: &StoredTransmission, webhook_id: &str, event: &[u8]) -> Vec<u8> {
    let event = trim_json_whitespace(event);
    let fields = [
        ("auth_algo", t.auth_algo.as_str()),
        ("cert_url", t.cert_url.as_str()),
        ("transmission_id", t.transmission_id.as_str()),
        ("transmission_sig", t.transmission_sig.as_str()),
        ("transmission_time", t.transmission_time.as_str()),
        ("webhook_id", webhook_id),
    ];
    let mut out = Vec::with_capacity(event.len() + 1024);
    out.push(b'{');
    for (name, value) in fields {
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(json_string(value).as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"webhook_event\":");
    out.extend_from_slice(event);
    out.push(b'}');
    out
}

/// `s` as a JSON string, escaped.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serialises")
}

/// `bytes` without the whitespace JSON allows around a value (space, tab, LF, CR).
fn trim_json_whitespace(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Reads `{"verification_status": "SUCCESS" | "FAILURE"}`.
fn read_verification(body: &[u8]) -> Result<Verification, ApiError> {
    let answer: VerifyAnswer = serde_json::from_slice(body)
        .map_err(|_| ApiError::Malformed(format!("PayPal's check answered {}", snippet(body))))?;
    match answer.verification_status.as_str() {
        "SUCCESS" => Ok(Verification::Success),
        "FAILURE" => Ok(Verification::Failure),
        other => Err(ApiError::Malformed(format!(
            "PayPal's check answered verification_status \"{}\"",
            snippet(other.as_bytes())
        ))),
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    /// REST errors: `VALIDATION_ERROR`, `NOT_AUTHORIZED`, …
    name: Option<String>,
    message: Option<String>,
    debug_id: Option<String>,
    /// OAuth errors: `invalid_client`, `invalid_token`, …
    error: Option<String>,
    error_description: Option<String>,
}

/// A 4xx answer as PayPal describes it: a REST error (`name`, `message`, `debug_id`) or an
/// OAuth one (`error`, `error_description`).
fn refused(status: u16, body: &[u8], what: &str) -> ApiError {
    let hint = match status {
        401 => " (check client_id and client_secret_file)",
        403 => " (the REST app may lack webhook permissions)",
        _ => "",
    };
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if e.name.is_some() || e.error.is_some() => {
            let code = e.name.or(e.error);
            let message = e.message.or(e.error_description).unwrap_or_else(|| "no message".into());
            let debug = e.debug_id.map(|d| format!(", debug id {d}")).unwrap_or_default();
            ApiError::Refused {
                status,
                message: format!(
                    "PayPal answered {status} to {what}: {} {message}{debug}{hint}",
                    code.as_deref().unwrap_or_default()
                ),
                code,
            }
        }
        _ => ApiError::Refused {
            status,
            code: None,
            message: format!("PayPal answered {status} to {what}: {}{hint}", snippet(body)),
        },
    }
}

fn lock<V>(m: &std::sync::Mutex<V>) -> std::sync::MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmission() -> StoredTransmission {
        StoredTransmission {
            auth_algo: "SHA256withRSA".into(),
            cert_url: "https://api.paypal.com/v1/notifications/certs/CERT-1".into(),
            transmission_id: "69cd13f0-d67a-11e5-baa3-778b53f4ae55".into(),
            transmission_sig: "lmI95Jx3Y9nhR5SJ+/==".into(),
            transmission_time: "2026-11-20T10:14:06Z".into(),
        }
    }

    /// PayPal compares the event as text: the stored bytes go out exactly as they are, with
    /// their spacing, key order, number formats and escapes, however unusual.
    #[test]
    fn the_event_is_spliced_in_byte_for_byte() {
        let event = b"{ \"id\" :\"WH-1\",\n\t\"event_type\":\"PAYMENT.CAPTURE.COMPLETED\",  \"amount\": 1.50E+1, \"z\":-0.0, \"a\": \"caf\\u00e9 \\/ \xc3\xa9\",\"resource\":{ }  }";
        let mut stored = b"\r\n  ".to_vec();
        stored.extend_from_slice(event);
        stored.extend_from_slice(b"\n\n");
        let body = verify_request(&transmission(), "1JE4291016473214C", &stored);
        let tail = [b"\"webhook_event\":".as_slice(), event, b"}"].concat();
        assert!(body.ends_with(&tail), "{}", String::from_utf8_lossy(&body));
        // Exactly once, and the whole request is JSON whose event is that text.
        assert_eq!(body.windows(event.len()).filter(|w| *w == event).count(), 1);
        #[derive(Deserialize)]
        struct Request<'a> {
            auth_algo: String,
            transmission_sig: String,
            webhook_id: String,
            #[serde(borrow)]
            webhook_event: &'a serde_json::value::RawValue,
        }
        let parsed: Request<'_> = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.webhook_event.get().as_bytes(), event);
        assert_eq!(parsed.auth_algo, "SHA256withRSA");
        assert_eq!(parsed.transmission_sig, "lmI95Jx3Y9nhR5SJ+/==");
        assert_eq!(parsed.webhook_id, "1JE4291016473214C");
    }

    #[test]
    fn header_values_are_escaped_as_json_strings() {
        let mut t = transmission();
        t.transmission_id = "a\"b\\c\u{1}".into();
        let body = verify_request(&t, "W\"", b"{}");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["transmission_id"], "a\"b\\c\u{1}");
        assert_eq!(value["webhook_id"], "W\"");
        assert_eq!(value["webhook_event"], serde_json::json!({}));
    }

    #[test]
    fn answers_are_read_strictly_and_errors_say_what_paypal_said() {
        assert_eq!(
            read_verification(br#"{"verification_status":"SUCCESS"}"#).unwrap(),
            Verification::Success
        );
        assert_eq!(
            read_verification(br#"{"verification_status":"FAILURE"}"#).unwrap(),
            Verification::Failure
        );
        for body in [&br#"{"verification_status":"MAYBE"}"#[..], b"<html>", b"{}"] {
            assert!(matches!(read_verification(body), Err(ApiError::Malformed(_))));
        }
        let e = refused(
            403,
            br#"{"name":"NOT_AUTHORIZED","message":"Authorization failed due to insufficient permissions.","debug_id":"abc123"}"#,
            "the webhook check",
        );
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(text.contains("403") && text.contains("NOT_AUTHORIZED"), "{text}");
        assert!(text.contains("debug id abc123") && text.contains("webhook permissions"), "{text}");
        let e = refused(
            401,
            br#"{"error":"invalid_client","error_description":"Client Authentication failed"}"#,
            "the token request",
        );
        assert!(e.to_string().contains("invalid_client Client Authentication failed"), "{e}");
    }

    #[test]
    fn debug_shows_neither_secret_nor_token() {
        let settings = ApiSettings {
            base_url: "https://127.0.0.1:9".into(),
            tls_ca: None,
            credentials: Credentials::Paypal {
                client_id: "AeClient".into(),
                client_secret: Secret::new("EVerySecret"),
            },
            backfill_every: None,
            timeout: Duration::from_secs(5),
        };
        let api = PaypalApi::new(&settings).unwrap();
        *api.token.try_lock().unwrap() = Some(Token {
            value: Secret::new("A21AAToken"),
            renew_at: Instant::now() + Duration::from_secs(60),
        });
        let debug = format!("{api:?}");
        assert!(debug.contains("AeClient"), "{debug}");
        assert!(!debug.contains("EVerySecret") && !debug.contains("A21AAToken"), "{debug}");
    }
}
