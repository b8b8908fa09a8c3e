//! Every read the handlers make of the read models, on either back end.
//!
//! Each query is written once over the process's [`Database`]: the same table
//! and column names on both back ends, ids through the [`Id`] codec (`uuid` on
//! PostgreSQL, TEXT on SQLite), times bound from Rust (`timestamptz` there,
//! RFC 3339 text in UTC here, which sorts chronologically), `details` as JSON
//! or JSON text. The handlers never see SQL. Reads go to the embedded store's
//! read-only pool, so they never queue behind the writer.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyledger_storage::{with_readers, Backend, Database, Id, List};
use serde_json::Value;
use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use crate::resources::admin::UserSummary;
use crate::resources::audit::AuditEvent;
use crate::resources::auth::Account;
use crate::resources::sessions::SessionInfo;

/// The read-model queries of the API.
#[derive(Clone, Debug)]
pub struct ReadModelQueries {
    db: Database,
    /// [`Self::member_names`]' statement (its list test is a dialect fragment),
    /// formatted once.
    member_names: String,
    /// [`Self::ping`]'s statement.
    ping: &'static str,
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
    /// The queries over the read models of `db`.
    pub fn new(db: &Database) -> Self {
        Self {
            ping: match db.backend() {
                Backend::Postgres => "SELECT 1",
                // `SELECT 1` would not touch the file: read a page of it instead.
                Backend::Sqlite => "SELECT 1 FROM projection_checkpoints LIMIT 1",
            },
            member_names: format!(
                "SELECT user_id, email, display_name FROM users WHERE {}",
                db.backend().any_of("user_id", "$1")
            ),
            db: db.clone(),
        }
    }

    /// Which database they read.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_readers!(self.db, |pool| {
            sqlx::query(self.ping).execute(pool).await.map(drop)
        })
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
        let ids: Vec<Id> = with_readers!(self.db, |pool| {
            sqlx::query_scalar(SQL)
                .bind(Id(user))
                .bind(Id(except))
                .fetch_all(pool)
                .await?
        });
        Ok(ids.into_iter().map(Uuid::from).collect())
    }

    /// An account as its owner sees it (`GET /v1/auth/me`).
    pub async fn account(&self, user: Uuid) -> Result<Option<Account>, sqlx::Error> {
        const SQL: &str =
            "SELECT user_id, email, display_name, created_at, email_verified, second_factors
               FROM users WHERE user_id = $1";
        with_readers!(self.db, |pool| {
            let row = sqlx::query(SQL).bind(Id(user)).fetch_optional(pool).await?;
            row.as_ref().map(account).transpose()
        })
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
        with_readers!(self.db, |pool| {
            let rows = sqlx::query(SQL)
                .bind(Id(user))
                .bind(now)
                .fetch_all(pool)
                .await?;
            rows.iter().map(session).collect()
        })
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
        with_readers!(self.db, |pool| {
            let found = sqlx::query(SQL)
                .bind(pattern)
                .bind(after)
                .bind(rows)
                .fetch_all(pool)
                .await?;
            found.iter().map(user_summary).collect()
        })
    }

    /// One account as a platform administrator sees it.
    pub async fn user(&self, user: Uuid) -> Result<Option<UserSummary>, sqlx::Error> {
        const SQL: &str =
            "SELECT user_id, email, display_name, created_at, last_login_at, locked_until,
                suspended, platform_admin
           FROM users WHERE user_id = $1";
        with_readers!(self.db, |pool| {
            let row = sqlx::query(SQL).bind(Id(user)).fetch_optional(pool).await?;
            row.as_ref().map(user_summary).transpose()
        })
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
        // The trail's aggregate ids are text on both back ends.
        let organization = filter.organization.map(|id| id.hyphenated().to_string());
        with_readers!(self.db, |pool| {
            let rows = sqlx::query(SQL)
                .bind(filter.actor)
                .bind(filter.subject)
                .bind(filter.action)
                .bind(filter.outcome)
                .bind(filter.from)
                .bind(filter.to)
                .bind(filter.before)
                .bind(organization.as_deref())
                .bind(filter.rows)
                .fetch_all(pool)
                .await?;
            rows.iter().map(audit_event).collect()
        })
    }

    /// The latest `rows` security events of an account, newest first: what its
    /// owner would want to notice (sign-ins and failed ones, password, address
    /// and factor changes, sessions ended), not the noise of its routine
    /// (token refreshes, rehashes, organization switches). For the account
    /// page's activity list; ordered by time, which the trail's
    /// `(subject, occurred_at)` index serves.
    pub async fn account_activity(
        &self,
        user: Uuid,
        rows: i64,
    ) -> Result<Vec<AuditEvent>, sqlx::Error> {
        const SQL: &str = "SELECT global_position, occurred_at, actor, subject, action, outcome,
                    ip, user_agent, request_id, aggregate_type, aggregate_id, sequence, details
               FROM audit_trail
              WHERE subject = $1
                AND action IN ('UserRegistered', 'UserLoggedIn', 'LoginFailed',
                    'AccountLocked', 'AccountUnlocked', 'PasswordChanged', 'PasswordReset',
                    'EmailVerified', 'EmailChangeRequested', 'EmailChanged',
                    'SecondFactorConfirmed', 'SecondFactorRemoved', 'SecondFactorsReset',
                    'BackupCodesRegenerated', 'BackupCodeUsed', 'SecondFactorFailed',
                    'PasskeyRegistered', 'PasskeyRemoved', 'PasskeyCloneSuspected',
                    'ExternalIdentityLinked', 'ExternalIdentityUnlinked',
                    'OAuthConsentGranted', 'OAuthConsentRevoked',
                    'SessionRevoked', 'UserLoggedOut', 'RefreshTokenReuseDetected',
                    'UserSuspended', 'UserReactivated')
              ORDER BY occurred_at DESC, global_position DESC
              LIMIT $2";
        // The trail's subjects are text on both back ends.
        let subject = user.hyphenated().to_string();
        with_readers!(self.db, |pool| {
            let rows = sqlx::query(SQL)
                .bind(subject.as_str())
                .bind(rows)
                .fetch_all(pool)
                .await?;
            rows.iter().map(audit_event).collect()
        })
    }

    /// Emails and display names of the given accounts (one query for all); an
    /// id without a row (not projected yet, or erased) is absent.
    pub async fn member_names(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, MemberName>, sqlx::Error> {
        let sql = &self.member_names;
        let rows: Vec<(Id, String, Option<String>)> = with_readers!(self.db, |pool| {
            sqlx::query_as(sql).bind(List(ids)).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(Id(id), email, name)| (id, (email, name)))
            .collect())
    }
}

/// Typed column access, the same for both back ends' rows: ids through the
/// [`Id`] codec, JSON as each stores it, so each response type has one decoder.
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

impl<R> ReadRow for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> Id: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Value: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn uuid(&self, column: &str) -> Result<Uuid, sqlx::Error> {
        self.try_get::<Id, _>(column).map(Uuid::from)
    }
    fn json(&self, column: &str) -> Result<Value, sqlx::Error> {
        self.try_get(column)
    }
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
}

fn account(r: &impl ReadRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        user_id: r.uuid("user_id")?,
        email: r.text("email")?,
        display_name: r.opt_text("display_name")?,
        created_at: r.time("created_at")?,
        email_verified: r.flag("email_verified")?,
        second_factors: keyledger_projections::read_models::confirmed_second_factor_kinds(
            &r.text("second_factors")?,
        ),
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
    //! Each query on both back ends, against the read-model tables as each
    //! defines them (installed by the projector's own code, not a copy of their
    //! DDL).

    use chrono::{Duration, SubsecRound};
    use keyledger_storage::{on_both_back_ends, with_writer};

    use super::*;

    /// The queries over `db`, its read models installed.
    async fn store(db: &Database) -> ReadModelQueries {
        keyledger_projections::install_read_models(db)
            .await
            .unwrap();
        ReadModelQueries::new(db)
    }

    /// Now, to the microsecond both back ends keep.
    fn now() -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }

    on_both_back_ends! {
        async fn the_readiness_ping_reads_the_store(db) {
            if db.backend() == Backend::Sqlite {
                // An embedded database without the read models (a wrong or
                // emptied file) is not ready.
                assert!(ReadModelQueries::new(&db).ping().await.is_err());
            }
            store(&db).await.ping().await.unwrap();
        }
    }

    async fn user(db: &Database, id: Uuid, email: &str, name: Option<&str>, at: DateTime<Utc>) {
        async {
            with_writer!(db, |conn| {
                sqlx::query(
                    "INSERT INTO users (user_id, email, display_name, created_at, locked_until,
                                        platform_admin, version)
                     VALUES ($1, $2, $3, $4, $5, $6, 1)",
                )
                .bind(Id(id))
                .bind(email)
                .bind(name)
                .bind(at)
                .bind(Some(at + Duration::minutes(30)))
                .bind(email.starts_with("admin"))
                .execute(&mut *conn)
                .await?;
            });
            Ok::<_, sqlx::Error>(())
        }
        .await
        .unwrap();
    }

    async fn session(
        db: &Database,
        id: Uuid,
        user: Uuid,
        created: DateTime<Utc>,
        expires: DateTime<Utc>,
        state: &str,
    ) {
        async {
            with_writer!(db, |conn| {
                sqlx::query(
                    "INSERT INTO sessions (session_id, user_id, ip, created_at, expires_at, state,
                                           version)
                     VALUES ($1, $2, '127.0.0.1', $3, $4, $5, 1)",
                )
                .bind(Id(id))
                .bind(Id(user))
                .bind(created)
                .bind(expires)
                .bind(state)
                .execute(&mut *conn)
                .await?;
            });
            Ok::<_, sqlx::Error>(())
        }
        .await
        .unwrap();
    }

    async fn audit(
        db: &Database,
        position: i64,
        at: DateTime<Utc>,
        action: &str,
        aggregate: (&str, String),
        details: Value,
    ) {
        async {
            with_writer!(db, |conn| {
                sqlx::query(
                    "INSERT INTO audit_trail (global_position, occurred_at, actor, subject, action,
                                              outcome, aggregate_type, aggregate_id, sequence,
                                              details)
                     VALUES ($1, $2, 'someone', $3, $4, 'success', $5, $3, 1, $6)",
                )
                .bind(position)
                .bind(at)
                .bind(&aggregate.1)
                .bind(action)
                .bind(aggregate.0)
                .bind(&details)
                .execute(&mut *conn)
                .await?;
            });
            Ok::<_, sqlx::Error>(())
        }
        .await
        .unwrap();
    }

    on_both_back_ends! {
    async fn accounts_and_sessions_read_back_with_ids_and_times_intact(db) {
        let queries = store(&db).await;
        queries.ping().await.unwrap();
        let now = now();
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        user(&db, ada, "ada@example.com", Some("Ada"), now).await;
        user(&db, bob, "bob@example.com", None, now).await;

        let account = queries.account(ada).await.unwrap().unwrap();
        assert_eq!(account.user_id, ada);
        assert_eq!(account.email, "ada@example.com");
        assert_eq!(account.display_name.as_deref(), Some("Ada"));
        assert_eq!(account.created_at, now);
        assert!(account.second_factors.is_empty());
        assert!(queries.account(Uuid::new_v4()).await.unwrap().is_none());

        let (current, lapsed, ended, other) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let hour = Duration::hours(1);
        session(&db, current, ada, now - hour, now + hour, "active").await;
        // Past its expiry by a fraction of a second: the text comparison must see it.
        session(
            &db,
            lapsed,
            ada,
            now - hour * 3,
            now - Duration::milliseconds(1),
            "active",
        )
        .await;
        session(&db, ended, ada, now - hour * 2, now + hour, "revoked").await;
        session(&db, other, bob, now, now + hour, "active").await;

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
    }

    on_both_back_ends! {
    async fn user_search_escapes_wildcards_and_pages_by_email(db) {
        let queries = store(&db).await;
        let now = now();
        let admin = Uuid::new_v4();
        user(&db, admin, "admin@example.com", Some("Grace HOPPER"), now).await;
        user(&db, Uuid::new_v4(), "a_b@example.com", None, now).await;
        user(&db, Uuid::new_v4(), "axb@example.com", None, now).await;
        user(
            &db,
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
    }

    on_both_back_ends! {
    async fn member_names_come_in_one_query_for_all(db) {
        let queries = store(&db).await;
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        user(&db, ada, "ada@example.com", Some("Ada"), now()).await;
        user(&db, bob, "bob@example.com", None, now()).await;
        let names = queries
            .member_names(&[ada, bob, Uuid::new_v4()])
            .await
            .unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names[&ada], ("ada@example.com".into(), Some("Ada".into())));
        assert_eq!(names[&bob], ("bob@example.com".into(), None));
        assert!(queries.member_names(&[]).await.unwrap().is_empty());
    }
    }

    on_both_back_ends! {
    async fn the_audit_trail_filters_by_time_cursor_and_organization(db) {
        let queries = store(&db).await;
        let start = now();
        let (org, other_org, role) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let at = |n: i64| start + Duration::milliseconds(n * 250);
        audit(
            &db,
            1,
            at(1),
            "OrganizationCreated",
            ("organization", org.to_string()),
            Value::Null,
        )
        .await;
        audit(
            &db,
            2,
            at(2),
            "RoleDefined",
            ("role", role.to_string()),
            serde_json::json!({"organization_id": org}),
        )
        .await;
        audit(
            &db,
            3,
            at(3),
            "RoleUpdated",
            ("role", role.to_string()),
            serde_json::json!({}),
        )
        .await;
        audit(
            &db,
            4,
            at(4),
            "OrganizationCreated",
            ("organization", other_org.to_string()),
            Value::Null,
        )
        .await;
        audit(
            &db,
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
}
