//! The CLI's client for the hub's admin API (part of the binary, not the
//! library): `knutepunkt dlq` and `knutepunkt compact` send their requests
//! through [`call`]. (`knutepunkt backup` streams a file instead.)

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// One admin API request with the token: its JSON body, or the API's
/// error message as the error.
pub async fn call(
    req: reqwest::RequestBuilder,
    token: Option<&str>,
    base: &str,
) -> anyhow::Result<Value> {
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let resp = req
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach the admin API at {base}; is the hub running, and is --admin right?"
            )
        })?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .context("the admin API answered something other than JSON")?;
    if !status.is_success() {
        bail!("{}", body["error"].as_str().unwrap_or("request failed"));
    }
    Ok(body)
}
