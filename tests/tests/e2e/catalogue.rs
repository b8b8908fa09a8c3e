//! The integration-event contract, `docs/asyncapi.yaml`, held against the code:
//! - the document has a channel and a message for exactly the event types of
//!   `keyledger_domain::EVENT_CATALOGUE`, at the relay's default subjects;
//! - each message's `data` schema lists exactly the fields `IntegrationData`
//!   produces, and the envelope the relay builds validates against the message;
//! - everything the running server publishes to NATS validates against the
//!   message of its subject, on either back end;
//! - the events the relay derives (`keyledger_domain::DERIVED_EVENT_CATALOGUE`)
//!   are documented the same way, and a hand-built sample of each follows the
//!   message and the rules of its id.
//!
//! The schemas are checked with a small validator of the JSON Schema keywords the
//! document uses; it refuses any keyword it does not know, so nothing in the
//! document goes unchecked silently.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use keyledger_domain::oauth_client::{
    AccessTokenFormat, ClientSettings, GrantType, OAuthClientEvent, SigningAlg,
};
use keyledger_domain::organization::{
    InvitationAddress, OrganizationEvent, OrganizationName, OrganizationSlug, RoleRef,
};
use keyledger_domain::permission::{BuiltInRole, PermissionSet};
use keyledger_domain::platform::{PlatformEvent, SuspiciousActivityKind};
use keyledger_domain::role::{RoleEvent, RoleName};
use keyledger_domain::service_account::ServiceAccountEvent;
use keyledger_domain::{
    DataKey, Device, DisplayName, Email, Field, IntegrationData, PasswordHash, PersonalData,
    RevocationReason, SessionEvent, TokenHash, UserEvent, DERIVED_EVENT_CATALOGUE, EVENT_CATALOGUE,
};
use keyledger_e2e::*;
use keyledger_projections::{IntegrationEvent, Position, RelaySettings, StoredEvent};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// Schema keywords the validator understands; anything else fails the test.
const KNOWN_KEYWORDS: &[&str] = &[
    "$ref",
    "allOf",
    "type",
    "const",
    "enum",
    "format",
    "items",
    "uniqueItems",
    "minimum",
    "maxLength",
    "required",
    "properties",
    "additionalProperties",
    "title",
    "description",
    "examples",
];

/// Words no property name of a published message may contain.
const SECRET_WORDS: &[&str] = &["hash", "password", "secret", "token", "phc", "salt"];

/// The relay's namespace for event ids (private to `projections/src/integration.rs`;
/// `the_event_id_namespace_is_the_relays` keeps this copy honest).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_7200_0000_0000_0001);

/// The id of the `EffectivePermissionsChanged` that `cause` gives `organization`.
fn effective_event_id(cause: &str, organization: &str) -> Uuid {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("effective/{cause}/{organization}").as_bytes(),
    )
}

/// Whether an event type is derived by the relay rather than stored.
fn is_derived(aggregate: &str, event_type: &str) -> bool {
    DERIVED_EVENT_CATALOGUE.contains(&(aggregate, event_type))
}

/// `docs/asyncapi.yaml`, parsed, with helpers to follow its references.
struct Contract {
    doc: Value,
}

/// One documented event type: its channel and its message.
struct Documented<'a> {
    channel_id: String,
    message: &'a Value,
}

impl Contract {
    fn load() -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/asyncapi.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let doc: Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        Self { doc }
    }

    /// Follows `$ref`s (local JSON pointers only) until a non-reference.
    fn resolve<'a>(&'a self, mut node: &'a Value) -> &'a Value {
        for _ in 0..32 {
            let Some(reference) = node.get("$ref") else {
                return node;
            };
            let reference = reference.as_str().expect("$ref is a string");
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local references are supported: {reference}"));
            node = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling reference {reference}"));
        }
        panic!("reference cycle");
    }

    fn section(&self, path: &str) -> &serde_json::Map<String, Value> {
        self.doc
            .pointer(path)
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{path} is missing or not a map"))
    }

    /// Every channel by address; panics on a channel without a unique address or
    /// without exactly one message.
    fn by_address(&self) -> BTreeMap<String, Documented<'_>> {
        let mut out = BTreeMap::new();
        for (channel_id, channel) in self.section("/channels") {
            let address = channel["address"]
                .as_str()
                .unwrap_or_else(|| panic!("channel {channel_id} has no address"))
                .to_owned();
            let messages = channel["messages"]
                .as_object()
                .unwrap_or_else(|| panic!("channel {channel_id} has no messages"));
            assert_eq!(
                messages.len(),
                1,
                "channel {channel_id} must carry exactly one message"
            );
            let message = self.resolve(messages.values().next().unwrap());
            let documented = Documented {
                channel_id: channel_id.clone(),
                message,
            };
            assert!(
                out.insert(address.clone(), documented).is_none(),
                "two channels share the address {address}"
            );
        }
        out
    }

    /// The properties a schema declares, through `$ref` and `allOf`: name to every
    /// sub-schema that constrains it.
    fn declared<'a>(&'a self, schema: &'a Value) -> BTreeMap<String, Vec<&'a Value>> {
        let mut out: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        self.collect_declared(schema, &mut out);
        out
    }

    fn collect_declared<'a>(
        &'a self,
        schema: &'a Value,
        out: &mut BTreeMap<String, Vec<&'a Value>>,
    ) {
        let schema = self.resolve(schema);
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for part in parts {
                self.collect_declared(part, out);
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in properties {
                out.entry(name.clone()).or_default().push(self.resolve(sub));
            }
        }
    }

    /// The properties declared for the object found at property `name` of `schema`.
    fn declared_within<'a>(
        &'a self,
        schema: &'a Value,
        name: &str,
    ) -> BTreeMap<String, Vec<&'a Value>> {
        let mut out = BTreeMap::new();
        for sub in self.declared(schema).remove(name).unwrap_or_default() {
            self.collect_declared(sub, &mut out);
        }
        out
    }

    /// The `const` that the schemas of one property agree on.
    fn const_of(&self, schema: &Value, name: &str) -> Option<String> {
        self.declared(schema)
            .remove(name)?
            .into_iter()
            .find_map(|s| s.get("const").and_then(Value::as_str).map(str::to_owned))
    }

    /// Validates `value` against `schema`, appending every violation to `errors`.
    fn validate(&self, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let Some(keywords) = schema.as_object() else {
            panic!("schema at {path} is not a map: {schema}");
        };
        for keyword in keywords.keys() {
            assert!(
                KNOWN_KEYWORDS.contains(&keyword.as_str()) || keyword.starts_with("x-"),
                "the test's validator does not know `{keyword}` (schema at {path})"
            );
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for part in parts {
                self.validate(part, value, path, errors);
            }
        }
        if let Some(expected) = schema.get("type") {
            let allowed: Vec<&str> = match expected {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => panic!("bad type {other} at {path}"),
            };
            if !allowed.iter().any(|t| json_type_matches(t, value)) {
                errors.push(format!("{path}: {value} is not of type {allowed:?}"));
            }
        }
        if let Some(expected) = schema.get("const") {
            if value != expected {
                errors.push(format!("{path}: {value} is not {expected}"));
            }
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !options.contains(value) {
                errors.push(format!("{path}: {value} is not one of {options:?}"));
            }
        }
        if let (Some(format), Some(text)) =
            (schema.get("format").and_then(Value::as_str), value.as_str())
        {
            let ok = match format {
                "uuid" => Uuid::parse_str(text).is_ok(),
                "date-time" => DateTime::parse_from_rfc3339(text).is_ok(),
                other => panic!("the test's validator does not know format {other} ({path})"),
            };
            if !ok {
                errors.push(format!("{path}: {text:?} is not a {format}"));
            }
        }
        if let (Some(minimum), Some(number)) = (
            schema.get("minimum").and_then(Value::as_f64),
            value.as_f64(),
        ) {
            if number < minimum {
                errors.push(format!("{path}: {number} is below {minimum}"));
            }
        }
        if let (Some(max), Some(text)) = (
            schema.get("maxLength").and_then(Value::as_u64),
            value.as_str(),
        ) {
            if text.chars().count() as u64 > max {
                errors.push(format!("{path}: longer than {max} characters"));
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    self.validate(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
            if schema.get("uniqueItems") == Some(&Value::Bool(true)) {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        errors.push(format!("{path}: {item} appears twice"));
                    }
                }
            }
        }
        let Some(object) = value.as_object() else {
            return;
        };
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    errors.push(format!("{path}: required `{name}` is missing"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(properties) = properties {
            for (name, sub) in properties {
                if let Some(v) = object.get(name) {
                    self.validate(sub, v, &format!("{path}.{name}"), errors);
                }
            }
        }
        let additional = schema.get("additionalProperties");
        for (name, v) in object {
            if properties.is_some_and(|p| p.contains_key(name)) {
                continue;
            }
            match additional {
                None | Some(Value::Bool(true)) => {}
                Some(Value::Bool(false)) => {
                    errors.push(format!("{path}: `{name}` is not allowed"));
                }
                Some(sub) => self.validate(sub, v, &format!("{path}.{name}"), errors),
            }
        }
    }

    /// Keys of `value` (recursively into declared objects) that the schema does not
    /// declare. The document leaves `additionalProperties` open for consumers'
    /// sake; the contract test still wants every published field documented.
    fn undeclared(&self, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
        self.undeclared_in(&self.declared(schema), value, path, errors);
    }

    fn undeclared_in(
        &self,
        declared: &BTreeMap<String, Vec<&Value>>,
        value: &Value,
        path: &str,
        errors: &mut Vec<String>,
    ) {
        let Some(object) = value.as_object() else {
            return;
        };
        for (name, v) in object {
            let Some(subs) = declared.get(name) else {
                errors.push(format!("{path}: `{name}` is published but not documented"));
                continue;
            };
            let mut inner = BTreeMap::new();
            for sub in subs {
                self.collect_declared(sub, &mut inner);
            }
            if !inner.is_empty() {
                self.undeclared_in(&inner, v, &format!("{path}.{name}"), errors);
            }
        }
    }

    /// Checks one published (or example) message: headers and body against the
    /// message, no undocumented field, and an `event_id` computed as the relay does.
    fn check_message(
        &self,
        message: &Value,
        headers: &Value,
        body: &Value,
        what: &str,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        self.validate(&message["headers"], headers, "headers", &mut errors);
        self.undeclared(&message["headers"], headers, "headers", &mut errors);
        self.validate(&message["payload"], body, "payload", &mut errors);
        self.undeclared(&message["payload"], body, "payload", &mut errors);
        if headers["Nats-Msg-Id"] != body["event_id"] {
            errors.push("Nats-Msg-Id differs from event_id".into());
        }
        let aggregate = body["aggregate_type"].as_str().unwrap_or_default();
        let event_type = body["event_type"].as_str().unwrap_or_default();
        if is_derived(aggregate, event_type) {
            check_derived(event_type, body, &mut errors);
        } else if let (Some(id), Some(sequence)) =
            (body["aggregate_id"].as_str(), body["sequence"].as_i64())
        {
            let expected = IntegrationEvent::event_id(aggregate, id, sequence).to_string();
            if body["event_id"].as_str() != Some(expected.as_str()) {
                errors.push(format!("event_id is not the relay's id {expected}"));
            }
        }
        errors.into_iter().map(|e| format!("{what}: {e}")).collect()
    }
}

/// The rules of a derived event that a schema cannot state: for
/// `EffectivePermissionsChanged`, its id, its organization, its cause and that it
/// names at least one subject.
fn check_derived(event_type: &str, body: &Value, errors: &mut Vec<String>) {
    if event_type != "EffectivePermissionsChanged" {
        errors.push(format!(
            "the test knows no id rule for derived {event_type}"
        ));
        return;
    }
    let data = &body["data"];
    let cause = &data["cause"];
    let organization = data["organization_id"].as_str().unwrap_or_default();
    if body["aggregate_id"].as_str() != Some(organization) {
        errors.push("aggregate_id is not data.organization_id".into());
    }
    let cause_id = cause["event_id"].as_str().unwrap_or_default();
    let expected = effective_event_id(cause_id, organization).to_string();
    if body["event_id"].as_str() != Some(expected.as_str()) {
        errors.push(format!(
            "event_id is not UUIDv5(\"effective/<cause>/<organization>\") = {expected}"
        ));
    }
    // The envelope's sequence is the cause's, so the cause's own id follows.
    if let (Some(aggregate), Some(id), Some(sequence)) = (
        cause["aggregate_type"].as_str(),
        cause["aggregate_id"].as_str(),
        body["sequence"].as_i64(),
    ) {
        let expected = IntegrationEvent::event_id(aggregate, id, sequence).to_string();
        if cause_id != expected {
            errors.push(format!(
                "cause.event_id is not the relay's id of the cause at this sequence ({expected})"
            ));
        }
        let cause_type = cause["event_type"].as_str().unwrap_or_default();
        let catalogued = EVENT_CATALOGUE
            .iter()
            .any(|(a, types)| *a == aggregate && types.contains(&cause_type));
        if !catalogued {
            errors.push(format!(
                "cause {aggregate}.{cause_type} is not a catalogued event"
            ));
        }
    }
    let empty = |key: &str| data[key].as_array().is_none_or(Vec::is_empty);
    if empty("user_ids") && empty("service_account_ids") {
        errors.push("names neither a user nor a service account".into());
    }
}

fn json_type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        other => panic!("unknown JSON type {other}"),
    }
}

/// Every `(aggregate_type, event_type)` published: the stored events, then the
/// derived ones.
fn published_types() -> Vec<(&'static str, &'static str)> {
    EVENT_CATALOGUE
        .iter()
        .flat_map(|(a, types)| types.iter().map(move |t| (*a, *t)))
        .chain(DERIVED_EVENT_CATALOGUE.iter().copied())
        .collect()
}

/// `auth.events.<aggregate>.<EventType>` for every catalogued event type, derived
/// ones included.
fn catalogue_addresses(prefix: &str) -> BTreeMap<String, (&'static str, &'static str)> {
    let mut out = BTreeMap::new();
    for (aggregate, event_type) in published_types() {
        let address = format!("{prefix}.{aggregate}.{event_type}");
        assert!(
            out.insert(address.clone(), (aggregate, event_type))
                .is_none(),
            "{address} catalogued twice"
        );
    }
    out
}

fn assert_no_errors(errors: &[String]) {
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
}

#[test]
fn every_catalogued_event_has_a_channel_and_a_message_and_nothing_else_does() {
    let contract = Contract::load();
    let relay = RelaySettings::default();
    assert_eq!(contract.doc["asyncapi"], "3.0.0");

    // The server and stream are the relay's defaults.
    let servers = contract.section("/servers");
    assert_eq!(servers.len(), 1, "one server");
    let server = servers.values().next().unwrap();
    assert_eq!(server["protocol"], "nats");
    assert_eq!(server["host"], "127.0.0.1:4222");
    assert_eq!(server["x-jetstream"]["stream"], relay.stream.as_str());
    assert_eq!(
        server["x-jetstream"]["subjects"],
        json!([format!("{}.>", relay.subject_prefix)])
    );
    assert_eq!(relay.duplicate_window, Duration::from_secs(120));
    assert_eq!(server["x-jetstream"]["duplicate_window"], "2m");
    let description = contract.doc["info"]["description"].as_str().unwrap();
    for promise in [
        "At least once",
        "Ordered per aggregate",
        "event_id",
        "2 minutes",
    ] {
        assert!(
            description.contains(promise),
            "delivery: `{promise}` missing"
        );
    }

    // Channels: exactly the catalogue, each with the right message.
    let expected = catalogue_addresses(&relay.subject_prefix);
    let documented = contract.by_address();
    let missing: Vec<_> = expected
        .keys()
        .filter(|a| !documented.contains_key(*a))
        .collect();
    let extra: Vec<_> = documented
        .keys()
        .filter(|a| !expected.contains_key(*a))
        .collect();
    assert!(missing.is_empty(), "no channel for {missing:?}");
    assert!(
        extra.is_empty(),
        "channels for event types that do not exist: {extra:?}"
    );

    for (address, (aggregate, event_type)) in &expected {
        let doc = &documented[address];
        let message = doc.message;
        assert_eq!(message["name"], *event_type, "message name on {address}");
        for key in ["summary", "description"] {
            assert!(message[key].is_string(), "{event_type} has no {key}");
        }
        let payload = &message["payload"];
        assert_eq!(
            contract.const_of(payload, "event_type").as_deref(),
            Some(*event_type),
            "{address}: payload's event_type"
        );
        assert_eq!(
            contract.const_of(payload, "aggregate_type").as_deref(),
            Some(*aggregate),
            "{address}: payload's aggregate_type"
        );
        // The full envelope, in every message.
        let envelope: BTreeSet<_> = contract.declared(payload).into_keys().collect();
        let expected_envelope: BTreeSet<String> = [
            "event_id",
            "event_type",
            "aggregate_type",
            "aggregate_id",
            "sequence",
            "occurred_at",
            "schema_version",
            "data",
            "metadata",
        ]
        .map(String::from)
        .into();
        assert_eq!(envelope, expected_envelope, "{address}: envelope");
        let metadata: BTreeSet<_> = contract
            .declared_within(payload, "metadata")
            .into_keys()
            .collect();
        assert_eq!(
            metadata,
            BTreeSet::from(["actor".to_owned(), "request_id".to_owned()]),
            "{address}: metadata"
        );
        // The de-duplication header.
        let headers = contract.resolve(&message["headers"]);
        assert!(
            contract.declared(headers).contains_key("Nats-Msg-Id"),
            "{address}: no Nats-Msg-Id header"
        );
        assert_eq!(headers["required"], json!(["Nats-Msg-Id"]));
        // Every data field typed and explained.
        let data = contract.declared_within(payload, "data");
        assert!(!data.is_empty(), "{address}: no data fields");
        for (field, schemas) in &data {
            assert!(
                schemas.iter().any(|s| s.get("type").is_some()),
                "{event_type}.{field} has no type"
            );
            assert!(
                schemas.iter().any(|s| s["description"].is_string()),
                "{event_type}.{field} has no description"
            );
        }
    }

    // No message without a channel, and one send operation per channel.
    let messages = contract.section("/components/messages");
    assert_eq!(
        messages.len(),
        expected.len(),
        "messages: {:?}",
        messages.keys()
    );
    let mut operated = BTreeSet::new();
    for (id, operation) in contract.section("/operations") {
        assert_eq!(operation["action"], "send", "operation {id}");
        let channel = contract.resolve(&operation["channel"]);
        let address = channel["address"].as_str().unwrap().to_owned();
        let doc = documented
            .get(&address)
            .unwrap_or_else(|| panic!("operation {id} sends on unknown channel {address}"));
        let sent: Vec<_> = operation["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("operation {id} names no message"))
            .iter()
            .map(|m| contract.resolve(m))
            .collect();
        assert!(
            sent.len() == 1 && std::ptr::eq(sent[0], doc.message),
            "operation {id} must send the message of channel {}",
            doc.channel_id
        );
        assert!(
            operated.insert(address),
            "two operations for channel {}",
            doc.channel_id
        );
    }
    assert_eq!(operated.len(), expected.len(), "a channel has no operation");

    // The envelope's enums are the catalogue.
    let envelope = contract.resolve(&contract.doc["components"]["schemas"]["IntegrationEvent"]);
    let strings = |node: &Value| -> BTreeSet<String> {
        node.as_array()
            .expect("an enum")
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect()
    };
    let types: BTreeSet<String> = published_types()
        .into_iter()
        .map(|(_, t)| t.to_owned())
        .collect();
    assert_eq!(
        strings(&envelope["properties"]["event_type"]["enum"]),
        types
    );
    let aggregates: BTreeSet<String> = EVENT_CATALOGUE
        .iter()
        .map(|(a, _)| (*a).to_owned())
        .collect();
    for (aggregate, event_type) in DERIVED_EVENT_CATALOGUE {
        assert!(
            aggregates.contains(*aggregate),
            "derived {event_type} is published under an unknown aggregate {aggregate}"
        );
    }
    assert_eq!(
        strings(&envelope["properties"]["aggregate_type"]["enum"]),
        aggregates
    );
}

#[test]
fn the_document_declares_no_secret_field() {
    fn walk(node: &Value, path: &str, found: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(properties) = map.get("properties").and_then(Value::as_object) {
                    for name in properties.keys() {
                        let lower = name.to_lowercase();
                        if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                            found.push(format!("{path}.properties.{name}"));
                        }
                    }
                }
                for (key, value) in map {
                    walk(value, &format!("{path}.{key}"), found);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), found);
                }
            }
            _ => {}
        }
    }
    let contract = Contract::load();
    let mut found = Vec::new();
    walk(&contract.doc, "", &mut found);
    assert!(found.is_empty(), "secret-looking fields: {found:?}");
}

#[test]
fn every_example_is_a_valid_message_with_the_relays_event_id() {
    let contract = Contract::load();
    let mut errors = Vec::new();
    for (address, doc) in contract.by_address() {
        let examples = doc.message["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{address} has no example"));
        for example in examples {
            errors.extend(contract.check_message(
                doc.message,
                &example["headers"],
                &example["payload"],
                &format!("example of {address}"),
            ));
        }
    }
    assert_no_errors(&errors);
}

/// The name of every variant; exhaustive, so a new event fails to compile here
/// until it gets a sample below.
fn user_type(event: &UserEvent) -> &'static str {
    match event {
        UserEvent::UserRegistered { .. } => "UserRegistered",
        UserEvent::UserImported { .. } => "UserImported",
        UserEvent::UserLoggedIn { .. } => "UserLoggedIn",
        UserEvent::LoginFailed { .. } => "LoginFailed",
        UserEvent::AccountLocked { .. } => "AccountLocked",
        UserEvent::AccountUnlocked { .. } => "AccountUnlocked",
        UserEvent::PasswordChanged { .. } => "PasswordChanged",
        UserEvent::PasswordRehashed { .. } => "PasswordRehashed",
        UserEvent::UserSuspended { .. } => "UserSuspended",
        UserEvent::UserReactivated { .. } => "UserReactivated",
        UserEvent::PlatformAdminGranted { .. } => "PlatformAdminGranted",
        UserEvent::PlatformAdminRevoked { .. } => "PlatformAdminRevoked",
        UserEvent::UserErased { .. } => "UserErased",
        UserEvent::EmailVerificationRequested { .. } => "EmailVerificationRequested",
        UserEvent::EmailVerified { .. } => "EmailVerified",
        UserEvent::RegistrationAttempted { .. } => "RegistrationAttempted",
        UserEvent::PasswordResetRequested { .. } => "PasswordResetRequested",
        UserEvent::PasswordReset { .. } => "PasswordReset",
        UserEvent::EmailChangeRequested { .. } => "EmailChangeRequested",
        UserEvent::EmailChanged { .. } => "EmailChanged",
        UserEvent::EmailLoginRequested { .. } => "EmailLoginRequested",
        UserEvent::EmailLoginCodeRejected { .. } => "EmailLoginCodeRejected",
        UserEvent::SecondFactorAdded { .. } => "SecondFactorAdded",
        UserEvent::SecondFactorConfirmed { .. } => "SecondFactorConfirmed",
        UserEvent::SecondFactorRemoved { .. } => "SecondFactorRemoved",
        UserEvent::BackupCodesRegenerated { .. } => "BackupCodesRegenerated",
        UserEvent::BackupCodeUsed { .. } => "BackupCodeUsed",
        UserEvent::SecondFactorUsed { .. } => "SecondFactorUsed",
        UserEvent::SecondFactorsReset { .. } => "SecondFactorsReset",
        UserEvent::SecondFactorRequired { .. } => "SecondFactorRequired",
        UserEvent::SecondFactorFailed { .. } => "SecondFactorFailed",
        UserEvent::SecondFactorCodeSent { .. } => "SecondFactorCodeSent",
        UserEvent::PasskeyRegistered { .. } => "PasskeyRegistered",
        UserEvent::PasskeyRenamed { .. } => "PasskeyRenamed",
        UserEvent::PasskeyRemoved { .. } => "PasskeyRemoved",
        UserEvent::PasskeyUsed { .. } => "PasskeyUsed",
        UserEvent::PasskeyCloneSuspected { .. } => "PasskeyCloneSuspected",
        UserEvent::ExternalIdentityLinked { .. } => "ExternalIdentityLinked",
        UserEvent::ExternalIdentityUnlinked { .. } => "ExternalIdentityUnlinked",
        UserEvent::OAuthConsentGranted { .. } => "OAuthConsentGranted",
        UserEvent::OAuthConsentRevoked { .. } => "OAuthConsentRevoked",
    }
}

fn session_type(event: &SessionEvent) -> &'static str {
    match event {
        SessionEvent::SessionStarted { .. } => "SessionStarted",
        SessionEvent::TokenRefreshed { .. } => "TokenRefreshed",
        SessionEvent::RefreshTokenReuseDetected { .. } => "RefreshTokenReuseDetected",
        SessionEvent::SessionRevoked { .. } => "SessionRevoked",
        SessionEvent::UserLoggedOut { .. } => "UserLoggedOut",
        SessionEvent::OrganizationSelected { .. } => "OrganizationSelected",
        SessionEvent::SessionReauthenticated { .. } => "SessionReauthenticated",
        SessionEvent::SessionGrantedToClient { .. } => "SessionGrantedToClient",
    }
}

fn organization_type(event: &OrganizationEvent) -> &'static str {
    use OrganizationEvent as E;
    match event {
        E::OrganizationCreated { .. } => "OrganizationCreated",
        E::OrganizationRenamed { .. } => "OrganizationRenamed",
        E::OrganizationSettingsChanged { .. } => "OrganizationSettingsChanged",
        E::MemberAdded { .. } => "MemberAdded",
        E::MemberRemoved { .. } => "MemberRemoved",
        E::MemberRolesChanged { .. } => "MemberRolesChanged",
        E::MemberInvited { .. } => "MemberInvited",
        E::InvitationAccepted { .. } => "InvitationAccepted",
        E::InvitationDeclined { .. } => "InvitationDeclined",
        E::InvitationRevoked { .. } => "InvitationRevoked",
        E::OrganizationSuspended { .. } => "OrganizationSuspended",
        E::OrganizationReactivated { .. } => "OrganizationReactivated",
    }
}

fn role_type(event: &RoleEvent) -> &'static str {
    match event {
        RoleEvent::RoleDefined { .. } => "RoleDefined",
        RoleEvent::RoleRenamed { .. } => "RoleRenamed",
        RoleEvent::PermissionUpdated { .. } => "PermissionUpdated",
        RoleEvent::RoleDeleted { .. } => "RoleDeleted",
    }
}

fn service_account_type(event: &ServiceAccountEvent) -> &'static str {
    use ServiceAccountEvent as E;
    match event {
        E::ServiceAccountCreated { .. } => "ServiceAccountCreated",
        E::ServiceAccountRolesChanged { .. } => "ServiceAccountRolesChanged",
        E::ServiceAccountSecretRotated { .. } => "ServiceAccountSecretRotated",
        E::ServiceAccountDeleted { .. } => "ServiceAccountDeleted",
    }
}

fn oauth_client_type(event: &OAuthClientEvent) -> &'static str {
    use OAuthClientEvent as E;
    match event {
        E::OAuthClientRegistered { .. } => "OAuthClientRegistered",
        E::OAuthClientUpdated { .. } => "OAuthClientUpdated",
        E::OAuthClientSecretRotated { .. } => "OAuthClientSecretRotated",
        E::OAuthClientDeleted { .. } => "OAuthClientDeleted",
    }
}

fn platform_type(event: &PlatformEvent) -> &'static str {
    match event {
        PlatformEvent::SessionsRevokedBefore { .. } => "SessionsRevokedBefore",
        PlatformEvent::SuspiciousActivityDetected { .. } => "SuspiciousActivityDetected",
    }
}

/// One sample of every event variant (nullable fields both ways, collections
/// empty and filled), as
/// `(aggregate_type, event_type, stored payload, integration data)`.
fn samples() -> Vec<(&'static str, &'static str, Value, Value)> {
    let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 15, 4).unwrap()
        + chrono::Duration::microseconds(218_331);
    let later = at + chrono::Duration::minutes(30);
    let phc = || {
        keyledger_domain::SealedPasswordHash::clear(PasswordHash::new(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$c2VjcmV0".into(),
        ))
    };
    let token = TokenHash::from_bytes([0x5a; 32]);
    let users = vec![
        UserEvent::UserRegistered {
            user_id: Uuid::new_v4(),
            email: PersonalData::clear(Email::parse("Alice@Example.com").unwrap().as_str()),
            display_name: Some(PersonalData::clear(
                DisplayName::parse("Alice").unwrap().as_str(),
            )),
            password_hash: Some(phc()),
            registered_at: at,
        },
        UserEvent::UserRegistered {
            user_id: Uuid::new_v4(),
            email: DataKey::generate().seal(Uuid::new_v4(), Field::Email, "bob@example.com"),
            display_name: None,
            password_hash: Some(phc()),
            registered_at: at,
        },
        UserEvent::UserRegistered {
            user_id: Uuid::new_v4(),
            email: PersonalData::clear("carol@example.com"),
            display_name: None,
            password_hash: None,
            registered_at: at,
        },
        UserEvent::UserImported {
            email_verified: true,
            scheme: "bcrypt".into(),
            at,
        },
        UserEvent::UserLoggedIn {
            session_id: Uuid::new_v4(),
            factors: vec!["pwd".into()],
            at,
        },
        UserEvent::UserLoggedIn {
            session_id: Uuid::new_v4(),
            factors: vec!["email".into()],
            at,
        },
        UserEvent::LoginFailed {
            consecutive_failures: 1,
            at,
        },
        UserEvent::AccountLocked {
            locked_until: later,
            failed_attempts: 5,
            unlock_request_id: Some(Uuid::new_v4()),
            at,
        },
        UserEvent::AccountUnlocked { at },
        UserEvent::PasswordChanged {
            password_hash: phc(),
            at,
        },
        UserEvent::PasswordRehashed {
            password_hash: phc(),
            at,
        },
        UserEvent::UserSuspended {
            reason: "account reported as compromised".into(),
            at,
        },
        UserEvent::UserReactivated { at },
        UserEvent::PlatformAdminGranted { at },
        UserEvent::PlatformAdminRevoked { at },
        UserEvent::UserErased { at },
        UserEvent::EmailVerificationRequested {
            request_id: Uuid::new_v4(),
            expires_at: later,
            at,
        },
        UserEvent::EmailVerified { at },
        UserEvent::RegistrationAttempted { at },
        UserEvent::PasswordResetRequested {
            request_id: Uuid::new_v4(),
            expires_at: later,
            at,
        },
        UserEvent::PasswordReset {
            password_hash: phc(),
            at,
        },
        UserEvent::EmailChangeRequested {
            request_id: Uuid::new_v4(),
            new_email: PersonalData::clear("ada.lovelace@example.org"),
            expires_at: later,
            at,
        },
        UserEvent::EmailChanged {
            email: PersonalData::clear("ada.lovelace@example.org"),
            previous_email: PersonalData::clear("ada@example.com"),
            at,
        },
        UserEvent::EmailLoginRequested {
            request_id: Uuid::new_v4(),
            expires_at: later,
            at,
        },
        UserEvent::EmailLoginCodeRejected {
            consecutive_failures: 2,
            at,
        },
        UserEvent::SecondFactorAdded {
            method_id: Uuid::new_v4(),
            kind: keyledger_domain::SecondFactorKind::Totp,
            secret: Some(PersonalData::clear("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")),
            phone: None,
            at,
        },
        UserEvent::SecondFactorConfirmed {
            method_id: Uuid::new_v4(),
            step: Some(59_000_000),
            at,
        },
        UserEvent::SecondFactorRemoved {
            method_id: Uuid::new_v4(),
            backup_codes_revoked: true,
            at,
        },
        UserEvent::BackupCodesRegenerated {
            code_digests: vec![
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            ],
            at,
        },
        UserEvent::BackupCodeUsed {
            index: 3,
            remaining: 9,
            at,
        },
        UserEvent::SecondFactorUsed {
            method_id: Uuid::new_v4(),
            step: Some(59_000_001),
            at,
        },
        UserEvent::SecondFactorsReset { at },
        UserEvent::SecondFactorRequired {
            challenge_id: Uuid::new_v4(),
            first_factors: vec!["pwd".into()],
            expires_at: later,
            at,
        },
        UserEvent::SecondFactorFailed {
            consecutive_failures: 1,
            at,
        },
        UserEvent::SecondFactorCodeSent {
            method_id: Uuid::new_v4(),
            channel: keyledger_domain::SecondFactorKind::Email,
            request_id: Uuid::new_v4(),
            expires_at: later,
            at,
        },
        UserEvent::PasskeyRegistered {
            passkey_id: Uuid::new_v4(),
            credential: DataKey::generate().seal(
                Uuid::new_v4(),
                Field::PasskeyCredential,
                r#"{"cred":{"cred_id":"AAEC"}}"#,
            ),
            passkey_name: PersonalData::clear("Laptop"),
            counter: 0,
            backup_eligible: true,
            backup_state: true,
            discoverable: Some(true),
            at,
        },
        UserEvent::PasskeyRegistered {
            passkey_id: Uuid::new_v4(),
            credential: PersonalData::clear(r#"{"cred":{"cred_id":"AAEC"}}"#),
            passkey_name: PersonalData::clear("YubiKey"),
            counter: 7,
            backup_eligible: false,
            backup_state: false,
            discoverable: None,
            at,
        },
        UserEvent::PasskeyRenamed {
            passkey_id: Uuid::new_v4(),
            passkey_name: PersonalData::clear("Work laptop"),
            at,
        },
        UserEvent::PasskeyRemoved {
            passkey_id: Uuid::new_v4(),
            backup_codes_revoked: true,
            at,
        },
        UserEvent::PasskeyUsed {
            passkey_id: Uuid::new_v4(),
            counter: 8,
            backup_eligible: false,
            backup_state: false,
            at,
        },
        UserEvent::PasskeyCloneSuspected {
            passkey_id: Uuid::new_v4(),
            stored_counter: 8,
            presented_counter: 3,
            at,
        },
        UserEvent::UserLoggedIn {
            session_id: Uuid::new_v4(),
            factors: vec!["swk".into(), "user".into(), "mfa".into()],
            at,
        },
        UserEvent::ExternalIdentityLinked {
            identity_id: Uuid::new_v4(),
            provider: "google".into(),
            external_subject: PersonalData::clear("110169484474386276334"),
            external_email: Some(PersonalData::clear("ada@example.com")),
            email_verified: true,
            method: keyledger_domain::LinkMethod::VerifiedEmail,
            at,
        },
        UserEvent::ExternalIdentityUnlinked {
            identity_id: Uuid::new_v4(),
            provider: "google".into(),
            at,
        },
        UserEvent::UserLoggedIn {
            session_id: Uuid::new_v4(),
            factors: vec!["fed".into(), "idp:google".into()],
            at,
        },
        UserEvent::OAuthConsentGranted {
            client_id: Uuid::new_v4(),
            scopes: vec!["openid".into(), "email".into()],
            at,
        },
        UserEvent::OAuthConsentGranted {
            client_id: Uuid::new_v4(),
            scopes: vec![],
            at,
        },
        UserEvent::OAuthConsentRevoked {
            client_id: Uuid::new_v4(),
            at,
        },
    ];
    let mut reasons = vec![
        RevocationReason::UserRequest,
        RevocationReason::RefreshTokenReuse,
        RevocationReason::PasswordChanged,
        RevocationReason::Administrative,
        RevocationReason::AccountErased,
        RevocationReason::SessionLimit,
        RevocationReason::PasswordReset,
    ]
    .into_iter()
    .map(|reason| SessionEvent::SessionRevoked { reason, at })
    .collect::<Vec<_>>();
    let mut sessions = vec![
        SessionEvent::SessionStarted {
            session_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            refresh_token_hash: token,
            device: Device::new(Some("2001:db8::1".into()), Some("curl/8.5.0".into())),
            factors: vec!["pwd".into(), "otp".into(), "mfa".into()],
            started_at: at,
            expires_at: later,
        },
        SessionEvent::SessionStarted {
            session_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            refresh_token_hash: token,
            device: Device::default(),
            factors: vec![],
            started_at: at,
            expires_at: later,
        },
        SessionEvent::TokenRefreshed {
            generation: 1,
            refresh_token_hash: token,
            at,
        },
        SessionEvent::RefreshTokenReuseDetected {
            presented_generation: 0,
            current_generation: 1,
            at,
        },
        SessionEvent::UserLoggedOut { at },
        SessionEvent::OrganizationSelected {
            organization_id: Some(Uuid::new_v4()),
            at,
        },
        SessionEvent::OrganizationSelected {
            organization_id: None,
            at,
        },
        SessionEvent::SessionReauthenticated {
            factors: vec!["pwd".into(), "otp".into(), "mfa".into()],
            at,
        },
        SessionEvent::SessionGrantedToClient {
            client_id: Uuid::new_v4(),
            scope: "openid profile offline_access".into(),
            at,
            authenticated_at: Some(at),
        },
    ];
    sessions.append(&mut reasons);

    let custom_role = RoleRef::Custom(Uuid::new_v4());
    let member_roles = BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Member), custom_role]);
    let admin_roles = BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Admin)]);
    let organizations = vec![
        OrganizationEvent::OrganizationCreated {
            organization_id: Uuid::new_v4(),
            slug: OrganizationSlug::parse("acme").unwrap(),
            name: OrganizationName::parse("Acme Corp").unwrap(),
            owner: Uuid::new_v4(),
            at,
        },
        OrganizationEvent::OrganizationRenamed {
            name: OrganizationName::parse("Acme Corporation").unwrap(),
            at,
        },
        OrganizationEvent::OrganizationSettingsChanged {
            settings: BTreeMap::from([
                ("locale".to_owned(), "de-DE".to_owned()),
                ("session_ttl_days".to_owned(), "7".to_owned()),
            ]),
            at,
        },
        OrganizationEvent::OrganizationSettingsChanged {
            settings: BTreeMap::new(),
            at,
        },
        OrganizationEvent::MemberAdded {
            user_id: Uuid::new_v4(),
            roles: member_roles,
            at,
        },
        OrganizationEvent::MemberRolesChanged {
            user_id: Uuid::new_v4(),
            roles: admin_roles.clone(),
            at,
        },
        OrganizationEvent::MemberRemoved {
            user_id: Uuid::new_v4(),
            at,
        },
        OrganizationEvent::MemberInvited {
            invitation_id: Uuid::new_v4(),
            address: InvitationAddress::UserId(Uuid::new_v4()),
            invitee: Some(Uuid::new_v4()),
            roles: admin_roles.clone(),
            invited_by: Uuid::new_v4(),
            expires_at: later,
            at,
        },
        OrganizationEvent::MemberInvited {
            invitation_id: Uuid::new_v4(),
            address: InvitationAddress::Email(DataKey::generate().seal(
                Uuid::new_v4(),
                Field::Email,
                "carol@example.com",
            )),
            invitee: None,
            roles: admin_roles.clone(),
            invited_by: Uuid::new_v4(),
            expires_at: later,
            at,
        },
        OrganizationEvent::InvitationAccepted {
            invitation_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            at,
        },
        OrganizationEvent::InvitationDeclined {
            invitation_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            at,
        },
        OrganizationEvent::InvitationRevoked {
            invitation_id: Uuid::new_v4(),
            at,
        },
        OrganizationEvent::OrganizationSuspended {
            reason: "unpaid invoices".into(),
            at,
        },
        OrganizationEvent::OrganizationReactivated { at },
    ];

    let permissions = |raw: &[&str]| PermissionSet::parse(raw.iter().copied()).unwrap();
    let roles = vec![
        RoleEvent::RoleDefined {
            role_id: Uuid::new_v4(),
            organization_id: Uuid::new_v4(),
            name: RoleName::parse("Billing").unwrap(),
            permissions: permissions(&["invoices:read", "reports:*"]),
            at,
        },
        RoleEvent::RoleDefined {
            role_id: Uuid::new_v4(),
            organization_id: Uuid::new_v4(),
            name: RoleName::parse("Placeholder").unwrap(),
            permissions: PermissionSet::default(),
            at,
        },
        RoleEvent::RoleRenamed {
            name: RoleName::parse("Accounts payable").unwrap(),
            at,
        },
        RoleEvent::PermissionUpdated {
            permissions: permissions(&["invoices:read", "invoices:write"]),
            added: permissions(&["invoices:write"]),
            removed: PermissionSet::default(),
            at,
        },
        RoleEvent::PermissionUpdated {
            permissions: PermissionSet::default(),
            added: PermissionSet::default(),
            removed: permissions(&["invoices:read"]),
            at,
        },
        RoleEvent::RoleDeleted { at },
    ];

    let service_accounts = vec![
        ServiceAccountEvent::ServiceAccountCreated {
            service_account_id: Uuid::new_v4(),
            organization_id: Uuid::new_v4(),
            name: OrganizationName::parse("invoice worker").unwrap(),
            roles: BTreeSet::from([custom_role]),
            secret_hash: token,
            at,
        },
        ServiceAccountEvent::ServiceAccountCreated {
            service_account_id: Uuid::new_v4(),
            organization_id: Uuid::new_v4(),
            name: OrganizationName::parse("idle worker").unwrap(),
            roles: BTreeSet::new(),
            secret_hash: token,
            at,
        },
        ServiceAccountEvent::ServiceAccountRolesChanged {
            roles: admin_roles,
            at,
        },
        ServiceAccountEvent::ServiceAccountRolesChanged {
            roles: BTreeSet::new(),
            at,
        },
        ServiceAccountEvent::ServiceAccountSecretRotated {
            secret_hash: token,
            at,
        },
        ServiceAccountEvent::ServiceAccountDeleted { at },
    ];

    let mut out = Vec::new();
    for event in users {
        let payload = serde_json::to_value(&event).unwrap();
        out.push(("user", user_type(&event), payload, event.integration_data()));
    }
    for event in sessions {
        let payload = serde_json::to_value(&event).unwrap();
        out.push((
            "session",
            session_type(&event),
            payload,
            event.integration_data(),
        ));
    }
    for event in organizations {
        let payload = serde_json::to_value(&event).unwrap();
        out.push((
            "organization",
            organization_type(&event),
            payload,
            event.integration_data(),
        ));
    }
    for event in roles {
        let payload = serde_json::to_value(&event).unwrap();
        out.push(("role", role_type(&event), payload, event.integration_data()));
    }
    for event in service_accounts {
        let payload = serde_json::to_value(&event).unwrap();
        out.push((
            "service_account",
            service_account_type(&event),
            payload,
            event.integration_data(),
        ));
    }
    let client_settings = ClientSettings {
        name: "Billing portal".into(),
        redirect_uris: vec![
            "https://billing.example.com/callback".into(),
            "com.example.billing:/callback".into(),
        ],
        post_logout_redirect_uris: vec!["https://billing.example.com/".into()],
        scopes: vec![
            "openid".into(),
            "profile".into(),
            "email".into(),
            "offline_access".into(),
        ],
        grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
        first_party: false,
        access_token_format: AccessTokenFormat::Jwt,
        access_token_alg: SigningAlg::ES256,
        id_token_alg: SigningAlg::RS256,
    };
    let machine_settings = ClientSettings {
        name: "Nightly export".into(),
        redirect_uris: vec![],
        post_logout_redirect_uris: vec![],
        scopes: vec![],
        grant_types: vec![GrantType::ClientCredentials],
        first_party: true,
        access_token_format: AccessTokenFormat::Paseto,
        access_token_alg: SigningAlg::EdDSA,
        id_token_alg: SigningAlg::EdDSA,
    };
    let oauth_clients = vec![
        OAuthClientEvent::OAuthClientRegistered {
            client_id: Uuid::new_v4(),
            organization_id: Some(Uuid::new_v4()),
            confidential: true,
            settings: client_settings.clone(),
            secret_hash: Some(token),
            registered_by: Uuid::new_v4(),
            at,
        },
        OAuthClientEvent::OAuthClientRegistered {
            client_id: Uuid::new_v4(),
            organization_id: None,
            confidential: false,
            settings: machine_settings.clone(),
            secret_hash: None,
            registered_by: Uuid::new_v4(),
            at,
        },
        OAuthClientEvent::OAuthClientUpdated {
            settings: machine_settings,
            at,
        },
        OAuthClientEvent::OAuthClientSecretRotated {
            secret_hash: token,
            at,
        },
        OAuthClientEvent::OAuthClientDeleted { at },
    ];
    for event in oauth_clients {
        let payload = serde_json::to_value(&event).unwrap();
        out.push((
            "oauth_client",
            oauth_client_type(&event),
            payload,
            event.integration_data(),
        ));
    }
    let platform = vec![
        PlatformEvent::SessionsRevokedBefore {
            before: at,
            reason: Some("signing key leaked".into()),
            at: later,
        },
        PlatformEvent::SessionsRevokedBefore {
            before: at,
            reason: None,
            at,
        },
        PlatformEvent::SuspiciousActivityDetected {
            kind: SuspiciousActivityKind::PasswordSpraying,
            client_address_digest: "9f".repeat(32),
            accounts_count: 20,
            window_secs: 900,
            detected_at: at,
        },
    ];
    for event in platform {
        let payload = serde_json::to_value(&event).unwrap();
        out.push((
            "platform",
            platform_type(&event),
            payload,
            event.integration_data(),
        ));
    }
    out
}

#[test]
fn the_data_schema_of_every_message_lists_exactly_the_published_fields() {
    let contract = Contract::load();
    let documented = contract.by_address();
    let prefix = RelaySettings::default().subject_prefix;
    let samples = samples();

    // Every catalogued type is sampled.
    let sampled: BTreeSet<_> = samples.iter().map(|(a, t, _, _)| (*a, *t)).collect();
    let catalogued: BTreeSet<_> = EVENT_CATALOGUE
        .iter()
        .flat_map(|(a, types)| types.iter().map(move |t| (*a, *t)))
        .collect();
    assert_eq!(sampled, catalogued, "samples and catalogue differ");

    let mut errors = Vec::new();
    for (i, (aggregate, event_type, payload, data)) in samples.into_iter().enumerate() {
        // Stored payloads are serde's externally tagged enum.
        let tags: Vec<_> = payload.as_object().unwrap().keys().cloned().collect();
        assert_eq!(tags, [event_type], "stored payload tag");

        let address = format!("{prefix}.{aggregate}.{event_type}");
        let message = documented
            .get(&address)
            .unwrap_or_else(|| panic!("no channel {address}"))
            .message;
        let published: BTreeSet<_> = data.as_object().unwrap().keys().cloned().collect();
        let declared: BTreeSet<_> = contract
            .declared_within(&message["payload"], "data")
            .into_keys()
            .collect();
        let undocumented: Vec<_> = published.difference(&declared).collect();
        let never_published: Vec<_> = declared.difference(&published).collect();
        if !undocumented.is_empty() {
            errors.push(format!(
                "{address}: published but not documented: {undocumented:?}"
            ));
        }
        if !never_published.is_empty() {
            errors.push(format!(
                "{address}: documented but not published: {never_published:?}"
            ));
        }

        // The whole envelope, as the relay builds it from a stored row.
        let sequence = i as i64 + 1;
        let stored = StoredEvent {
            position: Position {
                tx_id: 1000 + sequence,
                global_position: sequence,
            },
            aggregate_type: aggregate.to_owned(),
            aggregate_id: Uuid::new_v4().to_string(),
            sequence,
            event_type: event_type.to_owned(),
            event_version: current_version(aggregate, &payload),
            payload,
            metadata: json!({
                "actor": Uuid::new_v4().to_string(),
                "request_id": "req-1",
                "occurred_at": "2026-03-02T09:15:04.218331+00:00",
                "ip": "203.0.113.9",
                "user_agent": "curl/8.5.0",
            }),
            recorded_at: Utc::now(),
        };
        let envelope = IntegrationEvent::from_stored(&stored).expect("stored event converts");
        assert_eq!(
            envelope.data, data,
            "the relay publishes integration_data()"
        );
        let body = serde_json::to_value(&envelope).unwrap();
        let text = body.to_string();
        if text.contains("$argon2") || text.contains(&"5a".repeat(32)) {
            errors.push(format!("{address}: a secret is published: {text}"));
        }
        let headers = json!({ "Nats-Msg-Id": envelope.event_id.to_string() });
        errors.extend(contract.check_message(message, &headers, &body, &address));
    }
    assert_no_errors(&errors);
}

#[test]
fn the_event_id_namespace_is_the_relays() {
    let id = Uuid::new_v4().to_string();
    assert_eq!(
        Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("role/{id}/3").as_bytes()),
        IntegrationEvent::event_id("role", &id, 3)
    );
}

/// The version the code writes an event with (what a stored sample carries).
fn current_version(aggregate: &str, payload: &Value) -> String {
    use cqrs_es::DomainEvent;
    let payload = payload.clone();
    match aggregate {
        "user" => serde_json::from_value::<UserEvent>(payload).map(|e| e.event_version()),
        "session" => serde_json::from_value::<SessionEvent>(payload).map(|e| e.event_version()),
        "organization" => {
            serde_json::from_value::<keyledger_domain::organization::OrganizationEvent>(payload)
                .map(|e| e.event_version())
        }
        "role" => serde_json::from_value::<keyledger_domain::role::RoleEvent>(payload)
            .map(|e| e.event_version()),
        "service_account" => serde_json::from_value::<
            keyledger_domain::service_account::ServiceAccountEvent,
        >(payload)
        .map(|e| e.event_version()),
        "platform" => serde_json::from_value::<PlatformEvent>(payload).map(|e| e.event_version()),
        "oauth_client" => {
            serde_json::from_value::<OAuthClientEvent>(payload).map(|e| e.event_version())
        }
        other => panic!("unknown aggregate {other}"),
    }
    .expect("samples are current events")
}

/// The stored event the relay reads, as the NATS envelope it publishes.
fn published(
    aggregate: &str,
    aggregate_id: Uuid,
    sequence: i64,
    event_type: &str,
    payload: Value,
    occurred_at: &str,
) -> IntegrationEvent {
    let stored = StoredEvent {
        position: Position {
            tx_id: 5000 + sequence,
            global_position: 4000 + sequence,
        },
        aggregate_type: aggregate.to_owned(),
        aggregate_id: aggregate_id.to_string(),
        sequence,
        event_type: event_type.to_owned(),
        event_version: current_version(aggregate, &payload),
        payload,
        metadata: json!({
            "actor": Uuid::new_v4().to_string(),
            "request_id": Uuid::new_v4().to_string(),
            "occurred_at": occurred_at,
            "ip": "198.51.100.7",
            "user_agent": "curl/8.5.0",
        }),
        recorded_at: Utc::now(),
    };
    IntegrationEvent::from_stored(&stored).expect("stored event converts")
}

/// `EffectivePermissionsChanged` for one organization, built by hand from the
/// contract: the cause's sequence, time and metadata; an id of its own.
fn effective_permissions_changed(
    cause: &IntegrationEvent,
    organization: Uuid,
    users: &[Uuid],
    accounts: &[Uuid],
) -> IntegrationEvent {
    let organization_id = organization.to_string();
    IntegrationEvent {
        event_id: effective_event_id(&cause.event_id.to_string(), &organization_id),
        event_type: "EffectivePermissionsChanged".to_owned(),
        aggregate_type: "organization".to_owned(),
        aggregate_id: organization_id,
        sequence: cause.sequence,
        occurred_at: cause.occurred_at,
        schema_version: "1.0".to_owned(),
        data: json!({
            "organization_id": organization,
            "user_ids": users,
            "service_account_ids": accounts,
            "cause": {
                "event_id": cause.event_id,
                "aggregate_type": cause.aggregate_type,
                "aggregate_id": cause.aggregate_id,
                "event_type": cause.event_type,
            },
        }),
        metadata: cause.metadata.clone(),
    }
}

/// Hand-built samples of every derived event type, from causes of each kind.
fn derived_samples() -> Vec<IntegrationEvent> {
    let at = Utc.with_ymd_and_hms(2026, 3, 9, 8, 12, 40).unwrap();
    let organization = Uuid::new_v4();
    let (bob, carol) = (Uuid::new_v4(), Uuid::new_v4());
    let worker = Uuid::new_v4();
    let permissions = |raw: &[&str]| PermissionSet::parse(raw.iter().copied()).unwrap();

    // A role holders' permissions grew: its members and service accounts.
    let updated = RoleEvent::PermissionUpdated {
        permissions: permissions(&["invoices:read", "invoices:write"]),
        added: permissions(&["invoices:write"]),
        removed: PermissionSet::default(),
        at,
    };
    let role_cause = published(
        "role",
        Uuid::new_v4(),
        2,
        "PermissionUpdated",
        serde_json::to_value(&updated).unwrap(),
        "2026-03-09T08:12:40.118214+00:00",
    );
    // A suspended user in three organizations: three events.
    let suspended = UserEvent::UserSuspended {
        reason: "account reported as compromised".into(),
        at,
    };
    let user = Uuid::new_v4();
    let user_cause = published(
        "user",
        user,
        12,
        "UserSuspended",
        serde_json::to_value(&suspended).unwrap(),
        "2026-03-11T16:40:02.900731+00:00",
    );
    // A new service account: no user at all.
    let created = ServiceAccountEvent::ServiceAccountCreated {
        service_account_id: worker,
        organization_id: organization,
        name: OrganizationName::parse("invoice worker").unwrap(),
        roles: BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Auditor)]),
        secret_hash: TokenHash::from_bytes([0x5a; 32]),
        at,
    };
    let account_cause = published(
        "service_account",
        worker,
        1,
        "ServiceAccountCreated",
        serde_json::to_value(&created).unwrap(),
        "2026-03-09T08:20:13.004512+00:00",
    );

    let mut out = vec![effective_permissions_changed(
        &role_cause,
        organization,
        &[bob, carol],
        &[worker],
    )];
    for member_of in [organization, Uuid::new_v4(), Uuid::new_v4()] {
        out.push(effective_permissions_changed(
            &user_cause,
            member_of,
            &[user],
            &[],
        ));
    }
    out.push(effective_permissions_changed(
        &account_cause,
        organization,
        &[],
        &[worker],
    ));
    out
}

#[test]
fn every_derived_event_has_a_documented_message_that_its_samples_follow() {
    let contract = Contract::load();
    let documented = contract.by_address();
    let prefix = RelaySettings::default().subject_prefix;
    let samples = derived_samples();

    let sampled: BTreeSet<_> = samples
        .iter()
        .map(|e| (e.aggregate_type.as_str(), e.event_type.as_str()))
        .collect();
    let derived: BTreeSet<_> = DERIVED_EVENT_CATALOGUE.iter().copied().collect();
    assert_eq!(sampled, derived, "derived samples and catalogue differ");
    let ids: BTreeSet<_> = samples.iter().map(|e| e.event_id).collect();
    assert_eq!(
        ids.len(),
        samples.len(),
        "one id per organization and cause"
    );

    let keys = |value: &Value| -> BTreeSet<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut errors = Vec::new();
    for event in &samples {
        let address = event.subject(&prefix);
        let message = documented
            .get(&address)
            .unwrap_or_else(|| panic!("no channel {address}"))
            .message;
        let data = contract.declared_within(&message["payload"], "data");
        let declared: BTreeSet<_> = data.keys().cloned().collect();
        if declared != keys(&event.data) {
            errors.push(format!(
                "{address}: data documents {declared:?}, the contract publishes {:?}",
                keys(&event.data)
            ));
        }
        let mut cause = BTreeMap::new();
        for sub in data.get("cause").into_iter().flatten() {
            contract.collect_declared(sub, &mut cause);
        }
        let declared: BTreeSet<_> = cause.into_keys().collect();
        if declared != keys(&event.data["cause"]) {
            errors.push(format!(
                "{address}: data.cause documents {declared:?}, the contract publishes {:?}",
                keys(&event.data["cause"])
            ));
        }
        let body = serde_json::to_value(event).unwrap();
        let headers = json!({ "Nats-Msg-Id": event.event_id.to_string() });
        errors.extend(contract.check_message(message, &headers, &body, &address));
    }
    assert_no_errors(&errors);

    // The checks can fail: an id for another organization, and an event that
    // names nobody, are caught.
    let message = documented[&samples[0].subject(&prefix)].message;
    let mut wrong_id = samples[0].clone();
    wrong_id.event_id = effective_event_id(&samples[0].event_id.to_string(), "elsewhere");
    let mut nobody = samples[0].clone();
    nobody.data["user_ids"] = json!([]);
    nobody.data["service_account_ids"] = json!([]);
    for (broken, what) in [(wrong_id, "wrong id"), (nobody, "nobody")] {
        let headers = json!({ "Nats-Msg-Id": broken.event_id.to_string() });
        let body = serde_json::to_value(&broken).unwrap();
        assert!(
            !contract
                .check_message(message, &headers, &body, what)
                .is_empty(),
            "{what} passed the checks"
        );
    }
}

e2e! {
/// On both back ends with NATS on: the relay does not depend on the storage, and
/// NATS fan-out is the one feature the embedded default leaves off.
async fn everything_the_server_publishes_is_documented_and_valid(backend) {
    let contract = Contract::load();
    let documented = contract.by_address();
    let documented_prefix = RelaySettings::default().subject_prefix;
    let app = spawn_app_with_nats(backend).await;

    // Register and log in, refresh, fail once, log out.
    let (email, first) = app.signed_in_user().await;
    let refreshed = app.tokens(app.refresh(&first.refresh_token).await).await;
    assert_eq!(
        error_code(
            app.login(&email, "not the password at all").await,
            StatusCode::UNAUTHORIZED
        )
        .await,
        "invalid_credentials"
    );
    assert_eq!(
        app.logout(&refreshed.access_token).await.status(),
        StatusCode::NO_CONTENT
    );
    // A second session whose spent refresh token comes back: reuse, revocation.
    let second = app.tokens(app.login(&email, PASSWORD).await).await;
    app.tokens(app.refresh(&second.refresh_token).await).await;
    assert_eq!(
        error_code(
            app.refresh(&second.refresh_token).await,
            StatusCode::UNAUTHORIZED
        )
        .await,
        "refresh_token_reused"
    );

    let count = app.count_events().await as usize;
    let published = app.published(count, Duration::from_secs(20)).await;
    assert_eq!(published.len(), count, "every stored event is published");

    let prefix = format!("{}.", app.resources.subject_prefix);
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    for (subject, msg_id, body) in &published {
        let rest = subject
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{subject} outside the test's prefix {prefix}"));
        let address = format!("{documented_prefix}.{rest}");
        let Some(doc) = documented.get(&address) else {
            errors.push(format!(
                "{subject}: no channel {address} in docs/asyncapi.yaml"
            ));
            continue;
        };
        assert_eq!(
            format!(
                "{}.{}",
                body["aggregate_type"].as_str().unwrap(),
                body["event_type"].as_str().unwrap()
            ),
            rest,
            "subject and body agree"
        );
        for key in ["actor", "request_id"] {
            if !body["metadata"][key].is_string() {
                errors.push(format!("{subject}: metadata.{key} missing"));
            }
        }
        let headers = json!({ "Nats-Msg-Id": msg_id });
        errors.extend(contract.check_message(doc.message, &headers, body, subject));
        seen.insert(body["event_type"].as_str().unwrap().to_owned());
    }
    assert_no_errors(&errors);

    let expected: BTreeSet<String> = [
        "UserRegistered",
        "UserLoggedIn",
        "LoginFailed",
        "SessionStarted",
        "TokenRefreshed",
        "UserLoggedOut",
        "RefreshTokenReuseDetected",
        "SessionRevoked",
    ]
    .map(String::from)
    .into();
    let not_seen: Vec<_> = expected.difference(&seen).collect();
    assert!(not_seen.is_empty(), "never published: {not_seen:?}");
}}
