//! proxyDHCP load: PXE DISCOVERs (and REQUESTs to the boot-server port) from distinct MACs with
//! a fixed number in flight, replies matched by xid; and a trivial in-process responder that
//! shows the load generator's own ceiling.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::net::UdpSocket;

use crate::stats::Latencies;
use crate::sys::thread_cpu_secs;

/// BOOTP header up to and including chaddr's 16 bytes.
const XID_RANGE: std::ops::Range<usize> = 4..8;
const CHADDR_START: usize = 28;
const MIN_BOOTP_LEN: usize = 240;

/// Which half of the proxyDHCP exchange a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// DHCPDISCOVER to port 67, answered by a proxy OFFER.
    Discover,
    /// DHCPREQUEST to port 4011, answered by an ACK.
    Request,
}

impl Exchange {
    fn request_type(self) -> MessageType {
        match self {
            Exchange::Discover => MessageType::Discover,
            Exchange::Request => MessageType::Request,
        }
    }

    fn reply_type(self) -> MessageType {
        match self {
            Exchange::Discover => MessageType::Offer,
            Exchange::Request => MessageType::Ack,
        }
    }
}

/// One encoded request.
#[derive(Debug, Clone)]
pub struct Packet {
    xid: u32,
    mac: [u8; 6],
    bytes: Vec<u8>,
}

/// The MAC of simulated client `index` (locally administered, unique up to 2^24 clients).
pub fn client_mac(index: usize) -> [u8; 6] {
    let [_, a, b, c] = (index as u32).to_be_bytes();
    [0x02, 0xb0, 0x07, a, b, c]
}

/// Encodes what PXE firmware sends: even clients are BIOS (arch 0), odd ones x64 UEFI (arch 7),
/// each with its own MAC, GUID and xid.
pub fn build_packets(exchange: Exchange, clients: std::ops::Range<usize>) -> Result<Vec<Packet>> {
    let xid_base: u32 = rand::random();
    clients
        .map(|index| {
            let mac = client_mac(index);
            let xid = xid_base.wrapping_add(index as u32);
            let (arch, class): (u16, &[u8]) = if index % 2 == 0 {
                (0, b"PXEClient:Arch:00000:UNDI:002001")
            } else {
                (7, b"PXEClient:Arch:00007:UNDI:003016")
            };
            let ciaddr = match exchange {
                Exchange::Discover => Ipv4Addr::UNSPECIFIED,
                Exchange::Request => Ipv4Addr::LOCALHOST,
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
            opts.insert(DhcpOption::MessageType(exchange.request_type()));
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
            if exchange == Exchange::Request {
                // PXE boot item 0 (sub-option 71), as EDK2 sends to the boot server.
                opts.insert(DhcpOption::VendorExtensions(vec![71, 4, 0, 0, 0, 0, 255]));
            }
            let mut bytes = Vec::with_capacity(400);
            msg.encode(&mut Encoder::new(&mut bytes))
                .map_err(|e| anyhow!("encoding a request: {e}"))?;
            Ok(Packet { xid, mac, bytes })
        })
        .collect()
}

/// How a load phase went.
#[derive(Debug, Default)]
pub struct PhaseResult {
    pub sent: usize,
    /// Replies of the expected type for the right client.
    pub replies: usize,
    /// Requests with no reply within the timeout.
    pub lost: usize,
    /// Replies for an outstanding xid that were not the expected message for that client.
    pub bad: usize,
    /// Replies for no outstanding xid (after the timeout, or duplicates).
    pub unmatched: usize,
    pub send_errors: usize,
    /// Requests never sent because the target answered nothing at all.
    pub skipped: usize,
    pub latencies: Latencies,
    /// From the first send to the last matched reply.
    pub elapsed: Duration,
    /// CPU the load generator's thread used.
    pub client_cpu_secs: f64,
    pub in_flight: usize,
}

impl PhaseResult {
    pub fn replies_per_sec(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (self.replies > 0 && secs > 0.0).then(|| self.replies as f64 / secs)
    }

    /// Fraction of all requests (sent or skipped) answered correctly, 0..=1.
    pub fn answered(&self) -> f64 {
        let total = self.sent + self.skipped;
        if total == 0 {
            0.0
        } else {
            self.replies as f64 / total as f64
        }
    }

    fn merge(&mut self, other: PhaseResult) {
        self.sent += other.sent;
        self.replies += other.replies;
        self.lost += other.lost;
        self.bad += other.bad;
        self.unmatched += other.unmatched;
        self.send_errors += other.send_errors;
        self.skipped += other.skipped;
        self.latencies.extend(other.latencies);
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// Load shape: how many requests in flight, over how many client sockets, and when to give up
/// on one.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    pub in_flight: usize,
    pub sockets: usize,
    pub timeout: Duration,
}

/// Sends every packet to `target` keeping `shape.in_flight` outstanding, on one thread (a
/// current-thread runtime), so the load generator's cost is one core and easy to read.
pub fn run_phase(
    target: SocketAddr,
    exchange: Exchange,
    packets: Arc<Vec<Packet>>,
    shape: LoadShape,
) -> Result<PhaseResult> {
    let thread = std::thread::Builder::new()
        .name("dhcp-load".into())
        .spawn(move || -> Result<PhaseResult> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let cpu_before = thread_cpu_secs();
            let mut result = runtime.block_on(drive_all(target, exchange, packets, shape))?;
            result.client_cpu_secs = thread_cpu_secs() - cpu_before;
            Ok(result)
        })
        .context("starting the load thread")?;
    thread
        .join()
        .map_err(|_| anyhow!("the DHCP load thread panicked"))?
}

/// What every client socket of one phase shares.
struct Load {
    target: SocketAddr,
    exchange: Exchange,
    packets: Arc<Vec<Packet>>,
    /// Index of the next packet to send.
    next: AtomicUsize,
    /// Set when the target answers nothing at all: the phase stops sending instead of waiting
    /// out a timeout for every remaining request.
    give_up: AtomicBool,
    timeout: Duration,
    start: Instant,
}

/// With no reply at all after this many requests (or a whole window) timed out on one socket,
/// the phase gives up.
const GIVE_UP_AFTER_LOST: usize = 4;

async fn drive_all(
    target: SocketAddr,
    exchange: Exchange,
    packets: Arc<Vec<Packet>>,
    shape: LoadShape,
) -> Result<PhaseResult> {
    let sockets = shape.sockets.clamp(1, shape.in_flight.max(1));
    let total_packets = packets.len();
    let load = Arc::new(Load {
        target,
        exchange,
        packets,
        next: AtomicUsize::new(0),
        give_up: AtomicBool::new(false),
        timeout: shape.timeout,
        start: Instant::now(),
    });
    let mut tasks = Vec::with_capacity(sockets);
    for s in 0..sockets {
        // Spread the window evenly: 32 over 4 sockets is 8 each.
        let window = shape.in_flight / sockets + usize::from(s < shape.in_flight % sockets);
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding a client socket")?;
        tasks.push(tokio::spawn(drive_socket(socket, load.clone(), window)));
    }
    let mut total = PhaseResult {
        in_flight: shape.in_flight,
        latencies: Latencies::with_capacity(total_packets),
        ..PhaseResult::default()
    };
    for task in tasks {
        total.merge(task.await.context("a client socket task failed")??);
    }
    total.skipped = total_packets.saturating_sub(total.sent);
    Ok(total)
}

/// One socket's share of the load: keeps `window` requests outstanding, taking the next packet
/// from the shared index, until every packet is sent and answered or timed out.
async fn drive_socket(socket: UdpSocket, load: Arc<Load>, window: usize) -> Result<PhaseResult> {
    let mut result = PhaseResult::default();
    // Outstanding requests: (xid, packet index, sent at). Small (the window), so a Vec.
    let mut outstanding: Vec<(u32, usize, Instant)> = Vec::with_capacity(window);
    let mut buf = vec![0u8; 2048];
    let mut exhausted = false;
    loop {
        while !exhausted && outstanding.len() < window {
            if load.give_up.load(Ordering::Relaxed) {
                exhausted = true;
                break;
            }
            let index = load.next.fetch_add(1, Ordering::Relaxed);
            let Some(packet) = load.packets.get(index) else {
                exhausted = true;
                break;
            };
            let sent_at = Instant::now();
            result.sent += 1;
            match socket.send_to(&packet.bytes, load.target).await {
                Ok(_) => outstanding.push((packet.xid, index, sent_at)),
                Err(_) => {
                    result.send_errors += 1;
                    result.lost += 1;
                }
            }
        }
        let Some(oldest) = outstanding.iter().map(|o| o.2).min() else {
            break;
        };
        let deadline = tokio::time::Instant::from_std(oldest + load.timeout);
        if let Ok(ready) = tokio::time::timeout_at(deadline, socket.readable()).await {
            ready.context("waiting for replies")?;
            loop {
                match socket.try_recv_from(&mut buf) {
                    Ok((n, _)) => {
                        let now = Instant::now();
                        take_reply(&load, &buf[..n], now, &mut outstanding, &mut result);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).context("receiving replies"),
                }
            }
        }
        let now = Instant::now();
        let before = outstanding.len();
        outstanding.retain(|o| now < o.2 + load.timeout);
        result.lost += before - outstanding.len();
        if result.replies == 0 && result.lost >= window.max(GIVE_UP_AFTER_LOST) {
            load.give_up.store(true, Ordering::Relaxed);
        }
    }
    Ok(result)
}

/// Matches one datagram to an outstanding request by xid and checks it.
fn take_reply(
    load: &Load,
    reply: &[u8],
    now: Instant,
    outstanding: &mut Vec<(u32, usize, Instant)>,
    result: &mut PhaseResult,
) {
    let found = reply
        .get(XID_RANGE)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        .and_then(|xid| outstanding.iter().position(|o| o.0 == xid));
    let Some(pos) = found else {
        result.unmatched += 1;
        return;
    };
    let (_, index, sent_at) = outstanding.swap_remove(pos);
    let mac = load.packets.get(index).map(|p| p.mac);
    if mac.is_some_and(|mac| is_expected_reply(reply, load.exchange, &mac)) {
        result.replies += 1;
        result.latencies.push(now - sent_at);
        result.elapsed = now - load.start;
    } else {
        result.bad += 1;
    }
}

/// A BOOTREPLY of the expected type, for this client's MAC.
fn is_expected_reply(bytes: &[u8], exchange: Exchange, mac: &[u8; 6]) -> bool {
    if bytes.len() < MIN_BOOTP_LEN || bytes.get(CHADDR_START..CHADDR_START + 6) != Some(mac) {
        return false;
    }
    match Message::decode(&mut Decoder::new(bytes)) {
        Ok(msg) => {
            msg.opcode() == Opcode::BootReply
                && msg.opts().msg_type() == Some(exchange.reply_type())
                && msg.yiaddr() == Ipv4Addr::UNSPECIFIED
        }
        Err(_) => false,
    }
}

/// A trivial responder on a loopback port: answers each request with a fixed proxy OFFER (or
/// ACK) patched with the request's xid and chaddr. Runs on its own thread until dropped.
#[derive(Debug)]
pub struct EchoResponder {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoResponder {
    pub fn start(exchange: Exchange) -> Result<Self> {
        let socket =
            StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the echo responder")?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let template = reply_template(exchange)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("dhcp-echo".into())
                .spawn(move || echo_loop(&socket, &template, &stop))
                .context("starting the echo responder")?
        };
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn echo_loop(socket: &StdUdpSocket, template: &[u8], stop: &AtomicBool) {
    let mut request = [0u8; 2048];
    let mut reply = template.to_vec();
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, src)) = socket.recv_from(&mut request) else {
            continue;
        };
        if n < MIN_BOOTP_LEN {
            continue;
        }
        reply[XID_RANGE].copy_from_slice(&request[XID_RANGE]);
        reply[CHADDR_START..CHADDR_START + 16]
            .copy_from_slice(&request[CHADDR_START..CHADDR_START + 16]);
        let _ = socket.send_to(&reply, src);
    }
}

/// A proxy reply like the appliance's: yiaddr 0, siaddr, boot file, options 53/54/60/43.
fn reply_template(exchange: Exchange) -> Result<Vec<u8>> {
    let server = Ipv4Addr::LOCALHOST;
    let mut msg = Message::new_with_id(
        0,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        server,
        Ipv4Addr::UNSPECIFIED,
        &[0; 6],
    );
    msg.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_sname_str("127.0.0.1")
        .set_fname_str("undionly.kpxe");
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(exchange.reply_type()));
    opts.insert(DhcpOption::ServerIdentifier(server));
    opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    let mut bytes = Vec::with_capacity(400);
    msg.encode(&mut Encoder::new(&mut bytes))
        .map_err(|e| anyhow!("encoding the responder's reply: {e}"))?;
    bytes.resize(bytes.len().max(300), 0);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_distinct_and_locally_administered() {
        let macs: std::collections::HashSet<_> = (0..70_000).map(client_mac).collect();
        assert_eq!(macs.len(), 70_000);
        assert!(macs.iter().all(|m| m[0] & 0x02 != 0 && m[0] & 0x01 == 0));
    }

    #[test]
    fn discovers_decode_as_pxe_requests() {
        let packets = build_packets(Exchange::Discover, 0..2).unwrap();
        let bios = Message::decode(&mut Decoder::new(&packets[0].bytes)).unwrap();
        assert_eq!(bios.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(bios.xid(), packets[0].xid);
        assert_eq!(&bios.chaddr()[..6], &client_mac(0));
        let uefi = Message::decode(&mut Decoder::new(&packets[1].bytes)).unwrap();
        assert!(matches!(
            uefi.opts().get(OptionCode::ClientSystemArchitecture),
            Some(DhcpOption::ClientSystemArchitecture(a)) if u16::from(*a) == 7
        ));
    }

    #[test]
    fn responder_template_patched_with_the_request_is_an_expected_reply() {
        let packets = build_packets(Exchange::Discover, 5..6).unwrap();
        let mut reply = reply_template(Exchange::Discover).unwrap();
        reply[XID_RANGE].copy_from_slice(&packets[0].bytes[XID_RANGE]);
        reply[CHADDR_START..CHADDR_START + 16]
            .copy_from_slice(&packets[0].bytes[CHADDR_START..CHADDR_START + 16]);
        assert!(is_expected_reply(
            &reply,
            Exchange::Discover,
            &client_mac(5)
        ));
        assert!(!is_expected_reply(
            &reply,
            Exchange::Request,
            &client_mac(5)
        ));
        assert!(!is_expected_reply(
            &reply,
            Exchange::Discover,
            &client_mac(6)
        ));
    }

    #[test]
    fn load_against_the_responder_gets_every_reply() {
        let echo = EchoResponder::start(Exchange::Discover).unwrap();
        let packets = Arc::new(build_packets(Exchange::Discover, 0..300).unwrap());
        let shape = LoadShape {
            in_flight: 8,
            sockets: 2,
            timeout: Duration::from_secs(1),
        };
        let result = run_phase(echo.addr, Exchange::Discover, packets, shape).unwrap();
        assert_eq!(result.sent, 300);
        assert_eq!(result.replies, 300);
        assert_eq!(result.lost + result.bad + result.unmatched, 0);
    }

    #[test]
    fn a_silent_target_ends_the_phase_early() {
        // Bound but never read: requests vanish.
        let silent = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let packets = Arc::new(build_packets(Exchange::Discover, 0..1000).unwrap());
        let shape = LoadShape {
            in_flight: 8,
            sockets: 2,
            timeout: Duration::from_millis(100),
        };
        let started = Instant::now();
        let result = run_phase(
            silent.local_addr().unwrap(),
            Exchange::Discover,
            packets,
            shape,
        )
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(result.replies, 0);
        assert!(result.skipped > 900);
        assert_eq!(result.answered(), 0.0);
    }
}
