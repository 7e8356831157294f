//! Zero-copy sending of boot assets: the HTTP connections hand a mapped asset chunk to the
//! kernel with `sendfile(2)` instead of copying its bytes into the socket.
//!
//! hyper writes a response body as the `Bytes` it was given (vectored writes, no flattening),
//! so an asset chunk reaches the connection's `poll_write_vectored` as the very memory map
//! `files` made of it. Each such map is recorded in [`Regions`] with its file and offset; the
//! connection stream ([`ZeroCopyStream`]) looks every slice it is asked to write up there and
//! sends a recorded one from the file (the page cache) instead of from memory. Anything else
//! (headers, scripts, the iPXE binaries in memory, HTTP/2 frames) is written as it is.
//!
//! The listener also bounds what clients can hold: connections in all and per client address
//! (one over a cap is closed at once and counted), and each connection is closed when nothing
//! was read or written for the idle timeout while the server waits on it.
//!
//! Correctness never rests on the lookup: a map holds exactly the bytes of the file range it
//! names, so a chunk that reaches the socket some other way (copied into a buffer first) still
//! sends the right bytes, only with one more copy.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::HttpLimits;
use crate::support::metrics::ReasonLabel;

/// Most bytes one `sendfile` call is asked for; a socket takes less when its buffer is full.
const MAX_SENDFILE: usize = 4 << 20;

/// Where a recorded region's bytes live: an open file and the offset of the region's start.
#[derive(Clone)]
struct Region {
    len: usize,
    file: Arc<std::fs::File>,
    offset: u64,
}

/// The memory maps of asset chunks that are alive now, by start address, and the count of
/// bytes sent from them with `sendfile`.
#[derive(Clone, Default)]
pub struct Regions {
    map: Arc<Mutex<BTreeMap<usize, Region>>>,
    sent: Counter,
}

impl std::fmt::Debug for Regions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.alive();
        f.debug_struct("Regions").field("alive", &n).finish()
    }
}

impl Regions {
    /// An empty registry that counts the bytes it sends in `sent`.
    pub fn counting(sent: Counter) -> Regions {
        Regions {
            map: Arc::default(),
            sent,
        }
    }

    /// Records that `len` bytes at `start` are `file` from `offset` on, until [`Regions::remove`].
    pub fn insert(&self, start: usize, len: usize, file: Arc<std::fs::File>, offset: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(start, Region { len, file, offset });
    }

    /// Forgets the region recorded at `start` (before its memory is unmapped).
    pub fn remove(&self, start: usize) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&start);
    }

    /// The file and offset holding `slice`, if it lies wholly inside a recorded region.
    fn lookup(&self, slice: &[u8]) -> Option<(Arc<std::fs::File>, u64)> {
        if slice.is_empty() {
            return None;
        }
        let addr = slice.as_ptr() as usize;
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (&start, region) = map.range(..=addr).next_back()?;
        let skip = addr - start;
        if skip.checked_add(slice.len())? > region.len {
            return None;
        }
        Some((Arc::clone(&region.file), region.offset + skip as u64))
    }

    /// How many regions are recorded (tests and diagnostics).
    pub fn alive(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Open connections, in all and per client address, with the caps they are held to.
#[derive(Clone, Debug)]
pub struct ConnectionCaps {
    counts: Arc<Mutex<Counts>>,
    max: usize,
    max_per_address: usize,
    open: Gauge,
    refused: Family<ReasonLabel, Counter>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    /// Every admitted connection, by id: what eviction looks at.
    live: HashMap<u64, Live>,
    next_id: u64,
}

/// An admitted connection as eviction sees it.
#[derive(Debug)]
struct Live {
    since: Instant,
    /// Set once the server has written anything on it (it completed a request).
    answered: Arc<AtomicBool>,
    /// Closes it (its next poll fails).
    kill: CancellationToken,
}

/// How long a connection that has not been answered yet is safe from eviction.
pub const UNANSWERED_GIVES_WAY: Duration = Duration::from_secs(1);

impl ConnectionCaps {
    pub fn new(
        max: usize,
        max_per_address: usize,
        open: Gauge,
        refused: Family<ReasonLabel, Counter>,
    ) -> ConnectionCaps {
        ConnectionCaps {
            counts: Arc::default(),
            max,
            max_per_address,
            open,
            refused,
        }
    }

    /// A slot for one more connection from `ip`, or `None` (counted) when a cap is reached.
    ///
    /// At the total cap, the oldest connection that was never answered (it has not finished a
    /// request head, or its body, for [`UNANSWERED_GIVES_WAY`]) is closed to make room: many
    /// addresses holding half-open connections cannot keep a booting machine or an operator
    /// out. Each connection is evicted at most once, so the count stays under twice the cap
    /// while evicted ones close.
    fn admit(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let reason = if counts.per_address.get(&ip).copied().unwrap_or(0) >= self.max_per_address {
            Some("per_address")
        } else if counts.total >= self.max {
            let victim = counts
                .live
                .values()
                .filter(|l| {
                    !l.answered.load(Ordering::Relaxed)
                        && !l.kill.is_cancelled()
                        && l.since.elapsed() >= UNANSWERED_GIVES_WAY
                })
                .min_by_key(|l| l.since);
            match victim {
                Some(victim) => {
                    victim.kill.cancel();
                    self.refused
                        .get_or_create(&ReasonLabel {
                            reason: "evicted_unanswered",
                        })
                        .inc();
                    None
                }
                None => Some("total"),
            }
        } else {
            None
        };
        if let Some(reason) = reason {
            drop(counts);
            self.refused.get_or_create(&ReasonLabel { reason }).inc();
            return None;
        }
        counts.total += 1;
        *counts.per_address.entry(ip).or_insert(0) += 1;
        let id = counts.next_id;
        counts.next_id += 1;
        let live = Live {
            since: Instant::now(),
            answered: Arc::default(),
            kill: CancellationToken::new(),
        };
        let slot = ConnectionSlot {
            caps: self.clone(),
            ip,
            id,
            answered: Arc::clone(&live.answered),
            kill: live.kill.clone(),
        };
        counts.live.insert(id, live);
        self.open.inc();
        Some(slot)
    }
}

/// One admitted connection; its place is given back when it is dropped.
#[derive(Debug)]
struct ConnectionSlot {
    caps: ConnectionCaps,
    ip: IpAddr,
    id: u64,
    answered: Arc<AtomicBool>,
    kill: CancellationToken,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.caps.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.live.remove(&self.id);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_address.remove(&self.ip);
            }
        }
        self.caps.open.dec();
    }
}

/// The HTTP listener: accepts TCP connections as [`ZeroCopyStream`]s, within the caps.
pub struct ZeroCopyListener {
    listener: TcpListener,
    regions: Regions,
    caps: ConnectionCaps,
    idle_timeout: Duration,
}

impl ZeroCopyListener {
    pub fn new(
        listener: TcpListener,
        regions: Regions,
        limits: &HttpLimits,
        metrics: &crate::support::metrics::Metrics,
    ) -> ZeroCopyListener {
        let caps = ConnectionCaps::new(
            limits.max_connections,
            limits.max_connections_per_address,
            metrics.http_connections.clone(),
            metrics.http_connections_refused.clone(),
        );
        ZeroCopyListener {
            listener,
            regions,
            caps,
            idle_timeout: limits.idle_timeout,
        }
    }
}

impl axum::serve::Listener for ZeroCopyListener {
    type Io = ZeroCopyStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    // Over a cap: dropped here, which closes it before anything is read.
                    let Some(slot) = self.caps.admit(addr.ip()) else {
                        tracing::debug!(peer = %addr, "http connection over the cap closed");
                        continue;
                    };
                    let stream = ZeroCopyStream {
                        inner: stream,
                        regions: self.regions.clone(),
                        idle: Some(Idle::new(self.idle_timeout, slot.kill.clone())),
                        _slot: Some(slot),
                    };
                    return (stream, addr);
                }
                // Out of file descriptors or memory, or a connection that was reset before it
                // was accepted: say so and go on (a pause for the shortage to pass).
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// The idle timer of a connection: it fires when nothing was read or written for `timeout`
/// while the server waited on the socket. Progress only stamps the time; the timer is moved
/// when it fires early.
struct Idle {
    timeout: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    /// Fires when the connection is evicted to make room for another.
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("timeout", &self.timeout)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Idle {
    fn new(timeout: Duration, kill: CancellationToken) -> Idle {
        let now = Instant::now();
        Idle {
            timeout,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            evicted: Box::pin(kill.cancelled_owned()),
        }
    }

    fn progressed(&mut self) {
        self.last = Instant::now();
    }

    /// Ready with an error once the connection has been idle for the timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.evicted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "unanswered http connection evicted for a new one",
            ));
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last + self.timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "http connection idle too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

/// `result` of an I/O poll, with the idle timer stamped on progress and checked while pending.
fn watch<T>(
    idle: &mut Option<Idle>,
    cx: &mut Context<'_>,
    result: Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    let Some(idle) = idle else {
        return result;
    };
    match result {
        Poll::Ready(r) => {
            idle.progressed();
            Poll::Ready(r)
        }
        Poll::Pending => match idle.poll_expired(cx) {
            Poll::Ready(e) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        },
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An accepted HTTP connection that sends recorded asset regions with `sendfile`.
pub struct ZeroCopyStream {
    inner: TcpStream,
    regions: Regions,
    /// `None` in unit tests that build a stream by hand.
    idle: Option<Idle>,
    _slot: Option<ConnectionSlot>,
}

impl ZeroCopyStream {
    /// Turns Nagle's algorithm off: a response's last segment leaves at once.
    pub fn set_nodelay(&mut self) {
        if let Err(e) = self.inner.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY refused");
        }
    }

    /// Runs `op` on the socket once it is writable, until it stops saying "would block".
    fn poll_io<R>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let fd = self.inner.as_fd();
            match self.inner.try_io(Interest::WRITABLE, || op(fd)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        watch(&mut this.idle, cx, result)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Writes some of `bufs` ([`ZeroCopyStream::write_some`]), watching the idle timer.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self.as_mut().write_some(cx, bufs);
        let this = &mut *self;
        if let (Poll::Ready(Ok(n)), Some(slot)) = (&result, &this._slot) {
            if *n > 0 {
                slot.answered.store(true, Ordering::Relaxed);
            }
        }
        watch(&mut this.idle, cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl ZeroCopyStream {
    /// Writes the leading slices that are plain memory (with `MSG_MORE` when a recorded region
    /// follows, so headers and the first file bytes leave in one segment), or, when the first
    /// slice is a recorded region, sends it from its file. Either way a short count is normal:
    /// hyper calls again with the rest.
    fn write_some(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut region = None;
        let mut plain = bufs.len();
        for (i, buf) in bufs.iter().enumerate() {
            if let Some(found) = self.regions.lookup(buf) {
                region = Some(found);
                plain = i;
                break;
            }
        }
        match region {
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            Some((file, offset)) if plain == 0 => {
                let count = bufs[0].len().min(MAX_SENDFILE);
                self.poll_io(cx, |socket| {
                    let mut offset = i64::try_from(offset).map_err(io::Error::other)?;
                    let sent =
                        nix::sys::sendfile::sendfile64(socket, &*file, Some(&mut offset), count)?;
                    if sent == 0 {
                        // The file is shorter than when it was mapped (truncated in place).
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "asset file shrank while being sent",
                        ));
                    }
                    self.regions.sent.inc_by(sent as u64);
                    Ok(sent)
                })
            }
            Some(_) => {
                let head = &bufs[..plain];
                self.poll_io(cx, |socket| {
                    use std::os::fd::AsRawFd;
                    let sent = nix::sys::socket::sendmsg::<()>(
                        socket.as_raw_fd(),
                        head,
                        &[],
                        MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL,
                        None,
                    )?;
                    Ok(sent)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_slices_wholly_inside_a_recorded_region_are_found() {
        let regions = Regions::default();
        let memory = [7u8; 100];
        let file = Arc::new(tempfile::tempfile().unwrap());
        regions.insert(memory[10..].as_ptr() as usize, 50, Arc::clone(&file), 4096);
        assert_eq!(regions.lookup(&memory[10..60]).map(|(_, o)| o), Some(4096));
        assert_eq!(regions.lookup(&memory[25..30]).map(|(_, o)| o), Some(4111));
        assert!(regions.lookup(&memory[..20]).is_none(), "starts before");
        assert!(
            regions.lookup(&memory[50..61]).is_none(),
            "runs past the end"
        );
        assert!(regions.lookup(&memory[60..70]).is_none(), "after");
        assert!(regions.lookup(&memory[20..20]).is_none(), "empty");
        regions.remove(memory[10..].as_ptr() as usize);
        assert!(regions.lookup(&memory[10..60]).is_none());
        assert_eq!(regions.alive(), 0);
    }

    #[tokio::test]
    async fn a_recorded_slice_is_sent_from_its_file_and_the_rest_from_memory() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        let contents: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        file.write_all(&contents).unwrap();
        let file = Arc::new(file);
        // What the file says at offset 1000, in memory that is *not* the file's bytes: what
        // arrives proves which way each slice went.
        let stand_in = vec![0u8; 200_000];
        let sent = Counter::default();
        let regions = Regions::counting(sent.clone());
        regions.insert(stand_in.as_ptr() as usize, stand_in.len(), file, 1000);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            // A fixed receive buffer: autotuning would let the reader take more per turn
            // on some hosts than on others.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(64 << 10).unwrap();
            let mut peer = socket.connect(addr).await.unwrap();
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let (inner, _) = listener.accept().await.unwrap();
        let mut stream = ZeroCopyStream {
            inner,
            regions,
            idle: None,
            _slot: None,
        };
        let mut bufs = [IoSlice::new(b"head:"), IoSlice::new(&stand_in)];
        let mut slices = &mut bufs[..];
        while !slices.is_empty() {
            let n = stream.write_vectored(slices).await.unwrap();
            IoSlice::advance_slices(&mut slices, n);
        }
        stream.write_all(b":tail").await.unwrap();
        stream.shutdown().await.unwrap();
        drop(stream);
        let got = reader.await.unwrap();
        assert_eq!(&got[..5], b"head:");
        assert_eq!(&got[5..200_005], &contents[1000..201_000]);
        assert_eq!(&got[200_005..], b":tail");
        assert_eq!(sent.get(), 200_000);
    }

    #[tokio::test]
    async fn short_sends_resume_where_they_stopped_once_the_reader_makes_room() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        let contents: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&contents).unwrap();
        let stand_in = vec![0u8; contents.len()];
        let sent = Counter::default();
        let regions = Regions::counting(sent.clone());
        regions.insert(
            stand_in.as_ptr() as usize,
            stand_in.len(),
            Arc::new(file),
            0,
        );

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A reader that takes little at a time, so the sender's small buffer fills again and
        // again: most sends stop short and must wait for room.
        let reader = tokio::spawn(async move {
            let mut peer = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            let mut piece = vec![0u8; 16 << 10];
            loop {
                let n = peer.read(&mut piece).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&piece[..n]);
                tokio::task::yield_now().await;
            }
        });
        let (inner, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&inner)
            .set_send_buffer_size(64 << 10)
            .unwrap();
        let mut stream = ZeroCopyStream {
            inner,
            regions,
            idle: None,
            _slot: None,
        };
        let mut writes = 0;
        let mut rest: &[u8] = &stand_in;
        let sending = async {
            while !rest.is_empty() {
                let n = stream.write(rest).await.unwrap();
                assert!(n > 0 && n <= MAX_SENDFILE);
                rest = &rest[n..];
                writes += 1;
            }
            stream.shutdown().await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(60), sending)
            .await
            .expect("the sender waited for room that never came");
        drop(stream);
        let got = reader.await.unwrap();
        assert!(
            writes > 10,
            "the sends never stopped short ({writes} writes)"
        );
        assert_eq!(got.len(), contents.len());
        assert!(got == contents, "bytes lost, repeated or out of order");
        assert_eq!(sent.get(), contents.len() as u64);
    }
}
