//! The pull API of `kind = "pull"` sinks: fetch (leasing), ack, nack.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::{authorized, error, params, unauthorized, Admin, MAX_PULL};
use crate::deliver::{backoff, SinkConfig, Target};
use crate::store::Attempt;

/// Handles `/v1/outbox/{rest}`.
pub(super) async fn handle(
    admin: &Admin,
    rest: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let mut parts = rest.split('/');
    let name = parts.next().unwrap_or_default();
    let Some((sink, digest)) = admin.pulls.iter().find(|(s, _)| &*s.name == name) else {
        return error(StatusCode::NOT_FOUND, "no such pull sink");
    };
    if !authorized(&req, digest) {
        return unauthorized();
    }
    let Target::Pull { lease, .. } = &sink.target else {
        return error(StatusCode::NOT_FOUND, "no such pull sink");
    };
    match (req.method(), parts.next(), parts.next(), parts.next()) {
        (&Method::GET, None, None, None) => {
            let (wait, limit) = match params(req.uri().query(), &["wait", "limit"]) {
                Ok(p) => p,
                Err(why) => return error(StatusCode::BAD_REQUEST, &why),
            };
            fetch(admin, sink, *lease, wait, limit.unwrap_or(100).min(MAX_PULL)).await
        }
        (&Method::POST, Some(id), Some(verb @ ("ack" | "nack")), None) => {
            let Ok(id) = id.parse::<i64>() else {
                return error(StatusCode::BAD_REQUEST, "the action id is a number");
            };
            settle(admin, sink, id, verb == "ack").await
        }
        (_, None, None, None) => error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (_, Some(_), Some("ack" | "nack"), None) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
        }
        _ => error(StatusCode::NOT_FOUND, "no such path"),
    }
}

/// The oldest actions the sink is owed, leased; waits up to `wait` for one.
async fn fetch(
    admin: &Admin,
    sink: &SinkConfig,
    lease: Duration,
    wait: Duration,
    limit: usize,
) -> Response<Full<Bytes>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut decided = admin.decided.clone();
    loop {
        decided.mark_unchanged();
        let now = crate::time::now_ms();
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let owed = match admin.store.lease(&sink.name, now, limit, until).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(sink = %sink.name, error = %crate::error::error_chain(&e), "pull failed");
                return error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable, retry later");
            }
        };
        if !owed.is_empty() || tokio::time::Instant::now() >= deadline {
            let actions: Vec<serde_json::Value> = owed
                .iter()
                .map(|o| {
                    let envelope = crate::deliver::envelope(&o.action, now);
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&envelope).unwrap_or_default();
                    v["webhook_id"] = crate::deliver::webhook_id(&o.action.idempotency_key).into();
                    v
                })
                .collect();
            return super::json(StatusCode::OK, &serde_json::json!({ "actions": actions }));
        }
        // Retries fall due without a decision: look again at least once a second.
        tokio::select! {
            _ = decided.changed() => {}
            () = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_secs(1))) => {}
        }
    }
}

/// Acks (delivered) or nacks (due again after the sink's backoff) one action.
async fn settle(admin: &Admin, sink: &SinkConfig, id: i64, ack: bool) -> Response<Full<Bytes>> {
    let no_content = || {
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Full::new(Bytes::new()))
            .expect("valid")
    };
    let state = match admin.store.delivery_state(&sink.name, id).await {
        Ok(Some(state)) => state,
        Ok(None) => return error(StatusCode::NOT_FOUND, "this sink is owed no such action"),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable, retry later"),
    };
    let (current, attempts, created_at) = state;
    if current == "delivered" || (current == "dead" && !ack) {
        // An ack repeated (or a nack after an ack): it stays delivered.
        return no_content();
    }
    let now = crate::time::now_ms();
    let number = attempts + 1;
    let result = if ack {
        Ok(())
    } else {
        let delay = backoff(sink.retry_base, sink.retry_max, number, 0.5, None);
        let next = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let give_up =
            created_at + i64::try_from(sink.give_up_after.as_millis()).unwrap_or(i64::MAX);
        Err(("nacked by the consumer".to_owned(), (next <= give_up).then_some(next)))
    };
    let attempt = Attempt { number, at: now, duration_ms: 0, result };
    let result = attempt.metric();
    match admin.store.record_attempt(&sink.name, id, attempt).await {
        Ok(recorded) => {
            if recorded {
                admin.metrics.delivery(&sink.name, result);
            }
            no_content()
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable, retry later"),
    }
}
