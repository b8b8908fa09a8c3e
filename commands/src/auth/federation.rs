//! Social login: signing in, signing up and linking with an identity at another
//! provider, once the API has run the provider's exchange and checked its
//! answer (`keyledger-federation`).
//!
//! The rules about accounts live here: an identity belongs to one account (a
//! claim); a first sign-in creates an account; an address that already has an
//! account is linked automatically only when both the provider and this server
//! say it is verified (otherwise anyone who can set an address at some
//! provider would take over its account here); the app gets a one-time code,
//! never a token, in its URL; an account with a second factor is asked for it.

use base64::Engine;
use chrono::{DateTime, Utc};
use keyledger_domain::{
    DisplayName, Email, ExternalIdentityCommand, Field, LinkMethod, NewExternalIdentity, User,
    UserCommand, UserError,
};
use uuid::Uuid;

use super::second_factor::SignIn;
use super::{store_error, written, AuthError, AuthService, RequestContext, Written};
use crate::email_registry::EmailRegistry;
use crate::federation::{FlowPurpose, Handoff, OAuthFlow};
use crate::store::Loaded;

/// What a provider vouched for, as the API checked it.
#[derive(Clone)]
pub struct FederatedProfile {
    /// The provider's name as configured (`google`, `kakao`).
    pub provider: String,
    /// The provider's id of the person.
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider said the address is its owner's.
    pub email_verified: bool,
    pub name: Option<String>,
    /// The provider asserted a second factor and the operator trusts it.
    pub provider_mfa: bool,
    /// The provider's tokens (JSON) for a provider configured to keep them.
    pub tokens_to_keep: Option<String>,
}

impl std::fmt::Debug for FederatedProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederatedProfile")
            .field("provider", &self.provider)
            .field("email_verified", &self.email_verified)
            .field("provider_mfa", &self.provider_mfa)
            .finish_non_exhaustive()
    }
}

/// What a provider's callback did.
#[derive(Debug)]
pub enum FederationDone {
    /// A sign-in (of a new or existing account): the one-time code for the app
    /// to exchange.
    SignedIn { code: String, written: Vec<Written> },
    /// The identity was linked to the signed-in account that started the flow.
    Linked {
        identity_id: Uuid,
        written: Vec<Written>,
    },
}

/// One external identity as its owner sees it.
#[derive(Debug, Clone)]
pub struct ExternalIdentityView {
    pub identity_id: Uuid,
    pub provider: String,
    /// The address the provider gave when it was linked.
    pub email: Option<String>,
    pub linked_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A random value of 256 bits, URL-safe: a one-time code, a browser binding.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An identity linked to an account (just now, or before), and what linking it
/// wrote.
struct Linked {
    user_id: Uuid,
    identity_id: Uuid,
    written: Vec<Written>,
}

/// The id of `user`'s identity at `provider`. A claim without it is a link that
/// never landed (a crash between the claim and the event): the claim is stale,
/// and the next attempt takes it over.
fn identity_of(user: &User, provider: &str) -> Result<Uuid, AuthError> {
    user.external_identity_at(provider)
        .map(|i| i.identity_id)
        .ok_or(AuthError::Conflict)
}

fn link_refusal(e: UserError) -> AuthError {
    match e {
        UserError::ProviderAlreadyLinked => AuthError::ProviderAlreadyLinked,
        UserError::TooManyExternalIdentities => AuthError::TooManyExternalIdentities,
        UserError::Suspended => AuthError::AccountSuspended,
        UserError::NotRegistered | UserError::Erased => AuthError::UserNotFound,
        _ => AuthError::Conflict,
    }
}

impl AuthService {
    /// Keeps a flow on its way through a provider under its `state`, bound to
    /// the browser holding `browser_binding`.
    pub async fn keep_federation_flow(
        &self,
        state: &str,
        browser_binding: &str,
        flow: &OAuthFlow,
    ) -> Result<(), AuthError> {
        let expires_at = Utc::now() + self.settings.federation_flow_ttl;
        self.oauth_flows
            .put(state, browser_binding, flow, expires_at)
            .await?;
        Ok(())
    }

    /// Takes the flow a provider's callback names: unknown, used, expired or
    /// another provider's `state`, or a browser other than the one that
    /// started it (a forged or replayed callback), is `InvalidState`. Taken
    /// either way: a `state` works once.
    pub async fn take_federation_flow(
        &self,
        provider: &str,
        state: &str,
        browser_binding: Option<&str>,
    ) -> Result<OAuthFlow, AuthError> {
        let taken = self
            .oauth_flows
            .take(provider, state, browser_binding)
            .await?
            .ok_or(AuthError::InvalidState)?;
        if !taken.same_browser {
            return Err(AuthError::InvalidState);
        }
        Ok(taken.flow)
    }

    /// Finishes a flow with the profile the provider vouched for.
    pub async fn finish_federation(
        &self,
        flow: &OAuthFlow,
        profile: FederatedProfile,
        ctx: &RequestContext,
    ) -> Result<FederationDone, AuthError> {
        let outcome = match flow.purpose {
            FlowPurpose::SignIn => self.federated_sign_in(profile, ctx).await,
            FlowPurpose::Link => {
                let user_id = flow.user_id.ok_or(AuthError::InvalidState)?;
                self.link_identity(user_id, profile, ctx).await
            }
        };
        let label = match &outcome {
            Ok(FederationDone::SignedIn { .. }) => "signed_in",
            Ok(FederationDone::Linked { .. }) => "linked",
            Err(AuthError::AccountExists) => "account_exists",
            Err(_) => "refused",
        };
        metrics::counter!("keyledger_federated_callbacks_total", "provider" => flow.provider.clone(), "outcome" => label)
            .increment(1);
        outcome
    }

    async fn federated_sign_in(
        &self,
        profile: FederatedProfile,
        ctx: &RequestContext,
    ) -> Result<FederationDone, AuthError> {
        let holder = self
            .identity_claims
            .holder(&profile.provider, &profile.subject)
            .await?;
        let Linked {
            user_id,
            identity_id,
            written,
        } = match holder {
            Some(user_id) => Linked {
                user_id,
                identity_id: self.identity_at(user_id, &profile.provider).await?,
                written: Vec::new(),
            },
            None => self.first_federated_sign_in(&profile, ctx).await?,
        };
        self.keep_provider_tokens(user_id, identity_id, profile.tokens_to_keep.as_deref())
            .await?;
        let code = random_secret();
        let handoff = Handoff {
            user_id,
            identity_id,
            provider_mfa: profile.provider_mfa,
        };
        let expires_at = Utc::now() + self.settings.federation_code_ttl;
        self.oauth_flows
            .hand_off(&code, &profile.provider, handoff, expires_at)
            .await?;
        Ok(FederationDone::SignedIn { code, written })
    }

    /// An identity no account holds: its address's account when both sides
    /// verified the address, else a new account; `AccountExists` when the
    /// address has an account that may not be linked automatically.
    async fn first_federated_sign_in(
        &self,
        profile: &FederatedProfile,
        ctx: &RequestContext,
    ) -> Result<Linked, AuthError> {
        let email = profile
            .email
            .as_deref()
            .ok_or(AuthError::ProviderEmailMissing)?;
        let email = Email::parse(email).map_err(|_| AuthError::ProviderEmailMissing)?;
        if let Some(owner) = self.emails.lookup(&email).await? {
            return self.link_by_verified_email(owner, profile, ctx).await;
        }
        let user_id = Uuid::new_v4();
        if !self.emails.claim(&email, user_id).await? {
            // Taken a moment ago: the same answer as an address taken before.
            return Err(AuthError::AccountExists);
        }
        let registered = self
            .register_with_identity(user_id, &email, profile, ctx)
            .await;
        match registered {
            Ok(linked) => Ok(linked),
            Err(e) => {
                let _ = self.emails.release(&email, user_id).await;
                Err(e)
            }
        }
    }

    async fn link_by_verified_email(
        &self,
        owner: Uuid,
        profile: &FederatedProfile,
        ctx: &RequestContext,
    ) -> Result<Linked, AuthError> {
        let loaded = self.load_account(owner).await?;
        if !(profile.email_verified && loaded.aggregate().email_verified) {
            return Err(AuthError::AccountExists);
        }
        self.claim_and_link(owner, loaded, profile, LinkMethod::VerifiedEmail, ctx)
            .await
    }

    async fn register_with_identity(
        &self,
        user_id: Uuid,
        email: &Email,
        profile: &FederatedProfile,
        ctx: &RequestContext,
    ) -> Result<Linked, AuthError> {
        // Another sign-in with the same identity created its account first.
        self.holding_identity(profile, user_id, AuthError::Conflict, async {
            let display_name = profile
                .name
                .as_deref()
                .and_then(|name| DisplayName::parse(name).ok());
            let (sealed_email, sealed_name) = self
                .seal_new_identity(user_id, email, display_name.as_ref())
                .await?;
            let identity = self.new_identity(user_id, profile).await?;
            let identity_id = identity.identity_id;
            let at = Utc::now();
            let command = UserCommand::RegisterWithExternalIdentity {
                user_id,
                email: sealed_email,
                display_name: sealed_name,
                email_verified: profile.email_verified,
                identity,
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
                .map_err(|e| store_error(e, |_| AuthError::Conflict))?;
            let mut written: Vec<Written> = written(user_id, &committed).into_iter().collect();
            if !profile.email_verified {
                written.extend(self.request_verification(user_id, ctx).await?);
            }
            Ok(Linked {
                user_id,
                identity_id,
                written,
            })
        })
        .await
    }

    /// Runs `write` holding the claim of `profile`'s identity for `user_id`
    /// (`taken` when an account holds it already), and gives the claim back
    /// when `write` fails.
    async fn holding_identity<T>(
        &self,
        profile: &FederatedProfile,
        user_id: Uuid,
        taken: AuthError,
        write: impl std::future::Future<Output = Result<T, AuthError>>,
    ) -> Result<T, AuthError> {
        let claims = &self.identity_claims;
        if !claims
            .claim(&profile.provider, &profile.subject, user_id)
            .await?
        {
            return Err(taken);
        }
        let result = write.await;
        if result.is_err() {
            let _ = claims
                .release(&profile.provider, &profile.subject, user_id)
                .await;
        }
        result
    }

    /// The identity sealed for `user_id`.
    async fn new_identity(
        &self,
        user_id: Uuid,
        profile: &FederatedProfile,
    ) -> Result<NewExternalIdentity, AuthError> {
        let key = self
            .keys
            .key_for(user_id)
            .await?
            .ok_or(AuthError::UserNotFound)?;
        Ok(NewExternalIdentity {
            identity_id: Uuid::new_v4(),
            provider: profile.provider.clone(),
            subject: key.seal(user_id, Field::ExternalSubject, &profile.subject),
            email: profile
                .email
                .as_deref()
                .map(|email| key.seal(user_id, Field::Email, email)),
            email_verified: profile.email_verified,
        })
    }

    /// Claims the identity for `user_id` and writes the link; gives the claim
    /// back when the link is refused.
    async fn claim_and_link(
        &self,
        user_id: Uuid,
        loaded: Loaded<User>,
        profile: &FederatedProfile,
        method: LinkMethod,
        ctx: &RequestContext,
    ) -> Result<Linked, AuthError> {
        if loaded
            .aggregate()
            .external_identity_at(&profile.provider)
            .is_some()
        {
            return Err(AuthError::ProviderAlreadyLinked);
        }
        self.holding_identity(profile, user_id, AuthError::IdentityInUse, async {
            let identity = self.new_identity(user_id, profile).await?;
            let identity_id = identity.identity_id;
            let at = Utc::now();
            let command = UserCommand::ExternalIdentity(ExternalIdentityCommand::Link {
                identity,
                method,
                at,
            });
            let metadata = self.keys.metadata(ctx, at, None, Some(user_id)).await?;
            let committed = self
                .users
                .execute_loaded(&user_id.to_string(), loaded, command, &metadata)
                .await
                .map_err(|e| store_error(e, link_refusal))?;
            Ok(Linked {
                user_id,
                identity_id,
                written: written(user_id, &committed).into_iter().collect(),
            })
        })
        .await
    }

    /// A signed-in account adds the identity its flow came back with: refused
    /// when another account holds it (`IdentityInUse`); nothing to do when this
    /// one does.
    async fn link_identity(
        &self,
        user_id: Uuid,
        profile: FederatedProfile,
        ctx: &RequestContext,
    ) -> Result<FederationDone, AuthError> {
        let holder = self
            .identity_claims
            .holder(&profile.provider, &profile.subject)
            .await?;
        let loaded = self.load_account(user_id).await?;
        let user = loaded.aggregate();
        if user.suspended {
            return Err(AuthError::AccountSuspended);
        }
        let Linked {
            identity_id,
            written,
            ..
        } = match holder {
            Some(holder) if holder != user_id => return Err(AuthError::IdentityInUse),
            Some(_) => Linked {
                user_id,
                identity_id: identity_of(user, &profile.provider)?,
                written: Vec::new(),
            },
            None => {
                self.claim_and_link(user_id, loaded, &profile, LinkMethod::Explicit, ctx)
                    .await?
            }
        };
        self.keep_provider_tokens(user_id, identity_id, profile.tokens_to_keep.as_deref())
            .await?;
        Ok(FederationDone::Linked {
            identity_id,
            written,
        })
    }

    /// `POST /v1/auth/oauth/exchange`: the session of the sign-in behind a
    /// one-time `code`, or the second-factor step it needs first. The code
    /// works once, whatever the outcome.
    pub async fn exchange_federation_code(
        &self,
        code: &str,
        device_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<SignIn, AuthError> {
        let handoff = self
            .oauth_flows
            .take_handoff(code)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let user_id = handoff.user_id;
        let id = user_id.to_string();
        let _turn = self.gate.enter(&id).await;
        let loaded = self
            .load_account(user_id)
            .await
            .map_err(|_| AuthError::InvalidToken)?;
        let user = loaded.aggregate();
        let identity = user
            .external_identity(handoff.identity_id)
            .ok_or(AuthError::InvalidToken)?;
        let provider = identity.provider.clone();
        if user.suspended {
            return Err(AuthError::AccountSuspended);
        }
        if self.settings.email_verification == super::EmailVerification::Required
            && !user.email_verified
        {
            return Err(AuthError::EmailNotVerified);
        }
        let at = Utc::now();
        let outcome = if user.has_second_factor() && !handoff.provider_mfa {
            let first_factors = User::federated_factors(&provider, false);
            self.require_second_factor(
                (user_id, loaded),
                first_factors,
                (true, None, None),
                at,
                ctx,
            )
            .await
            .map(SignIn::SecondFactorRequired)
        } else {
            let device = device_token.and_then(|token| self.devices.verify(token, user_id));
            let session_id = Uuid::new_v4();
            let factors = User::federated_factors(&provider, handoff.provider_mfa);
            let command = UserCommand::ExternalIdentity(ExternalIdentityCommand::SignIn {
                identity_id: handoff.identity_id,
                session_id,
                provider_mfa: handoff.provider_mfa,
                at,
            });
            self.start_session(
                (user_id, loaded, command),
                (session_id, factors),
                device,
                at,
                ctx,
                || AuthError::InvalidToken,
            )
            .await
            .map(SignIn::Complete)
        };
        let label = match &outcome {
            Ok(SignIn::Complete(_)) => "success",
            Ok(SignIn::SecondFactorRequired(_)) => "second_factor",
            Err(_) => "refused",
        };
        metrics::counter!("keyledger_federated_logins_total", "provider" => provider, "outcome" => label)
            .increment(1);
        outcome
    }

    /// `GET /v1/users/me/identities`.
    pub async fn external_identities(
        &self,
        user_id: Uuid,
    ) -> Result<Vec<ExternalIdentityView>, AuthError> {
        let loaded = self.load_account(user_id).await?;
        let mut views = Vec::new();
        for identity in &loaded.aggregate().external_identities {
            let email = match &identity.email {
                Some(email) => Some(self.keys.open(email, Field::Email).await?),
                None => None,
            };
            views.push(ExternalIdentityView {
                identity_id: identity.identity_id,
                provider: identity.provider.clone(),
                email,
                linked_at: identity.linked_at,
                last_used_at: identity.last_used_at,
            });
        }
        Ok(views)
    }

    /// The id of the account's identity at `provider`.
    async fn identity_at(&self, user_id: Uuid, provider: &str) -> Result<Uuid, AuthError> {
        identity_of(self.load_account(user_id).await?.aggregate(), provider)
    }

    /// Whether the account has an identity at `provider` already.
    pub async fn has_identity_at(&self, user_id: Uuid, provider: &str) -> Result<bool, AuthError> {
        let loaded = self.load_account(user_id).await?;
        Ok(loaded.aggregate().external_identity_at(provider).is_some())
    }

    /// The provider of the account's identity `identity_id`.
    pub async fn external_identity_provider(
        &self,
        user_id: Uuid,
        identity_id: Uuid,
    ) -> Result<String, AuthError> {
        let loaded = self.load_account(user_id).await?;
        loaded
            .aggregate()
            .external_identity(identity_id)
            .map(|i| i.provider.clone())
            .ok_or(AuthError::ExternalIdentityNotFound)
    }

    /// `DELETE /v1/users/me/identities/{id}`: refused when it is the account's
    /// last way to sign in.
    pub async fn unlink_external_identity(
        &self,
        user_id: Uuid,
        identity_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, AuthError> {
        let loaded = self.load_account(user_id).await?;
        let identity = loaded
            .aggregate()
            .external_identity(identity_id)
            .ok_or(AuthError::ExternalIdentityNotFound)?
            .clone();
        let at = Utc::now();
        let command =
            UserCommand::ExternalIdentity(ExternalIdentityCommand::Unlink { identity_id, at });
        let metadata = self.keys.metadata(ctx, at, None, Some(user_id)).await?;
        let committed = self
            .users
            .execute_loaded(&user_id.to_string(), loaded, command, &metadata)
            .await
            .map_err(|e| {
                store_error(e, |inner| match inner {
                    UserError::LastWayToSignIn => AuthError::LastWayToSignIn,
                    UserError::NoSuchExternalIdentity => AuthError::ExternalIdentityNotFound,
                    other => link_refusal(other),
                })
            })?;
        let subject = self
            .keys
            .open(&identity.subject, Field::ExternalSubject)
            .await?;
        self.identity_claims
            .release(&identity.provider, &subject, user_id)
            .await?;
        self.kept_tokens.forget(identity_id).await?;
        Ok(written(user_id, &committed))
    }

    /// Keeps the provider's tokens (JSON) of an identity, sealed with the
    /// person's data key; nothing when there are none to keep.
    pub async fn keep_provider_tokens(
        &self,
        user_id: Uuid,
        identity_id: Uuid,
        tokens: Option<&str>,
    ) -> Result<(), AuthError> {
        let Some(tokens) = tokens else {
            return Ok(());
        };
        let Some(sealed) = self
            .keys
            .seal(user_id, Field::ProviderTokens, tokens)
            .await?
        else {
            return Ok(());
        };
        self.kept_tokens
            .keep(identity_id, user_id, sealed.as_str())
            .await?;
        Ok(())
    }

    /// The provider's tokens (JSON) kept for the account's identity
    /// `identity_id`, if any.
    pub async fn kept_provider_tokens(
        &self,
        user_id: Uuid,
        identity_id: Uuid,
    ) -> Result<Option<String>, AuthError> {
        let Some(sealed) = self.kept_tokens.get(identity_id, user_id).await? else {
            return Ok(None);
        };
        let sealed = keyledger_domain::PersonalData::from_stored(sealed);
        if sealed.owner() != Some(user_id) {
            return Ok(None);
        }
        let clear = self.keys.open(&sealed, Field::ProviderTokens).await?;
        Ok((clear != keyledger_domain::ERASED).then_some(clear))
    }

    /// Drops what storage keeps of an account's identities beside its events:
    /// claims, flows, codes, kept tokens (erasure).
    pub(crate) async fn forget_external_identities(&self, user_id: Uuid) -> Result<(), AuthError> {
        self.identity_claims.release_account(user_id).await?;
        self.oauth_flows.forget_account(user_id).await?;
        self.kept_tokens.forget_account(user_id).await?;
        Ok(())
    }
}
