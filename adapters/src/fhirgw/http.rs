//! The routes, and the one place that decides who may post for whom.
//!
//! - `POST /fhir/r4/{orgnr}/Observation`: one Observation → 201 Created
//!   (200 OK for a repeat) with `Location: Observation/<id>` from the hub,
//!   or 4xx/5xx with an OperationOutcome.
//! - `POST /fhir/r4/{orgnr}` (or `/fhir/r4/{orgnr}/`): a `transaction` or
//!   `batch` Bundle → 200 with the response Bundle, one verdict per entry
//!   (503 when the hub decided none of them).
//!
//! - `POST /oauth/token` (only when a platform has a `jwk_file`): an access
//!   token for a `private_key_jwt` assertion, see [`token`](super::token).
//!
//! Who: the platform named by the client certificate (see
//! [`server`](super::server)), or, on a connection without one, by the
//! bearer token (401 without a valid one); it must be configured and its
//! allow-list must hold `{orgnr}`, else 403 with an OperationOutcome.
//!
//! **Invariant: no national id and no request body in a log line.** A
//! request is logged as platform, municipality, entry count and verdicts.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tonic::transport::Channel;

use knutepunkt::domain::{Orgnr, VendorId};

use super::bundle::{self, Outcome, Submitter};
use super::issue::Issue;
use super::server::PeerInfo;
use super::token::Tokens;
use knutepunkt::auth::now_secs;
use knutepunkt::auth::token::no_store;

/// One configured platform, ready to submit.
pub struct Platform {
    pub municipalities: BTreeSet<Orgnr>,
    pub channel: Channel,
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub platforms: Arc<HashMap<String, Platform>>,
    pub max_entries: usize,
    /// Set when some platform authenticates with `private_key_jwt`.
    pub tokens: Option<Arc<Tokens>>,
}

/// The routes, with a body limit.
pub fn router(state: AppState, max_body_bytes: usize) -> Router<()> {
    let mut r = Router::new();
    if state.tokens.is_some() {
        r = r.route("/oauth/token", post(post_token));
    }
    r.route("/fhir/r4/{orgnr}", post(post_bundle))
        .route("/fhir/r4/{orgnr}/", post(post_bundle))
        .route("/fhir/r4/{orgnr}/Observation", post(post_observation))
        .fallback(|| async {
            fhir(
                StatusCode::NOT_FOUND,
                Issue::other(
                    404,
                    "not-found",
                    "",
                    "POST a Bundle to /fhir/r4/{orgnr} or an Observation to /fhir/r4/{orgnr}/Observation",
                )
                .outcome(),
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

fn fhir(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn refuse(i: &Issue) -> Response {
    let status = StatusCode::from_u16(i.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = fhir(status, i.outcome());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// `POST /oauth/token`: the client-credentials grant with a signed assertion.
async fn post_token(State(state): State<AppState>, body: Bytes) -> Response {
    let Some(tokens) = state.tokens.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokens.issue(&body, now_secs()) {
        Ok(v) => no_store(axum::Json(v).into_response()),
        Err(e) => {
            tracing::info!(reason = e.reason.as_str(), "token request refused");
            e.into_response()
        }
    }
}

/// The platform behind a request: its client certificate, else its bearer
/// token.
fn platform_id(state: &AppState, peer: &PeerInfo, headers: &HeaderMap) -> Result<String, Issue> {
    if let Some(p) = &peer.platform {
        return Ok(p.clone());
    }
    let Some(tokens) = state.tokens.as_ref() else {
        return Err(Issue::other(
            403,
            "forbidden",
            "",
            "your client certificate names no platform (SAN URI urn:knutepunkt:vendor:<id>); ask the operator for one",
        ));
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    tokens.platform_of(auth, now_secs()).map_err(|r| {
        Issue::other(
            401,
            "login",
            "",
            format!("{} (or connect with a client certificate)", r.describe()),
        )
    })
}

/// The platform behind the connection and the municipality in the path,
/// checked against the platform's allow-list; then the body as JSON.
fn admit(
    state: &AppState,
    peer: &PeerInfo,
    orgnr: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Submitter, Value), Issue> {
    let forbidden = |m: String| Issue::other(403, "forbidden", "", m);
    let owned = platform_id(state, peer, headers)?;
    let id = owned.as_str();
    let platform = state.platforms.get(id).ok_or_else(|| {
        forbidden(format!(
            "platform {id} is not configured on this gateway; ask the operator to add it"
        ))
    })?;
    let municipality = Orgnr::parse(orgnr).map_err(|e| {
        Issue::other(
            404,
            "not-found",
            "",
            format!("the municipality in the URL {e}; use /fhir/r4/<9-digit orgnr>"),
        )
    })?;
    if !platform.municipalities.contains(&municipality) {
        return Err(forbidden(format!(
            "platform {id} may not post for municipality {municipality}; ask the operator to add it to the platform's agreement"
        )));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime != "application/fhir+json" && mime != "application/json" {
        return Err(Issue::other(
            415,
            "not-supported",
            "",
            "send Content-Type: application/fhir+json",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Issue::structure("", format!("the body is not JSON: {e}")))?;
    Ok((
        Submitter {
            vendor: VendorId(id.to_string()),
            municipality,
            channel: platform.channel.clone(),
        },
        value,
    ))
}

async fn post_observation(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    Path(orgnr): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (to, obs) = match admit(&state, &peer, &orgnr, &headers, &body) {
        Ok(x) => x,
        Err(i) => {
            log_refused(&peer, &i);
            return refuse(&i);
        }
    };
    let outcome = bundle::single(&obs, &to).await;
    log_outcomes(
        &to.vendor.0,
        to.municipality,
        std::slice::from_ref(&outcome),
    );
    let status =
        StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = fhir(status, outcome.operation_outcome());
    if let Some(l) = outcome.location()
        && let Ok(v) = HeaderValue::from_str(l)
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn post_bundle(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    Path(orgnr): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (to, b) = match admit(&state, &peer, &orgnr, &headers, &body) {
        Ok(x) => x,
        Err(i) => {
            log_refused(&peer, &i);
            return refuse(&i);
        }
    };
    match bundle::bundle(&b, &to, state.max_entries).await {
        Ok((kind, outcomes)) => {
            log_outcomes(&to.vendor.0, to.municipality, &outcomes);
            let undecided = !outcomes.is_empty()
                && outcomes
                    .iter()
                    .all(|o| matches!(o, Outcome::Hub(super::hub::Verdict::Unavailable(_), _)));
            let status = if undecided {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            fhir(status, bundle::response_bundle(kind, &outcomes))
        }
        Err(i) => {
            log_refused(&peer, &i);
            refuse(&i)
        }
    }
}

fn log_refused(peer: &PeerInfo, i: &Issue) {
    tracing::info!(
        platform = peer.platform.as_deref().unwrap_or("-"),
        peer = %peer.addr,
        status = i.status,
        element = i.expression.as_deref().unwrap_or("-"),
        "request refused"
    );
}

fn log_outcomes(platform: &str, municipality: Orgnr, outcomes: &[Outcome]) {
    let count = |s: std::ops::RangeInclusive<u16>| {
        outcomes.iter().filter(|o| s.contains(&o.status())).count()
    };
    tracing::info!(
        platform,
        %municipality,
        entries = outcomes.len(),
        created = outcomes.iter().filter(|o| o.status() == 201).count(),
        ok = outcomes.iter().filter(|o| o.status() == 200).count(),
        refused = count(400..=499),
        unavailable = count(500..=599),
        "request answered"
    );
}
