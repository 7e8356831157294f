//! DHCP load from the client namespace, as PXE firmware sends it: broadcast DISCOVERs and
//! REQUESTs from port 68 (broadcast flag set, so every server answers by broadcast), REQUESTs
//! to the PXE boot-server port by unicast. A fixed number of transactions is kept in flight on
//! one thread; replies are matched by xid and checked (type, client, address).
//!
//! The same module holds the trivial responder (`bootplane-bench --responder dhcp-*`, run in
//! the server namespace) that shows the generator's own ceiling over the same veth.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::netns::{CLIENT_IP, SERVER_IP};
use crate::stats::Latencies;
use crate::sys::thread_cpu_secs;

const XID_RANGE: std::ops::Range<usize> = 4..8;
const YIADDR_RANGE: std::ops::Range<usize> = 16..20;
const CHADDR_START: usize = 28;
const MIN_BOOTP_LEN: usize = 240;
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
pub const PXE_PORT: u16 = 4011;
/// Socket buffers asked for (SO_RCVBUFFORCE passes net.core.rmem_max as root).
const SOCKET_BUFFER: usize = 8 << 20;
/// With no reply at all after this many timed-out transactions, the load gives up.
const GIVE_UP_AFTER_LOST: usize = 32;

/// Clients of the short warm-up before each measured load (apart from every measured range).
pub const WARM_UP_BASE: usize = 0x70_0000;
pub const WARM_UP: usize = 200;

/// What each simulated client does once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// proxyDHCP: DISCOVER to port 67, answered by an OFFER without an address.
    ProxyDiscover,
    /// proxyDHCP: REQUEST to the boot-server port 4011, answered by an ACK without an address.
    ProxyRequest,
    /// Full DHCP: DISCOVER → OFFER → REQUEST → ACK, a new lease.
    Dora,
    /// Full DHCP: DISCOVER from a client holding a lease, answered by an OFFER of that address.
    LeasedDiscover,
}

/// The MAC of simulated client `index` (locally administered, unique up to 2^24 clients).
pub fn client_mac(index: usize) -> [u8; 6] {
    let [_, a, b, c] = (index as u32).to_be_bytes();
    [0x02, 0xb0, 0x07, a, b, c]
}

/// The client index encoded in a MAC made by [`client_mac`].
fn mac_index(mac: &[u8]) -> usize {
    usize::from(mac[3]) << 16 | usize::from(mac[4]) << 8 | usize::from(mac[5])
}

/// Encodes what PXE firmware sends: even clients BIOS (arch 0), odd ones x64 UEFI (arch 7).
pub fn encode_request(
    kind: MessageType,
    index: usize,
    xid: u32,
    ciaddr: Ipv4Addr,
    requested: Option<(Ipv4Addr, Ipv4Addr)>,
    boot_item: bool,
) -> Result<Vec<u8>> {
    let mac = client_mac(index);
    let (arch, class): (u16, &[u8]) = if index.is_multiple_of(2) {
        (0, b"PXEClient:Arch:00000:UNDI:002001")
    } else {
        (7, b"PXEClient:Arch:00007:UNDI:003016")
    };
    let mut msg = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    msg.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_flags(Flags::default().set_broadcast());
    let mut guid = vec![0u8; 17];
    guid[1..5].copy_from_slice(&(index as u32).to_be_bytes());
    guid[5..11].copy_from_slice(&mac);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::MaxMessageSize(1464));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::VendorExtensions,
        OptionCode::ClassIdentifier,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
        OptionCode::ClientMachineIdentifier,
    ]));
    opts.insert(DhcpOption::ClientMachineIdentifier(guid));
    opts.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        arch,
    )));
    opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
    if let Some((ip, server)) = requested {
        opts.insert(DhcpOption::RequestedIpAddress(ip));
        opts.insert(DhcpOption::ServerIdentifier(server));
    }
    if boot_item {
        // PXE boot item (sub-option 71, layer 0) as firmware echoes it from the proxy OFFER's
        // menu: dnsmasq numbers its pxe-service lines from 0x8000 in order (BIOS first, then
        // x64 UEFI in the bench's configuration); bootplane answers any item.
        let item_type = if index.is_multiple_of(2) { 0 } else { 1 };
        opts.insert(DhcpOption::VendorExtensions(vec![
            71, 4, 0x80, item_type, 0, 0, 255,
        ]));
    }
    let mut bytes = Vec::with_capacity(400);
    msg.encode(&mut Encoder::new(&mut bytes))
        .map_err(|e| anyhow!("encoding a request: {e}"))?;
    Ok(bytes)
}

/// The message a transaction of `flow` starts with, and where it goes: a proxyDHCP REQUEST
/// to the boot-server port, otherwise a broadcast DISCOVER.
pub fn first_request(flow: Flow, index: usize, xid: u32) -> Result<(Vec<u8>, SocketAddrV4)> {
    Ok(match flow {
        Flow::ProxyRequest => (
            encode_request(MessageType::Request, index, xid, CLIENT_IP, None, true)?,
            SocketAddrV4::new(SERVER_IP, PXE_PORT),
        ),
        _ => (
            encode_request(
                MessageType::Discover,
                index,
                xid,
                Ipv4Addr::UNSPECIFIED,
                None,
                false,
            )?,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT),
        ),
    })
}

/// How a load went.
#[derive(Debug, Default)]
pub struct FlowResult {
    /// Transactions started.
    pub started: usize,
    /// Transactions finished with the expected replies.
    pub done: usize,
    /// Transactions with no reply within the timeout.
    pub lost: usize,
    /// Replies that were not the expected message for that client.
    pub bad: usize,
    /// Replies for no outstanding transaction (late, duplicate, another client's).
    pub unmatched: usize,
    pub send_errors: usize,
    /// Transactions never started because the target answered nothing at all.
    pub skipped: usize,
    /// Leased clients offered another address than their lease.
    pub moved: usize,
    /// NAKs to a REQUEST (the address was offered twice); the client starts over with a
    /// DISCOVER, as firmware does.
    pub naks: usize,
    /// Request-to-reply latency of every reply.
    pub reply_latency: Latencies,
    /// First request to last reply of each finished transaction.
    pub txn_latency: Latencies,
    /// From the first send to the last finished transaction.
    pub elapsed: Duration,
    pub client_cpu_secs: f64,
    /// The address leased to each client (Dora), by position in the client list.
    pub leases: Vec<Option<Ipv4Addr>>,
}

impl FlowResult {
    pub fn per_sec(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (self.done > 0 && secs > 0.0).then(|| self.done as f64 / secs)
    }

    /// Fraction of all transactions finished correctly, 0..=1.
    pub fn answered(&self) -> f64 {
        let total = self.started + self.skipped;
        if total == 0 {
            0.0
        } else {
            self.done as f64 / total as f64
        }
    }

    /// "9,990/10,000 done, lost 10" and friends, only the non-zero ones.
    pub fn outcome(&self) -> String {
        let mut parts = vec![format!(
            "{}/{} done",
            crate::stats::fmt_count(self.done as f64),
            crate::stats::fmt_count((self.started + self.skipped) as f64)
        )];
        for (name, n) in [
            ("lost", self.lost),
            ("wrong reply", self.bad),
            ("unmatched", self.unmatched),
            ("send errors", self.send_errors),
            ("not sent (no replies at all)", self.skipped),
            ("offered another address", self.moved),
            ("NAKed and started over", self.naks),
        ] {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        }
        parts.join(", ")
    }
}

/// What to run: which flow, for which clients, how many in flight.
#[derive(Debug, Clone)]
pub struct Load {
    pub flow: Flow,
    /// Client indices, one transaction each.
    pub clients: Vec<usize>,
    pub in_flight: usize,
    pub timeout: Duration,
    /// The client veth (SO_BINDTODEVICE for broadcasts).
    pub interface: String,
    /// For `LeasedDiscover`: the lease of each client, by position.
    pub leases: Vec<Option<Ipv4Addr>>,
}

/// Runs `load` on a thread of its own (a current-thread runtime), so the generator's cost is
/// one core and easy to read.
pub async fn run(load: Load) -> Result<FlowResult> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cpu_before = thread_cpu_secs();
        let mut result = runtime.block_on(drive(&load))?;
        result.client_cpu_secs = thread_cpu_secs() - cpu_before;
        Ok(result)
    })
    .await
    .context("the DHCP load thread failed")?
}

/// The client socket: 0.0.0.0:68 on the client veth, broadcasts allowed, large buffers.
fn client_socket(interface: &str) -> Result<UdpSocket> {
    let std = std_client_socket(interface)?;
    std.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(std)?)
}

/// [`client_socket`] for a blocking loop of its own.
pub fn std_client_socket(interface: &str) -> Result<StdUdpSocket> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    let _ = setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER);
    let _ = setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER);
    sock.bind_device(Some(interface.as_bytes()))
        .context("binding the DHCP client socket to the veth")?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT).into())
        .context("binding the DHCP client port 68")?;
    Ok(sock.into())
}

/// One transaction in flight.
#[derive(Debug, Clone, Copy)]
struct Txn {
    slot: usize,
    /// 0: first request sent; 1: REQUEST after the OFFER (Dora).
    step: u8,
    sent_at: Instant,
    started: Instant,
    offered: Ipv4Addr,
}

async fn drive(load: &Load) -> Result<FlowResult> {
    let socket = client_socket(&load.interface)?;
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
    let xid_base: u32 = rand::random();
    let n = load.clients.len();
    let mut result = FlowResult {
        reply_latency: Latencies::with_capacity(n * 2),
        txn_latency: Latencies::with_capacity(n),
        leases: vec![None; n],
        ..FlowResult::default()
    };
    let mut outstanding: HashMap<u32, Txn> = HashMap::with_capacity(load.in_flight * 2);
    let mut next = 0usize;
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    let mut give_up = false;
    loop {
        while !give_up && next < n && outstanding.len() < load.in_flight {
            let slot = next;
            next += 1;
            let index = load.clients[slot];
            let xid = xid_base.wrapping_add(slot as u32);
            let (bytes, dest) = first_request(load.flow, index, xid)?;
            let now = Instant::now();
            result.started += 1;
            if socket.send_to(&bytes, dest).await.is_err() {
                result.send_errors += 1;
                result.lost += 1;
                continue;
            }
            outstanding.insert(
                xid,
                Txn {
                    slot,
                    step: 0,
                    sent_at: now,
                    started: now,
                    offered: Ipv4Addr::UNSPECIFIED,
                },
            );
        }
        let Some(oldest) = outstanding.values().map(|t| t.sent_at).min() else {
            break;
        };
        let deadline = tokio::time::Instant::from_std(oldest + load.timeout);
        if let Ok(ready) = tokio::time::timeout_at(deadline, socket.readable()).await {
            ready.context("waiting for replies")?;
            loop {
                let n = match socket.try_recv_from(&mut buf) {
                    Ok((n, _)) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).context("receiving replies"),
                };
                let now = Instant::now();
                if let Some(next) =
                    take_reply(load, &buf[..n], start, now, &mut outstanding, &mut result)
                {
                    // Dora: an OFFER asks for a REQUEST, a NAK for a new DISCOVER.
                    let (slot, xid, requested) = match next {
                        Next::Request {
                            slot,
                            xid,
                            offered,
                            server,
                        } => (slot, xid, Some((offered, server))),
                        Next::Restart { slot, xid } => (slot, xid, None),
                    };
                    let kind = if requested.is_some() {
                        MessageType::Request
                    } else {
                        MessageType::Discover
                    };
                    let index = load.clients[slot];
                    let bytes =
                        encode_request(kind, index, xid, Ipv4Addr::UNSPECIFIED, requested, false)?;
                    if socket.send_to(&bytes, broadcast).await.is_err() {
                        result.send_errors += 1;
                        result.lost += 1;
                        outstanding.remove(&xid);
                    }
                }
            }
        }
        let now = Instant::now();
        let before = outstanding.len();
        outstanding.retain(|_, t| now < t.sent_at + load.timeout);
        result.lost += before - outstanding.len();
        if result.done == 0 && result.lost >= GIVE_UP_AFTER_LOST.min(n) {
            give_up = true;
        }
    }
    result.skipped = n - next;
    Ok(result)
}

/// What a Dora transaction sends next (it stays in flight).
enum Next {
    /// The OFFER was accepted: REQUEST it.
    Request {
        slot: usize,
        xid: u32,
        offered: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// The REQUEST was NAKed: DISCOVER again.
    Restart { slot: usize, xid: u32 },
}

/// Checks one reply against its transaction; `Some` when a Dora transaction goes on.
fn take_reply(
    load: &Load,
    bytes: &[u8],
    start: Instant,
    now: Instant,
    outstanding: &mut HashMap<u32, Txn>,
    result: &mut FlowResult,
) -> Option<Next> {
    let xid = bytes
        .get(XID_RANGE)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))?;
    let Some(txn) = outstanding.get(&xid).copied() else {
        result.unmatched += 1;
        return None;
    };
    let mac = client_mac(load.clients[txn.slot]);
    let Some(msg) = decode_reply(bytes, &mac) else {
        // Another client's packet that reused nothing of ours, or garbage.
        result.unmatched += 1;
        return None;
    };
    let kind = msg.opts().msg_type();
    let yiaddr = msg.yiaddr();
    let expected = match (load.flow, txn.step) {
        (Flow::ProxyDiscover, _) => kind == Some(MessageType::Offer) && yiaddr.is_unspecified(),
        // dnsmasq echoes the client's own address in yiaddr; bootplane leaves it empty.
        (Flow::ProxyRequest, _) => {
            kind == Some(MessageType::Ack) && (yiaddr.is_unspecified() || yiaddr == CLIENT_IP)
        }
        (Flow::Dora, 0) | (Flow::LeasedDiscover, _) => {
            kind == Some(MessageType::Offer) && !yiaddr.is_unspecified()
        }
        (Flow::Dora, _) => kind == Some(MessageType::Ack) && yiaddr == txn.offered,
    };
    outstanding.remove(&xid);
    if load.flow == Flow::Dora && txn.step == 1 && kind == Some(MessageType::Nak) {
        result.naks += 1;
        outstanding.insert(
            xid,
            Txn {
                step: 0,
                sent_at: now,
                ..txn
            },
        );
        return Some(Next::Restart {
            slot: txn.slot,
            xid,
        });
    }
    if !expected {
        result.bad += 1;
        return None;
    }
    result.reply_latency.push(now - txn.sent_at);
    if load.flow == Flow::Dora && txn.step == 0 {
        let server = server_id(&msg);
        outstanding.insert(
            xid,
            Txn {
                step: 1,
                sent_at: now,
                offered: yiaddr,
                ..txn
            },
        );
        return Some(Next::Request {
            slot: txn.slot,
            xid,
            offered: yiaddr,
            server,
        });
    }
    if load.flow == Flow::Dora {
        result.leases[txn.slot] = Some(yiaddr);
    }
    if load.flow == Flow::LeasedDiscover
        && load.leases.get(txn.slot).copied().flatten() != Some(yiaddr)
    {
        result.moved += 1;
    }
    result.done += 1;
    result.txn_latency.push(now - txn.started);
    result.elapsed = now.saturating_duration_since(start);
    None
}

/// The server a reply names (option 54), else the bench's server address.
pub fn server_id(msg: &Message) -> Ipv4Addr {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => SERVER_IP,
    }
}

/// A BOOTREPLY for `mac`, decoded.
pub fn decode_reply(bytes: &[u8], mac: &[u8; 6]) -> Option<Message> {
    if bytes.len() < MIN_BOOTP_LEN || bytes.get(CHADDR_START..CHADDR_START + 6) != Some(mac) {
        return None;
    }
    let msg = Message::decode(&mut Decoder::new(bytes)).ok()?;
    (msg.opcode() == Opcode::BootReply).then_some(msg)
}

/// The trivial responder's addresses: client `i` gets 10.99.(10 + i / 256).(i % 256).
fn responder_address(index: usize) -> Ipv4Addr {
    let i = index % (240 * 256);
    Ipv4Addr::new(10, 99, 10 + (i / 256) as u8, (i % 256) as u8)
}

/// Runs the trivial DHCP responder in this (the server) namespace until killed: OFFER for a
/// DISCOVER, ACK for a REQUEST, from one fixed reply patched with xid, chaddr and (when `full`)
/// an address made from the MAC. Port 67 answers by broadcast, port 4011 to the sender.
pub fn responder(interface: &str, full: bool) -> Result<()> {
    let offer = reply_template(MessageType::Offer)?;
    let ack = reply_template(MessageType::Ack)?;
    let mut threads = Vec::new();
    for port in [SERVER_PORT, PXE_PORT] {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_address(true)?;
        sock.set_broadcast(true)?;
        let _ = setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER);
        sock.bind_device(Some(interface.as_bytes()))?;
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
        let sock: StdUdpSocket = sock.into();
        let (offer, ack) = (offer.clone(), ack.clone());
        threads.push(std::thread::spawn(move || {
            let mut request = [0u8; 2048];
            let (mut offer, mut ack) = (offer, ack);
            loop {
                let Ok((n, src)) = sock.recv_from(&mut request) else {
                    continue;
                };
                if n < MIN_BOOTP_LEN {
                    continue;
                }
                let reply = match option_53(&request[MIN_BOOTP_LEN..n]) {
                    Some(1) => &mut offer,
                    Some(3) => &mut ack,
                    _ => continue,
                };
                reply[XID_RANGE].copy_from_slice(&request[XID_RANGE]);
                reply[CHADDR_START..CHADDR_START + 16]
                    .copy_from_slice(&request[CHADDR_START..CHADDR_START + 16]);
                let yiaddr = if full {
                    responder_address(mac_index(&request[CHADDR_START..CHADDR_START + 6]))
                } else {
                    Ipv4Addr::UNSPECIFIED
                };
                reply[YIADDR_RANGE].copy_from_slice(&yiaddr.octets());
                let dest = if port == SERVER_PORT && src.port() == CLIENT_PORT {
                    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT).into()
                } else {
                    src
                };
                let _ = sock.send_to(reply, dest);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// The DHCP message type (option 53) in an options field (after the magic cookie).
fn option_53(options: &[u8]) -> Option<u8> {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => i += 1,
            255 => return None,
            code => {
                let len = usize::from(*options.get(i + 1)?);
                if code == 53 && len == 1 {
                    return options.get(i + 2).copied();
                }
                i += 2 + len;
            }
        }
    }
    None
}

/// A reply like a PXE server's: siaddr, boot file, options 53/54/60/43 (and a lease time and
/// mask, which a full server adds).
fn reply_template(kind: MessageType) -> Result<Vec<u8>> {
    let mut msg = Message::new_with_id(
        0,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        SERVER_IP,
        Ipv4Addr::UNSPECIFIED,
        &[0; 6],
    );
    msg.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(Flags::default().set_broadcast())
        .set_sname_str(SERVER_IP.to_string())
        .set_fname_str("ipxe.efi");
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(SERVER_IP));
    opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)));
    opts.insert(DhcpOption::AddressLeaseTime(3600));
    opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    let mut bytes = Vec::with_capacity(400);
    msg.encode(&mut Encoder::new(&mut bytes))
        .map_err(|e| anyhow!("encoding the responder's reply: {e}"))?;
    bytes.resize(bytes.len().max(300), 0);
    Ok(bytes)
}

/// The short warm-up before a measured load, from clients outside every measured range and
/// with `base`'s flow: first packets fault in code and sockets on both sides.
pub async fn warm_up(base: &Load) -> Result<()> {
    run(Load {
        clients: (WARM_UP_BASE..WARM_UP_BASE + WARM_UP).collect(),
        ..base.clone()
    })
    .await?;
    Ok(())
}

/// `FlowResult`'s rate for the table.
pub fn rate(r: &FlowResult) -> String {
    r.per_sec().map_or("n/a".into(), |v| {
        format!("{}/s", crate::stats::fmt_count(v))
    })
}

/// The two rows every DHCP load gets, bootplane (`a`) beside a reference (`b`, named `name`)
/// with the load generator's ceiling against the trivial responder (`c`) and another server's
/// result (`also`) in the notes: its rate in `unit`, and its reply latency p50 / p99; plus a
/// finding when bootplane came near the generator's ceiling. Returns bootplane's rate as a
/// ratio to the reference's and its p99.
pub fn flow_rows(
    report: &mut crate::report::Report,
    label: &str,
    unit: &str,
    [a, b, c]: [&FlowResult; 3],
    name: &str,
    also: Option<(&str, &FlowResult)>,
) -> (Option<f64>, Option<Duration>) {
    use crate::report::{latency_row, Row};
    use crate::stats::{fmt_latency, fmt_ratio};

    let also_text = also.map_or(String::new(), |(who, r)| {
        let mut l = r.reply_latency.clone();
        format!(
            "; {who} {} ({}, reply p50 / p99 {} / {})",
            rate(r),
            r.outcome(),
            fmt_latency(l.percentile(50.0)),
            fmt_latency(l.percentile(99.0))
        )
    });
    report.row(
        Row::new(format!("{label}: {unit}"), rate(a))
            .reference(format!("{name} {}", rate(b)), fmt_ratio(a.per_sec(), b.per_sec()))
            .notes(format!(
                "bootplane {}; {name} {}{also_text}; generator ceiling (trivial responder) {} ({}), generator CPU {:.2} s vs {:.2} s at the ceiling",
                a.outcome(),
                b.outcome(),
                rate(c),
                c.outcome(),
                a.client_cpu_secs,
                c.client_cpu_secs,
            )),
    );
    let (mut al, mut bl, mut cl) = (
        a.reply_latency.clone(),
        b.reply_latency.clone(),
        c.reply_latency.clone(),
    );
    let (row, p99) = latency_row(
        format!("{label}: reply latency p50 / p99"),
        &mut al,
        &mut bl,
    );
    report.row(row.notes(format!(
        "each request to its reply; reference {name}; ratio as speed ({name} p99 / bootplane p99); trivial responder {} / {}",
        fmt_latency(cl.percentile(50.0)),
        fmt_latency(cl.percentile(99.0))
    )));
    if let (Some(ours), Some(ceil)) = (a.per_sec(), c.per_sec()) {
        if ours >= 0.8 * ceil {
            report.finding(format!(
                "{label}: bootplane reached {:.0}% of the load generator's ceiling, so the generator may be what limited it",
                ours / ceil * 100.0
            ));
        }
    }
    (a.per_sec().zip(b.per_sec()).map(|(a, b)| a / b), p99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_distinct_and_locally_administered() {
        let macs: std::collections::HashSet<_> = (0..70_000).map(client_mac).collect();
        assert_eq!(macs.len(), 70_000);
        assert!(macs.iter().all(|m| m[0] & 0x02 != 0 && m[0] & 0x01 == 0));
        assert_eq!(mac_index(&client_mac(65_537)), 65_537);
    }

    #[test]
    fn requests_decode_as_pxe_requests() {
        let bios = encode_request(
            MessageType::Discover,
            0,
            9,
            Ipv4Addr::UNSPECIFIED,
            None,
            false,
        )
        .unwrap();
        let msg = Message::decode(&mut Decoder::new(&bios)).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(msg.xid(), 9);
        assert_eq!(option_53(&bios[MIN_BOOTP_LEN..]), Some(1));
        let server = Ipv4Addr::new(10, 99, 0, 1);
        let ip = Ipv4Addr::new(10, 99, 10, 1);
        let uefi = encode_request(
            MessageType::Request,
            1,
            9,
            Ipv4Addr::UNSPECIFIED,
            Some((ip, server)),
            false,
        )
        .unwrap();
        let msg = Message::decode(&mut Decoder::new(&uefi)).unwrap();
        assert!(matches!(
            msg.opts().get(OptionCode::ClientSystemArchitecture),
            Some(DhcpOption::ClientSystemArchitecture(a)) if u16::from(*a) == 7
        ));
        assert!(matches!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(DhcpOption::RequestedIpAddress(a)) if *a == ip
        ));
        assert_eq!(option_53(&uefi[MIN_BOOTP_LEN..]), Some(3));
    }

    #[test]
    fn responder_template_patched_with_the_request_is_an_expected_reply() {
        let req = encode_request(
            MessageType::Discover,
            5,
            7,
            Ipv4Addr::UNSPECIFIED,
            None,
            false,
        )
        .unwrap();
        let mut reply = reply_template(MessageType::Offer).unwrap();
        reply[XID_RANGE].copy_from_slice(&req[XID_RANGE]);
        reply[CHADDR_START..CHADDR_START + 16]
            .copy_from_slice(&req[CHADDR_START..CHADDR_START + 16]);
        let msg = decode_reply(&reply, &client_mac(5)).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Offer));
        assert!(decode_reply(&reply, &client_mac(6)).is_none());
    }
}
