use knutepunkt::domain::*;
use knutepunkt::normalize::Normalized;
use knutepunkt::store::{sled::*, *};
use std::sync::Arc;

fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmRSS"))
        .collect()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let s = Arc::new(
        SledStore::open(
            dir.path(),
            SledOptions {
                min_free_bytes: 0,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let body = "x".repeat(1400);
    let mut tasks = Vec::new();
    for c in 0..64u32 {
        let s = s.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..(n / 64) {
                let v = VendorId("v".into());
                let eid = format!("e{c}-{i}");
                let id = resource_id(&v, &eid);
                let rec = NewRecord {
                    vendor: v,
                    event_id: eid,
                    content_hash: [1; 32],
                    municipality: Orgnr::parse("958935420").unwrap(),
                    patient_key: patient_key("x", &format!("{}", i % 500)),
                    resource: Normalized {
                        resource_type: ResourceType::Observation,
                        id,
                        json: format!(
                            "{{\"resourceType\":\"Observation\",\"id\":\"{id}\",\"b\":\"{body}\"}}"
                        ),
                        codes: vec![("http://loinc.org".into(), "8867-4".into())],
                        category: "vital-signs",
                        urgent: false,
                    },
                    answers_alarm: None,
                    is_alarm: false,
                    class: Class::Routine,
                    destinations: vec![],
                };
                s.put(rec).await.unwrap();
                if c == 0 && i % 500 == 0 {
                    eprintln!("{} {}", i * 64, rss());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("done {}", rss());
}
