//! The gRPC `MachineService` the double answers, with apid's authorisation by role.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::talos::api::pb::common::Metadata;
use crate::talos::api::pb::google::rpc::Status as RpcStatus;
use crate::talos::api::pb::machine as m;
use crate::talos::api::pb::machine::machine_service_server::MachineService;

use super::etcd::EtcdState;
use super::tls::PeerIdentity;
use super::{unix_ms, CallRecord, DoubleError, Node, NodeRole, NodeState, Phase, MAX_CALLS};

impl Node {
    /// Runs one RPC: authorisation, then an injected per-node error or the handler; records
    /// the call and rewrites the state file.
    pub(super) fn handle<T>(
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

    pub(super) fn check_controlplane(&self, api: &str) -> Result<(), Status> {
        match self.config.role {
            NodeRole::Controlplane => Ok(()),
            NodeRole::Worker => Err(Status::unimplemented(format!(
                "{api} is only available on control plane nodes"
            ))),
        }
    }
}
const ROLE_ADMIN: &str = "os:admin";
const ROLE_OPERATOR: &str = "os:operator";
const ROLE_READER: &str = "os:reader";
const ROLE_ETCD_BACKUP: &str = "os:etcd:backup";

/// Roles per method, as machined's authorisation rules for Talos 1.11.
fn allowed_roles(method: &str) -> &'static [&'static str] {
    match method {
        "Bootstrap" | "EtcdRemoveMemberByID" => &[ROLE_ADMIN],
        "EtcdMemberList" => &[ROLE_ADMIN, ROLE_OPERATOR, ROLE_READER, ROLE_ETCD_BACKUP],
        _ => &[ROLE_ADMIN, ROLE_OPERATOR, ROLE_READER],
    }
}

pub(super) struct DoubleService {
    pub(super) node: Arc<Node>,
}

pub(super) fn peer<T>(req: &Request<T>) -> Option<&PeerIdentity> {
    req.extensions().get::<PeerIdentity>()
}

#[tonic::async_trait]
impl MachineService for DoubleService {
    async fn bootstrap(
        &self,
        req: Request<m::BootstrapRequest>,
    ) -> Result<Response<m::BootstrapResponse>, Status> {
        let method = "Bootstrap";
        let answer = self.node.handle(
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
        );
        let delay = self.node.lock().bootstrap_answer_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        answer
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
