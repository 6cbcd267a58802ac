//! The `chatpool` command line (SPEC §1).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::startup::{Application, Database};

/// chatpool: a real-time chat backend on one bounded PostgreSQL pool.
#[derive(Debug, Parser)]
#[command(name = "chatpool", version, about)]
pub struct Cli {
    /// Address to listen on (overrides CHATPOOL_LISTEN); port 0 picks a free port.
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
}

/// Parses arguments and configuration, runs the command, and returns the exit
/// code. Configuration errors print one line and exit with status 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env(cli.listen.as_deref()) {
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
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve), settings)) {
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
    }
}
