//! Moving a SQLite store into a PostgreSQL one (`reconciled store copy`): every table, row for
//! row with its ids, in one transaction on the target; then the counts of both are compared.
//!
//! The target must be empty (a fresh database, or one this build only migrated): copying into
//! a store that already holds notifications would mix two histories. The source is opened
//! read-only; stop the daemon first, or the counts will not match and the copy is rolled back.

use std::path::Path;

use rusqlite::types::ValueRef;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::secret::DbUrl;

/// A column's type in both stores.
#[derive(Debug, Clone, Copy)]
enum Col {
    Int,
    Int4,
    Text,
    Bytes,
    Bool,
}

/// The tables, parents before children, with their columns.
const TABLES: &[(&str, &[(&str, Col)])] = &[
    (
        "inbox",
        &[
            ("id", Col::Int),
            ("endpoint", Col::Text),
            ("provider", Col::Text),
            ("dedup_key", Col::Text),
            ("event_type", Col::Text),
            ("received_at", Col::Int),
            ("last_received_at", Col::Int),
            ("remote_addr", Col::Text),
            ("headers", Col::Text),
            ("body", Col::Bytes),
            ("body_encoding", Col::Text),
            ("body_len", Col::Int4),
            ("status", Col::Text),
            ("attempts", Col::Int4),
            ("next_attempt_at", Col::Int),
            ("payment_key", Col::Text),
            ("outcome", Col::Text),
            ("last_error", Col::Text),
            ("processed_at", Col::Int),
            ("first_tried_at", Col::Int),
            ("verified_at", Col::Int),
            ("source", Col::Text),
        ],
    ),
    (
        "verify_failures",
        &[
            ("id", Col::Int),
            ("at", Col::Int),
            ("endpoint", Col::Text),
            ("remote_addr", Col::Text),
            ("reason", Col::Text),
            ("detail", Col::Text),
            ("body_len", Col::Int4),
            ("body_prefix", Col::Bytes),
        ],
    ),
    (
        "payments",
        &[
            ("provider", Col::Text),
            ("payment_id", Col::Text),
            ("status", Col::Text),
            ("ever_succeeded", Col::Bool),
            ("order_id", Col::Text),
            ("fulfilled", Col::Bool),
            ("updated_at", Col::Int),
            ("last_inbox_id", Col::Int),
            ("open_reviewed", Col::Text),
            ("inquiries", Col::Int4),
            ("inquired_at", Col::Int),
        ],
    ),
    (
        "outbox",
        &[
            ("id", Col::Int),
            ("kind", Col::Text),
            ("order_id", Col::Text),
            ("provider", Col::Text),
            ("payment_id", Col::Text),
            ("amount_minor", Col::Int),
            ("currency", Col::Text),
            ("reason", Col::Text),
            ("template", Col::Text),
            ("customer_email", Col::Text),
            ("idempotency_key", Col::Text),
            ("inbox_id", Col::Int),
            ("event_id", Col::Text),
            ("created_at", Col::Int),
            ("endpoint", Col::Text),
            ("shadow", Col::Bool),
        ],
    ),
    ("outbox_spent_keys", &[("idempotency_key", Col::Text)]),
    (
        "deliveries",
        &[
            ("action_id", Col::Int),
            ("sink", Col::Text),
            ("order_id", Col::Text),
            ("state", Col::Text),
            ("attempts", Col::Int4),
            ("next_at", Col::Int),
            ("last_error", Col::Text),
            ("delivered_at", Col::Int),
            ("created_at", Col::Int),
        ],
    ),
    (
        "delivery_attempts",
        &[
            ("action_id", Col::Int),
            ("sink", Col::Text),
            ("attempt", Col::Int4),
            ("at", Col::Int),
            ("duration_ms", Col::Int),
            ("delivered", Col::Bool),
            ("detail", Col::Text),
        ],
    ),
    ("endpoint_activity", &[("endpoint", Col::Text), ("last_stored_at", Col::Int)]),
];

/// What a copy did: rows per table, the same in both stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// `(table, rows)`, in copy order.
    pub tables: Vec<(&'static str, i64)>,
    /// Repeat deliveries carried over (a SQLite row's `delivery_count` above 1).
    pub redeliveries: i64,
}

/// Why a copy did not happen; nothing was written to the target.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source could not be read.
    #[error("source {path}: {message}")]
    Source {
        /// The SQLite file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The target could not be opened, migrated or written.
    #[error("target: {0}")]
    Target(String),
    /// The target already holds rows.
    #[error("target {url} is not empty ({table} has {rows} rows): copy only into a new store")]
    NotEmpty {
        /// The URL, its password redacted.
        url: String,
        /// The first non-empty table.
        table: &'static str,
        /// Its rows.
        rows: i64,
    },
    /// The counts differ after the copy (the source changed meanwhile?): rolled back.
    #[error("{table}: {source_rows} rows in the source, {target_rows} copied; rolled back (is a daemon still writing to the source?)")]
    Mismatch {
        /// The table.
        table: &'static str,
        /// Rows in the source.
        source_rows: i64,
        /// Rows in the target.
        target_rows: i64,
    },
}

/// Copies the SQLite store at `from` into the PostgreSQL store at `to` (created and migrated
/// if needed, and required to be empty), in one transaction; `progress` is told each table.
/// `tls_ca`: extra trusted roots for the server's certificate (see [`crate::db_tls`]).
pub async fn sqlite_to_postgres(
    from: &Path,
    to: &DbUrl,
    tls_ca: Option<crate::db_tls::CaPem>,
    progress: &(dyn Fn(&str, i64) + Sync),
) -> Result<Copied, CopyError> {
    let source_err = |e: &dyn std::fmt::Display| CopyError::Source {
        path: from.display().to_string(),
        message: e.to_string(),
    };
    let source = crate::store::sqlite::schema::open_reader(from).map_err(|e| source_err(&e))?;
    let target_err = |e: &dyn std::fmt::Display| {
        CopyError::Target(super::postgres::schema::scrub(to, &e.to_string()))
    };
    // Created and migrated as a daemon would.
    let ca = tls_ca.as_deref();
    super::postgres::Postgres::open(to, tls_ca.clone(), None, false, true)
        .await
        .map_err(|e| target_err(&e))?;
    let mut client = super::postgres::schema::connect(to, ca).await.map_err(|e| target_err(&e))?;
    super::postgres::schema::check_durable(&client, to).await.map_err(|e| target_err(&e))?;
    let tx = client.transaction().await.map_err(|e| target_err(&e))?;
    // Nothing may write to the target while it is filled.
    for (table, _) in TABLES.iter().copied().chain([("inbox_redeliveries", &[][..])]) {
        let rows: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(|e| target_err(&e))?
            .get(0);
        if rows > 0 {
            return Err(CopyError::NotEmpty { url: to.redacted(), table, rows });
        }
    }
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        TABLES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
    ))
    .await
    .map_err(|e| target_err(&e))?;
    let source_tx = source.unchecked_transaction().map_err(|e| source_err(&e))?;
    let mut copied = Vec::new();
    for (table, cols) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let types: Vec<Type> = cols
            .iter()
            .map(|(_, c)| match c {
                Col::Int => Type::INT8,
                Col::Int4 => Type::INT4,
                Col::Text => Type::TEXT,
                Col::Bytes => Type::BYTEA,
                Col::Bool => Type::BOOL,
            })
            .collect();
        let sink = tx
            .copy_in(&format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", names.join(", ")))
            .await
            .map_err(|e| target_err(&e))?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let mut stmt = source_tx
            .prepare(&format!("SELECT {} FROM {table}", names.join(", ")))
            .map_err(|e| source_err(&e))?;
        let mut rows = stmt.query([]).map_err(|e| source_err(&e))?;
        let mut n = 0i64;
        while let Some(row) = rows.next().map_err(|e| source_err(&e))? {
            let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::with_capacity(cols.len());
            for (i, (name, col)) in cols.iter().enumerate() {
                let v = row.get_ref(i).map_err(|e| source_err(&e))?;
                values
                    .push(value(v, *col).map_err(|m| source_err(&format!("{table}.{name}: {m}")))?);
            }
            let refs: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
            writer.as_mut().write(&refs).await.map_err(|e| target_err(&e))?;
            n += 1;
        }
        writer.finish().await.map_err(|e| target_err(&e))?;
        progress(table, n);
        copied.push((*table, n));
    }
    // A row delivered more than once: the repeats are counted beside it, as the daemon does.
    let mut stmt = source_tx
        .prepare(
            "SELECT id, delivery_count - 1, last_received_at FROM inbox WHERE delivery_count > 1",
        )
        .map_err(|e| source_err(&e))?;
    let repeats: Vec<(i64, i32, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .and_then(|rows| rows.collect())
        .map_err(|e| source_err(&e))?;
    let mut redeliveries = 0i64;
    for (id, count, at) in &repeats {
        tx.execute(
            "INSERT INTO inbox_redeliveries (inbox_id, count, last_received_at) VALUES ($1, $2, $3)",
            &[id, count, at],
        )
        .await
        .map_err(|e| target_err(&e))?;
        redeliveries += i64::from(*count);
    }
    tx.execute("UPDATE inbox SET delivery_count = 1 WHERE delivery_count <> 1", &[])
        .await
        .map_err(|e| target_err(&e))?;
    // New ids continue after the copied ones.
    for table in ["inbox", "outbox", "verify_failures"] {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 greatest((SELECT max(id) FROM {table}), 1), (SELECT max(id) FROM {table}) IS NOT NULL)"
            ),
            &[],
        )
        .await
        .map_err(|e| target_err(&e))?;
    }
    // The counts, compared within both transactions.
    for (table, _) in TABLES {
        let source_rows: i64 = source_tx
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(|e| source_err(&e))?;
        let target_rows: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(|e| target_err(&e))?
            .get(0);
        if source_rows != target_rows {
            return Err(CopyError::Mismatch { table, source_rows, target_rows });
        }
    }
    tx.commit().await.map_err(|e| target_err(&e))?;
    Ok(Copied { tables: copied, redeliveries })
}

/// A SQLite value as the PostgreSQL column's type.
fn value(v: ValueRef<'_>, col: Col) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    Ok(match (v, col) {
        (ValueRef::Null, Col::Int) => Box::new(None::<i64>),
        (ValueRef::Null, Col::Int4) => Box::new(None::<i32>),
        (ValueRef::Null, Col::Text) => Box::new(None::<String>),
        (ValueRef::Null, Col::Bytes) => Box::new(None::<Vec<u8>>),
        (ValueRef::Null, Col::Bool) => Box::new(None::<bool>),
        (ValueRef::Integer(i), Col::Int) => Box::new(i),
        (ValueRef::Integer(i), Col::Int4) => {
            Box::new(i32::try_from(i).map_err(|_| format!("{i} does not fit in an integer"))?)
        }
        (ValueRef::Integer(i), Col::Bool) => Box::new(i != 0),
        (ValueRef::Text(t), Col::Text) => {
            Box::new(std::str::from_utf8(t).map_err(|e| e.to_string())?.to_owned())
        }
        (ValueRef::Blob(b), Col::Bytes) => Box::new(b.to_vec()),
        (ValueRef::Text(t), Col::Bytes) => Box::new(t.to_vec()),
        (other, _) => return Err(format!("unexpected {:?} value", other.data_type())),
    })
}
