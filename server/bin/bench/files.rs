//! The files every server serves alike, written once per run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::params::{Params, Scenario};
use crate::BIG_TFTP_FILE;

/// The files every server serves alike.
#[derive(Debug)]
pub struct Files {
    /// The TFTP directory: iPXE binaries and the large file.
    pub tftp_root: PathBuf,
    pub ipxe_efi: Arc<Vec<u8>>,
    pub big_tftp: Arc<Vec<u8>>,
    /// Stand-in assets for scenarios that do not fetch them.
    pub small_kernel: PathBuf,
    pub small_initramfs: PathBuf,
    pub http_initramfs: PathBuf,
    pub http_initramfs_bytes: Arc<Vec<u8>>,
    pub storm_kernel: PathBuf,
    pub storm_kernel_bytes: Arc<Vec<u8>>,
    pub storm_initramfs: PathBuf,
    pub storm_initramfs_bytes: Arc<Vec<u8>>,
}

impl Files {
    pub fn create(root: &Path, p: &Params) -> Result<Self> {
        let tftp_root = root.join("tftp-root");
        let sources = root.join("sources");
        for dir in [&tftp_root, &sources] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let stand_in: Vec<u8> = (0..256 * 1024).map(|i: u32| (i % 251) as u8).collect();
        for name in ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe-arm64.efi"] {
            let target = tftp_root.join(name);
            if std::fs::copy(Path::new("/usr/lib/ipxe").join(name), &target).is_err() {
                std::fs::write(&target, &stand_in)
                    .with_context(|| format!("writing {}", target.display()))?;
            }
        }
        let ipxe_efi = Arc::new(std::fs::read(tftp_root.join("ipxe.efi"))?);
        let write = |path: PathBuf, len: usize, seed: u64| -> Result<(PathBuf, Arc<Vec<u8>>)> {
            let data = pseudo_random_bytes(len, seed);
            std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
            Ok((path, Arc::new(data)))
        };
        let (_, big_tftp) = write(tftp_root.join(BIG_TFTP_FILE), p.tftp_big_bytes, 1)?;
        let (small_kernel, _) = write(sources.join("small-kernel"), 256 * 1024, 2)?;
        let (small_initramfs, _) = write(sources.join("small-initramfs"), 512 * 1024, 3)?;
        let (http_initramfs, http_initramfs_bytes) = if p.runs(Scenario::Http) {
            write(sources.join("http-initramfs"), p.file_bytes, 4)?
        } else {
            (small_initramfs.clone(), Arc::default())
        };
        let (storm_kernel, storm_kernel_bytes) =
            write(sources.join("storm-kernel"), p.storm_kernel_bytes, 5)?;
        let (storm_initramfs, storm_initramfs_bytes) =
            write(sources.join("storm-initramfs"), p.storm_initramfs_bytes, 6)?;
        Ok(Self {
            tftp_root,
            ipxe_efi,
            big_tftp,
            small_kernel,
            small_initramfs,
            http_initramfs,
            http_initramfs_bytes,
            storm_kernel,
            storm_kernel_bytes,
            storm_initramfs,
            storm_initramfs_bytes,
        })
    }
}

/// xorshift64*: fast, deterministic, incompressible enough for a transfer test.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_bytes_are_deterministic_and_sized() {
        let a = pseudo_random_bytes(1001, 7);
        assert_eq!(a.len(), 1001);
        assert_eq!(a, pseudo_random_bytes(1001, 7));
        assert_ne!(a, pseudo_random_bytes(1001, 8));
    }
}
