//! Machine configs: what `talosctl gen config` would write for a cluster, plus each node's own
//! hostname, static address on the NIC selected by its MAC, VIP, install disk (or selector) and
//! image (or none, for a diskless node), then
//! the cluster's patches (cluster → role → machine), then validation against the schema of the
//! Talos line the node runs.
//!
//! The shape of `gen config` output is a per-line [`Contract`]: up to 1.11 one v1alpha1
//! document with per-node network settings in `machine.network`; from 1.12 the hostname and
//! network settings are their own documents (`HostnameConfig`, `LinkAliasConfig`,
//! `LinkConfig`, `Layer2VIPConfig`, `ResolverConfig`).
//!
//! Here: the contract per line, the inputs and errors, and rendering. `kubernetes` holds the
//! Kubernetes versions per line, `install` the installer image and install disk, `base` and
//! `base_v1_14` the `gen config` documents (up to 1.13, and 1.14), `node` a node's own settings,
//! `report` the report-in documents, `validate` the checks against each line's schema.

use std::net::Ipv4Addr;

use serde_json::{Map, Value};

use crate::model::{Ipv4Cidr, Mac, NodeSubnets, ReportTargets, Role};
use crate::talos::minor_version;
use crate::talos::patch::{self, Patch};

mod base;
mod base_v1_14;
mod install;
mod kubernetes;
mod node;
mod report;
mod validate;

use install::{explicit_disk_wins, install_rules};
use node::{apply_node, apply_subnets};
use report::apply_report_targets;

pub use base::base_config;
pub use install::{
    default_disk_selector, default_install_image, disk_path_match, factory_installer_image,
    FactorySchematic, InstallerSource, Installers, DEFAULT_INSTALL_DISK_MATCH, MIN_INSTALL_DISK,
};
pub use kubernetes::{
    check_kubernetes_version, default_kubernetes_version, Semver, KUBERNETES_RANGES,
};
pub use node::BOOT_LINK;
pub use report::REPORT_LOG_NAME;
pub use validate::{validate, warm as warm_schema};

/// Talos versions whose config contract bootplane renders.
pub const SUPPORTED: &[(u32, u32)] = &[(1, 8), (1, 9), (1, 10), (1, 11), (1, 12), (1, 13), (1, 14)];

/// The supported lines, as messages name them.
pub const SUPPORTED_RANGE: &str = "1.8 to 1.14";

/// The shape of `talosctl gen config` output for a Talos line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contract {
    /// 1.8 – 1.11 (identical output): one v1alpha1 document.
    V1_8,
    /// 1.12: rbac, apidCheckExtKeyUsage and disablePodSecurityPolicy locked on and no longer
    /// written, no endpoint in `apiServer.certSANs`, `install.grubUseUKICmdline`, the hostname
    /// in a `HostnameConfig` document.
    V1_12,
    /// 1.13: as 1.12, without `machine.network` (gone from the schema).
    V1_13,
    /// 1.14 (from its release candidates): the v1alpha1 document keeps only the machine's
    /// identity, CA and tokens; discovery, DNS, volumes, the install and all of Kubernetes are
    /// documents, CAs in them as PEM text.
    V1_14,
}

impl Contract {
    /// The contract of a Talos version (`v1.12.11`, `1.13`, `v1.13.0-beta.1`).
    pub fn of(talos_version: &str) -> Result<Contract, RenderError> {
        match minor_version(talos_version) {
            Some((1, 8..=11)) => Ok(Contract::V1_8),
            Some((1, 12)) => Ok(Contract::V1_12),
            Some((1, 13)) => Ok(Contract::V1_13),
            Some((1, 14)) => Ok(Contract::V1_14),
            _ => Err(RenderError::UnsupportedVersion(talos_version.to_string())),
        }
    }

    /// The Talos line(s) of the contract, as messages name them.
    pub fn line(self) -> &'static str {
        match self {
            Contract::V1_8 => "1.8 – 1.11",
            Contract::V1_12 => "1.12",
            Contract::V1_13 => "1.13",
            Contract::V1_14 => "1.14",
        }
    }

    /// Per-node network settings as documents rather than `machine.network`.
    fn network_documents(self) -> bool {
        self >= Contract::V1_12
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("Talos {0} is not supported: bootplane renders configs for Talos {SUPPORTED_RANGE}")]
    UnsupportedVersion(String),
    #[error("{0}")]
    Patch(#[from] patch::PatchError),
    #[error("the rendered config is not valid for Talos: {0}")]
    Invalid(String),
    #[error("Kubernetes {kubernetes} is not supported by Talos {talos} (it runs Kubernetes {oldest} to {newest})")]
    KubernetesUnsupported {
        kubernetes: String,
        talos: String,
        oldest: String,
        newest: String,
    },
    #[error("{0}")]
    Input(String),
}

/// A certificate and key, each the base64 of its PEM text, as machine configs carry them.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKey {
    pub crt: String,
    pub key: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("crt", &self.crt)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The parts of a cluster's secrets bundle that go into machine configs.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigSecrets {
    pub cluster_id: String,
    pub cluster_secret: String,
    pub bootstrap_token: String,
    pub trustd_token: String,
    pub secretbox_secret: Option<String>,
    pub aescbc_secret: Option<String>,
    pub os_ca: CertKey,
    pub k8s_ca: CertKey,
    pub aggregator_ca: CertKey,
    pub etcd_ca: CertKey,
    /// base64 PEM of the service-account signing key.
    pub service_account_key: String,
}

impl std::fmt::Debug for ConfigSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigSecrets(<redacted>)")
    }
}

/// Cluster-wide settings that shape every node's config.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSpec {
    pub name: String,
    /// `https://<host>:<port>`.
    pub endpoint: String,
    /// Layer-2 VIP configured on control planes, when set.
    pub vip: Option<Ipv4Addr>,
    pub talos_version: String,
    pub kubernetes_version: String,
    /// The installer image rendered (empty: none named, from 1.14 the node installs its own
    /// version and schematic). `materials` picks it per node from `installers`.
    pub install_image: String,
    /// Where installer images come from, per Talos version and architecture.
    pub installers: Installers,
    pub pod_subnets: Vec<String>,
    pub service_subnets: Vec<String>,
    pub dns_domain: String,
    /// etcd's advertised subnets and the kubelet's node IP subnets.
    pub node_subnets: NodeSubnets,
    /// Where nodes push their events and kernel log, written as `EventSinkConfig` and
    /// `KmsgLogConfig` documents (installed systems may not keep the kernel arguments).
    pub report_to: ReportTargets,
    /// Nameservers of nodes without their own.
    pub nameservers: Vec<Ipv4Addr>,
}

/// One node's own settings.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub mac: Mac,
    pub role: Role,
    pub hostname: String,
    pub ip: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// The disk path the operator chose; `None` lets the default selector pick.
    pub install_disk: Option<String>,
    pub wipe: bool,
    /// Runs from the network at every boot, never installed (Talos 1.14 on, workers only):
    /// no install document.
    pub diskless: bool,
}

/// Patches by level; each is (name, parsed patch), applied in the order given.
#[derive(Clone, Debug, Default)]
pub struct Patches {
    pub cluster: Vec<(String, Patch)>,
    pub controlplane: Vec<(String, Patch)>,
    pub worker: Vec<(String, Patch)>,
    pub machine: Vec<(String, Patch)>,
}

/// The host part of an `https://host:port` endpoint.
pub fn endpoint_host(endpoint: &str) -> Result<String, RenderError> {
    let rest = endpoint.strip_prefix("https://").ok_or_else(|| {
        RenderError::Input(format!(
            "endpoint '{endpoint}' must start with https:// (e.g. https://192.168.1.10:6443)"
        ))
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default().to_string()
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host.to_string(),
            _ => {
                return Err(RenderError::Input(format!(
                    "endpoint '{endpoint}' needs a port (e.g. :6443)"
                )))
            }
        }
    };
    if host.is_empty() {
        return Err(RenderError::Input(format!(
            "endpoint '{endpoint}' has no host"
        )));
    }
    Ok(host)
}

/// The `machine` section of the v1alpha1 document.
fn machine_of(docs: &mut [Value]) -> Result<&mut Map<String, Value>, RenderError> {
    docs.first_mut()
        .and_then(|doc| doc.get_mut("machine"))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| RenderError::Input("base config has no machine section".into()))
}

fn kind_of(doc: &Value) -> Option<&str> {
    doc.get("kind").and_then(Value::as_str)
}

/// Renders `node`'s config documents: base, node settings, patches, validation against the
/// schema of the node's Talos line.
pub fn render_documents(
    cluster: &ClusterSpec,
    secrets: &ConfigSecrets,
    node: &NodeSpec,
    patches: &Patches,
) -> Result<Vec<Value>, RenderError> {
    if node.role == Role::Unassigned {
        return Err(RenderError::Input(format!(
            "{} has no role, so it has no config",
            node.mac
        )));
    }
    let contract = Contract::of(&cluster.talos_version)?;
    let mut docs = base_config(cluster, secrets, node.role)?;
    apply_node(&mut docs, contract, cluster, node)?;
    apply_subnets(
        &mut docs,
        contract,
        node,
        &cluster.node_subnets.for_node(node.ip),
    )?;
    let role_patches = match node.role {
        Role::Controlplane => &patches.controlplane,
        _ => &patches.worker,
    };
    for level in [&patches.cluster, role_patches, &patches.machine] {
        patch::apply_all(&mut docs, level)?;
    }
    explicit_disk_wins(&mut docs);
    install_rules(&docs, contract, node)?;
    // After the patches, so a one-document config (up to 1.11) still takes JSON patches.
    apply_report_targets(&mut docs, &cluster.report_to);
    validate(&docs, node.role, contract)?;
    Ok(docs)
}

/// Renders `node`'s config as the YAML Talos fetches.
pub fn render(
    cluster: &ClusterSpec,
    secrets: &ConfigSecrets,
    node: &NodeSpec,
    patches: &Patches,
) -> Result<String, RenderError> {
    let docs = render_documents(cluster, secrets, node, patches)?;
    to_yaml(&docs)
}

/// Multi-document YAML.
pub fn to_yaml(docs: &[Value]) -> Result<String, RenderError> {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text = serde_yaml_ng::to_string(doc)
            .map_err(|e| RenderError::Invalid(format!("cannot write YAML: {e}")))?;
        out.push_str(&text);
    }
    Ok(out)
}
