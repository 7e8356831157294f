//! The operator's machine input: one type the CLI's flags, the UI's form and the API's body
//! wrap, parsed here once with an error per field (named `ip`, `install_disk`, …; the CLI
//! shows them as its flags).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{cleared, Errors, OpsError};
use crate::model::{validate_hostname, DiskHandoff, EfiBinary, Ipv4Cidr, Machine, Role};

/// Machine fields as an operator types them: the CLI's `machines add|set` flags
/// (`--install-disk`, …), the API's JSON body and, converted from its form, the UI's. `None`
/// leaves a field as it is; an empty string (or "none") clears it.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema, clap::Args,
)]
#[serde(deny_unknown_fields)]
pub struct MachineInput {
    /// controlplane, worker or unassigned
    #[arg(long)]
    pub role: Option<String>,
    /// Hostname, one DNS label, e.g. cp-1; "none" clears it
    #[arg(long)]
    pub hostname: Option<String>,
    /// Static address with prefix, e.g. 192.168.1.21/24; "none" clears it
    #[arg(long)]
    pub ip: Option<String>,
    /// Default gateway, inside the machine's subnet; "none" clears it
    #[arg(long)]
    pub gateway: Option<String>,
    /// DNS servers, comma-separated; "none" clears them
    #[arg(long)]
    pub dns: Option<String>,
    /// Disk Talos installs to, e.g. /dev/sda or /dev/nvme0n1; empty (or "none") lets Talos pick
    /// the first disk of 6 GiB or more that is not read-only or a CD drive
    #[arg(long)]
    pub install_disk: Option<String>,
    /// How an installed machine leaves network boot: exit, http-404 or sanboot; empty for exit
    #[arg(long)]
    pub disk_handoff: Option<String>,
    /// iPXE build for this machine's x86-64 UEFI firmware: ipxe.efi or snponly.efi; empty (or
    /// "default") for the default
    #[arg(long)]
    pub efi_binary: Option<String>,
    /// Wipe the install disk when Talos installs (true/false)
    #[arg(long)]
    pub wipe: Option<bool>,
    /// Cluster the machine belongs to (one cluster is the common case)
    #[arg(long)]
    pub cluster: Option<String>,
    /// Talos version this machine boots and installs, e.g. v1.10.9; empty (or "none") follows
    /// the cluster's version
    #[arg(long)]
    pub talos_version: Option<String>,
    /// Run Talos from the network at every boot, never installed (Talos 1.14 or newer, workers
    /// only); false installs it again
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub diskless: Option<bool>,
}

/// Parses every given field into `m`, collecting one error per bad field, then checks the rules
/// every stored machine keeps.
pub fn apply_machine_input(m: &mut Machine, f: &MachineInput) -> Result<(), OpsError> {
    let mut errors = Errors::default();
    if let Some(role) = &f.role {
        match role.trim().parse::<Role>() {
            Ok(r) => m.role = r,
            Err(e) => errors.add("role", e.to_string()),
        }
    }
    if let Some(hostname) = &f.hostname {
        let hostname = hostname.trim();
        if cleared(hostname) {
            m.hostname = None;
        } else {
            match validate_hostname(hostname) {
                Ok(()) => m.hostname = Some(hostname.to_string()),
                Err(e) => errors.add("hostname", e),
            }
        }
    }
    if let Some(ip) = &f.ip {
        if cleared(ip) {
            m.ip = None;
        } else {
            match ip.trim().parse::<Ipv4Cidr>() {
                Ok(c) => m.ip = Some(c),
                Err(e) => errors.add("ip", e.to_string()),
            }
        }
    }
    if let Some(gw) = &f.gateway {
        if cleared(gw) {
            m.gateway = None;
        } else {
            match gw.trim().parse::<Ipv4Addr>() {
                Ok(g) => m.gateway = Some(g),
                Err(_) => errors.add("gateway", format!("'{gw}' is not an IPv4 address")),
            }
        }
    }
    if let Some(dns) = &f.dns {
        if cleared(dns) {
            m.dns = Vec::new();
        } else {
            let parsed: Result<Vec<Ipv4Addr>, String> = dns
                .split([',', ' '])
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse::<Ipv4Addr>()
                        .map_err(|_| format!("'{}' is not an IPv4 address", s.trim()))
                })
                .collect();
            match parsed {
                Ok(list) => m.dns = list,
                Err(e) => errors.add("dns", e),
            }
        }
    }
    if let Some(disk) = &f.install_disk {
        let disk = disk.trim();
        if cleared(disk) {
            m.install_disk = None;
        } else if !disk.starts_with("/dev/") || disk.contains(char::is_whitespace) {
            errors.add(
                "install_disk",
                format!("'{disk}' must be a device path such as /dev/sda"),
            );
        } else {
            m.install_disk = Some(disk.to_string());
        }
    }
    if let Some(handoff) = &f.disk_handoff {
        if cleared(handoff) {
            m.disk_handoff = DiskHandoff::Exit;
        } else {
            match handoff.trim().parse::<DiskHandoff>() {
                Ok(h) => m.disk_handoff = h,
                Err(e) => errors.add("disk_handoff", e.to_string()),
            }
        }
    }
    if let Some(efi) = &f.efi_binary {
        if cleared(efi) || efi == "default" {
            m.efi_binary = None;
        } else {
            match efi.trim().parse::<EfiBinary>() {
                Ok(e) => m.efi_binary = Some(e),
                Err(e) => errors.add("efi_binary", e.to_string()),
            }
        }
    }
    if let Some(wipe) = f.wipe {
        m.wipe = wipe;
    }
    if let Some(diskless) = f.diskless {
        m.diskless = diskless;
    }
    if let Some(cluster) = &f.cluster {
        if !cleared(cluster) {
            m.cluster = cluster.trim().to_string();
        }
    }
    if let Some(v) = &f.talos_version {
        let v = v.trim();
        if cleared(v) {
            m.talos_version = None;
        } else {
            match super::cluster::check_talos_version(v) {
                Ok(()) => m.talos_version = Some(v.to_string()),
                Err(e) => errors.add("talos_version", e),
            }
        }
    }
    check_machine_rules(m, &mut errors);
    errors.into_result()
}

/// Rules every stored machine keeps (fields already parsed).
fn check_machine_rules(m: &Machine, errors: &mut Errors) {
    if m.diskless && m.role == Role::Controlplane && !errors.has("role") {
        errors.add(
            "diskless",
            "a control plane cannot be diskless: it keeps its etcd member's data on its disk, \
             which a diskless machine loses at every reboot; make it a worker, or let it install",
        );
    }
    if m.role != Role::Unassigned {
        if m.hostname.is_none() && !errors.has("hostname") {
            errors.add("hostname", format!("a {} needs a hostname", m.role));
        }
        if m.ip.is_none() && !errors.has("ip") {
            errors.add(
                "ip",
                format!("a {} needs a static address ADDR/PREFIX", m.role),
            );
        }
    }
    if let Some(ip) = m.ip {
        if ip.prefix == 0 || ip.prefix > 30 {
            errors.add("ip", format!("{ip}: the prefix must be /1 to /30"));
        } else if ip.addr == ip.network() || ip.addr == ip.broadcast() {
            errors.add(
                "ip",
                format!("{ip} is the network or broadcast address of its subnet"),
            );
        }
        if let Some(gw) = m.gateway {
            if !ip.contains(gw) {
                errors.add(
                    "gateway",
                    format!(
                        "{gw} is outside the machine's subnet {}/{}",
                        ip.network(),
                        ip.prefix
                    ),
                );
            } else if gw == ip.addr {
                errors.add("gateway", "the gateway cannot be the machine's own address");
            }
        }
    } else if m.gateway.is_some() && !errors.has("ip") {
        errors.add("gateway", "a gateway needs a static address");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mac;

    fn mac() -> Mac {
        "52:54:00:00:00:01".parse().unwrap()
    }

    fn cp() -> MachineInput {
        MachineInput {
            role: Some("controlplane".into()),
            hostname: Some("cp-1".into()),
            ip: Some("10.0.0.11/24".into()),
            gateway: Some("10.0.0.1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn every_bad_field_is_reported_beside_its_name() {
        let mut m = Machine::discovered(mac());
        let input = MachineInput {
            role: Some("master".into()),
            hostname: Some("Bad_Name".into()),
            ip: Some("10.0.0.300/24".into()),
            dns: Some("1.1.1.1, x".into()),
            install_disk: Some("sda".into()),
            disk_handoff: Some("reboot".into()),
            ..cp()
        };
        let err = apply_machine_input(&mut m, &input).unwrap_err();
        for field in [
            "role",
            "hostname",
            "ip",
            "dns",
            "install_disk",
            "disk_handoff",
        ] {
            assert!(err.for_field(field).is_some(), "{field} missing in {err}");
        }
        assert!(err.for_field("gateway").is_none(), "{err}");
    }

    #[test]
    fn a_complete_controlplane_is_accepted_and_empty_clears() {
        let mut m = Machine::discovered(mac());
        apply_machine_input(&mut m, &cp()).unwrap();
        assert_eq!(m.role, Role::Controlplane);
        let clear = MachineInput {
            role: Some("unassigned".into()),
            hostname: Some(String::new()),
            ip: Some(String::new()),
            gateway: Some(String::new()),
            ..Default::default()
        };
        apply_machine_input(&mut m, &clear).unwrap();
        assert_eq!((m.hostname, m.ip, m.gateway), (None, None, None));
    }

    #[test]
    fn a_talos_version_pin_is_validated_and_cleared() {
        let mut m = Machine::discovered(mac());
        for bad in ["1.10.9", "v1.2.0", "../v1.11.6"] {
            let err = apply_machine_input(
                &mut m,
                &MachineInput {
                    talos_version: Some(bad.into()),
                    ..cp()
                },
            )
            .unwrap_err();
            assert!(err.for_field("talos_version").is_some(), "{bad}: {err}");
        }
        assert_eq!(m.talos_version, None);
        apply_machine_input(
            &mut m,
            &MachineInput {
                talos_version: Some(" v1.10.9 ".into()),
                ..cp()
            },
        )
        .unwrap();
        assert_eq!(m.talos_version.as_deref(), Some("v1.10.9"));
        apply_machine_input(
            &mut m,
            &MachineInput {
                talos_version: Some("none".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.talos_version, None);
    }

    #[test]
    fn gateway_outside_the_subnet_is_refused() {
        let mut m = Machine::discovered(mac());
        let err = apply_machine_input(
            &mut m,
            &MachineInput {
                gateway: Some("10.0.1.1".into()),
                ..cp()
            },
        )
        .unwrap_err();
        assert!(err.for_field("gateway").unwrap().contains("outside"));
    }
}
