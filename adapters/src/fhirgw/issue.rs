//! What went wrong with one resource, as the gateway tells the platform:
//! an HTTP status, a FHIR issue type and the element (FHIRPath-like, e.g.
//! `Observation.valueQuantity.unit`). Rendered as an OperationOutcome.
//!
//! **Invariant: no national id in a diagnostic.** Messages name elements
//! and echo codes and units, never a subject's identifier value.

use serde_json::{Value, json};

/// One problem with a request or an entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// HTTP status the entry (or request) is answered with.
    pub status: u16,
    /// FHIR `OperationOutcome.issue.code` (issue-type value set).
    pub code: &'static str,
    /// The element, e.g. `Observation.valueQuantity.unit`; `None` for the
    /// resource as a whole.
    pub expression: Option<String>,
    /// What is wrong and what to send instead.
    pub diagnostics: String,
}

impl Issue {
    fn new(
        status: u16,
        code: &'static str,
        expr: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        let expr = expr.into();
        Issue {
            status,
            code,
            expression: (!expr.is_empty()).then_some(expr),
            diagnostics: msg.into(),
        }
    }

    /// 422, `required`: a needed element is absent.
    pub fn required(expr: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::new(422, "required", expr, msg)
    }

    /// 422, `value`: an element has a value the gateway cannot use.
    pub fn value(expr: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::new(422, "value", expr, msg)
    }

    /// 422, `code-invalid`: a code or unit the gateway cannot map.
    pub fn code_invalid(expr: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::new(422, "code-invalid", expr, msg)
    }

    /// 422, `not-supported`: valid FHIR, but not something the hub takes.
    pub fn not_supported(expr: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::new(422, "not-supported", expr, msg)
    }

    /// 400, `structure`: not the JSON shape FHIR defines.
    pub fn structure(expr: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::new(400, "structure", expr, msg)
    }

    /// Any status with any issue type.
    pub fn other(
        status: u16,
        code: &'static str,
        expr: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Self::new(status, code, expr, msg)
    }

    /// The OperationOutcome for this issue.
    pub fn outcome(&self) -> Value {
        let severity = if self.status >= 500 { "fatal" } else { "error" };
        let mut issue = json!({
            "severity": severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if let Some(e) = &self.expression {
            issue["expression"] = json!([e]);
        }
        json!({ "resourceType": "OperationOutcome", "issue": [issue] })
    }
}

/// An OperationOutcome with one informational issue.
pub fn information(text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "information", "code": "informational", "diagnostics": text }]
    })
}

/// `"201 Created"` and the like, for `Bundle.entry.response.status`.
pub fn status_line(status: u16) -> String {
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}").trim_end().to_string()
}
