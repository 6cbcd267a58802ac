//! Finding the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`).
//!
//! The embedded cluster is built from the machine's own PostgreSQL, so its
//! binaries are looked for where installs put them: on `PATH`, else in the
//! versioned directories of distribution packages
//! (`/usr/lib/postgresql/<version>/bin`). All three must come from one
//! directory so that their versions match. When there is none, the error
//! ([`EmbeddedError::BinariesNotFound`]) says how to install PostgreSQL.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::EmbeddedError;

/// Where distribution packages (Debian, Ubuntu) install versioned binaries.
const VERSIONED_BIN_ROOT: &str = "/usr/lib/postgresql";
/// The binaries the cluster needs; they must come from the same directory so
/// their versions match.
const BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The directory of this machine's PostgreSQL binaries: [`find_bin_dir`] on
/// the process's `PATH` and [`VERSIONED_BIN_ROOT`].
///
/// # Errors
///
/// [`EmbeddedError::BinariesNotFound`] when there is no such directory.
pub(super) fn installed_bin_dir() -> Result<PathBuf, EmbeddedError> {
    find_bin_dir(
        std::env::var_os("PATH").as_deref(),
        Path::new(VERSIONED_BIN_ROOT),
    )
    .ok_or(EmbeddedError::BinariesNotFound)
}

/// The directory holding all of [`BINARIES`]: the first such directory on
/// `path_var`, else the newest `<versioned_root>/<version>/bin`.
fn find_bin_dir(path_var: Option<&OsStr>, versioned_root: &Path) -> Option<PathBuf> {
    let on_path = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .find(|dir| has_all_binaries(dir));
    if let Some(dir) = on_path {
        // Commands run with another working directory: make the path absolute.
        return Some(std::path::absolute(&dir).unwrap_or(dir));
    }
    newest_versioned_bin_dir(versioned_root)
}

fn has_all_binaries(dir: &Path) -> bool {
    BINARIES.iter().all(|name| is_executable(&dir.join(name)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `<root>/<version>/bin` with all binaries and the highest version (`9.6` <
/// `10` < `15` < `16`); entries whose name is not a version are ignored.
fn newest_versioned_bin_dir(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_all_binaries(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin_dir(dir: &Path, names: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for name in names {
            let path = dir.join(name);
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn versions_sort_numerically() {
        assert!(parse_version("9.6").unwrap() < parse_version("10").unwrap());
        assert!(parse_version("15").unwrap() < parse_version("16").unwrap());
        assert_eq!(parse_version("main"), None);
        assert_eq!(parse_version("15beta"), None);
    }

    #[test]
    fn discovery_prefers_path_then_newest_versioned_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("lib");
        fake_bin_dir(&root.join("9.6/bin"), &BINARIES);
        fake_bin_dir(&root.join("10/bin"), &BINARIES);
        fake_bin_dir(&root.join("16/bin"), &["pg_ctl", "postgres"]); // incomplete
        fake_bin_dir(&root.join("notaversion/bin"), &BINARIES);

        // Nothing usable on PATH: the newest complete versioned directory.
        let partial = tmp.path().join("partial");
        fake_bin_dir(&partial, &["pg_ctl"]);
        let path_var = std::env::join_paths([&partial, &tmp.path().join("missing")]).unwrap();
        assert_eq!(
            find_bin_dir(Some(&path_var), &root),
            Some(root.join("10/bin"))
        );
        assert_eq!(find_bin_dir(None, &root), Some(root.join("10/bin")));

        // A complete directory on PATH wins, and the first one on PATH.
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        fake_bin_dir(&a, &BINARIES);
        fake_bin_dir(&b, &BINARIES);
        let path_var = std::env::join_paths([&partial, &b, &a]).unwrap();
        assert_eq!(find_bin_dir(Some(&path_var), &root), Some(b));

        // Non-executable files do not count.
        let noexec = tmp.path().join("noexec");
        fake_bin_dir(&noexec, &BINARIES);
        fs::set_permissions(noexec.join("initdb"), fs::Permissions::from_mode(0o644)).unwrap();
        let path_var = std::env::join_paths([&noexec]).unwrap();
        assert_eq!(
            find_bin_dir(Some(&path_var), &tmp.path().join("none")),
            None
        );
    }
}
