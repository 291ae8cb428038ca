//! The scenario tables: every alarm the simulator can raise (VKP code,
//! severity, the device that raises it) and the notes care staff write
//! after one, as data the generator draws from.

use super::*;

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
    pub(super) device_prefix: &'static str,
    /// What the vendor's system says (Norwegian, as staff see it).
    pub vendor_text: &'static str,
    /// Relative frequency in a night of supervision.
    pub(super) weight: u32,
    /// Follow-up notes staff write after this alarm.
    pub(super) answers: &'static [&'static str],
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

pub(super) const STANDALONE_NOTES: &[&str] = &[
    "Pårørende ringte responssenteret, ønsker tilbakemelding fra hjemmetjenesten.",
    "Nattevakt: rolig natt, ingen avvik.",
    "Sensor flyttet etter ommøblering, kalibrert på nytt.",
];
