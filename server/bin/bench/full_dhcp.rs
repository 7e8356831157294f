//! Scenario: full DHCP. Distinct PXE clients each do DISCOVER → OFFER → REQUEST → ACK once
//! (a new lease, persisted), then every leased client DISCOVERs again; bootplane beside dnsmasq
//! (a lease file it rewrites), and the trivial responder for the generator's ceiling.

use std::time::Duration;

use anyhow::Result;

use crate::dhcp_load::{self, Flow, FlowResult, Load};
use crate::memory::{Meter, Usage};
use crate::report::Verdict;
use crate::servers::{Appliance, DhcpMode, Reference, POOL_END, POOL_START};
use crate::stats::{fmt_count, fmt_ratio};
use crate::Ctx;

/// Fewer finished transactions than this fraction is a problem (and fails a smoke run).
const MIN_ANSWERED: f64 = 0.95;
const FILL_TARGET: f64 = 10.0;
const LEASED_TARGET: f64 = 5.0;

/// Both loads against one server.
struct Pair {
    fill: FlowResult,
    leased: FlowResult,
}

async fn drive(ctx: &Ctx, macs: usize) -> Result<Pair> {
    let base = Load {
        flow: Flow::Dora,
        clients: (0..macs).collect(),
        in_flight: ctx.params.in_flight,
        timeout: Duration::from_secs(2),
        interface: ctx.names.client_if.clone(),
        leases: Vec::new(),
    };
    dhcp_load::warm_up(&base).await?;
    let fill = dhcp_load::run(base.clone()).await?;
    let leased = dhcp_load::run(Load {
        flow: Flow::LeasedDiscover,
        leases: fill.leases.clone(),
        ..base
    })
    .await?;
    Ok(Pair { fill, leased })
}

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let macs = ctx.params.macs;
    let dir = ctx.scratch.join("full-dhcp");
    eprintln!("full DHCP: load generator ceiling (trivial responder)");
    let ceiling = {
        let responder = Reference::responder(&ctx.names, &dir, "dhcp-full").await?;
        let pair = drive(ctx, macs).await?;
        responder.stop();
        pair
    };

    eprintln!("full DHCP: bootplane, {macs} clients");
    let setup = ctx.small_appliance(&dir, DhcpMode::Full);
    let mut bootplane = Appliance::start(&ctx.binary, &ctx.names, &setup).await?;
    let meter = Meter::start(bootplane.pid(), ctx.params.settle).await?;
    let mark = meter.mark();
    let ours = drive(ctx, macs).await?;
    // Leases are written by a background task every 200 ms; give it a round before counting.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ours_usage = meter.since(mark);
    bootplane.check_alive()?;
    let ours_running = count_leases(&setup.root.join("data")).await;
    ctx.stop_appliance(bootplane, "full DHCP").await;
    let ours_stopped = count_leases(&setup.root.join("data")).await;

    eprintln!("full DHCP: dnsmasq, {macs} clients");
    let lines = vec![
        format!("dhcp-range={POOL_START},{POOL_END},255.255.0.0,1h"),
        "dhcp-lease-max=1000000".into(),
        "dhcp-authoritative".into(),
        "no-ping".into(),
        "quiet-dhcp".into(),
        "dhcp-match=set:efi64,option:client-arch,7".into(),
        "dhcp-boot=tag:efi64,ipxe.efi".into(),
        "dhcp-boot=tag:!efi64,undionly.kpxe".into(),
    ];
    let dnsmasq_dir = dir.join("dnsmasq");
    let mut dnsmasq = Reference::dnsmasq(&ctx.names, &dnsmasq_dir, &lines).await?;
    let meter = Meter::start(dnsmasq.pid(), ctx.params.settle).await?;
    let mark = meter.mark();
    let theirs = drive(ctx, macs).await?;
    let theirs_usage = meter.since(mark);
    dnsmasq.check_alive()?;
    dnsmasq.stop();
    let theirs_persisted = std::fs::read_to_string(dnsmasq_dir.join("dnsmasq.leases"))
        .map(|t| t.lines().count())
        .ok();

    rows(ctx, &ours, &theirs, &ceiling, ours_usage, theirs_usage);
    ctx.report.finding(format!(
        "full DHCP: leases on disk (warm-up clients included): bootplane {} while running (0.6 s after the load; SQLite, meant to be written in batches every 200 ms) and {} after it stopped, dnsmasq {} (lease file, rewritten on every change); dnsmasq runs with no-ping and quiet-dhcp (no ICMP probe before an offer, no log line per packet), its best case",
        ours_running.map_or("?".into(), |n| fmt_count(n as f64)),
        ours_stopped.map_or("?".into(), |n| fmt_count(n as f64)),
        theirs_persisted.map_or("?".into(), |n| fmt_count(n as f64)),
    ));
    if ours_running.is_some_and(|n| n < macs) {
        ctx.report.finding(format!(
            "full DHCP: bootplane had persisted only {} of {} leases 0.6 s after the lease fill ended: a crash then would lose them",
            ours_running.map_or("?".into(), |n| fmt_count(n as f64)),
            fmt_count(macs as f64)
        ));
    }
    for (who, pair) in [("bootplane", &ours), ("dnsmasq", &theirs)] {
        for (what, r) in [
            ("lease fill", &pair.fill),
            ("leased DISCOVER", &pair.leased),
        ] {
            if r.answered() < MIN_ANSWERED {
                ctx.report.problem(format!(
                    "full DHCP {what}: {who} finished only {:.1}% ({})",
                    r.answered() * 100.0,
                    r.outcome()
                ));
            }
        }
    }
    if ours.leased.moved > 0 {
        ctx.report.problem(format!(
            "full DHCP: bootplane offered {} leased clients another address than their lease",
            ours.leased.moved
        ));
    }
    ctx.usage.push(("full DHCP", ours_usage));
    Ok(())
}

/// Leases in the appliance's database (read after the load, while it runs: SQLite WAL).
async fn count_leases(data: &std::path::Path) -> Option<usize> {
    let db = bootplane::db::Db::open(data).await.ok()?;
    db.load_leases().await.ok().map(|rows| rows.len())
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
    for (label, a, b, c, target) in [
        (
            format!(
                "full DHCP lease fill (DISCOVER-OFFER-REQUEST-ACK, {} new clients, {in_flight} in flight)",
                fmt_count(ours.fill.started as f64)
            ),
            &ours.fill,
            &theirs.fill,
            &ceiling.fill,
            FILL_TARGET,
        ),
        (
            format!("full DHCP DISCOVER from leased clients, {in_flight} in flight"),
            &ours.leased,
            &theirs.leased,
            &ceiling.leased,
            LEASED_TARGET,
        ),
    ] {
        let (ratio, _) = dhcp_load::flow_rows(report, &label, "transactions/s", [a, b, c]);
        if let (Some(ceil), Some(theirs)) = (c.per_sec(), b.per_sec()) {
            if ceil < target * theirs {
                report.finding(format!(
                    "{label}: the load generator's own ceiling here is {:.1}× dnsmasq's rate, below the {target}× target, so this table cannot show that target on this machine",
                    ceil / theirs
                ));
            }
        }
        report.target(
            format!("{label} ≥ {target}× dnsmasq"),
            Verdict::from_check(ratio.map(|r| r >= target)),
            format!("ratio {}", fmt_ratio(a.per_sec(), b.per_sec())),
        );
    }
    crate::report::usage_rows(
        report,
        "full DHCP",
        ours_usage,
        Some(("dnsmasq", theirs_usage)),
    );
}
