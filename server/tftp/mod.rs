//! TFTP: read-only service of the iPXE binaries, from memory.
//!
//! Only plain file names inside the iPXE directory are reachable (optionally behind a
//! `<mac>/` prefix, as some setups request them). Anything else, and `autoexec.ipxe`, is
//! answered at once with "file not found". Writes are refused.
//!
//! The protocol is RFC 1350 with the blksize (2348), tsize and timeout (2349) and windowsize
//! (7440) options, read requests only: one task per transfer on its own socket, connected to
//! the client, sending packets cut from the file's bytes in memory and waiting on tokio's
//! timers (no thread hand-off per packet).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::net::UdpSocket as TokioUdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::inventory::{Neighbours, Recorder};
use crate::model::{EventKind, Mac};
use crate::support::metrics::Metrics;

/// Silence after which a window (or the OACK) is sent again, unless the client asked for
/// another timeout.
pub const RETRANSMIT_AFTER: Duration = Duration::from_secs(2);

/// Files never served, answered with "file not found" straight away.
const REFUSED: &[&str] = &["autoexec.ipxe"];

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("tftp server socket: {0}")]
    Socket(#[from] io::Error),
}

/// Maps a requested TFTP path to a file name in the iPXE directory, and the MAC prefix if any.
/// Returns `None` for anything that is not a plain file name.
pub fn resolve_request(requested: &Path) -> Option<(Option<Mac>, String)> {
    let mut parts = Vec::new();
    for component in requested.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_str()?.to_string()),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    let (mac, name) = match parts.as_slice() {
        [name] => (None, name.clone()),
        [dir, name] => (Some(dir.parse::<Mac>().ok()?), name.clone()),
        _ => return None,
    };
    if name.starts_with('.') || name.contains('\\') || REFUSED.contains(&name.as_str()) {
        return None;
    }
    Some((mac, name))
}

#[derive(Debug)]
struct Cached {
    modified: Option<SystemTime>,
    data: Bytes,
}

/// Serves files from one directory, keeping them in memory while unchanged on disk.
#[derive(Clone, Debug)]
pub struct IpxeFiles {
    dir: PathBuf,
    cache: Arc<Mutex<HashMap<String, Arc<Cached>>>>,
}

impl IpxeFiles {
    pub fn new(dir: PathBuf) -> Self {
        IpxeFiles {
            dir,
            cache: Arc::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file's bytes, from memory when the file has not changed since it was read.
    pub fn load(&self, name: &str) -> io::Result<Bytes> {
        self.load_with_time(name).map(|(data, _)| data)
    }

    /// The file's bytes and its modification time.
    ///
    /// A symbolic link is followed only to a public system file: a link owned by root (or by
    /// bootplane's user) to a regular file owned by root (or bootplane's user) that everyone may
    /// read and only its owner may write. Debian's `/usr/lib/ipxe/ipxe.efi` is such a link (to
    /// `/boot/ipxe.efi`); a link to the database, a key or anything private is not followed,
    /// so nothing secret outside the directory is reachable through a link placed in it.
    pub fn load_with_time(&self, name: &str) -> io::Result<(Bytes, Option<SystemTime>)> {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let path = self.dir.join(name);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path);
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                let me = nix::unistd::geteuid().as_raw();
                let trusted = |uid: u32| uid == 0 || uid == me;
                let link = std::fs::symlink_metadata(&path)?;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NONBLOCK)
                    .open(&path)?;
                let target = file.metadata()?;
                let public = target.is_file()
                    && trusted(link.uid())
                    && trusted(target.uid())
                    && target.mode() & 0o004 != 0
                    && target.mode() & 0o022 == 0;
                if !public {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "a symbolic link to a file that is not a public system file, not followed",
                    ));
                }
                file
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not a file"));
        }
        let modified = meta.modified().ok();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hit) = cache.get(name) {
                if hit.modified == modified && hit.data.len() as u64 == meta.len() {
                    return Ok((hit.data.clone(), modified));
                }
            }
        }
        let mut read = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut read)?;
        let data = Bytes::from(read);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            name.to_string(),
            Arc::new(Cached {
                modified,
                data: data.clone(),
            }),
        );
        Ok((data, modified))
    }
}

/// Everything a transfer reports to; cheap to clone.
#[derive(Clone, Debug)]
pub struct TftpHandler {
    files: IpxeFiles,
    recorder: Recorder,
    neighbours: Neighbours,
    metrics: Metrics,
}

impl TftpHandler {
    pub fn new(
        files: IpxeFiles,
        recorder: Recorder,
        neighbours: Neighbours,
        metrics: Metrics,
    ) -> Self {
        TftpHandler {
            files,
            recorder,
            neighbours,
            metrics,
        }
    }

    /// The file a read request names, and the machine asking; `None` is "file not found".
    fn open(&self, client: SocketAddr, path: &str) -> Option<(Bytes, String, Option<Mac>)> {
        let Some((path_mac, name)) = resolve_request(Path::new(path)) else {
            tracing::info!(client = %client, path, "tftp request refused");
            self.metrics.tftp_done("not-found");
            return None;
        };
        // Attribution for the event only (a TFTP request carries no MAC): our own lease of
        // the address, else the host's neighbour table.
        let mac = path_mac.or_else(|| match client.ip() {
            IpAddr::V4(ip) => self.neighbours.owner(ip, self.recorder.now_ms()),
            IpAddr::V6(_) => None,
        });
        match self.files.load(&name) {
            Ok(data) => {
                tracing::info!(mac = ?mac, client = %client, file = %name, "tftp read request");
                Some((data, name, mac))
            }
            Err(e) => {
                tracing::info!(mac = ?mac, client = %client, file = %name, error = %e,
                    "tftp file not available");
                self.metrics.tftp_done("not-found");
                None
            }
        }
    }

    fn finished(&self, done: &Transfer, client: SocketAddr, result: Result<(), &'static str>) {
        let bytes = done.data.len();
        match result {
            Ok(()) => {
                self.metrics.tftp_done("ok");
                self.metrics.tftp_bytes.inc_by(bytes as u64);
                tracing::info!(mac = ?done.mac, file = %done.name, client = %client, bytes,
                    blksize = done.blksize, windowsize = done.window, "tftp transfer complete");
                if let Some(mac) = done.mac {
                    self.recorder.event(
                        mac,
                        EventKind::TftpServed,
                        format!("{} ({bytes} bytes)", done.name),
                    );
                }
            }
            Err(why) => {
                self.metrics.tftp_done("failed");
                tracing::info!(mac = ?done.mac, file = %done.name, client = %client, reason = why,
                    "tftp transfer not completed");
            }
        }
    }
}

/// Transfers in progress at once; read requests past it are ignored (the client asks again).
pub const MAX_TRANSFERS: usize = 1024;
/// Transfers in progress at once for one client address: a host holding silent transfers
/// cannot take the slots other machines need.
pub const MAX_TRANSFERS_PER_ADDRESS: usize = 8;
/// The largest retransmission timeout granted (RFC 2349 `timeout`); a larger one is refused
/// (left out of the OACK) and the default is used.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// Sends of one window (or of the OACK) before a silent client is given up: with
/// [`MAX_TIMEOUT`], a silent client frees its slot within 30 s.
const MAX_SENDS: u32 = 6;
/// Largest block size RFC 2348 allows.
const MAX_BLKSIZE: u16 = 65464;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

const ERR_NOT_FOUND: u16 = 1;
const ERR_ACCESS: u16 = 2;
const ERR_ILLEGAL: u16 = 4;

/// What the server settled for one read request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Negotiated {
    blksize: u16,
    window: u16,
    timeout: Duration,
    /// Options acknowledged in the OACK, in order; empty means no OACK.
    oack: Vec<(&'static str, String)>,
}

/// A read or write request: the file name, and the options asked for.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    write: bool,
    path: String,
    mode: String,
    options: Vec<(String, String)>,
}

/// Parses RRQ/WRQ bytes; `None` for anything else or anything malformed.
fn parse_request(packet: &[u8]) -> Option<Request> {
    let opcode = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    let write = match opcode {
        OP_RRQ => false,
        OP_WRQ => true,
        _ => return None,
    };
    let body = packet.get(2..)?;
    // Every field ends with a NUL; anything after the last one is ignored.
    let end = body.iter().rposition(|&b| b == 0)?;
    let mut fields = body[..end]
        .split(|&b| b == 0)
        .map(|f| std::str::from_utf8(f).ok());
    let path = fields.next()??.to_string();
    let mode = fields.next()??.to_ascii_lowercase();
    let mut options = Vec::new();
    while let Some(name) = fields.next() {
        let value = fields.next().flatten();
        if let (Some(name), Some(value)) = (name, value) {
            options.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }
    if path.is_empty() {
        return None;
    }
    Some(Request {
        write,
        path,
        mode,
        options,
    })
}

/// Settles blksize (RFC 2348), tsize and timeout (2349) and windowsize (7440) within the
/// limits; options out of their ranges (a timeout over [`MAX_TIMEOUT`] too: RFC 2349 wants
/// the granted value to be the one asked), and unknown ones, are left out of the OACK.
fn negotiate(
    options: &[(String, String)],
    size: u64,
    block_limit: u16,
    window_limit: u16,
    timeout: Duration,
) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        window: 1,
        timeout,
        oack: Vec::new(),
    };
    for (name, value) in options {
        let Ok(asked) = value.trim().parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            "blksize" if (8..=u64::from(MAX_BLKSIZE)).contains(&asked) => {
                n.blksize = u16::try_from(asked).unwrap_or(512).min(block_limit.max(8));
                n.oack.push(("blksize", n.blksize.to_string()));
            }
            "tsize" if asked == 0 => n.oack.push(("tsize", size.to_string())),
            "timeout" if (1..=MAX_TIMEOUT.as_secs()).contains(&asked) => {
                n.timeout = Duration::from_secs(asked);
                n.oack.push(("timeout", asked.to_string()));
            }
            "windowsize" if (1..=65535).contains(&asked) => {
                n.window = u16::try_from(asked).unwrap_or(1).min(window_limit.max(1));
                n.oack.push(("windowsize", n.window.to_string()));
            }
            _ => {}
        }
    }
    n
}

fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + message.len());
    p.extend_from_slice(&OP_ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

fn oack_packet(options: &[(&str, String)]) -> Vec<u8> {
    let mut p = OP_OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        p.push(0);
    }
    p
}

/// One read transfer in progress.
struct Transfer {
    data: Bytes,
    name: String,
    mac: Option<Mac>,
    blksize: u16,
    window: u16,
    timeout: Duration,
    /// Set at the client's first acknowledgement: a transfer never heard from gives way when
    /// every slot is taken (see `run`).
    heard: Arc<AtomicBool>,
}

impl Transfer {
    /// Blocks in the file: the last one is short, possibly empty.
    fn blocks(&self) -> u64 {
        self.data.len() as u64 / u64::from(self.blksize) + 1
    }

    /// Writes DATA packet `index` (1-based, not wrapped) into `buf`.
    fn data_packet(&self, index: u64, buf: &mut Vec<u8>) {
        let size = u64::from(self.blksize);
        let len = self.data.len() as u64;
        let start = (index.saturating_sub(1) * size).min(len);
        let end = (start + size).min(len);
        buf.clear();
        buf.extend_from_slice(&OP_DATA.to_be_bytes());
        // Block numbers wrap at 2^16 (files over 32 MiB with 512-byte blocks).
        buf.extend_from_slice(&((index & 0xffff) as u16).to_be_bytes());
        buf.extend_from_slice(&self.data[start as usize..end as usize]);
    }
}

/// What came back from the client while waiting for an acknowledgement.
enum Reply {
    /// ACK of wire block number `n`.
    Ack(u16),
    /// The client gave up (ERROR, or its port is closed).
    Gone,
    Silence,
}

async fn await_reply(
    sock: &TokioUdpSocket,
    deadline: tokio::time::Instant,
    buf: &mut [u8],
) -> io::Result<Reply> {
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            Err(_) => return Ok(Reply::Silence),
            // ICMP port unreachable after an earlier send: the client is gone.
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(Reply::Gone),
            Ok(r) => r?,
        };
        match &buf[..n] {
            [0, 4, a, b, ..] => return Ok(Reply::Ack(u16::from_be_bytes([*a, *b]))),
            [0, 5, ..] => return Ok(Reply::Gone),
            // Anything else from the client is ignored.
            _ => {}
        }
    }
}

/// How far an ACK of wire block `n` moves a window that starts at block `base` and ends at
/// `end` (inclusive, unwrapped): `Some(k)` acknowledges k blocks, `Some(0)` is an ACK of the
/// block just before the window, `None` anything else.
fn acked(base: u64, end: u64, n: u16) -> Option<u64> {
    let before = (base.wrapping_sub(1) & 0xffff) as u16;
    let k = u64::from(n.wrapping_sub(before));
    (k <= end + 1 - base).then_some(k)
}

/// Sends `transfer` to the connected client: the OACK first when options were settled, then
/// windows of `window` blocks, each answered by an ACK of the last block received in order
/// (RFC 7440). An ACK inside the window slides it to there at once; with windows of several
/// blocks, an ACK of the block before the window (the client missed its start) resends it
/// at once; silence resends it after the timeout.
async fn send_file(
    sock: &TokioUdpSocket,
    transfer: &Transfer,
    oack: Option<Vec<u8>>,
) -> Result<(), &'static str> {
    let mut recv_buf = [0u8; 516];
    let io_err = |_| "socket error";
    if let Some(oack) = oack {
        let mut sends = 0;
        'oack: loop {
            if sends == MAX_SENDS {
                return Err("no acknowledgement of the options");
            }
            sends += 1;
            sock.send(&oack).await.map_err(io_err)?;
            let deadline = tokio::time::Instant::now() + transfer.timeout;
            loop {
                match await_reply(sock, deadline, &mut recv_buf)
                    .await
                    .map_err(io_err)?
                {
                    Reply::Ack(0) => {
                        transfer.heard.store(true, Ordering::Relaxed);
                        break 'oack;
                    }
                    Reply::Ack(_) => {}
                    Reply::Silence => continue 'oack,
                    Reply::Gone => return Err("the client refused the options"),
                }
            }
        }
    }
    let blocks = transfer.blocks();
    let window = u64::from(transfer.window.max(1));
    let mut packet = Vec::with_capacity(usize::from(transfer.blksize) + 4);
    // The first block not acknowledged yet (1-based, unwrapped).
    let mut base: u64 = 1;
    let mut sends = 0;
    while base <= blocks {
        if sends == MAX_SENDS {
            return Err("the client stopped acknowledging");
        }
        sends += 1;
        let end = blocks.min(base + window - 1);
        for index in base..=end {
            transfer.data_packet(index, &mut packet);
            sock.send(&packet).await.map_err(io_err)?;
        }
        let deadline = tokio::time::Instant::now() + transfer.timeout;
        loop {
            match await_reply(sock, deadline, &mut recv_buf)
                .await
                .map_err(io_err)?
            {
                Reply::Ack(n) => {
                    transfer.heard.store(true, Ordering::Relaxed);
                    match acked(base, end, n) {
                        Some(0) if window > 1 => break,
                        Some(k) if k > 0 => {
                            base += k;
                            sends = 0;
                            break;
                        }
                        // A duplicate ACK in lock-step is not answered (Sorcerer's Apprentice).
                        _ => {}
                    }
                }
                Reply::Silence => break,
                Reply::Gone => return Err("the client gave up"),
            }
        }
    }
    Ok(())
}

/// Answers one request from a new socket (the transfer's own port, RFC 1350).
async fn serve_request(
    handler: TftpHandler,
    local: IpAddr,
    client: SocketAddr,
    request: Request,
    limits: Limits,
    heard: Arc<AtomicBool>,
) {
    let sock = match std::net::UdpSocket::bind(SocketAddr::new(local, 0))
        .and_then(|s| s.connect(client).map(|()| s))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .and_then(TokioUdpSocket::from_std)
    {
        Ok(sock) => sock,
        Err(e) => {
            tracing::warn!(client = %client, error = %e, "cannot open a tftp transfer socket");
            return;
        }
    };
    let refusal = if request.write {
        tracing::info!(client = %client, path = %request.path, "tftp write refused");
        Some((ERR_ACCESS, "read-only server"))
    } else if !matches!(request.mode.as_str(), "octet" | "netascii") {
        Some((ERR_ILLEGAL, "unsupported transfer mode"))
    } else {
        None
    };
    if let Some((code, message)) = refusal {
        let _ = sock.send(&error_packet(code, message)).await;
        return;
    }
    let Some((data, name, mac)) = handler.open(client, &request.path) else {
        let _ = sock
            .send(&error_packet(ERR_NOT_FOUND, "file not found"))
            .await;
        return;
    };
    let n = negotiate(
        &request.options,
        data.len() as u64,
        limits.block,
        limits.window,
        limits.timeout,
    );
    let oack = (!n.oack.is_empty()).then(|| oack_packet(&n.oack));
    let transfer = Transfer {
        data,
        name,
        mac,
        blksize: n.blksize,
        window: n.window,
        timeout: n.timeout,
        heard,
    };
    let result = send_file(&sock, &transfer, oack).await;
    handler.finished(&transfer, client, result);
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    block: u16,
    window: u16,
    timeout: Duration,
}

/// Serves TFTP on `socket` until `cancel` fires: read requests for the iPXE binaries, from
/// memory, one task and port per transfer; writes are refused.
pub async fn run(
    handler: TftpHandler,
    socket: UdpSocket,
    block_limit: u16,
    window_limit: u16,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?.ip();
    let socket = TokioUdpSocket::from_std(socket)?;
    let limits = Limits {
        block: block_limit,
        window: window_limit,
        timeout: RETRANSMIT_AFTER,
    };
    let slots = Arc::new(Semaphore::new(MAX_TRANSFERS));
    let active: Arc<Mutex<Active>> = Arc::default();
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, client) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "tftp receive error");
                    continue;
                }
            },
        };
        let Some(request) = parse_request(&buf[..n]) else {
            tracing::debug!(client = %client, len = n, "tftp packet ignored");
            continue;
        };
        // A repeated request while its transfer runs is a retransmission: ignore it; so is a
        // request from an address that already has its share of transfers.
        let (heard, stop) = match lock(&active).start(client) {
            Ok(started) => started,
            Err(Busy::Retransmission) => continue,
            Err(Busy::Address) => {
                tracing::debug!(client = %client, "too many tftp transfers from this address");
                continue;
            }
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                // Every slot is taken. Requests from many (possibly forged) addresses that never
                // acknowledge anything must not starve the machines that do: the oldest transfer
                // not heard from for `SILENT_GIVES_WAY` gives its slot to this one.
                let victim = lock(&active).oldest_silent(client, SILENT_GIVES_WAY);
                match victim {
                    Some(victim) => {
                        victim.cancel();
                        tokio::time::timeout(
                            Duration::from_millis(200),
                            Arc::clone(&slots).acquire_owned(),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok)
                    }
                    None => None,
                }
            }
        };
        let Some(slot) = slot else {
            lock(&active).end(client);
            tracing::warn!(client = %client, "too many tftp transfers; request ignored");
            continue;
        };
        let handler = handler.clone();
        let active = Arc::clone(&active);
        let cancel = cancel.clone();
        let span = tracing::info_span!("tftp", client = %client);
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = stop.cancelled() => {
                        tracing::debug!("silent tftp transfer gave its slot to a new request");
                    }
                    _ = serve_request(handler, local, client, request, limits, heard) => {}
                }
                lock(&active).end(client);
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// How long a transfer whose client never acknowledged anything keeps its slot when every slot
/// is taken and a new request comes.
pub const SILENT_GIVES_WAY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Transfers in progress: by client (address and port) and their count per address.
#[derive(Debug, Default)]
struct Active {
    clients: HashMap<SocketAddr, Running>,
    per_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Running {
    since: std::time::Instant,
    heard: Arc<AtomicBool>,
    stop: CancellationToken,
}

#[derive(Debug)]
enum Busy {
    Retransmission,
    Address,
}

impl Active {
    /// A new transfer for `client`: the flag its first acknowledgement sets, and the token
    /// that takes its slot away.
    fn start(&mut self, client: SocketAddr) -> Result<(Arc<AtomicBool>, CancellationToken), Busy> {
        if self.clients.contains_key(&client) {
            return Err(Busy::Retransmission);
        }
        let count = self.per_address.entry(client.ip()).or_default();
        if *count >= MAX_TRANSFERS_PER_ADDRESS {
            return Err(Busy::Address);
        }
        *count += 1;
        let running = Running {
            since: std::time::Instant::now(),
            heard: Arc::default(),
            stop: CancellationToken::new(),
        };
        let started = (Arc::clone(&running.heard), running.stop.clone());
        self.clients.insert(client, running);
        Ok(started)
    }

    /// The stop token of the oldest transfer, other than `except`'s, whose client has not
    /// acknowledged anything for at least `grace`.
    fn oldest_silent(&self, except: SocketAddr, grace: Duration) -> Option<CancellationToken> {
        self.clients
            .iter()
            .filter(|(c, r)| {
                **c != except
                    && !r.heard.load(Ordering::Relaxed)
                    && !r.stop.is_cancelled()
                    && r.since.elapsed() >= grace
            })
            .min_by_key(|(_, r)| r.since)
            .map(|(_, r)| r.stop.clone())
    }

    fn end(&mut self, client: SocketAddr) {
        if self.clients.remove(&client).is_some() {
            if let Some(count) = self.per_address.get_mut(&client.ip()) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.per_address.remove(&client.ip());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_and_mac_prefixes_resolve() {
        assert_eq!(
            resolve_request(Path::new("undionly.kpxe")),
            Some((None, "undionly.kpxe".to_string()))
        );
        assert_eq!(
            resolve_request(Path::new("/ipxe.efi")),
            Some((None, "ipxe.efi".to_string()))
        );
        let (mac, name) = resolve_request(Path::new("52-54-00-00-00-01/snponly.efi")).unwrap();
        assert_eq!(mac.unwrap().to_string(), "52:54:00:00:00:01");
        assert_eq!(name, "snponly.efi");
    }

    #[test]
    fn escapes_and_refused_names_do_not_resolve() {
        for p in [
            "../etc/passwd",
            "/../../etc/passwd",
            "a/../../b",
            "x/y/z",
            "not-a-mac/ipxe.efi",
            ".hidden",
            "autoexec.ipxe",
            "/autoexec.ipxe",
            "",
        ] {
            assert_eq!(resolve_request(Path::new(p)), None, "{p}");
        }
    }

    #[test]
    fn requests_parse_and_malformed_ones_are_dropped() {
        let rrq = parse_request(b"\x00\x01ipxe.efi\x00OCTET\x00BlkSize\x001468\x00tsize\x000\x00")
            .unwrap();
        assert!(!rrq.write);
        assert_eq!(rrq.path, "ipxe.efi");
        assert_eq!(rrq.mode, "octet");
        assert_eq!(
            rrq.options,
            vec![
                ("blksize".to_string(), "1468".to_string()),
                ("tsize".to_string(), "0".to_string())
            ]
        );
        assert!(parse_request(b"\x00\x02x\x00octet\x00").unwrap().write);
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x01",
            b"\x00\x01name-without-nul",
            b"\x00\x01\x00octet\x00",
            b"\x00\x01name\x00",
            b"\x00\x03\x00\x01data",
            b"\x00\x01\xff\xfe\x00octet\x00",
        ] {
            assert_eq!(parse_request(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn options_are_granted_within_the_limits() {
        let opts = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let t = Duration::from_secs(2);
        let n = negotiate(
            &opts(&[("blksize", "9000"), ("windowsize", "64"), ("tsize", "0")]),
            1234,
            1468,
            16,
            t,
        );
        assert_eq!((n.blksize, n.window), (1468, 16));
        assert_eq!(
            n.oack,
            vec![
                ("blksize", "1468".to_string()),
                ("windowsize", "16".to_string()),
                ("tsize", "1234".to_string())
            ]
        );
        let n = negotiate(
            &opts(&[
                ("blksize", "4"),
                ("windowsize", "0"),
                ("timeout", "0"),
                ("x", "1"),
            ]),
            1,
            1468,
            16,
            t,
        );
        assert_eq!((n.blksize, n.window, n.timeout), (512, 1, t));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn a_timeout_over_the_cap_is_refused_and_one_within_it_granted() {
        let opts = |t: &str| vec![("timeout".to_string(), t.to_string())];
        let default = Duration::from_secs(2);
        let n = negotiate(&opts("255"), 1, 1468, 16, default);
        assert_eq!(n.timeout, default);
        assert!(n.oack.is_empty(), "{:?}", n.oack);
        let n = negotiate(&opts("5"), 1, 1468, 16, default);
        assert_eq!(n.timeout, MAX_TIMEOUT);
        assert_eq!(n.oack, vec![("timeout", "5".to_string())]);
    }

    #[test]
    fn one_address_gets_at_most_its_share_of_transfers() {
        let mut active = Active::default();
        let a = |port| SocketAddr::from(([10, 0, 0, 1], port));
        let b = SocketAddr::from(([10, 0, 0, 2], 1000));
        for port in 0..MAX_TRANSFERS_PER_ADDRESS as u16 {
            assert!(active.start(a(port)).is_ok());
        }
        assert!(matches!(active.start(a(0)), Err(Busy::Retransmission)));
        assert!(matches!(active.start(a(999)), Err(Busy::Address)));
        assert!(active.start(b).is_ok());
        active.end(a(3));
        active.end(a(3));
        assert!(active.start(a(999)).is_ok());
        assert!(matches!(active.start(a(1000)), Err(Busy::Address)));
        for port in 0..MAX_TRANSFERS_PER_ADDRESS as u16 {
            active.end(a(port));
        }
        active.end(a(999));
        active.end(b);
        assert!(active.per_address.is_empty() && active.clients.is_empty());

        // When every slot is taken, the oldest transfer never heard from gives way; one that
        // acknowledged keeps its slot, and so does the asker's own.
        let (silent, acked) = (a(1), b);
        let (_, silent_stop) = active.start(silent).unwrap();
        let (acked_heard, _) = active.start(acked).unwrap();
        acked_heard.store(true, Ordering::Relaxed);
        assert!(active
            .oldest_silent(a(2), Duration::from_secs(3600))
            .is_none());
        let victim = active.oldest_silent(a(2), Duration::ZERO).unwrap();
        victim.cancel();
        assert!(silent_stop.is_cancelled());
        assert!(
            active.oldest_silent(a(2), Duration::ZERO).is_none(),
            "one stop each"
        );
        assert!(active.oldest_silent(silent, Duration::ZERO).is_none());
    }

    /// A client that asks for the longest timeout and never answers is given up after
    /// `MAX_SENDS` sends, each waiting the default timeout (here 50 ms), not its 255 s; with the
    /// largest timeout granted that is at most 30 s.
    #[tokio::test]
    async fn a_silent_client_is_given_up_after_a_bounded_number_of_sends() {
        const { assert!(MAX_SENDS as u64 * MAX_TIMEOUT.as_secs() <= 30) };
        let server = TokioUdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = TokioUdpSocket::bind("127.0.0.1:0").await.unwrap();
        server.connect(client.local_addr().unwrap()).await.unwrap();
        let asked = vec![("timeout".to_string(), "255".to_string())];
        let n = negotiate(&asked, 1_000_000, 1468, 16, Duration::from_millis(50));
        let transfer = Transfer {
            data: Bytes::from(vec![0u8; 1_000_000]),
            name: "ipxe.efi".into(),
            mac: None,
            blksize: n.blksize,
            window: n.window,
            timeout: n.timeout,
            heard: Arc::default(),
        };
        let started = tokio::time::Instant::now();
        let result = send_file(&server, &transfer, None).await;
        assert_eq!(result, Err("the client stopped acknowledging"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let mut sends = 0;
        let mut buf = [0u8; 600];
        while client.try_recv(&mut buf).is_ok() {
            sends += 1;
        }
        assert_eq!(sends, MAX_SENDS);
    }

    #[test]
    fn acks_slide_the_window_across_the_block_number_wrap() {
        assert_eq!(acked(1, 16, 16), Some(16));
        assert_eq!(acked(1, 16, 3), Some(3));
        assert_eq!(acked(1, 16, 0), Some(0));
        assert_eq!(acked(17, 32, 16), Some(0));
        assert_eq!(acked(17, 32, 5), None);
        assert_eq!(acked(17, 32, 40), None);
        // Blocks 65530..=65545 go out as 65530..=65535, 0..=9.
        assert_eq!(acked(65530, 65545, 65535), Some(6));
        assert_eq!(acked(65530, 65545, 9), Some(16));
        assert_eq!(acked(65536, 65551, 65535), Some(0));
        assert_eq!(acked(65536, 65551, 0), Some(1));
    }

    /// A client that drops the first packet of the second window, then ACKs the last block
    /// it got in order, as RFC 7440 asks.
    #[tokio::test]
    async fn a_windowed_transfer_recovers_from_a_lost_block_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("ipxe.efi"), &data).unwrap();
        let db = crate::db::Db::open(dir.path()).await.unwrap();
        let metrics = Metrics::default();
        let clock: crate::support::clock::SharedClock =
            Arc::new(crate::support::clock::SystemClock);
        let (recorder, _writer) = Recorder::new(db, clock, metrics.clone());
        let handler = TftpHandler::new(
            IpxeFiles::new(dir.path().to_path_buf()),
            recorder,
            Neighbours::default(),
            metrics,
        );
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(handler, server, 1468, 8, cancel.clone()));
        let client = TokioUdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(
                b"\x00\x01ipxe.efi\x00octet\x00blksize\x001000\x00windowsize\x0016\x00",
                addr,
            )
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let started = std::time::Instant::now();
        let (n, peer) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\x00\x06blksize\x001000\x00windowsize\x008\x00");
        client.send_to(b"\x00\x04\x00\x00", peer).await.unwrap();
        let mut got = Vec::new();
        let mut next: u16 = 1;
        let mut dropped = false;
        let mut in_window = 0;
        loop {
            let (n, _) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..2], b"\x00\x03");
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            if block == 9 && !dropped {
                dropped = true;
                continue;
            }
            if block != next {
                if block == 10 {
                    client.send_to(&[0, 4, 0, 8], peer).await.unwrap();
                }
                continue;
            }
            got.extend_from_slice(&buf[4..n]);
            next += 1;
            in_window += 1;
            let last = n - 4 < 1000;
            if last || in_window == 8 {
                in_window = 0;
                client
                    .send_to(&[0, 4, (block >> 8) as u8, block as u8], peer)
                    .await
                    .unwrap();
            }
            if last {
                break;
            }
        }
        assert_eq!(got, data);
        assert!(
            started.elapsed() < RETRANSMIT_AFTER,
            "{:?}",
            started.elapsed()
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn cache_notices_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.efi"), b"one").unwrap();
        let files = IpxeFiles::new(dir.path().to_path_buf());
        assert_eq!(&files.load("a.efi").unwrap()[..], b"one");
        std::fs::write(dir.path().join("a.efi"), b"second").unwrap();
        assert_eq!(&files.load("a.efi").unwrap()[..], b"second");
        assert!(files.load("missing.efi").is_err());
    }
}
