//! Retention: once a minute, the store removes events past their
//! configured retention (`[retention]`, per municipality and data class)
//! that every destination has settled. Events still owed to a destination
//! are kept and counted, so an operator sees when a stuck destination holds
//! data back.
//!
//! Metrics: `knutepunkt_retention_removed_total` (counter) and
//! `knutepunkt_retention_held` (gauge: past retention, kept because a
//! destination has not settled them, as of the last pass).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{RetentionPolicy, Store, time_to_seq};

/// How often retention runs.
pub const EVERY: Duration = Duration::from_secs(60);

/// Runs a retention pass every `every` until `stop` is cancelled (a pass in
/// progress finishes first). Nothing to do when no class has a retention.
pub fn spawn(
    policy: RetentionPolicy,
    store: Arc<dyn Store>,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let forever_only = policy.default.iter().all(Option::is_none)
            && policy
                .per_municipality
                .values()
                .all(|p| p.iter().all(Option::is_none));
        if forever_only {
            tracing::info!("no retention configured: events are kept forever");
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let now = time_to_seq(chrono::Utc::now());
            match store.apply_retention(policy.clone(), now).await {
                Ok(r) => {
                    metrics::counter!("knutepunkt_retention_removed_total").increment(r.removed);
                    metrics::gauge!("knutepunkt_retention_held").set(r.held as f64);
                    if r.removed > 0 || r.held > 0 {
                        tracing::info!(
                            removed = r.removed,
                            held = r.held,
                            "retention: removed events past their retention (their disk space comes back as compaction reaches them, or now with `knutepunkt compact`); held ones a destination has not settled"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "retention pass failed; trying again later"),
            }
        }
    })
}
