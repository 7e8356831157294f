//! What every HTTP handler can reach: `AppState`, one cheap-to-clone bundle of the appliance's
//! shared handles, built by `app` and passed to the routers with `with_state`.

use std::sync::Arc;

use crate::config::Config;
use crate::db::Db;
use crate::inventory::{Inventory, Neighbours, Recorder};
use crate::support::metrics::Metrics;
use crate::tftp::IpxeFiles;

/// Shared by every HTTP handler; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub inventory: Inventory,
    pub recorder: Recorder,
    pub neighbours: Neighbours,
    pub metrics: Metrics,
    pub orchestrator: crate::orchestrator::Handle,
    pub login_limiter: crate::auth::LoginLimiter,
    /// Boot assets: `/assets/` serves only what this store verified.
    pub images: crate::assets::Images,
    /// Asset files open for `/assets/`, one per verified inode.
    pub open_assets: crate::http::files::OpenAssets,
    /// The iPXE binaries in memory, shared by TFTP and `/ipxe/`.
    pub ipxe_files: IpxeFiles,
    /// OAuth2 device requests, approvals and tokens (`--config-access oauth`).
    pub devices: crate::auth::devices::DeviceFlow,
    /// Boot asset downloads in flight per machine, for the boot timeline.
    pub transfers: crate::inventory::Transfers,
}

impl AppState {
    /// After an operator's write: refresh the snapshot and let the orchestrator look again.
    pub fn changed(&self) {
        self.inventory.mark_changed();
        self.orchestrator.signal(crate::orchestrator::Signal::Kick);
    }
}
