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
//! The rules (how each event changes a row, what an erasure scrubs) live here
//! once, in an in-memory fold; only reading and writing rows differ per back end
//! ([`Db`]). The SQLite statements are in [`crate::read_models_sqlite`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyledger_domain::{SessionEvent, UserEvent};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row, SqliteConnection};
use uuid::Uuid;

use crate::feed::{FeedError, Position, StoredEvent};
use crate::integration::DomainPayload;
use crate::read_models_sqlite::{self as sqlite, SqliteStorage, SqliteTables};

/// The DDL of every read model (idempotent).
pub const DDL: &str = include_str!("../sql/read_models.sql");

/// Checkpoint name of the read-model projector.
pub const CHECKPOINT: &str = "read_models";

pub struct ReadModels;

/// The connection a batch's rows are read from and written to. The fold and its
/// rules are the same whatever the back end; only loading and saving rows differ
/// (a `match` per operation, so neither back end can miss one).
pub(crate) enum Db<'c> {
    Postgres(&'c mut PgConnection),
    /// A SQLite connection, and where the read-model tables are in it.
    Sqlite(&'c mut SqliteConnection, &'c SqliteTables),
}

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

    /// Projects events in order, in a constant number of statements per batch
    /// whatever its size: round trips are what limits a projector (and a rebuild).
    /// The rows the batch touches are read in one query per table, every event is
    /// folded onto them in memory with exactly the rules a per-event `UPDATE ...
    /// WHERE version < $seq` would apply, and the changed rows are written back in
    /// one upsert per table, guarded by the same version check (so an overlap or a
    /// second projector for a moment is harmless). Audit rows go in one `UNNEST`.
    pub async fn apply_all(
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        apply_all_in(&mut Db::Postgres(conn), events).await
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

/// [`ReadModels::apply_all`] on either back end.
pub(crate) async fn apply_all_in(db: &mut Db<'_>, events: &[StoredEvent]) -> Result<(), FeedError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut users = Rows::<UserRow>::default();
    let mut sessions = Rows::<SessionRow>::default();
    let folded = fold(db, events, &mut users, &mut sessions, false, 0).await?;
    users.upsert_changed(db).await?;
    sessions.upsert_changed(db).await?;
    folded.audit.insert(db).await?;
    forget_erased(db, &folded.erased).await
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
/// `COPY`), and rows that will not change any more (ended sessions) leave first.
/// Memory is bounded by `max_rows` per table, whatever the log's size.
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

    /// Projects a batch: audit rows are written, users and sessions rows beyond
    /// `max_rows` leave memory (least recently touched, ended sessions first) and
    /// are written. A batch with an erasure writes everything and forgets what it
    /// held (the erasure rewrites rows in SQL; they are read again when needed).
    pub async fn apply(
        &mut self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        self.apply_in(&mut Db::Postgres(conn), events).await
    }

    /// Writes every row that changed since it was read or last written; the rows
    /// stay in memory, now clean. Afterwards the tables hold every event applied.
    pub async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), FeedError> {
        self.flush_in(&mut Db::Postgres(conn)).await
    }

    /// [`Self::apply`] on either back end.
    pub(crate) async fn apply_in(
        &mut self,
        db: &mut Db<'_>,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        if events.is_empty() {
            return Ok(());
        }
        self.batches += 1;
        let folded = fold(
            db,
            events,
            &mut self.users,
            &mut self.sessions,
            true,
            self.batches,
        )
        .await?;
        self.users.evict(db, self.max_rows).await?;
        self.sessions.evict(db, self.max_rows).await?;
        folded.audit.copy(db).await?;
        if !folded.erased.is_empty() {
            self.users.evict(db, 0).await?;
            self.sessions.evict(db, 0).await?;
            forget_erased(db, &folded.erased).await?;
        }
        Ok(())
    }

    /// [`Self::flush`] on either back end.
    pub(crate) async fn flush_in(&mut self, db: &mut Db<'_>) -> Result<(), FeedError> {
        self.users.flush(db).await?;
        self.sessions.flush(db).await?;
        Ok(())
    }
}

/// What folding a batch leaves to write besides the users and sessions rows.
struct Folded {
    audit: AuditRows,
    erased: Vec<Uuid>,
}

/// Folds `events` in order onto the rows in `users` and `sessions`, after reading
/// in one query per table the rows they touch that are not there yet. With
/// `fresh`, an aggregate whose first event is in this batch has no row in the
/// table: no need to look for one.
async fn fold(
    db: &mut Db<'_>,
    events: &[StoredEvent],
    users: &mut Rows<UserRow>,
    sessions: &mut Rows<SessionRow>,
    fresh: bool,
    stamp: u64,
) -> Result<Folded, FeedError> {
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
                if fresh && event.sequence == 1 {
                    born.insert(id);
                } else if born.contains(&id) {
                    // Created earlier in this batch.
                } else if is_user {
                    if !users.rows.contains_key(&id) {
                        user_ids.push(id);
                    }
                } else if !sessions.rows.contains_key(&id) {
                    session_ids.push(id);
                }
                Some(id)
            }
            _ => None,
        };
        decoded.push((id, payload));
    }
    users.load(db, user_ids, stamp).await?;
    sessions.load(db, session_ids, stamp).await?;

    let mut audit = AuditRows::with_capacity(events.len());
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
        audit.push(event, subject, payload.integration_data());
    }
    Ok(Folded { audit, erased })
}

/// What the read models keep of an erased person: nothing personal. Their users
/// row goes (the audit trail keeps the fact of the erasure); in their sessions,
/// in audit rows of requests they made and in the details of events about them,
/// every personal value becomes `[erased]`. That is exactly what projecting the
/// same events after the erasure gives (the opener shows `[erased]` once the key
/// is gone), so a rebuild compares equal to these scrubbed tables.
async fn forget_erased(db: &mut Db<'_>, erased: &[Uuid]) -> Result<(), FeedError> {
    if erased.is_empty() {
        return Ok(());
    }
    match db {
        Db::Postgres(conn) => forget_erased_pg(conn, erased).await?,
        Db::Sqlite(conn, tables) => sqlite::forget_erased(conn, tables, erased).await?,
    }
    Ok(())
}

/// The keys of an audit row's `details` that hold personal data (when they hold
/// a string), which an erasure of its subject turns into `[erased]`.
pub(crate) const PERSONAL_DETAILS: [&str; 4] = ["email", "display_name", "ip", "user_agent"];

/// What an erasure does to the `details` of an audit row about the erased person
/// (the rule [`forget_erased_pg`] applies in SQL): every personal key holding a
/// string holds `[erased]`. True when `details` has such a key.
pub(crate) fn scrub_details(details: &mut Value) -> bool {
    let Some(object) = details.as_object_mut() else {
        return false;
    };
    let mut scrubbed = false;
    for key in PERSONAL_DETAILS {
        if let Some(value @ Value::String(_)) = object.get_mut(key) {
            *value = Value::String(keyledger_domain::ERASED.to_owned());
            scrubbed = true;
        }
    }
    scrubbed
}

/// [`forget_erased`] in PostgreSQL: four statements, the `details` scrub in SQL.
async fn forget_erased_pg(conn: &mut PgConnection, erased: &[Uuid]) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = erased.iter().map(Uuid::to_string).collect();
    sqlx::query("DELETE FROM users WHERE user_id = ANY($1)")
        .bind(erased)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE sessions SET ip = CASE WHEN ip IS NULL THEN NULL ELSE $2 END,
                             user_agent = CASE WHEN user_agent IS NULL THEN NULL ELSE $2 END
          WHERE user_id = ANY($1) AND (ip IS NOT NULL OR user_agent IS NOT NULL)",
    )
    .bind(erased)
    .bind(keyledger_domain::ERASED)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE audit_trail SET ip = CASE WHEN ip IS NULL THEN NULL ELSE $2 END,
                                user_agent = CASE WHEN user_agent IS NULL THEN NULL ELSE $2 END
          WHERE (actor = ANY($1) OR (actor = 'anonymous' AND subject = ANY($1)))
            AND (ip IS NOT NULL OR user_agent IS NOT NULL)",
    )
    .bind(&ids)
    .bind(keyledger_domain::ERASED)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE audit_trail
            SET details = (SELECT jsonb_object_agg(k, CASE
                               WHEN k = ANY($3) AND jsonb_typeof(v) = 'string'
                               THEN to_jsonb($2::text) ELSE v END)
                             FROM jsonb_each(details) AS e(k, v))
          WHERE subject = ANY($1) AND details ?| $3",
    )
    .bind(&ids)
    .bind(keyledger_domain::ERASED)
    .bind(&PERSONAL_DETAILS[..])
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whom an organization event is about: the member for membership changes (so that
/// a user's audit history shows being added to or removed from an organization),
/// the invitee for answers to an invitation, and for an invitation the id the
/// inviter typed (an invitation by address is about the organization: whether
/// the address names an account is nobody's business but the invitee's).
fn organization_subject(
    event: &keyledger_domain::organization::OrganizationEvent,
) -> Option<String> {
    use keyledger_domain::organization::{InvitationAddress, OrganizationEvent as E};
    match event {
        E::MemberAdded { user_id, .. }
        | E::MemberRemoved { user_id, .. }
        | E::MemberRolesChanged { user_id, .. }
        | E::InvitationAccepted { user_id, .. }
        | E::InvitationDeclined { user_id, .. }
        | E::MemberInvited {
            address: InvitationAddress::UserId(user_id),
            ..
        } => Some(user_id.to_string()),
        _ => None,
    }
}

/// One read-model table as the batch fold sees it. Loading and saving in
/// PostgreSQL are here; in SQLite, in [`SqliteStorage`].
trait ReadModelRow: Sized + Clone + SqliteStorage {
    type Event;
    /// `COPY <table> (<columns>) FROM STDIN` for [`Self::copy_line`].
    const COPY: &'static str;
    /// Loads the rows with these ids.
    async fn load(
        conn: &mut PgConnection,
        ids: &[Uuid],
        texts: &mut Texts,
    ) -> Result<Vec<(Uuid, Self)>, sqlx::Error>;
    /// The row an aggregate's first event creates (`None` for any other event,
    /// which, like an `UPDATE` matching nothing, leaves no row).
    fn create(version: i64, event: &Self::Event, texts: &mut Texts) -> Option<Self>;
    fn version(&self) -> i64;
    /// Applies a later event (the caller has checked the version guard).
    fn update(&mut self, version: i64, event: &Self::Event, texts: &mut Texts);
    /// True when no later event is expected to change the row (an ended
    /// session): such rows leave the in-memory cache first.
    fn settled(&self) -> bool;
    /// Upserts the rows, each only over an older version.
    async fn save(conn: &mut PgConnection, rows: Vec<(Uuid, Self)>) -> Result<(), sqlx::Error>;
    /// Appends the row as one line of `COPY` text, in the columns of [`Self::COPY`].
    fn copy_line(&self, id: Uuid, out: &mut Vec<u8>);
}

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

/// Rows of one table keyed by aggregate id: the rows one batch touches (the live
/// projector), or those a fresh rebuild keeps across batches.
struct Rows<R> {
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

/// Text that repeats across many rows (user agents, states, end reasons), held
/// once: a session row kept in memory is then mostly fixed-size. Bounded: starts
/// over when full (rows keep what they share).
#[derive(Default)]
pub(crate) struct Texts {
    set: HashSet<Arc<str>>,
}

impl Texts {
    const MAX: usize = 10_000;

    pub(crate) fn shared(&mut self, text: &str) -> Arc<str> {
        if let Some(held) = self.set.get(text) {
            return held.clone();
        }
        if self.set.len() >= Self::MAX {
            self.set.clear();
        }
        let held: Arc<str> = Arc::from(text);
        self.set.insert(held.clone());
        held
    }
}

impl<R: ReadModelRow> Rows<R> {
    /// Reads these rows (none of which is held yet).
    async fn load(
        &mut self,
        db: &mut Db<'_>,
        mut ids: Vec<Uuid>,
        stamp: u64,
    ) -> Result<(), sqlx::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        ids.dedup();
        let loaded = match db {
            Db::Postgres(conn) => R::load(conn, &ids, &mut self.texts).await?,
            Db::Sqlite(conn, tables) => R::load_sqlite(conn, tables, &ids, &mut self.texts).await?,
        };
        for (id, row) in loaded {
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

    fn get(&self, id: &Uuid) -> Option<&R> {
        self.rows.get(id).map(|e| &e.row)
    }

    /// Exactly what the per-event statements did: the creating event inserts
    /// unless the row exists (`ON CONFLICT DO NOTHING`); any other event updates
    /// an existing row whose version is older than its sequence.
    fn apply(&mut self, id: Uuid, version: i64, event: &R::Event, stamp: u64) {
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

    /// The live path: upserts every row the batch created or changed (all guarded
    /// by version, so an overlap is harmless).
    async fn upsert_changed(self, db: &mut Db<'_>) -> Result<(), sqlx::Error> {
        let mut rows: Vec<(Uuid, R)> = self
            .rows
            .into_iter()
            .filter(|(_, e)| e.state != RowState::Clean)
            .map(|(id, e)| (id, e.row))
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        rows.sort_unstable_by_key(|(id, _)| *id);
        save(db, rows).await
    }

    /// The fresh path: keeps at most `keep` rows, writing those that leave (down
    /// to three quarters of `keep`, so that this happens every few batches, not
    /// every batch). Settled rows leave first, then the least recently touched.
    async fn evict(&mut self, db: &mut Db<'_>, keep: usize) -> Result<(), sqlx::Error> {
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
        write_fresh(db, new, changed).await
    }

    /// The fresh path: writes every new or changed row and keeps them, clean.
    async fn flush(&mut self, db: &mut Db<'_>) -> Result<(), sqlx::Error> {
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
        write_fresh(db, new, changed).await
    }
}

/// Upserts rows, each only over an older version.
async fn save<R: ReadModelRow>(db: &mut Db<'_>, rows: Vec<(Uuid, R)>) -> Result<(), sqlx::Error> {
    match db {
        Db::Postgres(conn) => R::save(conn, rows).await,
        Db::Sqlite(conn, tables) => R::save_sqlite(conn, tables, rows).await,
    }
}

/// Inserts `new` rows (not in the table: in PostgreSQL by `COPY`; SQLite has no
/// `COPY` and its upsert costs about what an insert does) and upserts `changed`
/// ones.
async fn write_fresh<R: ReadModelRow>(
    db: &mut Db<'_>,
    mut new: Vec<(Uuid, R)>,
    mut changed: Vec<(Uuid, R)>,
) -> Result<(), sqlx::Error> {
    let conn = match db {
        Db::Postgres(conn) => &mut **conn,
        Db::Sqlite(..) => {
            new.append(&mut changed);
            if !new.is_empty() {
                new.sort_unstable_by_key(|(id, _)| *id);
                save(db, new).await?;
            }
            return Ok(());
        }
    };
    if !new.is_empty() {
        // In key order: neighbouring inserts land on the same index pages.
        new.sort_unstable_by_key(|(id, _)| *id);
        let mut data = Vec::with_capacity(new.len() * 256);
        for (id, row) in &new {
            row.copy_line(*id, &mut data);
        }
        let mut copy = conn.copy_in_raw(R::COPY).await?;
        copy.send(data).await?;
        copy.finish().await?;
    }
    if !changed.is_empty() {
        changed.sort_unstable_by_key(|(id, _)| *id);
        R::save(conn, changed).await?;
    }
    Ok(())
}

/// `COPY` text: one field, tab-separated from the previous one unless first.
struct CopyLine<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> CopyLine<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, first: true }
    }

    fn sep(&mut self) {
        if !self.first {
            self.out.push(b'\t');
        }
        self.first = false;
    }

    fn text(&mut self, value: Option<&str>) -> &mut Self {
        self.sep();
        match value {
            Some(text) => copy_escape(self.out, text.as_bytes()),
            None => self.out.extend_from_slice(b"\\N"),
        }
        self
    }

    fn display(&mut self, value: Option<impl std::fmt::Display>) -> &mut Self {
        use std::io::Write as _;
        self.sep();
        match value {
            // Numbers and uuids: nothing to escape.
            Some(v) => {
                let _ = write!(self.out, "{v}");
            }
            None => self.out.extend_from_slice(b"\\N"),
        }
        self
    }

    fn time(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        // Truncated to microseconds, as the binary encoding of the upserts does
        // (PostgreSQL would round the text).
        self.display(value.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
    }

    fn bool(&mut self, value: bool) -> &mut Self {
        self.display(Some(if value { 't' } else { 'f' }))
    }

    fn end(&mut self) {
        self.out.push(b'\n');
    }
}

#[derive(Debug, Clone)]
pub(crate) struct UserRow {
    pub(crate) email: String,
    pub(crate) display_name: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) last_login_at: Option<DateTime<Utc>>,
    pub(crate) consecutive_failures: i32,
    pub(crate) locked_until: Option<DateTime<Utc>>,
    pub(crate) suspended: bool,
    pub(crate) platform_admin: bool,
    pub(crate) version: i64,
}

impl ReadModelRow for UserRow {
    type Event = UserEvent;
    const COPY: &'static str =
        "COPY users (user_id, email, display_name, created_at, last_login_at,
                                  consecutive_failures, locked_until, suspended,
                                  platform_admin, version) FROM STDIN";

    async fn load(
        conn: &mut PgConnection,
        ids: &[Uuid],
        _: &mut Texts,
    ) -> Result<Vec<(Uuid, Self)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT user_id, email, display_name, created_at, last_login_at,
                    consecutive_failures, locked_until, suspended, platform_admin, version
               FROM users WHERE user_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Self {
                        email: r.try_get(1)?,
                        display_name: r.try_get(2)?,
                        created_at: r.try_get(3)?,
                        last_login_at: r.try_get(4)?,
                        consecutive_failures: r.try_get(5)?,
                        locked_until: r.try_get(6)?,
                        suspended: r.try_get(7)?,
                        platform_admin: r.try_get(8)?,
                        version: r.try_get(9)?,
                    },
                ))
            })
            .collect()
    }

    fn create(version: i64, event: &UserEvent, _: &mut Texts) -> Option<Self> {
        match event {
            UserEvent::UserRegistered {
                email,
                display_name,
                registered_at,
                ..
            } => Some(Self {
                email: email.as_str().to_owned(),
                display_name: display_name.as_ref().map(|n| n.as_str().to_owned()),
                created_at: *registered_at,
                last_login_at: None,
                consecutive_failures: 0,
                locked_until: None,
                suspended: false,
                platform_admin: false,
                version,
            }),
            _ => None,
        }
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn settled(&self) -> bool {
        false
    }

    fn copy_line(&self, id: Uuid, out: &mut Vec<u8>) {
        CopyLine::new(out)
            .display(Some(id))
            .text(Some(&self.email))
            .text(self.display_name.as_deref())
            .time(Some(self.created_at))
            .time(self.last_login_at)
            .display(Some(self.consecutive_failures))
            .time(self.locked_until)
            .bool(self.suspended)
            .bool(self.platform_admin)
            .display(Some(self.version))
            .end();
    }

    fn update(&mut self, version: i64, event: &UserEvent, _: &mut Texts) {
        match event {
            // Registration never updates an existing row.
            UserEvent::UserRegistered { .. } | UserEvent::UserImported { .. } => return,
            UserEvent::UserLoggedIn { at, .. } => {
                self.last_login_at = Some(*at);
                self.consecutive_failures = 0;
                self.locked_until = None;
            }
            UserEvent::LoginFailed {
                consecutive_failures,
                ..
            } => {
                self.consecutive_failures = *consecutive_failures as i32;
                if *consecutive_failures == 1 {
                    self.locked_until = None;
                }
            }
            UserEvent::AccountLocked { locked_until, .. } => {
                self.locked_until = Some(*locked_until);
            }
            UserEvent::AccountUnlocked { .. } => {
                self.locked_until = None;
                self.consecutive_failures = 0;
            }
            UserEvent::UserSuspended { .. } => self.suspended = true,
            UserEvent::UserReactivated { .. } => self.suspended = false,
            UserEvent::PlatformAdminGranted { .. } => self.platform_admin = true,
            UserEvent::PlatformAdminRevoked { .. } => self.platform_admin = false,
            UserEvent::PasswordChanged { .. } | UserEvent::PasswordRehashed { .. } => {}
            // The row is deleted once the batch is saved (see `forget_erased`);
            // until then it holds nothing personal.
            UserEvent::UserErased { .. } => {
                self.email = keyledger_domain::ERASED.to_owned();
                self.display_name = None;
            }
        }
        self.version = version;
    }

    async fn save(conn: &mut PgConnection, rows: Vec<(Uuid, Self)>) -> Result<(), sqlx::Error> {
        let mut c = UserColumns::default();
        for (id, row) in rows {
            c.user_id.push(id);
            c.email.push(row.email);
            c.display_name.push(row.display_name);
            c.created_at.push(row.created_at);
            c.last_login_at.push(row.last_login_at);
            c.consecutive_failures.push(row.consecutive_failures);
            c.locked_until.push(row.locked_until);
            c.suspended.push(row.suspended);
            c.platform_admin.push(row.platform_admin);
            c.version.push(row.version);
        }
        sqlx::query(
            "INSERT INTO users (user_id, email, display_name, created_at, last_login_at,
                                consecutive_failures, locked_until, suspended, platform_admin,
                                version)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                                  $5::timestamptz[], $6::int4[], $7::timestamptz[],
                                  $8::bool[], $9::bool[], $10::int8[])
             ON CONFLICT (user_id) DO UPDATE
                SET email = EXCLUDED.email, display_name = EXCLUDED.display_name,
                    created_at = EXCLUDED.created_at, last_login_at = EXCLUDED.last_login_at,
                    consecutive_failures = EXCLUDED.consecutive_failures,
                    locked_until = EXCLUDED.locked_until, suspended = EXCLUDED.suspended,
                    platform_admin = EXCLUDED.platform_admin, version = EXCLUDED.version
              WHERE users.version < EXCLUDED.version",
        )
        .bind(c.user_id)
        .bind(c.email)
        .bind(c.display_name)
        .bind(c.created_at)
        .bind(c.last_login_at)
        .bind(c.consecutive_failures)
        .bind(c.locked_until)
        .bind(c.suspended)
        .bind(c.platform_admin)
        .bind(c.version)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct UserColumns {
    user_id: Vec<Uuid>,
    email: Vec<String>,
    display_name: Vec<Option<String>>,
    created_at: Vec<DateTime<Utc>>,
    last_login_at: Vec<Option<DateTime<Utc>>>,
    consecutive_failures: Vec<i32>,
    locked_until: Vec<Option<DateTime<Utc>>>,
    suspended: Vec<bool>,
    platform_admin: Vec<bool>,
    version: Vec<i64>,
}

#[derive(Debug, Clone)]
pub(crate) struct SessionRow {
    pub(crate) user_id: Uuid,
    pub(crate) ip: Option<Arc<str>>,
    pub(crate) user_agent: Option<Arc<str>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) last_refreshed_at: Option<DateTime<Utc>>,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) refresh_count: i32,
    pub(crate) state: Arc<str>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    pub(crate) end_reason: Option<Arc<str>>,
    pub(crate) organization_id: Option<Uuid>,
    pub(crate) version: i64,
}

impl SessionRow {
    fn end(&mut self, state: Arc<str>, reason: Arc<str>, at: DateTime<Utc>) {
        self.state = state;
        self.end_reason = Some(reason);
        self.ended_at = Some(at);
    }
}

impl ReadModelRow for SessionRow {
    type Event = SessionEvent;
    const COPY: &'static str = "COPY sessions (session_id, user_id, ip, user_agent, created_at,
                                     last_refreshed_at, expires_at, refresh_count, state,
                                     ended_at, end_reason, organization_id, version) FROM STDIN";

    async fn load(
        conn: &mut PgConnection,
        ids: &[Uuid],
        texts: &mut Texts,
    ) -> Result<Vec<(Uuid, Self)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT session_id, user_id, ip, user_agent, created_at, last_refreshed_at,
                    expires_at, refresh_count, state, ended_at, end_reason, organization_id,
                    version
               FROM sessions WHERE session_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(conn)
        .await?;
        let mut text = |r: &sqlx::postgres::PgRow, i: usize| {
            r.try_get::<Option<&str>, _>(i)
                .map(|t| t.map(|t| texts.shared(t)))
        };
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Self {
                        user_id: r.try_get(1)?,
                        ip: r.try_get::<Option<&str>, _>(2)?.map(Arc::from),
                        user_agent: text(r, 3)?,
                        created_at: r.try_get(4)?,
                        last_refreshed_at: r.try_get(5)?,
                        expires_at: r.try_get(6)?,
                        refresh_count: r.try_get(7)?,
                        // NOT NULL: never the default.
                        state: text(r, 8)?.unwrap_or_default(),
                        ended_at: r.try_get(9)?,
                        end_reason: text(r, 10)?,
                        organization_id: r.try_get(11)?,
                        version: r.try_get(12)?,
                    },
                ))
            })
            .collect()
    }

    fn create(version: i64, event: &SessionEvent, texts: &mut Texts) -> Option<Self> {
        match event {
            SessionEvent::SessionStarted {
                user_id,
                device,
                started_at,
                expires_at,
                ..
            } => Some(Self {
                user_id: *user_id,
                ip: device.ip.as_ref().map(|p| Arc::from(p.as_str())),
                user_agent: device.user_agent.as_ref().map(|p| texts.shared(p.as_str())),
                created_at: *started_at,
                last_refreshed_at: None,
                expires_at: *expires_at,
                refresh_count: 0,
                state: texts.shared("active"),
                ended_at: None,
                end_reason: None,
                organization_id: None,
                version,
            }),
            _ => None,
        }
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn settled(&self) -> bool {
        &*self.state != "active"
    }

    fn copy_line(&self, id: Uuid, out: &mut Vec<u8>) {
        CopyLine::new(out)
            .display(Some(id))
            .display(Some(self.user_id))
            .text(self.ip.as_deref())
            .text(self.user_agent.as_deref())
            .time(Some(self.created_at))
            .time(self.last_refreshed_at)
            .time(Some(self.expires_at))
            .display(Some(self.refresh_count))
            .text(Some(&*self.state))
            .time(self.ended_at)
            .text(self.end_reason.as_deref())
            .display(self.organization_id)
            .display(Some(self.version))
            .end();
    }

    fn update(&mut self, version: i64, event: &SessionEvent, texts: &mut Texts) {
        match event {
            // A start never updates an existing row.
            SessionEvent::SessionStarted { .. } => return,
            SessionEvent::TokenRefreshed { generation, at, .. } => {
                self.last_refreshed_at = Some(*at);
                self.refresh_count = *generation as i32;
            }
            SessionEvent::RefreshTokenReuseDetected { .. } => {}
            SessionEvent::SessionRevoked { reason, at } => {
                let reason = serde_json::to_value(reason).ok();
                let reason = texts.shared(reason.as_ref().and_then(Value::as_str).unwrap_or(""));
                self.end(texts.shared("revoked"), reason, *at);
            }
            SessionEvent::UserLoggedOut { at } => {
                self.end(texts.shared("logged_out"), texts.shared("logout"), *at)
            }
            SessionEvent::OrganizationSelected {
                organization_id, ..
            } => self.organization_id = *organization_id,
        }
        self.version = version;
    }

    async fn save(conn: &mut PgConnection, rows: Vec<(Uuid, Self)>) -> Result<(), sqlx::Error> {
        let mut c = SessionColumns::default();
        for (id, row) in rows {
            c.session_id.push(id);
            c.user_id.push(row.user_id);
            c.ip.push(row.ip.as_deref().map(str::to_owned));
            c.user_agent
                .push(row.user_agent.as_deref().map(str::to_owned));
            c.created_at.push(row.created_at);
            c.last_refreshed_at.push(row.last_refreshed_at);
            c.expires_at.push(row.expires_at);
            c.refresh_count.push(row.refresh_count);
            c.state.push(row.state.to_string());
            c.ended_at.push(row.ended_at);
            c.end_reason
                .push(row.end_reason.as_deref().map(str::to_owned));
            c.organization_id.push(row.organization_id);
            c.version.push(row.version);
        }
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, ip, user_agent, created_at,
                                   last_refreshed_at, expires_at, refresh_count, state,
                                   ended_at, end_reason, organization_id, version)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                                  $5::timestamptz[], $6::timestamptz[], $7::timestamptz[],
                                  $8::int4[], $9::text[], $10::timestamptz[], $11::text[],
                                  $12::uuid[], $13::int8[])
             ON CONFLICT (session_id) DO UPDATE
                SET user_id = EXCLUDED.user_id, ip = EXCLUDED.ip,
                    user_agent = EXCLUDED.user_agent, created_at = EXCLUDED.created_at,
                    last_refreshed_at = EXCLUDED.last_refreshed_at,
                    expires_at = EXCLUDED.expires_at, refresh_count = EXCLUDED.refresh_count,
                    state = EXCLUDED.state, ended_at = EXCLUDED.ended_at,
                    end_reason = EXCLUDED.end_reason,
                    organization_id = EXCLUDED.organization_id, version = EXCLUDED.version
              WHERE sessions.version < EXCLUDED.version",
        )
        .bind(c.session_id)
        .bind(c.user_id)
        .bind(c.ip)
        .bind(c.user_agent)
        .bind(c.created_at)
        .bind(c.last_refreshed_at)
        .bind(c.expires_at)
        .bind(c.refresh_count)
        .bind(c.state)
        .bind(c.ended_at)
        .bind(c.end_reason)
        .bind(c.organization_id)
        .bind(c.version)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct SessionColumns {
    session_id: Vec<Uuid>,
    user_id: Vec<Uuid>,
    ip: Vec<Option<String>>,
    user_agent: Vec<Option<String>>,
    created_at: Vec<DateTime<Utc>>,
    last_refreshed_at: Vec<Option<DateTime<Utc>>>,
    expires_at: Vec<DateTime<Utc>>,
    refresh_count: Vec<i32>,
    state: Vec<String>,
    ended_at: Vec<Option<DateTime<Utc>>>,
    end_reason: Vec<Option<String>>,
    organization_id: Vec<Option<Uuid>>,
    version: Vec<i64>,
}

/// What an audit row says happened, in the auditor's vocabulary.
fn outcome(event_type: &str) -> &'static str {
    match event_type {
        "LoginFailed" | "RefreshTokenReuseDetected" => "failure",
        "AccountLocked" => "locked",
        "UserSuspended" | "OrganizationSuspended" => "suspended",
        _ => "success",
    }
}

/// Audit rows of one batch, column by column, for a single `UNNEST` insert.
pub(crate) struct AuditRows {
    pub(crate) position: Vec<i64>,
    pub(crate) occurred_at: Vec<chrono::DateTime<chrono::Utc>>,
    pub(crate) actor: Vec<String>,
    pub(crate) subject: Vec<String>,
    pub(crate) action: Vec<String>,
    pub(crate) outcome: Vec<String>,
    pub(crate) ip: Vec<Option<String>>,
    pub(crate) user_agent: Vec<Option<String>>,
    pub(crate) request_id: Vec<Option<String>>,
    pub(crate) aggregate_type: Vec<String>,
    pub(crate) aggregate_id: Vec<String>,
    pub(crate) sequence: Vec<i64>,
    pub(crate) details: Vec<Value>,
}

impl AuditRows {
    fn with_capacity(n: usize) -> Self {
        Self {
            position: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            subject: Vec::with_capacity(n),
            action: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
            ip: Vec::with_capacity(n),
            user_agent: Vec::with_capacity(n),
            request_id: Vec::with_capacity(n),
            aggregate_type: Vec::with_capacity(n),
            aggregate_id: Vec::with_capacity(n),
            sequence: Vec::with_capacity(n),
            details: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, event: &StoredEvent, subject: String, details: Value) {
        let meta = |key: &str| event.meta(key).map(str::to_owned);
        self.position.push(event.position.global_position);
        self.occurred_at.push(event.occurred_at());
        self.actor
            .push(event.meta("actor").unwrap_or("anonymous").to_owned());
        self.subject.push(subject);
        self.action.push(event.event_type.clone());
        self.outcome.push(outcome(&event.event_type).to_owned());
        self.ip.push(meta("ip"));
        self.user_agent.push(meta("user_agent"));
        self.request_id.push(meta("request_id"));
        self.aggregate_type.push(event.aggregate_type.clone());
        self.aggregate_id.push(event.aggregate_id.clone());
        self.sequence.push(event.sequence);
        self.details.push(details);
    }

    /// The rows as `COPY ... FROM STDIN` text (see [`ReadModels::apply_all_fresh`]);
    /// SQLite has no `COPY`: there they are inserted.
    async fn copy(self, db: &mut Db<'_>) -> Result<(), FeedError> {
        if self.position.is_empty() {
            return Ok(());
        }
        let conn = match db {
            Db::Postgres(conn) => &mut **conn,
            Db::Sqlite(..) => return self.insert(db).await,
        };
        let mut data = Vec::with_capacity(self.position.len() * 400);
        let mut details = Vec::with_capacity(512);
        for i in 0..self.position.len() {
            let fields: [Option<&str>; 9] = [
                Some(&self.actor[i]),
                Some(&self.subject[i]),
                Some(&self.action[i]),
                Some(&self.outcome[i]),
                self.ip[i].as_deref(),
                self.user_agent[i].as_deref(),
                self.request_id[i].as_deref(),
                Some(&self.aggregate_type[i]),
                Some(&self.aggregate_id[i]),
            ];
            data.extend_from_slice(self.position[i].to_string().as_bytes());
            data.push(b'\t');
            data.extend_from_slice(
                self.occurred_at[i]
                    // Truncated to microseconds, as the binary encoding of the
                    // `INSERT` path does (PostgreSQL would round the text).
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .as_bytes(),
            );
            for field in fields {
                data.push(b'\t');
                match field {
                    Some(text) => copy_escape(&mut data, text.as_bytes()),
                    None => data.extend_from_slice(b"\\N"),
                }
            }
            data.push(b'\t');
            data.extend_from_slice(self.sequence[i].to_string().as_bytes());
            data.push(b'\t');
            details.clear();
            serde_json::to_writer(&mut details, &self.details[i])
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            copy_escape(&mut data, &details);
            data.push(b'\n');
        }
        let mut copy = conn
            .copy_in_raw(
                "COPY audit_trail (global_position, occurred_at, actor, subject, action,
                                   outcome, ip, user_agent, request_id, aggregate_type,
                                   aggregate_id, sequence, details) FROM STDIN",
            )
            .await?;
        copy.send(data).await?;
        copy.finish().await?;
        Ok(())
    }

    async fn insert(self, db: &mut Db<'_>) -> Result<(), FeedError> {
        if self.position.is_empty() {
            return Ok(());
        }
        let conn = match db {
            Db::Postgres(conn) => &mut **conn,
            Db::Sqlite(conn, tables) => return Ok(sqlite::insert_audit(conn, tables, self).await?),
        };
        sqlx::query(
            "INSERT INTO audit_trail (global_position, occurred_at, actor, subject, action,
                                      outcome, ip, user_agent, request_id, aggregate_type,
                                      aggregate_id, sequence, details)
             SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::text[], $4::text[],
                                  $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                                  $10::text[], $11::text[], $12::bigint[], $13::jsonb[])
             ON CONFLICT (global_position) DO NOTHING",
        )
        .bind(self.position)
        .bind(self.occurred_at)
        .bind(self.actor)
        .bind(self.subject)
        .bind(self.action)
        .bind(self.outcome)
        .bind(self.ip)
        .bind(self.user_agent)
        .bind(self.request_id)
        .bind(self.aggregate_type)
        .bind(self.aggregate_id)
        .bind(self.sequence)
        .bind(self.details)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// COPY text format escapes backslash, tab, newline and carriage return (other
/// control characters are legal in text and JSON strings escape their own). Shared
/// with `keyledger-replay seed`, which writes the event log by `COPY` too.
pub fn copy_escape(out: &mut Vec<u8>, data: &[u8]) {
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&data[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&data[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_would_misread() {
        let mut out = Vec::new();
        copy_escape(&mut out, b"a\\b\tc\nd\re\x01");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re\x01");
    }
}
