//! Refusals an operator meets on every surface with the same message: the real CLI binary on
//! the appliance's database, the JSON API and the web UI's forms over real HTTP.
//!
//! - A Kubernetes version the cluster's (or a machine's pinned) Talos line does not run.
//! - A kernel command line longer than the kernel keeps (2,047 bytes): at `serve` start, at
//!   schematic creation, at a factory add, at a machine's pin, and at boot (an explaining
//!   script, never a cut line).
//! - Bad machine input (`machines add|set`, `POST|PATCH /machines`, the machine forms): one
//!   table, the same refusal from each surface; the confirmation a bootstrapped control
//!   plane's role change needs (`--confirm` on the CLI, with the UI's effect); and no way on
//!   the CLI to mark a machine installed.

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
    // A probe machine polls until the record counts; the machine under test asks only then,
    // so its one script is the refusal and its state shows what a refusal does to it.
    const PROBE: &str = "52:54:00:aa:00:02";
    for (mac, name, ip) in [
        (PROBE, "w-probe", "127.0.0.32/8"),
        (MAC, "w-1", "127.0.0.31/8"),
    ] {
        let (ok, out) = cli(
            app.data.path(),
            &[
                "machines",
                "add",
                "--mac",
                mac,
                "--role",
                "worker",
                "--hostname",
                name,
                "--ip",
                ip,
            ],
        )
        .await;
        assert!(ok, "{out}");
    }
    // Assets recorded afterwards (by another process) with a schematic too long for it.
    record_long_assets(&app, kit::VERSION).await;
    // Another process's record counts within the script cache's bound (a record read and a
    // script made moments before may serve until then), never later.
    let limit =
        std::time::Duration::from_millis((bootplane::state::SCRIPT_TTL_MS as u64) + 1000 + 2000);
    let started = std::time::Instant::now();
    let script_for = |mac: &'static str| {
        let url = app.url(&format!("/machine.ipxe?mac={mac}&arch=x86_64"));
        async move {
            let r = reqwest::get(url).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.text().await.unwrap()
        }
    };
    loop {
        let script = script_for(PROBE).await;
        if !script.lines().any(|l| l.starts_with("kernel ")) {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "a kernel is still booted after {limit:?}: {script}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let script = script_for(MAC).await;
    assert!(
        !script.lines().any(|l| l.starts_with("kernel ")),
        "{script}"
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

/// A page's text as a reader sees it: the entities the templates escape, unescaped.
fn unescape(page: &str) -> String {
    page.replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// What a machine case does: add a new machine, or change a known one.
#[derive(Clone, Copy, Debug)]
enum Change {
    Add(&'static str),
    Set(&'static str),
}

/// A change, its fields as typed, the field refused, and the message beside it.
type MachineCase = (
    Change,
    Vec<(&'static str, &'static str)>,
    &'static str,
    String,
);

const CP: [(&str, &str, &str); 3] = [
    ("52:54:00:aa:00:11", "cp-1", "127.0.0.11/8"),
    ("52:54:00:aa:00:12", "cp-2", "127.0.0.12/8"),
    ("52:54:00:aa:00:13", "cp-3", "127.0.0.13/8"),
];
const WORKER: (&str, &str, &str) = ("52:54:00:aa:00:21", "w-1", "127.0.0.21/8");

/// A cluster with the VIP 127.0.0.10, three control planes and a worker, added by the CLI.
async fn inventory(app: &Appliance, s: &Session) {
    let init = json!({"name": "lab", "vip": "127.0.0.10", "talos_version": "v1.11.6"});
    let (status, body) = api(app, s, reqwest::Method::POST, "/cluster/init", init).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let workers = [("worker", WORKER)];
    let cps = CP.iter().map(|m| ("controlplane", *m));
    for (role, (mac, host, ip)) in cps.chain(workers) {
        let args = [
            "machines",
            "add",
            "--mac",
            mac,
            "--role",
            role,
            "--hostname",
            host,
            "--ip",
            ip,
        ];
        let (ok, out) = cli(app.data.path(), &args).await;
        assert!(ok, "{out}");
    }
}

/// The machine form of `mac`'s page, filled in as stored, with `changes` made.
async fn detail_form(
    app: &Appliance,
    mac: &str,
    changes: &[(&str, &str)],
) -> Vec<(String, String)> {
    let m = app
        .db
        .get_machine(mac.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut form: Vec<(String, String)> = [
        ("role", m.role.to_string()),
        ("hostname", m.hostname.clone().unwrap_or_default()),
        ("ip", m.ip.map(|i| i.to_string()).unwrap_or_default()),
        (
            "gateway",
            m.gateway.map(|g| g.to_string()).unwrap_or_default(),
        ),
        ("dns", String::new()),
        ("install_disk", m.install_disk.clone().unwrap_or_default()),
        ("disk_handoff", m.disk_handoff.to_string()),
        ("talos_version", m.talos_version.clone().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in changes {
        match form.iter_mut().find(|(name, _)| name == k) {
            Some(field) => field.1 = v.to_string(),
            None => form.push((k.to_string(), v.to_string())),
        }
    }
    form
}

#[tokio::test]
async fn bad_machine_input_is_refused_with_the_same_message_by_the_cli_the_api_and_the_ui() {
    let app = Appliance::start().await;
    let s = app.login().await;
    let data = app.data.path();
    inventory(&app, &s).await;
    let new = "52:54:00:aa:00:31";
    let worker = |ip: &'static str| vec![("role", "worker"), ("hostname", "w-2"), ("ip", ip)];
    #[rustfmt::skip]
    let cases: Vec<MachineCase> = vec![
        (Change::Add(WORKER.0), worker("127.0.0.22/8"), "mac",
            format!("{} is already in the inventory", WORKER.0)),
        (Change::Add(new), vec![("role", "master"), ("hostname", "w-2"), ("ip", "127.0.0.22/8")], "role",
            "'master' is not one of: unassigned, controlplane, worker".into()),
        (Change::Add(new), worker("192.168.7.44/24"), "ip",
            "192.168.7.44 is outside the LAN subnet 127.0.0.0/8 that bootplane serves".into()),
        (Change::Add(new), worker("127.0.0.1/8"), "ip",
            "127.0.0.1 is this appliance's own address: pick another".into()),
        (Change::Add(new), worker("127.0.0.21/8"), "ip",
            format!("127.0.0.21 is already used by {}", WORKER.0)),
        (Change::Add(new), vec![("role", "worker"), ("hostname", "cp-1"), ("ip", "127.0.0.22/8")], "hostname",
            format!("cp-1 is already used by {}", CP[0].0)),
        (Change::Add(new), vec![("role", "controlplane"), ("hostname", "cp-4"), ("ip", "127.0.0.14/8")], "role",
            "the cluster already has three control planes (cp-1, cp-2, cp-3); make this machine a worker".into()),
        (Change::Add(new), worker("127.0.0.10/8"), "ip", "this is the cluster's VIP address".into()),
        (Change::Add(new), vec![("role", "worker"), ("hostname", "w-2"), ("ip", "127.0.0.22/8"), ("gateway", "10.0.0.1")], "gateway",
            "10.0.0.1 is outside the machine's subnet 127.0.0.0/8".into()),
        (Change::Set(CP[0].0), vec![("ip", "127.1.0.11/24")], "ip",
            "the cluster's VIP 127.0.0.10 is outside this address's subnet 127.1.0.0/24: a control plane needs an address in the VIP's subnet".into()),
        (Change::Set(WORKER.0), vec![("install_disk", "sda")], "install_disk",
            "'sda' must be a device path such as /dev/sda".into()),
        (Change::Set(WORKER.0), vec![("role", "unassigned"), ("ip", "none"), ("gateway", "127.0.0.1")], "gateway",
            "a gateway needs a static address".into()),
    ];
    for (change, fields, field_name, message) in cases {
        let case = format!("{change:?} {fields:?}");
        let before = format!("{:?}", app.db.list_machines().await.unwrap());
        // The CLI, with the field's flag.
        let mut args: Vec<String> = match change {
            Change::Add(mac) => vec!["machines".into(), "add".into(), "--mac".into(), mac.into()],
            Change::Set(mac) => vec!["machines".into(), "set".into(), "--mac".into(), mac.into()],
        };
        for (k, v) in &fields {
            args.push(format!("--{}", k.replace('_', "-")));
            args.push(v.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = cli(data, &args).await;
        assert!(!ok, "{case}: {out}");
        let flag = field_name.replace('_', "-");
        assert!(
            out.contains(&format!("--{flag}: {message}")),
            "{case}: CLI said {out}"
        );
        // The API, with the field's name.
        let mut body = serde_json::Map::new();
        for (k, v) in &fields {
            body.insert(k.to_string(), json!(v));
        }
        let (status, body) = match change {
            Change::Add(mac) => {
                body.insert("mac".into(), json!(mac));
                api(
                    &app,
                    &s,
                    reqwest::Method::POST,
                    "/machines",
                    Value::Object(body),
                )
                .await
            }
            Change::Set(mac) => {
                let path = format!("/machines/{mac}");
                api(&app, &s, reqwest::Method::PATCH, &path, Value::Object(body)).await
            }
        };
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{case}: {body}");
        assert_eq!(field(&body, field_name), message, "{case}");
        // The UI's forms, beside the field.
        let (status, page) = match change {
            Change::Add(mac) => {
                let mut form = fields.clone();
                form.push(("mac", mac));
                ui(&app, &s, "/ui/machines", &form).await
            }
            Change::Set(mac) => {
                let form = detail_form(&app, mac, &fields).await;
                let form: Vec<(&str, &str)> =
                    form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                ui(&app, &s, &format!("/ui/machines/{mac}"), &form).await
            }
        };
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{case}");
        let page = unescape(&page);
        assert!(
            page.contains(&format!("<span class=\"field-error\">{message}</span>")),
            "{case}: the UI did not show {message}"
        );
        let after = format!("{:?}", app.db.list_machines().await.unwrap());
        assert_eq!(before, after, "{case}: nothing changed");
    }
    app.stop().await;
}

/// Marks `mac` installed and the cluster bootstrapped through cp-1, as the node's report and
/// the orchestrator would.
async fn installed_and_bootstrapped(app: &Appliance, macs: &[&str]) {
    for mac in macs {
        let mac = mac.parse().unwrap();
        let evidence = bootplane::model::lifecycle::Step::ReportedIn;
        app.db.step(mac, evidence, "reported in", 2).await.unwrap();
    }
    let c = app.db.get_cluster(None).await.unwrap().unwrap();
    let ip = "127.0.0.11".parse().unwrap();
    app.db
        .decide_bootstrap(&c.name, c.generation, CP[0].0.parse().unwrap(), ip, 3)
        .await
        .unwrap();
    app.db
        .finish_bootstrap(
            &c.name,
            c.generation,
            bootplane::model::BootstrapResult::Bootstrapped,
            "etcd is up",
            4,
        )
        .await
        .unwrap();
}

/// What a change left: the machine's role, installed flag and state, and the events it added.
async fn effect(app: &Appliance, mac: &str, events_before: usize) -> String {
    let mac: bootplane::model::Mac = mac.parse().unwrap();
    let m = app.db.get_machine(mac).await.unwrap().unwrap();
    let events = app.db.events(mac, 1000).await.unwrap();
    let added: Vec<String> = events[events_before..]
        .iter()
        .map(|e| format!("{}: {}", e.kind, e.detail))
        .collect();
    format!("{} installed={} {} {added:?}", m.role, m.installed, m.state)
}

async fn event_count(app: &Appliance, mac: &str) -> usize {
    app.db
        .events(mac.parse().unwrap(), 1000)
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn the_cli_asks_for_confirm_where_the_ui_and_the_api_ask_and_then_does_what_the_ui_does() {
    let app = Appliance::start().await;
    let s = app.login().await;
    let data = app.data.path();
    inventory(&app, &s).await;
    let (cp1, cp2, cp3) = (CP[0].0, CP[1].0, CP[2].0);
    installed_and_bootstrapped(&app, &[cp1, cp2, cp3]).await;
    let stored = format!("{:?}", app.db.list_machines().await.unwrap());

    // Each surface asks the same question about cp-1, and changes nothing.
    let (ok, out) = cli(data, &["machines", "set", "--mac", cp1, "--role", "worker"]).await;
    assert!(!ok, "{out}");
    let (status, body) = api(
        &app,
        &s,
        reqwest::Method::PATCH,
        &format!("/machines/{cp1}"),
        json!({"role": "worker"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let question = body["error"].as_str().unwrap().to_string();
    assert!(
        question.starts_with("cp-1 is a control plane of a bootstrapped cluster"),
        "{question}"
    );
    assert!(
        out.contains(&question),
        "the CLI asks as the API does: {out}"
    );
    assert!(out.contains("repeat with --confirm"), "{out}");
    let form = detail_form(&app, cp1, &[("role", "worker")]).await;
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, page) = ui(&app, &s, &format!("/ui/machines/{cp1}"), &form).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(unescape(&page).contains(&question), "the UI asks the same");
    assert_eq!(
        stored,
        format!("{:?}", app.db.list_machines().await.unwrap()),
        "nothing changed before the confirmation"
    );

    // Confirmed: the CLI on cp-1, the UI on cp-2, the API on cp-3 do the same.
    let counts = [
        event_count(&app, cp1).await,
        event_count(&app, cp2).await,
        event_count(&app, cp3).await,
    ];
    let (ok, out) = cli(
        data,
        &[
            "machines",
            "set",
            "--mac",
            cp1,
            "--role",
            "worker",
            "--confirm",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("at its next network boot"), "{out}");
    let form = detail_form(&app, cp2, &[("role", "worker"), ("confirm", "true")]).await;
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, _) = ui(&app, &s, &format!("/ui/machines/{cp2}"), &form).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, body) = api(
        &app,
        &s,
        reqwest::Method::PATCH,
        &format!("/machines/{cp3}?confirm=true"),
        json!({"role": "worker"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ui_effect = effect(&app, cp2, counts[1]).await;
    assert!(
        ui_effect.starts_with("worker installed=false"),
        "{ui_effect}"
    );
    assert!(ui_effect.contains("reinstall"), "{ui_effect}");
    assert_eq!(effect(&app, cp1, counts[0]).await, ui_effect, "CLI and UI");
    assert_eq!(effect(&app, cp3, counts[2]).await, ui_effect, "API and UI");
    app.stop().await;
}

#[tokio::test]
async fn nothing_on_the_cli_marks_a_machine_installed() {
    let app = Appliance::start().await;
    let s = app.login().await;
    let data = app.data.path();
    inventory(&app, &s).await;
    let mac: bootplane::model::Mac = WORKER.0.parse().unwrap();
    let refused = "only its node marks a machine installed";
    for args in [
        &["machines", "set", "--mac", WORKER.0, "--installed", "true"][..],
        &[
            "machines",
            "set",
            "--mac",
            WORKER.0,
            "--installed=true",
            "--role",
            "worker",
        ][..],
        &[
            "machines",
            "add",
            "--mac",
            "52:54:00:aa:00:31",
            "--installed",
            "true",
        ][..],
    ] {
        let (ok, out) = cli(data, args).await;
        assert!(!ok, "{args:?}: {out}");
        assert!(
            out.contains(refused) || out.contains("unexpected argument '--installed'"),
            "{args:?}: {out}"
        );
    }
    let (_, out) = cli(
        data,
        &["machines", "set", "--mac", WORKER.0, "--installed", "true"],
    )
    .await;
    assert!(out.contains(refused), "set explains: {out}");
    let m = app.db.get_machine(mac).await.unwrap().unwrap();
    assert!(!m.installed, "not installed");
    assert!(app
        .db
        .get_machine("52:54:00:aa:00:31".parse().unwrap())
        .await
        .unwrap()
        .is_none());

    // --installed false reinstalls, as the UI's reinstall action does.
    installed_and_bootstrapped(&app, &[WORKER.0, CP[0].0]).await;
    let counts = [
        event_count(&app, WORKER.0).await,
        event_count(&app, CP[0].0).await,
    ];
    let (ok, out) = cli(
        data,
        &["machines", "set", "--mac", WORKER.0, "--installed", "false"],
    )
    .await;
    assert!(ok, "{out}");
    let path = format!("/ui/machines/{}/reinstall", CP[0].0);
    let (status, _) = ui(&app, &s, &path, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let by_cli = effect(&app, WORKER.0, counts[0]).await;
    let by_ui = effect(&app, CP[0].0, counts[1]).await;
    assert!(
        by_cli.starts_with("worker installed=false booting"),
        "{by_cli}"
    );
    assert_eq!(
        by_cli.split_once(' ').unwrap().1,
        by_ui.split_once(' ').unwrap().1,
        "CLI and UI"
    );
    app.stop().await;
}
