//! One case per row of the decision table in docs/reconciliation.md, plus the edges found on the way.

use super::*;
use crate::money::Currency;

fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").unwrap())
}

fn note(kind: Kind, amount: Option<Money>) -> Notification {
    Notification {
        provider: crate::provider::ProviderKind::Stripe,
        event_id: "evt_1".into(),
        kind,
        raw_type: "test".into(),
        payment_id: Some("pi_1".into()),
        merchant_reference: Some("1001".into()),
        amount,
        occurred_at: 0,
        customer_email: Some("psp@example.com".into()),
        object_id: None,
        request_key: None,
        related_payment_id: None,
        detail: None,
    }
}

fn order(status: OrderStatus, minor: i64) -> Order {
    Order {
        order_id: "1001".into(),
        status,
        raw_status: format!("{status:?}").to_lowercase(),
        amount: usd(minor),
        customer_email: Some("jane@example.com".into()),
        psp_reference: None,
    }
}

fn state(status: PaymentStatus, fulfilled: bool) -> PaymentState {
    PaymentState {
        status,
        ever_succeeded: status == PaymentStatus::Succeeded,
        order_id: Some("1001".into()),
        fulfilled,
    }
}

struct Case {
    name: &'static str,
    n: Notification,
    payment: Option<PaymentState>,
    order: Option<Order>,
    paid_by_other: Option<&'static str>,
    policy: Policy,
    unmatched_expired: bool,
    own_refund: bool,
    failure_notice_due: bool,
}

impl Case {
    fn new(name: &'static str, n: Notification, order: Option<Order>) -> Case {
        Case {
            name,
            n,
            payment: None,
            order,
            paid_by_other: None,
            policy: Policy::default(),
            unmatched_expired: false,
            own_refund: false,
            failure_notice_due: true,
        }
    }

    fn run(&self) -> Decision {
        decide(
            Facts {
                notification: &self.n,
                payment: self.payment.as_ref(),
                order: self.order.as_ref(),
                paid_by_other: self.paid_by_other,
                own_refund: self.own_refund,
                unmatched_expired: self.unmatched_expired,
                failure_notice_due: self.failure_notice_due,
            },
            &self.policy,
        )
    }
}

/// `(kind, template, amount)` of each action, for compact expectations.
fn summary(d: &Decision) -> Summary {
    d.actions.iter().map(|a| (a.kind, a.template, a.amount.map(|m| m.minor))).collect()
}

use ActionKind::{Fulfil, NotifyCustomer as Notify, Refund, Review};

type Summary = Vec<(ActionKind, Option<&'static str>, Option<i64>)>;

#[test]
fn the_decision_table() {
    let paid = |minor| Some(usd(minor));
    let review_policy = Policy {
        on_underpaid: RefundOrReview::Review,
        on_overpaid: OverpaidPolicy::Review,
        on_currency_mismatch: RefundOrReview::Review,
        on_paid_after_cancel: RefundOrReview::Review,
        ..Policy::default()
    };
    let eur = Some(Money::new(10000, Currency::parse("EUR").unwrap()));
    let mut cases: Vec<(Case, Outcome, Summary)> = vec![];

    // succeeded, amount and currency equal | awaiting payment → fulfil + confirm
    cases.push((
        Case::new(
            "exact",
            note(Kind::Succeeded, paid(10000)),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        ),
        Outcome::Done,
        vec![(Fulfil, None, Some(10000)), (Notify, Some(template::ORDER_CONFIRMED), Some(10000))],
    ));
    // succeeded, less than the order (cart grew) → refund all + notify, or review
    cases.push((
        Case::new(
            "underpaid",
            note(Kind::Succeeded, paid(10000)),
            Some(order(OrderStatus::AwaitingPayment, 20000)),
        ),
        Outcome::Done,
        vec![(Refund, None, Some(10000)), (Notify, Some(template::PAYMENT_MISMATCH), Some(10000))],
    ));
    let mut c = Case::new(
        "underpaid, review",
        note(Kind::Succeeded, paid(10000)),
        Some(order(OrderStatus::AwaitingPayment, 20000)),
    );
    c.policy = review_policy;
    cases.push((c, Outcome::Done, vec![(Review, None, Some(10000))]));
    // succeeded, more than the order (cart shrank) → fulfil + refund the difference + notify, or review
    cases.push((
        Case::new(
            "overpaid",
            note(Kind::Succeeded, paid(12000)),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        ),
        Outcome::Done,
        vec![
            (Fulfil, None, Some(12000)),
            (Refund, None, Some(2000)),
            (Notify, Some(template::OVERPAYMENT_REFUNDED), Some(2000)),
        ],
    ));
    let mut c = Case::new(
        "overpaid, review",
        note(Kind::Succeeded, paid(12000)),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    c.policy = review_policy;
    cases.push((c, Outcome::Done, vec![(Review, None, Some(12000))]));
    // succeeded, other currency → refund + notify, or review
    cases.push((
        Case::new(
            "currency",
            note(Kind::Succeeded, eur),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        ),
        Outcome::Done,
        vec![(Refund, None, Some(10000)), (Notify, Some(template::PAYMENT_MISMATCH), Some(10000))],
    ));
    let mut c = Case::new(
        "currency, review",
        note(Kind::Succeeded, eur),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    c.policy = review_policy;
    cases.push((c, Outcome::Done, vec![(Review, None, Some(10000))]));
    // succeeded, same payment already recorded as paying this order | paid → nothing
    let mut c = Case::new(
        "same payment, we recorded it",
        note(Kind::Succeeded, paid(10000)),
        Some(order(OrderStatus::Paid, 10000)),
    );
    c.payment = Some(state(PaymentStatus::Succeeded, true));
    cases.push((c, Outcome::Done, vec![]));
    let mut shop_recorded = order(OrderStatus::Paid, 10000);
    shop_recorded.psp_reference = Some("pi_1".into());
    cases.push((
        Case::new(
            "same payment, the shop recorded it",
            note(Kind::Succeeded, paid(10000)),
            Some(shop_recorded),
        ),
        Outcome::Done,
        vec![],
    ));
    // succeeded, a different payment already paid this order → refund this one + notify
    // ...but an id the shop stored that our records do not know may be this very payment
    // (a charge id, a session id): review, never a refund on that alone.
    let mut other = order(OrderStatus::Paid, 10000);
    other.psp_reference = Some("ch_0".into());
    cases.push((
        Case::new(
            "paid, shop records an id we do not know",
            note(Kind::Succeeded, paid(10000)),
            Some(other),
        ),
        Outcome::Done,
        vec![(Review, None, Some(10000))],
    ));
    // The shop stored this payment's id when it created it; the order still awaits payment.
    let mut created_with = order(OrderStatus::AwaitingPayment, 10000);
    created_with.psp_reference = Some("pi_1".into());
    cases.push((
        Case::new(
            "awaiting order that recorded this payment id",
            note(Kind::Succeeded, paid(10000)),
            Some(created_with),
        ),
        Outcome::Done,
        vec![(Fulfil, None, Some(10000)), (Notify, Some(template::ORDER_CONFIRMED), Some(10000))],
    ));
    let mut created_with = order(OrderStatus::AwaitingPayment, 20000);
    created_with.psp_reference = Some("pi_1".into());
    cases.push((
        Case::new(
            "awaiting order that recorded this payment id, underpaid",
            note(Kind::Succeeded, paid(10000)),
            Some(created_with),
        ),
        Outcome::Done,
        vec![(Refund, None, Some(10000)), (Notify, Some(template::PAYMENT_MISMATCH), Some(10000))],
    ));
    // Paid by another payment in our records, and the shop knows it too.
    let mut other = order(OrderStatus::Paid, 10000);
    other.psp_reference = Some("pi_0".into());
    let mut c =
        Case::new("double payment, shop knows", note(Kind::Succeeded, paid(10000)), Some(other));
    c.paid_by_other = Some("stripe:pi_0");
    cases.push((
        c,
        Outcome::Done,
        vec![
            (Refund, None, Some(10000)),
            (Notify, Some(template::DUPLICATE_PAYMENT_REFUNDED), Some(10000)),
        ],
    ));
    // A failed or pending older attempt after another payment paid: no notice.
    for kind in [Kind::Failed, Kind::Canceled, Kind::Pending] {
        let mut c = Case::new(
            "notice after another payment paid",
            note(kind, paid(10000)),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        );
        c.paid_by_other = Some("stripe:pi_0");
        cases.push((c, Outcome::Done, vec![]));
    }
    // Fulfilled on authorization: a second authorization event adds nothing; losing the
    // authorization is reviewed.
    let mut c = Case::new(
        "authorized twice",
        note(Kind::Authorized, paid(10000)),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    c.policy.fulfil_on = FulfilOn::Authorized;
    c.payment = Some(state(PaymentStatus::Authorized, true));
    cases.push((c, Outcome::Done, vec![]));
    let mut c = Case::new(
        "authorization canceled after fulfil",
        note(Kind::Canceled, paid(10000)),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    c.policy.fulfil_on = FulfilOn::Authorized;
    c.payment = Some(state(PaymentStatus::Authorized, true));
    cases.push((c, Outcome::Done, vec![(Review, None, Some(10000))]));
    let mut c = Case::new(
        "double payment before the shop caught up",
        note(Kind::Succeeded, paid(10000)),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    c.paid_by_other = Some("stripe:pi_0");
    cases.push((
        c,
        Outcome::Done,
        vec![
            (Refund, None, Some(10000)),
            (Notify, Some(template::DUPLICATE_PAYMENT_REFUNDED), Some(10000)),
        ],
    ));
    // succeeded, nobody knows which payment paid it | paid → review
    cases.push((
        Case::new(
            "paid, payer unknown",
            note(Kind::Succeeded, paid(10000)),
            Some(order(OrderStatus::Paid, 10000)),
        ),
        Outcome::Done,
        vec![(Review, None, Some(10000))],
    ));
    // succeeded | cancelled → refund + notify, or review
    cases.push((
        Case::new(
            "paid after cancel",
            note(Kind::Succeeded, paid(10000)),
            Some(order(OrderStatus::Cancelled, 10000)),
        ),
        Outcome::Done,
        vec![
            (Refund, None, Some(10000)),
            (Notify, Some(template::ORDER_CANCELLED_REFUNDED), Some(10000)),
        ],
    ));
    let mut c = Case::new(
        "paid after cancel, review",
        note(Kind::Succeeded, paid(10000)),
        Some(order(OrderStatus::Cancelled, 10000)),
    );
    c.policy = review_policy;
    cases.push((c, Outcome::Done, vec![(Review, None, Some(10000))]));
    // pending | awaiting payment → notify once (the key makes it once)
    cases.push((
        Case::new(
            "pending",
            note(Kind::Pending, paid(10000)),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        ),
        Outcome::Done,
        vec![(Notify, Some(template::PAYMENT_PENDING), Some(10000))],
    ));
    // failed / canceled | awaiting payment → notify (invite to retry)
    cases.push((
        Case::new(
            "failed",
            note(Kind::Failed, paid(10000)),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        ),
        Outcome::Done,
        vec![(Notify, Some(template::PAYMENT_FAILED), Some(10000))],
    ));
    cases.push((
        Case::new(
            "canceled",
            note(Kind::Canceled, paid(10000)),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        ),
        Outcome::Done,
        vec![(Notify, Some(template::PAYMENT_FAILED), Some(10000))],
    ));
    // failed / canceled | awaiting payment, before policy.failure_notice_delay → held: the
    // payment's state recorded, no notice yet (decided again when the delay has passed)
    for kind in [Kind::Failed, Kind::Canceled] {
        let mut c = Case::new(
            "failure notice held",
            note(kind, paid(10000)),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        );
        c.failure_notice_due = false;
        cases.push((c, Outcome::Hold, vec![]));
        // ... and no hold when there is nothing to tell: the order is already paid
        let mut c = Case::new(
            "failure for a paid order",
            note(kind, paid(10000)),
            Some(order(OrderStatus::Paid, 10000)),
        );
        c.failure_notice_due = false;
        cases.push((c, Outcome::Done, vec![]));
    }
    // failed / canceled after succeeded → nothing (stale)
    for kind in [Kind::Failed, Kind::Canceled, Kind::Pending, Kind::Authorized] {
        let mut c = Case::new(
            "stale after success",
            note(kind, paid(10000)),
            Some(order(OrderStatus::Paid, 10000)),
        );
        c.payment = Some(state(PaymentStatus::Succeeded, true));
        cases.push((c, Outcome::Done, vec![]));
    }
    // refunded by the provider, dispute opened (and closed, refund failed) → review
    for kind in [Kind::Refunded, Kind::Disputed, Kind::DisputeClosed, Kind::RefundFailed] {
        cases.push((
            Case::new(
                "provider-side",
                note(kind, paid(10000)),
                Some(order(OrderStatus::Paid, 10000)),
            ),
            Outcome::Done,
            vec![(Review, None, Some(10000))],
        ));
        cases.push((
            Case::new("provider-side, no order", note(kind, paid(10000)), None),
            Outcome::Done,
            vec![(Review, None, Some(10000))],
        ));
    }
    // ... but not a refund we asked for ourselves
    let mut c = Case::new(
        "our own refund",
        note(Kind::Refunded, paid(10000)),
        Some(order(OrderStatus::Paid, 10000)),
    );
    c.own_refund = true;
    cases.push((c, Outcome::Done, vec![]));
    // any | no order found yet → park; after the window → review
    cases.push((
        Case::new("no order yet", note(Kind::Succeeded, paid(10000)), None),
        Outcome::Park,
        vec![],
    ));
    let mut c = Case::new("no order, window over", note(Kind::Succeeded, paid(10000)), None);
    c.unmatched_expired = true;
    cases.push((c, Outcome::Done, vec![(Review, None, Some(10000))]));
    // authorized | awaiting payment → wait, or fulfil when configured
    cases.push((
        Case::new(
            "authorized",
            note(Kind::Authorized, paid(10000)),
            Some(order(OrderStatus::AwaitingPayment, 10000)),
        ),
        Outcome::Done,
        vec![],
    ));
    let mut c = Case::new(
        "authorized, fulfil on authorization",
        note(Kind::Authorized, paid(10000)),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    c.policy.fulfil_on = FulfilOn::Authorized;
    cases.push((
        c,
        Outcome::Done,
        vec![(Fulfil, None, Some(10000)), (Notify, Some(template::ORDER_CONFIRMED), Some(10000))],
    ));
    // unknown event type → ignored
    cases.push((Case::new("ignored", note(Kind::Ignored, None), None), Outcome::Ignored, vec![]));
    // Edges: a succeeded after a failed attempt counts; an order with an unmapped status is reviewed.
    let mut c = Case::new(
        "success after a failed attempt",
        note(Kind::Succeeded, paid(10000)),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    c.payment = Some(state(PaymentStatus::Failed, false));
    cases.push((
        c,
        Outcome::Done,
        vec![(Fulfil, None, Some(10000)), (Notify, Some(template::ORDER_CONFIRMED), Some(10000))],
    ));
    cases.push((
        Case::new(
            "unmapped order status",
            note(Kind::Succeeded, paid(10000)),
            Some(order(OrderStatus::Other, 10000)),
        ),
        Outcome::Done,
        vec![(Review, None, Some(10000))],
    ));
    cases.push((
        Case::new(
            "pending for a paid order",
            note(Kind::Pending, paid(10000)),
            Some(order(OrderStatus::Paid, 10000)),
        ),
        Outcome::Done,
        vec![],
    ));

    for (case, outcome, expected) in cases {
        let d = case.run();
        assert_eq!(d.outcome, outcome, "{}: {}", case.name, d.note);
        assert_eq!(summary(&d), expected, "{}: {}", case.name, d.note);
    }
}

#[test]
fn keys_are_deterministic_and_name_the_order_or_payment() {
    let c = Case::new(
        "exact",
        note(Kind::Succeeded, Some(usd(12000))),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    let keys: Vec<String> = c.run().actions.into_iter().map(|a| a.idempotency_key).collect();
    assert_eq!(
        keys,
        ["fulfil:order:1001", "refund:stripe:pi_1", "notify:overpayment_refunded:stripe:pi_1"]
    );
    assert_eq!(c.run(), c.run(), "pure");
    // The order's email wins over the provider's.
    assert_eq!(c.run().actions[0].customer_email.as_deref(), Some("jane@example.com"));
}

#[test]
fn reviews_are_keyed_by_the_refund_dispute_or_payment_they_are_about() {
    let review = |kind: Kind, provider, event: &str, object: Option<&str>, order: Option<Order>| {
        let mut n = note(kind, Some(usd(10000)));
        n.provider = provider;
        n.event_id = event.into();
        n.object_id = object.map(str::to_owned);
        let mut c = Case::new("review", n, order);
        c.unmatched_expired = true;
        let a = c.run().actions.pop().expect("a review");
        (a.idempotency_key, a.earlier_key)
    };
    use crate::provider::ProviderKind::{Paypal, PaypalIpn, Stripe};
    let paid = || Some(order(OrderStatus::Paid, 10000));
    // Two events about one refund: one key; the key each had before is kept for old stores.
    let (a, earlier_a) = review(Kind::Refunded, Stripe, "evt_a", Some("re_1"), paid());
    let (b, _) = review(Kind::Refunded, Stripe, "evt_b", Some("re_1"), paid());
    assert_eq!(
        (a.as_str(), b.as_str()),
        ("review:refunded:stripe:re_1", "review:refunded:stripe:re_1")
    );
    assert_eq!(earlier_a.as_deref(), Some("review:refunded:stripe:evt_a"));
    // A PayPal refund by webhook and by IPN: one review.
    let (web, _) = review(Kind::Refunded, Paypal, "WH-1", Some("R1"), paid());
    let (ipn, _) = review(Kind::Refunded, PaypalIpn, "ipn-1", Some("R1"), paid());
    assert_eq!(web, ipn);
    // Another refund of the same payment, or the refund failing: a review of its own.
    assert_ne!(review(Kind::Refunded, Stripe, "evt_c", Some("re_2"), paid()).0, a);
    assert_ne!(review(Kind::RefundFailed, Stripe, "evt_d", Some("re_1"), paid()).0, a);
    // A dispute by its id; without an object, by the event as before.
    assert_eq!(
        review(Kind::Disputed, Stripe, "evt_e", Some("dp_1"), paid()).0,
        "review:disputed:stripe:dp_1"
    );
    let (by_event, earlier) = review(Kind::Disputed, Stripe, "evt_f", None, paid());
    assert_eq!((by_event.as_str(), earlier), ("review:disputed:stripe:evt_f", None));
    // An unmatched payment by the payment, whichever of its events.
    let (u1, _) = review(Kind::Pending, Stripe, "evt_g", None, None);
    let (u2, _) = review(Kind::Succeeded, Stripe, "evt_h", None, None);
    assert_eq!(
        (u1.as_str(), u2.as_str()),
        ("review:unmatched:stripe:pi_1", "review:unmatched:stripe:pi_1")
    );
}

#[test]
fn a_held_failure_records_the_payment_and_a_later_success_means_no_notice() {
    let mut held = Case::new(
        "held",
        note(Kind::Failed, Some(usd(10000))),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    held.failure_notice_due = false;
    let d = held.run();
    assert_eq!(d.outcome, Outcome::Hold);
    assert_eq!(d.payment.as_ref().map(|p| p.status), Some(PaymentStatus::Failed));
    // When the delay has passed: the same payment succeeded meanwhile → stale, no notice.
    let mut again = Case::new(
        "after success",
        note(Kind::Failed, Some(usd(10000))),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    again.payment = Some(state(PaymentStatus::Succeeded, true));
    assert!(again.run().actions.is_empty());
    // Another payment paid the order meanwhile → no notice.
    let mut other = Case::new(
        "paid by another",
        note(Kind::Failed, Some(usd(10000))),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    other.payment = d.payment.clone();
    other.paid_by_other = Some("stripe:pi_2");
    assert!(other.run().actions.is_empty());
    // Nothing paid it: the notice, once.
    let mut due = Case::new(
        "due",
        note(Kind::Failed, Some(usd(10000))),
        Some(order(OrderStatus::AwaitingPayment, 10000)),
    );
    due.payment = d.payment;
    let actions = due.run().actions;
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].template, Some(template::PAYMENT_FAILED));
}

#[test]
fn payment_state_moves_monotonically() {
    let o = order(OrderStatus::AwaitingPayment, 10000);
    let c = Case::new("exact", note(Kind::Succeeded, Some(usd(10000))), Some(o.clone()));
    let after = c.run().payment.unwrap();
    assert_eq!(
        (after.status, after.ever_succeeded, after.fulfilled),
        (PaymentStatus::Succeeded, true, true)
    );
    // Then a late failure changes nothing and emits nothing.
    let mut late = Case::new("late failure", note(Kind::Failed, Some(usd(10000))), Some(o.clone()));
    late.payment = Some(after);
    let d = late.run();
    assert_eq!((d.payment, d.actions.len()), (None, 0));
    // Authorized (fulfilled by policy) and then captured: no second fulfil.
    let mut auth = Case::new("auth", note(Kind::Authorized, Some(usd(10000))), Some(o.clone()));
    auth.policy.fulfil_on = FulfilOn::Authorized;
    let st = auth.run().payment.unwrap();
    assert!(st.fulfilled && !st.ever_succeeded);
    let mut cap = Case::new("capture", note(Kind::Succeeded, Some(usd(10000))), Some(o));
    cap.payment = Some(st);
    let d = cap.run();
    assert!(d.actions.is_empty());
    assert!(d.payment.unwrap().ever_succeeded);
}

#[test]
fn zero_and_three_decimal_currencies_compare_exactly() {
    let fulfilled = vec![ActionKind::Fulfil, ActionKind::NotifyCustomer];
    let refunded = vec![ActionKind::Refund, ActionKind::NotifyCustomer];
    for (code, paid, due, want) in [
        ("JPY", 5000, 5000, &fulfilled),
        ("JPY", 4999, 5000, &refunded),
        ("KWD", 12345, 12345, &fulfilled),
        ("KWD", 12344, 12345, &refunded),
    ] {
        let cur = Currency::parse(code).unwrap();
        let mut o = order(OrderStatus::AwaitingPayment, 0);
        o.amount = Money::new(due, cur);
        let d =
            Case::new("money", note(Kind::Succeeded, Some(Money::new(paid, cur))), Some(o)).run();
        let kinds: Vec<ActionKind> = d.actions.iter().map(|a| a.kind).collect();
        assert_eq!(&kinds, want, "{code} {paid} vs {due}: {}", d.note);
    }
}
