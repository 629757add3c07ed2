//! A decision batch on SQLite: one `BEGIN IMMEDIATE … COMMIT` in which each row's facts are
//! read and its plan written (see [`crate::store::batch`]).
//!
//! Most batches have no store error, so the rows are written without a savepoint each. If one
//! row fails, the whole batch is rolled back and done again with each row in its own
//! savepoint, so that the error holds up only that row (it is retried with backoff).

use rusqlite::{params, Connection, OptionalExtension};

use super::queue;
use crate::domain::{Action, InboxStatus, PaymentState, PaymentStatus, SHADOW_KEY_PREFIX};
use crate::store::batch::{FactsQuery, Source, StoredFacts, Write};
use crate::store::{Applied, Claimed, OpenPayment, Planner};

/// Plans and writes `rows` in one transaction.
pub fn decide<P, T: Planner<P>>(
    conn: &mut Connection,
    rows: &[Claimed],
    prepared: &[P],
    planner: &T,
) -> rusqlite::Result<Vec<Applied<T::Decision>>> {
    let now = crate::time::now_ms();
    match run(conn, rows, prepared, planner, now, false) {
        Ok(out) => Ok(out),
        Err(e) => {
            tracing::debug!(error = %e, "batch failed; deciding it again row by row");
            run(conn, rows, prepared, planner, now, true)
        }
    }
}

fn run<P, T: Planner<P>>(
    conn: &mut Connection,
    rows: &[Claimed],
    prepared: &[P],
    planner: &T,
    now: i64,
    isolate: bool,
) -> rusqlite::Result<Vec<Applied<T::Decision>>> {
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Claimed rows whose status or attempts changed since they were read (someone else
    // decided them) are skipped.
    let ours = queue::unchanged(&tx, rows)?;
    let mut out = Vec::with_capacity(rows.len());
    for (row, prep) in rows.iter().zip(prepared) {
        if !ours.contains(&row.id) {
            // Someone else (an `inbox replay`) decided it meanwhile: theirs stands.
            tracing::warn!(inbox_id = row.id, "row changed while being decided; skipped");
            out.push(Applied::nothing());
            continue;
        }
        if !isolate {
            out.push(one(&tx, row, prep, planner, now)?);
            continue;
        }
        let sp = tx.savepoint()?;
        match one(&sp, row, prep, planner, now) {
            Ok(result) => {
                sp.commit()?;
                out.push(result);
            }
            Err(e) => {
                drop(sp);
                tracing::error!(inbox_id = row.id, error = %e, "store error while deciding; will retry");
                let failed = planner.store_error(row, &e.to_string(), now);
                let outcome = Some(failed.outcome());
                write(&tx, row, failed, now, planner)?;
                out.push(Applied { outcome, ..Applied::nothing() });
            }
        }
    }
    crate::failpoint::failpoint("worker_before_commit");
    tx.commit()?;
    Ok(out)
}

/// Reads a row's facts, plans it and writes the plan.
fn one<P, T: Planner<P>>(
    tx: &Connection,
    row: &Claimed,
    prep: &P,
    planner: &T,
    now: i64,
) -> rusqlite::Result<Applied<T::Decision>> {
    let facts = match planner.query(row, prep) {
        Some(query) => Some(facts(tx, row, &query)?),
        None => None,
    };
    let plan = planner.plan(row, prep, facts, now);
    if plan.confirmed {
        tx.prepare_cached("UPDATE inbox SET verified_at = ?2 WHERE id = ?1")?
            .execute(params![row.id, now])?;
    }
    let outcome = Some(plan.write.outcome());
    let actions = write(tx, row, plan.write, now, planner)?;
    Ok(Applied { decision: plan.decision, actions, outcome })
}

/// What the store holds about a row's payment and order.
fn facts(tx: &Connection, row: &Claimed, q: &FactsQuery<'_>) -> rusqlite::Result<StoredFacts> {
    // One payment's notifications in order of arrival: an earlier one still to be decided
    // (retrying, or claimed) holds this one up. A row parked because its order is not there
    // yet does not: a later notification may well name the order.
    let blocker: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT id, next_attempt_at FROM inbox WHERE provider = ?1 AND payment_key = ?2 AND id < ?3 \
             AND status IN ('pending', 'processing') LIMIT 1",
        )?
        .query_row(params![q.provider.as_str(), q.payment_key, row.id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if blocker.is_some() {
        return Ok(StoredFacts { blocker, ..StoredFacts::default() });
    }
    let payment = tx
        .prepare_cached(
            "SELECT status, ever_succeeded, order_id, fulfilled FROM payments \
             WHERE provider = ?1 AND payment_id = ?2",
        )?
        .query_row(params![q.provider.as_str(), q.payment_key], |r| {
            let status: String = r.get(0)?;
            Ok(PaymentState {
                status: PaymentStatus::parse(&status).unwrap_or(PaymentStatus::Pending),
                ever_succeeded: r.get(1)?,
                order_id: r.get(2)?,
                fulfilled: r.get(3)?,
            })
        })
        .optional()?;
    let payers = match q.order_id {
        Some(order_id) => tx
            .prepare_cached(
                "SELECT provider, payment_id FROM payments WHERE order_id = ?1 AND fulfilled = 1 \
                 AND status IN ('succeeded', 'authorized')",
            )?
            .query_map([order_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let own_refund = match q.request_key {
        Some(key) => tx
            .prepare_cached(
                "SELECT 1 FROM outbox WHERE idempotency_key = ?1 AND kind = 'refund' \
                 UNION ALL SELECT 1 FROM outbox_spent_keys WHERE idempotency_key = ?1",
            )?
            .exists([key])?,
        None => false,
    };
    Ok(StoredFacts { blocker, payment, payers, own_refund })
}

/// Writes a row's plan; returns its actions, each with whether it was written now.
fn write<P, T: Planner<P>>(
    tx: &Connection,
    row: &Claimed,
    w: Write<'_>,
    now: i64,
    planner: &T,
) -> rusqlite::Result<Vec<(Action, bool)>> {
    match w {
        Write::Finish { status, outcome, error } => {
            set_status(tx, row, status, outcome.as_deref(), error.as_deref(), now, None)?;
        }
        Write::Retry { attempts, error, payment_key, next_attempt_at } => {
            tx.prepare_cached(
                "UPDATE inbox SET status = 'pending', attempts = ?2, last_error = ?3, next_attempt_at = ?4, \
                 payment_key = coalesce(?5, payment_key), first_tried_at = coalesce(first_tried_at, ?6), \
                 claimed_by = NULL, claimed_until = NULL WHERE id = ?1",
            )?
            .execute(params![row.id, attempts, error, next_attempt_at, payment_key, row.first_tried_at])?;
        }
        Write::GiveUp { attempts, error, payment_key } => {
            tx.prepare_cached(
                "UPDATE inbox SET status = 'dead', attempts = ?2, last_error = ?3, payment_key = coalesce(?4, payment_key), \
                 first_tried_at = coalesce(first_tried_at, ?6), claimed_by = NULL, claimed_until = NULL, \
                 processed_at = ?5 WHERE id = ?1",
            )?
            .execute(params![row.id, attempts, error, payment_key, now, row.first_tried_at])?;
        }
        Write::Wait { status, payment_key, note, next_attempt_at } => {
            tx.prepare_cached(
                "UPDATE inbox SET status = ?6, payment_key = ?2, outcome = ?3, next_attempt_at = ?4, \
                 first_tried_at = coalesce(first_tried_at, ?5), claimed_by = NULL, claimed_until = NULL \
                 WHERE id = ?1",
            )?
            .execute(params![
                row.id,
                payment_key,
                note,
                next_attempt_at,
                row.first_tried_at,
                status.as_str()
            ])?;
        }
        Write::Decided { status, until, note, payment_key, source, actions, payment } => {
            let mut out = Vec::with_capacity(actions.len());
            for action in actions {
                let written = insert_action(tx, &action, &source, (row.id, &row.endpoint), now)?;
                if written && !action.shadow {
                    let sinks = planner.sinks(action.kind);
                    if !sinks.is_empty() {
                        let id = tx.last_insert_rowid();
                        super::deliver::add(tx, id, action.order_id.as_deref(), sinks, now)?;
                    }
                }
                out.push((action, written));
            }
            if let Some(state) = payment {
                save_payment(tx, &source, payment_key, &state, row.id, now)?;
            }
            set_status(tx, row, status, Some(&note), None, now, Some(payment_key))?;
            if let Some(until) = until {
                tx.prepare_cached("UPDATE inbox SET next_attempt_at = ?2 WHERE id = ?1")?
                    .execute(params![row.id, until])?;
            }
            return Ok(out);
        }
    }
    Ok(Vec::new())
}

/// Decides `rows` again, in order, in one transaction, as if their payment had never been
/// seen: its stored state (`reset`) is removed first, so each row is decided on what the rows
/// before it in the group tell, by the current code. With `dry_run` the transaction is rolled
/// back. An action whose key is already in the outbox is not written again (the outbox is
/// append-only), so in a real run only what is new is written. `None`, with nothing changed,
/// if the payment has rows other than `rows` by the time the transaction starts (the daemon
/// decided a new one meanwhile): read them again and retry.
pub fn rerun<P, T: Planner<P>>(
    conn: &mut Connection,
    rows: &[Claimed],
    prepared: &[P],
    reset: Option<(&str, &str)>,
    dry_run: bool,
    planner: &T,
) -> rusqlite::Result<Option<Vec<Applied<T::Decision>>>> {
    let now = crate::time::now_ms();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some((provider, payment_id)) = reset {
        let now_rows = super::read::rows_of_payment(&tx, provider, payment_id)?;
        if now_rows.len() != rows.len() || now_rows.iter().zip(rows).any(|(a, b)| *a != b.id) {
            return Ok(None);
        }
        tx.prepare_cached("DELETE FROM payments WHERE provider = ?1 AND payment_id = ?2")?
            .execute([provider, payment_id])?;
    }
    let mut out = Vec::with_capacity(rows.len());
    for (row, prep) in rows.iter().zip(prepared) {
        out.push(one(&tx, row, prep, planner, now)?);
    }
    if dry_run {
        tx.rollback()?;
    } else {
        tx.commit()?;
    }
    Ok(Some(out))
}

/// Writes the reviews of payments left open, each only if its payment is still as it was
/// read (same status, no notification since), and marks each payment reviewed for its
/// status. Which were written.
pub fn review_open(
    conn: &mut Connection,
    reviews: &[(OpenPayment, Action)],
    sinks: &[std::sync::Arc<str>],
    now: i64,
) -> rusqlite::Result<Vec<bool>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(reviews.len());
    for (p, action) in reviews {
        let marked = tx
            .prepare_cached(
                "UPDATE payments SET open_reviewed = status WHERE provider = ?1 AND payment_id = ?2 \
                 AND status = ?3 AND updated_at = ?4",
            )?
            .execute(params![p.provider.as_str(), p.payment_id, p.status.as_str(), p.since_ms])?;
        if marked == 0 {
            // A notification about it arrived meanwhile: it is no longer the payment we read.
            out.push(false);
            continue;
        }
        let source =
            Source { provider: p.provider, payment_id: Some(&p.payment_id), event_id: &p.event_id };
        let written = insert_action(&tx, action, &source, (p.inbox_id, &p.endpoint), now)?;
        if written && !action.shadow && !sinks.is_empty() {
            let id = tx.last_insert_rowid();
            super::deliver::add(&tx, id, action.order_id.as_deref(), sinks, now)?;
        }
        out.push(written);
    }
    tx.commit()?;
    Ok(out)
}

/// A row's final status; `first_tried_at` is kept if an earlier attempt set it.
fn set_status(
    tx: &Connection,
    row: &Claimed,
    status: InboxStatus,
    outcome: Option<&str>,
    error: Option<&str>,
    now: i64,
    payment_key: Option<&str>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE inbox SET status = ?2, outcome = coalesce(?3, outcome), last_error = coalesce(?4, last_error), \
         processed_at = ?5, payment_key = coalesce(?6, payment_key), first_tried_at = coalesce(first_tried_at, ?7), \
         claimed_by = NULL, claimed_until = NULL WHERE id = ?1",
    )?
    .execute(params![row.id, status.as_str(), outcome, error, now, payment_key, row.first_tried_at])?;
    Ok(())
}

fn save_payment(
    tx: &Connection,
    source: &Source<'_>,
    payment_id: &str,
    state: &PaymentState,
    inbox_id: i64,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO payments (provider, payment_id, status, ever_succeeded, order_id, fulfilled, updated_at, last_inbox_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (provider, payment_id) DO UPDATE SET status = excluded.status, \
           ever_succeeded = max(ever_succeeded, excluded.ever_succeeded), \
           order_id = coalesce(excluded.order_id, order_id), fulfilled = excluded.fulfilled, \
           updated_at = excluded.updated_at, last_inbox_id = excluded.last_inbox_id",
    )?
    .execute(params![
        source.provider.as_str(),
        payment_id,
        state.status.as_str(),
        state.ever_succeeded,
        state.order_id,
        state.fulfilled,
        now,
        inbox_id
    ])?;
    Ok(())
}

/// A new action; nothing if its idempotency key is already in the outbox. A single-row
/// `VALUES` insert on purpose: an `INSERT … SELECT` may write several rows, so SQLite would keep
/// a statement journal for it (a copy of every page it touches) inside the batch's transaction.
pub(crate) const INSERT_ACTION: &str =
    "INSERT INTO outbox (kind, order_id, provider, payment_id, amount_minor, currency, \
     reason, template, customer_email, idempotency_key, inbox_id, event_id, created_at, endpoint, \
     shadow) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
     ON CONFLICT (idempotency_key) DO NOTHING";

/// Writes an action unless its idempotency key is already in the outbox, or was spent by a
/// pruned refund (`outbox_spent_keys`), or (for a live action) the same action was decided in
/// shadow mode: a row decided in shadow and decided again after going live (a replay) never
/// emits what was decided in shadow as live. True if written.
fn insert_action(
    tx: &Connection,
    a: &Action,
    source: &Source<'_>,
    row: (i64, &str),
    now: i64,
) -> rusqlite::Result<bool> {
    let (inbox_id, endpoint) = row;
    let spent = tx
        .prepare_cached(
            "SELECT 1 FROM outbox_spent_keys WHERE idempotency_key = ?1 \
             UNION ALL SELECT 1 FROM outbox WHERE ?2 AND idempotency_key = ?3 || ?1",
        )?
        .exists(params![a.idempotency_key, !a.shadow, SHADOW_KEY_PREFIX])?;
    if spent {
        return Ok(false);
    }
    if let Some(earlier) = &a.earlier_key {
        // Written before under the key it had then: the same action.
        let known = tx
            .prepare_cached("SELECT 1 FROM outbox WHERE idempotency_key = ?1")?
            .exists([earlier])?;
        if known {
            return Ok(false);
        }
    }
    let changed = tx.prepare_cached(INSERT_ACTION)?.execute(params![
        a.kind.as_str(),
        a.order_id,
        source.provider.as_str(),
        source.payment_id,
        a.amount.map(|m| m.minor),
        a.amount.map(|m| m.currency.code().to_owned()),
        a.reason,
        a.template,
        a.customer_email,
        a.idempotency_key,
        inbox_id,
        source.event_id,
        now,
        endpoint,
        a.shadow,
    ])?;
    Ok(changed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An action is written by a single-row insert: SQLite checks its foreign key at once
    /// (`Halt`) instead of counting violations for the statement's end (`FkCounter`), which is
    /// what it does for a statement that may write several rows, and such a statement keeps a
    /// statement journal: a copy of every page it changes inside the batch's transaction.
    #[test]
    fn an_action_is_written_by_a_single_row_insert() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::schema::open_writer(
            &dir.path().join("s.db"),
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        let ops = super::super::schema::explain(&conn, INSERT_ACTION);
        assert!(!ops.iter().any(|(op, _)| op == "FkCounter"), "{ops:?}");
        // SQLITE_CONSTRAINT_FOREIGNKEY: the foreign key is still enforced, at once.
        assert!(ops.iter().any(|(op, p1)| op == "Halt" && *p1 == 787), "{ops:?}");
    }

    /// A live action is not written when the same action was decided in shadow mode: what
    /// was only compared during shadow mode is never carried out after going live. A shadow
    /// action never blocks a different live one, and live actions block nothing in shadow.
    #[test]
    fn a_live_action_decided_before_in_shadow_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::schema::open_writer(
            &dir.path().join("s.db"),
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        conn.execute(
            "INSERT INTO inbox (endpoint, provider, dedup_key, received_at, last_received_at, \
             remote_addr, headers, body, status) \
             VALUES ('stripe', 'stripe', 'evt_1', 0, 0, '127.0.0.1:1', '{}', x'00', 'pending')",
            [],
        )
        .unwrap();
        let row = Claimed {
            id: conn.last_insert_rowid(),
            provider: Some(crate::provider::ProviderKind::Stripe),
            endpoint: "stripe".into(),
            received_at: 0,
            first_tried_at: 0,
            body: vec![],
            unreadable: None,
            attempts: 0,
            verified_at: None,
            headers: "{}".into(),
            status: InboxStatus::Pending,
        };
        let source = Source {
            provider: crate::provider::ProviderKind::Stripe,
            payment_id: Some("pi_1"),
            event_id: "evt_1",
        };
        let action = |key: &str| Action {
            kind: crate::domain::ActionKind::Fulfil,
            order_id: Some("1001".into()),
            amount: None,
            reason: "payment received".into(),
            template: None,
            customer_email: None,
            earlier_key: None,
            idempotency_key: key.into(),
            shadow: false,
        };
        let write =
            |a: &Action| insert_action(&conn, a, &source, (row.id, &row.endpoint), 1).unwrap();
        assert!(write(&action("fulfil:order:1001").into_shadow()));
        assert!(!write(&action("fulfil:order:1001")), "the shadow decision went live");
        assert!(write(&action("fulfil:order:1002")));
        assert!(write(&action("fulfil:order:1002").into_shadow()));
        assert!(!write(&action("fulfil:order:1002").into_shadow()), "written twice");
    }
}
