//! The baseline: a bare hyper 1.x HTTP/1.1 server that reads each request body and answers
//! `200 stored` without looking at it. The same runtime (tokio multi-thread, one worker per
//! core), keep-alive and TCP_NODELAY as reconciled, so the difference is the daemon's work.
//!
//! `baseline --listen 127.0.0.1:18181`; stops on SIGTERM or SIGINT.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use ingest_bench::peer::serve;
use ingest_bench::Args;

async fn ok(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body, as any webhook handler must, and drop it.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(b"stored\n")));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(resp)
}

#[tokio::main]
async fn main() {
    let args = Args::parse(&[]);
    let listen = args.get("listen").unwrap_or("127.0.0.1:18181").to_owned();
    serve("baseline", &listen, ok).await;
    eprintln!("baseline: stopped");
}
