//! The code tables `normalize` maps with, kept as data so they can grow
//! without touching the mapping code: LOINC per measurement kind with the
//! UCUM units accepted for it and the physically possible range, the VKP
//! alert code list, and VKP severity → FHIR Communication.priority.
//!
//! Sources: domain.md (LOINC/UCUM per kind, VKP alert list v0.9.0, severity
//! levels). To accept a new unit, add a [`UnitSpec`]; to accept a new alert
//! code from a newer VKP list, add an [`AlertCode`].

use knutepunkt_fhir::Priority;

use crate::domain::{MeasurementKind, Severity};

pub const LOINC: &str = "http://loinc.org";
pub const SNOMED_CT: &str = "http://snomed.info/sct";
pub const UCUM: &str = knutepunkt_fhir::UCUM;
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const COMMUNICATION_CATEGORY: &str =
    "http://terminology.hl7.org/CodeSystem/communication-category";
pub const VKP_ALERT: &str = "http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090";

/// A code in a code system, with its display text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub system: &'static str,
    pub code: &'static str,
    pub display: &'static str,
}

const fn loinc(code: &'static str, display: &'static str) -> Code {
    Code {
        system: LOINC,
        code,
        display,
    }
}

pub const VITAL_SIGNS: Code = Code {
    system: OBSERVATION_CATEGORY,
    code: "vital-signs",
    display: "Vital Signs",
};
pub const ALERT: Code = Code {
    system: COMMUNICATION_CATEGORY,
    code: "alert",
    display: "Alert",
};
pub const NOTIFICATION: Code = Code {
    system: COMMUNICATION_CATEGORY,
    code: "notification",
    display: "Notification",
};

/// A value range, in a kind's canonical unit. The upper bound is inclusive;
/// the lower one inclusive unless `min_exclusive`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min: f64,
    pub min_exclusive: bool,
    pub max: f64,
}

impl Limits {
    /// Whether a canonical value is within the limits. Conversions (°F →
    /// °C, lb → kg) may land a hair outside an inclusive bound, so those
    /// allow for rounding (1e-9 relative), never for a real excess.
    pub fn contains(&self, v: f64) -> bool {
        let eps = |b: f64| 1e-9 * b.abs().max(1.0);
        let above_min = if self.min_exclusive {
            v > self.min
        } else {
            v >= self.min - eps(self.min)
        };
        above_min && v <= self.max + eps(self.max)
    }
}

/// One accepted unit of a measurement kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitSpec {
    /// The UCUM code, exactly as vendors must send it (case-sensitive).
    pub ucum: &'static str,
    /// Human-readable unit for `Quantity.unit`.
    pub display: &'static str,
    /// The Observation.code codings when the value comes in this unit
    /// (blood glucose has one LOINC code per unit).
    pub codes: &'static [Code],
    /// `canonical = value * factor + offset`, for the range check only;
    /// the value is stored in the unit it came in.
    pub factor: f64,
    pub offset: f64,
}

impl UnitSpec {
    pub fn to_canonical(&self, v: f64) -> f64 {
        v * self.factor + self.offset
    }

    pub fn from_canonical(&self, c: f64) -> f64 {
        (c - self.offset) / self.factor
    }
}

/// One measurement kind given as a single quantity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantityKind {
    pub kind: MeasurementKind,
    /// The proto enum name, for error messages.
    pub name: &'static str,
    /// The unit the limits are given in (the first entry of `units`).
    pub units: &'static [UnitSpec],
    pub limits: Limits,
}

impl QuantityKind {
    pub fn canonical_unit(&self) -> &'static str {
        self.units.first().map_or("", |u| u.ucum)
    }

    pub fn unit(&self, ucum: &str) -> Option<&'static UnitSpec> {
        self.units.iter().find(|u| u.ucum == ucum)
    }

    pub fn accepted_units(&self) -> String {
        self.units
            .iter()
            .map(|u| format!("\"{}\"", u.ucum))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const HEART_RATE: &[Code] = &[loinc("8867-4", "Heart rate")];
const OXYGEN_SATURATION: &[Code] = &[
    loinc(
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
    ),
    loinc("2708-6", "Oxygen saturation in Arterial blood"),
];
const BODY_WEIGHT: &[Code] = &[loinc("29463-7", "Body weight")];
const BODY_TEMPERATURE: &[Code] = &[loinc("8310-5", "Body temperature")];
const RESPIRATORY_RATE: &[Code] = &[loinc("9279-1", "Respiratory rate")];
const GLUCOSE_MOLAR: &[Code] = &[loinc("15074-8", "Glucose [Moles/volume] in Blood")];
const GLUCOSE_MASS: &[Code] = &[loinc("2339-0", "Glucose [Mass/volume] in Blood")];

/// mg/dL of glucose per mmol/L (molar mass of glucose 180.16 g/mol).
pub const GLUCOSE_MG_DL_PER_MMOL_L: f64 = 18.016;

const fn unit(ucum: &'static str, display: &'static str, codes: &'static [Code]) -> UnitSpec {
    UnitSpec {
        ucum,
        display,
        codes,
        factor: 1.0,
        offset: 0.0,
    }
}

/// Every kind measured as one quantity. Blood pressure is [`BLOOD_PRESSURE`].
pub const QUANTITY_KINDS: &[QuantityKind] = &[
    QuantityKind {
        kind: MeasurementKind::HeartRate,
        name: "HEART_RATE",
        units: &[unit("/min", "/min", HEART_RATE)],
        limits: Limits {
            min: 1.0,
            min_exclusive: false,
            max: 350.0,
        },
    },
    QuantityKind {
        kind: MeasurementKind::OxygenSaturation,
        name: "OXYGEN_SATURATION",
        units: &[unit("%", "%", OXYGEN_SATURATION)],
        limits: Limits {
            min: 0.0,
            min_exclusive: false,
            max: 100.0,
        },
    },
    QuantityKind {
        kind: MeasurementKind::BodyWeight,
        name: "BODY_WEIGHT",
        units: &[
            unit("kg", "kg", BODY_WEIGHT),
            UnitSpec {
                factor: 0.001,
                ..unit("g", "g", BODY_WEIGHT)
            },
            UnitSpec {
                // The international avoirdupois pound is exactly 0.45359237 kg.
                factor: 0.453_592_37,
                ..unit("[lb_av]", "lb", BODY_WEIGHT)
            },
        ],
        limits: Limits {
            min: 0.0,
            min_exclusive: true,
            max: 700.0,
        },
    },
    QuantityKind {
        kind: MeasurementKind::BodyTemperature,
        name: "BODY_TEMPERATURE",
        units: &[
            unit("Cel", "°C", BODY_TEMPERATURE),
            UnitSpec {
                factor: 5.0 / 9.0,
                offset: -32.0 * 5.0 / 9.0,
                ..unit("[degF]", "°F", BODY_TEMPERATURE)
            },
        ],
        limits: Limits {
            min: 25.0,
            min_exclusive: false,
            max: 45.0,
        },
    },
    QuantityKind {
        kind: MeasurementKind::RespiratoryRate,
        name: "RESPIRATORY_RATE",
        units: &[unit("/min", "/min", RESPIRATORY_RATE)],
        limits: Limits {
            min: 1.0,
            min_exclusive: false,
            max: 150.0,
        },
    },
    QuantityKind {
        kind: MeasurementKind::BloodGlucose,
        name: "BLOOD_GLUCOSE",
        units: &[
            unit("mmol/L", "mmol/L", GLUCOSE_MOLAR),
            UnitSpec {
                factor: 1.0 / GLUCOSE_MG_DL_PER_MMOL_L,
                ..unit("mg/dL", "mg/dL", GLUCOSE_MASS)
            },
        ],
        limits: Limits {
            min: 0.0,
            min_exclusive: true,
            max: 100.0,
        },
    },
];

pub fn quantity_kind(kind: MeasurementKind) -> Option<&'static QuantityKind> {
    QUANTITY_KINDS.iter().find(|k| k.kind == kind)
}

/// Blood pressure: a panel with a systolic and a diastolic component.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BloodPressureSpec {
    pub panel: Code,
    pub systolic: Code,
    pub diastolic: Code,
    pub unit: UnitSpec,
    pub systolic_limits: Limits,
    pub diastolic_limits: Limits,
}

pub static BLOOD_PRESSURE: BloodPressureSpec = BloodPressureSpec {
    panel: loinc("85354-9", "Blood pressure panel with all children optional"),
    systolic: loinc("8480-6", "Systolic blood pressure"),
    diastolic: loinc("8462-4", "Diastolic blood pressure"),
    unit: unit("mm[Hg]", "mmHg", &[]),
    systolic_limits: Limits {
        min: 20.0,
        min_exclusive: false,
        max: 350.0,
    },
    diastolic_limits: Limits {
        min: 10.0,
        min_exclusive: false,
        max: 300.0,
    },
};

/// One code of the VKP alert list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertCode {
    pub code: &'static str,
    /// The meaning, used as the coding's display and as the first line of
    /// the Communication's payload.
    pub display: &'static str,
    /// The SNOMED CT concept for the same event, where one exists.
    pub snomed: Option<Code>,
}

const fn alert(code: &'static str, display: &'static str) -> AlertCode {
    AlertCode {
        code,
        display,
        snomed: None,
    }
}

/// The VKP alert codes the hub accepts (`http://ehelse.no/fhir/CodeSystem/
/// vkp-alert-code-v090`). A code not listed here is refused.
pub const ALERT_CODES: &[AlertCode] = &[
    alert("2", "Inactive patient"),
    alert("2.2", "Measurement not reported"),
    alert("3.3", "Medication not confirmed taken"),
    alert("3.4", "Dispenser technical fault, dispensing stopped"),
    alert("3.6", "Dispenser empty"),
    alert("3.10", "No contact with dispenser"),
    AlertCode {
        code: "4.1",
        display: "Fall",
        snomed: Some(Code {
            system: SNOMED_CT,
            code: "1912002",
            display: "Fall",
        }),
    },
    alert("4.2", "Left the bed"),
    alert("4.3", "Sat up in bed"),
    alert("4.4", "Rose from chair"),
    alert("4.6", "Left the room"),
    alert("4.7", "Unexpectedly long time away from the room"),
    alert("4.9", "Inactivity"),
    alert("4.11", "Fire alarm"),
    alert("4.13", "Button pressed (safety alarm)"),
    alert("4.14", "Pull cord"),
    alert("4.15", "Door opened"),
    alert("4.17", "Water leak"),
    alert("4.21", "Left the home"),
    alert("4.23", "Unusually long stay in the bathroom"),
];

pub fn alert_code(code: &str) -> Option<&'static AlertCode> {
    ALERT_CODES.iter().find(|a| a.code == code)
}

/// VKP severity level → Communication.priority.
pub const SEVERITY_PRIORITY: &[(Severity, Priority)] = &[
    (Severity::NotReported, Priority::Routine),
    (Severity::Green, Priority::Routine),
    (Severity::Yellow, Priority::Asap),
    (Severity::Red, Priority::Stat),
];

pub fn priority(severity: Severity) -> Priority {
    SEVERITY_PRIORITY
        .iter()
        .find(|(s, _)| *s == severity)
        .map_or(Priority::Routine, |(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consistent() {
        let mut seen = std::collections::HashSet::new();
        for a in ALERT_CODES {
            assert!(seen.insert(a.code), "duplicate alert code {}", a.code);
            assert!(!a.display.is_empty());
        }
        for k in QUANTITY_KINDS {
            assert!(!k.units.is_empty(), "{}", k.name);
            let first = k.units[0];
            assert_eq!(
                (first.factor, first.offset),
                (1.0, 0.0),
                "{}: canonical first",
                k.name
            );
            for u in k.units {
                assert!(!u.codes.is_empty(), "{} {}", k.name, u.ucum);
                assert!((u.from_canonical(u.to_canonical(12.5)) - 12.5).abs() < 1e-9);
            }
        }
        for s in [
            Severity::NotReported,
            Severity::Green,
            Severity::Yellow,
            Severity::Red,
        ] {
            assert!(SEVERITY_PRIORITY.iter().any(|(x, _)| *x == s));
        }
    }

    #[test]
    fn conversions() {
        let t = quantity_kind(MeasurementKind::BodyTemperature).and_then(|k| k.unit("[degF]"));
        let t = t.copied().unwrap_or_else(|| panic!("no degF"));
        assert!((t.to_canonical(98.6) - 37.0).abs() < 1e-9);
        assert!((t.to_canonical(212.0) - 100.0).abs() < 1e-9);
    }
}
