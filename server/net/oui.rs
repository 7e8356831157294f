//! Network-card vendors by the MAC's OUI, for the operators' machine list.
//!
//! The IEEE registry comes from Debian's `ieee-data` package (`/usr/share/ieee-data/oui.csv`,
//! updated with the system rather than with bootplane), loaded once on first use. Virtual NICs
//! that matter in a homelab (QEMU/KVM, Proxmox, VMware, Hyper-V, VirtualBox, Xen) are known
//! without it; locally administered addresses are said to be so.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use crate::model::Mac;

pub const DEFAULT_REGISTRY: &str = "/usr/share/ieee-data/oui.csv";

/// Prefixes of virtual NICs, checked before the registry (QEMU's is not registered).
const VIRTUAL: &[([u8; 3], &str)] = &[
    ([0x52, 0x54, 0x00], "QEMU/KVM virtual NIC"),
    ([0xbc, 0x24, 0x11], "Proxmox virtual NIC"),
    ([0x00, 0x50, 0x56], "VMware virtual NIC"),
    ([0x00, 0x0c, 0x29], "VMware virtual NIC"),
    ([0x00, 0x15, 0x5d], "Hyper-V virtual NIC"),
    ([0x08, 0x00, 0x27], "VirtualBox virtual NIC"),
    ([0x00, 0x16, 0x3e], "Xen virtual NIC"),
];

/// OUI (24-bit, as u32) → organisation name.
#[derive(Debug, Default)]
pub struct Registry {
    names: HashMap<u32, Box<str>>,
}

impl Registry {
    /// Parses the IEEE MA-L CSV (`Registry,Assignment,Organization Name,Organization Address`).
    /// Lines that do not parse are skipped.
    pub fn parse(csv: &str) -> Registry {
        let mut names = HashMap::new();
        for line in csv.lines().skip(1) {
            let Some((_, rest)) = line.split_once(',') else {
                continue;
            };
            let Some((assignment, rest)) = rest.split_once(',') else {
                continue;
            };
            let Ok(oui) = u32::from_str_radix(assignment.trim(), 16) else {
                continue;
            };
            if assignment.trim().len() != 6 {
                continue;
            }
            let name = match rest.strip_prefix('"') {
                Some(quoted) => quoted_field(quoted),
                None => rest.split(',').next().unwrap_or_default().to_string(),
            };
            let name = name.trim();
            if !name.is_empty() {
                names.insert(oui, name.into());
            }
        }
        Registry { names }
    }

    pub fn load(path: &Path) -> Registry {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let registry = Registry::parse(&text);
                tracing::debug!(path = %path.display(), entries = registry.names.len(), "OUI registry loaded");
                registry
            }
            Err(e) => {
                tracing::info!(path = %path.display(), error = %e,
                    "no OUI registry: vendors are shown for virtual NICs only (Debian: apt-get install ieee-data)");
                Registry::default()
            }
        }
    }

    pub fn vendor(&self, mac: Mac) -> Option<String> {
        let b = mac.0;
        let prefix = [b[0], b[1], b[2]];
        if let Some((_, name)) = VIRTUAL.iter().find(|(p, _)| *p == prefix) {
            return Some((*name).to_string());
        }
        let oui = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        if let Some(name) = self.names.get(&oui) {
            return Some(name.to_string());
        }
        (b[0] & 0x02 != 0).then(|| "locally administered".to_string())
    }
}

/// The text of a CSV field that started with a quote (`""` is a literal quote).
fn quoted_field(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                out.push('"');
                chars.next();
            } else {
                break;
            }
        } else {
            out.push(c);
        }
    }
    out
}

static SYSTEM: OnceLock<Registry> = OnceLock::new();

/// The vendor of a MAC from the system registry (loaded on first call).
pub fn vendor(mac: Mac) -> Option<String> {
    SYSTEM
        .get_or_init(|| Registry::load(Path::new(DEFAULT_REGISTRY)))
        .vendor(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lines_quoted_or_not_give_the_vendor() {
        let csv = "Registry,Assignment,Organization Name,Organization Address\n\
                   MA-L,00D0EF,IGT,9295 PROTOTYPE DRIVE RENO NV US 89511 \n\
                   MA-L,3CECEF,\"Super Micro Computer, Inc.\",980 Rock Ave San Jose CA US 95131 \n\
                   MA-L,ZZZZZZ,Broken,x\n\
                   garbage\n";
        let r = Registry::parse(csv);
        let mac = |s: &str| s.parse::<Mac>().unwrap();
        assert_eq!(r.vendor(mac("00:d0:ef:01:02:03")).as_deref(), Some("IGT"));
        assert_eq!(
            r.vendor(mac("3c:ec:ef:aa:bb:cc")).as_deref(),
            Some("Super Micro Computer, Inc.")
        );
        assert_eq!(
            r.vendor(mac("52:54:00:12:34:56")).as_deref(),
            Some("QEMU/KVM virtual NIC")
        );
        assert_eq!(
            r.vendor(mac("02:00:00:00:00:01")).as_deref(),
            Some("locally administered")
        );
        assert_eq!(r.vendor(mac("00:11:22:33:44:55")), None);
        assert_eq!(r.names.len(), 2);
    }
}
