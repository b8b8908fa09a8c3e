//! Consent remembered per user and OAuth client: which scopes the person allowed
//! a third-party application (see [`crate::oauth_client`]), so the consent page
//! is not shown again for what was already allowed.
//!
//! Consent is the person's decision, so it lives on their User aggregate: it
//! follows the account's history (erasure forgets it with the rest) and a
//! revocation is one more event on the same stream. Each grant records the whole
//! set consented to after it (the union of the earlier set and the new scopes),
//! so applying it only sets state. The write side checks the scopes against the
//! client before granting; the aggregate keeps what it is given.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::oauth_client::KNOWN_SCOPES;
use crate::user::{User, UserError, UserEvent};

/// What one client was allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthConsent {
    /// In the order of [`KNOWN_SCOPES`], each once.
    pub scopes: Vec<String>,
    /// When it was last extended.
    pub granted_at: DateTime<Utc>,
}

/// Requests about consent, a part of [`crate::UserCommand`].
#[derive(Debug, Clone, PartialEq)]
pub enum OAuthConsentCommand {
    /// Allows `scopes` (known scopes, checked by the write side) to `client_id`,
    /// besides what it was allowed before. Nothing is written when every scope
    /// was allowed already.
    Grant {
        client_id: Uuid,
        scopes: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Forgets what `client_id` was allowed: the next sign-in asks again.
    Revoke { client_id: Uuid, at: DateTime<Utc> },
}

/// `earlier` and `added` together, each once, in the order of [`KNOWN_SCOPES`]
/// (anything unknown after them, sorted).
fn union(earlier: &[String], added: &[String]) -> Vec<String> {
    let all: std::collections::BTreeSet<&str> =
        earlier.iter().chain(added).map(String::as_str).collect();
    let mut out: Vec<String> = KNOWN_SCOPES
        .iter()
        .filter(|known| all.contains(**known))
        .map(|s| (*s).to_owned())
        .collect();
    out.extend(
        all.iter()
            .filter(|s| !KNOWN_SCOPES.contains(s))
            .map(|s| (*s).to_owned()),
    );
    out
}

impl User {
    /// What `client_id` was allowed, if anything.
    pub fn oauth_consent(&self, client_id: Uuid) -> Option<&OAuthConsent> {
        self.oauth_consents.get(&client_id)
    }

    pub(crate) async fn handle_oauth_consent(
        &mut self,
        command: OAuthConsentCommand,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        self.ensure_registered()?;
        match command {
            OAuthConsentCommand::Grant {
                client_id,
                scopes,
                at,
            } => {
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                let earlier = self
                    .oauth_consent(client_id)
                    .map(|c| c.scopes.clone())
                    .unwrap_or_default();
                let scopes = union(&earlier, &scopes);
                if self.oauth_consent(client_id).is_some() && scopes == earlier {
                    return Ok(());
                }
                let granted = UserEvent::OAuthConsentGranted {
                    client_id,
                    scopes,
                    at,
                };
                sink.write(granted, self).await;
            }
            OAuthConsentCommand::Revoke { client_id, at } => {
                if self.oauth_consent(client_id).is_none() {
                    return Err(UserError::NoSuchConsent);
                }
                let revoked = UserEvent::OAuthConsentRevoked { client_id, at };
                sink.write(revoked, self).await;
            }
        }
        Ok(())
    }

    /// Applies a consent event (see [`crate::UserEvent`]); `false` for any other
    /// event.
    pub(crate) fn apply_oauth_consent(&mut self, event: &UserEvent) -> bool {
        match event {
            UserEvent::OAuthConsentGranted {
                client_id,
                scopes,
                at,
            } => {
                self.oauth_consents.insert(
                    *client_id,
                    OAuthConsent {
                        scopes: scopes.clone(),
                        granted_at: *at,
                    },
                );
            }
            UserEvent::OAuthConsentRevoked { client_id, .. } => {
                self.oauth_consents.remove(client_id);
            }
            _ => return false,
        }
        true
    }
}

/// The consents of an account, by client.
pub type OAuthConsents = BTreeMap<Uuid, OAuthConsent>;

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;
    use cqrs_es::Aggregate;

    use super::*;
    use crate::personal::{PersonalData, SealedPasswordHash};
    use crate::user::UserCommand;

    type UserTest = TestFramework<User>;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
    }

    fn client() -> Uuid {
        Uuid::from_u128(77)
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            user_id: Uuid::from_u128(1),
            email: PersonalData::clear("ada@example.com"),
            display_name: None,
            password_hash: Some(SealedPasswordHash::clear(crate::PasswordHash::new(
                "$argon2id$stub".into(),
            ))),
            registered_at: t(0),
        }
    }

    fn scopes(raw: &[&str]) -> Vec<String> {
        raw.iter().map(|s| (*s).to_owned()).collect()
    }

    fn grant(raw: &[&str], minute: i64) -> UserCommand {
        UserCommand::OAuthConsent(OAuthConsentCommand::Grant {
            client_id: client(),
            scopes: scopes(raw),
            at: t(minute),
        })
    }

    fn granted(raw: &[&str], minute: i64) -> UserEvent {
        UserEvent::OAuthConsentGranted {
            client_id: client(),
            scopes: scopes(raw),
            at: t(minute),
        }
    }

    #[test]
    fn a_grant_is_remembered_and_later_grants_add_to_it() {
        UserTest::with(())
            .given(vec![registered()])
            .when(grant(&["email", "openid"], 1))
            .then_expect_events(vec![granted(&["openid", "email"], 1)]);
        UserTest::with(())
            .given(vec![registered(), granted(&["openid", "email"], 1)])
            .when(grant(&["profile"], 2))
            .then_expect_events(vec![granted(&["openid", "profile", "email"], 2)]);
        let mut user = User::default();
        user.apply(registered());
        user.apply(granted(&["openid", "email"], 1));
        user.apply(granted(&["openid", "profile", "email"], 2));
        assert_eq!(
            user.oauth_consent(client()),
            Some(&OAuthConsent {
                scopes: scopes(&["openid", "profile", "email"]),
                granted_at: t(2),
            })
        );
    }

    #[test]
    fn a_grant_of_nothing_new_writes_nothing() {
        UserTest::with(())
            .given(vec![registered(), granted(&["openid", "email"], 1)])
            .when(grant(&["email"], 2))
            .then_expect_events(vec![]);
        // Consent to no scope at all is still remembered (the client was allowed).
        UserTest::with(())
            .given(vec![registered()])
            .when(grant(&[], 1))
            .then_expect_events(vec![granted(&[], 1)]);
    }

    #[test]
    fn a_revoked_consent_is_forgotten() {
        let revoked = UserEvent::OAuthConsentRevoked {
            client_id: client(),
            at: t(2),
        };
        UserTest::with(())
            .given(vec![registered(), granted(&["openid"], 1)])
            .when(UserCommand::OAuthConsent(OAuthConsentCommand::Revoke {
                client_id: client(),
                at: t(2),
            }))
            .then_expect_events(vec![revoked.clone()]);
        UserTest::with(())
            .given(vec![registered(), granted(&["openid"], 1), revoked.clone()])
            .when(UserCommand::OAuthConsent(OAuthConsentCommand::Revoke {
                client_id: client(),
                at: t(3),
            }))
            .then_expect_error(UserError::NoSuchConsent);
        let mut user = User::default();
        for event in [registered(), granted(&["openid"], 1), revoked] {
            user.apply(event);
        }
        assert_eq!(user.oauth_consent(client()), None);
    }

    #[test]
    fn a_suspended_account_grants_nothing_and_an_erased_one_keeps_nothing() {
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::UserSuspended {
                    reason: "abuse".into(),
                    at: t(1),
                },
            ])
            .when(grant(&["openid"], 2))
            .then_expect_error(UserError::Suspended);
        let erased = UserEvent::UserErased { at: t(2) };
        UserTest::with(())
            .given(vec![registered(), granted(&["openid"], 1), erased.clone()])
            .when(grant(&["openid"], 3))
            .then_expect_error(UserError::Erased);
        let mut user = User::default();
        for event in [registered(), granted(&["openid"], 1), erased] {
            user.apply(event);
        }
        assert!(user.oauth_consents.is_empty());
    }

    #[test]
    fn applying_a_consent_event_twice_equals_applying_it_once() {
        let history = vec![
            registered(),
            granted(&["openid"], 1),
            granted(&["openid", "email"], 2),
            UserEvent::OAuthConsentRevoked {
                client_id: client(),
                at: t(3),
            },
        ];
        let (mut once, mut twice) = (User::default(), User::default());
        for event in history {
            once.apply(event.clone());
            twice.apply(event.clone());
            twice.apply(event);
            assert_eq!(once, twice);
        }
    }
}
