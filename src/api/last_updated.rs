//! `_lastUpdated` search values → inclusive sequence ranges.
//!
//! A resource's sequence number is its `meta.lastUpdated` in microseconds, so
//! a `_lastUpdated` filter is a key range in the store, not a scan. This
//! module turns one FHIR `date` search value (prefix + `dateTime` of any
//! precision) into that range, following the FHIR R4 search rules: a value
//! stands for the whole interval of its precision (`2024-03` is all of
//! March), and the prefix compares the resource's instant with that
//! interval. Values without a time (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) are
//! intervals in UTC; a value with a time must carry `Z` or an offset.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};

use crate::store::time_to_seq;

/// The FHIR comparison prefixes the hub supports for `_lastUpdated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

/// An inclusive range of sequence numbers; empty when `min > max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub min: u64,
    pub max: u64,
}

impl SeqRange {
    pub const ALL: SeqRange = SeqRange {
        min: 0,
        max: u64::MAX,
    };
    pub const EMPTY: SeqRange = SeqRange {
        min: u64::MAX,
        max: 0,
    };

    pub fn is_empty(&self) -> bool {
        self.min > self.max
    }

    /// Both ranges at once (FHIR ANDs repeated parameters).
    pub fn intersect(self, other: SeqRange) -> SeqRange {
        SeqRange {
            min: self.min.max(other.min),
            max: self.max.min(other.max),
        }
    }
}

/// The half-open interval `[start, end)` a FHIR `dateTime` value stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What `_lastUpdated` accepts, for error messages and the CapabilityStatement.
pub const FORMAT_HELP: &str = "a FHIR dateTime with an optional prefix eq, gt, ge, lt or le: YYYY, YYYY-MM, YYYY-MM-DD (a UTC day), YYYY-MM-DDThh:mm[:ss[.fraction]] followed by Z or +hh:mm/-hh:mm";

/// Parses one `_lastUpdated` value (`ge2024-03-01`, `2024`, `lt2024-03-01T10:00:00+01:00`)
/// into the sequence numbers it selects. The error says what is wrong, never
/// what was sent.
pub fn parse(value: &str) -> Result<SeqRange, String> {
    let (prefix, rest) = split_prefix(value)?;
    let iv = parse_interval(rest)?;
    Ok(range(prefix, iv))
}

fn split_prefix(value: &str) -> Result<(Prefix, &str), String> {
    let b = value.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1].is_ascii_alphabetic() {
        let p = match &value[..2] {
            "eq" => Prefix::Eq,
            "gt" => Prefix::Gt,
            "ge" => Prefix::Ge,
            "lt" => Prefix::Lt,
            "le" => Prefix::Le,
            "ne" | "sa" | "eb" | "ap" => {
                return Err(
                    "the prefixes ne, sa, eb and ap are not supported; use eq, gt, ge, lt or le (repeat _lastUpdated to combine them)"
                        .into(),
                );
            }
            _ => return Err(format!("unknown prefix; expected {FORMAT_HELP}")),
        };
        Ok((p, &value[2..]))
    } else {
        Ok((Prefix::Eq, value))
    }
}

/// The sequence numbers whose instant compares to `iv` as `prefix` says.
pub fn range(prefix: Prefix, iv: Interval) -> SeqRange {
    let first_at_start = first_seq_at_or_after(iv.start);
    let first_at_end = first_seq_at_or_after(iv.end);
    let below = |first: u64| match first.checked_sub(1) {
        Some(max) => SeqRange { min: 0, max },
        None => SeqRange::EMPTY,
    };
    match prefix {
        Prefix::Eq => below(first_at_end).intersect(SeqRange {
            min: first_at_start,
            max: u64::MAX,
        }),
        Prefix::Gt => SeqRange {
            min: first_at_end,
            max: u64::MAX,
        },
        Prefix::Ge => SeqRange {
            min: first_at_start,
            max: u64::MAX,
        },
        Prefix::Lt => below(first_at_start),
        Prefix::Le => below(first_at_end),
    }
}

/// The smallest sequence number whose instant is at or after `t`
/// (`time_to_seq` rounded up when `t` has a sub-microsecond part).
fn first_seq_at_or_after(t: DateTime<Utc>) -> u64 {
    if t.timestamp_micros() < 0 {
        return 0;
    }
    let sub_micro = !t.timestamp_subsec_nanos().is_multiple_of(1_000);
    time_to_seq(t) + u64::from(sub_micro)
}

/// Parses a FHIR `dateTime` search value into the interval its precision covers.
pub fn parse_interval(s: &str) -> Result<Interval, String> {
    let t = Text(s.as_bytes());
    let year = t
        .num(0, 4)
        .filter(|&y| y >= 1)
        .ok_or_else(|| bad("the year must be 4 digits, 0001 to 9999"))?;
    let year = year as i32;
    if t.len() == 4 {
        return Ok(Interval {
            start: utc_midnight(year, 1, 1)?,
            end: utc_midnight(year + 1, 1, 1)?,
        });
    }
    if !t.sep(4, b'-') {
        return Err(bad("a '-' must follow the year"));
    }
    let month = t
        .num(5, 2)
        .filter(|m| (1..=12).contains(m))
        .ok_or_else(|| bad("the month must be 2 digits, 01 to 12"))?;
    if t.len() == 7 {
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        return Ok(Interval {
            start: utc_midnight(year, month, 1)?,
            end: utc_midnight(ny, nm, 1)?,
        });
    }
    if !t.sep(7, b'-') {
        return Err(bad("a '-' must follow the month"));
    }
    let day = t.num(8, 2).ok_or_else(|| bad("the day must be 2 digits"))?;
    let date = NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| bad("the day does not exist in that month"))?;
    if t.len() == 10 {
        let start = date.and_time(NaiveTime::MIN).and_utc();
        return Ok(Interval {
            start,
            end: start + Duration::days(1),
        });
    }
    if !t.sep(10, b'T') {
        return Err(bad("a 'T' and a time, or nothing, must follow the day"));
    }
    let (time, width, at) = time_of_day(&t)?;
    let offset_secs = offset(&t, at)?;
    let local = NaiveDateTime::new(date, time);
    let start = (local - TimeDelta::seconds(offset_secs)).and_utc();
    Ok(Interval {
        start,
        end: start + width,
    })
}

fn bad(what: &str) -> String {
    format!("{what}; expected {FORMAT_HELP}")
}

/// A dateTime's bytes, read by position (the format is fixed-width up to
/// the fraction of a second).
struct Text<'a>(&'a [u8]);

impl Text<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// The `len` digits at `from` as a number; `None` if any is not a digit.
    fn num(&self, from: usize, len: usize) -> Option<u32> {
        let part = self.0.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0')))
    }

    fn sep(&self, at: usize, c: u8) -> bool {
        self.0.get(at) == Some(&c)
    }
}

/// The time after the `T` (hh:mm, :ss, .fraction): the time, the width of
/// its precision, and where the time zone starts.
fn time_of_day(t: &Text<'_>) -> Result<(NaiveTime, TimeDelta, usize), String> {
    let hour = t
        .num(11, 2)
        .filter(|&h| h <= 23)
        .ok_or_else(|| bad("the hour must be 2 digits, 00 to 23"))?;
    if !t.sep(13, b':') {
        return Err(bad("a ':' and the minutes must follow the hour"));
    }
    let minute = t
        .num(14, 2)
        .filter(|&m| m <= 59)
        .ok_or_else(|| bad("the minutes must be 2 digits, 00 to 59"))?;
    let mut at = 16;
    let mut second = 0;
    let mut nanos = 0u32;
    let mut width = TimeDelta::minutes(1);
    if t.sep(at, b':') {
        second = t
            .num(17, 2)
            .filter(|&s| s <= 59)
            .ok_or_else(|| bad("the seconds must be 2 digits, 00 to 59"))?;
        at = 19;
        width = TimeDelta::seconds(1);
        if t.sep(at, b'.') {
            let digits = t.0[at + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits == 0 || digits > 9 {
                return Err(bad("a fraction of a second must have 1 to 9 digits"));
            }
            let frac = t.num(at + 1, digits).unwrap_or(0);
            let scale = 10u32.pow(9 - digits as u32);
            nanos = frac * scale;
            width = TimeDelta::nanoseconds(i64::from(scale));
            at += 1 + digits;
        }
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)
        .ok_or_else(|| bad("the time does not exist"))?;
    Ok((time, width, at))
}

/// The time zone at `at` (Z, +hh:mm or -hh:mm, to the end) in seconds east.
fn offset(t: &Text<'_>, at: usize) -> Result<i64, String> {
    match t.0.get(at) {
        Some(b'Z') if t.len() == at + 1 => Ok(0),
        Some(&sign @ (b'+' | b'-')) if t.len() == at + 6 && t.sep(at + 3, b':') => {
            let (oh, om) = match (t.num(at + 1, 2), t.num(at + 4, 2)) {
                (Some(h), Some(m)) if m <= 59 && (h < 14 || (h == 14 && m == 0)) => (h, m),
                _ => return Err(bad("the offset must be +hh:mm or -hh:mm, at most 14:00")),
            };
            let secs = i64::from(oh * 3600 + om * 60);
            Ok(if sign == b'+' { secs } else { -secs })
        }
        None => Err(bad(
            "a time needs a time zone (Z or an offset such as +01:00)",
        )),
        _ => Err(bad("unexpected characters after the time")),
    }
}

fn utc_midnight(year: i32, month: u32, day: u32) -> Result<DateTime<Utc>, String> {
    NaiveDate::from_ymd_opt(year, month, day)
        .map(|d| d.and_time(NaiveTime::MIN).and_utc())
        .ok_or_else(|| format!("the date is out of range; expected {FORMAT_HELP}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc)
    }

    fn us(s: &str) -> u64 {
        time_to_seq(t(s))
    }

    fn iv(s: &str) -> Interval {
        parse_interval(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn r(s: &str) -> SeqRange {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_precision() {
        let cases = [
            ("2024", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"),
            ("2024-02", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"),
            ("2024-12", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"),
            ("2024-02-29", "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"),
            (
                "2024-03-01T10:15Z",
                "2024-03-01T10:15:00Z",
                "2024-03-01T10:16:00Z",
            ),
            (
                "2024-03-01T10:15:30Z",
                "2024-03-01T10:15:30Z",
                "2024-03-01T10:15:31Z",
            ),
            (
                "2024-03-01T10:15:30.5Z",
                "2024-03-01T10:15:30.5Z",
                "2024-03-01T10:15:30.6Z",
            ),
            (
                "2024-03-01T10:15:30.123456Z",
                "2024-03-01T10:15:30.123456Z",
                "2024-03-01T10:15:30.123457Z",
            ),
            (
                "2024-03-01T10:15:30.123456789Z",
                "2024-03-01T10:15:30.123456789Z",
                "2024-03-01T10:15:30.12345679Z",
            ),
            (
                "2024-03-01T10:15:30+01:00",
                "2024-03-01T09:15:30Z",
                "2024-03-01T09:15:31Z",
            ),
            (
                "2024-03-01T00:30:00-05:30",
                "2024-03-01T06:00:00Z",
                "2024-03-01T06:00:01Z",
            ),
            (
                "2024-03-01T10:15:30+14:00",
                "2024-02-29T20:15:30Z",
                "2024-02-29T20:15:31Z",
            ),
            ("9999", "9999-01-01T00:00:00Z", "10000-01-01T00:00:00Z"),
        ];
        for (input, start, end) in cases {
            let got = iv(input);
            assert_eq!(got.start, t(start), "{input} start");
            if end.starts_with("10000") {
                assert_eq!(got.end.timestamp(), 253_402_300_800, "{input} end");
            } else {
                assert_eq!(got.end, t(end), "{input} end");
            }
        }
    }

    #[test]
    fn every_prefix() {
        let day_start = us("2024-03-01T00:00:00Z");
        let next_day = us("2024-03-02T00:00:00Z");
        assert_eq!(
            r("2024-03-01"),
            SeqRange {
                min: day_start,
                max: next_day - 1
            }
        );
        assert_eq!(r("eq2024-03-01"), r("2024-03-01"));
        assert_eq!(
            r("gt2024-03-01"),
            SeqRange {
                min: next_day,
                max: u64::MAX
            }
        );
        assert_eq!(
            r("ge2024-03-01"),
            SeqRange {
                min: day_start,
                max: u64::MAX
            }
        );
        assert_eq!(
            r("lt2024-03-01"),
            SeqRange {
                min: 0,
                max: day_start - 1
            }
        );
        assert_eq!(
            r("le2024-03-01"),
            SeqRange {
                min: 0,
                max: next_day - 1
            }
        );
    }

    #[test]
    fn instant_boundaries_are_exact() {
        let s = us("2024-03-01T10:00:00Z");
        assert_eq!(r("ge2024-03-01T10:00:00Z").min, s);
        assert_eq!(r("gt2024-03-01T10:00:00Z").min, s + 1_000_000);
        assert_eq!(r("lt2024-03-01T10:00:00Z").max, s - 1);
        assert_eq!(r("le2024-03-01T10:00:00Z").max, s + 999_999);
        assert_eq!(r("gt2024-03-01T10:00:00.000001Z").min, s + 2);
        // Sub-microsecond boundaries round to the microseconds inside them.
        assert_eq!(r("ge2024-03-01T10:00:00.0000005Z").min, s + 1);
        assert_eq!(r("lt2024-03-01T10:00:00.0000005Z").max, s);
        assert!(r("2024-03-01T10:00:00.0000005Z").is_empty());
    }

    #[test]
    fn before_the_epoch() {
        assert!(r("lt1970-01-01").is_empty());
        assert!(r("1969").is_empty());
        assert_eq!(r("le1970-01-01").max, 86_400_000_000 - 1);
        assert_eq!(r("gt1900").min, 0);
    }

    #[test]
    fn intersect() {
        let a = r("ge2024-03-01").intersect(r("lt2024-03-02"));
        assert_eq!(a, r("2024-03-01"));
        assert!(r("gt2024").intersect(r("lt2024")).is_empty());
        assert!(SeqRange::EMPTY.is_empty());
        assert!(!SeqRange::ALL.is_empty());
    }

    #[test]
    fn bad_inputs() {
        let bad = [
            "",
            "ge",
            "24",
            "202",
            "0000",
            "20244",
            "2024-",
            "2024-1",
            "2024-13",
            "2024-00",
            "2024/03",
            "2024-02-30",
            "2023-02-29",
            "2024-03-1",
            "2024-03-01T",
            "2024-03-01 10:00:00Z",
            "2024-03-01T10Z",
            "2024-03-01T24:00:00Z",
            "2024-03-01T10:60:00Z",
            "2024-03-01T10:00:60Z",
            "2024-03-01T10:00:00",
            "2024-03-01T10:00",
            "2024-03-01T10:00:00.Z",
            "2024-03-01T10:00:00.1234567890Z",
            "2024-03-01T10:00:00+0100",
            "2024-03-01T10:00:00+01",
            "2024-03-01T10:00:00+15:00",
            "2024-03-01T10:00:00+14:30",
            "2024-03-01T10:00:00+01:60",
            "2024-03-01T10:00:00 01:00",
            "2024-03-01T10:00:00ZZ",
            "2024-03-01T10:00:00z",
            "2024-03-01Z",
            "xx2024",
            "ne2024",
            "sa2024",
            "eb2024",
            "ap2024",
            "GT2024",
            "ge-2024",
            "２０２４",
        ];
        for v in bad {
            assert!(parse(v).is_err(), "{v:?} should be rejected");
        }
    }

    #[test]
    fn errors_do_not_echo_the_value() {
        let v = "12345678901";
        let e = parse(v).err().unwrap_or_default();
        assert!(!e.contains(v), "{e}");
        assert!(e.contains("YYYY-MM-DD"), "{e}");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// An instant at microsecond precision selects exactly its own
        /// sequence number, and the prefixes split the line around it.
        #[test]
        fn instant_round_trip(micros in 0i64..253_402_300_799_999_999, offset_min in -14i64 * 60..=14 * 60) {
            let t = DateTime::from_timestamp_micros(micros).unwrap_or_default();
            let offset = chrono::FixedOffset::east_opt((offset_min * 60) as i32)
                .unwrap_or_else(|| panic!("offset within ±14:00"));
            let local = t.with_timezone(&offset);
            let s = local.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            prop_assume!(local.format("%Y").to_string().len() == 4);
            let seq = micros as u64;
            prop_assert_eq!(parse(&s), Ok(SeqRange { min: seq, max: seq }));
            prop_assert_eq!(parse(&format!("ge{s}")).map(|r| r.min), Ok(seq));
            prop_assert_eq!(parse(&format!("gt{s}")).map(|r| r.min), Ok(seq + 1));
            prop_assert_eq!(parse(&format!("le{s}")).map(|r| r.max), Ok(seq));
            let lt = parse(&format!("lt{s}")).unwrap_or(SeqRange::ALL);
            if seq == 0 { prop_assert!(lt.is_empty()); } else { prop_assert_eq!(lt.max, seq - 1); }
        }

        /// Whatever is sent, parsing answers (never panics).
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }
    }
}
