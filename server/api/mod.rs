//! The JSON API under `/api/v1`: the operations of the web UI for automation, documented by an
//! OpenAPI document generated from this code (`/api/v1/openapi.json`).
//!
//! Routes are registered through `utoipa_axum`, so the router and the document come from the
//! same list: a handler cannot be served without being documented. Handlers are named
//! `<area>_<action>_<method>` and stay thin: the rules live in `ops`.
//!
//! Every route, the document included, needs an operator (`auth::require_operator`): an API
//! token (`Authorization: Bearer bpt_…`) or a session cookie with its CSRF token on changes.

mod cluster;
mod images;
mod machines;
mod tokens;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db::DbError;
use crate::model::Mac;
use crate::ops::{FieldError, OpsError};
use crate::state::AppState;

/// Where the API is mounted; the document's server URL.
pub const BASE: &str = "/api/v1";

/// The body of every API error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// What went wrong, for people.
    pub error: String,
    /// Problems with individual input fields, when the input was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
    /// What to do next, e.g. how to confirm a consequential change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

pub fn error_response(status: StatusCode, message: &str) -> Response {
    Failure::new(status, message).into_response()
}

/// The one error type of API handlers: a status and an `ApiError` body. Internal errors are
/// logged here and answered with a generic message.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    body: ApiError,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            body: ApiError {
                error: message.into(),
                fields: Vec::new(),
                hint: None,
            },
        }
    }

    fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, message)
    }

    fn internal(what: &str, e: &dyn std::fmt::Display) -> Failure {
        tracing::error!(error = %e, "api: {what}");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the appliance's log has the details",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Failure {
        match e {
            DbError::NotFound(mac) => {
                Failure::not_found(format!("machine {mac} is not in the inventory"))
            }
            DbError::NoCluster(_) => Failure::not_found("no cluster is defined"),
            DbError::NoPatch(name) => {
                Failure::not_found(format!("no patch named '{name}' at that scope"))
            }
            DbError::Exists(_)
            | DbError::HostnameTaken { .. }
            | DbError::IpTaken { .. }
            | DbError::ClusterInitialised(_)
            | DbError::ClusterNameTaken(_) => Failure::new(StatusCode::CONFLICT, e.to_string()),
            other => Failure::internal("database error", &other),
        }
    }
}

impl From<OpsError> for Failure {
    fn from(e: OpsError) -> Failure {
        match e {
            OpsError::Invalid(fields) => Failure {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: ApiError {
                    error: "the input was refused: see fields".into(),
                    fields,
                    hint: None,
                },
            },
            OpsError::NeedsConfirmation(question) => Failure {
                status: StatusCode::CONFLICT,
                body: ApiError {
                    error: question,
                    fields: Vec::new(),
                    hint: Some("repeat the request with ?confirm=true to go ahead".into()),
                },
            },
            OpsError::NotFound(mac) => {
                Failure::not_found(format!("machine {mac} is not in the inventory"))
            }
            OpsError::Refused(message) => Failure::new(StatusCode::CONFLICT, message),
            OpsError::Db(e) => e.into(),
        }
    }
}

type ApiResult<T> = Result<T, Failure>;

/// A MAC from the path; a bad one is a 400 with the reason, never a panic.
fn path_mac(text: &str) -> ApiResult<Mac> {
    text.parse::<Mac>().map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("'{text}' is not a MAC address: {e}"),
        )
    })
}

/// `axum::Json` whose rejections are `ApiError`s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(Failure))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for Failure {
    fn from(r: JsonRejection) -> Failure {
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        Failure::new(status, r.body_text())
    }
}

/// `axum::extract::Query` whose rejections are `ApiError`s (400).
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Failure))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for Failure {
    fn from(r: QueryRejection) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bootplane",
        description = "Network boot and provisioning for Talos Linux clusters: the operations of \
                       the web UI for automation. Every route needs an operator: an API token \
                       (`Authorization: Bearer bpt_…`, made on the UI's tokens page or with \
                       `POST /tokens`) or a session cookie; requests that change something with \
                       a session cookie also need its CSRF token in `x-csrf-token`. Secrets in \
                       rendered configs are hidden unless `reveal=true` is asked for."
    ),
    servers((url = "/api/v1")),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "machines", description = "The machine inventory"),
        (name = "cluster", description = "Cluster settings, patches, bootstrap, credentials"),
        (name = "images", description = "Talos boot assets per version and arch"),
        (name = "tokens", description = "API tokens for automation"),
        (name = "meta", description = "This document")
    ),
    components(schemas(ApiError, FieldError))
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi
            .components
            .get_or_insert_with(utoipa::openapi::Components::new);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some("an API token, bpt_…".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "the web UI's session (log in at /login); changes also need the x-csrf-token \
                 header",
            ))),
        );
    }
}

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            machines::machines_list_get,
            machines::machines_create_post
        ))
        .routes(routes!(
            machines::machine_get,
            machines::machine_update_patch,
            machines::machine_remove_delete
        ))
        .routes(routes!(machines::machine_reinstall_post))
        .routes(routes!(machines::machine_events_get))
        .routes(routes!(machines::machine_log_get))
        .routes(routes!(machines::machine_config_get))
        .routes(routes!(cluster::cluster_get, cluster::cluster_update_patch))
        .routes(routes!(cluster::cluster_init_post))
        .routes(routes!(
            cluster::cluster_patches_get,
            cluster::cluster_patch_put,
            cluster::cluster_patch_delete
        ))
        .routes(routes!(cluster::cluster_bootstrap_get))
        .routes(routes!(cluster::cluster_talosconfig_get))
        .routes(routes!(cluster::cluster_kubeconfig_get))
        .routes(routes!(cluster::cluster_rebuild_post))
        .routes(routes!(images::images_list_get, images::images_add_post))
        .routes(routes!(images::image_remove_delete))
        .routes(routes!(images::images_verify_post))
        .routes(routes!(images::images_schematic_post))
        .routes(routes!(tokens::tokens_list_get, tokens::tokens_create_post))
        .routes(routes!(tokens::token_revoke_delete))
        .routes(routes!(api_openapi_get))
}

/// The OpenAPI document of this API (generated from the handlers).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// Routes under `/api/v1`, all behind `auth::require_operator`.
pub fn router() -> Router<AppState> {
    let (router, _) = api().split_for_parts();
    router.fallback(api_fallback)
}

/// API routes that need no operator: none. The OpenAPI document is served behind the login
/// too, like every other route under `/api/v1` (it reveals no secret, but the rule is simpler
/// without exceptions, and clients fetch it with their token).
pub fn public_router() -> Router<AppState> {
    Router::new()
}

async fn api_fallback() -> Failure {
    Failure::not_found("no such API route; see /api/v1/openapi.json")
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "api_openapi_get",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 401, description = "No operator", body = ApiError)
    )
)]
async fn api_openapi_get() -> Response {
    match openapi().to_pretty_json() {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response(),
        Err(e) => Failure::internal("cannot serialise the OpenAPI document", &e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_an_id_and_documents_401() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 12, "{}", paths.len());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["operationId"].is_string(), "{method} {path}");
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path} does not document 401"
                );
            }
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(doc["components"]["securitySchemes"]["session"].is_object());
    }

    #[test]
    fn ops_errors_map_to_statuses_without_internals() {
        let status = |e: OpsError| Failure::from(e).status;
        assert_eq!(
            status(OpsError::field("ip", "bad")),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(OpsError::NeedsConfirmation("sure?".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(status(OpsError::Refused("no".into())), StatusCode::CONFLICT);
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        assert_eq!(status(OpsError::NotFound(mac)), StatusCode::NOT_FOUND);
        let internal = Failure::from(OpsError::Db(DbError::Corrupt {
            what: "machines".into(),
            why: "secret detail".into(),
        }));
        assert_eq!(internal.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!internal.body.error.contains("secret detail"));
        let confirm = Failure::from(OpsError::NeedsConfirmation("sure?".into()));
        assert!(confirm.body.hint.unwrap().contains("confirm=true"));
    }

    #[test]
    fn bad_path_macs_are_400() {
        let f = path_mac("zz:zz").unwrap_err();
        assert_eq!(f.status, StatusCode::BAD_REQUEST);
        assert!(f.body.error.contains("zz:zz"));
    }
}
