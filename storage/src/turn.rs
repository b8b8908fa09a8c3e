//! Exclusive turns: a section that only one task of every process sharing the
//! database may be in at a time (for checks that span several aggregates, which
//! optimistic concurrency per aggregate cannot protect).
//!
//! Two mechanisms, since the guarantees come from different places: on
//! PostgreSQL a transaction-scoped advisory lock, shared by every node on the
//! database and released by the transaction's end even when the holder is
//! dropped half-way; the embedded database belongs to one process by
//! construction (its data directory is locked), so an in-process mutex per
//! turn is the same guarantee there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::{Postgres, Transaction};
use tokio::sync::OwnedMutexGuard;

use crate::{Database, Engine};

/// Held while a turn lasts; dropping it ends the turn.
pub struct Turn {
    _transaction: Option<Transaction<'static, Postgres>>,
    _guard: Option<OwnedMutexGuard<()>>,
}

/// The embedded engine's turns, one mutex per key.
#[derive(Clone, Default)]
pub(crate) struct Turns(Arc<Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>>);

impl Turns {
    async fn take(&self, key: i64) -> OwnedMutexGuard<()> {
        let turn = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        turn.lock_owned().await
    }
}

impl Database {
    /// Waits for the turn named `key` (an arbitrary constant per purpose).
    pub async fn turn(&self, key: i64) -> Result<Turn, sqlx::Error> {
        match self.engine() {
            Engine::Postgres(pool) => {
                let mut transaction = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(key)
                    .execute(&mut *transaction)
                    .await?;
                Ok(Turn {
                    _transaction: Some(transaction),
                    _guard: None,
                })
            }
            Engine::Sqlite(database) => Ok(Turn {
                _transaction: None,
                _guard: Some(database.turns().take(key).await),
            }),
        }
    }
}
