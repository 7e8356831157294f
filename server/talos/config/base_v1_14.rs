//! The documents `talosctl gen config` writes for Talos 1.14.

use serde_json::{json, Map, Value};

use crate::model::Role;

use super::base::{admission_and_audit, document, pem};
use super::{ClusterSpec, ConfigSecrets, RenderError};

/// The documents `talosctl gen config` writes for Talos 1.14, in its order (the install is
/// per node, so it is added with the node's settings).
pub(super) fn base_documents_v1_14(
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
