//! Adding an asset (fetch or copy, check, rename into place) and removing one.

use std::path::Path;

use super::download::download;
use super::files::{absolute, copy_hashed, file_name, part_path};
use super::progress::{InFlight, ProgressFn};
use super::{
    io, parse_sha256, validate_schematic, validate_version, AddOutcome, AddRequest, Asset,
    AssetFile, AssetSource, AssetState, Images, ImagesError, SourceSpec,
};
use crate::talos::Arch;

impl Images {
    /// Fetches (or copies) an asset, verifies it and puts it in service. A second call for the
    /// same version and architecture waits for the first, then finds it present.
    pub async fn add(
        &self,
        req: &AddRequest,
        progress: Option<ProgressFn>,
    ) -> Result<AddOutcome, ImagesError> {
        self.add_with(req, progress, None).await
    }

    /// `add`, with the schematic's arguments when they were fetched and checked already.
    pub(super) async fn add_with(
        &self,
        req: &AddRequest,
        progress: Option<ProgressFn>,
        checked_args: Option<Vec<String>>,
    ) -> Result<AddOutcome, ImagesError> {
        validate_version(&req.version)?;
        if let SourceSpec::Factory { schematic, .. } = &req.source {
            validate_schematic(schematic)?;
        }
        let expect_kernel = req.expect_kernel.as_deref().map(parse_sha256).transpose()?;
        let expect_initramfs = req
            .expect_initramfs
            .as_deref()
            .map(parse_sha256)
            .transpose()?;
        let (version, arch) = (req.version.as_str(), req.arch);
        // A schematic whose arguments no machine could boot with is refused before any
        // download.
        let asset_args = match (&req.source, checked_args) {
            (SourceSpec::Factory { .. }, Some(args)) => args,
            (SourceSpec::Factory { base, schematic }, None) => {
                self.checked_schematic_args(base, schematic, version, arch)
                    .await?
            }
            _ => Vec::new(),
        };
        let _in_flight = InFlight::enter(self, version, arch);
        let progress = Some(self.progress_feed(version, arch, progress));
        let lock = self.lock_for(format!("add {version} {}", arch.as_str()));
        let _guard = lock.lock().await;
        // Another process (a second `images add`, or `serve`) waits here too.
        let _file_lock = self.file_lock(version, arch).await?;

        let (kernel_origin, initramfs_origin) = match &req.source {
            SourceSpec::Local { kernel, initramfs } => (
                absolute(kernel)?.display().to_string(),
                absolute(initramfs)?.display().to_string(),
            ),
            other => other.urls(version, arch),
        };
        let source = req.source.source();
        if let Some(existing) = self.db.get_image(version, arch).await? {
            let same = existing.source == source
                && existing.kernel.origin == kernel_origin
                && existing.initramfs.origin == initramfs_origin;
            match (&existing.state, same) {
                (AssetState::Ready, true) => {
                    let wanted = |exp: &Option<String>, f: &AssetFile| match (exp, &f.digest) {
                        (Some(e), Some(d)) => *e == d.sha256,
                        _ => true,
                    };
                    // Present only if its files still match their record; otherwise (the
                    // mismatch marks it broken) it is fetched again.
                    if wanted(&expect_kernel, &existing.kernel)
                        && wanted(&expect_initramfs, &existing.initramfs)
                        && self.verify_asset(&existing).await?.is_ok()
                    {
                        return Ok(AddOutcome::AlreadyPresent(existing));
                    }
                }
                // A broken or interrupted asset is fetched again (resuming what is there).
                (AssetState::Broken(_) | AssetState::Downloading, _) => {}
                // Files found on disk without a record give way to a recorded source.
                (AssetState::Ready, false) if existing.source == AssetSource::Found => {}
                (AssetState::Ready, false) => {
                    return Err(ImagesError::Exists {
                        version: version.into(),
                        arch: arch.as_str(),
                        source_desc: existing.source.to_string(),
                        state: existing.state.to_string(),
                    })
                }
            }
        }
        let mut asset = Asset {
            version: version.into(),
            arch,
            source,
            kernel: AssetFile {
                origin: kernel_origin,
                digest: None,
            },
            initramfs: AssetFile {
                origin: initramfs_origin,
                digest: None,
            },
            kernel_args: asset_args,
            state: AssetState::Downloading,
            updated_at: Self::now_ms(),
        };
        self.put_record(&asset).await?;
        let (kernel_path, initramfs_path) = self.paths(version, arch);
        let result = self
            .fetch_pair(
                req,
                &mut asset,
                [&kernel_path, &initramfs_path],
                [expect_kernel, expect_initramfs],
                progress,
            )
            .await;
        match result {
            Ok(()) => {
                asset.state = AssetState::Ready;
                asset.updated_at = Self::now_ms();
                self.put_record(&asset).await?;
                tracing::info!(version, arch = arch.as_str(), source = %asset.source,
                    "boot assets added");
                Ok(AddOutcome::Added(asset))
            }
            Err(e) => {
                let reason = match &e {
                    ImagesError::Unreachable { .. } => {
                        format!("download failed: {e}; add it again once this host can reach it")
                    }
                    ImagesError::Status { .. } => format!("download failed: {e}"),
                    e if e.transient() => {
                        format!("download failed partway ({e}); add it again to resume")
                    }
                    e => e.to_string(),
                };
                tracing::error!(version, arch = arch.as_str(), reason = %reason,
                    "boot assets not added");
                self.mark_broken(version, arch, &reason).await?;
                Err(e)
            }
        }
    }

    /// Both files to `.part` files, checked, then renamed into place.
    async fn fetch_pair(
        &self,
        req: &AddRequest,
        asset: &mut Asset,
        finals: [&Path; 2],
        expected: [Option<String>; 2],
        progress: Option<ProgressFn>,
    ) -> Result<(), ImagesError> {
        let origins = [asset.kernel.origin.clone(), asset.initramfs.origin.clone()];
        let mut digests = Vec::with_capacity(2);
        for ((target, origin), expect) in finals.iter().zip(&origins).zip(expected) {
            let part = part_path(target);
            let name = file_name(target);
            let digest = match &req.source {
                SourceSpec::Local { .. } => copy_hashed(Path::new(origin), &part).await?,
                _ => download(origin, &part, &name, progress.clone()).await?,
            };
            if let Some(expected) = expect {
                if expected != digest.sha256 {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(ImagesError::Mismatch {
                        file: name,
                        expected,
                        actual: digest.sha256,
                    });
                }
            }
            digests.push(digest);
        }
        for target in finals {
            let part = part_path(target);
            tokio::fs::rename(&part, target)
                .await
                .map_err(io("cannot rename into place", target))?;
            self.forget_verified(target);
        }
        let mut digests = digests.into_iter();
        asset.kernel.digest = digests.next();
        asset.initramfs.digest = digests.next();
        Ok(())
    }

    /// Forgets an asset and deletes its files (and any partial download).
    pub async fn remove(&self, version: &str, arch: Arch) -> Result<(), ImagesError> {
        validate_version(version)?;
        let lock = self.lock_for(format!("add {version} {}", arch.as_str()));
        let _guard = lock.lock().await;
        let recorded = self.remove_record(version, arch).await?;
        if !recorded && !self.dir.join(version).is_dir() {
            return Err(ImagesError::NotRecorded {
                version: version.into(),
                arch: arch.as_str(),
            });
        }
        let _file_lock = self.file_lock(version, arch).await?;
        let (kernel, initramfs) = self.paths(version, arch);
        let mut removed_files = false;
        for path in [&kernel, &initramfs] {
            for p in [path.clone(), part_path(path)] {
                match tokio::fs::remove_file(&p).await {
                    Ok(()) => removed_files = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("cannot remove", &p)(e)),
                }
            }
            self.forget_verified(path);
        }
        if !recorded && !removed_files {
            return Err(ImagesError::NotRecorded {
                version: version.into(),
                arch: arch.as_str(),
            });
        }
        tracing::info!(version, arch = arch.as_str(), "boot assets removed");
        Ok(())
    }
}
