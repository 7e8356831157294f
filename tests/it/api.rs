//! The operators' surfaces over real HTTP on loopback: authentication (sessions, CSRF, the login
//! rate limit, API tokens), secrets only on an explicit reveal, and the JSON API against its own
//! OpenAPI document.
//!
//! Mutating routes are enumerated, not listed by hand: the API's from the OpenAPI document it
//! serves (its router and document come from one list), the UI's from `ui::router`'s source, so
//! a route added later is covered without touching these tests.

use std::collections::BTreeSet;

use crate::kit::{self, no_redirects, session_cookie, Appliance, Session, ADMIN_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const CP_MAC: &str = "52:54:00:aa:00:01";
const WORKER_MAC: &str = "52:54:00:aa:00:02";

/// A running appliance with a logged-in session and an API token.
struct Api {
    app: Appliance,
    http: reqwest::Client,
    session: Session,
    token: String,
}

impl Api {
    async fn start() -> Api {
        let app = Appliance::start_with(|o| {
            o.events_port = Some(bootplane::config::PortSetting::Off);
            o.kernel_log_port = Some(bootplane::config::PortSetting::Off);
        })
        .await;
        let session = app.login().await;
        let http = no_redirects();
        let r = http
            .post(app.url("/api/v1/tokens"))
            .header("cookie", &session.cookie)
            .header("x-csrf-token", &session.csrf)
            .json(&json!({"name": "tests"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let token = r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        Api {
            app,
            http,
            session,
            token,
        }
    }

    /// A request to the API with the token.
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.app.url(&format!("/api/v1{path}")))
            .bearer_auth(&self.token)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.req(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    async fn doc(&self) -> Value {
        let (status, doc) = self.call(Method::GET, "/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        doc
    }

    /// A cluster with a VIP, a control plane and a worker.
    async fn with_cluster(&self) {
        let (status, body) = self
            .call(
                Method::POST,
                "/cluster/init",
                Some(json!({"name": "lab", "vip": "127.0.0.10"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        for (mac, role, host, ip) in [
            (CP_MAC, "controlplane", "cp-1", "127.0.0.21/8"),
            (WORKER_MAC, "worker", "w-1", "127.0.0.31/8"),
        ] {
            let (status, body) = self
                .call(
                    Method::POST,
                    "/machines",
                    Some(json!({"mac": mac, "role": role, "hostname": host, "ip": ip})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }

    /// Marks the cluster bootstrapped through the control plane, as the orchestrator would.
    async fn bootstrapped(&self) {
        let db = &self.app.db;
        let c = db.get_cluster(None).await.unwrap().unwrap();
        let mac: bootplane::model::Mac = CP_MAC.parse().unwrap();
        let ip = "127.0.0.21".parse().unwrap();
        db.decide_bootstrap(&c.name, c.generation, mac, ip, 2)
            .await
            .unwrap();
        db.finish_bootstrap(
            &c.name,
            c.generation,
            bootplane::model::BootstrapResult::Bootstrapped,
            "etcd is up",
            3,
        )
        .await
        .unwrap();
    }

    /// Everything an operator could change, to prove a refused request changed nothing.
    async fn snapshot(&self) -> String {
        let db = &self.app.db;
        let cluster = db.get_cluster(None).await.unwrap();
        let patches = match &cluster {
            Some(c) => db.list_patches(&c.name).await.unwrap(),
            None => Vec::new(),
        };
        let tokens: Vec<_> = db
            .list_tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.id, t.name, t.revoked_at))
            .collect();
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}",
            db.list_machines().await.unwrap(),
            cluster,
            patches,
            tokens
        )
    }
}

/// `(method, path)` of every operation in an OpenAPI document.
fn operations(doc: &Value) -> Vec<(Method, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            out.push((method, path.clone(), op.clone()));
        }
    }
    out
}

fn is_mutating(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Fills `{mac}` and `{id}` path parameters (and a boot asset's `{version}` and `{arch}`).
fn fill(path: &str, mac: &str, id: &str) -> String {
    path.replace("{mac}", mac)
        .replace("{id}", id)
        .replace("{version}", kit::VERSION)
        .replace("{arch}", "amd64")
}

/// The UI's routes that change something, read from `ui::router`'s source: every
/// `.route("path", …)` whose handlers include post/put/patch/delete.
fn ui_mutating_routes() -> Vec<(Method, String)> {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("server/ui/mod.rs"),
    )
    .unwrap();
    let start = src.find("pub fn router()").expect("ui::router exists");
    let end = start + src[start..].find("\n}\n").unwrap();
    let body = &src[start..end];
    let mut out = Vec::new();
    for chunk in body.split(".route(").skip(1) {
        let chunk = chunk.trim_start();
        let path = chunk
            .strip_prefix('"')
            .and_then(|rest| rest.split('"').next())
            .expect("route paths are string literals");
        // The handler expression runs to the next `.route(` (already split off).
        let handlers = &chunk[path.len() + 2..];
        for (word, method) in [
            ("post(", Method::POST),
            ("put(", Method::PUT),
            ("patch(", Method::PATCH),
            ("delete(", Method::DELETE),
        ] {
            let called = handlers.match_indices(word).any(|(i, _)| {
                i == 0 || !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if called {
                out.push((method, path.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_ui_route_scan_finds_the_known_forms() {
    let routes = ui_mutating_routes();
    for expected in [
        "/ui/machines",
        "/ui/machines/{mac}",
        "/ui/tokens",
        "/ui/tokens/{id}/revoke",
        "/logout",
    ] {
        assert!(
            routes
                .iter()
                .any(|(m, p)| *m == Method::POST && p == expected),
            "{expected} not found in {routes:?}"
        );
    }
    assert!(
        !routes.iter().any(|(_, p)| p == "/ui/machines/rows"),
        "a GET-only route was taken for a form: {routes:?}"
    );
}

#[tokio::test]
async fn every_mutating_route_needs_a_session_and_its_csrf_token() {
    let api = Api::start().await;
    api.with_cluster().await;
    let before = api.snapshot().await;
    let token_id = api.app.db.list_tokens().await.unwrap()[0].id.to_string();
    let mut api_routes: Vec<(Method, String)> = operations(&api.doc().await)
        .into_iter()
        .filter(|(m, _, _)| is_mutating(m))
        .map(|(m, p, _)| (m, format!("/api/v1{}", fill(&p, CP_MAC, &token_id))))
        .collect();
    api_routes.sort_by(|a, b| a.1.cmp(&b.1));
    let ui_routes: Vec<(Method, String)> = ui_mutating_routes()
        .into_iter()
        .map(|(m, p)| (m, fill(&p, CP_MAC, &token_id)))
        .collect();
    assert!(api_routes.len() >= 11, "{api_routes:?}");
    assert!(ui_routes.len() >= 10, "{ui_routes:?}");

    // Bodies that would be accepted if the request were authorised.
    let form = [
        ("name", "lab"),
        ("confirm", "lab"),
        ("role", "worker"),
        ("scope", "cluster"),
        ("body", "machine: {}"),
    ];
    let json_body = json!({"name": "x"});
    for (method, path) in &ui_routes {
        let url = api.app.url(path);
        // No session at all: sent to the login page, or refused.
        let r = api
            .http
            .request(method.clone(), &url)
            .form(&form)
            .send()
            .await
            .unwrap();
        let to_login = r.status().is_redirection()
            && r.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with("/login");
        assert!(
            to_login || r.status() == StatusCode::UNAUTHORIZED,
            "{method} {path} without a session answered {}",
            r.status()
        );
        // A session without its CSRF token, and with a wrong one.
        for csrf in [None, Some("wrong")] {
            let mut fields: Vec<(&str, &str)> = form.to_vec();
            if let Some(c) = csrf {
                fields.push(("csrf", c));
            }
            let r = api
                .http
                .request(method.clone(), &url)
                .header("cookie", &api.session.cookie)
                .form(&fields)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} with a session but CSRF {csrf:?}"
            );
        }
    }
    for (method, path) in &api_routes {
        let url = api.app.url(path);
        let r = api
            .http
            .request(method.clone(), &url)
            .json(&json_body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} without credentials"
        );
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{method} {path}: {body}");
        for csrf in [None, Some("wrong")] {
            let mut req = api
                .http
                .request(method.clone(), &url)
                .header("cookie", &api.session.cookie)
                .json(&json_body);
            if let Some(c) = csrf {
                req = req.header("x-csrf-token", c);
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} with a session but CSRF {csrf:?}"
            );
        }
        // A bearer token that is no token.
        let r = api
            .http
            .request(method.clone(), &url)
            .bearer_auth("bpt_not-a-real-token")
            .json(&json_body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused request changed data"
    );

    // The same session with its token does get through (the refusals above were about CSRF).
    let r = api
        .http
        .post(api.app.url("/ui/tokens"))
        .header("cookie", &api.session.cookie)
        .form(&[("csrf", api.session.csrf.as_str()), ("name", "from-ui")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = api
        .http
        .post(api.app.url("/api/v1/tokens"))
        .header("cookie", &api.session.cookie)
        .header("x-csrf-token", &api.session.csrf)
        .json(&json!({"name": "from-session"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_ne!(api.snapshot().await, before);
    api.app.stop().await;
}

#[tokio::test]
async fn pages_and_api_reads_need_an_operator_too() {
    let api = Api::start().await;
    let client = no_redirects();
    for path in [
        "/ui",
        "/ui/cluster",
        "/ui/tokens",
        "/ui/machines/rows",
        "/ui/images",
        "/ui/images/rows",
    ] {
        let r = client.get(api.app.url(path)).send().await.unwrap();
        assert!(r.status().is_redirection(), "{path}: {}", r.status());
    }
    for path in [
        "/api/v1/machines",
        "/api/v1/cluster",
        "/api/v1/tokens",
        "/api/v1/images",
        "/api/v1/openapi.json",
        "/api/v1/no-such-route",
    ] {
        let r = client.get(api.app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, body) = api.call(Method::GET, "/no-such-route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // What booting machines reach stays public.
    let r = client.get(api.app.url("/boot.ipxe")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    api.app.stop().await;
}

#[tokio::test]
async fn a_wrong_password_creates_no_session_and_repeated_failures_are_limited() {
    let app = Appliance::start().await;
    let client = no_redirects();
    let login = |user: &'static str, password: &'static str| {
        client
            .post(app.url("/login"))
            .form(&[("username", user), ("password", password)])
            .send()
    };
    let r = login("admin", "not the password").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(session_cookie(&r), None, "a failed login set a session");
    let r = login("nobody", ADMIN_PASSWORD).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(session_cookie(&r), None);
    // The right password works (so the refusals above were about the password).
    let r = login("admin", ADMIN_PASSWORD).await.unwrap();
    assert!(r.status().is_redirection());
    assert!(session_cookie(&r).is_some());
    // Five failures for a username from one address, then the limiter answers 429 to that
    // address, even for the right password.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(login("admin", "guess").await.unwrap().status());
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let r = login("admin", ADMIN_PASSWORD).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(session_cookie(&r), None);
    app.stop().await;
}

/// `bootplane_login_attempts_total{result="<result>"}` as `/metrics` shows it now.
async fn login_attempts(app: &Appliance, result: &str) -> u64 {
    let text = app.metrics().await;
    let prefix = format!("bootplane_login_attempts_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A client whose connections come from `source` (any 127.0.0.0/8 address is loopback).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn concurrent_wrong_logins_beyond_the_limit_are_refused_without_checking_the_password() {
    let app = Appliance::start().await;
    let client = no_redirects();
    let guesses = (0..30).map(|i| {
        client
            .post(app.url("/login"))
            .form(&[("username", "admin"), ("password", &format!("guess {i}"))])
            .send()
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    let wrong = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(wrong + refused, 30, "{statuses:?}");
    assert!(
        (1..=5).contains(&wrong),
        "{wrong} guesses were checked: {statuses:?}"
    );
    // What the appliance counted: no more than the limit reached Argon2.
    let verified = login_attempts(&app, "wrong").await + login_attempts(&app, "right").await;
    assert_eq!(verified, wrong as u64);
    assert_eq!(
        login_attempts(&app, "limited").await + login_attempts(&app, "busy").await,
        refused as u64
    );
    app.stop().await;
}

#[tokio::test]
async fn one_address_locked_out_does_not_lock_out_the_right_password_from_another() {
    let app = Appliance::start().await;
    let attacker = client_from("127.0.0.1");
    let operator = client_from("127.0.0.2");
    let login = |client: &reqwest::Client, password: &str| {
        client
            .post(app.url("/login"))
            .form(&[("username", "admin"), ("password", password)])
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(login(&attacker, "guess").await.unwrap().status());
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let r = login(&attacker, ADMIN_PASSWORD).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the locked-out address"
    );
    let r = login(&operator, ADMIN_PASSWORD).await.unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert!(session_cookie(&r).is_some());
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_username_is_refused_before_any_lookup() {
    let app = Appliance::start().await;
    let client = no_redirects();
    let huge = "a".repeat(512 * 1024);
    let r = client
        .post(app.url("/login"))
        .form(&[("username", huge.as_str()), ("password", "whatever")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body = r.text().await.unwrap();
    assert!(body.contains("at most 64 bytes"), "{body}");
    assert!(body.len() < 64 * 1024, "the name was echoed back");
    assert_eq!(login_attempts(&app, "bad_username").await, 1);
    assert_eq!(
        login_attempts(&app, "wrong").await,
        0,
        "a password was checked"
    );
    // 64 bytes is still a username (a wrong one).
    let r = client
        .post(app.url("/login"))
        .form(&[
            ("username", "b".repeat(64).as_str()),
            ("password", "whatever"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn after_login_only_local_paths_are_followed() {
    let app = Appliance::start().await;
    let client = no_redirects();
    // Each `next` as a browser would send it in the login form (percent-encoded).
    for (next, expected) in [
        ("/ui/cluster", "/ui/cluster"),
        ("/%09/evil.example", "/ui"),
        ("/%0a/evil.example", "/ui"),
        ("//evil.example", "/ui"),
        ("/%5Cevil.example", "/ui"),
        ("https://evil.example/", "/ui"),
        ("javascript:alert(1)", "/ui"),
    ] {
        let body = format!("username=admin&password={ADMIN_PASSWORD}&next={next}");
        let r = client
            .post(app.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_redirection(), "{next}: {}", r.status());
        let location = r.headers()["location"].to_str().unwrap();
        assert_eq!(location, expected, "next={next}");
        // The login page does not carry it either.
        let page = client
            .get(app.url(&format!("/login?next={next}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains(&format!("value=\"{expected}\"")),
            "next={next}: {page}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn login_over_https_with_the_generated_certificate_sets_a_secure_cookie() {
    let app = Appliance::start().await;
    let https = app.https.expect("the harness serves https");
    // The certificate bootplane made on its first start, trusted as the only root.
    let pem = std::fs::read(app.data.path().join("tls/cert.pem")).unwrap();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", https.port());
    let r = client
        .post(url("/login"))
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    let cookie = session_cookie(&r).unwrap();
    let r = client
        .get(url("/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Boot routes stay on plain HTTP.
    let r = client.get(url("/boot.ipxe")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The same login over plain HTTP gets no Secure cookie (the browser would not send it back).
    let r = no_redirects()
        .post(app.url("/login"))
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    app.stop().await;
}

#[tokio::test]
async fn api_tokens_work_until_revoked() {
    let api = Api::start().await;
    let (status, body) = api.call(Method::GET, "/machines", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A token changes things without any CSRF token.
    let (status, created) = api
        .call(Method::POST, "/tokens", Some(json!({"name": "ci"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let second = created["token"].as_str().unwrap().to_string();
    assert!(second.starts_with("bpt_"));
    let id = created["id"].as_i64().unwrap();
    let (_, list) = api.call(Method::GET, "/tokens", None).await;
    let listed = list.to_string();
    assert!(listed.contains("\"ci\""), "{listed}");
    assert!(!listed.contains(&second), "the token is shown once only");
    assert!(!listed.contains(&api.token));

    let with = |token: &str| {
        api.http
            .get(api.app.url("/api/v1/machines"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(with(&second).await.unwrap().status(), StatusCode::OK);
    let (status, _) = api
        .call(Method::POST, "/tokens", Some(json!({"name": ""})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, body) = api
        .call(Method::DELETE, &format!("/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        with(&second).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = api
        .call(Method::DELETE, &format!("/tokens/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoked twice");
    // The other token still works.
    assert_eq!(with(&api.token).await.unwrap().status(), StatusCode::OK);
    api.app.stop().await;
}

/// The secret values of the cluster's bundle (talosctl's secrets.yaml): keys, tokens, secrets.
async fn bundle_secrets(app: &Appliance) -> Vec<String> {
    let yaml = app.db.cluster_secrets("lab").await.unwrap().unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    fn walk(v: &serde_yaml_ng::Value, key: &str, out: &mut Vec<String>) {
        match v {
            serde_yaml_ng::Value::Mapping(map) => {
                for (k, v) in map {
                    walk(v, k.as_str().unwrap_or_default(), out);
                }
            }
            serde_yaml_ng::Value::String(s) if !matches!(key, "crt" | "id") && s.len() >= 16 => {
                out.push(s.clone())
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&doc, "", &mut out);
    out
}

#[tokio::test]
async fn secrets_never_leave_without_an_explicit_reveal() {
    let api = Api::start().await;
    api.with_cluster().await;
    let secrets = bundle_secrets(&api.app).await;
    assert!(
        secrets.len() >= 8,
        "{} secrets in the bundle",
        secrets.len()
    );
    let (status, body) = api
        .call(
            Method::PUT,
            "/cluster/patches",
            Some(json!({"scope": "cluster", "name": "ntp", "body": "apiVersion: v1alpha1\nkind: TimeSyncConfig\nntp:\n  servers: [time.example.com]\n"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let leaks = |what: &str, text: &str| {
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what} shows a secret");
        }
    };

    // Every documented GET, and every page.
    let doc = api.doc().await;
    let token_id = api.app.db.list_tokens().await.unwrap()[0].id.to_string();
    let mut seen = 0;
    for (method, path, _) in operations(&doc) {
        if method != Method::GET {
            continue;
        }
        for mac in [CP_MAC, WORKER_MAC] {
            let path = fill(&path, mac, &token_id);
            let r = api.req(Method::GET, &path).send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            leaks(&path, &r.text().await.unwrap());
            seen += 1;
        }
    }
    assert!(seen >= 24, "{seen}");
    for mac in ["", CP_MAC, WORKER_MAC] {
        for page in [
            "/ui".to_string(),
            "/ui/machines/rows".to_string(),
            "/ui/cluster".to_string(),
            "/ui/tokens".to_string(),
            format!("/ui/machines/{mac}"),
        ] {
            if page.ends_with('/') {
                continue;
            }
            let r = api
                .http
                .get(api.app.url(&page))
                .header("cookie", &api.session.cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{page}");
            leaks(&page, &r.text().await.unwrap());
        }
    }
    // The explicit reveal shows them: API and UI.
    let (status, body) = api
        .call(
            Method::GET,
            &format!("/machines/{CP_MAC}/config?reveal=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["revealed"], true);
    let revealed = body["config"].as_str().unwrap();
    let shown = secrets
        .iter()
        .filter(|s| revealed.contains(s.as_str()))
        .count();
    assert!(shown >= 6, "only {shown} secrets in the revealed config");
    let r = api
        .http
        .post(api.app.url(&format!("/ui/machines/{CP_MAC}/config/reveal")))
        .header("cookie", &api.session.cookie)
        .form(&[("csrf", api.session.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(
        secrets.iter().any(|s| page.contains(s.as_str())),
        "the UI's reveal shows no secret"
    );
    api.app.stop().await;
}

/// The schema a response is documented with, as a validator over the whole document.
fn response_validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = doc.clone();
    let obj = root.as_object_mut().unwrap();
    obj.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    obj.insert("allOf".into(), json!([schema]));
    jsonschema::validator_for(&root).unwrap()
}

#[tokio::test]
async fn the_openapi_document_validates_and_every_route_answers_as_documented() {
    let api = Api::start().await;
    api.with_cluster().await;
    api.bootstrapped().await;
    let doc = api.doc().await;
    let text = doc.to_string();
    let spec = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    assert_eq!(doc["servers"][0]["url"], "/api/v1");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["session"]["in"], "cookie");
    // Every $ref resolves.
    for r in text.split("\"$ref\":\"").skip(1) {
        let target = r.split('"').next().unwrap();
        let pointer = target.strip_prefix('#').expect("local references only");
        assert!(doc.pointer(pointer).is_some(), "dangling {target}");
    }
    let ops = operations(&doc);
    let ids: BTreeSet<&str> = ops
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), ops.len(), "operation ids are unique");
    for expected in [
        "machines_list_get",
        "machine_update_patch",
        "cluster_patch_put",
        "cluster_rebuild_post",
        "token_revoke_delete",
        "images_list_get",
        "images_add_post",
        "image_remove_delete",
        "images_verify_post",
        "images_schematic_post",
    ] {
        assert!(ids.contains(expected), "{expected} missing: {ids:?}");
    }

    let token_id = api.app.db.list_tokens().await.unwrap()[0].id.to_string();
    let documented = |op: &Value, status: StatusCode| op["responses"][status.as_str()].clone();
    for (method, path, op) in &ops {
        if *method == Method::GET {
            // As documented with good input: a 2xx that is documented, in its schema.
            let url = fill(path, CP_MAC, &token_id);
            let r = api.req(Method::GET, &url).send().await.unwrap();
            let status = r.status();
            let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
            let body = r.text().await.unwrap();
            let response = documented(op, status);
            assert!(
                status.is_success() && response.is_object(),
                "GET {url} answered undocumented {status}: {body}"
            );
            let (media, content) = response["content"]
                .as_object()
                .and_then(|c| c.iter().next())
                .expect("GET responses have content");
            assert!(
                content_type.starts_with(media.as_str()),
                "{url}: {content_type}"
            );
            if media == "application/json" {
                let value: Value = serde_json::from_str(&body).unwrap();
                let validator = response_validator(&doc, &content["schema"]);
                if let Err(e) = validator.validate(&value) {
                    panic!("GET {url}: body does not match its schema: {e}\n{body}");
                }
            }
            // A bad MAC in the path is a documented 400.
            if path.contains("{mac}") {
                let r = api
                    .req(Method::GET, &fill(path, "not-a-mac", &token_id))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
                assert!(documented(op, r.status()).is_object(), "{path}");
            }
        } else {
            // Bad input gets a documented 4xx with an error body.
            let mut attempts = Vec::new();
            if path.contains('{') {
                attempts.push((fill(path, "not-a-mac", "x"), Some("{}".to_string())));
            }
            if op["requestBody"].is_object() {
                let url = fill(path, CP_MAC, &token_id);
                attempts.push((url.clone(), Some("{not json".to_string())));
                attempts.push((url, Some(r#"{"no_such_field": 1}"#.to_string())));
            } else if !path.contains('{') {
                attempts.push((path.clone(), None));
            }
            assert!(!attempts.is_empty(), "{method} {path}");
            for (url, body) in attempts {
                let mut req = api.req(method.clone(), &url);
                if let Some(body) = &body {
                    req = req
                        .header("content-type", "application/json")
                        .body(body.clone());
                }
                let r = req.send().await.unwrap();
                let status = r.status();
                let text = r.text().await.unwrap();
                assert!(
                    status.is_client_error() && documented(op, status).is_object(),
                    "{method} {url} with {body:?} answered undocumented {status}: {text}"
                );
                let value: Value = serde_json::from_str(&text).unwrap();
                assert!(value["error"].is_string(), "{text}");
            }
        }
    }
    api.app.stop().await;
}

#[tokio::test]
async fn machines_are_managed_with_field_errors() {
    let api = Api::start().await;
    api.with_cluster().await;
    let (status, body) = api
        .call(
            Method::POST,
            "/machines",
            Some(json!({"mac": "52:54:00:aa:00:03", "role": "master", "hostname": "cp-1", "ip": "10.0.0.300/24"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"role") && fields.contains(&"ip"), "{body}");
    let (status, body) = api
        .call(
            Method::POST,
            "/machines",
            Some(json!({"mac": "zz", "role": "worker"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["fields"][0]["field"], "mac");
    // A duplicate hostname names the machine holding it.
    let (status, body) = api
        .call(
            Method::POST,
            "/machines",
            Some(json!({"mac": "52:54:00:aa:00:03", "role": "worker", "hostname": "w-1", "ip": "127.0.0.32/8"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains(WORKER_MAC), "{body}");

    let (_, all) = api.call(Method::GET, "/machines", None).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, cps) = api
        .call(Method::GET, "/machines?role=controlplane", None)
        .await;
    assert_eq!(cps.as_array().unwrap().len(), 1);
    assert_eq!(cps[0]["mac"], CP_MAC);
    let (status, _) = api.call(Method::GET, "/machines?state=asleep", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("/machines/{WORKER_MAC}"),
            Some(json!({"install_disk": "/dev/nvme0n1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["machine"]["install_disk"], "/dev/nvme0n1");
    assert_eq!(body["machine"]["hostname"], "w-1", "absent fields stay");
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/machines/{WORKER_MAC}/reinstall"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, events) = api
        .call(Method::GET, &format!("/machines/{WORKER_MAC}/events"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(events.to_string().contains("reinstall"), "{events}");
    let (status, _) = api
        .call(Method::DELETE, &format!("/machines/{WORKER_MAC}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call(Method::GET, &format!("/machines/{WORKER_MAC}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(Method::DELETE, &format!("/machines/{WORKER_MAC}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Rebuilding needs the cluster's name.
    let (status, body) = api
        .call(
            Method::POST,
            "/cluster/rebuild",
            Some(json!({"confirm": "yes"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["fields"][0]["field"], "confirm");
    let (status, body) = api
        .call(
            Method::POST,
            "/cluster/rebuild",
            Some(json!({"confirm": "lab"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["reinstalling"], 1);
    api.app.stop().await;
}

#[tokio::test]
async fn diskless_needs_talos_1_14_for_the_machine_and_keeps_its_cluster_there() {
    let api = Api::start().await;
    api.with_cluster().await;
    let diskless = "52:54:00:aa:00:07";
    let worker = json!({"mac": diskless, "role": "worker", "hostname": "w-7", "ip": "127.0.0.37/8", "diskless": true});
    let (status, body) = api
        .call(Method::POST, "/machines", Some(worker.clone()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["fields"][0]["field"], "diskless", "{body}");
    let message = body["fields"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("diskless machines need Talos 1.14 or newer")
            && message.contains("v1.13.9, its cluster's version"),
        "{message}"
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/machines",
            Some(json!({"mac": diskless, "role": "controlplane", "hostname": "cp-7", "ip": "127.0.0.37/8", "diskless": true, "talos_version": "v1.14.0-rc.1"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["fields"][0]["message"]
            .as_str()
            .unwrap()
            .contains("a control plane cannot be diskless"),
        "{body}"
    );
    let mut pinned = worker.clone();
    pinned["talos_version"] = json!("v1.14.0-rc.1");
    let (status, body) = api.call(Method::POST, "/machines", Some(pinned)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["diskless"], true, "{body}");
    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("/machines/{diskless}"),
            Some(json!({"talos_version": "v1.13.9"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["fields"][0]["field"], "diskless", "{body}");
    // Following a 1.14 cluster, the cluster may not go back below 1.14.
    let (status, body) = api
        .call(
            Method::PATCH,
            "/cluster",
            Some(json!({"talos_version": "v1.14.0-rc.1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call(
            Method::PATCH,
            &format!("/machines/{diskless}"),
            Some(json!({"talos_version": "none"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call(
            Method::PATCH,
            "/cluster",
            Some(json!({"talos_version": "v1.13.9"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["fields"][0]["field"], "talos_version", "{body}");
    assert!(body.to_string().contains("w-7"), "{body}");
    let (_, c) = api.call(Method::GET, "/cluster", None).await;
    assert_eq!(c["talos_version"], "v1.14.0-rc.1", "{c}");
    api.app.stop().await;
}

#[tokio::test]
async fn a_role_change_on_a_bootstrapped_control_plane_needs_confirmation() {
    let api = Api::start().await;
    api.with_cluster().await;
    let mac: bootplane::model::Mac = CP_MAC.parse().unwrap();
    // The node's evidence: its Talos API answered.
    let evidence = bootplane::model::lifecycle::Step::ReportedIn;
    api.app
        .db
        .step(mac, evidence, "reported in", 2)
        .await
        .unwrap();
    api.bootstrapped().await;
    let path = format!("/machines/{CP_MAC}");
    let change = json!({"role": "worker"});
    let (status, body) = api.call(Method::PATCH, &path, Some(change.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["hint"].as_str().unwrap().contains("confirm=true"),
        "{body}"
    );
    let (_, now) = api.call(Method::GET, &path, None).await;
    assert_eq!(
        now["role"], "controlplane",
        "nothing changed before confirming"
    );
    let (status, body) = api
        .call(Method::PATCH, &format!("{path}?confirm=true"), Some(change))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["machine"]["role"], "worker");
    assert_eq!(body["reinstall"], true);
    api.app.stop().await;
}

#[tokio::test]
async fn patches_preview_their_diff_before_they_are_saved() {
    let api = Api::start().await;
    api.with_cluster().await;
    let patch = json!({
        "scope": "worker",
        "name": "sysctl",
        "body": "machine:\n  sysctls:\n    net.core.somaxconn: \"65535\"\n",
    });
    let (status, body) = api
        .call(
            Method::PUT,
            "/cluster/patches?dry_run=true",
            Some(patch.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["saved"], false);
    let previews = body["previews"].as_array().unwrap();
    assert_eq!(previews.len(), 1, "only the worker is affected: {body}");
    assert_eq!(previews[0]["mac"], WORKER_MAC);
    let diff = previews[0]["diff"].as_str().unwrap();
    assert!(
        diff.lines()
            .any(|l| l.starts_with('+') && l.contains("somaxconn")),
        "{diff}"
    );
    let (_, list) = api.call(Method::GET, "/cluster/patches", None).await;
    assert_eq!(list, json!([]), "a dry run stores nothing");

    let (status, body) = api.call(Method::PUT, "/cluster/patches", Some(patch)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["saved"], true);
    let (_, list) = api.call(Method::GET, "/cluster/patches", None).await;
    assert_eq!(list[0]["name"], "sysctl");

    // A patch that breaks a config is refused on its body.
    let (status, body) = api
        .call(
            Method::PUT,
            "/cluster/patches",
            Some(json!({"scope": "cluster", "name": "bad", "body": "machine:\n  install:\n    disk: 42\n    image: [1]\n"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["fields"][0]["field"], "body");

    let (status, _) = api
        .call(
            Method::DELETE,
            "/cluster/patches?scope=worker&name=sysctl",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call(
            Method::DELETE,
            "/cluster/patches?scope=worker&name=sysctl",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api
        .call(
            Method::DELETE,
            "/cluster/patches?scope=everything&name=sysctl",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Settings with field errors, then a good change; downloads.
    let (status, body) = api
        .call(
            Method::PATCH,
            "/cluster",
            Some(json!({"pod_subnets": "x", "dns_domain": "bad_domain"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["fields"].as_array().unwrap().len(), 2, "{body}");
    let (status, body) = api
        .call(
            Method::PATCH,
            "/cluster",
            Some(json!({"kubernetes_version": "1.34.1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kubernetes_version"], "1.34.1");
    let r = api
        .req(Method::GET, "/cluster/kubeconfig")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("kubeconfig"));
    assert!(r.text().await.unwrap().contains("https://127.0.0.10:6443"));
    let (status, body) = api
        .call(
            Method::POST,
            "/cluster/init",
            Some(json!({"name": "again"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    api.app.stop().await;
}

/// The worker's config as the API renders it.
async fn config(api: &Api) -> String {
    let path = format!("/machines/{WORKER_MAC}/config");
    let (status, body) = api.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["config"].as_str().unwrap().to_string()
}

/// The documents of a rendered config, by kind (`v1alpha1` for the machine config).
fn kinds(yaml: &str) -> Vec<String> {
    yaml.split("\n---\n")
        .map(|doc| {
            let v: Value = serde_yaml_ng::from_str(doc).unwrap();
            v["kind"].as_str().unwrap_or("v1alpha1").to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_cluster_moves_to_a_newer_talos_line_only_when_every_config_still_holds() {
    let api = Api::start().await;
    let (status, body) = api
        .call(
            Method::POST,
            "/cluster/init",
            Some(json!({
                "name": "lab", "vip": "127.0.0.10", "talos_version": "v1.11.6",
                "nameservers": "10.0.0.53", "node_subnets": "auto",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["nameservers"], json!(["10.0.0.53"]));
    assert_eq!(body["node_subnets"], "auto");
    let (status, body) = api
        .call(
            Method::POST,
            "/machines",
            Some(json!({"mac": WORKER_MAC, "role": "worker", "hostname": "w-1", "ip": "127.0.0.31/8"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // machine.network is Talos 1.11's; 1.13's schema has no such field.
    let (status, body) = api
        .call(
            Method::PUT,
            "/cluster/patches",
            Some(json!({"scope": "cluster", "name": "kubespan",
                        "body": "machine:\n  network:\n    kubespan:\n      enabled: true\n"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v1_11 = config(&api).await;
    assert_eq!(kinds(&v1_11)[0], "v1alpha1");
    assert!(v1_11.contains("hostname: w-1") && v1_11.contains("- 10.0.0.53"));
    assert!(
        v1_11.contains("validSubnets:\n      - 127.0.0.0/8"),
        "{v1_11}"
    );

    let (status, body) = api
        .call(
            Method::PATCH,
            "/cluster",
            Some(json!({"talos_version": "v1.13.9"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let refusal = body.to_string();
    assert!(
        refusal.contains("'network' was unexpected"),
        "the refusal names the field: {refusal}"
    );
    assert_eq!(config(&api).await, v1_11, "nothing changed");

    let (status, body) = api
        .call(
            Method::DELETE,
            "/cluster/patches?scope=cluster&name=kubespan",
            None,
        )
        .await;
    assert!(status.is_success(), "{body}");
    let (status, body) = api
        .call(
            Method::PATCH,
            "/cluster",
            Some(json!({"talos_version": "v1.13.9", "node_subnets": "127.0.0.0/8"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v1_13 = config(&api).await;
    let kinds = kinds(&v1_13);
    for kind in [
        "HostnameConfig",
        "LinkAliasConfig",
        "LinkConfig",
        "ResolverConfig",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    assert!(
        !v1_13.contains("\n    network:"),
        "1.13 has no machine.network"
    );
    assert!(v1_13.contains("grubUseUKICmdline: true"));
    assert!(v1_13.contains("address: 10.0.0.53"));
    api.app.stop().await;
}

/// The CLI checks a machine's address against the LAN the last `serve` recorded, as the UI and
/// the API do: the appliance's own address is refused with the same message.
#[tokio::test]
async fn the_cli_refuses_the_appliances_own_address_as_the_api_does() {
    use bootplane::cli::{Cli, Command};
    use clap::Parser;
    let api = Api::start().await;
    api.with_cluster().await;
    let (status, body) = api
        .call(
            Method::POST,
            "/machines",
            Some(json!({"mac": "52:54:00:aa:00:09", "role": "worker", "hostname": "w-9", "ip": "127.0.0.1/8"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.to_string().contains("this appliance's own address"),
        "{body}"
    );
    let data = api.app.data.path().to_str().unwrap().to_string();
    let argv = [
        "bootplane",
        "machines",
        "add",
        "--mac",
        "52:54:00:aa:00:09",
        "--role",
        "worker",
        "--hostname",
        "w-9",
        "--ip",
        "127.0.0.1/8",
        "--data-dir",
        &data,
    ];
    let Command::Machines(cmd) = Cli::parse_from(argv).command else {
        panic!("not a machines command");
    };
    let mut out = Vec::new();
    let err = bootplane::cli::machines(cmd, &bootplane::support::clock::SystemClock, &mut out)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--ip") && err.contains("this appliance's own address"),
        "{err}"
    );
    let mac: bootplane::model::Mac = "52:54:00:aa:00:09".parse().unwrap();
    assert!(
        api.app.db.get_machine(mac).await.unwrap().is_none(),
        "nothing stored"
    );
    api.app.stop().await;
}
