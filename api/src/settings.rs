//! Configuration, read once at start-up from the environment into one typed struct.
//! Every setting, its variable and its default is listed in the README.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use keyledger_storage::{Durability, EmbeddedSettings};

/// A secret from configuration: shown nowhere, not even in `Debug`.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {variable} = {value:?} is not valid: {reason}")]
pub struct SettingsError {
    pub variable: &'static str,
    pub value: String,
    pub reason: String,
}

/// Where the event log and the read models live (decision 0011, §2): chosen by
/// whether `DATABASE_URL` is set, so a first start needs no database server.
/// `Debug` never shows the URL: it may carry a password.
#[derive(Clone)]
pub enum StorageSettings {
    /// `DATABASE_URL` set and not empty: PostgreSQL, for several nodes.
    Postgres {
        /// DATABASE_URL
        url: String,
        /// KEYLEDGER_DB_MAX_CONNECTIONS: the pool size.
        max_connections: u32,
    },
    /// No `DATABASE_URL`: one SQLite database in a data directory
    /// (KEYLEDGER_DATA_DIR, KEYLEDGER_SQLITE_SYNCHRONOUS, and
    /// KEYLEDGER_DB_MAX_CONNECTIONS sizing the reader pool), for development and
    /// single-node use.
    Embedded(EmbeddedSettings),
}

impl std::fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres {
                max_connections, ..
            } => f
                .debug_struct("Postgres")
                .field("url", &"<not shown>")
                .field("max_connections", max_connections)
                .finish(),
            Self::Embedded(embedded) => f.debug_tuple("Embedded").field(embedded).finish(),
        }
    }
}

impl StorageSettings {
    /// Which back end, as `/health` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "postgres",
            Self::Embedded(_) => "sqlite",
        }
    }
}

/// The data directory when KEYLEDGER_DATA_DIR is not set.
pub const DEFAULT_DATA_DIR: &str = "keyledger-data";
/// Key files' names inside the data directory, their default place.
pub const SIGNING_KEY_FILE: &str = "signing-key.paserk";
pub const AUDIT_KEY_FILE: &str = "audit-key.paserk";
pub const EMAIL_INDEX_KEY_FILE: &str = "email-index.key";
pub const DATA_KEY_WRAPPING_KEY_FILE: &str = "data-key-wrapping.key";

#[derive(Debug, Clone)]
pub struct Settings {
    /// KEYLEDGER_BIND
    pub bind: SocketAddr,
    /// DATABASE_URL (PostgreSQL), else the embedded store in KEYLEDGER_DATA_DIR.
    pub storage: StorageSettings,
    /// NATS_URL; unset or empty disables the relay (events then fan out in
    /// process only).
    pub nats_url: Option<String>,
    /// KEYLEDGER_NATS_STREAM
    pub nats_stream: String,
    /// KEYLEDGER_NATS_SUBJECT_PREFIX
    pub nats_subject_prefix: String,
    /// KEYLEDGER_ISSUER
    pub issuer: String,
    /// KEYLEDGER_AUDIENCE
    pub audience: String,
    /// KEYLEDGER_ACCESS_TOKEN_TTL_SECS
    pub access_token_ttl: Duration,
    /// KEYLEDGER_SESSION_TTL_SECS
    pub session_ttl: Duration,
    /// KEYLEDGER_SESSION_IDLE_TIMEOUT_SECS: a session not refreshed within it can
    /// no longer be refreshed (0, the default: off).
    pub session_idle_timeout: Option<Duration>,
    /// KEYLEDGER_REFRESH_REUSE_GRACE_SECS: how long a rotated refresh token may be
    /// presented again as a retry of a lost answer (0: never, every replay is reuse).
    pub refresh_reuse_grace: Duration,
    /// KEYLEDGER_MAX_SESSIONS_PER_USER: live sessions per account; a login beyond
    /// it ends the oldest (0, the default: no cap).
    pub max_sessions_per_user: usize,
    /// KEYLEDGER_INVITATION_TTL_SECS: how long an invitation to an organization
    /// can be accepted.
    pub invitation_ttl: Duration,
    /// KEYLEDGER_SIGNING_KEY (PASERK k4.secret); wins over the key file.
    pub signing_key: Option<Secret>,
    /// KEYLEDGER_SIGNING_KEY_FILE; created with a fresh key when missing on the
    /// embedded store only (PostgreSQL mode needs it configured).
    pub signing_key_file: PathBuf,
    /// KEYLEDGER_VERIFICATION_KEYS: retired PASERK k4.public keys, comma-separated; each
    /// verifies for one access-token lifetime (+ the clock skew) after the server starts.
    pub verification_keys: Vec<String>,
    /// KEYLEDGER_ARGON2_MEMORY_KIB
    pub argon2_memory_kib: u32,
    /// KEYLEDGER_ARGON2_ITERATIONS
    pub argon2_iterations: u32,
    /// KEYLEDGER_ARGON2_PARALLELISM
    pub argon2_parallelism: u32,
    /// KEYLEDGER_HASH_CONCURRENCY
    pub hash_concurrency: usize,
    /// KEYLEDGER_HASH_QUEUE
    pub hash_queue: usize,
    /// KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT: hashes one client address (an IPv6
    /// client: its /64) may have queued or running at once; by default half of
    /// KEYLEDGER_HASH_CONCURRENCY, so one client never holds the whole pool.
    pub hash_concurrency_per_client: usize,
    /// KEYLEDGER_LOCKOUT_MAX_FAILURES
    pub lockout_max_failures: u32,
    /// KEYLEDGER_LOCKOUT_SECS
    pub lockout_duration: Duration,
    /// KEYLEDGER_LOCKOUT_DELAY_MS: the delay of the answer to the third
    /// consecutive failure, doubling for each further one before the lockout.
    pub lockout_delay: Duration,
    /// KEYLEDGER_SPRAY_ACCOUNTS: distinct accounts failed with one password from
    /// one client address within the window that throttle the address (0 disables).
    pub spray_accounts: usize,
    /// KEYLEDGER_SPRAY_WINDOW_SECS: the spraying window, and how long a sprayer is
    /// throttled.
    pub spray_window: Duration,
    /// KEYLEDGER_REAUTH_WINDOW_SECS: how recent the caller's login must be to
    /// suspend, erase or demote another platform administrator, or erase oneself
    /// as one.
    pub reauth_window: Duration,
    /// KEYLEDGER_RATE_LIMIT_PER_SECOND: per-address rate of the credential routes
    /// (see `rate_limit::Class`; 0 disables)
    pub rate_limit_per_second: u64,
    /// KEYLEDGER_RATE_LIMIT_BURST: per-address burst of the credential routes
    pub rate_limit_burst: u32,
    /// KEYLEDGER_BREACHED_PASSWORDS_URL: base of a k-anonymity range API of breached
    /// passwords (`{base}/range/{prefix}`); `None` skips the check
    pub breached_passwords_url: Option<String>,
    /// KEYLEDGER_BREACHED_PASSWORDS_TIMEOUT_MS
    pub breached_passwords_timeout: Duration,
    /// KEYLEDGER_BREACHED_PASSWORDS_FAIL: `open` accepts a password the range API
    /// could not judge, `closed` refuses the request with 503
    pub breached_passwords_fail_closed: bool,
    /// KEYLEDGER_RATE_LIMIT_ACCOUNT_PER_MINUTE: failed credential attempts per
    /// account (email, client id, user) per minute, all addresses together (0 disables)
    pub rate_limit_account_per_minute: u32,
    /// KEYLEDGER_RATE_LIMIT_TOKEN_CHECKS_PER_SECOND: per-address rate (and burst)
    /// of validate, authorize, permissions and keys, sized for a gateway (0 disables)
    pub rate_limit_token_checks_per_second: u64,
    /// KEYLEDGER_RATE_LIMIT_MANAGEMENT_PER_SECOND: per-subject (per-address when
    /// anonymous) rate (and burst) of the management routes (0 disables)
    pub rate_limit_management_per_second: u64,
    /// KEYLEDGER_MAX_BODY_BYTES
    pub max_body_bytes: usize,
    /// KEYLEDGER_WORKERS
    pub workers: usize,
    /// KEYLEDGER_TRUSTED_PROXIES: peers (addresses or CIDR ranges) whose
    /// forwarding header is believed.
    pub trusted_proxies: Vec<crate::client_address::IpRange>,
    /// KEYLEDGER_FORWARDED_HEADER: the header those proxies write the client into.
    pub forwarded_header: crate::client_address::ForwardedHeader,
    /// KEYLEDGER_AUDIT_KEY (PASERK k4.secret) signing chain checkpoints; wins over
    /// the key file. Never stored in the database, or checkpoints would prove nothing.
    pub audit_key: Option<Secret>,
    /// KEYLEDGER_AUDIT_KEY_FILE; created with a fresh key when missing.
    pub audit_key_file: PathBuf,
    /// KEYLEDGER_EMAIL_INDEX_KEY (32 bytes, unpadded base64url): keys the digests
    /// that stand for email addresses in `email_claims`; wins over the key file.
    /// Never stored in the database, or the digests could be reversed by guessing.
    pub email_index_key: Option<Secret>,
    /// KEYLEDGER_EMAIL_INDEX_KEY_FILE; created with a fresh key when missing.
    pub email_index_key_file: PathBuf,
    /// KEYLEDGER_DATA_KEY_WRAPPING_KEY: one or more keys (32 bytes, unpadded
    /// base64url, separated by commas or whitespace) wrapping the per-person data
    /// keys at rest; the first wraps, the others (retired) only unwrap. Wins over
    /// the key file. Never stored in the database, or a copy of it would open
    /// every person's data.
    pub data_key_wrapping_key: Option<Secret>,
    /// KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE (one key per line, the first
    /// wrapping); created with a fresh key when missing.
    pub data_key_wrapping_key_file: PathBuf,
    /// KEYLEDGER_CHAIN_CHECKPOINT_SECS; `None` (0) means this node never signs.
    pub chain_checkpoint_interval: Option<Duration>,
    /// KEYLEDGER_HSTS_MAX_AGE_SECS; `None` (0, the default) sends no
    /// `Strict-Transport-Security`: TLS usually ends at a proxy in front, which
    /// should send it, and HSTS on a plain-HTTP deployment locks browsers out.
    pub hsts_max_age: Option<Duration>,
    /// KEYLEDGER_DOCS (`on`/`off`): whether `GET /docs` serves the API reference
    /// page (off: 404, for deployments that publish no documentation).
    pub docs: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let data_dir = PathBuf::from(DEFAULT_DATA_DIR);
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            storage: StorageSettings::Embedded(EmbeddedSettings {
                data_dir: data_dir.clone(),
                durability: Durability::Full,
                readers: DEFAULT_DB_MAX_CONNECTIONS,
            }),
            nats_url: None,
            nats_stream: "AUTH_EVENTS".into(),
            nats_subject_prefix: "auth.events".into(),
            issuer: "keyledger".into(),
            audience: "keyledger".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            session_idle_timeout: None,
            refresh_reuse_grace: Duration::from_secs(10),
            max_sessions_per_user: 0,
            invitation_ttl: Duration::from_secs(7 * 24 * 3600),
            signing_key: None,
            signing_key_file: data_dir.join(SIGNING_KEY_FILE),
            verification_keys: Vec::new(),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: cpus,
            hash_queue: 256,
            hash_concurrency_per_client: keyledger_commands::hasher::default_per_client(cpus),
            lockout_max_failures: 5,
            lockout_duration: Duration::from_secs(30 * 60),
            lockout_delay: Duration::from_millis(1000),
            spray_accounts: 20,
            spray_window: Duration::from_secs(15 * 60),
            reauth_window: Duration::from_secs(5 * 60),
            rate_limit_per_second: 20,
            rate_limit_burst: 50,
            rate_limit_account_per_minute: 10,
            breached_passwords_url: None,
            breached_passwords_timeout: Duration::from_millis(2000),
            breached_passwords_fail_closed: false,
            rate_limit_token_checks_per_second: 20_000,
            rate_limit_management_per_second: 50,
            max_body_bytes: 16 * 1024,
            workers: cpus,
            trusted_proxies: Vec::new(),
            forwarded_header: crate::client_address::ForwardedHeader::XForwardedFor,
            audit_key: None,
            audit_key_file: data_dir.join(AUDIT_KEY_FILE),
            email_index_key: None,
            email_index_key_file: data_dir.join(EMAIL_INDEX_KEY_FILE),
            data_key_wrapping_key: None,
            data_key_wrapping_key_file: data_dir.join(DATA_KEY_WRAPPING_KEY_FILE),
            chain_checkpoint_interval: Some(Duration::from_secs(60)),
            hsts_max_age: None,
            docs: true,
        }
    }
}

/// KEYLEDGER_DB_MAX_CONNECTIONS when not set.
const DEFAULT_DB_MAX_CONNECTIONS: u32 = 20;

fn parse<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: T,
) -> Result<T, SettingsError>
where
    T::Err: fmt::Display,
{
    match get(variable) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| SettingsError {
            variable,
            value,
            reason: e.to_string(),
        }),
    }
}

fn positive<T: PartialOrd + Default + fmt::Display>(
    variable: &'static str,
    value: T,
) -> Result<T, SettingsError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(SettingsError {
            variable,
            value: value.to_string(),
            reason: "must be greater than zero".into(),
        })
    }
}

/// One configuration variable: its name, default and meaning, for `--help`.
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

macro_rules! variables {
    ($(($name:literal, $default:literal, $meaning:literal)),* $(,)?) => {
        &[$(Variable { name: $name, default: $default, meaning: $meaning }),*]
    };
}

/// Every setting. The same names are accepted as keys of a `--config` TOML file;
/// environment variables win over the file.
pub const VARIABLES: &[Variable] = variables![
    ("KEYLEDGER_BIND", "127.0.0.1:8080", "listen address"),
    (
        "DATABASE_URL",
        "",
        "PostgreSQL for the event store and read models (database created if missing); \
         unset: embedded SQLite in KEYLEDGER_DATA_DIR (development, single node)"
    ),
    (
        "KEYLEDGER_DATA_DIR",
        "keyledger-data",
        "embedded database (keyledger.db, without DATABASE_URL) and default place of the key files"
    ),
    (
        "KEYLEDGER_SQLITE_SYNCHRONOUS",
        "full",
        "embedded store: full (a commit survives power loss) or normal (survives a crash of the process only)"
    ),
    (
        "KEYLEDGER_DB_MAX_CONNECTIONS",
        "20",
        "PostgreSQL pool size; embedded: reader connections (plus one writer)"
    ),
    (
        "NATS_URL",
        "",
        "JetStream for integration events; unset or empty: relay disabled, events fan out in process only"
    ),
    (
        "KEYLEDGER_NATS_STREAM",
        "AUTH_EVENTS",
        "JetStream stream name"
    ),
    (
        "KEYLEDGER_NATS_SUBJECT_PREFIX",
        "auth.events",
        "subjects are <prefix>.<aggregate>.<EventType>"
    ),
    (
        "KEYLEDGER_ISSUER",
        "keyledger",
        "iss claim of access tokens"
    ),
    (
        "KEYLEDGER_AUDIENCE",
        "keyledger",
        "aud claim of access tokens"
    ),
    (
        "KEYLEDGER_ACCESS_TOKEN_TTL_SECS",
        "900",
        "access-token lifetime"
    ),
    (
        "KEYLEDGER_SESSION_TTL_SECS",
        "2592000",
        "absolute session lifetime"
    ),
    (
        "KEYLEDGER_SESSION_IDLE_TIMEOUT_SECS",
        "0",
        "a session not refreshed within this long cannot be refreshed (0: off)"
    ),
    (
        "KEYLEDGER_REFRESH_REUSE_GRACE_SECS",
        "10",
        "a rotated refresh token presented again within this long is a retry of a lost \
         answer and gets a fresh pair, not a revoked session (0: off)"
    ),
    (
        "KEYLEDGER_MAX_SESSIONS_PER_USER",
        "0",
        "live sessions per account; a login beyond it ends the oldest (0: no cap)"
    ),
    (
        "KEYLEDGER_INVITATION_TTL_SECS",
        "604800",
        "how long an invitation to an organization can be accepted"
    ),
    (
        "KEYLEDGER_SIGNING_KEY",
        "",
        "PASERK k4.secret signing key; wins over the key file"
    ),
    (
        "KEYLEDGER_SIGNING_KEY_FILE",
        "<KEYLEDGER_DATA_DIR>/signing-key.paserk",
        "signing key file; generated when missing on the embedded store, required with DATABASE_URL"
    ),
    (
        "KEYLEDGER_VERIFICATION_KEYS",
        "",
        "retired PASERK k4.public keys, accepted for one token lifetime after start"
    ),
    (
        "KEYLEDGER_ARGON2_MEMORY_KIB",
        "19456",
        "Argon2id memory (KiB)"
    ),
    ("KEYLEDGER_ARGON2_ITERATIONS", "2", "Argon2id iterations"),
    ("KEYLEDGER_ARGON2_PARALLELISM", "1", "Argon2id lanes"),
    (
        "KEYLEDGER_HASH_CONCURRENCY",
        "<cores>",
        "password hashes computed at once"
    ),
    (
        "KEYLEDGER_HASH_QUEUE",
        "256",
        "password hashes waiting; more answer 503"
    ),
    (
        "KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT",
        "<half of KEYLEDGER_HASH_CONCURRENCY, at least 1>",
        "password hashes one client address (IPv6: its /64) may have queued or running \
         at once; more answer 429 too_many_concurrent_attempts"
    ),
    (
        "KEYLEDGER_LOCKOUT_MAX_FAILURES",
        "5",
        "consecutive failures that lock an account"
    ),
    ("KEYLEDGER_LOCKOUT_SECS", "1800", "lockout duration"),
    (
        "KEYLEDGER_LOCKOUT_DELAY_MS",
        "1000",
        "progressive delay before the lockout: the answer to the third consecutive \
         failure waits this long, each further one twice as long; 0 disables"
    ),
    (
        "KEYLEDGER_SPRAY_ACCOUNTS",
        "20",
        "distinct accounts failed with one password from one client address within \
         KEYLEDGER_SPRAY_WINDOW_SECS that throttle the address (429); 0 disables"
    ),
    (
        "KEYLEDGER_SPRAY_WINDOW_SECS",
        "900",
        "password-spraying window, and how long a sprayer is throttled"
    ),
    (
        "KEYLEDGER_REAUTH_WINDOW_SECS",
        "300",
        "how recent a platform admin's login must be to remove another admin"
    ),
    (
        "KEYLEDGER_RATE_LIMIT_PER_SECOND",
        "20",
        "per-client requests per second on the credential routes: login, register, password, \
         token, refresh, logout, switch-organization, DELETE /v1/users/me (IPv6 clients by /64; 0 disables)"
    ),
    (
        "KEYLEDGER_RATE_LIMIT_BURST",
        "50",
        "per-client burst on the credential routes"
    ),
    (
        "KEYLEDGER_BREACHED_PASSWORDS_URL",
        "",
        "base URL of a breached-password range API, Have I Been Pwned shape (e.g. \
         https://api.pwnedpasswords.com); only a 5-hex SHA-1 prefix is sent; unset: no check"
    ),
    (
        "KEYLEDGER_BREACHED_PASSWORDS_TIMEOUT_MS",
        "2000",
        "how long a breached-password check may take"
    ),
    (
        "KEYLEDGER_BREACHED_PASSWORDS_FAIL",
        "open",
        "open: accept a password the range API could not judge; closed: answer 503"
    ),
    (
        "KEYLEDGER_RATE_LIMIT_ACCOUNT_PER_MINUTE",
        "10",
        "failed credential attempts per account (email, client id) per minute from all \
         addresses; an address that logged in to the account before is exempt (0 disables)"
    ),
    (
        "KEYLEDGER_RATE_LIMIT_TOKEN_CHECKS_PER_SECOND",
        "20000",
        "per-client requests per second (and burst) on validate, authorize, permissions, keys (0 disables)"
    ),
    (
        "KEYLEDGER_RATE_LIMIT_MANAGEMENT_PER_SECOND",
        "50",
        "per-subject (per-client when anonymous) requests per second (and burst) on organizations, \
         admin, audit, me, sessions, invitations (0 disables)"
    ),
    ("KEYLEDGER_MAX_BODY_BYTES", "16384", "request body limit"),
    ("KEYLEDGER_WORKERS", "<cores>", "HTTP worker threads"),
    (
        "KEYLEDGER_TRUSTED_PROXIES",
        "",
        "reverse proxies (addresses or CIDR ranges, comma-separated) whose forwarding \
         header gives the client address"
    ),
    (
        "KEYLEDGER_FORWARDED_HEADER",
        "x-forwarded-for",
        "the header trusted proxies write the client into: x-forwarded-for or forwarded \
         (RFC 7239); the other one is ignored"
    ),
    (
        "KEYLEDGER_AUDIT_KEY",
        "",
        "PASERK k4.secret audit key signing chain checkpoints; wins over the key file"
    ),
    (
        "KEYLEDGER_AUDIT_KEY_FILE",
        "<KEYLEDGER_DATA_DIR>/audit-key.paserk",
        "audit key file, generated when missing; keep it out of the database's reach (outside the data directory)"
    ),
    (
        "KEYLEDGER_EMAIL_INDEX_KEY",
        "",
        "32 bytes, unpadded base64url, keying the email index; wins over the key file"
    ),
    (
        "KEYLEDGER_EMAIL_INDEX_KEY_FILE",
        "<KEYLEDGER_DATA_DIR>/email-index.key",
        "email index key file, generated when missing; never in the database"
    ),
    (
        "KEYLEDGER_DATA_KEY_WRAPPING_KEY",
        "",
        "32 bytes, unpadded base64url, wrapping the per-person data keys; several separated by commas: the first wraps, the rest only unwrap (rotation); wins over the key file"
    ),
    (
        "KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE",
        "<KEYLEDGER_DATA_DIR>/data-key-wrapping.key",
        "data key wrapping key file (one key per line, the first wraps), generated when missing; never in the database"
    ),
    (
        "KEYLEDGER_CHAIN_CHECKPOINT_SECS",
        "60",
        "seconds between signed chain checkpoints (0: this node does not sign)"
    ),
    (
        "KEYLEDGER_LOG",
        "info,sqlx=warn",
        "log filter (tracing EnvFilter syntax)"
    ),
    ("KEYLEDGER_LOG_FORMAT", "text", "text or json"),
    (
        "KEYLEDGER_HSTS_MAX_AGE_SECS",
        "0",
        "Strict-Transport-Security max-age on every answer (0: not sent; set it when clients reach this server over HTTPS only)"
    ),
    (
        "KEYLEDGER_DOCS",
        "on",
        "on or off: whether GET /docs serves the API reference page (off: 404)"
    ),
];

/// KEYLEDGER_DATA_DIR: where the embedded database and, by default, the key
/// files live.
fn data_dir(get: &impl Fn(&str) -> Option<String>) -> Result<PathBuf, SettingsError> {
    match get("KEYLEDGER_DATA_DIR") {
        None => Ok(PathBuf::from(DEFAULT_DATA_DIR)),
        Some(value) if value.trim().is_empty() => Err(SettingsError {
            variable: "KEYLEDGER_DATA_DIR",
            value,
            reason: "must name a directory (leave it unset for keyledger-data)".into(),
        }),
        Some(value) => Ok(PathBuf::from(value.trim())),
    }
}

/// PostgreSQL when DATABASE_URL is set and not empty, else the embedded store.
/// The SQLite durability is checked either way, so a typo never waits for the
/// day the setting starts to matter.
fn storage(
    get: &impl Fn(&str) -> Option<String>,
    data_dir: &Path,
) -> Result<StorageSettings, SettingsError> {
    let max_connections = positive(
        "KEYLEDGER_DB_MAX_CONNECTIONS",
        parse(
            get,
            "KEYLEDGER_DB_MAX_CONNECTIONS",
            DEFAULT_DB_MAX_CONNECTIONS,
        )?,
    )?;
    let durability = match get("KEYLEDGER_SQLITE_SYNCHRONOUS") {
        None => Durability::default(),
        Some(value) => value
            .trim()
            .to_ascii_lowercase()
            .parse()
            .map_err(|reason| SettingsError {
                variable: "KEYLEDGER_SQLITE_SYNCHRONOUS",
                value,
                reason,
            })?,
    };
    let url = get("DATABASE_URL")
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    match url {
        Some(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(SettingsError {
                    variable: "DATABASE_URL",
                    // It may hold a password: never echoed.
                    value: "<not shown>".into(),
                    reason: "expected a postgres:// or postgresql:// URL; \
                             leave it unset for the embedded store"
                        .into(),
                });
            }
            Ok(StorageSettings::Postgres {
                url,
                max_connections,
            })
        }
        None => Ok(StorageSettings::Embedded(EmbeddedSettings {
            data_dir: data_dir.to_owned(),
            durability,
            readers: max_connections,
        })),
    }
}

/// A key file: its own setting, else its name inside the data directory.
fn key_file(
    get: &impl Fn(&str) -> Option<String>,
    variable: &str,
    data_dir: &Path,
    name: &str,
) -> PathBuf {
    get(variable)
        .filter(|v| !v.trim().is_empty())
        .map_or_else(|| data_dir.join(name), PathBuf::from)
}

impl Settings {
    /// The data directory of the embedded store, if that is the back end.
    pub fn data_dir(&self) -> Option<&Path> {
        match &self.storage {
            StorageSettings::Embedded(e) => Some(&e.data_dir),
            StorageSettings::Postgres { .. } => None,
        }
    }

    /// Which peers are believed about the client's address, and where they say it.
    pub fn client_address_rule(&self) -> crate::client_address::ClientAddressRule {
        crate::client_address::ClientAddressRule {
            trusted_proxies: self.trusted_proxies.clone(),
            header: self.forwarded_header,
        }
    }

    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Environment variables over the keys of a TOML file (same names). An
    /// unknown key in the file is an error, so a typo cannot be silently ignored.
    pub fn from_env_and_file(path: &std::path::Path) -> Result<Self, SettingsError> {
        let bad = |reason: String| SettingsError {
            variable: "--config",
            value: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        let mut file = std::collections::HashMap::new();
        for (key, value) in table {
            if !VARIABLES.iter().any(|v| v.name == key) {
                return Err(bad(format!("unknown setting {key}")));
            }
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                // Name the type, never the value: it may be a secret (the signing key).
                other => {
                    return Err(bad(format!(
                        "{key}: expected a string, number or boolean, found {}",
                        other.type_str()
                    )))
                }
            };
            file.insert(key, value);
        }
        Self::from_lookup(|key| std::env::var(key).ok().or_else(|| file.get(key).cloned()))
    }

    /// Reads settings through `get` (the environment in production, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let d = Self::default();
        let secs = |v: &'static str, default: Duration| -> Result<Duration, SettingsError> {
            let n = positive(v, parse(&get, v, default.as_secs())?)?;
            Ok(Duration::from_secs(n))
        };
        let nats_url = get("NATS_URL")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        let data_dir = data_dir(&get)?;
        let storage = storage(&get, &data_dir)?;
        let hash_concurrency = positive(
            "KEYLEDGER_HASH_CONCURRENCY",
            parse(&get, "KEYLEDGER_HASH_CONCURRENCY", d.hash_concurrency)?,
        )?;
        Ok(Self {
            bind: parse(&get, "KEYLEDGER_BIND", d.bind)?,
            storage,
            nats_url,
            nats_stream: get("KEYLEDGER_NATS_STREAM").unwrap_or(d.nats_stream),
            nats_subject_prefix: get("KEYLEDGER_NATS_SUBJECT_PREFIX")
                .unwrap_or(d.nats_subject_prefix),
            issuer: get("KEYLEDGER_ISSUER").unwrap_or(d.issuer),
            audience: get("KEYLEDGER_AUDIENCE").unwrap_or(d.audience),
            access_token_ttl: secs("KEYLEDGER_ACCESS_TOKEN_TTL_SECS", d.access_token_ttl)?,
            session_ttl: secs("KEYLEDGER_SESSION_TTL_SECS", d.session_ttl)?,
            session_idle_timeout: Some(parse(&get, "KEYLEDGER_SESSION_IDLE_TIMEOUT_SECS", 0u64)?)
                .filter(|n| *n > 0)
                .map(Duration::from_secs),
            refresh_reuse_grace: Duration::from_secs(parse(
                &get,
                "KEYLEDGER_REFRESH_REUSE_GRACE_SECS",
                d.refresh_reuse_grace.as_secs(),
            )?),
            max_sessions_per_user: parse(
                &get,
                "KEYLEDGER_MAX_SESSIONS_PER_USER",
                d.max_sessions_per_user,
            )?,
            invitation_ttl: secs("KEYLEDGER_INVITATION_TTL_SECS", d.invitation_ttl)?,
            signing_key: get("KEYLEDGER_SIGNING_KEY").map(Secret::new),
            signing_key_file: key_file(
                &get,
                "KEYLEDGER_SIGNING_KEY_FILE",
                &data_dir,
                SIGNING_KEY_FILE,
            ),
            verification_keys: get("KEYLEDGER_VERIFICATION_KEYS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            argon2_memory_kib: positive(
                "KEYLEDGER_ARGON2_MEMORY_KIB",
                parse(&get, "KEYLEDGER_ARGON2_MEMORY_KIB", d.argon2_memory_kib)?,
            )?,
            argon2_iterations: positive(
                "KEYLEDGER_ARGON2_ITERATIONS",
                parse(&get, "KEYLEDGER_ARGON2_ITERATIONS", d.argon2_iterations)?,
            )?,
            argon2_parallelism: positive(
                "KEYLEDGER_ARGON2_PARALLELISM",
                parse(&get, "KEYLEDGER_ARGON2_PARALLELISM", d.argon2_parallelism)?,
            )?,
            hash_concurrency,
            hash_queue: parse(&get, "KEYLEDGER_HASH_QUEUE", d.hash_queue)?,
            hash_concurrency_per_client: positive(
                "KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT",
                parse(
                    &get,
                    "KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT",
                    keyledger_commands::hasher::default_per_client(hash_concurrency),
                )?,
            )?,
            lockout_max_failures: positive(
                "KEYLEDGER_LOCKOUT_MAX_FAILURES",
                parse(
                    &get,
                    "KEYLEDGER_LOCKOUT_MAX_FAILURES",
                    d.lockout_max_failures,
                )?,
            )?,
            lockout_duration: secs("KEYLEDGER_LOCKOUT_SECS", d.lockout_duration)?,
            lockout_delay: Duration::from_millis(parse(
                &get,
                "KEYLEDGER_LOCKOUT_DELAY_MS",
                d.lockout_delay.as_millis() as u64,
            )?),
            spray_accounts: parse(&get, "KEYLEDGER_SPRAY_ACCOUNTS", d.spray_accounts)?,
            spray_window: secs("KEYLEDGER_SPRAY_WINDOW_SECS", d.spray_window)?,
            reauth_window: secs("KEYLEDGER_REAUTH_WINDOW_SECS", d.reauth_window)?,
            rate_limit_per_second: parse(
                &get,
                "KEYLEDGER_RATE_LIMIT_PER_SECOND",
                d.rate_limit_per_second,
            )?,
            rate_limit_burst: positive(
                "KEYLEDGER_RATE_LIMIT_BURST",
                parse(&get, "KEYLEDGER_RATE_LIMIT_BURST", d.rate_limit_burst)?,
            )?,
            breached_passwords_url: get("KEYLEDGER_BREACHED_PASSWORDS_URL")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
            breached_passwords_timeout: Duration::from_millis(positive(
                "KEYLEDGER_BREACHED_PASSWORDS_TIMEOUT_MS",
                parse(
                    &get,
                    "KEYLEDGER_BREACHED_PASSWORDS_TIMEOUT_MS",
                    d.breached_passwords_timeout.as_millis() as u64,
                )?,
            )?),
            breached_passwords_fail_closed: match get("KEYLEDGER_BREACHED_PASSWORDS_FAIL") {
                None => d.breached_passwords_fail_closed,
                Some(value) => match value.trim() {
                    "open" => false,
                    "closed" => true,
                    _ => {
                        return Err(SettingsError {
                            variable: "KEYLEDGER_BREACHED_PASSWORDS_FAIL",
                            value,
                            reason: "expected open or closed".into(),
                        })
                    }
                },
            },
            rate_limit_account_per_minute: parse(
                &get,
                "KEYLEDGER_RATE_LIMIT_ACCOUNT_PER_MINUTE",
                d.rate_limit_account_per_minute,
            )?,
            rate_limit_token_checks_per_second: parse(
                &get,
                "KEYLEDGER_RATE_LIMIT_TOKEN_CHECKS_PER_SECOND",
                d.rate_limit_token_checks_per_second,
            )?,
            rate_limit_management_per_second: parse(
                &get,
                "KEYLEDGER_RATE_LIMIT_MANAGEMENT_PER_SECOND",
                d.rate_limit_management_per_second,
            )?,
            max_body_bytes: positive(
                "KEYLEDGER_MAX_BODY_BYTES",
                parse(&get, "KEYLEDGER_MAX_BODY_BYTES", d.max_body_bytes)?,
            )?,
            workers: positive(
                "KEYLEDGER_WORKERS",
                parse(&get, "KEYLEDGER_WORKERS", d.workers)?,
            )?,
            trusted_proxies: match get("KEYLEDGER_TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(value) => value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse()
                            .map_err(|e: crate::client_address::IpRangeError| SettingsError {
                                variable: "KEYLEDGER_TRUSTED_PROXIES",
                                value: value.clone(),
                                reason: e.to_string(),
                            })
                    })
                    .collect::<Result<_, _>>()?,
            },
            forwarded_header: match get("KEYLEDGER_FORWARDED_HEADER") {
                None => d.forwarded_header,
                Some(value) => value.parse().map_err(|reason| SettingsError {
                    variable: "KEYLEDGER_FORWARDED_HEADER",
                    value,
                    reason,
                })?,
            },
            audit_key: get("KEYLEDGER_AUDIT_KEY")
                .filter(|v| !v.trim().is_empty())
                .map(Secret::new),
            audit_key_file: key_file(&get, "KEYLEDGER_AUDIT_KEY_FILE", &data_dir, AUDIT_KEY_FILE),
            email_index_key: get("KEYLEDGER_EMAIL_INDEX_KEY")
                .filter(|v| !v.trim().is_empty())
                .map(Secret::new),
            email_index_key_file: key_file(
                &get,
                "KEYLEDGER_EMAIL_INDEX_KEY_FILE",
                &data_dir,
                EMAIL_INDEX_KEY_FILE,
            ),
            data_key_wrapping_key: get("KEYLEDGER_DATA_KEY_WRAPPING_KEY")
                .filter(|v| !v.trim().is_empty())
                .map(Secret::new),
            data_key_wrapping_key_file: key_file(
                &get,
                "KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE",
                &data_dir,
                DATA_KEY_WRAPPING_KEY_FILE,
            ),
            chain_checkpoint_interval: match parse(
                &get,
                "KEYLEDGER_CHAIN_CHECKPOINT_SECS",
                d.chain_checkpoint_interval.map_or(0, |d| d.as_secs()),
            )? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            hsts_max_age: match parse(&get, "KEYLEDGER_HSTS_MAX_AGE_SECS", 0u64)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            docs: match get("KEYLEDGER_DOCS") {
                None => d.docs,
                Some(value) => match value.trim().to_ascii_lowercase().as_str() {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(SettingsError {
                            variable: "KEYLEDGER_DOCS",
                            value,
                            reason: "must be on or off".into(),
                        })
                    }
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn debugging_the_settings_never_shows_the_database_password() {
        let settings = Settings::from_lookup(|k| {
            (k == "DATABASE_URL").then(|| "postgres://kl:s3cret-pw@db/keyledger".to_owned())
        })
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("Postgres"), "{shown}");
    }

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = from(&[]).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.access_token_ttl, Duration::from_secs(900));
        assert_eq!(s.invitation_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(s.lockout_max_failures, 5);
        assert_eq!(s.argon2_memory_kib, 19_456);
    }

    #[test]
    fn hsts_is_off_and_docs_are_on_unless_set() {
        let s = from(&[]).unwrap();
        assert_eq!(s.hsts_max_age, None);
        assert!(s.docs);
        let s = from(&[
            ("KEYLEDGER_HSTS_MAX_AGE_SECS", "31536000"),
            ("KEYLEDGER_DOCS", "OFF"),
        ])
        .unwrap();
        assert_eq!(s.hsts_max_age, Some(Duration::from_secs(31_536_000)));
        assert!(!s.docs);
        let err = from(&[("KEYLEDGER_DOCS", "no")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_DOCS");
        let err = from(&[("KEYLEDGER_HSTS_MAX_AGE_SECS", "a year")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_HSTS_MAX_AGE_SECS");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = from(&[("KEYLEDGER_ACCESS_TOKEN_TTL_SECS", "soon")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_ACCESS_TOKEN_TTL_SECS");
        let err = from(&[("KEYLEDGER_LOCKOUT_MAX_FAILURES", "0")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_LOCKOUT_MAX_FAILURES");
    }

    #[test]
    fn every_setting_is_listed_for_help() {
        for name in [
            "KEYLEDGER_BIND",
            "KEYLEDGER_INVITATION_TTL_SECS",
            "DATABASE_URL",
            "NATS_URL",
            "KEYLEDGER_SIGNING_KEY_FILE",
            "KEYLEDGER_RATE_LIMIT_BURST",
            "KEYLEDGER_RATE_LIMIT_ACCOUNT_PER_MINUTE",
            "KEYLEDGER_RATE_LIMIT_TOKEN_CHECKS_PER_SECOND",
            "KEYLEDGER_RATE_LIMIT_MANAGEMENT_PER_SECOND",
            "KEYLEDGER_WORKERS",
        ] {
            assert!(VARIABLES.iter().any(|v| v.name == name), "{name}");
        }
    }

    #[test]
    fn a_config_file_is_read_and_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("keyledger-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "KEYLEDGER_LOCKOUT_MAX_FAILURES = 7\nKEYLEDGER_ISSUER = \"https://id.example\"\n",
        )
        .unwrap();
        let s = Settings::from_env_and_file(&good).unwrap();
        assert_eq!(s.lockout_max_failures, 7);
        assert_eq!(s.issuer, "https://id.example");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "KEYLEDGER_LOCKOUT_MAX_FAILRES = 7\n").unwrap();
        let err = Settings::from_env_and_file(&bad).unwrap_err();
        assert!(err.reason.contains("KEYLEDGER_LOCKOUT_MAX_FAILRES"));
        let secret = dir.join("secret.toml");
        std::fs::write(
            &secret,
            "KEYLEDGER_SIGNING_KEY = [\"k4.secret.do-not-echo\"]\n",
        )
        .unwrap();
        let err = Settings::from_env_and_file(&secret).unwrap_err();
        assert!(!err.to_string().contains("do-not-echo"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn chain_checkpoints_are_signed_every_minute_unless_disabled() {
        let s = from(&[]).unwrap();
        assert_eq!(s.chain_checkpoint_interval, Some(Duration::from_secs(60)));
        let s = from(&[("KEYLEDGER_CHAIN_CHECKPOINT_SECS", "0")]).unwrap();
        assert_eq!(s.chain_checkpoint_interval, None);
        let s = from(&[("KEYLEDGER_AUDIT_KEY", "k4.secret.audit-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("audit-secret"));
        assert!(VARIABLES
            .iter()
            .any(|v| v.name == "KEYLEDGER_CHAIN_CHECKPOINT_SECS"));
    }

    #[test]
    fn trusted_proxies_take_addresses_and_cidr_ranges_and_name_their_header() {
        let s = from(&[
            (
                "KEYLEDGER_TRUSTED_PROXIES",
                "10.0.0.7, 172.16.0.0/12,2001:db8::/32",
            ),
            ("KEYLEDGER_FORWARDED_HEADER", "Forwarded"),
        ])
        .unwrap();
        let shown: Vec<String> = s.trusted_proxies.iter().map(|r| r.to_string()).collect();
        assert_eq!(shown, ["10.0.0.7/32", "172.16.0.0/12", "2001:db8::/32"]);
        assert_eq!(
            s.forwarded_header,
            crate::client_address::ForwardedHeader::Forwarded
        );
        assert_eq!(
            from(&[]).unwrap().forwarded_header,
            crate::client_address::ForwardedHeader::XForwardedFor
        );
        let err = from(&[("KEYLEDGER_TRUSTED_PROXIES", "10.0.0.0/40")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_TRUSTED_PROXIES");
        let err = from(&[("KEYLEDGER_FORWARDED_HEADER", "x-real-ip")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_FORWARDED_HEADER");
    }

    #[test]
    fn an_empty_nats_url_disables_the_relay() {
        assert!(from(&[("NATS_URL", "")]).unwrap().nats_url.is_none());
    }

    #[test]
    fn without_database_url_the_store_is_embedded_in_the_data_dir() {
        let s = from(&[]).unwrap();
        let StorageSettings::Embedded(e) = &s.storage else {
            panic!("{:?}", s.storage)
        };
        assert_eq!(e.data_dir, PathBuf::from("keyledger-data"));
        assert_eq!(e.durability, Durability::Full);
        assert_eq!(e.readers, 20);
        assert_eq!(s.storage.kind(), "sqlite");
        assert_eq!(s.data_dir(), Some(Path::new("keyledger-data")));
        assert_eq!(
            s.signing_key_file,
            PathBuf::from("keyledger-data/signing-key.paserk")
        );
        assert_eq!(
            s.audit_key_file,
            PathBuf::from("keyledger-data/audit-key.paserk")
        );
        assert_eq!(
            s.email_index_key_file,
            PathBuf::from("keyledger-data/email-index.key")
        );
        assert_eq!(
            s.data_key_wrapping_key_file,
            PathBuf::from("keyledger-data/data-key-wrapping.key")
        );
        // An empty DATABASE_URL is the same as none (a blanked-out variable).
        let s = from(&[("DATABASE_URL", " ")]).unwrap();
        assert!(matches!(s.storage, StorageSettings::Embedded(_)));
    }

    #[test]
    fn a_database_url_selects_postgres_with_its_pool_size() {
        let s = from(&[
            ("DATABASE_URL", "postgres://kl@db.internal/keyledger"),
            ("KEYLEDGER_DB_MAX_CONNECTIONS", "7"),
        ])
        .unwrap();
        let StorageSettings::Postgres {
            url,
            max_connections,
        } = &s.storage
        else {
            panic!("{:?}", s.storage)
        };
        assert_eq!(url, "postgres://kl@db.internal/keyledger");
        assert_eq!(*max_connections, 7);
        assert_eq!(s.storage.kind(), "postgres");
        assert_eq!(s.data_dir(), None);
        // Key files still default to the data directory.
        assert_eq!(
            s.signing_key_file,
            PathBuf::from("keyledger-data/signing-key.paserk")
        );
    }

    #[test]
    fn the_data_dir_moves_the_database_and_the_default_key_files() {
        let s = from(&[
            ("KEYLEDGER_DATA_DIR", "/var/lib/keyledger"),
            ("KEYLEDGER_SQLITE_SYNCHRONOUS", "NORMAL"),
            ("KEYLEDGER_DB_MAX_CONNECTIONS", "3"),
            (
                "KEYLEDGER_AUDIT_KEY_FILE",
                "/etc/keyledger/audit-key.paserk",
            ),
        ])
        .unwrap();
        let StorageSettings::Embedded(e) = &s.storage else {
            panic!("{:?}", s.storage)
        };
        assert_eq!(e.data_dir, PathBuf::from("/var/lib/keyledger"));
        assert_eq!(e.durability, Durability::Normal);
        assert_eq!(e.readers, 3);
        assert_eq!(
            s.signing_key_file,
            PathBuf::from("/var/lib/keyledger/signing-key.paserk")
        );
        assert_eq!(
            s.email_index_key_file,
            PathBuf::from("/var/lib/keyledger/email-index.key")
        );
        // A key file set on its own stays where it was put.
        assert_eq!(
            s.audit_key_file,
            PathBuf::from("/etc/keyledger/audit-key.paserk")
        );
    }

    #[test]
    fn bad_storage_settings_name_their_variable() {
        let err = from(&[("KEYLEDGER_SQLITE_SYNCHRONOUS", "off")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_SQLITE_SYNCHRONOUS");
        // Checked even when PostgreSQL is used, so the typo shows at once.
        let err = from(&[
            ("DATABASE_URL", "postgres://db/keyledger"),
            ("KEYLEDGER_SQLITE_SYNCHRONOUS", "fast"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_SQLITE_SYNCHRONOUS");
        let err = from(&[("KEYLEDGER_DATA_DIR", "")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_DATA_DIR");
        let err = from(&[("KEYLEDGER_DB_MAX_CONNECTIONS", "0")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_DB_MAX_CONNECTIONS");
        let err = from(&[("DATABASE_URL", "mysql://root:hunter2@db/keyledger")]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn nats_has_no_default() {
        assert_eq!(from(&[]).unwrap().nats_url, None);
        assert_eq!(
            from(&[("NATS_URL", " nats://bus:4222 ")]).unwrap().nats_url,
            Some("nats://bus:4222".into())
        );
    }

    #[test]
    fn a_config_file_can_select_postgres() {
        let dir = std::env::temp_dir().join(format!("keyledger-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pg.toml");
        std::fs::write(
            &file,
            "DATABASE_URL = \"postgres://kl@db.internal/keyledger\"\n\
             KEYLEDGER_DATA_DIR = \"/srv/keyledger\"\n",
        )
        .unwrap();
        let from_file = Settings::from_env_and_file(&file);
        std::fs::remove_dir_all(dir).unwrap();
        let s = from_file.unwrap();
        // The environment of the test runner may set DATABASE_URL; it wins.
        if std::env::var("DATABASE_URL").is_err() {
            assert!(matches!(s.storage, StorageSettings::Postgres { .. }));
        }
        if std::env::var("KEYLEDGER_DATA_DIR").is_err() {
            assert_eq!(
                s.signing_key_file,
                PathBuf::from("/srv/keyledger/signing-key.paserk")
            );
        }
    }

    #[test]
    fn every_variable_read_is_listed_and_documented() {
        let asked = std::cell::RefCell::new(Vec::new());
        Settings::from_lookup(|key| {
            asked.borrow_mut().push(key.to_owned());
            None
        })
        .unwrap();
        // Postgres reads the same variables plus DATABASE_URL's value.
        Settings::from_lookup(|key| {
            asked.borrow_mut().push(key.to_owned());
            (key == "DATABASE_URL").then(|| "postgres://db/keyledger".to_owned())
        })
        .unwrap();
        let readme = include_str!("../../README.md");
        for key in asked.into_inner() {
            assert!(
                VARIABLES.iter().any(|v| v.name == key),
                "{key} is read but not listed for --help"
            );
        }
        for v in VARIABLES {
            assert!(
                readme.contains(&format!("| `{}` |", v.name)),
                "{} is missing from the README's configuration table",
                v.name
            );
        }
    }

    #[test]
    fn the_signing_key_never_shows_in_debug_output() {
        let s = from(&[("KEYLEDGER_SIGNING_KEY", "k4.secret.very-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
