//! Scenario: a large boot asset to many parallel clients, from bootplane and from nginx
//! (sendfile) serving the same file, in alternating rounds so background noise on the machine
//! falls on both alike; every body is verified byte for byte.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::dhcp_load::client_mac;
use crate::http_client::{parallel_downloads, LoadResult};
use crate::memory::Phase;
use crate::report::{Report, Row, Verdict};
use crate::servers::{find_nginx, Appliance, Nginx};
use crate::stats::{fmt_latency, fmt_ratio, Latencies};
use crate::sys::ProcSample;
use crate::{mac_text, Params, ASSET, TALOS_VERSION};

/// How long nginx sits idle before its idle memory is read.
const NGINX_SETTLE: Duration = Duration::from_millis(500);

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

/// What the memory rows need from this scenario.
#[derive(Debug)]
pub struct Outcome {
    pub phase: Phase,
    /// nginx (master and workers): idle RSS and peak RSS, KiB.
    pub nginx_memory: Option<(u64, u64)>,
    /// CPU seconds nginx used over all rounds.
    pub nginx_cpu_secs: f64,
}

pub async fn run(
    params: &Params,
    bootplane: &mut Appliance,
    scratch: &Path,
    images: &Path,
    file: Arc<Vec<u8>>,
    report: &mut Report,
) -> Result<Outcome> {
    let start = Instant::now();
    let nginx = match find_nginx() {
        None => {
            report.finding("nginx is not installed: the HTTP rows have no reference");
            None
        }
        Some(binary) => match Nginx::start(&binary, &scratch.join("nginx"), images).await {
            Ok(n) => Some(n),
            Err(e) => {
                report.finding(format!(
                    "nginx did not start, so there is no reference: {e:#}"
                ));
                None
            }
        },
    };
    let nginx_idle = match &nginx {
        Some(n) => {
            tokio::time::sleep(NGINX_SETTLE).await;
            ProcSample::read_tree(n.pid()).ok()
        }
        None => None,
    };

    let mut ours = Rounds::default();
    let mut theirs = Rounds::default();
    for round in 0..params.http_rounds {
        eprintln!(
            "HTTP round {}/{}: {} clients × {} MB",
            round + 1,
            params.http_rounds,
            params.http_clients,
            params.file_bytes / 1_000_000
        );
        let before = ProcSample::read(bootplane.pid())?;
        let load = parallel_downloads(
            bootplane.ports.http,
            params.http_clients,
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

        if let Some(n) = &nginx {
            let before = ProcSample::read_tree(n.pid())?;
            let load = parallel_downloads(
                n.addr,
                params.http_clients,
                |i| {
                    format!(
                        "/{TALOS_VERSION}/{ASSET}?mac={}",
                        mac_text(client_mac(2_000_000 + round * 10_000 + i))
                    )
                },
                file.clone(),
            )
            .await;
            let after = ProcSample::read_tree(n.pid())?;
            theirs.push(load, after.cpu_secs - before.cpu_secs);
        }
    }
    let end = Instant::now();
    let nginx_memory = match &nginx {
        Some(n) => match (nginx_idle, ProcSample::read_tree(n.pid())) {
            (Some(idle), Ok(after)) => Some((idle.rss_kib, after.hwm_kib)),
            _ => None,
        },
        None => None,
    };
    if let Some(n) = nginx {
        n.stop();
    }

    rows(
        params,
        report,
        &ours,
        (!theirs.loads.is_empty()).then_some(&theirs),
    );
    Ok(Outcome {
        phase: Phase {
            name: "HTTP load".into(),
            start,
            end,
        },
        nginx_memory,
        nginx_cpu_secs: theirs.cpu.iter().sum(),
    })
}

fn rows(params: &Params, report: &mut Report, ours: &Rounds, theirs: Option<&Rounds>) {
    let label = format!(
        "HTTP {} MB × {} clients",
        params.file_bytes / 1_000_000,
        params.http_clients
    );
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
        "HTTP big file ≥ 1.0× nginx",
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
