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
