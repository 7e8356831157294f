//! Crash injection under full-DHCP load: the real `bootplane serve` as the segment's DHCP
//! server on loopback, clients with distinct MACs running DISCOVER → OFFER → REQUEST → ACK (and
//! renewals of leases they hold, some with a new hostname, which rewrites the lease) as fast as
//! it answers, a SIGKILL at a seeded random moment, a restart on the same data directory.
//!
//! After every restart: SQLite's integrity check passes; every lease the appliance ACKed before
//! any kill is in its `leases` table for that MAC (read before the first packet reaches the
//! restarted appliance, so nothing re-binds a forgotten lease first); and the appliance itself
//! gives the leases ACKed in this run (and a seeded sample of older ones) back to their MACs:
//! a DISCOVER is offered the same address, a REQUEST for it is ACKed. Across all runs no
//! address is ever offered or ACKed to a MAC while another MAC holds it from an ACK, and no
//! MAC that holds a lease is told another address or refused its own.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootplane::model::Mac;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::{campaign, kill, wait_healthy, Rng};
use crate::kit;

/// The dynamic pool: one allocation scan covers it (the appliance looks at 65,536 addresses at
/// most).
const POOL: &str = "127.64.0.1-127.64.255.254";
/// New leases in a whole campaign at most, below the pool's 65,534 addresses.
const NEW_IN_ALL: usize = 60_000;
/// New leases per run at most (then the clients only renew): 400, fewer in a campaign so long
/// that 400 a run would not fit in the pool.
const NEW_PER_RUN: usize = 400;
/// The lease time: 30 days, so no lease ends during a campaign, however long (a lease that
/// ended could rightly go to another MAC).
const LEASE_SECS: &str = "2592000";
/// Clients asking at once.
const CLIENTS: u64 = 4;
/// How long a client waits for an answer before it asks again.
const ANSWER_WAIT: Duration = Duration::from_millis(300);
/// Leases of earlier runs asked for again through the appliance after each restart.
const OLDER_SAMPLE: usize = 100;

/// Everything the appliance answered, over all runs, and what broke the rules.
#[derive(Default)]
struct Ledger {
    /// The address each MAC was ACKed (no lease ends during a campaign: `LEASE_SECS`).
    held: BTreeMap<Mac, Ipv4Addr>,
    holder: HashMap<Ipv4Addr, Mac>,
    /// Leases bound in the current run, in order.
    this_run: Vec<Mac>,
    acks: u64,
    renewals: u64,
    violations: Vec<String>,
}

impl Ledger {
    fn acked(&mut self, mac: Mac, ip: Ipv4Addr, renewal: bool) {
        self.acks += 1;
        if renewal {
            self.renewals += 1;
        }
        if let Some(other) = self.holder.get(&ip).filter(|other| **other != mac) {
            self.violations
                .push(format!("{ip} ACKed to {mac} while {other} holds it"));
        }
        match self.held.get(&mac) {
            Some(had) if *had != ip => self
                .violations
                .push(format!("{mac} holds {had} and was ACKed {ip}")),
            Some(_) => {}
            None => self.this_run.push(mac),
        }
        self.held.insert(mac, ip);
        self.holder.insert(ip, mac);
    }

    fn offered(&mut self, mac: Mac, ip: Ipv4Addr) {
        if let Some(other) = self.holder.get(&ip).filter(|other| **other != mac) {
            self.violations
                .push(format!("{ip} offered to {mac} while {other} holds it"));
        }
        if let Some(had) = self.held.get(&mac).filter(|had| **had != ip) {
            self.violations
                .push(format!("{mac} holds {had} and was offered {ip}"));
        }
    }
}

/// What a client puts in a packet.
#[derive(Clone, Copy, Default)]
struct Ask<'a> {
    ciaddr: Option<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
    hostname: Option<&'a str>,
    /// A PXE firmware (options 60, 93, 97): it becomes a machine, with events to write.
    pxe: bool,
}

fn packet(kind: MessageType, mac: Mac, xid: u32, ask: Ask<'_>) -> Vec<u8> {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_chaddr(&mac.0)
        .set_ciaddr(ask.ciaddr.unwrap_or(Ipv4Addr::UNSPECIFIED));
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    if ask.pxe {
        kit::dhcp::insert_pxe_options(opts);
    }
    if let Some(ip) = ask.requested {
        opts.insert(DhcpOption::RequestedIpAddress(ip));
    }
    if let Some(ip) = ask.server {
        opts.insert(DhcpOption::ServerIdentifier(ip));
    }
    if let Some(name) = ask.hostname {
        opts.insert(DhcpOption::Hostname(name.to_string()));
    }
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

/// A DHCP client on its own loopback socket (the appliance answers a client port other than
/// 68 at the address it came from).
struct Client {
    sock: tokio::net::UdpSocket,
    server: SocketAddr,
    rng: Rng,
}

/// An answer: its type, `yiaddr` and server identifier.
struct Answer {
    kind: Option<MessageType>,
    yiaddr: Ipv4Addr,
    server: Option<Ipv4Addr>,
}

impl Client {
    async fn new(server: SocketAddr, seed: u64) -> Client {
        Client {
            sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            rng: Rng::new(seed),
        }
    }

    /// Sends one packet and waits `ANSWER_WAIT` for the answer with its transaction ID.
    async fn ask(&mut self, kind: MessageType, mac: Mac, ask: Ask<'_>) -> Option<Answer> {
        let xid = self.rng.next() as u32;
        self.sock
            .send_to(&packet(kind, mac, xid, ask), self.server)
            .await
            .ok()?;
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            let Ok(msg) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if msg.xid() != xid {
                continue;
            }
            let server = match msg.opts().get(dhcproto::v4::OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
                _ => None,
            };
            return Some(Answer {
                kind: msg.opts().msg_type(),
                yiaddr: msg.yiaddr(),
                server,
            });
        }
    }

    /// Asks until answered, up to `tries` times.
    async fn ask_until(
        &mut self,
        kind: MessageType,
        mac: Mac,
        ask: Ask<'_>,
        tries: usize,
    ) -> Option<Answer> {
        for _ in 0..tries {
            if let Some(answer) = self.ask(kind, mac, ask).await {
                return Some(answer);
            }
        }
        None
    }
}

fn mac_of(n: u32) -> Mac {
    let [_, a, b, c] = n.to_be_bytes();
    Mac([0x02, 0x42, 0x01, a, b, c])
}

/// One client's load until `stop`: new leases while `new_left` lasts (one in eight a PXE
/// client), renewals of its own leases (mostly the newest, whose write may not have happened
/// yet; half of them with a new hostname, which rewrites the lease).
async fn load(
    mut client: Client,
    ledger: Arc<Mutex<Ledger>>,
    next_mac: Arc<AtomicU32>,
    new_left: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) {
    let mut mine: Vec<(Mac, Ipv4Addr)> = Vec::new();
    let mut renamed = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let new = (mine.is_empty() || client.rng.below(4) != 0)
            && new_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
        if new {
            let mac = mac_of(next_mac.fetch_add(1, Ordering::Relaxed));
            let pxe = client.rng.below(8) == 0;
            let ask = Ask {
                pxe,
                ..Ask::default()
            };
            let Some(offer) = client.ask_until(MessageType::Discover, mac, ask, 3).await else {
                continue;
            };
            if offer.kind != Some(MessageType::Offer) {
                let what = offer.kind;
                ledger
                    .lock()
                    .unwrap()
                    .violations
                    .push(format!("DISCOVER of new {mac} answered {what:?}"));
                continue;
            }
            ledger.lock().unwrap().offered(mac, offer.yiaddr);
            let ask = Ask {
                requested: Some(offer.yiaddr),
                server: offer.server,
                pxe,
                ..Ask::default()
            };
            let Some(ack) = client.ask_until(MessageType::Request, mac, ask, 3).await else {
                continue;
            };
            let mut ledger = ledger.lock().unwrap();
            if ack.kind == Some(MessageType::Ack) && ack.yiaddr == offer.yiaddr {
                ledger.acked(mac, ack.yiaddr, false);
                mine.push((mac, ack.yiaddr));
            } else {
                let (what, got) = (ack.kind, ack.yiaddr);
                ledger.violations.push(format!(
                    "{mac} requested its offer {} and was answered {what:?} {got}",
                    offer.yiaddr
                ));
            }
        } else if !mine.is_empty() {
            let len = mine.len() as u64;
            let pick = if client.rng.below(4) != 0 {
                len - 1 - client.rng.below(len.min(8))
            } else {
                client.rng.below(len)
            };
            let (mac, ip) = mine[pick as usize];
            let hostname = (client.rng.below(2) == 0).then(|| {
                renamed += 1;
                format!("h{renamed}")
            });
            let ask = Ask {
                ciaddr: Some(ip),
                hostname: hostname.as_deref(),
                ..Ask::default()
            };
            let Some(ack) = client.ask_until(MessageType::Request, mac, ask, 3).await else {
                continue;
            };
            let mut ledger = ledger.lock().unwrap();
            if ack.kind == Some(MessageType::Ack) {
                ledger.acked(mac, ack.yiaddr, true);
            } else {
                let what = ack.kind;
                ledger
                    .violations
                    .push(format!("{mac} renewing {ip} was answered {what:?}"));
            }
        } else {
            // Out of new leases before binding any: nothing left to do this run.
            return;
        }
    }
}

fn start(dirs: &Path, ports: (u16, u16, u16), run: usize) -> tokio::process::Child {
    let (http, dhcp, pxe) = ports;
    let log = std::fs::File::create(dirs.join(format!("serve-{run}.log"))).unwrap();
    kit::served::serve_full_dhcp(dirs, http, dhcp, pxe, POOL)
        .args(["--dhcp-lease-time", LEASE_SECS])
        .env("BOOTPLANE_LOG", "warn")
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_dhcp_load_loses_no_acked_lease_and_never_gives_one_twice() {
    let (runs, seed) = campaign("crash injection (leases)");
    let _turn = kit::turns::shared_async().await;
    let dirs = super::scratch();
    let data = dirs.path().join("data");
    let http_port = kit::served::free_tcp_port();
    let dhcp_port = kit::served::free_udp_port(&[]);
    let pxe_port = kit::served::free_udp_port(&[dhcp_port]);
    let ports = (http_port, dhcp_port, pxe_port);
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, dhcp_port));
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = Rng::new(seed);
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let next_mac = Arc::new(AtomicU32::new(1));
    let (mut checked_in_db, mut checked_live) = (0usize, 0usize);
    let mut child = start(dirs.path(), ports, 0);
    wait_healthy(&http, &base, &mut child).await;
    let started = Instant::now();
    let new_per_run = (NEW_IN_ALL / runs.max(1)).clamp(1, NEW_PER_RUN) as u32;
    for run in 0..runs {
        ledger.lock().unwrap().this_run.clear();
        let stop = Arc::new(AtomicBool::new(false));
        let new_left = Arc::new(AtomicU32::new(new_per_run));
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let client = Client::new(server, rng.next()).await;
            clients.push(tokio::spawn(load(
                client,
                ledger.clone(),
                next_mac.clone(),
                new_left.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(1200))).await;
        kill(&mut child, run, seed).await;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }

        child = start(dirs.path(), ports, run + 1);
        wait_healthy(&http, &base, &mut child).await;
        // The file as the restarted appliance recovered it, before any packet reaches it: every
        // ACKed lease must be there (a forgotten one, asked for again, could be bound anew).
        let db = super::reopen_checked(&data, run, seed).await;
        let rows = db.load_leases().await.unwrap();
        db.close().await;
        let stored: HashMap<Mac, Ipv4Addr> = rows.iter().map(|r| (r.mac, r.ip)).collect();
        let (sample, mut violations) = {
            let ledger = ledger.lock().unwrap();
            let mut violations = ledger.violations.clone();
            for (mac, ip) in &ledger.held {
                match stored.get(mac) {
                    Some(s) if s == ip => {}
                    other => violations.push(format!(
                        "{mac} was ACKed {ip}; after the restart its stored lease is {other:?}"
                    )),
                }
            }
            checked_in_db += ledger.held.len();
            let mut sample: Vec<(Mac, Ipv4Addr)> = ledger
                .this_run
                .iter()
                .map(|mac| (*mac, ledger.held[mac]))
                .collect();
            let older: Vec<(Mac, Ipv4Addr)> = ledger
                .held
                .iter()
                .filter(|(mac, _)| !ledger.this_run.contains(mac))
                .map(|(m, ip)| (*m, *ip))
                .collect();
            for _ in 0..OLDER_SAMPLE.min(older.len()) {
                sample.push(older[rng.below(older.len() as u64) as usize]);
            }
            (sample, violations)
        };
        let mut by_ip: HashMap<Ipv4Addr, Mac> = HashMap::new();
        for r in &rows {
            if let Some(other) = by_ip.insert(r.ip, r.mac) {
                violations.push(format!("{} stored for {other} and {}", r.ip, r.mac));
            }
        }
        // Then the appliance itself: the same MAC is offered and ACKed the same address.
        checked_live += sample.len();
        let mut checks = Vec::new();
        for part in sample.chunks(sample.len().div_ceil(CLIENTS as usize).max(1)) {
            let part = part.to_vec();
            let mut client = Client::new(server, rng.next()).await;
            checks.push(tokio::spawn(async move {
                let mut found = Vec::new();
                for (mac, ip) in part {
                    let offer = client
                        .ask_until(MessageType::Discover, mac, Ask::default(), 10)
                        .await;
                    match offer {
                        Some(a) if a.kind == Some(MessageType::Offer) && a.yiaddr == ip => {}
                        Some(a) => found.push(format!(
                            "{mac} holds {ip}; after the restart it was offered {:?} {}",
                            a.kind, a.yiaddr
                        )),
                        None => found.push(format!("{mac}'s DISCOVER went unanswered")),
                    }
                    let ask = Ask {
                        requested: Some(ip),
                        ..Ask::default()
                    };
                    match client.ask_until(MessageType::Request, mac, ask, 10).await {
                        Some(a) if a.kind == Some(MessageType::Ack) && a.yiaddr == ip => {}
                        Some(a) => found.push(format!(
                            "{mac} holds {ip}; after the restart its REQUEST was answered {:?} {}",
                            a.kind, a.yiaddr
                        )),
                        None => found.push(format!("{mac}'s REQUEST went unanswered")),
                    }
                }
                found
            }));
        }
        for c in checks {
            violations.extend(c.await.unwrap());
        }
        assert!(
            violations.is_empty(),
            "run {run} (seed {seed}): {} violations, the first: {:#?}",
            violations.len(),
            &violations[..violations.len().min(10)]
        );
    }
    kill(&mut child, runs, seed).await;
    let ledger = ledger.lock().unwrap();
    eprintln!(
        "crash injection (leases): {runs} kills in {:.0} s, {} leases bound and kept, {} ACKs ({} renewals), {checked_in_db} lease checks in the database and {checked_live} through the appliance, 0 invariant violations",
        started.elapsed().as_secs_f64(),
        ledger.held.len(),
        ledger.acks,
        ledger.renewals,
    );
    assert!(
        ledger.held.len() as u64 >= runs as u64,
        "fewer leases than kills: the load did not run"
    );
}
