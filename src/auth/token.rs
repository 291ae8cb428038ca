//! `POST /oauth/token`: the OAuth2 client-credentials grant with a signed
//! JWT client assertion (RFC 6749 §4.4, RFC 7523, SMART Backend Services).
//!
//! Form body: `grant_type=client_credentials`,
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//! `client_assertion=<JWT>`, and optionally `scope` (space-separated; left
//! out: every scope the client has; one it lacks: `invalid_scope`).
//!
//! Errors are RFC 6749 §5.2 JSON with status 400. A bad assertion is
//! `invalid_client` (RFC 7523 §3.2 says so for client authentication),
//! whatever the rule it broke; `error_description` says which, in fixed
//! words, never echoing the assertion. The answer is an access token signed
//! by the hub (ES256) that lives at most 5 minutes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::bearer::AccessClaims;
use super::{AuthState, Authority, Reason, Scope, assertion, count_rejection, now_secs};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An RFC 6749 §5.2 error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub error: &'static str,
    pub reason: Reason,
    pub status: StatusCode,
}

impl OAuthError {
    /// The RFC 6749 error for `reason` (status 400).
    pub fn new(reason: Reason) -> OAuthError {
        let error = match reason {
            Reason::InvalidRequest => "invalid_request",
            Reason::UnsupportedGrantType => "unsupported_grant_type",
            Reason::InvalidScope => "invalid_scope",
            _ => "invalid_client",
        };
        OAuthError {
            error,
            reason,
            status: StatusCode::BAD_REQUEST,
        }
    }

    fn server_error() -> OAuthError {
        OAuthError {
            error: "server_error",
            reason: Reason::InvalidRequest,
            status: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let description = if self.error == "server_error" {
            "the hub could not record the assertion; retry with a new one"
        } else {
            self.reason.describe()
        };
        let body = json!({ "error": self.error, "error_description": description });
        no_store((self.status, axum::Json(body)).into_response())
    }
}

/// Adds `Cache-Control: no-store` (RFC 6749 §5.1: token responses are never cached).
pub fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// What a well-formed token request asks for.
#[derive(Debug)]
pub struct Form {
    pub assertion: String,
    pub scope: Option<String>,
}

/// Parses a client-credentials form with a JWT client assertion; the
/// [`Reason`] says what is wrong with it.
pub fn parse_form(body: &[u8]) -> Result<Form, Reason> {
    let mut grant = None;
    let mut kind = None;
    let mut assertion = None;
    let mut scope = None;
    for (k, v) in form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "grant_type" => &mut grant,
            "client_assertion_type" => &mut kind,
            "client_assertion" => &mut assertion,
            "scope" => &mut scope,
            _ => continue,
        };
        // RFC 6749 §3.2: parameters must not be repeated.
        if slot.replace(v.into_owned()).is_some() {
            return Err(Reason::InvalidRequest);
        }
    }
    match grant.as_deref() {
        None => return Err(Reason::InvalidRequest),
        Some("client_credentials") => {}
        Some(_) => return Err(Reason::UnsupportedGrantType),
    }
    if kind.as_deref() != Some(JWT_BEARER) {
        return Err(Reason::InvalidRequest);
    }
    let assertion = assertion
        .filter(|a| !a.is_empty())
        .ok_or(Reason::InvalidRequest)?;
    Ok(Form { assertion, scope })
}

/// The token endpoint's decision, separated from HTTP for tests. The
/// signature checks are a few microseconds of CPU, so this runs on the
/// handler's task; the used `jti` is recorded by the store (durable before
/// the token is issued).
pub async fn issue(
    auth: &Authority,
    body: &[u8],
    now: u64,
) -> Result<serde_json::Value, OAuthError> {
    let form = parse_form(body).map_err(OAuthError::new)?;
    let Some(token_url) = auth.token_url.as_deref() else {
        return Err(OAuthError::new(Reason::UnknownClient));
    };
    let v = assertion::verify(&form.assertion, &auth.clients, token_url, now)
        .map_err(OAuthError::new)?;
    let client = auth
        .clients
        .get(&v.client_id)
        .ok_or_else(|| OAuthError::new(Reason::UnknownClient))?;
    let scopes: Vec<Scope> = match &form.scope {
        None => client.scopes.clone(),
        Some(s) => {
            let mut out = Vec::new();
            for name in s.split_whitespace() {
                let sc = Scope::parse(name)
                    .filter(|sc| client.scopes.contains(sc))
                    .ok_or_else(|| OAuthError::new(Reason::InvalidScope))?;
                if !out.contains(&sc) {
                    out.push(sc);
                }
            }
            if out.is_empty() {
                return Err(OAuthError::new(Reason::InvalidScope));
            }
            out
        }
    };
    // Last, so a rejected assertion does not use up its jti.
    match auth.store.jti_claim(&v.client_id, &v.jti, v.exp, now).await {
        Ok(true) => {}
        Ok(false) => return Err(OAuthError::new(Reason::ReplayedJti)),
        Err(e) => {
            tracing::error!(error = %e, "cannot record a used assertion id");
            return Err(OAuthError::server_error());
        }
    }
    let exp = now + auth.token_lifetime_secs;
    let claims = AccessClaims {
        iss: auth.issuer.clone(),
        aud: auth.audience.clone(),
        sub: client.id.clone(),
        client_id: client.id.clone(),
        municipality: client.municipality.to_string(),
        scope: Scope::join(&scopes),
        iat: now,
        exp,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(auth.hub_key.kid.clone());
    header.typ = Some("at+jwt".into());
    let token = jsonwebtoken::encode(&header, &claims, &auth.hub_key.encoding).map_err(|e| {
        tracing::error!(error = %e, "cannot sign an access token");
        OAuthError::server_error()
    })?;
    tracing::info!(client = %client.id, municipality = %client.municipality, scope = %claims.scope, "access token issued");
    Ok(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": auth.token_lifetime_secs,
        "scope": claims.scope,
    }))
}

/// `POST /oauth/token`.
pub async fn handler<S: AuthState>(State(state): State<S>, body: Bytes) -> Response {
    let a: Arc<Authority> = state.authority().clone();
    match issue(&a, &body, now_secs()).await {
        Ok(v) => no_store(axum::Json(v).into_response()),
        Err(e) => {
            if e.status == StatusCode::BAD_REQUEST {
                count_rejection("token", e.reason);
            }
            e.into_response()
        }
    }
}
