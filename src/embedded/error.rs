//! The one error type of the embedded cluster, [`EmbeddedError`].
//!
//! Starting the cluster fails in ways an operator has to fix by hand (no
//! PostgreSQL installed, an unusable data directory, a server that will not
//! start), so every variant renders as a message that says what to do.

use std::io;
use std::path::PathBuf;

/// Why the embedded cluster could not be set up, started or stopped.
///
/// Every message is a self-contained paragraph meant for an operator, saying
/// what went wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No directory with `initdb`, `pg_ctl` and `postgres` was found.
    #[error(
        "DATABASE_URL is not set, so chatpool wants to run its own private PostgreSQL server, \
         but the PostgreSQL server binaries (initdb, pg_ctl, postgres) were found neither on PATH \
         nor under /usr/lib/postgresql/*/bin. Install PostgreSQL (for example \
         `apt-get install postgresql` on Debian/Ubuntu, `dnf install postgresql-server` on \
         Fedora, `apk add postgresql` on Alpine, `brew install postgresql` on macOS) and make \
         sure its bin directory is on PATH, or set DATABASE_URL=postgres://… to use an existing \
         PostgreSQL server."
    )]
    BinariesNotFound,

    /// Running as root, but there is no unprivileged user to run PostgreSQL as.
    #[error(
        "chatpool runs as root and PostgreSQL refuses to run as root, but no `postgres` user \
         exists to run the embedded server as (chatpool does not fall back to `nobody`: every \
         process of that user could reach the server as its superuser). Create one (for \
         example `useradd --system postgres`), run chatpool as a non-root user, or set \
         DATABASE_URL to use an existing PostgreSQL server."
    )]
    NoUnprivilegedUser,

    /// The data directory cannot hold a cluster (bad path, permissions, foreign content).
    #[error(
        "cannot use {} for the embedded PostgreSQL server: {reason}. Set CHATPOOL_DATA_DIR to a \
         different directory, or set DATABASE_URL to use an existing PostgreSQL server.",
        path.display()
    )]
    DataDir {
        /// The offending directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A file-system operation on the data directory failed.
    #[error("embedded PostgreSQL: could not {action} {}: {error}.", path.display())]
    Io {
        /// What was being done ("create", "remove", …).
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },

    /// A PostgreSQL binary failed; `detail` quotes its output and the log tail.
    #[error("embedded PostgreSQL: {step} failed: {detail}")]
    Command {
        /// The step that failed, e.g. "pg_ctl start".
        step: String,
        /// Exit status, output and, where relevant, the last lines of `postgres.log`.
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_message_says_what_to_do() {
        let msg = EmbeddedError::BinariesNotFound.to_string();
        for needle in [
            "apt-get install postgresql",
            "brew install postgresql",
            "DATABASE_URL",
        ] {
            assert!(msg.contains(needle), "{msg}");
        }
        assert!(!msg.contains('\n'));
    }
}
