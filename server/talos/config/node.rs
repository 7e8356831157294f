//! A node's own settings on the base documents: hostname, address, VIP, install, subnets.

use serde_json::{json, Map, Value};

use crate::model::Role;

use super::base::document;
use super::install::{
    default_disk_selector, disk_path_match, install_on, DEFAULT_INSTALL_DISK_MATCH,
};
use super::{kind_of, machine_of, ClusterSpec, Contract, NodeSpec, RenderError};

/// The alias bootplane gives the NIC a node booted from (selected by its MAC) from 1.12 on.
pub const BOOT_LINK: &str = "bootnic";

/// Sets the node's own fields on the base documents: the install disk and wipe in v1alpha1,
/// and the hostname and network either in `machine.network` (up to 1.11) or as documents.
pub(super) fn apply_node(
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
pub(super) fn apply_subnets(
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
