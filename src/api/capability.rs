//! The CapabilityStatement at `metadata`: what this FHIR server does, and
//! nothing more.
//!
//! EPJ vendors read it to configure their clients, so it lists exactly the
//! interactions and search parameters the parser in `search_params`
//! accepts, with the hub's own rules (identifier systems, UTC days, paging)
//! in each parameter's documentation. A parameter added there must be added
//! here, and the router tests check that the two agree.

use serde_json::{Value, json};

use super::last_updated::FORMAT_HELP;
use super::search_params::{DEFAULT_COUNT, MAX_COUNT, category_system};
use crate::domain::{IdSystem, ResourceType};

/// When this statement last changed (CapabilityStatement.date is required).
const STATEMENT_DATE: &str = "2025-01-01";

/// The resource types served, in the order they are listed.
pub const RESOURCE_TYPES: [ResourceType; 2] =
    [ResourceType::Observation, ResourceType::Communication];

/// The CapabilityStatement for one municipality's base URL.
pub fn capability_statement(base: &str) -> String {
    let resources: Vec<Value> = RESOURCE_TYPES.iter().map(|&rt| resource(rt)).collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": STATEMENT_DATE,
        "publisher": "Knutepunkt",
        "kind": "instance",
        "software": {
            "name": "Knutepunkt",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "implementation": {
            "description": "Knutepunkt welfare-technology hub: one municipality's Observations (measurements) and Communications (alarms and notes), read-only",
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": format!(
                "Read-only. One base per municipality: {base}. Answers are application/fhir+json only (_format=json or application/fhir+json may be given). Any parameter not listed here is refused with 400 and an OperationOutcome, never ignored. Query values are percent-decoded as in RFC 3986: a literal '+' is a plus sign, not a space."
            ),
            "resource": resources,
        }],
    })
    .to_string()
}

fn resource(rt: ResourceType) -> Value {
    let mut params = type_params(rt);
    params.extend(common_params());
    json!({
        "type": rt.as_str(),
        "interaction": [
            {"code": "read", "documentation": "404 when the id is unknown, not a UUID, or not this municipality's."},
            {"code": "search-type", "documentation": "GET only; Bundle of type searchset with absolute self and next links."},
        ],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalRead": "not-supported",
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    })
}

/// The search parameters of one resource type: subject, patient, code,
/// category.
fn type_params(rt: ResourceType) -> Vec<Value> {
    let name = rt.as_str();
    let systems = format!(
        "{} (fødselsnummer), {} (D-number) or {} (FH-number)",
        IdSystem::Fnr.oid(),
        IdSystem::Dnr.oid(),
        IdSystem::Fhn.oid()
    );
    let (code_def, code_doc) = match rt {
        ResourceType::Observation => (
            Some("http://hl7.org/fhir/SearchParameter/clinical-code"),
            "Observation.code: code or system|code (e.g. http://loinc.org|8867-4); several separated by a comma are ORed. Give the parameter at most once; system| without a code is not supported.".to_string(),
        ),
        ResourceType::Communication => (
            None,
            "Knutepunkt-specific: matches Communication.reasonCode (VKP alert code, system http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090, or SNOMED CT): code or system|code; several separated by a comma are ORed. Give the parameter at most once.".to_string(),
        ),
    };
    let category_doc = match rt {
        ResourceType::Observation => "vital-signs",
        ResourceType::Communication => "alert (alarms) or notification (notes)",
    };
    let subject_doc = format!(
        "Only with the :identifier modifier: subject:identifier=system|value, where system is {systems}. A value without a system is refused. One patient per search. Other forms of subject (references, chains) are not supported."
    );
    vec![
        param(
            "subject",
            Some(&format!(
                "http://hl7.org/fhir/SearchParameter/{name}-subject"
            )),
            "reference",
            &subject_doc,
        ),
        param(
            "patient",
            Some(&format!(
                "http://hl7.org/fhir/SearchParameter/{}",
                match rt {
                    ResourceType::Observation => "clinical-patient",
                    ResourceType::Communication => "Communication-patient",
                }
            )),
            "reference",
            "Alias of subject: only patient:identifier=system|value, with the same rules as subject:identifier.",
        ),
        param("code", code_def, "token", &code_doc),
        param(
            "category",
            Some(&format!(
                "http://hl7.org/fhir/SearchParameter/{}",
                match rt {
                    ResourceType::Observation => "Observation-category",
                    ResourceType::Communication => "Communication-category",
                }
            )),
            "token",
            &format!(
                "One category code ({category_doc}), optionally as system|code with system {}; commas are not supported. Repeating the parameter ANDs the values.",
                category_system(rt)
            ),
        ),
    ]
}

/// The parameters every resource type takes: time, paging, sort, format.
fn common_params() -> Vec<Value> {
    vec![
        param(
            "_lastUpdated",
            Some("http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"),
            "date",
            &format!(
                "When the hub stored the resource (meta.lastUpdated). Value: {FORMAT_HELP}. A value stands for the whole interval of its precision; dates without a time are UTC. Repeat the parameter to combine bounds (ANDed), e.g. _lastUpdated=ge2024-03-01&_lastUpdated=lt2024-04-01."
            ),
        ),
        param(
            "_count",
            None,
            "number",
            &format!(
                "Page size: 1 to {MAX_COUNT}, default {DEFAULT_COUNT}; larger values are lowered to {MAX_COUNT}. 0 is refused."
            ),
        ),
        param(
            "_sort",
            None,
            "special",
            "_lastUpdated (oldest first, the default) or -_lastUpdated (newest first). No other sort.",
        ),
        param(
            "_cursor",
            None,
            "special",
            "Opaque keyset position set by the server in the Bundle's next link; follow next links as given. Paging neither skips nor repeats a resource while new ones arrive. The Bundle has no total.",
        ),
        param(
            "_format",
            None,
            "special",
            "json, application/json or application/fhir+json; other formats get 406.",
        ),
    ]
}

fn param(name: &str, definition: Option<&str>, kind: &str, documentation: &str) -> Value {
    let mut v = json!({ "name": name, "type": kind, "documentation": documentation });
    if let (Some(def), Some(obj)) = (definition, v.as_object_mut()) {
        obj.insert("definition".into(), Value::String(def.into()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_shape() {
        let s = capability_statement("http://h/fhir/r4/958935420");
        let v: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["resourceType"], "CapabilityStatement");
        assert_eq!(v["fhirVersion"], "4.0.1");
        assert_eq!(v["status"], "active");
        assert_eq!(v["kind"], "instance");
        assert_eq!(v["format"], json!(["json"]));
        assert_eq!(v["implementation"]["url"], "http://h/fhir/r4/958935420");
        let res = v["rest"][0]["resource"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let types: Vec<_> = res.iter().map(|r| r["type"].clone()).collect();
        assert_eq!(types, vec![json!("Observation"), json!("Communication")]);
        for r in &res {
            let interactions: Vec<_> = r["interaction"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["code"].clone())
                .collect();
            assert_eq!(interactions, vec![json!("read"), json!("search-type")]);
            let names: Vec<_> = r["searchParam"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    assert!(p["type"].is_string() && p["documentation"].is_string());
                    p["name"].as_str().unwrap_or_default().to_string()
                })
                .collect();
            assert_eq!(
                names,
                [
                    "subject",
                    "patient",
                    "code",
                    "category",
                    "_lastUpdated",
                    "_count",
                    "_sort",
                    "_cursor",
                    "_format"
                ]
            );
        }
    }
}
