//! Verification of the files against their records (at start and before a file is first
//! served), and adoption of files found on disk without a record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::files::file_name;
use super::{
    hash_file, io, validate_version, Asset, AssetFile, AssetSource, AssetState, Digest, Images,
    ImagesError,
};
use crate::talos::Arch;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub ready: Vec<String>,
    /// `(version arch, reason)` of each asset taken out of service.
    pub broken: Vec<(String, String)>,
    pub bytes: u64,
}

/// What was verified this run: a file's path → the digest it had and its metadata then.
pub(super) type Verified = HashMap<PathBuf, (String, u64, Option<SystemTime>)>;

impl Images {
    pub(super) fn forget_verified(&self, path: &Path) {
        let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        v.remove(path);
    }

    /// Whether `path` was verified this run against `sha256` and has not changed since.
    pub(super) fn still_verified(&self, path: &Path, sha256: &str) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        let v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        matches!(v.get(path), Some((sha, len, mtime))
            if sha == sha256 && *len == meta.len() && *mtime == meta.modified().ok())
    }

    fn mark_verified(&self, path: &Path, sha256: &str) {
        if let Ok(meta) = std::fs::metadata(path) {
            let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            v.insert(
                path.to_path_buf(),
                (sha256.to_string(), meta.len(), meta.modified().ok()),
            );
        }
    }

    /// Checks one file against its digest (hashing off the async workers); `Err(reason)` if
    /// it does not match.
    pub(super) async fn check_file(
        &self,
        path: &Path,
        want: &Digest,
    ) -> Result<Result<(), String>, ImagesError> {
        if self.still_verified(path, &want.sha256) {
            return Ok(Ok(()));
        }
        let name = file_name(path);
        let got = match hash_file(path.to_path_buf()).await {
            Ok(d) => d,
            Err(ImagesError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Err(format!("{name} is missing")))
            }
            Err(e) => return Err(e),
        };
        if got.sha256 != want.sha256 || got.size != want.size {
            return Ok(Err(format!(
                "{name} does not match its recorded sha256 (expected {} bytes sha256:{}, found {} bytes sha256:{})",
                want.size, want.sha256, got.size, got.sha256
            )));
        }
        self.mark_verified(path, &want.sha256);
        Ok(Ok(()))
    }

    /// Verifies both files of a recorded asset; a mismatch marks it broken.
    pub(super) async fn verify_asset(
        &self,
        asset: &Asset,
    ) -> Result<Result<u64, String>, ImagesError> {
        let (kernel_path, initramfs_path) = self.paths(&asset.version, asset.arch);
        let mut bytes = 0;
        for (path, file) in [
            (&kernel_path, &asset.kernel),
            (&initramfs_path, &asset.initramfs),
        ] {
            let Some(want) = &file.digest else {
                return Ok(Err(format!(
                    "{} was never completely fetched",
                    file_name(path)
                )));
            };
            let lock = self.lock_for(format!("verify {}", path.display()));
            let _guard = lock.lock().await;
            if let Err(reason) = self.check_file(path, want).await? {
                self.mark_broken(&asset.version, asset.arch, &reason)
                    .await?;
                tracing::error!(version = %asset.version, arch = asset.arch.as_str(),
                    reason = %reason, "boot asset out of service");
                return Ok(Err(reason));
            }
            bytes += want.size;
        }
        Ok(Ok(bytes))
    }

    /// Adopts kernel and initramfs found in the images directory without a record, with the
    /// hash they have now, so they are verified from then on.
    pub(super) async fn adopt(
        &self,
        version: &str,
        arch: Arch,
    ) -> Result<Option<Asset>, ImagesError> {
        // Checked before taking a lock: requests for versions that are not there create no
        // lock entries.
        if !self.dir.join(version).is_dir() {
            return Ok(None);
        }
        let lock = self.lock_for(format!("add {version} {}", arch.as_str()));
        let _guard = lock.lock().await;
        if let Some(asset) = self.db.get_image(version, arch).await? {
            return Ok(Some(asset));
        }
        let (kernel, initramfs) = self.paths(version, arch);
        if !kernel.is_file() || !initramfs.is_file() {
            return Ok(None);
        }
        let kd = hash_file(kernel.clone()).await?;
        let id = hash_file(initramfs.clone()).await?;
        self.mark_verified(&kernel, &kd.sha256);
        self.mark_verified(&initramfs, &id.sha256);
        let asset = Asset {
            version: version.into(),
            arch,
            source: AssetSource::Found,
            kernel: AssetFile {
                origin: kernel.display().to_string(),
                digest: Some(kd),
            },
            initramfs: AssetFile {
                origin: initramfs.display().to_string(),
                digest: Some(id),
            },
            kernel_args: Vec::new(),
            state: AssetState::Ready,
            updated_at: Self::now_ms(),
        };
        self.put_record(&asset).await?;
        tracing::warn!(version, arch = arch.as_str(),
            "boot assets found without a record: adopted with their current sha256 (use `bootplane images add` to record where they come from)");
        Ok(Some(asset))
    }

    /// Verifies every recorded asset (and adopts unrecorded ones found on disk). Ready assets
    /// that no longer match are taken out of service; broken ones that match again return.
    pub async fn verify_all(&self) -> Result<VerifyReport, ImagesError> {
        self.adopt_found().await?;
        let mut report = VerifyReport::default();
        for asset in self.db.list_images().await? {
            let name = format!("{} {}", asset.version, asset.arch.as_str());
            if asset.state == AssetState::Downloading {
                // Downloading, but nobody (in this process, or holding its file lock in
                // another) is: the process that downloaded it stopped.
                if self.progress(&asset.version, asset.arch).is_none()
                    && self.nobody_downloads(&asset.version, asset.arch)
                {
                    let reason = "download interrupted (bootplane stopped during it); add it again to resume".to_string();
                    self.mark_broken(&asset.version, asset.arch, &reason)
                        .await?;
                    report.broken.push((name, reason));
                }
                continue;
            }
            let was_broken = matches!(asset.state, AssetState::Broken(_));
            if was_broken && (asset.kernel.digest.is_none() || asset.initramfs.digest.is_none()) {
                if let AssetState::Broken(reason) = &asset.state {
                    report.broken.push((name, reason.clone()));
                }
                continue;
            }
            match self.verify_asset(&asset).await? {
                Ok(bytes) => {
                    if was_broken {
                        self.set_record_state(
                            &asset.version,
                            asset.arch,
                            &AssetState::Ready,
                            Self::now_ms(),
                        )
                        .await?;
                        tracing::info!(asset = %name, "boot asset matches its record again: back in service");
                    }
                    report.bytes += bytes;
                    report.ready.push(name);
                }
                Err(reason) => report.broken.push((name, reason)),
            }
        }
        Ok(report)
    }

    async fn adopt_found(&self) -> Result<(), ImagesError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot read", &self.dir)(e)),
        };
        let mut versions: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|v| validate_version(v).is_ok())
            .collect();
        versions.sort();
        for version in versions {
            for arch in [Arch::Amd64, Arch::Arm64] {
                self.adopt(&version, arch).await?;
            }
        }
        Ok(())
    }

    /// At start-up, before serving: verifies everything, logs what is out of service and how
    /// long it took.
    pub async fn verify_at_start(&self) {
        let started = Instant::now();
        match self.verify_all().await {
            Ok(report) => {
                for (asset, reason) in &report.broken {
                    tracing::error!(asset = %asset, reason = %reason,
                        "boot asset out of service: it is not served until it is added again");
                }
                tracing::info!(
                    ready = report.ready.len(),
                    broken = report.broken.len(),
                    mib = report.bytes / (1024 * 1024),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "boot assets verified"
                );
            }
            Err(e) => tracing::error!(error = %e,
                "cannot verify boot assets: unverified ones are checked before they are served"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[tokio::test]
    async fn a_download_nobody_runs_any_more_is_marked_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let images = tempfile::tempdir().unwrap();
        let store = Images::new(images.path().to_path_buf(), db.clone());
        let file = AssetFile {
            origin: "http://f/k".into(),
            digest: None,
        };
        let mut asset = Asset {
            version: "v1.11.6".into(),
            arch: Arch::Amd64,
            source: AssetSource::Release,
            kernel: file.clone(),
            initramfs: file,
            kernel_args: Vec::new(),
            state: AssetState::Downloading,
            updated_at: 1,
        };
        db.put_image(&asset).await.unwrap();
        // Another process downloads it: its lock is held, the record stays.
        let held = store.file_lock("v1.11.6", Arch::Amd64).await.unwrap();
        assert!(store.verify_all().await.unwrap().broken.is_empty());
        let state = db
            .get_image("v1.11.6", Arch::Amd64)
            .await
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(state, AssetState::Downloading);
        drop(held);
        let report = store.verify_all().await.unwrap();
        assert_eq!(report.broken.len(), 1, "{report:?}");
        let state = db
            .get_image("v1.11.6", Arch::Amd64)
            .await
            .unwrap()
            .unwrap()
            .state;
        assert!(
            matches!(state, AssetState::Broken(ref r) if r.contains("interrupted")),
            "{state:?}"
        );
        asset.version = "v1.10.9".into();
        db.put_image(&asset).await.unwrap();
        // Without a lock file at all, nobody downloads it either.
        assert_eq!(store.verify_all().await.unwrap().broken.len(), 2);
    }
}
