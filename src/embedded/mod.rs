//! The embedded PostgreSQL cluster chatpool runs when no `DATABASE_URL` is set.
//!
//! chatpool needs PostgreSQL, but a single-binary install should work without an
//! operator provisioning a server first. So, without `DATABASE_URL`, chatpool
//! initialises (first run) or reuses (later runs) a private cluster in
//! `<CHATPOOL_DATA_DIR>/postgres` from the machine's own PostgreSQL binaries and
//! starts it as a daemon that listens on a Unix socket inside that directory only
//! (no TCP port, nothing shared with other servers on the machine).
//!
//! Layout of the data directory:
//!
//! | path | what |
//! | --- | --- |
//! | `postgres/` | the cluster (`PGDATA`); also the directory of its Unix socket |
//! | `postgres.init-tmp/` | a cluster being initialised; renamed to `postgres/` when complete, so a crash half-way through `initdb` is recovered by simply initialising again |
//! | `postgres.log` | the server's log (`pg_ctl -l`); its tail is quoted in start errors |
//! | `postgres.owner` | pid of the chatpool process that started the server and will stop it |
//!
//! PostgreSQL refuses to run as root. When chatpool runs as root, every
//! PostgreSQL binary runs as the `postgres` user (refused when there is
//! none), and the cluster's files are owned by that user.
//!
//! Everything here is blocking; async callers wrap it in `spawn_blocking`.
//!
//! One file per part: `discovery` finds the binaries, `runner` launches them
//! (as the unprivileged user when root) and `process` runs each to
//! completion; `data_dir` checks and prepares the data directory; `init`
//! creates a new cluster; `adopt` deals with a server that is already
//! running; `server` starts and stops it with `pg_ctl`; `log_tail` quotes
//! `postgres.log` in errors; `error` holds [`EmbeddedError`].

mod adopt;
mod data_dir;
mod discovery;
mod error;
mod init;
mod log_tail;
mod process;
mod runner;
mod server;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;

pub use error::EmbeddedError;

use adopt::{adopt, existing_server, write_owner, Existing, OWNER_FILE};
use data_dir::{check_socket_path, fix_pgdata_mode, hand_over, prepare_data_dir};
use init::init_cluster;
use runner::Runner;
use server::{start_server, stop_server};

/// The port the server is configured with. Nothing listens on TCP; the port
/// only names the socket file (`<pgdata>/.s.PGSQL.5432`).
const PORT: u16 = 5432;

/// The cluster's superuser (`initdb -U`), used by chatpool to connect.
const SUPERUSER: &str = "chatpool";
/// Seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: u64 = 60;
/// The target of every log line of this module and its files: one
/// `chatpool::embedded`, which is what `RUST_LOG` filters select it by.
const LOG_TARGET: &str = module_path!();

/// Options for a private cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Directory that holds everything (`CHATPOOL_DATA_DIR`). The cluster lives in
    /// `<data_dir>/postgres`, its log in `<data_dir>/postgres.log`.
    pub data_dir: PathBuf,
    /// `max_connections` for the server (default 100); it must exceed what every
    /// chatpool process sharing the cluster may open.
    pub max_connections: u32,
    /// More server settings for the command line, after chatpool's own (so
    /// they win): the test kit's TLS cluster listens on TCP with `ssl=on`.
    /// Empty for chatpool itself.
    pub settings: Vec<(String, String)>,
}

/// A running private PostgreSQL server (see the module docs).
///
/// Dropping it stops the server (like [`EmbeddedPostgres::stop`]) unless
/// `stop` was already called; call `stop` explicitly to see errors.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    pgdata: PathBuf,
    runner: Runner,
    /// Whether this value started (or took over) the server and so stops it.
    /// False when another live chatpool process started it (e.g. `chatpool
    /// user add` while `chatpool serve` runs on the same data directory).
    owned: bool,
    stopped: Mutex<bool>,
}

impl EmbeddedPostgres {
    /// The database chatpool uses in embedded mode: "chatpool" (created at init).
    pub const DATABASE: &'static str = "chatpool";

    /// Initialise (first run) or reuse (later runs) the cluster and start it;
    /// returns once it accepts connections.
    ///
    /// A server already running for this cluster (left behind by a crashed
    /// chatpool, or started by another chatpool process) is adopted instead of
    /// failing; a stale `postmaster.pid` is removed.
    pub fn start(opts: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let data_dir = prepare_data_dir(&opts.data_dir)?;
        let pgdata = data_dir.join("postgres");
        check_socket_path(&pgdata)?;
        let runner = Runner::new(data_dir.clone())?;

        tracing::info!("starting embedded PostgreSQL in {}", pgdata.display());
        if let Some(user) = &runner.run_as {
            tracing::debug!(user = %user.name, "running as root: PostgreSQL runs as an unprivileged user");
            hand_over(&data_dir, user)?;
        }
        runner.probe(&data_dir)?;

        if !pgdata.join("PG_VERSION").is_file() {
            init_cluster(&runner, &data_dir, &pgdata)?;
        }
        fix_pgdata_mode(&pgdata)?;

        let owned = match existing_server(&runner, &pgdata)? {
            Existing::Running(pid) => adopt(&data_dir, pid)?,
            Existing::None => {
                start_server(&runner, &data_dir, &pgdata, opts)?;
                write_owner(&data_dir)?;
                true
            }
        };

        Ok(Self {
            data_dir,
            pgdata,
            runner,
            owned,
            stopped: Mutex::new(false),
        })
    }

    /// URL for the driver (tokio-postgres / libpq format) to `database` as the
    /// cluster's superuser over the Unix socket, e.g.
    /// `postgres://chatpool@%2Fabs%2Fdata%2Fpostgres:5432/chatpool`.
    ///
    /// The socket directory is the percent-encoded host (not a `?host=` query
    /// parameter: tokio-postgres would add it to, not replace, the host, and
    /// try TCP `localhost:5432` first, where another server may listen).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@{}:{PORT}/{}",
            percent_encode(self.pgdata.as_os_str().as_encoded_bytes()),
            percent_encode(database.as_bytes())
        )
    }

    /// Path of the cluster directory (`<data_dir>/postgres`), which is also the
    /// directory of the server's Unix socket.
    #[cfg(any(test, feature = "testkit"))]
    pub fn pgdata(&self) -> &std::path::Path {
        &self.pgdata
    }

    /// Stop the server (`pg_ctl stop -m fast`, waiting); idempotent.
    ///
    /// A server this value adopted from another live chatpool process is left
    /// running for that process, which stops it itself.
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return Ok(());
        }
        if !self.owned {
            tracing::info!(
                "leaving embedded PostgreSQL in {} running for the chatpool process that started it",
                self.pgdata.display()
            );
            *stopped = true;
            return Ok(());
        }
        if self.pgdata.join("postmaster.pid").exists() {
            stop_server(&self.runner, &self.data_dir, &self.pgdata)?;
        }
        let _ = fs::remove_file(self.data_dir.join(OWNER_FILE));
        *stopped = true;
        tracing::info!("embedded PostgreSQL stopped");
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("{e}");
        }
    }
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
