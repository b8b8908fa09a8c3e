//! The organization use cases: organizations and their members, custom roles,
//! service accounts and the client-credentials grant.
//!
//! Authorisation is split with the API. The API decides whether the caller may
//! attempt an action at all (it holds `members:manage`, it is a platform
//! administrator…) and passes the caller's effective permissions in the
//! organization as `granter`. This service enforces the rule that needs the
//! write-side state: an administrator cannot grant what they do not hold. Every
//! role about to be assigned, and every role a member or service account holds
//! when it is changed or removed, must be covered by `granter`; so an admin can
//! neither make anyone an owner nor demote or remove one.
//!
//! What an aggregate enforces itself (the organization exists and is active, the
//! user is or is not a member, the invitation is pending) is left to it, and its
//! refusal mapped to this service's errors. This service checks only what needs
//! data the aggregate lacks: the granter's permissions, and for roles and
//! service accounts, their organization's state and whether they belong to the
//! organization the caller acts in.
//!
//! Checks that read an aggregate and then write to it run in a loop: a lost
//! optimistic race means the state they were made on is gone, so they are made
//! again on fresh state rather than replaying the command blindly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use cqrs_es::Aggregate;
use keyledger_domain::organization::{
    InvitationAddress, Organization, OrganizationCommand, OrganizationError as DomainError,
    OrganizationName, OrganizationSlug, RoleRef,
};
use keyledger_domain::permission::PermissionSet;
use keyledger_domain::role::{Role, RoleCommand, RoleError, RoleName};
use keyledger_domain::service_account::{
    first_token_instant_after_rotation, ServiceAccount, ServiceAccountCommand, ServiceAccountError,
};
use keyledger_domain::{Email, Field, TokenHash};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{audit_reason, written, RequestContext, Written};
use crate::data_keys::PersonalDataSealer;
use crate::log_lookups::EventLogLookups;
use crate::slug_registry::{SlugClaims, SlugRegistry};
use crate::store::{event_store, AggregateStore, Committed, StoreError};
use crate::tokens::{AccessScope, TokenIssuer};
use keyledger_storage::Database;

/// Outcomes a caller must tell apart. Messages are safe to show to clients.
#[derive(Debug, thiserror::Error)]
pub enum OrganizationError {
    #[error("a slug is 3 to 63 lower-case letters, digits and single hyphens, not at either end")]
    InvalidSlug,
    #[error("a name is 1 to 100 printable characters")]
    InvalidName,
    #[error("a role name is 1 to 50 printable characters and not a built-in role's name")]
    InvalidRoleName,
    #[error("a permission is `resource:action` (lower-case letters, digits, `_`, `-`, `.`), optionally ending in `*`, at most 100 characters")]
    InvalidPermission,
    #[error("settings are at most 50 entries; keys are 1 to 64 of `a-z 0-9 _ . -`, values at most 1024 characters without control characters")]
    InvalidSettings,
    #[error("an organization with this slug already exists")]
    SlugTaken,
    #[error("no such organization")]
    NotFound,
    #[error("no such role in this organization")]
    RoleNotFound,
    #[error("no such user")]
    UserNotFound,
    #[error("no such service account in this organization")]
    ServiceAccountNotFound,
    #[error("the user is already a member")]
    AlreadyMember,
    #[error("an email address is an address like name@example.com, at most 254 characters")]
    InvalidEmail,
    /// Unknown, answered, revoked, or someone else's: one answer.
    #[error("no such invitation")]
    InvitationNotFound,
    #[error("the invitation has expired; ask for a new one")]
    InvitationExpired,
    #[error("the user is not a member")]
    NotMember,
    #[error("the last owner cannot be removed or demoted")]
    LastOwner,
    #[error("a member needs at least one role")]
    NoRoles,
    #[error("you cannot grant or take away permissions you do not hold yourself")]
    CannotGrant,
    #[error("the organization is suspended")]
    Suspended,
    /// Deliberately one answer for every failed client-credentials attempt.
    #[error("invalid client credentials")]
    InvalidClient,
    #[error("the organization is being changed concurrently, try again")]
    Conflict,
    /// The detail is for logs; the message shown is generic.
    #[error("the service is temporarily unavailable")]
    Unavailable(String),
}

impl From<sqlx::Error> for OrganizationError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<DomainError> for OrganizationError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound => Self::NotFound,
            DomainError::Suspended => Self::Suspended,
            DomainError::AlreadyMember => Self::AlreadyMember,
            DomainError::NotMember => Self::NotMember,
            DomainError::NoRoles => Self::NoRoles,
            DomainError::LastOwner => Self::LastOwner,
            DomainError::InvitationNotFound => Self::InvitationNotFound,
            DomainError::InvitationExpired => Self::InvitationExpired,
            // A fresh id that already exists, or a state this service checked
            // just before: both mean someone else got there first.
            DomainError::AlreadyCreated | DomainError::NotSuspended => Self::Conflict,
        }
    }
}

impl From<RoleError> for OrganizationError {
    fn from(e: RoleError) -> Self {
        match e {
            RoleError::NotFound => Self::RoleNotFound,
            // Unchanged updates are skipped before they reach the aggregate.
            RoleError::AlreadyDefined | RoleError::Unchanged => Self::Conflict,
        }
    }
}

impl From<ServiceAccountError> for OrganizationError {
    fn from(e: ServiceAccountError) -> Self {
        match e {
            ServiceAccountError::NotFound => Self::ServiceAccountNotFound,
            ServiceAccountError::AlreadyCreated => Self::Conflict,
        }
    }
}

fn store_error<E>(e: StoreError<E>) -> OrganizationError
where
    E: std::error::Error,
    OrganizationError: From<E>,
{
    match e {
        StoreError::Rejected(inner) => inner.into(),
        StoreError::Conflict => OrganizationError::Conflict,
        StoreError::Unavailable(why) => OrganizationError::Unavailable(why),
    }
}

/// At most this many settings per organization.
pub const MAX_SETTINGS: usize = 50;
pub const MAX_SETTING_KEY_CHARS: usize = 64;
pub const MAX_SETTING_VALUE_CHARS: usize = 1024;

/// Checks an organization's settings. They are free-form for the modules that
/// read them, so only their size and shape are bounded here: enough to keep events
/// small and keys safe to use as identifiers anywhere.
pub fn validate_settings(
    settings: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, OrganizationError> {
    let key_ok = |key: &str| {
        (1..=MAX_SETTING_KEY_CHARS).contains(&key.len())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
    };
    let value_ok = |value: &str| {
        value.chars().count() <= MAX_SETTING_VALUE_CHARS && !value.chars().any(char::is_control)
    };
    // The one key Keyledger reads: a typo in its value must not quietly turn a
    // requirement off.
    let interpreted_ok = |key: &str, value: &str| {
        key != keyledger_domain::organization::MFA_SETTING
            || value == keyledger_domain::organization::MFA_REQUIRED
            || value == "optional"
    };
    let valid = settings.len() <= MAX_SETTINGS
        && settings
            .iter()
            .all(|(key, value)| key_ok(key) && value_ok(value) && interpreted_ok(key, value));
    if valid {
        Ok(settings)
    } else {
        Err(OrganizationError::InvalidSettings)
    }
}

/// Every permission of every set.
fn union<'a>(sets: impl IntoIterator<Item = &'a PermissionSet>) -> PermissionSet {
    sets.into_iter().flat_map(|s| s.iter().cloned()).collect()
}

/// "Administrators cannot grant what they do not hold": `granter` (the acting
/// user's effective permissions in the organization) must cover every permission
/// in `affected`.
pub fn ensure_covers(
    granter: &PermissionSet,
    affected: &PermissionSet,
) -> Result<(), OrganizationError> {
    if granter.covers_all(affected) {
        Ok(())
    } else {
        Err(OrganizationError::CannotGrant)
    }
}

fn ensure_active(org: &Organization) -> Result<(), OrganizationError> {
    if org.organization_id.is_none() {
        Err(OrganizationError::NotFound)
    } else if org.suspended {
        Err(OrganizationError::Suspended)
    } else {
        Ok(())
    }
}

/// Why a client secret was refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the client secret is malformed")]
pub struct MalformedClientSecret;

/// A service account's secret: `kls_` + base64url(service account id ‖ 256
/// random bits).
///
/// The embedded id lets the server find the account without an index of secret
/// hashes; the random part is what makes it unguessable. Only [`Self::hash`] is
/// stored, so the secret is shown to its creator once and never again. `Debug`
/// never prints it.
pub struct ClientSecret {
    value: String,
    service_account_id: Uuid,
}

impl ClientSecret {
    const PREFIX: &'static str = "kls_";
    const RAW_LEN: usize = 16 + 32;
    /// 48 bytes are exactly 64 base64url characters, without padding.
    const ENCODED_LEN: usize = 64;

    pub fn generate(service_account_id: Uuid) -> Self {
        let mut raw = [0u8; Self::RAW_LEN];
        raw[..16].copy_from_slice(service_account_id.as_bytes());
        getrandom::fill(&mut raw[16..]).expect("the operating system's random source failed");
        Self {
            value: format!("{}{}", Self::PREFIX, URL_SAFE_NO_PAD.encode(raw)),
            service_account_id,
        }
    }

    /// Reads a secret as a client presents it. Anything but the exact shape is
    /// refused before it is decoded, so input size costs nothing.
    pub fn parse(value: &str) -> Result<Self, MalformedClientSecret> {
        let encoded = value
            .strip_prefix(Self::PREFIX)
            .filter(|e| e.len() == Self::ENCODED_LEN)
            .ok_or(MalformedClientSecret)?;
        let raw = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| MalformedClientSecret)?;
        if raw.len() != Self::RAW_LEN {
            return Err(MalformedClientSecret);
        }
        let service_account_id = Uuid::from_slice(&raw[..16]).map_err(|_| MalformedClientSecret)?;
        Ok(Self {
            value: value.to_owned(),
            service_account_id,
        })
    }

    /// The account this secret belongs to (not a secret: it is the client id).
    pub fn service_account_id(&self) -> Uuid {
        self.service_account_id
    }

    /// What is stored: SHA-256 of the whole secret. The secret has 256 random
    /// bits, so a slow password hash would add nothing.
    pub fn hash(&self) -> TokenHash {
        TokenHash::from_bytes(Sha256::digest(self.value.as_bytes()).into())
    }

    /// The secret itself, to hand to the creator once.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientSecret(service account {}, <redacted>)",
            self.service_account_id
        )
    }
}

/// A new service account and its secret, which is shown here and never again.
#[derive(Debug)]
pub struct CreatedServiceAccount {
    pub service_account_id: Uuid,
    pub client_secret: ClientSecret,
    pub written: Written,
}

/// The answer to the client-credentials grant: a scoped access token.
#[derive(Debug)]
pub struct ServiceToken {
    pub access_token: String,
    pub expires_in: u64,
    pub service_account_id: Uuid,
    pub organization_id: Uuid,
    /// Role labels, as in the token.
    pub roles: Vec<String>,
}

/// Whom an inviter names, as they typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvitationTarget {
    UserId(Uuid),
    Email(String),
}

/// How long an invitation can be accepted unless configured otherwise.
pub const DEFAULT_INVITATION_TTL: chrono::Duration = chrono::Duration::days(7);

/// Compared against when the presented account does not exist, so that an
/// unknown account costs the same comparison as a known one.
const STAND_IN_HASH: [u8; 32] = [0; 32];

pub struct OrganizationService {
    log: EventLogLookups,
    /// Seals the caller's address and user agent in event metadata.
    keys: Arc<PersonalDataSealer>,
    organizations: AggregateStore<Organization>,
    roles: AggregateStore<Role>,
    service_accounts: AggregateStore<ServiceAccount>,
    slugs: SlugClaims,
    tokens: Arc<TokenIssuer>,
    /// How long an invitation can be accepted.
    invitation_ttl: chrono::Duration,
}

impl OrganizationService {
    /// The organization use cases over `storage`'s event log and slug registry.
    pub fn new(
        storage: &Database,
        tokens: Arc<TokenIssuer>,
        keys: Arc<PersonalDataSealer>,
    ) -> Self {
        Self {
            keys,
            organizations: AggregateStore::new(event_store(storage), ()),
            roles: AggregateStore::new(event_store(storage), ()),
            service_accounts: AggregateStore::new(event_store(storage), ()),
            slugs: SlugClaims::new(storage),
            log: EventLogLookups::new(storage),
            tokens,
            invitation_ttl: DEFAULT_INVITATION_TTL,
        }
    }

    /// Sets how long invitations can be accepted (`KEYLEDGER_INVITATION_TTL_SECS`).
    pub fn with_invitation_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.invitation_ttl = chrono::Duration::from_std(ttl).unwrap_or(DEFAULT_INVITATION_TTL);
        self
    }

    /// Creates an organization whose first owner is `creator`. The slug is claimed
    /// first, so of two concurrent creators exactly one gets it.
    pub async fn create(
        &self,
        creator: Uuid,
        slug: &str,
        name: &str,
        ctx: &RequestContext,
    ) -> Result<(Uuid, Written), OrganizationError> {
        let slug = OrganizationSlug::parse(slug).map_err(|_| OrganizationError::InvalidSlug)?;
        let name = OrganizationName::parse(name).map_err(|_| OrganizationError::InvalidName)?;
        let organization_id = Uuid::new_v4();
        if !self.slugs.claim(&slug, organization_id).await? {
            return Err(OrganizationError::SlugTaken);
        }
        let at = Utc::now();
        let command = OrganizationCommand::Create {
            organization_id,
            slug: slug.clone(),
            name,
            creator,
            at,
        };
        // An operator may create an organization for someone; else the creator acts.
        let metadata = self
            .keys
            .metadata(ctx, at, ctx.actor.or(Some(creator)), None)
            .await?;
        let result = self
            .organizations
            .execute_new(&organization_id.to_string(), command, &metadata)
            .await
            .map_err(store_error)
            .and_then(|committed| {
                written(organization_id, &committed).ok_or(OrganizationError::Conflict)
            });
        match result {
            Ok(w) => Ok((organization_id, w)),
            Err(e) => {
                // Best effort: a claim left behind is taken over once stale.
                let _ = self.slugs.release(&slug, organization_id).await;
                Err(e)
            }
        }
    }

    /// Renames and/or replaces the settings. Values equal to the current ones are
    /// skipped; `Ok(None)` when nothing changed.
    pub async fn update(
        &self,
        organization_id: Uuid,
        name: Option<&str>,
        settings: Option<BTreeMap<String, String>>,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, OrganizationError> {
        let name = name
            .map(OrganizationName::parse)
            .transpose()
            .map_err(|_| OrganizationError::InvalidName)?;
        let settings = settings.map(validate_settings).transpose()?;
        let id = organization_id.to_string();
        let at = Utc::now();
        let metadata = self.keys.metadata(ctx, at, None, None).await?;
        let mut last = None;
        if let Some(name) = &name {
            let committed = run(
                &self.organizations,
                &id,
                &metadata,
                |org: Organization| async move {
                    Ok(
                        (org.name.as_ref() != Some(name)).then(|| OrganizationCommand::Rename {
                            name: name.clone(),
                            at,
                        }),
                    )
                },
            )
            .await?;
            last = committed
                .and_then(|c| written(organization_id, &c))
                .or(last);
        }
        if let Some(settings) = &settings {
            let committed = run(
                &self.organizations,
                &id,
                &metadata,
                |org: Organization| async move {
                    Ok(
                        (org.settings != *settings).then(|| OrganizationCommand::ChangeSettings {
                            settings: settings.clone(),
                            at,
                        }),
                    )
                },
            )
            .await?;
            last = committed
                .and_then(|c| written(organization_id, &c))
                .or(last);
        }
        if last.is_none() {
            // Nothing to change, so no command for the aggregate to refuse; still
            // answer for a missing or suspended organization.
            ensure_active(
                self.organizations
                    .load(&id)
                    .await
                    .map_err(store_error)?
                    .aggregate(),
            )?;
        }
        Ok(last)
    }

    /// Adds `user_id` (whose existence the caller checked) with `roles`.
    pub async fn add_member(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        roles: BTreeSet<RoleRef>,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<Written, OrganizationError> {
        if roles.is_empty() {
            return Err(OrganizationError::NoRoles);
        }
        let at = Utc::now();
        let id = organization_id.to_string();
        let roles = &roles;
        let committed = run(
            &self.organizations,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            // The organization decides whether it is active and whether the
            // user is a member already.
            |_: Organization| async move {
                let granted = self.assignable_permissions(organization_id, roles).await?;
                ensure_covers(granter, &granted)?;
                Ok(Some(OrganizationCommand::AddMember {
                    user_id,
                    roles: roles.clone(),
                    at,
                }))
            },
        )
        .await?;
        committed
            .and_then(|c| written(organization_id, &c))
            .ok_or(OrganizationError::Conflict)
    }

    /// Invites `target` with `roles`; the granter must hold everything they give.
    ///
    /// The inviter is the request's actor. `invitee` is the live account the
    /// target names, as the caller resolved it (`None` when it names none:
    /// unknown, never registered, or erased). It only decides who may accept;
    /// the answer, the event's published data and every listing are the same
    /// either way. A typed address is sealed with a data key of the invitation,
    /// never written in clear.
    pub async fn invite(
        &self,
        organization_id: Uuid,
        target: &InvitationTarget,
        invitee: Option<Uuid>,
        roles: BTreeSet<RoleRef>,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<(Uuid, Written), OrganizationError> {
        if roles.is_empty() {
            return Err(OrganizationError::NoRoles);
        }
        // The inviter is whoever makes the request (the API always names them).
        let invited_by = ctx.actor.ok_or_else(|| {
            OrganizationError::Unavailable("an invitation without an inviter".into())
        })?;
        let invitation_id = Uuid::new_v4();
        let address = match target {
            InvitationTarget::UserId(id) => InvitationAddress::UserId(*id),
            InvitationTarget::Email(raw) => {
                let email = Email::parse(raw).map_err(|_| OrganizationError::InvalidEmail)?;
                let sealed = self
                    .keys
                    .seal(invitation_id, Field::Email, email.as_str())
                    .await?
                    .ok_or_else(|| {
                        OrganizationError::Unavailable("a fresh invitation's key is erased".into())
                    })?;
                InvitationAddress::Email(sealed)
            }
        };
        let at = Utc::now();
        let expires_at = at + self.invitation_ttl;
        let id = organization_id.to_string();
        let (roles, address) = (&roles, &address);
        let committed = run(
            &self.organizations,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            // The organization decides whether it is active.
            |_: Organization| async move {
                let granted = self.assignable_permissions(organization_id, roles).await?;
                ensure_covers(granter, &granted)?;
                Ok(Some(OrganizationCommand::Invite {
                    invitation_id,
                    address: address.clone(),
                    invitee,
                    roles: roles.clone(),
                    invited_by,
                    expires_at,
                    at,
                }))
            },
        )
        .await?;
        let w = committed
            .and_then(|c| written(organization_id, &c))
            .ok_or(OrganizationError::Conflict)?;
        Ok((invitation_id, w))
    }

    /// An invitation's address as the inviter typed it, for its organization's
    /// administrators: the id, or the address opened (`[erased]` once its key is
    /// gone).
    pub async fn typed_address(
        &self,
        address: &InvitationAddress,
    ) -> Result<InvitationTarget, OrganizationError> {
        Ok(match address {
            InvitationAddress::UserId(id) => InvitationTarget::UserId(*id),
            InvitationAddress::Email(sealed) => {
                InvitationTarget::Email(self.keys.open(sealed, Field::Email).await?)
            }
        })
    }

    /// `user_id` accepts an invitation addressed to them and becomes a member.
    /// The aggregate decides (pending, theirs, unexpired, organization active,
    /// not yet a member) on the state the commit depends on, so nothing that
    /// happens meanwhile can be accepted past.
    pub async fn accept_invitation(
        &self,
        organization_id: Uuid,
        invitation_id: Uuid,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Written, OrganizationError> {
        let at = Utc::now();
        let command = OrganizationCommand::AcceptInvitation {
            invitation_id,
            user_id,
            at,
        };
        self.answer_invitation(organization_id, invitation_id, command, at, ctx)
            .await
    }

    /// `user_id` declines an invitation addressed to them.
    pub async fn decline_invitation(
        &self,
        organization_id: Uuid,
        invitation_id: Uuid,
        user_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Written, OrganizationError> {
        let at = Utc::now();
        let command = OrganizationCommand::DeclineInvitation {
            invitation_id,
            user_id,
            at,
        };
        self.answer_invitation(organization_id, invitation_id, command, at, ctx)
            .await
    }

    /// Revokes a pending (or expired) invitation; the granter must hold everything
    /// it would give, as for removing a member.
    pub async fn revoke_invitation(
        &self,
        organization_id: Uuid,
        invitation_id: Uuid,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<Written, OrganizationError> {
        let at = Utc::now();
        let id = organization_id.to_string();
        let by_email = self.invitation_by_email(&id, invitation_id).await?;
        let committed = run(
            &self.organizations,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            // The organization decides whether it is active and the invitation
            // pending; an invitation it does not hold gives nothing to cover.
            |org: Organization| async move {
                if let Some(invitation) = org.invitations.get(&invitation_id) {
                    let held = self
                        .held_permissions(organization_id, &invitation.roles)
                        .await?;
                    ensure_covers(granter, &held)?;
                }
                Ok(Some(OrganizationCommand::RevokeInvitation {
                    invitation_id,
                    at,
                }))
            },
        )
        .await?;
        let w = committed
            .and_then(|c| written(organization_id, &c))
            .ok_or(OrganizationError::Conflict)?;
        if by_email {
            self.forget_invitation_address(organization_id, invitation_id)
                .await;
        }
        Ok(w)
    }

    /// Commits the invitee's answer and, once the invitation is over, destroys the
    /// data key of its typed address.
    async fn answer_invitation(
        &self,
        organization_id: Uuid,
        invitation_id: Uuid,
        command: OrganizationCommand,
        at: chrono::DateTime<Utc>,
        ctx: &RequestContext,
    ) -> Result<Written, OrganizationError> {
        let id = organization_id.to_string();
        let by_email = self.invitation_by_email(&id, invitation_id).await?;
        // The invitee acts on their own membership: their address and user agent
        // are sealed for them (the organization's audit view leaves them out).
        let metadata = self.keys.metadata(ctx, at, None, None).await?;
        let command = &command;
        let committed = run(
            &self.organizations,
            &id,
            &metadata,
            // Organization and invitation are checked by the aggregate.
            |_: Organization| async move { Ok(Some(command.clone())) },
        )
        .await?;
        let w = committed
            .and_then(|c| written(organization_id, &c))
            .ok_or(OrganizationError::Conflict)?;
        if by_email {
            self.forget_invitation_address(organization_id, invitation_id)
                .await;
        }
        Ok(w)
    }

    /// Whether a pending invitation holds a sealed address.
    async fn invitation_by_email(
        &self,
        id: &str,
        invitation_id: Uuid,
    ) -> Result<bool, OrganizationError> {
        let loaded = self.organizations.load(id).await.map_err(store_error)?;
        Ok(loaded
            .aggregate()
            .invitations
            .get(&invitation_id)
            .is_some_and(|i| i.by_email))
    }

    /// Destroys the data key that seals an invitation's typed address (personal
    /// data of the invitee, no longer needed once the invitation is over). Every
    /// invitation id is fresh, so the key is the invitation's alone. Best effort:
    /// a failure leaves a sealed address nobody lists any more.
    async fn forget_invitation_address(&self, organization_id: Uuid, invitation_id: Uuid) {
        if let Err(e) = self.keys.erase(invitation_id).await {
            tracing::warn!(%organization_id, %invitation_id, error = %e,
                "could not destroy an ended invitation's address key");
        }
    }

    /// Removes a member; the granter must hold everything the member's roles give.
    pub async fn remove_member(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<Written, OrganizationError> {
        let at = Utc::now();
        let id = organization_id.to_string();
        let committed = run(
            &self.organizations,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            // The organization decides whether it is active, the user a member
            // and not its last owner; a non-member gives nothing to cover.
            |org: Organization| async move {
                if let Some(current) = org.members.get(&user_id) {
                    let held = self.held_permissions(organization_id, current).await?;
                    ensure_covers(granter, &held)?;
                }
                Ok(Some(OrganizationCommand::RemoveMember { user_id, at }))
            },
        )
        .await?;
        committed
            .and_then(|c| written(organization_id, &c))
            .ok_or(OrganizationError::Conflict)
    }

    /// Replaces a member's roles; the granter must cover both the roles held now
    /// and the new ones. `Ok(None)` when the roles are already these.
    pub async fn change_member_roles(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        roles: BTreeSet<RoleRef>,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, OrganizationError> {
        if roles.is_empty() {
            return Err(OrganizationError::NoRoles);
        }
        let at = Utc::now();
        let id = organization_id.to_string();
        let roles = &roles;
        let committed = run(
            &self.organizations,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            // The organization decides whether it is active, the user a member
            // and not its last owner.
            |org: Organization| async move {
                let current = org.members.get(&user_id);
                let held = match current {
                    Some(current) => self.held_permissions(organization_id, current).await?,
                    None => PermissionSet::default(),
                };
                let granted = self.assignable_permissions(organization_id, roles).await?;
                ensure_covers(granter, &union([&held, &granted]))?;
                Ok(
                    (current != Some(roles)).then(|| OrganizationCommand::ChangeMemberRoles {
                        user_id,
                        roles: roles.clone(),
                        at,
                    }),
                )
            },
        )
        .await?;
        Ok(committed.and_then(|c| written(organization_id, &c)))
    }

    /// Defines a custom role; the granter must hold every permission it gives.
    pub async fn define_role(
        &self,
        organization_id: Uuid,
        name: &str,
        permissions: &[String],
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<(Uuid, Written), OrganizationError> {
        let name = RoleName::parse(name).map_err(|_| OrganizationError::InvalidRoleName)?;
        let permissions = parse_permissions(permissions)?;
        self.ensure_organization_active(organization_id).await?;
        ensure_covers(granter, &permissions)?;
        let role_id = Uuid::new_v4();
        let at = Utc::now();
        let committed = self
            .roles
            .execute_new(
                &role_id.to_string(),
                RoleCommand::Define {
                    role_id,
                    organization_id,
                    name,
                    permissions,
                    at,
                },
                &self.keys.metadata(ctx, at, None, None).await?,
            )
            .await
            .map_err(store_error)?;
        let w = written(role_id, &committed).ok_or(OrganizationError::Conflict)?;
        Ok((role_id, w))
    }

    /// Renames a role and/or replaces its permissions. The granter must hold
    /// everything the role gives now, and everything it would give. Unchanged
    /// values are skipped; `Ok(None)` when nothing changed.
    pub async fn update_role(
        &self,
        organization_id: Uuid,
        role_id: Uuid,
        name: Option<&str>,
        permissions: Option<&[String]>,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, OrganizationError> {
        let name = name
            .map(RoleName::parse)
            .transpose()
            .map_err(|_| OrganizationError::InvalidRoleName)?;
        let permissions = permissions.map(parse_permissions).transpose()?;
        self.ensure_organization_active(organization_id).await?;
        let id = role_id.to_string();
        let at = Utc::now();
        let metadata = self.keys.metadata(ctx, at, None, None).await?;
        let mut last = None;
        if let Some(name) = &name {
            let committed = run(&self.roles, &id, &metadata, |role: Role| async move {
                let role = &role;
                ensure_role_of(role, organization_id)?;
                ensure_covers(granter, &role.permissions)?;
                Ok(
                    (role.name.as_ref() != Some(name)).then(|| RoleCommand::Rename {
                        name: name.clone(),
                        at,
                    }),
                )
            })
            .await?;
            last = committed.and_then(|c| written(role_id, &c)).or(last);
        }
        if let Some(permissions) = &permissions {
            let committed = run(&self.roles, &id, &metadata, |role: Role| async move {
                let role = &role;
                ensure_role_of(role, organization_id)?;
                ensure_covers(granter, &union([&role.permissions, permissions]))?;
                Ok(
                    (role.permissions != *permissions).then(|| RoleCommand::UpdatePermissions {
                        permissions: permissions.clone(),
                        at,
                    }),
                )
            })
            .await?;
            last = committed.and_then(|c| written(role_id, &c)).or(last);
        }
        if name.is_none() && permissions.is_none() {
            let loaded = self.roles.load(&id).await.map_err(store_error)?;
            ensure_role_of(loaded.aggregate(), organization_id)?;
        }
        Ok(last)
    }

    /// Deletes a custom role; the granter must hold everything it gives. Members
    /// and service accounts that held it keep the reference, which grants nothing
    /// any more.
    pub async fn delete_role(
        &self,
        organization_id: Uuid,
        role_id: Uuid,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<Written, OrganizationError> {
        self.ensure_organization_active(organization_id).await?;
        let at = Utc::now();
        let id = role_id.to_string();
        let committed = run(
            &self.roles,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            |role: Role| async move {
                let role = &role;
                ensure_role_of(role, organization_id)?;
                ensure_covers(granter, &role.permissions)?;
                Ok(Some(RoleCommand::Delete { at }))
            },
        )
        .await?;
        committed
            .and_then(|c| written(role_id, &c))
            .ok_or(OrganizationError::Conflict)
    }

    /// Creates a service account with `roles` (possibly none) and a fresh secret.
    pub async fn create_service_account(
        &self,
        organization_id: Uuid,
        name: &str,
        roles: BTreeSet<RoleRef>,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<CreatedServiceAccount, OrganizationError> {
        let name = OrganizationName::parse(name).map_err(|_| OrganizationError::InvalidName)?;
        self.ensure_organization_active(organization_id).await?;
        let granted = self.assignable_permissions(organization_id, &roles).await?;
        ensure_covers(granter, &granted)?;
        let service_account_id = Uuid::new_v4();
        let client_secret = ClientSecret::generate(service_account_id);
        let at = Utc::now();
        let committed = self
            .service_accounts
            .execute_new(
                &service_account_id.to_string(),
                ServiceAccountCommand::Create {
                    service_account_id,
                    organization_id,
                    name,
                    roles,
                    secret_hash: client_secret.hash(),
                    at,
                },
                &self.keys.metadata(ctx, at, None, None).await?,
            )
            .await
            .map_err(store_error)?;
        let written = written(service_account_id, &committed).ok_or(OrganizationError::Conflict)?;
        Ok(CreatedServiceAccount {
            service_account_id,
            client_secret,
            written,
        })
    }

    /// Replaces the secret; the old one stops working at once. Whoever holds the
    /// new secret acts with the account's roles, so the granter must cover them.
    pub async fn rotate_service_account_secret(
        &self,
        organization_id: Uuid,
        service_account_id: Uuid,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<(ClientSecret, Written), OrganizationError> {
        self.ensure_organization_active(organization_id).await?;
        let secret = ClientSecret::generate(service_account_id);
        let secret_hash = secret.hash();
        let at = Utc::now();
        let id = service_account_id.to_string();
        let committed = run(
            &self.service_accounts,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            |account: ServiceAccount| async move {
                let account = &account;
                ensure_account_of(account, organization_id)?;
                let held = self
                    .held_permissions(organization_id, &account.roles)
                    .await?;
                ensure_covers(granter, &held)?;
                Ok(Some(ServiceAccountCommand::RotateSecret {
                    secret_hash,
                    at,
                }))
            },
        )
        .await?;
        let w = committed
            .and_then(|c| written(service_account_id, &c))
            .ok_or(OrganizationError::Conflict)?;
        Ok((secret, w))
    }

    /// Replaces a service account's roles (an empty set parks it); the granter
    /// must cover the roles held now and the new ones. `Ok(None)` when unchanged.
    pub async fn change_service_account_roles(
        &self,
        organization_id: Uuid,
        service_account_id: Uuid,
        roles: BTreeSet<RoleRef>,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, OrganizationError> {
        self.ensure_organization_active(organization_id).await?;
        let at = Utc::now();
        let id = service_account_id.to_string();
        let roles = &roles;
        let committed = run(
            &self.service_accounts,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            |account: ServiceAccount| async move {
                let account = &account;
                ensure_account_of(account, organization_id)?;
                let held = self
                    .held_permissions(organization_id, &account.roles)
                    .await?;
                let granted = self.assignable_permissions(organization_id, roles).await?;
                ensure_covers(granter, &union([&held, &granted]))?;
                Ok(
                    (account.roles != *roles).then(|| ServiceAccountCommand::ChangeRoles {
                        roles: roles.clone(),
                        at,
                    }),
                )
            },
        )
        .await?;
        Ok(committed.and_then(|c| written(service_account_id, &c)))
    }

    /// Deletes a service account; its secret stops working at once (tokens already
    /// issued run until they expire).
    pub async fn delete_service_account(
        &self,
        organization_id: Uuid,
        service_account_id: Uuid,
        granter: &PermissionSet,
        ctx: &RequestContext,
    ) -> Result<Written, OrganizationError> {
        self.ensure_organization_active(organization_id).await?;
        let at = Utc::now();
        let id = service_account_id.to_string();
        let committed = run(
            &self.service_accounts,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            |account: ServiceAccount| async move {
                let account = &account;
                ensure_account_of(account, organization_id)?;
                let held = self
                    .held_permissions(organization_id, &account.roles)
                    .await?;
                ensure_covers(granter, &held)?;
                Ok(Some(ServiceAccountCommand::Delete { at }))
            },
        )
        .await?;
        committed
            .and_then(|c| written(service_account_id, &c))
            .ok_or(OrganizationError::Conflict)
    }

    /// Suspends the organization (a platform administrator's action): it refuses
    /// changes, its service accounts get no tokens and no token is scoped to it.
    /// Idempotent: `Ok(None)` when it is already suspended.
    pub async fn suspend(
        &self,
        organization_id: Uuid,
        reason: &str,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, OrganizationError> {
        let reason = &audit_reason(reason);
        let at = Utc::now();
        let id = organization_id.to_string();
        let committed = run(
            &self.organizations,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            // The organization refuses if it does not exist.
            |org: Organization| async move {
                Ok((!org.suspended).then(|| OrganizationCommand::Suspend {
                    reason: reason.clone(),
                    at,
                }))
            },
        )
        .await?;
        Ok(committed.and_then(|c| written(organization_id, &c)))
    }

    /// Lifts a suspension. Idempotent: `Ok(None)` when it is not suspended.
    pub async fn reactivate(
        &self,
        organization_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<Option<Written>, OrganizationError> {
        let at = Utc::now();
        let id = organization_id.to_string();
        let committed = run(
            &self.organizations,
            &id,
            &self.keys.metadata(ctx, at, None, None).await?,
            // Skipped only for an organization known to be active: the
            // organization refuses if it does not exist.
            |org: Organization| async move {
                let active = org.organization_id.is_some() && !org.suspended;
                Ok((!active).then_some(OrganizationCommand::Reactivate { at }))
            },
        )
        .await?;
        Ok(committed.and_then(|c| written(organization_id, &c)))
    }

    /// The OAuth client-credentials grant: a service account trades its id and
    /// secret for an access token scoped to its organization.
    ///
    /// Every failure (malformed input, unknown or deleted account, wrong secret,
    /// suspended organization) is the same [`OrganizationError::InvalidClient`],
    /// and an unknown account is looked up and compared like a known one.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<ServiceToken, OrganizationError> {
        let result = self.authenticate_client(client_id, client_secret).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(OrganizationError::InvalidClient) => "invalid_client",
            Err(_) => "error",
        };
        metrics::counter!("keyledger_client_credentials_total", "outcome" => outcome).increment(1);
        result
    }

    async fn authenticate_client(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<ServiceToken, OrganizationError> {
        use OrganizationError::InvalidClient;
        // A uuid is 36 characters (45 as a URN); refuse anything longer unparsed.
        if client_id.len() > 64 {
            return Err(InvalidClient);
        }
        let client_id: Uuid = client_id.trim().parse().map_err(|_| InvalidClient)?;
        let secret = ClientSecret::parse(client_secret.trim()).map_err(|_| InvalidClient)?;
        if secret.service_account_id() != client_id {
            return Err(InvalidClient);
        }
        let presented = secret.hash();
        // Fresh, not cached: a secret rotated or an account deleted by another
        // process must stop working here too.
        let loaded = self
            .service_accounts
            .load_fresh(&client_id.to_string())
            .await
            .map_err(store_error)?;
        let account = loaded.aggregate();
        let stored = account
            .secret_hash
            .unwrap_or(TokenHash::from_bytes(STAND_IN_HASH));
        // Both sides evaluated: no shortcut that would time differently.
        let matches = (stored == presented) & account.is_live();
        let organization_id = account.organization_id.filter(|_| matches);
        let Some(organization_id) = organization_id else {
            return Err(InvalidClient);
        };
        if self.organization_suspended(organization_id).await? {
            return Err(InvalidClient);
        }
        let mut roles = Vec::with_capacity(account.roles.len());
        for role in &account.roles {
            match role {
                RoleRef::BuiltIn(_) => roles.push(role.label()),
                // A deleted custom role grants nothing; do not advertise it.
                RoleRef::Custom(role_id) => {
                    if self.custom_role(organization_id, *role_id).await?.is_some() {
                        roles.push(role.label());
                    }
                }
            }
        }
        let scope = AccessScope {
            organization_id,
            roles,
        };
        // Dated after the last rotation, or it would be refused as one got with
        // the previous secret. Right after a rotation that is the next second:
        // wait for it (once, under a second) rather than date the token ahead of
        // the clocks of modules that check `iat` without slack.
        let not_before = account
            .secret_rotated_at
            .map(first_token_instant_after_rotation);
        if let Some(wait) = not_before
            .and_then(|start| (start - Utc::now()).to_std().ok())
            .filter(|wait| *wait <= std::time::Duration::from_secs(1))
        {
            tokio::time::sleep(wait).await;
        }
        let (access_token, _) = self
            .tokens
            .issue_for_service_account(client_id, &scope, not_before)
            .map_err(|e| OrganizationError::Unavailable(e.to_string()))?;
        Ok(ServiceToken {
            access_token,
            expires_in: self.tokens.access_ttl().as_secs(),
            service_account_id: client_id,
            organization_id,
            roles: scope.roles,
        })
    }

    /// Whether the organization exists and is not suspended, before a command
    /// to one of its roles or service accounts: those aggregates know nothing of
    /// their organization's state, so it cannot be left to them.
    async fn ensure_organization_active(
        &self,
        organization_id: Uuid,
    ) -> Result<(), OrganizationError> {
        let loaded = self
            .organizations
            .load(&organization_id.to_string())
            .await
            .map_err(store_error)?;
        ensure_active(loaded.aggregate())
    }

    /// Whether the organization's latest suspension or reactivation is a
    /// suspension, read from the event store: one indexed row instead of replaying
    /// an organization with many members on every token request.
    async fn organization_suspended(
        &self,
        organization_id: Uuid,
    ) -> Result<bool, OrganizationError> {
        Ok(self.log.organization_suspended(organization_id).await?)
    }

    /// A custom role of this organization that has not been deleted. Loaded
    /// fresh: it is read to decide about other aggregates, where a stale copy
    /// would go unnoticed (a role an owner just widened must not be handed out
    /// at its old width).
    async fn custom_role(
        &self,
        organization_id: Uuid,
        role_id: Uuid,
    ) -> Result<Option<Role>, OrganizationError> {
        let loaded = self
            .roles
            .load_fresh(&role_id.to_string())
            .await
            .map_err(store_error)?;
        let role = loaded.aggregate();
        let live = role.role_id.is_some()
            && !role.deleted
            && role.organization_id == Some(organization_id);
        Ok(live.then(|| role.clone()))
    }

    /// What assigning `roles` grants. Every custom role must be a live role of
    /// this organization.
    async fn assignable_permissions(
        &self,
        organization_id: Uuid,
        roles: &BTreeSet<RoleRef>,
    ) -> Result<PermissionSet, OrganizationError> {
        let mut sets = Vec::with_capacity(roles.len());
        for role in roles {
            sets.push(match role {
                RoleRef::BuiltIn(role) => role.permissions(),
                RoleRef::Custom(role_id) => {
                    self.custom_role(organization_id, *role_id)
                        .await?
                        .ok_or(OrganizationError::RoleNotFound)?
                        .permissions
                }
            });
        }
        Ok(union(&sets))
    }

    /// What `roles`, as held now, grant. A deleted custom role grants nothing.
    async fn held_permissions(
        &self,
        organization_id: Uuid,
        roles: &BTreeSet<RoleRef>,
    ) -> Result<PermissionSet, OrganizationError> {
        let mut sets = Vec::with_capacity(roles.len());
        for role in roles {
            match role {
                RoleRef::BuiltIn(role) => sets.push(role.permissions()),
                RoleRef::Custom(role_id) => {
                    if let Some(role) = self.custom_role(organization_id, *role_id).await? {
                        sets.push(role.permissions);
                    }
                }
            }
        }
        Ok(union(&sets))
    }
}

fn parse_permissions(raw: &[String]) -> Result<PermissionSet, OrganizationError> {
    PermissionSet::parse(raw.iter().map(String::as_str))
        .map_err(|_| OrganizationError::InvalidPermission)
}

/// Whether `role` is a live role of the organization the caller acts in. Kept
/// here, not left to the role: its commands do not name the organization.
fn ensure_role_of(role: &Role, organization_id: Uuid) -> Result<(), OrganizationError> {
    let ours =
        role.role_id.is_some() && !role.deleted && role.organization_id == Some(organization_id);
    if ours {
        Ok(())
    } else {
        Err(OrganizationError::RoleNotFound)
    }
}

/// Whether `account` is a live service account of the organization the caller
/// acts in. Kept here, not left to the account: its commands do not name the
/// organization.
fn ensure_account_of(
    account: &ServiceAccount,
    organization_id: Uuid,
) -> Result<(), OrganizationError> {
    if account.is_live() && account.organization_id == Some(organization_id) {
        Ok(())
    } else {
        Err(OrganizationError::ServiceAccountNotFound)
    }
}

/// Loads the aggregate, lets `decide` check it and pick the command (`None`: no
/// change needed), and commits once; on a lost race the state it decided on is
/// gone, so it loads and decides again.
async fn run<A, F, Fut>(
    store: &AggregateStore<A>,
    id: &str,
    metadata: &HashMap<String, String>,
    mut decide: F,
) -> Result<Option<Committed<A>>, OrganizationError>
where
    A: Aggregate + Clone,
    A::Command: Clone,
    OrganizationError: From<A::Error>,
    // The state is handed over owned: a decision borrowing it would need a
    // higher-ranked closure, whose futures the compiler cannot prove `Send`.
    F: FnMut(A) -> Fut,
    Fut: Future<Output = Result<Option<A::Command>, OrganizationError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let loaded = store.load(id).await.map_err(store_error)?;
        // A cached state may be behind (another node's commit): a refusal or a
        // no-op decided on it is confirmed from the stored history first.
        let cached = loaded.is_cached();
        let Some(command) = decide(loaded.aggregate().clone()).await? else {
            if cached {
                store.forget(id);
                continue;
            }
            return Ok(None);
        };
        match store.execute_once(id, loaded, command, metadata).await {
            Ok(committed) => return Ok(Some(committed)),
            Err(StoreError::Conflict) if attempt < store.max_attempts() => {}
            Err(StoreError::Rejected(_)) if cached => store.forget(id),
            Err(e) => return Err(store_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::permission::BuiltInRole;

    fn set(raw: &[&str]) -> PermissionSet {
        PermissionSet::parse(raw.iter().copied()).unwrap()
    }

    #[test]
    fn client_secrets_embed_the_account_and_parse_back() {
        let account = Uuid::new_v4();
        let secret = ClientSecret::generate(account);
        assert!(secret.expose().starts_with("kls_"));
        assert_eq!(secret.expose().len(), 4 + 64);
        let parsed = ClientSecret::parse(secret.expose()).unwrap();
        assert_eq!(parsed.service_account_id(), account);
        assert_eq!(parsed.hash(), secret.hash());
        assert_ne!(ClientSecret::generate(account).hash(), secret.hash());
    }

    #[test]
    fn client_secrets_never_show_in_debug_output() {
        let secret = ClientSecret::generate(Uuid::new_v4());
        let shown = format!("{secret:?}");
        assert!(!shown.contains(secret.expose()));
        assert!(!shown.contains(&secret.expose()[4..20]));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn malformed_client_secrets_are_refused() {
        let good = ClientSecret::generate(Uuid::new_v4());
        let body = &good.expose()[4..];
        for bad in [
            String::new(),
            "kls_".into(),
            body.to_owned(),
            format!("klr_{body}"),
            format!("kls_{}", &body[1..]),
            format!("kls_{body}A"),
            format!("kls_{}!", &body[1..]),
            format!("kls_{}", "A".repeat(10_000)),
        ] {
            assert_eq!(
                ClientSecret::parse(&bad).unwrap_err(),
                MalformedClientSecret,
                "{bad}"
            );
        }
    }

    #[test]
    fn settings_are_bounded_in_count_and_shape() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(validate_settings(BTreeMap::new()).is_ok());
        assert!(validate_settings(one("mfa.required", "true")).is_ok());
        assert!(validate_settings(one("mfa", "required")).is_ok());
        assert!(validate_settings(one("mfa", "optional")).is_ok());
        assert!(validate_settings(one("a_b-c.d9", "")).is_ok());
        assert!(validate_settings(one(&"k".repeat(64), &"v".repeat(1024))).is_ok());
        for (key, value) in [
            ("mfa", "Required"),
            ("mfa", "true"),
            ("", "x"),
            ("Upper", "x"),
            ("with space", "x"),
            ("ключ", "x"),
            (&*"k".repeat(65), "x"),
            ("k", &*"v".repeat(1025)),
            ("k", "line\nbreak"),
            ("k", "nul\u{0}"),
        ] {
            assert!(
                matches!(
                    validate_settings(one(key, value)),
                    Err(OrganizationError::InvalidSettings)
                ),
                "{key:?}={value:?}"
            );
        }
        let many = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(validate_settings(many(MAX_SETTINGS)).is_ok());
        assert!(validate_settings(many(MAX_SETTINGS + 1)).is_err());
    }

    #[test]
    fn a_granter_must_cover_every_affected_permission() {
        let admin = BuiltInRole::Admin.permissions();
        let owner = BuiltInRole::Owner.permissions();
        let member = BuiltInRole::Member.permissions();
        assert!(ensure_covers(&admin, &member).is_ok());
        assert!(ensure_covers(&admin, &BuiltInRole::Auditor.permissions()).is_ok());
        assert!(matches!(
            ensure_covers(&admin, &owner),
            Err(OrganizationError::CannotGrant)
        ));
        // Demoting an owner to member affects the owner's permissions too.
        assert!(ensure_covers(&admin, &union([&owner, &member])).is_err());
        assert!(ensure_covers(&set(&["*"]), &union([&owner, &admin])).is_ok());
        // A custom role with something the admin lacks cannot be handed out.
        let billing = set(&["invoices:read"]);
        assert!(ensure_covers(&admin, &billing).is_err());
        assert!(ensure_covers(&union([&admin, &set(&["invoices:*"])]), &billing).is_ok());
        assert!(ensure_covers(&member, &PermissionSet::default()).is_ok());
    }

    #[test]
    fn union_keeps_every_permission_once() {
        let u = union([&set(&["a:b", "c:*"]), &set(&["a:b", "d:e"])]);
        assert_eq!(u, set(&["a:b", "c:*", "d:e"]));
        assert!(union(&[]).is_empty());
    }

    /// Compiles only if the service's futures can move between threads (the
    /// decision closures borrow across awaits, which could silently break that).
    #[allow(dead_code)]
    fn service_futures_are_send(
        service: &OrganizationService,
        ctx: &RequestContext,
        granter: &PermissionSet,
    ) {
        fn assert_send<T: Send>(_: T) {}
        let id = Uuid::nil();
        assert_send(service.create(id, "acme", "Acme", ctx));
        assert_send(service.add_member(id, id, BTreeSet::new(), granter, ctx));
        assert_send(service.remove_member(id, id, granter, ctx));
        assert_send(service.change_member_roles(id, id, BTreeSet::new(), granter, ctx));
        assert_send(service.update(id, None, None, ctx));
        assert_send(service.update_role(id, id, None, None, granter, ctx));
        assert_send(service.delete_role(id, id, granter, ctx));
        assert_send(service.create_service_account(id, "x", BTreeSet::new(), granter, ctx));
        assert_send(service.rotate_service_account_secret(id, id, granter, ctx));
        assert_send(service.suspend(id, "x", ctx));
        assert_send(service.client_credentials("", ""));
    }
}
