//! A MySQL or MariaDB shop database, through a `mysql_async` pool.
//!
//! The query's `:reference` and `:psp_reference` are bound by `mysql_async`'s own named
//! parameters (it rewrites them to `?` with a MySQL-aware parser that skips strings, backquoted
//! names and `#`, `-- ` and `/* */` comments), so the query runs as a server-side prepared
//! statement, cached per connection. Results come back in the binary protocol: integers and
//! floats as numbers, DECIMAL as its exact decimal text.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row, Value};

use super::{Cell, Lookup, RawOrder, ShopError};
use crate::shop::ShopConfig;

/// How long connecting (TCP, handshake, authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one lookup may take, waiting for a pooled connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled connection to a MySQL/MariaDB shop database.
pub struct MysqlShop {
    pool: Pool,
    query: String,
    /// The URL with its password redacted, for messages.
    url: String,
    pool_size: usize,
    /// Whether the query's only parameters are `:reference` and `:psp_reference`, so that
    /// lookups can be batched (see [`MysqlShop::fetch_many`]).
    batchable: bool,
}

/// Lookups answered by one statement in [`MysqlShop::fetch_many`]. Statements are prepared
/// and cached per connection by size, so at most this many distinct ones exist.
pub const BATCH: usize = 32;
/// The column that tags each row of a batched statement with its lookup's position.
const POSITION_COLUMN: &str = "reconciled_lookup";

/// The order query repeated `n` times as `UNION ALL` branches: branch `i` has its parameters
/// renamed to `:reference_{i}` / `:psp_reference_{i}` and its rows tagged with `i`.
fn batch_query(query: &str, n: usize) -> String {
    let query = query.trim().trim_end_matches(';').trim_end();
    let params = super::named_parameters(query);
    let mut out = String::with_capacity((query.len() + 64) * n);
    for i in 0..n {
        if i > 0 {
            out.push_str(" UNION ALL ");
        }
        out.push_str(&format!("SELECT {i} AS {POSITION_COLUMN}, q{i}.* FROM ("));
        let mut at = 0;
        for (range, name) in &params {
            out.push_str(&query[at..range.start]);
            out.push_str(&format!(":{name}_{i}"));
            at = range.end;
        }
        out.push_str(&query[at..]);
        out.push_str(&format!(") AS q{i}"));
    }
    out
}

impl fmt::Debug for MysqlShop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlShop")
            .field("url", &self.url)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl MysqlShop {
    /// Builds the pool and checks, with one connection and a ping, that the server is
    /// reachable and accepts the credentials. The query itself is not run.
    pub async fn connect(config: &ShopConfig) -> Result<MysqlShop, ShopError> {
        let url = config.url.redacted();
        let secrets = url_password(config.url.expose());
        let connect_err = |message: String| ShopError::Connect {
            url: url.clone(),
            message: scrub(&message, &secrets),
        };
        let opts = Opts::from_url(config.url.expose())
            .map_err(|e| connect_err(format!("invalid URL: {e}")))?;
        // TLS, with the server's certificate verified, when the URL says require_ssl=true.
        let ssl = crate::db_tls::mysql_ssl(&opts, config.tls_ca.as_deref())
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        let constraints = PoolConstraints::new(0, config.pool_size)
            .ok_or_else(|| connect_err("invalid pool_size".into()))?;
        // No reset when a connection goes back to the pool: the session stays read-only and
        // keeps its prepared statement (the daemon's own SELECTs leave no other state).
        let opts = OptsBuilder::from_opts(opts)
            .pool_opts(
                PoolOpts::default().with_constraints(constraints).with_reset_connection(false),
            )
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .ssl_opts(ssl)
            .after_connect(read_only);
        let pool = Pool::new(opts);
        let checked = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut conn = pool.get_conn().await?;
            conn.ping().await
        })
        .await;
        let failure = match checked {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(message(&e)),
            Err(_) => Some(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
        };
        if let Some(m) = failure {
            disconnect(pool).await;
            return Err(connect_err(m));
        }
        let batchable = super::named_parameters(&config.query)
            .iter()
            .all(|(_, name)| matches!(*name, "reference" | "psp_reference"));
        Ok(MysqlShop {
            pool,
            query: config.query.clone(),
            url,
            pool_size: config.pool_size,
            batchable,
        })
    }

    /// Runs the order query.
    pub async fn fetch(&self, lookup: &Lookup) -> Result<Vec<RawOrder>, ShopError> {
        self.bounded(self.fetch_rows(lookup)).await
    }

    /// The names of the columns the order query returns: the server prepares it, nothing runs.
    pub async fn columns(&self) -> Result<Vec<String>, ShopError> {
        self.bounded(async {
            let mut conn = self.pool.get_conn().await?;
            let statement = conn.prep(self.query.as_str()).await?;
            Ok(statement.columns().iter().map(|c| c.name_str().into_owned()).collect())
        })
        .await
    }

    /// A query bounded by [`FETCH_TIMEOUT`], its error as a [`ShopError::Query`].
    async fn bounded<T>(
        &self,
        query: impl Future<Output = Result<T, mysql_async::Error>>,
    ) -> Result<T, ShopError> {
        match tokio::time::timeout(FETCH_TIMEOUT, query).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(ShopError::Query(message(&e))),
            Err(_) => Err(ShopError::Query(format!(
                "no answer within {} s from {}",
                FETCH_TIMEOUT.as_secs(),
                self.url
            ))),
        }
    }

    async fn fetch_rows(&self, lookup: &Lookup) -> Result<Vec<RawOrder>, mysql_async::Error> {
        let mut conn = self.pool.get_conn().await?;
        let params = Params::Named(
            [
                ("reference", lookup.reference.as_deref()),
                ("psp_reference", lookup.psp_reference.as_deref()),
            ]
            .into_iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), Value::from(value)))
            .collect(),
        );
        let rows: Vec<Row> = conn.exec(self.query.as_str(), params).await?;
        Ok(rows.into_iter().map(to_raw).collect())
    }

    /// Runs the order query for many lookups, [`BATCH`] per statement and up to
    /// `concurrency` statements at once: the query is repeated as `UNION ALL` branches, each
    /// with its own parameters and tagged with its lookup's position, so a chunk costs one
    /// round trip instead of one per lookup. Answers are in the order of `lookups`; a failed
    /// statement fails the lookups of its chunk. A query whose parameters are not only
    /// `:reference` and `:psp_reference` is run once per lookup.
    pub async fn fetch_many(
        &self,
        lookups: &[Lookup],
        concurrency: usize,
    ) -> Vec<Result<Vec<RawOrder>, ShopError>> {
        use futures_util::stream::{self, StreamExt};
        let size = if self.batchable { BATCH } else { 1 };
        type ChunkRows = Result<Vec<Vec<RawOrder>>, ShopError>;
        let mut chunks: Vec<(usize, ChunkRows)> =
            stream::iter(lookups.chunks(size).map(<[Lookup]>::to_vec).enumerate())
                .map(|(n, chunk)| async move { (n, self.bounded(self.fetch_chunk(&chunk)).await) })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        chunks.sort_by_key(|(n, _)| *n);
        let mut out = Vec::with_capacity(lookups.len());
        for ((_, rows), chunk) in chunks.into_iter().zip(lookups.chunks(size)) {
            match rows {
                Ok(rows) => out.extend(rows.into_iter().map(Ok)),
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        out
    }

    async fn fetch_chunk(
        &self,
        chunk: &[Lookup],
    ) -> Result<Vec<Vec<RawOrder>>, mysql_async::Error> {
        if chunk.len() == 1 {
            return Ok(vec![self.fetch_rows(&chunk[0]).await?]);
        }
        let mut conn = self.pool.get_conn().await?;
        let mut params = std::collections::HashMap::with_capacity(chunk.len() * 2);
        for (i, lookup) in chunk.iter().enumerate() {
            params.insert(
                format!("reference_{i}").into_bytes(),
                Value::from(lookup.reference.as_deref()),
            );
            params.insert(
                format!("psp_reference_{i}").into_bytes(),
                Value::from(lookup.psp_reference.as_deref()),
            );
        }
        let rows: Vec<Row> =
            conn.exec(batch_query(&self.query, chunk.len()), Params::Named(params)).await?;
        let mut out = vec![Vec::new(); chunk.len()];
        for row in rows {
            let position: Option<u64> = row.get(0);
            if let Some(slot) = position.and_then(|p| out.get_mut(usize::try_from(p).ok()?)) {
                slot.push(to_raw(row));
            }
        }
        Ok(out)
    }

    /// Closes the pool's connections.
    pub async fn close(self) {
        disconnect(self.pool).await;
    }
}

/// Makes a new connection's session read-only (invariant 6 in docs/reconciliation.md: the daemon never writes
/// to the shop's database), on top of the SELECT-only user the presets recommend. MySQL before
/// 5.6.5 does not know the statement: there the user's grants alone keep it read-only.
fn read_only(
    conn: &mut mysql_async::Conn,
) -> Pin<Box<dyn Future<Output = mysql_async::Result<()>> + Send + '_>> {
    Box::pin(async move {
        if let Err(e) = conn.query_drop("SET SESSION TRANSACTION READ ONLY").await {
            tracing::debug!(error = %message(&e), "shop database: session not made read-only");
        }
        Ok(())
    })
}

/// Disconnects a pool, bounded in time: a dead server must not hold up shutdown.
async fn disconnect(pool: Pool) {
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, pool.disconnect()).await;
}

fn to_raw(row: Row) -> RawOrder {
    let columns = row.columns();
    let mut order = RawOrder::default();
    for (column, value) in columns.iter().zip(row.unwrap()) {
        order.set(&column.name_str(), cell(value, column));
    }
    order
}

/// One value as a [`Cell`]: numbers by their type, DECIMAL and text as text.
fn cell(value: Value, column: &Column) -> Cell {
    match value {
        Value::NULL => Cell::Null,
        Value::Int(i) => Cell::Int(i),
        Value::UInt(u) => i64::try_from(u).map_or_else(|_| Cell::Text(u.to_string()), Cell::Int),
        // Through its shortest decimal text, so FLOAT 19.99 stays 19.99 and not 19.9899997…
        Value::Float(f) => Cell::Real(f.to_string().parse().unwrap_or(f64::from(f))),
        Value::Double(d) => Cell::Real(d),
        Value::Bytes(bytes) => bytes_cell(bytes, column),
        Value::Date(y, mo, d, h, mi, s, us) => Cell::Text(if (h, mi, s, us) == (0, 0, 0, 0) {
            format!("{y:04}-{mo:02}-{d:02}")
        } else {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
        }),
        Value::Time(neg, d, h, mi, s, _) => {
            let hours = u64::from(d) * 24 + u64::from(h);
            Cell::Text(format!("{}{hours:02}:{mi:02}:{s:02}", if neg { "-" } else { "" }))
        }
    }
}

/// A value the server sent as bytes: DECIMAL, text, or (text protocol only) a number.
fn bytes_cell(bytes: Vec<u8>, column: &Column) -> Cell {
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return Cell::Text(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    };
    match column.column_type() {
        ColumnType::MYSQL_TYPE_TINY
        | ColumnType::MYSQL_TYPE_SHORT
        | ColumnType::MYSQL_TYPE_INT24
        | ColumnType::MYSQL_TYPE_LONG
        | ColumnType::MYSQL_TYPE_LONGLONG
        | ColumnType::MYSQL_TYPE_YEAR => match text.parse::<i64>() {
            Ok(i) => Cell::Int(i),
            // A BIGINT UNSIGNED above i64::MAX.
            Err(_) => Cell::Text(text),
        },
        ColumnType::MYSQL_TYPE_FLOAT | ColumnType::MYSQL_TYPE_DOUBLE => match text.parse::<f64>() {
            Ok(f) => Cell::Real(f),
            Err(_) => Cell::Text(text),
        },
        // DECIMAL/NEWDECIMAL, strings, BLOBs, ENUM, SET, JSON: the text as sent.
        _ => Cell::Text(text),
    }
}

fn message(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => s.to_string(),
        mysql_async::Error::Io(io) => {
            std::error::Error::source(io).map_or_else(|| io.to_string(), |s| s.to_string())
        }
        mysql_async::Error::Driver(d) => d.to_string(),
        mysql_async::Error::Url(u) => u.to_string(),
        mysql_async::Error::Other(o) => o.to_string(),
    }
}

/// The password in a `scheme://user:password@host/…` URL, as written and percent-decoded,
/// so that [`scrub`] can take either form out of a message.
pub(super) fn url_password(url: &str) -> Vec<String> {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else { return Vec::new() };
    let Some(userinfo) = rest.rfind('@').map(|at| &rest[..at]) else { return Vec::new() };
    let Some((_, raw)) = userinfo.split_once(':') else { return Vec::new() };
    if raw.is_empty() {
        return Vec::new();
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        let hex = |c: Option<u8>| c.and_then(|c| char::from(c).to_digit(16));
        if b == b'%' {
            let mut ahead = bytes.clone();
            if let (Some(h), Some(l)) = (hex(ahead.next()), hex(ahead.next())) {
                decoded.push((h * 16 + l) as u8);
                bytes = ahead;
                continue;
            }
        }
        decoded.push(b);
    }
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    // The longer form first, so a decoded password inside the raw one is not half-replaced.
    let mut forms = vec![raw.to_owned(), decoded];
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

/// Removes the password from a driver's message, should the driver ever echo it.
pub(super) fn scrub(message: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(message.to_owned(), |m, s| m.replace(s.as_str(), "<redacted>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_the_password_in_either_form() {
        let secrets = url_password("mysql://u:p%40ss@h:3306/db");
        assert_eq!(secrets, ["p%40ss", "p@ss"]);
        assert_eq!(scrub("bad p@ss and p%40ss", &secrets), "bad <redacted> and <redacted>");
        assert!(url_password("mysql://u@h/db").is_empty());
        assert!(url_password("mysql://u:@h/db").is_empty());
        assert_eq!(url_password("postgres://u:a:b@c@h/db"), ["a:b@c"]);
        assert_eq!(scrub("nothing", &[]), "nothing");
    }
}

#[cfg(test)]
mod batch_tests {
    #[test]
    fn batch_query_renames_each_branchs_parameters() {
        let q = "SELECT id AS order_id FROM t WHERE id = :reference OR tx = :psp_reference ;";
        let b = super::batch_query(q, 2);
        assert_eq!(
            b,
            "SELECT 0 AS reconciled_lookup, q0.* FROM (SELECT id AS order_id FROM t WHERE id = :reference_0 OR tx = :psp_reference_0) AS q0 \
             UNION ALL SELECT 1 AS reconciled_lookup, q1.* FROM (SELECT id AS order_id FROM t WHERE id = :reference_1 OR tx = :psp_reference_1) AS q1"
        );
    }
}
