//! The daemon: wires the store, the worker, the pruner and the HTTP server together, and takes
//! them down in order.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::endpoint::Endpoints;
use crate::store::{Store, StoreError};
use crate::{deliver, http, reconcile, reload, systemd};

/// Runs the daemon on an already bound listener until `shutdown` is cancelled: opens the
/// store, calls `on_ready` (the daemon now answers requests), serves, drains in-flight
/// requests, then commits and closes the store. Each configuration received on `reloads` is
/// checked and, if good, applied while running (see [`crate::reload`]).
pub async fn run(
    config: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    reloads: mpsc::Receiver<Config>,
    on_ready: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let endpoints = Arc::new(Endpoints::new(&config.endpoints)?);
    let store = Store::open(&config.store).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new(store.commit_seconds()));
    configure_metrics(&metrics, config);
    let wake = Arc::new(tokio::sync::Notify::new());
    let asking = start_asking(config, &store, &wake, &metrics, &shutdown)?;
    let (worker_updates, updates) = mpsc::channel(4);
    let (written, written_rx) = tokio::sync::watch::channel(0u64);
    // On a store several daemons share, what the others store and write wakes this one too.
    store.listen(wake.clone(), written.clone(), shutdown.clone());
    let worker = match &config.shop {
        Some(shop) => {
            let worker = reconcile::worker::Worker::new(
                store.clone(),
                endpoints.clone(),
                shop.clone(),
                config.policy,
                config.worker,
            )
            .delivering_to(deliver::Routes::new(&config.sinks), written)
            .counting_in(metrics.clone());
            if config.policy.mode == crate::reconcile::policy::DecisionMode::Shadow {
                tracing::warn!(
                    "policy.mode = \"shadow\": every action is recorded as a shadow action \
                     (outbox list --shadow) and none is to be carried out"
                );
            }
            Some(tokio::spawn(worker.run(wake.clone(), shutdown.clone(), updates)))
        }
        None => {
            tracing::warn!("no [shop] configured: notifications are stored but not reconciled");
            None
        }
    };
    let admin = match &config.admin {
        Some(admin) => {
            let listener = TcpListener::bind(admin.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", admin.listen))?;
            tracing::info!(addr = %admin.listen, "admin API on http://{}", admin.listen);
            let serving = crate::admin::Serving {
                store: store.clone(),
                shop: config.shop.clone(),
                sinks: config.sinks.clone(),
                decided: written_rx.clone(),
                metrics: metrics.clone(),
            };
            Some(tokio::spawn(crate::admin::serve(
                listener,
                admin.clone(),
                serving,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let mut running =
        deliver::Running::new(store.clone(), written_rx, shutdown.clone(), metrics.clone());
    running.set(&config.sinks).map_err(|e| anyhow::anyhow!(e))?;
    let dispatchers = Arc::new(tokio::sync::Mutex::new(running));
    let state = Arc::new(http::AppState::new(
        &config.server,
        &endpoints,
        store.clone(),
        wake,
        metrics.clone(),
    ));
    let worker_updates = worker.is_some().then_some(worker_updates);
    let reloader = tokio::spawn(apply_reloads(
        config.clone(),
        reloads,
        state.clone(),
        worker_updates,
        dispatchers.clone(),
        metrics,
    ));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, store = %Store::location(&config.store), endpoints = config.endpoints.len(), "listening on http://{addr}");
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
    reloader.abort();
    if let Some(w) = systemd_watchdog {
        w.abort();
    }
    // The worker finishes the batch it is on (a commit, or nothing) and stops; the pruner
    // after its current chunk.
    shutdown.cancel();
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    // A delivery cut short is still owed, and goes out again with the same webhook-id.
    dispatchers.lock().await.stop().await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    let _ = pruner.await;
    for task in asking {
        let _ = task.await;
    }
    if store.is_dead() {
        return Err(StoreError::WriterDied.into());
    }
    store.close().await;
    tracing::info!("store closed");
    Ok(())
}

/// Starts what asks Stripe (see [`crate::ask`]): the backfill of each Stripe endpoint with
/// `backfill_every` in its `[endpoint.api]`, and, with a shop to decide for, the inquiries
/// about payments left open. An endpoint's backfill and inquiries share its client, so they
/// ask one at a time.
fn start_asking(
    config: &Config,
    store: &Store,
    wake: &Arc<tokio::sync::Notify>,
    metrics: &Arc<crate::metrics::Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut apis = std::collections::HashMap::new();
    for endpoint in &config.endpoints {
        if let (Some(api), crate::provider::ProviderKind::Stripe) = (&endpoint.api, endpoint.kind())
        {
            let client = crate::ask::stripe::StripeApi::new(api)
                .map_err(|e| anyhow::anyhow!("endpoint \"{}\": {e}", endpoint.name))?;
            apis.insert(endpoint.name.clone(), Arc::new(client));
        }
    }
    let mut tasks = Vec::new();
    if config.shop.is_some() && !apis.is_empty() {
        let inquirer = crate::ask::inquire::Inquirer {
            store: store.clone(),
            apis: apis.clone(),
            after: config.policy.inquire_after,
            metrics: Some(metrics.clone()),
        };
        tasks.push(tokio::spawn(crate::ask::inquire::run(
            inquirer,
            wake.clone(),
            shutdown.clone(),
        )));
    }
    for endpoint in &config.endpoints {
        let Some(every) = endpoint.api.as_ref().and_then(|a| a.backfill_every) else { continue };
        let Some(api) = apis.get(&endpoint.name) else { continue };
        let backfill = crate::ask::backfill::Backfill {
            api: api.clone(),
            store: store.clone(),
            endpoint: Arc::from(endpoint.name.as_str()),
            dry_run: false,
            metrics: Some(metrics.clone()),
        };
        tracing::info!(endpoint = %endpoint.name, every = %humantime::format_duration(every), "backfill from the Stripe API on");
        tasks.push(tokio::spawn(crate::ask::backfill::run(
            backfill,
            every,
            wake.clone(),
            shutdown.clone(),
        )));
    }
    Ok(tasks)
}

/// Checks each new configuration and applies the good ones; a bad one is refused with an
/// ERROR and the daemon goes on with what it has.
async fn apply_reloads(
    mut current: Config,
    mut reloads: mpsc::Receiver<Config>,
    state: Arc<http::AppState>,
    worker: Option<mpsc::Sender<reconcile::worker::Update>>,
    dispatchers: Arc<tokio::sync::Mutex<deliver::Running>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    while let Some(new) = reloads.recv().await {
        let source = new.source.display().to_string();
        match reload::check(&current, &new, worker.is_some()).await {
            Ok(checked) => {
                state.replace_endpoints(&checked.endpoints);
                if let Err(e) = dispatchers.lock().await.set(&new.sinks) {
                    // Checked before: a client that built then builds now.
                    tracing::error!("sinks not replaced: {e}");
                }
                configure_metrics(&metrics, &new);
                if let (Some(worker), Some(update)) = (&worker, checked.worker) {
                    let _ = worker.send(update).await;
                }
                if !checked.restart_needed.is_empty() {
                    tracing::warn!(
                        "configuration reloaded, but these settings changed and take effect only \
                         at the next start: {}",
                        checked.restart_needed.join(", ")
                    );
                }
                tracing::info!(
                    config = %source,
                    endpoints = new.endpoints.len(),
                    mode = %new.policy.mode,
                    "configuration reloaded: new notifications use it"
                );
                current = new;
            }
            Err(why) => tracing::error!(
                config = %source,
                "configuration reload refused, going on with the previous one: {why}"
            ),
        }
    }
}

/// The endpoints' `silent_after` and the sinks, as the metrics show them.
fn configure_metrics(metrics: &crate::metrics::Metrics, config: &Config) {
    metrics.configure(
        config.endpoints.iter().map(|e| (e.name.as_str(), e.silent_after)),
        config.sinks.iter().map(|s| &*s.name),
    );
}
