//! Where an order's payment stands, for the shop's confirmation page: one state from what the
//! store holds about the order's payments and actions, and the customer-facing sentence for it.

use serde::{Deserialize, Serialize};

use crate::store::OrderPayments;

/// An order's payment state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Nothing known about a payment yet.
    AwaitingPayment,
    /// A payment is pending or authorized, not yet captured.
    Processing,
    /// A payment paid the order (fulfilled).
    Paid,
    /// The last attempt failed or was cancelled, and nothing paid the order.
    Failed,
    /// The money was refunded (an amount or currency mismatch, a payment after cancellation).
    Refunded,
    /// A person must look at it.
    Review,
}

impl State {
    /// Whether a long poll waits on: nothing is settled yet.
    pub fn is_open(self) -> bool {
        matches!(self, State::AwaitingPayment | State::Processing)
    }

    /// The state of an order from what the store holds. A payment that paid the order decides
    /// (an overpayment refunded in part, or a second payment refunded, leaves it paid); else a
    /// review, else a refund; else a payment still under way; else a failed one.
    pub fn of(facts: &OrderPayments) -> State {
        let live = |s: &str| matches!(s, "pending" | "authorized");
        if facts.payments.iter().any(|p| p.fulfilled) {
            State::Paid
        } else if facts.review {
            State::Review
        } else if facts.refunded {
            State::Refunded
        } else if facts.payments.iter().any(|p| live(&p.status)) {
            State::Processing
        } else if facts.payments.iter().any(|p| p.status == "failed" || p.status == "canceled") {
            State::Failed
        } else {
            State::AwaitingPayment
        }
    }
}

/// `[messages]`: the sentence the confirmation page shows for each state.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Messages {
    /// `awaiting_payment`.
    pub awaiting_payment: String,
    /// `processing`.
    pub processing: String,
    /// `paid`.
    pub paid: String,
    /// `failed`.
    pub failed: String,
    /// `refunded`.
    pub refunded: String,
    /// `review`.
    pub review: String,
}

impl Default for Messages {
    fn default() -> Messages {
        Messages {
            awaiting_payment: "Your order was received and is awaiting payment confirmation."
                .into(),
            processing: "Your payment is being processed; this page updates when it is confirmed."
                .into(),
            paid: "Your payment is confirmed and your order is complete.".into(),
            failed: "Your payment did not go through and the order could not be processed.".into(),
            refunded: "Your payment could not be matched to your order and is being refunded."
                .into(),
            review: "We received your payment and are checking it; we will contact you shortly."
                .into(),
        }
    }
}

impl Messages {
    /// The sentence for `state`.
    pub fn of(&self, state: State) -> &str {
        match state {
            State::AwaitingPayment => &self.awaiting_payment,
            State::Processing => &self.processing,
            State::Paid => &self.paid,
            State::Failed => &self.failed,
            State::Refunded => &self.refunded,
            State::Review => &self.review,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PaymentSummary;

    fn payment(status: &str, fulfilled: bool) -> PaymentSummary {
        PaymentSummary {
            provider: "stripe".into(),
            payment_id: format!("pi_{status}"),
            status: status.into(),
            fulfilled,
            amount: None,
            currency: None,
        }
    }

    #[test]
    fn each_state_follows_from_the_facts() {
        let facts = |payments: Vec<PaymentSummary>, refunded, review| OrderPayments {
            payments,
            refunded,
            review,
        };
        let cases = [
            (facts(vec![], false, false), State::AwaitingPayment),
            (facts(vec![payment("pending", false)], false, false), State::Processing),
            (facts(vec![payment("authorized", false)], false, false), State::Processing),
            (facts(vec![payment("succeeded", true)], false, false), State::Paid),
            // A second payment refunded: the order is still paid.
            (
                facts(vec![payment("succeeded", true), payment("succeeded", false)], true, false),
                State::Paid,
            ),
            (facts(vec![payment("succeeded", false)], true, false), State::Refunded),
            (facts(vec![payment("succeeded", false)], false, true), State::Review),
            (facts(vec![payment("failed", false)], false, false), State::Failed),
            // A failed attempt, then one under way: processing.
            (
                facts(vec![payment("failed", false), payment("pending", false)], false, false),
                State::Processing,
            ),
        ];
        for (facts, state) in cases {
            assert_eq!(State::of(&facts), state, "{facts:?}");
        }
        assert!(State::Processing.is_open() && !State::Paid.is_open());
    }
}
