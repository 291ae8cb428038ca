//! The in-memory file system and what of it would survive a power cut.
//!
//! Separate from the FUSE plumbing so its rules can be unit-tested without a
//! mount. Every file holds two versions of its bytes: `live` (what readers
//! see now) and `durable` (what a disk would hold after a power cut), plus
//! the operations between them (`pending`). Every directory holds a `live`
//! and a `durable` set of entries.
//!
//! The rules (see the crate docs for why):
//! - `write` and a size change (`truncate`, `ftruncate`, `fallocate`) go to
//!   `pending`; `fsync`/`fdatasync` of that file applies them to `durable`.
//!   Nothing else makes data durable (`sync_file_range` never reaches a
//!   FUSE daemon, and would not be a barrier anyway).
//! - Namespace changes (create, mkdir, unlink, rmdir, rename) change `live`
//!   at once and are *committed* later. [`MetaMode::Journal`] (default):
//!   any fsync, of any file or directory, commits all of them, the way
//!   ext4's and XFS's single metadata journal does. [`MetaMode::Strict`]:
//!   only an fsync of a directory commits that directory's entries (POSIX's
//!   letter).
//! - [`Model::cut`] replaces every `live` with its `durable` and forgets
//!   the inodes no durable directory names.
//! - Mode, owner and times are durable at once; nothing in the hub depends
//!   on them surviving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::Errno;

/// Inode number; 1 is the root directory.
pub type Ino = u64;
/// The root directory's inode.
pub const ROOT: Ino = 1;

/// When namespace changes become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MetaMode {
    /// Any fsync commits every namespace change made before it (ext4, XFS).
    #[default]
    Journal,
    /// Only fsync of a directory commits that directory's entries.
    Strict,
}

/// What kind of node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// The attributes FUSE asks for.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Counters, for the test's report and for checking the model was used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub bytes_written: u64,
    pub fsyncs: u64,
    /// fsyncs that were honoured (all, unless fsync is ignored).
    pub barriers: u64,
    pub cuts: u64,
    /// Writes and size changes thrown away by cuts.
    pub dropped_ops: u64,
    pub dropped_bytes: u64,
    /// Files whose unsynced changes a cut threw away.
    pub files_rolled_back: u64,
    /// Live directory entries a cut threw away (or brought back).
    pub entries_rolled_back: u64,
}

enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl Op {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Op::Write { offset, data } => write_at(bytes, *offset, data),
            Op::SetLen(len) => bytes.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
        }
    }
}

fn write_at(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(data.len());
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(data);
}

#[derive(Default)]
struct FileBody {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Op>,
}

#[derive(Default)]
struct DirBody {
    live: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
}

enum Body {
    File(FileBody),
    Dir(DirBody),
}

struct Inode {
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    body: Body,
}

impl Inode {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
            body,
        }
    }
}

/// The whole file system.
pub struct Model {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    /// Directories with uncommitted namespace changes.
    dirty_dirs: HashSet<Ino>,
    /// Open handles per inode (an unlinked file stays readable while open).
    open: HashMap<Ino, u32>,
    meta_mode: MetaMode,
    ignore_fsync: bool,
    stats: Stats,
}

impl Model {
    /// An empty file system (a root directory, mode 0700, owned by `uid`).
    pub fn new(meta_mode: MetaMode, ignore_fsync: bool, uid: u32, gid: u32) -> Model {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode::new(Body::Dir(DirBody::default()), 0o700, uid, gid),
        );
        Model {
            inodes,
            next_ino: ROOT + 1,
            dirty_dirs: HashSet::new(),
            open: HashMap::new(),
            meta_mode,
            ignore_fsync,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes not yet durable, over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        self.inodes
            .values()
            .filter_map(|i| match &i.body {
                Body::File(f) => Some(
                    f.pending
                        .iter()
                        .map(|op| match op {
                            Op::Write { data, .. } => data.len() as u64,
                            Op::SetLen(_) => 0,
                        })
                        .sum::<u64>(),
                ),
                Body::Dir(_) => None,
            })
            .sum()
    }

    /// Bytes the live files hold (for `statfs`).
    pub fn used_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|i| match &i.body {
                Body::File(f) => f.live.len() as u64,
                Body::Dir(_) => 0,
            })
            .sum()
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&DirBody, Errno> {
        match &self.inode(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirBody, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileBody, Errno> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        let i = self.inode(ino)?;
        let (kind, size) = match &i.body {
            Body::File(f) => (Kind::File, f.live.len() as u64),
            Body::Dir(d) => (Kind::Dir, d.live.len() as u64),
        };
        Ok(Attr {
            ino,
            kind,
            size,
            perm: i.perm,
            uid: i.uid,
            gid: i.gid,
            mtime: i.mtime,
            ctime: i.ctime,
        })
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, Errno> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(Errno::ENOENT)?;
        self.getattr(ino)
    }

    /// Changes mode, owner, times (durable at once) or size (pending).
    pub fn setattr(
        &mut self,
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        mtime: Option<SystemTime>,
    ) -> Result<Attr, Errno> {
        if let Some(len) = size {
            self.set_len(ino, len)?;
        }
        let i = self.inode_mut(ino)?;
        if let Some(m) = mode {
            i.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            i.uid = u;
        }
        if let Some(g) = gid {
            i.gid = g;
        }
        if let Some(t) = mtime {
            i.mtime = t;
        }
        i.ctime = SystemTime::now();
        self.getattr(ino)
    }

    fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), Errno> {
        let f = self.file_mut(ino)?;
        let op = Op::SetLen(len);
        op.apply(&mut f.live);
        f.pending.push(op);
        Ok(())
    }

    /// Grows a file to at least `offset + len` (fallocate mode 0).
    pub fn allocate(&mut self, ino: Ino, offset: u64, len: u64) -> Result<(), Errno> {
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let cur = self.getattr(ino)?.size;
        if end > cur {
            self.set_len(ino, end)?;
        }
        Ok(())
    }

    /// Creates a file or directory `name` in `parent`.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, Errno> {
        if self.dir(parent)?.live.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = match kind {
            Kind::File => Body::File(FileBody::default()),
            Kind::Dir => Body::Dir(DirBody::default()),
        };
        self.inodes.insert(ino, Inode::new(body, perm, uid, gid));
        self.dir_mut(parent)?.live.insert(name.to_owned(), ino);
        self.touch_dir(parent);
        self.getattr(ino)
    }

    fn touch_dir(&mut self, dir: Ino) {
        self.dirty_dirs.insert(dir);
        if let Some(i) = self.inodes.get_mut(&dir) {
            let now = SystemTime::now();
            i.mtime = now;
            i.ctime = now;
        }
    }

    /// Removes file `name` (`dir = false`) or empty directory (`dir = true`).
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(Errno::ENOENT)?;
        match (&self.inode(ino)?.body, dir) {
            (Body::File(_), true) => return Err(Errno::ENOTDIR),
            (Body::Dir(_), false) => return Err(Errno::EISDIR),
            (Body::Dir(d), true) if !d.live.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(parent)?.live.remove(name);
        self.touch_dir(parent);
        Ok(())
    }

    /// Renames; replaces an existing target unless `noreplace`.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(Errno::ENOENT)?;
        let src_is_dir = matches!(self.inode(ino)?.body, Body::Dir(_));
        if let Some(&target) = self.dir(newparent)?.live.get(newname) {
            if target == ino {
                return Ok(());
            }
            if noreplace {
                return Err(Errno::EEXIST);
            }
            match (&self.inode(target)?.body, src_is_dir) {
                (Body::Dir(_), false) => return Err(Errno::EISDIR),
                (Body::File(_), true) => return Err(Errno::ENOTDIR),
                (Body::Dir(d), true) if !d.live.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if src_is_dir && self.is_ancestor(ino, newparent) {
            return Err(Errno::EINVAL);
        }
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(newparent)?
            .live
            .insert(newname.to_owned(), ino);
        self.touch_dir(parent);
        self.touch_dir(newparent);
        Ok(())
    }

    /// Whether `anc` is `ino` or contains it (live tree).
    fn is_ancestor(&self, anc: Ino, ino: Ino) -> bool {
        let mut stack = vec![anc];
        while let Some(d) = stack.pop() {
            if d == ino {
                return true;
            }
            if let Ok(dir) = self.dir(d) {
                stack.extend(dir.live.values().copied());
            }
        }
        false
    }

    /// The live entries of a directory, sorted by name.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<(OsString, Ino, Kind)>, Errno> {
        let d = self.dir(ino)?;
        Ok(d.live
            .iter()
            .map(|(n, &i)| {
                let kind = match self.inodes.get(&i).map(|x| &x.body) {
                    Some(Body::Dir(_)) => Kind::Dir,
                    _ => Kind::File,
                };
                (n.clone(), i, kind)
            })
            .collect())
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Errno> {
        let f = match &self.inode(ino)?.body {
            Body::File(f) => f,
            Body::Dir(_) => return Err(Errno::EISDIR),
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(f.live.len());
        let end = start.saturating_add(size as usize).min(f.live.len());
        Ok(&f.live[start..end])
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let n = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        offset
            .checked_add(u64::from(n))
            .ok_or(Errno::EFBIG)
            .and_then(|end| usize::try_from(end).map_err(|_| Errno::EFBIG))?;
        let f = self.file_mut(ino)?;
        write_at(&mut f.live, offset, data);
        f.pending.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        if let Ok(i) = self.inode_mut(ino) {
            i.mtime = SystemTime::now();
        }
        self.stats.writes += 1;
        self.stats.bytes_written += u64::from(n);
        Ok(n)
    }

    /// fsync/fdatasync of a file or directory: the barrier.
    pub fn fsync(&mut self, ino: Ino) -> Result<(), Errno> {
        self.inode(ino)?;
        self.stats.fsyncs += 1;
        if self.ignore_fsync {
            return Ok(());
        }
        self.stats.barriers += 1;
        let is_dir = match &mut self.inode_mut(ino)?.body {
            Body::File(f) => {
                for op in f.pending.drain(..) {
                    op.apply(&mut f.durable);
                }
                false
            }
            Body::Dir(_) => true,
        };
        match self.meta_mode {
            MetaMode::Journal => {
                let dirty: Vec<Ino> = self.dirty_dirs.drain().collect();
                for d in dirty {
                    self.commit_dir(d);
                }
            }
            MetaMode::Strict if is_dir => {
                self.dirty_dirs.remove(&ino);
                self.commit_dir(ino);
            }
            MetaMode::Strict => {}
        }
        self.collect_garbage();
        Ok(())
    }

    fn commit_dir(&mut self, d: Ino) {
        if let Some(Inode {
            body: Body::Dir(dir),
            ..
        }) = self.inodes.get_mut(&d)
        {
            dir.durable = dir.live.clone();
        }
    }

    pub fn opened(&mut self, ino: Ino) {
        *self.open.entry(ino).or_default() += 1;
    }

    pub fn released(&mut self, ino: Ino) {
        if let Some(n) = self.open.get_mut(&ino) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&ino);
            }
        }
    }

    /// Inodes reachable from the root through live or durable entries.
    fn reachable(&self, durable_only: bool) -> HashSet<Ino> {
        let mut seen = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            if let Some(Inode {
                body: Body::Dir(dir),
                ..
            }) = self.inodes.get(&d)
            {
                let live = (!durable_only).then_some(dir.live.values());
                for &child in dir.durable.values().chain(live.into_iter().flatten()) {
                    if seen.insert(child) {
                        stack.push(child);
                    }
                }
            }
        }
        seen
    }

    /// Frees inodes no tree names and nobody has open.
    fn collect_garbage(&mut self) {
        let keep = self.reachable(false);
        let open = &self.open;
        self.inodes
            .retain(|ino, _| keep.contains(ino) || open.contains_key(ino));
    }

    /// Power cut: every file and directory goes back to its durable state.
    /// The caller makes sure no process still uses the mount.
    pub fn cut(&mut self) {
        self.stats.cuts += 1;
        self.open.clear();
        self.dirty_dirs.clear();
        let keep = self.reachable(true);
        self.inodes.retain(|ino, _| keep.contains(ino));
        for inode in self.inodes.values_mut() {
            match &mut inode.body {
                Body::File(f) => {
                    if !f.pending.is_empty() {
                        self.stats.files_rolled_back += 1;
                    }
                    for op in f.pending.drain(..) {
                        self.stats.dropped_ops += 1;
                        if let Op::Write { data, .. } = op {
                            self.stats.dropped_bytes += data.len() as u64;
                        }
                    }
                    f.live = f.durable.clone();
                }
                Body::Dir(d) => {
                    let changed = d.live.len().abs_diff(d.durable.len())
                        + d.live
                            .keys()
                            .filter(|k| !d.durable.contains_key(*k))
                            .count();
                    self.stats.entries_rolled_back += changed as u64;
                    d.live = d.durable.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
