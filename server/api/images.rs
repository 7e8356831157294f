//! `/images`: Talos boot assets per version and arch, their state and download progress;
//! adding (in the background), removing, verifying, and creating Image Factory schematics.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiResult, Failure};
use crate::assets::{self, Asset, AssetSource, AssetState, ImagesError, Progress, Started};
use crate::auth::Operator;
use crate::ops::images::{
    parse_image_input, parse_schematic_input, Bases, ImageInput, LocalFiles, SchematicInput,
};
use crate::state::AppState;
use crate::talos::Arch;

/// Where progress shows.
const WATCH: &str = "/api/v1/images";

impl From<ImagesError> for Failure {
    fn from(e: ImagesError) -> Failure {
        match e {
            ImagesError::Invalid(message) => {
                Failure::new(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
            ImagesError::Exists { .. } => Failure::new(StatusCode::CONFLICT, e.to_string()),
            ImagesError::NotRecorded { .. } => Failure::new(StatusCode::NOT_FOUND, e.to_string()),
            ImagesError::Download { .. } | ImagesError::Status { .. } => {
                Failure::new(StatusCode::BAD_GATEWAY, e.to_string())
            }
            ImagesError::Db(e) => e.into(),
            other => Failure::internal("boot assets", &other),
        }
    }
}

/// One file of an asset.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileView {
    /// URL downloaded or path copied from
    pub origin: String,
    /// Known once complete
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// A boot asset: the kernel and initramfs of one Talos version and arch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageView {
    pub version: String,
    /// amd64 or arm64
    pub arch: String,
    /// factory, release, local or found (on disk without a record)
    pub source: String,
    /// The Image Factory schematic, for source factory
    pub schematic: Option<String>,
    pub kernel: FileView,
    pub initramfs: FileView,
    /// Extra kernel arguments the schematic bakes in (put on the boot command line)
    pub kernel_args: Vec<String>,
    /// downloading, ready or broken (out of service)
    pub state: String,
    /// Why it is out of service, when broken
    pub reason: Option<String>,
    /// How far the download got, while this appliance downloads it
    pub progress: Option<Progress>,
    /// Milliseconds since the Unix epoch
    pub updated_at: i64,
}

pub fn view(a: Asset, progress: Option<Progress>) -> ImageView {
    let file = |f: crate::assets::AssetFile| FileView {
        origin: f.origin,
        size: f.digest.as_ref().map(|d| d.size),
        sha256: f.digest.map(|d| d.sha256),
    };
    let (source, schematic) = match a.source {
        AssetSource::Factory { schematic } => ("factory", Some(schematic)),
        AssetSource::Release => ("release", None),
        AssetSource::Local => ("local", None),
        AssetSource::Found => ("found", None),
    };
    ImageView {
        version: a.version,
        arch: a.arch.as_str().into(),
        source: source.into(),
        schematic,
        kernel: file(a.kernel),
        initramfs: file(a.initramfs),
        kernel_args: a.kernel_args,
        state: a.state.to_string(),
        reason: match a.state {
            AssetState::Broken(r) => Some(r),
            _ => None,
        },
        progress,
        updated_at: a.updated_at,
    }
}

/// Every boot asset with its state, and the progress of downloads in flight.
#[utoipa::path(
    get,
    path = "/images",
    tag = "images",
    responses(
        (status = 200, description = "Assets by version then arch", body = Vec<ImageView>),
        (status = 401, description = "No operator", body = ApiError)
    )
)]
pub async fn images_list_get(State(state): State<AppState>) -> ApiResult<Json<Vec<ImageView>>> {
    let assets = state.images.list().await?;
    Ok(Json(
        assets
            .into_iter()
            .map(|a| {
                let p = state.images.progress_of(&a);
                view(a, p)
            })
            .collect(),
    ))
}

/// What an add started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AddStarted {
    pub version: String,
    pub arch: String,
    /// A download for this asset was already running: no second one was started
    pub already_downloading: bool,
    /// Its progress so far, when already downloading
    pub progress: Option<Progress>,
    /// Where state and progress show
    pub watch: String,
}

/// The API's sources: the appliance's configured factory and release URLs.
pub fn bases(state: &AppState) -> Bases<'_> {
    Bases {
        factory_url: &state.config.sources.factory_url,
        release_url: &state.config.sources.release_url,
    }
}

/// Fetches an asset in the background (verified, then in service); watch `GET /images`.
#[utoipa::path(
    post,
    path = "/images",
    tag = "images",
    request_body = ImageInput,
    responses(
        (status = 202, description = "Downloading (or already downloading)", body = AddStarted),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 409, description = "Another source is in service for this version and arch", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Refused input, with errors per field", body = ApiError)
    )
)]
pub async fn images_add_post(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiJson(input): ApiJson<ImageInput>,
) -> ApiResult<(StatusCode, Json<AddStarted>)> {
    let req = parse_image_input(&input, &bases(&state), LocalFiles::Refused)?;
    let (version, arch) = (req.version.clone(), req.arch);
    let started = state.images.start_add(req).await?;
    let (already, progress) = match started {
        Started::Started => {
            tracing::info!(%version, arch = arch.as_str(), by = %op.name(), "api: boot assets download started");
            (false, None)
        }
        Started::AlreadyDownloading(p) => (true, Some(p)),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(AddStarted {
            version,
            arch: arch.as_str().into(),
            already_downloading: already,
            progress,
            watch: WATCH.into(),
        }),
    ))
}

fn path_asset(version: &str, arch: &str) -> ApiResult<(String, Arch)> {
    assets::validate_version(version)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let arch = assets::parse_arch(arch)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok((version.to_string(), arch))
}

/// Forgets an asset and deletes its files.
#[utoipa::path(
    delete,
    path = "/images/{version}/{arch}",
    tag = "images",
    params(
        ("version" = String, Path, description = "Talos version, e.g. v1.11.6"),
        ("arch" = String, Path, description = "amd64 or arm64")
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a version or arch", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 404, description = "No such asset", body = ApiError),
        (status = 409, description = "Being downloaded", body = ApiError)
    )
)]
pub async fn image_remove_delete(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path((version, arch)): Path<(String, String)>,
) -> ApiResult<axum::http::StatusCode> {
    let (version, arch) = path_asset(&version, &arch)?;
    if state.images.progress(&version, arch).is_some() {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            format!(
                "Talos {version} {} is being downloaded: remove it when the download ends",
                arch.as_str()
            ),
        ));
    }
    state.images.remove(&version, arch).await?;
    tracing::info!(%version, arch = arch.as_str(), by = %op.name(), "api: boot assets removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Nothing to choose yet: every asset is verified.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyInput {}

/// An asset taken out of service by a verification.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Broken {
    /// "<version> <arch>"
    pub asset: String,
    pub reason: String,
}

/// What a verification found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// "<version> <arch>" of every asset that matches its record
    pub ready: Vec<String>,
    pub broken: Vec<Broken>,
    /// Bytes hashed
    pub bytes: u64,
}

/// Hashes every asset again: a mismatch takes it out of service, a match brings it back.
#[utoipa::path(
    post,
    path = "/images/verify",
    tag = "images",
    request_body = VerifyInput,
    responses(
        (status = 200, description = "What matched and what did not", body = VerifyReport),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Unknown field", body = ApiError)
    )
)]
pub async fn images_verify_post(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiJson(_input): ApiJson<VerifyInput>,
) -> ApiResult<Json<VerifyReport>> {
    let report = state.images.verify_all().await?;
    tracing::info!(ready = report.ready.len(), broken = report.broken.len(), by = %op.name(),
        "api: boot assets verified");
    Ok(Json(VerifyReport {
        ready: report.ready,
        broken: report
            .broken
            .into_iter()
            .map(|(asset, reason)| Broken { asset, reason })
            .collect(),
        bytes: report.bytes,
    }))
}

/// A schematic the Image Factory made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SchematicCreated {
    /// Its ID: add its assets with `POST /images` and `schematic`
    pub id: String,
}

/// Creates an Image Factory schematic from system extensions and kernel arguments.
#[utoipa::path(
    post,
    path = "/images/schematics",
    tag = "images",
    request_body = SchematicInput,
    responses(
        (status = 201, description = "The schematic's ID (the same for the same content)", body = SchematicCreated),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Refused input, with errors per field", body = ApiError),
        (status = 502, description = "The Image Factory did not answer as expected", body = ApiError)
    )
)]
pub async fn images_schematic_post(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiJson(input): ApiJson<SchematicInput>,
) -> ApiResult<(StatusCode, Json<SchematicCreated>)> {
    let c = parse_schematic_input(&input, &state.config.boot.kernel_additions())?;
    let id = assets::create_schematic(&state.config.sources.factory_url, &c).await?;
    tracing::info!(schematic = %id, by = %op.name(), "api: schematic created");
    Ok((StatusCode::CREATED, Json(SchematicCreated { id })))
}
