//! The operators' web UI: server-rendered askama pages (`templates/ui/`), plain HTML forms that
//! work without JavaScript, and a small script (`web/app.js`) for live updates.
//!
//! Every route here except `/login` and `/static/*` sits behind `auth::require_operator`, which
//! also checks the CSRF token of every form post.

mod cluster;
mod devices;
mod images;
mod machines;
mod timeline;
mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;

use crate::auth::{self, Operator};
use crate::ops::OpsError;
use crate::state::AppState;

/// Pages behind the login.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(machines::ui_machines_get))
        .route("/ui/machines", post(machines::ui_machines_post))
        .route("/ui/machines/rows", get(machines::ui_machine_rows_get))
        .route(
            "/ui/machines/{mac}",
            get(machines::ui_machine_get).post(machines::ui_machine_post),
        )
        .route(
            "/ui/machines/{mac}/reinstall",
            post(machines::ui_machine_reinstall_post),
        )
        .route(
            "/ui/machines/{mac}/remove",
            post(machines::ui_machine_remove_post),
        )
        .route(
            "/ui/machines/{mac}/config/reveal",
            post(machines::ui_machine_config_reveal_post),
        )
        .route(
            "/ui/cluster",
            get(cluster::ui_cluster_get).post(cluster::ui_cluster_post),
        )
        .route("/ui/cluster/init", post(cluster::ui_cluster_init_post))
        .route(
            "/ui/cluster/patches",
            post(cluster::ui_cluster_patches_post),
        )
        .route(
            "/ui/cluster/patches/remove",
            post(cluster::ui_cluster_patch_remove_post),
        )
        .route(
            "/ui/cluster/rebuild",
            post(cluster::ui_cluster_rebuild_post),
        )
        .route(
            "/ui/cluster/talosconfig",
            get(cluster::ui_cluster_talosconfig_get),
        )
        .route(
            "/ui/cluster/kubeconfig",
            get(cluster::ui_cluster_kubeconfig_get),
        )
        .route(
            "/ui/images",
            get(images::ui_images_get).post(images::ui_images_add_post),
        )
        .route("/ui/images/rows", get(images::ui_image_rows_get))
        .route(
            "/ui/cluster/timeline",
            get(timeline::ui_cluster_timeline_get),
        )
        .route("/ui/images/remove", post(images::ui_images_remove_post))
        .route("/ui/images/verify", post(images::ui_images_verify_post))
        .route(
            "/ui/images/schematic",
            post(images::ui_images_schematic_post),
        )
        .route(
            "/ui/tokens",
            get(tokens::ui_tokens_get).post(tokens::ui_tokens_post),
        )
        .route("/ui/tokens/{id}/revoke", post(tokens::ui_token_revoke_post))
        .route("/ui/devices", get(devices::ui_devices_get))
        .route("/ui/devices/decide", post(devices::ui_devices_decide_post))
        .route("/ui/devices/arm", post(devices::ui_devices_arm_post))
        .route("/logout", post(ui_logout_post))
}

/// The login page, static assets and the root redirect.
pub fn public_router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/login", get(ui_login_get).post(ui_login_post))
        .route("/static/app.css", get(static_css_get))
        .route("/static/app.js", get(static_js_get))
        // Browsers ask for /favicon.ico on every page; an SVG answers it (and the icon link).
        .route("/favicon.ico", get(favicon_get))
        .route("/static/favicon.svg", get(favicon_get))
}

const APP_CSS: &str = include_str!("../../web/app.css");
const FAVICON: &str = include_str!("../../web/favicon.svg");
const APP_JS: &str = include_str!("../../web/app.js");

async fn static_css_get() -> Response {
    static_asset(APP_CSS, "text/css; charset=utf-8")
}

async fn favicon_get() -> Response {
    static_asset(FAVICON, "image/svg+xml")
}

async fn static_js_get() -> Response {
    static_asset(APP_JS, "text/javascript; charset=utf-8")
}

fn static_asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage<'a> {
    title: String,
    message: &'a str,
}

/// The HTML error page: a status and a sentence for people, never internals.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status
        .canonical_reason()
        .unwrap_or("Something went wrong")
        .to_string();
    let page = ErrorPage { title, message };
    match page.render() {
        Ok(html) => (status, no_store(), Html(html)).into_response(),
        Err(_) => (status, message.to_string()).into_response(),
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// Renders a page; a template failure becomes a plain 500 page.
fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (no_store(), Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this page could not be drawn; the log says why",
            )
        }
    }
}

/// A live list's rows (a fragment the page's script swaps in), with the list's one-line
/// summary in the `x-summary` header; a template failure is a bare 500.
fn render_rows(rows: &impl Template, summary: &str) -> Response {
    match rows.render() {
        Ok(html) => (
            [(
                header::HeaderName::from_static("x-summary"),
                HeaderValue::from_str(summary).unwrap_or(HeaderValue::from_static("")),
            )],
            Html(html),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Maps an operation's failure that is not about a field to a page.
fn ops_error_page(e: &OpsError) -> Response {
    match e {
        OpsError::NotFound(_) => error_page(StatusCode::NOT_FOUND, &e.to_string()),
        OpsError::Db(inner) => {
            tracing::error!(error = %inner, "database error behind a page");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again",
            )
        }
        _ => error_page(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// Field errors keyed by field name, for showing beside each field.
#[derive(Debug, Default)]
pub struct FieldErrors(HashMap<String, String>);

impl FieldErrors {
    pub fn from_ops(e: &OpsError) -> FieldErrors {
        let mut map = HashMap::new();
        if let OpsError::Invalid(errors) = e {
            for fe in errors {
                map.entry(fe.field.clone())
                    .and_modify(|m: &mut String| {
                        m.push_str("; ");
                        m.push_str(&fe.message);
                    })
                    .or_insert_with(|| fe.message.clone());
            }
        }
        FieldErrors(map)
    }

    pub fn one(field: &str, message: impl Into<String>) -> FieldErrors {
        FieldErrors(HashMap::from([(field.to_string(), message.into())]))
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    /// These errors and `other`'s (a field named in both keeps this one's message).
    pub fn and(mut self, other: FieldErrors) -> FieldErrors {
        for (field, message) in other.0 {
            self.0.entry(field).or_insert(message);
        }
        self
    }

    /// Every message, field first, sorted by field: for the banner atop a refused form.
    pub fn all(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self.0.iter().map(|(f, m)| (f.clone(), m.clone())).collect();
        all.sort();
        all
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// "3 min ago", for live lists.
pub fn ago(now: i64, at: Option<i64>) -> String {
    let Some(at) = at else {
        return "never".into();
    };
    let secs = (now - at).max(0) / 1000;
    match secs {
        0..=4 => "just now".into(),
        5..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// An absolute UTC time for detail pages.
pub fn when(at: Option<i64>) -> String {
    match at {
        Some(_) => format!("{} UTC", crate::support::time::format_time(at)),
        None => "never".into(),
    }
}

/// Where the login page may send an operator back to: only a path on this appliance. Anything
/// a browser could read as another host is refused: `//host` and `/\host` (a scheme-relative
/// URL), control characters and spaces (browsers drop a tab or newline, so `/\t/host` becomes
/// `//host`), backslashes anywhere, non-ASCII, and anything not starting with `/` (a scheme).
fn safe_next(next: &str) -> String {
    let bytes = next.as_bytes();
    let ok = bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && bytes.iter().all(|b| b.is_ascii_graphic() && *b != b'\\')
        && !next.starts_with("/login")
        && next.len() < 512;
    if ok {
        next.to_string()
    } else {
        "/ui".to_string()
    }
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    next: String,
    username: String,
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: String,
}

async fn ui_login_get(Query(q): Query<LoginQuery>) -> Response {
    render(&LoginPage {
        next: safe_next(&q.next),
        username: String::new(),
        error: None,
    })
}

#[derive(Debug, Default, Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

async fn ui_login_post(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    over_tls: Option<Extension<crate::http::serve::OverTls>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let now = state.recorder.now_ms();
    let ip = auth::client_ip(connect.as_ref().map(|Extension(c)| c));
    let username = form.username.trim();
    let page = |status: StatusCode, username: &str, error: String| {
        let mut r = render(&LoginPage {
            next: safe_next(&form.next),
            username: username.to_string(),
            error: Some(error),
        });
        *r.status_mut() = status;
        r
    };
    let too_many = |wait: u64, error: String| {
        let mut r = page(StatusCode::TOO_MANY_REQUESTS, username, error);
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    };
    // Refused before any lookup or limiter key: no account has such a name.
    if username.len() > auth::MAX_USERNAME_BYTES {
        state.metrics.login_attempt("bad_username");
        tracing::warn!(%ip, user = ?auth::bounded(username), bytes = username.len(), "login refused: username too long");
        return page(
            StatusCode::BAD_REQUEST,
            "",
            format!(
                "Usernames are at most {} bytes long.",
                auth::MAX_USERNAME_BYTES
            ),
        );
    }
    // The attempt is charged before the password is checked, so concurrent guesses cannot
    // overtake the limit; a right password (or one never checked) gets it back.
    if let Err(auth::LoginRefusal::Limited(wait)) = state.login_limiter.reserve(ip, username, now) {
        state.metrics.login_attempt("limited");
        tracing::warn!(%ip, user = ?username, "login refused: too many failed attempts");
        return too_many(
            wait,
            format!("Too many failed attempts. Try again in {wait} s."),
        );
    }
    let Some(slot) = state.login_limiter.verify_slot().await else {
        state.login_limiter.refund(ip, username, now);
        state.metrics.login_attempt("busy");
        tracing::warn!(%ip, user = ?username, "login refused: too many logins being checked");
        return too_many(
            1,
            "Too many logins are being checked right now. Try again in a moment.".into(),
        );
    };
    let checked = auth::check_login(&state.db, username, &form.password).await;
    drop(slot);
    match checked {
        Ok(Some(user_id)) => {
            state.login_limiter.refund(ip, username, now);
            state.metrics.login_attempt("right");
            match auth::start_session(&state.db, user_id, now).await {
                Ok(id) => {
                    tracing::info!(%ip, user = ?username, "operator logged in");
                    // Secure when this request came over HTTPS, or through a proxy that
                    // terminates it (`--secure-cookies`).
                    let secure = state.config.ui.secure_cookies || over_tls.is_some();
                    let cookie = auth::session_cookie(&id, secure);
                    let mut r = Redirect::to(&safe_next(&form.next)).into_response();
                    if let Ok(v) = HeaderValue::from_str(&cookie) {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                    }
                    r
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a session");
                    page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        username,
                        "Cannot log in right now: the database did not answer.".into(),
                    )
                }
            }
        }
        Ok(None) => {
            state.metrics.login_attempt("wrong");
            tracing::warn!(%ip, user = ?username, "failed login");
            page(
                StatusCode::UNAUTHORIZED,
                username,
                "Wrong username or password.".into(),
            )
        }
        Err(e) => {
            state.login_limiter.refund(ip, username, now);
            tracing::error!(error = %e, "cannot check a login");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                username,
                "Cannot log in right now: the database did not answer.".into(),
            )
        }
    }
}

async fn ui_logout_post(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = auth::session_id(&headers) {
        if let Err(e) = state.db.delete_session(&auth::sha256_hex(&id)).await {
            tracing::error!(error = %e, "cannot end a session");
        }
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// What every page's layout needs.
pub struct Chrome {
    pub user: String,
    pub csrf: String,
}

impl Chrome {
    pub fn of(op: &Operator) -> Chrome {
        Chrome {
            user: op.name(),
            csrf: op.csrf().to_string(),
        }
    }
}

pub(crate) type Op = Extension<Operator>;

/// Messages shown after a redirect, chosen by code so a link cannot put words on the page.
pub fn flash_message(code: Option<&str>) -> Option<String> {
    let text = match code? {
        "added" => "Machine added.",
        "saved" => "Saved.",
        "reinstall" => "Saved. The machine reinstalls at its next network boot (its installed disk boots first: make it network-boot).",
        "reinstalling" => "The machine reinstalls at its next network boot (its installed disk boots first: make it network-boot).",
        "removed" => "Machine removed. Its history is kept; if it boots again it shows up as discovered.",
        "revoked" => "Token revoked.",
        "cluster-saved" => "Cluster settings saved.",
        "patch-saved" => "Patch saved.",
        "patch-removed" => "Patch removed.",
        "rebuild" => "Rebuild started: every machine reinstalls at its next network boot, and etcd is bootstrapped again once the control planes are back.",
        "initialised" => "Cluster initialised: its secrets bundle is made and stored.",
        _ => return None,
    };
    Some(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_redirects_stay_on_this_appliance() {
        assert_eq!(
            safe_next("/ui/machines/52:54:00:00:00:01"),
            "/ui/machines/52:54:00:00:00:01"
        );
        assert_eq!(safe_next("/ui/images?x=1"), "/ui/images?x=1");
        for evil in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "/\\/evil",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /evil.example",
            "/\u{7f}/evil.example",
            "/ui/\\evil",
            "/ü",
            "javascript:alert(1)",
            "",
            "/login?next=/x",
        ] {
            assert_eq!(safe_next(evil), "/ui", "{evil}");
        }
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(100_000, Some(99_000)), "just now");
        assert_eq!(ago(100_000, Some(70_000)), "30 s ago");
        assert_eq!(ago(1_000_000, Some(0)), "16 min ago");
        assert_eq!(ago(1, None), "never");
    }
}
