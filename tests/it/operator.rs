//! The operator's first hour: seeing how the shop query reads a real order before going live.

use crate::cli::{bin, run, write_config};
use crate::harness::{config_text_with, shop_config, Shop};

/// A shop whose query aliases a cents column as `amount`: `check-config` accepts its shape,
/// and `--order` shows 2599 read as 2599.00 EUR with a warning naming `amount_minor`.
#[test]
fn check_config_order_shows_a_cents_column_read_as_whole_units() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "25.99", "EUR");
    let conn = rusqlite::Connection::open(&shop.path).unwrap();
    conn.execute_batch(
        "ALTER TABLE orders ADD COLUMN cents INTEGER; UPDATE orders SET cents = 2599",
    )
    .unwrap();
    let db = dir.path().join("inbox.db");
    let right = config_text_with(&db, "", "", &shop_config(&shop, ""));
    let cfg = write_config(dir.path(), &right);
    let order = |cfg: &std::path::Path, order: &str| {
        run(bin().args(["check-config", "--config"]).arg(cfg).args(["--order", order]), b"")
    };

    // The right query: the order as the shop shows it, status mapped, raw values beside.
    let out = order(&cfg, "1001");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for line in [
        "order 1001: the query returned 1 row(s); read as:",
        "status          \"pending\" -> awaiting payment",
        "amount          25.99 EUR",
        "customer email  buyer@example.com",
        "psp reference   none",
    ] {
        assert!(out.stdout.contains(line), "{line:?} not in\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    // The reference is cut as the worker cuts it (reference_pattern "^(\d+)").
    let out = order(&cfg, "1001-2");
    assert!(out.stdout.contains("reference \"1001-2\" is cut to \"1001\""), "{}", out.stdout);
    assert!(out.stdout.contains("amount          25.99 EUR"), "{}", out.stdout);
    // An order the query does not find says so.
    let out = order(&cfg, "4242");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("order 4242: the query returned no row"), "{}", out.stdout);

    // The cents column under the name `amount`: its shape passes, its reading is wrong, and
    // the output says so.
    let wrong = right.replace("total AS amount", "cents AS amount");
    let cfg = write_config(dir.path(), &wrong);
    let out = run(bin().args(["check-config", "--config"]).arg(&cfg), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = order(&cfg, "1001");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("amount          2599.00 EUR"), "{}", out.stdout);
    assert!(out.stdout.contains("(amount = 2599 (integer)"), "{}", out.stdout);
    assert!(
        out.stdout.contains("warning: amount is the whole number 2599 in EUR")
            && out.stdout.contains("name it amount_minor"),
        "{}",
        out.stdout
    );
    // Named amount_minor, the same column reads right.
    let cfg = write_config(dir.path(), &right.replace("total AS amount", "cents AS amount_minor"));
    let out = order(&cfg, "1001");
    assert!(out.stdout.contains("amount          25.99 EUR"), "{}", out.stdout);
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
}

/// A query without a required column is refused with exit 2 naming the column, with no row
/// needed; a status listed under two states is warned about.
#[test]
fn check_config_refuses_a_query_missing_a_column() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    let db = dir.path().join("inbox.db");
    let right = config_text_with(&db, "", "", &shop_config(&shop, ""));
    for (column, alias) in
        [("currency", "currency,"), ("status", "status,"), ("amount", "total AS amount,")]
    {
        let cfg = write_config(dir.path(), &right.replace(alias, ""));
        let out = run(bin().args(["check-config", "--config"]).arg(&cfg), b"");
        assert_eq!(out.code, Some(2), "{column}: {}", out.stdout);
        assert!(
            out.stderr.contains("shop.query") && out.stderr.contains(&format!("no {column}")),
            "{column}: {}",
            out.stderr
        );
    }
    let twice = right.replace("paid = [\"processing\",", "paid = [\"pending\", \"processing\",");
    let out =
        run(bin().args(["check-config", "--config"]).arg(write_config(dir.path(), &twice)), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "warning: status \"pending\" is listed under both shop.status.awaiting_payment and shop.status.paid"
        ),
        "{}",
        out.stdout
    );
}

/// A second daemon on the same SQLite store exits at start with code 1, naming the store and
/// the process holding it; the first keeps serving, the read-only commands work beside it,
/// and once it has stopped the store can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_one_sqlite_store_is_refused() {
    use std::io::Read;
    use std::process::Stdio;

    use crate::cli::spawn_serve_with;
    use crate::harness::{config_text, event, post_signed};
    use crate::process::ChildGuard;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inbox.db");
    let cfg = write_config(dir.path(), &config_text(&db, "", ""));
    let serve = ["serve", "--config", cfg.to_str().unwrap()];
    let (mut first, addr, _log) = spawn_serve_with(&serve, dir.path(), &[]);

    let mut second = ChildGuard::spawn(
        bin().args(serve).current_dir(dir.path()).stdout(Stdio::null()).stderr(Stdio::piped()),
    )
    .unwrap();
    let status = second.wait_within(std::time::Duration::from_secs(20));
    let mut message = String::new();
    second.stderr().read_to_string(&mut message).unwrap();
    assert_eq!(status.code(), Some(1), "{message}");
    assert!(
        message.contains(&format!("store {} is in use", db.display()))
            && message.contains(&format!("pid {}", first.id())),
        "{message}"
    );

    // The first daemon still takes notifications, and the read commands work beside it.
    let (status, text) = post_signed(addr, event("evt_beside")).await;
    assert_eq!(status, hyper::StatusCode::OK, "{text}");
    let out = run(bin().args(["inbox", "list", "--config"]).arg(&cfg), b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("evt_beside"), "{}", out.stdout);

    // Stopped, it lets the store go: the next daemon starts on it.
    let stopped = tokio::task::spawn_blocking(move || first.terminate()).await.unwrap();
    assert_eq!(stopped.code(), Some(0));
    let (mut next, _, _) = spawn_serve_with(&serve, dir.path(), &[]);
    assert_eq!(next.terminate().code(), Some(0));
}

/// Shadow mode: every decision is made and written, each action marked shadow with a key of
/// its own; the live outbox stays empty. Switched to live, new notifications are decided
/// normally, and a row decided in shadow never emits its actions as live, even replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_actions_are_recorded_never_listed_as_live_and_never_re_emitted() {
    use crate::harness::{pi_event, Daemon, SECRET};
    use reconciled::store::OutboxFilter;

    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    for id in [1001, 1002, 1003] {
        shop.add(id, "pending", "100.00", "USD");
    }
    let shadow = shop_config(&shop, "[policy]\nmode = \"shadow\"");
    let d = Daemon::start_with(dir.path(), "", "", &shadow).await;
    for (event, pi, order, amount) in
        [("evt_s1", "pi_s1", "1001", 10000), ("evt_s2", "pi_s2", "1002", 6000)]
    {
        let (status, _) =
            d.post_stripe(SECRET, &pi_event(event, "succeeded", pi, order, amount, "usd")).await;
        assert_eq!(status, hyper::StatusCode::OK);
    }
    d.settle().await;
    assert!(d.actions().is_empty(), "shadow actions listed as live: {:?}", d.actions());
    let db = dir.path().join("inbox.db");
    let shadowed = crate::harness::reading(&db, |s| async move {
        s.outbox(OutboxFilter { shadow: true, ..Default::default() }).await
    })
    .unwrap();
    let summary: Vec<(String, String)> = shadowed
        .iter()
        .map(|a| (a.kind.as_str().to_owned(), a.order_id.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        summary,
        [
            ("fulfil", "1001"),
            ("notify_customer", "1001"),
            ("refund", "1002"),
            ("notify_customer", "1002")
        ]
        .map(|(k, o)| (k.to_owned(), o.to_owned()))
    );
    assert!(shadowed.iter().all(|a| a.shadow && a.idempotency_key.starts_with("shadow:")));
    d.stop().await;

    // The command line: live listings show nothing, --shadow shows them marked.
    let cfg = write_config(dir.path(), &config_text_with(&db, "", "", &shadow));
    let live = run(bin().args(["outbox", "list", "--json", "--config"]).arg(&cfg), b"");
    assert_eq!((live.code, live.stdout.as_str()), (Some(0), ""), "{}", live.stderr);
    let out = run(bin().args(["outbox", "list", "--json", "--shadow", "--config"]).arg(&cfg), b"");
    let lines: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(lines.iter().all(|l| l["shadow"] == true), "{}", out.stdout);

    // Live: a new payment is decided as usual, with the live key.
    let d = Daemon::start_with(dir.path(), "", "", &shop_config(&shop, "")).await;
    let (status, _) = d
        .post_stripe(SECRET, &pi_event("evt_l3", "succeeded", "pi_l3", "1003", 10000, "usd"))
        .await;
    assert_eq!(status, hyper::StatusCode::OK);
    d.settle().await;
    let live = d.actions();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live.iter().all(|(_, order, _, _)| order == "1003"), "{live:?}");
    d.stop().await;

    // Replaying the rows decided in shadow emits nothing live.
    let live_cfg =
        write_config(dir.path(), &config_text_with(&db, "", "", &shop_config(&shop, "")));
    for id in ["1", "2"] {
        let out = run(bin().args(["inbox", "replay", id, "--config"]).arg(&live_cfg), b"");
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let live = crate::harness::reading(&db, |s| async move { s.outbox(Default::default()).await })
        .unwrap();
    assert!(
        live.iter().all(|a| a.order_id.as_deref() == Some("1003") && !a.shadow),
        "a shadow decision was emitted as live: {live:?}"
    );
}
