//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use keyledger_commands::{AuthService, PasswordHasher, Written};
use keyledger_projections::{Consistency, RevokedSessions};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

pub struct AppState {
    pub auth: AuthService,
    pub hasher: PasswordHasher,
    pub pool: PgPool,
    pub consistency: Consistency,
    pub revoked: RevokedSessions,
    pub nats: Option<async_nats::Client>,
    pub metrics: PrometheusHandle,
    /// Proxies whose X-Forwarded-For names the client (see `extract::client_ip`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// How long a write waits for its own events to reach the read models before
/// answering anyway (the write itself is already committed).
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

impl AppState {
    /// Waits until the read models include `written`, so the client's next read
    /// sees its own write. Only the last write is awaited: writes of one request
    /// commit one after another, and the feed delivers them in commit order.
    pub async fn settle(&self, written: impl IntoIterator<Item = Written>) {
        if let Some(w) = written.into_iter().last() {
            let reached = self
                .consistency
                .wait_for(
                    w.aggregate_type,
                    &w.aggregate_id,
                    w.sequence as i64,
                    READ_YOUR_WRITES_TIMEOUT,
                )
                .await;
            if !matches!(reached, Ok(true)) {
                tracing::warn!(
                    aggregate = w.aggregate_type,
                    "read models lag behind a write"
                );
            }
        }
    }
}

pub type State = actix_web::web::Data<Arc<AppState>>;
