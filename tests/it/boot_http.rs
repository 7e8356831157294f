//! HTTP boot surface against a running appliance, with curl as the client.

use crate::kit::{self, run_client, s, Appliance, VERSION};
use bootplane::model::{DiskHandoff, EventKind, Mac, Machine, Role};

fn mac() -> Mac {
    "52:54:00:12:34:56".parse().unwrap()
}

fn controlplane() -> Machine {
    let mut m = Machine::discovered(mac());
    m.role = Role::Controlplane;
    m.hostname = Some("cp-1".into());
    m.ip = Some("10.77.0.11/24".parse().unwrap());
    m
}

async fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    run_client("curl", s(args), None).await
}

async fn get_text(app: &Appliance, path: &str) -> (u16, String) {
    let (ok, out, err) = curl(&["-sS", "-w", "\n%{http_code}", &app.url(path)]).await;
    assert!(ok, "curl failed: {err}");
    let text = String::from_utf8(out).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_script_points_at_the_machine_script_by_booting_nic() {
    let app = Appliance::start().await;
    let (code, body) = get_text(&app, "/boot.ipxe").await;
    assert_eq!(code, 200);
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    let expected = format!(
        "chain --replace --autofree {}/machine.ipxe?mac=${{mac:hexhyp}}",
        app.url("")
    );
    assert!(body.contains(&expected), "{body}");
    // Its bytes are counted, as every script's.
    let (_, second) = get_text(&app, "/machine.ipxe?mac=52-54-00-aa-bb-01").await;
    let counted = metric(
        &app.metrics().await,
        "bootplane_http_bytes_total{asset=\"script\"}",
    );
    assert_eq!(counted, (body.len() + second.len()) as u64);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_machine_is_discovered_and_told_to_wait_then_boots_once_assigned() {
    let app = Appliance::start().await;
    app.add_assets(1000, 2000);
    let path = "/machine.ipxe?mac=52-54-00-12-34-56&uuid=7e57ab1e-0000-4000-8000-000000000001&serial=&arch=x86_64&platform=pcbios";
    let (code, body) = get_text(&app, path).await;
    assert_eq!(code, 200);
    assert!(body.contains("not assigned"), "{body}");
    assert!(body.contains("sleep 3"), "{body}");
    assert!(body.contains("chain --replace --autofree"), "{body}");
    let events = app.wait_event(mac(), EventKind::ScriptServed).await;
    assert_eq!(events[0].kind, EventKind::Discovered);
    let m = app.db.get_machine(mac()).await.unwrap().unwrap();
    assert_eq!(m.role, Role::Unassigned);
    assert_eq!(
        m.smbios_uuid.as_deref(),
        Some("7e57ab1e-0000-4000-8000-000000000001")
    );

    // Assigned by another process (the CLI, as here straight into the database): the running
    // appliance's scripts follow once its inventory snapshot reloads (a rendered script is
    // reused only while the snapshot it was made from is current).
    app.db.update_machine(&controlplane(), 1).await.unwrap();
    let asked = std::time::Instant::now();
    let (code, body) = loop {
        let (code, body) = get_text(&app, path).await;
        if body.contains("kernel --name") || asked.elapsed() > std::time::Duration::from_secs(3) {
            break (code, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        asked.elapsed() < std::time::Duration::from_millis(2500),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(code, 200);
    let base = app.url("");
    let kernel = format!("kernel --name vmlinuz-amd64 {base}/assets/{VERSION}/vmlinuz-amd64?mac=52:54:00:12:34:56 talos.platform=metal console=tty0 console=ttyS0 ");
    assert!(body.contains(&kernel), "{body}");
    assert!(body.contains("initrd=initramfs-amd64.xz"), "{body}");
    assert!(
        body.contains(&format!("talos.config={base}/config?mac=52:54:00:12:34:56")),
        "{body}"
    );
    assert!(body.contains(&format!("initrd --name initramfs-amd64.xz {base}/assets/{VERSION}/initramfs-amd64.xz?mac=52:54:00:12:34:56")), "{body}");
    assert!(body.contains("\nboot || goto failed"), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_machines_get_their_disk_handoff() {
    // Window 0: repeated network boots are never taken for a wiped disk here (the wipe
    // detection has its own tests in tests/orchestrator.rs).
    let app = Appliance::start_with(|o| o.wipe_window = Some(0)).await;
    app.add_assets(10, 10);
    let mut m = controlplane();
    m.installed = true;
    app.db.add_machine(&m, 1).await.unwrap();
    let path = "/machine.ipxe?mac=52:54:00:12:34:56";
    let (code, body) = get_text(&app, path).await;
    assert_eq!(code, 200);
    assert!(body.contains("\nexit\n"), "{body}");
    assert!(!body.contains("kernel"), "{body}");

    m.disk_handoff = DiskHandoff::Sanboot;
    app.db.update_machine(&m, 2).await.unwrap();
    let (_, body) = get_text(&app, path).await;
    assert!(
        body.contains("sanboot --no-describe --drive 0x80"),
        "{body}"
    );

    m.disk_handoff = DiskHandoff::Http404;
    app.db.update_machine(&m, 3).await.unwrap();
    let (code, _) = get_text(&app, path).await;
    assert_eq!(code, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diskless_machine_gets_talos_at_every_network_boot_and_is_never_taken_for_wiped() {
    // An installed machine here would be handed to its disk and watched for a wipe; a
    // diskless one has no disk to hand off to.
    let app = Appliance::start().await;
    app.add_assets(10, 10);
    let mut m = Machine::discovered(mac());
    m.role = Role::Worker;
    m.hostname = Some("w-1".into());
    m.ip = Some("10.77.0.21/24".parse().unwrap());
    m.diskless = true;
    m.installed = true;
    app.db.add_machine(&m, 1).await.unwrap();
    let path = "/machine.ipxe?mac=52:54:00:12:34:56";
    for boot in 1..=2 {
        let (code, body) = get_text(&app, path).await;
        assert_eq!(code, 200);
        assert!(body.contains("\nkernel "), "boot {boot}: {body}");
        assert!(!body.contains("\nexit\n"), "boot {boot}: {body}");
        app.wait_events(mac(), |e| {
            e.kind == EventKind::ScriptServed && e.detail.contains("diskless")
        })
        .await;
    }
    let after = app.db.get_machine(mac()).await.unwrap().unwrap();
    assert!(after.installed, "a diskless boot is no reinstall");
    assert_eq!(after.handoff_at, None, "never handed off to a disk");
    let events = app.db.events(mac(), 100).await.unwrap();
    assert!(
        events.iter().all(|e| e.kind != EventKind::Reinstall),
        "{events:#?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diskless_1_14_node_is_served_a_config_without_an_install_at_every_boot() {
    let app = Appliance::start().await;
    let version = "v1.14.0-rc.1";
    let bundle =
        bootplane::talos::secrets::SecretsBundle::generate(version, std::time::SystemTime::now())
            .unwrap();
    let mut c = app.db.get_cluster(None).await.unwrap().unwrap();
    c.endpoint = Some("https://10.77.0.10:6443".into());
    c.talos_version = Some(version.into());
    app.db
        .init_cluster("default", &c, &bundle.to_yaml(), 1)
        .await
        .unwrap();
    let mut m = Machine::discovered(mac());
    m.role = Role::Worker;
    m.hostname = Some("w-1".into());
    m.ip = Some("10.77.0.21/24".parse().unwrap());
    m.diskless = true;
    m.installed = true;
    app.db.add_machine(&m, 1).await.unwrap();
    let (code, body) = get_text(&app, "/config?mac=52-54-00-12-34-56").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("kind: KubeletConfig"), "{body}");
    assert!(!body.contains("UnattendedInstallConfig"), "{body}");
    let after = app.db.get_machine(mac()).await.unwrap().unwrap();
    assert_eq!(
        after.state,
        bootplane::model::Lifecycle::ConfigServed,
        "waited for again: probed until its Talos API answers"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_assets_are_said_on_the_console_and_retried() {
    let app = Appliance::start().await;
    app.db.add_machine(&controlplane(), 1).await.unwrap();
    let (code, body) = get_text(&app, "/machine.ipxe?mac=52:54:00:12:34:56").await;
    assert_eq!(code, 200);
    assert!(body.contains("boot assets are missing"), "{body}");
    assert!(body.contains("vmlinuz-amd64"), "{body}");
    assert!(!body.contains("\nkernel "), "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_support_head_and_ranges_and_are_sent_with_sendfile() {
    let app = Appliance::start().await;
    let (kernel, initrd) = app.add_assets(3_000_000, 5_000_000);
    let url = app.url(&format!(
        "/assets/{VERSION}/vmlinuz-amd64?mac=52:54:00:12:34:56"
    ));

    let (ok, head, err) = curl(&["-sS", "-I", &url]).await;
    assert!(ok, "{err}");
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 3000000"), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");

    let (ok, part, err) = curl(&["-sS", "-r", "1000-1999", "-w", "%{http_code}", &url]).await;
    assert!(ok, "{err}");
    assert_eq!(&part[..1000], &kernel[1000..2000]);
    assert_eq!(&part[1000..], b"206");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("initrd");
    let initrd_url = app.url(&format!(
        "/assets/{VERSION}/initramfs-amd64.xz?mac=52:54:00:12:34:56"
    ));
    let (ok, _, err) = curl(&["-sS", "-f", "-o", out.to_str().unwrap(), &initrd_url]).await;
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), initrd);
    let (ok, _, err) = curl(&["-sS", "-f", "-o", out.to_str().unwrap(), &url]).await;
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), kernel);

    let events = app
        .wait_events(mac(), |e| {
            e.kind == EventKind::KernelFetched && e.detail.contains("3000000 bytes")
        })
        .await;
    assert!(
        events.iter().any(|e| e.kind == EventKind::InitramfsFetched),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.detail.contains("range") && e.detail.contains("3000000")),
        "{events:#?}"
    );

    let (_, metrics) = get_text(&app, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("bootplane_http_bytes_total{asset=\"initramfs\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let sent: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(sent, 5_000_000);
    // Every asset byte (the range, the whole initramfs and kernel; HEAD sends none) left
    // through sendfile, none copied through the process.
    let line = metrics
        .lines()
        .find(|l| l.starts_with("bootplane_http_sendfile_bytes_total "))
        .unwrap_or_else(|| panic!("{metrics}"));
    let zero_copy: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(zero_copy, 1_000 + 5_000_000 + 3_000_000);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_paths_outside_the_images_dir_are_not_found() {
    let app = Appliance::start().await;
    app.add_assets(10, 10);
    std::fs::write(app.images.path().join("secret"), b"x").unwrap();
    for path in [
        "/assets/v1.11.6/secret".to_string(),
        "/assets/..%2F/vmlinuz-amd64".into(),
        format!("/assets/{VERSION}/..%2Fsecret"),
        "/assets/v1.11.6/%2E%2E/secret".into(),
        "/ipxe/..%2Fsecret".into(),
        "/ipxe/.hidden".into(),
        "/assets/v9.9.9/vmlinuz-amd64".into(),
    ] {
        let (code, body) = get_text(&app, &path).await;
        assert_eq!(code, 404, "{path}: {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipxe_binaries_are_served_over_http_for_uefi_http_boot() {
    let app = Appliance::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ipxe.efi");
    let (ok, _, err) = curl(&[
        "-sS",
        "-f",
        "-o",
        out.to_str().unwrap(),
        &app.url("/ipxe/ipxe.efi"),
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(out).unwrap(),
        std::fs::read(app.ipxe.path().join("ipxe.efi")).unwrap()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_404_for_unknown_and_logged_for_assigned() {
    let app = Appliance::start().await;
    let (code, _) = get_text(&app, "/config?mac=52:54:00:99:99:99").await;
    assert_eq!(code, 404);
    let (code, _) = get_text(&app, "/config?mac=garbage").await;
    assert_eq!(code, 404);
    app.db.add_machine(&controlplane(), 1).await.unwrap();
    let (code, _) = get_text(&app, "/config?mac=52:54:00:12:34:56").await;
    assert_eq!(code, 404);
    app.wait_event(mac(), EventKind::ConfigFetched).await;
    assert!(app
        .db
        .get_machine("52:54:00:99:99:99".parse().unwrap())
        .await
        .unwrap()
        .is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mac_in_script_request_is_a_clear_400() {
    let app = Appliance::start().await;
    let (code, body) = get_text(&app, "/machine.ipxe?mac=01:00:5e:00:00:01").await;
    assert_eq!(code, 400);
    assert!(body.contains("multicast"), "{body}");
    let (code, _) = get_text(&app, "/healthz").await;
    assert_eq!(code, 200);
    app.stop().await;
}

async fn init_cluster(app: &Appliance) -> bootplane::talos::secrets::SecretsBundle {
    let bundle =
        bootplane::talos::secrets::SecretsBundle::generate(VERSION, std::time::SystemTime::now())
            .unwrap();
    let mut c = app.db.get_cluster(None).await.unwrap().unwrap();
    c.name = "lab".into();
    c.endpoint = Some("https://10.77.0.10:6443".into());
    c.vip = Some("10.77.0.10".parse().unwrap());
    c.talos_version = Some(VERSION.into());
    app.db
        .init_cluster("default", &c, &bundle.to_yaml(), 1)
        .await
        .unwrap();
    bundle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_machine_gets_its_own_rendered_config_with_a_hash_event() {
    let app = Appliance::start().await;
    let bundle = init_cluster(&app).await;
    let mut m = controlplane();
    m.cluster = "lab".into();
    m.gateway = Some("10.77.0.1".parse().unwrap());
    app.db.add_machine(&m, 1).await.unwrap();
    let (code, body) = get_text(&app, "/config?mac=52-54-00-12-34-56").await;
    assert_eq!(code, 200, "{body}");
    let docs: Vec<serde_json::Value> = body
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    let doc = &docs[0];
    // Where this appliance receives events and kernel logs, as the served config names it.
    let kinds: Vec<&str> = docs[1..]
        .iter()
        .filter_map(|d| d["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["EventSinkConfig", "KmsgLogConfig"]);
    let (events, kmsg) = (app.events.unwrap(), app.kmsg.unwrap());
    assert_eq!(docs[1]["endpoint"], format!("127.0.0.1:{}", events.port()));
    assert_eq!(docs[2]["url"], format!("tcp://127.0.0.1:{}", kmsg.port()));
    assert_eq!(doc["machine"]["network"]["hostname"], "cp-1");
    assert_eq!(
        doc["machine"]["network"]["interfaces"][0]["addresses"][0],
        "10.77.0.11/24"
    );
    assert_eq!(
        doc["machine"]["network"]["interfaces"][0]["deviceSelector"]["hardwareAddr"],
        "52:54:00:12:34:56"
    );
    assert_eq!(
        doc["machine"]["network"]["interfaces"][0]["vip"]["ip"],
        "10.77.0.10"
    );
    assert_eq!(
        doc["cluster"]["controlPlane"]["endpoint"],
        "https://10.77.0.10:6443"
    );
    assert_eq!(
        doc["machine"]["ca"]["crt"],
        bundle.os_ca().crt_b64().as_str()
    );
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    };
    let events = app
        .wait_events(mac(), |e| {
            e.kind == EventKind::ConfigFetched && e.detail.contains(&digest)
        })
        .await;
    assert!(
        events.iter().any(|e| e.detail.starts_with("served")),
        "{events:#?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_refused_to_a_requester_that_is_not_the_machine() {
    let app = Appliance::start_with(|o| {
        o.config_access = Some(bootplane::config::ConfigAccess::Mac);
    })
    .await;
    init_cluster(&app).await;
    let mut m = controlplane();
    m.cluster = "lab".into();
    app.db.add_machine(&m, 1).await.unwrap();
    // 127.0.0.1 is neither leased to the machine nor in the neighbour table with its MAC.
    let (code, body) = get_text(&app, "/config?mac=52:54:00:12:34:56").await;
    assert_eq!(code, 403);
    assert!(!body.contains("ca:"), "{body}");
    let events = app
        .wait_events(mac(), |e| e.kind == EventKind::ConfigFetched)
        .await;
    assert!(
        events.iter().any(|e| e.detail.contains("refused (403)")),
        "{events:#?}"
    );
    app.stop().await;
}

/// A TCP connection to the appliance's HTTP port from `source` (any 127.0.0.0/8 address).
async fn connect_from(app: &Appliance, source: &str) -> tokio::net::TcpStream {
    kit::connect_from(source.parse().unwrap(), app.http)
        .await
        .unwrap()
}

/// Reads until the server closes the connection; how long that took, or `None` if it was
/// still open after `limit` (an assertion deadline, not a wait for something to happen).
async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

/// `GET /healthz` on a fresh connection from `source`: the status line.
async fn healthz_from(app: &Appliance, source: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_from(app, source).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or("").to_string()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn half_open_connections_are_capped_per_address_and_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    const PER_ADDRESS: usize = 8;
    let app = Appliance::start_with(|o| {
        o.http_max_connections_per_address = Some(PER_ADDRESS);
        o.http_header_timeout = Some(1);
    })
    .await;
    let long = std::time::Duration::from_secs(10);
    // A slow-loris from 127.0.0.3: many connections, each with half a request head.
    let mut held = Vec::new();
    for _ in 0..PER_ADDRESS * 3 {
        let mut stream = connect_from(&app, "127.0.0.3").await;
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await;
        held.push(stream);
    }
    // The ones over the cap were closed at once (before any timeout could have).
    let mut closed_at_once = 0;
    for stream in &mut held[PER_ADDRESS..] {
        let took = closed_within(stream, long)
            .await
            .expect("over-cap connection kept open");
        assert!(took < std::time::Duration::from_millis(900), "{took:?}");
        closed_at_once += 1;
    }
    assert_eq!(closed_at_once, PER_ADDRESS * 2);
    // Meanwhile the appliance answers everyone else.
    assert_eq!(healthz_from(&app, "127.0.0.1").await, "HTTP/1.1 200 OK");
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "bootplane_http_connections_refused_total{reason=\"per_address\"}"
        ),
        (PER_ADDRESS * 2) as u64
    );
    // The half-open ones within the cap are closed once their head is overdue.
    for stream in &mut held[..PER_ADDRESS] {
        let took = closed_within(stream, long)
            .await
            .expect("a half-sent request head kept its connection open");
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }
    // Their places are free again.
    assert_eq!(healthz_from(&app, "127.0.0.3").await, "HTTP/1.1 200 OK");
    app.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Appliance::start_with(|o| o.http_header_timeout = Some(1)).await;
    let mut stream = connect_from(&app, "127.0.0.1").await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    let started = std::time::Instant::now();
    let took = closed_within(&mut stream, std::time::Duration::from_secs(10))
        .await
        .expect("an idle kept-alive connection stayed open");
    assert!(
        took >= std::time::Duration::from_millis(500),
        "closed too early: {:?}",
        started.elapsed()
    );
    app.stop().await;
}

/// README, Run it: "Stop it with Ctrl-C or SIGTERM: it stops answering, finishes HTTP
/// downloads in flight …". A kernel download (sent with sendfile) read slowly while the real
/// binary gets SIGTERM arrives whole, and the process then exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_an_asset_download_in_flight_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dirs = tempfile::tempdir().unwrap();
    for d in ["data", "ipxe", "images", "src"] {
        std::fs::create_dir_all(dirs.path().join(d)).unwrap();
    }
    let kernel: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let (kernel_file, initramfs_file) = (dirs.path().join("src/k"), dirs.path().join("src/i"));
    std::fs::write(&kernel_file, &kernel).unwrap();
    std::fs::write(&initramfs_file, b"initramfs").unwrap();
    let added = std::process::Command::new(kit::BIN)
        .args(["images", "add", "--data-dir"])
        .arg(dirs.path().join("data"))
        .arg("--images-dir")
        .arg(dirs.path().join("images"))
        .args(["--version", VERSION, "--kernel"])
        .arg(&kernel_file)
        .arg("--initramfs")
        .arg(&initramfs_file)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let port = kit::served::free_tcp_port();
    let log = dirs.path().join("serve.log");
    let mut child = kit::served::serve_without_dhcp(dirs.path(), port)
        .env("BOOTPLANE_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while kit::served::http_get(addr, "/healthz").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A client that reads slowly through a small receive buffer, so most of the file is still
    // to be sent when the stop begins.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 << 10).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut conn = tokio::net::TcpStream::from_std(sock.into()).unwrap();
    conn.write_all(
        format!("GET /assets/{VERSION}/vmlinuz-amd64 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    while got.len() < (1 << 20) {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Go on reading slowly while the appliance stops.
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let n = conn.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = &got[head_end..];
    assert_eq!(
        body.len(),
        kernel.len(),
        "the download was cut by the stop:\n{head}"
    );
    assert!(body == &kernel[..], "the body differs from the file");
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("still running after the download ended")
        .unwrap();
    assert!(
        status.success(),
        "{status}:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
