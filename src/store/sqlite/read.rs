//! Read-only queries for the CLI (`inbox list`, `inbox show`, `failures`) and for tests.

use rusqlite::types::{Type, Value};
use rusqlite::{params_from_iter, Connection};

use crate::domain::{ActionKind, InboxStatus, Source};
use crate::store::{
    body, Failure, InboxRow, InboxSummary, ListFilter, OrderPayments, OutboxFilter, OutboxRow,
    PaymentSummary,
};

const SUMMARY_COLUMNS: &str = "id, endpoint, provider, dedup_key, event_type, received_at, \
     last_received_at, remote_addr, delivery_count, status, coalesce(body_len, length(body)), outcome, attempts, last_error, \
     verified_at, \
     CASE WHEN (status = 'pending' OR status = 'parked') AND next_attempt_at > 0 THEN next_attempt_at END, \
     first_tried_at, source";

fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<InboxSummary> {
    Ok(InboxSummary {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        provider: r.get(2)?,
        dedup_key: r.get(3)?,
        event_type: r.get(4)?,
        received_at: r.get(5)?,
        last_received_at: r.get(6)?,
        remote_addr: r.get(7)?,
        delivery_count: r.get(8)?,
        status: {
            let status: String = r.get(9)?;
            InboxStatus::parse(&status).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(9, Type::Text, status.into())
            })?
        },
        body_len: r.get(10)?,
        outcome: r.get(11)?,
        attempts: r.get(12)?,
        last_error: r.get(13)?,
        verified_at: r.get(14)?,
        next_attempt_at: r.get(15)?,
        first_tried_at: r.get(16)?,
        source: {
            let source: String = r.get(17)?;
            Source::parse(&source).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(17, Type::Text, source.into())
            })?
        },
    })
}

/// Inbox rows in arrival order (with `last`, the newest of them, still in arrival order).
pub fn list(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<Vec<InboxSummary>> {
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM inbox WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(s) = &filter.status {
        sql.push_str(" AND status = ?");
        args.push(Value::Text(s.as_str().to_owned()));
    }
    if let Some(p) = &filter.provider {
        sql.push_str(" AND provider = ?");
        args.push(Value::Text(p.clone()));
    }
    if let Some(s) = filter.source {
        sql.push_str(" AND source = ?");
        args.push(Value::Text(s.as_str().to_owned()));
    }
    if let Some(a) = filter.after {
        sql.push_str(" AND id > ?");
        args.push(Value::Integer(a));
    }
    let count = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    if let Some(last) = filter.last {
        // The newest `last`, turned back into arrival order.
        sql = format!("SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?)");
        args.push(count(last));
    }
    sql.push_str(" ORDER BY id");
    if let Some(l) = filter.limit {
        sql.push_str(" LIMIT ?");
        args.push(count(l));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), summary)?;
    rows.collect()
}

/// The inbox row of a provider's dedup key, if stored.
pub fn find(
    conn: &Connection,
    provider: &str,
    dedup_key: &str,
) -> rusqlite::Result<Option<InboxSummary>> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM inbox WHERE provider = ?1 AND dedup_key = ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([provider, dedup_key])?;
    rows.next()?.map(summary).transpose()
}

/// The payment of a provider that our records say paid an order, the latest if several.
pub fn paying_payment(
    conn: &Connection,
    provider: &str,
    order_id: &str,
) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT payment_id FROM payments WHERE order_id = ?1 AND fulfilled = 1 AND provider = ?2 \
         ORDER BY updated_at DESC LIMIT 1",
    )?;
    let mut rows = stmt.query([order_id, provider])?;
    rows.next()?.map(|r| r.get(0)).transpose()
}

/// One inbox row with headers and body.
pub fn show(conn: &Connection, id: i64) -> rusqlite::Result<Option<InboxRow>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}, headers, body, body_encoding, body_len FROM inbox WHERE id = ?1"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([id])?;
    let Some(r) = rows.next()? else { return Ok(None) };
    // After the summary's 18 columns.
    let encoding: Option<String> = r.get(20)?;
    let body = body::unpack(r.get(19)?, encoding.as_deref(), r.get(21)?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(19, Type::Blob, Box::new(e)))?;
    Ok(Some(InboxRow { summary: summary(r)?, headers: r.get(18)?, body }))
}

/// The number of inbox rows.
pub fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
}

/// Recorded verification failures, newest first.
pub fn failures(conn: &Connection, limit: u64) -> rusqlite::Result<Vec<Failure>> {
    let mut stmt = conn.prepare(
        "SELECT id, at, endpoint, remote_addr, reason, detail, body_len FROM verify_failures \
         ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(Failure {
            id: r.get(0)?,
            at: r.get(1)?,
            endpoint: r.get(2)?,
            remote_addr: r.get(3)?,
            reason: r.get(4)?,
            detail: r.get(5)?,
            body_len: r.get(6)?,
        })
    })?;
    rows.collect()
}

const OUTBOX_COLUMNS: &str = "id, kind, order_id, provider, payment_id, amount_minor, currency, \
     reason, template, customer_email, idempotency_key, inbox_id, event_id, created_at, endpoint, \
     shadow";

/// Outbox rows in order, as the filter says.
pub fn outbox(conn: &Connection, filter: &OutboxFilter) -> rusqlite::Result<Vec<OutboxRow>> {
    let select = format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id > ?1 AND (?2 IS NULL OR kind = ?2) AND shadow = ?4"
    );
    let mut stmt = match filter.last {
        None => conn.prepare_cached(&format!("{select} ORDER BY id LIMIT ?3"))?,
        // The newest, turned back into order.
        Some(_) => conn.prepare_cached(&format!(
            "SELECT * FROM ({select} ORDER BY id DESC LIMIT ?3) ORDER BY id"
        ))?,
    };
    let limit =
        filter.last.or(filter.limit).map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let kind = filter.kind.map(ActionKind::as_str);
    let after = filter.after.unwrap_or(0);
    let rows = stmt.query_map(rusqlite::params![after, kind, limit, filter.shadow], outbox_row)?;
    rows.collect()
}

/// The actions one inbox row caused, in order.
pub fn actions_of(conn: &Connection, inbox_id: i64) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE inbox_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([inbox_id], outbox_row)?;
    rows.collect()
}

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    let minor: Option<i64> = r.get(5)?;
    let currency: Option<String> = r.get(6)?;
    let amount = decimal(minor, currency.as_deref());
    Ok(OutboxRow {
        id: r.get(0)?,
        kind: {
            let kind: String = r.get(1)?;
            ActionKind::parse(&kind).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(1, Type::Text, kind.into())
            })?
        },
        order_id: r.get(2)?,
        provider: r.get(3)?,
        endpoint: r.get(14)?,
        payment_id: r.get(4)?,
        amount,
        amount_minor: minor,
        currency,
        reason: r.get(7)?,
        template: r.get(8)?,
        customer_email: r.get(9)?,
        idempotency_key: r.get(10)?,
        inbox_id: r.get(11)?,
        event_id: r.get(12)?,
        created_at: crate::time::format_utc(r.get(13)?),
        shadow: r.get(15)?,
    })
}

/// An order's payments (each with the amount of its latest live action) and whether a live
/// refund or review action names the order.
pub fn order_payments(conn: &Connection, order_id: &str) -> rusqlite::Result<OrderPayments> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.provider, p.payment_id, p.status, p.fulfilled, \
         (SELECT amount_minor FROM outbox o WHERE o.order_id = p.order_id AND o.payment_id = p.payment_id \
            AND o.shadow = 0 AND o.amount_minor IS NOT NULL ORDER BY o.id DESC LIMIT 1), \
         (SELECT currency FROM outbox o WHERE o.order_id = p.order_id AND o.payment_id = p.payment_id \
            AND o.shadow = 0 AND o.amount_minor IS NOT NULL ORDER BY o.id DESC LIMIT 1) \
         FROM payments p WHERE p.order_id = ?1 ORDER BY p.updated_at",
    )?;
    let payments = stmt
        .query_map([order_id], |r| {
            let minor: Option<i64> = r.get(4)?;
            let currency: Option<String> = r.get(5)?;
            let amount = decimal(minor, currency.as_deref());
            Ok(PaymentSummary {
                provider: r.get(0)?,
                payment_id: r.get(1)?,
                status: r.get(2)?,
                fulfilled: r.get(3)?,
                amount,
                currency,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let has = |kind: &str| -> rusqlite::Result<bool> {
        conn.prepare_cached(
            "SELECT 1 FROM outbox WHERE order_id = ?1 AND kind = ?2 AND shadow = 0 LIMIT 1",
        )?
        .exists(params_from_iter([order_id, kind]))
    };
    Ok(OrderPayments { payments, refunded: has("refund")?, review: has("review")? })
}

/// Each sink's deliveries counted by state, and the oldest one not delivered.
pub fn sink_counts(conn: &Connection) -> rusqlite::Result<Vec<crate::store::SinkCounts>> {
    let mut stmt = conn.prepare(
        "SELECT sink, sum(state = 'pending'), sum(state = 'retrying'), sum(state = 'dead'), \
         sum(state = 'delivered'), min(CASE WHEN state != 'delivered' THEN created_at END) \
         FROM deliveries GROUP BY sink ORDER BY sink",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(crate::store::SinkCounts {
            sink: r.get(0)?,
            pending: r.get(1)?,
            retrying: r.get(2)?,
            dead: r.get(3)?,
            delivered: r.get(4)?,
            oldest_undelivered: r.get::<_, Option<i64>>(5)?.map(crate::time::format_utc),
        })
    })?;
    rows.collect()
}

/// A stored amount (minor units and an ISO 4217 code) as a decimal string (`"100.00"`).
fn decimal(minor: Option<i64>, currency: Option<&str>) -> Option<String> {
    let currency = crate::money::Currency::parse(currency?).ok()?;
    Some(crate::money::Money::new(minor?, currency).to_decimal_string())
}

/// One action by id.
pub fn action(conn: &Connection, id: i64) -> rusqlite::Result<Option<OutboxRow>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?1"))?
        .query_row([id], outbox_row)
        .optional()
}

/// The highest outbox id, or 0.
pub fn outbox_last_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM outbox", [], |r| r.get(0))
}

/// The inbox statuses the metrics count: those a person or the worker still has to act on.
/// Counting `done` or `ignored` would read an index range of millions.
pub const GAUGED_STATUSES: [&str; 4] = ["pending", "processing", "parked", "dead"];

/// What the metrics read at each scrape, from index ranges that stay small in a healthy
/// store (see [`crate::store::StoreGauges`]).
pub fn gauges(conn: &Connection, now_ms: i64) -> rusqlite::Result<crate::store::StoreGauges> {
    use rusqlite::OptionalExtension;
    let mut inbox = Vec::with_capacity(GAUGED_STATUSES.len());
    for status in GAUGED_STATUSES {
        let n: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM inbox INDEXED BY inbox_by_status WHERE status = ?1",
            )?
            .query_row([status], |r| r.get(0))?;
        inbox.push((status, n));
    }
    // The first pending row that is due, in order of arrival (a fresh row is due when it
    // arrived; a retried one at its next attempt), and the earliest due parked row.
    let pending: Option<i64> = conn
        .prepare_cached(
            "SELECT max(received_at, next_attempt_at) FROM inbox INDEXED BY inbox_by_status \
             WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY id LIMIT 1",
        )?
        .query_row([now_ms], |r| r.get(0))
        .optional()?;
    let parked: Option<i64> = conn
        .prepare_cached(
            "SELECT min(next_attempt_at) FROM inbox INDEXED BY inbox_by_status \
             WHERE status = 'parked' AND next_attempt_at <= ?1",
        )?
        .query_row([now_ms], |r| r.get(0))?;
    let oldest_due_ms = match (pending, parked) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let last_stored = conn
        .prepare_cached("SELECT endpoint, last_stored_at FROM endpoint_activity ORDER BY endpoint")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, i64)>>>()?;
    let mut sinks: Vec<crate::store::SinkGauges> = conn
        .prepare_cached(
            "SELECT sink, count(*), min(created_at) FROM deliveries INDEXED BY deliveries_owed \
             WHERE state = 'pending' OR state = 'retrying' GROUP BY sink",
        )?
        .query_map([], |r| {
            Ok(crate::store::SinkGauges {
                sink: r.get(0)?,
                owed: r.get(1)?,
                dead: 0,
                oldest_owed_ms: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let dead = conn
        .prepare_cached(
            "SELECT sink, count(*) FROM deliveries INDEXED BY deliveries_dead \
             WHERE state = 'dead' GROUP BY sink",
        )?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (sink, n) in dead {
        match sinks.iter_mut().find(|s| s.sink == sink) {
            Some(s) => s.dead = n,
            None => sinks.push(crate::store::SinkGauges { sink, dead: n, ..Default::default() }),
        }
    }
    sinks.sort_by(|a, b| a.sink.cmp(&b.sink));
    Ok(crate::store::StoreGauges { inbox, oldest_due_ms, last_stored, sinks })
}

/// Open payments (pending, or authorized) whose last notification was decided before
/// `before_ms` and that were not reviewed for their status yet, oldest first.
pub fn open_payments(
    conn: &Connection,
    before_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<crate::store::OpenPayment>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.provider, p.payment_id, p.status, p.order_id, p.updated_at, p.last_inbox_id, \
         i.dedup_key, i.endpoint FROM payments p INDEXED BY payments_open \
         JOIN inbox i ON i.id = p.last_inbox_id \
         WHERE (p.status = 'pending' OR p.status = 'authorized') AND p.updated_at < ?1 \
         AND (p.open_reviewed IS NULL OR p.open_reviewed <> p.status) \
         ORDER BY p.updated_at LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![before_ms, limit as i64], |r| {
        let provider: String = r.get(0)?;
        let status: String = r.get(2)?;
        Ok((provider, status, r.get(1)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (provider, status, payment_id, order_id, since_ms, inbox_id, event_id, endpoint) = row?;
        // A provider or status this build does not know is left alone.
        let (Some(provider), Some(status)) = (
            crate::provider::ProviderKind::from_name(&provider),
            crate::domain::PaymentStatus::parse(&status),
        ) else {
            continue;
        };
        out.push(crate::store::OpenPayment {
            provider,
            payment_id,
            status,
            order_id,
            since_ms,
            inbox_id,
            event_id,
            endpoint,
        });
    }
    Ok(out)
}

/// The ids of the rows `selection` takes, above `after`, in order, at most `limit`.
pub fn select(
    conn: &Connection,
    selection: &crate::store::ReplaySelection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<i64>> {
    let mut sql = String::from("SELECT id FROM inbox WHERE id > ?");
    let mut args: Vec<Value> = vec![Value::Integer(after)];
    if !selection.ids.is_empty() {
        let marks = vec!["?"; selection.ids.len()].join(", ");
        sql.push_str(&format!(" AND id IN ({marks})"));
        args.extend(selection.ids.iter().map(|id| Value::Integer(*id)));
    }
    let mut text = |clause: &str, value: &Option<String>| {
        if let Some(v) = value {
            sql.push_str(clause);
            args.push(Value::Text(v.clone()));
        }
    };
    text(" AND status = ?", &selection.status.map(|s| s.as_str().to_owned()));
    text(" AND provider = ?", &selection.provider);
    text(" AND endpoint = ?", &selection.endpoint);
    text(
        " AND EXISTS (SELECT 1 FROM payments p WHERE p.provider = inbox.provider \
         AND p.payment_id = inbox.payment_key AND p.order_id = ?)",
        &selection.order,
    );
    if let Some(t) = selection.since_ms {
        sql.push_str(" AND received_at >= ?");
        args.push(Value::Integer(t));
    }
    if let Some(t) = selection.until_ms {
        sql.push_str(" AND received_at < ?");
        args.push(Value::Integer(t));
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    let mut stmt = conn.prepare(&sql)?;
    let ids = stmt.query_map(params_from_iter(args), |r| r.get(0))?;
    ids.collect()
}

/// The payment a row was decided under (`provider`, payment key), if any.
pub fn payment_of_row(conn: &Connection, id: i64) -> rusqlite::Result<Option<(String, String)>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(
        "SELECT provider, payment_key FROM inbox WHERE id = ?1 AND payment_key IS NOT NULL",
    )?
    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

/// Every row of one payment, in arrival order.
pub fn rows_of_payment(
    conn: &Connection,
    provider: &str,
    payment_key: &str,
) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM inbox WHERE provider = ?1 AND payment_key = ?2 ORDER BY id",
    )?;
    let ids = stmt.query_map([provider, payment_key], |r| r.get(0))?;
    ids.collect()
}
