//! Deterministic simulated vendors: realistic proto [`Event`]s for the demo,
//! the vendor simulator and the load generator.
//!
//! Why it exists: the hub has to be shown and measured without real devices
//! or real people. This module makes a [`Population`] of synthetic residents
//! (valid synthetic national ids from [`crate::domain::synthetic`], spread
//! over municipalities) and a [`Generator`] that emits what their vendors
//! would send: night-supervision and safety alarms with VKP codes and
//! severities, home-monitoring readings with plausible values and UCUM
//! units, and follow-up notes that answer an *earlier* alarm from the same
//! generator (the closed loop: alarm → note).
//!
//! Everything is seeded: the same seed, prefix and timestamps give the same
//! events, so a failing run can be replayed. Event ids are `prefix-counter`,
//! unique within one generator run; use different prefixes for generators
//! that talk to the same hub as the same vendor.
//!
//! National ids never leave this module in text meant for people: use
//! [`Population::pseudonym`] and [`Population::describe`] ("resident #3").

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use crate::domain::synthetic;
use crate::proto::v1::{
    Alarm, BloodPressure, Device, Event, IdSystem, Measurement, MeasurementKind, Note, PersonId,
    Quantity, Severity, event::Payload, measurement::Reading,
};

mod alarms;
mod population;
use alarms::STANDALONE_NOTES;
pub use alarms::{ALARMS, AlarmKind, alarm_kind};
use population::Baseline;
pub use population::{Population, Resident};

/// Oslo kommune's public organisation number.
pub const OSLO: &str = "958935420";
/// Bergen kommune's public organisation number.
pub const BERGEN: &str = "964338531";

/// A short, human name for the municipalities the simulator knows.
pub fn municipality_name(orgnr: &str) -> &'static str {
    match orgnr {
        OSLO => "Oslo",
        BERGEN => "Bergen",
        _ => "kommune",
    }
}

/// splitmix64 (Steele, Lea & Flood, 2014). Hand-written on purpose: it is
/// a few lines, fast, statistically good enough for test data, and its
/// output is fixed by this code alone, so a seed replays the same events
/// forever (a library RNG may change its stream between versions).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n == 0` gives 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: bias is below 2^-64 · n, irrelevant for test data.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Roughly normal around 0 with standard deviation `sd` (sum of uniforms),
    /// bounded to ±3·sd so values never run away.
    pub fn noise(&mut self, sd: f64) -> f64 {
        let s: f64 = (0..6).map(|_| self.unit()).sum::<f64>() - 3.0;
        // Sum of 6 uniforms has variance 0.5; scale to sd.
        (s * sd * std::f64::consts::SQRT_2).clamp(-3.0 * sd, 3.0 * sd)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Index into `weights`, chosen proportionally (all-zero weights give 0).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut r = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if r < u64::from(w) {
                return i;
            }
            r -= u64::from(w);
        }
        0
    }
}

/// "blood pressure 142/88 mm[Hg]", "SpO2 96 %", …
pub fn describe_measurement(m: &Measurement) -> String {
    let kind = MeasurementKind::try_from(m.kind).unwrap_or(MeasurementKind::Unspecified);
    match &m.reading {
        Some(Reading::BloodPressure(bp)) => {
            format!("blood pressure {}/{} mm[Hg]", bp.systolic, bp.diastolic)
        }
        Some(Reading::Quantity(q)) => format!("{} {} {}", kind_name(kind), q.value, q.unit),
        None => format!("{} (no value)", kind_name(kind)),
    }
}

fn kind_name(k: MeasurementKind) -> &'static str {
    match k {
        MeasurementKind::BloodPressure => "blood pressure",
        MeasurementKind::HeartRate => "heart rate",
        MeasurementKind::OxygenSaturation => "SpO2",
        MeasurementKind::BodyWeight => "weight",
        MeasurementKind::BodyTemperature => "temperature",
        MeasurementKind::RespiratoryRate => "respiratory rate",
        MeasurementKind::BloodGlucose => "glucose",
        MeasurementKind::Unspecified => "measurement",
    }
}

/// How often each payload comes out, as relative weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub measurement: u32,
    pub alarm: u32,
    pub note: u32,
}

impl Mix {
    /// An alarm/response centre: night supervision, safety alarms, dispensers,
    /// and the notes that close the loop.
    pub const ALARM_CENTRE: Mix = Mix {
        measurement: 0,
        alarm: 6,
        note: 4,
    };
    /// A home-monitoring (medisinsk avstandsoppfølging) app: readings only.
    pub const HOME_MONITORING: Mix = Mix {
        measurement: 1,
        alarm: 0,
        note: 0,
    };
    /// Everything at once, measurements first: what one busy vendor sends.
    pub const BALANCED: Mix = Mix {
        measurement: 6,
        alarm: 3,
        note: 1,
    };
}

impl Default for Mix {
    fn default() -> Self {
        Mix::BALANCED
    }
}

/// How one generator behaves.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    /// Event ids are `{prefix}-{counter:08}`: 1-100 printable ASCII characters.
    pub prefix: String,
    pub mix: Mix,
    /// A note answers only alarms made at least this many events earlier, so
    /// a pipelined sender has had the alarm acknowledged (or at least sent)
    /// before the note that answers it.
    pub min_note_lag: u64,
}

impl GenConfig {
    pub fn new(seed: u64, prefix: impl Into<String>, mix: Mix) -> Self {
        GenConfig {
            seed,
            prefix: prefix.into(),
            mix,
            min_note_lag: 3,
        }
    }
}

/// An alarm waiting for its follow-up note.
#[derive(Debug, Clone)]
struct OpenAlarm {
    event_id: String,
    counter: u64,
    resident: usize,
    kind: &'static AlarmKind,
}

/// At most this many alarms wait for a note; older ones stay unanswered
/// (as some green alarms do in real life) and memory stays bounded.
const MAX_OPEN_ALARMS: usize = 1024;

/// Makes events for one simulated vendor. Not thread-safe by design: give
/// each sender its own generator (and prefix).
#[derive(Debug)]
pub struct Generator {
    population: Arc<Population>,
    rng: SplitMix64,
    prefix: String,
    mix: Mix,
    min_note_lag: u64,
    counter: u64,
    open: VecDeque<OpenAlarm>,
}

impl Generator {
    /// Fails when the prefix is empty, too long or not printable ASCII, or
    /// the population is empty.
    pub fn new(population: Arc<Population>, cfg: GenConfig) -> Result<Self, String> {
        if cfg.prefix.is_empty() || cfg.prefix.len() > 100 {
            return Err("event id prefix must be 1-100 characters".into());
        }
        if !cfg.prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("event id prefix must be printable ASCII without spaces".into());
        }
        if population.is_empty() {
            return Err("population has no residents".into());
        }
        let mix = if cfg.mix.measurement + cfg.mix.alarm + cfg.mix.note == 0 {
            Mix::BALANCED
        } else {
            cfg.mix
        };
        Ok(Generator {
            population,
            rng: SplitMix64::new(cfg.seed),
            prefix: cfg.prefix,
            mix,
            min_note_lag: cfg.min_note_lag,
            counter: 0,
            open: VecDeque::new(),
        })
    }

    pub fn population(&self) -> &Arc<Population> {
        &self.population
    }

    /// How many events this generator has made.
    pub fn count(&self) -> u64 {
        self.counter
    }

    /// The next event, stamped with the current time.
    pub fn next_event(&mut self) -> Event {
        self.next_event_at(SystemTime::now())
    }

    /// The next event, stamped `at` (time on the device). With a fixed `at`
    /// the output depends on the seed alone.
    pub fn next_event_at(&mut self, at: SystemTime) -> Event {
        self.counter += 1;
        let event_id = format!("{}-{:08}", self.prefix, self.counter);
        let pick = self
            .rng
            .weighted(&[self.mix.measurement, self.mix.alarm, self.mix.note]);
        let (resident, device, payload) = match pick {
            0 => self.measurement(),
            1 => self.alarm(&event_id),
            _ => match self.note() {
                Some(n) => n,
                // Nothing to answer yet: mostly raise an alarm instead, so
                // notes stay about closing the loop.
                None if self.rng.chance(0.75) => self.alarm(&event_id),
                None => self.standalone_note(),
            },
        };
        let r = &self.population.residents()[resident];
        Event {
            event_id,
            municipality: r.municipality.clone(),
            patient: Some(r.person_id()),
            device: Some(device),
            occurred_at: Some(prost_types::Timestamp::from(at)),
            payload: Some(payload),
        }
    }

    fn pick_resident(&mut self) -> usize {
        self.rng.below(self.population.len() as u64) as usize
    }

    fn measurement(&mut self) -> (usize, Device, Payload) {
        let idx = self.pick_resident();
        let b = self.population.residents()[idx].base;
        let number = self.population.residents()[idx].number;
        let Sample {
            kind,
            device_kind,
            prefix,
            reading,
        } = sample(&mut self.rng, &b);
        let device = Device {
            id: format!("{prefix}-{number:05}"),
            kind: device_kind.to_string(),
        };
        let payload = Payload::Measurement(Measurement {
            kind: kind as i32,
            reading: Some(reading),
        });
        (idx, device, payload)
    }

    fn alarm(&mut self, event_id: &str) -> (usize, Device, Payload) {
        let idx = self.pick_resident();
        let weights: Vec<u32> = ALARMS.iter().map(|k| k.weight).collect();
        let kind = &ALARMS[self.rng.weighted(&weights)];
        let number = self.population.residents()[idx].number;
        // Falls happen in the bathroom too.
        let zone = if kind.code == "4.1" && self.rng.chance(0.3) {
            "bathroom"
        } else {
            kind.zone
        };
        // Staff follow up every red and yellow alarm, and some green ones.
        if kind.severity != Severity::Green || self.rng.chance(0.3) {
            if self.open.len() >= MAX_OPEN_ALARMS {
                self.open.pop_front();
            }
            self.open.push_back(OpenAlarm {
                event_id: event_id.to_string(),
                counter: self.counter,
                resident: idx,
                kind,
            });
        }
        let device = Device {
            id: format!("{}-{number:05}", kind.device_prefix),
            kind: kind.device_kind.to_string(),
        };
        let payload = Payload::Alarm(Alarm {
            code: kind.code.to_string(),
            severity: kind.severity as i32,
            text: kind.vendor_text.to_string(),
            zone: zone.to_string(),
        });
        (idx, device, payload)
    }

    /// A note answering the oldest eligible open alarm (red ones first), or
    /// `None` when no alarm is old enough.
    fn note(&mut self) -> Option<(usize, Device, Payload)> {
        // Oldest eligible alarm first: red ones before the rest, as staff would.
        let lag = self.min_note_lag;
        let counter = self.counter;
        let eligible = |a: &OpenAlarm| a.counter + lag <= counter;
        let pos = self
            .open
            .iter()
            .position(|a| eligible(a) && a.kind.severity == Severity::Red)
            .or_else(|| self.open.iter().position(eligible));
        if let Some(alarm) = pos.and_then(|p| self.open.remove(p)) {
            let answers = alarm.kind.answers;
            let text = answers[self.rng.below(answers.len() as u64) as usize];
            let payload = Payload::Note(Note {
                text: text.to_string(),
                in_response_to: alarm.event_id,
            });
            return Some((alarm.resident, note_device(), payload));
        }
        None
    }

    fn standalone_note(&mut self) -> (usize, Device, Payload) {
        let idx = self.pick_resident();
        let text = STANDALONE_NOTES[self.rng.below(STANDALONE_NOTES.len() as u64) as usize];
        let payload = Payload::Note(Note {
            text: text.to_string(),
            in_response_to: String::new(),
        });
        (idx, note_device(), payload)
    }
}

fn note_device() -> Device {
    Device {
        id: "rsp-console-01".to_string(),
        kind: "response-centre".to_string(),
    }
}

/// One simulated measurement: its kind, the device that took it (kind and
/// id prefix), and the reading.
struct Sample {
    kind: MeasurementKind,
    device_kind: &'static str,
    prefix: &'static str,
    reading: Reading,
}

/// A measurement of a kind drawn by weight, near the resident's baseline.
fn sample(rng: &mut SplitMix64, b: &Baseline) -> Sample {
    // BP 25, HR 15, SpO2 20, weight 15, temperature 10, resp. rate 5, glucose 10.
    let which = rng.weighted(&[25, 15, 20, 15, 10, 5, 10]);
    let (kind, device_kind, prefix, reading) = match which {
        0 => (
            MeasurementKind::BloodPressure,
            "bp-monitor",
            "bpm",
            blood_pressure(rng, b),
        ),
        1 => (
            MeasurementKind::HeartRate,
            "pulse-oximeter",
            "oxi",
            quantity(
                (b.heart_rate + rng.noise(6.0)).clamp(40.0, 140.0).round(),
                "/min",
            ),
        ),
        2 => (
            MeasurementKind::OxygenSaturation,
            "pulse-oximeter",
            "oxi",
            quantity((b.spo2 + rng.noise(1.2)).clamp(85.0, 100.0).round(), "%"),
        ),
        3 => (
            MeasurementKind::BodyWeight,
            "scale",
            "scale",
            quantity(
                round1((b.weight_kg + rng.noise(0.5)).clamp(35.0, 180.0)),
                "kg",
            ),
        ),
        4 => (
            MeasurementKind::BodyTemperature,
            "thermometer",
            "temp",
            body_temperature(rng),
        ),
        5 => (
            MeasurementKind::RespiratoryRate,
            "pulse-oximeter",
            "oxi",
            quantity((16.0 + rng.noise(2.0)).clamp(8.0, 30.0).round(), "/min"),
        ),
        _ => {
            let sd = if b.diabetic { 1.8 } else { 0.6 };
            let g = (b.glucose + rng.noise(sd)).clamp(2.8, 22.0);
            (
                MeasurementKind::BloodGlucose,
                "glucose-meter",
                "gluc",
                quantity(round1(g), "mmol/L"),
            )
        }
    };
    Sample {
        kind,
        device_kind,
        prefix,
        reading,
    }
}

/// A body temperature, now and then a fever.
fn body_temperature(rng: &mut SplitMix64) -> Reading {
    let fever = if rng.chance(0.08) {
        rng.range(1.0, 2.2)
    } else {
        0.0
    };
    let t = (36.8 + rng.noise(0.25) + fever).clamp(35.0, 40.5);
    quantity(round1(t), "Cel")
}

/// A blood pressure near the baseline, the diastolic at least 20 below the
/// systolic.
fn blood_pressure(rng: &mut SplitMix64, b: &Baseline) -> Reading {
    let systolic = (b.systolic + rng.noise(9.0)).clamp(90.0, 200.0).round();
    let diastolic = (b.diastolic + rng.noise(5.0))
        .clamp(50.0, 115.0)
        .min(systolic - 20.0)
        .round();
    Reading::BloodPressure(BloodPressure {
        systolic,
        diastolic,
    })
}

fn quantity(value: f64, unit: &str) -> Reading {
    Reading::Quantity(Quantity {
        value,
        unit: unit.to_string(),
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests;
