//! Where an asset's files and partial downloads live, and their hashing.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{io, Digest, ImagesError};

pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<dir>/.<name>.part`: hidden, so `/assets/` never serves it.
pub(super) fn part_path(target: &Path) -> PathBuf {
    target.with_file_name(format!(".{}.part", file_name(target)))
}

pub(super) fn absolute(path: &Path) -> Result<PathBuf, ImagesError> {
    std::path::absolute(path).map_err(io("cannot resolve", path))
}

/// Size and SHA-256 of a file, read on a blocking thread.
pub async fn hash_file(path: PathBuf) -> Result<Digest, ImagesError> {
    tokio::task::spawn_blocking(move || {
        let (hasher, size) = hash_prefix(&path)?;
        Ok(Digest {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    })
    .await
    .map_err(|e| ImagesError::Internal(e.to_string()))?
}

/// The SHA-256 state after all of `path`'s bytes, and how many there were.
pub(super) fn hash_prefix(path: &Path) -> Result<(Sha256, u64), ImagesError> {
    let mut file = std::fs::File::open(path).map_err(io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher, size))
}

/// Copies a local file to `part`, hashing it on the way.
pub(super) async fn copy_hashed(from: &Path, part: &Path) -> Result<Digest, ImagesError> {
    let (from, part) = (from.to_path_buf(), part.to_path_buf());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut src = std::fs::File::open(&from).map_err(io("cannot open", &from))?;
        let mut dst = std::fs::File::create(&part).map_err(io("cannot create", &part))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io("cannot read", &from))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            dst.write_all(&buf[..n])
                .map_err(io("cannot write", &part))?;
            size += n as u64;
        }
        dst.sync_all().map_err(io("cannot write", &part))?;
        Ok(Digest {
            size,
            sha256: hex::encode(hasher.finalize()),
        })
    })
    .await
    .map_err(|e| ImagesError::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_are_hidden() {
        assert_eq!(
            part_path(Path::new("/i/v1.11.6/vmlinuz-amd64")),
            PathBuf::from("/i/v1.11.6/.vmlinuz-amd64.part")
        );
    }
}
