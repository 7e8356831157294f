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
//! - memory and CPU of every server per scenario ([`memory`]).
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
mod full_dhcp;
mod http_assets;
mod http_client;
mod http_scripts;
mod link;
mod memory;
mod netns;
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::memory::Usage;
use crate::netns::{Names, Netns};
use crate::report::{Report, Row, Verdict};
use crate::servers::Appliance;
use crate::stats::{fmt_count, fmt_kib, fmt_ratio};
use crate::sys::{load_average, machine_busy_secs, own_cpu_secs, MachineFacts, TempDir};

pub const TALOS_VERSION: &str = "v1.11.6";
pub const ASSET: &str = "initramfs-amd64.xz";
/// The large file of the single-client TFTP loads, in the TFTP directory.
pub const BIG_TFTP_FILE: &str = "large.bin";
/// Above this share of the machine's CPU used by other processes, the report calls the run noisy.
const OTHER_WORK_NOISY: f64 = 0.10;
/// Idle RSS target.
const RSS_IDLE_TARGET_KIB: u64 = 30 * 1024;
/// How long the outer process waits for the inner one after forwarding a signal.
const INNER_STOP_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "bootplane-bench",
    about = "Benchmark bootplane against dnsmasq, tftpd-hpa and nginx in network namespaces (needs root)"
)]
struct Cli {
    /// Small, fast run for CI; exits 1 on a correctness problem (unverified bytes, unanswered
    /// DHCP, failed machines, an appliance that does not stop cleanly)
    #[arg(long)]
    smoke: bool,
    /// Where to write the Markdown table
    #[arg(long, default_value = "target/bench.md")]
    out: PathBuf,
    /// The appliance binary [default: `bootplane` beside this executable, built first when the
    /// bench runs through `cargo run`]
    #[arg(long)]
    bootplane: Option<PathBuf>,
    /// Scenarios to run, comma-separated [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Distinct DHCP clients per load [default: 10000; smoke: 300]
    #[arg(long)]
    macs: Option<usize>,
    /// DHCP transactions kept in flight
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Parallel HTTP clients of the big-file loads, comma-separated [default: 8,50; smoke: 8]
    #[arg(long, value_delimiter = ',')]
    http_clients: Vec<usize>,
    /// Size of the big HTTP file in MB (10^6 bytes) [default: 100; smoke: 10]
    #[arg(long)]
    file_mb: Option<usize>,
    /// HTTP rounds per server and client count, alternating bootplane and nginx
    /// [default: 3; smoke: 1]
    #[arg(long)]
    http_rounds: Option<usize>,
    /// Boot storm sizes, comma-separated [default: 50,200; smoke: 4]
    #[arg(long, value_delimiter = ',')]
    storm: Vec<usize>,
    /// Keep the temporary directory (server logs, databases, configs) and print its path
    #[arg(long)]
    keep_temp: bool,
    /// (internal) the run's namespaces, by the id of the bench process that made them
    #[arg(long, hide = true)]
    netns_id: Option<u32>,
    /// (internal) run a trivial responder in the server namespace: dhcp-full, dhcp-proxy, tcp
    #[arg(long, hide = true)]
    responder: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Link,
    FullDhcp,
    ProxyDhcp,
    Tftp,
    Http,
    Storm,
}

/// Everything that shapes the load, fixed before anything starts.
#[derive(Debug, Clone)]
pub struct Params {
    pub smoke: bool,
    scenarios: Vec<Scenario>,
    pub macs: usize,
    pub in_flight: usize,
    pub http_clients: Vec<usize>,
    pub file_bytes: usize,
    pub http_rounds: usize,
    pub script_machines: usize,
    pub script_connections: usize,
    pub script_duration: Duration,
    pub tftp_clients: usize,
    pub tftp_each: usize,
    pub tftp_big_bytes: usize,
    pub storm_sizes: Vec<usize>,
    pub storm_kernel_bytes: usize,
    pub storm_initramfs_bytes: usize,
    pub blast_bytes: u64,
    /// How long a server sits idle after start-up before its idle memory is read.
    pub settle: Duration,
}

impl Params {
    fn from_cli(cli: &Cli) -> Self {
        let smoke = cli.smoke;
        let pick = |full: usize, small: usize| if smoke { small } else { full };
        let scenarios = if cli.only.is_empty() {
            vec![
                Scenario::Link,
                Scenario::FullDhcp,
                Scenario::ProxyDhcp,
                Scenario::Tftp,
                Scenario::Http,
                Scenario::Storm,
            ]
        } else {
            cli.only.clone()
        };
        let list = |given: &[usize], full: &[usize], small: &[usize]| -> Vec<usize> {
            let v = if !given.is_empty() {
                given.to_vec()
            } else if smoke {
                small.to_vec()
            } else {
                full.to_vec()
            };
            v.into_iter().map(|n| n.max(1)).collect()
        };
        Self {
            smoke,
            scenarios,
            macs: cli.macs.unwrap_or(pick(10_000, 300)).max(1),
            in_flight: cli.in_flight.max(1),
            http_clients: list(&cli.http_clients, &[8, 50], &[8]),
            file_bytes: cli.file_mb.unwrap_or(pick(100, 10)).max(1) * 1_000_000,
            http_rounds: cli.http_rounds.unwrap_or(pick(3, 1)).max(1),
            script_machines: pick(1_000, 40),
            script_connections: 64,
            script_duration: Duration::from_secs(pick(10, 1) as u64),
            tftp_clients: pick(16, 4),
            tftp_each: pick(8, 1),
            tftp_big_bytes: pick(20, 2) * 1_000_000,
            storm_sizes: list(&cli.storm, &[50, 200], &[4]),
            storm_kernel_bytes: pick(16, 1) * 1_000_000,
            storm_initramfs_bytes: pick(80, 3) * 1_000_000,
            blast_bytes: pick(2_000, 200) as u64 * 1_000_000,
            settle: Duration::from_millis(pick(1_000, 300) as u64),
        }
    }

    fn runs(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }

    fn describe(&self) -> Vec<(String, String)> {
        let mb = |b: usize| b / 1_000_000;
        vec![
            (
                "mode".into(),
                if self.smoke { "smoke" } else { "full" }.into(),
            ),
            (
                "network".into(),
                "server and client network namespaces joined by a veth pair (MTU 1500), server 10.99.0.1/16; each server alone in the server namespace while it is measured (HTTP: bootplane and nginx side by side, alternating rounds)".into(),
            ),
            (
                "logging".into(),
                format!(
                    "none per packet or request on any server: bootplane BOOTPLANE_LOG={}, dnsmasq quiet-dhcp, nginx access_log off",
                    servers::APPLIANCE_LOG
                ),
            ),
            (
                "DHCP".into(),
                format!(
                    "{} distinct PXE clients per load (half BIOS arch 0, half x64 UEFI arch 7), {} in flight, broadcast from port 68 on one client thread",
                    fmt_count(self.macs as f64),
                    self.in_flight
                ),
            ),
            (
                "TFTP".into(),
                format!(
                    "ipxe.efi to {} parallel clients × {} each; one {} MB file to one client; blksize 1468, tsize",
                    self.tftp_clients,
                    self.tftp_each,
                    mb(self.tftp_big_bytes)
                ),
            ),
            (
                "HTTP".into(),
                format!(
                    "{} MB file to {:?} parallel clients, {} round(s) per server; scripts of {} assigned machines over {} connections for {} s",
                    mb(self.file_bytes),
                    self.http_clients,
                    self.http_rounds,
                    self.script_machines,
                    self.script_connections,
                    self.script_duration.as_secs()
                ),
            ),
            (
                "boot storm".into(),
                format!(
                    "N = {:?}; iPXE binary by TFTP, kernel {} MB, initramfs {} MB, scripts and config by HTTP",
                    self.storm_sizes,
                    mb(self.storm_kernel_bytes),
                    mb(self.storm_initramfs_bytes)
                ),
            ),
        ]
    }
}

/// The files every server serves alike.
#[derive(Debug)]
pub struct Files {
    /// The TFTP directory: iPXE binaries and the large file.
    pub tftp_root: PathBuf,
    pub ipxe_efi: Arc<Vec<u8>>,
    pub big_tftp: Arc<Vec<u8>>,
    /// Stand-in assets for scenarios that do not fetch them.
    pub small_kernel: PathBuf,
    pub small_initramfs: PathBuf,
    pub http_initramfs: PathBuf,
    pub http_initramfs_bytes: Arc<Vec<u8>>,
    pub storm_kernel: PathBuf,
    pub storm_kernel_bytes: Arc<Vec<u8>>,
    pub storm_initramfs: PathBuf,
    pub storm_initramfs_bytes: Arc<Vec<u8>>,
}

impl Files {
    fn create(root: &Path, p: &Params) -> Result<Self> {
        let tftp_root = root.join("tftp-root");
        let sources = root.join("sources");
        for dir in [&tftp_root, &sources] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let stand_in: Vec<u8> = (0..256 * 1024).map(|i: u32| (i % 251) as u8).collect();
        for name in ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe-arm64.efi"] {
            let target = tftp_root.join(name);
            if std::fs::copy(Path::new("/usr/lib/ipxe").join(name), &target).is_err() {
                std::fs::write(&target, &stand_in)
                    .with_context(|| format!("writing {}", target.display()))?;
            }
        }
        let ipxe_efi = Arc::new(std::fs::read(tftp_root.join("ipxe.efi"))?);
        let write = |path: PathBuf, len: usize, seed: u64| -> Result<(PathBuf, Arc<Vec<u8>>)> {
            let data = pseudo_random_bytes(len, seed);
            std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
            Ok((path, Arc::new(data)))
        };
        let (_, big_tftp) = write(tftp_root.join(BIG_TFTP_FILE), p.tftp_big_bytes, 1)?;
        let (small_kernel, _) = write(sources.join("small-kernel"), 256 * 1024, 2)?;
        let (small_initramfs, _) = write(sources.join("small-initramfs"), 512 * 1024, 3)?;
        let (http_initramfs, http_initramfs_bytes) = if p.runs(Scenario::Http) {
            write(sources.join("http-initramfs"), p.file_bytes, 4)?
        } else {
            (small_initramfs.clone(), Arc::default())
        };
        let (storm_kernel, storm_kernel_bytes) =
            write(sources.join("storm-kernel"), p.storm_kernel_bytes, 5)?;
        let (storm_initramfs, storm_initramfs_bytes) =
            write(sources.join("storm-initramfs"), p.storm_initramfs_bytes, 6)?;
        Ok(Self {
            tftp_root,
            ipxe_efi,
            big_tftp,
            small_kernel,
            small_initramfs,
            http_initramfs,
            http_initramfs_bytes,
            storm_kernel,
            storm_kernel_bytes,
            storm_initramfs,
            storm_initramfs_bytes,
        })
    }
}

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

/// A row with bootplane's memory and CPU in one scenario beside the reference's.
pub fn usage_rows(
    report: &mut Report,
    scenario: &str,
    ours: Usage,
    reference: Option<(&str, Usage)>,
) {
    let text = |u: &Usage| {
        format!(
            "{} / {}, {:.2} CPU s",
            fmt_kib(Some(u.idle_kib)),
            fmt_kib(Some(u.peak_kib)),
            u.cpu_secs
        )
    };
    let mut row = Row::new(
        format!("{scenario}: server RSS idle / peak, CPU seconds"),
        text(&ours),
    )
    .notes("RSS summed over the server's processes, sampled every 20 ms; ratio of peaks");
    if let Some((name, theirs)) = reference {
        row = row.reference(
            format!("{name} {}", text(&theirs)),
            fmt_ratio(Some(ours.peak_kib as f64), Some(theirs.peak_kib as f64)),
        );
    }
    report.row(row);
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
    memory_targets(&mut ctx);
    account.note(&mut ctx.report, &facts, load_before);

    let text = ctx.report.render(&facts);
    println!("{text}");
    write_report(&cli.out, &text)?;
    eprintln!("wrote {}", cli.out.display());
    Ok(ctx.report)
}

/// The idle-memory target over every appliance instance of the run.
fn memory_targets(ctx: &mut Ctx) {
    let idle = ctx.usage.iter().map(|(_, u)| u.idle_kib).max();
    let which = ctx
        .usage
        .iter()
        .max_by_key(|(_, u)| u.idle_kib)
        .map_or("", |(s, _)| *s);
    ctx.report.target(
        "RSS under 30 MB idle",
        Verdict::from_check(idle.map(|i| i < RSS_IDLE_TARGET_KIB)),
        format!(
            "highest idle RSS of the run's appliances {} ({which})",
            fmt_kib(idle)
        ),
    );
}

/// Who used the machine's CPU during the run, so the reader knows whether other work (on two
/// cores, a compiler) moved the numbers.
struct CpuAccount {
    start: Instant,
    machine_busy: Option<f64>,
    bench: f64,
}

impl CpuAccount {
    fn start() -> Self {
        Self {
            start: Instant::now(),
            machine_busy: machine_busy_secs(),
            bench: own_cpu_secs(),
        }
    }

    fn note(&self, report: &mut Report, facts: &MachineFacts, load_before: Option<f64>) {
        let wall = self.start.elapsed().as_secs_f64();
        let available = wall * facts.cpus as f64;
        let load = load_before.map_or("?".into(), |l| format!("{l:.2}"));
        let Some(busy) = machine_busy_secs()
            .zip(self.machine_busy)
            .map(|(b, a)| b - a)
        else {
            report.finding(format!("1-minute load average before the run: {load}"));
            return;
        };
        // The servers were this process's children and have been reaped: their CPU is in ours.
        let ours = own_cpu_secs() - self.bench;
        let other = (busy - ours).max(0.0);
        let share = if available > 0.0 {
            other / available
        } else {
            0.0
        };
        let text = format!(
            "CPU during the {wall:.0} s run: the bench with every server it ran {ours:.1} s, other processes {other:.1} s ({:.0}% of the machine); 1-minute load average before the run {load}",
            share * 100.0
        );
        report.finding(if share > OTHER_WORK_NOISY {
            format!("{text}. Other work shared this machine: treat the numbers as noisy and rerun on a quiet machine")
        } else {
            text
        });
    }
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

/// xorshift64*: fast, deterministic, incompressible enough for a transfer test.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn write_report(out: &Path, text: &str) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_bytes_are_deterministic_and_sized() {
        let a = pseudo_random_bytes(1001, 7);
        assert_eq!(a.len(), 1001);
        assert_eq!(a, pseudo_random_bytes(1001, 7));
        assert_ne!(a, pseudo_random_bytes(1001, 8));
    }

    #[test]
    fn macs_print_colon_separated() {
        assert_eq!(mac_text([2, 0xb0, 7, 0, 1, 0xff]), "02:b0:07:00:01:ff");
    }

    #[test]
    fn cli_parses_the_ci_invocation() {
        let cli = Cli::try_parse_from([
            "bootplane-bench",
            "--smoke",
            "--out",
            "target/bench-smoke.md",
        ])
        .unwrap();
        let p = Params::from_cli(&cli);
        assert!(p.smoke && p.runs(Scenario::Storm) && p.runs(Scenario::FullDhcp));
        assert_eq!(p.http_clients, vec![8]);
        assert_eq!(p.storm_sizes, vec![4]);
    }

    #[test]
    fn full_run_covers_every_scenario() {
        let p = Params::from_cli(&Cli::try_parse_from(["bootplane-bench"]).unwrap());
        assert_eq!(p.macs, 10_000);
        assert_eq!(p.http_clients, vec![8, 50]);
        assert_eq!(p.storm_sizes, vec![50, 200]);
        assert_eq!(p.script_connections, 64);
        assert_eq!(p.tftp_clients, 16);
    }

    #[test]
    fn only_selects_scenarios() {
        let cli = Cli::try_parse_from(["bootplane-bench", "--only", "http,tftp"]).unwrap();
        let p = Params::from_cli(&cli);
        assert!(p.runs(Scenario::Http) && p.runs(Scenario::Tftp) && !p.runs(Scenario::Storm));
    }
}
