//! Deliveries on SQLite: the actions each sink is owed, and what each attempt came to.

use rusqlite::{params, Connection};

use super::Sqlite;
use crate::store::{Attempt, AttemptRow, DeliveryFilter, DeliveryRow, Owed, StoreError};

/// Deliveries that are owed: pending, or retrying.
const OWED: &str = "(state = 'pending' OR state = 'retrying')";

impl Sqlite {
    pub(in crate::store) async fn owed(
        &self,
        sink: String,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Owed>, StoreError> {
        self.read(move |c| owed(c, &sink, now, limit)).await
    }

    pub(in crate::store) async fn record_attempt(
        &self,
        sink: String,
        action_id: i64,
        attempt: Attempt,
    ) -> Result<bool, StoreError> {
        self.write(move |c| record(c, &sink, action_id, &attempt)).await
    }

    pub(in crate::store) async fn lease(
        &self,
        sink: String,
        now: i64,
        limit: usize,
        until: i64,
    ) -> Result<Vec<Owed>, StoreError> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let owed = owed(&tx, &sink, now, limit)?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE deliveries SET next_at = ?3 WHERE action_id = ?1 AND sink = ?2",
                )?;
                for o in &owed {
                    stmt.execute(params![o.action.id, sink, until])?;
                }
            }
            tx.commit()?;
            Ok(owed)
        })
        .await
    }

    pub(in crate::store) async fn delivery_state(
        &self,
        sink: String,
        action_id: i64,
    ) -> Result<Option<(String, u32, i64)>, StoreError> {
        use rusqlite::OptionalExtension;
        self.read(move |c| {
            c.prepare_cached(
                "SELECT state, attempts, created_at FROM deliveries WHERE action_id = ?1 AND sink = ?2",
            )?
            .query_row(params![action_id, sink], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
        })
        .await
    }

    pub(in crate::store) async fn next_delivery(
        &self,
        sink: String,
    ) -> Result<Option<i64>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT min(next_at) FROM deliveries INDEXED BY deliveries_owed \
                 WHERE sink = ?1 AND {OWED}"
            ))?
            .query_row([sink], |r| r.get(0))
        })
        .await
    }

    pub(in crate::store) async fn deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(move |c| deliveries(c, &filter)).await
    }

    pub(in crate::store) async fn attempts(
        &self,
        action_id: i64,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT sink, attempt, at, duration_ms, delivered, detail FROM delivery_attempts \
                 WHERE action_id = ?1 ORDER BY at, sink, attempt",
            )?;
            let rows = stmt.query_map([action_id], |r| {
                Ok(AttemptRow {
                    sink: r.get(0)?,
                    attempt: r.get(1)?,
                    at: crate::time::format_utc(r.get(2)?),
                    duration_ms: r.get(3)?,
                    delivered: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub(in crate::store) async fn retry_deliveries(
        &self,
        action_id: Option<i64>,
        dead_only: bool,
        sink: Option<String>,
        now: i64,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE deliveries SET state = CASE WHEN attempts = 0 THEN 'pending' ELSE 'retrying' END, \
                 next_at = ?4 \
                 WHERE (?1 IS NULL OR action_id = ?1) AND (?3 IS NULL OR sink = ?3) \
                 AND (state = 'dead' OR (NOT ?2 AND state = 'retrying'))",
                params![action_id, dead_only, sink, now],
            )
        })
        .await
    }
}

/// The oldest due deliveries of `sink`, in the order their actions were written, leaving out
/// any whose order has an earlier delivery still owed to this sink (one order's actions go out
/// in order; an action with no order, or one whose earlier delivery is dead, is not held).
fn owed(conn: &Connection, sink: &str, now: i64, limit: usize) -> rusqlite::Result<Vec<Owed>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT d.action_id, d.attempts, d.created_at FROM deliveries d INDEXED BY deliveries_owed \
         WHERE d.sink = ?1 AND {OWED} AND d.next_at <= ?2 \
         AND NOT EXISTS (SELECT 1 FROM deliveries e INDEXED BY deliveries_owed_by_order \
             WHERE e.sink = ?1 AND e.order_id = d.order_id AND e.action_id < d.action_id \
             AND (e.state = 'pending' OR e.state = 'retrying')) \
         ORDER BY d.action_id LIMIT ?3"
    ))?;
    let due = stmt
        .query_map(params![sink, now, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?, r.get::<_, i64>(2)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(due.len());
    for (action_id, attempts, created_at) in due {
        if let Some(action) = super::read::action(conn, action_id)? {
            out.push(Owed { action, attempts, created_at });
        }
    }
    Ok(out)
}

/// Records one attempt and the delivery's new state, in one transaction; false if the
/// delivery is not owed (delivered already, or no such delivery). A dead delivery can still be
/// recorded as delivered: a pull sink's consumer that acks it did carry it out.
fn record(
    conn: &mut Connection,
    sink: &str,
    action_id: i64,
    a: &Attempt,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (state, next_at, error, delivered_at) = match &a.result {
        Ok(()) => ("delivered", None, None, Some(a.at)),
        Err((error, Some(next))) => ("retrying", Some(*next), Some(error.as_str()), None),
        Err((error, None)) => ("dead", None, Some(error.as_str()), None),
    };
    let changed = tx
        .prepare_cached(&format!(
            "UPDATE deliveries SET state = ?3, attempts = ?4, next_at = coalesce(?5, next_at), \
             last_error = coalesce(?6, last_error), delivered_at = ?7 \
             WHERE action_id = ?1 AND sink = ?2 AND ({OWED} OR (?3 = 'delivered' AND state = 'dead'))"
        ))?
        .execute(params![action_id, sink, state, a.number, next_at, error, delivered_at])?;
    if changed == 1 {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO delivery_attempts (action_id, sink, attempt, at, duration_ms, delivered, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            action_id,
            sink,
            a.number,
            a.at,
            a.duration_ms,
            a.result.is_ok(),
            a.result.as_ref().err().map(|(e, _)| e.as_str()),
        ])?;
    }
    tx.commit()?;
    Ok(changed == 1)
}

fn deliveries(conn: &Connection, f: &DeliveryFilter) -> rusqlite::Result<Vec<DeliveryRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT action_id, sink, state, attempts, next_at, last_error, delivered_at FROM deliveries \
         WHERE (?1 IS NULL OR action_id = ?1) AND (?2 IS NULL OR sink = ?2) \
         AND (NOT ?3 OR state != 'delivered') ORDER BY action_id, sink LIMIT ?4",
    )?;
    let limit = f.limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let rows = stmt.query_map(params![f.action_id, f.sink, f.undelivered, limit], |r| {
        let state: String = r.get(2)?;
        let next_at: i64 = r.get(4)?;
        let owed = state == "pending" || state == "retrying";
        Ok(DeliveryRow {
            action_id: r.get(0)?,
            sink: r.get(1)?,
            state,
            attempts: r.get(3)?,
            next_attempt_at: owed.then(|| crate::time::format_utc(next_at)),
            last_error: r.get(5)?,
            delivered_at: r.get::<_, Option<i64>>(6)?.map(crate::time::format_utc),
        })
    })?;
    rows.collect()
}

/// The delivery rows of a new action, one per sink that takes it (in the decision's
/// transaction).
pub(super) fn add(
    tx: &Connection,
    action_id: i64,
    order_id: Option<&str>,
    sinks: &[std::sync::Arc<str>],
    now: i64,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO deliveries (action_id, sink, order_id, state, attempts, next_at, created_at) \
         VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4)",
    )?;
    for sink in sinks {
        stmt.execute(params![action_id, &**sink, order_id, now])?;
    }
    Ok(())
}
