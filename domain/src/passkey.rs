//! Passkeys (WebAuthn credentials) of an account: a way to sign in without a
//! password, and a phishing-proof second factor after one.
//!
//! The aggregate never verifies a signature. The write side runs the WebAuthn
//! ceremony (challenge, origin, RP id, signature, user verification) and tells
//! the aggregate which passkey answered, with the authenticator's signature
//! counter and backup flags ([`PasskeyAssertion`]). The aggregate keeps the rules
//! that need the account's history: a counter that does not move forward is a
//! possible clone (WebAuthn §6.1.1) and is refused, a removed passkey works no
//! more, and an account keeps at least one way to sign in.
//!
//! What identifies the credential (its id and public key, as webauthn-rs
//! serialises them) and the name its owner gave it are personal data, sealed with
//! the person's data key like an address: erasure makes them unreadable.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::personal::PersonalData;
use crate::second_factor::MFA_FACTOR;
use crate::user::{User, UserError, UserEvent};

/// The `amr` value (RFC 8176) of a key bound to its hardware: a passkey that
/// cannot be backed up (a security key, a device-bound platform key).
pub const HARDWARE_KEY_FACTOR: &str = "hwk";

/// The `amr` value (RFC 8176) of a key that can leave its device: a synced
/// passkey (iCloud Keychain, Google Password Manager, a password manager).
pub const SOFTWARE_KEY_FACTOR: &str = "swk";

/// The `amr` value (RFC 8176) of the user verification (PIN, fingerprint, face)
/// an authenticator performed: with the key, the second factor of a passkey.
pub const USER_VERIFIED_FACTOR: &str = "user";

/// Passkeys one account may have: several devices and a spare or two, few
/// enough that the account stays small to load.
pub const MAX_PASSKEYS: usize = 20;

/// One passkey of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passkey {
    pub passkey_id: Uuid,
    /// The credential (id, public key, algorithm) as webauthn-rs serialises it,
    /// sealed; only the write side opens it.
    pub credential: PersonalData,
    /// The name its owner gave it ("MacBook", "YubiKey"), sealed.
    pub name: PersonalData,
    /// The authenticator's signature counter at its last use (0: it keeps none,
    /// as synced passkeys do).
    pub counter: u32,
    /// Whether the key may be backed up (synced) at all, and whether it is.
    pub backup_eligible: bool,
    pub backup_state: bool,
    /// Whether the authenticator said it keeps the credential (a resident key,
    /// usable without naming the account); `None` when it did not say.
    pub discoverable: Option<bool>,
    pub registered_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl Passkey {
    /// The `amr` value of its key: `swk` when it may be synced, else `hwk`.
    pub fn key_factor(&self) -> &'static str {
        if self.backup_eligible {
            SOFTWARE_KEY_FACTOR
        } else {
            HARDWARE_KEY_FACTOR
        }
    }

    /// Whether an assertion with `counter` moves the signature counter forward.
    /// Authenticators that keep no counter always send 0; a key that once sent
    /// more must go on increasing (a clone would repeat or go back).
    pub fn accepts_counter(&self, counter: u32) -> bool {
        (counter == 0 && self.counter == 0) || counter > self.counter
    }
}

/// What the write side verified: passkey `passkey_id` signed the challenge, with
/// user verification, reporting this counter and these backup flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasskeyAssertion {
    pub passkey_id: Uuid,
    pub counter: u32,
    pub backup_eligible: bool,
    pub backup_state: bool,
}

/// A passkey a registration ceremony made, to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPasskey {
    pub passkey_id: Uuid,
    pub credential: PersonalData,
    pub name: PersonalData,
    pub counter: u32,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub discoverable: Option<bool>,
}

/// Requests about passkeys, a part of [`crate::UserCommand`].
#[derive(Debug, Clone, PartialEq)]
pub enum PasskeyCommand {
    /// A registration ceremony succeeded: keep the passkey. With a password on
    /// the account and no backup codes yet, `backup_code_digests` become them
    /// (the passkey is the account's first second factor).
    Register {
        passkey: NewPasskey,
        backup_code_digests: Vec<String>,
        at: DateTime<Utc>,
    },
    Rename {
        passkey_id: Uuid,
        name: PersonalData,
        at: DateTime<Utc>,
    },
    /// Refused when it is the account's last way to sign in (no password, no
    /// other passkey).
    Remove { passkey_id: Uuid, at: DateTime<Utc> },
    /// A sign-in with the passkey alone (no password): it proves possession and
    /// user verification, two factors. A lockout (of wrong passwords or codes)
    /// does not bar it: it cannot be guessed, and the owner must keep a way in
    /// while someone guesses at the password.
    SignIn {
        assertion: PasskeyAssertion,
        session_id: Uuid,
        at: DateTime<Utc>,
    },
    /// An assertion whose counter did not move forward: the refusal, recorded.
    SuspectClone {
        passkey_id: Uuid,
        presented_counter: u32,
        at: DateTime<Utc>,
    },
}

impl User {
    pub fn passkey(&self, passkey_id: Uuid) -> Option<&Passkey> {
        self.passkeys.iter().find(|p| p.passkey_id == passkey_id)
    }

    /// Whether the account can sign in without a passkey: it has a password.
    pub fn has_password(&self) -> bool {
        self.password_hash.is_some()
    }

    /// Whether `assertion` may sign in: the passkey is the account's and its
    /// counter moves forward.
    pub(crate) fn check_assertion(&self, assertion: PasskeyAssertion) -> Result<(), UserError> {
        let passkey = self
            .passkey(assertion.passkey_id)
            .ok_or(UserError::NoSuchPasskey)?;
        if passkey.accepts_counter(assertion.counter) {
            Ok(())
        } else {
            Err(UserError::PasskeyCounterRegressed)
        }
    }

    /// Writes `PasskeyRegistered` for `passkey` (also the second event of a
    /// passkey-first registration).
    pub(crate) async fn write_new_passkey(
        &mut self,
        sink: &EventSink<Self>,
        passkey: NewPasskey,
        at: DateTime<Utc>,
    ) -> Result<(), UserError> {
        if self.passkeys.len() >= MAX_PASSKEYS {
            return Err(UserError::TooManyPasskeys);
        }
        if self.passkey(passkey.passkey_id).is_some() {
            return Err(UserError::PasskeyExists);
        }
        let NewPasskey {
            passkey_id,
            credential,
            name,
            counter,
            backup_eligible,
            backup_state,
            discoverable,
        } = passkey;
        let registered = UserEvent::PasskeyRegistered {
            passkey_id,
            credential,
            passkey_name: name,
            counter,
            backup_eligible,
            backup_state,
            discoverable,
            at,
        };
        sink.write(registered, self).await;
        Ok(())
    }

    /// The `amr` value of the key behind `assertion`.
    pub fn passkey_factor(&self, assertion: PasskeyAssertion) -> &'static str {
        if assertion.backup_eligible {
            SOFTWARE_KEY_FACTOR
        } else {
            HARDWARE_KEY_FACTOR
        }
    }

    pub(crate) async fn write_passkey_use(
        &mut self,
        sink: &EventSink<Self>,
        assertion: PasskeyAssertion,
        at: DateTime<Utc>,
    ) {
        let used = UserEvent::PasskeyUsed {
            passkey_id: assertion.passkey_id,
            counter: assertion.counter,
            backup_eligible: assertion.backup_eligible,
            backup_state: assertion.backup_state,
            at,
        };
        sink.write(used, self).await;
    }

    pub(crate) async fn handle_passkey(
        &mut self,
        command: PasskeyCommand,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        self.ensure_registered()?;
        match command {
            PasskeyCommand::Register {
                passkey,
                backup_code_digests,
                at,
            } => {
                let first_factor = !self.has_second_factor();
                self.write_new_passkey(sink, passkey, at).await?;
                let has_codes = self
                    .backup_codes
                    .as_ref()
                    .is_some_and(|c| c.remaining() > 0);
                // Backup codes stand in for a lost second factor after a
                // password; an account without a password signs in with its
                // passkeys alone, and a code could not replace one.
                if first_factor
                    && self.has_password()
                    && !has_codes
                    && !backup_code_digests.is_empty()
                {
                    let codes = UserEvent::BackupCodesRegenerated {
                        code_digests: backup_code_digests,
                        at,
                    };
                    sink.write(codes, self).await;
                }
            }
            PasskeyCommand::Rename {
                passkey_id,
                name,
                at,
            } => {
                self.passkey(passkey_id).ok_or(UserError::NoSuchPasskey)?;
                let renamed = UserEvent::PasskeyRenamed {
                    passkey_id,
                    passkey_name: name,
                    at,
                };
                sink.write(renamed, self).await;
            }
            PasskeyCommand::Remove { passkey_id, at } => {
                self.passkey(passkey_id).ok_or(UserError::NoSuchPasskey)?;
                if self.ways_to_sign_in() <= 1 {
                    return Err(UserError::LastWayToSignIn);
                }
                let last_factor =
                    self.passkeys.len() == 1 && self.confirmed_second_factors().next().is_none();
                let removed = UserEvent::PasskeyRemoved {
                    passkey_id,
                    backup_codes_revoked: last_factor && self.backup_codes.is_some(),
                    at,
                };
                sink.write(removed, self).await;
            }
            PasskeyCommand::SignIn {
                assertion,
                session_id,
                at,
            } => {
                if self.suspended {
                    return Err(UserError::Suspended);
                }
                self.check_assertion(assertion)?;
                self.write_passkey_use(sink, assertion, at).await;
                let factors = vec![
                    self.passkey_factor(assertion).to_owned(),
                    USER_VERIFIED_FACTOR.to_owned(),
                    MFA_FACTOR.to_owned(),
                ];
                let logged_in = UserEvent::UserLoggedIn {
                    session_id,
                    factors,
                    at,
                };
                sink.write(logged_in, self).await;
            }
            PasskeyCommand::SuspectClone {
                passkey_id,
                presented_counter,
                at,
            } => {
                let passkey = self.passkey(passkey_id).ok_or(UserError::NoSuchPasskey)?;
                if passkey.accepts_counter(presented_counter) {
                    return Err(UserError::PasskeyCounterAccepted);
                }
                let suspected = UserEvent::PasskeyCloneSuspected {
                    passkey_id,
                    stored_counter: passkey.counter,
                    presented_counter,
                    at,
                };
                sink.write(suspected, self).await;
            }
        }
        Ok(())
    }

    /// Applies a passkey event (see [`crate::UserEvent`]); `false` for any
    /// other event.
    pub(crate) fn apply_passkey(&mut self, event: &UserEvent) -> bool {
        match event {
            UserEvent::PasskeyRegistered {
                passkey_id,
                credential,
                passkey_name,
                counter,
                backup_eligible,
                backup_state,
                discoverable,
                at,
            } => self.passkeys.push(Passkey {
                passkey_id: *passkey_id,
                credential: credential.clone(),
                name: passkey_name.clone(),
                counter: *counter,
                backup_eligible: *backup_eligible,
                backup_state: *backup_state,
                discoverable: *discoverable,
                registered_at: *at,
                last_used_at: None,
            }),
            UserEvent::PasskeyRenamed {
                passkey_id,
                passkey_name,
                ..
            } => {
                if let Some(passkey) = self.passkey_mut(*passkey_id) {
                    passkey.name = passkey_name.clone();
                }
            }
            UserEvent::PasskeyRemoved {
                passkey_id,
                backup_codes_revoked,
                ..
            } => {
                self.passkeys.retain(|p| p.passkey_id != *passkey_id);
                if *backup_codes_revoked {
                    self.backup_codes = None;
                }
            }
            UserEvent::PasskeyUsed {
                passkey_id,
                counter,
                backup_eligible,
                backup_state,
                at,
            } => {
                if let Some(passkey) = self.passkey_mut(*passkey_id) {
                    passkey.counter = *counter;
                    passkey.backup_eligible = *backup_eligible;
                    passkey.backup_state = *backup_state;
                    passkey.last_used_at = Some(*at);
                }
            }
            // A record only: the passkey stays (its owner decides), the
            // assertion was refused.
            UserEvent::PasskeyCloneSuspected { .. } => {}
            _ => return false,
        }
        true
    }

    fn passkey_mut(&mut self, passkey_id: Uuid) -> Option<&mut Passkey> {
        self.passkeys
            .iter_mut()
            .find(|p| p.passkey_id == passkey_id)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::second_factor::{FactorProof, SecondFactorCommand};
    use crate::user::UserCommand;

    type UserTest = TestFramework<User>;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
    }

    fn key(n: u128) -> Uuid {
        Uuid::from_u128(100 + n)
    }

    fn registered(with_password: bool) -> UserEvent {
        UserEvent::UserRegistered {
            user_id: Uuid::from_u128(1),
            email: PersonalData::clear("ada@example.com"),
            display_name: None,
            password_hash: with_password.then(|| {
                crate::SealedPasswordHash::clear(crate::PasswordHash::new("$argon2id$stub".into()))
            }),
            registered_at: t(0),
        }
    }

    fn new_passkey(n: u128) -> NewPasskey {
        NewPasskey {
            passkey_id: key(n),
            credential: PersonalData::clear("credential"),
            name: PersonalData::clear("Laptop"),
            counter: 0,
            backup_eligible: false,
            backup_state: false,
            discoverable: Some(true),
        }
    }

    fn passkey_registered(n: u128, counter: u32) -> UserEvent {
        UserEvent::PasskeyRegistered {
            passkey_id: key(n),
            credential: PersonalData::clear("credential"),
            passkey_name: PersonalData::clear("Laptop"),
            counter,
            backup_eligible: false,
            backup_state: false,
            discoverable: Some(true),
            at: t(1),
        }
    }

    fn assertion(n: u128, counter: u32) -> PasskeyAssertion {
        PasskeyAssertion {
            passkey_id: key(n),
            counter,
            backup_eligible: false,
            backup_state: false,
        }
    }

    fn used(n: u128, counter: u32, at: DateTime<Utc>) -> UserEvent {
        UserEvent::PasskeyUsed {
            passkey_id: key(n),
            counter,
            backup_eligible: false,
            backup_state: false,
            at,
        }
    }

    #[test]
    fn the_first_passkey_of_an_account_with_a_password_brings_backup_codes() {
        UserTest::with(())
            .given(vec![registered(true)])
            .when(UserCommand::Passkey(PasskeyCommand::Register {
                passkey: new_passkey(1),
                backup_code_digests: vec!["d1".into()],
                at: t(1),
            }))
            .then_expect_events(vec![
                passkey_registered(1, 0),
                UserEvent::BackupCodesRegenerated {
                    code_digests: vec!["d1".into()],
                    at: t(1),
                },
            ]);
    }

    #[test]
    fn a_passwordless_account_gets_no_backup_codes() {
        UserTest::with(())
            .given(vec![registered(false), passkey_registered(1, 0)])
            .when(UserCommand::Passkey(PasskeyCommand::Register {
                passkey: new_passkey(2),
                backup_code_digests: vec!["d1".into()],
                at: t(1),
            }))
            .then_expect_events(vec![passkey_registered(2, 0)]);
    }

    #[test]
    fn a_passkey_sign_in_is_two_factors_and_ignores_a_password_lockout() {
        let locked = UserEvent::AccountLocked {
            locked_until: t(30),
            failed_attempts: 5,
            unlock_request_id: None,
            at: t(2),
        };
        UserTest::with(())
            .given(vec![registered(true), passkey_registered(1, 3), locked])
            .when(UserCommand::Passkey(PasskeyCommand::SignIn {
                assertion: assertion(1, 4),
                session_id: Uuid::from_u128(9),
                at: t(3),
            }))
            .then_expect_events(vec![
                used(1, 4, t(3)),
                UserEvent::UserLoggedIn {
                    session_id: Uuid::from_u128(9),
                    factors: vec!["hwk".into(), "user".into(), "mfa".into()],
                    at: t(3),
                },
            ]);
    }

    #[test]
    fn a_counter_that_does_not_move_forward_is_refused() {
        for presented in [0, 3, 4] {
            UserTest::with(())
                .given(vec![
                    registered(true),
                    passkey_registered(1, 0),
                    used(1, 4, t(2)),
                ])
                .when(UserCommand::Passkey(PasskeyCommand::SignIn {
                    assertion: assertion(1, presented),
                    session_id: Uuid::from_u128(9),
                    at: t(3),
                }))
                .then_expect_error(UserError::PasskeyCounterRegressed);
        }
        // Keys that keep no counter always send 0, and that is fine.
        UserTest::with(())
            .given(vec![
                registered(true),
                passkey_registered(1, 0),
                used(1, 0, t(2)),
            ])
            .when(UserCommand::SecondFactor(SecondFactorCommand::Prove {
                proof: FactorProof::Passkey(assertion(1, 0)),
                at: t(3),
            }))
            .then_expect_events(vec![used(1, 0, t(3))]);
    }

    #[test]
    fn a_clone_is_recorded_only_for_a_counter_that_went_back() {
        let given = || vec![registered(true), passkey_registered(1, 0), used(1, 4, t(2))];
        UserTest::with(())
            .given(given())
            .when(UserCommand::Passkey(PasskeyCommand::SuspectClone {
                passkey_id: key(1),
                presented_counter: 2,
                at: t(3),
            }))
            .then_expect_events(vec![UserEvent::PasskeyCloneSuspected {
                passkey_id: key(1),
                stored_counter: 4,
                presented_counter: 2,
                at: t(3),
            }]);
        UserTest::with(())
            .given(given())
            .when(UserCommand::Passkey(PasskeyCommand::SuspectClone {
                passkey_id: key(1),
                presented_counter: 5,
                at: t(3),
            }))
            .then_expect_error(UserError::PasskeyCounterAccepted);
    }

    #[test]
    fn the_last_way_to_sign_in_stays() {
        UserTest::with(())
            .given(vec![registered(false), passkey_registered(1, 0)])
            .when(UserCommand::Passkey(PasskeyCommand::Remove {
                passkey_id: key(1),
                at: t(2),
            }))
            .then_expect_error(UserError::LastWayToSignIn);
        // With a password, the last passkey may go, and the backup codes with it.
        let codes = UserEvent::BackupCodesRegenerated {
            code_digests: vec!["d1".into()],
            at: t(1),
        };
        UserTest::with(())
            .given(vec![registered(true), passkey_registered(1, 0), codes])
            .when(UserCommand::Passkey(PasskeyCommand::Remove {
                passkey_id: key(1),
                at: t(2),
            }))
            .then_expect_events(vec![UserEvent::PasskeyRemoved {
                passkey_id: key(1),
                backup_codes_revoked: true,
                at: t(2),
            }]);
    }

    #[test]
    fn a_passkey_makes_a_password_login_wait_for_a_second_factor() {
        UserTest::with(())
            .given(vec![registered(true), passkey_registered(1, 0)])
            .when(UserCommand::RecordLoginSuccess {
                session_id: Uuid::from_u128(9),
                rehashed: None,
                trusted_device: false,
                at: t(2),
            })
            .then_expect_error(UserError::SecondFactorRequired);
    }

    #[test]
    fn a_removed_passkey_signs_in_no_more() {
        let removed = UserEvent::PasskeyRemoved {
            passkey_id: key(1),
            backup_codes_revoked: false,
            at: t(2),
        };
        UserTest::with(())
            .given(vec![registered(true), passkey_registered(1, 0), removed])
            .when(UserCommand::Passkey(PasskeyCommand::SignIn {
                assertion: assertion(1, 1),
                session_id: Uuid::from_u128(9),
                at: t(3),
            }))
            .then_expect_error(UserError::NoSuchPasskey);
    }

    #[test]
    fn a_passwordless_registration_keeps_its_passkey_in_the_same_commit() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RegisterWithPasskey {
                user_id: Uuid::from_u128(1),
                email: PersonalData::clear("ada@example.com"),
                display_name: None,
                passkey: new_passkey(1),
                at: t(0),
            })
            .then_expect_events(vec![
                registered(false),
                UserEvent::PasskeyRegistered {
                    passkey_id: key(1),
                    credential: PersonalData::clear("credential"),
                    passkey_name: PersonalData::clear("Laptop"),
                    counter: 0,
                    backup_eligible: false,
                    backup_state: false,
                    discoverable: Some(true),
                    at: t(0),
                },
            ]);
    }
}
