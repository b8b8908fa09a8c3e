//! `keyledger-replay seed`: writes a big, realistic event log quickly, for
//! benchmarks of the read side (rebuild, export, verify).
//!
//! Realistic means what the write side would have written: the domain's own event
//! types serialised with serde (so every payload has the stored shape), metadata with
//! `occurred_at`, `actor`, `ip`, `user_agent` and `request_id`, gap-free sequences
//! per aggregate, and only transitions the aggregates accept (no login while locked
//! or suspended, the fifth failure locks, a refresh names the next generation, ...).
//! The mix is dominated by logins, refreshes and failures, with logouts, password
//! changes, token reuse, suspensions and organization activity (members, roles,
//! service accounts) around them. Emails and slugs are claimed as the write side
//! claims them, so a server started on the result refuses duplicates.
//!
//! Personal data is sealed as the write side seals it (decision 0009): every
//! account gets a data key in `user_data_keys` (from the operating system, like the
//! server's), its email and display name, its devices and the address and user
//! agent in every event's metadata (the actor's key, else the account the request
//! was about) are sealed with a fresh random nonce each, and claims hold the HMAC
//! digest of the address under the email index key, never the address. The
//! content stays a function of the seed; only keys and nonces differ between runs.
//!
//! Speed: a generator thread fills COPY buffers while the async side streams the
//! previous one into PostgreSQL (`COPY ... FROM STDIN`, one transaction per chunk, so
//! the log has many transaction ids like a real one). Memory is bounded: the
//! simulation keeps a few bytes per account and at most two chunks are in flight.
//!
//! It refuses to write unless the database's name contains `bench` (or `force`),
//! because it writes events nobody caused into an append-only log.
//!
//! The embedded store gets the same events from the same simulation (see
//! [`sqlite`]): only the chunk's format differs ([`ChunkData`]), COPY text for
//! PostgreSQL, rows with their positions and chain hashes for SQLite.

pub(crate) mod sqlite;

use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use cqrs_es::DomainEvent;
use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};
use keyledger_domain::organization::{
    OrganizationEvent, OrganizationName, OrganizationSlug, RoleRef,
};
use keyledger_domain::permission::{BuiltInRole, PermissionSet};
use keyledger_domain::role::{RoleEvent, RoleName};
use keyledger_domain::service_account::ServiceAccountEvent;
use keyledger_domain::{
    DataKey, Device, DisplayName, Email, EmailIndexKey, Field, PasswordHash, RevocationReason,
    SealedPasswordHash, SessionEvent, TokenHash, UserEvent,
};
use keyledger_projections::read_models::copy_escape;
use keyledger_storage::{Backend, Database, Engine};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ReplayError;

/// The name a seed is judged by: the PostgreSQL database's, or the data
/// directory's (what must contain `bench`).
pub async fn target_name(db: &Database) -> Result<String, ReplayError> {
    Ok(match db.engine() {
        Engine::Postgres(pool) => {
            sqlx::query_scalar("SELECT current_database()")
                .fetch_one(pool)
                .await?
        }
        Engine::Sqlite(embedded) => {
            sqlite::dir_name(embedded.path().parent().unwrap_or(embedded.path()))
        }
    })
}

/// How a seed runs.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Events to write (the last command may add one or two more).
    pub events: u64,
    /// Accounts to register over the run; default one per 20 events.
    pub users: Option<u64>,
    /// Events per COPY (PostgreSQL) or per `BEGIN IMMEDIATE` (embedded store).
    pub chunk: usize,
    /// PRNG seed: the same seed gives the same log (ids included).
    pub seed: u64,
    /// Days the simulated history spans, ending now.
    pub days: i64,
    /// Write even if the database's (or data directory's) name does not contain
    /// `bench`.
    pub force: bool,
    /// The email index key the claims are digested with; a fresh one when `None`
    /// (then only this run knows it: pass one to look accounts up by email later).
    pub email_index_key: Option<EmailIndexKey>,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            events: 100_000,
            users: None,
            chunk: 20_000,
            seed: 1,
            days: 30,
            force: false,
            email_index_key: None,
        }
    }
}

/// What a seed wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeedReport {
    /// Events written.
    pub events: u64,
    /// Accounts registered.
    pub users: u64,
    /// Sessions started.
    pub sessions: u64,
    /// Organizations created.
    pub organizations: u64,
    /// Wall time of writing.
    pub elapsed: Duration,
    /// Wall time of the closing `VACUUM (ANALYZE)` (embedded store: `VACUUM;
    /// ANALYZE`).
    pub vacuum: Duration,
}

impl SeedReport {
    /// Write throughput.
    pub fn events_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }
}

/// Writes a realistic log (see the module documentation); progress goes to
/// `progress` about once a second.
/// The embedded store must be opened as its owner ([`crate::Access::Own`]):
/// positions are handed out by the seed itself.
pub async fn seed(
    db: &Database,
    options: &SeedOptions,
    progress: &mut dyn Write,
) -> Result<SeedReport, ReplayError> {
    let name = target_name(db).await?;
    if !options.force && !name.contains("bench") {
        let what = match db.backend() {
            Backend::Postgres => "database",
            Backend::Sqlite => "data directory",
        };
        return Err(ReplayError::Refused(format!(
            "{what} `{name}` is not a benchmark {what} (its name lacks `bench`); \
             pass --force to seed it anyway"
        )));
    }
    match db.engine() {
        Engine::Postgres(pool) => seed_postgres(pool, options, progress).await,
        Engine::Sqlite(embedded) => sqlite::seed(embedded, options, progress).await,
    }
}

/// The simulation on a thread of its own, sending chunks of `format` (at most two
/// in flight); returns its report when joined.
fn spawn_generator(
    options: &SeedOptions,
    format: Format,
) -> (
    std::thread::JoinHandle<SeedReport>,
    tokio::sync::mpsc::Receiver<Chunk>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(2);
    let sim_options = options.clone();
    let generator = std::thread::spawn(move || {
        let mut sim = Simulation::new(&sim_options, format);
        let chunk = sim_options.chunk.max(1);
        loop {
            let next = sim.chunk(chunk);
            let last = next.last;
            if tx.blocking_send(next).is_err() || last {
                break;
            }
        }
        sim.report
    });
    (generator, rx)
}

/// One progress line a second at most.
fn report_progress(
    progress: &mut dyn Write,
    last_report: &mut Instant,
    started: Instant,
    written: u64,
    target: u64,
) -> Result<(), ReplayError> {
    if last_report.elapsed() >= Duration::from_secs(1) {
        *last_report = Instant::now();
        let rate = written as f64 / started.elapsed().as_secs_f64();
        writeln!(
            progress,
            "seed: {written}/{target} events, {rate:.0} events/s"
        )?;
    }
    Ok(())
}

async fn seed_postgres(
    pool: &PgPool,
    options: &SeedOptions,
    progress: &mut dyn Write,
) -> Result<SeedReport, ReplayError> {
    let started = Instant::now();
    let (generator, mut rx) = spawn_generator(options, Format::Copy);

    let mut conn = pool.acquire().await?;
    let mut written = 0u64;
    let mut last_report = Instant::now();
    while let Some(chunk) = rx.recv().await {
        let ChunkData::Copy(text) = &chunk.data else {
            return Err(ReplayError::Refused("the seed generator sent rows".into()));
        };
        let mut txn = sqlx::Connection::begin(&mut *conn).await?;
        copy(
            &mut txn,
            "COPY public.events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata, recorded_at) FROM STDIN",
            &text.events,
        )
        .await?;
        copy(
            &mut txn,
            "COPY public.user_data_keys (owner_id, key, created_at) FROM STDIN",
            &text.keys,
        )
        .await?;
        copy(
            &mut txn,
            "COPY public.email_claims (digest, user_id, claimed_at) FROM STDIN",
            &text.claims,
        )
        .await?;
        copy(
            &mut txn,
            "COPY public.organization_slugs (slug, organization_id, claimed_at) FROM STDIN",
            &text.slugs,
        )
        .await?;
        txn.commit().await?;
        written += chunk.count;
        report_progress(progress, &mut last_report, started, written, options.events)?;
    }
    let mut report = generator
        .join()
        .map_err(|_| ReplayError::Refused("the seed generator panicked".into()))?;
    report.events = written;
    report.elapsed = started.elapsed();
    // What autovacuum would have done to a log this size long before anyone
    // replays it: hint bits set, visibility map and planner statistics current.
    // Without it the first reader pays for writing every page again.
    let vacuum = Instant::now();
    sqlx::raw_sql(
        "VACUUM (ANALYZE) public.events, public.user_data_keys, public.email_claims, \
         public.organization_slugs",
    )
    .execute(&mut *conn)
    .await?;
    report.vacuum = vacuum.elapsed();
    Ok(report)
}

async fn copy(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    data: &[u8],
) -> Result<(), ReplayError> {
    if data.is_empty() {
        return Ok(());
    }
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(data).await?;
    copy.finish().await?;
    Ok(())
}

/// One transaction's worth of events and claims.
struct Chunk {
    data: ChunkData,
    count: u64,
    last: bool,
}

/// The same events and claims in each back end's format.
enum ChunkData {
    /// COPY text (PostgreSQL, whose trigger chains the events).
    Copy(CopyText),
    /// Rows with their positions and chain hashes (the embedded store).
    Rows(Rows),
}

/// Which [`ChunkData`] a simulation fills.
#[derive(Debug, Clone, Copy)]
enum Format {
    Copy,
    /// Rows, the first one at this global position.
    Rows {
        first_position: i64,
    },
}

/// COPY text of one transaction.
#[derive(Default)]
struct CopyText {
    events: Vec<u8>,
    /// `user_data_keys` rows: one per registered account.
    keys: Vec<u8>,
    claims: Vec<u8>,
    slugs: Vec<u8>,
}

/// Rows of one transaction, as the embedded store keeps them.
#[derive(Default)]
struct Rows {
    events: Vec<EventRow>,
    keys: Vec<(Uuid, [u8; 32], DateTime<Utc>)>,
    claims: Vec<([u8; 32], Uuid, DateTime<Utc>)>,
    slugs: Vec<(String, Uuid, DateTime<Utc>)>,
}

/// An event row with every column the chained appender sets (`tx_id` is 0).
struct EventRow {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    global_position: i64,
    recorded_at_micros: i64,
    chain_hash: Hash,
}

/// splitmix64: tiny, fast and good enough to pick actions; not for secrets (none
/// of the hashes it makes protects anything).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    fn uuid(&mut self) -> Uuid {
        let bytes = ((self.next() as u128) << 64 | self.next() as u128).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for part in out.chunks_mut(8) {
            part.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "keyledger-ios/3.4.1 (iPhone15,2; iOS 18.1)",
    "okhttp/4.12.0",
];

const MAX_SESSIONS: usize = 4;
const MAX_MEMBERS: usize = 16;
const LOCKOUT_FAILURES: u32 = 5;

struct SimSession {
    id: Uuid,
    seq: i64,
    generation: u32,
    /// The chain hash of its last event (embedded store only).
    chain: Hash,
}

struct SimUser {
    id: Uuid,
    seq: i64,
    failures: u32,
    locked_until: Option<DateTime<Utc>>,
    suspended: bool,
    /// Open sessions the simulation still uses (older ones just expire).
    sessions: Vec<SimSession>,
    ip: String,
    agent: usize,
    /// The account's data key (from the operating system, like the server's).
    key: DataKey,
    /// The chain hash of its last event (embedded store only).
    chain: Hash,
}

struct SimOrg {
    id: Uuid,
    seq: i64,
    owner: usize,
    members: Vec<usize>,
    roles: Vec<Uuid>,
    /// Service accounts: id, last sequence, chain hash of the last event.
    accounts: Vec<(Uuid, i64, Hash)>,
    chain: Hash,
}

#[derive(Serialize)]
struct Metadata<'a> {
    request_id: &'a str,
    occurred_at: &'a str,
    actor: &'a str,
    ip: &'a str,
    user_agent: &'a str,
}

struct Simulation {
    rng: Rng,
    now: DateTime<Utc>,
    /// Average simulated time between two commands, in microseconds.
    step_micros: u64,
    target_users: u64,
    remaining: u64,
    users: Vec<SimUser>,
    orgs: Vec<SimOrg>,
    report: SeedReport,
    chunk: Chunk,
    format: Format,
    /// The next event's global position (rows only).
    next_position: i64,
    scratch: Vec<u8>,
    metadata: Vec<u8>,
    occurred_at: String,
    request_id: String,
    /// Claims hold `HMAC(index key, address)`, as the server writes them.
    index_key: EmailIndexKey,
}

impl Simulation {
    fn new(options: &SeedOptions, format: Format) -> Self {
        let span = chrono::Duration::days(options.days.max(1));
        let events = options.events.max(1);
        Self {
            rng: Rng(options.seed),
            // Whole microseconds (the steps are too): what both stores keep, so
            // `recorded_at` is the same instant as `occurred_at` on both.
            now: (Utc::now() - span).trunc_subsecs(6),
            // About 1.6 events per command.
            step_micros: (span.num_microseconds().unwrap_or(i64::MAX) as u64 / events)
                .saturating_mul(16)
                / 10,
            target_users: options.users.unwrap_or((events / 20).max(1)).max(1),
            remaining: events,
            users: Vec::new(),
            orgs: Vec::new(),
            report: SeedReport::default(),
            chunk: Self::empty_chunk(format),
            format,
            next_position: match format {
                Format::Copy => 0,
                Format::Rows { first_position } => first_position,
            },
            scratch: Vec::with_capacity(1024),
            metadata: Vec::with_capacity(1024),
            occurred_at: String::new(),
            request_id: String::new(),
            index_key: options
                .email_index_key
                .clone()
                .unwrap_or_else(EmailIndexKey::generate),
        }
    }

    fn empty_chunk(format: Format) -> Chunk {
        Chunk {
            data: match format {
                Format::Copy => ChunkData::Copy(CopyText::default()),
                Format::Rows { .. } => ChunkData::Rows(Rows::default()),
            },
            count: 0,
            last: false,
        }
    }

    /// Runs commands until `size` events are buffered or the target is reached.
    fn chunk(&mut self, size: usize) -> Chunk {
        match &mut self.chunk.data {
            ChunkData::Copy(text) => text.events.reserve(size * 600),
            ChunkData::Rows(rows) => rows.events.reserve(size),
        }
        while self.remaining > 0 && (self.chunk.count as usize) < size {
            self.command();
        }
        let mut chunk = std::mem::replace(&mut self.chunk, Self::empty_chunk(self.format));
        chunk.last = self.remaining == 0;
        chunk
    }

    /// One request's worth of events, at the next moment.
    fn command(&mut self) {
        let jitter = self.rng.below(self.step_micros.max(1) * 2);
        self.now += chrono::Duration::microseconds(jitter as i64);
        self.occurred_at = self.now.to_rfc3339();
        self.request_id = format!("{:016x}", self.rng.next());

        let registered = self.users.len() as u64;
        let pending = self.target_users.saturating_sub(registered);
        // Spread registrations over the run: about 1.6 events per command.
        let register = registered == 0
            || (pending > 0 && self.rng.below(self.remaining.max(1)) < pending * 16 / 10 + 1);
        if register {
            return self.register();
        }
        let u = self.rng.below(registered) as usize;
        match self.rng.below(1000) {
            0..=299 => self.login(u),
            300..=649 => self.refresh(u),
            650..=769 => self.failed_login(u),
            770..=849 => self.logout(u),
            850..=869 => self.revoke(u, RevocationReason::UserRequest),
            870..=879 => self.change_password(u),
            880..=884 => self.reuse(u),
            885..=889 => self.suspend_or_reactivate(u),
            890..=909 => self.select_organization(u),
            _ => self.organization(u),
        }
    }

    /// Appends one event: `stream` is (aggregate type, aggregate id, sequence,
    /// chain hash of the aggregate's previous event); `device` is the account whose
    /// address and user agent the request came from. Returns the event's chain
    /// hash (computed for the embedded store only; PostgreSQL's trigger computes
    /// its own).
    fn emit<E: DomainEvent>(
        &mut self,
        (aggregate_type, aggregate_id, sequence, previous): (&'static str, Uuid, i64, Hash),
        event: &E,
        actor: Option<usize>,
        device: usize,
    ) -> Hash {
        let mut actor_id = [0u8; 36];
        let actor_name = match actor {
            Some(a) => &*self.users[a].id.hyphenated().encode_lower(&mut actor_id),
            None => "anonymous",
        };
        // As the write side does: the address and user agent belong to the actor,
        // else to the account the anonymous request was about, sealed with that
        // person's key.
        let owner = &self.users[actor.unwrap_or(device)];
        let device_user = &self.users[device];
        let ip = owner.key.seal(owner.id, Field::Ip, &device_user.ip);
        let user_agent = owner
            .key
            .seal(owner.id, Field::UserAgent, USER_AGENTS[device_user.agent]);
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, event).expect("events serialise");
        self.metadata.clear();
        serde_json::to_writer(
            &mut self.metadata,
            &Metadata {
                request_id: &self.request_id,
                occurred_at: &self.occurred_at,
                actor: actor_name,
                ip: ip.as_str(),
                user_agent: user_agent.as_str(),
            },
        )
        .expect("metadata serialises");
        self.chunk.count += 1;
        self.remaining = self.remaining.saturating_sub(1);
        match &mut self.chunk.data {
            ChunkData::Copy(text) => {
                let buf = &mut text.events;
                buf.extend_from_slice(aggregate_type.as_bytes());
                buf.push(b'\t');
                buf.extend_from_slice(
                    aggregate_id
                        .hyphenated()
                        .encode_lower(&mut [0u8; 36])
                        .as_bytes(),
                );
                buf.push(b'\t');
                buf.extend_from_slice(sequence.to_string().as_bytes());
                buf.push(b'\t');
                buf.extend_from_slice(event.event_type().as_bytes());
                buf.push(b'\t');
                buf.extend_from_slice(event.event_version().as_bytes());
                buf.push(b'\t');
                copy_escape(buf, &self.scratch);
                buf.push(b'\t');
                copy_escape(buf, &self.metadata);
                buf.push(b'\t');
                buf.extend_from_slice(self.occurred_at.as_bytes());
                buf.push(b'\n');
                ZERO_HASH
            }
            ChunkData::Rows(rows) => {
                // serde_json writes valid UTF-8.
                let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                let mut row = EventRow {
                    aggregate_type,
                    aggregate_id: aggregate_id.to_string(),
                    sequence,
                    event_type: event.event_type(),
                    event_version: event.event_version(),
                    payload: text(&self.scratch),
                    metadata: text(&self.metadata),
                    global_position: self.next_position,
                    recorded_at_micros: self.now.timestamp_micros(),
                    chain_hash: ZERO_HASH,
                };
                self.next_position += 1;
                row.chain_hash = CanonicalEvent {
                    aggregate_type: row.aggregate_type,
                    aggregate_id: &row.aggregate_id,
                    sequence: row.sequence,
                    event_type: &row.event_type,
                    event_version: &row.event_version,
                    payload: &row.payload,
                    metadata: &row.metadata,
                    recorded_at_micros: row.recorded_at_micros,
                    tx_id: 0,
                    global_position: row.global_position,
                }
                .chain_hash(&previous);
                let hash = row.chain_hash;
                rows.events.push(row);
                hash
            }
        }
    }

    fn user_event(&mut self, u: usize, event: UserEvent, actor: Option<usize>) {
        self.users[u].seq += 1;
        let (id, seq, chain) = (self.users[u].id, self.users[u].seq, self.users[u].chain);
        self.users[u].chain = self.emit(("user", id, seq, chain), &event, actor, u);
    }

    fn session_event(&mut self, u: usize, s: usize, event: SessionEvent, actor: Option<usize>) {
        let session = &mut self.users[u].sessions[s];
        session.seq += 1;
        let (id, seq, chain) = (session.id, session.seq, session.chain);
        let hash = self.emit(("session", id, seq, chain), &event, actor, u);
        self.users[u].sessions[s].chain = hash;
    }

    fn register(&mut self) {
        let id = self.rng.uuid();
        let n = self.users.len();
        let ip = format!(
            "{}.{}.{}.{}",
            [10, 172, 192, 203][self.rng.below(4) as usize],
            self.rng.below(256),
            self.rng.below(256),
            1 + self.rng.below(254)
        );
        let agent = self.rng.below(USER_AGENTS.len() as u64) as usize;
        self.users.push(SimUser {
            id,
            seq: 0,
            failures: 0,
            locked_until: None,
            suspended: false,
            sessions: Vec::new(),
            ip,
            agent,
            key: DataKey::generate(),
            chain: ZERO_HASH,
        });
        let email = Email::parse(&format!(
            "user{n}.{}@example.com",
            &id.simple().to_string()[..8]
        ))
        .expect("a valid address");
        let password_hash = self.password_hash();
        let key = &self.users[n].key;
        let event = UserEvent::UserRegistered {
            user_id: id,
            email: key.seal(id, Field::Email, email.as_str()),
            display_name: DisplayName::parse(&format!("User {n}"))
                .ok()
                .map(|name| key.seal(id, Field::DisplayName, name.as_str())),
            password_hash: SealedPasswordHash::seal(key, id, &password_hash),
            registered_at: self.now,
        };
        let digest = self.index_key.digest(&email);
        match &mut self.chunk.data {
            ChunkData::Copy(text) => {
                let keys = &mut text.keys;
                keys.extend_from_slice(id.to_string().as_bytes());
                keys.extend_from_slice(b"\t\\\\x");
                hex_into(keys, self.users[n].key.expose_bytes());
                keys.push(b'\t');
                keys.extend_from_slice(self.occurred_at.as_bytes());
                keys.push(b'\n');
                let claims = &mut text.claims;
                claims.extend_from_slice(b"\\\\x");
                hex_into(claims, &digest);
                claims.push(b'\t');
                claims.extend_from_slice(id.to_string().as_bytes());
                claims.push(b'\t');
                claims.extend_from_slice(self.occurred_at.as_bytes());
                claims.push(b'\n');
            }
            ChunkData::Rows(rows) => {
                let mut key = [0u8; 32];
                key.copy_from_slice(self.users[n].key.expose_bytes());
                rows.keys.push((id, key, self.now));
                let mut claim = [0u8; 32];
                claim.copy_from_slice(&digest);
                rows.claims.push((claim, id, self.now));
            }
        }
        self.user_event(n, event, None);
        self.report.users += 1;
    }

    fn password_hash(&mut self) -> PasswordHash {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let bytes = self.rng.bytes32();
        PasswordHash::new(format!(
            "$argon2id$v=19$m=19456,t=2,p=1${}${}",
            b64.encode(&bytes[..16]),
            b64.encode(self.rng.bytes32())
        ))
    }

    fn token_hash(&mut self) -> TokenHash {
        TokenHash::from_bytes(self.rng.bytes32())
    }

    fn usable(&self, u: usize) -> bool {
        let user = &self.users[u];
        !user.suspended && user.locked_until.is_none_or(|until| until <= self.now)
    }

    fn login(&mut self, u: usize) {
        if !self.usable(u) {
            return self.failed_login(u);
        }
        let session_id = self.rng.uuid();
        self.users[u].failures = 0;
        self.users[u].locked_until = None;
        let at = self.now;
        self.user_event(
            u,
            UserEvent::UserLoggedIn {
                session_id,
                factors: vec!["pwd".to_owned()],
                at,
            },
            Some(u),
        );
        let user = &mut self.users[u];
        if user.sessions.len() == MAX_SESSIONS {
            // Still open in the log; the simulation simply stops using it.
            user.sessions.remove(0);
        }
        user.sessions.push(SimSession {
            id: session_id,
            seq: 0,
            generation: 0,
            chain: ZERO_HASH,
        });
        let s = user.sessions.len() - 1;
        let device = Device {
            ip: Some(user.key.seal(user.id, Field::Ip, &user.ip)),
            user_agent: Some(
                user.key
                    .seal(user.id, Field::UserAgent, USER_AGENTS[user.agent]),
            ),
        };
        let hash = self.token_hash();
        self.session_event(
            u,
            s,
            SessionEvent::SessionStarted {
                session_id,
                user_id: self.users[u].id,
                refresh_token_hash: hash,
                device,
                started_at: at,
                expires_at: at + chrono::Duration::days(30),
            },
            Some(u),
        );
        self.report.sessions += 1;
    }

    fn some_session(&mut self, u: usize) -> Option<usize> {
        let n = self.users[u].sessions.len();
        (n > 0).then(|| self.rng.below(n as u64) as usize)
    }

    fn refresh(&mut self, u: usize) {
        let Some(s) = self.some_session(u) else {
            return self.login(u);
        };
        let session = &mut self.users[u].sessions[s];
        session.generation += 1;
        let generation = session.generation;
        let hash = self.token_hash();
        let at = self.now;
        self.session_event(
            u,
            s,
            SessionEvent::TokenRefreshed {
                generation,
                refresh_token_hash: hash,
                at,
            },
            Some(u),
        );
    }

    fn failed_login(&mut self, u: usize) {
        let at = self.now;
        let user = &mut self.users[u];
        if user.locked_until.is_some_and(|until| until > at) {
            return; // Refused before the password check: no event.
        }
        let previous = if user.locked_until.is_some() {
            0
        } else {
            user.failures
        };
        user.failures = previous + 1;
        if user.failures == 1 {
            user.locked_until = None;
        }
        let failures = user.failures;
        self.user_event(
            u,
            UserEvent::LoginFailed {
                consecutive_failures: failures,
                at,
            },
            None,
        );
        if failures >= LOCKOUT_FAILURES {
            let locked_until = at + chrono::Duration::minutes(30);
            self.users[u].locked_until = Some(locked_until);
            self.user_event(
                u,
                UserEvent::AccountLocked {
                    locked_until,
                    failed_attempts: failures,
                    at,
                },
                None,
            );
        }
    }

    fn logout(&mut self, u: usize) {
        let Some(s) = self.some_session(u) else {
            return self.login(u);
        };
        let at = self.now;
        self.session_event(u, s, SessionEvent::UserLoggedOut { at }, Some(u));
        self.users[u].sessions.remove(s);
    }

    fn revoke(&mut self, u: usize, reason: RevocationReason) {
        let Some(s) = self.some_session(u) else {
            return self.login(u);
        };
        let at = self.now;
        self.session_event(u, s, SessionEvent::SessionRevoked { reason, at }, Some(u));
        self.users[u].sessions.remove(s);
    }

    fn change_password(&mut self, u: usize) {
        if self.users[u].sessions.is_empty() || !self.usable(u) {
            return self.login(u);
        }
        let at = self.now;
        let hash = self.password_hash();
        let hash = SealedPasswordHash::seal(&self.users[u].key, self.users[u].id, &hash);
        self.user_event(
            u,
            UserEvent::PasswordChanged {
                password_hash: hash,
                at,
            },
            Some(u),
        );
        // The session it was changed from stays; the others end.
        while self.users[u].sessions.len() > 1 {
            self.session_event(
                u,
                0,
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::PasswordChanged,
                    at,
                },
                Some(u),
            );
            self.users[u].sessions.remove(0);
        }
    }

    fn reuse(&mut self, u: usize) {
        let Some(s) = self.some_session(u) else {
            return self.refresh(u);
        };
        let current = self.users[u].sessions[s].generation;
        if current == 0 {
            return self.refresh(u);
        }
        let at = self.now;
        self.session_event(
            u,
            s,
            SessionEvent::RefreshTokenReuseDetected {
                presented_generation: current - 1,
                current_generation: current,
                at,
            },
            None,
        );
        self.session_event(
            u,
            s,
            SessionEvent::SessionRevoked {
                reason: RevocationReason::RefreshTokenReuse,
                at,
            },
            None,
        );
        self.users[u].sessions.remove(s);
    }

    fn suspend_or_reactivate(&mut self, u: usize) {
        let admin = Some(0);
        let at = self.now;
        if self.users[u].suspended {
            self.users[u].suspended = false;
            return self.user_event(u, UserEvent::UserReactivated { at }, admin);
        }
        if u == 0 {
            return self.login(u);
        }
        self.users[u].suspended = true;
        self.user_event(
            u,
            UserEvent::UserSuspended {
                reason: "abuse report".to_owned(),
                at,
            },
            admin,
        );
        while !self.users[u].sessions.is_empty() {
            self.session_event(
                u,
                0,
                SessionEvent::SessionRevoked {
                    reason: RevocationReason::Administrative,
                    at,
                },
                admin,
            );
            self.users[u].sessions.remove(0);
        }
    }

    fn select_organization(&mut self, u: usize) {
        let Some(s) = self.some_session(u) else {
            return self.login(u);
        };
        let organization_id = self
            .orgs
            .iter()
            .find(|o| o.owner == u || o.members.contains(&u))
            .map(|o| o.id);
        let at = self.now;
        self.session_event(
            u,
            s,
            SessionEvent::OrganizationSelected {
                organization_id,
                at,
            },
            Some(u),
        );
    }

    fn org_event(&mut self, o: usize, event: OrganizationEvent) {
        let org = &mut self.orgs[o];
        org.seq += 1;
        let (id, seq, owner, chain) = (org.id, org.seq, org.owner, org.chain);
        self.orgs[o].chain =
            self.emit(("organization", id, seq, chain), &event, Some(owner), owner);
    }

    fn organization(&mut self, u: usize) {
        let at = self.now;
        // About one organization per 25 accounts.
        if self.orgs.is_empty()
            || self.rng.below(25) == 0 && self.orgs.len() < self.users.len() / 10 + 1
        {
            let id = self.rng.uuid();
            let slug = format!("org-{}", &id.simple().to_string()[..12]);
            self.orgs.push(SimOrg {
                id,
                seq: 0,
                owner: u,
                members: Vec::new(),
                roles: Vec::new(),
                accounts: Vec::new(),
                chain: ZERO_HASH,
            });
            match &mut self.chunk.data {
                ChunkData::Copy(text) => {
                    let slugs = &mut text.slugs;
                    slugs.extend_from_slice(slug.as_bytes());
                    slugs.push(b'\t');
                    slugs.extend_from_slice(id.to_string().as_bytes());
                    slugs.push(b'\t');
                    slugs.extend_from_slice(self.occurred_at.as_bytes());
                    slugs.push(b'\n');
                }
                ChunkData::Rows(rows) => rows.slugs.push((slug.clone(), id, self.now)),
            }
            let o = self.orgs.len() - 1;
            self.org_event(
                o,
                OrganizationEvent::OrganizationCreated {
                    organization_id: id,
                    slug: OrganizationSlug::parse(&slug).expect("a valid slug"),
                    name: OrganizationName::parse(&format!("Team {o}")).expect("a valid name"),
                    owner: self.users[u].id,
                    at,
                },
            );
            self.report.organizations += 1;
            return;
        }
        let o = self.rng.below(self.orgs.len() as u64) as usize;
        let member_role = || {
            [RoleRef::BuiltIn(BuiltInRole::Member)]
                .into_iter()
                .collect()
        };
        match self.rng.below(10) {
            0..=3 => {
                let org = &self.orgs[o];
                if org.members.len() >= MAX_MEMBERS || org.owner == u || org.members.contains(&u) {
                    return self.login(u);
                }
                self.orgs[o].members.push(u);
                let user_id = self.users[u].id;
                self.org_event(
                    o,
                    OrganizationEvent::MemberAdded {
                        user_id,
                        roles: member_role(),
                        at,
                    },
                );
            }
            4 | 5 => {
                let Some(&m) = self.orgs[o].members.first() else {
                    return self.login(u);
                };
                let mut roles: std::collections::BTreeSet<RoleRef> =
                    [RoleRef::BuiltIn(BuiltInRole::Auditor)]
                        .into_iter()
                        .collect();
                if let Some(&role) = self.orgs[o].roles.last() {
                    roles.insert(RoleRef::Custom(role));
                }
                let user_id = self.users[m].id;
                self.org_event(
                    o,
                    OrganizationEvent::MemberRolesChanged { user_id, roles, at },
                );
            }
            6 => {
                if self.orgs[o].members.is_empty() {
                    return self.login(u);
                }
                let m = self.orgs[o].members.remove(0);
                let user_id = self.users[m].id;
                self.org_event(o, OrganizationEvent::MemberRemoved { user_id, at });
            }
            7 => {
                let role_id = self.rng.uuid();
                let org = &mut self.orgs[o];
                org.roles.push(role_id);
                let (organization_id, owner) = (org.id, org.owner);
                let event = RoleEvent::RoleDefined {
                    role_id,
                    organization_id,
                    name: RoleName::parse(&format!("billing-{}", org.roles.len()))
                        .expect("a valid role name"),
                    permissions: PermissionSet::parse(["invoices:read", "invoices:write"])
                        .expect("valid permissions"),
                    at,
                };
                self.emit(("role", role_id, 1, ZERO_HASH), &event, Some(owner), owner);
            }
            8 => {
                let id = self.rng.uuid();
                let hash = self.token_hash();
                let org = &mut self.orgs[o];
                let (organization_id, owner, n) = (org.id, org.owner, org.accounts.len() + 1);
                let event = ServiceAccountEvent::ServiceAccountCreated {
                    service_account_id: id,
                    organization_id,
                    name: OrganizationName::parse(&format!("ci-{n}")).expect("a valid name"),
                    roles: member_role(),
                    secret_hash: hash,
                    at,
                };
                let chain = self.emit(
                    ("service_account", id, 1, ZERO_HASH),
                    &event,
                    Some(owner),
                    owner,
                );
                self.orgs[o].accounts.push((id, 1, chain));
            }
            _ => {
                let Some(&(id, seq, chain)) = self.orgs[o].accounts.last() else {
                    return self.login(u);
                };
                let hash = self.token_hash();
                let owner = self.orgs[o].owner;
                let event = ServiceAccountEvent::ServiceAccountSecretRotated {
                    secret_hash: hash,
                    at,
                };
                let chain = self.emit(
                    ("service_account", id, seq + 1, chain),
                    &event,
                    Some(owner),
                    owner,
                );
                if let Some(last) = self.orgs[o].accounts.last_mut() {
                    *last = (id, seq + 1, chain);
                }
            }
        }
    }
}

/// Lowercase hex digits of `bytes` (COPY's `\\x...` bytea input).
fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulation_writes_valid_sequences_of_decodable_events() {
        let mut sim = Simulation::new(
            &SeedOptions {
                events: 5_000,
                users: Some(100),
                ..SeedOptions::default()
            },
            Format::Copy,
        );
        let chunk = sim.chunk(10_000);
        assert!(chunk.last);
        let ChunkData::Copy(copy) = chunk.data else {
            panic!("COPY text asked for");
        };
        let text = String::from_utf8(copy.events).unwrap();
        let mut last: std::collections::HashMap<(String, String), i64> = Default::default();
        let mut lines = 0;
        for line in text.lines() {
            lines += 1;
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 8, "{line}");
            let seq: i64 = cols[2].parse().unwrap();
            let key = (cols[0].to_owned(), cols[1].to_owned());
            let prev = last.insert(key, seq).unwrap_or(0);
            assert_eq!(seq, prev + 1, "gap-free sequence: {line}");
            let payload: serde_json::Value =
                serde_json::from_str(&cols[5].replace("\\\\", "\\")).unwrap();
            let event_type = cols[3];
            assert!(payload.get(event_type).is_some(), "{line}");
            let decoded = match cols[0] {
                "user" => serde_json::from_value::<UserEvent>(payload).map(|e| e.event_type()),
                "session" => {
                    serde_json::from_value::<SessionEvent>(payload).map(|e| e.event_type())
                }
                "organization" => {
                    serde_json::from_value::<OrganizationEvent>(payload).map(|e| e.event_type())
                }
                "role" => serde_json::from_value::<RoleEvent>(payload).map(|e| e.event_type()),
                "service_account" => {
                    serde_json::from_value::<ServiceAccountEvent>(payload).map(|e| e.event_type())
                }
                other => panic!("unknown aggregate {other}"),
            };
            assert_eq!(decoded.unwrap(), event_type);
            let meta: serde_json::Value =
                serde_json::from_str(&cols[6].replace("\\\\", "\\")).unwrap();
            for key in ["occurred_at", "actor", "ip", "user_agent", "request_id"] {
                assert!(meta[key].is_string(), "{line}");
            }
        }
        assert!(lines >= 5_000);
        assert_eq!(sim.report.users, 100);
        for t in [
            "UserRegistered",
            "UserLoggedIn",
            "TokenRefreshed",
            "LoginFailed",
            "AccountLocked",
            "UserLoggedOut",
            "OrganizationCreated",
            "MemberAdded",
        ] {
            assert!(text.contains(&format!("\t{t}\t")), "{t} missing");
        }
    }
}
