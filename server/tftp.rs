//! TFTP: read-only service of the iPXE binaries, from memory.
//!
//! Only plain file names inside the iPXE directory are reachable (optionally behind a
//! `<mac>/` prefix, as some setups request them). Anything else, and `autoexec.ipxe`, is
//! answered at once with "file not found". Writes are refused.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use bytes::Bytes;
use futures_lite::AsyncRead;
use tokio_util::sync::CancellationToken;

use crate::inventory::{Neighbours, Recorder};
use crate::metrics::Metrics;
use crate::model::{EventKind, Mac};

/// Files never served, answered with "file not found" straight away.
const REFUSED: &[&str] = &["autoexec.ipxe"];

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("tftp server: {0}")]
    Server(#[from] async_tftp::Error),
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
        let path = self.dir.join(name);
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not a file"));
        }
        let modified = meta.modified().ok();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hit) = cache.get(name) {
                if hit.modified == modified && hit.data.len() as u64 == meta.len() {
                    return Ok(hit.data.clone());
                }
            }
        }
        let data = Bytes::from(std::fs::read(&path)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(
            name.to_string(),
            Arc::new(Cached {
                modified,
                data: data.clone(),
            }),
        );
        Ok(data)
    }
}

/// The async-tftp handler.
#[derive(Debug)]
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
}

/// Streams a file from memory and reports the transfer once the last byte was read.
pub struct MemoryReader {
    data: Bytes,
    pos: usize,
    done: Option<Completion>,
}

struct Completion {
    mac: Option<Mac>,
    name: String,
    client: SocketAddr,
    recorder: Recorder,
    metrics: Metrics,
}

impl AsyncRead for MemoryReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let remaining = &self.data[self.pos..];
        let n = remaining.len().min(buf.len());
        buf[..n].copy_from_slice(&remaining[..n]);
        self.pos += n;
        if n == 0 || self.pos == self.data.len() {
            if let Some(done) = self.done.take() {
                done.metrics.tftp_done("ok");
                done.metrics.tftp_bytes.inc_by(self.data.len() as u64);
                tracing::info!(mac = ?done.mac, file = %done.name, client = %done.client,
                    bytes = self.data.len(), "tftp transfer read to the end");
                if let Some(mac) = done.mac {
                    done.recorder.event(
                        mac,
                        EventKind::TftpServed,
                        format!("{} ({} bytes)", done.name, self.data.len()),
                    );
                }
            }
        }
        Poll::Ready(Ok(n))
    }
}

fn not_found() -> packet::Error {
    packet::Error::FileNotFound
}

impl Handler for TftpHandler {
    type Reader = MemoryReader;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let Some((path_mac, name)) = resolve_request(path) else {
            tracing::info!(client = %client, path = %path.display(), "tftp request refused");
            self.metrics.tftp_done("not-found");
            return Err(not_found());
        };
        let mac = path_mac.or_else(|| match client.ip() {
            IpAddr::V4(ip) => self.neighbours.lookup(ip),
            IpAddr::V6(_) => None,
        });
        match self.files.load(&name) {
            Ok(data) => {
                tracing::info!(mac = ?mac, client = %client, file = %name, "tftp read request");
                let size = data.len() as u64;
                Ok((
                    MemoryReader {
                        data,
                        pos: 0,
                        done: Some(Completion {
                            mac,
                            name,
                            client: *client,
                            recorder: self.recorder.clone(),
                            metrics: self.metrics.clone(),
                        }),
                    },
                    Some(size),
                ))
            }
            Err(e) => {
                tracing::info!(mac = ?mac, client = %client, file = %name, error = %e,
                    "tftp file not available");
                self.metrics.tftp_done("not-found");
                Err(not_found())
            }
        }
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        tracing::info!(client = %client, path = %path.display(), "tftp write refused");
        Err(packet::Error::PermissionDenied)
    }
}

/// Serves TFTP on `socket` until `cancel` fires.
pub async fn run(
    handler: TftpHandler,
    socket: UdpSocket,
    block_limit: u16,
    window_limit: u16,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    let server = TftpServerBuilder::with_handler(handler)
        .std_socket(socket)?
        .block_size_limit(block_limit)
        .window_size_limit(window_limit)
        .timeout(Duration::from_secs(2))
        .max_send_retries(5)
        .build()
        .await?;
    tokio::select! {
        result = server.serve() => result.map_err(TftpError::from),
        _ = cancel.cancelled() => Ok(()),
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
