//! A SQLite shop database, opened read-only.

use std::sync::{Arc, Mutex};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::{Cell, Lookup, RawOrder, ShopError};
use crate::shop::ShopConfig;

/// A read-only connection to a SQLite shop, used from blocking tasks.
#[derive(Debug, Clone)]
pub struct SqliteShop {
    /// The connection; one query at a time.
    conn: Arc<Mutex<Connection>>,
    /// The configured order query.
    query: Arc<str>,
}

impl SqliteShop {
    /// Opens the file read-only and checks that the query compiles.
    pub fn open(config: &ShopConfig) -> Result<SqliteShop, ShopError> {
        let path = config.url.expose();
        let connect = |e: rusqlite::Error| ShopError::Connect {
            url: path.to_owned(),
            message: e.to_string(),
        };
        if !std::path::Path::new(path).exists() {
            return Err(ShopError::Connect {
                url: path.to_owned(),
                message: "no such file".into(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(connect)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(connect)?;
        conn.prepare_cached(&config.query).map_err(|e| ShopError::Query(e.to_string()))?;
        Ok(SqliteShop { conn: Arc::new(Mutex::new(conn)), query: config.query.as_str().into() })
    }

    /// Runs the order query.
    pub async fn fetch(&self, lookup: &Lookup) -> Result<Vec<RawOrder>, ShopError> {
        let this = self.clone();
        let lookup = lookup.clone();
        tokio::task::spawn_blocking(move || this.fetch_blocking(&lookup))
            .await
            .map_err(|e| ShopError::Query(format!("lookup task failed: {e}")))?
    }

    /// Runs the order query for each lookup, in order, in one blocking task: one thread hop
    /// and one lock for the batch instead of one per lookup.
    pub async fn fetch_many(&self, lookups: &[Lookup]) -> Vec<Result<Vec<RawOrder>, ShopError>> {
        let this = self.clone();
        let batch = lookups.to_vec();
        let n = batch.len();
        tokio::task::spawn_blocking(move || batch.iter().map(|l| this.fetch_blocking(l)).collect())
            .await
            .unwrap_or_else(|e| {
                (0..n).map(|_| Err(ShopError::Query(format!("lookup task failed: {e}")))).collect()
            })
    }

    /// The names of the columns the order query returns, without running it.
    pub fn columns(&self) -> Result<Vec<String>, ShopError> {
        let conn =
            self.conn.lock().map_err(|_| ShopError::Query("shop connection poisoned".into()))?;
        let stmt = conn.prepare_cached(&self.query).map_err(|e| ShopError::Query(e.to_string()))?;
        Ok(stmt.column_names().into_iter().map(str::to_owned).collect())
    }

    /// Runs the order query on the calling thread.
    pub fn fetch_blocking(&self, lookup: &Lookup) -> Result<Vec<RawOrder>, ShopError> {
        let query_err = |e: rusqlite::Error| ShopError::Query(e.to_string());
        let conn =
            self.conn.lock().map_err(|_| ShopError::Query("shop connection poisoned".into()))?;
        let mut stmt = conn.prepare_cached(&self.query).map_err(query_err)?;
        for (name, value) in
            [(":reference", &lookup.reference), (":psp_reference", &lookup.psp_reference)]
        {
            if let Some(index) = stmt.parameter_index(name).map_err(query_err)? {
                stmt.raw_bind_parameter(index, value).map_err(query_err)?;
            }
        }
        let names: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(query_err)? {
            let mut order = RawOrder::default();
            for (i, name) in names.iter().enumerate() {
                let cell = match row.get_ref(i).map_err(query_err)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(v) => Cell::Real(v),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Cell::Text(String::from_utf8_lossy(t).into_owned())
                    }
                };
                order.set(name, cell);
            }
            out.push(order);
        }
        Ok(out)
    }
}
