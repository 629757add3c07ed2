//! The HTTP side of asking a provider: one request at a time per API, a `429` waited out as
//! its `Retry-After` says (with backoff when it says nothing), answers read up to a bound,
//! and errors that never hold a key or a token.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use tokio::sync::Mutex;

use super::ApiSettings;

/// The largest answer read: a page of 100 Stripe events is well under this.
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// How often a `429` is waited out before the request is given up.
const MAX_RATE_LIMITED: u32 = 5;
/// The longest wait for one `429`, whatever `Retry-After` says.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why a request to a provider's API got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The provider is not answering now (network, timeout, 5xx, rate limited too long):
    /// nothing is wrong with the request; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The provider refused the request (a 4xx): a wrong key, missing permissions, an id it
    /// does not know. Trying again will not help.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Stripe's `error.code` or PayPal's `name`/`error`, when given.
        code: Option<String>,
        /// What the provider said, for people.
        message: String,
    },
    /// The answer could not be read.
    #[error("{0}")]
    Malformed(String),
}

impl ApiError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ApiError::Unavailable(_))
    }
}

/// An answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, at most [`MAX_ANSWER_BYTES`].
    pub body: bytes::Bytes,
}

/// One provider API's client: its base URL and one request at a time.
#[derive(Debug)]
pub struct Http {
    client: reqwest::Client,
    base_url: String,
    /// `host:port` of `base_url`, for the inbox's `remote_addr` of what the API answers.
    host: String,
    timeout: Duration,
    /// Held for the whole of a request, waits for `429` included.
    turn: Mutex<()>,
}

impl Http {
    /// The client for `settings`.
    pub fn new(settings: &ApiSettings) -> Result<Http, String> {
        let client = crate::provider::http_client(
            settings.tls_ca.as_deref(),
            settings.timeout,
            settings.base_url.starts_with("https://"),
        )?;
        let host = url::Url::parse(&settings.base_url)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_else(|| settings.base_url.clone());
        Ok(Http {
            client,
            base_url: settings.base_url.clone(),
            host,
            timeout: settings.timeout,
            turn: Mutex::new(()),
        })
    }

    /// How long one request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The API's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The host the API is on, for the inbox's `remote_addr` of what it answers.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Sends the request `build` makes (again for each `429`), one at a time; any status is
    /// an answer, but a `429` is waited out and a `5xx` is [`ApiError::Unavailable`].
    /// `authorization` is sent marked sensitive, so no `Debug` of the request shows it.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
        authorization: &str,
    ) -> Result<Answer, ApiError> {
        let _turn = self.turn.lock().await;
        let mut auth = HeaderValue::from_str(authorization)
            .map_err(|_| ApiError::Malformed("the credentials are not a valid header".into()))?;
        auth.set_sensitive(true);
        let mut limited = 0;
        loop {
            let request = build(&self.client, &self.base_url).header(AUTHORIZATION, auth.clone());
            let response = request.send().await.map_err(|e| ApiError::Unavailable(describe(&e)))?;
            let status = response.status().as_u16();
            if status == 429 {
                limited += 1;
                if limited > MAX_RATE_LIMITED {
                    return Err(ApiError::Unavailable(format!(
                        "rate limited by {} {MAX_RATE_LIMITED} times in a row",
                        self.base_url
                    )));
                }
                let wait = retry_after(response.headers().get(RETRY_AFTER))
                    .unwrap_or(Duration::from_secs(1 << (limited - 1)))
                    .min(MAX_RETRY_AFTER);
                tracing::info!(
                    api = %self.base_url,
                    wait_ms = wait.as_millis() as u64,
                    "rate limited (429); waiting before asking again"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let body = read_limited(response).await?;
            if status >= 500 {
                return Err(ApiError::Unavailable(format!(
                    "{} answered {status}: {}",
                    self.base_url,
                    snippet(&body)
                )));
            }
            return Ok(Answer { status, body });
        }
    }
}

/// `Retry-After` as delta-seconds (what Stripe and PayPal send); an HTTP date is not used.
fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let secs: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// Reads an answer's body, refusing one larger than [`MAX_ANSWER_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<bytes::Bytes, ApiError> {
    if response.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(ApiError::Malformed(format!("answer larger than {MAX_ANSWER_BYTES} bytes")));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|e| ApiError::Unavailable(describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::Malformed(format!(
                "answer larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A reqwest error for people: what failed and why, without the request's headers.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    format!("{what}: {}", crate::error::error_chain(e))
}

/// The start of an answer, for an error message.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.chars().filter(|c| !c.is_control()).collect()
}
