//! FHIR R4 REST for EPJ systems: read and search of the hub's Observations
//! and Communications, one base per municipality (`/fhir/r4/{orgnr}`).
//!
//! This is the FHIR edge: it knows HTTP and FHIR's envelopes (Bundle,
//! OperationOutcome, CapabilityStatement), and nothing else of FHIR: stored
//! resources are served as the bytes the store holds. It reads only through
//! the [`Store`] trait and decides nothing about who may ask (that is the
//! auth layer's job, put in front of [`router`]); it does enforce that a
//! municipality's base only ever shows that municipality's data.
//!
//! Map:
//! - [`search_params`]: query → store query, refusing what it does not know.
//! - [`last_updated`]: `_lastUpdated` values → sequence ranges.
//! - [`query_string`]: RFC 3986 decoding/encoding (a `+` stays a plus).
//! - [`bundle`]: the searchset Bundle, resources spliced in unparsed.
//! - [`outcome`]: errors as OperationOutcomes.
//! - [`capability`]: the CapabilityStatement.
//!
//! Outside the FHIR base: `GET /healthz` (the process runs) and
//! `GET /readyz` (the store can take writes). Metrics are merged in by the
//! caller: `router(state).merge(metrics_router)`.

pub mod audit_event;
pub mod bundle;
pub mod capability;
pub mod last_updated;
pub mod outcome;
pub mod pull;
pub mod query_string;
pub mod search_params;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::audit::Auditor;
use crate::auth::{Authority, Caller, Scope};
use crate::domain::{Orgnr, ResourceType};
use crate::store::audit::{AuditAction, AuditOutcome, AuditRecord};
use crate::store::{SearchPage, Store, StoredResource};
use outcome::{ApiError, fhir_response};
use search_params::SearchParams;

/// What the API serves and from where. The router shares one copy
/// between all requests.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    /// The orgnrs served; `None` serves any valid orgnr.
    pub municipalities: Option<BTreeSet<Orgnr>>,
    /// Scheme, host and optional path prefix in front of `/fhir/r4/{orgnr}`
    /// as clients reach the hub (e.g. `https://knutepunkt.kommune.no`; a
    /// trailing `/` is ignored). `None` derives it from each request's
    /// `Host` header with scheme `http`: configure it behind TLS or a proxy
    /// (`X-Forwarded-*` headers are not trusted).
    pub public_url: Option<String>,
    /// Pull destinations per municipality (`$pending`, `$confirm`).
    pub pull: Arc<std::collections::BTreeMap<Orgnr, Vec<pull::PullConsumer>>>,
    /// Every destination name per municipality (`$status`).
    pub destinations: Arc<std::collections::BTreeMap<Orgnr, Vec<String>>>,
    /// Whether this listener serves TLS: the scheme of links built from the
    /// `Host` header when no `public_url` is configured.
    pub https: bool,
    /// Who may do what.
    pub auth: Arc<Authority>,
    /// Where accesses are written down.
    pub audit: Auditor,
}

impl crate::auth::AuthState for Arc<ApiState> {
    fn authority(&self) -> &Arc<Authority> {
        &self.auth
    }
}

impl ApiState {
    /// Writes one audit record; a failure means the request must fail.
    pub(crate) async fn audit(&self, rec: AuditRecord) -> Result<(), ApiError> {
        self.audit
            .write(vec![rec])
            .await
            .map_err(|_| ApiError::audit_failed())
    }
}

/// An audit record of `caller` acting on `municipality`; fill in the rest.
pub(crate) fn audit_record(
    caller: &Caller,
    municipality: Orgnr,
    action: AuditAction,
) -> AuditRecord {
    AuditRecord {
        municipality,
        agent: caller.audit_agent(),
        action,
        query: None,
        resources: Vec::new(),
        patients: Vec::new(),
        outcome: AuditOutcome::Success,
    }
}

impl ApiState {
    /// The municipality of a path segment, if it is a valid orgnr served here.
    pub(crate) fn municipality(&self, segment: &str) -> Result<Orgnr, ApiError> {
        let not_served = || {
            ApiError::not_found(
                "no FHIR base at this path: use /fhir/r4/{orgnr} with the 9-digit organisation number of a municipality this hub serves",
            )
        };
        let orgnr = Orgnr::parse(segment).map_err(|_| not_served())?;
        match &self.municipalities {
            Some(set) if !set.contains(&orgnr) => Err(not_served()),
            _ => Ok(orgnr),
        }
    }

    /// The municipality's FHIR base URL, absolute, without a trailing slash.
    fn base_url(&self, orgnr: Orgnr, headers: &HeaderMap, uri: &Uri) -> Result<String, ApiError> {
        let root = match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!(
                "{}://{}",
                if self.https { "https" } else { "http" },
                request_host(headers, uri)?
            ),
        };
        Ok(format!("{root}/fhir/r4/{orgnr}"))
    }
}

/// The `Host` header (or the HTTP/2 authority), checked to be a plain
/// `host[:port]` so it can be put into links safely.
fn request_host(headers: &HeaderMap, uri: &Uri) -> Result<String, ApiError> {
    let host = match headers.get(header::HOST) {
        Some(h) => h.to_str().ok().map(str::to_string),
        None => uri.authority().map(|a| a.as_str().to_string()),
    };
    let valid = |h: &str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-:[]_".contains(&c))
    };
    match host {
        Some(h) if valid(&h) => Ok(h),
        _ => Err(ApiError::invalid(
            "the Host header is missing or not a valid host[:port]; send it (or have the hub configured with its public base URL)",
        )),
    }
}

/// The router: FHIR bases under `/fhir/r4/{orgnr}`, plus `/healthz` and
/// `/readyz`. Merge further routes (e.g. `/metrics`) with [`Router::merge`].
pub fn router(state: ApiState) -> Router {
    // Nested so that its fallback answers every other path under /fhir/r4
    // with an OperationOutcome while leaving the caller free to merge
    // routers that have a fallback of their own.
    let fhir = Router::new()
        .route(
            "/{orgnr}/metadata",
            get(metadata).fallback(method_not_allowed),
        )
        .route(
            "/{orgnr}/$pending",
            get(pull::pending).fallback(method_not_allowed),
        )
        .route(
            "/{orgnr}/$confirm",
            axum::routing::post(pull::confirm).fallback(method_not_allowed),
        )
        .route(
            "/{orgnr}/$status",
            get(pull::status).fallback(method_not_allowed),
        )
        .route(
            "/{orgnr}/AuditEvent",
            get(audit_event::search).fallback(method_not_allowed),
        )
        .route(
            "/{orgnr}/{resource_type}",
            get(search).fallback(method_not_allowed),
        )
        .route(
            "/{orgnr}/{resource_type}/{id}",
            get(read).fallback(method_not_allowed),
        )
        .fallback(no_such_endpoint);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/oauth/token",
            axum::routing::post(crate::auth::token::handler::<Arc<ApiState>>),
        )
        .nest("/fhir/r4", fhir)
        .route("/fhir/r4/", any(no_such_endpoint))
        .with_state(Arc::new(state))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(st): State<Arc<ApiState>>) -> Response {
    match st.store.ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed("GET, HEAD")
}

async fn no_such_endpoint() -> ApiError {
    ApiError::not_found(
        "no such FHIR endpoint: this server offers GET /fhir/r4/{orgnr}/metadata, /fhir/r4/{orgnr}/{Observation|Communication}?… and /fhir/r4/{orgnr}/{Observation|Communication}/{id}",
    )
}

/// Whether the client's `Accept` admits FHIR JSON. No header admits anything.
fn accepts_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return true;
    }
    values.any(|v| {
        let Ok(v) = v.to_str() else {
            return false;
        };
        v.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused
                && matches!(
                    media.as_str(),
                    "application/fhir+json"
                        | "application/json"
                        | "application/json+fhir"
                        | "application/*"
                        | "*/*"
                )
        })
    })
}

pub(crate) fn decode_query(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    query_string::decode(raw.unwrap_or_default()).map_err(ApiError::invalid)
}

fn check_accept(format_given: bool, headers: &HeaderMap) -> Result<(), ApiError> {
    if format_given || accepts_json(headers) {
        Ok(())
    } else {
        Err(ApiError::not_acceptable())
    }
}

fn resource_type(segment: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(segment).ok_or_else(|| {
        ApiError::not_found("this server serves only Observation and Communication (see metadata)")
    })
}

fn path_error(_: PathRejection) -> ApiError {
    ApiError::not_found("the path is not valid UTF-8 after percent-decoding")
}

fn into_response(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn metadata(
    State(st): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    into_response(metadata_inner(&st, path, query, &headers, &uri))
}

fn metadata_inner(
    st: &ApiState,
    path: Result<Path<String>, PathRejection>,
    query: Option<String>,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let Path(orgnr) = path.map_err(path_error)?;
    let orgnr = st.municipality(&orgnr)?;
    let format_given = search_params::parse_plain(&decode_query(query.as_deref())?, true)?;
    check_accept(format_given, headers)?;
    let base = st.base_url(orgnr, headers, uri)?;
    Ok(fhir_response(
        StatusCode::OK,
        capability::capability_statement(&base),
    ))
}

async fn read(
    State(st): State<Arc<ApiState>>,
    caller: Caller,
    path: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    into_response(read_inner(st, caller, path, query, headers).await)
}

async fn read_inner(
    st: Arc<ApiState>,
    caller: Caller,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Option<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((orgnr, rt, id)) = path.map_err(path_error)?;
    let orgnr = st.municipality(&orgnr)?;
    let rt = resource_type(&rt)?;
    let not_found = || {
        ApiError::not_found(format!(
            "no {} with this id here; ids are the UUIDs in this base's search results",
            rt.as_str()
        ))
    };
    caller.authorize(orgnr, Scope::for_resource(rt), not_found)?;
    let format_given = search_params::parse_plain(&decode_query(query.as_deref())?, false)?;
    check_accept(format_given, &headers)?;
    let id = uuid::Uuid::try_parse(&id).map_err(|_| not_found())?;
    let mut rec = audit_record(&caller, orgnr, AuditAction::Read);
    rec.add_resource(crate::store::ResourceRef {
        resource_type: rt,
        id,
    });
    let found = from_store(st.store.get(orgnr, rt, id)).await?;
    let stored = match found {
        Some(s)
            if s.municipality == orgnr && s.resource.resource_type == rt && s.resource.id == id =>
        {
            s
        }
        Some(s) => {
            tracing::error!(
                requested_municipality = %orgnr,
                resource = %s.resource,
                "store returned another record than the one asked for; not served"
            );
            return Err(not_found());
        }
        None => {
            rec.outcome = AuditOutcome::MinorFailure;
            st.audit(rec).await?;
            return Err(not_found());
        }
    };
    rec.patients = st.audit.patient_of(&stored.json).into_iter().collect();
    st.audit(rec).await?;
    tracing::debug!(municipality = %orgnr, resource = %stored.resource, "read");
    let last_modified = http_date(&stored);
    let mut resp = fhir_response(StatusCode::OK, stored.json);
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        resp.headers_mut().insert(header::LAST_MODIFIED, v);
    }
    Ok(resp)
}

fn http_date(s: &StoredResource) -> String {
    s.last_updated()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Awaits a store call; a failure is logged and answered 500 (its message
/// may name internals, so the caller gets none of it).
async fn from_store<T>(
    f: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, ApiError> {
    f.await.map_err(|e| {
        tracing::error!(error = %e, "store call failed");
        ApiError::internal()
    })
}

async fn search(
    State(st): State<Arc<ApiState>>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    into_response(search_inner(st, caller, path, query, headers, uri).await)
}

async fn search_inner(
    st: Arc<ApiState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Option<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let Path((orgnr, rt)) = path.map_err(path_error)?;
    let orgnr = st.municipality(&orgnr)?;
    let rt = resource_type(&rt)?;
    caller.authorize(orgnr, Scope::for_resource(rt), || {
        ApiError::not_found(
            "no FHIR base at this path: use /fhir/r4/{orgnr} with the 9-digit organisation number of a municipality this hub serves",
        )
    })?;
    let pairs = decode_query(query.as_deref())?;
    let parsed = search_params::parse_search(rt, &pairs)?;
    check_accept(parsed.format_given, &headers)?;
    let base = st.base_url(orgnr, &headers, &uri)?;
    let params = parsed.params;

    let page = if params.matches_nothing {
        SearchPage {
            items: Vec::new(),
            next: None,
        }
    } else {
        from_store(st.store.search(params.to_query(orgnr, rt))).await?
    };
    if let Some(stray) = page
        .items
        .iter()
        .find(|s| s.municipality != orgnr || s.resource.resource_type != rt)
    {
        tracing::error!(
            requested_municipality = %orgnr,
            resource = %stray.resource,
            "store search returned a record of another municipality or type; page not served"
        );
        return Err(ApiError::internal());
    }
    let mut rec = audit_record(&caller, orgnr, AuditAction::Search);
    rec.query = Some(format!(
        "{}?{}",
        rt.as_str(),
        st.audit.sanitize_query(&pairs)
    ));
    for s in &page.items {
        rec.add_resource(s.resource);
    }
    rec.patients = st
        .audit
        .patients_of(page.items.iter().map(|s| s.json.as_str()));
    if let Some(p) = query_patient(&st.audit, &pairs)
        && !rec.patients.iter().any(|q| q.key == p.key)
    {
        rec.patients.push(p);
    }
    st.audit(rec).await?;
    tracing::debug!(
        municipality = %orgnr,
        resource_type = rt.as_str(),
        entries = page.items.len(),
        "search"
    );
    let body = searchset_body(&base, rt, &params, page)?;
    Ok(fhir_response(StatusCode::OK, body))
}

/// The patient a search names (`subject:identifier` / `patient:identifier`).
pub(crate) fn query_patient(
    audit: &Auditor,
    pairs: &[(String, String)],
) -> Option<crate::store::audit::AuditPatient> {
    pairs
        .iter()
        .find(|(k, _)| k == "subject:identifier" || k == "patient:identifier")
        .and_then(|(_, v)| v.split_once('|'))
        .map(|(system, value)| audit.patient(system, value))
}

fn searchset_body(
    base: &str,
    rt: ResourceType,
    params: &SearchParams,
    page: SearchPage,
) -> Result<String, ApiError> {
    let link = |cursor: Option<u64>| {
        let q = params.link_query(cursor);
        if q.is_empty() {
            format!("{base}/{}", rt.as_str())
        } else {
            format!("{base}/{}?{q}", rt.as_str())
        }
    };
    let self_url = link(params.cursor);
    let next_url = page.next.map(|seq| link(Some(seq)));
    bundle::searchset(base, page.items, &self_url, next_url.as_deref()).map_err(|e| {
        tracing::error!(error = %e, "corrupt record in search page");
        ApiError::internal()
    })
}
