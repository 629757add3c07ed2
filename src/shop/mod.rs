//! The shop's orders, read-only, through a configured query.
//!
//! The daemon never writes into the shop's database (invariant 6 in docs/reconciliation.md). Each driver runs
//! the configured query with the named parameters `:reference` (the merchant reference, cut
//! down by `reference_pattern`) and `:psp_reference` (the provider's payment id), either of
//! which may be NULL, and returns rows of neutral [`Cell`]s by column name. Turning a row
//! into an [`Order`] (money, status) is shared here, so every driver behaves the same.
//!
//! Columns: `order_id`, `status`, `currency`, and `amount` (DECIMAL, TEXT, REAL or integer
//! whole units) or `amount_minor` (integer minor units); optional `customer_email` and
//! `psp_reference`.

pub mod config;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

pub use self::config::{ShopConfig, ShopDriver, StatusMap};
use crate::money::{Currency, Money};

/// A value read from a shop database, before it is interpreted.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL, or the column is absent.
    Null,
    /// An integer column.
    Int(i64),
    /// A floating-point column (REAL, DOUBLE, FLOAT).
    Real(f64),
    /// Text, or a DECIMAL/NUMERIC read as its exact decimal text.
    Text(String),
}

impl Cell {
    fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Int(i) => Some(i.to_string()),
            Cell::Real(f) => Some(f.to_string()),
            Cell::Text(t) => Some(t.clone()),
        }
    }
}

/// One row of the order query, by column name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawOrder {
    /// `order_id`.
    pub order_id: Option<Cell>,
    /// `status`.
    pub status: Option<Cell>,
    /// `amount` (whole units with decimals).
    pub amount: Option<Cell>,
    /// `amount_minor` (integer minor units).
    pub amount_minor: Option<Cell>,
    /// `currency` (ISO 4217 code).
    pub currency: Option<Cell>,
    /// `customer_email`.
    pub customer_email: Option<Cell>,
    /// `psp_reference`: the provider payment id the shop recorded, if any.
    pub psp_reference: Option<Cell>,
}

impl RawOrder {
    /// Puts a column's value into its slot; unknown column names are ignored.
    pub fn set(&mut self, column: &str, value: Cell) {
        let slot = match column.to_ascii_lowercase().as_str() {
            "order_id" => &mut self.order_id,
            "status" => &mut self.status,
            "amount" => &mut self.amount,
            "amount_minor" => &mut self.amount_minor,
            "currency" => &mut self.currency,
            "customer_email" => &mut self.customer_email,
            "psp_reference" => &mut self.psp_reference,
            _ => return,
        };
        *slot = Some(value);
    }
}

/// What to look an order up by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Lookup {
    /// The merchant reference (order id), after `reference_pattern`.
    pub reference: Option<String>,
    /// The provider's payment id.
    pub psp_reference: Option<String>,
}

/// What a shop status means to the reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Waiting for its payment.
    AwaitingPayment,
    /// Paid.
    Paid,
    /// Cancelled or failed.
    Cancelled,
    /// A status in none of the configured lists.
    Other,
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OrderStatus::AwaitingPayment => "awaiting payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Other => "other (in no shop.status list: a payment for it goes to review)",
        })
    }
}

/// An order as the reconciliation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The shop's order id.
    pub order_id: String,
    /// The mapped status.
    pub status: OrderStatus,
    /// The shop's own status value.
    pub raw_status: String,
    /// The order total.
    pub amount: Money,
    /// Where to send customer notices.
    pub customer_email: Option<String>,
    /// The provider payment id the shop recorded for it, if any.
    pub psp_reference: Option<String>,
}

/// A shop database failure. The message never holds a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShopError {
    /// Cannot connect.
    #[error("shop database {url}: cannot connect: {message}")]
    Connect {
        /// The redacted URL or path.
        url: String,
        /// The driver's message.
        message: String,
    },
    /// The query failed.
    #[error("shop query failed: {0}")]
    Query(String),
    /// A row cannot be read as an order.
    #[error("shop order {order_id}: {message}")]
    BadRow {
        /// The order id, or `?`.
        order_id: String,
        /// What is wrong.
        message: String,
    },
}

/// A connected order source.
#[derive(Debug)]
pub enum OrderSource {
    /// A SQLite file.
    Sqlite(sqlite::SqliteShop),
    /// MySQL or MariaDB.
    Mysql(mysql::MysqlShop),
    /// PostgreSQL.
    Postgres(postgres::PostgresShop),
}

impl OrderSource {
    /// Connects to the configured shop database.
    pub async fn connect(config: &ShopConfig) -> Result<OrderSource, ShopError> {
        Ok(match config.driver {
            ShopDriver::Sqlite => OrderSource::Sqlite(sqlite::SqliteShop::open(config)?),
            ShopDriver::Mysql => OrderSource::Mysql(mysql::MysqlShop::connect(config).await?),
            ShopDriver::Postgres => {
                OrderSource::Postgres(postgres::PostgresShop::connect(config).await?)
            }
        })
    }

    /// Runs the order query and returns its rows.
    pub async fn fetch(&self, lookup: &Lookup) -> Result<Vec<RawOrder>, ShopError> {
        match self {
            OrderSource::Sqlite(s) => s.fetch(lookup).await,
            OrderSource::Mysql(s) => s.fetch(lookup).await,
            OrderSource::Postgres(s) => s.fetch(lookup).await,
        }
    }

    /// The names of the columns the order query returns, read from the database without
    /// running the query.
    pub async fn columns(&self) -> Result<Vec<String>, ShopError> {
        match self {
            OrderSource::Sqlite(s) => s.columns(),
            OrderSource::Mysql(s) => s.columns().await,
            OrderSource::Postgres(s) => s.columns().await,
        }
    }

    /// Finds the order for `lookup`: the row whose `order_id` equals the reference if there is
    /// one, else the first row; `None` when the query returns nothing.
    pub async fn find(
        &self,
        lookup: &Lookup,
        status: &StatusMap,
    ) -> Result<Option<Order>, ShopError> {
        let rows = self.fetch(lookup).await?;
        pick(&rows, lookup, status)
    }

    /// [`OrderSource::find`] for many lookups, answered in the same order. A MySQL/MariaDB
    /// shop answers a whole chunk of lookups in one statement (see [`mysql::MysqlShop::fetch_many`]);
    /// the others run single lookups, `concurrency` at a time.
    pub async fn find_many(
        &self,
        lookups: &[Lookup],
        status: &StatusMap,
        concurrency: usize,
    ) -> Vec<Result<Option<Order>, ShopError>> {
        use futures_util::stream::{self, StreamExt};
        let batched = match self {
            OrderSource::Mysql(s) => Some(s.fetch_many(lookups, concurrency).await),
            // One connection: lookups one after the other on one blocking thread.
            OrderSource::Sqlite(s) => Some(s.fetch_many(lookups).await),
            OrderSource::Postgres(_) => None,
        };
        if let Some(rows) = batched {
            return rows
                .into_iter()
                .zip(lookups)
                .map(|(rows, lookup)| pick(&rows?, lookup, status))
                .collect();
        }
        let mut found: Vec<(usize, Result<Option<Order>, ShopError>)> =
            stream::iter(lookups.iter().cloned().enumerate())
                .map(|(i, lookup)| async move { (i, self.find(&lookup, status).await) })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        found.sort_by_key(|(i, _)| *i);
        found.into_iter().map(|(_, r)| r).collect()
    }

    /// Closes pools.
    pub async fn close(self) {
        match self {
            OrderSource::Sqlite(_) => {}
            OrderSource::Mysql(s) => s.close().await,
            OrderSource::Postgres(s) => s.close().await,
        }
    }
}

/// The order among a lookup's rows: the row whose `order_id` equals the reference if there is
/// one, else the first row; `None` when there are none.
fn pick(
    rows: &[RawOrder],
    lookup: &Lookup,
    status: &StatusMap,
) -> Result<Option<Order>, ShopError> {
    pick_row(rows, lookup).map(|r| to_order(r, status)).transpose()
}

/// The row a lookup's order is read from: the one whose `order_id` equals the reference if
/// there is one, else the first.
pub fn pick_row<'r>(rows: &'r [RawOrder], lookup: &Lookup) -> Option<&'r RawOrder> {
    let wanted = lookup.reference.as_deref();
    rows.iter()
        .find(|r| wanted.is_some() && r.order_id.as_ref().and_then(Cell::text).as_deref() == wanted)
        .or(rows.first())
}

/// Applies `reference_pattern` to a merchant reference: the first capture group if the
/// pattern has one, else the whole match; the reference unchanged if the pattern does not
/// match.
pub fn cut_reference(pattern: Option<&regex::Regex>, reference: &str) -> String {
    let Some(re) = pattern else { return reference.to_owned() };
    match re.captures(reference) {
        Some(c) => c.get(1).or_else(|| c.get(0)).map_or(reference, |m| m.as_str()).to_owned(),
        None => reference.to_owned(),
    }
}

/// Checks the columns an order query returns: `order_id`, `status`, `currency`, and `amount`
/// or `amount_minor` are required (letter case aside). The error names what is missing.
pub fn check_columns(columns: &[String]) -> Result<(), String> {
    let has = |name: &str| columns.iter().any(|c| c.eq_ignore_ascii_case(name));
    let mut missing: Vec<&str> =
        ["order_id", "status", "currency"].into_iter().filter(|c| !has(c)).collect();
    if !has("amount") && !has("amount_minor") {
        missing.push("amount (whole units, e.g. 25.99) or amount_minor (minor units, e.g. 2599)");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let returned = if columns.is_empty() { "none".to_owned() } else { columns.join(", ") };
    Err(format!(
        "the query returns no {} column (it returns: {returned}); alias the shop's columns with AS",
        missing.join(", no ")
    ))
}

/// Interprets one row as an order.
pub fn to_order(row: &RawOrder, status_map: &StatusMap) -> Result<Order, ShopError> {
    let order_id = row
        .order_id
        .as_ref()
        .and_then(Cell::text)
        .ok_or_else(|| bad("?", "the query returned no order_id column (or NULL)"))?;
    let raw_status = row
        .status
        .as_ref()
        .and_then(Cell::text)
        .ok_or_else(|| bad(&order_id, "the query returned no status column (or NULL)"))?;
    let status = if status_map.awaiting_payment.contains(&raw_status) {
        OrderStatus::AwaitingPayment
    } else if status_map.paid.contains(&raw_status) {
        OrderStatus::Paid
    } else if status_map.cancelled.contains(&raw_status) {
        OrderStatus::Cancelled
    } else {
        OrderStatus::Other
    };
    let code = row
        .currency
        .as_ref()
        .and_then(Cell::text)
        .ok_or_else(|| bad(&order_id, "the query returned no currency column (or NULL)"))?;
    let currency = Currency::parse(code.trim()).map_err(|e| bad(&order_id, &e.to_string()))?;
    let amount = match (&row.amount_minor, &row.amount) {
        (Some(Cell::Int(minor)), _) => Ok(Money::new(*minor, currency)),
        (Some(Cell::Text(t)), _) => {
            let minor =
                t.trim().parse().map_err(|_| bad(&order_id, "amount_minor is not an integer"))?;
            Ok(Money::new(minor, currency))
        }
        (_, Some(Cell::Text(t))) => Money::parse_rounded(t.trim(), currency),
        (_, Some(Cell::Real(f))) => Money::from_f64(*f, currency),
        (_, Some(Cell::Int(units))) => Money::from_scaled(*units, 0, currency),
        _ => return Err(bad(&order_id, "the query returned neither amount nor amount_minor")),
    }
    .map_err(|e| bad(&order_id, &format!("amount: {e}")))?;
    let opt = |c: &Option<Cell>| c.as_ref().and_then(Cell::text).filter(|s| !s.is_empty());
    Ok(Order {
        order_id,
        status,
        raw_status,
        amount,
        customer_email: opt(&row.customer_email),
        psp_reference: opt(&row.psp_reference),
    })
}

fn bad(order_id: &str, message: &str) -> ShopError {
    ShopError::BadRow { order_id: order_id.to_owned(), message: message.to_owned() }
}

/// Splits a query into text and its `:name` parameters, skipping quoted strings, comments and
/// `::` casts. Returns the parameter names in order of appearance, with their byte ranges.
pub fn named_parameters(query: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let bytes = query.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b':' if bytes.get(i + 1) == Some(&b':') => i += 2,
            b':' if bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') => {
                let start = i;
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push((start..i, &query[start + 1..i]));
            }
            _ => i += 1,
        }
    }
    out
}

/// `message` (an error about the database URL `url`) with the URL's password taken out.
pub(crate) fn scrub_url_error(url: &str, message: &str) -> String {
    mysql::scrub(message, &mysql::url_password(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses() -> StatusMap {
        StatusMap {
            awaiting_payment: vec!["pending".into()],
            paid: vec!["processing".into()],
            cancelled: vec!["cancelled".into()],
        }
    }

    fn row(amount: Cell) -> RawOrder {
        let mut r = RawOrder::default();
        r.set("ORDER_ID", Cell::Int(1001));
        r.set("status", Cell::Text("pending".into()));
        r.set("currency", Cell::Text("usd".into()));
        r.set("amount", amount);
        r
    }

    #[test]
    fn amounts_of_every_column_type_convert_exactly() {
        let usd = Currency::parse("USD").unwrap();
        for (cell, minor) in [
            (Cell::Text("100.00".into()), 10000),
            (Cell::Text("100.0000".into()), 10000),
            (Cell::Text("19.995".into()), 2000),
            (Cell::Real(19.99), 1999),
            (Cell::Int(100), 10000),
        ] {
            let o = to_order(&row(cell.clone()), &statuses()).unwrap();
            assert_eq!(o.amount, Money::new(minor, usd), "{cell:?}");
            assert_eq!((o.order_id.as_str(), o.status), ("1001", OrderStatus::AwaitingPayment));
        }
        let mut r = row(Cell::Null);
        r.set("amount_minor", Cell::Int(4550));
        assert_eq!(to_order(&r, &statuses()).unwrap().amount.minor, 4550);
    }

    #[test]
    fn bad_rows_are_named() {
        let mut r = row(Cell::Text("1".into()));
        r.set("currency", Cell::Text("ZZZ".into()));
        assert!(to_order(&r, &statuses()).unwrap_err().to_string().starts_with("shop order 1001:"));
        let r = row(Cell::Null);
        assert!(to_order(&r, &statuses()).unwrap_err().to_string().contains("neither amount"));
    }

    #[test]
    fn reference_pattern_cuts_attempt_suffixes() {
        let re = regex::Regex::new(r"^(\d+)").unwrap();
        assert_eq!(cut_reference(Some(&re), "1001-2"), "1001");
        assert_eq!(cut_reference(Some(&re), "abc"), "abc");
        assert_eq!(cut_reference(None, "1001-2"), "1001-2");
    }

    #[test]
    fn named_parameters_skip_strings_comments_and_casts() {
        let q = "SELECT ':x' AS a, id::text FROM t -- :comment\nWHERE id = :reference OR tx = :psp_reference";
        let names: Vec<&str> = named_parameters(q).into_iter().map(|p| p.1).collect();
        assert_eq!(names, ["reference", "psp_reference"]);
    }
}
