//! Boot assets: fetched from a local double of the Talos Image Factory (its real URL paths),
//! verified, and served by a running appliance only when they match their SHA-256.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::kit::{self, pattern, Appliance, VERSION};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bootplane::assets::{
    AddOutcome, AddRequest, AssetSource, AssetState, Images, ImagesError, SourceSpec,
};
use bootplane::config::PortSetting;
use bootplane::db::Db;
use bootplane::model::{Machine, Role};
use bootplane::talos::Arch;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

const SCHEMATIC: &str = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What the factory double saw: each request's path and Range header.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, Option<String>)>>,
}

impl Seen {
    fn count(&self, file: &str) -> usize {
        let r = self.requests.lock().unwrap();
        r.iter().filter(|(p, _)| p.ends_with(file)).count()
    }
    fn ranges(&self, file: &str) -> Vec<Option<String>> {
        let r = self.requests.lock().unwrap();
        r.iter()
            .filter(|(p, _)| p.ends_with(file))
            .map(|(_, r)| r.clone())
            .collect()
    }
}

struct Factory {
    /// `kernel-amd64` and `initramfs-amd64.xz` of `SCHEMATIC` / `VERSION`.
    files: HashMap<String, Vec<u8>>,
    seen: Seen,
    /// Cut the first kernel response in the middle (the connection closes).
    cut_once: AtomicBool,
    /// Pause between chunks, so concurrent requests overlap.
    slow: bool,
    /// Schematics it knows (the vanilla one, and those posted): ID → extra kernel args.
    schematics: Mutex<HashMap<String, Vec<String>>>,
    /// Bodies posted to `/schematics`, as received.
    posted: Mutex<Vec<String>>,
}

/// What the factory puts on every v1.11 metal amd64 command line (talos-facts.md 5.3).
const FACTORY_CMDLINE: &str = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge \
    pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1";

/// Checks a schematic the way the Image Factory does: YAML with only `customization`, whose
/// known keys have their types. `Err` is the 400 answer.
fn check_schematic(value: &serde_yaml_ng::Value) -> Result<Vec<String>, String> {
    use serde_yaml_ng::Value;
    let strings = |v: &Value, what: &str| -> Result<Vec<String>, String> {
        v.as_sequence()
            .ok_or(format!("{what} is not a list"))?
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or(format!("{what}: not a string"))
            })
            .collect()
    };
    let top = value.as_mapping().ok_or("not a mapping")?;
    let mut args = Vec::new();
    for (k, v) in top {
        if k.as_str() != Some("customization") {
            return Err(format!("unknown field {k:?}"));
        }
        let c = v.as_mapping().ok_or("customization is not a mapping")?;
        for (k, v) in c {
            match k.as_str() {
                Some("extraKernelArgs") => args = strings(v, "extraKernelArgs")?,
                Some("systemExtensions") => {
                    let e = v.as_mapping().ok_or("systemExtensions is not a mapping")?;
                    for (k, v) in e {
                        if k.as_str() != Some("officialExtensions") {
                            return Err(format!("unknown field {k:?}"));
                        }
                        strings(v, "officialExtensions")?;
                    }
                }
                Some("meta" | "secureboot" | "overlay") => {}
                _ => return Err(format!("unknown field {k:?}")),
            }
        }
    }
    Ok(args)
}

/// `POST /schematics`: the ID is the SHA-256 of the schematic's canonical YAML.
async fn factory_schematics_post(State(f): State<Arc<Factory>>, body: String) -> Response {
    f.posted.lock().unwrap().push(body.clone());
    let value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let args = match check_schematic(&value) {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let id = sha256(serde_yaml_ng::to_string(&value).unwrap().as_bytes());
    f.schematics.lock().unwrap().insert(id.clone(), args);
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "id": id })),
    )
        .into_response()
}

/// The Image Factory's download path: `/image/<schematic>/<version>/<file>`, with Range.
async fn factory_image_get(
    State(f): State<Arc<Factory>>,
    UrlPath((schematic, version, file)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap().to_string());
    f.seen.requests.lock().unwrap().push((
        format!("/image/{schematic}/{version}/{file}"),
        range.clone(),
    ));
    let known = f.schematics.lock().unwrap().get(&schematic).cloned();
    if let (Some(args), "cmdline-metal-amd64", VERSION) = (&known, file.as_str(), version.as_str())
    {
        let mut line = FACTORY_CMDLINE.to_string();
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        return line.into_response();
    }
    let Some(bytes) = f
        .files
        .get(&file)
        .filter(|_| known.is_some() && version == VERSION)
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = bytes.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .map(|n| n.parse::<usize>().unwrap())
        .unwrap_or(0);
    let body = bytes[start..].to_vec();
    let cut = file.starts_with("kernel") && f.cut_once.swap(false, Ordering::SeqCst);
    let slow = f.slow;
    let chunks: Vec<Vec<u8>> = body.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let half = chunks.len() / 2;
    let stream =
        futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if cut && i == half {
                return Err(std::io::Error::other("connection cut"));
            }
            Ok::<_, std::io::Error>(c)
        });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, (len - start).into());
    h.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
    if start > 0 {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", len - 1).parse().unwrap(),
        );
    }
    response
}

use futures::StreamExt;

/// Starts the factory double; returns its base URL and the files it serves.
async fn factory(cut_once: bool, slow: bool) -> (String, Arc<Factory>, Vec<u8>, Vec<u8>) {
    let kernel = pattern(1_500_000, 21);
    let initramfs = pattern(2_500_000, 22);
    let f = Arc::new(Factory {
        files: HashMap::from([
            ("kernel-amd64".to_string(), kernel.clone()),
            ("initramfs-amd64.xz".to_string(), initramfs.clone()),
        ]),
        seen: Seen::default(),
        cut_once: AtomicBool::new(cut_once),
        slow,
        schematics: Mutex::new(HashMap::from([(SCHEMATIC.to_string(), Vec::new())])),
        posted: Mutex::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = Router::new()
        .route(
            "/image/{schematic}/{version}/{file}",
            get(factory_image_get),
        )
        .route("/schematics", axum::routing::post(factory_schematics_post))
        .with_state(Arc::clone(&f));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, f, kernel, initramfs)
}

fn from_factory(base: &str) -> AddRequest {
    AddRequest {
        version: VERSION.into(),
        arch: Arch::Amd64,
        source: SourceSpec::Factory {
            base: base.into(),
            schematic: SCHEMATIC.into(),
        },
        expect_kernel: None,
        expect_initramfs: None,
    }
}

async fn http_get(url: String) -> (u16, Vec<u8>) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn asset(base: &str, file: &str) -> (u16, Vec<u8>) {
    http_get(format!("{base}/assets/{VERSION}/{file}")).await
}

fn controlplane() -> Machine {
    let mut m = Machine::discovered("52:54:00:12:34:56".parse().unwrap());
    m.role = Role::Controlplane;
    m.hostname = Some("cp-1".into());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_download_is_verified_and_served_byte_for_byte() {
    let app = Appliance::start().await;
    let (base, f, kernel, initramfs) = factory(false, false).await;
    let store = Images::new(app.images.path().to_path_buf(), app.db.clone());
    let mut req = from_factory(&base);
    req.expect_kernel = Some(sha256(&kernel).to_uppercase());
    let AddOutcome::Added(added) = store.add(&req, None).await.unwrap() else {
        panic!("not added")
    };
    assert_eq!(added.state, AssetState::Ready);
    assert_eq!(
        added.kernel.origin,
        format!("{base}/image/{SCHEMATIC}/{VERSION}/kernel-amd64")
    );
    assert_eq!(
        added.initramfs.digest.as_ref().unwrap().sha256,
        sha256(&initramfs)
    );
    assert_eq!(f.seen.count("initramfs-amd64.xz"), 1);

    let (code, body) = asset(&app.url(""), "vmlinuz-amd64").await;
    assert_eq!(code, 200);
    assert!(body == kernel, "kernel bytes differ");
    let (code, body) = asset(&app.url(""), "initramfs-amd64.xz").await;
    assert_eq!(code, 200);
    assert!(body == initramfs, "initramfs bytes differ");
    // No partial file is left beside them.
    let names: Vec<String> = std::fs::read_dir(app.images.path().join(VERSION))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".part")), "{names:?}");
    assert!(names.contains(&"vmlinuz-amd64".to_string()), "{names:?}");

    // Changed on disk while serving: checked again before the next serve, and refused.
    std::fs::write(
        app.images.path().join(VERSION).join("vmlinuz-amd64"),
        pattern(1_500_000, 99),
    )
    .unwrap();
    let (code, body) = asset(&app.url(""), "vmlinuz-amd64").await;
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("does not match its recorded sha256"));

    // Adding it again repairs it: fetched again (the kernel only now changed), back in service.
    let AddOutcome::Added(_) = store.add(&from_factory(&base), None).await.unwrap() else {
        panic!("a broken asset is fetched again")
    };
    assert_eq!(f.seen.count("kernel-amd64"), 2);
    let (code, body) = asset(&app.url(""), "vmlinuz-amd64").await;
    assert_eq!(code, 200);
    assert!(body == kernel, "kernel bytes differ");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_is_refused_and_nothing_is_served() {
    let app = Appliance::start().await;
    let (base, _f, _kernel, _initramfs) = factory(false, false).await;
    let store = Images::new(app.images.path().to_path_buf(), app.db.clone());
    let mut req = from_factory(&base);
    req.expect_initramfs = Some("0".repeat(64));
    let err = store.add(&req, None).await.unwrap_err();
    assert!(
        matches!(err, ImagesError::Mismatch { ref file, .. } if file == "initramfs-amd64.xz"),
        "{err}"
    );
    let recorded = app
        .db
        .get_image(VERSION, Arch::Amd64)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&recorded.state, AssetState::Broken(r) if r.contains("sha256 mismatch")),
        "{recorded:?}"
    );
    // Neither file went into place, and neither is served.
    assert!(!app
        .images
        .path()
        .join(VERSION)
        .join("vmlinuz-amd64")
        .exists());
    for file in ["vmlinuz-amd64", "initramfs-amd64.xz"] {
        let (code, _) = asset(&app.url(""), file).await;
        assert_eq!(code, 503, "{file}");
    }
    // A machine waiting for them is told why on its console, and asks again.
    app.db.add_machine(&controlplane(), 1).await.unwrap();
    let (code, body) = http_get(app.url("/machine.ipxe?mac=52:54:00:12:34:56")).await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("are out of service"), "{body}");
    assert!(body.contains("sha256 mismatch"), "{body}");
    assert!(body.contains("chain --replace --autofree"), "{body}");
    assert!(!body.contains("\nkernel "), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_be_reached_is_said_plainly_and_not_called_broken() {
    let app = Appliance::start().await;
    // A port nothing listens on: the connection is refused before any byte.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let store = Images::new(app.images.path().to_path_buf(), app.db.clone());
    let req = AddRequest {
        source: SourceSpec::Release { base: base.clone() },
        ..from_factory(&base)
    };
    let err = store.add(&req, None).await.unwrap_err();
    assert!(
        matches!(&err, ImagesError::Unreachable { host, reason } if host == "127.0.0.1" && reason == "connection refused"),
        "{err}"
    );
    let recorded = app
        .db
        .get_image(VERSION, Arch::Amd64)
        .await
        .unwrap()
        .unwrap();
    let AssetState::Broken(reason) = &recorded.state else {
        panic!("{recorded:?}");
    };
    assert!(
        reason.starts_with("download failed: cannot reach 127.0.0.1: connection refused"),
        "{reason}"
    );
    assert!(!reason.contains("resume"), "{reason}");
    // The boot assets page says "failed", not "broken" (which means a tampered or changed file).
    let session = app.login().await;
    let rows = kit::http::no_redirects()
        .get(app.url("/ui/images/rows"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(rows.contains("state-asset-failed"), "{rows}");
    assert!(!rows.contains("state-asset-broken"), "{rows}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_with_a_range_and_completes() {
    let app = Appliance::start().await;
    let (base, f, kernel, _initramfs) = factory(true, false).await;
    let store = Images::new(app.images.path().to_path_buf(), app.db.clone());
    let added = match store.add(&from_factory(&base), None).await.unwrap() {
        AddOutcome::Added(a) => a,
        other => panic!("{other:?}"),
    };
    let ranges = f.seen.ranges("kernel-amd64");
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let from: usize = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .unwrap_or_else(|| panic!("no resume: {ranges:?}"))
        .parse()
        .unwrap();
    assert!(from > 0 && from < kernel.len(), "{from}");
    assert_eq!(added.kernel.digest.unwrap().sha256, sha256(&kernel));
    let (code, body) = asset(&app.url(""), "vmlinuz-amd64").await;
    assert_eq!(code, 200);
    assert!(body == kernel, "kernel bytes differ");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_adds_download_once() {
    let app = Appliance::start().await;
    let (base, f, _kernel, _initramfs) = factory(false, true).await;
    let store = Images::new(app.images.path().to_path_buf(), app.db.clone());
    let req = from_factory(&base);
    let other = store.clone();
    let (a, b) = tokio::join!(store.add(&req, None), other.add(&req, None));
    let outcomes = [a.unwrap(), b.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, AddOutcome::Added(_)))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(f.seen.count("kernel-amd64"), 1);
    assert_eq!(f.seen.count("initramfs-amd64.xz"), 1);

    // Present means its files still match: a kernel changed on disk is fetched again.
    let AddOutcome::AlreadyPresent(_) = store.add(&req, None).await.unwrap() else {
        panic!("present and intact")
    };
    assert_eq!(f.seen.count("kernel-amd64"), 1);
    std::fs::write(
        app.images.path().join(VERSION).join("vmlinuz-amd64"),
        b"not a kernel",
    )
    .unwrap();
    let AddOutcome::Added(_) = store.add(&req, None).await.unwrap() else {
        panic!("a changed file is fetched again")
    };
    assert_eq!(f.seen.count("kernel-amd64"), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_from_two_processes_download_once() {
    let app = Appliance::start().await;
    let (base, f, _kernel, _initramfs) = factory(false, true).await;
    // Two stores share nothing in memory, like two `bootplane images add` processes.
    let first = Images::new(app.images.path().to_path_buf(), app.db.clone());
    let second = Images::new(app.images.path().to_path_buf(), app.db.clone());
    let req = from_factory(&base);
    let (a, b) = tokio::join!(first.add(&req, None), second.add(&req, None));
    let outcomes = [a.unwrap(), b.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, AddOutcome::Added(_)))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(f.seen.count("kernel-amd64"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_corrupted_on_disk_is_detected_at_start_and_not_served() {
    let data = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let (kernel, initramfs) = (pattern(700_000, 31), pattern(900_000, 32));
    std::fs::write(src.path().join("k"), &kernel).unwrap();
    std::fs::write(src.path().join("i"), &initramfs).unwrap();
    let db = Db::open(data.path()).await.unwrap();
    let store = Images::new(images.path().to_path_buf(), db.clone());
    let req = AddRequest {
        version: VERSION.into(),
        arch: Arch::Amd64,
        source: SourceSpec::Local {
            kernel: src.path().join("k"),
            initramfs: src.path().join("i"),
        },
        expect_kernel: Some(sha256(&kernel)),
        expect_initramfs: None,
    };
    let AddOutcome::Added(added) = store.add(&req, None).await.unwrap() else {
        panic!("not added")
    };
    assert_eq!(added.source, AssetSource::Local);

    // One byte flipped, same length: only the hash can tell.
    let on_disk = images.path().join(VERSION).join("initramfs-amd64.xz");
    let mut bytes = std::fs::read(&on_disk).unwrap();
    bytes[450_000] ^= 0x01;
    std::fs::write(&on_disk, &bytes).unwrap();

    let app = Appliance::start_in(data, images, |o| {
        o.events_port = Some(PortSetting::Off);
        o.kernel_log_port = Some(PortSetting::Off);
        o.https_port = Some(PortSetting::Off);
    })
    .await;
    let base = app.url("");
    // The first answer comes after start-up verification; nothing asked for the asset yet.
    let (code, _) = http_get(format!("{base}/healthz")).await;
    assert_eq!(code, 200);
    let recorded = db.get_image(VERSION, Arch::Amd64).await.unwrap().unwrap();
    assert!(
        matches!(&recorded.state, AssetState::Broken(r)
            if r.contains("initramfs-amd64.xz does not match its recorded sha256")),
        "{recorded:?}"
    );
    let (code, body) = http_get(format!("{base}/assets/{VERSION}/initramfs-amd64.xz")).await;
    assert_eq!(code, 503);
    assert!(body != bytes);
    let (code, _) = http_get(format!("{base}/assets/{VERSION}/vmlinuz-amd64")).await;
    assert_eq!(code, 503, "the pair is out of service together");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_adds_lists_verifies_and_removes() {
    let (base, f, kernel, _initramfs) = factory(false, false).await;
    let data = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(kit::BIN);
        cmd.arg("images")
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .arg("--images-dir")
            .arg(images.path())
            .env_remove("BOOTPLANE_FACTORY_URL");
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.success(),
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        }
    };
    let (ok, out, err) = cli(&[
        "add",
        "--version",
        VERSION,
        "--schematic",
        SCHEMATIC,
        "--factory-url",
        &base,
        "--sha256-kernel",
        &sha256(&kernel),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("added {VERSION} amd64 ready")),
        "{out}"
    );
    assert!(err.contains("vmlinuz-amd64: 1.4 / 1.4 MiB (100%)"), "{err}");
    assert_eq!(f.seen.count("kernel-amd64"), 1);

    let (ok, out, err) = cli(&["list"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("sha256:{}", sha256(&kernel))),
        "{out}"
    );

    let (ok, _, err) = cli(&[
        "add",
        "--version",
        VERSION,
        "--release",
        "--schematic",
        SCHEMATIC,
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("give one source"), "{err}");

    std::fs::write(images.path().join(VERSION).join("vmlinuz-amd64"), b"x").unwrap();
    let (ok, out, _) = cli(&["verify"]).await;
    assert!(!ok, "a mismatch fails verify");
    assert!(
        out.contains(&format!(
            "broken  {VERSION} amd64: vmlinuz-amd64 does not match"
        )),
        "{out}"
    );

    let (ok, out, err) = cli(&["remove", "--version", VERSION]).await;
    assert!(ok, "{err}");
    assert!(out.contains("removed"), "{out}");
    assert!(!images.path().join(VERSION).join("vmlinuz-amd64").exists());
    let (ok, out, _) = cli(&["list"]).await;
    assert!(ok);
    assert_eq!(out, "no boot assets recorded\n");
}

/// Local files as a version's assets, added through the store.
async fn add_local(store: &Images, version: &str, seed: u32) {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("k"), pattern(300_000, seed)).unwrap();
    std::fs::write(src.path().join("i"), pattern(400_000, seed + 1)).unwrap();
    let req = AddRequest {
        version: version.into(),
        arch: Arch::Amd64,
        source: SourceSpec::Local {
            kernel: src.path().join("k"),
            initramfs: src.path().join("i"),
        },
        expect_kernel: None,
        expect_initramfs: None,
    };
    assert!(matches!(
        store.add(&req, None).await.unwrap(),
        AddOutcome::Added(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_boots_its_pinned_version_else_its_clusters_else_the_default() {
    const PINNED: &str = "v1.10.9";
    let app = Appliance::start().await;
    let store = Images::new(app.images.path().to_path_buf(), app.db.clone());
    add_local(&store, VERSION, 41).await;
    let mut pinned = controlplane();
    pinned.talos_version = Some(PINNED.into());
    app.db.add_machine(&pinned, 1).await.unwrap();
    let mut other = Machine::discovered("52:54:00:12:34:57".parse().unwrap());
    other.role = Role::Worker;
    other.hostname = Some("w-1".into());
    app.db.add_machine(&other, 1).await.unwrap();
    let script = |mac: &'static str| {
        let url = app.url(&format!("/machine.ipxe?mac={mac}&arch=x86_64"));
        async move {
            let (code, body) = http_get(url).await;
            assert_eq!(code, 200);
            String::from_utf8(body).unwrap()
        }
    };

    // The pinned version's assets are not there: the console says which, and it asks again.
    let body = script("52:54:00:12:34:56").await;
    assert!(
        body.contains(&format!("Talos {PINNED} amd64 boot assets are missing")),
        "{body}"
    );
    assert!(!body.contains("\nkernel "), "{body}");
    // The unpinned machine boots the default (no cluster version yet). The assets came from
    // another store (as from another process): a record the appliance read while that add was
    // under way counts for up to its record cache's bound, so ask again until then.
    let limit = std::time::Duration::from_millis(bootplane::state::SCRIPT_TTL_MS as u64 + 3000);
    let started = std::time::Instant::now();
    loop {
        let body = script("52:54:00:12:34:57").await;
        if body.contains(&format!("/assets/{VERSION}/vmlinuz-amd64?mac=")) {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "still not booting {VERSION} after {limit:?}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    add_local(&store, PINNED, 43).await;
    // Assets another store (another process) added count within the script cache's bound: the
    // script made moments before may serve until then, never later.
    let started = std::time::Instant::now();
    let body = loop {
        let body = script("52:54:00:12:34:56").await;
        if body.contains(&format!("/assets/{PINNED}/vmlinuz-amd64?mac=")) {
            break body;
        }
        assert!(
            started.elapsed() < limit,
            "still not booting {PINNED} after {limit:?}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        body.contains(&format!("/assets/{PINNED}/initramfs-amd64.xz?mac=")),
        "{body}"
    );
    assert!(
        body.contains("ima_template=ima-ng"),
        "v1.10 kernel arguments: {body}"
    );

    // The cluster's version wins over the default for machines without a pin.
    let mut cluster = app.db.get_cluster(None).await.unwrap().unwrap();
    cluster.talos_version = Some(PINNED.into());
    app.db
        .update_cluster(&cluster.name.clone(), &cluster)
        .await
        .unwrap();
    // Changed by another process (straight into the database here): the version change moves
    // the inventory version, so a script already made is made again once the snapshot reloads.
    let asked = std::time::Instant::now();
    let body = loop {
        let body = script("52:54:00:12:34:57").await;
        if body.contains(&format!("/assets/{PINNED}/")) || asked.elapsed() > Duration::from_secs(3)
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        body.contains(&format!("/assets/{PINNED}/vmlinuz-amd64?mac=")),
        "{body}"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "{:?}",
        asked.elapsed()
    );
    app.stop().await;
}

/// A JSON API call with a logged-in session.
async fn api(
    app: &Appliance,
    session: &kit::Session,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, app.url(&format!("/api/v1{path}")))
        .header("cookie", &session.cookie)
        .header("x-csrf-token", &session.csrf);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls the list until `version`'s amd64 asset is ready; returns whether progress was seen.
async fn wait_ready(
    app: &Appliance,
    session: &kit::Session,
    version: &str,
) -> (bool, serde_json::Value) {
    let mut saw_progress = false;
    for _ in 0..400 {
        let (status, list) = api(app, session, reqwest::Method::GET, "/images", None).await;
        assert_eq!(status, 200, "{list}");
        if let Some(a) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["version"] == version && a["arch"] == "amd64")
        {
            if a["progress"]["done"].as_u64().is_some_and(|d| d > 0) {
                saw_progress = true;
            }
            match a["state"].as_str().unwrap() {
                "ready" => return (saw_progress, a.clone()),
                "broken" => panic!("broken: {a}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{version} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_adds_in_the_background_once_with_progress_and_schematic_args_reach_the_script() {
    use reqwest::Method;
    use serde_json::json;
    let (base, f, _kernel, _initramfs) = factory(false, true).await;
    let factory_url = base.clone();
    let app = Appliance::start_with(move |o| {
        o.factory_url = Some(factory_url);
        o.kernel_args = Some("console=ttyS1,115200".into());
    })
    .await;
    let s = app.login().await;

    // Local files are for the appliance's own command line, not the network.
    let (status, body) = api(
        &app,
        &s,
        Method::POST,
        "/images",
        Some(json!({"version": VERSION, "kernel_path": "/etc/shadow", "initramfs_path": "/etc/passwd"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["fields"][0]["field"], "kernel_path", "{body}");

    let add = json!({"version": VERSION, "schematic": SCHEMATIC});
    let (status, first) = api(&app, &s, Method::POST, "/images", Some(add.clone())).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["already_downloading"], false, "{first}");
    assert_eq!(first["watch"], "/api/v1/images");
    let (status, second) = api(&app, &s, Method::POST, "/images", Some(add.clone())).await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(second["already_downloading"], true, "{second}");
    // Being downloaded: not removed underneath the download.
    let (status, body) = api(
        &app,
        &s,
        Method::DELETE,
        &format!("/images/{VERSION}/amd64"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (saw_progress, ready) = wait_ready(&app, &s, VERSION).await;
    assert!(saw_progress, "no progress was shown while downloading");
    assert_eq!(f.seen.count("kernel-amd64"), 1, "downloaded once");
    assert_eq!(f.seen.count("initramfs-amd64.xz"), 1, "downloaded once");
    assert_eq!(ready["source"], "factory");
    assert_eq!(
        ready["kernel_args"],
        json!([]),
        "the vanilla schematic adds none"
    );
    assert!(ready["progress"].is_null());

    // Schematics: the body is the factory's YAML, and the ID its content hash.
    let (status, vanilla) = api(
        &app,
        &s,
        Method::POST,
        "/images/schematics",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 201, "{vanilla}");
    assert_eq!(
        vanilla["id"], SCHEMATIC,
        "the vanilla schematic's documented ID"
    );
    let custom =
        json!({"extensions": ["siderolabs/iscsi-tools"], "kernel_args": ["net.ifnames=0"]});
    let (status, made) = api(&app, &s, Method::POST, "/images/schematics", Some(custom)).await;
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    let posted = f.posted.lock().unwrap().last().unwrap().clone();
    assert_eq!(id, sha256(posted.as_bytes()), "{posted}");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&posted).unwrap();
    assert_eq!(
        doc["customization"]["systemExtensions"]["officialExtensions"][0].as_str(),
        Some("siderolabs/iscsi-tools"),
        "{posted}"
    );
    let (status, bad) = api(
        &app,
        &s,
        Method::POST,
        "/images/schematics",
        Some(json!({"extensions": ["../x"]})),
    )
    .await;
    assert_eq!(status, 422, "{bad}");
    // The CLI makes the same schematic (same content, same ID).
    let out = tokio::process::Command::new(kit::BIN)
        .args(["images", "schematic", "--factory-url", &base])
        .args([
            "--extension",
            "siderolabs/iscsi-tools",
            "--kernel-arg",
            "net.ifnames=0",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), id);

    // Assets from that schematic carry its kernel arguments to the boot script.
    let (status, body) = api(
        &app,
        &s,
        Method::DELETE,
        &format!("/images/{VERSION}/amd64"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = api(
        &app,
        &s,
        Method::DELETE,
        &format!("/images/{VERSION}/sparc"),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api(
        &app,
        &s,
        Method::POST,
        "/images",
        Some(json!({"version": VERSION, "schematic": id})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (_, ready) = wait_ready(&app, &s, VERSION).await;
    assert_eq!(ready["kernel_args"], json!(["net.ifnames=0"]), "{ready}");
    assert_eq!(
        f.seen.count("cmdline-metal-amd64"),
        2,
        "fetched at each add"
    );
    app.db.add_machine(&controlplane(), 1).await.unwrap();
    let (code, script) = http_get(app.url("/machine.ipxe?mac=52:54:00:12:34:56&arch=x86_64")).await;
    assert_eq!(code, 200);
    let script = String::from_utf8(script).unwrap();
    let line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .expect(&script);
    let words: Vec<&str> = line.split(' ').collect();
    let at = |w: &str| words.iter().position(|x| x.starts_with(w)).expect(line);
    assert!(at("talos.config=") < at("net.ifnames=0"), "{line}");
    assert!(at("net.ifnames=0") < at("console=ttyS1,115200"), "{line}");
    assert!(
        line.ends_with("console=ttyS1,115200 || goto failed"),
        "the operator's last: {line}"
    );

    let (status, report) = api(&app, &s, Method::POST, "/images/verify", Some(json!({}))).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ready"], json!([format!("{VERSION} amd64")]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_adds_shows_progress_and_says_why_machines_wait() {
    let (base, f, _kernel, _initramfs) = factory(false, true).await;
    let factory_url = base.clone();
    let app = Appliance::start_with(move |o| o.factory_url = Some(factory_url)).await;
    let s = app.login().await;
    let client = kit::no_redirects();
    let get = |path: &str| {
        let req = client.get(app.url(path)).header("cookie", &s.cookie).send();
        async move {
            let r = req.await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let post = |path: &str, fields: Vec<(&'static str, String)>| {
        let mut form = vec![("csrf", s.csrf.clone())];
        form.extend(fields);
        let req = client
            .post(app.url(path))
            .header("cookie", &s.cookie)
            .form(&form)
            .send();
        async move {
            let r = req.await.unwrap();
            let location = r
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string());
            (r.status().as_u16(), location, r.text().await.unwrap())
        }
    };

    // The add form starts with the vanilla schematic and the version machines boot.
    let (code, page) = get("/ui/images").await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains(SCHEMATIC), "vanilla schematic as default");
    assert!(page.contains(&format!("value=\"{VERSION}\"")), "{page}");
    assert!(
        page.contains("href=\"/ui/images\" class=\"current\""),
        "nav link"
    );

    // An assigned machine waits for its assets, and the pages say why.
    let mut m = controlplane();
    m.ip = Some("127.0.0.21/8".parse().unwrap());
    app.db.add_machine(&m, 1).await.unwrap();
    let missing = format!("Talos {VERSION} amd64 boot assets missing");
    let (_, page) = get("/ui/machines/52:54:00:12:34:56").await;
    assert!(page.contains(&missing), "{page}");
    for _ in 0..100 {
        // The live list reads the inventory snapshot, refreshed within moments.
        let (_, rows) = get("/ui/machines/rows").await;
        if rows.contains(&missing) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, rows) = get("/ui/machines/rows").await;
    assert!(rows.contains(&missing), "{rows}");
    let (_, page) = get("/ui/cluster").await;
    assert!(page.contains(&missing), "{page}");

    // Refused input is shown beside its field, and starts nothing.
    let form = |version: &str| {
        vec![
            ("source", "factory".to_string()),
            ("schematic", SCHEMATIC.to_string()),
            ("version", version.to_string()),
            ("arch", "amd64".to_string()),
        ]
    };
    let (code, _, page) = post("/ui/images", form("1.11")).await;
    assert_eq!(code, 422);
    assert!(page.contains("must look like v1.11.6"), "{page}");
    assert_eq!(f.seen.count("kernel-amd64"), 0);

    let (code, location, _) = post("/ui/images", form(VERSION)).await;
    assert_eq!(
        (code, location.as_deref()),
        (303, Some("/ui/images?flash=started"))
    );
    let (code, location, _) = post("/ui/images", form(VERSION)).await;
    assert_eq!(
        (code, location.as_deref()),
        (303, Some("/ui/images?flash=downloading"))
    );
    let mut saw_progress = false;
    for _ in 0..400 {
        let (code, rows) = get("/ui/images/rows").await;
        assert_eq!(code, 200);
        saw_progress |= rows.contains("<progress");
        if rows.contains("state-asset-ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, rows) = get("/ui/images/rows").await;
    assert!(rows.contains("state-asset-ready"), "{rows}");
    assert!(saw_progress, "no progress bar while downloading");
    assert_eq!(f.seen.count("kernel-amd64"), 1, "downloaded once");
    let (_, page) = get("/ui/machines/52:54:00:12:34:56").await;
    assert!(!page.contains(&missing), "{page}");

    let (code, _, page) = post("/ui/images/verify", vec![]).await;
    assert_eq!(code, 200);
    assert!(page.contains("1 match their SHA-256"), "{page}");

    let (code, _, page) = post(
        "/ui/images/schematic",
        vec![
            (
                "extensions",
                "siderolabs/iscsi-tools\nsiderolabs/util-linux-tools".into(),
            ),
            ("kernel_args", "net.ifnames=0".into()),
        ],
    )
    .await;
    assert_eq!(code, 200, "{page}");
    let posted = f.posted.lock().unwrap().last().unwrap().clone();
    let id = sha256(posted.as_bytes());
    assert!(page.contains(&format!("Schematic {id} created")), "{page}");
    assert!(
        page.contains(&format!("value=\"{id}\"")),
        "prefilled: {page}"
    );

    let (code, location, _) = post(
        "/ui/images/remove",
        vec![("version", VERSION.into()), ("arch", "amd64".into())],
    )
    .await;
    assert_eq!(
        (code, location.as_deref()),
        (303, Some("/ui/images?flash=removed"))
    );
    assert!(app.db.list_images().await.unwrap().is_empty());
    app.stop().await;
}

/// At start, `serve` names each missing iPXE binary with the machines it would have served,
/// including a per-machine choice, and the Talos assets missing for the version an assigned
/// machine would boot (its pin here), with the command that adds them.
#[tokio::test]
async fn start_reports_missing_ipxe_binaries_per_arch_and_missing_assets_in_use() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ipxe = dir.path().join("ipxe");
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::write(ipxe.join("undionly.kpxe"), b"bios ipxe").unwrap();
    let bin = kit::BIN;
    let out = tokio::process::Command::new(bin)
        .args(["machines", "add", "--data-dir", data.to_str().unwrap()])
        .args([
            "--mac",
            "52:54:00:aa:00:01",
            "--role",
            "worker",
            "--hostname",
            "w1",
        ])
        .args(["--ip", "127.0.0.31/8", "--talos-version", "v1.10.9"])
        .args(["--efi-binary", "snponly.efi"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--data-dir", data.to_str().unwrap()])
        .args(["--images-dir", dir.path().join("images").to_str().unwrap()])
        .args(["--ipxe-dir", ipxe.to_str().unwrap()])
        .args([
            "--dhcp-mode",
            "off",
            "--interface",
            "lo",
            "--advertise-ip",
            "127.0.0.1",
        ])
        .args([
            "--http-bind",
            "127.0.0.1",
            "--http-port",
            "0",
            "--tftp-port",
            "0",
        ])
        .args([
            "--ipv6-ra",
            "off",
            "--events-port",
            "off",
            "--kernel-log-port",
            "off",
            "--https-port",
            "off",
        ])
        .env("BOOTPLANE_ADMIN_PASSWORD", "correct-horse-battery")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let read = async {
        loop {
            let line = tokio::select! {
                l = lines.next_line() => l.unwrap(),
                l = stderr.next_line() => l.unwrap(),
            };
            let Some(line) = line else { break };
            let done = line.contains("bootplane serving");
            log.push(line);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("serve did not start within 60 s");
    child.kill().await.unwrap();
    let log = log.join("\n");
    let warned = |needle: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(needle))
    };

    assert!(
        warned("x86-64 UEFI machines cannot network-boot") && warned("file=ipxe.efi"),
        "{log}"
    );
    assert!(
        warned("x86-64 UEFI (per-machine choice) machines") && warned("file=snponly.efi"),
        "{log}"
    );
    assert!(
        warned("arm64 UEFI machines") && warned("--arm64-binary"),
        "{log}"
    );
    assert!(!warned("BIOS machines"), "undionly.kpxe is there:\n{log}");
    assert!(
        warned("Talos v1.10.9 amd64 boot assets missing")
            && warned("bootplane images add --version v1.10.9 --arch amd64"),
        "{log}"
    );
    assert!(
        !warned(&format!("Talos {VERSION}")),
        "no machine boots {VERSION}:\n{log}"
    );
}
