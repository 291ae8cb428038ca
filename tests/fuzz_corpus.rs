//! Replays the fuzz corpus kept in the repo (`fuzz/corpus/<target>/`) and
//! every input that ever crashed a target (`fuzz/regressions/<target>/`)
//! through the same entry points the fuzz targets call
//! (`knutepunkt::fuzzing`), on the stable toolchain: a crash the fuzzer
//! found stays fixed. To add one: copy the `crash-…` file libFuzzer wrote
//! into `fuzz/regressions/<target>/`.

use std::path::Path;

#[test]
fn every_kept_fuzz_input_runs_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for (name, run) in knutepunkt::fuzzing::TARGETS {
        for kind in ["corpus", "regressions"] {
            let dir = root.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                assert!(
                    kind == "regressions",
                    "no corpus for {name} at {}",
                    dir.display()
                );
                continue;
            };
            for e in entries {
                let path = e.unwrap_or_else(|e| panic!("{e}")).path();
                let data =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let res = std::panic::catch_unwind(|| run(&data));
                assert!(res.is_ok(), "{name} panics on {}", path.display());
                ran += 1;
            }
        }
    }
    assert!(
        ran >= knutepunkt::fuzzing::TARGETS.len(),
        "only {ran} inputs"
    );
}
