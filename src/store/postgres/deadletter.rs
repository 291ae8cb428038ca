//! Dead letters and where an item stands with a consumer (`$status`). A
//! dead letter is settled for the consumer's floor but keeps its event from
//! retention until it is replayed or discarded.

use super::consumer::load;
use super::{Shared, from_i64, now_micros, read_err, sql_i64, write_err};
use crate::store::{
    Class, DeadLetter, DeadLetterFilter, DeliveryState, ResourceRef, StoreError, seq_to_time,
    time_to_seq,
};

pub(crate) async fn dead_letters(
    s: &Shared,
    filter: &DeadLetterFilter,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let from = sql_i64(filter.from.map_or(0, time_to_seq));
    let to = sql_i64(filter.to.map_or(u64::MAX, time_to_seq));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let client = s.client().await?;
    // Ordered by name bytes ("C"), then seq: the same order on every server.
    let rows = client
        .query(
            "SELECT d.consumer, d.seq, e.rtype, e.id, e.class, d.attempts, d.error, d.response, \
               d.at, e.code_values \
             FROM kp_dead_letters d JOIN kp_events e ON e.seq = d.seq \
             WHERE d.discarded_at IS NULL AND ($1::text IS NULL OR d.consumer = $1) \
               AND d.seq >= $2 AND d.seq < $3 AND ($4::text IS NULL OR $4 = ANY(e.code_values)) \
             ORDER BY d.consumer COLLATE \"C\", d.seq LIMIT $5",
            &[&filter.destination, &from, &to, &filter.code, &limit],
        )
        .await
        .map_err(read_err(s))?;
    rows.iter()
        .map(|r| {
            let seq = from_i64(r.get(1));
            let rtype: i16 = r.get(2);
            let resource_type = crate::domain::ResourceType::from_tag(rtype as u8)
                .ok_or_else(|| StoreError::Corrupt(format!("event {seq}: type {rtype}")))?;
            Ok(DeadLetter {
                destination: r.get(0),
                seq,
                resource: ResourceRef {
                    resource_type,
                    id: r.get(3),
                },
                class: Class::from_tag(r.get::<_, i16>(4) as u8).unwrap_or(Class::Routine),
                attempts: r.get::<_, i32>(5).max(0) as u32,
                error: r.get(6),
                response: r.get(7),
                at: seq_to_time(from_i64(r.get(8))),
                codes: r.get(9),
            })
        })
        .collect()
}

pub(crate) async fn replay(s: &Shared, name: &str, seq: u64) -> Result<bool, StoreError> {
    let mut client = s.client().await?;
    let tx = client.transaction().await.map_err(write_err(s))?;
    let c = load(s, &tx, name, true).await?;
    let seq = sql_i64(seq);
    let gone = tx
        .execute(
            "DELETE FROM kp_dead_letters WHERE consumer = $1 AND seq = $2 AND discarded_at IS NULL",
            &[&c.name, &seq],
        )
        .await
        .map_err(write_err(s))?;
    if gone == 0 {
        return Ok(false);
    }
    // Pending again by the explicit queue; the settled row goes so `$status`
    // says pending and a new settle records how it ended this time.
    tx.execute(
        "WITH st AS (DELETE FROM kp_settled WHERE consumer = $1 AND seq = $2) \
         INSERT INTO kp_queue (consumer, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&c.name, &seq],
    )
    .await
    .map_err(write_err(s))?;
    tx.execute("SELECT pg_notify('kp_commit', '')", &[])
        .await
        .map_err(write_err(s))?;
    tx.commit().await.map_err(write_err(s))?;
    s.wake();
    tracing::info!(destination = name, seq, "dead letter replayed");
    Ok(true)
}

pub(crate) async fn discard(
    s: &Shared,
    name: &str,
    seq: u64,
    reason: &str,
) -> Result<bool, StoreError> {
    let mut client = s.client().await?;
    let tx = client.transaction().await.map_err(write_err(s))?;
    let c = load(s, &tx, name, true).await?;
    let n = tx
        .execute(
            "UPDATE kp_dead_letters SET discarded_at = $3, discard_reason = $4 \
             WHERE consumer = $1 AND seq = $2 AND discarded_at IS NULL",
            &[&c.name, &sql_i64(seq), &sql_i64(now_micros()), &reason],
        )
        .await
        .map_err(write_err(s))?;
    tx.commit().await.map_err(write_err(s))?;
    if n > 0 {
        tracing::info!(destination = name, seq, reason, "dead letter discarded");
    }
    Ok(n > 0)
}

pub(crate) async fn delivery_state(
    s: &Shared,
    name: &str,
    seq: u64,
) -> Result<Option<DeliveryState>, StoreError> {
    let spec = s.consumer(name)?;
    let client = s.client().await?;
    // One statement, so floor, settled row, queue and lease are one snapshot.
    let row = client
        .query_opt(
            "SELECT e.municipality, c.start_seq, c.floor_seq, \
               EXISTS (SELECT 1 FROM kp_queue q WHERE q.consumer = $1 AND q.seq = $2), \
               (SELECT l.lease_until FROM kp_leases l WHERE l.consumer = $1 AND l.seq = $2), \
               st.at, d.at, d.error, d.discarded_at, d.discard_reason \
             FROM kp_events e \
             LEFT JOIN kp_consumers c ON c.name = $1 \
             LEFT JOIN kp_settled st ON st.consumer = $1 AND st.seq = $2 \
             LEFT JOIN kp_dead_letters d ON d.consumer = $1 AND d.seq = $2 \
             WHERE e.seq = $2",
            &[&name, &sql_i64(seq)],
        )
        .await
        .map_err(read_err(s))?;
    let Some(r) = row else {
        return Ok(None);
    };
    let seq = sql_i64(seq);
    let org: i32 = r.get(0);
    let start: i64 = r.get::<_, Option<i64>>(1).unwrap_or(i64::MAX);
    let floor: i64 = r.get::<_, Option<i64>>(2).unwrap_or(i64::MAX);
    let settled_at: Option<i64> = r.get(5);
    let in_scope = !spec.escalation_only && org == spec.municipality.as_u32() as i32 && seq > start;
    let pending = r.get::<_, bool>(3) || (in_scope && seq > floor && settled_at.is_none());
    if pending {
        let now = sql_i64(now_micros());
        return Ok(Some(match r.get::<_, Option<i64>>(4) {
            Some(until) if until > now => DeliveryState::Leased {
                until: seq_to_time(from_i64(until)),
            },
            _ => DeliveryState::Pending,
        }));
    }
    if let Some(at) = r.get::<_, Option<i64>>(6) {
        return Ok(Some(match r.get::<_, Option<i64>>(8) {
            Some(when) => DeliveryState::Discarded {
                at: seq_to_time(from_i64(when)),
                reason: r.get::<_, Option<String>>(9).unwrap_or_default(),
            },
            None => DeliveryState::DeadLettered {
                at: seq_to_time(from_i64(at)),
                error: r.get(7),
            },
        }));
    }
    if let Some(at) = settled_at {
        return Ok(Some(DeliveryState::Delivered {
            at: Some(seq_to_time(from_i64(at))),
        }));
    }
    Ok(in_scope.then_some(DeliveryState::Delivered { at: None }))
}

/// Takes or renews the push delivery lease of `name` for this hub: granted
/// when no hub holds it, this hub holds it, or the holder's lease ran out
/// (by the database's clock, so hubs' clocks need not agree).
pub(crate) async fn delivery_lease(
    s: &Shared,
    name: &str,
    ttl_us: u64,
) -> Result<bool, StoreError> {
    s.consumer(name)?;
    let client = s.client().await?;
    let rows = client
        .query(
            "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us) \
             INSERT INTO kp_push_leases AS p (consumer, hub_id, lease_until) \
             SELECT $1, $2, now.us + $3 FROM now \
             ON CONFLICT (consumer) DO UPDATE SET hub_id = EXCLUDED.hub_id, \
               lease_until = EXCLUDED.lease_until \
             WHERE p.hub_id = EXCLUDED.hub_id \
               OR p.lease_until < (extract(epoch FROM clock_timestamp()) * 1000000)::bigint \
             RETURNING 1",
            &[&name, &s.hub_id, &sql_i64(ttl_us)],
        )
        .await
        .map_err(write_err(s))?;
    Ok(!rows.is_empty())
}

pub(crate) async fn delivery_lease_release(s: &Shared, name: &str) -> Result<(), StoreError> {
    let client = s.client().await?;
    client
        .execute(
            "DELETE FROM kp_push_leases WHERE consumer = $1 AND hub_id = $2",
            &[&name, &s.hub_id],
        )
        .await
        .map_err(write_err(s))?;
    Ok(())
}
