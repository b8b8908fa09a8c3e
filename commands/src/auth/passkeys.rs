//! Passkeys: registering one on a signed-in account, signing in with one alone
//! (with or without an account hint), using one as the second factor after a
//! password, managing them, and accounts that have passkeys and no password.
//!
//! Every ceremony has a start, which answers the options a browser's
//! `navigator.credentials.create()` / `.get()` takes and keeps webauthn-rs's
//! state in storage under a new `challenge_id`, and a finish, which takes that
//! state (once: see `crate::passkeys`) and verifies the browser's answer. A
//! verified assertion is then a command to the account, which keeps the rules
//! that need its history (the signature counter, the last way to sign in).

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use keyledger_domain::{
    DisplayName, Email, Field, NewPasskey, Passkey, PasskeyAssertion, PasskeyCommand,
    SecondFactorCommand, User, UserCommand, UserError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;
use webauthn_rs::prelude::{
    AttestedPasskeyRegistration, AuthenticationResult, CreationChallengeResponse, Credential,
    CredentialID, DiscoverableAuthentication, Passkey as WebauthnPasskey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
};

use super::second_factor::waiting_login;
use super::{
    store_error, written, AuthError, AuthService, LoginOutcome, Registered, RequestContext, Written,
};
use crate::email_registry::EmailRegistry;
use crate::passkeys::CeremonyPurpose;
use crate::store::Loaded;
use keyledger_domain::FactorProof;

/// What a ceremony's start answers: the id to finish it with, and the options
/// for `navigator.credentials.create()` or `.get()` (`{"publicKey": {...}}`).
pub struct PasskeyOptions {
    pub challenge_id: Uuid,
    pub options: Value,
}

/// One passkey as its owner sees it: nothing that identifies the credential.
#[derive(Debug, Clone)]
pub struct PasskeyView {
    pub passkey_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub discoverable: Option<bool>,
}

/// A passkey registered on a signed-in account.
pub struct PasskeyAdded {
    pub passkey: PasskeyView,
    /// New backup codes, shown once: when the passkey is the first second
    /// factor of an account with a password.
    pub backup_codes: Option<Vec<String>>,
    pub written: Option<Written>,
}

/// What a passwordless sign-up became: the account (verification off), or
/// nothing to tell (verification on: the inbox tells its owner).
pub enum PasskeySignUp {
    Registered(Registered),
    Accepted(Vec<Written>),
}

/// webauthn-rs's state of a sign-in, with what it is keyed to.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SignInState {
    /// Options that named the account's credentials.
    Account { state: PasskeyAuthentication },
    /// Options that named no credential (the authenticator offers its own),
    /// or stand-ins for an address without passkeys.
    Discoverable { state: DiscoverableAuthentication },
}

/// webauthn-rs's state of a registration: any passkey, or (with an attestation
/// allowlist) only an attested one of a listed model.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RegistrationState {
    Passkey { state: PasskeyRegistration },
    Attested { state: AttestedPasskeyRegistration },
}

/// webauthn-rs's state of a passwordless sign-up, with the account to create.
#[derive(Serialize, Deserialize)]
struct SignUpState {
    state: RegistrationState,
    email: String,
    display_name: Option<String>,
}

/// A passkey's name: shown to its owner like a display name, so held to the
/// same rules (no control or format characters that could make it read as
/// something else).
fn passkey_name(name: Option<&str>) -> Result<DisplayName, AuthError> {
    DisplayName::parse(name.unwrap_or("Passkey")).map_err(|_| AuthError::InvalidPasskeyName)
}

fn refusal(e: UserError) -> AuthError {
    match e {
        UserError::NoSuchPasskey => AuthError::PasskeyNotFound,
        UserError::PasskeyExists => AuthError::PasskeyAlreadyRegistered,
        UserError::TooManyPasskeys => AuthError::TooManyPasskeys,
        UserError::LastWayToSignIn => AuthError::LastWayToSignIn,
        UserError::Suspended => AuthError::AccountSuspended,
        UserError::PasskeyCounterRegressed => AuthError::InvalidPasskey,
        UserError::NotRegistered | UserError::Erased => AuthError::UserNotFound,
        _ => AuthError::Conflict,
    }
}

/// Options as webauthn-rs makes them, with a discoverable credential preferred
/// (`residentKey: "preferred"`): a passkey the authenticator keeps signs in
/// without an address typed first. webauthn-rs asks for none by default; the
/// option is plain data, and finishing does not depend on it.
fn prefer_discoverable(mut options: Value) -> Value {
    if let Some(selection) = options
        .pointer_mut("/publicKey/authenticatorSelection")
        .and_then(Value::as_object_mut)
    {
        selection.insert("residentKey".into(), Value::from("preferred"));
        selection.insert("requireResidentKey".into(), Value::from(false));
    }
    options
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("webauthn-rs's types serialise")
}

impl AuthService {
    fn ceremony_expiry(&self) -> DateTime<Utc> {
        Utc::now() + self.settings.passkey_ceremony_ttl
    }

    fn webauthn(&self) -> &webauthn_rs::Webauthn {
        &self.settings.relying_party.webauthn
    }

    pub(super) async fn load_account(&self, user_id: Uuid) -> Result<Loaded<User>, AuthError> {
        let loaded = self
            .users
            .load_fresh(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, refusal))?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased {
            return Err(AuthError::UserNotFound);
        }
        Ok(loaded)
    }

    /// The account's passkeys as webauthn-rs knows them, paired with the
    /// account's record. The counter webauthn-rs gets is 0, which it checks
    /// nothing against: the account's record decides ([`Passkey::accepts_counter`])
    /// and records a refusal with the counter it was shown, which webauthn-rs's
    /// own refusal would not name.
    async fn open_passkeys<'u>(
        &self,
        user_id: Uuid,
        user: &'u User,
    ) -> Result<Vec<(&'u Passkey, WebauthnPasskey)>, AuthError> {
        let mut opened = Vec::with_capacity(user.passkeys.len());
        for passkey in &user.passkeys {
            if passkey.credential.owner() != Some(user_id) {
                continue;
            }
            let clear = self
                .keys
                .open(&passkey.credential, Field::PasskeyCredential)
                .await?;
            let Ok(mut credential) = serde_json::from_str::<Credential>(&clear) else {
                continue;
            };
            credential.counter = 0;
            opened.push((passkey, WebauthnPasskey::from(credential)));
        }
        Ok(opened)
    }

    /// The clear (opened) name of a passkey.
    async fn view(&self, passkey: &Passkey) -> Result<PasskeyView, AuthError> {
        Ok(PasskeyView {
            passkey_id: passkey.passkey_id,
            name: self.keys.open(&passkey.name, Field::PasskeyName).await?,
            created_at: passkey.registered_at,
            last_used_at: passkey.last_used_at,
            backup_eligible: passkey.backup_eligible,
            backup_state: passkey.backup_state,
            discoverable: passkey.discoverable,
        })
    }

    /// webauthn-rs's options and state of a registration for `user_id`: of an
    /// attested passkey of a listed model when the relying party has an
    /// attestation allowlist, of any passkey otherwise.
    fn start_registration(
        &self,
        user_id: Uuid,
        (name, display_name): (&str, &str),
        exclude: Option<Vec<CredentialID>>,
    ) -> Result<(CreationChallengeResponse, RegistrationState), AuthError> {
        let unavailable = |e: webauthn_rs::prelude::WebauthnError| {
            AuthError::Unavailable(format!("webauthn: {e}"))
        };
        match &self.settings.relying_party.attestation {
            Some(allowlist) => {
                let (options, state) = self
                    .webauthn()
                    .start_attested_passkey_registration(
                        user_id,
                        name,
                        display_name,
                        exclude,
                        allowlist.clone(),
                        None,
                    )
                    .map_err(unavailable)?;
                Ok((options, RegistrationState::Attested { state }))
            }
            None => {
                let (options, state) = self
                    .webauthn()
                    .start_passkey_registration(user_id, name, display_name, exclude)
                    .map_err(unavailable)?;
                Ok((options, RegistrationState::Passkey { state }))
            }
        }
    }

    /// Keeps webauthn-rs's `state` of a ceremony under `challenge_id` until it
    /// expires, and answers its `options`.
    async fn keep_ceremony(
        &self,
        challenge_id: Uuid,
        purpose: CeremonyPurpose,
        user_id: Option<Uuid>,
        state: &impl Serialize,
        options: Value,
    ) -> Result<PasskeyOptions, AuthError> {
        self.ceremonies
            .put(
                challenge_id,
                purpose,
                user_id,
                &json(state),
                self.ceremony_expiry(),
            )
            .await?;
        Ok(PasskeyOptions {
            challenge_id,
            options,
        })
    }

    /// `POST /v1/passkeys/register/start`: options to create a passkey for
    /// `user_id`, excluding the credentials it has (an authenticator that holds
    /// one says so instead of making another).
    pub async fn start_passkey_registration(
        &self,
        user_id: Uuid,
    ) -> Result<PasskeyOptions, AuthError> {
        let loaded = self.load_account(user_id).await?;
        let user = loaded.aggregate();
        let email = match &user.email {
            Some(email) => self.keys.open(email, Field::Email).await?,
            None => return Err(AuthError::UserNotFound),
        };
        let display_name = match &user.display_name {
            Some(name) => self.keys.open(name, Field::DisplayName).await?,
            None => email.clone(),
        };
        let exclude: Vec<CredentialID> = self
            .open_passkeys(user_id, user)
            .await?
            .into_iter()
            .map(|(_, passkey)| passkey.cred_id().clone())
            .collect();
        let (options, state) =
            self.start_registration(user_id, (&email, &display_name), Some(exclude))?;
        let challenge_id = Uuid::new_v4();
        self.keep_ceremony(
            challenge_id,
            CeremonyPurpose::Registration,
            Some(user_id),
            &state,
            prefer_discoverable(serde_json::to_value(options).unwrap_or_default()),
        )
        .await
    }

    /// `POST /v1/passkeys/register/finish`: verifies the new credential against
    /// the ceremony `challenge_id` (started by `user_id`) and keeps it.
    pub async fn finish_passkey_registration(
        &self,
        user_id: Uuid,
        challenge_id: Uuid,
        credential: Value,
        name: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<PasskeyAdded, AuthError> {
        let name = passkey_name(name)?;
        let ceremony = self
            .ceremonies
            .take(challenge_id, CeremonyPurpose::Registration)
            .await?
            .filter(|c| c.user_id == Some(user_id))
            .ok_or(AuthError::InvalidChallenge)?;
        let state: RegistrationState =
            serde_json::from_str(&ceremony.state).map_err(|_| AuthError::InvalidChallenge)?;
        let (passkey, credential) = self.verify_new_credential(credential, &state)?;
        if !self
            .passkey_claims
            .claim(passkey.cred_id().as_ref(), user_id)
            .await?
        {
            return Err(AuthError::PasskeyAlreadyRegistered);
        }
        let result = self
            .keep_passkey(user_id, passkey.clone(), credential, name.as_str(), ctx)
            .await;
        if result.is_err() {
            // Best effort: a claim left behind only keeps this one credential
            // from being registered again.
            let _ = self
                .passkey_claims
                .release(passkey.cred_id().as_ref(), user_id)
                .await;
        }
        result
    }

    /// Verifies a registration answer; the passkey, and whether the
    /// authenticator said it keeps the credential.
    fn verify_new_credential(
        &self,
        credential: Value,
        state: &RegistrationState,
    ) -> Result<(WebauthnPasskey, Option<bool>), AuthError> {
        let credential: RegisterPublicKeyCredential =
            serde_json::from_value(credential).map_err(|_| AuthError::InvalidPasskey)?;
        let discoverable = credential
            .extensions
            .cred_props
            .as_ref()
            .and_then(|props| props.rk);
        let passkey = match state {
            RegistrationState::Passkey { state } => self
                .webauthn()
                .finish_passkey_registration(&credential, state),
            RegistrationState::Attested { state } => self
                .webauthn()
                .finish_attested_passkey_registration(&credential, state)
                .map(WebauthnPasskey::from),
        }
        .map_err(|e| {
            tracing::info!(reason = %e, "passkey registration refused");
            AuthError::InvalidPasskey
        })?;
        Ok((passkey, discoverable))
    }

    /// The sealed record of a verified passkey, ready for its account.
    async fn new_passkey(
        &self,
        user_id: Uuid,
        passkey: WebauthnPasskey,
        discoverable: Option<bool>,
        name: &str,
    ) -> Result<NewPasskey, AuthError> {
        let credential = Credential::from(passkey);
        let sealed = self
            .keys
            .seal(user_id, Field::PasskeyCredential, &json(&credential))
            .await?
            .ok_or(AuthError::UserNotFound)?;
        let name = self
            .keys
            .seal(user_id, Field::PasskeyName, name)
            .await?
            .ok_or(AuthError::UserNotFound)?;
        Ok(NewPasskey {
            passkey_id: Uuid::new_v4(),
            credential: sealed,
            name,
            counter: credential.counter,
            backup_eligible: credential.backup_eligible,
            backup_state: credential.backup_state,
            discoverable,
        })
    }

    async fn keep_passkey(
        &self,
        user_id: Uuid,
        passkey: WebauthnPasskey,
        discoverable: Option<bool>,
        name: &str,
        ctx: &RequestContext,
    ) -> Result<PasskeyAdded, AuthError> {
        let loaded = self.load_account(user_id).await?;
        // Offered every time; the account takes them when the rule of
        // `PasskeyCommand::Register` says so, and only then are they shown.
        let (codes, digests) = self.backup_codes.generate();
        let new = self
            .new_passkey(user_id, passkey, discoverable, name)
            .await?;
        let passkey_id = new.passkey_id;
        let at = Utc::now();
        let command = UserCommand::Passkey(PasskeyCommand::Register {
            passkey: new,
            backup_code_digests: digests.clone(),
            at,
        });
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let committed = self
            .users
            .execute_loaded(&user_id.to_string(), loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, refusal))?;
        let user = &committed.aggregate;
        let passkey = user.passkey(passkey_id).ok_or(AuthError::Conflict)?;
        let codes_taken = user
            .backup_codes
            .as_ref()
            .is_some_and(|c| c.digests == digests);
        Ok(PasskeyAdded {
            passkey: self.view(passkey).await?,
            backup_codes: codes_taken.then_some(codes),
            written: written(user_id, &committed),
        })
    }

    /// `GET /v1/passkeys`.
    pub async fn passkeys(&self, user_id: Uuid) -> Result<Vec<PasskeyView>, AuthError> {
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, refusal))?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased {
            return Err(AuthError::UserNotFound);
        }
        let mut views = Vec::with_capacity(user.passkeys.len());
        for passkey in &user.passkeys {
            views.push(self.view(passkey).await?);
        }
        Ok(views)
    }

    /// `PATCH /v1/passkeys/{id}`.
    pub async fn rename_passkey(
        &self,
        user_id: Uuid,
        passkey_id: Uuid,
        name: &str,
        ctx: &RequestContext,
    ) -> Result<(PasskeyView, Option<Written>), AuthError> {
        let name = passkey_name(Some(name))?;
        let loaded = self.load_account(user_id).await?;
        let sealed = self
            .keys
            .seal(user_id, Field::PasskeyName, name.as_str())
            .await?
            .ok_or(AuthError::UserNotFound)?;
        let at = Utc::now();
        let command = UserCommand::Passkey(PasskeyCommand::Rename {
            passkey_id,
            name: sealed,
            at,
        });
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let committed = self
            .users
            .execute_loaded(&user_id.to_string(), loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, refusal))?;
        let passkey = committed
            .aggregate
            .passkey(passkey_id)
            .ok_or(AuthError::Conflict)?;
        Ok((self.view(passkey).await?, written(user_id, &committed)))
    }

    /// `DELETE /v1/passkeys/{id}`: refused when it is the account's last way
    /// to sign in. Its credential id is free again afterwards.
    pub async fn remove_passkey(
        &self,
        user_id: Uuid,
        passkey_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let loaded = self.load_account(user_id).await?;
        let credential_id = self
            .open_passkeys(user_id, loaded.aggregate())
            .await?
            .into_iter()
            .find(|(record, _)| record.passkey_id == passkey_id)
            .map(|(_, passkey)| passkey.cred_id().clone());
        let at = Utc::now();
        let command = UserCommand::Passkey(PasskeyCommand::Remove { passkey_id, at });
        let metadata = self.keys.metadata(ctx, at, Some(user_id), None).await?;
        let committed = self
            .users
            .execute_loaded(&user_id.to_string(), loaded, command, &metadata)
            .await
            .map_err(|e| store_error(e, refusal))?;
        if let Some(credential_id) = credential_id {
            self.passkey_claims
                .release(credential_id.as_ref(), user_id)
                .await?;
        }
        Ok(written(user_id, &committed))
    }

    /// Stand-in credential ids for `email` when it has no passkeys: derived
    /// from the address with a server key, so the same address always gets
    /// the same ones and an unknown address looks like a known one.
    fn decoy_credential(&self, email: &Email) -> String {
        use base64::Engine;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.passkey_decoys)
            .expect("HMAC takes any key length");
        mac.update(email.as_str().as_bytes());
        let id = &mac.finalize().into_bytes()[..16];
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
    }

    /// `POST /v1/auth/passkey/start`: options to sign in with a passkey. With
    /// `email`, the options name that account's credentials (an address with
    /// none, or no account, gets stand-ins that no authenticator holds: the
    /// answer is alike); without, they name none, and the authenticator offers
    /// the passkeys it keeps (discoverable credentials, conditional UI).
    pub async fn start_passkey_sign_in(
        &self,
        email: Option<&str>,
    ) -> Result<PasskeyOptions, AuthError> {
        let email = email
            .map(|e| Email::parse(e).map_err(|_| AuthError::InvalidEmail))
            .transpose()?;
        let account = match &email {
            Some(email) => self.emails.lookup(email).await?,
            None => None,
        };
        let challenge_id = Uuid::new_v4();
        if let Some(user_id) = account {
            let loaded = self.load_account(user_id).await?;
            let passkeys: Vec<WebauthnPasskey> = self
                .open_passkeys(user_id, loaded.aggregate())
                .await?
                .into_iter()
                .map(|(_, passkey)| passkey)
                .collect();
            if !passkeys.is_empty() {
                let (options, state) = self
                    .webauthn()
                    .start_passkey_authentication(&passkeys)
                    .map_err(|e| AuthError::Unavailable(format!("webauthn: {e}")))?;
                let state = SignInState::Account { state };
                let options = serde_json::to_value(options).unwrap_or_default();
                return self
                    .keep_ceremony(
                        challenge_id,
                        CeremonyPurpose::SignIn,
                        Some(user_id),
                        &state,
                        options,
                    )
                    .await;
            }
        }
        let (options, state) = self
            .webauthn()
            .start_discoverable_authentication()
            .map_err(|e| AuthError::Unavailable(format!("webauthn: {e}")))?;
        let mut options = serde_json::to_value(options).unwrap_or_default();
        if let Some(email) = &email {
            // An address without passkeys: options shaped like an account's.
            if let Some(public_key) = options.get_mut("publicKey").and_then(Value::as_object_mut) {
                public_key.insert(
                    "allowCredentials".into(),
                    serde_json::json!([{"type": "public-key", "id": self.decoy_credential(email)}]),
                );
            }
            if let Some(outer) = options.as_object_mut() {
                outer.remove("mediation");
            }
        }
        let state = SignInState::Discoverable { state };
        self.keep_ceremony(challenge_id, CeremonyPurpose::SignIn, None, &state, options)
            .await
    }

    /// `POST /v1/auth/passkey/finish`: verifies the assertion against the
    /// ceremony and starts a session. Possession of the key and the user
    /// verification it performed are two factors: no second step follows.
    pub async fn finish_passkey_sign_in(
        &self,
        challenge_id: Uuid,
        credential: Value,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<LoginOutcome, AuthError> {
        let outcome = self
            .passkey_sign_in(challenge_id, credential, device_token, ctx)
            .await;
        let label = match &outcome {
            Ok(_) => "success",
            Err(AuthError::InvalidPasskey) => "invalid_passkey",
            Err(AuthError::InvalidChallenge) => "invalid_challenge",
            Err(_) => "refused",
        };
        metrics::counter!("keyledger_passkey_logins_total", "outcome" => label).increment(1);
        outcome
    }

    async fn passkey_sign_in(
        &self,
        challenge_id: Uuid,
        credential: Value,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<LoginOutcome, AuthError> {
        let ceremony = self
            .ceremonies
            .take(challenge_id, CeremonyPurpose::SignIn)
            .await?
            .ok_or(AuthError::InvalidChallenge)?;
        let state: SignInState =
            serde_json::from_str(&ceremony.state).map_err(|_| AuthError::InvalidChallenge)?;
        let credential: PublicKeyCredential =
            serde_json::from_value(credential).map_err(|_| AuthError::InvalidPasskey)?;
        let user_id = match (&state, ceremony.user_id) {
            (SignInState::Account { .. }, Some(user_id)) => user_id,
            (SignInState::Discoverable { .. }, _) => {
                let (user_handle, _) = self
                    .webauthn()
                    .identify_discoverable_authentication(&credential)
                    .map_err(|_| AuthError::InvalidPasskey)?;
                user_handle
            }
            (SignInState::Account { .. }, None) => return Err(AuthError::InvalidChallenge),
        };
        let id = user_id.to_string();
        let _turn = self.gate.enter(&id).await;
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidPasskey))?;
        let user = loaded.aggregate();
        if !user.is_registered() || user.erased {
            return Err(AuthError::InvalidPasskey);
        }
        let opened = self.open_passkeys(user_id, user).await?;
        let presented = credential.get_credential_id();
        let (record, passkey) = opened
            .iter()
            .find(|(_, passkey)| AsRef::<[u8]>::as_ref(passkey.cred_id()) == presented)
            .ok_or(AuthError::InvalidPasskey)?;
        let verified = match state {
            SignInState::Account { state } => self
                .webauthn()
                .finish_passkey_authentication(&credential, &state),
            SignInState::Discoverable { state } => self
                .webauthn()
                .finish_discoverable_authentication_v2(&credential, state, passkey),
        };
        let result = self
            .verified_assertion(user_id, record, verified, ctx)
            .await?;
        if user.suspended {
            return Err(AuthError::AccountSuspended);
        }
        if self.settings.email_verification == super::EmailVerification::Required
            && !user.email_verified
        {
            return Err(AuthError::EmailNotVerified);
        }
        let assertion = assertion_of(record.passkey_id, &result);
        let device = device_token.and_then(|token| self.devices.verify(token, user_id));
        let at = Utc::now();
        let session_id = Uuid::new_v4();
        let factors = vec![
            user.passkey_factor(assertion).to_owned(),
            keyledger_domain::passkey::USER_VERIFIED_FACTOR.to_owned(),
            keyledger_domain::MFA_FACTOR.to_owned(),
        ];
        let command = UserCommand::Passkey(PasskeyCommand::SignIn {
            assertion,
            session_id,
            at,
        });
        self.start_session(
            (user_id, loaded, command),
            (session_id, factors),
            device,
            at,
            ctx,
            || AuthError::InvalidPasskey,
        )
        .await
    }

    /// The result of webauthn-rs's check of an assertion of `record`, with the
    /// account's counter rule applied: a counter that did not move forward is
    /// recorded (`PasskeyCloneSuspected`) and refused.
    async fn verified_assertion(
        &self,
        user_id: Uuid,
        record: &Passkey,
        verified: Result<AuthenticationResult, webauthn_rs::prelude::WebauthnError>,
        ctx: &RequestContext,
    ) -> Result<AuthenticationResult, AuthError> {
        let presented_counter = match verified {
            Ok(result) if record.accepts_counter(result.counter()) => return Ok(result),
            Ok(result) => result.counter(),
            Err(e) => {
                tracing::info!(reason = %e, "passkey assertion refused");
                return Err(AuthError::InvalidPasskey);
            }
        };
        let at = Utc::now();
        let command = UserCommand::Passkey(PasskeyCommand::SuspectClone {
            passkey_id: record.passkey_id,
            presented_counter,
            at,
        });
        let metadata = self.keys.metadata(ctx, at, None, Some(user_id)).await?;
        // A record of the refusal: if it cannot be written (a concurrent
        // change), the refusal stands all the same.
        let _ = self
            .users
            .execute(&user_id.to_string(), command, &metadata)
            .await;
        metrics::counter!("keyledger_passkey_clones_suspected_total").increment(1);
        Err(AuthError::InvalidPasskey)
    }

    /// `POST /v1/mfa/challenge` for a passkey: options naming the account's
    /// passkeys, for the login step behind `mfa_token`. Asking again replaces
    /// the earlier options.
    /// `None` when `method_id` is no passkey of the account (another kind of
    /// method, answered by sending a code).
    pub async fn start_passkey_second_factor(
        &self,
        mfa_token: &str,
        method_id: Uuid,
    ) -> Result<Option<PasskeyOptions>, AuthError> {
        let (user_id, challenge_id) = self
            .mfa_tokens
            .open(mfa_token)
            .ok_or(AuthError::InvalidMfaToken)?;
        let loaded = self
            .users
            .load(&user_id.to_string())
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidMfaToken))?;
        let user = loaded.aggregate();
        waiting_login(user, challenge_id, Utc::now())?;
        if user.passkey(method_id).is_none() {
            return Ok(None);
        }
        let passkeys: Vec<WebauthnPasskey> = self
            .open_passkeys(user_id, user)
            .await?
            .into_iter()
            .map(|(_, passkey)| passkey)
            .collect();
        if passkeys.is_empty() {
            return Err(AuthError::SecondFactorNotFound);
        }
        let (options, state) = self
            .webauthn()
            .start_passkey_authentication(&passkeys)
            .map_err(|e| AuthError::Unavailable(format!("webauthn: {e}")))?;
        self.keep_ceremony(
            challenge_id,
            CeremonyPurpose::SecondFactor,
            Some(user_id),
            &state,
            serde_json::to_value(options).unwrap_or_default(),
        )
        .await
        .map(Some)
    }

    /// `POST /v1/mfa/verify` with a passkey's `credential`: completes the login
    /// step behind `mfa_token`. An assertion that does not verify counts like a
    /// wrong code (towards the lockout and the step's attempts).
    pub async fn verify_second_factor_passkey(
        &self,
        mfa_token: &str,
        credential: Value,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<LoginOutcome, AuthError> {
        let (user_id, challenge_id) = self
            .mfa_tokens
            .open(mfa_token)
            .ok_or(AuthError::InvalidMfaToken)?;
        let id = user_id.to_string();
        let _turn = self.gate.enter(&id).await;
        let loaded = self
            .users
            .load_fresh(&id)
            .await
            .map_err(|e| store_error(e, |_| AuthError::InvalidMfaToken))?;
        let user = loaded.aggregate();
        let pending = waiting_login(user, challenge_id, Utc::now())?;
        let mut factors = pending.first_factors.clone();
        let Some(ceremony) = self
            .ceremonies
            .take(challenge_id, CeremonyPurpose::SecondFactor)
            .await?
            .filter(|c| c.user_id == Some(user_id))
        else {
            return Err(AuthError::InvalidChallenge);
        };
        let state: PasskeyAuthentication =
            serde_json::from_str(&ceremony.state).map_err(|_| AuthError::InvalidChallenge)?;
        let opened = self.open_passkeys(user_id, user).await?;
        let checked = serde_json::from_value::<PublicKeyCredential>(credential)
            .ok()
            .and_then(|credential| {
                let presented = credential.get_credential_id().to_vec();
                opened
                    .iter()
                    .find(|(_, passkey)| {
                        AsRef::<[u8]>::as_ref(passkey.cred_id()) == presented.as_slice()
                    })
                    .map(|(record, _)| {
                        (
                            *record,
                            self.webauthn()
                                .finish_passkey_authentication(&credential, &state),
                        )
                    })
            });
        let result = match checked {
            Some((record, verified)) => self
                .verified_assertion(user_id, record, verified, ctx)
                .await
                .map(|result| (record.passkey_id, result)),
            None => Err(AuthError::InvalidPasskey),
        };
        let (passkey_id, result) = match result {
            Ok(found) => found,
            Err(AuthError::InvalidPasskey) => {
                self.reject_code(user_id, loaded, Some(challenge_id), ctx)
                    .await?;
                return Err(AuthError::InvalidPasskey);
            }
            Err(other) => return Err(other),
        };
        let assertion = assertion_of(passkey_id, &result);
        factors.extend([
            user.passkey_factor(assertion).to_owned(),
            keyledger_domain::MFA_FACTOR.to_owned(),
        ]);
        let device = device_token.and_then(|token| self.devices.verify(token, user_id));
        let at = Utc::now();
        let session_id = Uuid::new_v4();
        let command = UserCommand::SecondFactor(SecondFactorCommand::CompleteLogin {
            challenge_id,
            session_id,
            proof: FactorProof::Passkey(assertion),
            at,
        });
        self.start_session(
            (user_id, loaded, command),
            (session_id, factors),
            device,
            at,
            ctx,
            || AuthError::InvalidMfaToken,
        )
        .await
    }

    /// `POST /v1/auth/passkey/register/start`: options to create the passkey of
    /// a new account that will have no password. Nothing is looked up: the
    /// answer is the same for a free address and a taken one.
    pub async fn start_passkey_sign_up(
        &self,
        email: &str,
        display_name: Option<&str>,
    ) -> Result<PasskeyOptions, AuthError> {
        let email = Email::parse(email).map_err(|_| AuthError::InvalidEmail)?;
        let display_name = display_name
            .map(DisplayName::parse)
            .transpose()
            .map_err(|_| AuthError::InvalidDisplayName)?;
        let user_id = Uuid::new_v4();
        let shown = display_name
            .as_ref()
            .map_or(email.as_str(), DisplayName::as_str);
        let (options, state) = self.start_registration(user_id, (email.as_str(), shown), None)?;
        let state = SignUpState {
            state,
            email: email.as_str().to_owned(),
            display_name: display_name.map(|n| n.as_str().to_owned()),
        };
        let challenge_id = Uuid::new_v4();
        self.keep_ceremony(
            challenge_id,
            CeremonyPurpose::SignUp,
            Some(user_id),
            &state,
            prefer_discoverable(serde_json::to_value(options).unwrap_or_default()),
        )
        .await
    }

    /// `POST /v1/auth/passkey/register/finish`: creates the account with its
    /// passkey. With verification on, a taken address gets the same answer
    /// (its owner is mailed that someone tried) and the new account a
    /// verification mail.
    pub async fn finish_passkey_sign_up(
        &self,
        challenge_id: Uuid,
        credential: Value,
        name: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<PasskeySignUp, AuthError> {
        let name = passkey_name(name)?;
        let ceremony = self
            .ceremonies
            .take(challenge_id, CeremonyPurpose::SignUp)
            .await?
            .ok_or(AuthError::InvalidChallenge)?;
        let user_id = ceremony.user_id.ok_or(AuthError::InvalidChallenge)?;
        let SignUpState {
            state,
            email,
            display_name,
        } = serde_json::from_str(&ceremony.state).map_err(|_| AuthError::InvalidChallenge)?;
        let (passkey, discoverable) = self.verify_new_credential(credential, &state)?;
        let email = Email::from_stored(email);
        let display_name = display_name
            .map(|n| DisplayName::parse(&n))
            .transpose()
            .map_err(|_| AuthError::InvalidDisplayName)?;
        let unrevealing = self.settings.email_verification.is_on();
        if !self.emails.claim(&email, user_id).await? {
            if !unrevealing {
                return Err(AuthError::EmailTaken);
            }
            let written = self.notify_registration_attempt(&email, ctx).await?;
            return Ok(PasskeySignUp::Accepted(written));
        }
        let registered = self
            .register_with_passkey(
                user_id,
                (&email, display_name.as_ref()),
                (passkey, discoverable, name.as_str()),
                ctx,
            )
            .await;
        let registered = match registered {
            Ok(registered) => registered,
            Err(e) => {
                let _ = self.emails.release(&email, user_id).await;
                return Err(e);
            }
        };
        if !unrevealing {
            return Ok(PasskeySignUp::Registered(registered));
        }
        let mut written = vec![registered.written];
        written.extend(self.request_verification(user_id, ctx).await?);
        Ok(PasskeySignUp::Accepted(written))
    }

    async fn register_with_passkey(
        &self,
        user_id: Uuid,
        (email, display_name): (&Email, Option<&DisplayName>),
        (passkey, discoverable, name): (WebauthnPasskey, Option<bool>, &str),
        ctx: &RequestContext,
    ) -> Result<Registered, AuthError> {
        let credential_id = passkey.cred_id().clone();
        if !self
            .passkey_claims
            .claim(credential_id.as_ref(), user_id)
            .await?
        {
            return Err(AuthError::PasskeyAlreadyRegistered);
        }
        let result = async {
            let (sealed_email, sealed_name) =
                self.seal_new_identity(user_id, email, display_name).await?;
            let new = self
                .new_passkey(user_id, passkey, discoverable, name)
                .await?;
            let at = Utc::now();
            let command = UserCommand::RegisterWithPasskey {
                user_id,
                email: sealed_email,
                display_name: sealed_name,
                passkey: new,
                at,
            };
            let committed = self
                .users
                .execute_new(
                    &user_id.to_string(),
                    command,
                    &self.keys.metadata(ctx, at, Some(user_id), None).await?,
                )
                .await
                .map_err(|e| store_error(e, |_| AuthError::EmailTaken))?;
            let written = written(user_id, &committed).ok_or(AuthError::Conflict)?;
            Ok(Registered {
                user_id,
                email: email.clone(),
                written,
            })
        }
        .await;
        if result.is_err() {
            let _ = self
                .passkey_claims
                .release(credential_id.as_ref(), user_id)
                .await;
        }
        result
    }

    /// Drops what storage keeps of an account's passkeys beside its events:
    /// its credential claims and open ceremonies (erasure, a reset).
    pub(crate) async fn forget_passkeys(&self, user_id: Uuid) -> Result<(), AuthError> {
        self.passkey_claims.release_account(user_id).await?;
        self.ceremonies.forget_account(user_id).await?;
        Ok(())
    }
}

/// The domain's view of a verified assertion of passkey `passkey_id`.
fn assertion_of(passkey_id: Uuid, result: &AuthenticationResult) -> PasskeyAssertion {
    PasskeyAssertion {
        passkey_id,
        counter: result.counter(),
        backup_eligible: result.backup_eligible(),
        backup_state: result.backup_state(),
    }
}
