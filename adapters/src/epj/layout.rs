//! How accepted resources land in the import folder.
//!
//! - [`Layout::Files`] (the default): one `<Type>-<id>.json` per resource,
//!   pretty-printed, as many EPJ imports expect.
//! - [`Layout::Ndjson`]: one `bundle-<n>.ndjson` per accepted Bundle, a
//!   created resource per line, as FHIR bulk import takes them. Creating
//!   and renaming one file per resource is what limits this adapter's
//!   intake (about 11,500 resources/s on the benchmark machine), so a load
//!   test that measures the hub's drain uses this layout.
//!
//! Both write to `.<name>.tmp` and rename, so an importer never sees half a
//! file. Bundle files are numbered in commit order; only the newest can lack
//! its lines in the identifier index after a crash, so only it is read back
//! at start ([`Scan::newest_bundle`]).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::bundle::{ACCEPTED_TYPES, Entry, is_fhir_id};
use super::outbox::{CommitError, io_err};

/// Where accepted resources go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// One `<Type>-<id>.json` per resource.
    #[default]
    Files,
    /// One `bundle-<n>.ndjson` per accepted Bundle, a resource per line.
    Ndjson,
}

const BUNDLE_PREFIX: &str = "bundle-";
const BUNDLE_SUFFIX: &str = ".ndjson";

/// Writes `created` in `layout`; `next_bundle` numbers Bundle files and
/// moves on by one for each written. Returns the files written, for the
/// caller to remove if a later step fails; on an error here nothing of this
/// call is left behind.
pub(super) fn write(
    layout: Layout,
    dir: &Path,
    fsync: bool,
    next_bundle: &mut u64,
    created: &[&Entry],
) -> Result<Vec<PathBuf>, CommitError> {
    if created.is_empty() {
        return Ok(Vec::new());
    }
    match layout {
        Layout::Files => {
            let mut written = Vec::with_capacity(created.len());
            for e in created {
                let name = format!("{}-{}.json", e.resource_type, e.id);
                let bytes = serde_json::to_vec_pretty(&e.resource)
                    .map_err(|err| io_err(&dir.join(&name))(std::io::Error::other(err)));
                match bytes.and_then(|b| write_file(dir, &name, &b, fsync)) {
                    Ok(p) => written.push(p),
                    Err(err) => {
                        remove_all(&written);
                        return Err(err);
                    }
                }
            }
            Ok(written)
        }
        Layout::Ndjson => {
            let name = format!("{BUNDLE_PREFIX}{:012}{BUNDLE_SUFFIX}", *next_bundle);
            let mut buf = Vec::with_capacity(created.len() * 2048);
            for e in created {
                serde_json::to_writer(&mut buf, &e.resource)
                    .map_err(|err| io_err(&dir.join(&name))(std::io::Error::other(err)))?;
                buf.push(b'\n');
            }
            let p = write_file(dir, &name, &buf, fsync)?;
            *next_bundle += 1;
            Ok(vec![p])
        }
    }
}

/// Removes files written by a commit that then failed.
pub(super) fn remove_all(written: &[PathBuf]) {
    for p in written {
        let _ = fs::remove_file(p);
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8], fsync: bool) -> Result<PathBuf, CommitError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    if fsync {
        f.sync_data().map_err(io_err(&tmp))?;
    }
    drop(f);
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    Ok(dst)
}

/// What the folder holds, for rebuilding the index at start.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Leftover temporary files, removed.
    pub temp_removed: usize,
    /// `<Type>-<id>.json` files: (type, id, path).
    pub resource_files: Vec<(String, String, PathBuf)>,
    /// The newest Bundle file, the only one whose index lines a crash can
    /// have lost.
    pub newest_bundle: Option<PathBuf>,
    /// The number for the next Bundle file.
    pub next_bundle: u64,
}

/// Lists the folder and removes leftover temporary files.
pub(super) fn scan(dir: &Path) -> std::io::Result<Scan> {
    let mut s = Scan::default();
    let mut newest: Option<u64> = None;
    for dirent in fs::read_dir(dir)? {
        let dirent = dirent?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') && name.ends_with(".tmp") {
            fs::remove_file(dirent.path())?;
            s.temp_removed += 1;
        } else if let Some(n) = bundle_number(name) {
            if newest.is_none_or(|m| n > m) {
                newest = Some(n);
                s.newest_bundle = Some(dirent.path());
            }
        } else if let Some((rtype, id)) = parse_file_name(name) {
            s.resource_files
                .push((rtype.to_string(), id.to_string(), dirent.path()));
        }
    }
    s.next_bundle = newest.map_or(0, |n| n + 1);
    Ok(s)
}

/// `bundle-<n>.ndjson` → n.
fn bundle_number(name: &str) -> Option<u64> {
    name.strip_prefix(BUNDLE_PREFIX)?
        .strip_suffix(BUNDLE_SUFFIX)?
        .parse()
        .ok()
}

/// `<Type>-<id>.json` → (type, id), for accepted types only.
fn parse_file_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".json")?;
    let (rtype, id) = stem.split_once('-')?;
    (ACCEPTED_TYPES.contains(&rtype) && is_fhir_id(id)).then_some((rtype, id))
}
