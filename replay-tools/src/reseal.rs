//! `keyledger-replay reseal`: the one-time migration of a log written before
//! personal data was sealed (decisions 0009 and 0010).
//!
//! Events written before sealing hold emails, display names, addresses and user
//! agents in clear (`UserRegistered` and `SessionStarted` 1.0, and the `ip` /
//! `user_agent` of any event's metadata). Deleting a data key cannot hide them, and
//! the log is append-only and hash-chained, so the only way to make them erasable
//! is to write the log again, once, sealed. That is the only operation that
//! rewrites history; it is explicit, it needs the audit key, and it leaves evidence:
//!
//! 1. It refuses to run while a server holds the projector's or a NATS relay's
//!    leadership lock, and holds those locks itself until it is done.
//! 2. In ONE transaction (so an interruption leaves nothing behind and a rerun
//!    starts over): it locks the log against writes, runs `verify` on it (a
//!    tampered log must not be laundered into a freshly chained one), and copies
//!    it in feed order into `keyledger_reseal.events`, a table of the same shape,
//!    with every clear personal value sealed with its owner's data key (created
//!    in `user_data_keys` as needed; an erased owner's value becomes `[erased]` in
//!    a payload and is dropped from metadata, as is metadata with no owner at
//!    all). Resealed `UserRegistered` / `SessionStarted` become version 2.0;
//!    clear password hashes are sealed too (`UserRegistered` then 3.0,
//!    `PasswordChanged` / `PasswordRehashed` 2.0; an erased owner's becomes
//!    `[erased]`).
//!    Aggregate ids, sequences, event types, `recorded_at`, `tx_id` and
//!    `global_position` are kept, so the feed order is unchanged. The chain
//!    trigger computes every chain hash again: its predecessor look-up names
//!    `events` unqualified, so the copy runs with `search_path` pointing at the
//!    new table first (inserted into a table elsewhere, it would chain to the old
//!    log's hashes, and `verify` would reject the result).
//! 3. It signs a checkpoint of the old log at its head (in the old
//!    `chain_checkpoints`), moves the old `events` and `chain_checkpoints` into a
//!    schema `keyledger_before_reseal_<UTC time>` (kept, read-only: an insert
//!    trigger refuses writes), moves the new table into `public` (with the global
//!    position sequence, so new events continue after the old ones), starts a new
//!    `chain_checkpoints` with a signed checkpoint of the new log at its head, and
//!    records the link in `reseal_log`: archive name, both logs' heads, event
//!    counts and final log hashes, signed by the audit key over
//!    [`link_message`]. `verify` checks that signature and that the current log
//!    (or, with `--schema`, the archived one) holds a checkpoint with the linked
//!    log hash.
//! 4. Feed checkpoints: the read-model projector's is deleted (the read models are
//!    projected again from the new log on the next start; the result is the same,
//!    since the opened values are), and every NATS relay's is set to the new log's
//!    head, so nothing is published twice.

use keyledger_domain::DataKeyWrapping;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use keyledger_domain::personal::sealed_owner;
use keyledger_domain::values::PasswordHash;
use keyledger_domain::{DataKey, Field, SealedPasswordHash, ERASED};
use keyledger_projections::chain::{hex, Checkpoint, Hash, LogState};
use keyledger_projections::read_models::CHECKPOINT;
use keyledger_projections::{lock_key, AuditPublicKey, Position, StoredEvent};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::personal::{metadata_owner, payload_owner, session_started_user};
use crate::verify::{verify, VerifyOptions};
use crate::ReplayError;

/// Where the new log is built before the swap.
const STAGING: &str = "keyledger_reseal";
/// Keys (and session owners) kept in memory at most before starting over.
const CACHED: usize = 200_000;
const LINK_DOMAIN: &[u8] = b"keyledger reseal link v1\0";

/// How a reseal runs.
pub struct ResealOptions {
    /// The audit key (PASERK `k4.secret`) that signs the checkpoints and the link.
    pub audit_key: ResealSigner,
    /// More public keys the old log's checkpoints may be signed with (rotated keys).
    pub public_keys: Vec<AuditPublicKey>,
    /// Events copied per statement.
    pub batch_size: i64,
    /// Only count what would be sealed.
    pub dry_run: bool,
    /// The server's data key wrapping keys: existing data keys are stored
    /// wrapped with them, and new ones are wrapped with the first. Without them
    /// a wrapped key is an error (never read as an erased owner), and new keys
    /// are stored unwrapped (the server wraps them at its next start).
    pub data_key_wrapping: Option<Arc<DataKeyWrapping>>,
}

/// The audit key, able to sign checkpoints and reseal links.
pub struct ResealSigner {
    secret: ed25519_compact::SecretKey,
    public: AuditPublicKey,
}

impl ResealSigner {
    /// From a PASERK `k4.secret.…` (the audit key file's content).
    pub fn from_paserk(paserk: &str) -> Result<Self, ReplayError> {
        let bad = || ReplayError::AuditKey("not a k4.secret PASERK".into());
        let secret =
            pasetors::keys::AsymmetricSecretKey::<pasetors::version4::V4>::try_from(paserk.trim())
                .map_err(|_| bad())?;
        let raw = ed25519_compact::SecretKey::from_slice(secret.as_bytes()).map_err(|_| bad())?;
        let public = keyledger_projections::AuditKey::from_paserk(paserk)
            .map_err(|e| ReplayError::AuditKey(e.to_string()))?
            .public_key()
            .clone();
        Ok(Self {
            secret: raw,
            public,
        })
    }

    /// The public half, for verifying.
    pub fn public_key(&self) -> &AuditPublicKey {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.secret.sign(message, None).to_vec()
    }
}

/// What a reseal did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq)]
pub struct ResealReport {
    /// Events in the log.
    pub events: u64,
    /// Events whose payload held clear personal fields (sealed now).
    pub payloads: u64,
    /// Events whose metadata held a clear address or user agent.
    pub metadata: u64,
    /// Clear metadata values dropped (no owner, or the owner was erased).
    pub dropped: u64,
    /// Data keys created for owners that had none.
    pub keys_created: u64,
    /// The schema the old log was moved to (`None` for a dry run or nothing to do).
    pub archive: Option<String>,
    /// The old log's head and final log hash.
    pub old: LogState,
    /// The new log's head and final log hash.
    pub new: LogState,
    /// Wall time.
    pub elapsed: Duration,
}

/// The bytes a reseal link's signature covers: a domain tag, the archive's name
/// (length-prefixed), both logs' heads, event counts and log hashes, and the time,
/// in fixed widths.
pub fn link_message(
    archive: &str,
    old: &LogState,
    new: &LogState,
    resealed_at: DateTime<Utc>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(LINK_DOMAIN.len() + 4 + archive.len() + 2 * 56 + 8);
    m.extend_from_slice(LINK_DOMAIN);
    m.extend_from_slice(&(archive.len() as u32).to_be_bytes());
    m.extend_from_slice(archive.as_bytes());
    for state in [old, new] {
        m.extend_from_slice(&state.position.tx_id.to_be_bytes());
        m.extend_from_slice(&state.position.global_position.to_be_bytes());
        m.extend_from_slice(&state.event_count.to_be_bytes());
        m.extend_from_slice(&state.log_hash);
    }
    m.extend_from_slice(&resealed_at.timestamp_micros().to_be_bytes());
    m
}

/// One row of `reseal_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResealLink {
    /// Row id.
    pub id: i64,
    /// When the reseal ran (part of what is signed).
    pub resealed_at: DateTime<Utc>,
    /// Schema holding the old log and its checkpoints.
    pub archive: String,
    /// The old log at its head.
    pub old: LogState,
    /// The new log at its head.
    pub new: LogState,
    /// PASERK id of the audit key that signed it.
    pub key_id: String,
    /// Ed25519 over [`link_message`].
    pub signature: Vec<u8>,
}

impl ResealLink {
    /// Every link, oldest first (none when no reseal ever ran).
    pub(crate) async fn all(conn: &mut PgConnection) -> Result<Vec<Self>, sqlx::Error> {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('public.reseal_log') IS NOT NULL")
                .fetch_one(&mut *conn)
                .await?;
        if !exists {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, resealed_at, archive_schema, old_tx_id, old_global_position,
                    old_event_count, old_log_hash, new_tx_id, new_global_position,
                    new_event_count, new_log_hash, key_id, signature
               FROM public.reseal_log ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let hash = |i: usize| -> Result<Hash, sqlx::Error> {
                    let bytes: Vec<u8> = r.try_get(i)?;
                    Ok(Hash::try_from(bytes.as_slice()).unwrap_or_default())
                };
                let state = |t: usize| -> Result<LogState, sqlx::Error> {
                    Ok(LogState {
                        position: Position {
                            tx_id: r.try_get(t)?,
                            global_position: r.try_get(t + 1)?,
                        },
                        event_count: r.try_get(t + 2)?,
                        log_hash: hash(t + 3)?,
                    })
                };
                Ok(Self {
                    id: r.try_get(0)?,
                    resealed_at: r.try_get(1)?,
                    archive: r.try_get(2)?,
                    old: state(3)?,
                    new: state(7)?,
                    key_id: r.try_get(11)?,
                    signature: r.try_get(12)?,
                })
            })
            .collect()
    }

    /// True when `key` signed exactly this link.
    pub fn verifies_with(&self, key: &AuditPublicKey) -> bool {
        if key.id() != self.key_id {
            return false;
        }
        let Ok(public) =
            pasetors::keys::AsymmetricPublicKey::<pasetors::version4::V4>::try_from(key.paserk())
        else {
            return false;
        };
        let (Ok(public), Ok(signature)) = (
            ed25519_compact::PublicKey::from_slice(public.as_bytes()),
            ed25519_compact::Signature::from_slice(&self.signature),
        ) else {
            return false;
        };
        public
            .verify(
                link_message(&self.archive, &self.old, &self.new, self.resealed_at),
                &signature,
            )
            .is_ok()
    }
}

/// Reseals the log (see the module documentation). Progress and the old log's
/// verification go to `progress`, the summary to `out`.
pub async fn reseal(
    pool: &PgPool,
    options: &ResealOptions,
    progress: &mut dyn Write,
    out: &mut dyn Write,
) -> Result<ResealReport, ReplayError> {
    let started = Instant::now();
    // Session-level locks on a connection of their own, held until it closes.
    let mut locks = pool.acquire().await?.detach();
    take_leadership_locks(&mut locks).await?;

    let (events, payloads, metadata): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE (event_version = '1.0'
                    AND ((aggregate_type = 'user' AND event_type IN
                            ('UserRegistered', 'PasswordChanged', 'PasswordRehashed'))
                      OR (aggregate_type = 'session' AND event_type = 'SessionStarted')))
                   OR (event_version = '2.0' AND aggregate_type = 'user'
                       AND event_type = 'UserRegistered')),
                count(*) FILTER (WHERE metadata ->> 'ip' NOT LIKE 'sealed:v1:%'
                                    OR metadata ->> 'user_agent' NOT LIKE 'sealed:v1:%')
           FROM public.events",
    )
    .fetch_one(&mut locks)
    .await?;
    let mut report = ResealReport {
        events: events as u64,
        payloads: payloads as u64,
        metadata: metadata as u64,
        dropped: 0,
        keys_created: 0,
        archive: None,
        old: LogState::START,
        new: LogState::START,
        elapsed: Duration::ZERO,
    };
    if options.dry_run || (payloads == 0 && metadata == 0) {
        report.elapsed = started.elapsed();
        let what = if options.dry_run {
            "dry run: would reseal"
        } else {
            "nothing to reseal: no clear personal data in"
        };
        writeln!(
            out,
            "{what} {events} events ({payloads} payloads with clear personal fields, \
             {metadata} with clear metadata)"
        )?;
        out.flush()?;
        return Ok(report);
    }

    let mut tx = pool.begin().await?;
    // Reads go on; nothing can append to the log or sign it until the swap.
    sqlx::query("LOCK TABLE public.events, public.chain_checkpoints IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let mut keys = options.public_keys.clone();
    keys.push(options.audit_key.public_key().clone());
    write!(progress, "reseal: verifying the log first: ")?;
    let verified = verify(
        &keyledger_storage::Database::from_pool(pool.clone()),
        &VerifyOptions {
            public_keys: keys,
            ..VerifyOptions::default()
        },
        progress,
    )
    .await?;
    if !verified.is_ok() {
        return Err(ReplayError::Refused(
            "the log does not verify; resealing would chain a tampered log anew \
             (see keyledger-replay verify)"
                .into(),
        ));
    }

    create_staging(&mut tx).await?;
    let mut copier = Copier {
        wrapping: options.data_key_wrapping.clone(),
        ..Copier::default()
    };
    let mut after = Position::START;
    let batch_size = options.batch_size.max(1);
    loop {
        let rows = sqlx::query(
            "SELECT tx_id::text::bigint, global_position, aggregate_type, aggregate_id,
                    sequence, event_type, event_version, payload::text, metadata::text,
                    recorded_at, chain_hash
               FROM public.events
              WHERE (tx_id, global_position) > ($1::text::xid8, $2)
              ORDER BY tx_id, global_position
              LIMIT $3",
        )
        .bind(after.tx_id.to_string())
        .bind(after.global_position)
        .bind(batch_size)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else { break };
        after = Position {
            tx_id: last.try_get(0)?,
            global_position: last.try_get(1)?,
        };
        let short = (rows.len() as i64) < batch_size;
        copier.copy(&mut tx, &rows, &mut report).await?;
        writeln!(
            progress,
            "reseal: copied {}/{events} events",
            copier.old.event_count
        )?;
        if short {
            break;
        }
    }
    report.old = copier.old;
    report.new = new_log_state(&mut tx).await?;
    if report.new.event_count != report.old.event_count
        || report.new.position != report.old.position
    {
        return Err(ReplayError::Refused(format!(
            "the copy holds {} events up to {:?}, the log {} up to {:?}; nothing was changed",
            report.new.event_count,
            report.new.position,
            report.old.event_count,
            report.old.position
        )));
    }
    copy_indexes(&mut tx, "public", STAGING, "events").await?;

    let now = Utc::now();
    let resealed_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let archive = format!(
        "keyledger_before_reseal_{}",
        resealed_at.format("%Y%m%d_%H%M%S_%6f")
    );
    let signer = &options.audit_key;
    insert_checkpoint(&mut tx, "public", signer, resealed_at, &report.old).await?;
    swap(&mut tx, &archive).await?;
    insert_checkpoint(&mut tx, "public", signer, resealed_at, &report.new).await?;
    record_link(&mut tx, signer, &archive, resealed_at, &report).await?;
    reset_feed_checkpoints(&mut tx, report.new.position).await?;
    tx.commit().await?;
    drop(locks);

    report.archive = Some(archive);
    report.elapsed = started.elapsed();
    report.write_to(out)?;
    out.flush()?;
    Ok(report)
}

impl ResealReport {
    /// Prints the summary (what the CLI shows).
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            out,
            "resealed {} events in {secs:.2}s ({:.0} events/s): {} payloads and {} metadata \
             sealed, {} clear metadata values dropped, {} data keys created",
            self.events,
            if secs > 0.0 {
                self.events as f64 / secs
            } else {
                0.0
            },
            self.payloads,
            self.metadata,
            self.dropped,
            self.keys_created
        )?;
        writeln!(
            out,
            "old log: {} events up to global position {} (tx {}), log hash {}, kept in schema {}",
            self.old.event_count,
            self.old.position.global_position,
            self.old.position.tx_id,
            hex(&self.old.log_hash),
            self.archive.as_deref().unwrap_or("-")
        )?;
        writeln!(
            out,
            "new log: {} events, log hash {}; both signed, linked in reseal_log",
            self.new.event_count,
            hex(&self.new.log_hash)
        )?;
        writeln!(
            out,
            "read models are projected again on the next start; NATS relays resume after \
             the head"
        )
    }
}

/// Refuses while a server leads the projector or a relay; otherwise holds their
/// locks, so a server started meanwhile waits as a stand-by.
async fn take_leadership_locks(conn: &mut PgConnection) -> Result<(), ReplayError> {
    let has_checkpoints: bool =
        sqlx::query_scalar("SELECT to_regclass('public.projection_checkpoints') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    let mut names = vec![CHECKPOINT.to_owned()];
    if has_checkpoints {
        let relays: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM public.projection_checkpoints WHERE name LIKE 'nats_relay:%'",
        )
        .fetch_all(&mut *conn)
        .await?;
        names.extend(relays);
    }
    for name in names {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(lock_key(&name))
            .fetch_one(&mut *conn)
            .await?;
        if !got {
            return Err(ReplayError::Refused(format!(
                "a running server holds the `{name}` leadership lock; stop every server \
                 before resealing"
            )));
        }
    }
    Ok(())
}

/// Definitions of a table's triggers and of its indexes that back no constraint,
/// schema-qualified (read with an empty search path), retargeted at another schema.
async fn table_ddl(
    conn: &mut PgConnection,
    from: &str,
    to: &str,
    table: &str,
    what: &str,
) -> Result<Vec<String>, ReplayError> {
    sqlx::query("SET LOCAL search_path TO pg_catalog")
        .execute(&mut *conn)
        .await?;
    let sql = match what {
        "triggers" => {
            "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
              WHERE t.tgrelid = format('%I.%I', $1::text, $2::text)::regclass
                AND NOT t.tgisinternal ORDER BY t.tgname"
        }
        _ => {
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
              WHERE i.indrelid = format('%I.%I', $1::text, $2::text)::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
              ORDER BY i.indexrelid"
        }
    };
    let defs: Vec<String> = sqlx::query_scalar(sql)
        .bind(from)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query("SET LOCAL search_path TO public")
        .execute(&mut *conn)
        .await?;
    let on = format!(" ON {from}.{table} ");
    let target = format!(" ON {to}.{table} ");
    Ok(defs
        .into_iter()
        .map(|d| d.replacen(&on, &target, 1))
        .collect())
}

async fn copy_indexes(
    conn: &mut PgConnection,
    from: &str,
    to: &str,
    table: &str,
) -> Result<(), ReplayError> {
    for ddl in table_ddl(conn, from, to, table, "indexes").await? {
        sqlx::raw_sql(&ddl).execute(&mut *conn).await?;
    }
    Ok(())
}

async fn copy_triggers(
    conn: &mut PgConnection,
    from: &str,
    to: &str,
    table: &str,
) -> Result<(), ReplayError> {
    for ddl in table_ddl(conn, from, to, table, "triggers").await? {
        sqlx::raw_sql(&ddl).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The new table: the old one's columns, defaults, checks, primary key (the chain
/// trigger looks predecessors up by it) and triggers; other indexes come after the
/// copy, which is cheaper than maintaining them row by row.
async fn create_staging(conn: &mut PgConnection) -> Result<(), ReplayError> {
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {STAGING} CASCADE;
         CREATE SCHEMA {STAGING};
         CREATE TABLE {STAGING}.events (LIKE public.events
             INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE);"
    ))
    .execute(&mut *conn)
    .await?;
    let keys: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = 'public.events'::regclass AND contype IN ('p', 'u', 'x')",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (name, def) in keys {
        sqlx::raw_sql(&format!(
            "ALTER TABLE {STAGING}.events ADD CONSTRAINT \"{}\" {def}",
            name.replace('"', "\"\"")
        ))
        .execute(&mut *conn)
        .await?;
    }
    copy_triggers(conn, "public", STAGING, "events").await?;
    // From here on, unqualified `events` (the chain trigger's predecessor look-up)
    // is the new table.
    sqlx::raw_sql(&format!("SET LOCAL search_path TO {STAGING}, public"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Copies batches, sealing as it goes, and folds the old log's hash.
struct Copier {
    wrapping: Option<Arc<DataKeyWrapping>>,
    keys: HashMap<Uuid, Option<DataKey>>,
    sessions: HashMap<String, Uuid>,
    old: LogState,
}

impl Default for Copier {
    fn default() -> Self {
        Self {
            wrapping: None,
            keys: HashMap::new(),
            sessions: HashMap::new(),
            old: LogState::START,
        }
    }
}

/// One event on its way to the new table.
struct Pending {
    event: StoredEvent,
    payload: String,
    metadata: String,
    version: String,
}

impl Copier {
    async fn copy(
        &mut self,
        conn: &mut PgConnection,
        rows: &[sqlx::postgres::PgRow],
        report: &mut ResealReport,
    ) -> Result<(), ReplayError> {
        let mut batch = Vec::with_capacity(rows.len());
        for row in rows {
            let position = Position {
                tx_id: row.try_get(0)?,
                global_position: row.try_get(1)?,
            };
            let chain_hash: Vec<u8> = row.try_get(10)?;
            self.old.push(
                position,
                &Hash::try_from(chain_hash.as_slice()).unwrap_or_default(),
            );
            let payload: String = row.try_get(7)?;
            let metadata: String = row.try_get(8)?;
            let corrupt = |e: serde_json::Error| {
                ReplayError::Refused(format!(
                    "event at global position {} is not JSON: {e}",
                    position.global_position
                ))
            };
            let event = StoredEvent {
                position,
                aggregate_type: row.try_get(2)?,
                aggregate_id: row.try_get(3)?,
                sequence: row.try_get(4)?,
                event_type: row.try_get(5)?,
                event_version: row.try_get(6)?,
                payload: serde_json::from_str(&payload).map_err(corrupt)?,
                metadata: serde_json::from_str(&metadata).map_err(corrupt)?,
                recorded_at: row.try_get(9)?,
            };
            if let Some(user) = session_started_user(&event) {
                self.remember_session(&event.aggregate_id, user);
            }
            batch.push(Pending {
                version: event.event_version.clone(),
                event,
                payload,
                metadata,
            });
        }
        self.find_sessions(conn, &batch).await?;
        self.load_keys(conn, &batch, report).await?;
        for row in &mut batch {
            self.seal(row, report)?;
        }
        insert(conn, &batch).await
    }

    fn remember_session(&mut self, session: &str, user: Uuid) {
        if self.sessions.len() >= CACHED {
            self.sessions.clear();
        }
        self.sessions.insert(session.to_owned(), user);
    }

    /// Owners of anonymous session requests whose session started in an earlier
    /// batch that the bounded cache forgot.
    async fn find_sessions(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Pending],
    ) -> Result<(), ReplayError> {
        let mut wanted: Vec<String> = batch
            .iter()
            .filter(|r| r.event.aggregate_type == "session")
            .filter(|r| !self.sessions.contains_key(&r.event.aggregate_id))
            .map(|r| r.event.aggregate_id.clone())
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT aggregate_id, payload -> 'SessionStarted' ->> 'user_id' FROM public.events
              WHERE aggregate_type = 'session' AND event_type = 'SessionStarted'
                AND aggregate_id = ANY($1)",
        )
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await?;
        for (session, user) in rows {
            if let Some(user) = user.and_then(|u| u.parse().ok()) {
                self.remember_session(&session, user);
            }
        }
        Ok(())
    }

    fn owners(&self, row: &Pending) -> (Option<Uuid>, Option<Uuid>) {
        (
            payload_owner(&row.event),
            metadata_owner(&row.event, |s| self.sessions.get(s).copied()),
        )
    }

    /// Every owner's key, created where missing (an erased owner's tombstone stays
    /// without one).
    async fn load_keys(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Pending],
        report: &mut ResealReport,
    ) -> Result<(), ReplayError> {
        let mut wanted: Vec<Uuid> = batch
            .iter()
            .flat_map(|r| {
                let (p, m) = self.owners(r);
                [p, m]
            })
            .flatten()
            .filter(|o| !self.keys.contains_key(o))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        if self.keys.len() + wanted.len() > CACHED {
            self.keys.clear();
        }
        let fresh: Vec<Vec<u8>> = wanted
            .iter()
            .map(|owner| {
                let key = DataKey::generate();
                match &self.wrapping {
                    Some(wrapping) => wrapping.wrap(*owner, &key),
                    None => key.expose_bytes().to_vec(),
                }
            })
            .collect();
        let created = sqlx::query(
            "INSERT INTO public.user_data_keys (owner_id, key)
             SELECT * FROM unnest($1::uuid[], $2::bytea[])
             ON CONFLICT (owner_id) DO NOTHING",
        )
        .bind(&wanted)
        .bind(&fresh)
        .execute(&mut *conn)
        .await?;
        report.keys_created += created.rows_affected();
        let rows: Vec<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT owner_id, key FROM public.user_data_keys WHERE owner_id = ANY($1)",
        )
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await?;
        // A key that does not unwrap stops the reseal: read as "erased", it
        // would replace the owner's values by `[erased]` for good.
        let unconfigured;
        let wrapping = match &self.wrapping {
            Some(wrapping) => wrapping,
            None => {
                unconfigured = crate::personal::unconfigured_wrapping();
                &unconfigured
            }
        };
        for (owner, key) in rows {
            let key = key
                .map(|stored| wrapping.unwrap(owner, &stored))
                .transpose()
                .map_err(|e| ReplayError::DataKeyWrappingKey(e.to_string()))?;
            self.keys.insert(owner, key);
        }
        Ok(())
    }

    fn seal(&self, row: &mut Pending, report: &mut ResealReport) -> Result<(), ReplayError> {
        let (payload_owner, metadata_owner) = self.owners(row);
        let key = |owner: Option<Uuid>| owner.and_then(|o| self.keys.get(&o).cloned().flatten());
        let is_1_0_personal = row.event.event_version == "1.0"
            && matches!(
                (
                    row.event.aggregate_type.as_str(),
                    row.event.event_type.as_str()
                ),
                ("user", "UserRegistered") | ("session", "SessionStarted")
            );
        if is_1_0_personal {
            let owner = payload_owner.unwrap_or_default();
            let key = key(payload_owner);
            seal_payload(&mut row.event.payload, None, owner, key.as_ref());
            row.payload = serde_json::to_string(&row.event.payload)?;
            row.version = "2.0".to_owned();
        }
        // Password hashes in clear: `UserRegistered` before 3.0, `PasswordChanged`
        // and `PasswordRehashed` before 2.0 (the versions that seal them).
        let sealed_hash_version = match (
            row.event.aggregate_type.as_str(),
            row.event.event_type.as_str(),
            row.version.as_str(),
        ) {
            ("user", "UserRegistered", "2.0") => Some("3.0"),
            ("user", "PasswordChanged" | "PasswordRehashed", "1.0") => Some("2.0"),
            _ => None,
        };
        if let Some(version) = sealed_hash_version {
            let owner = payload_owner.unwrap_or_default();
            let key = key(payload_owner);
            seal_password_hash(
                &mut row.event.payload,
                &row.event.event_type,
                owner,
                key.as_ref(),
            );
            row.payload = serde_json::to_string(&row.event.payload)?;
            row.version = version.to_owned();
        }
        if let Value::Object(meta) = &mut row.event.metadata {
            let mut changed = false;
            for (name, field) in [("ip", Field::Ip), ("user_agent", Field::UserAgent)] {
                let Some(Value::String(clear)) = meta.get(name) else {
                    continue;
                };
                if sealed_owner(clear).is_some() {
                    continue;
                }
                changed = true;
                match (metadata_owner, key(metadata_owner)) {
                    (Some(owner), Some(key)) => {
                        let sealed = key.seal(owner, field, clear);
                        meta.insert(name.to_owned(), Value::String(sealed.as_str().to_owned()));
                    }
                    // Nobody to seal it for, or erased: left out, as the write side
                    // leaves it out.
                    _ => {
                        meta.remove(name);
                        report.dropped += 1;
                    }
                }
            }
            if changed {
                row.metadata = serde_json::to_string(&row.event.metadata)?;
            }
        }
        Ok(())
    }
}

/// Seals every clear string under a personal field's name; an erased owner's
/// values become `[erased]` (the fields are required in the event's shape).
fn seal_payload(value: &mut Value, name: Option<&str>, owner: Uuid, key: Option<&DataKey>) {
    match value {
        Value::String(s) => {
            let Some(field) = name.and_then(Field::from_name) else {
                return;
            };
            if sealed_owner(s).is_some() || s == ERASED {
                return;
            }
            *s = match key {
                Some(key) => key.seal(owner, field, s).as_str().to_owned(),
                None => ERASED.to_owned(),
            };
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| seal_payload(v, name, owner, key)),
        Value::Object(map) => map
            .iter_mut()
            .for_each(|(k, v)| seal_payload(v, Some(k.as_str()), owner, key)),
        _ => {}
    }
}

/// Seals the clear `password_hash` of a user event (`{"<event_type>": {…}}`) for
/// its owner; an erased owner's hash becomes `[erased]` (the field is required,
/// and an erased account never logs in again).
fn seal_password_hash(payload: &mut Value, event_type: &str, owner: Uuid, key: Option<&DataKey>) {
    let Some(Value::String(hash)) = payload
        .get_mut(event_type)
        .and_then(|fields| fields.get_mut("password_hash"))
    else {
        return;
    };
    if sealed_owner(hash).is_some() || hash == ERASED {
        return;
    }
    *hash = match key {
        Some(key) => SealedPasswordHash::seal(key, owner, &PasswordHash::new(hash.clone()))
            .as_stored()
            .to_owned(),
        None => ERASED.to_owned(),
    };
}

/// Appends a batch to the new table in feed order; the chain trigger computes each
/// chain hash from the row before it (visible: earlier rows of the same statement).
async fn insert(conn: &mut PgConnection, batch: &[Pending]) -> Result<(), ReplayError> {
    let col = |f: fn(&Pending) -> String| batch.iter().map(f).collect::<Vec<_>>();
    sqlx::query(&format!(
        "INSERT INTO {STAGING}.events (aggregate_type, aggregate_id, sequence, event_type,
                                       event_version, payload, metadata, global_position,
                                       tx_id, recorded_at)
         SELECT t, i, s, et, ev, p::json, m::json, g, x::text::xid8, r
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                       $6::text[], $7::text[], $8::bigint[], $9::bigint[],
                       $10::timestamptz[])
                AS u(t, i, s, et, ev, p, m, g, x, r)"
    ))
    .bind(col(|r| r.event.aggregate_type.clone()))
    .bind(col(|r| r.event.aggregate_id.clone()))
    .bind(batch.iter().map(|r| r.event.sequence).collect::<Vec<_>>())
    .bind(col(|r| r.event.event_type.clone()))
    .bind(col(|r| r.version.clone()))
    .bind(col(|r| r.payload.clone()))
    .bind(col(|r| r.metadata.clone()))
    .bind(
        batch
            .iter()
            .map(|r| r.event.position.global_position)
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|r| r.event.position.tx_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|r| r.event.recorded_at)
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The new log's running hash over the chain hashes the trigger computed.
async fn new_log_state(conn: &mut PgConnection) -> Result<LogState, ReplayError> {
    let mut state = LogState::START;
    let sql = format!(
        "SELECT tx_id::text::bigint, global_position, chain_hash FROM {STAGING}.events
          ORDER BY tx_id, global_position"
    );
    let mut rows = sqlx::query(&sql).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let hash: &[u8] = row.try_get(2)?;
        state.push(
            Position {
                tx_id: row.try_get(0)?,
                global_position: row.try_get(1)?,
            },
            &Hash::try_from(hash).unwrap_or_default(),
        );
    }
    Ok(state)
}

/// A signed checkpoint of `state` in `<schema>.chain_checkpoints`, in the format the
/// chain signer writes and `verify` checks.
async fn insert_checkpoint(
    conn: &mut PgConnection,
    schema: &str,
    signer: &ResealSigner,
    signed_at: DateTime<Utc>,
    state: &LogState,
) -> Result<(), ReplayError> {
    if state.event_count == 0 {
        return Ok(());
    }
    let signature = signer.sign(&Checkpoint::signed_message(signed_at, state));
    sqlx::query(&format!(
        "INSERT INTO {schema}.chain_checkpoints
                (signed_at, tx_id, global_position, event_count, log_hash, key_id, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    ))
    .bind(signed_at)
    .bind(state.position.tx_id)
    .bind(state.position.global_position)
    .bind(state.event_count)
    .bind(&state.log_hash[..])
    .bind(signer.public.id())
    .bind(signature)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves the old log and its checkpoints into `archive` (read-only from then on),
/// the new log into `public`, and starts a new `chain_checkpoints`.
async fn swap(conn: &mut PgConnection, archive: &str) -> Result<(), ReplayError> {
    let sequence: Option<String> =
        sqlx::query_scalar("SELECT pg_get_serial_sequence('public.events', 'global_position')")
            .fetch_one(&mut *conn)
            .await?;
    let mut sql = format!("CREATE SCHEMA {archive};");
    if let Some(sequence) = &sequence {
        // Stays in `public` when the old table moves out.
        sql.push_str(&format!("ALTER SEQUENCE {sequence} OWNED BY NONE;"));
    }
    sql.push_str(&format!(
        "ALTER TABLE public.events SET SCHEMA {archive};
         ALTER TABLE public.chain_checkpoints SET SCHEMA {archive};
         -- Its function looks `events` up by name, which is now the new log.
         DROP TRIGGER IF EXISTS events_chain ON {archive}.events;
         CREATE TRIGGER events_archived BEFORE INSERT ON {archive}.events
             FOR EACH STATEMENT EXECUTE FUNCTION public.events_append_only();
         CREATE TRIGGER chain_checkpoints_archived BEFORE INSERT ON {archive}.chain_checkpoints
             FOR EACH STATEMENT EXECUTE FUNCTION public.chain_checkpoints_append_only();
         ALTER TABLE {STAGING}.events SET SCHEMA public;
         DROP SCHEMA {STAGING};
         SET LOCAL search_path TO public;
         CREATE TABLE public.chain_checkpoints
         (
             id              bigserial   PRIMARY KEY,
             signed_at       timestamptz NOT NULL,
             tx_id           bigint      NOT NULL,
             global_position bigint      NOT NULL,
             event_count     bigint      NOT NULL CHECK (event_count > 0),
             log_hash        bytea       NOT NULL CHECK (octet_length(log_hash) = 32),
             key_id          text        NOT NULL,
             signature       bytea       NOT NULL
         );
         -- Checkpoint ids stay unique across both logs.
         SELECT setval(pg_get_serial_sequence('public.chain_checkpoints', 'id'),
                       (SELECT coalesce(max(id), 0) + 1 FROM {archive}.chain_checkpoints),
                       false);"
    ));
    if let Some(sequence) = &sequence {
        // The new log continues the old numbering and owns the sequence from now on.
        sql.push_str(&format!(
            "ALTER SEQUENCE {sequence} OWNED BY public.events.global_position;"
        ));
    }
    sqlx::raw_sql(&sql).execute(&mut *conn).await?;
    copy_indexes(conn, archive, "public", "chain_checkpoints").await?;
    for ddl in table_ddl(conn, archive, "public", "chain_checkpoints", "triggers").await? {
        if !ddl.contains("chain_checkpoints_archived") {
            sqlx::raw_sql(&ddl).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// The signed link between both logs, in an append-only `reseal_log`.
async fn record_link(
    conn: &mut PgConnection,
    signer: &ResealSigner,
    archive: &str,
    resealed_at: DateTime<Utc>,
    report: &ResealReport,
) -> Result<(), ReplayError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS public.reseal_log
         (
             id                  bigserial   PRIMARY KEY,
             resealed_at         timestamptz NOT NULL,
             archive_schema      text        NOT NULL UNIQUE,
             old_tx_id           bigint      NOT NULL,
             old_global_position bigint      NOT NULL,
             old_event_count     bigint      NOT NULL,
             old_log_hash        bytea       NOT NULL CHECK (octet_length(old_log_hash) = 32),
             new_tx_id           bigint      NOT NULL,
             new_global_position bigint      NOT NULL,
             new_event_count     bigint      NOT NULL,
             new_log_hash        bytea       NOT NULL CHECK (octet_length(new_log_hash) = 32),
             key_id              text        NOT NULL,
             signature           bytea       NOT NULL
         );
         CREATE OR REPLACE FUNCTION public.reseal_log_append_only() RETURNS trigger
             LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION 'the reseal log is append-only';
         END;
         $$;
         CREATE OR REPLACE TRIGGER reseal_log_append_only BEFORE UPDATE OR DELETE
             ON public.reseal_log
             FOR EACH ROW EXECUTE FUNCTION public.reseal_log_append_only();
         CREATE OR REPLACE TRIGGER reseal_log_no_truncate BEFORE TRUNCATE ON public.reseal_log
             FOR EACH STATEMENT EXECUTE FUNCTION public.reseal_log_append_only();",
    )
    .execute(&mut *conn)
    .await?;
    let (old, new) = (&report.old, &report.new);
    let signature = signer.sign(&link_message(archive, old, new, resealed_at));
    sqlx::query(
        "INSERT INTO public.reseal_log
                (resealed_at, archive_schema, old_tx_id, old_global_position, old_event_count,
                 old_log_hash, new_tx_id, new_global_position, new_event_count, new_log_hash,
                 key_id, signature)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(resealed_at)
    .bind(archive)
    .bind(old.position.tx_id)
    .bind(old.position.global_position)
    .bind(old.event_count)
    .bind(&old.log_hash[..])
    .bind(new.position.tx_id)
    .bind(new.position.global_position)
    .bind(new.event_count)
    .bind(&new.log_hash[..])
    .bind(signer.public.id())
    .bind(signature)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The projector starts over on the new log; relays resume after its head.
async fn reset_feed_checkpoints(
    conn: &mut PgConnection,
    head: Position,
) -> Result<(), ReplayError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public.projection_checkpoints') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Ok(());
    }
    sqlx::query("DELETE FROM public.projection_checkpoints WHERE name = $1")
        .bind(CHECKPOINT)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE public.projection_checkpoints
            SET tx_id = $1, global_position = $2, updated_at = now()
          WHERE name LIKE 'nats_relay:%'",
    )
    .bind(head.tx_id)
    .bind(head.global_position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_fields_are_sealed_by_name_and_erased_owners_show_erased() {
        let owner = Uuid::new_v4();
        let key = DataKey::generate();
        let mut payload = json!({"UserRegistered": {
            "user_id": owner, "email": "a@example.com", "display_name": "Ada",
            "password_hash": "x"}});
        seal_payload(&mut payload, None, owner, Some(&key));
        let fields = &payload["UserRegistered"];
        let email = keyledger_domain::PersonalData::from(fields["email"].as_str().unwrap());
        assert_eq!(email.open(Field::Email, Some(&key)), "a@example.com");
        assert_eq!(fields["password_hash"], "x");
        assert_eq!(fields["user_id"], json!(owner));

        let mut old =
            json!({"SessionStarted": {"device": {"ip": "192.0.2.1", "user_agent": null}}});
        seal_payload(&mut old, None, owner, None);
        assert_eq!(old["SessionStarted"]["device"]["ip"], ERASED);
        assert!(old["SessionStarted"]["device"]["user_agent"].is_null());
    }

    #[test]
    fn a_clear_password_hash_is_sealed_for_its_owner_and_erased_without_a_key() {
        let owner = Uuid::new_v4();
        let key = DataKey::generate();
        let phc = "$argon2id$v=19$m=4096,t=1,p=1$c2FsdA$aGFzaA";
        let mut payload = json!({"PasswordChanged": {"password_hash": phc, "at": "t"}});
        seal_password_hash(&mut payload, "PasswordChanged", owner, Some(&key));
        let stored = payload["PasswordChanged"]["password_hash"]
            .as_str()
            .unwrap();
        assert!(!stored.contains("argon2"), "{stored}");
        let sealed: SealedPasswordHash = serde_json::from_value(json!(stored)).unwrap();
        assert_eq!(sealed.open(Some(&key)).unwrap().expose_phc(), phc);
        // Sealing again changes nothing (a rerun finds nothing to do).
        let again = payload.clone();
        seal_password_hash(&mut payload, "PasswordChanged", owner, Some(&key));
        assert_eq!(payload, again);

        let mut erased = json!({"PasswordRehashed": {"password_hash": phc, "at": "t"}});
        seal_password_hash(&mut erased, "PasswordRehashed", owner, None);
        assert_eq!(erased["PasswordRehashed"]["password_hash"], ERASED);
    }

    #[test]
    fn the_link_message_separates_its_fields() {
        let state = LogState::START;
        let at = Utc::now();
        assert_ne!(
            link_message("ab", &state, &state, at),
            link_message("a", &state, &state, at)
        );
    }
}
