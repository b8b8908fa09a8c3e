//! The `keyledger-replay` binary itself: arguments, output streams and exit
//! status (0 fine, 1 read models differ, 2 error), against a scratch database
//! that holds the real migrations and read models.

use std::process::{Command, Output};

use keyledger_projections::{EventFeed, ReadModels};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[path = "cli/embedded.rs"]
mod embedded;

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of this test's own, dropped again when the test ends.
struct ScratchDb {
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create() -> (Self, PgPool) {
        let admin = PgPool::connect(PG_ADMIN_URL).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is required at 127.0.0.1:5432 ({e})");
        });
        let name = format!("keyledger_replay_cli_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let db = Self { name, url };
        let pool = PgPool::connect(&db.url).await.unwrap();
        keyledger_storage::migrate_postgres(&pool).await.unwrap();
        ReadModels::install_in(&pool).await.unwrap();
        (db, pool)
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A seed without --email-index-key-file writes its new key here.
        let _ = std::fs::remove_file(
            std::env::temp_dir().join(format!("keyledger-seed-{name}.email-index-key")),
        );
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(admin) = PgPool::connect(PG_ADMIN_URL).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}

fn replay(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyledger-replay"))
        .env("DATABASE_URL", database_url)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes a registration the way the write side does (claim, then event) and
/// lets the read models catch up, as the live projector would.
async fn register(pool: &PgPool, email: &str) -> Uuid {
    let user_id = Uuid::new_v4();
    sqlx::query("INSERT INTO email_claims (email, user_id) VALUES ($1, $2)")
        .bind(email)
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
    let payload = json!({"UserRegistered": {
        "user_id": user_id,
        "email": email,
        "display_name": "Ada",
        "password_hash": "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "registered_at": "2026-01-01T00:00:00Z",
    }});
    let metadata = json!({"actor": "anonymous", "ip": "192.0.2.1", "request_id": "r1"});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('user', $1, 1, 'UserRegistered', '1.0', $2, $3)",
    )
    .bind(user_id.to_string())
    .bind(payload)
    .bind(metadata)
    .execute(pool)
    .await
    .unwrap();
    let feed = EventFeed::new(keyledger_storage::Database::from_pool(pool.clone()));
    let mut conn = pool.acquire().await.unwrap();
    let from = ReadModels::checkpoint(&mut conn, keyledger_projections::read_models::CHECKPOINT)
        .await
        .unwrap();
    for _ in 0..100 {
        let batch = feed.read_after(from, 100).await.unwrap();
        if !batch.is_empty() {
            ReadModels::apply_batch(pool, &batch).await.unwrap();
            return user_id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the registration never became final");
}

#[test]
fn a_bad_user_argument_is_refused_before_connecting() {
    let out = replay(
        "postgres://postgres@127.0.0.1:1/nowhere",
        &["history", "--user", "not an address"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("neither a user id"), "{out:?}");
}

#[test]
fn an_unreachable_database_is_an_error() {
    let out = replay("postgres://postgres@127.0.0.1:1/nowhere", &["rebuild"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("database error"), "{out:?}");
}

#[tokio::test]
async fn history_and_rebuild_exit_codes() {
    let (db, pool) = ScratchDb::create().await;

    // An empty log rebuilds to empty tables.
    let out = replay(&db.url, &["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("EQUAL"), "{out:?}");

    let user_id = register(&pool, "ada@example.com").await;

    // The URL flag wins over the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger-replay"))
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .args([
            "--database-url",
            &db.url,
            "history",
            "--user",
            "ADA@example.com",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("UserRegistered"), "{stdout}");
    assert!(stdout.contains("ip=192.0.2.1"), "{stdout}");
    assert!(!stdout.contains("argon2"), "{stdout}");

    let out = replay(
        &db.url,
        &["history", "--user", &user_id.to_string(), "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["event_type"], "UserRegistered");
    assert!(line["data"].get("password_hash").is_none());

    let out = replay(&db.url, &["history", "--user", &Uuid::new_v4().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("no account found"), "{out:?}");

    let out = replay(&db.url, &["rebuild", "--batch-size", "1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    sqlx::query("UPDATE users SET display_name = 'Mallory'")
        .execute(&pool)
        .await
        .unwrap();
    let out = replay(&db.url, &["rebuild", "--keep"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("DIFFERENT"), "{stdout}");
    let kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kept schema "))
        .expect("the kept schema is named")
        .to_owned();
    let (rebuilt_name, checkpoint): (Option<String>, i64) = sqlx::query_as(&format!(
        "SELECT (SELECT display_name FROM {kept}.users),
                (SELECT global_position FROM {kept}.projection_checkpoints)"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rebuilt_name.as_deref(), Some("Ada"));
    assert_eq!(checkpoint, 1);
    drop(pool);
    drop(db);
}

#[test]
fn a_malformed_instant_is_refused_before_connecting() {
    let out = replay(
        "postgres://postgres@127.0.0.1:1/nowhere",
        &["as-of", "--user", "ada@example.com", "--at", "yesterday"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("RFC 3339"), "{out:?}");
}

#[tokio::test]
async fn as_of_and_timeline_from_the_binary() {
    let (db, pool) = ScratchDb::create().await;
    let user_id = register(&pool, "ada@example.com").await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();

    let out = replay(
        &db.url,
        &[
            "as-of",
            "--user",
            "ada@example.com",
            "--at",
            "2000-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let before: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(before["status"], "not_yet_registered");
    assert_eq!(before["registered"], false);

    let out = replay(
        &db.url,
        &["as-of", "--user", &user_id.to_string(), "--at", &later],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("status=active"), "{stdout}");
    assert!(stdout.contains("ada@example.com"), "{stdout}");
    assert!(!stdout.contains("argon2"), "{stdout}");

    let out = replay(
        &db.url,
        &["timeline", "--user", "ada@example.com", "--to", &later],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("UserRegistered"), "{stdout}");
    assert!(stdout.contains("ip=192.0.2.1"), "{stdout}");
    assert!(stdout.contains("request_id=r1"), "{stdout}");
    assert!(!stdout.contains("argon2"), "{stdout}");

    let out = replay(
        &db.url,
        &[
            "timeline",
            "--user",
            "ada@example.com",
            "--from",
            &later,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    let out = replay(
        &db.url,
        &[
            "as-of",
            "--user",
            &Uuid::new_v4().to_string(),
            "--at",
            &later,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("no account found"), "{out:?}");
    drop(pool);
    drop(db);
}

#[tokio::test]
async fn export_writes_a_file_and_reports_on_stderr() {
    let (db, pool) = ScratchDb::create().await;
    register(&pool, "grace@example.com").await;
    let path = std::env::temp_dir().join(format!("keyledger-export-{}.csv", Uuid::new_v4()));
    let out = replay(
        &db.url,
        &[
            "export",
            "--format",
            "csv",
            "--events",
            "--output",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty(), "the rows went to the file");
    assert!(
        text(&out.stderr).contains("exported 1 rows"),
        "{}",
        text(&out.stderr)
    );
    let written = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let mut reader = csv::Reader::from_reader(written.as_bytes());
    assert_eq!(&reader.headers().unwrap()[1], "event_type");
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][1], "UserRegistered");
    assert!(!written.contains("argon2"), "{written}");

    let out = replay(&db.url, &["export", "--format", "xml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = replay(&db.url, &["export", "--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = replay(&db.url, &["export", "--from", "2000-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["action"], "UserRegistered");
    drop(pool);
    drop(db);
}

#[tokio::test]
async fn verify_exit_codes_and_keys() {
    use keyledger_projections::chain::hex;
    use keyledger_projections::{AuditKey, ChainSigner};

    let (db, pool) = ScratchDb::create().await;
    let user_id = register(&pool, "grace@example.com").await;
    let (secret, public) = AuditKey::generate().unwrap();
    let key = std::sync::Arc::new(AuditKey::from_paserk(&secret).unwrap());
    let checkpoint = ChainSigner::new(keyledger_storage::Database::from_pool(pool.clone()), key)
        .sign_now()
        .await
        .unwrap()
        .expect("one event to sign");

    let out = replay(&db.url, &["verify", "--audit-public-key", &public]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("verified 1 events and 1 checkpoints in "),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("0 events after it are chained but not yet signed"));

    // The key from the environment, or derived from the key file; never echoed.
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger-replay"))
        .env("DATABASE_URL", &db.url)
        .env("KEYLEDGER_AUDIT_PUBLIC_KEY", &public)
        .arg("verify")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let file = std::env::temp_dir().join(format!("audit-{}.paserk", Uuid::new_v4()));
    std::fs::write(&file, &secret).unwrap();
    let out = replay(
        &db.url,
        &["verify", "--audit-key-file", file.to_str().unwrap()],
    );
    std::fs::remove_file(&file).unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!text(&out.stdout).contains(&secret) && !text(&out.stderr).contains(&secret));

    // The log hash a previous run reported must still be there.
    let expected = hex(&checkpoint.state.log_hash);
    let out = replay(
        &db.url,
        &[
            "verify",
            "--audit-public-key",
            &public,
            "--expect-log-hash",
            &expected,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = replay(
        &db.url,
        &[
            "verify",
            "--audit-public-key",
            &public,
            "--expect-log-hash",
            &"ab".repeat(32),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("is missing"), "{out:?}");

    // No key, or a bad one: an error, before anything is checked.
    let out = replay(&db.url, &["verify"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("no audit public key"), "{out:?}");
    let out = replay(&db.url, &["verify", "--audit-public-key", "k4.public.nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Another key: the checkpoint proves nothing.
    let (_, stranger) = AuditKey::generate().unwrap();
    let out = replay(&db.url, &["verify", "--audit-public-key", &stranger]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stdout).starts_with("TAMPERED: checkpoint #1 "),
        "{out:?}"
    );

    // A modified event is named.
    sqlx::raw_sql(
        "SET session_replication_role = replica;
         UPDATE events SET metadata = '{\"actor\": \"someone else\"}';
         RESET session_replication_role;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = replay(&db.url, &["verify", "--audit-public-key", &public]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("TAMPERED: event user {user_id} sequence 1 ")),
        "{stdout}"
    );
    drop(pool);
    drop(db);
}

#[tokio::test]
async fn seed_refuses_a_database_not_meant_for_benchmarks_and_the_result_rebuilds() {
    let (db, pool) = ScratchDb::create().await;
    let out = replay(&db.url, &["seed", "--events", "50"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("not a benchmark database"),
        "{out:?}"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 0);

    let out = replay(
        &db.url,
        &["seed", "--events", "3000", "--users", "50", "--force"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("seeded"), "{out:?}");
    let (events, claims): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM email_claims)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(events >= 3000, "{events}");
    assert_eq!(claims, 50);
    // The sealed format: a key per account, claims by digest only, nothing in clear.
    let (keys, clear_claims, clear_events): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM user_data_keys WHERE key IS NOT NULL),
                (SELECT count(*) FROM email_claims WHERE email IS NOT NULL OR digest IS NULL),
                (SELECT count(*) FROM events
                  WHERE payload::text LIKE '%@example.com%'
                     OR metadata ->> 'ip' NOT LIKE 'sealed:v1:%'
                     OR metadata ->> 'user_agent' NOT LIKE 'sealed:v1:%')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((keys, clear_claims, clear_events), (50, 0, 0));
    assert!(text(&out.stdout).contains("email index key: a new one, written to"));

    // The feed delivers only final events: wait until no transaction older than
    // the seed's (another test's, in this cluster) still runs.
    for _ in 0..300 {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The seeded log projects (switching the read models in) and compares equal.
    let out = replay(&db.url, &["rebuild", "--switch", "--batch-size", "700"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("events/s"), "{out:?}");
    assert!(text(&out.stderr).contains("rebuild: "), "{out:?}");
    let out = replay(&db.url, &["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("EQUAL"), "{out:?}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 50);
    drop(pool);
    drop(db);
}

/// Appends a 1.0 `SessionStarted` with its device and request metadata in clear,
/// as the write side wrote them before sealing, and projects it.
async fn start_clear_session(pool: &PgPool, user_id: Uuid, ip: &str, user_agent: &str) -> Uuid {
    let session_id = Uuid::new_v4();
    let payload = json!({"SessionStarted": {
        "session_id": session_id,
        "user_id": user_id,
        "refresh_token_hash": "0000000000000000000000000000000000000000000000000000000000000000",
        "device": {"ip": ip, "user_agent": user_agent},
        "started_at": "2026-01-01T00:01:00Z",
        "expires_at": "2026-01-31T00:01:00Z",
    }});
    let metadata = json!({"actor": user_id, "ip": ip, "user_agent": user_agent,
                          "request_id": "r2", "occurred_at": "2026-01-01T00:01:00Z"});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('session', $1, 1, 'SessionStarted', '1.0', $2, $3)",
    )
    .bind(session_id.to_string())
    .bind(payload)
    .bind(metadata)
    .execute(pool)
    .await
    .unwrap();
    session_id
}

/// Every tool output about `user` (by id), stdout and stderr together.
fn every_output(url: &str, user: Uuid) -> String {
    let id = user.to_string();
    let mut all = String::new();
    for args in [
        vec!["history", "--user", &id],
        vec!["history", "--user", &id, "--json"],
        vec!["timeline", "--user", &id, "--json"],
        vec![
            "as-of",
            "--user",
            &id,
            "--at",
            "2030-01-01T00:00:00Z",
            "--json",
        ],
        vec!["export", "--events"],
        vec!["export", "--events", "--format", "csv"],
        vec!["export"],
    ] {
        let out = replay(url, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        all.push_str(&text(&out.stdout));
        all.push_str(&text(&out.stderr));
    }
    all
}

#[tokio::test]
async fn reseal_seals_a_clear_log_verifiably_and_erasure_then_hides_it() {
    use keyledger_projections::{AuditKey, ChainSigner};

    let (db, pool) = ScratchDb::create().await;
    let alice = register(&pool, "alice@example.com").await;
    start_clear_session(&pool, alice, "198.51.100.7", "AliceBrowser/1.0").await;
    register(&pool, "bob@example.com").await;
    // The server signed the old log before it was stopped.
    let (secret, public) = AuditKey::generate().unwrap();
    let key = std::sync::Arc::new(AuditKey::from_paserk(&secret).unwrap());
    ChainSigner::new(keyledger_storage::Database::from_pool(pool.clone()), key)
        .sign_now()
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("keyledger-reseal-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("audit.paserk");
    std::fs::write(&key_file, &secret).unwrap();
    let key_file = key_file.to_str().unwrap();
    let clear_values = [
        "alice@example.com",
        "192.0.2.1",
        "198.51.100.7",
        "AliceBrowser",
    ];
    let clear_in_log = |table: &'static str| {
        let pool = pool.clone();
        async move {
            let mut found = Vec::new();
            for needle in clear_values {
                let n: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM {table}
                      WHERE payload::text LIKE '%' || $1 || '%' OR metadata::text LIKE '%' || $1 || '%'"
                ))
                .bind(needle)
                .fetch_one(&pool)
                .await
                .unwrap();
                if n > 0 {
                    found.push(needle);
                }
            }
            found
        }
    };
    assert_eq!(clear_in_log("events").await, clear_values);

    let out = replay(
        &db.url,
        &["reseal", "--audit-key-file", key_file, "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).contains("would reseal 3 events"),
        "{out:?}"
    );
    assert_eq!(clear_in_log("events").await, clear_values);

    let out = replay(&db.url, &["reseal", "--audit-key-file", key_file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("resealed 3 events"), "{out:?}");
    assert!(!text(&out.stdout).contains(&secret));

    // No clear personal value is left in the log; ids, order and count are kept.
    assert!(clear_in_log("events").await.is_empty());
    let versions: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT event_type, event_version, global_position FROM events ORDER BY tx_id, global_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions.len(), 3);
    // Personal fields sealed: 2.0; a registration's password hash too: 3.0.
    assert!(
        versions
            .iter()
            .all(|(t, v, _)| v == if t == "UserRegistered" { "3.0" } else { "2.0" }),
        "{versions:?}"
    );
    let hashes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%argon2id%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(hashes, 0, "password hashes are sealed too");
    let archive: String = sqlx::query_scalar("SELECT archive_schema FROM reseal_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    let archived: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {archive}.events"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(archived, 3);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM user_data_keys WHERE key IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(keys, 2);

    // Both logs verify, each against its own signed checkpoints and the link.
    for schema in [None, Some(archive.as_str())] {
        let mut args = vec!["verify", "--audit-public-key", &public];
        args.extend(schema.iter().flat_map(|s| ["--schema", *s]));
        let out = replay(&db.url, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(
            text(&out.stdout).starts_with("verified 3 events"),
            "{out:?}"
        );
    }
    // Another key cannot vouch for the link.
    let (_, other) = AuditKey::generate().unwrap();
    let out = replay(&db.url, &["verify", "--audit-public-key", &other]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("reseal link #1"), "{out:?}");

    // A second run finds nothing to do.
    let out = replay(&db.url, &["reseal", "--audit-key-file", key_file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("nothing to reseal"), "{out:?}");

    // The projector starts over on the new log and comes out equal.
    let out = replay(&db.url, &["rebuild", "--switch"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = replay(&db.url, &["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("EQUAL"), "{out:?}");

    // With the keys present every tool shows the clear values, never ciphertext.
    let shown = every_output(&db.url, alice);
    for clear in clear_values {
        assert!(shown.contains(clear), "{clear} missing");
    }
    assert!(!shown.contains("sealed:v1:"), "{shown}");

    // Erased: gone from every output, even the audit trail export.
    sqlx::query("UPDATE user_data_keys SET key = NULL, erased_at = now() WHERE owner_id = $1")
        .bind(alice)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        // What the projector does on `UserErased` (`forget_erased`).
        "UPDATE audit_trail SET ip = NULL, user_agent = NULL,
                details = details - 'email' - 'display_name' - 'ip' - 'user_agent'
          WHERE subject = $1 OR actor = $1",
    )
    .bind(alice.to_string())
    .execute(&pool)
    .await
    .unwrap();
    let shown = every_output(&db.url, alice);
    // (192.0.2.1 is also the address Bob registered from.)
    for clear in ["alice@example.com", "198.51.100.7", "AliceBrowser"] {
        assert!(!shown.contains(clear), "{clear} still shown:\n{shown}");
    }
    let history = replay(
        &db.url,
        &["history", "--user", &alice.to_string(), "--json"],
    );
    assert!(!text(&history.stdout).contains("192.0.2.1"), "{history:?}");
    assert!(shown.contains("[erased]"));
    assert!(!shown.contains("sealed:v1:"));
    assert!(
        shown.contains("bob@example.com"),
        "other accounts stay readable"
    );

    let _ = std::fs::remove_dir_all(&dir);
    drop(pool);
    drop(db);
}

#[tokio::test]
async fn an_erased_owner_of_a_clear_log_is_hidden_without_reseal() {
    let (db, pool) = ScratchDb::create().await;
    let carol = register(&pool, "carol@example.com").await;
    start_clear_session(&pool, carol, "203.0.113.9", "CarolAgent/2").await;
    sqlx::query("INSERT INTO user_data_keys (owner_id, key, erased_at) VALUES ($1, NULL, now())")
        .bind(carol)
        .execute(&pool)
        .await
        .unwrap();
    let id = carol.to_string();
    for args in [
        vec!["history", "--user", id.as_str(), "--json"],
        vec!["timeline", "--user", id.as_str(), "--json"],
        vec!["export", "--events"],
    ] {
        let out = replay(&db.url, &args);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let shown = text(&out.stdout);
        for clear in [
            "carol@example.com",
            "203.0.113.9",
            "CarolAgent",
            "192.0.2.1",
        ] {
            assert!(!shown.contains(clear), "{args:?} shows {clear}: {shown}");
        }
        assert!(shown.contains("[erased]"), "{args:?}: {shown}");
    }
    drop(pool);
    drop(db);
}

#[tokio::test]
async fn an_email_is_found_through_the_keyed_index_and_needs_the_key() {
    use keyledger_domain::{Email, EmailIndexKey};

    let (db, pool) = ScratchDb::create().await;
    // A legacy claim (converted by the server's first start) ...
    let dave = register(&pool, "dave@example.com").await;
    let key = EmailIndexKey::generate();
    let digest = key.digest(&Email::parse("dave@example.com").unwrap());
    sqlx::query("UPDATE email_claims SET digest = $1, email = NULL WHERE user_id = $2")
        .bind(&digest[..])
        .bind(dave)
        .execute(&pool)
        .await
        .unwrap();
    // ... and one still in clear.
    let erin = register(&pool, "erin@example.com").await;

    let out = replay(&db.url, &["history", "--user", "Dave@Example.com"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("KEYLEDGER_EMAIL_INDEX_KEY"),
        "{out:?}"
    );
    assert!(
        text(&out.stderr).contains("--email-index-key-file"),
        "{out:?}"
    );

    let dir = std::env::temp_dir().join(format!("keyledger-index-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("index.key");
    std::fs::write(&key_file, key.encode()).unwrap();
    for (email, id) in [("Dave@Example.com", dave), ("erin@example.com", erin)] {
        let out = replay(
            &db.url,
            &[
                "history",
                "--user",
                email,
                "--email-index-key-file",
                key_file.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(text(&out.stdout).contains(&id.to_string()), "{out:?}");
        assert!(!text(&out.stdout).contains(&key.encode()));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger-replay"))
        .env("DATABASE_URL", &db.url)
        .env("KEYLEDGER_EMAIL_INDEX_KEY", key.encode())
        .args(["timeline", "--user", "dave@example.com"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger-replay"))
        .env("DATABASE_URL", &db.url)
        .env("KEYLEDGER_EMAIL_INDEX_KEY", key.encode())
        .args([
            "as-of",
            "--user",
            "nobody@example.com",
            "--at",
            "2030-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("no account found"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
    drop(pool);
    drop(db);
}

/// The switching rebuild keeps users and sessions rows in memory across batches
/// and writes them when they leave it; with a cache of a few rows, nearly every
/// row leaves and comes back many times. What it switches in must still be
/// exactly what the live projector (one upsert per row and batch) built.
#[tokio::test]
async fn a_rebuild_with_a_tiny_row_cache_builds_what_the_live_projector_built() {
    let (db, pool) = ScratchDb::create().await;
    let out = replay(
        &db.url,
        &["seed", "--events", "4000", "--users", "60", "--force"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for _ in 0..300 {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The live projector's way: open, then one batch at a time with its checkpoint.
    let feed = EventFeed::new(keyledger_storage::Database::from_pool(pool.clone()));
    let mut opener = keyledger_projections::personal::PersonalDataOpener::new(
        &keyledger_storage::Database::from_pool(pool.clone()),
        std::sync::Arc::new(keyledger_domain::DataKeyWrapping::new(
            keyledger_domain::DataKeyWrappingKey::generate(),
            Vec::new(),
        )),
    );
    let mut after = keyledger_projections::Position::START;
    loop {
        let mut batch = feed.read_after(after, 250).await.unwrap();
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        opener.open(&mut batch).await.unwrap();
        ReadModels::apply_batch(&pool, &batch).await.unwrap();
        after = last;
    }

    let out = replay(
        &db.url,
        &[
            "rebuild",
            "--switch",
            "--keep-old",
            "--batch-size",
            "97",
            "--cached-rows",
            "5",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    let old = stdout
        .lines()
        .find_map(|l| l.strip_prefix("old tables kept in schema "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .trim()
        .to_owned();
    for table in ["users", "sessions", "audit_trail"] {
        let (rows, only_new, only_old): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM public.{table}),
                    (SELECT count(*) FROM (SELECT * FROM public.{table}
                                           EXCEPT ALL SELECT * FROM {old}.{table}) d),
                    (SELECT count(*) FROM (SELECT * FROM {old}.{table}
                                           EXCEPT ALL SELECT * FROM public.{table}) d)"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(rows > 0, "{table} is empty");
        assert_eq!((only_new, only_old), (0, 0), "{table} differs");
    }
    // And the comparing rebuild (rows kept in memory, none evicted) agrees.
    let out = replay(&db.url, &["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("EQUAL"), "{out:?}");
    drop(pool);
    drop(db);
}
