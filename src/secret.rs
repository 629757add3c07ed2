//! Values that must never be shown: signing secrets, passwords, database URLs with a
//! password. Each has a `Debug` (and, where it has one, a `Display`) that redacts the value,
//! and the serde readers here never put a value into an error message.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// The secret printed by `default-config`: a placeholder, refused as a real secret.
pub const PLACEHOLDER_SECRET: &str = "whsec_REPLACE_WITH_YOUR_ENDPOINT_SECRET";
/// The demo's public test secret; refused in any configuration but the demo's own.
pub const DEMO_SECRET: &str = "whsec_demo_PUBLIC_TEST_SECRET_not_for_production";

/// A database location whose `Debug` and `Display` hide any password.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    /// Wraps a URL or path.
    pub fn new(url: impl Into<String>) -> DbUrl {
        DbUrl(url.into())
    }

    /// The full URL, password included. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password (between `user:` and `@`) replaced.
    pub fn redacted(&self) -> String {
        let s = &self.0;
        let Some(scheme_end) = s.find("://").map(|i| i + 3) else { return s.clone() };
        let rest = &s[scheme_end..];
        let Some(at) = rest.rfind('@') else { return s.clone() };
        match rest[..at].find(':') {
            Some(colon) => {
                format!("{}{}:<redacted>{}", &s[..scheme_end], &rest[..colon], &rest[at..])
            }
            None => s.clone(),
        }
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// HTTP basic auth credentials for an endpoint.
#[derive(Clone)]
pub struct BasicAuth {
    /// The user name.
    pub user: String,
    /// The password (redacted in `Debug`).
    pub password: Secret,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BasicAuth({}:<redacted>)", self.user)
    }
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
    /// itself: Stripe's well-known prefixes (`whsec_`, and an API key's `rk_live_`,
    /// `sk_test_`, …; nothing else of the value) and the length.
    pub fn hint(&self) -> String {
        let prefix = ["whsec_", "rk_live_", "rk_test_", "sk_live_", "sk_test_"]
            .into_iter()
            .find(|p| self.0.starts_with(p))
            .unwrap_or("");
        format!("{prefix}… ({} chars)", self.0.chars().count())
    }
}

impl Secret {
    /// Whether the value is marked as a test secret: it contains the word `test` in any case
    /// (`whsec_test_…`, the demo's `…PUBLIC_TEST…`). A provider's live and test secrets look
    /// alike (a Stripe `whsec_` secret does not say which mode it is from), so `simulate`
    /// treats every secret without the mark as live.
    pub fn is_marked_test(&self) -> bool {
        self.0.to_ascii_lowercase().contains("test")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `{ user = "…", password = "…" }`, never echoing the value in an error (a wrong shape such
/// as `basic_auth = "user:password"` would otherwise print the password).
pub(crate) fn basic_auth_table<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BasicAuth>, D::Error> {
    use serde::de::Error;
    let shape = || D::Error::custom("must be a table { user = \"…\", password = \"…\" }");
    let toml::Value::Table(mut t) = toml::Value::deserialize(d)? else { return Err(shape()) };
    let (Some(toml::Value::String(user)), Some(toml::Value::String(password))) =
        (t.remove("user"), t.remove("password"))
    else {
        return Err(shape());
    };
    if !t.is_empty() {
        return Err(shape());
    }
    Ok(Some(BasicAuth { user, password: Secret::new(password) }))
}

/// A table of key id → secret, never echoing a value in an error.
pub(crate) fn secret_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, Secret)>, D::Error> {
    use serde::de::Error;
    let shape =
        || D::Error::custom("must be a table of key id = \"secret\", such as { \"1\" = \"…\" }");
    let toml::Value::Table(items) = toml::Value::deserialize(d)? else { return Err(shape()) };
    let mut out: Vec<(String, Secret)> = items
        .into_iter()
        .map(|(k, v)| match v {
            toml::Value::String(s) => Ok((k, Secret::new(s))),
            _ => Err(shape()),
        })
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads one secret (a string) without ever putting a value into an error message.
pub(crate) fn one_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(Some(Secret::new(s))),
        _ => Err(D::Error::custom("must be a string")),
    }
}

/// Reads a list of secrets without ever putting a value into an error message.
pub(crate) fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
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
