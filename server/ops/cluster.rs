//! Cluster operations shared by the UI, the API and the CLI: initialisation and settings,
//! downloads of client credentials, bootstrap status, rebuild. Errors name the input field
//! they belong to.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{cleared, Errors, OpsError};
use crate::db::{Db, DbError};
use crate::model::{validate_hostname, BootstrapRecord, Cluster, Machine, NodeSubnets, Role};
use crate::ops::materials;

/// Cluster settings as an operator types them; `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterInput {
    /// Cluster name (one DNS label)
    pub name: Option<String>,
    /// Kubernetes API endpoint, https://<vip-or-load-balancer>:6443
    pub endpoint: Option<String>,
    /// Layer-2 VIP Talos keeps on one healthy control plane; empty (or "none") clears it
    pub vip: Option<String>,
    /// Talos version, e.g. v1.11.6
    pub talos_version: Option<String>,
    /// Kubernetes version, e.g. 1.34.1; "default" for the Talos version's default
    pub kubernetes_version: Option<String>,
    /// Installer image; "default" for ghcr.io/siderolabs/installer:<talos-version>
    pub install_image: Option<String>,
    /// Pod subnets, comma-separated
    pub pod_subnets: Option<String>,
    /// Service subnets, comma-separated
    pub service_subnets: Option<String>,
    /// Kubernetes DNS domain
    pub dns_domain: Option<String>,
    /// Subnets etcd advertises and the kubelet takes its node IP from: "auto" (each node's own
    /// subnet), "none" (Talos picks), or comma-separated subnets
    pub node_subnets: Option<String>,
    /// Nameservers of nodes without their own, comma-separated IPv4 addresses; "auto" for the
    /// appliance host's resolvers, "none" for Talos's defaults (1.1.1.1, 8.8.8.8)
    pub nameservers: Option<String>,
    /// Bootstrap with one control plane instead of waiting for three
    pub single_controlplane: Option<bool>,
    /// talosctl's secrets.yaml, to adopt an existing cluster instead of making new secrets;
    /// only when initialising (a settings change refuses it)
    pub import_secrets: Option<String>,
}

/// A comma-separated list of IPv4 or IPv6 subnets.
pub fn parse_cidr_list(text: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = text
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err("at least one subnet is needed".into());
    }
    for item in &items {
        let ok = item.split_once('/').is_some_and(|(ip, prefix)| {
            let ip = ip.parse::<std::net::IpAddr>();
            let max = if matches!(ip, Ok(std::net::IpAddr::V6(_))) {
                128
            } else {
                32
            };
            ip.is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= max)
        });
        if !ok {
            return Err(format!("'{item}' is not a subnet like 10.244.0.0/16"));
        }
    }
    Ok(items)
}

/// Nameservers as an operator types them: "auto" (the appliance host's resolvers), "none" or
/// empty (Talos's defaults), or comma-separated IPv4 addresses (at most 3, as resolvers read).
fn parse_nameservers(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    match text.trim() {
        "auto" => Ok(crate::net::host_nameservers()),
        "none" | "" => Ok(Vec::new()),
        list => {
            let mut out = Vec::new();
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let ip = item
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("'{item}' is not an IPv4 address (or auto, or none)"))?;
                if ip.is_loopback() || ip.is_unspecified() {
                    return Err(format!("{ip} cannot be a node's nameserver"));
                }
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            if out.len() > 3 {
                return Err("at most 3 nameservers".into());
            }
            Ok(out)
        }
    }
}

fn parse_kubernetes_version(v: &str) -> Result<String, String> {
    let bare = v.trim_start_matches('v');
    let parts: Vec<&str> = bare.split('.').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(bare.to_string())
    } else {
        Err(format!("'{v}' must look like 1.34.1"))
    }
}

/// A Talos version bootplane renders configs for.
pub(crate) fn check_talos_version(v: &str) -> Result<(), String> {
    crate::config::validate_talos_version(v)?;
    let supported = crate::talos::minor_version(v)
        .is_some_and(|mm| crate::talos::config::SUPPORTED.contains(&mm));
    if supported {
        Ok(())
    } else {
        Err(format!(
            "Talos {v}: bootplane renders configs for Talos {}",
            crate::talos::config::SUPPORTED_RANGE
        ))
    }
}

/// Applies the given settings to `c`, collecting one error per bad field. Without an endpoint
/// one is made from the VIP; a cluster needs one or the other.
pub fn apply_cluster_input(c: &mut Cluster, f: &ClusterInput) -> Result<(), OpsError> {
    let mut errors = Errors::default();
    if let Some(name) = &f.name {
        match validate_hostname(name.trim()) {
            Ok(()) => c.name = name.trim().to_string(),
            Err(e) => errors.add("name", e),
        }
    }
    if let Some(vip) = &f.vip {
        if cleared(vip) {
            c.vip = None;
        } else {
            match vip.trim().parse::<Ipv4Addr>() {
                Ok(v) => c.vip = Some(v),
                Err(_) => errors.add("vip", format!("'{}' is not an IPv4 address", vip.trim())),
            }
        }
    }
    if let Some(endpoint) = &f.endpoint {
        let endpoint = endpoint.trim();
        match crate::talos::config::endpoint_host(endpoint) {
            Ok(_) => c.endpoint = Some(endpoint.to_string()),
            Err(e) => errors.add("endpoint", e.to_string()),
        }
    } else if c.endpoint.is_none() {
        c.endpoint = c.vip.map(|vip| format!("https://{vip}:6443"));
    }
    if let Some(v) = &f.talos_version {
        let v = v.trim();
        match check_talos_version(v) {
            Ok(()) => c.talos_version = Some(v.to_string()),
            Err(e) => errors.add("talos_version", e),
        }
    }
    if let Some(v) = &f.kubernetes_version {
        let v = v.trim();
        if v == "default" || v.is_empty() {
            c.kubernetes_version = None;
        } else {
            match parse_kubernetes_version(v) {
                Ok(v) => c.kubernetes_version = Some(v),
                Err(e) => errors.add("kubernetes_version", e),
            }
        }
    }
    if let Some(image) = &f.install_image {
        let image = image.trim();
        if image == "default" || image.is_empty() {
            c.install_image = None;
        } else if image.contains(char::is_whitespace) {
            errors.add(
                "install_image",
                format!("'{image}' is not an image reference"),
            );
        } else {
            c.install_image = Some(image.to_string());
        }
    }
    if let Some(p) = &f.pod_subnets {
        match parse_cidr_list(p) {
            Ok(list) => c.pod_subnets = list,
            Err(e) => errors.add("pod_subnets", e),
        }
    }
    if let Some(p) = &f.service_subnets {
        match parse_cidr_list(p) {
            Ok(list) => c.service_subnets = list,
            Err(e) => errors.add("service_subnets", e),
        }
    }
    if let Some(d) = &f.dns_domain {
        let d = d.trim();
        let ok = !d.is_empty() && d.split('.').all(|label| validate_hostname(label).is_ok());
        if ok {
            c.dns_domain = d.to_string();
        } else {
            errors.add("dns_domain", format!("'{d}' is not a DNS name"));
        }
    }
    if let Some(text) = &f.node_subnets {
        match text.trim() {
            "auto" => c.node_subnets = NodeSubnets::Auto,
            "none" => c.node_subnets = NodeSubnets::Off,
            list => match parse_cidr_list(list) {
                Ok(list) => c.node_subnets = NodeSubnets::Given(list),
                Err(e) => errors.add("node_subnets", format!("{e} (or auto, or none)")),
            },
        }
    }
    if let Some(text) = &f.nameservers {
        match parse_nameservers(text) {
            Ok(list) => c.nameservers = list,
            Err(e) => errors.add("nameservers", e),
        }
    }
    if let Some(single) = f.single_controlplane {
        c.single_controlplane = single;
    }
    if c.endpoint.is_none() && !errors.has("endpoint") && !errors.has("vip") {
        errors.add(
            "endpoint",
            "the cluster needs an endpoint https://<vip-or-lb>:6443 (or a VIP)",
        );
    }
    errors.into_result()
}

/// The node subnets setting as `cluster show` and the UI state it: with `auto`, the subnets
/// the cluster's assigned machines are in.
pub fn describe_node_subnets(c: &Cluster, machines: &[Machine]) -> String {
    match &c.node_subnets {
        NodeSubnets::Auto => {
            let mut seen: Vec<String> = Vec::new();
            let own = machines
                .iter()
                .filter(|m| m.cluster == c.name && m.is_assigned())
                .filter_map(|m| m.ip);
            for ip in own {
                let subnet = format!("{}/{}", ip.network(), ip.prefix);
                if !seen.contains(&subnet) {
                    seen.push(subnet);
                }
            }
            if seen.is_empty() {
                "auto (each node's own subnet)".into()
            } else {
                format!("auto (each node's own subnet: {})", seen.join(", "))
            }
        }
        NodeSubnets::Off => "none (Talos picks each node's address)".into(),
        NodeSubnets::Given(list) => list.join(", "),
    }
}

/// The cluster's nameservers as `cluster show` and the UI state them.
pub fn describe_nameservers(c: &Cluster) -> String {
    if c.nameservers.is_empty() {
        "none set (nodes without their own use Talos's defaults 1.1.1.1, 8.8.8.8)".into()
    } else {
        c.nameservers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Refuses settings whose Kubernetes version the cluster's Talos line does not run, on the
/// field the operator changed (the rule is `talos::config::check_kubernetes_version`).
fn check_kubernetes(
    spec: &crate::talos::config::ClusterSpec,
    input: &ClusterInput,
) -> Result<(), OpsError> {
    crate::talos::config::check_kubernetes_version(&spec.talos_version, &spec.kubernetes_version)
        .map_err(|e| {
            let field = if input.kubernetes_version.is_some() {
                "kubernetes_version"
            } else if input.talos_version.is_some() {
                "talos_version"
            } else {
                "config"
            };
            OpsError::field(field, e.to_string())
        })
}

fn system_time(now: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(now).unwrap_or(0))
}

/// The cluster (the first one: one cluster is the common case).
pub async fn first_cluster(db: &Db) -> Result<Cluster, OpsError> {
    Ok(db
        .get_cluster(None)
        .await?
        .ok_or_else(|| DbError::NoCluster("default".into()))?)
}

pub(super) async fn loaded(db: &Db) -> Result<materials::LoadedCluster, OpsError> {
    materials::load_cluster(db, None)
        .await
        .map_err(|e| match e {
            materials::MaterialsError::Db(e) => OpsError::Db(e),
            other => OpsError::Refused(other.to_string()),
        })
}

/// Makes the cluster's secrets bundle (or adopts `input.import_secrets`, talosctl's
/// secrets.yaml) and stores its settings. Every assigned machine's config must render.
pub async fn init_cluster(db: &Db, input: &ClusterInput, now: i64) -> Result<Cluster, OpsError> {
    let current = first_cluster(db).await?;
    if current.initialised_at.is_some() {
        return Err(OpsError::Refused(format!(
            "cluster {} is already initialised (it has a secrets bundle)",
            current.name
        )));
    }
    let mut c = current.clone();
    if c.talos_version.is_none() && input.talos_version.is_none() {
        c.talos_version = Some(crate::config::DEFAULT_TALOS_VERSION.to_string());
    }
    if input.nameservers.is_none() {
        // Nodes on a LAN without internet DNS cannot use Talos's defaults; the host's own
        // resolvers are the best guess, shown by `cluster show` and changed with `cluster set`.
        c.nameservers = crate::net::host_nameservers();
    }
    apply_cluster_input(&mut c, input)?;
    let mut spec = materials::cluster_spec(&c, &db.factory_schematics().await?)
        .map_err(|e| OpsError::field("cluster", e.to_string()))?;
    spec.report_to = db.report_targets().await?;
    check_kubernetes(&spec, input)?;
    let bundle = materials::new_bundle(
        &spec.talos_version,
        input.import_secrets.as_deref(),
        system_time(now),
    )
    .map_err(|e| OpsError::field("secrets", e.to_string()))?;
    let mut machines = db.list_machines().await?;
    for m in machines.iter_mut().filter(|m| m.cluster == current.name) {
        m.cluster = c.name.clone();
    }
    check_diskless(&c, &machines)?;
    check_vip_subnets(&c, &machines)?;
    materials::check_cluster(&spec, &materials::config_secrets(&bundle), &[], &machines)
        .map_err(|e| OpsError::field("config", e.to_string()))?;
    db.init_cluster(&current.name, &c, &bundle.to_yaml(), now)
        .await?;
    first_cluster(db).await
}

/// Refuses a cluster Talos version older than 1.14 while a diskless machine of the cluster
/// follows it.
fn check_diskless(c: &Cluster, machines: &[Machine]) -> Result<(), OpsError> {
    let stuck: Vec<String> = machines
        .iter()
        .filter(|m| m.cluster == c.name && m.diskless)
        .filter(|m| {
            crate::ops::checks::diskless_version_problem(m, c.talos_version.as_deref()).is_some()
        })
        .map(|m| m.hostname.clone().unwrap_or_else(|| m.mac.to_string()))
        .collect();
    if stuck.is_empty() {
        return Ok(());
    }
    Err(OpsError::field(
        "talos_version",
        format!(
            "diskless machines need Talos 1.14 or newer, and {} {} diskless: pin {} to a 1.14 version or let {} install first",
            stuck.join(", "),
            if stuck.len() == 1 { "is" } else { "are" },
            if stuck.len() == 1 { "it" } else { "them" },
            if stuck.len() == 1 { "it" } else { "them" },
        ),
    ))
}

/// Refuses, beside the VIP field, a Layer 2 VIP outside a control plane's subnet: Talos raises
/// it only on a link holding an address of its subnet, so it would never come up there.
fn check_vip_subnets(c: &Cluster, machines: &[Machine]) -> Result<(), OpsError> {
    let Some(vip) = c.vip else {
        return Ok(());
    };
    let outside = machines
        .iter()
        .filter(|m| m.cluster == c.name && m.role == Role::Controlplane)
        .find_map(|m| m.ip.filter(|ip| !ip.contains(vip)).map(|ip| (m, ip)));
    match outside {
        None => Ok(()),
        Some((m, ip)) => Err(OpsError::field(
            "vip",
            format!(
                "{vip} is outside control plane {}'s subnet {}/{}: a Layer 2 VIP must be in the subnet of every control plane's address",
                m.hostname.clone().unwrap_or_else(|| m.mac.to_string()),
                ip.network(),
                ip.prefix
            ),
        )),
    }
}

/// Changes the cluster's settings; refused if any machine's config would no longer render.
pub async fn update_cluster(db: &Db, input: &ClusterInput, _now: i64) -> Result<Cluster, OpsError> {
    if input.import_secrets.is_some() {
        return Err(OpsError::field(
            "import_secrets",
            "secrets are adopted only when the cluster is initialised",
        ));
    }
    let loaded = loaded(db).await?;
    let current = loaded.cluster.name.clone();
    let mut c = loaded.cluster.clone();
    apply_cluster_input(&mut c, input)?;
    let mut spec = materials::cluster_spec(&c, &loaded.spec.installers.factory)
        .map_err(|e| OpsError::field("cluster", e.to_string()))?;
    spec.report_to = loaded.spec.report_to.clone();
    check_kubernetes(&spec, input)?;
    let mut machines = db.list_machines().await?;
    for m in machines.iter_mut().filter(|m| m.cluster == current) {
        m.cluster = c.name.clone();
        if let (Some(vip), Some(ip)) = (c.vip, m.ip) {
            if ip.addr == vip {
                let who = m.hostname.clone().unwrap_or_else(|| m.mac.to_string());
                return Err(OpsError::field(
                    "vip",
                    format!("{vip} is the address of {who}"),
                ));
            }
        }
    }
    check_diskless(&c, &machines)?;
    check_vip_subnets(&c, &machines)?;
    materials::check_cluster(&spec, &loaded.secrets, &loaded.patches, &machines)
        .map_err(|e| OpsError::field("config", e.to_string()))?;
    db.update_cluster(&current, &c).await?;
    first_cluster(db).await
}

/// The bootstrap state of the cluster: its generation, when it was bootstrapped, and the
/// decision and outcome of every generation.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BootstrapStatus {
    pub cluster: String,
    /// Bumped when every control plane was wiped: each generation is bootstrapped once
    pub generation: i64,
    /// Milliseconds since the Unix epoch; null until etcd is bootstrapped
    pub bootstrapped_at: Option<i64>,
    /// Oldest generation first
    pub history: Vec<BootstrapRecord>,
}

pub async fn bootstrap_status(db: &Db) -> Result<BootstrapStatus, OpsError> {
    let c = first_cluster(db).await?;
    let history = db.bootstrap_history(&c.name).await?;
    Ok(BootstrapStatus {
        cluster: c.name,
        generation: c.generation,
        bootstrapped_at: c.bootstrapped_at,
        history,
    })
}

/// A talosconfig for the cluster's control planes (client certificate from the OS CA).
pub async fn talosconfig(db: &Db, now: i64) -> Result<String, OpsError> {
    let loaded = loaded(db).await?;
    let machines = db.list_machines().await?;
    let endpoints: Vec<String> = machines
        .iter()
        .filter(|m| m.role == Role::Controlplane && m.cluster == loaded.cluster.name)
        .filter_map(|m| m.ip.map(|ip| ip.addr.to_string()))
        .collect();
    loaded
        .bundle
        .talosconfig(&loaded.cluster.name, &endpoints, system_time(now))
        .map_err(|e| OpsError::Refused(format!("cannot make a talosconfig: {e}")))
}

/// An admin kubeconfig for the cluster's endpoint.
pub async fn kubeconfig(db: &Db, now: i64) -> Result<String, OpsError> {
    let loaded = loaded(db).await?;
    loaded
        .bundle
        .kubeconfig(
            &loaded.cluster.name,
            &loaded.spec.endpoint,
            system_time(now),
        )
        .map_err(|e| OpsError::Refused(format!("cannot make a kubeconfig: {e}")))
}

/// Marks every assigned machine of the cluster for reinstall; etcd is bootstrapped again.
/// `confirm` must be the cluster's name.
pub async fn rebuild_cluster(db: &Db, confirm: &str, now: i64) -> Result<usize, OpsError> {
    let c = db
        .get_cluster(None)
        .await?
        .ok_or_else(|| DbError::NoCluster("default".into()))?;
    if confirm.trim() != c.name {
        return Err(OpsError::field(
            "confirm",
            format!(
                "type the cluster's name ({}) to confirm the rebuild",
                c.name
            ),
        ));
    }
    let mut count = 0;
    for m in db.list_machines().await? {
        if m.cluster == c.name && m.is_assigned() {
            db.mark_reinstall(m.mac, "operator rebuilds the cluster", now)
                .await?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster {
            name: "lab".into(),
            endpoint: None,
            vip: None,
            talos_version: Some("v1.11.6".into()),
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
        }
    }

    #[test]
    fn every_bad_cluster_setting_is_reported_beside_its_field() {
        let mut c = cluster();
        let input = ClusterInput {
            name: Some("Lab_1".into()),
            endpoint: Some("http://x:6443".into()),
            vip: Some("10.0.0.300".into()),
            talos_version: Some("v1.2.0".into()),
            kubernetes_version: Some("1.34".into()),
            install_image: Some("a b".into()),
            pod_subnets: Some("10.244.0.0/16, x".into()),
            service_subnets: Some(",".into()),
            dns_domain: Some("bad_domain".into()),
            node_subnets: Some("10.0.0.0/33".into()),
            nameservers: Some("10.0.0.53, 127.0.0.1".into()),
            single_controlplane: None,
            import_secrets: None,
        };
        let err = apply_cluster_input(&mut c, &input).unwrap_err();
        for field in [
            "name",
            "endpoint",
            "vip",
            "talos_version",
            "kubernetes_version",
            "install_image",
            "pod_subnets",
            "service_subnets",
            "dns_domain",
            "node_subnets",
            "nameservers",
        ] {
            assert!(err.for_field(field).is_some(), "{field} missing in {err}");
        }
        assert_eq!(c, cluster(), "nothing bad is applied");
    }

    #[test]
    fn node_subnets_and_nameservers_are_auto_none_or_a_list() {
        let mut c = cluster();
        let set = |c: &mut Cluster, subnets: &str, dns: &str| {
            let input = ClusterInput {
                vip: Some("10.0.0.5".into()),
                node_subnets: Some(subnets.into()),
                nameservers: Some(dns.into()),
                ..Default::default()
            };
            apply_cluster_input(c, &input)
        };
        set(&mut c, "10.0.0.0/24, fd00::/64", "10.0.0.53, 10.0.0.54").unwrap();
        assert_eq!(
            c.node_subnets,
            NodeSubnets::Given(vec!["10.0.0.0/24".into(), "fd00::/64".into()])
        );
        assert_eq!(
            c.nameservers,
            [Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)]
        );
        set(&mut c, "none", "none").unwrap();
        assert_eq!(
            (c.node_subnets.clone(), c.nameservers.len()),
            (NodeSubnets::Off, 0)
        );
        set(&mut c, "auto", "auto").unwrap();
        assert_eq!(c.node_subnets, NodeSubnets::Auto);
        assert_eq!(c.nameservers, crate::net::host_nameservers());
        let err = set(&mut c, "auto", "1.1.1.1,8.8.8.8,9.9.9.9,10.0.0.1").unwrap_err();
        assert!(err.for_field("nameservers").is_some(), "{err}");
    }

    #[test]
    fn a_vip_makes_the_endpoint_and_defaults_clear() {
        let mut c = cluster();
        c.kubernetes_version = Some("1.33.0".into());
        let input = ClusterInput {
            vip: Some("10.0.0.5".into()),
            kubernetes_version: Some("default".into()),
            pod_subnets: Some("10.244.0.0/16, fd00::/64".into()),
            ..Default::default()
        };
        apply_cluster_input(&mut c, &input).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://10.0.0.5:6443"));
        assert_eq!(c.kubernetes_version, None);
        assert_eq!(c.pod_subnets, ["10.244.0.0/16", "fd00::/64"]);
        let err = apply_cluster_input(&mut cluster(), &ClusterInput::default()).unwrap_err();
        assert!(err.for_field("endpoint").is_some(), "{err}");
    }
}
