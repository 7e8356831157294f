//! Scenario: proxyDHCP. DISCOVERs from distinct MACs with a window in flight, REQUESTs to the
//! boot-server port for the same MACs, then DISCOVERs one at a time from new MACs; the same
//! loads against a trivial responder give the load generator's ceiling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::dhcp_load::{
    build_packets, run_phase, EchoResponder, Exchange, LoadShape, Packet, PhaseResult,
};
use crate::memory::Phase;
use crate::report::{Report, Row, Verdict};
use crate::servers::Appliance;
use crate::stats::{fmt_count, fmt_latency, fmt_ratio};
use crate::sys::ProcSample;
use crate::Params;

/// Fewer answered DISCOVERs than this fraction is a problem (and fails a smoke run).
const MIN_ANSWERED: f64 = 0.95;
/// Above this share of the generator's ceiling, the generator may be what limited the rate.
const CLIENT_BOUND_SHARE: f64 = 0.8;

pub async fn run(params: &Params, bootplane: &Appliance, report: &mut Report) -> Result<Phase> {
    let discovers = Arc::new(build_packets(Exchange::Discover, 0..params.macs)?);
    let requests = Arc::new(build_packets(Exchange::Request, 0..params.macs)?);
    let serial_range = params.macs..params.macs + params.serial_macs;
    let serial = Arc::new(build_packets(Exchange::Discover, serial_range)?);
    let one_at_a_time = LoadShape {
        in_flight: 1,
        sockets: 1,
        ..params.shape
    };

    eprintln!("proxyDHCP: load generator ceiling");
    let (ceiling, ceiling_serial) = {
        let echo = EchoResponder::start(Exchange::Discover)?;
        let loaded = phase(echo.addr, Exchange::Discover, &discovers, params.shape).await?;
        let serial = phase(echo.addr, Exchange::Discover, &serial, one_at_a_time).await?;
        (loaded, serial)
    };

    let pid = bootplane.pid();
    let start = Instant::now();
    eprintln!("proxyDHCP: DISCOVER → OFFER");
    let before = ProcSample::read(pid)?;
    let mut offers = phase(
        bootplane.ports.dhcp,
        Exchange::Discover,
        &discovers,
        params.shape,
    )
    .await?;
    let after_offers = ProcSample::read(pid)?;
    eprintln!("proxyDHCP: REQUEST → ACK on the boot-server port");
    let mut acks = phase(
        bootplane.ports.pxe,
        Exchange::Request,
        &requests,
        params.shape,
    )
    .await?;
    let after_acks = ProcSample::read(pid)?;
    eprintln!("proxyDHCP: DISCOVER one at a time");
    let mut serial_offers = phase(
        bootplane.ports.dhcp,
        Exchange::Discover,
        &serial,
        one_at_a_time,
    )
    .await?;
    let end = Instant::now();

    offer_rows(
        params,
        report,
        &mut offers,
        ceiling,
        after_offers.cpu_secs - before.cpu_secs,
    );
    ack_rows(
        report,
        &mut acks,
        after_acks.cpu_secs - after_offers.cpu_secs,
    );
    serial_rows(report, &mut serial_offers, ceiling_serial);

    if offers.answered() < MIN_ANSWERED {
        report.problem(format!(
            "only {:.1}% of proxy DISCOVERs got a correct OFFER (at least {:.0}% needed)",
            offers.answered() * 100.0,
            MIN_ANSWERED * 100.0
        ));
    }
    Ok(Phase {
        name: "proxyDHCP load".into(),
        start,
        end,
    })
}

/// Runs one load phase off the async runtime (the generator has its own thread).
async fn phase(
    target: SocketAddr,
    exchange: Exchange,
    packets: &Arc<Vec<Packet>>,
    shape: LoadShape,
) -> Result<PhaseResult> {
    let packets = packets.clone();
    tokio::task::spawn_blocking(move || run_phase(target, exchange, packets, shape))
        .await
        .context("the DHCP load task failed")?
}

/// "9,990/10,000 answered, lost 10" and friends, only the non-zero ones.
fn outcome(r: &PhaseResult) -> String {
    let mut parts = vec![format!(
        "{}/{} answered",
        fmt_count(r.replies as f64),
        fmt_count((r.sent + r.skipped) as f64)
    )];
    for (name, n) in [
        ("lost", r.lost),
        ("wrong reply", r.bad),
        ("unmatched", r.unmatched),
        ("send errors", r.send_errors),
        ("not sent (no replies at all)", r.skipped),
    ] {
        if n > 0 {
            parts.push(format!("{name} {n}"));
        }
    }
    parts.join(", ")
}

fn rate(r: &PhaseResult) -> String {
    r.replies_per_sec().map_or("n/a".into(), fmt_count)
}

fn ratio_of(a: Option<Duration>, b: Option<Duration>) -> String {
    fmt_ratio(a.map(|d| d.as_secs_f64()), b.map(|d| d.as_secs_f64()))
}

fn latency_rows(
    report: &mut Report,
    label: &str,
    ours: &mut PhaseResult,
    theirs: &mut PhaseResult,
) {
    for (name, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
        let (a, b) = (ours.latencies.percentile(p), theirs.latencies.percentile(p));
        report.row(
            Row::new(format!("{label}: latency {name}"), fmt_latency(a))
                .reference(fmt_latency(b), ratio_of(a, b)),
        );
    }
}

fn offer_rows(
    params: &Params,
    report: &mut Report,
    offers: &mut PhaseResult,
    mut ceiling: PhaseResult,
    server_cpu: f64,
) {
    let label = format!("proxy DISCOVER→OFFER, {} in flight", params.shape.in_flight);
    let (ours, theirs) = (offers.replies_per_sec(), ceiling.replies_per_sec());
    report.row(
        Row::new(format!("{label}: replies/s"), rate(offers))
            .reference(rate(&ceiling), fmt_ratio(ours, theirs))
            .notes(format!(
                "reference: a trivial in-process responder, i.e. the load generator's ceiling; {}; CPU s: appliance {server_cpu:.2}, generator {:.2} (vs responder {:.2})",
                outcome(offers),
                offers.client_cpu_secs,
                ceiling.client_cpu_secs,
            )),
    );
    latency_rows(report, &label, offers, &mut ceiling);
    if let (Some(ours), Some(theirs)) = (ours, theirs) {
        report.finding(if ours >= CLIENT_BOUND_SHARE * theirs {
            format!(
                "proxyDHCP: the appliance reached {:.0}% of the load generator's ceiling, so the generator (one thread) may be what limited the rate",
                ours / theirs * 100.0
            )
        } else {
            format!(
                "proxyDHCP: the load generator can drive {:.1}× the rate the appliance answered, so the appliance was the limit",
                theirs / ours
            )
        });
    }
    let p99 = offers.latencies.percentile(99.0);
    report.target(
        format!(
            "proxyDHCP p99 under 1 ms at {} in flight",
            params.shape.in_flight
        ),
        Verdict::from_check(p99.map(|d| d < Duration::from_millis(1))),
        format!("p99 {}", fmt_latency(p99)),
    );
}

fn ack_rows(report: &mut Report, acks: &mut PhaseResult, server_cpu: f64) {
    let label = format!(
        "proxy REQUEST→ACK on port 4011, {} in flight",
        acks.in_flight
    );
    if acks.replies == 0 {
        report.row(Row::new(label, "n/a").notes(format!(
            "the boot-server port sent no ACK: {}",
            outcome(acks)
        )));
        return;
    }
    report.row(Row::new(format!("{label}: replies/s"), rate(acks)).notes(format!(
        "the same MACs, ciaddr 127.0.0.1, PXE boot item in option 43; {}; appliance {server_cpu:.2} CPU s",
        outcome(acks)
    )));
    report.row(Row::new(
        format!("{label}: latency p50 / p99 / max"),
        format!(
            "{} / {} / {}",
            fmt_latency(acks.latencies.percentile(50.0)),
            fmt_latency(acks.latencies.percentile(99.0)),
            fmt_latency(acks.latencies.max())
        ),
    ));
}

fn serial_rows(report: &mut Report, serial: &mut PhaseResult, mut ceiling: PhaseResult) {
    let label = "proxy DISCOVER→OFFER, 1 in flight";
    report.row(
        Row::new(format!("{label}: replies/s"), rate(serial))
            .reference(
                rate(&ceiling),
                fmt_ratio(serial.replies_per_sec(), ceiling.replies_per_sec()),
            )
            .notes(format!(
                "new MACs, no queueing: the appliance's own turnaround; {}",
                outcome(serial)
            )),
    );
    latency_rows(report, label, serial, &mut ceiling);
}
