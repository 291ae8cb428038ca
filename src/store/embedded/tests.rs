//! Unit tests of the embedded backend's own rules (group commit, floors
//! across a restart, escalation of a refused alarm, retention); the
//! model-based test (`store/model_test.rs`) covers the traits' contract.

use std::path::Path;

use super::*;
use crate::domain::{VendorId, synthetic};
use crate::normalize::Normalized;
use crate::store::{Class, patient_key};

pub(super) const OSLO: &str = "958935420";

pub(super) fn org(s: &str) -> Orgnr {
    Orgnr::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn rec(event: &str, patient: u32, class: Class) -> NewRecord {
    let v = VendorId("v1".into());
    let id = crate::domain::resource_id(&v, event);
    let alarm = class != Class::Routine;
    NewRecord {
        vendor: v,
        event_id: event.into(),
        content_hash: [patient as u8; 32],
        municipality: org(OSLO),
        patient_key: patient_key("urn:oid:2.16.578.1.12.4.1.4.1", &synthetic::fnr(patient)),
        resource: Normalized {
            resource_type: if alarm {
                ResourceType::Communication
            } else {
                ResourceType::Observation
            },
            id,
            json: format!("{{\"resourceType\":\"Observation\",\"id\":\"{id}\"}}"),
            codes: vec![("http://loinc.org".into(), "8867-4".into())],
            category: if alarm { "alert" } else { "vital-signs" },
            urgent: alarm,
        },
        answers_alarm: None,
        is_alarm: alarm,
        class,
    }
}

fn spec(name: &str, escalate_to: Option<&str>, escalation_only: bool) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        municipality: org(OSLO),
        escalation_only,
        escalate_to: escalate_to.map(str::to_string),
        red_deadline_us: 30_000_000,
        yellow_deadline_us: 300_000_000,
    }
}

fn open(dir: &Path) -> EmbeddedStore {
    let opts = EmbeddedOptions {
        min_free_bytes: 0,
        ..EmbeddedOptions::default()
    };
    let specs = vec![
        spec("epj", Some("centre"), false),
        spec("centre", None, true),
    ];
    EmbeddedStore::open(dir, opts, specs).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) async fn put(s: &EmbeddedStore, r: NewRecord) -> u64 {
    let (o, rt, id) = (r.municipality, r.resource.resource_type, r.resource.id);
    let out = s.put(r).await;
    assert!(matches!(out, Ok(PutOutcome::Accepted(_))), "{out:?}");
    s.get(o, rt, id)
        .await
        .ok()
        .flatten()
        .map(|r| r.seq)
        .unwrap_or_else(|| panic!("stored record not readable"))
}

async fn take(s: &EmbeddedStore, c: &str, max: usize) -> Vec<u64> {
    s.take(c, max, now_micros(), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|i| i.resource.seq)
        .collect()
}

pub(super) fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn duplicates_conflicts_and_an_old_store_directory() {
    let dir = tmp();
    let s = open(dir.path());
    let r = rec("e1", 1, Class::Routine);
    put(&s, r.clone()).await;
    assert!(matches!(
        s.put(r.clone()).await,
        Ok(PutOutcome::Duplicate(_))
    ));
    let mut other = r.clone();
    other.content_hash = [9; 32];
    assert!(matches!(s.put(other).await, Err(PutError::Conflict(_))));
    s.close().await;
    let s = open(dir.path());
    assert!(matches!(s.put(r).await, Ok(PutOutcome::Duplicate(_))));
    s.close().await;

    let old = tmp();
    std::fs::write(old.path().join("conf"), b"segment_size: 8388608")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(old.path().join("db"), b"").unwrap_or_else(|e| panic!("{e}"));
    let err = EmbeddedStore::open(old.path(), EmbeddedOptions::default(), vec![])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("knutepunkt migrate"), "{err}");
}

#[tokio::test]
async fn concurrent_writers_share_group_commits_and_page_without_gaps() {
    let dir = tmp();
    let s = open(dir.path());
    let before = s.group_commits();
    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.put(rec(&format!("e{i}"), i % 7, Class::Routine)).await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await, Ok(Ok(PutOutcome::Accepted(_)))));
    }
    let commits = s.group_commits() - before;
    assert!(
        commits < 500,
        "500 concurrent writes took {commits} syncs: no group was shared"
    );
    let mut q = SearchQuery {
        municipality: org(OSLO),
        resource_type: ResourceType::Observation,
        patient: None,
        codes: vec![],
        category: None,
        min_seq: 0,
        max_seq: u64::MAX,
        after: None,
        count: 37,
        descending: false,
    };
    let mut seen = Vec::new();
    loop {
        let page = s.search(q.clone()).await.unwrap_or_else(|e| panic!("{e}"));
        seen.extend(page.items.iter().map(|r| r.seq));
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 500);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn alarms_jump_the_backlog_and_a_take_never_exceeds_max() {
    let dir = tmp();
    let s = open(dir.path());
    let mut routine = Vec::new();
    for i in 0..300 {
        routine.push(put(&s, rec(&format!("m{i}"), 1, Class::Routine)).await);
    }
    let red = put(&s, rec("a1", 1, Class::Red)).await;
    let got = take(&s, "epj", 1).await;
    assert_eq!(got, vec![red], "the alarm goes first, alone when max is 1");
    let got = take(&s, "epj", 100).await;
    assert_eq!(got.len(), 100);
    assert_eq!(got[0], red);
    assert_eq!(&got[1..], &routine[..99], "routine items in order");
}

#[tokio::test]
async fn a_note_never_goes_before_the_alarm_it_answers() {
    let dir = tmp();
    let s = open(dir.path());
    // Patient 1: a reading, then a note answering a RED alarm, then another
    // reading. While the alarm is unsettled the note waits, and so does the
    // later reading (FIFO per patient and class).
    let alarm = put(&s, rec("a1", 1, Class::Routine)).await;
    let mut note = rec("n1", 1, Class::Routine);
    note.answers_alarm = Some("a2".into());
    let mut a2 = rec("a2", 2, Class::Red);
    a2.is_alarm = true;
    let red = put(&s, a2).await;
    let note_seq = put(&s, note).await;
    let later = put(&s, rec("m1", 1, Class::Routine)).await;
    // Leased alarm: pending, so the note and the patient's later reading wait.
    let now = now_micros();
    let first = s
        .take("epj", 1, now, Some(now + 60_000_000))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first.iter().map(|i| i.resource.seq).collect::<Vec<_>>(),
        vec![red]
    );
    let next: Vec<u64> = s
        .take("epj", 10, now, Some(now + 60_000_000))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|i| i.resource.seq)
        .collect();
    assert_eq!(
        next,
        vec![alarm],
        "note {note_seq} and reading {later} wait"
    );
    let report = s
        .settle("epj", vec![(red, Settle::Delivered)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.settled, 1);
    // The reading `alarm` is still leased from the second take.
    assert_eq!(take(&s, "epj", 10).await, vec![note_seq, later]);
}

#[tokio::test]
async fn a_refused_red_alarm_escalates_at_once_and_only_once() {
    let dir = tmp();
    let s = open(dir.path());
    let red = put(&s, rec("a1", 1, Class::Red)).await;
    assert_eq!(take(&s, "epj", 10).await, vec![red]);
    let refuse = Settle::DeadLetter {
        attempts: 1,
        error: "422".into(),
        response: None,
    };
    let report = s
        .settle("epj", vec![(red, refuse.clone())])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.escalated.len(), 1);
    assert!(report.escalated[0].dead_lettered);
    assert_eq!(take(&s, "centre", 10).await, vec![red]);
    // Replayed and refused again: not escalated a second time.
    assert!(matches!(s.dead_letter_replay("epj", red).await, Ok(true)));
    let again = s
        .settle("epj", vec![(red, refuse)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.escalated.is_empty(), "{again:?}");
    let overdue = s
        .escalate_overdue(now_micros() + 3_600_000_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(overdue.is_empty(), "{overdue:?}");
}

async fn pending(s: &EmbeddedStore, c: &str) -> u64 {
    s.stats(c).await.unwrap_or_else(|e| panic!("{e}")).pending
}

/// `ALARM_WINDOW` is 3 in unit tests, so most of these alarms wait on disk.
#[tokio::test]
async fn alarms_above_the_window_are_neither_lost_nor_overtaken() {
    let dir = tmp();
    let s = open(dir.path());
    let mut reds = Vec::new();
    for i in 0..7 {
        reds.push(put(&s, rec(&format!("r{i}"), i, Class::Red)).await);
    }
    let mut yellows = Vec::new();
    for i in 0..4 {
        yellows.push(put(&s, rec(&format!("y{i}"), i, Class::Yellow)).await);
    }
    let mut routine = Vec::new();
    for i in 0..3 {
        routine.push(put(&s, rec(&format!("m{i}"), i, Class::Routine)).await);
    }
    assert_eq!(pending(&s, "epj").await, 14);
    // The routine window reads to the end of the log; the alarm windows
    // hold three each. Settling those three must not move the floor past
    // the RED alarms still on disk.
    assert_eq!(take(&s, "epj", 3).await, reds[..3]);
    let done = reds[..3].iter().map(|q| (*q, Settle::Delivered)).collect();
    s.settle("epj", done)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // An alarm above the window confirmed by seq (as a pull client that
    // found it by search may) is settled on disk and never offered.
    let r = s
        .settle("epj", vec![(reds[6], Settle::Delivered)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.settled, 1);
    let again = s
        .settle("epj", vec![(reds[6], Settle::Delivered)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.settled, 0, "settled twice");
    assert_eq!(pending(&s, "epj").await, 10);
    s.close().await;
    let s = open(dir.path());
    assert_eq!(pending(&s, "epj").await, 10);
    let mut want = reds[3..6].to_vec();
    want.extend(&yellows);
    want.extend(&routine);
    assert_eq!(take(&s, "epj", 20).await, want);
}

/// A RED alarm escalates on time although the window is full of older
/// alarms that were escalated already; each once, also after a restart.
#[tokio::test]
async fn overdue_alarms_above_the_window_escalate_once() {
    let dir = tmp();
    let s = open(dir.path());
    let mut reds = Vec::new();
    for i in 0..8 {
        reds.push(put(&s, rec(&format!("r{i}"), i, Class::Red)).await);
    }
    let later = now_micros() + 3_600_000_000;
    let escalate = |s: EmbeddedStore| async move {
        let out = s
            .escalate_overdue(later)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (s, out.iter().map(|e| e.seq).collect::<Vec<_>>())
    };
    let (s, first) = escalate(s).await;
    assert_eq!(first, reds);
    let (s, second) = escalate(s).await;
    assert!(second.is_empty(), "{second:?}");
    s.close().await;
    let s = open(dir.path());
    let (s, third) = escalate(s).await;
    assert!(third.is_empty(), "{third:?}");
    let red = put(&s, rec("r8", 9, Class::Red)).await;
    let (s, fourth) = escalate(s).await;
    assert_eq!(fourth, vec![red]);
    let mut all = reds.clone();
    all.push(red);
    assert_eq!(take(&s, "centre", 20).await, all);
}

#[tokio::test]
async fn a_restart_rebuilds_every_consumer_from_its_floor() {
    let dir = tmp();
    let s = open(dir.path());
    let mut seqs = Vec::new();
    for i in 0..50 {
        seqs.push(put(&s, rec(&format!("m{i}"), i % 3, Class::Routine)).await);
    }
    let red = put(&s, rec("a1", 1, Class::Red)).await;
    // Settle the alarm (above the floor) and the first 20 in order.
    let mut done: Vec<(u64, Settle)> = vec![(red, Settle::Delivered)];
    done.extend(seqs[..20].iter().map(|q| (*q, Settle::Delivered)));
    assert_eq!(take(&s, "epj", 30).await.len(), 30);
    let r = s
        .settle("epj", done)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.settled, 21);
    let before = s.stats("epj").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before.pending, 30);
    s.close().await;
    let s = open(dir.path());
    let after = s.stats("epj").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after.pending, 30, "{after:?}");
    assert!(
        after.floor >= seqs[19] && after.floor < seqs[20],
        "{after:?}"
    );
    assert_eq!(take(&s, "epj", 100).await, seqs[20..].to_vec());
}

#[tokio::test]
async fn retention_never_drops_what_a_consumer_has_not_settled() {
    let dir = tmp();
    let s = open(dir.path());
    let a = put(&s, rec("m1", 1, Class::Routine)).await;
    let b = put(&s, rec("m2", 1, Class::Routine)).await;
    take(&s, "epj", 1).await;
    s.settle("epj", vec![(a, Settle::Delivered)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let policy = RetentionPolicy {
        default: [Some(0); 3],
        ..RetentionPolicy::default()
    };
    let r = s
        .apply_retention(policy.clone(), now_micros() + 1_000_000)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.removed, r.held), (1, 1));
    let o = org(OSLO);
    let id = |e: &str| crate::domain::resource_id(&VendorId("v1".into()), e);
    let gone = s.get(o, ResourceType::Observation, id("m1")).await;
    assert!(matches!(gone, Ok(None)), "{gone:?}");
    let kept = s.get(o, ResourceType::Observation, id("m2")).await;
    assert!(matches!(kept, Ok(Some(_))));
    // After the idempotency key left with the event, a resend is new.
    assert!(matches!(
        s.put(rec("m1", 1, Class::Routine)).await,
        Ok(PutOutcome::Accepted(_))
    ));
    assert_eq!(take(&s, "epj", 10).await.first(), Some(&b));
}

/// The prune goes through the writer: it removes only what has expired,
/// and a jti claimed again after its expiry survives a prune in the same
/// group (the claim's new expiry must not be removed with the old entry).
#[tokio::test]
async fn jti_prune_removes_only_the_expired_and_never_a_fresh_claim() {
    let dir = tmp();
    let s = open(dir.path());
    assert!(matches!(s.jti_claim("c", "old", 100, 50).await, Ok(true)));
    assert!(matches!(
        s.jti_claim("c", "live", 1_000, 50).await,
        Ok(true)
    ));
    assert!(matches!(s.jti_claim("c", "again", 100, 50).await, Ok(true)));
    // "again" is claimed anew and pruned at once, maybe in one group.
    let (claim, pruned) = tokio::join!(s.jti_claim("c", "again", 2_000, 500), s.jti_prune(500));
    assert!(matches!(claim, Ok(true)), "{claim:?}");
    assert!(matches!(pruned, Ok(1 | 2)), "{pruned:?}");
    // Expired "old" may be claimed again; "live" and "again" may not.
    assert!(matches!(
        s.jti_claim("c", "live", 1_000, 600).await,
        Ok(false)
    ));
    assert!(matches!(
        s.jti_claim("c", "again", 2_000, 600).await,
        Ok(false)
    ));
    assert!(matches!(s.jti_claim("c", "old", 900, 600).await, Ok(true)));
    s.close().await;
}

#[tokio::test]
async fn audit_and_jti_share_the_group_commit_and_survive_a_restart() {
    use crate::store::audit::{AuditAction, AuditAgent, AuditOutcome, AuditQuery};
    let dir = tmp();
    let s = open(dir.path());
    let record = crate::store::audit::AuditRecord {
        municipality: org(OSLO),
        agent: AuditAgent::Client("oslo-epj".into()),
        action: AuditAction::Read,
        query: None,
        resources: vec![],
        patients: vec![],
        outcome: AuditOutcome::Success,
    };
    let seqs = s
        .audit_append(vec![record.clone(), record.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(seqs[0] < seqs[1]);
    // A push's record: numbered in the same sequence, journaled without a
    // sync of its own, durable with the jti claim's group below.
    let pushed = s
        .audit_append_unsynced(vec![record])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(pushed[0] > seqs[1]);
    assert!(matches!(s.jti_claim("c", "j1", 100, 50).await, Ok(true)));
    assert!(matches!(s.jti_claim("c", "j1", 100, 60).await, Ok(false)));
    s.close().await;
    let s = open(dir.path());
    assert!(matches!(s.jti_claim("c", "j1", 100, 70).await, Ok(false)));
    assert!(matches!(s.jti_claim("c", "j1", 200, 101).await, Ok(true)));
    let page = s
        .audit_search(AuditQuery {
            municipality: org(OSLO),
            patient: None,
            min_seq: 0,
            max_seq: u64::MAX,
            after: None,
            count: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.items.len(), 3);
}

/// A backup taken while the store is open restores into a store that reads
/// the same records under the same seqs and continues each consumer from
/// its floor; restore refuses a directory that is not empty.
#[tokio::test]
async fn backup_and_restore_keep_records_and_floors() {
    let dir = tmp();
    let s = open(&dir.path().join("store"));
    let mut seqs = Vec::new();
    for i in 0..30u32 {
        seqs.push(put(&s, rec(&format!("b{i}"), i % 3, Class::Routine)).await);
    }
    let first = take(&s, "epj", 10).await;
    assert_eq!(first, seqs[..10]);
    let done = first.iter().map(|q| (*q, Settle::Delivered)).collect();
    s.settle("epj", done)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut file = Vec::new();
    let files = vec![("audit-pseudonym.key".to_string(), b"k".to_vec())];
    let summary = s
        .snapshotter()
        .backup(&files, &mut file, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(summary.per_keyspace["log"] >= 30, "{summary:?}");
    s.close().await;

    let backup = dir.path().join("b.kpbackup");
    std::fs::write(&backup, &file).unwrap_or_else(|e| panic!("{e}"));
    let target = dir.path().join("restored");
    let report =
        backup::restore(&backup, &target, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.summary.records, summary.records);
    let key = std::fs::read(target.join("audit-pseudonym.key")).unwrap_or_default();
    assert_eq!(key, b"k");
    let again = backup::restore(&backup, &target, &mut |_, _| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(again.contains("not empty"), "{again}");

    let r = open(&target.join("store"));
    for (i, seq) in seqs.iter().enumerate() {
        let id = crate::domain::resource_id(&VendorId("v1".into()), &format!("b{i}"));
        let got = r.get(org(OSLO), ResourceType::Observation, id).await;
        assert_eq!(got.ok().flatten().map(|g| g.seq), Some(*seq));
    }
    assert_eq!(take(&r, "epj", 100).await, seqs[10..]);
    r.close().await;
}
