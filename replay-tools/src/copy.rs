//! `keyledger-replay copy-to-postgres`: moves an embedded (SQLite) store to
//! PostgreSQL, once, with its tamper evidence intact: PostgreSQL recomputes
//! every chain hash, and a hash that differs rolls the whole copy back.
//!
//! - The data directory's `server.lock` is taken for the whole copy, so the
//!   embedded server must be stopped (and cannot start meanwhile). The SQLite file
//!   is only read, in one read transaction.
//! - The target is created when missing, migrated, and refused unless the tables
//!   the copy fills are empty.
//! - Everything is written in ONE PostgreSQL transaction: a copy that stops
//!   half-way leaves the target as empty as it found it.
//! - Events go in position order, in batches, every column given: `tx_id` is
//!   `'0'::xid8` (the embedded store's 0, which also sorts every copied event
//!   before any real transaction and below every snapshot's xmin, so they are
//!   final at once), `recorded_at` is the stored microseconds, payload and
//!   metadata the stored text cast to `json` (which keeps text verbatim).
//!   PostgreSQL's chain trigger stays on and computes every hash again from those
//!   bytes; each must equal the embedded store's, or the copy is rolled back.
//! - The position sequence is moved past the last event; signed checkpoints are
//!   copied verbatim (same ids), so their signatures still verify; email claims,
//!   organization slugs, passkey claims and data keys are copied (open WebAuthn
//!   ceremonies are not: they expire within minutes), erased keys' tombstones
//!   included (without the keys every sealed field would open as `[erased]`).
//! - Read models are not copied: the PostgreSQL server replays them from the
//!   start. With [`RelayStart::Head`] the NATS relay's checkpoint is set at the
//!   last event, so enabling NATS does not publish history again.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use keyledger_projections::chain::{hex, Checkpoint, Hash, LogState};
use keyledger_projections::{Position, ReadModels};
use keyledger_storage::{lock_data_dir, DATABASE_FILE};
use sqlx::migrate::MigrateDatabase;
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection, PgConnection, Postgres, Row, SqliteConnection};
use uuid::Uuid;

use crate::stored::from_micros;
use crate::ReplayError;

/// Where the NATS relay of the PostgreSQL server starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RelayStart {
    /// From the first event: NATS gets the whole history (the default, as for a
    /// new stream).
    #[default]
    Start,
    /// After the last copied event: consumers already had the history from the
    /// embedded server's relay.
    Head,
}

impl FromStr for RelayStart {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "start" => Ok(Self::Start),
            "head" => Ok(Self::Head),
            other => Err(format!("unknown relay start `{other}` (start or head)")),
        }
    }
}

/// How a copy runs.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// The embedded store's data directory.
    pub data_dir: PathBuf,
    /// The PostgreSQL database to fill (created when missing).
    pub target_url: String,
    /// Events (and registry rows) per statement.
    pub batch_size: usize,
    /// Where the relay starts on PostgreSQL.
    pub relay_from: RelayStart,
    /// The relay's JetStream stream (its checkpoint is per stream).
    pub relay_stream: String,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(crate::DEFAULT_DATA_DIR),
            target_url: String::new(),
            batch_size: 2000,
            relay_from: RelayStart::Start,
            relay_stream: "AUTH_EVENTS".to_owned(),
        }
    }
}

/// What a copy moved.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyReport {
    /// Events copied.
    pub events: u64,
    /// The log after the last event: position, count and running log hash (what
    /// the next signed checkpoint will cover).
    pub head: LogState,
    /// Signed checkpoints copied.
    pub checkpoints: u64,
    /// The last checkpoint copied: its id and log hash (`verify` on PostgreSQL
    /// must report the same).
    pub last_checkpoint: Option<(i64, Hash)>,
    /// Email claims copied.
    pub email_claims: u64,
    /// Organization slugs copied.
    pub organization_slugs: u64,
    /// Passkey credential claims copied.
    pub passkey_claims: u64,
    /// External identity (social login) claims copied.
    pub identity_claims: u64,
    /// Data keys copied, tombstones included.
    pub data_keys: u64,
    /// Of which tombstones of erased people.
    pub erased_keys: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl CopyReport {
    /// The summary and the operator's next steps.
    pub fn write_to(&self, data_dir: &std::path::Path, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "copied {} events (up to global position {}, log hash {}), {} signed checkpoints, \
             {} email claims, {} organization slugs, {} passkey claims, {} external identity \
             claims and {} data keys \
             ({} erased) in {:.1}s",
            self.events,
            self.head.position.global_position,
            hex(&self.head.log_hash),
            self.checkpoints,
            self.email_claims,
            self.organization_slugs,
            self.passkey_claims,
            self.identity_claims,
            self.data_keys,
            self.erased_keys,
            self.elapsed.as_secs_f64()
        )?;
        if let Some((id, log_hash)) = &self.last_checkpoint {
            writeln!(
                out,
                "last signed checkpoint: #{id}, log hash {}",
                hex(log_hash)
            )?;
        }
        let dir = data_dir.display();
        writeln!(out, "next steps:")?;
        writeln!(
            out,
            "  1. keep the key files: move signing-key.paserk, audit-key.paserk and \
             email-index.key out of {dir} (or point KEYLEDGER_SIGNING_KEY_FILE, \
             KEYLEDGER_AUDIT_KEY_FILE and KEYLEDGER_EMAIL_INDEX_KEY_FILE at them)"
        )?;
        writeln!(
            out,
            "  2. start the server with DATABASE_URL set to the target; it replays the read \
             models from the first event"
        )?;
        match &self.last_checkpoint {
            Some((id, log_hash)) => writeln!(
                out,
                "  3. keyledger-replay --database-url <target> verify --audit-key-file <file>: \
                 it must report checkpoint #{id} with log hash {}",
                hex(log_hash)
            )?,
            None => writeln!(
                out,
                "  3. keyledger-replay --database-url <target> verify --audit-key-file <file>: \
                 it must verify {} events",
                self.events
            )?,
        }
        writeln!(
            out,
            "  4. keyledger-replay --database-url <target> rebuild: it must report EQUAL"
        )?;
        writeln!(
            out,
            "{dir} was only read; keep it until the steps above agree"
        )
    }
}

/// Copies the embedded store of `options.data_dir` into an empty PostgreSQL
/// database (see the module documentation). Progress goes to `progress`.
pub async fn copy_to_postgres(
    options: &CopyOptions,
    progress: &mut dyn Write,
) -> Result<CopyReport, ReplayError> {
    let started = Instant::now();
    let path = options.data_dir.join(DATABASE_FILE);
    if !path.is_file() {
        return Err(ReplayError::NoEmbeddedDatabase(path));
    }
    // Held until the copy ends: no embedded server writes meanwhile.
    let _lock = lock_data_dir(&options.data_dir)?;
    let source_options =
        keyledger_storage::connect_options(&path, keyledger_storage::Durability::Full)
            .read_only(true);
    let mut source = SqliteConnection::connect_with(&source_options).await?;
    let mut read = source.begin().await?;

    if !Postgres::database_exists(&options.target_url).await? {
        Postgres::create_database(&options.target_url).await?;
    }
    let target = crate::connect(&options.target_url).await?;
    sqlx::migrate!("../migrations").run(&target).await?;
    let mut write = target.begin().await?;
    refuse_unless_empty(&mut write).await?;

    let batch = options.batch_size.max(1);
    let (events, head) = copy_events(&mut read, &mut write, batch, progress).await?;
    let (checkpoints, last_checkpoint) = copy_checkpoints(&mut read, &mut write, batch).await?;
    let email_claims = copy_claims::<Vec<u8>>(
        &mut read,
        &mut write,
        "SELECT digest, user_id, claimed_at FROM main.email_claims",
        "INSERT INTO public.email_claims (digest, user_id, claimed_at)
             SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::timestamptz[])",
        batch,
    )
    .await?;
    let organization_slugs = copy_claims::<String>(
        &mut read,
        &mut write,
        "SELECT slug, organization_id, claimed_at FROM main.organization_slugs",
        "INSERT INTO public.organization_slugs (slug, organization_id, claimed_at)
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::timestamptz[])",
        batch,
    )
    .await?;
    let passkey_claims = copy_claims::<Vec<u8>>(
        &mut read,
        &mut write,
        "SELECT digest, user_id, claimed_at FROM main.passkey_claims",
        "INSERT INTO public.passkey_claims (digest, user_id, claimed_at)
             SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::timestamptz[])",
        batch,
    )
    .await?;
    let identity_claims = copy_claims::<Vec<u8>>(
        &mut read,
        &mut write,
        "SELECT digest, user_id, claimed_at FROM main.external_identity_claims",
        "INSERT INTO public.external_identity_claims (digest, user_id, claimed_at)
             SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::timestamptz[])",
        batch,
    )
    .await?;
    let (data_keys, erased_keys) = copy_data_keys(&mut read, &mut write, batch).await?;
    if options.relay_from == RelayStart::Head && events > 0 {
        ReadModels::install(&mut write).await?;
        ReadModels::save_checkpoint(
            &mut write,
            &format!("nats_relay:{}", options.relay_stream),
            head.position,
        )
        .await?;
    }
    write.commit().await?;
    read.rollback().await?;
    Ok(CopyReport {
        events,
        head,
        checkpoints,
        last_checkpoint,
        email_claims,
        organization_slugs,
        passkey_claims,
        identity_claims,
        data_keys,
        erased_keys,
        elapsed: started.elapsed(),
    })
}

/// Every table the copy fills must be empty; they are locked first, so nothing
/// (a server started too early) writes into them until the copy commits.
async fn refuse_unless_empty(write: &mut PgConnection) -> Result<(), ReplayError> {
    sqlx::query(
        "LOCK TABLE public.events, public.chain_checkpoints, public.email_claims,
                    public.organization_slugs, public.passkey_claims,
                    public.external_identity_claims, public.user_data_keys
            IN EXCLUSIVE MODE",
    )
    .execute(&mut *write)
    .await?;
    let mut filled = Vec::new();
    for table in [
        "events",
        "chain_checkpoints",
        "email_claims",
        "organization_slugs",
        "passkey_claims",
        "external_identity_claims",
        "user_data_keys",
    ] {
        let any: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM public.{table})"))
                .fetch_one(&mut *write)
                .await?;
        if any {
            filled.push(table);
        }
    }
    if filled.is_empty() {
        Ok(())
    } else {
        Err(ReplayError::Refused(format!(
            "the target database is not empty ({} hold rows): copy-to-postgres only fills \
             a new, empty database",
            filled.join(", ")
        )))
    }
}

/// One event as the embedded store holds it.
struct SourceEvent {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    global_position: i64,
    recorded_at: DateTime<Utc>,
    chain_hash: Vec<u8>,
}

impl SourceEvent {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            aggregate_type: row.try_get(0)?,
            aggregate_id: row.try_get(1)?,
            sequence: row.try_get(2)?,
            event_type: row.try_get(3)?,
            event_version: row.try_get(4)?,
            payload: row.try_get(5)?,
            metadata: row.try_get(6)?,
            global_position: row.try_get(7)?,
            recorded_at: from_micros(row.try_get(8)?)?,
            chain_hash: row.try_get(9)?,
        })
    }
}

async fn copy_events(
    read: &mut SqliteConnection,
    write: &mut PgConnection,
    batch_size: usize,
    progress: &mut dyn Write,
) -> Result<(u64, LogState), ReplayError> {
    let mut rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload, metadata, global_position, recorded_at, chain_hash
           FROM main.events
          ORDER BY global_position",
    )
    .fetch(&mut *read);
    let mut head = LogState::START;
    let mut copied = 0u64;
    loop {
        let batch = next_batch(&mut rows, batch_size, SourceEvent::from_row).await?;
        if batch.is_empty() {
            break;
        }
        insert_events(write, &batch, &mut head).await?;
        copied += batch.len() as u64;
        writeln!(progress, "copy-to-postgres: {copied} events")?;
    }
    if copied > 0 {
        sqlx::query(
            "SELECT setval(pg_get_serial_sequence('public.events', 'global_position'), $1)",
        )
        .bind(head.position.global_position)
        .execute(&mut *write)
        .await?;
    }
    Ok((copied, head))
}

/// Inserts one batch in position order (the chain trigger of each row sees the
/// rows before it, in this statement too) and compares every hash the trigger
/// computed with the stored one.
async fn insert_events(
    write: &mut PgConnection,
    batch: &[SourceEvent],
    head: &mut LogState,
) -> Result<(), ReplayError> {
    let column = |f: fn(&SourceEvent) -> &str| batch.iter().map(f).collect::<Vec<_>>();
    let mut chained: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "INSERT INTO public.events
                (aggregate_type, aggregate_id, sequence, event_type, event_version,
                 payload, metadata, global_position, tx_id, recorded_at)
         SELECT t, i, s, et, ev, p::json, m::json, gp, '0'::xid8, ra
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                       $6::text[], $7::text[], $8::bigint[], $9::timestamptz[])
                WITH ORDINALITY AS u(t, i, s, et, ev, p, m, gp, ra, n)
          ORDER BY n
         RETURNING global_position, chain_hash",
    )
    .bind(column(|e| &e.aggregate_type))
    .bind(column(|e| &e.aggregate_id))
    .bind(batch.iter().map(|e| e.sequence).collect::<Vec<_>>())
    .bind(column(|e| &e.event_type))
    .bind(column(|e| &e.event_version))
    .bind(column(|e| &e.payload))
    .bind(column(|e| &e.metadata))
    .bind(batch.iter().map(|e| e.global_position).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
    .fetch_all(&mut *write)
    .await?;
    if chained.len() != batch.len() {
        return Err(ReplayError::Refused(format!(
            "PostgreSQL inserted {} of {} events",
            chained.len(),
            batch.len()
        )));
    }
    // RETURNING promises no order: match by position.
    chained.sort_unstable_by_key(|(position, _)| *position);
    for (event, (position, hash)) in batch.iter().zip(&chained) {
        if *position != event.global_position || *hash != event.chain_hash {
            return Err(ReplayError::ChainMismatch {
                aggregate_type: event.aggregate_type.clone(),
                aggregate_id: event.aggregate_id.clone(),
                sequence: event.sequence,
                global_position: event.global_position,
                sqlite: hex(&event.chain_hash),
                postgres: hex(hash),
            });
        }
        let hash = Hash::try_from(hash.as_slice()).map_err(|_| {
            sqlx::Error::Decode(format!("chain hash at position {position} is not 32 bytes").into())
        })?;
        head.push(
            Position {
                tx_id: 0,
                global_position: *position,
            },
            &hash,
        );
    }
    Ok(())
}

async fn copy_checkpoints(
    read: &mut SqliteConnection,
    write: &mut PgConnection,
    batch_size: usize,
) -> Result<(u64, Option<(i64, Hash)>), ReplayError> {
    let sql = format!(
        "SELECT {} FROM main.chain_checkpoints ORDER BY id",
        keyledger_projections::chain::CHECKPOINT_COLUMNS
    );
    let mut rows = sqlx::query(&sql).fetch(&mut *read);
    let mut copied = 0u64;
    let mut last = None;
    loop {
        let batch = next_batch(&mut rows, batch_size, Checkpoint::from_sqlite_row).await?;
        if batch.is_empty() {
            break;
        }
        sqlx::query(
            "INSERT INTO public.chain_checkpoints
                        (id, signed_at, tx_id, global_position, event_count, log_hash,
                         key_id, signature)
                 SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::bigint[],
                                      $4::bigint[], $5::bigint[], $6::bytea[], $7::text[],
                                      $8::bytea[])",
        )
        .bind(batch.iter().map(|c| c.id).collect::<Vec<_>>())
        .bind(batch.iter().map(|c| c.signed_at).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|c| c.state.position.tx_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|c| c.state.position.global_position)
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|c| c.state.event_count)
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|c| c.state.log_hash.to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|c| c.key_id.clone()).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|c| c.signature.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *write)
        .await?;
        copied += batch.len() as u64;
        last = batch.last().map(|c| (c.id, c.state.log_hash));
    }
    if let Some((id, _)) = last {
        sqlx::query("SELECT setval(pg_get_serial_sequence('public.chain_checkpoints', 'id'), $1)")
            .bind(id)
            .execute(&mut *write)
            .await?;
    }
    Ok((copied, last))
}

/// The next `size` rows of `rows`, decoded; empty once they are exhausted.
async fn next_batch<T>(
    rows: &mut (impl futures::Stream<Item = Result<SqliteRow, sqlx::Error>> + Unpin),
    size: usize,
    decode: impl Fn(&SqliteRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    let mut batch = Vec::with_capacity(size);
    while batch.len() < size {
        match rows.try_next().await? {
            Some(row) => batch.push(decode(&row)?),
            None => break,
        }
    }
    Ok(batch)
}

/// An email claim or an organization slug: key, owner, when claimed.
fn claim_from_row<K>(row: &SqliteRow) -> Result<(K, Uuid, DateTime<Utc>), sqlx::Error>
where
    K: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    Ok((row.try_get(0)?, uuid(row.try_get(1)?)?, row.try_get(2)?))
}

fn uuid(text: &str) -> Result<Uuid, sqlx::Error> {
    text.parse()
        .map_err(|_| sqlx::Error::Decode(format!("`{text}` is not a uuid").into()))
}

/// Copies a claim table (email digests, organization slugs): `select` reads
/// `(key, holder, claimed_at)` rows, `insert` takes the three columns as arrays.
async fn copy_claims<K>(
    read: &mut SqliteConnection,
    write: &mut PgConnection,
    select: &'static str,
    insert: &'static str,
    batch_size: usize,
) -> Result<u64, ReplayError>
where
    K: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send,
    Vec<K>: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let mut rows = sqlx::query(select).fetch(&mut *read);
    let mut copied = 0u64;
    loop {
        let batch = next_batch(&mut rows, batch_size, claim_from_row::<K>).await?;
        if batch.is_empty() {
            return Ok(copied);
        }
        copied += batch.len() as u64;
        let (mut keys, mut holders, mut claimed) = (Vec::new(), Vec::new(), Vec::new());
        for (key, holder, at) in batch {
            keys.push(key);
            holders.push(holder);
            claimed.push(at);
        }
        sqlx::query(insert)
            .bind(keys)
            .bind(holders)
            .bind(claimed)
            .execute(&mut *write)
            .await?;
    }
}

/// A data key row: owner, key (none once erased), created, erased.
type KeyRow = (Uuid, Option<Vec<u8>>, DateTime<Utc>, Option<DateTime<Utc>>);

async fn copy_data_keys(
    read: &mut SqliteConnection,
    write: &mut PgConnection,
    batch_size: usize,
) -> Result<(u64, u64), ReplayError> {
    let mut rows =
        sqlx::query("SELECT owner_id, key, created_at, erased_at FROM main.user_data_keys")
            .fetch(&mut *read);
    let (mut copied, mut erased) = (0u64, 0u64);
    loop {
        let batch: Vec<KeyRow> = next_batch(&mut rows, batch_size, |row| {
            Ok((
                uuid(row.try_get(0)?)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .await?;
        if batch.is_empty() {
            return Ok((copied, erased));
        }
        sqlx::query(
            "INSERT INTO public.user_data_keys (owner_id, key, created_at, erased_at)
                 SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::timestamptz[],
                                      $4::timestamptz[])",
        )
        .bind(batch.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.1.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.2).collect::<Vec<_>>())
        .bind(batch.iter().map(|k| k.3).collect::<Vec<_>>())
        .execute(&mut *write)
        .await?;
        copied += batch.len() as u64;
        erased += batch.iter().filter(|k| k.1.is_none()).count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_starts_parse() {
        assert_eq!("head".parse(), Ok(RelayStart::Head));
        assert_eq!("start".parse(), Ok(RelayStart::Start));
        assert!("tail".parse::<RelayStart>().is_err());
    }
}
