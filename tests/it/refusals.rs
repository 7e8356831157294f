//! Refusals an operator meets on every surface with the same message: the real CLI binary on
//! the appliance's database, the JSON API and the web UI's forms over real HTTP.
//!
//! - A Kubernetes version the cluster's (or a machine's pinned) Talos line does not run.
//! - A kernel command line longer than the kernel keeps (2,047 bytes): at `serve` start, at
//!   schematic creation, at a factory add, at a machine's pin, and at boot (an explaining
//!   script, never a cut line).

use std::net::SocketAddr;
use std::path::Path;

use crate::kit::{self, no_redirects, Appliance, Session, BIN};
use bootplane::assets::{Asset, AssetFile, AssetSource, AssetState};
use bootplane::talos::Arch;
use reqwest::StatusCode;
use serde_json::{json, Value};

const MAC: &str = "52:54:00:aa:00:01";

/// Runs the real CLI on `data` and returns (success, stdout and stderr).
async fn cli(data: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An API call with the session (cookie and CSRF header).
async fn api(
    app: &Appliance,
    s: &Session,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = no_redirects()
        .request(method, app.url(&format!("/api/v1{path}")))
        .header("cookie", &s.cookie)
        .header("x-csrf-token", &s.csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A UI form post with the session; returns the status and the page.
async fn ui(
    app: &Appliance,
    s: &Session,
    path: &str,
    form: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut fields = form.to_vec();
    fields.push(("csrf", &s.csrf));
    let r = no_redirects()
        .post(app.url(path))
        .header("cookie", &s.cookie)
        .form(&fields)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The message of an API field error.
fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["field"] == name))
        .and_then(|f| f["message"].as_str())
        .unwrap_or_else(|| panic!("no error for {name}: {body}"))
}

/// The cluster settings form as its page fills it in, with these versions.
fn settings<'a>(talos: &'a str, kubernetes: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("name", "lab"),
        ("endpoint", "https://127.0.0.10:6443"),
        ("vip", "127.0.0.10"),
        ("talos_version", talos),
        ("kubernetes_version", kubernetes),
        ("install_image", ""),
        ("pod_subnets", "10.244.0.0/16"),
        ("service_subnets", "10.96.0.0/12"),
        ("dns_domain", "cluster.local"),
    ]
}

#[tokio::test]
async fn a_kubernetes_version_outside_the_talos_lines_range_is_refused_on_every_surface() {
    let app = Appliance::start().await;
    let s = app.login().await;
    let data = app.data.path();
    let too_new =
        "Kubernetes 1.36.3 is not supported by Talos 1.11 (it runs Kubernetes 1.29 to 1.34)";

    // cluster init
    let (ok, out) = cli(
        data,
        &[
            "cluster",
            "init",
            "--name",
            "lab",
            "--vip",
            "127.0.0.10",
            "--talos-version",
            "v1.11.6",
            "--kubernetes-version",
            "1.36.3",
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("--kubernetes-version: {too_new}")),
        "{out}"
    );
    let init =
        json!({"vip": "127.0.0.10", "talos_version": "v1.11.6", "kubernetes_version": "1.36.3"});
    let (status, body) = api(&app, &s, reqwest::Method::POST, "/cluster/init", init).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field(&body, "kubernetes_version"), too_new);
    let form = [
        ("vip", "127.0.0.10"),
        ("talos_version", "v1.11.6"),
        ("kubernetes_version", "1.36.3"),
    ];
    let (_, page) = ui(&app, &s, "/ui/cluster/init", &form).await;
    assert!(page.contains(too_new), "{page}");
    assert!(app
        .db
        .get_cluster(None)
        .await
        .unwrap()
        .unwrap()
        .initialised_at
        .is_none());

    // A cluster on 1.11 with Kubernetes 1.33.0 (which 1.9 does not run).
    let (ok, out) = cli(
        data,
        &[
            "cluster",
            "init",
            "--name",
            "lab",
            "--vip",
            "127.0.0.10",
            "--talos-version",
            "v1.11.6",
            "--kubernetes-version",
            "1.33.0",
        ],
    )
    .await;
    assert!(ok, "{out}");

    // cluster set --kubernetes-version
    let (ok, out) = cli(data, &["cluster", "set", "--kubernetes-version", "1.36.3"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("--kubernetes-version: {too_new}")),
        "{out}"
    );
    let (status, body) = api(
        &app,
        &s,
        reqwest::Method::PATCH,
        "/cluster",
        json!({"kubernetes_version": "1.36.3"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field(&body, "kubernetes_version"), too_new);
    let (_, page) = ui(&app, &s, "/ui/cluster", &settings("v1.11.6", "1.36.3")).await;
    assert!(page.contains(too_new), "{page}");

    // cluster set --talos-version: moving the line checks the cluster's Kubernetes again.
    let too_new_for_1_9 =
        "Kubernetes 1.33.0 is not supported by Talos 1.9 (it runs Kubernetes 1.27 to 1.32)";
    let (ok, out) = cli(data, &["cluster", "set", "--talos-version", "v1.9.6"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("--talos-version: {too_new_for_1_9}")),
        "{out}"
    );
    let (status, body) = api(
        &app,
        &s,
        reqwest::Method::PATCH,
        "/cluster",
        json!({"talos_version": "v1.9.6"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field(&body, "talos_version"), too_new_for_1_9);
    let (_, page) = ui(&app, &s, "/ui/cluster", &settings("v1.9.6", "1.33.0")).await;
    assert!(page.contains(too_new_for_1_9), "{page}");
    let c = app.db.get_cluster(None).await.unwrap().unwrap();
    assert_eq!(c.talos_version.as_deref(), Some("v1.11.6"));
    assert_eq!(c.kubernetes_version.as_deref(), Some("1.33.0"));

    // A machine pinned to a line that does not run the cluster's Kubernetes.
    let machine = [
        "--mac",
        MAC,
        "--role",
        "worker",
        "--hostname",
        "w-1",
        "--ip",
        "127.0.0.31/8",
        "--talos-version",
        "v1.9.6",
    ];
    let (ok, out) = cli(data, &[&["machines", "add"][..], &machine[..]].concat()).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("--talos-version: {too_new_for_1_9}")),
        "{out}"
    );
    let add = json!({"mac": MAC, "role": "worker", "hostname": "w-1", "ip": "127.0.0.31/8", "talos_version": "v1.9.6"});
    let (status, body) = api(&app, &s, reqwest::Method::POST, "/machines", add).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(field(&body, "talos_version"), too_new_for_1_9);
    let form = [
        ("mac", MAC),
        ("role", "worker"),
        ("hostname", "w-1"),
        ("ip", "127.0.0.31/8"),
        ("talos_version", "v1.9.6"),
    ];
    let (_, page) = ui(&app, &s, "/ui/machines", &form).await;
    assert!(page.contains(too_new_for_1_9), "{page}");
    // And `machines set` on a machine already there.
    let (ok, out) = cli(data, &[&["machines", "add"][..], &machine[..8]].concat()).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(
        data,
        &["machines", "set", "--mac", MAC, "--talos-version", "v1.9.6"],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("--talos-version: {too_new_for_1_9}")),
        "{out}"
    );
    let mac = MAC.parse().unwrap();
    assert_eq!(
        app.db
            .get_machine(mac)
            .await
            .unwrap()
            .unwrap()
            .talos_version,
        None
    );
    app.stop().await;
}

/// Two schematic arguments that leave no machine room: with the shortest base arguments and
/// config URL they come to more than 2,047 bytes.
fn long_args() -> Vec<String> {
    vec![
        format!("bootplane.test.a={}", "a".repeat(950)),
        format!("bootplane.test.b={}", "b".repeat(950)),
    ]
}

const LIMIT_TEXT: &str =
    "bytes, over the 2,047 bytes the kernel keeps (it drops what is past them without a word)";

#[tokio::test]
async fn serve_refuses_kernel_args_that_leave_no_machine_a_whole_command_line() {
    let data = tempfile::tempdir().unwrap();
    let args = long_args().join(" ");
    let serve = tokio::process::Command::new(BIN)
        .args(["serve", "--interface", "lo", "--advertise-ip", "127.0.0.1"])
        .args(["--dhcp-mode", "off", "--http-port", "0", "--tftp-port", "0"])
        .arg("--kernel-args")
        .arg(&args)
        .arg("--data-dir")
        .arg(data.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), serve)
        .await
        .expect("serve started instead of refusing its --kernel-args")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--kernel-args: the kernel command line would be")
            && stderr.contains(LIMIT_TEXT)
            && stderr.contains("--kernel-args 1,9"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_schematic_whose_arguments_no_machine_can_boot_with_is_refused_on_every_surface() {
    let app = Appliance::start().await;
    let s = app.login().await;
    let args = long_args();
    // The CLI refuses before it asks the factory (none listens here).
    let (ok, out) = tokio::process::Command::new(BIN)
        .args(["images", "schematic", "--factory-url", "http://127.0.0.1:9"])
        .args(["--kernel-arg", &args[0], "--kernel-arg", &args[1]])
        .output()
        .await
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("--kernel-arg: the kernel command line would be") && out.contains(LIMIT_TEXT),
        "{out}"
    );
    let (status, body) = api(
        &app,
        &s,
        reqwest::Method::POST,
        "/images/schematics",
        json!({"kernel_args": args}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = field(&body, "kernel_args");
    assert!(
        message.contains(LIMIT_TEXT) && message.contains("schematic arguments 1,9"),
        "{message}"
    );
    let joined = args.join(" ");
    let (_, page) = ui(
        &app,
        &s,
        "/ui/images/schematic",
        &[("kernel_args", &joined)],
    )
    .await;
    assert!(page.contains(LIMIT_TEXT), "{page}");
    app.stop().await;
}

/// An Image Factory double whose every schematic bakes in `long_args` (its cmdline file), and
/// which serves no image files.
async fn long_cmdline_factory() -> SocketAddr {
    use axum::extract::Path as UrlPath;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/image/{schematic}/{version}/{file}",
        axum::routing::get(
            |UrlPath((_, _, file)): UrlPath<(String, String, String)>| async move {
                if file.starts_with("cmdline-metal-") {
                    Ok(format!("talos.platform=metal {}", long_args().join(" ")))
                } else {
                    Err(StatusCode::NOT_FOUND)
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn a_factory_add_whose_schematic_makes_the_command_line_too_long_is_refused_on_every_surface()
{
    let factory = long_cmdline_factory().await;
    let factory_url = format!("http://{factory}");
    let app = Appliance::start_with(|o| o.factory_url = Some(factory_url.clone())).await;
    let s = app.login().await;
    let schematic = "a".repeat(64);
    let (ok, out) = tokio::process::Command::new(BIN)
        .args([
            "images",
            "add",
            "--version",
            "v1.11.6",
            "--schematic",
            &schematic,
        ])
        .args(["--factory-url", &factory_url])
        .arg("--data-dir")
        .arg(app.data.path())
        .arg("--images-dir")
        .arg(app.images.path())
        .output()
        .await
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert!(!ok, "{out}");
    let refused =
        format!("schematic {schematic} for Talos v1.11.6: the kernel command line would be");
    assert!(out.contains(&refused) && out.contains(LIMIT_TEXT), "{out}");
    let (status, body) = api(
        &app,
        &s,
        reqwest::Method::POST,
        "/images",
        json!({"version": "v1.11.6", "schematic": schematic}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains(&refused), "{body}");
    let form = [
        ("source", "factory"),
        ("schematic", schematic.as_str()),
        ("version", "v1.11.6"),
        ("arch", "amd64"),
    ];
    let (_, page) = ui(&app, &s, "/ui/images", &form).await;
    assert!(page.contains(&refused), "{page}");
    assert!(
        app.db.list_images().await.unwrap().is_empty(),
        "nothing recorded"
    );
    app.stop().await;
}

/// Records assets of `version` amd64 (the files `Appliance::add_assets` writes) whose
/// schematic bakes in `long_args`, as an add made before the check, or under other settings,
/// left them.
async fn record_long_assets(app: &Appliance, version: &str) {
    use sha2::Digest as _;
    let file = |name: &str, bytes: &[u8]| AssetFile {
        origin: format!("http://factory.test/{name}"),
        digest: Some(bootplane::assets::Digest {
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
        }),
    };
    let (kernel, initramfs) = (kit::pattern(1000, 11), kit::pattern(1000, 12));
    app.db
        .put_image(&Asset {
            version: version.into(),
            arch: Arch::Amd64,
            source: AssetSource::Factory {
                schematic: "a".repeat(64),
            },
            kernel: file("kernel-amd64", &kernel),
            initramfs: file("initramfs-amd64.xz", &initramfs),
            kernel_args: long_args(),
            state: AssetState::Ready,
            updated_at: 1,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_pin_to_assets_that_make_the_command_line_too_long_is_refused_on_every_surface() {
    let app = Appliance::start().await;
    let s = app.login().await;
    let data = app.data.path();
    record_long_assets(&app, "v1.11.5").await;
    let refused = "Talos v1.11.5 amd64: the kernel command line would be";
    let machine = [
        "--mac",
        MAC,
        "--role",
        "worker",
        "--hostname",
        "w-1",
        "--ip",
        "127.0.0.31/8",
        "--talos-version",
        "v1.11.5",
    ];
    let (ok, out) = cli(data, &[&["machines", "add"][..], &machine[..]].concat()).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("--talos-version: {refused}")) && out.contains(LIMIT_TEXT),
        "{out}"
    );
    let add = json!({"mac": MAC, "role": "worker", "hostname": "w-1", "ip": "127.0.0.31/8", "talos_version": "v1.11.5"});
    let (status, body) = api(&app, &s, reqwest::Method::POST, "/machines", add).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = field(&body, "talos_version");
    assert!(
        message.starts_with(refused) && message.contains("schematic arguments 1,9"),
        "{message}"
    );
    let form = [
        ("mac", MAC),
        ("role", "worker"),
        ("hostname", "w-1"),
        ("ip", "127.0.0.31/8"),
        ("talos_version", "v1.11.5"),
    ];
    let (_, page) = ui(&app, &s, "/ui/machines", &form).await;
    assert!(page.contains(refused), "{page}");
    let (ok, out) = cli(data, &[&["machines", "add"][..], &machine[..8]].concat()).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(
        data,
        &[
            "machines",
            "set",
            "--mac",
            MAC,
            "--talos-version",
            "v1.11.5",
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("--talos-version: {refused}")),
        "{out}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_boot_is_never_given_a_cut_command_line() {
    let app = Appliance::start().await;
    app.add_assets(1000, 1000);
    let mac: bootplane::model::Mac = MAC.parse().unwrap();
    let (ok, out) = cli(
        app.data.path(),
        &[
            "machines",
            "add",
            "--mac",
            MAC,
            "--role",
            "worker",
            "--hostname",
            "w-1",
            "--ip",
            "127.0.0.31/8",
        ],
    )
    .await;
    assert!(ok, "{out}");
    // Assets recorded afterwards (by another process) with a schematic too long for it.
    record_long_assets(&app, kit::VERSION).await;
    let r = reqwest::get(app.url(&format!("/machine.ipxe?mac={MAC}&arch=x86_64")))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let script = r.text().await.unwrap();
    assert!(
        !script.lines().any(|l| l.starts_with("kernel ")),
        "no kernel is booted: {script}"
    );
    assert!(
        script.contains("the kernel command line would be") && script.contains(LIMIT_TEXT),
        "{script}"
    );
    assert!(script.contains("chain --replace --autofree"), "{script}");
    let events = app
        .wait_events(mac, |e| {
            e.detail.contains("the kernel command line would be")
        })
        .await;
    assert!(!events.is_empty());
    let m = app.db.get_machine(mac).await.unwrap().unwrap();
    assert_ne!(m.state, bootplane::model::Lifecycle::Booting);
    app.stop().await;
}
