//! The data directory is private: FHIR resources in it hold national ids
//! in clear, so no other local user may read it.
//!
//! At start the hub sets the process umask to 0077 (every file and
//! directory it creates afterwards is 0600/0700, whatever the umask it was
//! started with), creates the data directory 0700, and refuses to start
//! when the directory or anything in it is open to group or others, with
//! the `chmod` that fixes it. Checking at start, not at every write: the
//! umask keeps new files private, and an operator's later `chmod` is theirs.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Permission bits of group and others.
const GROUP_OTHER: u32 = 0o077;

#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error("cannot create the data directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot check the permissions under the data directory {path}: {source}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the data directory {dir} is open to other users ({path} has mode {mode:04o}); it holds national ids in clear. Run: chmod -R go-rwx {dir}"
    )]
    Exposed {
        dir: PathBuf,
        path: PathBuf,
        mode: u32,
    },
}

/// Sets the process umask to 0077: files the hub creates from now on are
/// readable by its own user only. Process-wide, as a umask is.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` (and missing parents) with mode 0700, then checks that
/// it and everything in it are private.
pub fn prepare(dir: &Path) -> Result<(), PrivateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PrivateError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    check(dir)
}

/// Walks `dir` (not following symlinks) and fails on the first entry with
/// any group or other permission bit.
pub fn check(dir: &Path) -> Result<(), PrivateError> {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let walk = |source| PrivateError::Walk {
            path: path.clone(),
            source,
        };
        let meta = std::fs::symlink_metadata(&path).map_err(walk)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & GROUP_OTHER != 0 {
            return Err(PrivateError::Exposed {
                dir: dir.to_path_buf(),
                path,
                mode,
            });
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(walk)? {
                todo.push(entry.map_err(walk)?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        let r = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn a_private_tree_passes_and_an_open_one_names_the_fix() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = t.path().join("data");
        assert!(prepare(&dir).is_ok());
        let f = dir.join("store.db");
        assert!(std::fs::write(&f, b"x").is_ok());
        chmod(&f, 0o600);
        assert!(check(&dir).is_ok());
        chmod(&f, 0o644);
        let e = check(&dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains(&format!("chmod -R go-rwx {}", dir.display())),
            "{e}"
        );
        assert!(e.contains("0644"), "{e}");
        chmod(&f, 0o600);
        chmod(&dir, 0o750);
        assert!(check(&dir).is_err());
    }
}
