//! The read-model projector (a [`Transactional`] follower of the node's feed
//! reader), leadership among nodes, and writers waiting for their own writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keyledger_domain::DataKeyWrapping;
use keyledger_storage::{Connection, Database, Engine};
use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoints::checkpoint_on;
use crate::feed::{EventFeed, FeedError, FeedSignal, Position, StoredEvent};
use crate::follower::{FeedReader, RecentEvents, Step, Transactional};
use crate::read_models::{ReadModels, Target, CHECKPOINT};
use crate::read_models_sqlite::SqliteReadModels;

#[cfg(test)]
const BATCH: i64 = 500;

/// Makes sure only one process writes a given projection.
///
/// - PostgreSQL: a session-level advisory lock; the other nodes stand by and take
///   over when the leader goes away.
/// - Embedded SQLite: held by construction. The server owns its data directory
///   through `server.lock`, so no other server can follow the same log. The one
///   other contender, `keyledger-replay rebuild --switch`, asks for a handover
///   with a row in `projection_handover`: while a fresh row names the projection,
///   the leader stands by (see [`handover_requested`]).
pub(crate) struct Leadership {
    conn: Option<PgConnection>,
    key: String,
    /// The projection's name, as a handover row names it (embedded store).
    name: String,
    /// When the lock's connection last answered (or, on the embedded store, when
    /// no handover was requested). Re-checked at most every
    /// [`Leadership::RECHECK`], not on every wake-up: under load that ping was a
    /// round trip per commit. Two leaders for a moment are harmless (every
    /// follower's writes are idempotent and JetStream drops duplicate ids).
    verified_at: Option<Instant>,
    /// Embedded store: a handover was requested at the last check. While it is,
    /// every wake-up checks again (a cheap read), so the projector resumes as soon
    /// as the switch is done.
    standing_by: bool,
    /// What this process reports about its leadership (`/health`, metrics).
    flag: LeaderFlag,
}

/// Whether this process leads one follower (holds its lock), as last checked.
/// Operators and tests read it to tell which node does the work: `/health`
/// reports it and a gauge (`keyledger_leader{role}`) exports it.
#[derive(Clone, Debug)]
pub struct LeaderFlag {
    leads: Arc<AtomicBool>,
    role: &'static str,
}

impl LeaderFlag {
    /// `role` names the follower in the metric's label.
    pub fn new(role: &'static str) -> Self {
        metrics::gauge!("keyledger_leader", "role" => role).set(0.0);
        Self {
            leads: Arc::new(AtomicBool::new(false)),
            role,
        }
    }

    pub fn leads(&self) -> bool {
        self.leads.load(Ordering::Relaxed)
    }

    /// Records a check's outcome; touches the gauge only when it changes.
    fn set(&self, leads: bool) {
        if self.leads.swap(leads, Ordering::Relaxed) != leads {
            metrics::gauge!("keyledger_leader", "role" => self.role).set(if leads {
                1.0
            } else {
                0.0
            });
        }
    }
}

impl Leadership {
    pub(crate) fn new(key: &str, flag: LeaderFlag) -> Self {
        Self {
            conn: None,
            key: lock_key(key),
            name: key.to_owned(),
            verified_at: None,
            standing_by: false,
            flag,
        }
    }

    pub(crate) const RECHECK: Duration = Duration::from_secs(1);

    /// True while this process holds the lock; tries to take it when not.
    pub(crate) async fn held(&mut self, db: &Database) -> bool {
        let held = match db.engine() {
            Engine::Postgres(pool) => self.held_postgres(pool).await,
            Engine::Sqlite(embedded) => self.held_sqlite(embedded.readers()).await,
        };
        self.flag.set(held);
        held
    }

    /// The embedded store: held unless a fresh handover row names this projection.
    /// The check is only a hint that saves work: what makes the handover exact is
    /// the same check inside each batch's write transaction (see
    /// [`sqlite_batch_is_ours`]).
    async fn held_sqlite(&mut self, readers: &SqlitePool) -> bool {
        if !self.standing_by
            && self
                .verified_at
                .is_some_and(|at| at.elapsed() < Self::RECHECK)
        {
            return true;
        }
        let mut conn = match readers.acquire().await {
            Ok(conn) => conn,
            // The batch's own transaction will fail too and report it.
            Err(_) => return true,
        };
        match handover_requested(&mut conn, &self.name, Utc::now()).await {
            Ok(Some(requested_at)) => {
                if !self.standing_by {
                    tracing::info!(
                        projection = %self.name, %requested_at,
                        "standing by: keyledger-replay rebuild --switch takes the read models over"
                    );
                }
                self.stand_by();
                false
            }
            Ok(None) | Err(_) => {
                if self.standing_by {
                    tracing::info!(projection = %self.name, "handover over; resuming");
                }
                self.standing_by = false;
                self.verified_at = Some(Instant::now());
                true
            }
        }
    }

    /// Stops applying batches until the next check finds no handover request.
    pub(crate) fn stand_by(&mut self) {
        self.standing_by = true;
        self.verified_at = None;
        self.flag.set(false);
    }

    async fn held_postgres(&mut self, pool: &PgPool) -> bool {
        if let Some(conn) = self.conn.as_mut() {
            if self
                .verified_at
                .is_some_and(|at| at.elapsed() < Self::RECHECK)
            {
                return true;
            }
            // The re-check doubles as a handover: `keyledger-replay rebuild --switch`
            // queues for this lock, and a leader that sees someone waiting lets go
            // between two batches (never inside one) and stands by until the waiter
            // releases it again.
            match someone_waits(conn, &self.key).await {
                Ok(false) => {
                    self.verified_at = Some(std::time::Instant::now());
                    return true;
                }
                Ok(true) => {
                    tracing::info!(key = %self.key, "handing the projection lock over");
                    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
                        .bind(&self.key)
                        .execute(&mut *conn)
                        .await;
                    self.lost();
                    return false;
                }
                Err(_) => self.lost(),
            }
        }
        let Ok(mut conn) = pool.acquire().await else {
            return false;
        };
        let got: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(&self.key)
            .fetch_one(&mut *conn)
            .await;
        if matches!(got, Ok(true)) {
            // The lock lives as long as this connection. Detached from the pool, the
            // connection closes when dropped (task aborted, leadership lost), which
            // releases the lock at once instead of parking it in the pool.
            self.conn = Some(conn.detach());
            self.verified_at = Some(std::time::Instant::now());
            true
        } else {
            false
        }
    }

    pub(crate) fn lost(&mut self) {
        self.conn = None;
        self.verified_at = None;
        self.flag.set(false);
    }
}

/// How long a handover request stays valid without being refreshed. The switching
/// rebuild refreshes it with every batch it applies while it holds the read
/// models (a fraction of a second each); a request older than this belongs to a
/// tool that died half-way, and the projector takes the read models back.
pub const HANDOVER_STALE_AFTER: Duration = Duration::from_secs(30);

/// The embedded store's handover request for `projection`: when
/// `keyledger-replay rebuild --switch` asked for it, unless the request is stale
/// (see [`HANDOVER_STALE_AFTER`]). Public for the tool, which writes the row.
pub async fn handover_requested(
    conn: &mut SqliteConnection,
    projection: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT requested_at FROM main.projection_handover
          WHERE name = $1 AND requested_at > $2",
    )
    .bind(projection)
    .bind(handover_stale_before(now))
    .fetch_optional(conn)
    .await
}

/// Requests older than this are abandoned.
fn handover_stale_before(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::from_std(HANDOVER_STALE_AFTER).unwrap_or(chrono::Duration::MAX)
}

/// The advisory-lock key of a projection, taken as `pg_advisory_lock(hashtext(key))`.
/// Public for tools that take a projection over (`keyledger-replay rebuild
/// --switch` queues for the read-model projector's).
pub fn lock_key(name: &str) -> String {
    format!("keyledger:{name}")
}

/// True when another session is queued for the advisory lock this connection
/// holds. A bigint advisory key shows in `pg_locks` as its high half (`classid`)
/// and low half (`objid`), with `objsubid` 1.
async fn someone_waits(conn: &mut PgConnection, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (
            SELECT 1 FROM pg_locks l, (SELECT hashtext($1)::bigint AS k) key
             WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = ((key.k >> 32) & 4294967295)
               AND l.objid::bigint = (key.k & 4294967295))",
    )
    .bind(key)
    .fetch_one(conn)
    .await
}

/// The read-model projector's progress, for read-your-writes.
#[derive(Clone)]
pub struct Consistency {
    feed: EventFeed,
    progress: watch::Receiver<Position>,
    leader: LeaderFlag,
    recent: Arc<RecentEvents>,
}

impl Consistency {
    pub fn projected(&self) -> Position {
        *self.progress.borrow()
    }

    /// Whether this process's projector holds the projection's lock.
    pub fn leads(&self) -> bool {
        self.leader.leads()
    }

    /// How many events of the log the read models have not applied yet, as this
    /// node sees them (a stand-by follows the leader's checkpoint). One query:
    /// for scrapes, not for hot paths.
    pub async fn lag(&self) -> Result<i64, FeedError> {
        let head = self.feed.head().await?;
        Ok((head.global_position - self.projected().global_position).max(0))
    }

    /// Waits until the read models include the given event (by its aggregate and
    /// sequence). Returns false if that did not happen within `timeout`; the write
    /// is committed either way. A write just committed is found among the events
    /// this node's feed reader read, without a query.
    pub async fn wait_for(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        timeout: Duration,
    ) -> Result<bool, FeedError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(target) = self
            .recent
            .position_of(&self.feed, aggregate_type, aggregate_id, sequence)
            .await?
        else {
            return Ok(false);
        };
        let mut progress = self.progress.clone();
        let reached = tokio::time::timeout_at(deadline, progress.wait_for(|p| *p >= target)).await;
        Ok(matches!(reached, Ok(Ok(_))))
    }
}

/// The read models and the audit trail as a [`Transactional`] follower.
pub struct ReadModelsFollower;

impl Transactional for ReadModelsFollower {
    fn apply<'a>(&'a mut self, tx: Connection<'a>, events: &'a [StoredEvent]) -> Step<'a> {
        Box::pin(ReadModels::apply_to(Target::live(tx), events))
    }

    fn committed<'a>(
        &'a mut self,
        db: &'a Database,
        events: &'a [StoredEvent],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if !events
                .iter()
                .any(|e| e.aggregate_type == "user" && e.event_type == "UserErased")
            {
                return;
            }
            // Before the progress moves: whoever waits for the erasure to reach
            // the read models (the erasing request) finds the files scrubbed too.
            if let Err(e) = db.scrub(ERASED_READ_MODELS).await {
                tracing::error!(
                    error = %e,
                    "erased data could not be scrubbed from the read models' files"
                );
                metrics::counter!("keyledger_erasure_scrub_failures_total").increment(1);
            }
        })
    }
}

/// The read-model tables an erasure scrubs in PostgreSQL (those holding clear
/// personal values). Deleted rows only mark their bytes as free: PostgreSQL
/// keeps them in the pages even after a plain `VACUUM`, so `VACUUM (FULL)`
/// rewrites these tables into new files; SQLite zeroes freed content but keeps
/// the old pages in its write-ahead log until a `TRUNCATE` checkpoint (see
/// [`Database::scrub`]). The write side's tables (claims, data keys) are
/// scrubbed by the erasure itself.
const ERASED_READ_MODELS: &str = "users, sessions, audit_trail";

/// Creates the read-model tables (and the projection checkpoints) where they
/// are missing; the server runs it at start-up.
pub async fn install_read_models(db: &Database) -> Result<(), sqlx::Error> {
    match db.engine() {
        Engine::Postgres(pool) => ReadModels::install_in(pool).await,
        Engine::Sqlite(embedded) => SqliteReadModels::install(embedded.writer()).await,
    }
}

/// The read-model projector on a node's feed reader.
pub struct ProjectionRunner;

impl ProjectionRunner {
    /// Adds the read models to `reader` (the node's one feed reader) and returns
    /// their progress, for read-your-writes.
    pub fn join(reader: &mut FeedReader) -> Consistency {
        let leader = LeaderFlag::new("projector");
        let progress = reader.transactional(Box::new(ReadModelsFollower), &leader);
        Consistency {
            feed: reader.feed().clone(),
            progress,
            leader,
            recent: reader.recent(),
        }
    }

    /// A feed reader that follows the feed into the read models of `db` and
    /// nothing else (tools and tests). `wrapping` unwraps the data keys that
    /// open personal fields.
    pub fn spawn(
        db: Database,
        signal: FeedSignal,
        wrapping: Arc<DataKeyWrapping>,
    ) -> (Consistency, JoinHandle<()>) {
        let mut reader = FeedReader::new(db, wrapping);
        let consistency = Self::join(&mut reader);
        (consistency, reader.spawn(signal))
    }
}

/// What became of a batch.
pub(crate) enum Applied {
    /// It was empty.
    #[cfg_attr(not(test), allow(dead_code))]
    Nothing,
    /// Applied; the read models now stand at this position.
    UpTo(Position),
    /// Not applied: a switching rebuild holds the read models.
    HandedOver,
    /// Not applied: the checkpoint is no longer where the batch was read from.
    Moved(Position),
}

/// The embedded store: whether a batch read after `from` may still be applied
/// in `tx` (a `BEGIN IMMEDIATE`), and if not, why. Writes are serialised, so these
/// checks cannot be overtaken: once the switching rebuild's handover row is
/// committed no batch commits after it, and a batch read before a switch finds the
/// checkpoint moved and is read again for the new tables. A stale request (its
/// tool died) is deleted here, in the same transaction.
pub(crate) async fn sqlite_batch_is_ours(
    tx: &mut SqliteConnection,
    from: Position,
) -> Result<Option<Applied>, FeedError> {
    // One read per batch: whether a request exists and, if so, whether it is
    // fresh. The (rare) stale one is deleted only when there is one.
    let stale_before = handover_stale_before(Utc::now());
    let fresh: Option<bool> = sqlx::query_scalar(
        "SELECT requested_at > $2 FROM main.projection_handover WHERE name = $1",
    )
    .bind(CHECKPOINT)
    .bind(stale_before)
    .fetch_optional(&mut *tx)
    .await?;
    match fresh {
        None => {}
        Some(true) => return Ok(Some(Applied::HandedOver)),
        Some(false) => {
            let abandoned = sqlx::query(
                "DELETE FROM main.projection_handover WHERE name = $1 AND requested_at <= $2",
            )
            .bind(CHECKPOINT)
            .bind(stale_before)
            .execute(&mut *tx)
            .await?;
            if abandoned.rows_affected() > 0 {
                tracing::warn!(
                    "a rebuild --switch asked for the read models and then gave no sign of \
                     life for {HANDOVER_STALE_AFTER:?}; its request is dropped and projecting \
                     resumes"
                );
            }
        }
    }
    let current = checkpoint_on(Connection::Sqlite(tx), CHECKPOINT).await?;
    if current != from {
        return Ok(Some(Applied::Moved(current)));
    }
    Ok(None)
}

/// Applies a batch read after `from` to the embedded store's read models and
/// moves their checkpoint, in one `BEGIN IMMEDIATE`, unless
/// [`sqlite_batch_is_ours`] says otherwise.
#[cfg(test)]
async fn apply_sqlite_batch(
    writer: &SqlitePool,
    from: Position,
    batch: &[StoredEvent],
) -> Result<Applied, FeedError> {
    let Some(last) = batch.last().map(|e| e.position) else {
        return Ok(Applied::Nothing);
    };
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    if let Some(not_ours) = sqlite_batch_is_ours(&mut tx, from).await? {
        tx.rollback().await?;
        return Ok(not_ours);
    }
    SqliteReadModels::apply_all(&mut tx, batch).await?;
    crate::checkpoints::save_checkpoint_on(Connection::Sqlite(&mut tx), CHECKPOINT, last).await?;
    tx.commit().await?;
    Ok(Applied::UpTo(last))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use cqrs_es::DomainEvent;
    use keyledger_domain::values::PasswordHash;
    use keyledger_domain::{DataKey, Field, UserEvent};
    use keyledger_storage::EmbeddedDatabase;
    use uuid::Uuid;

    use super::*;
    use crate::checkpoints::checkpoint;

    /// A migrated embedded database of the test's own, removed on drop.
    struct Temp {
        dir: PathBuf,
        db: Database,
    }

    impl Temp {
        async fn open() -> Self {
            let dir = keyledger_storage::testing::temp_data_dir("runner");
            let settings = keyledger_storage::testing::embedded_settings(&dir, 2);
            let embedded = EmbeddedDatabase::open_unlocked(&settings).await.unwrap();
            Self {
                dir,
                db: Database::from_embedded(embedded),
            }
        }

        fn writer(&self) -> &SqlitePool {
            self.db.embedded().unwrap().writer()
        }

        fn readers(&self) -> &SqlitePool {
            self.db.embedded().unwrap().readers()
        }

        /// Registers an account (its data key, then its sealed `UserRegistered`).
        async fn register(&self, position: i64) {
            let user_id = Uuid::new_v4();
            let key = DataKey::generate();
            let now = Utc::now();
            sqlx::query(
                "INSERT INTO user_data_keys (owner_id, key, created_at) VALUES ($1, $2, $3)",
            )
            .bind(user_id.to_string())
            .bind(&key.expose_bytes()[..])
            .bind(now)
            .execute(self.writer())
            .await
            .unwrap();
            let event = UserEvent::UserRegistered {
                user_id,
                email: key.seal(user_id, Field::Email, "ada@example.com"),
                display_name: None,
                password_hash: Some(keyledger_domain::SealedPasswordHash::clear(
                    PasswordHash::new("$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA".into()),
                )),
                registered_at: now,
            };
            let metadata = serde_json::json!({"actor": "anonymous", "occurred_at": now});
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, global_position, tx_id,
                                     recorded_at, chain_hash)
                 VALUES ('user', $1, 1, $2, $3, $4, $5, $6, 0, $7, $8)",
            )
            .bind(user_id.to_string())
            .bind(event.event_type())
            .bind(event.event_version())
            .bind(serde_json::to_string(&event).unwrap())
            .bind(metadata.to_string())
            .bind(position)
            .bind(now.timestamp_micros())
            .bind(&[0u8; 32][..])
            .execute(self.writer())
            .await
            .unwrap();
        }

        async fn request_handover(&self, requested_at: DateTime<Utc>) {
            sqlx::query("INSERT INTO projection_handover (name, requested_at) VALUES ($1, $2)")
                .bind(CHECKPOINT)
                .bind(requested_at)
                .execute(self.writer())
                .await
                .unwrap();
        }

        async fn handover_rows(&self) -> i64 {
            sqlx::query_scalar("SELECT count(*) FROM projection_handover")
                .fetch_one(self.readers())
                .await
                .unwrap()
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Waits (up to 5 s) until the projector reaches `position`.
    async fn reaches(consistency: &Consistency, position: i64) -> bool {
        for _ in 0..100 {
            if consistency.projected().global_position >= position {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn the_projector_stands_by_while_a_switch_holds_the_read_models() {
        let temp = Temp::open().await;
        let db = temp.db.clone();
        install_read_models(&db).await.unwrap();
        let (signal, signal_task) = FeedSignal::start(&db);
        let (consistency, runner) = ProjectionRunner::spawn(
            db.clone(),
            signal,
            Arc::new(DataKeyWrapping::new(
                keyledger_domain::DataKeyWrappingKey::generate(),
                Vec::new(),
            )),
        );

        temp.register(1).await;
        assert!(reaches(&consistency, 1).await, "projects without a request");

        // A fresh request: no batch is applied while it stands (the check inside
        // the batch's transaction makes this exact, whatever the re-check timing).
        temp.request_handover(Utc::now()).await;
        temp.register(2).await;
        tokio::time::sleep(Leadership::RECHECK * 2).await;
        assert_eq!(
            checkpoint(&db, CHECKPOINT).await.unwrap().global_position,
            1
        );

        // The switch is done (its transaction deletes the row): projecting resumes.
        sqlx::query("DELETE FROM projection_handover")
            .execute(temp.writer())
            .await
            .unwrap();
        assert!(
            reaches(&consistency, 2).await,
            "resumes once the row is gone"
        );

        // A request nobody refreshed for longer than the limit (its tool died) is
        // dropped, and projecting goes on.
        temp.request_handover(Utc::now() - chrono::Duration::seconds(60))
            .await;
        temp.register(3).await;
        assert!(reaches(&consistency, 3).await, "a stale request is ignored");
        assert_eq!(temp.handover_rows().await, 0, "and deleted");
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(temp.readers())
            .await
            .unwrap();
        assert_eq!(users, 3);
        runner.abort();
        signal_task.abort();
    }

    #[tokio::test]
    async fn a_batch_read_before_a_switch_is_read_again_for_the_new_tables() {
        let temp = Temp::open().await;
        let db = temp.db.clone();
        install_read_models(&db).await.unwrap();
        temp.register(1).await;
        temp.register(2).await;
        let feed = EventFeed::new(db.clone());
        let stale = feed.read_after(Position::START, BATCH).await.unwrap();
        // Meanwhile a switch put tables in place that already hold event 1.
        let mut tx = temp.db.embedded().unwrap().begin_write().await.unwrap();
        SqliteReadModels::apply_all(&mut tx, &stale[..1])
            .await
            .unwrap();
        crate::checkpoints::save_checkpoint_on(
            Connection::Sqlite(&mut tx),
            CHECKPOINT,
            stale[0].position,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();

        let applied = apply_sqlite_batch(temp.writer(), Position::START, &stale)
            .await
            .unwrap();
        assert!(
            matches!(applied, Applied::Moved(p) if p == stale[0].position),
            "the checkpoint moved: nothing is applied"
        );
        temp.request_handover(Utc::now()).await;
        let applied = apply_sqlite_batch(temp.writer(), stale[0].position, &stale[1..])
            .await
            .unwrap();
        assert!(matches!(applied, Applied::HandedOver));
        assert_eq!(
            checkpoint(&db, CHECKPOINT).await.unwrap(),
            stale[0].position
        );
    }
}
