//! No national id, token or assertion in any telemetry: a full scenario
//! with known synthetic ids (every payload kind, bad events, reads,
//! searches, a push delivery, a pull) against the real binary at debug log
//! level, then every line of the hub's log, the EPJ adapter's received.log
//! and /metrics are searched for them.

use conformance_tests::harness::ok;
use std::time::Duration;

use conformance_tests::harness::events::{self, BERGEN, OSLO};
use conformance_tests::harness::{
    ADMIN_TOKEN, EpjAdapter, Hub, HubOptions, ReceiptStatus, assertion, get_json, http_client,
    request_token, submit_all, token, vakt_confirm,
};
use knutepunkt::domain::synthetic;
use knutepunkt::proto::v1 as pb;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
const DNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.2";

async fn hub_with(dir: &std::path::Path, epj: &EpjAdapter) -> Hub {
    let cfg = ok(conformance_tests::harness::oslo_pulled_by_vakt(Some((
        epj,
        "timeout_ms = 2000",
    ))));
    ok(Hub::start(
        &dir.join("data"),
        HubOptions {
            config_extra: cfg,
            env: vec![("RUST_LOG".into(), "debug".into())],
            ..HubOptions::default()
        },
    )
    .await)
}

fn with_patient(mut ev: pb::Event, system: pb::IdSystem, value: &str) -> pb::Event {
    ev.patient = Some(pb::PersonId {
        system: system as i32,
        value: value.to_string(),
    });
    ev
}

/// `n`'s fødselsnummer with a wrong last control digit.
fn bad_fnr(n: u32) -> String {
    let mut b = synthetic::fnr(n).into_bytes();
    b[10] = if b[10] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap_or_default()
}

/// What the scenario's phases share: the hub, the EPJ double, and every
/// secret that must not show up in telemetry.
struct Scenario {
    hub: Hub,
    epj: EpjAdapter,
    base: String,
    origin: String,
    fnrs: Vec<String>,
    dnrs: Vec<String>,
    bad: String,
    secrets: Vec<(String, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_national_id_token_or_assertion_in_telemetry() {
    let dir = ok(tempfile::tempdir());
    let mut s = Scenario::start(dir.path()).await;
    let refs = s.submit_every_payload_kind().await;
    s.submit_bad_events().await;
    s.read_and_search(&refs).await;
    s.push_and_pull().await;
    s.use_and_refuse_tokens().await;
    s.add_jwt_signatures();
    s.grep_telemetry().await;
    // The checks above can fail: the ids are in what the hub stored.
    let (_, obs) = ok(get_json(&format!("{}/{}", s.base, refs[0])).await);
    assert!(obs.to_string().contains(&s.fnrs[0]));
}

impl Scenario {
    async fn start(dir: &std::path::Path) -> Scenario {
        let epj = ok(EpjAdapter::start("ok").await);
        let hub = hub_with(dir, &epj).await;
        let fnrs: Vec<String> = (900..906).map(synthetic::fnr).collect();
        let dnrs: Vec<String> = (900..903).map(synthetic::dnr).collect();
        let bad = bad_fnr(950);
        let mut secrets: Vec<(String, String)> = Vec::new();
        for f in &fnrs {
            secrets.push(("fnr".into(), f.clone()));
        }
        for d in &dnrs {
            secrets.push(("dnr".into(), d.clone()));
        }
        secrets.push(("invalid fnr".into(), bad.clone()));
        Scenario {
            base: hub.fhir_base(OSLO),
            origin: format!("https://{}", hub.http),
            hub,
            epj,
            fnrs,
            dnrs,
            bad,
            secrets,
        }
    }

    /// Every payload kind, for fnr and dnr patients; their references.
    async fn submit_every_payload_kind(&self) -> Vec<String> {
        use pb::MeasurementKind as K;
        let good = vec![
            events::heart_rate("p-hr", OSLO, 900),
            events::blood_pressure("p-bp", OSLO, 901, 150.0, 95.0),
            events::quantity("p-spo2", OSLO, 902, K::OxygenSaturation, 94.0, "%"),
            events::quantity("p-w", OSLO, 903, K::BodyWeight, 80.0, "kg"),
            events::quantity("p-t", OSLO, 904, K::BodyTemperature, 38.1, "Cel"),
            events::quantity("p-rr", OSLO, 905, K::RespiratoryRate, 18.0, "/min"),
            with_patient(
                events::quantity("p-g", OSLO, 0, K::BloodGlucose, 7.2, "mmol/L"),
                pb::IdSystem::Dnr,
                &self.dnrs[0],
            ),
            with_patient(
                events::alarm("p-al", OSLO, 0, "4.1", pb::Severity::Red),
                pb::IdSystem::Dnr,
                &self.dnrs[1],
            ),
            with_patient(
                events::note("p-note", OSLO, 0, "p-al"),
                pb::IdSystem::Dnr,
                &self.dnrs[1],
            ),
            with_patient(
                events::heart_rate("p-b", BERGEN, 0),
                pb::IdSystem::Dnr,
                &self.dnrs[2],
            ),
        ];
        submit_all(&self.hub, good).await
    }

    /// Bad events, unary and on a stream, and vendors without an agreement:
    /// no answer names the patient.
    async fn submit_bad_events(&self) {
        use pb::MeasurementKind as K;
        let mut c = ok(self.hub.client().await);
        let bad_events = vec![
            with_patient(
                events::heart_rate("x-ctl", OSLO, 0),
                pb::IdSystem::Fnr,
                &self.bad,
            ),
            with_patient(
                events::heart_rate("x-sys", OSLO, 0),
                pb::IdSystem::Dnr,
                &self.fnrs[0],
            ),
            events::quantity("x-spo2", OSLO, 900, K::OxygenSaturation, 104.0, "%"),
            events::quantity("x-unit", OSLO, 901, K::BodyWeight, 80.0, "stone"),
            events::blood_pressure("x-bp", OSLO, 902, 70.0, 90.0),
            events::alarm("x-code", OSLO, 903, "9.99", pb::Severity::Red),
            events::note("x-note", OSLO, 904, "no-such-alarm"),
            events::heart_rate("p-hr", OSLO, 905), // conflicts with the first
        ];
        for ev in bad_events.clone() {
            let id = ev.event_id.clone();
            let res = c.submit(ev).await;
            let s = res.err().unwrap_or_else(|| panic!("{id} was accepted"));
            for (what, v) in &self.secrets {
                assert!(!s.message().contains(v.as_str()), "{id}: {what} in {s:?}");
            }
        }
        let receipts: Vec<pb::Receipt> =
            ok(ok(c.submit_stream(tokio_stream::iter(bad_events)).await)
                .into_inner()
                .collect::<Result<Vec<_>, _>>()
                .await);
        assert_eq!(receipts.len(), 8);
        for r in &receipts {
            assert_eq!(r.status, ReceiptStatus::Rejected as i32, "{r:?}");
            for (what, v) in &self.secrets {
                assert!(!r.error.contains(v.as_str()), "{what} in {r:?}");
            }
        }
        // Not permitted, and no agreement at all.
        let mut other = ok(self.hub.client_as(Some("other-vendor")).await);
        assert!(
            other
                .submit(events::heart_rate("o-1", OSLO, 900))
                .await
                .is_err()
        );
        let mut stranger = ok(self.hub.client_as(Some("stranger")).await);
        assert!(
            stranger
                .submit(events::heart_rate("s-1", BERGEN, 901))
                .await
                .is_err()
        );
    }

    /// Reads and searches, good and bad, by fnr and dnr.
    async fn read_and_search(&self, refs: &[String]) {
        let base = &self.base;
        for r in &refs[..9] {
            let (status, _) = ok(get_json(&format!("{base}/{r}")).await);
            assert_eq!(status, 200, "{r}");
        }
        let searches = [
            format!(
                "{base}/Observation?subject:identifier={FNR_OID}|{}",
                self.fnrs[0]
            ),
            format!(
                "{base}/Observation?patient:identifier={DNR_OID}|{}",
                self.dnrs[0]
            ),
            format!(
                "{base}/Communication?subject:identifier={DNR_OID}|{}",
                self.dnrs[1]
            ),
            format!(
                "{base}/Observation?subject:identifier={FNR_OID}|{}",
                self.bad
            ),
            format!(
                "{base}/Observation?subject:identifier=urn:oid:1.2.3|{}",
                self.fnrs[1]
            ),
            format!("{base}/Observation?subject={}", self.fnrs[2]),
            format!("{base}/Observation?identifier={}", self.fnrs[3]),
            format!(
                "{base}/Observation?subject:identifier={}&_count=x",
                self.fnrs[4]
            ),
            format!(
                "{base}/AuditEvent?patient:identifier={FNR_OID}|{}",
                self.fnrs[0]
            ),
            format!("{base}/AuditEvent?patient:identifier={}", self.fnrs[5]),
            format!(
                "{}/Observation?subject:identifier={DNR_OID}|{}",
                self.hub.fhir_base(BERGEN),
                self.dnrs[2]
            ),
        ];
        let mut statuses = Vec::new();
        for url in &searches {
            let (status, body) = ok(get_json(url).await);
            for (what, v) in &self.secrets {
                assert!(
                    !body.to_string().contains(v.as_str()) || status == 200,
                    "{url}: an error answer echoes the {what}: {body}"
                );
            }
            statuses.push(status);
        }
        assert!(statuses.contains(&200));
        assert!(statuses.contains(&400), "{statuses:?}");
    }

    /// Push delivery of the nine resources, and a pull that confirms them
    /// as failed (dead letters).
    async fn push_and_pull(&self) {
        let base = &self.base;
        ok(self.epj.wait_created(9, Duration::from_secs(20)).await);
        let (status, b) =
            ok(get_json(&format!("{base}/$pending?consumer=oslo-vakt&_count=50")).await);
        assert_eq!(status, 200, "{b}");
        let parts: Vec<Value> = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let r = format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap_or(""),
                    e["resource"]["id"].as_str().unwrap_or("")
                );
                json!({"name": "confirmation", "part": [
                    {"name": "resource", "valueReference": {"reference": r}},
                    {"name": "outcome", "valueCode": "failed"},
                    {"name": "reason", "valueString": "patient not found in EPJ"},
                ]})
            })
            .collect();
        assert_eq!(parts.len(), 9);
        let body = json!({"resourceType": "Parameters", "parameter": parts});
        let (status, text) = ok(vakt_confirm(base, &body).await);
        assert_eq!(status, 200, "{text}");
        let (status, _) = ok(get_json(&format!(
            "http://{}/admin/dlq?destination=oslo-vakt",
            self.hub.admin
        ))
        .await);
        assert_eq!(status, 200);
    }

    /// The tokens and assertions this scenario used, and some refused ones.
    async fn use_and_refuse_tokens(&mut self) {
        let (base, origin) = (self.base.clone(), self.origin.clone());
        for client in ["oslo-epj", "bergen-epj", "oslo-vakt"] {
            let t = ok(token(&self.origin, client).await);
            self.secrets.push((format!("{client}'s access token"), t));
        }
        let aud = format!("{origin}/oauth/token");
        let used = ok(assertion("oslo-epj", &aud));
        let (status, body) = ok(request_token(&self.origin, &used).await);
        assert_eq!(status, 200);
        let fresh = body["access_token"].as_str().unwrap_or("").to_string();
        let status = ok(ok(http_client())
            .get(format!("{base}/Observation"))
            .bearer_auth(&fresh)
            .send()
            .await)
        .status();
        assert_eq!(status, 200);
        let (status, _) = ok(request_token(&self.origin, &used).await); // replay
        assert_eq!(status, 400);
        let wrong_aud = ok(assertion(
            "oslo-epj",
            "https://elsewhere.example/oauth/token",
        ));
        let (status, _) = ok(request_token(&self.origin, &wrong_aud).await);
        assert_eq!(status, 400);
        let tampered = format!("{fresh}x");
        let st = ok(ok(http_client())
            .get(format!("{base}/Observation"))
            .bearer_auth(&tampered)
            .send()
            .await)
        .status();
        assert_eq!(st, 401);
        self.secrets
            .push(("fresh access token".into(), fresh.clone()));
        self.secrets.push(("assertion".into(), used.clone()));
        self.secrets
            .push(("wrong-aud assertion".into(), wrong_aud.clone()));
        self.secrets
            .push(("admin token".into(), ADMIN_TOKEN.into()));
    }

    /// A JWT's signature alone is as secret as the JWT.
    fn add_jwt_signatures(&mut self) {
        let mut sigs = Vec::new();
        for (what, v) in &self.secrets {
            if v.matches('.').count() == 2
                && let Some(sig) = v.rsplit('.').next()
                && sig.len() > 20
            {
                sigs.push((format!("{what} (signature)"), sig.to_string()));
            }
        }
        self.secrets.extend(sigs);
    }

    /// Every line of the hub's log, the EPJ double's received.log and
    /// /metrics, searched for every secret.
    async fn grep_telemetry(&self) {
        // Give the delivery and audit writers a moment to log what they log.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let logs = self.hub.logs();
        let lines: Vec<&str> = logs.lines().collect();
        assert!(
            lines.iter().any(|l| l.contains("DEBUG")),
            "the hub did not log at debug level; the grep would prove little"
        );
        assert!(lines.len() > 50, "only {} log lines", lines.len());
        let received = ok(std::fs::read_to_string(self.epj.out.join("received.log")));
        assert_eq!(received.lines().count(), 9, "{received}");
        let metrics = ok(self.hub.metrics().await);
        let sources: [(&str, Vec<&str>); 3] = [
            ("hub log", lines),
            ("epj-adapter received.log", received.lines().collect()),
            ("/metrics", metrics.lines().collect()),
        ];
        for (source, lines) in &sources {
            for (i, line) in lines.iter().enumerate() {
                for (what, v) in &self.secrets {
                    assert!(
                        !line.contains(v.as_str()),
                        "{source} line {} holds a {what}: {line}",
                        i + 1
                    );
                }
            }
        }
    }
}
