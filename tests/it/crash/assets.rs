//! Crash injection under a boot asset download: the real `bootplane serve` adds a release's
//! kernel and initramfs (with their SHA-256 given) through the API from a slow release server
//! of the test's own, and is killed with SIGKILL at a seeded random moment of the sequence
//! (mid-transfer, just after the kernel's last byte, just after the initramfs's last byte, when
//! it hashes, renames and records), then started again on the same directories.
//!
//! Checked while it downloads and after each restart: every GET of an asset answers a refusal
//! (404, 503) or exactly the whole file with the right digest; the boot script names the assets
//! only when both are served whole; a file under an asset's own name on disk is always
//! complete (a partial one could be adopted as ready); an asset recorded ready has the given
//! digests. Then the same add, asked again, completes (resuming what the kill left) and serves
//! the right bytes, and the asset is removed for the next run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootplane::db::Db;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{campaign, kill, wait_healthy, Rng};
use crate::kit::{self, VERSION};

const KERNEL: &str = "vmlinuz-amd64";
const INITRAMFS: &str = "initramfs-amd64.xz";
/// The slow release server's pace: a chunk, then a pause (about 6 MB/s).
const CHUNK: usize = 64 * 1024;
const PAUSE: Duration = Duration::from_millis(10);
/// A machine with a role, so its boot script names the assets once they are in service.
const WORKER: &str = "52:54:03:00:00:01";

/// The release server: `/<VERSION>/vmlinuz-amd64` and `/<VERSION>/initramfs-amd64.xz`, with
/// Range requests (the appliance resumes a `.part` file), slow until told otherwise.
struct Release {
    files: [(String, Vec<u8>); 2],
    slow: AtomicBool,
    /// Per file, how many times its last byte was written: the moments a kill may aim at.
    ends: tokio::sync::watch::Sender<[u64; 2]>,
    /// Answers that resumed a file (206) or found it already whole (416).
    resumed: AtomicU64,
}

impl Release {
    fn new() -> Release {
        Release {
            files: [
                (KERNEL.to_string(), kit::pattern(2 * 1024 * 1024 + 4321, 31)),
                (
                    INITRAMFS.to_string(),
                    kit::pattern(4 * 1024 * 1024 + 1234, 32),
                ),
            ],
            slow: AtomicBool::new(true),
            ends: tokio::sync::watch::Sender::new([0, 0]),
            resumed: AtomicU64::new(0),
        }
    }

    fn bytes(&self, name: &str) -> &[u8] {
        &self.files.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn sha256(&self, name: &str) -> String {
        hex::encode(Sha256::digest(self.bytes(name)))
    }

    async fn serve(self: Arc<Self>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Arc::clone(&self).answer(stream));
            }
        });
        addr
    }

    async fn answer(self: Arc<Self>, mut stream: tokio::net::TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.len() > 16 * 1024 {
                return;
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let from: Option<usize> = head.lines().find_map(|l| {
            l.strip_prefix("range: bytes=")
                .and_then(|r| r.trim().strip_suffix('-'))
                .and_then(|n| n.parse().ok())
        });
        let Some(index) = self
            .files
            .iter()
            .position(|(name, _)| path == format!("/{VERSION}/{name}").to_ascii_lowercase())
        else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        let body = &self.files[index].1;
        let len = body.len();
        let start = from.unwrap_or(0);
        let head = match from {
            Some(from) if from >= len => {
                self.resumed.fetch_add(1, Ordering::Relaxed);
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
                return;
            }
            Some(from) => {
                self.resumed.fetch_add(1, Ordering::Relaxed);
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    len - 1,
                    len - from
                )
            }
            None => {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            }
        };
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in body[start..].chunks(CHUNK) {
            if stream.write_all(chunk).await.is_err() {
                return;
            }
            if self.slow.load(Ordering::Relaxed) {
                // The pace of a slow mirror, so the appliance can be killed mid-transfer.
                tokio::time::sleep(PAUSE).await;
            }
        }
        self.ends.send_modify(|ends| ends[index] += 1);
    }
}

/// What a machine saw in one look at the appliance.
enum Look {
    /// The appliance went away under a request (the kill).
    Cut,
    /// Whether the script booted Talos (and both assets came whole), or said they are missing.
    Seen { install: bool },
}

/// One GET of an asset: `Ok(true)` the whole file, `Ok(false)` a refusal, `Err` the connection
/// broke; a violation goes into `found`.
async fn get_asset(
    http: &reqwest::Client,
    url: &str,
    want: &[u8],
    found: &mut Vec<String>,
) -> Result<bool, ()> {
    let r = http.get(url).send().await.map_err(|_| ())?;
    let status = r.status().as_u16();
    let body = r.bytes().await.map_err(|_| ())?;
    match status {
        200 if body.as_ref() == want => Ok(true),
        200 => {
            found.push(format!(
                "{url} served {} bytes sha256:{} for {} bytes sha256:{}",
                body.len(),
                hex::encode(Sha256::digest(&body)),
                want.len(),
                hex::encode(Sha256::digest(want))
            ));
            Ok(false)
        }
        404 | 503 => Ok(false),
        other => {
            found.push(format!(
                "{url} answered {other}, neither the file nor a refusal"
            ));
            Ok(false)
        }
    }
}

/// A machine's look: its boot script, then the assets (those it names, else both by name).
async fn look(
    http: &reqwest::Client,
    base: &str,
    release: &Release,
    found: &mut Vec<String>,
) -> Look {
    let Ok(r) = http
        .get(format!("{base}/machine.ipxe?mac={WORKER}&arch=x86_64"))
        .send()
        .await
    else {
        return Look::Cut;
    };
    let status = r.status().as_u16();
    let Ok(script) = r.text().await else {
        return Look::Cut;
    };
    if status != 200 {
        found.push(format!("the boot script answered {status}: {script}"));
        return Look::Seen { install: false };
    }
    let install = script.contains("kernel --name");
    let named = |file: &str| {
        script
            .split_whitespace()
            .find(|w| w.starts_with("http://") && w.contains(&format!("/assets/{VERSION}/{file}")))
            .map(str::to_string)
    };
    let mut whole = 0;
    for file in [KERNEL, INITRAMFS] {
        let url = if install {
            match named(file) {
                Some(url) => url,
                None => {
                    found.push(format!("the install script does not name {file}: {script}"));
                    continue;
                }
            }
        } else {
            format!("{base}/assets/{VERSION}/{file}")
        };
        match get_asset(http, &url, release.bytes(file), found).await {
            Ok(true) => whole += 1,
            Ok(false) => {}
            Err(()) => return Look::Cut,
        }
    }
    if install && whole < 2 {
        found.push(format!(
            "the boot script names the assets, but {} of 2 were served whole:\n{script}",
            whole
        ));
    }
    if !install && !script.contains("boot assets") {
        found.push(format!(
            "neither an install script nor a missing-assets one:\n{script}"
        ));
    }
    Look::Seen { install }
}

/// Files under an asset's own names are always whole (the appliance adopts what it finds
/// there); returns how many `.part` files and how many files under their own names are there.
fn check_disk(images: &Path, release: &Release, found: &mut Vec<String>) -> (usize, usize) {
    let dir = images.join(VERSION);
    let (mut parts, mut whole) = (0, 0);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".part") {
            parts += 1;
            continue;
        }
        if let Some((file, want)) = release.files.iter().find(|(f, _)| *f == name) {
            whole += 1;
            let have = std::fs::read(entry.path()).unwrap();
            if have != *want {
                found.push(format!(
                    "{file} on disk under its own name has {} of {} bytes, or other bytes",
                    have.len(),
                    want.len()
                ));
            }
        }
    }
    (parts, whole)
}

/// The asset's record through the API: its state, and the files' size and SHA-256.
async fn record(http: &reqwest::Client, base: &str, token: &str) -> Option<serde_json::Value> {
    let list: Vec<serde_json::Value> = http
        .get(format!("{base}/api/v1/images"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.into_iter()
        .find(|a| a["version"] == VERSION && a["arch"] == "amd64")
}

async fn add(http: &reqwest::Client, base: &str, token: &str, release: &Release) {
    let r = http
        .post(format!("{base}/api/v1/images"))
        .bearer_auth(token)
        .json(&json!({
            "version": VERSION,
            "release": true,
            "sha256_kernel": release.sha256(KERNEL),
            "sha256_initramfs": release.sha256(INITRAMFS),
        }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        status,
        202,
        "the add answered {status}: {}",
        r.text().await.unwrap()
    );
}

fn start(dirs: &Path, http_port: u16, release: SocketAddr, run: usize) -> tokio::process::Child {
    let log = std::fs::File::create(dirs.join(format!("serve-{run}.log"))).unwrap();
    kit::served::serve_without_dhcp(dirs, http_port)
        .args(["--release-url", &format!("http://{release}")])
        .args(["--talos-version", VERSION])
        .env("BOOTPLANE_LOG", "warn")
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_asset_download_never_serves_a_partial_file() {
    let (runs, seed) = campaign("crash injection (assets)");
    let _turn = kit::turns::shared_async().await;
    let dirs = super::scratch();
    let images = dirs.path().join("images");
    let db = Db::open(&dirs.path().join("data")).await.unwrap();
    let (_, token) = bootplane::auth::create_token(&db, "crash", None, kit::now_ms())
        .await
        .unwrap();
    db.close().await;
    let release = Arc::new(Release::new());
    let release_addr = Arc::clone(&release).serve().await;
    let http_port = kit::served::free_tcp_port();
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = Rng::new(seed);
    let mut child = start(dirs.path(), http_port, release_addr, 0);
    wait_healthy(&http, &base, &mut child).await;
    let r = http
        .post(format!("{base}/api/v1/machines"))
        .bearer_auth(&token)
        .json(&json!({"mac": WORKER, "role": "worker", "hostname": "w-1", "ip": "127.3.0.1/8"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    // Kills by moment aimed at, and what they cut.
    let mut aimed: HashMap<&str, usize> = HashMap::new();
    let (mut cut, mut parts_left, mut looks) = (0, 0, 0usize);
    // Kills that left files renamed into place but not recorded ready.
    let mut renamed_unrecorded = 0;
    let started = Instant::now();
    for run in 0..runs {
        release.slow.store(true, Ordering::Relaxed);
        let ends = *release.ends.borrow();
        add(&http, &base, &token, &release).await;
        // A machine looks while it downloads, until the kill cuts it off.
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (http, base, release, stop) = (
                http.clone(),
                base.clone(),
                Arc::clone(&release),
                stop.clone(),
            );
            tokio::spawn(async move {
                let (mut found, mut n) = (Vec::new(), 0usize);
                while !stop.load(Ordering::Relaxed) {
                    match look(&http, &base, &release, &mut found).await {
                        Look::Cut => break,
                        Look::Seen { .. } => n += 1,
                    }
                }
                (found, n)
            })
        };
        let mut ends_rx = release.ends.subscribe();
        let moment = match rng.below(4) {
            0 | 1 => {
                // About 1 s of transfer at the slow pace.
                tokio::time::sleep(Duration::from_millis(rng.below(1100))).await;
                "mid-transfer"
            }
            2 => {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    ends_rx.wait_for(|e| e[0] > ends[0]),
                )
                .await
                .expect("the kernel's last byte never went out")
                .unwrap();
                tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
                "after the kernel's last byte"
            }
            _ => {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    ends_rx.wait_for(|e| e[1] > ends[1]),
                )
                .await
                .expect("the initramfs's last byte never went out")
                .unwrap();
                // The appliance reads the last chunk, ends the hash, renames both files and
                // records them within a few milliseconds: aimed at in microseconds.
                tokio::time::sleep(Duration::from_micros(rng.below(6000))).await;
                "after the initramfs's last byte"
            }
        };
        *aimed.entry(moment).or_default() += 1;
        kill(&mut child, run, seed).await;
        stop.store(true, Ordering::Relaxed);
        let (mut found, n) = watcher.await.unwrap();
        looks += n;
        // What the kill left on disk, before anything touches it again.
        let (parts, in_place) = check_disk(&images, &release, &mut found);
        parts_left += parts;

        release.slow.store(false, Ordering::Relaxed);
        child = start(dirs.path(), http_port, release_addr, run + 1);
        wait_healthy(&http, &base, &mut child).await;
        let after = record(&http, &base, &token).await;
        let ready = after.as_ref().is_some_and(|a| a["state"] == "ready");
        if !ready {
            cut += 1;
            if in_place > 0 {
                renamed_unrecorded += 1;
            }
        }
        if ready {
            let a = after.as_ref().unwrap();
            for (field, file) in [("kernel", KERNEL), ("initramfs", INITRAMFS)] {
                if a[field]["sha256"] != release.sha256(file)
                    || a[field]["size"] != release.bytes(file).len()
                {
                    found.push(format!("recorded ready with other digests: {a}"));
                }
            }
        }
        let seen = look(&http, &base, &release, &mut found).await;
        looks += 1;
        match seen {
            Look::Cut => panic!("run {run} (seed {seed}): the restarted appliance broke a request"),
            Look::Seen { install } if install != ready => found.push(format!(
                "after the restart the asset is {:?} but the script {} it",
                after.as_ref().map(|a| a["state"].clone()),
                if install { "boots" } else { "does not boot" }
            )),
            Look::Seen { .. } => {}
        }
        check_disk(&images, &release, &mut found);

        // Asked again, the add completes (resuming what the kill left) and serves the bytes.
        add(&http, &base, &token, &release).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = record(&http, &base, &token).await;
            let state = a
                .as_ref()
                .map(|a| a["state"].as_str().unwrap_or("").to_string());
            if state.as_deref() == Some("ready") {
                break;
            }
            // Until the new download records itself, the record says why the last one stopped
            // (with the new one's progress beside it).
            let running = a.as_ref().is_some_and(|a| !a["progress"].is_null());
            if state.as_deref() == Some("broken") && !running {
                found.push(format!("the add after the restart failed: {}", a.unwrap()));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {run} (seed {seed}): the add after the restart never completed: {a:?}"
            );
            if let Look::Cut = look(&http, &base, &release, &mut found).await {
                panic!("run {run} (seed {seed}): the appliance broke a request");
            }
            looks += 1;
        }
        match look(&http, &base, &release, &mut found).await {
            Look::Seen { install: true } => {}
            Look::Seen { install: false } => {
                found.push("ready, yet the boot script does not boot it".into())
            }
            Look::Cut => panic!("run {run} (seed {seed}): the appliance broke a request"),
        }
        looks += 1;
        assert!(
            found.is_empty(),
            "run {run} (seed {seed}, kill {moment}): {} violations: {found:#?}",
            found.len()
        );
        // Removed, so the next run downloads it again.
        let r = http
            .delete(format!("{base}/api/v1/images/{VERSION}/amd64"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap());
    }
    kill(&mut child, runs, seed).await;
    let resumed = release.resumed.load(Ordering::Relaxed);
    eprintln!(
        "crash injection (assets): {runs} kills in {:.0} s (aimed {aimed:?}), {cut} downloads cut (not ready after the restart; {renamed_unrecorded} of them with files renamed into place), {parts_left} partial files left by kills, {resumed} resumed requests, {looks} looks at script and assets, 0 invariant violations",
        started.elapsed().as_secs_f64()
    );
    assert!(cut > 0 || runs < 4, "no kill ever cut a download");
}
