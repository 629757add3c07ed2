//! Reloading the configuration while the daemon runs (SIGHUP).
//!
//! A new configuration is checked whole before any of it is used: the file must validate (as
//! `check-config` does), every endpoint's provider must build, and a changed shop database
//! must be reachable with a query that returns the columns it must. Then the HTTP server
//! serves the new endpoints (requests already being handled finish with the old ones) and the
//! worker takes the new endpoints, shop, policy, timings and sink routes between two passes;
//! each sink whose settings changed gets a new dispatcher. A
//! configuration that fails any check is refused whole: the daemon goes on with the one it
//! has. Nothing stored is touched, and no connection is dropped.
//!
//! The listen address, the limits the listener was built with and the store cannot change
//! under a running daemon: a reload names them when they differ, and they take effect at the
//! next start. So does adding or removing the `[shop]` section.

use std::sync::Arc;

use crate::config::Config;
use crate::endpoint::Endpoints;
use crate::reconcile::worker::Update;
use crate::shop::{OrderSource, ShopConfig};

/// What a checked configuration brings to the running parts.
#[derive(Debug)]
pub struct Checked {
    /// The endpoints to serve.
    pub endpoints: Arc<Endpoints>,
    /// The worker's new settings; `None` when the daemon runs no worker.
    pub worker: Option<Update>,
    /// Settings that differ but take effect only at the next start.
    pub restart_needed: Vec<&'static str>,
}

/// The settings that differ between `old` and `new` but cannot change without a restart.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let (s, t) = (&old.store, &new.store);
    [
        ("server.listen", a.listen != b.listen),
        ("server.max_body_bytes", a.max_body_bytes != b.max_body_bytes),
        ("server.header_read_timeout_secs", a.header_read_timeout != b.header_read_timeout),
        ("server.request_timeout_secs", a.request_timeout != b.request_timeout),
        ("server.write_timeout_secs", a.write_timeout != b.write_timeout),
        ("server.max_connections", a.max_connections != b.max_connections),
        ("server.shutdown_grace_secs", a.shutdown_grace != b.shutdown_grace),
        ("store.path", s.path != t.path),
        ("store.url", s.url != t.url),
        ("store.tls_ca_file", s.tls_ca.as_deref() != t.tls_ca.as_deref()),
        ("store.busy_timeout_ms", s.busy_timeout != t.busy_timeout),
        ("store.max_batch", s.max_batch != t.max_batch),
        ("store.failures_kept", s.failures_kept != t.failures_kept),
        ("store.retention_days", s.retention_days != t.retention_days),
        ("store.wal_max_mb", s.wal_max_mb != t.wal_max_mb),
        ("[shop] (added or removed)", old.shop.is_some() != new.shop.is_some()),
        ("[admin] and [messages]", old.admin != new.admin),
        ("[[sink]]s of kind pull", pulls(old) != pulls(new)),
        ("[endpoint.api] of an endpoint with backfill_every", backfills(old) != backfills(new)),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

/// The endpoints that backfill on a timer, and how (the key as a digest): the timers take
/// their settings at start.
fn backfills(config: &Config) -> Vec<(&str, String, Vec<u8>)> {
    use sha2::Digest;
    config
        .endpoints
        .iter()
        .filter_map(|e| {
            let api = e.api.as_ref()?;
            api.backfill_every?;
            let key = match &api.credentials {
                crate::ask::Credentials::Stripe { key } => key,
                crate::ask::Credentials::Paypal { client_secret, .. } => client_secret,
            };
            Some((e.name.as_str(), api.describe(), sha2::Sha256::digest(key.expose()).to_vec()))
        })
        .collect()
}

/// The pull sinks: served by the admin listener, which takes its settings at start.
fn pulls(config: &Config) -> Vec<&crate::deliver::SinkConfig> {
    config
        .sinks
        .iter()
        .filter(|s| matches!(s.target, crate::deliver::Target::Pull { .. }))
        .collect()
}

/// Checks `new` against the running `old` configuration and prepares what it brings; `worker`
/// says whether the daemon runs a worker. The error says why the configuration is refused.
pub async fn check(old: &Config, new: &Config, worker: bool) -> Result<Checked, String> {
    let endpoints = Arc::new(Endpoints::new(&new.endpoints).map_err(|e| e.to_string())?);
    crate::deliver::check(&new.sinks)?;
    let update = |shop: &ShopConfig, source: Option<OrderSource>| Update {
        endpoints: endpoints.clone(),
        shop: shop.clone(),
        source,
        policy: new.policy,
        config: new.worker,
        sinks: crate::deliver::Routes::new(&new.sinks),
    };
    let worker = match (worker, &old.shop, &new.shop) {
        (false, ..) | (true, None, _) => None,
        (true, Some(old_shop), Some(shop)) if !same_shop(old_shop, shop) => {
            Some(update(shop, Some(connect(shop).await?)))
        }
        (true, Some(_), Some(shop)) => Some(update(shop, None)),
        // Removing the shop takes a restart: until then the worker keeps reading it.
        (true, Some(old_shop), None) => Some(update(old_shop, None)),
    };
    Ok(Checked { endpoints, worker, restart_needed: restart_needed(old, new) })
}

/// Connects to a changed shop database and checks what its query returns.
async fn connect(shop: &ShopConfig) -> Result<OrderSource, String> {
    let source = OrderSource::connect(shop).await.map_err(|e| format!("shop: {e}"))?;
    let checked = match source.columns().await {
        Ok(columns) => crate::shop::check_columns(&columns).map_err(|e| format!("shop.query: {e}")),
        Err(e) => Err(format!("shop.query: {e}")),
    };
    match checked {
        Ok(()) => Ok(source),
        Err(e) => {
            source.close().await;
            Err(e)
        }
    }
}

/// Whether two shop settings read the same orders the same way.
fn same_shop(a: &ShopConfig, b: &ShopConfig) -> bool {
    a.driver == b.driver
        && a.url.expose() == b.url.expose()
        && a.query == b.query
        && a.reference_pattern.as_ref().map(regex::Regex::as_str)
            == b.reference_pattern.as_ref().map(regex::Regex::as_str)
        && a.status == b.status
        && a.pool_size == b.pool_size
        && a.tls_ca.as_deref() == b.tls_ca.as_deref()
}
