//! Online backup and restore with the real binary: `knutepunkt backup`
//! takes a backup of a running hub while a vendor keeps submitting,
//! `knutepunkt restore` writes it into a fresh directory, and a second hub
//! started on it serves the same resources (same ids, same `lastUpdated`),
//! continues its pull consumer from its floor, and shows the audit trail
//! written before the backup. `knutepunkt compact` runs beside the backup,
//! as an operator's cron jobs may start both at one hour. A damaged backup
//! file is refused before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use conformance_tests::harness::events::{self, OSLO};
use conformance_tests::harness::{
    ADMIN_TOKEN, Hub, HubOptions, ReceiptStatus, binary, entry_refs, get_json, ok, search_all,
    vakt_confirm,
};
use knutepunkt::domain::synthetic;
use knutepunkt::proto::v1 as pb;
use serde_json::Value;

const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";

/// Oslo, pulled by `oslo-vakt`.
async fn start(data: &Path) -> Hub {
    let cfg = ok(conformance_tests::harness::oslo_pulled_by_vakt(None));
    let opts = HubOptions {
        config_extra: cfg,
        ..HubOptions::default()
    };
    ok(Hub::start(data, opts).await)
}

/// Every Observation and Communication of Oslo, by `Type/id`.
async fn resources(hub: &Hub) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for t in ["Observation", "Communication"] {
        let url = format!("{}/{t}?_count=100", hub.fhir_base(OSLO));
        for r in ok(search_all(&url).await) {
            let key = format!("{t}/{}", r["id"].as_str().unwrap_or(""));
            out.insert(key, r);
        }
    }
    out
}

/// Oslo's audit trail (optionally narrowed by `query`), by AuditEvent id.
async fn audit(hub: &Hub, query: &str) -> BTreeMap<String, Value> {
    let url = format!("{}/AuditEvent?_count=100{query}", hub.fhir_base(OSLO));
    ok(search_all(&url).await)
        .into_iter()
        .map(|e| (e["id"].as_str().unwrap_or("").to_string(), e))
        .collect()
}

async fn pending(hub: &Hub, count: usize) -> Vec<String> {
    let (status, b) = ok(get_json(&format!(
        "{}/$pending?consumer=oslo-vakt&_count={count}",
        hub.fhir_base(OSLO)
    ))
    .await);
    assert_eq!(status, 200, "{b}");
    entry_refs(&b)
}

async fn confirm(hub: &Hub, refs: &[String]) {
    let body = conformance_tests::harness::journaled(refs);
    let (status, text) = ok(vakt_confirm(&hub.fhir_base(OSLO), &body).await);
    assert_eq!(status, 200, "{text}");
}

async fn submit(c: &mut knutepunkt::proto::client::EventClient, ev: pb::Event) -> String {
    let r = ok(c.submit(ev).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32, "{r:?}");
    r.resource
}

/// Runs `knutepunkt <args>`; (success, stdout, stderr).
async fn knutepunkt(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = ok(tokio::process::Command::new(ok(binary("knutepunkt")))
        .args(args)
        .env_remove("KNUTEPUNKT_CONFIG")
        .output()
        .await);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A vendor that submits heart rates until stopped: (resource, sent at,
/// answered at) of each accepted one.
fn keep_submitting(
    mut c: knutepunkt::proto::client::EventClient,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant, Instant)>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && i < 300 {
            let sent = Instant::now();
            let r = submit(
                &mut c,
                events::heart_rate(&format!("live-{i}"), OSLO, i % 5),
            )
            .await;
            out.push((r, sent, Instant::now()));
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out
    })
}

/// What hub A held before the backup: every acknowledged resource, the
/// ones its pull consumer confirmed, and its audit trail (all, and of
/// patient 1).
struct Before {
    resources: Vec<String>,
    confirmed: Vec<String>,
    trail: BTreeMap<String, Value>,
    trail_p1: BTreeMap<String, Value>,
}

/// Patient 1's audit records, as a query string.
fn by_patient_1() -> String {
    format!("&patient:identifier={FNR_OID}|{}", synthetic::fnr(1))
}

/// The backup, while a vendor keeps submitting: its file, what the vendor
/// sent (resource, sent, acknowledged), and when the backup started and
/// ended.
struct Taken {
    file: PathBuf,
    live: Vec<(String, Instant, Instant)>,
    started: Instant,
    done: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_resources_floors_and_audit() {
    if conformance_tests::pg::embedded_store_only(
        "a_backup_taken_under_load_restores_resources_floors_and_audit",
    ) {
        return;
    }
    let dir = ok(tempfile::tempdir());
    let a = start(&dir.path().join("a")).await;
    let before = fill(&a).await;
    // The admin API wants its token for a backup, like for everything else.
    let r = ok(reqwest::get(format!("http://{}/admin/backup", a.admin)).await);
    assert_eq!(r.status(), 401);

    let taken = backup_under_load(&a, dir.path()).await;
    let in_a = resources(&a).await;
    let b_dir = dir.path().join("b");
    restore(&taken.file, &b_dir).await;
    let b = start(&b_dir).await;
    let in_b = resources(&b).await;
    same_resources(&in_a, &in_b, &before, &taken);
    // The pull consumer continues from its floor: nothing confirmed before
    // the backup is offered again, everything else in it is.
    let offered: BTreeSet<String> = pending(&b, 500).await.into_iter().collect();
    let want: BTreeSet<String> = in_b
        .keys()
        .filter(|r| !before.confirmed.contains(r))
        .cloned()
        .collect();
    assert_eq!(offered, want, "what hub B offers oslo-vakt");

    audit_trail_came_along(&b, &before).await;
}

/// Readings, a RED alarm and the note answering it; ten confirmed by the
/// pull consumer (the alarm first), the rest pending; reads and a search
/// that the audit trail must keep.
async fn fill(a: &Hub) -> Before {
    let mut c = ok(a.client().await);
    let mut before = Vec::new();
    for i in 0..30 {
        before.push(submit(&mut c, events::heart_rate(&format!("hr-{i}"), OSLO, i % 4)).await);
    }
    let alarm = submit(
        &mut c,
        events::alarm("al-1", OSLO, 1, "4.1", pb::Severity::Red),
    )
    .await;
    let note = submit(&mut c, events::note("no-1", OSLO, 1, "al-1")).await;
    before.extend([alarm.clone(), note.clone()]);
    // Some confirmed by the pull consumer, the rest still pending.
    let confirmed = pending(a, 10).await;
    assert_eq!(confirmed.len(), 10);
    assert_eq!(confirmed[0], alarm, "the RED alarm comes first");
    confirm(a, &confirmed).await;
    // Reads that the audit trail must keep.
    let (status, _) = ok(get_json(&format!("{}/{alarm}", a.fhir_base(OSLO))).await);
    assert_eq!(status, 200);
    let (status, _) = ok(get_json(&format!(
        "{}/Observation?subject:identifier={FNR_OID}|{}",
        a.fhir_base(OSLO),
        synthetic::fnr(1)
    ))
    .await);
    assert_eq!(status, 200);
    let trail = audit(a, "").await;
    let trail_p1 = audit(a, &by_patient_1()).await;
    assert!(trail.len() >= 4 && !trail_p1.is_empty(), "{trail:#?}");

    Before {
        resources: before,
        confirmed,
        trail,
        trail_p1,
    }
}

/// `knutepunkt backup` while a vendor keeps submitting and `knutepunkt
/// compact` rewrites the store's tables beside it.
async fn backup_under_load(a: &Hub, dir: &Path) -> Taken {
    let stop = Arc::new(AtomicBool::new(false));
    let live = keep_submitting(ok(a.client().await), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let file = dir.join("hub.kpbackup");
    let admin = format!("http://{}", a.admin);
    let backup_started = Instant::now();
    let backup_args: [&std::ffi::OsStr; 7] = [
        "backup".as_ref(),
        "--admin".as_ref(),
        admin.as_ref(),
        "--admin-token".as_ref(),
        ADMIN_TOKEN.as_ref(),
        "--out".as_ref(),
        file.as_os_str(),
    ];
    let compact_args: [&std::ffi::OsStr; 5] = [
        "compact".as_ref(),
        "--admin".as_ref(),
        admin.as_ref(),
        "--admin-token".as_ref(),
        ADMIN_TOKEN.as_ref(),
    ];
    let ((success, out, err), compacted) =
        tokio::join!(knutepunkt(&backup_args), knutepunkt(&compact_args));
    let backup_done = Instant::now();
    assert!(
        compacted.0,
        "compact failed: {}\n{}",
        compacted.1, compacted.2
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let live = ok(live.await);
    assert!(success, "backup failed: {out}\n{err}");
    assert!(out.contains("backup written"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = ok(std::fs::metadata(&file)).permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds national ids: 0600");
    assert!(!PathBuf::from(format!("{}.tmp", file.display())).exists());
    Taken {
        file,
        live,
        started: backup_started,
        done: backup_done,
    }
}

/// `knutepunkt restore` into a fresh directory.
async fn restore(file: &Path, b_dir: &Path) {
    let (success, out, err) = knutepunkt(&[
        "restore".as_ref(),
        "--from".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        b_dir.as_os_str(),
    ])
    .await;
    assert!(success, "restore failed: {out}\n{err}");
    assert!(out.contains("restored into"), "{out}");
}

/// The same resources, byte for byte (ids, lastUpdated), for all that is
/// in the backup: everything acknowledged before it started, nothing sent
/// after it ended.
fn same_resources(
    in_a: &BTreeMap<String, Value>,
    in_b: &BTreeMap<String, Value>,
    before: &Before,
    taken: &Taken,
) {
    for (r, res) in in_b {
        assert_eq!(in_a.get(r), Some(res), "{r} differs after restore");
    }
    let acked_before: Vec<&String> = before
        .resources
        .iter()
        .chain(
            taken
                .live
                .iter()
                .filter(|(_, _, at)| *at < taken.started)
                .map(|(r, _, _)| r),
        )
        .collect();
    for r in &acked_before {
        assert!(
            in_b.contains_key(*r),
            "{r} was acknowledged before the backup and is missing"
        );
    }
    for (r, sent, _) in &taken.live {
        if *sent > taken.done {
            assert!(
                !in_b.contains_key(r),
                "{r} was sent after the backup and is in it"
            );
        }
    }
    assert!(
        taken.live.len() > 5,
        "the vendor hardly submitted: {}",
        taken.live.len()
    );
}

/// The audit trail written before the backup is there, unchanged, also by
/// patient (so the pseudonym key came along).
async fn audit_trail_came_along(b: &Hub, before: &Before) {
    let trail_b = audit(b, "").await;
    for (id, ev) in &before.trail {
        assert_eq!(trail_b.get(id), Some(ev), "AuditEvent/{id} after restore");
    }
    let trail_b_p1 = audit(b, &by_patient_1()).await;
    for id in before.trail_p1.keys() {
        assert!(
            trail_b_p1.contains_key(id),
            "AuditEvent/{id} not found by patient"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_refused_before_anything_is_written() {
    if conformance_tests::pg::embedded_store_only(
        "a_damaged_backup_is_refused_before_anything_is_written",
    ) {
        return;
    }
    let dir = ok(tempfile::tempdir());
    let data = dir.path().join("a");
    let mut a = start(&data).await;
    let mut c = ok(a.client().await);
    for i in 0..10 {
        submit(&mut c, events::heart_rate(&format!("d-{i}"), OSLO, i)).await;
    }
    ok(a.stop().await);
    // The offline form, for a stopped hub.
    let file = dir.path().join("hub.kpbackup");
    let (success, out, err) = knutepunkt(&[
        "backup".as_ref(),
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        file.as_os_str(),
    ])
    .await;
    assert!(success, "offline backup failed: {out}\n{err}");

    let mut bytes = ok(std::fs::read(&file));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    let damaged = dir.path().join("damaged.kpbackup");
    ok(std::fs::write(&damaged, &bytes));
    let target = dir.path().join("restored");
    let (success, out, err) = knutepunkt(&[
        "restore".as_ref(),
        "--from".as_ref(),
        damaged.as_os_str(),
        "--data-dir".as_ref(),
        target.as_os_str(),
    ])
    .await;
    assert!(!success, "a damaged backup was restored: {out}");
    assert!(err.contains("damaged"), "{err}");
    assert!(
        !target.exists(),
        "restore wrote before it had checked the file"
    );

    // The intact file restores, and only into an empty directory.
    let (success, out, err) = knutepunkt(&[
        "restore".as_ref(),
        "--from".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ])
    .await;
    assert!(!success, "restored over a live data directory: {out}");
    assert!(err.contains("not empty"), "{err}");
}
