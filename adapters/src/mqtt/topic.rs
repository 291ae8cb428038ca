//! The topic scheme: `{prefix}/{orgnr}/{vendor}/{device}/{kind}`, with
//! `prefix` = `knutepunkt/v1` by default and `kind` one of `measurement`,
//! `alarm` or `note`. Dead letters go to `{dead-letter prefix}/{orgnr}/
//! {vendor}/{device}/{kind}`.
//!
//! Why it exists: the topic is the only routing a device has, and it is
//! visible to everyone who can read the broker, so it names the
//! municipality, the vendor and the device, never a person. Parsing is in
//! one place so the scheme in README.md and the code cannot drift.

use std::fmt;

/// What a message on a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A SenML pack of readings.
    Measurement,
    /// An alarm in the gateway's JSON schema.
    Alarm,
    /// A note in the gateway's JSON schema.
    Note,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Measurement => "measurement",
            MessageKind::Alarm => "alarm",
            MessageKind::Note => "note",
        }
    }

    fn parse(s: &str) -> Option<MessageKind> {
        Some(match s {
            "measurement" => MessageKind::Measurement,
            "alarm" => MessageKind::Alarm,
            "note" => MessageKind::Note,
            _ => return None,
        })
    }
}

/// A parsed device topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopic {
    pub orgnr: String,
    pub vendor: String,
    pub device: String,
    pub kind: MessageKind,
}

impl fmt::Display for DeviceTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.orgnr,
            self.vendor,
            self.device,
            self.kind.as_str()
        )
    }
}

/// The topics of one gateway: which it subscribes to and where dead
/// letters go. Both prefixes are configurable so tests and several hubs can
/// share a broker.
#[derive(Debug, Clone)]
pub struct Scheme {
    prefix: String,
    dead_letter_prefix: String,
    vendor: String,
}

impl Scheme {
    /// `prefix` and `dead_letter_prefix` without trailing `/`; `vendor` is
    /// the vendor whose certificate the gateway presents.
    pub fn new(prefix: &str, dead_letter_prefix: &str, vendor: &str) -> Result<Scheme, String> {
        for (what, p) in [
            ("topic prefix", prefix),
            ("dead-letter prefix", dead_letter_prefix),
        ] {
            if p.is_empty() || p.contains(['+', '#']) || p.ends_with('/') || p.starts_with('/') {
                return Err(format!(
                    "{what} {p:?} must be non-empty, without wildcards (+, #) or a leading/trailing '/'"
                ));
            }
        }
        if vendor.is_empty() || vendor.contains(['+', '#', '/']) {
            return Err(format!(
                "vendor id {vendor:?} cannot be a topic level (no '/', '+' or '#')"
            ));
        }
        if dead_letter_prefix == prefix {
            return Err("the dead-letter prefix must differ from the topic prefix".into());
        }
        Ok(Scheme {
            prefix: prefix.to_string(),
            dead_letter_prefix: dead_letter_prefix.to_string(),
            vendor: vendor.to_string(),
        })
    }

    /// The subscription: every municipality and device of this vendor.
    pub fn filter(&self) -> String {
        format!("{}/+/{}/+/+", self.prefix, self.vendor)
    }

    /// The topic a device publishes `kind` on.
    pub fn device_topic(&self, orgnr: &str, device: &str, kind: MessageKind) -> String {
        format!(
            "{}/{orgnr}/{}/{device}/{}",
            self.prefix,
            self.vendor,
            kind.as_str()
        )
    }

    /// Where a message that could not be submitted is published.
    pub fn dead_letter_topic(&self, t: &DeviceTopic) -> String {
        format!("{}/{t}", self.dead_letter_prefix)
    }

    /// Where a message whose topic does not follow the scheme is published.
    pub fn dead_letter_unparsed(&self) -> String {
        format!("{}/_unparsed/{}", self.dead_letter_prefix, self.vendor)
    }

    /// Parses a topic this gateway received.
    pub fn parse(&self, topic: &str) -> Result<DeviceTopic, String> {
        let rest = topic
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| format!("topic {topic:?} does not start with {}/", self.prefix))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [orgnr, vendor, device, kind] = parts[..] else {
            return Err(format!(
                "topic {topic:?} must be {}/{{orgnr}}/{{vendor}}/{{device}}/{{measurement|alarm|note}}",
                self.prefix
            ));
        };
        if vendor != self.vendor {
            return Err(format!(
                "topic names vendor {vendor:?}, this gateway submits for {:?}",
                self.vendor
            ));
        }
        if device.is_empty() || device.len() > 128 {
            return Err("the device level of the topic must be 1-128 characters".into());
        }
        let kind = MessageKind::parse(kind).ok_or_else(|| {
            format!("topic ends in {kind:?}; expected measurement, alarm or note")
        })?;
        Ok(DeviceTopic {
            orgnr: orgnr.to_string(),
            vendor: vendor.to_string(),
            device: device.to_string(),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let s = Scheme::new("knutepunkt/v1", "knutepunkt/dead-letter/v1", "acme").unwrap();
        assert_eq!(s.filter(), "knutepunkt/v1/+/acme/+/+");
        let t = s.device_topic("958935420", "bed-7", MessageKind::Alarm);
        assert_eq!(t, "knutepunkt/v1/958935420/acme/bed-7/alarm");
        let p = s.parse(&t).unwrap();
        assert_eq!(p.device, "bed-7");
        assert_eq!(p.kind, MessageKind::Alarm);
        assert_eq!(
            s.dead_letter_topic(&p),
            "knutepunkt/dead-letter/v1/958935420/acme/bed-7/alarm"
        );
        assert!(s.parse("knutepunkt/v1/958935420/acme/bed-7/photo").is_err());
        assert!(
            s.parse("knutepunkt/v1/958935420/other/bed-7/alarm")
                .is_err()
        );
        assert!(s.parse("knutepunkt/v1/958935420/acme/alarm").is_err());
        assert!(Scheme::new("a/#", "b", "acme").is_err());
        assert!(Scheme::new("a", "a", "acme").is_err());
    }
}
