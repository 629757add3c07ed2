//! The writer thread: group commit of inbox rows.
//!
//! It blocks for one command, then takes whatever else is already queued (up to
//! `max_batch`), writes it all in one `BEGIN IMMEDIATE … COMMIT`, and answers every waiter
//! after the commit. If anything in the batch fails, the whole batch is rolled back and every
//! waiter gets the error: nothing is acknowledged that is not durable.

use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{CacheSize, Checkpointer};
use crate::domain::Source;
use crate::store::queue::{Activity, Command};
use crate::store::{FailureRecord, NewRow, StoreError, Stored};

/// Writer settings taken from the store config.
pub(crate) struct Settings {
    pub max_batch: usize,
    pub failures_kept: u64,
    pub cache: CacheSize,
    /// Each batch's commit time, in seconds, is observed here.
    pub commit_seconds: Histogram,
}

/// A new row; a duplicate changes nothing here (see [`REDELIVERED`]). Cheaper than an upsert
/// with RETURNING on the common path, where every notification is new.
const INSERT: &str = "INSERT INTO inbox (endpoint, provider, dedup_key, event_type, received_at, \
     last_received_at, remote_addr, headers, body, body_encoding, body_len, source) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
     ON CONFLICT (provider, dedup_key) DO NOTHING";

/// A delivery of a row already stored: counted.
const REDELIVERED: &str = "UPDATE inbox SET delivery_count = delivery_count + 1, \
     last_received_at = ?3 WHERE provider = ?1 AND dedup_key = ?2 RETURNING id, delivery_count";

/// A row asked of the provider's API that is stored already: not a delivery, nothing changes.
const EXISTING: &str =
    "SELECT id, delivery_count FROM inbox WHERE provider = ?1 AND dedup_key = ?2";

/// When an endpoint last stored a notification, new or repeated (metrics: a silent provider).
/// Written at most once a second per endpoint (see [`Activity`]).
const ACTIVITY: &str = "INSERT INTO endpoint_activity (endpoint, last_stored_at) VALUES (?1, ?2) \
     ON CONFLICT (endpoint) DO UPDATE SET last_stored_at = max(last_stored_at, excluded.last_stored_at)";

const INSERT_FAILURE: &str =
    "INSERT INTO verify_failures (at, endpoint, remote_addr, reason, detail, \
     body_len, body_prefix) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

const PRUNE_FAILURES: &str =
    "DELETE FROM verify_failures WHERE id <= (SELECT max(id) FROM verify_failures) - ?1";

const PROBE: &str = "INSERT INTO meta (key, value) VALUES ('ready_probe_at', ?1) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

type InsertWaiter = oneshot::Sender<Result<Stored, StoreError>>;
type ProbeWaiter = oneshot::Sender<Result<(), StoreError>>;

pub(crate) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    mut settings: Settings,
    mut checkpointer: Option<Checkpointer>,
    mut guard: crate::store::DeathGuard,
) {
    let mut inserts: Vec<(NewRow, InsertWaiter)> = Vec::with_capacity(settings.max_batch);
    let mut failures: Vec<FailureRecord> = Vec::new();
    let mut probes: Vec<ProbeWaiter> = Vec::new();
    let mut results: Vec<Stored> = Vec::with_capacity(settings.max_batch);
    let mut activity = Activity::default();
    let mut activity_now: Vec<(std::sync::Arc<str>, i64)> = Vec::new();
    let mut stopping = false;

    while !stopping {
        let Some(first) = rx.blocking_recv() else {
            // Every handle is gone: an orderly end, like Shutdown.
            stopping = true;
            break;
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Insert(row, done) => inserts.push((row, done)),
                Command::Failure(f) => failures.push(f),
                Command::Probe(done) => probes.push(done),
                Command::Shutdown => {
                    stopping = true;
                    break;
                }
            }
            taken += 1;
            if taken < settings.max_batch {
                next = rx.try_recv().ok();
            }
        }
        if inserts.is_empty() && failures.is_empty() && probes.is_empty() {
            continue;
        }

        results.clear();
        activity_now.clear();
        let started = Instant::now();
        let outcome = write_batch(
            &mut conn,
            &inserts,
            &failures,
            !probes.is_empty(),
            &settings,
            (&activity, &mut activity_now),
            &mut results,
        );
        match outcome {
            Ok(()) => {
                activity.wrote(&activity_now);
                if !inserts.is_empty() {
                    settings.commit_seconds.observe(started.elapsed().as_secs_f64());
                }
                settings.cache.wrote(&conn, inserts.len());
                for ((_, done), stored) in inserts.drain(..).zip(results.iter()) {
                    let _ = done.send(Ok(*stored));
                }
                for done in probes.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, rows = inserts.len(), "store batch failed; answering 503");
                let e: crate::store::BackendError = std::sync::Arc::new(e);
                for (_, done) in inserts.drain(..) {
                    let _ = done.send(Err(StoreError::Write(e.clone())));
                }
                for done in probes.drain(..) {
                    let _ = done.send(Err(StoreError::Write(e.clone())));
                }
            }
        }
        failures.clear();
        if let Some(c) = checkpointer.as_mut() {
            c.bound_wal(&conn);
        }
    }

    // Anything still queued after Shutdown is refused: its sender sees a closed store.
    crate::store::queue::refuse_queued(&mut rx);
    if let Some(c) = checkpointer {
        c.stop();
    }
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final WAL checkpoint failed (the data is safe in the WAL)");
    }
    tracing::debug!("store writer stopped");
    guard.finished(stopping);
}

fn write_batch(
    conn: &mut Connection,
    inserts: &[(NewRow, InsertWaiter)],
    failures: &[FailureRecord],
    probe: bool,
    settings: &Settings,
    (activity, activity_now): (&Activity, &mut Vec<(std::sync::Arc<str>, i64)>),
    results: &mut Vec<Stored>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(INSERT)?;
        for (row, _) in inserts {
            // Test-only and broken on purpose: every delivery looks new.
            #[cfg(feature = "test-no-dedup")]
            let dedup_key = format!(
                "{}#{}",
                row.dedup_key,
                results.len() as i64 + crate::time::now_ms() * 1000
            );
            #[cfg(not(feature = "test-no-dedup"))]
            let dedup_key = &row.dedup_key;
            let added = insert.execute(params![
                &*row.endpoint,
                row.provider.as_str(),
                dedup_key,
                row.event_type,
                row.received_at_ms,
                row.remote_addr,
                row.headers_json,
                &row.body.bytes[..],
                row.body.encoding,
                row.body_len as i64,
                row.source.as_str(),
            ])?;
            let stored = if added == 1 {
                Stored { id: tx.last_insert_rowid(), delivery_count: 1, added: true }
            } else if row.source == Source::Webhook {
                tx.prepare_cached(REDELIVERED)?.query_row(
                    params![row.provider.as_str(), row.dedup_key, row.received_at_ms],
                    |r| Ok(Stored { id: r.get(0)?, delivery_count: r.get(1)?, added: false }),
                )?
            } else {
                tx.prepare_cached(EXISTING)?
                    .query_row(params![row.provider.as_str(), row.dedup_key], |r| {
                        Ok(Stored { id: r.get(0)?, delivery_count: r.get(1)?, added: false })
                    })?
            };
            results.push(stored);
        }
        // At most one upsert per endpoint in the batch (a batch almost always has one or two),
        // and only once it is due.
        activity.due(inserts.iter().map(|(row, _)| row), activity_now);
        if !activity_now.is_empty() {
            let mut upsert = tx.prepare_cached(ACTIVITY)?;
            for (endpoint, at) in activity_now.iter() {
                upsert.execute(params![&**endpoint, at])?;
            }
        }
    }
    if !failures.is_empty() {
        // In a savepoint: forensics must never fail the acknowledgements in this batch.
        if let Err(e) = record_failures(&tx, failures, settings.failures_kept) {
            tracing::warn!(error = %e, count = failures.len(), "verification failures not recorded");
        }
    }
    if probe {
        tx.prepare_cached(PROBE)?.execute([crate::time::now_ms().to_string()])?;
    }
    if !inserts.is_empty() {
        crate::failpoint::failpoint("ingest_before_commit");
    }
    tx.commit()
}

fn record_failures(
    tx: &rusqlite::Transaction<'_>,
    failures: &[FailureRecord],
    keep: u64,
) -> rusqlite::Result<()> {
    tx.execute_batch("SAVEPOINT failures")?;
    let written = (|| {
        let mut insert = tx.prepare_cached(INSERT_FAILURE)?;
        for f in failures {
            insert.execute(params![
                f.at_ms,
                &*f.endpoint,
                f.remote_addr,
                f.reason,
                f.detail,
                f.body_len as i64,
                &f.body_prefix[..],
            ])?;
        }
        tx.prepare_cached(PRUNE_FAILURES)?.execute([keep as i64])?;
        Ok(())
    })();
    match written {
        Ok(()) => tx.execute_batch("RELEASE failures"),
        Err(e) => {
            tx.execute_batch("ROLLBACK TO failures; RELEASE failures")?;
            Err(e)
        }
    }
}
