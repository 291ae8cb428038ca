//! Black-box tests of the `epj-adapter` binary: each test starts the real
//! program on a free port with a self-signed certificate, reads its address
//! from stdout and talks HTTPS to it with reqwest, trusting only that
//! certificate, exactly as the hub will.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use knutepunkt::domain::synthetic::fnr;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

type Res<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const EVENT_SYSTEM: &str = "urn:knutepunkt:event-id";
const FNR_SYSTEM: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
const ORGNR: &str = "958935420";

/// A running adapter, its folders and a client that trusts its certificate.
struct Epj {
    child: Child,
    base: String,
    client: reqwest::Client,
    stderr: Arc<Mutex<String>>,
    root: PathBuf,
}

impl Epj {
    async fn start(root: &Path, extra: &[&str]) -> Res<Epj> {
        let tls = root.join("tls");
        let out = root.join("out");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_epj-adapter"));
        cmd.arg("--listen").arg("127.0.0.1:0");
        if !extra.contains(&"--tls-cert") {
            cmd.arg("--self-signed").arg(&tls);
        }
        let mut child = cmd
            .arg("--out")
            .arg(&out)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stderr_pipe = child.stderr.take().ok_or("no stderr")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(l))) => l,
            other => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                return Err(format!(
                    "epj-adapter did not print its address ({other:?}); exit: {status:?}; stderr:\n{err}"
                )
                .into());
            }
        };
        let base = line
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .to_string();
        // Keep reading stdout so the adapter never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let pem = std::fs::read(tls.join("cert.pem"))?;
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem)?])
            .timeout(Duration::from_secs(20))
            .build()?;
        Ok(Epj {
            child,
            base,
            client,
            stderr,
            root: root.to_path_buf(),
        })
    }

    async fn stop(mut self) -> Res<String> {
        self.child.kill().await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(self.stderr.lock().map(|s| s.clone()).unwrap_or_default())
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    async fn post_bundle(&self, bundle: &Value) -> Result<reqwest::Response, reqwest::Error> {
        self.client
            .post(format!("{}/fhir", self.base))
            .header("content-type", "application/fhir+json")
            .body(serde_json::to_vec(bundle).unwrap_or_default())
            .send()
            .await
    }

    async fn set_mode(&self, mode: Value) -> Res {
        let r = self
            .client
            .post(format!("{}/_admin/mode", self.base))
            .json(&mode)
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("set mode: {} {}", r.status(), r.text().await?).into());
        }
        Ok(())
    }

    async fn stats(&self) -> Res<Value> {
        let r = self
            .client
            .get(format!("{}/_admin/stats", self.base))
            .send()
            .await?;
        Ok(r.json().await?)
    }

    fn resource_files(&self) -> Res<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.out())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }
}

fn alarm(n: u32, code: &str, priority: &str) -> Value {
    json!({
        "resourceType": "Communication",
        "id": format!("c0000000-0000-5000-8000-{n:012}"),
        "identifier": [{"system": EVENT_SYSTEM, "value": format!("alarm-{n}")}],
        "status": "completed",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category", "code": "alert"}]}],
        "priority": priority,
        "reasonCode": [{"coding": [{"system": "http://ehelse.no/fhir/CodeSystem/vkp-alert-code-v090", "code": code}]}],
        "subject": {"identifier": {"system": FNR_SYSTEM, "value": fnr(n)}},
        "recipient": [{"identifier": {"system": "urn:oid:2.16.578.1.12.4.1.4.101", "value": ORGNR}}],
        "sent": "2025-01-01T03:00:00+01:00",
    })
}

fn pulse(n: u32) -> Value {
    json!({
        "resourceType": "Observation",
        "id": format!("0b000000-0000-5000-8000-{n:012}"),
        "identifier": [{"system": EVENT_SYSTEM, "value": format!("pulse-{n}")}],
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "subject": {"identifier": {"system": FNR_SYSTEM, "value": fnr(n)}},
        "effectiveDateTime": "2025-01-01T03:00:00+01:00",
    })
}

fn transaction(resources: &[Value]) -> Value {
    let entry: Vec<Value> = resources
        .iter()
        .map(|r| {
            let t = r["resourceType"].as_str().unwrap_or_default();
            let v = r["identifier"][0]["value"].as_str().unwrap_or_default();
            json!({
                "fullUrl": format!("urn:uuid:{}", r["id"].as_str().unwrap_or_default()),
                "resource": r,
                "request": {"method": "POST", "url": t, "ifNoneExist": format!("identifier={EVENT_SYSTEM}|{v}")},
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entry})
}

fn statuses(resp: &Value) -> Vec<(String, String)> {
    resp["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    (
                        e["response"]["status"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        e["response"]["location"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn create_duplicate_and_restart_keep_one_file_per_identifier() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Epj::start(dir.path(), &[]).await?;
    let bundle = transaction(&[alarm(1, "4.1", "stat"), pulse(2)]);

    let r = epj.post_bundle(&bundle).await?;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()?
            .starts_with("application/fhir+json")
    );
    let body: Value = r.json().await?;
    assert_eq!(body["type"], "transaction-response");
    assert_eq!(
        statuses(&body),
        vec![
            (
                "201 Created".into(),
                "Communication/c0000000-0000-5000-8000-000000000001/_history/1".into()
            ),
            (
                "201 Created".into(),
                "Observation/0b000000-0000-5000-8000-000000000002/_history/1".into()
            ),
        ]
    );
    let files = epj.resource_files()?;
    assert_eq!(
        files,
        vec![
            "Communication-c0000000-0000-5000-8000-000000000001.json",
            "Observation-0b000000-0000-5000-8000-000000000002.json"
        ]
    );
    let written: Value = serde_json::from_slice(&std::fs::read(epj.out().join(&files[0]))?)?;
    assert_eq!(written, alarm(1, "4.1", "stat"));

    // Same identifiers again, one under a new id: 200 with the first location.
    let mut again = alarm(1, "4.1", "stat");
    again["id"] = json!("c0000000-0000-5000-8000-999999999999");
    let r = epj.post_bundle(&transaction(&[again, pulse(2)])).await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    assert_eq!(
        statuses(&body),
        vec![
            (
                "200 OK".into(),
                "Communication/c0000000-0000-5000-8000-000000000001/_history/1".into()
            ),
            (
                "200 OK".into(),
                "Observation/0b000000-0000-5000-8000-000000000002/_history/1".into()
            ),
        ]
    );
    assert_eq!(epj.resource_files()?.len(), 2);

    let s = epj.stats().await?;
    assert_eq!(s["requests_total"], 2);
    assert_eq!(s["by_status"]["200"], 2);
    assert_eq!(s["bundles_total"], 2);
    assert_eq!(s["entries_total"], 4);
    assert_eq!(s["max_bundle_entries"], 2);
    assert_eq!(s["created"], 2);
    assert_eq!(s["duplicates"], 2);

    // received.log: one line per created resource, in order, no national id.
    let log = std::fs::read_to_string(epj.out().join("received.log"))?;
    let lines: Vec<Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "Communication");
    assert_eq!(lines[0]["priority"], "stat");
    assert_eq!(lines[0]["codes"], json!(["4.1"]));
    assert_eq!(lines[1]["type"], "Observation");
    assert!(lines[0]["received"].as_str().unwrap_or_default().len() >= 27);
    assert!(lines[0]["subject"].is_string());
    assert!(!log.contains(&fnr(1)) && !log.contains(&fnr(2)));

    // Restart: the index survives, the certificate is kept.
    let cert_before = std::fs::read(dir.path().join("tls/cert.pem"))?;
    let stderr = epj.stop().await?;
    assert!(!stderr.contains(&fnr(1)) && !stderr.contains(&fnr(2)));
    let epj = Epj::start(dir.path(), &[]).await?;
    assert_eq!(cert_before, std::fs::read(dir.path().join("tls/cert.pem"))?);
    let r = epj
        .post_bundle(&transaction(&[alarm(1, "4.1", "stat"), pulse(3)]))
        .await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    let st = statuses(&body);
    assert_eq!(st[0].0, "200 OK");
    assert_eq!(st[1].0, "201 Created");
    assert_eq!(epj.resource_files()?.len(), 3);
    let stderr = epj.stop().await?;
    assert!(!stderr.contains(&fnr(1)) && !stderr.contains(&fnr(3)));
    Ok(())
}

#[tokio::test]
async fn ndjson_layout_writes_one_file_per_bundle_and_survives_a_restart() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Epj::start(dir.path(), &["--layout", "ndjson"]).await?;
    let r = epj
        .post_bundle(&transaction(&[alarm(1, "4.1", "stat"), pulse(2)]))
        .await?;
    assert_eq!(r.status(), 200);
    assert!(epj.resource_files()?.is_empty());
    let first = std::fs::read_to_string(epj.out().join("bundle-000000000000.ndjson"))?;
    let lines: Vec<Value> = first
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines, vec![alarm(1, "4.1", "stat"), pulse(2)]);
    assert_eq!(epj.stats().await?["created"], 2);
    epj.stop().await?;

    // After a restart the identifiers are still known, and the next Bundle
    // file follows the last.
    let epj = Epj::start(dir.path(), &["--layout", "ndjson"]).await?;
    let r = epj
        .post_bundle(&transaction(&[alarm(1, "4.1", "stat"), pulse(3)]))
        .await?;
    let st = statuses(&r.json().await?);
    assert_eq!(
        (st[0].0.as_str(), st[1].0.as_str()),
        ("200 OK", "201 Created")
    );
    let second = std::fs::read_to_string(epj.out().join("bundle-000000000001.ndjson"))?;
    assert_eq!(second.lines().count(), 1);
    let log = std::fs::read_to_string(epj.out().join("received.log"))?;
    assert_eq!(log.lines().count(), 3);
    assert!(!log.contains(&fnr(1)) && !log.contains(&fnr(3)));
    epj.stop().await?;
    Ok(())
}

#[tokio::test]
async fn down_drops_the_connection_without_an_answer() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Epj::start(dir.path(), &["--fsync"]).await?;
    epj.set_mode(json!({"mode": "down"})).await?;
    let r = epj.post_bundle(&transaction(&[pulse(1)])).await;
    match r {
        Ok(resp) => return Err(format!("expected no answer, got {}", resp.status()).into()),
        Err(e) => assert!(e.status().is_none(), "{e}"),
    }
    assert!(epj.resource_files()?.is_empty());
    let s = epj.stats().await?;
    assert!(s["dropped"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["by_status"], json!({}));

    epj.set_mode(json!({"mode": "ok"})).await?;
    let r = epj.post_bundle(&transaction(&[pulse(1)])).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(epj.resource_files()?.len(), 1);
    epj.stop().await?;
    Ok(())
}

#[tokio::test]
async fn error500_and_error429_write_nothing() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Epj::start(dir.path(), &[]).await?;
    let bundle = transaction(&[pulse(1), pulse(2), pulse(3)]);

    epj.set_mode(json!({"mode": "error500"})).await?;
    let r = epj.post_bundle(&bundle).await?;
    assert_eq!(r.status(), 500);
    let oo: Value = r.json().await?;
    assert_eq!(oo["resourceType"], "OperationOutcome");

    epj.set_mode(json!({"mode": "error429", "retry_after_secs": 3}))
        .await?;
    let r = epj.post_bundle(&bundle).await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    let oo: Value = r.json().await?;
    assert_eq!(oo["issue"][0]["code"], "throttled");
    assert!(epj.resource_files()?.is_empty());

    let s = epj.stats().await?;
    assert_eq!(s["requests_total"], 2);
    assert_eq!(s["by_status"], json!({"500": 1, "429": 1}));
    assert_eq!(s["entries_total"], 6);
    assert_eq!(s["created"], 0);
    epj.stop().await?;
    Ok(())
}

#[tokio::test]
async fn error429_can_be_set_by_flags_at_start() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Epj::start(
        dir.path(),
        &["--mode", "error429", "--retry-after-secs", "7"],
    )
    .await?;
    let r = epj.post_bundle(&transaction(&[pulse(1)])).await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    epj.stop().await?;
    Ok(())
}

#[tokio::test]
async fn reject422_refuses_the_whole_transaction() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Epj::start(dir.path(), &["--mode", "reject422", "--reject-code", "4.1"]).await?;

    // One fall among others: the whole Bundle is refused, nothing written.
    let r = epj
        .post_bundle(&transaction(&[
            pulse(1),
            alarm(2, "4.1", "stat"),
            alarm(3, "4.13", "asap"),
        ]))
        .await?;
    assert_eq!(r.status(), 422);
    let oo: Value = r.json().await?;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let issues = oo["issue"].as_array().cloned().unwrap_or_default();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0]["expression"][0], "Bundle.entry[1].resource");
    assert!(epj.resource_files()?.is_empty());

    // Without the rejected code the same adapter accepts.
    let r = epj
        .post_bundle(&transaction(&[pulse(1), alarm(3, "4.13", "asap")]))
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(epj.resource_files()?.len(), 2);

    // An empty filter rejects everything.
    epj.set_mode(json!({"mode": "reject422"})).await?;
    let r = epj.post_bundle(&transaction(&[pulse(9)])).await?;
    assert_eq!(r.status(), 422);
    assert_eq!(epj.resource_files()?.len(), 2);

    let s = epj.stats().await?;
    assert_eq!(s["rejected_entries"], 2);
    assert_eq!(s["by_status"], json!({"200": 1, "422": 2}));
    epj.stop().await?;
    Ok(())
}

#[tokio::test]
async fn slow_delays_every_answer() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Epj::start(dir.path(), &[]).await?;
    epj.set_mode(json!({"mode": "slow", "delay_ms": 400}))
        .await?;
    let t = Instant::now();
    let r = epj.post_bundle(&transaction(&[pulse(1)])).await?;
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );

    // The admin API is never delayed.
    let t = Instant::now();
    epj.stats().await?;
    assert!(t.elapsed() < Duration::from_millis(400));
    epj.stop().await?;
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_an_operation_outcome() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Epj::start(dir.path(), &[]).await?;

    let r = epj
        .post_bundle(&json!({"resourceType": "Bundle", "type": "batch"}))
        .await?;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await?;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.type");

    // An entry without ifNoneExist: the whole Bundle is refused.
    let mut b = transaction(&[pulse(1), pulse(2)]);
    b["entry"][1]["request"]
        .as_object_mut()
        .map(|r| r.remove("ifNoneExist"));
    let r = epj.post_bundle(&b).await?;
    assert_eq!(r.status(), 400);
    let oo: Value = r.json().await?;
    assert_eq!(
        oo["issue"][0]["expression"][0],
        "Bundle.entry[1].request.ifNoneExist"
    );
    assert!(epj.resource_files()?.is_empty());

    let r = epj
        .client
        .post(format!("{}/fhir/", epj.base))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await?;
    assert_eq!(r.status(), 415);

    let r = epj
        .client
        .post(format!("{}/_admin/mode", epj.base))
        .body(r#"{"mode":"sideways"}"#)
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    assert!(r.text().await?.contains("reject422"));
    epj.stop().await?;
    Ok(())
}

#[tokio::test]
async fn concurrent_resends_create_each_identifier_once() -> Res {
    let dir = tempfile::tempdir()?;
    let epj = Arc::new(Epj::start(dir.path(), &[]).await?);
    let bundle = transaction(&(1..=20).map(pulse).collect::<Vec<_>>());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let epj = epj.clone();
        let bundle = bundle.clone();
        tasks.push(tokio::spawn(async move {
            let r = epj.post_bundle(&bundle).await?;
            Ok::<_, reqwest::Error>(r.status())
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, 200);
    }
    assert_eq!(epj.resource_files()?.len(), 20);
    let s = epj.stats().await?;
    assert_eq!(s["created"], 20);
    assert_eq!(s["duplicates"], 140);
    let log = std::fs::read_to_string(epj.out().join("received.log"))?;
    assert_eq!(log.lines().count(), 20);
    Ok(())
}

#[tokio::test]
async fn serves_a_certificate_given_as_pem_files() -> Res {
    let dir = tempfile::tempdir()?;
    // A first run makes tls/cert.pem and tls/key.pem.
    Epj::start(dir.path(), &[]).await?.stop().await?;
    let cert = dir.path().join("tls/cert.pem");
    let key = dir.path().join("tls/key.pem");
    let (cert, key) = (
        cert.to_str().ok_or("path")?.to_string(),
        key.to_str().ok_or("path")?.to_string(),
    );
    let epj = Epj::start(dir.path(), &["--tls-cert", &cert, "--tls-key", &key]).await?;
    let r = epj.post_bundle(&transaction(&[pulse(1)])).await?;
    assert_eq!(r.status(), 200);
    epj.stop().await?;
    Ok(())
}

#[tokio::test]
async fn help_shows_an_example() -> Res {
    let out = Command::new(env!("CARGO_BIN_EXE_epj-adapter"))
        .arg("--help")
        .output()
        .await?;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Example"), "{text}");
    assert!(text.contains("/_admin/mode"), "{text}");
    Ok(())
}
