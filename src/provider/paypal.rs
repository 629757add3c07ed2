//! PayPal REST webhooks: transmission signature verification, certificates, and the mapping
//! of capture, authorization, order, refund, reversal and dispute events.
//!
//! PayPal signs `{transmission_id}|{transmission_time}|{webhook_id}|{crc32}` with RSA PKCS#1
//! v1.5 and SHA-256 (`PAYPAL-AUTH-ALGO: SHA256withRSA`), where `webhook_id` is the id of *our*
//! subscription (configuration, never taken from the request) and `crc32` is the CRC-32 (IEEE)
//! of the raw body as an unsigned decimal number. The signature is base64 in
//! `PAYPAL-TRANSMISSION-SIG`; the certificate holding the public key is at `PAYPAL-CERT-URL`.
//!
//! PayPal's SDK fetches that URL whatever host it names, which lets anyone make the server
//! fetch any URL (and sign with their own certificate). Here:
//! - the URL must be `https` on an allow-listed host (default: PayPal's API hosts), or the
//!   request is refused before anything is fetched, whether or not fetching is on;
//! - **pinned certificates** (PEM files in the config) are tried first, so verification works
//!   with no outbound network at all;
//! - fetching is opt-in (`cert_url_fetch = true`); a fetched certificate is cached by URL, and
//!   it, like a pinned one, must be within its validity dates and its subject must match the
//!   allowed patterns (default `*.paypal.com`).
//!
//! A certificate that cannot be fetched now is answered 503 (PayPal retries); a bad one 400.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hyper::HeaderMap;
use serde_json::Value;

use super::{keep_headers, str_at, Accepted, Kind, Notification, Rejection};
use crate::money::{Currency, Money};
use crate::settings::{ConfigError, Resolver};

/// PayPal's API hosts, the default `cert_hosts`: certificate URLs on any other host are refused.
pub const CERT_HOSTS: &[&str] =
    &["api.paypal.com", "api-m.paypal.com", "api.sandbox.paypal.com", "api-m.sandbox.paypal.com"];
/// The default `cert_subjects`.
pub const CERT_SUBJECTS: &[&str] = &["*.paypal.com"];

/// `provider = "paypal"` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The id of our webhook subscription: part of the signed string.
    pub webhook_id: String,
    /// Pinned signing certificates (PEM files), tried before any download.
    pub certs: Vec<Certificate>,
    /// Whether certificates may be downloaded from `PAYPAL-CERT-URL` (allowed hosts only).
    pub cert_url_fetch: bool,
    /// Hosts (`host` or `host:port`) a certificate URL may name.
    pub cert_hosts: Vec<String>,
    /// Subject name patterns a signing certificate must match (`*.paypal.com`).
    pub cert_subjects: Vec<String>,
    /// Extra trusted roots (PEM) for the HTTPS download.
    pub tls_ca: Option<Vec<u8>>,
    /// Which resource field holds the shop's order reference.
    pub reference: Reference,
}

/// Where a PayPal resource carries the shop's reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// `custom_id`, then `invoice_id`.
    #[default]
    CustomId,
    /// `invoice_id`, then `custom_id`.
    InvoiceId,
}

/// The endpoint keys PayPal webhooks read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    webhook_id: Option<String>,
    #[serde(default)]
    certs: Vec<std::path::PathBuf>,
    cert_url_fetch: Option<bool>,
    cert_hosts: Option<Vec<String>>,
    cert_subjects: Option<Vec<String>>,
    tls_ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    reference: Reference,
}

impl Settings {
    pub(crate) fn resolve(raw: Raw, r: &Resolver<'_>) -> Result<Settings, ConfigError> {
        let webhook_id = raw.webhook_id.unwrap_or_default();
        if webhook_id.is_empty() || !webhook_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(r.invalid(
                "webhook_id",
                "the id of the webhook in PayPal's developer dashboard is required (it is part of what PayPal signs)",
            ));
        }
        let tls_ca = super::read_tls_ca(r, raw.tls_ca_file.as_deref())?;
        let mut certs = Vec::with_capacity(raw.certs.len());
        for (n, path) in raw.certs.iter().enumerate() {
            let key = format!("certs[{n}]");
            let pem = r.read(&key, path)?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|err| r.invalid(&key, format!("{}: {err}", r.beside(path).display())))?;
            certs.push(cert);
        }
        let cert_url_fetch = raw.cert_url_fetch.unwrap_or(false);
        if certs.is_empty() && !cert_url_fetch {
            return Err(r.invalid(
                "certs",
                "pin PayPal's signing certificate (certs = [\"paypal-cert.pem\"]) and/or set cert_url_fetch = true",
            ));
        }
        let lower = |list: Option<Vec<String>>, default: &[&str]| -> Vec<String> {
            match list {
                Some(list) => list.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
                None => default.iter().map(|h| (*h).to_owned()).collect(),
            }
        };
        let cert_hosts = lower(raw.cert_hosts, CERT_HOSTS);
        if let Some(h) =
            cert_hosts.iter().find(|h| h.is_empty() || h.contains('/') || h.contains('@'))
        {
            return Err(r.invalid("cert_hosts", format!("\"{h}\" is not a host or host:port")));
        }
        let cert_subjects = lower(raw.cert_subjects, CERT_SUBJECTS);
        if cert_subjects.is_empty() {
            return Err(r.invalid("cert_subjects", "must not be empty"));
        }
        Ok(Settings {
            webhook_id,
            certs,
            cert_url_fetch,
            cert_hosts,
            cert_subjects,
            tls_ca,
            reference: raw.reference,
        })
    }

    /// Warns about pinned certificates that are not valid now: they will not verify.
    pub(crate) fn warn_about_pinned(&self) {
        let now = crate::time::now_ms() / 1000;
        for (n, cert) in self.certs.iter().enumerate() {
            if let Err(why) = cert.check_validity(now) {
                tracing::warn!("pinned certificate certs[{n}]: {why}");
            }
        }
    }

    pub(crate) fn describe(&self) -> Vec<String> {
        vec![format!(
            "webhook id {}, {} pinned certificate(s), certificate download {} (hosts {})",
            self.webhook_id,
            self.certs.len(),
            if self.cert_url_fetch { "on" } else { "off" },
            self.cert_hosts.join(" ")
        )]
    }
}

/// The headers PayPal sends with every webhook.
pub const TRANSMISSION_ID: &str = "paypal-transmission-id";
/// RFC 3339 time of the transmission, signed as sent.
pub const TRANSMISSION_TIME: &str = "paypal-transmission-time";
/// Base64 RSA signature.
pub const TRANSMISSION_SIG: &str = "paypal-transmission-sig";
/// Where the signing certificate is.
pub const CERT_URL: &str = "paypal-cert-url";
/// `SHA256withRSA`, the only algorithm accepted.
pub const AUTH_ALGO: &str = "paypal-auth-algo";
/// The only `PAYPAL-AUTH-ALGO` accepted.
pub const ALGORITHM: &str = "SHA256withRSA";
/// Headers kept with the row: enough to verify it again.
/// The signature is not kept: PayPal signs only the body's CRC-32, so anyone who could read a
/// stored signature could make another body with the same CRC and reuse it.
const KEPT_HEADERS: &[&str] =
    &[TRANSMISSION_ID, TRANSMISSION_TIME, CERT_URL, AUTH_ALGO, "content-type"];
/// Where PayPal serves its signing certificates; any other path is refused.
pub const CERT_PATH_PREFIX: &str = "/v1/notifications/certs/";
/// Longest header value we read (ids, times, URLs); a 4096-bit signature is 684 characters.
const MAX_HEADER_LEN: usize = 2048;
/// The largest certificate document we download.
const MAX_CERT_BYTES: usize = 64 * 1024;
/// How long a certificate download may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed download, the same URL is not tried again for this long.
const FETCH_FAILURE_BACKOFF_MS: i64 = 30_000;
/// Certificates cached from URLs; beyond this the cache is cleared (it never grows unbounded).
const MAX_CACHED: usize = 64;

/// The parts of an X.509 certificate verification needs, parsed once.
#[derive(Clone)]
pub struct Certificate {
    /// The RSA public key (PKCS#1 `RSAPublicKey` DER), as ring wants it.
    public_key: Arc<[u8]>,
    /// Validity, unix seconds.
    not_before: i64,
    not_after: i64,
    /// Subject common names and DNS subject alternative names.
    names: Vec<String>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads the first certificate of a PEM document (PayPal serves the signing certificate
    /// followed by its chain). Only RSA keys are accepted.
    pub fn from_pem(pem: &[u8]) -> Result<Certificate, String> {
        let block = x509_parser::pem::Pem::iter_from_buffer(pem)
            .next()
            .ok_or("no PEM block found")?
            .map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("the first PEM block is a {}, not a CERTIFICATE", block.label));
        }
        let cert = block.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            return Err("the certificate's key is not RSA".into());
        }
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push((*dns).to_owned());
                }
            }
        }
        let validity = cert.validity();
        Ok(Certificate {
            public_key: Arc::from(&*spki.subject_public_key.data),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            names,
        })
    }

    /// Whether `signature` is this key's RSA PKCS#1 v1.5 SHA-256 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &*self.public_key,
        )
        .verify(message, signature)
        .is_ok()
    }

    /// Refuses a certificate outside its validity dates at `now` (unix seconds).
    pub fn check_validity(&self, now: i64) -> Result<(), Rejection> {
        if now < self.not_before {
            return Err(Rejection::Certificate("the signing certificate is not yet valid".into()));
        }
        if now > self.not_after {
            return Err(Rejection::Certificate("the signing certificate has expired".into()));
        }
        Ok(())
    }

    /// Whether a subject name matches one of `patterns` (`*.paypal.com` matches any name
    /// ending in `.paypal.com`; other patterns match exactly; case-insensitive).
    pub fn subject_matches(&self, patterns: &[String]) -> bool {
        self.names.iter().any(|name| {
            let name = name.to_ascii_lowercase();
            patterns.iter().any(|p| {
                let p = p.to_ascii_lowercase();
                match p.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        name.len() > suffix.len() && name.ends_with(suffix)
                    }
                    _ => name == p,
                }
            })
        })
    }
}

/// The string PayPal signs: `{transmission_id}|{transmission_time}|{webhook_id}|{crc32}`.
pub fn signed_message(transmission_id: &str, time: &str, webhook_id: &str, body: &[u8]) -> String {
    format!("{transmission_id}|{time}|{webhook_id}|{}", crc32fast::hash(body))
}

/// Signs `message` with an RSA private key (PKCS#8 PEM) as PayPal does, for test requests
/// (`reconciled sign paypal`). Returns the base64 signature.
pub fn sign(private_key_pem: &[u8], message: &[u8]) -> Result<String, String> {
    let block = x509_parser::pem::Pem::iter_from_buffer(private_key_pem)
        .next()
        .ok_or("no PEM block in the private key file")?
        .map_err(|e| format!("private key is not PEM: {e}"))?;
    if block.label != "PRIVATE KEY" {
        return Err(format!(
            "the key is a {} block; give an unencrypted PKCS#8 \"PRIVATE KEY\" (openssl pkcs8 -topk8 -nocrypt)",
            block.label
        ));
    }
    let key = ring::signature::RsaKeyPair::from_pkcs8(&block.contents)
        .map_err(|e| format!("not an RSA PKCS#8 key: {e}"))?;
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        message,
        &mut signature,
    )
    .map_err(|_| "signing failed".to_owned())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(signature))
}

/// The transmission headers of one request.
#[derive(Debug)]
pub struct Transmission<'a> {
    /// `PAYPAL-TRANSMISSION-ID`.
    pub id: &'a str,
    /// `PAYPAL-TRANSMISSION-TIME`, as sent.
    pub time: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// `PAYPAL-CERT-URL`.
    pub cert_url: &'a str,
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejection> {
    let label = match name {
        TRANSMISSION_ID => "PAYPAL-TRANSMISSION-ID",
        TRANSMISSION_TIME => "PAYPAL-TRANSMISSION-TIME",
        TRANSMISSION_SIG => "PAYPAL-TRANSMISSION-SIG",
        CERT_URL => "PAYPAL-CERT-URL",
        _ => "PAYPAL-AUTH-ALGO",
    };
    let value = super::header_text(headers, name, label)?.trim();
    if value.is_empty() || value.len() > MAX_HEADER_LEN {
        return Err(Rejection::MalformedHeader { header: label, detail: "empty or too long" });
    }
    Ok(value)
}

/// Reads and checks the transmission headers (the algorithm must be `SHA256withRSA`).
pub fn parse_headers(headers: &HeaderMap) -> Result<Transmission<'_>, Rejection> {
    if header(headers, AUTH_ALGO)? != ALGORITHM {
        return Err(Rejection::MalformedHeader {
            header: "PAYPAL-AUTH-ALGO",
            detail: "only SHA256withRSA is accepted",
        });
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(header(headers, TRANSMISSION_SIG)?)
        .map_err(|_| Rejection::MalformedHeader {
            header: "PAYPAL-TRANSMISSION-SIG",
            detail: "not base64",
        })?;
    Ok(Transmission {
        id: header(headers, TRANSMISSION_ID)?,
        time: header(headers, TRANSMISSION_TIME)?,
        signature,
        cert_url: header(headers, CERT_URL)?,
    })
}

/// Checks a certificate URL against the allow-list: `https`, no user info, a host (with its
/// port when not 443) that is listed exactly, and a path `/v1/notifications/certs/{name}` with
/// no query or fragment. Nothing is fetched.
pub fn check_cert_url(url: &str, hosts: &[String]) -> Result<url::Url, Rejection> {
    let refused = |why: &str| Rejection::Certificate(format!("PAYPAL-CERT-URL refused: {why}"));
    let parsed = url::Url::parse(url).map_err(|_| refused("not a URL"))?;
    if parsed.scheme() != "https" {
        return Err(refused("not https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refused("it has user info"));
    }
    let host = parsed.host_str().ok_or_else(|| refused("no host"))?.to_ascii_lowercase();
    let authority = match parsed.port() {
        None => host,
        Some(port) => format!("{host}:{port}"),
    };
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&authority)) {
        return Err(refused("its host is not in cert_hosts"));
    }
    // One certificate, one URL: no query or fragment to vary, no other path to probe.
    let name = parsed.path().strip_prefix(CERT_PATH_PREFIX).unwrap_or("");
    if name.is_empty()
        || name.contains('/')
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(refused("its path is not /v1/notifications/certs/{name}"));
    }
    Ok(parsed)
}

/// Verifies the signature against the certificates, each of which must also be valid now and
/// have an allowed subject. With no certificate that verifies, the answer names the first
/// check that failed on one that did verify (expired, wrong subject), else a bad signature.
pub fn verify_with<'c>(
    certs: impl IntoIterator<Item = &'c Certificate>,
    subjects: &[String],
    message: &[u8],
    signature: &[u8],
    now: i64,
) -> Result<(), Rejection> {
    let mut problem = None;
    for cert in certs {
        if !cert.verifies(message, signature) {
            continue;
        }
        let check = cert.check_validity(now).and_then(|()| {
            if cert.subject_matches(subjects) {
                Ok(())
            } else {
                Err(Rejection::Certificate(
                    "the signing certificate's subject is not in cert_subjects".into(),
                ))
            }
        });
        match check {
            Ok(()) => return Ok(()),
            Err(e) => problem = problem.or(Some(e)),
        }
    }
    Err(problem.unwrap_or(Rejection::BadSignature))
}

/// Certificates for one PayPal endpoint: the pinned ones, and those fetched from allowed
/// certificate URLs (when fetching is on).
#[derive(Debug)]
pub struct CertSource {
    settings: Settings,
    client: Option<reqwest::Client>,
    cache: Mutex<HashMap<String, Certificate>>,
    /// URL → when its last download failed (unix ms), and the answer it got; repeated
    /// within [`FETCH_FAILURE_BACKOFF_MS`] without downloading again.
    failed: Mutex<HashMap<String, (i64, Rejection)>>,
    /// One download at a time: certificates change rarely, requests for one URL queue up.
    fetching: tokio::sync::Mutex<()>,
}

impl CertSource {
    /// The certificate source for a `paypal` endpoint's settings.
    pub fn new(settings: &Settings) -> Result<CertSource, String> {
        let client = if settings.cert_url_fetch {
            Some(super::https_client(settings.tls_ca.as_deref(), FETCH_TIMEOUT)?)
        } else {
            None
        };
        Ok(CertSource {
            settings: settings.clone(),
            client,
            cache: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The endpoint's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Verifies and identifies a request to a PayPal endpoint. `now` is unix seconds.
    pub async fn accept(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Accepted, Rejection> {
        let t = parse_headers(headers)?;
        let s = &self.settings;
        // Checked even when a pinned certificate will do: a foreign URL is never normal.
        let url = check_cert_url(t.cert_url, &s.cert_hosts)?;
        let message = signed_message(t.id, t.time, &s.webhook_id, body);
        let pinned = verify_with(&s.certs, &s.cert_subjects, message.as_bytes(), &t.signature, now);
        match pinned {
            Ok(()) => {}
            Err(e) if self.client.is_none() => return Err(e),
            Err(_) => {
                let cert = self.fetched(url.as_str()).await?;
                verify_with([&cert], &s.cert_subjects, message.as_bytes(), &t.signature, now)?;
            }
        }
        let (id, event_type) = identify(body)?;
        Ok(Accepted {
            dedup_key: id,
            event_type: Some(event_type),
            headers_json: keep_headers(headers, KEPT_HEADERS),
        })
    }

    /// The certificate at an allowed URL, from the cache or downloaded.
    async fn fetched(&self, url: &str) -> Result<Certificate, Rejection> {
        let cached =
            |this: &Self| this.cache.lock().unwrap_or_else(|p| p.into_inner()).get(url).cloned();
        if let Some(c) = cached(self) {
            return Ok(c);
        }
        let _one = self.fetching.lock().await;
        if let Some(c) = cached(self) {
            return Ok(c);
        }
        let now = crate::time::now_ms();
        let last_failure = self.failed.lock().unwrap_or_else(|p| p.into_inner()).get(url).cloned();
        if let Some((at, rejection)) = last_failure {
            if now - at < FETCH_FAILURE_BACKOFF_MS {
                return Err(rejection);
            }
        }
        let client = self.client.as_ref().expect("fetched is only called with fetching on");
        let failed = |rejection: Rejection| {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if failed.len() >= MAX_CACHED {
                failed.clear();
            }
            failed.insert(url.to_owned(), (now, rejection.clone()));
            Err(rejection)
        };
        match download(client, url).await {
            Ok(cert) => {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(url.to_owned(), cert.clone());
                self.failed.lock().unwrap_or_else(|p| p.into_inner()).remove(url);
                tracing::info!(url, names = ?cert.names, "PayPal signing certificate downloaded");
                Ok(cert)
            }
            Err(DownloadError::Unavailable(why)) => {
                tracing::warn!(url, error = %why, "PayPal signing certificate could not be downloaded");
                failed(Rejection::CertificateUnavailable(format!(
                    "the signing certificate could not be downloaded: {why}"
                )))
            }
            Err(DownloadError::Bad(why)) => {
                tracing::warn!(url, error = %why, "PayPal signing certificate URL serves no usable certificate");
                failed(Rejection::Certificate(format!("the certificate at PAYPAL-CERT-URL {why}")))
            }
        }
    }
}

enum DownloadError {
    /// Try again later (network, timeout, server error).
    Unavailable(String),
    /// The document is not a usable certificate.
    Bad(String),
}

async fn download(client: &reqwest::Client, url: &str) -> Result<Certificate, DownloadError> {
    use DownloadError::{Bad, Unavailable};
    let mut resp =
        client.get(url).send().await.map_err(|e| Unavailable(crate::error::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(Unavailable(format!("HTTP {}", resp.status())));
    }
    let mut doc = Vec::new();
    while let Some(chunk) =
        resp.chunk().await.map_err(|e| Unavailable(crate::error::error_chain(&e)))?
    {
        if doc.len() + chunk.len() > MAX_CERT_BYTES {
            return Err(Bad(format!("is larger than {MAX_CERT_BYTES} bytes")));
        }
        doc.extend_from_slice(&chunk);
    }
    Certificate::from_pem(&doc).map_err(|e| Bad(format!("is unusable: {e}")))
}

/// Reads the envelope: the event id (`WH-…`, the dedup key) and type.
pub fn identify(body: &[u8]) -> Result<(String, String), Rejection> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::MalformedBody(format!("not a PayPal event: {e}")))?;
    let id =
        str_at(&v, &["id"]).ok_or_else(|| Rejection::MalformedBody("event has no id".into()))?;
    if !super::is_plain_id(&id) {
        return Err(Rejection::MalformedBody(
            "event id is too long or has control characters".into(),
        ));
    }
    let kind = str_at(&v, &["event_type"])
        .ok_or_else(|| Rejection::MalformedBody("event has no event_type".into()))?;
    Ok((id, kind))
}

/// A PayPal amount: `{currency_code, value}` (v2) or `{currency, total}` (v1 sales), the value
/// a decimal string with at most the currency's decimals.
fn amount(v: &Value) -> Result<Option<Money>, String> {
    let value = str_at(v, &["value"]).or_else(|| str_at(v, &["total"]));
    let code = str_at(v, &["currency_code"]).or_else(|| str_at(v, &["currency"]));
    match (value, code) {
        (Some(value), Some(code)) => {
            let currency = Currency::parse(&code).map_err(|e| e.to_string())?;
            // Refund amounts are positive in the REST API; a sign would be a format change.
            let m = Money::parse_exact(value.trim_start_matches('-'), currency)
                .map_err(|e| format!("amount \"{value}\": {e}"))?;
            Ok(Some(m))
        }
        _ => Ok(None),
    }
}

/// The id of the linked object with relation `rel` (`up` for a refund's capture), from the
/// last path segment of its `href`.
fn linked_id(resource: &Value, rel: &str) -> Option<String> {
    resource.get("links")?.as_array()?.iter().find_map(|l| {
        if l.get("rel")?.as_str()? != rel {
            return None;
        }
        let href = l.get("href")?.as_str()?;
        let last = href.trim_end_matches('/').rsplit('/').next()?;
        (!last.is_empty()).then(|| last.to_owned())
    })
}

/// Reads a verified PayPal event into a canonical notification.
///
/// The payment id is the capture's id: what the shop records as PayPal's transaction id, what
/// an IPN for the same payment calls `txn_id`, what refunds (`links[rel=up]`) and disputes
/// (`seller_transaction_id`) name. A capture's pending and completed events share it; a
/// capture of an authorization names the authorization as its related payment, so the two
/// are never taken for two payments of one order. Checkout-order events carry the order id.
pub fn parse(settings: Option<&Settings>, body: &[u8]) -> Result<Notification, String> {
    let event: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let event_id = str_at(&event, &["id"]).ok_or("event has no id")?;
    let raw_type = str_at(&event, &["event_type"]).ok_or("event has no event_type")?;
    let prefer = settings.map_or(Reference::CustomId, |s| s.reference);
    let r = &event["resource"];
    let reference = |custom: &[&str], invoice: &[&str]| match prefer {
        Reference::CustomId => str_at(r, custom).or_else(|| str_at(r, invoice)),
        Reference::InvoiceId => str_at(r, invoice).or_else(|| str_at(r, custom)),
    };
    let mut n = Notification {
        provider: super::ProviderKind::Paypal,
        event_id,
        kind: Kind::Ignored,
        raw_type: raw_type.clone(),
        payment_id: None,
        merchant_reference: None,
        amount: None,
        occurred_at: str_at(&event, &["create_time"])
            .as_deref()
            .and_then(crate::time::parse_rfc3339)
            .unwrap_or(0),
        customer_email: None,
        object_id: None,
        request_key: None,
        related_payment_id: None,
        detail: None,
    };
    let id = str_at(r, &["id"]);
    match raw_type.as_str() {
        t if t.starts_with("PAYMENT.CAPTURE.") || t.starts_with("PAYMENT.AUTHORIZATION.") => {
            let action = t.rsplit('.').next().unwrap_or_default();
            let is_refund = matches!(action, "REFUNDED" | "REVERSED");
            n.merchant_reference = reference(&["custom_id"], &["invoice_id"]);
            n.amount = amount(&r["amount"])?;
            n.detail = str_at(r, &["status_details", "reason"]);
            if is_refund {
                // The resource is the refund; its capture is the payment.
                n.object_id = id.clone();
                n.payment_id = linked_id(r, "up").or(id);
                n.kind = Kind::Refunded;
                if action == "REVERSED" {
                    n.detail = Some(format!(
                        "reversed by PayPal (chargeback or reversal){}",
                        n.detail.map(|d| format!(": {d}")).unwrap_or_default()
                    ));
                }
            } else {
                n.payment_id = id;
                // A capture of an authorization is the same payment as far as the order goes.
                n.related_payment_id =
                    str_at(r, &["supplementary_data", "related_ids", "authorization_id"]);
                n.kind = match (t.starts_with("PAYMENT.CAPTURE."), action) {
                    (true, "COMPLETED") => Kind::Succeeded,
                    (true, "PENDING") => Kind::Pending,
                    (true, "DENIED" | "DECLINED") => Kind::Failed,
                    (false, "CREATED") => Kind::Authorized,
                    (false, "VOIDED") => Kind::Canceled,
                    _ => Kind::Ignored,
                };
            }
        }
        "CHECKOUT.ORDER.APPROVED" | "CHECKOUT.ORDER.COMPLETED" | "CHECKOUT.ORDER.SAVED" => {
            let unit = &r["purchase_units"][0];
            n.payment_id = id;
            n.merchant_reference = match prefer {
                Reference::CustomId => {
                    str_at(unit, &["custom_id"]).or_else(|| str_at(unit, &["invoice_id"]))
                }
                Reference::InvoiceId => {
                    str_at(unit, &["invoice_id"]).or_else(|| str_at(unit, &["custom_id"]))
                }
            }
            .or_else(|| str_at(unit, &["reference_id"]).filter(|r| r != "default"));
            n.amount = amount(&unit["amount"])?;
            n.customer_email = str_at(r, &["payer", "email_address"]);
            n.detail =
                Some("order events do not move money; the capture's own event decides".into());
        }
        "CHECKOUT.PAYMENT-APPROVAL.REVERSED" => {
            // Approved but never captured in time: PayPal gave the buyer their money back.
            n.payment_id = str_at(r, &["order_id"]).or(id);
            n.merchant_reference = reference(&["custom_id"], &["invoice_id"]);
            n.kind = Kind::Canceled;
            n.detail = Some("approved but not captured in time; PayPal refunded the buyer".into());
        }
        t if t.starts_with("CUSTOMER.DISPUTE.") => {
            let tx = &r["disputed_transactions"][0];
            n.object_id = str_at(r, &["dispute_id"]);
            n.payment_id = str_at(tx, &["seller_transaction_id"]);
            n.merchant_reference =
                str_at(tx, &["custom"]).or_else(|| str_at(tx, &["invoice_number"]));
            n.amount = amount(&r["dispute_amount"])?;
            n.detail = str_at(r, &["reason"]);
            n.kind = match t {
                "CUSTOMER.DISPUTE.CREATED" => Kind::Disputed,
                "CUSTOMER.DISPUTE.RESOLVED" => {
                    n.detail = str_at(r, &["dispute_outcome", "outcome_code"]).or(n.detail);
                    Kind::DisputeClosed
                }
                _ => Kind::Ignored,
            };
        }
        t if t.starts_with("PAYMENT.SALE.") => {
            // Legacy v1 sales: amount {total, currency}; refunds name their sale.
            let action = t.rsplit('.').next().unwrap_or_default();
            n.merchant_reference = match prefer {
                Reference::CustomId => {
                    str_at(r, &["custom"]).or_else(|| str_at(r, &["invoice_number"]))
                }
                Reference::InvoiceId => {
                    str_at(r, &["invoice_number"]).or_else(|| str_at(r, &["custom"]))
                }
            };
            n.amount = amount(&r["amount"])?;
            if matches!(action, "REFUNDED" | "REVERSED") {
                n.object_id = id.clone();
                n.payment_id = str_at(r, &["sale_id"]).or(id);
                n.kind = Kind::Refunded;
            } else {
                n.payment_id = id;
                n.kind = match action {
                    "COMPLETED" => Kind::Succeeded,
                    "PENDING" => Kind::Pending,
                    "DENIED" => Kind::Failed,
                    _ => Kind::Ignored,
                };
            }
        }
        _ => n.detail = Some("event type not reconciled".into()),
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        CERT_HOSTS.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn cert_urls_must_be_https_on_an_allowed_host() {
        let ok = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77";
        assert!(check_cert_url(ok, &hosts()).is_ok());
        for bad in [
            "https://api.paypal.com/v1/notifications/certs/",
            "https://api.paypal.com/v1/notifications/certs/CERT-1?n=1",
            "https://api.paypal.com/v1/notifications/certs/CERT-1#x",
            "https://api.paypal.com/v1/notifications/certs/a/b",
            "https://api.paypal.com/v1/oauth2/token",
        ] {
            assert!(check_cert_url(bad, &hosts()).is_err(), "{bad}");
        }
        assert!(check_cert_url("https://API.PAYPAL.COM/v1/notifications/certs/C", &hosts()).is_ok());
        // The dot-segments are resolved before the path is checked.
        assert!(check_cert_url(
            "https://api.paypal.com/v1/notifications/certs/../../oauth2/x",
            &hosts()
        )
        .is_err());
        for bad in [
            "http://api.paypal.com/v1/notifications/certs/C",
            "https://api.paypal.com:8443/v1/notifications/certs/C",
            "https://api.paypal.com.evil.example/c",
            "https://evil.example/api.paypal.com",
            "https://user@api.paypal.com/c",
            "https://127.0.0.1/c",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(check_cert_url(bad, &hosts()).is_err(), "{bad}");
        }
        let local = vec!["127.0.0.1:8443".to_owned()];
        assert!(check_cert_url("https://127.0.0.1:8443/v1/notifications/certs/C", &local).is_ok());
        assert!(check_cert_url("https://127.0.0.1/v1/notifications/certs/C", &local).is_err());
    }

    #[test]
    fn subject_patterns() {
        let cert = Certificate {
            public_key: Arc::from(&b""[..]),
            not_before: 0,
            not_after: 10,
            names: vec!["messageverificationcerts.paypal.com".into()],
        };
        assert!(cert.subject_matches(&["*.paypal.com".into()]));
        assert!(cert.subject_matches(&["MessageVerificationCerts.PayPal.com".into()]));
        assert!(!cert.subject_matches(&["*.evil.com".into(), "paypal.com".into()]));
        let evil = Certificate { names: vec!["paypal.com.evil.example".into()], ..cert.clone() };
        assert!(!evil.subject_matches(&["*.paypal.com".into()]));
        assert!(cert.check_validity(5).is_ok());
        assert!(cert.check_validity(11).is_err() && cert.check_validity(-1).is_err());
    }

    fn event(kind: &str, resource: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "WH-1", "event_type": kind, "create_time": "2026-11-20T10:14:05Z", "resource": resource
        }))
        .unwrap()
    }

    #[test]
    fn a_capture_is_its_own_payment_and_names_its_authorization() {
        let related = serde_json::json!({"related_ids": {"order_id": "ORDER-1", "authorization_id": "AUTH-1"}});
        let auth = parse(
            None,
            &event(
                "PAYMENT.AUTHORIZATION.CREATED",
                serde_json::json!({"id": "AUTH-1", "amount": {"currency_code": "USD", "value": "10.00"},
                    "custom_id": "1001", "supplementary_data": {"related_ids": {"order_id": "ORDER-1"}}}),
            ),
        )
        .unwrap();
        let capture = parse(
            None,
            &event(
                "PAYMENT.CAPTURE.COMPLETED",
                serde_json::json!({"id": "CAP-1", "amount": {"currency_code": "USD", "value": "10.00"},
                    "invoice_id": "INV-1001", "custom_id": "1001", "supplementary_data": related}),
            ),
        )
        .unwrap();
        assert_eq!((auth.kind, capture.kind), (Kind::Authorized, Kind::Succeeded));
        assert_eq!(auth.payment_id.as_deref(), Some("AUTH-1"));
        assert_eq!(capture.payment_id.as_deref(), Some("CAP-1"));
        assert_eq!(capture.related_payment_id, auth.payment_id);
        assert_eq!(capture.merchant_reference.as_deref(), Some("1001"));
        let invoice = Settings {
            webhook_id: "W".into(),
            certs: vec![],
            cert_url_fetch: false,
            cert_hosts: vec![],
            cert_subjects: vec![],
            tls_ca: None,
            reference: Reference::InvoiceId,
        };
        let by_invoice = parse(
            Some(&invoice),
            &event(
                "PAYMENT.CAPTURE.COMPLETED",
                serde_json::json!({
            "id": "CAP-1", "invoice_id": "INV-1001", "custom_id": "1001"}),
            ),
        )
        .unwrap();
        assert_eq!(by_invoice.merchant_reference.as_deref(), Some("INV-1001"));
        assert_eq!(capture.amount.unwrap().minor, 1000);
        assert_eq!(capture.occurred_at, 1_795_169_645);
    }

    #[test]
    fn other_events_map_as_documented() {
        let cases = [
            (
                "CHECKOUT.PAYMENT-APPROVAL.REVERSED",
                serde_json::json!({"order_id": "O-1"}),
                Kind::Canceled,
                "O-1",
            ),
            (
                "PAYMENT.AUTHORIZATION.VOIDED",
                serde_json::json!({"id": "A-1"}),
                Kind::Canceled,
                "A-1",
            ),
            (
                "PAYMENT.CAPTURE.REVERSED",
                serde_json::json!({"id": "R-1", "links": [{"rel": "up", "href": "https://api.paypal.com/v2/payments/captures/C-9"}]}),
                Kind::Refunded,
                "C-9",
            ),
            (
                "PAYMENT.SALE.COMPLETED",
                serde_json::json!({"id": "S-1", "amount": {"total": "5.00", "currency": "EUR"}}),
                Kind::Succeeded,
                "S-1",
            ),
            (
                "PAYMENT.SALE.REFUNDED",
                serde_json::json!({"id": "RF-1", "sale_id": "S-1"}),
                Kind::Refunded,
                "S-1",
            ),
            (
                "CUSTOMER.DISPUTE.RESOLVED",
                serde_json::json!({"dispute_id": "PP-D-1", "disputed_transactions": [{"seller_transaction_id": "C-9"}]}),
                Kind::DisputeClosed,
                "C-9",
            ),
            (
                "CUSTOMER.DISPUTE.UPDATED",
                serde_json::json!({"dispute_id": "PP-D-1", "disputed_transactions": [{"seller_transaction_id": "C-9"}]}),
                Kind::Ignored,
                "C-9",
            ),
        ];
        for (kind, resource, expected, payment) in cases {
            let n = parse(None, &event(kind, resource)).unwrap();
            assert_eq!((n.kind, n.payment_id.as_deref()), (expected, Some(payment)), "{kind}");
        }
        let sale = parse(
            None,
            &event(
                "PAYMENT.SALE.COMPLETED",
                serde_json::json!({"id": "S-1", "amount": {"total": "5.00", "currency": "EUR"}}),
            ),
        )
        .unwrap();
        assert_eq!(sale.amount.unwrap().minor, 500);
        // An amount with more decimals than the currency has is refused, not rounded.
        assert!(parse(
            None,
            &event(
                "PAYMENT.CAPTURE.COMPLETED",
                serde_json::json!({"id": "C", "amount": {"currency_code": "JPY", "value": "10.5"}})
            )
        )
        .is_err());
    }
}
