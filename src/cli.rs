//! The `chatpool` command line (SPEC §1).

use std::process::ExitCode;

use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches, Subcommand};

use crate::config::{vars, Settings};
use crate::startup::{Application, Database};

/// chatpool: a real-time chat backend on one bounded PostgreSQL pool.
///
/// Every setting is a flag and an environment variable (the flag wins; a
/// `.env` file in the working directory fills in what neither sets).
#[derive(Debug, clap::Parser)]
#[command(name = "chatpool", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The command line: [`Cli`] plus one global flag per setting
/// ([`vars::VARS`]), each with its variable and default in `--help`.
fn command() -> clap::Command {
    vars::VARS.iter().fold(Cli::command(), |cmd, v| {
        cmd.arg(
            Arg::new(v.env)
                .long(v.flag)
                .env(v.env)
                .value_name("VALUE")
                .global(true)
                .hide_env_values(v.env.ends_with("DATABASE_URL"))
                .help(format!("{} [default: {}]", v.help, v.default)),
        )
    })
}

/// The value of the setting `env` on the command line or in the environment
/// (clap resolves the flag first); global flags reach the innermost
/// subcommand's matches.
fn setting(matches: &ArgMatches, env: &str) -> Option<String> {
    let mut leaf = matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    leaf.get_one::<String>(env).cloned()
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Inspect and clean up this database's connections.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user (e.g. the first admin); the password is read from stdin.
    Add {
        /// Login name: 3-32 characters of a-z, 0-9, _ . -
        username: String,
        /// member, agent or admin.
        #[arg(long, value_parser = parse_role)]
        role: crate::domain::Role,
        /// Shown name (defaults to the username).
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from the first line of stdin (required: passwords
        /// never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// List this database's server connections (pid, application_name, state, since).
    Connections,
    /// Terminate connections of this database idle for longer than DURATION
    /// (e.g. 10m), never this command's own.
    Reap {
        /// How long a connection must have been idle: 500ms, 90s, 10m, 1h, 1d.
        #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
        idle_for: std::time::Duration,
    },
}

/// Raises this process's open-files limit to its hard limit: every socket,
/// pooled connection and file is a descriptor, and the common soft limit of
/// 1024 is far below `CHATPOOL_MAX_SOCKETS`. Warns when even the hard limit
/// is below what the settings allow at once.
fn raise_open_files(settings: &Settings) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let now = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let wanted = (settings.max_sockets + settings.max_http_connections) as u64
        + u64::from(settings.database.connection_limit)
        + 64;
    if now < wanted {
        tracing::warn!(
            limit = now,
            wanted,
            "the open-files limit is below CHATPOOL_MAX_SOCKETS + CHATPOOL_MAX_HTTP_CONNECTIONS + \
             connection_limit; connections past it fail with EMFILE"
        );
    } else {
        tracing::debug!(limit = now, "open-files limit");
    }
}

fn parse_role(raw: &str) -> Result<crate::domain::Role, String> {
    crate::domain::Role::parse(raw).map_err(|e| e.to_string())
}

/// Parses arguments and configuration, runs the command, and returns the exit
/// code. Configuration errors print one line and exit with status 2.
pub fn main() -> ExitCode {
    Settings::load_dotenv();
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let settings = match Settings::from_lookup(|name| setting(&matches, name)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chatpool: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatpool: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli.command.unwrap_or(Command::Serve), settings));
    // Whatever is still running (a task stuck past the shutdown deadline) is
    // abandoned rather than waited for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "chatpool failed");
            eprintln!("chatpool: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            raise_open_files(&settings);
            let stop = crate::shutdown::signals()?;
            let app = Application::build(settings).await?;
            app.run_until_stopped(stop).await
        }
        Command::Migrate => {
            let database = Database::open(&settings).await?;
            let result = crate::db::migrations::run_pending(&database.db).await;
            database.close().await;
            let applied = result?;
            if applied.is_empty() {
                println!("migrations: nothing to apply");
            } else {
                for version in applied {
                    println!("migrations: applied {version}");
                }
            }
            Ok(())
        }
        Command::User(UserCommand::Add {
            username,
            role,
            display_name,
            password_stdin: _,
        }) => {
            let password = tokio::task::spawn_blocking(|| {
                crate::manage::password_from(std::io::stdin().lock())
            })
            .await??;
            let done = crate::manage::user_add(
                &settings,
                &username,
                role,
                display_name.as_deref(),
                &password,
            )
            .await?;
            println!("{done}");
            Ok(())
        }
        Command::Db(DbCommand::Connections) => {
            print!("{}", crate::manage::db_connections(&settings).await?);
            Ok(())
        }
        Command::Db(DbCommand::Reap { idle_for }) => {
            print!("{}", crate::manage::db_reap(&settings, idle_for).await?);
            Ok(())
        }
    }
}
