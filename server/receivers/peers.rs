//! What the push receivers (the event sink and the kernel log receiver) share: which machine
//! a peer is, and limits on the connections they hold.
//!
//! Both receivers are plaintext and unauthenticated, like Talos's own senders. A peer is
//! attributed by its source address and what bootplane itself knows of that address: the MAC
//! its own DHCP server leased the address to, else the host's neighbour (ARP) table, else the
//! static address of a machine in the inventory (a routed peer, with no lease and no
//! neighbour entry). Nothing the peer or a DHCP client wrote (a `ciaddr`, a
//! requested address, a payload) ever attributes it. Whatever arrives this way is a hint,
//! never evidence.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::inventory::{Inventory, Neighbours};
use crate::model::Mac;

/// The IPv4 address of a peer (IPv4-mapped IPv6 included).
pub fn ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// The neighbour-table entry of `ip`, looked up once per connection (it reads a file).
pub fn arp_entry(ip: IpAddr) -> Option<Mac> {
    ipv4(ip).and_then(crate::net::neighbour_mac)
}

/// The inventory machine at `ip`, if any (see the module documentation for the order).
pub fn attribute(
    inventory: &Inventory,
    neighbours: &Neighbours,
    ip: IpAddr,
    arp: Option<Mac>,
    now_ms: i64,
) -> Option<Mac> {
    let ip = ipv4(ip)?;
    let snapshot = inventory.snapshot();
    let known = |mac: &Mac| snapshot.by_mac.contains_key(mac);
    if let Some(mac) = neighbours.lookup(ip, now_ms).or(arp) {
        return known(&mac).then_some(mac);
    }
    snapshot.by_ip.get(&ip).copied()
}

/// Caps the connections a receiver holds, in all and per peer address.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
}

/// Held for as long as a connection is open.
#[derive(Debug)]
pub struct ConnPermit {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnLimits {
    pub fn new(total: usize, max_per_ip: usize) -> ConnLimits {
        ConnLimits {
            total: Arc::new(Semaphore::new(total)),
            per_ip: Arc::default(),
            max_per_ip,
        }
    }

    /// A permit for one more connection from `ip`, or why not.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnPermit, &'static str> {
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| "too-many-connections")?;
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err("too-many-from-peer");
        }
        *count += 1;
        Ok(ConnPermit {
            _total: total,
            ip,
            per_ip: Arc::clone(&self.per_ip),
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// How often a refused peer is logged at most (a misconfigured node redials every second).
const WARN_EVERY: Duration = Duration::from_secs(600);

/// Rate-limits warnings per peer address.
#[derive(Clone, Debug, Default)]
pub struct Warned(Arc<Mutex<HashMap<IpAddr, Instant>>>);

impl Warned {
    /// Runs `log` unless `ip` was logged within `WARN_EVERY`.
    pub fn warn(&self, ip: IpAddr, log: impl FnOnce()) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&ip)
            .is_some_and(|at| now.duration_since(*at) < WARN_EVERY)
        {
            return;
        }
        if map.len() >= 1024 {
            map.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
        }
        map.insert(ip, now);
        drop(map);
        log();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_per_peer_and_in_all_and_free_on_drop() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), "too-many-from-peer");
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), "too-many-connections");
        drop(a1);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn peers_are_attributed_by_our_lease_then_arp_then_static_address() {
        let inventory = Inventory::default();
        let mut m = crate::model::Machine::discovered("52:54:00:00:00:01".parse().unwrap());
        m.ip = Some("10.0.0.11/24".parse().unwrap());
        let other = crate::model::Machine::discovered("52:54:00:00:00:02".parse().unwrap());
        inventory.replace(crate::inventory::Snapshot::from_machines(vec![
            m.clone(),
            other.clone(),
        ]));
        let neighbours = Neighbours::default();
        neighbours.learn("10.0.0.50".parse().unwrap(), other.mac, 1_000, 0);
        neighbours.learn(
            "10.0.0.51".parse().unwrap(),
            "52:54:00:00:00:99".parse().unwrap(),
            1_000,
            0,
        );
        let at = |ip: &str| attribute(&inventory, &neighbours, ip.parse().unwrap(), None, 10);
        assert_eq!(at("10.0.0.11"), Some(m.mac));
        assert_eq!(at("::ffff:10.0.0.11"), Some(m.mac));
        assert_eq!(at("10.0.0.50"), Some(other.mac));
        // Leased to a MAC that is not in the inventory: nobody.
        assert_eq!(at("10.0.0.51"), None);
        assert_eq!(at("10.0.0.52"), None);
        // Our lease ended: no longer evidence.
        let after = attribute(
            &inventory,
            &neighbours,
            "10.0.0.50".parse().unwrap(),
            None,
            1_000,
        );
        assert_eq!(after, None);
        // A host that took a machine's static address shows its own MAC in the ARP table.
        let stranger: Mac = "52:54:00:00:00:66".parse().unwrap();
        let ip = "10.0.0.11".parse().unwrap();
        assert_eq!(
            attribute(&inventory, &neighbours, ip, Some(stranger), 10),
            None
        );
        assert_eq!(
            attribute(&inventory, &neighbours, ip, Some(m.mac), 10),
            Some(m.mac)
        );
    }
}
