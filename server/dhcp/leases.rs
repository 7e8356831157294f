//! The full-mode lease table: authoritative in memory, persisted in batches by `server`.
//!
//! Offers are held briefly and never persisted; bound leases are marked dirty when they change
//! so the flusher writes them (or deletes their row) without the hot path touching SQLite.
//! Each change is numbered, and the table knows up to which number its changes are committed
//! durably, so an ACK can wait for the write of the binding it announces (`unwritten`).
//! Expired leases stay in the table so a returning client gets its old address back, but any
//! other client may reclaim the address.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use crate::config::Pool;
use crate::db::LeaseRow;
use crate::model::Mac;

/// How long an offered address is held for the client it was offered to.
pub const OFFER_HOLD_MS: i64 = 60_000;
/// How long a DECLINEd address stays out of the pool (dnsmasq uses the same 10 minutes).
pub const DECLINE_QUARANTINE_MS: i64 = 600_000;
/// Most addresses one allocation looks at.
const MAX_SCAN: u64 = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
    pub hostname: Option<String>,
    /// `false` while only offered.
    pub bound: bool,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    by_mac: HashMap<Mac, Lease>,
    by_ip: HashMap<Ipv4Addr, Mac>,
    declined: HashMap<Ipv4Addr, i64>,
    dirty: HashSet<Mac>,
    /// How many changes of bound leases were made (the number of the latest).
    changes: u64,
    /// Every change numbered up to this one is committed durably.
    durable: u64,
    /// The number of each MAC's latest change not known to be durable yet.
    unwritten: HashMap<Mac, u64>,
    /// Where the next pool scan starts, so allocation is O(1) while the pool has room.
    cursor: u64,
}

impl LeaseTable {
    pub fn from_rows(rows: Vec<LeaseRow>) -> Self {
        let mut table = LeaseTable::default();
        for row in rows {
            table.insert(
                row.mac,
                Lease {
                    ip: row.ip,
                    expires_at: row.expires_at,
                    hostname: row.hostname,
                    bound: true,
                },
            );
        }
        table
    }

    pub fn get(&self, mac: &Mac) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// The client holding `ip`, if any (offered or bound, expired or not).
    pub fn holder(&self, ip: Ipv4Addr) -> Option<(Mac, &Lease)> {
        let mac = self.by_ip.get(&ip)?;
        self.by_mac.get(mac).map(|l| (*mac, l))
    }

    /// Whether `ip` may go to `mac` as far as leases and quarantine are concerned: nobody else
    /// holds it unexpired, and it was not declined recently.
    pub fn free_for(&self, ip: Ipv4Addr, mac: Mac, now: i64) -> bool {
        let taken = match self.holder(ip) {
            Some((holder, lease)) => holder != mac && lease.expires_at > now,
            None => false,
        };
        !taken && !self.is_declined(ip, now)
    }

    pub fn is_declined(&self, ip: Ipv4Addr, now: i64) -> bool {
        self.declined.get(&ip).is_some_and(|until| *until > now)
    }

    /// Finds a pool address for `mac`: never-used addresses first, then expired ones.
    /// `usable` applies the caller's other exclusions (inventory, our own address, ...).
    /// At most `MAX_SCAN` addresses are looked at, so a huge, nearly full pool costs bounded time.
    pub fn allocate(
        &mut self,
        pool: Pool,
        mac: Mac,
        now: i64,
        usable: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        let start = u64::from(u32::from(pool.start));
        let len = u64::from(u32::from(pool.end)).saturating_sub(start) + 1;
        let at = |offset: u64| Ipv4Addr::from(u32::try_from(start + offset).unwrap_or(u32::MAX));
        let mut reclaimable = None;
        for step in 0..len.min(MAX_SCAN) {
            let offset = (self.cursor + step) % len;
            let ip = at(offset);
            if !usable(ip) || !self.free_for(ip, mac, now) {
                continue;
            }
            if self.by_ip.contains_key(&ip) {
                reclaimable.get_or_insert(offset);
                continue;
            }
            self.cursor = (offset + 1) % len;
            return Some(ip);
        }
        let offset = reclaimable?;
        self.cursor = (offset + 1) % len;
        Some(at(offset))
    }

    /// Holds `ip` for `mac` until `until`. A binding to the same address is left as it is.
    pub fn offer(&mut self, mac: Mac, ip: Ipv4Addr, until: i64) {
        if let Some(lease) = self.by_mac.get(&mac) {
            if lease.ip == ip && lease.bound {
                return;
            }
        }
        self.insert(
            mac,
            Lease {
                ip,
                expires_at: until,
                hostname: None,
                bound: false,
            },
        );
    }

    /// Binds `ip` to `mac` and marks it for persisting.
    pub fn bind(&mut self, mac: Mac, ip: Ipv4Addr, expires_at: i64, hostname: Option<String>) {
        self.insert(
            mac,
            Lease {
                ip,
                expires_at,
                hostname,
                bound: true,
            },
        );
        self.changed(mac);
    }

    /// Drops an offer `mac` did not take (it chose another server). Bindings stay.
    pub fn forget_offer(&mut self, mac: Mac) {
        if self.by_mac.get(&mac).is_some_and(|l| !l.bound) {
            self.remove(mac);
        }
    }

    /// Frees `mac`'s lease if it is for `ip`; returns whether anything was freed.
    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr) -> bool {
        if self.by_mac.get(&mac).is_some_and(|l| l.ip == ip) {
            self.remove(mac);
            true
        } else {
            false
        }
    }

    /// Keeps `ip` out of the pool until `until` (a client found it in use).
    pub fn quarantine(&mut self, ip: Ipv4Addr, until: i64) {
        self.declined.insert(ip, until);
    }

    /// Lease changes not yet written: `Some` to upsert, `None` to delete.
    pub fn take_dirty(&mut self) -> Vec<(Mac, Option<LeaseRow>)> {
        let macs: Vec<Mac> = self.dirty.drain().collect();
        macs.into_iter()
            .map(|mac| {
                let row = self.by_mac.get(&mac).filter(|l| l.bound).map(|l| LeaseRow {
                    mac,
                    ip: l.ip,
                    expires_at: l.expires_at,
                    hostname: l.hostname.clone(),
                });
                (mac, row)
            })
            .collect()
    }

    /// Puts back changes whose write failed, so the next flush retries them.
    pub fn mark_dirty(&mut self, macs: impl IntoIterator<Item = Mac>) {
        self.dirty.extend(macs);
    }

    /// The number of the latest change: a flush that took the dirty set under the same lock
    /// writes every change up to it.
    pub fn latest_change(&self) -> u64 {
        self.changes
    }

    /// Every change up to `change` is committed durably.
    pub fn mark_durable(&mut self, change: u64) {
        self.durable = self.durable.max(change);
        let durable = self.durable;
        self.unwritten.retain(|_, n| *n > durable);
    }

    /// The change of `mac`'s lease a reply must wait for: `Some(n)` until every change up to
    /// `n` is committed durably, `None` when what the table holds for `mac` is on disk.
    pub fn unwritten(&self, mac: &Mac) -> Option<u64> {
        self.unwritten
            .get(mac)
            .copied()
            .filter(|n| *n > self.durable)
    }

    fn changed(&mut self, mac: Mac) {
        self.dirty.insert(mac);
        self.changes += 1;
        self.unwritten.insert(mac, self.changes);
    }

    /// Bound, unexpired leases (the `dhcp_leases` gauge).
    pub fn active(&self, now: i64) -> usize {
        self.by_mac
            .values()
            .filter(|l| l.bound && l.expires_at > now)
            .count()
    }

    /// Drops quarantine entries that have run out.
    pub fn sweep(&mut self, now: i64) {
        self.declined.retain(|_, until| *until > now);
    }

    fn insert(&mut self, mac: Mac, lease: Lease) {
        // Whoever held this address before loses it (inventory or expiry decided).
        if let Some(other) = self.by_ip.get(&lease.ip).copied() {
            if other != mac {
                self.remove(other);
            }
        }
        if let Some(old) = self.by_mac.get(&mac) {
            if old.ip != lease.ip {
                self.by_ip.remove(&old.ip);
                if old.bound {
                    self.changed(mac);
                }
            }
        }
        self.by_ip.insert(lease.ip, mac);
        self.by_mac.insert(mac, lease);
    }

    fn remove(&mut self, mac: Mac) {
        if let Some(old) = self.by_mac.remove(&mac) {
            self.by_ip.remove(&old.ip);
            if old.bound {
                self.changed(mac);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    #[test]
    fn allocation_prefers_unused_addresses_then_reclaims_expired_ones() {
        let pool: Pool = "10.0.0.10-10.0.0.11".parse().unwrap();
        let mut t = LeaseTable::default();
        let a = t.allocate(pool, mac(1), 0, |_| true).unwrap();
        t.bind(mac(1), a, 100, None);
        let b = t.allocate(pool, mac(2), 0, |_| true).unwrap();
        assert_ne!(a, b);
        t.bind(mac(2), b, 1_000, None);
        assert_eq!(t.allocate(pool, mac(3), 50, |_| true), None);
        // mac(1)'s lease expired at 100: its address can be reclaimed.
        assert_eq!(t.allocate(pool, mac(3), 150, |_| true), Some(a));
        t.bind(mac(3), a, 2_000, None);
        assert!(t.get(&mac(1)).is_none());
        let dirty: HashMap<_, _> = t.take_dirty().into_iter().collect();
        assert_eq!(dirty[&mac(1)], None);
        assert_eq!(dirty[&mac(3)].as_ref().unwrap().ip, a);
    }

    #[test]
    fn a_change_is_unwritten_until_the_flush_that_took_it_is_durable() {
        let mut t = LeaseTable::default();
        t.bind(mac(1), ip(1), 100, None);
        let first = t.unwritten(&mac(1)).expect("a new binding is not on disk");
        let (taken, upto) = (t.take_dirty(), t.latest_change());
        assert_eq!(taken.len(), 1);
        // A change made while that write is in flight is not covered by it.
        t.bind(mac(2), ip(2), 100, None);
        assert_eq!(t.unwritten(&mac(1)), Some(first), "taken is not written");
        t.mark_durable(upto);
        assert_eq!(t.unwritten(&mac(1)), None);
        assert!(t.unwritten(&mac(2)).is_some());
        // A renewal that moves the expiry waits for its own write again.
        t.bind(mac(1), ip(1), 200, None);
        assert!(t.unwritten(&mac(1)).is_some());
        // A failed write put back keeps them unwritten; the next durable flush covers both.
        let taken = t.take_dirty();
        t.mark_dirty(taken.into_iter().map(|(mac, _)| mac));
        assert!(t.unwritten(&mac(1)).is_some());
        let (taken, upto) = (t.take_dirty(), t.latest_change());
        assert_eq!(taken.len(), 2);
        t.mark_durable(upto);
        assert_eq!((t.unwritten(&mac(1)), t.unwritten(&mac(2))), (None, None));
    }

    #[test]
    fn huge_pools_neither_overflow_nor_scan_forever() {
        let everything: Pool = "0.0.0.0-255.255.255.255".parse().unwrap();
        let mut t = LeaseTable::default();
        assert_eq!(
            t.allocate(everything, mac(1), 0, |_| true),
            Some(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(t.allocate(everything, mac(1), 0, |_| false), None);
    }

    #[test]
    fn offers_do_not_downgrade_bindings_and_are_not_persisted() {
        let mut t = LeaseTable::default();
        t.offer(mac(1), ip(5), 10);
        assert!(t.take_dirty().is_empty());
        t.bind(mac(1), ip(5), 100, None);
        t.offer(mac(1), ip(5), 10);
        assert!(t.get(&mac(1)).unwrap().bound);
        t.forget_offer(mac(1));
        assert!(t.get(&mac(1)).is_some());
    }

    #[test]
    fn quarantine_expires() {
        let mut t = LeaseTable::default();
        t.quarantine(ip(5), 100);
        assert!(!t.free_for(ip(5), mac(1), 50));
        assert!(t.free_for(ip(5), mac(1), 150));
        t.sweep(150);
        assert!(!t.is_declined(ip(5), 0));
    }
}
