//! `keyledger-replay`: the auditor's command-line view of the event log.
//!
//! Exit status: 0 success (and, for `rebuild`, equal read models); 1 the rebuilt
//! read models differ from the live ones; 2 an error (unknown user, database
//! unreachable, ...).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyledger_replay_tools::{
    connect, export, history, rebuild, rebuild_switch, ExportFormat, ExportOptions, ExportSource,
    OutputFormat, RebuildOptions, ReplayError, SeedOptions, SwitchOptions, UserRef,
    DEFAULT_DATABASE_URL,
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
    /// compare it with the live tables (default), or swap it in (--switch).
    Rebuild {
        /// Keep (commit) the rebuilt schema and print its name.
        #[arg(long, conflicts_with = "switch")]
        keep: bool,
        /// Events read per query (default 1000 when comparing, 5000 with --switch).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        batch_size: Option<i64>,
        /// Rebuild beside the live tables while the server serves, then take the
        /// projector's lock and swap the rebuilt tables in atomically. Progress on
        /// stderr.
        #[arg(long)]
        switch: bool,
        /// With --switch: keep the old tables in a backup schema.
        #[arg(long, requires = "switch")]
        keep_old: bool,
        /// With --switch: seconds to wait for the live projector's lock.
        #[arg(long, default_value_t = 60, requires = "switch")]
        lock_timeout: u64,
    },
    /// Stream the audit trail (or, with --events, every event in its public,
    /// secret-free form) as JSON lines or CSV.
    Export {
        /// Only rows at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only rows before this time (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// `jsonl` or `csv`.
        #[arg(long, default_value = "jsonl")]
        format: ExportFormat,
        /// Export the events (feed order, filtered on recorded_at) instead of the
        /// audit trail.
        #[arg(long)]
        events: bool,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Write a big, realistic synthetic event log (for benchmarks). Refuses a
    /// database whose name lacks `bench` unless --force.
    Seed {
        /// Events to write.
        #[arg(long)]
        events: u64,
        /// Accounts to register (default: one per 20 events).
        #[arg(long)]
        users: Option<u64>,
        /// PRNG seed; the same seed writes the same log.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seed a database whose name does not contain `bench`.
        #[arg(long)]
        force: bool,
    },
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
        Command::Rebuild {
            switch: true,
            batch_size,
            keep_old,
            lock_timeout,
            ..
        } => {
            let pool = connect(&cli.database_url).await?;
            let defaults = SwitchOptions::default();
            let options = SwitchOptions {
                batch_size: batch_size.unwrap_or(defaults.batch_size),
                keep_old,
                lock_timeout: std::time::Duration::from_secs(lock_timeout),
                ..defaults
            };
            rebuild_switch(&pool, &options, &mut std::io::stderr(), &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild {
            keep, batch_size, ..
        } => {
            let pool = connect(&cli.database_url).await?;
            let options = RebuildOptions {
                keep,
                batch_size: batch_size.unwrap_or(RebuildOptions::default().batch_size),
            };
            let report = rebuild(&pool, &options, &mut out).await?;
            out.flush()?;
            Ok(if report.is_equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Export {
            from,
            to,
            format,
            events,
            output,
        } => {
            let pool = connect(&cli.database_url).await?;
            let options = ExportOptions {
                source: if events {
                    ExportSource::Events
                } else {
                    ExportSource::AuditTrail
                },
                format,
                from,
                to,
            };
            let report = match output {
                Some(path) => export(&pool, &options, &mut std::fs::File::create(path)?).await?,
                None => export(&pool, &options, &mut out).await?,
            };
            eprintln!(
                "exported {} rows in {:.3}s ({:.0} rows/s)",
                report.rows,
                report.elapsed.as_secs_f64(),
                report.rows_per_second()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed {
            events,
            users,
            seed,
            force,
        } => {
            let pool = connect(&cli.database_url).await?;
            let options = SeedOptions {
                events,
                users,
                seed,
                force,
                ..SeedOptions::default()
            };
            let report =
                keyledger_replay_tools::seed(&pool, &options, &mut std::io::stderr()).await?;
            writeln!(
                out,
                "seeded {} events ({} accounts, {} sessions, {} organizations) in {:.1}s ({:.0} events/s); vacuumed in {:.1}s",
                report.events,
                report.users,
                report.sessions,
                report.organizations,
                report.elapsed.as_secs_f64(),
                report.events_per_second(),
                report.vacuum.as_secs_f64()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
