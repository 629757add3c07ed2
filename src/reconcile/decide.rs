//! `decide`: the decision table of docs/reconciliation.md as a pure function.
//!
//! Input: the canonical notification, what we already know about its payment (a small state
//! machine per provider and payment id), the shop's order if one was found, which payment our
//! records say paid that order, and the policy. Output: the actions to emit, the payment's new
//! state, and what became of the inbox row. No I/O: the worker does the reading and writing.
//!
//! Every action carries a deterministic idempotency key (`fulfil:order:1001`,
//! `refund:stripe:pi_1`), so deciding twice never emits twice.

use crate::domain::{Action, ActionKind, PaymentState, PaymentStatus};
use crate::money::Money;
use crate::provider::{Kind, Notification};
use crate::reconcile::policy::{FulfilOn, OverpaidPolicy, Policy, RefundOrReview};
use crate::shop::{Order, OrderStatus};

/// What becomes of the inbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decided (possibly with no action).
    Done,
    /// Nothing to reconcile.
    Ignored,
    /// The order is not there yet: try again later.
    Park,
    /// A failed payment recorded, its notice to the customer held back until
    /// `policy.failure_notice_delay` has passed: then decided again.
    Hold,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Outcome::Done => "done",
            Outcome::Ignored => "ignored",
            Outcome::Park => "parked",
            Outcome::Hold => "held",
        })
    }
}

/// The result of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What becomes of the inbox row.
    pub outcome: Outcome,
    /// Actions to emit (already-emitted keys are skipped by the outbox).
    pub actions: Vec<Action>,
    /// The payment's new state, if it changes.
    pub payment: Option<PaymentState>,
    /// One line for people: why.
    pub note: String,
}

/// Everything `decide` looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The notification.
    pub notification: &'a Notification,
    /// Its payment's known state.
    pub payment: Option<&'a PaymentState>,
    /// The shop's order, if found.
    pub order: Option<&'a Order>,
    /// Another payment (`provider:id`) our records say paid this order, if any.
    pub paid_by_other: Option<&'a str>,
    /// The event was caused by a refund we asked for ourselves.
    pub own_refund: bool,
    /// The order was not found and the retry window has passed.
    pub unmatched_expired: bool,
    /// `policy.failure_notice_delay` has passed since the notification arrived.
    pub failure_notice_due: bool,
}

/// Message templates for `notify_customer`.
pub mod template {
    /// The payment matched; the order is confirmed.
    pub const ORDER_CONFIRMED: &str = "order_confirmed";
    /// The payment did not match the order (amount or currency) and was refunded.
    pub const PAYMENT_MISMATCH: &str = "payment_mismatch";
    /// The customer paid more than the order; the difference is refunded.
    pub const OVERPAYMENT_REFUNDED: &str = "overpayment_refunded";
    /// A second payment for an order already paid was refunded.
    pub const DUPLICATE_PAYMENT_REFUNDED: &str = "duplicate_payment_refunded";
    /// A payment for a cancelled order was refunded.
    pub const ORDER_CANCELLED_REFUNDED: &str = "order_cancelled_refunded";
    /// The payment is processing (asynchronous methods).
    pub const PAYMENT_PENDING: &str = "payment_pending";
    /// The payment failed; the customer is invited to try again.
    pub const PAYMENT_FAILED: &str = "payment_failed";
}

/// Whether a row's outcome note says its failure notice is held (an [`Outcome::Hold`]).
pub fn is_held(note: &str) -> bool {
    note.contains(HELD_MARK)
}

/// What a held row's note names, and [`is_held`] looks for.
const HELD_MARK: &str = "policy.failure_notice_delay";

/// Decides what a notification means for its order.
pub fn decide(f: Facts<'_>, policy: &Policy) -> Decision {
    let n = f.notification;
    let d = Draft::new(f);
    match n.kind {
        Kind::Ignored => Decision {
            outcome: Outcome::Ignored,
            actions: vec![],
            payment: None,
            note: n.detail.clone().unwrap_or_else(|| "ignored".into()),
        },
        Kind::Refunded if f.own_refund => d.done("refund we requested ourselves"),
        Kind::Refunded | Kind::RefundFailed | Kind::Disputed | Kind::DisputeClosed => {
            let what = match n.kind {
                Kind::Refunded => "refunded by the provider",
                Kind::RefundFailed => "a refund failed",
                Kind::Disputed => "a dispute was opened",
                _ => "a dispute was closed",
            };
            let reason = match &n.detail {
                Some(detail) => format!("{what} ({detail})"),
                None => what.to_owned(),
            };
            // Keyed by the refund or dispute it is about, under the provider's family: a refund
            // made in Stripe's dashboard comes as charge.refunded and refund.created, a PayPal
            // refund as a webhook and an IPN message; one review.
            let earlier = format!("review:{}:{}:{}", n.kind.as_str(), n.provider, n.event_id);
            let key = match &n.object_id {
                Some(object) => {
                    format!("review:{}:{}:{object}", n.kind.as_str(), n.provider.family())
                }
                None => earlier.clone(),
            };
            d.with(vec![d.review_of(reason.clone(), key, earlier, n.amount)], None, &reason)
        }
        Kind::Succeeded | Kind::Authorized | Kind::Pending | Kind::Failed | Kind::Canceled => {
            payment_event(f, d, policy)
        }
    }
}

fn payment_event(f: Facts<'_>, d: Draft<'_>, policy: &Policy) -> Decision {
    let n = f.notification;
    let known = f.payment;
    let ever_succeeded = known.is_some_and(|p| p.ever_succeeded);

    // Monotonic state: once a payment succeeded, later pending/failed/canceled/authorized
    // notifications about it are stale, and a repeated success changes nothing.
    if ever_succeeded {
        return d.done(match n.kind {
            Kind::Succeeded => "payment already recorded",
            _ => "stale: the payment already succeeded",
        });
    }
    let Some(order) = f.order else {
        if f.unmatched_expired {
            let reason = format!(
                "no order found for reference {} / payment {}",
                n.merchant_reference.as_deref().unwrap_or("-"),
                n.payment_id.as_deref().unwrap_or("-")
            );
            // One review per payment, however many of its notifications find no order.
            let earlier = format!("review:unmatched:{}:{}", n.provider, n.event_id);
            let key = format!("review:unmatched:{}", d.payment_key());
            return d.with(
                vec![d.review_of(reason.clone(), key, earlier, n.amount)],
                None,
                &reason,
            );
        }
        return Decision {
            outcome: Outcome::Park,
            actions: vec![],
            payment: None,
            note: "order not found yet".into(),
        };
    };
    let state = |status, fulfilled| PaymentState {
        status,
        ever_succeeded: status == PaymentStatus::Succeeded,
        order_id: Some(order.order_id.clone()),
        fulfilled: fulfilled || known.is_some_and(|p| p.fulfilled),
    };
    let d = d.for_order(order);
    match n.kind {
        Kind::Pending => {
            if known.is_some_and(|p| p.status == PaymentStatus::Authorized) {
                return d.done("stale: the payment is already authorized");
            }
            let next = Some(state(PaymentStatus::Pending, false));
            if let Some(other) = f.paid_by_other {
                return d.with(
                    vec![],
                    next,
                    &format!("pending; the order was already paid by {other}"),
                );
            }
            if order.status != OrderStatus::AwaitingPayment {
                return d.with(vec![], next, &format!("pending; order is {}", order.raw_status));
            }
            let key = format!("notify:payment_pending:{}", d.payment_key());
            d.with(
                vec![d.notify(template::PAYMENT_PENDING, "payment is processing", key, n.amount)],
                next,
                "pending",
            )
        }
        Kind::Failed | Kind::Canceled => {
            let status = if n.kind == Kind::Failed {
                PaymentStatus::Failed
            } else {
                PaymentStatus::Canceled
            };
            // Fulfilled on its authorization, and now the authorization is gone: the goods
            // may have left unpaid.
            if known.is_some_and(|p| p.fulfilled) {
                let why = format!(
                    "order {} was fulfilled on an authorization that is now {}",
                    order.order_id,
                    n.kind.as_str()
                );
                let next = PaymentState {
                    status,
                    ever_succeeded: false,
                    order_id: Some(order.order_id.clone()),
                    fulfilled: false,
                };
                let key = format!("review:authorization_lost:{}", d.payment_key());
                return d.with(vec![d.review(why.clone(), key, n.amount)], Some(next), &why);
            }
            let next = Some(state(status, false));
            // Another payment already paid: telling this customer to retry would invite a
            // second payment.
            if let Some(other) = f.paid_by_other {
                return d.with(
                    vec![],
                    next,
                    &format!("{}; the order was already paid by {other}", n.kind.as_str()),
                );
            }
            if order.status != OrderStatus::AwaitingPayment {
                return d.with(
                    vec![],
                    next,
                    &format!("{}; order is {}", n.kind.as_str(), order.raw_status),
                );
            }
            // The customer may well be paying again (another card on the same page): the notice
            // waits, and goes out only if nothing paid the order meanwhile.
            if !f.failure_notice_due {
                return Decision {
                    outcome: Outcome::Hold,
                    actions: vec![],
                    payment: next,
                    note: format!(
                        "payment {}: the customer is told after {HELD_MARK}, unless the order \
                         is paid meanwhile",
                        n.kind.as_str()
                    ),
                };
            }
            let key = format!("notify:payment_failed:{}", d.payment_key());
            let reason = format!("payment {}: invite the customer to try again", n.kind.as_str());
            d.with(vec![d.notify(template::PAYMENT_FAILED, &reason, key, n.amount)], next, &reason)
        }
        Kind::Authorized if known.is_some_and(|p| p.fulfilled) => {
            d.done("authorization already recorded and fulfilled")
        }
        Kind::Authorized if policy.fulfil_on == FulfilOn::Captured => d.with(
            vec![],
            Some(state(PaymentStatus::Authorized, false)),
            "authorized; waiting for capture",
        ),
        Kind::Succeeded if known.is_some_and(|p| p.fulfilled) => d.with(
            vec![],
            Some(state(PaymentStatus::Succeeded, true)),
            "captured; already fulfilled at authorization",
        ),
        _ => {
            let status = if n.kind == Kind::Succeeded {
                PaymentStatus::Succeeded
            } else {
                PaymentStatus::Authorized
            };
            money_arrived(f, d, order, status, policy)
        }
    }
}

/// A payment that counts (captured, or authorized when policy fulfils on authorization).
fn money_arrived(
    f: Facts<'_>,
    d: Draft<'_>,
    order: &Order,
    status: PaymentStatus,
    policy: &Policy,
) -> Decision {
    let n = f.notification;
    let this = n.payment_id.as_deref();
    let refund_key = format!("refund:{}", d.payment_key());
    let recorded = |fulfilled| {
        Some(PaymentState {
            status,
            ever_succeeded: status == PaymentStatus::Succeeded,
            order_id: Some(order.order_id.clone()),
            fulfilled,
        })
    };
    let Some(paid) = n.amount else {
        return d.with(
            vec![d.review(
                "payment without an amount".into(),
                format!("review:no_amount:{}", d.payment_key()),
                None,
            )],
            recorded(false),
            "no amount",
        );
    };
    let refund_all = |d: &Draft<'_>, tpl, why: &str| {
        vec![
            d.refund(paid, why, refund_key.clone()),
            d.notify(tpl, why, format!("notify:{tpl}:{}", d.payment_key()), Some(paid)),
        ]
    };

    // The choices the policy leaves open: give the money back (and tell the customer), or
    // leave it to an admin.
    let refund_or_review = |choice, tpl, review: &str, why: String| match choice {
        RefundOrReview::Refund => d.with(refund_all(&d, tpl, &why), recorded(false), &why),
        RefundOrReview::Review => {
            let key = format!("review:{review}:{}", d.payment_key());
            d.with(vec![d.review(why.clone(), key, Some(paid))], recorded(false), &why)
        }
    };

    // The order is already paid, by this payment or by another one. Money goes back only when
    // our own records show which other payment paid it: an id the shop stored that we do not
    // know (a charge id, a session id) may well be this same payment, so that is a review.
    let shop_says = order.psp_reference.as_deref();
    let same_payment =
        shop_says.is_some() && (shop_says == this || shop_says == n.related_payment_id.as_deref());
    if order.status == OrderStatus::Paid && same_payment {
        return d.with(vec![], recorded(false), "payment already recorded by the shop");
    }
    if order.status == OrderStatus::Paid || f.paid_by_other.is_some() {
        return match f.paid_by_other {
            Some(other) => {
                let why = format!("order {} was already paid by {other}", order.order_id);
                d.with(
                    refund_all(&d, template::DUPLICATE_PAYMENT_REFUNDED, &why),
                    recorded(false),
                    &why,
                )
            }
            None => {
                let why = format!(
                    "order {} is already paid (the shop records {}); this payment {} is not the one we know of",
                    order.order_id,
                    shop_says.unwrap_or("no payment id"),
                    this.unwrap_or("-")
                );
                d.with(
                    vec![d.review(
                        why.clone(),
                        format!("review:already_paid:{}", d.payment_key()),
                        Some(paid),
                    )],
                    recorded(false),
                    &why,
                )
            }
        };
    }
    match order.status {
        OrderStatus::Cancelled => {
            let why = format!("payment for order {} which is {}", order.order_id, order.raw_status);
            refund_or_review(
                policy.on_paid_after_cancel,
                template::ORDER_CANCELLED_REFUNDED,
                "paid_after_cancel",
                why,
            )
        }
        OrderStatus::Other => {
            let why = format!(
                "order {} has status \"{}\", which is in no [shop.status] list",
                order.order_id, order.raw_status
            );
            d.with(
                vec![d.review(
                    why.clone(),
                    format!("review:order_status:{}", d.payment_key()),
                    Some(paid),
                )],
                recorded(false),
                &why,
            )
        }
        OrderStatus::Paid => unreachable!("handled above"),
        OrderStatus::AwaitingPayment => {
            let expected = order.amount;
            if paid.currency != expected.currency {
                let why = format!(
                    "paid {paid} for order {} of {expected}: other currency",
                    order.order_id
                );
                return refund_or_review(
                    policy.on_currency_mismatch,
                    template::PAYMENT_MISMATCH,
                    "currency",
                    why,
                );
            }
            if paid.minor < expected.minor {
                let why = format!(
                    "paid {paid} for order {} of {expected}: less than the order",
                    order.order_id
                );
                return refund_or_review(
                    policy.on_underpaid,
                    template::PAYMENT_MISMATCH,
                    "underpaid",
                    why,
                );
            }
            let fulfil = d.fulfil(paid);
            let confirm = d.notify(
                template::ORDER_CONFIRMED,
                "payment received",
                format!("notify:order_confirmed:{}", order.order_id),
                Some(paid),
            );
            if paid.minor == expected.minor {
                return d.with(vec![fulfil, confirm], recorded(true), "paid in full");
            }
            let why = format!(
                "paid {paid} for order {} of {expected}: more than the order",
                order.order_id
            );
            match (policy.on_overpaid, paid.checked_sub(expected)) {
                (OverpaidPolicy::RefundDifference, Some(difference)) => {
                    let refund = d.refund(difference, &why, refund_key);
                    let tell = d.notify(
                        template::OVERPAYMENT_REFUNDED,
                        &why,
                        format!("notify:overpayment_refunded:{}", d.payment_key()),
                        Some(difference),
                    );
                    d.with(vec![fulfil, refund, tell], recorded(true), &why)
                }
                _ => d.with(
                    vec![d.review(
                        why.clone(),
                        format!("review:overpaid:{}", d.payment_key()),
                        Some(paid),
                    )],
                    recorded(false),
                    &why,
                ),
            }
        }
    }
}

/// Builds actions with the notification's common fields filled in.
struct Draft<'a> {
    n: &'a Notification,
    order_id: Option<String>,
    email: Option<String>,
}

impl<'a> Draft<'a> {
    fn new(f: Facts<'a>) -> Draft<'a> {
        let order_id = f
            .order
            .map(|o| o.order_id.clone())
            .or_else(|| f.payment.and_then(|p| p.order_id.clone()));
        let email = f
            .order
            .and_then(|o| o.customer_email.clone())
            .or_else(|| f.notification.customer_email.clone());
        Draft { n: f.notification, order_id, email }
    }

    fn for_order(mut self, order: &Order) -> Draft<'a> {
        self.order_id = Some(order.order_id.clone());
        if order.customer_email.is_some() {
            self.email = order.customer_email.clone();
        }
        self
    }

    /// `provider:payment` (or the event id when the notification names no payment).
    fn payment_key(&self) -> String {
        format!("{}:{}", self.n.provider, self.n.payment_id.as_deref().unwrap_or(&self.n.event_id))
    }

    fn action(
        &self,
        kind: ActionKind,
        amount: Option<Money>,
        reason: &str,
        template: Option<&'static str>,
        key: String,
    ) -> Action {
        Action {
            kind,
            order_id: self.order_id.clone(),
            amount,
            reason: reason.to_owned(),
            template,
            customer_email: self.email.clone(),
            idempotency_key: key,
            earlier_key: None,
            shadow: false,
        }
    }

    fn fulfil(&self, paid: Money) -> Action {
        let key = format!("fulfil:order:{}", self.order_id.as_deref().unwrap_or("-"));
        self.action(ActionKind::Fulfil, Some(paid), "payment received", None, key)
    }

    fn refund(&self, amount: Money, reason: &str, key: String) -> Action {
        self.action(ActionKind::Refund, Some(amount), reason, None, key)
    }

    fn notify(
        &self,
        template: &'static str,
        reason: &str,
        key: String,
        amount: Option<Money>,
    ) -> Action {
        self.action(ActionKind::NotifyCustomer, amount, reason, Some(template), key)
    }

    fn review(&self, reason: String, key: String, amount: Option<Money>) -> Action {
        self.action(ActionKind::Review, amount, &reason, None, key)
    }

    /// A review about one object (a refund, a dispute, a payment), keyed by it, so that the
    /// several events a provider sends about it make one review; `earlier` is the key such a
    /// review had when it was keyed by its event.
    fn review_of(
        &self,
        reason: String,
        key: String,
        earlier: String,
        amount: Option<Money>,
    ) -> Action {
        let mut action = self.review(reason, key, amount);
        action.earlier_key = Some(earlier).filter(|e| *e != action.idempotency_key);
        action
    }

    fn with(&self, actions: Vec<Action>, payment: Option<PaymentState>, note: &str) -> Decision {
        Decision { outcome: Outcome::Done, actions, payment, note: note.to_owned() }
    }

    fn done(&self, note: &str) -> Decision {
        self.with(vec![], None, note)
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
