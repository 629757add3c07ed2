//! The nouns the decision table and the store share: where an inbox row and a payment stand,
//! and the actions the outbox holds. Plain data: the decision table produces them, the store
//! keeps them.

use serde::Serialize;

use crate::money::Money;

/// How an inbox row came: pushed by the provider, or fetched by asking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The provider posted it to an endpoint.
    Webhook,
    /// Listed from the provider's API by a backfill (an event the webhook never brought).
    Backfill,
    /// The provider's answer to an inquiry about a payment left open.
    Inquiry,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 3] = [Source::Webhook, Source::Backfill, Source::Inquiry];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Backfill => "backfill",
            Source::Inquiry => "inquiry",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|source| source.as_str() == s)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where an inbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InboxStatus {
    /// Stored, to be decided (or waiting to be tried again).
    Pending,
    /// Claimed under a lease by an earlier version that stopped mid-batch.
    Processing,
    /// Its order is not there yet: tried again later, for `policy.unmatched_retry_for`.
    Parked,
    /// Decided (possibly with no action).
    Done,
    /// Nothing to reconcile.
    Ignored,
    /// Given up on: it could not be read, or its attempts ran out. A person must look.
    Dead,
    /// Its provider refused to confirm it (PayPal answered INVALID to the IPN postback).
    Rejected,
}

impl InboxStatus {
    /// Every status.
    pub const ALL: [InboxStatus; 7] = [
        InboxStatus::Pending,
        InboxStatus::Processing,
        InboxStatus::Parked,
        InboxStatus::Done,
        InboxStatus::Ignored,
        InboxStatus::Dead,
        InboxStatus::Rejected,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InboxStatus::Pending => "pending",
            InboxStatus::Processing => "processing",
            InboxStatus::Parked => "parked",
            InboxStatus::Done => "done",
            InboxStatus::Ignored => "ignored",
            InboxStatus::Dead => "dead",
            InboxStatus::Rejected => "rejected",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<InboxStatus> {
        InboxStatus::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Whether the worker has yet to finish with the row.
    pub fn is_unfinished(self) -> bool {
        matches!(self, InboxStatus::Pending | InboxStatus::Parked | InboxStatus::Processing)
    }
}

impl std::fmt::Display for InboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a payment stands, as far as its notifications tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Processing.
    Pending,
    /// Authorized, not captured.
    Authorized,
    /// Captured.
    Succeeded,
    /// Failed or declined.
    Failed,
    /// Canceled or expired.
    Canceled,
}

impl PaymentStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Canceled => "canceled",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<PaymentStatus> {
        Some(match s {
            "pending" => PaymentStatus::Pending,
            "authorized" => PaymentStatus::Authorized,
            "succeeded" => PaymentStatus::Succeeded,
            "failed" => PaymentStatus::Failed,
            "canceled" => PaymentStatus::Canceled,
            _ => return None,
        })
    }
}

/// What we know about one payment (one row of `payments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentState {
    /// The latest meaningful status.
    pub status: PaymentStatus,
    /// It succeeded at some point: later failures and pendings about it are stale.
    pub ever_succeeded: bool,
    /// The order it was matched to.
    pub order_id: Option<String>,
    /// We emitted `fulfil` for it: it is the payment that paid its order.
    pub fulfilled: bool,
}

/// The four action kinds of the outbox.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Ship the order / mark it paid.
    Fulfil,
    /// Give money back.
    Refund,
    /// Tell the customer (`template` says what).
    NotifyCustomer,
    /// An admin must look.
    Review,
}

impl ActionKind {
    /// Every kind.
    pub const ALL: [ActionKind; 4] =
        [ActionKind::Fulfil, ActionKind::Refund, ActionKind::NotifyCustomer, ActionKind::Review];

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<ActionKind> {
        ActionKind::ALL.into_iter().find(|kind| kind.as_str() == s)
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Fulfil => "fulfil",
            ActionKind::Refund => "refund",
            ActionKind::NotifyCustomer => "notify_customer",
            ActionKind::Review => "review",
        }
    }
}

/// One action to write to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// What to do.
    pub kind: ActionKind,
    /// For whom.
    pub order_id: Option<String>,
    /// How much (refunds: the amount to refund; fulfil: the amount paid).
    pub amount: Option<Money>,
    /// Why, for people.
    pub reason: String,
    /// For `notify_customer`: which message.
    pub template: Option<&'static str>,
    /// Where to send it.
    pub customer_email: Option<String>,
    /// Unique per logical action: the outbox refuses a second row with it.
    pub idempotency_key: String,
    /// The key this action was written under before keys named the object it is about (a
    /// review keyed by its event, now by its refund, dispute or payment): an outbox that holds
    /// it already has this action.
    pub earlier_key: Option<String>,
    /// Decided in shadow mode (`policy.mode = "shadow"`): recorded for comparison, never
    /// carried out. Its key is the live key with [`SHADOW_KEY_PREFIX`] in front.
    pub shadow: bool,
}

/// What a shadow action's idempotency key starts with: it never equals a live action's key.
pub const SHADOW_KEY_PREFIX: &str = "shadow:";

impl Action {
    /// The same action, decided in shadow mode.
    pub fn into_shadow(mut self) -> Action {
        if !self.shadow {
            self.idempotency_key.insert_str(0, SHADOW_KEY_PREFIX);
            if let Some(earlier) = &mut self.earlier_key {
                earlier.insert_str(0, SHADOW_KEY_PREFIX);
            }
            self.shadow = true;
        }
        self
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_statuses_read_back_their_stored_names() {
        for status in InboxStatus::ALL {
            assert_eq!(InboxStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(InboxStatus::parse("finished"), None);
        // Tables pad them like strings.
        assert_eq!(format!("[{:<8}]", InboxStatus::Done), "[done    ]");
        assert_eq!(format!("[{:<8}]", ActionKind::Refund), "[refund  ]");
    }
}
