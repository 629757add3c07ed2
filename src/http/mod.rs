//! The HTTP server: an HTTP/1.1 accept loop with a connection cap and graceful shutdown.
//!
//! Only HTTP/1.1 is served: payment providers post with HTTP/1.1, and so does the TLS reverse
//! proxy in front. Serving HTTP/1 alone means every connection is under the header read
//! timeout from the moment it is accepted, including one that never sends anything, and a
//! connection buffers at most one body at a time.
//!
//! Slow clients are cut off by three clocks, none of which bytes trickling in can reset:
//! - the header read timeout (hyper's), which runs from the accept, or from the end of the
//!   previous answer on a kept-alive connection, until the request head is complete;
//! - the request timeout around reading the body, answered 408;
//! - the write-stall timeout of [`stall::StallGuard`], for a client that stops taking its
//!   answers (this one is reset by progress: a slow but steady reader is served).
//!
//! [`serve`] takes a bound listener, the shared state and a shutdown token, so tests bind
//! `127.0.0.1:0` and stop the server deterministically. On shutdown it stops accepting, lets
//! in-flight connections finish within the configured grace period, and returns; the caller
//! then closes the store.

mod handler;
mod stall;
pub mod trust;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{Endpoints, Registered};
use crate::store::Store;

/// The read buffer per connection: the largest request head accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Pause after a failed `accept` (for example too many open files) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// A connection's kernel send buffer. Our answers are under 1 KiB; Linux would otherwise grow
/// the buffer up to `tcp_wmem`'s maximum (4 MiB) for a client that pipelines requests without
/// reading, which costs kernel memory and lets such a client be served for a long time before
/// its writes stall and the write timeout can cut it off.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// `[server]`: the listener and the limits that protect it.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the daemon binds.
    pub listen: SocketAddr,
    /// Requests with a larger body get 413 without being read further.
    pub max_body_bytes: u64,
    /// A connection that has not sent complete headers in this time is closed.
    pub header_read_timeout: Duration,
    /// Bound on reading a body and on waiting for the store to commit it.
    pub request_timeout: Duration,
    /// A connection whose client has taken no bytes of an answer for this long is closed.
    pub write_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Drain time for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
}

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// Endpoints by name, as in `POST /webhooks/{name}`; replaced whole when the
    /// configuration is reloaded (a request keeps the endpoints it started with).
    endpoints: ArcSwap<Routes>,
    /// The inbox writer.
    store: Store,
    /// Body size and timeouts.
    limits: ServerConfig,
    /// Wakes the reconciliation worker when a new row is stored.
    wake: Arc<tokio::sync::Notify>,
    /// When a refusal was last logged at WARN (unix ms); refusals are rate-limited in logs.
    last_refusal_warning: std::sync::atomic::AtomicI64,
    /// Requests counted and timed per endpoint.
    metrics: Arc<crate::metrics::Metrics>,
}

/// The endpoints served, by name.
type Routes = HashMap<Arc<str>, Arc<Served>>;

/// One endpoint as served: the registry's entry and the basic auth header it expects.
#[derive(Debug)]
struct Served {
    /// Its configuration and provider.
    registered: Arc<Registered>,
    /// The basic auth header it expects, if any.
    auth: Option<trust::ExpectedAuth>,
}

impl AppState {
    /// State for serving `endpoints` into `store` within `limits`.
    pub fn new(
        limits: &ServerConfig,
        endpoints: &Endpoints,
        store: Store,
        wake: Arc<tokio::sync::Notify>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> AppState {
        AppState {
            endpoints: ArcSwap::from_pointee(routes(endpoints)),
            store,
            wake,
            limits: limits.clone(),
            last_refusal_warning: std::sync::atomic::AtomicI64::new(i64::MIN),
            metrics,
        }
    }
}

impl AppState {
    /// Serves `endpoints` from now on (a reloaded configuration). Requests already past their
    /// routing finish with the endpoint they started with.
    pub fn replace_endpoints(&self, endpoints: &Endpoints) {
        self.endpoints.store(Arc::new(routes(endpoints)));
    }

    /// The endpoint served at `POST /webhooks/{name}`.
    fn endpoint(&self, name: &str) -> Option<Arc<Served>> {
        self.endpoints.load().get(name).cloned()
    }
}

fn routes(endpoints: &Endpoints) -> Routes {
    endpoints
        .iter()
        .map(|registered| {
            let auth = trust::ExpectedAuth::for_trust(&registered.endpoint.trust);
            (registered.name.clone(), Arc::new(Served { registered: registered.clone(), auth }))
        })
        .collect()
}

/// Serves HTTP on `listener` until `shutdown` is cancelled, then drains in-flight requests
/// for at most the configured grace period.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout)
        // A connection's read buffer, and so the most header bytes a request may have: hyper's
        // default (about 400 KiB) would let 1,024 idle connections pin 400 MB. Providers'
        // headers are a few KiB; more gets 431.
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));

    loop {
        // Wait for a free connection slot first: beyond the cap, connections queue in the
        // kernel's backlog instead of consuming memory here.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES);
        // hyper has no write timeout: a client that stops reading would otherwise hold its
        // slot forever once the socket buffers fill.
        let io = TokioIo::new(stall::StallGuard::new(stream, state.limits.write_timeout));
        let state = state.clone();
        let service = service_fn(move |req| handler::handle(state.clone(), remote, req));
        let conn = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    crate::systemd::stopping();

    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(state.limits.shutdown_grace) => {
            tracing::warn!(grace_secs = state.limits.shutdown_grace.as_secs(), "drain timed out; closing remaining connections");
        }
    }
}
