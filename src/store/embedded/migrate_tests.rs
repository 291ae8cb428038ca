//! Unit test of `knutepunkt migrate` (`migrate.rs`) from a sled-era store.

use super::*;
use crate::domain::{Orgnr, ResourceType};
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::{Consumers, DeadLetterFilter, EventLog, ReplayGuard};

fn put(db: &sled::Db, k: Vec<u8>, v: Vec<u8>) {
    db.insert(k, v).unwrap_or_else(|e| panic!("{e}"));
}

fn name_seq(t: u8, name: &str, seq: u64) -> Vec<u8> {
    keys::name_seq(Some(t), name, seq)
}

/// Writes a sled store as the previous release wrote it: two readings and
/// a RED alarm of Oslo, one reading delivered, one still queued, the alarm
/// dead-lettered; one used jti. The resources' ids.
fn sled_era_store(old: &Path, oslo: Orgnr) -> Vec<[u8; 16]> {
    let sdb = sled::Config::new()
        .path(old)
        .open()
        .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<[u8; 16]> = (1u8..=3).map(|i| [i; 16]).collect();
    for (n, id) in ids.iter().enumerate() {
        let seq = 1_000 + n as u64;
        let alarm = n == 2;
        let json = if alarm {
            r#"{"resourceType":"Communication","priority":"stat"}"#
        } else {
            r#"{"resourceType":"Observation"}"#
        };
        let rec = OldRecord {
            org: oslo.as_u32(),
            rtype: if alarm { 2 } else { 1 },
            id: *id,
            patient: [7; 16],
            category: if alarm { "alert" } else { "vital-signs" },
            codes: vec![("http://loinc.org", "8867-4")],
            json,
        };
        let mut rk = vec![b'R'];
        rk.extend_from_slice(&seq.to_be_bytes());
        put(&sdb, rk, postcard::to_allocvec(&rec).unwrap_or_default());
        let mut ik = vec![b'I'];
        ik.extend_from_slice(id);
        put(&sdb, ik, seq.to_be_bytes().to_vec());
        let idem = OldIdem {
            hash: [n as u8; 32],
            org: oslo.as_u32(),
            rtype: rec.rtype,
            id: *id,
            is_alarm: alarm,
        };
        let mut dk = vec![b'D', 0, 2, b'v', b'1'];
        dk.push(b'0' + n as u8);
        put(&sdb, dk, postcard::to_allocvec(&idem).unwrap_or_default());
    }
    // Reading 1001 still queued (routine), alarm 1002 dead-lettered.
    let mut ok = keys::name_prefix(Some(b'O'), "epj");
    ok.push(Class::Routine as u8);
    ok.extend_from_slice(&1_001u64.to_be_bytes());
    put(&sdb, ok, vec![7; 16]);
    let dl = OldDlq {
        class: Class::Red as u8,
        attempts: 3,
        error: "destination answered 422".into(),
        response: None,
        at: "2026-11-30T10:00:00Z".into(),
        patient: [7; 16],
    };
    put(
        &sdb,
        name_seq(b'Q', "epj", 1_002),
        postcard::to_allocvec(&dl).unwrap_or_default(),
    );
    put(
        &sdb,
        [b"J\x01c".as_slice(), b"jti-1"].concat(),
        5_000u64.to_be_bytes().to_vec(),
    );
    sdb.flush().unwrap_or_else(|e| panic!("{e}"));
    drop(sdb);

    ids
}

/// The store of `sled_era_store`, moved over by `knutepunkt migrate`:
/// every event readable, the queued reading still pending, the dead letter
/// and the used jti kept.
#[tokio::test]
async fn a_sled_era_store_moves_over_with_its_queue_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    let oslo = Orgnr::parse("958935420").unwrap_or_else(|e| panic!("{e}"));
    let ids = sled_era_store(&old, oslo);
    let spec = ConsumerSpec {
        name: "epj".into(),
        municipality: oslo,
        escalation_only: false,
        escalate_to: None,
        red_deadline_us: 30_000_000,
        yellow_deadline_us: 300_000_000,
    };
    let mut seen = 0;
    let report = from_sled(&old, &new, std::slice::from_ref(&spec), &mut |n| seen = n)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (report.events, report.dead_letters, report.used_jtis),
        (3, 1, 1)
    );
    assert_eq!(seen, 3);

    let opts = EmbeddedOptions {
        min_free_bytes: 0,
        ..EmbeddedOptions::default()
    };
    let s = EmbeddedStore::open(&new, opts, vec![spec]).unwrap_or_else(|e| panic!("{e}"));
    let got = s
        .get(
            oslo,
            ResourceType::Observation,
            uuid::Uuid::from_bytes(ids[0]),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.map(|r| r.seq), Some(1_000));
    let queue: Vec<u64> = s
        .take("epj", 10, now_micros(), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|i| i.resource.seq)
        .collect();
    assert_eq!(queue, vec![1_001], "only the queued reading is pending");
    let dead = s
        .dead_letters(DeadLetterFilter::default(), 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].seq, dead[0].class), (1_002, Class::Red));
    assert!(matches!(
        s.jti_claim("c", "jti-1", 6_000, 10).await,
        Ok(false)
    ));
    s.close().await;
}
