//! `bootplane-bench`: a benchmark of the real appliance you can rerun.
//!
//! It starts `bootplane serve` as a child process on loopback ports with its own temporary
//! data, iPXE and images directories, drives load at it, and prints a Markdown table (also
//! written to `--out`):
//!
//! - proxyDHCP ([`proxy_dhcp`]): PXE DISCOVERs from distinct MACs with 32 in flight, REQUESTs
//!   to the boot-server port, DISCOVERs one at a time; replies per second and latency
//!   percentiles, beside the load generator's own ceiling against a trivial responder;
//! - HTTP ([`http_assets`]): a large boot asset to many parallel clients, every byte verified,
//!   beside nginx (sendfile) serving the same file on the same machine;
//! - the appliance's memory (idle, per-scenario peaks) and CPU seconds per scenario.
//!
//! Exit status: 0 when the measurements completed (missed targets are in the table), 2 when
//! the bench could not run. `--smoke` (CI) is small and also exits 1 when a download fails
//! verification, fewer than 95% of DISCOVERs are answered, or the appliance does not stop
//! cleanly.

/// The bench's modules, in server/bin/bench/.
mod bench {
    pub mod dhcp_load;
    pub mod http_assets;
    pub mod http_client;
    pub mod memory;
    pub mod proxy_dhcp;
    pub mod report;
    pub mod servers;
    pub mod stats;
    pub mod sys;
}

use bench::{dhcp_load, http_assets, http_client, memory, proxy_dhcp, report, servers, stats, sys};

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::dhcp_load::LoadShape;
use crate::memory::{Phase, RssSampler};
use crate::report::{Report, Row, Verdict};
use crate::servers::{Appliance, ApplianceDirs};
use crate::stats::{fmt_count, fmt_kib, fmt_ratio};
use crate::sys::{
    load_average, machine_busy_secs, own_cpu_secs, MachineFacts, ProcSample, TempDir,
};

pub const TALOS_VERSION: &str = "v1.11.6";
pub const ASSET: &str = "initramfs-amd64.xz";
/// How long the appliance sits idle before its idle memory is read, and after the load.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// Above this share of the machine's CPU used by other processes, the report calls the run noisy.
const OTHER_WORK_NOISY: f64 = 0.10;
/// Idle RSS target from issue 7.
const RSS_IDLE_TARGET_KIB: u64 = 30 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "bootplane-bench",
    about = "Benchmark the bootplane appliance: proxyDHCP, HTTP beside nginx, memory and CPU"
)]
struct Cli {
    /// Small, fast run for CI; exits 1 when a download does not verify, fewer than 95% of
    /// DHCP DISCOVERs are answered, or the appliance does not stop cleanly
    #[arg(long)]
    smoke: bool,
    /// Where to write the Markdown table
    #[arg(long, default_value = "target/bench.md")]
    out: PathBuf,
    /// The appliance binary [default: `bootplane` beside this executable, built first when the
    /// bench runs through `cargo run`]
    #[arg(long)]
    bootplane: Option<PathBuf>,
    /// Scenarios to run, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Dhcp, Scenario::Http])]
    only: Vec<Scenario>,
    /// Distinct MACs for the proxyDHCP load [default: 10000; smoke: 500]
    #[arg(long)]
    macs: Option<usize>,
    /// DHCP requests kept in flight
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Parallel HTTP clients [default: 50; smoke: 8]
    #[arg(long)]
    http_clients: Option<usize>,
    /// Size of the served file in MB (10^6 bytes) [default: 100; smoke: 10]
    #[arg(long)]
    file_mb: Option<usize>,
    /// HTTP rounds per server, alternating bootplane and nginx [default: 3; smoke: 1]
    #[arg(long)]
    http_rounds: Option<usize>,
    /// Keep the temporary directory (appliance log, database, nginx config) and print its path
    #[arg(long)]
    keep_temp: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Dhcp,
    Http,
}

/// Everything that shapes the load, fixed before anything starts.
#[derive(Debug, Clone)]
pub struct Params {
    pub smoke: bool,
    pub dhcp: bool,
    pub http: bool,
    pub macs: usize,
    /// DISCOVERs sent one at a time, for latency without queueing.
    pub serial_macs: usize,
    pub shape: LoadShape,
    pub http_clients: usize,
    pub file_bytes: usize,
    pub http_rounds: usize,
}

impl Params {
    fn from_cli(cli: &Cli) -> Self {
        let (macs, serial_macs, clients, mb, rounds) = if cli.smoke {
            (500, 200, 8, 10, 1)
        } else {
            (10_000, 1_000, 50, 100, 3)
        };
        Self {
            smoke: cli.smoke,
            dhcp: cli.only.contains(&Scenario::Dhcp),
            http: cli.only.contains(&Scenario::Http),
            macs: cli.macs.unwrap_or(macs).max(1),
            serial_macs,
            shape: LoadShape {
                in_flight: cli.in_flight.max(1),
                sockets: 4,
                timeout: Duration::from_secs(1),
            },
            http_clients: cli.http_clients.unwrap_or(clients).max(1),
            file_bytes: cli.file_mb.unwrap_or(mb).max(1) * 1_000_000,
            http_rounds: cli.http_rounds.unwrap_or(rounds).max(1),
        }
    }

    fn describe(&self) -> Vec<(String, String)> {
        let mut p = vec![(
            "mode".to_string(),
            if self.smoke { "smoke" } else { "full" }.to_string(),
        )];
        if self.dhcp {
            p.push((
                "proxyDHCP".into(),
                format!(
                    "{} distinct MACs (half BIOS arch 0, half UEFI arch 7), {} in flight over {} client sockets on one thread, {} s timeout, then {} new MACs one at a time",
                    fmt_count(self.macs as f64),
                    self.shape.in_flight,
                    self.shape.sockets.min(self.shape.in_flight),
                    self.shape.timeout.as_secs(),
                    fmt_count(self.serial_macs as f64),
                ),
            ));
        }
        if self.http {
            p.push((
                "HTTP".into(),
                format!(
                    "{} MB file, {} parallel clients, {} round(s) per server alternating, every body compared byte for byte",
                    self.file_bytes / 1_000_000,
                    self.http_clients,
                    self.http_rounds,
                ),
            ));
        }
        p
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(&cli)) {
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

async fn run(cli: &Cli) -> Result<Report> {
    let params = Params::from_cli(cli);
    let binary = appliance_binary(cli.bootplane.as_deref())?;
    let facts = MachineFacts::gather();
    let mut scratch = TempDir::new("bootplane-bench")?;
    scratch.keep(cli.keep_temp);
    let dirs = ApplianceDirs::create(scratch.path(), TALOS_VERSION)?;
    let mut report = Report {
        title: "bootplane benchmark".into(),
        parameters: params.describe(),
        ..Report::default()
    };
    let load_before = load_average();
    let mut machine = CpuAccount::start();
    let file = if params.http {
        Some(write_asset(&dirs.images, params.file_bytes)?)
    } else {
        None
    };

    eprintln!("starting {}", binary.display());
    let mut bootplane = Appliance::start(&binary, &dirs, TALOS_VERSION, params.dhcp).await?;
    let sampler = RssSampler::start(bootplane.pid());
    let started = Instant::now();
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle = ProcSample::read(bootplane.pid())?;

    let mut phases = Vec::new();
    if params.dhcp {
        phases.push(proxy_dhcp::run(&params, &bootplane, &mut report).await?);
        bootplane.check_alive()?;
    }
    let mut nginx_memory = None;
    if let Some(file) = file {
        let outcome = http_assets::run(
            &params,
            &mut bootplane,
            scratch.path(),
            &dirs.images,
            file,
            &mut report,
        )
        .await?;
        phases.push(outcome.phase);
        nginx_memory = outcome.nginx_memory;
        machine.add_reference(outcome.nginx_cpu_secs);
    }
    let settle_start = Instant::now();
    tokio::time::sleep(IDLE_SETTLE).await;
    phases.push(Phase {
        name: format!("idle {} s after the load", IDLE_SETTLE.as_secs()),
        start: settle_start,
        end: Instant::now(),
    });
    let last = ProcSample::read(bootplane.pid())?;
    memory_rows(&mut report, &sampler, idle, &last, &phases, nginx_memory);
    if cli.keep_temp {
        write_timeline(scratch.path(), &sampler, started, &phases)?;
    }
    drop(sampler);
    stop_appliance(&mut bootplane, &mut report).await;
    machine.note(&mut report, &facts, load_before, last.cpu_secs);

    let text = report.render(&facts);
    println!("{text}");
    write_report(&cli.out, &text)?;
    eprintln!("wrote {}", cli.out.display());
    Ok(report)
}

/// Writes the RSS samples to `rss.csv` in the kept temporary directory.
fn write_timeline(
    dir: &Path,
    sampler: &RssSampler,
    started: Instant,
    phases: &[Phase],
) -> Result<()> {
    let csv = dir.join("rss.csv");
    std::fs::write(&csv, sampler.csv(started))
        .with_context(|| format!("writing {}", csv.display()))?;
    let ms = |t: Instant| t.saturating_duration_since(started).as_millis();
    let marks: Vec<String> = phases
        .iter()
        .map(|p| format!("{} {}–{} ms", p.name, ms(p.start), ms(p.end)))
        .collect();
    eprintln!(
        "RSS timeline in {}; phases: {}",
        csv.display(),
        marks.join(", ")
    );
    Ok(())
}

/// Reads the appliance's counters, stops it (timing the graceful shutdown) and collects the
/// warnings it logged.
async fn stop_appliance(bootplane: &mut Appliance, report: &mut Report) {
    match bootplane
        .metrics(&["dhcp_replies", "dropped", "http_bytes"])
        .await
    {
        Ok(lines) if !lines.is_empty() => report.finding(format!(
            "appliance /metrics at the end: {}",
            lines.join(", ")
        )),
        Ok(_) => {}
        Err(e) => report.finding(format!("could not read the appliance's /metrics: {e:#}")),
    }
    let stopping = Instant::now();
    match bootplane.stop() {
        Ok(()) => report.row(
            Row::new(
                "appliance shutdown after SIGTERM",
                format!("{:.2} s", stopping.elapsed().as_secs_f64()),
            )
            .notes("graceful: HTTP drained, queued events and leases flushed"),
        ),
        Err(e) => report.problem(format!("appliance shutdown: {e:#}")),
    }
    for (message, count) in bootplane.log_warnings() {
        report.finding(format!("appliance log, {count}×: `{message}`"));
    }
}

/// Memory rows: idle, the sampled peak of each phase, the whole run's VmHWM; CPU total.
fn memory_rows(
    report: &mut Report,
    sampler: &RssSampler,
    idle: ProcSample,
    last: &ProcSample,
    phases: &[Phase],
    nginx_memory: Option<(u64, u64)>,
) {
    report.row(
        Row::new("appliance RSS idle", fmt_kib(Some(idle.rss_kib)))
            .reference(
                nginx_memory.map_or("—".into(), |n| fmt_kib(Some(n.0))),
                fmt_ratio(Some(idle.rss_kib as f64), nginx_memory.map(|n| n.0 as f64)),
            )
            .notes(format!(
                "VmRSS {} s after start, {} threads; reference: nginx master + workers, idle",
                IDLE_SETTLE.as_secs(),
                idle.threads
            )),
    );
    for phase in phases {
        let peak = sampler.peak_between(phase.start, phase.end);
        let rss = peak.map(|p| p.0);
        let mut row =
            Row::new(format!("appliance RSS peak: {}", phase.name), fmt_kib(rss)).notes(format!(
                "VmRSS sampled every {} ms; up to {} threads",
                memory::SAMPLE_EVERY.as_millis(),
                peak.map_or("?".into(), |p| p.1.to_string())
            ));
        if phase.name.starts_with("HTTP") {
            if let Some((_, nginx_peak)) = nginx_memory {
                row = row.reference(
                    fmt_kib(Some(nginx_peak)),
                    fmt_ratio(rss.map(|p| p as f64), Some(nginx_peak as f64)),
                );
                row.notes
                    .push_str("; reference: nginx VmHWM, master + workers");
            }
        }
        report.row(row);
    }
    report.row(
        Row::new("appliance RSS peak: whole run", fmt_kib(Some(last.hwm_kib))).notes(format!(
            "VmHWM; RSS at the end {}; {:.2} CPU s in total",
            fmt_kib(Some(last.rss_kib)),
            last.cpu_secs
        )),
    );
    report.target(
        "RSS idle under 30 MB",
        Verdict::from_check(Some(idle.rss_kib < RSS_IDLE_TARGET_KIB)),
        fmt_kib(Some(idle.rss_kib)),
    );
}

/// Who used the machine's CPU during the run, so the reader knows whether other work (on two
/// cores, a compiler) moved the numbers.
struct CpuAccount {
    start: Instant,
    machine_busy: Option<f64>,
    bench: f64,
    /// CPU seconds of reference servers (nginx), added as they stop.
    reference: f64,
}

impl CpuAccount {
    fn start() -> Self {
        Self {
            start: Instant::now(),
            machine_busy: machine_busy_secs(),
            bench: own_cpu_secs(),
            reference: 0.0,
        }
    }

    fn add_reference(&mut self, cpu_secs: f64) {
        self.reference += cpu_secs;
    }

    /// A note with the CPU seconds that neither the bench, the appliance nor nginx used.
    fn note(
        &self,
        report: &mut Report,
        facts: &MachineFacts,
        load_before: Option<f64>,
        appliance: f64,
    ) {
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
        let bench = own_cpu_secs() - self.bench;
        let other = (busy - bench - appliance - self.reference).max(0.0);
        let share = if available > 0.0 {
            other / available
        } else {
            0.0
        };
        let text = format!(
            "CPU during the {wall:.0} s run: the bench (load generators) {bench:.1} s, the appliance {appliance:.1} s, nginx {:.1} s, other processes {other:.1} s ({:.0}% of the machine); 1-minute load average before the run {load}",
            self.reference,
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

/// Writes `bytes` pseudo-random bytes as the Talos initramfs and returns them for verification.
fn write_asset(images: &Path, bytes: usize) -> Result<Arc<Vec<u8>>> {
    let dir = images.join(TALOS_VERSION);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let data = pseudo_random_bytes(bytes, 0x5eed_b007_b007_5eed);
    let path = dir.join(ASSET);
    std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
    Ok(Arc::new(data))
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
        assert!(p.smoke && p.dhcp && p.http);
        assert_eq!(
            (p.macs, p.http_clients, p.file_bytes, p.http_rounds),
            (500, 8, 10_000_000, 1)
        );
    }

    #[test]
    fn only_selects_scenarios() {
        let cli = Cli::try_parse_from(["bootplane-bench", "--only", "http"]).unwrap();
        let p = Params::from_cli(&cli);
        assert!(p.http && !p.dhcp);
    }
}
