//! Drives the read-model projector and lets writers wait for their own writes.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::feed::{EventFeed, FeedError, FeedSignal, Position, StoredEvent};
use crate::personal::PersonalDataOpener;
use crate::read_models::{ReadModels, CHECKPOINT};
use crate::read_models_sqlite::SqliteReadModels;
use crate::store::ReadStore;

const BATCH: i64 = 500;

/// Makes sure only one process writes a given projection.
///
/// - PostgreSQL: a session-level advisory lock; the other nodes stand by and take
///   over when the leader goes away.
/// - Embedded SQLite: held by construction. The server owns its data directory
///   through `server.lock` (decision 0011, #34), so no other server can follow
///   the same log. The one other contender, `keyledger-replay rebuild --switch`,
///   gets its handover on this back end (#35) together with the SQLite replay
///   tools; until then it runs on PostgreSQL only.
pub(crate) struct Leadership {
    conn: Option<PgConnection>,
    key: String,
    /// When the lock's connection last answered. Re-checked at most every
    /// [`Leadership::RECHECK`], not on every wake-up: under load that ping was a
    /// round trip per commit. Two leaders for a moment are harmless (every
    /// follower's writes are idempotent and JetStream drops duplicate ids).
    verified_at: Option<std::time::Instant>,
}

impl Leadership {
    pub(crate) fn new(key: &str) -> Self {
        Self {
            conn: None,
            key: lock_key(key),
            verified_at: None,
        }
    }

    const RECHECK: Duration = Duration::from_secs(1);

    /// True while this process holds the lock; tries to take it when not.
    pub(crate) async fn held(&mut self, store: &ReadStore) -> bool {
        match store {
            ReadStore::Postgres(pool) => self.held_postgres(pool).await,
            ReadStore::Sqlite(_) => true,
        }
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
    }
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
}

impl Consistency {
    pub fn projected(&self) -> Position {
        *self.progress.borrow()
    }

    /// Waits until the read models include the given event (by its aggregate and
    /// sequence). Returns false if that did not happen within `timeout`; the write
    /// is committed either way.
    pub async fn wait_for(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        timeout: Duration,
    ) -> Result<bool, FeedError> {
        let Some(target) = self
            .feed
            .position_of(aggregate_type, aggregate_id, sequence)
            .await?
        else {
            return Ok(false);
        };
        let mut progress = self.progress.clone();
        let reached = tokio::time::timeout(timeout, progress.wait_for(|p| *p >= target)).await;
        Ok(matches!(reached, Ok(Ok(_))))
    }
}

/// Runs the read-model projector until aborted.
pub struct ProjectionRunner;

impl ProjectionRunner {
    /// Follows the feed into the read models of `store`'s back end.
    pub fn spawn(store: ReadStore, signal: FeedSignal) -> (Consistency, JoinHandle<()>) {
        let (tx, rx) = watch::channel(Position::START);
        let feed = EventFeed::new(store.clone());
        let consistency = Consistency {
            feed: feed.clone(),
            progress: rx,
        };
        let handle = tokio::spawn(run(store, feed, signal, tx));
        (consistency, handle)
    }
}

async fn run(
    store: ReadStore,
    feed: EventFeed,
    mut signal: FeedSignal,
    progress: watch::Sender<Position>,
) {
    let mut leadership = Leadership::new(CHECKPOINT);
    let mut opener = PersonalDataOpener::new(&store);
    let mut backoff = Duration::from_millis(100);
    loop {
        if !leadership.held(&store).await {
            // Stand-by: follow the leader's checkpoint so waits still resolve.
            if let Ok(p) = store.checkpoint(CHECKPOINT).await {
                progress.send_if_modified(|cur| std::mem::replace(cur, p) != p);
            }
            signal.wait().await;
            continue;
        }
        match catch_up(&store, &feed, &progress, &mut opener).await {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                signal.wait().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "read-model projector failed; retrying");
                metrics::counter!("keyledger_projection_errors_total").increment(1);
                leadership.lost();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn catch_up(
    store: &ReadStore,
    feed: &EventFeed,
    progress: &watch::Sender<Position>,
    opener: &mut PersonalDataOpener,
) -> Result<(), FeedError> {
    let mut position = store.checkpoint(CHECKPOINT).await?;
    progress.send_if_modified(|cur| std::mem::replace(cur, position) != position);
    loop {
        let mut batch = feed.read_after(position, BATCH).await?;
        opener.open(&mut batch).await?;
        let Some(last) = apply_batch(store, &batch).await? else {
            return Ok(());
        };
        position = last;
        metrics::counter!("keyledger_projected_events_total").increment(batch.len() as u64);
        progress.send_replace(position);
        if (batch.len() as i64) < BATCH {
            return Ok(());
        }
    }
}

/// Applies a batch to the read models and moves their checkpoint, in one
/// transaction of the store's back end.
async fn apply_batch(
    store: &ReadStore,
    batch: &[StoredEvent],
) -> Result<Option<Position>, FeedError> {
    match store {
        ReadStore::Postgres(pool) => ReadModels::apply_batch(pool, batch).await,
        ReadStore::Sqlite(store) => SqliteReadModels::apply_batch(&store.writer, batch).await,
    }
}
