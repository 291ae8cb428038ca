//! `knutepunkt dlq` (part of the binary, not the library): the admin API's
//! client for dead letters: list, show, replay, replay-all, discard.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DlqAction {
    /// List dead letters (newest filters first: destination, time, code).
    #[command(
        after_help = "Example:\n  knutepunkt dlq list --destination oslo-epj --from 2026-11-23T00:00:00Z"
    )]
    List {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Most dead letters to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter: attempts, last error, the destination's answer.
    #[command(after_help = "Example:\n  knutepunkt dlq show oslo-epj 1763868000123456")]
    Show { destination: String, seq: u64 },
    /// Put one dead letter back in its destination's queue.
    #[command(after_help = "Example:\n  knutepunkt dlq replay oslo-epj 1763868000123456")]
    Replay { destination: String, seq: u64 },
    /// Put every dead letter matching the filter back in its queue.
    #[command(
        after_help = "Example:\n  knutepunkt dlq replay-all --destination oslo-epj --code 4.1"
    )]
    ReplayAll {
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
    /// Drop a dead letter for good; the reason is kept in its status.
    #[command(
        after_help = "Example:\n  knutepunkt dlq discard oslo-epj 1763868000123456 --reason \"entered by hand\""
    )]
    Discard {
        destination: String,
        seq: u64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(clap::Args, serde::Serialize)]
pub struct DlqFilterArgs {
    /// Only this destination.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    /// Received at or after this time (RFC 3339).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    /// Received before this time (RFC 3339).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    /// Only resources with this code (LOINC or VKP alert code).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

pub async fn dlq(admin: &str, token: Option<&str>, action: DlqAction) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = admin.trim_end_matches('/');
    let req = match &action {
        DlqAction::List { filter, limit } => {
            let mut q: Vec<(String, String)> = serde_json::to_value(filter)?
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect();
            q.push(("limit".into(), limit.to_string()));
            let qs = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&q)
                .finish();
            http.get(format!("{base}/admin/dlq?{qs}"))
        }
        DlqAction::Show { destination, seq } => {
            http.get(format!("{base}/admin/dlq/{destination}/{seq}"))
        }
        DlqAction::Replay { destination, seq } => {
            http.post(format!("{base}/admin/dlq/{destination}/{seq}/replay"))
        }
        DlqAction::ReplayAll { filter } => {
            http.post(format!("{base}/admin/dlq/replay")).json(filter)
        }
        DlqAction::Discard {
            destination,
            seq,
            reason,
        } => http
            .post(format!("{base}/admin/dlq/{destination}/{seq}/discard"))
            .json(&serde_json::json!({ "reason": reason })),
    };
    let body = crate::admin_call::call(req, token, base).await?;
    match (&action, body.as_array()) {
        (DlqAction::List { .. }, Some(list)) => {
            println!(
                "{:<20} {:<18} {:<9} {:>8}  {:<48} error",
                "destination", "seq", "class", "attempts", "resource"
            );
            for d in list {
                println!(
                    "{:<20} {:<18} {:<9} {:>8}  {:<48} {}",
                    d["destination"].as_str().unwrap_or(""),
                    d["seq"],
                    d["class"].as_str().unwrap_or(""),
                    d["attempts"],
                    d["resource"].as_str().unwrap_or(""),
                    d["error"].as_str().unwrap_or("")
                );
            }
            println!("{} dead letter(s)", list.len());
        }
        _ => println!("{}", serde_json::to_string_pretty(&body)?),
    }
    Ok(())
}
