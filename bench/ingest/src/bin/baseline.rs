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
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ingest_bench::{die, Args};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

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
    let listener =
        TcpListener::bind(&listen).await.unwrap_or_else(|e| die(&format!("bind {listen}: {e}")));
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    eprintln!("baseline: listening on http://{listen}");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("baseline: accept: {e}");
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(ok))
                .await;
        });
    }
    eprintln!("baseline: stopped");
}
