//! A local HTTPS server with the test-only certificate for 127.0.0.1 (signed by
//! `fixtures/paypal/test-only-ca.pem`). It plays PayPal's side of a protocol (the certificate
//! URL, the IPN postback): every request is recorded, and answered by a closure.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// What the server answers: `(status, body)` for `(path, request body)`.
pub type Respond = dyn Fn(&str, &[u8]) -> (u16, Vec<u8>) + Send + Sync;

/// `(path, body)` of a request.
pub type Received = (String, Vec<u8>);

/// A running test server; stopped when dropped.
pub struct TlsServer {
    pub addr: SocketAddr,
    /// `(path, body)` of every request received, in order.
    pub requests: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn fixture_path(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/paypal").join(name).display().to_string()
}

/// A TLS acceptor serving the test-only certificate for 127.0.0.1.
pub(crate) fn acceptor() -> tokio_rustls::TlsAcceptor {
    let pem = |name: &str| std::fs::read(fixture_path(name)).unwrap();
    let certs = rustls_pemfile::certs(&mut &pem("test-only-tls-127.0.0.1.pem")[..])
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &pem("test-only-tls-127.0.0.1.key.pem")[..])
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

impl TlsServer {
    /// Starts on a new port.
    pub async fn start(
        respond: impl Fn(&str, &[u8]) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> TlsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TlsServer::serve(listener, Arc::new(respond))
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener, respond: Arc<Respond>) -> TlsServer {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let acceptor = acceptor();
        let log = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, log, respond) = (acceptor.clone(), log.clone(), respond.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (log, respond) = (log.clone(), respond.clone());
                            async move {
                                let path = req.uri().path().to_owned();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                log.lock().unwrap().push((path.clone(), body.to_vec()));
                                let (status, answer) = respond(&path, &body);
                                let mut resp = Response::new(Full::new(Bytes::from(answer)));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(resp)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsServer { addr, requests, task }
    }

    /// How many requests it has received.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}
