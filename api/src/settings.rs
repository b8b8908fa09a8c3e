//! Configuration, read once at start-up from the environment into one typed struct.
//! Every setting, its variable and its default is listed in the README.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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

#[derive(Debug, Clone)]
pub struct Settings {
    /// KEYLEDGER_BIND
    pub bind: SocketAddr,
    /// DATABASE_URL
    pub database_url: String,
    /// KEYLEDGER_DB_MAX_CONNECTIONS
    pub db_max_connections: u32,
    /// NATS_URL; empty disables the relay.
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
    /// KEYLEDGER_SIGNING_KEY (PASERK k4.secret); wins over the key file.
    pub signing_key: Option<Secret>,
    /// KEYLEDGER_SIGNING_KEY_FILE; created with a fresh key when missing.
    pub signing_key_file: PathBuf,
    /// KEYLEDGER_VERIFICATION_KEYS: retired PASERK k4.public keys, comma-separated.
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
    /// KEYLEDGER_LOCKOUT_MAX_FAILURES
    pub lockout_max_failures: u32,
    /// KEYLEDGER_LOCKOUT_SECS
    pub lockout_duration: Duration,
    /// KEYLEDGER_RATE_LIMIT_PER_SECOND (0 disables)
    pub rate_limit_per_second: u64,
    /// KEYLEDGER_RATE_LIMIT_BURST
    pub rate_limit_burst: u32,
    /// KEYLEDGER_MAX_BODY_BYTES
    pub max_body_bytes: usize,
    /// KEYLEDGER_WORKERS
    pub workers: usize,
    /// KEYLEDGER_TRUSTED_PROXIES: peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
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
    /// KEYLEDGER_CHAIN_CHECKPOINT_SECS; `None` (0) means this node never signs.
    pub chain_checkpoint_interval: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "postgres://postgres@127.0.0.1:5432/keyledger".into(),
            db_max_connections: 20,
            nats_url: Some("nats://127.0.0.1:4222".into()),
            nats_stream: "AUTH_EVENTS".into(),
            nats_subject_prefix: "auth.events".into(),
            issuer: "keyledger".into(),
            audience: "keyledger".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            signing_key: None,
            signing_key_file: PathBuf::from("keyledger-data/signing-key.paserk"),
            verification_keys: Vec::new(),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_concurrency: cpus,
            hash_queue: 256,
            lockout_max_failures: 5,
            lockout_duration: Duration::from_secs(30 * 60),
            rate_limit_per_second: 20,
            rate_limit_burst: 50,
            max_body_bytes: 16 * 1024,
            workers: cpus,
            trusted_proxies: Vec::new(),
            audit_key: None,
            audit_key_file: PathBuf::from("keyledger-data/audit-key.paserk"),
            email_index_key: None,
            email_index_key_file: PathBuf::from("keyledger-data/email-index.key"),
            chain_checkpoint_interval: Some(Duration::from_secs(60)),
        }
    }
}

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
        "postgres://postgres@127.0.0.1:5432/keyledger",
        "event store and read models (created if missing)"
    ),
    ("KEYLEDGER_DB_MAX_CONNECTIONS", "20", "database pool size"),
    (
        "NATS_URL",
        "nats://127.0.0.1:4222",
        "JetStream for integration events; empty disables the relay"
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
        "KEYLEDGER_SIGNING_KEY",
        "",
        "PASERK k4.secret signing key; wins over the key file"
    ),
    (
        "KEYLEDGER_SIGNING_KEY_FILE",
        "keyledger-data/signing-key.paserk",
        "signing key file, generated when missing"
    ),
    (
        "KEYLEDGER_VERIFICATION_KEYS",
        "",
        "extra PASERK k4.public keys still accepted, comma-separated"
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
        "KEYLEDGER_LOCKOUT_MAX_FAILURES",
        "5",
        "consecutive failures that lock an account"
    ),
    ("KEYLEDGER_LOCKOUT_SECS", "1800", "lockout duration"),
    (
        "KEYLEDGER_RATE_LIMIT_PER_SECOND",
        "20",
        "per-IP requests per second on /v1/auth (0 disables)"
    ),
    ("KEYLEDGER_RATE_LIMIT_BURST", "50", "per-IP burst"),
    ("KEYLEDGER_MAX_BODY_BYTES", "16384", "request body limit"),
    ("KEYLEDGER_WORKERS", "<cores>", "HTTP worker threads"),
    (
        "KEYLEDGER_TRUSTED_PROXIES",
        "",
        "proxy IPs whose X-Forwarded-For gives the client address, comma-separated"
    ),
    (
        "KEYLEDGER_AUDIT_KEY",
        "",
        "PASERK k4.secret audit key signing chain checkpoints; wins over the key file"
    ),
    (
        "KEYLEDGER_AUDIT_KEY_FILE",
        "keyledger-data/audit-key.paserk",
        "audit key file, generated when missing; keep it out of the database's reach"
    ),
    (
        "KEYLEDGER_EMAIL_INDEX_KEY",
        "",
        "32 bytes, unpadded base64url, keying the email index; wins over the key file"
    ),
    (
        "KEYLEDGER_EMAIL_INDEX_KEY_FILE",
        "keyledger-data/email-index.key",
        "email index key file, generated when missing; never in the database"
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
];

impl Settings {
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
        let nats_url = match get("NATS_URL") {
            None => d.nats_url.clone(),
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(v.trim().to_owned()),
        };
        Ok(Self {
            bind: parse(&get, "KEYLEDGER_BIND", d.bind)?,
            database_url: get("DATABASE_URL").unwrap_or(d.database_url),
            db_max_connections: positive(
                "KEYLEDGER_DB_MAX_CONNECTIONS",
                parse(&get, "KEYLEDGER_DB_MAX_CONNECTIONS", d.db_max_connections)?,
            )?,
            nats_url,
            nats_stream: get("KEYLEDGER_NATS_STREAM").unwrap_or(d.nats_stream),
            nats_subject_prefix: get("KEYLEDGER_NATS_SUBJECT_PREFIX")
                .unwrap_or(d.nats_subject_prefix),
            issuer: get("KEYLEDGER_ISSUER").unwrap_or(d.issuer),
            audience: get("KEYLEDGER_AUDIENCE").unwrap_or(d.audience),
            access_token_ttl: secs("KEYLEDGER_ACCESS_TOKEN_TTL_SECS", d.access_token_ttl)?,
            session_ttl: secs("KEYLEDGER_SESSION_TTL_SECS", d.session_ttl)?,
            signing_key: get("KEYLEDGER_SIGNING_KEY").map(Secret::new),
            signing_key_file: get("KEYLEDGER_SIGNING_KEY_FILE")
                .map_or(d.signing_key_file, PathBuf::from),
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
            hash_concurrency: positive(
                "KEYLEDGER_HASH_CONCURRENCY",
                parse(&get, "KEYLEDGER_HASH_CONCURRENCY", d.hash_concurrency)?,
            )?,
            hash_queue: parse(&get, "KEYLEDGER_HASH_QUEUE", d.hash_queue)?,
            lockout_max_failures: positive(
                "KEYLEDGER_LOCKOUT_MAX_FAILURES",
                parse(
                    &get,
                    "KEYLEDGER_LOCKOUT_MAX_FAILURES",
                    d.lockout_max_failures,
                )?,
            )?,
            lockout_duration: secs("KEYLEDGER_LOCKOUT_SECS", d.lockout_duration)?,
            rate_limit_per_second: parse(
                &get,
                "KEYLEDGER_RATE_LIMIT_PER_SECOND",
                d.rate_limit_per_second,
            )?,
            rate_limit_burst: positive(
                "KEYLEDGER_RATE_LIMIT_BURST",
                parse(&get, "KEYLEDGER_RATE_LIMIT_BURST", d.rate_limit_burst)?,
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
                            .map_err(|e: std::net::AddrParseError| SettingsError {
                                variable: "KEYLEDGER_TRUSTED_PROXIES",
                                value: value.clone(),
                                reason: e.to_string(),
                            })
                    })
                    .collect::<Result<_, _>>()?,
            },
            audit_key: get("KEYLEDGER_AUDIT_KEY")
                .filter(|v| !v.trim().is_empty())
                .map(Secret::new),
            audit_key_file: get("KEYLEDGER_AUDIT_KEY_FILE").map_or(d.audit_key_file, PathBuf::from),
            email_index_key: get("KEYLEDGER_EMAIL_INDEX_KEY")
                .filter(|v| !v.trim().is_empty())
                .map(Secret::new),
            email_index_key_file: get("KEYLEDGER_EMAIL_INDEX_KEY_FILE")
                .map_or(d.email_index_key_file, PathBuf::from),
            chain_checkpoint_interval: match parse(
                &get,
                "KEYLEDGER_CHAIN_CHECKPOINT_SECS",
                d.chain_checkpoint_interval.map_or(0, |d| d.as_secs()),
            )? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

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
        assert_eq!(s.lockout_max_failures, 5);
        assert_eq!(s.argon2_memory_kib, 19_456);
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
            "DATABASE_URL",
            "NATS_URL",
            "KEYLEDGER_SIGNING_KEY_FILE",
            "KEYLEDGER_RATE_LIMIT_BURST",
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
    fn an_empty_nats_url_disables_the_relay() {
        assert!(from(&[("NATS_URL", "")]).unwrap().nats_url.is_none());
    }

    #[test]
    fn the_signing_key_never_shows_in_debug_output() {
        let s = from(&[("KEYLEDGER_SIGNING_KEY", "k4.secret.very-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
