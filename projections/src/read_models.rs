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

use keyledger_domain::{SessionEvent, UserEvent};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::feed::{FeedError, Position, StoredEvent};
use crate::integration::public_data;

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

    /// Projects events in order. Round trips are what limits a projector, so the
    /// owners of the sessions concerned are read in one query and the audit rows
    /// are written in one statement; the read-model updates stay one per event,
    /// because their sequence guards depend on order.
    pub async fn apply_all(
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> Result<(), FeedError> {
        let mut owners = session_owners(conn, events).await?;
        let mut audit = AuditRows::default();
        for event in events {
            let corrupt = |reason: String| FeedError::Corrupt {
                position: event.position,
                reason,
            };
            let subject = match event.aggregate_type.as_str() {
                "user" => {
                    let payload: UserEvent = serde_json::from_value(event.payload.clone())
                        .map_err(|e| corrupt(crate::feed::describe_payload_error(&e)))?;
                    let user_id: Uuid = event
                        .aggregate_id
                        .parse()
                        .map_err(|_| corrupt("user id is not a uuid".into()))?;
                    project_user(conn, user_id, event.sequence, &payload).await?;
                    user_id.to_string()
                }
                "session" => {
                    let payload: SessionEvent = serde_json::from_value(event.payload.clone())
                        .map_err(|e| corrupt(crate::feed::describe_payload_error(&e)))?;
                    let session_id: Uuid = event
                        .aggregate_id
                        .parse()
                        .map_err(|_| corrupt("session id is not a uuid".into()))?;
                    if let SessionEvent::SessionStarted { user_id, .. } = &payload {
                        owners.insert(session_id, *user_id);
                    }
                    project_session(conn, session_id, event.sequence, &payload).await?;
                    owners
                        .get(&session_id)
                        .map_or_else(|| event.aggregate_id.clone(), Uuid::to_string)
                }
                // Organizations, roles and service accounts are served from the
                // in-memory access view; here they only reach the audit trail.
                "organization" => {
                    let payload: keyledger_domain::organization::OrganizationEvent =
                        serde_json::from_value(event.payload.clone())
                            .map_err(|e| corrupt(crate::feed::describe_payload_error(&e)))?;
                    organization_subject(&payload).unwrap_or_else(|| event.aggregate_id.clone())
                }
                "role" | "service_account" => event.aggregate_id.clone(),
                other => return Err(corrupt(format!("unknown aggregate type {other}"))),
            };
            audit.push(event, subject, public_data(event)?);
        }
        audit.insert(conn).await
    }
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

/// The users owning the sessions that `events` touch, as far as the read model
/// already knows them (sessions started in the same batch are added as they come).
async fn session_owners(
    conn: &mut PgConnection,
    events: &[StoredEvent],
) -> Result<HashMap<Uuid, Uuid>, FeedError> {
    let ids: Vec<Uuid> = events
        .iter()
        .filter(|e| e.aggregate_type == "session" && e.event_type != "SessionStarted")
        .filter_map(|e| e.aggregate_id.parse().ok())
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT session_id, user_id FROM sessions WHERE session_id = ANY($1)")
            .bind(&ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

async fn project_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    version: i64,
    event: &UserEvent,
) -> Result<(), sqlx::Error> {
    let guarded = |sql: &str| {
        format!("UPDATE users SET {sql}, version = $2 WHERE user_id = $1 AND version < $2")
    };
    match event {
        UserEvent::UserRegistered {
            email,
            display_name,
            registered_at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO users (user_id, email, display_name, created_at, version)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user_id)
            .bind(email.as_str())
            .bind(display_name.as_ref().map(|n| n.as_str()))
            .bind(registered_at)
            .bind(version)
            .execute(conn)
            .await?;
        }
        UserEvent::UserLoggedIn { at, .. } => {
            sqlx::query(&guarded(
                "last_login_at = $3, consecutive_failures = 0, locked_until = NULL",
            ))
            .bind(user_id)
            .bind(version)
            .bind(at)
            .execute(conn)
            .await?;
        }
        UserEvent::LoginFailed {
            consecutive_failures,
            ..
        } => {
            sqlx::query(&guarded(
                "consecutive_failures = $3,
                 locked_until = CASE WHEN $3 = 1 THEN NULL ELSE locked_until END",
            ))
            .bind(user_id)
            .bind(version)
            .bind(*consecutive_failures as i32)
            .execute(conn)
            .await?;
        }
        UserEvent::AccountLocked { locked_until, .. } => {
            sqlx::query(&guarded("locked_until = $3"))
                .bind(user_id)
                .bind(version)
                .bind(locked_until)
                .execute(conn)
                .await?;
        }
        UserEvent::AccountUnlocked { .. } => {
            sqlx::query(&guarded("locked_until = NULL, consecutive_failures = 0"))
                .bind(user_id)
                .bind(version)
                .execute(conn)
                .await?;
        }
        UserEvent::UserSuspended { .. } | UserEvent::UserReactivated { .. } => {
            let suspended = matches!(event, UserEvent::UserSuspended { .. });
            sqlx::query(&guarded("suspended = $3"))
                .bind(user_id)
                .bind(version)
                .bind(suspended)
                .execute(conn)
                .await?;
        }
        UserEvent::PlatformAdminGranted { .. } | UserEvent::PlatformAdminRevoked { .. } => {
            let granted = matches!(event, UserEvent::PlatformAdminGranted { .. });
            sqlx::query(&guarded("platform_admin = $3"))
                .bind(user_id)
                .bind(version)
                .bind(granted)
                .execute(conn)
                .await?;
        }
        UserEvent::PasswordChanged { .. } | UserEvent::PasswordRehashed { .. } => {
            sqlx::query("UPDATE users SET version = $2 WHERE user_id = $1 AND version < $2")
                .bind(user_id)
                .bind(version)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

async fn project_session(
    conn: &mut PgConnection,
    session_id: Uuid,
    version: i64,
    event: &SessionEvent,
) -> Result<(), sqlx::Error> {
    match event {
        SessionEvent::SessionStarted {
            user_id,
            device,
            started_at,
            expires_at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO sessions (session_id, user_id, ip, user_agent, created_at,
                                       expires_at, state, version)
                 VALUES ($1, $2, $3, $4, $5, $6, 'active', $7)
                 ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(session_id)
            .bind(user_id)
            .bind(&device.ip)
            .bind(&device.user_agent)
            .bind(started_at)
            .bind(expires_at)
            .bind(version)
            .execute(conn)
            .await?;
        }
        SessionEvent::TokenRefreshed { generation, at, .. } => {
            sqlx::query(
                "UPDATE sessions SET last_refreshed_at = $3, refresh_count = $4, version = $2
                  WHERE session_id = $1 AND version < $2",
            )
            .bind(session_id)
            .bind(version)
            .bind(at)
            .bind(*generation as i32)
            .execute(conn)
            .await?;
        }
        SessionEvent::RefreshTokenReuseDetected { .. } => {
            sqlx::query("UPDATE sessions SET version = $2 WHERE session_id = $1 AND version < $2")
                .bind(session_id)
                .bind(version)
                .execute(conn)
                .await?;
        }
        SessionEvent::SessionRevoked { reason, at } => {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            end_session(conn, session_id, version, "revoked", &reason, at).await?;
        }
        SessionEvent::UserLoggedOut { at } => {
            end_session(conn, session_id, version, "logged_out", "logout", at).await?;
        }
        SessionEvent::OrganizationSelected {
            organization_id, ..
        } => {
            sqlx::query(
                "UPDATE sessions SET organization_id = $3, version = $2
                  WHERE session_id = $1 AND version < $2",
            )
            .bind(session_id)
            .bind(version)
            .bind(organization_id)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

async fn end_session(
    conn: &mut PgConnection,
    session_id: Uuid,
    version: i64,
    state: &str,
    reason: &str,
    at: &chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sessions SET state = $3, end_reason = $4, ended_at = $5, version = $2
          WHERE session_id = $1 AND version < $2",
    )
    .bind(session_id)
    .bind(version)
    .bind(state)
    .bind(reason)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
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
#[derive(Default)]
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
