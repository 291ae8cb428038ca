//! A test file system that can lose power.
//!
//! A kill -9 test proves little about durability: the page cache survives
//! the process, so a store that never calls `fsync` passes it. This FUSE
//! file system keeps, for every file, what has been made durable apart from
//! what has only been written, all in memory. [`PowercutFs::cut`] throws away
//! everything not yet durable and mounts the durable state again: what the
//! next process finds is what a disk would hold after the power went.
//!
//! **What is durable** (the rules are in [`model`]):
//! - file data and size changes: after `fsync`/`fdatasync` of that file;
//! - names (create, rename, unlink, mkdir, rmdir): by default after *any*
//!   fsync, as in ext4's and XFS's metadata journal, where an fsync commits
//!   every namespace change before it. `POWERCUT_STRICT_DIRS=1` switches to
//!   POSIX's letter: only an fsync of the directory commits its entries.
//! - mode, owner, times: at once.
//!
//! Unsynced data is always lost whole, never partly: a real disk may keep
//! some of it, but a store must not rely on that, and losing all of it is
//! the harshest of the allowed outcomes for data written after the last
//! barrier. (Torn writes inside one synced region are out of scope.)
//!
//! `POWERCUT_IGNORE_FSYNC=1` makes every fsync a no-op that still answers
//! success: a store that never syncs. Tests use it to show they can fail.
//!
//! Mounting needs `/dev/fuse` and root (or CAP_SYS_ADMIN): fuser then mounts
//! with mount(2) itself, no libfuse and no `fusermount3` needed.

pub mod model;

mod fuse;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption};

pub use model::{MetaMode, Stats};

/// A mounted power-cut file system. Unmounted on drop.
pub struct PowercutFs {
    mountpoint: PathBuf,
    model: Arc<Mutex<model::Model>>,
    session: Option<BackgroundSession>,
}

/// Options from the environment (`POWERCUT_IGNORE_FSYNC`, `POWERCUT_STRICT_DIRS`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub ignore_fsync: bool,
    pub meta_mode: MetaMode,
}

impl Options {
    /// Reads `POWERCUT_IGNORE_FSYNC=1` and `POWERCUT_STRICT_DIRS=1`.
    pub fn from_env() -> Options {
        let on = |k: &str| std::env::var(k).is_ok_and(|v| v == "1" || v == "true");
        Options {
            ignore_fsync: on("POWERCUT_IGNORE_FSYNC"),
            meta_mode: if on("POWERCUT_STRICT_DIRS") {
                MetaMode::Strict
            } else {
                MetaMode::Journal
            },
        }
    }
}

impl PowercutFs {
    /// Mounts an empty file system on `mountpoint` (an existing directory).
    pub fn mount(mountpoint: &Path, opts: Options) -> io::Result<PowercutFs> {
        // SAFETY: plain libc getters without arguments.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let model = model::Model::new(opts.meta_mode, opts.ignore_fsync, uid, gid);
        let mut fs = PowercutFs {
            mountpoint: mountpoint.to_path_buf(),
            model: Arc::new(Mutex::new(model)),
            session: None,
        };
        fs.attach()?;
        Ok(fs)
    }

    fn attach(&mut self) -> io::Result<()> {
        let mut cfg = Config::default();
        cfg.mount_options = vec![MountOption::FSName("powercut".into()), MountOption::RW];
        let fs = fuse::PowercutFuse {
            model: self.model.clone(),
        };
        let session = fuser::spawn_mount(fs, &self.mountpoint, &cfg).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot mount the power-cut file system on {} ({e}); it needs /dev/fuse and root",
                    self.mountpoint.display()
                ),
            )
        })?;
        self.session = Some(session);
        Ok(())
    }

    fn detach(&mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join().or_else(ended_by_unmount).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot unmount {} ({e}); stop every process using it first",
                        self.mountpoint.display()
                    ),
                )
            }),
            None => Ok(()),
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power: unmounts (every process using the mount must be dead
    /// by now: kill it first), throws away everything not durable, and
    /// mounts the durable state again at the same place. Returns the
    /// counters as they are after the cut.
    pub fn cut(&mut self) -> io::Result<Stats> {
        self.detach()?;
        let stats = {
            let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
            m.cut();
            m.stats()
        };
        self.attach()?;
        Ok(stats)
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }

    /// Bytes written but not yet durable.
    pub fn unsynced_bytes(&self) -> u64 {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unsynced_bytes()
    }
}

/// The session thread's own end after a successful unmount: the kernel
/// drops the FUSE connection, and the thread's read of `/dev/fuse` then
/// fails with ECONNABORTED (or ENODEV, "disconnected", when the unmount
/// came before the handshake finished), which fuser reports as an error
/// although the mount is gone. A failed unmount itself (EBUSY: a process
/// still uses it) stays an error.
fn ended_by_unmount(e: io::Error) -> io::Result<()> {
    if e.raw_os_error() == Some(libc::ECONNABORTED) || e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}

impl Drop for PowercutFs {
    fn drop(&mut self) {
        if self.detach().is_err() {
            // Something still uses it (a test failed before killing its
            // process): detach lazily so no dead mount is left behind.
            if let Ok(c) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()) {
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
