//! The cluster page: initialisation, settings, patches with a preview of their effect, bootstrap
//! status and history, talosconfig/kubeconfig downloads, rebuild.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::{flash_message, ops_error_page, render, when, Chrome, FieldErrors, Op};
use crate::auth::Operator;
use crate::model::{Cluster, Lifecycle, PatchScope, Role};
use crate::ops::cluster::{self as cops, ClusterInput};
use crate::ops::patches::{self, PatchInput};
use crate::ops::OpsError;
use crate::state::AppState;

/// The cluster settings form (strings as typed).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClusterForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub vip: String,
    #[serde(default)]
    pub talos_version: String,
    #[serde(default)]
    pub kubernetes_version: String,
    #[serde(default)]
    pub install_image: String,
    #[serde(default)]
    pub pod_subnets: String,
    #[serde(default)]
    pub service_subnets: String,
    #[serde(default)]
    pub dns_domain: String,
    #[serde(default)]
    pub node_subnets: String,
    #[serde(default)]
    pub nameservers: String,
    #[serde(default)]
    pub single_controlplane: Option<String>,
}

impl ClusterForm {
    fn of(c: &Cluster) -> ClusterForm {
        ClusterForm {
            name: c.name.clone(),
            endpoint: c.endpoint.clone().unwrap_or_default(),
            vip: c.vip.map(|v| v.to_string()).unwrap_or_default(),
            talos_version: c.talos_version.clone().unwrap_or_default(),
            kubernetes_version: c.kubernetes_version.clone().unwrap_or_default(),
            install_image: c.install_image.clone().unwrap_or_default(),
            pod_subnets: c.pod_subnets.join(", "),
            service_subnets: c.service_subnets.join(", "),
            dns_domain: c.dns_domain.clone(),
            node_subnets: c.node_subnets.to_string(),
            nameservers: c
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            single_controlplane: c.single_controlplane.then(|| "true".into()),
        }
    }

    /// Empty optional fields mean "the default"; empty required ones are left unchanged. Empty
    /// nameservers are the host's resolvers at init and none afterwards.
    fn input(&self, initialised: bool) -> ClusterInput {
        let given = |s: &String| (!s.trim().is_empty()).then(|| s.trim().to_string());
        let or_default = |s: &String| {
            Some(if s.trim().is_empty() {
                "default".to_string()
            } else {
                s.trim().to_string()
            })
        };
        ClusterInput {
            name: given(&self.name),
            endpoint: given(&self.endpoint),
            vip: Some(self.vip.trim().to_string()),
            talos_version: given(&self.talos_version),
            kubernetes_version: or_default(&self.kubernetes_version),
            install_image: or_default(&self.install_image),
            pod_subnets: given(&self.pod_subnets),
            service_subnets: given(&self.service_subnets),
            dns_domain: given(&self.dns_domain),
            node_subnets: Some(given(&self.node_subnets).unwrap_or_else(|| "auto".into())),
            // Empty at init: the host's resolvers; empty in settings: none.
            nameservers: given(&self.nameservers).or(initialised.then(|| "none".into())),
            single_controlplane: Some(self.single_controlplane.is_some()),
            import_secrets: None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PatchForm {
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub action: String,
}

impl PatchForm {
    fn input(&self) -> PatchInput {
        PatchInput {
            scope: self.scope.trim().to_string(),
            mac: (!self.mac.trim().is_empty()).then(|| self.mac.trim().to_string()),
            name: self.name.trim().to_string(),
            body: self.body.clone(),
        }
    }
}

pub struct HistoryView {
    pub generation: i64,
    pub target: String,
    pub decided: String,
    pub calls: i64,
    pub outcome: String,
    pub detail: String,
}

pub struct PatchView {
    pub scope: String,
    pub mac: String,
    pub target: String,
    pub name: String,
    pub body: String,
}

pub struct PreviewView {
    pub title: String,
    pub diff: String,
    pub lines: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "ui/cluster.html")]
struct ClusterPage {
    nav: &'static str,
    user: String,
    csrf: String,
    flash: Option<String>,
    name: String,
    initialised: bool,
    status: String,
    status_class: &'static str,
    summary: String,
    generation: i64,
    control_planes: String,
    bootstrapped: String,
    history: Vec<HistoryView>,
    form: ClusterForm,
    patches: Vec<PatchView>,
    scope_options: Vec<(&'static str, bool)>,
    patch: PatchForm,
    previews: Option<Vec<PreviewView>>,
    errors: FieldErrors,
    /// The cluster version's boot assets per arch in use: (words, in service).
    assets: Vec<(String, bool)>,
    /// The installer nodes of the cluster's version install, and where it comes from.
    installers: Vec<String>,
    /// The boot timeline: its status line and a row per machine.
    timeline: super::timeline::TimelineRows,
}

/// The installer lines of the cluster page (none before the cluster has a version and an
/// endpoint).
async fn installers_shown(state: &AppState, cluster: &crate::model::Cluster) -> Vec<String> {
    let Ok(factory) = state.db.factory_schematics().await else {
        return vec!["cannot read the boot asset records".into()];
    };
    let Ok(spec) = crate::ops::materials::cluster_spec(cluster, &factory) else {
        return Vec::new();
    };
    crate::ops::materials::installers_shown(&spec)
        .into_iter()
        .map(|(arches, image, source)| {
            let image = if image.is_empty() {
                "none named (the node installs its own version and schematic)".to_string()
            } else {
                image
            };
            match arches.trim() {
                "" => format!("{image}, from {source}"),
                arch => format!("{arch}: {image}, from {source}"),
            }
        })
        .collect()
}

/// Whether the boot assets of the cluster's version exist for the arches its machines use
/// (amd64 when none has network-booted yet).
async fn asset_status(
    state: &AppState,
    cluster: &crate::model::Cluster,
    machines: &[crate::model::Machine],
) -> Vec<(String, bool)> {
    let version = cluster
        .talos_version
        .clone()
        .unwrap_or_else(|| state.config.boot.talos_version.clone());
    let mut arches: Vec<crate::talos::Arch> = Vec::new();
    for m in machines
        .iter()
        .filter(|m| m.cluster == cluster.name && m.is_assigned() && m.talos_version.is_none())
    {
        let a = crate::assets::arch_of_client(m.last_arch);
        if !arches.contains(&a) {
            arches.push(a);
        }
    }
    if arches.is_empty() {
        arches.push(crate::talos::Arch::Amd64);
    }
    let mut out = Vec::new();
    for arch in arches {
        let line = match state.images.availability(&version, arch).await {
            Ok(a) => match a.problem(&version, arch) {
                None => (format!("Talos {version} {}: ready", arch.as_str()), true),
                Some(problem) => (problem, false),
            },
            Err(e) => (format!("cannot check: {e}"), false),
        };
        out.push(line);
    }
    out
}

#[derive(Default)]
struct Extras {
    form: Option<ClusterForm>,
    patch: PatchForm,
    previews: Option<Vec<PreviewView>>,
    errors: FieldErrors,
    flash: Option<String>,
}

fn diff_lines(diff: &str) -> Vec<(&'static str, String)> {
    diff.lines()
        .map(|l| {
            let class = if l.starts_with("@@") {
                "hunk"
            } else if l.starts_with('+') && !l.starts_with("+++") {
                "add"
            } else if l.starts_with('-') && !l.starts_with("---") {
                "del"
            } else {
                ""
            };
            (class, l.to_string())
        })
        .collect()
}

async fn page(state: &AppState, op: &Operator, extras: Extras) -> Response {
    let cluster = match state.db.get_cluster(None).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return ops_error_page(&OpsError::Refused("no cluster is defined".into()));
        }
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let machines = match state.db.list_machines().await {
        Ok(m) => m,
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let history = match state.db.bootstrap_history(&cluster.name).await {
        Ok(h) => h,
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let patches = match state.db.list_patches(&cluster.name).await {
        Ok(p) => p,
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let cps: Vec<_> = machines
        .iter()
        .filter(|m| m.cluster == cluster.name && m.role == Role::Controlplane)
        .collect();
    let ready = cps.iter().filter(|m| m.state == Lifecycle::Ready).count();
    let workers = machines
        .iter()
        .filter(|m| m.cluster == cluster.name && m.role == Role::Worker)
        .count();
    let needed = if cluster.single_controlplane { 1 } else { 3 };
    let initialised = cluster.initialised_at.is_some();
    let timeline = match super::timeline::rows(state, &cluster, &machines).await {
        Ok(t) => t,
        Err(e) => return ops_error_page(&e),
    };
    let (status, status_class) = if cluster.bootstrapped_at.is_some() {
        ("bootstrapped".to_string(), "ready")
    } else if !history.is_empty() {
        ("bootstrapping".to_string(), "booting")
    } else {
        // Which control planes, and how many are missing (the timeline says why each waits).
        let first = timeline.status.lines().next().unwrap_or_default();
        let words = if first.is_empty() {
            format!("waiting for control planes ({ready} of {needed} ready)")
        } else {
            first.to_string()
        };
        (words, "assigned")
    };
    let chrome = Chrome::of(op);
    let status_code = if extras.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let scope = if extras.patch.scope.is_empty() {
        "cluster".to_string()
    } else {
        extras.patch.scope.clone()
    };
    let assets = asset_status(state, &cluster, &machines).await;
    let installers = installers_shown(state, &cluster).await;
    let page = ClusterPage {
        assets,
        installers,
        timeline,
        nav: "cluster",
        user: chrome.user,
        csrf: chrome.csrf,
        flash: extras.flash,
        name: cluster.name.clone(),
        initialised,
        status,
        status_class,
        summary: if initialised {
            format!(
                "{} · Talos {} · {} control plane{}, {} worker{}",
                cluster.endpoint.as_deref().unwrap_or("no endpoint"),
                cluster
                    .talos_version
                    .as_deref()
                    .unwrap_or("default version"),
                cps.len(),
                if cps.len() == 1 { "" } else { "s" },
                workers,
                if workers == 1 { "" } else { "s" }
            )
        } else {
            "Not initialised yet: give it an endpoint (or a VIP) and bootplane makes its secrets."
                .into()
        },
        generation: cluster.generation,
        control_planes: format!("{} assigned, {ready} ready (needs {needed})", cps.len()),
        bootstrapped: match cluster.bootstrapped_at {
            Some(_) => when(cluster.bootstrapped_at),
            None => "not yet".into(),
        },
        history: history
            .iter()
            .rev()
            .map(|b| HistoryView {
                generation: b.generation,
                target: format!("{} ({})", b.target_ip, b.target_mac),
                decided: when(Some(b.decided_at)),
                calls: b.calls,
                outcome: b.outcome.map_or("pending", |o| o.as_str()).into(),
                detail: b.detail.clone(),
            })
            .collect(),
        form: extras.form.unwrap_or_else(|| ClusterForm::of(&cluster)),
        patches: patches
            .iter()
            .map(|p| PatchView {
                scope: p.scope.to_string(),
                mac: p.mac.map(|m| m.to_string()).unwrap_or_default(),
                target: p.mac.map(|m| m.to_string()).unwrap_or_default(),
                name: p.name.clone(),
                body: p.body.clone(),
            })
            .collect(),
        scope_options: PatchScope::ALL
            .iter()
            .map(|s| (s.as_str(), s.as_str() == scope))
            .collect(),
        patch: extras.patch,
        previews: extras.previews,
        errors: extras.errors,
    };
    let mut r = render(&page);
    *r.status_mut() = status_code;
    r
}

#[derive(Debug, Default, Deserialize)]
pub struct FlashQuery {
    #[serde(default)]
    flash: Option<String>,
}

pub async fn ui_cluster_get(
    State(state): State<AppState>,
    Extension(op): Op,
    Query(q): Query<FlashQuery>,
) -> Response {
    let extras = Extras {
        flash: flash_message(q.flash.as_deref()),
        ..Default::default()
    };
    page(&state, &op, extras).await
}

/// A field error re-renders the page with the form as typed; anything else is an error page.
async fn refused(state: &AppState, op: &Operator, e: OpsError, extras: Extras) -> Response {
    match e {
        OpsError::Invalid(_) => {
            let extras = Extras {
                errors: FieldErrors::from_ops(&e),
                ..extras
            };
            page(state, op, extras).await
        }
        OpsError::Refused(msg) => {
            let extras = Extras {
                errors: FieldErrors::one("cluster", msg),
                ..extras
            };
            page(state, op, extras).await
        }
        other => ops_error_page(&other),
    }
}

pub async fn ui_cluster_init_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<ClusterForm>,
) -> Response {
    let now = state.recorder.now_ms();
    match cops::init_cluster(&state.db, &form.input(false), now).await {
        Ok(c) => {
            state.changed();
            tracing::info!(cluster = %c.name, by = %op.name(), "cluster initialised");
            Redirect::to("/ui/cluster?flash=initialised").into_response()
        }
        Err(e) => {
            let extras = Extras {
                form: Some(form),
                ..Default::default()
            };
            refused(&state, &op, e, extras).await
        }
    }
}

pub async fn ui_cluster_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<ClusterForm>,
) -> Response {
    let now = state.recorder.now_ms();
    match cops::update_cluster(&state.db, &form.input(true), now).await {
        Ok(c) => {
            state.changed();
            tracing::info!(cluster = %c.name, by = %op.name(), "cluster settings saved");
            Redirect::to("/ui/cluster?flash=cluster-saved").into_response()
        }
        Err(e) => {
            let extras = Extras {
                form: Some(form),
                ..Default::default()
            };
            refused(&state, &op, e, extras).await
        }
    }
}

pub async fn ui_cluster_patches_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<PatchForm>,
) -> Response {
    let input = form.input();
    let now = state.recorder.now_ms();
    if form.action == "preview" {
        return match patches::preview_patch(&state.db, &input).await {
            Ok(previews) => {
                let previews = previews
                    .into_iter()
                    .map(|p| PreviewView {
                        title: match &p.hostname {
                            Some(h) => format!("{h} ({})", p.mac),
                            None => p.mac.to_string(),
                        },
                        lines: diff_lines(&p.diff),
                        diff: p.diff,
                    })
                    .collect();
                let extras = Extras {
                    patch: form,
                    previews: Some(previews),
                    ..Default::default()
                };
                page(&state, &op, extras).await
            }
            Err(e) => {
                let extras = Extras {
                    patch: form,
                    ..Default::default()
                };
                refused(&state, &op, e, extras).await
            }
        };
    }
    match patches::save_patch(&state.db, &input, now).await {
        Ok(_) => {
            state.changed();
            tracing::info!(patch = %input.name, scope = %input.scope, by = %op.name(), "patch saved");
            Redirect::to("/ui/cluster?flash=patch-saved#patches").into_response()
        }
        Err(e) => {
            let extras = Extras {
                patch: form,
                ..Default::default()
            };
            refused(&state, &op, e, extras).await
        }
    }
}

pub async fn ui_cluster_patch_remove_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<PatchForm>,
) -> Response {
    let input = form.input();
    match patches::remove_patch(&state.db, &input, state.recorder.now_ms()).await {
        Ok(()) => {
            state.changed();
            tracing::info!(patch = %input.name, by = %op.name(), "patch removed");
            Redirect::to("/ui/cluster?flash=patch-removed#patches").into_response()
        }
        Err(e) => refused(&state, &op, e, Extras::default()).await,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RebuildForm {
    #[serde(default)]
    confirm: String,
}

pub async fn ui_cluster_rebuild_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<RebuildForm>,
) -> Response {
    match cops::rebuild_cluster(&state.db, &form.confirm, state.recorder.now_ms()).await {
        Ok(count) => {
            state.changed();
            tracing::warn!(machines = count, by = %op.name(), "cluster rebuild started");
            Redirect::to("/ui/cluster?flash=rebuild").into_response()
        }
        Err(e) => refused(&state, &op, e, Extras::default()).await,
    }
}

fn download(name: &str, text: String) -> Response {
    let disposition = format!("attachment; filename=\"{name}\"");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/yaml"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or(HeaderValue::from_static("attachment")),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        text,
    )
        .into_response()
}

pub async fn ui_cluster_talosconfig_get(
    State(state): State<AppState>,
    Extension(op): Op,
) -> Response {
    match cops::talosconfig(&state.db, state.recorder.now_ms()).await {
        Ok(text) => {
            tracing::info!(by = %op.name(), "talosconfig downloaded");
            download("talosconfig", text)
        }
        Err(e) => ops_error_page(&e),
    }
}

pub async fn ui_cluster_kubeconfig_get(
    State(state): State<AppState>,
    Extension(op): Op,
) -> Response {
    match cops::kubeconfig(&state.db, state.recorder.now_ms()).await {
        Ok(text) => {
            tracing::info!(by = %op.name(), "kubeconfig downloaded");
            download("kubeconfig", text)
        }
        Err(e) => ops_error_page(&e),
    }
}
