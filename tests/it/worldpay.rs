//! Worldpay end to end: Access Worldpay events (`Event-Signature` per key id) and Corporate
//! Gateway XML order notifications (no signature, `[OK]` answers, hostile XML refused), over
//! real HTTP into the inbox, and through the worker to the outbox against a SQLite shop.

use std::path::Path;

use hyper::StatusCode;
use reconciled::provider::worldpay;

use crate::harness::{shop_config, Daemon, Shop};

const KEY1: &str = "wp-access-key-one-0123456789";
const KEY2: &str = "wp-access-key-two-9876543210";
const XML_PASSWORD: &str = "xml-s3cret-pass";
const ACCESS_TYPE: &str = "application/vnd.worldpay.events-v1.hal+json";

/// The two Worldpay endpoints, appended after the harness's Stripe endpoint.
fn endpoints() -> String {
    format!(
        "[[endpoint]]\nname = \"worldpay\"\nprovider = \"worldpay\"\nkeys = {{ \"1\" = \"{KEY1}\", \"2\" = \"{KEY2}\" }}\n\n\
         [[endpoint]]\nname = \"worldpay-xml\"\nprovider = \"worldpay-xml\"\nbasic_auth = {{ user = \"wp\", password = \"{XML_PASSWORD}\" }}\n"
    )
}

async fn start(dir: &Path, more: &str) -> Daemon {
    Daemon::start_with(dir, "", "", &format!("{}\n{more}", endpoints())).await
}

fn fixture(provider: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(provider).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn access(name: &str) -> Vec<u8> {
    fixture("worldpay", name)
}

fn xml(name: &str) -> Vec<u8> {
    fixture("worldpay-xml", name)
}

/// Standard base64 (RFC 4648, padded), for the basic-auth header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn post_access(d: &Daemon, signature: &str, body: &[u8]) -> (StatusCode, String) {
    let headers = [("event-signature", signature), ("content-type", ACCESS_TYPE)];
    d.post("/webhooks/worldpay", &headers, body.to_vec()).await
}

async fn send_access(d: &Daemon, body: &[u8]) {
    let (status, text) = post_access(d, &worldpay::sign("1", KEY1.as_bytes(), body), body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

async fn post_xml(d: &Daemon, body: &[u8]) -> (StatusCode, String) {
    let auth = format!("Basic {}", base64(format!("wp:{XML_PASSWORD}").as_bytes()));
    let headers = [("authorization", auth.as_str()), ("content-type", "text/xml")];
    d.post("/webhooks/worldpay-xml", &headers, body.to_vec()).await
}

async fn send_xml(d: &Daemon, body: &[u8]) {
    let (status, text) = post_xml(d, body).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "[OK]"));
}

fn a(kind: &str, order: &str, amount: &str, template: &str) -> (String, String, String, String) {
    (kind.into(), order.into(), amount.into(), template.into())
}

fn stored_headers(d: &Daemon) -> Vec<String> {
    let conn = d.read();
    let mut stmt = conn.prepare("SELECT headers FROM inbox ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn base64_matches_rfc4648() {
    for (plain, encoded) in
        [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")]
    {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_events_are_verified_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "").await;
    let body = access("authorized.json");
    let id = "b1e0f7a2-5c3d-4e8f-9a10-2001a0000001";

    // Refused before anything is stored: wrong secret, unknown key id, tampered body,
    // garbled and missing headers.
    let tampered = String::from_utf8(body.clone()).unwrap().replace("2500", "25").into_bytes();
    let refusals = [
        (worldpay::sign("1", KEY2.as_bytes(), &body), body.clone(), "no signature matches"),
        (
            worldpay::sign("3", KEY1.as_bytes(), &body),
            body.clone(),
            "no entry for a configured key id",
        ),
        (worldpay::sign("1", KEY1.as_bytes(), &body), tampered, "no signature matches"),
        ("1/SHA256".to_owned(), body.clone(), "malformed Event-Signature header"),
    ];
    for (signature, body, reason) in refusals {
        let (status, text) = post_access(&d, &signature, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{signature}: {text}");
        assert!(text.contains(reason), "{reason:?} not in {text:?}");
    }
    let (status, text) = d.post("/webhooks/worldpay", &[], body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("missing Event-Signature header"), "{text}");
    assert!(d.rows().is_empty());

    // Valid, then the same event again (signed with the other key this time, both entries).
    let (status, text) = post_access(&d, &worldpay::sign("1", KEY1.as_bytes(), &body), &body).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "stored\n"));
    let both = format!(
        "{},{}",
        worldpay::sign("2", KEY2.as_bytes(), &body),
        worldpay::sign("1", "stale".as_bytes(), &body)
    );
    let (status, text) = post_access(&d, &both, &body).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "duplicate\n"));
    // Upper-case hex.
    let upper = worldpay::sign("2", KEY2.as_bytes(), &body).to_uppercase();
    let (status, _) = post_access(&d, &upper, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d.rows(), vec![(id.to_owned(), 3)]);
    let kept = &stored_headers(&d)[0];
    assert!(kept.contains("event-signature") && kept.contains(ACCESS_TYPE), "{kept}");

    // A different event is a new row.
    send_access(&d, &access("sentForSettlement.json")).await;
    assert_eq!(d.rows().len(), 2);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_notifications_are_acknowledged_with_ok_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "").await;
    send_xml(&d, &xml("AUTHORISED.xml")).await;
    send_xml(&d, &xml("AUTHORISED.xml")).await;
    send_xml(&d, &xml("CAPTURED.xml")).await;
    assert_eq!(
        d.rows(),
        vec![
            ("SHOPEUR/2001:AUTHORISED:AUTHORISED:2024-05-14".to_owned(), 2),
            ("SHOPEUR/2001:CAPTURED:CAPTURED:2024-05-14".to_owned(), 1)
        ]
    );
    for kept in stored_headers(&d) {
        assert_eq!(kept, r#"{"content-type":"text/xml"}"#, "no credentials are stored");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_xml_is_refused_and_the_daemon_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "").await;
    for (file, reason) in [
        ("xxe-external-entity.xml", "internal subset"),
        ("billion-laughs.xml", "internal subset"),
        ("deeply-nested.xml", "nested deeper"),
        ("undeclared-entity.xml", "refused text"),
    ] {
        let (status, text) = post_xml(&d, &xml(file)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{file}: {text}");
        assert!(text.contains(reason), "{file}: {text}");
        assert!(!text.contains("root:"), "{file}: nothing of /etc/passwd");
    }
    assert!(d.rows().is_empty());
    let (status, _) = d.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    send_xml(&d, &xml("CAPTURED.xml")).await;
    assert_eq!(d.rows().len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_events_reach_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(2001, "pending", "25.00", "EUR");
    shop.add(2002, "pending", "45.50", "EUR");
    shop.add(2003, "pending", "19.99", "GBP");
    let d = start(dir.path(), &shop_config(&shop, crate::harness::NOTICE_AT_ONCE)).await;
    for f in [
        "authorized.json",
        "sentForSettlement.json",
        "settled.json", // the same payment settles: a no-op
        "sentForAuthorization.json",
        "refused.json",
        "sentForRefund.json",
        "informationRequested.json",
        "tokenCreated.json",
    ] {
        send_access(&d, &access(f)).await;
        d.settle().await;
    }
    let actions = d.actions();
    assert_eq!(
        actions[..4],
        [
            a("fulfil", "2001", "25.00 EUR", ""),
            a("notify_customer", "2001", "25.00 EUR", "order_confirmed"),
            a("notify_customer", "2003", "19.99 GBP", "payment_pending"),
            a("notify_customer", "2002", "45.50 EUR", "payment_failed"),
        ]
    );
    // The refund and the chargeback: each to an admin.
    let review = a("review", "2001", "25.00 EUR", "");
    assert_eq!(actions[4..], [review.clone(), review]);
    assert_eq!(d.statuses(), ["done", "done", "done", "done", "done", "done", "done", "ignored"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_notifications_reach_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(2001, "pending", "25.00", "EUR");
    shop.add(2002, "pending", "45.50", "EUR");
    shop.add(2003, "pending", "19.99", "GBP");
    shop.add(2005, "pending", "5000", "JPY");
    let d = start(dir.path(), &shop_config(&shop, crate::harness::NOTICE_AT_ONCE)).await;
    let settled = String::from_utf8(xml("CAPTURED.xml")).unwrap().replace("CAPTURED", "SETTLED");
    for body in [
        xml("AUTHORISED.xml"),
        xml("CAPTURED.xml"),
        settled.into_bytes(), // the same order settles: a no-op
        xml("CAPTURED.xml"),  // a resend: acknowledged, not stored again
        xml("SENT_FOR_AUTHORISATION.xml"),
        xml("REFUSED.xml"),
        xml("CAPTURED.jpy.xml"),
        xml("REFUNDED.xml"),
        xml("CHARGED_BACK.xml"),
    ] {
        send_xml(&d, &body).await;
        d.settle().await;
    }
    let actions = d.actions();
    assert_eq!(
        actions[..6],
        [
            a("fulfil", "2001", "25.00 EUR", ""),
            a("notify_customer", "2001", "25.00 EUR", "order_confirmed"),
            a("notify_customer", "2003", "19.99 GBP", "payment_pending"),
            a("notify_customer", "2002", "45.50 EUR", "payment_failed"),
            a("fulfil", "2005", "5000 JPY", ""),
            a("notify_customer", "2005", "5000 JPY", "order_confirmed"),
        ]
    );
    // The refund and the chargeback: each to an admin.
    let review = a("review", "2001", "25.00 EUR", "");
    assert_eq!(actions[6..], [review.clone(), review]);
    assert_eq!(d.rows().len(), 8);
    assert_eq!(d.statuses(), vec!["done"; 8]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_for_another_merchant_code_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "merchant_codes = [\"SHOPEUR\"]").await;
    send_xml(&d, &xml("CAPTURED.xml")).await;
    let (status, text) = post_xml(&d, &xml("SENT_FOR_AUTHORISATION.xml")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("merchantCode is not this endpoint's"), "{text}");
    assert_eq!(d.rows().len(), 1);
    d.stop().await;
}
