//! The model's trickier rules, checked directly (the model-based test only
//! checks that backends agree with the model, not that the model is right).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::MemoryStore;
use crate::domain::{Orgnr, ResourceType, VendorId, synthetic};
use crate::normalize::Normalized;
use crate::store::{
    Class, ConsumerSpec, Consumers, DataClass, DeadLetterFilter, DeliveryState, EventLog,
    NewRecord, PutError, PutOutcome, RetentionPolicy, Settle, patient_key,
};

const A: &str = "958935420";
const B: &str = "964338531";
const SEC: u64 = 1_000_000;

fn org(s: &str) -> Orgnr {
    Orgnr::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn spec(name: &str, o: &str, escalation_only: bool, escalate_to: Option<&str>) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        municipality: org(o),
        escalation_only,
        escalate_to: escalate_to.map(str::to_string),
        red_deadline_us: 30 * SEC,
        yellow_deadline_us: 120 * SEC,
    }
}

/// A model at time 1000 s with `epj` (A, escalates to `vakt`), `vakt`
/// (escalation only) and `b-epj` (B); the handle moves its clock.
fn store() -> (MemoryStore, Arc<AtomicU64>) {
    let t = Arc::new(AtomicU64::new(1000 * SEC));
    let clock = t.clone();
    let s = MemoryStore::new(
        vec![
            spec("epj", A, false, Some("vakt")),
            spec("vakt", A, true, None),
            spec("b-epj", B, false, None),
        ],
        3600 * SEC,
        Arc::new(move || clock.load(Ordering::SeqCst)),
    );
    (s, t)
}

#[derive(Clone, Copy)]
enum Kind {
    Alarm(Class),
    Measurement,
    Note,
}

fn rec(event: &str, o: &str, patient: u32, kind: Kind, answers: Option<&str>) -> NewRecord {
    let v = VendorId("acme".into());
    let id = crate::domain::resource_id(&v, event);
    let (resource_type, category, class) = match kind {
        Kind::Alarm(c) => (ResourceType::Communication, "alert", c),
        Kind::Measurement => (ResourceType::Observation, "vital-signs", Class::Routine),
        Kind::Note => (ResourceType::Communication, "notification", Class::Routine),
    };
    NewRecord {
        vendor: v,
        event_id: event.into(),
        content_hash: [patient as u8; 32],
        municipality: org(o),
        patient_key: patient_key("urn:oid:2.16.578.1.12.4.1.4.1", &synthetic::fnr(patient)),
        resource: Normalized {
            resource_type,
            id,
            json: format!(
                "{{\"resourceType\":\"{}\",\"id\":\"{id}\"}}",
                resource_type.as_str()
            ),
            codes: vec![("http://loinc.org".into(), "8867-4".into())],
            category,
            urgent: class.is_urgent(),
        },
        answers_alarm: answers.map(str::to_string),
        is_alarm: matches!(kind, Kind::Alarm(_)),
        class,
    }
}

/// Stores `r` one second after the previous write; its seq.
async fn put(s: &MemoryStore, t: &AtomicU64, r: NewRecord) -> u64 {
    t.fetch_add(SEC, Ordering::SeqCst);
    let (o, rt) = (r.municipality, r.resource.resource_type);
    match s.put(r).await {
        Ok(PutOutcome::Accepted(rf)) => {
            let got = s.get(o, rt, rf.id).await.unwrap_or_else(|e| panic!("{e}"));
            got.unwrap_or_else(|| panic!("{rf} not readable")).seq
        }
        other => panic!("{other:?}"),
    }
}

async fn take(s: &MemoryStore, c: &str, max: usize, lease: Option<u64>) -> Vec<u64> {
    s.take(c, max, 2000 * SEC, lease)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|i| i.resource.seq)
        .collect()
}

async fn settle(s: &MemoryStore, c: &str, outcomes: Vec<(u64, Settle)>) -> usize {
    s.settle(c, outcomes)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .settled
}

fn dead() -> Settle {
    Settle::DeadLetter {
        attempts: 3,
        error: "422".into(),
        response: None,
    }
}

#[tokio::test]
async fn alarms_first_then_routine_by_seq_never_more_than_max() {
    let (s, t) = store();
    let m1 = put(&s, &t, rec("m1", A, 1, Kind::Measurement, None)).await;
    let y = put(&s, &t, rec("y", A, 1, Kind::Alarm(Class::Yellow), None)).await;
    let m2 = put(&s, &t, rec("m2", A, 2, Kind::Measurement, None)).await;
    let r = put(&s, &t, rec("r", A, 2, Kind::Alarm(Class::Red), None)).await;
    put(&s, &t, rec("other", B, 1, Kind::Measurement, None)).await;
    assert_eq!(take(&s, "epj", 10, None).await, vec![r, y, m1, m2]);
    assert_eq!(take(&s, "epj", 3, None).await, vec![r, y, m1]);
    assert_eq!(take(&s, "epj", 0, None).await, Vec::<u64>::new());
    // Escalation-only: nothing from the log.
    assert_eq!(take(&s, "vakt", 10, None).await, Vec::<u64>::new());
}

#[tokio::test]
async fn note_waits_for_its_alarm_and_holds_back_the_patients_later_routine_items() {
    let (s, t) = store();
    let alarm = put(&s, &t, rec("a", A, 1, Kind::Alarm(Class::Red), None)).await;
    let note = put(&s, &t, rec("n", A, 1, Kind::Note, Some("a"))).await;
    let later = put(&s, &t, rec("m", A, 1, Kind::Measurement, None)).await;
    let other = put(&s, &t, rec("m2", A, 2, Kind::Measurement, None)).await;
    // The alarm in the same batch lets the note through.
    assert_eq!(
        take(&s, "epj", 10, None).await,
        vec![alarm, note, later, other]
    );
    // Alarm leased: the note and the patient's later routine item wait;
    // another patient's item does not.
    assert_eq!(take(&s, "epj", 1, Some(3000 * SEC)).await, vec![alarm]);
    assert_eq!(take(&s, "epj", 10, None).await, vec![other]);
    // Settled (even as a dead letter): the note goes.
    assert_eq!(settle(&s, "epj", vec![(alarm, dead())]).await, 1);
    assert_eq!(take(&s, "epj", 10, None).await, vec![note, later, other]);
}

#[tokio::test]
async fn a_note_needs_an_alarm_of_the_same_vendor_and_municipality() {
    let (s, t) = store();
    put(&s, &t, rec("a", A, 1, Kind::Alarm(Class::Red), None)).await;
    put(&s, &t, rec("m", A, 1, Kind::Measurement, None)).await;
    for (r, eid) in [
        (rec("n1", B, 1, Kind::Note, Some("a")), "a"),
        (rec("n2", A, 1, Kind::Note, Some("m")), "m"),
        (rec("n3", A, 1, Kind::Note, Some("zz")), "zz"),
    ] {
        assert_eq!(
            s.put(r).await,
            Err(PutError::UnknownAlarm {
                event_id: eid.into()
            })
        );
    }
    let mut other_vendor = rec("n4", A, 1, Kind::Note, Some("a"));
    other_vendor.vendor = VendorId("other".into());
    assert!(matches!(
        s.put(other_vendor).await,
        Err(PutError::UnknownAlarm { .. })
    ));
}

#[tokio::test]
async fn resend_is_duplicate_or_conflict_inside_the_window_and_new_after_it() {
    let (s, t) = store();
    let first = put(&s, &t, rec("e", A, 1, Kind::Measurement, None)).await;
    let same = rec("e", A, 1, Kind::Measurement, None);
    assert!(matches!(s.put(same).await, Ok(PutOutcome::Duplicate(_))));
    assert!(matches!(
        s.put(rec("e", A, 2, Kind::Measurement, None)).await,
        Err(PutError::Conflict(_))
    ));
    t.fetch_add(3600 * SEC, Ordering::SeqCst);
    let again = put(&s, &t, rec("e", A, 2, Kind::Measurement, None)).await;
    assert!(again > first);
}

#[tokio::test]
async fn a_dead_lettered_alarm_escalates_once_even_after_replay_and_overdue() {
    let (s, t) = store();
    let red = put(&s, &t, rec("r", A, 1, Kind::Alarm(Class::Red), None)).await;
    let routine = put(&s, &t, rec("x", A, 1, Kind::Alarm(Class::Routine), None)).await;
    let rep = s
        .settle("epj", vec![(red, dead()), (routine, dead()), (red, dead())])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.settled, 2);
    assert_eq!(rep.escalated.len(), 1);
    assert!(rep.escalated[0].dead_lettered && rep.escalated[0].seq == red);
    assert_eq!(take(&s, "vakt", 10, None).await, vec![red]);
    // Replayed and refused again: no second escalation, not overdue either.
    assert!(s.dead_letter_replay("epj", red).await.unwrap_or(false));
    assert!(!s.dead_letter_replay("epj", red).await.unwrap_or(true));
    let rep = s.settle("epj", vec![(red, dead())]).await;
    assert!(rep.is_ok_and(|r| r.settled == 1 && r.escalated.is_empty()));
    assert!(
        s.escalate_overdue(red + 3600 * SEC)
            .await
            .is_ok_and(|e| e.is_empty())
    );
    let dls = s.dead_letters(DeadLetterFilter::default(), 10).await;
    assert_eq!(dls.map(|d| d.len()).ok(), Some(2));
}

#[tokio::test]
async fn overdue_alarms_escalate_once_at_their_deadline() {
    let (s, t) = store();
    let red = put(&s, &t, rec("r", A, 1, Kind::Alarm(Class::Red), None)).await;
    let yellow = put(&s, &t, rec("y", A, 1, Kind::Alarm(Class::Yellow), None)).await;
    assert_eq!(s_esc(&s, red + 30 * SEC - 1).await, Vec::<u64>::new());
    assert_eq!(s_esc(&s, red + 30 * SEC).await, vec![red]);
    assert_eq!(s_esc(&s, yellow + 200 * SEC).await, vec![yellow]);
    assert_eq!(s_esc(&s, yellow + 900 * SEC).await, Vec::<u64>::new());
    // Still pending for epj; the fallback has both.
    assert_eq!(take(&s, "epj", 10, None).await, vec![red, yellow]);
    assert_eq!(take(&s, "vakt", 10, None).await, vec![red, yellow]);
}

async fn s_esc(s: &MemoryStore, now: u64) -> Vec<u64> {
    s.escalate_overdue(now)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

#[tokio::test]
async fn retention_never_drops_an_unsettled_item_or_a_waiting_dead_letter() {
    let (s, t) = store();
    let delivered = put(&s, &t, rec("d", A, 1, Kind::Measurement, None)).await;
    let unsettled = put(&s, &t, rec("u", A, 1, Kind::Measurement, None)).await;
    let dead_one = put(&s, &t, rec("x", A, 1, Kind::Measurement, None)).await;
    let alarm = put(&s, &t, rec("a", A, 1, Kind::Alarm(Class::Red), None)).await;
    settle(
        &s,
        "epj",
        vec![(delivered, Settle::Delivered), (dead_one, dead())],
    )
    .await;
    settle(&s, "epj", vec![(alarm, Settle::Delivered)]).await;
    let policy = RetentionPolicy {
        default: [None, None, Some(10 * SEC)],
        ..RetentionPolicy::default()
    };
    assert_eq!(
        policy.keep_us(org(A), DataClass::Measurement),
        Some(10 * SEC)
    );
    let now = dead_one + 10 * SEC + 1;
    let rep = s.apply_retention(policy.clone(), now).await;
    let rep = rep.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((rep.removed, rep.held), (1, 2));
    let state = |seq| s.delivery_state("epj", seq);
    assert_eq!(state(delivered).await, Ok(None));
    assert_eq!(state(unsettled).await, Ok(Some(DeliveryState::Pending)));
    assert!(matches!(
        state(dead_one).await,
        Ok(Some(DeliveryState::DeadLettered { .. }))
    ));
    // The resend of a removed event is a new event.
    let again = put(&s, &t, rec("d", A, 1, Kind::Measurement, None)).await;
    assert!(again > alarm);
    // Discarded and settled: gone on the next pass.
    assert!(s.dead_letter_discard("epj", dead_one, "ok".into()).await == Ok(true));
    settle(&s, "epj", vec![(unsettled, Settle::Delivered)]).await;
    let rep = s.apply_retention(policy, now).await;
    assert_eq!(rep.map(|r| (r.removed, r.held)), Ok((2, 0)));
    assert_eq!(take(&s, "epj", 10, None).await, vec![again]);
}

#[tokio::test]
async fn leases_expire_at_now_and_vanish_on_restart() {
    let (s, t) = store();
    let m = put(&s, &t, rec("m", A, 1, Kind::Measurement, None)).await;
    let until = 5000 * SEC;
    assert_eq!(take(&s, "epj", 10, Some(until)).await, vec![m]);
    let at = |now| s.take("epj", 10, now, None);
    assert_eq!(at(until - 1).await.map(|v| v.len()), Ok(0));
    assert_eq!(at(until).await.map(|v| v.len()), Ok(1));
    assert!(matches!(
        s.delivery_state("epj", m).await,
        Ok(Some(DeliveryState::Leased { .. }))
    ));
    s.restart();
    assert_eq!(
        s.delivery_state("epj", m).await,
        Ok(Some(DeliveryState::Pending))
    );
    assert_eq!(
        s.delivery_state("b-epj", m).await,
        Ok(None),
        "another municipality's event is not b-epj's business"
    );
    assert_eq!(at(0).await.map(|v| v.len()), Ok(1));
}
