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
//! PostgreSQL binary runs as the `postgres` user (or `nobody` when there is
//! none), and the cluster's files are owned by that user.
//!
//! Everything here is blocking; async callers wrap it in `spawn_blocking`.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::{geteuid, Gid, Pid, Uid, User};

/// The port the server is configured with. Nothing listens on TCP; the port
/// only names the socket file (`<pgdata>/.s.PGSQL.5432`).
pub const PORT: u16 = 5432;

/// The cluster's superuser (`initdb -U`), used by chatpool to connect.
const SUPERUSER: &str = "chatpool";
/// Seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: u64 = 60;
/// Upper bound for `initdb` and the single-user `CREATE DATABASE`.
const INIT_TIMEOUT: Duration = Duration::from_secs(180);
/// How many lines of `postgres.log` an error quotes.
const LOG_TAIL_LINES: usize = 20;
/// Where distribution packages (Debian, Ubuntu) install versioned binaries.
const VERSIONED_BIN_ROOT: &str = "/usr/lib/postgresql";
/// The binaries the cluster needs; they must come from the same directory so
/// their versions match.
const BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// `sizeof(sockaddr_un.sun_path)` on Linux: the socket path must be shorter.
const MAX_SOCKET_PATH: usize = 107;

/// Options for a private cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Directory that holds everything (`CHATPOOL_DATA_DIR`). The cluster lives in
    /// `<data_dir>/postgres`, its log in `<data_dir>/postgres.log`.
    pub data_dir: PathBuf,
    /// `max_connections` for the server (default 100); it must exceed what every
    /// chatpool process sharing the cluster may open.
    pub max_connections: u32,
}

impl EmbeddedOptions {
    /// Options for `data_dir` with the default `max_connections` (100).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_connections: 100,
        }
    }
}

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
        "chatpool runs as root and PostgreSQL refuses to run as root, but neither a `postgres` \
         nor a `nobody` user exists to run the embedded server as. Create one (for example \
         `useradd --system postgres`), run chatpool as a non-root user, or set DATABASE_URL to \
         use an existing PostgreSQL server."
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

        let bin_dir = find_bin_dir(
            std::env::var_os("PATH").as_deref(),
            Path::new(VERSIONED_BIN_ROOT),
        )
        .ok_or(EmbeddedError::BinariesNotFound)?;
        let run_as = if geteuid().is_root() {
            Some(RunAs::unprivileged()?)
        } else {
            None
        };
        let runner = Runner {
            bin_dir,
            run_as,
            cwd: data_dir.clone(),
        };

        tracing::info!("starting embedded PostgreSQL in {}", pgdata.display());
        if let Some(user) = &runner.run_as {
            tracing::debug!(user = %user.name, "running as root: PostgreSQL runs as an unprivileged user");
            chown_cluster_files(&data_dir, user)?;
        }
        runner.probe(&data_dir)?;

        if !pgdata.join("PG_VERSION").is_file() {
            init_cluster(&runner, &data_dir, &pgdata)?;
        }
        fix_pgdata_mode(&pgdata)?;

        let owned = match existing_server(&runner, &pgdata)? {
            Existing::Running(pid) => adopt(&data_dir, pid)?,
            Existing::None => {
                start_server(&runner, &data_dir, &pgdata, opts.max_connections)?;
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
    pub fn pgdata(&self) -> &Path {
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
            let mut cmd = self.runner.command("pg_ctl");
            cmd.arg("-D")
                .arg(&self.pgdata)
                .args(["-m", "fast", "-w", "-t"])
                .arg(PG_CTL_TIMEOUT_SECS.to_string())
                .arg("stop");
            let result = run(cmd, None, Duration::from_secs(PG_CTL_TIMEOUT_SECS + 10));
            let failure = match result {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(describe_output(&out)),
                Err(e) => Some(e.to_string()),
            };
            // `pg_ctl stop` also fails when the server is already gone (e.g. it
            // was killed and a stale pid file was left): that is "stopped" too.
            if let Some(detail) = failure {
                if self.runner.status(&self.pgdata) == ServerStatus::Running {
                    return Err(EmbeddedError::Command {
                        step: "pg_ctl stop".into(),
                        detail: with_log_tail(detail, &self.data_dir),
                    });
                }
            }
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

// ---------------------------------------------------------------------------
// Binary discovery

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

// ---------------------------------------------------------------------------
// Running binaries (as an unprivileged user when root)

/// The unprivileged user PostgreSQL runs as when chatpool runs as root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
    home: PathBuf,
}

impl RunAs {
    fn unprivileged() -> Result<Self, EmbeddedError> {
        ["postgres", "nobody"]
            .into_iter()
            .find_map(|name| User::from_name(name).ok().flatten())
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
struct Runner {
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    /// Working directory of every command: the data directory, which the user
    /// can enter (checked by [`Runner::probe`]).
    cwd: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
enum ServerStatus {
    Running,
    NotRunning,
}

impl Runner {
    fn command(&self, program: &str) -> Command {
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
    fn probe(&self, data_dir: &Path) -> Result<(), EmbeddedError> {
        let mut cmd = self.command("postgres");
        cmd.arg("--version");
        match run(cmd, None, Duration::from_secs(30)) {
            Ok(out) if out.status.success() => {
                tracing::debug!(
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
    fn status(&self, pgdata: &Path) -> ServerStatus {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(pgdata).arg("status");
        match run(cmd, None, Duration::from_secs(30)) {
            Ok(out) if out.status.success() => ServerStatus::Running,
            _ => ServerStatus::NotRunning,
        }
    }
}

#[derive(Debug)]
enum RunError {
    Spawn(io::Error),
    Timeout(Duration),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Spawn(e) => write!(f, "could not run it: {e}"),
            RunError::Timeout(t) => write!(
                f,
                "it did not finish within {} s and was killed",
                t.as_secs()
            ),
        }
    }
}

struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `cmd` to completion with `input` on stdin, capturing its output; kills
/// it after `timeout` so nothing here can hang forever.
fn run(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output, RunError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    tracing::debug!(command = ?cmd, "running");
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;

    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let mut readers = 0;
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            let _ = tx.send((true, buf));
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let tx = tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let _ = tx.send((false, buf));
        });
    }
    drop(tx);
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        // A child that exits early closes the pipe; its status tells why.
        let _ = stdin.write_all(input);
    }

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Timeout(timeout));
            }
        }
    };

    // A daemonised grandchild could in theory keep a pipe open: never wait long.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..readers {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok((true, buf)) => stdout = buf,
            Ok((false, buf)) => stderr = buf,
            Err(_) => break,
        }
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn describe_output(out: &Output) -> String {
    let mut text = format!("it exited with {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let combined = [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if !combined.is_empty() {
        text.push_str(". Its output:\n");
        text.push_str(&tail_lines(&combined, 40));
    }
    text
}

// ---------------------------------------------------------------------------
// Data directory

/// Creates the data directory if needed and returns its canonical absolute path.
fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf, EmbeddedError> {
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

fn check_socket_path(pgdata: &Path) -> Result<(), EmbeddedError> {
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

/// Gives the unprivileged user the data directory itself and everything of
/// the cluster in it (only chatpool's own entries, so a data directory that
/// holds other files does not have them re-owned).
fn chown_cluster_files(data_dir: &Path, user: &RunAs) -> Result<(), EmbeddedError> {
    chown_one(data_dir, user)?;
    for name in ["postgres", INIT_TMP_DIR, "postgres.log"] {
        let path = data_dir.join(name);
        if path.symlink_metadata().is_ok() {
            chown_recursive(&path, user)?;
        }
    }
    Ok(())
}

fn chown_recursive(path: &Path, user: &RunAs) -> Result<(), EmbeddedError> {
    let meta = chown_one(path, user)?;
    if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(|error| EmbeddedError::Io {
            action: "read",
            path: path.to_path_buf(),
            error,
        })?;
        for entry in entries {
            let entry = entry.map_err(|error| EmbeddedError::Io {
                action: "read",
                path: path.to_path_buf(),
                error,
            })?;
            chown_recursive(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// `lchown`s one entry (never following symlinks) unless already owned right.
fn chown_one(path: &Path, user: &RunAs) -> Result<fs::Metadata, EmbeddedError> {
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
fn fix_pgdata_mode(pgdata: &Path) -> Result<(), EmbeddedError> {
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

// ---------------------------------------------------------------------------
// Initialisation

const INIT_TMP_DIR: &str = "postgres.init-tmp";

/// Creates the cluster in `postgres.init-tmp` and renames it to `postgres`
/// once complete (superuser `chatpool`, database `chatpool`).
fn init_cluster(runner: &Runner, data_dir: &Path, pgdata: &Path) -> Result<(), EmbeddedError> {
    // A `postgres` directory without PG_VERSION is not ours to overwrite,
    // unless it is empty (e.g. a freshly created volume mount point).
    if pgdata.exists() {
        let empty = fs::read_dir(pgdata)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(EmbeddedError::DataDir {
                path: data_dir.to_path_buf(),
                reason: format!(
                    "{} exists but is not a PostgreSQL cluster (it has no PG_VERSION file); move \
                     it away and chatpool will create a new cluster",
                    pgdata.display()
                ),
            });
        }
        fs::remove_dir(pgdata).map_err(|error| EmbeddedError::Io {
            action: "remove the empty directory",
            path: pgdata.to_path_buf(),
            error,
        })?;
    }

    let tmp = data_dir.join(INIT_TMP_DIR);
    if tmp.symlink_metadata().is_ok() {
        tracing::warn!(
            "removing {} left by an interrupted initialisation",
            tmp.display()
        );
        fs::remove_dir_all(&tmp).map_err(|error| EmbeddedError::Io {
            action: "remove",
            path: tmp.clone(),
            error,
        })?;
    }
    fs::create_dir(&tmp).map_err(|error| EmbeddedError::Io {
        action: "create",
        path: tmp.clone(),
        error,
    })?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).map_err(|error| {
        EmbeddedError::Io {
            action: "restrict the permissions of",
            path: tmp.clone(),
            error,
        }
    })?;
    if let Some(user) = &runner.run_as {
        chown_one(&tmp, user)?;
    }

    tracing::info!(
        "initialising a new PostgreSQL cluster in {}",
        pgdata.display()
    );
    let mut initdb = runner.command("initdb");
    initdb
        .arg("-D")
        .arg(&tmp)
        .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
        // Only the socket (in a 0700 directory) is reachable, and it trusts;
        // TCP, should it ever be enabled by hand, rejects everyone.
        .args(["--auth-local=trust", "--auth-host=reject"]);
    check_success("initdb", run(initdb, None, INIT_TIMEOUT))?;

    // Even a plain `pg_ctl start` by hand must not open a TCP port.
    append_to_file(
        &tmp.join("postgresql.conf"),
        "\n# chatpool: the embedded server listens on its Unix socket only; chatpool passes\n\
         # unix_socket_directories, port and max_connections on the command line at start.\n\
         listen_addresses = ''\n",
    )?;

    // Create the database without opening any connection: single-user mode.
    let mut single = runner.command("postgres");
    single
        .args(["--single", "-D"])
        .arg(&tmp)
        .args(["-c", "listen_addresses=", "postgres"]);
    let create = format!("CREATE DATABASE {};\n", EmbeddedPostgres::DATABASE);
    let out = check_success(
        "creating the chatpool database (postgres --single)",
        run(single, Some(create.as_bytes()), INIT_TIMEOUT),
    )?;
    // Single-user mode exits 0 even when a statement fails.
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if ["ERROR:", "FATAL:", "PANIC:"]
        .iter()
        .any(|m| text.contains(m))
    {
        return Err(EmbeddedError::Command {
            step: "creating the chatpool database (postgres --single)".into(),
            detail: describe_output(&out),
        });
    }

    fs::rename(&tmp, pgdata).map_err(|error| EmbeddedError::Io {
        action: "rename the new cluster to",
        path: pgdata.to_path_buf(),
        error,
    })?;
    if let Ok(dir) = fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn check_success(step: &str, result: Result<Output, RunError>) -> Result<Output, EmbeddedError> {
    match result {
        Ok(out) if out.status.success() => Ok(out),
        Ok(out) => Err(EmbeddedError::Command {
            step: step.into(),
            detail: describe_output(&out),
        }),
        Err(e) => Err(EmbeddedError::Command {
            step: step.into(),
            detail: e.to_string(),
        }),
    }
}

fn append_to_file(path: &Path, text: &str) -> Result<(), EmbeddedError> {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|error| EmbeddedError::Io {
            action: "write to",
            path: path.to_path_buf(),
            error,
        })
}

// ---------------------------------------------------------------------------
// Starting, adopting

const OWNER_FILE: &str = "postgres.owner";

enum Existing {
    /// A postmaster for this cluster is running (pid).
    Running(i32),
    /// Nothing runs; any stale pid file has been removed.
    None,
}

/// Looks at `postmaster.pid`: a live postgres for this cluster is reported; a
/// stale file (process gone, or the pid now belongs to another program) is removed.
fn existing_server(runner: &Runner, pgdata: &Path) -> Result<Existing, EmbeddedError> {
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
            tracing::warn!("removing stale {} ({why})", pid_file.display());
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
fn adopt(data_dir: &Path, pid: i32) -> Result<bool, EmbeddedError> {
    let pgdata = data_dir.join("postgres");
    let deadline = Instant::now() + Duration::from_secs(PG_CTL_TIMEOUT_SECS);
    loop {
        let state = fs::read_to_string(pgdata.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().nth(7).map(|l| l.trim().to_string()));
        match state.as_deref() {
            // Older servers (< 10) do not write the state line.
            Some("ready") | Some("") | None => break,
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

    let me = std::process::id() as i32;
    let owner = fs::read_to_string(data_dir.join(OWNER_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match owner {
        Some(owner) if owner != me && process_alive(owner) => {
            tracing::info!(
                "embedded PostgreSQL in {} (pid {pid}) is already running for chatpool process \
                 {owner}; using it and leaving it running",
                pgdata.display()
            );
            Ok(false)
        }
        _ => {
            tracing::warn!(
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

fn write_owner(data_dir: &Path) -> Result<(), EmbeddedError> {
    let path = data_dir.join(OWNER_FILE);
    fs::write(&path, format!("{}\n", std::process::id())).map_err(|error| EmbeddedError::Io {
        action: "write",
        path,
        error,
    })
}

/// `pg_ctl start`, waiting until the server accepts connections. The server
/// keeps running as a daemon (pg_ctl detaches it) after this returns.
fn start_server(
    runner: &Runner,
    data_dir: &Path,
    pgdata: &Path,
    max_connections: u32,
) -> Result<(), EmbeddedError> {
    let log = data_dir.join("postgres.log");
    let mut cmd = runner.command("pg_ctl");
    cmd.arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t"])
        .arg(PG_CTL_TIMEOUT_SECS.to_string())
        .arg("-o")
        .arg(server_options(pgdata, max_connections))
        .arg("start");
    let result = run(cmd, None, Duration::from_secs(PG_CTL_TIMEOUT_SECS + 10));
    match check_success("pg_ctl start", result) {
        Ok(_) => Ok(()),
        Err(EmbeddedError::Command { step, detail }) => Err(EmbeddedError::Command {
            step,
            detail: with_log_tail(detail, data_dir),
        }),
        Err(e) => Err(e),
    }
}

/// The server's command-line settings, as one string for `pg_ctl -o`, which
/// pastes it into a `/bin/sh` command line: every word is shell-quoted.
///
/// The socket directory is given at every start (not stored in the cluster's
/// configuration) so that it follows the data directory when that is moved.
fn server_options(pgdata: &Path, max_connections: u32) -> String {
    let words = [
        "-c".to_string(),
        "listen_addresses=".to_string(),
        "-c".to_string(),
        format!(
            "unix_socket_directories={}",
            pg_list_item(&pgdata.to_string_lossy())
        ),
        "-c".to_string(),
        format!("port={PORT}"),
        "-c".to_string(),
        format!("max_connections={max_connections}"),
    ];
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one element of a PostgreSQL comma-separated directory list
/// (`unix_socket_directories`), so commas and spaces in the path are literal.
fn pg_list_item(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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

// ---------------------------------------------------------------------------
// Log tail

fn with_log_tail(mut detail: String, data_dir: &Path) -> String {
    let log = data_dir.join("postgres.log");
    match read_tail(&log, 64 * 1024) {
        Some(text) if !text.trim().is_empty() => {
            detail.push_str(&format!("\nLast lines of {}:\n", log.display()));
            detail.push_str(&tail_lines(&text, LOG_TAIL_LINES));
        }
        _ => detail.push_str(&format!("\n({} is empty or missing.)", log.display())),
    }
    detail
}

/// The last `max_bytes` of a file, lossily decoded.
fn read_tail(path: &Path, max_bytes: u64) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max_bytes)))
        .ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

    #[test]
    fn options_are_quoted_for_the_shell_and_for_postgres() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(pg_list_item("/a b,c"), "\"/a b,c\"");

        let opts = server_options(Path::new("/data/it's here/postgres"), 300);
        assert_eq!(
            opts,
            r#"'-c' 'listen_addresses=' '-c' 'unix_socket_directories="/data/it'\''s here/postgres"' '-c' 'port=5432' '-c' 'max_connections=300'"#
        );
        // What the shell makes of it is what postgres must receive.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {opts}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "-c\nlisten_addresses=\n-c\nunix_socket_directories=\"/data/it's here/postgres\"\n-c\nport=5432\n-c\nmax_connections=300\n"
        );
    }

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

    #[test]
    fn url_puts_the_socket_dir_in_the_host() {
        let url = format!(
            "postgres://{SUPERUSER}@{}:{PORT}/{}",
            percent_encode(b"/tmp/my data/postgres"),
            percent_encode(b"chatpool")
        );
        assert_eq!(
            url,
            "postgres://chatpool@%2Ftmp%2Fmy%20data%2Fpostgres:5432/chatpool"
        );
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(
            config.get_hosts(),
            [tokio_postgres::config::Host::Unix(PathBuf::from(
                "/tmp/my data/postgres"
            ))]
        );
        assert_eq!(config.get_ports(), [5432]);
        assert_eq!(config.get_dbname(), Some("chatpool"));
        assert_eq!(config.get_user(), Some("chatpool"));
        // The generic URL parser (used to strip pool parameters) accepts it too.
        let parsed = url::Url::parse(&format!("{url}?connection_limit=5")).unwrap();
        assert_eq!(parsed.path(), "/chatpool");
    }

    #[test]
    fn postgres_cmdlines_are_recognised() {
        assert!(cmdline_is_postgres(
            b"/usr/lib/postgresql/15/bin/postgres\0-D\0/x\0"
        ));
        assert!(cmdline_is_postgres(b"postgres: checkpointer \0"));
        assert!(!cmdline_is_postgres(b"/usr/bin/sleep\0infinity\0"));
        assert!(!cmdline_is_postgres(b""));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = tail_lines(&text, LOG_TAIL_LINES);
        assert!(
            tail.starts_with("line 11\n") && tail.ends_with("line 30"),
            "{tail}"
        );
    }

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

    /// Query `sql` on the embedded server over its Unix socket.
    fn query(pg: &EmbeddedPostgres, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let url = format!("{}?connect_timeout=10", pg.url(EmbeddedPostgres::DATABASE));
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let rows = tokio::time::timeout(Duration::from_secs(30), client.simple_query(sql))
                .await
                .expect("query timed out")?;
            Ok(rows
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect())
        })
    }

    /// Starts a real cluster: init, data, clean stop, reuse, stale pid file,
    /// adoption of a running server. Skipped when PostgreSQL is not installed.
    #[test]
    fn cluster_starts_stops_and_keeps_its_data() {
        if find_bin_dir(
            std::env::var_os("PATH").as_deref(),
            Path::new(VERSIONED_BIN_ROOT),
        )
        .is_none()
        {
            eprintln!("skipping: no PostgreSQL binaries on this machine");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        if geteuid().is_root() {
            // The unprivileged server user must be able to traverse it.
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let opts = EmbeddedOptions {
            data_dir: tmp.path().join("data"),
            max_connections: 37,
        };

        // First run: initialise and start.
        let pg = EmbeddedPostgres::start(&opts).unwrap();
        assert!(pg.pgdata().join("PG_VERSION").is_file());
        assert!(!tmp.path().join("data").join(INIT_TMP_DIR).exists());
        assert!(pg.pgdata().join(format!(".s.PGSQL.{PORT}")).exists());
        query(
            &pg,
            "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')",
        )
        .unwrap();
        assert_eq!(query(&pg, "SHOW max_connections").unwrap(), ["37"]);
        assert_eq!(query(&pg, "SHOW listen_addresses").unwrap(), [""]);
        assert_eq!(query(&pg, "SELECT current_user").unwrap(), ["chatpool"]);
        pg.stop().unwrap();
        pg.stop().unwrap(); // idempotent
        assert!(
            query(&pg, "SELECT 1").is_err(),
            "server still answers after stop"
        );
        drop(pg);

        // Second run: reuse, data preserved.
        let pg = EmbeddedPostgres::start(&opts).unwrap();
        assert_eq!(query(&pg, "SELECT v FROM t").unwrap(), ["kept"]);

        // A second start while it runs adopts the running server.
        let again = EmbeddedPostgres::start(&opts).unwrap();
        assert_eq!(query(&again, "SELECT v FROM t").unwrap(), ["kept"]);

        // ... and leaves it running when another live process owns it (pid 1 here).
        let owner_file = tmp.path().join("data").join(OWNER_FILE);
        fs::write(&owner_file, "1\n").unwrap();
        let guest = EmbeddedPostgres::start(&opts).unwrap();
        guest.stop().unwrap();
        drop(guest);
        assert_eq!(query(&pg, "SELECT v FROM t").unwrap(), ["kept"]);
        write_owner(&tmp.path().join("data")).unwrap();

        again.stop().unwrap();
        pg.stop().unwrap();
        drop((pg, again));

        // A stale pid file (its pid is this test process, not a postgres) is removed.
        let pgdata = tmp.path().join("data/postgres");
        fs::write(
            pgdata.join("postmaster.pid"),
            format!(
                "{}\n{}\n0\n{PORT}\n\n\n0 0\nready\n",
                std::process::id(),
                pgdata.display()
            ),
        )
        .unwrap();
        let pg = EmbeddedPostgres::start(&opts).unwrap();
        assert_eq!(query(&pg, "SELECT v FROM t").unwrap(), ["kept"]);
        pg.stop().unwrap();
        drop(pg);

        // A server that cannot start: the error quotes the log.
        let bad = EmbeddedOptions {
            max_connections: 0,
            ..opts
        };
        let err = EmbeddedPostgres::start(&bad).unwrap_err().to_string();
        assert!(err.contains("pg_ctl start failed"), "{err}");
        assert!(
            err.contains("Last lines of") && err.contains("max_connections"),
            "{err}"
        );
    }
}
