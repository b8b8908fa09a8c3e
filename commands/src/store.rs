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
use serde_json::Value;

use keyledger_storage::{per_backend, Database, Engine, PerBackend};

use crate::postgres_events::PostgresChainedEventRepository;
use crate::sqlite_events::SqliteChainedEventRepository;

/// The event log of either back end: the one role with two implementations,
/// since the mechanisms differ (PostgreSQL chains and numbers events in a
/// trigger inside the committing transaction; the embedded engine does both in
/// Rust under its single writer, in groups), side by side as a strategy. A
/// conflict surfaces the same way from both
/// (`PersistenceError::OptimisticLockError`, then [`StoreError::Conflict`]): on
/// PostgreSQL from the primary key's unique violation, on SQLite from its
/// PRIMARY KEY violation (code 1555).
pub struct EventRepository {
    log: PerBackend<PostgresChainedEventRepository, SqliteChainedEventRepository>,
}

impl EventRepository {
    pub fn new(db: &Database) -> Self {
        let log = match db.engine() {
            Engine::Postgres(pool) => {
                PerBackend::Postgres(PostgresChainedEventRepository::new(pool))
            }
            Engine::Sqlite(database) => {
                PerBackend::Sqlite(SqliteChainedEventRepository::new(database))
            }
        };
        Self { log }
    }

    /// Writes several aggregates' events (each part one aggregate's, in
    /// sequence order) in one transaction: all, or none when any part's first
    /// sequence is taken ([`PersistenceError::OptimisticLockError`]).
    pub async fn persist_together(
        &self,
        parts: &[(&'static str, Vec<SerializedEvent>)],
    ) -> Result<(), PersistenceError> {
        per_backend!(&self.log, |log| log.append_together(parts).await)
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        per_backend!(&self.log, |log| log.get_events::<A>(aggregate_id).await)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        per_backend!(&self.log, |log| log
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        per_backend!(&self.log, |log| log.get_snapshot::<A>(aggregate_id).await)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        per_backend!(&self.log, |log| log
            .persist::<A>(events, snapshot_update)
            .await)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        per_backend!(&self.log, |log| log.stream_events::<A>(aggregate_id).await)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        per_backend!(&self.log, |log| log.stream_all_events::<A>().await)
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
    /// Taken from this process's cache, which another node may have moved past:
    /// a refusal or a no-op decided on it is confirmed from the stored history
    /// (a commit needs no such check: a stale copy makes it conflict).
    cached: bool,
}

impl<A: Aggregate> Loaded<A> {
    pub fn aggregate(&self) -> &A {
        &self.aggregate
    }

    /// Whether it came from this process's cache (see [`Loaded`]'s `cached`).
    pub fn is_cached(&self) -> bool {
        self.cached
    }

    /// The state of an aggregate that does not exist yet, for a command that
    /// creates one under a fresh id.
    pub fn new_aggregate() -> Self {
        Self {
            aggregate: A::default(),
            sequence: 0,
            cached: false,
        }
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
            cached: true,
        })
    }

    /// Keeps `aggregate` at `sequence` as the state of `id`, unless a later one
    /// is kept already: two commits (or a commit and a load) of one aggregate
    /// finishing in the other order must not leave the older state behind,
    /// where a later load would decide on it.
    fn remember(&self, id: &str, aggregate: &A, sequence: usize) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.get(id).is_some_and(|(_, kept)| *kept > sequence) {
            return;
        }
        if cache.len() >= CACHE_CAPACITY && !cache.contains_key(id) {
            // Crude but bounded: start over rather than track recency.
            cache.clear();
        }
        cache.insert(id.to_owned(), (aggregate.clone(), sequence));
    }

    /// Drops the cached state of `id`: the next [`Self::load`] reads the
    /// stored history.
    pub(crate) fn forget(&self, id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Lets the aggregate decide: the events it emits for `command`, already
    /// applied to `aggregate`.
    async fn handle(
        &self,
        aggregate: &mut A,
        command: A::Command,
    ) -> Result<Vec<A::Event>, A::Error> {
        let sink = EventSink::default();
        aggregate.handle(command, &self.services, &sink).await?;
        Ok(sink.collect().await)
    }
}

impl<A, R> AggregateStore<A, R>
where
    A: Aggregate + Clone,
    A::Command: Clone,
    R: PersistedEventRepository,
{
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
            cached: false,
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
        self.execute_loaded(id, Loaded::new_aggregate(), command, metadata)
            .await
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
            let cached = state.cached;
            match self
                .execute_once(id, state, command.clone(), metadata)
                .await
            {
                Err(StoreError::Conflict) if attempt < self.max_attempts => {}
                // Suspended here, reactivated on another node: confirm from the
                // stored history before refusing or answering "nothing to do".
                Err(StoreError::Rejected(_)) if cached => self.forget(id),
                Ok(committed) if cached && committed.events.is_empty() => self.forget(id),
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
        let events = self
            .handle(&mut aggregate, command)
            .await
            .map_err(StoreError::Rejected)?;
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

/// One command on one aggregate, for [`execute_together`]: the store, the
/// aggregate's id, the state the command starts from (from
/// [`AggregateStore::load`], or a fresh default for a new id) and the command.
pub struct Step<'s, A: Aggregate> {
    pub store: &'s AggregateStore<A>,
    pub id: &'s str,
    pub loaded: Loaded<A>,
    pub command: A::Command,
}

/// Which of [`execute_together`]'s two aggregates refused its command.
#[derive(Debug, thiserror::Error)]
pub enum Refusal<E1: std::error::Error, E2: std::error::Error> {
    #[error(transparent)]
    First(E1),
    #[error(transparent)]
    Second(E2),
}

/// Runs one command on each of two aggregates and commits both commands'
/// events in ONE transaction, retried on a lost race like
/// [`AggregateStore::execute_loaded`] (each retry on both aggregates' stored
/// history).
///
/// Each aggregate's optimistic check holds as if it were committed alone (its
/// next sequence is taken or not), and neither commit can land without the
/// other: a change that another writer commits to either aggregate in between
/// makes the whole commit conflict, and the retry decides again on state that
/// includes it. Both events share the metadata.
pub async fn execute_together<A, B>(
    log: &EventRepository,
    first: Step<'_, A>,
    second: Step<'_, B>,
    metadata: &HashMap<String, String>,
) -> Result<(Committed<A>, Committed<B>), StoreError<Refusal<A::Error, B::Error>>>
where
    A: Aggregate + Clone,
    A::Command: Clone,
    B: Aggregate + Clone,
    B::Command: Clone,
{
    let (mut first_state, mut second_state) = (Some(first.loaded), Some(second.loaded));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let a = handed_or_stored(&mut first_state, first.store, first.id)
            .await
            .map_err(|e| refused_by(e, Refusal::First))?;
        let b = handed_or_stored(&mut second_state, second.store, second.id)
            .await
            .map_err(|e| refused_by(e, Refusal::Second))?;
        let cached = a.cached || b.cached;
        let outcome = commit_together(
            log,
            metadata,
            (first.store, first.id, a, first.command.clone()),
            (second.store, second.id, b, second.command.clone()),
        )
        .await;
        match outcome {
            Err(StoreError::Conflict) if attempt < first.store.max_attempts => {}
            // A refusal decided on a cached copy is confirmed from the stored
            // history, as in [`AggregateStore::execute_loaded`].
            Err(StoreError::Rejected(_)) if cached => {
                first.store.forget(first.id);
                second.store.forget(second.id);
            }
            other => return other,
        }
    }
}

/// The state a command was handed (its first attempt), else the stored history.
async fn handed_or_stored<A>(
    handed: &mut Option<Loaded<A>>,
    store: &AggregateStore<A>,
    id: &str,
) -> Result<Loaded<A>, StoreError<A::Error>>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    match handed.take() {
        Some(state) => Ok(state),
        None => store.load_fresh(id).await,
    }
}

fn refused_by<E: std::error::Error, R: std::error::Error>(
    error: StoreError<E>,
    which: impl FnOnce(E) -> R,
) -> StoreError<R> {
    match error {
        StoreError::Rejected(e) => StoreError::Rejected(which(e)),
        StoreError::Conflict => StoreError::Conflict,
        StoreError::Unavailable(why) => StoreError::Unavailable(why),
    }
}

/// One attempt of [`execute_together`].
async fn commit_together<A: Aggregate + Clone, B: Aggregate + Clone>(
    log: &EventRepository,
    metadata: &HashMap<String, String>,
    (first, first_id, a, first_command): (&AggregateStore<A>, &str, Loaded<A>, A::Command),
    (second, second_id, b, second_command): (&AggregateStore<B>, &str, Loaded<B>, B::Command),
) -> Result<(Committed<A>, Committed<B>), StoreError<Refusal<A::Error, B::Error>>> {
    let started = std::time::Instant::now();
    let (mut first_aggregate, mut second_aggregate) = (a.aggregate, b.aggregate);
    let first_events = first
        .handle(&mut first_aggregate, first_command)
        .await
        .map_err(|e| StoreError::Rejected(Refusal::First(e)))?;
    let second_events = second
        .handle(&mut second_aggregate, second_command)
        .await
        .map_err(|e| StoreError::Rejected(Refusal::Second(e)))?;
    let first_events = envelopes(first_id, a.sequence, first_events, metadata);
    let second_events = envelopes(second_id, b.sequence, second_events, metadata);
    let written = async {
        let parts = [
            (A::TYPE, serialized(&first_events)?),
            (B::TYPE, serialized(&second_events)?),
        ];
        log.persist_together(&parts).await
    }
    .await;
    if let Err(error) = written {
        // A lost race, or an outcome that is unknown: trust only the store.
        first.forget(first_id);
        second.forget(second_id);
        let error = map_error(AggregateError::<Refusal<A::Error, B::Error>>::from(error));
        if matches!(error, StoreError::Conflict) {
            metrics::counter!("keyledger_command_conflicts_total", "aggregate" => A::TYPE)
                .increment(1);
        }
        return Err(error);
    }
    if let Some(last) = first_events.last() {
        first.remember(first_id, &first_aggregate, last.sequence);
    }
    if let Some(last) = second_events.last() {
        second.remember(second_id, &second_aggregate, last.sequence);
    }
    for aggregate_type in [A::TYPE, B::TYPE] {
        metrics::histogram!("keyledger_event_store_command_seconds", "aggregate" => aggregate_type)
            .record(started.elapsed().as_secs_f64());
    }
    Ok((
        Committed {
            aggregate: first_aggregate,
            events: first_events,
        },
        Committed {
            aggregate: second_aggregate,
            events: second_events,
        },
    ))
}

/// The envelopes cqrs-es would write for `events`: numbered after `sequence`,
/// each with the metadata.
fn envelopes<A: Aggregate>(
    id: &str,
    sequence: usize,
    events: Vec<A::Event>,
    metadata: &HashMap<String, String>,
) -> Vec<EventEnvelope<A>> {
    events
        .into_iter()
        .zip(sequence + 1..)
        .map(|(payload, sequence)| EventEnvelope {
            aggregate_id: id.to_owned(),
            sequence,
            payload,
            metadata: metadata.clone(),
        })
        .collect()
}

fn serialized<A: Aggregate>(
    events: &[EventEnvelope<A>],
) -> Result<Vec<SerializedEvent>, PersistenceError> {
    events.iter().map(SerializedEvent::try_from).collect()
}

fn map_error<E: std::error::Error>(error: AggregateError<E>) -> StoreError<E> {
    match error {
        AggregateError::UserError(e) => StoreError::Rejected(e),
        AggregateError::AggregateConflict => StoreError::Conflict,
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use keyledger_domain::User;
    use keyledger_storage::on_both_back_ends;

    use super::*;

    on_both_back_ends! {
        async fn an_older_state_never_replaces_a_newer_one_in_the_cache(db) {
            let store: AggregateStore<User> = AggregateStore::new(event_store(&db), ());
            let newer = User { consecutive_failures: 2, ..User::default() };
            store.remember("a", &newer, 11);
            // A commit (or load) that finished later with an earlier state.
            store.remember("a", &User::default(), 10);
            let kept = store.cached("a").expect("cached");
            assert_eq!((kept.sequence, kept.aggregate.consecutive_failures), (11, 2));
            store.remember("a", &User::default(), 12);
            assert_eq!(store.cached("a").expect("cached").sequence, 12);
            store.forget("a");
            assert!(store.cached("a").is_none());
        }
    }
}
