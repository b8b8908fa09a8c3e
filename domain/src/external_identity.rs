//! External identities: accounts at other identity providers (Google, Microsoft,
//! GitHub, Kakao, Naver, any OpenID provider) that sign in to a Keyledger account.
//!
//! The aggregate never talks to a provider. The write side runs the OAuth or
//! OpenID Connect exchange, checks the provider's answer (ID token, user info),
//! and tells the aggregate which identity signed in and whether the provider
//! asserted a second factor of its own that the operator trusts. The aggregate
//! keeps the rules that need the account's history: one identity per provider,
//! a suspended account stays out, a second factor is asked for like after a
//! password, and an account keeps at least one way to sign in.
//!
//! The subject (the provider's id of the person) and the address the provider
//! gave are personal data, sealed with the person's data key: erasure makes them
//! unreadable. Which account holds which subject is kept beside the log by the
//! write side (a claim), so one identity belongs to one account.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::personal::PersonalData;
use crate::second_factor::MFA_FACTOR;
use crate::user::{User, UserError, UserEvent};

/// The `amr` value of a sign-in that an external identity provider performed.
/// RFC 8176 registers none for federation; `fed` is what Keycloak and others use.
pub const FEDERATED_FACTOR: &str = "fed";

/// Identities one account may link: one per provider, and few providers.
pub const MAX_EXTERNAL_IDENTITIES: usize = 20;

/// The `amr` value naming the provider of a federated sign-in (`idp:google`),
/// beside [`FEDERATED_FACTOR`]: a token's reader sees who vouched for the user.
pub fn provider_factor(provider: &str) -> String {
    format!("idp:{provider}")
}

/// One external identity of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalIdentity {
    pub identity_id: Uuid,
    /// The provider's name as configured (`google`, `kakao`, `corp`).
    pub provider: String,
    /// The provider's id of the person (`sub`, Kakao's numeric id), sealed.
    pub subject: PersonalData,
    /// The address the provider gave when the identity was linked, sealed.
    pub email: Option<PersonalData>,
    pub linked_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An identity a provider vouched for, to link.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExternalIdentity {
    pub identity_id: Uuid,
    pub provider: String,
    pub subject: PersonalData,
    pub email: Option<PersonalData>,
    /// Whether the provider said the address is its owner's.
    pub email_verified: bool,
}

/// How an identity came to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMethod {
    /// The first sign-in with the identity created the account.
    SignUp,
    /// The signed-in owner linked it.
    Explicit,
    /// A sign-in with it found an account with the same address, verified
    /// here and at the provider.
    VerifiedEmail,
}

/// Requests about external identities, a part of [`crate::UserCommand`].
#[derive(Debug, Clone, PartialEq)]
pub enum ExternalIdentityCommand {
    /// Refused when the account already has an identity of that provider.
    Link {
        identity: NewExternalIdentity,
        method: LinkMethod,
        at: DateTime<Utc>,
    },
    /// Refused when it is the account's last way to sign in.
    Unlink {
        identity_id: Uuid,
        at: DateTime<Utc>,
    },
    /// A sign-in vouched for by the identity's provider. `provider_mfa`: the
    /// provider asserted a second factor and the operator trusts that; without
    /// it, an account with a second factor is refused (the write side asks for
    /// the factor first). A lockout does not bar it: nothing here can be guessed.
    SignIn {
        identity_id: Uuid,
        session_id: Uuid,
        provider_mfa: bool,
        at: DateTime<Utc>,
    },
}

impl User {
    pub fn external_identity(&self, identity_id: Uuid) -> Option<&ExternalIdentity> {
        self.external_identities
            .iter()
            .find(|i| i.identity_id == identity_id)
    }

    /// The account's identity at `provider`, if it has one.
    pub fn external_identity_at(&self, provider: &str) -> Option<&ExternalIdentity> {
        self.external_identities
            .iter()
            .find(|i| i.provider == provider)
    }

    /// How many ways the account has to sign in on its own: its password, each
    /// passkey, each external identity. Removing one of them is refused when it
    /// is the last.
    pub fn ways_to_sign_in(&self) -> usize {
        usize::from(self.has_password()) + self.passkeys.len() + self.external_identities.len()
    }

    /// The `amr` values of a sign-in with an identity of `provider`.
    pub fn federated_factors(provider: &str, provider_mfa: bool) -> Vec<String> {
        let mut factors = vec![FEDERATED_FACTOR.to_owned(), provider_factor(provider)];
        if provider_mfa {
            factors.push(MFA_FACTOR.to_owned());
        }
        factors
    }

    /// Writes `ExternalIdentityLinked` (also the second event of an account
    /// that a provider's sign-in created).
    pub(crate) async fn write_link(
        &mut self,
        sink: &EventSink<Self>,
        identity: NewExternalIdentity,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> Result<(), UserError> {
        if self.external_identity_at(&identity.provider).is_some() {
            return Err(UserError::ProviderAlreadyLinked);
        }
        if self.external_identities.len() >= MAX_EXTERNAL_IDENTITIES {
            return Err(UserError::TooManyExternalIdentities);
        }
        if self.external_identity(identity.identity_id).is_some() {
            return Err(UserError::ProviderAlreadyLinked);
        }
        let NewExternalIdentity {
            identity_id,
            provider,
            subject,
            email,
            email_verified,
        } = identity;
        let linked = UserEvent::ExternalIdentityLinked {
            identity_id,
            provider,
            external_subject: subject,
            external_email: email,
            email_verified,
            method,
            at,
        };
        sink.write(linked, self).await;
        Ok(())
    }

    pub(crate) async fn handle_external_identity(
        &mut self,
        command: ExternalIdentityCommand,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        self.ensure_registered()?;
        match command {
            ExternalIdentityCommand::Link {
                identity,
                method,
                at,
            } => {
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                self.write_link(sink, identity, method, at).await?;
            }
            ExternalIdentityCommand::Unlink { identity_id, at } => {
                let identity = self
                    .external_identity(identity_id)
                    .ok_or(UserError::NoSuchExternalIdentity)?;
                if self.ways_to_sign_in() <= 1 {
                    return Err(UserError::LastWayToSignIn);
                }
                let unlinked = UserEvent::ExternalIdentityUnlinked {
                    identity_id,
                    provider: identity.provider.clone(),
                    at,
                };
                sink.write(unlinked, self).await;
            }
            ExternalIdentityCommand::SignIn {
                identity_id,
                session_id,
                provider_mfa,
                at,
            } => {
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                let identity = self
                    .external_identity(identity_id)
                    .ok_or(UserError::NoSuchExternalIdentity)?;
                if self.has_second_factor() && !provider_mfa {
                    return Err(UserError::SecondFactorRequired);
                }
                let factors = Self::federated_factors(&identity.provider, provider_mfa);
                let logged_in = UserEvent::UserLoggedIn {
                    session_id,
                    factors,
                    at,
                };
                sink.write(logged_in, self).await;
            }
        }
        Ok(())
    }

    /// Applies an external-identity event (see [`crate::UserEvent`]), and marks
    /// the identity used by a federated `UserLoggedIn`; `false` for any other
    /// event.
    pub(crate) fn apply_external_identity(&mut self, event: &UserEvent) -> bool {
        match event {
            UserEvent::ExternalIdentityLinked {
                identity_id,
                provider,
                external_subject,
                external_email,
                at,
                ..
            } => self.external_identities.push(ExternalIdentity {
                identity_id: *identity_id,
                provider: provider.clone(),
                subject: external_subject.clone(),
                email: external_email.clone(),
                linked_at: *at,
                last_used_at: None,
            }),
            UserEvent::ExternalIdentityUnlinked { identity_id, .. } => {
                self.external_identities
                    .retain(|i| i.identity_id != *identity_id);
            }
            _ => return false,
        }
        true
    }

    /// Records the use of the identity a federated sign-in names in its
    /// factors (`idp:<provider>`): one identity per provider, so the name is
    /// enough.
    pub(crate) fn note_federated_login(&mut self, factors: &[String], at: DateTime<Utc>) {
        let Some(provider) = factors.iter().find_map(|f| f.strip_prefix("idp:")) else {
            return;
        };
        if let Some(identity) = self
            .external_identities
            .iter_mut()
            .find(|i| i.provider == provider)
        {
            identity.last_used_at = Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::personal::SealedPasswordHash;
    use crate::second_factor::{SecondFactorCommand, SecondFactorKind};
    use crate::user::UserCommand;

    type UserTest = TestFramework<User>;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
    }

    fn sealed(text: &str) -> PersonalData {
        PersonalData::clear(text)
    }

    fn registered(with_password: bool) -> UserEvent {
        UserEvent::UserRegistered {
            user_id: Uuid::from_u128(1),
            email: sealed("ada@example.com"),
            display_name: None,
            password_hash: with_password.then(|| {
                SealedPasswordHash::clear(crate::PasswordHash::new("$argon2id$stub".into()))
            }),
            registered_at: t(0),
        }
    }

    fn identity(n: u128, provider: &str) -> NewExternalIdentity {
        NewExternalIdentity {
            identity_id: Uuid::from_u128(100 + n),
            provider: provider.to_owned(),
            subject: sealed(&format!("subject-{n}")),
            email: Some(sealed("ada@example.com")),
            email_verified: true,
        }
    }

    fn linked(n: u128, provider: &str, method: LinkMethod) -> UserEvent {
        let identity = identity(n, provider);
        UserEvent::ExternalIdentityLinked {
            identity_id: identity.identity_id,
            provider: identity.provider,
            external_subject: identity.subject,
            external_email: identity.email,
            email_verified: true,
            method,
            at: t(1),
        }
    }

    fn confirmed_totp() -> Vec<UserEvent> {
        let method_id = Uuid::from_u128(50);
        vec![
            UserEvent::SecondFactorAdded {
                method_id,
                kind: SecondFactorKind::Totp,
                secret: Some(sealed("seed")),
                phone: None,
                at: t(1),
            },
            UserEvent::SecondFactorConfirmed {
                method_id,
                step: None,
                at: t(1),
            },
        ]
    }

    #[test]
    fn a_provider_s_first_sign_in_creates_an_account_with_a_verified_address_and_the_identity() {
        let identity = identity(1, "google");
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RegisterWithExternalIdentity {
                user_id: Uuid::from_u128(1),
                email: sealed("ada@example.com"),
                display_name: None,
                email_verified: true,
                identity: identity.clone(),
                at: t(0),
            })
            .then_expect_events(vec![
                UserEvent::UserRegistered {
                    user_id: Uuid::from_u128(1),
                    email: sealed("ada@example.com"),
                    display_name: None,
                    password_hash: None,
                    registered_at: t(0),
                },
                UserEvent::EmailVerified { at: t(0) },
                UserEvent::ExternalIdentityLinked {
                    identity_id: identity.identity_id,
                    provider: "google".into(),
                    external_subject: identity.subject,
                    external_email: identity.email,
                    email_verified: true,
                    method: LinkMethod::SignUp,
                    at: t(0),
                },
            ]);
    }

    #[test]
    fn an_address_the_provider_did_not_verify_stays_unverified() {
        let mut identity = identity(1, "naver");
        identity.email_verified = false;
        let events = UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RegisterWithExternalIdentity {
                user_id: Uuid::from_u128(1),
                email: sealed("ada@example.com"),
                display_name: None,
                email_verified: false,
                identity,
                at: t(0),
            })
            .inspect_result()
            .unwrap();
        assert!(!events
            .iter()
            .any(|e| matches!(e, UserEvent::EmailVerified { .. })));
    }

    #[test]
    fn a_second_identity_of_the_same_provider_is_refused() {
        UserTest::with(())
            .given(vec![
                registered(true),
                linked(1, "google", LinkMethod::Explicit),
            ])
            .when(UserCommand::ExternalIdentity(
                ExternalIdentityCommand::Link {
                    identity: identity(2, "google"),
                    method: LinkMethod::Explicit,
                    at: t(2),
                },
            ))
            .then_expect_error(UserError::ProviderAlreadyLinked);
    }

    #[test]
    fn the_last_way_to_sign_in_cannot_be_unlinked() {
        let only = linked(1, "google", LinkMethod::SignUp);
        UserTest::with(())
            .given(vec![registered(false), only])
            .when(UserCommand::ExternalIdentity(
                ExternalIdentityCommand::Unlink {
                    identity_id: Uuid::from_u128(101),
                    at: t(2),
                },
            ))
            .then_expect_error(UserError::LastWayToSignIn);
    }

    #[test]
    fn an_identity_beside_a_password_can_be_unlinked() {
        UserTest::with(())
            .given(vec![
                registered(true),
                linked(1, "google", LinkMethod::Explicit),
            ])
            .when(UserCommand::ExternalIdentity(
                ExternalIdentityCommand::Unlink {
                    identity_id: Uuid::from_u128(101),
                    at: t(2),
                },
            ))
            .then_expect_events(vec![UserEvent::ExternalIdentityUnlinked {
                identity_id: Uuid::from_u128(101),
                provider: "google".into(),
                at: t(2),
            }]);
    }

    #[test]
    fn a_federated_sign_in_names_the_provider_in_its_factors() {
        let session_id = Uuid::from_u128(9);
        UserTest::with(())
            .given(vec![
                registered(false),
                linked(1, "kakao", LinkMethod::SignUp),
            ])
            .when(UserCommand::ExternalIdentity(
                ExternalIdentityCommand::SignIn {
                    identity_id: Uuid::from_u128(101),
                    session_id,
                    provider_mfa: false,
                    at: t(2),
                },
            ))
            .then_expect_events(vec![UserEvent::UserLoggedIn {
                session_id,
                factors: vec!["fed".into(), "idp:kakao".into()],
                at: t(2),
            }]);
    }

    #[test]
    fn an_account_with_a_second_factor_is_asked_for_it_after_a_federated_sign_in() {
        let mut given = vec![registered(true), linked(1, "google", LinkMethod::Explicit)];
        given.extend(confirmed_totp());
        UserTest::with(())
            .given(given)
            .when(UserCommand::ExternalIdentity(
                ExternalIdentityCommand::SignIn {
                    identity_id: Uuid::from_u128(101),
                    session_id: Uuid::from_u128(9),
                    provider_mfa: false,
                    at: t(2),
                },
            ))
            .then_expect_error(UserError::SecondFactorRequired);
    }

    #[test]
    fn a_trusted_provider_second_factor_stands_for_the_account_s() {
        let mut given = vec![registered(true), linked(1, "google", LinkMethod::Explicit)];
        given.extend(confirmed_totp());
        let session_id = Uuid::from_u128(9);
        UserTest::with(())
            .given(given)
            .when(UserCommand::ExternalIdentity(
                ExternalIdentityCommand::SignIn {
                    identity_id: Uuid::from_u128(101),
                    session_id,
                    provider_mfa: true,
                    at: t(2),
                },
            ))
            .then_expect_events(vec![UserEvent::UserLoggedIn {
                session_id,
                factors: vec!["fed".into(), "idp:google".into(), "mfa".into()],
                at: t(2),
            }]);
    }

    #[test]
    fn a_federated_second_factor_step_records_the_federated_first_factors() {
        let mut given = vec![registered(true), linked(1, "google", LinkMethod::Explicit)];
        given.extend(confirmed_totp());
        let first_factors = User::federated_factors("google", false);
        UserTest::with(())
            .given(given)
            .when(UserCommand::SecondFactor(SecondFactorCommand::Require {
                challenge_id: Uuid::from_u128(7),
                first_factors: first_factors.clone(),
                lock_exempt: true,
                email_login_request: None,
                rehashed: None,
                expires_at: t(7),
                at: t(2),
            }))
            .then_expect_events(vec![UserEvent::SecondFactorRequired {
                challenge_id: Uuid::from_u128(7),
                first_factors,
                expires_at: t(7),
                at: t(2),
            }]);
    }

    #[test]
    fn a_suspended_account_does_not_sign_in_with_its_identity() {
        UserTest::with(())
            .given(vec![
                registered(false),
                linked(1, "google", LinkMethod::SignUp),
                UserEvent::UserSuspended {
                    reason: "abuse".into(),
                    at: t(1),
                },
            ])
            .when(UserCommand::ExternalIdentity(
                ExternalIdentityCommand::SignIn {
                    identity_id: Uuid::from_u128(101),
                    session_id: Uuid::from_u128(9),
                    provider_mfa: false,
                    at: t(2),
                },
            ))
            .then_expect_error(UserError::Suspended);
    }

    #[test]
    fn a_passkey_is_not_the_last_way_in_while_an_identity_is_linked() {
        use crate::passkey::PasskeyCommand;
        let passkey = UserEvent::PasskeyRegistered {
            passkey_id: Uuid::from_u128(60),
            credential: sealed("credential"),
            passkey_name: sealed("key"),
            counter: 0,
            backup_eligible: true,
            backup_state: true,
            discoverable: Some(true),
            at: t(1),
        };
        UserTest::with(())
            .given(vec![
                registered(false),
                passkey,
                linked(1, "google", LinkMethod::Explicit),
            ])
            .when(UserCommand::Passkey(PasskeyCommand::Remove {
                passkey_id: Uuid::from_u128(60),
                at: t(2),
            }))
            .then_expect_events(vec![UserEvent::PasskeyRemoved {
                passkey_id: Uuid::from_u128(60),
                backup_codes_revoked: false,
                at: t(2),
            }]);
    }
}
