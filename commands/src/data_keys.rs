//! Per-person data keys: the write side seals personal fields with them before
//! they reach an event, and erasure destroys them (decision 0009).
//!
//! Keys live in `user_data_keys`, outside the append-only log, wrapped with the
//! key-encryption key of [`DataKeyWrapping`] (configuration, never in the
//! database), so a copy of the database alone opens nothing. An erased person's
//! row stays as a tombstone without its key, so nothing written later (an
//! administrator's action about them, a late request) can mint a fresh key for
//! them: their personal fields are then simply left out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use keyledger_domain::values::PasswordHash;
use keyledger_domain::{DataKey, DataKeyWrapping, Device, Field, PersonalData, SealedPasswordHash};
use uuid::Uuid;

use crate::auth::RequestContext;
use keyledger_storage::{with_readers, with_transaction, with_writer, Database, Id};

/// The narrow storage contract for data keys.
pub trait DataKeyStore: Send + Sync {
    /// The owner's key, created on first use; `None` once the owner was erased.
    fn key_for(
        &self,
        owner: Uuid,
    ) -> impl Future<Output = Result<Option<DataKey>, sqlx::Error>> + Send;
    /// The owner's key if one exists (opening must never mint one).
    fn existing_key(
        &self,
        owner: Uuid,
    ) -> impl Future<Output = Result<Option<DataKey>, sqlx::Error>> + Send;
    /// Destroys the owner's key for good (idempotent).
    fn erase(&self, owner: Uuid) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// A stored key column: `None` is an erased person's tombstone; a key that does
/// not unwrap (wrong length, unknown wrapping key, altered) is an error, never
/// read as erased.
fn data_key(
    wrapping: &DataKeyWrapping,
    owner: Uuid,
    bytes: Option<Vec<u8>>,
) -> Result<Option<DataKey>, sqlx::Error> {
    bytes
        .map(|stored| wrapping.unwrap(owner, &stored))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Keys rewrapped per transaction by [`DataKeys::rewrap`].
const REWRAP_BATCH: i64 = 1_000;

/// `user_data_keys`, on either back end.
#[derive(Clone)]
pub struct DataKeys {
    db: Database,
    wrapping: Arc<DataKeyWrapping>,
}

impl DataKeys {
    pub fn new(db: &Database, wrapping: Arc<DataKeyWrapping>) -> Self {
        Self {
            db: db.clone(),
            wrapping,
        }
    }

    /// Rewraps every stored key not wrapped with the current wrapping key: keys
    /// written before wrapping existed, and keys wrapped with a key since retired.
    /// The server runs it at every start (a no-op query once all are current), so
    /// configuring a new wrapping key first, with the old one after it, and
    /// restarting completes a rotation. Returns how many keys it rewrapped. A key
    /// erased meanwhile stays erased (its row is locked, or the writer is held,
    /// from the read to the update).
    pub async fn rewrap(&self) -> Result<u64, sqlx::Error> {
        let current = self.wrapping.current_id_bytes();
        let stale = format!(
            "SELECT owner_id, key FROM user_data_keys
              WHERE key IS NOT NULL AND (length(key) <> $2 OR substr(key, 2, 8) <> $1)
              LIMIT $3{}",
            self.db.backend().lock_rows_skipping_locked()
        );
        let mut done = 0;
        loop {
            let rewrapped: u64 = with_transaction!(self.db, |tx| {
                let rows: Vec<(Id, Vec<u8>)> = sqlx::query_as(&stale)
                    .bind(current.as_slice())
                    .bind(keyledger_domain::WRAPPED_DATA_KEY_LEN as i64)
                    .bind(REWRAP_BATCH)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut rewrapped = 0;
                for (Id(owner), stored) in rows {
                    let Some(key) = data_key(&self.wrapping, owner, Some(stored))? else {
                        continue;
                    };
                    sqlx::query("UPDATE user_data_keys SET key = $2 WHERE owner_id = $1")
                        .bind(Id(owner))
                        .bind(self.wrapping.wrap(owner, &key))
                        .execute(&mut *tx)
                        .await?;
                    rewrapped += 1;
                }
                rewrapped
            });
            if rewrapped == 0 {
                return Ok(done);
            }
            done += rewrapped;
        }
    }
}

impl DataKeyStore for DataKeys {
    async fn key_for(&self, owner: Uuid) -> Result<Option<DataKey>, sqlx::Error> {
        let fresh = self.wrapping.wrap(owner, &DataKey::generate());
        let now = Utc::now();
        // One statement: the key just inserted, the one already there, or none
        // (a tombstone). The conflict's no-op update is what lets RETURNING
        // give the existing row on both back ends (SQLite allows no INSERT in
        // a CTE).
        let key: Option<Vec<u8>> = with_writer!(self.db, |conn| {
            sqlx::query_scalar(
                "INSERT INTO user_data_keys (owner_id, key, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (owner_id) DO UPDATE SET key = user_data_keys.key
                 RETURNING key",
            )
            .bind(Id(owner))
            .bind(fresh)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?
        });
        data_key(&self.wrapping, owner, key)
    }

    async fn existing_key(&self, owner: Uuid) -> Result<Option<DataKey>, sqlx::Error> {
        let row: Option<Option<Vec<u8>>> = with_readers!(self.db, |pool| {
            sqlx::query_scalar("SELECT key FROM user_data_keys WHERE owner_id = $1")
                .bind(Id(owner))
                .fetch_optional(pool)
                .await?
        });
        data_key(&self.wrapping, owner, row.flatten())
    }

    async fn erase(&self, owner: Uuid) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        with_writer!(self.db, |conn| {
            sqlx::query(
                "INSERT INTO user_data_keys (owner_id, key, created_at, erased_at)
                 VALUES ($1, NULL, $2, $2)
                 ON CONFLICT (owner_id) DO UPDATE SET key = NULL,
                     erased_at = COALESCE(user_data_keys.erased_at, excluded.erased_at)",
            )
            .bind(Id(owner))
            .bind(now)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }
}

/// Seals personal fields for the write side, with the keys it used last kept in
/// memory: logins and refreshes seal the caller's address and user agent on every
/// request, and a key lookup per request would be a query the hot path does not
/// need. A key only ever goes from present to erased, and erasure goes through
/// [`Self::erase`] on the node that performs it; other nodes may hold a key a moment
/// longer, but an erased account can no longer act (its sessions are ended and its
/// address no longer finds it), so nothing new is sealed with it.
pub struct PersonalDataSealer<S = DataKeys> {
    store: S,
    cache: Mutex<HashMap<Uuid, Option<DataKey>>>,
}

impl PersonalDataSealer<DataKeys> {
    /// The sealer over `storage`'s data keys, wrapped with `wrapping`.
    pub fn for_storage(storage: &Database, wrapping: Arc<DataKeyWrapping>) -> Self {
        Self::new(DataKeys::new(storage, wrapping))
    }
}

/// Keys kept in memory at most (32 bytes each, plus the map's overhead).
const CACHED_KEYS: usize = 100_000;

impl<S: DataKeyStore> PersonalDataSealer<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, owner: Uuid) -> Option<Option<DataKey>> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&owner)
            .cloned()
    }

    /// The owner's key (created on first use), `None` once erased.
    pub async fn key_for(&self, owner: Uuid) -> Result<Option<DataKey>, sqlx::Error> {
        if let Some(known) = self.cached(owner) {
            return Ok(known);
        }
        let key = self.store.key_for(owner).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED_KEYS {
            cache.clear();
        }
        cache.insert(owner, key.clone());
        Ok(key)
    }

    /// `clear` sealed for `owner`; `None` when the owner was erased (the field is
    /// then left out rather than written in clear).
    pub async fn seal(
        &self,
        owner: Uuid,
        field: Field,
        clear: &str,
    ) -> Result<Option<PersonalData>, sqlx::Error> {
        Ok(self
            .key_for(owner)
            .await?
            .map(|key| key.seal(owner, field, clear)))
    }

    /// `hash` sealed for `owner`; `None` once the owner was erased.
    pub async fn seal_password_hash(
        &self,
        owner: Uuid,
        hash: &PasswordHash,
    ) -> Result<Option<SealedPasswordHash>, sqlx::Error> {
        Ok(self
            .key_for(owner)
            .await?
            .map(|key| SealedPasswordHash::seal(&key, owner, hash)))
    }

    /// The password hash `owner`'s account holds, to verify a password against:
    /// used as stored when it was written in clear (no key needed), opened with
    /// the owner's key (the one [`Self::metadata`] caches for the same request)
    /// when sealed; `None` when it does not open (the owner was erased).
    pub async fn open_password_hash(
        &self,
        owner: Uuid,
        stored: &SealedPasswordHash,
    ) -> Result<Option<PasswordHash>, sqlx::Error> {
        if !stored.is_sealed() {
            return Ok(stored.open(None));
        }
        Ok(stored.open(self.key_for(owner).await?.as_ref()))
    }

    /// The clear value of a field sealed for anyone whose key this node can get
    /// (clear text from old events as it is; [`keyledger_domain::ERASED`] once
    /// erased).
    pub async fn open(&self, value: &PersonalData, field: Field) -> Result<String, sqlx::Error> {
        let key = match value.owner() {
            Some(owner) => self.existing_key(owner).await?,
            None => None,
        };
        Ok(value.open(field, key.as_ref()))
    }

    /// Like [`Self::key_for`] but never creates one (opening must not mint keys);
    /// a missing key is not cached, so a later [`Self::key_for`] still creates it.
    async fn existing_key(&self, owner: Uuid) -> Result<Option<DataKey>, sqlx::Error> {
        if let Some(known) = self.cached(owner) {
            return Ok(known);
        }
        self.store.existing_key(owner).await
    }

    /// Destroys the owner's key, here and in the store.
    pub async fn erase(&self, owner: Uuid) -> Result<(), sqlx::Error> {
        self.store.erase(owner).await?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(owner, None);
        Ok(())
    }

    /// The event metadata of a request (who, from where, when). The address and
    /// user agent belong to the person acting (`actor`, else the context's
    /// authenticated caller, else `about`: the account an anonymous request such
    /// as a login concerns), and are sealed with that person's key; with nobody
    /// to seal them for they are left out.
    pub async fn metadata(
        &self,
        ctx: &RequestContext,
        at: DateTime<Utc>,
        actor: Option<Uuid>,
        about: Option<Uuid>,
    ) -> Result<HashMap<String, String>, sqlx::Error> {
        let mut m = HashMap::new();
        m.insert("request_id".into(), ctx.request_id.clone());
        m.insert("occurred_at".into(), at.to_rfc3339());
        let actor = actor.or(ctx.actor);
        m.insert(
            "actor".into(),
            actor.map_or_else(|| "anonymous".to_owned(), |a| a.to_string()),
        );
        if let Some(owner) = actor.or(about) {
            let device = self.device(ctx, owner).await?;
            if let Some(ip) = device.ip {
                m.insert("ip".into(), ip.as_str().to_owned());
            }
            if let Some(ua) = device.user_agent {
                m.insert("user_agent".into(), ua.as_str().to_owned());
            }
        }
        Ok(m)
    }

    /// The request's device, sealed for `owner`.
    pub async fn device(&self, ctx: &RequestContext, owner: Uuid) -> Result<Device, sqlx::Error> {
        if ctx.ip.is_none() && ctx.user_agent.is_none() {
            return Ok(Device::default());
        }
        let Some(key) = self.key_for(owner).await? else {
            return Ok(Device::default());
        };
        Ok(Device {
            ip: ctx.ip.as_deref().map(|ip| key.seal(owner, Field::Ip, ip)),
            user_agent: ctx
                .user_agent
                .as_deref()
                .map(|ua| key.seal(owner, Field::UserAgent, &Device::bounded_user_agent(ua))),
        })
    }
}
