//! Reading events stored in an older shape.
//!
//! Stored events are never rewritten (the log is append-only and chained). When an
//! event's shape must change, the new shape gets a new `event_version`, and an
//! [`Upcast`] here turns the stored JSON of the old version into the new one on the
//! way in. Every reader goes through [`upcast`]: the write side (cqrs-es loads
//! aggregates through an `EventUpcaster` built on it, in `commands`) and the read side
//! (the feed decodes every stored event through it, in `projections`), so no code
//! outside this module ever sees an old shape.
//!
//! Adding a change: write the new shape in the event enum, bump that variant's
//! version in its `DomainEvent::event_version`, add one `Upcast` from the previous
//! version (a pure function of the old payload), and a test that an event stored in
//! the old shape loads (see `docs/events.md`, "Changing an event").

use serde_json::{json, Map, Value};

/// One step: the stored JSON of `event_type` at `from` becomes the JSON of `to`.
pub struct Upcast {
    pub aggregate_type: &'static str,
    pub event_type: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    /// Receives the variant's fields (the object inside `{"EventType": {...}}`).
    pub transform: fn(Map<String, Value>) -> Map<String, Value>,
}

/// Every shape change so far, oldest first.
pub const UPCASTS: &[Upcast] = &[
    Upcast {
        aggregate_type: "user",
        event_type: "UserLoggedIn",
        from: "1.0",
        to: "2.0",
        transform: user_logged_in_2_0,
    },
    Upcast {
        aggregate_type: "user",
        event_type: "UserRegistered",
        from: "1.0",
        to: "2.0",
        transform: personal_data_sealed_2_0,
    },
    Upcast {
        aggregate_type: "session",
        event_type: "SessionStarted",
        from: "1.0",
        to: "2.0",
        transform: personal_data_sealed_2_0,
    },
    Upcast {
        aggregate_type: "session",
        event_type: "SessionStarted",
        from: "2.0",
        to: "3.0",
        transform: session_factors_3_0,
    },
    Upcast {
        aggregate_type: "user",
        event_type: "UserRegistered",
        from: "2.0",
        to: "3.0",
        transform: password_hash_sealed,
    },
    Upcast {
        aggregate_type: "user",
        event_type: "PasswordChanged",
        from: "1.0",
        to: "2.0",
        transform: password_hash_sealed,
    },
    Upcast {
        aggregate_type: "user",
        event_type: "PasswordRehashed",
        from: "1.0",
        to: "2.0",
        transform: password_hash_sealed,
    },
    Upcast {
        aggregate_type: "user",
        event_type: "AccountLocked",
        from: "1.0",
        to: "2.0",
        transform: account_locked_2_0,
    },
    Upcast {
        aggregate_type: "user",
        event_type: "UserRegistered",
        from: "3.0",
        to: "4.0",
        transform: password_optional_4_0,
    },
    Upcast {
        aggregate_type: "session",
        event_type: "SessionGrantedToClient",
        from: "1.0",
        to: "1.1",
        transform: granted_authenticated_at_1_1,
    },
];

/// `SessionGrantedToClient` 1.1 records when the user signed in before the app's
/// code was issued (`authenticated_at`). A 1.0 grant did not: it reads as `null`,
/// and the session's start stands for the sign-in, as it did when it was written.
fn granted_authenticated_at_1_1(mut fields: Map<String, Value>) -> Map<String, Value> {
    fields.entry("authenticated_at").or_insert(Value::Null);
    fields
}

/// `UserRegistered` 4.0 allows a null `password_hash`: an account registered
/// with a passkey has none. Every 3.0 event has one, so the step changes nothing
/// but the version; it exists so that readers of 4.0 know to expect null.
fn password_optional_4_0(fields: Map<String, Value>) -> Map<String, Value> {
    fields
}

/// `AccountLocked` 2.0 names the lock's unlock request (`unlock_request_id`, from
/// which the mailed unlock link's token is derived). A 1.0 lock was mailed no
/// link: it reads as `null` (no unlock request), so no link ever opens it; the
/// lock itself holds as written.
fn account_locked_2_0(mut fields: Map<String, Value>) -> Map<String, Value> {
    fields.entry("unlock_request_id").or_insert(Value::Null);
    fields
}

/// `UserRegistered` 3.0 and `PasswordChanged` / `PasswordRehashed` 2.0 seal the
/// password hash with the account's data key (`crate::SealedPasswordHash`), so
/// erasure makes it unusable; older versions held the PHC string in clear, in the
/// same JSON shape. A clear hash is a valid `SealedPasswordHash` (the write side
/// uses it as stored), so the step changes nothing but the version. Events
/// written before keep their clear hash (the log is never edited): erasure
/// cannot hide those, only `keyledger-replay reseal` rewrites them.
fn password_hash_sealed(fields: Map<String, Value>) -> Map<String, Value> {
    fields
}

/// `UserRegistered` and `SessionStarted` 2.0 seal their personal fields
/// (`crate::personal`); 1.0 held the same fields in clear, in the same JSON shape.
/// A clear value is a valid [`crate::PersonalData`] (it opens to itself), so the
/// step changes nothing but the version. Erasing an account whose events are 1.0
/// cannot hide them: `keyledger-replay reseal` rewrites such a log once.
fn personal_data_sealed_2_0(fields: Map<String, Value>) -> Map<String, Value> {
    fields
}

/// `SessionStarted` 3.0 records how the user signed in (`factors`, RFC 8176 `amr`
/// values). Sessions started before did not record it: they read with an empty
/// list (unknown), so their tokens carry no `amr` and a step-up is needed before
/// a change that asks for a recent authentication with a second factor.
fn session_factors_3_0(mut fields: Map<String, Value>) -> Map<String, Value> {
    fields.entry("factors").or_insert(json!([]));
    fields
}

/// `UserLoggedIn` 1.0 named one login `method` (`"password"`); 2.0 lists the
/// authentication factors used, as RFC 8176 `amr` values (`["pwd"]`), ready for
/// logins with second factors.
fn user_logged_in_2_0(mut fields: Map<String, Value>) -> Map<String, Value> {
    let method = fields.remove("method");
    let factor = match method.as_ref().and_then(Value::as_str) {
        Some("password") | None => "pwd".to_owned(),
        Some(other) => other.to_owned(),
    };
    fields.insert("factors".into(), json!([factor]));
    fields
}

/// The current shape of a stored event: applies every step from its stored version
/// on. Returns the version reached and the payload. Events already current, and
/// events no step knows, come back unchanged.
pub fn upcast(
    aggregate_type: &str,
    event_type: &str,
    version: &str,
    payload: Value,
) -> (String, Value) {
    let mut version = version.to_owned();
    let mut payload = payload;
    while let Some(step) = UPCASTS.iter().find(|u| {
        u.aggregate_type == aggregate_type && u.event_type == event_type && u.from == version
    }) {
        payload = match payload {
            Value::Object(mut outer) => match outer.remove(event_type) {
                Some(Value::Object(fields)) => {
                    outer.insert(
                        event_type.to_owned(),
                        Value::Object((step.transform)(fields)),
                    );
                    Value::Object(outer)
                }
                // Not the shape this step knows: leave it for the decoder to refuse.
                Some(other) => {
                    outer.insert(event_type.to_owned(), other);
                    return (version, Value::Object(outer));
                }
                None => return (version, Value::Object(outer)),
            },
            other => return (version, other),
        };
        version = step.to.to_owned();
    }
    (version, payload)
}

/// Whether a stored event needs [`upcast`] (a cheap check for hot readers).
pub fn is_outdated(aggregate_type: &str, event_type: &str, version: &str) -> bool {
    UPCASTS.iter().any(|u| {
        u.aggregate_type == aggregate_type && u.event_type == event_type && u.from == version
    })
}

#[cfg(test)]
mod tests {
    use cqrs_es::DomainEvent;

    use super::*;
    use crate::user::UserEvent;

    #[test]
    fn a_user_logged_in_stored_as_1_0_loads_as_the_current_event() {
        let stored = json!({"UserLoggedIn": {
            "session_id": "00000000-0000-0000-0000-000000000007",
            "method": "password",
            "at": "2026-01-01T12:00:00Z",
        }});
        assert!(is_outdated("user", "UserLoggedIn", "1.0"));
        let (version, payload) = upcast("user", "UserLoggedIn", "1.0", stored);
        let event: UserEvent = serde_json::from_value(payload).expect("loads");
        assert_eq!(version, event.event_version());
        let UserEvent::UserLoggedIn { factors, .. } = event else {
            panic!("another variant")
        };
        assert_eq!(factors, vec!["pwd".to_owned()]);
    }

    #[test]
    fn password_hashes_stored_in_clear_load_as_the_current_events() {
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
        let registered = json!({"UserRegistered": {
            "user_id": "00000000-0000-0000-0000-000000000007",
            "email": "old@example.com",
            "display_name": null,
            "password_hash": phc,
            "registered_at": "2026-01-01T12:00:00Z",
        }});
        for from in ["1.0", "2.0", "3.0"] {
            let (version, payload) = upcast("user", "UserRegistered", from, registered.clone());
            let event: UserEvent = serde_json::from_value(payload).expect("loads");
            assert_eq!(version, event.event_version());
            let UserEvent::UserRegistered { password_hash, .. } = event else {
                panic!("another variant")
            };
            let password_hash = password_hash.expect("every version before 4.0 has one");
            assert!(!password_hash.is_sealed());
            assert_eq!(password_hash.open(None).unwrap().expose_phc(), phc);
        }
        for event_type in ["PasswordChanged", "PasswordRehashed"] {
            let stored = json!({event_type: {"password_hash": phc, "at": "2026-01-01T12:00:00Z"}});
            assert!(is_outdated("user", event_type, "1.0"));
            let (version, payload) = upcast("user", event_type, "1.0", stored);
            let event: UserEvent = serde_json::from_value(payload).expect("loads");
            assert_eq!(version, event.event_version());
            assert_eq!(version, "2.0");
        }
    }

    #[test]
    fn an_account_locked_stored_as_1_0_loads_with_no_unlock_request() {
        let stored = json!({"AccountLocked": {
            "locked_until": "2026-01-01T12:30:00Z",
            "failed_attempts": 5,
            "at": "2026-01-01T12:00:00Z",
        }});
        assert!(is_outdated("user", "AccountLocked", "1.0"));
        let (version, payload) = upcast("user", "AccountLocked", "1.0", stored);
        assert_eq!(version, "2.0");
        assert_eq!(payload["AccountLocked"]["unlock_request_id"], Value::Null);
        let event: UserEvent = serde_json::from_value(payload).unwrap();
        assert!(matches!(
            event,
            UserEvent::AccountLocked {
                unlock_request_id: None,
                failed_attempts: 5,
                ..
            }
        ));
    }

    #[test]
    fn current_and_unknown_events_pass_unchanged() {
        let current = json!({"UserLoggedIn": {"session_id": "x", "factors": ["pwd"], "at": "t"}});
        assert!(!is_outdated("user", "UserLoggedIn", "2.0"));
        assert_eq!(
            upcast("user", "UserLoggedIn", "2.0", current.clone()),
            ("2.0".to_owned(), current)
        );
        let other = json!({"LoginFailed": {"consecutive_failures": 1, "at": "t"}});
        assert_eq!(
            upcast("user", "LoginFailed", "1.0", other.clone()),
            ("1.0".to_owned(), other)
        );
    }

    #[test]
    fn a_grant_written_before_1_1_loads_without_its_sign_in_time() {
        let stored = json!({"SessionGrantedToClient": {
            "client_id": "00000000-0000-0000-0000-000000000007",
            "scope": "openid",
            "at": "2026-12-07T10:00:00Z",
        }});
        let (version, payload) = upcast("session", "SessionGrantedToClient", "1.0", stored);
        assert_eq!(version, "1.1");
        match serde_json::from_value::<crate::SessionEvent>(payload).unwrap() {
            crate::SessionEvent::SessionGrantedToClient {
                authenticated_at, ..
            } => assert_eq!(authenticated_at, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_malformed_old_payload_is_left_for_the_decoder_to_refuse() {
        let broken = json!({"UserLoggedIn": "not an object"});
        let (version, payload) = upcast("user", "UserLoggedIn", "1.0", broken.clone());
        assert_eq!((version.as_str(), &payload), ("1.0", &broken));
        assert!(serde_json::from_value::<UserEvent>(payload).is_err());
    }

    #[test]
    fn every_step_leads_to_the_version_the_code_writes() {
        for step in UPCASTS {
            assert_ne!(step.from, step.to);
            let ends = !UPCASTS
                .iter()
                .any(|next| next.event_type == step.event_type && next.from == step.to);
            if ends && step.event_type == "UserRegistered" {
                let written = UserEvent::UserRegistered {
                    user_id: uuid::Uuid::nil(),
                    email: "a".into(),
                    display_name: None,
                    password_hash: Some(crate::SealedPasswordHash::clear(
                        crate::values::PasswordHash::new("h".into()),
                    )),
                    registered_at: chrono::Utc::now(),
                };
                assert_eq!(step.to, written.event_version());
            }
            if ends && step.event_type == "PasswordChanged" {
                let written = UserEvent::PasswordChanged {
                    password_hash: crate::SealedPasswordHash::clear(
                        crate::values::PasswordHash::new("h".into()),
                    ),
                    at: chrono::Utc::now(),
                };
                assert_eq!(step.to, written.event_version());
            }
            if ends && step.event_type == "AccountLocked" {
                let written = UserEvent::AccountLocked {
                    locked_until: chrono::Utc::now(),
                    failed_attempts: 5,
                    unlock_request_id: None,
                    at: chrono::Utc::now(),
                };
                assert_eq!(step.to, written.event_version());
            }
            if ends && step.event_type == "SessionGrantedToClient" {
                let written = crate::SessionEvent::SessionGrantedToClient {
                    client_id: uuid::Uuid::nil(),
                    scope: "openid".into(),
                    at: chrono::Utc::now(),
                    authenticated_at: None,
                };
                assert_eq!(step.to, written.event_version());
            }
            if ends && step.event_type == "UserLoggedIn" {
                let written = UserEvent::UserLoggedIn {
                    session_id: uuid::Uuid::nil(),
                    factors: vec![],
                    at: chrono::Utc::now(),
                };
                assert_eq!(step.to, written.event_version());
            }
        }
    }
}
