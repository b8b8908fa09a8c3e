//! The public face of domain events: what leaves the event store.
//!
//! Stored events may hold secrets (a password hash, a refresh-token hash). Anything
//! published on NATS, printed by the replay tool or shown to an auditor goes through
//! [`IntegrationData`], which names every field it lets out; a new secret field in an
//! event stays inside unless someone deliberately adds it here.

use serde_json::{json, Value};

use std::collections::BTreeSet;

use crate::oauth_client::{ClientSettings, OAuthClientEvent};
use crate::organization::{InvitationAddress, OrganizationEvent, RoleRef};
use crate::platform::PlatformEvent;
use crate::role::RoleEvent;
use crate::service_account::ServiceAccountEvent;
use crate::session::SessionEvent;
use crate::user::UserEvent;

/// Every aggregate type with its event types: the contract documented in
/// `docs/asyncapi.yaml` and checked against it by tests.
pub const EVENT_CATALOGUE: &[(&str, &[&str])] = &[
    ("user", UserEvent::TYPES),
    ("session", SessionEvent::TYPES),
    ("organization", OrganizationEvent::TYPES),
    ("role", RoleEvent::TYPES),
    ("service_account", ServiceAccountEvent::TYPES),
    ("oauth_client", OAuthClientEvent::TYPES),
    ("platform", PlatformEvent::TYPES),
];

/// Integration events that no aggregate emits: the relay derives them from the
/// event log, as `(aggregate_type, event_type)`. `EffectivePermissionsChanged`
/// names every user and service account whose effective permissions in one
/// organization changed, whatever the cause (a role edited or deleted, a member
/// added, removed or given other roles, an account or organization suspended).
pub const DERIVED_EVENT_CATALOGUE: &[(&str, &str)] =
    &[("organization", "EffectivePermissionsChanged")];

/// Roles as other modules name them (see [`RoleRef::label`]).
fn labels(roles: &BTreeSet<RoleRef>) -> Vec<String> {
    roles.iter().map(RoleRef::label).collect()
}

/// The secret-free data of an event, as published to other modules.
pub trait IntegrationData {
    fn integration_data(&self) -> Value;
}

impl IntegrationData for UserEvent {
    fn integration_data(&self) -> Value {
        match self {
            UserEvent::UserRegistered {
                user_id,
                email,
                display_name,
                registered_at,
                password_hash: _,
            } => json!({
                "user_id": user_id,
                "email": email,
                "display_name": display_name,
                "registered_at": registered_at,
            }),
            UserEvent::UserImported {
                email_verified,
                scheme,
                at,
            } => json!({
                "email_verified": email_verified,
                "scheme": scheme,
                "at": at,
            }),
            // `method` is what version 1.0 published; kept for consumers written
            // against it: `password`, or `email` for a sign-in by email.
            UserEvent::UserLoggedIn {
                session_id,
                factors,
                at,
            } => json!({
                "session_id": session_id,
                "method": login_method(factors),
                "factors": factors,
                "at": at,
            }),
            UserEvent::LoginFailed {
                consecutive_failures,
                at,
            } => json!({ "consecutive_failures": consecutive_failures, "at": at }),
            // The unlock request id stays inside, as a mailed link's request id.
            UserEvent::AccountLocked {
                locked_until,
                failed_attempts,
                at,
                unlock_request_id: _,
            } => json!({
                "locked_until": locked_until,
                "failed_attempts": failed_attempts,
                "at": at,
            }),
            UserEvent::AccountUnlocked { at } => json!({ "at": at }),
            UserEvent::PasswordChanged {
                at,
                password_hash: _,
            }
            | UserEvent::PasswordRehashed {
                at,
                password_hash: _,
            } => json!({ "at": at }),
            UserEvent::UserSuspended { reason, at } => json!({ "reason": reason, "at": at }),
            UserEvent::UserReactivated { at }
            | UserEvent::PlatformAdminGranted { at }
            | UserEvent::PlatformAdminRevoked { at }
            | UserEvent::UserErased { at }
            | UserEvent::EmailVerified { at }
            | UserEvent::RegistrationAttempted { at } => json!({ "at": at }),
            // The request id stays inside: with the server's key it makes the
            // mailed link's token.
            UserEvent::EmailVerificationRequested {
                expires_at,
                at,
                request_id: _,
            }
            | UserEvent::PasswordResetRequested {
                expires_at,
                at,
                request_id: _,
            } => json!({ "expires_at": expires_at, "at": at }),
            UserEvent::PasswordReset {
                at,
                password_hash: _,
            } => json!({ "at": at }),
            // Sealed addresses, opened by name when published like
            // `UserRegistered.email`; the request id stays inside.
            UserEvent::EmailChangeRequested {
                new_email,
                expires_at,
                at,
                request_id: _,
            } => json!({ "new_email": new_email, "expires_at": expires_at, "at": at }),
            UserEvent::EmailChanged {
                email,
                previous_email,
                at,
            } => json!({ "email": email, "previous_email": previous_email, "at": at }),
            // The request id stays inside: it makes the link's token and the code.
            UserEvent::EmailLoginRequested {
                expires_at,
                at,
                request_id: _,
            } => json!({ "expires_at": expires_at, "at": at }),
            UserEvent::EmailLoginCodeRejected {
                consecutive_failures,
                at,
            }
            | UserEvent::SecondFactorFailed {
                consecutive_failures,
                at,
            } => json!({ "consecutive_failures": consecutive_failures, "at": at }),
            // The sealed secret stays inside, and so does an SMS method's number
            // (personal data no consumer needs).
            UserEvent::SecondFactorAdded {
                method_id,
                kind,
                at,
                secret: _,
                phone: _,
            } => json!({ "method_id": method_id, "type": kind.as_str(), "at": at }),
            // The request id stays inside: it makes the code.
            UserEvent::SecondFactorCodeSent {
                method_id,
                channel,
                expires_at,
                at,
                request_id: _,
            } => json!({
                "method_id": method_id,
                "channel": channel.as_str(),
                "expires_at": expires_at,
                "at": at,
            }),
            // The time step stays inside: it says when the code was made, which
            // is nobody else's business.
            UserEvent::SecondFactorConfirmed {
                method_id,
                at,
                step: _,
            }
            | UserEvent::SecondFactorUsed {
                method_id,
                at,
                step: _,
            } => json!({ "method_id": method_id, "at": at }),
            UserEvent::SecondFactorRemoved {
                method_id,
                backup_codes_revoked,
                at,
            } => json!({
                "method_id": method_id,
                "backup_codes_revoked": backup_codes_revoked,
                "at": at,
            }),
            // The digests stay inside; how many codes there are is enough.
            UserEvent::BackupCodesRegenerated { code_digests, at } => {
                json!({ "count": code_digests.len(), "at": at })
            }
            UserEvent::BackupCodeUsed {
                remaining,
                at,
                index: _,
            } => json!({ "remaining": remaining, "at": at }),
            UserEvent::SecondFactorsReset { at } => json!({ "at": at }),
            // The challenge id stays inside: with the server's key it makes the
            // `mfa_token`.
            UserEvent::SecondFactorRequired {
                first_factors,
                expires_at,
                at,
                challenge_id: _,
            } => json!({ "first_factors": first_factors, "expires_at": expires_at, "at": at }),
            // The credential (id, public key) and its name stay inside:
            // personal data no consumer needs.
            UserEvent::PasskeyRegistered {
                passkey_id,
                backup_eligible,
                backup_state,
                discoverable,
                at,
                credential: _,
                passkey_name: _,
                counter: _,
            } => json!({
                "passkey_id": passkey_id,
                "backup_eligible": backup_eligible,
                "backup_state": backup_state,
                "discoverable": discoverable,
                "at": at,
            }),
            UserEvent::PasskeyRenamed {
                passkey_id,
                at,
                passkey_name: _,
            } => json!({ "passkey_id": passkey_id, "at": at }),
            UserEvent::PasskeyRemoved {
                passkey_id,
                backup_codes_revoked,
                at,
            } => json!({
                "passkey_id": passkey_id,
                "backup_codes_revoked": backup_codes_revoked,
                "at": at,
            }),
            // The counter stays inside: it tells how often the key was used.
            UserEvent::PasskeyUsed {
                passkey_id,
                backup_state,
                at,
                counter: _,
                backup_eligible: _,
            } => json!({ "passkey_id": passkey_id, "backup_state": backup_state, "at": at }),
            UserEvent::PasskeyCloneSuspected {
                passkey_id,
                stored_counter,
                presented_counter,
                at,
            } => json!({
                "passkey_id": passkey_id,
                "stored_counter": stored_counter,
                "presented_counter": presented_counter,
                "at": at,
            }),
            // The provider's id of the person and the address it gave stay
            // inside: personal data that would let consumers follow the person
            // to the provider.
            UserEvent::ExternalIdentityLinked {
                identity_id,
                provider,
                email_verified,
                method,
                at,
                external_subject: _,
                external_email: _,
            } => json!({
                "identity_id": identity_id,
                "provider": provider,
                "email_verified": email_verified,
                "method": method,
                "at": at,
            }),
            UserEvent::ExternalIdentityUnlinked {
                identity_id,
                provider,
                at,
            } => json!({ "identity_id": identity_id, "provider": provider, "at": at }),
            UserEvent::OAuthConsentGranted {
                client_id,
                scopes,
                at,
            } => json!({ "client_id": client_id, "scopes": scopes, "at": at }),
            UserEvent::OAuthConsentRevoked { client_id, at } => {
                json!({ "client_id": client_id, "at": at })
            }
        }
    }
}

/// The `method` that `UserLoggedIn` 1.0 published, kept for consumers written
/// against it: `email` for a sign-in by email, `passkey` for one with a passkey
/// alone, else `password`.
fn login_method(factors: &[String]) -> &'static str {
    let has = |value: &str| factors.iter().any(|f| f == value);
    if has(crate::user::EMAIL_FACTOR) {
        "email"
    } else if has(crate::external_identity::FEDERATED_FACTOR) {
        "federated"
    } else if !has("pwd")
        && (has(crate::passkey::HARDWARE_KEY_FACTOR) || has(crate::passkey::SOFTWARE_KEY_FACTOR))
    {
        "passkey"
    } else {
        "password"
    }
}

impl IntegrationData for SessionEvent {
    fn integration_data(&self) -> Value {
        match self {
            SessionEvent::SessionStarted {
                session_id,
                user_id,
                device,
                factors,
                started_at,
                expires_at,
                refresh_token_hash: _,
            } => json!({
                "session_id": session_id,
                "user_id": user_id,
                "ip": device.ip,
                "user_agent": device.user_agent,
                "factors": factors,
                "started_at": started_at,
                "expires_at": expires_at,
            }),
            SessionEvent::TokenRefreshed {
                generation,
                at,
                refresh_token_hash: _,
            } => json!({ "generation": generation, "at": at }),
            SessionEvent::RefreshTokenReuseDetected {
                presented_generation,
                current_generation,
                at,
            } => json!({
                "presented_generation": presented_generation,
                "current_generation": current_generation,
                "at": at,
            }),
            SessionEvent::SessionRevoked { reason, at } => json!({ "reason": reason, "at": at }),
            SessionEvent::UserLoggedOut { at } => json!({ "at": at }),
            SessionEvent::OrganizationSelected {
                organization_id,
                at,
            } => json!({ "organization_id": organization_id, "at": at }),
            SessionEvent::SessionReauthenticated { factors, at } => {
                json!({ "factors": factors, "at": at })
            }
            SessionEvent::SessionGrantedToClient {
                client_id,
                scope,
                at,
                ..
            } => json!({ "client_id": client_id, "scope": scope, "at": at }),
        }
    }
}

impl IntegrationData for OrganizationEvent {
    fn integration_data(&self) -> Value {
        use OrganizationEvent as E;
        match self {
            E::OrganizationCreated {
                organization_id,
                slug,
                name,
                owner,
                at,
            } => json!({
                "organization_id": organization_id,
                "slug": slug,
                "name": name,
                "owner": owner,
                "at": at,
            }),
            E::OrganizationRenamed { name, at } => json!({ "name": name, "at": at }),
            E::OrganizationSettingsChanged { settings, at } => {
                json!({ "settings": settings, "at": at })
            }
            E::MemberAdded { user_id, roles, at }
            | E::MemberRolesChanged { user_id, roles, at } => {
                json!({ "user_id": user_id, "roles": labels(roles), "at": at })
            }
            E::MemberRemoved { user_id, at } => json!({ "user_id": user_id, "at": at }),
            // Only what the inviter typed, and of an address not even that: never
            // whether it names an account (`invitee` stays in the store).
            E::MemberInvited {
                invitation_id,
                address,
                invitee: _,
                roles,
                invited_by,
                expires_at,
                at,
            } => {
                let (invited, user_id) = match address {
                    InvitationAddress::UserId(user_id) => ("user_id", Some(user_id)),
                    InvitationAddress::Email(_) => ("email", None),
                };
                json!({
                    "invitation_id": invitation_id,
                    "invited": invited,
                    "user_id": user_id,
                    "roles": labels(roles),
                    "invited_by": invited_by,
                    "expires_at": expires_at,
                    "at": at,
                })
            }
            E::InvitationAccepted {
                invitation_id,
                user_id,
                at,
            }
            | E::InvitationDeclined {
                invitation_id,
                user_id,
                at,
            } => json!({ "invitation_id": invitation_id, "user_id": user_id, "at": at }),
            E::InvitationRevoked { invitation_id, at } => {
                json!({ "invitation_id": invitation_id, "at": at })
            }
            E::OrganizationSuspended { reason, at } => json!({ "reason": reason, "at": at }),
            E::OrganizationReactivated { at } => json!({ "at": at }),
        }
    }
}

impl IntegrationData for RoleEvent {
    fn integration_data(&self) -> Value {
        match self {
            RoleEvent::RoleDefined {
                role_id,
                organization_id,
                name,
                permissions,
                at,
            } => json!({
                "role_id": role_id,
                "organization_id": organization_id,
                "name": name,
                "permissions": permissions,
                "at": at,
            }),
            RoleEvent::RoleRenamed { name, at } => json!({ "name": name, "at": at }),
            RoleEvent::PermissionUpdated {
                permissions,
                added,
                removed,
                at,
            } => json!({
                "permissions": permissions,
                "added": added,
                "removed": removed,
                "at": at,
            }),
            RoleEvent::RoleDeleted { at } => json!({ "at": at }),
        }
    }
}

impl IntegrationData for PlatformEvent {
    fn integration_data(&self) -> Value {
        match self {
            PlatformEvent::SessionsRevokedBefore { before, reason, at } => {
                json!({ "before": before, "reason": reason, "at": at })
            }
            PlatformEvent::SuspiciousActivityDetected {
                kind,
                client_address_digest,
                accounts_count,
                window_secs,
                detected_at,
            } => json!({
                "kind": kind,
                "client_address_digest": client_address_digest,
                "accounts_count": accounts_count,
                "window_secs": window_secs,
                "detected_at": detected_at,
            }),
        }
    }
}

impl IntegrationData for ServiceAccountEvent {
    fn integration_data(&self) -> Value {
        use ServiceAccountEvent as E;
        match self {
            E::ServiceAccountCreated {
                service_account_id,
                organization_id,
                name,
                roles,
                at,
                secret_hash: _,
            } => json!({
                "service_account_id": service_account_id,
                "organization_id": organization_id,
                "name": name,
                "roles": labels(roles),
                "at": at,
            }),
            E::ServiceAccountRolesChanged { roles, at } => {
                json!({ "roles": labels(roles), "at": at })
            }
            E::ServiceAccountSecretRotated { at, secret_hash: _ } => json!({ "at": at }),
            E::ServiceAccountDeleted { at } => json!({ "at": at }),
        }
    }
}

/// A client's settings as published: what other modules may want to know of an
/// application (who it is, where it sends users, what it may ask for). The token
/// formats and algorithms stay inside: they concern only the token endpoint.
fn client_settings(settings: &ClientSettings) -> serde_json::Map<String, Value> {
    let ClientSettings {
        name,
        redirect_uris,
        post_logout_redirect_uris,
        scopes,
        grant_types,
        first_party,
        access_token_format: _,
        access_token_alg: _,
        id_token_alg: _,
    } = settings;
    let json = json!({
        "name": name,
        "redirect_uris": redirect_uris,
        "post_logout_redirect_uris": post_logout_redirect_uris,
        "scopes": scopes,
        "grant_types": grant_types,
        "first_party": first_party,
    });
    match json {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object"),
    }
}

impl IntegrationData for OAuthClientEvent {
    fn integration_data(&self) -> Value {
        use OAuthClientEvent as E;
        match self {
            // The secret's hash stays inside.
            E::OAuthClientRegistered {
                client_id,
                organization_id,
                confidential,
                settings,
                registered_by,
                at,
                secret_hash: _,
            } => {
                let mut data = client_settings(settings);
                data.insert("client_id".into(), json!(client_id));
                data.insert("organization_id".into(), json!(organization_id));
                data.insert("confidential".into(), json!(confidential));
                data.insert("registered_by".into(), json!(registered_by));
                data.insert("at".into(), json!(at));
                Value::Object(data)
            }
            E::OAuthClientUpdated { settings, at } => {
                let mut data = client_settings(settings);
                data.insert("at".into(), json!(at));
                Value::Object(data)
            }
            E::OAuthClientSecretRotated { at, secret_hash: _ } => json!({ "at": at }),
            E::OAuthClientDeleted { at } => json!({ "at": at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::values::{Device, PasswordHash, TokenHash};

    #[test]
    fn integration_data_never_carries_a_hash() {
        let now = Utc::now();
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$c2VjcmV0";
        let token = TokenHash::from_bytes([0x5a; 32]);
        let token_hex = "5a".repeat(32);
        let events: Vec<Value> = vec![
            UserEvent::UserRegistered {
                user_id: Uuid::nil(),
                email: crate::PersonalData::clear("a@b.c"),
                display_name: None,
                password_hash: Some(crate::SealedPasswordHash::clear(PasswordHash::new(
                    phc.into(),
                ))),
                registered_at: now,
            }
            .integration_data(),
            UserEvent::PasswordChanged {
                password_hash: crate::SealedPasswordHash::clear(PasswordHash::new(phc.into())),
                at: now,
            }
            .integration_data(),
            UserEvent::PasswordRehashed {
                password_hash: crate::SealedPasswordHash::clear(PasswordHash::new(phc.into())),
                at: now,
            }
            .integration_data(),
            UserEvent::PasswordReset {
                password_hash: crate::SealedPasswordHash::clear(PasswordHash::new(phc.into())),
                at: now,
            }
            .integration_data(),
            SessionEvent::SessionStarted {
                session_id: Uuid::nil(),
                user_id: Uuid::nil(),
                refresh_token_hash: token,
                device: Device::default(),
                factors: vec![],
                started_at: now,
                expires_at: now,
            }
            .integration_data(),
            SessionEvent::TokenRefreshed {
                generation: 1,
                refresh_token_hash: token,
                at: now,
            }
            .integration_data(),
            ServiceAccountEvent::ServiceAccountCreated {
                service_account_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                name: crate::organization::OrganizationName::parse("worker").unwrap(),
                roles: BTreeSet::new(),
                secret_hash: token,
                at: now,
            }
            .integration_data(),
            ServiceAccountEvent::ServiceAccountSecretRotated {
                secret_hash: token,
                at: now,
            }
            .integration_data(),
            OAuthClientEvent::OAuthClientRegistered {
                client_id: Uuid::nil(),
                organization_id: None,
                confidential: true,
                settings: crate::oauth_client::ClientSettings {
                    name: "portal".into(),
                    redirect_uris: vec!["https://app.example.com/cb".into()],
                    post_logout_redirect_uris: vec![],
                    scopes: vec!["openid".into()],
                    grant_types: vec![crate::GrantType::AuthorizationCode],
                    first_party: false,
                    access_token_format: crate::AccessTokenFormat::Jwt,
                    access_token_alg: crate::SigningAlg::EdDSA,
                    id_token_alg: crate::SigningAlg::RS256,
                },
                secret_hash: Some(token),
                registered_by: Uuid::nil(),
                at: now,
            }
            .integration_data(),
            OAuthClientEvent::OAuthClientSecretRotated {
                secret_hash: token,
                at: now,
            }
            .integration_data(),
        ];
        let request_id = Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        for data in [
            UserEvent::EmailVerificationRequested {
                request_id,
                expires_at: now,
                at: now,
            }
            .integration_data(),
            UserEvent::PasswordResetRequested {
                request_id,
                expires_at: now,
                at: now,
            }
            .integration_data(),
            UserEvent::EmailChangeRequested {
                request_id,
                new_email: crate::PersonalData::clear("new@example.com"),
                expires_at: now,
                at: now,
            }
            .integration_data(),
            UserEvent::EmailLoginRequested {
                request_id,
                expires_at: now,
                at: now,
            }
            .integration_data(),
            UserEvent::AccountLocked {
                locked_until: now,
                failed_attempts: 5,
                unlock_request_id: Some(request_id),
                at: now,
            }
            .integration_data(),
        ] {
            assert!(
                !data.to_string().contains(&request_id.to_string()),
                "a mailed link's request id is published: {data}"
            );
        }
        for data in events {
            let text = data.to_string();
            assert!(!text.contains("argon2"), "{text}");
            assert!(!text.contains(&token_hex), "{text}");
            assert!(!text.contains("hash"), "{text}");
        }
    }
}
