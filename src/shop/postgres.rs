//! A PostgreSQL shop database, through `tokio-postgres` connections pooled by deadpool.
//!
//! PostgreSQL numbers its parameters, so the query's `:reference` and `:psp_reference` are
//! rewritten by [`super::named_parameters`] to `$1`, `$2` (one number per name, however often
//! it appears) and declared `text`. PostgreSQL does not compare an integer column with text,
//! so a query that looks up an integer id casts the column: `WHERE id::text = :reference`.
//!
//! Values are read in the binary format by type: integers as [`Cell::Int`], `real` and
//! `double precision` as [`Cell::Real`], `numeric` as its exact decimal text (decoded here from
//! PostgreSQL's base-10000 digits, never through a float), text-like types, enums and `uuid`
//! as [`Cell::Text`]. A column the order needs in any other type is an error that says to cast
//! it; other columns are ignored.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::{FromSql, Kind, Type};

use super::mysql::{scrub, url_password};
use super::{named_parameters, Cell, Lookup, RawOrder, ShopError};
use crate::shop::ShopConfig;

/// How long connecting (TCP, startup, authentication) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one lookup may take, waiting for a pooled connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled connection to a PostgreSQL shop database.
pub struct PostgresShop {
    pool: Pool,
    /// The query with `$n` placeholders.
    query: String,
    /// What each `$n` is bound to, in order.
    params: Vec<Param>,
    /// The URL with its password redacted, for messages.
    url: String,
}

impl fmt::Debug for PostgresShop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresShop")
            .field("url", &self.url)
            .field("pool_size", &self.pool.status().max_size)
            .finish_non_exhaustive()
    }
}

/// A parameter of the order query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Reference,
    PspReference,
}

impl PostgresShop {
    /// Builds the pool and checks, with one connection and `SELECT 1`, that the server is
    /// reachable and accepts the credentials. The order query is translated here (an unknown
    /// `:name` is an error) but not run.
    pub async fn connect(config: &ShopConfig) -> Result<PostgresShop, ShopError> {
        let url = config.url.redacted();
        let (query, params) = translate(&config.query)?;
        let mut secrets = url_password(config.url.expose());
        let connect_err = |message: String, secrets: &[String]| ShopError::Connect {
            url: url.clone(),
            message: scrub(&message, secrets),
        };
        let mut pg: tokio_postgres::Config = config
            .url
            .expose()
            .parse()
            .map_err(|e| connect_err(format!("invalid URL: {}", pg_message(&e)), &secrets))?;
        if let Some(p) = pg.get_password() {
            secrets.push(String::from_utf8_lossy(p).into_owned());
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("reconciled");
        }
        // Invariant 6 (docs/reconciliation.md): the daemon never writes to the shop's database. On top of the
        // SELECT-only user the presets recommend, every transaction is read-only.
        let options = match pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c default_transaction_read_only=on"),
            _ => "-c default_transaction_read_only=on".to_owned(),
        };
        pg.options(options);
        pg.keepalives_idle(Duration::from_secs(60));
        // TLS with the server's certificate verified when the URL says sslmode=require.
        let tls = crate::db_tls::connector(&mut pg, config.tls_ca.as_deref())
            .map_err(|e| connect_err(format!("tls_ca_file {e}"), &secrets))?;
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(FETCH_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| connect_err(e.to_string(), &secrets))?;
        let checked = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let client = pool.get().await.map_err(|e| pool_message(&e))?;
            client.simple_query("SELECT 1").await.map_err(|e| pg_message(&e))?;
            Ok::<(), String>(())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())));
        if let Err(m) = checked {
            pool.close();
            return Err(connect_err(m, &secrets));
        }
        Ok(PostgresShop { pool, query, params, url })
    }

    /// Runs the order query.
    pub async fn fetch(&self, lookup: &Lookup) -> Result<Vec<RawOrder>, ShopError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_rows(lookup)).await {
            Ok(result) => result,
            Err(_) => Err(ShopError::Query(format!(
                "no answer within {} s from {}",
                FETCH_TIMEOUT.as_secs(),
                self.url
            ))),
        }
    }

    /// The names of the columns the order query returns: the server prepares it, nothing runs.
    pub async fn columns(&self) -> Result<Vec<String>, ShopError> {
        let prepared = async {
            let client = self.pool.get().await.map_err(|e| ShopError::Query(pool_message(&e)))?;
            let types = vec![Type::TEXT; self.params.len()];
            let statement = client
                .prepare_typed_cached(&self.query, &types)
                .await
                .map_err(|e| ShopError::Query(pg_message(&e)))?;
            Ok(statement.columns().iter().map(|c| c.name().to_owned()).collect())
        };
        match tokio::time::timeout(FETCH_TIMEOUT, prepared).await {
            Ok(result) => result,
            Err(_) => Err(ShopError::Query(format!(
                "no answer within {} s from {}",
                FETCH_TIMEOUT.as_secs(),
                self.url
            ))),
        }
    }

    async fn fetch_rows(&self, lookup: &Lookup) -> Result<Vec<RawOrder>, ShopError> {
        let client = self.pool.get().await.map_err(|e| ShopError::Query(pool_message(&e)))?;
        let query_err = |e: tokio_postgres::Error| ShopError::Query(pg_message(&e));
        let types = vec![Type::TEXT; self.params.len()];
        let statement =
            client.prepare_typed_cached(&self.query, &types).await.map_err(query_err)?;
        let values: Vec<Option<&str>> = self
            .params
            .iter()
            .map(|p| match p {
                Param::Reference => lookup.reference.as_deref(),
                Param::PspReference => lookup.psp_reference.as_deref(),
            })
            .collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let rows = client.query(&statement, &refs).await.map_err(query_err)?;
        rows.iter().map(to_raw).collect()
    }

    /// Closes the pool: idle connections are dropped, connections in use when returned.
    pub async fn close(self) {
        self.pool.close();
    }
}

/// Rewrites `:reference` / `:psp_reference` to `$1`, `$2` in order of first appearance.
fn translate(query: &str) -> Result<(String, Vec<Param>), ShopError> {
    let mut out = String::with_capacity(query.len());
    let mut params: Vec<Param> = Vec::new();
    let mut last = 0;
    for (range, name) in named_parameters(query) {
        let param = match name {
            "reference" => Param::Reference,
            "psp_reference" => Param::PspReference,
            other => {
                return Err(ShopError::Query(format!(
                    "unknown parameter :{other} in the query (use :reference and :psp_reference)"
                )))
            }
        };
        let n = match params.iter().position(|p| *p == param) {
            Some(i) => i + 1,
            None => {
                params.push(param);
                params.len()
            }
        };
        out.push_str(&query[last..range.start]);
        out.push_str(&format!("${n}"));
        last = range.end;
    }
    out.push_str(&query[last..]);
    Ok((out, params))
}

fn to_raw(row: &tokio_postgres::Row) -> Result<RawOrder, ShopError> {
    let mut order = RawOrder::default();
    for (i, column) in row.columns().iter().enumerate() {
        let value: PgValue = row
            .try_get(i)
            .map_err(|e| ShopError::Query(format!("{}: {}", column.name(), pg_message(&e))))?;
        match value {
            PgValue::Cell(cell) => order.set(column.name(), cell),
            PgValue::Unsupported if is_order_column(column.name()) => {
                return Err(ShopError::Query(format!(
                    "column {} has type {}, which is not read; cast it in the query, \
                     e.g. {}::text or {}::numeric",
                    column.name(),
                    column.type_().name(),
                    column.name(),
                    column.name()
                )))
            }
            PgValue::Unsupported => {}
        }
    }
    Ok(order)
}

/// Whether [`RawOrder::set`] keeps a column of this name.
fn is_order_column(name: &str) -> bool {
    let mut probe = RawOrder::default();
    probe.set(name, Cell::Null);
    probe != RawOrder::default()
}

/// A value decoded from PostgreSQL's binary format.
enum PgValue {
    Cell(Cell),
    /// A type this driver does not read.
    Unsupported,
}

impl<'a> FromSql<'a> for PgValue {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<PgValue, Box<dyn std::error::Error + Sync + Send>> {
        decode(ty, raw)
    }

    fn from_sql_null(_: &Type) -> Result<PgValue, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgValue::Cell(Cell::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn decode(ty: &Type, raw: &[u8]) -> Result<PgValue, Box<dyn std::error::Error + Sync + Send>> {
    let cell = match *ty {
        Type::INT2 => Cell::Int(i16::from_sql(ty, raw)?.into()),
        Type::INT4 => Cell::Int(i32::from_sql(ty, raw)?.into()),
        Type::INT8 => Cell::Int(i64::from_sql(ty, raw)?),
        Type::OID => Cell::Int(u32::from_sql(ty, raw)?.into()),
        // Through its shortest decimal text, so real 19.99 stays 19.99 and not 19.9899997…
        Type::FLOAT4 => {
            let f = f32::from_sql(ty, raw)?;
            Cell::Real(f.to_string().parse().unwrap_or(f64::from(f)))
        }
        Type::FLOAT8 => Cell::Real(f64::from_sql(ty, raw)?),
        Type::NUMERIC => Cell::Text(numeric_text(raw)?),
        Type::BOOL => Cell::Text(bool::from_sql(ty, raw)?.to_string()),
        Type::UUID => Cell::Text(uuid_text(raw)?),
        _ if <&str as FromSql>::accepts(ty) => Cell::Text(<&str>::from_sql(ty, raw)?.to_owned()),
        _ => match ty.kind() {
            Kind::Enum(_) => Cell::Text(std::str::from_utf8(raw)?.to_owned()),
            Kind::Domain(inner) => return decode(inner, raw),
            _ => return Ok(PgValue::Unsupported),
        },
    };
    Ok(PgValue::Cell(cell))
}

/// The exact decimal text of a binary `numeric`: sign, integer digits, and as many fraction
/// digits as its display scale (so `100.10` stays `100.10`).
fn numeric_text(raw: &[u8]) -> Result<String, Box<dyn std::error::Error + Sync + Send>> {
    let word = |i: usize| -> Result<u16, Box<dyn std::error::Error + Sync + Send>> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric value".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    if raw.len() != 8 + 2 * ndigits {
        return Err("malformed numeric value".into());
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => return Err("malformed numeric sign".into()),
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let d = word(4 + i)?;
        if d > 9999 {
            return Err("malformed numeric digit".into());
        }
        digits.push(d);
    }
    // digits[k] is worth 10000^(weight - k); missing groups are zero.
    let group = |k: i64| -> u16 {
        usize::try_from(k).ok().and_then(|k| digits.get(k)).copied().unwrap_or(0)
    };
    let mut text = String::new();
    if sign == 0x4000 && digits.iter().any(|d| *d != 0) {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&group(0).to_string());
        for k in 1..=weight {
            text.push_str(&format!("{:04}", group(k)));
        }
    }
    if dscale > 0 {
        text.push('.');
        let mut fraction = String::with_capacity(dscale + 4);
        let mut k = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", group(k)));
            k += 1;
        }
        fraction.truncate(dscale);
        text.push_str(&fraction);
    }
    Ok(text)
}

fn uuid_text(raw: &[u8]) -> Result<String, Box<dyn std::error::Error + Sync + Send>> {
    if raw.len() != 16 {
        return Err("malformed uuid value".into());
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
}

/// A driver error as one line: the server's own message and SQLSTATE when there is one.
fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            m.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            m.push_str(&format!("; hint: {hint}"));
        }
        return m;
    }
    crate::error::error_chain(e)
}

fn pool_message(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_message(e),
        deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
            format!("no free connection within {} s", FETCH_TIMEOUT.as_secs())
        }
        deadpool_postgres::PoolError::Timeout(_) => {
            format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut raw = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale].into_iter().chain(digits.iter().copied()) {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numerics_decode_to_their_exact_text() {
        let cases: &[(Vec<u8>, &str)] = &[
            (numeric(0, 0, 0, 0, &[]), "0"),
            (numeric(0, 0, 0, 2, &[]), "0.00"),
            (numeric(2, 0, 0, 2, &[100, 1000]), "100.10"),
            (numeric(2, 0, 0, 3, &[19, 9950]), "19.995"),
            (numeric(2, 0, 0x4000, 2, &[12, 3400]), "-12.34"),
            (numeric(1, -1, 0, 4, &[5]), "0.0005"),
            (numeric(1, -2, 0, 8, &[12]), "0.00000012"),
            (numeric(1, 1, 0, 0, &[1]), "10000"),
            (numeric(3, 2, 0, 0, &[1, 0, 5]), "100000005"),
            (numeric(2, 0, 0, 8, &[7, 1234]), "7.12340000"),
            (numeric(0, 0, 0xC000, 0, &[]), "NaN"),
        ];
        for (raw, want) in cases {
            assert_eq!(numeric_text(raw).unwrap(), *want);
        }
        assert!(numeric_text(&[0, 1]).is_err());
        assert!(numeric_text(&numeric(1, 0, 0, 0, &[10000])).is_err());
    }

    #[test]
    fn parameters_are_numbered_by_name() {
        let (q, p) = translate(
            "SELECT * FROM o WHERE id::text = :reference OR (tx = :psp_reference AND \
             ref = :reference) -- :ignored\n AND x = ':no'",
        )
        .unwrap();
        assert_eq!(
            q,
            "SELECT * FROM o WHERE id::text = $1 OR (tx = $2 AND ref = $1) -- :ignored\n AND x = ':no'"
        );
        assert_eq!(p, [Param::Reference, Param::PspReference]);
        let (q, p) = translate("SELECT 1 WHERE tx = :psp_reference").unwrap();
        assert_eq!(
            (q.as_str(), p.as_slice()),
            ("SELECT 1 WHERE tx = $1", &[Param::PspReference][..])
        );
        assert!(translate("SELECT :other").unwrap_err().to_string().contains(":other"));
    }

    #[test]
    fn only_order_columns_matter() {
        assert!(is_order_column("AMOUNT"));
        assert!(!is_order_column("created_at"));
    }
}
