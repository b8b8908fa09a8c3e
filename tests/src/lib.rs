//! One helper for every end-to-end test: [`spawn_app`] starts the real server on a
//! random port against real PostgreSQL and NATS, with a database and a JetStream
//! stream of its own that are removed again when the [`TestApp`] is dropped.
//!
//! Services are required: if PostgreSQL or NATS is not reachable, the test fails
//! with a message saying how to start it. Nothing is skipped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keyledger_api::state::AppState;
use keyledger_api::{Application, Secret, Settings};
use keyledger_commands::TokenIssuer;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

pub mod nats;
pub mod proxy;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
pub const PASSWORD: &str = "correct horse battery staple";

/// Fails the test loudly when a required service is down.
pub async fn require_services() {
    if let Err(e) = sqlx::PgPool::connect(PG_ADMIN_URL).await {
        panic!(
            "PostgreSQL is required at 127.0.0.1:5432 ({e}). Start it with: \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        );
    }
    if let Err(e) = async_nats::connect(NATS_URL).await {
        panic!(
            "NATS with JetStream is required at 127.0.0.1:4222 ({e}). Start it with: \
             start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
             -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
        );
    }
}

/// Names owned by one test: its database, stream and subjects.
#[derive(Clone, Debug)]
pub struct TestResources {
    pub database: String,
    pub database_url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub signing_key: String,
    /// PASERK k4.secret signing this test's chain checkpoints.
    pub audit_key: String,
    /// Keys this test's email index (`email_claims` digests).
    pub email_index_key: String,
}

impl TestResources {
    pub fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let short = &id[..16];
        let database = format!("keyledger_test_{short}");
        let (signing_key, _) = TokenIssuer::generate_key().expect("key generation");
        let (audit_key, _) =
            keyledger_projections::AuditKey::generate().expect("audit key generation");
        Self {
            database_url: format!("postgres://postgres@127.0.0.1:5432/{database}"),
            database,
            stream: format!("KLTEST_{short}"),
            subject_prefix: format!("kltest.{short}.auth.events"),
            signing_key,
            audit_key,
            email_index_key: keyledger_domain::EmailIndexKey::generate().encode(),
        }
    }

    /// Settings for a server using these resources; cheap Argon2 so tests are
    /// fast, no rate limit unless a test asks for one.
    pub fn settings(&self) -> Settings {
        Settings {
            bind: "127.0.0.1:0".parse().expect("address"),
            database_url: self.database_url.clone(),
            db_max_connections: 10,
            nats_url: Some(NATS_URL.into()),
            nats_stream: self.stream.clone(),
            nats_subject_prefix: self.subject_prefix.clone(),
            signing_key: Some(Secret::new(self.signing_key.clone())),
            audit_key: Some(Secret::new(self.audit_key.clone())),
            email_index_key: Some(Secret::new(self.email_index_key.clone())),
            argon2_memory_kib: 4096,
            argon2_iterations: 1,
            rate_limit_per_second: 0,
            workers: 2,
            ..Settings::default()
        }
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
    pub state: Arc<AppState>,
    server: Option<RunningServer>,
    /// Whether dropping this app removes its database and stream.
    owns_resources: bool,
}

struct RunningServer {
    handle: actix_web::dev::ServerHandle,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let resources = TestResources::new();
    let mut settings = resources.settings();
    configure(&mut settings);
    start(resources, settings, true).await
}

/// Starts a server on existing resources (a restart); the returned app does not
/// remove them when dropped.
pub async fn start(resources: TestResources, settings: Settings, owns_resources: bool) -> TestApp {
    require_services().await;
    let app = Application::build(settings.clone())
        .await
        .expect("the server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    let handle = app.handle();
    let join = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::builder()
            .user_agent("keyledger-e2e/1.0")
            .build()
            .expect("http client"),
        resources,
        settings,
        state,
        server: Some(RunningServer { handle, join }),
        owns_resources,
    }
}

/// The body of a response as JSON (panics on a non-JSON body: every answer
/// of this API, errors included, is JSON).
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

pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub session_id: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
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
    /// database holds (a failed login answers without waiting for its events to be
    /// projected). The target is the last stored event, not the feed's head: the
    /// head stops below any transaction still running anywhere in the cluster
    /// (another test's rebuild holds one), which would let the wait end early.
    pub async fn read_models_caught_up(&self) {
        use keyledger_projections::{read_models::CHECKPOINT, Position, ReadModels};
        let last: Option<(i64, i64)> = sqlx::query_as(
            "SELECT tx_id::text::bigint, global_position FROM events
              ORDER BY tx_id DESC, global_position DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await
        .expect("events");
        let target = last.map_or(Position::START, |(tx_id, global_position)| Position {
            tx_id,
            global_position,
        });
        for _ in 0..600 {
            let mut conn = self.pool().acquire().await.expect("connection");
            let checkpoint = ReadModels::checkpoint(&mut conn, CHECKPOINT)
                .await
                .expect("checkpoint");
            if checkpoint >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the read-model projector did not catch up");
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

    /// A pool on this test's database, for inspecting the event store.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.state.pool
    }

    /// Stops the server and its background workers, keeping database and stream.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.handle.stop(false).await;
            let _ = server.join.await;
        }
    }
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

/// Removes a test's database and stream (on a thread of its own, as Drop cannot
/// await).
pub fn cleanup(resources: &TestResources) {
    let resources = resources.clone();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            if let Ok(pool) = sqlx::PgPool::connect(PG_ADMIN_URL).await {
                let _ = sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    resources.database
                ))
                .execute(&pool)
                .await;
            }
            if let Ok(client) = async_nats::connect(NATS_URL).await {
                let js = async_nats::jetstream::new(client);
                let _ = js.delete_stream(&resources.stream).await;
            }
        });
    })
    .join();
}

/// A TCP port nobody listens on right now.
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
