//! The iPXE file set: plain names in one directory, kept in memory while unchanged, symbolic
//! links followed only to public system files.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use crate::model::Mac;

/// Files never served, answered with "file not found" straight away.
const REFUSED: &[&str] = &["autoexec.ipxe"];

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
