//! The in-memory view of the machine inventory and the event recorder.
//!
//! Protocol hot paths (DHCP, TFTP) read `Inventory` snapshots and hand what they saw to
//! `Recorder`; neither waits on SQLite. The snapshot is rebuilt when this process changes the
//! inventory and when another process (the CLI) commits to the same database file.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::db::{Db, DbError, Observation};
use crate::metrics::Metrics;
use crate::model::{EventKind, Mac, Machine};

/// An immutable snapshot of the inventory.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub by_mac: HashMap<Mac, Machine>,
    pub by_ip: HashMap<Ipv4Addr, Mac>,
}

impl Snapshot {
    pub fn from_machines(machines: Vec<Machine>) -> Self {
        let mut by_ip = HashMap::new();
        let mut by_mac = HashMap::with_capacity(machines.len());
        for m in machines {
            if let Some(ip) = m.ip {
                by_ip.insert(ip.addr, m.mac);
            }
            by_mac.insert(m.mac, m);
        }
        Snapshot { by_mac, by_ip }
    }
}

#[derive(Debug, Clone)]
pub struct Inventory {
    current: Arc<RwLock<Arc<Snapshot>>>,
    changed: Arc<Notify>,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            current: Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
            changed: Arc::new(Notify::new()),
        }
    }
}

impl Inventory {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn get(&self, mac: &Mac) -> Option<Machine> {
        self.snapshot().by_mac.get(mac).cloned()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        match self.current.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    /// Reloads from the database now.
    pub async fn reload(&self, db: &Db) -> Result<(), DbError> {
        let machines = db.list_machines().await?;
        self.replace(Snapshot::from_machines(machines));
        Ok(())
    }

    /// Asks the watcher to reload soon (after a write made by this process).
    pub fn mark_changed(&self) {
        self.changed.notify_one();
    }

    /// Keeps the snapshot fresh until `cancel` fires: reloads when this process says it
    /// changed something, and when SQLite's `data_version` shows another process committed.
    pub async fn watch(self, db: Db, poll: Duration, cancel: CancellationToken) {
        let mut conn = match db.acquire().await {
            Ok(conn) => conn.detach(),
            Err(e) => {
                tracing::error!(error = %e, "inventory watcher cannot get a database connection");
                return;
            }
        };
        let mut last_version = Db::data_version(&mut conn).await.ok();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(poll) => {
                    let version = Db::data_version(&mut conn).await.ok();
                    if version == last_version {
                        continue;
                    }
                    last_version = version;
                }
            }
            if let Err(e) = self.reload(&db).await {
                tracing::warn!(error = %e, "inventory reload failed; keeping the previous snapshot");
            }
        }
    }
}

/// Queue capacity of the event recorder; past it, events are dropped and counted.
pub const RECORDER_QUEUE: usize = 65_536;

/// Hands observations to the database writer without waiting on it.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Observation>,
    clock: SharedClock,
    metrics: Metrics,
}

impl Recorder {
    /// Creates the recorder and the writer future that drains it into `db`.
    /// The writer ends once every `Recorder` clone is dropped, after a final flush.
    pub fn new(
        db: Db,
        inventory: Inventory,
        clock: SharedClock,
        metrics: Metrics,
    ) -> (Recorder, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
        let recorder = Recorder { tx, clock, metrics };
        (recorder, write_loop(db, inventory, rx))
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Records an event for `mac` with no extra facts about the machine.
    pub fn event(&self, mac: Mac, kind: EventKind, detail: impl Into<String>) {
        self.observe(Observation {
            mac,
            at: self.clock.now_ms(),
            kind,
            detail: detail.into(),
            arch: None,
            smbios_uuid: None,
            serial: None,
        });
    }

    pub fn observe(&self, obs: Observation) {
        if self.tx.try_send(obs).is_err() {
            self.metrics.events_dropped.inc();
        }
    }
}

async fn write_loop(db: Db, inventory: Inventory, mut rx: mpsc::Receiver<Observation>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        // Give a burst a moment to gather into one transaction.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(obs) => batch.push(obs),
                Err(_) => break,
            }
        }
        let discovered_new = batch.iter().any(|o| inventory.get(&o.mac).is_none());
        // A write can fail while the disk or another process holds SQLite up; keep the batch
        // and try again a few times before giving it up.
        let mut attempt = 0u32;
        while let Err(e) = db.record(&batch).await {
            attempt += 1;
            if attempt >= 5 {
                tracing::error!(error = %e, events = batch.len(), "could not store machine events; dropping them");
                break;
            }
            tracing::warn!(error = %e, attempt, "storing machine events failed; retrying");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        if discovered_new {
            inventory.mark_changed();
        }
        batch.clear();
    }
}

/// Which MAC address last used an IPv4 address, as learned by DHCP. TFTP requests carry only
/// the client's address; this lets their events land on the right machine.
#[derive(Clone, Debug, Default)]
pub struct Neighbours(Arc<RwLock<HashMap<Ipv4Addr, Mac>>>);

impl Neighbours {
    pub fn learn(&self, ip: Ipv4Addr, mac: Mac) {
        if ip.is_unspecified() {
            return;
        }
        let mut map = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.get(&ip) != Some(&mac) {
            map.insert(ip, mac);
        }
    }

    pub fn lookup(&self, ip: Ipv4Addr) -> Option<Mac> {
        let map = match self.0.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(&ip).copied()
    }
}
