//! Sending boot files over HTTP: the verified boot assets from one memory map of each open
//! file, the iPXE binaries from the in-memory copy TFTP serves too.
//!
//! A response body is a stream of `Bytes` that hyper hands to the connection as they are, so
//! a chunk of an asset reaches the socket as a slice of the file's memory map; the connection
//! (`zerocopy`) recognises the map and has the kernel send that file range with `sendfile`,
//! from the page cache, with no copy through this process and no blocking-pool thread per
//! chunk. An open file is mapped once, when it is opened, and unmapped when the last response
//! sending it ends (a map and an unmap per chunk cost a tenth of the server's CPU in a boot
//! storm: every unmap flushes the other cores' TLBs). Its pages are never touched by this
//! process, so the map adds nothing to its RSS.
//!
//! An asset file is opened once per inode and the open file is shared by every response: the
//! images directory replaces files by renaming new ones into place, so a response that
//! started keeps reading the file it started with. A new inode at the path is opened, and the
//! path verified again (`Images::servable`), before anyone is served from it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::headers::{
    HeaderMapExt, IfModifiedSince, IfUnmodifiedSince, LastModified, Range as RangeHeader,
};
use bytes::Bytes;
use futures::Stream;

use super::zerocopy::Regions;
use crate::support::metrics::Metrics;

/// Bytes per body chunk (a slice of the asset's map, sent with one `sendfile`): big enough
/// that the per-chunk work costs nothing next to sending it, small enough that one fast
/// client yields to the others often (`YIELD_EVERY`). 2 MiB, nginx's `sendfile_max_chunk`:
/// each `sendfile` call pushes the socket's queue (with BBR's pacing, a timer per push), and
/// in a 200-machine boot storm 256 KiB chunks took 4× the calls nginx makes and 1.4-2× the
/// CPU of 2 MiB ones.
pub const CHUNK: usize = 2 << 20;

/// Bytes a response sends before it lets other tasks run: a transfer to a fast client would
/// otherwise keep a worker busy for as long as the socket takes data (tokio's budget allows
/// 128 writes per turn), delaying every other connection's first byte by tens of
/// milliseconds.
const YIELD_EVERY: u64 = CHUNK as u64;

/// Which file a path named, and its state, as far as `stat` tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }

    fn at(path: &Path) -> io::Result<FileId> {
        std::fs::metadata(path).map(|m| FileId::of(&m))
    }
}

/// An open asset file and its memory map, shared by the responses that send it.
pub struct OpenAsset {
    file: Arc<File>,
    id: FileId,
    /// The whole file, read-only and shared; `None` for an empty file (nothing to map).
    map: Option<memmap2::Mmap>,
    /// Where the map is recorded for `sendfile` (the connections' registry once the asset is
    /// in [`OpenAssets`]).
    regions: Regions,
}

impl std::fmt::Debug for OpenAsset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAsset")
            .field("id", &self.id)
            .field("mapped", &self.map.as_ref().map(|m| m.len()))
            .finish()
    }
}

impl Drop for OpenAsset {
    fn drop(&mut self) {
        // Forgotten before the map goes (the fields drop after this), so no connection sends
        // from an address reused later.
        if let Some(map) = &self.map {
            self.regions.remove(map.as_ptr() as usize);
        }
    }
}

impl OpenAsset {
    /// Opens and maps `path`; the open file must be a regular file and the one the path
    /// names now.
    #[allow(unsafe_code)]
    pub fn open(path: &Path) -> io::Result<OpenAsset> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not a file"));
        }
        let id = FileId::of(&meta);
        if FileId::at(path)? != id {
            return Err(io::Error::other("replaced while being opened"));
        }
        let len = to_usize(id.len)?;
        // SAFETY: a mapping is undefined behaviour only if the file changes underneath it.
        // Asset files are never written in place: downloads go to a `.part` file that is
        // renamed into place, so this inode's contents stay as they were verified. The bytes
        // are never read by this process, only passed to the kernel (sendfile from the file,
        // or writev), which answers a short count or EFAULT rather than raising SIGBUS should
        // an operator truncate the file in place anyway.
        let map = match len {
            0 => None,
            len => Some(unsafe { memmap2::MmapOptions::new().len(len).map(&file)? }),
        };
        Ok(OpenAsset {
            file: Arc::new(file),
            id,
            map,
            regions: Regions::default(),
        })
    }

    /// Whether `path` still names this file, unchanged.
    pub fn still_at(&self, path: &Path) -> bool {
        FileId::at(path).is_ok_and(|id| id == self.id)
    }
}

/// The open asset files, one per path (the newest verified inode), and the registry of their
/// chunk maps that the HTTP connections send from.
#[derive(Clone, Debug, Default)]
pub struct OpenAssets {
    open: Arc<Mutex<HashMap<PathBuf, Arc<OpenAsset>>>>,
    regions: Regions,
}

impl OpenAssets {
    /// No open assets yet; bytes later sent with `sendfile` are counted in `sendfile_bytes`.
    pub fn new(sendfile_bytes: prometheus_client::metrics::counter::Counter) -> OpenAssets {
        OpenAssets {
            open: Arc::default(),
            regions: Regions::counting(sendfile_bytes),
        }
    }

    /// The chunk maps of these assets, for the HTTP listener (`zerocopy`).
    pub fn regions(&self) -> Regions {
        self.regions.clone()
    }

    /// The open file for `path` if the path still names it, unchanged since it was opened.
    pub fn get(&self, path: &Path) -> Option<Arc<OpenAsset>> {
        let id = FileId::at(path).ok()?;
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(path).filter(|a| a.id == id).cloned()
    }

    /// Keeps `asset` as the open file for `path` (responses using an older one keep theirs),
    /// its map recorded for `sendfile` until the last of them drops it.
    pub fn insert(&self, path: PathBuf, mut asset: OpenAsset) -> Arc<OpenAsset> {
        asset.regions = self.regions.clone();
        if let Some(map) = &asset.map {
            self.regions
                .insert(map.as_ptr() as usize, map.len(), Arc::clone(&asset.file), 0);
        }
        let asset = Arc::new(asset);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.insert(path, Arc::clone(&asset));
        asset
    }
}

/// What a response sends: an open asset file, or bytes already in memory.
#[derive(Clone, Debug)]
pub enum Source {
    Asset(Arc<OpenAsset>),
    Memory {
        data: Bytes,
        modified: Option<SystemTime>,
    },
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Asset(a) => a.id.len,
            Source::Memory { data, .. } => data.len() as u64,
        }
    }

    fn modified(&self) -> Option<SystemTime> {
        match self {
            Source::Asset(a) => a.id.modified,
            Source::Memory { modified, .. } => *modified,
        }
    }

    /// Bytes `start..end` of the file (at most `CHUNK` of them for an asset).
    fn chunk(&self, start: u64, end: u64) -> io::Result<Bytes> {
        match self {
            Source::Memory { data, .. } => {
                let (start, end) = (to_usize(start)?, to_usize(end)?);
                Ok(data.slice(start..end))
            }
            Source::Asset(asset) => map_chunk(asset, start, end),
        }
    }
}

fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(io::Error::other)
}

/// Bytes `start..end` of `asset` as a slice of its map, which it keeps alive.
fn map_chunk(asset: &Arc<OpenAsset>, start: u64, end: u64) -> io::Result<Bytes> {
    let (start, end) = (to_usize(start)?, to_usize(end)?);
    let len = asset.map.as_ref().map_or(0, |m| m.len());
    if start > end || end > len {
        return Err(io::Error::other("range outside the asset"));
    }
    if start == end {
        return Ok(Bytes::new());
    }
    Ok(Bytes::from_owner(MappedChunk {
        asset: Arc::clone(asset),
        start,
        end,
    }))
}

/// A slice of an open asset's map, alive as long as a response holds it.
struct MappedChunk {
    asset: Arc<OpenAsset>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MappedChunk {
    fn as_ref(&self) -> &[u8] {
        match &self.asset.map {
            Some(map) => &map[self.start..self.end],
            None => &[],
        }
    }
}

/// The response to a GET or HEAD of `source`, with Content-Length, Last-Modified,
/// Accept-Ranges, one byte range (206, or 416 when unsatisfiable or several are asked for) and
/// If-Modified-Since / If-Unmodified-Since; bytes sent are counted under `asset`.
pub fn respond(
    headers: &HeaderMap,
    source: Source,
    content_type: &'static str,
    metrics: Metrics,
    asset: &'static str,
    progress: Option<Arc<AtomicU64>>,
) -> Response {
    let len = source.len();
    let modified = source.modified();
    let mut response = Response::builder()
        .header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
        .header(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(h) = response.headers_mut() {
        if let Some(modified) = modified {
            h.typed_insert(LastModified::from(modified));
        }
    }
    if let (Some(since), Some(modified)) = (headers.typed_get::<IfUnmodifiedSince>(), modified) {
        if !since.precondition_passes(modified) {
            return status(response, StatusCode::PRECONDITION_FAILED);
        }
    }
    if let (Some(since), Some(modified)) = (headers.typed_get::<IfModifiedSince>(), modified) {
        if !since.is_modified(modified) {
            return status(response, StatusCode::NOT_MODIFIED);
        }
    }
    let (start, end) = match headers.typed_get::<RangeHeader>() {
        None => (0, len),
        Some(range) => match single_range(&range, len) {
            Some((start, end)) => {
                response = response.status(StatusCode::PARTIAL_CONTENT).header(
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{len}", end - 1),
                );
                (start, end)
            }
            None => {
                return response
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .body(Body::empty())
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
            }
        },
    };
    let body = Chunks {
        source,
        pos: start,
        end,
        since_yield: 0,
        metrics,
        asset,
        progress,
    };
    response
        .header(header::CONTENT_LENGTH, end - start)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn status(response: axum::http::response::Builder, code: StatusCode) -> Response {
    response
        .status(code)
        .body(Body::empty())
        .unwrap_or_else(|_| code.into_response())
}

/// The one satisfiable range asked for, as `start..end`; `None` when there is none or more
/// than one (multipart answers are not offered, like tower-http's `ServeFile`).
fn single_range(range: &RangeHeader, len: u64) -> Option<(u64, u64)> {
    let mut ranges = range.satisfiable_ranges(len).filter_map(|(from, to)| {
        let start = match from {
            Bound::Included(n) => n,
            Bound::Excluded(n) => n.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let end = match to {
            Bound::Included(n) => n.saturating_add(1).min(len),
            Bound::Excluded(n) => n.min(len),
            Bound::Unbounded => len,
        };
        (start < end).then_some((start, end))
    });
    let first = ranges.next()?;
    ranges.next().is_none().then_some(first)
}

/// A response body: `source` from `pos` to `end`, a chunk at a time.
struct Chunks {
    source: Source,
    pos: u64,
    end: u64,
    since_yield: u64,
    metrics: Metrics,
    asset: &'static str,
    /// Bytes handed to the connection so far, for whoever watches this transfer.
    progress: Option<Arc<AtomicU64>>,
}

impl Stream for Chunks {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pos >= self.end {
            return Poll::Ready(None);
        }
        if self.since_yield >= YIELD_EVERY {
            self.since_yield = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let stop = self.end.min(self.pos.saturating_add(CHUNK as u64));
        let chunk = self.source.chunk(self.pos, stop);
        if let Ok(bytes) = &chunk {
            self.pos = stop;
            self.since_yield += bytes.len() as u64;
            self.metrics.http_sent(self.asset, bytes.len() as u64);
            if let Some(progress) = &self.progress {
                progress.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        } else {
            self.pos = self.end;
        }
        Poll::Ready(Some(chunk))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from((self.end - self.pos).div_ceil(CHUNK as u64)).ok();
        (left.unwrap_or(0), left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str) -> RangeHeader {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        h.typed_get::<RangeHeader>().unwrap()
    }

    #[test]
    fn one_satisfiable_range_is_served_and_anything_else_is_not() {
        assert_eq!(single_range(&range("bytes=0-9"), 100), Some((0, 10)));
        assert_eq!(single_range(&range("bytes=90-"), 100), Some((90, 100)));
        assert_eq!(single_range(&range("bytes=-10"), 100), Some((90, 100)));
        assert_eq!(single_range(&range("bytes=95-200"), 100), Some((95, 100)));
        assert_eq!(single_range(&range("bytes=100-"), 100), None);
        assert_eq!(single_range(&range("bytes=9-3"), 100), None);
        assert_eq!(single_range(&range("bytes=-0"), 100), None);
        assert_eq!(single_range(&range("bytes=0-1,5-6"), 100), None);
        assert_eq!(single_range(&range("bytes=x-y"), 100), None);
    }

    #[test]
    fn an_asset_is_sent_in_mapped_chunks_and_follows_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinuz-amd64");
        let data: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let open = OpenAssets::default();
        assert!(open.get(&path).is_none());
        let asset = open.insert(path.clone(), OpenAsset::open(&path).unwrap());
        assert!(open.get(&path).is_some());
        let source = Source::Asset(Arc::clone(&asset));
        let mut sent = Vec::new();
        let mut pos = 0;
        while pos < source.len() {
            let stop = source.len().min(pos + CHUNK as u64);
            sent.extend_from_slice(&source.chunk(pos, stop).unwrap());
            pos = stop;
        }
        assert_eq!(sent, data);
        assert_eq!(&source.chunk(5, 9).unwrap()[..], &data[5..9]);
        // One map per open file, however many chunks are out, recorded where the connections
        // look, and forgotten only when the last chunk and the asset itself are gone.
        let chunks: Vec<Bytes> = (0..10).map(|i| source.chunk(i, i + 100).unwrap()).collect();
        assert_eq!(open.regions().alive(), 1);
        assert!(source.chunk(0, source.len() + 1).is_err());
        // Replaced by a rename: the path names a new file; the old one stays readable.
        let next = dir.path().join(".vmlinuz-amd64.part");
        std::fs::write(&next, b"new").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(open.get(&path).is_none());
        assert!(!asset.still_at(&path));
        assert_eq!(&source.chunk(0, 3).unwrap()[..], &data[..3]);
        drop((source, asset, open.open.lock().unwrap().clear()));
        assert_eq!(open.regions().alive(), 1, "chunks still out");
        assert_eq!(&chunks[9][..], &data[9..109]);
        drop(chunks);
        assert_eq!(open.regions().alive(), 0);
    }
}
