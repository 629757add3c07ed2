//! The inbox as the worker's queue: which rows are due, claiming them, and when the next one
//! falls due.
//!
//! ## Concurrency
//! A claim is held in memory by the worker that read the rows: nothing is written to claim
//! them, and the decision's transaction writes a row only if its status and attempts are
//! unchanged since it was read ([`unchanged`]). One daemon owns a SQLite store and its worker
//! writes one batch at a time, so nothing else is deciding these rows meanwhile; a crash leaves
//! them due, and the next run takes them again.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension};

use crate::domain::InboxStatus;
use crate::provider::ProviderKind;
use crate::store::{body, Claimed};

/// The condition of the `inbox_due` partial index (schema.sql, migration 9), word for word:
/// SQLite uses a partial index only for a query that repeats its condition.
macro_rules! unfinished {
    () => {
        "(status = 'pending' OR status = 'parked' OR status = 'processing')"
    };
}

/// The columns [`claimed_row`] reads (`?1` is now: a row never tried before is first tried now).
macro_rules! claimed_columns {
    () => {
        "id, provider, endpoint, received_at, coalesce(first_tried_at, ?1), body, attempts, \
         verified_at, status, body_encoding, body_len, \
         CASE WHEN provider = 'paypal' AND verified_at IS NULL THEN headers ELSE '{}' END"
    };
}

/// The oldest due rows (`?1` now, `?2` how many to read).
const CLAIM: &str = concat!(
    "SELECT ",
    claimed_columns!(),
    " FROM inbox INDEXED BY inbox_due WHERE ",
    unfinished!(),
    " AND ((status <> 'processing' AND next_attempt_at <= ?1) \
         OR (status = 'processing' AND claimed_until < ?1)) \
     ORDER BY id LIMIT ?2"
);

fn claimed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Claimed> {
    let encoding: Option<String> = r.get(9)?;
    let (body, unreadable) = match body::unpack(r.get(5)?, encoding.as_deref(), r.get(10)?) {
        Ok(body) => (body, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let status: String = r.get(8)?;
    Ok(Claimed {
        id: r.get(0)?,
        provider: ProviderKind::from_name(&r.get::<_, String>(1)?),
        endpoint: r.get(2)?,
        received_at: r.get(3)?,
        first_tried_at: r.get(4)?,
        body,
        unreadable,
        attempts: r.get(6)?,
        verified_at: r.get(7)?,
        headers: r.get(11)?,
        // The schema's CHECK allows nothing else.
        status: InboxStatus::parse(&status).unwrap_or(InboxStatus::Pending),
    })
}

/// Rows still `processing` were claimed under a lease by a run of an earlier version that
/// stopped mid-batch: they are due again at once.
pub fn release_claims(conn: &mut Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE inbox SET status = 'pending', claimed_by = NULL, claimed_until = NULL \
         WHERE status = 'processing'",
        [],
    )
}

/// Reads the oldest due rows, at most `limit`. Rows in `taken` (read by an earlier claim and
/// not yet decided) are left out: the next batch is claimed while the one before it is still
/// being prepared.
pub fn claim(
    conn: &Connection,
    now: i64,
    limit: usize,
    taken: &HashSet<i64>,
) -> rusqlite::Result<Vec<Claimed>> {
    let rows = {
        // `processing` rows were claimed under a lease by an earlier version.
        let mut stmt = conn.prepare_cached(CLAIM)?;
        let scan = (limit + taken.len()) as i64;
        let rows = stmt.query_map(params![now, scan], |r| {
            // Checked before the body is read and decompressed.
            Ok(if taken.contains(&r.get(0)?) { None } else { Some(claimed_row(r)?) })
        })?;
        let mut out = Vec::with_capacity(limit);
        for row in rows {
            if let Some(row) = row? {
                out.push(row);
            }
            if out.len() == limit {
                break;
            }
        }
        out
    };
    if !rows.is_empty() {
        crate::failpoint::failpoint("worker_after_claim");
    }
    Ok(rows)
}

/// One row, whatever its status.
pub fn claim_one(conn: &Connection, id: i64, now: i64) -> rusqlite::Result<Option<Claimed>> {
    conn.query_row(
        concat!("SELECT ", claimed_columns!(), " FROM inbox WHERE id = ?2"),
        params![now, id],
        claimed_row,
    )
    .optional()
}

/// Which of `rows` (sorted by id) still have the status and attempts they were read with,
/// in one query.
pub fn unchanged(conn: &Connection, rows: &[Claimed]) -> rusqlite::Result<HashSet<i64>> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(HashSet::new());
    };
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT id, status, attempts FROM inbox INDEXED BY inbox_due WHERE ",
        unfinished!(),
        " AND id BETWEEN ?1 AND ?2",
    ))?;
    let now: HashMap<i64, (String, u32)> = stmt
        .query_map(params![first.id, last.id], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .iter()
        .filter(|r| {
            now.get(&r.id).is_some_and(|(status, attempts)| {
                status == r.status.as_str() && *attempts == r.attempts
            })
        })
        .map(|r| r.id)
        .collect())
}

/// The order our records matched a payment to.
pub fn order_of_payment(
    conn: &Connection,
    provider: ProviderKind,
    payment_id: &str,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT order_id FROM payments WHERE provider = ?1 AND payment_id = ?2")?
        .query_row(params![provider.as_str(), payment_id], |r| r.get::<_, Option<String>>(0))
        .optional()
        .map(Option::flatten)
}

/// When the next waiting row, or an earlier version's lease, falls due (unix ms).
pub fn next_due(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT min(t) FROM (SELECT min(next_attempt_at) AS t FROM inbox WHERE status IN ('pending', 'parked') \
         UNION ALL SELECT min(claimed_until) FROM inbox WHERE status = 'processing')",
        [],
        |r| r.get(0),
    )
}
