//! Machine configs: what `talosctl gen config` would write for a cluster, plus each node's own
//! hostname, static address on the NIC selected by its MAC, VIP, install disk and image, then
//! the cluster's patches (cluster → role → machine), then validation against Talos's schema.

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::model::{Ipv4Cidr, Mac, Role};
use crate::talos::minor_version;
use crate::talos::patch::{self, Patch};

/// Talos versions whose config contract bootplane renders (`talosctl gen config` output for
/// 1.8 – 1.11 is identical).
pub const SUPPORTED: &[(u32, u32)] = &[(1, 8), (1, 9), (1, 10), (1, 11)];

/// Default Kubernetes version per Talos minor (`DefaultKubernetesVersion` of its newest patch).
pub fn default_kubernetes_version(talos_version: &str) -> Option<&'static str> {
    match minor_version(talos_version)? {
        (1, 8) => Some("1.31.4"),
        (1, 9) => Some("1.32.4"),
        (1, 10) => Some("1.33.6"),
        (1, 11) => Some("1.34.1"),
        _ => None,
    }
}

/// talosctl's default installer image for a Talos version.
pub fn default_install_image(talos_version: &str) -> String {
    format!("ghcr.io/siderolabs/installer:{talos_version}")
}

pub const DEFAULT_INSTALL_DISK: &str = "/dev/sda";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("Talos {0} is not supported: bootplane renders configs for Talos 1.8 to 1.11")]
    UnsupportedVersion(String),
    #[error("{0}")]
    Patch(#[from] patch::PatchError),
    #[error("the rendered config is not valid for Talos: {0}")]
    Invalid(String),
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

fn check_version(version: &str) -> Result<(), RenderError> {
    match minor_version(version) {
        Some(v) if SUPPORTED.contains(&v) => Ok(()),
        _ => Err(RenderError::UnsupportedVersion(version.to_string())),
    }
}

/// The config `talosctl gen config` writes for `role` (no per-node settings yet), as the
/// single v1alpha1 document, key order as Talos emits it.
pub fn base_config(
    cluster: &ClusterSpec,
    secrets: &ConfigSecrets,
    role: Role,
) -> Result<Value, RenderError> {
    check_version(&cluster.talos_version)?;
    let host = endpoint_host(&cluster.endpoint)?;
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
    machine.insert("network".into(), json!({}));
    machine.insert(
        "install".into(),
        json!({
            "disk": DEFAULT_INSTALL_DISK,
            "image": cluster.install_image,
            "wipe": false,
        }),
    );
    machine.insert(
        "features".into(),
        json!({
            "rbac": true,
            "stableHostname": true,
            "apidCheckExtKeyUsage": true,
            "diskQuotaSupport": true,
            "kubePrism": { "enabled": true, "port": 7445 },
            "hostDNS": { "enabled": true, "forwardKubeDNSToHost": true },
        }),
    );
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
        c.insert(
            "apiServer".into(),
            json!({
                "image": format!("registry.k8s.io/kube-apiserver:v{k8s}"),
                "certSANs": [host],
                "disablePodSecurityPolicy": true,
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
            }),
        );
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
    Ok(Value::Object(doc))
}

/// Sets the node's own fields on a base config.
fn apply_node(doc: &mut Value, cluster: &ClusterSpec, node: &NodeSpec) -> Result<(), RenderError> {
    let machine = doc
        .get_mut("machine")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| RenderError::Input("base config has no machine section".into()))?;
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
    if let (Role::Controlplane, Some(vip)) = (node.role, cluster.vip) {
        interface.insert("vip".into(), json!({ "ip": vip.to_string() }));
    }
    let mut network = Map::new();
    network.insert("hostname".into(), json!(node.hostname));
    network.insert("interfaces".into(), json!([Value::Object(interface)]));
    if !node.dns.is_empty() {
        let dns: Vec<String> = node.dns.iter().map(|d| d.to_string()).collect();
        network.insert("nameservers".into(), json!(dns));
    }
    machine.insert("network".into(), Value::Object(network));
    machine.insert(
        "install".into(),
        json!({
            "disk": node.install_disk.as_deref().unwrap_or(DEFAULT_INSTALL_DISK),
            "image": cluster.install_image,
            "wipe": node.wipe,
        }),
    );
    Ok(())
}

/// Renders `node`'s config documents: base, node settings, patches, validation.
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
    let mut doc = base_config(cluster, secrets, node.role)?;
    apply_node(&mut doc, cluster, node)?;
    let mut docs = vec![doc];
    let role_patches = match node.role {
        Role::Controlplane => &patches.controlplane,
        _ => &patches.worker,
    };
    for level in [&patches.cluster, role_patches, &patches.machine] {
        patch::apply_all(&mut docs, level)?;
    }
    validate(&docs, node.role)?;
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

struct Validators {
    v1alpha1: jsonschema::Validator,
    any_document: jsonschema::Validator,
}

fn validators() -> Result<&'static Validators, RenderError> {
    static CELL: OnceLock<Result<Validators, String>> = OnceLock::new();
    let built = CELL.get_or_init(|| {
        let root: Value = serde_json::from_str(SCHEMA_V1_11).map_err(|e| e.to_string())?;
        let mut v1alpha1 = root.clone();
        if let Some(obj) = v1alpha1.as_object_mut() {
            obj.remove("oneOf");
            obj.insert("$ref".into(), json!("#/$defs/v1alpha1.Config"));
        }
        Ok(Validators {
            v1alpha1: jsonschema::validator_for(&v1alpha1).map_err(|e| e.to_string())?,
            any_document: jsonschema::validator_for(&root).map_err(|e| e.to_string())?,
        })
    });
    built
        .as_ref()
        .map_err(|e| RenderError::Invalid(format!("schema failed to load: {e}")))
}

/// Checks each document against Talos's schema (after removing `persist`, which the schema
/// does not describe), plus the rules Talos's own validation adds that a schema cannot say.
pub fn validate(docs: &[Value], role: Role) -> Result<(), RenderError> {
    let validators = validators()?;
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
        let validator = if is_v1alpha1 {
            &validators.v1alpha1
        } else {
            &validators.any_document
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
            return Err(RenderError::Invalid(format!(
                "document {}: {}",
                i + 1,
                errors.join("; ")
            )));
        }
        if is_v1alpha1 {
            talos_rules(&doc, role)?;
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

/// A few of Talos's validation rules (v1alpha1_validation.go) that matter for metal nodes.
fn talos_rules(doc: &Value, role: Role) -> Result<(), RenderError> {
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
    if pointer_str(doc, "/cluster/controlPlane/endpoint").is_none() {
        return fail("cluster.controlPlane.endpoint is required");
    }
    if pointer_str(doc, "/machine/install/disk").is_none()
        && doc.pointer("/machine/install/diskSelector").is_none()
    {
        return fail("machine.install.disk or machine.install.diskSelector is required on metal");
    }
    if let Some(domain) = pointer_str(doc, "/cluster/network/dnsDomain") {
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
