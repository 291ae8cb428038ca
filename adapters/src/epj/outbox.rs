//! The import folder: where accepted resources land (one file each, or one
//! NDJSON file per Bundle: see [`super::layout`]), plus the identifier index
//! that makes conditional create hold across restarts, and `received.log`
//! for arrival order.
//!
//! Layout of `--out DIR`:
//! - `<ResourceType>-<id>.json`: one resource, written to `.<name>.tmp` and
//!   renamed, so an importer never sees half a file (`--layout files`); or
//!   `bundle-<n>.ndjson`, the resources a Bundle created, one per line
//!   (`--layout ndjson`).
//! - `received.log`: one JSON line per newly created resource (receive time,
//!   type, id, keyed pseudonym of the subject, priority, codes). It never
//!   holds a national id.
//! - `.identifier-index.jsonl`: one JSON line per created resource with its
//!   identifiers, so the index survives an importer that moves files away.
//!   At start it is read, and any resource file it lacks (a crash between
//!   rename and index append) is parsed and added; of the Bundle files only
//!   the newest can lack lines, so only it is read.
//! - `.pseudonym-key`: the random key for subject pseudonyms, made on first
//!   start unless `--pseudonym-key` is given.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bundle::{Entry, EntryOutcome};
use super::layout::{self, Layout};

const INDEX_FILE: &str = ".identifier-index.jsonl";
const KEY_FILE: &str = ".pseudonym-key";
/// Name of the arrival log inside the import folder.
pub const RECEIVED_LOG: &str = "received.log";

/// Why a Bundle could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The entry's id already holds a resource with other identifiers.
    #[error(
        "Bundle.entry[{index}]: {resource_type}/{id} already exists with other identifiers; give each identifier its own resource id"
    )]
    IdConflict {
        /// Position of the entry in the Bundle.
        index: usize,
        /// Its resource type.
        resource_type: String,
        /// Its id.
        id: String,
    },
    /// The folder could not be written.
    #[error("cannot write {path}: {source}; check that --out is writable and the disk has room")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why the import folder could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the import folder at {path}: {source}; check --out")]
pub struct OpenError {
    path: PathBuf,
    source: std::io::Error,
}

impl OpenError {
    /// The opening task itself failed (panicked or was cancelled).
    pub(crate) fn from_join(path: &Path, e: tokio::task::JoinError) -> Self {
        OpenError {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        }
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CommitError + '_ {
    move |source| CommitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct IndexLine {
    #[serde(rename = "type")]
    resource_type: String,
    id: String,
    identifiers: Vec<String>,
}

#[derive(Serialize)]
struct ReceivedLine<'a> {
    received: String,
    #[serde(rename = "type")]
    resource_type: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    codes: &'a [String],
}

struct Inner {
    /// (type, `system|value`) → id.
    by_identifier: HashMap<(String, String), String>,
    /// (type, id) of every resource received.
    ids: HashSet<(String, String)>,
    /// Number of the next `bundle-<n>.ndjson`.
    next_bundle: u64,
    index_file: File,
    log_file: File,
}

/// What the import folder held when it was opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenReport {
    /// Resources known (from the index and the files).
    pub resources: usize,
    /// Resource files that were missing from the index and were added.
    pub recovered: usize,
    /// Leftover temporary files removed.
    pub temp_removed: usize,
}

/// The import folder and its identifier index.
pub struct Outbox {
    dir: PathBuf,
    fsync: bool,
    layout: Layout,
    key: Vec<u8>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.dir)
            .field("fsync", &self.fsync)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (creating if needed) the import folder and rebuilds the index.
    /// `fsync`: sync each file and the folder before answering.
    /// `layout`: how new resources are written (the folder may hold both).
    /// `pseudonym_key`: key for subject pseudonyms; `None` reads or makes
    /// `DIR/.pseudonym-key`.
    pub fn open(
        dir: &Path,
        fsync: bool,
        layout: Layout,
        pseudonym_key: Option<&str>,
    ) -> Result<(Outbox, OpenReport), OpenError> {
        fs::create_dir_all(dir).map_err(open_err(dir))?;
        let key = match pseudonym_key {
            Some(k) => k.as_bytes().to_vec(),
            None => load_or_make_key(&dir.join(KEY_FILE))?,
        };
        let mut report = OpenReport::default();
        let index_path = dir.join(INDEX_FILE);
        let (mut by_identifier, mut ids) = read_index(&index_path)?;
        let mut index_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index_path)
            .map_err(open_err(&index_path))?;

        let scan = layout::scan(dir).map_err(open_err(dir))?;
        report.temp_removed = scan.temp_removed;
        let recovered = unindexed(&scan, &ids)?;
        let mut buf = Vec::new();
        for rec in &recovered {
            for ident in &rec.identifiers {
                by_identifier.insert((rec.resource_type.clone(), ident.clone()), rec.id.clone());
            }
            ids.insert((rec.resource_type.clone(), rec.id.clone()));
            append_json_line(&mut buf, rec);
        }
        if !buf.is_empty() {
            index_file.write_all(&buf).map_err(open_err(&index_path))?;
            index_file.sync_data().map_err(open_err(&index_path))?;
        }
        report.recovered = recovered.len();
        report.resources = ids.len();

        let log_path = dir.join(RECEIVED_LOG);
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(open_err(&log_path))?;

        Ok((
            Outbox {
                dir: dir.to_path_buf(),
                fsync,
                layout,
                key,
                inner: Mutex::new(Inner {
                    by_identifier,
                    ids,
                    next_bundle: scan.next_bundle,
                    index_file,
                    log_file,
                }),
            },
            report,
        ))
    }

    /// The folder resources are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keyed pseudonym of a subject: 16 hex digits of SHA-256(key ‖ 0 ‖ subject).
    pub fn pseudonym(&self, subject: &str) -> String {
        let mut h = Sha256::new();
        h.update(&self.key);
        h.update([0u8]);
        h.update(subject.as_bytes());
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Applies a checked transaction: conditional create of every entry,
    /// all or nothing. Blocking; call from `spawn_blocking`.
    pub fn commit(&self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, CommitError> {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Phase 1: decide, without touching the disk.
        let Decided {
            outcomes,
            fresh,
            fresh_ids,
        } = decide(&inner, entries)?;

        // Phase 2: write the new resources; undone on any failure below.
        let created: Vec<&Entry> = entries
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.created)
            .map(|(e, _)| e)
            .collect();
        let written = layout::write(
            self.layout,
            &self.dir,
            self.fsync,
            &mut inner.next_bundle,
            &created,
        )?;
        if self.fsync
            && !written.is_empty()
            && let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all())
        {
            layout::remove_all(&written);
            return Err(io_err(&self.dir)(e));
        }

        // Phase 3: index and arrival log.
        self.append_lines(&mut inner, &created)?;
        for (key, id) in fresh {
            inner.by_identifier.insert(key, id);
        }
        inner.ids.extend(fresh_ids);
        Ok(outcomes)
    }

    /// Appends the created resources to the index and the arrival log
    /// (synced when the outbox syncs).
    fn append_lines(&self, inner: &mut Inner, created: &[&Entry]) -> Result<(), CommitError> {
        if created.is_empty() {
            return Ok(());
        }
        let mut index_buf = Vec::new();
        let mut log_buf = Vec::new();
        for e in created {
            append_json_line(
                &mut index_buf,
                &IndexLine {
                    resource_type: e.resource_type.clone(),
                    id: e.id.clone(),
                    identifiers: e.identifiers.clone(),
                },
            );
            append_json_line(
                &mut log_buf,
                &ReceivedLine {
                    received: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
                    resource_type: &e.resource_type,
                    id: &e.id,
                    subject: e.subject.as_deref().map(|s| self.pseudonym(s)),
                    priority: e.priority.as_deref(),
                    codes: &e.codes,
                },
            );
        }
        let index_path = self.dir.join(INDEX_FILE);
        inner
            .index_file
            .write_all(&index_buf)
            .map_err(io_err(&index_path))?;
        let log_path = self.dir.join(RECEIVED_LOG);
        inner
            .log_file
            .write_all(&log_buf)
            .map_err(io_err(&log_path))?;
        if self.fsync {
            inner.index_file.sync_data().map_err(io_err(&index_path))?;
            inner.log_file.sync_data().map_err(io_err(&log_path))?;
        }
        Ok(())
    }
}

/// What a transaction will do, decided before anything is written.
struct Decided {
    outcomes: Vec<EntryOutcome>,
    /// (resource type, identifier) → id of the resources it creates.
    fresh: HashMap<(String, String), String>,
    /// (resource type, id) of the resources it creates.
    fresh_ids: HashSet<(String, String)>,
}

/// Decides each entry: an existing match (by identifier, also one created
/// earlier in the same transaction) or a create; an id already taken
/// refuses the whole transaction.
fn decide(inner: &Inner, entries: &[Entry]) -> Result<Decided, CommitError> {
    let mut d = Decided {
        outcomes: Vec::with_capacity(entries.len()),
        fresh: HashMap::new(),
        fresh_ids: HashSet::new(),
    };
    for (index, e) in entries.iter().enumerate() {
        let key = (e.resource_type.clone(), e.match_identifier.clone());
        if let Some(id) = inner.by_identifier.get(&key).or_else(|| d.fresh.get(&key)) {
            d.outcomes.push(EntryOutcome {
                created: false,
                resource_type: e.resource_type.clone(),
                id: id.clone(),
            });
            continue;
        }
        let idkey = (e.resource_type.clone(), e.id.clone());
        if inner.ids.contains(&idkey) || d.fresh_ids.contains(&idkey) {
            return Err(CommitError::IdConflict {
                index,
                resource_type: e.resource_type.clone(),
                id: e.id.clone(),
            });
        }
        for ident in &e.identifiers {
            d.fresh
                .insert((e.resource_type.clone(), ident.clone()), e.id.clone());
        }
        d.fresh_ids.insert(idkey);
        d.outcomes.push(EntryOutcome {
            created: true,
            resource_type: e.resource_type.clone(),
            id: e.id.clone(),
        });
    }
    Ok(d)
}

/// (resource type, identifier) → id, and every (resource type, id).
type IndexMaps = (HashMap<(String, String), String>, HashSet<(String, String)>);

/// Reads the identifier index. A torn last line (crash mid-append) is
/// skipped; [`unindexed`] restores that resource from its file.
fn read_index(index_path: &Path) -> Result<IndexMaps, OpenError> {
    let mut by_identifier = HashMap::new();
    let mut ids = HashSet::new();
    if !index_path.exists() {
        return Ok((by_identifier, ids));
    }
    let f = File::open(index_path).map_err(open_err(index_path))?;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(open_err(index_path))?;
        let Ok(rec) = serde_json::from_str::<IndexLine>(&line) else {
            continue;
        };
        for ident in rec.identifiers {
            by_identifier.insert((rec.resource_type.clone(), ident), rec.id.clone());
        }
        ids.insert((rec.resource_type, rec.id));
    }
    Ok((by_identifier, ids))
}

/// Resources in the folder that the index lacks (a crash between writing
/// a file and appending its index line): resource files, and the lines of
/// the newest Bundle file.
fn unindexed(
    scan: &layout::Scan,
    ids: &HashSet<(String, String)>,
) -> Result<Vec<IndexLine>, OpenError> {
    let mut recovered = Vec::new();
    for (rtype, id, p) in &scan.resource_files {
        if ids.contains(&(rtype.clone(), id.clone())) {
            continue;
        }
        let bytes = fs::read(p).map_err(open_err(p))?;
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => recovered.push(IndexLine {
                resource_type: rtype.clone(),
                id: id.clone(),
                identifiers: identifiers_of(&v),
            }),
            Err(e) => {
                tracing::warn!(file = %p.display(), error = %e, "skipping a resource file that is not JSON");
            }
        }
    }
    if let Some(p) = &scan.newest_bundle {
        recover_bundle_file(p, ids, &mut recovered)?;
    }
    Ok(recovered)
}

fn append_json_line<T: Serialize>(buf: &mut Vec<u8>, value: &T) {
    // Serializing these plain structs to a Vec cannot fail.
    if serde_json::to_writer(&mut *buf, value).is_ok() {
        buf.push(b'\n');
    }
}

/// Adds to `recovered` the resources of a Bundle file that the index lacks
/// (a crash between its rename and the index append). A torn line cannot
/// occur (the file was renamed whole); a line that is not JSON is skipped.
fn recover_bundle_file(
    p: &Path,
    ids: &HashSet<(String, String)>,
    recovered: &mut Vec<IndexLine>,
) -> Result<(), OpenError> {
    let f = File::open(p).map_err(open_err(p))?;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(open_err(p))?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            tracing::warn!(file = %p.display(), "skipping a line that is not JSON");
            continue;
        };
        let (Some(rtype), Some(id)) = (v["resourceType"].as_str(), v["id"].as_str()) else {
            continue;
        };
        if !ids.contains(&(rtype.to_string(), id.to_string())) {
            recovered.push(IndexLine {
                resource_type: rtype.to_string(),
                id: id.to_string(),
                identifiers: identifiers_of(&v),
            });
        }
    }
    Ok(())
}

fn identifiers_of(resource: &serde_json::Value) -> Vec<String> {
    resource
        .get("identifier")
        .and_then(|v| v.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|i| {
                    let s = i.get("system")?.as_str()?;
                    let v = i.get("value")?.as_str()?;
                    Some(format!("{s}|{v}"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn load_or_make_key(path: &Path) -> Result<Vec<u8>, OpenError> {
    match fs::read(path) {
        Ok(k) if !k.is_empty() => return Ok(k),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(open_err(path)(e)),
    }
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(open_err(path))?;
    f.write_all(key.as_bytes()).map_err(open_err(path))?;
    f.sync_all().map_err(open_err(path))?;
    Ok(key.into_bytes())
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
