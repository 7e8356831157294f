//! Scenario: a boot storm. N simulated machines start at once, each walking the whole chain
//! as firmware and iPXE do: full DHCP (DISCOVER → OFFER → REQUEST → ACK of its assigned
//! address), TFTP of the iPXE binary (blksize 1468, windowsize 4, as OVMF asks),
//! `/boot.ipxe`, its own script, the kernel and initramfs the script names, and its config.
//! Each machine's traffic comes from its leased address (the bench adds the addresses to the
//! client veth), so bootplane's default `/config` check (the requester must hold the machine's
//! lease) stays on. Every byte is verified.
//!
//! bootplane serves it all; the reference is dnsmasq (DHCP with the same static addresses, and
//! TFTP) beside nginx serving the same scripts and configs as static files. The time until the
//! last machine finishes is set against the time the bytes alone need at the measured link
//! rate.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder};
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Barrier};

use crate::dhcp_load::{client_mac, encode_request, first_request, server_id, Flow};
use crate::http_client::{download_verified_from, get_small_from};
use crate::memory::{Meter, Usage};
use crate::netns::SERVER_IP;
use crate::report::{Row, Verdict};
use crate::servers::{
    http_addr, Appliance, ApplianceSetup, DhcpMode, Reference, POOL_END, POOL_START,
};
use crate::stats::{fmt_kib, fmt_latency, fmt_ratio, Latencies};
use crate::tftp_client::{self, Options};
use crate::{mac_text, Ctx, TALOS_VERSION};

/// Storm machines' MACs start here (apart from the DHCP scenarios' clients).
const MAC_BASE: usize = 0x50_0000;
const BOUND_TARGET: f64 = 1.25;
/// Reference time over bootplane's.
const SPEED_TARGET: f64 = 1.1;
const RSS_TARGET_KIB: u64 = 64 * 1024;
/// A machine that has not finished by then has failed.
const MACHINE_LIMIT: Duration = Duration::from_secs(180);
/// DHCP retransmission, as firmware does (faster: the bench has no time to lose).
const DHCP_RETRY: Duration = Duration::from_secs(1);
const DHCP_TRIES: u32 = 8;
/// Between a failed boot and the next one.
const REBOOT_PAUSE: Duration = Duration::from_secs(1);
/// The TFTP `windowsize` every storm machine asks for with `blksize 1468`, as UEFI firmware
/// (OVMF) does; dnsmasq does not grant it, so its machines go block by block.
const OVMF_WINDOW: u16 = 4;

/// Raises the neighbour table's limits (net.ipv4.neigh.default.gc_thresh1-3, host-wide: the
/// table is shared by every network namespace) to hold `entries`, and puts them back when
/// dropped. Without it, a storm of a thousand machines overflows the table and their packets are
/// dropped ("neighbor table overflow" in the kernel log), a failure of the bench, not the servers.
struct NeighbourRoom {
    /// A process in the host's network namespace: the bench's outer process.
    host: u32,
    /// (sysctl key, value before).
    saved: Vec<(String, String)>,
}

impl NeighbourRoom {
    fn make(host: u32, entries: usize) -> Self {
        let mut saved = Vec::new();
        for (name, want) in [
            ("gc_thresh3", entries),
            ("gc_thresh2", entries / 2),
            ("gc_thresh1", entries / 4),
        ] {
            let key = format!("net.ipv4.neigh.default.{name}");
            let Some(old) = host_sysctl(host, &["-n", &key]) else {
                continue;
            };
            if old.parse::<usize>().is_ok_and(|v| v < want)
                && host_sysctl(host, &["-w", &format!("{key}={want}")]).is_some()
            {
                saved.push((key, old));
            }
        }
        NeighbourRoom { host, saved }
    }
}

/// `sysctl ARGS` in the network namespace of process `host` (this process runs in the bench's
/// client namespace, where the neighbour table's limits are not visible); its output, trimmed.
fn host_sysctl(host: u32, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("nsenter")
        .args(["--target", &host.to_string(), "--net", "sysctl"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Drop for NeighbourRoom {
    fn drop(&mut self) {
        // Lowered in the reverse order of raising: thresh1, thresh2, thresh3.
        for (key, old) in self.saved.iter().rev() {
            let _ = host_sysctl(self.host, &["-w", &format!("{key}={old}")]);
        }
    }
}

/// The static address of storm machine `i`: 10.99.2.1 on (outside the DHCP pool).
pub fn storm_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 2 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// Every storm machine of the run: (MAC text, address).
pub fn machines(total: usize) -> Vec<(String, Ipv4Addr)> {
    (0..total)
        .map(|i| (mac_text(client_mac(MAC_BASE + i)), storm_ip(i)))
        .collect()
}

/// Where a surface keeps scripts and configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    /// bootplane: `/machine.ipxe?mac=`, `/config?mac=` (rendered per request).
    Bootplane,
    /// nginx: `/machine/<mac>.ipxe`, `/config/<mac>.yaml` (the bytes bootplane served).
    Static,
}

/// What the storm's machines need to know.
pub struct Plan {
    surface: Surface,
    /// Boots a machine may take: a machine whose chain fails starts again from DHCP, as
    /// firmware does when a boot fails (1: no second chance, as in the speed runs).
    pub boots: u32,
    ipxe_efi: Arc<Vec<u8>>,
    kernel: Arc<Vec<u8>>,
    initramfs: Arc<Vec<u8>>,
    interface: String,
    /// Bodies bootplane served, for the static surface: path → bytes.
    saved: Mutex<HashMap<String, Vec<u8>>>,
}

/// The steps of a machine's walk, timed one by one.
pub const STEPS: [&str; 5] = ["DHCP", "TFTP", "scripts", "kernel + initramfs", "config"];

/// One machine's walk.
#[derive(Debug, Default)]
struct Walk {
    bytes: u64,
    total: Duration,
    /// Each of [`STEPS`] in its last boot.
    steps: [Duration; 5],
}

/// What a storm's machines counted while they walked, for the fault scenarios.
#[derive(Debug, Default)]
pub struct Tally {
    /// DHCP packets sent (2 per machine when nothing is lost).
    pub dhcp_sends: AtomicU64,
    /// TFTP retransmissions by the clients (a request or an ACK sent again).
    pub tftp_retries: AtomicU64,
    /// Boots started again after a failed chain.
    pub reboots: AtomicU64,
    /// Machines that have begun downloading their kernel (in their latest boot).
    pub downloading: AtomicUsize,
}

/// A storm's outcome.
#[derive(Debug, Default)]
pub struct StormResult {
    pub machines: usize,
    pub done: usize,
    pub failures: Vec<String>,
    pub bytes: u64,
    pub wall: Duration,
    pub per_machine: Latencies,
    /// Per machine, each of [`STEPS`].
    pub steps: [Latencies; 5],
}

pub async fn run(ctx: &mut Ctx, link_mb_s: Option<f64>) -> Result<()> {
    let sizes = ctx.params.storm_sizes.clone();
    let total: usize = sizes.iter().sum();
    let all = machines(total);
    // Each machine has an address of its own, so each needs a neighbour (ARP) entry on both
    // sides; Linux's neighbour table is one for every namespace, 1,024 entries by default.
    let _room = NeighbourRoom::make(ctx.names.id, 4 * total + 1024);
    ctx.names
        .add_client_addresses(&all.iter().map(|m| m.1).collect::<Vec<_>>())?;
    let dir = ctx.scratch.join("storm");
    let plan = Arc::new(Plan::bootplane(ctx, 1));

    eprintln!("boot storm: bootplane, {total} machines assigned");
    let setup = appliance_setup(ctx, &dir, &all);
    let mut bootplane = Appliance::start(&ctx.binary, &ctx.names, &setup).await?;
    let meter = Meter::start(bootplane.pid(), ctx.params.settle).await?;
    let mut ours = Vec::new();
    let mut offset = 0;
    for &n in &sizes {
        let group = &all[offset..offset + n];
        offset += n;
        eprintln!("boot storm: bootplane, N = {n}");
        let mark = meter.mark();
        let result = storm(plan.clone(), group, Arc::default()).await?;
        ours.push((n, result, meter.since(mark)));
        bootplane.check_alive()?;
    }
    ctx.stop_appliance(bootplane, "boot storm").await;

    let www = dir.join("www");
    write_static(
        &www,
        &plan,
        &ctx.files.storm_kernel,
        &ctx.files.storm_initramfs,
    )?;
    let static_plan = Arc::new(Plan {
        surface: Surface::Static,
        boots: 1,
        ipxe_efi: plan.ipxe_efi.clone(),
        kernel: plan.kernel.clone(),
        initramfs: plan.initramfs.clone(),
        interface: plan.interface.clone(),
        saved: Mutex::new(HashMap::new()),
    });
    eprintln!("boot storm: dnsmasq (DHCP, TFTP) and nginx");
    let mut lines = vec![
        format!("dhcp-range={POOL_START},{POOL_END},255.255.0.0,1h"),
        "dhcp-lease-max=1000000".into(),
        "dhcp-authoritative".into(),
        "no-ping".into(),
        "quiet-dhcp".into(),
        "quiet-tftp".into(),
        "enable-tftp".into(),
        "tftp-max=1000".into(),
        format!("tftp-root={}", ctx.files.tftp_root.display()),
        "dhcp-boot=ipxe.efi".into(),
    ];
    for (mac, ip) in &all {
        lines.push(format!("dhcp-host={mac},{ip}"));
    }
    let mut dnsmasq = Reference::dnsmasq(&ctx.names, &dir.join("dnsmasq"), &lines).await?;
    let nginx = Reference::nginx(
        &ctx.names,
        &dir.join("nginx"),
        &www,
        crate::servers::HTTP_PORT,
    )
    .await?;
    let dnsmasq_meter = Meter::start(dnsmasq.pid(), ctx.params.settle).await?;
    let nginx_meter = Meter::start(nginx.pid(), Duration::ZERO).await?;
    let mut theirs = Vec::new();
    let mut offset = 0;
    for &n in &sizes {
        let group = &all[offset..offset + n];
        offset += n;
        eprintln!("boot storm: dnsmasq and nginx, N = {n}");
        let (m1, m2) = (dnsmasq_meter.mark(), nginx_meter.mark());
        let result = storm(static_plan.clone(), group, Arc::default()).await?;
        let (u1, u2) = (dnsmasq_meter.since(m1), nginx_meter.since(m2));
        theirs.push((result, u1, u2));
    }
    dnsmasq.check_alive()?;
    dnsmasq.stop();
    nginx.stop();

    for ((n, a, usage), (b, dns_usage, nginx_usage)) in ours.iter().zip(&theirs) {
        rows(ctx, *n, a, b, *usage, *dns_usage, *nginx_usage, link_mb_s);
        ctx.usage.push(("boot storm", *usage));
    }
    Ok(())
}

impl Plan {
    /// Machines walking bootplane's chain with the storm's files, `boots` boots each.
    pub fn bootplane(ctx: &Ctx, boots: u32) -> Self {
        Plan {
            surface: Surface::Bootplane,
            boots,
            ipxe_efi: ctx.files.ipxe_efi.clone(),
            kernel: ctx.files.storm_kernel_bytes.clone(),
            initramfs: ctx.files.storm_initramfs_bytes.clone(),
            interface: ctx.names.client_if.clone(),
            saved: Mutex::new(HashMap::new()),
        }
    }
}

/// The storm's appliance under `dir`: full DHCP, the storm's assets, `machines` assigned.
pub fn appliance_setup(ctx: &Ctx, dir: &Path, machines: &[(String, Ipv4Addr)]) -> ApplianceSetup {
    ApplianceSetup {
        root: dir.join("bootplane"),
        ipxe: ctx.files.tftp_root.clone(),
        dhcp: DhcpMode::Full,
        kernel: ctx.files.storm_kernel.clone(),
        initramfs: ctx.files.storm_initramfs.clone(),
        machines: machines.to_vec(),
    }
}

/// Writes the static tree nginx serves: the assets, `/boot.ipxe`, and each machine's script
/// and config as bootplane served them.
fn write_static(www: &Path, plan: &Plan, kernel: &Path, initramfs: &Path) -> Result<()> {
    let assets = www.join("assets").join(TALOS_VERSION);
    for dir in [&assets, &www.join("machine"), &www.join("config")] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(kernel, assets.join("vmlinuz-amd64"))?;
    std::fs::copy(initramfs, assets.join("initramfs-amd64.xz"))?;
    let saved = plan.saved.lock().unwrap_or_else(|e| e.into_inner());
    for (path, body) in saved.iter() {
        let file: PathBuf = www.join(path.trim_start_matches('/'));
        std::fs::write(&file, body).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// All `machines` at once; the wall time runs to the last one's last byte. Each machine takes
/// up to `plan.boots` boots; what they count goes to `tally`.
pub async fn storm(
    plan: Arc<Plan>,
    machines: &[(String, Ipv4Addr)],
    tally: Arc<Tally>,
) -> Result<StormResult> {
    let hub = DhcpHub::start(&plan.interface, tally.clone())?;
    let barrier = Arc::new(Barrier::new(machines.len() + 1));
    let mut tasks = Vec::with_capacity(machines.len());
    for (mac, ip) in machines {
        let (plan, hub, barrier, tally) =
            (plan.clone(), hub.clone(), barrier.clone(), tally.clone());
        let (mac, ip) = (mac.clone(), *ip);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            machine(&plan, &hub, &mac, ip, &tally)
                .await
                .with_context(|| format!("machine {mac}"))
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut result = StormResult {
        machines: machines.len(),
        ..StormResult::default()
    };
    for task in tasks {
        match task.await {
            Ok(Ok(walk)) => {
                result.done += 1;
                result.bytes += walk.bytes;
                result.per_machine.push(walk.total);
                for (all, one) in result.steps.iter_mut().zip(walk.steps) {
                    all.push(one);
                }
            }
            Ok(Err(e)) => result.failures.push(format!("{e:#}")),
            Err(e) => result.failures.push(format!("machine task failed: {e}")),
        }
    }
    result.wall = start.elapsed();
    hub.stop();
    Ok(result)
}

/// One machine's boots: the chain again from DHCP after a failure, up to `plan.boots` times,
/// a second apart; each boot must finish within [`MACHINE_LIMIT`].
async fn machine(
    plan: &Plan,
    hub: &DhcpHub,
    mac: &str,
    ip: Ipv4Addr,
    tally: &Tally,
) -> Result<Walk> {
    let start = Instant::now();
    let mut boot = 1;
    loop {
        let outcome = tokio::time::timeout(MACHINE_LIMIT, walk(plan, hub, mac, ip, tally))
            .await
            .unwrap_or_else(|_| bail!("did not finish within {MACHINE_LIMIT:?}"));
        match outcome {
            Ok(mut walk) => {
                walk.total = start.elapsed();
                return Ok(walk);
            }
            Err(e) if boot >= plan.boots => {
                return Err(e.context(format!("boot {boot} of {}", plan.boots)))
            }
            Err(_) => {
                boot += 1;
                tally.reboots.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(REBOOT_PAUSE).await;
            }
        }
    }
}

/// One machine's boot: DHCP, TFTP, scripts, kernel, initramfs, config.
async fn walk(plan: &Plan, hub: &DhcpHub, mac: &str, ip: Ipv4Addr, tally: &Tally) -> Result<Walk> {
    let start = Instant::now();
    // client_mac(i) holds i in its last three bytes.
    let index = usize::from_str_radix(&mac.replace(':', "")[6..], 16).context("storm MAC")?;
    let leased = hub.dora(index).await?;
    if leased != ip {
        bail!("DHCP leased {leased}, its assigned address is {ip}");
    }
    let mut steps = [
        start.elapsed(),
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    ];
    let mut step_start = Instant::now();
    let mut lap = |i: usize| {
        steps[i] = step_start.elapsed();
        step_start = Instant::now();
    };
    let local = Some(ip);
    let mut bytes = 0u64;
    let tftp = tftp_client::get(
        SERVER_IP,
        ip,
        "ipxe.efi",
        Options {
            blksize: 1468,
            windowsize: Some(OVMF_WINDOW),
        },
        &plan.ipxe_efi,
    )
    .await
    .context("TFTP ipxe.efi")?;
    tally
        .tftp_retries
        .fetch_add(u64::from(tftp.retries), Ordering::Relaxed);
    bytes += tftp.bytes;
    lap(1);
    let addr = http_addr();
    let (status, chain) = get_small_from(local, addr, "/boot.ipxe").await?;
    if status != 200 {
        bail!("GET /boot.ipxe answered {status}");
    }
    bytes += chain.len() as u64;
    let script_path = match plan.surface {
        Surface::Bootplane => format!("/machine.ipxe?mac={mac}"),
        Surface::Static => format!("/machine/{}.ipxe", mac.replace(':', "-")),
    };
    let (status, script) = get_small_from(local, addr, &script_path).await?;
    if status != 200 {
        bail!("GET {script_path} answered {status}");
    }
    bytes += script.len() as u64;
    let text = String::from_utf8_lossy(&script).into_owned();
    let kernel = url_path(&text, "kernel ").context("no kernel line in the script")?;
    let initrd = url_path(&text, "initrd ").context("no initrd line in the script")?;
    let config_path = match plan.surface {
        Surface::Bootplane => text
            .split_whitespace()
            .find_map(|t| t.strip_prefix("talos.config="))
            .and_then(path_of)
            .context("no talos.config= in the script")?,
        Surface::Static => format!("/config/{}.yaml", mac.replace(':', "-")),
    };
    lap(2);
    let mut buf = vec![0u8; 256 * 1024];
    tally.downloading.fetch_add(1, Ordering::Relaxed);
    for (path, expected) in [(&kernel, &plan.kernel), (&initrd, &plan.initramfs)] {
        let d = download_verified_from(local, addr, path, expected, &mut buf)
            .await
            .with_context(|| format!("GET {path}"))?;
        bytes += d.bytes;
    }
    lap(3);
    let (status, config) = get_small_from(local, addr, &config_path).await?;
    if status != 200 || !String::from_utf8_lossy(&config).contains("machine:") {
        bail!(
            "GET {config_path} answered {status}: {}",
            String::from_utf8_lossy(&config)
                .chars()
                .take(200)
                .collect::<String>()
        );
    }
    bytes += config.len() as u64;
    lap(4);
    if plan.surface == Surface::Bootplane {
        let mut saved = plan.saved.lock().unwrap_or_else(|e| e.into_inner());
        let dashed = mac.replace(':', "-");
        saved.insert("/boot.ipxe".into(), chain);
        saved.insert(format!("/machine/{dashed}.ipxe"), script);
        saved.insert(format!("/config/{dashed}.yaml"), config);
    }
    Ok(Walk {
        bytes,
        total: start.elapsed(),
        steps,
    })
}

/// The path (and query) of the first http:// URL on the script line starting with `command`.
fn url_path(script: &str, command: &str) -> Option<String> {
    script
        .lines()
        .find(|l| l.trim_start().starts_with(command))?
        .split_whitespace()
        .find(|t| t.starts_with("http://"))
        .and_then(path_of)
}

fn path_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.find('/')?;
    Some(rest[slash..].to_string())
}

/// The storm's DHCP client side: one port-68 socket, replies handed to the machine waiting for
/// that xid.
#[derive(Clone)]
pub struct DhcpHub {
    tally: Arc<Tally>,
    socket: Arc<UdpSocket>,
    waiting: Arc<Mutex<HashMap<u32, oneshot::Sender<Vec<u8>>>>>,
    receiver: Arc<tokio::task::JoinHandle<()>>,
}

impl DhcpHub {
    pub fn start(interface: &str, tally: Arc<Tally>) -> Result<Self> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_address(true)?;
        sock.set_broadcast(true)?;
        let _ = setsockopt(&sock, sockopt::RcvBufForce, &(8usize << 20));
        sock.bind_device(Some(interface.as_bytes()))?;
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
            .context("binding port 68 for the storm")?;
        sock.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(StdUdpSocket::from(sock))?);
        let waiting: Arc<Mutex<HashMap<u32, oneshot::Sender<Vec<u8>>>>> = Arc::default();
        let receiver = {
            let (socket, waiting) = (socket.clone(), waiting.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                    let Some(x) = buf.get(4..8) else { continue };
                    let xid = u32::from_be_bytes([x[0], x[1], x[2], x[3]]);
                    let tx = waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&xid);
                    if let Some(tx) = tx {
                        let _ = tx.send(buf[..n].to_vec());
                    }
                }
            })
        };
        Ok(Self {
            tally,
            socket,
            waiting,
            receiver: Arc::new(receiver),
        })
    }

    pub fn stop(&self) {
        self.receiver.abort();
    }

    /// Sends `bytes` and waits for a reply of `want` (retransmitting on silence).
    async fn exchange(&self, xid: u32, bytes: &[u8], want: MessageType) -> Result<Message> {
        let dest = SocketAddr::from((Ipv4Addr::BROADCAST, 67));
        for _ in 0..DHCP_TRIES {
            let (tx, rx) = oneshot::channel();
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(xid, tx);
            self.socket.send_to(bytes, dest).await?;
            self.tally.dhcp_sends.fetch_add(1, Ordering::Relaxed);
            if let Ok(Ok(reply)) = tokio::time::timeout(DHCP_RETRY, rx).await {
                let msg = Message::decode(&mut Decoder::new(&reply))
                    .map_err(|e| anyhow::anyhow!("undecodable DHCP reply: {e}"))?;
                // A late OFFER (to a DISCOVER sent again) while the REQUEST waits for its ACK is
                // stale, as firmware treats it: ask again.
                if want == MessageType::Ack && msg.opts().msg_type() == Some(MessageType::Offer) {
                    continue;
                }
                if msg.opts().msg_type() != Some(want) {
                    bail!(
                        "DHCP answered {:?}, expected {want:?}",
                        msg.opts().msg_type()
                    );
                }
                return Ok(msg);
            }
        }
        bail!("no DHCP {want:?} after {DHCP_TRIES} tries")
    }

    /// DISCOVER → OFFER → REQUEST → ACK for client `index`; the address leased.
    pub async fn dora(&self, index: usize) -> Result<Ipv4Addr> {
        let xid: u32 = rand::random();
        let (discover, _) = first_request(Flow::Dora, index, xid)?;
        let offer = self.exchange(xid, &discover, MessageType::Offer).await?;
        let server = server_id(&offer);
        let request = encode_request(
            MessageType::Request,
            index,
            xid,
            Ipv4Addr::UNSPECIFIED,
            Some((offer.yiaddr(), server)),
            false,
        )?;
        let ack = self.exchange(xid, &request, MessageType::Ack).await?;
        Ok(ack.yiaddr())
    }
}

#[allow(clippy::too_many_arguments)]
fn rows(
    ctx: &mut Ctx,
    n: usize,
    a: &StormResult,
    b: &StormResult,
    ours: Usage,
    dnsmasq: Usage,
    nginx: Usage,
    link_mb_s: Option<f64>,
) {
    let report = &mut ctx.report;
    let bound = |r: &StormResult| link_mb_s.map(|l| r.bytes as f64 / 1e6 / l);
    let label = format!("boot storm, N = {n} machines at once");
    let secs = |r: &StormResult| r.wall.as_secs_f64();
    let (mut al, mut bl) = (a.per_machine.clone(), b.per_machine.clone());
    report.row(
        Row::new(format!("{label}: time until all finish"), format!("{:.2} s", secs(a)))
            .reference(
                format!("dnsmasq + nginx {:.2} s", secs(b)),
                fmt_ratio(Some(secs(b)), Some(secs(a))),
            )
            .notes(format!(
                "ratio as speed (reference time / bootplane time); {}/{} machines finished (reference {}/{}); {:.0} MB moved ({:.1} MB per machine); per machine p50 / p99 bootplane {} / {}, reference {} / {}; per step p50 / p99, bootplane against reference: {}",
                a.done,
                a.machines,
                b.done,
                b.machines,
                a.bytes as f64 / 1e6,
                a.bytes as f64 / 1e6 / a.machines.max(1) as f64,
                fmt_latency(al.percentile(50.0)),
                fmt_latency(al.percentile(99.0)),
                fmt_latency(bl.percentile(50.0)),
                fmt_latency(bl.percentile(99.0)),
                step_notes(a, b),
            )),
    );
    let over = bound(a).map(|t| secs(a) / t);
    report.row(
        Row::new(
            format!("{label}: against the link-rate bound"),
            over.map_or("n/a".into(), |o| format!("{o:.2}× the bound")),
        )
        .reference(
            bound(b).map_or("n/a".into(), |t| format!("{:.2}× the bound", secs(b) / t)),
            "—",
        )
        .notes(format!(
            "bound: the bytes alone at the measured link rate ({}) = {}",
            link_mb_s.map_or("n/a".into(), |l| format!("{l:.0} MB/s")),
            bound(a).map_or("n/a".into(), |t| format!("{t:.2} s")),
        )),
    );
    report.row(
        Row::new(
            format!("{label}: server RSS peak, CPU s"),
            format!(
                "{}, {:.2} s ({:.1} ms per machine)",
                fmt_kib(Some(ours.peak_kib)),
                ours.cpu_secs,
                ours.cpu_secs * 1e3 / n.max(1) as f64
            ),
        )
        .reference(
            format!(
                "dnsmasq {}, {:.2} s; nginx {}, {:.2} s ({:.1} ms per machine)",
                fmt_kib(Some(dnsmasq.peak_kib)),
                dnsmasq.cpu_secs,
                fmt_kib(Some(nginx.peak_kib)),
                nginx.cpu_secs,
                (dnsmasq.cpu_secs + nginx.cpu_secs) * 1e3 / n.max(1) as f64
            ),
            fmt_ratio(
                Some(ours.peak_kib as f64),
                Some((dnsmasq.peak_kib + nginx.peak_kib) as f64),
            ),
        )
        .notes("ratio of RSS peaks: bootplane / (dnsmasq + nginx master and workers)"),
    );
    report.target(
        format!("{label} within {BOUND_TARGET}× of the link-rate bound"),
        Verdict::from_check(over.map(|o| o <= BOUND_TARGET && a.done == a.machines)),
        over.map_or("n/a".into(), |o| format!("{o:.2}× the bound")),
    );
    let finished = a.done == a.machines;
    let speed = (secs(a) > 0.0).then(|| secs(b) / secs(a));
    report.target(
        format!("{label} ≥ {SPEED_TARGET}× faster than dnsmasq + nginx"),
        Verdict::from_check(speed.map(|r| r >= SPEED_TARGET && finished)),
        fmt_ratio(Some(secs(b)), Some(secs(a))),
    );
    let theirs_cpu = dnsmasq.cpu_secs + nginx.cpu_secs;
    report.target(
        format!("{label}: no more CPU seconds than dnsmasq + nginx"),
        Verdict::from_check(Some(ours.cpu_secs <= theirs_cpu && finished)),
        format!("{:.2} s vs {:.2} s", ours.cpu_secs, theirs_cpu),
    );
    report.target(
        format!("RSS under 64 MB during the storm (N = {n})"),
        Verdict::from_check(Some(ours.peak_kib < RSS_TARGET_KIB)),
        fmt_kib(Some(ours.peak_kib)),
    );
    for (who, r) in [("bootplane", a), ("dnsmasq + nginx", b)] {
        if let Some(first) = r.failures.first() {
            report.problem(format!(
                "boot storm N = {n}, {who}: {} machines failed; first: {first}",
                r.failures.len()
            ));
        }
    }
}

/// Each step's p50 / p99 for both sides: "DHCP 2.1 ms / 9.8 ms against 1.0 ms / 3.2 ms, …".
fn step_notes(a: &StormResult, b: &StormResult) -> String {
    STEPS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (mut x, mut y) = (a.steps[i].clone(), b.steps[i].clone());
            format!(
                "{name} {} / {} against {} / {}",
                fmt_latency(x.percentile(50.0)),
                fmt_latency(x.percentile(99.0)),
                fmt_latency(y.percentile(50.0)),
                fmt_latency(y.percentile(99.0)),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_urls_become_paths() {
        let script = "#!ipxe\nkernel --name vmlinuz-amd64 http://10.99.0.1:8080/assets/v1/vmlinuz-amd64?mac=02:b0 talos.config=http://10.99.0.1:8080/config?mac=02:b0\ninitrd --name i http://10.99.0.1:8080/assets/v1/initramfs-amd64.xz?mac=02:b0\n";
        assert_eq!(
            url_path(script, "kernel ").as_deref(),
            Some("/assets/v1/vmlinuz-amd64?mac=02:b0")
        );
        assert_eq!(
            url_path(script, "initrd ").as_deref(),
            Some("/assets/v1/initramfs-amd64.xz?mac=02:b0")
        );
    }

    #[test]
    fn storm_addresses_stay_out_of_the_pool() {
        assert_eq!(storm_ip(0), Ipv4Addr::new(10, 99, 2, 1));
        assert_eq!(storm_ip(250), Ipv4Addr::new(10, 99, 3, 1));
        assert!(storm_ip(1999) < POOL_START);
    }
}
