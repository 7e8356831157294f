//! The operators' web UI: server-rendered askama pages (templates/ui/), plain forms first, a
//! little JavaScript (web/app.js) for live updates.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

pub fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><title>{status}</title><p>{}</p>",
            askama_escape(message)
        )),
    )
        .into_response()
}

fn askama_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

use axum::Router;

use crate::app::AppState;

/// Pages behind the login.
pub fn router() -> Router<AppState> {
    Router::new()
}

/// The login page and static assets.
pub fn public_router() -> Router<AppState> {
    Router::new()
}
