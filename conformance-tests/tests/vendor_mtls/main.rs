//! Vendors over mutual TLS against the real binary: who may submit for
//! which municipality, what a bad certificate gets (no handshake), that
//! idempotency keys belong to one vendor, the per-vendor limits (rate,
//! streams, message size) and certificate reload without dropping
//! connections.

use conformance_tests::harness::ok;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conformance_tests::harness::events::{self, BERGEN, OSLO};
use conformance_tests::harness::{
    self, Hub, HubOptions, ReceiptStatus, get_json, metric, search_all,
};
use knutepunkt::domain::synthetic;
use knutepunkt::proto::client::EventClient;
use knutepunkt::proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";

/// A client certificate and its key (files), or none.
type ClientCert = Option<(PathBuf, PathBuf)>;

async fn hub_with(extra: &str) -> (tempfile::TempDir, Hub) {
    let dir = ok(tempfile::tempdir());
    let opts = HubOptions {
        config_extra: extra.to_string(),
        ..HubOptions::default()
    };
    let hub = Hub::start(dir.path(), opts)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (dir, hub)
}

/// A channel to the hub's gRPC port trusting only `ca` and presenting
/// `identity` (certificate and key files), or no client certificate.
async fn channel(
    hub: &Hub,
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(Channel::from_shared(format!("https://{}", hub.grpc))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

fn ident(dir: &Path, stem: &str) -> Option<(PathBuf, PathBuf)> {
    Some((
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    ))
}

/// Observations of `resident` that Oslo's EPJ client can find.
async fn stored_for(hub: &Hub, org: &str, resident: u32) -> usize {
    ok(search_all(&format!(
        "{}/Observation?subject:identifier={FNR_OID}|{}",
        hub.fhir_base(org),
        synthetic::fnr(resident)
    ))
    .await)
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_by_municipality_matrix() {
    let (_d, hub) = hub_with("").await;
    unary_by_agreement(&hub).await;
    a_stream_rejects_per_event(&hub).await;
    a_strangers_stream_is_refused(&hub).await;
    denials_are_logged_without_the_patient(&hub);
    denials_are_counted(&hub).await;
}

/// Each vendor × municipality pair, unary: stored where the vendor has an
/// agreement, PERMISSION_DENIED (without the patient) elsewhere.
async fn unary_by_agreement(hub: &Hub) {
    // (vendor, municipality, resident, expected) with None = allowed.
    let matrix: [(&str, &str, u32, Option<Code>); 6] = [
        ("demo-vendor", OSLO, 101, None),
        ("demo-vendor", BERGEN, 102, None),
        ("other-vendor", OSLO, 103, Some(Code::PermissionDenied)),
        ("other-vendor", BERGEN, 104, None),
        ("stranger", OSLO, 105, Some(Code::PermissionDenied)),
        ("stranger", BERGEN, 106, Some(Code::PermissionDenied)),
    ];
    for (vendor, org, resident, want) in matrix {
        let mut c = ok(hub.client_as(Some(vendor)).await);
        let res = c
            .submit(events::heart_rate(&format!("m-{resident}"), org, resident))
            .await;
        match (want, res) {
            (None, Ok(r)) => {
                let r = r.into_inner();
                assert_eq!(
                    r.status,
                    ReceiptStatus::Accepted as i32,
                    "{vendor} → {org}: {r:?}"
                );
                assert_eq!(stored_for(hub, org, resident).await, 1, "{vendor} → {org}");
            }
            (Some(code), Err(s)) => {
                assert_eq!(s.code(), code, "{vendor} → {org}: {s:?}");
                assert!(
                    !s.message().contains(&synthetic::fnr(resident)),
                    "the error names the patient: {s:?}"
                );
                assert_eq!(stored_for(hub, org, resident).await, 0, "{vendor} → {org}");
            }
            (want, got) => panic!("{vendor} → {org}: wanted {want:?}, got {got:?}"),
        }
    }
}

/// On a stream, the same denial is a REJECTED receipt with a stable code;
/// the stream goes on and the allowed event after it is stored.
async fn a_stream_rejects_per_event(hub: &Hub) {
    let mut c = ok(hub.client_as(Some("other-vendor")).await);
    let evs = vec![
        events::heart_rate("s-oslo", OSLO, 107),
        events::heart_rate("s-bergen", BERGEN, 108),
    ];
    let mut receipts: Vec<pb::Receipt> = ok(ok(c.submit_stream(tokio_stream::iter(evs)).await)
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await);
    receipts.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(receipts.len(), 2, "{receipts:?}");
    assert_eq!(receipts[0].event_id, "s-bergen");
    assert_eq!(receipts[0].status, ReceiptStatus::Accepted as i32);
    assert_eq!(receipts[1].event_id, "s-oslo");
    assert_eq!(receipts[1].status, ReceiptStatus::Rejected as i32);
    assert_eq!(receipts[1].error_code, "not_permitted", "{:?}", receipts[1]);
    assert!(!receipts[1].error.contains(&synthetic::fnr(107)));
    assert_eq!(stored_for(hub, OSLO, 107).await, 0);
    assert_eq!(stored_for(hub, BERGEN, 108).await, 1);
}

/// A stranger's stream is refused before any event is read.
async fn a_strangers_stream_is_refused(hub: &Hub) {
    let mut c = ok(hub.client_as(Some("stranger")).await);
    let res = c
        .submit_stream(tokio_stream::iter(vec![events::heart_rate(
            "s-x", OSLO, 109,
        )]))
        .await;
    match res {
        Err(s) => assert_eq!(s.code(), Code::PermissionDenied, "{s:?}"),
        Ok(r) => {
            let first = r.into_inner().next().await;
            match first {
                Some(Err(s)) => assert_eq!(s.code(), Code::PermissionDenied, "{s:?}"),
                other => panic!("a stranger's stream was served: {other:?}"),
            }
        }
    }
    assert_eq!(stored_for(hub, OSLO, 109).await, 0);
}

/// Logged with vendor and orgnr, never with the patient.
fn denials_are_logged_without_the_patient(hub: &Hub) {
    let logs = hub.logs();
    let denials: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("outside the vendor's agreement"))
        .collect();
    assert_eq!(denials.len(), 2, "one log line per denied event:\n{logs}");
    for l in &denials {
        assert!(l.contains("other-vendor") && l.contains(OSLO), "{l}");
    }
    assert!(
        logs.lines().any(|l| l.contains("stranger")),
        "the stranger's attempt is not logged:\n{logs}"
    );
    for r in 101..=109 {
        assert!(
            !logs.contains(&synthetic::fnr(r)),
            "patient {r}'s fnr is in the log"
        );
    }
}

/// Counted by reason.
async fn denials_are_counted(hub: &Hub) {
    let m = ok(hub.metrics().await);
    assert_eq!(
        metric(
            &m,
            "knutepunkt_vendor_denied_total",
            &[("reason", "no_agreement")]
        ),
        2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "knutepunkt_vendor_denied_total",
            &[("reason", "unknown_vendor")]
        ) >= 3.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "knutepunkt_events_total",
            &[("status", "rejected"), ("reason", "not_permitted")]
        ),
        2.0,
        "{m}"
    );
}

/// Submits over a channel that should never complete a TLS handshake, and
/// returns what the client saw. Panics if the hub answered at all.
async fn refused(hub: &Hub, ca: &Path, id: Option<(PathBuf, PathBuf)>, ev: pb::Event) -> String {
    match channel(hub, ca, id).await {
        Err(e) => format!("connect: {e:?}"),
        Ok(ch) => match EventClient::new(ch).submit(ev).await {
            Ok(r) => panic!("the hub accepted an event over a bad certificate: {r:?}"),
            Err(s) => {
                // PERMISSION_DENIED or UNAUTHENTICATED would mean the request
                // reached the service: the handshake must fail before that.
                assert!(
                    !matches!(
                        s.code(),
                        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
                    ),
                    "the request got past TLS: {s:?}"
                );
                format!("call: {s:?}")
            }
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_fail_the_handshake() {
    let (_d, hub) = hub_with("").await;
    let certs = ok(harness::certs());
    let foreign = ok(tempfile::tempdir());
    ok(harness::dev_certs(
        foreign.path(),
        &["--vendor", "demo-vendor", "--epj-client", "oslo-epj"],
    ));
    let ca = certs.join("ca.pem");
    let before = ok(hub.metrics().await);
    let cases: [(&str, ClientCert, u32); 3] = [
        ("no client certificate", None, 201),
        (
            "expired certificate",
            ident(&certs, "vendor-demo-vendor-expired"),
            202,
        ),
        (
            "certificate of another CA",
            ident(foreign.path(), "vendor-demo-vendor"),
            203,
        ),
    ];
    for (what, id, resident) in cases {
        let seen = refused(
            &hub,
            &ca,
            id,
            events::heart_rate(&format!("tls-{resident}"), OSLO, resident),
        )
        .await;
        eprintln!("{what}: {seen}");
        assert_eq!(stored_for(&hub, OSLO, resident).await, 0, "{what}");
    }
    // The server saw three failed handshakes (tonic may retry a connect,
    // so at least three).
    let after = ok(hub.metrics().await);
    let failed = |m: &str| {
        metric(
            m,
            "knutepunkt_tls_handshake_failed_total",
            &[("listener", "grpc")],
        )
    };
    assert!(
        failed(&after) - failed(&before) >= 3.0,
        "handshake failures not counted:\n{after}"
    );
    // The control: the same CA and a valid certificate get through.
    let mut c = EventClient::new(ok(
        channel(&hub, &ca, ident(&certs, "vendor-demo-vendor")).await
    ));
    let r = ok(c.submit(events::heart_rate("tls-ok", OSLO, 204)).await).into_inner();
    assert_eq!(r.status, ReceiptStatus::Accepted as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_belong_to_one_vendor() {
    let (_d, hub) = hub_with("").await;
    let mut a = ok(hub.client_as(Some("demo-vendor")).await);
    let mut b = ok(hub.client_as(Some("other-vendor")).await);
    // Same event_id, different content: no collision, two resources.
    let ra = ok(a.submit(events::heart_rate("shared-1", BERGEN, 301)).await).into_inner();
    let rb = ok(b.submit(events::heart_rate("shared-1", BERGEN, 302)).await).into_inner();
    assert_eq!(ra.status, ReceiptStatus::Accepted as i32, "{ra:?}");
    assert_eq!(rb.status, ReceiptStatus::Accepted as i32, "{rb:?}");
    assert_ne!(ra.resource, rb.resource);
    // A resend finds the sender's own resource, never the other's.
    let ra2 = ok(a.submit(events::heart_rate("shared-1", BERGEN, 301)).await).into_inner();
    let rb2 = ok(b.submit(events::heart_rate("shared-1", BERGEN, 302)).await).into_inner();
    assert_eq!(ra2.status, ReceiptStatus::Duplicate as i32, "{ra2:?}");
    assert_eq!(ra2.resource, ra.resource);
    assert_eq!(rb2.status, ReceiptStatus::Duplicate as i32, "{rb2:?}");
    assert_eq!(rb2.resource, rb.resource);
    // Changed content under one's own id is still a conflict for that vendor.
    let c = a
        .submit(events::heart_rate("shared-1", BERGEN, 303))
        .await
        .map(|r| r.into_inner());
    assert_eq!(
        c.as_ref().err().map(tonic::Status::code),
        Some(Code::AlreadyExists),
        "{c:?}"
    );
    // Same id, same content from both: still two resources.
    let sa = ok(a.submit(events::heart_rate("shared-2", BERGEN, 304)).await).into_inner();
    let sb = ok(b.submit(events::heart_rate("shared-2", BERGEN, 304)).await).into_inner();
    assert_eq!(sa.status, ReceiptStatus::Accepted as i32);
    assert_eq!(sb.status, ReceiptStatus::Accepted as i32, "{sb:?}");
    assert_ne!(sa.resource, sb.resource);
    // A note cannot answer another vendor's alarm by its event_id.
    let al = ok(a
        .submit(events::alarm(
            "alarm-a",
            BERGEN,
            305,
            "4.1",
            pb::Severity::Red,
        ))
        .await)
    .into_inner();
    assert_eq!(al.status, ReceiptStatus::Accepted as i32);
    let n = b
        .submit(events::note("note-b", BERGEN, 305, "alarm-a"))
        .await;
    assert_eq!(
        n.as_ref().err().map(tonic::Status::code),
        Some(Code::InvalidArgument),
        "vendor B answered vendor A's alarm: {n:?}"
    );
    let n = ok(a
        .submit(events::note("note-a", BERGEN, 305, "alarm-a"))
        .await)
    .into_inner();
    assert_eq!(n.status, ReceiptStatus::Accepted as i32, "{n:?}");
    // Both stored and readable, each as its own resource.
    for r in [&ra.resource, &rb.resource, &sa.resource, &sb.resource] {
        let (status, _) = ok(get_json(&format!("{}/{r}", hub.fhir_base(BERGEN))).await);
        assert_eq!(status, 200, "{r}");
    }
}

mod limits;
mod reload;
