//! The MQTT gateway, black box: the real Mosquitto on 127.0.0.1:1883, the
//! real hub and the real `mqtt-gateway` binary. Device messages become FHIR
//! resources readable through the hub's API; a redelivery is a DUPLICATE;
//! bad messages land on the dead-letter topic with the error; nothing is
//! lost when the gateway is killed before it acked or the hub is down.
//!
//! Without a broker each test prints that it skipped; under `CI=true` it
//! fails instead.

use std::time::Duration;

use conformance_tests::harness::events::OSLO;
use conformance_tests::harness::{Hub, HubOptions, metric, ok};
use conformance_tests::mqtt::{Client, Gateway, broker_available, device, unique, wait_resources};
use knutepunkt::domain::synthetic;
use serde_json::{Value, json};

const FNR_OID: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
const WAIT: Duration = Duration::from_secs(30);

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as f64 / 1000.0)
        .unwrap_or_default()
}

fn search(hub: &Hub, rtype: &str, fnr: &str) -> String {
    format!(
        "{}/{rtype}?subject:identifier={FNR_OID}|{fnr}",
        hub.fhir_base(OSLO)
    )
}

/// Waits until the hub's metrics count `n` accepted events.
async fn wait_accepted(hub: &Hub, n: u64) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = hub.metrics().await?;
        let got = metric(&m, "knutepunkt_events_total", &[("status", "accepted")]);
        if got >= n as f64 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{got} of {n} events accepted after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn codes(r: &Value) -> Vec<String> {
    r["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["code"].as_str().map(str::to_string))
        .collect()
}

fn senml_bp(t: f64, sys: f64, dia: f64) -> String {
    json!([
        {"bt": t, "bu": "mmHg", "n": "systolic", "v": sys},
        {"n": "diastolic", "v": dia},
        {"n": "pulse", "u": "beat/min", "v": 61}
    ])
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measurement_alarm_and_note_become_fhir_and_a_redelivery_is_duplicate() {
    if !broker_available("mqtt_gateway::measurement_alarm_and_note") {
        return;
    }
    let dir = ok(tempfile::tempdir());
    let hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let (bp_fnr, bed_fnr) = (synthetic::fnr(7101), synthetic::fnr(7102));
    let registry = device("bp-1", "bp-monitor", OSLO, &bp_fnr)
        + &device("bed-1", "bed-sensor", OSLO, &bed_fnr);
    let mut gw = ok(Gateway::start("e2e", &hub, &registry).await);
    let mut dev = ok(Client::connect(&unique("e2e-dev"), true).await);
    let t = now();
    let bp_obs = blood_pressure_and_pulse(&hub, &gw, &mut dev, t, &bp_fnr).await;
    alarm_and_the_note_that_answers_it(&hub, &gw, &mut dev, t, &bed_fnr).await;
    a_redelivery_is_duplicate(&hub, &mut gw, &mut dev, t, &bp_fnr, &bp_obs).await;
    dev.disconnect().await;
}

/// A SenML blood pressure with pulse from `bp-1`: the hub's LOINC panel
/// and a heart rate, in UCUM, naming the device. The panel.
async fn blood_pressure_and_pulse(
    hub: &Hub,
    gw: &Gateway,
    dev: &mut Client,
    t: f64,
    bp_fnr: &str,
) -> Value {
    let bp = senml_bp(t, 142.0, 88.0);
    let bp_topic = gw.topic(OSLO, "bp-1", "measurement");
    ok(dev.publish(&bp_topic, bp.clone()).await);
    let obs = gw.ok(wait_resources(&search(hub, "Observation", bp_fnr), 2, WAIT).await);
    let bp_obs = obs
        .iter()
        .find(|o| codes(o).contains(&"85354-9".to_string()))
        .unwrap_or_else(|| panic!("no blood pressure among {obs:?}"));
    let comps = bp_obs["component"].to_string();
    assert!(comps.contains("8480-6") && comps.contains("142"), "{comps}");
    assert!(comps.contains("8462-4") && comps.contains("88"), "{comps}");
    assert!(
        bp_obs["component"][0]["valueQuantity"]["code"] == "mm[Hg]",
        "{comps}"
    );
    let pulse = obs
        .iter()
        .find(|o| codes(o).contains(&"8867-4".to_string()))
        .unwrap_or_else(|| panic!("no heart rate among {obs:?}"));
    assert_eq!(pulse["valueQuantity"]["code"], "/min");
    assert_eq!(pulse["device"]["identifier"]["value"], "bp-1", "{pulse}");

    bp_obs.clone()
}

/// Alarm, then a note that answers it by the alarm's device id.
async fn alarm_and_the_note_that_answers_it(
    hub: &Hub,
    gw: &Gateway,
    dev: &mut Client,
    t: f64,
    bed_fnr: &str,
) {
    let bed_alarm = gw.topic(OSLO, "bed-1", "alarm");
    let bed_note = gw.topic(OSLO, "bed-1", "note");
    ok(dev
        .publish(
            &bed_alarm,
            json!({"t": t, "id": "a-77", "code": "4.2", "severity": "yellow",
                   "text": "Forlatt sengen", "zone": "soverom"})
            .to_string(),
        )
        .await);
    ok(dev
        .publish(
            &bed_note,
            json!({"t": t + 60.0, "text": "Tilsyn utført", "answers": {"id": "a-77"}}).to_string(),
        )
        .await);
    let comms = gw.ok(wait_resources(&search(hub, "Communication", bed_fnr), 2, WAIT).await);
    let alert = comms
        .iter()
        .find(|c| c["category"][0]["coding"][0]["code"] == "alert")
        .unwrap_or_else(|| panic!("no alert among {comms:?}"));
    assert_eq!(alert["priority"], "asap");
    assert!(
        alert["reasonCode"].to_string().contains("\"4.2\""),
        "{alert}"
    );
    let note = comms
        .iter()
        .find(|c| c["category"][0]["coding"][0]["code"] == "notification")
        .unwrap_or_else(|| panic!("no note among {comms:?}"));
    assert_eq!(
        note["inResponseTo"][0]["reference"].as_str(),
        Some(format!("Communication/{}", alert["id"].as_str().unwrap_or("")).as_str()),
        "the note must answer the alarm: {note}"
    );
}

/// What a broker redelivery is to the hub: the same message again
/// (DUPLICATE, no new resource). Then a new reading on the same topic,
/// which the gateway handles after it.
async fn a_redelivery_is_duplicate(
    hub: &Hub,
    gw: &mut Gateway,
    dev: &mut Client,
    t: f64,
    bp_fnr: &str,
    bp_obs: &Value,
) {
    let bp_topic = gw.topic(OSLO, "bp-1", "measurement");
    let bp = senml_bp(t, 142.0, 88.0);
    ok(dev.publish(&bp_topic, bp).await);
    ok(dev.publish(&bp_topic, senml_bp(t + 1.0, 120.0, 80.0)).await);
    let obs2 = gw.ok(wait_resources(&search(hub, "Observation", bp_fnr), 4, WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let obs2_again =
        ok(conformance_tests::harness::search_all(&search(hub, "Observation", bp_fnr)).await);
    assert_eq!(obs2.len(), 4, "the redelivery made no new resource");
    assert_eq!(obs2_again.len(), 4);
    assert!(
        obs2.iter().any(|o| o["id"] == bp_obs["id"]),
        "the original resource is still the one"
    );
    let metrics = ok(hub.metrics().await);
    let dups = metric(
        &metrics,
        "knutepunkt_events_total",
        &[("status", "duplicate")],
    );
    assert_eq!(dups, 2.0, "blood pressure and pulse answered DUPLICATE");
    ok(gw.wait_log("connected to the MQTT broker", 1, WAIT).await);
    assert!(
        !gw.logs().contains(bp_fnr),
        "no national id in the gateway log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_land_on_the_dead_letter_topic_with_the_error() {
    if !broker_available("mqtt_gateway::dead_letters") {
        return;
    }
    let dir = ok(tempfile::tempdir());
    let hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let fnr = synthetic::fnr(7201);
    let gw = ok(Gateway::start("dlq", &hub, &device("ox-1", "oximeter", OSLO, &fnr)).await);
    let mut dev = ok(Client::connect(&unique("dlq-dev"), true).await);
    ok(dev.subscribe(&format!("{}/#", gw.dead_letter_prefix)).await);
    let t = now();

    // 1. The hub refuses it (SpO2 over 100 %): its error goes along.
    let topic = gw.topic(OSLO, "ox-1", "measurement");
    let impossible = json!([{"bt": t, "n": "spo2", "u": "%", "v": 140}]).to_string();
    ok(dev.publish(&topic, impossible.clone()).await);
    let (dl_topic, dl) = gw.ok(dev.next(WAIT).await);
    assert_eq!(
        dl_topic,
        format!(
            "{}/{OSLO}/demo-vendor/ox-1/measurement",
            gw.dead_letter_prefix
        )
    );
    assert_eq!(dl["error_code"], "invalid_argument", "{dl}");
    assert!(dl["error"].as_str().unwrap_or("").contains("100"), "{dl}");
    assert_eq!(dl["payload"], impossible.as_str());
    assert_eq!(dl["topic"], topic.as_str());

    // 2. The gateway cannot read it: a name it does not know.
    ok(dev
        .publish(
            &topic,
            json!([{"bt": t, "n": "mood", "u": "%", "v": 1}]).to_string(),
        )
        .await);
    let (_, dl) = gw.ok(dev.next(WAIT).await);
    assert_eq!(dl["error_code"], "bad_payload", "{dl}");
    assert!(dl["error"].as_str().unwrap_or("").contains("mood"), "{dl}");

    // 3. A device nobody registered.
    let stranger = gw.topic(OSLO, "ghost-9", "alarm");
    ok(dev
        .publish(
            &stranger,
            json!({"t": t, "code": "4.1", "severity": "red"}).to_string(),
        )
        .await);
    let (dl_topic, dl) = gw.ok(dev.next(WAIT).await);
    assert!(dl_topic.ends_with("/ghost-9/alarm"), "{dl_topic}");
    assert_eq!(dl["error_code"], "unknown_device", "{dl}");

    // Dead letters were acknowledged: a good reading after them arrives,
    // and nothing of the bad ones was stored.
    ok(dev
        .publish(
            &topic,
            json!([{"bt": t, "n": "spo2", "u": "%", "v": 97}]).to_string(),
        )
        .await);
    let obs = gw.ok(wait_resources(&search(&hub, "Observation", &fnr), 1, WAIT).await);
    assert_eq!(obs.len(), 1);
    assert_eq!(obs[0]["valueQuantity"]["value"], 97.0);
    assert!(
        dev.next(Duration::from_millis(500)).await.is_err(),
        "no more dead letters"
    );
    dev.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_before_acking_loses_nothing() {
    if !broker_available("mqtt_gateway::killed_before_ack") {
        return;
    }
    let dir = ok(tempfile::tempdir());
    let mut hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let fnr = synthetic::fnr(7301);
    let mut gw = ok(Gateway::start("kill", &hub, &device("sc-1", "scale", OSLO, &fnr)).await);
    let mut dev = ok(Client::connect(&unique("kill-dev"), true).await);
    let topic = gw.topic(OSLO, "sc-1", "measurement");
    let t = now();

    // The hub is down, so the gateway holds the message unacknowledged ...
    ok(hub.stop().await);
    ok(dev
        .publish(
            &topic,
            json!([{"bt": t, "n": "body-weight", "u": "kg", "v": 71.5}]).to_string(),
        )
        .await);
    ok(gw.wait_log("waiting for the hub", 1, WAIT).await);
    // ... when it dies. Another reading arrives while no gateway runs.
    ok(gw.kill9());
    ok(dev
        .publish(
            &topic,
            json!([{"bt": t + 1.0, "n": "body-weight", "u": "kg", "v": 71.0}]).to_string(),
        )
        .await);
    ok(hub.restart().await);
    ok(gw.restart());
    let obs = gw.ok(wait_resources(&search(&hub, "Observation", &fnr), 2, WAIT).await);
    let mut values: Vec<f64> = obs
        .iter()
        .filter_map(|o| o["valueQuantity"]["value"].as_f64())
        .collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, vec![71.0, 71.5], "both readings, once each");
    dev.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_hub_is_down_messages_wait_in_the_broker_and_arrive_after() {
    if !broker_available("mqtt_gateway::hub_down") {
        return;
    }
    let dir = ok(tempfile::tempdir());
    let mut hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let fnr = synthetic::fnr(7401);
    let mut gw = ok(Gateway::start("down", &hub, &device("th-1", "thermometer", OSLO, &fnr)).await);
    let mut dev = ok(Client::connect(&unique("down-dev"), true).await);
    let topic = gw.topic(OSLO, "th-1", "measurement");
    let t = now();
    ok(dev
        .publish(
            &topic,
            json!([{"bt": t, "n": "body-temperature", "u": "Cel", "v": 36.6}]).to_string(),
        )
        .await);
    // Counted by the hub's metrics, not searched: the hub signs access
    // tokens with a key of its own process, and the harness caches tokens,
    // so this test reads FHIR only after the restart.
    gw.ok(wait_accepted(&hub, 1).await);

    ok(hub.stop().await);
    for i in 1..=5 {
        let body = json!([{"bt": t + i as f64, "n": "body-temperature", "u": "Cel", "v": 37.0}]);
        ok(dev.publish(&topic, body.to_string()).await);
    }
    ok(gw.wait_log("waiting for the hub", 1, WAIT).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Still waiting after a while, and only one event is retried: the
    // other four wait behind it unacknowledged (one topic is handled in
    // order; the broker's in-flight window bounds what the gateway holds).
    assert_eq!(
        gw.logs().matches("waiting for the hub").count(),
        1,
        "{}",
        gw.logs()
    );
    assert!(!gw.logs().contains("dead-lettered"), "{}", gw.logs());

    ok(hub.restart().await);
    let obs = gw.ok(wait_resources(&search(&hub, "Observation", &fnr), 6, WAIT).await);
    assert_eq!(obs.len(), 6, "every reading, once");
    dev.disconnect().await;
}

/// A burst far larger than `--max-in-flight` (what a device fleet queued
/// in the broker session while the gateway was down) all arrives. The
/// gateway's broker loop once waited for a work permit while the permits'
/// holders waited for that loop to send their acks, and stopped for good
/// (`vendor-sim bench-mqtt` stalled on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_max_in_flight_all_arrives() {
    if !broker_available("mqtt_gateway::burst") {
        return;
    }
    const DEVICES: u64 = 30;
    const PER_DEVICE: u64 = 30;
    let dir = ok(tempfile::tempdir());
    let hub = ok(Hub::start(dir.path(), HubOptions::default()).await);
    let registry: String = (0..DEVICES)
        .map(|d| {
            device(
                &format!("hr-{d}"),
                "pulse-oximeter",
                OSLO,
                &synthetic::fnr(7400 + d as u32),
            )
        })
        .collect();
    let mut gw = ok(Gateway::start_with("burst", &hub, &registry, &["--max-in-flight", "2"]).await);
    // Down while the devices publish: the broker keeps it all in the session.
    ok(gw.kill9());
    let mut dev = ok(Client::connect(&unique("burst-dev"), true).await);
    let t = now();
    for i in 0..PER_DEVICE {
        for d in 0..DEVICES {
            let topic = gw.topic(OSLO, &format!("hr-{d}"), "measurement");
            let body =
                json!([{"bt": t + i as f64, "n": "heart-rate", "u": "beat/min", "v": 60 + i}]);
            ok(dev.publish(&topic, body.to_string()).await);
        }
    }
    ok(gw.restart());
    gw.ok(wait_accepted(&hub, DEVICES * PER_DEVICE).await);
    dev.disconnect().await;
}
