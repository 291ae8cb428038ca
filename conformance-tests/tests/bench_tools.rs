//! The benchmark commands BENCHMARKS.md is measured with (`vendor-sim
//! bench`, `vendor-sim bench-delivery`), run end to end at a tiny size: a
//! bench that no longer runs (a renamed flag, a changed endpoint, a phase
//! that waits for the wrong count) is found here, not on the day figures
//! are wanted. Speed is not checked: the sizes are far too small, and
//! BENCHMARKS.md is where rates belong.

use std::path::Path;
use std::process::Command;

use conformance_tests::harness::{self, ok};
use conformance_tests::pg::backend_is_postgres;

/// The bench tools start their own hub on the embedded store; the default
/// pass runs them, the PostgreSQL pass of the same suite has nothing to add.
fn not_on_postgres(test: &str) -> bool {
    if backend_is_postgres() {
        eprintln!("NOT ON POSTGRES {test}: the bench starts its own embedded hub");
        return true;
    }
    false
}

/// Runs `vendor-sim ARGS --work-dir WORK`; returns stdout (the report),
/// panicking with stderr (the progress lines) when it fails.
fn vendor_sim(args: &[&str], work: &Path) -> String {
    let bin = ok(harness::binary("vendor-sim"));
    let out = ok(Command::new(bin)
        .args(args)
        .arg("--work-dir")
        .arg(work)
        .output());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vendor-sim {args:?} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    stdout
}

/// The bench removes its temporary directories unless `--keep`.
fn left_behind(work: &Path) -> Vec<String> {
    ok(std::fs::read_dir(work))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A table row of `report` that starts with `| name`, for its cells.
fn row<'a>(report: &'a str, name: &str) -> &'a str {
    let want = format!("| {name}");
    report
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no row {name:?} in the report:\n{report}"))
}

#[test]
fn the_ingest_bench_runs_every_phase() {
    if not_on_postgres("the_ingest_bench_runs_every_phase") {
        return;
    }
    let work = ok(tempfile::tempdir());
    let report = vendor_sim(
        &[
            "bench",
            "--events",
            "2000",
            "--mark-every",
            "500",
            "--baseline-events",
            "300",
            "--unary-events",
            "200",
            "--steady-rate",
            "100",
            "--steady-secs",
            "1",
            "--no-nats",
        ],
        work.path(),
    );
    for name in ["baseline: bare sled", "baseline: bare fjall"] {
        assert!(row(&report, name).contains("300 events"), "{report}");
    }
    assert!(
        row(&report, "hub SubmitStream").contains("2000 events"),
        "{report}"
    );
    assert!(row(&report, "hub Submit (unary)").contains("200 events"));
    // The retention step removes the older half of what was stored (the
    // stream, the unary load and the steady phase).
    let retention = row(&report, "retention pass");
    assert!(retention.contains("removed, 0 held"), "{retention}");
    assert!(row(&report, "SubmitStream ≥ 20,000").contains("over 2000"));
    assert_eq!(left_behind(work.path()), Vec::<String>::new());
}

#[test]
fn the_delivery_bench_runs_every_phase() {
    if not_on_postgres("the_delivery_bench_runs_every_phase") {
        return;
    }
    let work = ok(tempfile::tempdir());
    let report = vendor_sim(
        &[
            "bench-delivery",
            "--e2e-rate",
            "100",
            "--e2e-secs",
            "2",
            "--alarm-backlog",
            "300",
            "--drain-backlog",
            "1000",
            "--max-batch",
            "100",
            "--intake-events",
            "200",
            "--soak-events",
            "400",
            "--soak-chunk",
            "200",
        ],
        work.path(),
    );
    let e2e = row(&report, "end-to-end");
    assert!(
        e2e.contains("over 200 events") && e2e.contains("0 missing"),
        "{e2e}"
    );
    assert!(
        row(&report, "RED alarm (4.1) submitted while draining").contains("ack → at the adapter")
    );
    assert!(row(&report, "drain |").contains("backlog 1000 events"));
    assert!(row(&report, "baseline: EPJ adapter intake").contains("200 resources"));
    // Oslo's share of every phase so far, all of it taken by the pull client.
    let pull = row(&report, "pull:");
    assert!(pull.contains("items/s ("), "{pull}");
    let end = row(&report, "soak: end");
    assert!(end.contains("confirmed 400 items"), "{end}");
    assert_eq!(left_behind(work.path()), Vec::<String>::new());
}
