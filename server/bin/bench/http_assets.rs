//! Scenario: a large boot asset to parallel clients (8 and 50), from bootplane and from nginx
//! (sendfile) serving the same file, in alternating rounds so background noise on the machine
//! falls on both alike; every body is verified byte for byte. The same two servers then serve
//! per-machine iPXE scripts ([`http_scripts`]).

use std::net::SocketAddr;

use anyhow::Result;

use crate::dhcp_load::client_mac;
use crate::http_client::{parallel_downloads, LoadResult};
use crate::http_scripts;
use crate::memory::Meter;
use crate::netns::SERVER_IP;
use crate::report::{Row, Verdict};
use crate::servers::{http_addr, Appliance, ApplianceSetup, DhcpMode, Reference};
use crate::stats::{fmt_latency, fmt_ratio, Latencies};
use crate::sys::ProcSample;
use crate::{mac_text, Ctx, ASSET, TALOS_VERSION};

/// The rounds one server ran.
#[derive(Debug, Default)]
struct Rounds {
    loads: Vec<LoadResult>,
    /// Server CPU seconds per round.
    cpu: Vec<f64>,
}

impl Rounds {
    fn push(&mut self, load: LoadResult, cpu: f64) {
        self.loads.push(load);
        self.cpu.push(cpu);
    }

    /// The round with the median throughput.
    fn median(&self) -> Option<&LoadResult> {
        let mut by_rate: Vec<&LoadResult> = self.loads.iter().collect();
        by_rate.sort_by(|a, b| {
            a.mb_per_sec()
                .unwrap_or(0.0)
                .total_cmp(&b.mb_per_sec().unwrap_or(0.0))
        });
        by_rate.get(by_rate.len() / 2).copied()
    }

    fn throughput_range(&self) -> String {
        let rates: Vec<f64> = self
            .loads
            .iter()
            .filter_map(LoadResult::mb_per_sec)
            .collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        if rates.len() > 1 {
            format!("{} rounds {min:.0}–{max:.0} MB/s", rates.len())
        } else {
            "1 round".into()
        }
    }

    fn mean(values: &[f64]) -> Option<f64> {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }

    fn cpu_per_round(&self) -> Option<f64> {
        Self::mean(&self.cpu)
    }

    fn client_cpu_per_round(&self) -> Option<f64> {
        let v: Vec<f64> = self.loads.iter().map(|l| l.client_cpu_secs).collect();
        Self::mean(&v)
    }

    fn first_byte(&self) -> Latencies {
        let mut all = Latencies::default();
        for l in &self.loads {
            all.extend(l.first_byte.clone());
        }
        all
    }

    fn verified(&self) -> (usize, usize) {
        self.loads
            .iter()
            .fold((0, 0), |(v, c), l| (v + l.verified, c + l.clients))
    }

    fn failures(&self) -> impl Iterator<Item = &String> {
        self.loads.iter().flat_map(|l| l.failures.iter())
    }
}

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.scratch.join("http");
    let www = dir.join("www");
    let asset_dir = www.join("assets").join(TALOS_VERSION);
    std::fs::create_dir_all(&asset_dir)?;
    std::fs::create_dir_all(www.join("machine"))?;
    std::fs::copy(&ctx.files.http_initramfs, asset_dir.join(ASSET))?;

    eprintln!("HTTP: starting bootplane and nginx");
    let machines = crate::script_machines(ctx.params.script_machines);
    let setup = ApplianceSetup {
        root: dir.join("bootplane"),
        ipxe: ctx.files.tftp_root.clone(),
        dhcp: DhcpMode::Off,
        kernel: ctx.files.small_kernel.clone(),
        initramfs: ctx.files.http_initramfs.clone(),
        machines: machines.clone(),
    };
    let mut bootplane = Appliance::start(&ctx.binary, &ctx.names, &setup).await?;
    let ours_meter = Meter::start(bootplane.pid(), ctx.params.settle).await?;
    let nginx_addr = SocketAddr::from((SERVER_IP, NGINX_PORT));
    let nginx = Reference::nginx(&ctx.names, &dir.join("nginx"), &www, NGINX_PORT).await?;
    let nginx_meter = Meter::start(nginx.pid(), ctx.params.settle).await?;
    let file = ctx.files.http_initramfs_bytes.clone();

    let (ours_mark, nginx_mark) = (ours_meter.mark(), nginx_meter.mark());
    for clients in ctx.params.http_clients.clone() {
        let mut ours = Rounds::default();
        let mut theirs = Rounds::default();
        for round in 0..ctx.params.http_rounds {
            eprintln!(
                "HTTP round {}/{}: {clients} clients × {} MB",
                round + 1,
                ctx.params.http_rounds,
                file.len() / 1_000_000
            );
            let before = ProcSample::read(bootplane.pid())?;
            let load = parallel_downloads(
                http_addr(),
                clients,
                |i| {
                    format!(
                        "/assets/{TALOS_VERSION}/{ASSET}?mac={}",
                        mac_text(client_mac(1_000_000 + round * 10_000 + i))
                    )
                },
                file.clone(),
            )
            .await;
            let after = ProcSample::read(bootplane.pid())?;
            ours.push(load, after.cpu_secs - before.cpu_secs);
            bootplane.check_alive()?;

            let before = ProcSample::read_tree(nginx.pid())?;
            let load = parallel_downloads(
                nginx_addr,
                clients,
                |i| {
                    format!(
                        "/assets/{TALOS_VERSION}/{ASSET}?mac={}",
                        mac_text(client_mac(2_000_000 + round * 10_000 + i))
                    )
                },
                file.clone(),
            )
            .await;
            let after = ProcSample::read_tree(nginx.pid())?;
            theirs.push(load, after.cpu_secs - before.cpu_secs);
        }
        rows(ctx, clients, file.len(), &ours, &theirs);
    }
    let (ours_usage, nginx_usage) = (ours_meter.since(ours_mark), nginx_meter.since(nginx_mark));
    crate::report::usage_rows(
        &mut ctx.report,
        "HTTP big file",
        ours_usage,
        Some(("nginx", nginx_usage)),
    );
    ctx.usage.push(("HTTP big file", ours_usage));

    let (ours_mark, nginx_mark) = (ours_meter.mark(), nginx_meter.mark());
    http_scripts::run(ctx, &machines, &www, nginx_addr).await?;
    let (ours_usage, nginx_usage) = (ours_meter.since(ours_mark), nginx_meter.since(nginx_mark));
    crate::report::usage_rows(
        &mut ctx.report,
        "HTTP scripts",
        ours_usage,
        Some(("nginx", nginx_usage)),
    );
    ctx.usage.push(("HTTP scripts", ours_usage));
    bootplane.check_alive()?;
    nginx.stop();
    ctx.stop_appliance(bootplane, "HTTP").await;
    Ok(())
}

/// nginx's port beside the appliance's (both run through the whole HTTP scenario, so rounds
/// alternate between them).
const NGINX_PORT: u16 = 8081;

fn rows(ctx: &mut Ctx, clients: usize, bytes: usize, ours: &Rounds, theirs: &Rounds) {
    let report = &mut ctx.report;
    let theirs = Some(theirs);
    let label = format!("HTTP {} MB × {clients} clients", bytes / 1_000_000);
    let (ours_median, theirs_median) = (ours.median(), theirs.and_then(Rounds::median));
    let (a, b) = (
        ours_median.and_then(LoadResult::mb_per_sec),
        theirs_median.and_then(LoadResult::mb_per_sec),
    );
    let mb = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.0} MB/s"));
    let verified = |r: &Rounds, who: &str| {
        let (v, c) = r.verified();
        format!("{who} {v}/{c} downloads verified, {}", r.throughput_range())
    };
    report.row(
        Row::new(format!("{label}: throughput (median round)"), mb(a))
            .reference(
                if theirs.is_some() {
                    mb(b)
                } else {
                    "no nginx".into()
                },
                fmt_ratio(a, b),
            )
            .notes(format!(
                "reference: nginx, sendfile on, worker_processes auto; {}{}",
                verified(ours, "bootplane"),
                theirs.map_or(String::new(), |t| format!("; {}", verified(t, "nginx")))
            )),
    );
    let wall = |r: Option<&LoadResult>| r.map(|r| r.wall.as_secs_f64());
    report.row(
        Row::new(
            format!("{label}: wall time (median round)"),
            wall(ours_median).map_or("n/a".into(), |s| format!("{s:.2} s")),
        )
        .reference(
            wall(theirs_median).map_or("—".into(), |s| format!("{s:.2} s")),
            fmt_ratio(wall(theirs_median), wall(ours_median)),
        )
        .notes("ratio as speed: nginx time / bootplane time"),
    );
    let (mut fa, mut fb) = (ours.first_byte(), theirs.map(Rounds::first_byte));
    let (a99, b99) = (
        fa.percentile(99.0),
        fb.as_mut().and_then(|l| l.percentile(99.0)),
    );
    report.row(
        Row::new(format!("{label}: time to first byte p99"), fmt_latency(a99)).reference(
            fmt_latency(b99),
            fmt_ratio(a99.map(|d| d.as_secs_f64()), b99.map(|d| d.as_secs_f64())),
        ),
    );
    let cpu = |v: Option<f64>| v.map_or("n/a".into(), |c| format!("{c:.2}"));
    let (ca, cb) = (ours.cpu_per_round(), theirs.and_then(Rounds::cpu_per_round));
    report.row(
        Row::new(format!("{label}: server CPU s per round"), cpu(ca))
            .reference(cpu(cb), fmt_ratio(ca, cb))
            .notes(format!(
                "utime+stime during the load (nginx: master and workers); the clients used {} CPU s per round against bootplane, {} against nginx",
                cpu(ours.client_cpu_per_round()),
                cpu(theirs.and_then(Rounds::client_cpu_per_round))
            )),
    );
    report.target(
        format!("HTTP big file, {clients} clients ≥ 1.0× nginx"),
        Verdict::from_check(a.zip(b).map(|(a, b)| a >= b)),
        format!("ratio {}", fmt_ratio(a, b)),
    );
    for (who, rounds) in [("bootplane", Some(ours)), ("nginx", theirs)] {
        let Some(rounds) = rounds else { continue };
        let failures: Vec<&String> = rounds.failures().collect();
        if let Some(first) = failures.first() {
            report.problem(format!(
                "{who}: {} downloads failed verification; first: {first}",
                failures.len()
            ));
        }
    }
}
