//! Serving an axum router over accepted connections with hyper: HTTP/1.1 only, each request
//! head due within the header timeout (which also bounds how long a kept-alive connection
//! waits for its next request), the client's address as axum's `ConnectInfo`, and a graceful
//! shutdown that lets requests in flight finish. The same loop serves plain HTTP and HTTPS
//! (a TLS handshake, bounded by the header timeout, before the connection is served).
//!
//! `axum::serve` does the same but cannot set hyper's header-read timeout. HTTP/2 is not
//! offered: iPXE, browsers over plain HTTP and curl speak HTTP/1.1, and an HTTP/2 (h2c)
//! connection would have no header timeout before its first frame.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt as _;

/// Marks a request that came over the HTTPS listener (a request extension): session cookies
/// set in answer to it are `Secure`.
#[derive(Clone, Copy, Debug)]
pub struct OverTls;

/// Serves `router` on every connection `listener` accepts until `shutdown` completes; then
/// stops accepting, asks every connection to finish its request in flight and close, and
/// returns once all have.
pub async fn serve<L>(
    listener: L,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
{
    serve_with(
        listener,
        router,
        header_timeout,
        false,
        |io| std::future::ready(Some(io)),
        shutdown,
    )
    .await;
}

/// [`serve`] over TLS: each connection's handshake must complete within the header timeout.
pub async fn serve_tls<L>(
    listener: L,
    router: Router,
    header_timeout: Duration,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_with(
        listener,
        router,
        header_timeout,
        true,
        move |io| {
            let handshake = acceptor.accept(io);
            async move {
                match tokio::time::timeout(header_timeout, handshake).await {
                    Ok(Ok(stream)) => Some(stream),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "tls handshake failed");
                        None
                    }
                    Err(_) => None,
                }
            }
        },
        shutdown,
    )
    .await;
}

async fn serve_with<L, P, F, Io>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    over_tls: bool,
    prepare: P,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
    P: Fn(L::Io) -> F,
    F: Future<Output = Option<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let builder = Arc::new(builder);
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
                    if over_tls {
                        request.extensions_mut().insert(OverTls);
                    }
                    request.map(Body::new)
                });
        let prepared = prepare(io);
        let builder = Arc::clone(&builder);
        let mut stopping = stopping.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            let Some(io) = prepared.await else {
                drop(closing);
                return;
            };
            let connection = builder
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
                .into_owned();
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
