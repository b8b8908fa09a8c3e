//! Keyledger's read side.
//!
//! Everything here follows one feed of the event log in a total order that never
//! skips a late commit ([`feed`]). One [`FeedReader`] per node reads each batch
//! once and hands it to every follower, whose type states its guarantee
//! ([`follower`]):
//! - transactional, applied in the same transaction as its checkpoint:
//!   [`read_models`], users, sessions and the audit trail, one implementation
//!   for PostgreSQL and the embedded SQLite store ([`read_models_sqlite`] has
//!   the latter's entry points);
//! - at least once, checkpointed after an acknowledgement: [`relay`], integration
//!   events to NATS JetStream, plus the effective-permission changes they cause;
//! - in memory, rebuilt on start: [`revocations`], the recently ended sessions that
//!   token validation consults without a query, and [`access`], organizations,
//!   roles, service accounts and suspensions for `authorize` without a query.
//!
//! [`chain`] signs checkpoints of the hash-chained log (tamper evidence) now and
//! then, reading only the chain hashes.
//!
//! [`as_of`] folds one account's events again to tell how it stood at a past
//! instant (time travel, for auditors).
//!
//! Every part runs on either back end, over the process's one
//! [`keyledger_storage::Database`]; [`checkpoints`] keeps where each follower
//! stands.
#![forbid(unsafe_code)]

pub mod access;
pub mod as_of;
pub mod chain;
pub mod checkpoints;
pub mod feed;
pub mod follower;
pub mod integration;
pub mod mail_outbox;
pub mod personal;
pub mod read_models;
pub mod read_models_sqlite;
pub mod relay;
pub mod revocations;
pub mod runner;

pub use access::{AccessModel, AccessView, Decision, EffectiveChange, InvitationView, Subject};
pub use as_of::{account_as_of, AccountAsOf, AccountStatus};
pub use chain::{last_signed_by, AuditKey, AuditPublicKey, ChainSigner, Checkpoint, LogState};
pub use feed::{
    event_columns, EventFeed, EventHeader, FeedError, FeedSignal, Position, StoredEvent,
    EVENT_COLUMNS, SQLITE_EVENT_COLUMNS,
};
pub use follower::{AtLeastOnce, FeedReader, InMemory, Transactional};
pub use integration::IntegrationEvent;
pub use mail_outbox::{DueMail, MailEnd, MailKind, MailOutbox, MailQueue, UndeliveredMail};
pub use read_models::ReadModels;
pub use read_models_sqlite::SqliteReadModels;
pub use relay::{NatsRelay, RelaySettings};
pub use revocations::{RevocationFollower, RevokedSessions, SessionCutoff};
pub use runner::{
    handover_requested, install_read_models, lock_key, Consistency, LeaderFlag, ProjectionRunner,
    ReadModelsFollower, HANDOVER_STALE_AFTER,
};
