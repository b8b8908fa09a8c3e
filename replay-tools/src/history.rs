//! `keyledger-replay history`: everything that happened to one account.
//!
//! The account's user aggregate plus every session aggregate whose
//! `SessionStarted` names it, read in one statement (one snapshot) and ordered as
//! the feed orders them, `(tx_id, global_position)`. Every event is shown through
//! [`IntegrationEvent::from_stored`], the same secret-free mapping NATS consumers
//! get: a password hash or refresh-token hash in a stored payload never reaches the
//! output, and a raw payload is never printed. Personal fields are opened first
//! ([`crate::personal::Opener`]): clear values, or `[erased]`.

use keyledger_domain::DataKeyWrapping;
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use keyledger_domain::{Email, EmailIndexKey};
use keyledger_projections::{IntegrationEvent, StoredEvent};
use keyledger_storage::{with_readers, Backend, Database, Id};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::personal::Opener;
use crate::stored::{select_live_events, EventRow};
use crate::ReplayError;

/// How an auditor names an account: by id, or by the address it registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    /// The user aggregate's id.
    Id(Uuid),
    /// A registered address, resolved through the legacy clear column of
    /// `email_claims` only (no email index key was given).
    Email(Email),
    /// A registered address with its email index digest (see [`UserRef::keyed`]):
    /// resolved through the keyed column, falling back to a legacy clear claim not
    /// yet converted by the server.
    Keyed {
        /// The normalised address (for messages and the legacy fallback).
        email: Email,
        /// `HMAC-SHA256(email index key, address)`: what `email_claims.digest` holds.
        digest: [u8; 32],
    },
}

impl UserRef {
    /// An email reference made ready for the keyed index: claims hold only the
    /// digest of the address, which takes the server's email index key to compute.
    /// Ids, and emails without a key, come back unchanged.
    pub fn keyed(self, key: Option<&EmailIndexKey>) -> Self {
        match (self, key) {
            (Self::Email(email), Some(key)) => Self::Keyed {
                digest: key.digest(&email),
                email,
            },
            (other, _) => other,
        }
    }
}

impl FromStr for UserRef {
    type Err = ReplayError;

    /// A UUID is taken as an id, anything else must be an email address (which is
    /// normalised exactly as registration normalised it).
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let trimmed = raw.trim();
        if let Ok(id) = Uuid::parse_str(trimmed) {
            return Ok(Self::Id(id));
        }
        Email::parse(trimmed)
            .map(Self::Email)
            .map_err(|_| ReplayError::InvalidUser(raw.to_owned()))
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "user id {id}"),
            Self::Email(email) | Self::Keyed { email, .. } => write!(f, "email {email}"),
        }
    }
}

/// Readable lines for a person, or JSON lines for a program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// One aligned line per event.
    #[default]
    Text,
    /// One JSON object per line ([`HistoryEntry`]).
    JsonLines,
}

/// One event as the history shows it: the integration event (whose `metadata`
/// also carries `ip` and `user_agent` when the request had them) and where it sits
/// in the feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The secret-free public form of the event.
    #[serde(flatten)]
    pub event: IntegrationEvent,
    /// The writing transaction (first part of the feed order).
    pub tx_id: i64,
    /// Insertion order (second part of the feed order).
    pub global_position: i64,
    /// When the event store accepted the event.
    pub recorded_at: DateTime<Utc>,
}

impl HistoryEntry {
    /// Builds the public form; the only way from a stored event to the output.
    pub(crate) fn from_stored(stored: &StoredEvent) -> Result<Self, ReplayError> {
        let mut event = IntegrationEvent::from_stored(stored)?;
        if let Value::Object(meta) = &mut event.metadata {
            for key in ["ip", "user_agent"] {
                if let Some(v) = stored.meta(key) {
                    meta.insert(key.to_owned(), Value::String(v.to_owned()));
                }
            }
        }
        Ok(Self {
            event,
            tx_id: stored.position.tx_id,
            global_position: stored.position.global_position,
            recorded_at: stored.recorded_at,
        })
    }

    fn meta(&self, key: &str) -> Option<&str> {
        self.event.metadata.get(key).and_then(Value::as_str)
    }

    fn text_line(&self) -> String {
        let e = &self.event;
        format!(
            "{}  {:<7} {}  #{:<3} {:<26} actor={} ip={}  {}",
            e.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            e.aggregate_type,
            e.aggregate_id,
            e.sequence,
            e.event_type,
            self.meta("actor").unwrap_or("-"),
            self.meta("ip").unwrap_or("-"),
            e.data,
        )
    }
}

/// The result of [`history`], for callers that want more than the printed text.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The account the reference resolved to.
    pub user_id: Uuid,
    /// Its events in feed order.
    pub entries: Vec<HistoryEntry>,
}

impl History {
    /// The event types in order: what most checks of a history look at.
    pub fn event_types(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|e| e.event.event_type.as_str())
            .collect()
    }
}

/// Prints one account's events in feed order and returns them.
///
/// Fails with [`ReplayError::UnknownUser`] when the reference names no account
/// (an email without a claim, or a claim or id without any event).
pub async fn history(
    db: &Database,
    data_key_wrapping: Option<Arc<DataKeyWrapping>>,
    user: &UserRef,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<History, ReplayError> {
    let user_id = resolve(db, user).await?;
    let mut events = account_events(db, user_id).await?;
    if !events.iter().any(|e| e.aggregate_type == "user") {
        return Err(ReplayError::UnknownUser(user.to_string()));
    }
    Opener::new(db, data_key_wrapping).open(&mut events).await?;
    let entries = events
        .iter()
        .map(HistoryEntry::from_stored)
        .collect::<Result<Vec<_>, _>>()?;

    match format {
        OutputFormat::Text => {
            writeln!(
                out,
                "# history of user {user_id} ({}): {} events",
                user,
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
    Ok(History { user_id, entries })
}

/// The account a reference names. Claims written since the keyed index hold only
/// a digest; an address without a key can therefore only find a legacy claim, and
/// failing that the error names the missing setting rather than claiming that no
/// such account exists.
pub(crate) async fn resolve(db: &Database, user: &UserRef) -> Result<Uuid, ReplayError> {
    // Only a PostgreSQL database can hold claims written in clear, before
    // addresses were keyed; an embedded store's claims hold only digests.
    let legacy = db.backend() == Backend::Postgres;
    let found: Option<Id> = match user {
        UserRef::Id(id) => return Ok(*id),
        UserRef::Keyed { email, digest } if legacy => with_readers!(db, |pool| {
            sqlx::query_scalar(
                "SELECT user_id FROM public.email_claims
                  WHERE digest = $1 OR (digest IS NULL AND email = $2)
                  LIMIT 1",
            )
            .bind(&digest[..])
            .bind(email.as_str())
            .fetch_optional(pool)
            .await?
        }),
        UserRef::Keyed { digest, .. } => with_readers!(db, |pool| {
            sqlx::query_scalar("SELECT user_id FROM main.email_claims WHERE digest = $1")
                .bind(&digest[..])
                .fetch_optional(pool)
                .await?
        }),
        UserRef::Email(email) if legacy => {
            return with_readers!(db, |pool| {
                sqlx::query_scalar("SELECT user_id FROM public.email_claims WHERE email = $1")
                    .bind(email.as_str())
                    .fetch_optional(pool)
                    .await?
            })
            .map(|Id(id)| id)
            .ok_or(ReplayError::NoEmailIndexKey);
        }
        UserRef::Email(_) => return Err(ReplayError::NoEmailIndexKey),
    };
    found
        .map(|Id(id)| id)
        .ok_or_else(|| ReplayError::UnknownUser(user.to_string()))
}

/// The user aggregate, its sessions and its memberships (organizations created,
/// invited to (by id or by an address that was theirs then), joined, left, roles
/// changed), in one statement so one snapshot. The session look-up is written
/// exactly as the partial index `events_session_user_idx` is on each back end,
/// so it is used. On the embedded store positions are commit order (`tx_id` is
/// always 0 there), so the order is the feed's on both.
pub(crate) async fn account_events(
    db: &Database,
    user_id: Uuid,
) -> Result<Vec<StoredEvent>, ReplayError> {
    let backend = db.backend();
    let sql = format!(
        "{}
          WHERE (aggregate_type = 'user' AND aggregate_id = $1)
             OR (aggregate_type = 'session' AND aggregate_id IN (
                    SELECT aggregate_id FROM {}.events
                     WHERE aggregate_type = 'session' AND event_type = 'SessionStarted'
                       AND {} = $1))
             OR (aggregate_type = 'organization' AND (
                    payload -> event_type ->> 'user_id' = $1
                    OR payload -> 'OrganizationCreated' ->> 'owner' = $1
                    OR payload -> 'MemberInvited' ->> 'invitee' = $1))
          ORDER BY tx_id, global_position",
        select_live_events(backend),
        backend.live_schema(),
        backend.json_text("payload", &["SessionStarted", "user_id"]),
    );
    Ok(with_readers!(db, |pool| {
        sqlx::query(&sql)
            .bind(user_id.to_string())
            .fetch_all(pool)
            .await?
            .iter()
            .map(EventRow::stored_event)
            .collect::<Result<_, _>>()?
    }))
}

/// Stored metadata and user agents come from clients; a terminal must not
/// interpret them. Control characters (C0, DEL, C1) and bidirectional overrides
/// become `\uXXXX`, which is also a valid escape inside a JSON string (and JSON
/// structure itself is plain ASCII), so JSON lines stay valid.
pub(crate) fn escape_controls(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        let invisible = matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || invisible {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_is_an_id_and_anything_else_an_email() {
        let id = Uuid::new_v4();
        assert_eq!(
            format!(" {id} ").parse::<UserRef>().unwrap(),
            UserRef::Id(id)
        );
        assert_eq!(
            "  Alice@Example.COM ".parse::<UserRef>().unwrap(),
            UserRef::Email(Email::parse("alice@example.com").unwrap())
        );
        assert!(matches!(
            "not an address".parse::<UserRef>(),
            Err(ReplayError::InvalidUser(_))
        ));
    }

    #[test]
    fn control_characters_cannot_reach_a_terminal() {
        let escaped = escape_controls("ua\u{1b}[2J\u{9b}x\u{202e}y\n");
        assert_eq!(escaped, "ua\\u001b[2J\\u009bx\\u202ey\\u000a");
        let json = serde_json::to_string(&serde_json::json!({"ua": "a\u{7f}\u{9b}b"})).unwrap();
        let value: Value = serde_json::from_str(&escape_controls(&json)).unwrap();
        assert_eq!(value["ua"], "a\u{7f}\u{9b}b");
    }
}
