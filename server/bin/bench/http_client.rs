//! A minimal HTTP/1.1 GET client over tokio (one request per connection, Content-Length
//! bodies), and the parallel verified-download load.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Barrier;

use crate::stats::Latencies;
use crate::sys::own_cpu_secs;

/// Largest response head we accept.
const MAX_HEAD: usize = 16 * 1024;
/// Read buffer per client.
const READ_BUF: usize = 256 * 1024;

/// A response head, with whatever body bytes arrived in the same reads.
struct Head {
    status: u16,
    content_length: Option<u64>,
    body_start: Vec<u8>,
}

/// Connects from `local` (any address when `None`) and sends a one-shot GET.
async fn send_get_from(local: Option<Ipv4Addr>, addr: SocketAddr, path: &str) -> Result<TcpStream> {
    let mut stream = connect(local, addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

async fn connect(local: Option<Ipv4Addr>, addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(local) = local {
        socket
            .bind(SocketAddr::from((local, 0)))
            .with_context(|| format!("binding {local}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn read_head(stream: &mut TcpStream) -> Result<Head> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head ended");
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = find(&buf[searched_from..], b"\r\n\r\n") {
            break searched_from + pos + 4;
        }
        if buf.len() > MAX_HEAD {
            bail!("response head longer than {MAX_HEAD} bytes");
        }
    };
    let text = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.trim().parse().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.trim().eq_ignore_ascii_case("identity")
        {
            bail!(
                "Transfer-Encoding {} is not supported by the bench client",
                value.trim()
            );
        }
    }
    Ok(Head {
        status,
        content_length,
        body_start: buf[end..].to_vec(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// GETs a small resource: its status and body.
pub async fn get_small(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    get_small_from(None, addr, path).await
}

/// The same from a given local address.
pub async fn get_small_from(
    local: Option<Ipv4Addr>,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Vec<u8>)> {
    let mut stream = send_get_from(local, addr, path).await?;
    let head = read_head(&mut stream).await?;
    let mut body = head.body_start;
    stream.read_to_end(&mut body).await?;
    Ok((head.status, body))
}

/// Whether anything answers HTTP at `addr` within a second.
pub async fn answers(addr: SocketAddr, path: &str) -> Option<u16> {
    match tokio::time::timeout(Duration::from_secs(1), get_small(addr, path)).await {
        Ok(Ok((status, _))) => Some(status),
        _ => None,
    }
}

/// A persistent connection for small GETs (Content-Length bodies), one at a time.
pub struct KeepAlive {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes read past the previous response.
    pending: Vec<u8>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            stream: connect(None, addr).await?,
            addr,
            pending: Vec::new(),
        })
    }

    /// GETs `path`: its status and body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.stream.write_all(request.as_bytes()).await?;
        let mut buf = std::mem::take(&mut self.pending);
        let mut chunk = [0u8; 16 * 1024];
        let end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEAD {
                bail!("response head longer than {MAX_HEAD} bytes");
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the response head ended");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let text = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .context("malformed status line")?;
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .context("no Content-Length on a keep-alive response")?;
        while buf.len() < end + length {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside a body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        self.pending = buf.split_off(end + length);
        Ok((status, buf.split_off(end)))
    }
}

/// One verified download.
#[derive(Debug, Clone, Copy)]
pub struct Download {
    pub bytes: u64,
    pub first_byte: Duration,
    pub total: Duration,
}

/// GETs `path` and checks that the body is exactly `expected`, byte for byte.
async fn download_verified(
    addr: SocketAddr,
    path: &str,
    expected: &[u8],
    buf: &mut [u8],
) -> Result<Download> {
    download_verified_from(None, addr, path, expected, buf).await
}

/// The same from a given local address.
pub async fn download_verified_from(
    local: Option<Ipv4Addr>,
    addr: SocketAddr,
    path: &str,
    expected: &[u8],
    buf: &mut [u8],
) -> Result<Download> {
    let start = Instant::now();
    let mut stream = send_get_from(local, addr, path).await?;
    let head = read_head(&mut stream).await?;
    let first_byte = start.elapsed();
    if head.status != 200 {
        bail!("HTTP status {}", head.status);
    }
    let want = expected.len() as u64;
    if let Some(len) = head.content_length {
        if len != want {
            bail!("Content-Length {len}, expected {want}");
        }
    }
    let mut offset = 0usize;
    let check = |data: &[u8], offset: &mut usize| -> Result<()> {
        let end = *offset + data.len();
        match expected.get(*offset..end) {
            Some(slice) if slice == data => {
                *offset = end;
                Ok(())
            }
            Some(_) => bail!("body differs from the file within bytes {offset}..{end}"),
            None => bail!("body longer than the file ({want} bytes)"),
        }
    };
    check(&head.body_start, &mut offset)?;
    while offset < expected.len() {
        let n = stream.read(buf).await?;
        if n == 0 {
            break;
        }
        check(&buf[..n], &mut offset)?;
    }
    if offset != expected.len() {
        bail!("body ended after {offset} of {want} bytes");
    }
    Ok(Download {
        bytes: offset as u64,
        first_byte,
        total: start.elapsed(),
    })
}

/// The outcome of `clients` parallel downloads of one file.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub clients: usize,
    pub verified: usize,
    pub failures: Vec<String>,
    pub bytes: u64,
    pub wall: Duration,
    pub per_client: Latencies,
    pub first_byte: Latencies,
    /// CPU the bench process (the clients) used during the load.
    pub client_cpu_secs: f64,
}

impl LoadResult {
    /// Aggregate throughput of verified bytes, MB/s (10^6 bytes).
    pub fn mb_per_sec(&self) -> Option<f64> {
        let secs = self.wall.as_secs_f64();
        (secs > 0.0 && self.bytes > 0).then(|| self.bytes as f64 / 1e6 / secs)
    }
}

/// Starts `clients` downloads at once (client `i` fetches `path(i)`), each verified against
/// `expected`; wall time runs from the common start to the last byte of the last client.
pub async fn parallel_downloads(
    addr: SocketAddr,
    clients: usize,
    path: impl Fn(usize) -> String,
    expected: Arc<Vec<u8>>,
) -> LoadResult {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let (barrier, expected, path) = (barrier.clone(), expected.clone(), path(i));
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; READ_BUF];
            barrier.wait().await;
            download_verified(addr, &path, &expected, &mut buf).await
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let cpu_before = own_cpu_secs();
    let mut result = LoadResult {
        clients,
        ..LoadResult::default()
    };
    for task in tasks {
        match task.await {
            Ok(Ok(d)) => {
                result.verified += 1;
                result.bytes += d.bytes;
                result.per_client.push(d.total);
                result.first_byte.push(d.first_byte);
            }
            Ok(Err(e)) => result.failures.push(format!("{e:#}")),
            Err(e) => result.failures.push(format!("client task failed: {e}")),
        }
    }
    result.wall = start.elapsed();
    result.client_cpu_secs = own_cpu_secs() - cpu_before;
    result
}
