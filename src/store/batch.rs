//! The decision batch: how the worker's decisions reach the store, the same for every backend.
//!
//! The backend owns the transaction. For each claimed row it asks the worker's [`Planner`]
//! what the row needs read ([`FactsQuery`]: the payment's state, the payments that paid its
//! order, an earlier unfinished row of the same payment, whether we asked for the refund),
//! reads that inside the transaction, asks the planner for the [`Plan`] (a pure function of
//! the row and those facts), and writes it. So the decision sees exactly what the transaction
//! sees, and the reconciliation code holds no SQL.

use crate::domain::{Action, ActionKind, InboxStatus, PaymentState};
use crate::provider::ProviderKind;

use super::Claimed;

/// What a row's plan needs read from the store first.
#[derive(Debug, Clone, Copy)]
pub struct FactsQuery<'a> {
    /// The notification's provider.
    pub provider: ProviderKind,
    /// Its payment (the payment id, or the event id when it names no payment).
    pub payment_key: &'a str,
    /// The order it was matched to, if any: for the payments that paid that order.
    pub order_id: Option<&'a str>,
    /// The idempotency key of the API request that caused it: one of our own refunds?
    pub request_key: Option<&'a str>,
}

/// What the store holds about a row's payment and order, read inside the transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredFacts {
    /// An earlier row of the same payment still to be decided: `(id, next_attempt_at)`. When
    /// there is one, nothing else is read.
    pub blocker: Option<(i64, i64)>,
    /// The payment's known state.
    pub payment: Option<PaymentState>,
    /// The fulfilled, paid payments of the order: `(provider, payment id)` as stored.
    pub payers: Vec<(String, String)>,
    /// The request key is one of our own refunds (in the outbox, or spent by a pruned one).
    pub own_refund: bool,
}

/// The notification an action came from, for the outbox row and the payment's state.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Its provider.
    pub provider: ProviderKind,
    /// Its payment id, if it names one.
    pub payment_id: Option<&'a str>,
    /// Its event id.
    pub event_id: &'a str,
}

/// What to write for one row. What the decided case writes is borrowed from the prepared row
/// or moved from the decision: the hot path copies nothing.
#[derive(Debug, Clone)]
pub enum Write<'a> {
    /// Ends the row without a decision: `dead` (it cannot be read) or `rejected` (its
    /// provider refused to confirm it).
    Finish {
        /// `Dead` or `Rejected`.
        status: InboxStatus,
        /// What became of it, for people.
        outcome: Option<String>,
        /// The error that ended it.
        error: Option<String>,
    },
    /// A failed attempt, tried again at `next_attempt_at` (status `pending`).
    Retry {
        /// Failed attempts so far, this one included.
        attempts: u32,
        /// What went wrong.
        error: String,
        /// Its payment, if known: later rows of that payment wait behind it.
        payment_key: Option<String>,
        /// When to try again, unix ms.
        next_attempt_at: i64,
    },
    /// Attempts ran out: `dead`.
    GiveUp {
        /// Failed attempts, this one included.
        attempts: u32,
        /// The last error.
        error: String,
        /// Its payment, if known.
        payment_key: Option<String>,
    },
    /// Not decided now: `pending` behind an earlier row of its payment, or `parked` until
    /// its order is there.
    Wait {
        /// `Pending` or `Parked`.
        status: InboxStatus,
        /// Its payment.
        payment_key: String,
        /// Why, for people.
        note: String,
        /// When to try again, unix ms.
        next_attempt_at: i64,
    },
    /// Decided: the actions (those whose keys were never used), the payment's new state, and
    /// the row's final status, in the one transaction.
    Decided {
        /// `Done` or `Ignored`; or `Parked` with `until`: decided again then (a failed
        /// payment's notice to the customer held back).
        status: InboxStatus,
        /// When a `Parked` row is decided again (unix ms).
        until: Option<i64>,
        /// Why, for people.
        note: String,
        /// Its payment.
        payment_key: &'a str,
        /// The notification the actions come from.
        source: Source<'a>,
        /// Actions to write; one whose key is already in the outbox (or spent) is skipped.
        actions: Vec<Action>,
        /// The payment's new state, if it changes.
        payment: Option<PaymentState>,
    },
}

impl Write<'_> {
    /// What becomes of the row, for the metrics: its new status, or `retry` (a failed
    /// attempt) or `waiting` (behind an earlier row of its payment).
    pub fn outcome(&self) -> &'static str {
        match self {
            Write::Finish { status, .. } | Write::Decided { status, .. } => status.as_str(),
            Write::Retry { .. } => "retry",
            Write::GiveUp { .. } => "dead",
            Write::Wait { status: InboxStatus::Parked, .. } => "parked",
            Write::Wait { .. } => "waiting",
        }
    }
}

/// A row's plan: what to write, whether its provider confirmed it in this pass (recorded with
/// the row), and the decision to hand back to the caller.
#[derive(Debug)]
pub struct Plan<'a, D> {
    /// What to write.
    pub write: Write<'a>,
    /// Its provider confirmed it in this pass.
    pub confirmed: bool,
    /// The decision, for the caller (a replay prints it).
    pub decision: Option<D>,
}

/// What became of one row of a batch.
#[derive(Debug)]
pub struct Applied<D> {
    /// The planner's decision: none for a row that was skipped (someone else decided it).
    pub decision: Option<D>,
    /// The plan's actions, each with whether it was written now (false: its key was already
    /// used, in the outbox or by a pruned refund, so it was not written again).
    pub actions: Vec<(Action, bool)>,
    /// What became of the row ([`Write::outcome`]); `None` when nothing was written.
    pub outcome: Option<&'static str>,
}

impl<D> Applied<D> {
    /// Nothing decided, nothing written.
    pub fn nothing() -> Applied<D> {
        Applied { decision: None, actions: Vec::new(), outcome: None }
    }

    /// How many actions were written now.
    pub fn written(&self) -> usize {
        self.actions.iter().filter(|(_, written)| *written).count()
    }
}

/// The worker's side of a batch: pure functions of a row and what the store holds.
pub trait Planner<P>: Send + Sync + 'static {
    /// The decision a plan hands back.
    type Decision: Send + 'static;

    /// What the row needs read before it can be planned; `None`: nothing.
    fn query<'a>(&self, row: &'a Claimed, prepared: &'a P) -> Option<FactsQuery<'a>>;

    /// The row's plan, given what was read (`None` when nothing was asked), at `now` (unix ms).
    fn plan<'a>(
        &self,
        row: &'a Claimed,
        prepared: &'a P,
        facts: Option<StoredFacts>,
        now: i64,
    ) -> Plan<'a, Self::Decision>;

    /// What to write for a row whose own writes failed with a store error: try it again.
    fn store_error(&self, row: &Claimed, error: &str, now: i64) -> Write<'static>;

    /// The sinks a new live action of `kind` is delivered to: the store writes a delivery for
    /// each in the same transaction as the action.
    fn sinks(&self, _kind: ActionKind) -> &[std::sync::Arc<str>] {
        &[]
    }
}
