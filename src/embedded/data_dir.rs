//! The data directory (`CHATPOOL_DATA_DIR`) that holds the cluster: its path,
//! its permissions and who owns its cluster files.
//!
//! The path ends up in places with their own limits (a `/bin/sh` command line
//! built by `pg_ctl`, the length of a Unix socket path), so it is checked
//! before anything runs. PostgreSQL insists on owning its files and on a data
//! directory others cannot read, which is set up here too.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::runner::RunAs;
use super::{EmbeddedError, PORT};

/// Where `initdb` builds a new cluster before it is moved into place, so a
/// failed init never leaves a half-made `postgres/` behind.
pub(super) const INIT_TMP_DIR: &str = "postgres.init-tmp";

/// `sizeof(sockaddr_un.sun_path)` on Linux: the socket path must be shorter.
const MAX_SOCKET_PATH: usize = 107;

/// Creates the data directory if needed and returns its canonical absolute path.
pub(super) fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
    fs::create_dir_all(data_dir).map_err(|error| EmbeddedError::Io {
        action: "create the data directory",
        path: data_dir.to_path_buf(),
        error,
    })?;
    let canonical = fs::canonicalize(data_dir).map_err(|error| EmbeddedError::Io {
        action: "resolve the data directory",
        path: data_dir.to_path_buf(),
        error,
    })?;
    check_path_chars(&canonical)?;
    Ok(canonical)
}

/// `pg_ctl` puts the data directory and log path inside double quotes in a
/// `/bin/sh` command line, so characters special there cannot be supported.
fn check_path_chars(path: &Path) -> Result<(), EmbeddedError> {
    let Some(s) = path.to_str() else {
        return Err(EmbeddedError::DataDir {
            path: path.to_path_buf(),
            reason: "its path is not valid UTF-8".into(),
        });
    };
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '"' | '\\' | '$' | '`') || c.is_control())
    {
        return Err(EmbeddedError::DataDir {
            path: path.to_path_buf(),
            reason: format!("its path contains {c:?}, which pg_ctl cannot handle"),
        });
    }
    Ok(())
}

pub(super) fn check_socket_path(pgdata: &Path) -> Result<(), EmbeddedError> {
    let socket = pgdata.join(format!(".s.PGSQL.{PORT}"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(EmbeddedError::DataDir {
            path: pgdata.parent().unwrap_or(pgdata).to_path_buf(),
            reason: format!(
                "the server's Unix socket would be {} ({} bytes), longer than the system limit of \
                 {MAX_SOCKET_PATH} bytes; use a shorter path",
                socket.display(),
                socket.as_os_str().len()
            ),
        });
    }
    Ok(())
}

/// What chatpool keeps in a data directory; anything else is someone else's.
const OWN_ENTRIES: [&str; 4] = [
    "postgres",
    INIT_TMP_DIR,
    "postgres.log",
    super::adopt::OWNER_FILE,
];

/// As root, gives the unprivileged server user the data directory (it must
/// write `postgres.log` and the cluster there), but only a directory that is
/// chatpool's: already the user's, or holding nothing but chatpool's own
/// entries. A directory with other content (`CHATPOOL_DATA_DIR=/var/lib`)
/// is refused rather than handed over. Nothing below it is re-owned: the
/// cluster's files are the user's because its programs made them, and a
/// cluster owned by anyone else is refused (walking a tree the user can
/// change while root chowns it would let the user redirect the chown).
pub(super) fn hand_over(data_dir: &Path, user: &RunAs) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |path: &Path, reason: String| EmbeddedError::DataDir {
        path: path.to_path_buf(),
        reason,
    };
    let read = fs::read_dir(data_dir).map_err(|error| EmbeddedError::Io {
        action: "read",
        path: data_dir.to_path_buf(),
        error,
    })?;
    for entry in read {
        let entry = entry.map_err(|error| EmbeddedError::Io {
            action: "read",
            path: data_dir.to_path_buf(),
            error,
        })?;
        let name = entry.file_name();
        let Some(own) = name.to_str().filter(|n| OWN_ENTRIES.contains(n)) else {
            return Err(refuse(
                data_dir,
                format!(
                    "it holds {:?}, which is not chatpool's; as root chatpool hands its data \
                     directory to the `{}` user, so give it a new or empty directory of its own",
                    name, user.name
                ),
            ));
        };
        let path = data_dir.join(own);
        let meta = path.symlink_metadata().map_err(|error| EmbeddedError::Io {
            action: "inspect",
            path: path.clone(),
            error,
        })?;
        // The user's (the cluster, its log) or root's (chatpool's owner file).
        if meta.uid() != user.uid.as_raw() && meta.uid() != 0 {
            return Err(refuse(
                &path,
                format!(
                    "it is owned by uid {}, not by `{}` who runs the server; `chown -R {}` it \
                     first if it is yours",
                    meta.uid(),
                    user.name,
                    user.name
                ),
            ));
        }
    }
    chown_one(data_dir, user)?;
    Ok(())
}

/// `lchown`s one entry (never following symlinks) unless already owned right.
pub(super) fn chown_one(path: &Path, user: &RunAs) -> Result<fs::Metadata, EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    let meta = path.symlink_metadata().map_err(|error| EmbeddedError::Io {
        action: "inspect",
        path: path.to_path_buf(),
        error,
    })?;
    if meta.uid() != user.uid.as_raw() || meta.gid() != user.gid.as_raw() {
        std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(
            |error| EmbeddedError::Io {
                action: "change the owner of",
                path: path.to_path_buf(),
                error,
            },
        )?;
    }
    Ok(meta)
}

/// PostgreSQL refuses a data directory readable by others (e.g. after a copy).
pub(super) fn fix_pgdata_mode(pgdata: &Path) -> Result<(), EmbeddedError> {
    let mode = fs::metadata(pgdata)
        .map_err(|error| EmbeddedError::Io {
            action: "inspect",
            path: pgdata.to_path_buf(),
            error,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode != 0o700 && mode != 0o750 {
        fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700)).map_err(|error| {
            EmbeddedError::Io {
                action: "restrict the permissions of",
                path: pgdata.to_path_buf(),
                error,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_data_dir_paths_are_rejected() {
        assert!(check_path_chars(Path::new("/srv/chatpool/data")).is_ok());
        for bad in [
            "/srv/a\"b",
            "/srv/$HOME",
            "/srv/a`b`",
            "/srv/a\\b",
            "/srv/a\nb",
        ] {
            assert!(check_path_chars(Path::new(bad)).is_err(), "{bad:?}");
        }
        assert!(check_socket_path(Path::new("/tmp/x/postgres")).is_ok());
        let long = format!("/{}/postgres", "a".repeat(100));
        let err = check_socket_path(Path::new(&long)).unwrap_err().to_string();
        assert!(err.contains("socket"), "{err}");
    }
}
