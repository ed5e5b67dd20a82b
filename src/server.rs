//! The accept loop: HTTP/1.1 over hyper with the protections axum's `serve` does not
//! configure, and graceful shutdown.
//!
//! - Request headers must arrive within the header timeout ([`HEADER_READ_TIMEOUT`]), and a connection idle between
//!   requests is closed after the same time, so slow or idle clients cannot pile up and hold
//!   sockets and memory (slowloris).
//! - The request head is bounded by [`MAX_HEAD_BYTES`] (hyper answers 431 above it); bodies are
//!   bounded per route and must arrive within the body timeout (a layer in `app.rs`).
//! - On shutdown the listener closes, every open connection finishes the request it is serving
//!   (keep-alive connections are closed after it), and then this returns.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Time allowed for a request's headers (and for an idle keep-alive connection) by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers); a bigger one is answered 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Time allowed for a request's body by default.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Serve `router` on `listener` until `shutdown` completes, then drain open connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // HTTP/1.1 only: hyper's header timer covers a fresh connection only when it owns the first
    // read (the HTTP/2-sniffing auto builder reads first and leaves silent connections open).
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true).max_buf_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let router = router.clone();
        // Handlers read the peer address through axum's `ConnectInfo` extractor.
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
