//! The decision batch: how the worker's decisions reach the store, the same for every backend.
//!
//! The backend owns the transaction. For each claimed row it asks the worker's [`Planner`]
//! what the row needs read ([`FactsQuery`]: the payment's state, the payments that paid its
//! order, an earlier unfinished row of the same payment, whether we asked for the refund),
//! reads that inside the transaction, asks the planner for the [`Plan`] (a pure function of
//! the row and those facts), and writes it. So the decision sees exactly what the transaction
//! sees, and the reconciliation code holds no SQL.

use crate::domain::{Action, InboxStatus, PaymentState};
use crate::provider::ProviderKind;

use super::Claimed;

/// Who is applying a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The worker, on rows it claimed: a row whose status or attempts changed since it was
    /// read (someone else decided it) is skipped.
    Worker,
    /// `inbox replay`: one row, whatever its status.
    Replay,
    /// `inbox replay --dry-run`: plan, write nothing.
    DryRun,
}

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
#[derive(Debug, Clone)]
pub struct Source {
    /// Its provider.
    pub provider: ProviderKind,
    /// Its payment id, if it names one.
    pub payment_id: Option<String>,
    /// Its event id.
    pub event_id: String,
}

/// What to write for one row.
#[derive(Debug, Clone)]
pub enum Write {
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
        /// `Done` or `Ignored`.
        status: InboxStatus,
        /// Why, for people.
        note: String,
        /// Its payment.
        payment_key: String,
        /// The notification the actions come from.
        source: Source,
        /// Actions to write; one whose key is already in the outbox (or spent) is skipped.
        actions: Vec<Action>,
        /// The payment's new state, if it changes.
        payment: Option<PaymentState>,
    },
}

/// A row's plan: what to write, whether its provider confirmed it in this pass (recorded with
/// the row), and the decision to hand back to the caller.
#[derive(Debug)]
pub struct Plan<D> {
    /// What to write.
    pub write: Write,
    /// Its provider confirmed it in this pass.
    pub confirmed: bool,
    /// The decision, for the caller (a replay prints it).
    pub decision: Option<D>,
}

/// What became of one row of a batch: the decision (none for a row that was skipped or only
/// got an error status) and the actions newly written for it.
pub type Applied<D> = (Option<D>, Vec<Action>);

/// The worker's side of a batch: pure functions of a row and what the store holds.
pub trait Planner<P>: Send + Sync + 'static {
    /// The decision a plan hands back.
    type Decision: Send + 'static;

    /// What the row needs read before it can be planned; `None`: nothing.
    fn query<'a>(&self, row: &'a Claimed, prepared: &'a P) -> Option<FactsQuery<'a>>;

    /// The row's plan, given what was read (`None` when nothing was asked), at `now` (unix ms).
    fn plan(
        &self,
        row: &Claimed,
        prepared: &P,
        facts: Option<StoredFacts>,
        now: i64,
    ) -> Plan<Self::Decision>;

    /// What to write for a row whose own writes failed with a store error: try it again.
    fn store_error(&self, row: &Claimed, error: &str, now: i64) -> Write;
}
