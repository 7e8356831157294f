//! Child servers under test, all in the server namespace: the real `bootplane serve`, and the
//! references (nginx, dnsmasq, tftpd-hpa) and the trivial responder. Every one is stopped
//! (SIGTERM, then SIGKILL) when its guard drops, so an error anywhere in the bench never leaves
//! a server running.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::http_client as http;
use crate::netns::{Names, SERVER_IP};
use crate::sys::wait_until;
use crate::TALOS_VERSION;

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

/// What one appliance instance is set up with before it starts.
#[derive(Debug, Clone)]
pub struct ApplianceSetup {
    /// The instance's own directory (data, images, log).
    pub root: PathBuf,
    /// The iPXE (TFTP) directory, shared with the reference servers.
    pub ipxe: PathBuf,
    pub dhcp: DhcpMode,
    /// Kernel and initramfs to put in with `bootplane images add`.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Machines to assign (worker, static address), with a cluster to render configs.
    pub machines: Vec<(String, Ipv4Addr)>,
}

/// The appliance's DHCP mode for a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    Off,
    Proxy,
    Full,
}

impl DhcpMode {
    fn flag(self) -> &'static str {
        match self {
            DhcpMode::Off => "off",
            DhcpMode::Proxy => "proxy",
            DhcpMode::Full => "full",
        }
    }
}

/// The appliance's HTTP address in the server namespace.
pub const HTTP_PORT: u16 = 8080;

/// The appliance's log filter under load: warnings and errors only.
pub const APPLIANCE_LOG: &str = "warn";

pub fn http_addr() -> SocketAddr {
    SocketAddr::from((SERVER_IP, HTTP_PORT))
}

/// A running `bootplane serve` in the server namespace.
#[derive(Debug)]
pub struct Appliance {
    guard: Guard,
}

/// Puts the boot assets in with `bootplane images add` and assigns the machines.
async fn prepare(binary: &Path, setup: &ApplianceSetup) -> Result<()> {
    let data = setup.root.join("data");
    let images = setup.root.join("images");
    for dir in [&data, &images] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    run_cli(
        binary,
        &[
            "images".as_ref(),
            "add".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--images-dir".as_ref(),
            images.as_os_str(),
            "--version".as_ref(),
            TALOS_VERSION.as_ref(),
            "--kernel".as_ref(),
            setup.kernel.as_os_str(),
            "--initramfs".as_ref(),
            setup.initramfs.as_os_str(),
        ],
    )?;
    if !setup.machines.is_empty() {
        assign_machines(binary, &data, &setup.machines).await?;
    }
    Ok(())
}

impl Appliance {
    /// Puts the boot assets in with `bootplane images add`, assigns the machines, starts
    /// `bootplane serve` in the server namespace and waits for `/healthz`.
    pub async fn start(binary: &Path, names: &Names, setup: &ApplianceSetup) -> Result<Self> {
        prepare(binary, setup).await?;
        Self::launch(binary, names, setup, "bootplane.log").await
    }

    /// Starts `bootplane serve` on a data directory [`Appliance::start`] prepared (again, after
    /// a stop), its output to `log` in the setup's root, and waits for `/healthz`.
    pub async fn launch(
        binary: &Path,
        names: &Names,
        setup: &ApplianceSetup,
        log: &str,
    ) -> Result<Self> {
        let data = setup.root.join("data");
        let images = setup.root.join("images");
        let mut cmd = names.in_server(binary);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--interface", &names.server_if])
            .args(["--advertise-ip", &SERVER_IP.to_string()])
            .args(["--http-bind", &SERVER_IP.to_string()])
            .args(["--http-port", &HTTP_PORT.to_string()])
            // Every simulated machine shares the client namespace's one address: the
            // per-address cap (64 by default) would refuse a 200-machine storm.
            .args(["--http-max-connections-per-address", "512"])
            .args(["--tftp-port", "69"])
            // Not measured here.
            .args(["--events-port", "off", "--kernel-log-port", "off"])
            .args(["--dhcp-mode", setup.dhcp.flag()])
            .arg("--ipxe-dir")
            .arg(&setup.ipxe)
            .arg("--images-dir")
            .arg(&images)
            .args(["--talos-version", TALOS_VERSION]);
        if setup.dhcp == DhcpMode::Full {
            cmd.args(["--dhcp-subnet", "10.99.0.0/16"])
                .args(["--dhcp-pool", &format!("{POOL_START}-{POOL_END}")]);
        }
        // The flags above are the whole configuration: no BOOTPLANE_* settings leak in from the
        // environment the bench runs in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BOOTPLANE_") {
                cmd.env_remove(name);
            }
        }
        // No log line per packet or request, as dnsmasq runs with quiet-dhcp and nginx without
        // an access log: warnings and errors only (the bench reports those).
        cmd.env("BOOTPLANE_LOG", APPLIANCE_LOG);
        let mut guard = Guard::spawn("bootplane", cmd, setup.root.join(log))?;
        wait_http(&mut guard, http_addr(), "/healthz", Some(200)).await?;
        Ok(Self { guard })
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
        let (status, body) = http::get_small(http_addr(), "/metrics").await?;
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

/// The full-DHCP pool, shared by bootplane and dnsmasq.
pub const POOL_START: Ipv4Addr = Ipv4Addr::new(10, 99, 10, 0);
pub const POOL_END: Ipv4Addr = Ipv4Addr::new(10, 99, 250, 250);

/// Runs a `bootplane` CLI command to completion.
fn run_cli(binary: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "bootplane {:?} failed ({}): {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates the cluster with `bootplane cluster init`, then assigns every machine (worker,
/// hostname, static address) straight through the library's database layer: the CLI checks
/// the whole inventory's configs on every add, which for thousands of machines takes minutes.
async fn assign_machines(
    binary: &Path,
    data: &Path,
    machines: &[(String, Ipv4Addr)],
) -> Result<()> {
    run_cli(
        binary,
        &[
            "cluster".as_ref(),
            "init".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--name".as_ref(),
            "bench".as_ref(),
            "--endpoint".as_ref(),
            "https://10.99.0.5:6443".as_ref(),
            "--talos-version".as_ref(),
            TALOS_VERSION.as_ref(),
        ],
    )?;
    let db = bootplane::db::Db::open(data)
        .await
        .context("opening the appliance database")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for (i, (mac, ip)) in machines.iter().enumerate() {
        let mac: bootplane::model::Mac = mac.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut m = bootplane::model::Machine::discovered(mac);
        m.cluster = "bench".into();
        m.role = bootplane::model::Role::Worker;
        m.hostname = Some(format!("node-{i}"));
        m.ip = Some(
            format!("{ip}/16")
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        m.install_disk = Some("/dev/sda".into());
        db.add_machine(&m, now)
            .await
            .with_context(|| format!("adding machine {mac}"))?;
    }
    Ok(())
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

/// `name` on PATH or in the sbin directories Debian uses.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A reference server (nginx, dnsmasq, in.tftpd) or the trivial responder, running in the
/// server namespace.
#[derive(Debug)]
pub struct Reference {
    guard: Guard,
}

impl Reference {
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn check_alive(&mut self) -> Result<()> {
        match self.guard.exited() {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status})\n{}",
                self.guard.name,
                self.guard.log_tail()
            ),
        }
    }

    pub fn stop(mut self) {
        self.guard.stop();
    }

    /// nginx (master plus `worker_processes auto`, sendfile on) serving `root` on the server
    /// address, `port`.
    pub async fn nginx(names: &Names, prefix: &Path, root: &Path, port: u16) -> Result<Self> {
        let binary = find_program("nginx").context("nginx is not installed")?;
        fs::create_dir_all(prefix).with_context(|| format!("creating {}", prefix.display()))?;
        let addr = SocketAddr::from((SERVER_IP, port));
        let p = prefix.display();
        let conf = format!(
            "worker_processes auto;\n\
             daemon off;\n\
             pid {p}/nginx.pid;\n\
             error_log stderr warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   default_type application/octet-stream;\n\
             \x20   sendfile on;\n\
             \x20   tcp_nopush on;\n\
             \x20   keepalive_requests 100000;\n\
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
        let mut cmd = names.in_server(binary);
        cmd.arg("-p")
            .arg(prefix)
            .args(["-e", "stderr"])
            .arg("-c")
            .arg(&conf_path);
        let mut guard = Guard::spawn("nginx", cmd, prefix.join("nginx.log"))?;
        wait_http(&mut guard, addr, "/", None).await?;
        Ok(Self { guard })
    }

    /// dnsmasq in the foreground, DNS off, with `lines` as the rest of its configuration.
    pub async fn dnsmasq(names: &Names, dir: &Path, lines: &[String]) -> Result<Self> {
        let binary = find_program("dnsmasq").context("dnsmasq is not installed")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut conf = format!(
            "port=0\nno-resolv\nno-hosts\nuser=root\ninterface={}\nbind-interfaces\n\
             log-facility=-\ndhcp-leasefile={}\n",
            names.server_if,
            dir.join("dnsmasq.leases").display()
        );
        for line in lines {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = dir.join("dnsmasq.conf");
        fs::write(&conf_path, conf)?;
        let mut cmd = names.in_server(binary);
        cmd.arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf_path.display()));
        let mut guard = Guard::spawn("dnsmasq", cmd, dir.join("dnsmasq.log"))?;
        settle(&mut guard).await?;
        Ok(Self { guard })
    }

    /// ISC Kea's DHCPv4 server (Debian's `kea-dhcp4-server`, 2.2) set up for speed: leases in
    /// a memfile kept on disk, lease caching on, no per-packet logging, multi-threading on with
    /// one thread per core (Kea 2.4's default) and a packet queue of 1,000; the pool and boot
    /// files of the other full DHCP servers.
    ///
    /// The threading is Kea's best on a 2-core machine by this bench's open-loop DORA search:
    /// multi-threading off 7,000/s; the manual's memfile suggestion (4 threads, queue 28)
    /// 3,200-3,700/s (its queue overflows); 2 threads with a queue of 64 15,000/s, 200
    /// 16,000/s, 1,000 20,000/s, 4,000 18,000/s.
    pub async fn kea(names: &Names, dir: &Path) -> Result<Self> {
        let binary = find_program("kea-dhcp4")
            .context("ISC Kea is not installed (Debian: kea-dhcp4-server)")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = serde_json::json!({
            "Dhcp4": {
                "interfaces-config": {
                    "interfaces": [names.server_if],
                    "dhcp-socket-type": "raw",
                },
                "lease-database": {
                    "type": "memfile",
                    "persist": true,
                    "name": dir.join("kea-leases4.csv"),
                    "lfc-interval": 3600,
                },
                "multi-threading": {
                    "enable-multi-threading": true,
                    "thread-pool-size": 0,
                    "packet-queue-size": 1000,
                },
                "authoritative": true,
                "valid-lifetime": 3600,
                "cache-threshold": 0.25,
                "client-classes": [
                    { "name": "efi64", "test": "option[93].hex == 0x0007", "boot-file-name": "ipxe.efi" },
                    { "name": "bios", "test": "option[93].hex == 0x0000", "boot-file-name": "undionly.kpxe" },
                ],
                "subnet4": [{
                    "id": 1,
                    "subnet": format!("10.99.0.0/{}", crate::netns::PREFIX),
                    "pools": [{ "pool": format!("{POOL_START} - {POOL_END}") }],
                    "next-server": SERVER_IP.to_string(),
                }],
                "loggers": [{
                    "name": "kea-dhcp4",
                    "output_options": [{ "output": dir.join("kea-dhcp4.log") }],
                    "severity": "WARN",
                }],
            }
        });
        let conf_path = dir.join("kea-dhcp4.conf");
        fs::write(&conf_path, serde_json::to_vec_pretty(&conf)?)?;
        let mut cmd = names.in_server(binary);
        cmd.arg("-c")
            .arg(&conf_path)
            .env("KEA_PIDFILE_DIR", dir)
            .env("KEA_LOCKFILE_DIR", dir);
        let mut guard = Guard::spawn("kea-dhcp4", cmd, dir.join("kea.log"))?;
        settle(&mut guard).await?;
        Ok(Self { guard })
    }

    /// tftpd-hpa in the foreground, serving `root` (chrooted) on the server address.
    pub async fn tftpd(names: &Names, dir: &Path, root: &Path) -> Result<Self> {
        let binary = find_program("in.tftpd").context("tftpd-hpa (in.tftpd) is not installed")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = names.in_server(binary);
        cmd.args(["--foreground", "--listen", "--ipv4", "--user", "root"])
            .args(["--address", &format!("{SERVER_IP}:69")])
            .arg("--secure")
            .arg(root);
        let mut guard = Guard::spawn("tftpd-hpa", cmd, dir.join("tftpd.log"))?;
        settle(&mut guard).await?;
        Ok(Self { guard })
    }

    /// This bench's own trivial responder (`--responder KIND`) in the server namespace.
    pub async fn responder(names: &Names, dir: &Path, kind: &str) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = names.in_server(exe);
        cmd.args(["--responder", kind, "--netns-id", &names.id.to_string()]);
        let mut guard = Guard::spawn(
            "trivial responder",
            cmd,
            dir.join(format!("responder-{kind}.log")),
        )?;
        settle(&mut guard).await?;
        Ok(Self { guard })
    }
}

/// Gives a UDP server a moment to bind (there is nothing to poll without sending it load) and
/// checks it is still running.
async fn settle(guard: &mut Guard) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(status) = guard.exited() {
        bail!(
            "{} exited during start-up ({status})\n{}",
            guard.name,
            guard.log_tail()
        );
    }
    Ok(())
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
