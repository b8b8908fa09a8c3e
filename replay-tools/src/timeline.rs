//! Time travel for auditors: `keyledger-replay as-of` and `keyledger-replay timeline`.
//!
//! - [`as_of`]: one account as it was at an instant (status, lockout, live
//!   sessions, roles and effective permissions), computed from events alone by
//!   [`keyledger_projections::as_of`], the same code the API's
//!   `GET /v1/audit/users/{id}/as-of` runs.
//! - [`timeline`]: every change to one account (the events [`crate::history`]
//!   shows, memberships included) within a time range, each with who made it, from
//!   where and under which request. Event data goes through the secret-free
//!   integration mapping only, after its personal fields were opened (clear
//!   values, or `[erased]`; the same holds for `as-of`, which
//!   [`keyledger_projections::account_as_of`] opens itself).

use keyledger_domain::DataKeyWrapping;
use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use keyledger_projections::integration::public_data;
use keyledger_projections::{account_as_of, AccountAsOf, StoredEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::history::{account_events, escape_controls, resolve};
use crate::personal::Opener;
use crate::{OutputFormat, ReplayError, UserRef};
use keyledger_storage::Database;

/// A time argument that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an RFC 3339 time (for example 2026-01-31T12:00:00Z)")]
pub struct InvalidTime(pub String);

/// Reads an RFC 3339 time (any offset) as UTC; for `--at`, `--from` and `--to`.
pub fn parse_time(raw: &str) -> Result<DateTime<Utc>, InvalidTime> {
    DateTime::parse_from_rfc3339(raw.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| InvalidTime(raw.to_owned()))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Prints one account as it was at `at` and returns it: readable lines (a status
/// line, then one line per live session and per organization), or with
/// [`OutputFormat::JsonLines`] one JSON object ([`AccountAsOf`]).
///
/// An account registered after `at` is an answer (`not_yet_registered`); a
/// reference that names no account at all is [`ReplayError::UnknownUser`].
pub async fn as_of(
    db: &Database,
    data_key_wrapping: Option<Arc<DataKeyWrapping>>,
    user: &UserRef,
    at: DateTime<Utc>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<AccountAsOf, ReplayError> {
    let user_id = resolve(db, user).await?;
    let wrapping = data_key_wrapping.unwrap_or_else(crate::personal::unconfigured_wrapping);
    let account = account_as_of(db, &wrapping, user_id, at)
        .await?
        .ok_or_else(|| ReplayError::UnknownUser(user.to_string()))?;
    match format {
        OutputFormat::Text => {
            for line in as_of_lines(&account) {
                writeln!(out, "{}", escape_controls(&line))?;
            }
        }
        OutputFormat::JsonLines => {
            writeln!(
                out,
                "{}",
                escape_controls(&serde_json::to_string(&account)?)
            )?;
        }
    }
    out.flush()?;
    Ok(account)
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn as_of_lines(a: &AccountAsOf) -> Vec<String> {
    let mut lines = vec![format!(
        "# user {} ({}) as of {}",
        a.user_id,
        a.email.as_deref().unwrap_or("-"),
        time(a.at)
    )];
    lines.push(format!(
        "status={} locked_until={} consecutive_failures={} platform_admin={} sessions={} organizations={}",
        a.status.as_str(),
        or_dash(a.locked_until.map(time)),
        a.consecutive_failures,
        a.platform_admin,
        a.sessions.len(),
        a.organizations.len(),
    ));
    for s in &a.sessions {
        lines.push(format!(
            "session {} started={} expires={} ip={} user_agent={:?} organization={}",
            s.session_id,
            time(s.started_at),
            time(s.expires_at),
            s.ip.as_deref().unwrap_or("-"),
            s.user_agent.as_deref().unwrap_or("-"),
            or_dash(s.organization_id),
        ));
    }
    for o in &a.organizations {
        lines.push(format!(
            "organization {} {} {:?} suspended={} roles={} permissions={}",
            o.organization_id,
            o.slug,
            o.name,
            o.suspended,
            o.roles.join(","),
            if o.permissions.is_empty() {
                "-".to_owned()
            } else {
                o.permissions.join(",")
            },
        ));
    }
    lines
}

/// One change to an account: when, what, who, from where, and its secret-free data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When it happened (the command's time).
    pub occurred_at: DateTime<Utc>,
    /// The domain event type (`LoginFailed`, `MemberAdded`, ...).
    pub event_type: String,
    /// `user`, `session` or `organization`.
    pub aggregate_type: String,
    /// The user, session or organization id.
    pub aggregate_id: String,
    /// Its place in that aggregate's history.
    pub sequence: i64,
    /// Who made the change: a user id, or `anonymous` before anyone logged in.
    pub actor: Option<String>,
    /// The client's address.
    pub ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// The request that caused it (`x-request-id`).
    pub request_id: Option<String>,
    /// The event's secret-free data (the integration mapping).
    pub data: Value,
    /// Insertion order in the event log.
    pub global_position: i64,
}

impl TimelineEntry {
    /// The only way from a stored event to the timeline: through `public_data`.
    fn from_stored(event: &StoredEvent) -> Result<Self, ReplayError> {
        let meta = |key: &str| event.meta(key).map(str::to_owned);
        Ok(Self {
            occurred_at: event.occurred_at(),
            event_type: event.event_type.clone(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            actor: meta("actor"),
            ip: meta("ip"),
            user_agent: meta("user_agent"),
            request_id: meta("request_id"),
            data: public_data(event)?,
            global_position: event.position.global_position,
        })
    }

    fn text_line(&self) -> String {
        format!(
            "{}  {:<26} {:<12} {}  actor={} ip={} user_agent={:?} request_id={}  {}",
            time(self.occurred_at),
            self.event_type,
            self.aggregate_type,
            self.aggregate_id,
            self.actor.as_deref().unwrap_or("-"),
            self.ip.as_deref().unwrap_or("-"),
            self.user_agent.as_deref().unwrap_or("-"),
            self.request_id.as_deref().unwrap_or("-"),
            self.data,
        )
    }
}

/// Prints every change to one account that happened between `from` and `to`
/// (both inclusive, either open), in log order, and returns them.
pub async fn timeline(
    db: &Database,
    data_key_wrapping: Option<Arc<DataKeyWrapping>>,
    user: &UserRef,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<Timeline, ReplayError> {
    let user_id = resolve(db, user).await?;
    let mut events = account_events(db, user_id).await?;
    if !events.iter().any(|e| e.aggregate_type == "user") {
        return Err(ReplayError::UnknownUser(user.to_string()));
    }
    Opener::new(db, data_key_wrapping).open(&mut events).await?;
    let entries = events
        .iter()
        .filter(|e| {
            let t = e.occurred_at();
            from.is_none_or(|from| t >= from) && to.is_none_or(|to| t <= to)
        })
        .map(TimelineEntry::from_stored)
        .collect::<Result<Vec<_>, _>>()?;
    match format {
        OutputFormat::Text => {
            writeln!(
                out,
                "# timeline of user {user_id} ({user}) from {} to {}: {} changes",
                or_dash(from.map(time)),
                or_dash(to.map(time)),
                entries.len()
            )?;
            for entry in &entries {
                writeln!(out, "{}", escape_controls(&entry.text_line()))?;
            }
        }
        OutputFormat::JsonLines => {
            for entry in &entries {
                writeln!(out, "{}", escape_controls(&serde_json::to_string(entry)?))?;
            }
        }
    }
    out.flush()?;
    Ok(Timeline { user_id, entries })
}

/// The result of [`timeline`].
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// The account the reference resolved to.
    pub user_id: Uuid,
    /// Its changes in log order.
    pub entries: Vec<TimelineEntry>,
}

impl Timeline {
    /// The event types in order.
    pub fn event_types(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.event_type.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_in_any_offset() {
        let t = parse_time("2026-01-31T13:00:00+01:00").unwrap();
        assert_eq!(t, parse_time(" 2026-01-31T12:00:00Z ").unwrap());
        assert!(parse_time("2026-01-31").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
