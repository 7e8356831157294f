//! Boot assets: the Talos kernel and initramfs per version and architecture, fetched from the
//! Image Factory, a release URL or local files, recorded with their SHA-256, and verified at
//! every start and before a file is first served. Nothing unverified is served.
//!
//! Files live where the boot surface serves them from, `<images-dir>/<version>/vmlinuz-<arch>`
//! and `initramfs-<arch>.xz`. A download goes to a hidden `.<name>.part` file beside them (never
//! served: `/assets/` whitelists names), resumes with an HTTP Range from what that file holds,
//! and is renamed into place only when both files are complete and match what was expected.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::db::{Db, DbError};
use crate::model::Machine;
use crate::talos::Arch;

pub use crate::config::{DEFAULT_FACTORY_URL, DEFAULT_RELEASE_URL};
/// Attempts per file before a download is given up (it resumes on the next `add`).
const DOWNLOAD_ATTEMPTS: u32 = 5;
const RETRY_PAUSE: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long breaks the transfer (and the next attempt resumes it).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub use crate::model::assets::{Asset, AssetFile, AssetSource, AssetState, Digest};

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

/// Called as bytes arrive: file name, bytes so far, total if known.
pub type ProgressFn = Arc<dyn Fn(&str, u64, Option<u64>) + Send + Sync>;

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
            ImagesError::Download { .. } => true,
            ImagesError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImagesError {
    let path = path.to_path_buf();
    move |source| ImagesError::Io { what, path, source }
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
    fn urls(&self, version: &str, arch: Arch) -> (String, String) {
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

    fn source(&self) -> AssetSource {
        match self {
            SourceSpec::Factory { schematic, .. } => AssetSource::Factory {
                schematic: schematic.clone(),
            },
            SourceSpec::Release { .. } => AssetSource::Release,
            SourceSpec::Local { .. } => AssetSource::Local,
        }
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

/// The Talos version a machine boots and installs: its own pin, else its cluster's version,
/// else the appliance's default (`--talos-version`).
pub fn selected_version<'a>(
    pin: Option<&'a str>,
    cluster: Option<&'a str>,
    default: &'a str,
) -> &'a str {
    pin.or(cluster).unwrap_or(default)
}

/// `selected_version` for a stored machine, reading its cluster.
pub async fn machine_version(db: &Db, m: &Machine, default: &str) -> Result<String, DbError> {
    if let Some(pin) = &m.talos_version {
        return Ok(pin.clone());
    }
    let cluster = db.cluster_talos_version(&m.cluster).await?;
    Ok(selected_version(None, cluster.as_deref(), default).to_string())
}

/// The boot asset architecture of a machine from its DHCP client architecture (option 93):
/// ARM64 UEFI (11, and 19 for HTTP boot) is arm64, everything else (and not seen yet) amd64.
pub fn arch_of_client(last_arch: Option<u16>) -> Arch {
    Arch::of_dhcp_client(last_arch)
}

/// What one `verify` pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub ready: Vec<String>,
    /// `(version arch, reason)` of each asset taken out of service.
    pub broken: Vec<(String, String)>,
    pub bytes: u64,
}

/// What was verified this run: a file's path → the digest it had and its metadata then.
type Verified = HashMap<PathBuf, (String, u64, Option<SystemTime>)>;

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
    /// What the appliance adds to every kernel command line, for the check of a schematic's
    /// arguments (`serve` sets its own; a process without them counts `Additions::offline`).
    additions: crate::talos::kernel::Additions,
}

/// Asset records by (version, arch), with when they were read.
type RecordCache = HashMap<(String, &'static str), (Instant, Option<Asset>)>;

/// How long a boot script may use an asset record read earlier.
pub const RECORD_CACHE_TTL: Duration = Duration::from_secs(1);

impl Images {
    pub fn new(dir: PathBuf, db: Db) -> Images {
        Images {
            dir,
            db,
            locks: Arc::default(),
            verified: Arc::default(),
            in_flight: Arc::default(),
            records: Arc::default(),
            additions: crate::talos::kernel::Additions::offline(),
        }
    }

    /// The store with `additions` counted on every kernel command line it checks.
    pub fn with_additions(mut self, additions: crate::talos::kernel::Additions) -> Images {
        self.additions = additions;
        self
    }

    /// The extra kernel arguments of a factory schematic for `version` and `arch`, refused
    /// when they make a machine's command line longer than the kernel keeps.
    async fn checked_schematic_args(
        &self,
        base: &str,
        schematic: &str,
        version: &str,
        arch: Arch,
    ) -> Result<Vec<String>, ImagesError> {
        let args = schematic_args(base, schematic, version, arch).await?;
        self.additions
            .command_line(version, arch, crate::model::Mac([0; 6]), &args)
            .check()
            .map_err(|e| {
                ImagesError::Invalid(format!("schematic {schematic} for Talos {version}: {e}"))
            })?;
        Ok(args)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_for(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(key).or_default())
    }

    /// An exclusive `flock` on `<version>/.<arch>.lock`, held until dropped: downloads of one
    /// asset by different processes on the same images directory take turns.
    async fn file_lock(
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
    fn nobody_downloads(&self, version: &str, arch: Arch) -> bool {
        let path = self
            .dir
            .join(version)
            .join(format!(".{}.lock", arch.as_str()));
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            return true;
        };
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
    }

    fn paths(&self, version: &str, arch: Arch) -> (PathBuf, PathBuf) {
        let dir = self.dir.join(version);
        (
            dir.join(arch.kernel_file()),
            dir.join(arch.initramfs_file()),
        )
    }

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    pub async fn list(&self) -> Result<Vec<Asset>, ImagesError> {
        Ok(self.db.list_images().await?)
    }

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
    async fn add_with(
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
                    e if e.transient() => {
                        format!("download incomplete ({e}); add it again to resume")
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

    fn forget_verified(&self, path: &Path) {
        let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        v.remove(path);
    }

    /// Whether `path` was verified this run against `sha256` and has not changed since.
    fn still_verified(&self, path: &Path, sha256: &str) -> bool {
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
    async fn check_file(
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
    async fn verify_asset(&self, asset: &Asset) -> Result<Result<u64, String>, ImagesError> {
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
    async fn adopt(&self, version: &str, arch: Arch) -> Result<Option<Asset>, ImagesError> {
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

/// A download in flight: the file being fetched and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// The file being fetched, e.g. `initramfs-amd64.xz`; empty while waiting to start
    pub file: String,
    /// Bytes of that file so far
    pub done: u64,
    /// Its size, when the server said
    pub total: Option<u64>,
    /// When the download was asked for, milliseconds since the Unix epoch
    pub started_at: i64,
}

/// What `start_add` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Started {
    /// A download runs in the background now.
    Started,
    /// One was already running for that version and arch; it is not started twice.
    AlreadyDownloading(Progress),
}

fn flight_key(version: &str, arch: Arch) -> String {
    format!("{version} {}", arch.as_str())
}

/// Keeps an asset in the in-flight registry while `add` runs (left by whoever entered it).
struct InFlight {
    map: Arc<Mutex<HashMap<String, Progress>>>,
    key: String,
    owner: bool,
}

impl InFlight {
    fn enter(images: &Images, version: &str, arch: Arch) -> InFlight {
        let key = flight_key(version, arch);
        let mut map = images.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let owner = !map.contains_key(&key);
        if owner {
            map.insert(
                key.clone(),
                Progress {
                    file: String::new(),
                    done: 0,
                    total: None,
                    started_at: Images::now_ms(),
                },
            );
        }
        InFlight {
            map: Arc::clone(&images.in_flight),
            key,
            owner,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.owner {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&self.key);
        }
    }
}

impl Images {
    /// A progress callback that keeps the registry up to date, then calls `then`.
    fn progress_feed(&self, version: &str, arch: Arch, then: Option<ProgressFn>) -> ProgressFn {
        let map = Arc::clone(&self.in_flight);
        let key = flight_key(version, arch);
        Arc::new(move |file: &str, done: u64, total: Option<u64>| {
            {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(p) = map.get_mut(&key) {
                    if p.file != file {
                        p.file = file.to_string();
                    }
                    p.done = done;
                    p.total = total;
                }
            }
            if let Some(then) = &then {
                then(file, done, total);
            }
        })
    }

    /// The downloads in flight in this process, by version and arch.
    pub fn progress(&self, version: &str, arch: Arch) -> Option<Progress> {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&flight_key(version, arch)).cloned()
    }

    /// Checks what can be refused at once (the input, another source in service), then runs
    /// `add` in the background. A second call for an asset in flight starts nothing and says
    /// so; its progress shows in `progress`.
    pub async fn start_add(&self, req: AddRequest) -> Result<Started, ImagesError> {
        validate_version(&req.version)?;
        if let SourceSpec::Factory { schematic, .. } = &req.source {
            validate_schematic(schematic)?;
        }
        for sha in [&req.expect_kernel, &req.expect_initramfs]
            .into_iter()
            .flatten()
        {
            parse_sha256(sha)?;
        }
        if let Some(p) = self.progress(&req.version, req.arch) {
            return Ok(Started::AlreadyDownloading(p));
        }
        let checked_args = match &req.source {
            // Refused here, the operator sees why (a background add only logs it).
            SourceSpec::Factory { base, schematic } => Some(
                self.checked_schematic_args(base, schematic, &req.version, req.arch)
                    .await?,
            ),
            _ => None,
        };
        if let Some(existing) = self.db.get_image(&req.version, req.arch).await? {
            let other =
                existing.source != req.source.source() && existing.source != AssetSource::Found;
            if other && existing.state == AssetState::Ready {
                return Err(ImagesError::Exists {
                    version: req.version.clone(),
                    arch: req.arch.as_str(),
                    source_desc: existing.source.to_string(),
                    state: existing.state.to_string(),
                });
            }
        }
        let entered = InFlight::enter(self, &req.version, req.arch);
        if !entered.owner {
            if let Some(p) = self.progress(&req.version, req.arch) {
                return Ok(Started::AlreadyDownloading(p));
            }
        }
        let store = self.clone();
        tokio::spawn(async move {
            // Held until the download ends, so the asset shows as in flight from now on.
            let _entered = entered;
            match store.add_with(&req, None, checked_args).await {
                // A failed transfer is logged (and recorded as broken) by `add` itself.
                Ok(_)
                | Err(
                    ImagesError::Download { .. }
                    | ImagesError::Status { .. }
                    | ImagesError::Mismatch { .. },
                ) => {}
                Err(e) => tracing::error!(version = %req.version, arch = req.arch.as_str(),
                    error = %e, "boot assets not added"),
            }
        });
        Ok(Started::Started)
    }
}

/// What a schematic customises: system extensions and extra kernel arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Customization {
    /// Official extensions, e.g. `siderolabs/iscsi-tools`
    pub extensions: Vec<String>,
    pub kernel_args: Vec<String>,
}

/// The Image Factory's schematic document (`POST /schematics` takes it as YAML).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schematic {
    #[serde(default)]
    pub customization: SchematicCustomization,
}

#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchematicCustomization {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_kernel_args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_extensions: Option<SystemExtensions>,
}

#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemExtensions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub official_extensions: Vec<String>,
}

/// An official extension name: `siderolabs/iscsi-tools` (lowercase, digits, `-._/`).
pub fn validate_extension(name: &str) -> Result<(), ImagesError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_' | '/')
        })
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(ImagesError::Invalid(format!(
            "extension '{name}' must look like siderolabs/iscsi-tools"
        )))
    }
}

/// One kernel argument: printable, no spaces, no quotes.
pub fn validate_kernel_arg(arg: &str) -> Result<(), ImagesError> {
    let ok = !arg.is_empty()
        && arg.len() <= 1024
        && arg
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\''));
    if ok {
        Ok(())
    } else {
        Err(ImagesError::Invalid(format!(
            "kernel argument '{arg}' must be printable ASCII without spaces or quotes"
        )))
    }
}

impl Customization {
    /// The YAML the Image Factory takes.
    pub fn to_yaml(&self) -> Result<String, ImagesError> {
        for e in &self.extensions {
            validate_extension(e)?;
        }
        for a in &self.kernel_args {
            validate_kernel_arg(a)?;
        }
        let schematic = Schematic {
            customization: SchematicCustomization {
                extra_kernel_args: self.kernel_args.clone(),
                system_extensions: (!self.extensions.is_empty()).then(|| SystemExtensions {
                    official_extensions: self.extensions.clone(),
                }),
            },
        };
        serde_yaml_ng::to_string(&schematic).map_err(|e| ImagesError::Internal(e.to_string()))
    }
}

/// Creates (or finds: IDs are content hashes) a schematic at the Image Factory and returns
/// its ID.
pub async fn create_schematic(base: &str, c: &Customization) -> Result<String, ImagesError> {
    let body = c.to_yaml()?;
    let url = format!("{}/schematics", base.trim_end_matches('/'));
    let response = client()?
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/yaml")
        .body(body)
        .send()
        .await
        .map_err(|e| transfer_error(&url, e))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(ImagesError::Status { url, status });
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        id: String,
    }
    let answer: Answer = response
        .json()
        .await
        .map_err(|e| transfer(&url, format!("unexpected answer: {e}")))?;
    validate_schematic(&answer.id)
        .map_err(|_| transfer(&url, format!("unexpected schematic ID '{}'", answer.id)))?;
    Ok(answer.id)
}

/// The extra kernel arguments a schematic bakes in: the factory's
/// `/image/<schematic>/<version>/cmdline-metal-<arch>` minus what bootplane puts on every
/// command line for that version. A factory (or mirror) without that file gives none.
async fn schematic_args(
    base: &str,
    schematic: &str,
    version: &str,
    arch: Arch,
) -> Result<Vec<String>, ImagesError> {
    let url = format!(
        "{}/image/{schematic}/{version}/cmdline-metal-{}",
        base.trim_end_matches('/'),
        arch.as_str()
    );
    let response = client()?
        .get(&url)
        .send()
        .await
        .map_err(|e| transfer_error(&url, e))?;
    match response.status().as_u16() {
        200 => {}
        404 => {
            tracing::warn!(
                url,
                "the factory has no cmdline for this schematic: no extra kernel arguments recorded"
            );
            return Ok(Vec::new());
        }
        status => return Err(ImagesError::Status { url, status }),
    }
    let text = response.text().await.map_err(|e| transfer_error(&url, e))?;
    Ok(extra_args(&text, version, arch))
}

/// The arguments of a factory cmdline that bootplane's base command line for `version` and
/// `arch` does not already have.
pub fn extra_args(cmdline: &str, version: &str, arch: Arch) -> Vec<String> {
    let base = crate::talos::kernel_args(version, arch, "", &[]);
    let bare = |a: &str| a.trim_end_matches('=').to_string();
    let base: Vec<String> = base.iter().map(|a| bare(a)).collect();
    cmdline
        .split_whitespace()
        .filter(|a| !base.contains(&bare(a)))
        .filter(|a| validate_kernel_arg(a).is_ok())
        .map(str::to_string)
        .collect()
}

impl Images {
    /// The extra kernel arguments recorded with the assets of `version` and `arch` (from their
    /// factory schematic); none when nothing is recorded.
    pub async fn kernel_args(&self, version: &str, arch: Arch) -> Result<Vec<String>, ImagesError> {
        Ok(self
            .boot_record(version, arch)
            .await?
            .map(|a| a.kernel_args)
            .unwrap_or_default())
    }

    /// The asset's record for boot scripts: from the short-lived cache, else the database.
    async fn boot_record(&self, version: &str, arch: Arch) -> Result<Option<Asset>, ImagesError> {
        let key = (version.to_string(), arch.as_str());
        if let Ok(cache) = self.records.lock() {
            if let Some((at, record)) = cache.get(&key) {
                if at.elapsed() < RECORD_CACHE_TTL {
                    return Ok(record.clone());
                }
            }
        }
        let record = self.db.get_image(version, arch).await?;
        // No record is not kept: assets an operator adds from the CLI count at once.
        if record.is_some() {
            if let Ok(mut cache) = self.records.lock() {
                cache.insert(key, (Instant::now(), record.clone()));
            }
        }
        Ok(record)
    }

    async fn put_record(&self, asset: &Asset) -> Result<(), DbError> {
        let result = self.db.put_image(asset).await;
        self.records_changed();
        result
    }

    async fn remove_record(&self, version: &str, arch: Arch) -> Result<bool, DbError> {
        let result = self.db.remove_image(version, arch).await;
        self.records_changed();
        result
    }

    async fn set_record_state(
        &self,
        version: &str,
        arch: Arch,
        state: &AssetState,
        at: i64,
    ) -> Result<bool, DbError> {
        let result = self.db.set_image_state(version, arch, state, at).await;
        self.records_changed();
        result
    }

    /// Takes an asset out of service, now, saying why.
    async fn mark_broken(&self, version: &str, arch: Arch, reason: &str) -> Result<bool, DbError> {
        let broken = AssetState::Broken(reason.to_string());
        self.set_record_state(version, arch, &broken, Self::now_ms())
            .await
    }

    /// Forgets cached records: called after every write of asset records by this process.
    fn records_changed(&self) {
        if let Ok(mut cache) = self.records.lock() {
            cache.clear();
        }
    }
}

/// Why `servable` refused.
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

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<dir>/.<name>.part`: hidden, so `/assets/` never serves it.
fn part_path(target: &Path) -> PathBuf {
    target.with_file_name(format!(".{}.part", file_name(target)))
}

fn absolute(path: &Path) -> Result<PathBuf, ImagesError> {
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
fn hash_prefix(path: &Path) -> Result<(Sha256, u64), ImagesError> {
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
async fn copy_hashed(from: &Path, part: &Path) -> Result<Digest, ImagesError> {
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

fn client() -> Result<reqwest::Client, ImagesError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("bootplane/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ImagesError::Client(e.to_string()))
}

/// Downloads `url` into `part`, resuming from what `part` already holds; retries transient
/// failures (each retry resumes).
async fn download(
    url: &str,
    part: &Path,
    name: &str,
    progress: Option<ProgressFn>,
) -> Result<Digest, ImagesError> {
    let client = client()?;
    let mut attempt = 1;
    loop {
        match download_once(&client, url, part, name, progress.as_ref()).await {
            Ok(d) => return Ok(d),
            Err(e) if e.transient() && attempt < DOWNLOAD_ATTEMPTS => {
                tracing::warn!(url, attempt, error = %e, "download interrupted: resuming");
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn transfer(url: &str, e: impl std::fmt::Display) -> ImagesError {
    ImagesError::Download {
        url: url.into(),
        reason: e.to_string(),
    }
}

/// A reqwest error with its causes ("connection refused" is in the source chain, not the top).
fn transfer_error(url: &str, e: reqwest::Error) -> ImagesError {
    let mut reason = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = cause {
        if !reason.is_empty() {
            reason.push_str(": ");
        }
        reason.push_str(&c.to_string());
        cause = c.source();
    }
    if reason.is_empty() {
        reason = e.to_string();
    }
    transfer(url, reason)
}

async fn download_once(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    name: &str,
    progress: Option<&ProgressFn>,
) -> Result<Digest, ImagesError> {
    let have = match tokio::fs::metadata(part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let response = request.send().await.map_err(|e| transfer_error(url, e))?;
    let status = response.status().as_u16();
    let resumed = match status {
        206 if have > 0 => {
            let range = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {have}-")) {
                // Not the part asked for: start over.
                let _ = tokio::fs::remove_file(part).await;
                return Err(transfer(url, format!("unexpected content-range '{range}'")));
            }
            true
        }
        200 => false,
        416 if have > 0 => {
            let complete = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes */"))
                .and_then(|n| n.parse::<u64>().ok())
                == Some(have);
            if complete {
                // An earlier attempt got every byte: hash what is there.
                return hash_file(part.to_path_buf()).await;
            }
            // What is there may be too long (the file changed upstream): start over.
            let _ = tokio::fs::remove_file(part).await;
            return Err(transfer(url, "range not satisfiable; starting over"));
        }
        _ => {
            return Err(ImagesError::Status {
                url: url.into(),
                status,
            })
        }
    };
    let (mut hasher, mut done) = if resumed {
        let p = part.to_path_buf();
        tokio::task::spawn_blocking(move || hash_prefix(&p))
            .await
            .map_err(|e| ImagesError::Internal(e.to_string()))??
    } else {
        (Sha256::new(), 0)
    };
    if resumed {
        tracing::info!(url, from = done, "resuming download");
    }
    let total = response.content_length().map(|len| len + done);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .await
        .map_err(io("cannot open", part))?;
    let mut body = response.bytes_stream();
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(transfer_error(url, e));
                break;
            }
        };
        file.write_all(&chunk)
            .await
            .map_err(io("cannot write", part))?;
        hasher.update(&chunk);
        done += chunk.len() as u64;
        if let Some(p) = progress {
            p(name, done, total);
        }
    }
    file.flush().await.map_err(io("cannot write", part))?;
    file.sync_all().await.map_err(io("cannot write", part))?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(total) = total {
        if done != total {
            return Err(transfer(
                url,
                format!("ended after {done} of {total} bytes"),
            ));
        }
    }
    Ok(Digest {
        size: done,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_pin_wins_over_the_cluster_which_wins_over_the_default() {
        assert_eq!(
            selected_version(Some("v1.10.9"), Some("v1.11.6"), "v1.9.5"),
            "v1.10.9"
        );
        assert_eq!(selected_version(None, Some("v1.11.6"), "v1.9.5"), "v1.11.6");
        assert_eq!(selected_version(None, None, "v1.9.5"), "v1.9.5");
    }

    #[tokio::test]
    async fn a_stored_machine_boots_its_pin_else_its_clusters_version() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let mut m = Machine::discovered("52:54:00:00:00:01".parse().unwrap());
        assert_eq!(machine_version(&db, &m, "v1.9.5").await.unwrap(), "v1.9.5");
        let mut c = db.get_cluster(None).await.unwrap().unwrap();
        c.talos_version = Some("v1.11.6".into());
        db.update_cluster(&c.name.clone(), &c).await.unwrap();
        m.cluster = c.name.clone();
        assert_eq!(machine_version(&db, &m, "v1.9.5").await.unwrap(), "v1.11.6");
        m.talos_version = Some("v1.10.9".into());
        assert_eq!(machine_version(&db, &m, "v1.9.5").await.unwrap(), "v1.10.9");
    }

    #[test]
    fn arm64_firmware_gets_arm64_assets() {
        assert_eq!(arch_of_client(Some(11)), Arch::Arm64);
        assert_eq!(arch_of_client(Some(7)), Arch::Amd64);
        assert_eq!(arch_of_client(None), Arch::Amd64);
    }

    #[test]
    fn the_vanilla_schematic_is_the_documented_yaml() {
        let yaml = Customization::default().to_yaml().unwrap();
        assert_eq!(yaml, "customization: {}\n");
        // The Image Factory's ID is the SHA-256 of this document.
        assert_eq!(
            hex::encode(Sha256::digest(yaml.as_bytes())),
            "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
        );
        let c = Customization {
            extensions: vec!["siderolabs/iscsi-tools".into()],
            kernel_args: vec!["net.ifnames=0".into()],
        };
        let parsed: Schematic = serde_yaml_ng::from_str(&c.to_yaml().unwrap()).unwrap();
        assert_eq!(
            parsed
                .customization
                .system_extensions
                .unwrap()
                .official_extensions,
            ["siderolabs/iscsi-tools"]
        );
        assert_eq!(parsed.customization.extra_kernel_args, ["net.ifnames=0"]);
        for bad in ["../x", "Siderolabs/x", "a b"] {
            let c = Customization {
                extensions: vec![bad.into()],
                ..Default::default()
            };
            assert!(c.to_yaml().is_err(), "{bad}");
        }
        let c = Customization {
            kernel_args: vec!["a b".into()],
            ..Default::default()
        };
        assert!(c.to_yaml().is_err());
    }

    #[test]
    fn a_factory_cmdline_gives_only_the_schematics_own_arguments() {
        let cmdline = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on \
            consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1 \
            net.ifnames=0 talos.dashboard.disabled=1\n";
        assert_eq!(
            extra_args(cmdline, "v1.11.6", Arch::Amd64),
            ["net.ifnames=0", "talos.dashboard.disabled=1"]
        );
    }

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

    #[tokio::test]
    async fn boot_scripts_see_this_process_writes_at_once_and_new_records_from_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let images = tempfile::tempdir().unwrap();
        let store = Images::new(images.path().to_path_buf(), db.clone());
        let (v, a) = ("v1.11.6", Arch::Amd64);
        assert!(matches!(
            store.availability(v, a).await.unwrap(),
            Availability::Missing(_)
        ));
        // Another process (the CLI) starts a download: a new record counts at once.
        let file = AssetFile {
            origin: "http://f/k".into(),
            digest: None,
        };
        let asset = Asset {
            version: v.into(),
            arch: a,
            source: AssetSource::Release,
            kernel: file.clone(),
            initramfs: file,
            kernel_args: vec!["net.ifnames=0".into()],
            state: AssetState::Downloading,
            updated_at: 1,
        };
        db.put_image(&asset).await.unwrap();
        assert_eq!(
            store.availability(v, a).await.unwrap(),
            Availability::OutOfService("being downloaded".into())
        );
        assert_eq!(store.kernel_args(v, a).await.unwrap(), ["net.ifnames=0"]);
        // This process's own write is seen at once, though the record was just cached.
        store
            .set_record_state(v, a, &AssetState::Broken("bad".into()), 2)
            .await
            .unwrap();
        assert_eq!(
            store.availability(v, a).await.unwrap(),
            Availability::OutOfService("bad".into())
        );
        store.remove_record(v, a).await.unwrap();
        assert!(matches!(
            store.availability(v, a).await.unwrap(),
            Availability::Missing(_)
        ));
        assert!(store.kernel_args(v, a).await.unwrap().is_empty());
    }

    #[test]
    fn partial_files_are_hidden() {
        assert_eq!(
            part_path(Path::new("/i/v1.11.6/vmlinuz-amd64")),
            PathBuf::from("/i/v1.11.6/.vmlinuz-amd64.part")
        );
    }
}
