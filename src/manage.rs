//! Operator commands of the CLI: `user add`, `db connections`, `db reap`.
//!
//! Each opens the database the way `serve` does (same pool, same limits,
//! `application_name=chatpool`), does one transaction, and closes it again.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use futures_util::FutureExt;

use crate::config::Settings;
use crate::db::DbError;
use crate::domain::{DisplayName, Password, Role, Username};
use crate::error::ApiError;
use crate::startup::Database;
use crate::store;
use crate::store::activity::{Connection, Reaped};
use crate::store::users::NewUser;

/// Longest idle time `db reap` accepts (keeps the interval arithmetic sane).
const MAX_IDLE_FOR: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The password given on stdin: its first line, without the line ending.
///
/// # Errors
/// When stdin is empty or cannot be read.
pub fn password_from(mut input: impl std::io::BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = input
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    if n == 0 {
        anyhow::bail!(
            "no password on stdin (pipe it in: echo \"$PASSWORD\" | chatpool user add ...)"
        );
    }
    let line = line.strip_suffix('\n').unwrap_or(&line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(line.to_owned())
}

/// Runs `work` on a freshly opened database and closes it whatever happens.
async fn with_database<T>(
    settings: &Settings,
    work: impl AsyncFnOnce(&Database) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let database = Database::open(settings).await?;
    let result = work(&database).await;
    database.close().await;
    result
}

/// `chatpool user add USERNAME --role R --password-stdin`: creates a user
/// (applying pending migrations first, so it works on a fresh database).
///
/// # Errors
/// An invalid username, password or display name, a taken username, or a
/// database failure, each as one clear message.
pub async fn user_add(
    settings: &Settings,
    username: &str,
    role: Role,
    display_name: Option<&str>,
    password: &str,
) -> anyhow::Result<String> {
    let username = Username::parse(username)?;
    let password = Password::parse(password)?;
    let display_name = DisplayName::parse(display_name.unwrap_or(username.as_str()))?;
    with_database(settings, async |database| {
        crate::db::migrations::run_pending(&database.db)
            .await
            .context("applying migrations")?;
        // One hash, on the blocking pool, outside any transaction.
        let hash = crate::passwords::Passwords::new(1).hash(password).await?;
        let name = username.as_str().to_owned();
        let user = database
            .db
            .run(move |c| {
                async move {
                    let new = NewUser {
                        username: username.as_str(),
                        display_name: display_name.as_str(),
                        role,
                        password_hash: &hash,
                    };
                    store::users::insert(c, &new).await
                }
                .boxed()
            })
            .await
            .map_err(|e| message(e.into()))?
            .ok_or_else(|| anyhow::anyhow!("username {name:?} is taken"))?
            .view();
        Ok(format!(
            "created user {} {:?} with role {}",
            user.id,
            user.username,
            user.role.as_str()
        ))
    })
    .await
}

/// `chatpool db connections`: this database's connections as a table.
///
/// # Errors
/// When the database cannot be reached.
pub async fn db_connections(settings: &Settings) -> anyhow::Result<String> {
    let rows: Vec<Connection> = with_database(settings, async |database| {
        database
            .db
            .run(|c| store::activity::connections(c).boxed())
            .await
            .context("listing connections")
    })
    .await?;
    let mut out = format!(
        "{:<8} {:<24} {:<30} {}\n",
        "PID", "APPLICATION_NAME", "STATE", "SINCE"
    );
    for c in &rows {
        let _ = writeln!(
            out,
            "{:<8} {:<24} {:<30} {}",
            c.pid,
            if c.application_name.is_empty() {
                "-"
            } else {
                &c.application_name
            },
            c.state.as_deref().unwrap_or("-"),
            crate::domain::format_time(&c.since)
        );
    }
    Ok(out)
}

/// `chatpool db reap --idle-for DURATION`: terminates this database's
/// connections idle for longer than `idle_for` (never the command's own).
///
/// # Errors
/// When the database cannot be reached.
pub async fn db_reap(settings: &Settings, idle_for: Duration) -> anyhow::Result<String> {
    let idle_for = idle_for.min(MAX_IDLE_FOR);
    let reaped: Vec<Reaped> = with_database(settings, async |database| {
        database
            .db
            .run(move |c| store::activity::reap_idle(c, idle_for).boxed())
            .await
            .context("terminating idle connections")
    })
    .await?;
    let mut out = format!("terminated {} connection(s)\n", reaped.len());
    for r in &reaped {
        let _ = writeln!(
            out,
            "{:<8} {:<24} {}",
            r.pid,
            if r.application_name.is_empty() {
                "-"
            } else {
                &r.application_name
            },
            r.state
        );
    }
    Ok(out)
}

/// An [`ApiError`] as the one line an operator should read.
fn message(e: ApiError) -> anyhow::Error {
    match e {
        ApiError::Internal(cause) => cause,
        ApiError::Db(DbError::Other(cause)) => anyhow::Error::new(cause),
        other => anyhow::anyhow!("{}", other.public_message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line_without_its_ending() {
        assert_eq!(
            password_from(&b"secret pass\r\nmore\n"[..]).unwrap(),
            "secret pass"
        );
        assert_eq!(password_from(&b"no newline"[..]).unwrap(), "no newline");
        assert!(password_from(&b""[..]).is_err());
    }
}
