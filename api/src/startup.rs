//! Building the server: database, background workers, HTTP.

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::dev::ServiceRequest;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use keyledger_commands::{
    AuthService, AuthSettings, BreachCheckFailure, BreachedPasswords, DataKeys, EmailClaims,
    HasherSettings, JwsAlg, JwsKeyMaterial, OAuthClients, OrganizationService, PasswordHasher,
    PasswordPolicy, PersonalDataSealer, RetiredPublicKey, TokenIssuer, TokenSettings, CLOCK_SKEW,
};
use keyledger_domain::{DataKeyWrapping, EmailIndexKey, LockoutPolicy};
use keyledger_projections::{
    install_read_models, AccessView, AuditKey, ChainSigner, FeedReader, FeedSignal, LeaderFlag,
    MailQueue, NatsRelay, ProjectionRunner, RelaySettings, RevokedSessions,
};
use keyledger_storage::{Database, Durability, EmbeddedError, OpenError, DATABASE_FILE};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use utoipa::OpenApi;
use utoipa_actix_web::{AppExt, UtoipaApp};

use crate::error::json_error;
use crate::hardening::{add_security_headers, refuse_encoded_bodies, SecurityHeaders};
use crate::openapi;
use crate::queries::ReadModelQueries;
use crate::rate_limit::RateLimits;
use crate::resources::docs::{DocsPage, Document};
use crate::resources::{
    access, admin, audit, auth, docs, email_change, email_login, invitations, mfa, oidc,
    oidc_clients, oidc_keys, operations, organizations, pages, passkeys, recovery, sessions,
    social, users, Routes,
};
use crate::settings::{Settings, StorageSettings};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Storage(#[from] OpenError),
    #[error("signing key: {0}")]
    Key(String),
    #[error("audit key: {0}")]
    AuditKey(String),
    #[error("email index key: {0}")]
    EmailIndexKey(String),
    #[error("data key wrapping key: {0}")]
    DataKeyWrappingKey(String),
    #[error("{0}")]
    Config(String),
    #[error("read side: {0}")]
    Feed(#[from] keyledger_projections::FeedError),
    #[error("http: {0}")]
    Io(#[from] std::io::Error),
}

/// A running Keyledger: the HTTP server plus its background workers.
pub struct Application {
    port: u16,
    server: Server,
    state: Arc<AppState>,
    workers: Vec<JoinHandle<()>>,
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .expect("static buckets are valid")
                .install_recorder()
                .expect("the metrics recorder is installed once per process")
        })
        .clone()
}

/// Opens the configured storage for both sides: PostgreSQL (created and
/// migrated), or the embedded store of a data directory (locked for this
/// process, created and migrated), with the read models installed.
pub async fn open_storage(settings: &StorageSettings) -> Result<Database, StartupError> {
    let db = match settings {
        StorageSettings::Postgres {
            url,
            max_connections,
        } => Database::open_postgres(url, *max_connections).await?,
        StorageSettings::Embedded(embedded) => Database::open_embedded(embedded).await?,
    };
    install_read_models(&db).await?;
    Ok(db)
}

/// What start-up tells the operator: where the data goes, where events go, and
/// what to watch out for. Printed by `keyledger serve`; one line each.
pub fn startup_report(settings: &Settings) -> Vec<String> {
    let mut lines = Vec::new();
    for name in &settings.unknown_variables {
        lines.push(unknown_variable_warning(name));
    }
    match &settings.storage {
        StorageSettings::Postgres { url, .. } => lines.push(format!(
            "storage: PostgreSQL at {} (DATABASE_URL)",
            redacted_url(url)
        )),
        StorageSettings::Embedded(e) => {
            lines.push(format!(
                "storage: embedded SQLite at {} (DATABASE_URL not set; synchronous={})",
                e.data_dir.join(DATABASE_FILE).display(),
                match e.durability {
                    Durability::Full => "full",
                    Durability::Normal => "normal",
                }
            ));
            lines.push(
                "the embedded store is for development and single-node use; \
                 set DATABASE_URL to run several nodes on PostgreSQL"
                    .into(),
            );
            if audit_key_in_data_dir(settings) {
                lines.push(format!(
                    "warning: the audit key file {} is inside the data directory {}: whoever can \
                     rewrite the log can then also re-sign it. In production keep it elsewhere \
                     (KEYLEDGER_AUDIT_KEY_FILE) or pass KEYLEDGER_AUDIT_KEY",
                    settings.audit.key_file.display(),
                    e.data_dir.display()
                ));
            }
        }
    }
    lines.push(match &settings.mail.delivery.smtp {
        Some(url) => format!("mail: SMTP {url} (KEYLEDGER_SMTP_URL)"),
        None => format!(
            "mail: no SMTP server (KEYLEDGER_SMTP_URL not set): mails are written as .eml files \
             to {}",
            settings.mail.delivery.outbox_dir.display()
        ),
    });
    match &settings.nats.url {
        Some(url) => lines.push(format!(
            "bus: NATS at {} (stream {})",
            redacted_url(url),
            settings.nats.stream
        )),
        None => {
            lines.push("relay disabled: events fan out in process only (NATS_URL not set)".into())
        }
    }
    lines
}

/// What start-up says of a `KEYLEDGER_*` variable that is no setting: by name,
/// never its value (it may be a secret given under a mistyped name).
fn unknown_variable_warning(name: &str) -> String {
    format!(
        "warning: {name} is not a setting and is ignored (a typo? `keyledger --help` lists them)"
    )
}

/// Whether the audit key would be read from a file in the embedded store's data
/// directory: the signed checkpoints only vouch for the log if whoever can rewrite
/// the log cannot also read the key.
fn audit_key_in_data_dir(settings: &Settings) -> bool {
    let Some(data_dir) = settings.data_dir() else {
        return false;
    };
    if settings.audit.key.is_some() || settings.audit.checkpoint_interval.is_none() {
        return false;
    }
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    absolute(&settings.audit.key_file).starts_with(absolute(data_dir))
}

/// A URL with any password replaced, for logs: the password of the authority, a
/// `password` (or `sslpassword`) query parameter as libpq and sqlx accept, and a
/// NATS token (`nats://token@host`, credentials without a colon).
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; credentials end at its last '@'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            // A lone user name is a token to NATS, a role name to PostgreSQL.
            None if scheme.starts_with("nats") || scheme == "tls" || scheme.starts_with("ws") => {
                format!("***@{host}")
            }
            None => format!("{credentials}@{host}"),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redacted_query(tail))
}

/// The path, query and fragment of a URL with password parameters' values hidden.
fn redacted_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = query
        .split_once('#')
        .map_or((query, None), |(q, f)| (q, Some(f)));
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _))
                if ["password", "sslpassword"].contains(&key.to_ascii_lowercase().as_str()) =>
            {
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    match fragment {
        Some(fragment) => format!("{path}?{query}#{fragment}"),
        None => format!("{path}?{query}"),
    }
}

/// The signing key and the public keys that still verify: from configuration, else
/// from the key file and its record of retired keys.
///
/// The embedded store generates a missing key on first start and keeps it in its
/// data directory (zero setup). On PostgreSQL the key must be configured: several
/// nodes share one database, and a node that generated its own key would issue
/// tokens the others reject.
///
/// Keys listed in `KEYLEDGER_VERIFICATION_KEYS` have no recorded rotation time; the
/// rotation was before this start, so tokens they signed are all expired one
/// access-token lifetime (plus the clock skew) after it, and that is where their
/// window ends.
fn load_keys(settings: &Settings) -> Result<(String, Vec<RetiredPublicKey>), StartupError> {
    let now = chrono::Utc::now();
    let window = chrono::Duration::from_std(settings.tokens.access_ttl + CLOCK_SKEW)
        .map_err(|e| StartupError::Config(e.to_string()))?;
    let mut verifying: Vec<RetiredPublicKey> = settings
        .tokens
        .verification_keys
        .iter()
        .map(|paserk| RetiredPublicKey {
            paserk: paserk.clone(),
            verify_until: now + window,
        })
        .collect();
    let signing = match &settings.tokens.signing_key {
        Some(key) => key.expose().trim().to_owned(),
        None => {
            let embedded = settings.data_dir().is_some();
            let file = &settings.tokens.signing_key_file;
            if !embedded && !file.exists() {
                return Err(StartupError::Key(format!(
                    "no signing key: {} does not exist. With DATABASE_URL set the key must be \
                     configured: run `keyledger keys generate` (KEYLEDGER_SIGNING_KEY_FILE) or \
                     set KEYLEDGER_SIGNING_KEY",
                    file.display()
                )));
            }
            let keys = crate::keyset::load(file, embedded, now)
                .map_err(|e| StartupError::Key(e.to_string()))?;
            verifying.extend(keys.verifying);
            keys.signing
        }
    };
    Ok((signing, verifying))
}

/// The ES256 and RS256 keys that sign JWTs: from configuration, else from their
/// files beside the signing key file (created on the first start that finds them
/// missing, on either store: unlike the signing key, a missing one invalidates
/// nothing already issued), with their retired keys still inside their window.
fn load_jws_keys(settings: &Settings) -> Result<Vec<(JwsAlg, JwsKeyMaterial)>, StartupError> {
    let now = chrono::Utc::now();
    crate::keyset::JWS_FILE_ALGS
        .into_iter()
        .map(|alg| {
            let configured = match alg {
                JwsAlg::ES256 => &settings.tokens.es256_key,
                JwsAlg::RS256 => &settings.tokens.rs256_key,
                JwsAlg::EdDSA => &None,
            };
            let key = match configured {
                Some(pem) => JwsKeyMaterial {
                    private_pem: pem.expose().to_owned(),
                    retired: Vec::new(),
                },
                None => crate::keyset::load_jws(&settings.tokens.signing_key_file, alg, now)
                    .map_err(|e| StartupError::Key(e.to_string()))?,
            };
            Ok((alg, key))
        })
        .collect()
}

/// The audit key that signs chain checkpoints: from configuration, else from its
/// file (created on first start). Never from the database it vouches for.
pub fn load_audit_key(settings: &Settings) -> Result<AuditKey, StartupError> {
    let secret = match &settings.audit.key {
        Some(key) => key.expose().trim().to_owned(),
        None => crate::keyset::load_or_create_audit_key(&settings.audit.key_file)
            .map_err(|e| StartupError::AuditKey(e.to_string()))?,
    };
    AuditKey::from_paserk(&secret).map_err(|e| StartupError::AuditKey(e.to_string()))
}

/// The key of the email index: from configuration, else from its file (created
/// on first start). Never from the database whose digests it keys.
pub fn load_email_index_key(settings: &Settings) -> Result<EmailIndexKey, StartupError> {
    let encoded = match &settings.personal_data.email_index_key {
        Some(key) => key.expose().trim().to_owned(),
        None => crate::keyset::load_or_create_email_index_key(
            &settings.personal_data.email_index_key_file,
        )
        .map_err(|e| StartupError::EmailIndexKey(e.to_string()))?,
    };
    EmailIndexKey::parse(&encoded).map_err(|e| StartupError::EmailIndexKey(e.to_string()))
}

/// The keys wrapping the data keys: from configuration, else from their file
/// (created on first start). Never from the database whose keys they wrap.
pub fn load_data_key_wrapping(settings: &Settings) -> Result<Arc<DataKeyWrapping>, StartupError> {
    let encoded = match &settings.personal_data.data_key_wrapping_key {
        Some(keys) => keys.expose().to_owned(),
        None => crate::keyset::load_or_create_data_key_wrapping_key(
            &settings.personal_data.data_key_wrapping_key_file,
        )
        .map_err(|e| StartupError::DataKeyWrappingKey(e.to_string()))?,
    };
    DataKeyWrapping::parse(&encoded)
        .map(Arc::new)
        .map_err(|e| StartupError::DataKeyWrappingKey(e.to_string()))
}

/// The write side's services over one pool: both seal personal data with the
/// same keys, and accounts are found by the keyed digest of their address.
/// Converts claims written before addresses were keyed (idempotent).
/// Rewraps data keys not wrapped with the current wrapping key (idempotent).
async fn write_side(
    storage: &Database,
    settings: &Settings,
    wrapping: Arc<DataKeyWrapping>,
    tokens: Arc<TokenIssuer>,
    hasher: PasswordHasher,
    auth_settings: AuthSettings,
) -> Result<(AuthService, OrganizationService, OAuthClients), StartupError> {
    let index_key = load_email_index_key(settings)?;
    let converted = EmailClaims::new(storage, index_key.clone())
        .convert_legacy_claims()
        .await?;
    if converted > 0 {
        tracing::info!(converted, "email claims now keyed by digest");
    }
    let rewrapped = DataKeys::new(storage, wrapping.clone()).rewrap().await?;
    if rewrapped > 0 {
        tracing::info!(
            rewrapped,
            wrapping_key = %wrapping.current().id(),
            "data keys now wrapped with the current wrapping key"
        );
        // The keys as they were stored before (in clear, or under a retired
        // key) must not stay behind in the files' free space.
        if let Err(e) = storage.scrub_data_keys().await {
            tracing::error!(error = %e, "replaced data keys could not be scrubbed from the database files");
        }
    }
    let keys = Arc::new(PersonalDataSealer::for_storage(storage, wrapping));
    let organizations = OrganizationService::new(storage, tokens.clone(), keys.clone())
        .with_invitation_ttl(settings.organizations.invitation_ttl);
    let oauth_clients = OAuthClients::new(storage, keys.clone());
    let auth = AuthService::new(storage, hasher, tokens, auth_settings, keys, index_key);
    Ok((auth, organizations, oauth_clients))
}

/// What `keyledger admin create` did.
#[derive(Debug)]
pub enum AdminCreated {
    Registered(uuid::Uuid),
    Promoted(uuid::Uuid),
    AlreadyAdmin(uuid::Uuid),
}

impl std::fmt::Display for AdminCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registered(id) => write!(f, "registered {id} as a platform administrator"),
            Self::Promoted(id) => write!(f, "{id} is now a platform administrator"),
            Self::AlreadyAdmin(id) => write!(f, "{id} was already a platform administrator"),
        }
    }
}

/// The write side for a command-line action (`admin create`, `users import`): the
/// server's storage and keys, one hashing thread, no token signing. The storage is
/// returned to be kept open as long as the service is used.
/// `api` names the route that does the same through a running server, for the
/// message when the embedded server holds the data directory.
async fn command_line_auth(
    settings: &Settings,
    api: Option<&str>,
) -> Result<(AuthService, Database), StartupError> {
    let storage = open_storage(&settings.storage)
        .await
        .map_err(|e| beside_embedded_server(e, api))?;
    // This process issues no tokens: a throwaway key satisfies the service.
    let (key, _) = TokenIssuer::generate_key().map_err(|e| StartupError::Key(e.to_string()))?;
    let tokens = TokenIssuer::new(
        &key,
        &[],
        TokenSettings {
            issuer: settings.tokens.issuer.clone(),
            audience: settings.tokens.audience.clone(),
            access_ttl: settings.tokens.access_ttl,
            verified_cache_entries: settings.tokens.verified_cache_entries,
        },
    )
    .map_err(|e| StartupError::Key(e.to_string()))?;
    let hasher = PasswordHasher::new(&HasherSettings {
        memory_kib: settings.passwords.argon2_memory_kib,
        iterations: settings.passwords.argon2_iterations,
        parallelism: settings.passwords.argon2_parallelism,
        max_concurrent: 1,
        max_queued: 1,
        max_per_client: 1,
    })
    .map_err(|e| StartupError::Config(e.to_string()))?;
    let (auth, _, _) = write_side(
        &storage,
        settings,
        load_data_key_wrapping(settings)?,
        Arc::new(tokens),
        hasher,
        AuthSettings::default(),
    )
    .await?;
    Ok((auth, storage))
}

/// The embedded store has one writer: the server holds its data directory's lock,
/// and a command that would write beside it says at once what to do instead.
fn beside_embedded_server(error: StartupError, api: Option<&str>) -> StartupError {
    let StartupError::Storage(OpenError::Embedded(EmbeddedError::InUse(dir))) = &error else {
        return error;
    };
    let instead = api.map_or(String::new(), |route| {
        format!(
            ", or leave it running and use the API with a platform administrator's token: {route}"
        )
    });
    StartupError::Config(format!(
        "the embedded store in {} is in use by a running Keyledger server (it holds its \
         lock, and the embedded store allows one writer): stop the server, run this command, \
         and start the server again{instead}",
        dir.display()
    ))
}

/// `keyledger users import`: moves the accounts of `input` (JSON lines, see
/// [`crate::user_import`]) in, reporting progress after each line.
pub async fn import_users(
    settings: Settings,
    input: impl std::io::BufRead,
    progress: impl FnMut(&crate::user_import::ImportSummary),
) -> Result<crate::user_import::ImportSummary, StartupError> {
    let (auth, _storage) = command_line_auth(&settings, None).await?;
    crate::user_import::import_accounts(&auth, input, progress)
        .await
        .map_err(|e| StartupError::Config(e.to_string()))
}

/// Lifts the lockout of the account named by `who` (an email or an account id)
/// from the command line, writing `AccountUnlocked` with the actor `cli`; answers
/// whether there was a lockout to lift.
pub async fn unlock_account(settings: Settings, who: &str) -> Result<String, StartupError> {
    let api = "POST /v1/admin/users/{user_id}/unlock";
    let (auth, _storage) = command_line_auth(&settings, Some(api)).await?;
    let fail = |e: keyledger_commands::AuthError| StartupError::Config(e.to_string());
    let user_id = match uuid::Uuid::parse_str(who) {
        Ok(id) if auth.user_exists(id).await.map_err(fail)? => id,
        Ok(_) => return Err(StartupError::Config("no account has this id".into())),
        Err(_) => auth
            .find_user_id(who)
            .await
            .map_err(fail)?
            .ok_or_else(|| StartupError::Config("no account has this email".into()))?,
    };
    let ctx = keyledger_commands::RequestContext {
        request_id: "cli".into(),
        ..Default::default()
    };
    Ok(match auth.unlock_user(user_id, &ctx).await.map_err(fail)? {
        Some(_) => format!("{user_id} is unlocked"),
        None => format!("{user_id} was not locked"),
    })
}

/// Ends every session started before `before` (`None`: now) from the command
/// line, writing `SessionsRevokedBefore` like the admin route; running servers
/// pick it up from the feed. Answers with the cut-off in force.
pub async fn revoke_sessions_before(
    settings: Settings,
    before: Option<chrono::DateTime<chrono::Utc>>,
    reason: Option<String>,
) -> Result<String, StartupError> {
    let api = "POST /v1/admin/sessions/revoke-before";
    let (auth, _storage) = command_line_auth(&settings, Some(api)).await?;
    let ctx = keyledger_commands::RequestContext {
        request_id: "cli".into(),
        ..Default::default()
    };
    let cut = auth
        .revoke_sessions_before(before, reason.as_deref(), &ctx)
        .await
        .map_err(|e| StartupError::Config(e.to_string()))?;
    let before = cut
        .before
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    Ok(match cut.written {
        Some(_) => format!("sessions started before {before} are revoked"),
        None => format!("a cut-off at {before} was already in force; nothing changed"),
    })
}

/// Bootstraps a platform administrator from the command line (the first one cannot
/// be appointed through the API). Writes events like the server would, with the
/// actor `cli`.
pub async fn create_platform_admin(
    settings: Settings,
    email: &str,
    password: Option<String>,
) -> Result<AdminCreated, StartupError> {
    // The API cannot appoint the first administrator; it can appoint the next ones.
    let api = "PUT /v1/admin/users/{user_id}/platform-admin (after POST /v1/auth/register \
               for a new account)";
    let (auth, _storage) = command_line_auth(&settings, Some(api)).await?;
    let ctx = keyledger_commands::RequestContext {
        request_id: "cli".into(),
        ..Default::default()
    };
    let fail = |e: keyledger_commands::AuthError| StartupError::Config(e.to_string());
    let (user_id, registered) = match auth.find_user_id(email).await.map_err(fail)? {
        Some(id) => (id, false),
        None => {
            let password = password.ok_or_else(|| {
                StartupError::Config(
                    "no account has this email; pass --password-stdin to create it".into(),
                )
            })?;
            let registered = auth
                .register(
                    email,
                    keyledger_commands::Password::new(password),
                    None,
                    &ctx,
                )
                .await
                .map_err(fail)?;
            (registered.user_id, true)
        }
    };
    let granted = auth
        .grant_platform_admin(user_id, &ctx)
        .await
        .map_err(fail)?;
    Ok(match (registered, granted) {
        (true, _) => AdminCreated::Registered(user_id),
        (false, Some(_)) => AdminCreated::Promoted(user_id),
        (false, None) => AdminCreated::AlreadyAdmin(user_id),
    })
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        for name in &settings.unknown_variables {
            tracing::warn!(variable = %name, "a KEYLEDGER_ variable that is not a setting is ignored (a typo?)");
        }
        let metrics = metrics_handle();
        let storage = open_storage(&settings.storage).await?;
        tracing::info!(storage = storage.kind(), "event store open");
        let queries = ReadModelQueries::new(&storage);

        let (signing_key, verification_keys) = load_keys(&settings)?;
        let mut tokens = TokenIssuer::new(
            &signing_key,
            &verification_keys,
            TokenSettings {
                issuer: settings.tokens.issuer.clone(),
                audience: settings.tokens.audience.clone(),
                access_ttl: settings.tokens.access_ttl,
                verified_cache_entries: settings.tokens.verified_cache_entries,
            },
        )
        .map_err(|e| StartupError::Key(e.to_string()))?;
        for (alg, key) in load_jws_keys(&settings)? {
            tokens = tokens
                .with_jws_key(alg, &key)
                .map_err(|e| StartupError::Key(format!("{alg} key: {e}")))?;
        }
        let hasher = PasswordHasher::new(&HasherSettings {
            memory_kib: settings.passwords.argon2_memory_kib,
            iterations: settings.passwords.argon2_iterations,
            parallelism: settings.passwords.argon2_parallelism,
            max_concurrent: settings.passwords.hash_concurrency,
            max_queued: settings.passwords.hash_queue,
            max_per_client: settings.passwords.hash_concurrency_per_client,
        })
        .map_err(|e| StartupError::Config(e.to_string()))?;
        let tokens = Arc::new(tokens);
        let data_key_wrapping = load_data_key_wrapping(&settings)?;
        let (auth, organizations, oauth_clients) = write_side(
            &storage,
            &settings,
            data_key_wrapping.clone(),
            tokens,
            hasher.clone(),
            AuthSettings {
                lockout: LockoutPolicy {
                    max_failures: settings.lockout.max_failures,
                    duration: chrono::Duration::from_std(settings.lockout.duration)
                        .map_err(|e| StartupError::Config(e.to_string()))?,
                },
                session_ttl: chrono::Duration::from_std(settings.sessions.ttl)
                    .map_err(|e| StartupError::Config(e.to_string()))?,
                password_policy: password_policy(&settings)?,
                reauthentication_window: chrono::Duration::from_std(
                    settings.sessions.reauth_window,
                )
                .map_err(|e| StartupError::Config(e.to_string()))?,
                session_idle_timeout: settings
                    .sessions
                    .idle_timeout
                    .map(chrono::Duration::from_std)
                    .transpose()
                    .map_err(|e| StartupError::Config(e.to_string()))?,
                refresh_reuse_grace: chrono::Duration::from_std(
                    settings.sessions.refresh_reuse_grace,
                )
                .map_err(|e| StartupError::Config(e.to_string()))?,
                max_sessions_per_user: settings.sessions.max_per_user,
                failure_delay: settings.lockout.delay,
                spraying: keyledger_commands::login_gate::SprayPolicy {
                    accounts: settings.lockout.spray_accounts,
                    window: chrono::Duration::from_std(settings.lockout.spray_window)
                        .map_err(|e| StartupError::Config(e.to_string()))?,
                },
                email_verification: settings.email_flows.verification,
                verification_ttl: chrono_duration(settings.email_flows.verification_ttl)?,
                reset_ttl: chrono_duration(settings.email_flows.reset_ttl)?,
                mail_interval: chrono_duration(settings.email_flows.interval)?,
                email_login: settings.email_flows.login,
                email_login_ttl: chrono_duration(settings.email_flows.login_ttl)?,
                mfa_token_ttl: chrono_duration(settings.second_factors.token_ttl)?,
                totp_issuer: settings.second_factors.totp_issuer.clone(),
                relying_party: relying_party(&settings.webauthn)?,
                passkey_ceremony_ttl: chrono_duration(settings.webauthn.ceremony_ttl)?,
                federation_flow_ttl: chrono_duration(settings.oauth.flow_ttl)?,
                federation_code_ttl: chrono_duration(settings.oauth.code_ttl)?,
            },
        )
        .await?;

        let mut workers = Vec::new();
        let store = storage.clone();
        let (signal, listener) = FeedSignal::start(&store);
        workers.push(listener);
        // One reader of the feed for every follower of this node.
        let mut followers = FeedReader::new(store.clone(), data_key_wrapping.clone());
        let consistency = ProjectionRunner::join(&mut followers);
        let revoked = RevokedSessions::new(settings.tokens.access_ttl);
        followers.in_memory(Box::new(revoked.load(followers.feed()).await?));
        let access = AccessView::join(&mut followers).await?;
        auth.set_memberships(Arc::new(crate::resources::access::Memberships(
            access.clone(),
        )));
        auth.set_verified_addresses(Arc::new(crate::resources::access::Memberships(
            access.clone(),
        )));
        auth.set_session_cutoff(Arc::new(crate::extract::SessionCutoffView(revoked.clone())));

        if let Some(every) = settings.audit.checkpoint_interval {
            let key = Arc::new(load_audit_key(&settings)?);
            workers.push(ChainSigner::new(store.clone(), key).spawn(every));
        }

        // Mail follows the events that ask for one: queued by one node (a
        // checkpoint and lock of its own), sent by every node's sender. Where it
        // goes and what it says is checked now, not at the first mail.
        let delivery = keyledger_mail::Delivery::open(&settings.mail.delivery)
            .map_err(|e| StartupError::Config(format!("mail: {e}")))?;
        let templates =
            keyledger_mail::Templates::load(settings.mail.delivery.templates_dir.as_deref())
                .map_err(|e| StartupError::Config(format!("mail templates: {e}")))?;
        tracing::info!(delivery = %delivery.describe(), "mail");
        let sms_webhook =
            match (
                &settings.second_factors.sms_webhook_url,
                &settings.second_factors.sms_webhook_secret,
            ) {
                (Some(url), Some(secret)) => Some((url.as_str(), secret.expose())),
                (None, _) => None,
                (Some(_), None) => return Err(StartupError::Config(
                    "KEYLEDGER_SMS_WEBHOOK_URL needs KEYLEDGER_SMS_WEBHOOK_SECRET: the webhook \
                     could not tell this server's requests from anyone's"
                        .into(),
                )),
            };
        let sms = keyledger_mail::sms::SmsDelivery::open(
            sms_webhook,
            settings.second_factors.sms_timeout,
            &settings
                .mail
                .delivery
                .outbox_dir
                .with_file_name("sms-outbox"),
        )
        .map_err(|e| StartupError::Config(format!("text messages: {e}")))?;
        tracing::info!(delivery = %sms.describe(), "text messages");
        let mail_queued = Arc::new(tokio::sync::Notify::new());
        followers.at_least_once(
            Box::new(MailQueue::new(
                store.clone(),
                chrono_duration(settings.email_flows.max_age)?,
                mail_queued.clone(),
            )),
            LeaderFlag::new("mail"),
        );

        let relay_leader = LeaderFlag::new("relay");
        let nats = match &settings.nats.url {
            Some(url) => {
                let client = async_nats::ConnectOptions::new()
                    .name("keyledger")
                    .retry_on_initial_connect()
                    .connect(url.as_str())
                    .await
                    .map_err(|e| StartupError::Config(format!("NATS_URL: {e}")))?;
                followers.at_least_once(
                    Box::new(NatsRelay::new(
                        client.clone(),
                        RelaySettings {
                            stream: settings.nats.stream.clone(),
                            subject_prefix: settings.nats.subject_prefix.clone(),
                            ..RelaySettings::default()
                        },
                    )),
                    relay_leader.clone(),
                );
                Some(client)
            }
            None => {
                tracing::info!("relay disabled: events fan out in process only (NATS_URL not set)");
                None
            }
        };
        workers.push(followers.spawn(signal));

        let readiness = crate::readiness::Readiness::checked(&queries).await;
        workers.push(readiness.clone().spawn(queries.clone()));
        // Bound before the state: social login's callbacks need the public
        // address, which is the bound one when no public URL was set and the
        // port was left to the system (`:0`, as tests do).
        let listener = TcpListener::bind(settings.server.bind)?;
        let public = public_base(&settings, listener.local_addr()?)?;
        let social = crate::social_login::SocialLogin::new(&settings.oauth, &public)
            .map_err(|e| StartupError::Config(e.to_string()))?;
        let browser = crate::browser_session::BrowserSessions::new(
            &public,
            &settings.browser.cors_origins,
            settings.browser.cors_max_age.as_secs(),
            i64::try_from(settings.sessions.ttl.as_secs()).unwrap_or(i64::MAX),
        );
        let pages = Arc::new(crate::hosted::PagesConfig::new(
            &settings.pages,
            &settings.mail.delivery.product_name,
            &public,
        ));
        let issuer = public.as_str().trim_end_matches('/').to_owned();
        auth.tokens().set_jwt_issuer(&issuer);
        let oidc = Arc::new(crate::resources::oidc::Provider {
            issuer,
            codes: keyledger_commands::AuthorizationCodes::new(&storage),
        });
        let state = Arc::new(AppState {
            oidc,
            auth,
            organizations,
            oauth_clients,
            access,
            hasher,
            storage,
            queries,
            consistency,
            readiness,
            revoked,
            nats,
            relay_leader,
            mail: Arc::new(crate::mailer::Mailer::new(
                (delivery, sms),
                templates,
                settings.mail.clone(),
            )),
            metrics,
            client_address: settings.client_address_rule(),
            data_key_wrapping,
            social,
            browser,
            pages,
        });
        workers.push(crate::mailer::MailSender::new(state.clone(), mail_queued).spawn());
        let port = listener.local_addr()?.port();
        let (server, evictor) = http_server(listener, state.clone(), &settings)?;
        workers.extend(evictor);
        tracing::info!(port, "keyledger listening");
        Ok(Self {
            port,
            server,
            state,
            workers,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// For tests and tools that need the internals (counters, pool).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (SIGTERM: in-flight requests finish),
    /// then stops the background workers. Their checkpoints need no flush: the
    /// read models' is committed with the batch it covers, and the relay's may lag
    /// by a second, which only publishes those events again at the next start
    /// (JetStream drops them as duplicates within its window). The embedded store's connections are
    /// closed, which checkpoints the WAL into the database file.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until_stopped_after_start(|| {}).await
    }

    /// [`Self::run_until_stopped`], calling `started` once the HTTP workers have
    /// built their routes: the server's first poll starts them and waits until each
    /// has (actix-server's `Accept::start`), so by the time it returns pending the
    /// start-up work (the API document, each worker's route table) is done and its
    /// temporary memory freed. The binary hands the allocator that memory back
    /// then (`main.rs`).
    pub async fn run_until_stopped_after_start(
        self,
        started: impl FnOnce(),
    ) -> std::io::Result<()> {
        let mut server = self.server;
        let mut started = Some(started);
        let result = std::future::poll_fn(|cx| {
            let poll = std::future::Future::poll(std::pin::Pin::new(&mut server), cx);
            if poll.is_pending() {
                if let Some(started) = started.take() {
                    started();
                }
            }
            poll
        })
        .await;
        for worker in &self.workers {
            worker.abort();
        }
        if let Some(db) = self.state.storage.embedded() {
            if tokio::time::timeout(Duration::from_secs(5), db.close())
                .await
                .is_err()
            {
                tracing::warn!("the embedded store did not close within 5 s");
            }
        }
        result
    }
}

fn http_server(
    listener: TcpListener,
    state: Arc<AppState>,
    settings: &Settings,
) -> Result<(Server, Option<JoinHandle<()>>), StartupError> {
    let data = web::Data::new(state);
    let max_body = settings.server.max_body_bytes;
    let rate_limits = Arc::new(RateLimits::new(settings));
    let openapi_document = openapi::document();
    let document = web::Data::new(Document::new(&openapi_document));
    let docs_page = web::Data::new(DocsPage::new(&openapi_document, settings.server.docs));
    drop(openapi_document);
    let security_headers = SecurityHeaders::new(settings.server.hsts_max_age);
    let evictor = Some(rate_limits.clone().evict_idle(RATE_LIMIT_EVICTION_INTERVAL));
    let browser = Arc::new(data.browser.clone());
    let server = HttpServer::new(move || {
        let security_headers = security_headers.clone();
        let browser = browser.clone();
        let rate_limits = rate_limits.clone();
        let app = App::new()
            .app_data(data.clone())
            .app_data(web::Data::from(rate_limits.clone()))
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body)
                    .error_handler(|err, _| json_error(err).into()),
            )
            .app_data(web::PayloadConfig::default().limit(max_body))
            // A query string that does not fit its handler's parameters (`?limit=abc`)
            // gets the JSON envelope too, not actix's plain-text 400. The message says
            // where, never what: values are not echoed.
            .app_data(web::QueryConfig::default().error_handler(|_, _| {
                crate::error::ApiError::bad_request(
                    "invalid_query",
                    "the query string has a malformed or mistyped parameter",
                )
                .into()
            }))
            .wrap_fn(move |req, service| crate::rate_limit::limit(req, service, &rate_limits))
            .wrap_fn(refuse_encoded_bodies)
            .wrap_fn(crate::telemetry::observe_request)
            .wrap_fn(move |req, service| crate::browser_session::cors(req, service, &browser))
            .wrap_fn(move |req, service| add_security_headers(req, service, &security_headers))
            .into_utoipa_app()
            .openapi(openapi::ApiDoc::openapi());
        // Registered without documentation (see `openapi::Endpoint`): the document
        // is built once, below, and shared.
        let (app, _) = routes(app).split_for_parts();
        app.app_data(document.clone())
            .app_data(docs_page.clone())
            .default_service(web::to(operations::not_found))
    })
    .workers(settings.server.workers)
    // SIGTERM/SIGINT: stop accepting, let in-flight requests finish (bounded).
    .shutdown_timeout(15)
    .listen(listener)?
    .run();
    Ok((server, evictor))
}

/// The password policy, with the breached-password range API when configured.
fn password_policy(settings: &Settings) -> Result<PasswordPolicy, StartupError> {
    let breached = settings
        .passwords
        .breached_url
        .as_deref()
        .map(|url| {
            BreachedPasswords::new(
                url,
                settings.passwords.breached_timeout,
                if settings.passwords.breached_fail_closed {
                    BreachCheckFailure::Closed
                } else {
                    BreachCheckFailure::Open
                },
            )
            .map_err(|e| StartupError::Config(format!("breached-password check: {e}")))
        })
        .transpose()?;
    Ok(PasswordPolicy {
        breached,
        ..PasswordPolicy::default()
    })
}

/// How often idle clients leave the rate limiter: each pass walks every key, so
/// not too often; a client counts as idle only once its bucket is full again, so
/// eviction never lets anyone past the limit.
const RATE_LIMIT_EVICTION_INTERVAL: Duration = Duration::from_secs(60);

pub use crate::resources::AUTH_SCOPE;

/// The server's public base URL: `KEYLEDGER_PUBLIC_URL`, or, when it was left
/// to its default (the listen address) with the port left to the system, the
/// address actually bound.
fn public_base(settings: &Settings, bound: std::net::SocketAddr) -> Result<url::Url, StartupError> {
    let configured = &settings.mail.delivery.public_url;
    let base = if *configured == format!("http://{}", settings.server.bind) {
        format!("http://{bound}")
    } else {
        configured.clone()
    };
    url::Url::parse(&base)
        .map_err(|e| StartupError::Config(format!("KEYLEDGER_PUBLIC_URL {base:?}: {e}")))
}

/// Whom passkeys are made for, with the attestation allowlist read from its
/// file when one is set.
fn relying_party(
    settings: &crate::settings::WebauthnSettings,
) -> Result<keyledger_commands::passkeys::RelyingParty, StartupError> {
    use keyledger_commands::passkeys::{AttestedAuthenticator, RelyingParty};
    let refused = |e: &dyn std::fmt::Display| StartupError::Config(format!("passkeys: {e}"));
    let relying_party = RelyingParty::new(&settings.rp_id, &settings.rp_name, &settings.origins)
        .map_err(|e| refused(&e))?;
    let Some(path) = &settings.attestation_allowlist else {
        return Ok(relying_party);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        refused(&format!(
            "KEYLEDGER_WEBAUTHN_ATTESTATION_ALLOWLIST {}: {e}",
            path.display()
        ))
    })?;
    let authenticators: Vec<AttestedAuthenticator> = serde_json::from_str(&text).map_err(|e| {
        refused(&format!(
            "KEYLEDGER_WEBAUTHN_ATTESTATION_ALLOWLIST {}: {e}",
            path.display()
        ))
    })?;
    relying_party
        .attested_only(&authenticators)
        .map_err(|e| refused(&e))
}

/// Every route the server serves, registered and documented in one go: each resource
/// adds its routes (see [`crate::resources`]).
pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Error = actix_web::Error,
        InitError = (),
    >,
{
    let v1 = Routes::new();
    let v1 = auth::routes(v1);
    let v1 = recovery::routes(v1);
    let v1 = email_login::routes(v1);
    let v1 = mfa::routes(v1);
    let v1 = passkeys::routes(v1);
    let v1 = social::routes(v1);
    let v1 = sessions::routes(v1);
    let v1 = access::routes(v1);
    let v1 = users::routes(v1);
    let v1 = email_change::routes(v1);
    let v1 = invitations::routes(v1);
    let v1 = organizations::routes(v1);
    let v1 = oidc_clients::routes(v1);
    let v1 = admin::routes(v1);
    let v1 = audit::routes(v1);
    let v1 = oidc::routes(v1);
    let v1 = oidc_keys::routes(v1);
    let app = v1.mount(app);
    let app = oidc::discovery_routes(app);
    let app = operations::routes(app);
    let app = docs::routes(app);
    let app = pages::routes(app);
    crate::hosted::routes(app)
}

/// A configured duration as the write side counts time.
fn chrono_duration(duration: Duration) -> Result<chrono::Duration, StartupError> {
    chrono::Duration::from_std(duration).map_err(|e| StartupError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let map: std::collections::HashMap<&str, &str> = pairs.iter().copied().collect();
        Settings::from_lookup(|k| map.get(k).map(|v| (*v).to_owned())).unwrap()
    }

    #[test]
    fn the_embedded_default_says_where_the_data_goes_and_that_events_stay_in_process() {
        let report = startup_report(&settings(&[]));
        assert_eq!(
            report[0],
            "storage: embedded SQLite at keyledger-data/keyledger.db \
             (DATABASE_URL not set; synchronous=full)"
        );
        assert!(
            report[1].contains("development and single-node use"),
            "{report:?}"
        );
        assert!(
            report[2].starts_with("warning: the audit key file keyledger-data/audit-key.paserk"),
            "{report:?}"
        );
        assert_eq!(
            report.last().unwrap(),
            "relay disabled: events fan out in process only (NATS_URL not set)"
        );
    }

    #[test]
    fn unknown_variables_are_warned_about_by_name_only() {
        let mut with_typo = settings(&[]);
        with_typo.unknown_variables = vec!["KEYLEDGER_SIGNINGKEY".into()];
        let report = startup_report(&with_typo);
        assert!(
            report[0].starts_with("warning: KEYLEDGER_SIGNINGKEY is not a setting"),
            "{report:?}"
        );
        assert_eq!(report.len(), startup_report(&settings(&[])).len() + 1);
    }

    #[test]
    fn a_missing_signing_key_is_generated_only_for_the_embedded_store() {
        let dir = std::env::temp_dir().join(format!("keyledger-keys-{}", uuid::Uuid::new_v4()));
        let key_file = dir.join("signing-key.paserk");
        let key_file = key_file.to_str().unwrap();

        let pg = settings(&[
            ("DATABASE_URL", "postgres://db/keyledger"),
            ("KEYLEDGER_SIGNING_KEY_FILE", key_file),
        ]);
        let Err(StartupError::Key(message)) = load_keys(&pg) else {
            panic!("PostgreSQL mode generated a signing key");
        };
        assert!(message.contains("keyledger keys generate"), "{message}");
        assert!(!dir.join("signing-key.paserk").exists());

        let embedded = settings(&[
            ("KEYLEDGER_DATA_DIR", dir.to_str().unwrap()),
            ("KEYLEDGER_SIGNING_KEY_FILE", key_file),
        ]);
        let (first, _) = load_keys(&embedded).expect("generated on first start");
        let (again, _) = load_keys(&embedded).expect("kept");
        assert_eq!(first, again, "the generated key is kept, not replaced");
        // Once it exists, PostgreSQL mode uses it too.
        assert_eq!(load_keys(&pg).expect("configured now").0, first);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_audit_key_warning_is_only_for_a_key_file_inside_the_data_dir() {
        let elsewhere = settings(&[("KEYLEDGER_AUDIT_KEY_FILE", "/etc/keyledger/audit.paserk")]);
        assert!(!audit_key_in_data_dir(&elsewhere));
        let inside = settings(&[
            ("KEYLEDGER_DATA_DIR", "./data"),
            ("KEYLEDGER_AUDIT_KEY_FILE", "data/keys/audit.paserk"),
        ]);
        assert!(audit_key_in_data_dir(&inside));
        // A key given directly, or no signing at all, reads no file.
        let given = settings(&[("KEYLEDGER_AUDIT_KEY", "k4.secret.x")]);
        assert!(!audit_key_in_data_dir(&given));
        let unsigned = settings(&[("KEYLEDGER_CHAIN_CHECKPOINT_SECS", "0")]);
        assert!(!audit_key_in_data_dir(&unsigned));
        // PostgreSQL: the data directory holds no log to protect the key from.
        let pg = settings(&[("DATABASE_URL", "postgres://db/keyledger")]);
        assert!(!audit_key_in_data_dir(&pg));
        assert_eq!(
            pg.audit.key_file,
            PathBuf::from("keyledger-data/audit-key.paserk")
        );
    }

    #[test]
    fn postgres_and_nats_are_named_without_their_passwords() {
        let report = startup_report(&settings(&[
            (
                "DATABASE_URL",
                "postgres://kl:s3cret@db.internal:5432/keyledger",
            ),
            ("NATS_URL", "nats://bus:t0ken@nats.internal:4222"),
            (
                "KEYLEDGER_SMTP_URL",
                "smtp+starttls://mailer:m4il@mail.internal:587",
            ),
        ]));
        assert_eq!(
            report,
            [
                "storage: PostgreSQL at postgres://kl:***@db.internal:5432/keyledger (DATABASE_URL)",
                "mail: SMTP smtp+starttls://mailer:***@mail.internal:587 (KEYLEDGER_SMTP_URL)",
                "bus: NATS at nats://bus:***@nats.internal:4222 (stream AUTH_EVENTS)",
            ]
        );
        // An '@' in the query is not the end of credentials; a password there is hidden.
        assert_eq!(
            redacted_url("postgres://kl@db/keyledger?password=x@y"),
            "postgres://kl@db/keyledger?password=***"
        );
        assert_eq!(
            redacted_url("postgres://db/k?sslmode=require&PassWord=s3cret&sslpassword=k3y#f"),
            "postgres://db/k?sslmode=require&PassWord=***&sslpassword=***#f"
        );
        // A NATS user name alone is a token.
        assert_eq!(
            redacted_url("nats://t0ken@nats.internal:4222"),
            "nats://***@nats.internal:4222"
        );
        assert_eq!(
            redacted_url("postgres://db/keyledger"),
            "postgres://db/keyledger"
        );
    }
}
