//! `reconciled simulate`: for every provider, the simulated notification is accepted by a
//! running daemon configured with the same file and leads to the documented actions against a
//! SQLite shop; and the refusals (an unknown endpoint, a bad amount, a configuration that looks
//! live, a PayPal endpoint without the test certificate) exit 2 without printing a secret.

use std::path::{Path, PathBuf};

use crate::cli::{bin, run, write_config, Output};
use crate::harness::{config_text_with, shop_config, Daemon, Shop, SECRET};
use crate::tls::fixture_path;

const WORLDPAY_KEY: &str = "wp_test_key_one_0123456789";
const XML_PASSWORD: &str = "xml-test-password";
const ADFLEX_SECRET: &str = "adflex_test_secret";
const LIVE_SECRET: &str = "whsec_Zq81xLkP0vN3mR7tY2wB5cD9";

/// Endpoints of every provider but PayPal's, besides the harness's Stripe endpoint.
fn endpoints() -> String {
    format!(
        "[[endpoint]]\nname = \"worldpay\"\nprovider = \"worldpay\"\nkeys = {{ \"1\" = \"{WORLDPAY_KEY}\" }}\n\n\
         [[endpoint]]\nname = \"wpxml\"\nprovider = \"worldpay-xml\"\nmerchant_codes = [\"SHOPEUR\"]\n\
         basic_auth = {{ user = \"wp\", password = \"{XML_PASSWORD}\" }}\n\n\
         [[endpoint]]\nname = \"adflex\"\nprovider = \"adflex\"\nsecrets = [\"{ADFLEX_SECRET}\"]\n\
         signature_header = \"X-Adflex-Signature\"\n"
    )
}

fn paypal_endpoints(verify_url: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"paypal\"\nprovider = \"paypal\"\nwebhook_id = \"1JE4291016473214C\"\ncerts = [\"{}\"]\n\n\
         [[endpoint]]\nname = \"ipn\"\nprovider = \"paypal-ipn\"\nreceiver_email = \"Shop@Example.com\"\n\
         verify_url = \"{verify_url}\"\ntls_ca_file = \"{}\"\n",
        fixture_path("test-only-signing.pem"),
        fixture_path("test-only-ca.pem")
    )
}

/// Starts a daemon with `extra` and writes the same configuration, with the address the daemon
/// listens on, to a file for the command line.
async fn start(dir: &Path, extra: &str) -> (Daemon, PathBuf) {
    let d = Daemon::start_with(dir, "", "", extra).await;
    let text = config_text_with(&d.db, "", "", extra)
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{}\"", d.addr));
    (d, write_config(dir, &text))
}

/// Runs `simulate` from the source tree (for the default test key), off the runtime's threads.
async fn simulate(config: &Path, args: &[&str]) -> Output {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = bin();
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).arg("simulate").arg("--config").arg(&config);
        run(cmd.args(&args).args(["--wait", "15"]), b"")
    })
    .await
    .unwrap()
}

/// Simulates with --post and returns the actions it printed: `(kind, order, "amount currency")`.
async fn post(
    config: &Path,
    endpoint: &str,
    order: &str,
    amount: &str,
    more: &[&str],
) -> Vec<String> {
    let currency = more.first().copied().unwrap_or("EUR");
    let mut args = vec![
        "--endpoint",
        endpoint,
        "--order",
        order,
        "--amount",
        amount,
        "--currency",
        currency,
        "--post",
    ];
    args.extend(more.iter().skip(1));
    let out = simulate(config, &args).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for secret in [SECRET, WORLDPAY_KEY, XML_PASSWORD, ADFLEX_SECRET] {
        assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    }
    assert!(out.stdout.starts_with("answer: HTTP 200"), "{}", out.stdout);
    out.stdout
        .lines()
        .skip_while(|l| *l != "actions:")
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", f[0], f[1], f[2], f[3])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_worldpay_worldpay_xml_and_adflex_reach_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for (id, total, currency) in [
        (5001, "25.99", "EUR"),
        (5002, "30.00", "EUR"),
        (5003, "19.99", "GBP"),
        (5004, "30.00", "GBP"),
        (5005, "12.50", "EUR"),
        (5006, "5000", "JPY"),
        (5007, "0.500", "KWD"),
    ] {
        shop.add(id, "pending", total, currency);
    }
    let (d, config) = start(
        dir.path(),
        &format!("{}\n{}", endpoints(), shop_config(&shop, crate::harness::NOTICE_AT_ONCE)),
    )
    .await;

    // Stripe: a correct payment is fulfilled and confirmed; a short one refunded by default.
    let paid = ["fulfil 5001 25.99 EUR", "notify_customer 5001 25.99 EUR"];
    assert_eq!(post(&config, "stripe", "5001", "25.99", &[]).await, paid);
    assert_eq!(
        post(&config, "stripe", "5002", "25.99", &[]).await,
        ["refund 5002 25.99 EUR", "notify_customer 5002 25.99 EUR"]
    );
    // A refund by the provider after the payment names that payment and goes to review.
    let out = simulate(
        &config,
        &[
            "--endpoint",
            "stripe",
            "--order",
            "5001",
            "--amount",
            "25.99",
            "--currency",
            "EUR",
            "--event",
            "refunded",
            "--post",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("which paid order 5001"), "{}", out.stderr);
    assert!(out.stdout.contains("\n  review "), "{}", out.stdout);

    // Worldpay (Access): signed with the endpoint's key; a pending payment tells the customer.
    assert_eq!(
        post(&config, "worldpay", "5003", "19.99", &["GBP"]).await,
        ["fulfil 5003 19.99 GBP", "notify_customer 5003 19.99 GBP"]
    );
    assert_eq!(
        post(&config, "worldpay", "5004", "30.00", &["GBP", "--event", "pending"]).await,
        ["notify_customer 5004 30.00 GBP"]
    );
    // Worldpay XML: basic auth; captured, then refunded (reviewed).
    assert_eq!(
        post(&config, "wpxml", "5005", "12.50", &[]).await,
        ["fulfil 5005 12.50 EUR", "notify_customer 5005 12.50 EUR"]
    );
    let refund = post(&config, "wpxml", "5005", "12.50", &["EUR", "--event", "refunded"]).await;
    assert_eq!(refund.len(), 1);
    assert!(refund[0].starts_with("review 5005"), "{refund:?}");
    // Adflex: a zero-decimal and a three-decimal currency, exact; a decline tells the customer.
    assert_eq!(
        post(&config, "adflex", "5006", "5000", &["JPY"]).await,
        ["fulfil 5006 5000 JPY", "notify_customer 5006 5000 JPY"]
    );
    assert_eq!(
        post(&config, "adflex", "5007", "0.5", &["KWD", "--event", "failed"]).await,
        ["notify_customer 5007 0.500 KWD"]
    );

    // What the command printed is what the store holds.
    let stored: Vec<String> =
        d.actions().iter().map(|(k, o, a, _)| format!("{k} {o} {a}")).collect();
    assert_eq!(stored.len(), 14, "{stored:?}");
    assert_eq!(stored[..2], paid);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paypal_webhooks_with_the_test_certificate_and_ipn_with_a_test_postback() {
    let paypal_side = crate::paypal::paypal_postback().await;
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(6001, "pending", "25.99", "EUR");
    shop.add(6002, "pending", "45.50", "EUR");
    shop.add(6003, "pending", "19.99", "USD");
    shop.add(6004, "pending", "60.00", "USD");
    let verify = format!("https://{}/cgi-bin/webscr", paypal_side.addr);
    let extra = format!(
        "{}\n{}",
        paypal_endpoints(&verify),
        shop_config(&shop, crate::harness::NOTICE_AT_ONCE)
    );
    let (d, config) = start(dir.path(), &extra).await;

    let out = simulate(
        &config,
        &[
            "--endpoint",
            "paypal",
            "--order",
            "6001",
            "--amount",
            "25.99",
            "--currency",
            "EUR",
            "--post",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("only because endpoint \"paypal\" pins"), "{}", out.stderr);
    assert!(out.stdout.contains("fulfil") && out.stdout.contains("25.99 EUR"), "{}", out.stdout);
    assert_eq!(
        post(&config, "paypal", "6002", "45.50", &["EUR", "--event", "pending"]).await,
        ["notify_customer 6002 45.50 EUR"]
    );
    // IPN: stored unverified, posted back to the test server, then decided.
    let out = simulate(
        &config,
        &[
            "--endpoint",
            "ipn",
            "--order",
            "6003",
            "--amount",
            "19.99",
            "--currency",
            "USD",
            "--post",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("posts it back to verify_url"), "{}", out.stderr);
    assert!(out.stdout.contains("fulfil") && out.stdout.contains("19.99 USD"), "{}", out.stdout);
    assert_eq!(paypal_side.count(), 1);
    assert_eq!(
        post(&config, "ipn", "6004", "59.99", &["USD"]).await,
        ["refund 6004 59.99 USD", "notify_customer 6004 59.99 USD"]
    );
    let templates: Vec<String> = d.actions().into_iter().map(|a| a.3).collect();
    assert_eq!(
        templates,
        ["", "order_confirmed", "payment_pending", "", "order_confirmed", "", "payment_mismatch"]
    );
    d.stop().await;
}

/// Runs `simulate` on a configuration file without a daemon (nothing is posted).
fn refused(text: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), text);
    run(
        bin()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("simulate")
            .arg("--config")
            .arg(&config)
            .args(args),
        b"",
    )
}

#[test]
fn bad_input_and_live_looking_configurations_are_refused_with_exit_2() {
    let db = Path::new("unused.db");
    let text = config_text_with(db, "", "", &endpoints());
    let order = |endpoint: &'static str, amount: &'static str, currency: &'static str| {
        vec!["--endpoint", endpoint, "--order", "1001", "--amount", amount, "--currency", currency]
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (order("nope", "25.99", "EUR"), "has no endpoint \"nope\"; its endpoints are: stripe (stripe), worldpay (worldpay), wpxml (worldpay-xml), adflex (adflex)"),
        (order("stripe", "25.999", "EUR"), "--amount 25.999 has more decimal places than EUR has (2)"),
        (order("stripe", "12.5", "JPY"), "more decimal places than JPY has (0)"),
        (order("stripe", "-5", "EUR"), "--amount -5 is negative"),
        (order("stripe", "ten", "EUR"), "is not an amount such as 25.99"),
        (order("stripe", "10", "EURO"), "--currency \"EURO\" is not an ISO 4217 currency"),
        (order("stripe", "10.50", "MGA"), "Stripe takes MGA in whole units"),
    ];
    for (args, says) in cases {
        let out = refused(&text, &args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }

    // Secrets without the test mark: refused without --i-know, never shown.
    let live = text
        .replace(SECRET, LIVE_SECRET)
        .replace(WORLDPAY_KEY, "wp-key-9f8e7d6c")
        .replace(XML_PASSWORD, "correct-horse-battery");
    for (endpoint, says) in [
        ("stripe", "its secrets[0] (whsec_… (30 chars)) does not contain the word \"test\""),
        ("worldpay", "its keys.\"1\" (… (15 chars))"),
        ("wpxml", "its basic_auth.password"),
    ] {
        let out = refused(&live, &order(endpoint, "10.00", "EUR"));
        assert_eq!(out.code, Some(2), "{endpoint}: {}", out.stderr);
        assert!(out.stderr.contains("looks live") && out.stderr.contains(says), "{}", out.stderr);
        assert!(out.stderr.contains("--i-know"));
        for secret in [LIVE_SECRET, "wp-key-9f8e7d6c", "correct-horse-battery"] {
            assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
        }
    }
    // With --i-know the request is printed (signed, with the basic auth withheld).
    let mut args = order("wpxml", "10.00", "EUR");
    args.push("--i-know");
    let out = refused(&live, &args);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("POST /webhooks/wpxml HTTP/1.1\n"), "{}", out.stdout);
    assert!(
        out.stdout.contains("orderCode=\"1001\"")
            && out.stdout.contains("<lastEvent>CAPTURED</lastEvent>")
    );
    assert!(out.stdout.contains("Authorization: Basic <user \"wp\""), "{}", out.stdout);
    assert!(
        !out.stdout.contains("correct-horse-battery")
            && !out.stderr.contains("correct-horse-battery")
    );
    // An endpoint trusted by its address alone has nothing to mark.
    let address_only = config_text_with(
        db,
        "",
        "",
        "[[endpoint]]\nname = \"wpxml\"\nprovider = \"worldpay-xml\"\nallow_from = [\"127.0.0.1\"]\n",
    );
    let out = refused(&address_only, &order("wpxml", "10.00", "EUR"));
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("trusted by allow_from alone"), "{}", out.stderr);

    // PayPal: a pinned certificate that is not the test key's cannot accept a simulation.
    let other_cert = config_text_with(
        db,
        "",
        "",
        &paypal_endpoints("https://ipnpb.paypal.com/cgi-bin/webscr")
            .replace("test-only-signing.pem", "test-only-tls-127.0.0.1.pem"),
    );
    let out = refused(&other_cert, &order("paypal", "10.00", "EUR"));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("would refuse a simulated PayPal webhook"), "{}", out.stderr);
    assert!(out.stderr.contains("fixtures/paypal/test-only-signing.pem"), "{}", out.stderr);
    // IPN posting back to PayPal's live service looks live.
    let out = refused(&other_cert, &order("ipn", "10.00", "EUR"));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("verify_url is PayPal's live postback"), "{}", out.stderr);
}

#[test]
fn the_demo_needs_no_i_know_and_curl_posts_the_same_request() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        bin()
            .current_dir(dir.path())
            .args(["simulate", "--demo", "--endpoint", "stripe", "--order", "1001"])
            .args(["--amount", "100.00", "--currency", "USD", "--curl"]),
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("printf '%s' '{"), "{}", out.stdout);
    assert!(out.stdout.contains("curl -sS -i -X POST 'http://127.0.0.1:8080/webhooks/stripe'"));
    assert!(out.stdout.contains("-H 'Stripe-Signature: t="));
    assert!(
        out.stdout.contains("\"order_id\": \"1001\"")
            && out.stdout.contains("\"amount_received\": 10000")
    );
}
