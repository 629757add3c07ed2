//! The `verify` peer: the baseline's hyper 1.x server plus what every webhook receiver must do
//! before it could store anything. It reads the body, checks the `Stripe-Signature` header as
//! Stripe documents it, parses the JSON event (its `id` and `type`), and answers `200 ok`. It
//! stores nothing: its rate is the ceiling of any server that verifies and then stores. A
//! request that fails the check is answered 400 with the reason. `GET /readyz` answers 200.
//!
//! `verify --listen 127.0.0.1:18183 --secret whsec_test_bench`; the secret may also come from
//! `BENCH_SECRET`. Stops on SIGTERM or SIGINT.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ingest_bench::peer::{read_verified, refused, text, Verifier};
use ingest_bench::{die, Args, DEFAULT_SECRET};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

async fn handle(
    req: Request<Incoming>,
    verifier: Arc<Verifier>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, _) => {}
        (&Method::GET, "/readyz") => return Ok(text(StatusCode::OK, "ready\n")),
        _ => return Ok(text(StatusCode::NOT_FOUND, "not found\n")),
    }
    Ok(match read_verified(req, &verifier).await {
        Ok(_event) => text(StatusCode::OK, "ok\n"),
        Err(why) => refused(&why),
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse(&[]);
    let listen = args.get("listen").unwrap_or("127.0.0.1:18183").to_owned();
    let secret = args
        .get("secret")
        .map(str::to_owned)
        .or_else(|| std::env::var("BENCH_SECRET").ok())
        .unwrap_or_else(|| DEFAULT_SECRET.to_owned());
    let verifier = Arc::new(Verifier::new(&secret));
    let listener =
        TcpListener::bind(&listen).await.unwrap_or_else(|e| die(&format!("bind {listen}: {e}")));
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    eprintln!("verify: listening on http://{listen}");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("verify: accept: {e}");
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let verifier = verifier.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, verifier.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    eprintln!("verify: stopped");
}
