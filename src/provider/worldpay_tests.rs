//! Unit tests of the Worldpay provider: signatures, refusals and the mapping.

use super::*;

const BODY: &[u8] = br#"{"eventId":"bb55ca5a-e05c-47e1-8e94-e88bac1a0a17","eventTimestamp":"2018-06-13T14:18:13.407","eventDetails":{"classification":"payment","transactionReference":"2001","type":"authorized","amount":{"value":2500,"currencyCode":"EUR"}}}"#;

fn keys(list: &[(&str, &str)]) -> Vec<(String, MacKey)> {
    list.iter().map(|(id, s)| ((*id).to_owned(), MacKey::new(&Secret::new(*s)))).collect()
}

#[test]
fn known_vector() {
    // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), RFC 4231 style
    // public test vector.
    assert_eq!(
        signature(b"key", b"The quick brown fox jumps over the lazy dog"),
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
    assert_eq!(
        sign("7", b"key", b"The quick brown fox jumps over the lazy dog"),
        "7/SHA256/f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
}

#[test]
fn accepted_headers() {
    let k = keys(&[("1", "old-secret"), ("2", "new-secret")]);
    let s1 = signature(b"old-secret", BODY);
    let s2 = signature(b"new-secret", BODY);
    let junk = "0".repeat(64);
    let cases = [
        format!("1/SHA256/{s1}"),
        format!("2/SHA256/{s2}"),
        format!("1/SHA256/{s1},2/SHA256/{s2}"),
        format!("2/SHA256/{s2},1/SHA256/{s1}"),
        format!("2/SHA256/{s2}, 1/SHA256/{junk}"),
        format!("1/SHA256/{junk},2/SHA256/{s2}"),
        format!("1/SHA256/{}", s1.to_uppercase()),
        format!("1/sha256/{s1}"),
        format!("9/SHA256/{junk},1/SHA256/{s1}"),
        format!("1/SHA512/{},1/SHA256/{s1}", "0".repeat(128)),
        format!(" 1 / SHA256 / {s1} "),
    ];
    for header in cases {
        verify(&k, &header, BODY).unwrap_or_else(|e| panic!("{header}: {e}"));
    }
}

#[test]
fn refused_headers() {
    let k = keys(&[("1", "old-secret"), ("2", "new-secret")]);
    let s1 = signature(b"old-secret", BODY);
    let junk = "0".repeat(64);
    let tampered = BODY.iter().map(|b| if *b == b'5' { b'6' } else { *b }).collect::<Vec<_>>();
    let cases: Vec<(String, &[u8], &str, Option<&str>)> = vec![
        // Tampered body, wrong secret, a signature under the other key's id.
        (format!("1/SHA256/{s1}"), &tampered, "bad_signature", None),
        (sign("1", b"guess", BODY), BODY, "bad_signature", None),
        (format!("2/SHA256/{s1}"), BODY, "bad_signature", None),
        (format!("1/SHA256/{junk},2/SHA256/{junk}"), BODY, "bad_signature", None),
        // Only unknown key ids: distinguishable from a wrong secret.
        (
            sign("3", b"old-secret", BODY),
            BODY,
            "malformed_header",
            Some("no entry for a configured key id"),
        ),
        (
            sign("10", b"new-secret", BODY),
            BODY,
            "malformed_header",
            Some("no entry for a configured key id"),
        ),
        // Garbled.
        (String::new(), BODY, "malformed_header", None),
        ("garbage".into(), BODY, "malformed_header", None),
        (format!("1/{s1}"), BODY, "malformed_header", None),
        (format!("1/SHA256/{s1}/x"), BODY, "malformed_header", None),
        (format!("/SHA256/{s1}"), BODY, "malformed_header", None),
        (format!("1/SHA256/{s1},"), BODY, "malformed_header", None),
        (
            "1/SHA256/xyz".into(),
            BODY,
            "malformed_header",
            Some("the SHA256 signature is not 64 hex digits"),
        ),
        (
            format!("1/SHA256/{}", &s1[..62]),
            BODY,
            "malformed_header",
            Some("the SHA256 signature is not 64 hex digits"),
        ),
        (
            format!("1/MD5/{s1}"),
            BODY,
            "malformed_header",
            Some("no SHA256 entry (only other algorithms)"),
        ),
        (vec![format!("1/SHA256/{s1}"); 17].join(","), BODY, "malformed_header", None),
    ];
    for (header, body, code, detail) in cases {
        let err = verify(&k, &header, body).unwrap_err();
        assert_eq!(err.code(), code, "{header:?}");
        if let (Some(want), Rejection::MalformedHeader { detail: got, .. }) = (detail, &err) {
            assert_eq!(*got, want, "{header:?}");
        }
    }
    // Sixteen entries are still a rotation, not an attack.
    verify(&k, &vec![format!("1/SHA256/{s1}"); 16].join(","), BODY).unwrap();
}

#[test]
fn accept_reads_the_header_and_the_envelope() {
    let endpoint = &Settings::new(vec![("1".to_owned(), Secret::new("s1"))]);
    let mut headers = HeaderMap::new();
    assert_eq!(
        accept(endpoint, &headers, BODY).unwrap_err(),
        Rejection::MissingHeader("Event-Signature")
    );
    headers.insert(HEADER, sign("1", b"s1", BODY).parse().unwrap());
    headers.insert("authorization", "Basic eDp5".parse().unwrap());
    headers.insert("content-type", "application/vnd.worldpay.events-v1.hal+json".parse().unwrap());
    let a = accept(endpoint, &headers, BODY).unwrap();
    assert_eq!(a.dedup_key, "bb55ca5a-e05c-47e1-8e94-e88bac1a0a17");
    assert_eq!(a.event_type.as_deref(), Some("authorized"));
    let kept: Value = serde_json::from_str(&a.headers_json).unwrap();
    assert!(kept.get("event-signature").is_some() && kept.get("content-type").is_some());
    assert!(kept.get("authorization").is_none());
    // Signed garbage is refused as a body, not as a signature.
    let garbage = b"{\"eventId\":\"\"}";
    headers.insert(HEADER, sign("1", b"s1", garbage).parse().unwrap());
    assert_eq!(accept(endpoint, &headers, garbage).unwrap_err().code(), "malformed_body");
}

#[test]
fn identify_refuses_what_is_not_an_event() {
    assert_eq!(
        identify(BODY).unwrap(),
        EventId { id: "bb55ca5a-e05c-47e1-8e94-e88bac1a0a17".into(), kind: "authorized".into() }
    );
    let long = format!(r#"{{"eventId":"{}","eventDetails":{{"type":"x"}}}}"#, "a".repeat(256));
    for bad in [
        &b"not json"[..],
        b"[1]",
        br#"{"eventDetails":{"type":"authorized"}}"#,
        br#"{"eventId":"","eventDetails":{"type":"authorized"}}"#,
        br#"{"eventId":"a\nb","eventDetails":{"type":"authorized"}}"#,
        br#"{"eventId":"e1"}"#,
        br#"{"eventId":"e1","eventDetails":{}}"#,
        br#"{"eventId":"e1","eventDetails":{"type":""}}"#,
        br#"{"eventId":7,"eventDetails":{"type":"authorized"}}"#,
        br#"{"eventId":"a","eventId":"b","eventDetails":{"type":"authorized"}}"#,
        long.as_bytes(),
    ] {
        assert_eq!(
            identify(bad).unwrap_err().code(),
            "malformed_body",
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn event(classification: &str, kind: &str, amount: &str) -> Vec<u8> {
    format!(
        r#"{{"eventId":"e-{kind}","eventTimestamp":"2024-03-01T10:00:00.123","eventDetails":{{"classification":"{classification}","transactionReference":"2001","downstreamReference":"3378792436","type":"{kind}","date":"2024-03-01"{amount}}}}}"#
    )
    .into_bytes()
}

#[test]
fn every_listed_type_maps() {
    let payment = [
        ("sentForAuthorization", Kind::Pending),
        ("authorized", Kind::Authorized),
        ("sentForSettlement", Kind::Succeeded),
        ("settled", Kind::Succeeded),
        ("settlementFailed", Kind::Disputed),
        ("cancelled", Kind::Canceled),
        ("refused", Kind::Failed),
        ("expired", Kind::Canceled),
        ("error", Kind::Failed),
        ("sentForRefund", Kind::Refunded),
        ("refundFailed", Kind::RefundFailed),
        ("cancelledByCustomer", Kind::Canceled),
        ("requestExpired", Kind::Canceled),
        ("tokenCreated", Kind::Ignored),
        ("chargedBack", Kind::Disputed),
        ("chargebackReversed", Kind::DisputeClosed),
        ("somethingNew", Kind::Ignored),
    ];
    let amount = r#","amount":{"value":2500,"currencyCode":"EUR"}"#;
    for (t, kind) in payment {
        let n = parse(&event("payment", t, amount)).unwrap();
        assert_eq!(n.kind, kind, "{t}");
        assert_eq!(n.raw_type, t);
        assert_eq!(n.provider, super::super::ProviderKind::Worldpay);
        assert_eq!(n.event_id, format!("e-{t}"));
        assert_eq!(n.payment_id.as_deref(), Some("2001"), "{t}");
        assert_eq!(n.merchant_reference.as_deref(), Some("2001"), "{t}");
        assert_eq!(
            n.amount.map(|m| (m.minor, m.currency.code().to_owned())),
            Some((2500, "EUR".to_owned())),
            "{t}"
        );
        assert_eq!(n.occurred_at, 1_709_287_200, "{t}");
        if kind == Kind::Ignored {
            assert!(n.detail.is_some(), "{t}");
        }
    }
    for t in ["informationRequested", "chargebackWon", "anythingElse"] {
        let n = parse(&event("chargeback", t, amount)).unwrap();
        assert_eq!(n.kind, Kind::Disputed, "{t}");
        assert_eq!(n.detail, Some(format!("chargeback: {t}")));
    }
    let n = parse(&event("payout", "sentForSettlement", amount)).unwrap();
    assert_eq!(n.kind, Kind::Ignored);
}

#[test]
fn amounts() {
    let cases: &[(&str, Option<(i64, &str)>)] = &[
        ("", None),
        (r#","amount":null"#, None),
        (r#","amount":{"value":5000,"currencyCode":"JPY"}"#, Some((5000, "JPY"))),
        (r#","amount":{"value":12345,"currencyCode":"KWD"}"#, Some((12345, "KWD"))),
        (r#","amount":{"value":0,"currencyCode":"GBP"}"#, Some((0, "GBP"))),
    ];
    for (json, want) in cases {
        let n = parse(&event("payment", "authorized", json)).unwrap();
        let got = n.amount.map(|m| (m.minor, m.currency.code().to_owned()));
        assert_eq!(got, want.map(|(m, c)| (m, c.to_owned())), "{json}");
    }
    for bad in [
        r#","amount":{"value":"25.00","currencyCode":"EUR"}"#,
        r#","amount":{"value":25.5,"currencyCode":"EUR"}"#,
        r#","amount":{"value":2500}"#,
        r#","amount":{"value":2500,"currencyCode":"XYZ"}"#,
    ] {
        assert!(parse(&event("payment", "authorized", bad)).is_err(), "{bad}");
    }
}

#[test]
fn timestamps() {
    assert_eq!(timestamp("1970-01-01T00:00:00"), Some(0));
    assert_eq!(timestamp("2018-06-13T14:18:13.407"), Some(1_528_899_493));
    assert_eq!(timestamp("2024-02-29T23:59:59"), Some(1_709_251_199));
    assert_eq!(timestamp("2000-03-01 00:00:00.5"), Some(951_868_800));
    for bad in [
        "",
        "2018-06-13",
        "2018-06-13T14:18",
        "2018-06-13T14:18:13Z",
        "2018-06-13T14:18:13.",
        "2018-06-13T14:18:13+01:00",
        "2023-02-29T00:00:00",
        "2018-13-01T00:00:00",
        "2018-06-31T00:00:00",
        "2018-06-13T24:00:00",
        "+018-06-13T14:18:13",
        "2018-06-13T14:1a:13",
        "２０18-06-13T14:18:13",
    ] {
        assert_eq!(timestamp(bad), None, "{bad}");
    }
    let n = parse(br#"{"eventId":"e","eventTimestamp":"soon","eventDetails":{"type":"x"}}"#);
    assert_eq!(n.unwrap().occurred_at, 0);
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/worldpay/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn fixtures_map_to_canonical_notifications() {
    type Expected<'a> = (&'a str, Kind, &'a str, Option<(i64, &'a str)>);
    let cases: &[Expected<'_>] = &[
        ("sentForAuthorization.json", Kind::Pending, "2003", Some((1999, "GBP"))),
        ("authorized.json", Kind::Authorized, "2001", Some((2500, "EUR"))),
        ("sentForSettlement.json", Kind::Succeeded, "2001", Some((2500, "EUR"))),
        ("settled.json", Kind::Succeeded, "2001", Some((2500, "EUR"))),
        ("refused.json", Kind::Failed, "2002", Some((4550, "EUR"))),
        ("sentForRefund.json", Kind::Refunded, "2001", Some((2500, "EUR"))),
        ("informationRequested.json", Kind::Disputed, "2001", Some((2500, "EUR"))),
        ("tokenCreated.json", Kind::Ignored, "2004", None),
    ];
    for (file, kind, reference, amount) in cases {
        let body = fixture(file);
        let n = parse(&body).unwrap();
        assert_eq!(n.kind, *kind, "{file}");
        assert_eq!(n.payment_id.as_deref(), Some(*reference), "{file}");
        assert_eq!(n.merchant_reference.as_deref(), Some(*reference), "{file}");
        let got = n.amount.map(|m| (m.minor, m.currency.code().to_owned()));
        assert_eq!(got, amount.map(|(m, c)| (m, c.to_owned())), "{file}");
        assert!(n.occurred_at > 1_700_000_000, "{file}");
        let id = identify(&body).unwrap();
        assert_eq!((id.id, id.kind), (n.event_id, n.raw_type), "{file}");
    }
    assert_eq!(
        parse(&fixture("sentForRefund.json")).unwrap().object_id.as_deref(),
        Some("refund-2001-1")
    );
}
