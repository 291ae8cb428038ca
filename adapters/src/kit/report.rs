//! The conformance report: one [`Check`] per rule, as text for people and
//! as JUnit XML for CI systems and agreement applications.
//!
//! The JUnit XML is written by hand: it is five element kinds with escaped
//! text, and a crate for it would pull an XML writer and several other
//! dependencies into every adapter build on a machine where build time is
//! scarce.

use std::fmt::Write as _;
use std::time::Duration;

/// The outcome of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// What went wrong, naming the answer the rule did not allow.
    Fail(String),
    /// Why the rule could not be exercised against this target.
    Skip(String),
}

/// One rule of the contract, checked once.
#[derive(Debug, Clone)]
pub struct Check {
    /// Stable rule id, e.g. `idempotency.duplicate`.
    pub rule: &'static str,
    /// What the rule says, in one line.
    pub title: &'static str,
    pub verdict: Verdict,
    /// What was seen (answers, resources, retries), kept for the report.
    pub detail: String,
    pub took: Duration,
}

/// All checks of one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: String,
    pub vendor_note: String,
    pub checks: Vec<Check>,
    /// Attempts the kit repeated after UNAVAILABLE, timeouts and rate limits.
    pub retries: u64,
    /// Streams the kit opened again after one broke.
    pub reconnects: u64,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Fail(_)))
            .count()
    }

    pub fn skipped(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Skip(_)))
            .count()
    }

    pub fn passed(&self) -> bool {
        self.failed() == 0 && !self.checks.is_empty()
    }

    /// The report for people: one line per rule, then the verdict.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Knutepunkt conformance report");
        let _ = writeln!(s, "target: {}", self.target);
        if !self.vendor_note.is_empty() {
            let _ = writeln!(s, "{}", self.vendor_note);
        }
        let _ = writeln!(s);
        for c in &self.checks {
            let (mark, why) = match &c.verdict {
                Verdict::Pass => ("PASS", String::new()),
                Verdict::Fail(w) => ("FAIL", format!("\n      why: {w}")),
                Verdict::Skip(w) => ("SKIP", format!("\n      why: {w}")),
            };
            let _ = writeln!(
                s,
                "{mark}  {:<40} {} ({} ms){why}",
                c.rule,
                c.title,
                c.took.as_millis()
            );
            if !c.detail.is_empty() && !matches!(c.verdict, Verdict::Pass) {
                let _ = writeln!(s, "      seen: {}", c.detail);
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{} rules: {} passed, {} failed, {} skipped; {} retries, {} stream reconnects",
            self.checks.len(),
            self.checks.len() - self.failed() - self.skipped(),
            self.failed(),
            self.skipped(),
            self.retries,
            self.reconnects
        );
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Fail(_)))
            .map(|c| c.rule)
            .collect();
        if self.passed() {
            let _ = writeln!(s, "RESULT: PASS");
        } else {
            let _ = writeln!(s, "RESULT: FAIL ({})", failed.join(", "));
        }
        s
    }

    /// JUnit XML: one `<testsuite>`, one `<testcase>` per rule.
    pub fn junit(&self) -> String {
        let total: f64 = self.checks.iter().map(|c| c.took.as_secs_f64()).sum();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            s,
            "<testsuites name=\"knutepunkt-conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.3}\">",
            self.checks.len(),
            self.failed(),
            self.skipped()
        );
        let _ = writeln!(
            s,
            "  <testsuite name=\"knutepunkt.v1.VendorIngestService\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.3}\">",
            self.checks.len(),
            self.failed(),
            self.skipped()
        );
        let _ = writeln!(s, "    <properties>");
        let _ = writeln!(
            s,
            "      <property name=\"target\" value=\"{}\"/>",
            xml(&self.target)
        );
        let _ = writeln!(
            s,
            "      <property name=\"retries\" value=\"{}\"/>",
            self.retries
        );
        let _ = writeln!(
            s,
            "      <property name=\"reconnects\" value=\"{}\"/>",
            self.reconnects
        );
        let _ = writeln!(s, "    </properties>");
        for c in &self.checks {
            let _ = write!(
                s,
                "    <testcase classname=\"knutepunkt.conformance\" name=\"{}\" time=\"{:.3}\"",
                xml(c.rule),
                c.took.as_secs_f64()
            );
            match &c.verdict {
                Verdict::Pass => {
                    let _ = writeln!(s, "/>");
                }
                Verdict::Fail(why) => {
                    let _ = writeln!(s, ">");
                    let _ = writeln!(
                        s,
                        "      <failure message=\"{}\">{}: {}\nseen: {}</failure>",
                        xml(why),
                        xml(c.title),
                        xml(why),
                        xml(&c.detail)
                    );
                    let _ = writeln!(s, "    </testcase>");
                }
                Verdict::Skip(why) => {
                    let _ = writeln!(s, ">");
                    let _ = writeln!(s, "      <skipped message=\"{}\"/>", xml(why));
                    let _ = writeln!(s, "    </testcase>");
                }
            }
        }
        let _ = writeln!(s, "  </testsuite>");
        let _ = writeln!(s, "</testsuites>");
        s
    }
}

/// Escapes text for XML content and attribute values; drops the control
/// characters XML 1.0 does not allow.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rule: &'static str, verdict: Verdict) -> Check {
        Check {
            rule,
            title: "a rule",
            verdict,
            detail: "answer <x> & \"y\"".into(),
            took: Duration::from_millis(3),
        }
    }

    #[test]
    fn junit_names_the_failed_rule_and_escapes() {
        let r = Report {
            target: "127.0.0.1:1".into(),
            checks: vec![
                check("a.ok", Verdict::Pass),
                check("b.bad", Verdict::Fail("got <ACCEPTED>".into())),
                check("c.skip", Verdict::Skip("no".into())),
            ],
            ..Report::default()
        };
        let x = r.junit();
        assert!(
            x.contains("tests=\"3\" failures=\"1\" skipped=\"1\""),
            "{x}"
        );
        assert!(x.contains("name=\"b.bad\""), "{x}");
        assert!(x.contains("got &lt;ACCEPTED&gt;"), "{x}");
        assert!(!x.contains("<x>"), "{x}");
        assert!(!r.passed());
        assert!(r.text().contains("RESULT: FAIL (b.bad)"));
    }

    #[test]
    fn an_empty_run_does_not_pass() {
        assert!(!Report::default().passed());
    }
}
