//! A server that is already running for the cluster: telling a live one from
//! a stale `postmaster.pid`, adopting it, and who stops it (`postgres.owner`).
//!
//! A chatpool that crashed leaves its server running, and a second chatpool
//! process (e.g. `chatpool user add` next to `chatpool serve`) finds the
//! server of the first. Either way the running server is used instead of
//! failing, and `postgres.owner` records which process stops it. A pid file
//! whose process is gone, or is no PostgreSQL of this cluster, is removed so
//! that the server can start.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::log_tail::with_log_tail;
use super::runner::{Runner, ServerStatus};
use super::{EmbeddedError, LOG_TARGET, PG_CTL_TIMEOUT_SECS};

pub(super) const OWNER_FILE: &str = "postgres.owner";

pub(super) enum Existing {
    /// A postmaster for this cluster is running (pid).
    Running(i32),
    /// Nothing runs; any stale pid file has been removed.
    None,
}

/// Looks at `postmaster.pid`: a live postgres for this cluster is reported; a
/// stale file (process gone, or the pid now belongs to another program) is removed.
pub(super) fn existing_server(runner: &Runner, pgdata: &Path) -> Result<Existing, EmbeddedError> {
    let pid_file = pgdata.join("postmaster.pid");
    let Ok(contents) = fs::read_to_string(&pid_file) else {
        return Ok(Existing::None);
    };
    let pid = contents
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok());
    let verdict = match pid {
        None => Err("it does not start with a pid".to_string()),
        Some(pid) if runner.status(pgdata) != ServerStatus::Running => {
            Err(format!("process {pid} is not running"))
        }
        Some(pid) => match is_postmaster_of(pid, pgdata) {
            Some(false) => Err(format!(
                "process {pid} is not a PostgreSQL server for this cluster"
            )),
            // Some(true), or None (no /proc to check): trust pg_ctl status.
            _ => Ok(pid),
        },
    };
    match verdict {
        Ok(pid) => Ok(Existing::Running(pid)),
        Err(why) => {
            tracing::warn!(
                target: LOG_TARGET,
                "removing stale {} ({why})",
                pid_file.display()
            );
            fs::remove_file(&pid_file).map_err(|error| EmbeddedError::Io {
                action: "remove the stale",
                path: pid_file.clone(),
                error,
            })?;
            Ok(Existing::None)
        }
    }
}

/// Whether `pid` is a postgres process serving `pgdata`, judged from
/// `/proc/<pid>/cmdline` and (when readable) `/proc/<pid>/cwd` (the server
/// changes into its data directory). `None` when there is no procfs.
fn is_postmaster_of(pid: i32, pgdata: &Path) -> Option<bool> {
    if !Path::new("/proc/self/cmdline").exists() {
        return None;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return Some(false);
    };
    if !cmdline_is_postgres(&cmdline) {
        return Some(false);
    }
    match (
        fs::read_link(format!("/proc/{pid}/cwd")),
        fs::canonicalize(pgdata),
    ) {
        (Ok(cwd), Ok(pgdata)) => Some(cwd == pgdata),
        _ => Some(true),
    }
}

/// Whether a NUL-separated `/proc/<pid>/cmdline` is a PostgreSQL server
/// (`/usr/lib/postgresql/15/bin/postgres -D …`, or a retitled `postgres: …`).
fn cmdline_is_postgres(cmdline: &[u8]) -> bool {
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let first_word = argv0.split_whitespace().next().unwrap_or_default();
    let base = first_word.rsplit('/').next().unwrap_or_default();
    base.starts_with("postgres") || base.starts_with("postmaster")
}

/// Adopts a running server: waits until it accepts connections and decides
/// whether this process now owns (and will stop) it.
pub(super) fn adopt(data_dir: &Path, pid: i32) -> Result<bool, EmbeddedError> {
    let pgdata = data_dir.join("postgres");
    wait_until_ready(data_dir, &pgdata, pid)?;
    claim_unless_owned(data_dir, &pgdata, pid)
}

/// Waits (up to the `pg_ctl` timeout) until the state line of
/// `postmaster.pid` says the server accepts connections.
fn wait_until_ready(data_dir: &Path, pgdata: &Path, pid: i32) -> Result<(), EmbeddedError> {
    let deadline = Instant::now() + Duration::from_secs(PG_CTL_TIMEOUT_SECS);
    loop {
        let state = fs::read_to_string(pgdata.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().nth(7).map(|l| l.trim().to_string()));
        match state.as_deref() {
            // Older servers (< 10) do not write the state line.
            Some("ready") | Some("") | None => return Ok(()),
            Some(other) if Instant::now() >= deadline => {
                return Err(EmbeddedError::Command {
                    step: "adopting the already running server".into(),
                    detail: with_log_tail(
                        format!(
                            "server process {pid} is still \"{other}\" after {PG_CTL_TIMEOUT_SECS} \
                             s; stop it (pg_ctl -D {} stop) and start chatpool again",
                            pgdata.display()
                        ),
                        data_dir,
                    ),
                });
            }
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Whether this process owns (and will stop) the running server: not when
/// another live chatpool process started it; otherwise this process takes it
/// over and records itself in `postgres.owner`.
fn claim_unless_owned(data_dir: &Path, pgdata: &Path, pid: i32) -> Result<bool, EmbeddedError> {
    let me = std::process::id() as i32;
    let owner = fs::read_to_string(data_dir.join(OWNER_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match owner {
        Some(owner) if owner != me && process_alive(owner) => {
            tracing::info!(
                target: LOG_TARGET,
                "embedded PostgreSQL in {} (pid {pid}) is already running for chatpool process \
                 {owner}; using it and leaving it running",
                pgdata.display()
            );
            Ok(false)
        }
        _ => {
            tracing::warn!(
                target: LOG_TARGET,
                "embedded PostgreSQL in {} is already running (pid {pid}), probably left behind \
                 by a chatpool that did not shut down cleanly; adopting it (its settings, such as \
                 max_connections, are those it was started with)",
                pgdata.display()
            );
            write_owner(data_dir)?;
            Ok(true)
        }
    }
}

fn process_alive(pid: i32) -> bool {
    pid > 0
        && !matches!(
            kill(Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

pub(super) fn write_owner(data_dir: &Path) -> Result<(), EmbeddedError> {
    let path = data_dir.join(OWNER_FILE);
    fs::write(&path, format!("{}\n", std::process::id())).map_err(|error| EmbeddedError::Io {
        action: "write",
        path,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_cmdlines_are_recognised() {
        assert!(cmdline_is_postgres(
            b"/usr/lib/postgresql/15/bin/postgres\0-D\0/x\0"
        ));
        assert!(cmdline_is_postgres(b"postgres: checkpointer \0"));
        assert!(!cmdline_is_postgres(b"/usr/bin/sleep\0infinity\0"));
        assert!(!cmdline_is_postgres(b""));
    }
}
