//! The admin API for municipal IT, on its own listener (loopback by
//! default): Prometheus metrics, destinations and their queues, and dead
//! letters — list, show, replay one or a filter, discard with a reason. `knutepunkt dlq …` is its
//! command-line client. `GET /admin/backup` streams an online backup
//! (`knutepunkt backup`); `POST /admin/compact` gives the disk space of
//! removed records back (`knutepunkt compact`). Plain JSON, not FHIR: this
//! is for operators.
//!
//! Every route needs the admin credential (`crate::auth::admin`): a bearer
//! token whose SHA-256 is configured. Keep `admin_addr` on loopback too.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::deliver::Registry;
use crate::store::{DeadLetter, DeadLetterFilter, Store, seq_to_time};

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub guard: Arc<crate::auth::admin::AdminGuard>,
    /// The Prometheus recorder's handle (`None`: another recorder is installed).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Where `GET /admin/backup` reads from (`None`: this store backend
    /// has its own backup tools).
    pub backup: Option<crate::backup::BackupSource>,
    /// `POST`/`GET /admin/compact`: the one compaction this hub may run.
    pub compaction: Arc<crate::compact::Compaction>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/destinations", get(destinations))
        .route("/admin/backup", get(backup))
        .route("/admin/compact", get(compact_status).post(compact_start))
        .route("/admin/dlq", get(list))
        .route("/admin/dlq/replay", post(replay_filter))
        .route("/admin/dlq/{destination}/{seq}", get(show))
        .route("/admin/dlq/{destination}/{seq}/replay", post(replay_one))
        .route("/admin/dlq/{destination}/{seq}/discard", post(discard))
        .route_layer(axum::middleware::from_fn_with_state(
            state.guard.clone(),
            crate::auth::admin::middleware,
        ))
        .with_state(state)
}

/// Prometheus text. On the admin listener, behind the admin token (a
/// scraper sends it as a bearer), not on the public HTTPS port: counts of
/// traffic and rejections are nobody else's business.
async fn metrics(State(s): State<AdminState>) -> Response {
    s.metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default()
        .into_response()
}

/// A consistent snapshot of the whole store, streamed (`knutepunkt backup`
/// is the client). It holds national ids in clear: the admin token guards
/// it like everything here.
async fn backup(State(s): State<AdminState>) -> Response {
    let Some(src) = s.backup else {
        return err(
            StatusCode::NOT_IMPLEMENTED,
            "this store backend is backed up with its own tools (see README, Operations)",
        );
    };
    let name = format!(
        "attachment; filename=\"knutepunkt-{}.kpbackup\"",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_DISPOSITION, name),
        ],
        src.stream(),
    )
        .into_response()
}

/// Starts giving back the disk space of removed records (202), unless a
/// compaction runs already (409). `GET /admin/compact` follows it.
async fn compact_start(State(s): State<AdminState>) -> Response {
    match s.compaction.start(s.store.clone()) {
        Ok(()) => (StatusCode::ACCEPTED, Json(s.compaction.status())).into_response(),
        Err(crate::compact::AlreadyRunning) => err(
            StatusCode::CONFLICT,
            "a compaction is running; follow it with GET /admin/compact and start the next one after it",
        ),
    }
}

async fn compact_status(State(s): State<AdminState>) -> Response {
    Json(s.compaction.status()).into_response()
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// The rejections of axum's extractors quote what was sent (an unknown
/// field's name, a path segment that is not a number); these answers say
/// what to send instead and copy nothing of the request.
fn bad_query(_: QueryRejection) -> Response {
    err(
        StatusCode::BAD_REQUEST,
        "unsupported query parameter: the parameters are destination, from, to, code (VKP alert code) and limit",
    )
}

fn bad_body(_: JsonRejection) -> Response {
    err(
        StatusCode::BAD_REQUEST,
        "the body must be a JSON object; a filter takes destination, from, to and code, a discard takes reason",
    )
}

fn bad_path(_: PathRejection) -> Response {
    err(
        StatusCode::BAD_REQUEST,
        "the path must be /admin/dlq/<destination>/<seq> with seq a whole number, as listed by GET /admin/dlq",
    )
}

/// The answer when a dead letter is not found; names neither the
/// destination nor the number asked for.
fn no_dead_letter() -> Response {
    err(
        StatusCode::NOT_FOUND,
        "no such dead letter for that destination; GET /admin/dlq lists them",
    )
}

/// A store error of a dead-letter operation: a destination the store does
/// not know is the caller's mistake (404), anything else the hub's (500).
fn dlq_error(e: crate::store::StoreError) -> Response {
    match e {
        crate::store::StoreError::UnknownConsumer(_) => no_dead_letter(),
        e => internal(e),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin API: store error");
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "store error; see the hub's log",
    )
}

async fn destinations(State(s): State<AdminState>) -> Response {
    Json(s.registry.snapshot()).into_response()
}

/// A dead letter as the admin API shows it (the store's type is not a
/// wire format).
#[derive(Debug, Serialize)]
struct DeadLetterView {
    destination: String,
    seq: u64,
    /// `Observation/<id>`.
    resource: String,
    /// "Red", "Yellow" or "Routine".
    class: crate::store::Class,
    attempts: u32,
    error: String,
    response: Option<String>,
    /// When it was dead-lettered, RFC 3339.
    at: String,
    codes: Vec<String>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        DeadLetterView {
            destination: d.destination,
            seq: d.seq,
            resource: d.resource.to_string(),
            class: d.class,
            attempts: d.attempts,
            error: d.error,
            response: d.response,
            at: rfc3339(d.at),
            codes: d.codes,
        }
    }
}

/// RFC 3339 in UTC with microseconds, as everywhere in the hub's output.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Which dead letters an operator means, as sent (query or JSON body):
/// times are RFC 3339.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    destination: Option<String>,
    /// Received at or after (RFC 3339).
    from: Option<String>,
    /// Received before (RFC 3339).
    to: Option<String>,
    code: Option<String>,
}

impl FilterParams {
    /// The typed filter, or a message for a 400 saying what to send.
    fn parse(self) -> Result<DeadLetterFilter, String> {
        let time = |name: &str, v: Option<String>| -> Result<Option<DateTime<Utc>>, String> {
            v.map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        format!("{name}: is not an RFC 3339 time; send e.g. 2026-01-31T12:00:00Z")
                    })
            })
            .transpose()
        };
        Ok(DeadLetterFilter {
            destination: self.destination,
            from: time("from", self.from)?,
            to: time("to", self.to)?,
            code: self.code,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    destination: Option<String>,
    from: Option<String>,
    to: Option<String>,
    code: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(s): State<AdminState>,
    p: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Query(p) = match p {
        Ok(p) => p,
        Err(e) => return bad_query(e),
    };
    let filter = FilterParams {
        destination: p.destination,
        from: p.from,
        to: p.to,
        code: p.code,
    };
    let filter = match filter.parse() {
        Ok(f) => f,
        Err(m) => return err(StatusCode::BAD_REQUEST, m),
    };
    let limit = p.limit.unwrap_or(100).min(10_000);
    match s.store.dead_letters(filter, limit).await {
        Ok(v) => Json(v.into_iter().map(DeadLetterView::from).collect::<Vec<_>>()).into_response(),
        Err(e) => internal(e),
    }
}

async fn show(
    State(s): State<AdminState>,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> Response {
    let Path((destination, seq)) = match path {
        Ok(p) => p,
        Err(e) => return bad_path(e),
    };
    // The seq is the time it was stored (µs): a filter of that one
    // microsecond reads one dead letter, not the destination's whole list.
    let filter = DeadLetterFilter {
        destination: Some(destination.clone()),
        from: Some(seq_to_time(seq)),
        to: Some(seq_to_time(seq.saturating_add(1))),
        code: None,
    };
    match s.store.dead_letters(filter, 1).await {
        Ok(v) => match v.into_iter().find(|d| d.seq == seq) {
            Some(d) => Json(DeadLetterView::from(d)).into_response(),
            None => no_dead_letter(),
        },
        Err(e) => internal(e),
    }
}

async fn replay_one(
    State(s): State<AdminState>,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> Response {
    let Path((destination, seq)) = match path {
        Ok(p) => p,
        Err(e) => return bad_path(e),
    };
    match s.store.dead_letter_replay(&destination, seq).await {
        Ok(true) => Json(json!({ "replayed": 1 })).into_response(),
        Ok(false) => no_dead_letter(),
        Err(e) => dlq_error(e),
    }
}

async fn replay_filter(
    State(s): State<AdminState>,
    filter: Result<Json<FilterParams>, JsonRejection>,
) -> Response {
    let Json(filter) = match filter {
        Ok(f) => f,
        Err(e) => return bad_body(e),
    };
    let filter = match filter.parse() {
        Ok(f) => f,
        Err(m) => return err(StatusCode::BAD_REQUEST, m),
    };
    let res = async {
        let mut n = 0;
        for d in s.store.dead_letters(filter, usize::MAX).await? {
            if s.store.dead_letter_replay(&d.destination, d.seq).await? {
                n += 1;
            }
        }
        Ok::<_, crate::store::StoreError>(n)
    }
    .await;
    match res {
        Ok(n) => Json(json!({ "replayed": n })).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscardBody {
    reason: String,
}

async fn discard(
    State(s): State<AdminState>,
    path: Result<Path<(String, u64)>, PathRejection>,
    body: Result<Json<DiscardBody>, JsonRejection>,
) -> Response {
    let Path((destination, seq)) = match path {
        Ok(p) => p,
        Err(e) => return bad_path(e),
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    if body.reason.trim().is_empty() {
        return err(
            StatusCode::BAD_REQUEST,
            "reason is required: say why the dead letter is discarded",
        );
    }
    match s
        .store
        .dead_letter_discard(&destination, seq, body.reason)
        .await
    {
        Ok(true) => Json(json!({ "discarded": 1 })).into_response(),
        Ok(false) => no_dead_letter(),
        Err(e) => dlq_error(e),
    }
}
