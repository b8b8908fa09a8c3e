//! `keyledger`: the authentication server and its key management.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::Utc;
use clap::{Parser, Subcommand};
use keyledger_api::keyset;
use keyledger_api::settings::{LogSettings, GROUPS};
use keyledger_api::{Application, Settings};
use tracing_subscriber::EnvFilter;

fn settings_help() -> String {
    let mut out = String::from("Settings (environment variables, or keys of the --config file):\n");
    for (group, variables) in GROUPS {
        out.push_str(&format!("  {group}:\n"));
        for v in *variables {
            let default = if v.default.is_empty() {
                "unset"
            } else {
                v.default
            };
            out.push_str(&format!(
                "    {:<34} {} [default: {}]\n",
                v.name, v.meaning, default
            ));
        }
    }
    out
}

#[derive(Parser)]
#[command(name = "keyledger", version, about = "Event-sourced authentication server", after_help = settings_help())]
struct Cli {
    /// A TOML file with settings (same names as the environment variables, which win).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage the token signing keys in KEYLEDGER_SIGNING_KEY_FILE (PASETO and EdDSA
    /// JWTs) and the ES256 and RS256 JWT keys beside it.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Print the audit public key (PASERK k4.public) that `keyledger-replay verify`
    /// needs, creating the audit key file when it is missing.
    AuditKey,
    /// Manage platform administrators.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Move accounts in from another system.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Operator levers over every user's sessions.
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// End every session of every user started before an instant (default: now),
    /// for a breach or leaked tokens: their access tokens stop validating and their
    /// refresh tokens stop working on every node. A cut-off at or before the one in
    /// force changes nothing. Prints the cut-off in force.
    RevokeBefore {
        /// RFC 3339, at most a minute in the future.
        #[arg(long)]
        before: Option<String>,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Import accounts from JSON lines (`email`, optional `display_name` and
    /// `email_verified`, `password_hash` in bcrypt, PBKDF2-SHA256, scrypt or Argon2
    /// form; see docs/operations.md, "Runbook: moving existing users in"). Each
    /// line is imported wholly or not at all; running it again skips the
    /// addresses already present, so an interrupted import resumes.
    /// Each account's first login re-hashes its password with Argon2id.
    Import {
        /// The file to read, or `-` for standard input.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Make an account a platform administrator, registering it first if it does not
    /// exist (its password is then read from the first line of standard input).
    /// Running it again changes nothing.
    Create {
        #[arg(long)]
        email: String,
        /// Read the new account's password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Lift the lockout of an account (named by its email or id) before it runs out,
    /// for an owner locked out by someone else's guesses. Running it on an account
    /// that is not locked changes nothing.
    Unlock {
        /// The account's email or id.
        account: String,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create the signing key file and the ES256 and RS256 key files beside it,
    /// whichever are missing (refuses to overwrite any).
    Generate,
    /// Show the signing keys' ids and the retired keys still verifying.
    List,
    /// Replace the signing key and the ES256 and RS256 keys; the old ones keep
    /// verifying until their tokens expire (one access-token lifetime plus a
    /// minute). Restart the servers afterwards.
    Rotate {
        /// The old key leaked: it verifies nothing from the next restart on (tokens
        /// it signed, forged or not, are refused; refresh tokens keep working).
        #[arg(long)]
        revoke_old: bool,
    },
}

fn init_logging() {
    let filter = EnvFilter::try_from_env(LogSettings::FILTER.name)
        .unwrap_or_else(|_| EnvFilter::new(LogSettings::FILTER.default));
    let json = std::env::var(LogSettings::FORMAT.name).is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        // Span fields (request_id, method, path) go on every line.
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

fn keys(action: KeysAction, settings: &Settings) -> Result<(), keyset::KeysetError> {
    let file = &settings.tokens.signing_key_file;
    match action {
        KeysAction::Generate => {
            let generated = keyset::generate_all(file)?;
            if let Some(public) = generated.public {
                println!("created {}\npublic key: {public}", file.display());
            }
            for (alg, kid) in generated.jws {
                let path = keyset::jws_key_file(file, alg);
                println!("created {} ({alg}, kid {kid})", path.display());
            }
        }
        KeysAction::List => {
            let current = keyset::load(file, false, Utc::now())?;
            println!("signing   {}", keyset::public_of(&current.signing)?);
            for retired in keyset::retired(file)? {
                let state = if retired.revoked {
                    "revoked  "
                } else if retired.verify_until > Utc::now() {
                    "verifying"
                } else {
                    "expired  "
                };
                println!(
                    "{state} {} (retired {}, verifies until {})",
                    retired.public, retired.retired_at, retired.verify_until
                );
            }
            let jws_kid = |alg, public: &str| {
                keyledger_commands::JwtKeys::kid_of(alg, public)
                    .map_err(|e| keyset::KeysetError::Key(e.to_string()))
            };
            for alg in keyset::JWS_FILE_ALGS {
                let jws_file = keyset::jws_key_file(file, alg);
                match std::fs::read_to_string(&jws_file) {
                    Ok(private) => {
                        let public = keyledger_commands::JwtKeys::public_pem_of(alg, &private)
                            .map_err(|e| keyset::KeysetError::Key(e.to_string()))?;
                        println!("signing   {alg} kid {}", jws_kid(alg, &public)?);
                    }
                    Err(_) => println!(
                        "missing   {alg} ({} is created at start)",
                        jws_file.display()
                    ),
                }
                for retired in keyset::retired(&jws_file)? {
                    let state = if retired.revoked {
                        "revoked  "
                    } else if retired.verify_until > Utc::now() {
                        "verifying"
                    } else {
                        "expired  "
                    };
                    println!(
                        "{state} {alg} kid {} (retired {}, verifies until {})",
                        jws_kid(alg, &retired.public)?,
                        retired.retired_at,
                        retired.verify_until
                    );
                }
            }
        }
        KeysAction::Rotate { revoke_old } => {
            let old_key = if revoke_old {
                keyset::OldKey::Revoke
            } else {
                keyset::OldKey::Retire
            };
            let rotated = keyset::rotate(file, settings.tokens.access_ttl, Utc::now(), old_key)?;
            println!("new signing key: {}", rotated.public);
            for (alg, kid) in rotated.jws {
                println!("new {alg} key: kid {kid}");
            }
            println!("restart the servers to use them");
            if revoke_old {
                println!(
                    "the old key is revoked: servers still running accept tokens it signed \
                     until they restart, so restart them now"
                );
            }
        }
    }
    Ok(())
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let settings = match &cli.config {
        Some(path) => Settings::from_env_and_file(path),
        None => Settings::from_env(),
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keyledger: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keys { action } => match keys(action, &settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("keyledger: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Admin {
            action:
                AdminAction::Create {
                    email,
                    password_stdin,
                },
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                if std::io::stdin().read_line(&mut line).is_err() {
                    eprintln!("keyledger: cannot read the password from standard input");
                    return ExitCode::from(2);
                }
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            match keyledger_api::startup::create_platform_admin(settings, &email, password).await {
                Ok(outcome) => {
                    println!("{outcome}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keyledger: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Users {
            action: UsersAction::Import { file },
        } => import_users(settings, &file).await,
        Command::Admin {
            action: AdminAction::Unlock { account },
        } => match keyledger_api::startup::unlock_account(settings, &account).await {
            Ok(outcome) => {
                println!("{outcome}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyledger: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Sessions {
            action: SessionsAction::RevokeBefore { before, reason },
        } => {
            let before = match before
                .as_deref()
                .map(|raw| chrono::DateTime::parse_from_rfc3339(raw.trim()))
                .transpose()
            {
                Ok(before) => before.map(|t| t.with_timezone(&Utc)),
                Err(_) => {
                    eprintln!("keyledger: --before is RFC 3339, e.g. 2026-01-31T12:00:00Z");
                    return ExitCode::from(2);
                }
            };
            match keyledger_api::startup::revoke_sessions_before(settings, before, reason).await {
                Ok(outcome) => {
                    println!("{outcome}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("keyledger: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::AuditKey => match keyledger_api::startup::load_audit_key(&settings) {
            Ok(key) => {
                println!("{}", key.public_key().paserk());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyledger: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => serve(settings).await,
    }
}

/// Runs `users import`: a progress line on standard error while it works (redrawn
/// in place on a terminal, every 1000 lines otherwise), the summary on standard
/// output. Fails (exit 1) when any line failed, so scripts notice.
async fn import_users(settings: Settings, file: &std::path::Path) -> ExitCode {
    use std::io::{BufRead, BufReader, IsTerminal, Write};
    let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(e) => {
                eprintln!("keyledger: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = |s: &keyledger_api::user_import::ImportSummary| {
        let lines = s.lines();
        if terminal || lines.is_multiple_of(1000) {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "{}importing: {lines} lines, {} imported, {} skipped, {} failed{}",
                if terminal { "\r" } else { "" },
                s.imported,
                s.already_present,
                s.failed.len(),
                if terminal { "" } else { "\n" },
            );
            let _ = err.flush();
        }
    };
    match keyledger_api::startup::import_users(settings, input, progress).await {
        Ok(summary) => {
            if terminal {
                eprintln!();
            }
            print!("{summary}");
            if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            if terminal {
                eprintln!();
            }
            eprintln!("keyledger: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> ExitCode {
    let report = keyledger_api::startup::startup_report(&settings);
    let ip = settings.server.bind.ip();
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("keyledger: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "keyledger: listening on {}",
        std::net::SocketAddr::new(ip, app.port())
    );
    for line in report {
        eprintln!("keyledger: {line}");
    }
    match app
        .run_until_stopped_after_start(release_start_up_memory)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyledger: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Hands back to the operating system the heap pages that start-up work left free.
/// Building the API document and its HTML page, and each worker's route table,
/// allocates some 25 MB that is freed before the server answers its first
/// request; glibc keeps such pages (they sit below memory still in use, so its
/// own top-of-heap trimming does not reach them), and an idle server held them
/// for good. `malloc_trim(0)` returns every whole free page of every arena once;
/// nothing on a request's path calls it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_start_up_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's malloc_trim takes no pointer, only the padding to keep at
    // the top of the heap, and is safe to call from any thread at any time (it
    // locks each arena while it trims it).
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_start_up_memory() {}
