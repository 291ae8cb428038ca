//! Online backup: the admin API's `GET /admin/backup` streams a consistent
//! snapshot of the store in the [`format`] of this module while the hub
//! keeps serving; `knutepunkt backup` is its client and `knutepunkt
//! restore` writes a backup into a new data directory
//! (`store::embedded::backup` knows the store's side of both).
//!
//! The stream is produced on a blocking thread and handed to the HTTP
//! response in chunks through a small bounded channel, so a backup of any
//! size holds a few hundred KiB in memory, and a slow reader slows the
//! snapshot's reading, not the hub's writes.

pub mod format;

use std::io::{self, Write};
use std::path::PathBuf;

use axum::body::{Body, Bytes};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::store::embedded::EmbeddedStore;
use crate::store::embedded::backup::{DATA_FILES, Snapshotter};

/// Bytes per chunk sent to the client.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the snapshot thread and the response.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What a backup reads: the store and the data directory's files that
/// belong with it.
#[derive(Clone)]
pub struct BackupSource {
    snap: Snapshotter,
    /// (name in the backup, path) of the data directory's files.
    files: Vec<(String, PathBuf)>,
}

impl BackupSource {
    /// The store, and the audit pseudonym key when it lives in the data
    /// directory (a key configured elsewhere is the operator's to keep,
    /// like the TLS keys).
    pub fn new(store: &EmbeddedStore, cfg: &Config) -> BackupSource {
        let files = if cfg.audit.pseudonym_key_file.is_none() {
            DATA_FILES
                .iter()
                .map(|n| (n.to_string(), cfg.data_dir.join(n)))
                .collect()
        } else {
            Vec::new()
        };
        BackupSource {
            snap: store.snapshotter(),
            files,
        }
    }

    /// The backup as a response body, produced as the client reads it. A
    /// failure part-way ends the body with an error, and the file the
    /// client holds has no valid trailer, so no restore takes it.
    pub fn stream(self) -> Body {
        let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(CHUNKS_IN_FLIGHT);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let res = self.read_files().and_then(|files| {
                self.snap
                    .backup(&files, &mut out, &mut |_, _| {})
                    .map_err(|e| io::Error::other(e.to_string()))
            });
            match res {
                Ok(s) => {
                    metrics::counter!("knutepunkt_backups_total", "outcome" => "ok").increment(1);
                    tracing::info!(
                        records = s.records,
                        bytes = s.bytes,
                        secs = started.elapsed().as_secs_f64(),
                        "backup streamed"
                    );
                }
                Err(e) => {
                    metrics::counter!("knutepunkt_backups_total", "outcome" => "failed")
                        .increment(1);
                    tracing::error!(error = %e, "backup failed part-way; the client's file is incomplete and will be refused");
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    fn read_files(&self) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for (name, path) in &self.files {
            match std::fs::read(path) {
                Ok(b) => out.push((name.clone(), b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "cannot read {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// A `Write` that hands full chunks to the response body.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client stopped reading the backup",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
