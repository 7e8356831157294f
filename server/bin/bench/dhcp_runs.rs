//! The DHCP servers the open-loop loads and storms run against, each started fresh for each
//! step (as ISC starts Kea fresh for each perfdhcp run), and the runs themselves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::dhcp_load::{self, Flow, Load};
use crate::dhcp_open::{self, OpenLoad, Plan, Search, Step, Storm};
use crate::memory::{Meter, Usage};
use crate::servers::{Appliance, DhcpMode, Reference, POOL_END, POOL_START};
use crate::Ctx;

/// Which server a run starts.
#[derive(Debug, Clone)]
pub enum DhcpServer {
    Bootplane(DhcpMode),
    Kea,
    /// dnsmasq with these configuration lines.
    Dnsmasq(Vec<String>),
    /// The bench's trivial responder (`dhcp-full` or `dhcp-proxy`): the generator's ceiling.
    Responder(&'static str),
}

impl DhcpServer {
    pub fn name(&self) -> &'static str {
        match self {
            DhcpServer::Bootplane(_) => "bootplane",
            DhcpServer::Kea => "Kea",
            DhcpServer::Dnsmasq(_) => "dnsmasq",
            DhcpServer::Responder(_) => "trivial responder",
        }
    }

    /// dnsmasq as a full DHCP server with the shared pool, at its fastest (no ICMP probe
    /// before an offer, no log line per packet).
    pub fn dnsmasq_full() -> Self {
        DhcpServer::Dnsmasq(vec![
            format!("dhcp-range={POOL_START},{POOL_END},255.255.0.0,1h"),
            "dhcp-lease-max=1000000".into(),
            "dhcp-authoritative".into(),
            "no-ping".into(),
            "quiet-dhcp".into(),
            "dhcp-match=set:efi64,option:client-arch,7".into(),
            "dhcp-boot=tag:efi64,ipxe.efi".into(),
            "dhcp-boot=tag:!efi64,undionly.kpxe".into(),
        ])
    }

    /// dnsmasq as a proxyDHCP server with a PXE menu entry per architecture.
    pub fn dnsmasq_proxy() -> Self {
        DhcpServer::Dnsmasq(vec![
            "dhcp-range=10.99.0.0,proxy,255.255.0.0".into(),
            "quiet-dhcp".into(),
            "pxe-prompt=\"bootplane bench\",0".into(),
            "pxe-service=x86PC,\"iPXE\",undionly".into(),
            "pxe-service=X86-64_EFI,\"iPXE\",ipxe".into(),
        ])
    }
}

/// A started server.
pub enum Running {
    Appliance(Appliance),
    Reference(Reference),
}

impl Running {
    pub async fn start(ctx: &Ctx, which: &DhcpServer, dir: &Path) -> Result<Self> {
        Ok(match which {
            DhcpServer::Bootplane(mode) => {
                let setup = ctx.small_appliance(dir, *mode);
                Running::Appliance(Appliance::start(&ctx.binary, &ctx.names, &setup).await?)
            }
            DhcpServer::Kea => {
                Running::Reference(Reference::kea(&ctx.names, &dir.join("kea")).await?)
            }
            DhcpServer::Dnsmasq(lines) => Running::Reference(
                Reference::dnsmasq(&ctx.names, &dir.join("dnsmasq"), lines).await?,
            ),
            DhcpServer::Responder(kind) => {
                Running::Reference(Reference::responder(&ctx.names, dir, kind).await?)
            }
        })
    }

    pub fn pid(&self) -> u32 {
        match self {
            Running::Appliance(a) => a.pid(),
            Running::Reference(r) => r.pid(),
        }
    }

    /// Checks it still runs, then stops it; an appliance that does not stop cleanly is an error.
    pub fn finish(self) -> Result<()> {
        match self {
            Running::Appliance(mut a) => {
                a.check_alive()?;
                a.stop()
            }
            Running::Reference(mut r) => {
                r.check_alive()?;
                r.stop();
                Ok(())
            }
        }
    }
}

/// A server's open-loop rate search for one flow, a fresh server per step; with the highest
/// RSS and the CPU seconds of the step that passed highest.
pub struct RateRun {
    pub search: Search,
    pub peak_kib: u64,
}

pub async fn rate_search(
    ctx: &Ctx,
    which: &DhcpServer,
    flow: Flow,
    dir: &Path,
    plan: Plan,
) -> Result<RateRun> {
    let mut marks: Vec<(u32, bool)> = Vec::new();
    let mut search = Search::default();
    let mut peak_kib = 0;
    let mut generator_max = f64::INFINITY;
    while let Some(rate) = dhcp_open::next_rate(plan, &marks) {
        let step_dir = dir.join(format!("{}-{rate}", which.name()));
        let (step, usage) = one_step(ctx, which, flow, &step_dir, rate)
            .await
            .with_context(|| format!("{} at {rate}/s", which.name()))?;
        // The step directories hold lease files and logs only this step needed.
        let _ = std::fs::remove_dir_all(&step_dir);
        peak_kib = peak_kib.max(usage.peak_kib);
        eprintln!("  {}: {}", which.name(), step.describe());
        // A step the generator could not keep on schedule says nothing about the server: the
        // search goes on below it as after a failure, and remembers the generator's limit.
        let pass = step.passes() && step.on_schedule();
        if !step.on_schedule() {
            generator_max = generator_max.min(step.achieved);
        }
        if pass && search.best.as_ref().is_none_or(|b| b.rate < step.rate) {
            search.best = Some(step.clone());
        }
        marks.push((rate, pass));
        search.steps.push(step);
    }
    let best = search.rate().unwrap_or(0.0);
    search.generator_limited =
        (marks.last().is_some_and(|m| m.1 && m.0 >= plan.max)) || best >= 0.9 * generator_max;
    Ok(RateRun { search, peak_kib })
}

async fn one_step(
    ctx: &Ctx,
    which: &DhcpServer,
    flow: Flow,
    dir: &Path,
    rate: u32,
) -> Result<(Step, Usage)> {
    let server = Running::start(ctx, which, dir).await?;
    warm_up(ctx, flow).await?;
    let meter = Meter::start(server.pid(), Duration::ZERO).await?;
    let mark = meter.mark();
    let step = dhcp_open::step(OpenLoad {
        flow,
        interface: ctx.names.client_if.clone(),
        clients: 0..ctx.params.macs,
        rate,
        window: ctx.params.rate_window,
    })
    .await?;
    let usage = meter.since(mark);
    server.finish()?;
    Ok((step, usage))
}

/// The closed-loop warm-up (clients outside the measured range) that faults in both sides.
async fn warm_up(ctx: &Ctx, flow: Flow) -> Result<()> {
    dhcp_load::warm_up(&Load {
        flow,
        clients: Vec::new(),
        in_flight: ctx.params.in_flight,
        timeout: Duration::from_secs(1),
        interface: ctx.names.client_if.clone(),
        leases: Vec::new(),
    })
    .await
}

/// A full DHCP storm of `ctx.params.macs` new clients against a fresh server.
pub async fn storm(ctx: &Ctx, which: &DhcpServer, dir: &Path) -> Result<(Storm, Usage)> {
    let dir: PathBuf = dir.join(format!("{}-storm", which.name()));
    let server = Running::start(ctx, which, &dir).await?;
    warm_up(ctx, Flow::Dora).await?;
    let meter = Meter::start(server.pid(), Duration::ZERO).await?;
    let mark = meter.mark();
    let before = Drops::read(ctx);
    let mut storm = dhcp_open::storm(
        ctx.names.client_if.clone(),
        0..ctx.params.macs,
        ctx.params.dhcp_storm_give_up,
    )
    .await?;
    let usage = meter.since(mark);
    storm.lost = Drops::read(ctx).since(&before);
    if let Running::Appliance(appliance) = &server {
        storm
            .lost
            .extend(appliance.metrics(&["bootplane_dhcp_dropped_total"]).await?);
    }
    server
        .finish()
        .with_context(|| format!("{} after the DHCP storm", which.name()))?;
    Ok((storm, usage))
}

/// Where a storm's packets were lost on the way: the kernel's counters of both namespaces
/// (UDP datagrams dropped for a full receive buffer) and of the machine (frames dropped from a
/// CPU's input backlog, which a veth's frames pass through).
#[derive(Debug, Default, Clone, PartialEq)]
struct Drops {
    server_rcvbuf: u64,
    client_rcvbuf: u64,
    backlog: u64,
}

impl Drops {
    fn read(ctx: &Ctx) -> Self {
        let rcvbuf = |mut cmd: std::process::Command| {
            cmd.arg("/proc/net/snmp")
                .output()
                .ok()
                .and_then(|o| udp_rcvbuf_errors(&String::from_utf8_lossy(&o.stdout)))
                .unwrap_or(0)
        };
        Drops {
            server_rcvbuf: rcvbuf(ctx.names.in_server("cat")),
            client_rcvbuf: rcvbuf(ctx.names.in_client("cat")),
            backlog: std::fs::read_to_string("/proc/net/softnet_stat")
                .map(|t| softnet_dropped(&t))
                .unwrap_or(0),
        }
    }

    /// What moved since `before`, as report lines (none when nothing was dropped).
    fn since(&self, before: &Drops) -> Vec<String> {
        [
            (
                "server receive buffer full (UDP RcvbufErrors)",
                self.server_rcvbuf,
                before.server_rcvbuf,
            ),
            (
                "client receive buffer full (UDP RcvbufErrors)",
                self.client_rcvbuf,
                before.client_rcvbuf,
            ),
            (
                "input backlog full (softnet_stat dropped)",
                self.backlog,
                before.backlog,
            ),
        ]
        .into_iter()
        .filter(|(_, now, then)| now > then)
        .map(|(what, now, then)| format!("{what} {}", now - then))
        .collect()
    }
}

/// The `RcvbufErrors` column of the `Udp:` lines of /proc/net/snmp.
fn udp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (header, values) = (udp.next()?, udp.next()?);
    let column = header
        .split_whitespace()
        .position(|h| h == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// The second column (frames dropped, hexadecimal) of /proc/net/softnet_stat, summed over CPUs.
fn softnet_dropped(stat: &str) -> u64 {
    stat.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|d| u64::from_str_radix(d, 16).ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drop_counters_are_read_by_column() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 10 0 7 12 5 0\n";
        assert_eq!(udp_rcvbuf_errors(snmp), Some(5));
        assert_eq!(udp_rcvbuf_errors("Tcp: A\nTcp: 1\n"), None);
        let softnet = "0000a000 0000000f 00000000\n00000001 00000010 00000000\n";
        assert_eq!(softnet_dropped(softnet), 31);
    }
}
