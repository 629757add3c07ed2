//! The admin listener (`[admin]`): a second HTTP listener for the shop's own systems, apart
//! from the providers' webhooks that face the internet. Loopback by default; every request
//! needs `Authorization: Bearer <token>`, compared in constant time.
//!
//! `GET /v1/orders/{order_id}/payment?wait=SECS` tells the confirmation page where the order's
//! payment stands ([`status::State`]), with the customer-facing sentence from `[messages]`.
//! With `wait`, it answers as soon as the state is settled (not `awaiting_payment` or
//! `processing`), or when `wait` (at most 30 s) runs out: a thank-you page can wait for the
//! webhook instead of polling. An order the shop does not have: 404.
//!
//! The pull API serves each `kind = "pull"` sink, with that sink's own token:
//! `GET /v1/outbox/{sink}?limit=N&wait=SECS` hands out the oldest actions the sink is owed (in
//! the sinks' order rule) and leases them for the sink's `lease_secs`, answering as soon as
//! there is one or when `wait` runs out; `POST /v1/outbox/{sink}/{action_id}/ack` marks one
//! delivered and `POST …/nack` makes it due again after the sink's backoff (both 204). An
//! action leased and neither acked nor nacked within its lease is handed out again.

pub mod page;
mod pull;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use sha2::Digest;
use subtle::ConstantTimeEq;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use self::status::{Messages, State};
use crate::deliver::{SinkConfig, Target};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::settings::{ConfigError, Resolver};
use crate::shop::{Lookup, OrderSource, ShopConfig};
use crate::store::Store;

/// The longest `wait` a long poll may ask for.
pub const MAX_WAIT_SECS: u64 = 30;
/// Connections the admin listener serves at once.
const MAX_CONNECTIONS: usize = 64;
/// The longest order id accepted in a path.
const MAX_ORDER_ID: usize = 128;

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The Bearer token every request needs.
    pub token: Secret,
    /// The sentences for each payment state.
    pub messages: Messages,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    listen: Option<String>,
    #[serde(default, deserialize_with = "crate::secret::one_secret")]
    token: Option<Secret>,
    #[serde(default)]
    allow_remote: bool,
}

impl AdminConfig {
    /// Resolves `[admin]` and `[messages]`.
    pub(crate) fn resolve(
        raw: RawAdmin,
        messages: Messages,
        r: &Resolver<'_>,
    ) -> Result<AdminConfig, ConfigError> {
        let text = raw.listen.unwrap_or_else(|| "127.0.0.1:8081".into());
        let listen: SocketAddr = text.parse().map_err(|_| {
            r.invalid(
                "admin.listen",
                format!("\"{text}\" is not an address such as 127.0.0.1:8081"),
            )
        })?;
        if !listen.ip().is_loopback() && !raw.allow_remote {
            return Err(r.invalid(
                "admin.listen",
                format!("{listen} is not a loopback address; set admin.allow_remote = true to serve other hosts (behind TLS)"),
            ));
        }
        let token = raw.token.ok_or_else(|| r.invalid("admin.token", "is required"))?;
        if token.expose().len() < 16 {
            return Err(
                r.invalid("admin.token", "must be at least 16 characters (openssl rand -hex 24)")
            );
        }
        r.secrets("admin.token", std::slice::from_ref(&token))?;
        for (key, text) in [
            ("awaiting_payment", &messages.awaiting_payment),
            ("processing", &messages.processing),
            ("paid", &messages.paid),
            ("failed", &messages.failed),
            ("refunded", &messages.refunded),
            ("review", &messages.review),
        ] {
            if text.trim().is_empty() || text.len() > 1000 {
                return Err(r.invalid(&format!("messages.{key}"), "must be 1 to 1000 characters"));
            }
        }
        Ok(AdminConfig { listen, token, messages })
    }
}

/// What the admin listener's handlers share.
struct Admin {
    store: Store,
    /// `None` when no `[shop]` is configured: the payment status has nothing to look in.
    shop: Option<ShopConfig>,
    source: tokio::sync::Mutex<Option<Arc<OrderSource>>>,
    token_digest: [u8; 32],
    messages: Messages,
    decided: watch::Receiver<u64>,
    /// The pull sinks, each with the digest of its token.
    pulls: Vec<(SinkConfig, [u8; 32])>,
    /// Served at `/metrics`.
    metrics: Arc<Metrics>,
    /// The admin page's basic auth: `admin` with the token.
    page_auth: crate::http::trust::ExpectedAuth,
}

/// The most actions one pull hands out.
const MAX_PULL: usize = 500;

/// What the admin listener serves from: the store, the shop (for the payment status), the
/// sinks (for the pull API) and the metrics.
#[derive(Debug)]
pub struct Serving {
    /// The store.
    pub store: Store,
    /// The shop's settings, if one is configured.
    pub shop: Option<ShopConfig>,
    /// The configured sinks.
    pub sinks: Vec<SinkConfig>,
    /// Changes whenever the worker has decided rows (a long poll looks again then).
    pub decided: watch::Receiver<u64>,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: AdminConfig,
    serving: Serving,
    shutdown: CancellationToken,
) {
    let Serving { store, shop, sinks, decided, metrics } = serving;
    let pulls = sinks
        .into_iter()
        .filter_map(|s| match &s.target {
            Target::Pull { token, .. } => {
                let digest: [u8; 32] = sha2::Sha256::digest(token.expose()).into();
                Some((s, digest))
            }
            _ => None,
        })
        .collect();
    let admin = Arc::new(Admin {
        store,
        shop,
        source: tokio::sync::Mutex::new(None),
        token_digest: sha2::Sha256::digest(config.token.expose()).into(),
        page_auth: crate::http::trust::ExpectedAuth::basic("admin", config.token.expose()),
        messages: config.messages,
        decided,
        pulls,
        metrics,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let admin = admin.clone();
        let service = hyper::service::service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(handle(&admin, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(16 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
    let source = admin.source.lock().await.take();
    if let Some(Ok(source)) = source.map(Arc::try_unwrap) {
        source.close().await;
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = value.to_string();
    body.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Whether the request carries the Bearer token whose SHA-256 is `digest` (constant time).
fn authorized(req: &Request<Incoming>, digest: &[u8; 32]) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| sha2::Sha256::digest(t.trim().as_bytes()))
        .is_some_and(|d| bool::from(d.as_slice().ct_eq(digest)))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut resp = error(StatusCode::UNAUTHORIZED, "a valid Bearer token is required");
    resp.headers_mut()
        .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    resp
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/metrics" {
        return metrics(admin, &req).await;
    }
    if req.uri().path() == "/admin" || req.uri().path().starts_with("/admin/") {
        return page::handle(admin, &req).await;
    }
    if let Some(rest) = req.uri().path().strip_prefix("/v1/outbox/") {
        let rest = rest.to_owned();
        return pull::handle(admin, &rest, req).await;
    }
    if !authorized(&req, &admin.token_digest) {
        return unauthorized();
    }
    let path = req.uri().path();
    let Some(order_id) =
        path.strip_prefix("/v1/orders/").and_then(|rest| rest.strip_suffix("/payment"))
    else {
        return error(StatusCode::NOT_FOUND, "no such path");
    };
    if req.method() != hyper::Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let plain = |c: char| c.is_ascii_graphic() && c != '/' && c != '%';
    if order_id.is_empty() || order_id.len() > MAX_ORDER_ID || !order_id.chars().all(plain) {
        return error(
            StatusCode::BAD_REQUEST,
            "the order id must be 1 to 128 printable characters",
        );
    }
    let wait = match wait_of(req.uri().query()) {
        Ok(w) => w,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match payment_status(admin, order_id, wait).await {
        Ok(Some(body)) => json(StatusCode::OK, &body),
        Ok(None) => error(StatusCode::NOT_FOUND, "the shop has no such order"),
        Err(why) => {
            tracing::warn!(error = %why, "payment status unavailable");
            error(StatusCode::SERVICE_UNAVAILABLE, "payment status unavailable, retry later")
        }
    }
}

/// `GET /metrics`: no token (the listener is loopback unless allowed otherwise, and no metric
/// holds a secret). The store's gauges are read now; a store that cannot be read leaves them
/// out and reports `reconciled_store_ready 0`.
async fn metrics(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let limit = Duration::from_secs(5);
    let ready = matches!(tokio::time::timeout(limit, admin.store.probe()).await, Ok(Ok(())));
    let gauges = match tokio::time::timeout(limit, admin.store.gauges()).await {
        Ok(Ok(g)) => Some(g),
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::error::error_chain(&e), "metrics: store gauges unavailable");
            None
        }
        Err(_) => None,
    };
    let text = admin.metrics.render(gauges.as_ref(), ready);
    Response::builder()
        .header("content-type", crate::metrics::CONTENT_TYPE)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(text)))
        .expect("a valid response")
}

/// `wait=SECS` from the query, at most [`MAX_WAIT_SECS`].
fn wait_of(query: Option<&str>) -> Result<Duration, String> {
    Ok(params(query, &["wait"])?.0)
}

/// `wait=SECS` (at most [`MAX_WAIT_SECS`]) and `limit=N` from a query that may hold only the
/// `allowed` ones.
fn params(query: Option<&str>, allowed: &[&str]) -> Result<(Duration, Option<usize>), String> {
    let (mut wait, mut limit) = (Duration::ZERO, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&key) {
            return Err(format!("the parameters are {}", allowed.join(", ")));
        }
        let n: u64 = v.parse().map_err(|_| format!("{key}: \"{v}\" is not a number"))?;
        match key {
            "wait" if n > MAX_WAIT_SECS => {
                return Err(format!("wait: at most {MAX_WAIT_SECS} seconds"))
            }
            "wait" => wait = Duration::from_secs(n),
            _ if n == 0 || n > MAX_PULL as u64 => return Err(format!("limit: 1 to {MAX_PULL}")),
            _ => limit = Some(n as usize),
        }
    }
    Ok((wait, limit))
}

/// The order's payment status, waiting up to `wait` for it to settle; `None` when the shop
/// has no such order.
async fn payment_status(
    admin: &Admin,
    order_id: &str,
    wait: Duration,
) -> Result<Option<serde_json::Value>, String> {
    let shop = admin.shop.as_ref().ok_or("no [shop] is configured")?;
    let source = {
        let mut slot = admin.source.lock().await;
        match &*slot {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(OrderSource::connect(shop).await.map_err(|e| e.to_string())?);
                *slot = Some(s.clone());
                s
            }
        }
    };
    let lookup = Lookup { reference: Some(order_id.to_owned()), psp_reference: None };
    let known = source.find(&lookup, &shop.status).await.map_err(|e| {
        admin.metrics.shop_lookup_error();
        e.to_string()
    })?;
    if known.is_none() {
        return Ok(None);
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut decided = admin.decided.clone();
    loop {
        decided.mark_unchanged();
        let facts = admin.store.order_payments(order_id).await.map_err(|e| e.to_string())?;
        let state = State::of(&facts);
        if !state.is_open() || tokio::time::Instant::now() >= deadline {
            return Ok(Some(serde_json::json!({
                "order_id": order_id,
                "state": state,
                "message": admin.messages.of(state),
                "payments": facts.payments,
            })));
        }
        tokio::select! {
            _ = decided.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_bounded_and_the_only_parameter() {
        assert_eq!(wait_of(None), Ok(Duration::ZERO));
        assert_eq!(wait_of(Some("wait=25")), Ok(Duration::from_secs(25)));
        assert!(wait_of(Some("wait=31")).is_err());
        assert!(wait_of(Some("wait=soon")).is_err());
        assert!(wait_of(Some("token=x")).is_err());
    }
}
