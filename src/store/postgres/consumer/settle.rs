//! Settling a consumer's items on PostgreSQL: every outcome of one call in
//! one transaction that holds the consumer's row lock; the floor folds
//! before COMMIT, and fallbacks are woken only after it.

use std::collections::HashSet;

use deadpool_postgres::Transaction;

use super::{Cons, DEAD, DELIVERED, Info, NOT_SETTLED, info, load};
use crate::store::postgres::{Shared, now_micros, read_err, sql_i64, write_err};
use crate::store::{Escalation, Settle, SettleReport, StoreError};

pub(crate) async fn settle(
    s: &Shared,
    name: &str,
    outcomes: Vec<(u64, Settle)>,
) -> Result<SettleReport, StoreError> {
    let mut client = s.client().await?;
    let tx = client.transaction().await.map_err(write_err(s))?;
    let c = load(s, &tx, name, true).await?;
    let seqs: Vec<i64> = outcomes.iter().map(|(q, _)| sql_i64(*q)).collect();
    let infos = info(s, &tx, &c, &seqs).await?;
    let now = sql_i64(now_micros());
    let mut sorted = Sorted::default();
    let w = write_err(s);
    for (seq, outcome) in outcomes {
        let seq = sql_i64(seq);
        let Some(i) = infos
            .get(&seq)
            .filter(|i| i.pending && !sorted.done.contains(&seq))
        else {
            continue; // settled before, or never this consumer's
        };
        let kind = match outcome {
            Settle::Release => {
                sorted.released.push(seq);
                continue;
            }
            Settle::Delivered => DELIVERED,
            Settle::DeadLetter {
                attempts,
                error,
                response,
            } => {
                let row = DeadLetterRow {
                    attempts,
                    error,
                    response,
                    at: now,
                };
                if let Some(e) = dead_letter(s, &tx, &c, (seq, i), row).await? {
                    sorted.report.escalated.push(e);
                }
                DEAD
            }
        };
        sorted.finals.push(seq);
        sorted.kinds.push(kind);
        sorted.done.insert(seq);
        sorted.report.settled += 1;
    }
    write_settled(s, &tx, &c, &sorted, now).await?;
    if !sorted.done.is_empty() && c.reads_log() {
        fold(s, &tx, &c).await?;
    }
    if !sorted.report.escalated.is_empty() {
        tx.execute("SELECT pg_notify('kp_commit', '')", &[])
            .await
            .map_err(&w)?;
    }
    tx.commit().await.map_err(&w)?;
    if !sorted.report.escalated.is_empty() {
        s.wake();
    }
    Ok(sorted.report)
}

/// The outcomes of one `settle` call, sorted for the statements that write
/// them.
#[derive(Default)]
struct Sorted {
    /// Items given back: their leases go.
    released: Vec<i64>,
    /// Items settled for good, with their kind (`DELIVERED`, `DEAD`).
    finals: Vec<i64>,
    kinds: Vec<i16>,
    /// The same items as `finals`: one naming each counts.
    done: HashSet<i64>,
    report: SettleReport,
}

/// A dead letter as its row stores it.
struct DeadLetterRow {
    attempts: u32,
    error: String,
    response: Option<String>,
    at: i64,
}

/// Writes the dead letter of item `seq` (with its info `i`) and hands an
/// alarm to the consumer's fallback; says whom it went to, if anyone.
async fn dead_letter(
    s: &Shared,
    tx: &Transaction<'_>,
    c: &Cons<'_>,
    (seq, i): (i64, &Info),
    row: DeadLetterRow,
) -> Result<Option<Escalation>, StoreError> {
    let DeadLetterRow {
        attempts,
        error,
        response,
        at,
    } = row;
    tx.execute(
        "INSERT INTO kp_dead_letters (consumer, seq, class, attempts, error, response, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (consumer, seq) DO UPDATE SET \
         class = EXCLUDED.class, attempts = EXCLUDED.attempts, error = EXCLUDED.error, \
         response = EXCLUDED.response, at = EXCLUDED.at, discarded_at = NULL, \
         discard_reason = NULL",
        &[
            &c.name,
            &seq,
            &(i.class as i16),
            &(attempts.min(i32::MAX as u32) as i32),
            &error,
            &response,
            &at,
        ],
    )
    .await
    .map_err(write_err(s))?;
    tracing::warn!(destination = c.name, seq, attempts, error = %error, "delivery dead-lettered");
    metrics::counter!("knutepunkt_delivery_dead_lettered_total", "destination" => c.name.to_string()).increment(1);
    crate::store::postgres::escalation::escalate(s, tx, c, seq, i, true).await
}

/// Drops the leases of the released items, and writes the final state of
/// the others (their queue rows and leases go in the same statement).
async fn write_settled(
    s: &Shared,
    tx: &Transaction<'_>,
    c: &Cons<'_>,
    sorted: &Sorted,
    now: i64,
) -> Result<(), StoreError> {
    // One statement each for the releases and for the final states, not
    // one per item (a Bundle is up to `max_batch` items).
    let w = write_err(s);
    if !sorted.released.is_empty() {
        tx.execute(
            "DELETE FROM kp_leases WHERE consumer = $1 AND seq = ANY($2)",
            &[&c.name, &sorted.released],
        )
        .await
        .map_err(&w)?;
    }
    if !sorted.finals.is_empty() {
        tx.execute(
            "WITH q AS (DELETE FROM kp_queue WHERE consumer = $1 AND seq = ANY($2)), \
             l AS (DELETE FROM kp_leases WHERE consumer = $1 AND seq = ANY($2)) \
             INSERT INTO kp_settled (consumer, seq, kind, at) \
             SELECT $1, x.seq, x.kind, $4 FROM unnest($2::bigint[], $3::smallint[]) AS x(seq, kind) \
             ON CONFLICT (consumer, seq) DO UPDATE SET kind = EXCLUDED.kind, at = EXCLUDED.at",
            &[&c.name, &sorted.finals, &sorted.kinds, &now],
        )
        .await
        .map_err(&w)?;
    }
    Ok(())
}

/// Moves the floor up to just below the first unsettled log item and drops
/// the settled rows it now covers. Everything at or below the sequencer's
/// last seq is committed (group transactions commit in seq order).
async fn fold(s: &Shared, tx: &Transaction<'_>, c: &Cons<'_>) -> Result<(), StoreError> {
    let last: i64 = tx
        .query_one("SELECT last_seq FROM kp_sequencer WHERE id = 1", &[])
        .await
        .map_err(read_err(s))?
        .get(0);
    let first: Option<i64> = tx
        .query_one(
            &format!(
                "SELECT min(e.seq) FROM kp_events e WHERE e.municipality = $2 AND e.seq > $3 \
                 AND e.seq <= $4 AND {NOT_SETTLED}"
            ),
            &[&c.name, &c.org, &c.base(), &last],
        )
        .await
        .map_err(read_err(s))?
        .get(0);
    let floor = first.map_or(last, |f| f - 1);
    if floor <= c.floor {
        return Ok(());
    }
    tx.execute(
        "UPDATE kp_consumers SET floor_seq = $2 WHERE name = $1",
        &[&c.name, &floor],
    )
    .await
    .map_err(write_err(s))?;
    // Rows of queue items from outside the log stay: they are the only
    // record of how those ended.
    tx.execute(
        "DELETE FROM kp_settled st USING kp_events e WHERE st.consumer = $1 AND st.seq <= $2 \
         AND st.seq > $3 AND e.seq = st.seq AND e.municipality = $4",
        &[&c.name, &floor, &c.start, &c.org],
    )
    .await
    .map_err(write_err(s))?;
    Ok(())
}
