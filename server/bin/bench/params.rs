//! The command line, the scenarios it selects and the load parameters it fixes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::servers;
use crate::stats::fmt_count;

#[derive(Debug, Parser)]
#[command(
    name = "bootplane-bench",
    about = "Benchmark bootplane against dnsmasq, tftpd-hpa and nginx in network namespaces (needs root)"
)]
pub struct Cli {
    /// Small, fast run for CI; exits 1 on a correctness problem (unverified bytes, unanswered
    /// DHCP, failed machines, an appliance that does not stop cleanly)
    #[arg(long)]
    pub smoke: bool,
    /// Where to write the Markdown table
    #[arg(long, default_value = "target/bench.md")]
    pub out: PathBuf,
    /// The appliance binary [default: `bootplane` beside this executable, built first when the
    /// bench runs through `cargo run`]
    #[arg(long)]
    pub bootplane: Option<PathBuf>,
    /// Scenarios to run, comma-separated [default: all but faults]
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
    /// Boot storm sizes, comma-separated [default: 50,200,1000; smoke: 4]
    #[arg(long, value_delimiter = ',')]
    storm: Vec<usize>,
    /// Open-loop DHCP loads: run this one rate (exchanges started per second) against each
    /// server instead of searching for the highest it sustains
    #[arg(long)]
    dhcp_rate: Option<u32>,
    /// Keep the temporary directory (server logs, databases, configs) and print its path
    #[arg(long)]
    pub keep_temp: bool,
    /// (internal) the run's namespaces, by the id of the bench process that made them
    #[arg(long, hide = true)]
    pub netns_id: Option<u32>,
    /// (internal) run a trivial responder in the server namespace: dhcp-full, dhcp-proxy, tcp
    #[arg(long, hide = true)]
    pub responder: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Link,
    FullDhcp,
    ProxyDhcp,
    Tftp,
    Http,
    Storm,
    /// The storm under packet loss and through a restart (not in the default run).
    Faults,
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
    /// Machines of the fault storms, and the pool clients beside the restart.
    pub fault_machines: usize,
    pub fault_pool_clients: usize,
    /// Each step of an open-loop DHCP rate search lasts this long.
    pub rate_window: Duration,
    pub rate_plan: crate::dhcp_open::Plan,
    /// A DHCP storm still unfinished after this long is given up.
    pub dhcp_storm_give_up: Duration,
    pub storm_kernel_bytes: usize,
    pub storm_initramfs_bytes: usize,
    pub blast_bytes: u64,
    /// How long a server sits idle after start-up before its idle memory is read.
    pub settle: Duration,
}

impl Params {
    pub fn from_cli(cli: &Cli) -> Self {
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
            storm_sizes: list(&cli.storm, &[50, 200, 1000], &[4]),
            fault_machines: pick(50, 10),
            fault_pool_clients: pick(100, 20),
            rate_window: Duration::from_secs(pick(4, 1) as u64),
            // Doubling from 2,000/s, then three bisections (to within 1/16 of the rate); a
            // smoke run tries one low rate per server, a check that the loop works.
            rate_plan: if let Some(r) = cli.dhcp_rate {
                let r = r.max(1);
                crate::dhcp_open::Plan {
                    start: r,
                    max: r,
                    bisections: 0,
                    min: r,
                }
            } else if smoke {
                crate::dhcp_open::Plan {
                    start: 500,
                    max: 500,
                    bisections: 0,
                    min: 500,
                }
            } else {
                crate::dhcp_open::Plan {
                    start: 2_000,
                    max: 512_000,
                    bisections: 3,
                    min: 125,
                }
            },
            dhcp_storm_give_up: Duration::from_secs(pick(120, 30) as u64),
            storm_kernel_bytes: pick(16, 1) * 1_000_000,
            storm_initramfs_bytes: pick(80, 3) * 1_000_000,
            blast_bytes: pick(2_000, 200) as u64 * 1_000_000,
            settle: Duration::from_millis(pick(1_000, 300) as u64),
        }
    }

    pub fn runs(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }

    pub fn describe(&self) -> Vec<(String, String)> {
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
                    "{} distinct PXE clients per load (half BIOS arch 0, half x64 UEFI arch 7), broadcast from port 68 on one client thread; closed loop: {} in flight; open loop (ISC's perfdhcp method): the clients take turns at a fixed rate, {} s per step, a fresh server per step, an exchange unanswered within 1 s is missed, a rate passes with at most 2.5% of each kind missed, doubling from {}/s then {} bisections; DHCP storm: every client at once, RFC 2131 back-off (4, 8, 16 s …), given up after {} s",
                    fmt_count(self.macs as f64),
                    self.in_flight,
                    self.rate_window.as_secs_f64(),
                    fmt_count(f64::from(self.rate_plan.start)),
                    self.rate_plan.bisections,
                    self.dhcp_storm_give_up.as_secs(),
                ),
            ),
            (
                "TFTP".into(),
                format!(
                    "ipxe.efi to {} parallel clients (each from an address of its own) × {} each; one {} MB file to one client; blksize 1468, tsize",
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
                    "N = {:?}; iPXE binary by TFTP asking blksize 1468 and windowsize 4 as OVMF does, kernel {} MB, initramfs {} MB, scripts and config by HTTP",
                    self.storm_sizes,
                    mb(self.storm_kernel_bytes),
                    mb(self.storm_initramfs_bytes)
                ),
            ),
            (
                "faults".into(),
                format!(
                    "{} storm machines (up to 3 boots each, a second apart) under 5% random loss each way (nftables at the ingress of each veth end), then through a SIGTERM and a restart, beside {} pool clients taking leases",
                    self.fault_machines, self.fault_pool_clients
                ),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(p.storm_sizes, vec![50, 200, 1000]);
        assert_eq!(p.script_connections, 64);
        assert_eq!(p.tftp_clients, 16);
    }

    #[test]
    fn only_selects_scenarios() {
        let cli = Cli::try_parse_from(["bootplane-bench", "--only", "http,tftp"]).unwrap();
        let p = Params::from_cli(&cli);
        assert!(p.runs(Scenario::Http) && p.runs(Scenario::Tftp) && !p.runs(Scenario::Storm));
    }

    #[test]
    fn faults_run_only_when_asked() {
        let all = Params::from_cli(&Cli::try_parse_from(["bootplane-bench"]).unwrap());
        assert!(!all.runs(Scenario::Faults));
        let cli = Cli::try_parse_from(["bootplane-bench", "--smoke", "--only", "faults"]).unwrap();
        let p = Params::from_cli(&cli);
        assert!(p.runs(Scenario::Faults) && !p.runs(Scenario::Storm));
        assert_eq!((p.fault_machines, p.fault_pool_clients), (10, 20));
    }
}
