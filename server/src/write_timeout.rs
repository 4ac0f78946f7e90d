//! A client connection whose writes stop making progress is failed after a
//! bounded time.
//!
//! A client that sends requests and never reads the answers fills its
//! receive window and then the server's send buffer; from then on every
//! write to it is `Pending`, and hyper waits on it forever, holding one of
//! the `bridge.max_connections` slots. A few such clients (pipelining cheap
//! `GET`s over a tiny receive buffer) shut everyone else out. The header-
//! and body-read timeouts do not help: hyper reads the next pipelined
//! request only after the previous answer was buffered, and it never is.
//!
//! [`WriteTimeout`] wraps the accepted stream (TCP or TLS) and arms a
//! deadline when a write, flush or shutdown returns `Pending`; any write
//! that completes disarms it, and if the deadline passes first the
//! operation fails with [`io::ErrorKind::TimedOut`], which ends the
//! connection and frees its slot. The deadline measures a stall, not a
//! slow transfer: a client that reads, however slowly, keeps making room
//! and keeps its connection.
//!
//! Writes that complete at once (the normal case: the answer fits in the
//! socket's send buffer) touch no timer; the one timer of a connection is
//! allocated the first time it stalls and reset, not reallocated, after.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `S` with its writes bounded: no progress for `limit` fails them.
pub(crate) struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Created at the first stall, reused after.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` runs for the current stall.
    armed: bool,
}

impl<S> WriteTimeout<S> {
    /// Wrap `inner`; a write that stays pending for `limit` fails.
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        WriteTimeout { inner, limit, timer: None, armed: false }
    }

    /// What a write, flush or shutdown of the inner stream returned, with
    /// the deadline applied: progress disarms it, a stall arms it (once per
    /// stall, so the deadline counts from the stall's start) and polls it.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let limit = self.limit;
        if !self.armed {
            self.armed = true;
            if let Some(timer) = &mut self.timer {
                timer.as_mut().reset(Instant::now() + limit);
            }
        }
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {:?}: its connection is closed", self.limit),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper queues an answer's head and body as separate slices when
        // the stream takes them, instead of copying them into one buffer.
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TLS close_notify is a write too: a peer that reads nothing must
        // not hold the connection open through its shutdown either.
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_that_complete_arm_no_timer() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut w = WriteTimeout::new(a, Duration::from_millis(50));
        for _ in 0..100 {
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            w.flush().await.unwrap();
        }
        assert!(w.timer.is_none(), "no timer was created");
        let mut got = vec![0u8; 100 * 40];
        b.read_exact(&mut got).await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_fails_the_write() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(a, Duration::from_millis(100));
        let result = tokio::time::timeout(Duration::from_secs(20), w.write_all(&[b'x'; 1024]))
            .await
            .expect("the write ends on its own");
        let err = result.expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("read nothing"), "{err}");
    }

    #[tokio::test]
    async fn a_peer_that_reads_slowly_keeps_its_connection() {
        // 256 reads with a pause each: far longer in all than the limit, but
        // every read makes room, so no write waits the limit out.
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(a, Duration::from_millis(1000));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 64];
            while total < 16 * 1024 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let n = b.read(&mut buf).await.unwrap();
                assert!(n > 0, "the writer closed early");
                total += n;
            }
            total
        });
        w.write_all(&[b'x'; 16 * 1024]).await.expect("a reading peer is not cut off");
        w.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), 16 * 1024);
        assert!(w.timer.is_some(), "the writes did stall");
    }
}
