//! The outbox: conditional create across reopen, the NDJSON layout, id
//! conflicts, the arrival log, leftover temp files.

use super::*;
use crate::epj::bundle::parse_transaction;
use serde_json::json;

fn entries(items: &[(&str, &str)]) -> Vec<Entry> {
    let e: Vec<_> = items
        .iter()
        .map(|(id, ident)| {
            json!({
                "request": {"method": "POST", "url": "Communication",
                            "ifNoneExist": format!("identifier=sys|{ident}")},
                "resource": {"resourceType": "Communication", "id": id,
                             "identifier": [{"system": "sys", "value": ident}],
                             "priority": "stat",
                             "subject": {"identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": "01818800155"}}}
            })
        })
        .collect();
    let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": e});
    parse_transaction(&serde_json::to_vec(&b).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn conditional_create_survives_reopen_and_lost_index() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (ob, _) = Outbox::open(dir.path(), false, Layout::Files, None)?;
    let out = ob.commit(&entries(&[("a", "1"), ("b", "2"), ("c", "1")]))?;
    assert_eq!(
        out.iter()
            .map(|o| (o.created, o.id.as_str()))
            .collect::<Vec<_>>(),
        vec![(true, "a"), (true, "b"), (false, "a")]
    );
    assert!(dir.path().join("Communication-a.json").exists());
    drop(ob);

    let (ob, rep) = Outbox::open(dir.path(), false, Layout::Files, None)?;
    assert_eq!(rep.resources, 2);
    assert_eq!(rep.recovered, 0);
    let out = ob.commit(&entries(&[("a", "1")]))?;
    assert!(!out[0].created);
    drop(ob);

    // Index lost: rebuilt from the files.
    fs::remove_file(dir.path().join(INDEX_FILE))?;
    let (ob, rep) = Outbox::open(dir.path(), false, Layout::Files, None)?;
    assert_eq!(rep.recovered, 2);
    assert!(!ob.commit(&entries(&[("b", "2")]))?[0].created);
    Ok(())
}

#[test]
fn ndjson_writes_a_file_per_bundle_and_recovers_the_newest()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (ob, _) = Outbox::open(dir.path(), false, Layout::Ndjson, None)?;
    ob.commit(&entries(&[("a", "1"), ("b", "2"), ("c", "1")]))?;
    ob.commit(&entries(&[("a", "1")]))?; // nothing new: no file
    ob.commit(&entries(&[("d", "4")]))?;
    let first = fs::read_to_string(dir.path().join("bundle-000000000000.ndjson"))?;
    let ids: Vec<String> = first
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["id"].to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(ids, vec!["\"a\"", "\"b\""]);
    assert!(dir.path().join("bundle-000000000001.ndjson").exists());
    assert!(!dir.path().join("bundle-000000000002.ndjson").exists());
    assert!(!dir.path().join("Communication-a.json").exists());
    drop(ob);

    // The index lost its last line (a crash before the append): the
    // newest Bundle file restores it, and numbering goes on after it.
    let index = fs::read_to_string(dir.path().join(INDEX_FILE))?;
    let kept: Vec<&str> = index.lines().take(2).collect();
    fs::write(dir.path().join(INDEX_FILE), kept.join("\n") + "\n")?;
    let (ob, rep) = Outbox::open(dir.path(), false, Layout::Ndjson, None)?;
    assert_eq!((rep.resources, rep.recovered), (3, 1));
    assert!(!ob.commit(&entries(&[("d", "4")]))?[0].created);
    assert!(ob.commit(&entries(&[("e", "5")]))?[0].created);
    assert!(dir.path().join("bundle-000000000002.ndjson").exists());
    Ok(())
}

#[test]
fn id_conflict_writes_nothing() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (ob, _) = Outbox::open(dir.path(), false, Layout::Files, None)?;
    ob.commit(&entries(&[("a", "1")]))?;
    let r = ob.commit(&entries(&[("n", "9"), ("a", "2")]));
    assert!(matches!(r, Err(CommitError::IdConflict { index: 1, .. })));
    assert!(!dir.path().join("Communication-n.json").exists());
    Ok(())
}

#[test]
fn log_has_no_national_id() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (ob, _) = Outbox::open(dir.path(), false, Layout::Files, None)?;
    ob.commit(&entries(&[("a", "1")]))?;
    let log = fs::read_to_string(dir.path().join(RECEIVED_LOG))?;
    assert!(!log.contains("01818800155"));
    assert!(log.contains("\"priority\":\"stat\""));
    let sub = ob.pseudonym("urn:oid:2.16.578.1.12.4.1.4.1|01818800155");
    assert!(log.contains(&sub));
    Ok(())
}

#[test]
fn removes_leftover_temp_files() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join(".Observation-x.json.tmp"), b"{")?;
    let (_ob, rep) = Outbox::open(dir.path(), false, Layout::Files, None)?;
    assert_eq!(rep.temp_removed, 1);
    Ok(())
}
