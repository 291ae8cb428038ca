//! Counters a test reads through `GET /_admin/stats` to check what the hub
//! sent: how many requests (so an outage's retry storm can be bounded), how
//! they were answered, and what was created or found again.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters, updated by the FHIR handler.
#[derive(Debug, Default)]
pub struct Stats {
    requests_total: AtomicU64,
    fhir_connections: AtomicU64,
    dropped: AtomicU64,
    bundles_total: AtomicU64,
    entries_total: AtomicU64,
    max_bundle_entries: AtomicU64,
    created: AtomicU64,
    duplicates: AtomicU64,
    rejected_entries: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
}

/// A copy of the counters, as `GET /_admin/stats` returns it.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests to `/fhir` (any method), including dropped ones.
    pub requests_total: u64,
    /// Connections that carried at least one request to `/fhir`: a client
    /// that keeps its connection alive opens one.
    pub fhir_connections: u64,
    /// Requests closed without an answer (mode `down`).
    pub dropped: u64,
    /// Answered requests by HTTP status, e.g. `{"200": 3, "429": 1}`.
    pub by_status: BTreeMap<u16, u64>,
    /// Transaction Bundles that passed the checks (whatever the answer).
    pub bundles_total: u64,
    /// Entries in those Bundles.
    pub entries_total: u64,
    /// Largest Bundle seen, in entries.
    pub max_bundle_entries: u64,
    /// Resources written (`201 Created` entries).
    pub created: u64,
    /// Conditional-create hits (`200 OK` entries).
    pub duplicates: u64,
    /// Entries that matched the `reject422` filter.
    pub rejected_entries: u64,
}

impl Stats {
    /// A request arrived at `/fhir`.
    pub fn request(&self) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection carried its first request to `/fhir`.
    pub fn fhir_connection(&self) {
        self.fhir_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was dropped without an answer.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was answered with `status`.
    pub fn answered(&self, status: u16) {
        let mut m = match self.by_status.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *m.entry(status).or_default() += 1;
    }

    /// A well-formed Bundle of `entries` entries arrived.
    pub fn bundle(&self, entries: usize) {
        let n = entries as u64;
        self.bundles_total.fetch_add(1, Ordering::Relaxed);
        self.entries_total.fetch_add(n, Ordering::Relaxed);
        self.max_bundle_entries.fetch_max(n, Ordering::Relaxed);
    }

    /// A Bundle was committed.
    pub fn committed(&self, created: usize, duplicates: usize) {
        self.created.fetch_add(created as u64, Ordering::Relaxed);
        self.duplicates
            .fetch_add(duplicates as u64, Ordering::Relaxed);
    }

    /// `n` entries matched the reject filter.
    pub fn rejected(&self, n: usize) {
        self.rejected_entries.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let by_status = match self.by_status.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        Snapshot {
            requests_total: self.requests_total.load(Ordering::Relaxed),
            fhir_connections: self.fhir_connections.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            by_status,
            bundles_total: self.bundles_total.load(Ordering::Relaxed),
            entries_total: self.entries_total.load(Ordering::Relaxed),
            max_bundle_entries: self.max_bundle_entries.load(Ordering::Relaxed),
            created: self.created.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            rejected_entries: self.rejected_entries.load(Ordering::Relaxed),
        }
    }

    /// Sets every counter to zero.
    pub fn reset(&self) {
        for c in [
            &self.requests_total,
            &self.fhir_connections,
            &self.dropped,
            &self.bundles_total,
            &self.entries_total,
            &self.max_bundle_entries,
            &self.created,
            &self.duplicates,
            &self.rejected_entries,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        match self.by_status.lock() {
            Ok(mut g) => g.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }
}
