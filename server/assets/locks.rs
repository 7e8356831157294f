//! One asset at a time: in-process async locks, and a `flock` per asset across processes.

use std::sync::Arc;

use super::{io, Images, ImagesError};
use crate::talos::Arch;

impl Images {
    pub(super) fn lock_for(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(key).or_default())
    }

    /// An exclusive `flock` on `<version>/.<arch>.lock`, held until dropped: downloads of one
    /// asset by different processes on the same images directory take turns.
    pub(super) async fn file_lock(
        &self,
        version: &str,
        arch: Arch,
    ) -> Result<nix::fcntl::Flock<std::fs::File>, ImagesError> {
        let dir = self.dir.join(version);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("cannot create", &dir))?;
        let path = dir.join(format!(".{}.lock", arch.as_str()));
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io("cannot open", &path))?;
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(
                |(_, errno)| ImagesError::Io {
                    what: "cannot lock",
                    path: path.clone(),
                    source: std::io::Error::from(errno),
                },
            )
        })
        .await
        .map_err(|e| ImagesError::Internal(e.to_string()))?
    }

    /// Whether no process holds the download lock of `version` and `arch` (checked without
    /// waiting; the lock is released at once).
    pub(super) fn nobody_downloads(&self, version: &str, arch: Arch) -> bool {
        let path = self
            .dir
            .join(version)
            .join(format!(".{}.lock", arch.as_str()));
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            return true;
        };
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
    }
}
