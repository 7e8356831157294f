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
//!
//! A Bootstrap takes effect (and is recorded) when it arrives; its answer can be held back
//! ([`TalosDouble::set_bootstrap_answer_delay`]), as Talos answers only once etcd has started,
//! so a test can lose the answer of a call that did take effect.
//! | EtcdMemberList, EtcdRemoveMemberByID | worker | Unimplemented `… is only available on control plane nodes` |
//! | EtcdMemberList, EtcdRemoveMemberByID | etcd empty | FailedPrecondition `etcd is not running on this node` |
//! | EtcdRemoveMemberByID | unknown ID | NotFound `etcdserver: member not found` |
//!
//! Every RPC that reaches the gRPC layer is recorded ([`CallRecord`]: method, time, peer,
//! roles, result) and every refused TLS handshake too, so a test can assert "exactly one
//! Bootstrap reached any node". The state is readable and changeable in process
//! ([`TalosDouble`]), as a JSON file rewritten atomically on every change, and over a small
//! HTTP control API ([`control_router`]); see the `bootplane-talos-double` binary.
//!
//! Here: the double's setup, state and public handle. `etcd` simulates the shared etcd
//! cluster, `service` answers the gRPC calls, `tls` makes the mutual-TLS checks, `certs`
//! issues test certificates, and `control` is the HTTP control API.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::talos::api::pb::machine::machine_service_server::MachineServiceServer;
use crate::talos::secrets::SecretsBundle;

mod certs;
mod control;
mod etcd;
mod service;
mod tls;

use service::DoubleService;
use tls::{accept_loop, async_stream_from, server_tls_config, PeerConn};

pub use certs::{issue_cert, LeafSpec};
pub use control::control_router;
pub use etcd::{EtcdChange, EtcdCluster, EtcdState, EtcdStore, MemberRecord};
pub use tls::PeerIdentity;

/// The Talos release the double claims to be unless told otherwise.
pub const DEFAULT_TALOS_VERSION: &str = "v1.11.6";
/// Calls kept in the log (oldest dropped first).
const MAX_CALLS: usize = 10_000;

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
    /// How long a Bootstrap's answer is held back after it took effect.
    bootstrap_answer_delay: Duration,
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
                    bootstrap_answer_delay: Duration::ZERO,
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

    /// The RPCs received at or after `from_ms` (milliseconds since the Unix epoch), oldest
    /// first: cheap enough to poll every millisecond.
    pub fn calls_since(&self, from_ms: i64) -> Vec<CallRecord> {
        self.node
            .lock()
            .calls
            .iter()
            .filter(|c| c.at_ms >= from_ms)
            .cloned()
            .collect()
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

    /// Holds back the answer to every later Bootstrap for `delay` after it took effect (Talos
    /// answers once etcd has started): a client that goes away meanwhile never hears of it.
    pub fn set_bootstrap_answer_delay(&self, delay: Duration) {
        self.node.lock().bootstrap_answer_delay = delay;
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
