//! Scenario: full DHCP, bootplane beside ISC Kea (memfile leases) and dnsmasq (a lease file it
//! rewrites), with the trivial responder for the generator's ceiling:
//! - closed loop: distinct PXE clients each do DISCOVER → OFFER → REQUEST → ACK once (a new
//!   lease, persisted), then every leased client DISCOVERs again;
//! - a DHCP storm: every client at once, retransmitting with back-off until all hold a lease;
//! - open loop: the highest DORA rate sustained by ISC's criterion.

use std::time::Duration;

use anyhow::Result;

use crate::dhcp_load::{self, Flow, FlowResult, Load};
use crate::dhcp_open::{Search, Storm};
use crate::dhcp_runs::{self, DhcpServer, RateRun};
use crate::memory::{Meter, Usage};
use crate::report::{Row, Verdict};
use crate::servers::{Appliance, DhcpMode, Reference};
use crate::stats::{fmt_count, fmt_latency, fmt_ratio};
use crate::Ctx;

/// Fewer finished transactions than this fraction is a problem (and fails a smoke run).
const MIN_ANSWERED: f64 = 0.95;
const FILL_TARGET: f64 = 10.0;
const LEASED_TARGET: f64 = 5.0;
/// The DHCP storm: Kea's time over bootplane's.
const STORM_TARGET: f64 = 2.0;
/// The sustained DORA rate: bootplane's over Kea's.
const RATE_TARGET: f64 = 2.0;

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

    eprintln!("full DHCP: Kea, {macs} clients");
    let kea_dir = dir.join("kea");
    let mut kea = Reference::kea(&ctx.names, &kea_dir).await?;
    let meter = Meter::start(kea.pid(), ctx.params.settle).await?;
    let mark = meter.mark();
    let kea_pair = drive(ctx, macs).await?;
    let kea_usage = meter.since(mark);
    kea.check_alive()?;
    kea.stop();
    let kea_persisted = std::fs::read_to_string(kea_dir.join("kea-leases4.csv"))
        .map(|t| t.lines().skip(1).count())
        .ok();

    eprintln!("full DHCP: dnsmasq, {macs} clients");
    let DhcpServer::Dnsmasq(lines) = DhcpServer::dnsmasq_full() else {
        unreachable!("dnsmasq_full is dnsmasq")
    };
    let dnsmasq_dir = dir.join("dnsmasq");
    let mut dnsmasq = Reference::dnsmasq(&ctx.names, &dnsmasq_dir, &lines).await?;
    let theirs = drive(ctx, macs).await?;
    dnsmasq.check_alive()?;
    dnsmasq.stop();
    let theirs_persisted = std::fs::read_to_string(dnsmasq_dir.join("dnsmasq.leases"))
        .map(|t| t.lines().count())
        .ok();

    let mut storms = Vec::new();
    for which in [
        DhcpServer::Bootplane(DhcpMode::Full),
        DhcpServer::Kea,
        DhcpServer::dnsmasq_full(),
    ] {
        eprintln!("full DHCP: storm of {macs} new clients, {}", which.name());
        storms.push(dhcp_runs::storm(ctx, &which, &dir.join("storm")).await?);
    }
    let mut searches = Vec::new();
    for which in [
        DhcpServer::Bootplane(DhcpMode::Full),
        DhcpServer::Kea,
        DhcpServer::Responder("dhcp-full"),
    ] {
        eprintln!("full DHCP: open-loop DORA rate search, {}", which.name());
        searches.push(
            dhcp_runs::rate_search(
                ctx,
                &which,
                Flow::Dora,
                &dir.join("rate"),
                ctx.params.rate_plan,
            )
            .await?,
        );
    }

    rows(
        ctx,
        [&ours, &kea_pair, &theirs, &ceiling],
        ours_usage,
        kea_usage,
    );
    storm_rows(ctx, &storms);
    rate_rows(ctx, &searches);
    ctx.report.finding(format!(
        "full DHCP: leases on disk (warm-up clients included): bootplane {} while running (0.6 s after the load; SQLite, each binding committed durably before its ACK) and {} after it stopped, Kea {} (memfile, appended per lease), dnsmasq {} (lease file, rewritten on every change); dnsmasq runs with no-ping and quiet-dhcp (no ICMP probe before an offer, no log line per packet), its best case",
        ours_running.map_or("?".into(), |n| fmt_count(n as f64)),
        ours_stopped.map_or("?".into(), |n| fmt_count(n as f64)),
        kea_persisted.map_or("?".into(), |n| fmt_count(n as f64)),
        theirs_persisted.map_or("?".into(), |n| fmt_count(n as f64)),
    ));
    if theirs.fill.naks > 0 {
        ctx.report.finding(format!(
            "full DHCP: dnsmasq NAKed {} REQUESTs of the lease fill: its own behaviour, not the generator's (which REQUESTs the address offered, from the server that offered it, as firmware does). dnsmasq picks a client's first address from a hash of its MAC (consecutive MACs, as a vendor ships them, hash to consecutive addresses), walks +1 past leased ones, and with no-ping keeps no record of what it has offered: clients whose hashed address is taken all walk to the same free address, are all offered it, and all but the first REQUEST are NAKed 'address in use' and start over. Kea and bootplane reserve nothing on an offer either, but move their allocation cursor on",
            fmt_count(theirs.fill.naks as f64)
        ));
    }
    if ours_running.is_some_and(|n| n < macs) {
        ctx.report.finding(format!(
            "full DHCP: bootplane had persisted only {} of {} leases 0.6 s after the lease fill ended: a crash then would lose them",
            ours_running.map_or("?".into(), |n| fmt_count(n as f64)),
            fmt_count(macs as f64)
        ));
    }
    for (who, pair) in [
        ("bootplane", &ours),
        ("Kea", &kea_pair),
        ("dnsmasq", &theirs),
    ] {
        for (what, r) in [
            ("lease fill", &pair.fill),
            ("leased DISCOVER", &pair.leased),
        ] {
            if r.answered() < MIN_ANSWERED {
                let text = format!(
                    "full DHCP {what}: {who} finished only {:.1}% ({})",
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
    if ours.leased.moved > 0 {
        ctx.report.problem(format!(
            "full DHCP: bootplane offered {} leased clients another address than their lease",
            ours.leased.moved
        ));
    }
    let (ours_storm, ours_storm_usage) = &storms[0];
    if !ours_storm.finished() || ours_storm.duplicates > 0 || ours_storm.wrong > 0 {
        ctx.report.problem(format!(
            "full DHCP storm: bootplane {}",
            ours_storm.outcome()
        ));
    }
    let rate_peak = searches[0].peak_kib;
    ctx.usage.push(("full DHCP", ours_usage));
    ctx.usage.push(("full DHCP storm", *ours_storm_usage));
    ctx.usage.push((
        "full DHCP rate search",
        crate::memory::Usage {
            idle_kib: 0,
            peak_kib: rate_peak,
            cpu_secs: 0.0,
        },
    ));
    Ok(())
}

/// Leases in the appliance's database (read after the load, while it runs: SQLite WAL).
async fn count_leases(data: &std::path::Path) -> Option<usize> {
    let db = bootplane::db::Db::open(data).await.ok()?;
    db.load_leases().await.ok().map(|rows| rows.len())
}

fn rows(
    ctx: &mut Ctx,
    [ours, kea, theirs, ceiling]: [&Pair; 4],
    ours_usage: Usage,
    kea_usage: Usage,
) {
    let in_flight = ctx.params.in_flight;
    let report = &mut ctx.report;
    for (label, pick, target) in [
        (
            format!(
                "full DHCP lease fill (DISCOVER-OFFER-REQUEST-ACK, {} new clients, {in_flight} in flight)",
                fmt_count(ours.fill.started as f64)
            ),
            (|p: &Pair| &p.fill) as fn(&Pair) -> &FlowResult,
            FILL_TARGET,
        ),
        (
            format!("full DHCP DISCOVER from leased clients, {in_flight} in flight"),
            (|p: &Pair| &p.leased) as fn(&Pair) -> &FlowResult,
            LEASED_TARGET,
        ),
    ] {
        let (a, k, d, c) = (pick(ours), pick(kea), pick(theirs), pick(ceiling));
        dhcp_load::flow_rows(
            report,
            &label,
            "transactions/s",
            [a, k, c],
            "Kea",
            Some(("dnsmasq", d)),
        );
        if let (Some(ceil), Some(theirs)) = (c.per_sec(), d.per_sec()) {
            if ceil < target * theirs {
                report.finding(format!(
                    "{label}: the load generator's own ceiling here is {:.1}× dnsmasq's rate, below the {target}× target, so this table cannot show that target on this machine",
                    ceil / theirs
                ));
            }
        }
        report.target(
            format!("{label} ≥ {target}× dnsmasq"),
            Verdict::from_check(a.per_sec().zip(d.per_sec()).map(|(a, d)| a >= target * d)),
            format!("ratio {}", fmt_ratio(a.per_sec(), d.per_sec())),
        );
    }
    crate::report::usage_rows(report, "full DHCP", ours_usage, Some(("Kea", kea_usage)));
}

/// The DHCP storm: time until every client holds a lease, bootplane beside Kea (dnsmasq in
/// the notes), and the ≥ 2× Kea target.
fn storm_rows(ctx: &mut Ctx, storms: &[(Storm, Usage)]) {
    let [(ours, ours_usage), (kea, kea_usage), (dnsmasq, dnsmasq_usage)] = storms else {
        return;
    };
    let time = |s: &Storm| {
        if s.finished() {
            format!("{:.2} s", s.elapsed.as_secs_f64())
        } else {
            format!("not finished after {:.0} s", s.elapsed.as_secs_f64())
        }
    };
    let secs = |s: &Storm| s.finished().then_some(s.elapsed.as_secs_f64());
    let ratio = secs(kea).zip(secs(ours)).map(|(k, o)| k / o);
    let label = format!(
        "full DHCP storm: {} new clients at once, RFC 2131 back-off, until all hold a lease",
        fmt_count(ours.clients as f64)
    );
    let pct = |s: &Storm, p: f64| fmt_latency(s.per_client.clone().percentile(p));
    let notes = format!(
        "bootplane {} (per client p50 {}, p99 {}, {:.2} CPU s); Kea {} (p50 {}, p99 {}, {:.2} CPU s); dnsmasq {}: {} ({:.2} CPU s); a client whose message went unanswered retransmits after 4 s ±1, then 8, 16 … s",
        ours.outcome(),
        pct(ours, 50.0),
        pct(ours, 99.0),
        ours_usage.cpu_secs,
        kea.outcome(),
        pct(kea, 50.0),
        pct(kea, 99.0),
        kea_usage.cpu_secs,
        time(dnsmasq),
        dnsmasq.outcome(),
        dnsmasq_usage.cpu_secs,
    );
    for (who, s) in [("bootplane", ours), ("Kea", kea), ("dnsmasq", dnsmasq)] {
        if !s.lost.is_empty() {
            ctx.report.finding(format!(
                "{label}: lost during {who}'s storm: {}",
                s.lost.join(", ")
            ));
        }
    }
    let rmem = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    ctx.report.finding(format!(
        "{label}: bootplane asks the kernel for a 16 MiB receive buffer per DHCP socket and, while 4,096 ACKs wait for their commit, leaves the rest of a burst there; Kea and dnsmasq have no setting for theirs and run with the system default (net.core.rmem_default = {}), and Kea drops what overflows its own packet queue, so what a burst overflows waits for its client's retransmission 4 s later: much of the ratio is that design choice",
        rmem.map_or("?".into(), |b| format!("{} KiB", b / 1024))
    ));
    ctx.report.row(
        Row::new(format!("{label}: time"), time(ours))
            .reference(
                format!("Kea {}", time(kea)),
                ratio.map_or("n/a".into(), |r| format!("{r:.2}×")),
            )
            .notes(notes),
    );
    ctx.report.target(
        format!("{label}: ≥ {STORM_TARGET}× faster than Kea"),
        Verdict::from_check(ratio.map(|r| r >= STORM_TARGET)),
        format!(
            "ratio {}",
            ratio.map_or("n/a".into(), |r| format!("{r:.2}×"))
        ),
    );
}

/// The sustained DORA rate by ISC's criterion, bootplane beside Kea.
fn rate_rows(ctx: &mut Ctx, searches: &[RateRun]) {
    let [ours, kea, ceiling] = searches else {
        return;
    };
    let label = format!(
        "full DHCP sustained DORA rate (open loop, {} clients taking turns, ≤ 2.5% of exchanges missing 1 s)",
        fmt_count(ctx.params.macs as f64)
    );
    rate_row(
        &mut ctx.report,
        &label,
        &ours.search,
        ("Kea", &kea.search),
        &ceiling.search,
        RATE_TARGET,
    );
    ctx.report.finding(format!(
        "{label}: as in ISC's method, the clients take turns, so past the first {} exchanges of a step a DORA renews a lease its client got moments before: both servers hand such a lease back unwritten (Kea's cache-threshold, bootplane's lease caching), and bootplane logs such a repeated sighting once per 5 s; the lease fill above measures new leases",
        fmt_count(ctx.params.macs as f64)
    ));
}

/// A sustained-rate row and its target (≥ `target`× the reference).
pub fn rate_row(
    report: &mut crate::report::Report,
    label: &str,
    ours: &Search,
    (name, theirs): (&str, &Search),
    ceiling: &Search,
    target: f64,
) {
    let ratio = ours.rate().zip(theirs.rate()).map(|(a, b)| a / b);
    let p99 = |s: &Search| {
        s.best.as_ref().map_or("n/a".into(), |b| {
            fmt_latency(b.latencies().percentile(99.0))
        })
    };
    report.row(
        Row::new(format!("{label}: exchanges started/s"), ours.summary())
            .reference(format!("{name} {}", theirs.summary()), ratio.map_or("n/a".into(), |r| format!("{r:.2}×")))
            .notes(format!(
                "the load generator's own ceiling (trivial responder) {}; reply p99 at the rate that passed: bootplane {}, {name} {}; steps: bootplane {}; {name} {}",
                ceiling.summary(),
                p99(ours),
                p99(theirs),
                ours.trail(),
                theirs.trail()
            )),
    );
    // A generator-limited search shows only a lower bound: met if even that is enough. The
    // target cannot be shown either when the generator's own ceiling is under it.
    let beyond_reach = ceiling
        .rate()
        .zip(theirs.rate())
        .is_some_and(|(c, t)| c < target * t);
    let verdict = match ratio {
        Some(r) if r >= target => Verdict::Met,
        Some(_) if ours.generator_limited => Verdict::NotMeasured,
        Some(_) if beyond_reach && ours.rate() >= ceiling.rate().map(|c| 0.9 * c) => {
            Verdict::NotMeasured
        }
        Some(_) => Verdict::Missed,
        None => Verdict::NotMeasured,
    };
    if beyond_reach {
        report.finding(format!(
            "{label}: the load generator's own ceiling here ({}) is under {target}× {name}'s rate, so this machine cannot show that target",
            ceiling.summary()
        ));
    }
    report.target(
        format!("{label} ≥ {target}× {name}"),
        verdict,
        format!(
            "ratio {}",
            ratio.map_or("n/a".into(), |r| format!("{r:.2}×"))
        ),
    );
}
