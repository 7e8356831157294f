//! The appliance's real binary: `bootplane serve` as a process on free loopback ports, killed
//! when dropped, so a failing test leaves nothing running.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::turns::{self, Shared};
use super::BIN;

pub fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free on every address (the DHCP sockets bind 0.0.0.0).
pub fn free_udp_port(taken: &[u16]) -> u16 {
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

/// The ports of an appliance in proxyDHCP mode on `lo`.
pub struct ProxyPorts {
    pub http: u16,
    pub dhcp: u16,
    pub pxe: u16,
    pub tftp: u16,
}

impl ProxyPorts {
    pub fn free() -> ProxyPorts {
        let http = free_tcp_port();
        let dhcp = free_udp_port(&[]);
        let pxe = free_udp_port(&[dhcp]);
        let tftp = free_udp_port(&[dhcp, pxe]);
        ProxyPorts {
            http,
            dhcp,
            pxe,
            tftp,
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.http))
    }

    /// `bootplane serve` on `data_dir`, proxyDHCP on `lo`, HTTP and TFTP on these ports; no
    /// event sink, kernel log receiver, HTTPS or router advertisements (their fixed default
    /// ports would collide with other appliances on this host). The caller adds the rest.
    pub fn serve(&self, data_dir: &Path) -> Command {
        let mut cmd = serve_on_loopback(data_dir, self.http, self.tftp);
        cmd.args(["--dhcp-mode", "proxy"])
            .args(["--dhcp-port", &self.dhcp.to_string()])
            .args(["--pxe-port", &self.pxe.to_string()])
            .args(["--ipv6-ra", "off"]);
        cmd
    }
}

/// `bootplane serve` on `data_dir` and `lo`, HTTP and TFTP on the given ports, with no event
/// sink, kernel log receiver or HTTPS (their fixed default ports would collide with other
/// appliances on this host). The caller adds the DHCP mode and the rest.
fn serve_on_loopback(data_dir: &Path, http: u16, tftp: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--interface", "lo"])
        .args(["--advertise-ip", "127.0.0.1", "--http-bind", "127.0.0.1"])
        .args(["--http-port", &http.to_string()])
        .args(["--tftp-port", &tftp.to_string()])
        .args(["--events-port", "off", "--kernel-log-port", "off"])
        .args(["--https-port", "off"]);
    cmd
}

/// `bootplane serve` with DHCP off, its data, iPXE and images directories under `dirs`
/// (`data/`, `ipxe/`, `images/`), HTTP on `http_port`, TFTP on a free port, as a tokio process
/// killed when dropped; callers add their own flags, environment and output.
pub fn serve_without_dhcp(dirs: &Path, http_port: u16) -> tokio::process::Command {
    serve_in(dirs, http_port, &[], |cmd| {
        cmd.args(["--dhcp-mode", "off"]);
    })
}

/// `bootplane serve` as the segment's DHCP server (full mode) on `lo`, handing out `pool`
/// (`START-END`) on `dhcp_port` (the PXE boot server on `pxe_port`); directories, HTTP and TFTP
/// as `serve_without_dhcp`.
pub fn serve_full_dhcp(
    dirs: &Path,
    http_port: u16,
    dhcp_port: u16,
    pxe_port: u16,
    pool: &str,
) -> tokio::process::Command {
    serve_in(dirs, http_port, &[dhcp_port, pxe_port], |cmd| {
        cmd.args(["--dhcp-mode", "full"])
            .args(["--dhcp-port", &dhcp_port.to_string()])
            .args(["--pxe-port", &pxe_port.to_string()])
            .args(["--dhcp-pool", pool])
            .args(["--ipv6-ra", "off"]);
    })
}

/// The common part: directories under `dirs`, TFTP on a free port other than `taken`.
fn serve_in(
    dirs: &Path,
    http_port: u16,
    taken: &[u16],
    dhcp: impl FnOnce(&mut Command),
) -> tokio::process::Command {
    let mut cmd = serve_on_loopback(&dirs.join("data"), http_port, free_udp_port(taken));
    dhcp(&mut cmd);
    cmd.arg("--ipxe-dir")
        .arg(dirs.join("ipxe"))
        .arg("--images-dir")
        .arg(dirs.join("images"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// A running `bootplane serve`; its output goes to `log`.
pub struct Served {
    pub child: Child,
    pub log: PathBuf,
    /// Held while the process runs: heavy tests wait for it (`turns`).
    _turn: Shared,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `cmd` with its output in `log`, then waits until `http` answers `/healthz`.
    pub fn start(cmd: &mut Command, log: PathBuf, http: SocketAddr) -> Served {
        let turn = turns::shared();
        let log_file = fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("cannot start bootplane serve");
        let mut served = Served {
            child,
            log,
            _turn: turn,
        };
        served.wait_healthy(http);
        served
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/healthz` until the appliance answers; the server binds every socket before
    /// serving HTTP, so an answer means DHCP listens too.
    fn wait_healthy(&mut self, http: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "bootplane serve exited ({status}) before serving:\n{}",
                    self.log_text()
                );
            }
            if http_get(http, "/healthz").is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bootplane did not answer /healthz within 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A plain HTTP/1.1 GET of `path`: the whole answer when its status is 200.
pub fn http_get(http: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&http, Duration::from_millis(500)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.1 200").then_some(answer)
}
