//! Tamper evidence: every event is chained, and the whole log is signed now and then.
//!
//! - **Per-aggregate chains.** The database gives every event a `chain_hash`
//!   (trigger in `migrations/…_event_chain.sql`): SHA-256 of the previous event of
//!   the same aggregate's hash (or 32 zero bytes) and the event's canonical bytes
//!   ([`CanonicalEvent::chain_hash`] computes the same thing). Chains are per
//!   aggregate so that writers of different aggregates never wait for each other.
//! - **A running log hash.** Over the ordered feed (commit order, see
//!   [`crate::feed`]): `log_n = sha256(log_{n-1} || chain_hash_n)` ([`LogState`]).
//!   It commits to every event and to their order across aggregates.
//! - **Signed checkpoints.** The [`ChainSigner`] periodically writes the log hash,
//!   the position it stands at and the number of events it covers into
//!   `chain_checkpoints`, signed (Ed25519) with an audit key whose secret never
//!   enters the database. Whoever can write the database can recompute every chain
//!   hash, but cannot sign; `keyledger-replay verify` checks the log against the
//!   checkpoints with the public key brought from elsewhere.
//!
//! On the embedded SQLite store the appender computes the same chain hashes (no
//! trigger there), and `signed_at` is stored as INTEGER microseconds, the number
//! the signature covers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_storage::{per_backend, with_readers, Connection, Database, Engine, Micros};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::version4::V4;
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use tokio::task::JoinHandle;

use crate::feed::{EventFeed, FeedError, Position};

pub use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};

/// The running hash of the log in feed order, and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    /// The last event folded in ([`Position::START`] for none).
    pub position: Position,
    /// Events folded in.
    pub event_count: i64,
    /// `log_n = sha256(log_{n-1} || chain_hash_n)`, from [`ZERO_HASH`].
    pub log_hash: Hash,
}

impl LogState {
    /// The state of an empty log.
    pub const START: LogState = LogState {
        position: Position::START,
        event_count: 0,
        log_hash: ZERO_HASH,
    };

    /// Folds in the next event of the feed.
    pub fn push(&mut self, position: Position, chain_hash: &Hash) {
        let mut hasher = Sha256::new();
        hasher.update(self.log_hash);
        hasher.update(chain_hash);
        self.log_hash = hasher.finalize().into();
        self.event_count += 1;
        self.position = position;
    }
}

/// One row of `chain_checkpoints`: the log hash up to a position, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: i64,
    /// Part of what is signed; microsecond precision, like the column.
    pub signed_at: DateTime<Utc>,
    /// Position, number of events and log hash it vouches for.
    pub state: LogState,
    /// PASERK id (`k4.pid.…`) of the audit key that signed it.
    pub key_id: String,
    /// Ed25519 over [`Checkpoint::signed_message`].
    pub signature: Vec<u8>,
}

macro_rules! checkpoint_columns {
    () => {
        "id, signed_at, tx_id, global_position, event_count, log_hash, key_id, signature"
    };
}

/// The columns [`Checkpoint::from_row`] reads.
pub const CHECKPOINT_COLUMNS: &str = checkpoint_columns!();

const DOMAIN: &[u8] = b"keyledger chain checkpoint v1\0";

impl Checkpoint {
    /// Decodes a row of either back end selected with [`CHECKPOINT_COLUMNS`]
    /// (`signed_at` is INTEGER microseconds on the embedded store). A log hash of
    /// the wrong length (possible only by dropping the table's CHECK) reads as
    /// zeros, which no signature covers, so it is reported as a bad signature.
    pub fn from_row<'r, R>(row: &'r R) -> Result<Self, sqlx::Error>
    where
        R: Row,
        &'r str: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        Micros: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let log_hash: Vec<u8> = row.try_get("log_hash")?;
        Ok(Self {
            id: row.try_get("id")?,
            signed_at: row.try_get::<Micros, _>("signed_at")?.0,
            state: LogState {
                position: Position {
                    tx_id: row.try_get("tx_id")?,
                    global_position: row.try_get("global_position")?,
                },
                event_count: row.try_get("event_count")?,
                log_hash: Hash::try_from(log_hash.as_slice()).unwrap_or(ZERO_HASH),
            },
            key_id: row.try_get("key_id")?,
            signature: row.try_get("signature")?,
        })
    }

    /// [`Self::from_row`], for callers that name the embedded store's rows.
    pub fn from_sqlite_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Self::from_row(row)
    }

    /// The bytes the audit key signs: a domain tag, then position, event count,
    /// log hash and signing time in fixed widths, so no two checkpoints share them.
    pub fn signed_message(signed_at: DateTime<Utc>, state: &LogState) -> Vec<u8> {
        let mut message = Vec::with_capacity(DOMAIN.len() + 4 * 8 + 32);
        message.extend_from_slice(DOMAIN);
        message.extend_from_slice(&state.position.tx_id.to_be_bytes());
        message.extend_from_slice(&state.position.global_position.to_be_bytes());
        message.extend_from_slice(&state.event_count.to_be_bytes());
        message.extend_from_slice(&state.log_hash);
        message.extend_from_slice(&signed_at.timestamp_micros().to_be_bytes());
        message
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Feed(#[from] FeedError),
    #[error("audit key: {0}")]
    Key(String),
    /// The newest checkpoint carrying our key id does not verify with our key:
    /// someone wrote into `chain_checkpoints`. Signing on top would launder it.
    #[error(
        "chain checkpoint {id} claims this audit key but its signature does not verify; \
         not signing on top of it (run keyledger-replay verify)"
    )]
    UntrustedCheckpoint { id: i64 },
}

/// The public half of an audit key: what auditors hold, outside the database.
#[derive(Clone)]
pub struct AuditPublicKey {
    key: ed25519_compact::PublicKey,
    id: String,
    paserk: String,
}

impl AuditPublicKey {
    /// From a PASERK `k4.public.…`.
    pub fn from_paserk(paserk: &str) -> Result<Self, ChainError> {
        let key = AsymmetricPublicKey::<V4>::try_from(paserk.trim())
            .map_err(|_| ChainError::Key("not a k4.public PASERK".into()))?;
        Self::from_key(&key)
    }

    fn from_key(key: &AsymmetricPublicKey<V4>) -> Result<Self, ChainError> {
        let raw = ed25519_compact::PublicKey::from_slice(key.as_bytes())
            .map_err(|_| ChainError::Key("not an Ed25519 public key".into()))?;
        Ok(Self {
            key: raw,
            id: paserk(&Id::from(key)),
            paserk: paserk(key),
        })
    }

    /// PASERK id (`k4.pid.…`), as stored in `chain_checkpoints.key_id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// PASERK `k4.public.…`, to hand to auditors.
    pub fn paserk(&self) -> &str {
        &self.paserk
    }

    /// True when this key signed exactly what the checkpoint says.
    pub fn verifies(&self, checkpoint: &Checkpoint) -> bool {
        let Ok(signature) = ed25519_compact::Signature::from_slice(&checkpoint.signature) else {
            return false;
        };
        checkpoint.key_id == self.id
            && self
                .key
                .verify(
                    Checkpoint::signed_message(checkpoint.signed_at, &checkpoint.state),
                    &signature,
                )
                .is_ok()
    }
}

impl fmt::Debug for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AuditPublicKey").field(&self.id).finish()
    }
}

/// The audit key that signs checkpoints. Lives in a file or the environment of the
/// signing nodes, never in the database; `Debug` shows only its public id.
pub struct AuditKey {
    secret: ed25519_compact::SecretKey,
    public: AuditPublicKey,
}

impl AuditKey {
    /// From a PASERK `k4.secret.…`.
    pub fn from_paserk(paserk: &str) -> Result<Self, ChainError> {
        let secret = AsymmetricSecretKey::<V4>::try_from(paserk.trim())
            .map_err(|_| ChainError::Key("not a k4.secret PASERK".into()))?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret)
            .map_err(|_| ChainError::Key("not an Ed25519 secret key".into()))?;
        let raw = ed25519_compact::SecretKey::from_slice(secret.as_bytes())
            .map_err(|_| ChainError::Key("not an Ed25519 secret key".into()))?;
        Ok(Self {
            secret: raw,
            public: AuditPublicKey::from_key(&public)?,
        })
    }

    /// A fresh key as PASERK `(k4.secret.…, k4.public.…)`.
    pub fn generate() -> Result<(String, String), ChainError> {
        let pair = AsymmetricKeyPair::<V4>::generate()
            .map_err(|_| ChainError::Key("cannot generate a key".into()))?;
        Ok((paserk(&pair.secret), paserk(&pair.public)))
    }

    pub fn public_key(&self) -> &AuditPublicKey {
        &self.public
    }

    fn sign(&self, signed_at: DateTime<Utc>, state: &LogState) -> Vec<u8> {
        // Deterministic (RFC 8032) signatures: no randomness needed.
        self.secret
            .sign(Checkpoint::signed_message(signed_at, state), None)
            .to_vec()
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("public", &self.public.id)
            .finish_non_exhaustive()
    }
}

fn paserk<K: FormatAsPaserk>(key: &K) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = key.fmt(&mut out);
    out
}

/// Signs checkpoints of the log. Each resumes from the newest checkpoint its own
/// key signed (after checking that signature), so it never trusts a row it
/// cannot verify.
///
/// - PostgreSQL: any number of nodes may run one; a transaction advisory lock
///   lets one sign at a time.
/// - Embedded SQLite: one server per data directory. The feed is folded outside
///   any transaction (a read transaction that later writes would fail with
///   `SQLITE_BUSY_SNAPSHOT`), then the checkpoint is appended in a short
///   `BEGIN IMMEDIATE` on the writer, which first checks that no other signer
///   (`sign_now` beside the periodic one, a tool) appended one meanwhile.
#[derive(Clone)]
pub struct ChainSigner {
    db: Database,
    feed: EventFeed,
    key: Arc<AuditKey>,
}

const SIGNER_LOCK: &str = "keyledger:chain_signer";
const SIGNER_BATCH: i64 = 10_000;

impl ChainSigner {
    pub fn new(db: Database, key: Arc<AuditKey>) -> Self {
        Self {
            feed: EventFeed::new(db.clone()),
            db,
            key,
        }
    }

    /// Signs the final log up to its head now, waiting for another signer to
    /// finish first. `None` when nothing happened since this key's last checkpoint.
    pub async fn sign_now(&self) -> Result<Option<Checkpoint>, ChainError> {
        self.sign(true).await
    }

    /// Signs every `every` (first after one period) until aborted; skips a round
    /// when another node is signing.
    pub fn spawn(self, every: Duration) -> JoinHandle<()> {
        tracing::info!(audit_key = %self.key.public.paserk, "signing chain checkpoints");
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + every;
            let mut ticker = tokio::time::interval_at(start, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match self.sign(false).await {
                    Ok(Some(c)) => {
                        metrics::counter!("keyledger_chain_checkpoints_total").increment(1);
                        // An off-database record of what was signed: keep these lines.
                        tracing::info!(
                            checkpoint = c.id,
                            tx_id = c.state.position.tx_id,
                            global_position = c.state.position.global_position,
                            events = c.state.event_count,
                            log_hash = %hex(&c.state.log_hash),
                            "signed chain checkpoint"
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        metrics::counter!("keyledger_chain_checkpoint_errors_total").increment(1);
                        tracing::error!(error = %e, "cannot sign a chain checkpoint");
                    }
                }
            }
        })
    }

    /// The two ways signers take turns, side by side: on PostgreSQL a
    /// transaction advisory lock held while the signer folds and appends; on the
    /// embedded store a fold outside any transaction and a short write that
    /// appends only if no other signer appended meanwhile.
    async fn sign(&self, wait: bool) -> Result<Option<Checkpoint>, ChainError> {
        match self.db.engine() {
            Engine::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                if wait {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                        .bind(SIGNER_LOCK)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    let got: bool =
                        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
                            .bind(SIGNER_LOCK)
                            .fetch_one(&mut *tx)
                            .await?;
                    if !got {
                        return Ok(None);
                    }
                }
                let last =
                    last_signed_on(Connection::Postgres(&mut tx), self.key.public.id()).await?;
                let Some((signed_at, state)) = self.fold_from(last.as_ref()).await? else {
                    return Ok(None);
                };
                let checkpoint = self
                    .append(Connection::Postgres(&mut tx), signed_at, state)
                    .await?;
                tx.commit().await?;
                Ok(Some(checkpoint))
            }
            Engine::Sqlite(embedded) => loop {
                let last = last_signed_by(&self.db, self.key.public.id()).await?;
                let Some((signed_at, state)) = self.fold_from(last.as_ref()).await? else {
                    return Ok(None);
                };
                let mut tx = embedded.begin_write().await?;
                let newest =
                    last_signed_on(Connection::Sqlite(&mut tx), self.key.public.id()).await?;
                if newest.as_ref().map(|c| c.id) != last.as_ref().map(|c| c.id) {
                    // Another signer got there first: start again from its
                    // checkpoint (dropping the transaction rolls it back), or
                    // leave it this round.
                    drop(tx);
                    if wait {
                        continue;
                    }
                    return Ok(None);
                }
                let checkpoint = self
                    .append(Connection::Sqlite(&mut tx), signed_at, state)
                    .await?;
                tx.commit().await?;
                return Ok(Some(checkpoint));
            },
        }
    }

    /// Signs `state` at `signed_at` and appends the checkpoint on `conn`.
    async fn append(
        &self,
        conn: Connection<'_>,
        signed_at: DateTime<Utc>,
        state: LogState,
    ) -> Result<Checkpoint, sqlx::Error> {
        let signature = self.key.sign(signed_at, &state);
        let id: i64 = per_backend!(conn, |conn| {
            sqlx::query_scalar(
                "INSERT INTO chain_checkpoints
                        (signed_at, tx_id, global_position, event_count, log_hash, key_id,
                         signature)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 RETURNING id",
            )
            .bind(Micros(signed_at))
            .bind(state.position.tx_id)
            .bind(state.position.global_position)
            .bind(state.event_count)
            .bind(&state.log_hash[..])
            .bind(self.key.public.id())
            .bind(&signature)
            .fetch_one(conn)
            .await?
        });
        Ok(Checkpoint {
            id,
            signed_at,
            state,
            key_id: self.key.public.id().to_owned(),
            signature,
        })
    }

    /// Extends the state of `last` (checked against our key) to the head of the
    /// feed. `None` when there is nothing new to sign; otherwise the signing time
    /// (whole microseconds, what the column keeps) and the state to sign.
    async fn fold_from(
        &self,
        last: Option<&Checkpoint>,
    ) -> Result<Option<(DateTime<Utc>, LogState)>, ChainError> {
        let mut state = match last {
            Some(checkpoint) if self.key.public.verifies(checkpoint) => checkpoint.state,
            Some(checkpoint) => return Err(ChainError::UntrustedCheckpoint { id: checkpoint.id }),
            None => LogState::START,
        };
        let from = state.position;
        loop {
            let batch = self
                .feed
                .read_chain_after(state.position, SIGNER_BATCH)
                .await?;
            for (position, chain_hash) in &batch {
                state.push(*position, chain_hash);
            }
            if (batch.len() as i64) < SIGNER_BATCH {
                break;
            }
        }
        if state.position == from {
            return Ok(None);
        }
        let now = Utc::now();
        let signed_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        Ok(Some((signed_at, state)))
    }
}

/// The newest checkpoint that claims to be signed by `key_id` (unverified: check
/// it with [`AuditPublicKey::verifies`]).
pub async fn last_signed_by(
    db: &Database,
    key_id: &str,
) -> Result<Option<Checkpoint>, sqlx::Error> {
    with_readers!(db, |pool| {
        let row = sqlx::query(LAST_SIGNED_BY)
            .bind(key_id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(Checkpoint::from_row).transpose()
    })
}

/// [`last_signed_by`] on `conn`, in the caller's transaction.
async fn last_signed_on(
    conn: Connection<'_>,
    key_id: &str,
) -> Result<Option<Checkpoint>, sqlx::Error> {
    per_backend!(conn, |conn| {
        let row = sqlx::query(LAST_SIGNED_BY)
            .bind(key_id)
            .fetch_optional(conn)
            .await?;
        row.as_ref().map(Checkpoint::from_row).transpose()
    })
}

/// Same SQL on both back ends.
const LAST_SIGNED_BY: &str = concat!(
    "SELECT ",
    checkpoint_columns!(),
    " FROM chain_checkpoints WHERE key_id = $1
      ORDER BY tx_id DESC, global_position DESC, id DESC LIMIT 1"
);

/// Lower-case hex, for log lines and reports.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> CanonicalEvent<'_> {
        CanonicalEvent {
            aggregate_type: "user",
            aggregate_id: "u1",
            sequence: 1,
            event_type: "E",
            event_version: "1.0",
            payload,
            metadata: "{}",
            recorded_at_micros: 1_700_000_000_000_000,
            tx_id: 7,
            global_position: 3,
        }
    }

    #[test]
    fn lengths_keep_fields_apart() {
        let a = CanonicalEvent {
            event_type: "Ab",
            event_version: "c",
            ..event("{}")
        };
        let b = CanonicalEvent {
            event_type: "A",
            event_version: "bc",
            ..event("{}")
        };
        assert_ne!(a.chain_hash(&ZERO_HASH), b.chain_hash(&ZERO_HASH));
        assert_ne!(
            event("{}").chain_hash(&ZERO_HASH),
            event("{}").chain_hash(&[1; 32])
        );
        // The stored text counts, not its meaning.
        assert_ne!(
            event("{\"a\":1}").chain_hash(&ZERO_HASH),
            event("{\"a\": 1}").chain_hash(&ZERO_HASH)
        );
    }

    #[test]
    fn checkpoints_verify_only_with_their_key_and_content() {
        let (secret, public) = AuditKey::generate().unwrap();
        let key = AuditKey::from_paserk(&secret).unwrap();
        let public = AuditPublicKey::from_paserk(&public).unwrap();
        assert_eq!(key.public_key().id(), public.id());
        assert!(!format!("{key:?}").contains(&secret));

        let mut state = LogState::START;
        state.push(
            Position {
                tx_id: 1,
                global_position: 1,
            },
            &[9; 32],
        );
        let signed_at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let checkpoint = Checkpoint {
            id: 1,
            signed_at,
            state,
            key_id: public.id().to_owned(),
            signature: key.sign(signed_at, &state),
        };
        assert!(public.verifies(&checkpoint));

        let mut other = checkpoint.clone();
        other.state.event_count = 2;
        assert!(!public.verifies(&other));
        let mut other = checkpoint.clone();
        other.state.log_hash[0] ^= 1;
        assert!(!public.verifies(&other));
        let mut other = checkpoint.clone();
        other.signature.truncate(10);
        assert!(!public.verifies(&other));

        let (_, stranger) = AuditKey::generate().unwrap();
        let stranger = AuditPublicKey::from_paserk(&stranger).unwrap();
        let mut other = checkpoint.clone();
        other.key_id = stranger.id().to_owned();
        assert!(!stranger.verifies(&other));
    }
}
