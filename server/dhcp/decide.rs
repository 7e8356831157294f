//! The decision: a pure function from a request, the inventory snapshot, the lease table and
//! the time to the reply to send, the event to record and the address learned. No I/O here
//! except one `stat` of the arm64 iPXE binary, which is asked for rarely.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Message, MessageType};

use super::leases::{LeaseTable, DECLINE_QUARANTINE_MS, OFFER_HOLD_MS};
use super::wire::{self, ClientClass, Guid, Request, PXE_VENDOR_OPTS};
use crate::config::{BootConfig, DhcpConfig, DhcpMode};
use crate::inventory::Snapshot;
use crate::model::{EventKind, Mac, Machine};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// The BOOTP `file` and `sname` fields' sizes; dhcproto panics past them.
const FILE_MAX: usize = 128;
const SNAME_MAX: usize = 64;
/// BIOS iPXE for PXE ROMs (arch 0).
pub const BIOS_BINARY: &str = "undionly.kpxe";

/// Which socket a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The DHCP server port (67).
    Dhcp,
    /// The PXE boot-server port (4011).
    Pxe,
}

/// Everything a decision reads besides the request and the lease table.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub config: &'a DhcpConfig,
    pub boot: &'a BootConfig,
    pub snapshot: &'a Snapshot,
    /// Our address on the receiving interface: option 54.
    pub server_ip: Ipv4Addr,
    pub now_ms: i64,
    pub via: Via,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
    ProxyOffer,
    ProxyAck,
}

impl ReplyKind {
    /// The `kind` label of the `dhcp_replies` metric.
    pub fn label(self) -> &'static str {
        match self {
            ReplyKind::Offer => "offer",
            ReplyKind::Ack => "ack",
            ReplyKind::Nak => "nak",
            ReplyKind::ProxyOffer => "proxy-offer",
            ReplyKind::ProxyAck => "proxy-ack",
        }
    }

    pub fn event(self) -> EventKind {
        match self {
            ReplyKind::Offer => EventKind::DhcpOffer,
            ReplyKind::Ack => EventKind::DhcpAck,
            ReplyKind::Nak => EventKind::DhcpNak,
            ReplyKind::ProxyOffer => EventKind::ProxyOffer,
            ReplyKind::ProxyAck => EventKind::ProxyAck,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub kind: ReplyKind,
    pub msg: Message,
}

/// Where a reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Unicast(SocketAddrV4),
    /// 255.255.255.255 on this port, out of the receiving interface.
    Broadcast(u16),
}

/// The result of a decision.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub reply: Option<Reply>,
    /// Why nothing was sent (the `dhcp_dropped` reason), when that is a drop.
    pub drop: Option<&'static str>,
    /// The event to record for this machine.
    pub event: Option<(EventKind, String)>,
    /// An address this server has just bound to this MAC, with the lease's end (for
    /// `Neighbours`, the evidence of who holds an address). Only an ACK of our own lease
    /// sets it: nothing the client writes (`ciaddr`, option 50, an INFORM) ever does.
    pub leased: Option<(Ipv4Addr, i64)>,
    /// An address whose lease this MAC gave back (RELEASE, DECLINE).
    pub ended: Option<Ipv4Addr>,
    /// Something an operator should see in the log.
    pub warn: Option<String>,
}

impl Outcome {
    fn dropped(reason: &'static str) -> Outcome {
        Outcome {
            drop: Some(reason),
            ..Outcome::default()
        }
    }
}

/// The boot fields for a netboot client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    /// A TFTP file name or a full URL.
    pub file: String,
    /// UEFI HTTP boot: answer with option 60 `HTTPClient`.
    pub http: bool,
    pub ipxe: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootChoice {
    Boot(Boot),
    /// Not a PXE/HTTP client: no boot fields.
    NotNetboot,
    /// A netboot client we have nothing for.
    Refused {
        reason: &'static str,
        why: String,
    },
}

/// Picks the boot file from the raw option 93 value (dhcproto calls 7 `BC` and 9 `X86_64`, so
/// this never uses its names). Any iPXE gets the HTTP script, so there is no chainload loop.
pub fn choose_boot(boot: &BootConfig, req: &Request, machine: Option<&Machine>) -> BootChoice {
    if !req.is_netboot() {
        return BootChoice::NotNetboot;
    }
    let refused = |reason, why: String| BootChoice::Refused { reason, why };
    let file = if req.ipxe {
        boot.script_url()
    } else {
        let Some(arch) = req.arch else {
            return refused(
                "no-arch",
                "netboot client sent no architecture (option 93)".into(),
            );
        };
        let efi = machine
            .and_then(|m| m.efi_binary)
            .unwrap_or(boot.efi_binary)
            .as_str();
        let arm64 = || {
            if boot.ipxe_dir.join(&boot.arm64_binary).is_file() {
                Ok(boot.arm64_binary.clone())
            } else {
                Err(refused(
                    "arm64-missing",
                    format!(
                        "arm64 client, but {} is not in {}; add it or pass --arm64-binary",
                        boot.arm64_binary,
                        boot.ipxe_dir.display()
                    ),
                ))
            }
        };
        match (req.class, arch) {
            (ClientClass::Pxe, 0) => BIOS_BINARY.to_string(),
            (ClientClass::Pxe, 7 | 9) => efi.to_string(),
            (ClientClass::Pxe, 11) => match arm64() {
                Ok(file) => file,
                Err(refusal) => return refusal,
            },
            (ClientClass::Http, 15 | 16) => format!("{}/ipxe/{efi}", boot.http_base()),
            (ClientClass::Http, 19) => match arm64() {
                Ok(file) => format!("{}/ipxe/{file}", boot.http_base()),
                Err(refusal) => return refusal,
            },
            _ => {
                return refused(
                    "unknown-arch",
                    format!("unsupported client architecture {arch}"),
                )
            }
        }
    };
    if file.len() > FILE_MAX {
        return refused(
            "file-too-long",
            format!("boot file {file} is longer than the {FILE_MAX}-byte BOOTP field"),
        );
    }
    BootChoice::Boot(Boot {
        file,
        http: req.class == ClientClass::Http && !req.ipxe,
        ipxe: req.ipxe,
    })
}

/// Decides what to do with one request.
pub fn decide(ctx: &Ctx<'_>, req: &Request, leases: &mut LeaseTable) -> Outcome {
    let mut outcome = match (ctx.config.mode, ctx.via) {
        (DhcpMode::Off, _) => Outcome::dropped("disabled"),
        (DhcpMode::Proxy, _) | (DhcpMode::Full, Via::Pxe) => proxy(ctx, req),
        (DhcpMode::Full, Via::Dhcp) => full(ctx, req, leases),
    };
    // Only netboot clients become machines (an event for an unknown MAC creates its row): an
    // ordinary DHCP client bootplane does not know is served but not remembered.
    if req.class == ClientClass::Plain && !ctx.snapshot.by_mac.contains_key(&req.mac) {
        outcome.event = None;
    }
    outcome
}

/// An encoded reply and where it goes.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub kind: ReplyKind,
    pub bytes: Vec<u8>,
    pub dest: Dest,
}

/// Decide, then encode: the whole hot path between parsing and sending.
pub fn respond(
    ctx: &Ctx<'_>,
    req: &Request,
    src: SocketAddrV4,
    leases: &mut LeaseTable,
) -> (Outcome, Option<Outgoing>) {
    let mut outcome = decide(ctx, req, leases);
    let outgoing = outcome.reply.take().and_then(|reply| {
        match wire::encode(&reply.msg, req.relay_agent.as_deref()) {
            Ok(bytes) => Some(Outgoing {
                kind: reply.kind,
                bytes,
                dest: destination(req, reply.kind, ctx.via, src),
            }),
            Err(reason) => {
                outcome.drop = Some(reason);
                None
            }
        }
    });
    (outcome, outgoing)
}

/// Where the reply to `req` goes.
pub fn destination(req: &Request, kind: ReplyKind, via: Via, src: SocketAddrV4) -> Dest {
    let from_client_ports = matches!(src.port(), SERVER_PORT | CLIENT_PORT);
    if via == Via::Pxe || !from_client_ports {
        // Port 4011 answers go back where the request came from; so do requests from any
        // other port (test clients on ephemeral ports, dora-style).
        return if src.ip().is_unspecified() {
            Dest::Broadcast(src.port())
        } else {
            Dest::Unicast(src)
        };
    }
    if !req.giaddr.is_unspecified() {
        return Dest::Unicast(SocketAddrV4::new(req.giaddr, SERVER_PORT));
    }
    if kind == ReplyKind::Nak || req.ciaddr.is_unspecified() {
        // No ARP entry for the client yet (dora injects one; we broadcast instead).
        return Dest::Broadcast(CLIENT_PORT);
    }
    Dest::Unicast(SocketAddrV4::new(req.ciaddr, CLIENT_PORT))
}

fn proxy(ctx: &Ctx<'_>, req: &Request) -> Outcome {
    let kind = match (ctx.via, req.kind) {
        (Via::Dhcp, MessageType::Discover) => ReplyKind::ProxyOffer,
        (Via::Dhcp, MessageType::Request) => ReplyKind::ProxyAck,
        (Via::Pxe, MessageType::Request | MessageType::Inform) => ReplyKind::ProxyAck,
        _ => return Outcome::dropped("ignored-type"),
    };
    if !req.is_netboot() {
        return Outcome::dropped("not-pxe");
    }
    if req.guid == Guid::Invalid {
        return Outcome::dropped("bad-guid");
    }
    let machine = ctx.snapshot.by_mac.get(&req.mac);
    let boot = match choose_boot(ctx.boot, req, machine) {
        BootChoice::Boot(boot) => boot,
        BootChoice::NotNetboot => return Outcome::dropped("not-pxe"),
        // Not answered, but recorded: the machine shows up in the inventory with why, so an
        // operator sees the arm64 box that cannot boot rather than nothing at all.
        BootChoice::Refused { reason, why } => {
            return Outcome {
                event: Some((EventKind::NotServed, why.clone())),
                warn: (reason != "unknown-arch").then_some(why),
                ..Outcome::dropped(reason)
            }
        }
    };
    let msg_type = match kind {
        ReplyKind::ProxyOffer => MessageType::Offer,
        _ => MessageType::Ack,
    };
    let mut msg = wire::reply_skeleton(req, msg_type, ctx.server_ip);
    if kind == ReplyKind::ProxyAck {
        msg.set_ciaddr(req.ciaddr);
    }
    set_boot(&mut msg, ctx, req, &boot, DhcpMode::Proxy);
    // The address the client says it has (ciaddr on 4011, option 50 on 67) goes into the
    // event as what it said, never into `Neighbours`: another server leased it, if anyone did.
    let claimed = nonzero(req.ciaddr).or(match (ctx.via, req.kind) {
        (Via::Dhcp, MessageType::Request) => req.requested_ip,
        _ => None,
    });
    Outcome {
        reply: Some(Reply { kind, msg }),
        event: Some((kind.event(), detail(Some(&boot.file), req.arch, claimed))),
        ..Outcome::default()
    }
}

/// Boot fields: siaddr/sname/file plus the options the firmware needs to trust them.
fn set_boot(msg: &mut Message, ctx: &Ctx<'_>, req: &Request, boot: &Boot, mode: DhcpMode) {
    let advertise = ctx.boot.advertise_ip;
    let sname = advertise.to_string();
    msg.set_siaddr(advertise);
    if sname.len() < SNAME_MAX {
        msg.set_sname_str(&sname);
    }
    if boot.file.len() <= FILE_MAX {
        msg.set_fname_str(&boot.file);
    }
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::BootfileName(boot.file.as_bytes().to_vec()));
    if boot.http {
        // UEFI HTTP boot drops offers without HTTPClient (xcat2/xcat-core#7743).
        opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else {
        if !boot.ipxe {
            opts.insert(DhcpOption::TFTPServerName(sname.into_bytes()));
        }
        if mode == DhcpMode::Proxy {
            // PXEClient + option 43 with discovery control 8 and a boot file: EDK2 classifies
            // this as a PXE10 proxy offer and boots the file straight away; firmware that asks
            // port 4011 anyway gets the same answer there.
            opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            opts.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTS.to_vec()));
        }
    }
    if let Guid::Valid(guid) = &req.guid {
        opts.insert(DhcpOption::ClientMachineIdentifier(guid.to_vec()));
    }
    if mode == DhcpMode::Full && boot.ipxe {
        opts.insert(wire::ipxe_no_pxedhcp());
    }
}

/// The address and network settings handed to one client.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Assignment {
    ip: Ipv4Addr,
    mask: Ipv4Addr,
    router: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    hostname: Option<String>,
}

fn full(ctx: &Ctx<'_>, req: &Request, leases: &mut LeaseTable) -> Outcome {
    match req.kind {
        MessageType::Discover => full_discover(ctx, req, leases),
        MessageType::Request => full_request(ctx, req, leases),
        MessageType::Decline => full_decline(ctx, req, leases),
        MessageType::Release => full_release(ctx, req, leases),
        MessageType::Inform => full_inform(ctx, req, leases),
        _ => Outcome::dropped("ignored-type"),
    }
}

fn full_discover(ctx: &Ctx<'_>, req: &Request, leases: &mut LeaseTable) -> Outcome {
    let machine = ctx.snapshot.by_mac.get(&req.mac);
    let mut assignment = expected(ctx, req, leases, machine);
    if assignment.is_none() && pool_applies(ctx, req) {
        let wanted = req
            .requested_ip
            .filter(|ip| pool_usable(ctx, leases, req, *ip));
        let ip = match (wanted, ctx.config.pool) {
            (Some(ip), _) => Some(ip),
            (None, Some(pool)) => leases.allocate(pool, req.mac, ctx.now_ms, |ip| {
                !reserved(ctx, ip)
                    && ctx
                        .snapshot
                        .by_ip
                        .get(&ip)
                        .is_none_or(|owner| *owner == req.mac)
            }),
            (None, None) => None,
        };
        match ip {
            Some(ip) => assignment = Some(pool_assignment(ctx, ip, machine)),
            None => {
                return Outcome {
                    warn: Some("the dynamic pool is exhausted".into()),
                    ..Outcome::dropped("pool-exhausted")
                }
            }
        }
    }
    let Some(assignment) = assignment else {
        // Nothing to offer, but an unknown machine is still worth discovering.
        let event = machine.is_none().then(|| {
            let arch = req.arch.map(|a| format!(" arch={a}")).unwrap_or_default();
            (
                EventKind::Discovered,
                format!("dhcp discover, no address to offer (no pool){arch}"),
            )
        });
        return Outcome {
            event,
            ..Outcome::dropped("no-address")
        };
    };
    leases.offer(req.mac, assignment.ip, ctx.now_ms + OFFER_HOLD_MS);
    let lease = Some(ctx.now_ms + i64::from(ctx.config.lease_secs) * 1000);
    address_reply(ctx, req, machine, ReplyKind::Offer, &assignment, lease)
}

fn full_request(ctx: &Ctx<'_>, req: &Request, leases: &mut LeaseTable) -> Outcome {
    if let Some(server) = req.server_id {
        if !is_us(ctx, server) {
            // SELECTING another server's offer.
            leases.forget_offer(req.mac);
            return Outcome::dropped("other-server");
        }
    }
    let Some(requested) = req.requested_ip.or(nonzero(req.ciaddr)) else {
        return Outcome::dropped("malformed");
    };
    let machine = ctx.snapshot.by_mac.get(&req.mac);
    let verdict = match expected(ctx, req, leases, machine) {
        Some(a) if a.ip == requested => Ok(a),
        Some(a) => Err(format!("requested={requested} expected={}", a.ip)),
        None if pool_applies(ctx, req) && pool_usable(ctx, leases, req, requested) => {
            Ok(pool_assignment(ctx, requested, machine))
        }
        // With a pool we are the segment's authority; without one, unknown clients may
        // belong to another server, so stay silent.
        None if pool_applies(ctx, req) => Err(format!("requested={requested} not available")),
        None => return Outcome::dropped("no-binding"),
    };
    match verdict {
        Ok(assignment) => {
            let hostname = assignment.hostname.clone().or(req.hostname.clone());
            let expires = match cached_lease(ctx, leases, req.mac, assignment.ip, &hostname) {
                Some(expires) => expires,
                None => {
                    let expires = ctx.now_ms + i64::from(ctx.config.lease_secs) * 1000;
                    leases.bind(req.mac, assignment.ip, expires, hostname);
                    expires
                }
            };
            address_reply(
                ctx,
                req,
                machine,
                ReplyKind::Ack,
                &assignment,
                Some(expires),
            )
        }
        Err(why) => {
            let mut msg = wire::reply_skeleton(req, MessageType::Nak, ctx.server_ip);
            if !req.giaddr.is_unspecified() {
                msg.set_flags(msg.flags().set_broadcast());
            }
            msg.opts_mut().insert(DhcpOption::Message(
                "requested address is not yours".to_string(),
            ));
            Outcome {
                reply: Some(Reply {
                    kind: ReplyKind::Nak,
                    msg,
                }),
                event: Some((EventKind::DhcpNak, why)),
                ..Outcome::default()
            }
        }
    }
}

fn full_decline(ctx: &Ctx<'_>, req: &Request, leases: &mut LeaseTable) -> Outcome {
    if req.server_id.is_some_and(|s| !is_us(ctx, s)) {
        return Outcome::dropped("other-server");
    }
    let Some(ip) = req.requested_ip else {
        return Outcome::dropped("malformed");
    };
    leases.release(req.mac, ip);
    leases.quarantine(ip, ctx.now_ms + DECLINE_QUARANTINE_MS);
    Outcome {
        ended: Some(ip),
        event: Some((EventKind::DhcpDecline, format!("ip={ip}"))),
        warn: Some(format!(
            "client declined {ip}: another host answers for it; kept out of the pool for {} s",
            DECLINE_QUARANTINE_MS / 1000
        )),
        ..Outcome::default()
    }
}

fn full_release(ctx: &Ctx<'_>, req: &Request, leases: &mut LeaseTable) -> Outcome {
    if req.server_id.is_some_and(|s| !is_us(ctx, s)) {
        return Outcome::dropped("other-server");
    }
    let Some(ip) = nonzero(req.ciaddr) else {
        return Outcome::dropped("malformed");
    };
    let freed = leases.release(req.mac, ip);
    let detail = if freed {
        format!("ip={ip}")
    } else {
        format!("ip={ip} (no lease held)")
    };
    Outcome {
        ended: Some(ip),
        event: Some((EventKind::DhcpRelease, detail)),
        ..Outcome::default()
    }
}

fn full_inform(ctx: &Ctx<'_>, req: &Request, leases: &LeaseTable) -> Outcome {
    let Some(ip) = nonzero(req.ciaddr) else {
        return Outcome::dropped("malformed");
    };
    let machine = ctx.snapshot.by_mac.get(&req.mac);
    let assignment = expected(ctx, req, leases, machine)
        .filter(|a| a.ip == ip)
        .unwrap_or_else(|| pool_assignment(ctx, ip, machine));
    address_reply(ctx, req, machine, ReplyKind::Ack, &assignment, None)
}

/// Lease caching, as ISC Kea's `cache-threshold`: a client that renews a lease granted less
/// than this fraction of its lifetime ago keeps it as it is, told the time it has left, and
/// nothing is written. Firmware, iPXE and the booted OS each run DHCP within minutes of each
/// other; a client stuck in a boot loop or a load test renews many times a second.
pub const LEASE_CACHE_THRESHOLD: f64 = 0.25;

/// The expiry of `mac`'s bound lease on `ip` if it can be handed back unchanged.
fn cached_lease(
    ctx: &Ctx<'_>,
    leases: &LeaseTable,
    mac: Mac,
    ip: Ipv4Addr,
    hostname: &Option<String>,
) -> Option<i64> {
    let lease = leases.get(&mac)?;
    let lifetime_ms = i64::from(ctx.config.lease_secs) * 1000;
    let left = lease.expires_at - ctx.now_ms;
    let fresh = left as f64 >= (1.0 - LEASE_CACHE_THRESHOLD) * lifetime_ms as f64;
    (lease.bound && lease.ip == ip && &lease.hostname == hostname && fresh && left <= lifetime_ms)
        .then_some(lease.expires_at)
}

/// OFFER or ACK with an address (or, for INFORM, only the settings).
fn address_reply(
    ctx: &Ctx<'_>,
    req: &Request,
    machine: Option<&Machine>,
    kind: ReplyKind,
    a: &Assignment,
    lease_until: Option<i64>,
) -> Outcome {
    let with_lease = lease_until.is_some();
    let msg_type = match kind {
        ReplyKind::Offer => MessageType::Offer,
        _ => MessageType::Ack,
    };
    let mut msg = wire::reply_skeleton(req, msg_type, ctx.server_ip);
    if with_lease {
        msg.set_yiaddr(a.ip);
    }
    if kind == ReplyKind::Ack {
        msg.set_ciaddr(req.ciaddr);
    }
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::SubnetMask(a.mask));
    if let Some(router) = a.router {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    if !a.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(a.dns.clone()));
    }
    if let Some(hostname) = &a.hostname {
        opts.insert(DhcpOption::Hostname(hostname.clone()));
    }
    if let Some(until) = lease_until {
        // Whole seconds left, never more than configured (a cached lease has less).
        let secs = u32::try_from(((until - ctx.now_ms) / 1000).max(1))
            .unwrap_or(ctx.config.lease_secs)
            .min(ctx.config.lease_secs);
        opts.insert(DhcpOption::AddressLeaseTime(secs));
        opts.insert(DhcpOption::Renewal(secs / 2));
        opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
    let mut warn = None;
    let mut file = None;
    if req.guid != Guid::Invalid {
        match choose_boot(ctx.boot, req, machine) {
            BootChoice::Boot(boot) => {
                set_boot(&mut msg, ctx, req, &boot, DhcpMode::Full);
                file = Some(boot.file);
            }
            BootChoice::NotNetboot => {}
            // We are the segment's DHCP server: the address still goes out, without a boot
            // file, so the firmware fails over to its next boot device at once.
            BootChoice::Refused { why, .. } => warn = Some(why),
        }
    }
    // An ACK that binds a lease is evidence of who holds the address; an INFORM's ACK only
    // answers what the client says it already has.
    let leased = lease_until
        .filter(|_| kind == ReplyKind::Ack)
        .map(|until| (a.ip, until));
    Outcome {
        reply: Some(Reply { kind, msg }),
        event: Some((kind.event(), {
            let mut d = detail(file.as_deref(), req.arch, Some(a.ip));
            // The operator's timeline says why this netboot client got no boot file.
            if let Some(why) = &warn {
                d.push_str(" not served: ");
                d.push_str(why);
            }
            d
        })),
        leased,
        warn,
        ..Outcome::default()
    }
}

/// What this client should have: its static address, else its current pool lease.
fn expected(
    ctx: &Ctx<'_>,
    req: &Request,
    leases: &LeaseTable,
    machine: Option<&Machine>,
) -> Option<Assignment> {
    if let Some(cidr) = machine.and_then(|m| m.ip) {
        let machine = machine?;
        return Some(Assignment {
            ip: cidr.addr,
            mask: cidr.netmask(),
            router: machine.gateway.or(ctx.config.router),
            dns: if machine.dns.is_empty() {
                ctx.config.dns.clone()
            } else {
                machine.dns.clone()
            },
            hostname: machine.hostname.clone(),
        });
    }
    if !pool_applies(ctx, req) {
        return None;
    }
    let ip = leases.get(&req.mac)?.ip;
    pool_usable(ctx, leases, req, ip).then(|| pool_assignment(ctx, ip, machine))
}

fn pool_assignment(ctx: &Ctx<'_>, ip: Ipv4Addr, machine: Option<&Machine>) -> Assignment {
    let dns = machine
        .map(|m| m.dns.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ctx.config.dns.clone());
    Assignment {
        ip,
        mask: ctx.config.subnet.netmask(),
        router: machine.and_then(|m| m.gateway).or(ctx.config.router),
        dns,
        hostname: machine.and_then(|m| m.hostname.clone()),
    }
}

/// The pool serves clients on our own segment (or relayed from inside our subnet).
fn pool_applies(ctx: &Ctx<'_>, req: &Request) -> bool {
    ctx.config.pool.is_some()
        && (req.giaddr.is_unspecified() || ctx.config.subnet.contains(req.giaddr))
}

fn pool_usable(ctx: &Ctx<'_>, leases: &LeaseTable, req: &Request, ip: Ipv4Addr) -> bool {
    ctx.config.pool.is_some_and(|p| p.contains(ip))
        && !reserved(ctx, ip)
        && ctx
            .snapshot
            .by_ip
            .get(&ip)
            .is_none_or(|owner| *owner == req.mac)
        && leases.free_for(ip, req.mac, ctx.now_ms)
}

/// Addresses never handed out dynamically.
fn reserved(ctx: &Ctx<'_>, ip: Ipv4Addr) -> bool {
    let subnet = ctx.config.subnet;
    ip == subnet.network()
        || ip == subnet.broadcast()
        || ip == ctx.boot.advertise_ip
        || ip == ctx.server_ip
        || Some(ip) == ctx.config.router
}

fn is_us(ctx: &Ctx<'_>, ip: Ipv4Addr) -> bool {
    ip == ctx.server_ip || ip == ctx.boot.advertise_ip
}

fn nonzero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (!ip.is_unspecified()).then_some(ip)
}

/// `file=undionly.kpxe arch=0 ip=10.0.0.5`, leaving out what is unknown.
fn detail(file: Option<&str>, arch: Option<u16>, ip: Option<Ipv4Addr>) -> String {
    let mut parts = Vec::with_capacity(3);
    if let Some(file) = file {
        parts.push(format!("file={file}"));
    }
    if let Some(arch) = arch {
        parts.push(format!("arch={arch}"));
    }
    if let Some(ip) = ip {
        parts.push(format!("ip={ip}"));
    }
    parts.join(" ")
}
