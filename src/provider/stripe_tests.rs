//! Unit tests of the Stripe provider: signatures, refusals and the mapping.

use super::*;

const NOW: i64 = 1_700_000_000;
const BODY: &[u8] =
    br#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{}}}"#;

fn secrets(list: &[&str]) -> Vec<Secret> {
    list.iter().map(|s| Secret::new(*s)).collect()
}

#[test]
fn known_vector_matches_stripe_python() {
    // Produced by stripe-python 16.1.0 WebhookSignature.generate_signature_header for this
    // body, secret "whsec_test_secret" and timestamp 1700000000.
    let body = br#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{}}}"#;
    assert_eq!(
        signature(b"whsec_test_secret", NOW, body),
        "9138fc0dca8803648b76c0505002e1bb00aef8475dd05eb8ac7684df60f8ee8f"
    );
}

#[test]
fn accepts_any_v1_against_any_secret() {
    let good = signature(b"whsec_new", NOW, BODY);
    let header = format!("t={NOW},v1={},v0=abc,v1={good}", "0".repeat(64));
    verify(&secrets(&["whsec_old", "whsec_new"]), 300, &header, BODY, NOW).unwrap();
}

#[test]
fn refusals() {
    let s = secrets(&["whsec_a"]);
    let ok = sign(b"whsec_a", NOW, BODY);
    let cases: Vec<(String, Vec<u8>, i64, &str)> = vec![
        (ok.clone(), b"{}".to_vec(), NOW, "bad_signature"),
        (sign(b"whsec_b", NOW, BODY), BODY.to_vec(), NOW, "bad_signature"),
        (ok.clone(), BODY.to_vec(), NOW + 301, "stale_timestamp"),
        (ok.clone(), BODY.to_vec(), NOW - 301, "future_timestamp"),
        (format!("t={NOW}"), BODY.to_vec(), NOW, "malformed_header"),
        (
            format!("v1={}", signature(b"whsec_a", NOW, BODY)),
            BODY.to_vec(),
            NOW,
            "malformed_header",
        ),
        ("garbage".into(), BODY.to_vec(), NOW, "malformed_header"),
        (format!("t=-5,v1={}", "0".repeat(64)), BODY.to_vec(), NOW, "malformed_header"),
        (format!("t=1,t=2,v1={}", "0".repeat(64)), BODY.to_vec(), NOW, "malformed_header"),
        (format!("t={NOW},v1=XYZ"), BODY.to_vec(), NOW, "malformed_header"),
    ];
    for (header, body, now, code) in cases {
        let err = verify(&s, 300, &header, &body, now).unwrap_err();
        assert_eq!(err.code(), code, "header {header:?} at {now}");
    }
    // Exactly at the tolerance is still accepted, both ways.
    verify(&s, 300, &ok, BODY, NOW + 300).unwrap();
    verify(&s, 300, &ok, BODY, NOW - 300).unwrap();
}

/// Each malformed header is refused with the reason that is actually wrong with it.
#[test]
fn malformed_headers_name_what_is_wrong() {
    let s = secrets(&["whsec_a"]);
    let good = signature(b"whsec_a", NOW, BODY);
    let cases = [
        (format!("t={NOW},v1=deadbeef"), "the v1= signature is not 64 hex digits"),
        (format!("t={NOW},v1={}", "g".repeat(64)), "the v1= signature is not 64 hex digits"),
        (format!("t={NOW},v1={good}0"), "the v1= signature is not 64 hex digits"),
        (format!("t={NOW},v0={good}"), "no v1= signature"),
        (format!("t={NOW}"), "no v1= signature"),
        (format!("v1={good}"), "no t= timestamp"),
        (format!("t=abc,v1={good}"), "t= is not unix seconds"),
        ("garbage".to_owned(), "expected comma-separated key=value pairs"),
    ];
    for (header, want) in cases {
        match verify(&s, 300, &header, BODY, NOW) {
            Err(Rejection::MalformedHeader { detail, .. }) => {
                assert_eq!(detail, want, "{header}")
            }
            other => panic!("{header}: {other:?}"),
        }
    }
    // A readable v1 beside an unreadable one is checked as usual.
    verify(&s, 300, &format!("t={NOW},v1=deadbeef,v1={good}"), BODY, NOW).unwrap();
    let text = verify(&s, 300, &format!("t={NOW},v1=deadbeef"), BODY, NOW).unwrap_err().to_string();
    assert_eq!(text, "malformed Stripe-Signature header: the v1= signature is not 64 hex digits");
}

fn fixture(name: &str) -> Notification {
    let path = format!("{}/fixtures/stripe/{name}", env!("CARGO_MANIFEST_DIR"));
    parse(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn fixtures_map_to_canonical_notifications() {
    let usd = Currency::parse("usd").unwrap();
    type Expected<'a> = (&'a str, Kind, Option<&'a str>, Option<&'a str>, Option<(i64, &'a str)>);
    let cases: &[Expected<'_>] = &[
        (
            "payment_intent.succeeded.json",
            Kind::Succeeded,
            Some("pi_3PqR1001TestAbCdEf"),
            Some("1001"),
            Some((10000, "USD")),
        ),
        (
            "charge.succeeded.json",
            Kind::Succeeded,
            Some("pi_3PqR1001TestAbCdEf"),
            Some("1001"),
            Some((10000, "USD")),
        ),
        (
            "checkout.session.completed.json",
            Kind::Succeeded,
            Some("pi_3PqR1001TestAbCdEf"),
            Some("1001"),
            Some((10000, "USD")),
        ),
        (
            "charge.refunded.json",
            Kind::Refunded,
            Some("pi_3PqR1001TestAbCdEf"),
            Some("1001"),
            Some((10000, "USD")),
        ),
        (
            "refund.created.json",
            Kind::Refunded,
            Some("pi_3PqR1001TestAbCdEf"),
            Some("1001"),
            Some((10000, "USD")),
        ),
        (
            "charge.dispute.created.json",
            Kind::Disputed,
            Some("pi_3PqR1001TestAbCdEf"),
            None,
            Some((10000, "USD")),
        ),
        (
            "payment_intent.payment_failed.json",
            Kind::Failed,
            Some("pi_3PqS1002TestGhIjKl"),
            Some("1002"),
            Some((4550, "EUR")),
        ),
        (
            "payment_intent.canceled.json",
            Kind::Canceled,
            Some("pi_3PqS1002TestGhIjKl"),
            Some("1002"),
            Some((4550, "EUR")),
        ),
        (
            "payment_intent.succeeded.jpy.json",
            Kind::Succeeded,
            Some("pi_3PqT1003TestMnOpQr"),
            Some("1003"),
            Some((5000, "JPY")),
        ),
        (
            "payment_intent.processing.json",
            Kind::Pending,
            Some("pi_3PqU1004TestStUvWx"),
            Some("1004"),
            Some((8990, "EUR")),
        ),
        (
            "checkout.session.async_payment_failed.json",
            Kind::Failed,
            Some("pi_3PqU1004TestStUvWx"),
            Some("1004"),
            Some((8990, "EUR")),
        ),
        ("thin_event.json", Kind::Ignored, None, None, None),
    ];
    for (file, kind, payment, reference, amount) in cases {
        let n = fixture(file);
        assert_eq!(n.kind, *kind, "{file}");
        assert_eq!(n.payment_id.as_deref(), *payment, "{file}");
        assert_eq!(n.merchant_reference.as_deref(), *reference, "{file}");
        let got = n.amount.map(|m| (m.minor, m.currency.code().to_owned()));
        assert_eq!(got, amount.map(|(m, c)| (m, c.to_owned())), "{file}");
        assert!(n.event_id.starts_with("evt_"), "{file}");
    }
    let n = fixture("charge.succeeded.json");
    assert_eq!(n.customer_email.as_deref(), Some("jane.doe@example.com"));
    assert_eq!(n.amount.unwrap().currency, usd);
    assert!(fixture("payment_intent.payment_failed.json").detail.is_some());
}

#[test]
fn every_listed_event_type_maps() {
    let kinds = [
        ("payment_intent.succeeded", Kind::Succeeded),
        ("payment_intent.processing", Kind::Pending),
        ("payment_intent.payment_failed", Kind::Failed),
        ("payment_intent.canceled", Kind::Canceled),
        ("payment_intent.requires_action", Kind::Ignored),
        ("payment_intent.amount_capturable_updated", Kind::Authorized),
        ("payment_intent.partially_funded", Kind::Pending),
        ("payment_intent.created", Kind::Ignored),
        ("charge.succeeded", Kind::Succeeded),
        ("charge.pending", Kind::Pending),
        ("charge.failed", Kind::Failed),
        ("charge.captured", Kind::Succeeded),
        ("charge.expired", Kind::Canceled),
        ("charge.refunded", Kind::Refunded),
        ("charge.refund.updated", Kind::Ignored),
        ("charge.dispute.created", Kind::Disputed),
        ("charge.dispute.updated", Kind::Ignored),
        ("charge.dispute.closed", Kind::DisputeClosed),
        ("charge.dispute.funds_withdrawn", Kind::Ignored),
        ("charge.dispute.funds_reinstated", Kind::Ignored),
        ("refund.created", Kind::Refunded),
        ("refund.updated", Kind::Ignored),
        ("refund.failed", Kind::RefundFailed),
        ("checkout.session.completed", Kind::Succeeded),
        ("checkout.session.async_payment_succeeded", Kind::Succeeded),
        ("checkout.session.async_payment_failed", Kind::Failed),
        ("checkout.session.expired", Kind::Canceled),
        ("source.chargeable", Kind::Pending),
        ("source.canceled", Kind::Canceled),
        ("source.failed", Kind::Failed),
        ("customer.created", Kind::Ignored),
    ];
    for (t, kind) in kinds {
        let body = format!(
            r#"{{"id":"evt_x","object":"event","type":"{t}","created":1,"data":{{"object":{{"id":"obj_1","amount":500,"amount_received":500,"amount_captured":500,"amount_refunded":500,"amount_capturable":500,"amount_total":500,"currency":"eur","captured":true,"payment_status":"paid","metadata":{{"order_id":"7"}}}}}}}}"#
        );
        let n = parse(body.as_bytes()).unwrap();
        assert_eq!(n.kind, kind, "{t}");
        if kind != Kind::Ignored {
            assert_eq!(n.amount.unwrap().minor, 500, "{t}");
        }
        // A backfill stores exactly the types that are not ignored (a refund update counts:
        // a failed one is a refund failure).
        let used = USED_TYPES.contains(&t);
        assert_eq!(used, kind != Kind::Ignored || t == "charge.refund.updated", "{t}");
    }
    // A failed refund update is a refund failure.
    let body = br#"{"id":"evt_r","object":"event","type":"charge.refund.updated","data":{"object":{"id":"re_1","object":"refund","status":"failed","amount":5,"currency":"usd","charge":"ch_1"}}}"#;
    assert_eq!(parse(body).unwrap().kind, Kind::RefundFailed);
    // An authorization-only charge is authorized, not paid.
    let body = br#"{"id":"evt_a","object":"event","type":"charge.succeeded","data":{"object":{"id":"ch_1","captured":false,"amount":700,"amount_captured":0,"currency":"usd","payment_intent":"pi_1"}}}"#;
    let n = parse(body).unwrap();
    assert_eq!((n.kind, n.amount.unwrap().minor), (Kind::Authorized, 700));
}

/// Events listed through the API come in the API version of their creation: the shapes of
/// versions before 2022-11-15 (charges embedded in a PaymentIntent, a charge's refunds listed)
/// and after (neither) are both read.
#[test]
fn old_and_new_api_versions_read_alike() {
    let old = fixture("api-2020-08-27/payment_intent.succeeded.json");
    let new = fixture("payment_intent.succeeded.json");
    assert_eq!((old.kind, old.amount, &old.payment_id), (new.kind, new.amount, &new.payment_id));
    assert_eq!(old.merchant_reference, new.merchant_reference);
    // The old shape names the customer through its embedded charge.
    assert_eq!(old.customer_email.as_deref(), Some("jane.doe@example.com"));
    let listed = fixture("charge.refunded.json");
    let bare = fixture("charge.refunded.no_refunds_list.json");
    assert_eq!(
        (bare.kind, bare.amount, &bare.payment_id),
        (listed.kind, listed.amount, &listed.payment_id)
    );
    assert!(listed.object_id.is_some());
    assert_eq!(bare.object_id, None, "no refund named without the list");
}

#[test]
fn identify_snapshot_and_thin_events() {
    let e = identify(BODY).unwrap();
    assert_eq!(e, EventId { id: "evt_1".into(), kind: "payment_intent.succeeded".into() });
    let thin = br#"{"id":"evt_test_65R","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered","created":"2024-09-17T06:20:52.246Z","related_object":{"id":"mtr_1","type":"billing.meter","url":"/v1/billing/meters/mtr_1"}}"#;
    assert_eq!(identify(thin).unwrap().id, "evt_test_65R");
    for bad in [
        &br#"not json"#[..],
        br#"{"id":"evt_1","object":"charge","type":"x"}"#,
        br#"{"id":"","object":"event","type":"x"}"#,
        br#"{"object":"event","type":"x"}"#,
        br#"{"id":"a","id":"b","object":"event","type":"x"}"#,
        br#"[1,2]"#,
    ] {
        assert_eq!(
            identify(bad).unwrap_err().code(),
            "malformed_body",
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
