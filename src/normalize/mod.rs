//! Validated event → FHIR R4 JSON. A pure function: no I/O, no clock, no
//! store. Every code table (LOINC, UCUM units, VKP alert codes, severity →
//! priority) lives in `codes.rs` as data.
//!
//! Placeholder: the real mapping lands with the normalize work.

use crate::domain::{Event, Invalid, ResourceType};

/// One normalized event, ready for the store.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub resource_type: ResourceType,
    pub id: uuid::Uuid,
    /// The resource as JSON, without `meta`: the store adds
    /// `meta.lastUpdated` (the time it was stored) when the resource is read.
    pub json: String,
    /// Codings the FHIR `code` search parameter matches: Observation.code
    /// codings, and for Communication the reasonCode codings.
    pub codes: Vec<(String, String)>,
    /// The FHIR category code: "vital-signs", "alert" or "notification".
    pub category: &'static str,
    /// RED or YELLOW alarm: delivered ahead of any backlog.
    pub urgent: bool,
}

/// Maps one event to its FHIR resource, or says which value is impossible.
pub fn normalize(ev: &Event) -> Result<Normalized, Invalid> {
    let _ = ev;
    Err(Invalid::new("payload", "normalization not implemented yet"))
}
