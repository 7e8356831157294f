//! `/machines`: the inventory, one machine, its events, boot log and rendered config.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{path_mac, ApiError, ApiJson, ApiQuery, ApiResult, Failure};
use crate::auth::Operator;
use crate::model::{BootLogLine, Event, Lifecycle, Machine, Role};
use crate::ops::input::MachineInput;
use crate::ops::lan::Lan;
use crate::ops::{self, configs, machines};
use crate::state::AppState;

/// A machine with what the list shows beside it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MachineView {
    #[serde(flatten)]
    pub machine: Machine,
    /// NIC vendor from the MAC's OUI, when known
    pub vendor: Option<String>,
    /// The machine's newest event
    pub last_event: Option<Event>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only machines in this lifecycle state
    #[param(value_type = Option<Lifecycle>)]
    pub state: Option<String>,
    /// Only machines with this role
    #[param(value_type = Option<Role>)]
    pub role: Option<String>,
}

/// The inventory, optionally filtered by state and role.
#[utoipa::path(
    get,
    path = "/machines",
    tag = "machines",
    params(ListQuery),
    responses(
        (status = 200, description = "Every machine that matches", body = Vec<MachineView>),
        (status = 400, description = "Unknown state or role", body = ApiError),
        (status = 401, description = "No operator", body = ApiError)
    )
)]
pub async fn machines_list_get(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<MachineView>>> {
    let bad = |e: String| Failure::new(StatusCode::BAD_REQUEST, e);
    let want_state = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<Lifecycle>)
        .transpose()
        .map_err(|e| bad(format!("state: {e}")))?;
    let want_role = q
        .role
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::parse::<Role>)
        .transpose()
        .map_err(|e| bad(format!("role: {e}")))?;
    let machines = state.db.list_machines().await?;
    let mut latest = state.db.latest_events().await?;
    Ok(Json(
        machines
            .into_iter()
            .filter(|m| want_state.is_none_or(|s| m.state == s))
            .filter(|m| want_role.is_none_or(|r| m.role == r))
            .map(|m| MachineView {
                vendor: crate::net::oui::vendor(m.mac),
                last_event: latest.remove(&m.mac),
                machine: m,
            })
            .collect(),
    ))
}

/// A new machine: its MAC and the fields to assign (the operator's machine input).
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct MachineCreate {
    /// The machine's MAC address
    pub mac: String,
    #[serde(flatten)]
    pub fields: MachineInput,
}

/// `mac` beside the input's own fields, whose unknown names stay refused.
impl TryFrom<serde_json::Map<String, serde_json::Value>> for MachineCreate {
    type Error = String;

    fn try_from(mut body: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let mac = match body.remove("mac") {
            Some(serde_json::Value::String(mac)) => mac,
            Some(other) => return Err(format!("mac: expected a string, got {other}")),
            None => return Err("missing field `mac`".into()),
        };
        let fields = MachineInput::deserialize(serde_json::Value::Object(body))
            .map_err(|e| e.to_string())?;
        Ok(MachineCreate { mac, fields })
    }
}

/// Adds a machine by MAC (before it ever network-boots).
#[utoipa::path(
    post,
    path = "/machines",
    tag = "machines",
    request_body = MachineCreate,
    responses(
        (status = 201, description = "Added", body = Machine),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Refused input, with errors per field", body = ApiError)
    )
)]
pub async fn machines_create_post(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiJson(body): ApiJson<MachineCreate>,
) -> ApiResult<(StatusCode, Json<Machine>)> {
    let mac = body
        .mac
        .trim()
        .parse()
        .map_err(|e: crate::model::MacError| ops::OpsError::field("mac", e.to_string()))?;
    let lan = Lan::from_config(&state.config);
    let now = state.recorder.now_ms();
    let saved =
        machines::save_machine(&state.db, Some(&lan), mac, &body.fields, true, false, now).await?;
    state.changed();
    tracing::info!(%mac, role = %saved.machine.role, by = %op.name(), "api: machine added");
    Ok((StatusCode::CREATED, Json(saved.machine)))
}

/// One machine.
#[utoipa::path(
    get,
    path = "/machines/{mac}",
    tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses(
        (status = 200, description = "The machine", body = MachineView),
        (status = 400, description = "Not a MAC address", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 404, description = "Not in the inventory", body = ApiError)
    )
)]
pub async fn machine_get(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> ApiResult<Json<MachineView>> {
    let mac = path_mac(&mac)?;
    let machine = state
        .db
        .get_machine(mac)
        .await?
        .ok_or(ops::OpsError::NotFound(mac))?;
    let last_event = state.db.events(mac, 1).await?.pop();
    Ok(Json(MachineView {
        vendor: crate::net::oui::vendor(mac),
        last_event,
        machine,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConfirmQuery {
    /// Go ahead with a consequential change (a role change on a control plane of a
    /// bootstrapped cluster) after a 409 explained it
    pub confirm: Option<bool>,
}

/// What a change did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SavedMachine {
    pub machine: Machine,
    /// The machine reinstalls at its next network boot
    pub reinstall: bool,
}

/// Changes a machine's fields; absent fields stay, empty strings clear.
#[utoipa::path(
    patch,
    path = "/machines/{mac}",
    tag = "machines",
    params(("mac" = String, Path, description = "MAC address"), ConfirmQuery),
    request_body = MachineInput,
    responses(
        (status = 200, description = "Saved", body = SavedMachine),
        (status = 400, description = "Not a MAC address, or not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 404, description = "Not in the inventory", body = ApiError),
        (status = 409, description = "Needs confirmation: repeat with ?confirm=true", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Refused input, with errors per field", body = ApiError)
    )
)]
pub async fn machine_update_patch(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(mac): Path<String>,
    ApiQuery(q): ApiQuery<ConfirmQuery>,
    ApiJson(input): ApiJson<MachineInput>,
) -> ApiResult<Json<SavedMachine>> {
    let mac = path_mac(&mac)?;
    let lan = Lan::from_config(&state.config);
    let now = state.recorder.now_ms();
    let confirm = q.confirm.unwrap_or(false);
    let saved =
        machines::save_machine(&state.db, Some(&lan), mac, &input, false, confirm, now).await?;
    state.changed();
    tracing::info!(%mac, role = %saved.machine.role, by = %op.name(), "api: machine saved");
    Ok(Json(SavedMachine {
        machine: saved.machine,
        reinstall: saved.reinstall,
    }))
}

/// Removes a machine from the inventory (its event history is kept).
#[utoipa::path(
    delete,
    path = "/machines/{mac}",
    tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not a MAC address", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 404, description = "Not in the inventory", body = ApiError)
    )
)]
pub async fn machine_remove_delete(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(mac): Path<String>,
) -> ApiResult<StatusCode> {
    let mac = path_mac(&mac)?;
    machines::remove_machine(&state.db, mac, state.recorder.now_ms()).await?;
    state.changed();
    tracing::info!(%mac, by = %op.name(), "api: machine removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Reinstalls an assigned machine at its next network boot (a control plane's stale etcd
/// member is removed through a healthy control plane).
#[utoipa::path(
    post,
    path = "/machines/{mac}/reinstall",
    tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses(
        (status = 200, description = "Marked for reinstall", body = Machine),
        (status = 400, description = "Not a MAC address", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 404, description = "Not in the inventory", body = ApiError),
        (status = 409, description = "The machine has no role", body = ApiError)
    )
)]
pub async fn machine_reinstall_post(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(mac): Path<String>,
) -> ApiResult<Json<Machine>> {
    let mac = path_mac(&mac)?;
    let m = machines::reinstall_machine(&state.db, mac, state.recorder.now_ms()).await?;
    state.changed();
    tracing::info!(%mac, by = %op.name(), "api: reinstall requested");
    Ok(Json(m))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many of the newest entries (default 200, at most 10000)
    pub limit: Option<i64>,
}

impl LimitQuery {
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(200).clamp(0, 10_000)
    }
}

/// A machine's event log, oldest first: from its first DHCP packet to ready.
#[utoipa::path(
    get,
    path = "/machines/{mac}/events",
    tag = "machines",
    params(("mac" = String, Path, description = "MAC address"), LimitQuery),
    responses(
        (status = 200, description = "Events, oldest first", body = Vec<Event>),
        (status = 400, description = "Not a MAC address", body = ApiError),
        (status = 401, description = "No operator", body = ApiError)
    )
)]
pub async fn machine_events_get(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    let mac = path_mac(&mac)?;
    Ok(Json(state.db.events(mac, q.limit()).await?))
}

/// A machine's boot log: the kernel messages it streamed, oldest first.
#[utoipa::path(
    get,
    path = "/machines/{mac}/log",
    tag = "machines",
    params(("mac" = String, Path, description = "MAC address"), LimitQuery),
    responses(
        (status = 200, description = "Kernel log lines, oldest first", body = Vec<BootLogLine>),
        (status = 400, description = "Not a MAC address", body = ApiError),
        (status = 401, description = "No operator", body = ApiError)
    )
)]
pub async fn machine_log_get(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> ApiResult<Json<Vec<BootLogLine>>> {
    let mac = path_mac(&mac)?;
    Ok(Json(state.db.boot_log(mac, q.limit()).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevealQuery {
    /// Include the secrets (keys, tokens); they are hidden otherwise
    pub reveal: Option<bool>,
}

/// A machine's rendered config.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RenderedConfig {
    #[schema(value_type = String)]
    pub mac: crate::model::Mac,
    /// Whether secrets are included
    pub revealed: bool,
    /// The Talos machine config (YAML), secrets shown as [hidden] unless revealed
    pub config: String,
}

/// The config the machine is served: secrets hidden unless `reveal=true`.
#[utoipa::path(
    get,
    path = "/machines/{mac}/config",
    tag = "machines",
    params(("mac" = String, Path, description = "MAC address"), RevealQuery),
    responses(
        (status = 200, description = "The rendered config", body = RenderedConfig),
        (status = 400, description = "Not a MAC address", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 404, description = "Not in the inventory", body = ApiError),
        (status = 409, description = "No role yet, or the cluster is not initialised", body = ApiError)
    )
)]
pub async fn machine_config_get(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(mac): Path<String>,
    ApiQuery(q): ApiQuery<RevealQuery>,
) -> ApiResult<Json<RenderedConfig>> {
    let mac = path_mac(&mac)?;
    let reveal = q.reveal.unwrap_or(false);
    let config = configs::rendered_config(&state.db, mac, reveal).await?;
    if reveal {
        tracing::info!(%mac, by = %op.name(), "api: machine config revealed with secrets");
    }
    Ok(Json(RenderedConfig {
        mac,
        revealed: reveal,
        config,
    }))
}
