//! The model's rules, one by one, without a mount.

use super::*;

fn fs(mode: MetaMode) -> Model {
    Model::new(mode, false, 0, 0)
}

fn file(m: &mut Model, parent: Ino, name: &str) -> Ino {
    m.create(parent, OsStr::new(name), Kind::File, 0o600, 0, 0)
        .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
        .ino
}

fn content(m: &Model, ino: Ino) -> Vec<u8> {
    m.read(ino, 0, u32::MAX)
        .unwrap_or_else(|e| panic!("read: {e:?}"))
        .to_vec()
}

fn names(m: &Model, dir: Ino) -> Vec<String> {
    m.readdir(dir)
        .unwrap_or_else(|e| panic!("readdir: {e:?}"))
        .into_iter()
        .map(|(n, _, _)| n.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_kept() {
    let mut m = fs(MetaMode::Journal);
    let f = file(&mut m, ROOT, "log");
    assert_eq!(m.write(f, 0, b"hello "), Ok(6));
    m.fsync(f).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(m.write(f, 6, b"world"), Ok(5));
    assert_eq!(content(&m, f), b"hello world");
    m.cut();
    assert_eq!(content(&m, f), b"hello ");
    assert_eq!(m.stats().dropped_bytes, 5);
    assert_eq!(m.stats().files_rolled_back, 1);
}

#[test]
fn overwrites_and_holes_replay_in_order() {
    let mut m = fs(MetaMode::Journal);
    let f = file(&mut m, ROOT, "db");
    m.write(f, 4, b"abcd").unwrap_or_else(|e| panic!("{e:?}"));
    m.write(f, 2, b"XY").unwrap_or_else(|e| panic!("{e:?}"));
    m.fsync(f).unwrap_or_else(|e| panic!("{e:?}"));
    m.cut();
    assert_eq!(content(&m, f), b"\0\0XYabcd");
}

#[test]
fn fsync_of_one_file_does_not_save_another() {
    let mut m = fs(MetaMode::Journal);
    let a = file(&mut m, ROOT, "a");
    let b = file(&mut m, ROOT, "b");
    m.write(a, 0, b"a").unwrap_or_else(|e| panic!("{e:?}"));
    m.write(b, 0, b"b").unwrap_or_else(|e| panic!("{e:?}"));
    m.fsync(a).unwrap_or_else(|e| panic!("{e:?}"));
    m.cut();
    assert_eq!(content(&m, a), b"a");
    // b's name was committed by a's fsync (journal), its data was not.
    assert_eq!(content(&m, b), b"");
}

#[test]
fn truncate_is_pending_until_fsync() {
    let mut m = fs(MetaMode::Journal);
    let f = file(&mut m, ROOT, "f");
    m.write(f, 0, b"0123456789")
        .unwrap_or_else(|e| panic!("{e:?}"));
    m.fsync(f).unwrap_or_else(|e| panic!("{e:?}"));
    m.setattr(f, None, None, None, Some(3), None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(content(&m, f), b"012");
    m.cut();
    assert_eq!(content(&m, f), b"0123456789");
    m.setattr(f, None, None, None, Some(3), None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    m.fsync(f).unwrap_or_else(|e| panic!("{e:?}"));
    m.cut();
    assert_eq!(content(&m, f), b"012");
}

#[test]
fn namespace_changes_need_a_barrier() {
    let mut m = fs(MetaMode::Journal);
    let keep = file(&mut m, ROOT, "keep");
    m.fsync(keep).unwrap_or_else(|e| panic!("{e:?}"));
    file(&mut m, ROOT, "new");
    m.rename(ROOT, OsStr::new("keep"), ROOT, OsStr::new("moved"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(names(&m, ROOT), ["moved", "new"]);
    m.cut();
    assert_eq!(names(&m, ROOT), ["keep"]);
}

#[test]
fn journal_mode_commits_names_on_any_fsync_strict_only_on_the_dir() {
    for (mode, after_file_sync) in [(MetaMode::Journal, vec!["d"]), (MetaMode::Strict, vec![])] {
        let mut m = fs(mode);
        let d = m
            .create(ROOT, OsStr::new("d"), Kind::Dir, 0o700, 0, 0)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .ino;
        let f = file(&mut m, d, "f");
        m.write(f, 0, b"x").unwrap_or_else(|e| panic!("{e:?}"));
        m.fsync(f).unwrap_or_else(|e| panic!("{e:?}"));
        m.cut();
        assert_eq!(names(&m, ROOT), after_file_sync, "{mode:?}");
    }
    let mut m = fs(MetaMode::Strict);
    let f = file(&mut m, ROOT, "f");
    m.fsync(f).unwrap_or_else(|e| panic!("{e:?}"));
    m.fsync(ROOT).unwrap_or_else(|e| panic!("{e:?}"));
    m.cut();
    assert_eq!(names(&m, ROOT), ["f"]);
}

#[test]
fn an_unlinked_file_comes_back_until_committed() {
    let mut m = fs(MetaMode::Journal);
    let f = file(&mut m, ROOT, "snap");
    m.write(f, 0, b"s").unwrap_or_else(|e| panic!("{e:?}"));
    m.fsync(f).unwrap_or_else(|e| panic!("{e:?}"));
    m.remove(ROOT, OsStr::new("snap"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(m.lookup(ROOT, OsStr::new("snap")).is_err());
    m.cut();
    let back = m
        .lookup(ROOT, OsStr::new("snap"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(content(&m, back.ino), b"s");
    m.remove(ROOT, OsStr::new("snap"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    m.fsync(ROOT).unwrap_or_else(|e| panic!("{e:?}"));
    m.cut();
    assert!(m.lookup(ROOT, OsStr::new("snap")).is_err());
    assert!(m.getattr(back.ino).is_err(), "inode freed");
}

#[test]
fn ignored_fsync_keeps_nothing() {
    let mut m = Model::new(MetaMode::Journal, true, 0, 0);
    let f = file(&mut m, ROOT, "db");
    m.write(f, 0, b"acked").unwrap_or_else(|e| panic!("{e:?}"));
    m.fsync(f).unwrap_or_else(|e| panic!("{e:?}"));
    m.cut();
    assert!(names(&m, ROOT).is_empty());
    assert_eq!(m.stats().barriers, 0);
    assert_eq!(m.stats().fsyncs, 1);
}

#[test]
fn posix_errors() {
    let mut m = fs(MetaMode::Journal);
    let d = m
        .create(ROOT, OsStr::new("d"), Kind::Dir, 0o700, 0, 0)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .ino;
    file(&mut m, d, "f");
    let e = |r: Result<(), Errno>| r.err().map(i32::from);
    assert_eq!(
        m.create(ROOT, OsStr::new("d"), Kind::File, 0o600, 0, 0)
            .err()
            .map(i32::from),
        Some(libc::EEXIST)
    );
    assert_eq!(
        e(m.remove(ROOT, OsStr::new("d"), true)),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        e(m.remove(ROOT, OsStr::new("d"), false)),
        Some(libc::EISDIR)
    );
    assert_eq!(e(m.remove(d, OsStr::new("f"), true)), Some(libc::ENOTDIR));
    assert_eq!(
        e(m.rename(ROOT, OsStr::new("d"), d, OsStr::new("inner"), false)),
        Some(libc::EINVAL)
    );
    file(&mut m, ROOT, "g");
    assert_eq!(
        e(m.rename(ROOT, OsStr::new("g"), d, OsStr::new("f"), true)),
        Some(libc::EEXIST)
    );
    assert_eq!(
        e(m.rename(ROOT, OsStr::new("g"), d, OsStr::new("f"), false)),
        None
    );
    assert_eq!(names(&m, d), ["f"]);
    assert_eq!(names(&m, ROOT), ["d"]);
}
