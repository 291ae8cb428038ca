//! The `searchset` Bundle around a page of stored resources.
//!
//! Stored resources are already complete FHIR JSON (`meta` included), so
//! they are spliced into the Bundle as [`RawValue`]s: the read path never
//! builds a JSON tree of patient data, only checks that each piece is one
//! well-formed JSON value while copying it (a corrupt record becomes a 500,
//! not a broken Bundle).

use serde::Serialize;
use serde_json::value::RawValue;

use crate::store::{ResourceRef, StoredResource};

#[derive(Serialize)]
struct Bundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    link: Vec<Link<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<Entry>,
}

#[derive(Serialize)]
struct Link<'a> {
    relation: &'static str,
    url: &'a str,
}

#[derive(Serialize)]
struct Entry {
    #[serde(rename = "fullUrl")]
    full_url: String,
    resource: Box<RawValue>,
    search: Search,
}

#[derive(Serialize)]
struct Search {
    mode: &'static str,
}

/// A stored record that is not one JSON value: the store is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored resource {0} is not valid JSON")]
pub struct CorruptResource(pub String);

/// A stored resource as a piece of the Bundle, checked to be one JSON value.
fn splice(item: StoredResource) -> Result<(ResourceRef, Box<RawValue>), CorruptResource> {
    let reference = item.resource;
    let raw =
        RawValue::from_string(item.json).map_err(|_| CorruptResource(reference.to_string()))?;
    Ok((reference, raw))
}

/// Builds a `searchset` Bundle. `base` is the municipality's FHIR base
/// (`https://host/fhir/r4/958935420`, no trailing slash); links are absolute.
pub fn searchset(
    base: &str,
    items: Vec<StoredResource>,
    self_url: &str,
    next_url: Option<&str>,
) -> Result<String, CorruptResource> {
    let mut link = vec![Link {
        relation: "self",
        url: self_url,
    }];
    if let Some(url) = next_url {
        link.push(Link {
            relation: "next",
            url,
        });
    }
    let mut entry = Vec::with_capacity(items.len());
    for item in items {
        let (reference, resource) = splice(item)?;
        entry.push(Entry {
            full_url: format!("{base}/{reference}"),
            resource,
            search: Search { mode: "match" },
        });
    }
    let bundle = Bundle {
        resource_type: "Bundle",
        kind: "searchset",
        link,
        entry,
    };
    serde_json::to_string(&bundle).map_err(|_| CorruptResource("Bundle".into()))
}

#[derive(Serialize)]
struct Collection {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    // FHIR JSON has no empty arrays: an empty Bundle has no `entry`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<CollectionEntry>,
}

#[derive(Serialize)]
struct CollectionEntry {
    #[serde(rename = "fullUrl")]
    full_url: String,
    resource: Box<RawValue>,
}

/// Builds a `collection` Bundle (what `$pending` answers) of stored
/// resources, each with `fullUrl` `urn:uuid:<id>`, spliced in as for
/// [`searchset`].
pub fn collection(items: Vec<StoredResource>) -> Result<String, CorruptResource> {
    let mut entry = Vec::with_capacity(items.len());
    for item in items {
        let (reference, resource) = splice(item)?;
        entry.push(CollectionEntry {
            full_url: format!("urn:uuid:{}", reference.id),
            resource,
        });
    }
    let bundle = Collection {
        resource_type: "Bundle",
        kind: "collection",
        entry,
    };
    serde_json::to_string(&bundle).map_err(|_| CorruptResource("Bundle".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Orgnr, ResourceType};
    use crate::store::ResourceRef;

    const BASE: &str = "http://hub.example/fhir/r4/958935420";

    fn stored(seq: u64, id: u128, json: &str) -> StoredResource {
        StoredResource {
            seq,
            municipality: Orgnr::parse("958935420").unwrap_or_else(|e| panic!("{e}")),
            resource: ResourceRef {
                resource_type: ResourceType::Observation,
                id: uuid::Uuid::from_u128(id),
            },
            json: json.into(),
        }
    }

    fn parse(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn bundle_with_entries_and_next() {
        let a = stored(
            1,
            1,
            r#"{"resourceType":"Observation","id":"00000000-0000-0000-0000-000000000001","status":"final"}"#,
        );
        let b = stored(
            2,
            2,
            r#"{"resourceType":"Observation","id":"00000000-0000-0000-0000-000000000002","valueQuantity":{"value":72.50}}"#,
        );
        let out = searchset(
            BASE,
            vec![a, b],
            &format!("{BASE}/Observation?_count=2"),
            Some(&format!("{BASE}/Observation?_count=2&_cursor=x")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Spliced verbatim: 72.50 keeps its trailing zero (never re-parsed).
        assert!(out.contains(r#""value":72.50"#), "{out}");
        let v = parse(&out);
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "searchset");
        assert_eq!(v["link"][0]["relation"], "self");
        assert_eq!(v["link"][0]["url"], format!("{BASE}/Observation?_count=2"));
        assert_eq!(v["link"][1]["relation"], "next");
        let e = &v["entry"];
        assert_eq!(e.as_array().map(Vec::len), Some(2));
        assert_eq!(
            e[0]["fullUrl"],
            format!("{BASE}/Observation/00000000-0000-0000-0000-000000000001")
        );
        assert_eq!(e[0]["resource"]["status"], "final");
        assert_eq!(e[1]["search"]["mode"], "match");
        assert!(v.get("total").is_none());
    }

    #[test]
    fn empty_bundle_has_no_entry_array() {
        let out = searchset(BASE, vec![], "self", None).unwrap_or_else(|e| panic!("{e}"));
        let v = parse(&out);
        assert!(v.get("entry").is_none());
        assert_eq!(v["link"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let bad = stored(1, 9, r#"{"resourceType":"Observation","#);
        let e = searchset(BASE, vec![bad], "self", None).err();
        assert_eq!(
            e,
            Some(CorruptResource(
                "Observation/00000000-0000-0000-0000-000000000009".into()
            ))
        );
    }

    #[test]
    fn collection_splices_resources_under_urn_uuids() {
        let a = stored(
            1,
            1,
            r#"{"resourceType":"Observation","id":"00000000-0000-0000-0000-000000000001","valueQuantity":{"value":72.50}}"#,
        );
        let out = collection(vec![a]).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains(r#""value":72.50"#), "{out}");
        let v = parse(&out);
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "collection");
        assert_eq!(
            v["entry"][0]["fullUrl"],
            "urn:uuid:00000000-0000-0000-0000-000000000001"
        );
        assert_eq!(v["entry"][0]["resource"]["resourceType"], "Observation");
        let empty = parse(&collection(vec![]).unwrap_or_else(|e| panic!("{e}")));
        assert!(empty.get("entry").is_none(), "{empty}");
        let bad = stored(1, 9, r#"{"resourceType":"#);
        assert!(collection(vec![bad]).is_err());
    }
}
