//! The TFTP listener: read requests in, one task and port per transfer, within the limits on
//! transfers in flight (in all and per address); a silent transfer gives way when all are taken.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket as TokioUdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::transfer::{serve_request, Limits, TftpHandler};
use super::wire::parse_request;
use super::TftpError;

/// Silence after which a window (or the OACK) is sent again, unless the client asked for
/// another timeout.
pub const RETRANSMIT_AFTER: Duration = Duration::from_secs(2);

/// Transfers in progress at once; read requests past it are ignored (the client asks again).
pub const MAX_TRANSFERS: usize = 1024;
/// Transfers in progress at once for one client address: a host holding silent transfers
/// cannot take the slots other machines need.
pub const MAX_TRANSFERS_PER_ADDRESS: usize = 8;

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
    use super::super::IpxeFiles;
    use super::*;
    use crate::inventory::{Neighbours, Recorder};
    use crate::support::metrics::Metrics;

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

    /// Downloads a 100,000-byte `ipxe.efi` from [`run`] as a windowed client asking for
    /// blksize 1000 and windowsize 16 (granted 8), losing each block in `lose` once. A block
    /// out of order is answered with an ACK of the last block in order: for every such block
    /// (`every_gap`, as OVMF does), else once until the transfer moves on (RFC 7440). Returns
    /// the file, the bytes received, the time taken and the server's metrics.
    async fn windowed_download(
        mut lose: Vec<u16>,
        every_gap: bool,
    ) -> (Vec<u8>, Vec<u8>, std::time::Duration, Metrics) {
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
            metrics.clone(),
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
        let (mut got, mut next, mut in_window, mut nudged) = (Vec::new(), 1u16, 0, false);
        loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
                .await
                .expect("the server stopped sending")
                .unwrap();
            assert_eq!(&buf[..2], b"\x00\x03");
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            if let Some(at) = lose.iter().position(|b| *b == block) {
                lose.remove(at);
                continue;
            }
            if block != next {
                if every_gap || !nudged {
                    nudged = true;
                    let before = next - 1;
                    client
                        .send_to(&[0, 4, (before >> 8) as u8, before as u8], peer)
                        .await
                        .unwrap();
                }
                continue;
            }
            nudged = false;
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
        let elapsed = started.elapsed();
        // The server counts what it sent again when the transfer ends, just after the last ACK.
        for _ in 0..100 {
            if metrics
                .tftp_transfers
                .get_or_create(&crate::support::metrics::ResultLabel { result: "ok" })
                .get()
                > 0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        task.await.unwrap().unwrap();
        (data, got, elapsed, metrics)
    }

    /// A client that drops the first packet of the second window, then ACKs the last block
    /// it got in order, as RFC 7440 asks: the window comes again at once.
    #[tokio::test]
    async fn a_windowed_transfer_recovers_from_a_lost_block_at_once() {
        let (data, got, elapsed, metrics) = windowed_download(vec![9], false).await;
        assert_eq!(got, data);
        assert!(elapsed < RETRANSMIT_AFTER, "{elapsed:?}");
        assert_eq!(metrics.tftp_resent.get(), 8);
    }

    /// A client that acknowledges the block before the window for every block it gets out of
    /// order (as OVMF's does), losing the first block of seven windows: each loss is answered by
    /// one resend of the window, not one per such ACK, and the transfer goes on to the end.
    #[tokio::test]
    async fn repeated_acks_of_a_lost_window_bring_one_resend_each() {
        let lose = (1..8).map(|w| w * 8 + 1).collect();
        let (data, got, elapsed, metrics) = windowed_download(lose, true).await;
        assert_eq!(got, data);
        assert!(elapsed < RETRANSMIT_AFTER, "{elapsed:?}");
        assert_eq!(metrics.tftp_resent.get(), 7 * 8);
    }
}
