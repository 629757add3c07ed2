//! Adflex (assumed format): an HMAC-signed endpoint over HTTP, and its decisions.

use hyper::StatusCode;
use reconciled::provider::adflex;

use crate::harness::{fixture_in, shop_config, Daemon, Shop};

const KEY: &str = "adflex_test_secret";

fn endpoint() -> String {
    format!(
        "[[endpoint]]\nname = \"adflex\"\nprovider = \"adflex\"\nsecrets = [\"{KEY}\"]\nsignature_header = \"X-Adflex-Signature\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_notifications_are_verified_stored_once_and_decided() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(3001, "pending", "49.99", "GBP");
    shop.add(3002, "pending", "12.00", "GBP");
    shop.add(3003, "pending", "20.00", "GBP");
    let extra = format!("{}\n{}", shop_config(&shop, crate::harness::NOTICE_AT_ONCE), endpoint());
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let paid = fixture_in("adflex", "authorised.json");
    let sig = adflex::sign(KEY.as_bytes(), &paid);

    let (status, _) =
        d.post("/webhooks/adflex", &[("x-adflex-signature", &sig)], paid.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, text) =
        d.post("/webhooks/adflex", &[("x-adflex-signature", &sig)], paid.clone()).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "duplicate\n"));
    // Unsigned, wrongly signed, tampered: refused, nothing stored.
    let wrong = adflex::sign(b"not_the_key", &paid);
    let mut tampered = paid.clone();
    let pos = tampered.windows(5).position(|w| w == b"49.99").unwrap();
    tampered[pos] = b'1';
    for (headers, body) in [
        (vec![], paid.clone()),
        (vec![("x-adflex-signature", wrong.as_str())], paid.clone()),
        (vec![("x-adflex-signature", sig.as_str())], tampered),
    ] {
        let (status, _) = d.post("/webhooks/adflex", &headers, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    for f in ["declined.json", "pending.json", "refunded.json", "chargeback.json"] {
        let body = fixture_in("adflex", f);
        let sig = adflex::sign(KEY.as_bytes(), &body);
        assert_eq!(
            d.post("/webhooks/adflex", &[("x-adflex-signature", &sig)], body).await.0,
            StatusCode::OK
        );
        d.settle().await;
    }
    assert_eq!(d.rows().len(), 5);
    let got: Vec<(String, String, String, String)> = d.actions();
    let a = |kind: &str, order: &str, amount: &str, template: &str| {
        (kind.to_owned(), order.to_owned(), amount.to_owned(), template.to_owned())
    };
    assert_eq!(
        got,
        [
            a("fulfil", "3001", "49.99 GBP", ""),
            a("notify_customer", "3001", "49.99 GBP", "order_confirmed"),
            a("notify_customer", "3002", "12.00 GBP", "payment_failed"),
            a("notify_customer", "3003", "20.00 GBP", "payment_pending"),
            // The partial refund and the chargeback: each to an admin, with its own amount.
            a("review", "3001", "10.00 GBP", ""),
            a("review", "3001", "49.99 GBP", ""),
        ]
    );
    d.stop().await;
}

/// `reconciled sign worldpay|adflex --curl` produce requests a daemon accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_commands_for_worldpay_and_adflex_produce_accepted_requests() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}\n[[endpoint]]\nname = \"worldpay\"\nprovider = \"worldpay\"\nkeys = {{ \"7\" = \"wp_key_seven\" }}\n",
        endpoint()
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let bin = env!("CARGO_BIN_EXE_reconciled");
    let wp = format!("{}/fixtures/worldpay", env!("CARGO_MANIFEST_DIR"));
    let event = std::fs::read_dir(&wp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a worldpay fixture");
    let cases = [
        vec![
            "sign",
            "worldpay",
            "--key-id",
            "7",
            "--secret",
            "wp_key_seven",
            "--body",
            event.to_str().unwrap(),
        ],
        vec![
            "sign",
            "adflex",
            "--secret",
            KEY,
            "--body",
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/adflex/declined.json"),
        ],
    ];
    for (args, path) in cases.iter().zip(["worldpay", "adflex"]) {
        let url = format!("http://{}/webhooks/{path}", d.addr);
        let mut full = args.clone();
        full.extend(["--curl", url.as_str()]);
        let out = std::process::Command::new(bin).args(&full).output().unwrap();
        assert!(out.status.success());
        let cmd = String::from_utf8(out.stdout).unwrap();
        let sh = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh").arg("-c").arg(cmd.trim()).output().unwrap()
        })
        .await
        .unwrap();
        let resp = String::from_utf8_lossy(&sh.stdout);
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{path}: {resp}");
    }
    assert_eq!(d.rows().len(), 2);
    d.stop().await;
}
