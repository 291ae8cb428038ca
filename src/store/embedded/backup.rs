//! Backup and restore of the embedded store.
//!
//! A backup is one cross-keyspace snapshot (`fjall::Database::snapshot`):
//! every keyspace as of one instant, so an event, its index keys, the
//! consumer floors and the audit trail agree with each other. A write batch
//! is applied whole or not at all before a snapshot sees it, so no group
//! commit is ever half in a backup. A group whose batch is applied but whose
//! fdatasync has not returned can be in it: its vendors are answered after
//! the sync, and a vendor that got an error resends and is told
//! `DUPLICATE` by the restored hub — nothing acknowledged is missing.
//!
//! While a backup streams, the snapshot keeps fjall from dropping versions
//! it still needs; a long backup under heavy writes holds some extra disk
//! until it ends.
//!
//! Restore reads the file through once to check it (magic, versions,
//! lengths, count, checksum, keyspace names) before it writes anything,
//! writes into `store.partial`, syncs, and renames it to `store` only when
//! all is in: a half-restored directory never looks like a store.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, Readable};

use super::keys::LAYOUT_VERSION;
use super::spaces::KEYSPACES;
use super::{EmbeddedStore, OpenError, Shared, Spaces, now_micros, open_spaces};
use crate::backup::format::{BackupError, Decoder, Encoder, Header, Item, Summary, verify};

/// Files of the data directory a backup may carry next to the store.
pub const DATA_FILES: &[&str] = &["audit-pseudonym.key"];

/// Called with (bytes, records) every so often.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Records between two progress calls.
const PROGRESS_EVERY: u64 = 10_000;
/// Bytes of records per restore batch.
const RESTORE_BATCH_BYTES: usize = 8 * 1024 * 1024;

fn store_err(e: impl std::fmt::Display) -> BackupError {
    BackupError::Store(e.to_string())
}

/// Takes backups of an open store. Holds the database, not a writer
/// handle, so it does not keep the store's writer running at shutdown.
#[derive(Clone)]
pub struct Snapshotter(Arc<Shared>);

impl EmbeddedStore {
    pub fn snapshotter(&self) -> Snapshotter {
        Snapshotter(self.shared.clone())
    }
}

impl Snapshotter {
    /// Streams a consistent snapshot of every keyspace, then `files`
    /// (name, bytes; names from [`DATA_FILES`]), to `out`. Blocking: run
    /// it off the async runtime.
    pub fn backup(
        &self,
        files: &[(String, Vec<u8>)],
        out: impl Write,
        progress: Progress<'_>,
    ) -> Result<Summary, BackupError> {
        write_snapshot(&self.0.db, &self.0.ks, files, out, progress)
    }
}

/// A backup of the store in `store_dir` while no hub runs on it.
pub fn backup_offline(
    store_dir: &Path,
    files: &[(String, Vec<u8>)],
    out: impl Write,
    progress: Progress<'_>,
) -> Result<Summary, BackupError> {
    // fjall's version marker: without it, opening would create a store.
    if !store_dir.join("version").is_file() {
        return Err(BackupError::Refused(format!(
            "{} holds no store; name the hub's data directory (the one with store/ in it)",
            store_dir.display()
        )));
    }
    let (db, ks) = open_spaces(store_dir, 16 * 1024 * 1024).map_err(|e| match e {
        OpenError::Engine {
            source: fjall::Error::Locked,
            ..
        } => BackupError::Refused(format!(
            "a hub is running on {}; back it up through its admin API (leave out --data-dir)",
            store_dir.display()
        )),
        e => store_err(e),
    })?;
    match ks.meta.get("format").map_err(store_err)? {
        Some(v) if v.first() == Some(&LAYOUT_VERSION) => {}
        _ => {
            return Err(BackupError::Refused(format!(
                "{} is not a store of layout {LAYOUT_VERSION}; start the hub on it once (it says what to do), then back it up",
                store_dir.display()
            )));
        }
    }
    write_snapshot(&db, &ks, files, out, progress)
}

fn write_snapshot(
    db: &Database,
    ks: &Spaces,
    files: &[(String, Vec<u8>)],
    out: impl Write,
    progress: Progress<'_>,
) -> Result<Summary, BackupError> {
    let snap = db.snapshot();
    let mut enc = Encoder::new(out, LAYOUT_VERSION, now_micros(), env!("CARGO_PKG_VERSION"))?;
    for (name, space) in ks.named() {
        enc.keyspace(name)?;
        for g in snap.iter(space) {
            let (k, v) = g.into_inner().map_err(store_err)?;
            enc.record(&k, &v)?;
            let (bytes, records) = enc.progress();
            if records % PROGRESS_EVERY == 0 {
                progress(bytes, records);
            }
        }
    }
    drop(snap);
    for (name, bytes) in files {
        enc.file(name, bytes)?;
    }
    let (_, summary) = enc.finish()?;
    progress(summary.bytes, summary.records);
    Ok(summary)
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    pub header: Header,
    pub summary: Summary,
}

/// Restores the backup in `file` into the new data directory `data_dir`
/// (its `store/` and the data files the backup carries).
pub fn restore(
    file: &Path,
    data_dir: &Path,
    progress: Progress<'_>,
) -> Result<RestoreReport, BackupError> {
    check_empty(data_dir)?;
    let open = || {
        File::open(file).map(BufReader::new).map_err(|e| {
            BackupError::Refused(format!("cannot read the backup {}: {e}", file.display()))
        })
    };
    let (header, summary) = verify(open()?)?;
    if header.layout != LAYOUT_VERSION {
        return Err(BackupError::Layout {
            found: header.layout,
            known: LAYOUT_VERSION,
            hub: header.hub_version,
        });
    }
    if let Some(k) = summary
        .per_keyspace
        .keys()
        .find(|k| !KEYSPACES.iter().any(|(n, _)| n == k))
    {
        return Err(BackupError::Refused(format!(
            "the backup holds keyspace {k:?}, unknown to this build; restore it with knutepunkt {}",
            header.hub_version
        )));
    }
    if let Some(f) = summary
        .files
        .iter()
        .find(|f| !DATA_FILES.contains(&f.as_str()))
    {
        return Err(BackupError::Corrupt(format!("an unknown file {f:?}")));
    }
    make_private_dir(data_dir)?;
    let partial = data_dir.join("store.partial");
    let files = write_store(open()?, &partial, progress)?;
    std::fs::rename(&partial, data_dir.join("store"))?;
    for (name, bytes) in files {
        write_private(&data_dir.join(name), &bytes)?;
    }
    File::open(data_dir)?.sync_all()?;
    Ok(RestoreReport { header, summary })
}

/// Writes every record into a fresh store at `dir`; returns the files.
fn write_store(
    inp: impl Read,
    dir: &Path,
    progress: Progress<'_>,
) -> Result<Vec<(String, Vec<u8>)>, BackupError> {
    let (db, ks) = open_spaces(dir, 64 * 1024 * 1024).map_err(store_err)?;
    let mut dec = Decoder::new(inp)?;
    let mut space: Option<Keyspace> = None;
    let mut batch = db.batch();
    let mut pending = 0usize;
    let mut files = Vec::new();
    while let Some(item) = dec.next_item()? {
        match item {
            Item::Keyspace(name) => {
                space = ks
                    .named()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, k)| k.clone());
            }
            Item::Record { key, value } => {
                let Some(k) = &space else {
                    return Err(BackupError::Corrupt("a record of no known keyspace".into()));
                };
                pending += key.len() + value.len();
                batch.insert(k, key, value);
                if pending >= RESTORE_BATCH_BYTES {
                    batch.commit().map_err(store_err)?;
                    batch = db.batch();
                    pending = 0;
                    let s = dec.summary();
                    progress(s.bytes, s.records);
                }
            }
            Item::File { name, bytes } => files.push((name, bytes)),
        }
    }
    batch.commit().map_err(store_err)?;
    db.persist(fjall::PersistMode::SyncAll).map_err(store_err)?;
    let s = dec.summary();
    progress(s.bytes, s.records);
    drop(ks);
    drop(db);
    Ok(files)
}

fn check_empty(dir: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackupError::Refused(format!(
            "cannot read {}: {e}",
            dir.display()
        ))),
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(BackupError::Refused(format!(
                "{} is not empty; restore only into a new or empty directory, then point the hub's data_dir at it",
                dir.display()
            ))),
        },
    }
}

fn make_private_dir(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    Ok(())
}

/// Creates `path` with mode 0600 and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
