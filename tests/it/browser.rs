//! The web UI in a real browser: the real `bootplane` binary serving on free loopback ports,
//! driven by Debian's chromium through playwright-core (`tests/browser/ui.spec.mjs`).
//!
//! The appliance runs in proxyDHCP mode on `lo`. The script sends a real PXE DHCPDISCOVER from an
//! ephemeral UDP port to the DHCP port: proxy mode answers requests from a port other than 68 by
//! unicast to where they came from, so the script gets the offer and the machine is recorded as
//! discovered, exactly as a machine booting on the LAN would be. The LAN subnet that static
//! addresses must fall in is then lo's, 127.0.0.0/8.
//!
//! Gated by `BOOTPLANE_E2E=1` (set by `.ci/run`, which installs chromium); needs node and npm
//! (`npm ci` runs in `tests/browser` when its `node_modules` is missing). Screenshots land in
//! `tests/artifacts/screenshots/`, the appliance's log in `tests/artifacts/browser/`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kit::served::{ProxyPorts, Served};
use crate::kit::{turns, BIN};

const CHROMIUM: &str = "/usr/bin/chromium";
const ENDPOINT: &str = "https://192.0.2.5:6443";
/// The subnet of `lo`, which the appliance sits on.
const LAN: &str = "127.0.0.0/8";
/// The whole browser run normally takes well under a minute.
const NODE_LIMIT: Duration = Duration::from_secs(300);
/// Whether the script fails when the cluster page has no kubeconfig download yet ("required") or
/// only skips that step ("optional"); `BOOTPLANE_CLUSTER_PAGE` in the environment overrides it.
const CLUSTER_PAGE: &str = "required";
/// The initramfs of the simulated boot: large enough that a paused download is caught in flight
/// (more than loopback's socket buffers hold).
const INITRAMFS_BYTES: usize = 48 << 20;

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tool_works(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn web_ui_in_chromium_login_live_discovery_assignment_field_errors_tokens_and_downloads() {
    if std::env::var("BOOTPLANE_E2E").as_deref() != Ok("1") {
        eprintln!(
            "skipped: the browser test runs with BOOTPLANE_E2E=1 (needs chromium, node and npm; .ci/run installs them)"
        );
        return;
    }
    let _alone = turns::alone();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: apt-get install chromium"
    );
    assert!(
        tool_works("node") && tool_works("npm"),
        "node and npm are needed: apt-get install nodejs npm"
    );
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        run_ok(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&browser_dir),
            "npm ci in tests/browser",
        );
    }

    let artifacts = root.join("tests/artifacts");
    let screenshots = artifacts.join("screenshots");
    let _ = fs::remove_dir_all(&screenshots);
    fs::create_dir_all(&screenshots).unwrap();
    fs::create_dir_all(artifacts.join("browser")).unwrap();

    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    run_ok(
        Command::new(BIN).args([
            "cluster",
            "init",
            "--data-dir",
            data_dir,
            "--name",
            "e2e",
            "--endpoint",
            ENDPOINT,
        ]),
        "bootplane cluster init",
    );

    // Boot assets of the cluster's version, so the simulated boot gets its script, kernel and
    // initramfs; the initramfs is large enough to be caught in flight.
    let version = bootplane::config::DEFAULT_TALOS_VERSION;
    let images_dir = data.path().join("images");
    let kernel = data.path().join("vmlinuz-in");
    let initramfs = data.path().join("initramfs-in");
    fs::write(&kernel, vec![0x4b; 256 * 1024]).unwrap();
    let mut big = vec![0u8; INITRAMFS_BYTES];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    fs::write(&initramfs, big).unwrap();
    run_ok(
        Command::new(BIN).args([
            "images",
            "add",
            "--data-dir",
            data_dir,
            "--images-dir",
            images_dir.to_str().unwrap(),
            "--version",
            version,
            "--kernel",
            kernel.to_str().unwrap(),
            "--initramfs",
            initramfs.to_str().unwrap(),
        ]),
        "bootplane images add",
    );

    let ports = ProxyPorts::free();
    let password = format!(
        "e2e-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut serve = ports.serve(data.path());
    // Release downloads go to this appliance itself under a long path it answers 404 for: the
    // boot assets page then shows a failed download whose reason holds a long URL.
    let release_url = format!(
        "http://{}/releases/download/{}",
        ports.http_addr(),
        "a-long-mirror-path-without-any-break-".repeat(4)
    );
    serve
        .args(["--images-dir", images_dir.to_str().unwrap()])
        .args(["--config-access", "oauth"])
        .args(["--release-url", &release_url])
        // Boot step limits in hundredths: a machine is flagged as stuck within seconds.
        .env("BOOTPLANE_TEST_STEP_LIMIT_MS_PER_SECOND", "10")
        .env("BOOTPLANE_ADMIN_PASSWORD", &password)
        // The default log level, as a user runs it.
        .env_remove("RUST_LOG")
        .env_remove("BOOTPLANE_LOG");
    let http = ports.http_addr();
    let dhcp_port = ports.dhcp;
    let app = Served::start(&mut serve, artifacts.join("browser/bootplane.log"), http);

    let started = Instant::now();
    let mut node = Command::new("node")
        .arg("ui.spec.mjs")
        .current_dir(&browser_dir)
        .env("BOOTPLANE_URL", format!("http://{http}"))
        .env("BOOTPLANE_DHCP", format!("127.0.0.1:{dhcp_port}"))
        .env("BOOTPLANE_ADMIN_PASSWORD", &password)
        .env("BOOTPLANE_LAN", LAN)
        .env("BOOTPLANE_ENDPOINT", ENDPOINT)
        .env("BOOTPLANE_TALOS_VERSION", version)
        .env("BOOTPLANE_INITRAMFS_BYTES", INITRAMFS_BYTES.to_string())
        .env("BOOTPLANE_SCREENSHOTS", &screenshots)
        .env(
            "BOOTPLANE_CLUSTER_PAGE",
            std::env::var("BOOTPLANE_CLUSTER_PAGE").unwrap_or_else(|_| CLUSTER_PAGE.into()),
        )
        .env("CHROMIUM", CHROMIUM)
        .spawn()
        .expect("cannot start node");
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > NODE_LIMIT {
            let _ = node.kill();
            let _ = node.wait();
            panic!(
                "the browser test ran longer than {NODE_LIMIT:?}; appliance log:\n{}",
                app.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "browser test: {:.1} s, screenshots in {}",
        started.elapsed().as_secs_f64(),
        screenshots.display()
    );
    assert!(
        status.success(),
        "the browser test failed ({status}); screenshots in {}; appliance log:\n{}",
        screenshots.display(),
        app.log_text()
    );
    // At the default level, the proxy offer the script's PXE DISCOVER got is in the log.
    let log = app.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("reply") && l.contains("proxy-offer")),
        "no proxy-offer line at the default log level:\n{log}"
    );
}
