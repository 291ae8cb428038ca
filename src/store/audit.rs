//! The store's types for the audit trail and for used assertion ids.
//!
//! Health law (pasientjournalloven § 22, Normen) requires that every access
//! to patient data is logged and can be shown to the municipality. The hub
//! keeps that log in its own store, next to the data, append-only, so an
//! access is never served without its record (see `crate::audit`). The
//! types here are the hub's own: no HTTP, no FHIR.
//!
//! Patients appear only as the identifier system, a keyed pseudonym (HMAC)
//! and the same search key the resource indexes use
//! ([`super::patient_key`]); never as the national id itself.

use serde::{Deserialize, Serialize};

use super::ResourceRef;
use crate::domain::{Orgnr, ResourceType};

/// What was done. The tags are part of the store's format: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    /// FHIR read of one resource.
    Read,
    /// FHIR search.
    Search,
    /// `$pending`: items handed to a pull consumer.
    Pending,
    /// `$confirm`: a pull consumer said what it journaled.
    Confirm,
    /// `$status`: where a resource stands with the destinations.
    Status,
    /// A push worker delivered a Bundle to a destination.
    Push,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Read => "read",
            AuditAction::Search => "search",
            AuditAction::Pending => "pending",
            AuditAction::Confirm => "confirm",
            AuditAction::Status => "status",
            AuditAction::Push => "push",
        }
    }
}

/// How the access ended (FHIR `AuditEvent.outcome` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditOutcome {
    /// `0`: data was served or delivered.
    Success,
    /// `4`: the request was answered without data (e.g. not found).
    MinorFailure,
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAgent {
    /// An EPJ client, by its OAuth2 client id (or the external issuer's).
    Client(String),
    /// A push destination, by its configured name.
    Destination(String),
    /// A caller the hub let in without a credential (`insecure_dev`).
    Unauthenticated,
}

/// One patient concerned by an access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPatient {
    /// The identifier system, e.g. `urn:oid:2.16.578.1.12.4.1.4.1`.
    pub system: String,
    /// HMAC-SHA256 of system and value under the hub's pseudonym key, hex.
    pub pseudonym: String,
    /// [`super::patient_key`] of system and value: what searches by patient use.
    pub key: [u8; 16],
}

/// One access, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub municipality: Orgnr,
    pub agent: AuditAgent,
    pub action: AuditAction,
    /// The query as understood, sanitized: patient identifiers replaced by
    /// their pseudonym. `None` for reads by id and deliveries.
    pub query: Option<String>,
    /// The resources served, delivered or confirmed, as (type tag, id).
    pub resources: Vec<(u8, [u8; 16])>,
    pub patients: Vec<AuditPatient>,
    pub outcome: AuditOutcome,
}

impl AuditRecord {
    pub fn resource_refs(&self) -> impl Iterator<Item = ResourceRef> + '_ {
        self.resources.iter().filter_map(|(t, id)| {
            Some(ResourceRef {
                resource_type: ResourceType::from_tag(*t)?,
                id: uuid::Uuid::from_bytes(*id),
            })
        })
    }

    pub fn add_resource(&mut self, r: ResourceRef) {
        self.resources
            .push((r.resource_type.tag(), *r.id.as_bytes()));
    }
}

/// A record as read back: `seq` is its time in microseconds since the epoch
/// (strictly increasing across the hub) and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAudit {
    pub seq: u64,
    pub record: AuditRecord,
}

/// A search of one municipality's trail, oldest first, keyset-paged.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    pub municipality: Orgnr,
    /// Only accesses concerning this patient ([`super::patient_key`]).
    pub patient: Option<[u8; 16]>,
    /// Inclusive range of `seq` (time in µs).
    pub min_seq: u64,
    pub max_seq: u64,
    /// Continue strictly after this `seq`.
    pub after: Option<u64>,
    pub count: usize,
}

#[derive(Debug, Clone)]
pub struct AuditPage {
    pub items: Vec<StoredAudit>,
    /// Cursor for the next page when there may be more.
    pub next: Option<u64>,
}
