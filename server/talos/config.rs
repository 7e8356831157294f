//! Machine configs: what `talosctl gen config` would write for a cluster, plus each node's own
//! hostname, static address on the NIC selected by its MAC, VIP, install disk and image, then
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

use crate::model::{Ipv4Cidr, Mac, Role};
use crate::talos::minor_version;
use crate::talos::patch::{self, Patch};

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

pub const DEFAULT_INSTALL_DISK: &str = "/dev/sda";

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
    pub install_image: String,
    pub pod_subnets: Vec<String>,
    pub service_subnets: Vec<String>,
    pub dns_domain: String,
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
    pub install_disk: Option<String>,
    pub wipe: bool,
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

/// The documents `talosctl gen config` writes for `role` (no per-node settings yet, apart from
/// the install disk and image it also fills in), key order as Talos emits it: the v1alpha1
/// document, then from 1.12 a `HostnameConfig`.
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
        install(
            contract,
            DEFAULT_INSTALL_DISK,
            &cluster.install_image,
            false,
        ),
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

/// `machine.install` as `gen config` writes it (an empty image is left out).
fn install(contract: Contract, disk: &str, image: &str, wipe: bool) -> Value {
    let mut install = Map::new();
    install.insert("disk".into(), json!(disk));
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
    let disk = node.install_disk.as_deref().unwrap_or(DEFAULT_INSTALL_DISK);
    if contract == Contract::V1_14 {
        let mut installer = Map::new();
        if !cluster.install_image.is_empty() {
            installer.insert("image".into(), json!(cluster.install_image));
        }
        let unattended = document(
            "UnattendedInstallConfig",
            json!({
                "installer": installer,
                "provisioning": {
                    "diskSelector": { "match": format!("disk.dev_path == \"{disk}\"") },
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
        machine_of(docs)?.insert(
            "install".into(),
            install(contract, disk, &cluster.install_image, node.wipe),
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
    let role_patches = match node.role {
        Role::Controlplane => &patches.controlplane,
        _ => &patches.worker,
    };
    for level in [&patches.cluster, role_patches, &patches.machine] {
        patch::apply_all(&mut docs, level)?;
    }
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
    if role != Role::Controlplane && has("Layer2VIPConfig") {
        return Err(RenderError::Invalid(
            "a VIP (Layer2VIPConfig) can only be configured on control planes".into(),
        ));
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
        if of_kind(
            "UnattendedInstallConfig",
            "/provisioning/diskSelector/match",
        )
        .is_none()
        {
            return fail(
                "an UnattendedInstallConfig document with provisioning.diskSelector is required \
                 (bootplane installs Talos to disk)",
            );
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
