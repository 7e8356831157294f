//! The kernel log receiver: nodes booted with `talos.logging.kernel=tcp://<ip>:<port>` stream
//! their kernel messages here, one JSON object per line (`msg`, `talos-time`, `talos-level`,
//! `facility`, `seq`, `clock`, `priority`, plus any extra tags).
//!
//! Lines land in the machine's boot log through `BootLogQueue`, whose writer batches them
//! into SQLite and trims each machine's log to its newest lines. Reading never waits on the
//! database: a full queue drops lines and counts them. Anything odd (a peer that is no known
//! machine, lines that are not JSON objects with a `msg`, lines over `MAX_LINE` bytes, a line
//! that takes too long to finish, too many connections) is dropped, counted and logged.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::peers::{self, ConnLimits, ConnPermit, Warned};
use crate::db::Db;
use crate::inventory::{Inventory, Neighbours};
use crate::model::{BootLogLine, Mac};
use crate::support::clock::SharedClock;
use crate::support::metrics::Metrics;

/// Longest line accepted, in bytes (kernel messages are at most about 1 KiB before escaping).
pub const MAX_LINE: usize = 16 * 1024;
/// Connections held at most, in all and per peer address.
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_PEER: usize = 4;
/// A started line must end within this time.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no bytes at all for this long is closed (Talos dials again when it has
/// something to send).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Queue capacity of the boot log writer; past it, lines are dropped and counted.
pub const BOOT_LOG_QUEUE: usize = 16_384;

/// Hands kernel log lines to the database writer without waiting on it.
#[derive(Clone, Debug)]
pub struct BootLogQueue {
    tx: mpsc::Sender<BootLogLine>,
    metrics: Metrics,
}

impl BootLogQueue {
    /// The queue and the writer future that drains it into `db`, keeping `keep` lines per
    /// machine. The writer ends once every queue clone is dropped, after a final flush.
    pub fn new(db: Db, keep: u32, metrics: Metrics) -> (BootLogQueue, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(BOOT_LOG_QUEUE);
        (BootLogQueue { tx, metrics }, write_loop(db, keep, rx))
    }

    pub fn push(&self, line: BootLogLine) {
        if self.tx.try_send(line).is_ok() {
            self.metrics.kernel_log_lines.inc();
        } else {
            self.metrics.kernel_log_drop("queue-full");
        }
    }
}

async fn write_loop(db: Db, keep: u32, mut rx: mpsc::Receiver<BootLogLine>) {
    let mut batch = Vec::with_capacity(1024);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        // Give a burst (a boot prints hundreds of lines at once) a moment to gather.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while batch.len() < 8192 {
            match rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        let mut attempt = 0u32;
        while let Err(e) = db.append_boot_log(&batch, keep).await {
            attempt += 1;
            if attempt >= 3 {
                tracing::error!(error = %e, lines = batch.len(), "could not store kernel log lines; dropping them");
                break;
            }
            tracing::warn!(error = %e, attempt, "storing kernel log lines failed; retrying");
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        batch.clear();
    }
}

/// What the receiver needs from the rest of the appliance.
#[derive(Clone, Debug)]
pub struct KmsgDeps {
    pub inventory: Inventory,
    pub neighbours: Neighbours,
    pub queue: BootLogQueue,
    pub metrics: Metrics,
    pub clock: SharedClock,
}

/// Why a line was not stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("no \"msg\" string")]
    NoMessage,
}

/// Parses one line as Talos sends it. Fields other than `msg` are optional and kept only
/// when they have the expected type.
pub fn parse_line(mac: Mac, at: i64, line: &[u8]) -> Result<BootLogLine, LineError> {
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| LineError::NotJson(e.to_string()))?;
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let number = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_u64())
            .and_then(|n| i64::try_from(n).ok())
    };
    Ok(BootLogLine {
        mac,
        at,
        msg: text("msg").ok_or(LineError::NoMessage)?,
        talos_time: text("talos-time"),
        facility: text("facility"),
        priority: text("priority"),
        seq: number("seq"),
        clock: number("clock"),
    })
}

/// Serves the kernel log receiver on `listener` until `cancel` fires; returns once every
/// connection is closed.
pub async fn serve(listener: TcpListener, deps: KmsgDeps, cancel: CancellationToken) {
    let limits = ConnLimits::new(MAX_CONNECTIONS, MAX_PER_PEER);
    let warned = Warned::default();
    let mut connections = JoinSet::new();
    loop {
        let (tcp, addr) = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "kernel log receiver: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match limits.admit(addr.ip()) {
            Ok(permit) => permit,
            Err(reason) => {
                deps.metrics.push_refused("kernel-log", reason);
                warned.warn(addr.ip(), || {
                    tracing::warn!(peer = %addr, reason, "kernel log receiver: connection refused");
                });
                continue;
            }
        };
        let (deps, warned, cancel) = (deps.clone(), warned.clone(), cancel.clone());
        connections.spawn(async move {
            let arp = peers::arp_entry(addr.ip());
            let Some(mac) = peers::attribute(
                &deps.inventory,
                &deps.neighbours,
                addr.ip(),
                arp,
                deps.clock.now_ms(),
            )
            else {
                deps.metrics.push_refused("kernel-log", "unknown-peer");
                warned.warn(addr.ip(), || {
                    tracing::warn!(peer = %addr, "kernel log receiver: connection from an address that is no known machine; closed");
                });
                return;
            };
            tracing::debug!(peer = %addr, mac = %mac, "kernel log stream opened");
            let end = Connection {
                deps: &deps,
                addr,
                arp,
                _permit: permit,
            }
            .run(tcp, &cancel)
            .await;
            tracing::debug!(peer = %addr, mac = %mac, end, "kernel log stream closed");
        });
    }
    connections.shutdown().await;
}

struct Connection<'a> {
    deps: &'a KmsgDeps,
    addr: SocketAddr,
    arp: Option<Mac>,
    _permit: ConnPermit,
}

impl Connection<'_> {
    /// Reads lines until the peer closes, misbehaves or `cancel` fires; says why it ended.
    async fn run(self, mut tcp: TcpStream, cancel: &CancellationToken) -> &'static str {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        // Skipping the rest of an oversize line, up to its newline.
        let mut discarding = false;
        // When the unfinished line in `buf` (or being discarded) started.
        let mut line_started: Option<Instant> = None;
        loop {
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(pos + 1);
                line_started = None;
                if discarding {
                    discarding = false;
                    continue;
                }
                if pos > MAX_LINE {
                    self.oversize();
                    continue;
                }
                self.line(&line[..pos]);
            }
            if !discarding && buf.len() > MAX_LINE {
                self.oversize();
                discarding = true;
            }
            if discarding {
                buf.clear();
            }
            if (discarding || !buf.is_empty()) && line_started.is_none() {
                line_started = Some(Instant::now());
            }
            let wait = match line_started {
                Some(at) => LINE_TIMEOUT.saturating_sub(at.elapsed()),
                None => IDLE_TIMEOUT,
            };
            buf.reserve(8 * 1024);
            let read = tokio::select! {
                _ = cancel.cancelled() => return "shutdown",
                read = tokio::time::timeout(wait, tcp.read_buf(&mut buf)) => read,
            };
            match read {
                Err(_) if line_started.is_some() => {
                    self.deps.metrics.kernel_log_drop("slow-line");
                    tracing::debug!(peer = %self.addr, "kernel log line not finished in time; connection closed");
                    return "slow line";
                }
                Err(_) => return "idle",
                Ok(Ok(0)) => {
                    if !buf.is_empty() && !discarding {
                        self.deps.metrics.kernel_log_drop("truncated");
                    }
                    return "closed by peer";
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return "read error",
            }
        }
    }

    fn oversize(&self) {
        self.deps.metrics.kernel_log_drop("oversize");
        tracing::debug!(peer = %self.addr, "kernel log line longer than {MAX_LINE} bytes dropped");
    }

    fn line(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let deps = self.deps;
        // Attributed per line: the machine may have been removed or readdressed meanwhile.
        let Some(mac) = peers::attribute(
            &deps.inventory,
            &deps.neighbours,
            self.addr.ip(),
            self.arp,
            deps.clock.now_ms(),
        ) else {
            deps.metrics.kernel_log_drop("unknown-peer");
            return;
        };
        match parse_line(mac, deps.clock.now_ms(), line) {
            Ok(parsed) => deps.queue.push(parsed),
            Err(e) => {
                deps.metrics.kernel_log_drop("malformed");
                tracing::debug!(peer = %self.addr, mac = %mac, error = %e, "kernel log line dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talos_json_lines_parse_and_odd_ones_are_refused() {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let line = br#"{"clock":1234567,"facility":"kern","msg":"Linux version 6.12","priority":"notice","seq":3,"talos-level":"info","talos-time":"2026-08-21T10:00:00.123456Z","cluster":"lab"}"#;
        let parsed = parse_line(mac, 42, line).unwrap();
        assert_eq!(
            parsed,
            BootLogLine {
                mac,
                at: 42,
                talos_time: Some("2026-08-21T10:00:00.123456Z".into()),
                facility: Some("kern".into()),
                priority: Some("notice".into()),
                seq: Some(3),
                clock: Some(1_234_567),
                msg: "Linux version 6.12".into(),
            }
        );
        let odd_types = parse_line(mac, 1, br#"{"msg":"x","seq":"three","clock":-1}"#).unwrap();
        assert_eq!((odd_types.seq, odd_types.clock), (None, None));
        assert_eq!(
            parse_line(mac, 1, br#"{"seq":1}"#),
            Err(LineError::NoMessage)
        );
        assert_eq!(
            parse_line(mac, 1, br#"{"msg":7}"#),
            Err(LineError::NoMessage)
        );
        for bad in [
            &b"hello"[..],
            b"[1,2]",
            b"\"msg\"",
            b"{\"msg\":",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_line(mac, 1, bad), Err(LineError::NotJson(_))),
                "{bad:?}"
            );
        }
    }
}
