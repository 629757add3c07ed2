//! Asking the provider: its API, when a webhook is missing or weak.
//!
//! A webhook can be lost for good (the daemon or a proxy was down longer than the provider
//! retries, a secret was rotated on one side only), and PayPal's signature covers only the
//! body's CRC-32. An endpoint with an `[endpoint.api]` table can therefore ask its provider:
//! - [`backfill`]: list the Stripe events the webhook may have missed (`reconciled backfill`,
//!   or `backfill_every` in the daemon), resuming from a cursor kept in the store;
//! - [`paypal`]: have PayPal verify a stored webhook (`verify = "api"`) before it is decided;
//! - [`inquire`]: look up a payment left open too long (`policy.inquire_after`).
//!
//! Whatever the provider answers becomes an inbox row like any other (source `backfill` or
//! `inquiry`), deduplicated by the provider's own id and decided by the same code, so it is
//! replayable and covered by the same guarantees. Keys and tokens never reach a log, an error,
//! `Debug` or the store.

pub mod backfill;
mod http;
pub mod inquire;
pub mod paypal;
pub mod stripe;

use std::time::Duration;

pub use self::http::{ApiError, Http};
use crate::provider::ProviderKind;
use crate::secret::Secret;
use crate::settings::{ConfigError, Resolver};

/// Stripe's API, the default `base_url` of a Stripe endpoint.
pub const STRIPE_BASE_URL: &str = "https://api.stripe.com";
/// PayPal's live API, the default `base_url` of a PayPal endpoint.
pub const PAYPAL_BASE_URL: &str = "https://api-m.paypal.com";
/// How long one API request may take, unless `timeout_secs` says otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest `timeout_secs`.
const MAX_TIMEOUT_SECS: u64 = 120;
/// The shortest `backfill_every`: Stripe's read limits are generous, but a pass every few
/// seconds would only repeat the webhook.
const MIN_BACKFILL_EVERY: Duration = Duration::from_secs(60);

/// `[endpoint.api]`: how to reach the provider's API for one endpoint.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `https://api.stripe.com`, `https://api-m.paypal.com`, or a local fake on loopback;
    /// without a trailing slash.
    pub base_url: String,
    /// Extra trusted roots (PEM) for the HTTPS client.
    pub tls_ca: Option<Vec<u8>>,
    /// The key (Stripe) or client credentials (PayPal).
    pub credentials: Credentials,
    /// Stripe: list missed events on this period in the daemon.
    pub backfill_every: Option<Duration>,
    /// How long one request may take; a request that takes longer ends the pass (backfill,
    /// inquiries) or waits for the next try (PayPal's check).
    pub timeout: Duration,
}

/// What the API is called with. `Debug` never shows a key or a secret.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A Stripe API key, best a restricted `rk_…` key with read access to Events and
    /// PaymentIntents.
    Stripe {
        /// The key, as read from `key_file`.
        key: Secret,
    },
    /// A PayPal REST app's client credentials, exchanged for an OAuth token.
    Paypal {
        /// The app's client id (not secret: it is in the dashboard and the token request).
        client_id: String,
        /// The app's secret, as read from `client_secret_file`.
        client_secret: Secret,
    },
}

/// The keys of `[endpoint.api]`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    key_file: Option<std::path::PathBuf>,
    client_id: Option<String>,
    client_secret_file: Option<std::path::PathBuf>,
    base_url: Option<String>,
    tls_ca_file: Option<std::path::PathBuf>,
    backfill_every: Option<String>,
    timeout_secs: Option<u64>,
}

impl ApiSettings {
    /// Reads an endpoint's `api` table. `path` names it in serde's errors
    /// (`endpoint[0].api`), `r` in the checks here (`endpoint "stripe".api`).
    pub fn resolve(
        kind: ProviderKind,
        path: &str,
        value: toml::Value,
        r: &Resolver<'_>,
    ) -> Result<ApiSettings, ConfigError> {
        let toml::Value::Table(table) = value else {
            return Err(r.invalid("", "must be a table ([endpoint.api])"));
        };
        let raw: Raw = r.deserialize(path, table)?;
        let refuse = |key: &str, present: bool, why: &str| {
            if present {
                Err(r.invalid(key, why.to_owned()))
            } else {
                Ok(())
            }
        };
        let (credentials, default_base) = match kind {
            ProviderKind::Stripe => {
                refuse("client_id", raw.client_id.is_some(), "applies only to provider = \"paypal\" (Stripe uses key_file)")?;
                refuse("client_secret_file", raw.client_secret_file.is_some(), "applies only to provider = \"paypal\" (Stripe uses key_file)")?;
                let path = raw.key_file.as_deref().ok_or_else(|| {
                    r.invalid("key_file", "is required: a file holding a restricted Stripe key (rk_…) with read access to Events and PaymentIntents")
                })?;
                let key = read_secret(r, "key_file", path)?;
                check_stripe_key(r, &key)?;
                (Credentials::Stripe { key }, STRIPE_BASE_URL)
            }
            ProviderKind::Paypal => {
                refuse("key_file", raw.key_file.is_some(), "applies only to provider = \"stripe\" (PayPal uses client_id and client_secret_file)")?;
                refuse("backfill_every", raw.backfill_every.is_some(), "applies only to provider = \"stripe\"")?;
                let client_id = raw.client_id.unwrap_or_default();
                if client_id.is_empty() || !client_id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(r.invalid(
                        "client_id",
                        "is required: the client id of the REST app in PayPal's developer dashboard",
                    ));
                }
                let path = raw.client_secret_file.as_deref().ok_or_else(|| {
                    r.invalid("client_secret_file", "is required: a file holding the REST app's secret")
                })?;
                let client_secret = read_secret(r, "client_secret_file", path)?;
                (Credentials::Paypal { client_id, client_secret }, PAYPAL_BASE_URL)
            }
            other => {
                return Err(r.invalid(
                    "",
                    format!("{other} has no API reconciled can ask (api applies only to provider = \"stripe\" or \"paypal\")"),
                ))
            }
        };
        let base_url = check_base_url(r, raw.base_url.as_deref().unwrap_or(default_base))?;
        let tls_ca = crate::provider::read_tls_ca(r, raw.tls_ca_file.as_deref())?;
        let backfill_every = r.duration("backfill_every", raw.backfill_every.as_deref())?;
        if backfill_every.is_some_and(|d| d < MIN_BACKFILL_EVERY) {
            return Err(r.invalid("backfill_every", "must be at least 1m"));
        }
        let timeout = Duration::from_secs(r.bounded(
            "timeout_secs",
            raw.timeout_secs,
            REQUEST_TIMEOUT.as_secs(),
            MAX_TIMEOUT_SECS,
        )?);
        Ok(ApiSettings { base_url, tls_ca, credentials, backfill_every, timeout })
    }

    /// What `check-config` shows: never a key, at most a hint of one.
    pub fn describe(&self) -> String {
        let who = match &self.credentials {
            Credentials::Stripe { key } => format!("key {}", key.hint()),
            Credentials::Paypal { client_id, .. } => format!("client id {client_id}"),
        };
        let every = match self.backfill_every {
            Some(d) => format!(", backfill every {}", humantime::format_duration(d)),
            None => String::new(),
        };
        format!("API {} ({who}{every})", self.base_url)
    }

    /// The HTTP client for this API.
    pub fn http(&self) -> Result<Http, String> {
        Http::new(self)
    }

    /// The API clients the endpoint's provider asks at run time: PayPal's webhook-signature
    /// check (`verify = "api"`, or a row stored unverified under `certs_then_api`).
    pub fn provider_apis(&self) -> Result<crate::provider::Apis, String> {
        Ok(match &self.credentials {
            Credentials::Paypal { .. } => crate::provider::Apis {
                paypal_signature: Some(std::sync::Arc::new(paypal::PaypalApi::new(self)?)),
            },
            Credentials::Stripe { .. } => crate::provider::Apis::default(),
        })
    }
}

/// Reads a secret from a file (relative to the config), trimmed; never shows it.
fn read_secret(r: &Resolver<'_>, key: &str, path: &std::path::Path) -> Result<Secret, ConfigError> {
    let bytes = r.read(key, path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| r.invalid(key, format!("{} is not UTF-8 text", r.beside(path).display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(r.invalid(key, format!("{} is empty", r.beside(path).display())));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(r.invalid(
            key,
            format!("{} must hold the secret alone, on one line", r.beside(path).display()),
        ));
    }
    Ok(Secret::new(text))
}

/// Refuses what is plainly not a Stripe API key (a webhook secret, a publishable key), and
/// warns about a secret key, which can write as well as read.
fn check_stripe_key(r: &Resolver<'_>, key: &Secret) -> Result<(), ConfigError> {
    let text = String::from_utf8_lossy(key.expose());
    if text.starts_with("whsec_") {
        return Err(r.invalid("key_file", "holds a webhook signing secret (whsec_…): that belongs in secrets; key_file needs an API key (rk_…)"));
    }
    if text.starts_with("pk_") {
        return Err(r.invalid(
            "key_file",
            "holds a publishable key (pk_…), which cannot read events; use a restricted key (rk_…)",
        ));
    }
    if !(text.starts_with("rk_") || text.starts_with("sk_")) {
        return Err(r.invalid("key_file", "does not hold a Stripe API key (rk_… or sk_…)"));
    }
    if text.starts_with("sk_") {
        tracing::warn!("{}: a secret key (sk_…) can change the account; a restricted key (rk_…) with read access to Events and PaymentIntents is all reconciled needs", r.key_name("key_file"));
    }
    Ok(())
}

/// `base_url`: https, or http on a loopback address (a local fake); no path, query or
/// credentials. Returned without a trailing slash.
fn check_base_url(r: &Resolver<'_>, text: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| r.invalid("base_url", format!("\"{text}\" {why}"));
    let url = url::Url::parse(text)
        .map_err(|_| bad("is not a URL such as \"https://api.stripe.com\""))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(r.invalid("base_url", "must not hold credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
        return Err(bad("must be a scheme, host and port only"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Err(bad("has no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(bad("must be https (plain http only on a loopback address)")),
        _ => return Err(bad("must be https")),
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}
