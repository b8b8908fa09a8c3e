//! Operating the server: health, readiness, liveness, metrics, and the answer to
//! unknown paths.

use std::time::Duration;

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::HttpResponse;
use keyledger_storage::Backend;
use serde::Serialize;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::ToSchema;
use utoipa_actix_web::UtoipaApp;

use crate::error::ApiError;
use crate::openapi::endpoint;
use crate::state::State;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum HealthStatus {
    Ok,
    Unavailable,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum Dependency {
    Up,
    Down,
    /// Not configured (NATS only).
    Disabled,
}

/// Whether the server can serve.
#[derive(Serialize, ToSchema)]
pub struct Health {
    status: HealthStatus,
    /// The event store (and read models).
    event_store: Dependency,
    /// Which back end the event store is.
    #[serde(serialize_with = "backend_name")]
    #[schema(schema_with = backend_schema)]
    storage: Backend,
    /// Integration events; `disabled` without `NATS_URL`.
    nats: Dependency,
    /// Which followers this node leads. On PostgreSQL exactly one node of a
    /// deployment leads each; the others stand by to take over.
    leader: Leaders,
}

/// The followers that run on one node at a time (advisory locks on PostgreSQL).
#[derive(Serialize, ToSchema)]
struct Leaders {
    /// This node writes the read models.
    projector: bool,
    /// This node publishes to NATS (always false without `NATS_URL`).
    relay: bool,
}

/// Health
///
/// 200 while the event store answers; NATS being down does not make the server
/// unhealthy (events wait in the store). The store is checked in the background
/// once a second, so the answer is at most about a second old (two while the
/// store hangs) and probes cost the database nothing.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "The event store is reachable.", body = Health),
        (status = 503, description = "The event store is unreachable.", body = Health),
    )
)]
pub async fn health(state: State) -> HttpResponse {
    readiness(&state).await
}

/// Readiness
///
/// For orchestrators: ready to take traffic while the event store answers (the same
/// check and answer as `/health`).
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the event store is reachable.", body = Health),
        (status = 503, description = "Not ready: the event store is unreachable.", body = Health),
    )
)]
pub async fn ready(state: State) -> HttpResponse {
    readiness(&state).await
}

/// The process is alive.
#[derive(Serialize, ToSchema)]
pub struct Liveness {
    status: HealthStatus,
}

/// Liveness
///
/// For orchestrators: 200 as long as the process serves HTTP, whatever its
/// dependencies do (restarting it would not bring a database back).
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    responses((status = 200, description = "The process serves requests.", body = Liveness))
)]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Liveness {
        status: HealthStatus::Ok,
    })
}

/// From the latest background check of the event store (see `crate::readiness`):
/// a probe reads flags and queries nothing.
async fn readiness(state: &crate::state::AppState) -> HttpResponse {
    let up = state.readiness.event_store_up();
    let storage = state.queries.database().backend();
    let nats = match &state.nats {
        None => Dependency::Disabled,
        Some(client) => match client.connection_state() {
            async_nats::connection::State::Connected => Dependency::Up,
            _ => Dependency::Down,
        },
    };
    let body = Health {
        status: if up {
            HealthStatus::Ok
        } else {
            HealthStatus::Unavailable
        },
        event_store: if up { Dependency::Up } else { Dependency::Down },
        storage,
        nats,
        leader: Leaders {
            projector: state.consistency.leads(),
            relay: state.relay_leader.leads(),
        },
    };
    if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics
///
/// Request counts and latencies per route, login outcomes, projection lag and more.
/// Not authenticated: expose it to the internal network only.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format.", body = String,
            content_type = "text/plain; version=0.0.4"),
    )
)]
pub async fn metrics(state: State) -> HttpResponse {
    let mut text = state.metrics.render();
    text.push_str(&format!(
        "# TYPE keyledger_revoked_sessions_cached gauge\nkeyledger_revoked_sessions_cached {}\n",
        state.revoked.len()
    ));
    // Feed lag, on every node (the leader's progress as this node sees it): a
    // growing value means the projector is stuck or no node leads it.
    if let Ok(Ok(lag)) = tokio::time::timeout(Duration::from_secs(2), state.consistency.lag()).await
    {
        text.push_str(&format!(
            "# TYPE keyledger_projection_lag_events gauge\nkeyledger_projection_lag_events {lag}\n"
        ));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// Registers the operational routes at the root, outside the rate limits: probes
/// and scrapers call them often, from the internal network.
pub(crate) fn routes<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(endpoint!(self::health))
        .service(endpoint!(self::live))
        .service(endpoint!(self::ready))
        .service(endpoint!(self::metrics))
}

/// The back end as `/health` names it.
fn backend_name<S: serde::Serializer>(backend: &Backend, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(backend.name())
}

/// The schema of [`Health::storage`]: the names [`backend_name`] writes.
fn backend_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Backend::ALL.map(Backend::name)))
        .description(Some(
            "Which database holds the event log and the read models: `postgres` when \
             `DATABASE_URL` is set, `sqlite` for the embedded store of `KEYLEDGER_DATA_DIR`.",
        ))
        .build()
}
