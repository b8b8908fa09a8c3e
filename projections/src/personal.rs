//! Opening sealed personal data on the read side (decision 0009).
//!
//! Events carry personal fields sealed with their owner's data key
//! (`keyledger_domain::personal`). Every reader that shows them (read models, the
//! audit trail, NATS, `keyledger-replay`) opens a batch of events here first:
//! each sealed string becomes its clear value, or `[erased]` when its owner's key
//! is gone. Readers that never show personal data (the access view, revocations,
//! the chain signer) skip this step.

use std::collections::HashMap;
use std::sync::Arc;

use keyledger_domain::personal::sealed_owner;
use keyledger_domain::{DataKey, DataKeyWrapping, Field, PersonalData};
use keyledger_storage::{with_readers, Database, Id, List};
use serde_json::Value;
use uuid::Uuid;

use crate::feed::StoredEvent;

/// Keys kept in memory at most before the cache starts over.
const CACHED_KEYS: usize = 200_000;

/// One reader's view of the data keys, cached: a projector or a replay meets the
/// same people again and again. Owned by one reader (no locking).
pub struct PersonalDataOpener {
    db: Database,
    /// The key look-up, formatted once.
    fetch_keys: String,
    wrapping: Arc<DataKeyWrapping>,
    keys: HashMap<Uuid, Option<DataKey>>,
}

impl PersonalDataOpener {
    /// Reads the keys from the live `user_data_keys` of `db` (the readers' pool
    /// on the embedded store) and unwraps them with `wrapping` (keys stored
    /// before wrapping existed are read as they are).
    pub fn new(db: &Database, wrapping: Arc<DataKeyWrapping>) -> Self {
        let backend = db.backend();
        Self {
            fetch_keys: format!(
                "SELECT owner_id, key FROM {}.user_data_keys WHERE {}",
                backend.live_schema(),
                backend.any_of("owner_id", "$1")
            ),
            db: db.clone(),
            wrapping,
            keys: HashMap::new(),
        }
    }

    /// Opens every sealed field of `events` in place, with one query for the keys
    /// this batch needs that the cache does not hold. An erasure in the batch
    /// counts from the start of the batch: its owner's key is gone by now anyway.
    pub async fn open(&mut self, events: &mut [StoredEvent]) -> Result<(), sqlx::Error> {
        for event in events.iter() {
            if event.aggregate_type == "user" && event.event_type == "UserErased" {
                if let Ok(owner) = event.aggregate_id.parse() {
                    self.keys.insert(owner, None);
                }
            }
        }
        let mut wanted = Vec::new();
        for event in events.iter() {
            collect_owners(&event.payload, &mut wanted);
            collect_owners(&event.metadata, &mut wanted);
        }
        wanted.retain(|owner| !self.keys.contains_key(owner));
        wanted.sort_unstable();
        wanted.dedup();
        if !wanted.is_empty() {
            self.fetch(&wanted).await?;
        }
        for event in events.iter_mut() {
            open_value(&mut event.payload, None, &self.keys);
            open_value(&mut event.metadata, None, &self.keys);
        }
        Ok(())
    }

    /// Forgets a key this reader holds (its owner was erased).
    pub fn forget(&mut self, owner: Uuid) {
        self.keys.insert(owner, None);
    }

    async fn fetch(&mut self, owners: &[Uuid]) -> Result<(), sqlx::Error> {
        if self.keys.len() + owners.len() > CACHED_KEYS {
            self.keys.retain(|_, key| key.is_none());
        }
        let sql = &self.fetch_keys;
        let rows: Vec<(Id, Option<Vec<u8>>)> = with_readers!(self.db, |pool| {
            sqlx::query_as(sql)
                .bind(List(owners))
                .fetch_all(pool)
                .await?
        });
        // Owners without a row have no key to open with: shown as erased.
        for owner in owners {
            self.keys.insert(*owner, None);
        }
        for (Id(owner), key) in rows {
            // A key that does not unwrap is an error (corruption, or a wrapping
            // key missing from the configuration), never "erased".
            let key = key
                .map(|stored| self.wrapping.unwrap(owner, &stored))
                .transpose()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            self.keys.insert(owner, key);
        }
        Ok(())
    }
}

fn collect_owners(value: &Value, into: &mut Vec<Uuid>) {
    match value {
        Value::String(s) => into.extend(sealed_owner(s)),
        Value::Array(items) => items.iter().for_each(|v| collect_owners(v, into)),
        Value::Object(map) => map.values().for_each(|v| collect_owners(v, into)),
        _ => {}
    }
}

/// Replaces sealed strings under a personal field's name by what they open to.
fn open_value(value: &mut Value, name: Option<&str>, keys: &HashMap<Uuid, Option<DataKey>>) {
    match value {
        Value::String(s) => {
            let Some(owner) = sealed_owner(s) else {
                return;
            };
            // A sealed string under an unknown name cannot be opened (the field is
            // part of what was sealed); it is shown as erased, never as ciphertext.
            let field = name.and_then(Field::from_name);
            let key = keys.get(&owner).and_then(Option::as_ref);
            let opened = match field {
                Some(field) => PersonalData::from(std::mem::take(s)).open(field, key),
                None => keyledger_domain::ERASED.to_owned(),
            };
            *s = opened;
        }
        Value::Array(items) => items.iter_mut().for_each(|v| open_value(v, name, keys)),
        Value::Object(map) => map
            .iter_mut()
            .for_each(|(k, v)| open_value(v, Some(k.as_str()), keys)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_fields_open_by_name_and_unknown_owners_show_as_erased() {
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let key = DataKey::generate();
        let mut payload = json!({
            "SessionStarted": {
                "user_id": alice,
                "device": {
                    "ip": key.seal(alice, Field::Ip, "192.0.2.1").as_str(),
                    "user_agent": DataKey::generate().seal(bob, Field::UserAgent, "curl").as_str(),
                },
                "note": key.seal(alice, Field::Ip, "moved").as_str(),
            }
        });
        let mut owners = Vec::new();
        collect_owners(&payload, &mut owners);
        owners.sort_unstable();
        let mut expected = vec![alice, bob, alice];
        expected.sort_unstable();
        assert_eq!(owners, expected);

        let keys = HashMap::from([(alice, Some(key)), (bob, None)]);
        open_value(&mut payload, None, &keys);
        let device = &payload["SessionStarted"]["device"];
        assert_eq!(device["ip"], "192.0.2.1");
        assert_eq!(device["user_agent"], keyledger_domain::ERASED);
        assert_eq!(payload["SessionStarted"]["note"], keyledger_domain::ERASED);
        assert_eq!(payload["SessionStarted"]["user_id"], json!(alice));
    }
}
