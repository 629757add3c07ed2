//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! The file is read and checked once at start. Everything deeper in the daemon sees only the
//! resolved types here, never raw strings. Errors name the file, the key and what is wrong,
//! and never echo a secret: secret values are read through [`Secret`], whose `Debug` is
//! redacted and whose parse errors describe the expected shape instead of the value found.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{BasicAuth, DbUrl, Secret};

/// Default listen address: loopback, so a fresh install is not reachable from outside.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Largest accepted request body. Stripe events are rarely above a few tens of KiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Time a client has to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Time a client has to send its body, and the daemon has to store it.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// Time a client may take no bytes of an answer before it is disconnected.
pub const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;
/// Open connections served at once; further connections wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long in-flight requests may take to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// How long the writer waits for a lock held by another process before giving up (503).
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5000;
/// Most inbox rows committed in one transaction (one fsync).
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Verification failures kept for forensics; older ones are deleted.
pub const DEFAULT_FAILURES_KEPT: u64 = 1000;
/// Days a finished notification (and its dedup key) is kept after its last delivery.
pub const DEFAULT_RETENTION_DAYS: u64 = 90;
/// The shortest retention allowed: providers retry for up to 30 days (Stripe 3, PayPal and
/// Worldpay longer), and a dedup key pruned before the last retry would let it be decided again.
pub const MIN_RETENTION_DAYS: u64 = 45;
/// MiB of WAL after which a sustained burst of writes pauses to restart it from its beginning.
pub const DEFAULT_WAL_MAX_MB: u64 = 1024;
/// Stripe's own default signature tolerance.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Upper bounds: beyond these a value is a typo, and some would overflow a timer or a buffer.
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
const MAX_TIMEOUT_SECS: u64 = 86_400;
const MAX_CONNECTIONS: u64 = 65_536;
const MAX_BUSY_TIMEOUT_MS: u64 = 600_000;
const MAX_BATCH: u64 = 10_000;
const MAX_FAILURES_KEPT: u64 = 10_000_000;
const MAX_WAL_MB: u64 = 1 << 20;
const MAX_RETENTION_DAYS: u64 = 36_500;

/// The secret printed by `default-config`: a placeholder, refused as a real secret.
pub const PLACEHOLDER_SECRET: &str = "whsec_REPLACE_WITH_YOUR_ENDPOINT_SECRET";
/// The demo's public test secret; refused in any configuration but the demo's own.
pub const DEMO_SECRET: &str = "whsec_demo_PUBLIC_TEST_SECRET_not_for_production";

/// The annotated example printed by `reconciled default-config`.
pub const EXAMPLE: &str = include_str!("../fixtures/config/example.toml");

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from, for messages.
    pub source: PathBuf,
    /// The HTTP listener and its limits.
    pub server: ServerConfig,
    /// The SQLite inbox.
    pub store: StoreConfig,
    /// The webhook endpoints, each served at `POST /webhooks/{name}`.
    pub endpoints: Vec<Endpoint>,
    /// The shop's order database; without it notifications are stored but not reconciled.
    pub shop: Option<ShopConfig>,
    /// What the reconciliation decides in the cases with a choice.
    pub policy: Policy,
    /// The reconciliation worker's timings.
    pub worker: WorkerConfig,
}

/// `[shop]`: where and how to read the shop's orders (read-only).
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// Which database driver.
    pub driver: ShopDriver,
    /// A file path (sqlite) or a `mysql://` / `postgres://` URL; any password is redacted.
    pub url: DbUrl,
    /// The order query, with `:reference` and `:psp_reference` parameters.
    pub query: String,
    /// Cuts a merchant reference down to the order id (first capture group, else the match).
    pub reference_pattern: Option<regex::Regex>,
    /// Shop status strings → what they mean.
    pub status: StatusMap,
    /// Connections kept open to a MySQL/PostgreSQL shop.
    pub pool_size: usize,
}

/// The shop database's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShopDriver {
    /// A SQLite file, read through rusqlite.
    Sqlite,
    /// MySQL or MariaDB.
    Mysql,
    /// PostgreSQL.
    Postgres,
}

/// `[shop.status]`: which shop statuses mean what. Statuses in no list are "other".
#[derive(Debug, Clone, Default)]
pub struct StatusMap {
    /// The order waits for its payment (`pending`, `on-hold`).
    pub awaiting_payment: Vec<String>,
    /// The order is paid (`processing`, `completed`).
    pub paid: Vec<String>,
    /// The order was cancelled (`cancelled`, `failed`).
    pub cancelled: Vec<String>,
}

/// `[policy]`: the choices the decision table leaves to the shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A payment smaller than the order (the cart grew after checkout).
    pub on_underpaid: RefundOrReview,
    /// A payment larger than the order: fulfil and refund the difference, or review.
    pub on_overpaid: OverpaidPolicy,
    /// A payment in another currency than the order's.
    pub on_currency_mismatch: RefundOrReview,
    /// A payment for an order that was cancelled.
    pub on_paid_after_cancel: RefundOrReview,
    /// Fulfil on capture (default) or already on authorization.
    pub fulfil_on: FulfilOn,
    /// How long a notification whose order is not found keeps being retried.
    pub unmatched_retry_for: Duration,
}

/// Refund the payment, or leave it to an admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOrReview {
    /// Emit `refund` + `notify_customer`.
    Refund,
    /// Emit `review`.
    Review,
}

/// What to do with an overpayment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverpaidPolicy {
    /// Fulfil and refund the difference.
    RefundDifference,
    /// Emit `review`.
    Review,
}

/// When a payment is good enough to fulfil.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FulfilOn {
    /// When the money is captured (`succeeded`).
    Captured,
    /// Already when it is authorized.
    Authorized,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            on_underpaid: RefundOrReview::Refund,
            on_overpaid: OverpaidPolicy::RefundDifference,
            on_currency_mismatch: RefundOrReview::Refund,
            on_paid_after_cancel: RefundOrReview::Refund,
            fulfil_on: FulfilOn::Captured,
            unmatched_retry_for: Duration::from_secs(30 * 60),
        }
    }
}

/// `[worker]`: retries and batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Rows left `processing` by an earlier version (which claimed under a lease) are taken
    /// again after this; the current worker claims in memory and never leaves such rows.
    pub lease: Duration,
    /// Attempts before a row that keeps failing is marked `dead`.
    pub max_attempts: u32,
    /// First retry delay; it doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Rows claimed per pass.
    pub batch: usize,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            lease: Duration::from_secs(60),
            max_attempts: 20,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            batch: 256,
        }
    }
}

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

/// `[store]`: the SQLite inbox file and its writer.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file (created if missing).
    pub path: PathBuf,
    /// Wait for another process's lock before failing the batch.
    pub busy_timeout: Duration,
    /// Most rows per group commit.
    pub max_batch: usize,
    /// Verification failures kept; the table never grows past this.
    pub failures_kept: u64,
    /// Finished inbox rows (and their actions) are deleted this many days after their last
    /// delivery; never fewer than [`MIN_RETENTION_DAYS`].
    pub retention_days: u64,
    /// The WAL's size, in MiB, past which the writer restarts it during a sustained burst.
    pub wal_max_mb: u64,
}

/// Which provider's wire format an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Stripe snapshot and thin events, `Stripe-Signature` HMAC.
    Stripe,
    /// Access Worldpay events (JSON), `Event-Signature` HMAC per key id.
    Worldpay,
    /// Worldpay Corporate Gateway XML order notifications (no signature: trust options).
    WorldpayXml,
    /// Adflex server-to-server notifications (format assumed; field paths configurable).
    Adflex,
    /// PayPal REST webhooks, RSA-signed transmissions.
    Paypal,
    /// PayPal IPN, verified by posting it back to PayPal.
    PaypalIpn,
}

impl ProviderKind {
    /// The name used in the config file and in the inbox's `provider` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Stripe => "stripe",
            ProviderKind::Worldpay => "worldpay",
            ProviderKind::WorldpayXml => "worldpay-xml",
            ProviderKind::Adflex => "adflex",
            ProviderKind::Paypal => "paypal",
            ProviderKind::PaypalIpn => "paypal-ipn",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "stripe" => Some(ProviderKind::Stripe),
            "worldpay" => Some(ProviderKind::Worldpay),
            "worldpay-xml" => Some(ProviderKind::WorldpayXml),
            "adflex" => Some(ProviderKind::Adflex),
            "paypal" => Some(ProviderKind::Paypal),
            "paypal-ipn" => Some(ProviderKind::PaypalIpn),
            _ => None,
        }
    }
}

/// `[[endpoint]]`: one URL a provider posts to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Path segment: the endpoint is served at `POST /webhooks/{name}`.
    pub name: String,
    /// Wire format and signature scheme.
    pub provider: ProviderKind,
    /// Signing secrets; any of them verifies (several are live while a secret is rolled).
    pub secrets: Vec<Secret>,
    /// Largest accepted distance between a signature's timestamp and now, either way.
    pub tolerance: Duration,
    /// Worldpay: signing secrets by key id (`Event-Signature: {keyId}/SHA256/{hex}`).
    pub keys: Vec<(String, Secret)>,
    /// Optional HTTP basic auth every request must carry.
    pub basic_auth: Option<BasicAuth>,
    /// Optional source-address allow-list; empty means any address.
    pub allow_from: Vec<ipnet::IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed when checking `allow_from`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Adflex: the header carrying a hex HMAC-SHA256 of the body, if notifications are signed
    /// (keyed with `secrets`).
    pub signature_header: Option<String>,
    /// Adflex: where each field sits in the JSON notification.
    pub fields: AdflexFields,
    /// PayPal webhooks: the subscription's id and where signing certificates come from.
    pub paypal: Option<PaypalSettings>,
    /// PayPal IPN: whose notifications these are and where to verify them.
    pub ipn: Option<IpnSettings>,
    /// Worldpay XML: the merchant codes whose notifications this endpoint takes (empty: any).
    pub merchant_codes: Vec<String>,
}

/// PayPal's API hosts, the default `cert_hosts`: certificate URLs on any other host are refused.
pub const PAYPAL_CERT_HOSTS: &[&str] =
    &["api.paypal.com", "api-m.paypal.com", "api.sandbox.paypal.com", "api-m.sandbox.paypal.com"];
/// The default `cert_subjects`.
pub const PAYPAL_CERT_SUBJECTS: &[&str] = &["*.paypal.com"];
/// PayPal's live IPN verification URL, the default `verify_url`.
pub const IPN_VERIFY_URL: &str = "https://ipnpb.paypal.com/cgi-bin/webscr";

/// `provider = "paypal"` settings.
#[derive(Debug, Clone)]
pub struct PaypalSettings {
    /// The id of our webhook subscription: part of the signed string.
    pub webhook_id: String,
    /// Pinned signing certificates (PEM files), tried before any download.
    pub certs: Vec<crate::provider::paypal::Certificate>,
    /// Whether certificates may be downloaded from `PAYPAL-CERT-URL` (allowed hosts only).
    pub cert_url_fetch: bool,
    /// Hosts (`host` or `host:port`) a certificate URL may name.
    pub cert_hosts: Vec<String>,
    /// Subject name patterns a signing certificate must match (`*.paypal.com`).
    pub cert_subjects: Vec<String>,
    /// Extra trusted roots (PEM) for the HTTPS download.
    pub tls_ca: Option<Vec<u8>>,
    /// Which resource field holds the shop's order reference.
    pub reference: PaypalReference,
}

/// Where a PayPal resource carries the shop's reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaypalReference {
    /// `custom_id`, then `invoice_id`.
    CustomId,
    /// `invoice_id`, then `custom_id`.
    InvoiceId,
}

/// `provider = "paypal-ipn"` settings.
#[derive(Debug, Clone)]
pub struct IpnSettings {
    /// Our PayPal account's email; the message's `receiver_email` must equal it.
    pub receiver_email: Option<String>,
    /// Our PayPal account's merchant id; the message's `receiver_id` must equal it.
    pub receiver_id: Option<String>,
    /// Where messages are posted back for verification (https).
    pub verify_url: String,
    /// Extra trusted roots (PEM) for the postback.
    pub tls_ca: Option<Vec<u8>>,
    /// Which field holds the shop's order reference.
    pub reference: IpnReference,
}

impl Default for IpnSettings {
    fn default() -> IpnSettings {
        IpnSettings {
            receiver_email: None,
            receiver_id: None,
            verify_url: IPN_VERIFY_URL.into(),
            tls_ca: None,
            reference: IpnReference::Invoice,
        }
    }
}

/// Where an IPN message carries the shop's reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpnReference {
    /// `invoice`, then `custom`.
    Invoice,
    /// `custom`, then `invoice`.
    Custom,
}

/// Dotted JSON paths of the Adflex notification's fields. The format is not public: these
/// defaults follow Adflex's hosted payment page API and can be changed per endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdflexFields {
    /// The transaction's GUID (the payment id).
    pub transaction_id: String,
    /// The merchant's reference (order id).
    pub reference: String,
    /// The amount, a decimal string.
    pub amount: String,
    /// The ISO 4217 currency.
    pub currency: String,
    /// The status code (`Authorised`, `Settled`, `Declined`, …).
    pub status: String,
}

impl Default for AdflexFields {
    fn default() -> AdflexFields {
        AdflexFields {
            transaction_id: "transactionGUID".into(),
            reference: "reference".into(),
            amount: "amount.value".into(),
            currency: "amount.currency".into(),
            status: "statusCode".into(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key holds a wrong value.
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key (`endpoint[0].secrets`) or position (`line 3, column 7`) at fault.
        key: String,
        /// What is wrong, never including a secret.
        message: String,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default, rename = "endpoint")]
    endpoints: Vec<RawEndpoint>,
    shop: Option<RawShop>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    worker: RawWorker,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShop {
    driver: String,
    url: String,
    query: String,
    reference_pattern: Option<String>,
    #[serde(default)]
    status: RawStatus,
    pool_size: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    #[serde(default)]
    awaiting_payment: Vec<String>,
    #[serde(default)]
    paid: Vec<String>,
    #[serde(default)]
    cancelled: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    on_underpaid: Option<String>,
    on_overpaid: Option<String>,
    on_currency_mismatch: Option<String>,
    on_paid_after_cancel: Option<String>,
    fulfil_on: Option<String>,
    unmatched_retry_for: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    lease: Option<String>,
    max_attempts: Option<u32>,
    retry_base: Option<String>,
    retry_max: Option<String>,
    batch: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_body_bytes: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    write_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
    busy_timeout_ms: Option<u64>,
    max_batch: Option<usize>,
    failures_kept: Option<u64>,
    retention_days: Option<u64>,
    wal_max_mb: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    provider: String,
    #[serde(default, deserialize_with = "crate::secret::secret_list")]
    secrets: Vec<Secret>,
    tolerance_secs: Option<u64>,
    #[serde(default, deserialize_with = "crate::secret::secret_map")]
    keys: Vec<(String, Secret)>,
    #[serde(default, deserialize_with = "crate::secret::basic_auth_table")]
    basic_auth: Option<BasicAuth>,
    #[serde(default)]
    allow_from: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    signature_header: Option<String>,
    #[serde(default)]
    fields: RawFields,
    webhook_id: Option<String>,
    #[serde(default)]
    certs: Vec<PathBuf>,
    cert_url_fetch: Option<bool>,
    cert_hosts: Option<Vec<String>>,
    cert_subjects: Option<Vec<String>>,
    tls_ca_file: Option<PathBuf>,
    reference: Option<String>,
    receiver_email: Option<String>,
    receiver_id: Option<String>,
    verify_url: Option<String>,
    merchant_codes: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFields {
    transaction_id: Option<String>,
    reference: Option<String>,
    amount: Option<String>,
    currency: Option<String>,
    status: Option<String>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::from_toml(&text, path)
    }

    /// Validates configuration text; `source` names it in messages.
    pub fn from_toml(text: &str, source: &Path) -> Result<Config, ConfigError> {
        Config::parse(text, source, false)
    }

    /// The demo's configuration, the one place its public test secret is allowed.
    pub fn demo(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("(demo)"), true)
    }

    fn parse(text: &str, source: &Path, allow_demo_secret: bool) -> Result<Config, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: source.to_owned(),
            key,
            message,
        };
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let key = if path.is_empty() || path == "." {
                    position(text, inner.span())
                } else {
                    path
                };
                invalid(key, inner.message().to_owned())
            })?;

        let s = raw.server;
        let listen_text = s.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "server.listen".into(),
                format!(
                    "\"{listen_text}\" is not an IP address and port such as \"127.0.0.1:8080\""
                ),
            )
        })?;
        let bounded =
            |key: &str, v: Option<u64>, default: u64, max: u64| -> Result<u64, ConfigError> {
                match v.unwrap_or(default) {
                    0 => Err(invalid(key.into(), "must be greater than 0".into())),
                    n if n > max => {
                        Err(invalid(key.into(), format!("{n} is above the limit of {max}")))
                    }
                    n => Ok(n),
                }
            };
        let positive =
            |key: &str, v: Option<u64>, default: u64| bounded(key, v, default, MAX_TIMEOUT_SECS);
        let server = ServerConfig {
            listen,
            max_body_bytes: bounded(
                "server.max_body_bytes",
                s.max_body_bytes,
                DEFAULT_MAX_BODY_BYTES,
                MAX_BODY_BYTES,
            )?,
            header_read_timeout: Duration::from_secs(positive(
                "server.header_read_timeout_secs",
                s.header_read_timeout_secs,
                DEFAULT_HEADER_READ_TIMEOUT_SECS,
            )?),
            request_timeout: Duration::from_secs(positive(
                "server.request_timeout_secs",
                s.request_timeout_secs,
                DEFAULT_REQUEST_TIMEOUT_SECS,
            )?),
            write_timeout: Duration::from_secs(positive(
                "server.write_timeout_secs",
                s.write_timeout_secs,
                DEFAULT_WRITE_TIMEOUT_SECS,
            )?),
            max_connections: bounded(
                "server.max_connections",
                s.max_connections.map(|n| n as u64),
                DEFAULT_MAX_CONNECTIONS as u64,
                MAX_CONNECTIONS,
            )? as usize,
            shutdown_grace: Duration::from_secs(bounded(
                "server.shutdown_grace_secs",
                s.shutdown_grace_secs.map(|n| n.max(1)),
                DEFAULT_SHUTDOWN_GRACE_SECS,
                MAX_TIMEOUT_SECS,
            )?),
        };

        let st = raw.store;
        let path = st.path.unwrap_or_else(|| PathBuf::from("reconciled.db"));
        if path.as_os_str().is_empty() {
            return Err(invalid("store.path".into(), "must not be empty".into()));
        }
        // A relative store path is relative to the config file, not to wherever the daemon
        // happens to be started from.
        let path = match source.parent() {
            Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
            _ => path,
        };
        let store = StoreConfig {
            path,
            busy_timeout: Duration::from_millis(bounded(
                "store.busy_timeout_ms",
                st.busy_timeout_ms,
                DEFAULT_BUSY_TIMEOUT_MS,
                MAX_BUSY_TIMEOUT_MS,
            )?),
            max_batch: bounded(
                "store.max_batch",
                st.max_batch.map(|n| n as u64),
                DEFAULT_MAX_BATCH as u64,
                MAX_BATCH,
            )? as usize,
            failures_kept: bounded(
                "store.failures_kept",
                st.failures_kept,
                DEFAULT_FAILURES_KEPT,
                MAX_FAILURES_KEPT,
            )?,
            wal_max_mb: bounded("store.wal_max_mb", st.wal_max_mb, DEFAULT_WAL_MAX_MB, MAX_WAL_MB)?,
            retention_days: match st.retention_days {
                Some(n) if n < MIN_RETENTION_DAYS => {
                    return Err(invalid(
                        "store.retention_days".into(),
                        format!(
                        "{n} is below the minimum of {MIN_RETENTION_DAYS}: providers retry for up \
                             to 30 days, and a notification whose dedup key was pruned would be \
                             decided again"
                    ),
                    ))
                }
                v => {
                    bounded("store.retention_days", v, DEFAULT_RETENTION_DAYS, MAX_RETENTION_DAYS)?
                }
            },
        };

        if raw.endpoints.is_empty() {
            return Err(invalid(
                "endpoint".into(),
                "no [[endpoint]] is configured; the daemon would accept nothing".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut endpoints = Vec::with_capacity(raw.endpoints.len());
        for (i, e) in raw.endpoints.into_iter().enumerate() {
            let at = format!("endpoint[{i}]");
            if e.name.is_empty()
                || !e.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("\"{}\" must be non-empty and use only letters, digits, - and _ (it becomes the URL path)", e.name),
                ));
            }
            let at = format!("endpoint \"{}\"", e.name);
            if !names.insert(e.name.clone()) {
                return Err(invalid(format!("{at}.name"), "is used by two endpoints".into()));
            }
            let provider = ProviderKind::parse(&e.provider).ok_or_else(|| {
                invalid(
                    format!("{at}.provider"),
                    format!("\"{}\" is not a supported provider (supported: stripe, paypal, paypal-ipn, worldpay, worldpay-xml, adflex)", e.provider),
                )
            })?;
            let has_trust = e.basic_auth.is_some() || !e.allow_from.is_empty();
            match provider {
                ProviderKind::Stripe if e.secrets.is_empty() => {
                    return Err(invalid(
                        format!("{at}.secrets"),
                        "at least one signing secret is required".into(),
                    ))
                }
                ProviderKind::Worldpay if e.keys.is_empty() => {
                    return Err(invalid(
                        format!("{at}.keys"),
                        "at least one key id = \"secret\" is required (Event-Signature)".into(),
                    ))
                }
                ProviderKind::Adflex if !has_trust && e.signature_header.is_none() => {
                    return Err(invalid(
                        format!("{at}.signature_header"),
                        "adflex needs signature_header (with secrets), basic_auth or allow_from".into(),
                    ))
                }
                ProviderKind::Adflex if e.signature_header.is_some() == e.secrets.is_empty() => {
                    return Err(invalid(
                        format!("{at}.secrets"),
                        "signature_header and secrets go together".into(),
                    ))
                }
                ProviderKind::WorldpayXml if !has_trust => {
                    return Err(invalid(
                        format!("{at}.basic_auth"),
                        "worldpay-xml notifications carry no signature: configure basic_auth and/or allow_from".into(),
                    ))
                }
                ProviderKind::Worldpay
                | ProviderKind::WorldpayXml
                | ProviderKind::Paypal
                | ProviderKind::PaypalIpn
                    if !e.secrets.is_empty() =>
                {
                    return Err(invalid(
                        format!("{at}.secrets"),
                        format!("{} does not use secrets (see keys, basic_auth)", provider.as_str()),
                    ))
                }
                _ => {}
            }
            if let Some((id, _)) =
                e.keys.iter().find(|(id, s)| id.is_empty() || s.expose().is_empty())
            {
                return Err(invalid(
                    format!("{at}.keys"),
                    format!("key id \"{id}\" or its secret is empty"),
                ));
            }
            let nets = |key: &str, list: &[String]| -> Result<Vec<ipnet::IpNet>, ConfigError> {
                list.iter()
                    .map(|n| {
                        n.parse::<ipnet::IpNet>()
                            .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .map_err(|_| {
                                invalid(format!("{at}.{key}"), format!("\"{n}\" is not an address or CIDR such as \"192.0.2.0/24\""))
                            })
                    })
                    .collect()
            };
            let allow_from = nets("allow_from", &e.allow_from)?;
            let trusted_proxies = nets("trusted_proxies", &e.trusted_proxies)?;
            let basic_auth = match e.basic_auth {
                Some(b)
                    if b.user.is_empty()
                        || b.user.contains(':')
                        || b.password.expose().is_empty() =>
                {
                    return Err(invalid(
                        format!("{at}.basic_auth"),
                        "user must be non-empty without ':' and password non-empty".into(),
                    ))
                }
                Some(b) => Some(b),
                None => None,
            };
            if let Some(n) = e.secrets.iter().position(|s| s.expose().is_empty()) {
                return Err(invalid(format!("{at}.secrets[{n}]"), "is empty".into()));
            }
            let public = |s: &Secret| {
                s.expose() == PLACEHOLDER_SECRET.as_bytes()
                    || (!allow_demo_secret && s.expose() == DEMO_SECRET.as_bytes())
            };
            if let Some(n) = e.secrets.iter().position(public) {
                return Err(invalid(
                    format!("{at}.secrets[{n}]"),
                    "is the example's placeholder or the demo's public test secret; use the signing secret from the provider's dashboard".into(),
                ));
            }
            let beside = |p: &Path| match source.parent() {
                Some(dir) if p.is_relative() && !dir.as_os_str().is_empty() => dir.join(p),
                _ => p.to_owned(),
            };
            let read = |key: &str, p: &Path| {
                std::fs::read(beside(p)).map_err(|err| {
                    invalid(
                        format!("{at}.{key}"),
                        format!("cannot read {}: {err}", beside(p).display()),
                    )
                })
            };
            let tls_ca = match &e.tls_ca_file {
                Some(p) => {
                    let pem = read("tls_ca_file", p)?;
                    match reqwest::Certificate::from_pem_bundle(&pem) {
                        Ok(v) if !v.is_empty() => Some(pem),
                        _ => {
                            return Err(invalid(
                                format!("{at}.tls_ca_file"),
                                "holds no PEM certificate".into(),
                            ))
                        }
                    }
                }
                None => None,
            };
            let misplaced = |key: &str, set: bool, only: &str| {
                if set {
                    Err(invalid(
                        format!("{at}.{key}"),
                        format!("applies only to provider = \"{only}\""),
                    ))
                } else {
                    Ok(())
                }
            };
            let is_paypal = provider == ProviderKind::Paypal;
            let is_ipn = provider == ProviderKind::PaypalIpn;
            if !is_paypal {
                misplaced("webhook_id", e.webhook_id.is_some(), "paypal")?;
                misplaced("certs", !e.certs.is_empty(), "paypal")?;
                misplaced("cert_url_fetch", e.cert_url_fetch.is_some(), "paypal")?;
                misplaced("cert_hosts", e.cert_hosts.is_some(), "paypal")?;
                misplaced("cert_subjects", e.cert_subjects.is_some(), "paypal")?;
            }
            if !is_ipn {
                misplaced("receiver_email", e.receiver_email.is_some(), "paypal-ipn")?;
                misplaced("receiver_id", e.receiver_id.is_some(), "paypal-ipn")?;
                misplaced("verify_url", e.verify_url.is_some(), "paypal-ipn")?;
            }
            if provider != ProviderKind::WorldpayXml {
                misplaced("merchant_codes", e.merchant_codes.is_some(), "worldpay-xml")?;
            }
            let merchant_codes = e.merchant_codes.clone().unwrap_or_default();
            if merchant_codes.iter().any(|c| c.trim().is_empty()) {
                return Err(invalid(format!("{at}.merchant_codes"), "holds an empty code".into()));
            }
            if !is_paypal && !is_ipn {
                misplaced("tls_ca_file", e.tls_ca_file.is_some(), "paypal or paypal-ipn")?;
                misplaced("reference", e.reference.is_some(), "paypal or paypal-ipn")?;
            }
            let paypal = if is_paypal {
                let webhook_id = e.webhook_id.clone().unwrap_or_default();
                if webhook_id.is_empty() || !webhook_id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid(
                        format!("{at}.webhook_id"),
                        "the id of the webhook in PayPal's developer dashboard is required (it is part of what PayPal signs)".into(),
                    ));
                }
                let mut certs = Vec::with_capacity(e.certs.len());
                for (n, p) in e.certs.iter().enumerate() {
                    let pem = read(&format!("certs[{n}]"), p)?;
                    let cert =
                        crate::provider::paypal::Certificate::from_pem(&pem).map_err(|err| {
                            invalid(
                                format!("{at}.certs[{n}]"),
                                format!("{}: {err}", beside(p).display()),
                            )
                        })?;
                    certs.push(cert);
                }
                let cert_url_fetch = e.cert_url_fetch.unwrap_or(false);
                if certs.is_empty() && !cert_url_fetch {
                    return Err(invalid(
                        format!("{at}.certs"),
                        "pin PayPal's signing certificate (certs = [\"paypal-cert.pem\"]) and/or set cert_url_fetch = true".into(),
                    ));
                }
                let lower = |v: &Option<Vec<String>>, default: &[&str]| -> Vec<String> {
                    match v {
                        Some(list) => list.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
                        None => default.iter().map(|h| (*h).to_owned()).collect(),
                    }
                };
                let cert_hosts = lower(&e.cert_hosts, PAYPAL_CERT_HOSTS);
                if let Some(h) =
                    cert_hosts.iter().find(|h| h.is_empty() || h.contains('/') || h.contains('@'))
                {
                    return Err(invalid(
                        format!("{at}.cert_hosts"),
                        format!("\"{h}\" is not a host or host:port"),
                    ));
                }
                let cert_subjects = lower(&e.cert_subjects, PAYPAL_CERT_SUBJECTS);
                if cert_subjects.is_empty() {
                    return Err(invalid(format!("{at}.cert_subjects"), "must not be empty".into()));
                }
                let reference = match e.reference.as_deref() {
                    None | Some("custom_id") => PaypalReference::CustomId,
                    Some("invoice_id") => PaypalReference::InvoiceId,
                    Some(other) => {
                        return Err(invalid(
                            format!("{at}.reference"),
                            format!("\"{other}\" is not custom_id or invoice_id"),
                        ))
                    }
                };
                Some(PaypalSettings {
                    webhook_id,
                    certs,
                    cert_url_fetch,
                    cert_hosts,
                    cert_subjects,
                    tls_ca: tls_ca.clone(),
                    reference,
                })
            } else {
                None
            };
            let ipn = if is_ipn {
                let nonempty = |v: &Option<String>| {
                    v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
                };
                let (receiver_email, receiver_id) =
                    (nonempty(&e.receiver_email), nonempty(&e.receiver_id));
                if receiver_email.is_none() && receiver_id.is_none() {
                    return Err(invalid(
                        format!("{at}.receiver_email"),
                        "set receiver_email and/or receiver_id (your PayPal account's): messages for other accounts are refused".into(),
                    ));
                }
                let verify_url = e.verify_url.clone().unwrap_or_else(|| IPN_VERIFY_URL.into());
                match url::Url::parse(&verify_url) {
                    Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {}
                    _ => {
                        return Err(invalid(
                            format!("{at}.verify_url"),
                            format!(
                            "\"{verify_url}\" is not an https URL (PayPal's is {IPN_VERIFY_URL})"
                        ),
                        ))
                    }
                }
                let reference = match e.reference.as_deref() {
                    None | Some("invoice") => IpnReference::Invoice,
                    Some("custom") => IpnReference::Custom,
                    Some(other) => {
                        return Err(invalid(
                            format!("{at}.reference"),
                            format!("\"{other}\" is not invoice or custom"),
                        ))
                    }
                };
                Some(IpnSettings {
                    receiver_email,
                    receiver_id,
                    verify_url,
                    tls_ca: tls_ca.clone(),
                    reference,
                })
            } else {
                None
            };
            let tolerance = Duration::from_secs(positive(
                &format!("{at}.tolerance_secs"),
                e.tolerance_secs,
                DEFAULT_TOLERANCE_SECS,
            )?);
            endpoints.push(Endpoint {
                name: e.name,
                provider,
                secrets: e.secrets,
                tolerance,
                keys: e.keys,
                basic_auth,
                allow_from,
                trusted_proxies,
                signature_header: e.signature_header.map(|h| h.to_ascii_lowercase()),
                fields: {
                    let d = AdflexFields::default();
                    AdflexFields {
                        transaction_id: e.fields.transaction_id.unwrap_or(d.transaction_id),
                        reference: e.fields.reference.unwrap_or(d.reference),
                        amount: e.fields.amount.unwrap_or(d.amount),
                        currency: e.fields.currency.unwrap_or(d.currency),
                        status: e.fields.status.unwrap_or(d.status),
                    }
                },
                paypal,
                ipn,
                merchant_codes,
            });
        }

        let shop = raw.shop.map(|sh| resolve_shop(sh, source)).transpose()?;
        let policy = resolve_policy(raw.policy, source)?;
        let worker = resolve_worker(raw.worker, source)?;
        Ok(Config { source: source.to_owned(), server, store, endpoints, shop, policy, worker })
    }

    /// A human summary for `check-config`, with every secret replaced by a hint.
    pub fn summary(&self) -> String {
        use fmt::Write;
        let s = &self.server;
        let mut out = String::new();
        let _ = writeln!(out, "config: {} (valid)", self.source.display());
        let _ = writeln!(out, "listen: {}", s.listen);
        let _ = writeln!(
            out,
            "limits: body {} bytes, headers {}s, request {}s, write stall {}s, {} connections, drain {}s",
            s.max_body_bytes,
            s.header_read_timeout.as_secs(),
            s.request_timeout.as_secs(),
            s.write_timeout.as_secs(),
            s.max_connections,
            s.shutdown_grace.as_secs()
        );
        let _ = writeln!(
            out,
            "store: {} (batch {}, busy timeout {} ms, {} failures kept, finished rows kept {} days, \
             WAL restarted past {} MiB)",
            self.store.path.display(),
            self.store.max_batch,
            self.store.busy_timeout.as_millis(),
            self.store.failures_kept,
            self.store.retention_days,
            self.store.wal_max_mb
        );
        if let Some(shop) = &self.shop {
            let _ = writeln!(out, "shop: {:?} {}", shop.driver, shop.url);
        }
        let p = &self.policy;
        let _ = writeln!(
            out,
            "policy: underpaid {:?}, overpaid {:?}, currency mismatch {:?}, paid after cancel {:?}, fulfil on {:?}, unmatched retried for {}s",
            p.on_underpaid,
            p.on_overpaid,
            p.on_currency_mismatch,
            p.on_paid_after_cancel,
            p.fulfil_on,
            p.unmatched_retry_for.as_secs()
        );
        for e in &self.endpoints {
            let mut hints: Vec<String> = e.secrets.iter().map(Secret::hint).collect();
            hints.extend(e.keys.iter().map(|(id, k)| format!("key {id}: {}", k.hint())));
            if let Some(b) = &e.basic_auth {
                hints.push(format!("basic auth user {}", b.user));
            }
            if !e.allow_from.is_empty() {
                let nets: Vec<String> = e.allow_from.iter().map(ToString::to_string).collect();
                hints.push(format!("allowed from {}", nets.join(" ")));
            }
            if let Some(p) = &e.paypal {
                hints.push(format!(
                    "webhook id {}, {} pinned certificate(s), certificate download {} (hosts {})",
                    p.webhook_id,
                    p.certs.len(),
                    if p.cert_url_fetch { "on" } else { "off" },
                    p.cert_hosts.join(" ")
                ));
            }
            if let Some(i) = &e.ipn {
                let receiver = [i.receiver_email.as_deref(), i.receiver_id.as_deref()];
                hints.push(format!(
                    "receiver {}, verified by postback to {}",
                    receiver.iter().flatten().copied().collect::<Vec<_>>().join(" / "),
                    i.verify_url
                ));
            }
            let _ = writeln!(
                out,
                "endpoint {}: POST /webhooks/{}, provider {}, tolerance {}s, {} secret(s); {}",
                e.name,
                e.name,
                e.provider.as_str(),
                e.tolerance.as_secs(),
                e.secrets.len(),
                hints.join(", ")
            );
        }
        out
    }
}

fn invalid_at(source: &Path, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: source.to_owned(), key: key.into(), message: message.into() }
}

fn resolve_shop(sh: RawShop, source: &Path) -> Result<ShopConfig, ConfigError> {
    let driver = match sh.driver.as_str() {
        "sqlite" => ShopDriver::Sqlite,
        "mysql" | "mariadb" => ShopDriver::Mysql,
        "postgres" | "postgresql" => ShopDriver::Postgres,
        other => {
            return Err(invalid_at(
                source,
                "shop.driver",
                format!("\"{other}\" is not a supported driver (sqlite, mysql, postgres)"),
            ))
        }
    };
    let url = match driver {
        ShopDriver::Sqlite => {
            let path = PathBuf::from(&sh.url);
            match source.parent() {
                Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => {
                    dir.join(path).to_string_lossy().into_owned()
                }
                _ => sh.url,
            }
        }
        ShopDriver::Mysql if !sh.url.starts_with("mysql://") => {
            return Err(invalid_at(
                source,
                "shop.url",
                "must be a mysql://user:password@host:port/database URL",
            ))
        }
        ShopDriver::Postgres
            if !(sh.url.starts_with("postgres://") || sh.url.starts_with("postgresql://")) =>
        {
            return Err(invalid_at(
                source,
                "shop.url",
                "must be a postgres://user:password@host:port/database URL",
            ))
        }
        _ => sh.url,
    };
    if url.trim().is_empty() {
        return Err(invalid_at(source, "shop.url", "must not be empty"));
    }
    if !sh.query.contains(":reference") && !sh.query.contains(":psp_reference") {
        return Err(invalid_at(
            source,
            "shop.query",
            "must use :reference and/or :psp_reference to find the order",
        ));
    }
    let reference_pattern = match &sh.reference_pattern {
        None => None,
        Some(p) => Some(regex::Regex::new(p).map_err(|e| {
            invalid_at(
                source,
                "shop.reference_pattern",
                format!("not a valid regular expression: {e}"),
            )
        })?),
    };
    let status = StatusMap {
        awaiting_payment: sh.status.awaiting_payment,
        paid: sh.status.paid,
        cancelled: sh.status.cancelled,
    };
    if status.awaiting_payment.is_empty() || status.paid.is_empty() || status.cancelled.is_empty() {
        return Err(invalid_at(
            source,
            "shop.status",
            "needs awaiting_payment, paid and cancelled lists of the shop's status values",
        ));
    }
    let pool_size = match sh.pool_size.unwrap_or(4) {
        0 => return Err(invalid_at(source, "shop.pool_size", "must be greater than 0")),
        n => n,
    };
    Ok(ShopConfig {
        driver,
        url: DbUrl::new(url),
        query: sh.query,
        reference_pattern,
        status,
        pool_size,
    })
}

fn resolve_policy(p: RawPolicy, source: &Path) -> Result<Policy, ConfigError> {
    let d = Policy::default();
    let refund_or_review = |key: &str, v: Option<String>, default| match v.as_deref() {
        None => Ok(default),
        Some("refund") => Ok(RefundOrReview::Refund),
        Some("review") => Ok(RefundOrReview::Review),
        Some(other) => {
            Err(invalid_at(source, key, format!("\"{other}\" must be \"refund\" or \"review\"")))
        }
    };
    Ok(Policy {
        on_underpaid: refund_or_review("policy.on_underpaid", p.on_underpaid, d.on_underpaid)?,
        on_currency_mismatch: refund_or_review(
            "policy.on_currency_mismatch",
            p.on_currency_mismatch,
            d.on_currency_mismatch,
        )?,
        on_paid_after_cancel: refund_or_review(
            "policy.on_paid_after_cancel",
            p.on_paid_after_cancel,
            d.on_paid_after_cancel,
        )?,
        on_overpaid: match p.on_overpaid.as_deref() {
            None => d.on_overpaid,
            Some("refund_difference") => OverpaidPolicy::RefundDifference,
            Some("review") => OverpaidPolicy::Review,
            Some(other) => {
                return Err(invalid_at(
                    source,
                    "policy.on_overpaid",
                    format!("\"{other}\" must be \"refund_difference\" or \"review\""),
                ))
            }
        },
        fulfil_on: match p.fulfil_on.as_deref() {
            None => d.fulfil_on,
            Some("captured") => FulfilOn::Captured,
            Some("authorized") => FulfilOn::Authorized,
            Some(other) => {
                return Err(invalid_at(
                    source,
                    "policy.fulfil_on",
                    format!("\"{other}\" must be \"captured\" or \"authorized\""),
                ))
            }
        },
        unmatched_retry_for: duration(source, "policy.unmatched_retry_for", p.unmatched_retry_for)?
            .unwrap_or(d.unmatched_retry_for),
    })
}

fn resolve_worker(w: RawWorker, source: &Path) -> Result<WorkerConfig, ConfigError> {
    let d = WorkerConfig::default();
    let c = WorkerConfig {
        lease: duration(source, "worker.lease", w.lease)?.unwrap_or(d.lease),
        max_attempts: w.max_attempts.unwrap_or(d.max_attempts),
        retry_base: duration(source, "worker.retry_base", w.retry_base)?.unwrap_or(d.retry_base),
        retry_max: duration(source, "worker.retry_max", w.retry_max)?.unwrap_or(d.retry_max),
        batch: w.batch.unwrap_or(d.batch),
    };
    if c.max_attempts == 0 {
        return Err(invalid_at(source, "worker.max_attempts", "must be greater than 0"));
    }
    if c.batch == 0 {
        return Err(invalid_at(source, "worker.batch", "must be greater than 0"));
    }
    if c.lease.is_zero() {
        return Err(invalid_at(source, "worker.lease", "must be greater than 0"));
    }
    Ok(c)
}

fn duration(source: &Path, key: &str, v: Option<String>) -> Result<Option<Duration>, ConfigError> {
    v.map(|t| {
        crate::time::parse_duration(&t).ok_or_else(|| {
            invalid_at(
                source,
                key,
                format!("\"{t}\" is not a duration such as \"45s\", \"30m\", \"2h\""),
            )
        })
    })
    .transpose()
}

/// `line L, column C` of a byte span in the text, for syntax errors that have no key.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else { return "(file)".into() };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9000"
[store]
path = "x.db"
[[endpoint]]
name = "stripe"
provider = "stripe"
secrets = ["whsec_abcdef123456", "whsec_rolled"]
tolerance_secs = 120
"#;

    #[test]
    fn good_config_resolves_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.server.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.server.write_timeout, Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS));
        assert_eq!(c.endpoints[0].secrets.len(), 2);
        assert_eq!(c.endpoints[0].tolerance, Duration::from_secs(120));
    }

    #[test]
    fn debug_and_summary_never_show_secrets() {
        let c = parse(GOOD).unwrap();
        let dbg = format!("{c:?}");
        let summary = c.summary();
        for text in [&dbg, &summary] {
            assert!(!text.contains("abcdef123456"), "{text}");
            assert!(!text.contains("whsec_rolled"), "{text}");
        }
        assert!(summary.contains("2 secret(s)"));
    }

    #[test]
    fn wrong_shaped_secret_is_refused_without_echoing_it() {
        let text =
            GOOD.replace(r#"["whsec_abcdef123456", "whsec_rolled"]"#, r#""whsec_abcdef123456""#);
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml: endpoint[0].secrets: must be a list"), "{err}");
        assert!(!err.contains("abcdef123456"), "{err}");
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            (
                GOOD.replace("tolerance_secs = 120", "tolerance_secs = \"x\""),
                "endpoint[0].tolerance_secs",
            ),
            (
                GOOD.replace("tolerance_secs = 120", "tolerance_secs = 0"),
                "endpoint \"stripe\".tolerance_secs",
            ),
            (GOOD.replace("127.0.0.1:9000", "localhost"), "server.listen"),
            (
                GOOD.replace("provider = \"stripe\"", "provider = \"bank\""),
                "endpoint \"stripe\".provider",
            ),
            (
                GOOD.replace("[\"whsec_abcdef123456\", \"whsec_rolled\"]", "[]"),
                "endpoint \"stripe\".secrets",
            ),
            (GOOD.replace("[store]", "[store]\ncolour = 1"), "store"),
            (GOOD.replace("name = \"stripe\"", "name = \"a/b\""), "endpoint[0].name"),
            (GOOD.replace("[server]", "[server\n"), "line 2"),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("test.toml: {key}")), "want key {key}, got: {err}");
        }
    }

    #[test]
    fn a_wrongly_shaped_basic_auth_is_refused_without_echoing_the_password() {
        for value in [
            "\"wp:s3cret_pw\"",
            "{ user = \"wp\", password = \"s3cret_pw\", extra = 1 }",
            "{ user = \"wp\", password = 5 }",
        ] {
            let text = GOOD.replace(
                "tolerance_secs = 120",
                &format!("tolerance_secs = 120\nbasic_auth = {value}"),
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("endpoint[0].basic_auth: must be a table"), "{err}");
            assert!(!err.contains("s3cret_pw"), "{err}");
        }
    }

    #[test]
    fn duplicate_endpoint_names_are_refused() {
        let text = format!("{GOOD}\n[[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"whsec_2\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("used by two endpoints"), "{err}");
    }

    #[test]
    fn relative_store_path_is_beside_the_config_file() {
        let c = Config::from_toml(GOOD, Path::new("/etc/reconciled/config.toml")).unwrap();
        assert_eq!(c.store.path, PathBuf::from("/etc/reconciled/x.db"));
    }

    #[test]
    fn the_example_is_valid_once_its_placeholder_secret_is_replaced() {
        let err = parse(EXAMPLE).unwrap_err().to_string();
        assert!(err.contains("secrets[0]: is the example's placeholder"), "{err}");
        parse(&EXAMPLE.replace(PLACEHOLDER_SECRET, "whsec_real")).expect("valid");
    }

    #[test]
    fn the_demo_secret_is_refused_outside_the_demo() {
        let text = GOOD.replace("whsec_rolled", DEMO_SECRET);
        assert!(parse(&text).unwrap_err().to_string().contains("secrets[1]: is the example's"));
        Config::demo(&text).expect("the demo may use it");
    }

    #[test]
    fn out_of_range_values_are_refused_not_panicked_on() {
        for (text, key) in [
            (
                GOOD.replace("[store]", "[store]\nbusy_timeout_ms = 99999999999"),
                "store.busy_timeout_ms",
            ),
            (GOOD.replace("[store]", "[store]\nmax_batch = 99999999"), "store.max_batch"),
            (GOOD.replace("[store]", "[store]\nwal_max_mb = 0"), "store.wal_max_mb"),
            (
                GOOD.replace("[server]", "[server]\nmax_connections = 99999999999"),
                "server.max_connections",
            ),
            (
                GOOD.replace("[server]", "[server]\nheader_read_timeout_secs = 99999999999"),
                "server.header_read_timeout_secs",
            ),
            (
                GOOD.replace("[server]", "[server]\nmax_body_bytes = 999999999999"),
                "server.max_body_bytes",
            ),
            (
                GOOD.replace("[server]", "[server]\nwrite_timeout_secs = 99999999999"),
                "server.write_timeout_secs",
            ),
            (
                GOOD.replace("[server]", "[server]\nwrite_timeout_secs = 0"),
                "server.write_timeout_secs",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("test.toml: {key}: ")), "{err}");
        }
    }

    #[test]
    fn retention_defaults_to_90_days_and_is_never_below_45() {
        assert_eq!(parse(GOOD).unwrap().store.retention_days, DEFAULT_RETENTION_DAYS);
        let at = |n: u64| GOOD.replace("[store]", &format!("[store]\nretention_days = {n}"));
        assert_eq!(parse(&at(45)).unwrap().store.retention_days, 45);
        for n in [0, 1, 30, 44] {
            let err = parse(&at(n)).unwrap_err().to_string();
            assert!(
                err.starts_with("test.toml: store.retention_days: ")
                    && err.contains("minimum of 45")
                    && err.contains("30 days"),
                "{err}"
            );
        }
        assert!(parse(&at(99_999)).unwrap_err().to_string().contains("above the limit"));
    }

    #[test]
    fn paypal_endpoints_need_their_settings_and_refuse_others() {
        let pinned = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/paypal/test-only-signing.pem");
        let ok = format!(
            "[[endpoint]]\nname = \"p\"\nprovider = \"paypal\"\nwebhook_id = \"WH1\"\ncerts = [\"{pinned}\"]\n\
             [[endpoint]]\nname = \"i\"\nprovider = \"paypal-ipn\"\nreceiver_id = \"S8XG\"\n"
        );
        let c = parse(&ok).unwrap();
        let p = c.endpoints[0].paypal.as_ref().unwrap();
        assert_eq!((p.certs.len(), p.cert_url_fetch), (1, false));
        assert_eq!(p.cert_hosts[0], "api.paypal.com");
        assert_eq!(c.endpoints[1].ipn.as_ref().unwrap().verify_url, IPN_VERIFY_URL);
        for (text, key, says) in [
            ("provider = \"paypal\"\ncert_url_fetch = true", "webhook_id", "is required"),
            ("provider = \"paypal\"\nwebhook_id = \"WH1\"", "certs", "cert_url_fetch"),
            ("provider = \"paypal-ipn\"", "receiver_email", "receiver_id"),
            (
                "provider = \"paypal-ipn\"\nreceiver_id = \"X\"\nverify_url = \"http://ipnpb.paypal.com/cgi-bin/webscr\"",
                "verify_url",
                "not an https URL",
            ),
            ("provider = \"paypal\"\nwebhook_id = \"W\"\ncerts = [\"/nonexistent.pem\"]", "certs[0]", "cannot read"),
            ("provider = \"stripe\"\nsecrets = [\"whsec_x1\"]\nwebhook_id = \"W\"", "webhook_id", "only to provider = \"paypal\""),
            ("provider = \"stripe\"\nsecrets = [\"whsec_x1\"]\nreceiver_id = \"R\"", "receiver_id", "paypal-ipn"),
            ("provider = \"paypal-ipn\"\nreceiver_id = \"R\"\nsecrets = [\"s\"]", "secrets", "does not use secrets"),
        ] {
            let err = parse(&format!("[[endpoint]]\nname = \"e\"\n{text}\n")).unwrap_err().to_string();
            assert!(err.starts_with(&format!("test.toml: endpoint \"e\".{key}: ")), "{err}");
            assert!(err.contains(says), "{says}: {err}");
        }
    }
}
