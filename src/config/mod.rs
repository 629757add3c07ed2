//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! The file is read and checked once at start; everything deeper in the daemon sees only
//! resolved types, never raw strings. Each part's settings type lives with the module it
//! configures (the providers, the shop, the store, the HTTP server, the worker); this module
//! loads the file and hands each table to its owner through a [`Resolver`]. Errors name the
//! file, the key and what is wrong, and never echo a secret: secret values are read through
//! [`crate::secret::Secret`], whose `Debug` is redacted and whose parse errors describe the
//! expected shape instead of the value found.

mod sections;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::deliver::SinkConfig;
use crate::endpoint::Endpoint;
use crate::http::ServerConfig;
use crate::reconcile::policy::{Policy, WorkerConfig};
use crate::settings::{ConfigError, Resolver};
use crate::shop::ShopConfig;
use crate::store::StoreConfig;

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

/// Upper bounds: beyond these a value is a typo, and some would overflow a timer or a buffer.
pub(crate) const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
pub(crate) const MAX_TIMEOUT_SECS: u64 = 86_400;
pub(crate) const MAX_CONNECTIONS: u64 = 65_536;
pub(crate) const MAX_BUSY_TIMEOUT_MS: u64 = 600_000;
pub(crate) const MAX_BATCH: u64 = 10_000;
pub(crate) const MAX_FAILURES_KEPT: u64 = 10_000_000;
pub(crate) const MAX_WAL_MB: u64 = 1 << 20;
pub(crate) const MAX_RETENTION_DAYS: u64 = 36_500;

/// The annotated example printed by `reconciled default-config`.
pub const EXAMPLE: &str = include_str!("../../fixtures/config/example.toml");

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
    /// Where actions are delivered (`[[sink]]`).
    pub sinks: Vec<SinkConfig>,
    /// The admin listener (`[admin]`, `[messages]`); off without `[admin]`.
    pub admin: Option<crate::admin::AdminConfig>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: sections::RawServer,
    #[serde(default)]
    store: sections::RawStore,
    #[serde(default, rename = "endpoint")]
    endpoints: Vec<toml::Table>,
    shop: Option<sections::RawShop>,
    #[serde(default)]
    policy: sections::RawPolicy,
    #[serde(default)]
    worker: sections::RawWorker,
    #[serde(default, rename = "sink")]
    sinks: Vec<toml::Table>,
    admin: Option<crate::admin::RawAdmin>,
    messages: Option<crate::admin::status::Messages>,
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
        let r = Resolver::new(source, allow_demo_secret);
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let key = if path.is_empty() || path == "." {
                    position(text, inner.span())
                } else {
                    path
                };
                r.invalid(&key, inner.message())
            })?;
        let server = sections::server(raw.server, &r)?;
        let store = sections::store(raw.store, &r)?;
        if raw.endpoints.is_empty() {
            return Err(r.invalid(
                "endpoint",
                "no [[endpoint]] is configured; the daemon would accept nothing",
            ));
        }
        let mut names = HashSet::new();
        let endpoints = raw
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, table)| Endpoint::resolve(i, table, &r, &mut names))
            .collect::<Result<Vec<_>, _>>()?;
        let shop = raw.shop.map(|shop| sections::shop(shop, &r)).transpose()?;
        let policy = sections::policy(raw.policy, &r)?;
        let worker = sections::worker(raw.worker, &r)?;
        let mut sink_names = HashSet::new();
        let sinks = raw
            .sinks
            .into_iter()
            .enumerate()
            .map(|(i, table)| SinkConfig::resolve(i, table, &r, &mut sink_names))
            .collect::<Result<Vec<_>, _>>()?;
        if !sinks.is_empty() && shop.is_none() {
            return Err(r.invalid(
                "sink",
                "sinks deliver the actions the reconciliation writes, which needs a [shop]",
            ));
        }
        let admin = match (raw.admin, raw.messages) {
            // Without a [shop] it serves the metrics and the admin page; the payment status
            // answers 503.
            (Some(admin), messages) => {
                Some(crate::admin::AdminConfig::resolve(admin, messages.unwrap_or_default(), &r)?)
            }
            (None, Some(_)) => {
                return Err(r.invalid("messages", "are shown by the admin listener: add [admin]"))
            }
            (None, None) => None,
        };
        let pull = sinks.iter().find(|s| matches!(s.target, crate::deliver::Target::Pull { .. }));
        if let (Some(sink), None) = (pull, &admin) {
            return Err(r.invalid(
                &format!("sink \"{}\".kind", sink.name),
                "a pull sink is served by the admin listener: add [admin]",
            ));
        }
        Ok(Config {
            source: source.to_owned(),
            server,
            store,
            endpoints,
            shop,
            policy,
            worker,
            sinks,
            admin,
        })
    }
}

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
    use crate::secret::{DEMO_SECRET, PLACEHOLDER_SECRET};

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
        assert_eq!(
            c.server.write_timeout,
            std::time::Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS)
        );
        let crate::provider::Settings::Stripe(stripe) = &c.endpoints[0].settings else {
            panic!("a stripe endpoint")
        };
        assert_eq!(stripe.secrets.len(), 2);
        assert_eq!(stripe.tolerance, std::time::Duration::from_secs(120));
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
    fn the_failure_notice_delay_defaults_to_ten_minutes_and_zero_sends_at_once() {
        let d = |text: &str| parse(text).map(|c| c.policy.failure_notice_delay);
        assert_eq!(d(GOOD).unwrap(), std::time::Duration::from_secs(600));
        for zero in ["0", "0s"] {
            let text = format!("{GOOD}[policy]\nfailure_notice_delay = \"{zero}\"\n");
            assert_eq!(d(&text).unwrap(), std::time::Duration::ZERO, "{zero}");
        }
        let long = format!("{GOOD}[policy]\nfailure_notice_delay = \"25h\"\n");
        assert!(d(&long).unwrap_err().to_string().contains("policy.failure_notice_delay"));
    }

    #[test]
    fn an_unknown_endpoint_key_lists_the_keys_of_its_provider() {
        let text = GOOD.replace("tolerance_secs = 120", "tolerance_secs = 120\ncolour = 1");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "test.toml: endpoint[0].colour: unknown field `colour`, expected one of `name`, \
             `provider`, `basic_auth`, `allow_from`, `trusted_proxies`, `silent_after`, `api`, \
             `secrets`, `tolerance_secs`"
        );
    }

    #[test]
    fn duplicate_endpoint_names_are_refused() {
        let text = format!("{GOOD}\n[[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"whsec_2\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("used by two endpoints"), "{err}");
    }

    #[test]
    fn a_postgres_store_is_a_url_alone_and_its_password_never_shows() {
        let endpoint =
            "[[endpoint]]\nname = \"s\"\nprovider = \"stripe\"\nsecrets = [\"whsec_1\"]\n";
        let with = |store: &str| parse(&format!("[store]\n{store}\n{endpoint}"));
        let c = with("url = \"postgres://rec:Sup3r-secret@db:5432/rec\"").unwrap();
        let url = c.store.url.as_ref().expect("a PostgreSQL store");
        assert_eq!(url.expose(), "postgres://rec:Sup3r-secret@db:5432/rec");
        let shown = format!("{c:?} {url}");
        assert!(!shown.contains("Sup3r-secret") && shown.contains("<redacted>"), "{shown}");
        let both = with("path = \"x.db\"\nurl = \"postgres://db/rec\"").unwrap_err().to_string();
        assert!(both.contains("store.url") && both.contains("not both"), "{both}");
        let mysql = with("url = \"mysql://db/rec\"").unwrap_err().to_string();
        assert!(mysql.contains("must be a postgres:// URL"), "{mysql}");
        let bad =
            with("url = \"postgres://u:Sup3r-secret@db:notaport/rec\"").unwrap_err().to_string();
        assert!(
            bad.contains("not a valid PostgreSQL URL") && !bad.contains("Sup3r-secret"),
            "{bad}"
        );
    }

    #[test]
    fn tls_to_a_database_is_asked_for_in_the_url_and_its_ca_file_is_checked() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/paypal/test-only-ca.pem");
        let endpoint =
            "[[endpoint]]\nname = \"s\"\nprovider = \"stripe\"\nsecrets = [\"whsec_1\"]\n";
        let store = |text: String| parse(&format!("[store]\n{text}\n{endpoint}"));
        let c =
            store(format!("url = \"postgres://db/rec?sslmode=require\"\ntls_ca_file = \"{ca}\""))
                .unwrap();
        assert!(c.store.tls_ca.is_some());
        for (text, says) in [
            (format!("url = \"postgres://db/rec\"\ntls_ca_file = \"{ca}\""), "sslmode=require"),
            (format!("path = \"x.db\"\ntls_ca_file = \"{ca}\""), "only with url"),
            (
                "url = \"postgres://db/rec?sslmode=require\"\ntls_ca_file = \"/nonexistent.pem\""
                    .to_owned(),
                "cannot read",
            ),
            (
                format!(
                    "url = \"postgres://db/rec?sslmode=require\"\ntls_ca_file = \"{}\"",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")
                ),
                "no PEM certificate",
            ),
        ] {
            let err = store(text).unwrap_err().to_string();
            assert!(err.contains("store.tls_ca_file") && err.contains(says), "{says}: {err}");
        }
        let shop = |driver: &str, url: &str| {
            parse(&format!(
                "{endpoint}[shop]\ndriver = \"{driver}\"\nurl = \"{url}\"\ntls_ca_file = \"{ca}\"\n\
                 query = \"SELECT 1 WHERE :reference IS NULL\"\n[shop.status]\n\
                 awaiting_payment = [\"p\"]\npaid = [\"d\"]\ncancelled = [\"c\"]\n"
            ))
        };
        let c = shop("postgres", "postgres://db/shop?sslmode=require").unwrap();
        assert!(c.shop.unwrap().tls_ca.is_some());
        let err = shop("postgres", "postgres://db/shop").unwrap_err().to_string();
        assert!(err.contains("shop.tls_ca_file") && err.contains("sslmode=require"), "{err}");
        let c = shop("mysql", "mysql://db/shop?require_ssl=true").unwrap();
        assert!(c.shop.unwrap().tls_ca.is_some());
        let err = shop("mysql", "mysql://db/shop").unwrap_err().to_string();
        assert!(err.contains("shop.tls_ca_file") && err.contains("require_ssl=true"), "{err}");
        let err = shop("sqlite", "shop.db").unwrap_err().to_string();
        assert!(err.contains("shop.tls_ca_file") && err.contains("only with driver"), "{err}");
        let err = shop("mysql", "mysql://db/shop?require_ssl=true&verify_ca=false")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shop.url") && err.contains("refused"), "{err}");
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
        let crate::provider::Settings::Paypal(p) = &c.endpoints[0].settings else {
            panic!("a paypal endpoint")
        };
        assert_eq!((p.certs.len(), p.cert_url_fetch), (1, false));
        assert_eq!(p.cert_hosts[0], "api.paypal.com");
        let crate::provider::Settings::PaypalIpn(ipn) = &c.endpoints[1].settings else {
            panic!("an IPN endpoint")
        };
        assert_eq!(ipn.verify_url, crate::provider::paypal_ipn::VERIFY_URL);
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
            // Another provider's key is named as such, whichever provider owns it.
            ("provider = \"stripe\"\nsecrets = [\"whsec_x1\"]\nkeys = { \"1\" = \"s\" }", "keys", "only to provider = \"worldpay\""),
            ("provider = \"worldpay\"\nkeys = { \"1\" = \"s\" }\ntolerance_secs = 5", "tolerance_secs", "only to provider = \"stripe\""),
            ("provider = \"stripe\"\nsecrets = [\"whsec_x1\"]\ntls_ca_file = \"x.pem\"", "tls_ca_file", "only to provider = \"paypal or paypal-ipn\""),
        ] {
            let err = parse(&format!("[[endpoint]]\nname = \"e\"\n{text}\n")).unwrap_err().to_string();
            assert!(err.starts_with(&format!("test.toml: endpoint \"e\".{key}: ")), "{err}");
            assert!(err.contains(says), "{says}: {err}");
        }
    }
}
