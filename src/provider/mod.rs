//! Provider adapters: verify a notification's raw bytes and identify it for the inbox, then
//! read a stored body into a canonical [`Notification`].
//!
//! Each provider lives in one file that owns its settings (`Settings`, read from the
//! endpoint's table by `Settings::resolve`), its `accept` (verify and identify the raw
//! request) and its `parse` (the stored body to a notification). The dispatch is here, in the
//! style of a closed enum with delegating matches: [`ProviderKind`] names a provider,
//! [`Settings`] holds an endpoint's validated settings, and [`Provider`] is the runtime built
//! from them once at start (with any HTTPS client it needs). Nothing is parsed before its
//! signature checks out. Adding a provider: see `docs/architecture.md`.

pub mod adflex;
pub(crate) mod hmac;
mod notification;
pub mod paypal;
pub mod paypal_ipn;
pub mod stripe;
pub mod worldpay;
pub mod worldpay_xml;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hyper::HeaderMap;
use serde::Serialize;

pub use self::notification::{Accepted, Kind, Notification, Rejection, MAX_DETAIL_CHARS};
use crate::settings::{field_names, ConfigError, Resolver};

/// Which provider's wire format an endpoint speaks. Its name is the `provider` key of an
/// endpoint and the inbox's `provider` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Stripe snapshot and thin events, `Stripe-Signature` HMAC.
    Stripe,
    /// PayPal REST webhooks, RSA-signed transmissions.
    Paypal,
    /// PayPal IPN, confirmed by posting it back to PayPal.
    PaypalIpn,
    /// Access Worldpay events (JSON), `Event-Signature` HMAC per key id.
    Worldpay,
    /// Worldpay Corporate Gateway XML order notifications (no signature: trust options).
    WorldpayXml,
    /// Adflex server-to-server notifications (format assumed; field paths configurable).
    Adflex,
}

impl ProviderKind {
    /// Every provider, in the order they are listed to people.
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Stripe,
        ProviderKind::Paypal,
        ProviderKind::PaypalIpn,
        ProviderKind::Worldpay,
        ProviderKind::WorldpayXml,
        ProviderKind::Adflex,
    ];

    /// The name used in the config file and in the inbox's `provider` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Stripe => "stripe",
            ProviderKind::Paypal => "paypal",
            ProviderKind::PaypalIpn => "paypal-ipn",
            ProviderKind::Worldpay => "worldpay",
            ProviderKind::WorldpayXml => "worldpay-xml",
            ProviderKind::Adflex => "adflex",
        }
    }

    /// The provider named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The keys of an endpoint table this provider reads (besides `name`, `provider` and the
    /// trust options every endpoint has).
    pub fn settings_keys(self) -> &'static [&'static str] {
        match self {
            ProviderKind::Stripe => field_names::<stripe::Raw>(),
            ProviderKind::Paypal => field_names::<paypal::Raw>(),
            ProviderKind::PaypalIpn => field_names::<paypal_ipn::Raw>(),
            ProviderKind::Worldpay => field_names::<worldpay::Raw>(),
            ProviderKind::WorldpayXml => field_names::<worldpay_xml::Raw>(),
            ProviderKind::Adflex => field_names::<adflex::Raw>(),
        }
    }

    /// Providers that report the same payments through two channels share a family: a PayPal
    /// capture comes as a webhook and, when IPN is on too, as an IPN with the same id.
    pub fn family(self) -> ProviderKind {
        match self {
            ProviderKind::PaypalIpn => ProviderKind::Paypal,
            other => other,
        }
    }

    /// The body and content type of the answer to a stored (or duplicate) notification: what
    /// each provider expects to read back.
    pub fn acknowledgement(self, duplicate: bool) -> (&'static str, &'static str) {
        match (self, duplicate) {
            // Worldpay's XML service retries anything but exactly `[OK]`.
            (ProviderKind::WorldpayXml, _) => ("text/plain", "[OK]"),
            // IPN wants an empty 200.
            (ProviderKind::PaypalIpn, _) => ("text/plain", ""),
            (_, false) => ("text/plain; charset=utf-8", "stored\n"),
            (_, true) => ("text/plain; charset=utf-8", "duplicate\n"),
        }
    }

    /// Whether a stored notification with these kept headers must be confirmed with the
    /// provider (see [`Provider::confirm`]) before anything is decided on it, and by what:
    /// every IPN message (the postback), and a PayPal webhook stored unverified (PayPal's API).
    pub fn confirmed_by(self, headers_json: &str) -> Option<Confirmer> {
        match self {
            ProviderKind::PaypalIpn => {
                Some(Confirmer { by: "PayPal's postback", asks: "asks for PayPal's postback" })
            }
            ProviderKind::Paypal if paypal::stored_unverified(headers_json) => {
                Some(Confirmer { by: "PayPal's API", asks: "asks PayPal's API" })
            }
            _ => None,
        }
    }
}

/// Who confirms a stored notification before it is decided, for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmer {
    /// Who confirmed it ("verified by PayPal's postback").
    pub by: &'static str,
    /// What the worker does until then ("the worker asks for PayPal's postback").
    pub asks: &'static str,
}

impl fmt::Display for Confirmer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.by)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// An endpoint's validated provider settings, each owned by its provider's module.
#[derive(Debug, Clone)]
pub enum Settings {
    /// `provider = "stripe"`.
    Stripe(stripe::Settings),
    /// `provider = "paypal"`.
    Paypal(paypal::Settings),
    /// `provider = "paypal-ipn"`.
    PaypalIpn(paypal_ipn::Settings),
    /// `provider = "worldpay"`.
    Worldpay(worldpay::Settings),
    /// `provider = "worldpay-xml"`.
    WorldpayXml(worldpay_xml::Settings),
    /// `provider = "adflex"`.
    Adflex(adflex::Settings),
}

impl Settings {
    /// Reads `kind`'s settings from the rest of an endpoint's table. `path` names the table
    /// in serde's errors (`endpoint[0]`); `r` names it in the provider's own checks.
    pub fn resolve(
        kind: ProviderKind,
        path: &str,
        table: toml::Table,
        r: &Resolver<'_>,
    ) -> Result<Settings, ConfigError> {
        Ok(match kind {
            ProviderKind::Stripe => {
                Settings::Stripe(stripe::Settings::resolve(r.deserialize(path, table)?, r)?)
            }
            ProviderKind::Paypal => {
                Settings::Paypal(paypal::Settings::resolve(r.deserialize(path, table)?, r)?)
            }
            ProviderKind::PaypalIpn => {
                Settings::PaypalIpn(paypal_ipn::Settings::resolve(r.deserialize(path, table)?, r)?)
            }
            ProviderKind::Worldpay => {
                Settings::Worldpay(worldpay::Settings::resolve(r.deserialize(path, table)?, r)?)
            }
            ProviderKind::WorldpayXml => Settings::WorldpayXml(worldpay_xml::Settings::resolve(
                r.deserialize(path, table)?,
                r,
            )?),
            ProviderKind::Adflex => {
                Settings::Adflex(adflex::Settings::resolve(r.deserialize(path, table)?, r)?)
            }
        })
    }

    /// Which provider these settings are for.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Settings::Stripe(_) => ProviderKind::Stripe,
            Settings::Paypal(_) => ProviderKind::Paypal,
            Settings::PaypalIpn(_) => ProviderKind::PaypalIpn,
            Settings::Worldpay(_) => ProviderKind::Worldpay,
            Settings::WorldpayXml(_) => ProviderKind::WorldpayXml,
            Settings::Adflex(_) => ProviderKind::Adflex,
        }
    }

    /// What `check-config` shows of them: never a secret, at most a hint of one.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Settings::Stripe(s) => s.describe(),
            Settings::Paypal(s) => s.describe(),
            Settings::PaypalIpn(s) => s.describe(),
            Settings::Worldpay(s) => s.describe(),
            Settings::WorldpayXml(s) => s.describe(),
            Settings::Adflex(s) => s.describe(),
        }
    }
}

/// Why a provider's runtime could not be built from valid settings (an HTTPS client).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

/// What a provider's runtime may ask of the provider's API, from the endpoint's
/// `[endpoint.api]`. The clients are built by `crate::ask`; the providers only hold them, so
/// that this layer depends on no API client.
#[derive(Debug, Clone, Default)]
pub struct Apis {
    /// PayPal's webhook-signature check (`verify = "api"` or `"certs_then_api"`).
    pub paypal_signature: Option<Arc<dyn paypal::SignatureApi>>,
}

/// An endpoint's provider at run time: its settings, and whatever verifying and confirming
/// needs (PayPal's certificate source and API, the IPN postback client). Built once at start
/// and shared by the HTTP layer and the worker.
#[derive(Debug)]
pub enum Provider {
    /// Stripe.
    Stripe(stripe::Settings),
    /// PayPal webhooks: the certificate source (which owns the settings) and PayPal's API.
    Paypal(paypal::Webhooks),
    /// PayPal IPN, with its postback client.
    PaypalIpn(paypal_ipn::Ipn),
    /// Access Worldpay.
    Worldpay(worldpay::Settings),
    /// Worldpay XML.
    WorldpayXml(worldpay_xml::Settings),
    /// Adflex.
    Adflex(adflex::Settings),
}

impl Provider {
    /// The runtime for an endpoint's settings, with the API clients its `[endpoint.api]` gives
    /// (see [`Apis`]).
    pub fn new(settings: &Settings, apis: Apis) -> Result<Provider, SetupError> {
        Ok(match settings {
            Settings::Stripe(s) => Provider::Stripe(s.clone()),
            Settings::Paypal(s) => {
                s.warn_about_pinned();
                Provider::Paypal(
                    paypal::Webhooks::new(s, apis.paypal_signature).map_err(SetupError)?,
                )
            }
            Settings::PaypalIpn(s) => Provider::PaypalIpn(paypal_ipn::Ipn::new(s)?),
            Settings::Worldpay(s) => Provider::Worldpay(s.clone()),
            Settings::WorldpayXml(s) => Provider::WorldpayXml(s.clone()),
            Settings::Adflex(s) => Provider::Adflex(s.clone()),
        })
    }

    /// Which provider this is.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Stripe(_) => ProviderKind::Stripe,
            Provider::Paypal(_) => ProviderKind::Paypal,
            Provider::PaypalIpn(_) => ProviderKind::PaypalIpn,
            Provider::Worldpay(_) => ProviderKind::Worldpay,
            Provider::WorldpayXml(_) => ProviderKind::WorldpayXml,
            Provider::Adflex(_) => ProviderKind::Adflex,
        }
    }

    /// Verifies a request's raw bytes and identifies it for the inbox. `now` is unix seconds.
    pub async fn accept(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Accepted, Rejection> {
        match self {
            Provider::Stripe(s) => stripe::accept(s, headers, body, now),
            Provider::Paypal(webhooks) => webhooks.accept(headers, body, now).await,
            Provider::PaypalIpn(ipn) => paypal_ipn::accept(&ipn.settings, headers, body),
            Provider::Worldpay(s) => worldpay::accept(s, headers, body),
            Provider::WorldpayXml(s) => worldpay_xml::accept(s, headers, body),
            Provider::Adflex(s) => adflex::accept(s, headers, body),
        }
    }

    /// Reads a stored, verified body into a canonical notification.
    pub fn parse(&self, body: &[u8]) -> Result<Notification, String> {
        match self {
            Provider::Stripe(_) => stripe::parse(body),
            Provider::Paypal(webhooks) => paypal::parse(Some(webhooks.settings()), body),
            Provider::PaypalIpn(ipn) => paypal_ipn::parse(Some(&ipn.settings), body),
            Provider::Worldpay(_) => worldpay::parse(body),
            Provider::WorldpayXml(_) => worldpay_xml::parse(body),
            Provider::Adflex(s) => adflex::parse(&s.fields, body),
        }
    }

    /// Confirms a stored notification (its kept headers and raw body) with the provider before
    /// anything is decided on it, for the rows [`ProviderKind::confirmed_by`] names: the IPN
    /// postback, PayPal's API for a webhook stored unverified.
    pub async fn confirm(&self, headers_json: &str, body: &[u8]) -> Confirmation {
        match self {
            Provider::PaypalIpn(ipn) => ipn.confirm(body).await,
            Provider::Paypal(webhooks) => webhooks.confirm(headers_json, body).await,
            Provider::Stripe(_)
            | Provider::Worldpay(_)
            | Provider::WorldpayXml(_)
            | Provider::Adflex(_) => Confirmation::Confirmed,
        }
    }
}

/// Reads a stored body of `kind` with the provider's default settings: for rows whose
/// endpoint is no longer configured.
pub fn parse_unconfigured(kind: ProviderKind, body: &[u8]) -> Result<Notification, String> {
    match kind {
        ProviderKind::Stripe => stripe::parse(body),
        ProviderKind::Paypal => paypal::parse(None, body),
        ProviderKind::PaypalIpn => paypal_ipn::parse(None, body),
        ProviderKind::Worldpay => worldpay::parse(body),
        ProviderKind::WorldpayXml => worldpay_xml::parse(body),
        ProviderKind::Adflex => adflex::parse(&adflex::Fields::default(), body),
    }
}

/// What the provider said when asked to confirm a stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// Genuine: decide it.
    Confirmed,
    /// Not genuine (PayPal answered `INVALID` to the IPN postback, `FAILURE` to the webhook
    /// signature check): the row ends `rejected`, with no action.
    Refused(String),
    /// No answer (network, timeout, an unexpected answer): try again later. `transient`: the
    /// provider is down, which is nobody's fault, so the attempt is not counted.
    Failed {
        /// What happened, for the row's last error.
        message: String,
        /// Whether the attempt is free (the provider or the network is down).
        transient: bool,
    },
}

/// Longest notification id (dedup key) or event type accepted from any provider.
pub(crate) const MAX_ID_LEN: usize = 255;

/// Whether `s` can be a notification id or type: non-empty, at most [`MAX_ID_LEN`] bytes, no
/// control characters.
pub(crate) fn is_plain_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control)
}

/// A required header as text: [`Rejection::MissingHeader`] when absent, and
/// [`Rejection::MalformedHeader`] when it is not visible ASCII. `label` names it in both.
pub(crate) fn header_text<'a>(
    headers: &'a HeaderMap,
    name: &str,
    label: &'static str,
) -> Result<&'a str, Rejection> {
    let value = headers.get(name).ok_or(Rejection::MissingHeader(label))?;
    value
        .to_str()
        .map_err(|_| Rejection::MalformedHeader { header: label, detail: "not visible ASCII" })
}

/// A string at a path of JSON object keys, if present and non-empty.
pub(crate) fn str_at(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Serialises the named headers that are present into a JSON object (lower-case names).
pub(crate) fn keep_headers(headers: &HeaderMap, names: &[&str]) -> String {
    // Keys in order, as a JSON object's are written; serialized straight from the header map
    // (building a `serde_json::Value` first was about 5% of the request handlers' CPU).
    let mut kept: Vec<(&str, std::borrow::Cow<'_, str>)> = names
        .iter()
        .filter_map(|name| {
            headers.get(*name).map(|v| (*name, String::from_utf8_lossy(v.as_bytes())))
        })
        .collect();
    kept.sort_unstable_by_key(|(name, _)| *name);
    kept.dedup_by_key(|(name, _)| *name);

    struct Object<'a>(&'a [(&'a str, std::borrow::Cow<'a, str>)]);
    impl serde::Serialize for Object<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(self.0.len()))?;
            for (name, value) in self.0 {
                map.serialize_entry(name, value)?;
            }
            map.end()
        }
    }
    // Strings into a String: nothing here can fail.
    serde_json::to_string(&Object(&kept)).unwrap_or_else(|_| "{}".to_owned())
}

/// Reads an endpoint's `tls_ca_file`: extra trusted roots (PEM) for a provider's HTTPS client.
pub(crate) fn read_tls_ca(
    r: &Resolver<'_>,
    path: Option<&std::path::Path>,
) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    let pem = r.read("tls_ca_file", path)?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(roots) if !roots.is_empty() => Ok(Some(pem)),
        _ => Err(r.invalid("tls_ca_file", "holds no PEM certificate")),
    }
}

/// The HTTPS client for PayPal's certificate URL and IPN postback: https only (see
/// [`http_client`]).
pub fn https_client(
    extra_roots: Option<&[u8]>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    http_client(extra_roots, timeout, true)
}

/// The one builder of outbound HTTP clients (providers' APIs, sinks): no redirects (a redirect
/// could lead anywhere), bounded in time, trusting the public web PKI plus the PEM
/// certificates in `extra_roots` (a test CA, a corporate proxy's); `https_only` refuses plain
/// http URLs.
pub fn http_client(
    extra_roots: Option<&[u8]>,
    timeout: Duration,
    https_only: bool,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(https_only)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("reconciled/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = extra_roots {
        let roots = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("tls_ca_file: {}", crate::error::error_chain(&e)))?;
        if roots.is_empty() {
            return Err("tls_ca_file holds no certificate".into());
        }
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTPS client: {}", crate::error::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    /// The kept headers are the JSON object a `serde_json` map of them writes: keys in order
    /// whatever order they are asked for in, each once, values escaped, bytes that are not
    /// UTF-8 replaced, absent headers left out.
    #[test]
    fn kept_headers_are_one_sorted_json_object() {
        let mut headers = HeaderMap::new();
        let mut add = |name: &'static str, value: &[u8]| {
            headers.append(HeaderName::from_static(name), HeaderValue::from_bytes(value).unwrap());
        };
        add("user-agent", b"Stripe/1.0 (+https://stripe.com/docs/webhooks)");
        add("stripe-signature", b"t=1,v1=\"quoted\"\\back\tslash");
        add("content-type", b"application/json; charset=utf-8");
        add("x-odd", b"caf\xe9\tx");
        let names = ["x-odd", "user-agent", "missing", "content-type", "stripe-signature", "x-odd"];
        let kept = keep_headers(&headers, &names);

        let mut reference = serde_json::Map::new();
        for name in names {
            if let Some(v) = headers.get(name) {
                reference.insert(name.into(), String::from_utf8_lossy(v.as_bytes()).into());
            }
        }
        assert_eq!(kept, serde_json::Value::Object(reference).to_string());
        assert!(kept.starts_with(r#"{"content-type":"#), "{kept}");
        assert_eq!(keep_headers(&HeaderMap::new(), &names), "{}");
    }
}
