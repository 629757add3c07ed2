//! Reads and prefills a reconciled store directly with SQLite (the daemon must be stopped
//! for `prefill`; `count` only reads).
//!
//! ```text
//! inbox count   STORE.db [--after-id N]       # rows=… max_id=… new_rows=… redelivered=… bytes=…
//! inbox rows    PEER.db                       # rows=… bytes=… (the naive peer's inbox)
//! inbox prefill STORE.db --rows 1000000 [--txn 100000] [--max-secs 1800] [--pending 1000]
//! ```
//!
//! `rows` counts any table named `inbox`, such as the naive peer's (which has no ids or
//! delivery counts).
//!
//! `prefill` needs a store the daemon has created (schema version ≥ 8). It appends rows shaped
//! like the daemon's own: endpoint and provider `stripe`, a random-looking `evt_…` dedup key,
//! the event type, arrival times spread over the last 90 days in id order, a Stripe source
//! address, the kept headers as JSON with a real signature, the ~2.5 KB body (compressed, as the daemon
//! stores it), and the worker's
//! bookkeeping of a processed row. 70 % `payment_intent.succeeded`, 20 % `charge.succeeded`
//! (status `done`), 10 % `payment_intent.created` (`ignored`); the newest `--pending` rows
//! are `pending`. The insert runs with synchronous=OFF and an in-memory rollback journal in
//! large transactions, then puts the store back in WAL mode.

use std::path::Path;
use std::time::Instant;

use ingest_bench::{die, event_id, run_seed, sign_v1, token, Args, Template, DEFAULT_SECRET};
use rusqlite::{params, Connection, OpenFlags};

const INSERT: &str = "INSERT INTO inbox (endpoint, provider, dedup_key, event_type, received_at, \
    last_received_at, remote_addr, headers, body, delivery_count, status, attempts, \
    next_attempt_at, payment_key, outcome, processed_at, first_tried_at, body_encoding, body_len) \
    VALUES ('stripe', 'stripe', ?1, ?2, ?3, ?3, ?4, ?5, ?6, 1, ?7, 0, 0, ?8, ?9, ?10, ?11, 'lz4', ?12)";

/// Addresses Stripe sends webhooks from (docs.stripe.com/ips).
const STRIPE_IPS: &[&str] = &[
    "3.18.12.63",
    "3.130.192.231",
    "13.235.14.237",
    "13.235.122.149",
    "18.211.135.69",
    "35.154.171.200",
    "52.15.183.38",
    "54.88.130.119",
    "54.88.130.237",
    "54.187.174.169",
    "54.187.205.235",
    "54.187.216.72",
];

const DAY_MS: i64 = 86_400_000;

fn store_bytes(db: &Path) -> u64 {
    let size = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::fs::metadata(p).map_or(0, |m| m.len())
    };
    size("") + size("-wal")
}

/// Counts all rows (an index scan), and the rows after `after_id` with how many of them were
/// delivered more than once (a rowid range scan: cheap however large the prefill).
fn count(db: &Path, after_id: i64) {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| die(&format!("{}: {e}", db.display())));
    let fail =
        |e: rusqlite::Error| -> ! { die(&format!("{}: counting the inbox: {e}", db.display())) };
    let (rows, max_id): (i64, i64) = conn
        .query_row("SELECT count(*), coalesce(max(id), 0) FROM inbox", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap_or_else(|e| fail(e));
    let (new_rows, redelivered): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE delivery_count > 1) FROM inbox WHERE id > ?1",
            [after_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| fail(e));
    println!(
        "rows={rows} max_id={max_id} new_rows={new_rows} redelivered={redelivered} bytes={}",
        store_bytes(db)
    );
}

/// Counts the rows of the `inbox` table, whatever its columns.
fn rows(db: &Path) {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| die(&format!("{}: {e}", db.display())));
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
        .unwrap_or_else(|e| die(&format!("{}: counting the inbox: {e}", db.display())));
    println!("rows={rows} bytes={}", store_bytes(db));
}

fn prefill(db: &Path, args: &Args) {
    let rows: u64 = args.num("rows", 1_000_000);
    let txn: u64 = args.num("txn", 100_000).max(1);
    let max_secs: f64 = args.num("max-secs", 1800.0);
    let pending: u64 = args.num("pending", 1000);
    let seed: u64 = args.num("seed", run_seed());
    let secret = args.get("secret").unwrap_or(DEFAULT_SECRET).as_bytes().to_vec();

    let mut conn = Connection::open(db).unwrap_or_else(|e| die(&format!("{}: {e}", db.display())));
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap_or(0);
    if version < 8 {
        die(&format!(
            "{}: schema version {version}; start reconciled on it once first (need ≥ 8)",
            db.display()
        ));
    }
    let existing: i64 = conn.query_row("SELECT count(*) FROM inbox", [], |r| r.get(0)).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF; PRAGMA cache_size = -1048576;",
    )
    .unwrap_or_else(|e| die(&format!("pragmas: {e}")));

    let now_ms = ingest_bench::unix_now() * 1000;
    let first_ms = now_ms - 90 * DAY_MS;
    let span_ms = 90 * DAY_MS - 3_600_000;
    let types = ["payment_intent.succeeded", "charge.succeeded", "payment_intent.created"];
    let started = Instant::now();
    let mut done = 0u64;
    while done < rows {
        let end = (done + txn).min(rows);
        let tx = conn.transaction().unwrap_or_else(|e| die(&format!("begin: {e}")));
        {
            let mut insert = tx.prepare_cached(INSERT).expect("prepare insert");
            let mut headers = String::with_capacity(256);
            for i in done..end {
                let tok = token(seed, i);
                let at = first_ms + (i as i128 * span_ms as i128 / rows as i128) as i64;
                let kind = match i % 10 {
                    0..=6 => 0,
                    7 | 8 => 1,
                    _ => 2,
                };
                let event_type = types[kind];
                // The template embeds the creation time; one per row keeps bodies distinct.
                let template = Template::new(event_type, at / 1000);
                let body = template.body(&tok);
                // Stored as the daemon stores it (src/store/body.rs): an LZ4 block.
                let packed = lz4_flex::block::compress(&body);
                let ts = at / 1000;
                let sig = sign_v1(&secret, ts, &body);
                headers.clear();
                headers.push_str(
                    "{\"content-type\":\"application/json; charset=utf-8\",\"stripe-signature\":\"",
                );
                headers.push_str(&ingest_bench::signature_header(ts, &sig));
                headers.push_str(
                    "\",\"user-agent\":\"Stripe/1.0 (+https://stripe.com/docs/webhooks)\"}",
                );
                let remote = format!(
                    "{}:{}",
                    STRIPE_IPS[(i % STRIPE_IPS.len() as u64) as usize],
                    32768 + i % 28000
                );
                let payment = format!("pi_3{}", std::str::from_utf8(&tok).expect("ASCII"));
                let (status, outcome, payment_key, processed, tried) =
                    if i >= rows.saturating_sub(pending) {
                        ("pending", None, None, None, None)
                    } else if kind == 2 {
                        (
                            "ignored",
                            Some("ignored: payment_intent.created"),
                            None,
                            Some(at + 30),
                            Some(at + 5),
                        )
                    } else {
                        (
                            "done",
                            Some("fulfilled: order paid in full"),
                            Some(payment),
                            Some(at + 40),
                            Some(at + 5),
                        )
                    };
                insert
                    .execute(params![
                        event_id(&tok),
                        event_type,
                        at,
                        remote,
                        headers,
                        packed,
                        status,
                        payment_key,
                        outcome,
                        processed,
                        tried,
                        body.len() as i64
                    ])
                    .unwrap_or_else(|e| die(&format!("insert row {i}: {e}")));
            }
        }
        tx.commit().unwrap_or_else(|e| die(&format!("commit: {e}")));
        done = end;
        let secs = started.elapsed().as_secs_f64();
        let rate = done as f64 / secs;
        eprintln!(
            "prefill: {done}/{rows} rows, {rate:.0} rows/s, {secs:.0} s, ETA {:.0} s, {:.2} GB",
            (rows - done) as f64 / rate,
            store_bytes(db) as f64 / 1e9
        );
        if secs > max_secs && done < rows {
            die(&format!(
                "prefill: stopped after {secs:.0} s (--max-secs {max_secs}) at {done} rows"
            ));
        }
    }
    conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap_or_else(|e| die(&format!("wal: {e}")));
    drop(conn);
    let secs = started.elapsed().as_secs_f64();
    let total = existing as u64 + rows;
    let bytes = store_bytes(db);
    println!(
        "PREFILL rows={rows} total_rows={total} secs={secs:.1} rows_per_s={:.0} bytes={bytes} \
         bytes_per_row={:.0} gb_per_million={:.2}",
        rows as f64 / secs,
        bytes as f64 / total as f64,
        bytes as f64 / total as f64 * 1e6 / 1e9,
    );
}

fn main() {
    let args = Args::parse(&[]);
    let (Some(cmd), Some(db)) = (args.positional.first(), args.positional.get(1)) else {
        die("usage: inbox count STORE.db | inbox rows PEER.db | inbox prefill STORE.db --rows N [--txn N] [--max-secs S]");
    };
    let db = Path::new(db);
    match cmd.as_str() {
        "count" => count(db, args.num("after-id", 0)),
        "rows" => rows(db),
        "prefill" => prefill(db, &args),
        other => die(&format!("unknown command {other:?}")),
    }
}
