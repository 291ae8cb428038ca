//! Which Observation codes the gateway understands, as data: IEEE 11073
//! MDC codes (the personal-health-device nomenclature) and LOINC codes,
//! each mapped to the hub's measurement kind or to a blood-pressure
//! component.
//!
//! LOINC codes are not listed here: they are read from the hub's own table
//! (`knutepunkt::normalize::codes`), so the gateway accepts exactly the
//! LOINC codes the hub produces. The MDC codes are ours. Each code is
//! `partition * 65536 + term` of ISO/IEEE 11073-10101 (partition 2, SCADA),
//! checked against the PHD implementation guide's examples and public PHD
//! code tables, e.g. MDC_MASS_BODY_ACTUAL = 2 * 65536 + 57664 = 188736.
//!
//! To accept another device code, add a row to [`MDC`].

use knutepunkt::domain::MeasurementKind;
use knutepunkt::normalize::codes as hub;

/// `Coding.system` of IEEE 11073-10101 (MDC) codes.
pub const MDC_SYSTEM: &str = "urn:iso:std:iso:11073:10101";
/// `Coding.system` of LOINC.
pub const LOINC_SYSTEM: &str = hub::LOINC;
/// `Quantity.system` of UCUM.
pub const UCUM_SYSTEM: &str = hub::UCUM;

/// What an Observation or component code means to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// A measurement of one quantity.
    Quantity(MeasurementKind),
    /// The blood-pressure panel (values in its components).
    BloodPressurePanel,
    /// Systolic pressure (a component of the panel).
    Systolic,
    /// Diastolic pressure (a component of the panel).
    Diastolic,
    /// Mean arterial pressure: derived from the other two; accepted in a
    /// panel and not stored (the hub's Observation has no slot for it).
    MeanPressure,
}

/// One MDC code.
#[derive(Debug, Clone, Copy)]
pub struct MdcCode {
    /// The numeric code as it appears in `Coding.code`.
    pub code: &'static str,
    /// The reference id, for messages and docs.
    pub name: &'static str,
    pub meaning: Meaning,
}

const fn mdc(code: &'static str, name: &'static str, meaning: Meaning) -> MdcCode {
    MdcCode {
        code,
        name,
        meaning,
    }
}

/// The MDC codes the gateway maps. Pulse rate from a BP cuff, from an
/// oximeter and from an ECG all become the hub's heart rate; capillary
/// glucose from whole blood and plasma-calibrated meters both become blood
/// glucose.
pub const MDC: &[MdcCode] = &[
    mdc(
        "150020",
        "MDC_PRESS_BLD_NONINV",
        Meaning::BloodPressurePanel,
    ),
    mdc("150021", "MDC_PRESS_BLD_NONINV_SYS", Meaning::Systolic),
    mdc("150022", "MDC_PRESS_BLD_NONINV_DIA", Meaning::Diastolic),
    mdc("150023", "MDC_PRESS_BLD_NONINV_MEAN", Meaning::MeanPressure),
    mdc(
        "150456",
        "MDC_PULS_OXIM_SAT_O2",
        Meaning::Quantity(MeasurementKind::OxygenSaturation),
    ),
    mdc(
        "149546",
        "MDC_PULS_RATE_NON_INV",
        Meaning::Quantity(MeasurementKind::HeartRate),
    ),
    mdc(
        "149530",
        "MDC_PULS_OXIM_PULS_RATE",
        Meaning::Quantity(MeasurementKind::HeartRate),
    ),
    mdc(
        "147842",
        "MDC_ECG_HEART_RATE",
        Meaning::Quantity(MeasurementKind::HeartRate),
    ),
    mdc(
        "188736",
        "MDC_MASS_BODY_ACTUAL",
        Meaning::Quantity(MeasurementKind::BodyWeight),
    ),
    mdc(
        "150364",
        "MDC_TEMP_BODY",
        Meaning::Quantity(MeasurementKind::BodyTemperature),
    ),
    mdc(
        "151562",
        "MDC_RESP_RATE",
        Meaning::Quantity(MeasurementKind::RespiratoryRate),
    ),
    mdc(
        "160184",
        "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD",
        Meaning::Quantity(MeasurementKind::BloodGlucose),
    ),
    mdc(
        "160188",
        "MDC_CONC_GLU_CAPILLARY_PLASMA",
        Meaning::Quantity(MeasurementKind::BloodGlucose),
    ),
];

/// LOINC 8478-0 (mean blood pressure): a component PHD panels may carry.
const LOINC_MEAN_PRESSURE: &str = "8478-0";

/// The meaning of one coding, or `None` when neither table knows it.
pub fn meaning(system: &str, code: &str) -> Option<Meaning> {
    match system {
        MDC_SYSTEM => MDC.iter().find(|m| m.code == code).map(|m| m.meaning),
        LOINC_SYSTEM => loinc(code),
        _ => None,
    }
}

fn loinc(code: &str) -> Option<Meaning> {
    let bp = &hub::BLOOD_PRESSURE;
    if code == bp.panel.code {
        return Some(Meaning::BloodPressurePanel);
    }
    if code == bp.systolic.code {
        return Some(Meaning::Systolic);
    }
    if code == bp.diastolic.code {
        return Some(Meaning::Diastolic);
    }
    if code == LOINC_MEAN_PRESSURE {
        return Some(Meaning::MeanPressure);
    }
    hub::QUANTITY_KINDS
        .iter()
        .find(|k| {
            k.units
                .iter()
                .any(|u| u.codes.iter().any(|c| c.code == code))
        })
        .map(|k| Meaning::Quantity(k.kind))
}

/// The codes an Observation may carry, for error messages.
pub fn known_observation_codes() -> String {
    let mdc = MDC
        .iter()
        .filter(|m| {
            !matches!(
                m.meaning,
                Meaning::Systolic | Meaning::Diastolic | Meaning::MeanPressure
            )
        })
        .map(|m| format!("{} {}", m.code, m.name))
        .collect::<Vec<_>>()
        .join(", ");
    let mut loinc = vec![hub::BLOOD_PRESSURE.panel.code];
    for k in hub::QUANTITY_KINDS {
        for u in k.units {
            for c in u.codes {
                if !loinc.contains(&c.code) {
                    loinc.push(c.code);
                }
            }
        }
    }
    format!(
        "MDC ({MDC_SYSTEM}): {mdc}; LOINC ({LOINC_SYSTEM}): {}",
        loinc.join(", ")
    )
}

/// A short device kind for the hub's `device.kind`, from what it measured.
pub fn device_kind(kind: Option<MeasurementKind>) -> &'static str {
    match kind {
        None | Some(MeasurementKind::BloodPressure) => "bp-monitor",
        Some(MeasurementKind::HeartRate) => "pulse-monitor",
        Some(MeasurementKind::OxygenSaturation) => "pulse-oximeter",
        Some(MeasurementKind::BodyWeight) => "weighing-scale",
        Some(MeasurementKind::BodyTemperature) => "thermometer",
        Some(MeasurementKind::RespiratoryRate) => "respiration-monitor",
        Some(MeasurementKind::BloodGlucose) => "glucose-meter",
    }
}

/// A UCUM unit as the hub's table spells it. UCUM annotations (`{beat}`,
/// `{breath}`) carry no meaning in UCUM, so `{beat}/min`, which PHD devices
/// send for pulse rate, is `/min`. Everything else is kept as it came.
pub fn plain_ucum(unit: &str) -> String {
    let mut out = String::with_capacity(unit.len());
    let mut depth = 0usize;
    for ch in unit.chars() {
        match ch {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    if depth != 0 {
        // An unclosed annotation: not UCUM; let the table refuse it as sent.
        return unit.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdc_codes_are_unique_and_partition_two() {
        let mut seen = std::collections::HashSet::new();
        for m in MDC {
            assert!(seen.insert(m.code), "duplicate {}", m.code);
            let n: u32 = m.code.parse().unwrap_or_else(|e| panic!("{}: {e}", m.code));
            assert_eq!(n / 65536, 2, "{} is not in the SCADA partition", m.name);
        }
    }

    #[test]
    fn loinc_comes_from_the_hub_table() {
        assert_eq!(
            meaning(LOINC_SYSTEM, "8867-4"),
            Some(Meaning::Quantity(MeasurementKind::HeartRate))
        );
        assert_eq!(
            meaning(LOINC_SYSTEM, "2339-0"),
            Some(Meaning::Quantity(MeasurementKind::BloodGlucose))
        );
        assert_eq!(
            meaning(LOINC_SYSTEM, "85354-9"),
            Some(Meaning::BloodPressurePanel)
        );
        assert_eq!(meaning(LOINC_SYSTEM, "150456"), None);
        assert_eq!(
            meaning(MDC_SYSTEM, "150456"),
            Some(Meaning::Quantity(MeasurementKind::OxygenSaturation))
        );
    }

    #[test]
    fn annotations_are_dropped() {
        assert_eq!(plain_ucum("{beat}/min"), "/min");
        assert_eq!(plain_ucum("/min"), "/min");
        assert_eq!(plain_ucum("mm[Hg]"), "mm[Hg]");
        assert_eq!(plain_ucum("{beat/min"), "{beat/min");
    }
}
