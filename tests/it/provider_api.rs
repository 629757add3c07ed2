//! Local HTTPS fakes of the providers' APIs that the daemon asks, so that its "ask the
//! provider" features are tested without the internet. Both serve the test-only certificate for
//! 127.0.0.1 (signed by `fixtures/paypal/test-only-ca.pem`, see [`crate::tls`]), record what
//! they are asked, and can be told to fail or to answer late.
//!
//! - [`FakeStripe`] plays Stripe's REST API, the read-only parts: `GET /v1/events` and
//!   `GET /v1/payment_intents/{id}`, as Stripe documents them (API reference: Events, List all
//!   events; Pagination; Errors). Secret-key auth by `Authorization: Bearer` or HTTP basic with
//!   the key as user; lists newest first, with `limit` (1 to 100, default 10), the cursors
//!   `starting_after` and `ending_before` (one at a time), `created[gt|gte|lt|lte]`, `type`
//!   with its `*` wildcard and `types[]` (at most 20, not with `type`); an unknown cursor or
//!   object is `resource_missing`; errors are `{"error":{"type",...}}` objects, a 429 has the
//!   code `rate_limit` and a 5xx the type `api_error`. Each listed event is the JSON text it was given,
//!   byte for byte: the list is built by concatenation, never re-serialised.
//! - [`FakePaypal`] plays PayPal's OAuth 2.0 client-credentials token endpoint and its
//!   webhook-signature verification (`POST /v1/notifications/verify-webhook-signature`), as
//!   PayPal documents them (Authentication; Webhooks, Verify webhook signature): tokens that
//!   expire and can be revoked, `VALIDATION_ERROR` for a malformed request, and `SUCCESS` only
//!   for a transmission it recorded, whose `webhook_event` is the text PayPal sent byte for
//!   byte. Like the real service, it answers `FAILURE` to a client that parsed and
//!   re-serialised the event (other key order, spacing or number formatting), and to a forged
//!   body sent with a genuine transmission's headers.
//! - [`forge_crc32`] makes such a forged body: PayPal's signature covers only the CRC-32 of a
//!   body, so a different body with the same CRC-32 passes a check that trusts the signature
//!   alone.
//!
//! What they do not model they refuse loudly rather than ignore: Stripe's `expand[]` and
//! `delivery_success` get a 400 that names them. PayPal's recorded body is compared without its
//! outer whitespace (a file's final newline), which no JSON value in a request can carry.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use ring::rand::SecureRandom as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::tls::{acceptor, fixture_path};

// ---------------------------------------------------------------------------------------------
// The server both fakes run on.

/// One request as a fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// The path as sent (not percent-decoded).
    pub path: String,
    /// The raw query string, without the `?` (empty when there is none).
    pub query: String,
    /// The query's pairs, percent-decoded, in order.
    pub query_pairs: Vec<(String, String)>,
    /// The request's headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The status answered; 0 while the request is still being answered.
    pub status: u16,
}

/// A request as a fake's handler sees it.
struct Req {
    method: Method,
    path: String,
    query_pairs: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

/// A JSON answer.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Answer {
    fn json(status: u16, body: impl Into<String>) -> Answer {
        Answer { status, headers: Vec::new(), body: body.into() }
    }
}

/// One provider's behaviour.
trait Provider: Send + Sync + 'static {
    /// Sees every request as it arrives, before anything else.
    fn arrived(&self, _path: &str) {}
    /// The answer to a request that `fail_next` makes fail.
    fn fault(&self, status: u16) -> Answer;
    /// The answer to any other request.
    fn answer(&self, req: &Req) -> Answer;
    /// Headers on every answer (request ids).
    fn stamp(&self) -> Vec<(&'static str, String)>;
}

/// What a test asked for: failures and delays, taken by requests in arrival order.
#[derive(Default)]
struct Queue {
    /// `(requests left, (status, Retry-After))`.
    fail: Option<(usize, (u16, Option<u64>))>,
    /// `(requests left, delay)`.
    delay: Option<(usize, Duration)>,
    log: Vec<Recorded>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Shared {
    fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        assert!((100..=599).contains(&status), "fail_next: {status} is not an HTTP status");
        self.queue.lock().unwrap().fail = (n > 0).then_some((n, (status, retry_after)));
    }

    fn delay_next(&self, n: usize, delay: Duration) {
        self.queue.lock().unwrap().delay = (n > 0).then_some((n, delay));
    }
}

/// Takes one request's share of a countdown.
fn take<T: Copy>(slot: &mut Option<(usize, T)>) -> Option<T> {
    let (left, value) = slot.as_mut()?;
    let value = *value;
    *left -= 1;
    if *left == 0 {
        *slot = None;
    }
    Some(value)
}

/// Counts a request in flight while it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `provider` over HTTPS (HTTP/1.1) on a new port of 127.0.0.1: returns the base URL
/// and the accept task, whose abort closes every connection too.
async fn serve(provider: Arc<dyn Provider>, shared: Arc<Shared>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("https://{}", listener.local_addr().unwrap());
    let acceptor = acceptor();
    let task = tokio::spawn(async move {
        // Owned here, so aborting this task aborts the connections' tasks as well.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            while connections.try_join_next().is_some() {}
            let (acceptor, shared, provider) = (acceptor.clone(), shared.clone(), provider.clone());
            connections.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (shared, provider) = (shared.clone(), provider.clone());
                        async move { Ok::<_, Infallible>(handle(&shared, &*provider, req).await) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (base_url, task)
}

async fn handle(
    shared: &Shared,
    provider: &dyn Provider,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let _in_flight = InFlight::enter(shared);
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let query_pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let path = parts.uri.path().to_owned();
    provider.arrived(&path);
    // Failures and delays go to requests in the order they arrive, before anything is checked.
    let (index, fault, delay) = {
        let mut queue = shared.queue.lock().unwrap();
        let fault = take(&mut queue.fail);
        let delay = take(&mut queue.delay);
        queue.log.push(Recorded {
            method: parts.method.to_string(),
            path: path.clone(),
            query,
            query_pairs: query_pairs.clone(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect(),
            status: 0,
        });
        (queue.log.len() - 1, fault, delay)
    };
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let answer = match fault {
        Some((status, retry_after)) => {
            let mut answer = provider.fault(status);
            if let Some(secs) = retry_after {
                answer.headers.push(("retry-after", secs.to_string()));
            }
            answer
        }
        None => provider.answer(&Req {
            method: parts.method,
            path,
            query_pairs,
            headers: parts.headers,
            body,
        }),
    };
    shared.queue.lock().unwrap().log[index].status = answer.status;
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(answer.status).unwrap();
    let headers = resp.headers_mut();
    headers.insert("content-type", "application/json".parse().unwrap());
    for (name, value) in provider.stamp().into_iter().chain(answer.headers) {
        headers.insert(name, value.parse().unwrap());
    }
    resp
}

/// `n` random bytes as lower-case hex.
fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    ring::rand::SystemRandom::new().fill(&mut buf).unwrap();
    buf
}

/// The credentials of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The token of an `Authorization: Bearer` header.
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Stripe

/// A local Stripe API (events and PaymentIntents, read only); stopped when dropped.
pub struct FakeStripe {
    /// `https://127.0.0.1:PORT`: the API's base URL.
    pub base_url: String,
    stripe: Arc<Stripe>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct StripeEvent {
    id: String,
    created: i64,
    kind: String,
    raw: String,
}

struct Stripe {
    api_key: String,
    /// Oldest first, as added.
    events: Mutex<Vec<StripeEvent>>,
    payment_intents: Mutex<HashMap<String, String>>,
}

impl FakeStripe {
    /// Starts on a new port; only `api_key` is accepted.
    pub async fn start(api_key: &str) -> FakeStripe {
        let stripe = Arc::new(Stripe {
            api_key: api_key.to_owned(),
            events: Mutex::new(Vec::new()),
            payment_intents: Mutex::new(HashMap::new()),
        });
        let shared = Arc::new(Shared::default());
        let (base_url, task) = serve(stripe.clone(), shared.clone()).await;
        FakeStripe { base_url, stripe, shared, task }
    }

    /// Adds an event: its exact JSON text, listed byte for byte. Events are added in the order
    /// they happened: `created` never goes back.
    pub fn add_event(&self, raw_json: &str) {
        let value: Value = serde_json::from_str(raw_json)
            .unwrap_or_else(|e| panic!("add_event: not JSON ({e}): {raw_json}"));
        let id = value["id"].as_str().expect("add_event: the event has no string `id`");
        let created = value["created"].as_i64().expect("add_event: the event has no `created`");
        let kind = value["type"].as_str().expect("add_event: the event has no string `type`");
        let mut events = self.stripe.events.lock().unwrap();
        assert!(events.iter().all(|e| e.id != id), "add_event: {id} was added already");
        if let Some(last) = events.last() {
            assert!(
                created >= last.created,
                "add_event: {id} (created {created}) is older than {} (created {}): add events \
                 in the order they happened",
                last.id,
                last.created
            );
        }
        events.push(StripeEvent {
            id: id.to_owned(),
            created,
            kind: kind.to_owned(),
            raw: raw_json.to_owned(),
        });
    }

    /// Sets what `GET /v1/payment_intents/{id}` answers (the exact JSON text), replacing any
    /// earlier one.
    pub fn set_payment_intent(&self, id: &str, raw_json: &str) {
        serde_json::from_str::<&RawValue>(raw_json)
            .unwrap_or_else(|e| panic!("set_payment_intent: not JSON ({e}): {raw_json}"));
        self.stripe.payment_intents.lock().unwrap().insert(id.to_owned(), raw_json.to_owned());
    }

    /// The next `n` requests are answered `status` whatever they ask, before auth: a 429 is
    /// Stripe's `rate_limit` error, with `Retry-After` when given; a 5xx an `api_error`.
    pub fn fail_next(&self, n: usize, status: u16, retry_after_secs: Option<u64>) {
        self.shared.fail_next(n, status, retry_after_secs);
    }

    /// The next `n` requests are answered only after `delay`.
    pub fn delay_next(&self, n: usize, delay: Duration) {
        self.shared.delay_next(n, delay);
    }

    /// Every request received, failed ones too, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.queue.lock().unwrap().log.clone()
    }

    /// The most requests in flight at once so far.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// The CA that signed the fakes' certificate (an endpoint's `tls_ca_file`).
    pub fn ca_pem_path() -> String {
        fixture_path("test-only-ca.pem")
    }
}

/// Stripe's error object.
fn stripe_error(
    status: u16,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Answer {
    let mut error = serde_json::Map::new();
    if let Some(code) = code {
        error.insert("code".into(), code.into());
    }
    error.insert("message".into(), message.into());
    if let Some(param) = param {
        error.insert("param".into(), param.into());
    }
    error.insert("type".into(), kind.into());
    Answer::json(status, json!({ "error": error }).to_string())
}

fn invalid_request(message: &str, param: Option<&str>) -> Answer {
    stripe_error(400, "invalid_request_error", None, message, param)
}

fn resource_missing(kind: &str, id: &str, param: &str) -> Answer {
    let message = format!("No such {kind}: '{id}'");
    stripe_error(404, "invalid_request_error", Some("resource_missing"), &message, Some(param))
}

/// A key as Stripe shows it in errors: its prefix and its last 4 characters.
fn mask_key(key: &str) -> String {
    let prefix = match key.find('_') {
        Some(i) if i <= 3 => &key[..=i],
        _ => "",
    };
    let chars: Vec<char> = key.chars().collect();
    let tail: String = if chars.len() > prefix.len() + 4 {
        chars[chars.len() - 4..].iter().collect()
    } else {
        "".into()
    };
    format!("{prefix}****{tail}")
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(mut name) = name.strip_prefix(head) else { return false };
            loop {
                if wildcard_match(rest, name) {
                    return true;
                }
                let mut chars = name.chars();
                if chars.next().is_none() {
                    return false;
                }
                name = chars.as_str();
            }
        }
    }
}

/// The filters and cursor of `GET /v1/events`.
#[derive(Default)]
struct EventsQuery {
    limit: usize,
    starting_after: Option<String>,
    ending_before: Option<String>,
    /// `(operator, value)`: `eq`, `gt`, `gte`, `lt`, `lte`.
    created: Vec<(&'static str, i64)>,
    kind: Option<String>,
    kinds: Vec<String>,
}

impl EventsQuery {
    fn parse(pairs: &[(String, String)]) -> Result<EventsQuery, Answer> {
        let integer = |param: &str, value: &str| {
            value
                .parse::<i64>()
                .map_err(|_| invalid_request(&format!("Invalid integer: {value}"), Some(param)))
        };
        let mut q = EventsQuery { limit: 10, ..EventsQuery::default() };
        for (name, value) in pairs {
            match name.as_str() {
                "limit" => {
                    let limit = integer(name, value)?;
                    if limit < 1 {
                        return Err(invalid_request(
                            &format!(
                                "This value must be greater than or equal to 1 (it currently is \
                                 '{limit}')."
                            ),
                            Some("limit"),
                        ));
                    }
                    if limit > 100 {
                        return Err(invalid_request(
                            &format!(
                                "This value must be less than or equal to 100 (it currently is \
                                 '{limit}')."
                            ),
                            Some("limit"),
                        ));
                    }
                    q.limit = limit as usize;
                }
                "starting_after" if !value.is_empty() => q.starting_after = Some(value.clone()),
                "ending_before" if !value.is_empty() => q.ending_before = Some(value.clone()),
                "starting_after" | "ending_before" => {}
                "created" => q.created.push(("eq", integer(name, value)?)),
                "created[gt]" => q.created.push(("gt", integer(name, value)?)),
                "created[gte]" => q.created.push(("gte", integer(name, value)?)),
                "created[lt]" => q.created.push(("lt", integer(name, value)?)),
                "created[lte]" => q.created.push(("lte", integer(name, value)?)),
                "type" => q.kind = Some(value.clone()),
                _ if name == "types[]"
                    || name
                        .strip_prefix("types[")
                        .and_then(|n| n.strip_suffix(']'))
                        .is_some_and(|n| n.parse::<u32>().is_ok()) =>
                {
                    q.kinds.push(value.clone())
                }
                "delivery_success" | "expand[]" => {
                    return Err(invalid_request(
                        &format!("This fake Stripe does not model the parameter {name}."),
                        Some(name),
                    ))
                }
                _ => {
                    return Err(invalid_request(
                        &format!("Received unknown parameter: {name}"),
                        Some(name),
                    ))
                }
            }
        }
        if q.starting_after.is_some() && q.ending_before.is_some() {
            return Err(invalid_request(
                "You may only specify one of these parameters: ending_before, starting_after.",
                None,
            ));
        }
        if q.kinds.len() > 20 {
            return Err(invalid_request(
                &format!("You passed {} values for types; at most 20 are allowed.", q.kinds.len()),
                Some("types"),
            ));
        }
        if q.kind.is_some() && !q.kinds.is_empty() {
            return Err(invalid_request(
                "You may pass either type or types, but not both.",
                Some("types"),
            ));
        }
        Ok(q)
    }

    fn matches(&self, event: &StripeEvent) -> bool {
        let created = self.created.iter().all(|&(op, v)| match op {
            "eq" => event.created == v,
            "gt" => event.created > v,
            "gte" => event.created >= v,
            "lt" => event.created < v,
            _ => event.created <= v,
        });
        let kind = match &self.kind {
            Some(pattern) => wildcard_match(pattern, &event.kind),
            None => self.kinds.is_empty() || self.kinds.contains(&event.kind),
        };
        created && kind
    }
}

impl Stripe {
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Answer> {
        let presented = match (bearer_token(headers), basic_credentials(headers)) {
            (Some(token), _) => token,
            (None, Some((user, password))) if password.is_empty() => user,
            (None, Some((user, _))) => format!("{user}:"),
            (None, None) => {
                return Err(stripe_error(
                    401,
                    "invalid_request_error",
                    None,
                    "You did not provide an API key. You need to provide your API key in the \
                     Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
                     YOUR_SECRET_KEY').",
                    None,
                ))
            }
        };
        if presented == self.api_key {
            return Ok(());
        }
        let message = format!("Invalid API Key provided: {}", mask_key(&presented));
        let mut answer = stripe_error(401, "invalid_request_error", None, &message, None);
        answer.headers.push(("www-authenticate", "Basic realm=\"Stripe\"".into()));
        Err(answer)
    }

    fn list_events(&self, pairs: &[(String, String)]) -> Answer {
        let q = match EventsQuery::parse(pairs) {
            Ok(q) => q,
            Err(answer) => return answer,
        };
        let events = self.events.lock().unwrap();
        let cursor = |param: &str, id: &str| {
            events
                .iter()
                .position(|e| e.id == id)
                .ok_or_else(|| resource_missing("event", id, param))
        };
        // Indices of the matching events, in the paging direction, nearest first.
        let candidates: Vec<usize> = if let Some(id) = &q.ending_before {
            let at = match cursor("ending_before", id) {
                Ok(at) => at,
                Err(answer) => return answer,
            };
            (at + 1..events.len()).filter(|&i| q.matches(&events[i])).collect()
        } else {
            let end = match &q.starting_after {
                Some(id) => match cursor("starting_after", id) {
                    Ok(at) => at,
                    Err(answer) => return answer,
                },
                None => events.len(),
            };
            (0..end).rev().filter(|&i| q.matches(&events[i])).collect()
        };
        let has_more = candidates.len() > q.limit;
        let mut page: Vec<usize> = candidates.into_iter().take(q.limit).collect();
        if q.ending_before.is_some() {
            page.reverse(); // newest first
        }
        let mut body = String::from("{\"object\":\"list\",\"url\":\"/v1/events\",\"has_more\":");
        body.push_str(if has_more { "true" } else { "false" });
        body.push_str(",\"data\":[");
        for (n, &i) in page.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(&events[i].raw);
        }
        body.push_str("]}");
        Answer::json(200, body)
    }

    fn payment_intent(&self, id: &str, pairs: &[(String, String)]) -> Answer {
        if let Some((name, _)) = pairs.first() {
            let message = if name.starts_with("expand") {
                format!("This fake Stripe does not model the parameter {name}.")
            } else {
                format!("Received unknown parameter: {name}")
            };
            return invalid_request(&message, Some(name));
        }
        match self.payment_intents.lock().unwrap().get(id) {
            Some(raw) => Answer::json(200, raw.clone()),
            None => resource_missing("payment_intent", id, "intent"),
        }
    }
}

impl Provider for Stripe {
    fn fault(&self, status: u16) -> Answer {
        match status {
            429 => stripe_error(
                429,
                "invalid_request_error",
                Some("rate_limit"),
                "Request rate limit exceeded. Learn more about rate limits in Stripe's \
                 documentation.",
                None,
            ),
            500..=599 => stripe_error(
                status,
                "api_error",
                None,
                "An unknown error occurred. Retry the request later.",
                None,
            ),
            _ => stripe_error(
                status,
                "invalid_request_error",
                None,
                &format!("A failure the test asked for (HTTP {status})."),
                None,
            ),
        }
    }

    fn answer(&self, req: &Req) -> Answer {
        if let Err(answer) = self.authenticate(&req.headers) {
            return answer;
        }
        let intent = req
            .path
            .strip_prefix("/v1/payment_intents/")
            .filter(|id| !id.is_empty() && !id.contains('/'));
        match (&req.method, req.path.as_str(), intent) {
            (&Method::GET, "/v1/events", _) => self.list_events(&req.query_pairs),
            (&Method::GET, _, Some(id)) => {
                let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
                self.payment_intent(&id, &req.query_pairs)
            }
            _ => invalid_request_404(&req.method, &req.path),
        }
    }

    fn stamp(&self) -> Vec<(&'static str, String)> {
        vec![("request-id", format!("req_{}", random_hex(7)))]
    }
}

fn invalid_request_404(method: &Method, path: &str) -> Answer {
    let message = format!("Unrecognized request URL ({method}: {path}).");
    stripe_error(404, "invalid_request_error", None, &message, None)
}

// ---------------------------------------------------------------------------------------------
// PayPal

/// A local PayPal API (OAuth token, webhook-signature verification); stopped when dropped.
pub struct FakePaypal {
    /// `https://127.0.0.1:PORT`: the API's base URL.
    pub base_url: String,
    paypal: Arc<Paypal>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakePaypal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What PayPal sent: a transmission's headers and body.
struct Delivery {
    transmission_time: String,
    cert_url: String,
    auth_algo: String,
    transmission_sig: String,
    raw_body: Vec<u8>,
}

struct PaypalState {
    token_lifetime: u64,
    /// Valid tokens and when each expires; revoking forgets them.
    tokens: HashMap<String, Instant>,
    deliveries: HashMap<String, Delivery>,
    token_fetches: usize,
    verify_calls: usize,
}

struct Paypal {
    client_id: String,
    client_secret: String,
    webhook_id: String,
    state: Mutex<PaypalState>,
}

const TOKEN_PATH: &str = "/v1/oauth2/token";
const VERIFY_PATH: &str = "/v1/notifications/verify-webhook-signature";

impl FakePaypal {
    /// Starts on a new port, for one REST app (`client_id`, `client_secret`) with one webhook.
    pub async fn start(client_id: &str, client_secret: &str, webhook_id: &str) -> FakePaypal {
        let paypal = Arc::new(Paypal {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            webhook_id: webhook_id.to_owned(),
            state: Mutex::new(PaypalState {
                token_lifetime: 32400,
                tokens: HashMap::new(),
                deliveries: HashMap::new(),
                token_fetches: 0,
                verify_calls: 0,
            }),
        });
        let shared = Arc::new(Shared::default());
        let (base_url, task) = serve(paypal.clone(), shared.clone()).await;
        FakePaypal { base_url, paypal, shared, task }
    }

    /// `expires_in` of the tokens issued from now on (32400 at first).
    pub fn set_token_lifetime(&self, secs: u64) {
        self.paypal.state.lock().unwrap().token_lifetime = secs;
    }

    /// Every token issued so far is refused from now on.
    pub fn revoke_tokens(&self) {
        self.paypal.state.lock().unwrap().tokens.clear();
    }

    /// Requests to the token endpoint so far, whatever they were answered.
    pub fn token_fetches(&self) -> usize {
        self.paypal.state.lock().unwrap().token_fetches
    }

    /// Requests to the verification endpoint so far, whatever they were answered.
    pub fn verify_calls(&self) -> usize {
        self.paypal.state.lock().unwrap().verify_calls
    }

    /// Records a transmission PayPal sent: its headers and its body. Verifying it succeeds only
    /// with the same header values and this body's JSON text (outer whitespace aside).
    pub fn record_delivery(
        &self,
        transmission_id: &str,
        transmission_time: &str,
        cert_url: &str,
        auth_algo: &str,
        transmission_sig: &str,
        raw_body: &[u8],
    ) {
        let delivery = Delivery {
            transmission_time: transmission_time.to_owned(),
            cert_url: cert_url.to_owned(),
            auth_algo: auth_algo.to_owned(),
            transmission_sig: transmission_sig.to_owned(),
            raw_body: raw_body.trim_ascii().to_vec(),
        };
        let mut state = self.paypal.state.lock().unwrap();
        state.deliveries.insert(transmission_id.to_owned(), delivery);
    }

    /// The next `n` requests (either endpoint) are answered `status` with PayPal's error JSON.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.fail_next(n, status, None);
    }

    /// The next `n` requests are answered only after `delay`.
    pub fn delay_next(&self, n: usize, delay: Duration) {
        self.shared.delay_next(n, delay);
    }

    /// The CA that signed the fakes' certificate (an endpoint's `tls_ca_file`).
    pub fn ca_pem_path() -> String {
        fixture_path("test-only-ca.pem")
    }
}

/// The body of `POST /v1/notifications/verify-webhook-signature`.
#[derive(Deserialize)]
struct VerifyRequest<'a> {
    auth_algo: Option<String>,
    cert_url: Option<String>,
    transmission_id: Option<String>,
    transmission_sig: Option<String>,
    transmission_time: Option<String>,
    webhook_id: Option<String>,
    #[serde(borrow)]
    webhook_event: Option<&'a RawValue>,
}

/// PayPal's REST error, with `details` (an array of `{field, location, issue}`).
fn paypal_error(status: u16, name: &str, message: &str, details: Option<Value>) -> Answer {
    let mut error = serde_json::Map::new();
    error.insert("name".into(), name.into());
    error.insert("message".into(), message.into());
    if let Some(details) = details {
        error.insert("details".into(), details);
    }
    error.insert("debug_id".into(), random_hex(7)[..13].into());
    Answer::json(status, Value::Object(error).to_string())
}

fn validation_error(details: Value) -> Answer {
    paypal_error(400, "VALIDATION_ERROR", "Invalid request - see details", Some(details))
}

impl Paypal {
    fn issue_token(&self, req: &Req) -> Answer {
        let credentials = basic_credentials(&req.headers);
        let expected = (self.client_id.clone(), self.client_secret.clone());
        if credentials.as_ref() != Some(&expected) {
            return Answer::json(
                401,
                r#"{"error":"invalid_client","error_description":"Client Authentication failed"}"#,
            );
        }
        let grant = url::form_urlencoded::parse(&req.body)
            .find(|(k, _)| k == "grant_type")
            .map(|(_, v)| v.into_owned());
        match grant.as_deref() {
            Some("client_credentials") => {}
            None => {
                return Answer::json(
                    400,
                    r#"{"error":"unsupported_grant_type","error_description":"Grant Type is NULL"}"#,
                )
            }
            Some(_) => {
                return Answer::json(
                    400,
                    r#"{"error":"unsupported_grant_type","error_description":"unsupported grant_type"}"#,
                )
            }
        }
        let token = format!(
            "A21AA{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(60))
        );
        let mut state = self.state.lock().unwrap();
        let lifetime = state.token_lifetime;
        state.tokens.insert(token.clone(), Instant::now() + Duration::from_secs(lifetime));
        let now = jiff::Timestamp::now();
        let nonce = format!(
            "{}-{}",
            jiff::Timestamp::from_second(now.as_second()).unwrap(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32))
        );
        let body = json!({
            "scope": "https://uri.paypal.com/services/applications/webhooks",
            "access_token": token,
            "token_type": "Bearer",
            "app_id": "APP-80W284485P519543T",
            "expires_in": lifetime,
            "nonce": nonce,
        });
        Answer::json(200, body.to_string())
    }

    fn token_valid(&self, headers: &HeaderMap) -> bool {
        let Some(token) = bearer_token(headers) else { return false };
        let state = self.state.lock().unwrap();
        state.tokens.get(&token).is_some_and(|&expires| Instant::now() < expires)
    }

    fn verify(&self, req: &Req) -> Answer {
        if !self.token_valid(&req.headers) {
            return Answer::json(
                401,
                r#"{"error":"invalid_token","error_description":"Token signature verification failed"}"#,
            );
        }
        let Ok(request) = serde_json::from_slice::<VerifyRequest>(&req.body) else {
            return validation_error(json!([
                { "field": "/", "location": "body", "issue": "MALFORMED_REQUEST_JSON",
                  "description": "The request JSON is not well formed." }
            ]));
        };
        let fields = [
            ("auth_algo", request.auth_algo.is_some()),
            ("cert_url", request.cert_url.is_some()),
            ("transmission_id", request.transmission_id.is_some()),
            ("transmission_sig", request.transmission_sig.is_some()),
            ("transmission_time", request.transmission_time.is_some()),
            ("webhook_id", request.webhook_id.is_some()),
            ("webhook_event", request.webhook_event.is_some()),
        ];
        let mut details: Vec<Value> = fields
            .iter()
            .filter(|(_, present)| !present)
            .map(|(field, _)| {
                json!({ "field": format!("/{field}"), "location": "body",
                        "issue": "MISSING_REQUIRED_PARAMETER",
                        "description": "A required field / parameter is missing." })
            })
            .collect();
        if request.webhook_event.is_some_and(|e| !e.get().starts_with('{')) {
            details.push(json!({ "field": "/webhook_event", "location": "body",
                                 "issue": "INVALID_PARAMETER_TYPE",
                                 "description": "The value of a field is of an invalid type." }));
        }
        if !details.is_empty() {
            return validation_error(Value::Array(details));
        }
        let state = self.state.lock().unwrap();
        let genuine =
            request.transmission_id.as_ref().and_then(|id| state.deliveries.get(id)).is_some_and(
                |d| {
                    request.transmission_time.as_deref() == Some(d.transmission_time.as_str())
                        && request.cert_url.as_deref() == Some(d.cert_url.as_str())
                        && request.auth_algo.as_deref() == Some(d.auth_algo.as_str())
                        && request.transmission_sig.as_deref() == Some(d.transmission_sig.as_str())
                        && request.webhook_id.as_deref() == Some(self.webhook_id.as_str())
                        && request.webhook_event.is_some_and(|e| e.get().as_bytes() == d.raw_body)
                },
            );
        let status = if genuine { "SUCCESS" } else { "FAILURE" };
        Answer::json(200, format!("{{\"verification_status\":\"{status}\"}}"))
    }
}

impl Provider for Paypal {
    fn arrived(&self, path: &str) {
        let mut state = self.state.lock().unwrap();
        match path {
            TOKEN_PATH => state.token_fetches += 1,
            VERIFY_PATH => state.verify_calls += 1,
            _ => {}
        }
    }

    fn fault(&self, status: u16) -> Answer {
        match status {
            500..=599 => paypal_error(
                status,
                "INTERNAL_SERVICE_ERROR",
                "An internal service error has occurred.",
                None,
            ),
            429 => paypal_error(
                429,
                "RATE_LIMIT_REACHED",
                "Too many requests. Blocked due to rate limiting.",
                None,
            ),
            401 => paypal_error(
                401,
                "AUTHENTICATION_FAILURE",
                "Authentication failed due to invalid authentication credentials or a missing \
                 Authorization header.",
                None,
            ),
            403 => paypal_error(
                403,
                "NOT_AUTHORIZED",
                "Authorization failed due to insufficient permissions.",
                None,
            ),
            _ => paypal_error(
                status,
                "VALIDATION_ERROR",
                &format!("A failure the test asked for (HTTP {status})."),
                None,
            ),
        }
    }

    fn answer(&self, req: &Req) -> Answer {
        match (&req.method, req.path.as_str()) {
            (_, TOKEN_PATH) | (_, VERIFY_PATH) => {}
            _ => {
                return paypal_error(
                    404,
                    "RESOURCE_NOT_FOUND",
                    "The specified resource does not exist.",
                    None,
                )
            }
        }
        if req.method != Method::POST {
            return paypal_error(
                405,
                "METHOD_NOT_SUPPORTED",
                "The server does not implement the requested HTTP method.",
                None,
            );
        }
        if req.path == TOKEN_PATH {
            self.issue_token(req)
        } else {
            self.verify(req)
        }
    }

    fn stamp(&self) -> Vec<(&'static str, String)> {
        vec![("paypal-debug-id", random_hex(7)[..13].to_owned())]
    }
}

// ---------------------------------------------------------------------------------------------
// CRC-32 forgery

/// `template` with each byte of `marker` (a run of at least 48 ASCII `0`s that occurs in it
/// exactly once, inside a JSON string) set to `0` or `1`, so that the result's CRC-32 (IEEE, as
/// `crc32fast`) is `target`.
///
/// For inputs of one length the CRC-32 is affine over GF(2): flipping byte i of the marker
/// from `0` to `1` XORs a fixed 32-bit delta into it, so choosing which bytes to flip is a
/// system of 32 linear equations, solved here by Gaussian elimination.
pub fn forge_crc32(template: &[u8], marker: &[u8], target: u32) -> Vec<u8> {
    assert!(
        marker.len() >= 48 && marker.iter().all(|&b| b == b'0'),
        "forge_crc32: the marker must be a run of at least 48 ASCII '0's"
    );
    let positions: Vec<usize> = template
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    let [start] = positions[..] else {
        panic!("forge_crc32: the marker occurs {} times in the template, not once", positions.len())
    };
    let mut base = template.to_vec();
    let base_crc = crc32fast::hash(&base);
    let n = marker.len();
    let words = n.div_ceil(64);
    // basis[bit]: a combination of flips whose delta has `bit` as its highest set bit.
    let mut basis: Vec<Option<(u32, Vec<u64>)>> = vec![None; 32];
    for i in 0..n {
        base[start + i] = b'1';
        let mut delta = crc32fast::hash(&base) ^ base_crc;
        base[start + i] = b'0';
        let mut combo = vec![0u64; words];
        combo[i / 64] |= 1 << (i % 64);
        for bit in (0..32).rev() {
            if delta >> bit & 1 == 0 {
                continue;
            }
            match &basis[bit] {
                Some((d, c)) => {
                    delta ^= d;
                    combo.iter_mut().zip(c).for_each(|(a, b)| *a ^= b);
                }
                None => {
                    basis[bit] = Some((delta, combo));
                    break;
                }
            }
        }
    }
    let mut want = target ^ base_crc;
    let mut flips = vec![0u64; words];
    for bit in (0..32).rev() {
        if want >> bit & 1 == 0 {
            continue;
        }
        let Some((d, c)) = &basis[bit] else {
            panic!(
                "forge_crc32: no setting of the {n} marker bytes gives CRC-32 {target:#010x}: \
                 the flips span too few bits; use a longer marker"
            )
        };
        want ^= d;
        flips.iter_mut().zip(c).for_each(|(a, b)| *a ^= b);
    }
    for i in 0..n {
        if flips[i / 64] >> (i % 64) & 1 == 1 {
            base[start + i] = b'1';
        }
    }
    assert_eq!(crc32fast::hash(&base), target, "forge_crc32: the solution does not hold");
    base
}

// ---------------------------------------------------------------------------------------------
// Tests of the fakes themselves

const STRIPE_KEY: &str = "rk_test_51FakeRestrictedKey0000wxyz";

fn client() -> reqwest::Client {
    let ca = std::fs::read(FakeStripe::ca_pem_path()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

/// `(status, headers, body)` of a GET with Stripe's bearer auth.
async fn stripe_get(
    client: &reqwest::Client,
    stripe: &FakeStripe,
    path_and_query: &str,
    key: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client
        .get(format!("{}{path_and_query}", stripe.base_url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

/// A page of a Stripe list, its elements as their raw JSON text.
#[derive(Deserialize)]
struct Page<'a> {
    object: &'a str,
    url: &'a str,
    has_more: bool,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

fn page_ids(page: &Page<'_>) -> Vec<String> {
    page.data
        .iter()
        .map(|raw| {
            let v: Value = serde_json::from_str(raw.get()).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// `(has_more, ids)` of a `GET /v1/events` page, checking every element is the text added.
async fn events_page(
    client: &reqwest::Client,
    stripe: &FakeStripe,
    query: &str,
    added: &HashMap<String, String>,
) -> (bool, Vec<String>) {
    let (status, _, body) =
        stripe_get(client, stripe, &format!("/v1/events?{query}"), STRIPE_KEY).await;
    assert_eq!(status, 200, "{query}: {body}");
    let page: Page = serde_json::from_str(&body).unwrap();
    assert_eq!((page.object, page.url), ("list", "/v1/events"));
    let ids = page_ids(&page);
    for (raw, id) in page.data.iter().zip(&ids) {
        assert_eq!(raw.get(), added[id], "{id} is not the text added");
    }
    (page.has_more, ids)
}

fn evt(i: usize) -> String {
    format!("evt_{i:02}")
}

fn evts(range: impl Iterator<Item = usize>) -> Vec<String> {
    range.map(evt).collect()
}

/// 25 events, created ascending two to a second, of three types, each written with its own
/// odd spacing and number formatting.
fn add_events(stripe: &FakeStripe) -> HashMap<String, String> {
    let mut added = HashMap::new();
    for i in 0..25 {
        let kind =
            ["payment_intent.succeeded", "charge.refunded", "payment_intent.payment_failed"][i % 3];
        let created = 1_790_000_000 + i / 2;
        let pad = " ".repeat(i % 4);
        let raw = format!(
            "{{\"id\":{pad}\"{}\",\n\t\"object\" : \"event\",\"created\":{created},{pad}\"type\":\"{kind}\",\
             \"data\":{{ \"object\":{{\"amount\": 1.{i}0E3 , \"note\":\"caf\\u00e9 {i}\"}} }} }}",
            evt(i)
        );
        stripe.add_event(&raw);
        added.insert(evt(i), raw);
    }
    added
}

#[tokio::test]
async fn stripe_events_pages_both_ways_byte_for_byte() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    let added = add_events(&stripe);
    let client = client();

    // Back in time from the newest, 10 at a time.
    let mut seen = Vec::new();
    let mut query = "limit=10".to_owned();
    let mut more_flags = Vec::new();
    loop {
        let (has_more, ids) = events_page(&client, &stripe, &query, &added).await;
        more_flags.push(has_more);
        query = format!("limit=10&starting_after={}", ids.last().unwrap());
        seen.extend(ids);
        if !has_more {
            break;
        }
    }
    assert_eq!(more_flags, [true, true, false]);
    assert_eq!(seen, evts((0..25).rev()), "newest first, each once");

    // Forward in time from the oldest: each page holds the 10 closest newer, newest first.
    let (has_more, ids) =
        events_page(&client, &stripe, "limit=10&ending_before=evt_00", &added).await;
    assert!(has_more);
    assert_eq!(ids, evts((1..=10).rev()));
    let (has_more, ids) =
        events_page(&client, &stripe, "limit=10&ending_before=evt_10", &added).await;
    assert!(has_more);
    assert_eq!(ids, evts((11..=20).rev()));
    let (has_more, ids) =
        events_page(&client, &stripe, "limit=10&ending_before=evt_20", &added).await;
    assert!(!has_more);
    assert_eq!(ids, evts((21..=24).rev()));

    // The default limit is 10; limit and the cursor may be percent-encoded.
    let (has_more, ids) = events_page(&client, &stripe, "", &added).await;
    assert!(has_more);
    assert_eq!(ids, evts((15..25).rev()));
    let (has_more, ids) =
        events_page(&client, &stripe, "limit=3&starting_after=evt%5F03", &added).await;
    assert!(!has_more);
    assert_eq!(ids, evts((0..3).rev()));

    // Every request was recorded, with its query and the answer.
    let requests = stripe.requests();
    assert_eq!(requests.len(), 8);
    assert!(requests
        .iter()
        .all(|r| r.method == "GET" && r.path == "/v1/events" && r.status == 200));
    assert_eq!(requests[1].query, format!("limit=10&starting_after={}", evt(15)));
    assert_eq!(
        requests[7].query_pairs,
        [("limit".to_owned(), "3".to_owned()), ("starting_after".to_owned(), evt(3))]
    );
    let auth = requests[0].headers.iter().find(|(k, _)| k == "authorization").unwrap();
    assert_eq!(auth.1, format!("Bearer {STRIPE_KEY}"));
}

#[tokio::test]
async fn stripe_events_filters_apply_before_paging() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    let added = add_events(&stripe);
    let client = client();
    let created = |i: usize| 1_790_000_000 + i / 2;

    // created[gte]: evt_20 and evt_21 share the second.
    let (has_more, ids) =
        events_page(&client, &stripe, &format!("created%5Bgte%5D={}", created(21)), &added).await;
    assert!(!has_more);
    assert_eq!(ids, evts((20..25).rev()));
    let (has_more, ids) = events_page(
        &client,
        &stripe,
        &format!("created[gt]={}&created[lte]={}&limit=3", created(3), created(9)),
        &added,
    )
    .await;
    assert!(has_more);
    assert_eq!(ids, evts([9, 8, 7].into_iter()));

    // A wildcard type, paged: the cursor event's position counts, not whether it matches.
    let pi: Vec<usize> = (0..25).rev().filter(|i| i % 3 != 1).collect();
    let (has_more, ids) =
        events_page(&client, &stripe, "type=payment_intent.*&limit=5", &added).await;
    assert!(has_more);
    assert_eq!(ids, evts(pi[..5].iter().copied()));
    let (has_more, ids) = events_page(
        &client,
        &stripe,
        "type=payment_intent.*&limit=100&starting_after=evt_16",
        &added,
    )
    .await;
    assert!(!has_more);
    assert_eq!(ids, evts(pi.iter().copied().filter(|&i| i < 16)));
    let (_, ids) = events_page(&client, &stripe, "type=*.refunded", &added).await;
    assert_eq!(ids, evts((0..25).rev().filter(|i| i % 3 == 1).take(10)));
    let (_, ids) = events_page(&client, &stripe, "type=payment_intent", &added).await;
    assert!(ids.is_empty(), "no wildcard, no prefix match");

    // types[]: exact names, several at once; ending_before still takes the closest.
    let (has_more, ids) = events_page(
        &client,
        &stripe,
        "types[]=charge.refunded&types[]=payment_intent.payment_failed&limit=4&ending_before=evt_00",
        &added,
    )
    .await;
    assert!(has_more);
    assert_eq!(ids, evts([5, 4, 2, 1].into_iter()));
    let (_, ids) =
        events_page(&client, &stripe, "types%5B0%5D=charge.refunded&limit=2", &added).await;
    assert_eq!(ids, evts([22, 19].into_iter()));
}

#[tokio::test]
async fn stripe_errors_as_documented() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    add_events(&stripe);
    let client = client();
    let error =
        |body: &str| -> Value { serde_json::from_str::<Value>(body).unwrap()["error"].clone() };

    for (cursor, id) in [("starting_after", "evt_nope"), ("ending_before", "evt_gone")] {
        let (status, _, body) =
            stripe_get(&client, &stripe, &format!("/v1/events?{cursor}={id}"), STRIPE_KEY).await;
        assert_eq!(status, 404);
        assert_eq!(
            error(&body),
            json!({"type": "invalid_request_error", "code": "resource_missing",
                   "message": format!("No such event: '{id}'"), "param": cursor})
        );
    }

    let (status, headers, body) =
        stripe_get(&client, &stripe, "/v1/events", "rk_test_wrongkey1234").await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("request-id"));
    assert_eq!(
        error(&body),
        json!({"type": "invalid_request_error", "message": "Invalid API Key provided: rk_****1234"})
    );
    let resp = client.get(format!("{}/v1/events", stripe.base_url)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body = resp.text().await.unwrap();
    assert!(error(&body)["message"]
        .as_str()
        .unwrap()
        .starts_with("You did not provide an API key"));
    // HTTP basic with the key as user and no password, as Stripe's curl examples do.
    let resp = client
        .get(format!("{}/v1/events?limit=1", stripe.base_url))
        .basic_auth(STRIPE_KEY, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let bad = [
        ("/v1/events?starting_after=evt_03&ending_before=evt_01", None),
        ("/v1/events?limit=0", Some("limit")),
        ("/v1/events?limit=101", Some("limit")),
        ("/v1/events?limit=ten", Some("limit")),
        ("/v1/events?created[gte]=yesterday", Some("created[gte]")),
        ("/v1/events?type=charge.*&types[]=charge.refunded", Some("types")),
        ("/v1/events?colour=blue", Some("colour")),
    ];
    for (path, param) in bad {
        let (status, _, body) = stripe_get(&client, &stripe, path, STRIPE_KEY).await;
        assert_eq!(status, 400, "{path}");
        let e = error(&body);
        assert_eq!(e["type"], "invalid_request_error", "{path}");
        assert_eq!(e["param"].as_str(), param, "{path}: {body}");
    }
    let types: String = (0..21).map(|i| format!("types[]=t.{i}&")).collect();
    let (status, _, body) =
        stripe_get(&client, &stripe, &format!("/v1/events?{types}"), STRIPE_KEY).await;
    assert_eq!((status, error(&body)["param"].as_str()), (400, Some("types")));

    // PaymentIntents: the stored text, the latest one set, or resource_missing.
    let first = r#"{"id":"pi_3Q0","object":"payment_intent","amount":1000,"status":"processing"}"#;
    let latest = "{\"id\":\"pi_3Q0\", \"object\":\"payment_intent\",\n \"amount\":1000.0,\"status\":\"succeeded\"}";
    stripe.set_payment_intent("pi_3Q0", first);
    stripe.set_payment_intent("pi_3Q0", latest);
    let (status, _, body) =
        stripe_get(&client, &stripe, "/v1/payment_intents/pi_3Q0", STRIPE_KEY).await;
    assert_eq!((status, body.as_str()), (200, latest));
    let (status, _, body) =
        stripe_get(&client, &stripe, "/v1/payment_intents/pi_404", STRIPE_KEY).await;
    assert_eq!(status, 404);
    assert_eq!(
        error(&body),
        json!({"type": "invalid_request_error", "code": "resource_missing",
               "message": "No such payment_intent: 'pi_404'", "param": "intent"})
    );

    let (status, _, body) = stripe_get(&client, &stripe, "/v1/charges?limit=3", STRIPE_KEY).await;
    assert_eq!(status, 404);
    assert_eq!(
        error(&body),
        json!({"type": "invalid_request_error",
               "message": "Unrecognized request URL (GET: /v1/charges)."})
    );
    let resp = client
        .post(format!("{}/v1/events", stripe.base_url))
        .bearer_auth(STRIPE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("(POST: /v1/events)"));
}

#[tokio::test]
async fn stripe_failures_delays_and_concurrency() {
    let stripe = FakeStripe::start(STRIPE_KEY).await;
    add_events(&stripe);
    let client = client();

    // A 429 comes before auth, with Retry-After; the request after it is served.
    stripe.fail_next(1, 429, Some(2));
    let (status, headers, body) = stripe_get(&client, &stripe, "/v1/events", "rk_test_wrong").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"].to_str().unwrap(), "2");
    let e = &serde_json::from_str::<Value>(&body).unwrap()["error"];
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("invalid_request_error"), Some("rate_limit"))
    );
    let (status, _, _) = stripe_get(&client, &stripe, "/v1/events", STRIPE_KEY).await;
    assert_eq!(status, 200);

    stripe.fail_next(2, 500, None);
    for _ in 0..2 {
        let (status, headers, body) = stripe_get(&client, &stripe, "/v1/events", STRIPE_KEY).await;
        assert_eq!(status, 500);
        assert!(!headers.contains_key("retry-after"));
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "api_error");
    }
    let statuses: Vec<u16> = stripe.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200, 500, 500]);
    assert_eq!(stripe.max_concurrent(), 1);

    // A delay holds the answer back; the next request is not delayed.
    stripe.delay_next(1, Duration::from_millis(2000));
    let started = Instant::now();
    let (status, _, _) = stripe_get(&client, &stripe, "/v1/events?limit=1", STRIPE_KEY).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(2000), "{:?}", started.elapsed());
    let started = Instant::now();
    stripe_get(&client, &stripe, "/v1/events?limit=1", STRIPE_KEY).await;
    assert!(started.elapsed() < Duration::from_millis(2000), "{:?}", started.elapsed());

    // Three delayed requests at once are in flight together.
    stripe.delay_next(3, Duration::from_millis(600));
    let started = Instant::now();
    let answers = futures_util::future::join_all(
        (0..3).map(|_| stripe_get(&client, &stripe, "/v1/events?limit=2", STRIPE_KEY)),
    )
    .await;
    assert!(answers.iter().all(|(status, _, _)| *status == 200));
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(stripe.max_concurrent(), 3, "in flight together");
}

// ---- PayPal

const CLIENT_ID: &str = "AeFakeClientId-0123456789";
const CLIENT_SECRET: &str = "EFakeClientSecret-9876543210";
const WEBHOOK_ID: &str = "1JE4291016473214C";
const CERT_URL: &str =
    "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77";
const TRANSMISSION_ID: &str = "69cd13f0-d67a-11e5-baa3-778b53f4ae55";
const TRANSMISSION_TIME: &str = "2026-11-20T10:14:06Z";
const TRANSMISSION_SIG: &str = "lmI95Jx3Y9nhR5SJWlHVIWpg4AgFk7n9bCHSRxbrd8A9zrhdu2rMyFrmz+Zjh3s3boXB07VXCXUZy/UFzUlnGJn0wDugt7FlSvdKeIJenLRemUxYCPVoEZzg9VFNqOa48gMkvF+XTpxBeUx/kWy6B5cp7GkT2+pOowfRK7OaynuxUoKW3JcMWw272VKjLTtTAShncla7tGF+55rxyt2KNZIIqxNMJ48RDZheGU5w1npu9dZHnPgTXB9iomeVRoD8O/jhRpnKsGrDschyNdkeh81BJJMH4Ctc6lnCCquoP/GzCzz33MMsNdid7vL/NIWaCsekQpW26FpWPi/tfj8nLA==";

fn paypal_body() -> Vec<u8> {
    crate::harness::fixture_in("paypal", "PAYMENT.CAPTURE.COMPLETED.json")
}

async fn fetch_token(
    client: &reqwest::Client,
    paypal: &FakePaypal,
    id: &str,
    secret: &str,
) -> (u16, Value) {
    let resp = client
        .post(format!("{}/v1/oauth2/token", paypal.base_url))
        .basic_auth(id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.unwrap()).unwrap())
}

async fn token(client: &reqwest::Client, paypal: &FakePaypal) -> String {
    let (status, body) = fetch_token(client, paypal, CLIENT_ID, CLIENT_SECRET).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The header fields of a verification request for a transmission.
fn verify_head(transmission_id: &str, webhook_id: &str) -> Value {
    json!({
        "auth_algo": "SHA256withRSA",
        "cert_url": CERT_URL,
        "transmission_id": transmission_id,
        "transmission_sig": TRANSMISSION_SIG,
        "transmission_time": TRANSMISSION_TIME,
        "webhook_id": webhook_id,
    })
}

/// A verification request: `head`'s fields, then `event` spliced in as it is (text, not a
/// value) as `webhook_event`.
fn splice_event(head: &Value, event: &[u8]) -> Vec<u8> {
    let mut request = head.to_string().into_bytes();
    request.pop(); // the closing brace
    request.extend_from_slice(b",\"webhook_event\":");
    request.extend_from_slice(event);
    request.push(b'}');
    request
}

fn verify_request(transmission_id: &str, webhook_id: &str, event: &[u8]) -> Vec<u8> {
    splice_event(&verify_head(transmission_id, webhook_id), event)
}

async fn verify(
    client: &reqwest::Client,
    paypal: &FakePaypal,
    token: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let resp = client
        .post(format!("{}/v1/notifications/verify-webhook-signature", paypal.base_url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.unwrap()).unwrap())
}

async fn verification(
    client: &reqwest::Client,
    paypal: &FakePaypal,
    token: &str,
    body: Vec<u8>,
) -> String {
    let (status, answer) = verify(client, paypal, token, body).await;
    assert_eq!(status, 200, "{answer}");
    answer["verification_status"].as_str().unwrap().to_owned()
}

async fn started_paypal() -> FakePaypal {
    let paypal = FakePaypal::start(CLIENT_ID, CLIENT_SECRET, WEBHOOK_ID).await;
    paypal.record_delivery(
        TRANSMISSION_ID,
        TRANSMISSION_TIME,
        CERT_URL,
        "SHA256withRSA",
        TRANSMISSION_SIG,
        &paypal_body(),
    );
    paypal
}

#[tokio::test]
async fn paypal_tokens() {
    let paypal = started_paypal().await;
    assert_eq!(FakePaypal::ca_pem_path(), FakeStripe::ca_pem_path());
    let client = client();

    let (status, body) = fetch_token(&client, &paypal, CLIENT_ID, CLIENT_SECRET).await;
    assert_eq!(status, 200);
    assert!(body["access_token"].as_str().unwrap().starts_with("A21AA"));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 32400);
    assert_eq!(body["app_id"], "APP-80W284485P519543T");
    assert!(body["nonce"].as_str().unwrap().len() > 20);
    assert!(body["scope"].as_str().unwrap().contains("webhooks"));
    let (status, body) = fetch_token(&client, &paypal, CLIENT_ID, "not-the-secret").await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": "invalid_client", "error_description": "Client Authentication failed"})
    );
    let resp = client
        .post(format!("{}/v1/oauth2/token", paypal.base_url))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .body("grant_type=password")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("\"unsupported_grant_type\""));

    // Revoked tokens, then expired ones, are refused; new ones work.
    let old = token(&client, &paypal).await;
    assert_eq!(
        verification(
            &client,
            &paypal,
            &old,
            verify_request(TRANSMISSION_ID, WEBHOOK_ID, &paypal_body())
        )
        .await,
        "SUCCESS"
    );
    paypal.revoke_tokens();
    let (status, body) =
        verify(&client, &paypal, &old, verify_request(TRANSMISSION_ID, WEBHOOK_ID, &paypal_body()))
            .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_token");
    paypal.set_token_lifetime(1);
    let (_, body) = fetch_token(&client, &paypal, CLIENT_ID, CLIENT_SECRET).await;
    assert_eq!(body["expires_in"], 1);
    let short = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        verification(
            &client,
            &paypal,
            &short,
            verify_request(TRANSMISSION_ID, WEBHOOK_ID, &paypal_body())
        )
        .await,
        "SUCCESS"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = verify(
        &client,
        &paypal,
        &short,
        verify_request(TRANSMISSION_ID, WEBHOOK_ID, &paypal_body()),
    )
    .await;
    assert_eq!(status, 401);

    // Failures and delays, in PayPal's error format.
    paypal.fail_next(1, 503);
    let (status, body) = fetch_token(&client, &paypal, CLIENT_ID, CLIENT_SECRET).await;
    assert_eq!(status, 503);
    assert_eq!(body["name"], "INTERNAL_SERVICE_ERROR");
    assert_eq!(body["message"], "An internal service error has occurred.");
    assert!(body["debug_id"].is_string());
    paypal.delay_next(1, Duration::from_millis(300));
    let started = Instant::now();
    token(&client, &paypal).await;
    assert!(started.elapsed() >= Duration::from_millis(300));

    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (7, 4));
}

#[tokio::test]
async fn paypal_verifies_only_the_text_it_sent() {
    let paypal = started_paypal().await;
    let client = client();
    let token = token(&client, &paypal).await;
    let body = paypal_body();
    let (c, p, t) = (&client, &paypal, &token);
    let check = move |transmission_id: &str, webhook_id: &str, event: &[u8]| {
        verification(c, p, t, verify_request(transmission_id, webhook_id, event))
    };

    // The body as received, spliced in by concatenation (its trailing newline is whitespace
    // outside the value).
    assert_eq!(check(TRANSMISSION_ID, WEBHOOK_ID, &body).await, "SUCCESS");

    // The same event parsed and written out again: other spacing, other key order.
    let value: Value = serde_json::from_slice(&body).unwrap();
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    let compact = serde_json::to_vec(&value).unwrap();
    assert_ne!(pretty, body.trim_ascii());
    assert_eq!(check(TRANSMISSION_ID, WEBHOOK_ID, &pretty).await, "FAILURE");
    assert_eq!(check(TRANSMISSION_ID, WEBHOOK_ID, &compact).await, "FAILURE");

    // Another body, another transmission, another webhook, other headers.
    let other = String::from_utf8(body.clone()).unwrap().replace("\"25.00\"", "\"2500.00\"");
    assert_eq!(check(TRANSMISSION_ID, WEBHOOK_ID, other.as_bytes()).await, "FAILURE");
    assert_eq!(check("00000000-d67a-11e5-baa3-778b53f4ae55", WEBHOOK_ID, &body).await, "FAILURE");
    assert_eq!(check(TRANSMISSION_ID, "9XL90610J3647323C", &body).await, "FAILURE");
    for (field, value) in [
        ("cert_url", "https://api.paypal.com/v1/notifications/certs/CERT-other"),
        ("auth_algo", "SHA512withRSA"),
        ("transmission_time", "2026-11-20T10:14:07Z"),
        ("transmission_sig", "bG1JOTVKeDNZOW5oUjVTSldsSFZJV3Bn"),
    ] {
        let mut head = verify_head(TRANSMISSION_ID, WEBHOOK_ID);
        head[field] = value.into();
        let status = verification(&client, &paypal, &token, splice_event(&head, &body)).await;
        assert_eq!(status, "FAILURE", "{field}");
    }
    let head = verify_head(TRANSMISSION_ID, WEBHOOK_ID);
    assert_eq!(verification(&client, &paypal, &token, splice_event(&head, &body)).await, "SUCCESS");

    // Malformed requests.
    let (status, answer) = verify(&client, &paypal, &token, b"{\"auth_algo\":".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(answer["name"], "VALIDATION_ERROR");
    assert_eq!(answer["details"][0]["issue"], "MALFORMED_REQUEST_JSON");
    let mut missing: Value =
        serde_json::from_slice(&verify_request(TRANSMISSION_ID, WEBHOOK_ID, &body)).unwrap();
    missing.as_object_mut().unwrap().remove("transmission_sig");
    let (status, answer) =
        verify(&client, &paypal, &token, serde_json::to_vec(&missing).unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(answer["message"], "Invalid request - see details");
    assert_eq!(answer["details"][0]["field"], "/transmission_sig");
    let (status, _) =
        verify(&client, &paypal, &token, verify_request(TRANSMISSION_ID, WEBHOOK_ID, b"\"{}\""))
            .await;
    assert_eq!(status, 400);

    let (status, body) = verify(
        &client,
        &paypal,
        "A21AAnot-a-token",
        verify_request(TRANSMISSION_ID, WEBHOOK_ID, &body),
    )
    .await;
    assert_eq!(
        (status, &body["error_description"]),
        (401, &json!("Token signature verification failed"))
    );
    assert_eq!((paypal.token_fetches(), paypal.verify_calls()), (1, 15));
}

#[tokio::test]
async fn forged_body_has_the_genuine_crc32_and_still_fails_verification() {
    let genuine = paypal_body();
    let target = crc32fast::hash(&genuine);
    let marker = [b'0'; 64];
    let template =
        String::from_utf8(genuine.clone()).unwrap().replace("\"25.00\"", "\"2500.00\"").replace(
            "\"summary\": \"Payment completed for EUR 25.00 EUR\"",
            &format!("\"summary\": \"Payment completed for EUR 2500.00 EUR {}\"", "0".repeat(64)),
        );
    assert!(template.contains("2500.00 EUR 000"), "the fixture changed");
    let forged = forge_crc32(template.as_bytes(), &marker, target);
    assert_eq!(crc32fast::hash(&forged), target);
    assert_ne!(forged, genuine);
    let value: Value = serde_json::from_slice(&forged).unwrap();
    assert_eq!(value["resource"]["amount"]["value"], "2500.00");
    assert!(value["summary"].as_str().unwrap().ends_with(['0', '1']));

    // PayPal itself is not fooled: the body is not what it sent.
    let paypal = started_paypal().await;
    let client = client();
    let token = token(&client, &paypal).await;
    let request = verify_request(TRANSMISSION_ID, WEBHOOK_ID, &forged);
    assert_eq!(verification(&client, &paypal, &token, request).await, "FAILURE");
    let request = verify_request(TRANSMISSION_ID, WEBHOOK_ID, &genuine);
    assert_eq!(verification(&client, &paypal, &token, request).await, "SUCCESS");
}

#[test]
fn forge_crc32_reaches_any_target_with_48_marker_bytes() {
    let template = format!("{{\"note\":\"{}\",\"amount\":1}}", "0".repeat(48));
    for target in [0, u32::MAX, 0x1234_5678, crc32fast::hash(b"something else")] {
        let forged = forge_crc32(template.as_bytes(), &[b'0'; 48], target);
        assert_eq!(crc32fast::hash(&forged), target);
        assert_eq!(forged.len(), template.len());
        serde_json::from_slice::<Value>(&forged).unwrap();
    }
}

#[test]
#[should_panic(expected = "occurs 0 times")]
fn forge_crc32_wants_its_marker() {
    forge_crc32(b"{\"a\":\"b\"}", &[b'0'; 48], 0);
}

#[test]
fn wildcard_types_and_masked_keys() {
    assert!(wildcard_match("payment_intent.*", "payment_intent.succeeded"));
    assert!(wildcard_match("*.succeeded", "charge.succeeded"));
    assert!(wildcard_match("*", "anything"));
    assert!(!wildcard_match("payment_intent.*", "charge.succeeded"));
    assert!(!wildcard_match("charge", "charge.refunded"));
    assert_eq!(mask_key("rk_test_51Abcdwxyz"), "rk_****wxyz");
    assert_eq!(mask_key("abc"), "****");
    let set: HashSet<String> = (0..50).map(|_| random_hex(7)).collect();
    assert_eq!(set.len(), 50);
}
