//! The daemon: wires the store, the worker, the pruner and the HTTP server together, and takes
//! them down in order.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::endpoint::Endpoints;
use crate::store::{Store, StoreError};
use crate::{http, reconcile, systemd};

/// Runs the daemon on an already bound listener until `shutdown` is cancelled: opens the
/// store, calls `on_ready` (the daemon now answers requests), serves, drains in-flight
/// requests, then commits and closes the store.
pub async fn run(
    config: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let endpoints = Arc::new(Endpoints::new(&config.endpoints)?);
    let store = Store::open(&config.store)?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let worker = match &config.shop {
        Some(shop) => {
            let worker = reconcile::worker::Worker::new(
                store.clone(),
                endpoints.clone(),
                shop.clone(),
                config.policy,
                config.worker,
            );
            if config.policy.mode == crate::reconcile::policy::DecisionMode::Shadow {
                tracing::warn!(
                    "policy.mode = \"shadow\": every action is recorded as a shadow action \
                     (outbox list --shadow) and none is to be carried out"
                );
            }
            Some(tokio::spawn(worker.run(wake.clone(), shutdown.clone())))
        }
        None => {
            tracing::warn!("no [shop] configured: notifications are stored but not reconciled");
            None
        }
    };
    let state = Arc::new(http::AppState::new(&config.server, &endpoints, store.clone(), wake));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, store = %config.store.path.display(), endpoints = config.endpoints.len(), "listening on http://{addr}");
        on_ready(addr);
        systemd::ready(addr);
    }
    let systemd_watchdog = systemd::watchdog(store.clone(), shutdown.clone());
    let pruner =
        tokio::spawn(store.clone().run_pruner(config.store.retention_days, shutdown.clone()));
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
