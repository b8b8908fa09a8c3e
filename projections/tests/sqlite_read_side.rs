//! The read side on the embedded SQLite store: the feed, its wake-up signal, the
//! chain signer, personal data and time travel, each against a database file of
//! the test's own (migrated with `migrations/sqlite`, events appended with their
//! chain hashes the way the embedded appender does), and time travel also against
//! PostgreSQL with the same events, which must give the same answers.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::DomainEvent;
use futures::FutureExt as _;
use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};
use keyledger_domain::organization::{
    OrganizationEvent, OrganizationName, OrganizationSlug, RoleRef,
};
use keyledger_domain::permission::{BuiltInRole, PermissionSet};
use keyledger_domain::platform::PlatformEvent;
use keyledger_domain::role::{RoleEvent, RoleName};
use keyledger_domain::values::{Device, PasswordHash, TokenHash};
use keyledger_domain::{DataKey, Field, SessionEvent, UserEvent, ERASED};
use keyledger_projections::as_of::load_account_events;
use keyledger_projections::personal::PersonalDataOpener;
use keyledger_projections::{
    account_as_of, last_signed_by, AccountStatus, AuditKey, ChainSigner, EventFeed, FeedSignal,
    LogState, Position, RevokedSessions, StoredEvent,
};
use keyledger_storage::{testing, Database, EmbeddedDatabase};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgPool, SqliteConnection, SqlitePool};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// An embedded database of the test's own.

/// A migrated SQLite database in a temporary directory, removed on drop.
struct TempSqlite {
    dir: PathBuf,
    database: Database,
    writer: SqlitePool,
    readers: SqlitePool,
}

impl TempSqlite {
    /// Opens it the way the server does: WAL, one writer connection, a separate
    /// read-only pool.
    async fn open() -> Self {
        let dir = testing::temp_data_dir("read-side");
        let embedded = EmbeddedDatabase::open_unlocked(&testing::embedded_settings(&dir, 4))
            .await
            .unwrap();
        Self {
            dir,
            writer: embedded.writer().clone(),
            readers: embedded.readers().clone(),
            database: Database::from_embedded(embedded),
        }
    }

    /// The handle on it.
    fn store(&self) -> Database {
        self.database.clone()
    }

    /// Appends events in one write transaction, like the embedded appender.
    async fn append(&self, events: &[NewEvent]) -> Vec<Position> {
        self.append_recorded_at(events, Utc::now()).await
    }

    /// [`Self::append`] as if the store had accepted them at `recorded_at`.
    async fn append_recorded_at(
        &self,
        events: &[NewEvent],
        recorded_at: DateTime<Utc>,
    ) -> Vec<Position> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let positions = append_recorded_in(&mut tx, events, recorded_at).await;
        tx.commit().await.unwrap();
        positions
    }
}

impl Drop for TempSqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An event as a writer hands it to the store (JSON already as stored text).
#[derive(Debug, Clone)]
struct NewEvent {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
}

/// Gives each event the next position, `tx_id` 0, one `recorded_at` for the
/// transaction and its chain hash (the previous hash of its aggregate and the
/// canonical bytes), as the embedded appender does under the write lock.
async fn append_in(conn: &mut SqliteConnection, events: &[NewEvent]) -> Vec<Position> {
    append_recorded_in(conn, events, Utc::now()).await
}

/// [`append_in`] with the time the store accepted them.
async fn append_recorded_in(
    conn: &mut SqliteConnection,
    events: &[NewEvent],
    recorded_at: DateTime<Utc>,
) -> Vec<Position> {
    let mut head: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let recorded_at = recorded_at.timestamp_micros();
    let mut positions = Vec::new();
    for event in events {
        let previous: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT chain_hash FROM events WHERE aggregate_type = $1 AND aggregate_id = $2
              ORDER BY sequence DESC LIMIT 1",
        )
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .fetch_optional(&mut *conn)
        .await
        .unwrap();
        let previous: Hash = previous.map_or(ZERO_HASH, |h| h.try_into().unwrap());
        head += 1;
        let hash = CanonicalEvent {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
            recorded_at_micros: recorded_at,
            tx_id: 0,
            global_position: head,
        }
        .chain_hash(&previous);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, global_position, tx_id,
                                 recorded_at, chain_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10)",
        )
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(event.sequence)
        .bind(&event.event_type)
        .bind(&event.event_version)
        .bind(&event.payload)
        .bind(&event.metadata)
        .bind(head)
        .bind(recorded_at)
        .bind(&hash[..])
        .execute(&mut *conn)
        .await
        .unwrap();
        positions.push(Position {
            tx_id: 0,
            global_position: head,
        });
    }
    positions
}

async fn store_data_key_sqlite(db: &TempSqlite, owner: Uuid, key: &DataKey) {
    sqlx::query("INSERT INTO user_data_keys (owner_id, key, created_at) VALUES ($1, $2, $3)")
        .bind(owner.to_string())
        .bind(&key.expose_bytes()[..])
        .bind(Utc::now())
        .execute(&db.writer)
        .await
        .unwrap();
}

async fn erase_data_key_sqlite(db: &TempSqlite, owner: Uuid) {
    sqlx::query("UPDATE user_data_keys SET key = NULL, erased_at = $2 WHERE owner_id = $1")
        .bind(owner.to_string())
        .bind(Utc::now())
        .execute(&db.writer)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// A PostgreSQL database of the test's own, for the comparisons.

const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs `test` on a fresh, migrated PostgreSQL database and drops it afterwards,
/// also when the test fails.
async fn with_postgres<F, Fut>(test: F)
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = format!("keyledger_read_side_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let pool = PgPool::connect(&format!("{PG_SERVER}/{name}"))
        .await
        .unwrap();
    sqlx::migrate!("../migrations").run(&pool).await.unwrap();
    let outcome = AssertUnwindSafe(test(pool.clone())).catch_unwind().await;
    pool.close().await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Appends events in one transaction (the database fills in position,
/// transaction id, time and chain hash).
async fn append_postgres(pool: &PgPool, events: &[NewEvent]) {
    let mut tx = pool.begin().await.unwrap();
    for event in events {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             VALUES ($1, $2, $3, $4, $5, $6::json, $7::json)",
        )
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(event.sequence)
        .bind(&event.event_type)
        .bind(&event.event_version)
        .bind(&event.payload)
        .bind(&event.metadata)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

// ---------------------------------------------------------------------------
// Events.

fn t(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::minutes(minute)
}

/// Events in the order they are written, with per-aggregate sequences.
#[derive(Default)]
struct History {
    events: Vec<NewEvent>,
    sequences: HashMap<(String, String), i64>,
}

impl History {
    fn push<E: DomainEvent + Serialize>(
        &mut self,
        minute: i64,
        aggregate_type: &str,
        aggregate: Uuid,
        event: E,
    ) -> &mut Self {
        let key = (aggregate_type.to_owned(), aggregate.to_string());
        let sequence = self.sequences.entry(key).or_default();
        *sequence += 1;
        self.events.push(NewEvent {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate.to_string(),
            sequence: *sequence,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_string(&event).unwrap(),
            metadata: json!({"occurred_at": t(minute).to_rfc3339(), "actor": "anonymous"})
                .to_string(),
        });
        self
    }

    fn user(&mut self, minute: i64, user: Uuid, event: UserEvent) -> &mut Self {
        self.push(minute, "user", user, event)
    }

    fn session(&mut self, minute: i64, session: Uuid, event: SessionEvent) -> &mut Self {
        self.push(minute, "session", session, event)
    }

    fn org(&mut self, minute: i64, org: Uuid, event: OrganizationEvent) -> &mut Self {
        self.push(minute, "organization", org, event)
    }

    fn role(&mut self, minute: i64, role: Uuid, event: RoleEvent) -> &mut Self {
        self.push(minute, "role", role, event)
    }
}

fn registered(user: Uuid, email: keyledger_domain::PersonalData, minute: i64) -> UserEvent {
    UserEvent::UserRegistered {
        user_id: user,
        email,
        display_name: None,
        password_hash: Some(keyledger_domain::SealedPasswordHash::clear(
            PasswordHash::new("$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA".into()),
        )),
        registered_at: t(minute),
    }
}

fn started(session: Uuid, user: Uuid, device: Device, minute: i64) -> SessionEvent {
    SessionEvent::SessionStarted {
        session_id: session,
        user_id: user,
        refresh_token_hash: TokenHash::from_bytes([7; 32]),
        device,
        factors: vec![],
        started_at: t(minute),
        expires_at: t(minute + 60),
    }
}

/// `count` registrations of different users, one event each.
fn registrations(count: usize) -> Vec<NewEvent> {
    let mut history = History::default();
    for _ in 0..count {
        let user = Uuid::new_v4();
        history.user(
            0,
            user,
            registered(
                user,
                keyledger_domain::PersonalData::clear("someone@example.com"),
                0,
            ),
        );
    }
    history.events
}

fn identity(event: &StoredEvent) -> (String, String, i64) {
    (
        event.aggregate_type.clone(),
        event.aggregate_id.clone(),
        event.sequence,
    )
}

fn identities(events: &[NewEvent]) -> Vec<(String, String, i64)> {
    events
        .iter()
        .map(|e| (e.aggregate_type.clone(), e.aggregate_id.clone(), e.sequence))
        .collect()
}

// ---------------------------------------------------------------------------
// The feed.

#[tokio::test]
async fn the_feed_returns_every_event_once_in_position_order_in_batches() {
    let db = TempSqlite::open().await;
    let feed = EventFeed::new(db.store());
    assert_eq!(feed.head().await.unwrap(), Position::START);
    assert!(feed
        .read_after(Position::START, 10)
        .await
        .unwrap()
        .is_empty());

    let written = registrations(7);
    let mut positions = db.append(&written[..3]).await;
    positions.extend(db.append(&written[3..]).await);

    let mut seen = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = feed.read_after(after, 3).await.unwrap();
        assert!(batch.len() <= 3);
        let Some(last) = batch.last() else { break };
        after = last.position;
        seen.extend(batch);
    }
    assert_eq!(
        seen.iter().map(identity).collect::<Vec<_>>(),
        identities(&written)
    );
    assert_eq!(
        seen.iter().map(|e| e.position).collect::<Vec<_>>(),
        positions
    );
    assert!(seen.iter().all(|e| e.position.tx_id == 0));

    let first = &seen[0];
    assert_eq!(first.event_type, "UserRegistered");
    assert_eq!(
        first.payload["UserRegistered"]["email"],
        "someone@example.com"
    );
    assert_eq!(first.occurred_at(), t(0));
    // recorded_at is kept in microseconds: it reads back as now, not 1970.
    let age = Utc::now() - first.recorded_at;
    assert!(
        age >= chrono::Duration::zero() && age < chrono::Duration::minutes(1),
        "{}",
        first.recorded_at
    );

    // Headers and chain hashes follow the same order.
    let headers = feed.read_headers_after(Position::START, 100).await.unwrap();
    assert_eq!(
        headers.iter().map(|h| h.position).collect::<Vec<_>>(),
        positions
    );
    assert!(headers.iter().all(|h| h.occurred_at == t(0)));
    let chain = feed.read_chain_after(positions[2], 100).await.unwrap();
    assert_eq!(
        chain.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        positions[3..]
    );
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT chain_hash FROM events WHERE global_position = $1")
            .bind(positions[3].global_position)
            .fetch_one(&db.readers)
            .await
            .unwrap();
    assert_eq!(chain[0].1[..], stored[..]);
}

#[tokio::test]
async fn reading_some_aggregate_types_keeps_positions_and_drops_other_payloads() {
    let db = TempSqlite::open().await;
    let (user, org, session) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut history = History::default();
    history
        .user(0, user, registered(user, "a@example.com".into(), 0))
        .org(
            1,
            org,
            OrganizationEvent::OrganizationCreated {
                organization_id: org,
                slug: OrganizationSlug::parse("acme").unwrap(),
                name: OrganizationName::parse("Acme").unwrap(),
                owner: user,
                at: t(1),
            },
        )
        .session(2, session, started(session, user, Device::default(), 2));
    db.append(&history.events).await;

    let feed = EventFeed::new(db.store());
    let kept = feed
        .read_after_keeping(Position::START, 10, &["organization", "role"])
        .await
        .unwrap();
    assert_eq!(
        kept.iter().map(identity).collect::<Vec<_>>(),
        identities(&history.events)
    );
    assert_eq!(kept[0].payload, Value::Null);
    assert_eq!(kept[0].metadata, Value::Null);
    assert_eq!(kept[2].payload, Value::Null);
    assert_eq!(
        kept[1].payload["OrganizationCreated"]["slug"],
        json!("acme")
    );
    assert_eq!(kept[1].meta("actor"), Some("anonymous"));

    let after_first = feed
        .read_after_keeping(kept[0].position, 10, &[])
        .await
        .unwrap();
    assert_eq!(after_first.len(), 2);
    assert!(after_first.iter().all(|e| e.payload == Value::Null));
}

#[tokio::test]
async fn head_position_of_and_position_before_find_their_events() {
    let db = TempSqlite::open().await;
    let feed = EventFeed::new(db.store());
    let early = db.append(&registrations(2)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late_events = registrations(2);
    let late = db.append(&late_events).await;

    assert_eq!(feed.head().await.unwrap(), late[1]);
    assert_eq!(
        feed.position_of("user", &late_events[0].aggregate_id, 1)
            .await
            .unwrap(),
        Some(late[0])
    );
    assert_eq!(
        feed.position_of("user", &late_events[0].aggregate_id, 2)
            .await
            .unwrap(),
        None
    );
    // Just before the first event recorded at or after the instant, so that
    // reading after it starts with that event.
    assert_eq!(feed.position_before(between).await.unwrap(), early[1]);
    let from = feed.read_after(early[1], 10).await.unwrap();
    assert_eq!(from[0].position, late[0]);
    assert_eq!(
        feed.position_before(t(-100_000)).await.unwrap(),
        Position::START
    );
    // Nothing recorded since: the head.
    assert_eq!(
        feed.position_before(Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap(),
        late[1]
    );
}

#[tokio::test]
async fn an_uncommitted_write_is_invisible_and_follows_in_order_after_its_commit() {
    let db = TempSqlite::open().await;
    let feed = EventFeed::new(db.store());
    let events = registrations(3);
    let committed = db.append(&events[..2]).await;

    let mut tx = db.writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let pending = append_in(&mut tx, &events[2..]).await;
    let seen = feed.read_after(Position::START, 10).await.unwrap();
    assert_eq!(
        seen.iter().map(|e| e.position).collect::<Vec<_>>(),
        committed
    );
    assert_eq!(feed.head().await.unwrap(), committed[1]);

    tx.commit().await.unwrap();
    let next = feed.read_after(committed[1], 10).await.unwrap();
    assert_eq!(next.iter().map(|e| e.position).collect::<Vec<_>>(), pending);
}

// ---------------------------------------------------------------------------
// The revocation view.

#[tokio::test]
async fn a_session_cut_off_older_than_the_revocation_window_is_known_at_start() {
    let db = TempSqlite::open().await;
    let long_ago = Utc::now() - chrono::Duration::days(3);
    let mut history = History::default();
    history.push(
        0,
        "platform",
        Uuid::nil(),
        PlatformEvent::SessionsRevokedBefore {
            before: long_ago,
            reason: None,
            at: long_ago,
        },
    );
    db.append_recorded_at(&history.events, long_ago).await;
    db.append(&registrations(2)).await;

    // The view follows only the last token lifetime of the log, which holds no
    // cut-off; the one recorded three days ago still ends older sessions.
    let view = RevokedSessions::new(Duration::from_secs(900));
    view.load(&EventFeed::new(db.store())).await.unwrap();
    assert!(view.is_cut_off(long_ago - chrono::Duration::microseconds(1)));
    assert!(!view.is_cut_off(long_ago));
}

// ---------------------------------------------------------------------------
// The wake-up signal.

#[tokio::test]
async fn the_signal_wakes_followers_on_a_commit_without_waiting_for_the_tick() {
    let db = TempSqlite::open().await;
    let commits = db.database.embedded().unwrap().commits().clone();
    let (mut signal, task) = FeedSignal::start(&db.store());

    for _ in 1..=5u64 {
        // Right after a wake-up the next tick is a full period away.
        signal.wait().await;
        let sent = tokio::time::Instant::now();
        commits.committed();
        signal.wait().await;
        let took = sent.elapsed();
        assert!(took < FeedSignal::TICK / 2, "woke after {took:?}");
    }

    // Other processes' writes are caught by the tick, also without a signal.
    for _ in 0..2 {
        tokio::time::timeout(FeedSignal::TICK * 4, signal.wait())
            .await
            .expect("the tick wakes followers");
    }
    task.abort();

    // Another handle on the same file (another process's), whose signal never
    // fires for these commits, wakes on the tick.
    let other = EmbeddedDatabase::open_unlocked(&testing::embedded_settings(&db.dir, 1))
        .await
        .unwrap();
    let (mut ticking, task) = FeedSignal::start(&Database::from_embedded(other));
    tokio::time::timeout(FeedSignal::TICK * 4, ticking.wait())
        .await
        .expect("the tick wakes followers");
    task.abort();
}

// ---------------------------------------------------------------------------
// The chain signer.

fn audit_key() -> Arc<AuditKey> {
    let (secret, _) = AuditKey::generate().unwrap();
    Arc::new(AuditKey::from_paserk(&secret).unwrap())
}

/// The log hash over the whole feed, folded independently of the signer.
async fn log_state(feed: &EventFeed) -> LogState {
    let mut state = LogState::START;
    for (position, hash) in feed
        .read_chain_after(Position::START, 10_000)
        .await
        .unwrap()
    {
        state.push(position, &hash);
    }
    state
}

#[tokio::test]
async fn the_signer_signs_the_log_and_reads_its_checkpoint_back() {
    let db = TempSqlite::open().await;
    let store = db.store();
    let feed = EventFeed::new(store.clone());
    let key = audit_key();
    let signer = ChainSigner::new(store.clone(), key.clone());
    assert_eq!(signer.sign_now().await.unwrap(), None, "nothing to sign");
    assert_eq!(
        last_signed_by(&store, key.public_key().id()).await.unwrap(),
        None
    );

    db.append(&registrations(3)).await;
    let first = signer.sign_now().await.unwrap().expect("signed");
    assert_eq!(first.state, log_state(&feed).await);
    assert_eq!(first.state.event_count, 3);
    assert!(key.public_key().verifies(&first));
    let read = last_signed_by(&store, key.public_key().id())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(read, first, "signed_at and every field read back exactly");
    let stored_micros: i64 =
        sqlx::query_scalar("SELECT signed_at FROM chain_checkpoints WHERE id = $1")
            .bind(first.id)
            .fetch_one(&db.readers)
            .await
            .unwrap();
    assert_eq!(stored_micros, first.signed_at.timestamp_micros());

    assert_eq!(signer.sign_now().await.unwrap(), None, "nothing new");
    db.append(&registrations(2)).await;
    let second = signer.sign_now().await.unwrap().expect("signed");
    assert_eq!(second.state, log_state(&feed).await);
    assert_eq!(second.state.event_count, 5);
    assert!(second.id > first.id);
    assert_eq!(
        last_signed_by(&store, key.public_key().id()).await.unwrap(),
        Some(second)
    );
}

#[tokio::test]
async fn two_signers_at_once_append_one_checkpoint() {
    let db = TempSqlite::open().await;
    let store = db.store();
    let key = audit_key();
    db.append(&registrations(4)).await;
    let (a, b) = (
        ChainSigner::new(store.clone(), key.clone()),
        ChainSigner::new(store.clone(), key.clone()),
    );
    let (a, b) = tokio::join!(a.sign_now(), b.sign_now());
    let signed: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(signed.len(), 1, "{signed:?}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM chain_checkpoints")
        .fetch_one(&db.readers)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn the_signer_refuses_to_build_on_a_checkpoint_it_cannot_verify() {
    let db = TempSqlite::open().await;
    let store = db.store();
    let key = audit_key();
    db.append(&registrations(1)).await;
    // Someone with write access but without the key forges a row in its name.
    sqlx::query(
        "INSERT INTO chain_checkpoints
                (signed_at, tx_id, global_position, event_count, log_hash, key_id, signature)
         VALUES ($1, 0, 1, 1, $2, $3, $4)",
    )
    .bind(Utc::now().timestamp_micros())
    .bind(&[1u8; 32][..])
    .bind(key.public_key().id())
    .bind(&[0u8; 64][..])
    .execute(&db.writer)
    .await
    .unwrap();
    let refused = ChainSigner::new(store, key).sign_now().await;
    assert!(
        matches!(
            refused,
            Err(keyledger_projections::chain::ChainError::UntrustedCheckpoint { .. })
        ),
        "{refused:?}"
    );
}

// ---------------------------------------------------------------------------
// Personal data.

#[tokio::test]
async fn sealed_fields_open_with_their_key_and_read_as_erased_once_it_is_gone() {
    let db = TempSqlite::open().await;
    let store = db.store();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (alice_key, bob_key) = (DataKey::generate(), DataKey::generate());
    store_data_key_sqlite(&db, alice, &alice_key).await;
    store_data_key_sqlite(&db, bob, &bob_key).await;
    let mut history = History::default();
    history
        .user(
            0,
            alice,
            registered(
                alice,
                alice_key.seal(alice, Field::Email, "alice@example.com"),
                0,
            ),
        )
        .user(
            0,
            bob,
            registered(bob, bob_key.seal(bob, Field::Email, "bob@example.com"), 0),
        );
    db.append(&history.events).await;
    let feed = EventFeed::new(store.clone());
    let email = |e: &StoredEvent| e.payload["UserRegistered"]["email"].clone();

    let mut events = feed.read_after(Position::START, 10).await.unwrap();
    assert!(email(&events[0]).as_str().unwrap() != "alice@example.com");
    let mut opener = PersonalDataOpener::new(&store, wrapping());
    opener.open(&mut events).await.unwrap();
    assert_eq!(email(&events[0]), "alice@example.com");
    assert_eq!(email(&events[1]), "bob@example.com");

    erase_data_key_sqlite(&db, alice).await;
    let mut events = feed.read_after(Position::START, 10).await.unwrap();
    PersonalDataOpener::new(&store, wrapping())
        .open(&mut events)
        .await
        .unwrap();
    assert_eq!(email(&events[0]), ERASED);
    assert_eq!(email(&events[1]), "bob@example.com");

    // A key of the wrong length is corruption (below the database: the schema's
    // CHECK is bypassed to make it): the reader stops with an error rather than
    // showing Bob as erased.
    let mut writer = db.writer.acquire().await.unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut *writer)
        .await
        .unwrap();
    sqlx::query("UPDATE user_data_keys SET key = substr(key, 1, 31) WHERE owner_id = $1")
        .bind(bob.to_string())
        .execute(&mut *writer)
        .await
        .unwrap();
    drop(writer);
    let mut events = feed.read_after(Position::START, 10).await.unwrap();
    let error = PersonalDataOpener::new(&store, wrapping())
        .open(&mut events)
        .await
        .expect_err("a corrupt key read as erased");
    assert!(error.to_string().contains("31 bytes"), "{error}");
}

// ---------------------------------------------------------------------------
// Time travel, on both back ends.

/// Alice registers (sealed email), logs in twice, joins an organization with a
/// custom role that is narrowed later, and is suspended. Bob's session and an
/// organization she never joined are in the log too, and must not count.
fn alice_history(alice: Uuid, bob: Uuid, key: &DataKey) -> History {
    let (org, other_org, role) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (s1, s2, bobs) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let device = |ua: &str| Device {
        ip: Some(key.seal(alice, Field::Ip, "192.0.2.1")),
        user_agent: Some(key.seal(alice, Field::UserAgent, ua)),
    };
    let perms = |raw: &[&str]| PermissionSet::parse(raw.iter().copied()).unwrap();
    let mut history = History::default();
    history
        .user(
            0,
            alice,
            registered(alice, key.seal(alice, Field::Email, "alice@example.com"), 0),
        )
        .user(0, bob, registered(bob, "bob@example.com".into(), 0))
        .user(
            1,
            alice,
            UserEvent::UserLoggedIn {
                session_id: s1,
                factors: vec!["pwd".into()],
                at: t(1),
            },
        )
        .session(1, s1, started(s1, alice, device("agent-one"), 1))
        .session(1, bobs, started(bobs, bob, Device::default(), 1))
        .org(
            2,
            org,
            OrganizationEvent::OrganizationCreated {
                organization_id: org,
                slug: OrganizationSlug::parse("acme").unwrap(),
                name: OrganizationName::parse("Acme").unwrap(),
                owner: bob,
                at: t(2),
            },
        )
        .org(
            2,
            other_org,
            OrganizationEvent::OrganizationCreated {
                organization_id: other_org,
                slug: OrganizationSlug::parse("elsewhere").unwrap(),
                name: OrganizationName::parse("Elsewhere").unwrap(),
                owner: bob,
                at: t(2),
            },
        )
        .role(
            2,
            role,
            RoleEvent::RoleDefined {
                role_id: role,
                organization_id: org,
                name: RoleName::parse("billing").unwrap(),
                permissions: perms(&["invoices:*"]),
                at: t(2),
            },
        )
        .org(
            2,
            org,
            OrganizationEvent::MemberAdded {
                user_id: alice,
                roles: BTreeSet::from([
                    RoleRef::BuiltIn(BuiltInRole::Member),
                    RoleRef::Custom(role),
                ]),
                at: t(2),
            },
        )
        .role(
            3,
            role,
            RoleEvent::PermissionUpdated {
                permissions: perms(&["invoices:read"]),
                added: perms(&["invoices:read"]),
                removed: perms(&["invoices:*"]),
                at: t(3),
            },
        )
        .session(4, s1, SessionEvent::UserLoggedOut { at: t(4) })
        .session(5, s2, started(s2, alice, device("agent-two"), 5))
        .user(
            6,
            alice,
            UserEvent::UserSuspended {
                reason: "fraud".into(),
                at: t(6),
            },
        );
    history
}

#[tokio::test]
async fn time_travel_on_sqlite_answers_as_on_postgres() {
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let key = DataKey::generate();
    let history = alice_history(alice, bob, &key);
    let db = TempSqlite::open().await;
    store_data_key_sqlite(&db, alice, &key).await;
    // In several transactions, as the commands would write them.
    for chunk in history.events.chunks(4) {
        db.append(chunk).await;
    }
    let sqlite = db.store();

    with_postgres(|pool| async move {
        for chunk in history.events.chunks(4) {
            append_postgres(&pool, chunk).await;
        }
        sqlx::query("INSERT INTO user_data_keys (owner_id, key) VALUES ($1, $2)")
            .bind(alice)
            .bind(&key.expose_bytes()[..])
            .execute(&pool)
            .await
            .unwrap();
        let postgres = Database::from_pool(pool.clone());

        let loaded = |events: Vec<StoredEvent>| events.iter().map(identity).collect::<Vec<_>>();
        let on_sqlite = loaded(load_account_events(&sqlite, alice).await.unwrap());
        let on_postgres = loaded(load_account_events(&postgres, alice).await.unwrap());
        assert_eq!(on_sqlite, on_postgres);
        // Everything but Bob's own registration and session and the other
        // organization.
        assert_eq!(on_sqlite.len(), history.events.len() - 3);

        for minute in -1..=7 {
            let a = account_as_of(&sqlite, &wrapping(), alice, t(minute))
                .await
                .unwrap();
            let b = account_as_of(&postgres, &wrapping(), alice, t(minute))
                .await
                .unwrap();
            assert_eq!(a, b, "at minute {minute}");
        }
        let joined = account_as_of(&sqlite, &wrapping(), alice, t(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(joined.email.as_deref(), Some("alice@example.com"));
        assert_eq!(joined.sessions.len(), 1);
        assert_eq!(joined.sessions[0].user_agent.as_deref(), Some("agent-two"));
        assert_eq!(joined.sessions[0].ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(joined.organizations[0].slug, "acme");
        assert!(joined.organizations[0]
            .permissions
            .contains(&"invoices:read".to_owned()));
        assert_eq!(
            account_as_of(&sqlite, &wrapping(), alice, t(6))
                .await
                .unwrap()
                .unwrap()
                .status,
            AccountStatus::Suspended
        );
        assert_eq!(
            account_as_of(&sqlite, &wrapping(), Uuid::new_v4(), t(6))
                .await
                .unwrap(),
            None
        );

        // Erased on both: personal fields read as erased on both, even in the past.
        erase_data_key_sqlite(&db, alice).await;
        sqlx::query("UPDATE user_data_keys SET key = NULL, erased_at = now() WHERE owner_id = $1")
            .bind(alice)
            .execute(&pool)
            .await
            .unwrap();
        let a = account_as_of(&sqlite, &wrapping(), alice, t(5))
            .await
            .unwrap()
            .unwrap();
        let b = account_as_of(&postgres, &wrapping(), alice, t(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.email.as_deref(), Some(ERASED));

        // The feed and the signer agree too: same order of the same events,
        // and each back end's signature covers its own log.
        let sqlite_feed = EventFeed::new(sqlite.clone());
        let postgres_feed = EventFeed::new(postgres.clone());
        let order = |events: Vec<StoredEvent>| events.iter().map(identity).collect::<Vec<_>>();
        let on_sqlite = order(sqlite_feed.read_after(Position::START, 100).await.unwrap());
        // PostgreSQL's feed shows a transaction's events once every older
        // transaction of the cluster has ended, and other databases' tests may
        // hold one open for a moment: wait until it shows as many events.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let on_postgres = loop {
            let events = order(
                postgres_feed
                    .read_after(Position::START, 100)
                    .await
                    .unwrap(),
            );
            if events.len() >= on_sqlite.len() || std::time::Instant::now() > deadline {
                break events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(on_sqlite, on_postgres);
        let audit = audit_key();
        for (store, feed) in [(&sqlite, &sqlite_feed), (&postgres, &postgres_feed)] {
            let signed = ChainSigner::new(store.clone(), audit.clone())
                .sign_now()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(signed.state, log_state(feed).await, "{}", store.kind());
            assert_eq!(
                last_signed_by(store, audit.public_key().id())
                    .await
                    .unwrap(),
                Some(signed)
            );
        }
    })
    .await;
}

/// A wrapping key: the keys these tests store are in the form written before
/// wrapping existed (32 bytes), which every wrapping reads as it is.
fn wrapping() -> std::sync::Arc<keyledger_domain::DataKeyWrapping> {
    std::sync::Arc::new(keyledger_domain::DataKeyWrapping::new(
        keyledger_domain::DataKeyWrappingKey::generate(),
        Vec::new(),
    ))
}
