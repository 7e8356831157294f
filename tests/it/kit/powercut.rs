//! A disk that loses power: a FUSE filesystem over a backing directory whose file data reaches
//! the backing directory only when the file is fsynced (or fdatasynced). Until then written
//! bytes live in this process's memory, and every read through the mount sees them, as reads
//! see the page cache. `Mounted::cut` is the power cut: everything not yet synced is dropped,
//! every later request fails, and what is left on the backing directory is exactly what was
//! synced. Unmount and mount again (`Mounted::remount`) to boot on it.
//!
//! What it models: data writes and file sizes (a `truncate` or `ftruncate` included) held per
//! file until that file's fsync; a cut losing all of them at once. What it does not model:
//! metadata is durable at once (create, mkdir, unlink, rename, chmod land on the backing
//! directory when made, so a directory fsync is not needed and not checked); a cut never
//! tears a write or persists part of the unsynced data (a real disk may write back some dirty
//! pages early, in any order); the backing directory itself is not fsynced (the host keeps
//! running). Shared mmap works through the kernel's page cache (no `direct_io`): SQLite's
//! `-shm` pages reach this layer as ordinary writes and are never synced, so a cut loses them,
//! as it would; SQLite rebuilds that file. File locks are the kernel's own (the filesystem
//! does not take part), so the processes on one mount see each other's locks.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::fcntl::OFlag;

/// Unit of the dirty map: a sync writes back the blocks written since the last one.
const BLOCK: u64 = 4096;
/// How long the kernel may cache names and attributes; every change goes through the kernel,
/// so its cache cannot go stale while mounted, and a remount starts afresh.
const TTL: Duration = Duration::from_secs(1);

/// A file's content as readers see it, with what differs from the backing file.
struct Volatile {
    data: Vec<u8>,
    /// Blocks written since the last sync.
    dirty: BTreeSet<u64>,
    /// Whether the length changed since the last sync.
    resized: bool,
}

impl Volatile {
    fn unsynced(&self) -> bool {
        self.resized || !self.dirty.is_empty()
    }
}

#[derive(Default)]
struct State {
    /// Inode → path below the backing directory ("" is the root, inode 1).
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    files: HashMap<u64, Volatile>,
    /// Set by the cut: every request fails from then on.
    dead: bool,
    /// Data writes answered, and syncs that wrote something back.
    writes: u64,
    syncs: u64,
}

/// What a cut threw away.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cut {
    /// Files with data or a length not yet synced.
    pub files: usize,
    /// Dirty blocks among them.
    pub blocks: usize,
}

#[derive(Clone)]
struct PowerFs {
    backing: PathBuf,
    state: Arc<Mutex<State>>,
}

impl PowerFs {
    fn lock(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let state = self.state.lock().unwrap();
        if state.dead {
            return Err(Errno::EIO);
        }
        Ok(state)
    }
}

impl State {
    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path_of(parent)?.join(name))
    }

    fn inode(&mut self, path: &Path) -> u64 {
        if let Some(ino) = self.inodes.get(path) {
            return *ino;
        }
        self.next_inode += 1;
        let ino = self.next_inode;
        self.paths.insert(ino, path.to_path_buf());
        self.inodes.insert(path.to_path_buf(), ino);
        ino
    }

    /// The content of `ino` in memory, read from the backing file on first use.
    fn volatile(&mut self, backing: &Path, ino: u64) -> Result<&mut Volatile, Errno> {
        if !self.files.contains_key(&ino) {
            let path = self.paths.get(&ino).ok_or(Errno::ENOENT)?;
            let data = fs::read(backing.join(path))?;
            self.files.insert(
                ino,
                Volatile {
                    data,
                    dirty: BTreeSet::new(),
                    resized: false,
                },
            );
        }
        self.files.get_mut(&ino).ok_or(Errno::EIO)
    }

    fn attr(&mut self, backing: &Path, path: &Path) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(backing.join(path))?;
        let ino = self.inode(path);
        let size = self
            .files
            .get(&ino)
            .map_or(meta.len(), |v| v.data.len() as u64);
        let time = |secs: i64, nsecs: i64| {
            UNIX_EPOCH + Duration::new(secs.max(0) as u64, nsecs.clamp(0, 999_999_999) as u32)
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind: FileType::from_std(meta.file_type()).ok_or(Errno::EIO)?,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    /// Writes `ino`'s unsynced blocks and length to the backing file.
    fn sync(&mut self, backing: &Path, ino: u64) -> Result<(), Errno> {
        let Some(path) = self.paths.get(&ino) else {
            return Ok(());
        };
        let Some(v) = self.files.get_mut(&ino) else {
            return Ok(());
        };
        if !v.unsynced() {
            return Ok(());
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .open(backing.join(path))?;
        let len = v.data.len() as u64;
        for block in std::mem::take(&mut v.dirty) {
            let start = block * BLOCK;
            if start >= len {
                continue;
            }
            let end = (start + BLOCK).min(len);
            file.write_all_at(&v.data[start as usize..end as usize], start)?;
        }
        file.set_len(len)?;
        v.resized = false;
        self.syncs += 1;
        Ok(())
    }

    /// `old` is now `new` (and everything below it, for a directory).
    fn renamed(&mut self, old: &Path, new: &Path) {
        if let Some(gone) = self.inodes.remove(new) {
            self.paths.remove(&gone);
            self.files.remove(&gone);
        }
        let moved: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(p, _)| p.starts_with(old))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (path, ino) in moved {
            let rest = path.strip_prefix(old).unwrap_or(Path::new(""));
            let to = if rest.as_os_str().is_empty() {
                new.to_path_buf()
            } else {
                new.join(rest)
            };
            self.inodes.remove(&path);
            self.inodes.insert(to.clone(), ino);
            self.paths.insert(ino, to);
        }
    }

    fn removed(&mut self, path: &Path) {
        if let Some(ino) = self.inodes.remove(path) {
            self.paths.remove(&ino);
            self.files.remove(&ino);
        }
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.lock().and_then(|mut s| {
            let path = s.child(parent, name)?;
            s.attr(&self.backing, &path)
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.lock().and_then(|mut s| {
            let path = s.path_of(ino)?;
            s.attr(&self.backing, &path)
        });
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.lock().and_then(|mut s| {
            let path = s.path_of(ino)?;
            if let Some(mode) = mode {
                fs::set_permissions(
                    self.backing.join(&path),
                    fs::Permissions::from_mode(mode & 0o7777),
                )?;
            }
            if let Some(size) = size {
                // A new length is data: held until the file is synced.
                let v = s.volatile(&self.backing, ino.0)?;
                let len = usize::try_from(size).map_err(|_| Errno::EFBIG)?;
                if len != v.data.len() {
                    v.data.resize(len, 0);
                    v.resized = true;
                }
            }
            s.attr(&self.backing, &path)
        });
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.lock().and_then(|mut s| {
            let path = s.child(parent, name)?;
            fs::create_dir(self.backing.join(&path))?;
            fs::set_permissions(
                self.backing.join(&path),
                fs::Permissions::from_mode(mode & !umask & 0o7777),
            )?;
            s.attr(&self.backing, &path)
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.lock().and_then(|mut s| {
            let path = s.child(parent, name)?;
            fs::remove_file(self.backing.join(&path))?;
            s.removed(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.lock().and_then(|mut s| {
            let path = s.child(parent, name)?;
            fs::remove_dir(self.backing.join(&path))?;
            s.removed(&path);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.lock().and_then(|mut s| {
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            let old = s.child(parent, name)?;
            let new = s.child(newparent, newname)?;
            fs::rename(self.backing.join(&old), self.backing.join(&new))?;
            s.renamed(&old, &new);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.lock().and_then(|s| s.path_of(ino).map(|_| ()));
        match result {
            // The page cache is kept across opens: this mount is its files' only writer.
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.lock().and_then(|mut s| {
            let v = s.volatile(&self.backing, ino.0)?;
            let len = v.data.len() as u64;
            let start = offset.min(len) as usize;
            let end = (offset + u64::from(size)).min(len) as usize;
            Ok(v.data[start..end].to_vec())
        });
        match result {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.lock().and_then(|mut s| {
            s.writes += 1;
            let v = s.volatile(&self.backing, ino.0)?;
            let start = usize::try_from(offset).map_err(|_| Errno::EFBIG)?;
            let end = start + data.len();
            if end > v.data.len() {
                v.data.resize(end, 0);
                v.resized = true;
            }
            v.data[start..end].copy_from_slice(data);
            if !data.is_empty() {
                let first = offset / BLOCK;
                let last = (end as u64 - 1) / BLOCK;
                v.dirty.extend(first..=last);
            }
            Ok(data.len() as u32)
        });
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is no sync.
        match self.lock().map(|_| ()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.lock().and_then(|mut s| s.sync(&self.backing, ino.0));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is durable at once (see the module's comment).
        match self.lock().map(|_| ()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.lock().and_then(|mut s| {
            let path = s.child(parent, name)?;
            let mut open = fs::OpenOptions::new();
            open.write(true).create(true);
            if flags & OFlag::O_EXCL.bits() != 0 {
                open.create_new(true);
            }
            open.open(self.backing.join(&path))?;
            fs::set_permissions(
                self.backing.join(&path),
                fs::Permissions::from_mode(mode & !umask & 0o7777),
            )?;
            if flags & OFlag::O_TRUNC.bits() != 0 {
                let ino = s.inode(&path);
                let v = s.volatile(&self.backing, ino)?;
                if !v.data.is_empty() {
                    v.data.clear();
                    v.resized = true;
                }
            }
            s.attr(&self.backing, &path)
        });
        match result {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.lock().and_then(|mut s| {
            let dir = s.path_of(ino)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_os_string()),
                (ino.0, FileType::Directory, OsStr::new("..").to_os_string()),
            ];
            let mut names: Vec<_> =
                fs::read_dir(self.backing.join(&dir))?.collect::<Result<Vec<_>, _>>()?;
            names.sort_by_key(|e| e.file_name());
            for e in names {
                let kind = FileType::from_std(e.file_type()?).ok_or(Errno::EIO)?;
                let child = s.inode(&dir.join(e.file_name()));
                entries.push((child, kind, e.file_name()));
            }
            Ok(entries)
        });
        match result {
            Ok(entries) => {
                for (i, (child, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }
}

/// The FUSE layer mounted at `at` over `backing`; unmounted when dropped.
pub struct Mounted {
    backing: PathBuf,
    at: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    /// Mounts a fresh layer (nothing unsynced) at `at`, over what `backing` holds.
    pub fn mount(backing: &Path, at: &Path) -> std::io::Result<Mounted> {
        fs::create_dir_all(backing)?;
        fs::create_dir_all(at)?;
        let mut state = State {
            next_inode: 1,
            ..State::default()
        };
        state.paths.insert(1, PathBuf::new());
        state.inodes.insert(PathBuf::new(), 1);
        let state = Arc::new(Mutex::new(state));
        let fs = PowerFs {
            backing: backing.to_path_buf(),
            state: Arc::clone(&state),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("bootplane-powercut".into()),
            fuser::MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(fs, at, &config)?;
        Ok(Mounted {
            backing: backing.to_path_buf(),
            at: at.to_path_buf(),
            state,
            session: Some(session),
        })
    }

    /// The power cut: drops every unsynced write and fails every later request. The backing
    /// directory holds exactly what was synced before this call.
    pub fn cut(&self) -> Cut {
        let mut s = self.state.lock().unwrap();
        s.dead = true;
        let mut cut = Cut::default();
        for v in s.files.values().filter(|v| v.unsynced()) {
            cut.files += 1;
            cut.blocks += v.dirty.len();
        }
        s.files.clear();
        cut
    }

    /// (data writes answered, syncs that wrote something back) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        (s.writes, s.syncs)
    }

    /// Unmounts (nothing may have a file open on the mount) and mounts a fresh layer over
    /// what the backing directory holds: the machine booted again.
    pub fn remount(mut self) -> std::io::Result<Mounted> {
        self.unmount()?;
        Mounted::mount(&self.backing, &self.at)
    }

    fn unmount(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // For a moment after a process on the mount died the kernel may still hold its last
        // files (their releases in flight): poll until the mount is free.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let unmounted = Command::new("umount")
                .arg(&self.at)
                .stderr(Stdio::null())
                .status()?
                .success();
            if unmounted {
                break;
            }
            if Instant::now() > deadline {
                self.session = Some(session);
                return Err(std::io::Error::other(format!(
                    "{} stays busy",
                    self.at.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Unmounted: the session's loop ends.
        session.join()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some() {
            if let Err(e) = self.unmount() {
                // Still busy (a test failed with a file open): detach it, so nothing is left
                // mounted once the last user is gone.
                eprintln!("powercut: unmounting {}: {e}; detaching", self.at.display());
                let _ = Command::new("umount").arg("-l").arg(&self.at).status();
            }
        }
    }
}
