//! The synthetic residents of a simulation: where they live, their
//! (synthetic) national ids, and the normal values their readings vary
//! around.

use std::collections::HashMap;
use std::fmt;

use super::*;

/// A synthetic resident: where they live and what their readings look like.
/// `Debug` hides the national id.
#[derive(Clone)]
pub struct Resident {
    /// The pseudonym number: "resident #number". Unique in its population.
    pub number: u32,
    /// The municipality's orgnr.
    pub municipality: String,
    pub(super) id_system: IdSystem,
    pub(super) id_value: String,
    pub(super) base: Baseline,
}

impl Resident {
    /// The person id as the proto carries it. Never print its value.
    pub fn person_id(&self) -> PersonId {
        PersonId {
            system: self.id_system as i32,
            value: self.id_value.clone(),
        }
    }
}

impl fmt::Debug for Resident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Resident(#{}, {}, {:?}, ***********)",
            self.number, self.municipality, self.id_system
        )
    }
}

/// Each resident's normal values, so one person's readings hang together.
#[derive(Debug, Clone, Copy)]
pub(super) struct Baseline {
    pub(super) systolic: f64,
    pub(super) diastolic: f64,
    pub(super) heart_rate: f64,
    pub(super) spo2: f64,
    pub(super) weight_kg: f64,
    pub(super) glucose: f64,
    pub(super) diabetic: bool,
}

/// The residents of one simulation, spread round-robin over municipalities.
#[derive(Debug, Clone)]
pub struct Population {
    residents: Vec<Resident>,
    by_id: HashMap<String, u32>,
}

impl Population {
    /// `per_municipality` residents in each of `municipalities` (orgnrs).
    /// Every eighth resident has a D-number, the rest a fødselsnummer; all
    /// are synthetic numbers that cannot belong to a real person.
    pub fn new(seed: u64, municipalities: &[&str], per_municipality: u32) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x5EED_0F7E_0B1E);
        // Start somewhere seed-dependent in the synthetic number space so two
        // seeds give two different sets of people.
        let offset = (seed % 50_000) as u32 * 64;
        let count = municipalities.len() as u32 * per_municipality;
        let mut residents = Vec::with_capacity(count as usize);
        let mut by_id = HashMap::with_capacity(count as usize);
        for i in 0..count {
            let municipality = municipalities[(i as usize) % municipalities.len()].to_string();
            let n = offset.wrapping_add(i);
            let (id_system, id_value) = if i % 8 == 7 {
                (IdSystem::Dnr, synthetic::dnr(n))
            } else {
                (IdSystem::Fnr, synthetic::fnr(n))
            };
            let systolic = rng.range(112.0, 152.0);
            let diabetic = rng.chance(0.25);
            let base = Baseline {
                systolic,
                diastolic: (systolic - rng.range(38.0, 58.0)).max(58.0),
                heart_rate: rng.range(58.0, 84.0),
                spo2: rng.range(93.5, 98.5),
                weight_kg: rng.range(48.0, 112.0),
                glucose: if diabetic {
                    rng.range(7.0, 10.5)
                } else {
                    rng.range(4.6, 6.4)
                },
                diabetic,
            };
            let number = i + 1;
            by_id.insert(id_value.clone(), number);
            residents.push(Resident {
                number,
                municipality,
                id_system,
                id_value,
                base,
            });
        }
        Population { residents, by_id }
    }

    /// Two municipalities (Oslo, Bergen) with a handful of residents each.
    pub fn demo(seed: u64) -> Self {
        Population::new(seed, &[OSLO, BERGEN], 6)
    }

    pub fn residents(&self) -> &[Resident] {
        &self.residents
    }

    pub fn len(&self) -> usize {
        self.residents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.residents.is_empty()
    }

    /// The pseudonym number for a person id value, if the person is ours.
    pub fn pseudonym(&self, id_value: &str) -> Option<u32> {
        self.by_id.get(id_value).copied()
    }

    /// "resident #3 (Oslo)" for a person id value; never the number itself.
    pub fn label(&self, id_value: &str) -> String {
        match self.by_id.get(id_value) {
            Some(&n) => {
                let m = self
                    .residents
                    .get((n - 1) as usize)
                    .map(|r| municipality_name(&r.municipality))
                    .unwrap_or("?");
                format!("resident #{n} ({m})")
            }
            None => "unknown resident".to_string(),
        }
    }

    /// One line about an event for people to read: no national id.
    pub fn describe(&self, ev: &Event) -> String {
        let who = ev
            .patient
            .as_ref()
            .map(|p| self.label(&p.value))
            .unwrap_or_else(|| "no patient".into());
        let what = match &ev.payload {
            Some(Payload::Measurement(m)) => describe_measurement(m),
            Some(Payload::Alarm(a)) => {
                let sev = Severity::try_from(a.severity)
                    .map(|s| s.as_str_name())
                    .unwrap_or("?");
                let meaning = alarm_kind(&a.code).map(|k| k.meaning).unwrap_or("?");
                if a.zone.is_empty() {
                    format!("alarm {} {sev} {meaning}", a.code)
                } else {
                    format!("alarm {} {sev} {meaning}, {}", a.code, a.zone)
                }
            }
            Some(Payload::Note(n)) if n.in_response_to.is_empty() => "note".to_string(),
            Some(Payload::Note(n)) => format!("note ↪ {}", n.in_response_to),
            None => "empty event".to_string(),
        };
        format!("{what} · {who}")
    }
}
