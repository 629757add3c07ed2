//! `[policy]` and `[worker]`: the choices the decision table leaves to the shop, and the
//! worker's retries and batches.

use std::time::Duration;

/// `[policy]`: the choices the decision table leaves to the shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A payment smaller than the order (the cart grew after checkout).
    pub on_underpaid: RefundOrReview,
    /// A payment larger than the order: fulfil and refund the difference, or review.
    pub on_overpaid: OverpaidPolicy,
    /// A payment in another currency than the order's.
    pub on_currency_mismatch: RefundOrReview,
    /// A payment for an order that was cancelled.
    pub on_paid_after_cancel: RefundOrReview,
    /// Fulfil on capture (default) or already on authorization.
    pub fulfil_on: FulfilOn,
    /// How long a notification whose order is not found keeps being retried.
    pub unmatched_retry_for: Duration,
    /// How long after a failed or cancelled payment its notice to the customer waits, in case
    /// the customer pays another way meanwhile (zero: at once).
    pub failure_notice_delay: Duration,
    /// A payment still pending (processing) this long after its last notification gets a
    /// review.
    pub pending_review_after: Duration,
    /// A payment authorized and not captured this long after its last notification gets a
    /// review (before most card authorizations lapse).
    pub authorization_review_after: Duration,
    /// Live (actions are for carrying out) or shadow (decided and recorded, never carried out).
    pub mode: DecisionMode,
    /// A payment still open (pending, or authorized and not captured) this long after its
    /// last notification is looked up with its provider, when its endpoint has API access;
    /// then again after each such stretch, at most 24 times (`crate::ask::inquire`).
    pub inquire_after: Duration,
}

/// `policy.mode`: whether decided actions are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionMode {
    /// Actions are written for the shop to carry out.
    #[default]
    Live,
    /// Every decision is made and written as usual, but each action is marked shadow: no
    /// consumer or delivery carries it out, and its idempotency key differs from the live one.
    /// For running beside the shop's old integration and comparing before going live.
    Shadow,
}

/// Refund the payment, or leave it to an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundOrReview {
    /// Emit `refund` + `notify_customer`.
    Refund,
    /// Emit `review`.
    Review,
}

/// What to do with an overpayment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverpaidPolicy {
    /// Fulfil and refund the difference.
    RefundDifference,
    /// Emit `review`.
    Review,
}

/// When a payment is good enough to fulfil.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FulfilOn {
    /// When the money is captured (`succeeded`).
    Captured,
    /// Already when it is authorized.
    Authorized,
}

impl std::fmt::Display for RefundOrReview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            RefundOrReview::Refund => "refund",
            RefundOrReview::Review => "review",
        })
    }
}

impl std::fmt::Display for OverpaidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            OverpaidPolicy::RefundDifference => "refund the difference",
            OverpaidPolicy::Review => "review",
        })
    }
}

impl std::fmt::Display for FulfilOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            FulfilOn::Captured => "capture",
            FulfilOn::Authorized => "authorization",
        })
    }
}

impl std::fmt::Display for DecisionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            DecisionMode::Live => "live",
            DecisionMode::Shadow => "shadow (actions recorded, none carried out)",
        })
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            on_underpaid: RefundOrReview::Refund,
            on_overpaid: OverpaidPolicy::RefundDifference,
            on_currency_mismatch: RefundOrReview::Refund,
            on_paid_after_cancel: RefundOrReview::Refund,
            fulfil_on: FulfilOn::Captured,
            unmatched_retry_for: Duration::from_secs(30 * 60),
            failure_notice_delay: Duration::from_secs(10 * 60),
            pending_review_after: Duration::from_secs(7 * 24 * 3600),
            authorization_review_after: Duration::from_secs(6 * 24 * 3600),
            mode: DecisionMode::Live,
            inquire_after: Duration::from_secs(3600),
        }
    }
}

/// `[worker]`: retries and batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Rows left `processing` by an earlier version (which claimed under a lease) are taken
    /// again after this; the current worker claims in memory and never leaves such rows.
    pub lease: Duration,
    /// Attempts before a row that keeps failing is marked `dead`.
    pub max_attempts: u32,
    /// First retry delay; it doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Rows claimed per pass.
    pub batch: usize,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            lease: Duration::from_secs(60),
            max_attempts: 20,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            batch: 256,
        }
    }
}
