//! Errors of the FHIR API, answered as FHIR `OperationOutcome`s.
//!
//! Every failure a handler can meet becomes one [`ApiError`]: the HTTP
//! status, the FHIR issue type and a sentence telling the client what to
//! change. Messages are written here and in the parsers, never copied from a
//! request, so no national id can be echoed back (and store failures are
//! logged, not shown).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json";

/// FHIR `IssueType` codes the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    /// Malformed input (`invalid`).
    Invalid,
    /// Input the hub does not support (`not-supported`).
    NotSupported,
    /// No such resource or endpoint (`not-found`).
    NotFound,
    /// The hub failed (`exception`).
    Exception,
    /// The hub cannot serve now (`transient`).
    Transient,
    /// No valid credential (`login`).
    Login,
    /// The credential does not allow this (`forbidden`).
    Forbidden,
}

impl IssueType {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::NotSupported => "not-supported",
            IssueType::NotFound => "not-found",
            IssueType::Exception => "exception",
            IssueType::Transient => "transient",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
        }
    }
}

/// A failed FHIR request: answered as an `OperationOutcome`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub issue: IssueType,
    /// Shown to the client as `diagnostics`. Never contains request values.
    pub message: String,
    /// For 405: the methods the endpoint accepts (`Allow` header).
    pub allow: Option<&'static str>,
    /// For 401/403: the `WWW-Authenticate` challenge.
    pub challenge: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, issue: IssueType, message: impl Into<String>) -> Self {
        ApiError {
            status,
            issue,
            message: message.into(),
            allow: None,
            challenge: None,
        }
    }

    /// 400: a malformed parameter or request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueType::Invalid, message)
    }

    /// 400: a parameter, modifier or value the hub does not support.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueType::NotSupported, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, message)
    }

    /// 405 with the `Allow` header.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                IssueType::NotSupported,
                format!(
                    "this FHIR endpoint is read-only and accepts only {allow}; the hub receives events over gRPC"
                ),
            )
        }
    }

    /// 406: the client asked for a format other than FHIR JSON.
    pub fn not_acceptable() -> Self {
        Self::new(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            "this server answers only in JSON: send Accept: application/fhir+json (or application/json, or */*) and _format=json if you use _format",
        )
    }

    /// 401 with a `Bearer` challenge; `error` is the RFC 6750 error code
    /// (`invalid_token`) or `None` when no token was sent.
    pub fn unauthorized(error: Option<&str>, message: impl Into<String>) -> Self {
        let challenge = match error {
            Some(e) => format!("Bearer realm=\"knutepunkt\", error=\"{e}\""),
            None => "Bearer realm=\"knutepunkt\"".to_string(),
        };
        ApiError {
            challenge: Some(challenge),
            ..Self::new(StatusCode::UNAUTHORIZED, IssueType::Login, message)
        }
    }

    /// 403: the token is valid but its scopes do not cover the request.
    pub fn insufficient_scope(scope: &str) -> Self {
        ApiError {
            challenge: Some(format!(
                "Bearer realm=\"knutepunkt\", error=\"insufficient_scope\", scope=\"{scope}\""
            )),
            ..Self::new(
                StatusCode::FORBIDDEN,
                IssueType::Forbidden,
                format!(
                    "the access token lacks the scope {scope}; ask the hub operator to grant it and request a new token with it"
                ),
            )
        }
    }

    /// 403 for other reasons than scope.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, IssueType::Forbidden, message)
    }

    /// 500: the audit record could not be written, so nothing is served.
    pub fn audit_failed() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            "the hub could not write the audit record of this access, so it serves no data; retry later",
        )
    }

    /// 500: the store failed. The detail goes to the log, not the client.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            "the hub could not read its store; nothing is wrong with the request, retry later",
        )
    }

    /// The `OperationOutcome` JSON of this error.
    pub fn outcome_json(&self) -> String {
        outcome_json(self.issue, &self.message)
    }
}

/// An `OperationOutcome` with one error issue.
pub fn outcome_json(issue: IssueType, message: &str) -> String {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": issue.as_str(),
            "diagnostics": message,
        }]
    })
    .to_string()
}

/// A response with a FHIR JSON body.
pub fn fhir_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = fhir_response(self.status, self.outcome_json());
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(c) = self.challenge
            && let Ok(v) = HeaderValue::from_str(&c)
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_shape() {
        let e = ApiError::invalid("_count: must be a positive whole number");
        let v: serde_json::Value =
            serde_json::from_str(&e.outcome_json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["severity"], "error");
        assert_eq!(v["issue"][0]["code"], "invalid");
        assert_eq!(
            v["issue"][0]["diagnostics"],
            "_count: must be a positive whole number"
        );
    }

    #[test]
    fn response_has_fhir_content_type_and_allow() {
        let r = ApiError::method_not_allowed("GET").into_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::CONTENT_TYPE], FHIR_JSON);
        assert_eq!(r.headers()[header::ALLOW], "GET");
    }
}
