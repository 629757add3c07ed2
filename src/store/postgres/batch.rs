//! Claims and decision batches on PostgreSQL (see [`crate::store::batch`]): the claim's
//! transaction is the decision's.
//!
//! Each row is decided in a savepoint of its own: a store error holds up only that row (it is
//! retried with backoff), and the batch's locks are kept.

use deadpool_postgres::ClientWrapper as Client;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::domain::{Action, InboxStatus, PaymentState, PaymentStatus, SHADOW_KEY_PREFIX};
use crate::provider::ProviderKind;
use crate::store::batch::{FactsQuery, Source, StoredFacts, Write};
use crate::store::{body, Applied, Claimed, OpenPayment, Planner};

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// The columns [`claimed_row`] reads (`$1` is now: a row never tried is first tried now).
const CLAIMED_COLUMNS: &str = "i.id, i.provider, i.endpoint, i.received_at, \
     coalesce(i.first_tried_at, $1), i.body, i.attempts, i.verified_at, i.status, i.body_encoding, \
     i.body_len, \
     CASE WHEN i.provider = 'paypal' AND i.verified_at IS NULL THEN i.headers ELSE '{}' END";

/// The oldest due rows whose payment has no earlier row still waiting, locked; rows another
/// daemon holds are skipped.
fn claim_sql() -> String {
    // Test-only and broken on purpose: the payment's earlier rows are not waited for.
    let in_order = if cfg!(feature = "test-claim-unordered") {
        ""
    } else {
        "AND (i.payment_key IS NULL OR NOT EXISTS (SELECT 1 FROM inbox e \
             WHERE e.provider = i.provider AND e.payment_key = i.payment_key AND e.id < i.id \
             AND e.status IN ('pending', 'processing')))"
    };
    // Test-only and broken on purpose: nothing is locked, so two daemons take the same rows.
    let lock =
        if cfg!(feature = "test-claim-unlocked") { "" } else { "FOR UPDATE OF i SKIP LOCKED" };
    format!(
        "SELECT {CLAIMED_COLUMNS} FROM inbox i \
         WHERE i.status IN ('pending', 'parked', 'processing') AND i.next_attempt_at <= $1 \
         {in_order} ORDER BY i.id LIMIT $2 {lock}"
    )
}

fn claimed_row(r: &Row) -> Claimed {
    let encoding: Option<String> = r.get(9);
    let body_len: Option<i32> = r.get(10);
    let (body, unreadable) =
        match body::unpack(r.get(5), encoding.as_deref(), body_len.map(i64::from)) {
            Ok(body) => (body, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
    let status: String = r.get(8);
    let attempts: i32 = r.get(6);
    Claimed {
        id: r.get(0),
        provider: ProviderKind::from_name(r.get::<_, &str>(1)),
        endpoint: r.get(2),
        received_at: r.get(3),
        first_tried_at: r.get(4),
        body,
        unreadable,
        attempts: u32::try_from(attempts).unwrap_or(0),
        verified_at: r.get(7),
        headers: r.get(11),
        // The schema's CHECK allows nothing else.
        status: InboxStatus::parse(&status).unwrap_or(InboxStatus::Pending),
    }
}

/// Claims (locks) the oldest due rows, inside the caller's open transaction.
pub async fn claim(client: &Client, now: i64, limit: usize) -> PgResult<Vec<Claimed>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(query(client, &claim_sql(), &[&now, &limit]).await?.iter().map(claimed_row).collect())
}

/// One row, whatever its status (not locked).
pub async fn claim_one(client: &Client, id: i64, now: i64) -> PgResult<Option<Claimed>> {
    let sql = format!("SELECT {CLAIMED_COLUMNS} FROM inbox i WHERE i.id = $2");
    Ok(query_opt(client, &sql, &[&now, &id]).await?.as_ref().map(claimed_row))
}

/// Locks `rows` (waiting for whoever holds them) and returns the ids whose status and
/// attempts are unchanged since they were read.
async fn lock_unchanged(client: &Client, rows: &[Claimed]) -> PgResult<Vec<i64>> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let now = client
        .query(
            "SELECT id, status, attempts FROM inbox WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .filter(|r| {
            now.iter().any(|n| {
                n.get::<_, i64>(0) == r.id
                    && n.get::<_, &str>(1) == r.status.as_str()
                    && n.get::<_, i32>(2) == i32::try_from(r.attempts).unwrap_or(-1)
            })
        })
        .map(|r| r.id)
        .collect())
}

/// Takes the advisory lock of each order the rows name, in one order on every daemon.
async fn lock_orders<P, T: Planner<P>>(
    client: &Client,
    rows: &[Claimed],
    prepared: &[P],
    planner: &T,
) -> PgResult<()> {
    let mut orders: Vec<&str> = rows
        .iter()
        .zip(prepared)
        .filter_map(|(r, p)| planner.query(r, p).and_then(|q| q.order_id))
        .collect();
    if orders.is_empty() {
        return Ok(());
    }
    orders.sort_unstable();
    orders.dedup();
    client
        .execute(
            "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT DISTINCT \
             hashtextextended('order:' || o, 0) AS k FROM unnest($1::text[]) AS o ORDER BY k) s",
            &[&orders],
        )
        .await?;
    Ok(())
}

/// Plans and writes `rows` in the open transaction on `client`, and commits. With `locked`,
/// the rows were claimed (locked) in it; otherwise they are locked now and those changed
/// since they were read are skipped.
pub async fn decide<P, T: Planner<P>>(
    client: &Client,
    rows: &[Claimed],
    prepared: &[P],
    planner: &T,
    locked: bool,
) -> PgResult<Vec<Applied<T::Decision>>> {
    let now = crate::time::now_ms();
    let ours: Vec<i64> = if locked {
        rows.iter().map(|r| r.id).collect()
    } else {
        lock_unchanged(client, rows).await?
    };
    lock_orders(client, rows, prepared, planner).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut written = false;
    let mut opened = false;
    for (row, prep) in rows.iter().zip(prepared) {
        if !ours.contains(&row.id) {
            tracing::warn!(inbox_id = row.id, "row changed while being decided; skipped");
            out.push(Applied::nothing());
            continue;
        }
        // Each row in a savepoint of its own, opened (and the previous row's released) in
        // the same round trip as the row's first reads.
        let lead = if opened { "RELEASE SAVEPOINT row; SAVEPOINT row" } else { "SAVEPOINT row" };
        opened = true;
        match one(client, row, prep, planner, now, Some(lead)).await {
            Ok(result) => {
                written |= result.written() > 0;
                out.push(result);
            }
            Err(e) if e.as_db_error().is_some() => {
                client.batch_execute("ROLLBACK TO SAVEPOINT row").await?;
                tracing::error!(inbox_id = row.id, error = %e, "store error while deciding; will retry");
                let failed = planner.store_error(row, &e.to_string(), now);
                let outcome = Some(failed.outcome());
                write(client, row, failed, now, planner).await?;
                out.push(Applied { outcome, ..Applied::nothing() });
            }
            Err(e) => return Err(e),
        }
    }
    if written {
        exec(client, "SELECT pg_notify($1, '')", &[&super::OUTBOX_CHANNEL]).await?;
    }
    crate::failpoint::failpoint("worker_before_commit");
    client.batch_execute("COMMIT").await?;
    Ok(out)
}

/// Reads a row's facts, plans it and writes the plan.
async fn one<P, T: Planner<P>>(
    client: &Client,
    row: &Claimed,
    prep: &P,
    planner: &T,
    now: i64,
    first: Option<&str>,
) -> PgResult<Applied<T::Decision>> {
    let facts = match planner.query(row, prep) {
        Some(query) => Some(facts(client, row, &query, first).await?),
        None => {
            if let Some(sql) = first {
                client.batch_execute(sql).await?;
            }
            None
        }
    };
    let plan = planner.plan(row, prep, facts, now);
    if plan.confirmed {
        exec(client, "UPDATE inbox SET verified_at = $2 WHERE id = $1", &[&row.id, &now]).await?;
    }
    let outcome = Some(plan.write.outcome());
    let actions = write(client, row, plan.write, now, planner).await?;
    Ok(Applied { decision: plan.decision, actions, outcome })
}

/// What the store holds about a row's payment and order: four reads sent together (after
/// `first`, a statement to run before them) in one round trip.
async fn facts(
    client: &Client,
    row: &Claimed,
    q: &FactsQuery<'_>,
    first: Option<&str>,
) -> PgResult<StoredFacts> {
    let provider = q.provider.as_str();
    let (blocker_q, payment_q, payers_q, refund_q) = futures_util::future::try_join4(
        client.prepare_cached(
            "SELECT id, next_attempt_at FROM inbox WHERE provider = $1 AND payment_key = $2 \
             AND id < $3 AND status IN ('pending', 'processing') LIMIT 1",
        ),
        client.prepare_cached(
            "SELECT status, ever_succeeded, order_id, fulfilled FROM payments \
             WHERE provider = $1 AND payment_id = $2",
        ),
        client.prepare_cached(
            "SELECT provider, payment_id FROM payments WHERE order_id = $1 AND fulfilled \
             AND status IN ('succeeded', 'authorized')",
        ),
        client.prepare_cached(
            "SELECT 1 FROM outbox WHERE idempotency_key = $1 AND kind = 'refund' \
             UNION ALL SELECT 1 FROM outbox_spent_keys WHERE idempotency_key = $1",
        ),
    )
    .await?;
    // Sent in the order first polled: the leading statement, then the four reads.
    let lead = async {
        match first {
            Some(sql) => client.batch_execute(sql).await,
            None => Ok(()),
        }
    };
    let payers = async {
        match q.order_id {
            Some(order_id) => client.query(&payers_q, &[&order_id]).await,
            None => Ok(Vec::new()),
        }
    };
    let own_refund = async {
        match q.request_key {
            Some(key) => client.query_opt(&refund_q, &[&key]).await.map(|r| r.is_some()),
            None => Ok(false),
        }
    };
    let (_, blocker, payment, payers, own_refund) = futures_util::future::try_join5(
        lead,
        client.query_opt(&blocker_q, &[&provider, &q.payment_key, &row.id]),
        client.query_opt(&payment_q, &[&provider, &q.payment_key]),
        payers,
        own_refund,
    )
    .await?;
    let blocker = blocker.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
    // Test-only and broken on purpose: an earlier unfinished row holds nothing up.
    let blocker = blocker.filter(|_| !cfg!(feature = "test-claim-unordered"));
    if blocker.is_some() {
        return Ok(StoredFacts { blocker, ..StoredFacts::default() });
    }
    let payment = payment.map(|r| PaymentState {
        status: PaymentStatus::parse(r.get(0)).unwrap_or(PaymentStatus::Pending),
        ever_succeeded: r.get(1),
        order_id: r.get(2),
        fulfilled: r.get(3),
    });
    let payers = payers.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(StoredFacts { blocker, payment, payers, own_refund })
}

fn attempts_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Writes a row's plan; returns its actions, each with whether it was written now.
async fn write<P, T: Planner<P>>(
    client: &Client,
    row: &Claimed,
    w: Write<'_>,
    now: i64,
    planner: &T,
) -> PgResult<Vec<(Action, bool)>> {
    match w {
        Write::Finish { status, outcome, error } => {
            set_status(client, row, status, outcome.as_deref(), error.as_deref(), now, None)
                .await?;
        }
        Write::Retry { attempts, error, payment_key, next_attempt_at } => {
            exec(
                client,
                "UPDATE inbox SET status = 'pending', attempts = $2, last_error = $3, \
                     next_attempt_at = $4, payment_key = coalesce($5, payment_key), \
                     first_tried_at = coalesce(first_tried_at, $6), claimed_by = NULL, \
                     claimed_until = NULL WHERE id = $1",
                &[
                    &row.id,
                    &attempts_i32(attempts),
                    &error,
                    &next_attempt_at,
                    &payment_key,
                    &row.first_tried_at,
                ],
            )
            .await?;
        }
        Write::GiveUp { attempts, error, payment_key } => {
            exec(
                client,
                "UPDATE inbox SET status = 'dead', attempts = $2, last_error = $3, \
                     payment_key = coalesce($4, payment_key), \
                     first_tried_at = coalesce(first_tried_at, $6), claimed_by = NULL, \
                     claimed_until = NULL, processed_at = $5 WHERE id = $1",
                &[
                    &row.id,
                    &attempts_i32(attempts),
                    &error,
                    &payment_key,
                    &now,
                    &row.first_tried_at,
                ],
            )
            .await?;
        }
        Write::Wait { status, payment_key, note, next_attempt_at } => {
            exec(
                client,
                "UPDATE inbox SET status = $6, payment_key = $2, outcome = $3, \
                     next_attempt_at = $4, first_tried_at = coalesce(first_tried_at, $5), \
                     claimed_by = NULL, claimed_until = NULL WHERE id = $1",
                &[
                    &row.id,
                    &payment_key,
                    &note,
                    &next_attempt_at,
                    &row.first_tried_at,
                    &status.as_str(),
                ],
            )
            .await?;
        }
        Write::Decided { status, until, note, payment_key, source, actions, payment } => {
            // The actions, sent together (and so written in order, as sent).
            let ids = futures_util::future::try_join_all(actions.iter().map(|action| {
                let sinks = planner.sinks(action.kind);
                insert_action(client, action, &source, (row.id, &row.endpoint), now, sinks)
            }))
            .await?;
            let out: Vec<(Action, bool)> =
                actions.into_iter().zip(ids).map(|(a, id)| (a, id.is_some())).collect();
            // The payment's state and the row's status, sent together.
            let payment = async {
                match payment {
                    Some(state) => {
                        save_payment(client, &source, payment_key, &state, row.id, now).await
                    }
                    None => Ok(()),
                }
            };
            let status = set_status(client, row, status, Some(&note), None, now, Some(payment_key));
            let until = async {
                match until {
                    Some(until) => exec(
                        client,
                        "UPDATE inbox SET next_attempt_at = $2 WHERE id = $1",
                        &[&row.id, &until],
                    )
                    .await
                    .map(drop),
                    None => Ok(()),
                }
            };
            futures_util::future::try_join3(payment, status, until).await?;
            return Ok(out);
        }
    }
    Ok(Vec::new())
}

async fn set_status(
    client: &Client,
    row: &Claimed,
    status: InboxStatus,
    outcome: Option<&str>,
    error: Option<&str>,
    now: i64,
    payment_key: Option<&str>,
) -> PgResult<()> {
    client
        .execute(
            "UPDATE inbox SET status = $2, outcome = coalesce($3, outcome), \
             last_error = coalesce($4, last_error), processed_at = $5, \
             payment_key = coalesce($6, payment_key), first_tried_at = coalesce(first_tried_at, $7), \
             claimed_by = NULL, claimed_until = NULL WHERE id = $1",
            &[&row.id, &status.as_str(), &outcome, &error, &now, &payment_key, &row.first_tried_at],
        )
        .await?;
    Ok(())
}

async fn save_payment(
    client: &Client,
    source: &Source<'_>,
    payment_id: &str,
    state: &PaymentState,
    inbox_id: i64,
    now: i64,
) -> PgResult<()> {
    client
        .execute(
            "INSERT INTO payments (provider, payment_id, status, ever_succeeded, order_id, \
             fulfilled, updated_at, last_inbox_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (provider, payment_id) DO UPDATE SET status = excluded.status, \
               ever_succeeded = payments.ever_succeeded OR excluded.ever_succeeded, \
               order_id = coalesce(excluded.order_id, payments.order_id), \
               fulfilled = excluded.fulfilled, updated_at = excluded.updated_at, \
               last_inbox_id = excluded.last_inbox_id",
            &[
                &source.provider.as_str(),
                &payment_id,
                &state.status.as_str(),
                &state.ever_succeeded,
                &state.order_id,
                &state.fulfilled,
                &now,
                &inbox_id,
            ],
        )
        .await?;
    Ok(())
}

/// The action, unless its key is already in the outbox, was spent by a pruned refund, or (for a
/// live action) the same action was decided in shadow mode, or it was written before under its
/// earlier key; with a delivery to each of `sinks` (none for a shadow action). One statement.
const INSERT_ACTION: &str = "WITH a AS ( \
       INSERT INTO outbox (kind, order_id, provider, payment_id, amount_minor, currency, reason, \
         template, customer_email, idempotency_key, inbox_id, event_id, created_at, endpoint, shadow) \
       SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 \
       WHERE NOT EXISTS (SELECT 1 FROM outbox_spent_keys WHERE idempotency_key = $10) \
         AND NOT ($16 AND EXISTS (SELECT 1 FROM outbox WHERE idempotency_key = $17 || $10)) \
         AND NOT EXISTS (SELECT 1 FROM outbox WHERE idempotency_key = $18) \
       ON CONFLICT (idempotency_key) DO NOTHING RETURNING id), \
     d AS (INSERT INTO deliveries (action_id, sink, order_id, state, attempts, next_at, created_at) \
       SELECT a.id, s, $2, 'pending', 0, $13, $13 FROM a CROSS JOIN unnest($19::text[]) AS s) \
     SELECT id FROM a";

/// Writes an action (see [`INSERT_ACTION`]); its id if written.
async fn insert_action(
    client: &Client,
    a: &Action,
    source: &Source<'_>,
    row: (i64, &str),
    now: i64,
    sinks: &[std::sync::Arc<str>],
) -> PgResult<Option<i64>> {
    let (inbox_id, endpoint) = row;
    let sinks: Vec<&str> = if a.shadow { Vec::new() } else { sinks.iter().map(|s| &**s).collect() };
    let row = query_opt(
        client,
        INSERT_ACTION,
        &[
            &a.kind.as_str(),
            &a.order_id,
            &source.provider.as_str(),
            &source.payment_id,
            &a.amount.map(|m| m.minor),
            &a.amount.map(|m| m.currency.code().to_owned()),
            &a.reason,
            &a.template,
            &a.customer_email,
            &a.idempotency_key,
            &inbox_id,
            &source.event_id,
            &now,
            &endpoint,
            &a.shadow,
            &!a.shadow,
            &SHADOW_KEY_PREFIX,
            &a.earlier_key,
            &sinks,
        ],
    )
    .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Decides `rows` (one payment's) again, in order, in one transaction, as if the payment had
/// never been seen (see the SQLite backend's `rerun`). `None` if the payment has other rows by
/// now.
pub async fn rerun<P, T: Planner<P>>(
    client: &Client,
    rows: &[Claimed],
    prepared: &[P],
    reset: Option<(String, String)>,
    dry_run: bool,
    planner: &T,
) -> PgResult<Option<Vec<Applied<T::Decision>>>> {
    let now = crate::time::now_ms();
    client.batch_execute("BEGIN").await?;
    // Wait for a daemon deciding any of them; then they are ours.
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    client.query("SELECT id FROM inbox WHERE id = ANY($1) ORDER BY id FOR UPDATE", &[&ids]).await?;
    lock_orders(client, rows, prepared, planner).await?;
    if let Some((provider, payment_id)) = &reset {
        let now_rows: Vec<i64> = query(
            client,
            "SELECT id FROM inbox WHERE provider = $1 AND payment_key = $2 ORDER BY id",
            &[provider, payment_id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        if now_rows != ids {
            client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        }
        exec(
            client,
            "DELETE FROM payments WHERE provider = $1 AND payment_id = $2",
            &[provider, payment_id],
        )
        .await?;
    }
    let mut out = Vec::with_capacity(rows.len());
    for (row, prep) in rows.iter().zip(prepared) {
        out.push(one(client, row, prep, planner, now, None).await?);
    }
    client.batch_execute(if dry_run { "ROLLBACK" } else { "COMMIT" }).await?;
    Ok(Some(out))
}

/// Writes the reviews of payments left open, each only if its payment is unchanged since it
/// was read; which were written.
pub async fn review_open(
    client: &Client,
    reviews: &[(OpenPayment, Action)],
    sinks: &[std::sync::Arc<str>],
    now: i64,
) -> PgResult<Vec<bool>> {
    client.batch_execute("BEGIN").await?;
    let mut out = Vec::with_capacity(reviews.len());
    for (p, action) in reviews {
        let marked = exec(
            client,
            "UPDATE payments SET open_reviewed = status WHERE provider = $1 AND payment_id = $2 \
                 AND status = $3 AND updated_at = $4",
            &[&p.provider.as_str(), &p.payment_id, &p.status.as_str(), &p.since_ms],
        )
        .await?;
        if marked == 0 {
            out.push(false);
            continue;
        }
        let source =
            Source { provider: p.provider, payment_id: Some(&p.payment_id), event_id: &p.event_id };
        let id =
            insert_action(client, action, &source, (p.inbox_id, &p.endpoint), now, sinks).await?;
        out.push(id.is_some());
    }
    exec(client, "SELECT pg_notify($1, '')", &[&super::OUTBOX_CHANNEL]).await?;
    client.batch_execute("COMMIT").await?;
    Ok(out)
}

/// Runs a statement prepared once per connection.
async fn exec(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PgResult<u64> {
    let stmt = client.prepare_cached(sql).await?;
    client.execute(&stmt, params).await
}

async fn query(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> PgResult<Vec<Row>> {
    let stmt = client.prepare_cached(sql).await?;
    client.query(&stmt, params).await
}

async fn query_opt(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> PgResult<Option<Row>> {
    let stmt = client.prepare_cached(sql).await?;
    client.query_opt(&stmt, params).await
}
