//! `keyledger-replay`: the auditor's command-line view of the event log.
//!
//! Exit status: 0 success (and, for `rebuild`, equal read models); 1 the rebuilt
//! read models differ from the live ones; 2 an error (unknown user, database
//! unreachable, ...).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyledger_replay_tools::{
    as_of, connect, history, parse_time, rebuild, timeline, OutputFormat, RebuildOptions,
    ReplayError, UserRef, DEFAULT_DATABASE_URL,
};

#[derive(Debug, Parser)]
#[command(
    name = "keyledger-replay",
    version,
    about = "Audit and replay the Keyledger event log"
)]
struct Cli {
    /// PostgreSQL holding the event store and the read models.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true,
          hide_env_values = true)]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print one account's events (its user and all its sessions) in feed order.
    History {
        /// The account: its user id (UUID) or its email address.
        #[arg(long)]
        user: String,
        /// Print JSON lines instead of readable lines.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild every read model from the event log into a fresh schema and
    /// compare it with the live tables.
    Rebuild {
        /// Keep (commit) the rebuilt schema and print its name.
        #[arg(long)]
        keep: bool,
        /// Events read per query.
        #[arg(long, default_value_t = RebuildOptions::default().batch_size,
              value_parser = clap::value_parser!(i64).range(1..))]
        batch_size: i64,
    },
    /// Print one account as it was at an instant, from events alone: status,
    /// lockout, live sessions, roles and effective permissions.
    AsOf {
        /// The account: its user id (UUID) or its email address.
        #[arg(long)]
        user: String,
        /// The instant, RFC 3339 (e.g. 2026-01-31T12:00:00Z).
        #[arg(long, value_parser = parse_time)]
        at: chrono::DateTime<chrono::Utc>,
        /// Print one JSON object instead of readable lines.
        #[arg(long)]
        json: bool,
    },
    /// Print every change to one account with its actor, IP, user agent and time.
    Timeline {
        /// The account: its user id (UUID) or its email address.
        #[arg(long)]
        user: String,
        /// Only changes at or after this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only changes at or before this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Print JSON lines instead of readable lines.
        #[arg(long)]
        json: bool,
    },
}

fn format(json: bool) -> OutputFormat {
    if json {
        OutputFormat::JsonLines
    } else {
        OutputFormat::Text
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyledger-replay: error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, ReplayError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::History { user, json } => {
            let user: UserRef = user.parse()?;
            let pool = connect(&cli.database_url).await?;
            let format = if json {
                OutputFormat::JsonLines
            } else {
                OutputFormat::Text
            };
            history(&pool, &user, format, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild { keep, batch_size } => {
            let pool = connect(&cli.database_url).await?;
            let options = RebuildOptions { keep, batch_size };
            let report = rebuild(&pool, &options, &mut out).await?;
            out.flush()?;
            Ok(if report.is_equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::AsOf { user, at, json } => {
            let user: UserRef = user.parse()?;
            let pool = connect(&cli.database_url).await?;
            as_of(&pool, &user, at, format(json), &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Timeline {
            user,
            from,
            to,
            json,
        } => {
            let user: UserRef = user.parse()?;
            let pool = connect(&cli.database_url).await?;
            timeline(&pool, &user, from, to, format(json), &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
