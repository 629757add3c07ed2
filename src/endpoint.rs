//! Endpoints: the URLs providers post to. Each `[[endpoint]]` table is read here into an
//! [`Endpoint`] (its name, the trust options every endpoint may use, and its provider's own
//! settings), and the daemon builds one [`Endpoints`] registry from them at start, shared by
//! the HTTP layer (to verify and store) and the worker (to parse and confirm).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::provider::{Apis, Provider, ProviderKind, Settings, SetupError};
use crate::secret::BasicAuth;
use crate::settings::{ConfigError, Resolver};

/// `[[endpoint]]`: one URL a provider posts to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Path segment: the endpoint is served at `POST /webhooks/{name}`.
    pub name: String,
    /// Basic auth and source addresses, checked before the body is read.
    pub trust: Trust,
    /// The provider's validated settings.
    pub settings: Settings,
    /// With nothing stored for longer than this, the provider has gone silent (exported as a
    /// metric for the shipped alert; `reconciled check` reports it too).
    pub silent_after: Option<std::time::Duration>,
    /// `[endpoint.api]`: the provider's API, asked when a webhook is missing or weak.
    pub api: Option<crate::ask::ApiSettings>,
}

impl Endpoint {
    /// Which provider posts here.
    pub fn kind(&self) -> ProviderKind {
        self.settings.kind()
    }
}

/// The trust options every endpoint may use; for providers whose notifications carry no
/// signature (Worldpay XML, unsigned Adflex) they are the only protection.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Optional HTTP basic auth every request must carry.
    pub basic_auth: Option<BasicAuth>,
    /// Optional source-address allow-list; empty means any address.
    pub allow_from: Vec<ipnet::IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed when checking `allow_from`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Trust {
    /// Whether a request must pass basic auth or come from an allowed address.
    pub fn is_set(&self) -> bool {
        self.basic_auth.is_some() || !self.allow_from.is_empty()
    }
}

/// The keys of an endpoint table that are not the provider's.
const COMMON_KEYS: &[&str] =
    &["name", "provider", "basic_auth", "allow_from", "trusted_proxies", "silent_after", "api"];

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommon {
    name: String,
    provider: String,
    #[serde(default, deserialize_with = "crate::secret::basic_auth_table")]
    basic_auth: Option<BasicAuth>,
    #[serde(default)]
    allow_from: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    silent_after: Option<String>,
    api: Option<toml::Value>,
}

impl Endpoint {
    /// Reads the `index`th `[[endpoint]]` table. `names` holds the names read so far, which
    /// must be unique.
    pub fn resolve(
        index: usize,
        mut table: toml::Table,
        top: &Resolver<'_>,
        names: &mut HashSet<String>,
    ) -> Result<Endpoint, ConfigError> {
        let path = format!("endpoint[{index}]");
        let mut common = toml::Table::new();
        for key in COMMON_KEYS {
            if let Some(value) = table.remove(*key) {
                common.insert((*key).to_owned(), value);
            }
        }
        let raw: RawCommon = top.deserialize(&path, common)?;
        if raw.name.is_empty()
            || !raw.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(top.invalid(
                &format!("{path}.name"),
                format!("\"{}\" must be non-empty and use only letters, digits, - and _ (it becomes the URL path)", raw.name),
            ));
        }
        let r = top.within(format!("endpoint \"{}\"", raw.name));
        if !names.insert(raw.name.clone()) {
            return Err(r.invalid("name", "is used by two endpoints"));
        }
        let kind = ProviderKind::from_name(&raw.provider).ok_or_else(|| {
            let supported: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
            r.invalid(
                "provider",
                format!(
                    "\"{}\" is not a supported provider (supported: {})",
                    raw.provider,
                    supported.join(", ")
                ),
            )
        })?;
        for key in table.keys() {
            check_key(kind, key, &path, top, &r)?;
        }
        let nets = |key: &str, list: &[String]| -> Result<Vec<ipnet::IpNet>, ConfigError> {
            list.iter()
                .map(|n| {
                    n.parse::<ipnet::IpNet>()
                        .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            r.invalid(
                                key,
                                format!(
                                    "\"{n}\" is not an address or CIDR such as \"192.0.2.0/24\""
                                ),
                            )
                        })
                })
                .collect()
        };
        let trust = Trust {
            allow_from: nets("allow_from", &raw.allow_from)?,
            trusted_proxies: nets("trusted_proxies", &raw.trusted_proxies)?,
            basic_auth: match raw.basic_auth {
                Some(b)
                    if b.user.is_empty()
                        || b.user.contains(':')
                        || b.password.expose().is_empty() =>
                {
                    return Err(r.invalid(
                        "basic_auth",
                        "user must be non-empty without ':' and password non-empty",
                    ))
                }
                other => other,
            },
        };
        let silent_after = r.duration("silent_after", raw.silent_after.as_deref())?;
        if silent_after.is_some_and(|d| d < std::time::Duration::from_secs(60)) {
            return Err(r.invalid("silent_after", "must be at least 1m"));
        }
        let api = match raw.api {
            Some(value) => Some(crate::ask::ApiSettings::resolve(
                kind,
                &format!("{path}.api"),
                value,
                &r.nested("api"),
            )?),
            None => None,
        };
        let r = r.with_trust(trust.is_set()).with_api(api.is_some());
        let settings = Settings::resolve(kind, &path, table, &r)?;
        Ok(Endpoint { name: raw.name, trust, settings, silent_after, api })
    }
}

/// Refuses a key the provider does not read: another provider's (named, so a key in the wrong
/// endpoint is easy to see) or no provider's.
fn check_key(
    kind: ProviderKind,
    key: &str,
    path: &str,
    top: &Resolver<'_>,
    r: &Resolver<'_>,
) -> Result<(), ConfigError> {
    if kind.settings_keys().contains(&key) {
        return Ok(());
    }
    let owners: Vec<&str> = ProviderKind::ALL
        .iter()
        .filter(|k| k.settings_keys().contains(&key))
        .map(|k| k.as_str())
        .collect();
    if key == "secrets" {
        return Err(r.invalid(key, format!("{kind} does not use secrets (see keys, basic_auth)")));
    }
    if !owners.is_empty() {
        return Err(
            r.invalid(key, format!("applies only to provider = \"{}\"", owners.join(" or ")))
        );
    }
    let expected: Vec<String> =
        COMMON_KEYS.iter().chain(kind.settings_keys()).map(|k| format!("`{k}`")).collect();
    Err(top.invalid(
        &format!("{path}.{key}"),
        format!("unknown field `{key}`, expected one of {}", expected.join(", ")),
    ))
}

/// One configured endpoint at run time: its configuration and its provider's runtime.
#[derive(Debug)]
pub struct Registered {
    /// Its name, shared by every row and log line.
    pub name: Arc<str>,
    /// Its configuration.
    pub endpoint: Endpoint,
    /// Verifies, parses and confirms its notifications.
    pub provider: Provider,
}

/// Every configured endpoint by name: built once at start, shared by the HTTP layer and the
/// worker.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_name: HashMap<Arc<str>, Arc<Registered>>,
}

impl Endpoints {
    /// Builds each endpoint's provider runtime (HTTPS clients). Fails only when one cannot be
    /// built, which the config's checks make rare (an unusable `tls_ca_file`).
    pub fn new(endpoints: &[Endpoint]) -> Result<Endpoints, SetupError> {
        let mut by_name = HashMap::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let _span = tracing::info_span!("endpoint", name = %endpoint.name).entered();
            let failed = |e: &dyn std::fmt::Display| {
                SetupError(format!("endpoint \"{}\": {e}", endpoint.name))
            };
            let apis = match &endpoint.api {
                Some(api) => api.provider_apis().map_err(|e| failed(&e))?,
                None => Apis::default(),
            };
            let provider = Provider::new(&endpoint.settings, apis).map_err(|e| failed(&e))?;
            let name: Arc<str> = Arc::from(endpoint.name.as_str());
            let registered =
                Registered { name: name.clone(), endpoint: endpoint.clone(), provider };
            by_name.insert(name, Arc::new(registered));
        }
        Ok(Endpoints { by_name })
    }

    /// The endpoint called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Registered>> {
        self.by_name.get(name)
    }

    /// Every endpoint, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Registered>> {
        self.by_name.values()
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
