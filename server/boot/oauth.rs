//! `--config-access oauth`: bootplane is the OAuth2 device-authorization server (RFC 8628)
//! that Talos's config download speaks (`talos.config.oauth.*` kernel arguments), so a config
//! leaves the appliance only with a token an operator's approval issued, whatever the LAN says.
//!
//! The booting machine asks `POST /device/code` (form: `client_id`, plus the extra variable
//! `mac`), shows the user code on its console and polls `POST /token`. An operator approves the
//! request in the UI (`/ui/devices`, with the machine's MAC, vendor and the address that asked),
//! or bootplane approves it itself inside a window the operator armed for that machine or its
//! whole cluster (one install per machine). The token then fetches that machine's config, and
//! no other. Everything here is in memory and bounded: a restart sends a machine through the
//! flow again (Talos retries), it never widens what a token opens.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Json};
use serde::{Deserialize, Serialize};

use crate::auth::devices::*;
use crate::model::{EventKind, Mac};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct DeviceCodeForm {
    #[serde(default)]
    client_id: String,
    /// Talos's extra variable (`talos.config.oauth.extra_variable=mac`).
    #[serde(default)]
    mac: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct MacQuery {
    #[serde(default)]
    mac: Option<String>,
}

#[derive(Debug, Serialize)]
struct DeviceCodeAnswer {
    device_code: String,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: String,
    expires_in: i64,
    interval: u64,
}

/// An RFC 6749 §5.2 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// `POST /device/code` (RFC 8628 §3.1): the device authorization request.
pub async fn boot_device_code_post(
    State(state): State<AppState>,
    from: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<MacQuery>,
    Form(form): Form<DeviceCodeForm>,
) -> Response {
    if state.config.boot.config_access != crate::config::ConfigAccess::Oauth {
        return oauth_error(
            StatusCode::NOT_FOUND,
            "unsupported",
            "the device flow is used with --config-access oauth only",
        );
    }
    if form.client_id != CLIENT_ID {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client_id",
        );
    }
    let Some(mac) = form
        .mac
        .or(q.mac)
        .and_then(|m| m.trim().parse::<Mac>().ok())
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request names no valid mac",
        );
    };
    let machine = match state.db.get_machine(mac).await {
        Ok(m) => m.filter(|m| m.is_assigned()),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a machine for a device request");
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again",
            );
        }
    };
    let Some(machine) = machine else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no assigned machine has this mac",
        );
    };
    let peer = from.map(|Extension(ConnectInfo(addr))| addr);
    let from = peer.map(|p| p.ip());
    let evidence = match peer.map(|p| crate::boot::address_owner(&state, p)) {
        Some(Ok(Some(owner))) if owner == mac => Evidence::Itself,
        Some(Ok(Some(owner))) => Evidence::Other(owner),
        _ => Evidence::Unknown,
    };
    let now = state.recorder.now_ms();
    let (device_code, request) =
        match state
            .devices
            .request(mac, &machine.cluster, from, evidence, now)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(mac = %mac, from = ?from, error = %e, "device request refused");
                return oauth_error(StatusCode::TOO_MANY_REQUESTS, "slow_down", &e.to_string());
            }
        };
    let detail = match &request.decision {
        Decision::Approved { by } => format!(
            "device flow: code {} approved at once ({by})",
            request.user_code
        ),
        _ => format!(
            "device flow: code {} waits for an operator's approval",
            request.user_code
        ),
    };
    tracing::info!(mac = %mac, from = ?from, %detail, "device request");
    state.recorder.event(mac, EventKind::ConfigFetched, detail);
    let base = state.config.boot.http_base();
    Json(DeviceCodeAnswer {
        device_code,
        verification_uri: format!("{base}/ui/devices"),
        verification_uri_complete: format!("{base}/ui/devices?code={}", request.user_code),
        user_code: request.user_code,
        expires_in: REQUEST_TTL_MS / 1000,
        interval: POLL_INTERVAL_SECS,
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    device_code: String,
    #[serde(default)]
    client_id: String,
}

/// `POST /token` (RFC 8628 §3.4): the device polls for its token.
pub async fn boot_token_post(
    State(state): State<AppState>,
    Form(form): Form<TokenForm>,
) -> Response {
    if form.grant_type != DEVICE_GRANT {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only the device code grant is served",
        );
    }
    if form.client_id != CLIENT_ID {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client_id",
        );
    }
    let now = state.recorder.now_ms();
    match state.devices.redeem(&form.device_code, now) {
        Ok((token, mac)) => {
            tracing::info!(mac = %mac, "device flow: token issued");
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(serde_json::json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": TOKEN_TTL_MS / 1000,
                })),
            )
                .into_response()
        }
        Err(error) => oauth_error(StatusCode::BAD_REQUEST, error, error),
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}
