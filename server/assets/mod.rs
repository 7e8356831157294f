//! Boot assets: the Talos kernel and initramfs per version and architecture, fetched from the
//! Image Factory, a release URL or local files, recorded with their SHA-256, and verified at
//! every start and before a file is first served. Nothing unverified is served.
//!
//! Files live where the boot surface serves them from, `<images-dir>/<version>/vmlinuz-<arch>`
//! and `initramfs-<arch>.xz`. A download goes to a hidden `.<name>.part` file beside them (never
//! served: `/assets/` whitelists names), resumes with an HTTP Range from what that file holds,
//! and is renamed into place only when both files are complete and match what was expected.
//!
//! One job per file: `input` (what an operator asks for, checked), `versions` (which Talos
//! version and architecture a machine boots), `locks` (one asset at a time, in this process
//! and across processes), `add` (fetch, check, rename into place; remove), `download` (HTTP
//! with resume and retries), `files` (paths and hashing), `verify` (checks against the
//! records, adoption of files found on disk), `serve` (what `/assets/` and the install script
//! may use), `progress` (downloads in flight, background adds), `schematics` (the Image
//! Factory's schematics), `records` (the asset records, with a short cache for boot scripts).

mod add;
mod download;
mod files;
mod input;
mod locks;
mod progress;
mod records;
mod schematics;
mod serve;
mod verify;
mod versions;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::db::{Db, DbError};
use crate::talos::Arch;

pub use crate::config::{DEFAULT_FACTORY_URL, DEFAULT_RELEASE_URL};
pub use crate::model::assets::{Asset, AssetFile, AssetSource, AssetState, Digest};
pub use files::hash_file;
pub use input::{
    arch_of_file, parse_arch, parse_sha256, validate_schematic, validate_version, AddOutcome,
    AddRequest, SourceSpec,
};
pub use progress::{Progress, ProgressFn, Started};
pub use records::RECORD_CACHE_TTL;
pub use schematics::{
    create_schematic, extra_args, validate_extension, validate_kernel_arg, Customization,
    Schematic, SchematicCustomization, SystemExtensions,
};
pub use serve::{Availability, ServeError, Unservable};
pub use verify::VerifyReport;
pub use versions::{arch_of_client, machine_version, selected_version};

use records::RecordCache;
use verify::Verified;

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    /// No connection at all (no DNS, no route, refused): nothing was transferred.
    #[error("cannot reach {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{file} sha256 mismatch: expected {expected}, got {actual}; the asset is not served")]
    Mismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("Talos {version} {arch} already has assets from {source_desc} (state {state}): remove them first")]
    Exists {
        version: String,
        arch: &'static str,
        source_desc: String,
        state: String,
    },
    #[error("no assets recorded for Talos {version} {arch}")]
    NotRecorded { version: String, arch: &'static str },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImagesError {
    /// Worth another attempt (the next one resumes).
    fn transient(&self) -> bool {
        match self {
            ImagesError::Download { .. } | ImagesError::Unreachable { .. } => true,
            ImagesError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImagesError {
    let path = path.to_path_buf();
    move |source| ImagesError::Io { what, path, source }
}

/// The asset store: cheap to clone, shared by the boot surface, start-up and the CLI.
#[derive(Clone, Debug)]
pub struct Images {
    dir: PathBuf,
    db: Db,
    /// One async lock per asset (version/arch for downloads, file path for verification):
    /// a second request waits for the first instead of repeating its work.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    verified: Arc<Mutex<Verified>>,
    /// Downloads in flight in this process, by `"<version> <arch>"`, with their progress.
    in_flight: Arc<Mutex<HashMap<String, Progress>>>,
    /// Asset records as boot scripts need them (availability, kernel arguments), kept for
    /// `RECORD_CACHE_TTL` so a retrying or booting rack does not read SQLite per script.
    /// Emptied by every write this process makes; another process's change to a record (the
    /// CLI) is seen within the TTL, a new record at once (absent records are not kept).
    /// `servable` never uses it: what goes out is checked against the database.
    records: Arc<Mutex<RecordCache>>,
    /// Counts this process's writes to asset records: a boot script made before one is stale.
    records_written: Arc<std::sync::atomic::AtomicU64>,
    /// What the appliance adds to every kernel command line, for the check of a schematic's
    /// arguments (`serve` sets its own; a process without them counts `Additions::offline`).
    additions: crate::talos::kernel::Additions,
}

impl Images {
    pub fn new(dir: PathBuf, db: Db) -> Images {
        Images {
            dir,
            db,
            locks: Arc::default(),
            verified: Arc::default(),
            in_flight: Arc::default(),
            records: Arc::default(),
            records_written: Arc::default(),
            additions: crate::talos::kernel::Additions::offline(),
        }
    }

    /// The store with `additions` counted on every kernel command line it checks.
    pub fn with_additions(mut self, additions: crate::talos::kernel::Additions) -> Images {
        self.additions = additions;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn paths(&self, version: &str, arch: Arch) -> (PathBuf, PathBuf) {
        let dir = self.dir.join(version);
        (
            dir.join(arch.kernel_file()),
            dir.join(arch.initramfs_file()),
        )
    }

    pub(super) fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    pub async fn list(&self) -> Result<Vec<Asset>, ImagesError> {
        Ok(self.db.list_images().await?)
    }
}
