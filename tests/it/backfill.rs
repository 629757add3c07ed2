//! Backfill: the Stripe events a webhook never brought, listed from a local fake of Stripe's
//! API by `reconciled backfill` (beside a running daemon) and by the daemon's own timer.

use std::path::Path;
use std::process::Command;

use crate::cli::{bin, run, Output};
use crate::harness::{self, config_text_on, pi_event, shop_config, Backend, Daemon, Shop, SECRET};
use crate::provider_api::FakeStripe;

const KEY: &str = "rk_test_backfill_51PqR0123456789abcdef";

/// The `[endpoint.api]` table for the fake, its key written to a file in `dir`.
fn api_table(dir: &Path, stripe: &FakeStripe, more: &str) -> String {
    let key_file = dir.join("stripe-key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    format!(
        "[endpoint.api]\nkey_file = \"{}\"\nbase_url = \"{}\"\ntls_ca_file = \"{}\"\n{more}\n",
        key_file.display(),
        stripe.base_url,
        FakeStripe::ca_pem_path()
    )
}

/// Starts a daemon whose Stripe endpoint can ask `stripe`, with a shop; writes its
/// configuration to `dir/test.toml` for the command line.
async fn daemon(
    store: &Backend,
    dir: &Path,
    stripe: &FakeStripe,
    shop: &Shop,
    api_more: &str,
) -> Daemon {
    let extra = format!("{}{}", api_table(dir, stripe, api_more), shop_config(shop, ""));
    std::fs::write(
        dir.join("test.toml"),
        config_text_on(store, &dir.join("inbox.db"), "", "", &extra),
    )
    .unwrap();
    Daemon::start_on(store, dir, "", "", &extra).await
}

/// Runs `reconciled backfill --config dir/test.toml --endpoint stripe ARGS` off the runtime.
async fn backfill(dir: &Path, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd: Command = bin();
    cmd.arg("backfill").arg("--config").arg(dir.join("test.toml")).args(["--endpoint", "stripe"]);
    cmd.args(args);
    if let Some(point) = failpoint {
        cmd.env("RECONCILED_FAILPOINT", point);
    }
    tokio::task::spawn_blocking(move || run(&mut cmd, b"")).await.unwrap()
}

/// The payment of order `n`, as Stripe would list it.
fn payment(n: i64) -> String {
    String::from_utf8(pi_event(
        &format!("evt_bf_{n:04}"),
        "succeeded",
        &format!("pi_bf_{n:04}"),
        &n.to_string(),
        1000,
        "eur",
    ))
    .unwrap()
}

/// Orders `orders`, pending in the shop, each paid at Stripe (its event listed there).
fn paid_at_stripe(shop: &Shop, stripe: &FakeStripe, orders: std::ops::RangeInclusive<i64>) {
    for n in orders {
        shop.add(n, "pending", "10.00", "EUR");
        stripe.add_event(&payment(n));
    }
}

/// An event no decision uses.
fn customer_event(n: i64) -> String {
    format!(
        r#"{{"id":"evt_cus_{n:04}","object":"event","api_version":"2024-06-20","created":{},"type":"customer.created","data":{{"object":{{"id":"cus_{n:04}","object":"customer"}}}}}}"#,
        harness::now()
    )
}

/// `(fulfil actions, distinct orders fulfilled)`.
fn fulfilled(d: &Daemon) -> (usize, usize) {
    let fulfils: Vec<String> = d
        .outbox()
        .into_iter()
        .filter(|a| a.kind.to_string() == "fulfil")
        .map(|a| a.order_id.unwrap_or_default())
        .collect();
    let distinct: std::collections::HashSet<&String> = fulfils.iter().collect();
    (fulfils.len(), distinct.len())
}

/// The endpoint's backfill cursor in the store `config` names.
fn cursor(config: &reconciled::store::StoreConfig) -> Option<String> {
    harness::reading_store(config, |s| async move { s.meta("backfill_cursor:stripe").await })
        .unwrap()
}

/// Waits (up to a minute: rows another process stores are taken up within seconds) until
/// `n` orders are fulfilled.
async fn until_fulfilled(d: &Daemon, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fulfilled(d).1 < n {
        assert!(std::time::Instant::now() < deadline, "fulfilled {:?} of {n}", fulfilled(d));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

harness::on_both_stores! {
    /// 300 payments, 100 of which never came by webhook: one pass stores those 100 and
    /// nothing else, every order is fulfilled once, and a second pass stores nothing.
    async fn one_pass_stores_what_the_webhook_missed_and_a_second_stores_nothing(store) {
        let dir = tempfile::tempdir().unwrap();
        let stripe = FakeStripe::start(KEY).await;
        let shop = Shop::create(dir.path());
        for n in 1..=300 {
            shop.add(n, "pending", "10.00", "EUR");
            stripe.add_event(&payment(n));
            if n % 30 == 0 {
                stripe.add_event(&customer_event(n));
            }
        }
        let d = daemon(&store, dir.path(), &stripe, &shop, "").await;
        for n in (1..=300).filter(|n| n % 3 != 0) {
            let (status, _) = d.post_stripe(SECRET, payment(n).as_bytes()).await;
            assert_eq!(status, 200);
        }
        until_fulfilled(&d, 200).await;

        // A dry run counts and writes nothing, the cursor included.
        let dry = backfill(dir.path(), &["--since", "1h", "--dry-run"], None).await;
        assert!(dry.stdout.contains("would store 100, already had 200"), "{}{}", dry.stdout, dry.stderr);
        assert_eq!(d.inbox().len(), 200);
        assert_eq!(cursor(&d.store), None);

        let out = backfill(dir.path(), &["--since", "1h"], None).await;
        assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("310 event(s) listed")
                && out.stdout.contains("stored 100, already had 200, 10 of types no decision uses"),
            "{}",
            out.stdout
        );
        until_fulfilled(&d, 300).await;
        d.settle().await;
        assert_eq!(fulfilled(&d), (300, 300), "each order fulfilled once");

        let rows = d.inbox();
        assert_eq!(rows.len(), 300);
        let by_source = |s: &str| rows.iter().filter(|r| r.source.to_string() == s).count();
        assert_eq!((by_source("webhook"), by_source("backfill")), (200, 100));
        assert!(rows.iter().all(|r| r.delivery_count == 1), "a listed event is not a delivery");
        let missing = rows.iter().find(|r| r.dedup_key == "evt_bf_0003").unwrap();
        assert_eq!(missing.source.to_string(), "backfill");

        // From the cursor: nothing newer. From a time again: everything is had already.
        let again = backfill(dir.path(), &[], None).await;
        assert_eq!(again.code, Some(0), "{}", again.stderr);
        assert!(again.stdout.contains("0 event(s) listed"), "{}", again.stdout);
        let since = backfill(dir.path(), &["--since", "1h"], None).await;
        assert!(since.stdout.contains("stored 0, already had 300"), "{}", since.stdout);
        assert_eq!(d.inbox().len(), 300);
        assert!(d.inbox().iter().all(|r| r.delivery_count == 1));
        assert_eq!(fulfilled(&d), (300, 300));
        assert_eq!(stripe.max_concurrent(), 1, "one request at a time");
        d.stop().await;
    }

    /// A pass killed after a page's rows are committed and before the cursor passes them
    /// lists that page again: nothing lost, nothing stored or decided twice.
    async fn a_kill_between_a_page_and_its_cursor_loses_and_repeats_nothing(store) {
        let dir = tempfile::tempdir().unwrap();
        let stripe = FakeStripe::start(KEY).await;
        let shop = Shop::create(dir.path());
        for n in 1..=250 {
            shop.add(n, "pending", "10.00", "EUR");
        }
        for n in 1..=20 {
            stripe.add_event(&payment(n));
        }
        let d = daemon(&store, dir.path(), &stripe, &shop, "").await;
        let first = backfill(dir.path(), &["--since", "1h"], None).await;
        assert!(first.stdout.contains("stored 20"), "{}{}", first.stdout, first.stderr);
        for n in 21..=250 {
            stripe.add_event(&payment(n));
        }
        // Killed once the first page after the cursor (events 21 to 120) is committed.
        let killed = backfill(dir.path(), &[], Some("backfill_before_cursor")).await;
        assert_ne!(killed.code, Some(0), "the failpoint aborts the pass");
        assert!(killed.stderr.contains("failpoint backfill_before_cursor"), "{}", killed.stderr);
        let resumed = backfill(dir.path(), &[], None).await;
        assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
        assert!(
            resumed.stdout.contains("230 event(s) listed")
                && resumed.stdout.contains("stored 130, already had 100"),
            "the page is listed again: {}",
            resumed.stdout
        );
        until_fulfilled(&d, 250).await;
        d.settle().await;
        assert_eq!(fulfilled(&d), (250, 250));
        assert_eq!(d.inbox().len(), 250);
        d.stop().await;
    }
}

/// A 429 is waited out as its Retry-After says; a 500 ends the pass, which the next one
/// resumes from its cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_waited_out_and_a_failing_api_ends_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let stripe = FakeStripe::start(KEY).await;
    let shop = Shop::create(dir.path());
    paid_at_stripe(&shop, &stripe, 1..=150);
    let d = daemon(&Backend::Sqlite, dir.path(), &stripe, &shop, "").await;
    stripe.fail_next(1, 429, Some(1));
    let started = std::time::Instant::now();
    let first = backfill(dir.path(), &["--after", "evt_bf_0100"], None).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "Retry-After honoured");
    assert!(first.stdout.contains("stored 50"), "{}", first.stdout);
    let statuses: Vec<u16> = stripe.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200], "asked again after the wait");

    // Fifty more; the API fails on the first page: the pass stops, nothing moves.
    paid_at_stripe(&shop, &stripe, 151..=200);
    stripe.fail_next(1, 500, None);
    let failed = backfill(dir.path(), &[], None).await;
    assert_ne!(failed.code, Some(0));
    assert!(
        failed.stderr.contains("backfill stopped early") && failed.stderr.contains("500"),
        "{}",
        failed.stderr
    );
    let resumed = backfill(dir.path(), &[], None).await;
    assert!(resumed.stdout.contains("stored 50, already had 0"), "{}", resumed.stdout);
    assert!(stripe.requests().iter().all(|r| r
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == &format!("Bearer {KEY}"))));
    until_fulfilled(&d, 100).await;
    d.stop().await;
    assert_eq!(stripe.max_concurrent(), 1);
}

/// An answer slower than `timeout_secs` ends the pass; the next one stores what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_ends_the_pass_and_the_next_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let stripe = FakeStripe::start(KEY).await;
    let shop = Shop::create(dir.path());
    paid_at_stripe(&shop, &stripe, 1..=3);
    let d = daemon(&Backend::Sqlite, dir.path(), &stripe, &shop, "timeout_secs = 1").await;
    stripe.delay_next(1, std::time::Duration::from_secs(3));
    let slow = backfill(dir.path(), &["--since", "1h"], None).await;
    assert_ne!(slow.code, Some(0));
    assert!(slow.stderr.contains("timed out"), "{}", slow.stderr);
    assert!(slow.stdout.contains("stored 0"), "{}", slow.stdout);
    let next = backfill(dir.path(), &[], None).await;
    assert!(next.stdout.contains("stored 3"), "{}{}", next.stdout, next.stderr);
    until_fulfilled(&d, 3).await;
    d.stop().await;
}

/// With `backfill_every`, the daemon lists missed events by itself, from its cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_backfills_on_its_own_timer() {
    let dir = tempfile::tempdir().unwrap();
    let stripe = FakeStripe::start(KEY).await;
    let shop = Shop::create(dir.path());
    paid_at_stripe(&shop, &stripe, 1..=5);
    let d = daemon(&Backend::Sqlite, dir.path(), &stripe, &shop, "backfill_every = \"1m\"").await;
    // Answered once the store is open.
    assert_eq!(d.get("/healthz").await.0, 200);
    until_fulfilled(&d, 5).await;
    let rows = d.inbox();
    assert!(rows.iter().all(|r| r.source.to_string() == "backfill"));
    assert_eq!(cursor(&d.store).as_deref(), Some("evt_bf_0005"));
    d.stop().await;
}

/// A daemon stopped while its first pass walks back to the oldest page stores nothing and
/// moves no cursor (a page short of the oldest would put the cursor past the older ones for
/// good); started again, it stores every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_stopped_while_walking_back_moves_no_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let stripe = FakeStripe::start(KEY).await;
    let shop = Shop::create(dir.path());
    // Three pages of 100: the walk back asks twice after the newest page.
    paid_at_stripe(&shop, &stripe, 1..=250);
    stripe.delay_next(2, std::time::Duration::from_millis(1500));
    let every = "backfill_every = \"1m\"";
    let d = daemon(&Backend::Sqlite, dir.path(), &stripe, &shop, every).await;
    assert_eq!(d.get("/healthz").await.0, 200);
    // The first pass starts 2 s after start; its first two answers take 1.5 s each.
    tokio::time::sleep(std::time::Duration::from_millis(4000)).await;
    assert_eq!(stripe.requests().len(), 2, "stopped during the walk's first step back");
    let config = d.store.clone();
    d.stop().await;
    assert_eq!(cursor(&config), None, "no cursor from a page short of the oldest");
    let rows = harness::reading_store(&config, |s| async move { s.list(Default::default()).await })
        .unwrap();
    assert!(rows.is_empty(), "{} rows stored", rows.len());

    let d = daemon(&Backend::Sqlite, dir.path(), &stripe, &shop, every).await;
    assert_eq!(d.get("/healthz").await.0, 200);
    until_fulfilled(&d, 250).await;
    d.stop().await;
}

/// A cursor Stripe no longer lists (the daemon was away past Stripe's 30 days): the pass says
/// so and goes on from the oldest event Stripe still has, instead of failing every period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_stripe_let_go_resumes_from_the_oldest_event_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let stripe = FakeStripe::start(KEY).await;
    let shop = Shop::create(dir.path());
    paid_at_stripe(&shop, &stripe, 1..=5);
    let d = daemon(&Backend::Sqlite, dir.path(), &stripe, &shop, "").await;
    assert_eq!(d.get("/healthz").await.0, 200);
    let db = d.db.clone();
    harness::as_tool(&db, |s| async move {
        s.set_meta("backfill_cursor:stripe", "evt_expired_0000").await.unwrap()
    });
    let out = backfill(dir.path(), &[], None).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no longer lists the cursor's event"), "{}", out.stderr);
    assert!(out.stdout.contains("stored 5"), "{}", out.stdout);
    until_fulfilled(&d, 5).await;
    assert_eq!(cursor(&d.store).as_deref(), Some("evt_bf_0005"));
    d.stop().await;
}

/// Two daemons on one PostgreSQL store, each with `backfill_every`: the first whose timer
/// comes round makes the period's pass, the other passes its turn, so Stripe is asked once
/// (one pass from the first window: one listing with `created[gte]`), not once per daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_sharing_a_store_make_one_backfill_pass_a_period() {
    let Some(db) = harness::PgDb::create("backfill_turns").await else { return };
    let store = Backend::Postgres(db.url.clone());
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stripe = FakeStripe::start(KEY).await;
    let shop = Shop::create(one.path());
    paid_at_stripe(&shop, &stripe, 1..=3);
    let every = "backfill_every = \"1m\"";
    let a = daemon(&store, one.path(), &stripe, &shop, every).await;
    let b = daemon(&store, two.path(), &stripe, &shop, every).await;
    // Answered once each store is open.
    assert_eq!(a.get("/healthz").await.0, 200);
    assert_eq!(b.get("/healthz").await.0, 200);
    until_fulfilled(&a, 3).await;
    // Both first passes are due 2 s after each start: give the second its chance.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let passes = stripe
        .requests()
        .iter()
        .filter(|r| r.query_pairs.iter().any(|(k, _)| k.starts_with("created")))
        .count();
    assert_eq!(passes, 1, "one pass for both daemons: {:?}", stripe.requests());
    assert_eq!(fulfilled(&a), (3, 3));
    a.stop().await;
    b.stop().await;
    drop(db);
}

/// `[endpoint.api]` is checked when the configuration is read, and never shows the key.
#[test]
fn api_settings_are_checked_and_the_key_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let rk = write("rk", &format!("{KEY}\n"));
    let whsec = write("whsec", "whsec_abcdef\n");
    let base = |api: &str, provider: &str| {
        format!(
            "[store]\npath = \"{}\"\n[[endpoint]]\nname = \"e\"\nprovider = \"{provider}\"\n{}\n[endpoint.api]\n{api}\n",
            dir.path().join("s.db").display(),
            match provider {
                "stripe" => format!("secrets = [\"{SECRET}\"]"),
                _ => "keys = { \"1\" = \"k_0123456789abcdef\" }".to_owned(),
            }
        )
    };
    let config = |text: &str| {
        reconciled::config::Config::from_toml(text, &dir.path().join("c.toml"))
            .map_err(|e| e.to_string())
    };
    let good = config(&base(&format!("key_file = \"{rk}\""), "stripe")).unwrap();
    let api = good.endpoints[0].api.as_ref().unwrap();
    assert_eq!(api.base_url, "https://api.stripe.com");
    assert!(!format!("{:?}", good).contains(KEY), "Debug shows no key");
    assert!(api.describe().contains("rk_test_… ("), "{}", api.describe());
    assert!(!api.describe().contains(KEY));
    for (api, provider, expected) in [
        (format!("key_file = \"{whsec}\""), "stripe", "webhook signing secret"),
        ("".to_owned(), "stripe", "key_file"),
        (
            format!("key_file = \"{rk}\"\nbase_url = \"http://api.example.com\""),
            "stripe",
            "must be https",
        ),
        (
            format!("key_file = \"{rk}\"\nbase_url = \"https://api.example.com/v1\""),
            "stripe",
            "scheme, host and port only",
        ),
        (format!("key_file = \"{rk}\"\nbackfill_every = \"5s\""), "stripe", "at least 1m"),
        (
            format!("key_file = \"{rk}\"\nclient_id = \"x\""),
            "stripe",
            "applies only to provider = \"paypal\"",
        ),
        (format!("key_file = \"{rk}\"\nsurprise = 1"), "stripe", "unknown field `surprise`"),
        (format!("key_file = \"{rk}\""), "worldpay", "api applies only to provider"),
    ] {
        let err = config(&base(&api, provider)).unwrap_err();
        assert!(err.contains(expected), "{api}: {err}");
        assert!(!err.contains(KEY) && !err.contains("whsec_abcdef"), "{err}");
    }
    // Plain http is for a local fake only.
    let local =
        config(&base(&format!("key_file = \"{rk}\"\nbase_url = \"http://127.0.0.1:9\""), "stripe"));
    assert_eq!(local.unwrap().endpoints[0].api.as_ref().unwrap().base_url, "http://127.0.0.1:9");
}
