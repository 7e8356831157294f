//! The simulated etcd: this node's data directory, the member list the doubles of one test
//! share, and joining or bootstrapping a cluster.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::{
    lock, state_error, write_json_atomically, DoubleError, Node, NodeRole, NodeState, Phase,
};

/// etcd's ports, for the member URLs the double reports.
const ETCD_PEER_PORT: u16 = 2380;
const ETCD_CLIENT_PORT: u16 = 2379;

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
    pub(super) fn is_empty(&self) -> bool {
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

impl Node {
    pub(super) fn own_member(&self) -> MemberRecord {
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
    pub(super) fn new_cluster(&self) -> Result<String, DoubleError> {
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
    pub(super) fn join(&self) -> Result<String, DoubleError> {
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
    pub(super) fn maybe_auto_join(&self, st: &mut NodeState) {
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

    pub(super) fn check_etcd_running(&self, st: &NodeState) -> Result<(), Status> {
        if st.etcd.is_empty() || self.phase(st) == Phase::Booting {
            return Err(Status::failed_precondition(
                "etcd is not running on this node",
            ));
        }
        Ok(())
    }

    pub(super) fn cluster(&self) -> Result<EtcdCluster, Status> {
        self.config
            .etcd
            .load()
            .map_err(|e| Status::internal(e.to_string()))
    }
}
