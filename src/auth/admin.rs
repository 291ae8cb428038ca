//! The admin API's credential: one bearer token, of which the hub keeps only
//! the SHA-256 (`admin.token_sha256`, or hashed at start from
//! `admin.token_file`). Compared in constant time. Without one configured
//! every admin request is refused, unless `insecure_dev` is on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthSetupError, Reason, count_rejection};
use crate::config::Config;

pub struct AdminGuard {
    hash: Option<[u8; 32]>,
    insecure_dev: bool,
    warned: AtomicBool,
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl AdminGuard {
    pub fn from_config(cfg: &Config) -> Result<AdminGuard, AuthSetupError> {
        let hash = match (&cfg.admin.token_sha256, &cfg.admin.token_file) {
            (Some(h), _) => Some(parse_hex32(&h.to_ascii_lowercase()).ok_or_else(|| {
                AuthSetupError::AdminToken {
                    path: "admin.token_sha256".into(),
                    what: "must be 64 hex digits".into(),
                }
            })?),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| AuthSetupError::AdminToken {
                        path: path.display().to_string(),
                        what: format!("cannot read it: {e}"),
                    })?;
                let token = text.trim();
                if token.len() < 16 {
                    return Err(AuthSetupError::AdminToken {
                        path: path.display().to_string(),
                        what: "the token must be at least 16 characters".into(),
                    });
                }
                Some(Sha256::digest(token.as_bytes()).into())
            }
            (None, None) => None,
        };
        if hash.is_none() && !cfg.insecure_dev {
            tracing::warn!(
                "no admin credential configured (admin.token_sha256 or admin.token_file): the admin API refuses every request"
            );
        }
        Ok(AdminGuard {
            hash,
            insecure_dev: cfg.insecure_dev,
            warned: AtomicBool::new(false),
        })
    }

    /// `Ok` when the request may use the admin API.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        match (token, &self.hash) {
            (None, _) if self.insecure_dev => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "INSECURE DEV MODE: serving an admin request without the admin token (logged once)"
                    );
                }
                metrics::counter!("knutepunkt_auth_insecure_requests_total", "endpoint" => "admin")
                    .increment(1);
                Ok(())
            }
            (_, None) => Err(
                "the admin API has no credential configured: set admin.token_sha256 or admin.token_file",
            ),
            (None, Some(_)) => Err(
                "send the admin token: Authorization: Bearer <token> (knutepunkt dlq --admin-token or KNUTEPUNKT_ADMIN_TOKEN)",
            ),
            (Some(t), Some(h)) => {
                let got: [u8; 32] = Sha256::digest(t.as_bytes()).into();
                if bool::from(got.ct_eq(h)) {
                    Ok(())
                } else {
                    Err("wrong admin token")
                }
            }
        }
    }
}

/// Axum middleware in front of every admin route.
pub async fn middleware(State(g): State<Arc<AdminGuard>>, req: Request, next: Next) -> Response {
    match g.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(msg) => {
            count_rejection("admin", Reason::AdminToken);
            let mut r = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({ "error": msg })),
            )
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"knutepunkt-admin\""),
            );
            r
        }
    }
}
