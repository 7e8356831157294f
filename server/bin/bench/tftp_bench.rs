//! Scenario: TFTP. The iPXE binary to parallel clients, and one large file to a single client
//! in lock-step and with windowsize (RFC 7440); bootplane beside dnsmasq and tftpd-hpa serving
//! the same directory, driven by the same client, every byte verified.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::memory::{Meter, Usage};
use crate::netns::{CLIENT_IP, SERVER_IP};
use crate::report::{Row, Verdict};
use crate::servers::{Appliance, DhcpMode, Reference};
use crate::stats::{fmt_latency, fmt_ratio};
use crate::tftp_client::{self, Options, TftpLoad};
use crate::{Ctx, BIG_TFTP_FILE};

const PARALLEL_TARGET: f64 = 1.0;
const WINDOW_TARGET: f64 = 2.0;
/// Block size asked for: a 1500-byte Ethernet frame less IP, UDP and TFTP headers.
const BLKSIZE: u16 = 1468;
const WINDOWSIZE: u16 = 16;

/// The three loads against one server.
struct Loads {
    parallel: TftpLoad,
    lockstep: TftpLoad,
    windowed: TftpLoad,
}

async fn drive(ctx: &Ctx) -> Loads {
    let p = &ctx.params;
    let lockstep = Options {
        blksize: BLKSIZE,
        windowsize: None,
    };
    // Each parallel client from an address of its own, as machines are: bootplane serves at
    // most 8 transfers at once to one address.
    let parallel = tftp_client::parallel(
        SERVER_IP,
        &parallel_clients(p.tftp_clients),
        "ipxe.efi",
        lockstep,
        ctx.files.ipxe_efi.clone(),
        p.tftp_clients,
        p.tftp_each,
    )
    .await;
    let single = |opts| {
        tftp_client::parallel(
            SERVER_IP,
            &[CLIENT_IP],
            BIG_TFTP_FILE,
            opts,
            ctx.files.big_tftp.clone(),
            1,
            1,
        )
    };
    let lockstep_big = single(lockstep).await;
    let windowed = single(Options {
        blksize: BLKSIZE,
        windowsize: Some(WINDOWSIZE),
    })
    .await;
    Loads {
        parallel,
        lockstep: lockstep_big,
        windowed,
    }
}

/// The parallel clients' addresses (10.99.1.1 on, outside the storm's and the pool's ranges).
fn parallel_clients(n: usize) -> Vec<Ipv4Addr> {
    (0..n.clamp(1, 250))
        .map(|i| Ipv4Addr::new(10, 99, 1, 1 + i as u8))
        .collect()
}

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    ctx.names
        .add_client_addresses(&parallel_clients(ctx.params.tftp_clients))?;
    let dir = ctx.scratch.join("tftp");
    eprintln!("TFTP: bootplane");
    let setup = ctx.small_appliance(&dir, DhcpMode::Off);
    let mut bootplane = Appliance::start(&ctx.binary, &ctx.names, &setup).await?;
    let meter = Meter::start(bootplane.pid(), ctx.params.settle).await?;
    let mark = meter.mark();
    let ours = drive(ctx).await;
    let ours_usage = meter.since(mark);
    bootplane.check_alive()?;
    ctx.stop_appliance(bootplane, "TFTP").await;

    eprintln!("TFTP: dnsmasq");
    let lines = vec![
        "enable-tftp".into(),
        format!("tftp-root={}", ctx.files.tftp_root.display()),
        "quiet-tftp".into(),
        "tftp-max=1000".into(),
    ];
    let mut dnsmasq = Reference::dnsmasq(&ctx.names, &dir.join("dnsmasq"), &lines).await?;
    let meter = Meter::start(dnsmasq.pid(), ctx.params.settle).await?;
    let mark = meter.mark();
    let dnsmasq_loads = drive(ctx).await;
    let dnsmasq_usage = meter.since(mark);
    dnsmasq.check_alive()?;
    dnsmasq.stop();

    eprintln!("TFTP: tftpd-hpa");
    let mut tftpd = Reference::tftpd(&ctx.names, &dir.join("tftpd"), &ctx.files.tftp_root).await?;
    let meter = Meter::start(tftpd.pid(), ctx.params.settle).await?;
    let mark = meter.mark();
    let tftpd_loads = drive(ctx).await;
    let tftpd_usage = meter.since(mark);
    tftpd.check_alive()?;
    tftpd.stop();

    rows(ctx, &ours, &dnsmasq_loads, &tftpd_loads);
    for (who, loads) in [
        ("bootplane", &ours),
        ("dnsmasq", &dnsmasq_loads),
        ("tftpd-hpa", &tftpd_loads),
    ] {
        for load in [&loads.parallel, &loads.lockstep, &loads.windowed] {
            if let Some(first) = load.failures.first() {
                ctx.report.problem(format!(
                    "TFTP {who}: {} of {} transfers failed; first: {first}",
                    load.failures.len(),
                    load.transfers
                ));
            }
        }
    }
    crate::report::usage_rows(
        &mut ctx.report,
        "TFTP",
        ours_usage,
        Some(("dnsmasq", dnsmasq_usage)),
    );
    usage_note(ctx, tftpd_usage);
    ctx.usage.push(("TFTP", ours_usage));
    Ok(())
}

fn usage_note(ctx: &mut Ctx, tftpd: Usage) {
    ctx.report.row(
        Row::new("TFTP: tftpd-hpa RSS idle / peak, CPU s", "—").reference(
            format!(
                "{:.1} / {:.1} MiB, {:.2} s",
                tftpd.idle_kib as f64 / 1024.0,
                tftpd.peak_kib as f64 / 1024.0,
                tftpd.cpu_secs
            ),
            "—",
        ).notes("tftpd-hpa forks a process per transfer: RSS summed over the listener and its children, CPU includes the reaped children"),
    );
}

fn mbs(l: &TftpLoad) -> String {
    l.mb_per_sec()
        .map_or("n/a".into(), |v| format!("{v:.1} MB/s"))
}

fn granted(l: &TftpLoad) -> String {
    l.granted
        .map_or("?".into(), |(b, w)| format!("blksize {b}, windowsize {w}"))
}

fn rows(ctx: &mut Ctx, ours: &Loads, dnsmasq: &Loads, tftpd: &Loads) {
    let p = &ctx.params;
    let big_mb = ctx.files.big_tftp.len() as f64 / 1e6;
    let labels = [
        format!(
            "TFTP ipxe.efi ({:.0} KB), {} parallel clients × {} each, lock-step",
            ctx.files.ipxe_efi.len() as f64 / 1e3,
            p.tftp_clients,
            p.tftp_each
        ),
        format!("TFTP {big_mb:.0} MB file, one client, lock-step (no windowsize)"),
        format!("TFTP {big_mb:.0} MB file, one client, windowsize {WINDOWSIZE} asked"),
    ];
    let sets = [
        (&ours.parallel, &dnsmasq.parallel, &tftpd.parallel),
        (&ours.lockstep, &dnsmasq.lockstep, &tftpd.lockstep),
        (&ours.windowed, &dnsmasq.windowed, &tftpd.windowed),
    ];
    let report = &mut ctx.report;
    for (label, (a, b, c)) in labels.iter().zip(sets) {
        let (mut al, mut bl) = (a.per_transfer.clone(), b.per_transfer.clone());
        report.row(
            Row::new(format!("{label}: throughput"), mbs(a))
                .reference(format!("dnsmasq {}", mbs(b)), fmt_ratio(a.mb_per_sec(), b.mb_per_sec()))
                .notes(format!(
                    "tftpd-hpa {} ({} vs bootplane); granted: bootplane {}, dnsmasq {}, tftpd-hpa {}; verified bootplane {}/{}, dnsmasq {}/{}, tftpd-hpa {}/{}; per transfer p50/p99 bootplane {} / {}, dnsmasq {} / {}; retransmission nudges bootplane {}, dnsmasq {}; client CPU {:.2} s",
                    mbs(c),
                    fmt_ratio(a.mb_per_sec(), c.mb_per_sec()),
                    granted(a),
                    granted(b),
                    granted(c),
                    a.verified,
                    a.transfers,
                    b.verified,
                    b.transfers,
                    c.verified,
                    c.transfers,
                    fmt_latency(al.percentile(50.0)),
                    fmt_latency(al.percentile(99.0)),
                    fmt_latency(bl.percentile(50.0)),
                    fmt_latency(bl.percentile(99.0)),
                    a.retries,
                    b.retries,
                    a.client_cpu_secs,
                )),
        );
    }
    let ratio = |a: &TftpLoad, b: &TftpLoad| a.mb_per_sec().zip(b.mb_per_sec()).map(|(a, b)| a / b);
    let parallel = ratio(&ours.parallel, &dnsmasq.parallel);
    report.target(
        format!("TFTP parallel ≥ {PARALLEL_TARGET}× dnsmasq"),
        Verdict::from_check(parallel.map(|r| r >= PARALLEL_TARGET)),
        format!(
            "ratio {}",
            parallel.map_or("n/a".into(), |r| format!("{r:.2}×"))
        ),
    );
    let windowed = ratio(&ours.windowed, &dnsmasq.windowed);
    report.target(
        format!("TFTP one client ≥ {WINDOW_TARGET}× dnsmasq thanks to windowsize"),
        Verdict::from_check(windowed.map(|r| r >= WINDOW_TARGET)),
        format!(
            "ratio {} (dnsmasq does not grant windowsize: {})",
            windowed.map_or("n/a".into(), |r| format!("{r:.2}×")),
            granted(&dnsmasq.windowed)
        ),
    );
}
