//! Opening the store: pragmas, then the versioned migrations of `schema.sql`.
//!
//! ## Compatibility
//! The schema version lives in `PRAGMA user_version`. Migrations are append-only and each runs
//! in one transaction. A database whose version is newer than this build knows is refused
//! rather than written to: an older binary must not damage a newer schema.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// The schema file, split into migrations at `-- migration: N` lines.
const SCHEMA: &str = include_str!("../../../schema.sql");

/// `(version, sql)` for every migration in `schema.sql`, in order.
pub fn migrations() -> Vec<(u32, &'static str)> {
    let mut out = Vec::new();
    let mut rest = SCHEMA;
    // A marker counts only at the start of a line.
    const MARK: &str = "\n-- migration: ";
    while let Some(start) = rest.find(MARK) {
        let after = &rest[start + MARK.len()..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let version: u32 =
            after[..line_end].trim().parse().expect("schema.sql: bad migration number");
        let body = &after[line_end..];
        let end = body.find(MARK).unwrap_or(body.len());
        out.push((version, &body[..end]));
        rest = &body[end..];
    }
    out
}

/// The newest schema version this build knows.
pub fn latest_version() -> u32 {
    migrations().last().map_or(0, |m| m.0)
}

/// Opens (creating if needed) the store for writing and brings its schema up to date.
pub fn open_writer(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| open_error(path, e))?;
    // Never adopt someone else's database (the shop's, say): touch nothing in a file that
    // has tables but no reconciled schema version.
    let foreign = user_version(&conn).and_then(|v| {
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        Ok(v == 0 && tables > 0)
    });
    if foreign.map_err(|e| open_error(path, e))? {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "has tables but is not a reconciled store; refusing to touch it".into(),
        });
    }
    // WAL lets the CLI read while the daemon writes; FULL makes each commit durable against
    // power loss, which is what a 2xx to the provider promises.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: format!("cannot enable WAL (journal_mode is {mode})"),
        });
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(|e| open_error(path, e))?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Opens an existing store read-only, for the CLI.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "no such store (has the daemon run with this configuration?)".into(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| open_error(path, e))?;
    let version = user_version(&conn).map_err(|e| open_error(path, e))?;
    if version == 0 {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "not a reconciled store".into(),
        });
    }
    check_not_newer(path, version)?;
    Ok(conn)
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Open { path: path.to_owned(), message: e.to_string() }
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn check_not_newer(path: &Path, version: u32) -> Result<(), StoreError> {
    let latest = latest_version();
    if version > latest {
        return Err(StoreError::TooNew { path: path.to_owned(), found: version, known: latest });
    }
    Ok(())
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let current = user_version(conn).map_err(|e| open_error(path, e))?;
    check_not_newer(path, current)?;
    for (version, sql) in migrations().into_iter().filter(|(v, _)| *v > current) {
        let step = || -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            // Another process may have migrated while we waited for the lock.
            if user_version(conn)? >= version {
                return conn.execute_batch("COMMIT");
            }
            let applied = conn
                .execute_batch(sql)
                .and_then(|()| conn.execute_batch(&format!("PRAGMA user_version = {version}")));
            match applied {
                Ok(()) => conn.execute_batch("COMMIT"),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        };
        step().map_err(|e| StoreError::Open {
            path: path.to_owned(),
            message: format!("migration {version} failed: {e}"),
        })?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(())
}

/// The opcodes (and their first operand) SQLite compiles `sql` to, its parameters bound to NULL:
/// for tests that check how a statement runs.
#[cfg(test)]
pub(crate) fn explain(conn: &Connection, sql: &str) -> Vec<(String, i64)> {
    let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    stmt.query_map(rusqlite::params_from_iter(nulls), |r| Ok((r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        let versions: Vec<u32> = migrations().iter().map(|m| m.0).collect();
        let expected: Vec<u32> = (1..=versions.len() as u32).collect();
        assert_eq!(versions, expected);
        assert!(migrations()
            .iter()
            .all(|(_, sql)| sql.contains("CREATE ") || sql.contains("ALTER ")));
    }

    #[test]
    fn fresh_store_gets_latest_version_and_newer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(user_version(&conn).unwrap(), latest_version());
        let mode: String = conn
            .query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(mode, "2", "synchronous must be FULL");
        conn.execute_batch(&format!("PRAGMA user_version = {}", latest_version() + 1)).unwrap();
        drop(conn);
        let err = open_writer(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        assert!(matches!(open_reader(&path).unwrap_err(), StoreError::TooNew { .. }));
    }

    #[test]
    fn a_foreign_database_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.db");
        let shop = Connection::open(&path).unwrap();
        shop.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)").unwrap();
        drop(shop);
        let err = open_writer(&path, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("not a reconciled store"), "{err}");
        let shop = Connection::open(&path).unwrap();
        let mode: String = shop.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "delete", "journal mode unchanged");
        let n: i64 =
            shop.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "no tables added");
    }

    /// The statements run for every stored or decided notification: SQLite builds a temporary
    /// b-tree (`OpenEphemeral`) for an IN list of three or more constants, in a CHECK, a
    /// partial index's WHERE or the statement itself, on each execution (migration 9).
    #[test]
    fn per_notification_writes_build_no_temporary_btree() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("s.db"), Duration::from_secs(1)).unwrap();
        for sql in [
            "INSERT INTO inbox (endpoint, provider, dedup_key, event_type, received_at, \
             last_received_at, remote_addr, headers, body, source) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (provider, dedup_key) DO NOTHING",
            "UPDATE inbox SET status = ?2, payment_key = ?3, processed_at = ?4 WHERE id = ?1",
            "UPDATE inbox SET status = 'parked', next_attempt_at = ?2 WHERE id = ?1",
            "INSERT INTO outbox (kind, provider, reason, idempotency_key, inbox_id, event_id, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (idempotency_key) DO NOTHING",
            "INSERT INTO payments (provider, payment_id, status, updated_at, last_inbox_id) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (provider, payment_id) DO UPDATE SET \
             status = excluded.status",
        ] {
            let ops = explain(&conn, sql);
            assert!(ops.iter().any(|(op, _)| op.ends_with("Insert")), "not a write: {sql}");
            assert!(!ops.iter().any(|(op, _)| op == "OpenEphemeral"), "temporary b-tree in: {sql}");
        }
    }

    /// A store written by the previous version keeps its rows, its checks and its index
    /// contents through migration 9.
    #[test]
    fn migration_9_keeps_rows_checks_and_the_due_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        for (version, sql) in migrations().into_iter().filter(|(v, _)| *v <= 8) {
            old.execute_batch(&format!("BEGIN; {sql}; PRAGMA user_version = {version}; COMMIT;"))
                .unwrap();
        }
        let statuses = ["pending", "processing", "done", "parked", "ignored", "rejected", "dead"];
        for (i, status) in statuses.iter().cycle().take(70).enumerate() {
            old.execute(
                "INSERT INTO inbox (endpoint, provider, dedup_key, received_at, last_received_at, \
                 remote_addr, headers, body, status) VALUES ('s', 'stripe', ?1, 1, 1, '-', '{}', x'00', ?2)",
                rusqlite::params![format!("evt_{i}"), status],
            )
            .unwrap();
        }
        drop(old);

        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(user_version(&conn).unwrap(), latest_version());
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        let ids = |sql: &str| -> Vec<i64> {
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        let due = ids("SELECT id FROM inbox INDEXED BY inbox_due \
             WHERE status = 'pending' OR status = 'parked' OR status = 'processing' ORDER BY id");
        let unfinished = ids("SELECT id FROM inbox NOT INDEXED \
             WHERE status IN ('pending', 'parked', 'processing') ORDER BY id");
        assert_eq!((due.len(), &due), (30, &unfinished));
        let sql: Vec<String> = conn
            .prepare("SELECT sql FROM sqlite_schema WHERE name IN ('inbox', 'payments', 'outbox', 'inbox_due')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(sql.len(), 4);
        assert!(sql.iter().all(|s| !s.contains(" IN (")), "{sql:?}");
        for bad in [
            "UPDATE inbox SET status = 'finished' WHERE id = 1",
            "INSERT INTO payments (provider, payment_id, status, updated_at, last_inbox_id) \
             VALUES ('stripe', 'pi_1', 'paid', 1, 1)",
            "INSERT INTO outbox (kind, provider, reason, idempotency_key, inbox_id, event_id, \
             created_at) VALUES ('ship', 'stripe', '-', 'k', 1, 'evt_0', 1)",
        ] {
            let err = conn.execute(bad, []).unwrap_err();
            assert!(err.to_string().contains("CHECK constraint failed"), "{bad}: {err}");
        }
        conn.execute("UPDATE inbox SET status = 'done' WHERE id = 1", []).unwrap();
    }

    #[test]
    fn reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(open_writer(&path, Duration::from_secs(1)).unwrap());
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(user_version(&conn).unwrap(), latest_version());
    }
}
