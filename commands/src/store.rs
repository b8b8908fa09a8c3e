//! Running commands against the event store with optimistic concurrency.
//!
//! cqrs-es commits with "next sequence = loaded sequence + 1" and lets the primary
//! key reject a writer that lost a race; it does not retry. A lost race wrote
//! nothing, so re-running the command on fresh state is always safe: this store
//! does that a bounded number of times and then reports the conflict.

use std::collections::HashMap;
use std::marker::PhantomData;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;

/// The PostgreSQL event store for one aggregate type. Pure event sourcing plus
/// periodic snapshots: aggregates' `apply` only sets state, so the snapshot store's
/// second application of committed events (cqrs-es 0.5.0) is harmless.
pub type PgEventStore<A> = PersistedEventStore<PostgresEventRepository, A>;

/// How many events between snapshots; sessions and busy users grow long histories.
pub const SNAPSHOT_EVERY: usize = 50;

pub fn pg_event_store<A: Aggregate>(pool: sqlx::PgPool) -> PgEventStore<A> {
    PersistedEventStore::new_snapshot_store(PostgresEventRepository::new(pool), SNAPSHOT_EVERY)
}

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

/// Executes commands on one aggregate type.
pub struct AggregateStore<A: Aggregate, ES: EventStore<A> = PgEventStore<A>> {
    store: ES,
    services: A::Services,
    max_attempts: usize,
    _aggregate: PhantomData<A>,
}

impl<A, ES> AggregateStore<A, ES>
where
    A: Aggregate + Clone,
    A::Command: Clone,
    ES: EventStore<A>,
{
    pub fn new(store: ES, services: A::Services) -> Self {
        Self {
            store,
            services,
            max_attempts: 5,
            _aggregate: PhantomData,
        }
    }

    /// Current state, for decisions made outside the aggregate (like whether a
    /// password check may run at all). Hand the result back to
    /// [`Self::execute_loaded`] so the command does not load it a second time.
    pub async fn load(&self, id: &str) -> Result<Loaded<A, ES>, StoreError<A::Error>> {
        let context = self.store.load_aggregate(id).await.map_err(map_error)?;
        Ok(Loaded { context })
    }

    /// Load, handle, commit; retried on a lost optimistic race.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        self.run(id, None, command, metadata).await
    }

    /// Like [`Self::execute`], starting from state loaded before; only a lost race
    /// makes it load again.
    pub async fn execute_loaded(
        &self,
        id: &str,
        loaded: Loaded<A, ES>,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        self.run(id, Some(loaded.context), command, metadata).await
    }

    async fn run(
        &self,
        id: &str,
        mut context: Option<ES::AC>,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .try_execute(id, context.take(), command.clone(), metadata.clone())
                .await;
            match result {
                Err(StoreError::Conflict) if attempt < self.max_attempts => {
                    metrics::counter!("keyledger_command_conflicts_total", "aggregate" => A::TYPE)
                        .increment(1);
                    continue;
                }
                other => return other,
            }
        }
    }

    async fn try_execute(
        &self,
        id: &str,
        context: Option<ES::AC>,
        command: A::Command,
        metadata: HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        let started = std::time::Instant::now();
        let mut context = match context {
            Some(context) => context,
            None => self.store.load_aggregate(id).await.map_err(map_error)?,
        };
        let sink = EventSink::default();
        context
            .aggregate()
            .handle(command, &self.services, &sink)
            .await
            .map_err(StoreError::Rejected)?;
        let aggregate = context.aggregate().clone();
        let events = sink.collect().await;
        let events = self
            .store
            .commit(events, context, metadata)
            .await
            .map_err(map_error)?;
        metrics::histogram!("keyledger_event_store_command_seconds", "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        Ok(Committed { aggregate, events })
    }
}

impl<A> AggregateStore<A, PgEventStore<A>>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    /// Runs a command that creates an aggregate under a freshly generated id. There
    /// is nothing to load; should the id exist after all, the commit conflicts and
    /// the normal load-and-retry path takes over.
    pub async fn execute_new(
        &self,
        id: &str,
        command: A::Command,
        metadata: &HashMap<String, String>,
    ) -> Result<Committed<A>, StoreError<A::Error>> {
        let fresh = EventStoreAggregateContext {
            aggregate_id: id.to_owned(),
            aggregate: A::default(),
            current_sequence: 0,
            current_snapshot: None,
        };
        self.run(id, Some(fresh), command, metadata).await
    }
}

/// State loaded by [`AggregateStore::load`], reusable for one command.
pub struct Loaded<A: Aggregate, ES: EventStore<A>> {
    context: ES::AC,
}

impl<A: Aggregate, ES: EventStore<A>> Loaded<A, ES> {
    pub fn aggregate(&mut self) -> &A {
        self.context.aggregate()
    }
}

fn map_error<E: std::error::Error>(error: AggregateError<E>) -> StoreError<E> {
    match error {
        AggregateError::UserError(e) => StoreError::Rejected(e),
        AggregateError::AggregateConflict => StoreError::Conflict,
        other => StoreError::Unavailable(other.to_string()),
    }
}
