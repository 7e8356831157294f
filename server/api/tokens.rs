//! `/tokens`: API tokens for automation (stored hashed; the token is shown once).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiResult, Failure};
use crate::auth::Operator;
use crate::ops::OpsError;
use crate::state::AppState;

/// An API token as listed (never the token itself).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    /// The operator who made it (null when made by another token)
    pub created_by: Option<String>,
    /// Milliseconds since the Unix epoch
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Every API token, revoked ones included.
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    responses(
        (status = 200, description = "Tokens, oldest first", body = Vec<TokenInfo>),
        (status = 401, description = "No operator", body = ApiError)
    )
)]
pub async fn tokens_list_get(State(state): State<AppState>) -> ApiResult<Json<Vec<TokenInfo>>> {
    let tokens = state.db.list_tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                name: t.name,
                created_by: t.created_by,
                created_at: t.created_at,
                last_used_at: t.last_used_at,
                revoked_at: t.revoked_at,
            })
            .collect(),
    ))
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// What the token is for, 1 to 64 printable characters
    pub name: String,
}

/// A new token: the only time it is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    pub id: i64,
    pub name: String,
    /// Use as `Authorization: Bearer <token>`; it cannot be shown again
    pub token: String,
}

/// Makes an API token and returns it once.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    request_body = TokenCreate,
    responses(
        (status = 201, description = "The new token, shown this once", body = NewToken),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 415, description = "Not application/json", body = ApiError),
        (status = 422, description = "Bad name", body = ApiError)
    )
)]
pub async fn tokens_create_post(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    ApiJson(body): ApiJson<TokenCreate>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(OpsError::field(
            "name",
            "a token needs a name of 1 to 64 printable characters",
        )
        .into());
    }
    let (id, token) =
        crate::auth::create_token(&state.db, &name, op.user_id(), state.recorder.now_ms())
            .await
            .map_err(|e| match e {
                crate::auth::AuthError::Db(e) => Failure::from(e),
                other => Failure::internal("cannot make a token", &other),
            })?;
    tracing::info!(token = %name, by = %op.name(), "api: token created");
    Ok((StatusCode::CREATED, Json(NewToken { id, name, token })))
}

/// Revokes a token: requests with it are refused from now on.
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "tokens",
    params(("id" = i64, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "Not a token id", body = ApiError),
        (status = 401, description = "No operator", body = ApiError),
        (status = 403, description = "Session without its CSRF token", body = ApiError),
        (status = 404, description = "No such active token", body = ApiError)
    )
)]
pub async fn token_revoke_delete(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: i64 = id
        .trim()
        .parse()
        .map_err(|_| Failure::new(StatusCode::BAD_REQUEST, format!("'{id}' is not a token id")))?;
    if state.db.revoke_token(id, state.recorder.now_ms()).await? {
        tracing::info!(token = id, by = %op.name(), "api: token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Failure::new(StatusCode::NOT_FOUND, "no such active token"))
    }
}
