//! Starting and stopping the server with `pg_ctl`, and the settings it is
//! started with.
//!
//! The server runs as a daemon that listens on a Unix socket inside its own
//! data directory only. Those settings are given on the command line at every
//! start rather than stored in the cluster, so that they follow the data
//! directory when it is moved; `pg_ctl -o` pastes them into a `/bin/sh`
//! command line, hence the quoting here.

use std::path::Path;
use std::time::Duration;

use super::log_tail::with_log_tail;
use super::process::{check_success, describe_output, run};
use super::runner::{Runner, ServerStatus};
use super::{EmbeddedError, PG_CTL_TIMEOUT_SECS, PORT};

/// `pg_ctl start`, waiting until the server accepts connections. The server
/// keeps running as a daemon (pg_ctl detaches it) after this returns.
pub(super) fn start_server(
    runner: &Runner,
    data_dir: &Path,
    pgdata: &Path,
    opts: &super::EmbeddedOptions,
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
        .arg(server_options(pgdata, opts.max_connections, &opts.settings))
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

/// `pg_ctl stop -m fast`, waiting until the server has exited. A server that
/// is gone already counts as stopped.
pub(super) fn stop_server(
    runner: &Runner,
    data_dir: &Path,
    pgdata: &Path,
) -> Result<(), EmbeddedError> {
    let mut cmd = runner.command("pg_ctl");
    cmd.arg("-D")
        .arg(pgdata)
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
        if runner.status(pgdata) == ServerStatus::Running {
            return Err(EmbeddedError::Command {
                step: "pg_ctl stop".into(),
                detail: with_log_tail(detail, data_dir),
            });
        }
    }
    Ok(())
}

/// The server's command-line settings, as one string for `pg_ctl -o`, which
/// pastes it into a `/bin/sh` command line: every word is shell-quoted.
///
/// The socket directory is given at every start (not stored in the cluster's
/// configuration) so that it follows the data directory when that is moved.
fn server_options(pgdata: &Path, max_connections: u32, extra: &[(String, String)]) -> String {
    let mut words = vec![
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
    for (name, value) in extra {
        words.push("-c".to_string());
        words.push(format!("{name}={value}"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_quoted_for_the_shell_and_for_postgres() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(pg_list_item("/a b,c"), "\"/a b,c\"");

        let opts = server_options(Path::new("/data/it's here/postgres"), 300, &[]);
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
}
