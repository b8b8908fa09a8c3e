//! One helper for every end-to-end test: [`spawn_app_on`] starts the real server on
//! a random port against a back end ([`Backend`]): PostgreSQL (a database of its
//! own, with NATS) or the embedded SQLite store (a temporary data directory of its
//! own, without NATS, the embedded default). Everything a test creates (database,
//! data directory, JetStream stream) is removed again when the [`TestApp`] is
//! dropped. [`e2e!`] writes one test for both back ends.
//!
//! Services are required: if PostgreSQL or NATS is needed and not reachable, the
//! test fails with a message saying how to start it. Nothing is skipped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keyledger_api::state::AppState;
use keyledger_api::{Application, Secret, Settings, StartupError, StorageSettings};
use keyledger_commands::TokenIssuer;
use keyledger_storage::{Durability, EmbeddedError, EmbeddedSettings, OpenError};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

pub mod browser;
pub mod db;
pub mod nats;
pub mod oidc;
pub mod pages;
pub mod proxy;
pub mod sms;
pub mod smtp;
pub mod totp;

pub use db::{Bind, FromBoth, Sql, TestDb};

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const PASSWORD: &str = "correct horse battery staple";

/// Which storage a test's server runs on. Every portable test runs on both (see
/// [`e2e!`]); the few that are PostgreSQL-only by nature say so.
pub use keyledger_storage::Backend;

/// One test on both back ends: expands
/// `e2e! { async fn name(backend) { … } }` into a module `name` with the tests
/// `postgres` and `sqlite`, each running the body with `backend` bound to its
/// [`Backend`]. The module sees everything of the file (`use super::*`), so helper
/// functions and imports work as in a plain test. Run one half by name:
/// `cargo test -p keyledger-e2e --test e2e sqlite`.
///
/// Attributes before `async fn` (doc comments included) go on the module. Write
/// `e2e! { multi_thread async fn … }` for a test that needs a multi-threaded
/// runtime (2 workers).
#[macro_export]
macro_rules! e2e {
    ($(#[$attr:meta])* async fn $name:ident($backend:ident) $body:block) => {
        $crate::e2e!(@expand [tokio::test] $(#[$attr])* $name $backend $body);
    };
    ($(#[$attr:meta])* multi_thread async fn $name:ident($backend:ident) $body:block) => {
        $crate::e2e!(
            @expand [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])* $name $backend $body
        );
    };
    (@expand [$($runtime:tt)*] $(#[$attr:meta])* $name:ident $backend:ident $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[$($runtime)*]
            async fn postgres() {
                #[allow(unused_variables)]
                let $backend = $crate::Backend::Postgres;
                $body
            }

            #[$($runtime)*]
            async fn sqlite() {
                #[allow(unused_variables)]
                let $backend = $crate::Backend::Sqlite;
                $body
            }
        }
    };
}

/// Fails the test loudly when a service it needs is down.
pub async fn require_services(postgres: bool, nats: bool) {
    if postgres {
        if let Err(e) = sqlx::PgPool::connect(PG_ADMIN_URL).await {
            panic!(
                "PostgreSQL is required at 127.0.0.1:5432 ({e}). Start it with: \
                 pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
            );
        }
    }
    if nats {
        if let Err(e) = async_nats::connect(NATS_URL).await {
            panic!(
                "NATS with JetStream is required at 127.0.0.1:4222 ({e}). Start it with: \
                 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
                 -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
            );
        }
    }
}

/// Names owned by one test: its database or data directory, stream and subjects.
#[derive(Clone, Debug)]
pub struct TestResources {
    pub backend: Backend,
    /// The PostgreSQL database (created by the server on `Backend::Postgres`).
    pub database: String,
    pub database_url: String,
    /// The embedded store's data directory (created by the server on
    /// `Backend::Sqlite`).
    pub data_dir: PathBuf,
    pub stream: String,
    pub subject_prefix: String,
    pub signing_key: String,
    /// PASERK k4.secret signing this test's chain checkpoints.
    pub audit_key: String,
    /// Keys this test's email index (`email_claims` digests).
    pub email_index_key: String,
    /// PKCS#8 PEM keys signing this test's ES256 and RS256 JWTs (the RSA key is
    /// the test process's: generating one per server would cost every test).
    pub es256_key: String,
    pub rs256_key: String,
}

/// One RSA key per test process (see [`TestResources::rs256_key`]).
fn process_rsa_key() -> String {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        keyledger_commands::JwtKeys::generate(keyledger_commands::JwsAlg::RS256)
            .expect("RSA key generation")
            .0
    })
    .clone()
}

impl TestResources {
    /// Resources on PostgreSQL (what every test used before the embedded store).
    pub fn new() -> Self {
        Self::on(Backend::Postgres)
    }

    pub fn on(backend: Backend) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let short = &id[..16];
        let database = format!("keyledger_test_{short}");
        let (signing_key, _) = TokenIssuer::generate_key().expect("key generation");
        let (audit_key, _) =
            keyledger_projections::AuditKey::generate().expect("audit key generation");
        Self {
            backend,
            database_url: format!("postgres://postgres@127.0.0.1:5432/{database}"),
            database,
            data_dir: std::env::temp_dir().join(format!("keyledger-test-{short}")),
            stream: format!("KLTEST_{short}"),
            subject_prefix: format!("kltest.{short}.auth.events"),
            signing_key,
            audit_key,
            email_index_key: keyledger_domain::EmailIndexKey::generate().encode(),
            es256_key: keyledger_commands::JwtKeys::generate(keyledger_commands::JwsAlg::ES256)
                .expect("P-256 key generation")
                .0,
            rs256_key: process_rsa_key(),
        }
    }

    /// Settings for a server using these resources; cheap Argon2 so tests are
    /// fast, no rate limit (of any class) and no per-client hashing cap unless a test asks for
    /// one (every request of a test comes from 127.0.0.1, standing for many
    /// clients). PostgreSQL runs with NATS
    /// (as every PostgreSQL test always has); SQLite without, the embedded
    /// default; set `nats.url` to change either.
    pub fn settings(&self) -> Settings {
        let (storage, nats_url) = match self.backend {
            Backend::Postgres => (
                StorageSettings::Postgres {
                    url: self.database_url.clone(),
                    max_connections: 10,
                },
                Some(NATS_URL.to_owned()),
            ),
            Backend::Sqlite => (
                StorageSettings::Embedded(EmbeddedSettings {
                    data_dir: self.data_dir.clone(),
                    // Test data is disposable: a crash of the process loses
                    // nothing, and no fsync per commit keeps the suite fast.
                    durability: Durability::Normal,
                    readers: 4,
                }),
                None,
            ),
        };
        let mut settings = Settings {
            storage,
            ..Settings::default()
        };
        settings.server.bind = "127.0.0.1:0".parse().expect("address");
        // The public URL follows the listen address, as it does when unset: the
        // server then takes the port it bound (social login's callbacks need it).
        settings.mail.delivery.public_url = format!("http://{}", settings.server.bind);
        settings.server.workers = 2;
        settings.nats.url = nats_url;
        settings.nats.stream = self.stream.clone();
        settings.nats.subject_prefix = self.subject_prefix.clone();
        settings.tokens.signing_key = Some(Secret::new(self.signing_key.clone()));
        settings.tokens.es256_key = Some(Secret::new(self.es256_key.clone()));
        settings.tokens.rs256_key = Some(Secret::new(self.rs256_key.clone()));
        settings.audit.key = Some(Secret::new(self.audit_key.clone()));
        settings.personal_data.email_index_key = Some(Secret::new(self.email_index_key.clone()));
        settings.passwords.argon2_memory_kib = 4096;
        settings.passwords.argon2_iterations = 1;
        settings.passwords.hash_concurrency_per_client = 1024;
        settings.rate_limits.per_second = 0;
        settings.rate_limits.account_per_minute = 0;
        settings.rate_limits.token_checks_per_second = 0;
        settings.rate_limits.management_per_second = 0;
        // Tests of reuse detection replay a rotated token at once, which the
        // grace would take for a lost answer; the grace has its own tests
        // (`session_levers`), which set it.
        settings.sessions.refresh_reuse_grace = std::time::Duration::ZERO;
        // Tests of everything but the email flows register an account and use
        // it at once (201 with its id); the email flows' tests turn it on.
        settings.email_flows.verification = keyledger_commands::EmailVerification::Off;
        // Mails go to files in the test's own directory, whatever its back end.
        settings.mail.delivery.outbox_dir = self.data_dir.join("outbox");
        settings
    }
}

impl Default for TestResources {
    fn default() -> Self {
        Self::new()
    }
}

/// A running server plus a client for it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub resources: TestResources,
    pub settings: Settings,
    /// The server's state (`app.state.hasher`, …); released by [`TestApp::stop`].
    pub state: ServerState,
    server: Option<RunningServer>,
    /// Whether dropping this app removes its database, data directory and stream.
    owns_resources: bool,
}

/// The state of a test's server, until the test stops it: stopping drops it, so
/// that the embedded store's data directory is free for a restart.
pub struct ServerState(Option<Arc<AppState>>);

impl std::ops::Deref for ServerState {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        self.0
            .as_deref()
            .expect("the server of this TestApp was stopped")
    }
}

struct RunningServer {
    handle: actix_web::dev::ServerHandle,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A server on PostgreSQL with NATS, as before there were two back ends.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with settings changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_on_with(Backend::Postgres, configure).await
}

/// A server on `backend`: PostgreSQL with NATS, SQLite without (see
/// [`TestResources::settings`]).
pub async fn spawn_app_on(backend: Backend) -> TestApp {
    spawn_app_on_with(backend, |_| {}).await
}

/// [`spawn_app_on`] with settings changed by `configure`.
pub async fn spawn_app_on_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let resources = TestResources::on(backend);
    let mut settings = resources.settings();
    configure(&mut settings);
    start(resources, settings, true).await
}

/// A server on `backend` publishing to the shared NATS, for tests about
/// integration events (the one feature the embedded default leaves off).
pub async fn spawn_app_with_nats(backend: Backend) -> TestApp {
    spawn_app_on_with(backend, |s| s.nats.url = Some(NATS_URL.into())).await
}

/// Starts a server on existing resources (a restart); the returned app does not
/// remove them when dropped. Stop the previous server first ([`TestApp::stop`]):
/// a data directory serves one process at a time.
pub async fn start(resources: TestResources, settings: Settings, owns_resources: bool) -> TestApp {
    require_services(
        matches!(settings.storage, StorageSettings::Postgres { .. }),
        settings.nats.url.as_deref() == Some(NATS_URL),
    )
    .await;
    let app = match build(&settings).await {
        Ok(app) => app,
        Err(e) => {
            if owns_resources {
                cleanup(&resources);
            }
            panic!("the server starts: {e}");
        }
    };
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let handle = app.handle();
    let join = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::builder()
            .user_agent("keyledger-e2e/1.0")
            // The server closes a connection idle for 5 s (actix-web's keep-alive);
            // reusing one at that moment fails the request (`IncompleteMessage`),
            // so the client lets idle connections go well before.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("http client"),
        resources,
        settings,
        state: ServerState(Some(state)),
        server: Some(RunningServer { handle, join }),
        owns_resources,
    }
}

/// Builds the server. A restart may find the data directory still locked for a
/// moment while the stopped server's background tasks finish dropping it.
async fn build(settings: &Settings) -> Result<Application, StartupError> {
    let mut attempts = 0;
    loop {
        match Application::build(settings.clone()).await {
            Err(StartupError::Storage(OpenError::Embedded(EmbeddedError::InUse(_))))
                if attempts < 100 =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

/// The first of up to ten requests, the `i`-th made by `request(i)`, that is
/// answered 429: for tests that spend a rate limit's budget.
pub async fn first_rate_limited<F, Fut>(mut request: F) -> Option<Response>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    for i in 0..10 {
        let response = request(i).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return Some(response);
        }
    }
    None
}

/// The body of a response as JSON (panics on a non-JSON body: every answer
/// of this API, errors included, is JSON).
/// `method path` as `app.call` sends it, answered as its status and JSON body
/// (`null` when empty).
pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let response = app.call(method, path, token, body.as_ref()).await;
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON")
    };
    (status, value)
}

pub async fn body(response: Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"))
}

/// Asserts the error envelope and returns its code.
pub async fn error_code(response: Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    let body = body(response).await;
    assert!(body["message"].is_string(), "error without message: {body}");
    body["error"].as_str().expect("error code").to_owned()
}

/// The password hashes the stored payloads hold: sealed with the account's data
/// key since `UserRegistered` 3.0 / `PasswordChanged` 2.0 (no reader may open
/// them, so an output holding "argon2" would mean one did).
pub fn stored_password_hashes(stored: &[String]) -> Vec<String> {
    stored
        .iter()
        .filter_map(|payload| serde_json::from_str::<serde_json::Value>(payload).ok())
        .filter_map(|payload| {
            payload
                .as_object()?
                .values()
                .next()?
                .get("password_hash")?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The event types [`TestApp::session_journey`] writes.
pub const SESSION_JOURNEY_EVENTS: [&str; 6] = [
    "UserRegistered",
    "UserLoggedIn",
    "SessionStarted",
    "TokenRefreshed",
    "LoginFailed",
    "UserLoggedOut",
];

/// A refresh token's hash as the store and the events hold it (hex SHA-256).
pub fn refresh_token_hash(refresh_token: &str) -> String {
    let hash = keyledger_commands::RefreshToken::parse(refresh_token)
        .expect("a refresh token")
        .hash();
    serde_json::to_value(hash)
        .expect("hash")
        .as_str()
        .expect("hex")
        .to_owned()
}

pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub session_id: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// The Prometheus text `/metrics` answers.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.expect("body")
    }

    /// A GET without credentials.
    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Any request: `token` as bearer, `body` as JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("request")
    }

    /// Waits until the read-model projector has applied every event this test's
    /// store holds (a failed login answers without waiting for its events to be
    /// projected). The target is the last stored event, not the feed's head: the
    /// head stops below any transaction still running anywhere in the cluster
    /// (another test's rebuild holds one), which would let the wait end early.
    pub async fn read_models_caught_up(&self) {
        use keyledger_projections::{read_models::CHECKPOINT, Position};
        let db = self.db();
        let last: Option<(i64, i64)> = db
            .optional_row(
                (
                    "SELECT tx_id::text::bigint, global_position FROM events
                      ORDER BY tx_id DESC, global_position DESC LIMIT 1",
                    "SELECT tx_id, global_position FROM events
                      ORDER BY global_position DESC LIMIT 1",
                ),
                &[],
            )
            .await;
        let target = last.map_or(Position::START, |(tx_id, global_position)| Position {
            tx_id,
            global_position,
        });
        for _ in 0..600 {
            let checkpoint: Option<(i64, i64)> = db
                .optional_row(
                    "SELECT tx_id, global_position FROM projection_checkpoints WHERE name = $1",
                    &[CHECKPOINT.into()],
                )
                .await;
            let checkpoint =
                checkpoint.map_or(Position::START, |(tx_id, global_position)| Position {
                    tx_id,
                    global_position,
                });
            if checkpoint >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the read-model projector did not catch up");
    }

    /// `/health` once the server's NATS client has connected. The client connects in
    /// the background (the server starts while NATS is down), so right after start
    /// a loaded machine can still report `"nats": "down"`; panics if NATS is not up
    /// within ten seconds.
    pub async fn health_with_nats_connected(&self) -> (StatusCode, Value) {
        for _ in 0..200 {
            let response = self.client.get(self.url("/health")).send().await.unwrap();
            let status = response.status();
            let health = body(response).await;
            if health["nats"] == "up" {
                return (status, health);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server's NATS client did not connect within ten seconds");
    }

    /// What the relay published to this test's stream on the server's NATS, in
    /// stream order: read until `count` messages arrived or `within` ran out (see
    /// [`nats::read_stream`]).
    pub async fn published(
        &self,
        count: usize,
        within: Duration,
    ) -> Vec<(String, Option<String>, Value)> {
        let url = self
            .settings
            .nats
            .url
            .as_deref()
            .expect("a server that publishes");
        nats::read_stream(url, &self.resources.stream, count, within).await
    }

    /// Makes an account a platform administrator, as `keyledger admin create` does.
    pub async fn make_platform_admin(&self, user_id: Uuid) {
        let written = self
            .state
            .auth
            .grant_platform_admin(user_id, &keyledger_commands::RequestContext::default())
            .await
            .expect("grant platform admin");
        self.state.settle_access(written).await;
    }

    /// Invites `user_id` into `org` with `roles` as `inviter`; returns the answer's
    /// status and body.
    pub async fn invite(
        &self,
        inviter: &str,
        org: &str,
        user_id: Uuid,
        roles: Value,
    ) -> (StatusCode, Value) {
        let response = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/organizations/{org}/invitations"),
                Some(inviter),
                Some(&json!({"user_id": user_id, "roles": roles})),
            )
            .await;
        let status = response.status();
        (status, body(response).await)
    }

    /// Accepts an invitation as `invitee` (a token); returns the answer's status.
    pub async fn accept_invitation(&self, invitee: &str, invitation: &str) -> StatusCode {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/users/me/invitations/{invitation}/accept"),
            Some(invitee),
            None,
        )
        .await
        .status()
    }

    /// Makes `member` (id and token) a member of `org` the only way an
    /// organization admin can: `inviter` invites them and they accept. Returns the
    /// acceptance's status (the invitation itself must be answered 201).
    pub async fn join(
        &self,
        inviter: &str,
        org: &str,
        member: &(Uuid, String),
        roles: Value,
    ) -> StatusCode {
        let (status, invitation) = self.invite(inviter, org, member.0, roles).await;
        if status != StatusCode::CREATED {
            return status;
        }
        let id = invitation["invitation_id"].as_str().expect("invitation id");
        self.accept_invitation(&member.1, id).await
    }

    /// Creates an organization owned by the holder of `token` (a fresh slug, named
    /// "Acme"); returns its id.
    pub async fn new_organization(&self, token: &str) -> String {
        let slug = format!("org-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let response = self
            .call(
                reqwest::Method::POST,
                "/v1/organizations",
                Some(token),
                Some(&json!({"slug": slug, "name": "Acme"})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        body(response).await["organization_id"]
            .as_str()
            .expect("organization id")
            .to_owned()
    }

    /// Registers and logs in a fresh account; returns its id and access token.
    pub async fn new_user(&self) -> (Uuid, String) {
        let (_, tokens) = self.signed_in_user().await;
        let me = body(self.me(&tokens.access_token).await).await;
        let id = me["user_id"]
            .as_str()
            .expect("user id")
            .parse()
            .expect("uuid");
        (id, tokens.access_token)
    }

    pub async fn get_auth(&self, path: &str, access_token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.post(
            "/v1/auth/register",
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    /// Registers `email` with [`PASSWORD`] under the display name `name`.
    pub async fn register_named(&self, email: &str, name: &str) -> Response {
        self.post(
            "/v1/auth/register",
            &json!({"email": email, "password": PASSWORD, "display_name": name}),
        )
        .await
    }

    /// Registers `email` under the display name `name` (answered 201); returns the
    /// new account's id.
    pub async fn registered_named(&self, email: &str, name: &str) -> Uuid {
        let response = self.register_named(email, name).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        body(response).await["user_id"]
            .as_str()
            .expect("user id")
            .parse()
            .expect("uuid")
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post(
            "/v1/auth/login",
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post(
            "/v1/auth/refresh",
            &json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    pub async fn logout(&self, access_token: &str) -> Response {
        self.client
            .post(self.url("/v1/auth/logout"))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("request")
    }

    pub async fn me(&self, access_token: &str) -> Response {
        self.get_auth("/v1/auth/me", access_token).await
    }

    pub async fn sessions(&self, access_token: &str) -> Response {
        self.get_auth("/v1/auth/sessions", access_token).await
    }

    pub async fn revoke_session(&self, access_token: &str, session_id: &str) -> Response {
        self.client
            .delete(self.url(&format!("/v1/auth/sessions/{session_id}")))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("request")
    }

    pub async fn validate(&self, token: &str) -> Value {
        let response = self
            .post("/v1/auth/validate", &json!({ "token": token }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        body(response).await
    }

    /// The client-credentials grant, as JSON, for a service account.
    pub async fn client_credentials(&self, client_id: &str, secret: &str) -> Response {
        self.post(
            "/v1/auth/token",
            &json!({"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}),
        )
        .await
    }

    /// An access token of a service account (its client-credentials grant answered 200).
    pub async fn service_account_token(&self, client_id: &str, secret: &str) -> String {
        let response = self.client_credentials(client_id, secret).await;
        assert_eq!(response.status(), StatusCode::OK);
        body(response).await["access_token"]
            .as_str()
            .expect("access token")
            .to_owned()
    }

    /// Rotates the secret of the service account `client_id` of `org` as `admin`
    /// (answered 200); returns the new secret.
    pub async fn rotate_service_account_secret(
        &self,
        admin: &str,
        org: &str,
        client_id: &str,
    ) -> String {
        let response = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/organizations/{org}/service-accounts/{client_id}/secret"),
                Some(admin),
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        body(response).await["client_secret"]
            .as_str()
            .expect("client secret")
            .to_owned()
    }

    /// The decision of `/v1/auth/authorize` (answered 200) on `token` holding
    /// `permission` in `org`.
    pub async fn authorize(&self, token: &str, org: &str, permission: &str) -> Value {
        let response = self
            .post(
                "/v1/auth/authorize",
                &json!({"token": token, "organization_id": org, "permission": permission}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        body(response).await
    }

    /// The public keys `/v1/auth/keys` publishes.
    pub async fn published_keys(&self) -> Vec<Value> {
        body(self.get("/v1/auth/keys").await).await["keys"]
            .as_array()
            .expect("keys")
            .clone()
    }

    /// One account through the session routes, each step answered as it should
    /// be: registered, logged in, refreshed once, a failed login, logged out (the
    /// events of [`SESSION_JOURNEY_EVENTS`]). Returns the two refresh tokens it was
    /// given: secrets no output may hold.
    pub async fn session_journey(&self) -> [String; 2] {
        let (email, first) = self.signed_in_user().await;
        let second = self.tokens(self.refresh(&first.refresh_token).await).await;
        let failed = self.login(&email, "not the password at all").await;
        assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            self.logout(&second.access_token).await.status(),
            StatusCode::NO_CONTENT
        );
        [first.refresh_token, second.refresh_token]
    }

    /// Creates a service account named `name` with `roles` in `org` as `admin`
    /// (answered 201); returns its client id and secret.
    pub async fn new_service_account(
        &self,
        admin: &str,
        org: &str,
        name: &str,
        roles: Value,
    ) -> (String, String) {
        let response = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/organizations/{org}/service-accounts"),
                Some(admin),
                Some(&json!({"name": name, "roles": roles})),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let created = body(response).await;
        let field = |name: &str| created[name].as_str().expect(name).to_owned();
        (field("client_id"), field("client_secret"))
    }

    /// Registers and logs in a fresh account; returns its email and tokens.
    pub async fn signed_in_user(&self) -> (String, Tokens) {
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let response = self.register(&email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let tokens = self.tokens(self.login(&email, PASSWORD).await).await;
        (email, tokens)
    }

    pub async fn tokens(&self, response: Response) -> Tokens {
        assert_eq!(response.status(), StatusCode::OK);
        let body = body(response).await;
        Tokens {
            access_token: body["access_token"].as_str().expect("access").to_owned(),
            refresh_token: body["refresh_token"].as_str().expect("refresh").to_owned(),
            session_id: body["session_id"].as_str().expect("sid").to_owned(),
        }
    }

    /// An account reference for `keyledger-replay`'s library calls: ids as they
    /// are, emails through this server's email index key (claims hold digests).
    pub fn user_ref(&self, user: &str) -> keyledger_replay_tools::UserRef {
        let key = keyledger_domain::EmailIndexKey::parse(&self.resources.email_index_key)
            .expect("the test's email index key");
        user.parse::<keyledger_replay_tools::UserRef>()
            .expect("an id or an email address")
            .keyed(Some(&key))
    }

    /// The log as `keyledger-replay` opens it: PostgreSQL by its URL, the
    /// embedded store read-only beside the running server (which holds the data
    /// directory's lock).
    pub async fn replay_log(&self) -> keyledger_replay_tools::Database {
        let url = match self.backend() {
            Backend::Postgres => Some(self.resources.database_url.as_str()),
            Backend::Sqlite => None,
        };
        keyledger_replay_tools::open(
            url,
            &self.resources.data_dir,
            keyledger_replay_tools::Access::Read,
        )
        .await
        .expect("keyledger-replay opens the test's log")
    }

    /// The back end this test's server runs on.
    pub fn backend(&self) -> Backend {
        self.resources.backend
    }

    /// This test's store, for inspecting it with SQL on either back end.
    pub fn db(&self) -> TestDb {
        TestDb(self.state.storage.engine().clone())
    }

    /// A pool on this test's PostgreSQL database, for tests that are
    /// PostgreSQL-only (by nature, or not converted yet). Portable tests use
    /// [`Self::db`] and the helpers below.
    pub fn pool(&self) -> &sqlx::PgPool {
        self.state
            .postgres_pool()
            .expect("app.pool() is PostgreSQL only: use app.db() on the embedded store")
    }

    /// Every stored event, in feed order.
    pub async fn stored_events(&self) -> Vec<StoredEvent> {
        self.db()
            .rows(
                (
                    "SELECT global_position, aggregate_type, aggregate_id, sequence, event_type,
                            event_version, payload::text AS payload, metadata::text AS metadata
                       FROM events ORDER BY tx_id, global_position",
                    "SELECT global_position, aggregate_type, aggregate_id, sequence, event_type,
                            event_version, payload, metadata
                       FROM events ORDER BY global_position",
                ),
                &[],
            )
            .await
    }

    /// How many events are stored.
    pub async fn count_events(&self) -> i64 {
        self.db().scalar("SELECT count(*) FROM events", &[]).await
    }

    /// The event types of one aggregate, in sequence order.
    pub async fn event_types(&self, aggregate_type: &str, aggregate_id: &str) -> Vec<String> {
        self.db()
            .scalars(
                "SELECT event_type FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
                  ORDER BY sequence",
                &[aggregate_type.into(), aggregate_id.into()],
            )
            .await
    }

    /// Every row of the audit trail, oldest first (wait for
    /// [`Self::read_models_caught_up`] first when a write may still be projecting).
    pub async fn audit_rows(&self) -> Vec<AuditRow> {
        self.db()
            .rows(
                "SELECT global_position, occurred_at, actor, subject, action, outcome, ip,
                        user_agent, request_id, aggregate_type, aggregate_id, sequence, details
                   FROM audit_trail ORDER BY global_position",
                &[],
            )
            .await
    }

    /// Appends an event as it is, bypassing the aggregates (an event of an older
    /// release, say), chained like every other event, and wakes the server's feed.
    pub async fn append_raw_event(&self, event: RawEvent<'_>) {
        self.db().append_raw_event(event).await;
        if let Some(db) = self.state.storage.embedded() {
            db.commits().committed();
        }
    }

    /// Stops the server and its background workers, keeping database, data
    /// directory and stream. The state is released (`app.state` panics after).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.handle.stop(false).await;
            let _ = server.join.await;
        }
        self.state.0 = None;
    }

    /// Runs `command` (a `keyledger` command-line action on this test's store) as
    /// an operator can beside the server. The embedded store admits one process at
    /// a time: its server is stopped first and started again on the same
    /// resources afterwards. On PostgreSQL the server keeps running, and must
    /// notice what the other process wrote.
    pub async fn beside_the_server<T>(
        &mut self,
        command: impl std::future::Future<Output = T>,
    ) -> T {
        if self.backend() == Backend::Postgres {
            return command.await;
        }
        self.stop().await;
        let outcome = command.await;
        let restarted = start(
            self.resources.clone(),
            self.settings.clone(),
            self.owns_resources,
        )
        .await;
        // The stopped app hands its resources over rather than removing them.
        self.owns_resources = false;
        drop(std::mem::replace(self, restarted));
        outcome
    }
}

/// A signing key kept in a file of the test's own, the way PostgreSQL mode
/// requires (`keyledger keys generate`); its directory is removed on drop.
struct SigningKeyFile {
    path: PathBuf,
}

impl SigningKeyFile {
    fn generate() -> Self {
        let dir = std::env::temp_dir().join(format!("keyledger-keys-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("key directory");
        let path = dir.join("signing-key.paserk");
        keyledger_api::keyset::generate(&path).expect("signing key");
        Self { path }
    }

    /// The settings of `resources`, reading the signing key from this file (and
    /// the ES256 and RS256 keys from theirs beside it, created at the first start).
    fn settings(&self, resources: &TestResources) -> Settings {
        let mut settings = resources.settings();
        settings.tokens.signing_key = None;
        settings.tokens.es256_key = None;
        settings.tokens.rs256_key = None;
        settings.tokens.signing_key_file = self.path.clone();
        settings
    }

    /// Rotates the key as `keyledger keys rotate` does at `now`, for servers
    /// running with `settings`.
    fn rotate(
        &self,
        settings: &Settings,
        now: chrono::DateTime<chrono::Utc>,
        old_key: keyledger_api::keyset::OldKey,
    ) {
        keyledger_api::keyset::rotate(&self.path, settings.tokens.access_ttl, now, old_key)
            .expect("rotated");
    }
}

impl Drop for SigningKeyFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The start of a key-rotation test: a server whose signing key is kept in a file
/// ran, a fresh account signed in, and the server stopped.
pub struct SignedInBeforeARotation {
    /// The account's tokens, signed with the key before the rotation.
    pub tokens: Tokens,
    pub resources: TestResources,
    pub settings: Settings,
    /// The stopped server; it owns the resources.
    _before: TestApp,
    /// Dropped last, once no server reads it any more.
    key_file: SigningKeyFile,
}

/// A key-rotation test's start on `backend`.
pub async fn signed_in_before_a_rotation(backend: Backend) -> SignedInBeforeARotation {
    let key_file = SigningKeyFile::generate();
    let resources = TestResources::on(backend);
    let settings = key_file.settings(&resources);
    let mut before = start(resources.clone(), settings.clone(), true).await;
    let (_, tokens) = before.signed_in_user().await;
    before.stop().await;
    SignedInBeforeARotation {
        tokens,
        resources,
        settings,
        _before: before,
        key_file,
    }
}

impl SignedInBeforeARotation {
    /// Rotates the key as of `now` and starts a server again on the same resources.
    pub async fn rotate_and_restart(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        old_key: keyledger_api::keyset::OldKey,
    ) -> TestApp {
        self.key_file.rotate(&self.settings, now, old_key);
        start(self.resources.clone(), self.settings.clone(), false).await
    }
}

/// The events of type `event_type` among `stored`, in their order.
pub fn events_of_type<'a>(stored: &'a [StoredEvent], event_type: &str) -> Vec<&'a StoredEvent> {
    stored
        .iter()
        .filter(|e| e.event_type == event_type)
        .collect()
}

/// A stored event, its payload and metadata as the stored JSON text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredEvent {
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
}

impl StoredEvent {
    pub fn payload_json(&self) -> Value {
        serde_json::from_str(&self.payload).expect("stored payloads are JSON")
    }

    pub fn metadata_json(&self) -> Value {
        serde_json::from_str(&self.metadata).expect("stored metadata is JSON")
    }
}

/// A row of the audit trail.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub global_position: i64,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub subject: String,
    pub action: String,
    pub outcome: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    #[sqlx(json)]
    pub details: Value,
}

/// An event to append as it is (see [`TestApp::append_raw_event`]).
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub payload: &'a Value,
    pub metadata: &'a Value,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.join.abort();
        }
        if self.owns_resources {
            cleanup(&self.resources);
        }
    }
}

/// Removes a test's database or data directory, and its stream (on a thread of
/// its own, as Drop cannot await).
pub fn cleanup(resources: &TestResources) {
    let resources = resources.clone();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            match resources.backend {
                Backend::Postgres => {
                    if let Ok(pool) = sqlx::PgPool::connect(PG_ADMIN_URL).await {
                        let _ = sqlx::query(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            resources.database
                        ))
                        .execute(&pool)
                        .await;
                    }
                }
                Backend::Sqlite => {
                    let _ = std::fs::remove_dir_all(&resources.data_dir);
                }
            }
            if let Ok(client) = async_nats::connect(NATS_URL).await {
                let js = async_nats::jetstream::new(client);
                let _ = js.delete_stream(&resources.stream).await;
            }
        });
    })
    .join();
}

/// A TCP port nobody listens on right now. Another process could take it before
/// the test binds it, which fails the start loudly, not the test's assertions. It
/// comes from the ephemeral range (32768-60999 on Linux), above every port Chromium
/// refuses to visit (`ERR_UNSAFE_PORT`; the highest is 10080), so the browser tests
/// ([`browser`]) can serve on it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A nats-server of a test's own, so a test can take NATS down without touching
/// the shared one.
pub struct OwnNatsServer {
    pub port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl OwnNatsServer {
    pub fn start() -> Self {
        let port = free_port();
        let store = std::env::temp_dir().join(format!("keyledger-nats-{}", Uuid::new_v4()));
        let mut server = Self {
            port,
            store,
            child: None,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it on the same port and store.
    pub fn resume(&mut self) {
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (Debian package nats-server)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("own nats-server did not start on port {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `nats-server` from PATH, else where Debian installs it.
fn nats_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

impl Drop for OwnNatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

#[cfg(test)]
mod e2e_macro {
    use super::Backend;

    e2e! {
        /// Both forms expand to `<name>::postgres` and `<name>::sqlite`.
        async fn binds_the_backend_of_each_half(backend) {
            assert!(matches!(backend, Backend::Postgres | Backend::Sqlite));
        }
    }

    e2e! { multi_thread async fn runs_on_a_multi_threaded_runtime_when_asked(backend) {
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        assert_eq!(flavor, tokio::runtime::RuntimeFlavor::MultiThread, "{}", backend.name());
    }}
}
