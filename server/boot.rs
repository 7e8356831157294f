//! HTTP boot: iPXE scripts, iPXE binaries, Talos kernel and initramfs, machine configs.
//!
//! Everything here is reachable without authentication, because booting machines must
//! reach it; nothing here reveals more than what a booting machine needs.

use std::path::{Path, PathBuf};

use askama::Template;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::app::AppState;
use crate::db::Observation;
use crate::model::{DiskHandoff, EventKind, Mac, Machine, Role};
use crate::talos::{self, Arch};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/boot.ipxe", get(boot_chain_get))
        .route("/machine.ipxe", get(boot_machine_get))
        .route("/ipxe/{file}", get(boot_ipxe_binary_get))
        .route("/assets/{version}/{file}", get(boot_asset_get))
        .route("/config", get(boot_config_get))
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
    missing: &'a str,
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
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for BootError {
    fn into_response(self) -> Response {
        let status = match &self {
            BootError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BootError::NotFound => StatusCode::NOT_FOUND,
            BootError::Internal(detail) => {
                tracing::error!(error = %detail, "boot request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, format!("{self}\n")).into_response()
    }
}

fn script(body: Result<String, askama::Error>) -> Result<Response, BootError> {
    let body = body.map_err(|e| BootError::Internal(e.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        body,
    )
        .into_response())
}

async fn boot_chain_get(State(state): State<AppState>) -> Result<Response, BootError> {
    let base = state.config.boot.http_base();
    state.metrics.http_sent("script", 0);
    script(ChainScript { base: &base }.render())
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

fn parse_mac(text: &str) -> Result<Mac, BootError> {
    text.parse()
        .map_err(|e: crate::model::MacError| BootError::BadRequest(e.to_string()))
}

async fn boot_machine_get(
    State(state): State<AppState>,
    Query(q): Query<MachineQuery>,
) -> Result<Response, BootError> {
    let mac = parse_mac(&q.mac)?;
    let arch = Arch::from_ipxe_buildarch(q.arch.as_deref().unwrap_or("x86_64"));
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
        q.arch.as_deref().unwrap_or("x86_64")
    );
    let mac_text = mac.to_string();
    let (detail, response) = match machine {
        Some(m) if m.role != Role::Unassigned && m.installed => {
            let detail = format!("installed: disk hand-off {}", m.disk_handoff);
            let response = match m.disk_handoff {
                DiskHandoff::Http404 => Err(BootError::NotFound),
                DiskHandoff::Exit => script(
                    DiskScript {
                        mac: &mac_text,
                        sanboot: false,
                    }
                    .render(),
                ),
                DiskHandoff::Sanboot => script(
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
            install_script(&state, &m, arch, &retry_url, &mac_text)
        }
        _ => (
            "waiting for assignment".to_string(),
            script(
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

fn install_script(
    state: &AppState,
    m: &Machine,
    arch: Arch,
    retry_url: &str,
    mac_text: &str,
) -> (String, Result<Response, BootError>) {
    let boot = &state.config.boot;
    let version = boot.talos_version.as_str();
    let version_dir = boot.images_dir.join(version);
    let missing: Vec<String> = [arch.kernel_file(), arch.initramfs_file()]
        .into_iter()
        .filter(|f| !version_dir.join(f).is_file())
        .map(|f| version_dir.join(f).display().to_string())
        .collect();
    if !missing.is_empty() {
        let missing = missing.join(" ");
        tracing::warn!(mac = %m.mac, missing = %missing, "boot assets missing");
        return (
            format!("boot assets missing: {missing}"),
            script(
                MissingScript {
                    version,
                    arch: arch.as_str(),
                    missing: &missing,
                    retry_secs: boot.retry_secs,
                    retry_url,
                }
                .render(),
            ),
        );
    }
    let base = boot.http_base();
    let asset = |file: String| format!("{base}/assets/{version}/{file}?mac={}", m.mac);
    let config_url = format!("{base}/config?mac={}", m.mac);
    let args = talos::kernel_args(version, arch, &config_url, &boot.extra_kernel_args).join(" ");
    let hostname = m.hostname.clone().unwrap_or_default();
    (
        format!("install Talos {version} {} as {}", arch.as_str(), m.role),
        script(
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

/// Serves `path` with Content-Length, HEAD and Range; counts the bytes actually sent.
async fn serve_counted(
    state: &AppState,
    path: PathBuf,
    asset: &'static str,
    req: Request,
) -> Result<Response, BootError> {
    let response = ServeFile::new(path)
        .oneshot(req)
        .await
        .map_err(|e| BootError::Internal(e.to_string()))?;
    let metrics = state.metrics.clone();
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                metrics.http_sent(asset, data.len() as u64);
            }
            frame
        }))
    }))
}

/// A plain file name: no separators, no leading dot.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && Path::new(name).components().count() == 1
}

async fn boot_ipxe_binary_get(
    State(state): State<AppState>,
    UrlPath(file): UrlPath<String>,
    req: Request,
) -> Result<Response, BootError> {
    if !plain_name(&file) {
        return Err(BootError::NotFound);
    }
    let path = state.config.boot.ipxe_dir.join(&file);
    if !path.is_file() {
        return Err(BootError::NotFound);
    }
    serve_counted(&state, path, "ipxe", req).await
}

#[derive(Debug, Deserialize)]
struct AssetQuery {
    #[serde(default)]
    mac: Option<String>,
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
    let (asset, kind) = match file.as_str() {
        "vmlinuz-amd64" | "vmlinuz-arm64" => ("kernel", EventKind::KernelFetched),
        "initramfs-amd64.xz" | "initramfs-arm64.xz" => ("initramfs", EventKind::InitramfsFetched),
        _ => return Err(BootError::NotFound),
    };
    let path = state.config.boot.images_dir.join(&version).join(&file);
    if !path.is_file() {
        tracing::warn!(path = %path.display(), "boot asset requested but missing");
        return Err(BootError::NotFound);
    }
    let is_get = req.method() == Method::GET;
    let range = req.headers().get(header::RANGE).is_some();
    let response = serve_counted(&state, path, asset, req).await?;
    let mac = q.mac.as_deref().and_then(|m| m.parse::<Mac>().ok());
    if let (true, Some(mac)) = (is_get && response.status().is_success(), mac) {
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

/// The `talos.config=` URL. Rendering machine configs comes with the cluster materials; until
/// then assigned machines are told to retry (Talos retries any non-200 answer).
async fn boot_config_get(
    State(state): State<AppState>,
    Query(q): Query<ConfigQuery>,
) -> Result<Response, BootError> {
    let mac = parse_mac(&q.mac).map_err(|_| BootError::NotFound)?;
    let machine = state
        .db
        .get_machine(mac)
        .await
        .map_err(|e| BootError::Internal(e.to_string()))?;
    match machine {
        Some(m) if m.is_assigned() => {
            tracing::info!(mac = %mac, "config requested; no rendered config yet");
            state.recorder.event(
                mac,
                EventKind::ConfigFetched,
                "404: no rendered config yet (no cluster configured)",
            );
            Err(BootError::NotFound)
        }
        _ => Err(BootError::NotFound),
    }
}
