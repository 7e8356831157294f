//! The documents `talosctl gen config` writes, up to 1.13, and the parts every line shares.

use serde_json::{json, Map, Value};

use crate::model::Role;

use super::base_v1_14::base_documents_v1_14;
use super::install::install;
use super::{endpoint_host, ClusterSpec, ConfigSecrets, Contract, RenderError};

/// A document of kind `kind` (apiVersion v1alpha1) with `fields` after its header.
pub(super) fn document(kind: &str, fields: Value) -> Value {
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
pub(super) fn pem(b64: &str, what: &str) -> Result<String, RenderError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| RenderError::Input(format!("the secrets bundle's {what} is not base64 PEM")))
}

/// The API server's admission control (Pod Security) and audit policy, as `gen config` writes
/// them on every line.
pub(super) fn admission_and_audit() -> Map<String, Value> {
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
