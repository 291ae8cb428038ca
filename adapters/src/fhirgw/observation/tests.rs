use super::*;
use knutepunkt::domain::synthetic;
use serde_json::json;

const OSLO: &str = "958935420";

fn map_one(obs: &Value) -> Result<Mapped, Issue> {
    let vendor = VendorId("acme".into());
    let none = |_: &str| None;
    let cx = Context {
        vendor: &vendor,
        municipality: Orgnr::parse(OSLO).unwrap_or_else(|e| panic!("{e}")),
        resolve: &none,
    };
    map(obs, &cx)
}

fn weight(value: f64, unit: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": codes::MDC_SYSTEM, "code": "188736" }] },
        "subject": { "identifier": { "system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": synthetic::fnr(1) } },
        "effectiveDateTime": "2026-11-30T08:30:00+01:00",
        "device": { "identifier": { "value": "scale-1" } },
        "valueQuantity": { "value": value, "system": UCUM_SYSTEM, "code": unit },
    })
}

#[test]
fn mdc_weight_maps_to_body_weight() {
    let m = map_one(&weight(81.5, "kg")).unwrap_or_else(|i| panic!("{i:?}"));
    assert_eq!(
        m.event.payload,
        Payload::Measurement(Measurement::Quantity {
            kind: MeasurementKind::BodyWeight,
            value: 81.5,
            unit: "kg".into()
        })
    );
    assert_eq!(m.event.device.kind, "weighing-scale");
    assert_eq!(
        m.event.occurred_at.to_rfc3339(),
        "2026-11-30T07:30:00+00:00"
    );
}

#[test]
fn the_hubs_rules_are_named_by_element() {
    let i = map_one(&weight(-3.0, "kg")).err();
    assert_eq!(
        i.and_then(|i| i.expression).as_deref(),
        Some("Observation.valueQuantity.value")
    );
    let i = map_one(&weight(80.0, "stone")).err();
    assert_eq!(
        i.and_then(|i| i.expression).as_deref(),
        Some("Observation.valueQuantity.code")
    );
}

#[test]
fn event_id_is_deterministic_and_follows_the_identifier() {
    let a = map_one(&weight(80.0, "kg")).map(|m| m.event.event_id).ok();
    let b = map_one(&weight(80.0, "kg")).map(|m| m.event.event_id).ok();
    let c = map_one(&weight(80.5, "kg")).map(|m| m.event.event_id).ok();
    assert!(a.is_some());
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mut with_id = weight(80.0, "kg");
    with_id["identifier"] = json!([{ "system": "urn:x", "value": "1" }]);
    let d = map_one(&with_id).map(|m| m.event.event_id).ok();
    with_id["valueQuantity"]["value"] = json!(70.0);
    let e = map_one(&with_id).map(|m| m.event.event_id).ok();
    assert_eq!(d, e, "the identifier is the key");
    assert_ne!(a, d);
    let id = a.unwrap_or_default();
    assert!(id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()));
    assert!(!id.contains(&synthetic::fnr(1)));
}
