//! Pruning: finished notifications are deleted `store.retention_days` after their last
//! delivery, with the actions they produced, so the store stops growing at the volume of one
//! retention period. SQLite reuses the freed pages; the file does not shrink (`VACUUM` would).
//!
//! Only rows that are `done`, `ignored` or `rejected` are pruned, and only when both their last
//! delivery and their decision are older than the cutoff: a row still waiting, or `dead` (an
//! operator must look at it), stays. The dedup key goes with the row, which is why retention is
//! never below the config's minimum of 45 days: providers retry for
//! up to 30 days, and a redelivery counts from the latest one. The `payments` table is kept: it
//! is small, and it is what still recognises a late refund or a second payment for an order.
//!
//! Deletion goes in chunks of [`CHUNK`] rows, one short transaction each, so the ingest writer
//! never waits long for the lock.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio_util::sync::CancellationToken;

/// Rows deleted per transaction.
pub const CHUNK: i64 = 1000;
/// How often the daemon prunes, and how long after starting it first does.
pub const INTERVAL: Duration = Duration::from_secs(3600);
const FIRST_DELAY: Duration = Duration::from_secs(60);
/// A breath between chunks, in which the ingest writer takes the lock.
const PAUSE: Duration = Duration::from_millis(20);

const DAY_MS: i64 = 86_400_000;

/// The unix-ms cutoff for `retention_days` before `now_ms`.
pub fn cutoff(now_ms: i64, retention_days: u64) -> i64 {
    now_ms.saturating_sub(i64::try_from(retention_days).unwrap_or(i64::MAX / DAY_MS) * DAY_MS)
}

/// The cutoff for a prune now: `retention_days` before the earlier of the clock and the latest
/// delivery in the inbox, so a clock that is wrong by months (a VM booted with a bad RTC)
/// cannot make every dedup key look old.
pub fn cutoff_now(conn: &Connection, now_ms: i64, retention_days: u64) -> rusqlite::Result<i64> {
    let newest: Option<i64> =
        conn.query_row("SELECT max(last_received_at) FROM inbox", [], |r| r.get(0))?;
    Ok(cutoff(newest.map_or(now_ms, |n| n.min(now_ms)), retention_days))
}

/// An inbox id below which every row arrived before `cutoff_ms`, and at or past which none
/// did: ids grow with arrival. Found by bisection, in a few dozen index lookups, so
/// the chunks never scan the recent part of a large inbox.
pub fn boundary(conn: &Connection, cutoff_ms: i64) -> rusqlite::Result<i64> {
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM inbox", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(mut lo), Some(max)) = (min, max) else { return Ok(0) };
    let mut hi = max + 1;
    let mut at = conn
        .prepare_cached("SELECT id, received_at FROM inbox WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let row: Option<(i64, i64)> =
            at.query_row([mid], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        match row {
            Some((id, received)) if received < cutoff_ms => lo = id + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The inbox rows a prune may delete (`?1`: the id bound, `?2`: the cutoff). The newest inbox row
/// and the newest action (with its inbox row) always stay: SQLite gives a new row the highest
/// id plus one, and a consumer reading `--after ID` must never see a new row get an id it has
/// already passed. A row one of whose actions a sink still owes (a delivery pending, retrying
/// or dead) stays until that delivery is done or its action is handled by hand.
const PRUNABLE: &str = "FROM inbox WHERE id < ?1 \
    AND status IN ('done', 'ignored', 'rejected') \
    AND last_received_at < ?2 AND coalesce(processed_at, 0) < ?2 \
    AND id < (SELECT max(id) FROM inbox) \
    AND id IS NOT (SELECT inbox_id FROM outbox ORDER BY id DESC LIMIT 1) \
    AND NOT EXISTS (SELECT 1 FROM outbox o JOIN deliveries d ON d.action_id = o.id \
                    WHERE o.inbox_id = inbox.id AND d.state != 'delivered')";

/// Deletes at most `limit` prunable rows below inbox id `below`, and their outbox actions, in
/// one transaction. Returns the number of inbox rows deleted.
pub fn prune_chunk(
    conn: &mut Connection,
    cutoff_ms: i64,
    below: i64,
    limit: i64,
) -> rusqlite::Result<usize> {
    let doomed = format!("SELECT id {PRUNABLE} ORDER BY id LIMIT ?3");
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // A refund and its notice are what a late redelivery could emit again (a fulfil is kept
    // from repeating by the payment's state): their keys stay, so the worker never does.
    tx.execute(
        &format!(
            "INSERT OR IGNORE INTO outbox_spent_keys (idempotency_key) SELECT idempotency_key \
             FROM outbox WHERE inbox_id IN ({doomed}) \
             AND (kind = 'refund' OR (kind = 'notify_customer' AND template LIKE '%refunded'))"
        ),
        params![below, cutoff_ms, limit],
    )?;
    for table in ["delivery_attempts", "deliveries"] {
        tx.execute(
            &format!(
                "DELETE FROM {table} WHERE action_id IN \
                 (SELECT id FROM outbox WHERE inbox_id IN ({doomed}))"
            ),
            params![below, cutoff_ms, limit],
        )?;
    }
    tx.execute(
        &format!("DELETE FROM outbox WHERE inbox_id IN ({doomed})"),
        params![below, cutoff_ms, limit],
    )?;
    let n = tx.execute(
        &format!("DELETE FROM inbox WHERE id IN ({doomed})"),
        params![below, cutoff_ms, limit],
    )?;
    tx.commit()?;
    Ok(n)
}

/// How many rows a prune at `cutoff_ms` would delete now.
pub fn count_prunable(conn: &Connection, cutoff_ms: i64) -> rusqlite::Result<i64> {
    let below = boundary(conn, cutoff_ms)?;
    conn.query_row(&format!("SELECT count(*) {PRUNABLE}"), params![below, cutoff_ms], |r| r.get(0))
}

/// Prunes everything older than `cutoff_ms`, chunk by chunk, until nothing is left or `stop`
/// says so. Returns the number of inbox rows deleted.
pub fn prune(
    conn: &mut Connection,
    cutoff_ms: i64,
    stop: &dyn Fn() -> bool,
) -> rusqlite::Result<u64> {
    let below = boundary(conn, cutoff_ms)?;
    let mut total = 0;
    loop {
        let n = prune_chunk(conn, cutoff_ms, below, CHUNK)?;
        total += n as u64;
        if (n as i64) < CHUNK || stop() {
            return Ok(total);
        }
        std::thread::sleep(PAUSE);
    }
}

/// The daemon's pruning task: a minute after start, then hourly, on its own connection.
pub async fn run(store: Arc<super::Sqlite>, retention_days: u64, shutdown: CancellationToken) {
    let (path, busy_timeout) = (store.path.clone(), store.busy_timeout);
    drop(store);
    let mut delay = FIRST_DELAY;
    let mut conn = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = INTERVAL;
        let c = match conn.take() {
            Some(c) => c,
            None => match super::schema::open_writer(&path, busy_timeout) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %crate::error::error_chain(&e), "pruning skipped: cannot open the store");
                    continue;
                }
            },
        };
        let token = shutdown.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut c = c;
            let result = cutoff_now(&c, crate::time::now_ms(), retention_days)
                .and_then(|cut| prune(&mut c, cut, &|| token.is_cancelled()));
            (c, result)
        })
        .await;
        match done {
            Ok((c, Ok(n))) => {
                conn = Some(c);
                if n > 0 {
                    tracing::info!(
                        rows = n,
                        retention_days,
                        "pruned finished notifications and their actions"
                    );
                }
            }
            Ok((c, Err(e))) => {
                conn = Some(c);
                tracing::warn!(error = %e, "pruning failed; retrying in an hour");
            }
            Err(e) => tracing::error!(error = %e, "pruning task panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            super::super::schema::open_writer(&dir.path().join("s.db"), Duration::from_secs(1))
                .unwrap();
        (dir, conn)
    }

    /// Adds an inbox row first delivered `age` days ago and last `last` days ago, decided
    /// `decided` days ago, with one outbox action. Returns its id.
    fn add(conn: &Connection, key: &str, status: &str, age: i64, last: i64, decided: i64) -> i64 {
        conn.execute(
            "INSERT INTO inbox (endpoint, provider, dedup_key, received_at, last_received_at, \
             remote_addr, headers, body, status, processed_at) \
             VALUES ('stripe', 'stripe', ?1, ?2, ?3, '127.0.0.1:1', '{}', x'00', ?4, ?5)",
            params![key, NOW - age * DAY_MS, NOW - last * DAY_MS, status, NOW - decided * DAY_MS],
        )
        .unwrap();
        let id = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO outbox (kind, provider, reason, idempotency_key, inbox_id, event_id, created_at) \
             VALUES ('review', 'stripe', 'test', ?1, ?2, ?1, 0)",
            params![key, id],
        )
        .unwrap();
        id
    }

    fn keys(conn: &Connection, table: &str, column: &str) -> Vec<String> {
        let mut stmt =
            conn.prepare(&format!("SELECT {column} FROM {table} ORDER BY {column}")).unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn finished_rows_past_retention_go_with_their_actions_and_the_rest_stay() {
        let (_dir, mut conn) = store();
        add(&conn, "a_done_old", "done", 100, 100, 100);
        add(&conn, "b_ignored_old", "ignored", 99, 99, 99);
        add(&conn, "c_rejected_old", "rejected", 98, 98, 98);
        add(&conn, "d_dead_old", "dead", 97, 97, 97);
        add(&conn, "e_pending_old", "pending", 96, 96, 96);
        add(&conn, "f_parked_old", "parked", 95, 95, 95);
        // First delivered long ago, but redelivered 44 days ago: its key must stay.
        add(&conn, "g_redelivered", "done", 94, 44, 94);
        // Waited long, decided 10 days ago: its actions may not be consumed yet.
        add(&conn, "h_decided_late", "done", 93, 93, 10);
        add(&conn, "i_done_recent", "done", 44, 44, 44);
        add(&conn, "j_done_new", "done", 0, 0, 0);
        let cut = cutoff(NOW, 45);
        assert_eq!(count_prunable(&conn, cut).unwrap(), 3);
        assert_eq!(prune(&mut conn, cut, &|| false).unwrap(), 3);
        let left = [
            "d_dead_old",
            "e_pending_old",
            "f_parked_old",
            "g_redelivered",
            "h_decided_late",
            "i_done_recent",
            "j_done_new",
        ];
        assert_eq!(keys(&conn, "inbox", "dedup_key"), left);
        assert_eq!(keys(&conn, "outbox", "idempotency_key"), left);
        assert_eq!(prune(&mut conn, cut, &|| false).unwrap(), 0, "a second prune finds nothing");
        let ok: String = conn
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()
            .unwrap()
            .unwrap_or_else(|| "ok".into());
        assert_eq!(ok, "ok");
    }

    /// An action a sink is still owed (pending, retrying or dead) keeps its notification; a
    /// delivered one goes with it, its delivery rows and attempts too.
    #[test]
    fn actions_a_sink_is_still_owed_are_kept() {
        let (_dir, mut conn) = store();
        let mut ids = Vec::new();
        for (key, state) in [("a", "delivered"), ("b", "pending"), ("c", "retrying"), ("d", "dead")]
        {
            let id = add(&conn, key, "done", 100, 100, 100);
            let action: i64 = conn
                .query_row("SELECT id FROM outbox WHERE inbox_id = ?1", [id], |r| r.get(0))
                .unwrap();
            conn.execute(
                "INSERT INTO deliveries (action_id, sink, state, next_at, created_at) \
                 VALUES (?1, 'shop', ?2, 0, 0)",
                params![action, state],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO delivery_attempts (action_id, sink, attempt, at, duration_ms, delivered) \
                 VALUES (?1, 'shop', 1, 0, 1, 0)",
                [action],
            )
            .unwrap();
            ids.push(id);
        }
        add(&conn, "z_newest", "done", 0, 0, 0);
        let cut = cutoff(NOW, 45);
        assert_eq!(prune(&mut conn, cut, &|| false).unwrap(), 1);
        assert_eq!(keys(&conn, "inbox", "dedup_key"), ["b", "c", "d", "z_newest"]);
        let deliveries: i64 =
            conn.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0)).unwrap();
        let attempts: i64 =
            conn.query_row("SELECT count(*) FROM delivery_attempts", [], |r| r.get(0)).unwrap();
        assert_eq!((deliveries, attempts), (3, 3));
    }

    #[test]
    fn chunks_delete_everything_old_and_stop_when_asked() {
        let (_dir, mut conn) = store();
        let n = CHUNK * 2 + 17;
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..n {
            add(&conn, &format!("old_{i:05}"), "done", 200 - i % 50, 100, 100);
        }
        conn.execute_batch("COMMIT").unwrap();
        add(&conn, "new", "done", 1, 1, 1);
        let cut = cutoff(NOW, 90);
        assert_eq!(prune(&mut conn, cut, &|| true).unwrap(), CHUNK as u64, "one chunk, then stop");
        assert_eq!(prune(&mut conn, cut, &|| false).unwrap(), (n - CHUNK) as u64);
        assert_eq!(keys(&conn, "inbox", "dedup_key"), ["new"]);
    }

    #[test]
    fn the_boundary_splits_rows_received_before_the_cutoff_from_the_rest() {
        let (_dir, conn) = store();
        assert_eq!(boundary(&conn, NOW).unwrap(), 0, "an empty inbox");
        let ids: Vec<i64> =
            (0..37).map(|i| add(&conn, &format!("k{i}"), "done", 100 - i * 2, 0, 0)).collect();
        // Gaps in the ids, as pruning and rollbacks leave them.
        conn.execute("DELETE FROM outbox WHERE inbox_id IN (?1, ?2)", params![ids[10], ids[11]])
            .unwrap();
        conn.execute("DELETE FROM inbox WHERE id IN (?1, ?2)", params![ids[10], ids[11]]).unwrap();
        for days in [0, 1, 27, 28, 29, 60, 79, 80, 81, 100, 101, 200] {
            let cut = NOW - days * DAY_MS;
            let below = boundary(&conn, cut).unwrap();
            let count =
                |sql: &str, v: i64| -> i64 { conn.query_row(sql, [v], |r| r.get(0)).unwrap() };
            // The rows below the boundary are exactly those received before the cutoff.
            assert_eq!(
                count("SELECT count(*) FROM inbox WHERE id < ?1", below),
                count("SELECT count(*) FROM inbox WHERE received_at < ?1", cut),
                "{days} days"
            );
        }
    }

    /// A quiet shop: everything is old. The newest inbox row, and the inbox row of the newest
    /// action, stay, so ids never go back and a consumer's `--after` cursor never skips a row.
    #[test]
    fn the_newest_row_and_action_stay_so_ids_never_go_back() {
        let (_dir, mut conn) = store();
        add(&conn, "a", "done", 300, 300, 300);
        let with_last_action = add(&conn, "b", "done", 200, 200, 200);
        // The newest inbox row has no action.
        conn.execute(
            "INSERT INTO inbox (endpoint, provider, dedup_key, received_at, last_received_at, \
             remote_addr, headers, body, status, processed_at) \
             VALUES ('stripe', 'stripe', 'c', ?1, ?1, '127.0.0.1:1', '{}', x'00', 'ignored', ?1)",
            [NOW - 100 * DAY_MS],
        )
        .unwrap();
        let (max_inbox, max_outbox): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT max(id) FROM inbox), (SELECT max(id) FROM outbox)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let cut = cutoff(NOW, 45);
        assert_eq!(count_prunable(&conn, cut).unwrap(), 1);
        assert_eq!(prune(&mut conn, cut, &|| false).unwrap(), 1);
        assert_eq!(keys(&conn, "inbox", "dedup_key"), ["b", "c"]);
        assert_eq!(keys(&conn, "outbox", "idempotency_key"), ["b"]);
        let next = add(&conn, "d", "done", 0, 0, 0);
        assert!(next > max_inbox && next != with_last_action, "inbox id {next} reused");
        let action: i64 = conn.query_row("SELECT max(id) FROM outbox", [], |r| r.get(0)).unwrap();
        assert!(action > max_outbox, "outbox id {action} reused");
    }

    #[test]
    fn a_clock_far_ahead_does_not_make_recent_rows_old() {
        let (_dir, conn) = store();
        add(&conn, "a", "done", 10, 10, 10);
        let a_year_ahead = NOW + 365 * DAY_MS;
        assert_eq!(cutoff_now(&conn, a_year_ahead, 45).unwrap(), cutoff(NOW - 10 * DAY_MS, 45));
        assert_eq!(cutoff_now(&conn, NOW, 45).unwrap(), cutoff(NOW - 10 * DAY_MS, 45));
        let (_dir, empty) = store();
        assert_eq!(cutoff_now(&empty, NOW, 45).unwrap(), cutoff(NOW, 45));
    }

    #[test]
    fn the_cutoff_counts_whole_days_back() {
        assert_eq!(cutoff(NOW, 45), NOW - 45 * DAY_MS);
        assert!(cutoff(10, u64::MAX) < 0, "no overflow: nothing is old enough");
    }
}
