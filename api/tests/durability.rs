//! Nothing acknowledged to a client is lost when the server is killed:
//! the real binary takes registrations, logins and refreshes from several clients
//! at once, is sent SIGKILL in the middle of that, and is started again on the
//! same storage. Every account it acknowledged must log in, and every refresh
//! token it handed out last must still be accepted.
//!
//! Runs on both back ends; the embedded one is the one the issue worries about
//! (SQLite in WAL mode: a commit is in the WAL before it is acknowledged).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{free_port, ServerProcess as Server};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const PASSWORD: &str = "correct horse battery staple";
const CLIENTS: usize = 6;

/// Where a server keeps its data, removed however the test ends: its data
/// directory, and the PostgreSQL database named here when there is one (the
/// embedded store of the directory otherwise).
struct Store {
    data_dir: PathBuf,
    postgres_database: Option<String>,
}

impl Store {
    fn env(&self, command: &mut Command) {
        command
            .env_remove("DATABASE_URL")
            .env("KEYLEDGER_DATA_DIR", &self.data_dir);
        if let Some(db) = &self.postgres_database {
            command.env("DATABASE_URL", format!("{PG}/{db}"));
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some(db) = &self.postgres_database {
            common::force_drop_postgres_database(format!("{PG}/{db}"));
        }
    }
}

fn start(store: &Store, keys: &Path) -> Server {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    store.env(&mut command);
    command
        .env_remove("NATS_URL")
        .env("KEYLEDGER_BIND", format!("127.0.0.1:{port}"))
        .env(
            "KEYLEDGER_SIGNING_KEY_FILE",
            keys.join("signing-key.paserk"),
        )
        .env("KEYLEDGER_AUDIT_KEY_FILE", keys.join("audit-key.paserk"))
        .env(
            "KEYLEDGER_EMAIL_INDEX_KEY_FILE",
            keys.join("email-index.key"),
        )
        .env("KEYLEDGER_ARGON2_MEMORY_KIB", "4096")
        .env("KEYLEDGER_ARGON2_ITERATIONS", "1")
        .env("KEYLEDGER_RATE_LIMIT_PER_SECOND", "0")
        // The clients take the new account from registration's answer (201).
        .env("KEYLEDGER_EMAIL_VERIFICATION", "off")
        // Every client of this test comes from 127.0.0.1 and stands for many real
        // clients: the per-address share of the hashing pool would refuse them.
        .env("KEYLEDGER_HASH_CONCURRENCY_PER_CLIENT", "1024")
        .env("KEYLEDGER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command.spawn().expect("keyledger starts");
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Option<(u16, Value)> {
    let response = client.post(url).json(&body).send().await.ok()?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.ok()?;
    Some((status, body))
}

/// What one client saw acknowledged.
#[derive(Default)]
struct Acknowledged {
    /// Accounts whose registration was answered 201.
    accounts: Vec<String>,
    /// Per login: the newest refresh token the server handed out, if no later
    /// refresh of that chain is still unanswered (an unanswered refresh may have
    /// committed, which makes its predecessor a reused token).
    refresh_tokens: Vec<String>,
}

/// Registers, logs in and refreshes in a loop until the server stops answering.
async fn client_loop(base: String, id: usize, seen: Arc<Mutex<Acknowledged>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for n in 0.. {
        let email = format!("durable-{id}-{n}@example.com");
        let Some((status, _)) = post(
            &client,
            format!("{base}/v1/auth/register"),
            json!({ "email": email, "password": PASSWORD }),
        )
        .await
        else {
            return;
        };
        assert_eq!(status, 201, "registration of {email}");
        seen.lock().unwrap().accounts.push(email.clone());

        let Some((status, body)) = post(
            &client,
            format!("{base}/v1/auth/login"),
            json!({ "email": email, "password": PASSWORD }),
        )
        .await
        else {
            return;
        };
        assert_eq!(status, 200, "login of {email}: {body}");
        let mut token = body["refresh_token"].as_str().expect("token").to_owned();
        for _ in 0..3 {
            match post(
                &client,
                format!("{base}/v1/auth/refresh"),
                json!({ "refresh_token": token }),
            )
            .await
            {
                Some((200, body)) => {
                    token = body["refresh_token"].as_str().expect("token").to_owned();
                }
                Some((status, body)) => panic!("refresh answered {status}: {body}"),
                // Unanswered: this chain's last token is unknown; do not check it.
                None => return,
            }
        }
        seen.lock().unwrap().refresh_tokens.push(token);
    }
}

fn durable_dir() -> PathBuf {
    std::env::temp_dir().join(format!("keyledger-durable-{}", uuid::Uuid::new_v4()))
}

async fn survives_kill_9(store: Store) {
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

    let client = reqwest::Client::new();
    let mut server = start(&store, &keys);
    server.ready(&client).await;

    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client_loop(server.base.clone(), id, seen.clone())))
        .collect();
    // Let the clients get going, then kill the server in the middle of their work.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().refresh_tokens.len() < 20 {
        assert!(Instant::now() < deadline, "the clients made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("killed");
    for c in clients {
        c.await.expect("a client failed");
    }
    drop(server);

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.accounts.len() >= 20,
        "{} accounts",
        seen.accounts.len()
    );

    let mut server = start(&store, &keys);
    server.ready(&client).await;
    for email in &seen.accounts {
        let (status, body) = post(
            &client,
            format!("{}/v1/auth/login", server.base),
            json!({ "email": email, "password": PASSWORD }),
        )
        .await
        .expect("an answer");
        assert_eq!(status, 200, "acknowledged account {email} lost: {body}");
    }
    for token in &seen.refresh_tokens {
        let (status, body) = post(
            &client,
            format!("{}/v1/auth/refresh", server.base),
            json!({ "refresh_token": token }),
        )
        .await
        .expect("an answer");
        assert_eq!(
            status, 200,
            "an acknowledged refresh token was lost: {body}"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_on_the_embedded_store() {
    survives_kill_9(Store {
        data_dir: durable_dir(),
        postgres_database: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_on_postgres() {
    if let Err(e) = sqlx::PgPool::connect(&format!("{PG}/postgres")).await {
        panic!("PostgreSQL is required at 127.0.0.1:5432: {e}");
    }
    let db = format!(
        "keyledger_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    survives_kill_9(Store {
        data_dir: durable_dir(),
        postgres_database: Some(db),
    })
    .await;
}
