//! What may go out: a file for `/assets/`, and whether a machine can boot a version now.

use std::path::PathBuf;

use super::{arch_of_file, Asset, AssetFile, AssetState, Images, ImagesError};
use crate::db::DbError;
use crate::talos::Arch;

/// The record of `file`, one of `asset`'s two files (the kernel, else the initramfs).
fn named<'a>(asset: &'a Asset, file: &str) -> &'a AssetFile {
    if file == asset.arch.kernel_file() {
        &asset.kernel
    } else {
        &asset.initramfs
    }
}

/// Why `/assets/` will not serve a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unservable {
    /// No such file (and no record).
    Missing,
    /// Recorded but out of service (downloading, broken, failed verification), with the reason.
    OutOfService(String),
}

/// Whether a machine of `arch` can boot `version` now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Files that are not there.
    Missing(Vec<String>),
    OutOfService(String),
}

impl Availability {
    /// Why a machine of `arch` cannot boot `version`, for people; `None` when it can.
    pub fn problem(&self, version: &str, arch: Arch) -> Option<String> {
        let a = arch.as_str();
        match self {
            Availability::Available => None,
            Availability::Missing(files) => Some(format!(
                "Talos {version} {a} boot assets missing: {}",
                files.join(", ")
            )),
            Availability::OutOfService(reason) => Some(format!(
                "Talos {version} {a} boot assets out of service: {reason}"
            )),
        }
    }
}

/// The Talos version a machine boots and installs: its own pin, else its cluster's version,/// Why `servable` refused.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("not servable")]
    Unservable(Unservable),
    #[error(transparent)]
    Images(#[from] ImagesError),
}

impl From<DbError> for ServeError {
    fn from(e: DbError) -> Self {
        ServeError::Images(ImagesError::Db(e))
    }
}

impl Images {
    /// The file to serve for `/assets/<version>/<file>`, verified against its record first.
    /// A boot storm asks for the same two files hundreds of times a second: a file already
    /// verified, unchanged on disk, against a ready record in the boot scripts' short-lived
    /// cache goes out without a database read. Anything else (no cached record, one not ready,
    /// a file not verified against it) is decided on the stored record, so a file is hashed
    /// and taken out of service only against what the database holds now. The cache lets a
    /// ready file be served for up to a second after another process took its record out of
    /// service ([`super::RECORD_CACHE_TTL`]); this process's own writes count at once.
    pub async fn servable(&self, version: &str, file: &str) -> Result<PathBuf, ServeError> {
        let arch = arch_of_file(file).ok_or(ServeError::Unservable(Unservable::Missing))?;
        let path = self.dir.join(version).join(file);
        if let Some(asset) = self.boot_record(version, arch).await? {
            if let (AssetState::Ready, Some(want)) = (&asset.state, &named(&asset, file).digest) {
                if self.still_verified(&path, &want.sha256) {
                    return Ok(path);
                }
            }
        }
        self.servable_stored(version, file, arch, path).await
    }

    /// [`Images::servable`] on the stored record.
    async fn servable_stored(
        &self,
        version: &str,
        file: &str,
        arch: Arch,
        path: PathBuf,
    ) -> Result<PathBuf, ServeError> {
        let asset = match self.db.get_image(version, arch).await? {
            Some(a) => a,
            None => match self.adopt(version, arch).await? {
                Some(a) => a,
                None => return Err(ServeError::Unservable(Unservable::Missing)),
            },
        };
        match &asset.state {
            AssetState::Ready => {}
            AssetState::Downloading => {
                return Err(ServeError::Unservable(Unservable::OutOfService(
                    "being downloaded".into(),
                )))
            }
            AssetState::Broken(reason) => {
                return Err(ServeError::Unservable(Unservable::OutOfService(
                    reason.clone(),
                )))
            }
        }
        let Some(want) = &named(&asset, file).digest else {
            return Err(ServeError::Unservable(Unservable::OutOfService(
                "no digest recorded".into(),
            )));
        };
        let lock = self.lock_for(format!("verify {}", path.display()));
        let _guard = lock.lock().await;
        if let Err(reason) = self.check_file(&path, want).await? {
            self.mark_broken(version, arch, &reason).await?;
            tracing::error!(version, file, reason = %reason,
                "boot asset failed verification before serving: out of service");
            return Err(ServeError::Unservable(Unservable::OutOfService(reason)));
        }
        Ok(path)
    }

    /// Whether a machine of `arch` can boot `version`: what the install script needs to know.
    pub async fn availability(
        &self,
        version: &str,
        arch: Arch,
    ) -> Result<Availability, ImagesError> {
        let (kernel, initramfs) = self.paths(version, arch);
        if let Some(asset) = self.boot_record(version, arch).await? {
            match asset.state {
                AssetState::Ready => {}
                AssetState::Downloading => {
                    return Ok(Availability::OutOfService("being downloaded".into()))
                }
                AssetState::Broken(reason) => return Ok(Availability::OutOfService(reason)),
            }
        }
        let missing: Vec<String> = [kernel, initramfs]
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if missing.is_empty() {
            Ok(Availability::Available)
        } else {
            Ok(Availability::Missing(missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::files::hash_file;
    use super::super::AssetSource;
    use super::*;
    use crate::db::Db;

    /// Writes `kernel` and `initramfs` for `v` and stores their record straight in the
    /// database, as another process (the CLI) does: this process's cache is not told.
    async fn put_from_elsewhere(db: &Db, dir: &std::path::Path, v: &str, kernel: &[u8]) {
        let arch = Arch::Amd64;
        std::fs::create_dir_all(dir.join(v)).unwrap();
        let mut files = Vec::new();
        let initrd: &[u8] = b"initrd";
        for (name, body) in [("vmlinuz-amd64", kernel), ("initramfs-amd64.xz", initrd)] {
            let path = dir.join(v).join(name);
            std::fs::write(&path, body).unwrap();
            files.push(AssetFile {
                origin: format!("http://f/{name}"),
                digest: Some(hash_file(path).await.unwrap()),
            });
        }
        let initramfs = files.pop().unwrap();
        let kernel = files.pop().unwrap();
        let asset = Asset {
            version: v.into(),
            arch,
            source: AssetSource::Release,
            kernel,
            initramfs,
            kernel_args: Vec::new(),
            state: AssetState::Ready,
            updated_at: 1,
        };
        db.put_image(&asset).await.unwrap();
    }

    /// A file and record another process replaced a moment ago are served, though this
    /// process still holds the old record; a file that matches no record is taken out of
    /// service.
    #[tokio::test]
    async fn a_record_replaced_elsewhere_never_condemns_its_new_file() {
        let data = tempfile::tempdir().unwrap();
        let db = Db::open(data.path()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Images::new(dir.path().to_path_buf(), db.clone());
        let v = "v1.13.9";
        put_from_elsewhere(&db, dir.path(), v, b"kernel one").await;
        assert!(store.servable(v, "vmlinuz-amd64").await.is_ok());
        put_from_elsewhere(&db, dir.path(), v, b"kernel number two").await;
        assert!(store.servable(v, "vmlinuz-amd64").await.is_ok());
        let stored = db.get_image(v, Arch::Amd64).await.unwrap().unwrap();
        assert_eq!(stored.state, AssetState::Ready);
        std::fs::write(dir.path().join(v).join("vmlinuz-amd64"), b"tampered").unwrap();
        assert!(matches!(
            store.servable(v, "vmlinuz-amd64").await,
            Err(ServeError::Unservable(Unservable::OutOfService(_)))
        ));
        let stored = db.get_image(v, Arch::Amd64).await.unwrap().unwrap();
        assert!(matches!(stored.state, AssetState::Broken(_)), "{stored:?}");
    }
}
