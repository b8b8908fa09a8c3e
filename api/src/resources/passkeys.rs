//! Passkeys (WebAuthn): registering one on a signed-in account and managing them
//! (`/v1/passkeys…`), signing in with one alone (`/v1/auth/passkey/…`), and
//! accounts that have passkeys and no password (`/v1/auth/passkey/register/…`).
//! The second-factor use is in [`crate::resources::mfa`] (`challenge`, `verify`).
//!
//! Every ceremony is a start, answering `{challenge_id, options}` where `options`
//! is what `navigator.credentials.create()` or `.get()` takes in WebAuthn's JSON
//! form (`{"publicKey": {...}}`, for `PublicKeyCredential.parseCreationOptionsFromJSON`
//! / `parseRequestOptionsFromJSON`), and a finish taking the `challenge_id` and the
//! browser's `credential.toJSON()`. A `challenge_id` works once and expires
//! (`KEYLEDGER_WEBAUTHN_CEREMONY_TTL_SECS`); the relying party is
//! `KEYLEDGER_WEBAUTHN_RP_ID` with the origins `KEYLEDGER_WEBAUTHN_ORIGINS`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::{AuthError, PasskeyOptions, PasskeySignUp, PasskeyView};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::browser_session::Delivery;
use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::{bearer, endpoint, failures, json_body, too_many_attempts, unavailable};
use crate::resources::auth::{login_answer, no_store, Registered, TokenResponse};
use crate::resources::mfa::user;
use crate::resources::recovery::REGISTRATION_TAKEN;
use crate::resources::Routes;
use crate::state::State;

/// A ceremony's start.
#[derive(Serialize, ToSchema)]
pub struct CeremonyOptions {
    /// Give it back to the finish; it works once, for a few minutes.
    challenge_id: Uuid,
    /// For `navigator.credentials.create()` or `.get()`: `{"publicKey": {...}}`
    /// in WebAuthn's JSON form (binary values as base64url).
    #[schema(value_type = Object)]
    options: serde_json::Value,
}

/// A ceremony's options, not to be cached.
pub(crate) fn options_answer(options: PasskeyOptions) -> HttpResponse {
    no_store(StatusCode::OK).json(CeremonyOptions {
        challenge_id: options.challenge_id,
        options: options.options,
    })
}

/// A ceremony's finish.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishRequest {
    challenge_id: Uuid,
    /// `credential.toJSON()` of what the browser answered.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
    /// A name for a new passkey ("MacBook", "YubiKey"), 1 to 100 characters by the
    /// rules of a display name; "Passkey" by default.
    #[schema(example = "MacBook")]
    name: Option<String>,
}

/// A sign-in's finish.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInFinishRequest {
    challenge_id: Uuid,
    /// `credential.toJSON()` of what `navigator.credentials.get()` answered.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
    /// The `device_token` of an earlier login to this account (optional).
    device_token: Option<String>,
}

/// A sign-in's start. Read from a JSON object only: every field is optional,
/// and serde would otherwise take an array (`[null]`) for the same struct.
#[derive(Deserialize, ToSchema)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct SignInStartRequest {
    /// The account to sign in to (optional). Without it the authenticator offers
    /// the passkeys it keeps for this site (discoverable credentials, the
    /// browser's autofill with `mediation: "conditional"`).
    #[schema(example = "ada@example.com")]
    email: Option<String>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for SignInStartRequest {
    type Error = String;

    fn try_from(object: serde_json::Map<String, serde_json::Value>) -> Result<Self, Self::Error> {
        // Unknown fields are refused, as everywhere (`deny_unknown_fields`'s words).
        if let Some(unknown) = object.keys().find(|k| *k != "email") {
            return Err(format!("unknown field `{unknown}`, expected `email`"));
        }
        let email = match object.get("email") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(email)) => Some(email.clone()),
            Some(_) => return Err("`email` must be a string".to_owned()),
        };
        Ok(Self { email })
    }
}

/// A passwordless sign-up's start.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUpStartRequest {
    #[schema(example = "ada@example.com")]
    email: String,
    #[schema(example = "Ada Lovelace")]
    display_name: Option<String>,
}

/// A new name.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    #[schema(example = "Work laptop")]
    name: String,
}

/// One passkey of the account.
#[derive(Serialize, ToSchema)]
pub struct PasskeyResponse {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    /// Whether the passkey may be synced to other devices, and whether it is.
    backup_eligible: bool,
    backup_state: bool,
    /// Whether the authenticator keeps it (it signs in without an address typed
    /// first); null when it did not say.
    discoverable: Option<bool>,
}

impl From<PasskeyView> for PasskeyResponse {
    fn from(view: PasskeyView) -> Self {
        Self {
            id: view.passkey_id,
            name: view.name,
            created_at: view.created_at,
            last_used_at: view.last_used_at,
            backup_eligible: view.backup_eligible,
            backup_state: view.backup_state,
            discoverable: view.discoverable,
        }
    }
}

/// A passkey just registered.
#[derive(Serialize, ToSchema)]
pub struct RegisteredPasskey {
    #[serde(flatten)]
    passkey: PasskeyResponse,
    /// Ten single-use backup codes, shown once: when the passkey is the first
    /// second factor of an account with a password.
    backup_codes: Option<Vec<String>>,
}

/// The account's passkeys.
#[derive(Serialize, ToSchema)]
pub struct Passkeys {
    passkeys: Vec<PasskeyResponse>,
}

/// A passkey id from the path: a malformed one is just another passkey the
/// account does not have.
fn passkey_id(path: &str) -> Result<Uuid, ApiError> {
    path.parse()
        .map_err(|_| ApiError::Auth(AuthError::PasskeyNotFound))
}

failures!(
    /// What `register_start` can answer besides 200.
    pub RegisterStartFailures = [
        bearer(),
        ApiError::Forbidden,
        AuthError::ReauthenticationRequired,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Start registering a passkey
///
/// For the signed-in account, after a recent authentication with its factors
/// (`KEYLEDGER_REAUTHENTICATION_WINDOW_SECS`; otherwise 401
/// `reauthentication_required`: step up or sign in again). The options ask for a
/// discoverable credential and user verification, exclude the account's passkeys,
/// and ask for no attestation.
#[utoipa::path(
    post,
    path = "/register/start",
    tag = "passkeys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The options; `Cache-Control: no-store`.",
            body = CeremonyOptions),
        RegisterStartFailures,
    )
)]
pub async fn register_start(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let (user_id, session_id) = user(&caller)?;
    state
        .auth
        .require_recent_authentication(user_id, session_id)
        .await?;
    let options = state.auth.start_passkey_registration(user_id).await?;
    Ok(options_answer(options))
}

failures!(
    /// What `register_finish` can answer besides 201.
    pub RegisterFinishFailures = [
        json_body(),
        bearer(),
        ApiError::Forbidden,
        AuthError::InvalidChallenge,
        AuthError::InvalidPasskey,
        AuthError::InvalidPasskeyName,
        AuthError::PasskeyAlreadyRegistered,
        AuthError::TooManyPasskeys,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Finish registering a passkey
///
/// Verifies the new credential (origin, RP id, challenge, user verification) and
/// keeps it. A credential registered already, to this account or another, is 409
/// `passkey_already_registered`. From now on a password login of this account
/// asks for a second factor, which the passkey is.
#[utoipa::path(
    post,
    path = "/register/finish",
    tag = "passkeys",
    security(("bearer" = [])),
    request_body = FinishRequest,
    responses(
        (status = 201, description = "The passkey; `Cache-Control: no-store`.",
            body = RegisteredPasskey),
        RegisterFinishFailures,
    )
)]
pub async fn register_finish(
    state: State,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<FinishRequest>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, _) = user(&caller)?;
    let body = body.into_inner();
    let request_ctx = ctx.acting_as(&caller.0);
    let added = state
        .auth
        .finish_passkey_registration(
            user_id,
            body.challenge_id,
            body.credential,
            body.name.as_deref(),
            &request_ctx,
        )
        .await?;
    state.settle(added.written).await;
    Ok(no_store(StatusCode::CREATED).json(RegisteredPasskey {
        passkey: added.passkey.into(),
        backup_codes: added.backup_codes,
    }))
}

failures!(
    /// What `list` can answer besides 200.
    pub ListFailures = [bearer(), ApiError::Forbidden, unavailable()]
);

/// List my passkeys
#[utoipa::path(
    get,
    path = "",
    tag = "passkeys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account's passkeys.", body = Passkeys),
        ListFailures,
    )
)]
pub async fn list(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let (user_id, _) = user(&caller)?;
    let passkeys = state.auth.passkeys(user_id).await?;
    Ok(no_store(StatusCode::OK).json(Passkeys {
        passkeys: passkeys.into_iter().map(PasskeyResponse::from).collect(),
    }))
}

failures!(
    /// What `rename` can answer besides 200.
    pub RenameFailures = [
        json_body(),
        bearer(),
        ApiError::Forbidden,
        AuthError::PasskeyNotFound,
        AuthError::InvalidPasskeyName,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Rename a passkey
#[utoipa::path(
    patch,
    path = "/{id}",
    tag = "passkeys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The passkey")),
    request_body = RenameRequest,
    responses(
        (status = 200, description = "The passkey.", body = PasskeyResponse),
        RenameFailures,
    )
)]
pub async fn rename(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<RenameRequest>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, _) = user(&caller)?;
    let passkey_id = passkey_id(&path)?;
    let request_ctx = ctx.acting_as(&caller.0);
    let (view, written) = state
        .auth
        .rename_passkey(user_id, passkey_id, &body.name, &request_ctx)
        .await?;
    state.settle(written).await;
    Ok(no_store(StatusCode::OK).json(PasskeyResponse::from(view)))
}

failures!(
    /// What `remove` can answer besides 204.
    pub RemoveFailures = [
        bearer(),
        ApiError::Forbidden,
        AuthError::ReauthenticationRequired,
        AuthError::PasskeyNotFound,
        AuthError::LastWayToSignIn,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Remove a passkey
///
/// Needs a recent authentication with the account's factors (401
/// `reauthentication_required` otherwise). Refused (409 `last_sign_in_method`)
/// when it is the account's last way to sign in (no password, no other passkey).
/// With the account's last second factor, its backup codes go too.
#[utoipa::path(
    delete,
    path = "/{id}",
    tag = "passkeys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The passkey")),
    responses(
        (status = 204, description = "Removed."),
        RemoveFailures,
    )
)]
pub async fn remove(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, session_id) = user(&caller)?;
    let passkey_id = passkey_id(&path)?;
    state
        .auth
        .require_recent_authentication(user_id, session_id)
        .await?;
    let request_ctx = ctx.acting_as(&caller.0);
    let written = state
        .auth
        .remove_passkey(user_id, passkey_id, &request_ctx)
        .await?;
    state.settle(written).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `sign_in_start` can answer besides 200.
    pub SignInStartFailures = [json_body(), AuthError::InvalidEmail, unavailable()]
);

/// Start a sign-in with a passkey
///
/// With `email`, the options name that account's passkeys; an address with none,
/// or without an account, gets options alike (naming a credential no
/// authenticator holds), so the answer tells nothing. Without, they name none
/// (discoverable sign-in; `mediation: "conditional"` for the browser's autofill).
#[utoipa::path(
    post,
    path = "/passkey/start",
    tag = "passkeys",
    request_body = SignInStartRequest,
    responses(
        (status = 200, description = "The options; `Cache-Control: no-store`.",
            body = CeremonyOptions),
        SignInStartFailures,
    )
)]
pub async fn sign_in_start(
    state: State,
    body: web::Json<SignInStartRequest>,
) -> Result<HttpResponse, ApiError> {
    let options = state
        .auth
        .start_passkey_sign_in(body.email.as_deref())
        .await?;
    Ok(options_answer(options))
}

failures!(
    /// What `sign_in_finish` can answer besides 200.
    pub SignInFinishFailures = [
        json_body(),
        AuthError::InvalidChallenge,
        AuthError::InvalidPasskey,
        AuthError::AccountSuspended,
        AuthError::EmailNotVerified,
        too_many_attempts(),
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Finish a sign-in with a passkey
///
/// Verifies the assertion (origin, RP id, challenge, signature, user
/// verification, a signature counter that moved forward) and starts a session.
/// A passkey with user verification is two factors: the tokens' `amr` is
/// `["hwk", "user", "mfa"]` (`swk` for a passkey that may be synced), and no
/// second step follows. A lockout of the password does not bar it. Anything
/// that does not verify is 401 `invalid_passkey`; a counter that went backwards
/// is also recorded (`PasskeyCloneSuspected`).
#[utoipa::path(
    post,
    path = "/passkey/finish",
    tag = "passkeys",
    request_body = SignInFinishRequest,
    responses(
        (status = 200, description = "A new session; `Cache-Control: no-store`.",
            body = TokenResponse),
        SignInFinishFailures,
    )
)]
pub async fn sign_in_finish(
    state: State,
    ctx: Context,
    delivery: Delivery,
    body: web::Json<SignInFinishRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let outcome = state
        .auth
        .finish_passkey_sign_in(
            body.challenge_id,
            body.credential,
            body.device_token.as_deref(),
            &ctx.0,
        )
        .await?;
    Ok(login_answer(
        &state,
        delivery,
        keyledger_commands::SignIn::Complete(outcome),
    )
    .await)
}

failures!(
    /// What `sign_up_start` can answer besides 200.
    pub SignUpStartFailures = [
        json_body(),
        AuthError::InvalidEmail,
        AuthError::InvalidDisplayName,
        unavailable(),
    ]
);

/// Start a sign-up with a passkey (no password)
///
/// Options to create the passkey of a new account. Nothing is looked up: a taken
/// address gets the same answer.
#[utoipa::path(
    post,
    path = "/passkey/register/start",
    tag = "passkeys",
    request_body = SignUpStartRequest,
    responses(
        (status = 200, description = "The options; `Cache-Control: no-store`.",
            body = CeremonyOptions),
        SignUpStartFailures,
    )
)]
pub async fn sign_up_start(
    state: State,
    body: web::Json<SignUpStartRequest>,
) -> Result<HttpResponse, ApiError> {
    let options = state
        .auth
        .start_passkey_sign_up(&body.email, body.display_name.as_deref())
        .await?;
    Ok(options_answer(options))
}

failures!(
    /// What `sign_up_finish` can answer besides 201 and 202.
    pub SignUpFinishFailures = [
        json_body(),
        AuthError::InvalidChallenge,
        AuthError::InvalidPasskey,
        AuthError::InvalidPasskeyName,
        AuthError::PasskeyAlreadyRegistered,
        AuthError::EmailTaken,
        AuthError::Conflict,
        unavailable(),
    ]
);

/// Finish a sign-up with a passkey (no password)
///
/// Verifies the new credential and creates the account with it; the account has
/// no password and is never asked for one (sign in with `POST
/// /v1/auth/passkey/start`). Like `POST /v1/auth/register`: with address
/// verification on, 202 whether the address was free (a verification mail
/// follows) or taken (its owner is told); with it off, 201 with the account, or
/// 409 `email_taken`.
#[utoipa::path(
    post,
    path = "/passkey/register/finish",
    tag = "passkeys",
    request_body = FinishRequest,
    responses(
        (status = 201, description = "The account exists (verification off).",
            body = Registered),
        (status = 202, description = "Taken (verification on): the address's inbox tells \
            what follows.", body = crate::resources::recovery::Accepted),
        SignUpFinishFailures,
    )
)]
pub async fn sign_up_finish(
    state: State,
    ctx: Context,
    body: web::Json<FinishRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let outcome = state
        .auth
        .finish_passkey_sign_up(
            body.challenge_id,
            body.credential,
            body.name.as_deref(),
            &ctx.0,
        )
        .await?;
    match outcome {
        PasskeySignUp::Registered(registered) => {
            state.settle([registered.written]).await;
            Ok(HttpResponse::Created().json(Registered {
                user_id: registered.user_id,
                email: registered.email.as_str().to_owned(),
            }))
        }
        PasskeySignUp::Accepted(written) => {
            state.settle(written).await;
            Ok(HttpResponse::Accepted().json(REGISTRATION_TAKEN))
        }
    }
}

/// Registers the passkey routes in `/v1/passkeys` and `/v1/auth/passkey/…`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.passkeys = routes
        .passkeys
        .service(endpoint!(self::register_start))
        .service(endpoint!(self::register_finish))
        .service(endpoint!(self::list))
        .service(endpoint!(self::rename, self::remove));
    routes.auth = routes
        .auth
        .service(endpoint!(self::sign_in_start))
        .service(endpoint!(self::sign_in_finish))
        .service(endpoint!(self::sign_up_start))
        .service(endpoint!(self::sign_up_finish));
    routes
}
