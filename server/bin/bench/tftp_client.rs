//! An async TFTP read client (RFC 1350) with the blksize (RFC 2348), tsize (RFC 2349) and
//! windowsize (RFC 7440) options, so one client drives every server alike. Every byte is
//! compared with the file served.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::net::UdpSocket;
use tokio::sync::Barrier;

use crate::stats::Latencies;
use crate::sys::own_cpu_secs;

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
/// Silence after which the last packet is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Silences in a row before the transfer is given up: 12 s, as long as a server waiting 2 s
/// for each of its 6 sends keeps a transfer (a lost resend must not end a transfer that a
/// firmware client would see through).
const RETRIES: u32 = 24;

/// Options asked for in the read request.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub blksize: u16,
    pub windowsize: Option<u16>,
}

/// One verified transfer.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
    /// What the server granted (512 and 1 when it ignored the options).
    pub blksize: u16,
    pub windowsize: u16,
    /// ACKs sent again after silence or out-of-order blocks.
    pub retries: u32,
}

fn rrq(file: &str, opts: Options, tsize: bool) -> Vec<u8> {
    let mut p = RRQ.to_be_bytes().to_vec();
    for part in [file, "octet"] {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    let mut option = |name: &str, value: String| {
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        p.push(0);
    };
    option("blksize", opts.blksize.to_string());
    if tsize {
        option("tsize", "0".into());
    }
    if let Some(w) = opts.windowsize {
        option("windowsize", w.to_string());
    }
    p
}

fn ack(block: u16) -> [u8; 4] {
    let [a, b] = ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// The options of an OACK as (name, value) pairs, names lowercased.
fn parse_oack(body: &[u8]) -> Vec<(String, String)> {
    let parts: Vec<String> = body
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    parts
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
        .collect()
}

/// Reads `file` from `server` (port 69) from a socket bound to `local`, checking every byte
/// against `expected`.
pub async fn get(
    server: Ipv4Addr,
    local: Ipv4Addr,
    file: &str,
    opts: Options,
    expected: &[u8],
) -> Result<Transfer> {
    let start = Instant::now();
    let socket = UdpSocket::bind((local, 0))
        .await
        .context("binding a TFTP client socket")?;
    let request = rrq(file, opts, true);
    let mut peer: Option<SocketAddr> = None;
    let mut last_sent: Vec<u8> = request.clone();
    socket.send_to(&request, (server, 69)).await?;
    let mut buf = vec![0u8; usize::from(opts.blksize.max(512)) + 4 + 64];
    let (mut blksize, mut windowsize) = (512usize, 1u16);
    let mut offset = 0usize;
    // The next block expected (wire numbers wrap at 2^16).
    let mut next: u16 = 1;
    let mut in_window = 0u16;
    let mut retries = 0u32;
    let mut silent = 0u32;
    let mut nudged = false;
    loop {
        let received = tokio::time::timeout(RETRY_AFTER, socket.recv_from(&mut buf)).await;
        let (n, from) = match received {
            Ok(r) => r?,
            Err(_) => {
                silent += 1;
                if silent > RETRIES {
                    bail!(
                        "no answer for {:?} after {offset} of {} bytes",
                        RETRY_AFTER * RETRIES,
                        expected.len()
                    );
                }
                retries += 1;
                let dest = peer.unwrap_or(SocketAddr::from((server, 69)));
                socket.send_to(&last_sent, dest).await?;
                continue;
            }
        };
        silent = 0;
        match peer {
            None => peer = Some(from),
            Some(p) if p != from => continue,
            Some(_) => {}
        }
        let packet = &buf[..n];
        if n < 4 {
            bail!("short TFTP packet ({n} bytes)");
        }
        let opcode = u16::from_be_bytes([packet[0], packet[1]]);
        match opcode {
            ERROR => bail!(
                "TFTP error {}: {}",
                u16::from_be_bytes([packet[2], packet[3]]),
                String::from_utf8_lossy(&packet[4..]).trim_end_matches('\0')
            ),
            OACK if offset == 0 && next == 1 => {
                for (name, value) in parse_oack(&packet[2..]) {
                    match name.as_str() {
                        "blksize" => blksize = value.parse().context("bad blksize in OACK")?,
                        "windowsize" => {
                            windowsize = value.parse().context("bad windowsize in OACK")?
                        }
                        "tsize" => {
                            let size: usize = value.parse().context("bad tsize in OACK")?;
                            if size != expected.len() {
                                bail!("tsize {size}, expected {}", expected.len());
                            }
                        }
                        _ => {}
                    }
                }
                if blksize > buf.len() - 4 {
                    bail!("server granted blksize {blksize}, more than asked");
                }
                last_sent = ack(0).to_vec();
                socket.send_to(&last_sent, from).await?;
            }
            DATA => {
                let block = u16::from_be_bytes([packet[2], packet[3]]);
                let data = &packet[4..];
                if block != next {
                    // A gap or a repeat: acknowledge the last block in order (RFC 7440), once
                    // until the transfer moves on, so the server resends from there.
                    if !nudged {
                        nudged = true;
                        retries += 1;
                        in_window = 0;
                        last_sent = ack(next.wrapping_sub(1)).to_vec();
                        socket.send_to(&last_sent, from).await?;
                    }
                    continue;
                }
                nudged = false;
                let end = offset + data.len();
                match expected.get(offset..end) {
                    Some(slice) if slice == data => {}
                    Some(_) => bail!("block {block} differs from the file (bytes {offset}..{end})"),
                    None => bail!("more data than the file's {} bytes", expected.len()),
                }
                offset = end;
                next = next.wrapping_add(1);
                in_window += 1;
                let last = data.len() < blksize;
                if last || in_window >= windowsize {
                    in_window = 0;
                    last_sent = ack(block).to_vec();
                    socket.send_to(&last_sent, from).await?;
                }
                if last {
                    if offset != expected.len() {
                        bail!("transfer ended after {offset} of {} bytes", expected.len());
                    }
                    return Ok(Transfer {
                        bytes: offset as u64,
                        elapsed: start.elapsed(),
                        blksize: blksize as u16,
                        windowsize,
                        retries,
                    });
                }
            }
            other => bail!("unexpected TFTP opcode {other}"),
        }
    }
}

/// The outcome of many transfers.
#[derive(Debug, Default)]
pub struct TftpLoad {
    pub transfers: usize,
    pub verified: usize,
    pub failures: Vec<String>,
    pub bytes: u64,
    pub wall: Duration,
    pub per_transfer: Latencies,
    pub retries: u32,
    pub granted: Option<(u16, u16)>,
    pub client_cpu_secs: f64,
}

impl TftpLoad {
    pub fn mb_per_sec(&self) -> Option<f64> {
        let secs = self.wall.as_secs_f64();
        (secs > 0.0 && self.bytes > 0).then(|| self.bytes as f64 / 1e6 / secs)
    }
}

/// `clients` parallel clients, each reading `file` `each` times in a row, client `c` from
/// `locals[c % locals.len()]`.
pub async fn parallel(
    server: Ipv4Addr,
    locals: &[Ipv4Addr],
    file: &str,
    opts: Options,
    expected: Arc<Vec<u8>>,
    clients: usize,
    each: usize,
) -> TftpLoad {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let local = locals[c % locals.len()];
        let (barrier, expected, file) = (barrier.clone(), expected.clone(), file.to_string());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut out = Vec::with_capacity(each);
            for _ in 0..each {
                out.push(get(server, local, &file, opts, &expected).await);
            }
            out
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let cpu = own_cpu_secs();
    let mut load = TftpLoad::default();
    for task in tasks {
        let results = match task.await {
            Ok(r) => r,
            Err(e) => {
                load.failures.push(format!("client task failed: {e}"));
                continue;
            }
        };
        for r in results {
            load.transfers += 1;
            match r {
                Ok(t) => {
                    load.verified += 1;
                    load.bytes += t.bytes;
                    load.retries += t.retries;
                    load.per_transfer.push(t.elapsed);
                    load.granted = Some((t.blksize, t.windowsize));
                }
                Err(e) => load.failures.push(format!("{e:#}")),
            }
        }
    }
    load.wall = start.elapsed();
    load.client_cpu_secs = own_cpu_secs() - cpu;
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_request_carries_the_options() {
        let p = rrq(
            "ipxe.efi",
            Options {
                blksize: 1468,
                windowsize: Some(16),
            },
            true,
        );
        assert_eq!(
            p,
            b"\x00\x01ipxe.efi\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x0016\x00"
                .to_vec()
        );
    }

    #[test]
    fn oack_options_are_read() {
        let o = parse_oack(b"BLKSIZE\x001468\x00tsize\x00123\x00");
        assert_eq!(
            o,
            vec![
                ("blksize".to_string(), "1468".to_string()),
                ("tsize".to_string(), "123".to_string())
            ]
        );
    }
}
