//! Fuzz entry points: one function per target, each driving the real verification and parsing
//! code of one provider with arbitrary bytes. `fuzz/` (cargo-fuzz, libFuzzer) calls them with
//! coverage feedback; `tests/fuzz_corpus.rs` replays the committed corpus through them on
//! stable Rust. Not part of the daemon's interface, hence `#[doc(hidden)]` in `lib.rs`.
//!
//! # Input
//! Targets that read headers take `HEAD NUL BODY`: the bytes before the first NUL are header
//! lines (`name: value`, split at `\n`, a trailing `\r` dropped), the rest is the raw body.
//! Lines that are not a valid header are skipped, as a real HTTP parser would have refused
//! them; at most [`MAX_HEADER_LINES`] are read. Without a NUL the whole input is the body.
//! [`request`] builds such inputs. `paypal_cert_url` takes the URL alone.
//!
//! Everything runs with fixed key material (the test secrets below, the test-only PayPal
//! certificate in `fixtures/paypal/`) and a fixed clock, [`NOW`], so a run can be replayed.
//!
//! # What counts as a bug
//! A panic: in the adapters, or in the checks here of what they promise:
//! - a refusal's reason is short ([`MAX_REASON_LEN`]), never holds a secret, and nothing is
//!   "temporary" when no download is configured;
//! - a body signed correctly for the endpoint is refused, if at all, only as a body;
//! - what `accept` records for the inbox and what `parse` later reads from the same bytes
//!   agree: the dedup key is the notification's event id (for IPN, plus its digest) and the
//!   event type its raw type;
//! - the kept headers are a JSON object without `authorization`;
//! - a certificate URL that is accepted is accepted again in its parsed form.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;

use crate::config::Config;
use crate::endpoint::{Endpoints, Registered};
use crate::provider::{self, paypal, paypal_ipn, stripe, worldpay, Accepted, Rejection};

/// The fixed clock (unix seconds, November 2026): inside the test PayPal certificate's
/// validity, and the `t=` of the Stripe seeds.
pub const NOW: i64 = 1_795_000_000;
/// The Stripe endpoint's secrets: an old one still live during a roll, and the current one.
pub const STRIPE_SECRETS: [&str; 2] = ["whsec_fuzz_old_secret", "whsec_fuzz_test_secret"];
/// The Access Worldpay endpoint's `(key id, secret)` pairs.
pub const WORLDPAY_KEYS: [(&str, &str); 2] = [("1", "wp-fuzz-key-one"), ("2", "wp-fuzz-key-two")];
/// The signed Adflex endpoint's signature header.
pub const ADFLEX_HEADER: &str = "x-adflex-signature";
/// The signed Adflex endpoint's secret.
pub const ADFLEX_SECRET: &str = "adflex-fuzz-secret";
/// The PayPal endpoint's webhook id (part of what PayPal signs).
pub const PAYPAL_WEBHOOK_ID: &str = "WH-FUZZ-7TS40946B2409871";
/// The PayPal signing certificate (pinned) and its test-only private key, under the crate.
pub const PAYPAL_CERT: &str = "fixtures/paypal/test-only-signing.pem";
/// The private key of [`PAYPAL_CERT`], for signing seeds.
pub const PAYPAL_KEY: &str = "fixtures/paypal/test-only-signing.key.pem";
/// The hosts `paypal_cert_url` allows: PayPal's, and one with a port.
pub const CERT_HOSTS: &[&str] = &[
    "api.paypal.com",
    "api-m.paypal.com",
    "api.sandbox.paypal.com",
    "api-m.sandbox.paypal.com",
    "127.0.0.1:8443",
];
/// Header lines read from one input; hyper refuses requests with more than 100 headers.
pub const MAX_HEADER_LINES: usize = 100;
/// The longest refusal reason that still counts as short (it is sent back, logged at WARN
/// and stored with the failure record).
pub const MAX_REASON_LEN: usize = 1024;

/// Every secret of the fixture, for the check that no reason repeats one.
const SECRETS: &[&str] = &[
    STRIPE_SECRETS[0],
    STRIPE_SECRETS[1],
    WORLDPAY_KEYS[0].1,
    WORLDPAY_KEYS[1].1,
    ADFLEX_SECRET,
    "fuzz-basic-auth-password",
];

/// How far an input got, so that the replay test can tell that the seeds reach the code
/// behind verification (a harness that refuses everything would fuzz nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reached {
    /// Refused by the verifier or identifier, with the rejection's code.
    Refused(&'static str),
    /// Accepted for the inbox, but not read into a notification.
    Accepted,
    /// Accepted and read into a canonical notification.
    Notified,
}

/// The endpoints every target runs against, built once through the real config loader and
/// the daemon's registry.
struct Fixture {
    endpoints: Endpoints,
}

impl Fixture {
    fn endpoint(&self, name: &str) -> &Registered {
        self.endpoints.get(name).expect("fixture endpoint")
    }
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let text = format!(
        r#"
[[endpoint]]
name = "stripe"
provider = "stripe"
secrets = ["{s0}", "{s1}"]
tolerance_secs = 300

[[endpoint]]
name = "paypal"
provider = "paypal"
webhook_id = "{PAYPAL_WEBHOOK_ID}"
certs = ["{PAYPAL_CERT}"]

[[endpoint]]
name = "paypal-ipn"
provider = "paypal-ipn"
receiver_email = "shop@example.com"
receiver_id = "S8XGHLYDW9T3S"

[[endpoint]]
name = "worldpay"
provider = "worldpay"
keys = {{ "{k0}" = "{v0}", "{k1}" = "{v1}" }}

[[endpoint]]
name = "worldpay-xml"
provider = "worldpay-xml"
basic_auth = {{ user = "wp", password = "fuzz-basic-auth-password" }}
merchant_codes = ["SHOPEUR", "SHOPGBP", "SHOPJPY"]

[[endpoint]]
name = "adflex"
provider = "adflex"
signature_header = "{ADFLEX_HEADER}"
secrets = ["{ADFLEX_SECRET}"]

[[endpoint]]
name = "adflex-open"
provider = "adflex"
allow_from = ["127.0.0.1"]
"#,
        s0 = STRIPE_SECRETS[0],
        s1 = STRIPE_SECRETS[1],
        k0 = WORLDPAY_KEYS[0].0,
        v0 = WORLDPAY_KEYS[0].1,
        k1 = WORLDPAY_KEYS[1].0,
        v1 = WORLDPAY_KEYS[1].1,
    );
    // Relative paths (the pinned certificate) are read beside this file: the crate's root.
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz.toml");
    let config = Config::from_toml(&text, &source).expect("the fuzz fixture's config is valid");
    let endpoints = Endpoints::new(&config.endpoints).expect("pinned-only, no HTTPS client");
    Fixture { endpoints }
});

/// Builds an input for the header-reading targets: `name: value` lines, a NUL, the body.
pub fn request(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\n").as_bytes());
    }
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// Splits an input into its header part and its body at the first NUL.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[], data),
    }
}

/// The header lines of an input, as the HTTP layer would hand them on.
fn headers(head: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in head.split(|&b| b == b'\n').take(MAX_HEADER_LINES) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = HeaderName::from_bytes(&line[..colon]);
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (name, value) {
            map.append(name, value);
        }
    }
    map
}

/// Runs the real (async) dispatch. With no certificate download configured nothing in it
/// waits, so one poll finishes it; anything else is a bug.
fn accept(endpoint: &Registered, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, Rejection> {
    let future = pin!(endpoint.provider.accept(headers, body, NOW));
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("accept waited, with no certificate download configured"),
    }
}

/// The checks on a refusal: short, no secret (unless the input itself holds it), and not
/// temporary.
fn check_refusal(rejection: &Rejection, input: &[u8]) {
    let reason = rejection.to_string();
    assert!(
        reason.len() <= MAX_REASON_LEN,
        "{} reason is {} bytes long: {}…",
        rejection.code(),
        reason.len(),
        reason.chars().take(120).collect::<String>()
    );
    // The input is searched only when the reason holds a secret: searching every input would
    // cost more than the target itself (libFuzzer traces every comparison).
    for secret in SECRETS.iter().filter(|s| reason.contains(**s)) {
        let in_input = input.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(in_input, "{} reason holds a secret", rejection.code());
    }
    assert!(!rejection.is_temporary(), "temporary refusal with nothing to download: {reason}");
}

/// The checks on an accepted request: a dedup key, and kept headers that are a JSON object
/// without credentials.
fn check_accepted(accepted: &Accepted) {
    assert!(!accepted.dedup_key.is_empty(), "empty dedup key");
    let kept: serde_json::Value =
        serde_json::from_str(&accepted.headers_json).expect("kept headers are JSON");
    let kept = kept.as_object().expect("kept headers are a JSON object");
    assert!(!kept.contains_key("authorization"), "kept headers hold the authorization");
}

/// Accepts (as given) and then parses one request on one endpoint, with the common checks.
/// `agree` checks what accept recorded against the notification parse read.
fn run(
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    input: &[u8],
    agree: impl Fn(&Accepted, &provider::Notification),
) -> Reached {
    let fixture = &*FIXTURE;
    let endpoint = fixture.endpoint(name);
    let accepted = match accept(endpoint, headers, body) {
        Ok(a) => a,
        Err(rejection) => {
            check_refusal(&rejection, input);
            // The worker reads stored bodies with parse; it must cope with any bytes too.
            let _ = endpoint.provider.parse(body);
            return Reached::Refused(rejection.code());
        }
    };
    check_accepted(&accepted);
    match endpoint.provider.parse(body) {
        Ok(n) => {
            agree(&accepted, &n);
            Reached::Notified
        }
        Err(_) => Reached::Accepted,
    }
}

/// The dedup key is the event id and the event type the raw type.
fn same_id_and_type(a: &Accepted, n: &provider::Notification) {
    assert_eq!(a.dedup_key, n.event_id, "dedup key and event id differ");
    assert_eq!(a.event_type.as_deref(), Some(n.raw_type.as_str()), "event types differ");
}

/// A body signed correctly for the endpoint may be refused only as a body.
fn check_signed(result: Result<Accepted, Rejection>, input: &[u8]) {
    match result {
        Ok(a) => check_accepted(&a),
        Err(r @ Rejection::MalformedBody(_)) => check_refusal(&r, input),
        Err(r) => panic!("a correctly signed body was refused: {r}"),
    }
}

/// Stripe: the `Stripe-Signature` header parse, the HMAC check against both secrets, the
/// timestamp tolerance, the envelope, and the event mapping. The body is also run signed
/// correctly, so that the code behind the signature is reached whatever the header holds.
pub fn stripe(data: &[u8]) -> Reached {
    let (head, body) = split(data);
    let mut headers = headers(head);
    let reached = run("stripe", &headers, body, data, same_id_and_type);
    let header = stripe::sign(STRIPE_SECRETS[1].as_bytes(), NOW, body);
    headers.insert(stripe::HEADER, HeaderValue::from_str(&header).expect("ASCII"));
    check_signed(accept(FIXTURE.endpoint("stripe"), &headers, body), data);
    reached
}

/// PayPal webhooks: the transmission headers, the certificate-URL allow-list, the RSA
/// signature over `id|time|webhook_id|crc32` with the pinned test certificate (validity and
/// subject too), the envelope, and the event mapping. Signing costs an RSA private-key
/// operation, so the body is not re-signed here: the seeds carry valid signatures, and the
/// envelope and mapping are run on every body directly as well.
pub fn paypal_webhook(data: &[u8]) -> Reached {
    let (head, body) = split(data);
    let headers = headers(head);
    let reached = run("paypal", &headers, body, data, same_id_and_type);
    if let Err(r) = paypal::identify(body) {
        check_refusal(&r, data);
    }
    reached
}

/// PayPal's certificate URL against the allow-list. An accepted URL is taken as written: its
/// parsed form (what a download and the cache use) is the text itself, letter case aside, and
/// is accepted again.
pub fn paypal_cert_url(data: &[u8]) -> Reached {
    let text = String::from_utf8_lossy(data);
    let hosts: Vec<String> = CERT_HOSTS.iter().map(|h| (*h).to_owned()).collect();
    match paypal::check_cert_url(&text, &hosts) {
        Ok(url) => {
            assert_eq!(url.scheme(), "https");
            assert!(url.as_str().eq_ignore_ascii_case(&text), "{text:?} was rewritten as {url}");
            let again = paypal::check_cert_url(url.as_str(), &hosts);
            assert_eq!(again.as_ref().ok(), Some(&url), "{url} is not accepted again: {again:?}");
            Reached::Accepted
        }
        Err(rejection) => {
            check_refusal(&rejection, data);
            Reached::Refused(rejection.code())
        }
    }
}

/// PayPal IPN: the form decoding (percent-decoding, the message's charset), the receiver
/// check, the dedup key, and the mapping. The inbox key is the notification's event id plus
/// the body's digest.
pub fn paypal_ipn(data: &[u8]) -> Reached {
    let (head, body) = split(data);
    run("paypal-ipn", &headers(head), body, data, |a, n| {
        assert_eq!(a.dedup_key, paypal_ipn::inbox_key(&n.event_id, body), "inbox key differs");
        if let Some(t) = &a.event_type {
            assert_eq!(*t, n.raw_type, "event types differ");
        }
    })
}

/// Access Worldpay events: the `Event-Signature` header parse, the HMAC check by key id, the
/// envelope, and the event mapping. The body is also run signed correctly with key 2.
pub fn worldpay_event(data: &[u8]) -> Reached {
    let (head, body) = split(data);
    let mut headers = headers(head);
    let reached = run("worldpay", &headers, body, data, same_id_and_type);
    let (key_id, secret) = WORLDPAY_KEYS[1];
    let header = worldpay::sign(key_id, secret.as_bytes(), body);
    headers.insert(worldpay::HEADER, HeaderValue::from_str(&header).expect("ASCII"));
    check_signed(accept(FIXTURE.endpoint("worldpay"), &headers, body), data);
    reached
}

/// Worldpay XML order notifications: the streaming parse with its DOCTYPE, entity, depth,
/// element and attribute limits, the merchant-code check, the dedup key, and the mapping.
pub fn worldpay_xml(data: &[u8]) -> Reached {
    let (head, body) = split(data);
    run("worldpay-xml", &headers(head), body, data, same_id_and_type)
}

/// Adflex with the default field paths, on two endpoints: one signed (HMAC-SHA256 hex in
/// [`ADFLEX_HEADER`]), one trusted by address (no signature). The body is also run signed
/// correctly.
pub fn adflex(data: &[u8]) -> Reached {
    let (head, body) = split(data);
    let mut headers = headers(head);
    let signed = run("adflex", &headers, body, data, same_id_and_type);
    let open = run("adflex-open", &headers, body, data, same_id_and_type);
    let header = format!("sha256={}", provider::adflex::sign(ADFLEX_SECRET.as_bytes(), body));
    headers.insert(ADFLEX_HEADER, HeaderValue::from_str(&header).expect("ASCII"));
    check_signed(accept(FIXTURE.endpoint("adflex"), &headers, body), data);
    match signed {
        Reached::Refused(_) => open,
        reached => reached,
    }
}
