//! Reconciliation end to end: signed HTTP → inbox → worker → outbox, against a real SQLite
//! shop database. Each test is a row (or an edge) of the decision table in docs/reconciliation.md.

use hyper::StatusCode;

use crate::harness::{self, on_both_stores, pi_event, shop_config, Backend, Daemon, Shop, SECRET};

fn a(kind: &str, order: &str, amount: &str, template: &str) -> (String, String, String, String) {
    (kind.into(), order.into(), amount.into(), template.into())
}

async fn start(store: &Backend, dir: &std::path::Path, shop: &Shop, more: &str) -> Daemon {
    Daemon::start_on(store, dir, "", "", &shop_config(shop, more)).await
}

async fn send(d: &Daemon, body: &[u8]) {
    let (status, text) = d.post_stripe(SECRET, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

/// A failure alone: its notice goes out once policy.failure_notice_delay has passed, and a
/// daemon stopped during the wait sends it after its restart, once. A failure followed by a
/// success through another payment of the same order: no notice at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_notice_waits_for_its_delay() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(12, "pending", "12.00", "USD");
    shop.add(13, "pending", "12.00", "USD");
    shop.add(14, "pending", "12.00", "USD");
    let policy = "[policy]\nfailure_notice_delay = \"2s\"";
    let d = start(&Backend::Sqlite, dir.path(), &shop, policy).await;
    let sent = std::time::Instant::now();
    send(&d, &pi_event("evt_f12", "payment_failed", "pi_12", "12", 1200, "usd")).await;
    // Order 13: declined, then paid with a new payment (another PaymentIntent).
    send(&d, &pi_event("evt_f13", "payment_failed", "pi_13a", "13", 1200, "usd")).await;
    send(&d, &pi_event("evt_s13", "succeeded", "pi_13b", "13", 1200, "usd")).await;
    d.wait_for("the notice for order 12", |_| {
        d.actions().iter().any(|(kind, order, _, t)| {
            kind == "notify_customer" && order == "12" && t == "payment_failed"
        })
    })
    .await;
    assert!(sent.elapsed() >= std::time::Duration::from_secs(2), "sent before the delay");
    // Order 14 declined, and the daemon stopped before the delay has passed.
    send(&d, &pi_event("evt_f14", "payment_failed", "pi_14", "14", 1200, "usd")).await;
    d.wait_for("the failure to be held", |c| {
        c.query_row("SELECT status FROM inbox WHERE dedup_key = 'evt_f14'", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
            == "parked"
    })
    .await;
    // inbox show says when the held notice goes out.
    let db = dir.path().join("inbox.db");
    let show =
        crate::cli::run(crate::cli::bin().args(["inbox", "show", "4", "--db"]).arg(&db), b"");
    assert!(show.stdout.contains("evt_f14"), "{}", show.stdout);
    assert!(
        show.stdout.contains("notice:") && show.stdout.contains("policy.failure_notice_delay"),
        "{}",
        show.stdout
    );
    d.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let d = start(&Backend::Sqlite, dir.path(), &shop, policy).await;
    d.wait_for("the notice for order 14", |_| {
        d.actions().iter().any(|(kind, order, _, _)| kind == "notify_customer" && order == "14")
    })
    .await;
    d.settle().await;
    let failed: Vec<String> = d
        .actions()
        .into_iter()
        .filter(|(_, _, _, t)| t == "payment_failed")
        .map(|(_, order, _, _)| order)
        .collect();
    assert_eq!(failed, ["12", "14"], "one notice each, none for the order paid meanwhile");
    assert!(d.actions().iter().any(|(kind, order, _, _)| kind == "fulfil" && order == "13"));
    let statuses = d.statuses();
    assert!(statuses.iter().all(|s| s == "done"), "{statuses:?}");
    d.stop().await;
}

/// A refund made in Stripe's dashboard comes as charge.refunded and refund.created: one
/// review, keyed by the refund, whichever comes first. A store whose review was written under
/// the key reviews had when they were keyed by their event emits none again on a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_review_per_refund_whichever_event_comes_first() {
    for (first, second) in [
        ("charge.refunded.json", "refund.created.json"),
        ("refund.created.json", "charge.refunded.json"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let shop = Shop::create(dir.path());
        shop.add(1001, "pending", "100.00", "USD");
        let d = start(&Backend::Sqlite, dir.path(), &shop, "").await;
        for f in ["payment_intent.succeeded.json", first, second] {
            send(&d, &crate::harness::fixture(f)).await;
            d.settle().await;
        }
        let kinds: Vec<String> = d.actions().into_iter().map(|a| a.0).collect();
        assert_eq!(kinds, ["fulfil", "notify_customer", "review"], "{first} first");
        let conn = d.read();
        let key: String = conn
            .query_row("SELECT idempotency_key FROM outbox WHERE kind = 'review'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(key, "review:refunded:stripe:re_3PqR1001TestAbCdEf0Rf1");
        d.stop().await;
    }

    // A store written before holds its review under the event's key: a replay of its rows
    // writes none again.
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let d = start(&Backend::Sqlite, dir.path(), &shop, "").await;
    for f in ["payment_intent.succeeded.json", "charge.refunded.json"] {
        send(&d, &crate::harness::fixture(f)).await;
        d.settle().await;
    }
    d.stop().await;
    let db = dir.path().join("inbox.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE outbox SET idempotency_key = 'review:refunded:stripe:' || event_id WHERE kind = 'review'",
        [],
    )
    .unwrap();
    let config = dir.path().join("replay.toml");
    std::fs::write(&config, harness::config_text_with(&db, "", "", &shop_config(&shop, "")))
        .unwrap();
    let out = crate::cli::run(
        crate::cli::bin()
            .args(["inbox", "replay", "--provider", "stripe", "--config"])
            .arg(&config),
        b"",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("replayed 2 rows: 0 actions emitted (+), 0 no longer emitted (-)"),
        "{}",
        out.stdout
    );
    let reviews: i64 = conn
        .query_row("SELECT count(*) FROM outbox WHERE kind = 'review'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(reviews, 1, "{}", out.stdout);
}

/// After a policy change, a bulk replay shows per row what the current code would emit that
/// is not in the outbox (+) and what it would no longer emit (-), writes nothing in a dry run,
/// and writes only the + actions for real. The selection narrows by order and by time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_shows_and_writes_what_a_new_policy_changes() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1101, "pending", "100.00", "USD");
    shop.add(1102, "pending", "100.00", "USD");
    let d = start(&Backend::Sqlite, dir.path(), &shop, "[policy]\non_underpaid = \"review\"").await;
    send(&d, &pi_event("evt_b1", "succeeded", "pi_b1", "1101", 6000, "usd")).await;
    send(&d, &pi_event("evt_b2", "succeeded", "pi_b2", "1102", 10000, "usd")).await;
    d.settle().await;
    let kinds = |d: &Daemon| d.actions().into_iter().map(|a| a.0).collect::<Vec<_>>();
    assert_eq!(kinds(&d), ["review", "fulfil", "notify_customer"]);
    d.stop().await;

    // The shop decides underpayments are refunded after all.
    let db = dir.path().join("inbox.db");
    let config = dir.path().join("new.toml");
    let policy = "[policy]\non_underpaid = \"refund\"";
    std::fs::write(&config, harness::config_text_with(&db, "", "", &shop_config(&shop, policy)))
        .unwrap();
    let replay = |args: &[&str]| {
        let out = crate::cli::run(
            crate::cli::bin().args(["inbox", "replay"]).args(args).arg("--config").arg(&config),
            b"",
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout
    };
    let outbox = || {
        harness::sql(&db)
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let dry = replay(&["--provider", "stripe", "--dry-run"]);
    let lines: Vec<&str> = dry.lines().collect();
    assert!(lines[0].starts_with("row 1 stripe evt_b1 (payment_intent.succeeded): done"), "{dry}");
    assert!(lines[1].starts_with("  + refund 60.00 USD"), "{dry}");
    assert!(lines[2].starts_with("  + notify_customer 60.00 USD"), "{dry}");
    assert!(
        lines[3].starts_with("  - review 60.00 USD") && lines[3].ends_with("action 1"),
        "{dry}"
    );
    assert!(lines[4].starts_with("row 2 stripe evt_b2"), "{dry}");
    assert_eq!(
        lines[5],
        "replayed 2 rows: 2 actions would emit (+), 1 no longer emitted (-), 0 not decided; \
         dry run: nothing was written"
    );
    assert_eq!(outbox(), 3, "a dry run writes nothing");

    // Narrowed to the other order, or to a time before anything arrived: nothing changes.
    let other = replay(&["--order", "1102", "--dry-run"]);
    assert!(other.starts_with("row 2 ") && other.contains("replayed 1 rows: 0 actions"), "{other}");
    let none = crate::cli::run(
        crate::cli::bin()
            .args(["inbox", "replay", "--until", "2000-01-01T00:00:00Z", "--dry-run", "--config"])
            .arg(&config),
        b"",
    );
    assert_eq!(none.code, Some(2), "{}", none.stdout);

    // For real: the refund and its notice are written; the review stays (append-only).
    let real = replay(&["--order", "1101"]);
    assert!(
        real.contains("replayed 1 rows: 2 actions emitted (+), 1 no longer emitted (-)"),
        "{real}"
    );
    assert_eq!(outbox(), 5);
    let again = replay(&["--provider", "stripe", "--since", "1h"]);
    assert!(again.contains("replayed 2 rows: 0 actions emitted (+)"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_keeps_failing_ends_dead_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(60, "pending", "1.00", "USD");
    shop.add(61, "pending", "1.00", "USD");
    let d = start(&Backend::Sqlite, dir.path(), &shop, "max_attempts = 3").await;
    send(&d, &pi_event("evt_fine", "succeeded", "pi_61", "61", 100, "usd")).await;
    d.settle().await;
    // Then the shop's table disappears: every lookup fails.
    rusqlite::Connection::open(&shop.path).unwrap().execute_batch("DROP TABLE orders").unwrap();
    send(&d, &pi_event("evt_doomed", "succeeded", "pi_60", "60", 100, "usd")).await;
    d.wait_for("the row to die", |c| {
        c.query_row("SELECT status FROM inbox WHERE id = 2", [], |r| r.get::<_, String>(0)).unwrap()
            == "dead"
    })
    .await;
    let (attempts, error): (i64, String) = d
        .read()
        .query_row("SELECT attempts, last_error FROM inbox WHERE id = 2", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(attempts, 3);
    assert!(error.contains("no such table"), "{error}");
    assert_eq!(d.actions().len(), 2, "only the first order's actions");
    d.stop().await;
}

/// The worker prepares one batch while the one before it is written. Each batch must still
/// be decided on what the batches before it committed: a second payment for an order paid in
/// the batch before is refunded, a late `pending` after a success in the batch before is
/// stale, and nothing is decided twice. Six rows, stored before the worker starts, in batches
/// of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_each_see_what_the_one_before_committed() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for id in [1001, 1002, 1003] {
        shop.add(id, "pending", "10.00", "USD");
    }
    let d = Daemon::start_in(dir.path(), "", "").await;
    for body in [
        pi_event("evt_a", "succeeded", "pi_a", "1001", 1000, "usd"),
        pi_event("evt_a2", "succeeded", "pi_a", "1001", 1000, "usd"),
        pi_event("evt_b", "succeeded", "pi_b", "1001", 1000, "usd"),
        pi_event("evt_c", "succeeded", "pi_c", "1002", 1000, "usd"),
        pi_event("evt_c0", "processing", "pi_c", "1002", 1000, "usd"),
        pi_event("evt_d", "succeeded", "pi_d", "1003", 1000, "usd"),
    ] {
        send(&d, &body).await;
    }
    d.stop().await;

    let d = start(&Backend::Sqlite, dir.path(), &shop, "batch = 2").await;
    d.settle().await;
    assert_eq!(
        d.actions(),
        vec![
            a("fulfil", "1001", "10.00 USD", ""),
            a("notify_customer", "1001", "10.00 USD", "order_confirmed"),
            a("refund", "1001", "10.00 USD", ""),
            a("notify_customer", "1001", "10.00 USD", "duplicate_payment_refunded"),
            a("fulfil", "1002", "10.00 USD", ""),
            a("notify_customer", "1002", "10.00 USD", "order_confirmed"),
            a("fulfil", "1003", "10.00 USD", ""),
            a("notify_customer", "1003", "10.00 USD", "order_confirmed"),
        ]
    );
    let rows: Vec<(String, String, i64)> = {
        let conn = d.read();
        let mut stmt =
            conn.prepare("SELECT dedup_key, outcome, attempts FROM inbox ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(d.statuses(), ["done"; 6]);
    assert!(rows.iter().all(|(_, _, attempts)| *attempts == 0), "{rows:?}");
    assert_eq!(rows[1].1, "payment already recorded", "{rows:?}");
    assert!(rows[4].1.starts_with("stale"), "{rows:?}");
    d.stop().await;
}

/// A store error while deciding one row of a batch holds up that row only: the others of the
/// same batch commit, and the failing row is retried (and counted) until the error is gone.
/// A shop with orders 1001–1003 (10.00 USD each), and one stored payment for each, stored by
/// a daemon without a shop: nothing is decided yet, so all three rows wait to be claimed
/// together in the next daemon's first batch.
async fn three_undecided_payments(dir: &std::path::Path) -> Shop {
    let shop = Shop::create(dir);
    for id in [1001, 1002, 1003] {
        shop.add(id, "pending", "10.00", "USD");
    }
    let d = Daemon::start_in(dir, "", "").await;
    for id in [1001, 1002, 1003] {
        let body = pi_event(
            &format!("evt_{id}"),
            "succeeded",
            &format!("pi_{id}"),
            &id.to_string(),
            1000,
            "usd",
        );
        send(&d, &body).await;
    }
    d.stop().await;
    shop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_error_in_one_row_holds_up_only_that_row() {
    let dir = tempfile::tempdir().unwrap();
    let shop = three_undecided_payments(dir.path()).await;
    let db = dir.path().join("inbox.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.order_id = '1002' \
             BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
        )
        .unwrap();

    let d = start(&Backend::Sqlite, dir.path(), &shop, "").await;
    d.wait_for("the failing row to be retried twice", |c| {
        c.query_row("SELECT attempts >= 2 FROM inbox WHERE dedup_key = 'evt_1002'", [], |r| {
            r.get::<_, bool>(0)
        })
        .unwrap()
    })
    .await;
    let orders: Vec<String> = d.actions().into_iter().map(|a| a.1).collect();
    assert_eq!(orders, ["1001", "1001", "1003", "1003"], "the other rows of the batch committed");
    let error: String = d
        .read()
        .query_row("SELECT last_error FROM inbox WHERE dedup_key = 'evt_1002'", [], |r| r.get(0))
        .unwrap();
    assert!(error.contains("disk on fire"), "{error}");

    rusqlite::Connection::open(&db).unwrap().execute_batch("DROP TRIGGER boom").unwrap();
    d.wait_for("the row to be decided once the error is gone", |c| {
        c.query_row("SELECT status FROM inbox WHERE dedup_key = 'evt_1002'", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
            == "done"
    })
    .await;
    let orders: Vec<String> = d.actions().into_iter().map(|a| a.1).collect();
    assert_eq!(orders, ["1001", "1001", "1003", "1003", "1002", "1002"]);
    d.stop().await;
}

/// A stored body that cannot be decompressed (a damaged disk, a hand edit) is not guessed at:
/// its row ends `dead` with the reason, and the rows around it are decided as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stored_body_ends_dead_and_holds_up_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let shop = three_undecided_payments(dir.path()).await;
    let db = dir.path().join("inbox.db");
    let changed = rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE inbox SET body = substr(body, 1, length(body) / 2) \
             WHERE dedup_key = 'evt_1002' AND body_encoding = 'lz4'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1, "the body was stored compressed");

    let d = start(&Backend::Sqlite, dir.path(), &shop, "").await;
    d.settle().await;
    let orders: Vec<String> = d.actions().into_iter().map(|a| a.1).collect();
    assert_eq!(orders, ["1001", "1001", "1003", "1003"]);
    let (status, error): (String, String) = d
        .read()
        .query_row("SELECT status, last_error FROM inbox WHERE dedup_key = 'evt_1002'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(status, "dead");
    assert!(error.contains("stored body is damaged"), "{error}");
    // `inbox show` says so too, instead of printing garbage.
    let shown = harness::reading(&d.db, |s| async move { s.show(2).await });
    assert!(shown.is_err(), "{shown:?}");
    d.stop().await;
}

/// Pruning takes a refunded second payment's rows; when its notification comes back later, it
/// is stored again but not refunded again: the refund's key outlives its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_refund_is_not_emitted_again_when_its_payment_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "50.00", "EUR");
    shop.add(1002, "pending", "20.00", "EUR");
    let d = start(&Backend::Sqlite, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_a", "succeeded", "pi_a", "1001", 5000, "eur")).await;
    d.settle().await;
    let second = pi_event("evt_b", "succeeded", "pi_b", "1001", 5000, "eur");
    send(&d, &second).await;
    d.settle().await;
    send(&d, &pi_event("evt_z", "succeeded", "pi_z", "1002", 2000, "eur")).await;
    d.settle().await;
    let db = d.db.clone();
    d.stop().await;

    // 100 days pass for order 1001's rows.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let old = reconciled::time::now_ms() - 100 * 86_400_000;
    conn.execute(
        "UPDATE inbox SET received_at = ?1, last_received_at = ?1, processed_at = ?1 \
         WHERE dedup_key IN ('evt_a', 'evt_b')",
        [old],
    )
    .unwrap();
    drop(conn);
    let (_, pruned) = harness::as_tool(&db, |s| async move { s.prune(90, false).await }).unwrap();
    assert_eq!(pruned, 2);

    let d = start(&Backend::Sqlite, dir.path(), &shop, "").await;
    send(&d, &second).await;
    d.settle().await;
    assert_eq!(
        d.actions(),
        vec![
            a("fulfil", "1002", "20.00 EUR", ""),
            a("notify_customer", "1002", "20.00 EUR", "order_confirmed"),
        ],
        "no second refund, no second notice"
    );
    let spent: Vec<String> = d
        .read()
        .prepare("SELECT idempotency_key FROM outbox_spent_keys ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(spent.len(), 2, "{spent:?}");
    assert!(spent.contains(&"refund:stripe:pi_b".to_owned()), "{spent:?}");
    d.stop().await;
}

// The scenarios that need nothing of SQLite: each runs against both stores.
on_both_stores! {
async fn exact_payment_fulfils_once_whatever_the_duplicates(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let d = start(&store, dir.path(), &shop, "").await;
    let paid = pi_event("evt_1", "succeeded", "pi_1", "1001", 10000, "usd");
    send(&d, &paid).await;
    send(&d, &paid).await; // the same event again
    d.settle().await;
    // The same payment told again by another event type (checkout session), and a replay.
    let session = crate::harness::fixture("checkout.session.completed.json");
    let session = String::from_utf8(session).unwrap().replace("pi_3PqR1001TestAbCdEf", "pi_1");
    send(&d, session.as_bytes()).await;
    d.settle().await;
    let want = vec![
        a("fulfil", "1001", "100.00 USD", ""),
        a("notify_customer", "1001", "100.00 USD", "order_confirmed"),
    ];
    assert_eq!(d.actions(), want);
    assert_eq!(d.statuses(), ["done", "done"]);
    d.stop().await;
}

async fn cart_changed_after_checkout(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1, "pending", "200.00", "USD"); // cart grew: underpaid
    shop.add(2, "pending", "80.00", "USD"); // cart shrank: overpaid
    shop.add(3, "pending", "100.00", "EUR"); // other currency
    let d = start(&store, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_under", "succeeded", "pi_u", "1", 10000, "usd")).await;
    d.settle().await;
    send(&d, &pi_event("evt_over", "succeeded", "pi_o", "2", 10000, "usd")).await;
    d.settle().await;
    send(&d, &pi_event("evt_cur", "succeeded", "pi_c", "3", 10000, "usd")).await;
    d.settle().await;
    assert_eq!(
        d.actions(),
        vec![
            a("refund", "1", "100.00 USD", ""),
            a("notify_customer", "1", "100.00 USD", "payment_mismatch"),
            a("fulfil", "2", "100.00 USD", ""),
            a("refund", "2", "20.00 USD", ""),
            a("notify_customer", "2", "20.00 USD", "overpayment_refunded"),
            a("refund", "3", "100.00 USD", ""),
            a("notify_customer", "3", "100.00 USD", "payment_mismatch"),
        ]
    );
    d.stop().await;
}

async fn review_policy_sends_mismatches_to_an_admin(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1, "pending", "200.00", "USD");
    let policy = "[policy]\non_underpaid = \"review\"\non_overpaid = \"review\"";
    let d = start(&store, dir.path(), &shop, policy).await;
    send(&d, &pi_event("evt_under", "succeeded", "pi_u", "1", 10000, "usd")).await;
    d.settle().await;
    assert_eq!(d.actions(), vec![a("review", "1", "100.00 USD", "")]);
    d.stop().await;
}

async fn the_customer_pays_twice(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "50.00", "EUR");
    let d = start(&store, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_a", "succeeded", "pi_a", "1001", 5000, "eur")).await;
    d.settle().await;
    // Before the shop has even marked the order paid, a second payment arrives...
    send(&d, &pi_event("evt_b", "succeeded", "pi_b", "1001-2", 5000, "eur")).await;
    d.settle().await;
    // ...and a third after the shop recorded the first.
    shop.set(1001, "processing", Some("pi_a"));
    send(&d, &pi_event("evt_c", "succeeded", "pi_c", "1001", 5000, "eur")).await;
    d.settle().await;
    assert_eq!(
        d.actions(),
        vec![
            a("fulfil", "1001", "50.00 EUR", ""),
            a("notify_customer", "1001", "50.00 EUR", "order_confirmed"),
            a("refund", "1001", "50.00 EUR", ""),
            a("notify_customer", "1001", "50.00 EUR", "duplicate_payment_refunded"),
            a("refund", "1001", "50.00 EUR", ""),
            a("notify_customer", "1001", "50.00 EUR", "duplicate_payment_refunded"),
        ]
    );
    let refunded: Vec<String> = harness::reading_store(&d.store, |s| async move {
        s.outbox(reconciled::store::OutboxFilter {
            kind: Some(reconciled::domain::ActionKind::Refund),
            ..Default::default()
        })
        .await
    })
    .unwrap()
    .into_iter()
    .map(|r| r.idempotency_key)
    .collect();
    assert_eq!(refunded, ["refund:stripe:pi_b", "refund:stripe:pi_c"]);
    d.stop().await;
}

async fn money_for_a_cancelled_order_goes_back(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(7, "cancelled", "30.00", "GBP");
    let d = start(&store, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_late", "succeeded", "pi_late", "7", 3000, "gbp")).await;
    d.settle().await;
    assert_eq!(
        d.actions(),
        vec![
            a("refund", "7", "30.00 GBP", ""),
            a("notify_customer", "7", "30.00 GBP", "order_cancelled_refunded")
        ]
    );
    d.stop().await;
}

async fn pending_failed_and_late_events(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(10, "pending", "12.00", "USD");
    shop.add(11, "pending", "12.00", "USD");
    let d = start(&store, dir.path(), &shop, "").await;
    // Order 10: processing (told twice: notified once), then it succeeds, then a stale failure.
    send(&d, &pi_event("evt_p1", "processing", "pi_10", "10", 1200, "usd")).await;
    send(&d, &pi_event("evt_p2", "processing", "pi_10", "10", 1200, "usd")).await;
    send(&d, &pi_event("evt_s", "succeeded", "pi_10", "10", 1200, "usd")).await;
    send(&d, &pi_event("evt_f", "payment_failed", "pi_10", "10", 1200, "usd")).await;
    // Order 11: the first attempt fails, the retry succeeds within policy.failure_notice_delay
    // (10 minutes by default): the customer is never told the payment failed.
    send(&d, &pi_event("evt_f11", "payment_failed", "pi_11", "11", 1200, "usd")).await;
    d.until("the failure to be held", || d.status_of("evt_f11").as_deref() == Some("parked")).await;
    send(&d, &pi_event("evt_s11", "succeeded", "pi_11", "11", 1200, "usd")).await;
    d.settle().await;
    assert_eq!(
        d.actions(),
        vec![
            a("notify_customer", "10", "12.00 USD", "payment_pending"),
            a("fulfil", "10", "12.00 USD", ""),
            a("notify_customer", "10", "12.00 USD", "order_confirmed"),
            a("fulfil", "11", "12.00 USD", ""),
            a("notify_customer", "11", "12.00 USD", "order_confirmed"),
        ]
    );
    d.stop().await;
}

async fn out_of_order_success_before_its_pending(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(20, "pending", "9.99", "USD");
    let d = start(&store, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_s", "succeeded", "pi_20", "20", 999, "usd")).await;
    send(&d, &pi_event("evt_p", "processing", "pi_20", "20", 999, "usd")).await;
    send(&d, &pi_event("evt_c", "canceled", "pi_20", "20", 999, "usd")).await;
    d.settle().await;
    assert_eq!(
        d.actions(),
        vec![
            a("fulfil", "20", "9.99 USD", ""),
            a("notify_customer", "20", "9.99 USD", "order_confirmed")
        ]
    );
    d.stop().await;
}

async fn a_notification_before_its_order_waits_for_it(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let d = start(&store, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_early", "succeeded", "pi_30", "30", 4200, "usd")).await;
    d.until("the row to be parked", || d.statuses() == ["parked"]).await;
    assert!(d.actions().is_empty());
    // The shop commits the order after the provider was faster than the redirect.
    shop.add(30, "pending", "42.00", "USD");
    d.until("the parked row to be decided", || d.actions().len() == 2).await;
    assert_eq!(d.actions()[0], a("fulfil", "30", "42.00 USD", ""));
    d.stop().await;
}

async fn an_order_that_never_appears_becomes_a_review(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let d = start(&store, dir.path(), &shop, "[policy]\nunmatched_retry_for = \"1s\"").await;
    send(&d, &pi_event("evt_lost", "succeeded", "pi_lost", "999", 100, "usd")).await;
    d.until("a review", || d.actions().len() == 1).await;
    assert_eq!(d.actions(), vec![a("review", "", "1.00 USD", "")]);
    assert_eq!(d.statuses(), ["done"]);
    d.stop().await;
}

async fn zero_and_three_decimal_currencies(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(40, "pending", "5000", "JPY");
    shop.add(41, "pending", "12.345", "KWD");
    shop.add(42, "pending", "12.345", "KWD");
    let d = start(&store, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_jpy", "succeeded", "pi_40", "40", 5000, "jpy")).await;
    d.settle().await;
    send(&d, &pi_event("evt_kwd", "succeeded", "pi_41", "41", 12345, "kwd")).await;
    d.settle().await;
    send(&d, &pi_event("evt_kwd_short", "succeeded", "pi_42", "42", 12340, "kwd")).await;
    d.settle().await;
    assert_eq!(
        d.actions(),
        vec![
            a("fulfil", "40", "5000 JPY", ""),
            a("notify_customer", "40", "5000 JPY", "order_confirmed"),
            a("fulfil", "41", "12.345 KWD", ""),
            a("notify_customer", "41", "12.345 KWD", "order_confirmed"),
            a("refund", "42", "12.340 KWD", ""),
            a("notify_customer", "42", "12.340 KWD", "payment_mismatch"),
        ]
    );
    d.stop().await;
}

async fn refunds_and_disputes_go_to_review_and_other_types_are_ignored(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let d = start(&store, dir.path(), &shop, "").await;
    for f in [
        "payment_intent.succeeded.json",
        "charge.refunded.json",
        "charge.dispute.created.json",
        "thin_event.json",
    ] {
        send(&d, &crate::harness::fixture(f)).await;
        d.settle().await;
    }
    let kinds: Vec<String> = d.actions().into_iter().map(|a| a.0).collect();
    assert_eq!(kinds, ["fulfil", "notify_customer", "review", "review"]);
    assert_eq!(d.statuses(), ["done", "done", "done", "ignored"]);
    d.stop().await;
}

async fn our_own_refund_comes_back_without_a_review(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(5, "pending", "200.00", "USD");
    let d = start(&store, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_under", "succeeded", "pi_u", "5", 10000, "usd")).await;
    d.settle().await;
    // The consumer refunds with our idempotency key; Stripe reports the refund back.
    let refund = serde_json::json!({
        "id": "evt_refund_back", "object": "event", "type": "refund.created", "created": 1,
        "request": {"id": "req_1", "idempotency_key": "refund:stripe:pi_u"},
        "data": {"object": {"id": "re_1", "object": "refund", "amount": 10000, "currency": "usd",
                            "payment_intent": "pi_u", "status": "succeeded"}}
    });
    send(&d, &serde_json::to_vec(&refund).unwrap()).await;
    // A refund made by hand in the dashboard is reviewed.
    let manual = serde_json::json!({
        "id": "evt_refund_manual", "object": "event", "type": "refund.created", "created": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {"id": "re_2", "object": "refund", "amount": 500, "currency": "usd",
                            "payment_intent": "pi_u", "status": "succeeded"}}
    });
    send(&d, &serde_json::to_vec(&manual).unwrap()).await;
    d.settle().await;
    let kinds: Vec<String> = d.actions().into_iter().map(|a| a.0).collect();
    assert_eq!(kinds, ["refund", "notify_customer", "review"]);
    d.stop().await;
}

/// Stripe Checkout without metadata on the PaymentIntent: the PaymentIntent event cannot be
/// matched, the Checkout Session names the order. The session must not wait behind it.
async fn an_unmatched_row_does_not_hold_up_a_later_one_that_names_the_order(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let d = start(&store, dir.path(), &shop, "").await;
    let mut bare = serde_json::from_slice::<serde_json::Value>(&pi_event(
        "evt_pi",
        "succeeded",
        "pi_co",
        "x",
        10000,
        "usd",
    ))
    .unwrap();
    bare["data"]["object"]["metadata"] = serde_json::json!({});
    send(&d, &serde_json::to_vec(&bare).unwrap()).await;
    d.until("the bare PaymentIntent event to park", || {
        d.status_of("evt_pi").as_deref() == Some("parked")
    })
    .await;
    let session = String::from_utf8(crate::harness::fixture("checkout.session.completed.json"))
        .unwrap()
        .replace("pi_3PqR1001TestAbCdEf", "pi_co");
    send(&d, session.as_bytes()).await;
    d.until("the fulfil", || d.actions().len() == 2).await;
    assert_eq!(d.actions()[0], a("fulfil", "1001", "100.00 USD", ""));
    d.stop().await;
}

/// A payment whose order is never found makes one review, however many of its notifications
/// arrive.
async fn one_review_per_unmatched_payment(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let d = start(&store, dir.path(), &shop, "[policy]\nunmatched_retry_for = \"1s\"").await;
    send(&d, &pi_event("evt_u1", "processing", "pi_u", "7777", 500, "usd")).await;
    send(&d, &pi_event("evt_u2", "succeeded", "pi_u", "7777", 500, "usd")).await;
    d.until("both rows decided", || d.statuses() == ["done", "done"]).await;
    let keys: Vec<String> = d.outbox().into_iter().map(|o| o.idempotency_key).collect();
    assert_eq!(keys, ["review:unmatched:stripe:pi_u"]);
    d.stop().await;
}

/// A payment left pending past policy.pending_review_after, and one authorized and never
/// captured past policy.authorization_review_after, get one review each, however often the
/// check runs; a pending payment that succeeds in time gets none.
async fn payments_left_open_get_one_review(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for id in 15..=17 {
        shop.add(id, "pending", "12.00", "USD");
    }
    let policy = "[policy]\npending_review_after = \"2s\"\nauthorization_review_after = \"3s\"";
    let d = start(&store, dir.path(), &shop, policy).await;
    send(&d, &pi_event("evt_o15", "processing", "pi_15", "15", 1200, "usd")).await;
    send(&d, &pi_event("evt_o16", "amount_capturable_updated", "pi_16", "16", 1200, "usd")).await;
    send(&d, &pi_event("evt_o17", "processing", "pi_17", "17", 1200, "usd")).await;
    send(&d, &pi_event("evt_s17", "succeeded", "pi_17", "17", 1200, "usd")).await;
    let reviews = || -> Vec<(String, String, String)> {
        d.outbox()
            .into_iter()
            .filter(|o| o.kind == reconciled::domain::ActionKind::Review)
            .map(|o| (o.idempotency_key, o.order_id.unwrap_or_default(), o.reason))
            .collect()
    };
    d.until("two reviews", || reviews().len() == 2).await;
    // Several more checks: nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let reviews = reviews();
    let keys: Vec<(&str, &str)> = reviews.iter().map(|(k, o, _)| (k.as_str(), o.as_str())).collect();
    assert_eq!(
        keys,
        [("review:open:pending:stripe:pi_15", "15"), ("review:open:authorized:stripe:pi_16", "16")]
    );
    assert!(reviews[1].2.contains("never captured"), "{}", reviews[1].2);
    d.stop().await;
}

async fn an_unreachable_shop_loses_nothing_and_recovers(store) {
    let dir = tempfile::tempdir().unwrap();
    let shop = crate::harness::Shop { path: dir.path().join("shop-not-yet.db") };
    let d = start(&store, dir.path(), &shop, "").await;
    send(&d, &pi_event("evt_wait", "succeeded", "pi_50", "50", 700, "usd")).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let statuses = d.statuses();
    // Waiting: `pending` between attempts, `processing` while an attempt holds it.
    assert!(
        statuses == ["pending"] || statuses == ["processing"],
        "stored and waiting: {statuses:?}"
    );
    // The shop database comes (back) up.
    let real = Shop::create(dir.path());
    real.add(50, "pending", "7.00", "USD");
    std::fs::rename(&real.path, &shop.path).unwrap();
    d.until("the decision", || d.actions().len() == 2).await;
    d.stop().await;
}
}
