//! TLS to PostgreSQL, with the server's certificate verified: the shared store and a
//! PostgreSQL shop reached through a TLS front that plays the server's side of PostgreSQL's
//! `SSLRequest` handshake with the test-only certificate for 127.0.0.1 (signed by
//! `fixtures/paypal/test-only-ca.pem`), then passes the decrypted stream to the real server.
//! The front refuses a connection that does not ask for TLS, as a `hostssl`-only server
//! would. Skipped without `RECONCILED_TEST_POSTGRES_URL` (source scripts/dbs.sh), except
//! under CI, where it fails.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::StatusCode;
use reconciled::config::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::harness::{config_text_on, pi_event, Backend, Daemon, PgDb, SECRET};

/// PostgreSQL's `SSLRequest`: length 8, then the request code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// MySQL's `CLIENT_SSL` capability flag.
const CLIENT_SSL: u32 = 0x0800;

/// Which server the front stands before.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Postgres,
    Mysql,
}

/// The TLS front: how many sessions it carried, and how many plain connections it refused.
struct TlsFront {
    addr: SocketAddr,
    tls: Arc<AtomicUsize>,
    refused_plain: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    async fn start(server: String, protocol: Protocol) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tls, refused_plain) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (sessions, refused) = (tls.clone(), refused_plain.clone());
        let acceptor = crate::tls::acceptor();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let (server, acceptor) = (server.clone(), acceptor.clone());
                let (sessions, refused) = (sessions.clone(), refused.clone());
                tokio::spawn(async move {
                    let served = match protocol {
                        Protocol::Postgres => postgres(client, &server, &acceptor).await,
                        Protocol::Mysql => mysql(client, &server, &acceptor).await,
                    };
                    match served {
                        Ok(Served::Tls) => drop(sessions.fetch_add(1, Ordering::SeqCst)),
                        Ok(Served::RefusedPlain) => drop(refused.fetch_add(1, Ordering::SeqCst)),
                        Err(_) => {}
                    }
                });
            }
        });
        TlsFront { addr, tls, refused_plain, task }
    }

    /// A front for the server of `url` (`postgres://` or `mysql://user@host:port/db`), and
    /// `url` through the front asking for TLS.
    async fn before(url: &str) -> (TlsFront, String) {
        let scheme_end = url.find("://").unwrap() + 3;
        let rest = &url[scheme_end..];
        let at = rest.rfind('@').map_or(0, |i| i + 1);
        let slash = rest[at..].find('/').map_or(rest.len(), |i| at + i);
        let (protocol, ask) = if url.starts_with("mysql://") {
            (Protocol::Mysql, "require_ssl=true")
        } else {
            (Protocol::Postgres, "sslmode=require")
        };
        let front = TlsFront::start(rest[at..slash].to_owned(), protocol).await;
        let (user, db) = (&rest[..at], &rest[slash..]);
        let tls_url = format!("{}{user}{}{db}?{ask}", &url[..scheme_end], front.addr);
        (front, tls_url)
    }

    fn sessions(&self) -> usize {
        self.tls.load(Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.refused_plain.load(Ordering::SeqCst)
    }
}

/// What became of a connection to the front.
enum Served {
    /// A TLS session was established and carried to the server.
    Tls,
    /// The client did not ask for TLS: closed.
    RefusedPlain,
}

/// PostgreSQL: the client's `SSLRequest` answered `S`, TLS, then the decrypted stream passed on.
async fn postgres(
    mut client: TcpStream,
    server: &str,
    acceptor: &TlsAcceptor,
) -> std::io::Result<Served> {
    let mut first = [0u8; 8];
    client.read_exact(&mut first).await?;
    if first != SSL_REQUEST {
        return Ok(Served::RefusedPlain);
    }
    client.write_all(b"S").await?;
    let mut client = acceptor.accept(client).await?;
    let mut upstream = TcpStream::connect(server).await?;
    tokio::spawn(async move { tokio::io::copy_bidirectional(&mut client, &mut upstream).await });
    Ok(Served::Tls)
}

/// One MySQL packet: its sequence id and payload.
async fn read_packet(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut payload = vec![0; len];
    r.read_exact(&mut payload).await?;
    Ok((header[3], payload))
}

async fn write_packet(
    w: &mut (impl AsyncWrite + Unpin),
    seq: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = payload.len().to_le_bytes();
    w.write_all(&[len[0], len[1], len[2], seq]).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// MySQL/MariaDB: the server's greeting passed on offering TLS (`CLIENT_SSL`); the client's
/// short `SSLRequest`, then TLS; its handshake response passed on without `CLIENT_SSL`, and the
/// authentication exchanged with the sequence ids the server expects (one fewer: it never saw
/// the `SSLRequest`) until its OK or error; then the decrypted stream passed on.
async fn mysql(
    mut client: TcpStream,
    server: &str,
    acceptor: &TlsAcceptor,
) -> std::io::Result<Served> {
    let mut upstream = TcpStream::connect(server).await?;
    let (seq, mut greeting) = read_packet(&mut upstream).await?;
    // Protocol 10, the version up to its NUL, the connection id (4), 8 bytes of scramble, a
    // filler byte: then the capability flags' lower half.
    let version_end = greeting.iter().skip(1).position(|&b| b == 0).unwrap() + 1;
    let caps = version_end + 1 + 4 + 8 + 1;
    greeting[caps + 1] |= (CLIENT_SSL >> 8) as u8;
    write_packet(&mut client, seq, &greeting).await?;
    let (_, request) = read_packet(&mut client).await?;
    let flags = u32::from_le_bytes(request[..4].try_into().unwrap());
    if request.len() != 32 || flags & CLIENT_SSL == 0 {
        return Ok(Served::RefusedPlain);
    }
    let mut client = acceptor.accept(client).await?;
    let (seq, mut response) = read_packet(&mut client).await?;
    let flags = u32::from_le_bytes(response[..4].try_into().unwrap()) & !CLIENT_SSL;
    response[..4].copy_from_slice(&flags.to_le_bytes());
    write_packet(&mut upstream, seq - 1, &response).await?;
    loop {
        let (seq, packet) = read_packet(&mut upstream).await?;
        write_packet(&mut client, seq + 1, &packet).await?;
        if matches!(packet.first(), Some(0x00 | 0xff)) {
            break;
        }
        let (seq, packet) = read_packet(&mut client).await?;
        write_packet(&mut upstream, seq - 1, &packet).await?;
    }
    tokio::spawn(async move { tokio::io::copy_bidirectional(&mut client, &mut upstream).await });
    Ok(Served::Tls)
}

fn test_ca() -> String {
    crate::tls::fixture_path("test-only-ca.pem")
}

/// The daemon's configuration on the store `url`, with `tls_ca_file = ca` if given.
fn store_config(url: &str, ca: Option<&str>) -> String {
    let ca = ca.map(|c| format!("tls_ca_file = \"{c}\"")).unwrap_or_default();
    config_text_on(&Backend::Postgres(url.to_owned()), Path::new("unused"), "", &ca, "")
}

/// With `sslmode=require` and the CA in `tls_ca_file`, every connection of the daemon (the
/// writer's, the pool's, the listener's) goes over TLS, none in plain text, and the daemon
/// stores and acknowledges as it does without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_store_is_reached_over_verified_tls() {
    let Some(db) = PgDb::create("tls_store").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (front, url) = TlsFront::before(&db.url).await;
    let ca = format!("tls_ca_file = \"{}\"", test_ca());
    let backend = Backend::Postgres(url);
    let daemon = Daemon::start_on(&backend, dir.path(), "", &ca, "").await;
    let body = pi_event("evt_tls", "succeeded", "pi_tls", "1", 1000, "usd");
    assert_eq!(daemon.post_stripe(SECRET, &body).await, (StatusCode::OK, "stored\n".to_owned()));
    assert_eq!(daemon.get("/readyz").await.0, StatusCode::OK);
    daemon.stop().await;

    let stored: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM inbox WHERE dedup_key = 'evt_tls'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "the notification is in the store");
    assert!(front.sessions() >= 2, "the writer and the pool went over TLS: {}", front.sessions());
    assert_eq!(front.refused(), 0, "no connection tried plain text");
    drop(db);
}

/// `sslmode=require` verifies the server: a certificate no trusted root signed is refused
/// (libpq's `require` would take it), with a message that says so; a server that offers no TLS
/// is refused too. Without `sslmode`, nothing is encrypted and nothing is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_server_is_refused_and_no_tls_is_tried_unasked() {
    let Some(db) = PgDb::create("tls_refused").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (front, url) = TlsFront::before(&db.url).await;
    let open = |text: String| {
        let path = dir.path().join("t.toml");
        async move {
            let config = Config::from_toml(&text, &path).expect("config is valid");
            reconciled::store::Store::open_tool(&config.store).await.map(drop)
        }
    };

    // The test CA is not among the public roots: the front's certificate is not trusted.
    let err = open(store_config(&url, None)).await.expect_err("an unknown issuer is refused");
    let text = err.to_string();
    assert!(text.to_lowercase().contains("certificate"), "says why: {text}");
    eprintln!("as expected: {text}");

    // Straight to the real server with sslmode=require: its certificate (if it offers TLS at
    // all) is not signed by a trusted root for 127.0.0.1 either.
    let direct = format!("{}?sslmode=require", db.url);
    let err = open(store_config(&direct, None)).await.expect_err("not verified, not used");
    eprintln!("as expected: {err}");

    // No sslmode: the front is never asked for TLS, so it refuses the plain connection.
    let plain = url.replace("?sslmode=require", "");
    let before = front.refused();
    assert!(open(store_config(&plain, None)).await.is_err());
    assert!(front.refused() > before, "a plain connection was made, not a TLS one");
    assert_eq!(front.sessions(), 0, "no TLS session was ever established");
    drop(db);
}

/// A PostgreSQL shop over TLS: `shop.tls_ca_file` with `sslmode=require` in its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_shop_is_read_over_verified_tls() {
    let Some(db) = PgDb::create("tls_shop").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (front, url) = TlsFront::before(&db.url).await;
    let shop = |ca: Option<String>| {
        let ca = ca.map(|c| format!("tls_ca_file = \"{c}\"\n")).unwrap_or_default();
        format!(
            "{}[shop]\ndriver = \"postgres\"\nurl = \"{url}\"\npool_size = 1\n{ca}\
             query = \"SELECT 1 WHERE :reference IS NULL\"\n\
             [shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"paid\"]\ncancelled = [\"cancelled\"]\n",
            store_config(&db.url, None)
        )
    };
    let path = dir.path().join("t.toml");
    let config = Config::from_toml(&shop(Some(test_ca())), &path).expect("config is valid");
    let source = reconciled::shop::OrderSource::connect(config.shop.as_ref().unwrap())
        .await
        .expect("connects over TLS");
    source.close().await;
    assert!(front.sessions() >= 1, "the shop was read over TLS");

    let config = Config::from_toml(&shop(None), &path).expect("config is valid");
    let err = reconciled::shop::OrderSource::connect(config.shop.as_ref().unwrap())
        .await
        .expect_err("an unknown issuer is refused");
    assert!(err.to_string().to_lowercase().contains("certificate"), "says why: {err}");
    assert_eq!(front.refused(), 0);
    drop(db);
}

/// A MySQL/MariaDB shop over TLS: `require_ssl=true` in its URL and `shop.tls_ca_file`. The
/// front makes the server offer TLS; without the CA the certificate is refused, and without
/// `require_ssl` nothing asks for TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_shop_is_read_over_verified_tls() {
    let Some(base) = crate::shops::server_url("RECONCILED_TEST_MYSQL_URL") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (front, url) = TlsFront::before(&base).await;
    let shop = |url: &str, ca: Option<String>| {
        let ca = ca.map(|c| format!("tls_ca_file = \"{c}\"\n")).unwrap_or_default();
        format!(
            "{}[shop]\ndriver = \"mysql\"\nurl = \"{url}\"\npool_size = 1\n{ca}\
             query = \"SELECT 1 AS order_id FROM DUAL WHERE :reference IS NULL\"\n\
             [shop.status]\nawaiting_payment = [\"pending\"]\npaid = [\"paid\"]\ncancelled = [\"cancelled\"]\n",
            store_config("postgres://unused@127.0.0.1:1/unused", None)
        )
    };
    let path = dir.path().join("t.toml");
    let connect = |text: String| {
        let path = path.clone();
        async move {
            let config = Config::from_toml(&text, &path).expect("config is valid");
            reconciled::shop::OrderSource::connect(config.shop.as_ref().unwrap()).await
        }
    };
    let source = connect(shop(&url, Some(test_ca()))).await.expect("connects over TLS");
    let columns = source.columns().await.expect("the query is prepared over TLS");
    assert_eq!(columns, ["order_id"]);
    source.close().await;
    assert!(front.sessions() >= 1, "the shop was read over TLS");
    assert_eq!(front.refused(), 0);

    let sessions = front.sessions();
    let err = connect(shop(&url, None)).await.expect_err("an unknown issuer is refused");
    assert!(err.to_string().to_lowercase().contains("certificate"), "says why: {err}");
    assert_eq!(front.sessions(), sessions, "no TLS session without a trusted certificate");

    let plain = url.replace("?require_ssl=true", "");
    assert!(connect(shop(&plain, None)).await.is_err());
    assert!(front.refused() >= 1, "a plain connection was made, not a TLS one");
}
