//! The device registry: which person and municipality each device belongs
//! to, read from a TOML file the municipality (or the vendor on its behalf)
//! maintains.
//!
//! Why it exists: a device knows only its own id, and a national id must
//! never travel on a topic or in a device's payload. The gateway adds the
//! patient from this file just before submitting. The file holds national
//! ids, so nothing here ever prints one: errors name the device and the
//! field, and [`PersonId`]'s `Debug` is redacted.
//!
//! ```toml
//! [[device]]
//! id = "bed-0042"               # the {device} level of the topic
//! kind = "bed-sensor"           # free text, becomes the Device kind
//! municipality = "958935420"    # must match the topic's {orgnr}
//! patient_system = "fnr"        # fnr | dnr | fhn
//! patient_id = "..."            # 11 digits, control digits checked
//! ```

use std::collections::HashMap;
use std::path::Path;

use knutepunkt::domain::{IdSystem, Orgnr, PersonId};
use serde::Deserialize;

/// One registered device, checked.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub kind: String,
    pub municipality: Orgnr,
    pub patient: PersonId,
}

/// All devices of one gateway, by device id.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    devices: HashMap<String, Device>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    device: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    #[serde(default)]
    kind: String,
    municipality: String,
    patient_system: String,
    patient_id: String,
}

/// Why a registry file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading the device registry {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("device registry {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Registry {
    /// Reads and checks a registry file.
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Registry::parse(&text).map_err(|message| RegistryError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses registry TOML. Errors name the device and field, never a
    /// patient id (toml's own messages quote the offending line, so they are
    /// replaced by their position).
    pub fn parse(text: &str) -> Result<Registry, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default();
            format!("not a valid registry{at}: {}", e.message())
        })?;
        let mut devices = HashMap::new();
        for (i, e) in file.device.into_iter().enumerate() {
            let n = i + 1;
            if e.id.is_empty() || e.id.len() > 128 || e.id.contains(['/', '+', '#']) {
                return Err(format!(
                    "device #{n}: id must be 1-128 characters without '/', '+' or '#'"
                ));
            }
            let municipality = Orgnr::parse(&e.municipality)
                .map_err(|m| format!("device {:?}: municipality {m}", e.id))?;
            let system = match e.patient_system.as_str() {
                "fnr" => IdSystem::Fnr,
                "dnr" => IdSystem::Dnr,
                "fhn" => IdSystem::Fhn,
                other => {
                    return Err(format!(
                        "device {:?}: patient_system {other:?} is not fnr, dnr or fhn",
                        e.id
                    ));
                }
            };
            let patient = PersonId::parse(system, &e.patient_id)
                .map_err(|m| format!("device {:?}: patient_id {m}", e.id))?;
            let kind = if e.kind.is_empty() {
                "sensor".to_string()
            } else {
                e.kind
            };
            let dev = Device {
                id: e.id.clone(),
                kind,
                municipality,
                patient,
            };
            if devices.insert(e.id.clone(), dev).is_some() {
                return Err(format!("device {:?} is listed twice", e.id));
            }
        }
        Ok(Registry { devices })
    }

    pub fn get(&self, device: &str) -> Option<&Device> {
        self.devices.get(device)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Devices sorted by id (for the simulator).
    pub fn devices(&self) -> Vec<&Device> {
        let mut v: Vec<&Device> = self.devices.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knutepunkt::domain::synthetic;

    #[test]
    fn parses_and_never_echoes_a_patient_id() {
        let good = synthetic::fnr(3);
        let text = format!(
            "[[device]]\nid = \"bed-1\"\nmunicipality = \"958935420\"\npatient_system = \"fnr\"\npatient_id = \"{good}\"\n"
        );
        let r = Registry::parse(&text).unwrap();
        assert_eq!(r.get("bed-1").map(|d| d.kind.as_str()), Some("sensor"));
        assert!(!format!("{r:?}").contains(&good));

        let bad = format!("{}0", &good[..10]);
        let bad = if bad == good {
            format!("{}1", &good[..10])
        } else {
            bad
        };
        let err = Registry::parse(&text.replace(&good, &bad)).unwrap_err();
        assert!(err.contains("bed-1") && err.contains("patient_id"), "{err}");
        assert!(!err.contains(&bad), "{err}");

        let err = Registry::parse(&format!("{text}\n{text}")).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let err = Registry::parse(&text.replace("patient_id", "ssn")).unwrap_err();
        assert!(!err.contains(&good), "{err}");
    }
}
