//! Connecting to the PostgreSQL store and bringing its schema up to date.
//!
//! ## Compatibility
//! The applied migrations are rows of `reconciled_schema`. Each migration runs in one
//! transaction under an advisory lock, so daemons starting together migrate once; a database
//! whose version is newer than this build knows is refused rather than written to.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::locks;
use crate::secret::DbUrl;
use crate::store::StoreError;

/// The schema file, split into migrations at `-- migration: N` lines.
const SCHEMA: &str = include_str!("../../../schema-postgres.sql");

/// How long connecting (TCP, startup, authentication) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// `(version, sql)` for every migration, in order.
pub fn migrations() -> Vec<(i32, &'static str)> {
    const MARK: &str = "\n-- migration: ";
    let mut out = Vec::new();
    let mut rest = SCHEMA;
    while let Some(start) = rest.find(MARK) {
        let after = &rest[start + MARK.len()..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let version: i32 =
            after[..line_end].trim().parse().expect("schema-postgres.sql: bad migration number");
        let body = &after[line_end..];
        let end = body.find(MARK).unwrap_or(body.len());
        out.push((version, &body[..end]));
        rest = &body[end..];
    }
    out
}

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    migrations().last().map_or(0, |m| m.0)
}

/// The connection settings of `url`, with what every store connection needs: a time limit
/// on connecting, an application name, and a server-side end to a transaction left idle (a
/// daemon that hangs holding row locks frees them); and the connector to connect with: TLS
/// with the server's certificate verified (trusting `tls_ca` too) when the URL says
/// `sslmode=require`, none otherwise (see [`crate::db_tls`]).
pub fn settings(
    url: &DbUrl,
    tls_ca: Option<&[u8]>,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let mut pg: tokio_postgres::Config =
        url.expose().parse().map_err(|e: tokio_postgres::Error| {
            open_error(url, format!("invalid URL: {}", scrub(url, &crate::error::error_chain(&e))))
        })?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("reconciled");
    }
    let options = match pg.get_options() {
        Some(o) if !o.trim().is_empty() => {
            format!("{o} -c idle_in_transaction_session_timeout=60000")
        }
        _ => "-c idle_in_transaction_session_timeout=60000".to_owned(),
    };
    pg.options(options);
    pg.keepalives_idle(Duration::from_secs(30));
    let tls = crate::db_tls::connector(&mut pg, tls_ca)
        .map_err(|e| open_error(url, format!("tls_ca_file {e}")))?;
    Ok((pg, tls))
}

/// The pool for claims, decisions and reads.
pub fn pool(url: &DbUrl, tls_ca: Option<&[u8]>, size: usize) -> Result<Pool, StoreError> {
    let (pg, tls) = settings(url, tls_ca)?;
    let manager =
        Manager::from_config(pg, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT))
        .wait_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| open_error(url, e.to_string()))
}

/// A connection of its own (the ingest writer's, the listener's), driven by a task; the
/// task ends when the connection does.
pub async fn connect(
    url: &DbUrl,
    tls_ca: Option<&[u8]>,
) -> Result<tokio_postgres::Client, StoreError> {
    let (pg, tls) = settings(url, tls_ca)?;
    let (client, connection) = pg
        .connect(tls)
        .await
        .map_err(|e| open_error(url, scrub(url, &crate::error::error_chain(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "store connection ended");
        }
    });
    Ok(client)
}

/// Refuses a server that would acknowledge a commit before it is on disk: with
/// `synchronous_commit = off` (or `fsync = off`) a crash of PostgreSQL loses transactions it
/// reported committed, and a 2xx to the provider would be a lie.
pub async fn check_durable(client: &tokio_postgres::Client, url: &DbUrl) -> Result<(), StoreError> {
    for setting in ["synchronous_commit", "fsync"] {
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .map_err(|e| open_error(url, scrub(url, &crate::error::error_chain(&e))))?;
        let value: String = row.get(0);
        if value.eq_ignore_ascii_case("off") {
            return Err(open_error(
                url,
                format!(
                    "{setting} is off for this session: PostgreSQL could lose commits it \
                     acknowledged, and reconciled answers 2xx only for durable rows; set \
                     {setting} = on for the database or role reconciled uses"
                ),
            ));
        }
    }
    Ok(())
}

/// Creates or brings the schema up to date, one migration per transaction under the
/// migration lock.
pub async fn migrate(client: &mut tokio_postgres::Client, url: &DbUrl) -> Result<(), StoreError> {
    let fail =
        |e: tokio_postgres::Error| open_error(url, scrub(url, &crate::error::error_chain(&e)));
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&locks::CLASS, &locks::MIGRATE])
        .await
        .map_err(fail)?;
    // Never adopt someone else's schema: tables, but not ours, is refused.
    let ours: bool = tx
        .query_one("SELECT to_regclass('reconciled_schema') IS NOT NULL", &[])
        .await
        .map_err(fail)?
        .get(0);
    if !ours {
        let foreign: bool = tx
            .query_one("SELECT to_regclass('inbox') IS NOT NULL", &[])
            .await
            .map_err(fail)?
            .get(0);
        if foreign {
            return Err(open_error(
                url,
                "has an inbox table but is not a reconciled store; refusing to touch it".into(),
            ));
        }
        tx.batch_execute(
            "CREATE TABLE reconciled_schema (version integer PRIMARY KEY, applied_at bigint NOT NULL)",
        )
        .await
        .map_err(fail)?;
    }
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM reconciled_schema", &[])
        .await
        .map_err(fail)?
        .get(0);
    let latest = latest_version();
    if current > latest {
        return Err(StoreError::TooNewDb { url: url.redacted(), found: current, known: latest });
    }
    for (version, sql) in migrations().into_iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(|e| {
            open_error(
                url,
                format!(
                    "migration {version} failed: {}",
                    scrub(url, &crate::error::error_chain(&e))
                ),
            )
        })?;
        tx.execute(
            "INSERT INTO reconciled_schema (version, applied_at) VALUES ($1, $2)",
            &[&version, &crate::time::now_ms()],
        )
        .await
        .map_err(fail)?;
        tracing::info!(version, "store schema migrated");
    }
    tx.commit().await.map_err(fail)
}

/// Checks that the store exists and is not newer than this build, without changing it.
pub async fn check_version(client: &tokio_postgres::Client, url: &DbUrl) -> Result<(), StoreError> {
    let fail =
        |e: tokio_postgres::Error| open_error(url, scrub(url, &crate::error::error_chain(&e)));
    let ours: bool = client
        .query_one("SELECT to_regclass('reconciled_schema') IS NOT NULL", &[])
        .await
        .map_err(fail)?
        .get(0);
    if !ours {
        return Err(open_error(
            url,
            "no reconciled store here (has the daemon run with this configuration?)".into(),
        ));
    }
    let current: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM reconciled_schema", &[])
        .await
        .map_err(fail)?
        .get(0);
    if current > latest_version() {
        return Err(StoreError::TooNewDb {
            url: url.redacted(),
            found: current,
            known: latest_version(),
        });
    }
    Ok(())
}

/// An error opening the store at `url` (redacted).
pub fn open_error(url: &DbUrl, message: String) -> StoreError {
    StoreError::Connect { url: url.redacted(), message }
}

/// `message` without the URL's password, wherever a driver quoted it.
pub fn scrub(url: &DbUrl, message: &str) -> String {
    let mut out = message.replace(url.expose(), &url.redacted());
    if let Ok(pg) = url.expose().parse::<tokio_postgres::Config>() {
        if let Some(p) = pg.get_password().filter(|p| !p.is_empty()) {
            out = out.replace(&*String::from_utf8_lossy(p), "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        let versions: Vec<i32> = migrations().iter().map(|m| m.0).collect();
        let expected: Vec<i32> = (1..=versions.len() as i32).collect();
        assert_eq!(versions, expected);
        assert!(latest_version() >= 1);
    }

    #[test]
    fn a_password_never_reaches_an_error() {
        let url = DbUrl::new("postgres://u:s3cret-pw@127.0.0.1:1/db");
        let msg =
            scrub(&url, "could not connect to postgres://u:s3cret-pw@127.0.0.1:1/db (s3cret-pw)");
        assert!(!msg.contains("s3cret-pw"), "{msg}");
    }
}
