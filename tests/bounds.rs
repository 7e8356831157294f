//! What strangers can make bootplane keep, measured against the real binary: a benchmark that
//! prints figures (README, Bounds), not a timed test. Run it with
//!
//! ```sh
//! cargo test --release --test bounds -- --ignored --nocapture
//! ```
//!
//! `BOOTPLANE_FLOOD=N` changes the number of DISCOVERs (100,000 by default).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bootplane::db::{Db, DISCOVERED_CAP};
use bootplane::model::Mac;

const BIN: &str = env!("CARGO_BIN_EXE_bootplane");
const FLOOD: usize = 100_000;
/// DISCOVERs sent before waiting for their offers.
const IN_FLIGHT: usize = 64;

/// The appliance process; killed when dropped, so a failing run leaves nothing behind.
struct Appliance {
    child: Child,
    log: PathBuf,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Appliance {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// User and system CPU time in clock ticks (100 per second on Linux).
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free on every address (the DHCP sockets bind 0.0.0.0).
fn free_udp_port(taken: &[u16]) -> u16 {
    loop {
        let port = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !taken.contains(&port) {
            return port;
        }
    }
}

fn http_get(http: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&http, Duration::from_millis(500)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.1 200").then_some(answer)
}

fn start(data: &Path, ipxe: &Path) -> (Appliance, SocketAddr, u16) {
    let http_port = free_tcp_port();
    let dhcp_port = free_udp_port(&[]);
    let pxe_port = free_udp_port(&[dhcp_port]);
    let tftp_port = free_udp_port(&[dhcp_port, pxe_port]);
    let log = data.join("bootplane.log");
    let log_file = fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--data-dir", data.to_str().unwrap()])
        .args(["--dhcp-mode", "proxy", "--interface", "lo"])
        .args(["--advertise-ip", "127.0.0.1", "--http-bind", "127.0.0.1"])
        .args(["--http-port", &http_port.to_string()])
        .args(["--dhcp-port", &dhcp_port.to_string()])
        .args(["--pxe-port", &pxe_port.to_string()])
        .args(["--tftp-port", &tftp_port.to_string()])
        .args(["--ipv6-ra", "off", "--events-port", "off"])
        .args(["--kernel-log-port", "off"])
        .args(["--ipxe-dir", ipxe.to_str().unwrap()])
        .args(["--images-dir", data.join("images").to_str().unwrap()])
        .env("BOOTPLANE_ADMIN_PASSWORD", "bounds-bench-password")
        .env("BOOTPLANE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("cannot start bootplane serve");
    let mut app = Appliance { child, log };
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(http, "/healthz").is_none() {
        if let Some(status) = app.child.try_wait().unwrap() {
            panic!("bootplane exited ({status}):\n{}", app.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz:\n{}",
            app.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (app, http, dhcp_port)
}

/// A BIOS PXE ROM's DHCPDISCOVER (option 93 arch 0, option 60 PXEClient).
fn pxe_discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut b = vec![1, 1, 6, 0];
    b.extend_from_slice(&xid.to_be_bytes());
    b.extend_from_slice(&[0, 4, 0, 0]); // secs, flags
    b.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    b.extend_from_slice(&mac);
    b.extend_from_slice(&[0; 10 + 64 + 128]); // chaddr padding, sname, file
    b.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 93, 2, 0, 0, 94, 3, 1, 2, 1]);
    let class = b"PXEClient:Arch:00000:UNDI:002001";
    b.extend_from_slice(&[60, class.len() as u8]);
    b.extend_from_slice(class);
    b.push(255);
    b
}

fn dir_bytes(dir: &Path, prefix: &str) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[test]
#[ignore = "benchmark (about a minute): cargo test --release --test bounds -- --ignored --nocapture"]
fn random_mac_discover_flood_keeps_rss_and_database_bounded() {
    let flood: usize = std::env::var("BOOTPLANE_FLOOD")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(FLOOD);
    let data = tempfile::tempdir().unwrap();
    let ipxe = tempfile::tempdir().unwrap();
    for name in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        fs::write(ipxe.path().join(name), vec![0u8; 4096]).unwrap();
    }
    let (app, http, dhcp_port) = start(data.path(), ipxe.path());
    let rss_start = app.status_kib("VmRSS:");

    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, dhcp_port));
    let started = Instant::now();
    let (mut answered, mut in_flight, mut sent) = (0usize, 0usize, 0usize);
    let mut reply = [0u8; 1500];
    while sent < flood || in_flight > 0 {
        while sent < flood && in_flight < IN_FLIGHT {
            let mut mac: [u8; 6] = rand::random();
            mac[0] = (mac[0] & 0xfc) | 0x02; // locally administered, unicast
            client
                .send_to(&pxe_discover(mac, sent as u32), server)
                .unwrap();
            sent += 1;
            in_flight += 1;
        }
        match client.recv(&mut reply) {
            Ok(_) => {
                answered += 1;
                in_flight -= 1;
            }
            // Lost on loopback (a full socket buffer): the window starts again.
            Err(_) => in_flight = 0,
        }
    }
    let sending = started.elapsed();

    // The recorder stores events in order: once a MAC sent after the flood is in, everything
    // before it is stored (or was dropped, when its queue was full, and counted). It is sent
    // again until it is stored, in case the queue was full when it came.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(Db::open(data.path())).unwrap();
    let sentinel = [0x02, 0xff, 0xff, 0xff, 0xff, 0xfe];
    let deadline = Instant::now() + Duration::from_secs(300);
    while rt
        .block_on(db.get_machine(Mac(sentinel)))
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the last DISCOVER was never stored"
        );
        client.send_to(&pxe_discover(sentinel, 0), server).unwrap();
        let _ = client.recv(&mut reply);
        std::thread::sleep(Duration::from_millis(250));
    }
    let stored = started.elapsed();
    let machines = rt.block_on(db.list_machines()).unwrap().len();
    rt.block_on(db.close());

    let rss = app.status_kib("VmRSS:");
    let peak = app.status_kib("VmHWM:");
    let ticks = app.cpu_ticks();
    let idle = Duration::from_secs(10);
    std::thread::sleep(idle);
    let idle_share = (app.cpu_ticks() - ticks) as f64 / 100.0 / idle.as_secs_f64();
    let metrics = http_get(http, "/metrics").unwrap_or_default();
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("bootplane_events_dropped_total"))
        .unwrap_or("bootplane_events_dropped_total ?");
    let db_bytes = dir_bytes(data.path(), "bootplane.db");

    println!("discover flood against the real binary (proxy mode on lo)");
    println!(
        "  DISCOVERs sent {sent}, offers {answered}, in {:.1} s; stored by {:.1} s",
        sending.as_secs_f64(),
        stored.as_secs_f64()
    );
    println!("  machines stored {machines} (cap {DISCOVERED_CAP}); {dropped}");
    println!(
        "  RSS {} at start, {} after, peak {}",
        mib(rss_start),
        mib(rss),
        mib(peak)
    );
    println!(
        "  database {:.1} MiB (with -wal and -shm)",
        db_bytes as f64 / 1048576.0
    );
    println!(
        "  CPU while idle after the flood: {:.1}% of a core",
        idle_share * 100.0
    );
    assert!(
        machines as i64 <= DISCOVERED_CAP,
        "{machines} machines kept"
    );
    assert!(answered > 0, "no offers:\n{}", app.log_text());
}
