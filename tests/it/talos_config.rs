//! Rendered machine configs equal `talosctl gen config` output (Talos's own stability fixtures
//! from shared/talos/stability/, made from its test secrets.yaml) for each line that has them,
//! validate against Talos's own JSON schema (v1.11, from shared/) document by document with
//! `persist` removed as Talos's schema test does, and carry each node's own values.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

use bootplane::model::{Mac, NodeSubnets, ReportTargets, Role};
use bootplane::ops::materials::config_secrets;
use bootplane::talos::config::{
    base_config, render, render_documents, to_yaml, ClusterSpec, ConfigSecrets, Installers,
    NodeSpec, Patches, RenderError, DEFAULT_INSTALL_DISK_MATCH,
};
use bootplane::talos::patch::{self, Patch};
use bootplane::talos::secrets::SecretsBundle;
use serde_json::Value;

fn bundle() -> &'static SecretsBundle {
    static B: OnceLock<SecretsBundle> = OnceLock::new();
    B.get_or_init(|| SecretsBundle::generate("v1.11.6", SystemTime::now()).unwrap())
}

fn secrets() -> ConfigSecrets {
    config_secrets(bundle())
}

/// Talos's published schema of `version`'s line, read from the reference material beside the
/// project (shared/talos/config.schema.json is v1.11.6).
fn schema(version: &str) -> &'static jsonschema::Validator {
    static V1_11: OnceLock<jsonschema::Validator> = OnceLock::new();
    static V1_12: OnceLock<jsonschema::Validator> = OnceLock::new();
    static V1_13: OnceLock<jsonschema::Validator> = OnceLock::new();
    static V1_14: OnceLock<jsonschema::Validator> = OnceLock::new();
    let (cell, file) = match minor(version) {
        14 => (&V1_14, "config.schema.v1.14.0-rc.1.json"),
        12 => (&V1_12, "config.schema.v1.12.11.json"),
        13 => (&V1_13, "config.schema.v1.13.9.json"),
        _ => (&V1_11, "config.schema.json"),
    };
    cell.get_or_init(|| {
        let schema: Value = serde_json::from_str(&shared(file)).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    })
}

/// The minor of `v1.<minor>.<patch>`.
fn minor(version: &str) -> u32 {
    version.split('.').nth(1).unwrap().parse().unwrap()
}

fn assert_schema_valid(docs: &[Value], version: &str) {
    for doc in docs {
        let mut doc = doc.clone();
        if let Some(obj) = doc.as_object_mut() {
            obj.remove("persist");
        }
        let errors: Vec<String> = schema(version)
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "schema errors: {errors:#?}\n{doc:#}");
    }
}

fn cluster(version: &str) -> ClusterSpec {
    ClusterSpec {
        name: "homelab".into(),
        endpoint: "https://192.168.50.10:6443".into(),
        vip: Some(Ipv4Addr::new(192, 168, 50, 10)),
        talos_version: version.into(),
        kubernetes_version: "1.34.1".into(),
        install_image: format!("ghcr.io/siderolabs/installer:{version}"),
        installers: Installers::default(),
        pod_subnets: vec!["10.244.0.0/16".into()],
        service_subnets: vec!["10.96.0.0/12".into()],
        dns_domain: "cluster.local".into(),
        node_subnets: NodeSubnets::Auto,
        report_to: ReportTargets {
            events_endpoint: Some("192.168.50.2:4002".into()),
            kernel_log_url: Some("tcp://192.168.50.2:4001".into()),
        },
        nameservers: vec![],
    }
}

fn node(role: Role, n: u8) -> NodeSpec {
    NodeSpec {
        mac: Mac([0x52, 0x54, 0, 0x77, 0, n]),
        role,
        hostname: format!(
            "{}-{n}",
            if role == Role::Controlplane {
                "cp"
            } else {
                "w"
            }
        ),
        ip: format!("192.168.50.{}/24", 10 + n).parse().unwrap(),
        gateway: Some(Ipv4Addr::new(192, 168, 50, 1)),
        dns: vec![Ipv4Addr::new(192, 168, 50, 1), Ipv4Addr::new(9, 9, 9, 9)],
        install_disk: Some("/dev/nvme0n1".into()),
        wipe: n.is_multiple_of(2),
        diskless: false,
    }
}

fn patches(cluster: &[&str], cp: &[&str], worker: &[&str], machine: &[&str]) -> Patches {
    let parse = |list: &[&str]| {
        list.iter()
            .enumerate()
            .map(|(i, text)| (format!("p{i}"), Patch::parse(text).unwrap()))
            .collect()
    };
    Patches {
        cluster: parse(cluster),
        controlplane: parse(cp),
        worker: parse(worker),
        machine: parse(machine),
    }
}

fn at<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("{pointer} missing in {doc:#}"))
}

fn assert_node_values(doc: &Value, cluster: &ClusterSpec, n: &NodeSpec) {
    assert_eq!(
        at(doc, "/machine/type"),
        if n.role == Role::Controlplane {
            "controlplane"
        } else {
            "worker"
        }
    );
    assert_eq!(at(doc, "/machine/network/hostname"), n.hostname.as_str());
    let iface = at(doc, "/machine/network/interfaces/0");
    assert_eq!(
        at(iface, "/deviceSelector/hardwareAddr"),
        n.mac.to_string().as_str()
    );
    assert_eq!(at(iface, "/addresses/0"), n.ip.to_string().as_str());
    assert_eq!(at(iface, "/routes/0/network"), "0.0.0.0/0");
    assert_eq!(at(iface, "/routes/0/gateway"), "192.168.50.1");
    assert_eq!(at(doc, "/machine/network/nameservers/1"), "9.9.9.9");
    if n.role == Role::Controlplane {
        assert_eq!(at(iface, "/vip/ip"), "192.168.50.10");
        assert_eq!(at(doc, "/cluster/apiServer/certSANs/0"), "192.168.50.10");
    } else {
        assert!(iface.get("vip").is_none(), "worker must not get the VIP");
    }
    assert_common_values(doc, cluster, n);
}

/// The values every line carries in its v1alpha1 document.
fn assert_common_values(doc: &Value, cluster: &ClusterSpec, n: &NodeSpec) {
    let s = secrets();
    match n.role {
        Role::Controlplane => {
            assert_eq!(at(doc, "/machine/ca/key"), s.os_ca.key.as_str());
            assert_eq!(at(doc, "/cluster/etcd/ca/crt"), s.etcd_ca.crt.as_str());
            assert_eq!(
                at(doc, "/cluster/aggregatorCA/crt"),
                s.aggregator_ca.crt.as_str()
            );
            assert_eq!(
                at(doc, "/cluster/serviceAccount/key"),
                s.service_account_key.as_str()
            );
            assert_eq!(
                at(doc, "/cluster/secretboxEncryptionSecret"),
                s.secretbox_secret.as_deref().unwrap()
            );
        }
        _ => {
            assert_eq!(at(doc, "/machine/ca/key"), "");
            assert_eq!(at(doc, "/cluster/ca/key"), "");
            for absent in [
                "/cluster/etcd",
                "/cluster/aggregatorCA",
                "/cluster/serviceAccount",
                "/cluster/apiServer",
                "/cluster/secretboxEncryptionSecret",
            ] {
                assert!(
                    doc.pointer(absent).is_none(),
                    "{absent} must not be in a worker config"
                );
            }
        }
    }
    assert_eq!(at(doc, "/machine/ca/crt"), s.os_ca.crt.as_str());
    assert_eq!(at(doc, "/machine/token"), s.trustd_token.as_str());
    assert_eq!(at(doc, "/cluster/ca/crt"), s.k8s_ca.crt.as_str());
    assert_eq!(at(doc, "/cluster/token"), s.bootstrap_token.as_str());
    assert_eq!(at(doc, "/cluster/id"), s.cluster_id.as_str());
    assert_eq!(
        at(doc, "/cluster/controlPlane/endpoint"),
        cluster.endpoint.as_str()
    );
    assert_eq!(at(doc, "/cluster/clusterName"), "homelab");
    assert_eq!(at(doc, "/machine/install/disk"), "/dev/nvme0n1");
    assert_eq!(
        at(doc, "/machine/install/image"),
        cluster.install_image.as_str()
    );
    assert_eq!(at(doc, "/machine/install/wipe"), &Value::Bool(n.wipe));
    assert_eq!(
        at(doc, "/machine/kubelet/image"),
        "ghcr.io/siderolabs/kubelet:v1.34.1"
    );
    assert_eq!(
        at(doc, "/machine/kubelet/nodeIP/validSubnets"),
        &serde_json::json!(["192.168.50.0/24"]),
        "the kubelet takes its node IP from the node's own subnet"
    );
    if n.role == Role::Controlplane {
        assert_eq!(
            at(doc, "/cluster/etcd/advertisedSubnets"),
            &serde_json::json!(["192.168.50.0/24"]),
            "etcd advertises an address of the node's own subnet"
        );
    }
}

/// The report-in documents: bootplane's event sink and kernel log receiver, as `cluster()`
/// names them, after every other document.
fn assert_report_documents(docs: &[Value]) {
    let n = docs.len();
    assert_eq!(
        &docs[n - 2..],
        [
            serde_json::json!({
                "apiVersion": "v1alpha1",
                "kind": "EventSinkConfig",
                "endpoint": "192.168.50.2:4002",
            }),
            serde_json::json!({
                "apiVersion": "v1alpha1",
                "kind": "KmsgLogConfig",
                "name": "bootplane",
                "url": "tcp://192.168.50.2:4001",
            }),
        ]
    );
}

/// The one document of `kind` in `docs`.
fn doc_of<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} document expected in {docs:#?}");
    found[0]
}

/// From 1.12 on: the node's settings are documents, value by value, and none of the
/// v1alpha1 fields they deprecate is set.
fn assert_node_documents(docs: &[Value], cluster: &ClusterSpec, n: &NodeSpec) {
    let v1alpha1 = &docs[0];
    assert_eq!(
        at(v1alpha1, "/machine/type"),
        if n.role == Role::Controlplane {
            "controlplane"
        } else {
            "worker"
        }
    );
    match minor(&cluster.talos_version) {
        12 => assert_eq!(at(v1alpha1, "/machine/network"), &serde_json::json!({})),
        _ => assert!(v1alpha1.pointer("/machine/network").is_none()),
    }
    for absent in [
        "/machine/features/rbac",
        "/machine/features/stableHostname",
        "/machine/features/apidCheckExtKeyUsage",
        "/cluster/apiServer/certSANs",
        "/cluster/apiServer/disablePodSecurityPolicy",
    ] {
        assert!(v1alpha1.pointer(absent).is_none(), "{absent} is set");
    }
    assert_eq!(
        at(v1alpha1, "/machine/install/grubUseUKICmdline"),
        &Value::Bool(true)
    );
    assert_eq!(
        doc_of(docs, "HostnameConfig"),
        &serde_json::json!({
            "apiVersion": "v1alpha1",
            "kind": "HostnameConfig",
            "hostname": n.hostname,
        }),
        "a static hostname and no auto"
    );
    assert_eq!(
        doc_of(docs, "LinkAliasConfig"),
        &serde_json::json!({
            "apiVersion": "v1alpha1",
            "kind": "LinkAliasConfig",
            "name": "bootnic",
            "selector": { "match": format!("mac(link.permanent_addr) == \"{}\"", n.mac) },
        })
    );
    assert_eq!(
        doc_of(docs, "LinkConfig"),
        &serde_json::json!({
            "apiVersion": "v1alpha1",
            "kind": "LinkConfig",
            "name": "bootnic",
            "addresses": [{ "address": n.ip.to_string() }],
            "routes": [{ "destination": "0.0.0.0/0", "gateway": "192.168.50.1" }],
        })
    );
    assert_eq!(
        doc_of(docs, "ResolverConfig"),
        &serde_json::json!({
            "apiVersion": "v1alpha1",
            "kind": "ResolverConfig",
            "nameservers": [{ "address": "192.168.50.1" }, { "address": "9.9.9.9" }],
        })
    );
    let vips: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Layer2VIPConfig")
        .collect();
    if n.role == Role::Controlplane {
        assert_eq!(
            vips,
            [&serde_json::json!({
                "apiVersion": "v1alpha1",
                "kind": "Layer2VIPConfig",
                "name": "192.168.50.10",
                "link": "bootnic",
            })]
        );
    } else {
        assert!(vips.is_empty(), "worker must not get the VIP");
    }
    assert_common_values(v1alpha1, cluster, n);
}

#[test]
fn every_supported_version_and_role_validates_against_talos_schema() {
    for version in ["v1.8.4", "v1.9.6", "v1.10.9", "v1.11.6"] {
        let c = cluster(version);
        for (role, n) in [(Role::Controlplane, 1), (Role::Worker, 4)] {
            let node = node(role, n);
            let docs = render_documents(&c, &secrets(), &node, &Patches::default()).unwrap();
            assert_eq!(docs.len(), 3);
            assert_eq!(docs[0]["persist"], Value::Bool(true));
            assert_schema_valid(&docs, version);
            assert_node_values(&docs[0], &c, &node);
            assert_report_documents(&docs);
        }
    }
}

#[test]
fn from_1_12_node_settings_are_documents_valid_for_the_line() {
    for version in ["v1.12.11", "v1.13.9"] {
        let c = cluster(version);
        for (role, n) in [(Role::Controlplane, 1), (Role::Worker, 4)] {
            let node = node(role, n);
            let docs = render_documents(&c, &secrets(), &node, &Patches::default()).unwrap();
            let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
            let mut expected = vec![
                "HostnameConfig",
                "LinkAliasConfig",
                "LinkConfig",
                "Layer2VIPConfig",
                "ResolverConfig",
                "EventSinkConfig",
                "KmsgLogConfig",
            ];
            if role == Role::Worker {
                expected.retain(|k| *k != "Layer2VIPConfig");
            }
            assert_eq!(kinds, expected, "{version} {role}");
            assert_eq!(docs[0]["persist"], Value::Bool(true));
            assert_schema_valid(&docs, version);
            assert_node_documents(&docs, &c, &node);
            assert_report_documents(&docs);
        }
    }
}

#[test]
fn without_gateway_or_nameservers_no_route_or_resolver_document() {
    let c = cluster("v1.13.9");
    let mut n = node(Role::Worker, 4);
    n.gateway = None;
    n.dns.clear();
    let docs = render_documents(&c, &secrets(), &n, &Patches::default()).unwrap();
    assert!(doc_of(&docs, "LinkConfig").get("routes").is_none());
    assert!(docs.iter().all(|d| d["kind"] != "ResolverConfig"));
    assert_schema_valid(&docs, "v1.13.9");
}

#[test]
fn configs_and_patches_validate_against_their_own_lines_schema() {
    let hostname = "machine:\n  network:\n    hostname: other\n";
    let n = node(Role::Worker, 4);
    let p = patches(&[hostname], &[], &[], &[]);
    assert!(render(&cluster("v1.11.6"), &secrets(), &n, &p).is_ok());
    let err = render(&cluster("v1.13.9"), &secrets(), &n, &p).unwrap_err();
    assert!(err.to_string().contains("network"), "{err}");

    let kubespan = "apiVersion: v1alpha1\nkind: KubeSpanConfig\nenabled: true\n";
    let p = patches(&[kubespan], &[], &[], &[]);
    let docs = render_documents(&cluster("v1.13.9"), &secrets(), &n, &p).unwrap();
    assert_eq!(
        doc_of(&docs, "KubeSpanConfig")["enabled"],
        Value::Bool(true)
    );
    assert_schema_valid(&docs, "v1.13.9");
    let err = render(&cluster("v1.12.11"), &secrets(), &n, &p).unwrap_err();
    assert!(
        err.to_string().contains("Talos 1.12 has no KubeSpanConfig"),
        "{err}"
    );

    let cases = [
        (
            "apiVersion: v1alpha1\nkind: HostnameConfig\nauto: sometimes\n",
            "HostnameConfig",
        ),
        (
            "apiVersion: v1alpha1\nkind: LinkConfig\nname: bootnic\naddresses:\n  - address: not-an-ip\n",
            "LinkConfig",
        ),
        (
            "apiVersion: v1alpha1\nkind: ResolverConfig\nnameservers: [9.9.9.9]\n",
            "ResolverConfig",
        ),
    ];
    for (text, expected) in cases {
        let p = patches(&[text], &[], &[], &[]);
        let err = render(&cluster("v1.12.11"), &secrets(), &n, &p).unwrap_err();
        assert!(matches!(err, RenderError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains(expected), "{text}: {err}");
    }
}

#[test]
fn a_document_and_its_deprecated_v1alpha1_field_are_never_both_set() {
    let c = cluster("v1.12.11");
    let cases = [
        ("machine:\n  network:\n    hostname: other\n", "hostname"),
        (
            "machine:\n  network:\n    nameservers: [1.1.1.1]\n",
            "nameservers",
        ),
        (
            "machine:\n  features:\n    stableHostname: true\n",
            "stableHostname",
        ),
    ];
    for (text, expected) in cases {
        let p = patches(&[text], &[], &[], &[]);
        let err = render(&c, &secrets(), &node(Role::Controlplane, 1), &p).unwrap_err();
        assert!(err.to_string().contains(expected), "{text}: {err}");
    }
    let vip = "apiVersion: v1alpha1\nkind: Layer2VIPConfig\nname: 192.168.50.99\nlink: bootnic\n";
    let p = patches(&[vip], &[], &[], &[]);
    let err = render(&c, &secrets(), &node(Role::Worker, 4), &p).unwrap_err();
    assert!(err.to_string().contains("control planes"), "{err}");
}

#[test]
fn patched_configs_validate_and_apply_in_order_cluster_role_machine() {
    let c = cluster("v1.11.6");
    let p = patches(
        &["machine:\n  time:\n    servers: [time.cloudflare.com]\ncluster:\n  allowSchedulingOnControlPlanes: true\n"],
        &["machine:\n  install:\n    disk: /dev/sdb\n"],
        &["- op: add\n  path: /machine/nodeLabels\n  value: {role: worker}\n"],
        &["machine:\n  install:\n    disk: /dev/sdc\n  certSANs: [cp-1.lab]\n"],
    );
    let cp = render_documents(&c, &secrets(), &node(Role::Controlplane, 1), &p).unwrap();
    assert_schema_valid(&cp, "v1.11.6");
    assert_eq!(
        at(&cp[0], "/machine/install/disk"),
        "/dev/sdc",
        "machine patch comes last"
    );
    assert_eq!(at(&cp[0], "/machine/certSANs/0"), "cp-1.lab");
    assert_eq!(at(&cp[0], "/machine/time/servers/0"), "time.cloudflare.com");
    assert!(
        cp[0].pointer("/machine/nodeLabels/role").is_none(),
        "worker patch must not reach control planes"
    );
    let w = render_documents(&c, &secrets(), &node(Role::Worker, 4), &p).unwrap();
    assert_schema_valid(&w, "v1.11.6");
    assert_eq!(at(&w[0], "/machine/install/disk"), "/dev/sdc");
    assert_eq!(at(&w[0], "/machine/nodeLabels/role"), "worker");
}

#[test]
fn patches_that_break_the_config_are_refused_with_the_reason() {
    let c = cluster("v1.11.6");
    let n = node(Role::Worker, 4);
    let cases = [
        ("machine:\n  instal:\n    disk: /dev/sda\n", "instal"),
        ("machine:\n  network:\n    interfaces:\n      - interface: eth0\n        vip:\n          ip: 192.168.50.99\n", "VIP"),
        ("- op: remove\n  path: /machine/install\n", "install"),
        ("cluster:\n  network:\n    dnsDomain: 'bad domain'\n", "dnsDomain"),
        ("machine:\n  type: controlplane\n", "machine.type"),
        ("machine:\n  kubelet:\n    defaultRuntimeSeccompProfileEnabled: maybe\n", "defaultRuntimeSeccompProfileEnabled"),
        ("cluster:\n  network:\n    podSubnets: 10.0.0.0/8\n", "podSubnets"),
    ];
    for (text, expected) in cases {
        let p = patches(&[text], &[], &[], &[]);
        let err = render(&c, &secrets(), &n, &p).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(expected),
            "{text:?}: error '{msg}' should mention {expected}"
        );
        assert!(
            matches!(err, RenderError::Invalid(_) | RenderError::Patch(_)),
            "{err:?}"
        );
    }
}

#[test]
fn unsupported_versions_and_bad_endpoints_are_refused() {
    let mut c = cluster("v1.15.0");
    assert!(matches!(
        render(&c, &secrets(), &node(Role::Worker, 4), &Patches::default()),
        Err(RenderError::UnsupportedVersion(_))
    ));
    c.talos_version = "v1.11.6".into();
    for bad in ["http://10.0.0.1:6443", "https://10.0.0.1", "https://:6443"] {
        c.endpoint = bad.into();
        assert!(
            render(&c, &secrets(), &node(Role::Worker, 4), &Patches::default()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn rendered_yaml_parses_back_to_the_same_documents() {
    let c = cluster("v1.11.6");
    let n = node(Role::Controlplane, 2);
    let p = patches(
        &["apiVersion: v1alpha1\nkind: EventSinkConfig\nendpoint: '[192.168.50.2]:12345'\n"],
        &[],
        &[],
        &[],
    );
    let yaml = render(&c, &secrets(), &n, &p).unwrap();
    let docs = render_documents(&c, &secrets(), &n, &p).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["EventSinkConfig", "KmsgLogConfig"],
        "the patch's event sink stands in for bootplane's"
    );
    assert_eq!(docs[1]["endpoint"], "[192.168.50.2]:12345");
    let parsed: Vec<Value> = yaml
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap())
        .collect();
    assert_eq!(parsed, docs);
    assert_schema_valid(&parsed, "v1.11.6");
}

/// The reference material beside the project.
fn shared(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/talos")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (shared/ must sit beside the project)",
            path.display()
        )
    })
}

/// A `talosctl gen config` fixture of Talos's stability test, as documents.
fn fixture(line: &str, name: &str) -> Vec<Value> {
    let text = shared(&format!("stability/{line}/{name}.yaml"));
    // Each document keeps its final newline (a block scalar at its end keeps it too).
    text.split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str::<Value>(&format!("{doc}\n")).unwrap())
        .collect()
}

/// The secrets of Talos's stability fixtures.
fn fixture_secrets() -> ConfigSecrets {
    config_secrets(&SecretsBundle::from_yaml(&shared("stability/secrets.yaml")).unwrap())
}

/// The stability test's inputs: cluster `base`, endpoint `https://base:6443`, Kubernetes
/// 1.28.0, no installer image.
fn fixture_cluster(version: &str, dns_domain: &str) -> ClusterSpec {
    ClusterSpec {
        name: "base".into(),
        endpoint: "https://base:6443".into(),
        vip: None,
        talos_version: version.into(),
        kubernetes_version: "1.28.0".into(),
        install_image: String::new(),
        installers: Installers::default(),
        pod_subnets: vec!["10.244.0.0/16".into()],
        service_subnets: vec!["10.96.0.0/12".into()],
        dns_domain: dns_domain.into(),
        node_subnets: NodeSubnets::Off,
        report_to: ReportTargets::default(),
        nameservers: vec![],
    }
}

fn role_name(role: Role) -> &'static str {
    if role == Role::Controlplane {
        "controlplane"
    } else {
        "worker"
    }
}

#[test]
fn base_configs_equal_talosctl_gen_config_field_for_field_in_key_order() {
    for (version, line) in [
        ("v1.12.11", "v1.12"),
        ("v1.13.9", "v1.13"),
        ("v1.14.0-rc.1", "v1.14"),
    ] {
        let c = fixture_cluster(version, "cluster.local");
        for role in [Role::Controlplane, Role::Worker] {
            // The install disk is per node (bootplane adds the operator's disk or its default
            // selector with the node's settings), so the base has none, as the stability
            // test's inputs give none. From 1.14 the whole install is a per-node document.
            let docs = base_config(&c, &fixture_secrets(), role).unwrap();
            let expected = fixture(line, &format!("base-{}", role_name(role)));
            assert_eq!(
                to_yaml(&docs).unwrap(),
                to_yaml(&expected).unwrap(),
                "{version} {role}"
            );
        }
    }
}

/// The stability test's "overrides" inputs other than the DNS domain, as patches.
const OVERRIDES_MACHINE: &str = "machine:
  certSANs: [foo, bar]
  kubelet:
    extraMounts:
      - destination: /var/opt
        type: bind
        source: /var/opt
        options: [rshared]
  install:
    disk: /dev/vda
    extraKernelArgs: [foo=bar, bar=baz]
  sysctls:
    foo: bar
cluster:
  network:
    cni:
      name: custom
      urls: [https://example.com/cni.yaml]
---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: ghcr.io
endpoints:
  - url: https://ghcr.io.my-mirror.com
";

const OVERRIDES_CONTROLPLANE: &str = "cluster:
  controlPlane:
    localAPIServerPort: 5443
  apiServer:
    certSANs: [foo, bar]
  allowSchedulingOnControlPlanes: true
";

fn by_kind(mut docs: Vec<Value>) -> Vec<Value> {
    docs.sort_by_key(|d| d["kind"].as_str().unwrap_or_default().to_string());
    docs
}

#[test]
fn overridden_configs_equal_talosctl_gen_config_with_the_same_inputs() {
    for (version, line) in [("v1.12.11", "v1.12"), ("v1.13.9", "v1.13")] {
        let c = fixture_cluster(version, "example.com");
        for role in [Role::Controlplane, Role::Worker] {
            let mut docs = base_config(&c, &fixture_secrets(), role).unwrap();
            patch::apply(&mut docs, &Patch::parse(OVERRIDES_MACHINE).unwrap()).unwrap();
            if role == Role::Controlplane {
                patch::apply(&mut docs, &Patch::parse(OVERRIDES_CONTROLPLANE).unwrap()).unwrap();
            }
            let expected = fixture(line, &format!("overrides-{}", role_name(role)));
            assert_eq!(by_kind(docs), by_kind(expected), "{version} {role}");
        }
    }
}

/// The stability test's "overrides" inputs for 1.14 other than the DNS domain, as patches.
const OVERRIDES_V1_14: &str = "machine:
  certSANs: [foo, bar]
---
apiVersion: v1alpha1
kind: UnattendedInstallConfig
installer: {}
provisioning:
  diskSelector:
    match: disk.dev_path == \"/dev/vda\"
  wipe: false
---
apiVersion: v1alpha1
kind: SysctlConfig
params:
  foo: bar
---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: ghcr.io
endpoints:
  - url: https://ghcr.io.my-mirror.com
---
apiVersion: v1alpha1
kind: KubeletConfig
clusterDNS: [3.3.3.3]
";

const OVERRIDES_V1_14_CONTROLPLANE: &str = "apiVersion: v1alpha1
kind: KubeAPIServerConfig
apiPort: 5443
certExtraSANs: [foo, bar]
---
apiVersion: v1alpha1
kind: KubeExternalManifestConfig
name: custom-cni
url: https://example.com/cni.yaml
";

#[test]
fn overridden_1_14_configs_equal_talosctl_gen_config_with_the_same_inputs() {
    let c = fixture_cluster("v1.14.0-rc.1", "example.com");
    for role in [Role::Controlplane, Role::Worker] {
        let mut docs = base_config(&c, &fixture_secrets(), role).unwrap();
        patch::apply(&mut docs, &Patch::parse(OVERRIDES_V1_14).unwrap()).unwrap();
        if role == Role::Controlplane {
            patch::apply(
                &mut docs,
                &Patch::parse(OVERRIDES_V1_14_CONTROLPLANE).unwrap(),
            )
            .unwrap();
            // A custom CNI drops flannel; scheduling on control planes drops their taint.
            docs.retain(|d| d["kind"] != "KubeFlannelCNIConfig");
            let node = docs
                .iter_mut()
                .find(|d| d["kind"] == "KubeNodeConfig")
                .unwrap();
            node.as_object_mut().unwrap().shift_remove("taints");
        }
        let expected = fixture("v1.14", &format!("overrides-{}", role_name(role)));
        assert_eq!(by_kind(docs), by_kind(expected), "{role}");
    }
}

#[test]
fn talos_1_14_fixtures_and_rendered_configs_validate_against_its_schema() {
    for name in [
        "base-controlplane",
        "base-worker",
        "overrides-controlplane",
        "overrides-worker",
    ] {
        let docs = fixture("v1.14", name);
        let role = if name.ends_with("controlplane") {
            Role::Controlplane
        } else {
            Role::Worker
        };
        // Talos's own output passes bootplane's validation (the install is added per node).
        let mut docs = docs;
        if !docs.iter().any(|d| d["kind"] == "UnattendedInstallConfig") {
            docs.push(serde_json::json!({
                "apiVersion": "v1alpha1",
                "kind": "UnattendedInstallConfig",
                "provisioning": { "diskSelector": { "match": "disk.dev_path == \"/dev/sda\"" } },
            }));
        }
        bootplane::talos::config::validate(&docs, role, bootplane::talos::config::Contract::V1_14)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn talos_1_14_node_settings_are_documents() {
    let version = "v1.14.0-rc.1";
    let c = cluster(version);
    for (role, n) in [(Role::Controlplane, 1), (Role::Worker, 4)] {
        let node = node(role, n);
        let docs = render_documents(&c, &secrets(), &node, &Patches::default()).unwrap();
        let v1alpha1 = &docs[0];
        assert!(v1alpha1.pointer("/machine/install").is_none());
        assert!(v1alpha1.pointer("/machine/network").is_none());
        assert_eq!(at(v1alpha1, "/machine/type"), role_name(role));
        assert_eq!(
            doc_of(&docs, "UnattendedInstallConfig"),
            &serde_json::json!({
                "apiVersion": "v1alpha1",
                "kind": "UnattendedInstallConfig",
                "installer": { "image": c.install_image },
                "provisioning": {
                    "diskSelector": { "match": "disk.dev_path == \"/dev/nvme0n1\"" },
                    "wipe": node.wipe,
                },
            })
        );
        assert_eq!(
            docs[3]["kind"], "UnattendedInstallConfig",
            "after the discovery identity, where gen config puts it"
        );
        assert_eq!(
            doc_of(&docs, "ResolverConfig"),
            &serde_json::json!({
                "apiVersion": "v1alpha1",
                "kind": "ResolverConfig",
                "nameservers": [{ "address": "192.168.50.1" }, { "address": "9.9.9.9" }],
                "hostDNS": { "enabled": true, "forwardKubeDNSToHost": true },
            }),
            "the nameservers join gen config's resolver document"
        );
        assert_eq!(
            doc_of(&docs, "HostnameConfig"),
            &serde_json::json!({
                "apiVersion": "v1alpha1",
                "kind": "HostnameConfig",
                "hostname": node.hostname,
            })
        );
        assert_eq!(
            at(doc_of(&docs, "LinkAliasConfig"), "/selector/match"),
            format!("mac(link.permanent_addr) == \"{}\"", node.mac).as_str()
        );
        assert_eq!(
            at(doc_of(&docs, "LinkConfig"), "/addresses/0/address"),
            node.ip.to_string().as_str()
        );
        let vips = docs
            .iter()
            .filter(|d| d["kind"] == "Layer2VIPConfig")
            .count();
        assert_eq!(vips, usize::from(role == Role::Controlplane));
        assert_eq!(
            at(doc_of(&docs, "KubeClusterConfig"), "/endpoint"),
            c.endpoint.as_str()
        );
        assert_eq!(
            at(doc_of(&docs, "KubeletConfig"), "/image"),
            "ghcr.io/siderolabs/kubelet:v1.34.1"
        );
        let s = secrets();
        assert_eq!(
            at(doc_of(&docs, "DiscoveryIdentityConfig"), "/clusterID"),
            s.cluster_id.as_str()
        );
        assert_eq!(at(v1alpha1, "/machine/token"), s.trustd_token.as_str());
        assert_eq!(at(v1alpha1, "/cluster/token"), s.bootstrap_token.as_str());
        assert_eq!(
            at(doc_of(&docs, "KubeNodeConfig"), "/nodeIP/validSubnets"),
            &serde_json::json!(["192.168.50.0/24"])
        );
        assert_report_documents(&docs);
        if role == Role::Controlplane {
            assert_eq!(at(v1alpha1, "/cluster/etcd/ca/key"), s.etcd_ca.key.as_str());
            assert_eq!(
                at(v1alpha1, "/cluster/etcd/advertisedSubnets"),
                &serde_json::json!(["192.168.50.0/24"])
            );
            let issuing = at(doc_of(&docs, "KubeAPIServerCAConfig"), "/issuingCA/cert");
            assert!(issuing
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"));
        } else {
            assert!(v1alpha1.pointer("/cluster/etcd").is_none());
            assert!(docs.iter().all(|d| d["kind"] != "KubeServiceAccountConfig"));
        }
        assert_schema_valid_except_unattended(&docs, version);
    }
    let mut n = node(Role::Worker, 4);
    n.install_disk = None;
    let mut c = c;
    c.install_image = String::new();
    let docs = render_documents(&c, &secrets(), &n, &Patches::default()).unwrap();
    assert_eq!(
        at(doc_of(&docs, "UnattendedInstallConfig"), "/installer"),
        &serde_json::json!({}),
        "no image: the node installs its own version and schematic"
    );
    assert_eq!(
        at(
            doc_of(&docs, "UnattendedInstallConfig"),
            "/provisioning/diskSelector/match"
        ),
        "disk.size >= 6u * GiB && !disk.readonly && !disk.cdrom && disk.transport != \"\"",
        "no install disk given: the first disk of 6 GiB or more on any known transport"
    );
    assert_schema_valid_except_unattended(&docs, version);
}

/// Talos's schema, except that v1.14.0-rc.1's names the install document's kind
/// `UnattendedInstall` while Talos writes and reads `UnattendedInstallConfig`.
fn assert_schema_valid_except_unattended(docs: &[Value], version: &str) {
    let renamed: Vec<Value> = docs
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if d["kind"] == "UnattendedInstallConfig" {
                d["kind"] = "UnattendedInstall".into();
            }
            d
        })
        .collect();
    assert_schema_valid(&renamed, version);
}

#[test]
fn redacted_configs_of_every_new_line_show_no_secret() {
    use base64::Engine as _;
    let s = secrets();
    let pem = |b64: &str| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    let mut hidden = vec![
        s.cluster_secret.clone(),
        s.bootstrap_token.clone(),
        s.trustd_token.clone(),
        s.secretbox_secret.clone().unwrap(),
        s.os_ca.key.clone(),
        s.etcd_ca.key.clone(),
        s.k8s_ca.key.clone(),
        s.aggregator_ca.key.clone(),
        s.service_account_key.clone(),
    ];
    for b64 in [&s.k8s_ca.key, &s.aggregator_ca.key, &s.service_account_key] {
        // A line of the PEM body is enough to leak it.
        hidden.push(pem(b64).lines().nth(1).unwrap().to_string());
    }
    for version in ["v1.12.11", "v1.13.9", "v1.14.0-rc.1"] {
        let yaml = render(
            &cluster(version),
            &s,
            &node(Role::Controlplane, 1),
            &Patches::default(),
        )
        .unwrap();
        let shown = bootplane::ops::configs::redact_config(&yaml).unwrap();
        // Up to 1.13 keys are base64 PEM, from 1.14 CA and service-account keys are PEM text.
        let rendered = hidden.iter().filter(|h| yaml.contains(h.as_str())).count();
        assert!(rendered >= 9, "{version}: only {rendered} secrets rendered");
        for secret in &hidden {
            assert!(!shown.contains(secret.as_str()), "{version}: shown");
        }
    }
}

#[test]
fn json_patches_apply_up_to_1_11_and_are_refused_on_multi_document_configs() {
    let p = patches(
        &["- op: add\n  path: /machine/nodeLabels\n  value: {zone: a}\n"],
        &[],
        &[],
        &[],
    );
    let n = node(Role::Worker, 4);
    let docs = render_documents(&cluster("v1.11.6"), &secrets(), &n, &p).unwrap();
    assert_eq!(at(&docs[0], "/machine/nodeLabels/zone"), "a");
    for version in ["v1.12.11", "v1.13.9", "v1.14.0-rc.1"] {
        let err = render(&cluster(version), &secrets(), &n, &p).unwrap_err();
        assert!(matches!(err, RenderError::Patch(_)), "{version}: {err:?}");
    }
}

/// A Layer 2 VIP outside a control plane's subnet never comes up on it (Talos moves it onto
/// the link holding an address of its subnet): refused for control planes on every line,
/// while a worker, which never carries the VIP, is not concerned.
#[test]
fn a_vip_outside_a_control_planes_subnet_is_refused() {
    for version in ["v1.11.6", "v1.12.11", "v1.13.9", "v1.14.0-rc.1"] {
        let mut c = cluster(version);
        c.vip = Some(Ipv4Addr::new(192, 168, 51, 10));
        let err = render(
            &c,
            &secrets(),
            &node(Role::Controlplane, 1),
            &Patches::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("192.168.51.10") && err.contains("outside control plane cp-1's subnet"),
            "{version}: {err}"
        );
        assert!(
            render(&c, &secrets(), &node(Role::Worker, 4), &Patches::default()).is_ok(),
            "{version}"
        );
    }
}

#[test]
fn node_subnets_follow_the_setting_and_talos_key_order_on_every_line() {
    for version in ["v1.8.4", "v1.11.6", "v1.12.11", "v1.13.9", "v1.14.0-rc.1"] {
        let mut c = cluster(version);
        let cp = node(Role::Controlplane, 1);
        c.node_subnets = NodeSubnets::Given(vec!["192.168.0.0/16".into(), "fd00::/64".into()]);
        let docs = render_documents(&c, &secrets(), &cp, &Patches::default()).unwrap();
        let expected = serde_json::json!(["192.168.0.0/16", "fd00::/64"]);
        let kubelet = if minor(version) >= 14 {
            doc_of(&docs, "KubeNodeConfig")
        } else {
            let kubelet = at(&docs[0], "/machine/kubelet");
            let keys: Vec<&String> = kubelet.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                [
                    "image",
                    "defaultRuntimeSeccompProfileEnabled",
                    "nodeIP",
                    "disableManifestsDirectory"
                ],
                "{version}: Talos's field order"
            );
            kubelet
        };
        assert_eq!(at(kubelet, "/nodeIP/validSubnets"), &expected, "{version}");
        assert_eq!(
            at(&docs[0], "/cluster/etcd/advertisedSubnets"),
            &expected,
            "{version}"
        );
        assert_schema_valid_except_unattended(&docs, version);

        c.node_subnets = NodeSubnets::Off;
        for role in [Role::Controlplane, Role::Worker] {
            let docs =
                render_documents(&c, &secrets(), &node(role, 4), &Patches::default()).unwrap();
            let text = to_yaml(&docs).unwrap();
            assert!(
                !text.contains("validSubnets") && !text.contains("advertisedSubnets"),
                "{version} {role}: none means Talos picks\n{text}"
            );
        }
    }
}

#[test]
fn report_documents_are_left_out_when_bootplane_does_not_receive_them() {
    let mut c = cluster("v1.13.9");
    c.report_to = ReportTargets {
        events_endpoint: None,
        kernel_log_url: Some("tcp://192.168.50.2:4001".into()),
    };
    let docs =
        render_documents(&c, &secrets(), &node(Role::Worker, 4), &Patches::default()).unwrap();
    assert!(docs.iter().all(|d| d["kind"] != "EventSinkConfig"));
    assert_eq!(at(doc_of(&docs, "KmsgLogConfig"), "/name"), "bootplane");
    c.report_to = ReportTargets::default();
    let docs =
        render_documents(&c, &secrets(), &node(Role::Worker, 4), &Patches::default()).unwrap();
    assert!(docs
        .iter()
        .all(|d| d["kind"] != "EventSinkConfig" && d["kind"] != "KmsgLogConfig"));
}

#[test]
fn patches_that_break_talos_rules_for_report_documents_are_refused() {
    let n = node(Role::Worker, 4);
    for (patch, why) in [
        (
            "apiVersion: v1alpha1\nkind: KmsgLogConfig\nname: bootplane\nurl: http://192.168.50.2:4001\n",
            "tcp|udp",
        ),
        (
            "apiVersion: v1alpha1\nkind: KmsgLogConfig\nname: other\nurl: udp://192.168.50.9\n",
            "port is required",
        ),
        (
            "apiVersion: v1alpha1\nkind: EventSinkConfig\nendpoint: 192.168.50.9\n",
            "host:port",
        ),
    ] {
        for version in ["v1.11.6", "v1.13.9"] {
            let err = render(&cluster(version), &secrets(), &n, &patches(&[patch], &[], &[], &[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{version}: {err}");
        }
    }
    // An operator's own event sink replaces bootplane's in place: one document.
    let own = "apiVersion: v1alpha1\nkind: EventSinkConfig\nendpoint: 192.168.50.9:9000\n";
    let docs = render_documents(
        &cluster("v1.13.9"),
        &secrets(),
        &n,
        &patches(&[own], &[], &[], &[]),
    )
    .unwrap();
    assert_eq!(
        at(doc_of(&docs, "EventSinkConfig"), "/endpoint"),
        "192.168.50.9:9000"
    );
}

#[test]
fn without_an_install_disk_the_default_is_a_selector_on_every_line_never_dev_sda() {
    for version in ["v1.8.4", "v1.10.9", "v1.11.6", "v1.12.11", "v1.13.9"] {
        let c = cluster(version);
        for (role, n) in [(Role::Controlplane, 1), (Role::Worker, 4)] {
            let mut node = node(role, n);
            node.install_disk = None;
            let docs = render_documents(&c, &secrets(), &node, &Patches::default()).unwrap();
            let install = at(&docs[0], "/machine/install");
            assert!(install.get("disk").is_none(), "{version}: {install:#}");
            assert_eq!(
                install["diskSelector"],
                serde_json::json!({ "size": ">= 6GiB" }),
                "{version} {role}"
            );
            assert_eq!(
                install
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .map(String::as_str),
                Some("diskSelector"),
                "where Talos writes the disk"
            );
            assert_schema_valid(&docs, version);
        }
    }
    let c = cluster("v1.14.0-rc.1");
    let mut node = node(Role::Worker, 4);
    node.install_disk = None;
    let docs = render_documents(&c, &secrets(), &node, &Patches::default()).unwrap();
    assert_eq!(
        at(
            doc_of(&docs, "UnattendedInstallConfig"),
            "/provisioning/diskSelector/match"
        ),
        DEFAULT_INSTALL_DISK_MATCH
    );
    assert_schema_valid_except_unattended(&docs, "v1.14.0-rc.1");
}

#[test]
fn an_install_disk_given_by_flag_or_patch_wins_over_the_default_selector() {
    let c = cluster("v1.13.9");
    let mut n = node(Role::Worker, 4);
    n.install_disk = None;
    let p = patches(
        &[],
        &[],
        &[],
        &["machine:\n  install:\n    disk: /dev/sdb\n"],
    );
    let docs = render_documents(&c, &secrets(), &n, &p).unwrap();
    let install = at(&docs[0], "/machine/install");
    assert_eq!(install["disk"], "/dev/sdb");
    assert!(
        install.get("diskSelector").is_none(),
        "Talos follows a selector over a disk: {install:#}"
    );
    let own = "machine:\n  install:\n    diskSelector:\n      type: nvme\n";
    let docs = render_documents(&c, &secrets(), &n, &patches(&[own], &[], &[], &[])).unwrap();
    assert_eq!(
        at(&docs[0], "/machine/install/diskSelector"),
        &serde_json::json!({ "size": ">= 6GiB", "type": "nvme" }),
        "a patched selector is the operator's"
    );
    n.install_disk = Some("/dev/vda".into());
    let docs = render_documents(
        &cluster("v1.14.0-rc.1"),
        &secrets(),
        &n,
        &Patches::default(),
    )
    .unwrap();
    assert_eq!(
        at(
            doc_of(&docs, "UnattendedInstallConfig"),
            "/provisioning/diskSelector/match"
        ),
        "disk.dev_path == \"/dev/vda\""
    );
}

#[test]
fn a_factory_schematic_versions_config_names_that_schematics_metal_installer() {
    use bootplane::model::{Cluster, Machine};
    use bootplane::ops::materials::{cluster_spec, spec_for, FactorySchematics};
    use bootplane::talos::config::FactorySchematic;
    use bootplane::talos::Arch;
    let schematic = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";
    let mut factory = FactorySchematics::new();
    for version in ["v1.13.9", "v1.14.0-rc.1"] {
        factory.insert(
            (version.to_string(), Arch::Amd64),
            FactorySchematic {
                host: "factory.talos.dev".into(),
                schematic: schematic.into(),
            },
        );
    }
    let c = Cluster {
        name: "homelab".into(),
        endpoint: Some("https://192.168.50.10:6443".into()),
        vip: None,
        talos_version: Some("v1.13.9".into()),
        kubernetes_version: None,
        install_image: None,
        pod_subnets: vec!["10.244.0.0/16".into()],
        service_subnets: vec!["10.96.0.0/12".into()],
        dns_domain: "cluster.local".into(),
        node_subnets: NodeSubnets::Auto,
        nameservers: vec![],
        initialised_at: None,
        generation: 1,
        single_controlplane: false,
        bootstrapped_at: None,
    };
    let spec = cluster_spec(&c, &factory).unwrap();
    let mut m = Machine::discovered(Mac([0x52, 0x54, 0, 0x77, 0, 4]));
    m.role = Role::Worker;
    let n = node(Role::Worker, 4);
    let docs = render_documents(&spec_for(&spec, &m), &secrets(), &n, &Patches::default()).unwrap();
    assert_eq!(
        at(&docs[0], "/machine/install/image"),
        format!("factory.talos.dev/metal-installer/{schematic}:v1.13.9").as_str()
    );
    assert_schema_valid(&docs, "v1.13.9");
    m.talos_version = Some("v1.14.0-rc.1".into());
    let docs = render_documents(&spec_for(&spec, &m), &secrets(), &n, &Patches::default()).unwrap();
    assert_eq!(
        at(doc_of(&docs, "UnattendedInstallConfig"), "/installer/image"),
        format!("factory.talos.dev/metal-installer/{schematic}:v1.14.0-rc.1").as_str(),
        "a pinned version installs its own version's schematic"
    );
    let chosen = cluster_spec(
        &Cluster {
            install_image: Some("registry.lan/installer:v1.13.9".into()),
            ..c
        },
        &factory,
    )
    .unwrap();
    m.talos_version = None;
    let docs =
        render_documents(&spec_for(&chosen, &m), &secrets(), &n, &Patches::default()).unwrap();
    assert_eq!(
        at(&docs[0], "/machine/install/image"),
        "registry.lan/installer:v1.13.9",
        "the operator's installer wins"
    );
}

#[test]
fn a_diskless_1_14_node_has_no_install_document_and_validates() {
    let version = "v1.14.0-rc.1";
    let mut n = node(Role::Worker, 4);
    n.diskless = true;
    let docs = render_documents(&cluster(version), &secrets(), &n, &Patches::default()).unwrap();
    assert!(
        docs.iter().all(|d| d["kind"] != "UnattendedInstallConfig"),
        "{docs:#?}"
    );
    assert!(docs[0].pointer("/machine/install").is_none());
    assert_eq!(
        at(doc_of(&docs, "HostnameConfig"), "/hostname"),
        n.hostname.as_str()
    );
    assert_schema_valid_except_unattended(&docs, version);
    let adds_install = "apiVersion: v1alpha1\nkind: UnattendedInstallConfig\nprovisioning:\n  diskSelector:\n    match: disk.dev_path == \"/dev/sda\"\n";
    let err = render_documents(
        &cluster(version),
        &secrets(),
        &n,
        &patches(&[adds_install], &[], &[], &[]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("diskless"), "{err}");
}

#[test]
fn diskless_is_refused_before_1_14_and_for_control_planes() {
    let mut n = node(Role::Worker, 4);
    n.diskless = true;
    for version in ["v1.11.6", "v1.13.9"] {
        let err =
            render_documents(&cluster(version), &secrets(), &n, &Patches::default()).unwrap_err();
        assert!(err.to_string().contains("needs Talos 1.14"), "{err}");
    }
    let mut cp = node(Role::Controlplane, 1);
    cp.diskless = true;
    let err = render_documents(
        &cluster("v1.14.0-rc.1"),
        &secrets(),
        &cp,
        &Patches::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("etcd"), "{err}");
}

/// Each line runs the Kubernetes minors of Talos's compatibility package: the oldest and newest
/// patch of its range pass, the minor below and above (pre-releases compared by their core
/// version, as Talos does) are refused with the range, and each line's default is inside it.
#[test]
fn each_talos_line_runs_only_its_kubernetes_range() {
    use bootplane::talos::config::{check_kubernetes_version, default_kubernetes_version};
    for (version, line, oldest, newest) in [
        ("v1.8.4", "1.8", 26, 31),
        ("v1.9.6", "1.9", 27, 32),
        ("v1.10.9", "1.10", 28, 33),
        ("v1.11.6", "1.11", 29, 34),
        ("v1.12.11", "1.12", 30, 35),
        ("v1.13.9", "1.13", 31, 36),
        ("v1.14.0-rc.1", "1.14", 32, 37),
    ] {
        for ok in [
            format!("1.{oldest}.0"),
            format!("v1.{newest}.98"),
            format!("1.{newest}.0-rc.0"),
        ] {
            check_kubernetes_version(version, &ok)
                .unwrap_or_else(|e| panic!("{version} {ok}: {e}"));
        }
        check_kubernetes_version(version, default_kubernetes_version(version).unwrap()).unwrap();
        for refused in [
            format!("1.{}.9", oldest - 1),
            format!("1.{}.0-alpha.0", newest + 1),
        ] {
            let err = check_kubernetes_version(version, &refused)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!(
                    "Kubernetes {refused} is not supported by Talos {line} (it runs Kubernetes 1.{oldest} to 1.{newest})"
                )
            );
        }
    }
}
