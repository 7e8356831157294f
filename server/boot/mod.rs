//! HTTP boot: iPXE scripts, iPXE binaries, Talos kernel and initramfs, machine configs.
//!
//! Everything here is reachable without authentication, because booting machines must
//! reach it; nothing here reveals more than what a booting machine needs.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use serde::Deserialize;

use sha2::{Digest, Sha256};

use crate::assets::{Availability, ServeError, Unservable};
use crate::config::ConfigAccess;
use crate::db::Observation;
use crate::http::files;
use crate::model::lifecycle::Step;
use crate::model::{DiskHandoff, EventKind, Lifecycle, Mac, Machine, Role};
use crate::ops::materials::{self, MaterialsError};
use crate::orchestrator::Signal;
use crate::state::AppState;
use crate::support::metrics::Metrics;
use crate::talos::{self, Arch};

pub mod oauth;

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

#[derive(Template)]
#[template(path = "ipxe/chain.ipxe")]
struct ChainScript<'a> {
    base: &'a str,
}

#[derive(Template)]
#[template(path = "ipxe/wait.ipxe")]
struct WaitScript<'a> {
    mac: &'a str,
    retry_secs: u32,
    retry_url: &'a str,
}

#[derive(Template)]
#[template(path = "ipxe/install.ipxe")]
struct InstallScript<'a> {
    mac: &'a str,
    version: &'a str,
    arch: &'a str,
    role: &'a str,
    hostname: &'a str,
    kernel_url: &'a str,
    initrd_url: &'a str,
    initrd_name: &'a str,
    args: &'a str,
    retry_secs: u32,
}

#[derive(Template)]
#[template(path = "ipxe/missing.ipxe")]
struct MissingScript<'a> {
    version: &'a str,
    arch: &'a str,
    /// "are missing" or "are out of service"
    problem: &'a str,
    missing: &'a str,
    retry_secs: u32,
    retry_url: &'a str,
}

#[derive(Template)]
#[template(path = "ipxe/too_long.ipxe")]
struct TooLongScript<'a> {
    version: &'a str,
    arch: &'a str,
    problem: &'a str,
    retry_secs: u32,
    retry_url: &'a str,
}

#[derive(Template)]
#[template(path = "ipxe/disk.ipxe")]
struct DiskScript<'a> {
    mac: &'a str,
    sanboot: bool,
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

/// An iPXE script response, its bytes counted as `http_bytes{asset="script"}`.
fn script(metrics: &Metrics, body: Result<String, askama::Error>) -> Result<Response, BootError> {
    let body = body.map_err(|e| BootError::Internal(e.to_string()))?;
    metrics.http_sent("script", body.len() as u64);
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        body,
    )
        .into_response())
}

async fn boot_chain_get(State(state): State<AppState>) -> Result<Response, BootError> {
    let base = state.config.boot.http_base();
    script(&state.metrics, ChainScript { base: &base }.render())
}

#[derive(Debug, Deserialize)]
struct MachineQuery {
    mac: String,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    arch: Option<String>,
}

/// Keeps only what a SMBIOS UUID or serial may sensibly contain.
fn clean_ident(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .filter(|v| v.chars().all(|c| c.is_ascii_graphic() || c == ' '))
}

/// iPXE's `${buildarch}` values. The query parameter goes back into the retry URL of a
/// script, so only these pass: anything else (a newline and an iPXE command, say) is refused.
const IPXE_BUILDARCHES: &[&str] = &[
    "x86_64", "i386", "arm64", "aarch64", "arm32", "riscv64", "riscv32", "loong64",
];

fn ipxe_buildarch(text: Option<&str>) -> Result<&'static str, BootError> {
    match text {
        None | Some("") => Ok("x86_64"),
        Some(text) => IPXE_BUILDARCHES
            .iter()
            .find(|known| **known == text)
            .copied()
            .ok_or_else(|| {
                BootError::BadRequest(format!(
                    "arch must be one of iPXE's buildarch values ({})",
                    IPXE_BUILDARCHES.join(", ")
                ))
            }),
    }
}

fn parse_mac(text: &str) -> Result<Mac, BootError> {
    text.parse()
        .map_err(|e: crate::model::MacError| BootError::BadRequest(e.to_string()))
}

async fn boot_machine_get(
    State(state): State<AppState>,
    from: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<MachineQuery>,
) -> Result<Response, BootError> {
    let from = from.map(|Extension(ConnectInfo(addr))| addr);
    let mac = parse_mac(&q.mac)?;
    let buildarch = ipxe_buildarch(q.arch.as_deref())?;
    let arch = Arch::from_ipxe_buildarch(buildarch);
    let machine = state
        .db
        .get_machine(mac)
        .await
        .map_err(|e| BootError::Internal(e.to_string()))?;
    let boot = &state.config.boot;
    let base = boot.http_base();
    let retry_url = format!(
        "{base}/machine.ipxe?mac={}&arch={}",
        mac.hyphenated(),
        buildarch
    );
    let mac_text = mac.to_string();
    let (detail, response) = match machine {
        // A diskless machine has no disk to hand off to: every network boot gets Talos again,
        // and none is watched as a wipe.
        Some(m)
            if m.role != Role::Unassigned
                && m.installed
                && !m.diskless
                && !reinstall_now(&state, &m, from).await? =>
        {
            let detail = format!("installed: disk hand-off {}", m.disk_handoff);
            let response = match m.disk_handoff {
                DiskHandoff::Http404 => Err(BootError::NotFound),
                DiskHandoff::Exit => script(
                    &state.metrics,
                    DiskScript {
                        mac: &mac_text,
                        sanboot: false,
                    }
                    .render(),
                ),
                DiskHandoff::Sanboot => script(
                    &state.metrics,
                    DiskScript {
                        mac: &mac_text,
                        sanboot: true,
                    }
                    .render(),
                ),
            };
            (detail, response)
        }
        Some(m) if m.role != Role::Unassigned => {
            let version =
                crate::assets::machine_version(&state.db, &m, &state.config.boot.talos_version)
                    .await
                    .map_err(|e| BootError::Internal(e.to_string()))?;
            let availability = state
                .images
                .availability(&version, arch)
                .await
                .map_err(|e| BootError::Internal(e.to_string()))?;
            let asset_args = state
                .images
                .kernel_args(&version, arch)
                .await
                .map_err(|e| BootError::Internal(e.to_string()))?;
            let target = Target {
                version: &version,
                arch,
                asset_args: &asset_args,
            };
            let (detail, response) =
                install_script(&state, &m, &target, availability, &retry_url, &mac_text);
            // Talos was handed out only by a script that boots it (not one that explains why
            // it cannot: missing assets, a command line the kernel would cut).
            let talos_served = detail.starts_with("install ") || detail.starts_with("run ");
            // Only a change is written: a machine retrying its script while it boots must not
            // take SQLite's write lock on every request.
            if response.is_ok() && talos_served && m.state != Lifecycle::Booting {
                state
                    .db
                    .step(
                        mac,
                        Step::TalosHandedOut,
                        "install script served",
                        state.recorder.now_ms(),
                    )
                    .await
                    .map_err(|e| BootError::Internal(e.to_string()))?;
            }
            (detail, response)
        }
        _ => (
            "waiting for assignment".to_string(),
            script(
                &state.metrics,
                WaitScript {
                    mac: &mac_text,
                    retry_secs: boot.retry_secs,
                    retry_url: &retry_url,
                }
                .render(),
            ),
        ),
    };
    tracing::info!(mac = %mac, outcome = %detail, "boot script served");
    state.recorder.observe(Observation {
        mac,
        at: state.recorder.now_ms(),
        kind: EventKind::ScriptServed,
        detail,
        arch: None,
        smbios_uuid: clean_ident(q.uuid),
        serial: clean_ident(q.serial),
    });
    response
}

/// An installed machine is network-booting: hand it to its disk, unless this boot shows
/// its disk does not boot (then it is reinstalled, and gets the install script).
async fn reinstall_now(
    state: &AppState,
    m: &Machine,
    from: Option<SocketAddr>,
) -> Result<bool, BootError> {
    use crate::model::lifecycle::Requester;
    let requester = match from.map(|from| address_owner(state, from)) {
        Some(Ok(Some(seen))) if seen == m.mac => Requester::Itself,
        Some(Ok(Some(seen))) => Requester::Other(seen),
        _ => Requester::Unknown,
    };
    crate::orchestrator::installed_machine_netbooted(
        &state.db,
        &state.orchestrator,
        m,
        requester,
        state.recorder.now_ms(),
    )
    .await
    .map_err(|e| BootError::Internal(e.to_string()))
}

/// What a machine boots: the selected Talos version (pin, cluster, default), its
/// architecture, and the kernel arguments its assets' schematic bakes in.
struct Target<'a> {
    version: &'a str,
    arch: Arch,
    asset_args: &'a [String],
}

/// The kernel command line of an install boot of `m` (`talos::kernel::Additions`, the one
/// assembly every check shares): the version's base arguments and config URL, then the
/// schematic's extra arguments, bootplane's report-in arguments, and the operator's
/// `--kernel-args` last.
fn command_line(
    boot: &crate::config::BootConfig,
    target: &Target<'_>,
    mac: Mac,
) -> talos::kernel::CommandLine {
    boot.kernel_additions()
        .command_line(target.version, target.arch, mac, target.asset_args)
}

fn install_script(
    state: &AppState,
    m: &Machine,
    target: &Target<'_>,
    availability: Availability,
    retry_url: &str,
    mac_text: &str,
) -> (String, Result<Response, BootError>) {
    let boot = &state.config.boot;
    let (version, arch) = (target.version, target.arch);
    let unavailable = match availability {
        Availability::Available => None,
        Availability::Missing(files) => Some(("are missing", files.join(" "))),
        Availability::OutOfService(reason) => Some(("are out of service", reason)),
    };
    if let Some((problem, missing)) = unavailable {
        tracing::warn!(mac = %m.mac, problem, detail = %missing, "boot assets not available");
        return (
            format!("boot assets {problem}: {missing}"),
            script(
                &state.metrics,
                MissingScript {
                    version,
                    arch: arch.as_str(),
                    problem,
                    missing: &missing,
                    retry_secs: boot.retry_secs,
                    retry_url,
                }
                .render(),
            ),
        );
    }
    let command_line = command_line(boot, target, m.mac);
    if let Err(too_long) = command_line.check() {
        // Served cut, the arguments past the limit would vanish without a word.
        let problem = too_long.to_string();
        tracing::warn!(mac = %m.mac, %version, problem, "kernel command line too long");
        return (
            problem.clone(),
            script(
                &state.metrics,
                TooLongScript {
                    version,
                    arch: arch.as_str(),
                    problem: &problem,
                    retry_secs: boot.retry_secs,
                    retry_url,
                }
                .render(),
            ),
        );
    }
    let args = command_line.args();
    let base = boot.http_base();
    let asset = |file: String| format!("{base}/assets/{version}/{file}?mac={}", m.mac);
    let hostname = m.hostname.clone().unwrap_or_default();
    // The boot handler reads these first words: only a detail starting so booted Talos.
    let what = if m.diskless { "run" } else { "install" };
    let diskless = if m.diskless { ", diskless" } else { "" };
    (
        format!(
            "{what} Talos {version} {} as {}{diskless}",
            arch.as_str(),
            m.role
        ),
        script(
            &state.metrics,
            InstallScript {
                mac: mac_text,
                version,
                arch: arch.as_str(),
                role: m.role.as_str(),
                hostname: &hostname,
                kernel_url: &asset(arch.kernel_file()),
                initrd_url: &asset(arch.initramfs_file()),
                initrd_name: &arch.initramfs_file(),
                args: &args,
                retry_secs: boot.retry_secs,
            }
            .render(),
        ),
    )
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
    let loaded = match materials::load_cluster(&state.db, Some(&m.cluster)).await {
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
    state.orchestrator.signal(Signal::ConfigServed(mac));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        config,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> crate::config::BootConfig {
        crate::config::BootConfig {
            advertise_ip: std::net::Ipv4Addr::new(10, 0, 0, 2),
            http_port: 8080,
            ipxe_dir: PathBuf::from("/ipxe"),
            efi_binary: crate::model::EfiBinary::IpxeEfi,
            arm64_binary: "ipxe-arm64.efi".into(),
            images_dir: PathBuf::from("/images"),
            talos_version: "v1.11.6".into(),
            extra_kernel_args: vec!["console=ttyS1,115200".into()],
            retry_secs: 10,
            tftp_block_limit: 1468,
            tftp_window_limit: 16,
            config_access: ConfigAccess::Mac,
            events_port: Some(4002),
            kernel_log_port: None,
            boot_log_lines: 5000,
        }
    }

    #[test]
    fn install_args_follow_the_selected_version_with_the_operators_last() {
        let schematic = vec!["net.ifnames=0".to_string()];
        let target = Target {
            version: "v1.10.9",
            arch: Arch::Amd64,
            asset_args: &schematic,
        };
        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let args = command_line(&boot(), &target, mac).args();
        let words: Vec<&str> = args.split(' ').collect();
        // v1.10 has the IMA arguments that v1.11 dropped.
        assert!(words.contains(&"ima_template=ima-ng"), "{args}");
        assert!(
            words.contains(&"talos.config=http://10.0.0.2:8080/config?mac=52:54:00:00:00:01"),
            "{args}"
        );
        let at = |w: &str| words.iter().position(|x| x.starts_with(w)).unwrap();
        assert!(at("talos.config=") < at("net.ifnames=0"), "{args}");
        assert!(at("net.ifnames=0") < at("talos.events.sink="), "{args}");
        assert_eq!(words.last(), Some(&"console=ttyS1,115200"), "{args}");
        let v11 = Target {
            version: "v1.11.6",
            ..target
        };
        assert!(!command_line(&boot(), &v11, mac)
            .args()
            .contains("ima_template"));
    }
}
