//! Rows in memory: those one batch touches (the live projector), or those a
//! fresh rebuild keeps across batches ([`FreshReadModels`]).

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::rules::Texts;
use super::sessions::SessionRow;
use super::table::{self, Table, Target};
use super::tables::SqliteTables;
use super::users::UserRow;
use super::{fold, forget_erased};
use crate::feed::{FeedError, StoredEvent};
use keyledger_storage::{Backend, PerBackend};

/// Where a row in memory stands against its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowState {
    /// As read from (or last written to) the table.
    Clean,
    /// Changed since: to be upserted.
    Changed,
    /// Not in the table: to be inserted (by `COPY` in a fresh schema).
    New,
}

struct Entry<R> {
    row: R,
    state: RowState,
    /// The batch that last touched it (for eviction).
    touched: u64,
}

/// Rows of one table keyed by aggregate id.
pub(crate) struct Rows<R> {
    rows: HashMap<Uuid, Entry<R>>,
    texts: Texts,
}

impl<R> Default for Rows<R> {
    fn default() -> Self {
        Self {
            rows: HashMap::new(),
            texts: Texts::default(),
        }
    }
}

impl<R: Table> Rows<R> {
    pub(crate) fn holds(&self, id: &Uuid) -> bool {
        self.rows.contains_key(id)
    }

    /// Reads these rows (none of which is held yet).
    pub(crate) async fn load(
        &mut self,
        target: &mut Target<'_>,
        mut ids: Vec<Uuid>,
        stamp: u64,
    ) -> Result<(), sqlx::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        ids.dedup();
        for (id, row) in table::load::<R>(target, &ids, &mut self.texts).await? {
            self.rows.insert(
                id,
                Entry {
                    row,
                    state: RowState::Clean,
                    touched: stamp,
                },
            );
        }
        Ok(())
    }

    pub(crate) fn get(&self, id: &Uuid) -> Option<&R> {
        self.rows.get(id).map(|e| &e.row)
    }

    /// Exactly what the per-event statements did: the creating event inserts
    /// unless the row exists (`ON CONFLICT DO NOTHING`); any other event updates
    /// an existing row whose version is older than its sequence.
    pub(crate) fn apply(&mut self, id: Uuid, version: i64, event: &R::Event, stamp: u64) {
        match self.rows.get_mut(&id) {
            Some(entry) => {
                entry.touched = stamp;
                if entry.row.version() < version {
                    entry.row.update(version, event, &mut self.texts);
                    if entry.state == RowState::Clean {
                        entry.state = RowState::Changed;
                    }
                }
            }
            None => {
                if let Some(row) = R::create(version, event, &mut self.texts) {
                    self.rows.insert(
                        id,
                        Entry {
                            row,
                            state: RowState::New,
                            touched: stamp,
                        },
                    );
                }
            }
        }
    }

    /// The live path: every row the batch created or changed, in key order, to
    /// upsert (all guarded by version, so an overlap is harmless).
    pub(crate) fn changed(self) -> Vec<(Uuid, R)> {
        let mut rows: Vec<(Uuid, R)> = self
            .rows
            .into_iter()
            .filter(|(_, e)| e.state != RowState::Clean)
            .map(|(id, e)| (id, e.row))
            .collect();
        rows.sort_unstable_by_key(|(id, _)| *id);
        rows
    }

    /// The fresh path: keeps at most `keep` rows, writing those that leave (down
    /// to three quarters of `keep`, so that this happens every few batches, not
    /// every batch). Settled rows leave first, then the least recently touched.
    async fn evict(&mut self, target: &mut Target<'_>, keep: usize) -> Result<(), sqlx::Error> {
        if self.rows.len() <= keep {
            return Ok(());
        }
        let leaving = self.rows.len() - (keep - keep / 4);
        let mut order: Vec<(u64, Uuid)> = self
            .rows
            .iter()
            .map(|(id, e)| (if e.row.settled() { 0 } else { e.touched }, *id))
            .collect();
        if leaving < order.len() {
            order.select_nth_unstable(leaving);
            order.truncate(leaving);
        }
        let mut new = Vec::new();
        let mut changed = Vec::new();
        for (_, id) in order {
            let Some(entry) = self.rows.remove(&id) else {
                continue;
            };
            match entry.state {
                RowState::Clean => {}
                RowState::Changed => changed.push((id, entry.row)),
                RowState::New => new.push((id, entry.row)),
            }
        }
        write_fresh(target, new, changed).await
    }

    /// The fresh path: writes every new or changed row and keeps them, clean.
    async fn flush(&mut self, target: &mut Target<'_>) -> Result<(), sqlx::Error> {
        let mut new = Vec::new();
        let mut changed = Vec::new();
        for (id, entry) in &mut self.rows {
            match entry.state {
                RowState::Clean => continue,
                RowState::Changed => changed.push((*id, entry.row.clone())),
                RowState::New => new.push((*id, entry.row.clone())),
            }
            entry.state = RowState::Clean;
        }
        write_fresh(target, new, changed).await
    }
}

/// Inserts `new` rows (not in the table) and upserts `changed` ones, each in
/// key order: neighbouring writes land on the same index pages. On SQLite, where
/// new rows are upserted too, both go in one statement.
async fn write_fresh<R: Table>(
    target: &mut Target<'_>,
    mut new: Vec<(Uuid, R)>,
    mut changed: Vec<(Uuid, R)>,
) -> Result<(), sqlx::Error> {
    if target.backend() == Backend::Sqlite {
        new.append(&mut changed);
    }
    new.sort_unstable_by_key(|(id, _)| *id);
    table::write_new(target, &new).await?;
    changed.sort_unstable_by_key(|(id, _)| *id);
    table::upsert(target, &changed).await
}

/// The read models of a schema being filled from nothing by ONE writer that sees
/// every event once and in feed order (`keyledger-replay rebuild`), keeping the
/// users and sessions rows it touched in memory across batches.
///
/// Guarantee: replayable, not checkpointed per batch. Audit rows are written with
/// each batch, but a users or sessions row may stay in memory (changed, or not in
/// the table at all yet) until it is evicted or [`Self::flush`]ed: only after a
/// flush do the tables hold every event applied so far, so that is when a
/// checkpoint may be saved. If anything fails, the schema is to be dropped.
///
/// Why: a batch's events mostly touch rows an earlier batch touched (a session is
/// started, refreshed, ended), and looking them up and upserting them again per
/// batch was most of PostgreSQL's work in a rebuild. Kept here, a row is looked up
/// at most once after it was evicted, written once when it leaves (a new one by
/// `COPY` on PostgreSQL), and rows that will not change any more (ended
/// sessions) leave first. Memory is bounded by `max_rows` per table, whatever
/// the log's size.
pub struct FreshReadModels {
    users: Rows<UserRow>,
    sessions: Rows<SessionRow>,
    max_rows: usize,
    batches: u64,
}

impl FreshReadModels {
    /// Keeps at most `max_rows` rows of each table in memory between batches (0
    /// writes every row with its batch).
    pub fn new(max_rows: usize) -> Self {
        Self {
            users: Rows::default(),
            sessions: Rows::default(),
            max_rows,
            batches: 0,
        }
    }

    /// Rows held in memory (users, sessions).
    pub fn cached_rows(&self) -> (usize, usize) {
        (self.users.rows.len(), self.sessions.rows.len())
    }

    /// Projects a batch into `target`: audit rows are written, users and
    /// sessions rows beyond `max_rows` leave memory (least recently touched,
    /// ended sessions first) and are written. A batch with an erasure writes
    /// everything and forgets what it held (the erasure rewrites rows in SQL;
    /// they are read again when needed).
    pub async fn apply_to(
        &mut self,
        mut target: Target<'_>,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        if events.is_empty() {
            return Ok(());
        }
        self.batches += 1;
        let target = &mut target;
        let folded = fold(
            target,
            events,
            &mut self.users,
            &mut self.sessions,
            self.batches,
        )
        .await?;
        self.users.evict(target, self.max_rows).await?;
        self.sessions.evict(target, self.max_rows).await?;
        table::write_new(target, &folded.audit).await?;
        if !folded.erased.is_empty() {
            self.users.evict(target, 0).await?;
            self.sessions.evict(target, 0).await?;
            forget_erased(target, &folded.erased).await?;
        }
        Ok(())
    }

    /// Writes every row that changed since it was read or last written; the rows
    /// stay in memory, now clean. Afterwards the tables hold every event applied.
    pub async fn flush_to(&mut self, mut target: Target<'_>) -> Result<(), FeedError> {
        self.users.flush(&mut target).await?;
        self.sessions.flush(&mut target).await?;
        Ok(())
    }

    /// [`Self::apply_to`] the tables `conn`'s `search_path` finds (PostgreSQL).
    pub async fn apply(
        &mut self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        self.apply_to(Target::live(PerBackend::Postgres(conn)), events)
            .await
    }

    /// [`Self::flush_to`] the tables `conn`'s `search_path` finds (PostgreSQL).
    pub async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), FeedError> {
        self.flush_to(Target::live(PerBackend::Postgres(conn)))
            .await
    }

    /// [`Self::apply_to`] SQLite `tables`.
    pub async fn apply_sqlite(
        &mut self,
        conn: &mut sqlx::SqliteConnection,
        tables: &SqliteTables,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        self.apply_to(Target::sqlite(conn, tables), events).await
    }

    /// [`Self::flush_to`] SQLite `tables`.
    pub async fn flush_sqlite(
        &mut self,
        conn: &mut sqlx::SqliteConnection,
        tables: &SqliteTables,
    ) -> Result<(), FeedError> {
        self.flush_to(Target::sqlite(conn, tables)).await
    }
}
