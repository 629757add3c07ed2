//! Read-only queries for the CLI (`inbox list`, `inbox show`, `failures`) and for tests.

use rusqlite::types::{Type, Value};
use rusqlite::{params_from_iter, Connection};
use serde::Serialize;

/// An inbox row without its body, for listings.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InboxSummary {
    /// Row id.
    pub id: i64,
    /// Endpoint name.
    pub endpoint: String,
    /// Provider name.
    pub provider: String,
    /// The provider's notification id.
    pub dedup_key: String,
    /// The provider's event type.
    pub event_type: Option<String>,
    /// First delivery, unix milliseconds.
    pub received_at: i64,
    /// Latest delivery, unix milliseconds.
    pub last_received_at: i64,
    /// Peer address of the first delivery.
    pub remote_addr: String,
    /// Deliveries seen.
    pub delivery_count: i64,
    /// Processing status.
    pub status: String,
    /// Body length in bytes.
    pub body_len: i64,
    /// What the worker decided, for people.
    pub outcome: Option<String>,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Why the last attempt failed (a `dead` row keeps it).
    pub last_error: Option<String>,
    /// PayPal IPN: when PayPal answered VERIFIED to the postback, unix milliseconds.
    pub verified_at: Option<i64>,
}

/// A full inbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    /// Everything but the headers and body.
    pub summary: InboxSummary,
    /// The kept headers, a JSON object.
    pub headers: String,
    /// The raw body, byte for byte.
    pub body: Vec<u8>,
}

/// A recorded verification failure.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// Row id.
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Endpoint name.
    pub endpoint: String,
    /// Peer address.
    pub remote_addr: String,
    /// Short code.
    pub reason: String,
    /// The message sent back.
    pub detail: String,
    /// Body length.
    pub body_len: i64,
}

/// Filters for [`list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only rows with this status.
    pub status: Option<String>,
    /// Only rows from this provider.
    pub provider: Option<String>,
    /// Only rows with an id above this.
    pub after: Option<i64>,
    /// At most this many rows.
    pub limit: Option<u64>,
}

const SUMMARY_COLUMNS: &str = "id, endpoint, provider, dedup_key, event_type, received_at, \
     last_received_at, remote_addr, delivery_count, status, coalesce(body_len, length(body)), outcome, attempts, last_error, \
     verified_at";

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
        status: r.get(9)?,
        body_len: r.get(10)?,
        outcome: r.get(11)?,
        attempts: r.get(12)?,
        last_error: r.get(13)?,
        verified_at: r.get(14)?,
    })
}

/// Inbox rows in arrival order.
pub fn list(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<Vec<InboxSummary>> {
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM inbox WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(s) = &filter.status {
        sql.push_str(" AND status = ?");
        args.push(Value::Text(s.clone()));
    }
    if let Some(p) = &filter.provider {
        sql.push_str(" AND provider = ?");
        args.push(Value::Text(p.clone()));
    }
    if let Some(a) = filter.after {
        sql.push_str(" AND id > ?");
        args.push(Value::Integer(a));
    }
    sql.push_str(" ORDER BY id");
    if let Some(l) = filter.limit {
        sql.push_str(" LIMIT ?");
        args.push(Value::Integer(i64::try_from(l).unwrap_or(i64::MAX)));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), summary)?;
    rows.collect()
}

/// One inbox row with headers and body.
pub fn show(conn: &Connection, id: i64) -> rusqlite::Result<Option<InboxRow>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}, headers, body, body_encoding, body_len FROM inbox WHERE id = ?1"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([id])?;
    let Some(r) = rows.next()? else { return Ok(None) };
    let encoding: Option<String> = r.get(17)?;
    let body = super::body::unpack(r.get(16)?, encoding.as_deref(), r.get(18)?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(16, Type::Blob, Box::new(e)))?;
    Ok(Some(InboxRow { summary: summary(r)?, headers: r.get(15)?, body }))
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

/// An outbox row, as consumers read it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id: consumers remember the last one they handled (`--after`).
    pub id: i64,
    /// `fulfil`, `refund`, `notify_customer` or `review`.
    pub kind: String,
    /// The shop's order id.
    pub order_id: Option<String>,
    /// Provider name.
    pub provider: String,
    /// The endpoint (provider account) the notification arrived on: refund through it.
    pub endpoint: Option<String>,
    /// The provider's payment id.
    pub payment_id: Option<String>,
    /// The amount as a decimal string with the currency's digits (`"100.00"`).
    pub amount: Option<String>,
    /// The amount in minor units.
    pub amount_minor: Option<i64>,
    /// ISO 4217 code.
    pub currency: Option<String>,
    /// Why, for people.
    pub reason: String,
    /// For `notify_customer`: which message.
    pub template: Option<String>,
    /// Where to send it.
    pub customer_email: Option<String>,
    /// Unique per logical action; pass it on (for example as Stripe's `Idempotency-Key`).
    pub idempotency_key: String,
    /// The inbox row that caused it.
    pub inbox_id: i64,
    /// The provider's event id that caused it.
    pub event_id: String,
    /// When it was written, RFC 3339 UTC.
    pub created_at: String,
}

/// Outbox rows in order, after `after`, optionally of one kind.
pub fn outbox(
    conn: &Connection,
    after: Option<i64>,
    kind: Option<&str>,
    limit: Option<u64>,
) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, order_id, provider, payment_id, amount_minor, currency, reason, template, \
         customer_email, idempotency_key, inbox_id, event_id, created_at, endpoint FROM outbox \
         WHERE id > ?1 AND (?2 IS NULL OR kind = ?2) ORDER BY id LIMIT ?3",
    )?;
    let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let rows = stmt.query_map(rusqlite::params![after.unwrap_or(0), kind, limit], |r| {
        let minor: Option<i64> = r.get(5)?;
        let currency: Option<String> = r.get(6)?;
        let amount = match (minor, &currency) {
            (Some(m), Some(c)) => crate::money::Currency::parse(c)
                .ok()
                .map(|c| crate::money::Money::new(m, c).to_decimal_string()),
            _ => None,
        };
        Ok(OutboxRow {
            id: r.get(0)?,
            kind: r.get(1)?,
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
        })
    })?;
    rows.collect()
}

/// The highest outbox id, or 0.
pub fn outbox_last_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT coalesce(max(id), 0) FROM outbox", [], |r| r.get(0))
}
