//! The few questions the write side asks the event log directly, without
//! replaying an aggregate (decision 0011, #22–24): each is one indexed read that
//! would otherwise cost a replay on a hot path, and each must see writes of other
//! aggregates committed a moment ago, which no cached state does.

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use keyledger_storage::EmbeddedDatabase;
use keyledger_storage::{Database, Engine};

/// Direct reads of the event log, on either back end.
#[derive(Clone)]
pub enum EventLogLookups {
    Postgres(PgPool),
    Sqlite(EmbeddedDatabase),
}

impl EventLogLookups {
    pub fn new(storage: &Database) -> Self {
        match storage.engine() {
            Engine::Postgres(pool) => Self::Postgres(pool.clone()),
            Engine::Embedded(database) => Self::Sqlite(database.clone()),
        }
    }

    /// The type of the user's event after `sequence` that decides whether the
    /// account is blocked: `UserErased` if there is one, else the latest of
    /// `UserSuspended` and `UserReactivated`; `None` when there is neither.
    pub async fn user_blocking_event_after(
        &self,
        user_id: Uuid,
        sequence: usize,
    ) -> Result<Option<String>, sqlx::Error> {
        // Portable SQL: a boolean orders as 0/1 on both back ends.
        const SQL: &str = "SELECT event_type FROM events
              WHERE aggregate_type = 'user' AND aggregate_id = $1 AND sequence > $2
                AND event_type IN ('UserSuspended', 'UserReactivated', 'UserErased')
              ORDER BY (event_type = 'UserErased') DESC, sequence DESC LIMIT 1";
        let after = i64::try_from(sequence).unwrap_or(i64::MAX);
        match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(user_id.to_string())
                    .bind(after)
                    .fetch_optional(pool)
                    .await
            }
            Self::Sqlite(database) => {
                sqlx::query_scalar(SQL)
                    .bind(user_id.to_string())
                    .bind(after)
                    .fetch_optional(database.readers())
                    .await
            }
        }
    }

    /// Sessions of `user_id` that have not ended or expired, oldest first (the
    /// session cap ends the oldest). Both back ends use the
    /// `events_session_user_idx` expression index.
    pub async fn active_session_ids(&self, user_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        let ids: Vec<String> = match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT s.aggregate_id FROM events s
                      WHERE s.event_type = 'SessionStarted'
                        AND (s.payload -> 'SessionStarted' ->> 'user_id') = $1
                        AND s.aggregate_type = 'session'
                        AND (s.payload -> 'SessionStarted' ->> 'expires_at')::timestamptz > now()
                        AND NOT EXISTS (
                            SELECT 1 FROM events e
                             WHERE e.aggregate_type = 'session'
                               AND e.aggregate_id = s.aggregate_id
                               AND e.event_type IN ('SessionRevoked', 'UserLoggedOut'))
                      ORDER BY (s.payload -> 'SessionStarted' ->> 'started_at')::timestamptz,
                               s.aggregate_id",
                )
                .bind(user_id.to_string())
                .fetch_all(pool)
                .await?
            }
            Self::Sqlite(database) => {
                // `expires_at` is chrono's RFC 3339 text; unixepoch(…, 'subsec')
                // reads it (any number of fractional digits, `Z` or an offset) as
                // seconds with millisecond precision. The time is bound from Rust.
                sqlx::query_scalar(
                    "SELECT s.aggregate_id FROM events s
                      WHERE s.event_type = 'SessionStarted'
                        AND (s.payload ->> '$.SessionStarted.user_id') = $1
                        AND s.aggregate_type = 'session'
                        AND unixepoch(s.payload ->> '$.SessionStarted.expires_at', 'subsec') > $2
                        AND NOT EXISTS (
                            SELECT 1 FROM events e
                             WHERE e.aggregate_type = 'session'
                               AND e.aggregate_id = s.aggregate_id
                               AND e.event_type IN ('SessionRevoked', 'UserLoggedOut'))
                      ORDER BY unixepoch(s.payload ->> '$.SessionStarted.started_at', 'subsec'),
                               s.aggregate_id",
                )
                .bind(user_id.to_string())
                .bind(Utc::now().timestamp_micros() as f64 / 1e6)
                .fetch_all(database.readers())
                .await?
            }
        };
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Whether the organization's latest suspension or reactivation is a
    /// suspension.
    pub async fn organization_suspended(&self, organization_id: Uuid) -> Result<bool, sqlx::Error> {
        const SQL: &str = "SELECT event_type FROM events
              WHERE aggregate_type = 'organization' AND aggregate_id = $1
                AND event_type IN ('OrganizationSuspended', 'OrganizationReactivated')
              ORDER BY sequence DESC LIMIT 1";
        let latest: Option<String> = match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(organization_id.to_string())
                    .fetch_optional(pool)
                    .await?
            }
            Self::Sqlite(database) => {
                sqlx::query_scalar(SQL)
                    .bind(organization_id.to_string())
                    .fetch_optional(database.readers())
                    .await?
            }
        };
        Ok(latest.as_deref() == Some("OrganizationSuspended"))
    }
}
