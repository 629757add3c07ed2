//! The WAL's upkeep beside the writer: a checkpoint thread that keeps the WAL bounded without
//! making any commit pay for it, and the writer's page-cache size.

use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The writer's page cache: 8 MiB while the database is under 1 GiB, 32 MiB after.
///
/// When SQLite's b-tree balancing reorders the pages of a split, it swaps their numbers
/// through a spare one: the number of the lock-byte page at 1 GiB. The page cache keeps that as
/// its highest key, and while the database is smaller than 1 GiB every commit after such a
/// split walks the whole cache for pages past the end of the file (`pcache1TruncateUnsafe`):
/// with a 32 MiB cache that walk was 9% of the daemon's CPU under the ingest bench. Past
/// 1 GiB nothing is walked, and the larger cache keeps more of the random-key dedup index in
/// memory.
pub(crate) struct CacheSize {
    /// The page count from which the large cache applies; None once it does.
    grow_at: Option<i64>,
    /// Rows written since the page count was last read.
    rows: usize,
}

impl CacheSize {
    const SMALL: &str = "PRAGMA cache_size = -8192";
    const LARGE: &str = "PRAGMA cache_size = -32768";
    /// How often (in rows written) the page count is read while the cache is small.
    const CHECK_EVERY: usize = 10_000;

    pub(crate) fn set(conn: &Connection) -> rusqlite::Result<CacheSize> {
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let mut cache = CacheSize { grow_at: Some((1 << 30) / page_size.max(512) + 1), rows: 0 };
        conn.execute_batch(Self::SMALL)?;
        cache.check(conn)?;
        Ok(cache)
    }

    /// Switches to the large cache once the database has passed 1 GiB.
    fn check(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let Some(grow_at) = self.grow_at else { return Ok(()) };
        self.rows = 0;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        if pages >= grow_at {
            conn.execute_batch(Self::LARGE)?;
            self.grow_at = None;
        }
        Ok(())
    }

    pub(crate) fn wrote(&mut self, conn: &Connection, rows: usize) {
        if self.grow_at.is_none() {
            return;
        }
        self.rows += rows;
        if self.rows >= Self::CHECK_EVERY {
            if let Err(e) = self.check(conn) {
                tracing::debug!(error = %e, "page count not read; the cache stays as it is");
            }
        }
    }
}

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// How often once the WAL holds more than half its limit, so that what the writer has left to
/// copy when it restarts the WAL is short. Every pass ends with an fsync of the database file,
/// which slows the WAL's fsyncs meanwhile: at 20 ms p99 at 64 connections was 15 ms against
/// 10 ms at 80 ms (4 pairs), for a restart pause of about 0.4 s against 0.6 s.
const CHECKPOINT_NEAR_LIMIT: Duration = Duration::from_millis(80);
/// After this long without a write, the checkpointer gives the WAL file's disk space back.
pub(crate) const WAL_IDLE: Duration = Duration::from_secs(5);
/// A WAL file up to this size (or half the limit, if smaller) is kept when idle: SQLite reuses it
/// from its start.
const WAL_KEPT_WHEN_IDLE: u64 = 64 << 20;

/// A thread of its own that checkpoints the WAL, so that no commit (and no acknowledgement
/// waiting on it) ever pays for copying the WAL into the database: the writer's connection has
/// automatic checkpoints turned off. PASSIVE checkpoints never block the writer.
///
/// Under sustained writes a background checkpoint never catches up with the writer, and
/// SQLite starts the WAL again from its beginning only when a write transaction begins with
/// the WAL fully copied, so the WAL would grow without bound (about 1 GB in 8 s of a burst).
/// So once the WAL file is past `store.wal_max_mb`, the writer, between two batches, copies
/// what the background passes have not yet copied, and its next transaction restarts the WAL.
/// That copy holds new commits while it runs; the background passes come every 80 ms once the
/// WAL is past half its limit ([`CHECKPOINT_NEAR_LIMIT`]), so there is little left to copy.
///
/// The WAL file is cut back only to the limit when the WAL restarts (`journal_size_limit`), not
/// further: SQLite writes it again from its start, over pages the kernel already has, which is
/// cheaper than growing a file (new page-cache pages and new blocks), and cutting a 1 GiB file
/// to 64 MiB inside a commit stalled every acknowledgement for a few hundred milliseconds. The
/// file's space is given back instead once nothing has been written for [`WAL_IDLE`]: a
/// TRUNCATE checkpoint on this thread.
pub(crate) struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    wal_path: std::path::PathBuf,
    /// The WAL file's size past which the writer restarts it.
    restart_bytes: u64,
    /// No restart is tried before this (a reader holding an old snapshot can defer it).
    next_try: Instant,
    /// The writer copied the whole WAL after its last batch, so that batch restarted the WAL.
    copied: bool,
}

/// How long the writer waits before trying a WAL restart again.
const RESTART_RETRY: Duration = Duration::from_millis(100);

impl Checkpointer {
    /// Starts the thread. `frame_bytes` is the page size plus the 24-byte frame header.
    pub(crate) fn start(
        conn: Connection,
        wal_path: std::path::PathBuf,
        restart_bytes: u64,
        frame_bytes: u64,
    ) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let restart_frames = i64::try_from(restart_bytes / frame_bytes.max(1)).unwrap_or(i64::MAX);
        let wal = wal_path.clone();
        let kept_when_idle = WAL_KEPT_WHEN_IDLE.min(restart_bytes / 2);
        let thread = std::thread::Builder::new().name("store-checkpoint".into()).spawn(move || {
            let mut last_warning: Option<Instant> = None;
            let mut every = CHECKPOINT_EVERY;
            // The frame count of the previous pass, and since when nothing has been written.
            let mut previous = -1;
            let mut quiet_since = Instant::now();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                let (log, copied) = match done {
                    Ok(counts) => counts,
                    Err(e) => {
                        // A full disk, say: the WAL keeps the data, and the next try may succeed.
                        if last_warning.is_none_or(|t| t.elapsed().as_secs() >= 60) {
                            tracing::warn!(error = %e, "WAL checkpoint failed (the data is safe in the WAL)");
                            last_warning = Some(Instant::now());
                        }
                        continue;
                    }
                };
                every =
                    if log > restart_frames / 2 { CHECKPOINT_NEAR_LIMIT } else { CHECKPOINT_EVERY };
                if log != previous || log != copied {
                    previous = log;
                    quiet_since = Instant::now();
                } else if quiet_since.elapsed() >= WAL_IDLE
                    && std::fs::metadata(&wal).is_ok_and(|m| m.len() > kept_when_idle)
                {
                    // Waits (busy timeout) for a batch in progress; the next one waits for this.
                    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
                        Ok(0) => {
                            tracing::debug!("WAL file truncated after {} s without writes", WAL_IDLE.as_secs());
                            previous = 0;
                        }
                        Ok(_) => tracing::debug!("WAL truncation deferred: a reader or writer is busy"),
                        Err(e) => tracing::debug!(error = %e, "WAL truncation deferred"),
                    }
                    quiet_since = Instant::now();
                }
            }
        })?;
        Ok(Checkpointer {
            stop,
            thread,
            wal_path,
            restart_bytes,
            next_try: Instant::now(),
            copied: false,
        })
    }

    /// Called by the writer between batches: if the WAL file is too long, copies what is left
    /// of it, so that the writer's next transaction restarts it. The file is cut back to the
    /// limit (`journal_size_limit`) when the WAL restarts, so it grows past the limit again
    /// only once the restarted WAL has filled it.
    pub(crate) fn bound_wal(&mut self, conn: &Connection) {
        let too_long =
            std::fs::metadata(&self.wal_path).is_ok_and(|m| m.len() > self.restart_bytes);
        let copied = std::mem::take(&mut self.copied);
        let now = Instant::now();
        if !too_long || now < self.next_try {
            return;
        }
        if copied {
            // Copied, yet the last batch did not restart the WAL: a reader still uses it.
            self.next_try = now + RESTART_RETRY;
            return;
        }
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match done {
            Ok((0, frames, done)) if frames == done => {
                self.copied = true;
                let took_ms = now.elapsed().as_millis() as u64;
                tracing::debug!(frames, took_ms, "WAL copied for a restart");
            }
            // The background pass holds the checkpoint lock: try again after the next batch.
            Ok((1, _, _)) => {}
            Ok(_) => {
                tracing::debug!("WAL restart deferred: a reader uses the WAL");
                self.next_try = now + RESTART_RETRY;
            }
            Err(e) => {
                tracing::debug!(error = %e, "WAL restart deferred");
                self.next_try = now + RESTART_RETRY;
            }
        }
    }

    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_kib(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA cache_size", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn the_page_cache_grows_once_the_database_passes_its_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        let mut cache = CacheSize::set(&conn).unwrap();
        assert_eq!(cache_kib(&conn), -8192, "a new database starts with the small cache");
        assert!(cache.grow_at.is_some());
        // The real threshold is 1 GiB; a small one shows the switch.
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (zeroblob(20000));").unwrap();
        cache.grow_at = Some(4);
        cache.wrote(&conn, CacheSize::CHECK_EVERY - 1);
        assert_eq!(cache_kib(&conn), -8192, "the page count is read only every CHECK_EVERY rows");
        cache.wrote(&conn, 1);
        assert_eq!(cache_kib(&conn), -32768);
        assert!(cache.grow_at.is_none());
    }
}
