//! The JSON API under `/api/v1`: the operations of the web UI for automation, documented by an
//! OpenAPI document generated from this code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;

use crate::app::AppState;

/// The body of every API error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// What went wrong, for people.
    pub error: String,
    /// Problems with individual input fields, when the input was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<crate::ops::FieldError>,
}

pub fn error_response(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ApiError {
            error: message.to_string(),
            fields: Vec::new(),
        }),
    )
        .into_response()
}

/// Routes under `/api/v1`, all behind `auth::require_operator`.
pub fn router() -> Router<AppState> {
    Router::new()
}

/// API routes that need no operator (none yet).
pub fn public_router() -> Router<AppState> {
    Router::new()
}
