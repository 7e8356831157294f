//! Boot assets as the rest of bootplane sees them: a Talos version's kernel and initramfs for
//! one architecture, where they came from, their digests and whether they may be served.

/// CPU architecture of boot assets, as Talos names them in release file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Maps iPXE's `${buildarch}` (x86_64, i386, arm64, arm32) to a Talos asset arch.
    /// 32-bit x86 iPXE (undionly.kpxe) runs on 64-bit machines, so it maps to amd64.
    pub fn from_ipxe_buildarch(buildarch: &str) -> Arch {
        match buildarch {
            "arm64" | "aarch64" => Arch::Arm64,
            _ => Arch::Amd64,
        }
    }

    /// The architecture of a machine from its DHCP client architecture (option 93): ARM64 UEFI
    /// (11, and 19 for HTTP boot) is arm64, everything else (and not seen yet) amd64.
    pub fn of_dhcp_client(client_arch: Option<u16>) -> Arch {
        match client_arch {
            Some(11 | 19) => Arch::Arm64,
            _ => Arch::Amd64,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn kernel_file(&self) -> String {
        format!("vmlinuz-{}", self.as_str())
    }

    pub fn initramfs_file(&self) -> String {
        format!("initramfs-{}.xz", self.as_str())
    }
}

/// A file's size and SHA-256 (lowercase hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub sha256: String,
}

/// One of an asset's two files: where it came from and, once complete, its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetFile {
    pub origin: String,
    pub digest: Option<Digest>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssetSource {
    /// The Talos Image Factory, by schematic ID.
    Factory { schematic: String },
    /// A release URL (GitHub release assets by default).
    Release,
    /// Local files, copied in.
    Local,
    /// Files found in the images directory without a record, adopted with the hash they had.
    Found,
}

impl std::fmt::Display for AssetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssetSource::Factory { schematic } => write!(f, "factory schematic {schematic}"),
            AssetSource::Release => f.write_str("release"),
            AssetSource::Local => f.write_str("local files"),
            AssetSource::Found => f.write_str("found on disk"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssetState {
    Downloading,
    Ready,
    /// Out of service, with the reason.
    Broken(String),
}

impl std::fmt::Display for AssetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssetState::Downloading => f.write_str("downloading"),
            AssetState::Ready => f.write_str("ready"),
            AssetState::Broken(_) => f.write_str("broken"),
        }
    }
}

/// The kernel and initramfs of one Talos version and architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asset {
    pub version: String,
    pub arch: Arch,
    pub source: AssetSource,
    pub kernel: AssetFile,
    pub initramfs: AssetFile,
    /// Extra kernel arguments the factory schematic bakes in (its cmdline beyond what
    /// bootplane puts on every command line); empty for other sources.
    pub kernel_args: Vec<String>,
    pub state: AssetState,
    pub updated_at: i64,
}
