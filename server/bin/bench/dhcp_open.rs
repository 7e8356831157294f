//! Open-loop DHCP load, the way ISC measures Kea with `perfdhcp`: new exchanges start at a
//! fixed rate whether or not earlier ones were answered, a population of simulated clients
//! takes turns, and an exchange whose reply does not come within a deadline counts as missed.
//! [`search`] finds the highest rate a server sustains with at most [`MAX_MISSED`] missed in
//! each kind of exchange (ISC's criterion).
//!
//! The same module holds the DHCP storm: every client starts at once and retransmits with the
//! back-off of RFC 2131 section 4.1 (4 s, 8 s, 16 s, … each ±1 s) until it holds a lease, as a
//! rack of machines powered on together does.
//!
//! Both run on a thread of their own with a blocking socket (no runtime in between), so the
//! generator's pacing is its own and its cost is one core.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dhcproto::v4::MessageType;

use crate::dhcp_load::{
    client_mac, decode_reply, encode_request, first_request, server_id, std_client_socket, Flow,
};
use crate::netns::CLIENT_IP;
use crate::stats::Latencies;
use crate::sys::thread_cpu_secs;

/// ISC's pass criterion: at most this fraction of each kind of exchange missed.
pub const MAX_MISSED: f64 = 0.025;
/// An exchange answered later than this is missed (perfdhcp's default drop time).
pub const DEADLINE: Duration = Duration::from_secs(1);
/// The longest the loop waits for a reply before it looks at its send schedule again.
const POLL: Duration = Duration::from_micros(200);
/// The generator counts as behind (the step says nothing about the server) when it started
/// fewer exchanges than this fraction of the schedule.
const MIN_ON_SCHEDULE: f64 = 0.98;

/// One kind of exchange (DISCOVER-OFFER, REQUEST-ACK) over a step.
#[derive(Debug, Default, Clone)]
pub struct Exchanges {
    pub sent: usize,
    pub answered: usize,
    /// Not answered within the deadline (late replies, wrong replies and NAKs included).
    pub missed: usize,
    /// Replies that came after their deadline.
    pub late: usize,
    /// Replies of the wrong kind or for the wrong address (NAKs included).
    pub wrong: usize,
    pub latency: Latencies,
}

impl Exchanges {
    pub fn missed_fraction(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.missed as f64 / self.sent as f64
        }
    }
}

/// One fixed-rate step.
#[derive(Debug, Clone)]
pub struct Step {
    pub rate: u32,
    /// DISCOVER-OFFER, or the one exchange of a proxy flow.
    pub first: Exchanges,
    /// REQUEST-ACK (Dora only).
    pub second: Option<Exchanges>,
    /// The rate the generator actually kept (exchanges started per second of the window).
    pub achieved: f64,
    pub client_cpu_secs: f64,
}

impl Step {
    /// The generator kept its schedule.
    pub fn on_schedule(&self) -> bool {
        self.achieved >= MIN_ON_SCHEDULE * f64::from(self.rate)
    }

    pub fn worst_missed(&self) -> f64 {
        self.first
            .missed_fraction()
            .max(self.second.as_ref().map_or(0.0, Exchanges::missed_fraction))
    }

    pub fn passes(&self) -> bool {
        self.first.sent > 0 && self.worst_missed() <= MAX_MISSED
    }

    /// All replies' latencies, both exchanges.
    pub fn latencies(&self) -> Latencies {
        let mut all = self.first.latency.clone();
        if let Some(second) = &self.second {
            all.extend(second.latency.clone());
        }
        all
    }

    pub fn describe(&self) -> String {
        let one = |name: &str, e: &Exchanges| {
            format!(
                "{name} {:.1}% missed ({} late, {} wrong)",
                e.missed_fraction() * 100.0,
                e.late,
                e.wrong
            )
        };
        let mut text = format!("{}/s: ", self.rate);
        match &self.second {
            Some(second) => {
                text.push_str(&one("DO", &self.first));
                text.push_str(", ");
                text.push_str(&one("RA", second));
            }
            None => text.push_str(one("", &self.first).trim_start()),
        }
        text.push_str(&format!(", generator CPU {:.2} s", self.client_cpu_secs));
        if !self.on_schedule() {
            text.push_str(&format!(", generator behind ({:.0}/s kept)", self.achieved));
        }
        text
    }
}

/// What one open-loop step runs.
#[derive(Debug, Clone)]
pub struct OpenLoad {
    pub flow: Flow,
    pub interface: String,
    /// The simulated clients, taking turns: exchange `i` is client `clients.start + i % len`.
    pub clients: std::ops::Range<usize>,
    pub rate: u32,
    pub window: Duration,
}

/// One transaction of a step (by its number: xid = base + number).
#[derive(Debug, Clone, Copy, Default)]
struct Txn {
    /// 0 waiting, 1 answered, 2 missed: for the first and the second exchange.
    first: u8,
    second: u8,
    first_at: Option<Instant>,
    second_at: Option<Instant>,
    offered: Option<Ipv4Addr>,
}

/// Runs one step on a thread of its own.
pub async fn step(load: OpenLoad) -> Result<Step> {
    tokio::task::spawn_blocking(move || {
        let cpu = thread_cpu_secs();
        let mut step = run_step(&load)?;
        step.client_cpu_secs = thread_cpu_secs() - cpu;
        Ok(step)
    })
    .await
    .context("the open-loop DHCP thread failed")?
}

fn run_step(load: &OpenLoad) -> Result<Step> {
    let socket = std_client_socket(&load.interface)?;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(POLL))?;
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let population = load.clients.len().max(1);
    let total = (f64::from(load.rate) * load.window.as_secs_f64()).round() as usize;
    let xid_base: u32 = rand::random();
    let mut txns = vec![Txn::default(); total];
    let mut first = Exchanges {
        latency: Latencies::with_capacity(total),
        ..Exchanges::default()
    };
    let mut second = Exchanges::default();
    // Every exchange in the order it was sent (send times only grow), for the deadlines.
    let mut pending: VecDeque<(usize, bool, Instant)> = VecDeque::with_capacity(total);
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut sent = 0usize;
    let mut last_send = start;
    loop {
        let now = Instant::now();
        let due = ((now - start).as_secs_f64() * f64::from(load.rate)) as usize;
        while sent < due.min(total) {
            let index = load.clients.start + sent % population;
            let xid = xid_base.wrapping_add(sent as u32);
            let (bytes, dest) = first_request(load.flow, index, xid)?;
            let at = Instant::now();
            first.sent += 1;
            // A failed send is an exchange that cannot be answered: it stays pending and misses.
            let _ = socket.send_to(&bytes, dest);
            txns[sent].first_at = Some(at);
            pending.push_back((sent, false, at));
            sent += 1;
            last_send = at;
        }
        // One reply per turn (waiting at most `POLL` for it), then the send schedule again: a
        // turn costs a receive and a clock read, so replies are read as they come.
        let received = match socket.recv_from(&mut buf) {
            Ok((n, _)) => Some(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => return Err(e).context("receiving replies"),
        };
        if let Some(n) = received {
            let at = Instant::now();
            if let Some((number, offered, server)) = take(
                load,
                &buf[..n],
                xid_base,
                at,
                &mut txns,
                &mut first,
                &mut second,
            ) {
                let index = load.clients.start + number % population;
                let xid = xid_base.wrapping_add(number as u32);
                let bytes = encode_request(
                    MessageType::Request,
                    index,
                    xid,
                    Ipv4Addr::UNSPECIFIED,
                    Some((offered, server)),
                    false,
                )?;
                second.sent += 1;
                let _ = socket.send_to(&bytes, broadcast);
                txns[number].second_at = Some(at);
                pending.push_back((number, true, at));
            }
        }
        let now = Instant::now();
        while let Some(&(number, is_second, at)) = pending.front() {
            if now < at + DEADLINE {
                break;
            }
            pending.pop_front();
            let state = if is_second {
                &mut txns[number].second
            } else {
                &mut txns[number].first
            };
            if *state == 0 {
                *state = 2;
                if is_second {
                    second.missed += 1;
                } else {
                    first.missed += 1;
                }
            }
        }
        if sent >= total && pending.is_empty() {
            break;
        }
    }
    let window = last_send.saturating_duration_since(start).as_secs_f64();
    let achieved = if window > 0.0 {
        (sent.saturating_sub(1)) as f64 / window
    } else {
        0.0
    };
    Ok(Step {
        rate: load.rate,
        first,
        second: (load.flow == Flow::Dora).then_some(second),
        achieved,
        client_cpu_secs: 0.0,
    })
}

/// Checks one reply; `Some((number, offered, server))` when a Dora OFFER asks for a REQUEST.
fn take(
    load: &OpenLoad,
    bytes: &[u8],
    xid_base: u32,
    at: Instant,
    txns: &mut [Txn],
    first: &mut Exchanges,
    second: &mut Exchanges,
) -> Option<(usize, Ipv4Addr, Ipv4Addr)> {
    let xid = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
    let number = xid.wrapping_sub(xid_base) as usize;
    let txn = txns.get_mut(number)?;
    let population = load.clients.len().max(1);
    let msg = decode_reply(bytes, &client_mac(load.clients.start + number % population))?;
    let kind = msg.opts().msg_type();
    let yiaddr = msg.yiaddr();
    // Which exchange this reply answers: an ACK or NAK answers the REQUEST, anything else the
    // first message.
    let is_second =
        load.flow == Flow::Dora && matches!(kind, Some(MessageType::Ack) | Some(MessageType::Nak));
    let (state, sent_at, exchanges) = if is_second {
        (&mut txn.second, txn.second_at, &mut *second)
    } else {
        (&mut txn.first, txn.first_at, &mut *first)
    };
    let sent_at = sent_at?;
    if *state == 0 && at.saturating_duration_since(sent_at) > DEADLINE {
        // Past its deadline, though the deadline sweep has not reached it yet.
        *state = 2;
        exchanges.missed += 1;
        exchanges.late += 1;
        return None;
    }
    match *state {
        0 => {}
        2 => {
            exchanges.late += 1;
            return None;
        }
        // A duplicate reply.
        _ => return None,
    }
    let expected = match load.flow {
        Flow::ProxyDiscover => kind == Some(MessageType::Offer) && yiaddr.is_unspecified(),
        // dnsmasq echoes the client's own address in yiaddr; bootplane leaves it empty.
        Flow::ProxyRequest => {
            kind == Some(MessageType::Ack) && (yiaddr.is_unspecified() || yiaddr == CLIENT_IP)
        }
        Flow::Dora | Flow::LeasedDiscover if !is_second => {
            kind == Some(MessageType::Offer) && !yiaddr.is_unspecified()
        }
        _ => kind == Some(MessageType::Ack) && Some(yiaddr) == txn.offered,
    };
    if !expected {
        // Missed now, rather than at its deadline.
        *state = 2;
        exchanges.wrong += 1;
        exchanges.missed += 1;
        return None;
    }
    *state = 1;
    exchanges.answered += 1;
    exchanges.latency.push(at - sent_at);
    if load.flow == Flow::Dora && !is_second {
        txn.offered = Some(yiaddr);
        let server = server_id(&msg);
        return Some((number, yiaddr, server));
    }
    None
}

/// A rate search: rates tried, in order, and the highest that passed.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub steps: Vec<Step>,
    /// The highest passing rate, with its step.
    pub best: Option<Step>,
    /// The search stopped because the generator could not keep the schedule: the server may
    /// sustain more than `best`.
    pub generator_limited: bool,
}

impl Search {
    pub fn rate(&self) -> Option<f64> {
        self.best.as_ref().map(|s| f64::from(s.rate))
    }

    /// "12,000/s (p99 3.1 ms)", with "≥" when the generator was the limit.
    pub fn summary(&self) -> String {
        match &self.best {
            None => "none passed".into(),
            Some(best) => format!(
                "{}{}/s",
                if self.generator_limited { "≥ " } else { "" },
                crate::stats::fmt_count(f64::from(best.rate))
            ),
        }
    }

    pub fn trail(&self) -> String {
        self.steps
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    if s.passes() && s.on_schedule() {
                        "pass"
                    } else {
                        "fail"
                    },
                    s.describe()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How a search walks: doubling from `start` until a step fails (or `max` is reached), then
/// `bisections` halvings of the gap between the last pass and the first failure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub start: u32,
    pub max: u32,
    pub bisections: u32,
    pub min: u32,
}

/// The next rate to try after `steps`, or `None` when the search is done.
pub fn next_rate(plan: Plan, steps: &[(u32, bool)]) -> Option<u32> {
    if steps.is_empty() {
        return Some(plan.start);
    }
    let best_pass = steps.iter().filter(|s| s.1).map(|s| s.0).max();
    let first_fail = steps.iter().filter(|s| !s.1).map(|s| s.0).min();
    match (best_pass, first_fail) {
        // Still climbing.
        (Some(pass), None) => (pass < plan.max).then(|| (pass * 2).min(plan.max)),
        // Nothing passes yet: halve down to the floor.
        (None, Some(fail)) => (fail / 2 >= plan.min).then_some(fail / 2),
        (Some(pass), Some(fail)) => {
            // Steps after the first failure were bisections.
            let first_fail_at = steps.iter().position(|s| !s.1).unwrap_or(steps.len());
            let done = steps.len() - first_fail_at - 1;
            if done as u32 >= plan.bisections || fail <= pass {
                return None;
            }
            let mid = round_rate((pass + fail) / 2);
            (mid > pass && mid < fail).then_some(mid)
        }
        (None, None) => None,
    }
}

/// Rates on a readable grid: two significant figures.
fn round_rate(rate: u32) -> u32 {
    let mut unit = 1;
    while rate / unit >= 100 {
        unit *= 10;
    }
    (rate / unit).max(1) * unit
}

/// How a DHCP storm went.
#[derive(Debug, Default)]
pub struct Storm {
    pub clients: usize,
    /// Clients holding a lease at the end.
    pub leased: usize,
    /// From the first DISCOVER to the last ACK (or to the give-up time).
    pub elapsed: Duration,
    /// Each leased client's time from its first DISCOVER to its ACK.
    pub per_client: Latencies,
    pub retransmissions: usize,
    pub naks: usize,
    /// Addresses ACKed to more than one client.
    pub duplicates: usize,
    /// ACKs for another address than the one REQUESTed.
    pub wrong: usize,
    pub gave_up: bool,
    pub client_cpu_secs: f64,
    /// Where packets were lost meanwhile (kernel counters, the server's own drop counters).
    pub lost: Vec<String>,
}

impl Storm {
    pub fn finished(&self) -> bool {
        self.clients > 0 && self.leased == self.clients
    }

    pub fn outcome(&self) -> String {
        let mut parts = vec![format!(
            "{}/{} leased",
            crate::stats::fmt_count(self.leased as f64),
            crate::stats::fmt_count(self.clients as f64)
        )];
        for (name, n) in [
            ("retransmissions", self.retransmissions),
            ("NAKs", self.naks),
            ("addresses leased twice", self.duplicates),
            ("wrong ACKs", self.wrong),
        ] {
            if n > 0 {
                parts.push(format!("{name} {}", crate::stats::fmt_count(n as f64)));
            }
        }
        if self.gave_up {
            parts.push(format!("gave up after {:.0} s", self.elapsed.as_secs_f64()));
        }
        parts.join(", ")
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Discover,
    Request { offered: Ipv4Addr, server: Ipv4Addr },
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Client {
    phase: Phase,
    /// Retransmissions of the current message so far.
    tries: u32,
    started: Instant,
}

/// RFC 2131 4.1: the n-th retransmission waits 4 s · 2^n (at most 64 s), randomized by ±1 s.
fn backoff(tries: u32) -> Duration {
    let base = 4u64 << tries.min(4);
    let jitter = rand::random::<f64>() * 2.0 - 1.0;
    Duration::from_secs_f64((base as f64 + jitter).max(1.0))
}

/// All `clients` power on at once: each DISCOVERs, REQUESTs the first OFFER and retransmits
/// with back-off until ACKed (a NAK starts it over), until all hold a lease or `give_up`.
pub async fn storm(
    interface: String,
    clients: std::ops::Range<usize>,
    give_up: Duration,
) -> Result<Storm> {
    tokio::task::spawn_blocking(move || {
        let cpu = thread_cpu_secs();
        let mut storm = run_storm(&interface, clients, give_up)?;
        storm.client_cpu_secs = thread_cpu_secs() - cpu;
        Ok(storm)
    })
    .await
    .context("the DHCP storm thread failed")?
}

fn run_storm(interface: &str, range: std::ops::Range<usize>, give_up: Duration) -> Result<Storm> {
    let socket: UdpSocket = std_client_socket(interface)?;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let n = range.len();
    let xid_base: u32 = rand::random();
    let start = Instant::now();
    let mut clients = vec![
        Client {
            phase: Phase::Discover,
            tries: 0,
            started: start,
        };
        n
    ];
    let mut result = Storm {
        clients: n,
        per_client: Latencies::with_capacity(n),
        ..Storm::default()
    };
    // (when, client, generation): the retransmission timers; a stale generation is skipped.
    let mut timers: BinaryHeap<Reverse<(Instant, usize, u32)>> = BinaryHeap::with_capacity(n);
    let mut generation = vec![0u32; n];
    let send = |client: usize, phase: Phase| -> Result<()> {
        let requested = match phase {
            Phase::Request { offered, server } => Some((offered, server)),
            _ => None,
        };
        let kind = if requested.is_some() {
            MessageType::Request
        } else {
            MessageType::Discover
        };
        let bytes = encode_request(
            kind,
            range.start + client,
            xid_base.wrapping_add(client as u32),
            Ipv4Addr::UNSPECIFIED,
            requested,
            false,
        )?;
        let _ = socket.send_to(&bytes, broadcast);
        Ok(())
    };
    for client in 0..n {
        send(client, Phase::Discover)?;
        timers.push(Reverse((Instant::now() + backoff(0), client, 0)));
    }
    let mut holders: HashMap<Ipv4Addr, usize> = HashMap::with_capacity(n);
    let mut buf = [0u8; 2048];
    let mut last_ack = start;
    while result.leased < n {
        let now = Instant::now();
        if now - start > give_up {
            result.gave_up = true;
            break;
        }
        while let Some(&Reverse((when, client, gen))) = timers.peek() {
            if when > now {
                break;
            }
            timers.pop();
            if gen != generation[client] || matches!(clients[client].phase, Phase::Done) {
                continue;
            }
            let c = &mut clients[client];
            c.tries += 1;
            result.retransmissions += 1;
            send(client, c.phase)?;
            timers.push(Reverse((now + backoff(c.tries), client, gen)));
        }
        let (len, _) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("receiving replies"),
        };
        let bytes = &buf[..len];
        let Some(xid) = bytes
            .get(4..8)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        else {
            continue;
        };
        let client = xid.wrapping_sub(xid_base) as usize;
        if client >= n {
            continue;
        }
        let Some(msg) = decode_reply(bytes, &client_mac(range.start + client)) else {
            continue;
        };
        let kind = msg.opts().msg_type();
        let at = Instant::now();
        let next = match (clients[client].phase, kind) {
            (Phase::Discover, Some(MessageType::Offer)) if !msg.yiaddr().is_unspecified() => {
                let server = server_id(&msg);
                Phase::Request {
                    offered: msg.yiaddr(),
                    server,
                }
            }
            (Phase::Request { offered, .. }, Some(MessageType::Ack)) => {
                if msg.yiaddr() != offered {
                    result.wrong += 1;
                }
                if holders
                    .insert(msg.yiaddr(), client)
                    .is_some_and(|c| c != client)
                {
                    result.duplicates += 1;
                }
                result.leased += 1;
                result.per_client.push(at - clients[client].started);
                last_ack = at;
                Phase::Done
            }
            (Phase::Request { .. }, Some(MessageType::Nak)) => {
                result.naks += 1;
                Phase::Discover
            }
            // Late OFFERs, duplicates, replies to a message already answered.
            _ => continue,
        };
        let c = &mut clients[client];
        c.phase = next;
        c.tries = 0;
        generation[client] = generation[client].wrapping_add(1);
        if !matches!(next, Phase::Done) {
            send(client, next)?;
            timers.push(Reverse((at + backoff(0), client, generation[client])));
        }
    }
    result.elapsed = if result.gave_up {
        start.elapsed()
    } else {
        last_ack - start
    };
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(plan: Plan, capacity: u32) -> (Vec<u32>, Option<u32>) {
        let mut marks = Vec::new();
        let mut tried = Vec::new();
        while let Some(rate) = next_rate(plan, &marks) {
            tried.push(rate);
            marks.push((rate, rate <= capacity));
            assert!(tried.len() < 30, "the search does not end: {tried:?}");
        }
        let best = marks.iter().filter(|m| m.1).map(|m| m.0).max();
        (tried, best)
    }

    #[test]
    fn the_search_doubles_then_bisects_to_within_an_eighth() {
        let plan = Plan {
            start: 1000,
            max: 1_000_000,
            bisections: 3,
            min: 100,
        };
        let (tried, best) = walk(plan, 11_000);
        assert_eq!(&tried[..5], &[1000, 2000, 4000, 8000, 16000]);
        assert_eq!(tried.len(), 8, "{tried:?}");
        let best = best.unwrap();
        assert!((10_000..=11_000).contains(&best), "{best} from {tried:?}");
    }

    #[test]
    fn the_search_goes_down_when_the_start_fails_and_stops_at_the_cap() {
        let plan = Plan {
            start: 1000,
            max: 8000,
            bisections: 2,
            min: 100,
        };
        let (tried, best) = walk(plan, 300);
        assert_eq!(&tried[..3], &[1000, 500, 250]);
        assert!(best.is_some_and(|b| (250..=300).contains(&b)), "{tried:?}");
        let (tried, best) = walk(plan, 50);
        assert_eq!(tried, vec![1000, 500, 250, 125]);
        assert_eq!(best, None);
        let (tried, best) = walk(plan, 1_000_000);
        assert_eq!(tried, vec![1000, 2000, 4000, 8000]);
        assert_eq!(best, Some(8000));
    }

    #[test]
    fn retransmissions_back_off_as_rfc_2131_says() {
        for (tries, base) in [
            (0, 4.0),
            (1, 8.0),
            (2, 16.0),
            (3, 32.0),
            (4, 64.0),
            (9, 64.0),
        ] {
            for _ in 0..50 {
                let d = backoff(tries).as_secs_f64();
                assert!((base - 1.0..=base + 1.0).contains(&d), "{tries}: {d}");
            }
        }
    }

    #[test]
    fn a_step_fails_on_more_than_two_and_a_half_percent_missed_in_either_exchange() {
        let ex = |sent, missed| Exchanges {
            sent,
            missed,
            answered: sent - missed,
            ..Exchanges::default()
        };
        let step = |first, second| Step {
            rate: 1000,
            first,
            second,
            achieved: 1000.0,
            client_cpu_secs: 0.0,
        };
        assert!(step(ex(1000, 25), Some(ex(975, 24))).passes());
        assert!(!step(ex(1000, 25), Some(ex(975, 25))).passes());
        assert!(!step(ex(1000, 26), None).passes());
        assert!(!step(ex(0, 0), None).passes());
        let behind = Step {
            achieved: 900.0,
            ..step(ex(1000, 0), None)
        };
        assert!(!behind.on_schedule());
    }
}
