//! A write timeout for connections whose client stops taking the answer.
//!
//! hyper has no write timeout: once a client stops reading (or reads too slowly to matter),
//! the socket buffers fill, every write returns `Pending`, and the connection waits forever,
//! holding one of the `max_connections` slots. [`StallGuard`] wraps a connection's stream and
//! fails a write, flush or shutdown with [`io::ErrorKind::TimedOut`] once the stream has made no
//! progress on writing for the configured limit. hyper then drops the connection.
//!
//! The clock starts when a write first returns `Pending`, and any write that goes through
//! stops it: a client that reads slowly but steadily is never cut off, however long the whole
//! answer takes. Reads are passed through untouched; the header and body timeouts cover them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream whose writes fail after `limit` without progress.
#[derive(Debug)]
pub struct StallGuard<T> {
    inner: T,
    limit: Duration,
    /// The deadline of the current stall; allocated at the first stall and reused after.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether a write is stalled now, and so `timer` counts.
    stalled: bool,
}

impl<T> StallGuard<T> {
    /// Wraps `inner`; a write stalled for `limit` fails.
    pub fn new(inner: T, limit: Duration) -> StallGuard<T> {
        StallGuard { inner, limit, timer: None, stalled: false }
    }

    /// Passes a write-side result through, starting the clock on `Pending` and stopping it on
    /// any result; fails once the clock has run out.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.stalled = false;
            return result;
        }
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let timer = self.timer.as_mut().expect("armed above");
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no data for {} s; closing", self.limit.as_secs_f64()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, result)
    }
}

#[cfg(test)]
mod tests {
    //! Real in-memory pipes (`tokio::io::duplex`) with a small buffer stand in for a socket
    //! whose peer does not read; tokio's paused clock makes the limits exact.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

    const LIMIT: Duration = Duration::from_secs(5);

    /// Awaits an operation that must fail with `TimedOut`; a guard that never fires fails the
    /// test instead of hanging it.
    async fn times_out<R: std::fmt::Debug>(op: impl Future<Output = io::Result<R>>) -> io::Error {
        let result =
            tokio::time::timeout(LIMIT * 10, op).await.expect("still stalled at 10 × the limit");
        let err = result.expect_err("the stalled operation succeeded");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        err
    }

    /// On tokio's paused clock a timer fires at its deadline, rounded up to the millisecond.
    fn assert_took_the_limit(started: Instant) {
        let took = started.elapsed();
        assert!(took >= LIMIT && took <= LIMIT + Duration::from_millis(2), "took {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_after_the_limit_and_not_before() {
        let (ours, _peer) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(ours, LIMIT);
        let started = Instant::now();
        let err = times_out(guarded.write_all(&[7u8; 1000])).await;
        assert!(err.to_string().contains("took no data for 5 s"), "{err}");
        assert_took_the_limit(started);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_never_cut_off() {
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(ours, LIMIT);
        // The peer takes 64 bytes every 4 s: each stall is shorter than the limit, while the
        // whole answer takes 10 times the limit.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_secs(4)).await;
                match peer.read(&mut chunk).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let answer: Vec<u8> = (0..64 * 13).map(|i| i as u8).collect();
        let started = Instant::now();
        guarded.write_all(&answer).await.expect("progress resets the clock");
        guarded.shutdown().await.unwrap();
        drop(guarded);
        assert_eq!(reader.await.unwrap(), answer);
        assert!(started.elapsed() >= LIMIT * 9, "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_stall_gets_the_full_limit_again() {
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(ours, LIMIT);
        guarded.write_all(&[1u8; 64]).await.unwrap();
        // Stalled for most of the limit, then the peer takes everything.
        let taker = tokio::spawn(async move {
            tokio::time::sleep(LIMIT - Duration::from_secs(1)).await;
            let mut buf = [0u8; 128];
            peer.read_exact(&mut buf).await.unwrap();
            peer
        });
        guarded.write_all(&[2u8; 64]).await.unwrap();
        let _peer = taker.await.unwrap();
        // The pipe is full again and nobody reads: the clock starts afresh from here.
        guarded.write_all(&[3u8; 64]).await.unwrap();
        let started = Instant::now();
        times_out(guarded.write_all(&[4u8; 1])).await;
        assert_took_the_limit(started);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_flush_fails_too() {
        // The BufWriter takes the bytes at once; only flushing them into the full pipe stalls.
        let (ours, _peer) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(BufWriter::new(ours), LIMIT);
        guarded.write_all(&[5u8; 200]).await.unwrap();
        let started = Instant::now();
        times_out(guarded.flush()).await;
        assert_took_the_limit(started);
    }

    #[tokio::test(start_paused = true)]
    async fn vectored_writes_are_guarded() {
        let (ours, _peer) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(ours, LIMIT);
        guarded.write_all(&[0u8; 64]).await.unwrap();
        let parts = [io::IoSlice::new(b"more"), io::IoSlice::new(b"bytes")];
        times_out(guarded.write_vectored(&parts)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_not_timed() {
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(ours, LIMIT);
        let mut buf = [0u8; 8];
        // Waiting for the client to send is not a stall, however long it lasts.
        let waited = tokio::time::timeout(LIMIT * 10, guarded.read(&mut buf)).await;
        assert!(waited.is_err(), "a read ended by itself: {waited:?}");
        peer.write_all(b"request!").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 8);
        assert_eq!(&buf, b"request!");
    }
}
