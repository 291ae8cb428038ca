//! Failure switches: how the adapter answers, settable at start and at run
//! time, so tests can make the EPJ look down, slow, overloaded or picky
//! without restarting it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the adapter answers `POST /fhir`. `/_admin/*` always answers normally.
///
/// JSON form (the body of `POST /_admin/mode`):
/// `{"mode":"ok"}`, `{"mode":"down"}`, `{"mode":"slow","delay_ms":500}`,
/// `{"mode":"error500"}`, `{"mode":"error429","retry_after_secs":5}`,
/// `{"mode":"reject422","reject_codes":["4.1"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum Mode {
    /// Process every Bundle.
    Ok,
    /// Complete the TLS handshake, read the request, then close the
    /// connection without an HTTP answer, as a dead backend behind a load
    /// balancer looks. Nothing is written.
    Down,
    /// Process the Bundle, then hold the answer for `delay_ms`. A client that
    /// times out meanwhile finds the resources already written on its retry
    /// (and gets `200 OK` for them), as with a real slow EPJ.
    Slow {
        /// Milliseconds to hold every answer.
        #[serde(default = "default_delay_ms")]
        delay_ms: u64,
    },
    /// Answer `500 Internal Server Error` with an OperationOutcome; nothing
    /// is written.
    Error500,
    /// Answer `429 Too Many Requests` with `Retry-After: retry_after_secs`
    /// and an OperationOutcome; nothing is written.
    Error429 {
        /// Value of the `Retry-After` header, in seconds.
        #[serde(default = "default_retry_after_secs")]
        retry_after_secs: u64,
    },
    /// Answer `422 Unprocessable Entity` with an OperationOutcome when any
    /// entry matches `reject_codes` (a Communication `reasonCode` or an
    /// Observation `code`/`component.code`), or for every Bundle when the
    /// list is empty. A transaction is all-or-nothing: one rejected entry
    /// rejects the whole Bundle and nothing of it is written.
    Reject422 {
        /// Codes to reject; empty means reject everything.
        #[serde(default)]
        reject_codes: Vec<String>,
    },
}

fn default_delay_ms() -> u64 {
    1000
}

fn default_retry_after_secs() -> u64 {
    1
}

impl Mode {
    /// The extra time to hold an answer in this mode.
    pub fn delay(&self) -> Option<Duration> {
        match self {
            Mode::Slow { delay_ms } => Some(Duration::from_millis(*delay_ms)),
            _ => None,
        }
    }

    /// Parses the `--mode` flag: a mode name, with `--delay-ms`,
    /// `--retry-after-secs` and `--reject-code` supplying its parameters.
    pub fn from_flags(
        name: &str,
        delay_ms: u64,
        retry_after_secs: u64,
        reject_codes: Vec<String>,
    ) -> Result<Mode, String> {
        match name {
            "ok" => Ok(Mode::Ok),
            "down" => Ok(Mode::Down),
            "slow" => Ok(Mode::Slow { delay_ms }),
            "error500" => Ok(Mode::Error500),
            "error429" => Ok(Mode::Error429 { retry_after_secs }),
            "reject422" => Ok(Mode::Reject422 { reject_codes }),
            other => Err(format!(
                "unknown mode {other:?}: use one of ok, down, slow, error500, error429, reject422"
            )),
        }
    }
}

/// The current mode, shared by the request handlers and the admin API.
#[derive(Debug, Clone)]
pub struct ModeSwitch(Arc<RwLock<Mode>>);

impl ModeSwitch {
    /// A switch starting in `mode`.
    pub fn new(mode: Mode) -> Self {
        ModeSwitch(Arc::new(RwLock::new(mode)))
    }

    /// The mode now in force.
    pub fn get(&self) -> Mode {
        match self.0.read() {
            Ok(g) => g.clone(),
            // A panic while holding the lock cannot leave a Mode half-written.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the mode; returns the previous one.
    pub fn set(&self, mode: Mode) -> Mode {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::replace(&mut *g, mode)
    }

    /// True when requests must be dropped without an answer.
    pub fn is_down(&self) -> bool {
        matches!(self.get(), Mode::Down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Mode, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn json_forms() {
        assert_eq!(parse(r#"{"mode":"ok"}"#).ok(), Some(Mode::Ok));
        assert_eq!(parse(r#"{"mode":"down"}"#).ok(), Some(Mode::Down));
        assert_eq!(
            parse(r#"{"mode":"slow","delay_ms":250}"#).ok(),
            Some(Mode::Slow { delay_ms: 250 })
        );
        assert_eq!(
            parse(r#"{"mode":"slow"}"#).ok(),
            Some(Mode::Slow { delay_ms: 1000 })
        );
        assert_eq!(
            parse(r#"{"mode":"error429","retry_after_secs":7}"#).ok(),
            Some(Mode::Error429 {
                retry_after_secs: 7
            })
        );
        assert_eq!(
            parse(r#"{"mode":"reject422","reject_codes":["4.1"]}"#).ok(),
            Some(Mode::Reject422 {
                reject_codes: vec!["4.1".into()]
            })
        );
        assert_eq!(
            parse(r#"{"mode":"reject422"}"#).ok(),
            Some(Mode::Reject422 {
                reject_codes: vec![]
            })
        );
    }

    #[test]
    fn rejects_unknown_modes_and_fields() {
        assert!(parse(r#"{"mode":"sideways"}"#).is_err());
        assert!(parse(r#"{"mode":"slow","delay":5}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
    }

    #[test]
    fn round_trip() {
        let m = Mode::Error429 {
            retry_after_secs: 3,
        };
        let s = serde_json::to_string(&m).unwrap_or_default();
        assert_eq!(s, r#"{"mode":"error429","retry_after_secs":3}"#);
    }
}
