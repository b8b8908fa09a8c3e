//! Several nodes on one PostgreSQL: the real binary, three times, on
//! one database and one NATS.
//!
//! - A logout on one node is refused by `validate` on the others within
//!   [`REVOCATION_BOUND`] (the README promises a fraction of it).
//! - Killing the read-model projector's leader and the relay's leader with
//!   SIGKILL under load hands their work to another node: the read models reach
//!   the head of the log, and the stream holds every event exactly once (after
//!   JetStream's `Nats-Msg-Id` dedupe), in order per aggregate.
//! - Killing and restarting NATS under load loses nothing either.
//!
//! PostgreSQL only by nature: the embedded store belongs to one process.
//! Each test runs its own nats-server on a free port, never the shared one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use keyledger_projections::IntegrationEvent;
use serde_json::{json, Value};
use sqlx::migrate::MigrateDatabase;
use sqlx::{PgPool, Postgres};

mod common;
use common::{free_port, ServerProcess as Node};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const PASSWORD: &str = "correct horse battery staple";

/// What the test asserts for a logout to reach `validate` on another node. The
/// README states the bound operators can rely on (1 s); this is a generous
/// multiple of it so a loaded machine does not make a correctness test flaky.
const REVOCATION_BOUND: Duration = Duration::from_secs(5);

/// A database of the test's own, dropped however the test ends.
struct Database {
    url: String,
}

impl Database {
    async fn create() -> Self {
        if let Err(e) = PgPool::connect(&format!("{PG}/postgres")).await {
            panic!("PostgreSQL is required at 127.0.0.1:5432: {e}");
        }
        let name = format!(
            "keyledger_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let url = format!("{PG}/{name}");
        Postgres::create_database(&url).await.expect("database");
        Self { url }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        common::force_drop_postgres_database(self.url.clone());
    }
}

/// A nats-server of the test's own (JetStream, file store), so the test can
/// kill it and start it again on the same port and store.
struct Nats {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl Nats {
    fn start() -> Self {
        let mut nats = Self {
            port: free_port(),
            store: std::env::temp_dir().join(format!("keyledger-nats-{}", uuid::Uuid::new_v4())),
            child: None,
        };
        nats.resume();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) {
        let binary = std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("nats-server"))
                    .find(|candidate| candidate.is_file())
            })
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
        let child = Command::new(binary)
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
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// What every node of the deployment shares: the database, NATS, the stream and
/// the keys.
struct Deployment {
    database: Database,
    nats: Nats,
    stream: String,
    subject_prefix: String,
    keys: PathBuf,
}

impl Deployment {
    async fn new() -> Self {
        let keys = std::env::temp_dir().join(format!("keyledger-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&keys).expect("key dir");
        let generated = Command::new(env!("CARGO_BIN_EXE_keyledger"))
            .args(["keys", "generate"])
            .env(
                "KEYLEDGER_SIGNING_KEY_FILE",
                keys.join("signing-key.paserk"),
            )
            .env("KEYLEDGER_LOG", "warn")
            .output()
            .expect("keyledger keys generate");
        assert!(generated.status.success(), "{generated:?}");
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Self {
            database: Database::create().await,
            nats: Nats::start(),
            stream: format!("NODES_{tag}"),
            subject_prefix: format!("nodes{tag}.events"),
            keys,
        }
    }

    /// Starts one more node. The first start creates the key files the server
    /// creates itself (audit, email index, data-key wrapping); start the others
    /// after it is ready so they read the same keys.
    fn start_node(&self) -> Node {
        let port = free_port();
        let child = self
            .keyledger()
            .env("NATS_URL", self.nats.url())
            .env("KEYLEDGER_NATS_STREAM", &self.stream)
            .env("KEYLEDGER_NATS_SUBJECT_PREFIX", &self.subject_prefix)
            .env("KEYLEDGER_BIND", format!("127.0.0.1:{port}"))
            .env("KEYLEDGER_RATE_LIMIT_PER_SECOND", "0")
            // Every load client comes from 127.0.0.1.
            .env("KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT", "64")
            .env("KEYLEDGER_HASH_QUEUE", "256")
            .env("KEYLEDGER_DB_MAX_CONNECTIONS", "8")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("keyledger starts");
        Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The `keyledger` binary with this deployment's database and keys, for a
    /// node or a command-line action on the same deployment.
    fn keyledger(&self) -> Command {
        let keys = &self.keys;
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyledger"));
        command
            .env("DATABASE_URL", &self.database.url)
            .env(
                "KEYLEDGER_SIGNING_KEY_FILE",
                keys.join("signing-key.paserk"),
            )
            .env("KEYLEDGER_AUDIT_KEY_FILE", keys.join("audit-key.paserk"))
            .env(
                "KEYLEDGER_EMAIL_INDEX_KEY_FILE",
                keys.join("email-index.key"),
            )
            .env(
                "KEYLEDGER_DATA_KEY_WRAPPING_KEY_FILE",
                keys.join("data-key-wrapping.key"),
            )
            .env("KEYLEDGER_ARGON2_MEMORY_KIB", "4096")
            .env("KEYLEDGER_ARGON2_ITERATIONS", "1")
            // Accounts are used as soon as registration answers (201).
            .env("KEYLEDGER_EMAIL_VERIFICATION", "off")
            .env("KEYLEDGER_EMAIL_LOGIN", "on")
            // No SMTP server: every node writes mails as files here.
            .env("KEYLEDGER_DATA_DIR", keys.join("data"))
            .env("KEYLEDGER_LOG", "warn");
        command
    }

    /// Starts `count` nodes, one after the other, each ready before the next.
    async fn start_nodes(&self, count: usize, client: &reqwest::Client) -> Vec<Node> {
        let mut nodes = Vec::new();
        for _ in 0..count {
            let mut node = self.start_node();
            node.ready(client).await;
            nodes.push(node);
        }
        nodes
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.keys);
    }
}

impl Node {
    /// SIGKILL: no shutdown, no released connection but what the kernel closes.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("killed");
    }

    async fn health(&self, client: &reqwest::Client) -> Option<Value> {
        client
            .get(format!("{}/health", self.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

/// The index of the one live node whose `/health` says it leads `role`
/// (`projector` or `relay`), once exactly one does.
async fn leader(nodes: &[Node], alive: &[usize], role: &str, client: &reqwest::Client) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for &i in alive {
            if let Some(health) = nodes[i].health(client).await {
                if health["leader"][role] == json!(true) {
                    leaders.push(i);
                }
            }
        }
        if let [one] = leaders[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no single {role} leader among nodes {alive:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The client of every test here: requests time out, and idle connections are
/// let go before a node's 5 s keep-alive closes them under a request.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

async fn post(
    client: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: Value,
) -> Option<(u16, Value)> {
    let mut request = client.post(url).json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let body = if status == 204 {
        Value::Null
    } else {
        response.json::<Value>().await.ok()?
    };
    Some((status, body))
}

/// Registers and logs in on `base`; returns the access token.
async fn signed_in(client: &reqwest::Client, base: &str, email: &str) -> Option<String> {
    let (status, body) = post(
        client,
        format!("{base}/v1/auth/register"),
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await?;
    assert_eq!(status, 201, "registration of {email}: {body}");
    let (status, body) = post(
        client,
        format!("{base}/v1/auth/login"),
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await?;
    assert_eq!(status, 200, "login of {email}: {body}");
    Some(
        body["access_token"]
            .as_str()
            .expect("access token")
            .to_owned(),
    )
}

async fn active(client: &reqwest::Client, base: &str, token: &str) -> bool {
    let (status, body) = post(
        client,
        format!("{base}/v1/auth/validate"),
        None,
        json!({ "token": token }),
    )
    .await
    .expect("validate answers");
    assert_eq!(status, 200, "validate: {body}");
    body["active"] == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_node_is_refused_by_validate_on_the_others_within_the_bound() {
    let deployment = Deployment::new().await;
    let client = http_client();
    let nodes = deployment.start_nodes(3, &client).await;

    let mut slowest = Duration::ZERO;
    for round in 0..9 {
        let home = &nodes[round % 3].base;
        let token = signed_in(&client, home, &format!("round-{round}@example.com"))
            .await
            .expect("an answer");
        let others: Vec<&str> = (1..3)
            .map(|k| nodes[(round + k) % 3].base.as_str())
            .collect();
        for other in &others {
            assert!(
                active(&client, other, &token).await,
                "a token issued by one node is valid on another"
            );
        }

        let (status, body) = post(
            &client,
            format!("{home}/v1/auth/logout"),
            Some(&token),
            json!({}),
        )
        .await
        .expect("an answer");
        assert_eq!(status, 204, "logout: {body}");
        let logged_out = Instant::now();
        assert!(
            !active(&client, home, &token).await,
            "the node that logged out refuses at once"
        );
        for other in &others {
            while active(&client, other, &token).await {
                assert!(
                    logged_out.elapsed() < REVOCATION_BOUND,
                    "{other} still accepts a token logged out on {home} after {:?}",
                    logged_out.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        slowest = slowest.max(logged_out.elapsed());
    }
    eprintln!("slowest logout to reach validate on every other node: {slowest:?}");
}

/// The six-digit code of the first sign-in mail written to `outbox` (a line that
/// holds only it; quoted-printable leaves digits as they are).
async fn mailed_sign_in_code(outbox: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mails = std::fs::read_dir(outbox).into_iter().flatten().flatten();
        for entry in mails {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if !text.contains("email-login?token=") {
                continue;
            }
            if let Some(code) = text
                .lines()
                .map(str::trim)
                .find(|line| line.len() == 6 && line.bytes().all(|b| b.is_ascii_digit()))
            {
                return code.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no sign-in mail in {}",
            outbox.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_code_asked_for_on_one_node_works_on_another_that_knew_the_account() {
    let deployment = Deployment::new().await;
    let client = http_client();
    let nodes = deployment.start_nodes(2, &client).await;
    let email = "code@example.com";
    signed_in(&client, &nodes[0].base, email)
        .await
        .expect("an answer");
    // The second node loads (and keeps) the account before the request exists.
    let (status, body) = post(
        &client,
        format!("{}/v1/auth/login", nodes[1].base),
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 200, "login on the second node: {body}");

    let (status, body) = post(
        &client,
        format!("{}/v1/auth/email-login", nodes[0].base),
        None,
        json!({ "email": email }),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 202, "{body}");
    let code = mailed_sign_in_code(&deployment.keys.join("data").join("outbox")).await;
    let (status, body) = post(
        &client,
        format!("{}/v1/auth/email-login/verify", nodes[1].base),
        None,
        json!({ "email": email, "code": code }),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 200, "the code on the other node: {body}");
    assert!(body["access_token"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_off_on_one_node_is_refused_by_validate_on_the_others_within_the_bound() {
    let deployment = Deployment::new().await;
    let client = http_client();
    let nodes = deployment.start_nodes(3, &client).await;

    // An administrator, appointed from the command line as operators do.
    signed_in(&client, &nodes[0].base, "operator@example.com")
        .await
        .expect("an answer");
    let appointed = deployment
        .keyledger()
        .args(["admin", "create", "--email", "operator@example.com"])
        .output()
        .expect("keyledger admin create");
    assert!(appointed.status.success(), "{appointed:?}");
    // Sessions started on every node, each accepted by the others.
    let mut tokens = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let token = signed_in(&client, &node.base, &format!("cut-{i}@example.com"))
            .await
            .expect("an answer");
        for other in &nodes {
            assert!(active(&client, &other.base, &token).await);
        }
        tokens.push(token);
    }
    let admin = signed_in_again(&client, &nodes[0].base, "operator@example.com").await;

    // The node learns of the appointment from the feed.
    let appointed_at = Instant::now();
    let cut_at = loop {
        let (status, body) = post(
            &client,
            format!("{}/v1/admin/sessions/revoke-before", nodes[0].base),
            Some(&admin),
            json!({ "reason": "drill" }),
        )
        .await
        .expect("an answer");
        if status == 200 {
            assert_eq!(body["recorded"], json!(true), "{body}");
            break Instant::now();
        }
        assert_eq!(status, 403, "revoke-before: {body}");
        assert!(
            appointed_at.elapsed() < Duration::from_secs(30),
            "never an administrator"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for token in &tokens {
        assert!(
            !active(&client, &nodes[0].base, token).await,
            "the node that took the cut-off refuses at once"
        );
    }
    let mut slowest = Duration::ZERO;
    for other in &nodes[1..] {
        for token in &tokens {
            while active(&client, &other.base, token).await {
                assert!(
                    cut_at.elapsed() < REVOCATION_BOUND,
                    "{} still accepts a session started before a cut-off after {:?}",
                    other.base,
                    cut_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        slowest = slowest.max(cut_at.elapsed());
    }
    eprintln!("slowest cut-off to reach validate on every other node: {slowest:?}");
    // A session started afterwards is valid everywhere.
    let fresh = signed_in_again(&client, &nodes[2].base, "cut-0@example.com").await;
    for node in &nodes {
        assert!(active(&client, &node.base, &fresh).await);
    }
}

/// Logs an existing account in on `base`; returns the access token.
async fn signed_in_again(client: &reqwest::Client, base: &str, email: &str) -> String {
    let (status, body) = post(
        client,
        format!("{base}/v1/auth/login"),
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 200, "login of {email}: {body}");
    body["access_token"]
        .as_str()
        .expect("access token")
        .to_owned()
}

/// Registers, logs in and logs out in a loop against the live nodes until told
/// to stop. A request to a node killed under it goes unanswered; every answer
/// must be the right one.
async fn load(
    live: Arc<Mutex<Vec<String>>>,
    id: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) {
    let client = http_client();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let base = {
            let live = live.lock().unwrap();
            live[(id + n) % live.len()].clone()
        };
        let Some(token) = signed_in(&client, &base, &format!("load-{id}-{n}@example.com")).await
        else {
            continue;
        };
        let Some((status, body)) = post(
            &client,
            format!("{base}/v1/auth/logout"),
            Some(&token),
            json!({}),
        )
        .await
        else {
            continue;
        };
        assert_eq!(status, 204, "logout: {body}");
        done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn progress(done: &AtomicUsize, more: usize) {
    let target = done.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < target {
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message of the stream, in stream order: (`Nats-Msg-Id`, body).
async fn stream_messages(nats_url: &str, stream: &str) -> Vec<(String, Value)> {
    let client = async_nats::connect(nats_url).await.expect("nats");
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.expect("stream");
    let count = stream.info().await.expect("stream info").state.messages as usize;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream delivers what it holds")
            .expect("a message")
            .expect("a message");
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .expect("every message has a Nats-Msg-Id");
        out.push((id, serde_json::from_slice(&m.payload).expect("JSON")));
    }
    out
}

/// The event log, as the relay must publish it: per aggregate, its sequences.
async fn logged(pool: &PgPool) -> (HashSet<String>, HashMap<(String, String), Vec<i64>>) {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence FROM events ORDER BY global_position",
    )
    .fetch_all(pool)
    .await
    .expect("events");
    let mut ids = HashSet::new();
    let mut sequences: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for (aggregate_type, aggregate_id, sequence) in rows {
        ids.insert(
            IntegrationEvent::event_id(&aggregate_type, &aggregate_id, sequence).to_string(),
        );
        sequences
            .entry((aggregate_type, aggregate_id))
            .or_default()
            .push(sequence);
    }
    (ids, sequences)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leaders_and_a_nats_restart_lose_no_event_and_publish_none_twice() {
    let mut deployment = Deployment::new().await;
    let client = http_client();
    let mut nodes = deployment.start_nodes(3, &client).await;
    let mut alive: Vec<usize> = vec![0, 1, 2];

    let live = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.base.clone()).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|id| tokio::spawn(load(live.clone(), id, stop.clone(), done.clone())))
        .collect();
    progress(&done, 10).await;

    // The projector's leader dies under load (it may lead the relay too).
    let projector = leader(&nodes, &alive, "projector", &client).await;
    live.lock().unwrap().retain(|b| *b != nodes[projector].base);
    alive.retain(|&i| i != projector);
    nodes[projector].kill();
    let next = leader(&nodes, &alive, "projector", &client).await;
    assert_ne!(next, projector);
    progress(&done, 10).await;

    // Then whoever leads the relay now.
    let relay = leader(&nodes, &alive, "relay", &client).await;
    live.lock().unwrap().retain(|b| *b != nodes[relay].base);
    alive.retain(|&i| i != relay);
    nodes[relay].kill();
    let last = alive[0];
    assert_eq!(leader(&nodes, &alive, "relay", &client).await, last);
    assert_eq!(leader(&nodes, &alive, "projector", &client).await, last);
    progress(&done, 10).await;

    // NATS goes away under load and comes back on the same store.
    deployment.nats.kill();
    progress(&done, 10).await;
    deployment.nats.resume();
    progress(&done, 10).await;

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a load client failed");
    }

    let pool = PgPool::connect(&deployment.database.url)
        .await
        .expect("pool");
    let (ids, sequences) = logged(&pool).await;
    assert!(ids.len() > 100, "only {} events", ids.len());

    // The relay catches up (its backoff after the outage is at most 5 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let messages = loop {
        let messages = stream_messages(&deployment.nats.url(), &deployment.stream).await;
        if messages.len() >= ids.len() || Instant::now() > deadline {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let published: Vec<&(String, Value)> = messages
        .iter()
        .filter(|(_, body)| body["event_type"] != json!("EffectivePermissionsChanged"))
        .collect();
    let distinct: HashSet<&String> = published.iter().map(|(id, _)| id).collect();
    assert_eq!(
        distinct.len(),
        published.len(),
        "an event was published twice"
    );
    let missing = ids.iter().filter(|id| !distinct.contains(id)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} events never reached NATS",
        ids.len()
    );
    assert_eq!(
        published.len(),
        ids.len(),
        "NATS holds events the log does not"
    );

    // In order per aggregate: each aggregate's sequences, in stream order, are
    // exactly those of the log.
    let mut streamed: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for (id, body) in &published {
        assert_eq!(body["event_id"].as_str(), Some(id.as_str()));
        streamed
            .entry((
                body["aggregate_type"].as_str().expect("type").to_owned(),
                body["aggregate_id"].as_str().expect("id").to_owned(),
            ))
            .or_default()
            .push(body["sequence"].as_i64().expect("sequence"));
    }
    for (aggregate, mut expected) in sequences {
        expected.sort_unstable();
        assert_eq!(
            streamed.get(&aggregate),
            Some(&expected),
            "{aggregate:?} streamed out of order or with gaps"
        );
    }

    // The projector's work was handed over too: the read models reach the head
    // and hold every account and session of the log.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (checkpoint, head): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT global_position FROM projection_checkpoints WHERE name = $1),
                    (SELECT max(global_position) FROM events)",
        )
        .bind("read_models")
        .fetch_one(&pool)
        .await
        .expect("checkpoint");
        if checkpoint == head {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the read models stopped at {checkpoint:?}, the log is at {head:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts: BTreeMap<&str, (i64, i64)> = BTreeMap::from([
        (
            "users",
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM users),
                        (SELECT count(*) FROM events WHERE event_type = 'UserRegistered')",
            )
            .fetch_one(&pool)
            .await
            .expect("users"),
        ),
        (
            "sessions",
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM sessions WHERE state = 'logged_out'),
                        (SELECT count(*) FROM events WHERE event_type = 'UserLoggedOut')",
            )
            .fetch_one(&pool)
            .await
            .expect("sessions"),
        ),
    ]);
    for (table, (projected, logged)) in counts {
        assert_eq!(
            projected, logged,
            "{table}: projected {projected}, logged {logged}"
        );
    }
    // What an operator monitors says the same: the last node leads both, and
    // nothing is left to project.
    let metrics = client
        .get(format!("{}/metrics", nodes[last].base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for line in [
        "keyledger_leader{role=\"projector\"} 1",
        "keyledger_leader{role=\"relay\"} 1",
        "keyledger_projection_lag_events 0",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}:\n{metrics}");
    }
    pool.close().await;
    drop(nodes);
}
