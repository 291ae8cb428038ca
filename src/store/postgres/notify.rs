//! Wake-ups and readiness. One connection per hub LISTENs on `kp_commit`
//! (every group commit and every escalation or replay NOTIFYs it), so a
//! delivery worker on any hub wakes when another hub stored something for
//! it. The same task reads the sequencer once a second: a fallback for a
//! lost notification, and the readiness probe (`ready()` is `Err` while it
//! fails). On failure it reconnects by itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::{Shared, describe, from_i64};

const POLL: Duration = Duration::from_secs(1);

pub(crate) fn spawn(shared: Arc<Shared>, pg: super::PgConnect, stop: CancellationToken) {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            if let Err(e) = listen(&shared, &pg, &stop).await {
                shared.mark_unreachable(&e);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    });
}

/// One connection's life: LISTEN, forward notifications, poll. Returns why
/// it ended (never while it works, until `stop`).
async fn listen(s: &Shared, pg: &super::PgConnect, stop: &CancellationToken) -> Result<(), String> {
    let (client, mut conn) = pg
        .cfg
        .connect(pg.tls.clone())
        .await
        .map_err(|e| describe(&e))?;
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    // The connection must be polled for the client to work; its messages
    // are the notifications.
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = stream.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "PostgreSQL LISTEN connection ended");
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute("LISTEN kp_commit")
            .await
            .map_err(|e| describe(&e))?;
        let mut tick = tokio::time::interval(POLL);
        let mut seen = 0u64;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                n = notes.recv() => match n {
                    Some(_) => s.wake(),
                    None => return Err("the LISTEN connection closed".to_string()),
                },
                _ = tick.tick() => {
                    let row = tokio::time::timeout(
                        POLL * 5,
                        client.query_one("SELECT last_seq FROM kp_sequencer WHERE id = 1", &[]),
                    )
                    .await
                    .map_err(|_| "PostgreSQL did not answer within 5 s".to_string())?
                    .map_err(|e| describe(&e))?;
                    if !s.reachable.swap(true, Ordering::AcqRel) {
                        tracing::warn!("PostgreSQL reachable again: taking writes");
                    }
                    let last = from_i64(row.get(0));
                    if last != seen {
                        seen = last;
                        if last > *s.committed.borrow() {
                            s.committed.send_replace(last);
                        }
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}
