//! One read transfer: the file opened for the machine asking, the OACK, windows of blocks
//! sent and acknowledged (RFC 7440), and what is reported when it ends.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket as TokioUdpSocket;

use super::files::{resolve_request, IpxeFiles};
use super::wire::{
    error_packet, negotiate, oack_packet, Request, ERR_ACCESS, ERR_ILLEGAL, ERR_NOT_FOUND, OP_DATA,
};
use crate::inventory::{Neighbours, Recorder};
use crate::model::{EventKind, Mac};
use crate::support::metrics::Metrics;

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

/// Sends of one window (or of the OACK) before a silent client is given up: with
/// [`MAX_TIMEOUT`](super::MAX_TIMEOUT), a silent client frees its slot within 30 s.
const MAX_SENDS: u32 = 6;

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
    /// Whether a window may leave in segmented sends: the socket takes `UDP_SEGMENT`, and no
    /// segmented send of this transfer was refused yet.
    segmenting: AtomicBool,
}

impl Transfer {
    /// Blocks in the file: the last one is short, possibly empty.
    fn blocks(&self) -> u64 {
        self.data.len() as u64 / u64::from(self.blksize) + 1
    }

    /// Writes DATA packet `index` (1-based, not wrapped) into `buf`.
    fn data_packet(&self, index: u64, buf: &mut Vec<u8>) {
        buf.clear();
        self.append_data_packet(index, buf);
    }

    /// Appends DATA packet `index` (1-based, not wrapped) to `buf`.
    fn append_data_packet(&self, index: u64, buf: &mut Vec<u8>) {
        let size = u64::from(self.blksize);
        let len = self.data.len() as u64;
        let start = (index.saturating_sub(1) * size).min(len);
        let end = (start + size).min(len);
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
/// Packets sent again are counted in `resent`.
async fn send_file(
    sock: &TokioUdpSocket,
    transfer: &Transfer,
    oack: Option<Vec<u8>>,
    resent: &mut u64,
) -> Result<(), &'static str> {
    let mut recv_buf = [0u8; 516];
    let io_err = |_| "socket error";
    if let Some(oack) = oack {
        let mut sends = 0;
        'oack: loop {
            if sends == MAX_SENDS {
                return Err("no acknowledgement of the options");
            }
            if sends > 0 {
                *resent += 1;
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
    // The first block not acknowledged yet (1-based, unwrapped).
    let mut base: u64 = 1;
    let mut sends = 0;
    while base <= blocks {
        if sends == MAX_SENDS {
            return Err("the client stopped acknowledging");
        }
        let end = blocks.min(base + window - 1);
        if sends > 0 {
            *resent += end + 1 - base;
        }
        sends += 1;
        send_window(sock, transfer, base, end).await?;
        let mut deadline = tokio::time::Instant::now() + transfer.timeout;
        // The window was asked for again (an ACK of the block before it) this round.
        let mut echoed = false;
        loop {
            match await_reply(sock, deadline, &mut recv_buf)
                .await
                .map_err(io_err)?
            {
                Reply::Ack(n) => {
                    transfer.heard.store(true, Ordering::Relaxed);
                    match acked(base, end, n) {
                        // The client missed the window's start: send the window again at once,
                        // once per round. A windowed client acknowledges each block it gets
                        // out of order, so one lost block brings several such ACKs; answering
                        // each would multiply the traffic and, counted as rounds without
                        // progress, end a transfer that is moving.
                        Some(0) if window > 1 && !echoed => {
                            echoed = true;
                            *resent += end + 1 - base;
                            send_window(sock, transfer, base, end).await?;
                            deadline = tokio::time::Instant::now() + transfer.timeout;
                        }
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

/// Most datagrams one segmented send carries (the kernel's `UDP_MAX_SEGMENTS` before Linux 6.9).
const MAX_SEGMENTS: u64 = 64;

/// Most bytes one UDP send over IPv4 carries.
const MAX_UDP_PAYLOAD: u64 = 65_507;

/// Sends DATA blocks `base..=end`. Where it can, it hands the kernel several blocks in one
/// segmented send (UDP generic segmentation offload, `UDP_SEGMENT`): the blocks still leave as
/// separate datagrams, each exactly as a block-by-block send makes it, for one trip through the
/// socket layer instead of one per block. When the kernel refuses one ([`refuses_segmenting`]:
/// no checksum offload on the route, a block too big for the path MTU), this transfer goes
/// block by block from then on; any other error ends it as before. The packets are built in a
/// buffer of this call's own, freed when it returns: a thousand transfers waiting for their
/// ACKs hold none.
async fn send_window(
    sock: &TokioUdpSocket,
    transfer: &Transfer,
    base: u64,
    end: u64,
) -> Result<(), &'static str> {
    let segment = usize::from(transfer.blksize) + 4;
    let per_send = MAX_SEGMENTS.min(MAX_UDP_PAYLOAD / segment as u64).max(1);
    let mut packet = Vec::with_capacity(segment * per_send.min(end + 1 - base) as usize);
    let mut next = base;
    while next <= end {
        let last = end.min(next + per_send - 1);
        if last > next && transfer.segmenting.load(Ordering::Relaxed) {
            packet.clear();
            for index in next..=last {
                transfer.append_data_packet(index, &mut packet);
            }
            match send_segmented(sock, &packet, segment).await {
                Ok(()) => {
                    next = last + 1;
                    continue;
                }
                Err(e) if refuses_segmenting(&e) => {
                    transfer.segmenting.store(false, Ordering::Relaxed);
                    tracing::debug!(file = %transfer.name, blksize = transfer.blksize, error = %e,
                        "segmented UDP send refused; this transfer goes block by block");
                }
                Err(_) => return Err("socket error"),
            }
        }
        transfer.data_packet(next, &mut packet);
        sock.send(&packet).await.map_err(|_| "socket error")?;
        next += 1;
    }
    Ok(())
}

/// Whether a failed segmented send was the kernel refusing segmentation itself (the blocks
/// can still go one by one), rather than a socket error that would fail those too.
fn refuses_segmenting(e: &io::Error) -> bool {
    use nix::libc;
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::EMSGSIZE | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// Whether `sock` takes segmented sends: Linux knows `UDP_SEGMENT` since 4.18 (an older kernel
/// would ignore the control message and send one oversized datagram).
fn can_segment(sock: &TokioUdpSocket) -> bool {
    nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::UdpGsoSegment).is_ok()
}

/// Sends `datagrams` (each `segment` bytes, the last possibly shorter) with one `sendmsg`
/// carrying `UDP_SEGMENT`.
async fn send_segmented(sock: &TokioUdpSocket, datagrams: &[u8], segment: usize) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
    use std::os::fd::AsRawFd;
    let size = u16::try_from(segment).map_err(io::Error::other)?;
    let sent = sock
        .async_io(tokio::io::Interest::WRITABLE, || {
            let cmsg = [ControlMessage::UdpGsoSegments(&size)];
            let iov = [io::IoSlice::new(datagrams)];
            sendmsg::<SockaddrIn>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(io::Error::from)
        })
        .await?;
    if sent != datagrams.len() {
        return Err(io::Error::other("segmented send cut short"));
    }
    Ok(())
}

/// Answers one request from a new socket (the transfer's own port, RFC 1350).
pub(super) async fn serve_request(
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
        segmenting: AtomicBool::new(can_segment(&sock)),
    };
    let mut resent = 0;
    let result = send_file(&sock, &transfer, oack, &mut resent).await;
    handler.metrics.tftp_resent.inc_by(resent);
    handler.finished(&transfer, client, result);
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) block: u16,
    pub(super) window: u16,
    pub(super) timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::super::wire::MAX_TIMEOUT;
    use super::*;

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
            segmenting: AtomicBool::new(true),
        };
        let started = tokio::time::Instant::now();
        let mut resent = 0;
        let result = send_file(&server, &transfer, None, &mut resent).await;
        assert_eq!(result, Err("the client stopped acknowledging"));
        // Every send after the first is counted as sent again.
        assert_eq!(resent, u64::from(MAX_SENDS) - 1);
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

    /// Sets `SO_NO_CHECK` on `sock`: Linux then refuses segmented sends on it (EINVAL), as it
    /// does on a route without checksum offload.
    #[allow(unsafe_code)]
    fn refuse_segmenting(sock: &std::net::UdpSocket) {
        use std::os::fd::AsRawFd;
        let one: nix::libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the size passed.
        let rc = unsafe {
            nix::libc::setsockopt(
                sock.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_NO_CHECK,
                (&one as *const nix::libc::c_int).cast(),
                std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }

    /// A window leaves as one datagram per block, byte for byte what block-by-block sending
    /// makes, whether the kernel segments it (in sends of at most 44 blocks of 1468 bytes) or
    /// refuses to (then the transfer goes block by block). The file is an exact multiple of
    /// the block size, so its last block is empty.
    #[tokio::test]
    async fn a_window_arrives_as_one_datagram_per_block_segmented_or_not() {
        for refused in [false, true] {
            let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            server.connect(client.local_addr().unwrap()).unwrap();
            if refused {
                refuse_segmenting(&server);
            }
            server.set_nonblocking(true).unwrap();
            let server = TokioUdpSocket::from_std(server).unwrap();
            let supported = can_segment(&server);
            let data: Vec<u8> = (0..1468 * 50).map(|i| (i % 251) as u8).collect();
            let transfer = Transfer {
                data: Bytes::from(data),
                name: "ipxe.efi".into(),
                mac: None,
                blksize: 1468,
                window: 64,
                timeout: Duration::from_secs(1),
                heard: Arc::default(),
                segmenting: AtomicBool::new(supported),
            };
            assert_eq!(transfer.blocks(), 51);
            send_window(&server, &transfer, 1, 51).await.unwrap();
            assert_eq!(
                transfer.segmenting.load(Ordering::Relaxed),
                supported && !refused
            );
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 2000];
            for index in 1..=51u64 {
                let n = client.recv(&mut buf).unwrap();
                let mut want = Vec::new();
                transfer.data_packet(index, &mut want);
                assert_eq!(&buf[..n], &want[..], "block {index}, refused: {refused}");
            }
            client.set_nonblocking(true).unwrap();
            assert!(client.recv(&mut buf).is_err(), "a datagram too many");
        }
    }

    /// A send that fails for another reason (here the client's port is closed) ends the
    /// transfer as a socket error, as block-by-block sending did; it is not taken for a
    /// refusal to segment.
    #[tokio::test]
    async fn a_socket_error_is_not_taken_for_a_refusal_to_segment() {
        let server = TokioUdpSocket::bind("127.0.0.1:0").await.unwrap();
        let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.connect(gone.local_addr().unwrap()).await.unwrap();
        drop(gone);
        let supported = can_segment(&server);
        let transfer = Transfer {
            data: Bytes::from(vec![7u8; 1468 * 8]),
            name: "ipxe.efi".into(),
            mac: None,
            blksize: 1468,
            window: 4,
            timeout: Duration::from_secs(1),
            heard: Arc::default(),
            segmenting: AtomicBool::new(supported),
        };
        // The first window goes out; the port unreachable it brings back fails the next send.
        send_window(&server, &transfer, 1, 4).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            send_window(&server, &transfer, 5, 8).await,
            Err("socket error")
        );
        assert_eq!(transfer.segmenting.load(Ordering::Relaxed), supported);
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
}
