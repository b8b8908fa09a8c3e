//! `keyledger-replay seed`: writes a big, realistic event log quickly, for
//! benchmarks of the read side (rebuild, export, verify).
//!
//! Realistic means what the write side would have written: every event is decided
//! by the domain's own aggregates (`User`, `Session`, `Organization`, `Role`,
//! `ServiceAccount`), whose command handling runs in memory on the simulation's
//! commands ([`decide`]), so the rules (lockout, refresh rotation and reuse,
//! membership) live only in the domain and a refused command writes nothing, as
//! on the server. The events are serialised with serde (so every payload has the
//! stored shape), with metadata holding `occurred_at`, `actor`, `ip`,
//! `user_agent` and `request_id`, and gap-free sequences per aggregate. What the
//! seed still decides itself is what the server's command layer adds around the
//! aggregates: a password change and a suspension end the account's other
//! sessions, and the settings' defaults (lockout policy, reuse grace, no idle
//! timeout).
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
//! simulation keeps each account's aggregates without the sealed values no rule
//! reads (a few hundred bytes per account) and at most two chunks are in flight.
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
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use cqrs_es::DomainEvent;
use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};
use keyledger_domain::organization::{
    Organization, OrganizationCommand, OrganizationName, OrganizationSlug, RoleRef,
};
use keyledger_domain::permission::{BuiltInRole, PermissionSet};
use keyledger_domain::role::{Role, RoleCommand, RoleName};
use keyledger_domain::service_account::{ServiceAccount, ServiceAccountCommand};
use keyledger_domain::{
    DataKey, Device, DisplayName, Email, EmailIndexKey, Field, LockoutPolicy, PasswordHash,
    RevocationReason, SealedPasswordHash, Session, SessionCommand, SessionStatus, TokenHash, User,
    UserCommand,
};
use keyledger_projections::read_models::copy_escape;
use keyledger_storage::{Backend, Database, Engine, PerBackend};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ReplayError;

/// Refuses to seed a database (or data directory) whose name lacks `bench`,
/// unless `force`: a seed writes events nobody caused into an append-only log.
pub fn refuse_unless_benchmark(
    name: &str,
    backend: Backend,
    force: bool,
) -> Result<(), ReplayError> {
    if force || name.contains("bench") {
        return Ok(());
    }
    let what = match backend {
        Backend::Postgres => "database",
        Backend::Sqlite => "data directory",
    };
    Err(ReplayError::Refused(format!(
        "{what} `{name}` is not a benchmark {what} (its name lacks `bench`); \
         pass --force to seed it anyway"
    )))
}

/// The name a data directory is judged by (its last component, resolved when
/// the path ends in `.` or `..`).
pub fn data_dir_name(dir: &std::path::Path) -> String {
    sqlite::dir_name(dir)
}

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
    refuse_unless_benchmark(&target_name(db).await?, db.backend(), options.force)?;
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
    let (generator, mut rx) = spawn_generator(options, Format::Postgres(()));

    let mut conn = pool.acquire().await?;
    let mut written = 0u64;
    let mut last_report = Instant::now();
    while let Some(chunk) = rx.recv().await {
        let ChunkData::Postgres(text) = &chunk.data else {
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

/// The same events and claims in each back end's format: COPY text for
/// PostgreSQL (whose trigger chains the events), rows with their positions and
/// chain hashes for the embedded store.
type ChunkData = PerBackend<CopyText, Rows>;

/// Which [`ChunkData`] a simulation fills; rows start at the given global
/// position.
type Format = PerBackend<(), i64>;

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
/// The server's default `KEYLEDGER_REFRESH_REUSE_GRACE`: a refresh token
/// presented again this soon after its rotation is a retry of a lost answer,
/// not reuse (the domain's rule; the value is the server's setting).
const REUSE_GRACE: chrono::Duration = chrono::Duration::seconds(10);

/// Runs `command` on `aggregate` in memory, as the write side runs it before a
/// commit: the domain decides which events follow (none when it refuses the
/// command, as the server then answers an error and writes nothing) and
/// applies them. The domain's command handling awaits nothing but its
/// in-memory sink, so this never waits.
fn decide<A: Aggregate<Services = ()>>(aggregate: &mut A, command: A::Command) -> Vec<A::Event> {
    futures::executor::block_on(async {
        let sink = EventSink::default();
        match aggregate.handle(command, &(), &sink).await {
            Ok(()) => sink.collect().await,
            // The domain checks before it writes: a refused command wrote
            // nothing to the sink or the aggregate.
            Err(_) => Vec::new(),
        }
    })
}

/// A stream of the log as the simulation keeps it: the aggregate's state (what
/// the domain decides by), its last sequence and the chain hash of its last
/// event (embedded store only).
struct Stream<A> {
    state: A,
    id: Uuid,
    seq: i64,
    chain: Hash,
}

impl<A: Default> Stream<A> {
    fn new(id: Uuid) -> Self {
        Self {
            state: A::default(),
            id,
            seq: 0,
            chain: ZERO_HASH,
        }
    }
}

struct SimUser {
    user: Stream<User>,
    /// Open sessions the simulation still uses (older ones just expire).
    sessions: Vec<Stream<Session>>,
    ip: String,
    agent: usize,
    /// The account's data key (from the operating system, like the server's).
    key: DataKey,
}

struct SimOrg {
    org: Stream<Organization>,
    /// Who acts for it (the creator), and the members the simulation picks
    /// from, as indices into the accounts.
    owner: usize,
    members: Vec<usize>,
    roles: Vec<Uuid>,
    accounts: Vec<Stream<ServiceAccount>>,
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
            chunk: Self::empty_chunk(&format),
            next_position: match format {
                Format::Postgres(()) => 0,
                Format::Sqlite(first_position) => first_position,
            },
            format,
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

    fn empty_chunk(format: &Format) -> Chunk {
        Chunk {
            data: match format {
                Format::Postgres(()) => ChunkData::Postgres(CopyText::default()),
                Format::Sqlite(_) => ChunkData::Sqlite(Rows::default()),
            },
            count: 0,
            last: false,
        }
    }

    /// Runs commands until `size` events are buffered or the target is reached.
    fn chunk(&mut self, size: usize) -> Chunk {
        match &mut self.chunk.data {
            ChunkData::Postgres(text) => text.events.reserve(size * 600),
            ChunkData::Sqlite(rows) => rows.events.reserve(size),
        }
        while self.remaining > 0 && (self.chunk.count as usize) < size {
            self.command();
        }
        let mut chunk = std::mem::replace(&mut self.chunk, Self::empty_chunk(&self.format));
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
            Some(a) => &*self.users[a]
                .user
                .id
                .hyphenated()
                .encode_lower(&mut actor_id),
            None => "anonymous",
        };
        // As the write side does: the address and user agent belong to the actor,
        // else to the account the anonymous request was about, sealed with that
        // person's key.
        let owner = &self.users[actor.unwrap_or(device)];
        let device_user = &self.users[device];
        let ip = owner.key.seal(owner.user.id, Field::Ip, &device_user.ip);
        let user_agent = owner.key.seal(
            owner.user.id,
            Field::UserAgent,
            USER_AGENTS[device_user.agent],
        );
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
            ChunkData::Postgres(text) => {
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
            ChunkData::Sqlite(rows) => {
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

    /// Runs a command on account `u`'s user aggregate and appends what the
    /// domain decided; returns how many events that was.
    fn user_command(&mut self, u: usize, command: UserCommand, actor: Option<usize>) -> usize {
        let events = decide(&mut self.users[u].user.state, command);
        for event in &events {
            let user = &mut self.users[u].user;
            user.seq += 1;
            let (id, seq, chain) = (user.id, user.seq, user.chain);
            self.users[u].user.chain = self.emit(("user", id, seq, chain), event, actor, u);
        }
        events.len()
    }

    /// Runs a command on session `s` of account `u` and appends what the domain
    /// decided; a session that ended is no longer used. Returns how many events
    /// that was.
    fn session_command(
        &mut self,
        u: usize,
        s: usize,
        command: SessionCommand,
        actor: Option<usize>,
    ) -> usize {
        let events = decide(&mut self.users[u].sessions[s].state, command);
        for event in &events {
            let session = &mut self.users[u].sessions[s];
            session.seq += 1;
            let (id, seq, chain) = (session.id, session.seq, session.chain);
            self.users[u].sessions[s].chain =
                self.emit(("session", id, seq, chain), event, actor, u);
        }
        if self.users[u].sessions[s].state.status != SessionStatus::Active {
            self.users[u].sessions.remove(s);
        }
        events.len()
    }

    /// Runs a command on organization `o`, its owner acting; returns how many
    /// events the domain decided.
    fn org_command(&mut self, o: usize, command: OrganizationCommand) -> usize {
        let events = decide(&mut self.orgs[o].org.state, command);
        let owner = self.orgs[o].owner;
        for event in &events {
            let org = &mut self.orgs[o].org;
            org.seq += 1;
            let (id, seq, chain) = (org.id, org.seq, org.chain);
            self.orgs[o].org.chain =
                self.emit(("organization", id, seq, chain), event, Some(owner), owner);
        }
        events.len()
    }

    /// Runs a command on a service account of organization `o`, its owner
    /// acting: a new one with the id `new`, else the last one created.
    fn account_command(&mut self, o: usize, new: Option<Uuid>, command: ServiceAccountCommand) {
        if let Some(id) = new {
            self.orgs[o].accounts.push(Stream::new(id));
        }
        let owner = self.orgs[o].owner;
        let Some(account) = self.orgs[o].accounts.last_mut() else {
            return;
        };
        let events = decide(&mut account.state, command);
        for event in &events {
            let Some(account) = self.orgs[o].accounts.last_mut() else {
                return;
            };
            account.seq += 1;
            let (id, seq, chain) = (account.id, account.seq, account.chain);
            let chain = self.emit(
                ("service_account", id, seq, chain),
                event,
                Some(owner),
                owner,
            );
            if let Some(account) = self.orgs[o].accounts.last_mut() {
                account.chain = chain;
            }
        }
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
            user: Stream::new(id),
            sessions: Vec::new(),
            ip,
            agent,
            key: DataKey::generate(),
        });
        let email = Email::parse(&format!(
            "user{n}.{}@example.com",
            &id.simple().to_string()[..8]
        ))
        .expect("a valid address");
        let password_hash = self.password_hash();
        let key = &self.users[n].key;
        let command = UserCommand::Register {
            user_id: id,
            email: key.seal(id, Field::Email, email.as_str()),
            display_name: DisplayName::parse(&format!("User {n}"))
                .ok()
                .map(|name| key.seal(id, Field::DisplayName, name.as_str())),
            password_hash: SealedPasswordHash::seal(key, id, &password_hash),
            at: self.now,
        };
        let digest = self.index_key.digest(&email);
        match &mut self.chunk.data {
            ChunkData::Postgres(text) => {
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
            ChunkData::Sqlite(rows) => {
                let mut key = [0u8; 32];
                key.copy_from_slice(self.users[n].key.expose_bytes());
                rows.keys.push((id, key, self.now));
                let mut claim = [0u8; 32];
                claim.copy_from_slice(&digest);
                rows.claims.push((claim, id, self.now));
            }
        }
        self.user_command(n, command, None);
        // No rule reads the sealed address, name or hash back: dropped from
        // the kept state, so memory stays at a few hundred bytes per account.
        let user = &mut self.users[n].user.state;
        user.email = None;
        user.display_name = None;
        user.password_hash = None;
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

    /// Whether the account can sign in now (by the domain's state): the
    /// simulation's people act accordingly.
    fn usable(&self, u: usize) -> bool {
        let user = &self.users[u].user.state;
        !user.suspended && user.locked_at(self.now).is_none()
    }

    /// A sign-in with the right password; one the domain refuses (locked,
    /// suspended) is followed by a try with a wrong one, as people do.
    fn login(&mut self, u: usize) {
        let session_id = self.rng.uuid();
        let at = self.now;
        let logged_in = self.user_command(
            u,
            UserCommand::RecordLoginSuccess {
                session_id,
                rehashed: None,
                trusted_device: false,
                at,
            },
            Some(u),
        );
        if logged_in == 0 {
            return self.failed_login(u);
        }
        let user = &mut self.users[u];
        if user.sessions.len() == MAX_SESSIONS {
            // Still open in the log; the simulation simply stops using it.
            user.sessions.remove(0);
        }
        user.sessions.push(Stream::new(session_id));
        let s = user.sessions.len() - 1;
        let device = Device {
            ip: Some(user.key.seal(user.user.id, Field::Ip, &user.ip)),
            user_agent: Some(user.key.seal(
                user.user.id,
                Field::UserAgent,
                USER_AGENTS[user.agent],
            )),
        };
        let user_id = user.user.id;
        let hash = self.token_hash();
        self.session_command(
            u,
            s,
            SessionCommand::Start {
                session_id,
                user_id,
                refresh_token_hash: hash,
                device,
                factors: vec!["pwd".to_owned()],
                at,
                expires_at: at + chrono::Duration::days(30),
                client: None,
            },
            Some(u),
        );
        // No rule reads the sealed device back (see `register`).
        if let Some(session) = self.users[u].sessions.get_mut(s) {
            session.state.device = Device::default();
        }
        self.report.sessions += 1;
    }

    fn some_session(&mut self, u: usize) -> Option<usize> {
        let n = self.users[u].sessions.len();
        (n > 0).then(|| self.rng.below(n as u64) as usize)
    }

    /// Presents the refresh token of `generation` of session `s`; the domain
    /// tells a rotation, a retry of a lost answer and reuse apart.
    fn present_refresh_token(&mut self, u: usize, s: usize, generation: u32) -> usize {
        let session = &self.users[u].sessions[s].state;
        let Some(&presented) = session.issued_token_hashes.get(generation as usize) else {
            return 0;
        };
        let next = self.token_hash();
        let at = self.now;
        self.session_command(
            u,
            s,
            SessionCommand::Refresh {
                presented,
                presented_generation: generation,
                next,
                at,
                idle_timeout: None,
                reuse_grace: REUSE_GRACE,
                client_id: None,
            },
            Some(u),
        )
    }

    fn refresh(&mut self, u: usize) {
        let Some(s) = self.some_session(u) else {
            return self.login(u);
        };
        let current = self.users[u].sessions[s].state.generation();
        if self.present_refresh_token(u, s, current) == 0 {
            // Expired: the client signs in again.
            self.users[u].sessions.remove(s);
            self.login(u);
        }
    }

    fn failed_login(&mut self, u: usize) {
        let at = self.now;
        let unlock_request_id = self.rng.uuid();
        self.user_command(
            u,
            UserCommand::RecordLoginFailure {
                policy: LockoutPolicy::default(),
                unlock_request_id,
                at,
            },
            None,
        );
    }

    fn logout(&mut self, u: usize) {
        let Some(s) = self.some_session(u) else {
            return self.login(u);
        };
        let at = self.now;
        self.session_command(u, s, SessionCommand::Logout { at }, Some(u));
    }

    fn revoke(&mut self, u: usize, reason: RevocationReason) {
        let Some(s) = self.some_session(u) else {
            return self.login(u);
        };
        let at = self.now;
        self.session_command(u, s, SessionCommand::Revoke { reason, at }, Some(u));
    }

    fn change_password(&mut self, u: usize) {
        if self.users[u].sessions.is_empty() || !self.usable(u) {
            return self.login(u);
        }
        let at = self.now;
        let hash = self.password_hash();
        let user = &self.users[u];
        let password_hash = SealedPasswordHash::seal(&user.key, user.user.id, &hash);
        self.user_command(
            u,
            UserCommand::ChangePassword { password_hash, at },
            Some(u),
        );
        // The write side's rule: the session it was changed from stays, the
        // others end.
        while self.users[u].sessions.len() > 1 {
            let reason = RevocationReason::PasswordChanged;
            if self.session_command(u, 0, SessionCommand::Revoke { reason, at }, Some(u)) == 0 {
                self.users[u].sessions.remove(0);
            }
        }
    }

    /// A refresh token presented again after its rotation (a stolen one).
    fn reuse(&mut self, u: usize) {
        let Some(s) = self.some_session(u) else {
            return self.refresh(u);
        };
        let current = self.users[u].sessions[s].state.generation();
        if current == 0 {
            return self.refresh(u);
        }
        self.present_refresh_token(u, s, current - 1);
    }

    fn suspend_or_reactivate(&mut self, u: usize) {
        let admin = Some(0);
        let at = self.now;
        if self.users[u].user.state.suspended {
            self.user_command(u, UserCommand::Reactivate { at }, admin);
            return;
        }
        if u == 0 {
            return self.login(u);
        }
        let reason = "abuse report".to_owned();
        if self.user_command(u, UserCommand::Suspend { reason, at }, admin) == 0 {
            return;
        }
        // The write side's rule: a suspension ends every session.
        while !self.users[u].sessions.is_empty() {
            let reason = RevocationReason::Administrative;
            if self.session_command(u, 0, SessionCommand::Revoke { reason, at }, admin) == 0 {
                self.users[u].sessions.remove(0);
            }
        }
    }

    fn select_organization(&mut self, u: usize) {
        let Some(s) = self.some_session(u) else {
            return self.login(u);
        };
        let user_id = self.users[u].user.id;
        let organization_id = self
            .orgs
            .iter()
            .find(|o| o.org.state.members.contains_key(&user_id))
            .map(|o| o.org.id);
        let at = self.now;
        self.session_command(
            u,
            s,
            SessionCommand::SelectOrganization {
                organization_id,
                at,
            },
            Some(u),
        );
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
                org: Stream::new(id),
                owner: u,
                members: Vec::new(),
                roles: Vec::new(),
                accounts: Vec::new(),
            });
            match &mut self.chunk.data {
                ChunkData::Postgres(text) => {
                    let slugs = &mut text.slugs;
                    slugs.extend_from_slice(slug.as_bytes());
                    slugs.push(b'\t');
                    slugs.extend_from_slice(id.to_string().as_bytes());
                    slugs.push(b'\t');
                    slugs.extend_from_slice(self.occurred_at.as_bytes());
                    slugs.push(b'\n');
                }
                ChunkData::Sqlite(rows) => rows.slugs.push((slug.clone(), id, self.now)),
            }
            let o = self.orgs.len() - 1;
            self.org_command(
                o,
                OrganizationCommand::Create {
                    organization_id: id,
                    slug: OrganizationSlug::parse(&slug).expect("a valid slug"),
                    name: OrganizationName::parse(&format!("Team {o}")).expect("a valid name"),
                    creator: self.users[u].user.id,
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
                if self.orgs[o].members.len() >= MAX_MEMBERS {
                    return self.login(u);
                }
                let user_id = self.users[u].user.id;
                let roles = member_role();
                if self.org_command(o, OrganizationCommand::AddMember { user_id, roles, at }) == 0 {
                    return self.login(u);
                }
                self.orgs[o].members.push(u);
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
                let user_id = self.users[m].user.id;
                self.org_command(
                    o,
                    OrganizationCommand::ChangeMemberRoles { user_id, roles, at },
                );
            }
            6 => {
                if self.orgs[o].members.is_empty() {
                    return self.login(u);
                }
                let m = self.orgs[o].members.remove(0);
                let user_id = self.users[m].user.id;
                self.org_command(o, OrganizationCommand::RemoveMember { user_id, at });
            }
            7 => {
                let role_id = self.rng.uuid();
                let org = &mut self.orgs[o];
                org.roles.push(role_id);
                let (organization_id, owner) = (org.org.id, org.owner);
                let command = RoleCommand::Define {
                    role_id,
                    organization_id,
                    name: RoleName::parse(&format!("billing-{}", org.roles.len()))
                        .expect("a valid role name"),
                    permissions: PermissionSet::parse(["invoices:read", "invoices:write"])
                        .expect("valid permissions"),
                    at,
                };
                // Defined once and never changed here: its state is not kept.
                let mut role = Stream::<Role>::new(role_id);
                for event in decide(&mut role.state, command) {
                    role.seq += 1;
                    role.chain = self.emit(
                        ("role", role_id, role.seq, role.chain),
                        &event,
                        Some(owner),
                        owner,
                    );
                }
            }
            8 => {
                let id = self.rng.uuid();
                let secret_hash = self.token_hash();
                let org = &self.orgs[o];
                let n = org.accounts.len() + 1;
                let command = ServiceAccountCommand::Create {
                    service_account_id: id,
                    organization_id: org.org.id,
                    name: OrganizationName::parse(&format!("ci-{n}")).expect("a valid name"),
                    roles: member_role(),
                    secret_hash,
                    at,
                };
                self.account_command(o, Some(id), command);
            }
            _ => {
                if self.orgs[o].accounts.is_empty() {
                    return self.login(u);
                }
                let secret_hash = self.token_hash();
                self.account_command(
                    o,
                    None,
                    ServiceAccountCommand::RotateSecret { secret_hash, at },
                );
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
    use keyledger_domain::organization::OrganizationEvent;
    use keyledger_domain::role::RoleEvent;
    use keyledger_domain::service_account::ServiceAccountEvent;
    use keyledger_domain::{SessionEvent, UserEvent};

    #[test]
    fn the_simulation_writes_valid_sequences_of_decodable_events() {
        let mut sim = Simulation::new(
            &SeedOptions {
                events: 5_000,
                users: Some(100),
                ..SeedOptions::default()
            },
            Format::Postgres(()),
        );
        let chunk = sim.chunk(10_000);
        assert!(chunk.last);
        let ChunkData::Postgres(copy) = chunk.data else {
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
