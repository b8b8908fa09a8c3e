//! The audit trail: one row per event, its columns and how it is written (once
//! for both back ends), and what an erasure rewrites in every read model.

use keyledger_storage::{per_backend, Id, List, PerBackend};
use serde_json::Value;
use sqlx::{PgConnection, SqliteConnection};
use uuid::Uuid;

use super::rules::{outcome, scrub_details, PERSONAL_DETAILS};
use super::table::{column, Cells, Column, OnConflict, Stored, Target};
use crate::feed::StoredEvent;

/// One row of the audit trail: what the trail says of an event, about
/// `subject`. Its other values are read from the event as they are written
/// (borrowed, not copied).
pub(crate) struct AuditRow<'e> {
    event: &'e StoredEvent,
    subject: String,
    details: Value,
}

impl<'e> AuditRow<'e> {
    pub(crate) fn new(event: &'e StoredEvent, subject: String, details: Value) -> Self {
        Self {
            event,
            subject,
            details,
        }
    }
}

impl Stored for AuditRow<'_> {
    const TABLE: &'static str = "audit_trail";
    const COLUMNS: &'static [Column] = &[
        column("global_position", "int8"),
        column("occurred_at", "timestamptz"),
        column("actor", "text"),
        column("subject", "text"),
        column("action", "text"),
        column("outcome", "text"),
        column("ip", "text"),
        column("user_agent", "text"),
        column("request_id", "text"),
        column("aggregate_type", "text"),
        column("aggregate_id", "text"),
        column("sequence", "int8"),
        column("details", "jsonb"),
    ];
    /// Append-only: an overlap finds its rows there already.
    const ON_CONFLICT: OnConflict = OnConflict::Ignore;

    fn cells<'a>(&'a self, out: &mut impl Cells<'a>) {
        let event = self.event;
        out.int8(event.position.global_position);
        out.time(Some(event.occurred_at()));
        out.text(Some(event.meta("actor").unwrap_or("anonymous")));
        out.text(Some(&self.subject));
        out.text(Some(&event.event_type));
        out.text(Some(outcome(&event.event_type)));
        out.text(event.meta("ip"));
        out.text(event.meta("user_agent"));
        out.text(event.meta("request_id"));
        out.text(Some(&event.aggregate_type));
        out.text(Some(&event.aggregate_id));
        out.int8(event.sequence);
        out.json(&self.details);
    }
}

/// The erasure rules of [`super::rules::PERSONAL_DETAILS`] applied to the
/// tables: the users rows of `erased` go; their sessions, the audit rows of
/// requests they made and the `details` of audit rows about them hold
/// `[erased]` for every personal value. The first three statements are one text
/// for both back ends; the `details` rewrite is PostgreSQL's `jsonb` functions
/// in one statement, and on SQLite the same rule in Rust ([`scrub_details`]) for
/// the few rows that hold a personal string, written back by position.
pub(crate) async fn forget_erased(
    target: &mut Target<'_>,
    erased: &[Uuid],
) -> Result<(), sqlx::Error> {
    if erased.is_empty() {
        return Ok(());
    }
    let backend = target.backend();
    let (users, sessions, audit) = (
        target.table("users"),
        target.table("sessions"),
        target.table("audit_trail"),
    );
    let ids: Vec<Id> = erased.iter().copied().map(Id).collect();
    let texts: Vec<String> = erased.iter().map(Uuid::to_string).collect();
    let delete_users = format!(
        "DELETE FROM {users} WHERE {}",
        backend.any_of("user_id", "$1")
    );
    let scrub_sessions = format!(
        "UPDATE {sessions}
            SET ip = CASE WHEN ip IS NULL THEN NULL ELSE $2 END,
                user_agent = CASE WHEN user_agent IS NULL THEN NULL ELSE $2 END
          WHERE {} AND (ip IS NOT NULL OR user_agent IS NOT NULL)",
        backend.any_of("user_id", "$1")
    );
    let scrub_requests = format!(
        "UPDATE {audit}
            SET ip = CASE WHEN ip IS NULL THEN NULL ELSE $2 END,
                user_agent = CASE WHEN user_agent IS NULL THEN NULL ELSE $2 END
          WHERE ({} OR (actor = 'anonymous' AND {}))
            AND (ip IS NOT NULL OR user_agent IS NOT NULL)",
        backend.any_of("actor", "$1"),
        backend.any_of("subject", "$1"),
    );
    per_backend!(target.conn(), |conn| {
        sqlx::query(&delete_users)
            .bind(List(&ids))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&scrub_sessions)
            .bind(List(&ids))
            .bind(keyledger_domain::ERASED)
            .execute(&mut *conn)
            .await?;
        sqlx::query(&scrub_requests)
            .bind(List(&texts))
            .bind(keyledger_domain::ERASED)
            .execute(&mut *conn)
            .await?;
    });
    match target.conn() {
        PerBackend::Postgres(conn) => scrub_details_in_sql(conn, &texts).await,
        PerBackend::Sqlite(conn) => scrub_details_in_rust(conn, &audit, &texts).await,
    }
}

/// PostgreSQL: the `details` rule in one statement.
async fn scrub_details_in_sql(
    conn: &mut PgConnection,
    subjects: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE audit_trail
            SET details = (SELECT jsonb_object_agg(k, CASE
                               WHEN k = ANY($3) AND jsonb_typeof(v) = 'string'
                               THEN to_jsonb($2::text) ELSE v END)
                             FROM jsonb_each(details) AS e(k, v))
          WHERE subject = ANY($1) AND details ?| $3",
    )
    .bind(subjects)
    .bind(keyledger_domain::ERASED)
    .bind(&PERSONAL_DETAILS[..])
    .execute(conn)
    .await?;
    Ok(())
}

/// SQLite: reads the rows about `subjects` holding a personal string, applies
/// [`scrub_details`] and writes them back by position, from one bound JSON array.
async fn scrub_details_in_rust(
    conn: &mut SqliteConnection,
    audit: &str,
    subjects: &[String],
) -> Result<(), sqlx::Error> {
    let holds_personal = PERSONAL_DETAILS
        .iter()
        .map(|key| format!("json_type(details, '$.{key}') = 'text'"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let rows: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT global_position, details FROM {audit}
          WHERE subject IN (SELECT value FROM json_each($1)) AND ({holds_personal})"
    ))
    .bind(List(subjects))
    .fetch_all(&mut *conn)
    .await?;
    let mut scrubbed = Vec::with_capacity(rows.len());
    for (position, details) in rows {
        let mut details: Value =
            serde_json::from_str(&details).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if scrub_details(&mut details) {
            scrubbed.push((position, details));
        }
    }
    let update = format!(
        "UPDATE {audit} AS a SET details = u.value -> 1
           FROM json_each($1) AS u
          WHERE a.global_position = u.value ->> 0"
    );
    for chunk in scrubbed.chunks(5_000) {
        sqlx::query(&update)
            .bind(List(chunk))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
