//! The double's HTTP control API.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};

use super::etcd::{EtcdChange, MemberRecord};
use super::{DoubleError, DoubleSnapshot, EmbeddedError, PhaseChange, TalosDouble};

/// The HTTP control API of a double (JSON):
///
/// - `GET /state` → [`DoubleSnapshot`] (same as the state file)
/// - `POST /etcd` with [`EtcdChange`]: `{"state":"empty"}` (wipe), `{"state":"member"}`
///   (join the shared cluster), `{"state":"bootstrapped"}`
/// - `PUT /members` with a list of [`MemberRecord`]: replaces the shared member list
/// - `POST /phase` with [`PhaseChange`]: `{"phase":"booting"}`,
///   `{"phase":"booting","ready_after_secs":2}`, `{"phase":"ready"}`
/// - `PUT /embedded-error` with [`EmbeddedError`]; `DELETE /embedded-error`
/// - `DELETE /calls`: forget recorded calls and TLS rejections
///
/// Changes answer `204`; a change that does not fit answers `409` with `{"error": "..."}`.
pub fn control_router(double: TalosDouble) -> Router {
    Router::new()
        .route("/state", get(control_state_get))
        .route("/etcd", post(control_etcd_post))
        .route("/members", put(control_members_put))
        .route("/phase", post(control_phase_post))
        .route(
            "/embedded-error",
            put(control_embedded_error_put).delete(control_embedded_error_delete),
        )
        .route("/calls", delete(control_calls_delete))
        .with_state(double)
}

pub(super) type ControlResult = Result<StatusCode, (StatusCode, Json<serde_json::Value>)>;

fn control_error(e: DoubleError) -> (StatusCode, Json<serde_json::Value>) {
    let status = match e {
        DoubleError::Conflict(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() })))
}

pub(super) async fn control_state_get(State(d): State<TalosDouble>) -> Json<DoubleSnapshot> {
    Json(d.snapshot())
}

pub(super) async fn control_etcd_post(
    State(d): State<TalosDouble>,
    Json(change): Json<EtcdChange>,
) -> ControlResult {
    d.set_etcd(change).map_err(control_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn control_members_put(
    State(d): State<TalosDouble>,
    Json(members): Json<Vec<MemberRecord>>,
) -> ControlResult {
    d.set_members(members).map_err(control_error)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn control_phase_post(
    State(d): State<TalosDouble>,
    Json(change): Json<PhaseChange>,
) -> StatusCode {
    d.set_phase(&change);
    StatusCode::NO_CONTENT
}

pub(super) async fn control_embedded_error_put(
    State(d): State<TalosDouble>,
    Json(error): Json<EmbeddedError>,
) -> StatusCode {
    d.set_embedded_error(Some(error));
    StatusCode::NO_CONTENT
}

pub(super) async fn control_embedded_error_delete(State(d): State<TalosDouble>) -> StatusCode {
    d.set_embedded_error(None);
    StatusCode::NO_CONTENT
}

pub(super) async fn control_calls_delete(State(d): State<TalosDouble>) -> StatusCode {
    d.clear_calls();
    StatusCode::NO_CONTENT
}
