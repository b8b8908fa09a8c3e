//! Integration events: the documented, secret-free form of domain events that
//! other modules receive over NATS (see `docs/asyncapi.yaml`).

use keyledger_domain::oauth_client::OAuthClientEvent;
use keyledger_domain::organization::OrganizationEvent;
use keyledger_domain::platform::PlatformEvent;
use keyledger_domain::role::RoleEvent;
use keyledger_domain::service_account::ServiceAccountEvent;
use keyledger_domain::{IntegrationData, SessionEvent, UserEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::feed::{FeedError, StoredEvent};

/// Fixed namespace for event ids: the id of an event is a function of where it
/// sits in its aggregate's history, so every replay and every relay instance gives
/// the same event the same id (and JetStream de-duplicates on it).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_7200_0000_0000_0001);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub schema_version: String,
    pub data: Value,
    /// Who caused it and which request: `actor`, `request_id`.
    pub metadata: Value,
}

impl IntegrationEvent {
    pub fn event_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
        Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            format!("{aggregate_type}/{aggregate_id}/{sequence}").as_bytes(),
        )
    }

    /// The id of an event derived from `cause` for one organization (see
    /// `crate::access::EffectiveChange`); as stable as the cause's own id.
    pub fn derived_id(cause: Uuid, organization_id: Uuid) -> Uuid {
        Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            format!("effective/{cause}/{organization_id}").as_bytes(),
        )
    }

    pub fn from_stored(event: &StoredEvent) -> Result<Self, FeedError> {
        let data = public_data(event)?;
        let mut metadata = serde_json::Map::new();
        for key in ["actor", "request_id"] {
            if let Some(v) = event.meta(key) {
                metadata.insert(key.to_owned(), Value::String(v.to_owned()));
            }
        }
        Ok(Self {
            event_id: Self::event_id(&event.aggregate_type, &event.aggregate_id, event.sequence),
            event_type: event.event_type.clone(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            occurred_at: event.occurred_at(),
            schema_version: event.event_version.clone(),
            data,
            metadata: Value::Object(metadata),
        })
    }

    /// `<prefix>.<aggregate>.<EventType>`, e.g. `auth.events.user.UserLoggedIn`.
    pub fn subject(&self, prefix: &str) -> String {
        format!("{prefix}.{}.{}", self.aggregate_type, self.event_type)
    }
}

/// A stored payload decoded into its aggregate's event type, once, for every
/// consumer of one event (the projector needs both the event and its public data).
#[derive(Debug, Clone)]
pub enum DomainPayload {
    User(UserEvent),
    Session(SessionEvent),
    Organization(OrganizationEvent),
    Role(RoleEvent),
    ServiceAccount(ServiceAccountEvent),
    OAuthClient(OAuthClientEvent),
    Platform(PlatformEvent),
}

impl DomainPayload {
    /// Decodes without copying the stored JSON. Errors never quote the payload
    /// (it may hold hashes).
    pub fn decode(event: &StoredEvent) -> Result<Self, FeedError> {
        use serde::de::Deserialize as _;
        let corrupt = |reason: String| FeedError::Corrupt {
            position: event.position,
            reason,
        };
        let describe = |e: serde_json::Error| corrupt(crate::feed::describe_payload_error(&e));
        let payload = &event.payload;
        Ok(match event.aggregate_type.as_str() {
            "user" => Self::User(UserEvent::deserialize(payload).map_err(describe)?),
            "session" => Self::Session(SessionEvent::deserialize(payload).map_err(describe)?),
            "organization" => {
                Self::Organization(OrganizationEvent::deserialize(payload).map_err(describe)?)
            }
            "role" => Self::Role(RoleEvent::deserialize(payload).map_err(describe)?),
            "service_account" => {
                Self::ServiceAccount(ServiceAccountEvent::deserialize(payload).map_err(describe)?)
            }
            "oauth_client" => {
                Self::OAuthClient(OAuthClientEvent::deserialize(payload).map_err(describe)?)
            }
            "platform" => Self::Platform(PlatformEvent::deserialize(payload).map_err(describe)?),
            other => return Err(corrupt(format!("unknown aggregate type {other}"))),
        })
    }

    /// The secret-free data, via the domain's own mapping.
    pub fn integration_data(&self) -> Value {
        match self {
            Self::User(e) => e.integration_data(),
            Self::Session(e) => e.integration_data(),
            Self::Organization(e) => e.integration_data(),
            Self::Role(e) => e.integration_data(),
            Self::ServiceAccount(e) => e.integration_data(),
            Self::OAuthClient(e) => e.integration_data(),
            Self::Platform(e) => e.integration_data(),
        }
    }
}

/// The secret-free data of a stored event, via the domain's own mapping.
pub fn public_data(event: &StoredEvent) -> Result<Value, FeedError> {
    DomainPayload::decode(event).map(|p| p.integration_data())
}
