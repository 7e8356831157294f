//! The in-memory view of the machine inventory and the event recorder.
//!
//! Protocol hot paths (DHCP, TFTP) read `Inventory` snapshots and hand what they saw to
//! `Recorder`; neither waits on SQLite. The snapshot is rebuilt when an operator's write in this
//! process says so, and when the database's `inventory_version` counter (kept by triggers)
//! shows that machine data changed, whoever committed it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError, Observation};
use crate::model::{Event, EventKind, Mac, Machine};
use crate::support::clock::SharedClock;
use crate::support::metrics::Metrics;

/// An immutable snapshot of the inventory.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub by_mac: HashMap<Mac, Machine>,
    pub by_ip: HashMap<Ipv4Addr, Mac>,
    /// Counts the snapshots this process has loaded: anything made from an older one (a
    /// cached boot script) may be out of date.
    pub generation: u64,
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
        Snapshot {
            by_mac,
            by_ip,
            generation: 0,
        }
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

    pub fn replace(&self, mut snapshot: Snapshot) {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        snapshot.generation = guard.generation.wrapping_add(1);
        *guard = Arc::new(snapshot);
    }

    /// Reloads from the database now.
    pub async fn reload(&self, db: &Db) -> Result<(), DbError> {
        let machines = db.list_machines().await?;
        self.replace(Snapshot::from_machines(machines));
        Ok(())
    }

    /// Asks the watcher to reload now (after an operator's write made by this process).
    pub fn mark_changed(&self) {
        self.changed.notify_one();
    }

    /// Keeps the snapshot fresh until `cancel` fires: reloads at once when this process says
    /// it changed something, and when the database's `inventory_version` moved (any process's
    /// change to machine data, including discoveries and lifecycle steps) at the next poll.
    /// Writes that do not change machine data (events, leases, the boot log, last-seen
    /// stamps) cause no reload. Polls driven by the counter are spaced at least ten times the
    /// last reload's duration apart, so reloading a large inventory during a storm of
    /// discoveries takes at most a tenth of a core.
    /// Each poll reads `materials_version` too, which counts its moves ([`Db::materials_moves`]).
    pub async fn watch(self, db: Db, poll: Duration, cancel: CancellationToken) {
        let mut last_version = db.change_versions().await.ok().map(|v| v.0);
        let mut wait = poll;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {
                    let version = db.change_versions().await.ok().map(|v| v.0);
                    if version == last_version {
                        wait = poll;
                        continue;
                    }
                }
            }
            // Read the counter before the machines: a change committed in between is seen
            // again at the next poll rather than missed.
            last_version = db.inventory_version().await.ok();
            let started = std::time::Instant::now();
            if let Err(e) = self.reload(&db).await {
                tracing::warn!(error = %e, "inventory reload failed; keeping the previous snapshot");
            }
            wait = poll.max(started.elapsed() * 10);
        }
    }
}

/// Queue capacity of the event recorder; past it, events are dropped and counted. A boot storm
/// of 200 machines queues a few thousand; a full queue holds about 3 MiB.
pub const RECORDER_QUEUE: usize = 16_384;

/// What the recorder queues, in order.
#[derive(Debug)]
enum Entry {
    /// A machine seen on the network: may discover it, refreshes its last-seen facts.
    Seen(Observation),
    /// bootplane's own news about a machine, written as it is; `done` hears when it is stored.
    News(Event, oneshot::Sender<bool>),
}

/// The one way events reach the event log (lifecycle steps aside, which the database logs in
/// the transaction that takes them): sightings are handed over without waiting and dropped
/// (and counted) when the queue is full; bootplane's own news waits for room and for its write,
/// so what is logged next comes after it.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Entry>,
    clock: SharedClock,
    metrics: Metrics,
    repeats: Arc<std::sync::Mutex<Repeats>>,
    /// Wakes the writer from gathering sightings: news is waited for.
    news_queued: Arc<Notify>,
}

/// A DHCP sighting identical to the last one recorded for the same machine and kind, this
/// recent, is not recorded again: firmware retransmits, and a client that renews or re-boots in a loop
/// repeats itself many times a second, which would fill the event log with copies and keep the
/// database writer (and the leases waiting behind it) busy.
pub const REPEAT_QUIET_MS: i64 = 5_000;
/// Keys the repeat filter holds per generation: a flood of new MACs costs bounded memory and
/// constant time per packet (the older generation is dropped whole).
const REPEATS_REMEMBERED: usize = 65_536;

type RepeatKey = (Mac, EventKind);

/// The last sighting recorded per (machine, kind): a hash of what it said and when. Two
/// generations: entries move to `older` when a new one starts (every [`REPEAT_QUIET_MS`], or
/// sooner when `current` is full), and `older` is dropped then, so every entry lives at least
/// one quiet period unless a flood fills a generation first.
#[derive(Debug, Default)]
struct Repeats {
    current: HashMap<RepeatKey, (u64, i64)>,
    older: HashMap<RepeatKey, (u64, i64)>,
    /// When `current` started.
    since: i64,
}

impl Repeats {
    fn said(obs: &Observation) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&obs.detail, obs.arch, &obs.smbios_uuid, &obs.serial).hash(&mut hasher);
        hasher.finish()
    }

    /// Whether `obs` repeats a sighting recorded less than [`REPEAT_QUIET_MS`] ago; if not, it
    /// becomes the one to compare with.
    fn is_repeat(&mut self, obs: &Observation) -> bool {
        let said = Self::said(obs);
        let key = (obs.mac, obs.kind);
        let last = self.current.get(&key).or_else(|| self.older.get(&key));
        if let Some(&(last_said, at)) = last {
            if last_said == said && (0..REPEAT_QUIET_MS).contains(&(obs.at - at)) {
                return true;
            }
        }
        let aged = !(0..REPEAT_QUIET_MS).contains(&(obs.at - self.since));
        if aged || self.current.len() >= REPEATS_REMEMBERED {
            self.older = std::mem::take(&mut self.current);
            self.since = obs.at;
        }
        self.current.insert(key, (said, obs.at));
        false
    }

    /// Forgets `obs` (it could not be queued): the next identical sighting is recorded.
    fn forget(&mut self, obs: &Observation) {
        let key = (obs.mac, obs.kind);
        self.current.remove(&key);
        self.older.remove(&key);
    }
}

impl Recorder {
    /// Creates the recorder and the writer future that drains it into `db`.
    /// The writer ends once every `Recorder` clone is dropped, after a final flush.
    pub fn new(
        db: Db,
        clock: SharedClock,
        metrics: Metrics,
    ) -> (Recorder, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
        let news_queued = Arc::new(Notify::new());
        let recorder = Recorder {
            tx,
            clock,
            metrics,
            repeats: Arc::default(),
            news_queued: news_queued.clone(),
        };
        (recorder, write_loop(db, rx, news_queued))
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

    /// Queues a packet's sighting (DHCP) without waiting, unless it repeats one recorded
    /// moments ago: firmware retransmits, clients in a boot loop or a flood repeat themselves.
    pub fn observe_packet(&self, obs: Observation) {
        let repeats = || {
            self.repeats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if repeats().is_repeat(&obs) {
            self.metrics.events_repeated.inc();
            return;
        }
        if let Err(e) = self.tx.try_send(Entry::Seen(obs)) {
            if let Entry::Seen(obs) = e.into_inner() {
                repeats().forget(&obs);
            }
            self.metrics.events_dropped.inc();
        }
    }

    /// Queues a sighting without waiting.
    pub fn observe(&self, obs: Observation) {
        if self.tx.try_send(Entry::Seen(obs)).is_err() {
            self.metrics.events_dropped.inc();
        }
    }

    /// Logs bootplane's own news about `mac` and returns once it is stored (false if it could
    /// not be: the writer stopped or the database refused it, which the writer logs).
    pub async fn news(&self, mac: Mac, kind: EventKind, detail: impl Into<String>) -> bool {
        let event = Event {
            mac,
            at: self.clock.now_ms(),
            kind,
            detail: detail.into(),
        };
        let (done, stored) = oneshot::channel();
        // Wake the writer from any gathering before waiting for room in a full queue, and
        // again once the news is in it.
        self.news_queued.notify_one();
        if self.tx.send(Entry::News(event, done)).await.is_err() {
            return false;
        }
        self.news_queued.notify_one();
        stored.await.unwrap_or(false)
    }
}

/// How long sightings gather before they are written together, normally.
const GATHER: Duration = Duration::from_millis(20);
/// How long they gather after a batch of at least [`FLOOD_BATCH`]: under a flood (a storm of
/// new machines, or of invented MACs) each transaction then covers more sightings, and the
/// cap on unclaimed machines ([`crate::db::DISCOVERED_CAP`]) lets fewer of the new ones be
/// stored (and pruned again) per second. News written at once is not held back.
const FLOOD_GATHER: Duration = Duration::from_millis(250);
const FLOOD_BATCH: usize = 256;
/// Entries per transaction at most: one write of sightings holds the writer connection, which
/// the lease flush (and the ACKs held for it) shares, for a bounded time. A queue already
/// holding this many is written at once, without gathering.
const MAX_BATCH: usize = 4096;

async fn write_loop(db: Db, mut rx: mpsc::Receiver<Entry>, news_queued: Arc<Notify>) {
    let mut batch = Vec::with_capacity(512);
    let mut gather = GATHER;
    while rx.recv_many(&mut batch, 512).await > 0 {
        // Give a burst of sightings a moment to gather into one transaction; news someone
        // waits for (a `/config` answer, a probe's report-in) is written at once, and cuts
        // the gathering short when it arrives meanwhile.
        let waited_for = batch.iter().any(|e| matches!(e, Entry::News(..)));
        let backed_up = batch.len() + rx.len() >= MAX_BATCH;
        if !waited_for && !backed_up {
            tokio::select! {
                () = tokio::time::sleep(gather) => {}
                () = news_queued.notified() => {}
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        gather = if batch.len() >= FLOOD_BATCH {
            FLOOD_GATHER
        } else {
            GATHER
        };
        // In queue order: each run of sightings, then each run of news, as one write.
        let mut entries = batch.drain(..).peekable();
        while let Some(first) = entries.next() {
            match first {
                Entry::Seen(obs) => {
                    let mut seen = vec![obs];
                    while let Some(Entry::Seen(_)) = entries.peek() {
                        if let Some(Entry::Seen(obs)) = entries.next() {
                            seen.push(obs);
                        }
                    }
                    let stored = with_retries(|| db.record(&seen)).await;
                    if !stored {
                        tracing::error!(
                            events = seen.len(),
                            "could not store machine events; dropping them"
                        );
                    }
                }
                Entry::News(event, done) => {
                    let mut news = vec![event];
                    let mut waiting = vec![done];
                    while let Some(Entry::News(..)) = entries.peek() {
                        if let Some(Entry::News(event, done)) = entries.next() {
                            news.push(event);
                            waiting.push(done);
                        }
                    }
                    let stored = with_retries(|| db.append_events(&news)).await;
                    if !stored {
                        tracing::error!(
                            events = news.len(),
                            "could not store bootplane's events; dropping them"
                        );
                    }
                    for done in waiting {
                        let _ = done.send(stored);
                    }
                }
            }
        }
        // News that came in with a batch (not during a gathering) left a wake-up behind, which
        // would cut the next gathering short for nothing. With the queue empty, no news is
        // waiting for it.
        if rx.is_empty() {
            let _ = news_queued.notified().now_or_never();
        }
    }
}

/// A write can fail while the disk or another process holds SQLite up: try a few times.
async fn with_retries<F, Fut>(mut write: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), DbError>>,
{
    let mut attempt = 0u32;
    loop {
        match write().await {
            Ok(()) => return true,
            Err(e) => {
                attempt += 1;
                if attempt >= 5 {
                    tracing::error!(error = %e, "storing events failed {attempt} times");
                    return false;
                }
                tracing::warn!(error = %e, attempt, "storing events failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
}

/// Boot asset downloads in flight, per machine (the `?mac=` of the asset URL, which is a
/// claim: this is for the operator's timeline only, never evidence). The HTTP body holds the
/// counter it adds to; once it is dropped (the transfer ended or broke) only this registry
/// holds it, and the entry is gone.
#[derive(Clone, Debug, Default)]
pub struct Transfers(Arc<std::sync::Mutex<HashMap<Mac, InFlight>>>);

#[derive(Debug)]
struct InFlight {
    asset: &'static str,
    total: u64,
    started_ms: i64,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

/// Machines whose transfers are remembered at most (a flood of made-up MACs stays bounded).
const TRANSFERS_CAP: usize = 4096;

impl Transfers {
    /// A download of `total` bytes of `asset` ("kernel", "initramfs") to `mac` started, its
    /// body adding the bytes it sends to `sent`.
    pub fn track(
        &self,
        mac: Mac,
        asset: &'static str,
        total: u64,
        now: i64,
        sent: Arc<std::sync::atomic::AtomicU64>,
    ) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TRANSFERS_CAP {
            map.retain(|_, t| Arc::strong_count(&t.sent) > 1);
        }
        if map.len() < TRANSFERS_CAP || map.contains_key(&mac) {
            map.insert(
                mac,
                InFlight {
                    asset,
                    total,
                    started_ms: now,
                    sent,
                },
            );
        }
    }

    /// `mac`'s download in flight, if one is.
    pub fn get(&self, mac: Mac) -> Option<crate::model::timeline::Transfer> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = map.get(&mac)?;
        if Arc::strong_count(&t.sent) == 1 {
            map.remove(&mac);
            return None;
        }
        Some(crate::model::timeline::Transfer {
            asset: t.asset.to_string(),
            sent: t.sent.load(std::sync::atomic::Ordering::Relaxed),
            total: t.total,
            started_ms: t.started_ms,
        })
    }
}

/// Which MAC bootplane's own DHCP server leased an IPv4 address to, until the lease ends.
///
/// This is evidence of who holds an address, so it is filled from one place only: an ACK of
/// this server's full DHCP that binds the address (never from `ciaddr`, option 50, an INFORM or
/// a proxyDHCP exchange, which the client writes itself). `/config` (`--config-access mac`), the
/// push receivers and TFTP attribution read it; the host's neighbour table is the other source
/// of evidence they accept.
#[derive(Clone, Debug, Default)]
pub struct Neighbours(Arc<RwLock<HashMap<Ipv4Addr, Leased>>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leased {
    mac: Mac,
    expires_ms: i64,
}

/// Most addresses `Neighbours` keeps: every address of a /16 pool. Past it, expired entries
/// go first, then the ones whose lease ends soonest.
pub const NEIGHBOURS_MAX: usize = 65_536;

impl Neighbours {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Ipv4Addr, Leased>> {
        match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Our DHCP server bound `ip` to `mac` until `expires_ms`.
    pub fn learn(&self, ip: Ipv4Addr, mac: Mac, expires_ms: i64, now_ms: i64) {
        if ip.is_unspecified() || expires_ms <= now_ms {
            return;
        }
        let entry = Leased { mac, expires_ms };
        let mut map = self.write();
        if map.get(&ip) == Some(&entry) {
            return;
        }
        if map.len() >= NEIGHBOURS_MAX && !map.contains_key(&ip) {
            map.retain(|_, l| l.expires_ms > now_ms);
            if map.len() >= NEIGHBOURS_MAX {
                if let Some(soonest) = map
                    .iter()
                    .min_by_key(|(_, l)| l.expires_ms)
                    .map(|(ip, _)| *ip)
                {
                    map.remove(&soonest);
                }
            }
        }
        map.insert(ip, entry);
    }

    /// The lease of `ip` held by `mac` ended early (RELEASE, DECLINE).
    pub fn forget(&self, ip: Ipv4Addr, mac: Mac) {
        let mut map = self.write();
        if map.get(&ip).is_some_and(|l| l.mac == mac) {
            map.remove(&ip);
        }
    }

    /// The MAC holding `ip` by a lease of ours that has not ended at `now_ms`.
    pub fn lookup(&self, ip: Ipv4Addr, now_ms: i64) -> Option<Mac> {
        let map = match self.0.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(&ip)
            .filter(|l| l.expires_ms > now_ms)
            .map(|l| l.mac)
    }

    /// The one evidence rule for who holds `ip`: our own lease of it (until it ends), else the
    /// host's neighbour table. `/config`, the wipe decision, the device flow, TFTP and the push
    /// receivers all ask this.
    pub fn owner(&self, ip: Ipv4Addr, now_ms: i64) -> Option<Mac> {
        self.lookup(ip, now_ms)
            .or_else(|| crate::net::neighbour_mac(ip))
    }

    pub fn len(&self) -> usize {
        match self.0.read() {
            Ok(guard) => guard.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::LeaseRow;

    fn seen(mac: Mac, at: i64, arch: Option<u16>) -> Observation {
        Observation {
            mac,
            at,
            kind: EventKind::DhcpOffer,
            detail: String::new(),
            arch,
            smbios_uuid: None,
            serial: None,
        }
    }

    #[test]
    fn a_repeated_sighting_is_recorded_once_per_quiet_period_and_any_change_is_recorded() {
        let mut repeats = Repeats::default();
        let a: Mac = "52:54:00:00:00:01".parse().unwrap();
        let b: Mac = "52:54:00:00:00:02".parse().unwrap();
        assert!(!repeats.is_repeat(&seen(a, 1_000, Some(7))));
        assert!(
            repeats.is_repeat(&seen(a, 1_500, Some(7))),
            "a retransmission"
        );
        assert!(
            !repeats.is_repeat(&seen(b, 1_500, Some(7))),
            "another machine"
        );
        assert!(
            !repeats.is_repeat(&seen(a, 1_600, Some(0))),
            "a change of architecture"
        );
        assert!(repeats.is_repeat(&seen(a, 1_700, Some(0))));
        let mut ack = seen(a, 1_700, Some(0));
        ack.kind = EventKind::DhcpAck;
        assert!(!repeats.is_repeat(&ack), "another kind of event");
        let mut other = seen(a, 1_800, Some(0));
        other.detail = "file=ipxe.efi".into();
        assert!(!repeats.is_repeat(&other), "another detail");
        assert!(
            !repeats.is_repeat(&seen(a, 1_800 + REPEAT_QUIET_MS, Some(0))),
            "the quiet period is over"
        );
        // A clock that went back does not silence a machine.
        assert!(!repeats.is_repeat(&seen(b, 0, Some(7))));
    }

    #[test]
    fn a_flood_of_new_machines_keeps_the_repeat_filter_bounded() {
        let mut repeats = Repeats::default();
        for i in 0..(REPEATS_REMEMBERED as u32 * 2 + 10) {
            assert!(!repeats.is_repeat(&seen(nth_mac(i), 1_000, None)));
        }
        assert!(repeats.current.len() <= REPEATS_REMEMBERED);
        assert!(repeats.older.len() <= REPEATS_REMEMBERED);
    }

    /// A MAC per number, locally administered.
    fn nth_mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        Mac([0x02, 0x00, b[0], b[1], b[2], b[3]])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn news_is_written_at_once_while_a_flood_of_sightings_gathers() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let clock = crate::support::clock::system();
        let (recorder, writer) = Recorder::new(db.clone(), clock, Metrics::default());
        // A flood, queued before the writer starts so that it is one batch: after it the
        // writer gathers for FLOOD_GATHER.
        let flood = u32::try_from(FLOOD_BATCH).unwrap() + 10;
        for i in 0..flood {
            recorder.observe_packet(seen(nth_mac(i), recorder.now_ms(), None));
        }
        let writer = tokio::spawn(writer);
        let mut stored = 0;
        for _ in 0..400 {
            stored = db.list_machines().await.unwrap().len();
            if stored == flood as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stored, flood as usize, "the flood was stored");
        // A sighting starts the long gathering; news queued behind it ends it.
        let late = nth_mac(flood);
        recorder.observe_packet(seen(late, recorder.now_ms(), None));
        // The writer takes the sighting alone and starts gathering.
        tokio::time::sleep(FLOOD_GATHER / 10).await;
        let asked = std::time::Instant::now();
        assert!(recorder.news(late, EventKind::ConfigFetched, "").await);
        let waited = asked.elapsed();
        assert!(
            waited < FLOOD_GATHER / 2,
            "news waited {waited:?} for the sightings to gather"
        );
        let events = db.events(late, 10).await.unwrap();
        let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Discovered,
                EventKind::DhcpOffer,
                EventKind::ConfigFetched
            ],
            "the sighting queued first is written with it, before it"
        );
        drop(recorder);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn only_changes_to_machine_data_move_the_inventory_version() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let v0 = db.inventory_version().await.unwrap();
        db.record(&[seen(mac, 1, Some(7))]).await.unwrap();
        let v1 = db.inventory_version().await.unwrap();
        assert!(v1 > v0, "a discovery is new machine data");
        // The same machine seen again: events and last-seen stamps only.
        db.record(&[seen(mac, 2, Some(7)), seen(mac, 3, None)])
            .await
            .unwrap();
        let served = Event {
            mac,
            at: 4,
            kind: EventKind::TftpServed,
            detail: "ipxe.efi".into(),
        };
        db.append_events(&[served]).await.unwrap();
        let lease = LeaseRow {
            mac,
            ip: "10.0.0.50".parse().unwrap(),
            expires_at: 10_000,
            hostname: None,
        };
        db.save_leases(&[(mac, Some(lease))]).await.unwrap();
        assert_eq!(db.inventory_version().await.unwrap(), v1);
        // A new fact (UEFI after BIOS) and a lifecycle step are.
        db.record(&[seen(mac, 5, Some(0))]).await.unwrap();
        let v2 = db.inventory_version().await.unwrap();
        assert!(v2 > v1);
        let assigned = crate::model::lifecycle::Step::Edited {
            role: crate::model::Role::Worker,
        };
        db.step(mac, assigned, "test", 6).await.unwrap();
        assert!(db.inventory_version().await.unwrap() > v2);
    }

    #[test]
    fn neighbours_forget_ended_leases_and_stay_bounded() {
        let n = Neighbours::default();
        let a: Mac = "52:54:00:00:00:01".parse().unwrap();
        let b: Mac = "52:54:00:00:00:02".parse().unwrap();
        let ip: Ipv4Addr = "10.0.0.5".parse().unwrap();
        n.learn(ip, a, 1_000, 0);
        assert_eq!(n.lookup(ip, 999), Some(a));
        assert_eq!(n.lookup(ip, 1_000), None, "an ended lease is no evidence");
        n.forget(ip, b);
        assert_eq!(
            n.lookup(ip, 10),
            Some(a),
            "only the holder's release forgets"
        );
        n.forget(ip, a);
        assert_eq!(n.lookup(ip, 10), None);
        n.learn(Ipv4Addr::UNSPECIFIED, a, 1_000, 0);
        n.learn(ip, a, 5, 10);
        assert!(n.is_empty(), "nothing unspecified or already ended is kept");
        for i in 0..(NEIGHBOURS_MAX as u32 + 10) {
            n.learn(Ipv4Addr::from(0x0a00_0000 + i), a, 100 + i64::from(i), 0);
        }
        assert_eq!(n.len(), NEIGHBOURS_MAX);
        assert_eq!(
            n.lookup(Ipv4Addr::from(0x0a00_0000), 0),
            None,
            "soonest ending went first"
        );
    }
}
