//! PayPal end to end: REST webhooks (RSA-signed transmissions, pinned and downloaded
//! certificates, refused certificate URLs) and IPN (stored unverified, answered with an empty
//! 200, verified by the worker's postback), over real HTTP into the inbox and through the
//! worker to the outbox against a SQLite shop. Local HTTPS servers with a test CA play PayPal's
//! certificate URL and IPN postback.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::StatusCode;
use reconciled::provider::paypal;

use crate::harness::{fixture_in, shop_config, Daemon, Shop};
use crate::tls::{fixture_path, TlsServer};

pub(crate) const WEBHOOK_ID: &str = "1JE4291016473214C";
/// A certificate URL on PayPal's default host: with a pinned certificate nothing is fetched.
pub(crate) const PAYPAL_CERT_URL: &str =
    "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77";

pub(crate) fn endpoint(name: &str, certs: &[&str], more: &str) -> String {
    let certs: Vec<String> = certs.iter().map(|c| format!("\"{}\"", fixture_path(c))).collect();
    format!(
        "[[endpoint]]\nname = \"{name}\"\nprovider = \"paypal\"\nwebhook_id = \"{WEBHOOK_ID}\"\ncerts = [{}]\n{more}\n",
        certs.join(", ")
    )
}

pub(crate) fn key() -> Vec<u8> {
    std::fs::read(fixture_path("test-only-signing.key.pem")).unwrap()
}

/// PayPal's five transmission headers for `body`, signed with `key`.
fn transmission(
    body: &[u8],
    webhook_id: &str,
    cert_url: &str,
    key: &[u8],
) -> Vec<(String, String)> {
    let id = format!("b2384410-f8d2-11e8-{:012x}", reconciled::time::now_ms());
    let time = "2026-11-22T10:00:00Z";
    let sig =
        paypal::sign(key, paypal::signed_message(&id, time, webhook_id, body).as_bytes()).unwrap();
    vec![
        ("paypal-transmission-id".into(), id),
        ("paypal-transmission-time".into(), time.into()),
        ("paypal-transmission-sig".into(), sig),
        ("paypal-cert-url".into(), cert_url.into()),
        ("paypal-auth-algo".into(), "SHA256withRSA".into()),
        ("content-type".into(), "application/json".into()),
    ]
}

pub(crate) async fn post(
    d: &Daemon,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (StatusCode, String) {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    d.post(path, &h, body.to_vec()).await
}

async fn send(d: &Daemon, body: &[u8]) {
    let (status, text) =
        post(d, "/webhooks/paypal", &transmission(body, WEBHOOK_ID, PAYPAL_CERT_URL, &key()), body)
            .await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

pub(crate) fn event(name: &str) -> Vec<u8> {
    fixture_in("paypal", name)
}

fn failures(d: &Daemon) -> Vec<String> {
    let conn = d.read();
    let mut stmt = conn.prepare("SELECT reason FROM verify_failures ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

pub(crate) fn a(
    kind: &str,
    order: &str,
    amount: &str,
    template: &str,
) -> (String, String, String, String) {
    (kind.into(), order.into(), amount.into(), template.into())
}

/// Our signed string and verifier agree with independent tools: Python's zlib for the CRC-32
/// and the openssl command line for the RSA signature.
#[test]
fn signatures_made_by_openssl_verify() {
    let body = event("PAYMENT.CAPTURE.COMPLETED.json");
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body.json");
    std::fs::write(&body_path, &body).unwrap();
    let crc = Command::new("python3")
        .args(["-c", "import sys, zlib; print(zlib.crc32(open(sys.argv[1], 'rb').read()))"])
        .arg(&body_path)
        .output()
        .expect("python3 runs");
    let crc = String::from_utf8(crc.stdout).unwrap().trim().to_owned();
    let message = paypal::signed_message("tx-1", "2026-11-22T10:00:00Z", WEBHOOK_ID, &body);
    assert_eq!(message, format!("tx-1|2026-11-22T10:00:00Z|{WEBHOOK_ID}|{crc}"));

    let msg_path = dir.path().join("message");
    std::fs::write(&msg_path, &message).unwrap();
    let sig = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", &fixture_path("test-only-signing.key.pem")])
        .arg(&msg_path)
        .output()
        .expect("openssl runs");
    assert!(sig.status.success(), "{}", String::from_utf8_lossy(&sig.stderr));
    let cert = paypal::Certificate::from_pem(
        &std::fs::read(fixture_path("test-only-signing.pem")).unwrap(),
    )
    .unwrap();
    assert!(cert.verifies(message.as_bytes(), &sig.stdout));
    assert!(!cert.verifies(message.replace("tx-1", "tx-2").as_bytes(), &sig.stdout));
    // And ours is what openssl would make (PKCS#1 v1.5 is deterministic).
    let ours = paypal::sign(&key(), message.as_bytes()).unwrap();
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(ours).unwrap(), sig.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_certificate_verifies_and_every_bad_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d =
        Daemon::start_with(dir.path(), "", "", &endpoint("paypal", &["test-only-signing.pem"], ""))
            .await;
    let body = event("PAYMENT.CAPTURE.COMPLETED.json");
    let good = transmission(&body, WEBHOOK_ID, PAYPAL_CERT_URL, &key());
    let tls_key = std::fs::read(fixture_path("test-only-tls-127.0.0.1.key.pem")).unwrap();
    let tampered = String::from_utf8(body.clone()).unwrap().replace("25.00", "2.50").into_bytes();
    let with = |name: &str, value: &str| {
        let mut h = good.clone();
        h.iter_mut().find(|(k, _)| k == name).unwrap().1 = value.to_owned();
        h
    };
    let without = |name: &str| good.iter().filter(|(k, _)| k != name).cloned().collect::<Vec<_>>();
    type Headers = Vec<(String, String)>;
    let cases: Vec<(Headers, Vec<u8>, &str)> = vec![
        (good.clone(), tampered, "no signature matches"),
        (
            transmission(&body, WEBHOOK_ID, PAYPAL_CERT_URL, &tls_key),
            body.clone(),
            "no signature matches",
        ),
        (
            transmission(&body, "ANOTHER-WEBHOOK", PAYPAL_CERT_URL, &key()),
            body.clone(),
            "no signature matches",
        ),
        (with("paypal-transmission-id", "replayed-id"), body.clone(), "no signature matches"),
        (
            transmission(&body, WEBHOOK_ID, "https://evil.example/cert.pem", &key()),
            body.clone(),
            "PAYPAL-CERT-URL refused: its host is not in cert_hosts",
        ),
        (
            transmission(
                &body,
                WEBHOOK_ID,
                "http://api.paypal.com/v1/notifications/certs/CERT-1",
                &key(),
            ),
            body.clone(),
            "PAYPAL-CERT-URL refused: not https",
        ),
        (
            transmission(
                &body,
                WEBHOOK_ID,
                "https://api.paypal.com.evil.example/certs/CERT-1",
                &key(),
            ),
            body.clone(),
            "its host is not in cert_hosts",
        ),
        (
            transmission(&body, WEBHOOK_ID, "https://x@api.paypal.com/certs/CERT-1", &key()),
            body.clone(),
            "it has user info",
        ),
        (with("paypal-auth-algo", "SHA1withRSA"), body.clone(), "only SHA256withRSA"),
        (with("paypal-transmission-sig", "%%%"), body.clone(), "not base64"),
        (without("paypal-transmission-sig"), body.clone(), "missing PAYPAL-TRANSMISSION-SIG"),
        (without("paypal-cert-url"), body.clone(), "missing PAYPAL-CERT-URL"),
    ];
    for (headers, body, reason) in cases {
        let (status, text) = post(&d, "/webhooks/paypal", &headers, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reason}: {text}");
        assert!(text.contains(reason), "{reason:?} not in {text:?}");
    }
    assert!(d.rows().is_empty());
    // Failure records are written behind the answers.
    d.wait_for("12 failure records", |c| {
        c.query_row("SELECT count(*) FROM verify_failures", [], |r| r.get::<_, i64>(0)).unwrap()
            == 12
    })
    .await;

    let (status, text) = post(&d, "/webhooks/paypal", &good, &body).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "stored\n"));
    // A resend (new transmission, same event id) is a duplicate.
    send(&d, &body).await;
    assert_eq!(d.rows(), vec![("WH-0A1B2C3D4E5F60718-3001COMPLETED".to_owned(), 2)]);
    let kept: String = d.read().query_row("SELECT headers FROM inbox", [], |r| r.get(0)).unwrap();
    assert!(
        !kept.contains("paypal-transmission-sig") && kept.contains("paypal-cert-url"),
        "{kept}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_foreign_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}{}",
        endpoint("expired", &["test-only-signing-expired.pem"], ""),
        endpoint("subject", &["test-only-signing-wrong-subject.pem"], "")
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let body = event("PAYMENT.CAPTURE.COMPLETED.json");
    let headers = transmission(&body, WEBHOOK_ID, PAYPAL_CERT_URL, &key());
    let (status, text) = post(&d, "/webhooks/expired", &headers, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("the signing certificate has expired"), "{text}");
    let (status, text) = post(&d, "/webhooks/subject", &headers, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("subject is not in cert_subjects"), "{text}");
    assert!(d.rows().is_empty());
    d.wait_for("2 failure records", |c| {
        c.query_row("SELECT count(*) FROM verify_failures", [], |r| r.get::<_, i64>(0)).unwrap()
            == 2
    })
    .await;
    assert_eq!(failures(&d), ["bad_certificate", "bad_certificate"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_downloaded_only_from_allowed_hosts_and_cached() {
    let cert = std::fs::read(fixture_path("test-only-signing.pem")).unwrap();
    let expired = std::fs::read(fixture_path("test-only-signing-expired.pem")).unwrap();
    let paypal_side = TlsServer::start(move |path, _| match path {
        "/v1/notifications/certs/CERT-good" => (200, cert.clone()),
        "/v1/notifications/certs/CERT-expired" => (200, expired.clone()),
        "/v1/notifications/certs/CERT-garbage" => (200, b"not a certificate".to_vec()),
        _ => (404, vec![]),
    })
    .await;
    let signing = std::fs::read(fixture_path("test-only-signing.pem")).unwrap();
    let foreign = TlsServer::start(move |_, _| (200, signing.clone())).await;
    // An allowed host:port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let more = format!(
        "cert_url_fetch = true\ncert_hosts = [\"{}\", \"{closed}\"]\ntls_ca_file = \"{}\"",
        paypal_side.addr,
        fixture_path("test-only-ca.pem")
    );
    let d = Daemon::start_with(dir.path(), "", "", &endpoint("paypal", &[], &more)).await;
    let url = |server: std::net::SocketAddr, name: &str| {
        format!("https://{server}/v1/notifications/certs/{name}")
    };
    let body = event("PAYMENT.CAPTURE.COMPLETED.json");

    // A foreign host: refused, and not one request reaches it.
    let headers = transmission(&body, WEBHOOK_ID, &url(foreign.addr, "CERT-good"), &key());
    let (status, text) = post(&d, "/webhooks/paypal", &headers, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("its host is not in cert_hosts"), "{text}");
    assert_eq!(foreign.count(), 0);

    // The allowed host, in a form a URL parser would rewrite into the good certificate's URL:
    // refused as written, and not downloaded.
    let encoded = url(paypal_side.addr, "CERT-good").replace("CERT-good", "%43ERT-good");
    let headers = transmission(&body, WEBHOOK_ID, &encoded, &key());
    let (status, text) = post(&d, "/webhooks/paypal", &headers, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("its path is not /v1/notifications/certs/{name}"), "{text}");
    assert_eq!(paypal_side.count(), 0);

    // An allowed host that is down: 503, so PayPal tries again later.
    let headers = transmission(&body, WEBHOOK_ID, &url(closed, "CERT-good"), &key());
    let (status, text) = post(&d, "/webhooks/paypal", &headers, &body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("could not be downloaded"), "{text}");

    // Expired or unusable documents at an allowed URL: refused.
    for (name, reason) in [("CERT-expired", "has expired"), ("CERT-garbage", "is unusable")] {
        let headers = transmission(&body, WEBHOOK_ID, &url(paypal_side.addr, name), &key());
        let (status, text) = post(&d, "/webhooks/paypal", &headers, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(reason), "{reason}: {text}");
    }
    // Asking again within the back-off gets the same answer without another download.
    let before = paypal_side.count();
    let headers = transmission(&body, WEBHOOK_ID, &url(paypal_side.addr, "CERT-garbage"), &key());
    let (status, text) = post(&d, "/webhooks/paypal", &headers, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("is unusable"), "{text}");
    assert_eq!(paypal_side.count(), before);
    assert!(d.rows().is_empty());

    // The good certificate: downloaded once, then served from the cache.
    let before = paypal_side.count();
    send_with_url(&d, &body, &url(paypal_side.addr, "CERT-good")).await;
    send_with_url(&d, &event("PAYMENT.CAPTURE.DENIED.json"), &url(paypal_side.addr, "CERT-good"))
        .await;
    assert_eq!(paypal_side.count(), before + 1, "one download for two requests");
    assert_eq!(d.rows().len(), 2);
    d.stop().await;
}

async fn send_with_url(d: &Daemon, body: &[u8], url: &str) {
    let (status, text) =
        post(d, "/webhooks/paypal", &transmission(body, WEBHOOK_ID, url, &key()), body).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "stored\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_reach_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(3001, "pending", "25.00", "EUR");
    shop.add(3002, "pending", "45.50", "EUR");
    shop.add(3003, "pending", "19.99", "GBP");
    shop.add(3005, "pending", "5000", "JPY");
    let extra = format!(
        "{}{}",
        endpoint("paypal", &["test-only-signing.pem"], ""),
        shop_config(&shop, crate::harness::NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    for f in [
        "CHECKOUT.ORDER.APPROVED.json",
        "PAYMENT.CAPTURE.COMPLETED.json",
        "PAYMENT.CAPTURE.PENDING.json",
        "PAYMENT.CAPTURE.DENIED.json",
        "PAYMENT.CAPTURE.COMPLETED.jpy.json",
        "PAYMENT.CAPTURE.REFUNDED.json",
        "CUSTOMER.DISPUTE.CREATED.json",
    ] {
        send(&d, &event(f)).await;
        d.settle().await;
    }
    let actions = d.actions();
    assert_eq!(
        actions[..6],
        [
            a("fulfil", "3001", "25.00 EUR", ""),
            a("notify_customer", "3001", "25.00 EUR", "order_confirmed"),
            a("notify_customer", "3003", "19.99 GBP", "payment_pending"),
            a("notify_customer", "3002", "45.50 EUR", "payment_failed"),
            a("fulfil", "3005", "5000 JPY", ""),
            a("notify_customer", "3005", "5000 JPY", "order_confirmed"),
        ]
    );
    // The refund and the dispute: each to an admin.
    let review = a("review", "3001", "25.00 EUR", "");
    assert_eq!(actions[6..], [review.clone(), review]);
    assert_eq!(d.statuses(), ["ignored", "done", "done", "done", "done", "done", "done"]);
    d.stop().await;
}

// ---------------------------------------------------------------------------------------
// IPN

fn ipn(name: &str) -> Vec<u8> {
    fixture_in("paypal-ipn", name)
}

fn ipn_endpoint(name: &str, verify: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"{name}\"\nprovider = \"paypal-ipn\"\nreceiver_email = \"Shop@Example.com\"\n\
         receiver_id = \"S8XGHLYDW9T3S\"\nverify_url = \"{verify}\"\ntls_ca_file = \"{}\"\n",
        fixture_path("test-only-ca.pem")
    )
}

async fn send_ipn(d: &Daemon, endpoint: &str, body: &[u8]) {
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let (status, text) = d.post(&format!("/webhooks/{endpoint}"), &headers, body.to_vec()).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, ""), "IPN wants an empty 200");
}

/// A postback server that answers VERIFIED unless the message carries `forged=1`.
pub(crate) async fn paypal_postback() -> TlsServer {
    TlsServer::start(|path, body| {
        assert_eq!(path, "/cgi-bin/webscr");
        if !body.starts_with(b"cmd=_notify-validate&") {
            return (200, b"INVALID".to_vec());
        }
        let forged = body.windows(8).any(|w| w == b"forged=1");
        (200, if forged { b"INVALID".to_vec() } else { b"VERIFIED".to_vec() })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipn_is_stored_verified_by_postback_and_reaches_the_outbox() {
    let paypal_side = paypal_postback().await;
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(4001, "pending", "25.00", "EUR");
    shop.add(4002, "pending", "45.50", "EUR");
    shop.add(4003, "pending", "19.99", "GBP");
    shop.add(4005, "pending", "5000", "JPY");
    let verify = format!("https://{}/cgi-bin/webscr", paypal_side.addr);
    let extra = format!(
        "{}{}",
        ipn_endpoint("ipn", &verify),
        shop_config(&shop, crate::harness::NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;

    // For another account: refused before storing (PayPal will retry; nothing is lost).
    let other = String::from_utf8(ipn("completed.form"))
        .unwrap()
        .replace("shop%40example.com", "other%40example.com");
    let (status, text) = d.post("/webhooks/ipn", &[], other.into_bytes()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("receiver_email is not this endpoint's"), "{text}");
    // A forgery that names our account and a real txn_id, sent before PayPal's message:
    // stored, then rejected by PayPal's answer, and it does not take the real message's place.
    let mut forged = ipn("completed.form");
    forged.extend_from_slice(b"&forged=1");
    send_ipn(&d, "ipn", &forged).await;
    d.settle().await;

    for f in [
        "completed.form",
        "completed.form",
        "pending.form",
        "denied.form",
        "completed.jpy.form",
        "refunded.form",
        "reversed.form",
    ] {
        send_ipn(&d, "ipn", &ipn(f)).await;
        d.settle().await;
    }
    let actions = d.actions();
    assert_eq!(
        actions[..6],
        [
            a("fulfil", "4001", "25.00 EUR", ""),
            a("notify_customer", "4001", "25.00 EUR", "order_confirmed"),
            a("notify_customer", "4003", "19.99 GBP", "payment_pending"),
            a("notify_customer", "4002", "45.50 EUR", "payment_failed"),
            a("fulfil", "4005", "5000 JPY", ""),
            a("notify_customer", "4005", "5000 JPY", "order_confirmed"),
        ]
    );
    // The refund (negative mc_gross) and the reversal: each to an admin, for 25.00.
    let review = a("review", "4001", "25.00 EUR", "");
    assert_eq!(actions[6..], [review.clone(), review]);
    assert_eq!(d.statuses(), ["rejected", "done", "done", "done", "done", "done", "done"]);
    let (key, outcome): (String, String) = d
        .read()
        .query_row("SELECT dedup_key, outcome FROM inbox WHERE status = 'rejected'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(key.starts_with("61E67681CH3238416:Completed#"), "{key}");
    assert!(outcome.contains("INVALID"), "{outcome}");
    // The genuine message is its own row; its duplicate delivery was acknowledged but is one
    // row, posted back once.
    let (real, deliveries) = d.rows()[1].clone();
    assert!(real.starts_with("61E67681CH3238416:Completed#") && real != key, "{real}");
    assert_eq!(deliveries, 2);

    // Each row was posted back exactly once, byte for byte after the prefix.
    let requests = paypal_side.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 7);
    let mut expected = b"cmd=_notify-validate&".to_vec();
    expected.extend_from_slice(&ipn("completed.form"));
    assert!(
        requests.iter().any(|(_, b)| *b == expected),
        "the original bytes, windows-1252 escapes and all"
    );
    let verified: i64 = d
        .read()
        .query_row("SELECT count(*) FROM inbox WHERE verified_at IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verified, 6);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipn_waits_while_the_postback_fails_and_is_decided_once_it_answers() {
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    // The refund verifies at once; the payment before it only once PayPal is back.
    let paypal_side = TlsServer::start(move |_, body| {
        let refund = body.windows(23).any(|w| w == b"payment_status=Refunded");
        if flag.load(Ordering::SeqCst) || refund {
            (200, b"VERIFIED".to_vec())
        } else {
            (503, b"maintenance".to_vec())
        }
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(4001, "pending", "25.00", "EUR");
    // A verify_url that is not PayPal's: it answers, but neither word.
    let not_paypal = TlsServer::start(|_, _| (200, b"<html>welcome</html>".to_vec())).await;
    let extra = format!(
        "{}{}{}{}",
        ipn_endpoint("ipn", &format!("https://{}/cgi-bin/webscr", paypal_side.addr)),
        ipn_endpoint("ipn-down", &format!("https://{closed}/cgi-bin/webscr")),
        ipn_endpoint("ipn-wrong", &format!("https://{}/cgi-bin/webscr", not_paypal.addr)),
        shop_config(&shop, crate::harness::NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    send_ipn(&d, "ipn", &ipn("completed.form")).await;
    send_ipn(&d, "ipn-down", &ipn("pending.form")).await;
    send_ipn(&d, "ipn", &ipn("refunded.form")).await;
    send_ipn(&d, "ipn-wrong", &ipn("denied.form")).await;
    d.wait_for("both postbacks to fail at least twice", |c| {
        paypal_side.count() >= 2
            && c.query_row(
                "SELECT count(*) FROM inbox WHERE status = 'pending' AND attempts = 0 AND last_error LIKE '%postback%'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
                == 2
    })
    .await;
    assert!(d.actions().is_empty(), "nothing is decided on an unverified notification");
    // The verified refund waits behind its unverified payment: one payment, in order.
    d.wait_for("the refund to wait behind its payment", |c| {
        c.query_row(
            "SELECT count(*) FROM inbox WHERE event_type = 'Refunded' AND status = 'pending' \
             AND verified_at IS NOT NULL AND outcome LIKE 'waiting for earlier notification%'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    })
    .await;
    assert!(d.actions().is_empty());
    up.store(true, Ordering::SeqCst);
    d.wait_for("both rows of the payment to be decided", |c| {
        c.query_row(
            "SELECT count(*) FROM inbox WHERE endpoint = 'ipn' AND status = 'done'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 2
    })
    .await;
    assert_eq!(
        d.actions(),
        [
            a("fulfil", "4001", "25.00 EUR", ""),
            a("notify_customer", "4001", "25.00 EUR", "order_confirmed"),
            a("review", "4001", "25.00 EUR", "")
        ]
    );
    let (status, attempts, error): (String, i64, String) = d
        .read()
        .query_row(
            "SELECT status, attempts, last_error FROM inbox WHERE endpoint = 'ipn-down'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    // The worker keeps retrying it, so it may be claimed (`processing`) at this moment.
    assert!(
        status == "pending" || status == "processing",
        "an unreachable PayPal never ends a row: {status}"
    );
    assert_eq!(attempts, 0, "an unreachable PayPal uses up no attempts");
    assert!(error.contains("IPN postback failed"), "{error}");
    // A wrong setup is retried too, but uses up attempts (it ends `dead`, to be replayed).
    d.wait_for("the wrong verify_url to use up attempts", |c| {
        c.query_row(
            "SELECT attempts >= 2 AND last_error LIKE '%neither VERIFIED nor INVALID%' FROM inbox WHERE endpoint = 'ipn-wrong'",
            [],
            |r| r.get::<_, bool>(0),
        )
        .unwrap()
    })
    .await;
    assert_eq!(d.actions().len(), 3);
    d.stop().await;
}

#[test]
fn sign_paypal_prints_headers_the_daemon_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_reconciled"))
        .args(["sign", "paypal", "--key", &fixture_path("test-only-signing.key.pem")])
        .args(["--cert-url", PAYPAL_CERT_URL, "--webhook-id", WEBHOOK_ID])
        .args(["--transmission-id", "tx-42", "--time", "2026-11-22T10:00:00Z"])
        .args([
            "--body",
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/paypal/PAYMENT.CAPTURE.COMPLETED.json")
                .display()
                .to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut headers = hyper::HeaderMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once(": ").unwrap();
        headers.insert(
            hyper::header::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let t = paypal::parse_headers(&headers).unwrap();
    assert_eq!((t.id, t.time, t.cert_url), ("tx-42", "2026-11-22T10:00:00Z", PAYPAL_CERT_URL));
    let cert = paypal::Certificate::from_pem(
        &std::fs::read(fixture_path("test-only-signing.pem")).unwrap(),
    )
    .unwrap();
    let message = paypal::signed_message(
        "tx-42",
        "2026-11-22T10:00:00Z",
        WEBHOOK_ID,
        &event("PAYMENT.CAPTURE.COMPLETED.json"),
    );
    assert!(cert.verifies(message.as_bytes(), &t.signature));
}

/// A shop with both PayPal channels on gets each capture twice, as a webhook and as an IPN
/// with the same id; an authorization and its capture are one payment too. None of that may
/// look like a second payment of the order (which would be refunded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_and_ipn_of_one_capture_and_an_authorized_capture_are_one_payment() {
    let paypal_side = paypal_postback().await;
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(3001, "pending", "25.00", "EUR");
    shop.add(3006, "pending", "25.00", "EUR");
    let verify = format!("https://{}/cgi-bin/webscr", paypal_side.addr);
    let extra = format!(
        "{}{}{}",
        endpoint("paypal", &["test-only-signing.pem"], ""),
        ipn_endpoint("ipn", &verify),
        shop_config(&shop, "[policy]\nfulfil_on = \"authorized\"")
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let form = String::from_utf8(ipn("completed.form")).unwrap();
    let edit = |pairs: &[(&str, &str)]| {
        let mut f = form.clone();
        for (from, to) in pairs {
            assert!(f.contains(from), "{from}");
            f = f.replace(from, to);
        }
        f.into_bytes()
    };

    // The webhook, then the IPN of the same capture.
    send(&d, &event("PAYMENT.CAPTURE.COMPLETED.json")).await;
    d.settle().await;
    let same_capture = edit(&[
        ("txn_id=61E67681CH3238416", "txn_id=8MC585209K746392H"),
        ("invoice=4001", "invoice=3001"),
    ]);
    send_ipn(&d, "ipn", &same_capture).await;
    d.settle().await;

    // An authorization (fulfilled at once under fulfil_on = "authorized"), then its capture.
    let auth = edit(&[
        ("payment_status=Completed", "payment_status=Pending&pending_reason=authorization"),
        ("txn_id=61E67681CH3238416", "txn_id=AUTH3006"),
        ("invoice=4001", "invoice=3006"),
    ]);
    send_ipn(&d, "ipn", &auth).await;
    d.settle().await;
    let mut capture =
        edit(&[("txn_id=61E67681CH3238416", "txn_id=CAP3006"), ("invoice=4001", "invoice=3006")]);
    capture.extend_from_slice(b"&auth_id=AUTH3006");
    send_ipn(&d, "ipn", &capture).await;
    d.settle().await;

    assert_eq!(d.statuses(), ["done"; 4]);
    let actions = d.actions();
    assert_eq!(
        actions,
        [
            a("fulfil", "3001", "25.00 EUR", ""),
            a("notify_customer", "3001", "25.00 EUR", "order_confirmed"),
            a("fulfil", "3006", "25.00 EUR", ""),
            a("notify_customer", "3006", "25.00 EUR", "order_confirmed"),
        ],
        "no refund, no review: one payment each"
    );

    // The shop has since recorded the capture id and marked the order paid: a resend of the
    // capture is the payment the shop knows, not another one.
    shop.set(3001, "processing", Some("8MC585209K746392H"));
    let resent = String::from_utf8(event("PAYMENT.CAPTURE.COMPLETED.json"))
        .unwrap()
        .replace("WH-0A1B2C3D4E5F60718-3001COMPLETED", "WH-0A1B2C3D4E5F60718-3001AGAIN");
    send(&d, resent.as_bytes()).await;
    d.settle().await;
    assert_eq!(d.actions().len(), 4);
    d.stop().await;
}
