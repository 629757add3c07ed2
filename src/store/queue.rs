//! The queue from the request handlers to a backend's ingest writer, the same for every
//! backend: what a handler asks for, with backpressure, and what the writer answers to what is
//! still queued when it stops; and when a writer records its endpoints' activity.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{FailureRecord, NewRow, StoreError, Stored};
use crate::domain::Source;

/// Requests queued for the writer beyond this wait (backpressure on the handlers).
const QUEUE_DEPTH: usize = 8192;

/// A request to the writer.
pub(crate) enum Command {
    /// Store a row; answered once it is durable.
    Insert(NewRow, oneshot::Sender<Result<Stored, StoreError>>),
    /// Record a verification failure (best effort).
    Failure(FailureRecord),
    /// Commit a write now; answered once it did.
    Probe(oneshot::Sender<Result<(), StoreError>>),
    /// Commit what is queued and stop.
    Shutdown,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Insert(..) => "Insert",
            Command::Failure(_) => "Failure",
            Command::Probe(_) => "Probe",
            Command::Shutdown => "Shutdown",
        })
    }
}

/// The handlers' end of the queue.
#[derive(Debug)]
pub(crate) struct Queue(mpsc::Sender<Command>);

impl Queue {
    /// A queue, and the writer's end of it.
    pub(crate) fn new() -> (Queue, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        (Queue(tx), rx)
    }

    /// Stores a row; resolves once it is durable.
    pub(crate) async fn insert(&self, row: NewRow) -> Result<Stored, StoreError> {
        let (done, wait) = oneshot::channel();
        self.0.send(Command::Insert(row, done)).await.map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Records a failure, unless the queue is half full: a flood of bad requests never crowds
    /// out good ones.
    pub(crate) fn record_failure(&self, failure: FailureRecord) {
        if self.0.capacity() < QUEUE_DEPTH / 2
            || self.0.try_send(Command::Failure(failure)).is_err()
        {
            tracing::debug!("verification failure not recorded: writer queue busy");
        }
    }

    /// Resolves once the writer committed a write.
    pub(crate) async fn probe(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.0.send(Command::Probe(done)).await.map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Asks the writer to commit what is queued and stop.
    pub(crate) async fn shutdown(&self) {
        let _ = self.0.send(Command::Shutdown).await;
    }
}

/// The writer's last step: closes the queue and answers what is still in it `Closed`.
pub(crate) fn refuse_queued(rx: &mut mpsc::Receiver<Command>) {
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            Command::Insert(_, done) => drop(done.send(Err(StoreError::Closed))),
            Command::Probe(done) => drop(done.send(Err(StoreError::Closed))),
            Command::Failure(_) | Command::Shutdown => {}
        }
    }
}

/// An endpoint's last stored time (`endpoint_activity`, for the metric of a silent provider) is
/// written when it has moved on by this much since this writer last wrote it: a silent provider
/// is measured in minutes, and writing it in every batch costs a page (SQLite) or a statement
/// (PostgreSQL) per batch.
const ACTIVITY_EVERY_MS: i64 = 1_000;

/// What a writer last wrote to `endpoint_activity`, per endpoint.
#[derive(Debug, Default)]
pub(crate) struct Activity(Vec<(Arc<str>, i64)>);

impl Activity {
    /// Fills `due` with the endpoints whose last stored time a batch of `rows` writes: each
    /// endpoint once, with its latest time, if due. Only what the provider posted counts, new
    /// or repeated: a backfill must not hide a silent webhook.
    pub(crate) fn due<'a>(
        &self,
        rows: impl Iterator<Item = &'a NewRow>,
        due: &mut Vec<(Arc<str>, i64)>,
    ) {
        due.clear();
        for row in rows.filter(|row| row.source == Source::Webhook) {
            match due.iter_mut().find(|(e, _)| *e == row.endpoint) {
                Some((_, at)) => *at = (*at).max(row.received_at_ms),
                None => due.push((row.endpoint.clone(), row.received_at_ms)),
            }
        }
        due.retain(|(endpoint, at)| match self.0.iter().find(|(e, _)| e == endpoint) {
            Some((_, written)) => *at >= written + ACTIVITY_EVERY_MS,
            None => true,
        });
    }

    /// Records what a committed batch wrote.
    pub(crate) fn wrote(&mut self, written: &[(Arc<str>, i64)]) {
        for (endpoint, at) in written {
            match self.0.iter_mut().find(|(e, _)| e == endpoint) {
                Some((_, last)) => *last = *at,
                None => self.0.push((endpoint.clone(), *at)),
            }
        }
    }
}
