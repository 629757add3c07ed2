//! The `naive` peer: a durable webhook receiver as a careful developer would write it in an
//! afternoon. The `verify` peer's server (hyper 1.x, the Stripe signature check, the JSON
//! parse), then each event is stored before its 200:
//!
//! - a SQLite file in WAL mode with `synchronous = FULL` (every commit is fsync'd), one table
//!   `inbox(event_id UNIQUE, body, received_at)`, the body stored raw;
//! - group commit: a request hands its row to one writer thread over a bounded channel and
//!   waits. The writer takes up to [`BATCH`] queued rows, inserts them with
//!   `INSERT OR IGNORE` (a redelivered event is acknowledged again, not stored twice) in one
//!   transaction, commits, and only then answers each waiting request through its oneshot:
//!   200 if the commit succeeded, 500 if not.
//!
//! `naive --listen 127.0.0.1:18184 --db inbox.db --secret whsec_test_bench`; the database and
//! secret may also come from `BENCH_DB` and `BENCH_SECRET`. `GET /readyz` answers 200 once the
//! database is open. Stops on SIGTERM or SIGINT: the writer commits what is queued, closes the
//! database and the process exits.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ingest_bench::peer::{read_verified, refused, serve, text, Verifier};
use ingest_bench::{die, Args, DEFAULT_SECRET};
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

/// The most rows one transaction takes.
const BATCH: usize = 256;

/// Rows that may wait for the writer before requests wait to queue.
const QUEUE: usize = 4096;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS inbox (
    event_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    received_at INTEGER NOT NULL
)";

const INSERT: &str =
    "INSERT OR IGNORE INTO inbox (event_id, body, received_at) VALUES (?1, ?2, ?3)";

/// A verified event waiting to be stored, and where to say whether it was.
struct Row {
    event_id: String,
    body: Bytes,
    /// Unix milliseconds.
    received_at: i64,
    done: oneshot::Sender<Result<(), String>>,
}

struct State {
    verifier: Verifier,
    rows: mpsc::Sender<Row>,
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, _) => {}
        (&Method::GET, "/readyz") => return Ok(text(StatusCode::OK, "ready\n")),
        _ => return Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    }
    let event = match read_verified(req, &state.verifier).await {
        Ok(event) => event,
        Err(why) => return Ok(refused(&why)),
    };
    let (done, stored) = oneshot::channel();
    let row = Row { event_id: event.event_id, body: event.body, received_at: unix_ms(), done };
    if state.rows.send(row).await.is_err() {
        return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "the writer has stopped\n"));
    }
    Ok(match stored.await {
        Ok(Ok(())) => text(StatusCode::OK, "stored\n"),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("not stored: {e}\n")),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "not stored: the writer stopped\n"),
    })
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn open(path: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        die(&format!("{path}: journal_mode is {mode}, not WAL"));
    }
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Inserts `batch` in one transaction and commits it.
fn commit(conn: &mut Connection, batch: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(INSERT)?;
        for row in batch {
            insert.execute(params![row.event_id, &row.body[..], row.received_at])?;
        }
    }
    tx.commit()
}

/// The writer thread: group commit until every sender is gone, then close the database.
fn writer(mut conn: Connection, mut rows: mpsc::Receiver<Row>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rows.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rows.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &batch).map_err(|e| e.to_string());
        if let Err(e) = &result {
            eprintln!("naive: commit of {} rows failed: {e}", batch.len());
        }
        for row in batch.drain(..) {
            let _ = row.done.send(result.clone());
        }
    }
    if let Err((_, e)) = conn.close() {
        eprintln!("naive: closing the database: {e}");
    }
}

fn main() {
    let args = Args::parse(&[]);
    let listen = args.get("listen").unwrap_or("127.0.0.1:18184").to_owned();
    let from_env =
        |arg: &str, var: &str| args.get(arg).map(str::to_owned).or_else(|| std::env::var(var).ok());
    let secret = from_env("secret", "BENCH_SECRET").unwrap_or_else(|| DEFAULT_SECRET.to_owned());
    let db = from_env("db", "BENCH_DB").unwrap_or_else(|| die("--db PATH (or BENCH_DB) is needed"));

    let conn = open(&db).unwrap_or_else(|e| die(&format!("{db}: {e}")));
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = std::thread::Builder::new()
        .name("naive-writer".to_owned())
        .spawn(move || writer(conn, rx))
        .expect("writer thread");
    let state = Arc::new(State { verifier: Verifier::new(&secret), rows: tx });

    // The same runtime as the baseline's `#[tokio::main]` (multi-thread, a worker per core),
    // built by hand so that the writer is joined after the runtime and its senders are gone.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(serve("naive", &listen, move |req| handle(req, state.clone())));
    runtime.shutdown_timeout(Duration::from_secs(5));
    writer.join().expect("the writer thread panicked");
    eprintln!("naive: stopped");
}
