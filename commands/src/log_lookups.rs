//! The few questions the write side asks the event log directly, without
//! replaying an aggregate: each is one indexed read that would otherwise cost a
//! replay on a hot path, and each must see writes of other aggregates committed
//! a moment ago, which no cached state does.

use std::sync::Arc;

use chrono::Utc;
use keyledger_storage::{with_readers, Database};
use uuid::Uuid;

/// Direct reads of the event log, on either back end.
#[derive(Clone)]
pub struct EventLogLookups {
    db: Database,
    /// The one query with dialect fragments, written once for the handle's
    /// back end.
    active_sessions: Arc<str>,
}

/// The organization's latest suspension or reactivation.
const ORGANIZATION_SUSPENSION: &str = "SELECT event_type FROM events
      WHERE aggregate_type = 'organization' AND aggregate_id = $1
        AND event_type IN ('OrganizationSuspended', 'OrganizationReactivated')
      ORDER BY sequence DESC LIMIT 1";

impl EventLogLookups {
    pub fn new(db: &Database) -> Self {
        let backend = db.backend();
        let started = |field| backend.json_text("s.payload", &["SessionStarted", field]);
        // The user id is read as each back end's `events_session_user_idx`
        // indexes it; the time is bound from Rust.
        let active_sessions = format!(
            "SELECT s.aggregate_id FROM events s
              WHERE s.event_type = 'SessionStarted'
                AND {user} = $1
                AND s.aggregate_type = 'session'
                AND {expires} > {now}
                AND NOT EXISTS (
                    SELECT 1 FROM events e
                     WHERE e.aggregate_type = 'session'
                       AND e.aggregate_id = s.aggregate_id
                       AND e.event_type IN ('SessionRevoked', 'UserLoggedOut'))
              ORDER BY {started}, s.aggregate_id",
            user = started("user_id"),
            expires = backend.instant(&started("expires_at")),
            now = backend.instant("$2"),
            started = backend.instant(&started("started_at")),
        );
        Self {
            db: db.clone(),
            active_sessions: active_sessions.into(),
        }
    }

    /// Sessions of `user_id` that have not ended or expired, oldest first (the
    /// session cap ends the oldest). Both back ends use the
    /// `events_session_user_idx` expression index.
    pub async fn active_session_ids(&self, user_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        let now = Utc::now();
        let ids: Vec<String> = with_readers!(self.db, |pool| {
            sqlx::query_scalar(&self.active_sessions)
                .bind(user_id.to_string())
                .bind(now)
                .fetch_all(pool)
                .await?
        });
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Whether the organization's latest suspension or reactivation is a
    /// suspension.
    pub async fn organization_suspended(&self, organization_id: Uuid) -> Result<bool, sqlx::Error> {
        let latest: Option<String> = with_readers!(self.db, |pool| {
            sqlx::query_scalar(ORGANIZATION_SUSPENSION)
                .bind(organization_id.to_string())
                .fetch_optional(pool)
                .await?
        });
        Ok(latest.as_deref() == Some("OrganizationSuspended"))
    }
}
