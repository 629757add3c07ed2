//! Inquiries: a payment left open is looked up with a local fake of Stripe's API, and a move
//! the webhook never reported is stored as an inbox row of source `inquiry` and decided.

use std::path::Path;
use std::sync::Arc;

use crate::harness::{self, pi_event, shop_config, Backend, Daemon, Shop, SECRET};
use crate::provider_api::FakeStripe;

const KEY: &str = "rk_test_inquiry_51PqR0123456789abcdef";

/// The PaymentIntent of order `order` as Stripe answers for it.
fn intent(pi: &str, order: &str, status: &str, received: i64) -> String {
    format!(
        r#"{{"id":"{pi}","object":"payment_intent","amount":1000,"amount_capturable":0,"amount_received":{received},"currency":"eur","last_payment_error":null,"metadata":{{"order_id":"{order}"}},"status":"{status}","livemode":false}}"#
    )
}

async fn daemon(store: &Backend, dir: &Path, stripe: &FakeStripe, shop: &Shop) -> Daemon {
    let key_file = dir.join("stripe-key");
    std::fs::write(&key_file, KEY).unwrap();
    let extra = format!(
        "[endpoint.api]\nkey_file = \"{}\"\nbase_url = \"{}\"\ntls_ca_file = \"{}\"\n{}[policy]\ninquire_after = \"1s\"\n",
        key_file.display(),
        stripe.base_url,
        FakeStripe::ca_pem_path(),
        shop_config(shop, "")
    );
    let d = Daemon::start_on(store, dir, "", "", &extra).await;
    assert_eq!(d.get("/healthz").await.0, 200);
    d
}

fn asked_about(stripe: &FakeStripe, pi: &str) -> usize {
    let path = format!("/v1/payment_intents/{pi}");
    stripe.requests().iter().filter(|r| r.path == path && r.status == 200).count()
}

harness::on_both_stores! {
    /// A payment whose `succeeded` webhook never comes: the inquiry sees Stripe's state move,
    /// stores the answer once, and the order is fulfilled once.
    async fn a_payment_left_processing_is_fulfilled_after_the_inquiry_sees_it_succeed(store) {
        let dir = tempfile::tempdir().unwrap();
        let stripe = FakeStripe::start(KEY).await;
        let shop = Shop::create(dir.path());
        shop.add(1, "pending", "10.00", "EUR");
        stripe.set_payment_intent("pi_inq_1", &intent("pi_inq_1", "1", "processing", 0));
        let d = daemon(&store, dir.path(), &stripe, &shop).await;
        let processing = pi_event("evt_inq_1", "processing", "pi_inq_1", "1", 1000, "eur");
        assert_eq!(d.post_stripe(SECRET, &processing).await.0, 200);
        // Asked about, twice: Stripe still says processing, so nothing is stored.
        d.until("two inquiries", || asked_about(&stripe, "pi_inq_1") >= 2).await;
        assert_eq!(d.inbox().len(), 1);
        assert!(d.outbox().iter().all(|a| a.kind.to_string() != "fulfil"));

        stripe.set_payment_intent("pi_inq_1", &intent("pi_inq_1", "1", "succeeded", 1000));
        d.until("the order fulfilled", || {
            d.outbox().iter().any(|a| a.kind.to_string() == "fulfil")
        })
        .await;
        d.settle().await;
        let rows = d.inbox();
        assert_eq!(rows.len(), 2);
        let answer = &rows[1];
        assert_eq!(answer.source.to_string(), "inquiry");
        assert_eq!(answer.dedup_key, "inquiry:pi_inq_1:succeeded:1000");
        assert_eq!(answer.event_type.as_deref(), Some("payment_intent.succeeded"));
        // The payment is no longer open: no more questions, no second row or action.
        let asked = asked_about(&stripe, "pi_inq_1");
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert_eq!(asked_about(&stripe, "pi_inq_1"), asked);
        assert_eq!(d.inbox().len(), 2);
        let fulfils: Vec<_> =
            d.outbox().into_iter().filter(|a| a.kind.to_string() == "fulfil").collect();
        assert_eq!(fulfils.len(), 1);
        assert_eq!(fulfils[0].order_id.as_deref(), Some("1"));
        d.stop().await;
    }
}

/// A payment is asked about at most 24 times, once per `inquire_after`; the same answer is
/// stored once however often it is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inquiries_are_bounded_and_the_same_answer_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let stripe = FakeStripe::start(KEY).await;
    let shop = Shop::create(dir.path());
    shop.add(1, "pending", "10.00", "EUR");
    // Stripe says the payment failed; the shop's payment stays pending until decided.
    let mut failed = intent("pi_inq_2", "1", "requires_payment_method", 0);
    failed = failed.replace(
        "\"last_payment_error\":null",
        "\"last_payment_error\":{\"message\":\"The debit was refused\"}",
    );
    stripe.set_payment_intent("pi_inq_2", &failed);
    // A daemon without the API decides the webhook; the inquiries are run here by hand.
    let extra = shop_config(&shop, "");
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let processing = pi_event("evt_inq_2", "processing", "pi_inq_2", "1", 1000, "eur");
    assert_eq!(d.post_stripe(SECRET, &processing).await.0, 200);
    d.settle().await;
    d.stop().await;

    let key_file = dir.path().join("k");
    std::fs::write(&key_file, KEY).unwrap();
    let config = reconciled::config::Config::from_toml(
        &harness::config_text_with(
            &dir.path().join("inbox.db"),
            "",
            "",
            &format!(
                "[endpoint.api]\nkey_file = \"{}\"\nbase_url = \"{}\"\ntls_ca_file = \"{}\"\n",
                key_file.display(),
                stripe.base_url,
                FakeStripe::ca_pem_path()
            ),
        ),
        &dir.path().join("c.toml"),
    )
    .unwrap();
    let api =
        reconciled::ask::stripe::StripeApi::new(config.endpoints[0].api.as_ref().unwrap()).unwrap();
    let store = reconciled::store::Store::open(&config.store).await.unwrap();
    let inquirer = reconciled::ask::inquire::Inquirer {
        store: store.clone(),
        apis: [("stripe".to_owned(), Arc::new(api))].into_iter().collect(),
        after: std::time::Duration::from_secs(3600),
        metrics: None,
    };
    let hour = 3_600_000;
    let start = reconciled::time::now_ms() + hour + 1;
    let mut asked = 0;
    let mut stored = 0;
    for n in 0..30 {
        let s = inquirer.pass(start + n * (hour + 1000)).await.unwrap();
        asked += s.asked;
        stored += s.stored;
        // Within the hour after an inquiry, nothing is asked.
        let again = inquirer.pass(start + n * (hour + 1000) + hour / 2).await.unwrap();
        assert_eq!(again.asked, 0, "pass {n}: asked within the hour");
    }
    assert_eq!(asked, 24, "at most 24 inquiries");
    assert_eq!(stored, 1, "the same answer once");
    assert_eq!(asked_about(&stripe, "pi_inq_2"), 24);
    let rows = store.list(Default::default()).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].dedup_key, "inquiry:pi_inq_2:requires_payment_method:1000");
    assert_eq!(rows[1].event_type.as_deref(), Some("payment_intent.payment_failed"));
    store.close().await;
}
