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

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::model::{Ipv4Cidr, Mac, NodeSubnets, ReportTargets, Role};
use crate::talos::patch::{self, Patch};
use crate::talos::{minor_version, Arch};

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

/// Default Kubernetes version per Talos minor (`DefaultKubernetesVersion` of its newest patch).
pub fn default_kubernetes_version(talos_version: &str) -> Option<&'static str> {
    match minor_version(talos_version)? {
        (1, 8) => Some("1.31.4"),
        (1, 9) => Some("1.32.4"),
        (1, 10) => Some("1.33.6"),
        (1, 11) => Some("1.34.1"),
        (1, 12) => Some("1.35.4"),
        (1, 13) => Some("1.36.3"),
        (1, 14) => Some("1.37.0-rc.0"),
        _ => None,
    }
}

/// major.minor.patch.
pub type Semver = (u32, u32, u32);

/// The Kubernetes versions a Talos line runs: `(line, oldest, first refused)`, as
/// `MinimumKubernetesVersion` and `MaximumKubernetesVersion` in Talos's
/// `pkg/machinery/compatibility/talos1<minor>/talos1<minor>.go`. Talos compares the
/// major.minor.patch of the version (pre-release ignored): older than the minimum is too old,
/// equal to or newer than the maximum (`1.<n>.99`) too new, so a line runs the minors from its
/// minimum to the one below its maximum's patch 99. Talos refuses a config whose Kubernetes
/// images carry a version outside the range when it loads it
/// (`pkg/machinery/config/types/v1alpha1/v1alpha1_validation.go`, `ValidateKubernetesImageTag`).
/// Sources, each the same in every patch of its line:
/// - 1.8: v1.8.4 `talos18/talos18.go` (1.26.0, 1.31.99)
/// - 1.9: v1.9.6 `talos19/talos19.go` (1.27.0, 1.32.99)
/// - 1.10: v1.10.9 `talos110/talos110.go` (1.28.0, 1.33.99)
/// - 1.11: v1.11.6 `talos111/talos111.go` (1.29.0, 1.34.99)
/// - 1.12: v1.12.11 `talos112/talos112.go` (1.30.0, 1.35.99)
/// - 1.13: v1.13.9 `talos113/talos113.go` (1.31.0, 1.36.99)
/// - 1.14: v1.14.0-rc.1 `talos114/talos114.go` (1.32.0, 1.37.99)
pub const KUBERNETES_RANGES: &[((u32, u32), Semver, Semver)] = &[
    ((1, 8), (1, 26, 0), (1, 31, 99)),
    ((1, 9), (1, 27, 0), (1, 32, 99)),
    ((1, 10), (1, 28, 0), (1, 33, 99)),
    ((1, 11), (1, 29, 0), (1, 34, 99)),
    ((1, 12), (1, 30, 0), (1, 35, 99)),
    ((1, 13), (1, 31, 0), (1, 36, 99)),
    ((1, 14), (1, 32, 0), (1, 37, 99)),
];

/// Refuses a Kubernetes version (`1.34.1`, `v1.35.0-rc.0`) the Talos line of `talos_version`
/// does not run, naming the range it does.
pub fn check_kubernetes_version(talos_version: &str, kubernetes: &str) -> Result<(), RenderError> {
    let line = minor_version(talos_version)
        .ok_or_else(|| RenderError::UnsupportedVersion(talos_version.to_string()))?;
    let (_, min, max) = KUBERNETES_RANGES
        .iter()
        .find(|(l, _, _)| *l == line)
        .ok_or_else(|| RenderError::UnsupportedVersion(talos_version.to_string()))?;
    let bare = kubernetes.trim_start_matches('v');
    let core = bare.split(['-', '+']).next().unwrap_or_default();
    let numbers: Vec<u32> = core.split('.').filter_map(|p| p.parse().ok()).collect();
    let version = match numbers[..] {
        [a, b, c] if core.split('.').count() == 3 => (a, b, c),
        _ => {
            return Err(RenderError::Input(format!(
                "Kubernetes version '{kubernetes}' must look like 1.34.1"
            )))
        }
    };
    if version < *min || version >= *max {
        return Err(RenderError::KubernetesUnsupported {
            kubernetes: bare.to_string(),
            talos: format!("{}.{}", line.0, line.1),
            oldest: format!("{}.{}", min.0, min.1),
            newest: format!("{}.{}", max.0, max.1),
        });
    }
    Ok(())
}

/// The alias bootplane gives the NIC a node booted from (selected by its MAC) from 1.12 on.
pub const BOOT_LINK: &str = "bootnic";

/// talosctl's default installer image for a Talos version. From 1.14 no installer is published
/// with releases and `gen config` names none: empty, the node installs its own version and
/// schematic (which needs boot assets from the Image Factory).
pub fn default_install_image(talos_version: &str) -> String {
    match Contract::of(talos_version) {
        Ok(Contract::V1_14) => String::new(),
        _ => format!("ghcr.io/siderolabs/installer:{talos_version}"),
    }
}

/// The installer of an Image Factory schematic for bare metal, as the factory's registry serves
/// it and `talosctl cluster create` names it: `<factory host>/metal-installer/<schematic>:<version>`
/// (the schematic's system extensions and kernel arguments are installed with it).
pub fn factory_installer_image(factory_host: &str, schematic: &str, talos_version: &str) -> String {
    format!("{factory_host}/metal-installer/{schematic}:{talos_version}")
}

/// Where a node's installer image comes from, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallerSource {
    /// The cluster's installer image setting (the operator's choice wins).
    Cluster,
    /// The Image Factory schematic the version's boot assets came from.
    Factory { schematic: String },
    /// talosctl's default for the version (none from 1.14).
    TalosDefault,
}

impl std::fmt::Display for InstallerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallerSource::Cluster => f.write_str("the cluster's installer image setting"),
            InstallerSource::Factory { schematic } => {
                write!(f, "Image Factory schematic {schematic} of the boot assets")
            }
            InstallerSource::TalosDefault => f.write_str("Talos's default"),
        }
    }
}

/// An Image Factory schematic boot assets came from, and the factory's registry host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactorySchematic {
    /// `factory.talos.dev`, or a mirror's `host:port`.
    pub host: String,
    pub schematic: String,
}

/// What decides a node's installer image: the cluster's own setting, then the Image Factory
/// schematic its version's boot assets of its architecture came from, then talosctl's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installers {
    /// The cluster's installer image setting, with the cluster's Talos version.
    pub cluster: Option<(String, String)>,
    /// Factory schematics of the recorded boot assets, by Talos version and architecture.
    pub factory: std::collections::BTreeMap<(String, Arch), FactorySchematic>,
}

impl Installers {
    /// The installer a node of `arch` running `talos_version` installs, and where it comes from.
    ///
    /// The cluster's setting wins; for a node pinned to another version an image tagged with
    /// the cluster's version is retagged (`…/installer:v1.11.6` becomes `…:v1.10.9`), another
    /// is kept. Otherwise the metal installer of the factory schematic that version's boot
    /// assets of that architecture came from, so the schematic's system extensions are
    /// installed with it; otherwise talosctl's default.
    pub fn pick(&self, talos_version: &str, arch: Arch) -> (String, InstallerSource) {
        if let Some((image, cluster_version)) = &self.cluster {
            let image = match image
                .strip_suffix(cluster_version.as_str())
                .and_then(|rest| rest.strip_suffix(':'))
            {
                Some(repo) if cluster_version != talos_version => {
                    format!("{repo}:{talos_version}")
                }
                _ => image.clone(),
            };
            return (image, InstallerSource::Cluster);
        }
        match self.factory.get(&(talos_version.to_string(), arch)) {
            Some(f) => (
                factory_installer_image(&f.host, &f.schematic, talos_version),
                InstallerSource::Factory {
                    schematic: f.schematic.clone(),
                },
            ),
            None => (
                default_install_image(talos_version),
                InstallerSource::TalosDefault,
            ),
        }
    }
}

/// Talos's minimum disk size (`minimal.DiskSize`): the default selector picks no smaller disk,
/// so an empty card reader or a small boot module is never the install disk.
pub const MIN_INSTALL_DISK: &str = "6GiB";

/// The default install disk up to 1.13 (`machine.install.diskSelector`): the first disk in
/// Talos's device-name order of at least [`MIN_INSTALL_DISK`]. From 1.9 Talos adds to any
/// selector that the disk is not read-only, not a CD/DVD drive and on a transport it knows
/// (so no device-mapper or loop device); 1.8 lists no CD drive, loop, RAM, md or dm device to
/// begin with.
pub fn default_disk_selector() -> Value {
    json!({ "size": format!(">= {MIN_INSTALL_DISK}") })
}

/// The default install disk from 1.14 (`UnattendedInstallConfig`'s CEL `diskSelector.match`):
/// the first disk in Talos's device-name order of at least 6 GiB that is not read-only, not a
/// CD/DVD drive and on a known transport (NVMe, SATA, SAS, virtio, MMC, USB, …); 1.14 adds
/// nothing to the expression itself, so it says what 1.13's selector meant.
pub const DEFAULT_INSTALL_DISK_MATCH: &str =
    "disk.size >= 6u * GiB && !disk.readonly && !disk.cdrom && disk.transport != \"\"";

/// The CEL expression selecting exactly the disk at `path` (1.14).
pub fn disk_path_match(path: &str) -> String {
    format!("disk.dev_path == \"{path}\"")
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

/// A document of kind `kind` (apiVersion v1alpha1) with `fields` after its header.
fn document(kind: &str, fields: Value) -> Value {
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!("v1alpha1"));
    doc.insert("kind".into(), json!(kind));
    if let Value::Object(fields) = fields {
        doc.extend(fields);
    }
    Value::Object(doc)
}

/// The documents `talosctl gen config` writes for `role` (no per-node settings yet: the install
/// disk is the node's, so up to 1.13 `machine.install` holds only the image and wipe flag),
/// key order as Talos emits it: the v1alpha1 document, then from 1.12 a `HostnameConfig`.
pub fn base_config(
    cluster: &ClusterSpec,
    secrets: &ConfigSecrets,
    role: Role,
) -> Result<Vec<Value>, RenderError> {
    let contract = Contract::of(&cluster.talos_version)?;
    let host = endpoint_host(&cluster.endpoint)?;
    if contract == Contract::V1_14 {
        return base_documents_v1_14(cluster, secrets, role);
    }
    let k8s = cluster.kubernetes_version.trim_start_matches('v');
    let controlplane = role == Role::Controlplane;
    let machine_type = if controlplane {
        "controlplane"
    } else {
        "worker"
    };
    let private = |key: &str| {
        if controlplane {
            key.to_string()
        } else {
            String::new()
        }
    };

    let mut machine = Map::new();
    machine.insert("type".into(), json!(machine_type));
    machine.insert("token".into(), json!(secrets.trustd_token));
    machine.insert(
        "ca".into(),
        json!({ "crt": secrets.os_ca.crt, "key": private(&secrets.os_ca.key) }),
    );
    machine.insert("certSANs".into(), json!([]));
    machine.insert(
        "kubelet".into(),
        json!({
            "image": format!("ghcr.io/siderolabs/kubelet:v{k8s}"),
            "defaultRuntimeSeccompProfileEnabled": true,
            "disableManifestsDirectory": true,
        }),
    );
    if contract < Contract::V1_13 {
        machine.insert("network".into(), json!({}));
    }
    machine.insert(
        "install".into(),
        install(contract, None, &cluster.install_image, false),
    );
    let mut features = Map::new();
    if contract == Contract::V1_8 {
        features.insert("rbac".into(), json!(true));
        features.insert("stableHostname".into(), json!(true));
        features.insert("apidCheckExtKeyUsage".into(), json!(true));
    }
    features.insert("diskQuotaSupport".into(), json!(true));
    features.insert("kubePrism".into(), json!({ "enabled": true, "port": 7445 }));
    features.insert(
        "hostDNS".into(),
        json!({ "enabled": true, "forwardKubeDNSToHost": true }),
    );
    machine.insert("features".into(), Value::Object(features));
    if controlplane {
        machine.insert(
            "nodeLabels".into(),
            json!({ "node.kubernetes.io/exclude-from-external-load-balancers": "" }),
        );
    }

    let mut c = Map::new();
    c.insert("id".into(), json!(secrets.cluster_id));
    c.insert("secret".into(), json!(secrets.cluster_secret));
    c.insert(
        "controlPlane".into(),
        json!({ "endpoint": cluster.endpoint }),
    );
    c.insert("clusterName".into(), json!(cluster.name));
    c.insert(
        "network".into(),
        json!({
            "dnsDomain": cluster.dns_domain,
            "podSubnets": cluster.pod_subnets,
            "serviceSubnets": cluster.service_subnets,
        }),
    );
    c.insert("token".into(), json!(secrets.bootstrap_token));
    if controlplane {
        match (&secrets.secretbox_secret, &secrets.aescbc_secret) {
            (Some(s), _) => {
                c.insert("secretboxEncryptionSecret".into(), json!(s));
            }
            (None, Some(s)) => {
                c.insert("aescbcEncryptionSecret".into(), json!(s));
            }
            (None, None) => {
                return Err(RenderError::Input(
                    "the secrets bundle has no encryption secret".into(),
                ))
            }
        }
    }
    c.insert(
        "ca".into(),
        json!({ "crt": secrets.k8s_ca.crt, "key": private(&secrets.k8s_ca.key) }),
    );
    if controlplane {
        c.insert(
            "aggregatorCA".into(),
            json!({ "crt": secrets.aggregator_ca.crt, "key": secrets.aggregator_ca.key }),
        );
        c.insert(
            "serviceAccount".into(),
            json!({ "key": secrets.service_account_key }),
        );
        let mut api_server = Map::new();
        api_server.insert(
            "image".into(),
            json!(format!("registry.k8s.io/kube-apiserver:v{k8s}")),
        );
        if contract == Contract::V1_8 {
            api_server.insert("certSANs".into(), json!([host]));
            api_server.insert("disablePodSecurityPolicy".into(), json!(true));
        }
        api_server.extend(admission_and_audit());
        c.insert("apiServer".into(), Value::Object(api_server));
        c.insert(
            "controllerManager".into(),
            json!({ "image": format!("registry.k8s.io/kube-controller-manager:v{k8s}") }),
        );
        c.insert(
            "proxy".into(),
            json!({ "image": format!("registry.k8s.io/kube-proxy:v{k8s}") }),
        );
        c.insert(
            "scheduler".into(),
            json!({ "image": format!("registry.k8s.io/kube-scheduler:v{k8s}") }),
        );
    }
    c.insert(
        "discovery".into(),
        json!({
            "enabled": true,
            "registries": { "kubernetes": { "disabled": true }, "service": {} },
        }),
    );
    if controlplane {
        c.insert(
            "etcd".into(),
            json!({ "ca": { "crt": secrets.etcd_ca.crt, "key": secrets.etcd_ca.key } }),
        );
    }

    let mut doc = Map::new();
    doc.insert("version".into(), json!("v1alpha1"));
    doc.insert("debug".into(), json!(false));
    doc.insert("persist".into(), json!(true));
    doc.insert("machine".into(), Value::Object(machine));
    doc.insert("cluster".into(), Value::Object(c));
    let mut docs = vec![Value::Object(doc)];
    if contract.network_documents() {
        docs.push(document("HostnameConfig", json!({ "auto": "stable" })));
    }
    Ok(docs)
}

/// The PEM text of a base64-encoded PEM value of the secrets.
fn pem(b64: &str, what: &str) -> Result<String, RenderError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| RenderError::Input(format!("the secrets bundle's {what} is not base64 PEM")))
}

/// The documents `talosctl gen config` writes for Talos 1.14, in its order (the install is
/// per node, so it is added with the node's settings).
fn base_documents_v1_14(
    cluster: &ClusterSpec,
    secrets: &ConfigSecrets,
    role: Role,
) -> Result<Vec<Value>, RenderError> {
    let k8s = cluster.kubernetes_version.trim_start_matches('v');
    let controlplane = role == Role::Controlplane;
    let mut machine = Map::new();
    machine.insert(
        "type".into(),
        json!(if controlplane {
            "controlplane"
        } else {
            "worker"
        }),
    );
    machine.insert("token".into(), json!(secrets.trustd_token));
    machine.insert(
        "ca".into(),
        json!({
            "crt": secrets.os_ca.crt,
            "key": if controlplane { secrets.os_ca.key.as_str() } else { "" },
        }),
    );
    machine.insert("certSANs".into(), json!([]));
    machine.insert("features".into(), json!({ "diskQuotaSupport": true }));
    let mut c = Map::new();
    c.insert("token".into(), json!(secrets.bootstrap_token));
    if controlplane {
        c.insert(
            "etcd".into(),
            json!({ "ca": { "crt": secrets.etcd_ca.crt, "key": secrets.etcd_ca.key } }),
        );
    }
    let v1alpha1 = json!({
        "version": "v1alpha1",
        "debug": false,
        "persist": true,
        "machine": machine,
        "cluster": c,
    });

    let mut docs = vec![
        v1alpha1,
        document(
            "DiscoveryServiceConfig",
            json!({ "name": "default", "endpoint": "https://discovery.talos.dev/" }),
        ),
        document(
            "DiscoveryIdentityConfig",
            json!({ "clusterID": secrets.cluster_id, "clusterSecret": secrets.cluster_secret }),
        ),
        document(
            "ResolverConfig",
            json!({ "hostDNS": { "enabled": true, "forwardKubeDNSToHost": true } }),
        ),
        document(
            "VolumeConfig",
            json!({ "name": "EPHEMERAL", "mount": { "secure": true } }),
        ),
        document("FilesystemTrimConfig", json!({ "interval": "168h0m0s" })),
        document(
            "SecurityProfileConfig",
            json!({ "workloadIsolation": true }),
        ),
        document("HostnameConfig", json!({ "auto": "stable" })),
        document(
            "KubeClusterConfig",
            json!({ "clusterName": cluster.name, "endpoint": cluster.endpoint }),
        ),
    ];
    let mut node = Map::new();
    node.insert("nodeIP".into(), json!({}));
    if controlplane {
        node.insert(
            "labels".into(),
            json!({
                "node-role.kubernetes.io/control-plane": "",
                "node.kubernetes.io/exclude-from-external-load-balancers": "",
            }),
        );
        node.insert(
            "taints".into(),
            json!({ "node-role.kubernetes.io/control-plane": "NoSchedule" }),
        );
    }
    docs.push(document("KubeNodeConfig", Value::Object(node)));
    docs.push(document(
        "KubeletConfig",
        json!({
            "image": format!("ghcr.io/siderolabs/kubelet:v{k8s}"),
            "config": {},
            "defaultRuntimeSeccompProfileEnabled": true,
        }),
    ));
    docs.push(document(
        "KubeNetworkConfig",
        json!({
            "dnsDomain": cluster.dns_domain,
            "podSubnets": cluster.pod_subnets,
            "serviceSubnets": cluster.service_subnets,
        }),
    ));
    let k8s_ca = pem(&secrets.k8s_ca.crt, "Kubernetes CA")?;
    if !controlplane {
        docs.push(document(
            "KubeAPIServerCAConfig",
            json!({ "acceptedCAs": [k8s_ca] }),
        ));
        docs.push(document("KubePrismConfig", json!({ "port": 7445 })));
        return Ok(docs);
    }
    docs.push(document(
        "KubeAPIServerCAConfig",
        json!({ "issuingCA": {
            "cert": k8s_ca,
            "key": pem(&secrets.k8s_ca.key, "Kubernetes CA key")?,
        } }),
    ));
    docs.push(document("KubePrismConfig", json!({ "port": 7445 })));
    docs.push(document(
        "KubeAggregatorCAConfig",
        json!({ "issuingCA": {
            "cert": pem(&secrets.aggregator_ca.crt, "aggregator CA")?,
            "key": pem(&secrets.aggregator_ca.key, "aggregator CA key")?,
        } }),
    ));
    let admission = admission_and_audit();
    if let Some(plugin) = admission
        .get("admissionControl")
        .and_then(|list| list.get(0))
    {
        docs.push(document("KubeAdmissionControlConfig", plugin.clone()));
    }
    if let Some(policy) = admission.get("auditPolicy") {
        docs.push(document(
            "KubeAuditPolicyConfig",
            json!({ "configuration": policy }),
        ));
    }
    docs.push(document(
        "KubeAuthenticationConfig",
        json!({ "configuration": {
            "anonymous": {
                "conditions": [{ "path": "/livez" }, { "path": "/readyz" }, { "path": "/healthz" }],
                "enabled": true,
            },
            "jwt": [],
        } }),
    ));
    docs.push(document(
        "KubeAuthorizerConfig",
        json!({ "name": "node", "type": "Node" }),
    ));
    docs.push(document(
        "KubeAuthorizerConfig",
        json!({ "name": "rbac", "type": "RBAC" }),
    ));
    let provider = match (&secrets.secretbox_secret, &secrets.aescbc_secret) {
        (Some(s), _) => json!({ "secretbox": { "keys": [{ "name": "key2", "secret": s }] } }),
        (None, Some(s)) => json!({ "aescbc": { "keys": [{ "name": "key1", "secret": s }] } }),
        (None, None) => {
            return Err(RenderError::Input(
                "the secrets bundle has no encryption secret".into(),
            ))
        }
    };
    docs.push(document(
        "KubeEtcdEncryptionConfig",
        json!({ "config": { "resources": [{ "providers": [provider], "resources": ["secrets"] }] } }),
    ));
    docs.push(document(
        "KubeServiceAccountConfig",
        json!({ "issuer": {
            "privateKey": pem(&secrets.service_account_key, "service-account key")?,
            "issuerURL": cluster.endpoint,
        } }),
    ));
    docs.push(document(
        "KubeAPIServerConfig",
        json!({ "image": format!("registry.k8s.io/kube-apiserver:v{k8s}") }),
    ));
    docs.push(document(
        "KubeControllerManagerConfig",
        json!({ "image": format!("registry.k8s.io/kube-controller-manager:v{k8s}") }),
    ));
    docs.push(document(
        "KubeSchedulerConfig",
        json!({ "image": format!("registry.k8s.io/kube-scheduler:v{k8s}"), "config": {} }),
    ));
    docs.push(document(
        "KubeProxyConfig",
        json!({ "image": format!("registry.k8s.io/kube-proxy:v{k8s}"), "config": {} }),
    ));
    docs.push(document(
        "KubeFlannelCNIConfig",
        json!({ "backendType": "vxlan", "backendPort": 4789 }),
    ));
    docs.push(document("KubeCoreDNSConfig", json!({ "enabled": true })));
    Ok(docs)
}

/// `machine.install` as `gen config` writes it (an empty image is left out): `disk` when one
/// is given, else from the node's settings the default selector (`selector`), else neither.
fn install(contract: Contract, disk: Option<&str>, image: &str, wipe: bool) -> Value {
    install_on(contract, disk, None, image, wipe)
}

fn install_on(
    contract: Contract,
    disk: Option<&str>,
    selector: Option<Value>,
    image: &str,
    wipe: bool,
) -> Value {
    let mut install = Map::new();
    if let Some(disk) = disk {
        install.insert("disk".into(), json!(disk));
    }
    if let Some(selector) = selector {
        install.insert("diskSelector".into(), selector);
    }
    if !image.is_empty() {
        install.insert("image".into(), json!(image));
    }
    install.insert("wipe".into(), json!(wipe));
    if contract >= Contract::V1_12 {
        install.insert("grubUseUKICmdline".into(), json!(true));
    }
    Value::Object(install)
}

/// The API server's admission control (Pod Security) and audit policy, as `gen config` writes
/// them on every line.
fn admission_and_audit() -> Map<String, Value> {
    let value = json!({
        "admissionControl": [{
            "name": "PodSecurity",
            "configuration": {
                "apiVersion": "pod-security.admission.config.k8s.io/v1alpha1",
                "defaults": {
                    "audit": "restricted",
                    "audit-version": "latest",
                    "enforce": "baseline",
                    "enforce-version": "latest",
                    "warn": "restricted",
                    "warn-version": "latest",
                },
                "exemptions": {
                    "namespaces": ["kube-system"],
                    "runtimeClasses": [],
                    "usernames": [],
                },
                "kind": "PodSecurityConfiguration",
            },
        }],
        "auditPolicy": {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "rules": [{ "level": "Metadata" }],
        },
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Sets the node's own fields on the base documents: the install disk and wipe in v1alpha1,
/// and the hostname and network either in `machine.network` (up to 1.11) or as documents.
fn apply_node(
    docs: &mut Vec<Value>,
    contract: Contract,
    cluster: &ClusterSpec,
    node: &NodeSpec,
) -> Result<(), RenderError> {
    let disk = node.install_disk.as_deref();
    if node.diskless {
        if contract < Contract::V1_14 {
            return Err(RenderError::Input(format!(
                "{} is diskless, which needs Talos 1.14 or newer: Talos {} installs to disk before it runs",
                node.hostname,
                contract.line()
            )));
        }
        if node.role == Role::Controlplane {
            return Err(RenderError::Input(format!(
                "{} is diskless and a control plane: a control plane keeps etcd on its disk, so only workers may be diskless",
                node.hostname
            )));
        }
        // Talos 1.14 skips its install when the config has no install document.
    } else if contract == Contract::V1_14 {
        let mut installer = Map::new();
        if !cluster.install_image.is_empty() {
            installer.insert("image".into(), json!(cluster.install_image));
        }
        let matcher = disk.map_or_else(|| DEFAULT_INSTALL_DISK_MATCH.to_string(), disk_path_match);
        let unattended = document(
            "UnattendedInstallConfig",
            json!({
                "installer": installer,
                "provisioning": {
                    "diskSelector": { "match": matcher },
                    "wipe": node.wipe,
                },
            }),
        );
        // Where `gen config` puts it: after the discovery identity.
        let at = docs
            .iter()
            .position(|d| kind_of(d) == Some("DiscoveryIdentityConfig"))
            .map_or(docs.len(), |i| i + 1);
        docs.insert(at, unattended);
    } else {
        let selector = disk.is_none().then(default_disk_selector);
        machine_of(docs)?.insert(
            "install".into(),
            install_on(contract, disk, selector, &cluster.install_image, node.wipe),
        );
    }
    let vip = match (node.role, cluster.vip) {
        (Role::Controlplane, Some(vip)) => Some(vip),
        _ => None,
    };
    // Talos moves a Layer 2 VIP onto the link that holds an address of its subnet; on a control
    // plane whose address is in another subnet it never comes up, and the API endpoint with it.
    if let Some(vip) = vip {
        if !node.ip.contains(vip) {
            return Err(RenderError::Input(format!(
                "the cluster's VIP {vip} is outside control plane {}'s subnet {}: a Layer 2 VIP must be in the subnet of every control plane's address",
                node.hostname, node.ip
            )));
        }
    }
    let dns: Vec<String> = node.dns.iter().map(|d| d.to_string()).collect();
    if !contract.network_documents() {
        let mut interface = Map::new();
        interface.insert(
            "deviceSelector".into(),
            json!({ "hardwareAddr": node.mac.to_string() }),
        );
        interface.insert("addresses".into(), json!([node.ip.to_string()]));
        if let Some(gw) = node.gateway {
            interface.insert(
                "routes".into(),
                json!([{ "network": "0.0.0.0/0", "gateway": gw.to_string() }]),
            );
        }
        interface.insert("dhcp".into(), json!(false));
        if let Some(vip) = vip {
            interface.insert("vip".into(), json!({ "ip": vip.to_string() }));
        }
        let mut network = Map::new();
        network.insert("hostname".into(), json!(node.hostname));
        network.insert("interfaces".into(), json!([Value::Object(interface)]));
        if !dns.is_empty() {
            network.insert("nameservers".into(), json!(dns));
        }
        machine_of(docs)?.insert("network".into(), Value::Object(network));
        return Ok(());
    }
    docs.retain(|doc| kind_of(doc) != Some("HostnameConfig"));
    docs.push(document(
        "HostnameConfig",
        json!({ "hostname": node.hostname }),
    ));
    docs.push(document(
        "LinkAliasConfig",
        json!({
            "name": BOOT_LINK,
            "selector": { "match": format!("mac(link.permanent_addr) == \"{}\"", node.mac) },
        }),
    ));
    let mut link = Map::new();
    link.insert("name".into(), json!(BOOT_LINK));
    link.insert(
        "addresses".into(),
        json!([{ "address": node.ip.to_string() }]),
    );
    if let Some(gw) = node.gateway {
        link.insert(
            "routes".into(),
            json!([{ "destination": "0.0.0.0/0", "gateway": gw.to_string() }]),
        );
    }
    docs.push(document("LinkConfig", Value::Object(link)));
    if let Some(vip) = vip {
        docs.push(document(
            "Layer2VIPConfig",
            json!({ "name": vip.to_string(), "link": BOOT_LINK }),
        ));
    }
    if !dns.is_empty() {
        let nameservers: Vec<Value> = dns.iter().map(|d| json!({ "address": d })).collect();
        // From 1.14 `gen config` writes a ResolverConfig (host DNS); the nameservers join it.
        match docs
            .iter_mut()
            .find(|d| kind_of(d) == Some("ResolverConfig"))
            .and_then(Value::as_object_mut)
        {
            Some(resolver) => {
                let rest = std::mem::take(resolver);
                for (key, value) in rest {
                    resolver.insert(key.clone(), value);
                    if key == "kind" {
                        resolver.insert("nameservers".into(), json!(nameservers));
                    }
                }
            }
            None => docs.push(document(
                "ResolverConfig",
                json!({ "nameservers": nameservers }),
            )),
        }
    }
    Ok(())
}

/// The node's subnets as Talos's production notes ask for nodes with more than one address:
/// the kubelet's `nodeIP.validSubnets` on every node (`machine.kubelet` up to 1.13, the
/// `KubeNodeConfig` document from 1.14) and `cluster.etcd.advertisedSubnets` on control
/// planes; nothing when `subnets` is empty. Keys go where Talos's own YAML puts them.
fn apply_subnets(
    docs: &mut [Value],
    contract: Contract,
    node: &NodeSpec,
    subnets: &[String],
) -> Result<(), RenderError> {
    if subnets.is_empty() {
        return Ok(());
    }
    let node_ip = json!({ "validSubnets": subnets });
    if contract == Contract::V1_14 {
        let kube_node = docs
            .iter_mut()
            .find(|d| kind_of(d) == Some("KubeNodeConfig"))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| RenderError::Input("base config has no KubeNodeConfig".into()))?;
        kube_node.insert("nodeIP".into(), node_ip);
    } else {
        let kubelet = machine_of(docs)?
            .get_mut("kubelet")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| RenderError::Input("base config has no machine.kubelet".into()))?;
        insert_before(
            kubelet,
            "nodeIP",
            node_ip,
            &["skipNodeRegistration", "disableManifestsDirectory"],
        );
    }
    if node.role == Role::Controlplane {
        let etcd = docs
            .first_mut()
            .and_then(|d| d.pointer_mut("/cluster/etcd"))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| RenderError::Input("base config has no cluster.etcd".into()))?;
        insert_before(
            etcd,
            "advertisedSubnets",
            json!(subnets),
            &["listenSubnets"],
        );
    }
    Ok(())
}

/// Inserts `key` into `map` before the first of `later` present (Talos's field order), else at
/// the end; a key already there keeps its place.
fn insert_before(map: &mut Map<String, Value>, key: &str, value: Value, later: &[&str]) {
    if map.contains_key(key) {
        map.insert(key.into(), value);
        return;
    }
    let rest = std::mem::take(map);
    let mut placed = false;
    for (k, v) in rest {
        if !placed && later.contains(&k.as_str()) {
            map.insert(key.into(), value.clone());
            placed = true;
        }
        map.insert(k, v);
    }
    if !placed {
        map.insert(key.into(), value);
    }
}

/// `EventSinkConfig` and `KmsgLogConfig` documents for bootplane's receivers, so a node keeps
/// reporting after an install whose bootloader drops the extra kernel arguments (Talos's UEFI
/// installs with systemd-boot, and GRUB with `grubUseUKICmdline` from 1.12). Talos takes the
/// document's event sink over the kernel argument (the same endpoint here) and drops a kernel
/// log URL given both ways, so a node booted with both sends once. An operator's patch that
/// adds its own event sink (Talos takes one) or a kernel log named like bootplane's wins.
fn apply_report_targets(docs: &mut Vec<Value>, targets: &ReportTargets) {
    let has = |docs: &[Value], kind: &str, name: Option<&str>| {
        docs.iter().any(|d| {
            kind_of(d) == Some(kind)
                && name.is_none_or(|name| d.get("name").and_then(Value::as_str) == Some(name))
        })
    };
    if let Some(endpoint) = &targets.events_endpoint {
        if !has(docs, "EventSinkConfig", None) {
            docs.push(document("EventSinkConfig", json!({ "endpoint": endpoint })));
        }
    }
    if let Some(url) = targets
        .kernel_log_url
        .as_ref()
        .filter(|_| !has(docs, "KmsgLogConfig", Some(REPORT_LOG_NAME)))
    {
        docs.push(document(
            "KmsgLogConfig",
            json!({ "name": REPORT_LOG_NAME, "url": url }),
        ));
    }
}

/// The name of the `KmsgLogConfig` document that sends the kernel log to bootplane.
pub const REPORT_LOG_NAME: &str = "bootplane";

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

/// A patch that names `machine.install.disk` chooses the disk, as `--install-disk` does: the
/// default selector is dropped (Talos would follow a selector over a disk).
fn explicit_disk_wins(docs: &mut [Value]) {
    let Some(install) = docs
        .first_mut()
        .and_then(|d| d.pointer_mut("/machine/install"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let has_disk = install
        .get("disk")
        .and_then(Value::as_str)
        .is_some_and(|d| !d.is_empty());
    if has_disk && install.get("diskSelector") == Some(&default_disk_selector()) {
        install.shift_remove("diskSelector");
    }
}

/// A diskless node's config installs nothing (a patch may not add an install), and every other
/// node's installs (a patch may not take it away).
fn install_rules(docs: &[Value], contract: Contract, node: &NodeSpec) -> Result<(), RenderError> {
    let installs = if contract == Contract::V1_14 {
        docs.iter()
            .any(|d| kind_of(d) == Some("UnattendedInstallConfig"))
            || docs
                .first()
                .is_some_and(|d| d.pointer("/machine/install").is_some())
    } else {
        true
    };
    match (node.diskless, installs) {
        (true, true) => Err(RenderError::Invalid(format!(
            "{} is diskless, but its config installs Talos (a patch adds UnattendedInstallConfig or machine.install)",
            node.hostname
        ))),
        (false, false) => Err(RenderError::Invalid(format!(
            "{}'s config has no UnattendedInstallConfig document: bootplane installs Talos to disk unless the machine is diskless",
            node.hostname
        ))),
        _ => Ok(()),
    }
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

const SCHEMA_V1_11: &str = include_str!("schema/config.schema.v1.11.json");
const SCHEMA_V1_12: &str = include_str!("schema/config.schema.v1.12.11.json");
const SCHEMA_V1_13: &str = include_str!("schema/config.schema.v1.13.9.json");
const SCHEMA_V1_14: &str = include_str!("schema/config.schema.v1.14.0-rc.1.json");

/// Document kinds a schema names differently from what Talos writes and reads: (schema's,
/// Talos's). v1.14.0-rc.1's schema says `UnattendedInstall`, while `gen config` (its stability
/// fixtures) and the config loader use `UnattendedInstallConfig`.
const KIND_ALIASES: &[(&str, &str)] = &[("UnattendedInstall", "UnattendedInstallConfig")];

/// One Talos line's schema, split per document kind.
struct Validators {
    v1alpha1: jsonschema::Validator,
    /// Each kind in the schema's `oneOf` against its own definition.
    kinds: HashMap<String, jsonschema::Validator>,
    /// The whole schema, for a document whose kind the schema does not name.
    any_document: jsonschema::Validator,
}

impl Validators {
    fn build(text: &str) -> Result<Validators, String> {
        let mut root: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let definitions = root
            .get_mut("$defs")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|defs| defs.values_mut());
        for definition in definitions {
            if let Some(Value::Array(names)) = definition.pointer_mut("/properties/kind/enum") {
                for (schema_kind, talos_kind) in KIND_ALIASES {
                    if names.iter().any(|n| n == schema_kind) {
                        names.push(json!(talos_kind));
                    }
                }
            }
        }
        let root = root;
        let for_definition = |reference: &str| {
            let mut schema = root.clone();
            if let Some(obj) = schema.as_object_mut() {
                obj.remove("oneOf");
                obj.insert("$ref".into(), json!(reference));
            }
            jsonschema::validator_for(&schema).map_err(|e| e.to_string())
        };
        let mut kinds = HashMap::new();
        let references = root
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("$ref").and_then(Value::as_str));
        for reference in references {
            let definition = reference
                .strip_prefix("#/$defs/")
                .and_then(|name| root.get("$defs")?.get(name));
            let names = definition
                .and_then(|d| d.pointer("/properties/kind/enum"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            for kind in names {
                kinds.insert(kind.to_string(), for_definition(reference)?);
            }
        }
        Ok(Validators {
            v1alpha1: for_definition("#/$defs/v1alpha1.Config")?,
            kinds,
            any_document: jsonschema::validator_for(&root).map_err(|e| e.to_string())?,
        })
    }
}

/// The validators of the schema of `contract`'s line (built once).
fn validators(contract: Contract) -> Result<&'static Validators, RenderError> {
    static V1_11: OnceLock<Result<Validators, String>> = OnceLock::new();
    static V1_12: OnceLock<Result<Validators, String>> = OnceLock::new();
    static V1_13: OnceLock<Result<Validators, String>> = OnceLock::new();
    static V1_14: OnceLock<Result<Validators, String>> = OnceLock::new();
    let (cell, text) = match contract {
        Contract::V1_8 => (&V1_11, SCHEMA_V1_11),
        Contract::V1_12 => (&V1_12, SCHEMA_V1_12),
        Contract::V1_13 => (&V1_13, SCHEMA_V1_13),
        Contract::V1_14 => (&V1_14, SCHEMA_V1_14),
    };
    cell.get_or_init(|| Validators::build(text))
        .as_ref()
        .map_err(|e| RenderError::Invalid(format!("schema failed to load: {e}")))
}

/// Checks each document against the schema of `contract`'s Talos line (the v1alpha1 document
/// after removing `persist`, which the schema does not describe, against its definition; any
/// other against its kind's), plus the rules Talos's own validation adds that a schema cannot
/// say.
pub fn validate(docs: &[Value], role: Role, contract: Contract) -> Result<(), RenderError> {
    let validators = validators(contract)?;
    for (i, doc) in docs.iter().enumerate() {
        let mut doc = doc.clone();
        let is_v1alpha1 = doc.get("version").and_then(Value::as_str) == Some("v1alpha1");
        if let Some(obj) = doc.as_object_mut() {
            if is_v1alpha1 {
                match obj.remove("persist") {
                    None | Some(Value::Bool(true)) => {}
                    Some(_) => {
                        return Err(RenderError::Invalid(".persist should be enabled".into()))
                    }
                }
            }
        }
        let validator = match kind_of(&doc) {
            _ if is_v1alpha1 => &validators.v1alpha1,
            Some(kind) => validators.kinds.get(kind).ok_or_else(|| {
                RenderError::Invalid(format!(
                    "document {}: Talos {} has no {kind} document",
                    i + 1,
                    contract.line()
                ))
            })?,
            None => &validators.any_document,
        };
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .take(5)
            .map(|e| {
                let path = e.instance_path().to_string();
                format!("{}: {e}", if path.is_empty() { "/" } else { &path })
            })
            .collect();
        if !errors.is_empty() {
            let name = kind_of(&doc).unwrap_or("v1alpha1");
            return Err(RenderError::Invalid(format!(
                "document {} ({name}): {}",
                i + 1,
                errors.join("; ")
            )));
        }
        if is_v1alpha1 {
            talos_rules(&doc, role, contract, docs)?;
        }
    }
    if docs
        .first()
        .and_then(|d| d.get("version"))
        .and_then(Value::as_str)
        != Some("v1alpha1")
    {
        return Err(RenderError::Invalid(
            "the first document must be the v1alpha1 machine config".into(),
        ));
    }
    document_rules(docs, role)
}

/// Talos's conflict rules between documents and the v1alpha1 fields they deprecate, and the
/// VIP rule for documents.
fn document_rules(docs: &[Value], role: Role) -> Result<(), RenderError> {
    let Some(v1alpha1) = docs.first() else {
        return Ok(());
    };
    let has = |kind: &str| docs.iter().any(|d| kind_of(d) == Some(kind));
    let set = |path: &str| {
        v1alpha1
            .pointer(path)
            .is_some_and(|v| !v.is_null() && v != &json!("") && v != &json!([]))
    };
    if has("HostnameConfig") {
        if set("/machine/network/hostname") {
            return Err(RenderError::Invalid(
                "a HostnameConfig document and machine.network.hostname both set the hostname"
                    .into(),
            ));
        }
        if v1alpha1.pointer("/machine/features/stableHostname") == Some(&json!(true)) {
            return Err(RenderError::Invalid(
                "a HostnameConfig document conflicts with machine.features.stableHostname".into(),
            ));
        }
    }
    if has("ResolverConfig") && set("/machine/network/nameservers") {
        return Err(RenderError::Invalid(
            "a ResolverConfig document and machine.network.nameservers both set nameservers".into(),
        ));
    }
    for doc in docs {
        match kind_of(doc) {
            Some("EventSinkConfig") => {
                let endpoint = pointer_str(doc, "/endpoint").unwrap_or_default();
                let port = endpoint
                    .rsplit_once(':')
                    .filter(|(host, _)| !host.is_empty())
                    .and_then(|(_, port)| port.parse::<u16>().ok());
                if port.is_none() {
                    return Err(RenderError::Invalid(format!(
                        "EventSinkConfig endpoint '{endpoint}' must be host:port"
                    )));
                }
            }
            Some("KmsgLogConfig") => kmsg_log_rules(doc)?,
            _ => {}
        }
    }
    if docs
        .iter()
        .filter(|d| kind_of(d) == Some("EventSinkConfig"))
        .count()
        > 1
    {
        return Err(RenderError::Invalid(
            "more than one EventSinkConfig document (Talos takes one event sink)".into(),
        ));
    }
    if role != Role::Controlplane && has("Layer2VIPConfig") {
        return Err(RenderError::Invalid(
            "a VIP (Layer2VIPConfig) can only be configured on control planes".into(),
        ));
    }
    Ok(())
}

/// Talos's checks of a `KmsgLogConfig`: a name, and a `tcp://` or `udp://` URL with a port and
/// no path.
fn kmsg_log_rules(doc: &Value) -> Result<(), RenderError> {
    let name = pointer_str(doc, "/name").unwrap_or_default();
    let url = pointer_str(doc, "/url").unwrap_or_default();
    let fail = |why: &str| {
        Err(RenderError::Invalid(format!(
            "KmsgLogConfig '{name}': {why}"
        )))
    };
    if name.is_empty() {
        return fail("name is required");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return fail("url is required (tcp://host:port or udp://host:port)");
    };
    if scheme != "tcp" && scheme != "udp" {
        return fail("url scheme must be tcp:// or udp://");
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        return fail("url path must be empty");
    }
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok());
    if port.is_none() {
        return fail("url port is required");
    }
    Ok(())
}

fn pointer_str<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    doc.pointer(path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A few of Talos's validation rules (v1alpha1_validation.go) that matter for metal nodes;
/// from 1.14 the endpoint, install and DNS domain are read from their documents in `docs`.
fn talos_rules(
    doc: &Value,
    role: Role,
    contract: Contract,
    docs: &[Value],
) -> Result<(), RenderError> {
    let of_kind = |kind: &str, path: &str| {
        docs.iter()
            .filter(|d| kind_of(d) == Some(kind))
            .find_map(|d| pointer_str(d, path))
    };
    let documents = contract == Contract::V1_14;
    let fail = |m: &str| Err(RenderError::Invalid(m.to_string()));
    let machine_type = pointer_str(doc, "/machine/type").unwrap_or_default();
    let expected = if role == Role::Controlplane {
        "controlplane"
    } else {
        "worker"
    };
    if machine_type != expected {
        return Err(RenderError::Invalid(format!(
            "machine.type is '{machine_type}' but the machine is a {expected}"
        )));
    }
    if documents {
        if of_kind("KubeClusterConfig", "/endpoint").is_none() {
            return fail("a KubeClusterConfig document with the endpoint is required");
        }
        let install_documents = docs
            .iter()
            .filter(|d| kind_of(d) == Some("UnattendedInstallConfig"))
            .count();
        if install_documents > 1 {
            return fail("more than one UnattendedInstallConfig document");
        }
        if install_documents == 1
            && of_kind(
                "UnattendedInstallConfig",
                "/provisioning/diskSelector/match",
            )
            .is_none()
        {
            return fail("UnattendedInstallConfig needs provisioning.diskSelector.match");
        }
    } else {
        if pointer_str(doc, "/cluster/controlPlane/endpoint").is_none() {
            return fail("cluster.controlPlane.endpoint is required");
        }
        if pointer_str(doc, "/machine/install/disk").is_none()
            && doc.pointer("/machine/install/diskSelector").is_none()
        {
            return fail(
                "machine.install.disk or machine.install.diskSelector is required on metal",
            );
        }
    }
    let domain = if documents {
        of_kind("KubeNetworkConfig", "/dnsDomain")
    } else {
        pointer_str(doc, "/cluster/network/dnsDomain")
    };
    if let Some(domain) = domain {
        if !is_dns_name(domain) {
            return Err(RenderError::Invalid(format!(
                "cluster.network.dnsDomain '{domain}' is not a DNS name"
            )));
        }
    }
    if pointer_str(doc, "/machine/ca/crt").is_none() {
        return fail("machine.ca.crt is required");
    }
    if role == Role::Controlplane {
        if pointer_str(doc, "/machine/ca/key").is_none() {
            return fail("a control plane needs machine.ca.key");
        }
    } else {
        if pointer_str(doc, "/machine/ca/key").is_some() {
            return fail("a worker must not carry machine.ca.key");
        }
        if doc.pointer("/cluster/etcd").is_some() {
            return fail("cluster.etcd is only for control planes");
        }
        let has_vip = doc
            .pointer("/machine/network/interfaces")
            .and_then(Value::as_array)
            .is_some_and(|list| list.iter().any(|i| i.get("vip").is_some()));
        if has_vip {
            return fail("a VIP can only be configured on control planes");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory(version: &str, arch: Arch, schematic: &str) -> Installers {
        let mut installers = Installers::default();
        installers.factory.insert(
            (version.to_string(), arch),
            FactorySchematic {
                host: "factory.talos.dev".into(),
                schematic: schematic.into(),
            },
        );
        installers
    }

    #[test]
    fn the_installer_is_the_clusters_then_the_boot_assets_schematics_then_talosctls() {
        let mut installers = factory("v1.13.9", Arch::Amd64, "abc");
        assert_eq!(
            installers.pick("v1.13.9", Arch::Amd64),
            (
                "factory.talos.dev/metal-installer/abc:v1.13.9".to_string(),
                InstallerSource::Factory {
                    schematic: "abc".into()
                }
            )
        );
        assert_eq!(
            installers.pick("v1.13.9", Arch::Arm64),
            (
                "ghcr.io/siderolabs/installer:v1.13.9".to_string(),
                InstallerSource::TalosDefault
            ),
            "arm64 assets not from the factory: the vanilla installer"
        );
        assert_eq!(installers.pick("v1.14.0-rc.1", Arch::Amd64).0, "");
        installers.cluster = Some((
            "factory.talos.dev/installer/def:v1.13.9".into(),
            "v1.13.9".into(),
        ));
        assert_eq!(
            installers.pick("v1.12.11", Arch::Amd64),
            (
                "factory.talos.dev/installer/def:v1.12.11".to_string(),
                InstallerSource::Cluster
            ),
            "the cluster's, retagged for a pinned version"
        );
    }
}
