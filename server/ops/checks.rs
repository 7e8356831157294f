//! The rules a machine keeps against the rest of the inventory, the LAN and its cluster:
//! unique names and addresses, the subnet and pool, three control planes, the VIP, diskless
//! Talos versions, the kernel command line, and a config that renders.

use super::lan::Lan;
use super::materials::{self, MaterialsError};
use super::{Errors, OpsError};
use crate::config::Pool;
use crate::db::Db;
use crate::model::{Machine, Role};

/// Rules that need the rest of the inventory and the LAN: unique names and addresses, the
/// subnet and pool, three control planes at most, the VIP, and a config that renders.
pub async fn check_against_inventory(
    db: &Db,
    lan: Option<&Lan>,
    m: &Machine,
    others: &[Machine],
) -> Result<(), OpsError> {
    let mut errors = Errors::default();
    for other in others.iter().filter(|o| o.mac != m.mac) {
        if m.hostname.is_some() && other.hostname == m.hostname {
            errors.add(
                "hostname",
                format!(
                    "{} is already used by {}",
                    other.hostname.as_deref().unwrap_or_default(),
                    other.mac
                ),
            );
        }
        if let (Some(a), Some(b)) = (m.ip, other.ip) {
            if a.addr == b.addr {
                errors.add("ip", format!("{} is already used by {}", a.addr, other.mac));
            }
        }
    }
    if let (Some(lan), Some(ip)) = (lan, m.ip) {
        if lan.appliance.contains(&ip.addr) {
            errors.add(
                "ip",
                format!("{} is this appliance's own address: pick another", ip.addr),
            );
        } else if !lan.subnet.contains(ip.addr) {
            errors.add(
                "ip",
                format!(
                    "{} is outside the LAN subnet {} that bootplane serves",
                    ip.addr, lan.subnet
                ),
            );
        } else if lan.pool.is_some_and(|p| p.contains(ip.addr)) {
            let pool = lan.pool.unwrap_or(Pool {
                start: ip.addr,
                end: ip.addr,
            });
            errors.add(
                "ip",
                format!(
                    "{} is inside the dynamic pool {}-{}: pick an address outside it",
                    ip.addr, pool.start, pool.end
                ),
            );
        }
    }
    if m.role == Role::Controlplane {
        let cps: Vec<&Machine> = others
            .iter()
            .filter(|o| o.mac != m.mac && o.cluster == m.cluster && o.role == Role::Controlplane)
            .collect();
        if cps.len() >= 3 {
            let names: Vec<String> = cps
                .iter()
                .map(|o| o.hostname.clone().unwrap_or_else(|| o.mac.to_string()))
                .collect();
            errors.add(
                "role",
                format!(
                    "the cluster already has three control planes ({}); make this machine a worker",
                    names.join(", ")
                ),
            );
        }
    }
    if m.diskless {
        let cluster_version = db.cluster_talos_version(&m.cluster).await?;
        if let Some(problem) = diskless_version_problem(m, cluster_version.as_deref()) {
            errors.add("diskless", problem);
        }
    }
    if !errors.0.is_empty() {
        return errors.into_result();
    }
    check_command_line(db, lan, m).await?;
    check_renders(db, m).await
}

/// The first Talos line that runs a machine without installing it (no install document).
pub const DISKLESS_SINCE: (u32, u32) = (1, 14);

/// Why diskless machine `m` cannot run the Talos version it would boot (its pin, else
/// `cluster_version`, else bootplane's default), if it cannot.
pub fn diskless_version_problem(m: &Machine, cluster_version: Option<&str>) -> Option<String> {
    let (version, whose) = match (&m.talos_version, cluster_version) {
        (Some(pin), _) => (pin.as_str(), "its pinned version"),
        (None, Some(v)) => (v, "its cluster's version"),
        (None, None) => (crate::config::DEFAULT_TALOS_VERSION, "bootplane's default"),
    };
    let supported =
        crate::talos::minor_version(version).is_some_and(|minor| minor >= DISKLESS_SINCE);
    (!supported).then(|| {
        format!(
            "diskless machines need Talos 1.14 or newer (older Talos installs to disk before it runs); this machine would run Talos {version}, {whose}"
        )
    })
}

/// Refuses an assigned machine whose whole kernel command line (its Talos version's
/// arguments, its assets' schematic, what the appliance adds) would be longer than the kernel
/// keeps, on its version pin when it has one. Without `serve`'s settings (the CLI) the
/// offline additions and the default Talos version are counted.
async fn check_command_line(db: &Db, lan: Option<&Lan>, m: &Machine) -> Result<(), OpsError> {
    use crate::talos::kernel::{Additions, Arch};
    if !m.is_assigned() {
        return Ok(());
    }
    let offline = Additions::offline();
    let (additions, default) = match lan {
        Some(lan) => (&lan.kernel, lan.default_version.as_str()),
        None => (&offline, crate::config::DEFAULT_TALOS_VERSION),
    };
    let version = crate::assets::machine_version(db, m, default).await?;
    // An architecture the machine never showed could be either.
    let arches = match m.last_arch {
        Some(_) => vec![crate::assets::arch_of_client(m.last_arch)],
        None => vec![Arch::Amd64, Arch::Arm64],
    };
    for arch in arches {
        let schematic = db
            .get_image(&version, arch)
            .await?
            .map(|a| a.kernel_args)
            .unwrap_or_default();
        if let Err(e) = additions
            .command_line(&version, arch, m.mac, &schematic)
            .check()
        {
            let field = if m.talos_version.is_some() {
                "talos_version"
            } else {
                "config"
            };
            return Err(OpsError::field(
                field,
                format!("Talos {version} {}: {e}", arch.as_str()),
            ));
        }
    }
    Ok(())
}

/// Refuses a machine whose config would not render, once its cluster is initialised.
async fn check_renders(db: &Db, m: &Machine) -> Result<(), OpsError> {
    if !m.is_assigned() {
        return Ok(());
    }
    let loaded = match materials::load_cluster(db, Some(&m.cluster)).await {
        Ok(l) => l,
        Err(MaterialsError::NotInitialised(_)) => return Ok(()),
        Err(e) => return Err(OpsError::field("cluster", e.to_string())),
    };
    if loaded.cluster.vip.is_some() && m.ip.map(|i| i.addr) == loaded.cluster.vip {
        return Err(OpsError::field("ip", "this is the cluster's VIP address"));
    }
    if let (Role::Controlplane, Some(vip), Some(ip)) = (m.role, loaded.cluster.vip, m.ip) {
        if !ip.contains(vip) {
            return Err(OpsError::field(
                "ip",
                format!(
                    "the cluster's VIP {vip} is outside this address's subnet {}/{}: a control plane needs an address in the VIP's subnet",
                    ip.network(),
                    ip.prefix
                ),
            ));
        }
    }
    if m.talos_version.is_some() {
        let spec = materials::spec_for(&loaded.spec, m);
        crate::talos::config::check_kubernetes_version(
            &spec.talos_version,
            &spec.kubernetes_version,
        )
        .map_err(|e| OpsError::field("talos_version", e.to_string()))?;
    }
    materials::check_cluster(
        &loaded.spec,
        &loaded.secrets,
        &loaded.patches,
        std::slice::from_ref(m),
    )
    .map_err(|e| OpsError::field("config", e.to_string()))
}
