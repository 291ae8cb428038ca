//! FHIR R4 REST for EPJ systems (placeholder until the API work merges):
//! only /healthz and /readyz.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::domain::Orgnr;
use crate::store::Store;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub municipalities: Option<BTreeSet<Orgnr>>,
    pub public_url: Option<String>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn ready(State(s): State<ApiState>) -> (StatusCode, String) {
    match s.store.ready() {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
