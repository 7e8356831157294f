//! Machines: the live list with filters, adding by MAC, the detail page with assignment,
//! timeline, boot log, rendered config and the reinstall action.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::{
    ago, error_page, flash_message, ops_error_page, render, when, Chrome, FieldErrors, Op,
};
use std::collections::HashMap;

use crate::model::{DiskHandoff, Event, Lifecycle, Mac, Machine, Role};
use crate::ops::input::MachineInput;
use crate::ops::lan::Lan;
use crate::ops::{configs, machines, OpsError};
use crate::state::AppState;
use axum::Extension;

/// Firmware named from DHCP option 93.
pub fn arch_name(arch: Option<u16>) -> String {
    match arch {
        None => "not seen yet".into(),
        Some(0) => "BIOS".into(),
        Some(6) => "UEFI x86".into(),
        Some(7) | Some(9) => "UEFI x86-64".into(),
        Some(10) => "UEFI ARM32".into(),
        Some(11) => "UEFI ARM64".into(),
        Some(16) => "UEFI x86-64 HTTP".into(),
        Some(19) => "UEFI ARM64 HTTP".into(),
        Some(other) => format!("arch {other}"),
    }
}

/// The state in words an operator reads at a glance.
pub fn state_words(m: &Machine) -> &'static str {
    match m.state {
        Lifecycle::Discovered => "discovered: waiting for a role",
        Lifecycle::Assigned => "assigned: boots Talos next",
        Lifecycle::Booting => "booting Talos",
        Lifecycle::ConfigServed => "config served: installing",
        Lifecycle::Installed => "installed",
        Lifecycle::Ready => "ready",
    }
}

pub struct Row {
    pub mac: String,
    pub vendor: String,
    pub arch: String,
    pub role: &'static str,
    pub hostname: String,
    pub ip: String,
    pub state: &'static str,
    pub state_words: &'static str,
    pub state_since: String,
    pub last_event: String,
    pub last_event_ago: String,
    /// Why it cannot boot Talos now (its boot assets), empty when it can.
    pub waiting: String,
}

fn row(m: &Machine, last: Option<&Event>, now: i64) -> Row {
    Row {
        mac: m.mac.to_string(),
        vendor: crate::net::oui::vendor(m.mac).unwrap_or_else(|| "unknown vendor".into()),
        arch: arch_name(m.last_arch),
        role: m.role.as_str(),
        hostname: m.hostname.clone().unwrap_or_else(|| "—".into()),
        ip: m.ip.map(|i| i.to_string()).unwrap_or_else(|| "—".into()),
        state: m.state.as_str(),
        state_words: state_words(m),
        // Discovered before state times were kept: since it was first seen.
        state_since: when(m.state_since.or(m.first_seen)),
        last_event: last
            .map(|e| {
                if e.detail.is_empty() {
                    e.kind.to_string()
                } else {
                    format!("{}: {}", e.kind, e.detail)
                }
            })
            .unwrap_or_else(|| "—".into()),
        last_event_ago: ago(now, last.map(|e| e.at)),
        waiting: String::new(),
    }
}

/// The Talos version a machine boots and where that choice comes from.
async fn boot_version(
    state: &AppState,
    m: &Machine,
) -> Result<(String, &'static str), crate::db::DbError> {
    if let Some(pin) = &m.talos_version {
        return Ok((pin.clone(), "pinned for this machine"));
    }
    let cluster = state.db.get_cluster(Some(&m.cluster)).await?;
    Ok(match cluster.and_then(|c| c.talos_version) {
        Some(v) => (v, "the cluster's"),
        None => (
            state.config.boot.talos_version.clone(),
            "the appliance's default",
        ),
    })
}

/// Why a machine that would boot Talos next cannot (one not installed yet, or a diskless one,
/// which boots Talos every time): its selected version's assets for its arch are missing or
/// out of service. Derived from the assets, not from its last event.
async fn boot_problem(state: &AppState, m: &Machine) -> Option<String> {
    if !m.is_assigned() || (m.installed && !m.diskless) {
        return None;
    }
    let (version, _) = boot_version(state, m).await.ok()?;
    let arch = crate::assets::arch_of_client(m.last_arch);
    match state.images.availability(&version, arch).await {
        Ok(a) => a.problem(&version, arch),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check boot assets");
            None
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    flash: Option<String>,
}

impl Filters {
    fn query(&self) -> String {
        let mut q = Vec::new();
        if !self.state.is_empty() {
            q.push(format!("state={}", crate::auth::urlencode(&self.state)));
        }
        if !self.role.is_empty() {
            q.push(format!("role={}", crate::auth::urlencode(&self.role)));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }

    fn keeps(&self, m: &Machine) -> bool {
        (self.state.is_empty() || m.state.as_str() == self.state)
            && (self.role.is_empty() || m.role.as_str() == self.role)
    }
}

async fn rows(state: &AppState, filters: &Filters) -> Result<(Vec<Row>, String), OpsError> {
    // The in-memory snapshot, like the boot path: a poll of the list costs no machine query.
    let snapshot = state.inventory.snapshot();
    let machines: Vec<&Machine> = snapshot.by_mac.values().collect();
    let latest = state.db.latest_events().await?;
    let now = state.recorder.now_ms();
    let count = |s: Lifecycle| machines.iter().filter(|m| m.state == s).count();
    let summary = format!(
        "{} machines: {} ready, {} installed, {} installing, {} assigned and waiting to boot, {} waiting for a role",
        machines.len(),
        count(Lifecycle::Ready),
        count(Lifecycle::Installed),
        count(Lifecycle::Booting) + count(Lifecycle::ConfigServed),
        count(Lifecycle::Assigned),
        count(Lifecycle::Discovered),
    );
    let mut list: Vec<&Machine> = machines.into_iter().filter(|m| filters.keeps(m)).collect();
    // Machines waiting for the operator first, then by role and name.
    list.sort_by_key(|m| {
        (
            m.state != Lifecycle::Discovered,
            m.role,
            m.hostname.clone().unwrap_or_default(),
            m.mac.to_string(),
        )
    });
    // One check per cluster and per version and arch, however many machines wait on them.
    let mut versions: HashMap<(String, Option<String>), String> = HashMap::new();
    let mut problems: HashMap<(String, &'static str), Option<String>> = HashMap::new();
    let mut rows = Vec::with_capacity(list.len());
    for m in list {
        let mut r = row(m, latest.get(&m.mac), now);
        if m.is_assigned() && (!m.installed || m.diskless) {
            let key = (m.cluster.clone(), m.talos_version.clone());
            let version = match versions.get(&key) {
                Some(v) => v.clone(),
                None => {
                    let (v, _) = boot_version(state, m).await?;
                    versions.insert(key, v.clone());
                    v
                }
            };
            let arch = crate::assets::arch_of_client(m.last_arch);
            let key = (version.clone(), arch.as_str());
            if !problems.contains_key(&key) {
                let problem = match state.images.availability(&version, arch).await {
                    Ok(a) => a.problem(&version, arch),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check boot assets");
                        None
                    }
                };
                problems.insert(key.clone(), problem);
            }
            r.waiting = problems.get(&key).cloned().flatten().unwrap_or_default();
        }
        rows.push(r);
    }
    Ok((rows, summary))
}

/// The machine form as the page shows it (text as typed, checkboxes present or absent);
/// `input` hands it over as the operator's machine input, which `ops` parses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MachineForm {
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub dns: String,
    #[serde(default)]
    pub install_disk: String,
    #[serde(default)]
    pub disk_handoff: String,
    #[serde(default)]
    pub wipe: Option<String>,
    #[serde(default)]
    pub diskless: Option<String>,
    #[serde(default)]
    pub talos_version: String,
    #[serde(default)]
    pub confirm: Option<String>,
}

impl MachineForm {
    fn of(m: &Machine) -> MachineForm {
        MachineForm {
            mac: m.mac.to_string(),
            role: m.role.to_string(),
            hostname: m.hostname.clone().unwrap_or_default(),
            ip: m.ip.map(|i| i.to_string()).unwrap_or_default(),
            gateway: m.gateway.map(|g| g.to_string()).unwrap_or_default(),
            dns: m
                .dns
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            install_disk: m.install_disk.clone().unwrap_or_default(),
            disk_handoff: m.disk_handoff.to_string(),
            wipe: m.wipe.then(|| "true".into()),
            diskless: m.diskless.then(|| "true".into()),
            talos_version: m.talos_version.clone().unwrap_or_default(),
            confirm: None,
        }
    }

    /// Every field the form shows is given (an unchecked box is false); the form has no
    /// cluster or iPXE build field, so those stay as they are.
    fn input(&self) -> MachineInput {
        MachineInput {
            role: Some(self.role.clone()),
            hostname: Some(self.hostname.clone()),
            ip: Some(self.ip.clone()),
            gateway: Some(self.gateway.clone()),
            dns: Some(self.dns.clone()),
            install_disk: Some(self.install_disk.clone()),
            disk_handoff: Some(self.disk_handoff.clone()),
            efi_binary: None,
            wipe: Some(self.wipe.is_some()),
            cluster: None,
            talos_version: Some(self.talos_version.clone()),
            diskless: Some(self.diskless.is_some()),
        }
    }
}

/// What the machine fields partial needs.
pub struct FieldsView {
    pub form: MachineForm,
    /// What an empty Talos version means, e.g. "the cluster's (v1.11.6)".
    pub version_hint: String,
    pub role_options: Vec<(&'static str, bool)>,
    pub handoff_options: Vec<(&'static str, bool)>,
    pub ip_hint: String,
}

impl FieldsView {
    fn new(form: MachineForm, lan: &Lan, default_version: &str) -> FieldsView {
        let role = if form.role.is_empty() {
            "unassigned".to_string()
        } else {
            form.role.clone()
        };
        let handoff = if form.disk_handoff.is_empty() {
            "exit".to_string()
        } else {
            form.disk_handoff.clone()
        };
        FieldsView {
            role_options: Role::ALL
                .iter()
                .map(|r| (r.as_str(), r.as_str() == role))
                .collect(),
            handoff_options: DiskHandoff::ALL
                .iter()
                .map(|h| (h.as_str(), h.as_str() == handoff))
                .collect(),
            ip_hint: format!("ADDR/PREFIX in {}", lan.subnet),
            version_hint: format!("not pinned: {default_version}"),
            form,
        }
    }
}

#[derive(Template)]
#[template(path = "ui/machines.html")]
struct MachinesPage {
    nav: &'static str,
    user: String,
    csrf: String,
    flash: Option<String>,
    summary: String,
    states: Vec<(&'static str, bool)>,
    roles: Vec<(&'static str, bool)>,
    query: String,
    rows: Vec<Row>,
    filtered: bool,
    add: MachineForm,
    form: MachineForm,
    role_options: Vec<(&'static str, bool)>,
    handoff_options: Vec<(&'static str, bool)>,
    ip_hint: String,
    version_hint: String,
    errors: FieldErrors,
}

async fn machines_page(
    state: &AppState,
    op: &crate::auth::Operator,
    filters: Filters,
    add: MachineForm,
    errors: FieldErrors,
) -> Response {
    let (list, summary) = match rows(state, &filters).await {
        Ok(r) => r,
        Err(e) => return ops_error_page(&e),
    };
    let chrome = Chrome::of(op);
    let default_version = match state.db.get_cluster(None).await {
        Ok(c) => c
            .and_then(|c| c.talos_version)
            .unwrap_or_else(|| state.config.boot.talos_version.clone()),
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let fields = FieldsView::new(
        MachineForm {
            mac: String::new(),
            ..add.clone()
        },
        &Lan::from_config(&state.config),
        &default_version,
    );
    let page = MachinesPage {
        nav: "machines",
        user: chrome.user,
        csrf: chrome.csrf,
        flash: flash_message(filters.flash.as_deref()),
        summary,
        states: Lifecycle::ALL
            .iter()
            .map(|s| (s.as_str(), s.as_str() == filters.state))
            .collect(),
        roles: Role::ALL
            .iter()
            .map(|r| (r.as_str(), r.as_str() == filters.role))
            .collect(),
        query: filters.query(),
        filtered: !filters.state.is_empty() || !filters.role.is_empty(),
        rows: list,
        add,
        form: fields.form,
        role_options: fields.role_options,
        handoff_options: fields.handoff_options,
        ip_hint: fields.ip_hint,
        version_hint: fields.version_hint,
        errors,
    };
    let mut r = render(&page);
    if !page.errors.is_empty() {
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    r
}

pub async fn ui_machines_get(
    State(state): State<AppState>,
    Extension(op): Op,
    Query(filters): Query<Filters>,
) -> Response {
    machines_page(
        &state,
        &op,
        filters,
        MachineForm::default(),
        FieldErrors::default(),
    )
    .await
}

#[derive(Template)]
#[template(path = "ui/_machine_rows.html")]
struct RowsPartial {
    rows: Vec<Row>,
    filtered: bool,
}

/// The table body alone, polled by the page's script for live updates.
pub async fn ui_machine_rows_get(
    State(state): State<AppState>,
    Query(filters): Query<Filters>,
) -> Response {
    match rows(&state, &filters).await {
        Ok((rows, summary)) => {
            let partial = RowsPartial {
                rows,
                filtered: !filters.state.is_empty() || !filters.role.is_empty(),
            };
            super::render_rows(&partial, &summary)
        }
        Err(e) => ops_error_page(&e),
    }
}

pub async fn ui_machines_post(
    State(state): State<AppState>,
    Extension(op): Op,
    Form(form): Form<MachineForm>,
) -> Response {
    let mac = match form.mac.parse::<Mac>() {
        Ok(mac) => mac,
        Err(e) => {
            // Every other field is checked too, so the form shows all its errors at once.
            let lan = Lan::from_config(&state.config);
            let mut errors = FieldErrors::one("mac", e.to_string());
            match machines::check_new_machine(&state.db, Some(&lan), &form.input()).await {
                Ok(()) => {}
                Err(e @ OpsError::Invalid(_)) => errors = errors.and(FieldErrors::from_ops(&e)),
                Err(e) => return ops_error_page(&e),
            }
            return machines_page(&state, &op, Filters::default(), form, errors).await;
        }
    };
    let lan = Lan::from_config(&state.config);
    let now = state.recorder.now_ms();
    match machines::save_machine(&state.db, Some(&lan), mac, &form.input(), true, false, now).await
    {
        Ok(_) => {
            state.changed();
            tracing::info!(%mac, by = %op.name(), "machine added");
            Redirect::to(&format!("/ui/machines/{mac}?flash=added")).into_response()
        }
        Err(e @ OpsError::Invalid(_)) => {
            let errors = FieldErrors::from_ops(&e);
            machines_page(&state, &op, Filters::default(), form, errors).await
        }
        Err(e) => ops_error_page(&e),
    }
}

/// A kernel log line as `dmesg` prints it, with a class by priority.
fn log_line(l: &crate::model::BootLogLine) -> (&'static str, String) {
    let class = match l.priority.as_deref() {
        Some("emerg" | "alert" | "crit" | "err") => "err",
        Some("warning") => "warn",
        _ => "",
    };
    let text = match l.clock {
        Some(us) => format!("[{:>5}.{:06}] {}", us / 1_000_000, us % 1_000_000, l.msg),
        None => l.msg.clone(),
    };
    (class, text)
}

pub struct EventView {
    pub at: String,
    pub kind: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "ui/machine.html")]
struct MachinePage {
    nav: &'static str,
    user: String,
    csrf: String,
    flash: Option<String>,
    title: String,
    m: Row,
    installed: bool,
    diskless: bool,
    assigned: bool,
    first_seen: String,
    last_seen: String,
    uuid: String,
    serial: String,
    cluster: String,
    talos: String,
    boot_problem: Option<String>,
    /// What its current boot waits for now, and the stuck flag with its causes.
    boot_wait: String,
    boot_stuck: Option<(String, Vec<String>)>,
    form: MachineForm,
    role_options: Vec<(&'static str, bool)>,
    handoff_options: Vec<(&'static str, bool)>,
    ip_hint: String,
    version_hint: String,
    errors: FieldErrors,
    confirm: Option<String>,
    events: Vec<EventView>,
    boot_log: Vec<(&'static str, String)>,
    config: Result<String, String>,
    revealed: bool,
}

/// The `{mac}` of a page's path; anything that is not a MAC is a "no such machine" page.
pub struct MacPath(pub Mac);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for MacPath {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        text.parse::<Mac>()
            .map(MacPath)
            .map_err(|e| error_page(StatusCode::NOT_FOUND, &format!("no such machine: {e}")))
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DetailQuery {
    #[serde(default)]
    flash: Option<String>,
}

struct DetailExtras {
    form: Option<MachineForm>,
    errors: FieldErrors,
    confirm: Option<String>,
    reveal: bool,
    flash: Option<String>,
}

async fn machine_page(
    state: &AppState,
    op: &crate::auth::Operator,
    mac: Mac,
    extras: DetailExtras,
) -> Response {
    let m = match state.db.get_machine(mac).await {
        Ok(Some(m)) => m,
        Ok(None) => return ops_error_page(&OpsError::NotFound(mac)),
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let events = match state.db.events(mac, 500).await {
        Ok(e) => e,
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let boot_log = match state.db.boot_log(mac, 2000).await {
        Ok(lines) => lines.iter().map(log_line).collect(),
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let now = state.recorder.now_ms();
    // Its current boot as the cluster page's timeline reads it: what it waits for, and why it
    // is stuck when it is.
    let boot =
        crate::model::timeline::timeline(&m, &events, &super::timeline::live_of(state, &m), now);
    let config = match configs::rendered_config(&state.db, mac, extras.reveal).await {
        Ok(text) => Ok(text),
        Err(OpsError::Db(e)) => return ops_error_page(&OpsError::Db(e)),
        Err(e) => Err(e.to_string()),
    };
    let talos = match boot_version(state, &m).await {
        Ok((v, from)) => format!("{v} ({from})"),
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let boot_problem = boot_problem(state, &m).await;
    let chrome = Chrome::of(op);
    let cluster_version = match state.db.get_cluster(Some(&m.cluster)).await {
        Ok(c) => c
            .and_then(|c| c.talos_version)
            .unwrap_or_else(|| state.config.boot.talos_version.clone()),
        Err(e) => return ops_error_page(&OpsError::Db(e)),
    };
    let fields = FieldsView::new(
        extras.form.unwrap_or_else(|| MachineForm::of(&m)),
        &Lan::from_config(&state.config),
        &cluster_version,
    );
    let status = if !extras.errors.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if extras.confirm.is_some() {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    let page = MachinePage {
        boot_wait: boot.wait.clone(),
        boot_stuck: boot.stuck.as_ref().map(|st| {
            (
                format!(
                    "stuck after {} for {}",
                    st.after.label(),
                    crate::model::timeline::span(st.for_ms)
                ),
                st.causes.clone(),
            )
        }),
        nav: "machines",
        user: chrome.user,
        csrf: chrome.csrf,
        flash: extras.flash,
        title: m.hostname.clone().unwrap_or_else(|| m.mac.to_string()),
        m: row(&m, events.last(), now),
        installed: m.installed,
        diskless: m.diskless,
        assigned: m.is_assigned(),
        first_seen: when(m.first_seen),
        last_seen: match m.last_seen {
            Some(_) => format!("{} ({})", when(m.last_seen), ago(now, m.last_seen)),
            None => "never".into(),
        },
        uuid: m.smbios_uuid.clone().unwrap_or_else(|| "—".into()),
        serial: m.serial.clone().unwrap_or_else(|| "—".into()),
        cluster: m.cluster.clone(),
        talos,
        boot_problem,
        form: fields.form,
        role_options: fields.role_options,
        handoff_options: fields.handoff_options,
        ip_hint: fields.ip_hint,
        version_hint: fields.version_hint,
        errors: extras.errors,
        confirm: extras.confirm,
        events: events
            .iter()
            .rev()
            .map(|e| EventView {
                at: when(Some(e.at)),
                kind: e.kind.to_string(),
                detail: e.detail.clone(),
            })
            .collect(),
        boot_log,
        config,
        revealed: extras.reveal,
    };
    let mut r = render(&page);
    *r.status_mut() = status;
    r
}

pub async fn ui_machine_get(
    State(state): State<AppState>,
    Extension(op): Op,
    MacPath(mac): MacPath,
    Query(q): Query<DetailQuery>,
) -> Response {
    let extras = DetailExtras {
        form: None,
        errors: FieldErrors::default(),
        confirm: None,
        reveal: false,
        flash: flash_message(q.flash.as_deref()),
    };
    machine_page(&state, &op, mac, extras).await
}

pub async fn ui_machine_post(
    State(state): State<AppState>,
    Extension(op): Op,
    MacPath(mac): MacPath,
    Form(form): Form<MachineForm>,
) -> Response {
    let lan = Lan::from_config(&state.config);
    let now = state.recorder.now_ms();
    let confirm = form.confirm.is_some();
    match machines::save_machine(
        &state.db,
        Some(&lan),
        mac,
        &form.input(),
        false,
        confirm,
        now,
    )
    .await
    {
        Ok(saved) => {
            state.changed();
            tracing::info!(%mac, role = %saved.machine.role, by = %op.name(), "machine saved");
            let flash = if saved.reinstall {
                "reinstall"
            } else {
                "saved"
            };
            Redirect::to(&format!("/ui/machines/{mac}?flash={flash}")).into_response()
        }
        Err(e @ OpsError::Invalid(_)) => {
            let extras = DetailExtras {
                errors: FieldErrors::from_ops(&e),
                form: Some(form),
                confirm: None,
                reveal: false,
                flash: None,
            };
            machine_page(&state, &op, mac, extras).await
        }
        Err(OpsError::NeedsConfirmation(question)) => {
            let extras = DetailExtras {
                errors: FieldErrors::default(),
                form: Some(form),
                confirm: Some(question),
                reveal: false,
                flash: None,
            };
            machine_page(&state, &op, mac, extras).await
        }
        Err(e) => ops_error_page(&e),
    }
}

pub async fn ui_machine_reinstall_post(
    State(state): State<AppState>,
    Extension(op): Op,
    MacPath(mac): MacPath,
) -> Response {
    match machines::reinstall_machine(&state.db, mac, state.recorder.now_ms()).await {
        Ok(_) => {
            state.changed();
            tracing::info!(%mac, by = %op.name(), "reinstall requested");
            Redirect::to(&format!("/ui/machines/{mac}?flash=reinstalling")).into_response()
        }
        Err(e) => ops_error_page(&e),
    }
}

pub async fn ui_machine_remove_post(
    State(state): State<AppState>,
    Extension(op): Op,
    MacPath(mac): MacPath,
) -> Response {
    match machines::remove_machine(&state.db, mac, state.recorder.now_ms()).await {
        Ok(()) => {
            state.changed();
            tracing::info!(%mac, by = %op.name(), "machine removed");
            Redirect::to("/ui?flash=removed").into_response()
        }
        Err(e) => ops_error_page(&e),
    }
}

pub async fn ui_machine_config_reveal_post(
    State(state): State<AppState>,
    Extension(op): Op,
    MacPath(mac): MacPath,
) -> Response {
    tracing::info!(%mac, by = %op.name(), "machine config revealed with secrets");
    let extras = DetailExtras {
        form: None,
        errors: FieldErrors::default(),
        confirm: None,
        reveal: true,
        flash: None,
    };
    machine_page(&state, &op, mac, extras).await
}
