//! HTTP boot: iPXE scripts, iPXE binaries, Talos kernel and initramfs, machine configs.
//!
//! Everything here is reachable without authentication, because booting machines must
//! reach it; nothing here reveals more than what a booting machine needs.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use serde::Deserialize;

use sha2::{Digest, Sha256};

use crate::assets::{ServeError, Unservable};
use crate::config::ConfigAccess;
use crate::http::files;
use crate::model::lifecycle::Step;
use crate::model::{EventKind, Mac};
use crate::ops::materials::{self, MaterialsError};
use crate::orchestrator::Signal;
use crate::state::AppState;

pub mod oauth;
mod scripts;

use scripts::{boot_chain_get, boot_machine_get};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/boot.ipxe", get(boot_chain_get))
        .route("/machine.ipxe", get(boot_machine_get))
        .route("/ipxe/{file}", get(boot_ipxe_binary_get))
        .route("/assets/{version}/{file}", get(boot_asset_get))
        .route("/config", get(boot_config_get))
        .route("/device/code", post(oauth::boot_device_code_post))
        .route("/token", post(oauth::boot_token_post))
}

/// Errors of the boot surface: plain-text bodies that iPXE prints on the console.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("forbidden")]
    Forbidden,
    #[error("not available yet")]
    Unavailable,
    /// A boot asset that is recorded but may not be served (failed verification, downloading).
    #[error("boot asset out of service: {0}")]
    OutOfService(String),
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for BootError {
    fn into_response(self) -> Response {
        let status = match &self {
            BootError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BootError::NotFound => StatusCode::NOT_FOUND,
            BootError::Forbidden => StatusCode::FORBIDDEN,
            BootError::Unavailable | BootError::OutOfService(_) => StatusCode::SERVICE_UNAVAILABLE,
            BootError::Internal(detail) => {
                tracing::error!(error = %detail, "boot request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, format!("{self}\n")).into_response()
    }
}

fn parse_mac(text: &str) -> Result<Mac, BootError> {
    text.parse()
        .map_err(|e: crate::model::MacError| BootError::BadRequest(e.to_string()))
}

/// Reads `query` as the boot handlers read theirs (`/machine.ipxe`, `/config`), for the
/// fuzzer: whatever the bytes, an answer or a refusal, never a panic.
#[cfg(feature = "testkit")]
pub fn read_query(query: &[u8]) -> bool {
    let machine = serde_urlencoded::from_bytes::<scripts::MachineQuery>(query)
        .ok()
        .map(|q| q.read().is_ok());
    let config = serde_urlencoded::from_bytes::<ConfigQuery>(query)
        .ok()
        .map(|q| parse_mac(&q.mac).is_ok());
    machine == Some(true) || config == Some(true)
}

/// A plain file name: no separators, no leading dot.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && Path::new(name).components().count() == 1
}

/// iPXE binaries for UEFI HTTP boot, from the in-memory copy TFTP serves (reread when the
/// file changes on disk), with Range, HEAD and conditional requests.
async fn boot_ipxe_binary_get(
    State(state): State<AppState>,
    UrlPath(file): UrlPath<String>,
    req: Request,
) -> Result<Response, BootError> {
    if !plain_name(&file) {
        return Err(BootError::NotFound);
    }
    let files = state.ipxe_files.clone();
    let name = file.clone();
    let loaded = tokio::task::spawn_blocking(move || files.load_with_time(&name))
        .await
        .map_err(|e| BootError::Internal(e.to_string()))?;
    let Ok((data, modified)) = loaded else {
        return Err(BootError::NotFound);
    };
    let source = files::Source::Memory { data, modified };
    Ok(files::respond(
        req.headers(),
        source,
        "application/octet-stream",
        state.metrics.clone(),
        "ipxe",
        None,
    ))
}

#[derive(Debug, Deserialize)]
struct AssetQuery {
    #[serde(default)]
    mac: Option<String>,
}

/// The path of a boot asset that matches its recorded SHA-256, or why it may not be served.
async fn servable_asset(state: &AppState, version: &str, file: &str) -> Result<PathBuf, BootError> {
    match state.images.servable(version, file).await {
        Ok(path) => Ok(path),
        Err(ServeError::Unservable(Unservable::Missing)) => {
            tracing::warn!(version = %version, file = %file, "boot asset requested but missing");
            Err(BootError::NotFound)
        }
        Err(ServeError::Unservable(Unservable::OutOfService(reason))) => {
            tracing::warn!(version = %version, file = %file, reason = %reason,
                "boot asset requested but out of service");
            Err(BootError::OutOfService(reason))
        }
        Err(ServeError::Images(e)) => Err(BootError::Internal(e.to_string())),
    }
}

/// The open file of a verified boot asset. A file not open yet (or replaced on disk since) is
/// opened and then verified again, so the open inode is the one `servable` checked.
async fn open_asset(
    state: &AppState,
    version: &str,
    file: &str,
) -> Result<std::sync::Arc<files::OpenAsset>, BootError> {
    let path = servable_asset(state, version, file).await?;
    if let Some(open) = state.open_assets.get(&path) {
        return Ok(open);
    }
    let opening = path.clone();
    let open = tokio::task::spawn_blocking(move || files::OpenAsset::open(&opening))
        .await
        .map_err(|e| BootError::Internal(e.to_string()))?;
    let open = match open {
        Ok(open) => open,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BootError::NotFound),
        Err(e) => return Err(BootError::Internal(format!("{}: {e}", path.display()))),
    };
    let again = servable_asset(state, version, file).await?;
    if again != path || !open.still_at(&path) {
        return Err(BootError::OutOfService(
            "replaced while being opened".into(),
        ));
    }
    Ok(state.open_assets.insert(path, open))
}

async fn boot_asset_get(
    State(state): State<AppState>,
    UrlPath((version, file)): UrlPath<(String, String)>,
    Query(q): Query<AssetQuery>,
    req: Request,
) -> Result<Response, BootError> {
    if crate::config::validate_talos_version(&version).is_err() {
        return Err(BootError::NotFound);
    }
    let (asset, kind, content_type) = match file.as_str() {
        "vmlinuz-amd64" | "vmlinuz-arm64" => (
            "kernel",
            EventKind::KernelFetched,
            "application/octet-stream",
        ),
        "initramfs-amd64.xz" | "initramfs-arm64.xz" => {
            ("initramfs", EventKind::InitramfsFetched, "application/x-xz")
        }
        _ => return Err(BootError::NotFound),
    };
    // Only a file that matches its recorded SHA-256 is served.
    let open = open_asset(&state, &version, &file).await?;
    let is_get = req.method() == Method::GET;
    let range = req.headers().get(header::RANGE).is_some();
    let sent = Arc::new(AtomicU64::new(0));
    let response = files::respond(
        req.headers(),
        files::Source::Asset(open),
        content_type,
        state.metrics.clone(),
        asset,
        Some(Arc::clone(&sent)),
    );
    let mac = q.mac.as_deref().and_then(|m| m.parse::<Mac>().ok());
    if let (true, Some(mac)) = (is_get && response.status().is_success(), mac) {
        let total = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        state
            .transfers
            .track(mac, asset, total, state.recorder.now_ms(), sent);
        tracing::info!(mac = %mac, file = %file, range, "boot asset served");
        let detail = match response.headers().get(header::CONTENT_LENGTH) {
            Some(len) => format!(
                "{version}/{file} ({} bytes{})",
                len.to_str().unwrap_or("?"),
                if range { ", range" } else { "" }
            ),
            None => format!("{version}/{file}"),
        };
        state.recorder.event(mac, kind, detail);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct ConfigQuery {
    mac: String,
}

/// The MAC bootplane has evidence for at the requester's address: the lease its own DHCP
/// server bound for the address (until it ends), else the host's neighbour table. Never
/// anything the request itself carries. (A lease comes first: it is bootplane's own record,
/// and it names the machine even where one NIC carries many addresses, as in the bench.)
pub(crate) fn address_owner(state: &AppState, from: SocketAddr) -> Result<Option<Mac>, String> {
    let ip = match from.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(ip) => ip,
            None => {
                return Err(format!(
                    "request from {} (IPv6) cannot be matched to a MAC",
                    from.ip()
                ))
            }
        },
    };
    Ok(state.neighbours.owner(ip, state.recorder.now_ms()))
}

/// Whether `from` may fetch `mac`'s config under the configured policy.
fn config_allowed(
    state: &AppState,
    mac: Mac,
    from: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), String> {
    match state.config.boot.config_access {
        ConfigAccess::Any => return Ok(()),
        ConfigAccess::Oauth => {
            let Some(token) = oauth::bearer(headers) else {
                return Err("no bearer token (--config-access oauth)".into());
            };
            return match state.devices.token_mac(token, state.recorder.now_ms()) {
                Some(opened) if opened == mac => Ok(()),
                Some(opened) => Err(format!("the token was issued for {opened}, not {mac}")),
                None => Err("the bearer token is unknown or expired".into()),
            };
        }
        ConfigAccess::Mac => {}
    }
    let Some(from) = from else {
        return Err("the requester's address is unknown".into());
    };
    match address_owner(state, from)? {
        Some(seen) if seen == mac => Ok(()),
        Some(seen) => Err(format!(
            "request from {}, which is {seen}, not {mac}",
            from.ip()
        )),
        None => Err(format!(
            "request from {}, which is neither leased to {mac} nor in this host's neighbour table",
            from.ip()
        )),
    }
}

/// The `talos.config=` URL: the machine's rendered config, for assigned machines only.
async fn boot_config_get(
    State(state): State<AppState>,
    from: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Query(q): Query<ConfigQuery>,
) -> Result<Response, BootError> {
    let mac = parse_mac(&q.mac).map_err(|_| BootError::NotFound)?;
    let machine = state
        .db
        .get_machine(mac)
        .await
        .map_err(|e| BootError::Internal(e.to_string()))?;
    let Some(m) = machine.filter(|m| m.is_assigned()) else {
        return Err(BootError::NotFound);
    };
    let from = from.map(|Extension(ConnectInfo(addr))| addr);
    if let Err(why) = config_allowed(&state, mac, from, &headers) {
        tracing::warn!(mac = %mac, reason = %why, "config request refused");
        state.recorder.event(
            mac,
            EventKind::ConfigFetched,
            format!("refused (403): {why}"),
        );
        return Err(BootError::Forbidden);
    }
    let loaded = match materials::load_cluster_cached(&state.db, &state.materials, &m.cluster).await
    {
        Ok(loaded) => loaded,
        Err(MaterialsError::NotInitialised(name)) => {
            state.recorder.event(
                mac,
                EventKind::ConfigFetched,
                format!("not served (404): cluster {name} is not initialised"),
            );
            return Err(BootError::NotFound);
        }
        Err(e) => return Err(BootError::Internal(e.to_string())),
    };
    let config = match materials::render_machine(&loaded, &m) {
        Ok(text) => text,
        Err(e) => {
            // Settings and patches are checked when saved; this only happens if the stored
            // data changed underneath. Talos retries any non-200 answer.
            tracing::error!(mac = %mac, error = %e, "config does not render");
            state.recorder.event(
                mac,
                EventKind::ConfigFetched,
                format!("not served (503): {e}"),
            );
            return Err(BootError::Unavailable);
        }
    };
    let digest = hex::encode(Sha256::digest(config.as_bytes()));
    tracing::info!(mac = %mac, bytes = config.len(), sha256 = %digest, "config served");
    state.metrics.http_sent("config", config.len() as u64);
    // Waited for, so the log shows the fetch before the state change it causes.
    let detail = format!("served {} bytes sha256:{digest}", config.len());
    if !state
        .recorder
        .news(mac, EventKind::ConfigFetched, detail)
        .await
    {
        return Err(BootError::Internal(
            "the event log is not accepting events".into(),
        ));
    }
    // A diskless node fetches its config at every boot: it is waited for (probed) each time.
    if !m.installed || m.diskless {
        state
            .db
            .step(
                mac,
                Step::ConfigFetched,
                "config fetched by the node",
                state.recorder.now_ms(),
            )
            .await
            .map_err(|e| BootError::Internal(e.to_string()))?;
    }
    state.orchestrator.signal(Signal::ConfigServed(mac, m.role));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        config,
    )
        .into_response())
}
