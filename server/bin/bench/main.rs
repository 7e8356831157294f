//! `bootplane-bench`: bootplane beside the servers operators would otherwise run, on the same
//! machine in the same run, with a table anyone can reproduce.
//!
//! The bench makes two network namespaces joined by a veth pair (server 10.99.0.1/16, clients
//! 10.99.0.2/16), runs itself again inside the client namespace, and starts each server in the
//! server namespace with the same files: `bootplane serve` (assets put in with `bootplane
//! images add`), dnsmasq (full DHCP with a lease file, proxyDHCP with pxe-service, TFTP),
//! tftpd-hpa and nginx (sendfile). The same load generators drive each one:
//!
//! - link ([`link`]): raw TCP over the veth, the bound for the boot storm;
//! - full DHCP ([`full_dhcp`]): a lease fill by distinct PXE clients, then DISCOVERs from the
//!   leased clients;
//! - proxyDHCP ([`proxy_dhcp`]): DISCOVER on 67, REQUEST on 4011, BIOS and UEFI;
//! - TFTP ([`tftp_bench`]): ipxe.efi to parallel clients, a large file with and without
//!   windowsize, through this bench's own client ([`tftp_client`]);
//! - HTTP ([`http_assets`], [`http_scripts`]): a large file to 8 and 50 clients, per-machine
//!   iPXE scripts over 64 connections;
//! - boot storm ([`storm`]): N machines through the whole chain at once;
//! - memory and CPU of every server per scenario ([`memory`]);
//! - faults ([`faults`], only when asked): the storm under packet loss and through a restart.
//!
//! DHCP loads are also run against a trivial responder to show the generator's own ceiling.
//! The namespaces are removed when the bench ends, fails or is interrupted (SIGINT/SIGTERM);
//! a later run removes those of a bench that was killed.
//!
//! Exit status: 0 when the measurements completed (missed targets are in the table), 2 when
//! the bench could not run. `--smoke` (CI) is small and also exits 1 on a correctness problem:
//! a transfer that does not verify, unanswered DHCP, a failed machine, an appliance that does
//! not stop cleanly.

mod dhcp_load;
mod dhcp_open;
mod dhcp_runs;
mod faults;
mod files;
mod full_dhcp;
mod http_assets;
mod http_client;
mod http_scripts;
mod link;
mod memory;
mod netns;
mod params;
mod proxy_dhcp;
mod report;
mod servers;
mod stats;
mod storm;
mod sys;
mod tftp_bench;
mod tftp_client;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::files::Files;
use crate::memory::Usage;
use crate::netns::{Names, Netns};
use crate::params::{Cli, Params, Scenario};
use crate::report::{memory_targets, write_report, CpuAccount, Report};
use crate::servers::Appliance;
use crate::sys::{load_average, MachineFacts, TempDir};

pub const TALOS_VERSION: &str = "v1.11.6";
pub const ASSET: &str = "initramfs-amd64.xz";
/// The large file of the single-client TFTP loads, in the TFTP directory.
pub const BIG_TFTP_FILE: &str = "large.bin";

/// How long the outer process waits for the inner one after forwarding a signal.
const INNER_STOP_LIMIT: Duration = Duration::from_secs(30);

/// What every scenario works with.
pub struct Ctx {
    pub params: Params,
    pub names: Names,
    pub binary: PathBuf,
    pub scratch: PathBuf,
    pub files: Files,
    pub report: Report,
    /// bootplane's memory and CPU per scenario, for the memory targets.
    pub usage: Vec<(&'static str, Usage)>,
}

impl Ctx {
    /// The appliance set-up of the protocol loads: the shared iPXE directory, the small boot
    /// assets and no machines, under `<dir>/bootplane`.
    pub fn small_appliance(&self, dir: &Path, dhcp: servers::DhcpMode) -> servers::ApplianceSetup {
        servers::ApplianceSetup {
            root: dir.join("bootplane"),
            ipxe: self.files.tftp_root.clone(),
            dhcp,
            kernel: self.files.small_kernel.clone(),
            initramfs: self.files.small_initramfs.clone(),
            machines: Vec::new(),
        }
    }

    /// Reads the appliance's counters, stops it (an unclean stop is a problem) and reports the
    /// warnings it logged.
    pub async fn stop_appliance(&mut self, mut bootplane: Appliance, scenario: &str) {
        match bootplane
            .metrics(&["dhcp_replies", "dropped", "dhcp_drops"])
            .await
        {
            Ok(lines) if !lines.is_empty() => self.report.finding(format!(
                "{scenario}: appliance /metrics at the end: {}",
                lines.join(", ")
            )),
            Ok(_) => {}
            Err(e) => self
                .report
                .finding(format!("{scenario}: could not read /metrics: {e:#}")),
        }
        if let Err(e) = bootplane.stop() {
            self.report
                .problem(format!("{scenario}: appliance shutdown: {e:#}"));
        }
        // The first start's one-time admin password is expected, not a finding.
        let warnings = bootplane.log_warnings();
        let warnings = warnings
            .into_iter()
            .filter(|(m, _)| !m.contains("admin account created"));
        for (message, count) in warnings {
            self.report
                .finding(format!("{scenario}: appliance log, {count}×: `{message}`"));
        }
    }
}

/// Machines assigned for the per-machine script load: (MAC text, static address).
pub fn script_machines(n: usize) -> Vec<(String, Ipv4Addr)> {
    (0..n)
        .map(|i| {
            (
                mac_text(dhcp_load::client_mac(0x60_0000 + i)),
                Ipv4Addr::new(10, 99, 100 + (i / 250) as u8, 1 + (i % 250) as u8),
            )
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(kind) = cli.responder.as_deref() {
        return match responder(kind, cli.netns_id) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bootplane-bench responder: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bootplane-bench: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(id) = cli.netns_id {
        return runtime.block_on(inner(&cli, Names::for_id(id)));
    }
    match runtime.block_on(outer(&cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bootplane-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The trivial responders, run by the inner bench in the server namespace.
fn responder(kind: &str, id: Option<u32>) -> Result<()> {
    let names = Names::for_id(id.context("--responder needs --netns-id")?);
    match kind {
        "dhcp-full" => dhcp_load::responder(&names.server_if, true),
        "dhcp-proxy" => dhcp_load::responder(&names.server_if, false),
        "tcp" => link::responder(),
        other => bail!("unknown responder {other}"),
    }
}

/// Creates the namespaces, runs the bench again inside the client namespace, and removes the
/// namespaces whatever happens (SIGINT and SIGTERM are forwarded, then waited for).
async fn outer(cli: &Cli) -> Result<ExitCode> {
    // /proc/self belongs to the effective user.
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    if euid != 0 {
        bail!("the bench creates network namespaces and needs root (run it with sudo)");
    }
    let binary = appliance_binary(cli.bootplane.as_deref())?;
    let binary = std::fs::canonicalize(&binary)?;
    let netns = Netns::create(std::process::id())?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut cmd = tokio::process::Command::from(netns.names.in_client(exe));
    cmd.args(std::env::args_os().skip(1))
        .arg("--netns-id")
        .arg(netns.names.id.to_string());
    if cli.bootplane.is_none() {
        cmd.arg("--bootplane").arg(&binary);
    }
    let mut child = cmd
        .spawn()
        .context("starting the bench in the client namespace")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = tokio::signal::ctrl_c() => stop_inner(&mut child).await,
        _ = terminate.recv() => stop_inner(&mut child).await,
    };
    drop(netns);
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(1) => ExitCode::FAILURE,
        _ => ExitCode::from(2),
    })
}

/// Asks the inner bench to stop (it stops its servers), then kills it if it lingers.
async fn stop_inner(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    eprintln!("bootplane-bench: interrupted, stopping the servers and removing the namespaces");
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(INNER_STOP_LIMIT, child.wait()).await {
        Ok(Ok(status)) => status,
        _ => {
            let _ = child.kill().await;
            child.wait().await.unwrap_or_default()
        }
    }
}

/// The bench proper, in the client namespace.
async fn inner(cli: &Cli, names: Names) -> ExitCode {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bootplane-bench: {e}");
                return ExitCode::from(2);
            }
        };
    let result = tokio::select! {
        r = run(cli, names) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
    };
    match result {
        Ok(report) if cli.smoke && !report.problems.is_empty() => {
            eprintln!(
                "bootplane-bench: smoke run failed:\n- {}",
                report.problems.join("\n- ")
            );
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bootplane-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli, names: Names) -> Result<Report> {
    let params = Params::from_cli(cli);
    let binary = cli
        .bootplane
        .clone()
        .context("the inner bench needs --bootplane")?;
    let facts = MachineFacts::gather();
    let mut scratch = TempDir::new("bootplane-bench")?;
    scratch.keep(cli.keep_temp);
    eprintln!("writing the served files");
    let files = Files::create(scratch.path(), &params)?;
    let mut ctx = Ctx {
        report: Report {
            title: "bootplane benchmark".into(),
            parameters: params.describe(),
            ..Report::default()
        },
        params,
        names,
        binary,
        scratch: scratch.path().to_path_buf(),
        files,
        usage: Vec::new(),
    };
    let load_before = load_average();
    let account = CpuAccount::start();

    let mut link_rate = None;
    if ctx.params.runs(Scenario::Link) || ctx.params.runs(Scenario::Storm) {
        link_rate = Some(link::run(&mut ctx).await?);
    }
    if ctx.params.runs(Scenario::FullDhcp) {
        full_dhcp::run(&mut ctx).await?;
    }
    if ctx.params.runs(Scenario::ProxyDhcp) {
        proxy_dhcp::run(&mut ctx).await?;
    }
    if ctx.params.runs(Scenario::Tftp) {
        tftp_bench::run(&mut ctx).await?;
    }
    if ctx.params.runs(Scenario::Http) {
        http_assets::run(&mut ctx).await?;
    }
    if ctx.params.runs(Scenario::Storm) {
        storm::run(&mut ctx, link_rate).await?;
    }
    if ctx.params.runs(Scenario::Faults) {
        faults::run(&mut ctx).await?;
    }
    memory_targets(&mut ctx.report, &ctx.usage);
    account.note(&mut ctx.report, &facts, load_before);

    let text = ctx.report.render(&facts);
    println!("{text}");
    write_report(&cli.out, &text)?;
    eprintln!("wrote {}", cli.out.display());
    Ok(ctx.report)
}

/// The appliance binary: `--bootplane`, else `bootplane` beside this executable. Under
/// `cargo run` (which sets `CARGO`) that binary is first built with the bench's own profile,
/// so the numbers are never taken from a stale appliance.
fn appliance_binary(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let exe = std::env::current_exe().context("locating this executable")?;
            let path = exe.with_file_name("bootplane");
            if let Some(cargo) = std::env::var_os("CARGO") {
                let release = exe
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|dir| dir == "release");
                build_appliance(&cargo, release)?;
            }
            path
        }
    };
    if !path.is_file() {
        bail!(
            "the appliance binary {} does not exist: build it first with `cargo build --release` \
             (or pass --bootplane PATH)",
            path.display()
        );
    }
    let version = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", path.display()))?;
    if !version.status.success() {
        bail!(
            "{} --version failed ({}); is it a bootplane binary?",
            path.display(),
            version.status
        );
    }
    Ok(path)
}

/// `cargo build [--release] --bin bootplane`, its progress shown on stderr.
fn build_appliance(cargo: &std::ffi::OsStr, release: bool) -> Result<()> {
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--bin", "bootplane"]);
    // `cargo run` gave this process the package's variables (CARGO_MANIFEST_DIR, CARGO_PKG_*, …).
    // Build scripts that watch them (ring's does) would see them change from the outer build
    // and rebuild their crate and everything above it, twice per bench run.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_run) {
            cmd.env_remove(key);
        }
    }
    if release {
        cmd.arg("--release");
    }
    eprintln!("building the appliance: {cmd:?}");
    let status = cmd
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .context("running cargo to build the appliance")?;
    if !status.success() {
        bail!("building the appliance failed ({status}); see cargo's output above");
    }
    Ok(())
}

/// A variable `cargo run` sets for the program it runs (the package's, `OUT_DIR`), or one cargo
/// sets only for rustc; not one the user set for cargo (`CARGO_TARGET_DIR`, `CARGO_PROFILE_*`).
fn set_by_cargo_run(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_MANIFEST_")
        || matches!(
            key,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
        )
}

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nested_build_drops_only_what_cargo_run_set() {
        for key in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
            "CARGO_CRATE_NAME",
        ] {
            assert!(set_by_cargo_run(key), "{key}");
        }
        for key in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_RELEASE_LTO",
            "CARGO_INCREMENTAL",
            "CARGO_BUILD_JOBS",
            "RUSTFLAGS",
        ] {
            assert!(!set_by_cargo_run(key), "{key}");
        }
    }

    #[test]
    fn macs_print_colon_separated() {
        assert_eq!(mac_text([2, 0xb0, 7, 0, 1, 0xff]), "02:b0:07:00:01:ff");
    }
}
