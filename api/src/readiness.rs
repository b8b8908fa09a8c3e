//! Whether the event store answers, as `/health` and `/health/ready` report it.
//!
//! Checked by one background task, once a second whatever the request rate, so
//! that an orchestrator, a load balancer and a monitoring system probing every
//! node often cost the database nothing more, and a probe costs the server no
//! more than reading a flag. The answer is at most about a second old (or the
//! check's timeout, while the store hangs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::queries::ReadModelQueries;

/// How often the store is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one check may take before the store counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of the latest check.
pub struct Readiness {
    event_store_up: AtomicBool,
}

impl Readiness {
    /// Checked once now, so that the first probe has an answer.
    pub async fn checked(queries: &ReadModelQueries) -> Arc<Self> {
        Arc::new(Self {
            event_store_up: AtomicBool::new(answers(queries).await),
        })
    }

    pub fn event_store_up(&self) -> bool {
        self.event_store_up.load(Ordering::Relaxed)
    }

    /// Checks every [`CHECK_EVERY`] until the process ends.
    pub fn spawn(self: Arc<Self>, queries: ReadModelQueries) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let up = answers(&queries).await;
                if self.event_store_up.swap(up, Ordering::Relaxed) != up {
                    if up {
                        tracing::info!("the event store answers again");
                    } else {
                        tracing::warn!("the event store does not answer: not ready");
                    }
                }
            }
        })
    }
}

async fn answers(queries: &ReadModelQueries) -> bool {
    tokio::time::timeout(CHECK_TIMEOUT, queries.ping())
        .await
        .is_ok_and(|r| r.is_ok())
}
