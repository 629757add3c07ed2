//! HTTP sinks: a POST signed per the Standard Webhooks specification.
//!
//! Headers: `webhook-id` (stable per action, see [`super::webhook_id`]), `webhook-timestamp`
//! (unix seconds of this attempt) and `webhook-signature`: for each configured secret, `v1,`
//! and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under the secret's
//! decoded key, space-separated. Any 2xx answer is a delivery; every other status, a refused or
//! reset connection and a timeout are retried. A redirect is not followed (it is an answer
//! that is not 2xx).

use std::time::Duration;

use base64::Engine;

use super::config::SigningKey;
use super::Outcome;

/// Longest answer body read back, for the attempt's detail.
const MAX_ANSWER: usize = 256;

/// The HTTP client of one sink.
#[derive(Debug)]
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    /// A client bounded by `timeout` per attempt, trusting the web PKI plus `extra_roots`.
    pub fn new(extra_roots: Option<&[u8]>, timeout: Duration) -> Result<Sender, String> {
        // Plain http is allowed: the config accepts it only to a loopback address.
        let client = crate::provider::http_client(extra_roots, timeout, false)?;
        Ok(Sender { client })
    }

    /// Sends one delivery.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        url: &url::Url,
        secrets: &[SigningKey],
        id: &str,
        timestamp: i64,
        body: &[u8],
        sink: &str,
        attempt: u32,
    ) -> Outcome {
        let request = self
            .client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature(secrets, id, timestamp, body))
            .header("reconciled-sink", sink)
            .header("reconciled-attempt", attempt.to_string())
            .body(body.to_vec());
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let why = if e.is_timeout() { "timed out" } else { "request failed" };
                return Outcome {
                    result: Err(format!("{why}: {}", crate::error::error_chain(&e))),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Outcome { result: Ok(()), retry_after: None };
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, crate::time::now_ms()));
        let mut answer = response.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        answer.truncate(MAX_ANSWER);
        let answer = String::from_utf8_lossy(&answer);
        let answer = answer.trim();
        let detail = if answer.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {answer}")
        };
        Outcome { result: Err(detail), retry_after }
    }
}

/// The `webhook-signature` header: one `v1,<base64>` per secret.
pub fn signature(secrets: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    secrets
        .iter()
        .map(|s| {
            let mac = crate::provider::hmac::Keyed::new(
                &s.key,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
            );
            format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `Retry-After` value: delay-seconds, or an HTTP-date (RFC 9110), as a delay from `now_ms`.
pub fn retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp().as_millisecond();
    Some(Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// The Standard Webhooks reference example: secret, id, timestamp and payload from the
    /// specification's libraries' test vectors, and the signature they expect.
    #[test]
    fn signatures_match_the_reference_implementations() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let secret =
            SigningKey { key, secret: Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") };
        let sig = signature(
            std::slice::from_ref(&secret),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let two = signature(&[secret.clone(), secret], "msg_1", 1, b"{}");
        assert_eq!(two.split(' ').count(), 2);
        assert!(two.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("120", 0), Some(Duration::from_secs(120)));
        let now = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:48:37 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
    }
}
