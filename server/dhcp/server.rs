//! The receive loops (one per socket) and the lease flusher.
//!
//! An ACK announces a binding the client will use for the whole lease, so it goes out only
//! once that binding is committed durably (`synchronous=FULL`): otherwise a crash or a power
//! cut right after the ACK loses the lease, and the restarted server may give the address to
//! another machine while its first holder still uses it (RFC 2131 §3.1, step 4: the server
//! "commits the binding for the client to persistent storage and responds with a DHCPACK").
//! The receive loops never wait for it: an ACK whose binding is still unwritten is held, the
//! flusher is woken at once (group commit: every binding decided while one write runs goes in
//! the next), and the loop sends the held ACKs when the flusher reports them durable. While
//! `MAX_HELD` ACKs wait, the loops read no more: the requests behind them wait in the socket's
//! receive buffer (a storm of new clients is answered a commit later, not dropped and asked
//! again 4 s later). An ACK held longer than `HOLD_LIMIT_MS` (the writes keep failing) is
//! dropped and counted (`bootplane_dhcp_dropped_total{reason="ack-not-durable"}`); the client
//! asks again.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket as TokioUdpSocket;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::decide::{self, Ctx, Dest, Outgoing, ReplyKind, Via};
use super::leases::LeaseTable;
use super::{socket, wire, DhcpDeps, DhcpSockets};
use crate::config::DhcpMode;
use crate::db::Observation;

/// How often dirty leases are written to SQLite.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Packets handled before a receive loop yields to the runtime.
const BURST: usize = 256;
/// Most ACKs waiting for their binding's write: with this many held, the receive loops stop
/// reading until a commit lets some go (a burst then waits in the kernel's receive buffer).
/// A burst in progress may go past it by at most `BURST`; past twice this, the oldest is
/// dropped (the client retransmits its REQUEST).
const MAX_HELD: usize = 4096;
/// An ACK whose binding is not durable within this long is dropped: the client has sent its
/// REQUEST again by then (RFC 2131 clients retransmit after 4 s), and that one is answered.
const HOLD_LIMIT_MS: i64 = 4_000;

struct Shared {
    deps: DhcpDeps,
    leases: Mutex<LeaseTable>,
    /// ACKs waiting until their binding is durable, oldest first.
    held: Mutex<VecDeque<Held>>,
    /// Wakes the flusher when an ACK waits.
    flush_now: Notify,
    /// The number of the latest lease change committed durably (`LeaseTable::mark_durable`).
    durable: watch::Sender<u64>,
}

/// A reply that waits for the durable write of lease change `change`.
struct Held {
    via: Via,
    change: u64,
    reply: Reply,
    at_ms: i64,
}

/// A reply and how it leaves: its source address and interface.
struct Reply {
    out: Outgoing,
    source: Option<Ipv4Addr>,
    ifindex: u32,
}

impl Shared {
    fn leases(&self) -> MutexGuard<'_, LeaseTable> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self) -> MutexGuard<'_, VecDeque<Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `reply` until lease change `change` is durable and wakes the flusher.
    fn hold(&self, via: Via, change: u64, reply: Reply) {
        let at_ms = self.deps.recorder.now_ms();
        let dropped = {
            let mut held = self.held();
            held.push_back(Held {
                via,
                change,
                reply,
                at_ms,
            });
            held.len() > 2 * MAX_HELD && held.pop_front().is_some()
        };
        if dropped {
            self.deps.metrics.dhcp_drop("ack-not-durable");
        }
        self.flush_now.notify_one();
    }

    /// Enough ACKs wait for a commit that the receive loops read no more until it lands.
    fn holding_enough(&self) -> bool {
        self.held().len() >= MAX_HELD
    }

    /// The held replies of `via` whose binding is durable now.
    fn released(&self, via: Via) -> Vec<Reply> {
        let durable = *self.durable.borrow();
        let mut held = self.held();
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(held.len());
        for h in held.drain(..) {
            if h.via == via && h.change <= durable {
                out.push(h.reply);
            } else {
                kept.push_back(h);
            }
        }
        *held = kept;
        out
    }

    /// Drops held replies older than `HOLD_LIMIT_MS` (their writes keep failing).
    fn expire_held(&self, now: i64) {
        let before = {
            let mut held = self.held();
            let before = held.len();
            held.retain(|h| now - h.at_ms < HOLD_LIMIT_MS);
            before - held.len()
        };
        for _ in 0..before {
            self.deps.metrics.dhcp_drop("ack-not-durable");
        }
    }
}

pub async fn run(deps: DhcpDeps, sockets: DhcpSockets, cancel: CancellationToken) {
    if deps.config.mode == DhcpMode::Off {
        cancel.cancelled().await;
        return;
    }
    let leases = if deps.config.mode == DhcpMode::Full {
        match deps.db.load_leases().await {
            Ok(rows) => LeaseTable::from_rows(rows),
            Err(e) => {
                tracing::error!(error = %e, "cannot load DHCP leases; starting with none");
                LeaseTable::default()
            }
        }
    } else {
        LeaseTable::default()
    };
    let shared = Arc::new(Shared {
        deps,
        leases: Mutex::new(leases),
        held: Mutex::new(VecDeque::new()),
        flush_now: Notify::new(),
        durable: watch::Sender::new(0),
    });
    let mut loops = JoinSet::new();
    let listeners = [
        Some((sockets.dhcp, Via::Dhcp)),
        sockets.pxe.map(|s| (s, Via::Pxe)),
    ];
    for (sock, via) in listeners.into_iter().flatten() {
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
        let span = tracing::info_span!("dhcp_listener", port, via = ?via);
        loops.spawn(serve(Arc::clone(&shared), sock, via, cancel.clone()).instrument(span));
    }
    tracing::info!(mode = %shared.deps.config.mode, "dhcp serving");
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => flush(&shared).await,
            () = shared.flush_now.notified() => flush(&shared).await,
        }
    }
    while loops.join_next().await.is_some() {}
    // ACKs still held are not sent: their clients ask again and the next start answers.
    flush(&shared).await;
    tracing::info!("dhcp stopped; leases flushed");
}

/// Writes dirty leases in one durable transaction, then lets the ACKs that waited for them
/// go; on failure they stay dirty for the next round and their ACKs keep waiting.
async fn flush(shared: &Shared) {
    let now = shared.deps.recorder.now_ms();
    shared.expire_held(now);
    let (changes, upto, active) = {
        let mut leases = shared.leases();
        leases.sweep(now);
        (
            leases.take_dirty(),
            leases.latest_change(),
            leases.active(now),
        )
    };
    shared
        .deps
        .metrics
        .dhcp_leases
        .set(i64::try_from(active).unwrap_or(i64::MAX));
    if !changes.is_empty() {
        if let Err(e) = shared.deps.db.save_leases(&changes).await {
            tracing::error!(error = %e, leases = changes.len(), "cannot store DHCP leases; will retry");
            shared
                .leases()
                .mark_dirty(changes.into_iter().map(|(mac, _)| mac));
            return;
        }
    }
    shared.leases().mark_durable(upto);
    shared.durable.send_if_modified(|durable| {
        let moved = upto > *durable;
        *durable = (*durable).max(upto);
        moved
    });
}

async fn serve(shared: Arc<Shared>, sock: UdpSocket, via: Via, cancel: CancellationToken) {
    // Sockets bound by the caller (tests) may lack these; both calls are idempotent.
    if let Err(e) = socket::enable_pktinfo(&sock) {
        tracing::warn!(error = %e, "no IP_PKTINFO: replies use the interface address");
    }
    let sock = match sock
        .set_nonblocking(true)
        .and_then(|()| TokioUdpSocket::from_std(sock))
    {
        Ok(sock) => sock,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the DHCP socket with the runtime");
            return;
        }
    };
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo);
    let mut durable = shared.durable.subscribe();
    loop {
        let full = shared.holding_enough();
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = durable.changed() => {
                if changed.is_err() {
                    return;
                }
                for reply in shared.released(via) {
                    shared.send(&sock, &reply).await;
                }
                continue;
            }
            // Full: wait for a commit (above), or for the flusher's next round to expire
            // what its failing writes hold.
            () = tokio::time::sleep(FLUSH_EVERY), if full => continue,
            ready = sock.readable(), if !full => if let Err(e) = ready {
                tracing::error!(error = %e, "dhcp socket failed");
                return;
            },
        }
        for _ in 0..BURST {
            if shared.holding_enough() {
                break;
            }
            let received = sock.try_io(Interest::READABLE, || {
                socket::recv(&sock, &mut buf, &mut cmsg)
            });
            let rx = match received {
                Ok(rx) => rx,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends surface here; nothing to do about them.
                Err(e) => {
                    tracing::debug!(error = %e, "dhcp receive error");
                    continue;
                }
            };
            let packet = &buf[..rx.len.min(buf.len())];
            match shared.handle(via, packet, &rx) {
                Some((reply, None)) => shared.send(&sock, &reply).await,
                Some((reply, Some(change))) => shared.hold(via, change, reply),
                None => {}
            }
        }
        tokio::task::yield_now().await;
    }
}

impl Shared {
    async fn send(&self, sock: &TokioUdpSocket, reply: &Reply) {
        if let Err(e) = send(sock, &reply.out, reply.source, reply.ifindex).await {
            self.deps.metrics.dhcp_drop("send-error");
            tracing::warn!(error = %e, dest = ?reply.out.dest, "cannot send DHCP reply");
        }
    }
}

async fn send(
    sock: &TokioUdpSocket,
    out: &Outgoing,
    source: Option<Ipv4Addr>,
    ifindex: u32,
) -> io::Result<()> {
    let (dest, ifindex) = match out.dest {
        Dest::Unicast(addr) => (addr, 0),
        Dest::Broadcast(port) => (SocketAddrV4::new(Ipv4Addr::BROADCAST, port), ifindex),
    };
    loop {
        sock.writable().await?;
        let sent = sock.try_io(Interest::WRITABLE, || {
            socket::send(sock, &out.bytes, dest, source, ifindex)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result.map(|_| ()),
        }
    }
}

impl Shared {
    /// Parses, decides and records one packet; returns the reply to send and, for an ACK
    /// whose binding is not durable yet, the lease change it must wait for. Never waits: the
    /// lease lock is held for microseconds.
    fn handle(
        &self,
        via: Via,
        packet: &[u8],
        rx: &socket::Received,
    ) -> Option<(Reply, Option<u64>)> {
        let deps = &self.deps;
        let iface = deps.interface.index;
        if rx.ifindex != 0 && iface != 0 && rx.ifindex != iface {
            deps.metrics.dhcp_drop("other-interface");
            return None;
        }
        let req = match wire::parse(packet) {
            Ok(req) => req,
            Err(reason) => {
                deps.metrics.dhcp_drop(reason);
                tracing::debug!(src = %rx.src, reason, len = packet.len(), "dhcp packet dropped");
                return None;
            }
        };
        let span =
            tracing::info_span!("dhcp", mac = %req.mac, xid = %format_args!("{:#010x}", req.xid));
        let _entered = span.enter();
        let snapshot = deps.inventory.snapshot();
        let server_ip = rx.local.unwrap_or(deps.interface.cidr.addr);
        let now = deps.recorder.now_ms();
        let ctx = Ctx {
            config: &deps.config,
            boot: &deps.boot,
            snapshot: &snapshot,
            server_ip,
            now_ms: now,
            via,
        };
        let decided = catch_unwind(AssertUnwindSafe(|| {
            let mut leases = self.leases();
            let (outcome, outgoing) = decide::respond(&ctx, &req, rx.src, &mut leases);
            let unwritten = leases.unwritten(&req.mac);
            (outcome, outgoing, unwritten)
        }));
        let Ok((outcome, outgoing, unwritten)) = decided else {
            deps.metrics.dhcp_drop("internal-error");
            tracing::error!(kind = ?req.kind, "dhcp decision panicked; packet dropped");
            return None;
        };
        if let Some((ip, until)) = outcome.leased {
            deps.neighbours.learn(ip, req.mac, until, now);
        }
        if let Some(ip) = outcome.ended {
            deps.neighbours.forget(ip, req.mac);
        }
        if let Some((kind, detail)) = &outcome.event {
            deps.recorder.observe_packet(Observation {
                mac: req.mac,
                at: now,
                kind: *kind,
                detail: detail.clone(),
                arch: req.arch,
                smbios_uuid: req.smbios_uuid(),
                serial: None,
            });
        }
        if let Some(warning) = &outcome.warn {
            tracing::warn!(kind = ?req.kind, arch = ?req.arch, "{warning}");
        }
        if let Some(reason) = outcome.drop {
            deps.metrics.dhcp_drop(reason);
            tracing::debug!(kind = ?req.kind, arch = ?req.arch, reason, "no reply");
        }
        let detail = outcome
            .event
            .as_ref()
            .map(|(_, d)| d.as_str())
            .unwrap_or("");
        let Some(out) = outgoing else {
            if outcome.drop.is_none() {
                tracing::info!(kind = ?req.kind, detail, "handled");
            }
            return None;
        };
        deps.metrics.dhcp_reply(out.kind.label());
        // One info line per finished exchange: an ACK, a NAK, or in proxy mode the offer (most
        // firmware boots from the proxy offer alone, without a REQUEST on 4011); full mode's
        // offers (and their retransmissions) at debug.
        match out.kind {
            ReplyKind::Ack | ReplyKind::Nak | ReplyKind::ProxyOffer | ReplyKind::ProxyAck => {
                tracing::info!(reply = out.kind.label(), dest = ?out.dest, detail, "reply")
            }
            _ => tracing::debug!(reply = out.kind.label(), dest = ?out.dest, detail, "reply"),
        }
        let ifindex = if rx.ifindex != 0 { rx.ifindex } else { iface };
        let wait = unwritten.filter(|_| out.kind == ReplyKind::Ack);
        let reply = Reply {
            out,
            source: Some(server_ip),
            ifindex,
        };
        Some((reply, wait))
    }
}
