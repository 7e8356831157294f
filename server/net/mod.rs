//! Host network facts: which interface holds the default route and what its address is, the
//! neighbour table, and the host's DNS resolvers.

pub mod oui;
pub mod ra;

use std::net::Ipv4Addr;

use crate::model::Ipv4Cidr;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot read the routing table: {0}")]
    Routes(std::io::Error),
    #[error("this host has no IPv4 default route, so bootplane cannot guess its LAN interface: pass --interface")]
    NoDefaultRoute,
    #[error("cannot list network interfaces: {0}")]
    Interfaces(std::io::Error),
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("interface {0} has no IPv4 address: give it one, or pass --advertise-ip")]
    NoAddress(String),
}

/// What bootplane needs to know about the interface it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    pub index: u32,
    /// The interface's first IPv4 address with its prefix.
    pub cidr: Ipv4Cidr,
    /// The default gateway, when this interface holds the default route.
    pub gateway: Option<Ipv4Addr>,
}

/// Parses `/proc/net/route` text and returns (interface, gateway) of the IPv4 default route.
pub fn parse_default_route(table: &str) -> Option<(String, Ipv4Addr)> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 8 || cols[1] != "00000000" || cols[7] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(cols[2], 16).ok()?;
        // The table prints addresses in host (little-endian) byte order.
        Some((cols[0].to_string(), Ipv4Addr::from(gw.swap_bytes())))
    })
}

pub fn default_route() -> Result<(String, Ipv4Addr), NetError> {
    let table = std::fs::read_to_string("/proc/net/route").map_err(NetError::Routes)?;
    parse_default_route(&table).ok_or(NetError::NoDefaultRoute)
}

/// Looks up an interface by name, or the default-route interface when `name` is `None`.
pub fn interface(name: Option<&str>) -> Result<InterfaceInfo, NetError> {
    let route = default_route();
    let name = match name {
        Some(n) => n.to_string(),
        None => route
            .as_ref()
            .map_err(|_| NetError::NoDefaultRoute)?
            .0
            .clone(),
    };
    let gateway = match &route {
        Ok((iface, gw)) if *iface == name => Some(*gw),
        _ => None,
    };
    let index = nix::net::if_::if_nametoindex(name.as_str())
        .map_err(|_| NetError::NoSuchInterface(name.clone()))?;
    let addrs = if_addrs::get_if_addrs().map_err(NetError::Interfaces)?;
    let cidr = addrs
        .iter()
        .filter(|a| a.name == name)
        .find_map(|a| match &a.addr {
            if_addrs::IfAddr::V4(v4) => {
                let prefix = u32::from(v4.netmask).leading_ones() as u8;
                Some(Ipv4Cidr {
                    addr: v4.ip,
                    prefix,
                })
            }
            _ => None,
        })
        .ok_or_else(|| NetError::NoAddress(name.clone()))?;
    Ok(InterfaceInfo {
        name,
        index,
        cidr,
        gateway,
    })
}

/// Parses `/proc/net/arp` text: complete IPv4 neighbour entries as (ip, mac).
pub fn parse_arp_table(table: &str) -> Vec<(Ipv4Addr, crate::model::Mac)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [ip, _hw_type, flags, mac, ..] = cols.as_slice() else {
                return None;
            };
            // ATF_COM (0x2): the entry is complete.
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if flags & 0x2 == 0 {
                return None;
            }
            Some((ip.parse().ok()?, mac.parse().ok()?))
        })
        .collect()
}

/// The MAC address the kernel's neighbour table holds for `ip`, if it is on a local link.
pub fn neighbour_mac(ip: Ipv4Addr) -> Option<crate::model::Mac> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp_table(&table)
        .into_iter()
        .find(|(addr, _)| *addr == ip)
        .map(|(_, mac)| mac)
}

/// The IPv4 nameservers of a resolv.conf text that nodes could use: loopback ones (a local
/// stub such as systemd-resolved's 127.0.0.53) and unspecified ones are left out; at most 3,
/// as the resolver reads.
pub fn parse_resolv_conf(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<Ipv4Addr>) else {
            continue;
        };
        if !ip.is_loopback() && !ip.is_unspecified() && !out.contains(&ip) && out.len() < 3 {
            out.push(ip);
        }
    }
    out
}

/// The appliance host's own non-loopback IPv4 resolvers: `/etc/resolv.conf`, and when that
/// names only a local stub, systemd-resolved's upstream list. Empty when there are none.
pub fn host_nameservers() -> Vec<Ipv4Addr> {
    ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| parse_resolv_conf(&text))
        .find(|list| !list.is_empty())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn arp_table_keeps_complete_entries() {
        let table =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
            10.77.0.11       0x1         0x2         52:54:00:77:00:01     *        br0\n\
            10.77.0.12       0x1         0x0         00:00:00:00:00:00     *        br0\n\
            10.77.0.13       0x1         0x6         52:54:00:77:00:03     *        br0\n";
        let got = parse_arp_table(table);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(got[0].1.to_string(), "52:54:00:77:00:01");
        assert_eq!(got[1].0, Ipv4Addr::new(10, 77, 0, 13));
    }

    use super::*;

    #[test]
    fn default_route_is_read_from_proc_format() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_route(table),
            Some(("eth0".to_string(), Ipv4Addr::new(192, 168, 1, 1)))
        );
        assert_eq!(parse_default_route("Iface\tDestination\n"), None);
    }

    #[test]
    fn loopback_resolves_by_name() {
        let info = interface(Some("lo")).unwrap();
        assert_eq!(info.cidr.addr, Ipv4Addr::LOCALHOST);
        assert!(interface(Some("no-such-if0")).is_err());
    }
}
