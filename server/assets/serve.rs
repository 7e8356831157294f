//! What may go out: a file for `/assets/`, and whether a machine can boot a version now.

use std::path::PathBuf;

use super::{arch_of_file, AssetState, Images, ImagesError};
use crate::db::DbError;
use crate::talos::Arch;

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
    pub async fn servable(&self, version: &str, file: &str) -> Result<PathBuf, ServeError> {
        let arch = arch_of_file(file).ok_or(ServeError::Unservable(Unservable::Missing))?;
        let path = self.dir.join(version).join(file);
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
        let want = if file == arch.kernel_file() {
            &asset.kernel
        } else {
            &asset.initramfs
        };
        let Some(want) = &want.digest else {
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
