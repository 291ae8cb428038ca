//! The admin API for municipal IT, on its own listener (loopback by
//! default): Prometheus metrics, destinations and their queues, and dead
//! letters — list, show, replay one or a filter, discard with a reason. `knutepunkt dlq …` is its
//! command-line client. Plain JSON, not FHIR: this is for operators.
//!
//! Every route needs the admin credential (`crate::auth::admin`): a bearer
//! token whose SHA-256 is configured. Keep `admin_addr` on loopback too.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::deliver::Registry;
use crate::store::{DeadLetterFilter, Store};

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub guard: Arc<crate::auth::admin::AdminGuard>,
    /// The Prometheus recorder's handle (`None`: another recorder is installed).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/destinations", get(destinations))
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

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    destination: Option<String>,
    from: Option<String>,
    to: Option<String>,
    code: Option<String>,
    limit: Option<usize>,
}

async fn list(State(s): State<AdminState>, Query(p): Query<ListParams>) -> Response {
    let filter = DeadLetterFilter {
        destination: p.destination,
        from: p.from,
        to: p.to,
        code: p.code,
    };
    let limit = p.limit.unwrap_or(100).min(10_000);
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.dead_letters(&filter, limit)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(crate::store::StoreError::Read(m))) if m.contains("RFC 3339") => {
            err(StatusCode::BAD_REQUEST, m)
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn show(
    State(s): State<AdminState>,
    Path((destination, seq)): Path<(String, u64)>,
) -> Response {
    let filter = DeadLetterFilter {
        destination: Some(destination.clone()),
        ..DeadLetterFilter::default()
    };
    let store = s.store.clone();
    let found = tokio::task::spawn_blocking(move || store.dead_letters(&filter, usize::MAX)).await;
    match found {
        Ok(Ok(v)) => match v.into_iter().find(|d| d.seq == seq) {
            Some(d) => Json(d).into_response(),
            None => err(
                StatusCode::NOT_FOUND,
                format!("no dead letter {seq} for destination {destination:?}"),
            ),
        },
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn replay_one(
    State(s): State<AdminState>,
    Path((destination, seq)): Path<(String, u64)>,
) -> Response {
    let store = s.store.clone();
    let d = destination.clone();
    match tokio::task::spawn_blocking(move || store.dead_letter_replay(&d, seq)).await {
        Ok(Ok(true)) => Json(json!({ "replayed": 1 })).into_response(),
        Ok(Ok(false)) => err(
            StatusCode::NOT_FOUND,
            format!("no dead letter {seq} for destination {destination:?}"),
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn replay_filter(
    State(s): State<AdminState>,
    Json(filter): Json<DeadLetterFilter>,
) -> Response {
    let store = s.store.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<usize, crate::store::StoreError> {
        let mut n = 0;
        for d in store.dead_letters(&filter, usize::MAX)? {
            if store.dead_letter_replay(&d.destination, d.seq)? {
                n += 1;
            }
        }
        Ok(n)
    })
    .await;
    match res {
        Ok(Ok(n)) => Json(json!({ "replayed": n })).into_response(),
        Ok(Err(crate::store::StoreError::Read(m))) if m.contains("RFC 3339") => {
            err(StatusCode::BAD_REQUEST, m)
        }
        Ok(Err(e)) => internal(e),
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
    Path((destination, seq)): Path<(String, u64)>,
    Json(body): Json<DiscardBody>,
) -> Response {
    if body.reason.trim().is_empty() {
        return err(
            StatusCode::BAD_REQUEST,
            "reason is required: say why the dead letter is discarded",
        );
    }
    let store = s.store.clone();
    let d = destination.clone();
    match tokio::task::spawn_blocking(move || store.dead_letter_discard(&d, seq, &body.reason))
        .await
    {
        Ok(Ok(true)) => Json(json!({ "discarded": 1 })).into_response(),
        Ok(Ok(false)) => err(
            StatusCode::NOT_FOUND,
            format!("no dead letter {seq} for destination {destination:?}"),
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
