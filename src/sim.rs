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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::domain::synthetic;
use crate::proto::v1::{
    Alarm, BloodPressure, Device, Event, IdSystem, Measurement, MeasurementKind, Note, PersonId,
    Quantity, Severity, event::Payload, measurement::Reading,
};

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

/// A synthetic resident: where they live and what their readings look like.
/// `Debug` hides the national id.
#[derive(Clone)]
pub struct Resident {
    /// The pseudonym number: "resident #number". Unique in its population.
    pub number: u32,
    /// The municipality's orgnr.
    pub municipality: String,
    id_system: IdSystem,
    id_value: String,
    base: Baseline,
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
struct Baseline {
    systolic: f64,
    diastolic: f64,
    heart_rate: f64,
    spo2: f64,
    weight_kg: f64,
    glucose: f64,
    diabetic: bool,
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

/// One alarm the simulator can raise, as a row of data.
#[derive(Debug, Clone, Copy)]
pub struct AlarmKind {
    /// VKP alert code (v0.9.0 list).
    pub code: &'static str,
    /// English meaning, for people reading the demo.
    pub meaning: &'static str,
    pub severity: Severity,
    /// Zone or room; empty when the device has none (a pendant button).
    pub zone: &'static str,
    pub device_kind: &'static str,
    device_prefix: &'static str,
    /// What the vendor's system says (Norwegian, as staff see it).
    pub vendor_text: &'static str,
    /// Relative frequency in a night of supervision.
    weight: u32,
    /// Follow-up notes staff write after this alarm.
    answers: &'static [&'static str],
}

const ANSWER_BED: &[&str] = &[
    "Tilsyn utført. Beboer var på toalettet, fulgt tilbake til sengen.",
    "Beboer urolig, fikk hjelp til å legge seg igjen. Ingen tiltak.",
    "Sjekket via tilsynsrunde: beboer sover, falsk alarm.",
];
const ANSWER_FALL: &[&str] = &[
    "Hjemmetjenesten rykket ut. Beboer hjulpet opp, ingen synlige skader. Lege varslet.",
    "Fall bekreftet, beboer lå på gulvet ved sengen. Hjulpet opp, observeres videre.",
    "Ambulanse tilkalt etter fall, pårørende varslet.",
];
const ANSWER_BUTTON: &[&str] = &[
    "Responssenter tok kontakt via toveis tale. Beboer trengte hjelp til toalettbesøk.",
    "Utilsiktet utløst alarm, beboer bekreftet at alt er i orden.",
    "Hjemmetjenesten rykket ut, beboer hadde brystsmerter, legevakt kontaktet.",
];
const ANSWER_INACTIVE: &[&str] = &[
    "Ringt beboer, svarte etter tredje forsøk. Alt i orden.",
    "Tilsyn utført, beboer sov i stolen i stua.",
];
const ANSWER_MEDICATION: &[&str] = &[
    "Ringt beboer, dosen er tatt ut og tatt. Påminnelse gitt.",
    "Hjemmesykepleier besøkte, dosen ble gitt kl. 09:10.",
];
const ANSWER_DISPENSER: &[&str] = &[
    "Dispenser fylt på ved besøk.",
    "Dispenser byttet, ny avtale med leverandør registrert.",
];
const ANSWER_DOOR: &[&str] = &[
    "Beboer funnet i gangen, fulgt tilbake til leiligheten.",
    "Nattevakt sjekket, beboer hadde tatt inn avisen.",
];
const ANSWER_LEFT_HOME: &[&str] = &[
    "Beboer funnet utenfor inngangen, fulgt inn igjen. Pårørende informert.",
    "Leteaksjon ikke nødvendig, beboer var hos nabo.",
];
const ANSWER_MEASUREMENT: &[&str] = &[
    "Ringt bruker, måling utført etter påminnelse.",
    "Bruker på ferie, måling utsatt etter avtale.",
];

/// The alarms a night-supervision, safety-alarm and dispenser vendor sends.
/// Every code is in the VKP table the hub accepts.
pub const ALARMS: &[AlarmKind] = &[
    AlarmKind {
        code: "4.2",
        meaning: "Left the bed",
        severity: Severity::Yellow,
        zone: "bedroom",
        device_kind: "bed-sensor",
        device_prefix: "bed",
        vendor_text: "Beboer har forlatt sengen",
        weight: 20,
        answers: ANSWER_BED,
    },
    AlarmKind {
        code: "4.3",
        meaning: "Sat up in bed",
        severity: Severity::Green,
        zone: "bedroom",
        device_kind: "bed-sensor",
        device_prefix: "bed",
        vendor_text: "Beboer sitter opp i sengen",
        weight: 14,
        answers: ANSWER_BED,
    },
    AlarmKind {
        code: "4.6",
        meaning: "Left the room",
        severity: Severity::Yellow,
        zone: "bedroom",
        device_kind: "room-sensor",
        device_prefix: "room",
        vendor_text: "Beboer har forlatt rommet",
        weight: 10,
        answers: ANSWER_BED,
    },
    AlarmKind {
        code: "4.9",
        meaning: "Inactivity",
        severity: Severity::Yellow,
        zone: "living room",
        device_kind: "room-sensor",
        device_prefix: "room",
        vendor_text: "Ingen aktivitet registrert på 3 timer",
        weight: 6,
        answers: ANSWER_INACTIVE,
    },
    AlarmKind {
        code: "4.1",
        meaning: "Fall",
        severity: Severity::Red,
        zone: "bedroom",
        device_kind: "fall-sensor",
        device_prefix: "fall",
        vendor_text: "Fall detektert",
        weight: 4,
        answers: ANSWER_FALL,
    },
    AlarmKind {
        code: "4.13",
        meaning: "Safety-alarm button pressed",
        severity: Severity::Red,
        zone: "",
        device_kind: "safety-alarm",
        device_prefix: "tryggh",
        vendor_text: "Trygghetsalarm utløst",
        weight: 8,
        answers: ANSWER_BUTTON,
    },
    AlarmKind {
        code: "4.14",
        meaning: "Pull cord",
        severity: Severity::Red,
        zone: "bathroom",
        device_kind: "pull-cord",
        device_prefix: "cord",
        vendor_text: "Snortrekk på badet",
        weight: 2,
        answers: ANSWER_BUTTON,
    },
    AlarmKind {
        code: "4.23",
        meaning: "Unusually long stay in the bathroom",
        severity: Severity::Yellow,
        zone: "bathroom",
        device_kind: "room-sensor",
        device_prefix: "room",
        vendor_text: "Lengre opphold på badet enn normalt",
        weight: 3,
        answers: ANSWER_INACTIVE,
    },
    AlarmKind {
        code: "4.15",
        meaning: "Door opened",
        severity: Severity::Green,
        zone: "hallway",
        device_kind: "door-sensor",
        device_prefix: "door",
        vendor_text: "Ytterdør åpnet",
        weight: 5,
        answers: ANSWER_DOOR,
    },
    AlarmKind {
        code: "4.21",
        meaning: "Left the home",
        severity: Severity::Red,
        zone: "hallway",
        device_kind: "door-sensor",
        device_prefix: "door",
        vendor_text: "Beboer har forlatt boligen om natten",
        weight: 2,
        answers: ANSWER_LEFT_HOME,
    },
    AlarmKind {
        code: "3.3",
        meaning: "Medication not confirmed taken",
        severity: Severity::Yellow,
        zone: "kitchen",
        device_kind: "medication-dispenser",
        device_prefix: "disp",
        vendor_text: "Dose kl. 08:00 er ikke tatt ut av dispenseren",
        weight: 6,
        answers: ANSWER_MEDICATION,
    },
    AlarmKind {
        code: "3.6",
        meaning: "Dispenser empty",
        severity: Severity::Yellow,
        zone: "kitchen",
        device_kind: "medication-dispenser",
        device_prefix: "disp",
        vendor_text: "Dispenseren er tom",
        weight: 2,
        answers: ANSWER_DISPENSER,
    },
    AlarmKind {
        code: "2.2",
        meaning: "Measurement not reported",
        severity: Severity::Green,
        zone: "",
        device_kind: "home-monitoring-app",
        device_prefix: "app",
        vendor_text: "Planlagt blodtrykksmåling er ikke utført",
        weight: 2,
        answers: ANSWER_MEASUREMENT,
    },
];

/// The simulator's row for a VKP code, if it has one.
pub fn alarm_kind(code: &str) -> Option<&'static AlarmKind> {
    ALARMS.iter().find(|k| k.code == code)
}

const STANDALONE_NOTES: &[&str] = &[
    "Pårørende ringte responssenteret, ønsker tilbakemelding fra hjemmetjenesten.",
    "Nattevakt: rolig natt, ingen avvik.",
    "Sensor flyttet etter ommøblering, kalibrert på nytt.",
];

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
        let r = &self.population.residents[resident];
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
        self.rng.below(self.population.residents.len() as u64) as usize
    }

    fn measurement(&mut self) -> (usize, Device, Payload) {
        let idx = self.pick_resident();
        let b = self.population.residents[idx].base;
        let number = self.population.residents[idx].number;
        let rng = &mut self.rng;
        // BP 25, HR 15, SpO2 20, weight 15, temperature 10, resp. rate 5, glucose 10.
        let which = rng.weighted(&[25, 15, 20, 15, 10, 5, 10]);
        let (kind, device_kind, prefix, reading) = match which {
            0 => {
                let systolic = (b.systolic + rng.noise(9.0)).clamp(90.0, 200.0).round();
                let diastolic = (b.diastolic + rng.noise(5.0))
                    .clamp(50.0, 115.0)
                    .min(systolic - 20.0)
                    .round();
                (
                    MeasurementKind::BloodPressure,
                    "bp-monitor",
                    "bpm",
                    Reading::BloodPressure(BloodPressure {
                        systolic,
                        diastolic,
                    }),
                )
            }
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
            4 => {
                let fever = if rng.chance(0.08) {
                    rng.range(1.0, 2.2)
                } else {
                    0.0
                };
                let t = (36.8 + rng.noise(0.25) + fever).clamp(35.0, 40.5);
                (
                    MeasurementKind::BodyTemperature,
                    "thermometer",
                    "temp",
                    quantity(round1(t), "Cel"),
                )
            }
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
        let number = self.population.residents[idx].number;
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
mod tests {
    use super::*;
    use crate::domain::{self, Orgnr};
    use std::collections::HashSet;
    use std::time::{Duration, UNIX_EPOCH};

    fn generator(seed: u64, mix: Mix) -> Generator {
        let pop = Arc::new(Population::new(seed, &[OSLO, BERGEN], 20));
        Generator::new(pop, GenConfig::new(seed, "t", mix)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(i: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000 + i)
    }

    #[test]
    fn municipalities_and_people_are_valid_and_synthetic() {
        assert!(Orgnr::parse(OSLO).is_ok());
        assert!(Orgnr::parse(BERGEN).is_ok());
        let pop = Population::new(7, &[OSLO, BERGEN], 50);
        assert_eq!(pop.len(), 100);
        let mut seen = HashSet::new();
        for r in pop.residents() {
            let p = r.person_id();
            let sys = match IdSystem::try_from(p.system) {
                Ok(IdSystem::Fnr) => domain::IdSystem::Fnr,
                Ok(IdSystem::Dnr) => domain::IdSystem::Dnr,
                other => panic!("unexpected id system {other:?}"),
            };
            assert!(domain::PersonId::parse(sys, &p.value).is_ok());
            // Synthetic numbers have the month shifted by 80.
            let month: u32 = p.value[2..4].parse().unwrap_or(0);
            assert!((81..=92).contains(&month));
            assert!(seen.insert(p.value.clone()), "people are distinct");
            assert_eq!(pop.pseudonym(&p.value), Some(r.number));
            assert!(!format!("{r:?}").contains(&p.value));
        }
        let oslo = pop
            .residents()
            .iter()
            .filter(|r| r.municipality == OSLO)
            .count();
        assert_eq!(oslo, 50);
    }

    #[test]
    fn same_seed_same_events() {
        let mut a = generator(42, Mix::BALANCED);
        let mut b = generator(42, Mix::BALANCED);
        let mut c = generator(43, Mix::BALANCED);
        let ea: Vec<Event> = (0..500).map(|i| a.next_event_at(at(i))).collect();
        let eb: Vec<Event> = (0..500).map(|i| b.next_event_at(at(i))).collect();
        let ec: Vec<Event> = (0..500).map(|i| c.next_event_at(at(i))).collect();
        assert_eq!(ea, eb);
        assert_ne!(ea, ec);
    }

    #[test]
    fn event_ids_are_unique_and_well_formed() {
        let mut g = generator(1, Mix::BALANCED);
        let mut ids = HashSet::new();
        for i in 0..10_000 {
            let e = g.next_event_at(at(i));
            assert!(!e.event_id.is_empty() && e.event_id.len() <= 128);
            assert!(e.event_id.bytes().all(|b| b.is_ascii_graphic()));
            assert!(ids.insert(e.event_id));
            assert!(Orgnr::parse(&e.municipality).is_ok());
            let d = e.device.unwrap_or_default();
            assert!(!d.id.is_empty() && d.id.len() <= 128 && !d.kind.is_empty());
        }
        assert!(
            Generator::new(
                g.population().clone(),
                GenConfig::new(1, "has space", Mix::BALANCED)
            )
            .is_err()
        );
        assert!(
            Generator::new(g.population().clone(), GenConfig::new(1, "", Mix::BALANCED)).is_err()
        );
    }

    #[test]
    fn measurement_values_are_plausible() {
        let mut g = generator(9, Mix::HOME_MONITORING);
        let mut kinds = HashSet::new();
        for i in 0..20_000 {
            let e = g.next_event_at(at(i));
            let Some(Payload::Measurement(m)) = e.payload else {
                panic!("home monitoring sends measurements only");
            };
            let kind = MeasurementKind::try_from(m.kind).unwrap_or(MeasurementKind::Unspecified);
            kinds.insert(m.kind);
            match (kind, m.reading) {
                (MeasurementKind::BloodPressure, Some(Reading::BloodPressure(bp))) => {
                    assert!((90.0..=200.0).contains(&bp.systolic), "{bp:?}");
                    assert!((40.0..=115.0).contains(&bp.diastolic), "{bp:?}");
                    assert!(bp.systolic - bp.diastolic >= 20.0, "{bp:?}");
                }
                (k, Some(Reading::Quantity(q))) => {
                    let (lo, hi, unit) = match k {
                        MeasurementKind::HeartRate => (40.0, 140.0, "/min"),
                        MeasurementKind::OxygenSaturation => (85.0, 100.0, "%"),
                        MeasurementKind::BodyWeight => (35.0, 180.0, "kg"),
                        MeasurementKind::BodyTemperature => (35.0, 40.5, "Cel"),
                        MeasurementKind::RespiratoryRate => (8.0, 30.0, "/min"),
                        MeasurementKind::BloodGlucose => (2.8, 22.0, "mmol/L"),
                        other => panic!("unexpected kind {other:?}"),
                    };
                    assert!((lo..=hi).contains(&q.value), "{k:?} {q:?}");
                    assert!(q.value.is_finite());
                    assert_eq!(q.unit, unit);
                }
                other => panic!("kind and reading do not match: {other:?}"),
            }
        }
        assert_eq!(kinds.len(), 7, "every measurement kind shows up");
    }

    #[test]
    fn alarms_use_known_codes_and_severities() {
        let mut g = generator(5, Mix::ALARM_CENTRE);
        let mut codes = HashSet::new();
        for i in 0..5_000 {
            if let Some(Payload::Alarm(a)) = g.next_event_at(at(i)).payload {
                let k = alarm_kind(&a.code).unwrap_or_else(|| panic!("unknown code {}", a.code));
                assert_eq!(a.severity, k.severity as i32);
                assert!(!a.text.is_empty());
                codes.insert(a.code);
            }
        }
        assert_eq!(codes.len(), ALARMS.len());
        let fall = alarm_kind("4.1").map(|k| k.severity);
        assert_eq!(fall, Some(Severity::Red));
    }

    #[test]
    fn notes_answer_earlier_alarms_of_the_same_resident() {
        let mut g = generator(11, Mix::ALARM_CENTRE);
        // event id → (index, municipality, patient, answered?)
        let mut alarms: HashMap<String, (u64, String, String, bool)> = HashMap::new();
        let mut answered = 0;
        for i in 0..20_000u64 {
            let e = g.next_event_at(at(i));
            let patient = e.patient.clone().unwrap_or_default().value;
            match e.payload {
                Some(Payload::Alarm(_)) => {
                    alarms.insert(
                        e.event_id.clone(),
                        (i, e.municipality.clone(), patient, false),
                    );
                }
                Some(Payload::Note(n)) if !n.in_response_to.is_empty() => {
                    let Some(a) = alarms.get_mut(&n.in_response_to) else {
                        panic!("note answers an alarm that was never sent");
                    };
                    assert!(
                        a.0 + 3 <= i,
                        "note comes at least min_note_lag after its alarm"
                    );
                    assert_eq!(a.1, e.municipality);
                    assert_eq!(a.2, patient, "same resident");
                    assert!(!a.3, "each alarm is answered once");
                    a.3 = true;
                    answered += 1;
                }
                _ => {}
            }
        }
        assert!(
            answered > 5_000,
            "the loop is closed for most alarms: {answered}"
        );
    }

    #[test]
    fn describe_never_shows_a_national_id() {
        let mut g = generator(3, Mix::BALANCED);
        for i in 0..2_000 {
            let e = g.next_event_at(at(i));
            let id = e.patient.clone().unwrap_or_default().value;
            let line = g.population().describe(&e);
            assert!(!line.contains(&id), "{line}");
            assert!(line.contains("resident #"), "{line}");
        }
    }

    #[test]
    fn splitmix_is_stable_and_bounded() {
        // First output for seed 0 of the published splitmix64 reference.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let mut r = SplitMix64::new(99);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.noise(2.0).abs() <= 6.0);
        }
        assert_eq!(r.below(0), 0);
    }
}
