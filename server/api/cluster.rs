//! `/cluster`: settings, initialisation, patches with previews, bootstrap status, credential
//! downloads, rebuild.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiQuery, ApiResult, Failure};
use crate::auth::Operator;
use crate::model::{Cluster, PatchRecord};
use crate::ops::cluster::{self as cops, BootstrapStatus, ClusterInput};
use crate::ops::patches::{self, PatchInput, PatchPreview};
use crate::state::AppState;

/// The cluster's settings (never its secrets).
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The cluster's settings", body = Cluster),
        (status = 401, description = "No operator", body = ApiError),
        (status = 404, description = "No cluster", body = ApiError)
    )
)]
pub async fn cluster_get(State(state): State<AppState>) -> ApiResult<Json<Cluster>> {
    Ok(Json(cops::first_cluster(&state.db).await?))
}

/// Changes the cluster's settings; refused if any machine's config would become invalid.
#[utoipa::path(
    patch,
    path = "/cluster",
    tag = "cluster",
    request_body = ClusterInput,
    responses(
        (status = 200, description = "Saved", body = Cluster),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 409, description = "The cluster is not initialised", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Refused input, with errors per field", body = ApiError)
    )
)]
pub async fn cluster_update_patch(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiJson(input): ApiJson<ClusterInput>,
) -> ApiResult<Json<Cluster>> {
    let c = cops::update_cluster(&state.db, &input, state.recorder.now_ms()).await?;
    state.changed();
    tracing::info!(cluster = %c.name, by = %op.name(), "api: cluster settings saved");
    Ok(Json(c))
}

/// Makes the cluster's secrets bundle (or adopts one) and stores its settings.
#[utoipa::path(
    post,
    path = "/cluster/init",
    tag = "cluster",
    request_body = ClusterInput,
    responses(
        (status = 201, description = "Initialised", body = Cluster),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 409, description = "Already initialised", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Refused input, with errors per field", body = ApiError)
    )
)]
pub async fn cluster_init_post(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiJson(input): ApiJson<ClusterInput>,
) -> ApiResult<(StatusCode, Json<Cluster>)> {
    let c = cops::init_cluster(&state.db, &input, state.recorder.now_ms()).await?;
    state.changed();
    tracing::info!(cluster = %c.name, imported = input.import_secrets.is_some(), by = %op.name(), "api: cluster initialised");
    Ok((StatusCode::CREATED, Json(c)))
}

/// The cluster's patches in the order they apply.
#[utoipa::path(
    get,
    path = "/cluster/patches",
    tag = "cluster",
    responses(
        (status = 200, description = "Patches in the order they apply", body = Vec<PatchRecord>),
        (status = 401, description = "No operator", body = ApiError),
        (status = 404, description = "No cluster", body = ApiError)
    )
)]
pub async fn cluster_patches_get(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<PatchRecord>>> {
    Ok(Json(patches::list_patches(&state.db).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DryRunQuery {
    /// Only show what the patch would change; store nothing
    pub dry_run: Option<bool>,
}

/// What a patch does (and did, unless it was a dry run).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PatchOutcome {
    /// The patch was stored
    pub saved: bool,
    /// Per affected machine: a unified diff of its config (secrets hidden) without and with
    /// the patch
    pub previews: Vec<PatchPreview>,
}

/// Adds a patch, or replaces the one of the same scope and name; `dry_run=true` only previews
/// its effect. Refused if any affected machine's config would become invalid.
#[utoipa::path(
    put,
    path = "/cluster/patches",
    tag = "cluster",
    params(DryRunQuery),
    request_body = PatchInput,
    responses(
        (status = 200, description = "Saved (or previewed)", body = PatchOutcome),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 409, description = "The cluster is not initialised", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Refused input (a broken config is reported on body)", body = ApiError)
    )
)]
pub async fn cluster_patch_put(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiQuery(q): ApiQuery<DryRunQuery>,
    ApiJson(input): ApiJson<PatchInput>,
) -> ApiResult<Json<PatchOutcome>> {
    let previews = patches::preview_patch(&state.db, &input).await?;
    if q.dry_run.unwrap_or(false) {
        return Ok(Json(PatchOutcome {
            saved: false,
            previews,
        }));
    }
    let saved = patches::save_patch(&state.db, &input, state.recorder.now_ms()).await?;
    state.changed();
    tracing::info!(patch = %saved.name, scope = %saved.scope, by = %op.name(), "api: patch saved");
    Ok(Json(PatchOutcome {
        saved: true,
        previews,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PatchKey {
    /// cluster, controlplane, worker or machine
    pub scope: String,
    /// The machine's MAC, for scope machine
    pub mac: Option<String>,
    /// The patch's name
    pub name: String,
}

/// Removes a patch.
#[utoipa::path(
    delete,
    path = "/cluster/patches",
    tag = "cluster",
    params(PatchKey),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Missing scope or name", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 404, description = "No such patch", body = ApiError),
        (status = 422, description = "Bad scope or MAC", body = ApiError)
    )
)]
pub async fn cluster_patch_delete(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiQuery(key): ApiQuery<PatchKey>,
) -> ApiResult<StatusCode> {
    let input = PatchInput {
        scope: key.scope,
        mac: key.mac.filter(|m| !m.trim().is_empty()),
        name: key.name,
        body: String::new(),
    };
    if !patches::patch_exists(&state.db, &input).await? {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("no patch named '{}' at that scope", input.name.trim()),
        ));
    }
    patches::remove_patch(&state.db, &input, state.recorder.now_ms()).await?;
    state.changed();
    tracing::info!(patch = %input.name, by = %op.name(), "api: patch removed");
    Ok(StatusCode::NO_CONTENT)
}

/// The bootstrap status: generation, when etcd was bootstrapped, every generation's decision.
#[utoipa::path(
    get,
    path = "/cluster/bootstrap",
    tag = "cluster",
    responses(
        (status = 200, description = "Bootstrap status and history", body = BootstrapStatus),
        (status = 401, description = "No operator", body = ApiError),
        (status = 404, description = "No cluster", body = ApiError)
    )
)]
pub async fn cluster_bootstrap_get(
    State(state): State<AppState>,
) -> ApiResult<Json<BootstrapStatus>> {
    Ok(Json(cops::bootstrap_status(&state.db).await?))
}

fn download(name: &str, text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/yaml".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        text,
    )
        .into_response()
}

/// A talosconfig for the cluster's control planes (a new client certificate each time).
#[utoipa::path(
    get,
    path = "/cluster/talosconfig",
    tag = "cluster",
    responses(
        (status = 200, description = "talosconfig (YAML)", content_type = "application/yaml", body = String),
        (status = 401, description = "No operator", body = ApiError),
        (status = 404, description = "No cluster", body = ApiError),
        (status = 409, description = "The cluster is not initialised", body = ApiError)
    )
)]
pub async fn cluster_talosconfig_get(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> ApiResult<Response> {
    let text = cops::talosconfig(&state.db, state.recorder.now_ms()).await?;
    tracing::info!(by = %op.name(), "api: talosconfig downloaded");
    Ok(download("talosconfig", text))
}

/// An admin kubeconfig for the cluster's endpoint (a new client certificate each time).
#[utoipa::path(
    get,
    path = "/cluster/kubeconfig",
    tag = "cluster",
    responses(
        (status = 200, description = "kubeconfig (YAML)", content_type = "application/yaml", body = String),
        (status = 401, description = "No operator", body = ApiError),
        (status = 404, description = "No cluster", body = ApiError),
        (status = 409, description = "The cluster is not initialised", body = ApiError)
    )
)]
pub async fn cluster_kubeconfig_get(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> ApiResult<Response> {
    let text = cops::kubeconfig(&state.db, state.recorder.now_ms()).await?;
    tracing::info!(by = %op.name(), "api: kubeconfig downloaded");
    Ok(download("kubeconfig", text))
}

/// Confirms a rebuild by naming the cluster.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildInput {
    /// The cluster's name
    pub confirm: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rebuilding {
    /// Machines that reinstall at their next network boot
    pub reinstalling: usize,
}

/// Rebuilds the whole cluster: every machine reinstalls at its next network boot and etcd is
/// bootstrapped again once the control planes are back. Destroys the cluster's data.
#[utoipa::path(
    post,
    path = "/cluster/rebuild",
    tag = "cluster",
    request_body = RebuildInput,
    responses(
        (status = 202, description = "Every machine reinstalls at its next network boot", body = Rebuilding),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 404, description = "No cluster", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "confirm is not the cluster's name", body = ApiError)
    )
)]
pub async fn cluster_rebuild_post(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiJson(body): ApiJson<RebuildInput>,
) -> ApiResult<(StatusCode, Json<Rebuilding>)> {
    let count = cops::rebuild_cluster(&state.db, &body.confirm, state.recorder.now_ms()).await?;
    state.changed();
    tracing::warn!(machines = count, by = %op.name(), "api: cluster rebuild requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(Rebuilding {
            reinstalling: count,
        }),
    ))
}
