//! No secret ever reaches a log line: the daemon runs at the most verbose log level with known
//! secrets in every place a config can hold one, takes good and bad traffic for each, fails to
//! reach its shop database (whose URL holds a password), and stops; then its whole output, and
//! that of `check-config` and of a bad config, is searched for each secret.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use hyper::StatusCode;
use reconciled::provider::{adflex, stripe, worldpay};

use crate::harness::{event, fixture_in, request};
use crate::process::{ChildGuard, EXIT_WITHIN};

const STRIPE: &str = "whsec_SEKRIT4stripe0000001";
const STRIPE_ROLLED: &str = "whsec_SEKRIT4stripe0000002";
const WORLDPAY: &str = "SEKRIT4worldpay00000003";
const XML_PASSWORD: &str = "SEKRIT4xml00000004";
const ADFLEX: &str = "SEKRIT4adflex00000005";
const DB_PASSWORD: &str = "SEKRIT4database0006";
const STRIPE_API_KEY: &str = "rk_test_SEKRIT4stripeapi0007";
const PAYPAL_CLIENT_SECRET: &str = "SEKRIT4paypalclient0008";

fn secrets() -> Vec<String> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("wp:{XML_PASSWORD}"));
    [
        STRIPE,
        STRIPE_ROLLED,
        WORLDPAY,
        XML_PASSWORD,
        ADFLEX,
        DB_PASSWORD,
        STRIPE_API_KEY,
        PAYPAL_CLIENT_SECRET,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([basic, "SEKRIT".to_owned()])
    .collect()
}

/// The provider APIs are asked at an address where nothing answers: the attempts, and their
/// failures, are logged.
fn config(dir: &std::path::Path) -> String {
    let key_file = dir.join("stripe-key");
    std::fs::write(&key_file, STRIPE_API_KEY).unwrap();
    let secret_file = dir.join("paypal-secret");
    std::fs::write(&secret_file, PAYPAL_CLIENT_SECRET).unwrap();
    let nowhere = crate::harness::free_addr();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 2\n[store]\npath = \"{}\"\n\
         [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{STRIPE}\", \"{STRIPE_ROLLED}\"]\n\
         [endpoint.api]\nkey_file = \"{}\"\nbase_url = \"http://{nowhere}\"\nbackfill_every = \"1m\"\n\
         [[endpoint]]\nname = \"paypal\"\nprovider = \"paypal\"\nwebhook_id = \"WH-SECRETS-TEST\"\nverify = \"api\"\n\
         [endpoint.api]\nclient_id = \"AeSecretsTest\"\nclient_secret_file = \"{}\"\nbase_url = \"http://{nowhere}\"\n\
         [[endpoint]]\nname = \"worldpay\"\nprovider = \"worldpay\"\nkeys = {{ \"1\" = \"{WORLDPAY}\" }}\n\
         [[endpoint]]\nname = \"xml\"\nprovider = \"worldpay-xml\"\nbasic_auth = {{ user = \"wp\", password = \"{XML_PASSWORD}\" }}\n\
         [[endpoint]]\nname = \"adflex\"\nprovider = \"adflex\"\nsecrets = [\"{ADFLEX}\"]\nsignature_header = \"X-Adflex-Signature\"\n\
         [shop]\ndriver = \"mysql\"\nurl = \"mysql://shop:{DB_PASSWORD}@127.0.0.1:1/shop\"\n\
         query = \"SELECT id AS order_id, status, total AS amount, currency FROM orders WHERE id = :reference\"\n\
         [shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"paid\"]\ncancelled = [\"cancelled\"]\n",
        dir.join("inbox.db").display(),
        key_file.display(),
        secret_file.display()
    )
}

fn assert_clean(what: &str, text: &str) {
    for secret in secrets() {
        assert!(!text.contains(&secret), "{what} shows {secret:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("reconciled.toml");
    std::fs::write(&cfg, config(dir.path())).unwrap();
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_reconciled"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("RECONCILED_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let (addr, mut log, rest) = crate::harness::listening(&mut child);

    let now = reconciled::time::now_ms() / 1000;
    let body = event("evt_secret_test");
    for (secret, t) in
        [(STRIPE, now), (STRIPE_ROLLED, now), ("whsec_wrong", now), (STRIPE, now - 3600)]
    {
        let sig = stripe::sign(secret.as_bytes(), t, &body);
        request(
            addr,
            "POST",
            "/webhooks/stripe",
            &[("stripe-signature", &sig)],
            body.clone().into(),
        )
        .await;
    }
    // A client that sends a secret in a header it should not: nothing echoes headers.
    let (status, _) = request(
        addr,
        "POST",
        "/webhooks/stripe",
        &[("stripe-signature", STRIPE)],
        body.clone().into(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let wp = fixture_in("worldpay", "authorized.json");
    for key in [WORLDPAY, "wrong"] {
        let sig = worldpay::sign("1", key.as_bytes(), &wp);
        request(
            addr,
            "POST",
            "/webhooks/worldpay",
            &[("event-signature", &sig)],
            wp.clone().into(),
        )
        .await;
    }
    let xml = fixture_in("worldpay-xml", "CAPTURED.xml");
    for password in [XML_PASSWORD, "wrong"] {
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("wp:{password}"))
        );
        request(addr, "POST", "/webhooks/xml", &[("authorization", &auth)], xml.clone().into())
            .await;
    }
    let ad = fixture_in("adflex", "authorised.json");
    for key in [ADFLEX, "wrong"] {
        let sig = adflex::sign(key.as_bytes(), &ad);
        request(
            addr,
            "POST",
            "/webhooks/adflex",
            &[("x-adflex-signature", &sig)],
            ad.clone().into(),
        )
        .await;
    }
    // A PayPal delivery, stored for PayPal's API to check (the worker, waiting for its shop,
    // does not get to it here; the API client's own tests show it never shows the secret).
    let capture = fixture_in("paypal", "PAYMENT.CAPTURE.COMPLETED.json");
    let (status, _) = request(
        addr,
        "POST",
        "/webhooks/paypal",
        &[
            ("paypal-transmission-id", "69cd13f0-d67a-11e5-baa3-778b53f4ae55"),
            ("paypal-transmission-time", "2026-12-06T10:00:00Z"),
            ("paypal-transmission-sig", "c2lnbmF0dXJl"),
            ("paypal-cert-url", "https://api.paypal.com/v1/notifications/certs/CERT-360caa42"),
            ("paypal-auth-algo", "SHA256withRSA"),
        ],
        capture.into(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Let the worker fail to reach the shop (its URL holds the password) a few times, and the
    // backfill make its first pass.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(child.signal("TERM"));
    let status = tokio::task::spawn_blocking(move || child.wait_within(EXIT_WITHIN)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    log.extend(rest.join().unwrap());
    let log = log.join("\n");
    assert!(log.contains("shop database unreachable"), "the shop URL was logged about:\n{log}");
    assert!(log.contains("notification refused"), "refusals were logged:\n{log}");
    assert!(log.contains("backfill pass stopped"), "the backfill was tried:\n{log}");
    assert_clean("the daemon's log", &log);

    let out = Command::new(env!("CARGO_BIN_EXE_reconciled"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_clean(
        "check-config",
        &format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    );

    // Secrets in the wrong shape: refused, without echoing them.
    let bad = config(dir.path())
        .replace(
            &format!("secrets = [\"{STRIPE}\", \"{STRIPE_ROLLED}\"]"),
            &format!("secrets = \"{STRIPE}\""),
        )
        .replace(
            &format!("keys = {{ \"1\" = \"{WORLDPAY}\" }}"),
            &format!("keys = [\"{WORLDPAY}\"]"),
        );
    std::fs::write(&cfg, bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_reconciled"))
        .args(["check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_clean("a config error", &String::from_utf8_lossy(&out.stderr));
}
