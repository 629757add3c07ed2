//! The ingest writer on PostgreSQL: one task per daemon with a connection of its own. It takes
//! whatever requests have queued (up to `max_batch`), stores them in one transaction, commits,
//! and only then answers each waiting handler.
//!
//! The transaction first takes the ingest lock (an advisory lock shared by every daemon of
//! the store): one ingest transaction commits at a time, so inbox ids grow in the order rows
//! become visible, and "arrival order" means the same on every daemon. A repeat delivery of a
//! stored row is counted in `inbox_redeliveries`, never by updating the row itself, so it never
//! waits for a worker that holds the row locked while deciding it.

use std::collections::HashMap;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};

use super::{locks, schema};
use crate::domain::Source;
use crate::secret::DbUrl;
use crate::store::queue::{Activity, Command};
use crate::store::{DeathGuard, FailureRecord, NewRow, StoreError, Stored};

/// What the writer needs to know.
pub(super) struct Settings {
    pub url: DbUrl,
    pub tls_ca: Option<crate::db_tls::CaPem>,
    pub max_batch: usize,
    pub failures_kept: u64,
    pub commit_seconds: Histogram,
}

type InsertWaiter = oneshot::Sender<Result<Stored, StoreError>>;

/// The writer's loop; ends on `Shutdown` or when every sender is gone.
pub(super) async fn run(
    mut client: Option<tokio_postgres::Client>,
    mut rx: mpsc::Receiver<Command>,
    settings: Settings,
    mut guard: DeathGuard,
) {
    let mut stopping = false;
    let mut activity = Activity::default();
    let mut activity_now = Vec::new();
    while !stopping {
        let Some(first) = rx.recv().await else { break };
        let mut inserts: Vec<(NewRow, InsertWaiter)> = Vec::new();
        let mut failures: Vec<FailureRecord> = Vec::new();
        let mut probes: Vec<oneshot::Sender<Result<(), StoreError>>> = Vec::new();
        let mut next = Some(first);
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
            if inserts.len() < settings.max_batch {
                next = rx.try_recv().ok();
            }
        }
        // Drop waiters whose handler gave up (timed out) before spending work on them.
        inserts.retain(|(_, done)| !done.is_closed());
        if inserts.is_empty() && failures.is_empty() && probes.is_empty() {
            continue;
        }
        if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            client = match schema::connect(&settings.url, settings.tls_ca.as_deref()).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "store unreachable; notifications are refused with 503 until it is back");
                    answer_error(inserts, probes, &|| {
                        StoreError::Write(std::sync::Arc::new(ConnectError(e.to_string())))
                    });
                    continue;
                }
            };
        }
        let Some(conn) = client.as_mut() else { continue };
        let started = Instant::now();
        activity.due(inserts.iter().map(|(row, _)| row), &mut activity_now);
        let probe = !probes.is_empty();
        let result = write_batch(conn, &inserts, &failures, probe, &activity_now, &settings).await;
        match result {
            Ok(stored) => {
                activity.wrote(&activity_now);
                settings.commit_seconds.observe(started.elapsed().as_secs_f64());
                for ((_, done), stored) in inserts.into_iter().zip(stored) {
                    let _ = done.send(Ok(stored));
                }
                for done in probes {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed; nothing of the batch was stored");
                let shared = std::sync::Arc::new(e);
                answer_error(inserts, probes, &|| StoreError::Write(shared.clone()));
            }
        }
    }
    crate::store::queue::refuse_queued(&mut rx);
    tracing::debug!("store writer stopped");
    guard.finished(true);
}

/// A connection failure, as the waiters' error source (already free of the password).
#[derive(Debug)]
struct ConnectError(String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

fn answer_error(
    inserts: Vec<(NewRow, InsertWaiter)>,
    probes: Vec<oneshot::Sender<Result<(), StoreError>>>,
    error: &dyn Fn() -> StoreError,
) {
    for (_, done) in inserts {
        let _ = done.send(Err(error()));
    }
    for done in probes {
        let _ = done.send(Err(error()));
    }
}

const INSERT: &str = "INSERT INTO inbox (endpoint, provider, dedup_key, event_type, received_at, \
     last_received_at, remote_addr, headers, body, body_encoding, body_len, payment_key, source) \
     SELECT endpoint, provider, dedup_key, event_type, received_at, received_at, remote_addr, \
     headers, body, body_encoding, body_len, payment_key, source \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], \
          $7::text[], $8::bytea[], $9::text[], $10::int[], $11::text[], $12::text[]) WITH ORDINALITY \
       AS t(endpoint, provider, dedup_key, event_type, received_at, remote_addr, headers, body, \
            body_encoding, body_len, payment_key, source, n) \
     ORDER BY n \
     ON CONFLICT (provider, dedup_key) DO NOTHING \
     RETURNING id, provider, dedup_key";

const EXISTING: &str = "SELECT i.id, i.provider, i.dedup_key FROM unnest($1::text[], $2::text[]) \
     AS t(provider, dedup_key) JOIN inbox i ON i.provider = t.provider AND i.dedup_key = t.dedup_key";

const REDELIVERED: &str = "INSERT INTO inbox_redeliveries (inbox_id, count, last_received_at) \
     SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[]) \
     ON CONFLICT (inbox_id) DO UPDATE SET count = inbox_redeliveries.count + excluded.count, \
       last_received_at = greatest(inbox_redeliveries.last_received_at, excluded.last_received_at) \
     RETURNING inbox_id, count";

const ACTIVITY: &str = "INSERT INTO endpoint_activity (endpoint, last_stored_at) \
     SELECT * FROM unnest($1::text[], $2::bigint[]) \
     ON CONFLICT (endpoint) DO UPDATE SET \
       last_stored_at = greatest(endpoint_activity.last_stored_at, excluded.last_stored_at)";

const FAILURES: &str = "INSERT INTO verify_failures (at, endpoint, remote_addr, reason, detail, \
     body_len, body_prefix) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
     $5::text[], $6::int[], $7::bytea[])";

/// Stores a batch in one transaction; the result per insert, in order.
async fn write_batch(
    client: &mut tokio_postgres::Client,
    inserts: &[(NewRow, InsertWaiter)],
    failures: &[FailureRecord],
    probe: bool,
    activity: &[(std::sync::Arc<str>, i64)],
    settings: &Settings,
) -> Result<Vec<Stored>, tokio_postgres::Error> {
    // One proposed row per (provider, dedup key): a statement may not touch a row twice.
    let mut first_of: HashMap<(&str, String), usize> = HashMap::new();
    let mut proposed: Vec<usize> = Vec::new();
    // Per insert: the index of its proposed row, and how many of its copies so far (this one
    // included) were posted by the provider. Only those count as deliveries: a row asked of
    // the provider's API (a backfill, an inquiry) is stored once and never counted again.
    let mut slot: Vec<(usize, i32)> = Vec::with_capacity(inserts.len());
    let mut posted: Vec<i32> = Vec::new();
    for (i, (row, _)) in inserts.iter().enumerate() {
        let webhook = i32::from(row.source == Source::Webhook);
        // Test-only and broken on purpose: every delivery looks new.
        #[cfg(feature = "test-no-dedup")]
        let key = format!("{}#{}#{i}", row.dedup_key, crate::time::now_ms());
        #[cfg(not(feature = "test-no-dedup"))]
        let key = row.dedup_key.clone();
        match first_of.get(&(row.provider.as_str(), key.clone())) {
            Some(&p) => {
                posted[p] += webhook;
                slot.push((p, posted[p]));
            }
            None => {
                first_of.insert((row.provider.as_str(), key), proposed.len());
                slot.push((proposed.len(), webhook));
                proposed.push(i);
                posted.push(webhook);
            }
        }
    }
    let keys: Vec<String> = {
        let mut k = vec![String::new(); proposed.len()];
        for ((_, key), &p) in &first_of {
            k[p].clone_from(key);
        }
        k
    };

    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&locks::CLASS, &locks::INGEST]).await?;
    let mut ids: Vec<Option<i64>> = vec![None; proposed.len()];
    let mut new_row = vec![false; proposed.len()];
    if !proposed.is_empty() {
        let rows: Vec<&NewRow> = proposed.iter().map(|&i| &inserts[i].0).collect();
        let endpoint: Vec<&str> = rows.iter().map(|r| &*r.endpoint).collect();
        let provider: Vec<&str> = rows.iter().map(|r| r.provider.as_str()).collect();
        let event_type: Vec<Option<&str>> = rows.iter().map(|r| r.event_type.as_deref()).collect();
        let received: Vec<i64> = rows.iter().map(|r| r.received_at_ms).collect();
        let remote: Vec<&str> = rows.iter().map(|r| r.remote_addr.as_str()).collect();
        let headers: Vec<&str> = rows.iter().map(|r| r.headers_json.as_str()).collect();
        let body: Vec<&[u8]> = rows.iter().map(|r| &r.body.bytes[..]).collect();
        let encoding: Vec<Option<&str>> = rows.iter().map(|r| r.body.encoding).collect();
        let body_len: Vec<i32> =
            rows.iter().map(|r| i32::try_from(r.body_len).unwrap_or(i32::MAX)).collect();
        let payment_key: Vec<Option<&str>> =
            rows.iter().map(|r| r.payment_key.as_deref()).collect();
        let source: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
        let by_key: HashMap<(String, String), usize> = provider
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(p, (prov, key))| (((*prov).to_owned(), key.clone()), p))
            .collect();
        let inserted = tx
            .query(
                INSERT,
                &[
                    &endpoint,
                    &provider,
                    &keys,
                    &event_type,
                    &received,
                    &remote,
                    &headers,
                    &body,
                    &encoding,
                    &body_len,
                    &payment_key,
                    &source,
                ],
            )
            .await?;
        for r in inserted {
            let key: (String, String) = (r.get(1), r.get(2));
            if let Some(&p) = by_key.get(&key) {
                ids[p] = Some(r.get(0));
                new_row[p] = true;
            }
        }
        let old: Vec<usize> = (0..proposed.len()).filter(|&p| !new_row[p]).collect();
        if !old.is_empty() {
            let prov: Vec<&str> = old.iter().map(|&p| provider[p]).collect();
            let key: Vec<&str> = old.iter().map(|&p| keys[p].as_str()).collect();
            for r in tx.query(EXISTING, &[&prov, &key]).await? {
                let key: (String, String) = (r.get(1), r.get(2));
                if let Some(&p) = by_key.get(&key) {
                    ids[p] = Some(r.get(0));
                }
            }
        }
        // Repeats: every posted copy of an old row, and the posted copies after the first of
        // a new one.
        let made_by_post = |p: usize| i32::from(new_row[p] && rows[p].source == Source::Webhook);
        let mut red_ids = Vec::new();
        let mut red_counts = Vec::new();
        let mut red_at = Vec::new();
        for p in 0..proposed.len() {
            let extra = posted[p] - made_by_post(p);
            if let (Some(id), true) = (ids[p], extra > 0) {
                red_ids.push(id);
                red_counts.push(extra);
                red_at.push(received[p]);
            }
        }
        let mut totals: HashMap<i64, i32> = HashMap::new();
        if !red_ids.is_empty() {
            for r in tx.query(REDELIVERED, &[&red_ids, &red_counts, &red_at]).await? {
                totals.insert(r.get(0), r.get(1));
            }
        }
        // The endpoints' last stored times that are due (see Activity), each once.
        if !activity.is_empty() {
            let (names, times): (Vec<&str>, Vec<i64>) =
                activity.iter().map(|(e, at)| (&**e, *at)).unzip();
            tx.execute(ACTIVITY, &[&names, &times]).await?;
        }
        // New rows for the workers, on every daemon.
        if new_row.iter().any(|&n| n) {
            tx.execute("SELECT pg_notify($1, '')", &[&super::INBOX_CHANNEL]).await?;
        }
        write_failures(&tx, failures, settings.failures_kept).await?;
        if probe {
            probe_write(&tx).await?;
        }
        crate::failpoint::failpoint("ingest_before_commit");
        tx.commit().await?;
        let mut out = Vec::with_capacity(inserts.len());
        for (n, (p, upto)) in slot.into_iter().enumerate() {
            let id = ids[p].unwrap_or_default();
            let counted_upto = upto - made_by_post(p);
            let count = if new_row[p] {
                1 + counted_upto
            } else {
                // The repeats of this batch are the last ones of the total.
                let batch = posted[p];
                1 + totals.get(&id).copied().unwrap_or(batch) - batch + counted_upto
            };
            let added = new_row[p] && proposed[p] == n;
            out.push(Stored { id, delivery_count: i64::from(count), added });
        }
        return Ok(out);
    }
    write_failures(&tx, failures, settings.failures_kept).await?;
    if probe {
        probe_write(&tx).await?;
    }
    tx.commit().await?;
    Ok(Vec::new())
}

async fn write_failures(
    tx: &tokio_postgres::Transaction<'_>,
    failures: &[FailureRecord],
    kept: u64,
) -> Result<(), tokio_postgres::Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let at: Vec<i64> = failures.iter().map(|f| f.at_ms).collect();
    let endpoint: Vec<&str> = failures.iter().map(|f| &*f.endpoint).collect();
    let remote: Vec<&str> = failures.iter().map(|f| f.remote_addr.as_str()).collect();
    let reason: Vec<&str> = failures.iter().map(|f| f.reason).collect();
    let detail: Vec<&str> = failures.iter().map(|f| f.detail.as_str()).collect();
    let len: Vec<i32> =
        failures.iter().map(|f| i32::try_from(f.body_len).unwrap_or(i32::MAX)).collect();
    let prefix: Vec<&[u8]> = failures.iter().map(|f| &f.body_prefix[..]).collect();
    tx.execute(FAILURES, &[&at, &endpoint, &remote, &reason, &detail, &len, &prefix]).await?;
    let kept = i64::try_from(kept).unwrap_or(i64::MAX);
    tx.execute(
        "DELETE FROM verify_failures WHERE id <= (SELECT max(id) FROM verify_failures) - $1",
        &[&kept],
    )
    .await?;
    Ok(())
}

async fn probe_write(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('ready_probe_at', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&crate::time::now_ms().to_string()],
    )
    .await?;
    Ok(())
}
