//! Device approvals (`--config-access oauth`): the requests booting machines made through the
//! OAuth2 device flow, approved or denied by code, and the windows in which bootplane approves
//! one install per machine itself (unattended rebuilds).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::{error_page, render, when, Chrome, Op};
use crate::auth::devices::{normalise_code, ArmScope, Decision, Evidence, MAX_ARM_MINUTES};
use crate::auth::Operator;
use crate::config::ConfigAccess;
use crate::model::{EventKind, Mac};
use crate::state::AppState;

pub struct RequestView {
    pub code: String,
    pub mac: String,
    pub vendor: String,
    pub machine: String,
    pub from: String,
    /// What bootplane knows of that address.
    pub evidence: String,
    /// The address is the machine's own (neighbour table or our lease).
    pub evidenced: bool,
    /// Other requests for the same MAC are pending too.
    pub rivals: usize,
    pub asked: String,
    pub state: String,
    pub pending: bool,
    pub highlighted: bool,
}

pub struct ArmedView {
    pub scope: String,
    pub until: String,
    pub by: String,
    pub used: usize,
    /// The form value that disarms it.
    pub key: String,
}

#[derive(Template)]
#[template(path = "ui/devices.html")]
struct DevicesPage {
    nav: &'static str,
    user: String,
    csrf: String,
    flash: Option<String>,
    enabled: bool,
    code: String,
    requests: Vec<RequestView>,
    armed: Vec<ArmedView>,
    error: Option<String>,
    max_minutes: u32,
}

#[derive(Debug, Default, Deserialize)]
pub struct DevicesQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    flash: Option<String>,
}

async fn page(
    state: &AppState,
    op: &Operator,
    code: String,
    flash: Option<String>,
    error: Option<String>,
) -> Response {
    let now = state.recorder.now_ms();
    let (requests, armed) = state.devices.view(now);
    let mut views = Vec::with_capacity(requests.len());
    let pending_for = |mac: Mac| {
        requests
            .iter()
            .filter(|r| r.mac == mac && r.decision == Decision::Pending)
            .count()
    };
    let rivals: Vec<usize> = requests
        .iter()
        .map(|r| pending_for(r.mac).saturating_sub(1))
        .collect();
    for (r, rivals) in requests.into_iter().zip(rivals) {
        let machine = match state.db.get_machine(r.mac).await {
            Ok(Some(m)) => format!(
                "{} ({})",
                m.hostname.unwrap_or_else(|| "no hostname".into()),
                m.role
            ),
            Ok(None) => "not in the inventory".into(),
            Err(_) => "?".into(),
        };
        let (state_text, pending) = match &r.decision {
            Decision::Pending => ("waiting for approval".to_string(), true),
            Decision::Approved { by } => (format!("approved by {by}"), false),
            Decision::Denied { by } => (format!("denied by {by}"), false),
        };
        views.push(RequestView {
            highlighted: !code.is_empty() && r.user_code == code,
            code: r.user_code,
            mac: r.mac.to_string(),
            vendor: crate::net::oui::vendor(r.mac).unwrap_or_else(|| "unknown vendor".into()),
            machine,
            from: r
                .from
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "unknown".into()),
            evidence: match r.evidence {
                Evidence::Itself => "the machine's own (neighbour table or lease)".into(),
                Evidence::Unknown => "no evidence (routed, or unknown to this host)".into(),
                Evidence::Other(other) => format!("belongs to {other}: not this machine"),
            },
            evidenced: r.evidence == Evidence::Itself,
            rivals,
            asked: when(Some(r.created_ms)),
            state: state_text,
            pending,
        });
    }
    let armed = armed
        .into_iter()
        .map(|a| {
            let (scope, key) = match &a.scope {
                ArmScope::Machine(mac) => (format!("machine {mac}"), mac.to_string()),
                ArmScope::Cluster(c) => (
                    format!("every machine of cluster {c}"),
                    format!("cluster:{c}"),
                ),
            };
            ArmedView {
                scope,
                until: when(Some(a.until_ms)),
                by: a.by,
                used: a.used.len(),
                key,
            }
        })
        .collect();
    let chrome = Chrome::of(op);
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut r = render(&DevicesPage {
        nav: "devices",
        user: chrome.user,
        csrf: chrome.csrf,
        flash,
        enabled: state.config.boot.config_access == ConfigAccess::Oauth,
        code,
        requests: views,
        armed,
        error,
        max_minutes: MAX_ARM_MINUTES,
    });
    *r.status_mut() = status;
    r
}

pub async fn ui_devices_get(
    State(state): State<AppState>,
    Extension(op): Op,
    Query(q): Query<DevicesQuery>,
) -> Response {
    let flash = match q.flash.as_deref() {
        Some("approved") => {
            Some("Approved: the machine fetches its config at its next poll.".to_string())
        }
        Some("denied") => Some("Denied: the machine gets no config.".to_string()),
        Some("armed") => Some(
            "Armed: bootplane approves one install per machine until the window ends.".to_string(),
        ),
        Some("disarmed") => Some("Disarmed.".to_string()),
        _ => None,
    };
    let code = q.code.as_deref().map(normalise_code).unwrap_or_default();
    page(&state, &op, code, flash, None).await
}

#[derive(Debug, Default, Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    action: String,
}

pub async fn ui_devices_decide_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<DecideForm>,
) -> Response {
    let approve = match form.action.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return error_page(StatusCode::BAD_REQUEST, "action must be approve or deny"),
    };
    let now = state.recorder.now_ms();
    match state.devices.decide(&form.code, approve, &op.name(), now) {
        Ok(request) => {
            let what = if approve { "approved" } else { "denied" };
            tracing::info!(mac = %request.mac, code = %request.user_code, by = %op.name(), "device request {what}");
            state.recorder.event(
                request.mac,
                EventKind::ConfigFetched,
                format!(
                    "device flow: code {} {what} by {}",
                    request.user_code,
                    op.name()
                ),
            );
            Redirect::to(&format!("/ui/devices?flash={what}")).into_response()
        }
        Err(e) => {
            page(
                &state,
                &op,
                normalise_code(&form.code),
                None,
                Some(e.to_string()),
            )
            .await
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ArmForm {
    /// A MAC, or `cluster:<name>`.
    #[serde(default)]
    target: String,
    #[serde(default)]
    minutes: String,
    #[serde(default)]
    disarm: Option<String>,
}

fn parse_scope(target: &str) -> Result<ArmScope, String> {
    let target = target.trim();
    if let Some(cluster) = target.strip_prefix("cluster:") {
        let cluster = cluster.trim();
        if cluster.is_empty() || cluster.len() > 64 || cluster.chars().any(char::is_control) {
            return Err("name a cluster: cluster:<name>".into());
        }
        return Ok(ArmScope::Cluster(cluster.to_string()));
    }
    target
        .parse::<Mac>()
        .map(ArmScope::Machine)
        .map_err(|e| format!("a MAC or cluster:<name>: {e}"))
}

pub async fn ui_devices_arm_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<ArmForm>,
) -> Response {
    let scope = match parse_scope(&form.target) {
        Ok(scope) => scope,
        Err(e) => return page(&state, &op, String::new(), None, Some(e)).await,
    };
    if form.disarm.is_some() {
        state.devices.disarm(&scope);
        tracing::info!(?scope, by = %op.name(), "device approvals disarmed");
        return Redirect::to("/ui/devices?flash=disarmed").into_response();
    }
    let minutes = match form.minutes.trim().parse::<u32>() {
        Ok(m) => m,
        Err(_) => {
            let e = format!("minutes: a whole number from 1 to {MAX_ARM_MINUTES}");
            return page(&state, &op, String::new(), None, Some(e)).await;
        }
    };
    let now = state.recorder.now_ms();
    if let Err(e) = state.devices.arm(scope.clone(), minutes, &op.name(), now) {
        return page(&state, &op, String::new(), None, Some(e.to_string())).await;
    }
    tracing::info!(?scope, minutes, by = %op.name(), "device approvals armed");
    Redirect::to("/ui/devices?flash=armed").into_response()
}
