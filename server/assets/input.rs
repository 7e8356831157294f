//! What an operator asks the store for, checked: versions, schematic IDs, digests,
//! architectures, and where an asset comes from.

use std::path::PathBuf;

use super::{Asset, AssetSource, ImagesError};
use crate::talos::Arch;

/// Where to get an asset from.
#[derive(Clone, Debug)]
pub enum SourceSpec {
    /// `<base>/image/<schematic>/<version>/kernel-<arch>` and `…/initramfs-<arch>.xz`.
    Factory {
        base: String,
        schematic: String,
    },
    /// `<base>/<version>/vmlinuz-<arch>` and `…/initramfs-<arch>.xz`.
    Release {
        base: String,
    },
    Local {
        kernel: PathBuf,
        initramfs: PathBuf,
    },
}

/// What `add` is asked for.
#[derive(Clone, Debug)]
pub struct AddRequest {
    pub version: String,
    pub arch: Arch,
    pub source: SourceSpec,
    /// SHA-256 the kernel must have (hex); a mismatch keeps the asset out of service.
    pub expect_kernel: Option<String>,
    pub expect_initramfs: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// Fetched (or copied), verified and in service.
    Added(Asset),
    /// The same source was already in service; nothing was fetched.
    AlreadyPresent(Asset),
}

/// A Talos version as a directory name: `vX.Y.Z` (and pre-release suffixes), nothing else.
pub fn validate_version(version: &str) -> Result<(), ImagesError> {
    crate::config::validate_talos_version(version).map_err(ImagesError::Invalid)
}

/// An Image Factory schematic ID: 64 lowercase hex digits (a SHA-256 of the schematic).
pub fn validate_schematic(id: &str) -> Result<(), ImagesError> {
    if id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ImagesError::Invalid(format!(
            "schematic ID '{id}' must be 64 lowercase hex digits"
        )))
    }
}

/// A SHA-256 given on the command line, normalised to lowercase.
pub fn parse_sha256(text: &str) -> Result<String, ImagesError> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_prefix("sha256:").unwrap_or(&t).to_string();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(ImagesError::Invalid(format!(
            "'{text}' is not a SHA-256 (64 hex digits)"
        )))
    }
}

/// `amd64` or `arm64`.
pub fn parse_arch(text: &str) -> Result<Arch, ImagesError> {
    match text {
        "amd64" => Ok(Arch::Amd64),
        "arm64" => Ok(Arch::Arm64),
        other => Err(ImagesError::Invalid(format!(
            "architecture '{other}' must be amd64 or arm64"
        ))),
    }
}

/// The architecture a served file name belongs to, for the two whitelisted names per arch.
pub fn arch_of_file(file: &str) -> Option<Arch> {
    [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .find(|a| a.kernel_file() == file || a.initramfs_file() == file)
}

impl SourceSpec {
    pub(super) fn urls(&self, version: &str, arch: Arch) -> (String, String) {
        let a = arch.as_str();
        match self {
            SourceSpec::Factory { base, schematic } => {
                let base = base.trim_end_matches('/');
                (
                    format!("{base}/image/{schematic}/{version}/kernel-{a}"),
                    format!("{base}/image/{schematic}/{version}/initramfs-{a}.xz"),
                )
            }
            SourceSpec::Release { base } => {
                let base = base.trim_end_matches('/');
                (
                    format!("{base}/{version}/vmlinuz-{a}"),
                    format!("{base}/{version}/initramfs-{a}.xz"),
                )
            }
            SourceSpec::Local { kernel, initramfs } => (
                kernel.display().to_string(),
                initramfs.display().to_string(),
            ),
        }
    }

    pub(super) fn source(&self) -> AssetSource {
        match self {
            SourceSpec::Factory { schematic, .. } => AssetSource::Factory {
                schematic: schematic.clone(),
            },
            SourceSpec::Release { .. } => AssetSource::Release,
            SourceSpec::Local { .. } => AssetSource::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_RELEASE_URL;
    use super::*;

    #[test]
    fn factory_and_release_urls_follow_their_layouts() {
        let s = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";
        let f = SourceSpec::Factory {
            base: "https://factory.talos.dev/".into(),
            schematic: s.into(),
        };
        assert_eq!(
            f.urls("v1.11.6", Arch::Amd64),
            (
                format!("https://factory.talos.dev/image/{s}/v1.11.6/kernel-amd64"),
                format!("https://factory.talos.dev/image/{s}/v1.11.6/initramfs-amd64.xz"),
            )
        );
        let r = SourceSpec::Release {
            base: DEFAULT_RELEASE_URL.into(),
        };
        assert_eq!(
            r.urls("v1.11.6", Arch::Arm64).0,
            "https://github.com/siderolabs/talos/releases/download/v1.11.6/vmlinuz-arm64"
        );
    }

    #[test]
    fn inputs_are_validated() {
        assert!(validate_schematic(&"a".repeat(64)).is_ok());
        assert!(validate_schematic(&"A".repeat(64)).is_err());
        assert!(validate_schematic("../x").is_err());
        assert_eq!(
            parse_sha256(&format!("sha256:{}", "AB".repeat(32))).unwrap(),
            "ab".repeat(32)
        );
        assert!(parse_sha256("abc").is_err());
        assert!(parse_arch("x86_64").is_err());
        assert_eq!(arch_of_file("initramfs-arm64.xz"), Some(Arch::Arm64));
        assert_eq!(arch_of_file(".vmlinuz-amd64.part"), None);
    }
}
