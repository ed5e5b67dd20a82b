//! The accept loop: HTTP/1.1 over hyper with the protections axum's `serve` does not
//! configure, and a bounded graceful shutdown.
//!
//! Time limits on a connection ([`Timeouts`]):
//! - A request's head (request line and headers) must arrive within the header timeout, counted
//!   from the connection's start or from the first byte of each later request, so that slow
//!   clients cannot pile up and hold sockets and memory (slowloris).
//! - A connection idle between requests is kept for the idle timeout, which is longer than the
//!   idle timeout of the load balancers usually in front (60 s): a balancer closes an idle
//!   connection first, and never sends a request on one this server is closing (which its
//!   client would see as a 502 or a reset).
//! - A client that reads nothing of a response for [`WRITE_STALL_TIMEOUT`] is cut off: a
//!   client that stops reading would otherwise hold its connection (and an export's slot) for
//!   ever.
//! - The request head is bounded by [`MAX_HEAD_BYTES`] (hyper answers 431 above it); bodies are
//!   bounded per route and must arrive within the body timeout (a layer in `app.rs`).
//!
//! On shutdown the listener closes, every open connection finishes the request it is serving
//! (keep-alive connections are closed after it), and connections still open after the drain
//! timeout are dropped, so that an orchestrator's grace period is never overrun.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Time allowed for a request's head by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle keep-alive connection is kept by default: above the 60 s idle timeout of
/// common load balancers (AWS ALB, GCP, nginx's upstream keep-alive).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Largest request head (request line and headers); a bigger one is answered 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Time allowed for a request's body by default.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a shutdown waits for open requests by default: below the 10 s grace period
/// orchestrators commonly give before SIGKILL, leaving time to commit the queued writes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// The time limits of connections.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a request's head.
    pub header: Duration,
    /// For an idle keep-alive connection.
    pub idle: Duration,
    /// For open requests at shutdown.
    pub drain: Duration,
}

/// Serve `router` on `listener` until `shutdown` completes, then drain open connections for at
/// most `timeouts.drain`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // HTTP/1.1 only: hyper's header timer covers a fresh connection only when it owns the first
    // read (the HTTP/2-sniffing auto builder reads first and leaves silent connections open).
    // hyper's timer runs from the end of one response to the end of the next head, so it is the
    // idle limit; the tighter limit on a head once it has begun is `Deadlines`'.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.idle.max(timeouts.header))
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let phase = Arc::new(Phase::default());
        let io = Deadlines::new(stream, phase.clone(), timeouts.header);
        let router = router.clone();
        // Handlers read the peer address through axum's `ConnectInfo` extractor.
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            phase.set(Phase::BUSY);
            let (router, phase) = (router.clone(), phase.clone());
            async move {
                let response = router.oneshot(request).await;
                phase.set(Phase::IDLE);
                response
            }
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(timeouts.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain timeout ({:?}) are closed",
            timeouts.drain
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Where a connection is in its request cycle, shared by its IO and its service.
#[derive(Debug)]
struct Phase(AtomicU8);

impl Phase {
    /// Waiting for a request's head, under the header timeout (a fresh connection starts here).
    const HEAD: u8 = 0;
    /// Serving a request (its body, its response).
    const BUSY: u8 = 1;
    /// Answered; waiting for the next request under the idle timeout.
    const IDLE: u8 = 2;

    fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }
}

impl Default for Phase {
    fn default() -> Self {
        Phase(AtomicU8::new(Phase::HEAD))
    }
}

/// A connection's IO that ends the connection when a request's head takes longer than the
/// header timeout (from the connection's start, or from the first byte read after an answer),
/// or when the client takes nothing of a response for [`WRITE_STALL_TIMEOUT`].
struct Deadlines<IO> {
    io: IO,
    phase: Arc<Phase>,
    header_timeout: Duration,
    head: Pin<Box<Sleep>>,
    /// Set while a write waits for the client to read: hyper then stops polling the response
    /// body, so nothing but this would ever end a connection whose client stopped reading.
    stalled: Option<Pin<Box<Sleep>>>,
}

/// How long a response may wait for its client to read anything before the connection is cut.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

impl<IO> Deadlines<IO> {
    fn new(io: IO, phase: Arc<Phase>, header_timeout: Duration) -> Self {
        Deadlines { io, phase, header_timeout, head: Box::pin(tokio::time::sleep(header_timeout)), stalled: None }
    }

    /// Account for a write's outcome: a pending one starts (or keeps) the stall clock, which
    /// turns it into an error once it has run out.
    fn stall_check<T>(&mut self, cx: &mut Context<'_>, written: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let stall = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)));
        if stall.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing of the response within the write stall timeout",
            )));
        }
        Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Deadlines<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // The first bytes of the next request: its head is now on the clock.
                if buf.filled().len() > before && this.phase.0.load(Ordering::Relaxed) == Phase::IDLE {
                    this.phase.set(Phase::HEAD);
                    this.head.as_mut().reset(Instant::now() + this.header_timeout);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.phase.0.load(Ordering::Relaxed) == Phase::HEAD && this.head.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request head not received within the header timeout",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Deadlines<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.stall_check(cx, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.stall_check(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
