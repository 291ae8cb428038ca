//! The backup file format, written and read as a stream.
//!
//! Hand-written rather than left to a serialization crate: a backup is read
//! back by a later release, so its bytes must be specified here, not by a
//! library's layout that could change under a version bump. It is small.
//!
//! ```text
//! header   "KPBACKUP"  format u16  layout u8  created µs u64  hub-version len u8 + UTF-8
//! items    'K' name-len u8 + name              a keyspace starts; its records follow
//!          'R' key-len u32 + key  value-len u32 + value
//!          'F' name-len u8 + name  len u32 + bytes   a file of the data directory
//! trailer  'E' records u64  SHA-256 of every byte before it (32)
//! ```
//!
//! Integers are big-endian. Nothing may follow the trailer. A reader checks
//! magic and format version first, the checksum and count at the end; a
//! caller that must not act on a damaged file reads it through once
//! ([`verify`]) before it writes anything.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"KPBACKUP";
/// Version of this file format (not of the store layout).
pub const FORMAT_VERSION: u16 = 1;
/// Largest key and value a reader accepts: a damaged length field must not
/// make it allocate gigabytes.
pub const MAX_KEY: usize = 64 * 1024;
pub const MAX_VALUE: usize = 16 * 1024 * 1024;

const TAG_KEYSPACE: u8 = b'K';
const TAG_RECORD: u8 = b'R';
const TAG_FILE: u8 = b'F';
const TAG_END: u8 = b'E';

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("this is not a knutepunkt backup file (wrong magic bytes); check the file name")]
    NotABackup,
    #[error(
        "the backup file has format version {found}, this build reads {known}; restore it with the knutepunkt release that wrote it ({hub})"
    )]
    Format { found: u16, known: u16, hub: String },
    #[error(
        "the backup holds store layout {found} (written by knutepunkt {hub}), this build knows layout {known}; restore it with that release"
    )]
    Layout { found: u8, known: u8, hub: String },
    #[error(
        "the backup file is damaged or incomplete: it ends before its trailer (the backup was interrupted, or the file was cut or changed); use another backup"
    )]
    Truncated,
    #[error(
        "the backup file is damaged ({0}): it was changed after it was written; use another backup"
    )]
    Corrupt(String),
    #[error("the store could not be read or written: {0}")]
    Store(String),
    /// A precondition the caller can fix; the message says how.
    #[error("{0}")]
    Refused(String),
}

/// What a backup file says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub format: u16,
    pub layout: u8,
    /// When the snapshot was taken, µs since the epoch.
    pub created_us: u64,
    pub hub_version: String,
}

/// What was written or read: records per keyspace, files, bytes.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub records: u64,
    pub per_keyspace: BTreeMap<String, u64>,
    pub files: Vec<String>,
    pub bytes: u64,
}

/// One item of the stream.
#[derive(Debug)]
pub enum Item {
    Keyspace(String),
    Record { key: Vec<u8>, value: Vec<u8> },
    File { name: String, bytes: Vec<u8> },
}

/// Writes a backup to `out`, hashing as it goes.
pub struct Encoder<W: Write> {
    out: W,
    hash: Sha256,
    summary: Summary,
    current: Option<String>,
}

impl<W: Write> Encoder<W> {
    /// Writes the header.
    pub fn new(out: W, layout: u8, created_us: u64, hub_version: &str) -> io::Result<Self> {
        let mut e = Encoder {
            out,
            hash: Sha256::new(),
            summary: Summary::default(),
            current: None,
        };
        e.put(MAGIC)?;
        e.put(&FORMAT_VERSION.to_be_bytes())?;
        e.put(&[layout])?;
        e.put(&created_us.to_be_bytes())?;
        e.short_str(hub_version)?;
        Ok(e)
    }

    pub fn keyspace(&mut self, name: &str) -> io::Result<()> {
        self.put(&[TAG_KEYSPACE])?;
        self.short_str(name)?;
        self.summary
            .per_keyspace
            .entry(name.to_string())
            .or_default();
        self.current = Some(name.to_string());
        Ok(())
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(io::Error::other(format!(
                "a stored entry ({} byte key, {} byte value) is larger than the backup format takes",
                key.len(),
                value.len()
            )));
        }
        self.put(&[TAG_RECORD])?;
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)?;
        self.summary.records += 1;
        if let Some(c) = &self.current
            && let Some(n) = self.summary.per_keyspace.get_mut(c)
        {
            *n += 1;
        }
        Ok(())
    }

    pub fn file(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > MAX_VALUE {
            return Err(io::Error::other(format!(
                "{name} is too large for a backup"
            )));
        }
        self.put(&[TAG_FILE])?;
        self.short_str(name)?;
        self.put(&(bytes.len() as u32).to_be_bytes())?;
        self.put(bytes)?;
        self.summary.files.push(name.to_string());
        Ok(())
    }

    /// Bytes and records written so far.
    pub fn progress(&self) -> (u64, u64) {
        (self.summary.bytes, self.summary.records)
    }

    /// Writes the trailer and flushes; returns the writer and the summary.
    pub fn finish(mut self) -> io::Result<(W, Summary)> {
        self.put(&[TAG_END])?;
        self.put(&self.summary.records.to_be_bytes())?;
        let sum = self.hash.finalize_reset();
        self.out.write_all(&sum)?;
        self.summary.bytes += sum.len() as u64;
        self.out.flush()?;
        Ok((self.out, self.summary))
    }

    fn short_str(&mut self, s: &str) -> io::Result<()> {
        let b = s.as_bytes();
        let b = &b[..b.len().min(255)];
        self.put(&[b.len() as u8])?;
        self.put(b)
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.hash.update(b);
        self.out.write_all(b)?;
        self.summary.bytes += b.len() as u64;
        Ok(())
    }
}

/// Reads a backup item by item, checking the trailer at the end.
pub struct Decoder<R: Read> {
    inp: R,
    hash: Sha256,
    pub header: Header,
    summary: Summary,
    current: Option<String>,
    done: bool,
}

impl<R: Read> Decoder<R> {
    /// Reads and checks the header (magic, format version).
    pub fn new(inp: R) -> Result<Self, BackupError> {
        let mut d = Decoder {
            inp,
            hash: Sha256::new(),
            header: Header {
                format: 0,
                layout: 0,
                created_us: 0,
                hub_version: String::new(),
            },
            summary: Summary::default(),
            current: None,
            done: false,
        };
        let mut magic = [0u8; 8];
        d.take(&mut magic).map_err(|e| match e {
            BackupError::Truncated => BackupError::NotABackup,
            e => e,
        })?;
        if &magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let format = u16::from_be_bytes(d.array()?);
        let [layout] = d.array()?;
        let created_us = u64::from_be_bytes(d.array()?);
        let hub_version = d.short_str()?;
        if format != FORMAT_VERSION {
            return Err(BackupError::Format {
                found: format,
                known: FORMAT_VERSION,
                hub: hub_version,
            });
        }
        d.header = Header {
            format,
            layout,
            created_us,
            hub_version,
        };
        Ok(d)
    }

    /// The next item, or `None` after a trailer whose count and checksum
    /// match and after which the file ends.
    pub fn next_item(&mut self) -> Result<Option<Item>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let [tag] = self.array()?;
        match tag {
            TAG_KEYSPACE => {
                let name = self.short_str()?;
                self.summary.per_keyspace.entry(name.clone()).or_default();
                self.current = Some(name.clone());
                Ok(Some(Item::Keyspace(name)))
            }
            TAG_RECORD => {
                let Some(ks) = self.current.clone() else {
                    return Err(BackupError::Corrupt("a record before any keyspace".into()));
                };
                let key = self.blob(MAX_KEY, "key")?;
                let value = self.blob(MAX_VALUE, "value")?;
                self.summary.records += 1;
                *self.summary.per_keyspace.entry(ks).or_default() += 1;
                Ok(Some(Item::Record { key, value }))
            }
            TAG_FILE => {
                let name = self.short_str()?;
                let bytes = self.blob(MAX_VALUE, "file")?;
                self.summary.files.push(name.clone());
                Ok(Some(Item::File { name, bytes }))
            }
            TAG_END => {
                self.trailer()?;
                Ok(None)
            }
            t => Err(BackupError::Corrupt(format!("unknown item tag {t:#04x}"))),
        }
    }

    /// What was read so far (complete once `next_item` returned `None`).
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    fn trailer(&mut self) -> Result<(), BackupError> {
        let count = u64::from_be_bytes(self.array()?);
        let want = self.hash.finalize_reset();
        let mut got = [0u8; 32];
        self.raw(&mut got)?;
        if got[..] != want[..] {
            return Err(BackupError::Corrupt("checksum mismatch".into()));
        }
        if count != self.summary.records {
            return Err(BackupError::Corrupt(format!(
                "the trailer counts {count} records, the file holds {}",
                self.summary.records
            )));
        }
        let mut extra = [0u8; 1];
        if self.inp.read(&mut extra)? != 0 {
            return Err(BackupError::Corrupt("bytes after the trailer".into()));
        }
        self.done = true;
        Ok(())
    }

    fn blob(&mut self, max: usize, what: &str) -> Result<Vec<u8>, BackupError> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        if len > max {
            return Err(BackupError::Corrupt(format!(
                "a {what} length of {len} bytes, more than {max}"
            )));
        }
        let mut b = vec![0u8; len];
        self.take(&mut b)?;
        Ok(b)
    }

    fn short_str(&mut self) -> Result<String, BackupError> {
        let [len] = self.array()?;
        let mut b = vec![0u8; len as usize];
        self.take(&mut b)?;
        String::from_utf8(b).map_err(|_| BackupError::Corrupt("a name is not UTF-8".into()))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BackupError> {
        let mut b = [0u8; N];
        self.take(&mut b)?;
        Ok(b)
    }

    /// Reads exactly `buf`, hashing it.
    fn take(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.raw(buf)?;
        self.hash.update(&*buf);
        self.summary.bytes += buf.len() as u64;
        Ok(())
    }

    fn raw(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        self.inp.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => BackupError::Truncated,
            _ => BackupError::Io(e),
        })
    }
}

/// Reads a whole backup, checking everything (magic, versions, lengths,
/// count, checksum) without acting on it.
pub fn verify(inp: impl Read) -> Result<(Header, Summary), BackupError> {
    let mut d = Decoder::new(inp)?;
    while d.next_item()?.is_some() {}
    Ok((d.header.clone(), d.summary.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut e = Encoder::new(Vec::new(), 1, 42, "0.1.0").unwrap_or_else(|e| panic!("{e}"));
        e.keyspace("log").unwrap_or_else(|e| panic!("{e}"));
        e.record(b"k1", b"v1").unwrap_or_else(|e| panic!("{e}"));
        e.record(b"k2", &[7u8; 1000])
            .unwrap_or_else(|e| panic!("{e}"));
        e.keyspace("meta").unwrap_or_else(|e| panic!("{e}"));
        e.record(b"format", &[1]).unwrap_or_else(|e| panic!("{e}"));
        e.file("audit-pseudonym.key", b"secret")
            .unwrap_or_else(|e| panic!("{e}"));
        e.finish().unwrap_or_else(|e| panic!("{e}")).0
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let mut d = Decoder::new(&b[..]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.header.layout, 1);
        assert_eq!(d.header.created_us, 42);
        assert_eq!(d.header.hub_version, "0.1.0");
        let mut items = Vec::new();
        while let Some(i) = d.next_item().unwrap_or_else(|e| panic!("{e}")) {
            items.push(format!("{i:?}"));
        }
        assert_eq!(items.len(), 6);
        assert_eq!(d.summary().records, 3);
        assert_eq!(d.summary().per_keyspace["log"], 2);
        assert_eq!(d.summary().bytes as usize, b.len() - 32);
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let b = sample();
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(verify(&c[..]).is_err(), "flipping byte {i} went unnoticed");
            assert!(verify(&b[..i]).is_err(), "cutting at {i} went unnoticed");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(verify(&longer[..]), Err(BackupError::Corrupt(_))));
    }

    #[test]
    fn other_versions_are_named() {
        let mut b = sample();
        b[9] = 9; // format version low byte
        let e = verify(&b[..])
            .err()
            .unwrap_or_else(|| panic!("accepted"))
            .to_string();
        assert!(e.contains("format version 9"), "{e}");
        assert!(e.contains("0.1.0"), "{e}");
        assert!(matches!(
            verify(&b"hello"[..]),
            Err(BackupError::NotABackup)
        ));
    }
}
