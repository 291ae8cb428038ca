//! The operator's alert rules and dashboard (`deploy/`) are valid and use
//! only metrics the hub exports.
//!
//! - `promtool check rules` and `promtool test rules` (the unit tests in
//!   `deploy/prometheus/alerts_test.yml`). promtool comes from PATH or is
//!   unpacked from Debian's package (see `conformance_tests::promtool`);
//!   where neither works the test skips, and under `CI=true` it fails.
//! - A hub with a push destination takes traffic; then every `knutepunkt_*`
//!   name in `alerts.yml` and in the dashboard's queries is a series in its
//!   `/metrics`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use conformance_tests::harness::{self, EpjAdapter, Hub, HubOptions, events, ok};
use knutepunkt::proto::v1 as pb;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every `knutepunkt_…` token in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("knutepunkt_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The queries of the dashboard: every panel target's `expr` and the
/// template variables' queries.
fn dashboard_queries() -> String {
    let text = ok(std::fs::read_to_string(
        deploy().join("grafana/knutepunkt.json"),
    ));
    let dash: serde_json::Value = ok(serde_json::from_str(&text));
    let panels = dash["panels"].as_array().cloned().unwrap_or_default();
    assert!(panels.len() >= 8, "too few panels: {}", panels.len());
    let mut out = String::new();
    for p in &panels {
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel without a query: {}", p["title"]);
        for t in targets {
            out.push_str(t["expr"].as_str().unwrap_or_default());
            out.push('\n');
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        out.push_str(v["query"].as_str().unwrap_or_default());
        out.push('\n');
    }
    out
}

#[test]
fn alert_rules_pass_promtool() {
    let promtool = match conformance_tests::promtool::promtool() {
        Ok(p) => p,
        Err(e) => return harness::skip("alert_rules_pass_promtool", &e),
    };
    let dir = deploy().join("prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = ok(Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output());
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_only_exported_metrics() {
    let epj = ok(EpjAdapter::start("ok").await);
    let extra = format!(
        r#"
[[municipalities]]
orgnr = "{org}"
name = "Oslo kommune"

[[municipalities.destinations]]
name = "oslo-epj"
kind = "push"
url = "{url}"
ca_file = "{ca}"

[[municipalities]]
orgnr = "{bergen}"
name = "Bergen kommune"
"#,
        org = events::OSLO,
        bergen = events::BERGEN,
        url = epj.fhir_url(),
        ca = epj.cert.display()
    );
    let dir = ok(tempfile::tempdir());
    let opts = HubOptions {
        config_extra: extra,
        ..HubOptions::default()
    };
    let hub = ok(Hub::start(dir.path(), opts).await);
    let mut c = ok(hub.client().await);
    for i in 0..3 {
        let r = ok(c
            .submit(events::heart_rate(&format!("ops-{i}"), events::OSLO, 9))
            .await);
        assert_eq!(r.into_inner().status, pb::ReceiptStatus::Accepted as i32);
    }
    ok(epj.wait_created(3, Duration::from_secs(20)).await);
    // The queue gauges are refreshed every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = ok(hub.metrics().await);
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let alerts = ok(std::fs::read_to_string(
        deploy().join("prometheus/alerts.yml"),
    ));
    for (what, used) in [
        ("alerts.yml", metric_names(&alerts)),
        (
            "grafana/knutepunkt.json",
            metric_names(&dashboard_queries()),
        ),
    ] {
        assert!(used.len() >= 5, "{what}: {used:?}");
        let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{what} uses metrics the hub does not export: {missing:?}\nexported: {exported:?}"
        );
    }
}
