//! HTTP routes: the FHIR import endpoint (`POST /fhir`) and the admin API
//! (`/_admin/mode`, `/_admin/stats`) that tests use to flip failure modes
//! and read counters without restarting the adapter.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::bundle::{Entry, Issue, operation_outcome, parse_transaction, transaction_response};
use super::mode::{Mode, ModeSwitch};
use super::outbox::{CommitError, Outbox};
use super::stats::Stats;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The import folder.
    pub outbox: Arc<Outbox>,
    /// The failure switch.
    pub mode: ModeSwitch,
    /// The counters.
    pub stats: Arc<Stats>,
}

/// Path prefix that the `down` mode leaves alone.
pub const ADMIN_PREFIX: &str = "/_admin";

/// The adapter's routes. `max_body_bytes` caps a Bundle's size.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/fhir", post(import))
        .route("/fhir/", post(import))
        .route("/_admin/mode", get(get_mode).post(set_mode))
        .route("/_admin/stats", get(get_stats).delete(reset_stats))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

fn fhir(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        bytes,
    )
        .into_response()
}

fn outcome(
    status: StatusCode,
    code: &'static str,
    expression: &str,
    diagnostics: String,
) -> Response {
    fhir(
        status,
        &operation_outcome(&[Issue {
            code,
            diagnostics,
            expression: expression.to_string(),
        }]),
    )
}

fn is_fhir_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim();
    mime.eq_ignore_ascii_case("application/fhir+json")
        || mime.eq_ignore_ascii_case("application/json")
}

/// `POST /fhir`: a transaction Bundle of conditional creates.
async fn import(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    st.stats.request();
    let mode = st.mode.get();
    let resp = import_inner(&st, &mode, &headers, &body).await;
    if let Some(delay) = mode.delay() {
        tokio::time::sleep(delay.saturating_sub(started.elapsed())).await;
    }
    let status = resp.status();
    st.stats.answered(status.as_u16());
    if status.is_success() {
        tracing::debug!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        );
    } else {
        tracing::info!(status = status.as_u16(), mode = ?mode_name(&mode), "answered with an error");
    }
    resp
}

fn mode_name(m: &Mode) -> &'static str {
    match m {
        Mode::Ok => "ok",
        Mode::Down => "down",
        Mode::Slow { .. } => "slow",
        Mode::Error500 => "error500",
        Mode::Error429 { .. } => "error429",
        Mode::Reject422 { .. } => "reject422",
    }
}

async fn import_inner(st: &AppState, mode: &Mode, headers: &HeaderMap, body: &[u8]) -> Response {
    let parsed = parse_transaction(body);
    if let Ok(entries) = &parsed {
        st.stats.bundle(entries.len());
    }
    if let Some(r) = simulated_failure(mode) {
        return r;
    }
    if !is_fhir_json(headers) {
        return outcome(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "Bundle",
            "Content-Type must be application/fhir+json".into(),
        );
    }
    let entries = match parsed {
        Ok(e) => e,
        Err(issues) => return fhir(StatusCode::BAD_REQUEST, &operation_outcome(&issues)),
    };
    if let Mode::Reject422 { reject_codes } = mode
        && let Some(r) = simulated_rejection(st, reject_codes, &entries)
    {
        return r;
    }
    commit(st, entries).await
}

/// The answer of a mode that fails every Bundle before reading it.
fn simulated_failure(mode: &Mode) -> Option<Response> {
    match mode {
        Mode::Error500 => Some(outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            "Bundle",
            "simulated EPJ failure (mode error500); nothing was written, retry later".into(),
        )),
        Mode::Error429 { retry_after_secs } => {
            let mut r = outcome(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "Bundle",
                format!(
                    "simulated overload (mode error429); nothing was written, retry after {retry_after_secs} s"
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            Some(r)
        }
        // The connection layer drops these; reaching here means the mode
        // changed while the request was in flight. Answer as 503.
        Mode::Down => Some(outcome(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "Bundle",
            "the adapter went down while this request was in flight; retry later".into(),
        )),
        Mode::Ok | Mode::Slow { .. } | Mode::Reject422 { .. } => None,
    }
}

/// Mode reject422: a 422 naming every entry with one of `reject_codes`
/// (every entry when empty); `None` when no entry has one.
fn simulated_rejection(
    st: &AppState,
    reject_codes: &[String],
    entries: &[Entry],
) -> Option<Response> {
    let issues: Vec<Issue> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| reject_codes.is_empty() || e.codes.iter().any(|c| reject_codes.contains(c)))
        .map(|(i, e)| Issue {
            code: "business-rule",
            diagnostics: format!(
                "{}/{} rejected by the EPJ (simulated, mode reject422); the whole transaction was refused and nothing was written",
                e.resource_type, e.id
            ),
            expression: format!("Bundle.entry[{i}].resource"),
        })
        .collect();
    if issues.is_empty() {
        return None;
    }
    st.stats.rejected(issues.len());
    Some(fhir(
        StatusCode::UNPROCESSABLE_ENTITY,
        &operation_outcome(&issues),
    ))
}

/// Writes a checked transaction and answers with its transaction-response.
async fn commit(st: &AppState, entries: Vec<Entry>) -> Response {
    let outbox = st.outbox.clone();
    let committed = tokio::task::spawn_blocking(move || outbox.commit(&entries)).await;
    match committed {
        Ok(Ok(outcomes)) => {
            let created = outcomes.iter().filter(|o| o.created).count();
            st.stats.committed(created, outcomes.len() - created);
            let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
            fhir(StatusCode::OK, &transaction_response(&outcomes, &now))
        }
        Ok(Err(e @ CommitError::IdConflict { .. })) => outcome(
            StatusCode::CONFLICT,
            "duplicate",
            "Bundle.entry",
            e.to_string(),
        ),
        Ok(Err(e @ CommitError::Io { .. })) => {
            tracing::error!(error = %e, "could not write a Bundle");
            outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "Bundle",
                "the adapter could not write the resources; nothing was kept, retry later".into(),
            )
        }
        Err(join) => {
            tracing::error!(error = %join, "the write task failed");
            outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "Bundle",
                "the adapter failed while writing; retry later".into(),
            )
        }
    }
}

async fn get_mode(State(st): State<AppState>) -> Response {
    axum::Json(st.mode.get()).into_response()
}

/// `POST /_admin/mode`: replace the mode; answers `{"previous":…,"mode":…}`.
async fn set_mode(State(st): State<AppState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Mode>(&body) {
        Ok(mode) => {
            let previous = st.mode.set(mode.clone());
            tracing::info!(from = ?previous, to = ?mode, "mode changed");
            axum::Json(json!({ "previous": previous, "mode": mode })).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": format!("{e}; send e.g. {{\"mode\":\"ok\"}}, {{\"mode\":\"down\"}}, {{\"mode\":\"slow\",\"delay_ms\":500}}, {{\"mode\":\"error500\"}}, {{\"mode\":\"error429\",\"retry_after_secs\":5}} or {{\"mode\":\"reject422\",\"reject_codes\":[\"4.1\"]}}")
            })),
        )
            .into_response(),
    }
}

async fn get_stats(State(st): State<AppState>) -> Response {
    axum::Json(st.stats.snapshot()).into_response()
}

/// `DELETE /_admin/stats`: zero the counters; answers the counters before.
async fn reset_stats(State(st): State<AppState>) -> Response {
    let before = st.stats.snapshot();
    st.stats.reset();
    axum::Json(before).into_response()
}
