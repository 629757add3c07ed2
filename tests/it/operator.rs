//! The operator's first hour: how the shop query reads a real order, the inbox and outbox
//! commands, the daemon's log, and the demo.

use std::io::BufRead;
use std::process::Stdio;

use crate::cli::{bin, run, write_config};
use crate::harness::{config_text_with, event, pi_event, shop_config, Daemon, Shop};
use crate::process::{ChildGuard, EXIT_WITHIN};

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

/// Runs `reconciled ARGS`; its exit code must be 0. Returns stdout.
fn ok(args: &[&str], extra: &[&std::ffi::OsStr]) -> String {
    let out = run(bin().args(args).args(extra), b"");
    assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    out.stdout
}

/// The data rows of a table (after its header line) that name one of `ids`, in order.
fn named<'a>(table: &str, ids: &[&'a str]) -> Vec<&'a str> {
    table.lines().skip(1).filter_map(|l| ids.iter().find(|id| l.contains(*id)).copied()).collect()
}

/// `inbox list --last N` lists the newest N rows, oldest of them first; `inbox tail` shows the
/// latest and, with --follow, prints rows as they are stored.
#[tokio::test(flavor = "multi_thread")]
async fn inbox_list_last_and_inbox_tail_show_the_newest_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let ids = ["evt_row_1", "evt_row_2", "evt_row_3", "evt_row_4", "evt_row_5"];
    for id in ids {
        assert_eq!(d.post_stripe(crate::harness::SECRET, &event(id)).await.1, "stored\n");
    }
    let db = d.db.clone();
    let db_arg = [db.as_os_str()];

    let last = ok(&["inbox", "list", "--last", "2", "--db"], &db_arg);
    assert_eq!(named(&last, &ids), ["evt_row_4", "evt_row_5"], "{last}");
    let json = ok(&["inbox", "list", "--last", "2", "--json", "--db"], &db_arg);
    let keys: Vec<String> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["dedup_key"].to_string())
        .collect();
    assert_eq!(keys, ["\"evt_row_4\"", "\"evt_row_5\""]);
    // With a filter, the newest N of the matching rows.
    let after = ok(&["inbox", "list", "--last", "3", "--after", "3", "--db"], &db_arg);
    assert_eq!(named(&after, &ids), ["evt_row_4", "evt_row_5"], "{after}");
    let out =
        run(bin().args(["inbox", "list", "--last", "2", "--limit", "1", "--db"]).arg(&db), b"");
    assert_eq!(out.code, Some(2), "--last and --limit do not go together: {}", out.stderr);

    let tail = ok(&["inbox", "tail", "--db"], &db_arg);
    assert!(tail.starts_with("    ID  RECEIVED"), "{tail}");
    assert_eq!(named(&tail, &ids), ids, "{tail}");

    // --follow prints what arrives later.
    let mut follow = ChildGuard::spawn(
        bin().args(["inbox", "tail", "--follow", "--db"]).arg(&db).stdout(Stdio::piped()),
    )
    .unwrap();
    let mut lines = std::io::BufReader::new(follow.stdout()).lines();
    for id in ids {
        let line = lines.next().unwrap().unwrap();
        let line = if line.contains("RECEIVED") { lines.next().unwrap().unwrap() } else { line };
        assert!(line.contains(id), "{line}");
    }
    assert_eq!(d.post_stripe(crate::harness::SECRET, &event("evt_row_6")).await.1, "stored\n");
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains("evt_row_6") && line.contains("pending"), "{line}");
    drop(follow);
    d.stop().await;
}

/// `inbox show` of a waiting row says when the worker takes it next and when it stops waiting:
/// a parked row turns into a review after `policy.unmatched_retry_for`, a failing row is marked
/// dead after `worker.max_attempts`. The times need the configuration; without it, it says so.
#[tokio::test(flavor = "multi_thread")]
async fn inbox_show_says_when_a_waiting_row_is_tried_next_and_when_it_stops_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    for id in ["evt_parked", "evt_failing", "evt_finished"] {
        assert_eq!(d.post_stripe(crate::harness::SECRET, &event(id)).await.1, "stored\n");
    }
    let db = d.db.clone();
    d.stop().await;
    let now = reconciled::time::now_ms();
    let (first, next) = (now - 60_000, now + 120_000);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE inbox SET status = 'parked', outcome = 'order not found yet', next_attempt_at = ?1, \
         first_tried_at = ?2 WHERE dedup_key = 'evt_parked'",
        rusqlite::params![next, first],
    )
    .unwrap();
    conn.execute(
        "UPDATE inbox SET status = 'pending', attempts = 3, last_error = 'shop query failed', \
         next_attempt_at = ?1, first_tried_at = ?2 WHERE dedup_key = 'evt_failing'",
        rusqlite::params![next, first],
    )
    .unwrap();
    conn.execute(
        "UPDATE inbox SET status = 'done', outcome = 'paid in full', next_attempt_at = ?1 \
         WHERE dedup_key = 'evt_finished'",
        [next],
    )
    .unwrap();
    drop(conn);
    let extra = "[policy]\nunmatched_retry_for = \"2h\"\n\
                 [worker]\nmax_attempts = 5\nretry_base = \"1s\"\nretry_max = \"5m\"\n";
    let cfg = write_config(dir.path(), &config_text_with(&db, "", "", extra));
    let utc = reconciled::time::format_utc;

    let parked = ok(&["inbox", "show", "1", "--config"], &[cfg.as_os_str()]);
    assert!(parked.contains(&format!("next attempt:   {} (in 1m ", utc(next))), "{parked}");
    let review = format!("review:         {} (in 1h 58m ", utc(first + 2 * 3_600_000));
    assert!(parked.contains(&review), "{parked}");
    assert!(parked.contains("if its order is still not found"), "{parked}");
    let unknown = ok(&["inbox", "show", "1", "--db"], &[db.as_os_str()]);
    assert!(unknown.contains(&format!("next attempt:   {}", utc(next))), "{unknown}");
    assert!(
        unknown.contains("review:         once policy.unmatched_retry_for")
            && unknown.contains("add --config FILE"),
        "{unknown}"
    );

    // Attempt 4 of 5 is next; if it fails, the fifth comes 8 s later (1 s doubled three times)
    // and is the last.
    let failing = ok(&["inbox", "show", "2", "--config"], &[cfg.as_os_str()]);
    assert!(failing.contains(&format!("next attempt:   {}", utc(next))), "{failing}");
    assert!(
        failing.contains(&format!("gives up:       {} (in", utc(next + 8_000)))
            && failing.contains("attempt 4 of worker.max_attempts 5"),
        "{failing}"
    );
    let unknown = ok(&["inbox", "show", "2", "--db"], &[db.as_os_str()]);
    assert!(unknown.contains("gives up:       after worker.max_attempts"), "{unknown}");

    let finished = ok(&["inbox", "show", "3", "--config"], &[cfg.as_os_str()]);
    assert!(!finished.contains("next attempt") && !finished.contains("review:"), "{finished}");
}

/// Words a person reads, not Rust type names: `CamelCase` tokens, or a Debug-printed option.
fn type_names(text: &str) -> Vec<&str> {
    let camel = |w: &str| {
        let mut chars = w.chars();
        chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && w.chars().all(|c| c.is_ascii_alphabetic())
            && w.as_bytes().windows(3).any(|p| {
                p[0].is_ascii_lowercase() && p[1].is_ascii_uppercase() && p[2].is_ascii_lowercase()
            })
    };
    let mut found: Vec<&str> =
        text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').filter(|w| camel(w)).collect();
    for debug in ["Sqlite", "Done:", "Park:", "Some(", "None"] {
        if let Some(at) = text.find(debug) {
            found.push(&text[at..at + debug.len()]);
        }
    }
    found
}

/// Every command's output an operator reads in the first hour is in words: the policy as
/// configured, the decision of a replay, the driver the worker uses.
#[tokio::test(flavor = "multi_thread")]
async fn command_outputs_use_words_not_type_names() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let extra = shop_config(&shop, "[policy]\non_overpaid = \"refund_difference\"");
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let body = pi_event("evt_words", "succeeded", "pi_words", "1001", 10000, "usd");
    assert_eq!(d.post_stripe(crate::harness::SECRET, &body).await.1, "stored\n");
    d.settle().await;
    let db = d.db.clone();
    d.stop().await;
    let cfg = write_config(dir.path(), &config_text_with(&db, "", "", &extra));
    let c = [cfg.as_os_str()];

    let check = ok(&["check-config", "--config"], &c);
    assert!(
        check.contains(
            "policy: mode live, underpaid refund, overpaid refund the difference, currency mismatch refund, \
             paid after cancel refund, fulfil on capture,"
        ),
        "{check}"
    );
    let replay = ok(&["inbox", "replay", "1", "--dry-run", "--config"], &c);
    assert!(replay.starts_with("row 1 stripe "), "{replay}");
    let show = ok(&["inbox", "show", "1", "--config"], &c);
    let show = &show[..show.find("headers:").unwrap()];
    let outputs = [
        check.clone(),
        replay,
        show.to_owned(),
        ok(&["inbox", "list", "--config"], &c),
        ok(&["inbox", "tail", "--config"], &c),
        ok(&["outbox", "list", "--config"], &c),
        ok(&["outbox", "tail", "--config"], &c),
        ok(&["failures", "--config"], &c),
    ];
    for out in &outputs {
        assert_eq!(type_names(out), Vec::<&str>::new(), "{out}");
    }

    // The worker's start line, as the daemon logs it.
    let mut daemon = ChildGuard::spawn(
        bin().args(["serve", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::piped()),
    )
    .unwrap();
    let (_, seen, rest) = crate::harness::listening(&mut daemon);
    assert!(daemon.signal("TERM"));
    daemon.wait_within(EXIT_WITHIN);
    let lines: Vec<String> = seen.into_iter().chain(rest.join().unwrap()).collect();
    let started = lines.iter().find(|l| l.contains("reconciliation worker started")).unwrap();
    assert!(started.contains("driver=sqlite"), "{started}");
    assert_eq!(type_names(started), Vec::<&str>::new(), "{started}");
}

/// At INFO the daemon logs one line per stored notification (endpoint, provider, event id,
/// stored or duplicate) and one per decision (row, outcome, the actions written), and no
/// secret, body or customer address.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_logs_each_notification_and_each_decision_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    let db = dir.path().join("inbox.db");
    let cfg = write_config(dir.path(), &config_text_with(&db, "", "", &shop_config(&shop, "")));
    let mut daemon = ChildGuard::spawn(
        bin().args(["serve", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::piped()),
    )
    .unwrap();
    let (addr, seen, rest) = crate::harness::listening(&mut daemon);
    let body = pi_event("evt_logged", "succeeded", "pi_logged", "1001", 10000, "usd");
    let stored = crate::harness::post_signed(addr, body.clone()).await;
    assert_eq!(stored.1, "stored\n");
    assert_eq!(crate::harness::post_signed(addr, body).await.1, "duplicate\n");
    let decided = || {
        crate::harness::sql(&db)
            .query_row("SELECT status FROM inbox", [], |r| r.get::<_, String>(0))
            .is_ok_and(|s| s == "done")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !decided() {
        assert!(std::time::Instant::now() < deadline, "the row was not decided");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(daemon.signal("TERM"));
    daemon.wait_within(EXIT_WITHIN);
    let lines: Vec<String> = seen.into_iter().chain(rest.join().unwrap()).collect();
    let find = |what: &str| {
        lines
            .iter()
            .find(|l| l.contains(" INFO ") && l.contains(what))
            .unwrap_or_else(|| panic!("no INFO line with {what:?} in\n{}", lines.join("\n")))
    };
    let stored = find(": stored ");
    assert!(
        stored.contains("endpoint=stripe provider=stripe event=evt_logged inbox_id=1"),
        "{stored}"
    );
    let duplicate = find(": duplicate");
    assert!(duplicate.contains("event=evt_logged inbox_id=1 deliveries=2"), "{duplicate}");
    let decision = find(": decided ");
    assert!(
        decision.contains(
            "inbox_id=1 outcome=done actions=\"fulfil 1001 100.00 USD, notify_customer 1001 \
             100.00 USD\""
        ),
        "{decision}"
    );
    let all = lines.join("\n");
    for secret in [crate::harness::SECRET, crate::harness::ROLLED] {
        assert!(!all.contains(secret), "a secret in the log:\n{all}");
    }
    for body_part in ["buyer@example.com", "payment_intent\"", "\"amount\"", "pi_logged\""] {
        assert!(!all.contains(body_part), "{body_part} in the log:\n{all}");
    }
}

/// Starts `serve --demo` in `dir` with `path` as PATH; returns the guard, the banner, and the
/// thread collecting the rest of its log.
fn start_demo(
    dir: &std::path::Path,
    path: &std::ffi::OsStr,
) -> (ChildGuard, String, std::thread::JoinHandle<Vec<String>>) {
    let mut demo = ChildGuard::spawn(
        bin()
            .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env("PATH", path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let (_, _, rest) = crate::harness::listening(&mut demo);
    let mut banner = String::new();
    for line in std::io::BufReader::new(demo.stdout()).lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line == "Stop with Ctrl-C." {
            break;
        }
    }
    (demo, banner, rest)
}

/// Runs a command line the banner printed, as an operator pastes it, in `dir`.
fn paste(dir: &std::path::Path, command: &str) -> String {
    let out = std::process::Command::new("sh").arg("-c").arg(command).current_dir(dir).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The demo starts from a fresh store on each run and says so, prints commands that work
/// where it runs (the running binary, not `cargo run`; its own copies of the events, not the
/// repository's), and has an event for every order of its shop; each is answered `stored`.
#[test]
fn the_demo_starts_afresh_and_its_commands_work_where_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // What an earlier run (or anything else of that name) left behind.
    std::fs::write(dir.join("reconciled-demo.db"), "not a database").unwrap();
    std::fs::create_dir(dir.join("reconciled-demo-events")).unwrap();
    std::fs::write(dir.join("reconciled-demo-events/stale.json"), "{}").unwrap();
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let (mut demo, banner, _) = start_demo(dir, &inherited);
    assert!(
        banner.contains(
            "started afresh: the store, shop and events of the earlier demo run here were deleted"
        ),
        "{banner}"
    );
    assert!(!banner.contains("cargo") && !banner.contains("fixtures/"), "{banner}");
    assert!(!dir.join("reconciled-demo-events/stale.json").exists());
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_reconciled")).canonicalize().unwrap();
    let exe = exe.display().to_string();

    // The example: `{exe} sign stripe ... \` and `--curl ... < events/FILE | sh`.
    let lines: Vec<&str> = banner.lines().collect();
    let at = lines.iter().position(|l| l.contains(" sign stripe ")).expect("a sign command");
    assert!(lines[at].starts_with(&format!("  {exe} sign stripe")), "{}", lines[at]);
    let sign = format!("{}\n{}", lines[at], lines[at + 1]);
    let example = "reconciled-demo-events/payment_intent.succeeded.json";
    assert!(sign.contains(example), "{sign}");
    // Every event the banner lists, sent the way it says: one per order 1001-1005.
    let events: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("reconciled-demo-events/"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for order in 1001..=1005 {
        assert!(banner.contains(&format!("order {order}")), "order {order} in\n{banner}");
    }
    for file in std::iter::once("payment_intent.succeeded.json").chain(events.iter().copied()) {
        let command = sign.replace(example, &format!("reconciled-demo-events/{file}"));
        let answer = paste(dir, &command);
        assert!(answer.starts_with("HTTP/1.1 200"), "{file}: {answer}");
        assert!(answer.ends_with("\r\n\r\nstored\n"), "{file}: {answer:?}");
    }
    // Each order gets its actions, read with the command the banner prints.
    let outbox = format!("{exe} outbox list --demo");
    assert!(banner.contains(&format!("  {exe} outbox tail --follow --demo")), "{banner}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let out = paste(dir, &outbox);
        let orders: Vec<bool> = (1001..=1005).map(|o| out.contains(&format!("  {o}  "))).collect();
        if orders.iter().all(|o| *o) && out.contains("review") {
            assert!(out.contains("refund") && out.contains(" 1005 "), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not every order decided:\n{out}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(paste(dir, &format!("{exe} inbox list --demo")).contains("payment_intent.succeeded"));
    assert!(demo.signal("TERM"));
    demo.wait_within(EXIT_WITHIN);

    // The next run starts with an empty store; with the binary on PATH it is called by name.
    let bin_dir = dir.join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(&exe, bin_dir.join("reconciled")).unwrap();
    let mut path = std::ffi::OsString::from(&bin_dir);
    path.push(":");
    path.push(&inherited);
    let (mut demo, banner, _) = start_demo(dir, &path);
    assert!(banner.contains("earlier demo run here were deleted"), "{banner}");
    assert!(banner.contains("\n  reconciled sign stripe --secret"), "{banner}");
    assert!(banner.contains("\n  reconciled inbox list --demo\n"), "{banner}");
    let list = paste(dir, &format!("{exe} inbox list --demo"));
    assert!(list.contains("(no notifications)"), "{list}");
    assert!(demo.signal("TERM"));
    demo.wait_within(EXIT_WITHIN);
}
