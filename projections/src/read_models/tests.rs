//! The read models on both back ends, from one realistic log. The helpers
//! (`history`, `project`, `dump`, ...) serve the table modules' own tests too.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use chrono::{Duration, TimeZone};
use keyledger_domain::organization::{
    OrganizationEvent, OrganizationName, OrganizationSlug, RoleRef,
};
use keyledger_domain::permission::{BuiltInRole, PermissionSet};
use keyledger_domain::role::{RoleEvent, RoleName};
use keyledger_domain::service_account::ServiceAccountEvent;
use keyledger_domain::values::{Device, PasswordHash, RevocationReason, TokenHash};
use keyledger_domain::{PersonalData, SessionEvent, UserEvent};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::types::Json;
use sqlx::{Connection as _, Executor as _};

use chrono::{DateTime, SubsecRound, Utc};
use keyledger_storage::{on_both_back_ends, per_backend, Database, Engine, PerBackend};
use serde_json::Value;
use sqlx::{SqliteConnection, SqlitePool};

use super::rules::{RowRules, Texts};
use super::table::{self, time_text, Table};
use super::*;
use crate::SqliteReadModels;

/// A temporary SQLite file (and its WAL), removed on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("keyledger-read-models-{}.db", Uuid::new_v4())))
    }

    /// A writer like the embedded store's: one connection, WAL.
    async fn writer(&self) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&self.0)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

// ---- a realistic log -------------------------------------------------------

const ALICE: Uuid = Uuid::from_u128(0xa1);
pub(super) const BOB: Uuid = Uuid::from_u128(0xb0b);
const S1: Uuid = Uuid::from_u128(0x51);
const S2: Uuid = Uuid::from_u128(0x52);
const S3: Uuid = Uuid::from_u128(0x53);
const ORG: Uuid = Uuid::from_u128(0x0a6);
const ROLE: Uuid = Uuid::from_u128(0x201e);
const ROBOT: Uuid = Uuid::from_u128(0x5a);

/// Second `n` of the log, with a fraction of 0, 1, 3, 6 or 9 digits (the
/// nanoseconds are kept in the events and truncated by both stores).
pub(super) fn t(n: i64) -> DateTime<Utc> {
    let nanos = [0, 500_000_000, 123_000_000, 123_456_000, 123_456_789][n as usize % 5];
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
        + Duration::seconds(n)
        + Duration::nanoseconds(nanos)
}

#[derive(Default)]
struct Log {
    events: Vec<StoredEvent>,
    sequences: HashMap<Uuid, i64>,
}

impl Log {
    fn push(
        &mut self,
        actor: Option<Uuid>,
        aggregate_type: &str,
        id: Uuid,
        payload: impl serde::Serialize,
    ) {
        let payload = serde_json::to_value(payload).unwrap();
        let position = self.events.len() as i64 + 1;
        let sequence = self.sequences.entry(id).or_default();
        *sequence += 1;
        let event_type = payload
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap();
        let at = t(position);
        let mut metadata = json!({
            "occurred_at": at.to_rfc3339(),
            "actor": actor.map_or("anonymous".to_owned(), |a| a.to_string()),
            "request_id": format!("req-{position}"),
        });
        // Some requests carry the client's address, some do not.
        if position % 3 != 0 {
            metadata["ip"] = json!(format!("198.51.100.{position}"));
            metadata["user_agent"] = json!("Mozilla/5.0 (X11; Linux x86_64) \"quoted\"\ttab");
        }
        self.events.push(StoredEvent {
            position: Position {
                tx_id: 0,
                global_position: position,
            },
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: id.to_string(),
            sequence: *sequence,
            event_type,
            event_version: "1.0".into(),
            payload,
            metadata,
            recorded_at: at,
        });
    }

    fn user(&mut self, actor: Option<Uuid>, id: Uuid, event: UserEvent) {
        self.push(actor, "user", id, event);
    }

    fn session(&mut self, actor: Option<Uuid>, id: Uuid, event: SessionEvent) {
        self.push(actor, "session", id, event);
    }

    fn started(&mut self, user: Uuid, session: Uuid, n: i64) {
        self.session(
            Some(user),
            session,
            SessionEvent::SessionStarted {
                session_id: session,
                user_id: user,
                refresh_token_hash: TokenHash::from_bytes([n as u8; 32]),
                device: Device::new(
                    Some(format!("203.0.113.{n}")),
                    Some(format!("agent {n} (ünïcode)")),
                ),
                factors: vec![],
                started_at: t(n),
                expires_at: t(n + 3600),
            },
        );
    }
}

pub(super) fn registered(user: Uuid, email: &str, display_name: Option<&str>, n: i64) -> UserEvent {
    UserEvent::UserRegistered {
        user_id: user,
        email: PersonalData::clear(email),
        display_name: display_name.map(PersonalData::clear),
        password_hash: Some(keyledger_domain::SealedPasswordHash::clear(
            PasswordHash::new("$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA".into()),
        )),
        registered_at: t(n),
    }
}

/// `events` of one account, its own actor, as the log from position 1.
pub(super) fn user_log(user: Uuid, events: Vec<UserEvent>) -> Vec<StoredEvent> {
    let mut log = Log::default();
    for event in events {
        log.user(Some(user), user, event);
    }
    log.events
}

/// Three batches: registrations, logins and a failure; refreshes, an
/// organization with a member, a role and a service account, a lockout, a
/// logout; unlock, suspension, reuse detection, revocation and Alice's
/// erasure, with Bob's later events in the same batch.
pub(super) fn history() -> Vec<Vec<StoredEvent>> {
    let mut log = Log::default();
    log.user(
        None,
        ALICE,
        registered(ALICE, "alice@example.com", Some("Alice"), 1),
    );
    log.user(
        None,
        ALICE,
        UserEvent::LoginFailed {
            consecutive_failures: 1,
            at: t(2),
        },
    );
    log.user(
        None,
        ALICE,
        UserEvent::UserLoggedIn {
            session_id: S1,
            factors: vec!["pwd".into()],
            at: t(3),
        },
    );
    log.started(ALICE, S1, 4);
    log.user(None, BOB, registered(BOB, "bob@example.com", None, 5));
    let first = log.events.len();

    log.session(
        Some(ALICE),
        S1,
        SessionEvent::TokenRefreshed {
            generation: 1,
            refresh_token_hash: TokenHash::from_bytes([9; 32]),
            at: t(6),
        },
    );
    log.push(
        Some(ALICE),
        "organization",
        ORG,
        OrganizationEvent::OrganizationCreated {
            organization_id: ORG,
            slug: OrganizationSlug::parse("acme").unwrap(),
            name: OrganizationName::parse("Acme").unwrap(),
            owner: ALICE,
            at: t(7),
        },
    );
    log.push(
        Some(ALICE),
        "organization",
        ORG,
        OrganizationEvent::MemberAdded {
            user_id: BOB,
            roles: BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Member)]),
            at: t(8),
        },
    );
    log.push(
        Some(ALICE),
        "role",
        ROLE,
        RoleEvent::RoleDefined {
            role_id: ROLE,
            organization_id: ORG,
            name: RoleName::parse("billing").unwrap(),
            permissions: PermissionSet::parse(["invoices:read"]).unwrap(),
            at: t(9),
        },
    );
    log.push(
        Some(ALICE),
        "service_account",
        ROBOT,
        ServiceAccountEvent::ServiceAccountCreated {
            service_account_id: ROBOT,
            organization_id: ORG,
            name: OrganizationName::parse("Invoice robot").unwrap(),
            roles: BTreeSet::from([RoleRef::Custom(ROLE)]),
            secret_hash: TokenHash::from_bytes([3; 32]),
            at: t(10),
        },
    );
    log.session(
        Some(ALICE),
        S1,
        SessionEvent::OrganizationSelected {
            organization_id: Some(ORG),
            at: t(11),
        },
    );
    log.user(
        Some(ALICE),
        BOB,
        UserEvent::PlatformAdminGranted { at: t(12) },
    );
    log.user(
        None,
        BOB,
        UserEvent::LoginFailed {
            consecutive_failures: 1,
            at: t(13),
        },
    );
    log.user(
        None,
        BOB,
        UserEvent::AccountLocked {
            locked_until: t(1800),
            failed_attempts: 5,
            unlock_request_id: Some(Uuid::from_u128(77)),
            at: t(14),
        },
    );
    log.started(BOB, S2, 15);
    log.session(Some(BOB), S2, SessionEvent::UserLoggedOut { at: t(16) });
    let second = log.events.len();

    log.user(Some(ALICE), BOB, UserEvent::AccountUnlocked { at: t(17) });
    log.user(
        Some(ALICE),
        BOB,
        UserEvent::UserSuspended {
            reason: "review".into(),
            at: t(18),
        },
    );
    log.user(Some(ALICE), BOB, UserEvent::UserReactivated { at: t(19) });
    log.started(ALICE, S3, 20);
    log.session(
        None,
        S1,
        SessionEvent::RefreshTokenReuseDetected {
            presented_generation: 0,
            current_generation: 1,
            at: t(21),
        },
    );
    log.session(
        None,
        S1,
        SessionEvent::SessionRevoked {
            reason: RevocationReason::RefreshTokenReuse,
            at: t(22),
        },
    );
    log.session(
        Some(ALICE),
        S3,
        SessionEvent::SessionRevoked {
            reason: RevocationReason::AccountErased,
            at: t(23),
        },
    );
    log.user(Some(ALICE), ALICE, UserEvent::UserErased { at: t(24) });
    log.user(
        Some(BOB),
        BOB,
        UserEvent::PasswordChanged {
            password_hash: keyledger_domain::SealedPasswordHash::clear(PasswordHash::new(
                "$argon2id$v=19$m=1,t=1,p=1$c2FsdA$bmV3".into(),
            )),
            at: t(25),
        },
    );
    let mut events = log.events;
    let third = events.split_off(second);
    let second = events.split_off(first);
    vec![events, second, third]
}

// ---- reading every table back, normalised ----------------------------------

#[derive(Debug, PartialEq, sqlx::FromRow)]
pub(super) struct AuditDump {
    global_position: i64,
    occurred_at: DateTime<Utc>,
    actor: String,
    subject: String,
    action: String,
    outcome: String,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    details: Json<Value>,
}

/// Every row of every read model (checkpoints without their wall-clock
/// `updated_at`), sorted by primary key. Users and sessions are read as the
/// projector reads them, every column included.
#[derive(Debug, PartialEq)]
pub(super) struct Dump {
    pub(super) checkpoints: Vec<(String, i64, i64)>,
    pub(super) users: Vec<(Uuid, UserRow)>,
    pub(super) sessions: Vec<(Uuid, SessionRow)>,
    pub(super) audit: Vec<AuditDump>,
}

impl Dump {
    fn sorted(mut self) -> Self {
        self.checkpoints.sort_by(|a, b| a.0.cmp(&b.0));
        self.users.sort_by_key(|(id, _)| *id);
        self.sessions.sort_by_key(|(id, _)| *id);
        self.audit.sort_by_key(|a| a.global_position);
        self
    }
}

/// Every row of `R`'s table in `target`.
async fn rows_of<R: Table>(target: &mut Target<'_>) -> Vec<(Uuid, R)> {
    let sql = format!(
        "SELECT {} FROM {}",
        R::COLUMNS[0].name,
        target.table(R::TABLE)
    );
    let ids: Vec<Uuid> = per_backend!(target.conn(), |conn| {
        sqlx::query_scalar::<_, keyledger_storage::Id>(&sql)
            .fetch_all(conn)
            .await
            .unwrap()
    })
    .into_iter()
    .map(|id| id.0)
    .collect();
    table::load(target, &ids, &mut Texts::default())
        .await
        .unwrap()
}

const AUDIT_COLUMNS: &str = "global_position, occurred_at, actor, subject, action, outcome,
    ip, user_agent, request_id, aggregate_type, aggregate_id, sequence, details";

/// Every read model in `target`.
async fn dump_target(mut target: Target<'_>) -> Dump {
    let checkpoints = format!(
        "SELECT name, tx_id, global_position FROM {}",
        target.table("projection_checkpoints")
    );
    let audit = format!(
        "SELECT {AUDIT_COLUMNS} FROM {}",
        target.table("audit_trail")
    );
    Dump {
        checkpoints: per_backend!(target.conn(), |conn| {
            sqlx::query_as(&checkpoints).fetch_all(conn).await.unwrap()
        }),
        users: rows_of(&mut target).await,
        sessions: rows_of(&mut target).await,
        audit: per_backend!(target.conn(), |conn| {
            sqlx::query_as(&audit).fetch_all(conn).await.unwrap()
        }),
    }
    .sorted()
}

async fn dump_postgres(conn: &mut sqlx::PgConnection) -> Dump {
    dump_target(Target::live(PerBackend::Postgres(conn))).await
}

async fn dump_sqlite(conn: &mut SqliteConnection, tables: &SqliteTables) -> Dump {
    dump_target(Target::sqlite(conn, tables)).await
}

/// Projects `batches` into the live SQLite tables the way the runner does.
async fn project_sqlite(writer: &SqlitePool, batches: &[Vec<StoredEvent>]) {
    SqliteReadModels::install(writer).await.unwrap();
    for batch in batches {
        let last = SqliteReadModels::apply_batch(writer, batch).await.unwrap();
        assert_eq!(last, batch.last().map(|e| e.position));
    }
}

// ---- tests -------------------------------------------------------------------

#[tokio::test]
async fn both_back_ends_project_the_same_rows() {
    let batches = history();
    let file = TempDb::new();
    let writer = file.writer().await;
    project_sqlite(&writer, &batches).await;
    let mut conn = writer.acquire().await.unwrap();
    let sqlite = dump_sqlite(&mut conn, &SqliteTables::MAIN).await;

    let postgres = {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let batches = batches.clone();
        keyledger_storage::testing::with_database(
            keyledger_storage::Backend::Postgres,
            |db| async move {
                let pool = db.postgres_pool().expect("a PostgreSQL database").clone();
                ReadModels::install_in(&pool).await.unwrap();
                for batch in &batches {
                    ReadModels::apply_batch(&pool, batch).await.unwrap();
                }
                let mut conn = pool.acquire().await.unwrap();
                let live = dump_postgres(&mut conn).await;

                // The fresh path (`COPY`, rows kept across batches) into a
                // scratch schema gives the same tables.
                conn.execute("CREATE SCHEMA rebuild; SET search_path TO rebuild")
                    .await
                    .unwrap();
                ReadModels::install(&mut conn).await.unwrap();
                let mut models = FreshReadModels::new(2);
                for batch in &batches {
                    models.apply(&mut conn, batch).await.unwrap();
                }
                models.flush(&mut conn).await.unwrap();
                let last = batches.last().unwrap().last().unwrap().position;
                ReadModels::save_checkpoint(&mut conn, CHECKPOINT, last)
                    .await
                    .unwrap();
                assert_eq!(dump_postgres(&mut conn).await, live);
                tx.send(live).unwrap();
            },
        )
        .await;
        rx.await.unwrap()
    };

    // The log did what it should, so equality below means something.
    assert_eq!(sqlite.users.len(), 1, "Alice's row is gone, Bob's stays");
    assert_eq!(sqlite.sessions.len(), 3);
    let count = batches.iter().map(Vec::len).sum::<usize>();
    assert_eq!(sqlite.audit.len(), count);
    let erased = Some(keyledger_domain::ERASED);
    assert!(sqlite
        .sessions
        .iter()
        .any(|(_, s)| s.ip.as_deref() == erased));
    assert!(sqlite
        .sessions
        .iter()
        .any(|(_, s)| s.organization_id.is_some()));
    assert!(sqlite.audit.iter().any(|a| a.ip.as_deref() == erased));
    assert!(sqlite
        .audit
        .iter()
        .any(|a| a.details.0["email"] == keyledger_domain::ERASED));
    assert!(sqlite
        .audit
        .iter()
        .any(|a| a.details.0["email"] == "bob@example.com"));
    assert_eq!(
        sqlite.checkpoints,
        vec![(CHECKPOINT.to_owned(), 0, count as i64)]
    );
    assert_eq!(postgres, sqlite);

    // Stored as documented: TEXT ids and times, in sqlx's encoding, at
    // microseconds (the event said …04.123456789).
    let (id_type, time_type): (String, String) =
        sqlx::query_as("SELECT typeof(user_id), typeof(created_at) FROM users")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!((id_type.as_str(), time_type.as_str()), ("text", "text"));
    let occurred_at: String =
        sqlx::query_scalar("SELECT occurred_at FROM audit_trail WHERE global_position = 4")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(occurred_at, time_text(t(4)));
    assert_eq!(occurred_at, "2026-03-01T09:00:04.123456+00:00");
}

#[tokio::test]
async fn a_fresh_rebuild_into_an_attached_file_or_prefixed_tables_equals_the_live_tables() {
    let batches = history();
    let file = TempDb::new();
    let scratch = TempDb::new();
    let writer = file.writer().await;
    project_sqlite(&writer, &batches).await;
    let mut conn = writer.acquire().await.unwrap();
    let live = dump_sqlite(&mut conn, &SqliteTables::MAIN).await;

    sqlx::query("ATTACH DATABASE $1 AS rebuild")
        .bind(scratch.0.to_str().unwrap())
        .execute(&mut *conn)
        .await
        .unwrap();
    for tables in [
        SqliteTables::new("rebuild", "").unwrap(),
        SqliteTables::new("main", "rb1_").unwrap(),
    ] {
        SqliteReadModels::install_into(&mut conn, &tables)
            .await
            .unwrap();
        // Few rows in memory, so that rows leave it and come back.
        let mut models = FreshReadModels::new(2);
        for batch in &batches {
            models
                .apply_sqlite(&mut conn, &tables, batch)
                .await
                .unwrap();
        }
        models.flush_sqlite(&mut conn, &tables).await.unwrap();
        let last = batches.last().unwrap().last().unwrap().position;
        SqliteReadModels::save_checkpoint_in(&mut conn, &tables, CHECKPOINT, last)
            .await
            .unwrap();
        assert_eq!(dump_sqlite(&mut conn, &tables).await, live, "{tables:?}");
    }
    // The prefixed tables brought their own indexes; the live ones were not
    // touched by installing them.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM main.sqlite_schema WHERE type = 'index' AND name LIKE 'rb1_%'
          ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "rb1_audit_trail_aggregate_idx",
            "rb1_audit_trail_owner_organization_idx",
            "rb1_audit_trail_subject_idx",
            "rb1_sessions_user_idx",
            "rb1_users_email_idx",
        ]
    );
}

#[tokio::test]
async fn install_creates_only_missing_tables_and_checkpoints_round_trip() {
    let file = TempDb::new();
    let writer = file.writer().await;
    SqliteReadModels::install(&writer).await.unwrap();
    SqliteReadModels::install(&writer).await.unwrap();
    let mut conn = writer.acquire().await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        tables,
        ["audit_trail", "projection_checkpoints", "sessions", "users"]
    );

    assert_eq!(
        SqliteReadModels::checkpoint(&mut conn, "relay")
            .await
            .unwrap(),
        Position::START
    );
    for global_position in [7, 9] {
        let position = Position {
            tx_id: 0,
            global_position,
        };
        SqliteReadModels::save_checkpoint(&mut conn, "relay", position)
            .await
            .unwrap();
        assert_eq!(
            SqliteReadModels::checkpoint(&mut conn, "relay")
                .await
                .unwrap(),
            position
        );
    }
    assert_eq!(
        SqliteReadModels::apply_batch(&writer, &[]).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn the_organization_index_serves_the_audit_query_as_written() {
    let file = TempDb::new();
    let writer = file.writer().await;
    SqliteReadModels::install(&writer).await.unwrap();
    let mut conn = writer.acquire().await.unwrap();
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN
         SELECT global_position FROM audit_trail
          WHERE action IN ('RoleDefined', 'ServiceAccountCreated')
            AND details ->> 'organization_id' = $1",
    )
    .bind(ORG.to_string())
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(
        plan.iter()
            .any(|row| row.3.contains("audit_trail_owner_organization_idx")),
        "{plan:?}"
    );
}

#[tokio::test]
async fn sorting_stored_time_text_is_chronological() {
    let base = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
    // Whole seconds and 3, 6 and 9 fractional digits, around one boundary.
    let mut times: Vec<DateTime<Utc>> = [
        0,
        1,
        100_000,
        999_999,
        1_000_000,
        1_000_001,
        123_000_000,
        123_400_000,
        123_456_000,
        123_456_001,
        123_456_789,
        500_000_000,
        999_000_000,
        999_999_999,
        1_000_000_000,
        1_000_000_001,
        1_001_000_000,
        2_000_000_000,
    ]
    .iter()
    .map(|&nanos| base + Duration::nanoseconds(nanos))
    .chain([Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()])
    .collect();
    times.reverse();

    let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
    sqlx::query("CREATE TABLE t (bound TEXT NOT NULL, written TEXT NOT NULL) STRICT")
        .execute(&mut conn)
        .await
        .unwrap();
    for time in &times {
        sqlx::query("INSERT INTO t VALUES ($1, $2)")
            .bind(time)
            .bind(time_text(*time))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut chronological = times.clone();
    chronological.sort();

    let bound: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT bound FROM t ORDER BY bound")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(bound, chronological, "the text sqlx binds sorts by time");
    let written: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT written FROM t ORDER BY written")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let truncated: Vec<_> = chronological.iter().map(|t| t.trunc_subsecs(6)).collect();
    assert_eq!(written, truncated, "so does the text rows are written with");

    // What rows are written with is what sqlx binds (for a time already at
    // microseconds), so bound query parameters compare with it as text.
    let same: bool = sqlx::query_scalar("SELECT $1 = $2")
        .bind(time_text(chronological[4]))
        .bind(chronological[4].trunc_subsecs(6))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(same);
}

// ---- the same tests on both back ends ------------------------------------------

pub(super) async fn install(db: &Database) {
    match db.engine() {
        Engine::Postgres(pool) => ReadModels::install_in(pool).await.unwrap(),
        Engine::Sqlite(embedded) => SqliteReadModels::install(embedded.writer()).await.unwrap(),
    }
}

/// Applies a batch and moves the checkpoint the way the projector does.
pub(super) async fn apply_batch(db: &Database, batch: &[StoredEvent]) -> Option<Position> {
    match db.engine() {
        Engine::Postgres(pool) => ReadModels::apply_batch(pool, batch).await.unwrap(),
        Engine::Sqlite(embedded) => SqliteReadModels::apply_batch(embedded.writer(), batch)
            .await
            .unwrap(),
    }
}

pub(super) async fn project(db: &Database, batches: &[Vec<StoredEvent>]) {
    install(db).await;
    for batch in batches {
        let last = apply_batch(db, batch).await;
        assert_eq!(last, batch.last().map(|e| e.position));
    }
}

/// Runs `$body` with `$target` on the live tables of `$db`, on a connection of
/// its own.
macro_rules! on_live_tables {
    ($db:expr, |$target:ident| $body:expr) => {
        match $db.engine() {
            Engine::Postgres(pool) => {
                let mut conn = pool.acquire().await.unwrap();
                #[allow(unused_mut)]
                let mut $target = Target::live(PerBackend::Postgres(&mut conn));
                $body
            }
            Engine::Sqlite(embedded) => {
                let mut conn = embedded.writer().acquire().await.unwrap();
                #[allow(unused_mut)]
                let mut $target = Target::live(PerBackend::Sqlite(&mut conn));
                $body
            }
        }
    };
}

/// Applies events to the live tables without moving the checkpoint.
async fn apply_all(db: &Database, events: &[StoredEvent]) {
    on_live_tables!(db, |target| ReadModels::apply_to(target, events)
        .await
        .unwrap())
}

async fn upsert<R: Table>(db: &Database, rows: &[(Uuid, R)]) {
    on_live_tables!(db, |target| table::upsert(&mut target, rows).await.unwrap())
}

pub(super) async fn load<R: Table>(db: &Database, ids: &[Uuid]) -> Vec<(Uuid, R)> {
    let mut texts = Texts::default();
    on_live_tables!(db, |target| table::load(&mut target, ids, &mut texts)
        .await
        .unwrap())
}

pub(super) async fn dump(db: &Database) -> Dump {
    match db.engine() {
        Engine::Postgres(pool) => dump_postgres(&mut pool.acquire().await.unwrap()).await,
        Engine::Sqlite(embedded) => {
            let mut conn = embedded.writer().acquire().await.unwrap();
            dump_sqlite(&mut conn, &SqliteTables::MAIN).await
        }
    }
}

on_both_back_ends! {
    async fn applying_a_batch_again_changes_nothing(db) {
        let batches = history();
        project(&db, &batches).await;
        let once = dump(&db).await;

        // The last batch again (with its erasure), then every batch again.
        apply_batch(&db, batches.last().unwrap()).await;
        for batch in &batches {
            apply_batch(&db, batch).await;
        }
        assert_eq!(dump(&db).await, once);
    }
}

on_both_back_ends! {
    async fn an_older_event_never_overwrites_a_newer_row(db) {
        // The first two batches (no erasure): a row written at a later version
        // keeps it when earlier events of its aggregate arrive again.
        let batches = history();
        project(&db, &batches[..2]).await;
        let before = dump(&db).await;
        apply_all(&db, &batches[0]).await;
        apply_all(&db, &batches[1][..3]).await;
        assert_eq!(dump(&db).await, before);
        let (_, bob) = before.users.iter().find(|(id, _)| *id == BOB).unwrap();
        assert!(
            bob.platform_admin,
            "Bob is a platform administrator from batch two"
        );
    }
}

on_both_back_ends! {
    async fn the_upsert_itself_only_replaces_an_older_version(db) {
        // What guards a second projector for a moment: a row folded from a
        // stale read is written over nothing newer.
        let batches = history();
        project(&db, &batches).await;
        let before = dump(&db).await;
        let mut texts = Texts::default();
        let mut stale_user = UserRow::create(
            1,
            &registered(BOB, "stale@example.com", None, 0),
            &mut texts,
        )
        .unwrap();
        stale_user.suspended = true;
        let started = SessionEvent::SessionStarted {
            session_id: S2,
            user_id: BOB,
            refresh_token_hash: TokenHash::from_bytes([0; 32]),
            device: Device::new(None, None),
            factors: vec![],
            started_at: t(0),
            expires_at: t(1),
        };
        let stale_session = SessionRow::create(1, &started, &mut texts).unwrap();
        upsert(&db, &[(BOB, stale_user.clone())]).await;
        upsert(&db, &[(S2, stale_session)]).await;
        assert_eq!(dump(&db).await, before);

        let newer = UserRow {
            version: 100,
            ..stale_user
        };
        upsert(&db, &[(BOB, newer.clone())]).await;
        let loaded = load::<UserRow>(&db, &[BOB, ALICE]).await;
        assert_eq!(loaded.len(), 1, "Alice was erased");
        assert_eq!(loaded[0].0, BOB);
        assert_eq!(
            loaded[0].1,
            UserRow {
                created_at: newer.created_at.trunc_subsecs(6),
                ..newer
            }
        );
    }
}

on_both_back_ends! {
    async fn sessions_load_back_as_they_were_written(db) {
        let batches = history();
        project(&db, &batches).await;
        let sessions = load::<SessionRow>(&db, &[S1, S2, S3]).await;
        assert_eq!(sessions.len(), 3);
        let (_, s1) = sessions.iter().find(|(id, _)| *id == S1).unwrap();
        assert_eq!(s1.user_id, ALICE);
        assert_eq!(s1.organization_id, Some(ORG));
        assert_eq!(s1.refresh_count, 1);
        assert_eq!(&*s1.state, "revoked");
        assert_eq!(s1.ip.as_deref(), Some(keyledger_domain::ERASED));
        assert_eq!(s1.ended_at, Some(t(22).trunc_subsecs(6)));
    }
}

#[tokio::test]
async fn install_adds_a_column_the_ddl_has_and_an_older_table_lacks() {
    let file = TempDb::new();
    let writer = file.writer().await;
    SqliteReadModels::install(&writer).await.unwrap();
    let columns = |writer: SqlitePool| async move {
        sqlx::query_scalar::<_, String>("SELECT name FROM pragma_table_info('sessions')")
            .fetch_all(&writer)
            .await
            .unwrap()
    };
    let all = columns(writer.clone()).await;
    // A file from before the column (SQLite drops a column since 3.35).
    sqlx::query("ALTER TABLE sessions DROP COLUMN organization_id")
        .execute(&writer)
        .await
        .unwrap();
    assert!(!columns(writer.clone())
        .await
        .contains(&"organization_id".to_owned()));
    SqliteReadModels::install(&writer).await.unwrap();
    // Added at the end, as ALTER TABLE adds a column.
    let mut expected = all.clone();
    expected.retain(|c| c != "organization_id");
    expected.push("organization_id".to_owned());
    assert_eq!(columns(writer.clone()).await, expected);
}
