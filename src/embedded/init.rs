//! Creating a new cluster on first run: `initdb`, the configuration chatpool
//! relies on, and the `chatpool` database.
//!
//! The cluster is built in `postgres.init-tmp` and renamed to `postgres` only
//! when complete, so a crash half-way through leaves nothing that looks like a
//! cluster: the next start removes the leftover and initialises again.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::data_dir::{chown_one, INIT_TMP_DIR};
use super::process::{check_success, describe_output, run};
use super::runner::Runner;
use super::{EmbeddedError, EmbeddedPostgres, LOG_TARGET, SUPERUSER};

/// Upper bound for `initdb` and the single-user `CREATE DATABASE`.
const INIT_TIMEOUT: Duration = Duration::from_secs(180);

/// Creates the cluster in `postgres.init-tmp` and renames it to `postgres`
/// once complete (superuser `chatpool`, database `chatpool`).
pub(super) fn init_cluster(
    runner: &Runner,
    data_dir: &Path,
    pgdata: &Path,
) -> Result<(), EmbeddedError> {
    remove_empty_pgdata(data_dir, pgdata)?;
    let tmp = data_dir.join(INIT_TMP_DIR);
    create_init_dir(runner, &tmp)?;

    tracing::info!(
        target: LOG_TARGET,
        "initialising a new PostgreSQL cluster in {}",
        pgdata.display()
    );
    run_initdb(runner, &tmp)?;
    listen_on_socket_only(&tmp)?;
    create_database(runner, &tmp)?;
    move_into_place(data_dir, &tmp, pgdata)
}

/// A `postgres` directory without PG_VERSION is not ours to overwrite,
/// unless it is empty (e.g. a freshly created volume mount point).
fn remove_empty_pgdata(data_dir: &Path, pgdata: &Path) -> Result<(), EmbeddedError> {
    if !pgdata.exists() {
        return Ok(());
    }
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
    })
}

/// Creates `tmp` afresh (removing what an interrupted initialisation left),
/// private to the user that runs PostgreSQL.
fn create_init_dir(runner: &Runner, tmp: &Path) -> Result<(), EmbeddedError> {
    if tmp.symlink_metadata().is_ok() {
        tracing::warn!(
            target: LOG_TARGET,
            "removing {} left by an interrupted initialisation",
            tmp.display()
        );
        fs::remove_dir_all(tmp).map_err(|error| EmbeddedError::Io {
            action: "remove",
            path: tmp.to_path_buf(),
            error,
        })?;
    }
    fs::create_dir(tmp).map_err(|error| EmbeddedError::Io {
        action: "create",
        path: tmp.to_path_buf(),
        error,
    })?;
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o700)).map_err(|error| {
        EmbeddedError::Io {
            action: "restrict the permissions of",
            path: tmp.to_path_buf(),
            error,
        }
    })?;
    if let Some(user) = &runner.run_as {
        chown_one(tmp, user)?;
    }
    Ok(())
}

/// `initdb` into `tmp`: superuser `chatpool`, UTF-8, the C locale.
fn run_initdb(runner: &Runner, tmp: &Path) -> Result<(), EmbeddedError> {
    let mut initdb = runner.command("initdb");
    initdb
        .arg("-D")
        .arg(tmp)
        .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
        // Only the socket (in a 0700 directory) is reachable, and it trusts;
        // TCP, should it ever be enabled by hand, rejects everyone.
        .args(["--auth-local=trust", "--auth-host=reject"]);
    check_success("initdb", run(initdb, None, INIT_TIMEOUT))?;
    Ok(())
}

/// Even a plain `pg_ctl start` by hand must not open a TCP port.
fn listen_on_socket_only(tmp: &Path) -> Result<(), EmbeddedError> {
    append_to_file(
        &tmp.join("postgresql.conf"),
        "\n# chatpool: the embedded server listens on its Unix socket only; chatpool passes\n\
         # unix_socket_directories, port and max_connections on the command line at start.\n\
         listen_addresses = ''\n",
    )
}

/// Create the database without opening any connection: single-user mode.
fn create_database(runner: &Runner, tmp: &Path) -> Result<(), EmbeddedError> {
    let mut single = runner.command("postgres");
    single
        .args(["--single", "-D"])
        .arg(tmp)
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
    Ok(())
}

/// Renames the complete cluster `tmp` to `pgdata` and makes the rename durable.
fn move_into_place(data_dir: &Path, tmp: &Path, pgdata: &Path) -> Result<(), EmbeddedError> {
    fs::rename(tmp, pgdata).map_err(|error| EmbeddedError::Io {
        action: "rename the new cluster to",
        path: pgdata.to_path_buf(),
        error,
    })?;
    if let Ok(dir) = fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
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
