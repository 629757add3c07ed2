//! `reconciled` takes payment providers' asynchronous notifications, verifies each over its
//! raw bytes, and stores it exactly once in a durable SQLite inbox before answering the
//! provider. (Matching notifications against the shop's orders and writing actions to an
//! outbox builds on this inbox.)
//!
//! # Layout
//! - [`config`]: the TOML file → a validated [`config::Config`]; secrets redacted.
//! - [`http`]: the hyper accept loop, routes and the webhook handler.
//! - [`provider`]: one file per provider (`verify`, `identify`), dispatch in `mod.rs`.
//! - [`store`]: SQLite schema and migrations, the group-commit writer thread, CLI reads.
//! - [`cli`]: one file per subcommand; `main.rs` only maps errors to exit codes.

pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod money;
pub mod provider;
pub mod reconcile;
pub mod shop;
pub mod store;
pub mod systemd;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::{Store, StoreError};

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A test-only crash point: with the `failpoints` feature, aborts the process when
/// `RECONCILED_FAILPOINT` names this point. Compiled to nothing otherwise.
#[inline]
pub fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("RECONCILED_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// An error and its causes on one line: `subject: cause: cause`, for logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Runs the daemon on an already bound listener until `shutdown` is cancelled: opens the
/// store, calls `on_ready` (the daemon now answers requests), serves, drains in-flight
/// requests, then commits and closes the store.
pub async fn run_server(
    config: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let store = Store::open(&config.store)?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let worker = match &config.shop {
        Some(shop) => {
            let conn = store::schema::open_writer(&config.store.path, config.store.busy_timeout)?;
            let worker = reconcile::worker::Worker::new(
                conn,
                &config.endpoints,
                shop.clone(),
                config.policy,
                config.worker,
            );
            Some(tokio::spawn(worker.run(wake.clone(), shutdown.clone())))
        }
        None => {
            tracing::warn!("no [shop] configured: notifications are stored but not reconciled");
            None
        }
    };
    let state = Arc::new(
        http::AppState::new(config, store.clone(), wake).map_err(|why| anyhow::anyhow!(why))?,
    );
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, store = %config.store.path.display(), endpoints = config.endpoints.len(), "listening on http://{addr}");
        on_ready(addr);
        systemd::ready(addr);
    }
    let systemd_watchdog = systemd::watchdog(store.clone(), shutdown.clone());
    let pruner = tokio::spawn(store::prune::run(
        config.store.path.clone(),
        config.store.busy_timeout,
        config.store.retention_days,
        shutdown.clone(),
    ));
    // A dead writer stops the daemon (and systemd restarts it) instead of leaving it up and
    // answering 503 to everything.
    let watchdog = {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = store.died() => shutdown.cancel(),
                () = shutdown.cancelled() => {}
            }
        })
    };
    http::serve(listener, state, shutdown.clone()).await;
    watchdog.abort();
    if let Some(w) = systemd_watchdog {
        w.abort();
    }
    // The worker finishes the batch it is on (a commit, or nothing) and stops; the pruner
    // after its current chunk.
    shutdown.cancel();
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    let _ = pruner.await;
    if store.is_dead() {
        return Err(StoreError::WriterDied.into());
    }
    store.close().await;
    tracing::info!("store closed");
    Ok(())
}
