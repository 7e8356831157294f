//! A Talos node double: a **test tool** that speaks Talos's wire protocol
//! (`machine.MachineService` over gRPC, HTTP/2, mutual TLS) so bootplane's Talos API client
//! and orchestrator can be tested without real Talos nodes. It is not part of the appliance.
//!
//! It makes the checks apid makes (facts: shared/research/talos-facts.md section 4.4):
//! - its server certificate is issued by the cluster's OS CA (Ed25519 like the CA, IP SANs for
//!   the address it listens on, EKU serverAuth only);
//! - it requires a client certificate chaining to the OS CA, whose ExtKeyUsage is exactly
//!   `[clientAuth]` (apid's `verifyExtKeyUsage`; CA certificates in the chain are skipped);
//! - the role is the client certificate's Subject Organization: Bootstrap and
//!   EtcdRemoveMemberByID need `os:admin`; Version and ServiceList allow admin, operator and
//!   reader; EtcdMemberList also `os:etcd:backup`. Otherwise PermissionDenied `not authorized`.
//!
//! Simulated node: role (control plane or worker), hostname, a booting phase, the local etcd
//! state ([`EtcdState`]: empty, member of a cluster, or bootstrapped here) and an etcd member
//! list in an [`EtcdStore`] that several doubles can share (in memory, or a JSON file).
//! Answers use Talos 1.11's codes and messages:
//!
//! | call | condition | answer |
//! |---|---|---|
//! | Bootstrap | booting | FailedPrecondition `bootstrap is not available yet` |
//! | Bootstrap | worker | FailedPrecondition `bootstrap can only be performed on a control plane node` |
//! | Bootstrap | etcd not empty | AlreadyExists `etcd data directory is not empty` |
//! | Bootstrap | otherwise | OK; etcd `bootstrapped`, a new cluster with this node its sole member |
//! | EtcdMemberList, EtcdRemoveMemberByID | worker | Unimplemented `… is only available on control plane nodes` |
//! | EtcdMemberList, EtcdRemoveMemberByID | etcd empty | FailedPrecondition `etcd is not running on this node` |
//! | EtcdRemoveMemberByID | unknown ID | NotFound `etcdserver: member not found` |
//!
//! Every RPC that reaches the gRPC layer is recorded ([`CallRecord`]: method, time, peer,
//! roles, result) and every refused TLS handshake too, so a test can assert "exactly one
//! Bootstrap reached any node". The state is readable and changeable in process
//! ([`TalosDouble`]), as a JSON file rewritten atomically on every change, and over a small
//! HTTP control API ([`control_router`]); see the `bootplane-talos-double` binary.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use rand::RngCore;
use rcgen::{
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use tonic::{Code, Request, Response, Status};
use x509_parser::extensions::ParsedExtension;

use crate::talos::api::pb::common::Metadata;
use crate::talos::api::pb::google::rpc::Status as RpcStatus;
use crate::talos::api::pb::machine as m;
use crate::talos::api::pb::machine::machine_service_server::{
    MachineService, MachineServiceServer,
};
use crate::talos::api::{pem_certificates, pem_private_key};
use crate::talos::secrets::{CertAndKey, SecretsBundle};

/// The Talos release the double claims to be unless told otherwise.
pub const DEFAULT_TALOS_VERSION: &str = "v1.11.6";
/// Calls kept in the log (oldest dropped first).
const MAX_CALLS: usize = 10_000;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd's ports, for the member URLs the double reports.
const ETCD_PEER_PORT: u16 = 2380;
const ETCD_CLIENT_PORT: u16 = 2379;

const ROLE_ADMIN: &str = "os:admin";
const ROLE_OPERATOR: &str = "os:operator";
const ROLE_READER: &str = "os:reader";
const ROLE_ETCD_BACKUP: &str = "os:etcd:backup";

/// Errors of the double (setup, state file, control requests).
#[derive(Debug, thiserror::Error)]
pub enum DoubleError {
    #[error("certificate: {0}")]
    Cert(String),
    #[error("tls setup: {0}")]
    Tls(String),
    #[error("state file {path}: {error}")]
    StateFile { path: PathBuf, error: String },
    /// A control request that does not fit the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error("serving: {0}")]
    Serve(String),
}

/// Control plane or worker (`machine.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Controlplane,
    Worker,
}

/// Whether the node has finished booting (Bootstrap is refused while booting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Booting,
    Ready,
}

/// This node's etcd data directory, as far as Bootstrap is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum EtcdState {
    /// No etcd data: Bootstrap would start a new cluster here.
    Empty,
    /// Running as a member of a cluster this node joined.
    Member { cluster_id: String },
    /// Bootstrapped here (then the cluster's first member).
    Bootstrapped { cluster_id: String },
}

impl EtcdState {
    fn is_empty(&self) -> bool {
        matches!(self, EtcdState::Empty)
    }
}

/// One etcd member in the shared member list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: u64,
    pub hostname: String,
    #[serde(default)]
    pub peer_urls: Vec<String>,
    #[serde(default)]
    pub client_urls: Vec<String>,
    #[serde(default)]
    pub is_learner: bool,
}

/// The etcd cluster the doubles of one test share: its ID (set by the Bootstrap that
/// created it) and its members.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdCluster {
    pub cluster_id: Option<String>,
    pub members: Vec<MemberRecord>,
}

/// Where the shared etcd cluster lives: in memory (doubles in one process clone the same
/// store) or in a JSON file ([`EtcdCluster`]) that doubles in several processes name.
/// File updates are read-modify-write with an atomic rename; changes made through two
/// processes at the same instant can race (tests do not do that).
#[derive(Clone, Debug)]
pub enum EtcdStore {
    Memory(Arc<Mutex<EtcdCluster>>),
    File(PathBuf),
}

impl Default for EtcdStore {
    fn default() -> Self {
        EtcdStore::memory()
    }
}

impl EtcdStore {
    /// A fresh in-memory store; clone it into every double that should share it.
    pub fn memory() -> EtcdStore {
        EtcdStore::Memory(Arc::new(Mutex::new(EtcdCluster::default())))
    }

    /// The cluster as stored now (a missing file is an empty cluster).
    pub fn load(&self) -> Result<EtcdCluster, DoubleError> {
        match self {
            EtcdStore::Memory(cell) => Ok(lock(cell).clone()),
            EtcdStore::File(path) => match std::fs::read(path) {
                Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                    Ok(EtcdCluster::default())
                }
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| state_error(path, e)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(EtcdCluster::default()),
                Err(e) => Err(state_error(path, e)),
            },
        }
    }

    /// Applies `change` to the stored cluster and stores the result, unless it fails.
    pub fn update<R>(
        &self,
        change: impl FnOnce(&mut EtcdCluster) -> Result<R, DoubleError>,
    ) -> Result<R, DoubleError> {
        match self {
            EtcdStore::Memory(cell) => {
                let mut cluster = lock(cell);
                let mut copy = cluster.clone();
                let out = change(&mut copy)?;
                *cluster = copy;
                Ok(out)
            }
            EtcdStore::File(path) => {
                let mut cluster = self.load()?;
                let out = change(&mut cluster)?;
                write_json_atomically(path, &cluster)?;
                Ok(out)
            }
        }
    }
}

/// One RPC as it reached the double.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Method name without the service, e.g. `Bootstrap`.
    pub method: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The client's address.
    pub peer: String,
    /// Subject Organization values of the client certificate.
    pub roles: Vec<String>,
    /// gRPC code name (`Ok`, `AlreadyExists`, `PermissionDenied`, …), or `EmbeddedError`
    /// when the reply carried an injected per-node error.
    pub code: String,
    pub message: String,
}

/// A TLS handshake the double refused (or that failed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRejection {
    pub at_ms: i64,
    pub peer: String,
    pub error: String,
}

/// A per-node error to embed in replies' metadata (as apid does in one-to-many mode),
/// instead of answering normally.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddedError {
    /// Only this method (e.g. `Version`); every method if absent.
    #[serde(default)]
    pub method: Option<String>,
    /// `metadata.hostname`.
    #[serde(default)]
    pub hostname: String,
    /// `metadata.error`.
    #[serde(default)]
    pub error: String,
    /// `metadata.status.code` (0: no status).
    #[serde(default)]
    pub code: i32,
    /// `metadata.status.message`.
    #[serde(default)]
    pub message: String,
}

/// Everything about a double, as written to its state file and returned by `GET /state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoubleSnapshot {
    pub hostname: String,
    pub role: NodeRole,
    pub listen: String,
    pub talos_version: String,
    pub phase: Phase,
    pub etcd: EtcdState,
    /// The shared etcd cluster as this double sees it.
    pub cluster: EtcdCluster,
    pub embedded_error: Option<EmbeddedError>,
    pub calls: Vec<CallRecord>,
    pub tls_rejections: Vec<TlsRejection>,
}

/// How a double is set up.
#[derive(Clone, Debug)]
pub struct DoubleConfig {
    pub hostname: String,
    pub role: NodeRole,
    /// The address it serves on (its IP goes in the server certificate; an unspecified
    /// address puts every local address there).
    pub listen: SocketAddr,
    pub talos_version: String,
    /// Booting for this long after start-up (Bootstrap answers "not available yet").
    pub ready_after: Option<Duration>,
    /// Rewritten (atomically) with a [`DoubleSnapshot`] on every change.
    pub state_file: Option<PathBuf>,
    pub etcd: EtcdStore,
    /// Join the shared etcd cluster by itself once one exists (as a control plane's etcd
    /// does after another node was bootstrapped), checked whenever a call arrives. Off by
    /// default: then tests join nodes explicitly.
    pub auto_join: bool,
}

impl DoubleConfig {
    /// A ready control plane with empty etcd, a private etcd store and no state file.
    pub fn new(hostname: &str, role: NodeRole, listen: SocketAddr) -> DoubleConfig {
        DoubleConfig {
            hostname: hostname.to_string(),
            role,
            listen,
            talos_version: DEFAULT_TALOS_VERSION.to_string(),
            ready_after: None,
            state_file: None,
            etcd: EtcdStore::memory(),
            auto_join: false,
        }
    }
}

/// How a control request changes this node's etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum EtcdChange {
    /// Wipe: the data directory is empty again; the shared member list keeps this node's
    /// (now stale) member, as a real wipe does.
    Empty,
    /// Join the shared cluster: adds this node as a new member. Refused while a member with
    /// this node's peer URL is still listed (remove the stale member first) or when no
    /// cluster exists.
    Member,
    /// As if Bootstrap had succeeded here (without recording a call).
    Bootstrapped,
}

/// A control request for the booting phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseChange {
    pub phase: Phase,
    /// With `booting`: become ready after this many seconds (else stay booting).
    #[serde(default)]
    pub ready_after_secs: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
enum Booting {
    No,
    Forever,
    Until(Instant),
}

#[derive(Debug)]
struct NodeState {
    booting: Booting,
    etcd: EtcdState,
    embedded_error: Option<EmbeddedError>,
    calls: Vec<CallRecord>,
    tls_rejections: Vec<TlsRejection>,
}

#[derive(Debug)]
struct Node {
    config: DoubleConfig,
    state: Mutex<NodeState>,
}

/// A Talos node double: the handle tests keep to read and change its state.
/// Cheap to clone; every clone is the same node.
#[derive(Clone, Debug)]
pub struct TalosDouble {
    node: Arc<Node>,
    tls: Arc<rustls::ServerConfig>,
}

impl TalosDouble {
    /// A double for the cluster whose secrets these are, with a server certificate issued
    /// now by its OS CA.
    pub fn new(bundle: &SecretsBundle, config: DoubleConfig) -> Result<TalosDouble, DoubleError> {
        let tls = server_tls_config(bundle.os_ca(), &config)?;
        let booting = match config.ready_after {
            Some(d) => Booting::Until(Instant::now() + d),
            None => Booting::No,
        };
        let double = TalosDouble {
            node: Arc::new(Node {
                config,
                state: Mutex::new(NodeState {
                    booting,
                    etcd: EtcdState::Empty,
                    embedded_error: None,
                    calls: Vec::new(),
                    tls_rejections: Vec::new(),
                }),
            }),
            tls: Arc::new(tls),
        };
        double.node.persist(&double.node.lock());
        Ok(double)
    }

    /// The rustls server configuration (OS CA server certificate, Talos's client checks).
    pub fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.tls.clone()
    }

    /// Serves `machine.MachineService` on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DoubleError> {
        let (tx, mut rx) = mpsc::channel::<io::Result<PeerConn>>(64);
        let accept = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(self.tls.clone()),
            tx,
            self.node.clone(),
        ));
        // The state file should show the end of the booting phase without waiting for a call.
        let ready = self.node.config.ready_after.map(|after| {
            let node = self.node.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                node.persist(&node.lock());
            })
        });
        let incoming = async_stream_from(&mut rx);
        let result = tonic::transport::Server::builder()
            .add_service(MachineServiceServer::new(DoubleService {
                node: self.node.clone(),
            }))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| DoubleError::Serve(e.to_string()));
        accept.abort();
        if let Some(task) = ready {
            task.abort();
        }
        result
    }

    /// Everything about the double now.
    pub fn snapshot(&self) -> DoubleSnapshot {
        self.node.snapshot(&self.node.lock())
    }

    /// Every RPC received so far, oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.node.lock().calls.clone()
    }

    /// The calls of one method (e.g. `Bootstrap`).
    pub fn calls_of(&self, method: &str) -> Vec<CallRecord> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Forgets the recorded calls and TLS rejections.
    pub fn clear_calls(&self) {
        let mut st = self.node.lock();
        st.calls.clear();
        st.tls_rejections.clear();
        self.node.persist(&st);
    }

    /// The shared etcd store this double uses.
    pub fn etcd_store(&self) -> EtcdStore {
        self.node.config.etcd.clone()
    }

    /// Changes this node's etcd (wipe, join, bootstrapped).
    pub fn set_etcd(&self, change: EtcdChange) -> Result<(), DoubleError> {
        let mut st = self.node.lock();
        match change {
            EtcdChange::Empty => st.etcd = EtcdState::Empty,
            EtcdChange::Member => {
                let cluster_id = self.node.join()?;
                st.etcd = EtcdState::Member { cluster_id };
            }
            EtcdChange::Bootstrapped => {
                let cluster_id = self.node.new_cluster()?;
                st.etcd = EtcdState::Bootstrapped { cluster_id };
            }
        }
        self.node.persist(&st);
        Ok(())
    }

    /// Replaces the shared member list.
    pub fn set_members(&self, members: Vec<MemberRecord>) -> Result<(), DoubleError> {
        let st = self.node.lock();
        self.node.config.etcd.update(|c| {
            c.members = members;
            Ok(())
        })?;
        self.node.persist(&st);
        Ok(())
    }

    /// Starts or ends the booting phase.
    pub fn set_phase(&self, change: &PhaseChange) {
        let mut st = self.node.lock();
        st.booting = match (change.phase, change.ready_after_secs) {
            (Phase::Ready, _) => Booting::No,
            (Phase::Booting, None) => Booting::Forever,
            (Phase::Booting, Some(secs)) => match Duration::try_from_secs_f64(secs) {
                Ok(d) => Booting::Until(Instant::now() + d),
                Err(_) => Booting::Forever,
            },
        };
        self.node.persist(&st);
    }

    /// Embeds (or, with `None`, stops embedding) a per-node error in replies.
    pub fn set_embedded_error(&self, error: Option<EmbeddedError>) {
        let mut st = self.node.lock();
        st.embedded_error = error;
        self.node.persist(&st);
    }
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, NodeState> {
        lock(&self.state)
    }

    fn phase(&self, st: &NodeState) -> Phase {
        match st.booting {
            Booting::No => Phase::Ready,
            Booting::Forever => Phase::Booting,
            Booting::Until(t) if Instant::now() < t => Phase::Booting,
            Booting::Until(_) => Phase::Ready,
        }
    }

    fn snapshot(&self, st: &NodeState) -> DoubleSnapshot {
        let c = &self.config;
        DoubleSnapshot {
            hostname: c.hostname.clone(),
            role: c.role,
            listen: c.listen.to_string(),
            talos_version: c.talos_version.clone(),
            phase: self.phase(st),
            etcd: st.etcd.clone(),
            cluster: c.etcd.load().unwrap_or_default(),
            embedded_error: st.embedded_error.clone(),
            calls: st.calls.clone(),
            tls_rejections: st.tls_rejections.clone(),
        }
    }

    /// Rewrites the state file, if any. A failure is logged: the double keeps answering.
    fn persist(&self, st: &NodeState) {
        if let Some(path) = &self.config.state_file {
            if let Err(e) = write_json_atomically(path, &self.snapshot(st)) {
                tracing::warn!(error = %e, "talos double: state file not written");
            }
        }
    }

    fn own_member(&self) -> MemberRecord {
        let ip = self.config.listen.ip();
        MemberRecord {
            id: rand::rngs::OsRng.next_u64(),
            hostname: self.config.hostname.clone(),
            peer_urls: vec![format!("https://{}", SocketAddr::new(ip, ETCD_PEER_PORT))],
            client_urls: vec![format!("https://{}", SocketAddr::new(ip, ETCD_CLIENT_PORT))],
            is_learner: false,
        }
    }

    /// A new etcd cluster with this node its sole member; returns its ID.
    fn new_cluster(&self) -> Result<String, DoubleError> {
        let cluster_id = hex::encode(rand::rngs::OsRng.next_u64().to_be_bytes());
        let member = self.own_member();
        let id = cluster_id.clone();
        self.config.etcd.update(move |c| {
            c.cluster_id = Some(id);
            c.members = vec![member];
            Ok(())
        })?;
        Ok(cluster_id)
    }

    /// Adds this node to the shared cluster as a new member; returns the cluster's ID.
    fn join(&self) -> Result<String, DoubleError> {
        let member = self.own_member();
        self.config.etcd.update(|c| {
            let Some(cluster_id) = c.cluster_id.clone() else {
                return Err(DoubleError::Conflict(
                    "no etcd cluster to join (bootstrap one first)".to_string(),
                ));
            };
            if let Some(stale) = c.members.iter().find(|m| m.peer_urls == member.peer_urls) {
                return Err(DoubleError::Conflict(format!(
                    "etcd member {:x} ({}) already has peer URL {} (remove the stale member first)",
                    stale.id,
                    stale.hostname,
                    member.peer_urls.join(",")
                )));
            }
            c.members.push(member);
            Ok(cluster_id)
        })
    }

    /// With auto-join: a ready control plane with empty etcd joins an existing cluster.
    fn maybe_auto_join(&self, st: &mut NodeState) {
        if !self.config.auto_join
            || self.config.role != NodeRole::Controlplane
            || !st.etcd.is_empty()
            || self.phase(st) != Phase::Ready
        {
            return;
        }
        if let Ok(cluster_id) = self.join() {
            st.etcd = EtcdState::Member { cluster_id };
        }
    }

    /// Runs one RPC: authorisation, then an injected per-node error or the handler; records
    /// the call and rewrites the state file.
    fn handle<T>(
        &self,
        method: &str,
        peer: Option<&PeerIdentity>,
        allowed: &[&str],
        embedded: impl FnOnce(Metadata) -> T,
        handler: impl FnOnce(&Node, &mut NodeState) -> Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let mut st = self.lock();
        self.maybe_auto_join(&mut st);
        let roles = peer.map(|p| p.roles.clone()).unwrap_or_default();
        let injected = st
            .embedded_error
            .clone()
            .filter(|e| e.method.as_deref().is_none_or(|m| m == method));
        let result = if !roles.iter().any(|r| allowed.contains(&r.as_str())) {
            Err(Status::permission_denied("not authorized"))
        } else if let Some(e) = &injected {
            Ok(embedded(Metadata {
                hostname: e.hostname.clone(),
                error: e.error.clone(),
                status: (e.code != 0).then(|| RpcStatus {
                    code: e.code,
                    message: e.message.clone(),
                }),
            }))
        } else {
            handler(self, &mut st)
        };
        let (code, message) = match &result {
            Ok(_) if injected.is_some() => ("EmbeddedError".to_string(), String::new()),
            Ok(_) => (format!("{:?}", Code::Ok), String::new()),
            Err(s) => (format!("{:?}", s.code()), s.message().to_string()),
        };
        if st.calls.len() >= MAX_CALLS {
            st.calls.remove(0);
        }
        st.calls.push(CallRecord {
            method: method.to_string(),
            at_ms: unix_ms(),
            peer: peer.map(|p| p.addr.to_string()).unwrap_or_default(),
            roles,
            code,
            message,
        });
        self.persist(&st);
        result.map(Response::new)
    }

    fn check_controlplane(&self, api: &str) -> Result<(), Status> {
        match self.config.role {
            NodeRole::Controlplane => Ok(()),
            NodeRole::Worker => Err(Status::unimplemented(format!(
                "{api} is only available on control plane nodes"
            ))),
        }
    }

    fn check_etcd_running(&self, st: &NodeState) -> Result<(), Status> {
        if st.etcd.is_empty() || self.phase(st) == Phase::Booting {
            return Err(Status::failed_precondition(
                "etcd is not running on this node",
            ));
        }
        Ok(())
    }

    fn cluster(&self) -> Result<EtcdCluster, Status> {
        self.config
            .etcd
            .load()
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Roles per method, as machined's authorisation rules for Talos 1.11.
fn allowed_roles(method: &str) -> &'static [&'static str] {
    match method {
        "Bootstrap" | "EtcdRemoveMemberByID" => &[ROLE_ADMIN],
        "EtcdMemberList" => &[ROLE_ADMIN, ROLE_OPERATOR, ROLE_READER, ROLE_ETCD_BACKUP],
        _ => &[ROLE_ADMIN, ROLE_OPERATOR, ROLE_READER],
    }
}

struct DoubleService {
    node: Arc<Node>,
}

fn peer<T>(req: &Request<T>) -> Option<&PeerIdentity> {
    req.extensions().get::<PeerIdentity>()
}

#[tonic::async_trait]
impl MachineService for DoubleService {
    async fn bootstrap(
        &self,
        req: Request<m::BootstrapRequest>,
    ) -> Result<Response<m::BootstrapResponse>, Status> {
        let method = "Bootstrap";
        self.node.handle(
            method,
            peer(&req),
            allowed_roles(method),
            |metadata| m::BootstrapResponse {
                messages: vec![m::Bootstrap {
                    metadata: Some(metadata),
                }],
            },
            |node, st| {
                if node.phase(st) == Phase::Booting {
                    return Err(Status::failed_precondition(
                        "bootstrap is not available yet",
                    ));
                }
                if node.config.role != NodeRole::Controlplane {
                    return Err(Status::failed_precondition(
                        "bootstrap can only be performed on a control plane node",
                    ));
                }
                if !st.etcd.is_empty() {
                    return Err(Status::already_exists("etcd data directory is not empty"));
                }
                let cluster_id = node
                    .new_cluster()
                    .map_err(|e| Status::unknown(format!("error starting etcd: {e}")))?;
                st.etcd = EtcdState::Bootstrapped { cluster_id };
                Ok(m::BootstrapResponse {
                    messages: vec![m::Bootstrap { metadata: None }],
                })
            },
        )
    }

    async fn etcd_member_list(
        &self,
        req: Request<m::EtcdMemberListRequest>,
    ) -> Result<Response<m::EtcdMemberListResponse>, Status> {
        let method = "EtcdMemberList";
        self.node.handle(
            method,
            peer(&req),
            allowed_roles(method),
            |metadata| m::EtcdMemberListResponse {
                messages: vec![m::EtcdMembers {
                    metadata: Some(metadata),
                    ..Default::default()
                }],
            },
            |node, st| {
                node.check_controlplane("member list")?;
                node.check_etcd_running(st)?;
                let cluster = node.cluster()?;
                Ok(m::EtcdMemberListResponse {
                    messages: vec![m::EtcdMembers {
                        metadata: None,
                        legacy_members: cluster
                            .members
                            .iter()
                            .map(|m| m.hostname.clone())
                            .collect(),
                        members: cluster
                            .members
                            .into_iter()
                            .map(|r| m::EtcdMember {
                                id: r.id,
                                hostname: r.hostname,
                                peer_urls: r.peer_urls,
                                client_urls: r.client_urls,
                                is_learner: r.is_learner,
                            })
                            .collect(),
                    }],
                })
            },
        )
    }

    async fn etcd_remove_member_by_id(
        &self,
        req: Request<m::EtcdRemoveMemberByIdRequest>,
    ) -> Result<Response<m::EtcdRemoveMemberByIdResponse>, Status> {
        let method = "EtcdRemoveMemberByID";
        let member_id = req.get_ref().member_id;
        self.node.handle(
            method,
            peer(&req),
            allowed_roles(method),
            |metadata| m::EtcdRemoveMemberByIdResponse {
                messages: vec![m::EtcdRemoveMemberById {
                    metadata: Some(metadata),
                }],
            },
            |node, st| {
                node.check_controlplane("etcd remove member")?;
                node.check_etcd_running(st)?;
                node.config
                    .etcd
                    .update(|c| {
                        let before = c.members.len();
                        c.members.retain(|m| m.id != member_id);
                        if c.members.len() == before {
                            return Err(DoubleError::Conflict(String::new()));
                        }
                        Ok(())
                    })
                    .map_err(|e| match e {
                        DoubleError::Conflict(_) => {
                            Status::not_found("etcdserver: member not found")
                        }
                        e => Status::internal(format!("failed to remove member: {e}")),
                    })?;
                Ok(m::EtcdRemoveMemberByIdResponse {
                    messages: vec![m::EtcdRemoveMemberById { metadata: None }],
                })
            },
        )
    }

    async fn service_list(
        &self,
        req: Request<()>,
    ) -> Result<Response<m::ServiceListResponse>, Status> {
        let method = "ServiceList";
        self.node.handle(
            method,
            peer(&req),
            allowed_roles(method),
            |metadata| m::ServiceListResponse {
                messages: vec![m::ServiceList {
                    metadata: Some(metadata),
                    services: Vec::new(),
                }],
            },
            |node, st| {
                let service = |id: &str, state: &str, healthy: bool| m::ServiceInfo {
                    id: id.to_string(),
                    state: state.to_string(),
                    health: Some(m::ServiceHealth {
                        unknown: !healthy,
                        healthy,
                        last_message: String::new(),
                    }),
                };
                let mut services = vec![service("apid", "Running", true)];
                if node.config.role == NodeRole::Controlplane {
                    services.push(match (node.phase(st), st.etcd.is_empty()) {
                        (Phase::Ready, false) => service("etcd", "Running", true),
                        _ => service("etcd", "Preparing", false),
                    });
                }
                services.push(service("machined", "Running", true));
                Ok(m::ServiceListResponse {
                    messages: vec![m::ServiceList {
                        metadata: None,
                        services,
                    }],
                })
            },
        )
    }

    async fn version(&self, req: Request<()>) -> Result<Response<m::VersionResponse>, Status> {
        let method = "Version";
        self.node.handle(
            method,
            peer(&req),
            allowed_roles(method),
            |metadata| m::VersionResponse {
                messages: vec![m::Version {
                    metadata: Some(metadata),
                    ..Default::default()
                }],
            },
            |node, _| {
                Ok(m::VersionResponse {
                    messages: vec![m::Version {
                        // apid adds metadata only when it proxies; a local answer has none.
                        metadata: None,
                        version: Some(m::VersionInfo {
                            tag: node.config.talos_version.clone(),
                            sha: "bootplane-talos-double".to_string(),
                            built: String::new(),
                            go_version: String::new(),
                            os: "linux".to_string(),
                            arch: "amd64".to_string(),
                        }),
                        platform: Some(m::PlatformInfo {
                            name: "metal".to_string(),
                            mode: "metal".to_string(),
                        }),
                        features: Some(m::FeaturesInfo { rbac: true }),
                    }],
                })
            },
        )
    }
}

// ---- TLS ----------------------------------------------------------------------------------

/// What the double knows about a client from its certificate.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    pub addr: SocketAddr,
    /// Subject Organization values (trimmed, empty ones dropped), i.e. Talos roles.
    pub roles: Vec<String>,
}

/// An accepted, verified client connection.
struct PeerConn {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    identity: PeerIdentity,
}

impl Connected for PeerConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

fn async_stream_from(
    rx: &mut mpsc::Receiver<io::Result<PeerConn>>,
) -> impl futures::Stream<Item = io::Result<PeerConn>> + '_ {
    futures::stream::unfold(rx, |rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<PeerConn>>,
    node: Arc<Node>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "talos double: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return reject(&node, addr, e.to_string()),
                Err(_) => return reject(&node, addr, "handshake timed out".to_string()),
            };
            let roles = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| subject_organizations(leaf))
                .unwrap_or_default();
            let identity = PeerIdentity { addr, roles };
            let _ = tx.send(Ok(PeerConn { tls, identity })).await;
        });
    }
}

fn reject(node: &Node, addr: SocketAddr, error: String) {
    tracing::debug!(peer = %addr, %error, "talos double: TLS handshake refused");
    let mut st = node.lock();
    if st.tls_rejections.len() >= MAX_CALLS {
        st.tls_rejections.remove(0);
    }
    st.tls_rejections.push(TlsRejection {
        at_ms: unix_ms(),
        peer: addr.to_string(),
        error,
    });
    node.persist(&st);
}

fn subject_organizations(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    cert.subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty())
        .collect()
}

fn server_tls_config(
    os_ca: &CertAndKey,
    config: &DoubleConfig,
) -> Result<rustls::ServerConfig, DoubleError> {
    let tls = |e: &dyn std::fmt::Display| DoubleError::Tls(e.to_string());
    let ip_sans = if config.listen.ip().is_unspecified() {
        let mut ips: BTreeSet<IpAddr> = if_addrs::get_if_addrs()
            .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
            .unwrap_or_default();
        ips.insert(IpAddr::from([127, 0, 0, 1]));
        ips.into_iter().collect()
    } else {
        vec![config.listen.ip()]
    };
    let now = SystemTime::now();
    let (crt, key) = issue_cert(
        os_ca,
        &LeafSpec {
            common_name: Some(config.hostname.clone()),
            organizations: Vec::new(),
            ip_sans,
            dns_sans: vec![config.hostname.clone()],
            extended_key_usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(24 * 3600),
        },
    )?;
    let chain = pem_certificates(&crt).map_err(|e| tls(&e))?;
    let key = pem_private_key(&key).map_err(|e| tls(&e))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in pem_certificates(os_ca.crt_pem()).map_err(|e| tls(&e))? {
        roots.add(ca).map_err(|e| tls(&e))?;
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(Arc::new(TalosClientVerifier { webpki }))
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// apid's client check: RequireAndVerifyClientCert against the OS CA, then every non-CA
/// certificate of the chain must have ExtKeyUsage exactly `[clientAuth]`.
#[derive(Debug)]
struct TalosClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for TalosClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        for cert in std::iter::once(end_entity).chain(intermediates) {
            if !eku_is_exactly_client_auth(cert) {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Go's `slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})`
/// for a non-CA certificate (true for a CA). Go's `ExtKeyUsage` holds only the usages Go
/// knows; OIDs it does not know go elsewhere and do not count.
fn eku_is_exactly_client_auth(der: &CertificateDer<'_>) -> bool {
    const GO_KNOWN_OTHER_EKUS: [&str; 7] = [
        "1.3.6.1.5.5.7.3.5",      // IPSECEndSystem
        "1.3.6.1.5.5.7.3.6",      // IPSECTunnel
        "1.3.6.1.5.5.7.3.7",      // IPSECUser
        "1.3.6.1.4.1.311.10.3.3", // MicrosoftServerGatedCrypto
        "2.16.840.1.113730.4.1",  // NetscapeServerGatedCrypto
        "1.3.6.1.4.1.311.2.1.22", // MicrosoftCommercialCodeSigning
        "1.3.6.1.4.1.311.61.1.1", // MicrosoftKernelCodeSigning
    ];
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    if cert.is_ca() {
        return true;
    }
    let eku = cert
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) => Some(eku),
            _ => None,
        });
    let Some(eku) = eku else { return false };
    eku.client_auth
        && !eku.any
        && !eku.server_auth
        && !eku.code_signing
        && !eku.email_protection
        && !eku.time_stamping
        && !eku.ocsp_signing
        && !eku
            .other
            .iter()
            .any(|oid| GO_KNOWN_OTHER_EKUS.contains(&oid.to_id_string().as_str()))
}

/// A certificate for [`issue_cert`] to make.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub common_name: Option<String>,
    /// Subject O values (Talos roles for client certificates).
    pub organizations: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub dns_sans: Vec<String>,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Issues a leaf certificate from `ca` (KeyUsage digitalSignature, the key type of the CA:
/// Ed25519 for an OS CA); returns (certificate PEM, key PEM). The key is PKCS#8, labelled
/// `ED25519 PRIVATE KEY` for Ed25519 as Talos does.
pub fn issue_cert(ca: &CertAndKey, spec: &LeafSpec) -> Result<(String, String), DoubleError> {
    let cert_err = |e: &dyn std::fmt::Display| DoubleError::Cert(e.to_string());
    let ca_der = pem_certificates(ca.crt_pem())
        .map_err(|e| cert_err(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| DoubleError::Cert("no CA certificate".to_string()))?;
    let ca_key = match pem_private_key(ca.key_pem()).map_err(|e| cert_err(&e))? {
        rustls::pki_types::PrivateKeyDer::Pkcs8(der) => {
            KeyPair::try_from(der.secret_pkcs8_der()).map_err(|e| cert_err(&e))?
        }
        _ => return Err(DoubleError::Cert("CA key is not PKCS#8".to_string())),
    };
    let ed25519 = ca_key.algorithm() == &PKCS_ED25519;
    let key = KeyPair::generate_for(if ed25519 {
        &PKCS_ED25519
    } else {
        &PKCS_ECDSA_P256_SHA256
    })
    .map_err(|e| cert_err(&e))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| cert_err(&e))?;

    let mut params = rcgen::CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in &spec.organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    if let Some(cn) = &spec.common_name {
        dn.push(DnType::CommonName, cn.as_str());
    }
    params.distinguished_name = dn;
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = spec.not_before.into();
    params.not_after = spec.not_after.into();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = spec.extended_key_usages.clone();
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = spec
        .ip_sans
        .iter()
        .map(|ip| SanType::IpAddress(*ip))
        .collect();
    for name in &spec.dns_sans {
        if let Ok(name) = name.as_str().try_into() {
            params.subject_alt_names.push(SanType::DnsName(name));
        }
    }
    let cert = params.signed_by(&key, &issuer).map_err(|e| cert_err(&e))?;
    let label = if ed25519 {
        "ED25519 PRIVATE KEY"
    } else {
        "PRIVATE KEY"
    };
    let key_pem = pem::encode(&pem::Pem::new(label, key.serialize_der()));
    Ok((cert.pem(), key_pem))
}

// ---- control API --------------------------------------------------------------------------

/// The HTTP control API of a double (JSON):
///
/// - `GET /state` → [`DoubleSnapshot`] (same as the state file)
/// - `POST /etcd` with [`EtcdChange`]: `{"state":"empty"}` (wipe), `{"state":"member"}`
///   (join the shared cluster), `{"state":"bootstrapped"}`
/// - `PUT /members` with a list of [`MemberRecord`]: replaces the shared member list
/// - `POST /phase` with [`PhaseChange`]: `{"phase":"booting"}`,
///   `{"phase":"booting","ready_after_secs":2}`, `{"phase":"ready"}`
/// - `PUT /embedded-error` with [`EmbeddedError`]; `DELETE /embedded-error`
/// - `DELETE /calls`: forget recorded calls and TLS rejections
///
/// Changes answer `204`; a change that does not fit answers `409` with `{"error": "..."}`.
pub fn control_router(double: TalosDouble) -> Router {
    Router::new()
        .route("/state", get(control_state_get))
        .route("/etcd", post(control_etcd_post))
        .route("/members", put(control_members_put))
        .route("/phase", post(control_phase_post))
        .route(
            "/embedded-error",
            put(control_embedded_error_put).delete(control_embedded_error_delete),
        )
        .route("/calls", delete(control_calls_delete))
        .with_state(double)
}

type ControlResult = Result<StatusCode, (StatusCode, Json<serde_json::Value>)>;

fn control_error(e: DoubleError) -> (StatusCode, Json<serde_json::Value>) {
    let status = match e {
        DoubleError::Conflict(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() })))
}

async fn control_state_get(State(d): State<TalosDouble>) -> Json<DoubleSnapshot> {
    Json(d.snapshot())
}

async fn control_etcd_post(
    State(d): State<TalosDouble>,
    Json(change): Json<EtcdChange>,
) -> ControlResult {
    d.set_etcd(change).map_err(control_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn control_members_put(
    State(d): State<TalosDouble>,
    Json(members): Json<Vec<MemberRecord>>,
) -> ControlResult {
    d.set_members(members).map_err(control_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn control_phase_post(
    State(d): State<TalosDouble>,
    Json(change): Json<PhaseChange>,
) -> StatusCode {
    d.set_phase(&change);
    StatusCode::NO_CONTENT
}

async fn control_embedded_error_put(
    State(d): State<TalosDouble>,
    Json(error): Json<EmbeddedError>,
) -> StatusCode {
    d.set_embedded_error(Some(error));
    StatusCode::NO_CONTENT
}

async fn control_embedded_error_delete(State(d): State<TalosDouble>) -> StatusCode {
    d.set_embedded_error(None);
    StatusCode::NO_CONTENT
}

async fn control_calls_delete(State(d): State<TalosDouble>) -> StatusCode {
    d.clear_calls();
    StatusCode::NO_CONTENT
}

// ---- helpers ------------------------------------------------------------------------------

/// A poisoned lock still holds usable state for a test tool; take it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn state_error(path: &Path, e: impl std::fmt::Display) -> DoubleError {
    DoubleError::StateFile {
        path: path.to_path_buf(),
        error: e.to_string(),
    }
}

/// Writes `value` as pretty JSON to a temporary file beside `path`, then renames it over
/// `path`, so readers see the old or the new content, never a torn write.
fn write_json_atomically(path: &Path, value: &impl Serialize) -> Result<(), DoubleError> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| state_error(path, e))?;
    text.push(b'\n');
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", rand::rngs::OsRng.next_u32()));
    std::fs::write(&tmp, &text).map_err(|e| state_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        state_error(path, e)
    })
}
