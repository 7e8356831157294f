//! The cluster page: settings, patches, bootstrap status and history, downloads, rebuild.

use axum::extract::State;
use axum::response::Response;

use super::{error_page, Op};
use crate::app::AppState;
use axum::Extension;

pub async fn ui_cluster_get(State(_state): State<AppState>, Extension(_op): Op) -> Response {
    error_page(
        axum::http::StatusCode::NOT_FOUND,
        "the cluster page is being built",
    )
}
