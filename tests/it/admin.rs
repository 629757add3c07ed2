//! The admin listener: where an order's payment stands, for the shop's confirmation page.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;

use crate::harness::{self, pi_event, shop_config, Backend, Daemon, Shop, SECRET};

const TOKEN: &str = "admin-token-0123456789abcdef";

async fn status(admin: SocketAddr, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> =
        auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
    let (code, body) = harness::request(admin, "GET", path, &headers, Default::default()).await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn start(store: &Backend, dir: &Path, shop: &Shop, admin: SocketAddr) -> Daemon {
    let extra = format!(
        "[policy]\non_currency_mismatch = \"review\"\n\
         [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
         [messages]\npaid = \"Thank you: your order is on its way.\"\n"
    );
    let d = Daemon::start_on(store, dir, "", "", &shop_config(shop, &extra)).await;
    harness::accepting(admin).await;
    d
}

/// The admin listener stays on loopback unless told otherwise, and needs a real token.
#[test]
fn the_admin_listener_is_refused_off_loopback_and_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let db = dir.path().join("inbox.db");
    for (admin, why) in [
        (format!("listen = \"0.0.0.0:8081\"\ntoken = \"{TOKEN}\""), "not a loopback address"),
        ("listen = \"127.0.0.1:8081\"".to_owned(), "admin.token: is required"),
        ("token = \"short\"".to_owned(), "at least 16 characters"),
    ] {
        let text = crate::harness::config_text_with(
            &db,
            "",
            "",
            &shop_config(&shop, &format!("[admin]\n{admin}\n")),
        );
        let err = reconciled::config::Config::from_toml(&text, Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(!err.to_string().contains(TOKEN));
    }
    let remote = crate::harness::config_text_with(
        &db,
        "",
        "",
        &shop_config(
            &shop,
            &format!(
                "[admin]\nlisten = \"0.0.0.0:8081\"\nallow_remote = true\ntoken = \"{TOKEN}\"\n"
            ),
        ),
    );
    assert!(reconciled::config::Config::from_toml(&remote, Path::new("t.toml")).is_ok());
}

const PULL_TOKEN: &str = "pull-token-0123456789abcdef";

async fn pull(admin: SocketAddr, query: &str, token: &str) -> (StatusCode, Vec<Value>) {
    let (code, body) = status(admin, &format!("/v1/outbox/backoffice{query}"), Some(token)).await;
    (code, body["actions"].as_array().cloned().unwrap_or_default())
}

async fn settle(admin: SocketAddr, id: &Value, verb: &str) -> StatusCode {
    let auth = format!("Bearer {PULL_TOKEN}");
    let path = format!("/v1/outbox/backoffice/{id}/{verb}");
    harness::request(admin, "POST", &path, &[("authorization", &auth)], Default::default()).await.0
}

// On both stores: a PostgreSQL store is where several daemons answer the confirmation page
// and hand out pull deliveries.
harness::on_both_stores! {
/// Each state the confirmation page can show, from the payments the daemon decided, with the
/// configured sentence; refusals for a missing token, a wrong one, an unknown order and a bad
/// `wait`.
async fn the_payment_status_of_each_order_follows_its_payments(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for id in 1001..=1006 {
        shop.add(id, "pending", "100.00", "USD");
    }
    let admin = harness::free_addr();
    let d = start(&store, dir.path(), &shop, admin).await;
    for (event, action, pi, order, amount, currency) in [
        ("evt_paid", "succeeded", "pi_1", "1001", 10000, "usd"),
        ("evt_processing", "processing", "pi_2", "1002", 10000, "usd"),
        ("evt_short", "succeeded", "pi_3", "1003", 6000, "usd"),
        ("evt_failed", "payment_failed", "pi_4", "1004", 10000, "usd"),
        ("evt_eur", "succeeded", "pi_5", "1005", 10000, "eur"),
    ] {
        let body = pi_event(event, action, pi, order, amount, currency);
        assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    }
    d.settle().await;
    let path = |order: &str| format!("/v1/orders/{order}/payment");
    for (order, state) in [
        ("1001", "paid"),
        ("1002", "processing"),
        ("1003", "refunded"),
        ("1004", "failed"),
        ("1005", "review"),
        ("1006", "awaiting_payment"),
    ] {
        let (code, body) = status(admin, &path(order), Some(TOKEN)).await;
        assert_eq!(
            (code, body["state"].as_str()),
            (StatusCode::OK, Some(state)),
            "{order}: {body}"
        );
        assert_eq!(body["order_id"], order);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    let (_, paid) = status(admin, &path("1001"), Some(TOKEN)).await;
    assert_eq!(paid["message"], "Thank you: your order is on its way.");
    assert_eq!(
        paid["payments"],
        serde_json::json!([{"provider": "stripe", "payment_id": "pi_1", "status": "succeeded", "amount": "100.00", "currency": "USD"}])
    );

    for (token, path, expected) in [
        (None, path("1001"), StatusCode::UNAUTHORIZED),
        (Some("admin-token-0123456789abcdeX"), path("1001"), StatusCode::UNAUTHORIZED),
        (Some(TOKEN), path("9999"), StatusCode::NOT_FOUND),
        (Some(TOKEN), "/v1/orders/1001".to_owned(), StatusCode::NOT_FOUND),
        (Some(TOKEN), format!("{}?wait=31", path("1001")), StatusCode::BAD_REQUEST),
        (Some(TOKEN), format!("{}?wait=x", path("1001")), StatusCode::BAD_REQUEST),
    ] {
        let (code, body) = status(admin, &path, token).await;
        assert_eq!(code, expected, "{path} {token:?}: {body}");
        assert!(!body.to_string().contains(TOKEN), "{body}");
    }
    d.stop().await;
}

/// With `wait`, the answer comes as soon as the payment is decided, not when `wait` runs out.
async fn a_long_poll_answers_when_the_payment_is_decided(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let admin = harness::free_addr();
    let d = start(&store, dir.path(), &shop, admin).await;
    let started = Instant::now();
    let poll =
        tokio::spawn(
            async move { status(admin, "/v1/orders/1001/payment?wait=20", Some(TOKEN)).await },
        );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the poll answered before anything was paid");
    let body = pi_event("evt_paid", "succeeded", "pi_1", "1001", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    let (code, body) = poll.await.unwrap();
    assert_eq!((code, body["state"].as_str()), (StatusCode::OK, Some("paid")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(15), "answered only when wait ran out");
    // Nothing to wait for: an open state answers when wait runs out.
    let started = Instant::now();
    shop.add(1002, "pending", "100.00", "USD");
    let (_, body) = status(admin, "/v1/orders/1002/payment?wait=1", Some(TOKEN)).await;
    assert_eq!(body["state"], "awaiting_payment");
    assert!(started.elapsed() >= Duration::from_secs(1));
    d.stop().await;
}

/// A pull sink: fetching leases the oldest owed actions (one order's in order), ack marks one
/// delivered, nack brings it back after the backoff, a lease not settled runs out and the
/// action is handed out again with the same webhook-id, and a long poll answers when an action
/// is written.
async fn a_pull_sink_leases_acks_and_nacks(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for id in 1001..=1003 {
        shop.add(id, "pending", "100.00", "USD");
    }
    let admin = harness::free_addr();
    let extra = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
         [[sink]]\nname = \"backoffice\"\nkind = \"pull\"\ntoken = \"{PULL_TOKEN}\"\nlease_secs = 1\n\
         retry_base = \"200ms\"\nretry_max = \"200ms\"\n"
    );
    let d = Daemon::start_on(&store, dir.path(), "", "", &shop_config(&shop, &extra)).await;
    harness::accepting(admin).await;
    let body = pi_event("evt_1", "succeeded", "pi_1", "1001", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    d.settle().await;

    // The sink's own token, and only it.
    assert_eq!(pull(admin, "", TOKEN).await.0, StatusCode::UNAUTHORIZED);
    let (code, _) = status(admin, "/v1/outbox/nobody", Some(PULL_TOKEN)).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // The fulfilment first; the notice of the same order waits behind it.
    let (code, first) = pull(admin, "?limit=1", PULL_TOKEN).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["data"]["kind"], "fulfil");
    assert_eq!(first[0]["type"], "action.fulfil");
    let fulfil_hook = first[0]["webhook_id"].clone();
    assert!(pull(admin, "", PULL_TOKEN).await.1.is_empty(), "leased, and holding its order");
    assert_eq!(settle(admin, &first[0]["data"]["id"], "ack").await, StatusCode::NO_CONTENT);
    let (_, next) = pull(admin, "", PULL_TOKEN).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["data"]["kind"], "notify_customer");
    // Nacked: back after the backoff.
    assert_eq!(settle(admin, &next[0]["data"]["id"], "nack").await, StatusCode::NO_CONTENT);
    assert!(pull(admin, "", PULL_TOKEN).await.1.is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, again) = pull(admin, "", PULL_TOKEN).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["webhook_id"], next[0]["webhook_id"]);
    assert_eq!(settle(admin, &again[0]["data"]["id"], "ack").await, StatusCode::NO_CONTENT);
    assert_eq!(
        settle(admin, &again[0]["data"]["id"], "ack").await,
        StatusCode::NO_CONTENT,
        "an ack repeated"
    );
    assert_eq!(settle(admin, &serde_json::json!(999), "ack").await, StatusCode::NOT_FOUND);

    // A lease never settled runs out: the action comes back, with the same webhook-id.
    let body = pi_event("evt_2", "succeeded", "pi_2", "1002", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    d.settle().await;
    let (_, leased) = pull(admin, "?limit=1", PULL_TOKEN).await;
    assert_eq!(leased[0]["data"]["order_id"], "1002");
    assert_ne!(leased[0]["webhook_id"], fulfil_hook);
    assert!(pull(admin, "", PULL_TOKEN).await.1.is_empty());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, back) = pull(admin, "?limit=1", PULL_TOKEN).await;
    assert_eq!(back[0]["webhook_id"], leased[0]["webhook_id"]);
    for a in [&back[0]] {
        assert_eq!(settle(admin, &a["data"]["id"], "ack").await, StatusCode::NO_CONTENT);
    }
    let (_, rest) = pull(admin, "", PULL_TOKEN).await;
    for a in &rest {
        assert_eq!(settle(admin, &a["data"]["id"], "ack").await, StatusCode::NO_CONTENT);
    }

    // A long poll answers when an action is written, not when wait runs out.
    let started = Instant::now();
    let poll = tokio::spawn(async move { pull(admin, "?wait=20", PULL_TOKEN).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    let body = pi_event("evt_3", "succeeded", "pi_3", "1003", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    let (code, got) = poll.await.unwrap();
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got[0]["data"]["order_id"], "1003");
    assert!(started.elapsed() < Duration::from_secs(15));
    let config = d.store.clone();
    d.stop().await;
    let states =
        harness::reading_store(&config, |s| async move { s.deliveries(Default::default()).await })
            .unwrap();
    let delivered = states.iter().filter(|s| s.state == "delivered").count();
    assert_eq!(delivered, 4, "{states:?}");
}

/// A pull delivery nacked past `give_up_after` is dead; acked afterwards (the consumer did carry
/// it out), it is delivered.
async fn a_dead_pull_delivery_acked_is_delivered(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let admin = harness::free_addr();
    let extra = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
         [[sink]]\nname = \"backoffice\"\nkind = \"pull\"\ntoken = \"{PULL_TOKEN}\"\n\
         actions = [\"fulfil\"]\ngive_up_after = \"1ms\"\n"
    );
    let d = Daemon::start_on(&store, dir.path(), "", "", &shop_config(&shop, &extra)).await;
    harness::accepting(admin).await;
    let body = pi_event("evt_1", "succeeded", "pi_1", "1001", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &body).await.0, StatusCode::OK);
    d.settle().await;
    let (_, got) = pull(admin, "", PULL_TOKEN).await;
    let id = got[0]["data"]["id"].clone();
    assert_eq!(settle(admin, &id, "nack").await, StatusCode::NO_CONTENT);
    let state = |config: &reconciled::store::StoreConfig| {
        harness::reading_store(config, |s| async move { s.deliveries(Default::default()).await })
            .unwrap()
            .remove(0)
            .state
    };
    assert_eq!(state(&d.store), "dead");
    assert!(pull(admin, "", PULL_TOKEN).await.1.is_empty(), "a dead delivery is not handed out");
    assert_eq!(settle(admin, &id, "ack").await, StatusCode::NO_CONTENT);
    assert_eq!(state(&d.store), "delivered");
    d.stop().await;
}
}
