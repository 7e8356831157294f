//! Boot assets: the list with state and live download progress, adding from the Image Factory
//! or the release (in the background), creating a schematic, removing, verifying.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::{ago, error_page, render, Chrome, FieldErrors, Op};
use crate::assets::{self, Asset, AssetSource, AssetState, Customization, ImagesError, Started};
use crate::ops::images::{
    parse_image_input, parse_schematic_input, ImageInput, LocalFiles, SchematicInput,
};
use crate::ops::OpsError;
use crate::state::AppState;

/// The Image Factory's schematic without customisations (talos-anchors.md).
pub const VANILLA_SCHEMATIC: &str =
    "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";

pub struct ImageRow {
    pub version: String,
    pub arch: &'static str,
    pub source: String,
    /// The schematic or origin in full, for the title attribute.
    pub origin: String,
    pub kernel: String,
    pub initramfs: String,
    pub kernel_args: String,
    pub state: String,
    pub reason: String,
    /// `(done, total, words)` of a download in flight here.
    pub progress: Option<(u64, u64, String)>,
    pub updated: String,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn file_words(f: &assets::AssetFile) -> String {
    match &f.digest {
        Some(d) => format!(
            "{} · sha256:{}…",
            mib(d.size),
            &d.sha256[..12.min(d.sha256.len())]
        ),
        None => "—".into(),
    }
}

fn image_row(state: &AppState, a: &Asset, now: i64) -> ImageRow {
    let (source, origin) = match &a.source {
        AssetSource::Factory { schematic } => (
            format!("factory {}…", &schematic[..12.min(schematic.len())]),
            schematic.clone(),
        ),
        AssetSource::Release => ("release".into(), a.kernel.origin.clone()),
        AssetSource::Local => ("local files".into(), a.kernel.origin.clone()),
        AssetSource::Found => ("found on disk".into(), a.kernel.origin.clone()),
    };
    let progress = state.images.progress_of(a).map(|p| {
        let total = p.total.unwrap_or(0);
        let words = if p.file.is_empty() {
            "starting".to_string()
        } else if total > 0 {
            format!(
                "{}: {} of {} ({}%)",
                p.file,
                mib(p.done),
                mib(total),
                p.done * 100 / total
            )
        } else {
            format!("{}: {}", p.file, mib(p.done))
        };
        (p.done, total.max(p.done), words)
    });
    let (state_word, reason) = match &a.state {
        // A download that failed is not a tampered file: "failed" says the first, "broken" the
        // second (a hash mismatch, a file changed or gone).
        AssetState::Broken(r) if is_download_failure(r) => ("failed".to_string(), r.clone()),
        AssetState::Broken(r) => ("broken".to_string(), r.clone()),
        AssetState::Downloading if progress.is_none() => (
            "downloading".to_string(),
            "not by this appliance: another bootplane process downloads it, or the download was interrupted (add it again to resume)".into(),
        ),
        other => (other.to_string(), String::new()),
    };
    ImageRow {
        version: a.version.clone(),
        arch: a.arch.as_str(),
        source,
        origin,
        kernel: file_words(&a.kernel),
        initramfs: file_words(&a.initramfs),
        kernel_args: a.kernel_args.join(" "),
        state: state_word,
        reason,
        progress,
        updated: ago(now, Some(a.updated_at)),
    }
}

/// Whether an out-of-service reason is a download that did not complete (as `assets` words it).
fn is_download_failure(reason: &str) -> bool {
    reason.starts_with("download ")
}

async fn rows(state: &AppState) -> Result<(Vec<ImageRow>, String), ImagesError> {
    let assets = state.images.list().await?;
    let now = state.recorder.now_ms();
    let count = |f: &dyn Fn(&AssetState) -> bool| assets.iter().filter(|a| f(&a.state)).count();
    let summary = format!(
        "{} boot assets: {} ready, {} downloading, {} out of service",
        assets.len(),
        count(&|s| *s == AssetState::Ready),
        count(&|s| *s == AssetState::Downloading),
        count(&|s| matches!(s, AssetState::Broken(_))),
    );
    let mut rows: Vec<ImageRow> = assets.iter().map(|a| image_row(state, a, now)).collect();
    // A download asked for a moment ago may have no record yet (it is checking the schematic,
    // or waiting for another process): it shows at once, as starting.
    for (version, arch, p) in state.images.in_flight() {
        if !assets
            .iter()
            .any(|a| a.version == version && a.arch == arch)
        {
            rows.push(ImageRow {
                version,
                arch: arch.as_str(),
                source: "…".into(),
                origin: String::new(),
                kernel: "-".into(),
                initramfs: "-".into(),
                kernel_args: String::new(),
                state: "downloading".into(),
                reason: String::new(),
                progress: Some((0, 0, "starting".into())),
                updated: ago(now, Some(p.started_at)),
            });
        }
    }
    Ok((rows, summary))
}

/// The add form as typed.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AddForm {
    /// factory or release
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub schematic: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub sha256_kernel: String,
    #[serde(default)]
    pub sha256_initramfs: String,
}

impl AddForm {
    fn input(&self) -> ImageInput {
        let release = self.source == "release";
        ImageInput {
            version: Some(self.version.clone()),
            arch: Some(self.arch.clone()),
            schematic: (!release).then(|| self.schematic.clone()),
            release: Some(release),
            kernel_path: None,
            initramfs_path: None,
            sha256_kernel: Some(self.sha256_kernel.clone()),
            sha256_initramfs: Some(self.sha256_initramfs.clone()),
        }
    }
}

/// The schematic form as typed: one item per line (or comma-separated).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SchematicForm {
    #[serde(default)]
    pub extensions: String,
    #[serde(default)]
    pub kernel_args: String,
}

#[derive(Template)]
#[template(path = "ui/images.html")]
struct ImagesPage {
    nav: &'static str,
    user: String,
    csrf: String,
    flash: Option<String>,
    summary: String,
    rows: Vec<ImageRow>,
    add: AddForm,
    arch_options: Vec<(&'static str, bool)>,
    schematic: SchematicForm,
    factory_url: String,
    errors: FieldErrors,
    verify: Option<Vec<(String, String)>>,
}

#[derive(Default)]
struct Extras {
    add: Option<AddForm>,
    schematic: SchematicForm,
    errors: FieldErrors,
    flash: Option<String>,
    verify: Option<Vec<(String, String)>>,
}

fn flash(code: Option<&str>) -> Option<String> {
    let text = match code? {
        "started" => "Download started: progress shows below.",
        "downloading" => "Already downloading: no second download was started.",
        "removed" => "Assets removed.",
        _ => return super::flash_message(code),
    };
    Some(text.into())
}

async fn images_page(state: &AppState, op: &crate::auth::Operator, extras: Extras) -> Response {
    let (rows, summary) = match rows(state).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot list boot assets");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again",
            );
        }
    };
    let version = match state.db.get_cluster(None).await {
        Ok(c) => c
            .and_then(|c| c.talos_version)
            .unwrap_or_else(|| state.config.boot.talos_version.clone()),
        Err(e) => return super::ops_error_page(&OpsError::Db(e)),
    };
    let add = extras.add.unwrap_or_else(|| AddForm {
        source: "factory".into(),
        schematic: VANILLA_SCHEMATIC.into(),
        version,
        arch: "amd64".into(),
        ..Default::default()
    });
    let chrome = Chrome::of(op);
    let status = if extras.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let page = ImagesPage {
        nav: "images",
        user: chrome.user,
        csrf: chrome.csrf,
        flash: extras.flash,
        summary,
        rows,
        arch_options: ["amd64", "arm64"]
            .into_iter()
            .map(|a| (a, a == add.arch))
            .collect(),
        add,
        schematic: extras.schematic,
        factory_url: state.config.sources.factory_url.clone(),
        errors: extras.errors,
        verify: extras.verify,
    };
    let mut r = render(&page);
    *r.status_mut() = status;
    r
}

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    flash: Option<String>,
}

pub async fn ui_images_get(
    State(state): State<AppState>,
    Extension(op): Op,
    Query(q): Query<PageQuery>,
) -> Response {
    let extras = Extras {
        flash: flash(q.flash.as_deref()),
        ..Default::default()
    };
    images_page(&state, &op, extras).await
}

#[derive(Template)]
#[template(path = "ui/_image_rows.html")]
struct RowsPartial {
    rows: Vec<ImageRow>,
    csrf: String,
}

/// The table body alone, polled by the page's script for live progress.
pub async fn ui_image_rows_get(State(state): State<AppState>, Extension(op): Op) -> Response {
    match rows(&state).await {
        Ok((rows, summary)) => {
            let partial = RowsPartial {
                rows,
                csrf: op.csrf().to_string(),
            };
            super::render_rows(&partial, &summary)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list boot assets");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// An images error as a message beside the add form; `None` when it is no input problem.
fn add_failed(e: ImagesError) -> Option<FieldErrors> {
    match e {
        ImagesError::Invalid(m) => Some(FieldErrors::one("source", m)),
        e @ (ImagesError::Exists { .. }
        | ImagesError::Unreachable { .. }
        | ImagesError::Status { .. }
        | ImagesError::Download { .. }) => Some(FieldErrors::one("source", e.to_string())),
        other => {
            tracing::error!(error = %other, "cannot start a boot asset download");
            None
        }
    }
}

pub async fn ui_images_add_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<AddForm>,
) -> Response {
    let bases = crate::ops::images::Bases {
        factory_url: &state.config.sources.factory_url,
        release_url: &state.config.sources.release_url,
    };
    let errors = match parse_image_input(&form.input(), &bases, LocalFiles::Refused) {
        Ok(req) => {
            let (version, arch) = (req.version.clone(), req.arch);
            match state.images.start_add(req).await {
                Ok(Started::Started) => {
                    tracing::info!(%version, arch = arch.as_str(), by = %op.name(),
                        "boot assets download started");
                    return Redirect::to("/ui/images?flash=started").into_response();
                }
                Ok(Started::AlreadyDownloading(_)) => {
                    return Redirect::to("/ui/images?flash=downloading").into_response()
                }
                Err(e) => match add_failed(e) {
                    Some(errors) => errors,
                    None => {
                        return error_page(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the download could not be started; the log says why",
                        )
                    }
                },
            }
        }
        Err(e @ OpsError::Invalid(_)) => FieldErrors::from_ops(&e),
        Err(e) => return super::ops_error_page(&e),
    };
    let extras = Extras {
        add: Some(form),
        errors,
        ..Default::default()
    };
    images_page(&state, &op, extras).await
}

#[derive(Debug, Default, Deserialize)]
pub struct AssetForm {
    #[serde(default)]
    version: String,
    #[serde(default)]
    arch: String,
}

pub async fn ui_images_remove_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<AssetForm>,
) -> Response {
    let arch = match assets::parse_arch(&form.arch) {
        Ok(a) => a,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if state.images.progress(&form.version, arch).is_some() {
        return error_page(
            StatusCode::CONFLICT,
            "these assets are being downloaded: remove them when the download ends",
        );
    }
    match state.images.remove(&form.version, arch).await {
        Ok(()) => {
            tracing::info!(version = %form.version, arch = arch.as_str(), by = %op.name(),
                "boot assets removed");
            Redirect::to("/ui/images?flash=removed").into_response()
        }
        Err(e @ (ImagesError::NotRecorded { .. } | ImagesError::Invalid(_))) => {
            error_page(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot remove boot assets");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the assets could not be removed; the log says why",
            )
        }
    }
}

pub async fn ui_images_verify_post(State(state): State<AppState>, Extension(op): Op) -> Response {
    let report = match state.images.verify_all().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot verify boot assets");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "verification could not run; the log says why",
            );
        }
    };
    tracing::info!(ready = report.ready.len(), broken = report.broken.len(), by = %op.name(),
        "boot assets verified");
    let extras = Extras {
        flash: Some(format!(
            "Verified {} ({} match their SHA-256, {} out of service).",
            mib(report.bytes),
            report.ready.len(),
            report.broken.len()
        )),
        verify: Some(report.broken),
        ..Default::default()
    };
    images_page(&state, &op, extras).await
}

pub async fn ui_images_schematic_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<SchematicForm>,
) -> Response {
    let input = SchematicInput {
        extensions: vec![form.extensions.clone()],
        kernel_args: vec![form.kernel_args.clone()],
    };
    let result: Result<(Customization, String), FieldErrors> =
        match parse_schematic_input(&input, &state.config.boot.kernel_additions()) {
            Err(e) => Err(FieldErrors::from_ops(&e)),
            Ok(c) => match assets::create_schematic(&state.config.sources.factory_url, &c).await {
                Ok(id) => Ok((c, id)),
                Err(e) => Err(FieldErrors::one(
                    "schematic_factory",
                    format!("the Image Factory did not make it: {e}"),
                )),
            },
        };
    let extras = match result {
        Ok((c, id)) => {
            tracing::info!(schematic = %id, extensions = c.extensions.len(), by = %op.name(),
                "schematic created");
            let version = state
                .db
                .get_cluster(None)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.talos_version)
                .unwrap_or_else(|| state.config.boot.talos_version.clone());
            Extras {
                add: Some(AddForm {
                    source: "factory".into(),
                    schematic: id.clone(),
                    version,
                    arch: "amd64".into(),
                    ..Default::default()
                }),
                schematic: form,
                flash: Some(format!(
                    "Schematic {id} created: it is filled in below, add its assets."
                )),
                ..Default::default()
            }
        }
        Err(errors) => Extras {
            schematic: form,
            errors,
            ..Default::default()
        },
    };
    images_page(&state, &op, extras).await
}
