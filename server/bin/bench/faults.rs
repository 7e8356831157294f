//! Scenario: faults (`--only faults`; `scripts/faults` runs it with the firmware boots under
//! loss, delay and reordering). The boot storm of [`storm`] where things go wrong, with
//! machines that do what firmware does when a boot fails: start again from DHCP (up to
//! [`BOOTS`] boots each).
//!
//! - **Loss.** nftables drops [`LOSS_PERMILLE`]‰ of the frames arriving at each end of the
//!   veth at random, so each direction loses that share (the kernel here has no netem;
//!   `numgen random` at the ingress hook is the same Bernoulli loss, unseen by the sender). Every machine must finish; the figures are the time and every
//!   retransmission: the clients' DHCP packets beyond the two a clean exchange takes, their
//!   TFTP retries, the server's TFTP packets sent again (its `/metrics`), and the TCP segments
//!   both kernels sent again.
//! - **Restart.** The appliance gets SIGTERM when half the machines are downloading their
//!   kernel, must stop cleanly, and is started again on the same data directory. Beside the
//!   storm, unassigned clients take pool leases before the stop and while it is down. Every
//!   machine must finish; no address may be ACKed to two MACs; every lease ACKed must still be
//!   held after the restart, by the appliance's own word (a new DORA of that client gets the
//!   same address) and in its database.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::dhcp_load::client_mac;
use crate::report::{Row, Verdict};
use crate::servers::Appliance;
use crate::storm::{self, DhcpHub, Plan, StormResult, Tally};
use crate::{mac_text, Ctx};

/// Packets dropped per thousand, in each direction.
const LOSS_PERMILLE: u32 = 50;
/// Boots a machine may take before it counts as failed.
const BOOTS: u32 = 3;
/// Unassigned clients' MACs start here (apart from the storm's and the DHCP loads').
const POOL_MAC_BASE: usize = 0x70_0000;
/// The nftables table the loss lives in.
const LOSS_TABLE: &str = "bootplane_bench_loss";
/// How long the restart waits for half the machines to reach their kernel.
const TRIGGER_LIMIT: Duration = Duration::from_secs(120);

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let n = ctx.params.fault_machines;
    let all = storm::machines(n);
    ctx.names
        .add_client_addresses(&all.iter().map(|m| m.1).collect::<Vec<_>>())?;
    loss(ctx, &all).await?;
    restart(ctx, &all).await?;
    Ok(())
}

/// The storm under random loss.
async fn loss(ctx: &mut Ctx, machines: &[(String, Ipv4Addr)]) -> Result<()> {
    let n = machines.len();
    let pct = f64::from(LOSS_PERMILLE) / 10.0;
    eprintln!("faults: boot storm of {n} machines under {pct}% loss each way");
    let setup = storm::appliance_setup(ctx, &ctx.scratch.join("faults-loss"), machines);
    let bootplane = Appliance::start(&ctx.binary, &ctx.names, &setup).await?;
    let server_tcp = TcpRetrans::of(&format!("/proc/{}/net/snmp", bootplane.pid()));
    let client_tcp = TcpRetrans::of("/proc/self/net/snmp");
    let resent_before = tftp_resent(&bootplane).await;
    let tally = Arc::new(Tally::default());
    let result = {
        let loss = Loss::install(&ctx.names, LOSS_PERMILLE)?;
        let result = storm::storm(
            Arc::new(Plan::bootplane(ctx, BOOTS)),
            machines,
            tally.clone(),
        )
        .await?;
        let dropped = loss.dropped();
        (result, dropped)
    };
    let (result, dropped) = result;
    let resent = tftp_resent(&bootplane)
        .await
        .zip(resent_before)
        .map(|(a, b)| a.saturating_sub(b));
    let server_tcp = server_tcp.since();
    let client_tcp = client_tcp.since();
    ctx.stop_appliance(bootplane, "faults: loss").await;

    let label = format!("boot storm under {pct}% loss each way, N = {n}");
    let dhcp_sends = tally.dhcp_sends.load(Ordering::Relaxed);
    let show = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
    ctx.report.row(
        Row::new(
            format!("{label}: machines finished, time"),
            format!("{}/{n} in {:.2} s", result.done, result.wall.as_secs_f64()),
        )
        .notes(format!(
            "packets dropped: {} to the machines, {} from them; DHCP packets sent {dhcp_sends} \
             ({} beyond the 2 per machine of clean exchanges); TFTP retries by the machines {}; \
             TFTP packets the appliance sent again {}; TCP segments sent again: appliance {}, \
             machines {}; boots started again {}",
            show(dropped.map(|d| d.0)),
            show(dropped.map(|d| d.1)),
            dhcp_sends.saturating_sub(2 * n as u64),
            tally.tftp_retries.load(Ordering::Relaxed),
            show(resent),
            show(server_tcp),
            show(client_tcp),
            tally.reboots.load(Ordering::Relaxed),
        )),
    );
    ctx.report.target(
        format!("{label}: every machine finishes"),
        Verdict::from_check(Some(result.done == n)),
        format!("{}/{n}", result.done),
    );
    if dropped.is_some_and(|(a, b)| a + b == 0) {
        ctx.report.problem(format!(
            "{label}: no packet was dropped: the loss was not in place"
        ));
    }
    failures(ctx, &label, &result);
    Ok(())
}

/// The storm through a SIGTERM and a start on the same data directory.
async fn restart(ctx: &mut Ctx, machines: &[(String, Ipv4Addr)]) -> Result<()> {
    let n = machines.len();
    let pool = ctx.params.fault_pool_clients;
    eprintln!("faults: boot storm of {n} machines and {pool} pool clients through a restart");
    let setup = storm::appliance_setup(ctx, &ctx.scratch.join("faults-restart"), machines);
    let mut bootplane = Appliance::start(&ctx.binary, &ctx.names, &setup).await?;
    let tally = Arc::new(Tally::default());
    let plan = Arc::new(Plan::bootplane(ctx, BOOTS));
    let storm_task = {
        let (plan, machines, tally) = (plan.clone(), machines.to_vec(), tally.clone());
        tokio::spawn(async move { storm::storm(plan, &machines, tally).await })
    };
    // The pool clients' own hub (their replies are told apart by xid, like the storm's).
    let hub = DhcpHub::start(&ctx.names.client_if, Arc::new(Tally::default()))?;
    let acks: Arc<Mutex<Vec<(usize, Ipv4Addr)>>> = Arc::default();
    let first = pool / 2;
    let mut clients = spawn_pool(&hub, 0..first, &acks);

    let waited = Instant::now();
    while tally.downloading.load(Ordering::Relaxed) < n.div_ceil(2) {
        if waited.elapsed() > TRIGGER_LIMIT || storm_task.is_finished() {
            bail!("the restart storm never had half its machines downloading");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let term = Instant::now();
    let in_flight = n - tally.downloading.load(Ordering::Relaxed).min(n);
    let stopped = tokio::task::block_in_place(|| bootplane.stop());
    let stop_took = term.elapsed();
    drop(bootplane);
    clients.extend(spawn_pool(&hub, first..pool, &acks));
    let bootplane =
        Appliance::launch(&ctx.binary, &ctx.names, &setup, "bootplane-again.log").await?;
    let down = term.elapsed();
    let result = storm_task.await.context("the storm task")??;
    for c in clients {
        let _ = c.await;
    }

    // Every lease ACKed, by the clients' record: no address to two MACs.
    let acked = acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut holders: BTreeMap<Ipv4Addr, Vec<usize>> = BTreeMap::new();
    for (index, ip) in &acked {
        let list = holders.entry(*ip).or_default();
        if !list.contains(index) {
            list.push(*index);
        }
    }
    let doubled: Vec<String> = holders
        .iter()
        .filter(|(_, who)| who.len() > 1)
        .map(|(ip, who)| {
            let macs: Vec<String> = who
                .iter()
                .map(|i| mac_text(client_mac(POOL_MAC_BASE + i)))
                .collect();
            format!("{ip} to {}", macs.join(" and "))
        })
        .collect();
    let last: HashMap<usize, Ipv4Addr> = acked.iter().copied().collect();
    // Each one asked again: the appliance must offer and ACK the address it ACKed before.
    let mut moved = Vec::new();
    for (&index, &ip) in &last {
        match hub.dora(POOL_MAC_BASE + index).await {
            Ok(again) if again == ip => {}
            Ok(again) => moved.push(format!(
                "{} held {ip}, was given {again}",
                mac_text(client_mac(POOL_MAC_BASE + index))
            )),
            Err(e) => moved.push(format!(
                "{} held {ip}, asked again: {e:#}",
                mac_text(client_mac(POOL_MAC_BASE + index))
            )),
        }
    }
    hub.stop();
    // And in the database.
    let stored = stored_leases(&setup.root.join("data")).await;
    let mut missing = Vec::new();
    if let Some(stored) = &stored {
        for (&index, &ip) in &last {
            let mac = mac_text(client_mac(POOL_MAC_BASE + index));
            if stored.get(&mac) != Some(&ip) {
                missing.push(format!("{mac} {ip} (stored: {:?})", stored.get(&mac)));
            }
        }
        let mut seen: HashMap<Ipv4Addr, &str> = HashMap::new();
        for (mac, ip) in stored {
            if let Some(other) = seen.insert(*ip, mac) {
                missing.push(format!("{ip} stored for {other} and {mac}"));
            }
        }
    }
    ctx.stop_appliance(bootplane, "faults: restart").await;

    let label = format!(
        "boot storm through a restart (SIGTERM when half the machines are downloading), N = {n}"
    );
    ctx.report.row(
        Row::new(
            format!("{label}: machines finished, time"),
            format!("{}/{n} in {:.2} s", result.done, result.wall.as_secs_f64()),
        )
        .notes(format!(
            "SIGTERM with {in_flight} machines not yet downloading; the stop took {:.2} s, serving again after {:.2} s; boots started again {}; DHCP packets sent {} by the machines; {pool} pool clients, {} leases ACKed, {} distinct, each asked again after the restart",
            stop_took.as_secs_f64(),
            down.as_secs_f64(),
            tally.reboots.load(Ordering::Relaxed),
            tally.dhcp_sends.load(Ordering::Relaxed),
            acked.len(),
            last.len(),
        )),
    );
    ctx.report.target(
        format!("{label}: every machine finishes"),
        Verdict::from_check(Some(result.done == n)),
        format!("{}/{n}", result.done),
    );
    ctx.report.target(
        format!("{label}: the appliance stops cleanly on SIGTERM"),
        Verdict::from_check(Some(stopped.is_ok())),
        format!("{:.2} s", stop_took.as_secs_f64()),
    );
    ctx.report.target(
        format!("{label}: no address ACKed to two MACs"),
        Verdict::from_check(Some(doubled.is_empty())),
        format!("{} addresses, {} doubled", holders.len(), doubled.len()),
    );
    ctx.report.target(
        format!("{label}: every ACKed lease still held after the restart"),
        Verdict::from_check(
            stored
                .as_ref()
                .map(|_| moved.is_empty() && missing.is_empty()),
        ),
        format!(
            "{} leases: {} answered otherwise, {} not so in the database",
            last.len(),
            moved.len(),
            missing.len()
        ),
    );
    if let Err(e) = stopped {
        ctx.report.problem(format!("{label}: SIGTERM: {e:#}"));
    }
    if last.len() < pool {
        ctx.report.problem(format!(
            "{label}: only {} of {pool} pool clients got a lease",
            last.len()
        ));
    }
    for what in doubled.iter().chain(&moved).chain(&missing).take(5) {
        ctx.report.problem(format!("{label}: {what}"));
    }
    if stored.is_none() {
        ctx.report
            .problem(format!("{label}: could not read the appliance's leases"));
    }
    failures(ctx, &label, &result);
    Ok(())
}

/// Pool clients `range` each take a lease (DORA with retransmission), one every 20 ms.
fn spawn_pool(
    hub: &DhcpHub,
    range: std::ops::Range<usize>,
    acks: &Arc<Mutex<Vec<(usize, Ipv4Addr)>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    range
        .enumerate()
        .map(|(k, index)| {
            let (hub, acks) = (hub.clone(), acks.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * k as u64)).await;
                if let Ok(ip) = hub.dora(POOL_MAC_BASE + index).await {
                    acks.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((index, ip));
                }
            })
        })
        .collect()
}

fn failures(ctx: &mut Ctx, label: &str, result: &StormResult) {
    if let Some(first) = result.failures.first() {
        ctx.report.problem(format!(
            "{label}: {} machines failed; first: {first}",
            result.failures.len()
        ));
    }
}

/// The leases in the appliance's database: MAC text → address.
async fn stored_leases(data: &Path) -> Option<HashMap<String, Ipv4Addr>> {
    let db = bootplane::db::Db::open(data).await.ok()?;
    let rows = db.load_leases().await.ok()?;
    Some(
        rows.into_iter()
            .map(|r| (r.mac.to_string(), r.ip))
            .collect(),
    )
}

/// The appliance's count of TFTP packets sent again.
async fn tftp_resent(bootplane: &Appliance) -> Option<u64> {
    let lines = bootplane.metrics(&["tftp_resent_packets"]).await.ok()?;
    lines
        .iter()
        .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// TCP segments a network namespace's kernel sent again (`RetransSegs` in `/proc/.../snmp`),
/// counted from when this was made.
struct TcpRetrans {
    path: String,
    before: Option<u64>,
}

impl TcpRetrans {
    fn of(path: &str) -> Self {
        TcpRetrans {
            path: path.to_string(),
            before: retrans_segs(path),
        }
    }

    fn since(&self) -> Option<u64> {
        Some(retrans_segs(&self.path)?.saturating_sub(self.before?))
    }
}

fn retrans_segs(path: &str) -> Option<u64> {
    parse_retrans_segs(&std::fs::read_to_string(path).ok()?)
}

/// `RetransSegs` from the two `Tcp:` lines (names, then values) of `/proc/net/snmp`.
fn parse_retrans_segs(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "RetransSegs")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Random loss on the veth pair, both ways, removed when dropped: each namespace drops a share
/// of what arrives on its end (the `netdev` ingress hook, so a sender never learns of it, as on
/// a wire; the server's end drops what the machines send, the client's what they receive).
struct Loss {
    server: Vec<std::ffi::OsString>,
}

impl Loss {
    fn install(names: &crate::netns::Names, permille: u32) -> Result<Self> {
        let script = |dev: &str| {
            format!(
                "table netdev {LOSS_TABLE} {{\n  chain ingress {{ type filter hook ingress device \"{dev}\" priority 0; policy accept; numgen random mod 1000 < {permille} counter drop; }}\n}}\n"
            )
        };
        let server = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            names.server_ns.clone().into(),
        ];
        let context = "installing the packet loss with nftables (Debian package nftables; the kernel needs nf_tables)";
        nft(&[], &["-f", "-"], Some(&script(&names.client_if))).context(context)?;
        let loss = Loss { server };
        nft(&loss.server, &["-f", "-"], Some(&script(&names.server_if))).context(context)?;
        Ok(loss)
    }

    /// Packets dropped so far: (on their way to the machines, on their way from them).
    fn dropped(&self) -> Option<(u64, u64)> {
        let count = |prefix: &[std::ffi::OsString]| {
            nft(prefix, &["list", "table", "netdev", LOSS_TABLE], None)
                .ok()
                .and_then(|text| parse_drops(&text))
        };
        Some((count(&[])?, count(&self.server)?))
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        for prefix in [&[][..], &self.server[..]] {
            let _ = nft(prefix, &["delete", "table", "netdev", LOSS_TABLE], None);
        }
    }
}

/// The packet count of the (one) counting rule in an `nft list table` listing.
fn parse_drops(listing: &str) -> Option<u64> {
    listing.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.windows(2).position(|w| w == ["counter", "packets"])?;
        words.get(at + 2)?.parse().ok()
    })
}

/// `nft ARGS`, after `prefix` (e.g. `ip netns exec NS`) when given; its output.
fn nft(prefix: &[std::ffi::OsString], args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let program = crate::servers::find_program("nft").context("nft not found")?;
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(&program);
            cmd
        }
        None => Command::new(&program),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or("").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmitted_segments_are_read_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin ActiveOpens RetransSegs InErrs\nTcp: 1 200 7 42 0\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(parse_retrans_segs(snmp), Some(42));
        assert_eq!(parse_retrans_segs("Tcp: A B\n"), None);
    }

    #[test]
    fn the_drop_count_is_read_from_the_listing() {
        let listing = "table netdev bootplane_bench_loss {\n\tchain ingress {\n\t\ttype filter hook ingress device \"bpc\" priority filter; policy accept;\n\t\tnumgen random mod 1000 < 50 counter packets 17 bytes 900 drop\n\t}\n}\n";
        assert_eq!(parse_drops(listing), Some(17));
        assert_eq!(parse_drops("table netdev x {\n}\n"), None);
    }
}
