//! What every HTTP handler can reach: `AppState`, one cheap-to-clone bundle of the appliance's
//! shared handles, built by `app` and passed to the routers with `with_state`.

use std::sync::Arc;

use crate::config::Config;
use crate::db::Db;
use crate::inventory::{Inventory, Neighbours, Recorder};
use crate::model::Mac;
use crate::support::metrics::Metrics;
use crate::tftp::IpxeFiles;

/// Shared by every HTTP handler; cheap to clone: one reference count, however many handles
/// it holds (axum clones the state for every request; cloning each handle's own references
/// took 40% of the appliance's CPU serving boot scripts).
#[derive(Clone, Debug)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// What an [`AppState`] holds.
#[derive(Debug)]
pub struct AppStateInner {
    pub config: Arc<Config>,
    pub db: Db,
    pub inventory: Inventory,
    pub recorder: Recorder,
    pub neighbours: Neighbours,
    pub metrics: Metrics,
    pub orchestrator: crate::orchestrator::Handle,
    pub login_limiter: crate::auth::LoginLimiter,
    /// Boot assets: `/assets/` serves only what this store verified.
    pub images: crate::assets::Images,
    /// Asset files open for `/assets/`, one per verified inode.
    pub open_assets: crate::http::files::OpenAssets,
    /// The iPXE binaries in memory, shared by TFTP and `/ipxe/`.
    pub ipxe_files: IpxeFiles,
    /// OAuth2 device requests, approvals and tokens (`--config-access oauth`).
    pub devices: crate::auth::devices::DeviceFlow,
    /// Boot asset downloads in flight per machine, for the boot timeline.
    pub transfers: crate::inventory::Transfers,
    /// Boot scripts as last rendered, per machine and iPXE build.
    pub scripts: ScriptCache,
    /// Clusters' parsed config materials, while the database's `materials_version` stands.
    pub materials: crate::ops::materials::MaterialsCache,
}

/// A boot script as rendered for one machine and iPXE build, with what it was made from.
#[derive(Clone, Debug)]
pub struct CachedScript {
    /// What it was made under: the inventory snapshot (`Snapshot::generation`), this
    /// process's asset record writes (`Images::records_written`) and the moves of the
    /// database's materials counter (`Db::materials_moves`: any process's asset record write).
    pub generation: (u64, u64, u64),
    /// When it was made, milliseconds since the Unix epoch.
    pub made_ms: i64,
    /// What it does, for the event log.
    pub detail: String,
    pub body: bytes::Bytes,
    /// When a request for it was last recorded in the event log.
    pub recorded_ms: i64,
}

/// Boot scripts by machine and iPXE build: a script changes only when its machine (or the
/// cluster, or its boot assets) changes, so a machine asking again and again (a wait loop, a
/// boot storm's retries) gets the same bytes without a render or a database round trip. An
/// entry serves while the inventory snapshot (machines, their clusters' names and versions) and
/// the asset records it was made from are current (this process's writes count at once,
/// another's once the inventory watcher's next poll sees the materials counter move), and for
/// at most [`SCRIPT_TTL_MS`]: a safety net, not a freshness bound.
#[derive(Clone, Debug, Default)]
pub struct ScriptCache(
    Arc<std::sync::Mutex<std::collections::HashMap<(Mac, &'static str), CachedScript>>>,
);

/// How long a rendered boot script is served at most without looking again, should a change
/// slip past the counters (a render costs a few database reads: a thousand machines asking all
/// the time cost a thousand renders a minute).
pub const SCRIPT_TTL_MS: i64 = 60_000;
/// A known machine's repeated script requests are logged at most this often.
pub const SCRIPT_RECORD_EVERY_MS: i64 = 1000;
/// Scripts kept at most (one per machine and build; a flood of made-up MACs stays bounded).
const SCRIPT_CACHE_CAP: usize = 8192;

impl ScriptCache {
    /// The script for `mac` and `buildarch` if it is current, and whether this request should
    /// be logged (the first in [`SCRIPT_RECORD_EVERY_MS`]).
    pub fn get(
        &self,
        mac: Mac,
        buildarch: &'static str,
        generation: (u64, u64, u64),
        now: i64,
    ) -> Option<(CachedScript, bool)> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get_mut(&(mac, buildarch))?;
        let age = now.saturating_sub(entry.made_ms);
        if entry.generation != generation || !(0..SCRIPT_TTL_MS).contains(&age) {
            return None;
        }
        let record = !(0..SCRIPT_RECORD_EVERY_MS).contains(&now.saturating_sub(entry.recorded_ms));
        if record {
            entry.recorded_ms = now;
        }
        Some((entry.clone(), record))
    }

    pub fn put(&self, mac: Mac, buildarch: &'static str, script: CachedScript) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SCRIPT_CACHE_CAP && !map.contains_key(&(mac, buildarch)) {
            map.clear();
        }
        map.insert((mac, buildarch), script);
    }
}

impl AppState {
    /// After an operator's write: refresh the snapshot and let the orchestrator look again.
    pub fn changed(&self) {
        self.inventory.mark_changed();
        self.orchestrator.signal(crate::orchestrator::Signal::Kick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(generation: (u64, u64, u64), made_ms: i64) -> CachedScript {
        CachedScript {
            generation,
            made_ms,
            detail: "install Talos v1.13.9".into(),
            body: bytes::Bytes::from_static(b"#!ipxe\n"),
            recorded_ms: made_ms,
        }
    }

    #[test]
    fn a_script_serves_while_its_snapshot_and_assets_are_current_and_for_its_ttl_at_most() {
        let cache = ScriptCache::default();
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        cache.put(mac, "x86_64", script((3, 7, 2), 10_000));
        assert!(cache.get(mac, "x86_64", (3, 7, 2), 10_500).is_some());
        assert!(cache
            .get(mac, "x86_64", (3, 7, 2), 10_000 + SCRIPT_TTL_MS - 1)
            .is_some());
        assert!(
            cache.get(mac, "i386", (3, 7, 2), 10_500).is_none(),
            "another build"
        );
        assert!(
            cache.get(mac, "x86_64", (4, 7, 2), 10_500).is_none(),
            "a new snapshot"
        );
        assert!(
            cache.get(mac, "x86_64", (3, 8, 2), 10_500).is_none(),
            "an asset written here"
        );
        assert!(
            cache.get(mac, "x86_64", (3, 7, 3), 10_500).is_none(),
            "an asset written by another process"
        );
        assert!(
            cache
                .get(mac, "x86_64", (3, 7, 2), 10_000 + SCRIPT_TTL_MS)
                .is_none(),
            "older than its TTL"
        );
        assert!(
            cache.get(mac, "x86_64", (3, 7, 2), 9_000).is_none(),
            "a clock that went back"
        );
    }

    #[test]
    fn repeated_requests_are_recorded_once_a_second() {
        let cache = ScriptCache::default();
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        cache.put(mac, "x86_64", script((1, 1, 1), 10_000));
        let record = |now| cache.get(mac, "x86_64", (1, 1, 1), now).map(|(_, r)| r);
        assert_eq!(
            record(10_100),
            Some(false),
            "the render itself was recorded"
        );
        assert_eq!(record(10_999), Some(false));
        let mut late = script((1, 1, 1), 10_500);
        late.recorded_ms = 9_000;
        cache.put(mac, "x86_64", late);
        assert_eq!(record(10_600), Some(true));
        assert_eq!(record(10_700), Some(false), "recorded just now");
    }
}
