//! The config's fixed tables (`[server]`, `[store]`, `[shop]`, `[policy]`, `[worker]`): their
//! raw shapes, and the checks that turn them into their owners' settings types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::reconcile::policy::{DecisionMode, FulfilOn, OverpaidPolicy, RefundOrReview};
use crate::secret::DbUrl;
use crate::shop::{ShopDriver, StatusMap};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    max_body_bytes: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    write_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    path: Option<PathBuf>,
    url: Option<String>,
    tls_ca_file: Option<PathBuf>,
    busy_timeout_ms: Option<u64>,
    max_batch: Option<usize>,
    failures_kept: Option<u64>,
    retention_days: Option<u64>,
    wal_max_mb: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShop {
    driver: ShopDriver,
    url: String,
    query: String,
    reference_pattern: Option<String>,
    #[serde(default)]
    status: RawStatus,
    pool_size: Option<usize>,
    tls_ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    #[serde(default)]
    awaiting_payment: Vec<String>,
    #[serde(default)]
    paid: Vec<String>,
    #[serde(default)]
    cancelled: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    on_underpaid: Option<RefundOrReview>,
    on_overpaid: Option<OverpaidPolicy>,
    on_currency_mismatch: Option<RefundOrReview>,
    on_paid_after_cancel: Option<RefundOrReview>,
    fulfil_on: Option<FulfilOn>,
    unmatched_retry_for: Option<String>,
    failure_notice_delay: Option<String>,
    pending_review_after: Option<String>,
    authorization_review_after: Option<String>,
    mode: Option<DecisionMode>,
    inquire_after: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorker {
    lease: Option<String>,
    max_attempts: Option<u32>,
    retry_base: Option<String>,
    retry_max: Option<String>,
    batch: Option<usize>,
}

pub(super) fn server(s: RawServer, r: &Resolver<'_>) -> Result<ServerConfig, ConfigError> {
    let listen_text = s.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        r.invalid(
            "server.listen",
            format!("\"{listen_text}\" is not an IP address and port such as \"127.0.0.1:8080\""),
        )
    })?;
    let secs = |key: &str, v: Option<u64>, default: u64| {
        r.bounded(key, v, default, MAX_TIMEOUT_SECS).map(Duration::from_secs)
    };
    Ok(ServerConfig {
        listen,
        max_body_bytes: r.bounded(
            "server.max_body_bytes",
            s.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            MAX_BODY_BYTES,
        )?,
        header_read_timeout: secs(
            "server.header_read_timeout_secs",
            s.header_read_timeout_secs,
            DEFAULT_HEADER_READ_TIMEOUT_SECS,
        )?,
        request_timeout: secs(
            "server.request_timeout_secs",
            s.request_timeout_secs,
            DEFAULT_REQUEST_TIMEOUT_SECS,
        )?,
        write_timeout: secs(
            "server.write_timeout_secs",
            s.write_timeout_secs,
            DEFAULT_WRITE_TIMEOUT_SECS,
        )?,
        max_connections: r.bounded(
            "server.max_connections",
            s.max_connections.map(|n| n as u64),
            DEFAULT_MAX_CONNECTIONS as u64,
            MAX_CONNECTIONS,
        )? as usize,
        shutdown_grace: secs(
            "server.shutdown_grace_secs",
            s.shutdown_grace_secs.map(|n| n.max(1)),
            DEFAULT_SHUTDOWN_GRACE_SECS,
        )?,
    })
}

pub(super) fn store(st: RawStore, r: &Resolver<'_>) -> Result<StoreConfig, ConfigError> {
    let url = match (st.url, &st.path) {
        (Some(_), Some(_)) => {
            return Err(r.invalid(
                "store.url",
                "give either path (a SQLite file) or url (a PostgreSQL database), not both",
            ))
        }
        (Some(url), None) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(r.invalid(
                    "store.url",
                    "must be a postgres:// URL (a SQLite store is given with path)",
                ));
            }
            let url = crate::secret::DbUrl::new(url);
            if let Err(e) = url.expose().parse::<tokio_postgres::Config>() {
                let message = crate::store::postgres::schema::scrub(&url, &e.to_string());
                return Err(
                    r.invalid("store.url", format!("not a valid PostgreSQL URL: {message}"))
                );
            }
            Some(url)
        }
        (None, _) => None,
    };
    let tls_ca = match (&url, st.tls_ca_file) {
        (_, None) => None,
        (None, Some(_)) => {
            return Err(r.invalid("store.tls_ca_file", "only with url (a PostgreSQL store)"))
        }
        (Some(url), Some(file)) => {
            let pem = r.read("store.tls_ca_file", &file)?;
            Some(
                crate::db_tls::CaPem::checked(url.expose(), pem)
                    .map_err(|e| r.invalid("store.tls_ca_file", e))?,
            )
        }
    };
    let path = st.path.unwrap_or_else(|| PathBuf::from("reconciled.db"));
    if path.as_os_str().is_empty() {
        return Err(r.invalid("store.path", "must not be empty"));
    }
    let retention_days = match st.retention_days {
        Some(n) if n < MIN_RETENTION_DAYS => {
            return Err(r.invalid(
                "store.retention_days",
                format!(
                "{n} is below the minimum of {MIN_RETENTION_DAYS}: providers retry for up to 30 \
                     days, and a notification whose dedup key was pruned would be decided again"
            ),
            ))
        }
        v => r.bounded("store.retention_days", v, DEFAULT_RETENTION_DAYS, MAX_RETENTION_DAYS)?,
    };
    Ok(StoreConfig {
        path: r.beside(&path),
        url,
        tls_ca,
        busy_timeout: Duration::from_millis(r.bounded(
            "store.busy_timeout_ms",
            st.busy_timeout_ms,
            DEFAULT_BUSY_TIMEOUT_MS,
            MAX_BUSY_TIMEOUT_MS,
        )?),
        max_batch: r.bounded(
            "store.max_batch",
            st.max_batch.map(|n| n as u64),
            DEFAULT_MAX_BATCH as u64,
            MAX_BATCH,
        )? as usize,
        failures_kept: r.bounded(
            "store.failures_kept",
            st.failures_kept,
            DEFAULT_FAILURES_KEPT,
            MAX_FAILURES_KEPT,
        )?,
        wal_max_mb: r.bounded("store.wal_max_mb", st.wal_max_mb, DEFAULT_WAL_MAX_MB, MAX_WAL_MB)?,
        retention_days,
    })
}

pub(super) fn shop(sh: RawShop, r: &Resolver<'_>) -> Result<ShopConfig, ConfigError> {
    let url = match sh.driver {
        ShopDriver::Sqlite => {
            r.beside(std::path::Path::new(&sh.url)).to_string_lossy().into_owned()
        }
        ShopDriver::Mysql if !sh.url.starts_with("mysql://") => {
            return Err(
                r.invalid("shop.url", "must be a mysql://user:password@host:port/database URL")
            )
        }
        ShopDriver::Postgres
            if !(sh.url.starts_with("postgres://") || sh.url.starts_with("postgresql://")) =>
        {
            return Err(
                r.invalid("shop.url", "must be a postgres://user:password@host:port/database URL")
            )
        }
        _ => sh.url,
    };
    if url.trim().is_empty() {
        return Err(r.invalid("shop.url", "must not be empty"));
    }
    if !sh.query.contains(":reference") && !sh.query.contains(":psp_reference") {
        return Err(
            r.invalid("shop.query", "must use :reference and/or :psp_reference to find the order")
        );
    }
    let reference_pattern = match &sh.reference_pattern {
        None => None,
        Some(p) => Some(regex::Regex::new(p).map_err(|e| {
            r.invalid("shop.reference_pattern", format!("not a valid regular expression: {e}"))
        })?),
    };
    let status = StatusMap {
        awaiting_payment: sh.status.awaiting_payment,
        paid: sh.status.paid,
        cancelled: sh.status.cancelled,
    };
    if status.awaiting_payment.is_empty() || status.paid.is_empty() || status.cancelled.is_empty() {
        return Err(r.invalid(
            "shop.status",
            "needs awaiting_payment, paid and cancelled lists of the shop's status values",
        ));
    }
    let pool_size = match sh.pool_size.unwrap_or(4) {
        0 => return Err(r.invalid("shop.pool_size", "must be greater than 0")),
        n => n,
    };
    if sh.driver == ShopDriver::Mysql {
        // The URL's TLS settings: refused here rather than when the daemon connects.
        match mysql_async::Opts::from_url(&url) {
            Ok(opts) => {
                crate::db_tls::mysql_ssl(&opts, None).map_err(|e| r.invalid("shop.url", e))?;
            }
            Err(e) => {
                let shown = crate::shop::scrub_url_error(&url, &e.to_string());
                return Err(r.invalid("shop.url", format!("not a valid MySQL URL: {shown}")));
            }
        }
    }
    let tls_ca = match sh.tls_ca_file {
        None => None,
        Some(_) if sh.driver == ShopDriver::Sqlite => {
            return Err(
                r.invalid("shop.tls_ca_file", "only with driver = \"mysql\" or \"postgres\"")
            )
        }
        Some(file) => {
            let pem = r.read("shop.tls_ca_file", &file)?;
            Some(
                crate::db_tls::CaPem::checked(&url, pem)
                    .map_err(|e| r.invalid("shop.tls_ca_file", e))?,
            )
        }
    };
    Ok(ShopConfig {
        tls_ca,
        driver: sh.driver,
        url: DbUrl::new(url),
        query: sh.query,
        reference_pattern,
        status,
        pool_size,
    })
}

pub(super) fn policy(p: RawPolicy, r: &Resolver<'_>) -> Result<Policy, ConfigError> {
    let d = Policy::default();
    let unmatched = r.duration("policy.unmatched_retry_for", p.unmatched_retry_for.as_deref())?;
    let hold = r.duration("policy.failure_notice_delay", p.failure_notice_delay.as_deref())?;
    if hold.is_some_and(|h| h > Duration::from_secs(24 * 3600)) {
        return Err(r.invalid("policy.failure_notice_delay", "must be at most 24h"));
    }
    let open = |key: &str, text: Option<&str>| -> Result<Option<Duration>, ConfigError> {
        let d = r.duration(key, text)?;
        if d.is_some_and(|d| d.is_zero() || d > Duration::from_secs(90 * 24 * 3600)) {
            return Err(r.invalid(key, "must be more than 0s and at most 90d"));
        }
        Ok(d)
    };
    let pending_after = open("policy.pending_review_after", p.pending_review_after.as_deref())?;
    let auth_after =
        open("policy.authorization_review_after", p.authorization_review_after.as_deref())?;
    Ok(Policy {
        on_underpaid: p.on_underpaid.unwrap_or(d.on_underpaid),
        on_overpaid: p.on_overpaid.unwrap_or(d.on_overpaid),
        on_currency_mismatch: p.on_currency_mismatch.unwrap_or(d.on_currency_mismatch),
        on_paid_after_cancel: p.on_paid_after_cancel.unwrap_or(d.on_paid_after_cancel),
        fulfil_on: p.fulfil_on.unwrap_or(d.fulfil_on),
        unmatched_retry_for: unmatched.unwrap_or(d.unmatched_retry_for),
        failure_notice_delay: hold.unwrap_or(d.failure_notice_delay),
        pending_review_after: pending_after.unwrap_or(d.pending_review_after),
        authorization_review_after: auth_after.unwrap_or(d.authorization_review_after),
        mode: p.mode.unwrap_or(d.mode),
        inquire_after: open("policy.inquire_after", p.inquire_after.as_deref())?
            .unwrap_or(d.inquire_after),
    })
}

pub(super) fn worker(w: RawWorker, r: &Resolver<'_>) -> Result<WorkerConfig, ConfigError> {
    let d = WorkerConfig::default();
    let c = WorkerConfig {
        lease: r.duration("worker.lease", w.lease.as_deref())?.unwrap_or(d.lease),
        max_attempts: w.max_attempts.unwrap_or(d.max_attempts),
        retry_base: r
            .duration("worker.retry_base", w.retry_base.as_deref())?
            .unwrap_or(d.retry_base),
        retry_max: r.duration("worker.retry_max", w.retry_max.as_deref())?.unwrap_or(d.retry_max),
        batch: w.batch.unwrap_or(d.batch),
    };
    if c.max_attempts == 0 {
        return Err(r.invalid("worker.max_attempts", "must be greater than 0"));
    }
    if c.batch == 0 {
        return Err(r.invalid("worker.batch", "must be greater than 0"));
    }
    if c.lease.is_zero() {
        return Err(r.invalid("worker.lease", "must be greater than 0"));
    }
    Ok(c)
}
