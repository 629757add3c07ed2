//! A small harness: start the daemon in-process on `127.0.0.1:0` with a temporary store,
//! talk to it over real sockets, stop it and wait for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use reconciled::config::Config;
use reconciled::provider::stripe;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_test_primary_0123456789";
pub const ROLLED: &str = "whsec_test_rolled_9876543210";
/// The id of `fixtures/stripe/payment_intent.succeeded.json`.
pub const FIXTURE_EVENT: &str = "evt_3PqR1001TestAbCdEf1tQz";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/stripe").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The succeeded-PaymentIntent fixture with its event id replaced.
pub fn event(id: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture("payment_intent.succeeded.json")).unwrap();
    assert!(text.contains(FIXTURE_EVENT));
    text.replace(FIXTURE_EVENT, id).into_bytes()
}

pub fn now() -> i64 {
    reconciled::now_ms() / 1000
}

pub fn signed(secret: &str, body: &[u8]) -> String {
    stripe::sign(secret.as_bytes(), now(), body)
}

/// Configuration text for a test daemon; `server` and `store` are extra keys for those tables.
pub fn config_text(db: &Path, server: &str, store: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 5\n{server}\n\
         [store]\npath = \"{}\"\n{store}\n\
         [[endpoint]]\nname = \"stripe\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\", \"{ROLLED}\"]\ntolerance_secs = 300\n",
        db.display()
    )
}

/// A running daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    pub db: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Daemon {
    /// Starts a daemon with a store in `dir`.
    pub async fn start_in(dir: &Path, server: &str, store: &str) -> Daemon {
        let db = dir.join("inbox.db");
        let config = Config::from_toml(&config_text(&db, server, store), &dir.join("test.toml"))
            .expect("test config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            reconciled::run_server(&config, listener, token, |_| {}).await.expect("server runs");
        });
        Daemon { addr, db, shutdown, task }
    }

    /// Stops the daemon and waits until its store is closed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("server task");
    }

    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, String) {
        request(self.addr, "POST", path, headers, body.into()).await
    }

    /// Posts `body` to the Stripe endpoint, signed with `secret`.
    pub async fn post_stripe(&self, secret: &str, body: &[u8]) -> (StatusCode, String) {
        let sig = signed(secret, body);
        self.post("/webhooks/stripe", &[("stripe-signature", &sig)], body.to_vec()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        request(self.addr, "GET", path, &[], Bytes::new()).await
    }

    pub fn read(&self) -> rusqlite::Connection {
        reconciled::store::schema::open_reader(&self.db).expect("store readable")
    }

    /// `(dedup_key, delivery_count)` of every inbox row.
    pub fn rows(&self) -> Vec<(String, i64)> {
        let conn = self.read();
        let mut stmt =
            conn.prepare("SELECT dedup_key, delivery_count FROM inbox ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }
}

/// One request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(Full::new(body)).unwrap()).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
