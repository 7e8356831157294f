//! The Talos API client: `machine.MachineService` over gRPC with mutual TLS, as talosctl
//! speaks it (facts: shared/research/talos-facts.md sections 4 and 6).
//!
//! - The client certificate comes from the cluster's OS CA ([`SecretsBundle::talos_client_cert`]:
//!   Ed25519, `O=os:admin`, EKU clientAuth only).
//! - The node's certificate must chain to that OS CA and nothing else, and name the IP address
//!   dialled (apid's certificate carries every node address as an IP SAN). Verification is
//!   rustls-webpki's, with the OS CA as the only trust anchor.
//! - TLS 1.2 or 1.3, ALPN `h2`, port [`TALOS_API_PORT`]; every call dials the node afresh, with a
//!   [`CONNECT_TIMEOUT`] for TCP + TLS and a [`CALL_TIMEOUT`] for the RPC.
//! - Replies are checked for the per-node errors apid embeds in `metadata.error` /
//!   `metadata.status` (one-to-many proxying): those become [`ApiError::Node`].
//!
//! Errors are sorted by what the caller should do: [`ApiError::NotReady`] and
//! [`ApiError::Unreachable`] are worth retrying, the others are not.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::secrets::SecretsBundle;

/// Code generated from `proto/` (bootplane's own definitions of Talos's messages).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod machine {
        tonic::include_proto!("machine");
    }
    pub mod common {
        tonic::include_proto!("common");
    }
    /// Talos's event sink (`talos.events.sink=`), served by `talos::sink`.
    pub mod events {
        tonic::include_proto!("events");
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

use pb::machine::machine_service_client::MachineServiceClient;
use pb::machine::{BootstrapRequest, EtcdMemberListRequest, EtcdRemoveMemberByIdRequest};

/// apid's port on every Talos node.
pub const TALOS_API_PORT: u16 = 50000;
/// Budget for TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Budget for one RPC once connected.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Talos's answer to Bootstrap on a worker (≤ 1.11; 1.12+ answer Unimplemented). Fatal.
const WORKER_BOOTSTRAP_MESSAGE: &str = "bootstrap can only be performed on a control plane node";

/// What went wrong talking to a node, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No Talos API there (yet): connection refused or timed out, or the peer does not speak
    /// TLS the way apid does. Retry later.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The node answered but cannot do it yet (FailedPrecondition, Unavailable,
    /// DeadlineExceeded), or gave no answer: none within the call timeout, or the connection
    /// broke once the call was on its way (the node may have acted on it). Retry later.
    #[error("node not ready: {0}")]
    NotReady(String),
    /// Authentication or authorisation failed: the node's certificate is not from the OS CA,
    /// the node refused our certificate, or the call needs a role we lack. Do not retry.
    #[error("access denied: {0}")]
    Denied(String),
    /// Any other gRPC status (including Bootstrap on a worker). Do not retry.
    #[error("{code:?}: {message}")]
    Rpc { code: Code, message: String },
    /// The call succeeded but the reply carries this node's error in its metadata.
    #[error("node {hostname:?} reported: {error}")]
    Node { hostname: String, error: String },
    /// The client could not be built (bad certificate material).
    #[error("talos api client setup: {0}")]
    Setup(String),
}

impl ApiError {
    /// Whether trying again later can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ApiError::Unreachable(_) | ApiError::NotReady(_))
    }
}

/// What `Version` says about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVersion {
    /// Talos release tag, e.g. `v1.11.6`.
    pub tag: String,
    /// `metadata.hostname` of the reply; apid sets it only when proxying, so a node dialled
    /// directly leaves it empty.
    pub hostname: String,
    /// Platform name (`metal` for network-booted nodes), empty if the node did not say.
    pub platform: String,
    pub arch: String,
}

/// One etcd member as `EtcdMemberList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub id: u64,
    pub hostname: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// One Talos service as `ServiceList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeService {
    pub id: String,
    /// e.g. `Running`, `Preparing`, `Waiting`, `Finished`.
    pub state: String,
    pub healthy: bool,
}

/// How a Bootstrap call ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// The node started etcd in bootstrap mode.
    Bootstrapped,
    /// The node's etcd data directory is not empty (AlreadyExists): it was bootstrapped
    /// before, or joined a cluster. Counts as done.
    AlreadyBootstrapped,
}

/// A Talos API client for one cluster. Cheap to clone; dials each node per call.
#[derive(Clone)]
pub struct TalosApi {
    tls: TlsConnector,
    connect_timeout: Duration,
    call_timeout: Duration,
}

impl std::fmt::Debug for TalosApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TalosApi")
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl TalosApi {
    /// A client for the cluster whose secrets these are, with a fresh `os:admin` certificate
    /// valid from `now`.
    pub fn new(bundle: &SecretsBundle, now: SystemTime) -> Result<TalosApi, ApiError> {
        let (crt, key) = bundle
            .talos_client_cert(now)
            .map_err(|e| ApiError::Setup(format!("client certificate: {e}")))?;
        let key = zeroize::Zeroizing::new(key);
        TalosApi::from_pem(bundle.os_ca().crt_pem(), &crt, &key)
    }

    /// A client from PEM text: the CA(s) the node's certificate must chain to, the client
    /// certificate chain, and its private key (`PRIVATE KEY` or Talos's `ED25519 PRIVATE KEY`,
    /// both PKCS#8; `EC PRIVATE KEY`; `RSA PRIVATE KEY`).
    pub fn from_pem(ca_pem: &str, crt_pem: &str, key_pem: &str) -> Result<TalosApi, ApiError> {
        let setup = |what: &str, e: &dyn std::fmt::Display| ApiError::Setup(format!("{what}: {e}"));
        let mut roots = RootCertStore::empty();
        for ca in pem_certificates(ca_pem).map_err(|e| setup("CA certificate", &e))? {
            roots.add(ca).map_err(|e| setup("CA certificate", &e))?;
        }
        let chain = pem_certificates(crt_pem).map_err(|e| setup("client certificate", &e))?;
        let key = pem_private_key(key_pem).map_err(|e| setup("client key", &e))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| setup("server verifier", &e))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| setup("TLS versions", &e))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| setup("client certificate", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TalosApi {
            tls: TlsConnector::from(Arc::new(config)),
            connect_timeout: CONNECT_TIMEOUT,
            call_timeout: CALL_TIMEOUT,
        })
    }

    /// The same client with other time budgets (tests).
    pub fn with_timeouts(mut self, connect: Duration, call: Duration) -> TalosApi {
        self.connect_timeout = connect;
        self.call_timeout = call;
        self
    }

    /// `Version`: the node's Talos release. Any role may call it.
    pub async fn version(&self, node: SocketAddr) -> Result<NodeVersion, ApiError> {
        let reply = self
            .call(node, "Version", |mut c| async move { c.version(()).await })
            .await?;
        let msg = first(reply.messages, "Version")?;
        check_metadata(msg.metadata.as_ref())?;
        let version = msg.version.unwrap_or_default();
        Ok(NodeVersion {
            tag: version.tag,
            hostname: hostname(msg.metadata.as_ref()),
            platform: msg.platform.map(|p| p.name).unwrap_or_default(),
            arch: version.arch,
        })
    }

    /// `ServiceList`: the node's Talos services (etcd among them on a control plane).
    pub async fn services(&self, node: SocketAddr) -> Result<Vec<NodeService>, ApiError> {
        let reply = self
            .call(node, "ServiceList", |mut c| async move {
                c.service_list(()).await
            })
            .await?;
        let msg = first(reply.messages, "ServiceList")?;
        check_metadata(msg.metadata.as_ref())?;
        Ok(msg
            .services
            .into_iter()
            .map(|s| NodeService {
                id: s.id,
                state: s.state,
                healthy: s.health.is_some_and(|h| h.healthy),
            })
            .collect())
    }

    /// `EtcdMemberList` (cluster-wide, not `query_local`): the etcd members this control
    /// plane knows of. Fails with NotReady on a node whose etcd is not running.
    pub async fn etcd_members(&self, node: SocketAddr) -> Result<Vec<EtcdMember>, ApiError> {
        let reply = self
            .call(node, "EtcdMemberList", |mut c| async move {
                c.etcd_member_list(EtcdMemberListRequest { query_local: false })
                    .await
            })
            .await?;
        let msg = first(reply.messages, "EtcdMemberList")?;
        check_metadata(msg.metadata.as_ref())?;
        Ok(msg
            .members
            .into_iter()
            .map(|m| EtcdMember {
                id: m.id,
                hostname: m.hostname,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect())
    }

    /// `Bootstrap` with an empty request: start etcd as a new cluster on this one node.
    /// AlreadyExists (the node's etcd data directory is not empty) is
    /// [`BootstrapOutcome::AlreadyBootstrapped`]; a worker's refusal is a fatal
    /// [`ApiError::Rpc`]; "not available yet" is [`ApiError::NotReady`].
    pub async fn bootstrap(&self, node: SocketAddr) -> Result<BootstrapOutcome, ApiError> {
        let reply = self
            .call(node, "Bootstrap", |mut c| async move {
                c.bootstrap(BootstrapRequest::default()).await
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(ApiError::Rpc {
                code: Code::AlreadyExists,
                ..
            }) => return Ok(BootstrapOutcome::AlreadyBootstrapped),
            Err(e) => return Err(e),
        };
        let msg = first(reply.messages, "Bootstrap")?;
        if let Some(status) = msg.metadata.as_ref().and_then(|m| m.status.as_ref()) {
            // A proxied reply carries the upstream status here instead of failing the call.
            if Code::from(status.code) == Code::AlreadyExists {
                return Ok(BootstrapOutcome::AlreadyBootstrapped);
            }
        }
        check_metadata(msg.metadata.as_ref())?;
        Ok(BootstrapOutcome::Bootstrapped)
    }

    /// `EtcdRemoveMemberByID`, asked of a healthy control plane: drop a member (e.g. the stale
    /// entry of a wiped control plane) from the etcd cluster. NotFound is an [`ApiError::Rpc`].
    pub async fn etcd_remove_member(
        &self,
        node: SocketAddr,
        member_id: u64,
    ) -> Result<(), ApiError> {
        let reply = self
            .call(node, "EtcdRemoveMemberByID", |mut c| async move {
                c.etcd_remove_member_by_id(EtcdRemoveMemberByIdRequest { member_id })
                    .await
            })
            .await?;
        for msg in &reply.messages {
            check_metadata(msg.metadata.as_ref())?;
        }
        Ok(())
    }

    /// Dials `node`, runs one RPC, and sorts any failure into an [`ApiError`].
    async fn call<T, F, Fut>(&self, node: SocketAddr, method: &str, rpc: F) -> Result<T, ApiError>
    where
        F: FnOnce(MachineServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let (channel, tls_failure) = self.connect(node).await?;
        let client = MachineServiceClient::new(channel);
        let budget = self.call_timeout;
        match tokio::time::timeout(budget, rpc(client)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(classify_status(node, method, &status, &tls_failure)),
            Err(_) => Err(ApiError::NotReady(format!(
                "{method} on {node}: no answer within {budget:?} ({:?} since dialling)",
                started.elapsed()
            ))),
        }
    }

    /// TCP connect and TLS handshake within the connect timeout, then HTTP/2 on top.
    async fn connect(&self, node: SocketAddr) -> Result<(Channel, TlsFailureSlot), ApiError> {
        let limit = self.connect_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let handshake = async {
            let tcp = TcpStream::connect(node)
                .await
                .map_err(|e| ApiError::Unreachable(format!("connect to {node}: {e}")))?;
            // Best effort: latency, not correctness.
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(node.ip().into());
            self.tls
                .connect(name, tcp)
                .await
                .map_err(|e| classify_tls_io(node, &e))
        };
        let tls = tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(|_| {
                ApiError::Unreachable(format!(
                    "connect to {node}: no TLS session within {limit:?}"
                ))
            })??;

        let failure = TlsFailureSlot::default();
        let io = TokioIo::new(Watched {
            inner: tls,
            failure: failure.clone(),
        });
        let connector = OneConnection(Some(io));
        let endpoint = Endpoint::from_shared(format!("http://{node}"))
            .map_err(|e| ApiError::Setup(format!("endpoint for {node}: {e}")))?
            .connect_timeout(limit);
        let channel = tokio::time::timeout_at(deadline, endpoint.connect_with_connector(connector))
            .await
            .map_err(|_| {
                ApiError::Unreachable(format!("connect to {node}: no HTTP/2 within {limit:?}"))
            })?
            .map_err(|e| {
                failure
                    .take()
                    .unwrap_or_else(|| ApiError::Unreachable(format!("HTTP/2 to {node}: {e}")))
            })?;
        Ok((channel, failure))
    }
}

/// Hands tonic the one connection already made; a second dial (reconnect) fails.
struct OneConnection(Option<TokioIo<Watched>>);

impl tower::Service<tonic::codegen::http::Uri> for OneConnection {
    type Response = TokioIo<Watched>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<TokioIo<Watched>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        std::future::ready(
            self.0
                .take()
                .ok_or_else(|| io::Error::other("connection already used")),
        )
    }
}

/// The first message of a reply (Talos replies carry one per node answering).
fn first<M>(messages: Vec<M>, method: &str) -> Result<M, ApiError> {
    messages.into_iter().next().ok_or_else(|| ApiError::Rpc {
        code: Code::Internal,
        message: format!("{method} reply has no messages"),
    })
}

fn hostname(metadata: Option<&pb::common::Metadata>) -> String {
    metadata.map(|m| m.hostname.clone()).unwrap_or_default()
}

/// apid reports a node's failure inside a successful reply (`metadata.error`, and
/// `metadata.status` with a non-OK code), as talosctl's `FilterMessages` checks.
fn check_metadata(metadata: Option<&pb::common::Metadata>) -> Result<(), ApiError> {
    let Some(m) = metadata else { return Ok(()) };
    let status = m.status.as_ref().filter(|s| s.code != 0);
    if m.error.is_empty() && status.is_none() {
        return Ok(());
    }
    let error = match (m.error.is_empty(), status) {
        (false, _) => m.error.clone(),
        (true, Some(s)) => format!("{:?}: {}", Code::from(s.code), s.message),
        (true, None) => String::new(),
    };
    Err(ApiError::Node {
        hostname: m.hostname.clone(),
        error,
    })
}

fn classify_status(
    node: SocketAddr,
    method: &str,
    status: &Status,
    tls_failure: &TlsFailureSlot,
) -> ApiError {
    // A TLS alert after the handshake (TLS 1.3: the node refusing our certificate) shows up
    // as a broken connection; the wrapped stream saw what it was. A refused certificate means
    // the node acted on nothing; any other TLS failure once the call may have left (a record
    // no key decrypts, a reset mid-session) leaves its outcome unknown, as a cut connection
    // does: not "unreachable", which would let the caller send it again at once.
    if let Some(e) = tls_failure.take() {
        return match e {
            ApiError::Denied(_) => e,
            other => ApiError::NotReady(format!(
                "{method} on {node}: the TLS session broke before an answer ({other})"
            )),
        };
    }
    let message = status.message().to_string();
    let what = format!("{method} on {node}: {message}");
    // A status the node never sent: the client made it when the connection broke after the
    // call went out (tonic's "transport error", with the cause as its source). No answer, as
    // with a timeout: the node may have acted on the call.
    if status.code() == Code::Unknown && std::error::Error::source(status).is_some() {
        return ApiError::NotReady(format!(
            "{method} on {node}: the connection broke before an answer ({message})"
        ));
    }
    match status.code() {
        Code::FailedPrecondition if message.contains(WORKER_BOOTSTRAP_MESSAGE) => ApiError::Rpc {
            code: Code::FailedPrecondition,
            message,
        },
        Code::FailedPrecondition | Code::Unavailable | Code::DeadlineExceeded => {
            ApiError::NotReady(what)
        }
        Code::PermissionDenied | Code::Unauthenticated => ApiError::Denied(what),
        code => ApiError::Rpc { code, message },
    }
}

/// Sorts a failed TLS read, write or handshake.
fn classify_tls_io(node: SocketAddr, e: &io::Error) -> ApiError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => classify_tls(node, tls),
        None => ApiError::Unreachable(format!("TLS to {node}: {e}")),
    }
}

fn classify_tls(node: SocketAddr, e: &rustls::Error) -> ApiError {
    match e {
        rustls::Error::InvalidCertificate(_) => {
            ApiError::Denied(format!("certificate of {node} not accepted: {e}"))
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
            // A certificate whose issuer has the OS CA's name but not its key.
            | AlertDescription::DecryptError,
        ) => ApiError::Denied(format!("{node} refused our client certificate: {e}")),
        _ => ApiError::Unreachable(format!("TLS to {node}: {e}")),
    }
}

/// The first TLS-level failure seen on a connection after its handshake, already sorted.
#[derive(Clone, Default)]
struct TlsFailureSlot(Arc<Mutex<Option<ApiError>>>);

impl TlsFailureSlot {
    fn record(&self, e: ApiError) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
    }

    fn take(&self) -> Option<ApiError> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A TLS stream that notes rustls errors (received alerts) before hyper turns them into
/// opaque connection errors.
struct Watched {
    inner: tokio_rustls::client::TlsStream<TcpStream>,
    failure: TlsFailureSlot,
}

impl Watched {
    fn note<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &poll {
            if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                let node = self
                    .inner
                    .get_ref()
                    .0
                    .peer_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                self.failure.record(classify_tls(node, tls));
            }
        }
        poll
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(poll)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Every `CERTIFICATE` block in `text`, in order; at least one.
pub(crate) fn pem_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err("no CERTIFICATE block".to_string());
    }
    Ok(certs)
}

/// A private key by its PEM label. Talos labels its PKCS#8 Ed25519 keys `ED25519 PRIVATE KEY`,
/// which PEM readers do not know, so the body is decoded here and loaded as PKCS#8.
pub(crate) fn pem_private_key(text: &str) -> Result<PrivateKeyDer<'static>, String> {
    let block = pem::parse(text).map_err(|e| format!("not PEM: {e}"))?;
    let der = block.contents().to_vec();
    match block.tag() {
        "PRIVATE KEY" | "ED25519 PRIVATE KEY" => Ok(PrivateKeyDer::Pkcs8(der.into())),
        "EC PRIVATE KEY" => Ok(PrivateKeyDer::Sec1(der.into())),
        "RSA PRIVATE KEY" => Ok(PrivateKeyDer::Pkcs1(der.into())),
        other => Err(format!("unsupported key label {other:?}")),
    }
}
