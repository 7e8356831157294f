//! Serving an axum router over accepted connections with hyper: HTTP/1.1 only, each request
//! head due within the header timeout (which also bounds how long a kept-alive connection
//! waits for its next request), the client's address as axum's `ConnectInfo`, and a graceful
//! shutdown that lets requests in flight finish.
//!
//! `axum::serve` does the same but cannot set hyper's header-read timeout. HTTP/2 is not
//! offered: iPXE, browsers over plain HTTP and curl speak HTTP/1.1, and an HTTP/2 (h2c)
//! connection would have no header timeout before its first frame.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tower::ServiceExt as _;

/// Serves `router` on every connection `listener` accepts until `shutdown` completes; then
/// stops accepting, asks every connection to finish its request in flight and close, and
/// returns once all have.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // `stop` is dropped to tell connections to finish; each holds a `closing` until it has.
    let (stop, stopping) = watch::channel(());
    let (all_closed, closing) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.map(Body::new)
                });
        let connection = builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let mut stopping = stopping.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            let mut asked = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "http connection ended");
                        }
                        break;
                    }
                    _ = stopping.changed(), if !asked => {
                        asked = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(closing);
        });
    }
    drop(listener);
    drop(stop);
    drop(closing);
    all_closed.closed().await;
}
