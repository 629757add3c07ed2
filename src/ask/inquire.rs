//! Inquiry: a payment left open (pending, or authorized and never captured) for longer than
//! `policy.inquire_after` is looked up with its provider, on an endpoint with API access.
//!
//! Stripe: `GET /v1/payment_intents/{id}`. When its status moved from ours, the answer is
//! stored as an inbox row of source `inquiry`: the PaymentIntent exactly as Stripe sent it,
//! in an event envelope of the type the move corresponds to (`payment_intent.succeeded`, …),
//! so the same code decides it. Its dedup key is `inquiry:<payment id>:<status>:<amount>`:
//! the same answer is stored once, a changed one is a new row. A payment is asked about again
//! after each further `inquire_after`, at most [`MAX_INQUIRIES`] times; an answer that shows
//! no move stores nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::stripe::StripeApi;
use super::ApiError;
use crate::domain::{PaymentStatus, Source};
use crate::provider::ProviderKind;
use crate::store::{NewRow, OpenPayment, Store, StoreError};

/// The most inquiries about one payment.
pub const MAX_INQUIRIES: u32 = 24;
/// Payments asked about per pass.
const PER_PASS: usize = 50;

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Payments asked about.
    pub asked: u64,
    /// Answers stored as new inbox rows.
    pub stored: u64,
    /// Answers that showed no move, were stored already, or could not be used.
    pub unchanged: u64,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum InquiryError {
    /// The provider gave no answer now.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The daemon's inquiries: the Stripe API of each endpoint that has one.
#[derive(Debug)]
pub struct Inquirer {
    /// The store.
    pub store: Store,
    /// Each Stripe endpoint's API, by endpoint name.
    pub apis: HashMap<String, Arc<StripeApi>>,
    /// `policy.inquire_after`.
    pub after: Duration,
    /// The daemon's metrics (`reconciled_asked_total`), if any.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Inquirer {
    /// Asks about the payments due for an inquiry at `now_ms`.
    pub async fn pass(&self, now_ms: i64) -> Result<Summary, (InquiryError, Summary)> {
        let mut summary = Summary::default();
        match self.run(now_ms, &mut summary).await {
            Ok(()) => Ok(summary),
            Err(e) => Err((e, summary)),
        }
    }

    async fn run(&self, now_ms: i64, summary: &mut Summary) -> Result<(), InquiryError> {
        let before = now_ms - self.after.as_millis() as i64;
        let due = self
            .store
            .to_inquire(ProviderKind::Stripe, "pi_", before, MAX_INQUIRIES, PER_PASS)
            .await?;
        for payment in due {
            let Some(api) = self.apis.get(&payment.endpoint) else {
                // Its endpoint has no API access (or is gone): nobody to ask.
                continue;
            };
            summary.asked += 1;
            let result = match api.payment_intent(&payment.payment_id).await {
                Ok(Some(raw)) => match answer_row(&payment, &raw, now_ms, api, &self.store) {
                    Ok(Some(row)) => {
                        let stored = self.store.insert(row).await?;
                        if stored.added {
                            tracing::info!(
                                payment = %payment.payment_id,
                                inbox_id = stored.id,
                                "inquiry: the provider's state moved; its answer is stored"
                            );
                            "stored"
                        } else {
                            "had"
                        }
                    }
                    Ok(None) => "had",
                    Err(why) => {
                        tracing::warn!(payment = %payment.payment_id, "inquiry: unreadable answer: {why}");
                        "failed"
                    }
                },
                Ok(None) => {
                    tracing::warn!(payment = %payment.payment_id, "inquiry: Stripe does not know this payment");
                    "failed"
                }
                Err(e) if e.is_transient() => {
                    if let Some(m) = &self.metrics {
                        m.asked(&payment.endpoint, "inquiry", "failed", 1);
                    }
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::warn!(payment = %payment.payment_id, error = %e, "inquiry refused");
                    "failed"
                }
            };
            match result {
                "stored" => summary.stored += 1,
                _ => summary.unchanged += 1,
            }
            if let Some(m) = &self.metrics {
                m.asked(&payment.endpoint, "inquiry", result, 1);
            }
            // Recorded after the answer is stored: a crash between the two asks again, and
            // the same answer is stored once.
            self.store.inquired(ProviderKind::Stripe, &payment.payment_id, now_ms).await?;
        }
        Ok(())
    }
}

/// The event type a PaymentIntent's status corresponds to, and the payment status it means.
fn moved_to(pi: &Value) -> Option<(&'static str, PaymentStatus, &'static str)> {
    let failed = pi.get("last_payment_error").is_some_and(|e| !e.is_null());
    Some(match pi.get("status")?.as_str()? {
        "succeeded" => ("payment_intent.succeeded", PaymentStatus::Succeeded, "amount_received"),
        "processing" => ("payment_intent.processing", PaymentStatus::Pending, "amount"),
        "requires_capture" => (
            "payment_intent.amount_capturable_updated",
            PaymentStatus::Authorized,
            "amount_capturable",
        ),
        "canceled" => ("payment_intent.canceled", PaymentStatus::Canceled, "amount"),
        "requires_payment_method" if failed => {
            ("payment_intent.payment_failed", PaymentStatus::Failed, "amount")
        }
        _ => return None,
    })
}

/// The inbox row for Stripe's answer about `payment`, if its state moved from ours.
pub fn answer_row(
    payment: &OpenPayment,
    raw: &[u8],
    now_ms: i64,
    api: &StripeApi,
    store: &Store,
) -> Result<Option<NewRow>, String> {
    let pi: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {e}"))?;
    if pi.get("object").and_then(Value::as_str) != Some("payment_intent")
        || pi.get("id").and_then(Value::as_str) != Some(payment.payment_id.as_str())
    {
        return Err("not the PaymentIntent asked for".into());
    }
    let Some((event_type, status, field)) = moved_to(&pi) else { return Ok(None) };
    if status == payment.status {
        return Ok(None);
    }
    let amount = pi.get(field).and_then(Value::as_i64).unwrap_or(0);
    let stripe_status = pi["status"].as_str().unwrap_or_default();
    let dedup_key = format!("inquiry:{}:{stripe_status}:{amount}", payment.payment_id);
    // Stripe's answer, byte for byte, in the envelope of the event it stands for.
    let mut body = Vec::with_capacity(raw.len() + 200);
    body.extend_from_slice(
        format!(
            "{{\"id\":{},\"object\":\"event\",\"type\":\"{event_type}\",\"created\":{},\"data\":{{\"object\":",
            serde_json::to_string(&dedup_key).unwrap_or_default(),
            now_ms / 1000
        )
        .as_bytes(),
    );
    body.extend_from_slice(trim(raw));
    body.extend_from_slice(b"}}");
    let payment_key = store.is_shared().then(|| payment.payment_id.clone());
    let body = bytes::Bytes::from(body);
    Ok(Some(NewRow {
        endpoint: Arc::from(payment.endpoint.as_str()),
        provider: ProviderKind::Stripe,
        dedup_key,
        event_type: Some(event_type.to_owned()),
        received_at_ms: now_ms,
        remote_addr: api.host().to_owned(),
        headers_json: "{}".into(),
        body_len: body.len(),
        body: crate::store::body::pack(&body),
        payment_key,
        source: Source::Inquiry,
    }))
}

fn trim(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(raw.len());
    let end = raw.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &raw[start..end]
}

/// The daemon's inquiry task: a pass every quarter of `inquire_after` (between a second and
/// a minute), until `shutdown`; `wake` is woken when a pass stored an answer.
pub async fn run(inquirer: Inquirer, wake: Arc<tokio::sync::Notify>, shutdown: CancellationToken) {
    let every = (inquirer.after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        let result = inquirer.pass(crate::time::now_ms()).await;
        let (Ok(summary) | Err((_, summary))) = &result;
        if summary.stored > 0 {
            wake.notify_one();
        }
        if let Err((e, _)) = result {
            tracing::warn!(
                error = %crate::error::error_chain(&e),
                "inquiries stopped for now; the next pass asks again"
            );
        }
    }
}
