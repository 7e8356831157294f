//! Downloads in flight in this process, their progress, and adds run in the background.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{
    parse_sha256, validate_schematic, validate_version, AddRequest, AssetSource, AssetState,
    Images, ImagesError, SourceSpec,
};
use crate::talos::Arch;

/// Called as bytes arrive: file name, bytes so far, total if known.
pub type ProgressFn = Arc<dyn Fn(&str, u64, Option<u64>) + Send + Sync>;

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
pub(super) struct InFlight {
    map: Arc<Mutex<HashMap<String, Progress>>>,
    key: String,
    owner: bool,
}

impl InFlight {
    pub(super) fn enter(images: &Images, version: &str, arch: Arch) -> InFlight {
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
    pub(super) fn progress_feed(
        &self,
        version: &str,
        arch: Arch,
        then: Option<ProgressFn>,
    ) -> ProgressFn {
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

    /// Every download in flight in this process: version, arch and progress.
    pub fn in_flight(&self) -> Vec<(String, Arch, Progress)> {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map
            .iter()
            .filter_map(|(key, p)| {
                let (version, arch) = key.rsplit_once(' ')?;
                let arch = [Arch::Amd64, Arch::Arm64]
                    .into_iter()
                    .find(|a| a.as_str() == arch)?;
                Some((version.to_string(), arch, p.clone()))
            })
            .collect();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }

    /// The downloads in flight in this process, by version and arch.
    pub fn progress(&self, version: &str, arch: Arch) -> Option<Progress> {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&flight_key(version, arch)).cloned()
    }

    /// The progress to show beside `asset`'s record: that of its download in flight, unless
    /// the record says ready. The record and the downloads in flight are read one after the
    /// other, and a download that just finished is still in flight for a moment; a broken
    /// record keeps its reason beside the progress of the add that will replace it.
    pub fn progress_of(&self, asset: &super::Asset) -> Option<Progress> {
        if matches!(asset.state, AssetState::Ready) {
            return None;
        }
        self.progress(&asset.version, asset.arch)
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
