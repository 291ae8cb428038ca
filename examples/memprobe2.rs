use knutepunkt::domain::*;
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmRSS"))
        .collect()
}
fn main() {
    let fnr = synthetic::fnr(1);
    for i in 0..100_000u32 {
        let ev = Event {
            vendor: VendorId("v".into()),
            event_id: format!("e{i}"),
            municipality: Orgnr::parse("958935420").unwrap(),
            patient: PersonId::parse(IdSystem::Fnr, &fnr).unwrap(),
            device: Device {
                id: "d".into(),
                kind: "k".into(),
            },
            occurred_at: chrono::Utc::now(),
            payload: Payload::Measurement(Measurement::Quantity {
                kind: MeasurementKind::HeartRate,
                value: 70.0,
                unit: "/min".into(),
            }),
        };
        let n = knutepunkt::normalize::normalize(&ev).unwrap();
        std::hint::black_box(n);
        if i % 20000 == 0 {
            eprintln!("{i} {}", rss());
        }
    }
    eprintln!("done {}", rss());
}
