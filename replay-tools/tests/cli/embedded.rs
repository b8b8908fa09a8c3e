//! `keyledger-replay` on the embedded (SQLite) store. Each test builds its own
//! data directory the way the embedded server writes it (positions 1..n, `tx_id`
//! 0, one `recorded_at` in microseconds per event, chain hashes from the shared
//! canonical bytes, personal data sealed with per-person keys, claims by digest),
//! then reads, verifies, tampers with and copies it to PostgreSQL.

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::DomainEvent;
use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};
use keyledger_domain::organization::{
    OrganizationEvent, OrganizationName, OrganizationSlug, RoleRef,
};
use keyledger_domain::permission::BuiltInRole;
use keyledger_domain::values::{Device, PasswordHash, TokenHash};
use keyledger_domain::{DataKey, Email, EmailIndexKey, Field, SessionEvent, UserEvent};
use keyledger_projections::chain::{hex, Checkpoint};
use keyledger_projections::{AuditKey, LogState, Position};
use keyledger_storage::{Durability, EmbeddedDatabase, EmbeddedSettings};

use super::*;

/// A data directory of this test's own, removed when the test ends.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("keyledger-replay-embedded-{}", Uuid::new_v4())))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // A seed without --email-index-key-file writes its new key here.
        if let Some(name) = self.0.file_name() {
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!(
                "keyledger-seed-{}.email-index-key",
                name.to_string_lossy()
            )));
        }
    }
}

/// `keyledger-replay` on a data directory, with no database URL around.
fn replay_embedded(dir: &DataDir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyledger-replay"))
        .env_remove("DATABASE_URL")
        .env("KEYLEDGER_DATA_DIR", &dir.0)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// A person of the journey: their id, data key and address.
struct Person {
    id: Uuid,
    key: DataKey,
    email: String,
}

/// One event waiting to be written.
struct Row {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    global_position: i64,
    recorded_at: i64,
    chain_hash: Hash,
}

/// The embedded server's writes in miniature: its lock (held while this lives),
/// its positions, clock and chains, and the registries beside the log.
struct Log {
    db: EmbeddedDatabase,
    index_key: EmailIndexKey,
    tips: HashMap<(&'static str, String), (i64, Hash)>,
    state: LogState,
    clock: DateTime<Utc>,
    pending: Vec<Row>,
}

const IP: &str = "198.51.100.7";
const AGENT: &str = "AdaBrowser/1.0";

impl Log {
    async fn open(dir: &DataDir) -> Self {
        let db = EmbeddedDatabase::open(&settings(dir)).await.unwrap();
        Self {
            db,
            index_key: EmailIndexKey::generate(),
            tips: HashMap::new(),
            state: LogState::START,
            // Odd microseconds: recorded_at must survive every conversion exactly.
            clock: Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap()
                + Duration::microseconds(123_457),
            pending: Vec::new(),
        }
    }

    fn tick(&mut self) -> DateTime<Utc> {
        self.clock += Duration::microseconds(1_000_003);
        self.clock
    }

    /// Chains the event as the appender does and queues it.
    fn append(
        &mut self,
        aggregate_type: &'static str,
        aggregate_id: Uuid,
        event: &impl DomainEvent,
        actor: Option<&Person>,
        owner: &Person,
    ) {
        let at = self.tick();
        let aggregate_id = aggregate_id.to_string();
        let (sequence, previous) = self
            .tips
            .get(&(aggregate_type, aggregate_id.clone()))
            .map_or((1, ZERO_HASH), |(s, h)| (s + 1, *h));
        let metadata = json!({
            "request_id": format!("r{}", self.state.event_count + 1),
            "occurred_at": at.to_rfc3339(),
            "actor": actor.map_or("anonymous".to_owned(), |a| a.id.to_string()),
            "ip": owner.key.seal(owner.id, Field::Ip, IP).as_str(),
            "user_agent": owner.key.seal(owner.id, Field::UserAgent, AGENT).as_str(),
        })
        .to_string();
        let global_position = self.state.event_count + 1;
        let mut row = Row {
            aggregate_type,
            aggregate_id,
            sequence,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_string(event).unwrap(),
            metadata,
            global_position,
            recorded_at: at.timestamp_micros(),
            chain_hash: ZERO_HASH,
        };
        row.chain_hash = canonical(&row).chain_hash(&previous);
        self.tips.insert(
            (aggregate_type, row.aggregate_id.clone()),
            (sequence, row.chain_hash),
        );
        self.state.push(
            Position {
                tx_id: 0,
                global_position,
            },
            &row.chain_hash,
        );
        self.pending.push(row);
    }

    /// Writes the queued events in one transaction.
    async fn flush(&mut self) {
        let mut tx = self
            .db
            .writer()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .unwrap();
        for row in self.pending.drain(..) {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, global_position, tx_id,
                                     recorded_at, chain_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)",
            )
            .bind(row.aggregate_type)
            .bind(&row.aggregate_id)
            .bind(row.sequence)
            .bind(&row.event_type)
            .bind(&row.event_version)
            .bind(&row.payload)
            .bind(&row.metadata)
            .bind(row.global_position)
            .bind(row.recorded_at)
            .bind(&row.chain_hash[..])
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Key, claim, then `UserRegistered` 2.0 with the address and name sealed.
    async fn register(&mut self, email: &str) -> Person {
        let person = Person {
            id: Uuid::new_v4(),
            key: DataKey::generate(),
            email: email.to_owned(),
        };
        let now = self.clock;
        sqlx::query("INSERT INTO user_data_keys (owner_id, key, created_at) VALUES ($1, $2, $3)")
            .bind(person.id.to_string())
            .bind(&person.key.expose_bytes()[..])
            .bind(now)
            .execute(self.db.writer())
            .await
            .unwrap();
        sqlx::query("INSERT INTO email_claims (digest, user_id, claimed_at) VALUES ($1, $2, $3)")
            .bind(&self.index_key.digest(&Email::parse(email).unwrap())[..])
            .bind(person.id.to_string())
            .bind(now)
            .execute(self.db.writer())
            .await
            .unwrap();
        let event = UserEvent::UserRegistered {
            user_id: person.id,
            email: person.key.seal(person.id, Field::Email, email),
            display_name: Some(person.key.seal(person.id, Field::DisplayName, "Ada")),
            password_hash: Some(keyledger_domain::SealedPasswordHash::clear(
                PasswordHash::new(
                    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA".into(),
                ),
            )),
            registered_at: now,
        };
        self.append("user", person.id, &event, None, &person);
        person
    }

    /// `UserLoggedIn` on the user, `SessionStarted` 2.0 on a new session.
    fn login(&mut self, person: &Person) -> Uuid {
        let session_id = Uuid::new_v4();
        let at = self.clock;
        let logged_in = UserEvent::UserLoggedIn {
            session_id,
            factors: vec!["pwd".into()],
            at,
        };
        self.append("user", person.id, &logged_in, Some(person), person);
        let started = SessionEvent::SessionStarted {
            session_id,
            user_id: person.id,
            refresh_token_hash: TokenHash::from_bytes([7; 32]),
            device: Device {
                ip: Some(person.key.seal(person.id, Field::Ip, IP)),
                user_agent: Some(person.key.seal(person.id, Field::UserAgent, AGENT)),
            },
            factors: vec![],
            started_at: at,
            expires_at: at + Duration::days(30),
        };
        self.append("session", session_id, &started, Some(person), person);
        session_id
    }

    fn failed_login(&mut self, person: &Person, n: u32) {
        let at = self.clock;
        let event = UserEvent::LoginFailed {
            consecutive_failures: n,
            at,
        };
        self.append("user", person.id, &event, None, person);
    }

    /// The slug claim, `OrganizationCreated` and the owner's `MemberAdded`.
    async fn create_organization(&mut self, owner: &Person, slug: &str) -> Uuid {
        let organization_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO organization_slugs (slug, organization_id, claimed_at) VALUES ($1, $2, $3)",
        )
        .bind(slug)
        .bind(organization_id.to_string())
        .bind(self.clock)
        .execute(self.db.writer())
        .await
        .unwrap();
        let at = self.clock;
        let created = OrganizationEvent::OrganizationCreated {
            organization_id,
            slug: OrganizationSlug::parse(slug).unwrap(),
            name: OrganizationName::parse("Analytical Engines").unwrap(),
            owner: owner.id,
            at,
        };
        self.append(
            "organization",
            organization_id,
            &created,
            Some(owner),
            owner,
        );
        let added = OrganizationEvent::MemberAdded {
            user_id: owner.id,
            roles: [RoleRef::BuiltIn(BuiltInRole::Owner)].into(),
            at,
        };
        self.append("organization", organization_id, &added, Some(owner), owner);
        organization_id
    }

    /// `UserErased`, and the person's key becomes a tombstone.
    async fn erase(&mut self, person: &Person) {
        let at = self.clock;
        self.append(
            "user",
            person.id,
            &UserEvent::UserErased { at },
            Some(person),
            person,
        );
        self.flush().await;
        sqlx::query("UPDATE user_data_keys SET key = NULL, erased_at = $2 WHERE owner_id = $1")
            .bind(person.id.to_string())
            .bind(at)
            .execute(self.db.writer())
            .await
            .unwrap();
    }

    /// Signs the log as it stands, as the chain signer does.
    async fn sign(&mut self, secret: &str) -> Hash {
        self.flush().await;
        let signed_at = self.tick();
        let public = AuditKey::from_paserk(secret).unwrap().public_key().clone();
        let key = pasetors::keys::AsymmetricSecretKey::<pasetors::version4::V4>::try_from(secret)
            .unwrap();
        let signature = ed25519_compact::SecretKey::from_slice(key.as_bytes())
            .unwrap()
            .sign(Checkpoint::signed_message(signed_at, &self.state), None)
            .to_vec();
        sqlx::query(
            "INSERT INTO chain_checkpoints
                    (signed_at, tx_id, global_position, event_count, log_hash, key_id, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(signed_at.timestamp_micros())
        .bind(self.state.position.tx_id)
        .bind(self.state.position.global_position)
        .bind(self.state.event_count)
        .bind(&self.state.log_hash[..])
        .bind(public.id())
        .bind(&signature)
        .execute(self.db.writer())
        .await
        .unwrap();
        self.state.log_hash
    }

    /// Writes what is queued and stops the "server" (its lock goes with it).
    async fn close(mut self) {
        self.flush().await;
        self.db.close().await;
    }
}

fn settings(dir: &DataDir) -> EmbeddedSettings {
    EmbeddedSettings {
        data_dir: dir.0.clone(),
        durability: Durability::Normal,
        readers: 1,
    }
}

fn canonical(row: &Row) -> CanonicalEvent<'_> {
    CanonicalEvent {
        aggregate_type: row.aggregate_type,
        aggregate_id: &row.aggregate_id,
        sequence: row.sequence,
        event_type: &row.event_type,
        event_version: &row.event_version,
        payload: &row.payload,
        metadata: &row.metadata,
        recorded_at_micros: row.recorded_at,
        tx_id: 0,
        global_position: row.global_position,
    }
}

/// Ada (a session, an organization), Bob (erased): 7 events.
async fn journey(log: &mut Log) -> (Person, Person) {
    let ada = log.register("ada@example.com").await;
    log.login(&ada);
    log.create_organization(&ada, "engines").await;
    let bob = log.register("bob@example.com").await;
    log.erase(&bob).await;
    log.flush().await;
    (ada, bob)
}

/// Edits an event behind the append-only trigger's back, as an attacker with the
/// file would: drop the trigger, update, put the trigger back.
async fn edit_metadata(dir: &DataDir, global_position: i64, metadata: &str) {
    let db = EmbeddedDatabase::open_unlocked(&settings(dir))
        .await
        .unwrap();
    let mut conn = db.writer().acquire().await.unwrap();
    sqlx::query("DROP TRIGGER events_no_update")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET metadata = $1 WHERE global_position = $2")
        .bind(metadata)
        .bind(global_position)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER events_no_update BEFORE UPDATE ON events
         BEGIN
             SELECT RAISE(ABORT, 'the event log is append-only');
         END",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    db.close().await;
}

async fn stored_metadata(dir: &DataDir, global_position: i64) -> String {
    let db = EmbeddedDatabase::open_unlocked(&settings(dir))
        .await
        .unwrap();
    let metadata = sqlx::query_scalar("SELECT metadata FROM events WHERE global_position = $1")
        .bind(global_position)
        .fetch_one(db.readers())
        .await
        .unwrap();
    db.close().await;
    metadata
}

/// The log hash a successful `verify` reports for its last checkpoint.
fn reported_log_hash(stdout: &str) -> String {
    stdout
        .split("log hash ")
        .nth(1)
        .and_then(|rest| rest.get(..64))
        .unwrap_or_else(|| panic!("no log hash in {stdout}"))
        .to_owned()
}

#[tokio::test]
async fn read_commands_work_on_a_data_dir_beside_the_running_server() {
    let dir = DataDir::new();
    let mut log = Log::open(&dir).await;
    let (ada, bob) = journey(&mut log).await;
    let key_path = dir.0.join("email-index.key");
    let key_file = key_path.to_str().unwrap();
    let (ada_id, bob_id) = (ada.id.to_string(), bob.id.to_string());
    // The "server" keeps running (and holding its lock) while the tool reads.

    let out = replay_embedded(&dir, &["history", "--user", &ada_id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    for expected in [
        "UserRegistered",
        "UserLoggedIn",
        "SessionStarted",
        "OrganizationCreated",
        "MemberAdded",
        "ip=198.51.100.7",
    ] {
        assert!(stdout.contains(expected), "{expected} missing: {stdout}");
    }
    assert!(
        !stdout.contains("sealed:v1:") && !stdout.contains("argon2"),
        "{stdout}"
    );

    // By address: claims hold digests only, so the index key is needed.
    let out = replay_embedded(&dir, &["history", "--user", "Ada@Example.com"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("KEYLEDGER_EMAIL_INDEX_KEY"),
        "{out:?}"
    );
    // The server keeps its key in the data directory by default; found there
    // without being named (issue 19).
    std::fs::write(&key_path, log.index_key.encode()).unwrap();
    let out = replay_embedded(&dir, &["history", "--user", "Ada@Example.com"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("UserRegistered"), "{out:?}");
    let out = replay_embedded(
        &dir,
        &[
            "history",
            "--user",
            "Ada@Example.com",
            "--email-index-key-file",
            key_file,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["aggregate_id"], ada_id);
    assert_eq!(first["event_type"], "UserRegistered");
    assert_eq!(first["data"]["email"], ada.email);
    assert_eq!(first["tx_id"], 0);
    assert_eq!(first["global_position"], 1);
    assert_eq!(first["recorded_at"], "2026-01-01T09:00:01.123460Z");
    let out = replay_embedded(
        &dir,
        &[
            "timeline",
            "--user",
            "nobody@example.com",
            "--email-index-key-file",
            key_file,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("no account found"), "{out:?}");

    // Erased: nothing of Bob's is shown.
    let out = replay_embedded(&dir, &["history", "--user", &bob_id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("[erased]"), "{stdout}");
    assert!(
        !stdout.contains(&bob.email) && !stdout.contains(IP),
        "{stdout}"
    );

    let later = "2026-01-02T00:00:00Z";
    let out = replay_embedded(&dir, &["as-of", "--user", &ada_id, "--at", later]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("status=active"), "{stdout}");
    assert!(stdout.contains("ada@example.com"), "{stdout}");
    assert!(stdout.contains("sessions=1 organizations=1"), "{stdout}");
    assert!(stdout.contains("engines"), "{stdout}");
    assert!(stdout.contains("ip=198.51.100.7"), "{stdout}");
    let out = replay_embedded(
        &dir,
        &[
            "as-of",
            "--user",
            &ada_id,
            "--at",
            "2026-01-01T09:00:00Z",
            "--json",
        ],
    );
    let before: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(before["status"], "not_yet_registered", "{out:?}");
    let out = replay_embedded(&dir, &["as-of", "--user", &bob_id, "--at", later, "--json"]);
    let erased: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(erased["status"], "erased", "{out:?}");

    let out = replay_embedded(&dir, &["timeline", "--user", &ada_id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let entries: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 5, "{entries:?}");
    assert_eq!(entries[1]["actor"], ada_id);
    assert_eq!(entries[1]["user_agent"], AGENT);
    assert_eq!(entries[0]["request_id"], "r1");

    // Every event, in position order; --from counts recorded_at in microseconds.
    let out = replay_embedded(&dir, &["export", "--events", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stderr).contains("exported 7 rows"), "{out:?}");
    let written = text(&out.stdout);
    assert!(
        !written.contains("sealed:v1:") && !written.contains("argon2"),
        "{written}"
    );
    assert!(written.contains("ada@example.com") && !written.contains(&bob.email));
    let out = replay_embedded(
        &dir,
        &[
            "export",
            "--events",
            "--from",
            "2026-01-01T09:00:02.123463Z",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let positions: Vec<i64> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["global_position"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(positions, [2, 3, 4, 5, 6, 7]);

    // The audit trail is a read model: not there until the server built it.
    let out = replay_embedded(&dir, &["export"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("no audit trail yet"), "{out:?}");
    // In the read models' shape (projections/sql/read_models.sql, with the
    // embedded conventions: times as RFC 3339 text, details as JSON text).
    sqlx::raw_sql(
        "CREATE TABLE audit_trail (
             global_position INTEGER PRIMARY KEY, occurred_at TEXT NOT NULL,
             actor TEXT NOT NULL, subject TEXT NOT NULL, action TEXT NOT NULL,
             outcome TEXT NOT NULL, ip TEXT, user_agent TEXT, request_id TEXT,
             aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL,
             sequence INTEGER NOT NULL, details TEXT NOT NULL) STRICT",
    )
    .execute(log.db.writer())
    .await
    .unwrap();
    for (position, at) in [
        (1, "2026-01-01T09:00:01.123460+00:00"),
        (2, "2026-01-01T09:00:05+00:00"),
    ] {
        sqlx::query(
            "INSERT INTO audit_trail VALUES ($1, $2, 'anonymous', $3, 'UserRegistered', 'success',
                                             $4, NULL, 'r1', 'user', $3, 1, $5)",
        )
        .bind(position)
        .bind(at)
        .bind(&ada_id)
        .bind(IP)
        .bind(r#"{"email": "ada@example.com"}"#)
        .execute(log.db.writer())
        .await
        .unwrap();
    }
    let out = replay_embedded(&dir, &["export", "--to", "2026-01-01T09:00:02Z"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let row: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(row["global_position"], 1);
    assert_eq!(row["action"], "UserRegistered");
    assert_eq!(row["details"]["email"], "ada@example.com");
    assert_eq!(row["occurred_at"], "2026-01-01T09:00:01.123460Z");

    // Reseal is PostgreSQL's alone, and says why; a seed refuses a data directory
    // that is not a benchmark's, and one that a server holds.
    let audit_file = dir.0.join("audit.paserk");
    std::fs::write(&audit_file, AuditKey::generate().unwrap().0).unwrap();
    let out = replay_embedded(
        &dir,
        &["reseal", "--audit-key-file", audit_file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("is for PostgreSQL only")
            && text(&out.stderr).contains("sealed from its first event"),
        "{out:?}"
    );
    let out = replay_embedded(&dir, &["seed", "--events", "10"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("is not a benchmark data directory"),
        "{out:?}"
    );
    let out = replay_embedded(&dir, &["seed", "--events", "10", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("in use"), "{out:?}");

    // One store at a time; and a directory without a database says where it looked.
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger-replay"))
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .args(["--data-dir", dir.path(), "history", "--user", &ada_id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("both --data-dir and a database URL"),
        "{out:?}"
    );
    let empty = DataDir::new();
    let out = replay_embedded(&empty, &["history", "--user", &ada_id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("no embedded database at"),
        "{out:?}"
    );
    assert!(!empty.0.exists(), "a read command created {}", empty.path());
    // The flag works as well as the environment, and an empty DATABASE_URL is unset.
    let out = Command::new(env!("CARGO_BIN_EXE_keyledger-replay"))
        .env("DATABASE_URL", "")
        .env("KEYLEDGER_DATA_DIR", empty.path())
        .args(["--data-dir", dir.path(), "history", "--user", &ada_id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    log.close().await;
}

#[tokio::test]
async fn verify_on_the_embedded_store_checks_chains_and_checkpoints_and_names_an_edit() {
    let dir = DataDir::new();
    let mut log = Log::open(&dir).await;
    // Enough events for several chunks, with accounts continuing across them;
    // the sleepers come back only at the end, after the verifier's tip cache has
    // forgotten them, so their predecessors are looked up in the database.
    let mut people = Vec::new();
    for n in 0..40 {
        people.push(log.register(&format!("person{n}@example.com")).await);
    }
    let mut sleepers = Vec::new();
    for n in 0..5 {
        sleepers.push(log.register(&format!("sleeper{n}@example.com")).await);
    }
    for round in 0..60 {
        for person in &people {
            if round % 3 == 2 {
                log.failed_login(person, 1);
            }
            log.login(person);
        }
    }
    for sleeper in &sleepers {
        log.login(sleeper);
    }
    let events = log.state.event_count;
    let (secret, public) = AuditKey::generate().unwrap();
    let signed = log.sign(&secret).await;
    for person in &people[..3] {
        log.failed_login(person, 1);
    }
    log.flush().await;
    let ada = &people[0];

    let out = replay_embedded(&dir, &["verify", "--audit-public-key", &public]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "verified {} events and 1 checkpoints in ",
            events + 3
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 events after it are chained but not yet signed"),
        "{stdout}"
    );
    assert_eq!(reported_log_hash(&stdout), hex(&signed));

    let out = replay_embedded(
        &dir,
        &[
            "verify",
            "--audit-public-key",
            &public,
            "--cached-aggregates",
            "2",
            "--expect-log-hash",
            &hex(&signed),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = replay_embedded(
        &dir,
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
    let (_, stranger) = AuditKey::generate().unwrap();
    let out = replay_embedded(&dir, &["verify", "--audit-public-key", &stranger]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stdout).starts_with("TAMPERED: checkpoint #1 "),
        "{out:?}"
    );
    let out = replay_embedded(
        &dir,
        &["verify", "--audit-public-key", &public, "--schema", "old"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // An edit is named, whatever the cache.
    log.close().await;
    let original = stored_metadata(&dir, 1).await;
    edit_metadata(&dir, 1, r#"{"actor": "someone else"}"#).await;
    for cache in ["2", "1000"] {
        let out = replay_embedded(
            &dir,
            &[
                "verify",
                "--audit-public-key",
                &public,
                "--cached-aggregates",
                cache,
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with(&format!(
                "TAMPERED: event user {} sequence 1 at global position 1 (tx 0): its content \
                 does not match its chain hash",
                ada.id
            )),
            "{stdout}"
        );
    }
    // An edit deeper in the log, in an account the cache has long forgotten.
    edit_metadata(&dir, 1, &original).await;
    let deep = events - 9;
    let deep_original = stored_metadata(&dir, deep).await;
    edit_metadata(&dir, deep, &deep_original.replace("\"r", "\"x")).await;
    let out = replay_embedded(
        &dir,
        &[
            "verify",
            "--audit-public-key",
            &public,
            "--cached-aggregates",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stdout).contains(&format!("at global position {deep} (tx 0): its content")),
        "{out:?}"
    );
    edit_metadata(&dir, deep, &deep_original).await;
    let out = replay_embedded(&dir, &["verify", "--audit-public-key", &public]);
    assert_eq!(out.status.code(), Some(0), "restored: {out:?}");
}

/// A PostgreSQL database name for a copy's target; dropped with the guard
/// (whether or not the copy created it).
fn copy_target() -> ScratchDb {
    let name = format!("keyledger_replay_copy_{}", Uuid::new_v4().simple());
    ScratchDb {
        url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
        name,
    }
}

#[tokio::test]
async fn an_embedded_log_moves_to_postgres_and_stays_verifiable() {
    let dir = DataDir::new();
    let mut log = Log::open(&dir).await;
    let (ada, bob) = journey(&mut log).await;
    let (secret, public) = AuditKey::generate().unwrap();
    let signed = log.sign(&secret).await;
    log.failed_login(&ada, 1);
    log.flush().await;
    let events = log.state.event_count;
    let key_file = dir.0.join("email-index.key");
    std::fs::write(&key_file, log.index_key.encode()).unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    let target = copy_target();
    let copy = |extra: &[&str]| {
        let mut args = vec!["copy-to-postgres", "--to", &target.url];
        args.extend_from_slice(extra);
        replay_embedded(&dir, &args)
    };

    let out = replay_embedded(&dir, &["verify", "--audit-public-key", &public]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let embedded_verdict = text(&out.stdout);
    assert_eq!(reported_log_hash(&embedded_verdict), hex(&signed));

    // The embedded server must be stopped first.
    let out = copy(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("in use by another Keyledger process"),
        "{out:?}"
    );
    log.close().await;

    // A hash PostgreSQL computes differently stops the copy; nothing stays behind.
    let original = stored_metadata(&dir, 2).await;
    edit_metadata(&dir, 2, &original.replace("r2", "r9")).await;
    let out = copy(&["--batch-size", "3"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "event user {} sequence 2 at global position 2: PostgreSQL chains it to",
            ada.id
        )) && stderr.contains("nothing was copied"),
        "{stderr}"
    );
    let pool = PgPool::connect(&target.url).await.unwrap();
    let copied: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(copied, 0);
    edit_metadata(&dir, 2, &original).await;

    // Batches of 3: chains continue across batches (and inside one statement).
    let out = copy(&["--batch-size", "3", "--relay-from", "head"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "copied {events} events (up to global position {events}, "
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "last signed checkpoint: #1, log hash {}",
            hex(&signed)
        )),
        "{stdout}"
    );
    assert!(stdout.contains("next steps:"), "{stdout}");
    assert!(
        stdout.contains(
            "2 email claims, 1 organization slugs, 0 passkey claims, 0 external identity claims and 2 data keys (1 erased)"
        ),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains(&format!("copy-to-postgres: {events} events")),
        "{out:?}"
    );

    // PostgreSQL's verify agrees with the embedded one, log hash for log hash.
    let out = replay(&target.url, &["verify", "--audit-public-key", &public]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let postgres_verdict = text(&out.stdout);
    assert!(
        postgres_verdict.starts_with(&format!("verified {events} events and 1 checkpoints")),
        "{postgres_verdict}"
    );
    assert_eq!(reported_log_hash(&postgres_verdict), hex(&signed));
    let tail = |verdict: &str| verdict.split("; ").nth(1).map(str::to_owned);
    assert_eq!(tail(&postgres_verdict), tail(&embedded_verdict));

    // Everything else it needs came along: the copied events sort before any new
    // transaction, the sequences continue, claims, slugs and keys (tombstone
    // included) are there, and the relay starts after the history.
    let (tx_ids, next_position, next_checkpoint): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events WHERE tx_id::text <> '0'),
                nextval(pg_get_serial_sequence('events', 'global_position')),
                nextval(pg_get_serial_sequence('chain_checkpoints', 'id'))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((tx_ids, next_position, next_checkpoint), (0, events + 1, 2));
    let (claims, slugs, keys, tombstones): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM email_claims WHERE digest IS NOT NULL AND email IS NULL),
                (SELECT count(*) FROM organization_slugs WHERE slug = 'engines'),
                (SELECT count(*) FROM user_data_keys),
                (SELECT count(*) FROM user_data_keys WHERE key IS NULL AND owner_id = $1)",
    )
    .bind(bob.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((claims, slugs, keys, tombstones), (2, 1, 2, 1));
    let relay: (i64, i64) = sqlx::query_as(
        "SELECT tx_id, global_position FROM projection_checkpoints WHERE name = 'nats_relay:AUTH_EVENTS'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(relay, (0, events));

    // The tools read the moved log as they read the embedded one.
    let out = replay(
        &target.url,
        &[
            "history",
            "--user",
            "ada@example.com",
            "--email-index-key-file",
            &key_file,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("ip=198.51.100.7"), "{out:?}");
    let out = replay(
        &target.url,
        &["history", "--user", &bob.id.to_string(), "--json"],
    );
    assert!(text(&out.stdout).contains("[erased]"), "{out:?}");
    assert!(!text(&out.stdout).contains(&bob.email), "{out:?}");

    // Once filled, a target is never filled again.
    let out = copy(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("not empty (events, chain_checkpoints"),
        "{out:?}"
    );
    pool.close().await;
    drop(target);
}

/// Projects every stored event into the live read models the way the server's
/// projector does (personal data opened first, one transaction per batch).
async fn project(db: &EmbeddedDatabase) {
    use keyledger_projections::personal::PersonalDataOpener;
    use keyledger_projections::SqliteReadModels;
    let store = keyledger_storage::Database::from_embedded(db.clone());
    keyledger_projections::install_read_models(&store)
        .await
        .unwrap();
    let feed = EventFeed::new(store.clone());
    let mut opener = PersonalDataOpener::new(
        &store,
        std::sync::Arc::new(keyledger_domain::DataKeyWrapping::new(
            keyledger_domain::DataKeyWrappingKey::generate(),
            Vec::new(),
        )),
    );
    let mut after = keyledger_projections::checkpoints::checkpoint(
        &store,
        keyledger_projections::read_models::CHECKPOINT,
    )
    .await
    .unwrap();
    loop {
        let mut batch = feed.read_after(after, 50).await.unwrap();
        opener.open(&mut batch).await.unwrap();
        match SqliteReadModels::apply_batch(db.writer(), &batch)
            .await
            .unwrap()
        {
            Some(last) => after = last,
            None => return,
        }
    }
}

/// The scratch files a rebuild left in a data directory.
fn scratch_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("rebuild-"))
        .collect()
}

#[tokio::test]
async fn rebuild_on_the_embedded_store_compares_beside_the_running_server() {
    let dir = DataDir::new();
    // The "server" holds the data directory throughout: rebuild works beside it.
    let mut log = Log::open(&dir).await;
    let (ada, _bob) = journey(&mut log).await;
    let mut others = Vec::new();
    for n in 0..6 {
        others.push(log.register(&format!("person{n}@example.com")).await);
    }
    for (n, person) in others.iter().enumerate() {
        log.login(person);
        if n % 2 == 0 {
            log.failed_login(person, 1);
        }
    }
    log.login(&ada);
    log.flush().await;
    project(&log.db).await;
    let events = log.state.event_count;

    // Small batches, so that the keyset paging in the snapshot is exercised.
    let out = replay_embedded(&dir, &["rebuild", "--batch-size", "4"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("EQUAL: the live read models match"),
        "{stdout}"
    );
    assert!(
        stdout.starts_with(&format!(
            "rebuilt into file {}",
            dir.0.join("rebuild-").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("up to checkpoint (tx 0, position {events})")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("replayed {events} events")),
        "{stdout}"
    );
    for table in ["users", "sessions", "audit_trail"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(table))
            .unwrap_or_else(|| panic!("no {table} line in {stdout}"));
        assert!(line.ends_with("equal"), "{line}");
    }
    assert!(stdout.contains("deleted file"), "{stdout}");
    assert!(
        scratch_files(&dir.0).is_empty(),
        "{:?}",
        scratch_files(&dir.0)
    );

    // Kept: the file stays with its rows, indexes and checkpoint.
    let out = replay_embedded(&dir, &["rebuild", "--keep"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let kept = text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("kept file ").map(str::to_owned))
        .expect("the kept file is named");
    let scratch = sqlx::SqlitePool::connect(&format!("sqlite://{kept}?mode=ro"))
        .await
        .unwrap();
    let live_users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(log.db.readers())
        .await
        .unwrap();
    let (users, position): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users),
                (SELECT global_position FROM projection_checkpoints WHERE name = 'read_models')",
    )
    .fetch_one(&scratch)
    .await
    .unwrap();
    assert_eq!((users, position), (live_users, events));
    assert!(users >= 7, "{users}");
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL",
    )
    .fetch_one(&scratch)
    .await
    .unwrap();
    assert_eq!(indexes, 5, "the dropped indexes are back in a kept file");
    scratch.close().await;
    std::fs::remove_file(&kept).unwrap();

    // Tampering with a live row is caught and named; so are a missing and an
    // extra row.
    sqlx::query("UPDATE users SET display_name = 'x' WHERE user_id = $1")
        .bind(ada.id.to_string())
        .execute(log.db.writer())
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_trail WHERE global_position = $1")
        .bind(events)
        .execute(log.db.writer())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sessions (session_id, user_id, created_at, expires_at, state, version)
         VALUES ($1, $2, '2026-01-01T00:00:00+00:00', '2026-02-01T00:00:00+00:00', 'active', 1)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(ada.id.to_string())
    .execute(log.db.writer())
    .await
    .unwrap();
    let out = replay_embedded(&dir, &["rebuild"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("DIFFERENT: the live read models do not match"),
        "{stdout}"
    );
    let line = |table: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.starts_with(table))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // table, rebuilt, live, only-rebuilt, only-live, status
    assert_eq!(line("users")[3..], ["1", "1", "DIFFERENT"], "{stdout}");
    assert_eq!(line("sessions")[3..], ["0", "1", "DIFFERENT"], "{stdout}");
    assert_eq!(
        line("audit_trail")[3..],
        ["1", "0", "DIFFERENT"],
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("differing keys: {}", ada.id)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("differing keys: {events}")),
        "{stdout}"
    );
    assert!(scratch_files(&dir.0).is_empty());
    log.close().await;
}

/// A data directory whose name says it holds a benchmark's data.
fn bench_dir() -> DataDir {
    DataDir(std::env::temp_dir().join(format!("keyledger-replay-bench-{}", Uuid::new_v4())))
}

/// Signs the whole log with `secret`, as the chain signer would (needs the data
/// directory's lock, so no tool or server may hold it).
async fn sign_whole_log(dir: &DataDir, secret: &str) -> Hash {
    let mut log = Log::open(dir).await;
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT global_position, chain_hash FROM events ORDER BY global_position")
            .fetch_all(log.db.readers())
            .await
            .unwrap();
    for (global_position, hash) in rows {
        let hash: Hash = hash.try_into().unwrap();
        log.state.push(
            Position {
                tx_id: 0,
                global_position,
            },
            &hash,
        );
    }
    let signed = log.sign(secret).await;
    log.close().await;
    signed
}

#[tokio::test]
async fn a_seeded_embedded_store_verifies_switches_in_and_compares_equal() {
    let dir = bench_dir();
    let out = replay_embedded(&dir, &["seed", "--events", "3000", "--users", "50"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("seeded "), "{stdout}");
    assert!(stdout.contains("vacuumed in"), "{stdout}");
    assert!(
        stdout.contains("email index key: a new one, written to"),
        "{stdout}"
    );

    let db = EmbeddedDatabase::open(&settings(&dir)).await.unwrap();
    let (events, first, last, claims, keys, slugs): (i64, i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM events), (SELECT min(global_position) FROM events),
                    (SELECT max(global_position) FROM events),
                    (SELECT count(*) FROM email_claims),
                    (SELECT count(*) FROM user_data_keys WHERE length(key) = 32),
                    (SELECT count(*) FROM organization_slugs)",
        )
        .fetch_one(db.readers())
        .await
        .unwrap();
    assert!(events >= 3000, "{events}");
    assert_eq!((first, last), (1, events), "dense positions from 1");
    assert_eq!((claims, keys), (50, 50));
    assert!(slugs > 0);
    let clear: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE payload LIKE '%@example.com%' OR tx_id <> 0
             OR metadata ->> 'ip' NOT LIKE 'sealed:v1:%'
             OR metadata ->> 'user_agent' NOT LIKE 'sealed:v1:%'",
    )
    .fetch_one(db.readers())
    .await
    .unwrap();
    assert_eq!(clear, 0, "sealed, tx_id 0");
    // recorded_at is the instant the metadata says (whole microseconds).
    let (recorded_at, occurred_at): (i64, String) = sqlx::query_as(
        "SELECT recorded_at, metadata ->> 'occurred_at' FROM events WHERE global_position = 7",
    )
    .fetch_one(db.readers())
    .await
    .unwrap();
    assert_eq!(
        DateTime::parse_from_rfc3339(&occurred_at)
            .unwrap()
            .timestamp_micros(),
        recorded_at
    );
    db.close().await;
    drop(db);

    // Every chain recomputes, and a checkpoint over the whole log verifies.
    let (secret, public) = AuditKey::generate().unwrap();
    let signed = sign_whole_log(&dir, &secret).await;
    let out = replay_embedded(&dir, &["verify", "--audit-public-key", &public]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("verified {events} events and 1 checkpoints")),
        "{stdout}"
    );
    assert_eq!(reported_log_hash(&stdout), hex(&signed));

    // A second seed continues the log (positions and chains go on).
    let out = replay_embedded(&dir, &["seed", "--events", "200", "--seed", "2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = replay_embedded(&dir, &["verify", "--audit-public-key", &public]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // The seeded log projects (switched in from nothing, no server running) and
    // compares equal.
    let out = replay_embedded(&dir, &["rebuild", "--switch", "--batch-size", "700"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("events/s"), "{stdout}");
    assert!(
        stdout.contains("switched users, sessions, audit_trail at checkpoint (tx 0, position "),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("rebuild: "), "{out:?}");
    let out = replay_embedded(&dir, &["rebuild"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("EQUAL"), "{out:?}");
    let db = EmbeddedDatabase::open(&settings(&dir)).await.unwrap();
    let (users, handover, tables): (i64, i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM projection_handover),
                (SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_schema
                  WHERE type = 'table' AND (name LIKE 'rb%' OR name LIKE 'old%')))",
    )
    .fetch_one(db.readers())
    .await
    .map(|(u, h, t): (i64, i64, Option<String>)| (u, h, t.unwrap_or_default()))
    .unwrap();
    // 50 accounts from the first seed, 10 (one per 20 events) from the second.
    assert_eq!((users, handover, tables.as_str()), (60, 0, ""));
    db.close().await;
}
