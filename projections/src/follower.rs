//! One shape for everything that follows the ordered feed.
//!
//! A follower's type states what it guarantees about the events it is handed:
//!
//! - [`Transactional`]: applied in the same transaction as its checkpoint, so
//!   after a crash its effects and its position are both there or both not (the
//!   read models and the audit trail). All transactional followers of a node share
//!   one transaction per batch and one checkpoint, and one leader among the nodes.
//! - [`AtLeastOnce`]: its effect leaves the database (NATS, later mail or SMS), so
//!   no transaction can cover it; the checkpoint moves only after the effect was
//!   acknowledged. A crash repeats effects, never loses one.
//! - [`InMemory`]: held in this process only and rebuilt from the log when it
//!   starts (revocations, the access view). No checkpoint in storage; every node
//!   keeps its own.
//!
//! One [`FeedReader`] per node reads each batch once and hands it to all of them.
//! Why: each follower reading and checkpointing on its own cost a query per
//! follower per wake-up, and in PostgreSQL every statement outside a transaction
//! block is a commit of its own. Now a wake-up costs one transaction where this
//! node leads the transactional followers (the batch is read inside it), one read
//! where it does not, and the at-least-once checkpoints ride along in the next
//! such transaction (or are written on their own at most once a second). A
//! checkpoint that lags behind what was acknowledged only means that a restart
//! delivers those events again, which the at-least-once guarantee allows (and
//! JetStream drops duplicate ids within its window).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyledger_domain::DataKeyWrapping;
use keyledger_storage::{Connection, Database, Engine};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoints::{checkpoint, save_checkpoint, save_checkpoints_on};
use crate::feed::{EventFeed, FeedError, FeedSignal, Position, StoredEvent};
use crate::personal::PersonalDataOpener;
use crate::read_models::CHECKPOINT;
use crate::runner::{sqlite_batch_is_ours, Applied, LeaderFlag, Leadership};

/// Events read per query.
const BATCH: i64 = 500;

/// A follower's step, boxed so that followers of different types fit one list.
pub type Step<'a> = Pin<Box<dyn Future<Output = Result<(), FeedError>> + Send + 'a>>;

/// Applied in the same transaction as its checkpoint (see the module docs).
pub trait Transactional: Send {
    /// Applies `events` (never empty, in feed order, all after the group's
    /// checkpoint) inside `tx`; the group moves the checkpoint in the same one.
    fn apply<'a>(&'a mut self, tx: Connection<'a>, events: &'a [StoredEvent]) -> Step<'a>;

    /// Runs after the transaction holding `events` committed, before anyone
    /// waiting for them is told (the read models scrub erased data from their
    /// files here). Failures are the follower's to report.
    fn committed<'a>(
        &'a mut self,
        _db: &'a Database,
        _events: &'a [StoredEvent],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
}

/// Checkpointed only after its effect was acknowledged (see the module docs).
pub trait AtLeastOnce: Send {
    /// Its checkpoint's name, also the name of the lock that makes one node
    /// deliver.
    fn name(&self) -> String;

    /// Gets ready to deliver the events after `position`, its checkpoint: called
    /// when this node takes the lead and after every failure.
    fn resume<'a>(&'a mut self, feed: &'a EventFeed, position: Position) -> Step<'a>;

    /// Delivers `events` (never empty, in feed order, right after the last
    /// delivered one, personal data opened) and returns once every one of them
    /// was acknowledged.
    fn deliver<'a>(&'a mut self, events: &'a [StoredEvent]) -> Step<'a>;

    /// How many events it is behind the feed, after each read that reached the
    /// end of the feed (for a gauge).
    fn behind(&self, _events: i64) {}

    /// Reports a failure (log line and counter); delivery resumes from the
    /// checkpoint after a pause.
    fn failed(&self, error: &FeedError);
}

/// Held in memory and rebuilt from the log at start (see the module docs).
pub trait InMemory: Send {
    /// Everything up to here is applied.
    fn position(&self) -> Position;

    /// Applies `events` (in feed order, all after [`Self::position`]; possibly
    /// none: called after every read, for time-based upkeep). On an error the
    /// position stays after the last event applied, and the rest comes again.
    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), FeedError>;
}

/// How long the newest position of a recently written aggregate is remembered.
const RECENT_FOR: Duration = Duration::from_secs(60);

/// How long a writer waiting for its own event looks for it among the events
/// read before asking the log where it is.
const RECENT_WAIT: Duration = Duration::from_secs(1);

/// Where the recently read events of each aggregate sit, so that a writer
/// waiting for its own write learns its position without a query.
pub(crate) struct RecentEvents {
    by_aggregate: Mutex<Recent>,
    read: watch::Sender<u64>,
}

struct Recent {
    /// (aggregate type, id) → (newest sequence read, its position, when read).
    latest: HashMap<(String, String), (i64, Position, Instant)>,
    pruned_at: Instant,
}

impl RecentEvents {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            by_aggregate: Mutex::new(Recent {
                latest: HashMap::new(),
                pruned_at: Instant::now(),
            }),
            read: watch::channel(0).0,
        })
    }

    fn record(&self, events: &[StoredEvent]) {
        if events.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut recent = self.by_aggregate.lock().unwrap_or_else(|p| p.into_inner());
            for event in events {
                let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
                let entry =
                    recent
                        .latest
                        .entry(key)
                        .or_insert((event.sequence, event.position, now));
                if event.sequence >= entry.0 {
                    *entry = (event.sequence, event.position, now);
                }
            }
            if recent.pruned_at.elapsed() >= RECENT_FOR {
                recent
                    .latest
                    .retain(|_, (_, _, read)| read.elapsed() < RECENT_FOR);
                if recent.latest.capacity() > 4 * recent.latest.len() + 1024 {
                    recent.latest.shrink_to_fit();
                }
                recent.pruned_at = now;
            }
        }
        self.read.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lookup(&self, aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Option<Position> {
        let recent = self.by_aggregate.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .latest
            .get(&(aggregate_type.to_owned(), aggregate_id.to_owned()))
            .filter(|(newest, _, _)| *newest >= sequence)
            .map(|(_, position, _)| *position)
    }

    /// The position of the event, or of a later one of the same aggregate (which
    /// the feed delivers after it): at once if it was read recently, else as soon
    /// as it is read, else the log's answer after [`RECENT_WAIT`] (an older
    /// event, or a feed held back by a long transaction).
    pub(crate) async fn position_of(
        &self,
        feed: &EventFeed,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Option<Position>, FeedError> {
        let mut read = self.read.subscribe();
        let deadline = tokio::time::Instant::now() + RECENT_WAIT;
        loop {
            if let Some(position) = self.lookup(aggregate_type, aggregate_id, sequence) {
                return Ok(Some(position));
            }
            match tokio::time::timeout_at(deadline, read.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
        feed.position_of(aggregate_type, aggregate_id, sequence)
            .await
    }
}

/// The transactional followers of a node: one transaction, one checkpoint
/// ([`CHECKPOINT`]), one lock.
struct Projecting {
    followers: Vec<Box<dyn Transactional>>,
    leadership: Leadership,
    /// The checkpoint, while this node leads (`None`: read it again).
    at: Option<Position>,
    progress: watch::Sender<Position>,
    retry: Retry,
}

/// One at-least-once follower and where it stands.
struct Delivering {
    follower: Box<dyn AtLeastOnce>,
    name: String,
    leadership: Leadership,
    /// Delivered and acknowledged up to here, while this node leads.
    at: Option<Position>,
    /// The checkpoint as stored.
    saved: Position,
    /// Since when `at` is ahead of `saved`.
    unsaved_since: Option<Instant>,
    retry: Retry,
}

/// When a failed follower tries again (doubling pauses).
struct Retry {
    at: Option<Instant>,
    pause: Duration,
    first: Duration,
}

impl Retry {
    fn new(first: Duration) -> Self {
        Self {
            at: None,
            pause: first,
            first,
        }
    }

    fn due(&self) -> bool {
        self.at.is_none_or(|at| Instant::now() >= at)
    }

    fn failed(&mut self) {
        self.at = Some(Instant::now() + self.pause);
        self.pause = (self.pause * 2).min(Duration::from_secs(5));
    }

    fn succeeded(&mut self) {
        self.at = None;
        self.pause = self.first;
    }
}

/// An at-least-once checkpoint not yet stored is written on its own after this
/// long without a transaction to ride along in.
const SAVE_ALONE_AFTER: Duration = Duration::from_secs(1);

/// Reads the feed once per wake-up for every follower of this node.
pub struct FeedReader {
    db: Database,
    feed: EventFeed,
    opener: PersonalDataOpener,
    recent: Arc<RecentEvents>,
    projecting: Option<Projecting>,
    delivering: Vec<Delivering>,
    in_memory: Vec<Box<dyn InMemory>>,
}

impl FeedReader {
    /// `wrapping` unwraps the data keys that open personal fields for the
    /// transactional and at-least-once followers (in-memory ones get the events
    /// as stored).
    pub fn new(db: Database, wrapping: Arc<DataKeyWrapping>) -> Self {
        Self {
            feed: EventFeed::new(db.clone()),
            opener: PersonalDataOpener::new(&db, wrapping),
            db,
            recent: RecentEvents::new(),
            projecting: None,
            delivering: Vec::new(),
            in_memory: Vec::new(),
        }
    }

    pub fn feed(&self) -> &EventFeed {
        &self.feed
    }

    pub(crate) fn recent(&self) -> Arc<RecentEvents> {
        self.recent.clone()
    }

    /// Adds transactional followers (the first call creates the group and its
    /// lock); returns the group's progress.
    pub fn transactional(
        &mut self,
        follower: Box<dyn Transactional>,
        leader: &LeaderFlag,
    ) -> watch::Receiver<Position> {
        let projecting = self.projecting.get_or_insert_with(|| Projecting {
            followers: Vec::new(),
            leadership: Leadership::new(CHECKPOINT, leader.clone()),
            at: None,
            progress: watch::channel(Position::START).0,
            retry: Retry::new(Duration::from_millis(100)),
        });
        projecting.followers.push(follower);
        projecting.progress.subscribe()
    }

    /// Adds an at-least-once follower; `leader` reports whether this node is the
    /// one delivering.
    pub fn at_least_once(&mut self, follower: Box<dyn AtLeastOnce>, leader: LeaderFlag) {
        let name = follower.name();
        self.delivering.push(Delivering {
            leadership: Leadership::new(&name, leader),
            name,
            follower,
            at: None,
            saved: Position::START,
            unsaved_since: None,
            retry: Retry::new(Duration::from_millis(200)),
        });
    }

    /// Adds an in-memory follower, already loaded up to its position.
    pub fn in_memory(&mut self, follower: Box<dyn InMemory>) {
        self.in_memory.push(follower);
    }

    /// Follows the feed until aborted.
    pub fn spawn(mut self, mut signal: FeedSignal) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                match self.catch_up().await {
                    Ok(()) => {
                        pause = Duration::from_millis(100);
                        signal.wait().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the feed cannot be read; retrying");
                        metrics::counter!("keyledger_feed_read_errors_total").increment(1);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    }

    /// Takes or checks leadership, then reads batches until the end of the feed.
    async fn catch_up(&mut self) -> Result<(), FeedError> {
        self.take_positions().await;
        loop {
            let Some(from) = self.lowest() else {
                return Ok(());
            };
            let leads_postgres = match (self.db.engine(), &self.projecting) {
                (Engine::Postgres(pool), Some(p)) if p.at.is_some() => Some(pool.clone()),
                _ => None,
            };
            // Where this node leads the transactional followers on PostgreSQL, the
            // batch is read inside their transaction: one commit per wake-up.
            let (batch, mut tx) = match leads_postgres {
                Some(pool) => {
                    let mut tx = pool.begin().await?;
                    let batch = self
                        .feed
                        .read_after_on(Connection::Postgres(&mut tx), from, BATCH)
                        .await?;
                    (batch, Some(tx))
                }
                None => (self.feed.read_after(from, BATCH).await?, None),
            };
            let full = batch.len() as i64 == BATCH;
            self.recent.record(&batch);
            for follower in &mut self.in_memory {
                let position = follower.position();
                let start = batch.partition_point(|e| e.position <= position);
                if let Err(e) = follower.apply(&batch[start..]) {
                    tracing::error!(error = %e, "an in-memory view cannot follow the feed");
                }
            }
            let opened = if tx.is_some()
                || self.projecting.as_ref().is_some_and(|p| p.at.is_some())
                || self.delivering.iter().any(|d| d.at.is_some())
            {
                let mut opened = batch;
                if let Err(e) = self.opener.open(&mut opened).await {
                    drop(tx);
                    return Err(e.into());
                }
                opened
            } else {
                batch
            };
            let ridden = match tx.take() {
                Some(tx) => self.project_postgres(tx, &opened).await,
                None => self.project_sqlite(&opened).await,
            };
            self.deliver(&opened, ridden, full).await;
            // Read on while batches come full, unless nobody moved: a follower
            // stuck on an event it cannot apply is retried on the next wake-up,
            // not in a loop.
            if !full || self.lowest() == Some(from) {
                return Ok(());
            }
        }
    }

    /// Checks each group's lock and, where this node just took the lead, where
    /// it stands.
    async fn take_positions(&mut self) {
        let db = &self.db;
        if let Some(p) = self.projecting.as_mut() {
            if p.retry.due() && p.leadership.held(db).await {
                if p.at.is_none() {
                    match checkpoint(db, CHECKPOINT).await {
                        Ok(at) => {
                            p.at = Some(at);
                            p.progress
                                .send_if_modified(|cur| std::mem::replace(cur, at) != at);
                        }
                        Err(e) => project_failed(p, &e.into()),
                    }
                }
            } else {
                p.at = None;
                // Stand-by: follow the leader's checkpoint so waits still resolve.
                if let Ok(at) = checkpoint(db, CHECKPOINT).await {
                    p.progress
                        .send_if_modified(|cur| std::mem::replace(cur, at) != at);
                }
            }
        }
        for d in &mut self.delivering {
            if !d.retry.due() || !d.leadership.held(db).await {
                d.at = None;
                continue;
            }
            if d.at.is_some() {
                continue;
            }
            let resumed = async {
                let at = checkpoint(db, &d.name).await?;
                d.follower.resume(&self.feed, at).await?;
                Ok::<_, FeedError>(at)
            }
            .await;
            match resumed {
                Ok(at) => {
                    d.at = Some(at);
                    d.saved = at;
                    d.unsaved_since = None;
                }
                Err(e) => {
                    d.follower.failed(&e);
                    d.retry.failed();
                }
            }
        }
    }

    /// The lowest position of a follower that takes events now.
    fn lowest(&self) -> Option<Position> {
        let in_memory = self.in_memory.iter().map(|f| f.position());
        let projecting = self.projecting.as_ref().and_then(|p| p.at);
        let delivering = self.delivering.iter().filter_map(|d| d.at);
        in_memory.chain(projecting).chain(delivering).min()
    }

    /// At-least-once checkpoints that moved since they were stored: they ride
    /// along in the transactional followers' transaction.
    fn unsaved(&self) -> Vec<(String, Position)> {
        self.delivering
            .iter()
            .filter_map(|d| {
                d.at.filter(|at| *at != d.saved)
                    .map(|at| (d.name.clone(), at))
            })
            .collect()
    }

    /// Applies the batch to the transactional followers and moves their
    /// checkpoint, with the pending at-least-once checkpoints, in `tx`, in which
    /// the batch was read. Returns the checkpoints it stored.
    async fn project_postgres(
        &mut self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        batch: &[StoredEvent],
    ) -> Vec<(String, Position)> {
        let unsaved = self.unsaved();
        let Some(p) = self.projecting.as_mut() else {
            return Vec::new();
        };
        let Some(from) = p.at else {
            return Vec::new();
        };
        let start = batch.partition_point(|e| e.position <= from);
        let events = &batch[start..];
        let result = async {
            let mut checkpoints = Vec::with_capacity(unsaved.len() + 1);
            if let Some(last) = events.last() {
                for follower in &mut p.followers {
                    follower
                        .apply(Connection::Postgres(&mut tx), events)
                        .await?;
                }
                checkpoints.push((CHECKPOINT, last.position));
            }
            checkpoints.extend(unsaved.iter().map(|(name, at)| (name.as_str(), *at)));
            save_checkpoints_on(Connection::Postgres(&mut tx), &checkpoints).await?;
            tx.commit().await?;
            Ok::<_, FeedError>(())
        }
        .await;
        match result {
            Ok(()) => {
                if let Some(last) = events.last() {
                    self.projected(events, last.position).await;
                }
                unsaved
            }
            Err(e) => {
                project_failed(p, &e);
                Vec::new()
            }
        }
    }

    /// The embedded store: one `BEGIN IMMEDIATE` per batch that has events for
    /// the transactional followers, after making sure the read models are still
    /// theirs to write (see [`sqlite_batch_is_ours`]).
    async fn project_sqlite(&mut self, batch: &[StoredEvent]) -> Vec<(String, Position)> {
        let unsaved = self.unsaved();
        let Engine::Sqlite(embedded) = self.db.engine() else {
            return Vec::new();
        };
        let Some(p) = self.projecting.as_mut() else {
            return Vec::new();
        };
        let Some(from) = p.at else {
            return Vec::new();
        };
        let start = batch.partition_point(|e| e.position <= from);
        let events = &batch[start..];
        let Some(last) = events.last().map(|e| e.position) else {
            return Vec::new();
        };
        let result = async {
            let mut tx = embedded.begin_write().await?;
            if let Some(not_ours) = sqlite_batch_is_ours(&mut tx, from).await? {
                tx.rollback().await?;
                return Ok(not_ours);
            }
            for follower in &mut p.followers {
                follower.apply(Connection::Sqlite(&mut tx), events).await?;
            }
            let mut checkpoints = vec![(CHECKPOINT, last)];
            checkpoints.extend(unsaved.iter().map(|(name, at)| (name.as_str(), *at)));
            save_checkpoints_on(Connection::Sqlite(&mut tx), &checkpoints).await?;
            tx.commit().await?;
            Ok::<_, FeedError>(Applied::UpTo(last))
        }
        .await;
        match result {
            Ok(Applied::UpTo(last)) => {
                self.projected(events, last).await;
                unsaved
            }
            Ok(Applied::HandedOver) => {
                p.leadership.stand_by();
                p.at = None;
                Vec::new()
            }
            Ok(Applied::Moved(now)) => {
                // A switch swapped rebuilt tables in: the batch was read for the
                // old ones. Go on from where the new ones stand.
                p.at = Some(now);
                p.progress
                    .send_if_modified(|cur| std::mem::replace(cur, now) != now);
                Vec::new()
            }
            Ok(Applied::Nothing) => Vec::new(),
            Err(e) => {
                project_failed(p, &e);
                Vec::new()
            }
        }
    }

    /// After the transactional followers' commit: their hooks, then the news.
    async fn projected(&mut self, events: &[StoredEvent], last: Position) {
        let Some(p) = self.projecting.as_mut() else {
            return;
        };
        for follower in &mut p.followers {
            follower.committed(&self.db, events).await;
        }
        p.at = Some(last);
        p.retry.succeeded();
        metrics::counter!("keyledger_projected_events_total").increment(events.len() as u64);
        p.progress
            .send_if_modified(|cur| std::mem::replace(cur, last) != last);
    }

    /// Hands the batch to the at-least-once followers this node leads, and
    /// stores a checkpoint on its own that found no transaction to ride along in
    /// for [`SAVE_ALONE_AFTER`].
    async fn deliver(
        &mut self,
        batch: &[StoredEvent],
        ridden: Vec<(String, Position)>,
        full: bool,
    ) {
        let head = batch.last().map(|e| e.position);
        for d in &mut self.delivering {
            if let Some((_, at)) = ridden.iter().find(|(name, _)| *name == d.name) {
                d.saved = *at;
                if d.at == Some(*at) {
                    d.unsaved_since = None;
                }
            }
            let Some(from) = d.at else {
                continue;
            };
            let start = batch.partition_point(|e| e.position <= from);
            let events = &batch[start..];
            if let Some(last) = events.last() {
                match d.follower.deliver(events).await {
                    Ok(()) => {
                        d.at = Some(last.position);
                        d.unsaved_since.get_or_insert_with(Instant::now);
                        d.retry.succeeded();
                    }
                    Err(e) => {
                        d.follower.failed(&e);
                        d.retry.failed();
                        d.at = None;
                        continue;
                    }
                }
            }
            let Some(at) = d.at else { continue };
            if !full {
                let behind = head.map_or(0, |h| (h.global_position - at.global_position).max(0));
                d.follower.behind(behind);
            }
            let waited = d
                .unsaved_since
                .is_some_and(|since| since.elapsed() >= SAVE_ALONE_AFTER);
            if at != d.saved && waited {
                match save_checkpoint(&self.db, &d.name, at).await {
                    Ok(()) => {
                        d.saved = at;
                        d.unsaved_since = None;
                    }
                    Err(e) => {
                        d.follower.failed(&e.into());
                        d.retry.failed();
                        d.at = None;
                    }
                }
            }
        }
    }
}

fn project_failed(p: &mut Projecting, e: &FeedError) {
    tracing::error!(error = %e, "read-model projector failed; retrying");
    metrics::counter!("keyledger_projection_errors_total").increment(1);
    p.leadership.lost();
    p.at = None;
    p.retry.failed();
}
