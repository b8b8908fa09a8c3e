//! Configuration, read once at start-up from the environment into typed settings,
//! one struct per concern (server, storage, NATS, tokens, sessions, organizations,
//! passwords, lockout, rate limits, audit, personal data, mail, logs).
//!
//! Each variable is declared once, in its group's `settings_group!`: its name, its
//! default, its meaning and its parser. Parsing, `keyledger --help`, the `--config`
//! file's known keys, the unknown-variable warning and the check of the configuration reference all come
//! from those declarations. Every setting, its variable and its default is listed in
//! `docs/configuration.md`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use keyledger_commands::EmailVerification;
use keyledger_mail::SmtpUrl;
use keyledger_storage::{Durability, EmbeddedSettings};

use crate::client_address::{ForwardedHeader, IpRange, IpRangeError};

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

/// One configuration variable: its name, default and meaning, for `--help`.
#[derive(Debug)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

impl Variable {
    fn invalid(&self, value: impl Into<String>, reason: impl fmt::Display) -> SettingsError {
        SettingsError {
            variable: self.name,
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}

/// Where settings are read from: the environment, a `--config` file under it, or a
/// map in tests.
type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// Declares a group of settings: the struct, and for each field the constant
/// [`Variable`] (name, default, meaning) and the parser that reads it. The group's
/// `VARIABLES` lists them in declaration order; `Default` is what an empty
/// environment gives.
macro_rules! settings_group {
    (
        $(#[$meta:meta])*
        $vis:vis struct $group:ident {
            $(
                $(#[$field_meta:meta])*
                $field:ident: $ty:ty = $constant:ident($name:literal, $default:literal, $parser:expr,
                    $meaning:literal $(,)?);
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $group {
            $(
                $(#[$field_meta])*
                #[doc = concat!("\n\n`", $name, "`: ", $meaning)]
                pub $field: $ty,
            )*
        }

        impl $group {
            $(
                pub const $constant: Variable = Variable {
                    name: $name,
                    default: $default,
                    meaning: $meaning,
                };
            )*

            /// This group's variables, in the order `--help` lists them.
            pub const VARIABLES: &'static [Variable] = &[$(Self::$constant),*];

            fn read(get: &Lookup<'_>) -> Result<Self, SettingsError> {
                Ok(Self {
                    $($field: ($parser)(get, &Self::$constant)?,)*
                })
            }
        }

        impl Default for $group {
            fn default() -> Self {
                Self::read(&|_| None).expect("the declared defaults are valid")
            }
        }
    };
}

// Parsers: each reads its variable through `get`, falling back to the declared
// default. A value that does not parse names its variable; values are echoed in
// the error except where they may hold a password.

/// The value parsed by `FromStr` after trimming.
fn parsed<T: FromStr>(get: &Lookup<'_>, var: &Variable) -> Result<T, SettingsError>
where
    T::Err: fmt::Display,
{
    match get(var.name) {
        None => var.default.parse().map_err(|e| var.invalid(var.default, e)),
        Some(value) => value.trim().parse().map_err(|e| var.invalid(value, e)),
    }
}

/// A number greater than zero.
fn positive<T>(get: &Lookup<'_>, var: &Variable) -> Result<T, SettingsError>
where
    T: FromStr + PartialOrd + Default + fmt::Display,
    T::Err: fmt::Display,
{
    let value: T = parsed(get, var)?;
    if value > T::default() {
        Ok(value)
    } else {
        Err(var.invalid(value.to_string(), "must be greater than zero"))
    }
}

/// Seconds, zero allowed.
fn secs(get: &Lookup<'_>, var: &Variable) -> Result<Duration, SettingsError> {
    parsed(get, var).map(Duration::from_secs)
}

/// Seconds, more than zero.
fn positive_secs(get: &Lookup<'_>, var: &Variable) -> Result<Duration, SettingsError> {
    positive(get, var).map(Duration::from_secs)
}

/// Seconds, zero meaning off.
fn secs_or_off(get: &Lookup<'_>, var: &Variable) -> Result<Option<Duration>, SettingsError> {
    let secs: u64 = parsed(get, var)?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// Milliseconds, zero allowed.
fn millis(get: &Lookup<'_>, var: &Variable) -> Result<Duration, SettingsError> {
    parsed(get, var).map(Duration::from_millis)
}

/// Milliseconds, more than zero.
fn positive_millis(get: &Lookup<'_>, var: &Variable) -> Result<Duration, SettingsError> {
    positive(get, var).map(Duration::from_millis)
}

/// Text as given.
fn text(get: &Lookup<'_>, var: &Variable) -> Result<String, SettingsError> {
    Ok(get(var.name).unwrap_or_else(|| var.default.to_owned()))
}

/// Text, trimmed; unset or empty is none.
fn optional_text(get: &Lookup<'_>, var: &Variable) -> Result<Option<String>, SettingsError> {
    Ok(get(var.name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty()))
}

/// A secret as given.
fn secret(get: &Lookup<'_>, var: &Variable) -> Result<Option<Secret>, SettingsError> {
    Ok(get(var.name).map(Secret::new))
}

/// A secret; unset or blank is none.
fn nonblank_secret(get: &Lookup<'_>, var: &Variable) -> Result<Option<Secret>, SettingsError> {
    Ok(get(var.name)
        .filter(|v| !v.trim().is_empty())
        .map(Secret::new))
}

/// Comma-separated items, trimmed, empty ones dropped.
fn list(get: &Lookup<'_>, var: &Variable) -> Result<Vec<String>, SettingsError> {
    Ok(get(var.name)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

/// `on` or `off`, in any case.
fn on_off(get: &Lookup<'_>, var: &Variable) -> Result<bool, SettingsError> {
    let value = get(var.name).unwrap_or_else(|| var.default.to_owned());
    match value.trim().to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(var.invalid(value, "must be on or off")),
    }
}

/// The number of cores unless set; more than zero.
fn cores(get: &Lookup<'_>, var: &Variable) -> Result<usize, SettingsError> {
    match get(var.name) {
        None => Ok(std::thread::available_parallelism().map_or(2, |n| n.get())),
        Some(_) => positive(get, var),
    }
}

/// Key files' names inside the data directory, their default place.
pub const SIGNING_KEY_FILE: &str = "signing-key.paserk";
pub const AUDIT_KEY_FILE: &str = "audit-key.paserk";
pub const EMAIL_INDEX_KEY_FILE: &str = "email-index.key";
pub const DATA_KEY_WRAPPING_KEY_FILE: &str = "data-key-wrapping.key";

/// A directory that must be named when set.
fn directory(get: &Lookup<'_>, var: &Variable) -> Result<PathBuf, SettingsError> {
    match get(var.name) {
        None => Ok(PathBuf::from(var.default)),
        Some(value) if value.trim().is_empty() => Err(var.invalid(
            value,
            format!("must name a directory (leave it unset for {})", var.default),
        )),
        Some(value) => Ok(PathBuf::from(value.trim())),
    }
}

/// A key file: its own setting, else its name inside the data directory.
fn key_file(
    name: &'static str,
) -> impl Fn(&Lookup<'_>, &Variable) -> Result<PathBuf, SettingsError> {
    move |get, var| {
        let data_dir = directory(get, &StorageVariables::DATA_DIR)?;
        Ok(get(var.name)
            .filter(|v| !v.trim().is_empty())
            .map_or_else(|| data_dir.join(name), PathBuf::from))
    }
}

/// A PostgreSQL URL, or none when unset or empty. Never echoed: it may hold a
/// password.
fn postgres_url(get: &Lookup<'_>, var: &Variable) -> Result<Option<Secret>, SettingsError> {
    let Some(url) = optional_text(get, var)? else {
        return Ok(None);
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(var.invalid(
            "<not shown>",
            "expected a postgres:// or postgresql:// URL; leave it unset for the embedded store",
        ));
    }
    Ok(Some(Secret::new(url)))
}

/// An SMTP URL, or none when unset or empty. Never echoed: it may hold a password
/// (the reason never repeats it either).
fn smtp_url(get: &Lookup<'_>, var: &Variable) -> Result<Option<SmtpUrl>, SettingsError> {
    let Some(url) = optional_text(get, var)? else {
        return Ok(None);
    };
    SmtpUrl::parse(&url)
        .map(Some)
        .map_err(|e| var.invalid("<not shown>", e))
}

/// A path; unset or empty is none.
fn optional_path(get: &Lookup<'_>, var: &Variable) -> Result<Option<PathBuf>, SettingsError> {
    Ok(optional_text(get, var)?.map(PathBuf::from))
}

/// An http(s) base URL without a trailing slash; by default the listen address.
fn public_url(get: &Lookup<'_>, var: &Variable) -> Result<String, SettingsError> {
    let Some(value) = optional_text(get, var)? else {
        let bind: SocketAddr = parsed(get, &ServerSettings::BIND)?;
        return Ok(format!("http://{bind}"));
    };
    let url = value.trim_end_matches('/');
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match host {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(url.to_owned()),
        _ => Err(var.invalid(value, "expected an http:// or https:// URL")),
    }
}

/// The SQLite durability, `full` or `normal` in any case.
fn durability(get: &Lookup<'_>, var: &Variable) -> Result<Durability, SettingsError> {
    match get(var.name) {
        None => Ok(Durability::default()),
        Some(value) => value
            .trim()
            .to_ascii_lowercase()
            .parse()
            .map_err(|reason: String| var.invalid(value, reason)),
    }
}

/// Comma-separated addresses or CIDR ranges.
fn ip_ranges(get: &Lookup<'_>, var: &Variable) -> Result<Vec<IpRange>, SettingsError> {
    let Some(value) = get(var.name) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e: IpRangeError| var.invalid(value.clone(), e))
        })
        .collect()
}

/// `x-forwarded-for` or `forwarded`.
fn forwarded_header(get: &Lookup<'_>, var: &Variable) -> Result<ForwardedHeader, SettingsError> {
    let value = get(var.name).unwrap_or_else(|| var.default.to_owned());
    value
        .parse()
        .map_err(|reason: String| var.invalid(value, reason))
}

/// `open` (false) or `closed` (true).
fn fail_closed(get: &Lookup<'_>, var: &Variable) -> Result<bool, SettingsError> {
    let value = get(var.name).unwrap_or_else(|| var.default.to_owned());
    match value.trim() {
        "open" => Ok(false),
        "closed" => Ok(true),
        _ => Err(var.invalid(value, "expected open or closed")),
    }
}

settings_group! {
    /// The HTTP server: where it listens, how it reads requests and whom it
    /// believes about the client's address.
    pub struct ServerSettings {
        bind: SocketAddr = BIND("KEYLEDGER_BIND", "127.0.0.1:8080", parsed, "listen address");
        workers: usize = WORKERS("KEYLEDGER_WORKERS", "<cores>", cores, "HTTP worker threads");
        max_body_bytes: usize = MAX_BODY_BYTES(
            "KEYLEDGER_MAX_BODY_BYTES", "16384", positive, "request body limit");
        /// Peers whose forwarding header is believed.
        trusted_proxies: Vec<IpRange> = TRUSTED_PROXIES(
            "KEYLEDGER_TRUSTED_PROXIES",
            "",
            ip_ranges,
            "reverse proxies (addresses or CIDR ranges, comma-separated) whose forwarding \
             header gives the client address"
        );
        /// The header those proxies write the client into.
        forwarded_header: ForwardedHeader = FORWARDED_HEADER(
            "KEYLEDGER_FORWARDED_HEADER",
            "x-forwarded-for",
            forwarded_header,
            "the header trusted proxies write the client into: x-forwarded-for or forwarded \
             (RFC 7239); the other one is ignored"
        );
        /// `None` (0, the default) sends no `Strict-Transport-Security`: TLS usually
        /// ends at a proxy in front, which should send it, and HSTS on a plain-HTTP
        /// deployment locks browsers out.
        hsts_max_age: Option<Duration> = HSTS_MAX_AGE(
            "KEYLEDGER_HSTS_MAX_AGE_SECS",
            "0",
            secs_or_off,
            "Strict-Transport-Security max-age on every answer (0: not sent; set it when clients reach this server over HTTPS only)"
        );
        /// Whether `GET /docs` serves the API reference page (off: 404, for
        /// deployments that publish no documentation).
        docs: bool = DOCS(
            "KEYLEDGER_DOCS",
            "on",
            on_off,
            "on or off: whether GET /docs serves the API reference page (off: 404)"
        );
    }
}

settings_group! {
    /// The variables that choose the storage; [`StorageSettings`] is what they
    /// mean together.
    struct StorageVariables {
        database_url: Option<Secret> = DATABASE_URL(
            "DATABASE_URL",
            "",
            postgres_url,
            "PostgreSQL for the event store and read models (database created if missing); \
             unset: embedded SQLite in KEYLEDGER_DATA_DIR (development, single node)"
        );
        data_dir: PathBuf = DATA_DIR(
            "KEYLEDGER_DATA_DIR",
            "keyledger-data",
            directory,
            "embedded database (keyledger.db, without DATABASE_URL) and default place of the key files"
        );
        /// Checked even with PostgreSQL, so a typo never waits for the day the
        /// setting starts to matter.
        durability: Durability = SQLITE_SYNCHRONOUS(
            "KEYLEDGER_SQLITE_SYNCHRONOUS",
            "full",
            durability,
            "embedded store: full (a commit survives power loss) or normal (survives a crash of the process only)"
        );
        max_connections: u32 = DB_MAX_CONNECTIONS(
            "KEYLEDGER_DB_MAX_CONNECTIONS",
            "20",
            positive,
            "PostgreSQL pool size; embedded: reader connections (plus one writer)"
        );
    }
}

/// Where the event log and the read models live: chosen by whether `DATABASE_URL`
/// is set, so a first start needs no database server. `Debug` never shows the URL:
/// it may carry a password.
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

    /// PostgreSQL when DATABASE_URL is set and not empty, else the embedded store.
    fn read(get: &Lookup<'_>) -> Result<Self, SettingsError> {
        let variables = StorageVariables::read(get)?;
        Ok(match variables.database_url {
            Some(url) => Self::Postgres {
                url: url.expose().to_owned(),
                max_connections: variables.max_connections,
            },
            None => Self::Embedded(EmbeddedSettings {
                data_dir: variables.data_dir,
                durability: variables.durability,
                readers: variables.max_connections,
            }),
        })
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self::read(&|_| None).expect("the declared defaults are valid")
    }
}

settings_group! {
    /// The relay of integration events to NATS JetStream.
    pub struct NatsSettings {
        /// Unset or empty disables the relay (events then fan out in process only).
        url: Option<String> = URL(
            "NATS_URL",
            "",
            optional_text,
            "JetStream for integration events; unset or empty: relay disabled, events fan out in process only"
        );
        stream: String = STREAM("KEYLEDGER_NATS_STREAM", "AUTH_EVENTS", text, "JetStream stream name");
        subject_prefix: String = SUBJECT_PREFIX(
            "KEYLEDGER_NATS_SUBJECT_PREFIX",
            "auth.events",
            text,
            "subjects are <prefix>.<aggregate>.<EventType>"
        );
    }
}

settings_group! {
    /// Access tokens: what they claim, how long they live, the keys that sign and
    /// verify them.
    pub struct TokenSettings {
        issuer: String = ISSUER("KEYLEDGER_ISSUER", "keyledger", text, "iss claim of access tokens");
        audience: String = AUDIENCE("KEYLEDGER_AUDIENCE", "keyledger", text, "aud claim of access tokens");
        access_ttl: Duration = ACCESS_TTL(
            "KEYLEDGER_ACCESS_TOKEN_TTL_SECS", "900", positive_secs, "access-token lifetime");
        verified_cache_entries: usize = VERIFIED_CACHE_ENTRIES(
            "KEYLEDGER_TOKEN_CACHE_ENTRIES",
            "10000",
            parsed,
            "access tokens remembered after their signature was checked (by SHA-256, never \
             the token), so a token checked again skips the signature; expiry, key windows \
             and revocation are still checked every time (0: off)"
        );
        signing_key: Option<Secret> = SIGNING_KEY(
            "KEYLEDGER_SIGNING_KEY",
            "",
            secret,
            "PASERK k4.secret signing key; wins over the key file"
        );
        /// Created with a fresh key when missing on the embedded store only
        /// (PostgreSQL mode needs it configured).
        signing_key_file: PathBuf = SIGNING_KEY_FILE(
            "KEYLEDGER_SIGNING_KEY_FILE",
            "<KEYLEDGER_DATA_DIR>/signing-key.paserk",
            key_file(SIGNING_KEY_FILE),
            "signing key file; generated when missing on the embedded store, required with DATABASE_URL"
        );
        /// Each verifies for one access-token lifetime (+ the clock skew) after the
        /// server starts.
        verification_keys: Vec<String> = VERIFICATION_KEYS(
            "KEYLEDGER_VERIFICATION_KEYS",
            "",
            list,
            "retired PASERK k4.public keys, accepted for one token lifetime after start"
        );
        /// Without it, the key is read from `<signing key file>.es256.pem`
        /// (created when missing).
        es256_key: Option<Secret> = ES256_KEY(
            "KEYLEDGER_ES256_KEY",
            "",
            nonblank_secret,
            "PKCS#8 PEM P-256 key signing ES256 JWTs; wins over <KEYLEDGER_SIGNING_KEY_FILE>.es256.pem"
        );
        /// Without it, the key is read from `<signing key file>.rs256.pem`
        /// (created when missing).
        rs256_key: Option<Secret> = RS256_KEY(
            "KEYLEDGER_RS256_KEY",
            "",
            nonblank_secret,
            "PKCS#8 PEM RSA key (2048 bits or more) signing RS256 JWTs; wins over <KEYLEDGER_SIGNING_KEY_FILE>.rs256.pem"
        );
    }
}

settings_group! {
    /// Sessions: how long they live and how many an account may have.
    pub struct SessionSettings {
        ttl: Duration = TTL(
            "KEYLEDGER_SESSION_TTL_SECS", "2592000", positive_secs, "absolute session lifetime");
        idle_timeout: Option<Duration> = IDLE_TIMEOUT(
            "KEYLEDGER_SESSION_IDLE_TIMEOUT_SECS",
            "0",
            secs_or_off,
            "a session not refreshed within this long cannot be refreshed (0: off)"
        );
        refresh_reuse_grace: Duration = REFRESH_REUSE_GRACE(
            "KEYLEDGER_REFRESH_REUSE_GRACE_SECS",
            "10",
            secs,
            "a rotated refresh token presented again within this long is a retry of a lost \
             answer and gets a fresh pair, not a revoked session (0: off)"
        );
        max_per_user: usize = MAX_PER_USER(
            "KEYLEDGER_MAX_SESSIONS_PER_USER",
            "0",
            parsed,
            "live sessions per account; a login beyond it ends the oldest (0: no cap)"
        );
        /// How recent the caller's login must be to suspend, erase or demote
        /// another platform administrator, or erase oneself as one.
        reauth_window: Duration = REAUTH_WINDOW(
            "KEYLEDGER_REAUTH_WINDOW_SECS",
            "300",
            positive_secs,
            "how recent a platform admin's login must be to remove another admin"
        );
    }
}

/// `off`, `optional` or `required`.
fn email_verification(
    get: &Lookup<'_>,
    var: &Variable,
) -> Result<EmailVerification, SettingsError> {
    let value = get(var.name).unwrap_or_else(|| var.default.to_owned());
    match value.trim() {
        "off" => Ok(EmailVerification::Off),
        "optional" => Ok(EmailVerification::Optional),
        "required" => Ok(EmailVerification::Required),
        _ => Err(var.invalid(value, "expected off, optional or required")),
    }
}

settings_group! {
    /// Addresses proved by mail, and getting back into an account by mail.
    pub struct EmailFlowSettings {
        verification: EmailVerification = VERIFICATION(
            "KEYLEDGER_EMAIL_VERIFICATION",
            "optional",
            email_verification,
            "off: no verification mail, registration answers 201/409; optional: registration \
             mails a verification link and answers 202 for new and taken addresses alike; \
             required: as optional, and login refuses an unverified address (403 \
             email_not_verified)"
        );
        verification_ttl: Duration = VERIFICATION_TTL(
            "KEYLEDGER_EMAIL_VERIFICATION_TTL_SECS",
            "86400",
            positive_secs,
            "how long a verification link (or an address-change link) works"
        );
        reset_ttl: Duration = RESET_TTL(
            "KEYLEDGER_PASSWORD_RESET_TTL_SECS",
            "900",
            positive_secs,
            "how long a password-reset link works"
        );
        interval: Duration = INTERVAL(
            "KEYLEDGER_MAIL_INTERVAL_SECS",
            "60",
            secs,
            "least time between two mails of one kind to one account; requests within it \
             are answered alike and mail nothing"
        );
        max_age: Duration = MAX_AGE(
            "KEYLEDGER_MAIL_MAX_AGE_SECS",
            "86400",
            positive_secs,
            "an event older than this when the mail queue reads it gets no mail (a first \
             start on an old log, a restored backup)"
        );
        login: bool = LOGIN(
            "KEYLEDGER_EMAIL_LOGIN",
            "off",
            on_off,
            "on: an account can sign in with a link or a six-digit code mailed to its address \
             (POST /v1/auth/email-login); off: those routes answer 404 email_login_disabled"
        );
        login_ttl: Duration = LOGIN_TTL(
            "KEYLEDGER_EMAIL_LOGIN_TTL_SECS",
            "600",
            positive_secs,
            "how long a mailed sign-in link and code work"
        );
    }
}

settings_group! {
    /// Second factors.
    pub struct SecondFactorSettings {
        token_ttl: Duration = TOKEN_TTL(
            "KEYLEDGER_MFA_TOKEN_TTL_SECS",
            "300",
            positive_secs,
            "how long a login may wait for its second factor (the mfa_token's life)"
        );
        totp_issuer: String = TOTP_ISSUER(
            "KEYLEDGER_TOTP_ISSUER",
            "Keyledger",
            text,
            "the issuer an authenticator app shows beside the account's codes"
        );
        sms_webhook_url: Option<String> = SMS_WEBHOOK_URL(
            "KEYLEDGER_SMS_WEBHOOK_URL",
            "",
            optional_text,
            "where text messages (SMS second factors' codes) are POSTed as signed JSON; unset: \
             they are written as files into <KEYLEDGER_DATA_DIR>/sms-outbox"
        );
        sms_webhook_secret: Option<Secret> = SMS_WEBHOOK_SECRET(
            "KEYLEDGER_SMS_WEBHOOK_SECRET",
            "",
            nonblank_secret,
            "the HMAC-SHA256 key of the webhook's X-Keyledger-Signature header (required with \
             the URL; never printed)"
        );
        sms_timeout: Duration = SMS_TIMEOUT(
            "KEYLEDGER_SMS_TIMEOUT_SECS",
            "10",
            positive_secs,
            "how long one webhook request may take before it is retried"
        );
    }
}

/// The relying party's id: a domain name (no scheme, port or path).
fn rp_id(get: &Lookup<'_>, var: &Variable) -> Result<String, SettingsError> {
    let value = text(get, var)?.trim().to_ascii_lowercase();
    let valid = !value.is_empty()
        && value.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid {
        Ok(value)
    } else {
        Err(var.invalid(
            value,
            "expected a domain name such as example.com (no scheme, port or path)",
        ))
    }
}

/// Comma-separated origins (scheme, host, optional port) whose pages may run
/// passkey ceremonies; each must be the RP id or a subdomain of it, since a
/// browser refuses every ceremony from any other.
fn webauthn_origins(get: &Lookup<'_>, var: &Variable) -> Result<Vec<url::Url>, SettingsError> {
    let rp_id = rp_id(get, &WebauthnSettings::RP_ID)?;
    let value = text(get, var)?;
    let mut origins = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let origin = url::Url::parse(item)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some())
            .filter(|u| u.path() == "/" && u.query().is_none() && u.fragment().is_none())
            .ok_or_else(|| {
                var.invalid(item, "expected an origin such as https://app.example.com")
            })?;
        let host = origin.host_str().unwrap_or_default();
        if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
            return Err(var.invalid(
                item,
                format!(
                    "the origin is not KEYLEDGER_WEBAUTHN_RP_ID ({rp_id}) or a subdomain of it"
                ),
            ));
        }
        origins.push(origin);
    }
    if origins.is_empty() {
        return Err(var.invalid(value, "at least one origin is needed"));
    }
    Ok(origins)
}

settings_group! {
    /// Passkeys (WebAuthn).
    pub struct WebauthnSettings {
        rp_id: String = RP_ID(
            "KEYLEDGER_WEBAUTHN_RP_ID",
            "localhost",
            rp_id,
            "the relying party id passkeys are bound to: the domain of the sign-in pages or a \
             parent of it (changing it later orphans every passkey)"
        );
        origins: Vec<url::Url> = ORIGINS(
            "KEYLEDGER_WEBAUTHN_ORIGINS",
            "http://localhost:8080",
            webauthn_origins,
            "comma-separated origins whose pages may register and use passkeys; each must be the \
             RP id or a subdomain of it (start-up refuses any other)"
        );
        rp_name: String = RP_NAME(
            "KEYLEDGER_WEBAUTHN_RP_NAME",
            "Keyledger",
            text,
            "the name an authenticator shows beside a passkey"
        );
        ceremony_ttl: Duration = CEREMONY_TTL(
            "KEYLEDGER_WEBAUTHN_CEREMONY_TTL_SECS",
            "300",
            positive_secs,
            "how long a passkey ceremony may take between its start and its finish"
        );
        /// Unset: any passkey may be registered (attestation `none`).
        attestation_allowlist: Option<PathBuf> = ATTESTATION_ALLOWLIST(
            "KEYLEDGER_WEBAUTHN_ATTESTATION_ALLOWLIST",
            "",
            optional_path,
            "a JSON file listing the only authenticator models that may be registered, each \
             {\"aaguid\", \"description\", \"root_ca\": PEM of its vendor's attestation root}; \
             unset: any passkey (no attestation asked)"
        );
    }
}

/// Comma-separated origins (`scheme://host[:port]`), each parsed.
fn origins(get: &Lookup<'_>, var: &Variable) -> Result<Vec<url::Url>, SettingsError> {
    let mut parsed = Vec::new();
    for origin in list(get, var)? {
        let url = url::Url::parse(&origin).map_err(|e| var.invalid(origin.clone(), e))?;
        let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
        if !matches!(url.scheme(), "http" | "https") || !bare || !url.username().is_empty() {
            return Err(var.invalid(
                origin,
                "an origin is scheme://host[:port], http or https, with no path",
            ));
        }
        parsed.push(url);
    }
    Ok(parsed)
}

settings_group! {
    /// Browser sessions: cookies, and which other origins' pages may call.
    pub struct BrowserSettings {
        cors_origins: Vec<url::Url> = CORS_ORIGINS(
            "KEYLEDGER_CORS_ORIGINS",
            "",
            origins,
            "comma-separated origins (https://app.example) whose pages may call the API with \
             credentials (CORS), matched exactly; every other origin gets no CORS header"
        );
        cors_max_age: Duration = CORS_MAX_AGE(
            "KEYLEDGER_CORS_MAX_AGE_SECS",
            "600",
            secs,
            "how long a browser may cache a preflight's answer"
        );
    }
}

settings_group! {
    /// The hosted pages (sign-in, sign-up, email links, account): whether they are
    /// served, how they look, and where they may send the browser back to.
    pub struct PagesSettings {
        enabled: bool = PAGES(
            "KEYLEDGER_PAGES",
            "on",
            on_off,
            "serve the hosted sign-in, sign-up, email-link and account pages (on|off); \
             the JSON API is the same either way"
        );
        logo_url: Option<url::Url> = LOGO_URL(
            "KEYLEDGER_PAGES_LOGO_URL",
            "",
            logo_url,
            "the logo the pages show (https, or a path on this server); its origin is the \
             only other one the pages' policy lets images come from"
        );
        accent_color: String = ACCENT_COLOR(
            "KEYLEDGER_PAGES_ACCENT_COLOR",
            "#1d4ed8",
            accent_color,
            "the pages' accent colour, #rrggbb (buttons and links; keep it dark enough for \
             white text, 4.5:1)"
        );
        return_urls: Vec<url::Url> = RETURN_URLS(
            "KEYLEDGER_PAGES_RETURN_URLS",
            "",
            app_urls,
            "comma-separated app URLs the pages may send the browser back to after \
             sign-in (`return_to`), matched exactly but for the query (https, http only on \
             loopback); paths on this server are always allowed"
        );
    }
}

/// The base a logo given as a path on this server is kept under (a reserved
/// name no real logo can have: RFC 2606).
pub const LOCAL_LOGO_BASE: &str = "http://keyledger.invalid";

/// A logo's address: absolute https (or loopback http), or a path on this server
/// (kept under [`LOCAL_LOGO_BASE`]).
fn logo_url(get: &Lookup<'_>, var: &Variable) -> Result<Option<url::Url>, SettingsError> {
    let Some(value) = optional_text(get, var)? else {
        return Ok(None);
    };
    if value.starts_with('/') && !value.starts_with("//") {
        return url::Url::parse(LOCAL_LOGO_BASE)
            .and_then(|base| base.join(&value))
            .map(Some)
            .map_err(|e| var.invalid(value.clone(), e));
    }
    let parsed = url::Url::parse(&value).map_err(|e| var.invalid(value.clone(), e))?;
    let secure = parsed.scheme() == "https" || (parsed.scheme() == "http" && is_loopback(&parsed));
    if !secure || !parsed.username().is_empty() {
        return Err(var.invalid(
            value,
            "a logo URL is https (http only on loopback) or /a/path",
        ));
    }
    Ok(Some(parsed))
}

/// `#rrggbb`, kept lower-case.
fn accent_color(get: &Lookup<'_>, var: &Variable) -> Result<String, SettingsError> {
    let value = text(get, var)?;
    let hex = value.strip_prefix('#').unwrap_or_default();
    if hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(var.invalid(value, "a colour is #rrggbb"))
    }
}

/// App URLs a browser may be sent back to: https (http only on loopback), no
/// fragment, no credentials.
fn app_urls(get: &Lookup<'_>, var: &Variable) -> Result<Vec<url::Url>, SettingsError> {
    let mut parsed = Vec::new();
    for value in list(get, var)? {
        let url = url::Url::parse(&value).map_err(|e| var.invalid(value.clone(), e))?;
        let secure = url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url));
        if !secure || url.fragment().is_some() || !url.username().is_empty() {
            return Err(var.invalid(
                value,
                "an app URL is https (http only on loopback), without a #fragment",
            ));
        }
        parsed.push(url);
    }
    Ok(parsed)
}

settings_group! {
    /// Social login (OAuth 2.0 and OpenID Connect providers): what every provider
    /// shares. Each provider named in `KEYLEDGER_OAUTH_PROVIDERS` has its own
    /// variables ([`PROVIDER_VARIABLES`]).
    pub struct OAuthVariables {
        providers: Vec<String> = PROVIDERS(
            "KEYLEDGER_OAUTH_PROVIDERS",
            "",
            list,
            "comma-separated names of the sign-in providers (google, microsoft, github, kakao, \
             naver, or a name of your own for any OpenID provider), each configured by its \
             KEYLEDGER_OAUTH_<NAME>_* variables; the name is the {provider} of the routes"
        );
        redirect_uris: Vec<String> = REDIRECT_URIS(
            "KEYLEDGER_OAUTH_REDIRECT_URIS",
            "",
            list,
            "comma-separated app URLs a social sign-in may return to, matched exactly \
             (https, http only on loopback, or an app's own scheme)"
        );
        flow_ttl: Duration = FLOW_TTL(
            "KEYLEDGER_OAUTH_FLOW_TTL_SECS",
            "600",
            positive_secs,
            "how long a sign-in may take at the provider (the state's life)"
        );
        code_ttl: Duration = CODE_TTL(
            "KEYLEDGER_OAUTH_CODE_TTL_SECS",
            "60",
            positive_secs,
            "how long the one-time code handed to the app works"
        );
        timeout: Duration = TIMEOUT(
            "KEYLEDGER_OAUTH_TIMEOUT_SECS",
            "10",
            positive_secs,
            "the longest one call to a provider may take"
        );
        breaker_failures: u32 = BREAKER_FAILURES(
            "KEYLEDGER_OAUTH_BREAKER_FAILURES",
            "5",
            positive,
            "consecutive failed calls to a provider after which its sign-in answers 503 \
             provider_unavailable at once"
        );
        breaker_cooldown: Duration = BREAKER_COOLDOWN(
            "KEYLEDGER_OAUTH_BREAKER_COOLDOWN_SECS",
            "30",
            positive_secs,
            "how long a provider is left alone after that before one call tries it again"
        );
    }
}

/// The variables of each provider `<NAME>` (its name in upper case, `-` as `_`).
pub const PROVIDER_VARIABLES: &[Variable] = &[
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_PRESET",
        default: "<name> if it is a preset, else oidc",
        meaning: "google, microsoft, github, kakao, naver (their documented endpoints and \
                  profiles), or oidc (any OpenID provider by its issuer)",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_CLIENT_ID",
        default: "",
        meaning: "the client id the provider gave (Kakao: the REST API key); required",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_CLIENT_SECRET",
        default: "",
        meaning: "the client secret the provider gave; never printed",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_ISSUER",
        default: "google: https://accounts.google.com",
        meaning: "the OpenID issuer URL (discovery); required for microsoft \
                  (https://login.microsoftonline.com/<tenant id>/v2.0) and oidc",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_SCOPES",
        default: "the preset's",
        meaning: "space- or comma-separated scopes to ask for",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_AUTHORIZE_URL",
        default: "the preset's",
        meaning: "github, kakao, naver: the authorization endpoint, instead of the documented one",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_TOKEN_URL",
        default: "the preset's",
        meaning: "github, kakao, naver: the token endpoint, instead of the documented one",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_USERINFO_URL",
        default: "the preset's",
        meaning: "github, kakao, naver: the user-info endpoint, instead of the documented one",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_DISPLAY_NAME",
        default: "the preset's, else <name>",
        meaning: "the provider's name as apps show it",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_TRUST_MFA",
        default: "off",
        meaning: "on: the provider's own second factor (amr mfa in its ID token) stands for the \
                  account's",
    },
    Variable {
        name: "KEYLEDGER_OAUTH_<NAME>_KEEP_TOKENS",
        default: "off",
        meaning: "on: keep the provider's access and refresh tokens, sealed with the person's \
                  data key, for POST /v1/users/me/identities/{id}/token",
    },
];

/// The suffixes of [`PROVIDER_VARIABLES`] (`_CLIENT_ID`, …).
fn provider_suffixes() -> impl Iterator<Item = &'static str> {
    PROVIDER_VARIABLES
        .iter()
        .filter_map(|v| v.name.strip_prefix("KEYLEDGER_OAUTH_<NAME>"))
}

/// Whether `name` is a provider's variable (`KEYLEDGER_OAUTH_<NAME>_CLIENT_ID`, …).
fn is_provider_variable(name: &str) -> bool {
    name.strip_prefix("KEYLEDGER_OAUTH_").is_some_and(|rest| {
        provider_suffixes().any(|suffix| {
            rest.strip_suffix(suffix)
                .is_some_and(|provider| !provider.is_empty())
        })
    })
}

/// One sign-in provider as configured; checked further (URLs, presets) when
/// the server builds its providers.
#[derive(Debug, Clone, Default)]
pub struct OAuthProviderSettings {
    pub name: String,
    pub preset: Option<String>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub issuer: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub display_name: Option<String>,
    pub trust_mfa: bool,
    pub keep_tokens: bool,
}

/// Social login: the shared settings and each provider's.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub providers: Vec<OAuthProviderSettings>,
    pub redirect_uris: Vec<url::Url>,
    pub flow_ttl: Duration,
    pub code_ttl: Duration,
    pub timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self::read(&|_| None).expect("the declared defaults are valid")
    }
}

/// Whether `url`'s host is this machine (plain http is allowed there only).
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl OAuthSettings {
    fn read(get: &Lookup<'_>) -> Result<Self, SettingsError> {
        let variables = OAuthVariables::read(get)?;
        let mut redirect_uris = Vec::new();
        for uri in &variables.redirect_uris {
            let var = &OAuthVariables::REDIRECT_URIS;
            let parsed = url::Url::parse(uri).map_err(|e| var.invalid(uri.clone(), e))?;
            let insecure = parsed.scheme() == "http" && !is_loopback(&parsed);
            if insecure
                || parsed.fragment().is_some()
                || matches!(parsed.scheme(), "javascript" | "data" | "file")
            {
                return Err(var.invalid(
                    uri.clone(),
                    "an app URL must be https (http only on loopback), or an app's own scheme, \
                     without a #fragment",
                ));
            }
            redirect_uris.push(parsed);
        }
        let mut providers = Vec::new();
        for name in &variables.providers {
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                || name.is_empty()
                || name.len() > 32
            {
                return Err(OAuthVariables::PROVIDERS.invalid(
                    variables.providers.join(","),
                    format!("{name:?}: a provider's name is 1 to 32 of a-z, 0-9 and -"),
                ));
            }
            if providers
                .iter()
                .any(|p: &OAuthProviderSettings| &p.name == name)
            {
                return Err(OAuthVariables::PROVIDERS.invalid(
                    variables.providers.join(","),
                    format!("{name} is named twice"),
                ));
            }
            providers.push(read_provider(get, name)?);
        }
        Ok(Self {
            providers,
            redirect_uris,
            flow_ttl: variables.flow_ttl,
            code_ttl: variables.code_ttl,
            timeout: variables.timeout,
            breaker_failures: variables.breaker_failures,
            breaker_cooldown: variables.breaker_cooldown,
        })
    }
}

/// Reads provider `name`'s variables.
fn read_provider(get: &Lookup<'_>, name: &str) -> Result<OAuthProviderSettings, SettingsError> {
    let prefix = format!(
        "KEYLEDGER_OAUTH_{}",
        name.to_ascii_uppercase().replace('-', "_")
    );
    let var = |suffix: &str| {
        PROVIDER_VARIABLES
            .iter()
            .find(|v| v.name.ends_with(suffix))
            .expect("a declared provider variable")
    };
    let value = |suffix: &str| {
        get(&format!("{prefix}{suffix}"))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let switch = |suffix: &str| -> Result<bool, SettingsError> {
        match value(suffix).map(|v| v.to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if v == "on" => Ok(true),
            Some(v) if v == "off" => Ok(false),
            Some(v) => Err(var(suffix).invalid(v, format!("{prefix}{suffix} must be on or off"))),
        }
    };
    let client_id = value("_CLIENT_ID").ok_or_else(|| {
        var("_CLIENT_ID").invalid(
            "",
            format!("{prefix}_CLIENT_ID is required for provider {name}"),
        )
    })?;
    Ok(OAuthProviderSettings {
        name: name.to_owned(),
        preset: value("_PRESET").map(|p| p.to_ascii_lowercase()),
        client_id,
        // Never trimmed or echoed: a secret as given.
        client_secret: get(&format!("{prefix}_CLIENT_SECRET"))
            .filter(|v| !v.trim().is_empty())
            .map(Secret::new),
        issuer: value("_ISSUER"),
        scopes: value("_SCOPES").map(|v| {
            v.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        authorize_url: value("_AUTHORIZE_URL"),
        token_url: value("_TOKEN_URL"),
        userinfo_url: value("_USERINFO_URL"),
        display_name: value("_DISPLAY_NAME"),
        trust_mfa: switch("_TRUST_MFA")?,
        keep_tokens: switch("_KEEP_TOKENS")?,
    })
}

settings_group! {
    /// Organizations.
    pub struct OrganizationSettings {
        invitation_ttl: Duration = INVITATION_TTL(
            "KEYLEDGER_INVITATION_TTL_SECS",
            "604800",
            positive_secs,
            "how long an invitation to an organization can be accepted"
        );
    }
}

settings_group! {
    /// Passwords: the hash's cost, how many are computed at once, and the
    /// breached-password check.
    pub struct PasswordSettings {
        argon2_memory_kib: u32 = ARGON2_MEMORY_KIB(
            "KEYLEDGER_ARGON2_MEMORY_KIB", "19456", positive, "Argon2id memory (KiB)");
        argon2_iterations: u32 = ARGON2_ITERATIONS(
            "KEYLEDGER_ARGON2_ITERATIONS", "2", positive, "Argon2id iterations");
        argon2_parallelism: u32 = ARGON2_PARALLELISM(
            "KEYLEDGER_ARGON2_PARALLELISM", "1", positive, "Argon2id lanes");
        hash_concurrency: usize = HASH_CONCURRENCY(
            "KEYLEDGER_HASH_CONCURRENCY", "<cores>", cores, "password hashes computed at once");
        hash_queue: usize = HASH_QUEUE(
            "KEYLEDGER_HASH_QUEUE", "256", parsed, "password hashes waiting; more answer 503");
        /// By default half of the hash concurrency, so one client never holds the
        /// whole pool.
        hash_concurrency_per_client: usize = HASH_CONCURRENCY_PER_CLIENT(
            "KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT",
            "<half of KEYLEDGER_HASH_CONCURRENCY, at least 1>",
            |get: &Lookup<'_>, var: &Variable| match get(var.name) {
                None => Ok(keyledger_commands::hasher::default_per_client(cores(
                    get,
                    &Self::HASH_CONCURRENCY,
                )?)),
                Some(_) => positive(get, var),
            },
            "password hashes one client address (IPv6: its /64) may have queued or running \
             at once; more answer 429 too_many_concurrent_attempts"
        );
        /// Base of a k-anonymity range API of breached passwords
        /// (`{base}/range/{prefix}`); `None` skips the check.
        breached_url: Option<String> = BREACHED_URL(
            "KEYLEDGER_BREACHED_PASSWORDS_URL",
            "",
            optional_text,
            "base URL of a breached-password range API, Have I Been Pwned shape (e.g. \
             https://api.pwnedpasswords.com); only a 5-hex SHA-1 prefix is sent; unset: no check"
        );
        breached_timeout: Duration = BREACHED_TIMEOUT(
            "KEYLEDGER_BREACHED_PASSWORDS_TIMEOUT_MS",
            "2000",
            positive_millis,
            "how long a breached-password check may take"
        );
        /// `open` accepts a password the range API could not judge, `closed`
        /// refuses the request with 503.
        breached_fail_closed: bool = BREACHED_FAIL(
            "KEYLEDGER_BREACHED_PASSWORDS_FAIL",
            "open",
            fail_closed,
            "open: accept a password the range API could not judge; closed: answer 503"
        );
    }
}

settings_group! {
    /// Guessing passwords: lockout, progressive delays and the spraying throttle.
    pub struct LockoutSettings {
        max_failures: u32 = MAX_FAILURES(
            "KEYLEDGER_LOCKOUT_MAX_FAILURES",
            "5",
            positive,
            "consecutive failures that lock an account"
        );
        duration: Duration = DURATION("KEYLEDGER_LOCKOUT_SECS", "1800", positive_secs, "lockout duration");
        /// The delay of the answer to the third consecutive failure, doubling for
        /// each further one before the lockout.
        delay: Duration = DELAY(
            "KEYLEDGER_LOCKOUT_DELAY_MS",
            "1000",
            millis,
            "progressive delay before the lockout: the answer to the third consecutive \
             failure waits this long, each further one twice as long; 0 disables"
        );
        spray_accounts: usize = SPRAY_ACCOUNTS(
            "KEYLEDGER_SPRAY_ACCOUNTS",
            "20",
            parsed,
            "distinct accounts failed with one password from one client address within \
             KEYLEDGER_SPRAY_WINDOW_SECS that throttle the address (429); 0 disables"
        );
        spray_window: Duration = SPRAY_WINDOW(
            "KEYLEDGER_SPRAY_WINDOW_SECS",
            "900",
            positive_secs,
            "password-spraying window, and how long a sprayer is throttled"
        );
    }
}

settings_group! {
    /// Rate limits by route class (see `rate_limit::Class`).
    pub struct RateLimitSettings {
        per_second: u64 = PER_SECOND(
            "KEYLEDGER_RATE_LIMIT_PER_SECOND",
            "20",
            parsed,
            "per-client requests per second on the credential routes: login, register, password, \
             token, refresh, logout, switch-organization, DELETE /v1/users/me (IPv6 clients by /64; 0 disables)"
        );
        burst: u32 = BURST(
            "KEYLEDGER_RATE_LIMIT_BURST",
            "50",
            positive,
            "per-client burst on the credential routes"
        );
        account_per_minute: u32 = ACCOUNT_PER_MINUTE(
            "KEYLEDGER_RATE_LIMIT_ACCOUNT_PER_MINUTE",
            "10",
            parsed,
            "failed credential attempts per account (email, client id) per minute from all \
             addresses; an address that logged in to the account before is exempt (0 disables)"
        );
        token_checks_per_second: u64 = TOKEN_CHECKS_PER_SECOND(
            "KEYLEDGER_RATE_LIMIT_TOKEN_CHECKS_PER_SECOND",
            "20000",
            parsed,
            "per-client requests per second (and burst) on validate, authorize, permissions, keys (0 disables)"
        );
        management_per_second: u64 = MANAGEMENT_PER_SECOND(
            "KEYLEDGER_RATE_LIMIT_MANAGEMENT_PER_SECOND",
            "50",
            parsed,
            "per-subject (per-client when anonymous) requests per second (and burst) on organizations, \
             admin, audit, me, sessions, invitations (0 disables)"
        );
    }
}

settings_group! {
    /// The audit trail's signed checkpoints.
    pub struct AuditSettings {
        /// Never stored in the database, or checkpoints would prove nothing.
        key: Option<Secret> = KEY(
            "KEYLEDGER_AUDIT_KEY",
            "",
            nonblank_secret,
            "PASERK k4.secret audit key signing chain checkpoints; wins over the key file"
        );
        key_file: PathBuf = KEY_FILE(
            "KEYLEDGER_AUDIT_KEY_FILE",
            "<KEYLEDGER_DATA_DIR>/audit-key.paserk",
            key_file(AUDIT_KEY_FILE),
            "audit key file, generated when missing; keep it out of the database's reach (outside the data directory)"
        );
        /// `None` (0) means this node never signs.
        checkpoint_interval: Option<Duration> = CHECKPOINT_INTERVAL(
            "KEYLEDGER_CHAIN_CHECKPOINT_SECS",
            "60",
            secs_or_off,
            "seconds between signed chain checkpoints (0: this node does not sign)"
        );
    }
}

settings_group! {
    /// The keys that protect personal data at rest. Never stored in the database:
    /// a copy of it would otherwise open every person's data, or reverse the email
    /// digests by guessing.
    pub struct PersonalDataSettings {
        /// Keys the digests that stand for email addresses in `email_claims`.
        email_index_key: Option<Secret> = EMAIL_INDEX_KEY(
            "KEYLEDGER_EMAIL_INDEX_KEY",
            "",
            nonblank_secret,
            "32 bytes, unpadded base64url, keying the email index; wins over the key file"
        );
        email_index_key_file: PathBuf = EMAIL_INDEX_KEY_FILE(
            "KEYLEDGER_EMAIL_INDEX_KEY_FILE",
            "<KEYLEDGER_DATA_DIR>/email-index.key",
            key_file(EMAIL_INDEX_KEY_FILE),
            "email index key file, generated when missing; never in the database"
        );
        /// One or more keys (separated by commas or whitespace); the first wraps,
        /// the others (retired) only unwrap.
        data_key_wrapping_key: Option<Secret> = DATA_KEY_WRAPPING_KEY(
            "KEYLEDGER_DATA_KEY_WRAPPING_KEY",
            "",
            nonblank_secret,
            "32 bytes, unpadded base64url, wrapping the per-person data keys; several separated by commas: the first wraps, the rest only unwrap (rotation); wins over the key file"
        );
        data_key_wrapping_key_file: PathBuf = DATA_KEY_WRAPPING_KEY_FILE(
            "KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE",
            "<KEYLEDGER_DATA_DIR>/data-key-wrapping.key",
            key_file(DATA_KEY_WRAPPING_KEY_FILE),
            "data key wrapping key file (one key per line, the first wraps), generated when missing; never in the database"
        );
    }
}

settings_group! {
    /// The variables of mail delivery; [`MailConfig`] is what they mean together.
    struct MailVariables {
        /// Never echoed in an error: it may hold a password.
        smtp_url: Option<SmtpUrl> = SMTP_URL(
            "KEYLEDGER_SMTP_URL",
            "",
            smtp_url,
            "SMTP server: smtp://host:port (plain), smtp+starttls://host:port (STARTTLS required) \
             or smtps://host:port (implicit TLS), optionally user:password@ (%-encoded); \
             unset: mails are written as .eml files to <KEYLEDGER_DATA_DIR>/outbox/"
        );
        from: String = FROM(
            "KEYLEDGER_MAIL_FROM",
            "Keyledger <no-reply@localhost>",
            text,
            "the From of every mail, Name <address>"
        );
        timeout: Duration = SMTP_TIMEOUT(
            "KEYLEDGER_SMTP_TIMEOUT_SECS",
            "10",
            positive_secs,
            "the longest one mail's hand-over to the SMTP server may take, connecting and greeting included"
        );
        root_cert_file: Option<PathBuf> = SMTP_ROOT_CERT_FILE(
            "KEYLEDGER_SMTP_ROOT_CERT_FILE",
            "",
            optional_path,
            "PEM file of extra root certificates to trust for the SMTP server's TLS (a private CA), besides the built-in web PKI roots"
        );
        templates_dir: Option<PathBuf> = TEMPLATES_DIR(
            "KEYLEDGER_MAIL_TEMPLATES_DIR",
            "",
            optional_path,
            "directory of mail templates replacing the built-in ones of the same file name, checked at start"
        );
        public_url: String = PUBLIC_URL(
            "KEYLEDGER_PUBLIC_URL",
            "http://<KEYLEDGER_BIND>",
            public_url,
            "the server's public base URL (http:// or https://), for the links in mails"
        );
        product_name: String = PRODUCT_NAME(
            "KEYLEDGER_PRODUCT_NAME", "Keyledger", text, "the product's name in mails");
        support_email: String = SUPPORT_EMAIL(
            "KEYLEDGER_SUPPORT_EMAIL",
            "",
            text,
            "where mails tell recipients to ask for help; empty: mails leave that line out"
        );
        max_attempts: u32 = MAX_ATTEMPTS(
            "KEYLEDGER_MAIL_MAX_ATTEMPTS",
            "8",
            positive,
            "attempts to hand one mail over before it is given up"
        );
        retry: Duration = RETRY(
            "KEYLEDGER_MAIL_RETRY_SECS",
            "5",
            positive_secs,
            "wait before the first retry of a mail that failed transiently, doubling for each further one, at most 1 hour"
        );
    }
}

/// Mail: where mails go and what they say ([`keyledger_mail::MailSettings`]), and
/// how often a mail that could not be handed over is tried again.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// KEYLEDGER_SMTP_URL (unset: files in `<KEYLEDGER_DATA_DIR>/outbox`),
    /// KEYLEDGER_MAIL_FROM, KEYLEDGER_SMTP_TIMEOUT_SECS,
    /// KEYLEDGER_SMTP_ROOT_CERT_FILE, KEYLEDGER_MAIL_TEMPLATES_DIR,
    /// KEYLEDGER_PUBLIC_URL, KEYLEDGER_PRODUCT_NAME, KEYLEDGER_SUPPORT_EMAIL.
    pub delivery: keyledger_mail::MailSettings,
    /// KEYLEDGER_MAIL_MAX_ATTEMPTS: attempts before a mail is given up.
    pub max_attempts: u32,
    /// KEYLEDGER_MAIL_RETRY_SECS: the wait before the first retry.
    pub retry: Duration,
}

/// The longest wait between two attempts of one mail.
pub const MAIL_RETRY_CAP: Duration = Duration::from_secs(3600);

impl MailConfig {
    /// The wait after the `failures`-th failed attempt (1 for the first): `retry`,
    /// doubling each time, at most [`MAIL_RETRY_CAP`].
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.retry
            .saturating_mul(1u32 << doublings)
            .min(MAIL_RETRY_CAP)
    }

    fn read(get: &Lookup<'_>) -> Result<Self, SettingsError> {
        let variables = MailVariables::read(get)?;
        let data_dir = directory(get, &StorageVariables::DATA_DIR)?;
        Ok(Self {
            delivery: keyledger_mail::MailSettings {
                smtp: variables.smtp_url,
                from: variables.from,
                send_timeout: variables.timeout,
                outbox_dir: data_dir.join("outbox"),
                templates_dir: variables.templates_dir,
                extra_root_pem: variables.root_cert_file,
                product_name: variables.product_name,
                support_address: variables.support_email,
                public_url: variables.public_url,
            },
            max_attempts: variables.max_attempts,
            retry: variables.retry,
        })
    }
}

impl Default for MailConfig {
    fn default() -> Self {
        Self::read(&|_| None).expect("the declared defaults are valid")
    }
}

settings_group! {
    /// Logs. Read by `keyledger` itself before anything else, so that reading the
    /// other settings can be logged.
    pub struct LogSettings {
        filter: String = FILTER(
            "KEYLEDGER_LOG", "info,sqlx=warn", text, "log filter (tracing EnvFilter syntax)");
        format: String = FORMAT("KEYLEDGER_LOG_FORMAT", "text", text, "text or json");
    }
}

/// Every variable, by group (the tables of `docs/configuration.md` follow the
/// same groups). The same names are accepted as keys of a `--config` TOML file;
/// environment variables win over the file.
pub const GROUPS: &[(&str, &[Variable])] = &[
    ("server", ServerSettings::VARIABLES),
    ("storage", StorageVariables::VARIABLES),
    ("NATS", NatsSettings::VARIABLES),
    ("tokens", TokenSettings::VARIABLES),
    ("sessions", SessionSettings::VARIABLES),
    ("organizations", OrganizationSettings::VARIABLES),
    ("email flows", EmailFlowSettings::VARIABLES),
    ("second factors", SecondFactorSettings::VARIABLES),
    ("passkeys", WebauthnSettings::VARIABLES),
    ("browser sessions", BrowserSettings::VARIABLES),
    ("hosted pages", PagesSettings::VARIABLES),
    ("social login", OAuthVariables::VARIABLES),
    ("social login, per provider", PROVIDER_VARIABLES),
    ("passwords", PasswordSettings::VARIABLES),
    ("lockout", LockoutSettings::VARIABLES),
    ("rate limits", RateLimitSettings::VARIABLES),
    ("audit", AuditSettings::VARIABLES),
    ("personal data", PersonalDataSettings::VARIABLES),
    ("mail", MailVariables::VARIABLES),
    ("logs", LogSettings::VARIABLES),
];

/// Every variable.
pub fn variables() -> impl Iterator<Item = &'static Variable> {
    GROUPS.iter().flat_map(|(_, variables)| variables.iter())
}

/// `KEYLEDGER_*` variables that are no setting of the server but belong to the same
/// deployment: the auditor's tool (`keyledger-replay`) reads them.
const OTHER_TOOLS_VARIABLES: &[&str] = &["KEYLEDGER_AUDIT_PUBLIC_KEY"];

/// The `KEYLEDGER_*` names among `names` that are no setting, sorted: likely typos,
/// whose intended setting silently keeps its default. Only names, never values.
pub fn unknown_variables(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut unknown: Vec<String> = names
        .into_iter()
        .filter(|name| {
            name.starts_with("KEYLEDGER_")
                && !variables().any(|v| v.name == name)
                && !is_provider_variable(name)
                && !OTHER_TOOLS_VARIABLES.contains(&name.as_str())
        })
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
}

/// Every setting, by concern.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    /// DATABASE_URL (PostgreSQL), else the embedded store in KEYLEDGER_DATA_DIR.
    pub storage: StorageSettings,
    pub nats: NatsSettings,
    pub tokens: TokenSettings,
    pub sessions: SessionSettings,
    pub organizations: OrganizationSettings,
    pub email_flows: EmailFlowSettings,
    pub second_factors: SecondFactorSettings,
    pub webauthn: WebauthnSettings,
    pub oauth: OAuthSettings,
    pub browser: BrowserSettings,
    pub pages: PagesSettings,
    pub passwords: PasswordSettings,
    pub lockout: LockoutSettings,
    pub rate_limits: RateLimitSettings,
    pub audit: AuditSettings,
    pub personal_data: PersonalDataSettings,
    pub mail: MailConfig,
    pub log: LogSettings,
    /// The environment's `KEYLEDGER_*` variables that are no setting (see
    /// [`unknown_variables`]), warned about at start-up.
    pub unknown_variables: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_lookup(|_| None).expect("the declared defaults are valid")
    }
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
            trusted_proxies: self.server.trusted_proxies.clone(),
            header: self.server.forwarded_header,
        }
    }

    pub fn from_env() -> Result<Self, SettingsError> {
        Ok(Self {
            unknown_variables: unknown_in_env(),
            ..Self::from_lookup(|key| std::env::var(key).ok())?
        })
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
            if !variables().any(|v| v.name == key) && !is_provider_variable(&key) {
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
        Ok(Self {
            unknown_variables: unknown_in_env(),
            ..Self::from_lookup(|key| std::env::var(key).ok().or_else(|| file.get(key).cloned()))?
        })
    }

    /// Reads settings through `get` (the environment in production, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get: &Lookup<'_> = &get;
        Ok(Self {
            storage: StorageSettings::read(get)?,
            server: ServerSettings::read(get)?,
            nats: NatsSettings::read(get)?,
            tokens: TokenSettings::read(get)?,
            sessions: SessionSettings::read(get)?,
            organizations: OrganizationSettings::read(get)?,
            email_flows: EmailFlowSettings::read(get)?,
            second_factors: SecondFactorSettings::read(get)?,
            webauthn: WebauthnSettings::read(get)?,
            oauth: OAuthSettings::read(get)?,
            browser: BrowserSettings::read(get)?,
            pages: PagesSettings::read(get)?,
            passwords: PasswordSettings::read(get)?,
            lockout: LockoutSettings::read(get)?,
            rate_limits: RateLimitSettings::read(get)?,
            audit: AuditSettings::read(get)?,
            personal_data: PersonalDataSettings::read(get)?,
            mail: MailConfig::read(get)?,
            log: LogSettings::read(get)?,
            unknown_variables: Vec::new(),
        })
    }
}

/// The unknown `KEYLEDGER_*` variables of this process's environment (by name only:
/// a value may be a secret).
fn unknown_in_env() -> Vec<String> {
    unknown_variables(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()))
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
        assert_eq!(s.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.tokens.access_ttl, Duration::from_secs(900));
        assert_eq!(
            s.organizations.invitation_ttl,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(s.lockout.max_failures, 5);
        assert_eq!(s.passwords.argon2_memory_kib, 19_456);
    }

    #[test]
    fn cors_origins_are_bare_origins() {
        let s = from(&[(
            "KEYLEDGER_CORS_ORIGINS",
            "https://app.example, http://localhost:3000",
        )])
        .unwrap();
        assert_eq!(s.browser.cors_origins.len(), 2);
        for origin in [
            "https://app.example/path",
            "ftp://app.example",
            "*",
            "https://u@app.example",
        ] {
            let error = from(&[("KEYLEDGER_CORS_ORIGINS", origin)]).unwrap_err();
            assert_eq!(error.variable, "KEYLEDGER_CORS_ORIGINS", "{origin}");
        }
    }

    #[test]
    fn the_pages_brand_and_return_urls_are_checked() {
        let s = from(&[]).unwrap();
        assert!(s.pages.enabled);
        assert_eq!(s.pages.accent_color, "#1d4ed8");
        assert!(s.pages.logo_url.is_none() && s.pages.return_urls.is_empty());
        let s = from(&[
            ("KEYLEDGER_PAGES", "off"),
            ("KEYLEDGER_PAGES_ACCENT_COLOR", "#7B1FA2"),
            ("KEYLEDGER_PAGES_LOGO_URL", "/static/logo.svg"),
            (
                "KEYLEDGER_PAGES_RETURN_URLS",
                "https://app.example/after, http://127.0.0.1:3000/cb",
            ),
        ])
        .unwrap();
        assert!(!s.pages.enabled);
        assert_eq!(s.pages.accent_color, "#7b1fa2");
        assert_eq!(s.pages.logo_url.unwrap().path(), "/static/logo.svg");
        assert_eq!(s.pages.return_urls.len(), 2);
        for (variable, value) in [
            ("KEYLEDGER_PAGES_ACCENT_COLOR", "blue"),
            ("KEYLEDGER_PAGES_ACCENT_COLOR", "#12345"),
            ("KEYLEDGER_PAGES_ACCENT_COLOR", "#12345g"),
            ("KEYLEDGER_PAGES_ACCENT_COLOR", "#123456;}"),
            ("KEYLEDGER_PAGES_LOGO_URL", "http://cdn.example/logo.svg"),
            ("KEYLEDGER_PAGES_LOGO_URL", "//cdn.example/logo.svg"),
            ("KEYLEDGER_PAGES_LOGO_URL", "javascript:alert(1)"),
            ("KEYLEDGER_PAGES_RETURN_URLS", "http://app.example/after"),
            ("KEYLEDGER_PAGES_RETURN_URLS", "https://app.example/after#x"),
            ("KEYLEDGER_PAGES", "maybe"),
        ] {
            let error = from(&[(variable, value)]).unwrap_err();
            assert_eq!(error.variable, variable, "{value}");
        }
    }

    #[test]
    fn social_login_return_urls_are_https_or_loopback_and_providers_are_read_by_name() {
        let s = from(&[
            (
                "KEYLEDGER_OAUTH_REDIRECT_URIS",
                "https://app.example/done, http://127.0.0.1:9/cb, com.example.app:/oauth",
            ),
            ("KEYLEDGER_OAUTH_PROVIDERS", "google, corp-sso"),
            ("KEYLEDGER_OAUTH_GOOGLE_CLIENT_ID", "g-id"),
            ("KEYLEDGER_OAUTH_GOOGLE_CLIENT_SECRET", "g-s3cret"),
            ("KEYLEDGER_OAUTH_CORP_SSO_CLIENT_ID", "c-id"),
            ("KEYLEDGER_OAUTH_CORP_SSO_TRUST_MFA", "on"),
        ])
        .unwrap();
        assert_eq!(s.oauth.redirect_uris.len(), 3);
        let names: Vec<&str> = s.oauth.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["google", "corp-sso"]);
        assert!(s.oauth.providers[1].trust_mfa);
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("g-s3cret"),
            "the client secret is never shown"
        );
        for uri in [
            "http://app.example/done",
            "https://app.example/done#x",
            "javascript:alert(1)",
            "not a url",
        ] {
            let error = from(&[("KEYLEDGER_OAUTH_REDIRECT_URIS", uri)]).unwrap_err();
            assert_eq!(error.variable, "KEYLEDGER_OAUTH_REDIRECT_URIS", "{uri}");
        }
        let error = from(&[("KEYLEDGER_OAUTH_PROVIDERS", "google")]).unwrap_err();
        assert!(
            error.reason.contains("KEYLEDGER_OAUTH_GOOGLE_CLIENT_ID"),
            "{error}"
        );
        for name in ["Google", "a b", "x".repeat(33).as_str()] {
            assert!(
                from(&[("KEYLEDGER_OAUTH_PROVIDERS", name)]).is_err(),
                "{name}"
            );
        }
        assert!(unknown_variables(["KEYLEDGER_OAUTH_CORP_SSO_ISSUER".to_owned()]).is_empty());
        assert_eq!(
            unknown_variables(["KEYLEDGER_OAUTH_GOOGLE_CLIENT_IDD".to_owned()]),
            ["KEYLEDGER_OAUTH_GOOGLE_CLIENT_IDD"]
        );
    }

    #[test]
    fn start_up_refuses_a_passkey_origin_outside_the_rp_id() {
        let s = from(&[
            ("KEYLEDGER_WEBAUTHN_RP_ID", "Example.com"),
            (
                "KEYLEDGER_WEBAUTHN_ORIGINS",
                "https://example.com, https://login.example.com:8443",
            ),
        ])
        .unwrap();
        assert_eq!(s.webauthn.rp_id, "example.com");
        assert_eq!(s.webauthn.origins.len(), 2);
        for origins in [
            "https://example.org",
            "https://notexample.com",
            "https://example.com.evil.test",
            "https://example.com/path",
            "ftp://example.com",
            "",
        ] {
            let error = from(&[
                ("KEYLEDGER_WEBAUTHN_RP_ID", "example.com"),
                ("KEYLEDGER_WEBAUTHN_ORIGINS", origins),
            ])
            .expect_err(origins);
            assert_eq!(error.variable, "KEYLEDGER_WEBAUTHN_ORIGINS", "{origins}");
        }
        for rp_id in ["https://example.com", "example.com:443", ""] {
            assert!(
                from(&[("KEYLEDGER_WEBAUTHN_RP_ID", rp_id)]).is_err(),
                "{rp_id}"
            );
        }
    }

    #[test]
    fn hsts_is_off_and_docs_are_on_unless_set() {
        let s = from(&[]).unwrap();
        assert_eq!(s.server.hsts_max_age, None);
        assert!(s.server.docs);
        let s = from(&[
            ("KEYLEDGER_HSTS_MAX_AGE_SECS", "31536000"),
            ("KEYLEDGER_DOCS", "OFF"),
        ])
        .unwrap();
        assert_eq!(s.server.hsts_max_age, Some(Duration::from_secs(31_536_000)));
        assert!(!s.server.docs);
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
            assert!(variables().any(|v| v.name == name), "{name}");
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
        assert_eq!(s.lockout.max_failures, 7);
        assert_eq!(s.tokens.issuer, "https://id.example");
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
        assert_eq!(s.audit.checkpoint_interval, Some(Duration::from_secs(60)));
        let s = from(&[("KEYLEDGER_CHAIN_CHECKPOINT_SECS", "0")]).unwrap();
        assert_eq!(s.audit.checkpoint_interval, None);
        let s = from(&[("KEYLEDGER_AUDIT_KEY", "k4.secret.audit-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("audit-secret"));
        assert!(variables().any(|v| v.name == "KEYLEDGER_CHAIN_CHECKPOINT_SECS"));
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
        let shown: Vec<String> = s
            .server
            .trusted_proxies
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(shown, ["10.0.0.7/32", "172.16.0.0/12", "2001:db8::/32"]);
        assert_eq!(
            s.server.forwarded_header,
            crate::client_address::ForwardedHeader::Forwarded
        );
        assert_eq!(
            from(&[]).unwrap().server.forwarded_header,
            crate::client_address::ForwardedHeader::XForwardedFor
        );
        let err = from(&[("KEYLEDGER_TRUSTED_PROXIES", "10.0.0.0/40")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_TRUSTED_PROXIES");
        let err = from(&[("KEYLEDGER_FORWARDED_HEADER", "x-real-ip")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_FORWARDED_HEADER");
    }

    #[test]
    fn an_empty_nats_url_disables_the_relay() {
        assert!(from(&[("NATS_URL", "")]).unwrap().nats.url.is_none());
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
            s.tokens.signing_key_file,
            PathBuf::from("keyledger-data/signing-key.paserk")
        );
        assert_eq!(
            s.audit.key_file,
            PathBuf::from("keyledger-data/audit-key.paserk")
        );
        assert_eq!(
            s.personal_data.email_index_key_file,
            PathBuf::from("keyledger-data/email-index.key")
        );
        assert_eq!(
            s.personal_data.data_key_wrapping_key_file,
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
            s.tokens.signing_key_file,
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
            s.tokens.signing_key_file,
            PathBuf::from("/var/lib/keyledger/signing-key.paserk")
        );
        assert_eq!(
            s.personal_data.email_index_key_file,
            PathBuf::from("/var/lib/keyledger/email-index.key")
        );
        // A key file set on its own stays where it was put.
        assert_eq!(
            s.audit.key_file,
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
        assert_eq!(from(&[]).unwrap().nats.url, None);
        assert_eq!(
            from(&[("NATS_URL", " nats://bus:4222 ")]).unwrap().nats.url,
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
                s.tokens.signing_key_file,
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
        let reference = include_str!("../../docs/configuration.md");
        for key in asked.into_inner() {
            assert!(
                variables().any(|v| v.name == key),
                "{key} is read but not listed for --help"
            );
        }
        for v in variables() {
            assert!(
                reference.contains(&format!("| `{}` |", v.name)),
                "{} is missing from the tables of docs/configuration.md",
                v.name
            );
        }
    }

    #[test]
    fn unknown_keyledger_variables_are_named_and_others_left_alone() {
        let names = [
            "KEYLEDGER_LOCKOUT_MAX_FAILRES",
            "KEYLEDGER_BIND",
            "KEYLEDGER_LOG",
            "KEYLEDGER_AUDIT_PUBLIC_KEY",
            "DATABASE_URL",
            "PATH",
            "KEYLEDGER_SIGNINGKEY",
            "KEYLEDGER_LOCKOUT_MAX_FAILRES",
        ];
        assert_eq!(
            unknown_variables(names.map(String::from)),
            ["KEYLEDGER_LOCKOUT_MAX_FAILRES", "KEYLEDGER_SIGNINGKEY"]
        );
        assert!(from(&[]).unwrap().unknown_variables.is_empty());
    }

    #[test]
    fn mail_goes_to_files_in_the_data_dir_by_default() {
        let s = from(&[]).unwrap();
        let mail = &s.mail.delivery;
        assert!(mail.smtp.is_none());
        assert_eq!(mail.outbox_dir, PathBuf::from("keyledger-data/outbox"));
        assert_eq!(mail.from, "Keyledger <no-reply@localhost>");
        assert_eq!(mail.send_timeout, Duration::from_secs(10));
        assert_eq!(mail.public_url, "http://127.0.0.1:8080");
        assert_eq!(mail.product_name, "Keyledger");
        assert_eq!(mail.support_address, "");
        assert_eq!(
            (mail.templates_dir.as_ref(), mail.extra_root_pem.as_ref()),
            (None, None)
        );
        assert_eq!(s.mail.max_attempts, 8);
        assert_eq!(s.mail.retry, Duration::from_secs(5));
        let s = from(&[
            ("KEYLEDGER_DATA_DIR", "/var/lib/keyledger"),
            ("KEYLEDGER_BIND", "0.0.0.0:9000"),
        ])
        .unwrap();
        assert_eq!(
            s.mail.delivery.outbox_dir,
            PathBuf::from("/var/lib/keyledger/outbox")
        );
        assert_eq!(s.mail.delivery.public_url, "http://0.0.0.0:9000");
    }

    #[test]
    fn mail_settings_are_read_and_the_smtp_password_never_shows() {
        let s = from(&[
            (
                "KEYLEDGER_SMTP_URL",
                "smtp+starttls://mailer:sm7p-pa55@mail.example.com:587",
            ),
            ("KEYLEDGER_MAIL_FROM", "Acme ID <id@acme.example>"),
            ("KEYLEDGER_SMTP_TIMEOUT_SECS", "3"),
            (
                "KEYLEDGER_SMTP_ROOT_CERT_FILE",
                "/etc/keyledger/smtp-ca.pem",
            ),
            ("KEYLEDGER_MAIL_TEMPLATES_DIR", "/etc/keyledger/mail"),
            ("KEYLEDGER_PUBLIC_URL", "https://id.acme.example/"),
            ("KEYLEDGER_PRODUCT_NAME", "Acme ID"),
            ("KEYLEDGER_SUPPORT_EMAIL", "help@acme.example"),
            ("KEYLEDGER_MAIL_MAX_ATTEMPTS", "3"),
            ("KEYLEDGER_MAIL_RETRY_SECS", "60"),
        ])
        .unwrap();
        let mail = &s.mail.delivery;
        let smtp = mail.smtp.as_ref().unwrap();
        assert_eq!(
            smtp.to_string(),
            "smtp+starttls://mailer:***@mail.example.com:587"
        );
        assert_eq!(mail.from, "Acme ID <id@acme.example>");
        assert_eq!(mail.send_timeout, Duration::from_secs(3));
        assert_eq!(
            mail.extra_root_pem,
            Some(PathBuf::from("/etc/keyledger/smtp-ca.pem"))
        );
        assert_eq!(
            mail.templates_dir,
            Some(PathBuf::from("/etc/keyledger/mail"))
        );
        assert_eq!(mail.public_url, "https://id.acme.example");
        assert_eq!(mail.product_name, "Acme ID");
        assert_eq!(mail.support_address, "help@acme.example");
        assert_eq!(s.mail.max_attempts, 3);
        assert!(!format!("{s:?}").contains("sm7p-pa55"));
        // Retries: 60 s, doubling, capped at an hour.
        let delays: Vec<u64> = (1..=8).map(|n| s.mail.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(s.mail.retry_delay(u32::MAX), MAIL_RETRY_CAP);
    }

    #[test]
    fn bad_mail_settings_name_their_variable_and_never_echo_the_smtp_url() {
        let err = from(&[("KEYLEDGER_SMTP_URL", "imap://u:hunter2@mail.example.com")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_SMTP_URL");
        assert!(err.to_string().contains("not supported"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = from(&[("KEYLEDGER_PUBLIC_URL", "id.acme.example")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_PUBLIC_URL");
        let err = from(&[("KEYLEDGER_SMTP_TIMEOUT_SECS", "0")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_SMTP_TIMEOUT_SECS");
        let err = from(&[("KEYLEDGER_MAIL_MAX_ATTEMPTS", "0")]).unwrap_err();
        assert_eq!(err.variable, "KEYLEDGER_MAIL_MAX_ATTEMPTS");
        // Empty is unset: files.
        assert!(from(&[("KEYLEDGER_SMTP_URL", " ")])
            .unwrap()
            .mail
            .delivery
            .smtp
            .is_none());
    }

    #[test]
    fn the_signing_key_never_shows_in_debug_output() {
        let s = from(&[("KEYLEDGER_SIGNING_KEY", "k4.secret.very-secret")]).unwrap();
        assert!(!format!("{s:?}").contains("very-secret"));
    }
}
