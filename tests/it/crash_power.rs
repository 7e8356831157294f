//! Power cuts: the real `bootplane serve` with its data directory on a disk that loses what was
//! not fsynced (`kit::powercut`, a FUSE layer), the power cut at a random moment (everything
//! not synced is dropped and the process is killed in the same instant), then the machine
//! boots again on what the disk kept and the appliance starts on it. The SIGKILL campaign
//! (`crash`) keeps the kernel's page cache; this one does not, so it checks what bootplane
//! fsyncs before it answers.
//!
//! - Leases: full DHCP under load on loopback. After every cut each lease ACKed before it is
//!   still held by its MAC, no address is held by two MACs (nor ACKed to two over the whole
//!   campaign), and SQLite's integrity check passes.
//! - The bootstrap mark: the Talos node doubles of `orchestrator`; power cut right after the
//!   Bootstrap call is marked (the test hook exits there) or right after the call reached the
//!   node. After the restart the mark is there and no second Bootstrap is ever made.
//!
//! `BOOTPLANE_CRASH_RUNS=N` cuts N times under DHCP load and N/2 times around the bootstrap
//! (10 and 5 by default); `BOOTPLANE_CRASH_SEED` replays a campaign (`scripts/crash`). The
//! FUSE mount needs root (CI and `scripts/test` run as root); elsewhere the tests say they
//! were skipped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootplane::db::Db;
use bootplane::model::Mac;
use dhcproto::v4::MessageType;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::crash::{campaign, Rng};
use crate::kit::powercut::{Cut, Mounted};
use crate::kit::{self, served, VERSION};
use crate::orchestrator::{provision, Lab, CLUSTER, CP1, CP2, CP3};

/// `None` (the test is skipped) unless this process may mount a FUSE filesystem.
fn may_mount() -> bool {
    if nix::unistd::geteuid().is_root() && std::path::Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("skipped: the power-cut tests mount a FUSE filesystem (root and /dev/fuse)");
    false
}

/// A machine's disk: the backing directory holds what survives a power cut, the FUSE layer
/// at `<dirs>/data` is what the appliance writes through; `ipxe/` and `images/` beside it.
struct Disk {
    dirs: tempfile::TempDir,
    mounted: Option<Mounted>,
}

impl Disk {
    fn new() -> Disk {
        let dirs = tempfile::tempdir().unwrap();
        for d in ["ipxe", "images"] {
            std::fs::create_dir_all(dirs.path().join(d)).unwrap();
        }
        let mounted =
            Mounted::mount(&dirs.path().join("backing"), &dirs.path().join("data")).unwrap();
        Disk {
            dirs,
            mounted: Some(mounted),
        }
    }

    fn data(&self) -> PathBuf {
        self.dirs.path().join("data")
    }

    fn mounted(&self) -> &Mounted {
        self.mounted.as_ref().unwrap()
    }

    /// Boots the machine again on what the disk kept, once this process holds no file on it
    /// (the appliance is dead by then; a connection of the test's closes on its own thread).
    async fn reboot(&mut self) {
        released(&self.data()).await;
        let mounted = self.mounted.take().unwrap();
        self.mounted = Some(mounted.remount().unwrap());
    }

    fn log(&self, what: &str, run: usize) -> std::fs::File {
        std::fs::File::create(self.dirs.path().join(format!("{what}-{run}.log"))).unwrap()
    }
}

/// Runs `work` (the test's own database connections) on a runtime of its own, dropped when
/// it is done: every connection is then closed, as the disk's unmount needs. (A pool closed
/// on the test's runtime could leave a connection open for seconds.)
fn apart<T: Send>(work: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(work)
        })
        .join()
        .unwrap()
    })
}

/// Waits until no file descriptor of this process points below `dir`.
async fn released(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p.starts_with(dir))
            .collect();
        if open.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the test still holds {open:?} open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The power cut under a running appliance: from `cut` on no answer of the appliance counts
/// (it could not have been sent with the power off); the process is stopped, the disk drops
/// what was not synced, and the process dies by SIGKILL.
async fn cut_power(child: &mut tokio::process::Child, disk: &Disk, cut: &AtomicBool) -> Cut {
    cut.store(true, Ordering::SeqCst);
    let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    kill(pid, Signal::SIGSTOP).unwrap();
    let dropped = disk.mounted().cut();
    kill(pid, Signal::SIGKILL).unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "not our SIGKILL: {status}");
    dropped
}

async fn wait_healthy(http_port: u16, child: &mut tokio::process::Child) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("bootplane serve exited at start: {status}");
        }
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{http_port}/healthz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn the_disk_loses_what_was_not_synced_and_keeps_what_was() {
    use std::io::Write as _;
    if !may_mount() {
        return;
    }
    let dirs = tempfile::tempdir().unwrap();
    let (backing, at) = (dirs.path().join("backing"), dirs.path().join("data"));
    let disk = Mounted::mount(&backing, &at).unwrap();

    let mut kept = std::fs::File::create(at.join("kept")).unwrap();
    kept.write_all(b"synced").unwrap();
    kept.sync_all().unwrap();
    kept.write_all(b", then more").unwrap();
    drop(kept);
    let mut lost = std::fs::File::create(at.join("lost")).unwrap();
    lost.write_all(b"never synced").unwrap();
    // Closing is no sync.
    drop(lost);
    // Readers see the page cache; the disk holds only what was synced.
    assert_eq!(
        std::fs::read(at.join("kept")).unwrap(),
        b"synced, then more"
    );
    assert_eq!(std::fs::read(at.join("lost")).unwrap(), b"never synced");
    assert_eq!(std::fs::read(backing.join("kept")).unwrap(), b"synced");
    assert_eq!(std::fs::read(backing.join("lost")).unwrap(), b"");

    // A shared writable map (SQLite's -shm) works through the layer; its pages reach the disk
    // only with a sync, like any write.
    let mapped = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(at.join("mapped"))
        .unwrap();
    mapped.set_len(8192).unwrap();
    {
        #[allow(unsafe_code)]
        // SAFETY: the file is this test's own and nothing else resizes it while mapped.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&mapped) }.unwrap();
        map[4096..4101].copy_from_slice(b"hello");
        map.flush().unwrap();
    }
    assert_eq!(
        &std::fs::read(at.join("mapped")).unwrap()[4096..4101],
        b"hello"
    );
    mapped.sync_all().unwrap();
    drop(mapped);
    let mut synced_map = std::fs::read(backing.join("mapped")).unwrap();
    assert_eq!(&synced_map[4096..4101], b"hello");

    let dropped = disk.cut();
    assert!(dropped.files >= 2, "{dropped:?}");
    // After the cut nothing gets through, not even a read.
    assert!(std::fs::read(at.join("kept")).is_err());
    let _disk = disk.remount().unwrap();
    assert_eq!(std::fs::read(at.join("kept")).unwrap(), b"synced");
    assert_eq!(
        std::fs::read(at.join("lost")).unwrap(),
        b"",
        "created, never synced"
    );
    synced_map.truncate(8192);
    assert_eq!(std::fs::read(at.join("mapped")).unwrap(), synced_map);
}

/// One DHCP request and the reply of `kind` for `mac`: the address in it.
async fn ask(
    sock: &tokio::net::UdpSocket,
    server: SocketAddr,
    packet: &[u8],
    mac: [u8; 6],
    kind: MessageType,
) -> Option<Ipv4Addr> {
    use dhcproto::{Decodable, Decoder};
    sock.send_to(packet, server).await.ok()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 1500];
    loop {
        let (len, _) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        let Ok(msg) = dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..len])) else {
            continue;
        };
        if msg.chaddr().get(..6) == Some(&mac[..]) && msg.opts().msg_type() == Some(kind) {
            return Some(msg.yiaddr());
        }
    }
}

/// A new client's DISCOVER, OFFER, REQUEST, ACK: the address ACKed.
async fn lease(sock: &tokio::net::UdpSocket, server: SocketAddr, mac: [u8; 6]) -> Option<Ipv4Addr> {
    let none = Ipv4Addr::UNSPECIFIED;
    let discover = kit::pxe_packet(MessageType::Discover, mac, none, None);
    let offered = ask(sock, server, &discover, mac, MessageType::Offer).await?;
    let request = kit::pxe_packet(MessageType::Request, mac, none, Some(offered));
    ask(sock, server, &request, mac, MessageType::Ack).await
}

/// Concurrent DHCP clients, each a new MAC per exchange.
const CLIENTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_under_full_dhcp_load_loses_no_acked_lease() {
    if !may_mount() {
        return;
    }
    let (runs, seed) = campaign("power cuts under DHCP load");
    let _turn = kit::turns::shared_async().await;
    let mut disk = Disk::new();
    let http_port = served::free_tcp_port();
    let dhcp_port = served::free_udp_port(&[]);
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, dhcp_port));
    // Room for every client of the campaign: no address is ever reclaimed from another MAC.
    let pool = "127.1.0.1-127.3.255.254";
    let start = |disk: &Disk, run: usize| {
        served::serve_full_dhcp(
            disk.dirs.path(),
            http_port,
            dhcp_port,
            served::free_udp_port(&[dhcp_port]),
            pool,
        )
        .env("BOOTPLANE_LOG", "warn")
        .stderr(disk.log("serve", run))
        .spawn()
        .unwrap()
    };
    let mut rng = Rng(seed);
    // Every lease ACKed before a cut, over the whole campaign, both ways.
    let mut acked: HashMap<Mac, Ipv4Addr> = HashMap::new();
    let mut holder: HashMap<Ipv4Addr, Mac> = HashMap::new();
    let next_client = Arc::new(AtomicU32::new(0));
    let (mut blocks_dropped, mut cuts_with_unsynced) = (0, 0);
    let mut child = start(&disk, 0);
    wait_healthy(http_port, &mut child).await;
    for run in 0..runs {
        let cut = Arc::new(AtomicBool::new(false));
        // Leases ACKed before the cut, as they arrive.
        let got: Arc<Mutex<Vec<(Mac, Ipv4Addr)>>> = Arc::default();
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let (cut, got, next_client) = (cut.clone(), got.clone(), next_client.clone());
            clients.push(tokio::spawn(async move {
                let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                loop {
                    let n = next_client.fetch_add(1, Ordering::SeqCst);
                    let mac = [0x52, 0x54, 0x03, (n >> 16) as u8, (n >> 8) as u8, n as u8];
                    let ip = lease(&sock, server, mac).await;
                    // An answer that arrived once the power was off is not counted.
                    if let (Some(ip), false) = (ip, cut.load(Ordering::SeqCst)) {
                        got.lock().unwrap().push((Mac(mac), ip));
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.next() % 1200)).await;
        let dropped = cut_power(&mut child, &disk, &cut).await;
        for client in clients {
            client.abort();
            assert!(
                client.await.unwrap_err().is_cancelled(),
                "a DHCP client failed"
            );
        }
        blocks_dropped += dropped.blocks;
        cuts_with_unsynced += usize::from(dropped.files > 0);
        {
            for (mac, ip) in got.lock().unwrap().iter().copied() {
                if let Some(other) = holder.get(&ip).filter(|m| **m != mac) {
                    panic!("run {run} (seed {seed}): {ip} was ACKed to {other} and to {mac}");
                }
                holder.insert(ip, mac);
                acked.insert(mac, ip);
            }
        }

        disk.reboot().await;
        child = start(&disk, run + 1);
        wait_healthy(http_port, &mut child).await;
        // What the restarted appliance recovered, read beside it through the same disk.
        let data = disk.data();
        let (integrity, leases) = apart(async {
            let db = Db::open(&data).await.unwrap();
            let found = (
                db.integrity_check().await.unwrap(),
                db.load_leases().await.unwrap(),
            );
            db.close().await;
            found
        });
        assert_eq!(
            integrity, "ok",
            "run {run} (seed {seed}): the database is damaged"
        );
        let mut stored: HashMap<Mac, Ipv4Addr> = HashMap::new();
        let mut by_ip: HashMap<Ipv4Addr, Mac> = HashMap::new();
        for l in &leases {
            if let Some(other) = by_ip.insert(l.ip, l.mac) {
                panic!(
                    "run {run} (seed {seed}): {} held by {other} and {}",
                    l.ip, l.mac
                );
            }
            stored.insert(l.mac, l.ip);
        }
        let lost: Vec<_> = acked
            .iter()
            .filter(|(mac, ip)| stored.get(*mac) != Some(*ip))
            .collect();
        assert!(
            lost.is_empty(),
            "run {run} (seed {seed}): {} of {} ACKed leases lost or changed by the power cut, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(
        !acked.is_empty(),
        "no lease was ever ACKed: the load did not run"
    );
    eprintln!(
        "power cuts under DHCP load: {runs} cuts ({cuts_with_unsynced} with unsynced data, {blocks_dropped} blocks dropped), {} leases ACKed and all kept, 0 violations",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_after_the_bootstrap_mark_or_call_never_bootstraps_twice() {
    if !may_mount() {
        return;
    }
    let (runs, seed) = campaign("power cuts around the bootstrap");
    let runs = (runs / 2).max(2);
    let mut rng = Rng(seed);
    let (mut marks, mut calls) = (0, 0);
    for run in 0..runs {
        // Every other run: cut right after the mark (the test hook exits there, before the
        // call), or right after the call reached the node (at a random moment within 300 ms).
        let after_call = run % 2 == 1;
        // Loopback nets of their own (the orchestrator tests use 41-60).
        let lab = Lab::new(61 + (run % 40) as u8);
        // The cluster as installed before: written straight to the disk's backing directory.
        let mut disk = Disk::new();
        let backing = disk.dirs.path().join("backing");
        apart(async {
            let db = Db::open(&backing).await.unwrap();
            provision(&db, &lab).await;
            db.close().await;
        });
        let http_port = served::free_tcp_port();
        let start = |disk: &Disk, n: usize, hook: bool| {
            let mut cmd = served::serve_without_dhcp(disk.dirs.path(), http_port);
            cmd.args(["--talos-api-port", &lab.port.to_string()])
                .args(["--config-access", "any", "--talos-version", VERSION])
                .env_remove("BOOTPLANE_TEST_CRASH_BEFORE_BOOTSTRAP_CALL")
                .env("BOOTPLANE_LOG", "info,bootplane=debug,sqlx=warn")
                .stderr(disk.log(&format!("serve-{run}"), n));
            if hook {
                cmd.env("BOOTPLANE_TEST_CRASH_BEFORE_BOOTSTRAP_CALL", "1");
            }
            cmd.spawn().unwrap()
        };
        let _turn = kit::turns::shared_async().await;
        let mut child = start(&disk, 0, !after_call);
        wait_healthy(http_port, &mut child).await;
        let http = reqwest::Client::new();
        for i in [CP3, CP1, CP2] {
            let r = http
                .get(format!(
                    "http://127.0.0.1:{http_port}/config?mac={}",
                    lab.nodes[i].mac
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "config of {}", lab.nodes[i].name);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        if after_call {
            while lab.calls_of("Bootstrap").is_empty() {
                assert!(Instant::now() < deadline, "run {run}: no Bootstrap call");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.next() % 300)).await;
            cut_power(&mut child, &disk, &AtomicBool::new(false)).await;
            calls += 1;
        } else {
            let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .expect("the hook never exited after marking")
                .unwrap();
            assert_eq!(status.code(), Some(86), "run {run}: {status}");
            // The process is gone; the power goes with whatever it had not synced.
            disk.mounted().cut();
            marks += 1;
        }
        assert_eq!(lab.calls_of("Bootstrap").len(), usize::from(after_call));

        disk.reboot().await;
        let restarted = kit::now_ms();
        let mut child = start(&disk, 1, false);
        wait_healthy(http_port, &mut child).await;
        let data = disk.data();
        let stored = || {
            apart(async {
                let db = Db::open(&data).await.unwrap();
                let found = (
                    db.get_bootstrap(CLUSTER, 1).await.unwrap(),
                    db.integrity_check().await.unwrap(),
                );
                db.close().await;
                found
            })
        };
        let target = &lab.nodes[CP1];
        // Evidence that the restarted orchestrator looked at the stored decision: with a call
        // marked and no outcome it checks the target's etcd first (after a call that reached
        // the node, etcd runs there and that finishes the record).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let checked = target
                .double
                .calls_of("EtcdMemberList")
                .iter()
                .any(|c| c.at_ms > restarted);
            let finished = after_call && stored().0.is_some_and(|r| r.outcome.is_some());
            if (checked && !after_call) || (finished && after_call) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {run} (seed {seed}): no re-evaluation after the restart; the disk kept {:?}",
                stored().0
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A second Bootstrap would follow at once; give it the time it would take.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (record, integrity) = stored();
        let record = record.unwrap_or_else(|| {
            panic!("run {run} (seed {seed}): the bootstrap decision was lost by the power cut")
        });
        assert_eq!(integrity, "ok", "run {run} (seed {seed})");
        assert_eq!(record.target_mac, target.mac, "{record:?}");
        assert!(
            record.called_at.is_some() && record.calls >= 1,
            "run {run} (seed {seed}): the Bootstrap mark was lost by the power cut: {record:?}"
        );
        let made = lab.calls_of("Bootstrap");
        assert_eq!(
            made.len(),
            usize::from(after_call),
            "run {run} (seed {seed}): {made:#?}"
        );
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        for node in &lab.nodes {
            node.stop().await;
        }
    }
    eprintln!(
        "power cuts around the bootstrap: {runs} cuts ({marks} right after the mark, {calls} after the call), every mark kept, no second Bootstrap, 0 violations"
    );
}
