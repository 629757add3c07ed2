//! Routing and the webhook handler.
//!
//! `POST /webhooks/{endpoint}` reads the body within the limits, verifies the raw bytes,
//! hands the row to the store and answers only after the commit: 200 stored or duplicate,
//! 400 refused (short reason, never a secret), 404, 405, 408, 413, 503.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use super::{AppState, Served};
use crate::metrics::RequestResult;
use crate::provider::ProviderKind;
use crate::store::{FailureRecord, NewRow, FAILURE_BODY_PREFIX};

type Reply = Response<Full<Bytes>>;

const WEBHOOK_PREFIX: &str = "/webhooks/";
/// At most one WARN line per this many milliseconds for refused requests; the rest go to
/// DEBUG. Every refusal is still recorded in the failure table.
const REFUSAL_WARN_INTERVAL_MS: i64 = 10_000;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The 200 answer each provider expects for a stored or duplicate notification.
fn ack(kind: ProviderKind, duplicate: bool) -> Reply {
    let (content_type, body) = kind.acknowledgement(duplicate);
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

fn unavailable(reason: &'static str) -> Reply {
    let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, reason);
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

pub(super) async fn handle(
    state: Arc<AppState>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    let path = req.uri().path();
    let reply = if let Some(name) = path.strip_prefix(WEBHOOK_PREFIX) {
        match state.endpoint(name) {
            None => text(StatusCode::NOT_FOUND, "unknown endpoint\n"),
            Some(_) if req.method() != Method::POST => method_not_allowed("POST"),
            Some(served) => {
                let started = std::time::Instant::now();
                let (reply, result) = webhook(&state, &served, remote, req).await;
                let seconds = started.elapsed().as_secs_f64();
                state.metrics.request(&served.registered.name, result, seconds);
                reply
            }
        }
    } else {
        match path {
            "/healthz" | "/readyz"
                if req.method() != Method::GET && req.method() != Method::HEAD =>
            {
                method_not_allowed("GET, HEAD")
            }
            "/healthz" if state.store.is_dead() => unavailable("store writer stopped\n"),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                match tokio::time::timeout(state.limits.request_timeout, state.store.probe()).await
                {
                    Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %crate::error::error_chain(&e), "readiness probe failed");
                        unavailable("store not writable\n")
                    }
                    Err(_) => unavailable("store did not answer in time\n"),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    };
    Ok(reply)
}

async fn webhook(
    state: &AppState,
    served: &Served,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> (Reply, RequestResult) {
    let registered = &served.registered;
    let (endpoint_name, provider) = (&registered.name, &registered.provider);
    let kind = provider.kind();
    let trust = &registered.endpoint.trust;
    if let Err(refusal) =
        super::trust::check(trust, served.auth.as_ref(), remote.ip(), req.headers())
    {
        tracing::debug!(endpoint = %endpoint_name, %remote, reason = refusal.code(), "request refused");
        state.metrics.verification_failure(endpoint_name, refusal.code());
        state.store.record_failure(FailureRecord {
            at_ms: crate::time::now_ms(),
            endpoint: endpoint_name.clone(),
            remote_addr: remote.to_string(),
            reason: refusal.code(),
            detail: refusal.reason().trim_end().to_owned(),
            body_len: 0,
            body_prefix: Bytes::new(),
        });
        let status = match refusal {
            super::trust::Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            super::trust::Refusal::Forbidden => StatusCode::FORBIDDEN,
        };
        let mut resp = text(status, refusal.reason());
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"reconciled\""),
            );
        }
        return (resp, RequestResult::rejected);
    }
    let limits = &state.limits;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return (text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"), RequestResult::rejected);
    }

    let (parts, body) = req.into_parts();
    let max = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let body = match tokio::time::timeout(limits.request_timeout, Limited::new(body, max).collect())
        .await
    {
        Err(_) => {
            let reply = text(StatusCode::REQUEST_TIMEOUT, "body not received in time\n");
            return (reply, RequestResult::rejected);
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return (
                text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
                RequestResult::rejected,
            )
        }
        Ok(Err(_)) => {
            return (
                text(StatusCode::BAD_REQUEST, "body could not be read\n"),
                RequestResult::rejected,
            )
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };

    let now_ms = crate::time::now_ms();
    let now = now_ms.div_euclid(1000);
    let accepted = match provider.accept(&parts.headers, &body, now).await {
        Ok(a) => a,
        Err(rejection) => {
            let detail = rejection.to_string();
            let last = &state.last_refusal_warning;
            let previous = last.load(std::sync::atomic::Ordering::Relaxed);
            if now_ms.saturating_sub(previous) >= REFUSAL_WARN_INTERVAL_MS
                && last
                    .compare_exchange(
                        previous,
                        now_ms,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(endpoint = %endpoint_name, %remote, reason = rejection.code(), "notification refused: {detail} (more within 10 s are logged at debug level; see `reconciled failures`)");
            } else {
                tracing::debug!(endpoint = %endpoint_name, %remote, reason = rejection.code(), "notification refused: {detail}");
            }
            state.metrics.verification_failure(endpoint_name, rejection.code());
            state.store.record_failure(FailureRecord {
                at_ms: now_ms,
                endpoint: endpoint_name.clone(),
                remote_addr: remote.to_string(),
                reason: rejection.code(),
                detail: detail.clone(),
                body_len: body.len(),
                body_prefix: body.slice(..body.len().min(FAILURE_BODY_PREFIX)),
            });
            if rejection.is_temporary() {
                let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, format!("{detail}\n"));
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("30"));
                return (resp, RequestResult::unavailable);
            }
            return (text(StatusCode::BAD_REQUEST, format!("{detail}\n")), RequestResult::rejected);
        }
    };

    crate::failpoint::failpoint("ingest_after_verify");
    // For the INFO line after the commit; the key itself moves to the store.
    let event_id = tracing::enabled!(tracing::Level::INFO).then(|| accepted.dedup_key.clone());
    #[cfg_attr(feature = "test-ack-before-commit", allow(unused_variables))]
    let event = event_id.as_deref().unwrap_or_default();
    let row = NewRow {
        endpoint: endpoint_name.clone(),
        provider: kind,
        dedup_key: accepted.dedup_key,
        event_type: accepted.event_type,
        received_at_ms: now_ms,
        remote_addr: remote.to_string(),
        headers_json: accepted.headers_json,
        body_len: body.len(),
        body: crate::store::body::pack(&body),
        // A store shared by several daemons orders each payment's rows from the moment they
        // are stored; a body the worker cannot read has none (it is marked dead then).
        payment_key: if state.store.is_shared() {
            provider.parse(&body).ok().map(|n| n.payment_id.unwrap_or(n.event_id))
        } else {
            None
        },
        source: crate::domain::Source::Webhook,
    };
    // Test-only and broken on purpose: acknowledge first, store a little later.
    #[cfg(feature = "test-ack-before-commit")]
    {
        let store = state.store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = store.insert(row).await;
        });
        return (ack(kind, false), RequestResult::stored);
    }
    #[cfg_attr(feature = "test-ack-before-commit", allow(unreachable_code))]
    match tokio::time::timeout(limits.request_timeout, state.store.insert(row)).await {
        Ok(Ok(stored)) if stored.is_duplicate() => {
            tracing::info!(
                endpoint = %endpoint_name,
                provider = %kind,
                event = %event,
                inbox_id = stored.id,
                deliveries = stored.delivery_count,
                "duplicate: already stored"
            );
            (ack(kind, true), RequestResult::duplicate)
        }
        Ok(Ok(stored)) => {
            tracing::info!(
                endpoint = %endpoint_name,
                provider = %kind,
                event = %event,
                inbox_id = stored.id,
                "stored"
            );
            crate::failpoint::failpoint("ingest_after_commit");
            state.wake.notify_one();
            (ack(kind, false), RequestResult::stored)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %crate::error::error_chain(&e), endpoint = %endpoint_name, "notification not stored; answered 503");
            (unavailable("store unavailable, retry later\n"), RequestResult::unavailable)
        }
        Err(_) => {
            tracing::error!(endpoint = %endpoint_name, "store did not commit in time; answered 503");
            (unavailable("store unavailable, retry later\n"), RequestResult::unavailable)
        }
    }
}
