//! What the `verify` and `naive` peers do with a request before they answer or store it:
//! read the body, check the `Stripe-Signature` header as Stripe documents it, and read the
//! event's id and type from the JSON. And the one accept loop every server here runs
//! ([`serve`]), so that they differ only in what they do with a request.
//!
//! The check: the header is a comma-separated list of `key=value` items; `t` is the unix
//! timestamp and each `v1` a candidate signature (there are several while a secret is being
//! rolled); other keys are ignored. The expected signature is HMAC-SHA256, keyed with the UTF-8
//! bytes of the endpoint secret, over `"{t}.{body}"`. It is compared with each `v1` in constant
//! time (`hmac`'s `verify_slice`), and the timestamp must be within [`TOLERANCE_SECS`] of now.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::die;

/// Stripe's default tolerance between the signed timestamp and now.
pub const TOLERANCE_SECS: i64 = 300;

/// The largest body read; Stripe's events are far smaller.
pub const MAX_BODY: usize = 1 << 20;

/// Why a request is refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Stripe-Signature` header.
    NoSignature,
    /// The header is not `t=…,v1=…`.
    Malformed(&'static str),
    /// No `v1` signature matches the body.
    BadSignature,
    /// The timestamp is further than [`TOLERANCE_SECS`] from now, either way.
    OutsideTolerance(i64),
    /// The body is not a JSON object with string `id` and `type`.
    NotAnEvent(String),
    /// The body could not be read, or is larger than [`MAX_BODY`].
    Body,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSignature => write!(f, "no Stripe-Signature header"),
            Refusal::Malformed(why) => write!(f, "malformed Stripe-Signature: {why}"),
            Refusal::BadSignature => write!(f, "no v1 signature matches"),
            Refusal::OutsideTolerance(secs) => {
                write!(f, "timestamp is {secs} s from now (tolerance {TOLERANCE_SECS} s)")
            }
            Refusal::NotAnEvent(why) => write!(f, "not a Stripe event: {why}"),
            Refusal::Body => write!(f, "could not read the body (at most {MAX_BODY} bytes)"),
        }
    }
}

/// Checks signatures for one endpoint secret. The key is set once; each check clones it.
#[derive(Clone)]
pub struct Verifier {
    keyed: Hmac<Sha256>,
}

impl Verifier {
    /// A verifier for `secret` (its UTF-8 bytes are the HMAC key, `whsec_` prefix included).
    pub fn new(secret: &str) -> Verifier {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes a key of any length");
        Verifier { keyed }
    }

    /// Checks the `Stripe-Signature` header value against `body` at `now` (unix seconds).
    pub fn verify(&self, header: &[u8], body: &[u8], now: i64) -> Result<(), Refusal> {
        let header = std::str::from_utf8(header).map_err(|_| Refusal::Malformed("not UTF-8"))?;
        let mut timestamp = None;
        let mut candidates: Vec<[u8; 32]> = Vec::new();
        for item in header.split(',') {
            let Some((key, value)) = item.trim().split_once('=') else { continue };
            match key {
                "t" => timestamp = Some(value),
                "v1" => {
                    let mut sig = [0u8; 32];
                    // A v1 that is not 64 hex digits cannot match; skip it.
                    if hex::decode_to_slice(value, &mut sig).is_ok() {
                        candidates.push(sig);
                    }
                }
                _ => {}
            }
        }
        let t_text = timestamp.ok_or(Refusal::Malformed("no t="))?;
        if t_text.is_empty() || !t_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refusal::Malformed("t= is not unix seconds"));
        }
        let t: i64 = t_text.parse().map_err(|_| Refusal::Malformed("t= is out of range"))?;
        if candidates.is_empty() {
            return Err(Refusal::Malformed("no v1= of 64 hex digits"));
        }

        let mut mac = self.keyed.clone();
        mac.update(t_text.as_bytes());
        mac.update(b".");
        mac.update(body);
        if !candidates.iter().any(|sig| mac.clone().verify_slice(sig).is_ok()) {
            return Err(Refusal::BadSignature);
        }
        let off = now.saturating_sub(t);
        if off.saturating_abs() > TOLERANCE_SECS {
            return Err(Refusal::OutsideTolerance(off));
        }
        Ok(())
    }
}

/// The fields of an event the peers read. Borrowed where the JSON needs no unescaping; the
/// rest of the body is parsed (so malformed JSON is refused) but not kept.
#[derive(Debug, Deserialize)]
pub struct Event<'a> {
    /// `evt_…`
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// e.g. `payment_intent.succeeded`
    #[serde(borrow, rename = "type")]
    pub kind: Cow<'a, str>,
}

/// Parses the event in `body`.
pub fn parse_event(body: &[u8]) -> Result<Event<'_>, Refusal> {
    let event: Event<'_> =
        serde_json::from_slice(body).map_err(|e| Refusal::NotAnEvent(e.to_string()))?;
    if event.id.is_empty() {
        return Err(Refusal::NotAnEvent("empty id".to_owned()));
    }
    Ok(event)
}

/// A verified request: its raw body and the event id read from it.
#[derive(Debug)]
pub struct Verified {
    /// The body as received.
    pub body: Bytes,
    /// The event's `id`.
    pub event_id: String,
    /// The event's `type`.
    pub kind: String,
}

/// Reads the body of `req`, verifies its signature at the current time and parses the event.
pub async fn read_verified(
    req: Request<Incoming>,
    verifier: &Verifier,
) -> Result<Verified, Refusal> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await.map_err(|_| Refusal::Body)?.to_bytes();
    let header = parts.headers.get("stripe-signature").ok_or(Refusal::NoSignature)?;
    verifier.verify(header.as_bytes(), &body, crate::unix_now())?;
    let event = parse_event(&body)?;
    let (event_id, kind) = (event.id.into_owned(), event.kind.into_owned());
    Ok(Verified { body, event_id, kind })
}

/// A `text/plain` response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The answer to a refused request: 400 with the reason.
pub fn refused(why: &Refusal) -> Response<Full<Bytes>> {
    text(StatusCode::BAD_REQUEST, format!("{why}\n"))
}

/// Accepts connections on `listen` until SIGTERM or SIGINT and serves each with `handle`:
/// HTTP/1.1 with keep-alive and TCP_NODELAY, as reconciled serves. `name` prefixes the
/// messages on stderr.
pub async fn serve<H, F>(name: &str, listen: &str, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let listener =
        TcpListener::bind(listen).await.unwrap_or_else(|e| die(&format!("bind {listen}: {e}")));
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    eprintln!("{name}: listening on http://{listen}");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{name}: accept: {e}");
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sign_v1, signature_header, token, Template, DEFAULT_SECRET};

    const NOW: i64 = 1_700_000_000;

    fn signed(ts: i64) -> (Vec<u8>, String) {
        let body = Template::new("payment_intent.succeeded", ts).body(&token(7, 1));
        let header = signature_header(ts, &sign_v1(DEFAULT_SECRET.as_bytes(), ts, &body));
        (body, header)
    }

    #[test]
    fn accepts_what_the_load_generator_signs() {
        let (body, header) = signed(NOW);
        let v = Verifier::new(DEFAULT_SECRET);
        assert_eq!(v.verify(header.as_bytes(), &body, NOW + 10), Ok(()));
        let event = parse_event(&body).unwrap();
        assert!(event.id.starts_with("evt_3"));
        assert_eq!(event.kind, "payment_intent.succeeded");
    }

    #[test]
    fn accepts_any_matching_v1_and_ignores_other_schemes() {
        let (body, header) = signed(NOW);
        let good = header.split_once("v1=").unwrap().1;
        let zeros = "0".repeat(64);
        let rolled = format!("t={NOW},v1={zeros},v0=abc,v1={good}");
        assert_eq!(Verifier::new(DEFAULT_SECRET).verify(rolled.as_bytes(), &body, NOW), Ok(()));
    }

    #[test]
    fn refuses_a_wrong_secret_a_changed_body_and_a_stale_or_future_timestamp() {
        let (body, header) = signed(NOW);
        let v = Verifier::new(DEFAULT_SECRET);
        let other = Verifier::new("whsec_other");
        assert_eq!(other.verify(header.as_bytes(), &body, NOW), Err(Refusal::BadSignature));
        let mut changed = body.clone();
        changed[10] ^= 1;
        assert_eq!(v.verify(header.as_bytes(), &changed, NOW), Err(Refusal::BadSignature));
        assert_eq!(
            v.verify(header.as_bytes(), &body, NOW + 301),
            Err(Refusal::OutsideTolerance(301))
        );
        assert_eq!(
            v.verify(header.as_bytes(), &body, NOW - 301),
            Err(Refusal::OutsideTolerance(-301))
        );
        assert_eq!(v.verify(header.as_bytes(), &body, NOW + 300), Ok(()));
    }

    #[test]
    fn refuses_malformed_headers_and_bodies() {
        let (body, header) = signed(NOW);
        let v = Verifier::new(DEFAULT_SECRET);
        let good = header.split_once("v1=").unwrap().1;
        for bad in [
            format!("v1={good}"),
            format!("t=,v1={good}"),
            format!("t=-5,v1={good}"),
            format!("t={NOW}"),
            format!("t={NOW},v1=xyz"),
        ] {
            assert!(
                matches!(v.verify(bad.as_bytes(), &body, NOW), Err(Refusal::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_event(b"{\"id\": 1, \"type\": \"x\"}"),
            Err(Refusal::NotAnEvent(_))
        ));
        assert!(matches!(parse_event(b"{\"id\": \"evt_1\"}"), Err(Refusal::NotAnEvent(_))));
        assert!(matches!(parse_event(b"{\"id\": \"evt_1\", "), Err(Refusal::NotAnEvent(_))));
        assert_eq!(
            parse_event(b"{\"type\": \"a.b\", \"id\": \"evt_1\", \"x\": [1]}").unwrap().id,
            "evt_1"
        );
    }
}
