//! Escalation: an urgent item a consumer dead-lettered, or did not settle
//! before its deadline, is handed to the consumer's fallback once.

use deadpool_postgres::Transaction;

use super::consumer::{Cons, Info, NOT_SETTLED, info, load};
use super::{Shared, from_i64, read_err, sql_i64, write_err};
use crate::store::{Escalation, StoreError};

/// Hands an urgent item to the consumer's fallback once (marks it
/// escalated and queues it there unless the fallback has had it).
pub(crate) async fn escalate(
    s: &Shared,
    tx: &Transaction<'_>,
    c: &Cons<'_>,
    seq: i64,
    i: &Info,
    dead_lettered: bool,
) -> Result<Option<Escalation>, StoreError> {
    let Some(to) = c.spec.escalate_to.as_deref() else {
        return Ok(None);
    };
    let Some(resource) = i.resource else {
        return Ok(None);
    };
    if !i.class.is_urgent() {
        return Ok(None);
    }
    let fresh = tx
        .execute(
            "INSERT INTO kp_escalated (consumer, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&c.name, &seq],
        )
        .await
        .map_err(write_err(s))?;
    if fresh == 0 {
        return Ok(None);
    }
    // The fallback gets it unless it has had it: pending, settled in any
    // way (a dead letter there waits for an operator's replay), or read
    // from its own log (then it is one of those).
    let fb = load(s, tx, to, false).await?;
    let had: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM kp_queue q WHERE q.consumer = $1 AND q.seq = $2) \
               OR EXISTS (SELECT 1 FROM kp_settled st WHERE st.consumer = $1 AND st.seq = $2) \
               OR EXISTS (SELECT 1 FROM kp_events e WHERE e.seq = $2 AND $3 \
                          AND e.municipality = $4 AND e.seq > $5)",
            &[&fb.name, &seq, &fb.reads_log(), &fb.org, &fb.start],
        )
        .await
        .map_err(read_err(s))?
        .get(0);
    if !had {
        tx.execute(
            "INSERT INTO kp_queue (consumer, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&to, &seq],
        )
        .await
        .map_err(write_err(s))?;
    }
    Ok(Some(Escalation {
        from: c.name.to_string(),
        to: to.to_string(),
        seq: from_i64(seq),
        resource,
        class: i.class,
        dead_lettered,
    }))
}

pub(crate) async fn escalate_overdue(s: &Shared, now: u64) -> Result<Vec<Escalation>, StoreError> {
    let mut out = Vec::new();
    for (name, spec) in &s.consumers {
        if spec.escalate_to.is_none() {
            continue;
        }
        let mut client = s.client().await?;
        let tx = client.transaction().await.map_err(write_err(s))?;
        let c = load(s, &tx, name, true).await?;
        let red = sql_i64(spec.red_deadline_us);
        let yellow = sql_i64(spec.yellow_deadline_us);
        let rows = tx
            .query(
                &format!(
                    "SELECT e.seq FROM kp_events e WHERE e.class < 2 \
                     AND e.seq + CASE WHEN e.class = 0 THEN $5::bigint ELSE $6::bigint END <= $7 \
                     AND NOT EXISTS (SELECT 1 FROM kp_escalated x WHERE x.consumer = $1 AND x.seq = e.seq) \
                     AND (EXISTS (SELECT 1 FROM kp_queue q WHERE q.consumer = $1 AND q.seq = e.seq) \
                       OR ($2 AND e.municipality = $3 AND e.seq > $4 AND {NOT_SETTLED})) \
                     ORDER BY e.seq"
                ),
                &[&c.name, &c.reads_log(), &c.org, &c.base(), &red, &yellow, &sql_i64(now)],
            )
            .await
            .map_err(read_err(s))?;
        let due: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        if due.is_empty() {
            continue;
        }
        let infos = info(s, &tx, &c, &due).await?;
        for seq in due {
            if let Some(i) = infos.get(&seq)
                && let Some(e) = escalate(s, &tx, &c, seq, i, false).await?
            {
                out.push(e);
            }
        }
        tx.execute("SELECT pg_notify('kp_commit', '')", &[])
            .await
            .map_err(write_err(s))?;
        tx.commit().await.map_err(write_err(s))?;
        s.wake();
    }
    Ok(out)
}
