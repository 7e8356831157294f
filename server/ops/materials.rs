//! Cluster materials: turns what the database holds (cluster settings, secrets bundle,
//! patches, machines) into machine configs and operator credentials.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::db::{Db, DbError};
use crate::model::{Cluster, Mac, Machine, PatchRecord, PatchScope, ReportTargets, Role};
use crate::talos::config::{
    self, default_kubernetes_version, CertKey, ClusterSpec, ConfigSecrets, FactorySchematic,
    Installers, NodeSpec, Patches, RenderError,
};
use crate::talos::Arch;

/// The Image Factory schematics of the recorded boot assets, by Talos version and architecture
/// (`Db::factory_schematics`).
pub type FactorySchematics = std::collections::BTreeMap<(String, Arch), FactorySchematic>;
use crate::talos::patch::Patch;
use crate::talos::secrets::{SecretsBundle, SecretsError};

#[derive(Debug, thiserror::Error)]
pub enum MaterialsError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cluster '{0}' is not initialised: run `bootplane cluster init` first")]
    NotInitialised(String),
    #[error("the stored secrets bundle is unreadable: {0}")]
    Secrets(#[from] SecretsError),
    #[error("{0}")]
    Render(#[from] RenderError),
    #[error("patch '{name}' ({scope}): {message}")]
    BadPatch {
        name: String,
        scope: PatchScope,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Everything needed to render any node of one cluster.
#[derive(Debug)]
pub struct LoadedCluster {
    pub cluster: Cluster,
    pub spec: ClusterSpec,
    pub bundle: SecretsBundle,
    pub secrets: ConfigSecrets,
    pub patches: Vec<PatchRecord>,
}

/// The bundle's values as machine configs carry them.
pub fn config_secrets(bundle: &SecretsBundle) -> ConfigSecrets {
    let pair = |ca: &crate::talos::secrets::CertAndKey| CertKey {
        crt: ca.crt_b64(),
        key: ca.key_b64(),
    };
    ConfigSecrets {
        cluster_id: bundle.cluster_id().to_string(),
        cluster_secret: bundle.cluster_secret().to_string(),
        bootstrap_token: bundle.bootstrap_token().to_string(),
        trustd_token: bundle.trustd_token().to_string(),
        secretbox_secret: bundle.secretbox_secret().map(str::to_string),
        aescbc_secret: bundle.aescbc_secret().map(str::to_string),
        os_ca: pair(bundle.os_ca()),
        k8s_ca: pair(bundle.k8s_ca()),
        aggregator_ca: pair(bundle.k8s_aggregator_ca()),
        etcd_ca: pair(bundle.etcd_ca()),
        service_account_key: bundle.k8s_service_account_key_b64(),
    }
}

/// Settings with Talos's defaults filled in, as a render input. The installer image is the one
/// an amd64 node of the cluster's version gets (`spec_for` picks each machine's own): the
/// cluster's setting, else the metal installer of the Image Factory schematic in `factory`
/// that version's boot assets came from, else talosctl's default.
pub fn cluster_spec(
    c: &Cluster,
    factory: &FactorySchematics,
) -> Result<ClusterSpec, MaterialsError> {
    let talos_version = c
        .talos_version
        .clone()
        .ok_or_else(|| MaterialsError::NotInitialised(c.name.clone()))?;
    let endpoint = c
        .endpoint
        .clone()
        .ok_or_else(|| MaterialsError::NotInitialised(c.name.clone()))?;
    let kubernetes_version = match &c.kubernetes_version {
        Some(v) => v.trim_start_matches('v').to_string(),
        None => default_kubernetes_version(&talos_version)
            .ok_or_else(|| RenderError::UnsupportedVersion(talos_version.clone()))?
            .to_string(),
    };
    let installers = Installers {
        cluster: c
            .install_image
            .clone()
            .map(|image| (image, talos_version.clone())),
        factory: factory.clone(),
    };
    Ok(ClusterSpec {
        name: c.name.clone(),
        endpoint,
        vip: c.vip,
        install_image: installers.pick(&talos_version, Arch::Amd64).0,
        installers,
        talos_version,
        kubernetes_version,
        pod_subnets: c.pod_subnets.clone(),
        service_subnets: c.service_subnets.clone(),
        dns_domain: c.dns_domain.clone(),
        node_subnets: c.node_subnets.clone(),
        report_to: ReportTargets::default(),
        nameservers: c.nameservers.clone(),
    })
}

pub async fn load_cluster(db: &Db, name: Option<&str>) -> Result<LoadedCluster, MaterialsError> {
    let cluster = db
        .get_cluster(name)
        .await?
        .ok_or_else(|| DbError::NoCluster(name.unwrap_or("default").to_string()))?;
    let yaml = db
        .cluster_secrets(&cluster.name)
        .await?
        .ok_or_else(|| MaterialsError::NotInitialised(cluster.name.clone()))?;
    let bundle = SecretsBundle::from_yaml(&yaml)?;
    let secrets = config_secrets(&bundle);
    let mut spec = cluster_spec(&cluster, &db.factory_schematics().await?)?;
    spec.report_to = db.report_targets().await?;
    let patches = db.list_patches(&cluster.name).await?;
    Ok(LoadedCluster {
        cluster,
        spec,
        bundle,
        secrets,
        patches,
    })
}

/// Clusters' loaded materials as last read, by name, with the `materials_version` they were
/// read under: parsing a secrets bundle (its CA keys checked against their certificates) costs
/// more than rendering a config, and a boot storm fetches a config per machine.
#[derive(Clone, Debug, Default)]
pub struct MaterialsCache(Arc<std::sync::Mutex<std::collections::HashMap<String, Versioned>>>);

/// Loaded materials and the `materials_version` they were read under.
type Versioned = (i64, Arc<LoadedCluster>);

/// Clusters kept at most (a name per cluster; a bound, not a working set).
const MATERIALS_CACHE_CAP: usize = 64;

impl MaterialsCache {
    fn get(&self, name: &str, version: i64) -> Option<Arc<LoadedCluster>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .filter(|(v, _)| *v == version)
            .map(|(_, loaded)| Arc::clone(loaded))
    }

    fn put(&self, name: &str, version: i64, loaded: Arc<LoadedCluster>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MATERIALS_CACHE_CAP && !map.contains_key(name) {
            map.clear();
        }
        map.insert(name.to_string(), (version, loaded));
    }
}

/// [`load_cluster`] for the cluster `name`, from `cache` while nothing it was read from
/// changed (in any process): the version is read first, so materials read under an older one
/// are never kept under a newer one.
pub async fn load_cluster_cached(
    db: &Db,
    cache: &MaterialsCache,
    name: &str,
) -> Result<Arc<LoadedCluster>, MaterialsError> {
    let version = db.materials_version().await?;
    if let Some(loaded) = cache.get(name, version) {
        return Ok(loaded);
    }
    let loaded = Arc::new(load_cluster(db, Some(name)).await?);
    cache.put(name, version, Arc::clone(&loaded));
    Ok(loaded)
}

fn parse_patches(records: &[PatchRecord]) -> Result<Vec<(PatchRecord, Patch)>, MaterialsError> {
    records
        .iter()
        .map(|r| {
            Patch::parse(&r.body)
                .map(|p| (r.clone(), p))
                .map_err(|e| MaterialsError::BadPatch {
                    name: r.name.clone(),
                    scope: r.scope,
                    message: e.to_string(),
                })
        })
        .collect()
}

/// The patches that apply to `mac` with role `role`, by level.
fn patches_for(parsed: &[(PatchRecord, Patch)], mac: Mac) -> Patches {
    let mut out = Patches::default();
    for (record, patch) in parsed {
        let entry = (record.name.clone(), patch.clone());
        match record.scope {
            PatchScope::Cluster => out.cluster.push(entry),
            PatchScope::Controlplane => out.controlplane.push(entry),
            PatchScope::Worker => out.worker.push(entry),
            PatchScope::Machine if record.mac == Some(mac) => out.machine.push(entry),
            PatchScope::Machine => {}
        }
    }
    out
}

/// A machine's own settings; a machine without its own nameservers gets the cluster's.
pub fn node_spec(m: &Machine, spec: &ClusterSpec) -> Result<NodeSpec, MaterialsError> {
    let (hostname, ip) = match (&m.hostname, m.ip) {
        (Some(h), Some(ip)) if m.is_assigned() => (h.clone(), ip),
        _ => {
            return Err(MaterialsError::Invalid(format!(
                "{} needs a role, a hostname and a static IP to have a config",
                m.mac
            )))
        }
    };
    Ok(NodeSpec {
        mac: m.mac,
        role: m.role,
        hostname,
        ip,
        gateway: m.gateway,
        dns: if m.dns.is_empty() {
            spec.nameservers.clone()
        } else {
            m.dns.clone()
        },
        install_disk: m.install_disk.clone(),
        wipe: m.wipe,
        diskless: m.diskless,
    })
}

/// The cluster's settings as `m` is rendered with: a machine that pins its own Talos version
/// gets that version's config contract, and every machine the installer of its version and
/// architecture (`Installers::pick`: the cluster's setting, retagged for a pinned version when
/// tagged with the cluster's; else the factory schematic that version's boot assets of the
/// machine's architecture came from; else talosctl's default for that version). The
/// architecture is the one bootplane saw in the machine's DHCP requests, amd64 until then.
pub fn spec_for<'a>(spec: &'a ClusterSpec, m: &Machine) -> std::borrow::Cow<'a, ClusterSpec> {
    let version = m.talos_version.as_deref().unwrap_or(&spec.talos_version);
    let (image, _) = spec
        .installers
        .pick(version, Arch::of_dhcp_client(m.last_arch));
    if version == spec.talos_version && image == spec.install_image {
        return std::borrow::Cow::Borrowed(spec);
    }
    let mut own = spec.clone();
    own.talos_version = version.to_string();
    own.install_image = image;
    std::borrow::Cow::Owned(own)
}

/// The installers nodes of the cluster's version install, for people: one line when every
/// architecture gets the same, else one per architecture (`" amd64"`, `" arm64"`), each with
/// the image (empty: none named) and where it comes from.
pub fn installers_shown(spec: &ClusterSpec) -> Vec<(String, String, config::InstallerSource)> {
    let amd64 = spec.installers.pick(&spec.talos_version, Arch::Amd64);
    let arm64 = spec.installers.pick(&spec.talos_version, Arch::Arm64);
    if amd64 == arm64 {
        return vec![(String::new(), amd64.0, amd64.1)];
    }
    vec![
        (" amd64".into(), amd64.0, amd64.1),
        (" arm64".into(), arm64.0, arm64.1),
    ]
}

/// Renders the config of one machine of a loaded cluster.
pub fn render_machine(loaded: &LoadedCluster, m: &Machine) -> Result<String, MaterialsError> {
    let parsed = parse_patches(&loaded.patches)?;
    let node = node_spec(m, &loaded.spec)?;
    Ok(config::render(
        &spec_for(&loaded.spec, m),
        &loaded.secrets,
        &node,
        &patches_for(&parsed, m.mac),
    )?)
}

/// A stand-in node used to check cluster- and role-level settings when no real machine of
/// that role exists yet: in the VIP's /24 when the cluster has one (a control plane must be in
/// its VIP's subnet), else in 192.0.2.0/24.
fn sample_node(role: Role, spec: &ClusterSpec) -> NodeSpec {
    let vip = spec.vip;
    let [a, b, c, _] = vip.unwrap_or(Ipv4Addr::new(192, 0, 2, 0)).octets();
    let host = |n: u8| {
        let ip = Ipv4Addr::new(a, b, c, n);
        if Some(ip) == vip {
            Ipv4Addr::new(a, b, c, n + 1)
        } else {
            ip
        }
    };
    let last = if role == Role::Controlplane { 10 } else { 20 };
    NodeSpec {
        mac: Mac([0x02, 0, 0, 0, 0, last]),
        role,
        hostname: format!("sample-{role}"),
        ip: crate::model::Ipv4Cidr {
            addr: host(last),
            prefix: 24,
        },
        gateway: Some(host(1)),
        dns: spec.nameservers.clone(),
        install_disk: None,
        wipe: false,
        diskless: false,
    }
}

/// Checks that the cluster's Kubernetes version runs on its Talos line and on every line a
/// machine is pinned to, and that every assigned machine of the cluster (and a sample node of
/// each role) still renders a valid config with `spec` and `records`. Returns the first problem, naming the
/// machine, so a bad setting or patch is refused before it is stored.
pub fn check_cluster(
    spec: &ClusterSpec,
    secrets: &ConfigSecrets,
    records: &[PatchRecord],
    machines: &[Machine],
) -> Result<(), MaterialsError> {
    let parsed = parse_patches(records)?;
    config::check_kubernetes_version(&spec.talos_version, &spec.kubernetes_version)?;
    for role in [Role::Controlplane, Role::Worker] {
        let node = sample_node(role, spec);
        config::render_documents(spec, secrets, &node, &patches_for(&parsed, node.mac))
            .map_err(|e| MaterialsError::Invalid(format!("a {role}'s config: {e}")))?;
    }
    for m in machines
        .iter()
        .filter(|m| m.is_assigned() && m.cluster == spec.name)
    {
        let node = node_spec(m, spec)?;
        let spec = spec_for(spec, m);
        let who = || format!("{} ({})", m.hostname.as_deref().unwrap_or("?"), m.mac);
        config::check_kubernetes_version(&spec.talos_version, &spec.kubernetes_version).map_err(
            |e| {
                MaterialsError::Invalid(format!(
                    "{} is pinned to Talos {}: {e}",
                    who(),
                    spec.talos_version
                ))
            },
        )?;
        config::render_documents(&spec, secrets, &node, &patches_for(&parsed, m.mac)).map_err(
            |e| {
                MaterialsError::Invalid(format!(
                    "{} ({})'s config: {e}",
                    m.hostname.as_deref().unwrap_or("?"),
                    m.mac
                ))
            },
        )?;
    }
    Ok(())
}

/// Generates a bundle for `talos_version`, or adopts `import` (talosctl's secrets.yaml).
pub fn new_bundle(
    talos_version: &str,
    import: Option<&str>,
    now: SystemTime,
) -> Result<SecretsBundle, MaterialsError> {
    Ok(match import {
        Some(text) => SecretsBundle::from_yaml(text)?,
        None => SecretsBundle::generate(talos_version, now)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(install_image: Option<&str>) -> Cluster {
        Cluster {
            name: "lab".into(),
            endpoint: Some("https://10.0.0.10:6443".into()),
            vip: None,
            talos_version: Some("v1.11.6".into()),
            kubernetes_version: Some("1.34.1".into()),
            install_image: install_image.map(str::to_string),
            pod_subnets: vec![],
            service_subnets: vec![],
            dns_domain: "cluster.local".into(),
            node_subnets: Default::default(),
            nameservers: vec![],
            initialised_at: None,
            generation: 1,
            single_controlplane: false,
            bootstrapped_at: None,
        }
    }

    fn spec(install_image: &str) -> ClusterSpec {
        cluster_spec(&cluster(Some(install_image)), &FactorySchematics::new()).unwrap()
    }

    fn factory(entries: &[(&str, Arch, &str)]) -> FactorySchematics {
        entries
            .iter()
            .map(|(version, arch, schematic)| {
                (
                    (version.to_string(), *arch),
                    FactorySchematic {
                        host: "factory.talos.dev".into(),
                        schematic: schematic.to_string(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn without_a_cluster_setting_the_installer_is_the_boot_assets_factory_schematics() {
        let assets = factory(&[
            ("v1.11.6", Arch::Amd64, "aaa"),
            ("v1.11.6", Arch::Arm64, "bbb"),
            ("v1.13.9", Arch::Amd64, "ccc"),
        ]);
        let spec = cluster_spec(&cluster(None), &assets).unwrap();
        assert_eq!(
            spec.install_image, "factory.talos.dev/metal-installer/aaa:v1.11.6",
            "the cluster's version on amd64"
        );
        let mut m = Machine::discovered(Mac([0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!(*spec_for(&spec, &m), spec);
        m.last_arch = Some(11);
        assert_eq!(
            spec_for(&spec, &m).install_image,
            "factory.talos.dev/metal-installer/bbb:v1.11.6",
            "an arm64 machine installs the schematic its arm64 assets came from"
        );
        m.last_arch = Some(7);
        m.talos_version = Some("v1.13.9".into());
        let pinned = spec_for(&spec, &m);
        assert_eq!(pinned.talos_version, "v1.13.9");
        assert_eq!(
            pinned.install_image, "factory.talos.dev/metal-installer/ccc:v1.13.9",
            "a pinned version's own schematic"
        );
        m.talos_version = Some("v1.10.9".into());
        assert_eq!(
            spec_for(&spec, &m).install_image,
            "ghcr.io/siderolabs/installer:v1.10.9",
            "no factory assets for that version: talosctl's default"
        );
        m.talos_version = Some("v1.14.0-rc.1".into());
        assert_eq!(spec_for(&spec, &m).install_image, "");
        let chosen =
            cluster_spec(&cluster(Some("registry.local/installer:v1.11.6")), &assets).unwrap();
        m.talos_version = None;
        assert_eq!(
            spec_for(&chosen, &m).install_image,
            "registry.local/installer:v1.11.6",
            "the cluster's setting wins over the factory"
        );
    }

    #[test]
    fn a_pinned_machine_renders_with_its_version_and_installer() {
        let mut m = Machine::discovered(Mac([0x52, 0x54, 0, 0, 0, 1]));
        let cluster = cluster_spec(&cluster(None), &FactorySchematics::new()).unwrap();
        assert_eq!(
            cluster.install_image,
            "ghcr.io/siderolabs/installer:v1.11.6"
        );
        assert_eq!(*spec_for(&cluster, &m), cluster, "no pin: the cluster's");
        m.talos_version = Some("v1.10.9".into());
        let pinned = spec_for(&cluster, &m);
        assert_eq!(pinned.talos_version, "v1.10.9");
        assert_eq!(pinned.install_image, "ghcr.io/siderolabs/installer:v1.10.9");
        assert_eq!(
            pinned.kubernetes_version, "1.34.1",
            "one Kubernetes per cluster"
        );
        m.talos_version = Some("v1.14.0-rc.1".into());
        assert_eq!(
            spec_for(&cluster, &m).install_image,
            "",
            "1.14 publishes no installer: the node installs its own version"
        );
        m.talos_version = Some("v1.10.9".into());
        let factory = spec("factory.talos.dev/installer/abc123:v1.11.6");
        assert_eq!(
            spec_for(&factory, &m).install_image,
            "factory.talos.dev/installer/abc123:v1.10.9"
        );
        let custom = spec("registry.local/talos-installer:stable");
        assert_eq!(
            spec_for(&custom, &m).install_image,
            "registry.local/talos-installer:stable",
            "an image not tagged with the cluster's version is kept"
        );
    }

    #[test]
    fn a_machine_pinned_to_another_line_is_checked_against_that_lines_schema() {
        let cluster = spec("ghcr.io/siderolabs/installer:v1.11.6");
        let bundle = SecretsBundle::generate("v1.11.6", SystemTime::now()).unwrap();
        let secrets = config_secrets(&bundle);
        // machine.network is in 1.11's schema and gone from 1.13's.
        let records = [PatchRecord {
            scope: PatchScope::Cluster,
            mac: None,
            position: 0,
            name: "kubespan".into(),
            body: "machine:\n  network:\n    kubespan:\n      enabled: true\n".into(),
        }];
        let mut m = Machine::discovered(Mac([0x52, 0x54, 0, 0, 0, 1]));
        m.cluster = cluster.name.clone();
        m.role = Role::Worker;
        m.hostname = Some("w-1".into());
        m.ip = Some("10.0.0.21/24".parse().unwrap());
        let machines = [m.clone()];
        check_cluster(&cluster, &secrets, &records, &machines).unwrap();
        m.talos_version = Some("v1.13.9".into());
        let err = check_cluster(&cluster, &secrets, &records, &[m]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("w-1") && msg.contains("network"), "{msg}");
    }

    /// A cluster's materials are parsed once while nothing they come from changes; a change
    /// written by another process (another handle on the same file) counts at the next load.
    #[tokio::test]
    async fn cached_materials_serve_until_another_process_changes_the_cluster_or_its_patches() {
        use crate::ops::{cluster, patches};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let input = cluster::ClusterInput {
            endpoint: Some("https://10.0.0.10:6443".into()),
            nameservers: Some("none".into()),
            ..Default::default()
        };
        cluster::init_cluster(&db, &input, 1).await.unwrap();
        let name = db.get_cluster(None).await.unwrap().unwrap().name;
        let cache = MaterialsCache::default();
        let first = load_cluster_cached(&db, &cache, &name).await.unwrap();
        let again = load_cluster_cached(&db, &cache, &name).await.unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "loaded twice with nothing changed"
        );

        let other = Db::open(dir.path()).await.unwrap();
        let changed = cluster::ClusterInput {
            dns_domain: Some("lab.internal".into()),
            ..Default::default()
        };
        cluster::update_cluster(&other, &changed, 2).await.unwrap();
        let after = load_cluster_cached(&db, &cache, &name).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &after));
        assert_eq!(after.cluster.dns_domain, "lab.internal");

        let patch = patches::PatchInput {
            scope: "cluster".into(),
            mac: None,
            name: "somaxconn".into(),
            body: "machine:\n  sysctls:\n    net.core.somaxconn: \"65535\"\n".into(),
        };
        patches::save_patch(&other, &patch, 3).await.unwrap();
        let patched = load_cluster_cached(&db, &cache, &name).await.unwrap();
        assert_eq!(patched.patches.len(), 1);
        assert!(Arc::ptr_eq(
            &patched,
            &load_cluster_cached(&db, &cache, &name).await.unwrap()
        ));
    }
}
