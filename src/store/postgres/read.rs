//! Reads for the command line, the admin API and the metrics; deliveries; pruning.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::locks;
use crate::domain::{ActionKind, InboxStatus, Source};
use crate::store::{
    body, Attempt, AttemptRow, DeliveryFilter, DeliveryRow, Failure, InboxRow, InboxSummary,
    ListFilter, OpenPayment, OrderPayments, OutboxFilter, OutboxRow, Owed, PaymentSummary,
    ReplaySelection, SinkCounts, SinkGauges, StoreGauges,
};

type PgResult<T> = Result<T, tokio_postgres::Error>;

const SUMMARY_COLUMNS: &str = "i.id, i.endpoint, i.provider, i.dedup_key, i.event_type, \
     i.received_at, greatest(i.last_received_at, r.last_received_at), i.remote_addr, \
     (i.delivery_count + coalesce(r.count, 0))::bigint, i.status, \
     coalesce(i.body_len, length(i.body))::bigint, i.outcome, i.attempts::bigint, i.last_error, \
     i.verified_at, \
     CASE WHEN i.status IN ('pending', 'parked') AND i.next_attempt_at > 0 THEN i.next_attempt_at END, \
     i.first_tried_at, i.source";

const INBOX: &str = "inbox i LEFT JOIN inbox_redeliveries r ON r.inbox_id = i.id";

fn summary(r: &Row) -> InboxSummary {
    InboxSummary {
        id: r.get(0),
        endpoint: r.get(1),
        provider: r.get(2),
        dedup_key: r.get(3),
        event_type: r.get(4),
        received_at: r.get(5),
        last_received_at: r.get(6),
        remote_addr: r.get(7),
        delivery_count: r.get(8),
        // The schema's CHECK allows nothing else.
        status: InboxStatus::parse(r.get(9)).unwrap_or(InboxStatus::Dead),
        body_len: r.get(10),
        outcome: r.get(11),
        attempts: r.get(12),
        last_error: r.get(13),
        verified_at: r.get(14),
        next_attempt_at: r.get(15),
        first_tried_at: r.get(16),
        // The schema's CHECK allows nothing else.
        source: Source::parse(r.get(17)).unwrap_or(Source::Webhook),
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Builds a statement's parameters as they are added.
#[derive(Default)]
struct Params(Vec<Box<dyn ToSql + Sync + Send>>);

impl Params {
    fn add(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
    }
}

pub async fn list(c: &Client, filter: ListFilter) -> PgResult<Vec<InboxSummary>> {
    let mut p = Params::default();
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM {INBOX} WHERE true");
    if let Some(s) = filter.status {
        sql += &format!(" AND i.status = {}", p.add(s.as_str().to_owned()));
    }
    if let Some(v) = filter.provider {
        sql += &format!(" AND i.provider = {}", p.add(v));
    }
    if let Some(v) = filter.source {
        sql += &format!(" AND i.source = {}", p.add(v.as_str()));
    }
    if let Some(a) = filter.after {
        sql += &format!(" AND i.id > {}", p.add(a));
    }
    if let Some(last) = filter.last {
        sql = format!("SELECT * FROM ({sql} ORDER BY i.id DESC LIMIT {}) s", p.add(count(last)));
        sql += " ORDER BY 1";
    } else {
        sql += " ORDER BY i.id";
    }
    if let Some(l) = filter.limit {
        sql += &format!(" LIMIT {}", p.add(count(l)));
    }
    Ok(c.query(&sql, &p.refs()).await?.iter().map(summary).collect())
}

pub async fn find(c: &Client, provider: &str, key: &str) -> PgResult<Option<InboxSummary>> {
    let sql =
        format!("SELECT {SUMMARY_COLUMNS} FROM {INBOX} WHERE i.provider = $1 AND i.dedup_key = $2");
    Ok(c.query_opt(&sql, &[&provider, &key]).await?.as_ref().map(summary))
}

pub async fn show(c: &Client, id: i64) -> PgResult<Option<Result<InboxRow, body::UnpackError>>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}, i.headers, i.body, i.body_encoding, i.body_len \
         FROM {INBOX} WHERE i.id = $1"
    );
    let Some(r) = c.query_opt(&sql, &[&id]).await? else { return Ok(None) };
    // After the summary's 18 columns.
    let encoding: Option<String> = r.get(20);
    let len: Option<i32> = r.get(21);
    Ok(Some(
        body::unpack(r.get(19), encoding.as_deref(), len.map(i64::from)).map(|body| InboxRow {
            summary: summary(&r),
            headers: r.get(18),
            body,
        }),
    ))
}

pub async fn paying_payment(c: &Client, provider: &str, order: &str) -> PgResult<Option<String>> {
    Ok(c.query_opt(
        "SELECT payment_id FROM payments WHERE order_id = $1 AND fulfilled AND provider = $2 \
         ORDER BY updated_at DESC LIMIT 1",
        &[&order, &provider],
    )
    .await?
    .map(|r| r.get(0)))
}

pub async fn failures(c: &Client, limit: u64) -> PgResult<Vec<Failure>> {
    Ok(c.query(
        "SELECT id, at, endpoint, remote_addr, reason, detail, body_len::bigint FROM verify_failures \
         ORDER BY id DESC LIMIT $1",
        &[&count(limit)],
    )
    .await?
    .iter()
    .map(|r| Failure {
        id: r.get(0),
        at: r.get(1),
        endpoint: r.get(2),
        remote_addr: r.get(3),
        reason: r.get(4),
        detail: r.get(5),
        body_len: r.get(6),
    })
    .collect())
}

const OUTBOX_COLUMNS: &str = "id, kind, order_id, provider, payment_id, amount_minor, currency, \
     reason, template, customer_email, idempotency_key, inbox_id, event_id, created_at, endpoint, \
     shadow";

fn outbox_row(r: &Row) -> OutboxRow {
    let minor: Option<i64> = r.get(5);
    let currency: Option<String> = r.get(6);
    OutboxRow {
        id: r.get(0),
        // The schema's CHECK allows nothing else.
        kind: ActionKind::parse(r.get(1)).unwrap_or(ActionKind::Review),
        order_id: r.get(2),
        provider: r.get(3),
        endpoint: r.get(14),
        payment_id: r.get(4),
        amount: decimal(minor, currency.as_deref()),
        amount_minor: minor,
        currency,
        reason: r.get(7),
        template: r.get(8),
        customer_email: r.get(9),
        idempotency_key: r.get(10),
        inbox_id: r.get(11),
        event_id: r.get(12),
        created_at: crate::time::format_utc(r.get(13)),
        shadow: r.get(15),
    }
}

fn decimal(minor: Option<i64>, currency: Option<&str>) -> Option<String> {
    let currency = crate::money::Currency::parse(currency?).ok()?;
    Some(crate::money::Money::new(minor?, currency).to_decimal_string())
}

pub async fn outbox(c: &Client, f: OutboxFilter) -> PgResult<Vec<OutboxRow>> {
    let select = format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id > $1 AND ($2::text IS NULL OR kind = $2) \
         AND shadow = $4"
    );
    let sql = match f.last {
        None => format!("{select} ORDER BY id LIMIT $3"),
        Some(_) => format!("SELECT * FROM ({select} ORDER BY id DESC LIMIT $3) s ORDER BY id"),
    };
    let limit = f.last.or(f.limit).map_or(i64::MAX, count);
    let kind = f.kind.map(ActionKind::as_str);
    let after = f.after.unwrap_or(0);
    Ok(c.query(&sql, &[&after, &kind, &limit, &f.shadow]).await?.iter().map(outbox_row).collect())
}

pub async fn actions_of(c: &Client, inbox_id: i64) -> PgResult<Vec<OutboxRow>> {
    let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE inbox_id = $1 ORDER BY id");
    Ok(c.query(&sql, &[&inbox_id]).await?.iter().map(outbox_row).collect())
}

pub async fn action(c: &Client, id: i64) -> PgResult<Option<OutboxRow>> {
    let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = $1");
    Ok(c.query_opt(&sql, &[&id]).await?.as_ref().map(outbox_row))
}

pub async fn order_payments(c: &Client, order_id: String) -> PgResult<OrderPayments> {
    let payments = c
        .query(
            "SELECT p.provider, p.payment_id, p.status, p.fulfilled, a.amount_minor, a.currency \
             FROM payments p LEFT JOIN LATERAL (SELECT amount_minor, currency FROM outbox o \
               WHERE o.order_id = p.order_id AND o.payment_id = p.payment_id AND NOT o.shadow \
               AND o.amount_minor IS NOT NULL ORDER BY o.id DESC LIMIT 1) a ON true \
             WHERE p.order_id = $1 ORDER BY p.updated_at",
            &[&order_id],
        )
        .await?
        .iter()
        .map(|r| {
            let minor: Option<i64> = r.get(4);
            let currency: Option<String> = r.get(5);
            PaymentSummary {
                provider: r.get(0),
                payment_id: r.get(1),
                status: r.get(2),
                fulfilled: r.get(3),
                amount: decimal(minor, currency.as_deref()),
                currency,
            }
        })
        .collect();
    let has = |kind: &'static str| {
        let order_id = order_id.clone();
        async move {
            c.query_opt(
                "SELECT 1 FROM outbox WHERE order_id = $1 AND kind = $2 AND NOT shadow LIMIT 1",
                &[&order_id, &kind],
            )
            .await
            .map(|r| r.is_some())
        }
    };
    Ok(OrderPayments { payments, refunded: has("refund").await?, review: has("review").await? })
}

pub async fn sink_counts(c: &Client) -> PgResult<Vec<SinkCounts>> {
    Ok(c.query(
        "SELECT sink, count(*) FILTER (WHERE state = 'pending'), \
         count(*) FILTER (WHERE state = 'retrying'), count(*) FILTER (WHERE state = 'dead'), \
         count(*) FILTER (WHERE state = 'delivered'), \
         min(created_at) FILTER (WHERE state <> 'delivered') \
         FROM deliveries GROUP BY sink ORDER BY sink",
        &[],
    )
    .await?
    .iter()
    .map(|r| SinkCounts {
        sink: r.get(0),
        pending: r.get(1),
        retrying: r.get(2),
        dead: r.get(3),
        delivered: r.get(4),
        oldest_undelivered: r.get::<_, Option<i64>>(5).map(crate::time::format_utc),
    })
    .collect())
}

pub async fn gauges(c: &Client, now: i64) -> PgResult<StoreGauges> {
    let mut inbox = Vec::new();
    for status in crate::store::sqlite::read::GAUGED_STATUSES {
        let n: i64 =
            c.query_one("SELECT count(*) FROM inbox WHERE status = $1", &[&status]).await?.get(0);
        inbox.push((status, n));
    }
    let pending: Option<i64> = c
        .query_opt(
            "SELECT greatest(received_at, next_attempt_at) FROM inbox WHERE status = 'pending' \
             AND next_attempt_at <= $1 ORDER BY id LIMIT 1",
            &[&now],
        )
        .await?
        .map(|r| r.get(0));
    let parked: Option<i64> = c
        .query_one(
            "SELECT min(next_attempt_at) FROM inbox WHERE status = 'parked' AND next_attempt_at <= $1",
            &[&now],
        )
        .await?
        .get(0);
    let oldest_due_ms = match (pending, parked) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let last_stored = c
        .query("SELECT endpoint, last_stored_at FROM endpoint_activity ORDER BY endpoint", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut sinks: Vec<SinkGauges> = c
        .query(
            "SELECT sink, count(*), min(created_at) FROM deliveries \
             WHERE state IN ('pending', 'retrying') GROUP BY sink",
            &[],
        )
        .await?
        .iter()
        .map(|r| SinkGauges { sink: r.get(0), owed: r.get(1), dead: 0, oldest_owed_ms: r.get(2) })
        .collect();
    for r in c
        .query("SELECT sink, count(*) FROM deliveries WHERE state = 'dead' GROUP BY sink", &[])
        .await?
    {
        let (sink, n): (String, i64) = (r.get(0), r.get(1));
        match sinks.iter_mut().find(|s| s.sink == sink) {
            Some(s) => s.dead = n,
            None => sinks.push(SinkGauges { sink, dead: n, ..Default::default() }),
        }
    }
    sinks.sort_by(|a, b| a.sink.cmp(&b.sink));
    Ok(StoreGauges { inbox, oldest_due_ms, last_stored, sinks })
}

pub async fn open_payments(c: &Client, before_ms: i64, limit: usize) -> PgResult<Vec<OpenPayment>> {
    let rows = c
        .query(
            "SELECT p.provider, p.payment_id, p.status, p.order_id, p.updated_at, p.last_inbox_id, \
             i.dedup_key, i.endpoint FROM payments p JOIN inbox i ON i.id = p.last_inbox_id \
             WHERE p.status IN ('pending', 'authorized') AND p.updated_at < $1 \
             AND (p.open_reviewed IS NULL OR p.open_reviewed <> p.status) \
             ORDER BY p.updated_at LIMIT $2",
            &[&before_ms, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(OpenPayment {
                provider: crate::provider::ProviderKind::from_name(r.get(0))?,
                payment_id: r.get(1),
                status: crate::domain::PaymentStatus::parse(r.get(2))?,
                order_id: r.get(3),
                since_ms: r.get(4),
                inbox_id: r.get(5),
                event_id: r.get(6),
                endpoint: r.get(7),
            })
        })
        .collect())
}

pub async fn select(
    c: &Client,
    s: ReplaySelection,
    after: i64,
    limit: usize,
) -> PgResult<Vec<i64>> {
    let mut p = Params::default();
    let mut sql = format!("SELECT id FROM inbox WHERE id > {}", p.add(after));
    if !s.ids.is_empty() {
        sql += &format!(" AND id = ANY({})", p.add(s.ids));
    }
    if let Some(v) = s.status {
        sql += &format!(" AND status = {}", p.add(v.as_str().to_owned()));
    }
    if let Some(v) = s.provider {
        sql += &format!(" AND provider = {}", p.add(v));
    }
    if let Some(v) = s.endpoint {
        sql += &format!(" AND endpoint = {}", p.add(v));
    }
    if let Some(v) = s.order {
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM payments p WHERE p.provider = inbox.provider \
             AND p.payment_id = inbox.payment_key AND p.order_id = {})",
            p.add(v)
        );
    }
    if let Some(t) = s.since_ms {
        sql += &format!(" AND received_at >= {}", p.add(t));
    }
    if let Some(t) = s.until_ms {
        sql += &format!(" AND received_at < {}", p.add(t));
    }
    sql += &format!(" ORDER BY id LIMIT {}", p.add(i64::try_from(limit).unwrap_or(i64::MAX)));
    Ok(c.query(&sql, &p.refs()).await?.iter().map(|r| r.get(0)).collect())
}

/// The rows of the payment row `id` was decided under, and that payment.
pub async fn payment_group(c: &Client, id: i64) -> PgResult<(Vec<i64>, Option<(String, String)>)> {
    let payment = c
        .query_opt(
            "SELECT provider, payment_key FROM inbox WHERE id = $1 AND payment_key IS NOT NULL \
             AND first_tried_at IS NOT NULL",
            &[&id],
        )
        .await?
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
    Ok(match payment {
        Some((provider, key)) => {
            let ids = c
                .query(
                    "SELECT id FROM inbox WHERE provider = $1 AND payment_key = $2 ORDER BY id",
                    &[&provider, &key],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            (ids, Some((provider, key)))
        }
        None => (vec![id], None),
    })
}

/// The cutoff of a prune now (see the SQLite backend's `cutoff_now`).
async fn cutoff_now(c: &Client, now: i64, retention_days: u64) -> PgResult<i64> {
    let newest: Option<i64> = c
        .query_one(
            "SELECT greatest((SELECT max(last_received_at) FROM inbox), \
             (SELECT max(last_received_at) FROM inbox_redeliveries))",
            &[],
        )
        .await?
        .get(0);
    Ok(crate::store::sqlite::prune::cutoff(newest.map_or(now, |n| n.min(now)), retention_days))
}

const PRUNABLE: &str = "FROM inbox i LEFT JOIN inbox_redeliveries r ON r.inbox_id = i.id \
     WHERE i.status IN ('done', 'ignored', 'rejected') \
     AND greatest(i.last_received_at, r.last_received_at) < $1 AND coalesce(i.processed_at, 0) < $1 \
     AND NOT EXISTS (SELECT 1 FROM outbox o JOIN deliveries d ON d.action_id = o.id \
                     WHERE o.inbox_id = i.id AND d.state <> 'delivered')";

/// Prunes (or, with `dry_run`, counts) what `retention_days` lets go, on one daemon at a time:
/// if another holds the pruning lock, nothing is done now.
pub async fn prune(c: &Client, retention_days: u64, dry_run: bool) -> PgResult<(i64, u64)> {
    let cutoff = cutoff_now(c, crate::time::now_ms(), retention_days).await?;
    if dry_run {
        let n: i64 = c.query_one(&format!("SELECT count(*) {PRUNABLE}"), &[&cutoff]).await?.get(0);
        return Ok((cutoff, u64::try_from(n).unwrap_or(0)));
    }
    Ok((cutoff, prune_before(c, cutoff).await?))
}

/// Deletes the finished rows older than `cutoff` with their actions, in chunks of one
/// transaction each, under the pruning lock.
pub async fn prune_before(c: &Client, cutoff: i64) -> PgResult<u64> {
    let chunk = crate::store::sqlite::prune::CHUNK;
    let mut total = 0u64;
    loop {
        c.batch_execute("BEGIN").await?;
        let ours: bool = c
            .query_one("SELECT pg_try_advisory_xact_lock($1, $2)", &[&locks::CLASS, &locks::PRUNE])
            .await?
            .get(0);
        if !ours {
            c.batch_execute("ROLLBACK").await?;
            return Ok(total);
        }
        let ids: Vec<i64> = c
            .query(&format!("SELECT i.id {PRUNABLE} ORDER BY i.id LIMIT $2"), &[&cutoff, &chunk])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            c.batch_execute("COMMIT").await?;
            return Ok(total);
        }
        c.execute(
            "INSERT INTO outbox_spent_keys (idempotency_key) SELECT idempotency_key FROM outbox \
             WHERE inbox_id = ANY($1) AND (kind = 'refund' OR (kind = 'notify_customer' \
             AND template LIKE '%refunded')) ON CONFLICT DO NOTHING",
            &[&ids],
        )
        .await?;
        for table in ["delivery_attempts", "deliveries"] {
            c.execute(
                &format!(
                    "DELETE FROM {table} WHERE action_id IN (SELECT id FROM outbox WHERE inbox_id = ANY($1))"
                ),
                &[&ids],
            )
            .await?;
        }
        c.execute("DELETE FROM outbox WHERE inbox_id = ANY($1)", &[&ids]).await?;
        c.execute("DELETE FROM inbox_redeliveries WHERE inbox_id = ANY($1)", &[&ids]).await?;
        let n = c.execute("DELETE FROM inbox WHERE id = ANY($1)", &[&ids]).await?;
        c.batch_execute("COMMIT").await?;
        total += n;
        if ids.len() < chunk as usize {
            return Ok(total);
        }
    }
}

/// The deliveries `sink` is owed and that are due, oldest first, none held back behind an
/// earlier undelivered one of its order, leased until `until`: no other daemon takes them
/// before then.
pub async fn lease(
    c: &Client,
    sink: String,
    now: i64,
    limit: usize,
    until: i64,
) -> PgResult<Vec<Owed>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "UPDATE deliveries d SET next_at = $4 FROM ( \
               SELECT action_id FROM deliveries x WHERE x.sink = $1 \
               AND x.state IN ('pending', 'retrying') AND x.next_at <= $2 \
               AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.sink = $1 \
                   AND e.order_id = x.order_id AND e.action_id < x.action_id \
                   AND e.state IN ('pending', 'retrying')) \
               ORDER BY x.action_id LIMIT $3 FOR UPDATE SKIP LOCKED) due \
             WHERE d.sink = $1 AND d.action_id = due.action_id \
             RETURNING d.action_id, d.attempts, d.created_at",
            &[&sink, &now, &limit, &until],
        )
        .await?;
    let mut due: Vec<(i64, i32, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    due.sort_unstable();
    let mut out = Vec::with_capacity(due.len());
    for (action_id, attempts, created_at) in due {
        if let Some(action) = action(c, action_id).await? {
            out.push(Owed { action, attempts: u32::try_from(attempts).unwrap_or(0), created_at });
        }
    }
    Ok(out)
}

pub async fn record_attempt(
    c: &Client,
    sink: String,
    action_id: i64,
    a: Attempt,
) -> PgResult<bool> {
    let (state, next_at, error, delivered_at) = match &a.result {
        Ok(()) => ("delivered", None, None, Some(a.at)),
        Err((error, Some(next))) => ("retrying", Some(*next), Some(error.as_str()), None),
        Err((error, None)) => ("dead", None, Some(error.as_str()), None),
    };
    let number = i32::try_from(a.number).unwrap_or(i32::MAX);
    c.batch_execute("BEGIN").await?;
    let changed = c
        .execute(
            "UPDATE deliveries SET state = $3, attempts = $4, next_at = coalesce($5, next_at), \
             last_error = coalesce($6, last_error), delivered_at = $7 \
             WHERE action_id = $1 AND sink = $2 \
             AND (state IN ('pending', 'retrying') OR ($3 = 'delivered' AND state = 'dead'))",
            &[&action_id, &sink, &state, &number, &next_at, &error, &delivered_at],
        )
        .await?;
    if changed == 1 {
        c.execute(
            "INSERT INTO delivery_attempts (action_id, sink, attempt, at, duration_ms, delivered, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (action_id, sink, attempt) DO UPDATE \
             SET at = excluded.at, duration_ms = excluded.duration_ms, \
             delivered = excluded.delivered, detail = excluded.detail",
            &[&action_id, &sink, &number, &a.at, &a.duration_ms, &a.result.is_ok(), &error],
        )
        .await?;
    }
    c.batch_execute("COMMIT").await?;
    Ok(changed == 1)
}

pub async fn delivery_state(
    c: &Client,
    sink: String,
    action_id: i64,
) -> PgResult<Option<(String, u32, i64)>> {
    Ok(c.query_opt(
        "SELECT state, attempts, created_at FROM deliveries WHERE action_id = $1 AND sink = $2",
        &[&action_id, &sink],
    )
    .await?
    .map(|r| (r.get(0), u32::try_from(r.get::<_, i32>(1)).unwrap_or(0), r.get(2))))
}

pub async fn deliveries(c: &Client, f: DeliveryFilter) -> PgResult<Vec<DeliveryRow>> {
    let limit = f.limit.map_or(i64::MAX, count);
    Ok(c.query(
        "SELECT action_id, sink, state, attempts, next_at, last_error, delivered_at FROM deliveries \
         WHERE ($1::bigint IS NULL OR action_id = $1) AND ($2::text IS NULL OR sink = $2) \
         AND (NOT $3 OR state <> 'delivered') ORDER BY action_id, sink LIMIT $4",
        &[&f.action_id, &f.sink, &f.undelivered, &limit],
    )
    .await?
    .iter()
    .map(|r| {
        let state: String = r.get(2);
        let owed = state == "pending" || state == "retrying";
        DeliveryRow {
            action_id: r.get(0),
            sink: r.get(1),
            attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
            next_attempt_at: owed.then(|| crate::time::format_utc(r.get(4))),
            last_error: r.get(5),
            delivered_at: r.get::<_, Option<i64>>(6).map(crate::time::format_utc),
            state,
        }
    })
    .collect())
}

pub async fn attempts(c: &Client, action_id: i64) -> PgResult<Vec<AttemptRow>> {
    Ok(c.query(
        "SELECT sink, attempt, at, duration_ms, delivered, detail FROM delivery_attempts \
         WHERE action_id = $1 ORDER BY at, sink, attempt",
        &[&action_id],
    )
    .await?
    .iter()
    .map(|r| AttemptRow {
        sink: r.get(0),
        attempt: u32::try_from(r.get::<_, i32>(1)).unwrap_or(0),
        at: crate::time::format_utc(r.get(2)),
        duration_ms: r.get(3),
        delivered: r.get(4),
        detail: r.get(5),
    })
    .collect())
}
