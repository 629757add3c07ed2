//! What every module's settings reader shares: the error a configuration is refused with, and
//! the [`Resolver`] that names the file and key in it, reads files beside the config, and
//! checks the common shapes (bounded numbers, durations, secrets).
//!
//! The settings types themselves live with the modules they configure (the providers, the
//! shop, the store, the HTTP server, the worker); [`crate::config`] loads the file and hands
//! each part to its owner.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::secret::{Secret, DEMO_SECRET, PLACEHOLDER_SECRET};

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

/// The context settings are resolved in: the config file (for messages and relative paths)
/// and the table being read (`endpoint "stripe"`), whose keys errors are named under.
#[derive(Debug, Clone)]
pub struct Resolver<'a> {
    /// The config file.
    source: &'a Path,
    /// Prefixed to every key named in an error; empty at the top level.
    prefix: String,
    /// Whether the demo's public test secret is allowed (only in the demo's own config).
    allow_demo_secret: bool,
    /// Whether the endpoint being read has a trust option (`basic_auth`, `allow_from`), for
    /// providers whose notifications carry no signature.
    has_trust: bool,
    /// Whether the endpoint being read has an `[endpoint.api]` table, for settings that ask
    /// the provider's API.
    has_api: bool,
}

impl<'a> Resolver<'a> {
    /// A resolver for the top level of `source`.
    pub fn new(source: &'a Path, allow_demo_secret: bool) -> Resolver<'a> {
        Resolver {
            source,
            prefix: String::new(),
            allow_demo_secret,
            has_trust: false,
            has_api: false,
        }
    }

    /// The same file, with keys named under `prefix` (`endpoint "stripe"`).
    pub fn within(&self, prefix: impl Into<String>) -> Resolver<'a> {
        Resolver { prefix: prefix.into(), ..self.clone() }
    }

    /// The same file, with keys named under `key` within this resolver's prefix
    /// (`endpoint "stripe".api`).
    pub fn nested(&self, key: &str) -> Resolver<'a> {
        Resolver { prefix: self.key_name(key), ..self.clone() }
    }

    /// `key` as errors name it, under this resolver's prefix.
    pub fn key_name(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}.{key}", self.prefix),
        }
    }

    /// The same, for an endpoint whose trust options are (or are not) set.
    pub fn with_trust(self, has_trust: bool) -> Resolver<'a> {
        Resolver { has_trust, ..self }
    }

    /// The same, for an endpoint whose `[endpoint.api]` is (or is not) set.
    pub fn with_api(self, has_api: bool) -> Resolver<'a> {
        Resolver { has_api, ..self }
    }

    /// The config file.
    pub fn source(&self) -> &'a Path {
        self.source
    }

    /// Whether the endpoint being read has a trust option (`basic_auth`, `allow_from`).
    pub fn has_trust(&self) -> bool {
        self.has_trust
    }

    /// Whether the endpoint being read has an `[endpoint.api]` table.
    pub fn has_api(&self) -> bool {
        self.has_api
    }

    /// The error for `key` (under this resolver's prefix).
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.to_owned(),
            key: self.key_name(key),
            message: message.into(),
        }
    }

    /// `value` (or `default`), refused when 0 or above `max`.
    pub fn bounded(
        &self,
        key: &str,
        value: Option<u64>,
        default: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        match value.unwrap_or(default) {
            0 => Err(self.invalid(key, "must be greater than 0")),
            n if n > max => Err(self.invalid(key, format!("{n} is above the limit of {max}"))),
            n => Ok(n),
        }
    }

    /// A path as written in the config: relative paths are relative to the config file, not
    /// to wherever the daemon happens to be started from.
    pub fn beside(&self, path: &Path) -> PathBuf {
        match self.source.parent() {
            Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    /// Reads the file a key names (relative to the config file).
    pub fn read(&self, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
        let path = self.beside(path);
        std::fs::read(&path)
            .map_err(|err| self.invalid(key, format!("cannot read {}: {err}", path.display())))
    }

    /// A duration such as `"45s"`, `"30m"`, `"2h"`, if set.
    pub fn duration(&self, key: &str, text: Option<&str>) -> Result<Option<Duration>, ConfigError> {
        text.map(|t| {
            crate::time::parse_duration(t).ok_or_else(|| {
                self.invalid(
                    key,
                    format!("\"{t}\" is not a duration such as \"45s\", \"30m\", \"2h\""),
                )
            })
        })
        .transpose()
    }

    /// Checks a list of signing secrets: none empty, and none the example's placeholder or
    /// (outside the demo) the demo's public test secret. Never shows a value.
    pub fn secrets(&self, key: &str, secrets: &[Secret]) -> Result<(), ConfigError> {
        if let Some(n) = secrets.iter().position(|s| s.expose().is_empty()) {
            return Err(self.invalid(&format!("{key}[{n}]"), "is empty"));
        }
        let public = |s: &Secret| {
            s.expose() == PLACEHOLDER_SECRET.as_bytes()
                || (!self.allow_demo_secret && s.expose() == DEMO_SECRET.as_bytes())
        };
        if let Some(n) = secrets.iter().position(public) {
            return Err(self.invalid(
                &format!("{key}[{n}]"),
                "is the example's placeholder or the demo's public test secret; use the signing secret from the provider's dashboard",
            ));
        }
        Ok(())
    }

    /// Deserializes a table into `T`; an error names the key under `path_prefix`
    /// (`endpoint[0]`), as the config file's own errors do.
    pub fn deserialize<T: DeserializeOwned>(
        &self,
        path_prefix: &str,
        table: toml::Table,
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let key = if path.is_empty() || path == "." {
                path_prefix.to_owned()
            } else {
                format!("{path_prefix}.{path}")
            };
            ConfigError::Invalid {
                path: self.source.to_owned(),
                key,
                message: e.into_inner().message().to_owned(),
            }
        })
    }
}

/// The field names a derived `Deserialize` struct reads, as serde's derive declares them:
/// which keys a settings table owns, without a hand-kept list.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};
    use serde::forward_to_deserialize_any;

    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names found")
        }
    }
    impl std::error::Error for Found {}
    impl Error for Found {
        fn custom<M: std::fmt::Display>(_: M) -> Found {
            Found(&[])
        }
    }
    struct Names;
    impl<'de> serde::Deserializer<'de> for Names {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    match T::deserialize(Names) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_read_from_the_derive() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Raw {
            alpha: u32,
            #[serde(rename = "beta-gamma")]
            beta: Option<String>,
        }
        assert_eq!(field_names::<Raw>(), &["alpha", "beta-gamma"]);
    }

    #[test]
    fn keys_are_named_under_the_prefix() {
        let top = Resolver::new(Path::new("c.toml"), false);
        let err = top.invalid("server.listen", "bad").to_string();
        assert_eq!(err, "c.toml: server.listen: bad");
        let at = top.within("endpoint \"e\"");
        assert_eq!(at.invalid("secrets", "bad").to_string(), "c.toml: endpoint \"e\".secrets: bad");
        assert_eq!(at.invalid("", "bad").to_string(), "c.toml: endpoint \"e\": bad");
        assert_eq!(at.beside(Path::new("x.pem")), PathBuf::from("x.pem"));
        let nested = Resolver::new(Path::new("/etc/r/c.toml"), false);
        assert_eq!(nested.beside(Path::new("x.pem")), PathBuf::from("/etc/r/x.pem"));
    }
}
