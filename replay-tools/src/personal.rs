//! Personal data in the tool's output (decision 0009): every event a command
//! shows goes through [`Opener`] first, so sealed fields come out as their clear
//! value, or `[erased]` once their owner's key is gone, and never as ciphertext.
//!
//! [`Opener`] wraps the read side's [`PersonalDataOpener`] (the same code the
//! projector and the NATS relay run) and adds one rule that only matters for logs
//! written before sealing and not yet resealed: a *clear* personal value (a 1.0
//! event, or clear metadata) whose owner was erased is shown as `[erased]` too. The
//! stored event still holds it (that is what `keyledger-replay reseal` is for),
//! but no tool prints it. Events without clear personal values (every event of a
//! sealed or resealed log) cost nothing extra.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use keyledger_domain::personal::sealed_owner;
use keyledger_domain::{DataKeyWrapping, DataKeyWrappingKey, EmailIndexKey, Field, ERASED};
use keyledger_projections::personal::PersonalDataOpener;
use keyledger_projections::StoredEvent;
use serde_json::Value;
use uuid::Uuid;

use keyledger_storage::{with_readers, Database, Id, List};

use crate::ReplayError;

/// Owners whose erasure state is kept in memory at most before starting over.
const CACHED_OWNERS: usize = 200_000;

/// Opens a batch of events for output (see the module documentation). Owned by
/// one command; memory is bounded (both caches start over when full).
pub(crate) struct Opener {
    inner: PersonalDataOpener,
    db: Database,
    /// The owners among a list whose data key is gone.
    erased_owners_sql: String,
    /// The users the `SessionStarted` of a list of sessions name.
    session_users_sql: String,
    /// Owner → erased, for owners of clear legacy values.
    erased: HashMap<Uuid, bool>,
    /// Session id → its user, for metadata of anonymous session requests.
    sessions: HashMap<String, Uuid>,
}

/// Where clear personal values sit in one event, found before opening (after
/// opening, a clear legacy value and an opened one look alike).
#[derive(Default, Clone, Copy)]
struct ClearSpots {
    payload: Option<Uuid>,
    metadata: Option<Uuid>,
}

/// The wrapping of a tool given no wrapping key: a fresh key nothing was ever
/// wrapped with, so keys stored in clear (before wrapping) still open and a
/// wrapped key fails with the setting to give.
pub(crate) fn unconfigured_wrapping() -> Arc<DataKeyWrapping> {
    Arc::new(DataKeyWrapping::new(
        DataKeyWrappingKey::generate(),
        Vec::new(),
    ))
}

impl Opener {
    /// `wrapping` unwraps the data keys (`None`: none configured, so only keys
    /// stored before wrapping existed open; a wrapped one is an error that says
    /// which setting to give).
    pub(crate) fn new(db: &Database, wrapping: Option<Arc<DataKeyWrapping>>) -> Self {
        let backend = db.backend();
        let live = backend.live_schema();
        Self {
            inner: PersonalDataOpener::new(db, wrapping.unwrap_or_else(unconfigured_wrapping)),
            db: db.clone(),
            erased_owners_sql: format!(
                "SELECT owner_id FROM {live}.user_data_keys WHERE {} AND key IS NULL",
                backend.any_of("owner_id", "$1")
            ),
            session_users_sql: format!(
                "SELECT aggregate_id, {} FROM {live}.events
                  WHERE aggregate_type = 'session' AND event_type = 'SessionStarted'
                    AND {}",
                backend.json_text("payload", &["SessionStarted", "user_id"]),
                backend.any_of("aggregate_id", "$1")
            ),
            erased: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// Opens every sealed field of `events` in place and hides clear values of
    /// erased owners.
    pub(crate) async fn open(&mut self, events: &mut [StoredEvent]) -> Result<(), ReplayError> {
        let spots = self.clear_spots(events).await?;
        self.inner.open(events).await?;
        if spots
            .iter()
            .all(|s| s.payload.is_none() && s.metadata.is_none())
        {
            return Ok(());
        }
        let mut owners: Vec<Uuid> = spots
            .iter()
            .flat_map(|s| [s.payload, s.metadata])
            .flatten()
            .filter(|o| !self.erased.contains_key(o))
            .collect();
        owners.sort_unstable();
        owners.dedup();
        if !owners.is_empty() {
            if self.erased.len() + owners.len() > CACHED_OWNERS {
                self.erased.clear();
            }
            let ids: Vec<Id> = owners.iter().copied().map(Id).collect();
            let gone: Vec<Id> = with_readers!(self.db, |pool| {
                sqlx::query_scalar(&self.erased_owners_sql)
                    .bind(List(&ids))
                    .fetch_all(pool)
                    .await?
            });
            for owner in owners {
                self.erased.insert(owner, false);
            }
            for Id(owner) in gone {
                self.erased.insert(owner, true);
            }
        }
        // An erasure in the batch counts from its start, as for sealed values.
        for event in events.iter() {
            if is_erasure(event) {
                if let Ok(owner) = event.aggregate_id.parse() {
                    self.erased.insert(owner, true);
                }
            }
        }
        for (event, spot) in events.iter_mut().zip(spots) {
            let erased = |o: Option<Uuid>| o.is_some_and(|o| self.erased.get(&o) == Some(&true));
            if erased(spot.payload) {
                hide_personal(&mut event.payload, None);
            }
            if erased(spot.metadata) {
                hide_personal(&mut event.metadata, None);
            }
        }
        Ok(())
    }

    async fn clear_spots(
        &mut self,
        events: &[StoredEvent],
    ) -> Result<Vec<ClearSpots>, ReplayError> {
        // Sessions started in this batch are known without a query.
        for event in events {
            if let Some(user) = session_started_user(event) {
                self.remember_session(&event.aggregate_id, user);
            }
        }
        let mut wanted = Vec::new();
        for event in events {
            if has_clear_personal(&event.metadata, None)
                && event.aggregate_type == "session"
                && actor(event).is_none()
                && !self.sessions.contains_key(&event.aggregate_id)
            {
                wanted.push(event.aggregate_id.clone());
            }
        }
        if !wanted.is_empty() {
            wanted.sort_unstable();
            wanted.dedup();
            let rows: Vec<(String, Option<String>)> = with_readers!(self.db, |pool| {
                sqlx::query_as(&self.session_users_sql)
                    .bind(List(&wanted))
                    .fetch_all(pool)
                    .await?
            });
            for (session, user) in rows {
                if let Some(user) = user.and_then(|u| u.parse().ok()) {
                    self.remember_session(&session, user);
                }
            }
        }
        Ok(events
            .iter()
            .map(|event| ClearSpots {
                payload: has_clear_personal(&event.payload, None)
                    .then(|| payload_owner(event))
                    .flatten(),
                metadata: has_clear_personal(&event.metadata, None)
                    .then(|| metadata_owner(event, |s| self.sessions.get(s).copied()))
                    .flatten(),
            })
            .collect())
    }

    fn remember_session(&mut self, session: &str, user: Uuid) {
        if self.sessions.len() >= CACHED_OWNERS {
            self.sessions.clear();
        }
        self.sessions.insert(session.to_owned(), user);
    }
}

fn is_erasure(event: &StoredEvent) -> bool {
    event.aggregate_type == "user" && event.event_type == "UserErased"
}

/// The user a `SessionStarted` names.
pub(crate) fn session_started_user(event: &StoredEvent) -> Option<Uuid> {
    if event.aggregate_type != "session" || event.event_type != "SessionStarted" {
        return None;
    }
    event.payload["SessionStarted"]["user_id"]
        .as_str()
        .and_then(|u| u.parse().ok())
}

/// The `actor` of an event's metadata, when it is a person (a uuid).
fn actor(event: &StoredEvent) -> Option<Uuid> {
    event.meta("actor").and_then(|a| a.parse().ok())
}

/// Whose personal data an event's payload holds: the user for the user
/// aggregate's events (`UserRegistered`), the session's user for
/// `SessionStarted`'s device. Other events hold none.
pub(crate) fn payload_owner(event: &StoredEvent) -> Option<Uuid> {
    match event.aggregate_type.as_str() {
        "user" => event.aggregate_id.parse().ok(),
        "session" => session_started_user(event),
        _ => None,
    }
}

/// Whose address and user agent an event's metadata holds, by the write side's
/// rule: the actor when it is a person, else the account the request was about
/// (the user for user events, the session's user for session events).
pub(crate) fn metadata_owner(
    event: &StoredEvent,
    session_user: impl Fn(&str) -> Option<Uuid>,
) -> Option<Uuid> {
    actor(event).or_else(|| match event.aggregate_type.as_str() {
        "user" => event.aggregate_id.parse().ok(),
        "session" => session_started_user(event).or_else(|| session_user(&event.aggregate_id)),
        _ => None,
    })
}

/// True when a personal field (by name) holds a clear string (not sealed, not
/// already `[erased]`).
pub(crate) fn has_clear_personal(value: &Value, name: Option<&str>) -> bool {
    match value {
        Value::String(s) => {
            name.and_then(Field::from_name).is_some() && sealed_owner(s).is_none() && s != ERASED
        }
        Value::Array(items) => items.iter().any(|v| has_clear_personal(v, name)),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| has_clear_personal(v, Some(k.as_str()))),
        _ => false,
    }
}

/// Replaces every string under a personal field's name by `[erased]`.
fn hide_personal(value: &mut Value, name: Option<&str>) {
    match value {
        Value::String(s) if name.and_then(Field::from_name).is_some() => {
            *s = ERASED.to_owned();
        }
        Value::Array(items) => items.iter_mut().for_each(|v| hide_personal(v, name)),
        Value::Object(map) => map
            .iter_mut()
            .for_each(|(k, v)| hide_personal(v, Some(k.as_str()))),
        _ => {}
    }
}

/// Any string that still looks sealed becomes `[erased]` (read-model rows are
/// opened by the projector; this is the last guard before output).
pub(crate) fn no_ciphertext(value: &mut Value) {
    match value {
        Value::String(s) if sealed_owner(s).is_some() => {
            *s = ERASED.to_owned();
        }
        Value::Array(items) => items.iter_mut().for_each(no_ciphertext),
        Value::Object(map) => map.values_mut().for_each(no_ciphertext),
        _ => {}
    }
}

/// The email index key, from the environment's value or a key file (the same
/// forms the server reads: 32 bytes, unpadded base64url). `None` when neither is
/// given; a given but unreadable or malformed key is an error.
pub fn email_index_key(
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<EmailIndexKey>, ReplayError> {
    let encoded = match (value, file) {
        (Some(v), _) if !v.trim().is_empty() => v.to_owned(),
        (_, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| ReplayError::EmailIndexKey(format!("{}: {e}", path.display())))?,
        _ => return Ok(None),
    };
    EmailIndexKey::parse(&encoded)
        .map(Some)
        .map_err(|e| ReplayError::EmailIndexKey(e.to_string()))
}

/// The email index key `--user <email>` is looked up with: as [`email_index_key`],
/// and when neither `value` nor `file` is given, the file the server keeps in its
/// data directory by default (`<data_dir>/email-index.key`), if there is one.
pub fn lookup_email_index_key(
    value: Option<&str>,
    file: Option<&Path>,
    data_dir: &Path,
) -> Result<Option<EmailIndexKey>, ReplayError> {
    let beside = data_dir.join(crate::EMAIL_INDEX_KEY_FILE);
    let file = file.or_else(|| beside.is_file().then_some(beside.as_path()));
    email_index_key(value, file)
}

/// The keys wrapping the data keys: `value` (as KEYLEDGER_DATA_KEY_WRAPPING_KEY,
/// several separated by commas) wins over `file` (one key per line, the first
/// wrapping); `None` when neither is given.
pub fn data_key_wrapping(
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Arc<DataKeyWrapping>>, ReplayError> {
    let encoded = match (value, file) {
        (Some(v), _) if !v.trim().is_empty() => v.to_owned(),
        (_, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| ReplayError::DataKeyWrappingKey(format!("{}: {e}", path.display())))?,
        _ => return Ok(None),
    };
    DataKeyWrapping::parse(&encoded)
        .map(|wrapping| Some(Arc::new(wrapping)))
        .map_err(|e| ReplayError::DataKeyWrappingKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clear_personal_values_are_found_by_name_and_hidden() {
        let mut metadata = json!({"actor": "anonymous", "ip": "192.0.2.1", "request_id": "r"});
        assert!(has_clear_personal(&metadata, None));
        hide_personal(&mut metadata, None);
        assert_eq!(metadata["ip"], ERASED);
        assert_eq!(metadata["request_id"], "r");
        assert!(!has_clear_personal(&metadata, None));
        let sealed = keyledger_domain::DataKey::generate().seal(Uuid::new_v4(), Field::Ip, "x");
        assert!(!has_clear_personal(&json!({"ip": sealed.as_str()}), None));
        let mut any = json!({"note": sealed.as_str(), "n": 1});
        no_ciphertext(&mut any);
        assert_eq!(any["note"], ERASED);
    }
}
