//! Every read the handlers make of the read models, on either back end.
//!
//! One enum with a `match` per method, so that a query cannot exist on
//! one back end only, and the handlers never see SQL. The PostgreSQL arm runs the
//! statements the handlers ran before; the SQLite arm runs their counterparts over
//! the same table and column names, with ids as TEXT, times as TEXT bound from Rust
//! (RFC 3339 in UTC sorts chronologically), and `details` as JSON text.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyledger_projections::ReadStore;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::query::Query;
use sqlx::sqlite::SqliteRow;
use sqlx::{Database, Encode, PgPool, Row, SqlitePool, Type};
use uuid::Uuid;

use crate::resources::admin::UserSummary;
use crate::resources::audit::AuditEvent;
use crate::resources::auth::Account;
use crate::resources::sessions::SessionInfo;

/// The read-model queries of the API.
#[derive(Clone, Debug)]
pub enum ReadModelQueries {
    Postgres(PgPool),
    /// The embedded store's read-only pool: reads never queue behind the writer.
    Sqlite(SqlitePool),
}

/// The filters of `GET /v1/audit/events`, already validated.
#[derive(Debug, Default)]
pub struct AuditFilter<'a> {
    pub actor: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub action: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only rows before this log position (the page cursor).
    pub before: Option<i64>,
    /// Only this organization's rows.
    pub organization: Option<Uuid>,
    /// How many rows at most.
    pub rows: i64,
}

/// An account's email and display name, for member lists.
pub type MemberName = (String, Option<String>);

impl ReadModelQueries {
    /// The queries over a read side's storage.
    pub fn new(store: &ReadStore) -> Self {
        match store {
            ReadStore::Postgres(pool) => Self::Postgres(pool.clone()),
            ReadStore::Sqlite(sqlite) => Self::Sqlite(sqlite.readers.clone()),
        }
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            // `SELECT 1` would not touch the file: read a page of it instead.
            Self::Sqlite(pool) => sqlx::query("SELECT 1 FROM projection_checkpoints LIMIT 1")
                .execute(pool)
                .await
                .map(drop),
        }
    }

    /// The account's active sessions other than `except` (ended by a password
    /// change).
    pub async fn other_active_sessions(
        &self,
        user: Uuid,
        except: Uuid,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        const SQL: &str = "SELECT session_id FROM sessions
          WHERE user_id = $1 AND state = 'active' AND session_id <> $2";
        match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar(SQL)
                    .bind(user)
                    .bind(except)
                    .fetch_all(pool)
                    .await
            }
            Self::Sqlite(pool) => {
                let ids: Vec<String> = sqlx::query_scalar(SQL)
                    .bind(text_id(user))
                    .bind(text_id(except))
                    .fetch_all(pool)
                    .await?;
                ids.iter().map(|id| parse_id("session_id", id)).collect()
            }
        }
    }

    /// An account as its owner sees it (`GET /v1/auth/me`).
    pub async fn account(&self, user: Uuid) -> Result<Option<Account>, sqlx::Error> {
        const SQL: &str =
            "SELECT user_id, email, display_name, created_at FROM users WHERE user_id = $1";
        match self {
            Self::Postgres(pool) => {
                let row = sqlx::query(SQL).bind(user).fetch_optional(pool).await?;
                row.as_ref().map(account).transpose()
            }
            Self::Sqlite(pool) => {
                let row = sqlx::query(SQL)
                    .bind(text_id(user))
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(account).transpose()
            }
        }
    }

    /// An account's sessions, newest first (at most 200); an active session past
    /// its expiry at `now` shows as `expired`.
    pub async fn sessions(
        &self,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<SessionInfo>, sqlx::Error> {
        const SQL: &str =
            "SELECT session_id, ip, user_agent, created_at, last_refreshed_at, expires_at,
                CASE WHEN state = 'active' AND expires_at <= $2 THEN 'expired' ELSE state END
                    AS state,
                ended_at, end_reason
           FROM sessions WHERE user_id = $1
          ORDER BY created_at DESC LIMIT 200";
        match self {
            Self::Postgres(pool) => {
                let rows = sqlx::query(SQL)
                    .bind(user)
                    .bind(now)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(session).collect()
            }
            Self::Sqlite(pool) => {
                let rows = sqlx::query(SQL)
                    .bind(text_id(user))
                    .bind(now)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(session).collect()
            }
        }
    }

    /// Accounts whose email or lower-cased display name matches the LIKE
    /// `pattern` (backslash escapes), ordered by email, after `after`.
    ///
    /// Emails are stored normalised (lower-case), so SQLite's ASCII-case-blind
    /// LIKE and PostgreSQL's case-sensitive one agree on them. Display names
    /// differ outside ASCII: SQLite's `lower()` folds ASCII only.
    pub async fn search_users(
        &self,
        pattern: &str,
        after: Option<&str>,
        rows: i64,
    ) -> Result<Vec<UserSummary>, sqlx::Error> {
        // No casts: sqlx sends each parameter's type, so both back ends read the
        // same text.
        const SQL: &str =
            "SELECT user_id, email, display_name, created_at, last_login_at, locked_until,
                    suspended, platform_admin
               FROM users
              WHERE (email LIKE $1 ESCAPE '\\'
                     OR lower(coalesce(display_name, '')) LIKE $1 ESCAPE '\\')
                AND ($2 IS NULL OR email > $2)
              ORDER BY email
              LIMIT $3";
        match self {
            Self::Postgres(pool) => {
                let found = sqlx::query(SQL)
                    .bind(pattern)
                    .bind(after)
                    .bind(rows)
                    .fetch_all(pool)
                    .await?;
                found.iter().map(user_summary).collect()
            }
            Self::Sqlite(pool) => {
                let found = sqlx::query(SQL)
                    .bind(pattern)
                    .bind(after)
                    .bind(rows)
                    .fetch_all(pool)
                    .await?;
                found.iter().map(user_summary).collect()
            }
        }
    }

    /// One account as a platform administrator sees it.
    pub async fn user(&self, user: Uuid) -> Result<Option<UserSummary>, sqlx::Error> {
        const SQL: &str =
            "SELECT user_id, email, display_name, created_at, last_login_at, locked_until,
                suspended, platform_admin
           FROM users WHERE user_id = $1";
        match self {
            Self::Postgres(pool) => {
                let row = sqlx::query(SQL).bind(user).fetch_optional(pool).await?;
                row.as_ref().map(user_summary).transpose()
            }
            Self::Sqlite(pool) => {
                let row = sqlx::query(SQL)
                    .bind(text_id(user))
                    .fetch_optional(pool)
                    .await?;
                row.as_ref().map(user_summary).transpose()
            }
        }
    }

    /// Rows of the audit trail, newest first.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter<'_>,
    ) -> Result<Vec<AuditEvent>, sqlx::Error> {
        // No casts: sqlx sends each parameter's type, so both back ends read the
        // same text (times compare as timestamptz on PostgreSQL and as RFC 3339
        // text in UTC on SQLite, which sorts the same).
        // In an organization's view, someone acting only on their own membership
        // (accepting or declining an invitation, leaving) is not the
        // organization's to trace: such rows (actor = subject, the member) show
        // no address or user agent. The whole trail (no organization filter,
        // platform administrators only) keeps them.
        const SQL: &str = "SELECT global_position, occurred_at, actor, subject, action, outcome,
                    CASE WHEN $8 IS NOT NULL AND aggregate_type = 'organization'
                              AND actor = subject THEN NULL ELSE ip END AS ip,
                    CASE WHEN $8 IS NOT NULL AND aggregate_type = 'organization'
                              AND actor = subject THEN NULL ELSE user_agent END AS user_agent,
                    request_id, aggregate_type, aggregate_id, sequence, details
               FROM audit_trail
              WHERE ($1 IS NULL OR actor = $1)
                AND ($2 IS NULL OR subject = $2)
                AND ($3 IS NULL OR action = $3)
                AND ($4 IS NULL OR outcome = $4)
                AND ($5 IS NULL OR occurred_at >= $5)
                AND ($6 IS NULL OR occurred_at <= $6)
                AND ($7 IS NULL OR global_position < $7)
                AND ($8 IS NULL
                     OR (aggregate_type = 'organization' AND aggregate_id = $8)
                     OR (aggregate_type IN ('role', 'service_account') AND aggregate_id IN (
                            SELECT aggregate_id FROM audit_trail
                             WHERE action IN ('RoleDefined', 'ServiceAccountCreated')
                               AND details ->> 'organization_id' = $8)))
              ORDER BY global_position DESC
              LIMIT $9";
        let organization = filter.organization.map(text_id);
        match self {
            Self::Postgres(pool) => {
                let rows = bind_audit_filter(sqlx::query(SQL), filter, organization)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(audit_event).collect()
            }
            Self::Sqlite(pool) => {
                let rows = bind_audit_filter(sqlx::query(SQL), filter, organization)
                    .fetch_all(pool)
                    .await?;
                rows.iter().map(audit_event).collect()
            }
        }
    }

    /// Emails and display names of the given accounts (one query for all); an
    /// id without a row (not projected yet, or erased) is absent.
    pub async fn member_names(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, MemberName>, sqlx::Error> {
        let rows: Vec<(Uuid, String, Option<String>)> = match self {
            Self::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT user_id, email, display_name FROM users WHERE user_id = ANY($1)",
                )
                .bind(ids)
                .fetch_all(pool)
                .await?
            }
            Self::Sqlite(pool) => {
                let list =
                    serde_json::to_string(&ids.iter().map(|id| text_id(*id)).collect::<Vec<_>>())
                        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                    "SELECT user_id, email, display_name FROM users
                      WHERE user_id IN (SELECT value FROM json_each($1))",
                )
                .bind(list)
                .fetch_all(pool)
                .await?;
                rows.into_iter()
                    .map(|(id, email, name)| Ok((parse_id("user_id", &id)?, email, name)))
                    .collect::<Result<_, sqlx::Error>>()?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(id, email, name)| (id, (email, name)))
            .collect())
    }
}

/// Binds `$1`..`$9` of the audit query, the same on both back ends.
fn bind_audit_filter<'q, DB: Database>(
    query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    filter: &AuditFilter<'q>,
    organization: Option<String>,
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
    Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    query
        .bind(filter.actor)
        .bind(filter.subject)
        .bind(filter.action)
        .bind(filter.outcome)
        .bind(filter.from)
        .bind(filter.to)
        .bind(filter.before)
        .bind(organization)
        .bind(filter.rows)
}

/// An id as the embedded store keeps it: lower-case hyphenated text.
fn text_id(id: Uuid) -> String {
    id.hyphenated().to_string()
}

fn parse_id(column: &str, text: &str) -> Result<Uuid, sqlx::Error> {
    text.parse().map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}

/// Typed column access that hides how each back end stores ids and JSON, so each
/// response type has one decoder for both.
trait ReadRow {
    fn uuid(&self, column: &str) -> Result<Uuid, sqlx::Error>;
    fn json(&self, column: &str) -> Result<Value, sqlx::Error>;
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn time(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error>;
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
}

/// The accessors whose column types decode the same way on both back ends.
macro_rules! common_columns {
    () => {
        fn text(&self, column: &str) -> Result<String, sqlx::Error> {
            self.try_get(column)
        }
        fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
            self.try_get(column)
        }
        fn time(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
            self.try_get(column)
        }
        fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
            self.try_get(column)
        }
        fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
            self.try_get(column)
        }
        fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
            self.try_get(column)
        }
    };
}

impl ReadRow for PgRow {
    fn uuid(&self, column: &str) -> Result<Uuid, sqlx::Error> {
        self.try_get(column)
    }
    fn json(&self, column: &str) -> Result<Value, sqlx::Error> {
        self.try_get(column)
    }
    common_columns!();
}

impl ReadRow for SqliteRow {
    fn uuid(&self, column: &str) -> Result<Uuid, sqlx::Error> {
        parse_id(column, &self.try_get::<String, _>(column)?)
    }
    fn json(&self, column: &str) -> Result<Value, sqlx::Error> {
        let text: String = self.try_get(column)?;
        serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
    }
    common_columns!();
}

fn account(r: &impl ReadRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        user_id: r.uuid("user_id")?,
        email: r.text("email")?,
        display_name: r.opt_text("display_name")?,
        created_at: r.time("created_at")?,
    })
}

fn session(r: &impl ReadRow) -> Result<SessionInfo, sqlx::Error> {
    Ok(SessionInfo {
        session_id: r.uuid("session_id")?,
        ip: r.opt_text("ip")?,
        user_agent: r.opt_text("user_agent")?,
        created_at: r.time("created_at")?,
        last_refreshed_at: r.opt_time("last_refreshed_at")?,
        expires_at: r.time("expires_at")?,
        state: r.text("state")?,
        ended_at: r.opt_time("ended_at")?,
        end_reason: r.opt_text("end_reason")?,
        current: false,
    })
}

fn user_summary(r: &impl ReadRow) -> Result<UserSummary, sqlx::Error> {
    Ok(UserSummary {
        user_id: r.uuid("user_id")?,
        email: r.text("email")?,
        display_name: r.opt_text("display_name")?,
        created_at: r.time("created_at")?,
        last_login_at: r.opt_time("last_login_at")?,
        locked_until: r.opt_time("locked_until")?,
        suspended: r.flag("suspended")?,
        platform_admin: r.flag("platform_admin")?,
    })
}

fn audit_event(r: &impl ReadRow) -> Result<AuditEvent, sqlx::Error> {
    Ok(AuditEvent {
        global_position: r.int("global_position")?,
        occurred_at: r.time("occurred_at")?,
        actor: r.text("actor")?,
        subject: r.text("subject")?,
        action: r.text("action")?,
        outcome: r.text("outcome")?,
        ip: r.opt_text("ip")?,
        user_agent: r.opt_text("user_agent")?,
        request_id: r.opt_text("request_id")?,
        aggregate_type: r.text("aggregate_type")?,
        aggregate_id: r.text("aggregate_id")?,
        sequence: r.int("sequence")?,
        details: r.json("details")?,
    })
}

#[cfg(test)]
mod tests {
    //! The SQLite arm against the read-model tables as the embedded store defines
    //! them (same names as `projections/sql/read_models.sql`, SQLite types). The
    //! PostgreSQL arm is exercised by the e2e suite through the handlers.

    use chrono::Duration;
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;

    async fn store() -> (SqlitePool, ReadModelQueries) {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        // The real read-model tables, not a copy of their DDL.
        keyledger_projections::SqliteReadModels::install(&pool)
            .await
            .unwrap();
        (pool.clone(), ReadModelQueries::Sqlite(pool))
    }

    #[tokio::test]
    async fn the_embedded_readiness_ping_reads_the_store() {
        let (_, queries) = store().await;
        queries.ping().await.unwrap();
        // A database without the read models (a wrong or emptied file) is not ready.
        let empty = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        assert!(ReadModelQueries::Sqlite(empty).ping().await.is_err());
    }

    async fn user(pool: &SqlitePool, id: Uuid, email: &str, name: Option<&str>, at: DateTime<Utc>) {
        sqlx::query(
            "INSERT INTO users (user_id, email, display_name, created_at, locked_until,
                                platform_admin, version)
             VALUES ($1, $2, $3, $4, $5, $6, 1)",
        )
        .bind(id.to_string())
        .bind(email)
        .bind(name)
        .bind(at)
        .bind(Some(at + Duration::minutes(30)))
        .bind(email.starts_with("admin"))
        .execute(pool)
        .await
        .unwrap();
    }

    async fn session(
        pool: &SqlitePool,
        id: Uuid,
        user: Uuid,
        created: DateTime<Utc>,
        expires: DateTime<Utc>,
        state: &str,
    ) {
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, ip, created_at, expires_at, state, version)
             VALUES ($1, $2, '127.0.0.1', $3, $4, $5, 1)",
        )
        .bind(id.to_string())
        .bind(user.to_string())
        .bind(created)
        .bind(expires)
        .bind(state)
        .execute(pool)
        .await
        .unwrap();
    }

    async fn audit(
        pool: &SqlitePool,
        position: i64,
        at: DateTime<Utc>,
        action: &str,
        aggregate: (&str, String),
        details: Value,
    ) {
        sqlx::query(
            "INSERT INTO audit_trail (global_position, occurred_at, actor, subject, action,
                                      outcome, aggregate_type, aggregate_id, sequence, details)
             VALUES ($1, $2, 'someone', $3, $4, 'success', $5, $3, 1, $6)",
        )
        .bind(position)
        .bind(at)
        .bind(aggregate.1)
        .bind(action)
        .bind(aggregate.0)
        .bind(details.to_string())
        .execute(pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn accounts_and_sessions_read_back_with_ids_and_times_intact() {
        let (pool, queries) = store().await;
        queries.ping().await.unwrap();
        let now = Utc::now();
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        user(&pool, ada, "ada@example.com", Some("Ada"), now).await;
        user(&pool, bob, "bob@example.com", None, now).await;

        let account = queries.account(ada).await.unwrap().unwrap();
        assert_eq!(account.user_id, ada);
        assert_eq!(account.email, "ada@example.com");
        assert_eq!(account.display_name.as_deref(), Some("Ada"));
        assert_eq!(account.created_at, now);
        assert!(queries.account(Uuid::new_v4()).await.unwrap().is_none());

        let (current, lapsed, ended, other) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let hour = Duration::hours(1);
        session(&pool, current, ada, now - hour, now + hour, "active").await;
        // Past its expiry by a fraction of a second: the text comparison must see it.
        session(
            &pool,
            lapsed,
            ada,
            now - hour * 3,
            now - Duration::milliseconds(1),
            "active",
        )
        .await;
        session(&pool, ended, ada, now - hour * 2, now + hour, "revoked").await;
        session(&pool, other, bob, now, now + hour, "active").await;

        let sessions = queries.sessions(ada, now).await.unwrap();
        let listed: Vec<(Uuid, &str)> = sessions
            .iter()
            .map(|s| (s.session_id, s.state.as_str()))
            .collect();
        assert_eq!(
            listed,
            [(current, "active"), (ended, "revoked"), (lapsed, "expired")],
            "newest first; a lapsed active session shows as expired"
        );
        assert_eq!(sessions[0].expires_at, now + hour);
        assert_eq!(sessions[0].ip.as_deref(), Some("127.0.0.1"));

        let mut others = queries.other_active_sessions(ada, current).await.unwrap();
        others.sort();
        assert_eq!(others, [lapsed]);
    }

    #[tokio::test]
    async fn user_search_escapes_wildcards_and_pages_by_email() {
        let (pool, queries) = store().await;
        let now = Utc::now();
        let admin = Uuid::new_v4();
        user(&pool, admin, "admin@example.com", Some("Grace HOPPER"), now).await;
        user(&pool, Uuid::new_v4(), "a_b@example.com", None, now).await;
        user(&pool, Uuid::new_v4(), "axb@example.com", None, now).await;
        user(
            &pool,
            Uuid::new_v4(),
            "zed@example.com",
            Some("100% Zed"),
            now,
        )
        .await;

        let emails =
            |found: Vec<UserSummary>| found.into_iter().map(|u| u.email).collect::<Vec<_>>();
        // `_` escaped matches itself only, not any character.
        assert_eq!(
            emails(queries.search_users("%a\\_b%", None, 10).await.unwrap()),
            ["a_b@example.com"]
        );
        assert_eq!(
            emails(queries.search_users("%100\\%%", None, 10).await.unwrap()),
            ["zed@example.com"]
        );
        // Display names are compared lower-cased.
        assert_eq!(
            emails(queries.search_users("%hopper%", None, 10).await.unwrap()),
            ["admin@example.com"]
        );
        assert_eq!(
            emails(
                queries
                    .search_users("%", Some("admin@example.com"), 2)
                    .await
                    .unwrap()
            ),
            ["axb@example.com", "zed@example.com"]
        );
        let found = queries.user(admin).await.unwrap().unwrap();
        assert!(found.platform_admin && !found.suspended);
        assert_eq!(found.locked_until, Some(now + Duration::minutes(30)));
        assert!(queries.user(Uuid::new_v4()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn member_names_come_in_one_query_for_all() {
        let (pool, queries) = store().await;
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        user(&pool, ada, "ada@example.com", Some("Ada"), Utc::now()).await;
        user(&pool, bob, "bob@example.com", None, Utc::now()).await;
        let names = queries
            .member_names(&[ada, bob, Uuid::new_v4()])
            .await
            .unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names[&ada], ("ada@example.com".into(), Some("Ada".into())));
        assert_eq!(names[&bob], ("bob@example.com".into(), None));
        assert!(queries.member_names(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_audit_trail_filters_by_time_cursor_and_organization() {
        let (pool, queries) = store().await;
        let start = Utc::now();
        let (org, other_org, role) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let at = |n: i64| start + Duration::milliseconds(n * 250);
        audit(
            &pool,
            1,
            at(1),
            "OrganizationCreated",
            ("organization", org.to_string()),
            Value::Null,
        )
        .await;
        audit(
            &pool,
            2,
            at(2),
            "RoleDefined",
            ("role", role.to_string()),
            serde_json::json!({"organization_id": org}),
        )
        .await;
        audit(
            &pool,
            3,
            at(3),
            "RoleUpdated",
            ("role", role.to_string()),
            serde_json::json!({}),
        )
        .await;
        audit(
            &pool,
            4,
            at(4),
            "OrganizationCreated",
            ("organization", other_org.to_string()),
            Value::Null,
        )
        .await;
        audit(
            &pool,
            5,
            at(5),
            "UserRegistered",
            ("user", Uuid::new_v4().to_string()),
            serde_json::json!({"email": "x"}),
        )
        .await;

        let positions =
            |rows: Vec<AuditEvent>| rows.iter().map(|r| r.global_position).collect::<Vec<_>>();
        let all = queries
            .audit_events(&AuditFilter {
                rows: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all[0].details, serde_json::json!({"email": "x"}));
        assert_eq!(all[0].occurred_at, at(5));
        assert_eq!(positions(all), [5, 4, 3, 2, 1]);
        let mine = AuditFilter {
            organization: Some(org),
            rows: 10,
            ..Default::default()
        };
        assert_eq!(
            positions(queries.audit_events(&mine).await.unwrap()),
            [3, 2, 1]
        );
        let page = AuditFilter {
            before: Some(3),
            rows: 10,
            ..mine
        };
        assert_eq!(
            positions(queries.audit_events(&page).await.unwrap()),
            [2, 1]
        );
        let window = AuditFilter {
            from: Some(at(2)),
            to: Some(at(4)),
            rows: 2,
            ..Default::default()
        };
        assert_eq!(
            positions(queries.audit_events(&window).await.unwrap()),
            [4, 3]
        );
        let subject = other_org.to_string();
        let by_action = AuditFilter {
            action: Some("OrganizationCreated"),
            outcome: Some("success"),
            actor: Some("someone"),
            subject: Some(&subject),
            rows: 10,
            ..Default::default()
        };
        assert_eq!(
            positions(queries.audit_events(&by_action).await.unwrap()),
            [4]
        );
    }
}
