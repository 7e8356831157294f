//! What strangers can make bootplane keep, measured against the real binary: a benchmark that
//! prints figures (README, Bounds), not a timed test. Run it with
//!
//! ```sh
//! cargo test --release --test it bounds:: -- --ignored --nocapture
//! ```
//!
//! `BOOTPLANE_FLOOD=N` changes the number of DISCOVERs (100,000 by default). The other two
//! hold 200 concurrent wrong logins, and 2,000 half-open HTTP connections with 2,000 silent
//! TFTP read requests from many loopback addresses, while a real client is served.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bootplane::db::{Db, DISCOVERED_CAP};
use bootplane::model::Mac;

use crate::kit::served::{http_get, ProxyPorts, Served};
use crate::kit::turns;

const FLOOD: usize = 100_000;
/// DISCOVERs sent before waiting for their offers.
const IN_FLIGHT: usize = 64;

impl Served {
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

/// The real binary in proxyDHCP mode, logging only warnings, with `ipxe`'s binaries: the
/// process, its HTTP address and its DHCP port.
fn start(data: &Path, ipxe: &Path) -> (Served, SocketAddr, u16) {
    let ports = ProxyPorts::free();
    let mut cmd = ports.serve(data);
    cmd.arg("--ipxe-dir")
        .arg(ipxe)
        .arg("--images-dir")
        .arg(data.join("images"))
        .env("BOOTPLANE_ADMIN_PASSWORD", "bounds-bench-password")
        .env("BOOTPLANE_LOG", "warn");
    let http = ports.http_addr();
    let app = Served::start(&mut cmd, data.join("bootplane.log"), http);
    (app, http, ports.dhcp)
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
#[ignore = "benchmark (about a minute): cargo test --release --test it bounds:: -- --ignored --nocapture"]
fn random_mac_discover_flood_keeps_rss_and_database_bounded() {
    let _alone = turns::alone();
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

/// A TCP connection from `from` (any 127/8 address: loopback answers them all).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((from, 0)).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(sock.into())
}

/// The `n`th of many loopback addresses, none of them 127.0.0.1.
fn stranger(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        10 + (n / 62_500) as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 1) as u8,
    )
}

fn ipxe_dir() -> tempfile::TempDir {
    let ipxe = tempfile::tempdir().unwrap();
    for name in ["undionly.kpxe", "snponly.efi"] {
        fs::write(ipxe.path().join(name), vec![0u8; 4096]).unwrap();
    }
    // A real-sized iPXE binary for the legitimate fetch, with content to verify.
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(ipxe.path().join("ipxe.efi"), body).unwrap();
    ipxe
}

#[test]
#[ignore = "benchmark: cargo test --release --test it bounds:: -- --ignored --nocapture"]
fn two_hundred_concurrent_wrong_logins_keep_rss_bounded() {
    let _alone = turns::alone();
    let data = tempfile::tempdir().unwrap();
    let ipxe = ipxe_dir();
    let (app, http, _) = start(data.path(), ipxe.path());
    let rss_start = app.status_kib("VmRSS:");
    let started = Instant::now();
    // 200 attempts at once, from 200 addresses (one address alone is refused after 10).
    let codes: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                scope.spawn(move || {
                    let Ok(mut stream) = connect_from(stranger(i), http) else {
                        return "connect-failed".to_string();
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    let body = format!("username=admin&password=wrong-{i}");
                    let request = format!(
                        "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let mut answer = String::new();
                    if stream.write_all(request.as_bytes()).is_err()
                        || stream.read_to_string(&mut answer).is_err()
                    {
                        return "no-answer".to_string();
                    }
                    answer.get(9..12).unwrap_or("???").to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();
    let peak = app.status_kib("VmHWM:");
    let mut tally: std::collections::BTreeMap<&str, usize> = Default::default();
    for code in &codes {
        *tally.entry(code.as_str()).or_default() += 1;
    }
    // The right password from another address still works afterwards.
    let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 9), http).unwrap();
    let body = "username=admin&password=bounds-bench-password";
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    println!("200 concurrent wrong logins from 200 addresses against the real binary");
    println!("  answers {tally:?} in {:.1} s", took.as_secs_f64());
    println!(
        "  RSS {} at start, peak {} (target < 100 MiB)",
        mib(rss_start),
        mib(peak)
    );
    println!(
        "  the right password afterwards: {}",
        &answer[..answer.find('\r').unwrap_or(0)]
    );
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert_eq!(tally.values().sum::<usize>(), 200);
}

#[test]
#[ignore = "benchmark: cargo test --release --test it bounds:: -- --ignored --nocapture"]
fn half_open_connections_and_silent_tftp_requests_leave_healthz_and_a_fetch_served() {
    let _alone = turns::alone();
    let data = tempfile::tempdir().unwrap();
    let ipxe = ipxe_dir();
    let (app, http, dhcp_port) = start(data.path(), ipxe.path());
    // `start` picked the TFTP port among the ones it probed; read it back from the process.
    let tftp_port = tftp_port_of(&app, dhcp_port);
    let tftp = SocketAddr::from((Ipv4Addr::LOCALHOST, tftp_port));
    let rss_start = app.status_kib("VmRSS:");

    // 2,000 connections that send half a request head and wait, from 40 addresses.
    let mut held = Vec::new();
    let (mut refused, mut opened) = (0usize, 0usize);
    for i in 0..2000 {
        match connect_from(stranger(i / 50), http) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
                opened += 1;
                held.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    // 2,000 read requests asking for the longest timeout, never acknowledged, from 250
    // addresses (8 each, the per-address share).
    let mut silent = Vec::new();
    for i in 0..2000 {
        let sock = UdpSocket::bind((stranger(10_000 + i / 8), 0)).unwrap();
        // The longest `timeout` bootplane grants (5 s).
        let _ = sock.send_to(b"\0\x01ipxe.efi\0octet\0timeout\x005\0", tftp);
        silent.push(sock);
    }
    std::thread::sleep(Duration::from_millis(1500));

    let t = Instant::now();
    let healthz = http_get(http, "/healthz").is_some();
    let healthz_took = t.elapsed();
    let out = data.path().join("fetched.efi");
    let t = Instant::now();
    let fetched = Command::new("tftp")
        .args([
            "127.0.0.1",
            &tftp_port.to_string(),
            "-m",
            "binary",
            "-c",
            "get",
            "ipxe.efi",
        ])
        .arg(&out)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        && fs::read(&out).ok() == fs::read(ipxe.path().join("ipxe.efi")).ok();
    let fetch_took = t.elapsed();
    let peak = app.status_kib("VmHWM:");
    let metrics = http_get(http, "/metrics").unwrap_or_default();
    println!("2,000 half-open HTTP connections and 2,000 silent TFTP requests, real binary");
    println!("  HTTP: {opened} connected ({refused} refused at connect)");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("bootplane_http_connections") || l.starts_with("bootplane_tftp"))
    {
        println!("  {line}");
    }
    println!(
        "  /healthz answered: {healthz} in {:.0} ms; tftp-hpa fetched ipxe.efi (1 MB, verified): {fetched} in {:.0} ms",
        healthz_took.as_secs_f64() * 1000.0,
        fetch_took.as_secs_f64() * 1000.0
    );
    println!("  RSS {} at start, peak {}", mib(rss_start), mib(peak));
    drop(held);
    drop(silent);
    assert!(healthz && fetched, "{}", app.log_text());
}

/// The TFTP port of a bootplane started by `start` (the port its process has bound besides
/// the DHCP ones), from /proc/net/udp.
fn tftp_port_of(app: &Served, dhcp_port: u16) -> u16 {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{}/fd", app.child.id()))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let table = fs::read_to_string("/proc/net/udp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            inodes.contains(&f.get(9)?.to_string()).then_some(port)
        })
        .find(|p| *p != dhcp_port && *p < 61_000 && *p > 1024)
        .unwrap()
}
