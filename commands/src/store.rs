//! Running commands against the event store with optimistic concurrency.
//!
//! cqrs-es commits with "next sequence = loaded sequence + 1" and lets the primary
//! key reject a writer that lost a race; it does not retry. A lost race wrote
//! nothing (the whole commit is one transaction that the key violation rolls
//! back), so re-running the command on fresh state is always safe: this store does
//! that a bounded number of times and then reports the conflict.
//!
//! No snapshots: postgres-es 0.5.0 commits a snapshot update's transaction before
//! checking that the update matched its row, and then reports a conflict for
//! events it already wrote; a retry would write them twice. Instead each process
//! keeps the state it last committed or loaded for recently used aggregates. A
//! cached state that another process has moved past only costs one conflict: the
//! commit's sequence is taken, the entry is dropped, and the retry loads the full
//! history. Decisions are therefore never committed on stale state.

use std::collections::HashMap;
use std::sync::Mutex;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventRepository, PersistedEventStore, PersistenceError,
    ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use serde_json::Value;

use keyledger_storage::{Database, Engine};

use crate::sqlite_events::SqliteChainedEventRepository;

/// The event log of either back end: the one role with two implementations,
/// since the mechanisms differ (PostgreSQL chains and numbers events in a
/// trigger inside postgres-es's commit; the embedded engine does both in Rust
/// under its single writer, in groups). A conflict surfaces the same way from both
/// (`PersistenceError::OptimisticLockError`, then [`StoreError::Conflict`]): on
/// PostgreSQL from the primary key's unique violation, on SQLite from its
/// PRIMARY KEY violation (code 1555).
pub enum EventRepository {
    Postgres(PostgresEventRepository),
    Sqlite(SqliteChainedEventRepository),
}

impl EventRepository {
    pub fn new(db: &Database) -> Self {
        match db.engine() {
            Engine::Postgres(pool) => Self::Postgres(PostgresEventRepository::new(pool.clone())),
            Engine::Sqlite(database) => Self::Sqlite(SqliteChainedEventRepository::new(database)),
        }
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match self {
            Self::Postgres(r) => r.get_events::<A>(aggregate_id).await,
            Self::Sqlite(r) => r.get_events::<A>(aggregate_id).await,
        }
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match self {
            Self::Postgres(r) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
            Self::Sqlite(r) => r.get_last_events::<A>(aggregate_id, last_sequence).await,
        }
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        match self {
            Self::Postgres(r) => r.get_snapshot::<A>(aggregate_id).await,
            Self::Sqlite(r) => r.get_snapshot::<A>(aggregate_id).await,
        }
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match self {
            Self::Postgres(r) => r.persist::<A>(events, snapshot_update).await,
            Self::Sqlite(r) => r.persist::<A>(events, snapshot_update).await,
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(r) => r.stream_events::<A>(aggregate_id).await,
            Self::Sqlite(r) => r.stream_events::<A>(aggregate_id).await,
        }
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        match self {
            Self::Postgres(r) => r.stream_all_events::<A>().await,
            Self::Sqlite(r) => r.stream_all_events::<A>().await,
        }
    }
}

/// The event store for one aggregate type on `db` (pure event sourcing, stored
/// events upcast through the domain's upcasts).
pub fn event_store<A: Aggregate>(db: &Database) -> PersistedEventStore<EventRepository, A> {
    PersistedEventStore::new_event_store(EventRepository::new(db))
        .with_upcasters(vec![Box::new(DomainUpcaster)])
}

/// Loads events stored in an older shape through the domain's own upcasts
/// (`keyledger_domain::upcasting`), the same the read side uses.
struct DomainUpcaster;

impl cqrs_es::persist::EventUpcaster for DomainUpcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        // The aggregate type is not given here; event type names are unique
        // across aggregates (the catalogue test checks it).
        keyledger_domain::upcasting::UPCASTS
            .iter()
            .any(|u| u.event_type == event_type && u.from == event_version)
    }

    fn upcast(
        &self,
        mut event: cqrs_es::persist::SerializedEvent,
    ) -> cqrs_es::persist::SerializedEvent {
        let (version, payload) = keyledger_domain::upcasting::upcast(
            &event.aggregate_type,
            &event.event_type,
            &event.event_version,
            std::mem::take(&mut event.payload),
        );
        event.event_version = version;
        event.payload = payload;
        event
    }
}

/// How many aggregates of one type a process keeps in memory.
pub const CACHE_CAPACITY: usize = 100_000;

/// What a successful command left behind.
#[derive(Debug)]
pub struct Committed<A: Aggregate> {
    /// State after the command.
    pub aggregate: A,
    /// The events written, with their sequence numbers.
    pub events: Vec<EventEnvelope<A>>,
}

impl<A: Aggregate> Committed<A> {
    /// Sequence of the last event written, if any.
    pub fn last_sequence(&self) -> Option<usize> {
        self.events.last().map(|e| e.sequence)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError<E: std::error::Error> {
    /// The aggregate refused the command: a business answer, not a failure.
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept winning the race; nothing was written.
    #[error("the aggregate is being changed concurrently")]
    Conflict,
    /// The event store could not be reached or returned something unreadable.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}

/// An aggregate's state and the sequence of the last event it reflects.
pub struct Loaded<A: Aggregate> {
    aggregate: A,
    sequence: usize,
}

impl<A: Aggregate> Loaded<A> {
    pub fn aggregate(&self) -> &A {
        &self.aggregate
    }
}

/// Executes commands on one aggregate type, over any cqrs-es persisted repository
/// (by default the event log of either back end).
pub struct AggregateStore<A: Aggregate, R: PersistedEventRepository = EventRepository> {
    store: PersistedEventStore<R, A>,
    services: A::Services,
    max_attempts: usize,
    cache: Mutex<HashMap<String, (A, usize)>>,
}

impl<A, R> AggregateStore<A, R>
where
    A: Aggregate + Clone,
    A::Command: Clone,
    R: PersistedEventRepository,
{
    pub fn new(store: PersistedEventStore<R, A>, services: A::Services) -> Self {
        Self {
            store,
            services,
            max_attempts: 5,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, id: &str) -> Option<Loaded<A>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(id).map(|(aggregate, sequence)| Loaded {
            aggregate: aggregate.clone(),
            sequence: *sequence,
        })
    }

    fn remember(&self, id: &str, aggregate: &A, sequence: usize) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY && !cache.contains_key(id) {
            // Crude but bounded: start over rather than track recency.
            cache.clear();
        }
        cache.insert(id.to_owned(), (aggregate.clone(), sequence));
    }

    fn forget(&self, id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Current state from the stored history, bypassing (and then refreshing) the
    /// cache. For state read to decide about *another* aggregate, or to accept a
    /// credential: nothing would notice there that this process's cached copy fell
    /// behind another process's writes, since no commit on it follows.
    pub async fn load_fresh(&self, id: &str) -> Result<Loaded<A>, StoreError<A::Error>> {
        let context = self.store.load_aggregate(id).await.map_err(map_error)?;
        if context.current_sequence > 0 {
            self.remember(id, &context.aggregate, context.current_sequence);
        }
        Ok(Loaded {
            aggregate: context.aggregate,
            sequence: context.current_sequence,
        })
    }

    /// Current state, for decisions made outside the aggregate (like whether a
    /// password check may run at all). Hand the result back to
    /// [`Self::execute_loaded`] so the command starts from the same state.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError<A::Error>> {
        match self.cached(id) {
            Some(loaded) => Ok(loaded),
            None => self.load_fresh(id).await,
        }
    }

    /// Load, handle, commit; retried on a lost optimistic race.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        let loaded = self.load(id).await?;
        self.execute_loaded(id, loaded, command, metadata).await
    }

    /// Runs a command that creates an aggregate under a freshly generated id: there
    /// is nothing to load. Should the id exist after all, the commit conflicts and
    /// the retry loads it.
    pub async fn execute_new(
        &self,
        id: &str,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        let fresh = Loaded {
            aggregate: A::default(),
            sequence: 0,
        };
        self.execute_loaded(id, fresh, command, metadata).await
    }

    /// Runs a command on state obtained from [`Self::load`]; a lost race drops the
    /// cached state and retries on the stored history.
    ///
    /// A retry re-checks only the aggregate's own rules. When the caller decided
    /// something from the loaded state (may this actor change that member?), use
    /// [`Self::execute_once`] and decide again after a conflict.
    pub async fn execute_loaded(
        &self,
        id: &str,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        let mut loaded = Some(loaded);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let state = match loaded.take() {
                Some(state) => state,
                None => self.load_fresh(id).await?,
            };
            match self
                .execute_once(id, state, command.clone(), metadata)
                .await
            {
                Err(StoreError::Conflict) if attempt < self.max_attempts => {}
                other => return other,
            }
        }
    }

    /// One attempt, no retry: a lost race answers [`StoreError::Conflict`] and
    /// drops the cached state, so the next [`Self::load`] reads the stored history.
    /// For callers whose own checks depend on the state they loaded: they load,
    /// decide and run again, up to [`Self::max_attempts`] times.
    pub async fn execute_once(
        &self,
        id: &str,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        let result = self
            .try_execute(id, loaded, command, metadata.clone())
            .await;
        match &result {
            Err(StoreError::Conflict) => {
                self.forget(id);
                metrics::counter!("keyledger_command_conflicts_total", "aggregate" => A::TYPE)
                    .increment(1);
            }
            Err(StoreError::Unavailable(_)) => {
                // The outcome of a failed commit is unknown: trust only the store.
                self.forget(id);
            }
            _ => {}
        }
        result
    }

    /// How many times a command is tried before a conflict is reported.
    pub fn max_attempts(&self) -> usize {
        self.max_attempts
    }

    async fn try_execute(
        &self,
        id: &str,
        loaded: Loaded<A>,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        let started = std::time::Instant::now();
        let mut aggregate = loaded.aggregate;
        let sink = EventSink::default();
        aggregate
            .handle(command, &self.services, &sink)
            .await
            .map_err(StoreError::Rejected)?;
        let events = sink.collect().await;
        let context = EventStoreAggregateContext {
            aggregate_id: id.to_owned(),
            aggregate: aggregate.clone(),
            current_sequence: loaded.sequence,
            current_snapshot: None,
        };
        let events = self
            .store
            .commit(events, context, metadata)
            .await
            .map_err(map_error)?;
        if let Some(last) = events.last() {
            self.remember(id, &aggregate, last.sequence);
        }
        metrics::histogram!("keyledger_event_store_command_seconds", "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        Ok(Committed { aggregate, events })
    }
}

fn map_error<E: std::error::Error>(error: AggregateError<E>) -> StoreError<E> {
    match error {
        AggregateError::UserError(e) => StoreError::Rejected(e),
        AggregateError::AggregateConflict => StoreError::Conflict,
        other => StoreError::Unavailable(other.to_string()),
    }
}
