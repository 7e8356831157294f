//! Scenario: proxyDHCP. PXE DISCOVERs on port 67 from distinct clients (half BIOS, half x64
//! UEFI), then REQUESTs to the boot-server port 4011 for the same clients; bootplane beside
//! dnsmasq in proxy mode with pxe-service entries, and the trivial responder for the
//! generator's ceiling; then each server's sustained rate of each by ISC's open-loop criterion.

use std::time::Duration;

use anyhow::Result;

use crate::dhcp_load::{self, Flow, FlowResult, Load};
use crate::dhcp_runs::{self, DhcpServer};
use crate::memory::{Meter, Usage};
use crate::report::Verdict;
use crate::servers::{Appliance, DhcpMode, Reference};
use crate::stats::{fmt_count, fmt_latency};
use crate::Ctx;

/// Fewer finished transactions than this fraction is a problem (and fails a smoke run).
const MIN_ANSWERED: f64 = 0.95;
const RATE_TARGET: f64 = 1.5;
const P99_TARGET: Duration = Duration::from_millis(1);
/// The sustained rate by the open-loop criterion: bootplane's over dnsmasq's.
const SUSTAINED_TARGET: f64 = 2.0;

struct Pair {
    discover: FlowResult,
    request: FlowResult,
}

async fn drive(ctx: &Ctx) -> Result<Pair> {
    let base = Load {
        flow: Flow::ProxyDiscover,
        clients: (0..ctx.params.macs).collect(),
        in_flight: ctx.params.in_flight,
        timeout: Duration::from_secs(1),
        interface: ctx.names.client_if.clone(),
        leases: Vec::new(),
    };
    dhcp_load::warm_up(&base).await?;
    let discover = dhcp_load::run(base.clone()).await?;
    let request = dhcp_load::run(Load {
        flow: Flow::ProxyRequest,
        ..base
    })
    .await?;
    Ok(Pair { discover, request })
}

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.scratch.join("proxy-dhcp");
    eprintln!("proxyDHCP: load generator ceiling (trivial responder)");
    let ceiling = {
        let responder = Reference::responder(&ctx.names, &dir, "dhcp-proxy").await?;
        let pair = drive(ctx).await?;
        responder.stop();
        pair
    };

    eprintln!("proxyDHCP: bootplane");
    let setup = ctx.small_appliance(&dir, DhcpMode::Proxy);
    let mut bootplane = Appliance::start(&ctx.binary, &ctx.names, &setup).await?;
    let meter = Meter::start(bootplane.pid(), ctx.params.settle).await?;
    let mark = meter.mark();
    let ours = drive(ctx).await?;
    let ours_usage = meter.since(mark);
    bootplane.check_alive()?;
    ctx.stop_appliance(bootplane, "proxyDHCP").await;

    eprintln!("proxyDHCP: dnsmasq");
    let DhcpServer::Dnsmasq(lines) = DhcpServer::dnsmasq_proxy() else {
        unreachable!("dnsmasq_proxy is dnsmasq")
    };
    let mut dnsmasq = Reference::dnsmasq(&ctx.names, &dir.join("dnsmasq"), &lines).await?;
    let meter = Meter::start(dnsmasq.pid(), ctx.params.settle).await?;
    let mark = meter.mark();
    let theirs = drive(ctx).await?;
    let theirs_usage = meter.since(mark);
    dnsmasq.check_alive()?;
    dnsmasq.stop();

    let mut searches = Vec::new();
    for flow in [Flow::ProxyDiscover, Flow::ProxyRequest] {
        for which in [
            DhcpServer::Bootplane(DhcpMode::Proxy),
            DhcpServer::dnsmasq_proxy(),
            DhcpServer::Responder("dhcp-proxy"),
        ] {
            eprintln!(
                "proxyDHCP: open-loop {flow:?} rate search, {}",
                which.name()
            );
            searches.push(
                dhcp_runs::rate_search(ctx, &which, flow, &dir.join("rate"), ctx.params.rate_plan)
                    .await?,
            );
        }
    }

    rows(ctx, &ours, &theirs, &ceiling, ours_usage, theirs_usage);
    let macs = fmt_count(ctx.params.macs as f64);
    for (i, what) in ["DISCOVER on 67", "REQUEST on 4011"]
        .into_iter()
        .enumerate()
    {
        let label = format!(
            "proxyDHCP sustained {what} rate (open loop, {macs} clients taking turns, ≤ 2.5% missing 1 s)"
        );
        crate::full_dhcp::rate_row(
            &mut ctx.report,
            &label,
            &searches[3 * i].search,
            ("dnsmasq", &searches[3 * i + 1].search),
            &searches[3 * i + 2].search,
            SUSTAINED_TARGET,
        );
    }
    let peak = searches
        .iter()
        .step_by(3)
        .map(|r| r.peak_kib)
        .max()
        .unwrap_or(0);
    ctx.usage.push((
        "proxyDHCP rate search",
        Usage {
            idle_kib: 0,
            peak_kib: peak,
            cpu_secs: 0.0,
        },
    ));
    for (who, pair) in [("bootplane", &ours), ("dnsmasq", &theirs)] {
        for (what, r) in [("DISCOVER", &pair.discover), ("REQUEST", &pair.request)] {
            if r.answered() < MIN_ANSWERED {
                let text = format!(
                    "proxyDHCP {what}: {who} finished only {:.1}% ({})",
                    r.answered() * 100.0,
                    r.outcome()
                );
                if who == "bootplane" {
                    ctx.report.problem(text);
                } else {
                    ctx.report.finding(text);
                }
            }
        }
    }
    ctx.usage.push(("proxyDHCP", ours_usage));
    Ok(())
}

fn rows(
    ctx: &mut Ctx,
    ours: &Pair,
    theirs: &Pair,
    ceiling: &Pair,
    ours_usage: Usage,
    theirs_usage: Usage,
) {
    let in_flight = ctx.params.in_flight;
    let report = &mut ctx.report;
    let mut worst_p99 = None;
    let mut ratios = Vec::new();
    for (label, a, b, c) in [
        (
            format!("proxyDHCP DISCOVER on 67 (BIOS and UEFI), {in_flight} in flight"),
            &ours.discover,
            &theirs.discover,
            &ceiling.discover,
        ),
        (
            format!("proxyDHCP REQUEST on 4011 (BIOS and UEFI), {in_flight} in flight"),
            &ours.request,
            &theirs.request,
            &ceiling.request,
        ),
    ] {
        let (ratio, p99) =
            dhcp_load::flow_rows(report, &label, "replies/s", [a, b, c], "dnsmasq", None);
        ratios.push(ratio);
        worst_p99 = worst_p99.max(p99);
    }
    let worst_ratio = ratios
        .iter()
        .copied()
        .collect::<Option<Vec<f64>>>()
        .and_then(|v| v.into_iter().reduce(f64::min));
    report.target(
        format!("proxyDHCP ≥ {RATE_TARGET}× dnsmasq (DISCOVER and REQUEST)"),
        Verdict::from_check(worst_ratio.map(|r| r >= RATE_TARGET)),
        format!(
            "lower ratio {}",
            worst_ratio.map_or("n/a".into(), |r| format!("{r:.2}×"))
        ),
    );
    report.target(
        format!("proxyDHCP p99 under 1 ms at {in_flight} in flight"),
        Verdict::from_check(worst_p99.map(|p| p < P99_TARGET)),
        format!("worst p99 {}", fmt_latency(worst_p99)),
    );
    crate::report::usage_rows(
        report,
        "proxyDHCP",
        ours_usage,
        Some(("dnsmasq", theirs_usage)),
    );
}
