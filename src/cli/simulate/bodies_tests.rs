//! Every simulated body reads back, through its provider's own parser, as the order, amount,
//! payment and event it was built for.

use super::*;
use crate::money::Currency;
use crate::provider::{paypal, worldpay, Kind};

const EVENTS: [(Event, Kind); 4] = [
    (Event::Succeeded, Kind::Succeeded),
    (Event::Pending, Kind::Pending),
    (Event::Failed, Kind::Failed),
    (Event::Refunded, Kind::Refunded),
];

fn sim(event: Event, amount: &str, code: &str) -> Sim<'static> {
    let currency = Currency::parse(code).unwrap();
    Sim {
        order: "1001",
        amount: Money::parse_exact(amount, currency).unwrap(),
        event,
        payment_id: None,
        now_ms: 1_790_000_000_123,
    }
}

#[test]
fn every_body_reads_back_as_the_order_amount_and_event() {
    let ids = Ids::new();
    let ipn = paypal_ipn::Settings {
        receiver_email: Some("shop@example.com".into()),
        ..Default::default()
    };
    let xml = worldpay_xml::Settings { merchant_codes: vec!["SHOPEUR".into()] };
    for (code, amount) in [("EUR", "25.99"), ("JPY", "5000"), ("KWD", "1.234")] {
        for (event, kind) in EVENTS {
            let s = sim(event, amount, code);
            let bodies = [
                stripe(&s, &ids).map(|b| {
                    (b.payment_id.clone(), crate::provider::stripe::parse(&b.bytes).unwrap())
                }),
                Ok(paypal(&s, &ids))
                    .map(|b| (b.payment_id.clone(), paypal::parse(None, &b.bytes).unwrap())),
                Ok(paypal_ipn(&s, &ipn, &ids))
                    .map(|b| (b.payment_id.clone(), paypal_ipn::parse(None, &b.bytes).unwrap())),
                Ok(worldpay(&s, &ids))
                    .map(|b| (b.payment_id.clone(), worldpay::parse(&b.bytes).unwrap())),
                Ok(worldpay_xml(&s, &xml, &ids))
                    .map(|b| (b.payment_id.clone(), worldpay_xml::parse(&b.bytes).unwrap())),
                Ok(adflex(&s, &adflex::Fields::default(), &ids)).map(|b| {
                    (b.payment_id.clone(), adflex::parse(&Default::default(), &b.bytes).unwrap())
                }),
            ];
            for (n, body) in bodies.into_iter().enumerate() {
                let (payment, parsed) = body.unwrap();
                let what = format!("provider {n}, {event:?} {amount} {code}");
                assert_eq!(parsed.kind, kind, "{what}");
                assert_eq!(parsed.amount, Some(s.amount), "{what}");
                assert_eq!(parsed.payment_id.as_deref(), Some(payment.as_str()), "{what}");
                assert_eq!(parsed.merchant_reference.as_deref(), Some("1001"), "{what}");
            }
        }
    }
}

#[test]
fn a_refund_names_the_payment_it_refunds() {
    let ids = Ids::new();
    let mut s = sim(Event::Refunded, "10.00", "GBP");
    s.payment_id = Some("pi_3AbC");
    let b = stripe(&s, &ids).unwrap();
    assert!(String::from_utf8(b.bytes).unwrap().contains("\"id\": \"ch_3AbC\""));
    assert_eq!(b.payment_id, "pi_3AbC");
    s.payment_id = Some("8MC585209K746392H");
    let n = paypal::parse(None, &paypal(&s, &ids).bytes).unwrap();
    assert_eq!(n.payment_id.as_deref(), Some("8MC585209K746392H"));
    let form = paypal_ipn(&s, &paypal_ipn::Settings::default(), &ids);
    let n = paypal_ipn::parse(None, &form.bytes).unwrap();
    assert_eq!(n.payment_id.as_deref(), Some("8MC585209K746392H"));
}

#[test]
fn stripe_units_follow_stripe_not_iso() {
    let at = |text: &str, code: &str| {
        stripe_minor(Money::parse_exact(text, Currency::parse(code).unwrap()).unwrap())
    };
    assert_eq!(at("25.99", "EUR"), Ok(2599));
    assert_eq!(at("5000", "JPY"), Ok(5000));
    // ISK: ISO zero-decimal, two-decimal in Stripe's API.
    assert_eq!(at("100", "ISK"), Ok(10000));
    // MGA: ISO two-decimal, zero-decimal at Stripe.
    assert_eq!(at("100", "MGA"), Ok(100));
    assert!(at("100.50", "MGA").unwrap_err().contains("whole units"));
}

#[test]
fn order_ids_are_escaped_in_xml_and_set_at_nested_paths() {
    let ids = Ids::new();
    let mut s = sim(Event::Succeeded, "1.00", "EUR");
    s.order = "A&B\"1";
    let b = worldpay_xml(&s, &worldpay_xml::Settings { merchant_codes: vec![] }, &ids);
    let n = worldpay_xml::parse(&b.bytes).unwrap();
    assert_eq!(n.merchant_reference.as_deref(), Some("A&B\"1"));
    let mut v = json!({});
    set_at(&mut v, "a.b.c", json!(1));
    set_at(&mut v, "a.d", json!(2));
    assert_eq!(v, json!({"a": {"b": {"c": 1}, "d": 2}}));
}
