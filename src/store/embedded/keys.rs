//! Key layout and stored formats of the embedded store: the only place that
//! knows how bytes on disk look.
//!
//! Keyspaces (fjall partitions; integers big-endian so byte order is
//! numeric order; `name` is a destination name, length-prefixed):
//!
//! | keyspace | key | value | what |
//! |---|---|---|---|
//! | `log` | seq | [`Record`] | the event, in commit order |
//! | `ids` | resource uuid | [`IdEntry`] | read by id + the vendor's idempotency key |
//! | `idx` | `T` org type seq | [`TypeEntry`] | every resource of a municipality and type; consumers read it |
//! | `idx` | `P` org type patient seq | – | … of one patient |
//! | `idx` | `C` org type code-hash seq | – | … with one code |
//! | `alarms` | org seq | class, patient | RED/YELLOW events: consumers find alarms here |
//! | `cons` | `F` name | start, floor | a consumer's ack floor |
//! | `cons` | `S` name seq | kind, at | settled above the floor |
//! | `cons` | `E` name seq | – | escalated to the fallback |
//! | `cons` | `Q` name seq | class, patient | explicit queue (escalated to it, replayed) |
//! | `dlq` | name seq | [`DlqRecord`] | dead letters (and discarded ones) |
//! | `audit` | `A` seq / `B` org seq / `b` org patient seq | record / – | audit trail |
//! | `jti` | client-len client jti | exp | used assertion ids |
//! | `meta` | `format` | version | the layout version of this directory |
//! | `meta` | `compacted_at` | µs (u64) | when `knutepunkt compact` last started |
//!
//! Why the resource id doubles as the idempotency key: it is UUID v5 of
//! (vendor, event_id), so one lookup answers both "read by id" and "seen
//! this event before", and one key per event less is written.
//!
//! Every stored value starts with a format version byte ([`V1`]); a reader
//! refuses a version it does not know instead of misreading it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Class, StoreError};

/// The layout version written to `meta/format`.
pub const LAYOUT_VERSION: u8 = 1;
/// Version byte of every stored value.
pub const V1: u8 = 1;

/// What `log` holds per event.
#[derive(Serialize, Deserialize)]
pub struct Record<'a> {
    pub org: u32,
    pub rtype: u8,
    pub id: [u8; 16],
    pub patient: [u8; 16],
    pub class: u8,
    /// `seq` of the alarm a note answers; 0 for none.
    pub answers: u64,
    #[serde(borrow)]
    pub category: &'a str,
    #[serde(borrow)]
    pub codes: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    pub json: &'a str,
}

/// What `ids` holds per resource.
#[derive(Serialize, Deserialize, Clone, Copy)]
pub struct IdEntry {
    pub seq: u64,
    pub hash: [u8; 32],
    pub org: u32,
    pub rtype: u8,
    pub is_alarm: bool,
}

/// The value of a `T` index key: what a consumer needs without reading the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeEntry {
    pub class: Class,
    pub patient: [u8; 16],
    pub answers: u64,
}

/// A dead letter (or, once discarded, why it was dropped).
#[derive(Serialize, Deserialize, Clone)]
pub struct DlqRecord {
    pub class: u8,
    pub attempts: u32,
    pub error: String,
    pub response: Option<String>,
    pub at: u64,
    /// Set when an operator discarded it: (when, why).
    pub discarded: Option<(u64, String)>,
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(v, vec![V1]).map_err(|e| StoreError::Write(format!("cannot encode: {e}")))
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, StoreError> {
    match b.split_first() {
        Some((&V1, rest)) => postcard::from_bytes(rest)
            .map_err(|e| StoreError::Corrupt(format!("cannot decode: {e}"))),
        Some((v, _)) => Err(StoreError::Corrupt(format!(
            "stored format version {v} is unknown to this build; run the newer knutepunkt that wrote it"
        ))),
        None => Err(StoreError::Corrupt("empty stored value".into())),
    }
}

pub fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// The last 8 bytes of a key as a seq.
pub fn tail_seq(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|i| be_u64(&key[i..]))
        .ok_or_else(|| StoreError::Corrupt("short key".into()))
}

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn index_prefix(table: u8, org: u32, rt: u8, extra: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + extra.len() + 8);
    k.push(table);
    k.extend_from_slice(&org.to_be_bytes());
    k.push(rt);
    k.extend_from_slice(extra);
    k
}

pub fn with_seq(mut prefix: Vec<u8>, seq: u64) -> Vec<u8> {
    prefix.extend_from_slice(&seq.to_be_bytes());
    prefix
}

/// The distinct codes of a record, as its `C` index keys carry them.
pub fn distinct_codes<'a>(codes: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    let mut out: Vec<&str> = codes.iter().map(|(_, c)| *c).collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub fn short_hash(s: &str) -> [u8; 8] {
    let d = Sha256::digest(s.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

impl TypeEntry {
    pub fn to_bytes(self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[0] = self.class as u8;
        b[1..17].copy_from_slice(&self.patient);
        b[17..].copy_from_slice(&self.answers.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<TypeEntry, StoreError> {
        let bad = || StoreError::Corrupt("bad type index entry".into());
        if b.len() != 25 {
            return Err(bad());
        }
        Ok(TypeEntry {
            class: Class::from_tag(b[0]).ok_or_else(bad)?,
            patient: b[1..17].try_into().map_err(|_| bad())?,
            answers: be_u64(&b[17..]).ok_or_else(bad)?,
        })
    }
}

/// `class` + patient: the value of `alarms` and `Q` keys.
pub fn class_patient(class: Class, patient: &[u8; 16]) -> [u8; 17] {
    let mut b = [0u8; 17];
    b[0] = class as u8;
    b[1..].copy_from_slice(patient);
    b
}

pub fn parse_class_patient(b: &[u8]) -> Result<(Class, [u8; 16]), StoreError> {
    let bad = || StoreError::Corrupt("bad queue entry".into());
    let (&c, p) = b.split_first().ok_or_else(bad)?;
    Ok((
        Class::from_tag(c).ok_or_else(bad)?,
        p.try_into().map_err(|_| bad())?,
    ))
}

pub fn alarm_key(org: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&org.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `table` + length-prefixed destination name.
pub fn name_prefix(table: Option<u8>, name: &str) -> Vec<u8> {
    let n = &name.as_bytes()[..name.len().min(255)];
    let mut k = Vec::with_capacity(2 + n.len() + 8);
    if let Some(t) = table {
        k.push(t);
    }
    k.push(n.len() as u8);
    k.extend_from_slice(n);
    k
}

pub fn name_seq(table: Option<u8>, name: &str, seq: u64) -> Vec<u8> {
    with_seq(name_prefix(table, name), seq)
}

/// The destination name of a `dlq` key.
pub fn dlq_name(key: &[u8]) -> Result<String, StoreError> {
    let n = *key
        .first()
        .ok_or_else(|| StoreError::Corrupt("short key".into()))? as usize;
    key.get(1..1 + n)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
        .ok_or_else(|| StoreError::Corrupt("bad destination in key".into()))
}

pub fn jti_key(client: &str, jti: &str) -> Vec<u8> {
    let mut k = name_prefix(None, client);
    k.extend_from_slice(jti.as_bytes());
    k
}

/// Floor value: (start, floor).
pub fn floor_value(start: u64, floor: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&start.to_be_bytes());
    b[8..].copy_from_slice(&floor.to_be_bytes());
    b
}

pub fn parse_floor(b: &[u8]) -> Result<(u64, u64), StoreError> {
    let bad = || StoreError::Corrupt("bad consumer floor".into());
    if b.len() != 16 {
        return Err(bad());
    }
    Ok((
        be_u64(&b[..8]).ok_or_else(bad)?,
        be_u64(&b[8..]).ok_or_else(bad)?,
    ))
}

/// `S` value: how it was settled and when.
pub const SETTLED_DELIVERED: u8 = 0;
pub const SETTLED_DEAD: u8 = 1;

pub fn settled_value(kind: u8, at: u64) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[0] = kind;
    b[1..].copy_from_slice(&at.to_be_bytes());
    b
}

pub fn parse_settled(b: &[u8]) -> Result<(u8, u64), StoreError> {
    let bad = || StoreError::Corrupt("bad settled entry".into());
    let (&k, rest) = b.split_first().ok_or_else(bad)?;
    Ok((k, be_u64(rest).ok_or_else(bad)?))
}
