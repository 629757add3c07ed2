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
use hyper::{Method, Request, Response, StatusCode};
use ingest_bench::peer::{read_verified, refused, serve, text, Verifier};
use ingest_bench::{Args, DEFAULT_SECRET};

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
    serve("verify", &listen, move |req| handle(req, verifier.clone())).await;
    eprintln!("verify: stopped");
}
