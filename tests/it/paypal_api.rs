//! PayPal webhooks checked by PayPal's own API (`verify = "api"`, `"certs_then_api"`): stored
//! unverified with the transmission headers, then checked by the worker with
//! `verify-webhook-signature` before anything is decided, against the local fake of PayPal's
//! API ([`FakePaypal`]), which answers `SUCCESS` only for the exact text PayPal sent.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::StatusCode;
use reconciled::provider::paypal;

use crate::cli::{bin, run, Output};
use crate::harness::{self, shop_config, Daemon, Shop, NOTICE_AT_ONCE};
use crate::paypal::{a, endpoint, event, key, post, PAYPAL_CERT_URL, WEBHOOK_ID};
use crate::provider_api::{forge_crc32, FakePaypal};
use crate::tls::{fixture_path, TlsServer};

const CLIENT_ID: &str = "AeReconciledTestApp-0123456789";
const CLIENT_SECRET: &str = "EReconciledTestSecret-9876543210abcdef";
const TIME: &str = "2026-11-22T10:00:00Z";

/// A PayPal endpoint verified as `verify` says, asking `paypal` with the client secret written
/// to a file in `dir`.
fn api_endpoint(
    dir: &Path,
    name: &str,
    verify: &str,
    certs: &[&str],
    more: &str,
    paypal: &FakePaypal,
    secret: &str,
) -> String {
    let secret_file = dir.join(format!("{name}-client-secret"));
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    format!(
        "{}[endpoint.api]\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\nbase_url = \"{}\"\ntls_ca_file = \"{}\"\n",
        endpoint(name, certs, &format!("verify = \"{verify}\"\n{more}")),
        secret_file.display(),
        paypal.base_url,
        FakePaypal::ca_pem_path()
    )
}

/// The capture of order `order` (25.00 EUR), as PayPal sends it: the fixture's text, with the
/// order's own ids.
fn capture(order: u32) -> Vec<u8> {
    String::from_utf8(event("PAYMENT.CAPTURE.COMPLETED.json"))
        .unwrap()
        .replace("3001", &order.to_string())
        .replace("8MC585209K746392H", &format!("8MC585209K74{order}"))
        .into_bytes()
}

/// PayPal's transmission headers for `body`, signed with the test key, each with its own
/// transmission id.
fn signed(body: &[u8], cert_url: &str) -> Vec<(String, String)> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let id = format!("6f2c0a10-f8d2-11e8-{:012}", NEXT.fetch_add(1, Ordering::SeqCst));
    let message = paypal::signed_message(&id, TIME, WEBHOOK_ID, body);
    let sig = paypal::sign(&key(), message.as_bytes()).unwrap();
    vec![
        ("paypal-transmission-id".into(), id),
        ("paypal-transmission-time".into(), TIME.into()),
        ("paypal-transmission-sig".into(), sig),
        ("paypal-cert-url".into(), cert_url.into()),
        ("paypal-auth-algo".into(), "SHA256withRSA".into()),
        ("content-type".into(), "application/json".into()),
    ]
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
    &headers.iter().find(|(k, _)| k == name).unwrap().1
}

/// A genuine delivery: signed, and recorded by the fake as sent by PayPal.
fn delivered(paypal: &FakePaypal, body: &[u8], cert_url: &str) -> Vec<(String, String)> {
    let headers = signed(body, cert_url);
    paypal.record_delivery(
        header(&headers, "paypal-transmission-id"),
        TIME,
        cert_url,
        "SHA256withRSA",
        header(&headers, "paypal-transmission-sig"),
        body,
    );
    headers
}

async fn stored(d: &Daemon, endpoint: &str, headers: &[(String, String)], body: &[u8]) {
    let (status, text) = post(d, &format!("/webhooks/{endpoint}"), headers, body).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "stored\n"));
}

/// `(dedup_key, status, headers, verified_at, attempts, outcome, last_error)` of inbox row `id`.
type Row = (String, String, String, Option<i64>, i64, Option<String>, Option<String>);

fn row(d: &Daemon, id: i64) -> Row {
    d.read()
        .query_row(
            "SELECT dedup_key, status, headers, verified_at, attempts, outcome, last_error \
             FROM inbox WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )
        .unwrap()
}

/// `reconciled inbox show ID --db …`, off the runtime.
async fn inbox_show(d: &Daemon, id: i64) -> Output {
    let db = d.db.display().to_string();
    tokio::task::spawn_blocking(move || {
        run(bin().args(["inbox", "show", &id.to_string(), "--db", &db]), b"")
    })
    .await
    .unwrap()
}

/// A genuine capture of `order` to the endpoint `paypal`, decided.
async fn deliver_and_settle(d: &Daemon, paypal: &FakePaypal, order: u32) {
    let body = capture(order);
    stored(d, "paypal", &delivered(paypal, &body, PAYPAL_CERT_URL), &body).await;
    d.settle().await;
}

fn fulfilled(orders: &[u32]) -> Vec<(String, String, String, String)> {
    orders
        .iter()
        .flat_map(|o| {
            [
                a("fulfil", &o.to_string(), "25.00 EUR", ""),
                a("notify_customer", &o.to_string(), "25.00 EUR", "order_confirmed"),
            ]
        })
        .collect()
}

fn shop_with(dir: &Path, orders: &[u32]) -> Shop {
    let shop = Shop::create(dir);
    for order in orders {
        shop.add(i64::from(*order), "pending", "25.00", "EUR");
    }
    shop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_deliveries_are_verified_by_paypals_api_then_decided_with_one_token() {
    let paypal = FakePaypal::start(CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID).await;
    let dir = tempfile::tempdir().unwrap();
    let shop = shop_with(dir.path(), &[3001, 3002, 3003]);
    let extra = format!(
        "{}{}",
        api_endpoint(dir.path(), "paypal", "api", &[], "", &paypal, CLIENT_SECRET),
        shop_config(&shop, NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;

    let body = capture(3001);
    stored(&d, "paypal", &delivered(&paypal, &body, PAYPAL_CERT_URL), &body).await;
    d.settle().await;
    assert_eq!(d.actions(), fulfilled(&[3001]));
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (1, 1));
    // Stored unverified: the event id with a digest of the bytes, and the headers PayPal's API
    // needs, the signature included; verified since.
    let (key, status, headers, verified_at, attempts, ..) = row(&d, 1);
    assert!(key.starts_with("WH-0A1B2C3D4E5F60718-3001COMPLETED#"), "{key}");
    assert_eq!((status.as_str(), attempts), ("done", 0));
    let kept: serde_json::Value = serde_json::from_str(&headers).unwrap();
    for name in [
        "paypal-transmission-id",
        "paypal-transmission-time",
        "paypal-transmission-sig",
        "paypal-cert-url",
        "paypal-auth-algo",
    ] {
        assert!(kept[name].is_string(), "{name} kept: {headers}");
    }
    assert!(verified_at.is_some());
    let shown = inbox_show(&d, 1).await;
    assert!(
        shown.stdout.contains("verified:       by PayPal's API at 20"),
        "{}{}",
        shown.stdout,
        shown.stderr
    );

    // More deliveries reuse the token.
    for order in [3002, 3003] {
        let body = capture(order);
        stored(&d, "paypal", &delivered(&paypal, &body, PAYPAL_CERT_URL), &body).await;
        d.settle().await;
    }
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (1, 3));
    assert_eq!(d.actions(), fulfilled(&[3001, 3002, 3003]));
    // A resend of the same bytes (a new transmission) is a duplicate, and asks nothing.
    let (status, text) =
        post(&d, "/webhooks/paypal", &delivered(&paypal, &body, PAYPAL_CERT_URL), &body).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "duplicate\n"));
    d.settle().await;
    assert_eq!(d.statuses(), ["done"; 3]);
    assert_eq!(paypal.verify_calls(), 3);
    d.stop().await;
}

harness::on_both_stores! {
    /// On either store, a row stored unverified is claimed with its kept headers, checked by
    /// PayPal's API and recorded as verified; a body PayPal did not send ends rejected.
    async fn unverified_rows_are_checked_by_paypal_before_anything_is_decided(store) {
        let paypal = FakePaypal::start(CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID).await;
        let dir = tempfile::tempdir().unwrap();
        let shop = shop_with(dir.path(), &[3001]);
        let extra = format!(
            "{}{}",
            api_endpoint(dir.path(), "paypal", "api", &[], "", &paypal, CLIENT_SECRET),
            shop_config(&shop, NOTICE_AT_ONCE)
        );
        let d = Daemon::start_on(&store, dir.path(), "", "", &extra).await;
        let genuine = capture(3001);
        let headers = delivered(&paypal, &genuine, PAYPAL_CERT_URL);
        let altered = String::from_utf8(genuine.clone())
            .unwrap()
            .replace("\"final_capture\": true", "\"final_capture\": false")
            .into_bytes();
        stored(&d, "paypal", &headers, &altered).await;
        d.settle().await;
        stored(&d, "paypal", &headers, &genuine).await;
        d.settle().await;
        let rows = d.inbox();
        let statuses: Vec<String> = rows.iter().map(|r| r.status.to_string()).collect();
        assert_eq!(statuses, ["rejected", "done"]);
        assert!(rows[0].verified_at.is_none() && rows[1].verified_at.is_some());
        let outcome = rows[0].outcome.clone().unwrap_or_default();
        assert!(outcome.contains("PayPal's API answered FAILURE"), "{outcome}");
        assert_eq!(d.actions(), fulfilled(&[3001]));
        assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (1, 2));
        d.stop().await;
    }
}

/// PayPal signs only the body's CRC-32: another body with the same CRC-32 passes the offline
/// check with a genuine delivery's headers. PayPal's API compares the event itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_body_with_a_genuine_crc32_passes_certs_but_not_paypals_api() {
    let genuine = event("PAYMENT.CAPTURE.COMPLETED.json");
    let target = crc32fast::hash(&genuine);
    let marker = [b'0'; 48];
    // Order 3009 paid with order 3001's payment: as a new event, and under 3001's event id.
    let forge = |event_id: &str| {
        let text = String::from_utf8(genuine.clone()).unwrap();
        let template = text
            .replace("3001COMPLETED", event_id)
            .replace("\"custom_id\": \"3001\"", "\"custom_id\": \"3009\"")
            .replace("INV-3001", "INV-3009")
            .replace("8MC585209K746392H", "8MC585209K746392X")
            .replace(
                "\"summary\": \"Payment completed for EUR 25.00 EUR\"",
                &format!("\"summary\": \"Payment completed for EUR 25.00 EUR {}\"", "0".repeat(48)),
            );
        assert!(template.contains("\"custom_id\": \"3009\""), "the fixture changed");
        let forged = forge_crc32(template.as_bytes(), &marker, target);
        assert_eq!(crc32fast::hash(&forged), target);
        forged
    };
    let forged = forge("3009COMPLETED");
    let forged_same_id = forge("3001COMPLETED");
    let headers = signed(&genuine, PAYPAL_CERT_URL);

    // verify = "certs": the forgery verifies, and order 3009 is fulfilled with 3001's money.
    let dir = tempfile::tempdir().unwrap();
    let shop = shop_with(dir.path(), &[3001, 3009]);
    let extra = format!(
        "{}{}",
        endpoint("paypal", &["test-only-signing.pem"], ""),
        shop_config(&shop, NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    stored(&d, "paypal", &headers, &genuine).await;
    d.settle().await;
    stored(&d, "paypal", &headers, &forged).await;
    d.settle().await;
    assert_eq!(d.actions(), fulfilled(&[3001, 3009]), "the weakness verify = \"api\" removes");
    d.stop().await;

    // verify = "api": the same requests, the forgeries first. Each is stored, then refused by
    // PayPal, with no action; the forgery under the genuine event id does not make the genuine
    // delivery a duplicate.
    let paypal = FakePaypal::start(CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID).await;
    paypal.record_delivery(
        header(&headers, "paypal-transmission-id"),
        TIME,
        PAYPAL_CERT_URL,
        "SHA256withRSA",
        header(&headers, "paypal-transmission-sig"),
        &genuine,
    );
    let dir = tempfile::tempdir().unwrap();
    let shop = shop_with(dir.path(), &[3001, 3009]);
    let extra = format!(
        "{}{}",
        api_endpoint(dir.path(), "paypal", "api", &[], "", &paypal, CLIENT_SECRET),
        shop_config(&shop, NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    for body in [&forged, &forged_same_id] {
        stored(&d, "paypal", &headers, body).await;
        d.settle().await;
    }
    assert_eq!(d.statuses(), ["rejected", "rejected"]);
    assert!(d.actions().is_empty());
    for id in [1, 2] {
        let (_, _, _, verified_at, _, outcome, _) = row(&d, id);
        assert_eq!(verified_at, None);
        let outcome = outcome.unwrap_or_default();
        assert!(outcome.contains("PayPal's API answered FAILURE"), "{outcome}");
    }
    stored(&d, "paypal", &headers, &genuine).await;
    d.settle().await;
    assert_eq!(d.statuses(), ["rejected", "rejected", "done"]);
    assert_eq!(d.actions(), fulfilled(&[3001]));
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (1, 3));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_expiring_token_is_replaced_and_wrong_credentials_use_up_attempts() {
    let paypal = FakePaypal::start(CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID).await;
    let elsewhere = FakePaypal::start(CLIENT_ID, "another-secret", WEBHOOK_ID).await;
    let dir = tempfile::tempdir().unwrap();
    let shop = shop_with(dir.path(), &[3001, 3002, 3003, 3004, 3005]);
    let extra = format!(
        "{}{}{}",
        api_endpoint(dir.path(), "paypal", "api", &[], "", &paypal, CLIENT_SECRET),
        api_endpoint(dir.path(), "wrong", "api", &[], "", &elsewhere, CLIENT_SECRET),
        shop_config(&shop, NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let deliver = |order: u32| deliver_and_settle(&d, &paypal, order);
    deliver(3001).await;
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (1, 1));

    // Revoked: the check gets a 401, one new token is fetched, and the check sent once more.
    paypal.revoke_tokens();
    deliver(3002).await;
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (2, 3));

    // A token that lives 2 s is used for about 1 s, then renewed before PayPal refuses it.
    paypal.set_token_lifetime(2);
    paypal.revoke_tokens();
    deliver(3003).await;
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (3, 5));
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    deliver(3004).await;
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (4, 6), "renewed, no 401");
    assert_eq!(d.actions(), fulfilled(&[3001, 3002, 3003, 3004]));

    // Credentials PayPal refuses: not an outage, so the row uses up attempts (it ends dead,
    // to be replayed once the secret is fixed); the error says why and never shows a secret.
    let body = capture(3005);
    stored(&d, "wrong", &signed(&body, PAYPAL_CERT_URL), &body).await;
    d.wait_for("the refused credentials to use up an attempt", |c| {
        c.query_row(
            "SELECT attempts >= 1 AND status = 'pending' FROM inbox WHERE endpoint = 'wrong'",
            [],
            |r| r.get::<_, bool>(0),
        )
        .unwrap()
    })
    .await;
    let (.., error) = row(&d, 5);
    let error = error.unwrap_or_default();
    assert!(error.contains("401") && error.contains("invalid_client"), "{error}");
    assert!(error.contains("check client_id and client_secret_file"), "{error}");
    assert!(!error.contains(CLIENT_SECRET) && !error.contains("another-secret"), "{error}");
    assert_eq!(elsewhere.verify_calls(), 0);
    assert_eq!(d.actions().len(), 8);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_paypal_is_down_a_row_waits_without_using_up_attempts() {
    let paypal = FakePaypal::start(CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID).await;
    let dir = tempfile::tempdir().unwrap();
    let shop = shop_with(dir.path(), &[3001, 3002]);
    let extra = format!(
        "{}{}",
        api_endpoint(dir.path(), "paypal", "api", &[], "", &paypal, CLIENT_SECRET),
        shop_config(&shop, NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let body = capture(3001);
    stored(&d, "paypal", &delivered(&paypal, &body, PAYPAL_CERT_URL), &body).await;
    d.settle().await;
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (1, 1));

    paypal.fail_next(3, 503);
    let body = capture(3002);
    stored(&d, "paypal", &delivered(&paypal, &body, PAYPAL_CERT_URL), &body).await;
    d.wait_for("the check to fail and the row to wait", |c| {
        c.query_row(
            "SELECT count(*) FROM inbox WHERE id = 2 AND status = 'pending' AND attempts = 0 \
             AND last_error LIKE '%webhook signature check failed%503%'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    })
    .await;
    assert_eq!(d.actions(), fulfilled(&[3001]), "nothing is decided on an unverified delivery");
    let shown = inbox_show(&d, 2).await;
    assert!(
        shown.stdout.contains("verified:       not yet (the worker asks PayPal's API)"),
        "{}{}",
        shown.stdout,
        shown.stderr
    );

    // PayPal answers again: verified and decided, and no attempt was used up.
    d.wait_for("the row to be decided", |c| {
        c.query_row("SELECT status = 'done' FROM inbox WHERE id = 2", [], |r| r.get::<_, bool>(0))
            .unwrap()
    })
    .await;
    assert_eq!(d.actions(), fulfilled(&[3001, 3002]));
    let (_, _, _, verified_at, attempts, ..) = row(&d, 2);
    assert!(verified_at.is_some());
    assert_eq!(attempts, 0);
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (1, 5), "three 503s, then SUCCESS");
    d.stop().await;
}

/// `certs_then_api`: the offline check first; PayPal's API only when no certificate is to be
/// had; a signature a certificate refuses, or a foreign certificate URL, is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_then_api_asks_paypal_only_when_no_certificate_is_to_be_had() {
    let paypal = FakePaypal::start(CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID).await;
    let cert = std::fs::read(fixture_path("test-only-signing.pem")).unwrap();
    let cert_server = TlsServer::start(move |path, _| match path {
        "/v1/notifications/certs/CERT-good" => (200, cert.clone()),
        _ => (404, vec![]),
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shop = shop_with(dir.path(), &[3001, 3002, 3003, 3004]);
    let fetching = format!(
        "cert_url_fetch = true\ncert_hosts = [\"{}\", \"{closed}\"]\ntls_ca_file = \"{}\"",
        cert_server.addr,
        fixture_path("test-only-ca.pem")
    );
    let then_api = |name: &str, certs: &[&str], more: &str| {
        api_endpoint(dir.path(), name, "certs_then_api", certs, more, &paypal, CLIENT_SECRET)
    };
    let extra = format!(
        "{}{}{}{}",
        then_api("pinned", &["test-only-signing.pem"], ""),
        then_api("unpinned", &[], ""),
        then_api("fetching", &[], &fetching),
        shop_config(&shop, NOTICE_AT_ONCE)
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let good_url = format!("https://{}/v1/notifications/certs/CERT-good", cert_server.addr);
    let down_url = format!("https://{closed}/v1/notifications/certs/CERT-good");

    // Pinned: verified offline, stored as verified (no signature kept), PayPal never asked.
    let body = capture(3001);
    stored(&d, "pinned", &delivered(&paypal, &body, PAYPAL_CERT_URL), &body).await;
    d.settle().await;
    let (key, status, headers, verified_at, ..) = row(&d, 1);
    assert_eq!((key.as_str(), status.as_str()), ("WH-0A1B2C3D4E5F60718-3001COMPLETED", "done"));
    assert!(!headers.contains("paypal-transmission-sig") && verified_at.is_none(), "{headers}");
    assert_eq!(paypal.verify_calls(), 0);

    // No certificate pinned, downloading off: stored unverified, verified by PayPal's API.
    let body = capture(3002);
    stored(&d, "unpinned", &delivered(&paypal, &body, PAYPAL_CERT_URL), &body).await;
    d.settle().await;
    let (key, status, headers, verified_at, ..) = row(&d, 2);
    assert!(key.starts_with("WH-0A1B2C3D4E5F60718-3002COMPLETED#"), "{key}");
    assert_eq!(status, "done");
    assert!(headers.contains("paypal-transmission-sig") && verified_at.is_some(), "{headers}");
    assert_eq!(paypal.verify_calls(), 1);

    // Downloaded: verified offline.
    let body = capture(3003);
    stored(&d, "fetching", &delivered(&paypal, &body, &good_url), &body).await;
    d.settle().await;
    assert_eq!(paypal.verify_calls(), 1);

    // A signature the downloaded certificate refuses, or a foreign URL: refused, as with
    // verify = "certs", and nothing is stored.
    let body = capture(3004);
    let tampered = String::from_utf8(body.clone()).unwrap().replace("25.00", "2.50").into_bytes();
    let (status, text) = post(&d, "/webhooks/fetching", &signed(&body, &good_url), &tampered).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("no signature matches"), "{text}");
    let foreign = "https://evil.example/v1/notifications/certs/CERT-good";
    let (status, text) = post(&d, "/webhooks/pinned", &signed(&body, foreign), &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("its host is not in cert_hosts"), "{text}");
    assert_eq!(d.rows().len(), 3);

    // The certificate's host is down: stored unverified (no 503), verified by PayPal's API.
    stored(&d, "fetching", &delivered(&paypal, &body, &down_url), &body).await;
    d.settle().await;
    let (key, status, _, verified_at, ..) = row(&d, 4);
    assert!(key.contains('#') && status == "done" && verified_at.is_some(), "{key} {status}");
    // Each endpoint has its own client, and so its own token.
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (2, 2));
    assert_eq!(d.actions(), fulfilled(&[3001, 3002, 3003, 3004]));
    d.stop().await;
}

/// `verify` is checked when the configuration is read, and the client secret is never shown.
#[test]
fn verify_settings_are_checked_and_the_client_secret_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let api = format!(
        "[endpoint.api]\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\n",
        secret_file.display()
    );
    let pinned = fixture_path("test-only-signing.pem");
    let text = |keys: &str, api: &str| {
        format!(
            "[store]\npath = \"{}\"\n[[endpoint]]\nname = \"e\"\nprovider = \"paypal\"\nwebhook_id = \"{WEBHOOK_ID}\"\n{keys}\n{api}",
            dir.path().join("s.db").display()
        )
    };
    let config = |text: &str| {
        reconciled::config::Config::from_toml(text, &dir.path().join("c.toml"))
            .map_err(|e| e.to_string())
    };

    let good = config(&text("verify = \"api\"", &api)).unwrap();
    let reconciled::provider::Settings::Paypal(settings) = &good.endpoints[0].settings else {
        panic!("a PayPal endpoint")
    };
    assert_eq!(settings.verify, paypal::Verify::Api);
    assert!(settings.certs.is_empty() && !settings.cert_url_fetch);
    assert!(!format!("{good:?}").contains(CLIENT_SECRET), "Debug shows no secret");
    // The default is unchanged, and needs no API.
    let certs = config(&text(&format!("certs = [\"{pinned}\"]"), "")).unwrap();
    let reconciled::provider::Settings::Paypal(settings) = &certs.endpoints[0].settings else {
        panic!("a PayPal endpoint")
    };
    assert_eq!(settings.verify, paypal::Verify::Certs);

    for (keys, api, key, says) in [
        ("verify = \"api\"", "", "verify", "add an [endpoint.api] table"),
        (
            &*format!("verify = \"certs_then_api\"\ncerts = [\"{pinned}\"]"),
            "",
            "verify",
            "add an [endpoint.api] table",
        ),
        ("verify = \"sometimes\"", &*api, "verify", "unknown variant `sometimes`"),
        (&*format!("verify = \"api\"\ncerts = [\"{pinned}\"]"), &*api, "certs", "not used"),
        ("verify = \"api\"\ncert_url_fetch = true", &*api, "cert_url_fetch", "not used"),
        ("", &*api, "certs", "pin PayPal's signing certificate"),
    ] {
        let err = config(&text(keys, api)).unwrap_err();
        assert!(
            err.contains(&format!("endpoint[0].{key}")) || err.contains(&format!("\"e\".{key}")),
            "{keys}: {err}"
        );
        assert!(err.contains(says), "{keys}: {says}: {err}");
        assert!(!err.contains(CLIENT_SECRET), "{err}");
    }

    // check-config shows the mode and the client id, never the secret.
    let path = crate::cli::write_config(dir.path(), &text("verify = \"api\"", &api));
    let out = run(bin().arg("check-config").arg("--config").arg(&path), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("verified by PayPal's API"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("client id {CLIENT_ID}")), "{}", out.stdout);
    assert!(!out.stdout.contains(CLIENT_SECRET) && !out.stderr.contains(CLIENT_SECRET));
    let path = crate::cli::write_config(dir.path(), &text("verify = \"always\"", &api));
    let out = run(bin().arg("check-config").arg("--config").arg(&path), b"");
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    assert!(out.stderr.contains("verify"), "{}", out.stderr);
    assert!(!out.stdout.contains(CLIENT_SECRET) && !out.stderr.contains(CLIENT_SECRET));
}
