//! How the PostgreSQL binaries are launched: from the directory discovery
//! found, in the data directory, in the C locale, and as an unprivileged user
//! when chatpool runs as root.
//!
//! PostgreSQL refuses to run as root, so as root every binary runs as the
//! `postgres` user (never `nobody`: see [`RunAs`]). [`Runner::probe`] proves early that this
//! user can reach the data directory, with an error that says how to fix it.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::unistd::{geteuid, Gid, Uid, User};

use super::discovery::installed_bin_dir;
use super::process::{describe_output, run, RunError};
use super::{EmbeddedError, LOG_TARGET};

/// The unprivileged user PostgreSQL runs as when chatpool runs as root.
#[derive(Debug, Clone)]
pub(super) struct RunAs {
    pub(super) name: String,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    home: PathBuf,
}

impl RunAs {
    fn unprivileged() -> Result<Self, EmbeddedError> {
        // Only `postgres`: the server trusts every local connection that can
        // reach its socket, which is every process of the user it runs as;
        // as `nobody` that would be every `nobody` daemon on the machine.
        User::from_name("postgres")
            .ok()
            .flatten()
            .map(|u| RunAs {
                name: u.name,
                uid: u.uid,
                gid: u.gid,
                home: u.dir,
            })
            .ok_or(EmbeddedError::NoUnprivilegedUser)
    }
}

#[derive(Debug)]
pub(super) struct Runner {
    bin_dir: PathBuf,
    pub(super) run_as: Option<RunAs>,
    /// Working directory of every command: the data directory, which the user
    /// can enter (checked by [`Runner::probe`]).
    cwd: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ServerStatus {
    Running,
    NotRunning,
}

impl Runner {
    /// A runner for this machine's binaries with `cwd` as working directory;
    /// as root, the binaries run as an unprivileged user.
    pub(super) fn new(cwd: PathBuf) -> Result<Self, EmbeddedError> {
        let bin_dir = installed_bin_dir()?;
        let run_as = if geteuid().is_root() {
            Some(RunAs::unprivileged()?)
        } else {
            None
        };
        Ok(Runner {
            bin_dir,
            run_as,
            cwd,
        })
    }

    pub(super) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir(&self.cwd)
            // Stable, untranslated messages (they end up in errors) and no
            // dependence on the caller's locale being installed.
            .env("LC_ALL", "C")
            .env("LANG", "C");
        for var in ["PGDATA", "PGHOST", "PGHOSTADDR", "PGPORT", "PGOPTIONS"] {
            cmd.env_remove(var);
        }
        if let Some(user) = &self.run_as {
            // std drops supplementary groups too (setgroups) when switching from root.
            cmd.uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .env("HOME", &user.home);
            cmd.env("USER", &user.name).env("LOGNAME", &user.name);
        }
        cmd
    }

    /// Runs `postgres --version` in the data directory: proves the (possibly
    /// unprivileged) user can enter the data directory and run the binaries,
    /// with a clear error when it cannot.
    pub(super) fn probe(&self, data_dir: &Path) -> Result<(), EmbeddedError> {
        let mut cmd = self.command("postgres");
        cmd.arg("--version");
        match run(cmd, None, Duration::from_secs(30)) {
            Ok(out) if out.status.success() => {
                tracing::debug!(
                    target: LOG_TARGET,
                    version = %String::from_utf8_lossy(&out.stdout).trim(),
                    bin_dir = %self.bin_dir.display(),
                    "found PostgreSQL"
                );
                Ok(())
            }
            Ok(out) => Err(EmbeddedError::Command {
                step: format!("{} --version", self.bin_dir.join("postgres").display()),
                detail: describe_output(&out),
            }),
            Err(RunError::Spawn(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                let user = self
                    .run_as
                    .as_ref()
                    .map_or("chatpool's user", |u| u.name.as_str());
                Err(EmbeddedError::DataDir {
                    path: data_dir.to_path_buf(),
                    reason: format!(
                        "the user `{user}` that runs PostgreSQL cannot enter it or cannot run \
                         {} ({e}); when chatpool runs as root, PostgreSQL runs as `{user}`, which \
                         needs search (x) permission on every parent directory of the data \
                         directory (so not, for example, under /root)",
                        self.bin_dir.join("postgres").display()
                    ),
                })
            }
            Err(e) => Err(EmbeddedError::Command {
                step: format!("{} --version", self.bin_dir.join("postgres").display()),
                detail: e.to_string(),
            }),
        }
    }

    /// `pg_ctl status`: whether the pid in `postmaster.pid` is alive.
    pub(super) fn status(&self, pgdata: &Path) -> ServerStatus {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(pgdata).arg("status");
        match run(cmd, None, Duration::from_secs(30)) {
            Ok(out) if out.status.success() => ServerStatus::Running,
            _ => ServerStatus::NotRunning,
        }
    }
}
