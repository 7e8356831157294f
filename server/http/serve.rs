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
                    detach(&mut request);
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

/// Copies the request's target and header values out of hyper's read buffer, which they share
/// when parsed. While any of them lives (a handler holds its request for as long as it runs),
/// hyper cannot reuse that buffer: the read it makes during every response (to notice the
/// client going away) takes a fresh 8 KiB one, so each connection would hold two. The copies
/// share one allocation of their own, the size of the request's head.
fn detach<B>(request: &mut axum::http::Request<B>) {
    use axum::http::{HeaderValue, Uri};
    // The target as the request line had it: origin form (`/path?query`, nearly every
    // request), else absolute form, rebuilt whole.
    let (copy, target_len) = {
        let uri = request.uri();
        let absolute;
        let target: &[u8] = match uri.path_and_query() {
            Some(target) if uri.scheme().is_none() && uri.authority().is_none() => {
                target.as_str().as_bytes()
            }
            _ => {
                absolute = uri.to_string();
                absolute.as_bytes()
            }
        };
        let values: usize = request.headers().values().map(|v| v.len()).sum();
        let mut copy = bytes::BytesMut::with_capacity(target.len() + values);
        copy.extend_from_slice(target);
        for value in request.headers().values() {
            copy.extend_from_slice(value.as_bytes());
        }
        (copy.freeze(), target.len())
    };
    if let Ok(uri) = Uri::from_maybe_shared(copy.slice(..target_len)) {
        *request.uri_mut() = uri;
    }
    let mut at = target_len;
    for value in request.headers_mut().values_mut() {
        let end = at + value.len();
        match HeaderValue::from_maybe_shared(copy.slice(at..end)) {
            // The same bytes, or the value stays as it was: `values` and `values_mut` walk
            // the map in one order, but nothing else here rests on that.
            Ok(mut detached) if detached.as_bytes() == value.as_bytes() => {
                detached.set_sensitive(value.is_sensitive());
                *value = detached;
            }
            _ => {}
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Request, Uri};
    use bytes::Bytes;

    /// A request parsed the way hyper parses one: its target and header values are slices of
    /// one shared buffer (the connection's read buffer).
    fn parsed(head: &Bytes) -> Request<()> {
        let text = std::str::from_utf8(head).expect("ascii");
        let at = |s: &str| {
            let start = text.find(s).expect("in head");
            head.slice(start..start + s.len())
        };
        let mut request = Request::new(());
        *request.uri_mut() =
            Uri::from_maybe_shared(at("/machine.ipxe?mac=52:54:00:12:34:56")).expect("origin form");
        let value = |s: &str| HeaderValue::from_maybe_shared(at(s)).expect("value");
        request.headers_mut().insert("host", value("10.0.0.1:8080"));
        let mut cookie = value("bootplane_session=abc");
        cookie.set_sensitive(true);
        request.headers_mut().insert("cookie", cookie);
        request
    }

    const HEAD: &str = "GET /machine.ipxe?mac=52:54:00:12:34:56 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nCookie: bootplane_session=abc\r\n\r\n";

    #[test]
    fn a_detached_request_holds_no_part_of_the_read_buffer() {
        let head = Bytes::from(HEAD.as_bytes().to_vec());
        let mut request = parsed(&head);
        assert!(
            !head.is_unique(),
            "the fixture shares the buffer as hyper's parse does"
        );
        detach(&mut request);
        assert!(
            head.is_unique(),
            "the request still holds a slice of the read buffer"
        );
        assert_eq!(request.uri().path(), "/machine.ipxe");
        assert_eq!(request.uri().query(), Some("mac=52:54:00:12:34:56"));
        assert_eq!(request.headers()["host"], "10.0.0.1:8080");
        let cookie = &request.headers()["cookie"];
        assert_eq!(cookie, "bootplane_session=abc");
        assert!(cookie.is_sensitive());
    }

    #[test]
    fn every_value_of_a_repeated_header_keeps_its_place() {
        let head = Bytes::from(b"a1 b c2 a3 \x80obs".to_vec());
        let value = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(head.slice(range)).expect("value")
        };
        let mut request = Request::new(());
        request.headers_mut().append("accept", value(0..2));
        request.headers_mut().insert("x-b", value(3..4));
        request.headers_mut().insert("x-empty", value(4..4));
        request.headers_mut().append("x-c", value(5..7));
        request.headers_mut().append("accept", value(8..10));
        request.headers_mut().insert("x-obs", value(11..15));
        let before: Vec<(String, Vec<u8>)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        detach(&mut request);
        let after: Vec<(String, Vec<u8>)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(before, after);
        assert!(head.is_unique(), "a value still holds the read buffer");
        let accept: Vec<&[u8]> = request
            .headers()
            .get_all("accept")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(accept, [b"a1".as_slice(), b"a3".as_slice()]);
    }

    #[test]
    fn authority_form_and_asterisk_targets_survive() {
        for target in ["10.0.0.1:443", "*"] {
            let mut request = Request::new(());
            *request.uri_mut() = target.parse().expect("uri");
            detach(&mut request);
            assert_eq!(request.uri().to_string(), target);
        }
    }

    #[test]
    fn an_absolute_form_target_keeps_its_scheme_and_authority() {
        let mut request = Request::new(());
        *request.uri_mut() = "http://10.0.0.1:8080/boot.ipxe?x=1".parse().expect("uri");
        detach(&mut request);
        assert_eq!(request.uri().scheme_str(), Some("http"));
        assert_eq!(
            request.uri().authority().map(|a| a.as_str()),
            Some("10.0.0.1:8080")
        );
        assert_eq!(request.uri().path(), "/boot.ipxe");
        assert_eq!(request.uri().query(), Some("x=1"));
    }
}
