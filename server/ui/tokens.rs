//! API tokens: create (shown once), list, revoke.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::{error_page, render, when, Chrome, FieldErrors, Op};
use crate::auth::Operator;
use crate::state::AppState;
use axum::Extension;

pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub created: String,
    pub by: String,
    pub last_used: String,
    pub revoked: bool,
}

#[derive(Template)]
#[template(path = "ui/tokens.html")]
struct TokensPage {
    nav: &'static str,
    user: String,
    csrf: String,
    flash: Option<String>,
    tokens: Vec<TokenView>,
    new_token: Option<String>,
    name: String,
    errors: FieldErrors,
}

async fn page(
    state: &AppState,
    op: &Operator,
    new_token: Option<String>,
    name: String,
    errors: FieldErrors,
    flash: Option<String>,
) -> Response {
    let tokens = match state.db.list_tokens().await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot list tokens");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again",
            );
        }
    };
    let chrome = Chrome::of(op);
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut r = render(&TokensPage {
        nav: "tokens",
        user: chrome.user,
        csrf: chrome.csrf,
        flash,
        tokens: tokens
            .into_iter()
            .map(|t| TokenView {
                id: t.id,
                name: t.name,
                created: when(Some(t.created_at)),
                by: t.created_by.unwrap_or_else(|| "—".into()),
                last_used: when(t.last_used_at),
                revoked: t.revoked_at.is_some(),
            })
            .collect(),
        new_token,
        name,
        errors,
    });
    *r.status_mut() = status;
    r
}

#[derive(Debug, Default, Deserialize)]
pub struct FlashQuery {
    #[serde(default)]
    flash: Option<String>,
}

pub async fn ui_tokens_get(
    State(state): State<AppState>,
    Extension(op): Op,
    axum::extract::Query(q): axum::extract::Query<FlashQuery>,
) -> Response {
    let flash = super::flash_message(q.flash.as_deref());
    page(
        &state,
        &op,
        None,
        String::new(),
        FieldErrors::default(),
        flash,
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    name: String,
}

/// Checks a token name: 1 to 64 printable characters.
pub fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        Err("a token needs a name of 1 to 64 printable characters".into())
    } else {
        Ok(())
    }
}

pub async fn ui_tokens_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<TokenForm>,
) -> Response {
    let name = form.name.trim().to_string();
    if let Err(e) = check_token_name(&name) {
        return page(&state, &op, None, name, FieldErrors::one("name", e), None).await;
    }
    let now = state.recorder.now_ms();
    match crate::auth::create_token(&state.db, &name, op.user_id(), now).await {
        Ok((_, token)) => {
            tracing::info!(token = %name, by = %op.name(), "API token created");
            page(
                &state,
                &op,
                Some(token),
                String::new(),
                FieldErrors::default(),
                None,
            )
            .await
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot create a token");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again",
            )
        }
    }
}

pub async fn ui_token_revoke_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Path(id): Path<i64>,
) -> Response {
    match state.db.revoke_token(id, state.recorder.now_ms()).await {
        Ok(true) => {
            tracing::info!(token = id, by = %op.name(), "API token revoked");
            Redirect::to("/ui/tokens?flash=revoked").into_response()
        }
        Ok(false) => error_page(StatusCode::NOT_FOUND, "no such active token"),
        Err(e) => {
            tracing::error!(error = %e, "cannot revoke a token");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again",
            )
        }
    }
}
