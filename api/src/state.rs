//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use keyledger_commands::{AuthService, OAuthClients, OrganizationService, PasswordHasher, Written};
use keyledger_projections::{AccessView, Consistency, RevokedSessions};
use keyledger_storage::Database;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::queries::ReadModelQueries;

pub struct AppState {
    pub auth: AuthService,
    pub organizations: OrganizationService,
    /// The OAuth/OpenID client registry and users' consents.
    pub oauth_clients: OAuthClients,
    /// Organizations, roles, service accounts and suspensions, for `authorize`.
    pub access: AccessView,
    pub hasher: PasswordHasher,
    /// The process's database, for both sides (the embedded store's writer and
    /// data-dir lock live here as long as the server does).
    pub storage: Database,
    /// Every read of the read models the handlers make.
    pub queries: ReadModelQueries,
    pub consistency: Consistency,
    /// Whether the event store answered its latest check (for `/health`).
    pub readiness: Arc<crate::readiness::Readiness>,
    pub revoked: RevokedSessions,
    pub nats: Option<async_nats::Client>,
    /// Where mails go and what they say.
    pub mail: Arc<crate::mailer::Mailer>,
    /// Whether this node's relay publishes (holds the relay's lock); never set
    /// without `NATS_URL`.
    pub relay_leader: keyledger_projections::LeaderFlag,
    pub metrics: PrometheusHandle,
    /// Which proxies name the client, and in which header (see `client_address`).
    pub client_address: crate::client_address::ClientAddressRule,
    /// The keys wrapping the data keys, for readers that open personal data
    /// outside the write side (time travel).
    pub data_key_wrapping: Arc<keyledger_domain::DataKeyWrapping>,
    /// Sign-in providers, and where their sign-ins may return to.
    pub social: crate::social_login::SocialLogin,
    /// Cookie sessions' origins (CSRF, CORS) and lifetimes.
    pub browser: crate::browser_session::BrowserSessions,
    /// How the hosted pages look and where they may send the browser.
    pub pages: Arc<crate::hosted::PagesConfig>,
    /// The OpenID provider: its issuer and its authorization codes.
    pub oidc: Arc<crate::resources::oidc::Provider>,
}

/// How long a write waits for its own events to reach the read models before
/// answering anyway (the write itself is already committed).
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

impl AppState {
    /// The PostgreSQL pool, when that is the back end: for the few reads not yet
    /// behind a storage enum (time travel) and for PostgreSQL-only tests.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        self.storage.postgres_pool()
    }

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

impl AppState {
    /// Like [`Self::settle`], and also waits for the access view: after a change of
    /// membership, roles, suspension or service accounts, the answer (and every later
    /// `authorize` on this node) must already reflect it.
    pub async fn settle_access(&self, written: impl IntoIterator<Item = Written>) {
        let Some(w) = written.into_iter().last() else {
            return;
        };
        let reached = self
            .access
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
                "access view lags behind a write"
            );
        }
        self.settle([w]).await;
    }
}

pub type State = actix_web::web::Data<Arc<AppState>>;
