//! `keyledger-replay`: the auditor's command-line view of the event log.
//!
//! Exit status: 0 success (and, for `rebuild`, equal read models); 1 the rebuilt
//! read models differ from the live ones, or `verify` found the log or a
//! checkpoint tampered with; 2 an error (unknown user, database unreachable, ...).
//!
//! Which store: the server's rule. `--database-url` / `DATABASE_URL` (not empty)
//! means PostgreSQL; otherwise the embedded store in `--data-dir` /
//! `KEYLEDGER_DATA_DIR` (default `keyledger-data`), which the read commands open
//! read-only, beside a running server.

use std::io::Write;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use keyledger_domain::EmailIndexKey;
use keyledger_replay_tools::{
    as_of, connect_with, copy_to_postgres, data_key_wrapping, email_index_key, export, history,
    lookup_email_index_key, open, parse_time, postgres_url, rebuild, rebuild_switch, reseal,
    timeline, verify, Access, CopyOptions, Database, ExportFormat, ExportOptions, ExportSource,
    OutputFormat, RebuildOptions, RelayStart, ReplayError, ResealOptions, ResealSigner,
    SeedOptions, SwitchOptions, UserRef, VerifyOptions, DATA_KEY_WRAPPING_KEY_FILE,
    DEFAULT_DATA_DIR,
};

/// The tools allocate and free millions of small JSON values and strings between
/// a few large buffers per batch; glibc's allocator spent a third of a rebuild's
/// CPU consolidating and searching its free lists, mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "keyledger-replay",
    version,
    about = "Audit and replay the Keyledger event log"
)]
struct Cli {
    /// PostgreSQL holding the event store and the read models. Without it, the
    /// embedded store of --data-dir is used.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The embedded (SQLite) store's data directory, used when no database URL
    /// is set; the read commands open its keyledger.db read-only.
    #[arg(long, env = "KEYLEDGER_DATA_DIR", global = true, default_value = DEFAULT_DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// The server's email index key (32 bytes, unpadded base64url), to find an
    /// account by email: claims hold only HMAC digests of addresses.
    #[arg(
        long,
        env = "KEYLEDGER_EMAIL_INDEX_KEY",
        global = true,
        hide_env_values = true,
        hide = true
    )]
    email_index_key: Option<String>,
    /// A file holding the email index key (as KEYLEDGER_EMAIL_INDEX_KEY_FILE for
    /// the server). Needed by --user <email>: <data-dir>/email-index.key (the
    /// server's default place) when not given; `seed` writes its key here.
    #[arg(long, env = "KEYLEDGER_EMAIL_INDEX_KEY_FILE", global = true)]
    email_index_key_file: Option<std::path::PathBuf>,
    /// The server's data key wrapping keys (as KEYLEDGER_DATA_KEY_WRAPPING_KEY:
    /// 32 bytes, unpadded base64url, several separated by commas), to open
    /// personal data: the data keys are stored wrapped with them.
    #[arg(
        long,
        env = "KEYLEDGER_DATA_KEY_WRAPPING_KEY",
        global = true,
        hide_env_values = true,
        hide = true
    )]
    data_key_wrapping_key: Option<String>,
    /// A file holding the data key wrapping keys (as
    /// KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE for the server; on the embedded store
    /// <data-dir>/data-key-wrapping.key when it exists). Without them only data
    /// keys stored before wrapping open.
    #[arg(long, env = "KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE", global = true)]
    data_key_wrapping_key_file: Option<std::path::PathBuf>,
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
    /// Rebuild every read model from the event log into a fresh schema (on the
    /// embedded store: a scratch file beside keyledger.db) and compare it with the
    /// live tables (default), or swap it in (--switch).
    Rebuild {
        /// Keep (commit) the rebuilt schema (or scratch file) and print its name.
        #[arg(long, conflicts_with = "switch")]
        keep: bool,
        /// Events read per query (default 1000 when comparing, 2500 with --switch).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        batch_size: Option<i64>,
        /// Rebuild beside the live tables while the server serves, then take the
        /// projector's lock (embedded store: ask it to hand over) and swap the
        /// rebuilt tables in atomically. Progress on stderr.
        #[arg(long)]
        switch: bool,
        /// With --switch: keep the old tables in a backup schema (embedded store:
        /// as old<ts>_* tables).
        #[arg(long, requires = "switch")]
        keep_old: bool,
        /// With --switch: seconds to wait for the live projector's lock (embedded
        /// store: for the write lock, to ask for the handover).
        #[arg(long, default_value_t = 60, requires = "switch")]
        lock_timeout: u64,
        /// With --switch: users and sessions rows kept in memory across batches,
        /// per table (a few hundred bytes each).
        #[arg(long, default_value_t = SwitchOptions::default().cached_rows, requires = "switch")]
        cached_rows: usize,
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
    /// database (or data directory) whose name lacks `bench` unless --force. On
    /// the embedded store the server must be stopped (the data directory's lock is
    /// taken); a missing data directory is created.
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
        /// Seed a database (or data directory) whose name does not contain `bench`.
        #[arg(long)]
        force: bool,
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
    /// Check that the event log is the one that was written: every event's hash
    /// chain and every signed checkpoint. Exit 1 names the first bad event or
    /// checkpoint.
    Verify {
        /// Public audit key (PASERK k4.public.…) the checkpoints are signed with,
        /// taken from outside the database; repeat it (or separate with commas)
        /// for rotated keys.
        #[arg(
            long = "audit-public-key",
            env = "KEYLEDGER_AUDIT_PUBLIC_KEY",
            value_delimiter = ',',
            hide_env_values = true
        )]
        audit_public_keys: Vec<String>,
        /// Take the public key of this audit key file (k4.secret) instead.
        #[arg(long)]
        audit_key_file: Option<std::path::PathBuf>,
        /// The log hash of a checkpoint an earlier run reported (64 hex digits); it
        /// must still be there. Repeatable. Catches deleted newest checkpoints.
        #[arg(long = "expect-log-hash", value_parser = parse_log_hash)]
        expected_log_hashes: Vec<[u8; 32]>,
        /// Aggregates whose chain tip is kept in memory (about 64 bytes each).
        #[arg(long, default_value_t = VerifyOptions::default().cached_aggregates as u64,
              value_parser = clap::value_parser!(u64).range(2..))]
        cached_aggregates: u64,
        /// Verify the log kept in this schema instead of the live one: the
        /// `keyledger_before_reseal_…` schema a reseal moved the old log to. Its
        /// signed link in `reseal_log` must match its last log hash.
        #[arg(long)]
        schema: Option<String>,
    },
    /// Rewrite, once, a log written before personal data was sealed: every clear
    /// email, display name, address and user agent sealed with its owner's data
    /// key, chains recomputed, the old log kept in a schema of its own and linked
    /// to the new one by a signed record. Stop every server first.
    Reseal {
        /// The audit key (k4.secret PASERK file) that signs the checkpoints of both
        /// logs and the link between them.
        #[arg(long)]
        audit_key_file: std::path::PathBuf,
        /// More public audit keys the old log's checkpoints may be signed with
        /// (rotated keys); the log is verified before it is resealed.
        #[arg(
            long = "audit-public-key",
            env = "KEYLEDGER_AUDIT_PUBLIC_KEY",
            value_delimiter = ',',
            hide_env_values = true
        )]
        audit_public_keys: Vec<String>,
        /// Events copied per statement.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..))]
        batch_size: i64,
        /// Only count what would be sealed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy an embedded store (--data-dir) into a new, empty PostgreSQL database,
    /// hashes checked event by event. Stop the embedded server first.
    CopyToPostgres {
        /// The PostgreSQL database to fill (created when missing; must be empty).
        /// DATABASE_URL is not read here: the target is always named.
        #[arg(long)]
        to: String,
        /// Rows copied per statement.
        #[arg(long, default_value_t = CopyOptions::default().batch_size as u64,
              value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch_size: u64,
        /// Where the NATS relay starts on PostgreSQL: `start` (publish the history)
        /// or `head` (consumers already had it from the embedded server).
        #[arg(long, default_value = "start")]
        relay_from: RelayStart,
        /// The relay's JetStream stream, as the server's KEYLEDGER_NATS_STREAM.
        #[arg(long, env = "KEYLEDGER_NATS_STREAM", default_value = "AUTH_EVENTS")]
        relay_stream: String,
    },
}

impl Command {
    /// The subcommand's name, for messages.
    fn name(&self) -> &'static str {
        match self {
            Self::History { .. } => "history",
            Self::Rebuild { .. } => "rebuild",
            Self::Export { .. } => "export",
            Self::Seed { .. } => "seed",
            Self::AsOf { .. } => "as-of",
            Self::Timeline { .. } => "timeline",
            Self::Verify { .. } => "verify",
            Self::Reseal { .. } => "reseal",
            Self::CopyToPostgres { .. } => "copy-to-postgres",
        }
    }
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
    let matches = Cli::command().get_matches();
    let data_dir_given = matches.value_source("data_dir") == Some(ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, data_dir_given).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyledger-replay: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Where the email index key comes from (read only when an address needs it).
struct IndexKeySource {
    value: Option<String>,
    file: Option<std::path::PathBuf>,
    /// Where the server keeps its key by default (see [`lookup_email_index_key`]).
    data_dir: std::path::PathBuf,
}

impl IndexKeySource {
    fn load(&self) -> Result<Option<EmailIndexKey>, ReplayError> {
        email_index_key(self.value.as_deref(), self.file.as_deref())
    }

    /// Parses `--user`; an address is digested with the email index key when one
    /// is configured, or else with the one the server keeps in the data directory.
    fn user_ref(&self, raw: &str) -> Result<UserRef, ReplayError> {
        let user: UserRef = raw.parse()?;
        Ok(match user {
            UserRef::Email(_) => {
                let key = lookup_email_index_key(
                    self.value.as_deref(),
                    self.file.as_deref(),
                    &self.data_dir,
                )?;
                user.keyed(key.as_ref())
            }
            other => other,
        })
    }
}

async fn run(cli: Cli, data_dir_given: bool) -> Result<ExitCode, ReplayError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let index_key = IndexKeySource {
        value: cli.email_index_key.clone(),
        file: cli.email_index_key_file.clone(),
        data_dir: cli.data_dir.clone(),
    };
    let database_url = postgres_url(cli.database_url.as_deref());
    let open = |access| open(database_url, &cli.data_dir, access);
    let wrapping_file = cli.data_key_wrapping_key_file.clone().or_else(|| {
        let beside = cli.data_dir.join(DATA_KEY_WRAPPING_KEY_FILE);
        (database_url.is_none() && beside.is_file()).then_some(beside)
    });
    let wrapping = data_key_wrapping(
        cli.data_key_wrapping_key.as_deref(),
        wrapping_file.as_deref(),
    )?;
    // An explicit --data-dir that a database URL (perhaps from the environment)
    // would silently override is a mistake worth stopping at.
    if data_dir_given
        && database_url.is_some()
        && !matches!(cli.command, Command::CopyToPostgres { .. })
    {
        return Err(ReplayError::Refused(format!(
            "both --data-dir and a database URL (--database-url or DATABASE_URL) are set; \
             `{}` reads one store: unset one of them",
            cli.command.name()
        )));
    }
    match cli.command {
        Command::History { user, json } => {
            let user = index_key.user_ref(&user)?;
            let db = open(Access::Read).await?;
            let format = if json {
                OutputFormat::JsonLines
            } else {
                OutputFormat::Text
            };
            history(&db, wrapping, &user, format, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild {
            switch: true,
            batch_size,
            keep_old,
            lock_timeout,
            cached_rows,
            ..
        } => {
            let db = open(Access::WriteBesideServer).await?;
            let defaults = SwitchOptions::default();
            let options = SwitchOptions {
                batch_size: batch_size.unwrap_or(defaults.batch_size),
                keep_old,
                lock_timeout: std::time::Duration::from_secs(lock_timeout),
                cached_rows,
                data_key_wrapping: wrapping,
                ..defaults
            };
            rebuild_switch(&db, &options, &mut std::io::stderr(), &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild {
            keep, batch_size, ..
        } => {
            let db = open(Access::WriteBesideServer).await?;
            let options = RebuildOptions {
                keep,
                batch_size: batch_size.unwrap_or(RebuildOptions::default().batch_size),
                data_key_wrapping: wrapping,
            };
            let report = rebuild(&db, &options, &mut out).await?;
            out.flush()?;
            Ok(if report.is_equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::AsOf { user, at, json } => {
            let user = index_key.user_ref(&user)?;
            let db = open(Access::Read).await?;
            as_of(&db, wrapping, &user, at, format(json), &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Timeline {
            user,
            from,
            to,
            json,
        } => {
            let user = index_key.user_ref(&user)?;
            let db = open(Access::Read).await?;
            timeline(&db, wrapping, &user, from, to, format(json), &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            audit_public_keys,
            audit_key_file,
            expected_log_hashes,
            cached_aggregates,
            schema,
        } => {
            let options = VerifyOptions {
                public_keys: audit_keys(&audit_public_keys, audit_key_file.as_deref())?,
                cached_aggregates: usize::try_from(cached_aggregates).unwrap_or(usize::MAX),
                expected_log_hashes,
                schema,
            };
            let db = open(Access::Read).await?;
            let report = verify(&db, &options, &mut out).await?;
            Ok(if report.is_ok() {
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
            let db = open(Access::Read).await?;
            let options = ExportOptions {
                source: if events {
                    ExportSource::Events
                } else {
                    ExportSource::AuditTrail
                },
                format,
                from,
                to,
                data_key_wrapping: wrapping,
            };
            let report = match output {
                Some(path) => export(&db, &options, &mut std::fs::File::create(path)?).await?,
                None => export(&db, &options, &mut out).await?,
            };
            eprintln!(
                "exported {} rows in {:.3}s ({:.0} rows/s)",
                report.rows,
                report.elapsed.as_secs_f64(),
                report.rows_per_second()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Reseal {
            audit_key_file,
            audit_public_keys,
            batch_size,
            dry_run,
        } => {
            let Some(url) = database_url else {
                return Err(ReplayError::NothingToReseal);
            };
            let secret = std::fs::read_to_string(&audit_key_file)
                .map_err(|e| ReplayError::AuditKey(format!("{}: {e}", audit_key_file.display())))?;
            let public_keys = if audit_public_keys.iter().all(|k| k.trim().is_empty()) {
                Vec::new()
            } else {
                audit_keys(&audit_public_keys, None)?
            };
            let options = ResealOptions {
                audit_key: ResealSigner::from_paserk(&secret)?,
                public_keys,
                batch_size,
                dry_run,
                data_key_wrapping: wrapping,
            };
            // The reseal's transaction, plus two for verifying the log first.
            let pool = connect_with(url, 4).await?;
            reseal(&pool, &options, &mut std::io::stderr(), &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed {
            events,
            users,
            seed,
            force,
        } => {
            if database_url.is_none() {
                // Judged by its name before its lock is taken: a refusal must
                // not depend on whether a server holds it.
                keyledger_replay_tools::seed::refuse_unless_benchmark(
                    &keyledger_replay_tools::seed::data_dir_name(&cli.data_dir),
                    keyledger_storage::Backend::Sqlite,
                    force,
                )?;
            }
            let db = open(Access::Own).await?;
            let (key, key_note) = seed_index_key(&index_key, &db).await?;
            let options = SeedOptions {
                events,
                users,
                seed,
                force,
                email_index_key: Some(key),
                ..SeedOptions::default()
            };
            let report = keyledger_replay_tools::seed(&db, &options, &mut std::io::stderr()).await;
            db.close().await;
            let report = report?;
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
            writeln!(out, "{key_note}")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CopyToPostgres {
            to,
            batch_size,
            relay_from,
            relay_stream,
        } => {
            let options = CopyOptions {
                data_dir: cli.data_dir,
                target_url: to,
                batch_size: usize::try_from(batch_size).unwrap_or(usize::MAX),
                relay_from,
                relay_stream,
            };
            let report = copy_to_postgres(&options, &mut std::io::stderr()).await?;
            report.write_to(&options.data_dir, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The email index key a seed digests its claims with: the configured one; or,
/// with `--email-index-key-file` naming a file that does not exist yet, a fresh
/// key written there; or else a fresh key written to the temporary directory.
/// Either way the line returned says which, so the seeded accounts can be looked up
/// by email (and a server started on the log) with the same key.
async fn seed_index_key(
    source: &IndexKeySource,
    db: &Database,
) -> Result<(EmailIndexKey, String), ReplayError> {
    let missing_file = source.file.as_ref().filter(|f| !f.exists());
    if missing_file.is_none() {
        if let Some(key) = source.load()? {
            return Ok((key, "email index key: the one configured".to_owned()));
        }
    }
    let path = match missing_file {
        Some(path) => path.clone(),
        None => {
            let name = keyledger_replay_tools::seed::target_name(db).await?;
            let path = std::env::temp_dir().join(format!("keyledger-seed-{name}.email-index-key"));
            // A predictable name in a shared directory: an earlier seed's file
            // goes (a symlink itself, not its target), and the new one is created
            // afresh below, never written through whatever stood there.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ReplayError::EmailIndexKey(format!(
                        "{}: {e}",
                        path.display()
                    )));
                }
                _ => path,
            }
        }
    };
    let key = EmailIndexKey::generate();
    write_secret_file(&path, &key.encode())
        .map_err(|e| ReplayError::EmailIndexKey(format!("{}: {e}", path.display())))?;
    Ok((
        key,
        format!(
            "email index key: a new one, written to {} (pass it as --email-index-key-file)",
            path.display()
        ),
    ))
}

/// Writes a secret into a new file readable by its owner only (on Unix). An
/// existing file (or symlink) is refused: its mode would be kept.
fn write_secret_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{contents}")
}

fn parse_log_hash(hex: &str) -> Result<[u8; 32], String> {
    let digits = hex.trim().as_bytes();
    let mut hash = [0u8; 32];
    if digits.len() != 64 {
        return Err("expected 64 hex digits".into());
    }
    let digit = |d: u8| {
        char::from(d)
            .to_digit(16)
            .ok_or_else(|| "not hex".to_owned())
    };
    for (byte, pair) in hash.iter_mut().zip(digits.chunks(2)) {
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).unwrap_or_default();
    }
    Ok(hash)
}

/// The public audit keys to verify with; at least one is required, since a
/// checkpoint proves nothing against a key read from the database it vouches for.
fn audit_keys(
    public: &[String],
    key_file: Option<&std::path::Path>,
) -> Result<Vec<keyledger_projections::AuditPublicKey>, ReplayError> {
    let bad = |e: keyledger_projections::chain::ChainError| ReplayError::AuditKey(e.to_string());
    let mut keys = public
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| keyledger_projections::AuditPublicKey::from_paserk(k).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = key_file {
        let secret = std::fs::read_to_string(path)
            .map_err(|e| ReplayError::AuditKey(format!("{}: {e}", path.display())))?;
        let key = keyledger_projections::AuditKey::from_paserk(&secret).map_err(bad)?;
        keys.push(key.public_key().clone());
    }
    if keys.is_empty() {
        return Err(ReplayError::AuditKey(
            "no audit public key: pass --audit-public-key (or KEYLEDGER_AUDIT_PUBLIC_KEY) \
             or --audit-key-file"
                .into(),
        ));
    }
    Ok(keys)
}
