//! `[shop]`: the shop database's settings, as the config resolves them.

use crate::secret::DbUrl;

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
    /// Extra trusted roots (PEM) for a PostgreSQL shop server's certificate (`tls_ca_file`).
    pub tls_ca: Option<crate::db_tls::CaPem>,
}

/// The shop database's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShopDriver {
    /// A SQLite file, read through rusqlite.
    Sqlite,
    /// MySQL or MariaDB.
    #[serde(alias = "mariadb")]
    Mysql,
    /// PostgreSQL.
    #[serde(alias = "postgresql")]
    Postgres,
}

impl ShopDriver {
    /// The driver's name, as in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ShopDriver::Sqlite => "sqlite",
            ShopDriver::Mysql => "mysql",
            ShopDriver::Postgres => "postgres",
        }
    }
}

/// `[shop.status]`: which shop statuses mean what. Statuses in no list are "other".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusMap {
    /// The order waits for its payment (`pending`, `on-hold`).
    pub awaiting_payment: Vec<String>,
    /// The order is paid (`processing`, `completed`).
    pub paid: Vec<String>,
    /// The order was cancelled (`cancelled`, `failed`).
    pub cancelled: Vec<String>,
}

impl StatusMap {
    /// Statuses listed under more than one state, with the states' keys: the first list
    /// wins (`awaiting_payment`, then `paid`, then `cancelled`), which is rarely what was meant.
    pub fn overlaps(&self) -> Vec<(String, &'static str, &'static str)> {
        let lists = [
            ("awaiting_payment", &self.awaiting_payment),
            ("paid", &self.paid),
            ("cancelled", &self.cancelled),
        ];
        let mut out = Vec::new();
        for (i, (first, list)) in lists.iter().enumerate() {
            for (second, other) in &lists[i + 1..] {
                for status in list.iter().filter(|s| other.contains(s)) {
                    out.push((status.clone(), *first, *second));
                }
            }
        }
        out
    }
}
