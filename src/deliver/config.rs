//! `[[sink]]`: where actions are delivered, as the config resolves it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::domain::ActionKind;
use crate::secret::Secret;
use crate::settings::{ConfigError, Resolver};

/// The longest a delivery attempt may take.
const MAX_TIMEOUT_SECS: u64 = 300;
/// Standard Webhooks secrets: `whsec_` and the base64 of the key.
pub const SECRET_PREFIX: &str = "whsec_";

/// One `[[sink]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// The sink's name, in the CLI and logs.
    pub name: Arc<str>,
    /// Which kinds of action it takes.
    pub actions: Vec<ActionKind>,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// The first retry delay; it doubles per failed attempt (with ±20% jitter).
    pub retry_base: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
    /// A delivery still failing this long after its action was written is `dead`.
    pub give_up_after: Duration,
    /// How actions reach it.
    pub target: Target,
}

/// How a sink takes its actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// POST to a URL, signed per Standard Webhooks.
    Http {
        /// Where to POST.
        url: url::Url,
        /// Signing keys (decoded from `whsec_…`); each signs every delivery.
        secrets: Vec<SigningKey>,
        /// Extra trusted roots (PEM) for an https URL.
        tls_ca: Option<Vec<u8>>,
    },
    /// Run a command with the action on stdin.
    Exec {
        /// The program and its arguments (no shell).
        command: Vec<String>,
    },
    /// Fetched by the shop from the admin listener (`GET /v1/outbox/{sink}`), acked one by one.
    Pull {
        /// The Bearer token of this sink's pull API.
        token: Secret,
        /// How long fetched actions stay leased before they are handed out again.
        lease: Duration,
    },
}

impl Target {
    /// The kind's name, as in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Http { .. } => "http",
            Target::Exec { .. } => "exec",
            Target::Pull { .. } => "pull",
        }
    }
}

/// A Standard Webhooks signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey {
    /// The decoded key bytes.
    pub key: Vec<u8>,
    /// What the config holds, for hints.
    pub secret: Secret,
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &SigningKey) -> bool {
        self.key == other.key
    }
}

impl Eq for SigningKey {}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Http,
    Exec,
    Pull,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    kind: Kind,
    url: Option<String>,
    #[serde(default, deserialize_with = "crate::secret::secret_list")]
    secrets: Vec<Secret>,
    tls_ca_file: Option<std::path::PathBuf>,
    command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::secret::one_secret")]
    token: Option<Secret>,
    lease_secs: Option<u64>,
    actions: Option<Vec<ActionKind>>,
    timeout_secs: Option<u64>,
    retry_base: Option<String>,
    retry_max: Option<String>,
    give_up_after: Option<String>,
}

impl SinkConfig {
    /// Resolves the `n`th `[[sink]]` table; `names` collects the names seen so far.
    pub fn resolve(
        n: usize,
        table: toml::Table,
        r: &Resolver<'_>,
        names: &mut std::collections::HashSet<String>,
    ) -> Result<SinkConfig, ConfigError> {
        let raw: Raw = r.deserialize(&format!("sink[{n}]"), table)?;
        let r = r.within(format!("sink \"{}\"", raw.name));
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if raw.name.is_empty() || raw.name.len() > 64 || !raw.name.chars().all(plain) {
            return Err(r.invalid("name", "must be 1 to 64 letters, digits, '-' or '_'"));
        }
        if !names.insert(raw.name.clone()) {
            return Err(r.invalid("name", "another [[sink]] has the same name"));
        }
        let misplaced = |key: &str, set: bool| {
            if set {
                Err(r.invalid(key, format!("is not a setting of a {} sink", kind_name(raw.kind))))
            } else {
                Ok(())
            }
        };
        let target = match raw.kind {
            Kind::Http => {
                misplaced("command", raw.command.is_some())?;
                misplaced("token", raw.token.is_some())?;
                misplaced("lease_secs", raw.lease_secs.is_some())?;
                let text = raw.url.as_deref().ok_or_else(|| r.invalid("url", "is required"))?;
                let url = url::Url::parse(text)
                    .map_err(|e| r.invalid("url", format!("\"{text}\" is not a URL: {e}")))?;
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
                    return Err(
                        r.invalid("url", "must be https (plain http only to a loopback address)")
                    );
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(r.invalid("url", "must not carry a user or password"));
                }
                if raw.secrets.is_empty() {
                    return Err(r.invalid(
                        "secrets",
                        "at least one Standard Webhooks secret (whsec_ and base64) is required",
                    ));
                }
                r.secrets("secrets", &raw.secrets)?;
                let secrets = raw
                    .secrets
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        signing_key(s).map_err(|m| r.invalid(&format!("secrets[{i}]"), m))
                    })
                    .collect::<Result<_, _>>()?;
                let tls_ca = crate::provider::read_tls_ca(&r, raw.tls_ca_file.as_deref())?;
                Target::Http { url, secrets, tls_ca }
            }
            Kind::Pull => {
                misplaced("url", raw.url.is_some())?;
                misplaced("secrets", !raw.secrets.is_empty())?;
                misplaced("tls_ca_file", raw.tls_ca_file.is_some())?;
                misplaced("command", raw.command.is_some())?;
                let token = raw.token.clone().ok_or_else(|| r.invalid("token", "is required"))?;
                if token.expose().len() < 16 {
                    return Err(r.invalid(
                        "token",
                        "must be at least 16 characters (openssl rand -hex 24)",
                    ));
                }
                r.secrets("token", std::slice::from_ref(&token))?;
                let lease = r.bounded("lease_secs", raw.lease_secs, 60, 3600)?;
                Target::Pull { token, lease: Duration::from_secs(lease) }
            }
            Kind::Exec => {
                misplaced("url", raw.url.is_some())?;
                misplaced("secrets", !raw.secrets.is_empty())?;
                misplaced("tls_ca_file", raw.tls_ca_file.is_some())?;
                misplaced("token", raw.token.is_some())?;
                misplaced("lease_secs", raw.lease_secs.is_some())?;
                let command = raw.command.unwrap_or_default();
                match command.first() {
                    None => {
                        return Err(
                            r.invalid("command", "is required: [\"/path/to/program\", \"arg\", …]")
                        )
                    }
                    Some(program) if program.is_empty() => {
                        return Err(r.invalid("command", "the program is empty"))
                    }
                    Some(_) => {}
                }
                Target::Exec { command }
            }
        };
        let actions = raw.actions.unwrap_or_else(|| ActionKind::ALL.to_vec());
        if actions.is_empty() {
            return Err(r.invalid("actions", "must name at least one kind of action"));
        }
        let timeout = r.bounded("timeout_secs", raw.timeout_secs, 10, MAX_TIMEOUT_SECS)?;
        let retry_base =
            r.duration("retry_base", raw.retry_base.as_deref())?.unwrap_or(Duration::from_secs(5));
        let retry_max =
            r.duration("retry_max", raw.retry_max.as_deref())?.unwrap_or(Duration::from_secs(3600));
        let give_up_after = r
            .duration("give_up_after", raw.give_up_after.as_deref())?
            .unwrap_or(Duration::from_secs(72 * 3600));
        if retry_base.is_zero() || retry_max < retry_base {
            return Err(r.invalid("retry_max", "must be at least retry_base, which must not be 0"));
        }
        Ok(SinkConfig {
            name: Arc::from(raw.name.as_str()),
            actions,
            timeout: Duration::from_secs(timeout),
            retry_base,
            retry_max,
            give_up_after,
            target,
        })
    }

    /// Whether this sink takes actions of `kind`.
    pub fn takes(&self, kind: ActionKind) -> bool {
        self.actions.contains(&kind)
    }

    /// One line for `check-config`, secrets as hints.
    pub fn describe(&self) -> String {
        let kinds: Vec<&str> = self.actions.iter().map(|k| k.as_str()).collect();
        let target = match &self.target {
            Target::Http { url, secrets, .. } => {
                let hints: Vec<String> = secrets.iter().map(|s| s.secret.hint()).collect();
                format!("POST {url}, signed with {}", hints.join(", "))
            }
            Target::Exec { command } => format!("runs {}", command[0]),
            Target::Pull { token, lease } => format!(
                "pulled from the admin listener (token {}, lease {}s)",
                token.hint(),
                lease.as_secs()
            ),
        };
        format!(
            "sink {} ({}): {target}; actions {}; timeout {}s, retries {} to {}, dead after {}",
            self.name,
            self.target.kind(),
            kinds.join(" "),
            self.timeout.as_secs(),
            crate::time::format_duration(self.retry_base),
            crate::time::format_duration(self.retry_max),
            crate::time::format_duration(self.give_up_after),
        )
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Http => "http",
        Kind::Exec => "exec",
        Kind::Pull => "pull",
    }
}

/// Decodes a Standard Webhooks secret (`whsec_` and standard base64).
fn signing_key(secret: &Secret) -> Result<SigningKey, String> {
    let text = std::str::from_utf8(secret.expose()).map_err(|_| "is not text".to_owned())?;
    let encoded = text.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
        format!("must start with {SECRET_PREFIX} (a Standard Webhooks secret: whsec_ and base64)")
    })?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| format!("the part after {SECRET_PREFIX} is not base64"))?;
    if key.len() < 16 {
        return Err(format!("its key is {} bytes; at least 16 are needed", key.len()));
    }
    Ok(SigningKey { key, secret: secret.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sink(text: &str) -> Result<SinkConfig, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let r = Resolver::new(Path::new("test.toml"), false);
        SinkConfig::resolve(0, table, &r, &mut Default::default())
    }

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn http_and_exec_sinks_resolve_with_defaults() {
        let s = sink(&format!(
            "name = \"shop\"\nkind = \"http\"\nurl = \"https://shop.example/hook\"\nsecrets = [\"{KEY}\"]"
        ))
        .unwrap();
        assert_eq!(s.actions, ActionKind::ALL);
        assert_eq!((s.timeout.as_secs(), s.retry_base.as_secs()), (10, 5));
        assert_eq!(s.give_up_after.as_secs(), 72 * 3600);
        let e = sink("name = \"mailer\"\nkind = \"exec\"\ncommand = [\"/bin/true\"]\nactions = [\"notify_customer\"]")
            .unwrap();
        assert!(e.takes(ActionKind::NotifyCustomer) && !e.takes(ActionKind::Refund));
        assert!(!format!("{s:?} {}", s.describe()).contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    }

    #[test]
    fn bad_sinks_are_refused_naming_the_key() {
        for (text, key, why) in [
            ("name = \"s\"\nkind = \"http\"\nurl = \"http://shop.example/hook\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]", "url", "https"),
            ("name = \"s\"\nkind = \"http\"\nurl = \"https://shop.example/hook\"", "secrets", "at least one"),
            ("name = \"s\"\nkind = \"http\"\nurl = \"https://x.example/\"\nsecrets = [\"shop-secret\"]", "secrets[0]", "whsec_"),
            ("name = \"s\"\nkind = \"http\"\nurl = \"https://x.example/\"\nsecrets = [\"whsec_%%%\"]", "secrets[0]", "base64"),
            ("name = \"s\"\nkind = \"exec\"", "command", "required"),
            ("name = \"s\"\nkind = \"exec\"\ncommand = [\"/bin/true\"]\nurl = \"https://x.example/\"", "url", "not a setting of a exec sink"),
            ("name = \"s\"\nkind = \"exec\"\ncommand = [\"/bin/true\"]\nactions = []", "actions", "at least one"),
            ("name = \"a b\"\nkind = \"exec\"\ncommand = [\"/bin/true\"]", "name", "letters"),
            ("name = \"s\"\nkind = \"exec\"\ncommand = [\"/bin/true\"]\nretry_base = \"1h\"\nretry_max = \"1m\"", "retry_max", "at least"),
        ] {
            let err = sink(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(why), "{text}: {err}");
            assert!(!err.contains("MfKQ9r8G"), "{err}");
        }
    }
}
