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

use serde::{Deserialize, Deserializer};

/// Default listen address: loopback, so a fresh install is not reachable from outside.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Largest accepted request body. Stripe events are rarely above a few tens of KiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Time a client has to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Time a client has to send its body, and the daemon has to store it.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
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
/// Stripe's own default signature tolerance.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

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
}

/// Which provider's wire format an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Stripe snapshot and thin events, `Stripe-Signature` HMAC.
    Stripe,
}

impl ProviderKind {
    /// The name used in the config file and in the inbox's `provider` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Stripe => "stripe",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "stripe" => Some(ProviderKind::Stripe),
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
}

/// A signing secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret's bytes, for keying a MAC. Never log them.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// A hint an operator can match against the provider's dashboard without the secret
    /// itself: the prefix before the first `_` and the length.
    pub fn hint(&self) -> String {
        let prefix = self.0.split_once('_').map(|(p, _)| p).unwrap_or("");
        format!("{prefix}_… ({} chars)", self.0.chars().count())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_body_bytes: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    provider: String,
    #[serde(default, deserialize_with = "secret_list")]
    secrets: Vec<Secret>,
    tolerance_secs: Option<u64>,
}

/// Reads a list of secrets without ever putting a value into an error message.
fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    use serde::de::Error;
    let value = toml::Value::deserialize(d)?;
    let shape = || D::Error::custom("must be a list of strings, such as [\"whsec_…\"]");
    let toml::Value::Array(items) = value else { return Err(shape()) };
    items
        .into_iter()
        .map(|item| match item {
            toml::Value::String(s) => Ok(Secret::new(s)),
            _ => Err(shape()),
        })
        .collect()
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
        let positive = |key: &str, v: Option<u64>, default: u64| -> Result<u64, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(invalid(key.into(), "must be greater than 0".into())),
                n => Ok(n),
            }
        };
        let server = ServerConfig {
            listen,
            max_body_bytes: positive(
                "server.max_body_bytes",
                s.max_body_bytes,
                DEFAULT_MAX_BODY_BYTES,
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
            max_connections: positive(
                "server.max_connections",
                s.max_connections.map(|n| n as u64),
                DEFAULT_MAX_CONNECTIONS as u64,
            )? as usize,
            shutdown_grace: Duration::from_secs(
                s.shutdown_grace_secs.unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS),
            ),
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
            busy_timeout: Duration::from_millis(
                st.busy_timeout_ms.unwrap_or(DEFAULT_BUSY_TIMEOUT_MS),
            ),
            max_batch: positive(
                "store.max_batch",
                st.max_batch.map(|n| n as u64),
                DEFAULT_MAX_BATCH as u64,
            )? as usize,
            failures_kept: positive(
                "store.failures_kept",
                st.failures_kept,
                DEFAULT_FAILURES_KEPT,
            )?,
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
                    format!("\"{}\" is not a supported provider (supported: stripe)", e.provider),
                )
            })?;
            if e.secrets.is_empty() {
                return Err(invalid(
                    format!("{at}.secrets"),
                    "at least one signing secret is required".into(),
                ));
            }
            if let Some(n) = e.secrets.iter().position(|s| s.expose().is_empty()) {
                return Err(invalid(format!("{at}.secrets[{n}]"), "is empty".into()));
            }
            let tolerance = Duration::from_secs(positive(
                &format!("{at}.tolerance_secs"),
                e.tolerance_secs,
                DEFAULT_TOLERANCE_SECS,
            )?);
            endpoints.push(Endpoint { name: e.name, provider, secrets: e.secrets, tolerance });
        }

        Ok(Config { source: source.to_owned(), server, store, endpoints })
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
            "limits: body {} bytes, headers {}s, request {}s, {} connections, drain {}s",
            s.max_body_bytes,
            s.header_read_timeout.as_secs(),
            s.request_timeout.as_secs(),
            s.max_connections,
            s.shutdown_grace.as_secs()
        );
        let _ = writeln!(
            out,
            "store: {} (batch {}, busy timeout {} ms, {} failures kept)",
            self.store.path.display(),
            self.store.max_batch,
            self.store.busy_timeout.as_millis(),
            self.store.failures_kept
        );
        for e in &self.endpoints {
            let hints: Vec<String> = e.secrets.iter().map(Secret::hint).collect();
            let _ = writeln!(
                out,
                "endpoint {}: POST /webhooks/{}, provider {}, tolerance {}s, {} secret(s): {}",
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
    fn the_example_is_valid() {
        parse(EXAMPLE).expect("default-config output must validate");
    }
}
