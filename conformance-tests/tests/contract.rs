//! The vendor contract (`proto/knutepunkt/v1`) keeps buf's STANDARD lint
//! rules and never breaks the released v1 (buf's FILE breaking rules, against
//! the frozen copy in `conformance-tests/contract/v1`). buf comes from the
//! npm package `@bufbuild/buf`, installed by the test itself (see
//! `conformance_tests::buf`); without npm the tests say they skipped, and
//! under `CI=true` they fail instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use conformance_tests::buf;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("conformance-tests has no parent directory"))
}

fn frozen_v1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contract/v1")
}

/// buf, or `None` after printing that the test skipped (a panic under CI).
fn buf_or_skip(test: &str) -> Option<PathBuf> {
    match buf::install() {
        Ok(p) => Some(p),
        Err(e) if buf::is_skip(&e) => {
            conformance_tests::harness::skip(test, &format!("{e}; install Node.js and npm"));
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Runs buf in `dir`; (success, output).
fn buf_in(bin: &Path, dir: &Path, args: &[&str]) -> (bool, String) {
    match buf::run(Command::new(bin).args(args).current_dir(dir), "buf") {
        Ok(out) => (true, out),
        Err(out) => (false, out),
    }
}

#[test]
fn contract_passes_buf_lint_standard() {
    let Some(bin) = buf_or_skip("contract_passes_buf_lint_standard") else {
        return;
    };
    let config = std::fs::read_to_string(repo_root().join("buf.yaml"))
        .unwrap_or_else(|e| panic!("buf.yaml at the repository root: {e}"));
    assert!(
        config.contains("- STANDARD") && !config.contains("except"),
        "buf.yaml must use the STANDARD rules without exceptions:\n{config}"
    );
    let (ok, out) = buf_in(&bin, &repo_root(), &["lint"]);
    assert!(ok, "buf lint found problems in proto/:\n{out}");
}

#[test]
fn contract_does_not_break_the_released_v1() {
    let Some(bin) = buf_or_skip("contract_does_not_break_the_released_v1") else {
        return;
    };
    let against = frozen_v1();
    let against = against.to_string_lossy();
    let (ok, out) = buf_in(&bin, &repo_root(), &["breaking", "--against", &against]);
    assert!(
        ok,
        "proto/ breaks the released knutepunkt.v1 (conformance-tests/contract/v1); \
         put the change into knutepunkt.v2 instead:\n{out}"
    );
}

/// The two checks above are live: a copy of the contract with a renumbered
/// field fails `buf breaking`, and one with an unprefixed enum value fails
/// `buf lint`.
#[test]
fn buf_catches_a_break_and_a_lint_finding() {
    let Some(bin) = buf_or_skip("buf_catches_a_break_and_a_lint_finding") else {
        return;
    };
    let root = repo_root();
    let proto = std::fs::read_to_string(root.join("proto/knutepunkt/v1/vendor.proto"))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = std::fs::read_to_string(root.join("buf.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let write_copy = |text: &str| -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pkg = dir.path().join("proto/knutepunkt/v1");
        std::fs::create_dir_all(&pkg).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(pkg.join("vendor.proto"), text).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("buf.yaml"), &config).unwrap_or_else(|e| panic!("{e}"));
        dir
    };

    let renumbered = proto.replace("string resource = 3;", "string resource = 9;");
    assert_ne!(renumbered, proto, "the test's edit no longer applies");
    let dir = write_copy(&renumbered);
    let against = frozen_v1();
    let (ok, out) = buf_in(
        &bin,
        dir.path(),
        &["breaking", "--against", &against.to_string_lossy()],
    );
    assert!(!ok, "a renumbered field passed buf breaking:\n{out}");
    assert!(out.contains("resource"), "{out}");

    let unprefixed = proto.replace("SEVERITY_RED = 3;", "RED = 3;");
    assert_ne!(unprefixed, proto, "the test's edit no longer applies");
    let dir = write_copy(&unprefixed);
    let (ok, out) = buf_in(&bin, dir.path(), &["lint"]);
    assert!(!ok, "an unprefixed enum value passed buf lint:\n{out}");
    assert!(out.contains("SEVERITY_"), "{out}");
}
