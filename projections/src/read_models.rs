//! Users, sessions and the audit trail in PostgreSQL (organizations, roles and
//! service accounts reach the audit trail here and are served from
//! [`crate::access::AccessView`]).
//!
//! Guarantee: checkpointed and exactly-once. Each batch of feed events is applied
//! and the checkpoint advanced in one transaction, so after a crash the projector
//! resumes exactly where the last committed batch ended. Every write is also
//! idempotent (guarded by the aggregate sequence), so a rebuild or an overlap is
//! harmless. The same code projects into a fresh schema for `keyledger-replay rebuild`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyledger_domain::{SessionEvent, UserEvent};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::feed::{FeedError, Position, StoredEvent};
use crate::integration::DomainPayload;

/// The DDL of every read model (idempotent).
pub const DDL: &str = include_str!("../sql/read_models.sql");

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

    pub async fn checkpoint(conn: &mut PgConnection, name: &str) -> Result<Position, sqlx::Error> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT tx_id, global_position FROM projection_checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(conn)
        .await?;
        Ok(
            row.map_or(Position::START, |(tx_id, global_position)| Position {
                tx_id,
                global_position,
            }),
        )
    }

    pub async fn save_checkpoint(
        conn: &mut PgConnection,
        name: &str,
        position: Position,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO projection_checkpoints (name, tx_id, global_position, updated_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (name) DO UPDATE
                SET tx_id = EXCLUDED.tx_id, global_position = EXCLUDED.global_position,
                    updated_at = now()",
        )
        .bind(name)
        .bind(position.tx_id)
        .bind(position.global_position)
        .execute(conn)
        .await?;
        Ok(())
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
        Self::apply_events(conn, events, false).await
    }

    /// [`Self::apply_all`] for a schema being filled from nothing by one writer
    /// that never sees an event twice (`keyledger-replay rebuild`): audit rows
    /// arrive by `COPY`, which is several times cheaper than the idempotent
    /// `INSERT ... ON CONFLICT` but fails on a row that is already there.
    pub async fn apply_all_fresh(
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        Self::apply_events(conn, events, true).await
    }

    async fn apply_events(
        conn: &mut PgConnection,
        events: &[StoredEvent],
        fresh: bool,
    ) -> Result<(), FeedError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut decoded = Vec::with_capacity(events.len());
        let mut user_ids = Vec::new();
        let mut session_ids = Vec::new();
        // In a fresh schema, an aggregate whose first event is in this batch has
        // no row yet: no need to look for one.
        let mut born = std::collections::HashSet::new();
        for event in events {
            let payload = DomainPayload::decode(event)?;
            let id = match &payload {
                DomainPayload::User(_) | DomainPayload::Session(_) => {
                    let id: Uuid = event.aggregate_id.parse().map_err(|_| FeedError::Corrupt {
                        position: event.position,
                        reason: format!("{} id is not a uuid", event.aggregate_type),
                    })?;
                    if fresh && event.sequence == 1 {
                        born.insert(id);
                    } else if born.contains(&id) {
                        // Created earlier in this batch.
                    } else if matches!(payload, DomainPayload::User(_)) {
                        user_ids.push(id);
                    } else {
                        session_ids.push(id);
                    }
                    Some(id)
                }
                _ => None,
            };
            decoded.push((id, payload));
        }
        let mut users = Rows::<UserRow>::load(conn, user_ids).await?;
        let mut sessions = Rows::<SessionRow>::load(conn, session_ids).await?;

        let mut audit = AuditRows::with_capacity(events.len());
        let mut erased = Vec::new();
        for (event, (id, payload)) in events.iter().zip(&decoded) {
            let subject = match (payload, id) {
                (DomainPayload::User(e), Some(id)) => {
                    users.apply(*id, event.sequence, e);
                    if matches!(e, UserEvent::UserErased { .. }) {
                        erased.push(*id);
                    }
                    id.to_string()
                }
                (DomainPayload::Session(e), Some(id)) => {
                    sessions.apply(*id, event.sequence, e);
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
        users.save(conn).await?;
        sessions.save(conn).await?;
        if fresh {
            audit.copy(conn).await?;
        } else {
            audit.insert(conn).await?;
        }
        forget_erased(conn, &erased).await
    }
}

/// What the read models keep of an erased person: nothing personal. Their users
/// row goes (the audit trail keeps the fact of the erasure); in their sessions,
/// in audit rows of requests they made and in the details of events about them,
/// every personal value becomes `[erased]`. That is exactly what projecting the
/// same events after the erasure gives (the opener shows `[erased]` once the key
/// is gone), so a rebuild compares equal to these scrubbed tables.
async fn forget_erased(conn: &mut PgConnection, erased: &[Uuid]) -> Result<(), FeedError> {
    if erased.is_empty() {
        return Ok(());
    }
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
                               WHEN k IN ('email', 'display_name', 'ip', 'user_agent')
                                    AND jsonb_typeof(v) = 'string'
                               THEN to_jsonb($2::text) ELSE v END)
                             FROM jsonb_each(details) AS e(k, v))
          WHERE subject = ANY($1)
            AND details ?| ARRAY['email', 'display_name', 'ip', 'user_agent']",
    )
    .bind(&ids)
    .bind(keyledger_domain::ERASED)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whom an organization event is about: the member for membership changes (so that
/// a user's audit history shows being added to or removed from an organization).
fn organization_subject(
    event: &keyledger_domain::organization::OrganizationEvent,
) -> Option<String> {
    use keyledger_domain::organization::OrganizationEvent as E;
    match event {
        E::MemberAdded { user_id, .. }
        | E::MemberRemoved { user_id, .. }
        | E::MemberRolesChanged { user_id, .. } => Some(user_id.to_string()),
        _ => None,
    }
}

/// One read-model table as the batch fold sees it.
trait ReadModelRow: Sized + Clone {
    type Event;
    /// Loads the rows with these ids.
    async fn load(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<(Uuid, Self)>, sqlx::Error>;
    /// The row an aggregate's first event creates (`None` for any other event,
    /// which, like an `UPDATE` matching nothing, leaves no row).
    fn create(version: i64, event: &Self::Event) -> Option<Self>;
    fn version(&self) -> i64;
    /// Applies a later event (the caller has checked the version guard).
    fn update(&mut self, version: i64, event: &Self::Event);
    /// Upserts the rows, each only over an older version.
    async fn save(conn: &mut PgConnection, rows: Vec<(Uuid, Self)>) -> Result<(), sqlx::Error>;
}

/// The rows a batch touches, keyed by aggregate id, and which of them changed.
struct Rows<R> {
    rows: HashMap<Uuid, R>,
    changed: Vec<Uuid>,
}

impl<R: ReadModelRow> Rows<R> {
    async fn load(conn: &mut PgConnection, mut ids: Vec<Uuid>) -> Result<Self, sqlx::Error> {
        ids.sort_unstable();
        ids.dedup();
        let rows = if ids.is_empty() {
            HashMap::new()
        } else {
            R::load(conn, &ids).await?.into_iter().collect()
        };
        Ok(Self {
            rows,
            changed: Vec::new(),
        })
    }

    fn get(&self, id: &Uuid) -> Option<&R> {
        self.rows.get(id)
    }

    /// Exactly what the per-event statements did: the creating event inserts
    /// unless the row exists (`ON CONFLICT DO NOTHING`); any other event updates
    /// an existing row whose version is older than its sequence.
    fn apply(&mut self, id: Uuid, version: i64, event: &R::Event) {
        let changed = match self.rows.get_mut(&id) {
            Some(row) if row.version() < version => {
                row.update(version, event);
                true
            }
            Some(_) => false,
            None => match R::create(version, event) {
                Some(row) => {
                    self.rows.insert(id, row);
                    true
                }
                None => false,
            },
        };
        if changed {
            self.changed.push(id);
        }
    }

    async fn save(mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.changed.is_empty() {
            return Ok(());
        }
        self.changed.sort_unstable();
        self.changed.dedup();
        let rows = self
            .changed
            .iter()
            .filter_map(|id| self.rows.remove(id).map(|row| (*id, row)))
            .collect();
        R::save(conn, rows).await
    }
}

#[derive(Debug, Clone)]
struct UserRow {
    email: String,
    display_name: Option<String>,
    created_at: DateTime<Utc>,
    last_login_at: Option<DateTime<Utc>>,
    consecutive_failures: i32,
    locked_until: Option<DateTime<Utc>>,
    suspended: bool,
    platform_admin: bool,
    version: i64,
}

impl ReadModelRow for UserRow {
    type Event = UserEvent;

    async fn load(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<(Uuid, Self)>, sqlx::Error> {
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

    fn create(version: i64, event: &UserEvent) -> Option<Self> {
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

    fn update(&mut self, version: i64, event: &UserEvent) {
        match event {
            // Registration never updates an existing row.
            UserEvent::UserRegistered { .. } => return,
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
struct SessionRow {
    user_id: Uuid,
    ip: Option<String>,
    user_agent: Option<String>,
    created_at: DateTime<Utc>,
    last_refreshed_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    refresh_count: i32,
    state: String,
    ended_at: Option<DateTime<Utc>>,
    end_reason: Option<String>,
    organization_id: Option<Uuid>,
    version: i64,
}

impl SessionRow {
    fn end(&mut self, state: &str, reason: String, at: DateTime<Utc>) {
        self.state = state.to_owned();
        self.end_reason = Some(reason);
        self.ended_at = Some(at);
    }
}

impl ReadModelRow for SessionRow {
    type Event = SessionEvent;

    async fn load(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<(Uuid, Self)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT session_id, user_id, ip, user_agent, created_at, last_refreshed_at,
                    expires_at, refresh_count, state, ended_at, end_reason, organization_id,
                    version
               FROM sessions WHERE session_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Self {
                        user_id: r.try_get(1)?,
                        ip: r.try_get(2)?,
                        user_agent: r.try_get(3)?,
                        created_at: r.try_get(4)?,
                        last_refreshed_at: r.try_get(5)?,
                        expires_at: r.try_get(6)?,
                        refresh_count: r.try_get(7)?,
                        state: r.try_get(8)?,
                        ended_at: r.try_get(9)?,
                        end_reason: r.try_get(10)?,
                        organization_id: r.try_get(11)?,
                        version: r.try_get(12)?,
                    },
                ))
            })
            .collect()
    }

    fn create(version: i64, event: &SessionEvent) -> Option<Self> {
        match event {
            SessionEvent::SessionStarted {
                user_id,
                device,
                started_at,
                expires_at,
                ..
            } => Some(Self {
                user_id: *user_id,
                ip: device.ip.as_ref().map(|p| p.as_str().to_owned()),
                user_agent: device.user_agent.as_ref().map(|p| p.as_str().to_owned()),
                created_at: *started_at,
                last_refreshed_at: None,
                expires_at: *expires_at,
                refresh_count: 0,
                state: "active".to_owned(),
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

    fn update(&mut self, version: i64, event: &SessionEvent) {
        match event {
            // A start never updates an existing row.
            SessionEvent::SessionStarted { .. } => return,
            SessionEvent::TokenRefreshed { generation, at, .. } => {
                self.last_refreshed_at = Some(*at);
                self.refresh_count = *generation as i32;
            }
            SessionEvent::RefreshTokenReuseDetected { .. } => {}
            SessionEvent::SessionRevoked { reason, at } => {
                let reason = serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.end("revoked", reason, *at);
            }
            SessionEvent::UserLoggedOut { at } => self.end("logged_out", "logout".into(), *at),
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
            c.ip.push(row.ip);
            c.user_agent.push(row.user_agent);
            c.created_at.push(row.created_at);
            c.last_refreshed_at.push(row.last_refreshed_at);
            c.expires_at.push(row.expires_at);
            c.refresh_count.push(row.refresh_count);
            c.state.push(row.state);
            c.ended_at.push(row.ended_at);
            c.end_reason.push(row.end_reason);
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
struct AuditRows {
    position: Vec<i64>,
    occurred_at: Vec<chrono::DateTime<chrono::Utc>>,
    actor: Vec<String>,
    subject: Vec<String>,
    action: Vec<String>,
    outcome: Vec<String>,
    ip: Vec<Option<String>>,
    user_agent: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    details: Vec<Value>,
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

    /// The rows as `COPY ... FROM STDIN` text (see [`ReadModels::apply_all_fresh`]).
    async fn copy(self, conn: &mut PgConnection) -> Result<(), FeedError> {
        if self.position.is_empty() {
            return Ok(());
        }
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

    async fn insert(self, conn: &mut PgConnection) -> Result<(), FeedError> {
        if self.position.is_empty() {
            return Ok(());
        }
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
/// control characters are legal in text and JSON strings escape their own).
fn copy_escape(out: &mut Vec<u8>, data: &[u8]) {
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
