//! The conformance kit for vendor developers, black-box: the `conformance`
//! binary passes against the real hub, fails naming the rule against a
//! `knutepunkt-mock` that breaks one, gets through a mock that misbehaves
//! on purpose by retrying and reconnecting; and the mock refuses a bad event
//! with the hub's message, naming the field and the fix.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance_tests::harness::{Hub, HubOptions, binary, certs, events, ok};
use knutepunkt::domain::synthetic;
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;

/// A running knutepunkt-mock; its stdout is collected.
struct MockProc {
    child: Child,
    addr: String,
    out: Arc<Mutex<String>>,
}

impl MockProc {
    fn start(args: &[&str]) -> MockProc {
        let mut child = Command::new(ok(binary("knutepunkt-mock")))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting knutepunkt-mock: {e}"));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("knutepunkt-mock printed nothing"));
        let addr = first
            .split_whitespace()
            .nth(3)
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_string();
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if let Ok(mut o) = sink.lock() {
                    o.push_str(&l);
                    o.push('\n');
                }
            }
        });
        MockProc { child, addr, out }
    }

    fn output(&self) -> String {
        self.out.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// SIGTERM, then the whole output including the summary.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait()
    }

    fn wait(&mut self) -> String {
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return self.output();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("knutepunkt-mock did not stop:\n{}", self.output());
    }
}

impl Drop for MockProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `conformance run` with `args`; (exit code, stdout, JUnit XML).
fn conformance(args: &[&str], dir: &Path) -> (Option<i32>, String, String) {
    let junit = dir.join("report.xml");
    let out: Output = Command::new(ok(binary("conformance")))
        .arg("run")
        .args(args)
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap_or_else(|e| panic!("running conformance: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    (out.status.code(), stdout, xml)
}

fn tls_args(dir: &Path) -> Vec<String> {
    vec![
        "--cert".into(),
        dir.join("vendor-demo-vendor.pem").display().to_string(),
        "--key".into(),
        dir.join("vendor-demo-vendor.key").display().to_string(),
        "--ca".into(),
        dir.join("ca.pem").display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn kit_passes_against_the_real_hub() {
    let data = ok(tempfile::tempdir());
    let hub = ok(Hub::start(data.path(), HubOptions::default()).await);
    let dir = ok(certs());
    let mut args = vec!["--target".to_string(), hub.grpc.to_string()];
    args.extend(tls_args(&dir));
    let tmp = ok(tempfile::tempdir());
    let p = tmp.path().to_path_buf();
    let (code, text, xml) = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        conformance(&a, &p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        code,
        Some(0),
        "the kit failed against the real hub:\n{text}"
    );
    assert!(text.contains("RESULT: PASS"), "{text}");
    assert!(xml.contains("failures=\"0\""), "{xml}");
    for rule in [
        "payload.measurement.blood_glucose",
        "payload.alarm.severity_red",
        "idempotency.resend_after_timeout",
        "closed_loop.note_answers_alarm",
        "rejection.conflict",
        "rejection.not_permitted",
        "stream.reconnect",
    ] {
        assert!(
            xml.contains(&format!("name=\"{rule}\"")),
            "{rule} missing:\n{xml}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kit_fails_naming_the_rule_a_target_breaks() {
    let mock = MockProc::start(&["--violate", "duplicate", "--violate", "closed-loop"]);
    let tmp = ok(tempfile::tempdir());
    let addr = mock.addr.clone();
    let p = tmp.path().to_path_buf();
    let (code, text, xml) =
        tokio::task::spawn_blocking(move || conformance(&["--target", &addr, "--plain"], &p))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  idempotency.duplicate"), "{text}");
    assert!(text.contains("FAIL  rejection.unknown_alarm"), "{text}");
    assert!(text.contains("PASS  rejection.conflict"), "{text}");
    assert!(
        text.contains("RESULT: FAIL (idempotency.duplicate"),
        "{text}"
    );
    let failing = |rule: &str| {
        xml.split("<testcase ")
            .find(|t| t.contains(&format!("name=\"{rule}\"")))
            .is_some_and(|t| t.contains("<failure"))
    };
    assert!(failing("idempotency.duplicate"), "{xml}");
    assert!(failing("rejection.unknown_alarm"), "{xml}");
    assert!(!failing("payload.note"), "{xml}");
}

/// The kit is itself a well-behaved client: through UNAVAILABLE answers,
/// slow answers and dropped streams (over mutual TLS) it still passes, and
/// the mock's summary shows every failed event was sent again.
#[tokio::test(flavor = "multi_thread")]
async fn kit_retries_through_a_misbehaving_mock() {
    let dir = ok(certs());
    let (cert, key, ca) = (
        dir.join("server.pem").display().to_string(),
        dir.join("server.key").display().to_string(),
        dir.join("ca.pem").display().to_string(),
    );
    let mock = MockProc::start(&[
        "--cert",
        &cert,
        "--key",
        &key,
        "--ca",
        &ca,
        "--fail-rate",
        "0.3",
        "--delay-ms",
        "2",
        "--drop-stream-after",
        "3",
    ]);
    let tmp = ok(tempfile::tempdir());
    let mut args = vec!["--target".to_string(), mock.addr.clone()];
    args.extend(tls_args(&dir));
    let p = tmp.path().to_path_buf();
    let (code, text, _) = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        conformance(&a, &p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let summary = mock.stop();
    assert_eq!(code, Some(0), "{text}\n{summary}");
    assert!(
        !text.contains("0 retries"),
        "the mock failed nothing?\n{text}"
    );
    assert!(
        summary.contains("dropped on purpose after 3 events"),
        "{summary}"
    );
    assert!(summary.contains("knutepunkt-mock summary"), "{summary}");
    assert!(
        summary.contains("events answered UNAVAILABLE were sent again"),
        "{summary}"
    );
    assert!(!summary.contains("NOT RESENT"), "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mock_refuses_a_bad_event_naming_the_field_and_the_fix() {
    let mut mock = MockProc::start(&["--vendor", "acme-alarm", "--max-events", "3"]);
    let ch = ok(tonic::transport::Channel::from_shared(format!(
        "http://{}",
        mock.addr
    )))
    .connect()
    .await;
    let mut c = EventClient::new(ok(ch));
    let mut bad = events::heart_rate("bad-1", events::OSLO, 77);
    let fnr = bad
        .patient
        .as_ref()
        .map(|p| p.value.clone())
        .unwrap_or_else(|| synthetic::fnr(77));
    // The same number with its last control digit off by one.
    let broken = format!("{}{}", &fnr[..10], (fnr.as_bytes()[10] - b'0' + 1) % 10);
    bad.patient = Some(pb::PersonId {
        system: pb::IdSystem::Fnr as i32,
        value: broken.clone(),
    });
    let err = c
        .submit(bad)
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted a bad fnr"));
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("patient.value"), "{}", err.message());

    let orphan = events::note("note-1", events::OSLO, 77, "never-sent-alarm");
    let err = c
        .submit(orphan)
        .await
        .err()
        .unwrap_or_else(|| panic!("accepted an orphan note"));
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let good = ok(c
        .submit(events::heart_rate("good-1", events::OSLO, 77))
        .await)
    .into_inner();
    assert_eq!(good.status, pb::ReceiptStatus::Accepted as i32, "{good:?}");

    // --max-events 3: the mock stops by itself and prints its summary.
    let out = mock.wait();
    assert!(
        out.contains("bad-1  REJECTED invalid_argument: patient.value"),
        "{out}"
    );
    assert!(out.contains("fix: fix the named field"), "{out}");
    assert!(out.contains("note-1  REJECTED unknown_alarm"), "{out}");
    assert!(out.contains("fix: send the alarm first"), "{out}");
    assert!(
        out.contains("good-1  RECEIPT_STATUS_ACCEPTED Observation/"),
        "{out}"
    );
    assert!(out.contains("--max-events reached"), "{out}");
    assert!(
        out.contains("rejected    1 × invalid_argument patient.value"),
        "{out}"
    );
    assert!(out.contains("rejected    1 × unknown_alarm"), "{out}");
    assert!(
        !out.contains(&broken) && !out.contains(&fnr),
        "a national id in the output:\n{out}"
    );
}
