//! Users, sessions and the audit trail in PostgreSQL or SQLite (organizations,
//! roles and service accounts reach the audit trail here and are served from
//! [`crate::access::AccessView`]).
//!
//! Guarantee: checkpointed and exactly-once. Each batch of feed events is applied
//! and the checkpoint advanced in one transaction, so after a crash the projector
//! resumes exactly where the last committed batch ended. Every write is also
//! idempotent (guarded by the aggregate sequence), so a rebuild or an overlap is
//! harmless. The same code projects into a fresh schema for `keyledger-replay rebuild`.
//!
//! One implementation for both back ends: a batch is folded in memory onto the
//! rows it touches ([`rules`], and each table's own rules beside its columns in
//! [`users`], [`sessions`], [`audit`]), then written back in a constant number
//! of statements per batch, each one text for both back ends ([`table`]). Where
//! the mechanisms genuinely differ they sit side by side: `COPY` for rows a
//! rebuild knows to be new ([`table::write_new`]), the erasure's `details`
//! rewrite ([`audit::forget_erased`]), and where a rebuild's scratch tables are
//! ([`Target`]: a schema on PostgreSQL's `search_path`, [`SqliteTables`] on
//! SQLite).
//!
//! A new column: its table's module, plus `sql/read_models.sql` (PostgreSQL,
//! `ADD COLUMN IF NOT EXISTS`) and `sql/read_models.sqlite.sql` (SQLite; its
//! installer adds a column missing from an existing table).

mod audit;
mod fresh;
mod rules;
mod sessions;
mod table;
pub mod tables;
#[cfg(test)]
mod tests;
mod users;

use keyledger_domain::{SessionEvent, UserEvent};
use keyledger_storage::PerBackend;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::feed::{FeedError, Position, StoredEvent};
use crate::integration::DomainPayload;
use audit::AuditRow;
use fresh::Rows;
use rules::organization_subject;
use sessions::SessionRow;
use users::UserRow;

pub use fresh::FreshReadModels;
pub use table::{copy_escape, Target};
pub use tables::{InvalidSqliteName, SqliteTables};
pub use users::confirmed_second_factor_kinds;

/// The DDL of every read model (idempotent).
pub const DDL: &str = include_str!("../../sql/read_models.sql");

/// Checkpoint name of the read-model projector.
pub const CHECKPOINT: &str = "read_models";

pub struct ReadModels;

impl ReadModels {
    /// Creates the read-model tables in the connection's current schema.
    pub async fn install(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(DDL).execute(conn).await?;
        Ok(())
    }

    pub async fn install_in(pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut conn = pool.acquire().await?;
        Self::install(&mut conn).await
    }

    /// See [`crate::checkpoints::checkpoint_on`].
    pub async fn checkpoint(conn: &mut PgConnection, name: &str) -> Result<Position, sqlx::Error> {
        crate::checkpoints::checkpoint_on(keyledger_storage::Connection::Postgres(conn), name).await
    }

    /// See [`crate::checkpoints::save_checkpoint_on`].
    pub async fn save_checkpoint(
        conn: &mut PgConnection,
        name: &str,
        position: Position,
    ) -> Result<(), sqlx::Error> {
        let conn = keyledger_storage::Connection::Postgres(conn);
        crate::checkpoints::save_checkpoint_on(conn, name, position).await
    }

    /// Applies a batch and moves the checkpoint, atomically.
    pub async fn apply_batch(
        pool: &PgPool,
        events: &[StoredEvent],
    ) -> Result<Option<Position>, FeedError> {
        let Some(last) = events.last() else {
            return Ok(None);
        };
        let mut tx = pool.begin().await?;
        Self::apply_all(&mut tx, events).await?;
        Self::save_checkpoint(&mut tx, CHECKPOINT, last.position).await?;
        tx.commit().await?;
        Ok(Some(last.position))
    }

    /// Projects one event into users, sessions and the audit trail.
    pub async fn apply(conn: &mut PgConnection, event: &StoredEvent) -> Result<(), FeedError> {
        Self::apply_all(conn, std::slice::from_ref(event)).await
    }

    /// [`Self::apply_to`] the tables a PostgreSQL connection's `search_path`
    /// finds.
    pub async fn apply_all(
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        Self::apply_to(Target::live(PerBackend::Postgres(conn)), events).await
    }

    /// Projects events in order, in a constant number of statements per batch
    /// whatever its size: round trips are what limits a projector (and a rebuild).
    /// The rows the batch touches are read in one query per table, every event is
    /// folded onto them in memory with exactly the rules a per-event `UPDATE ...
    /// WHERE version < $seq` would apply, and the changed rows are written back in
    /// one upsert per table, guarded by the same version check (so an overlap or a
    /// second projector for a moment is harmless). Audit rows go in one insert.
    /// On PostgreSQL the three are one statement.
    pub async fn apply_to(mut target: Target<'_>, events: &[StoredEvent]) -> Result<(), FeedError> {
        if events.is_empty() {
            return Ok(());
        }
        let target = &mut target;
        let mut users = Rows::<UserRow>::default();
        let mut sessions = Rows::<SessionRow>::default();
        let folded = fold(target, events, &mut users, &mut sessions, 0).await?;
        table::upsert_three(target, &users.changed(), &sessions.changed(), &folded.audit).await?;
        forget_erased(target, &folded.erased).await
    }

    /// [`Self::apply_all`] for a schema being filled from nothing by one writer
    /// that never sees an event twice (`keyledger-replay rebuild`): new rows and
    /// audit rows arrive by `COPY`, which is several times cheaper than the
    /// idempotent `INSERT ... ON CONFLICT` but fails on a row that is already
    /// there. Every row is written by the time this returns (see
    /// [`FreshReadModels`] to keep rows in memory across batches).
    pub async fn apply_all_fresh(
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        FreshReadModels::new(0).apply(conn, events).await
    }
}

async fn forget_erased(target: &mut Target<'_>, erased: &[Uuid]) -> Result<(), FeedError> {
    Ok(audit::forget_erased(target, erased).await?)
}

/// What folding a batch leaves to write besides the users and sessions rows.
struct Folded<'e> {
    audit: Vec<AuditRow<'e>>,
    erased: Vec<Uuid>,
}

/// Folds `events` in order onto the rows in `users` and `sessions`, after reading
/// in one query per table the rows they touch that are not there yet.
///
/// An aggregate whose first event is in this batch is not looked for: the feed
/// hands over every later event of it in order, so its row is built here from
/// the beginning (a login's new session costs no read). Should a row exist all
/// the same (a second projector for a moment, or a rebuild's overlap), it was
/// folded from a prefix of the same events, and the upsert's version check
/// keeps whichever row is further along.
async fn fold<'e>(
    target: &mut Target<'_>,
    events: &'e [StoredEvent],
    users: &mut Rows<UserRow>,
    sessions: &mut Rows<SessionRow>,
    stamp: u64,
) -> Result<Folded<'e>, FeedError> {
    let mut decoded = Vec::with_capacity(events.len());
    let mut user_ids = Vec::new();
    let mut session_ids = Vec::new();
    let mut born = std::collections::HashSet::new();
    for event in events {
        let payload = DomainPayload::decode(event)?;
        let id = match &payload {
            DomainPayload::User(_) | DomainPayload::Session(_) => {
                let id: Uuid = event.aggregate_id.parse().map_err(|_| FeedError::Corrupt {
                    position: event.position,
                    reason: format!("{} id is not a uuid", event.aggregate_type),
                })?;
                let is_user = matches!(payload, DomainPayload::User(_));
                if event.sequence == 1 {
                    born.insert(id);
                } else if born.contains(&id) {
                    // Created earlier in this batch.
                } else if is_user {
                    if !users.holds(&id) {
                        user_ids.push(id);
                    }
                } else if !sessions.holds(&id) {
                    session_ids.push(id);
                }
                Some(id)
            }
            _ => None,
        };
        decoded.push((id, payload));
    }
    users.load(target, user_ids, stamp).await?;
    sessions.load(target, session_ids, stamp).await?;

    let mut audit = Vec::with_capacity(events.len());
    let mut erased = Vec::new();
    for (event, (id, payload)) in events.iter().zip(&decoded) {
        let subject = match (payload, id) {
            (DomainPayload::User(e), Some(id)) => {
                users.apply(*id, event.sequence, e, stamp);
                if matches!(e, UserEvent::UserErased { .. }) {
                    erased.push(*id);
                }
                id.to_string()
            }
            (DomainPayload::Session(e), Some(id)) => {
                sessions.apply(*id, event.sequence, e, stamp);
                // The owner as far as the read model knows it (a session started
                // earlier, or in this batch, even if its row already existed).
                let started_by = match e {
                    SessionEvent::SessionStarted { user_id, .. } => Some(*user_id),
                    _ => None,
                };
                started_by
                    .or_else(|| sessions.get(id).map(|row| row.user_id))
                    .map_or_else(|| event.aggregate_id.clone(), |u| u.to_string())
            }
            // Organizations, roles and service accounts are served from the
            // in-memory access view; here they only reach the audit trail.
            (DomainPayload::Organization(e), _) => {
                organization_subject(e).unwrap_or_else(|| event.aggregate_id.clone())
            }
            _ => event.aggregate_id.clone(),
        };
        audit.push(AuditRow::new(event, subject, payload.integration_data()));
    }
    Ok(Folded { audit, erased })
}
