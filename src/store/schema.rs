//! Opening the store: pragmas, then the versioned migrations of `schema.sql`.
//!
//! ## Compatibility
//! The schema version lives in `PRAGMA user_version`. Migrations are append-only and each runs
//! in one transaction. A database whose version is newer than this build knows is refused
//! rather than written to: an older binary must not damage a newer schema.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// The schema file, split into migrations at `-- migration: N` lines.
const SCHEMA: &str = include_str!("../../schema.sql");

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
    let conn = Connection::open(path).map_err(|e| StoreError::open(path, e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| StoreError::open(path, e))?;
    // Never adopt someone else's database (the shop's, say): touch nothing in a file that
    // has tables but no reconciled schema version.
    let foreign = user_version(&conn).and_then(|v| {
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        Ok(v == 0 && tables > 0)
    });
    if foreign.map_err(|e| StoreError::open(path, e))? {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "has tables but is not a reconciled store; refusing to touch it".into(),
        });
    }
    // WAL lets the CLI read while the daemon writes; FULL makes each commit durable against
    // power loss, which is what a 2xx to the provider promises.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| StoreError::open(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: format!("cannot enable WAL (journal_mode is {mode})"),
        });
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(|e| StoreError::open(path, e))?;
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
    .map_err(|e| StoreError::open(path, e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| StoreError::open(path, e))?;
    let version = user_version(&conn).map_err(|e| StoreError::open(path, e))?;
    if version == 0 {
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "not a reconciled store".into(),
        });
    }
    check_not_newer(path, version)?;
    Ok(conn)
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
    let current = user_version(conn).map_err(|e| StoreError::open(path, e))?;
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

    #[test]
    fn reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(open_writer(&path, Duration::from_secs(1)).unwrap());
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(user_version(&conn).unwrap(), latest_version());
    }
}
