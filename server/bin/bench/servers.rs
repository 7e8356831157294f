//! Child servers under test: the real `bootplane serve`, and nginx as the HTTP reference.
//! Both are stopped (SIGTERM, then SIGKILL) when their guard drops, so an error anywhere in the
//! bench never leaves a server running.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::http_client as http;
use crate::sys::{free_tcp_port, free_udp_port, wait_until};

/// How long a server gets to come up.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long a server gets to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A child process that is terminated when dropped.
#[derive(Debug)]
struct Guard {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Guard {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self { child, name, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the child has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines the child wrote, for error messages.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        format!(
            "last output of {} ({}):\n{}",
            self.name,
            self.log.display(),
            tail.join("\n")
        )
    }

    /// SIGTERM, wait, then SIGKILL if it lingers. Returns the exit status when it was graceful.
    fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let mut status = None;
        wait_until(STOP_LIMIT, || {
            status = self.exited();
            status.is_some()
        });
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `path` over HTTP until it answers `want` (any status when `None`), the child exits,
/// or the start limit passes.
async fn wait_http(
    guard: &mut Guard,
    addr: SocketAddr,
    path: &str,
    want: Option<u16>,
) -> Result<()> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Some(status) = guard.exited() {
            bail!(
                "{} exited during start-up ({status})\n{}",
                guard.name,
                guard.log_tail()
            );
        }
        match (http::answers(addr, path).await, want) {
            (Some(got), Some(want)) if got == want => return Ok(()),
            (Some(_), None) => return Ok(()),
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not answer GET {path} on {addr} within {START_LIMIT:?}\n{}",
                guard.name,
                guard.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the appliance reads and writes, all under one temporary directory.
#[derive(Debug, Clone)]
pub struct ApplianceDirs {
    pub data: PathBuf,
    pub ipxe: PathBuf,
    pub images: PathBuf,
    pub log: PathBuf,
}

impl ApplianceDirs {
    /// Creates data, iPXE and images directories under `root`. The iPXE directory gets
    /// Debian's binaries when installed, otherwise stand-ins; the images directory gets small
    /// stand-ins for the Talos kernel and initramfs (a scenario may replace them), so the
    /// appliance starts without warnings about missing files.
    pub fn create(root: &Path, talos_version: &str) -> Result<Self> {
        let dirs = Self {
            data: root.join("data"),
            ipxe: root.join("ipxe"),
            images: root.join("images"),
            log: root.join("bootplane.log"),
        };
        let version_dir = dirs.images.join(talos_version);
        for dir in [&dirs.data, &dirs.ipxe, &version_dir] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let stand_in: Vec<u8> = (0..256 * 1024).map(|i: u32| (i % 251) as u8).collect();
        for name in ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe-arm64.efi"] {
            let target = dirs.ipxe.join(name);
            if fs::copy(Path::new("/usr/lib/ipxe").join(name), &target).is_err() {
                fs::write(&target, &stand_in)
                    .with_context(|| format!("writing {}", target.display()))?;
            }
        }
        for name in ["vmlinuz-amd64", "initramfs-amd64.xz"] {
            let target = version_dir.join(name);
            fs::write(&target, &stand_in)
                .with_context(|| format!("writing {}", target.display()))?;
        }
        Ok(dirs)
    }
}

/// The ports the appliance serves on.
#[derive(Debug, Clone, Copy)]
pub struct AppliancePorts {
    pub http: SocketAddr,
    pub dhcp: SocketAddr,
    pub pxe: SocketAddr,
    pub tftp: u16,
}

/// A running `bootplane serve`.
#[derive(Debug)]
pub struct Appliance {
    guard: Guard,
    pub ports: AppliancePorts,
}

impl Appliance {
    /// Starts `bootplane serve` on loopback ports picked now and waits for `/healthz`.
    pub async fn start(
        binary: &Path,
        dirs: &ApplianceDirs,
        talos_version: &str,
        dhcp: bool,
    ) -> Result<Self> {
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ports = AppliancePorts {
            http: loopback(free_tcp_port()?),
            dhcp: loopback(free_udp_port()?),
            pxe: loopback(free_udp_port()?),
            tftp: free_udp_port()?,
        };
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&dirs.data)
            .args(["--interface", "lo", "--advertise-ip", "127.0.0.1"])
            .args(["--http-bind", "127.0.0.1"])
            .args(["--http-port", &ports.http.port().to_string()])
            .args(["--tftp-port", &ports.tftp.to_string()])
            // Not measured here; their fixed default ports could be taken on this host.
            .args(["--events-port", "off", "--kernel-log-port", "off"])
            .args(["--dhcp-mode", if dhcp { "proxy" } else { "off" }])
            .args(["--dhcp-port", &ports.dhcp.port().to_string()])
            .args(["--pxe-port", &ports.pxe.port().to_string()])
            .arg("--ipxe-dir")
            .arg(&dirs.ipxe)
            .arg("--images-dir")
            .arg(&dirs.images)
            .args(["--talos-version", talos_version]);
        // The flags above are the whole configuration: no BOOTPLANE_* settings leak in from the
        // environment the bench runs in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BOOTPLANE_") {
                cmd.env_remove(name);
            }
        }
        let mut guard = Guard::spawn("bootplane", cmd, dirs.log.clone())?;
        wait_http(&mut guard, ports.http, "/healthz", Some(200)).await?;
        Ok(Self { guard, ports })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Whether the appliance is still running (it must survive every scenario).
    pub fn check_alive(&mut self) -> Result<()> {
        match self.guard.exited() {
            None => Ok(()),
            Some(status) => bail!("bootplane exited ({status})\n{}", self.guard.log_tail()),
        }
    }

    /// The Prometheus counters whose name contains one of `names`, as "name{labels} value".
    pub async fn metrics(&self, names: &[&str]) -> Result<Vec<String>> {
        let (status, body) = http::get_small(self.ports.http, "/metrics").await?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.starts_with('#') && names.iter().any(|n| l.contains(n)))
            .map(str::to_string)
            .collect())
    }

    /// The appliance's WARN and ERROR log lines (escape codes removed), counted by message,
    /// in order of first appearance.
    pub fn log_warnings(&self) -> Vec<(String, usize)> {
        let text = fs::read_to_string(&self.guard.log).unwrap_or_default();
        let mut seen: Vec<(String, usize)> = Vec::new();
        for line in text.lines().map(strip_ansi) {
            let Some(pos) = line.find(" WARN ").or_else(|| line.find(" ERROR ")) else {
                continue;
            };
            // Group by level, target and the start of the message; drop the timestamp.
            let key: String = line[pos..].trim().chars().take(110).collect();
            match seen.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => seen.push((key, 1)),
            }
        }
        seen
    }

    /// Stops it gracefully; an error when it had to be killed or exited unsuccessfully.
    pub fn stop(&mut self) -> Result<()> {
        match self.guard.stop() {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("bootplane exited with {status}\n{}", self.guard.log_tail()),
            None => bail!(
                "bootplane did not stop within {STOP_LIMIT:?} of SIGTERM and was killed\n{}",
                self.guard.log_tail()
            ),
        }
    }
}

/// `text` without ANSI colour escapes (CSI sequences).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip "[" and parameters up to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running nginx serving `root` with sendfile, as the HTTP reference.
#[derive(Debug)]
pub struct Nginx {
    guard: Guard,
    pub addr: SocketAddr,
}

/// `nginx` on PATH or in the sbin directories Debian uses.
pub fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

impl Nginx {
    /// Writes a config under `prefix` and starts nginx (master plus `worker_processes auto`)
    /// in the foreground, listening on a free loopback port.
    pub async fn start(binary: &Path, prefix: &Path, root: &Path) -> Result<Self> {
        fs::create_dir_all(prefix).with_context(|| format!("creating {}", prefix.display()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
        let p = prefix.display();
        let conf = format!(
            "worker_processes auto;\n\
             daemon off;\n\
             pid {p}/nginx.pid;\n\
             error_log stderr warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   default_type application/octet-stream;\n\
             \x20   sendfile on;\n\
             \x20   tcp_nopush on;\n\
             \x20   client_body_temp_path {p}/body;\n\
             \x20   proxy_temp_path {p}/proxy;\n\
             \x20   fastcgi_temp_path {p}/fastcgi;\n\
             \x20   uwsgi_temp_path {p}/uwsgi;\n\
             \x20   scgi_temp_path {p}/scgi;\n\
             \x20   server {{\n\
             \x20       listen {addr};\n\
             \x20       root {root};\n\
             \x20   }}\n\
             }}\n",
            root = root.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let mut cmd = Command::new(binary);
        cmd.arg("-p")
            .arg(prefix)
            .args(["-e", "stderr"])
            .arg("-c")
            .arg(&conf_path);
        let mut guard = Guard::spawn("nginx", cmd, prefix.join("nginx.log"))?;
        wait_http(&mut guard, addr, "/", None).await?;
        Ok(Self { guard, addr })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn stop(mut self) {
        self.guard.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_escapes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m sqlx::query: slow"),
            "2026  WARN sqlx::query: slow"
        );
    }
}
