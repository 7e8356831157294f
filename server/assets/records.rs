//! The asset records, through a short-lived cache for boot scripts; every write empties it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Asset, AssetState, Images, ImagesError};
use crate::db::DbError;
use crate::talos::Arch;

/// Asset records by (version, arch), with when they were read.
/// Asset records by version and arch: when each was read, under which
/// [`crate::db::Db::materials_moves`] count, and the record.
pub(super) type RecordCache = HashMap<(String, &'static str), (Instant, u64, Option<Asset>)>;

/// How long a boot script may use an asset record read earlier. A record read before a move
/// of the materials counter (any process's write to asset records, seen within one inventory
/// poll) is not used at all.
pub const RECORD_CACHE_TTL: Duration = Duration::from_secs(1);

impl Images {
    /// The extra kernel arguments recorded with the assets of `version` and `arch` (from their
    /// factory schematic); none when nothing is recorded.
    pub async fn kernel_args(&self, version: &str, arch: Arch) -> Result<Vec<String>, ImagesError> {
        Ok(self
            .boot_record(version, arch)
            .await?
            .map(|a| a.kernel_args)
            .unwrap_or_default())
    }

    /// The asset's record for boot scripts: from the short-lived cache, else the database.
    pub(super) async fn boot_record(
        &self,
        version: &str,
        arch: Arch,
    ) -> Result<Option<Asset>, ImagesError> {
        let key = (version.to_string(), arch.as_str());
        let moves = self.db.materials_moves();
        if let Ok(cache) = self.records.lock() {
            if let Some((at, seen, record)) = cache.get(&key) {
                if at.elapsed() < RECORD_CACHE_TTL && *seen == moves {
                    return Ok(record.clone());
                }
            }
        }
        let record = self.db.get_image(version, arch).await?;
        // No record is not kept: assets an operator adds from the CLI count at once.
        if record.is_some() {
            if let Ok(mut cache) = self.records.lock() {
                cache.insert(key, (Instant::now(), moves, record.clone()));
            }
        }
        Ok(record)
    }

    pub(super) async fn put_record(&self, asset: &Asset) -> Result<(), DbError> {
        let result = self.db.put_image(asset).await;
        self.records_changed();
        result
    }

    pub(super) async fn remove_record(&self, version: &str, arch: Arch) -> Result<bool, DbError> {
        let result = self.db.remove_image(version, arch).await;
        self.records_changed();
        result
    }

    pub(super) async fn set_record_state(
        &self,
        version: &str,
        arch: Arch,
        state: &AssetState,
        at: i64,
    ) -> Result<bool, DbError> {
        let result = self.db.set_image_state(version, arch, state, at).await;
        self.records_changed();
        result
    }

    /// Takes an asset out of service, now, saying why.
    pub(super) async fn mark_broken(
        &self,
        version: &str,
        arch: Arch,
        reason: &str,
    ) -> Result<bool, DbError> {
        let broken = AssetState::Broken(reason.to_string());
        self.set_record_state(version, arch, &broken, Self::now_ms())
            .await
    }

    /// Forgets cached records: called after every write of asset records by this process.
    fn records_changed(&self) {
        if let Ok(mut cache) = self.records.lock() {
            cache.clear();
        }
        self.records_written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many writes to asset records this process has made: a boot script made under an
    /// older count may name assets that changed since.
    pub fn records_written(&self) -> u64 {
        self.records_written
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AssetFile, AssetSource, Availability};
    use super::*;
    use crate::db::Db;

    #[tokio::test]
    async fn boot_scripts_see_this_process_writes_at_once_and_new_records_from_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let images = tempfile::tempdir().unwrap();
        let store = Images::new(images.path().to_path_buf(), db.clone());
        let (v, a) = ("v1.11.6", Arch::Amd64);
        assert!(matches!(
            store.availability(v, a).await.unwrap(),
            Availability::Missing(_)
        ));
        // Another process (the CLI) starts a download: a new record counts at once.
        let file = AssetFile {
            origin: "http://f/k".into(),
            digest: None,
        };
        let asset = Asset {
            version: v.into(),
            arch: a,
            source: AssetSource::Release,
            kernel: file.clone(),
            initramfs: file,
            kernel_args: vec!["net.ifnames=0".into()],
            state: AssetState::Downloading,
            updated_at: 1,
        };
        db.put_image(&asset).await.unwrap();
        assert_eq!(
            store.availability(v, a).await.unwrap(),
            Availability::OutOfService("being downloaded".into())
        );
        assert_eq!(store.kernel_args(v, a).await.unwrap(), ["net.ifnames=0"]);
        // This process's own write is seen at once, though the record was just cached.
        store
            .set_record_state(v, a, &AssetState::Broken("bad".into()), 2)
            .await
            .unwrap();
        assert_eq!(
            store.availability(v, a).await.unwrap(),
            Availability::OutOfService("bad".into())
        );
        store.remove_record(v, a).await.unwrap();
        assert!(matches!(
            store.availability(v, a).await.unwrap(),
            Availability::Missing(_)
        ));
        assert!(store.kernel_args(v, a).await.unwrap().is_empty());
    }
}
