//! The file system through the kernel: real open/write/fsync/rename calls
//! on a real mount, then a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use powercut_fs::{Options, PowercutFs};

/// Mounts on a fresh directory, or says why not (and fails under `CI=true`).
fn mount(opts: Options) -> Option<(tempfile::TempDir, PowercutFs)> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    match PowercutFs::mount(dir.path(), opts) {
        Ok(fs) => Some((dir, fs)),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and FUSE cannot be mounted here: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_does_not() {
    let Some((dir, mut fs)) = mount(Options::default()) else {
        return;
    };
    let root = dir.path();
    ok(fs::create_dir(root.join("store")));
    let mut db = ok(File::create(root.join("store/db")));
    ok(db.write_all(b"first batch;"));
    ok(db.sync_data());
    ok(db.write_all(b"second batch, never synced"));
    // The writes are visible before the cut, as in a page cache.
    assert_eq!(
        ok(fs::read(root.join("store/db"))),
        b"first batch;second batch, never synced"
    );
    // A temp file renamed into place without an fsync of its data.
    ok(fs::write(root.join("store/conf.tmp"), b"config"));
    ok(fs::rename(
        root.join("store/conf.tmp"),
        root.join("store/conf"),
    ));
    // Overwrite in the middle, synced.
    ok(db.seek(SeekFrom::Start(0)));
    ok(db.write_all(b"FIRST"));
    ok(db.sync_all());
    drop(db);
    ok(fs::write(
        root.join("late"),
        b"created after the last fsync",
    ));

    let stats = ok(fs.cut());
    assert_eq!(stats.cuts, 1);
    assert!(stats.dropped_bytes > 0, "{stats:?}");

    // The synced prefix and the synced overwrite survive; the rest is gone.
    let mut got = Vec::new();
    ok(ok(File::open(root.join("store/db"))).read_to_end(&mut got));
    assert_eq!(got, b"FIRST batch;second batch, never synced");
    // conf's name was committed by the later fsync, its data never synced.
    assert_eq!(ok(fs::read(root.join("store/conf"))), b"");
    assert!(!root.join("store/conf.tmp").exists());
    assert!(
        !root.join("late").exists(),
        "created after the last barrier"
    );

    // And the mount works as before after the cut.
    let mut f = ok(OpenOptions::new().append(true).open(root.join("store/db")));
    ok(f.write_all(b"!"));
    ok(f.sync_data());
    drop(f);
    ok(fs.cut());
    assert_eq!(
        ok(fs::read(root.join("store/db"))),
        b"FIRST batch;second batch, never synced!"
    );
}

#[test]
fn ignoring_fsync_loses_everything() {
    let Some((dir, mut fs)) = mount(Options {
        ignore_fsync: true,
        ..Options::default()
    }) else {
        return;
    };
    let path = dir.path().join("db");
    let mut f = ok(File::create(&path));
    ok(f.write_all(b"acked"));
    ok(f.sync_all());
    drop(f);
    ok(fs.cut());
    assert!(!path.exists());
    assert_eq!(fs.stats().barriers, 0);
}
