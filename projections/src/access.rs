//! Who may do what, in memory: organizations, their members and roles, service
//! accounts, suspended accounts and platform administrators.
//!
//! `authorize` is the platform's hot path, so it must not query anything: every
//! node folds the access-relevant events of the log into an [`AccessModel`] at
//! start-up and then follows the feed ([`AccessView`]). Writers wait for the view to
//! include their own events before answering ([`AccessView::wait_for`]), so a
//! revoked permission is never granted again by this node once the revoking
//! request has returned. Other nodes follow within a feed wake-up (milliseconds).
//!
//! The same fold tells the NATS relay whose effective permissions an event changed
//! ([`AccessModel::apply`] returns it), so other modules learn of every change,
//! whatever caused it, from NATS alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_domain::organization::{InvitationAddress, OrganizationEvent, RoleRef};
use keyledger_domain::permission::{BuiltInRole, Permission, PermissionSet};
use keyledger_domain::role::RoleEvent;
use keyledger_domain::service_account::{first_token_instant_after_rotation, ServiceAccountEvent};
use keyledger_domain::UserEvent;
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

use crate::feed::{EventFeed, FeedError, Position, StoredEvent};
use crate::follower::{FeedReader, InMemory, RecentEvents};
use crate::integration::IntegrationEvent;

/// The aggregate types the model reads; everything else only moves its position.
pub const ACCESS_AGGREGATES: &[&str] = &["user", "organization", "role", "service_account"];

const BATCH: i64 = 1000;

/// Who is asking for access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    User(Uuid),
    ServiceAccount(Uuid),
}

/// The answer to "may this subject do this in this organization?", with the reason
/// in a fixed vocabulary (documented in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: &'static str,
}

impl Decision {
    const fn deny(reason: &'static str) -> Self {
        Self {
            allowed: false,
            reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    pub roles: BTreeSet<RoleRef>,
    pub since: DateTime<Utc>,
}

/// A pending invitation as the API shows it: the address as typed (an email
/// still sealed), never whether it names an account; `invitee` only routes it to
/// the one account that may see and answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct InvitationView {
    pub invitation_id: Uuid,
    pub organization_id: Uuid,
    pub address: InvitationAddress,
    pub invitee: Option<Uuid>,
    pub roles: BTreeSet<RoleRef>,
    pub invited_by: Uuid,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrganizationView {
    pub organization_id: Uuid,
    pub slug: String,
    pub name: String,
    pub settings: BTreeMap<String, String>,
    pub members: BTreeMap<Uuid, MemberView>,
    pub roles: BTreeSet<Uuid>,
    pub service_accounts: BTreeSet<Uuid>,
    /// Invitations not answered or revoked yet (expired ones too, until then).
    pub invitations: BTreeMap<Uuid, InvitationView>,
    pub suspended: bool,
    pub created_at: DateTime<Utc>,
}

impl OrganizationView {
    /// Whether the organization requires its members to have proved a second
    /// factor (its `mfa` setting is `required`).
    pub fn requires_second_factor(&self) -> bool {
        keyledger_domain::organization::requires_second_factor(&self.settings)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoleView {
    pub role_id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub permissions: PermissionSet,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccountView {
    pub service_account_id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub roles: BTreeSet<RoleRef>,
    pub created_at: DateTime<Utc>,
    /// When its secret was last replaced: a token issued before then was got with a
    /// secret that may be the reason for the rotation (leaked), so it is no longer
    /// accepted.
    pub secret_rotated_at: Option<DateTime<Utc>>,
}

impl ServiceAccountView {
    /// Whether a token of this account issued at `issued_at` is still accepted:
    /// not if a rotation of its secret came after it (or in the same second).
    pub fn accepts_token_issued_at(&self, issued_at: DateTime<Utc>) -> bool {
        self.secret_rotated_at
            .is_none_or(|rotated| issued_at >= first_token_instant_after_rotation(rotated))
    }
}

/// Subjects whose effective permissions in one organization an event changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectiveChange {
    pub organization_id: Uuid,
    pub user_ids: BTreeSet<Uuid>,
    pub service_account_ids: BTreeSet<Uuid>,
}

impl EffectiveChange {
    fn is_empty(&self) -> bool {
        self.user_ids.is_empty() && self.service_account_ids.is_empty()
    }

    /// The derived integration event (see `docs/events.md`), published right after
    /// the event that caused it.
    pub fn to_integration(&self, cause: &IntegrationEvent) -> IntegrationEvent {
        IntegrationEvent {
            event_id: IntegrationEvent::derived_id(cause.event_id, self.organization_id),
            event_type: "EffectivePermissionsChanged".into(),
            aggregate_type: "organization".into(),
            aggregate_id: self.organization_id.to_string(),
            sequence: cause.sequence,
            occurred_at: cause.occurred_at,
            schema_version: "1.0".into(),
            data: json!({
                "organization_id": self.organization_id,
                "user_ids": self.user_ids,
                "service_account_ids": self.service_account_ids,
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
}

/// Built-in roles' permissions, computed once (they are fixed in code).
static BUILT_IN: LazyLock<HashMap<BuiltInRole, PermissionSet>> = LazyLock::new(|| {
    BuiltInRole::ALL
        .into_iter()
        .map(|role| (role, role.permissions()))
        .collect()
});

/// Everything `authorize` needs, folded from the event log.
#[derive(Debug, Default)]
pub struct AccessModel {
    organizations: HashMap<Uuid, OrganizationView>,
    roles: HashMap<Uuid, RoleView>,
    service_accounts: HashMap<Uuid, ServiceAccountView>,
    memberships: HashMap<Uuid, BTreeSet<Uuid>>,
    /// Invitee → (organization, invitation) of their pending invitations.
    invitations_by_invitee: HashMap<Uuid, BTreeSet<(Uuid, Uuid)>>,
    suspended_users: HashSet<Uuid>,
    platform_admins: HashSet<Uuid>,
    /// Accounts whose owner proved the address (for the `email_verified` claim
    /// of tokens issued by a refresh).
    verified_users: HashSet<Uuid>,
}

impl AccessModel {
    pub fn organization(&self, id: &Uuid) -> Option<&OrganizationView> {
        self.organizations.get(id)
    }

    /// Every organization, for platform administrators.
    pub fn organizations(&self) -> impl Iterator<Item = &OrganizationView> {
        self.organizations.values()
    }

    /// The organizations `user_id` belongs to.
    pub fn organizations_of(&self, user_id: &Uuid) -> Vec<&OrganizationView> {
        self.memberships
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.organizations.get(id))
            .collect()
    }

    /// The pending invitations addressed to `user_id`, in any organization.
    pub fn invitations_of(&self, user_id: &Uuid) -> Vec<&InvitationView> {
        self.invitations_by_invitee
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|(org, invitation)| {
                self.organizations.get(org)?.invitations.get(invitation)
            })
            .collect()
    }

    /// A live custom role of `organization_id` (a role of another organization is
    /// as absent as a role that never existed).
    pub fn role(&self, organization_id: &Uuid, role_id: &Uuid) -> Option<&RoleView> {
        self.roles
            .get(role_id)
            .filter(|r| r.organization_id == *organization_id)
    }

    pub fn roles_of_organization(&self, organization_id: &Uuid) -> Vec<&RoleView> {
        self.organizations
            .get(organization_id)
            .into_iter()
            .flat_map(|org| org.roles.iter())
            .filter_map(|id| self.roles.get(id))
            .collect()
    }

    pub fn service_account(
        &self,
        organization_id: &Uuid,
        service_account_id: &Uuid,
    ) -> Option<&ServiceAccountView> {
        self.service_accounts
            .get(service_account_id)
            .filter(|sa| sa.organization_id == *organization_id)
    }

    /// A live service account, whatever its organization.
    pub fn service_account_by_id(&self, service_account_id: &Uuid) -> Option<&ServiceAccountView> {
        self.service_accounts.get(service_account_id)
    }

    pub fn service_accounts_of(&self, organization_id: &Uuid) -> Vec<&ServiceAccountView> {
        self.organizations
            .get(organization_id)
            .into_iter()
            .flat_map(|org| org.service_accounts.iter())
            .filter_map(|id| self.service_accounts.get(id))
            .collect()
    }

    pub fn is_platform_admin(&self, user_id: &Uuid) -> bool {
        self.platform_admins.contains(user_id) && !self.suspended_users.contains(user_id)
    }

    /// Whether the account holds platform administration, suspended or not.
    pub fn holds_platform_admin(&self, user_id: &Uuid) -> bool {
        self.platform_admins.contains(user_id)
    }

    pub fn is_suspended(&self, user_id: &Uuid) -> bool {
        self.suspended_users.contains(user_id)
    }

    pub fn is_email_verified(&self, user_id: &Uuid) -> bool {
        self.verified_users.contains(user_id)
    }

    /// The roles a subject holds in an organization, whether or not they grant
    /// anything at the moment (suspensions are checked by [`Self::decide`]).
    pub fn roles_of(&self, subject: Subject, organization_id: &Uuid) -> Option<&BTreeSet<RoleRef>> {
        match subject {
            Subject::User(id) => self
                .organizations
                .get(organization_id)?
                .members
                .get(&id)
                .map(|m| &m.roles),
            Subject::ServiceAccount(id) => self
                .service_account(organization_id, &id)
                .map(|sa| &sa.roles),
        }
    }

    /// The permission set a role grants in an organization (empty for a deleted or
    /// foreign role).
    fn permissions_of(&self, organization_id: &Uuid, role: &RoleRef) -> Option<&PermissionSet> {
        match role {
            RoleRef::BuiltIn(builtin) => BUILT_IN.get(builtin),
            RoleRef::Custom(id) => self.role(organization_id, id).map(|r| &r.permissions),
        }
    }

    /// May `subject` do `permission` in `organization_id`? No allocation: the
    /// subject's roles are checked one by one.
    pub fn decide(
        &self,
        subject: Subject,
        organization_id: &Uuid,
        permission: &Permission,
    ) -> Decision {
        // An unknown organization and one the subject does not belong to answer
        // alike: nobody learns which organizations exist.
        let Some(org) = self.organizations.get(organization_id) else {
            return Decision::deny("not_a_member");
        };
        let Some(roles) = self.roles_of(subject, organization_id) else {
            return Decision::deny("not_a_member");
        };
        if let Subject::User(id) = subject {
            if self.suspended_users.contains(&id) {
                return Decision::deny("account_suspended");
            }
        }
        if org.suspended {
            return Decision::deny("organization_suspended");
        }
        let granted = roles.iter().any(|role| {
            self.permissions_of(organization_id, role)
                .is_some_and(|set| set.allows(permission))
        });
        if granted {
            Decision {
                allowed: true,
                reason: "granted",
            }
        } else {
            Decision::deny("permission_not_granted")
        }
    }

    /// The subject's effective permissions in an organization: the union of its
    /// roles' permissions; empty while the account or organization is suspended.
    /// `None` when the subject is not a member.
    pub fn effective_permissions(
        &self,
        subject: Subject,
        organization_id: &Uuid,
    ) -> Option<PermissionSet> {
        let org = self.organizations.get(organization_id)?;
        let roles = self.roles_of(subject, organization_id)?;
        let blocked = org.suspended
            || matches!(subject, Subject::User(id) if self.suspended_users.contains(&id));
        if blocked {
            return Some(PermissionSet::default());
        }
        Some(
            roles
                .iter()
                .filter_map(|role| self.permissions_of(organization_id, role))
                .flat_map(|set| set.iter().cloned())
                .collect(),
        )
    }

    /// The permissions a set of role assignments would grant (unknown roles grant
    /// nothing), for "an administrator cannot grant what they do not hold".
    pub fn permissions_of_roles(
        &self,
        organization_id: &Uuid,
        roles: &BTreeSet<RoleRef>,
    ) -> PermissionSet {
        roles
            .iter()
            .filter_map(|role| self.permissions_of(organization_id, role))
            .flat_map(|set| set.iter().cloned())
            .collect()
    }

    /// Folds one event in and says whose effective permissions it changed. Events
    /// of other aggregates are ignored.
    pub fn apply(&mut self, event: &StoredEvent) -> Result<Vec<EffectiveChange>, FeedError> {
        let corrupt = |reason: String| FeedError::Corrupt {
            position: event.position,
            reason,
        };
        let parse = |what: &str| -> Result<Uuid, FeedError> {
            event
                .aggregate_id
                .parse()
                .map_err(|_| corrupt(format!("{what} id is not a uuid")))
        };
        let decode = |e: serde_json::Error| corrupt(crate::feed::describe_payload_error(&e));
        let at = event.occurred_at();
        match event.aggregate_type.as_str() {
            "user" => {
                let user_id = parse("user")?;
                let payload: UserEvent =
                    serde_json::from_value(event.payload.clone()).map_err(decode)?;
                Ok(self.apply_user(user_id, &payload))
            }
            "organization" => {
                let id = parse("organization")?;
                let payload: OrganizationEvent =
                    serde_json::from_value(event.payload.clone()).map_err(decode)?;
                Ok(self.apply_organization(id, payload, at))
            }
            "role" => {
                let id = parse("role")?;
                let payload: RoleEvent =
                    serde_json::from_value(event.payload.clone()).map_err(decode)?;
                Ok(self.apply_role(id, payload, at))
            }
            "service_account" => {
                let id = parse("service account")?;
                let payload: ServiceAccountEvent =
                    serde_json::from_value(event.payload.clone()).map_err(decode)?;
                Ok(self.apply_service_account(id, payload, at))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn change_for_user(organization_id: Uuid, user_id: Uuid) -> Vec<EffectiveChange> {
        vec![EffectiveChange {
            organization_id,
            user_ids: BTreeSet::from([user_id]),
            service_account_ids: BTreeSet::new(),
        }]
    }

    fn apply_user(&mut self, user_id: Uuid, event: &UserEvent) -> Vec<EffectiveChange> {
        let changed = match event {
            UserEvent::UserSuspended { .. } => self.suspended_users.insert(user_id),
            UserEvent::UserReactivated { .. } => self.suspended_users.remove(&user_id),
            UserEvent::PlatformAdminGranted { .. } => {
                self.platform_admins.insert(user_id);
                false
            }
            UserEvent::PlatformAdminRevoked { .. } => {
                self.platform_admins.remove(&user_id);
                false
            }
            UserEvent::EmailVerified { .. }
            | UserEvent::EmailChanged { .. }
            | UserEvent::UserImported {
                email_verified: true,
                ..
            } => {
                self.verified_users.insert(user_id);
                false
            }
            UserEvent::UserErased { .. } => {
                self.verified_users.remove(&user_id);
                false
            }
            _ => false,
        };
        if !changed {
            return Vec::new();
        }
        self.memberships
            .get(&user_id)
            .into_iter()
            .flatten()
            .flat_map(|org| Self::change_for_user(*org, user_id))
            .collect()
    }

    fn apply_organization(
        &mut self,
        id: Uuid,
        event: OrganizationEvent,
        at: DateTime<Utc>,
    ) -> Vec<EffectiveChange> {
        use OrganizationEvent as E;
        if let E::OrganizationCreated {
            slug, name, owner, ..
        } = &event
        {
            if self.organizations.contains_key(&id) {
                return Vec::new();
            }
            let owner_roles = BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Owner)]);
            self.organizations.insert(
                id,
                OrganizationView {
                    organization_id: id,
                    slug: slug.as_str().to_owned(),
                    name: name.as_str().to_owned(),
                    settings: BTreeMap::new(),
                    members: BTreeMap::from([(
                        *owner,
                        MemberView {
                            roles: owner_roles,
                            since: at,
                        },
                    )]),
                    roles: BTreeSet::new(),
                    service_accounts: BTreeSet::new(),
                    invitations: BTreeMap::new(),
                    suspended: false,
                    created_at: at,
                },
            );
            self.memberships.entry(*owner).or_default().insert(id);
            return Self::change_for_user(id, *owner);
        }
        let Some(org) = self.organizations.get_mut(&id) else {
            return Vec::new();
        };
        match event {
            E::OrganizationCreated { .. } => Vec::new(),
            E::OrganizationRenamed { name, .. } => {
                org.name = name.as_str().to_owned();
                Vec::new()
            }
            E::OrganizationSettingsChanged { settings, .. } => {
                org.settings = settings;
                Vec::new()
            }
            E::MemberAdded { user_id, roles, .. } => {
                org.members.insert(user_id, MemberView { roles, since: at });
                self.memberships.entry(user_id).or_default().insert(id);
                Self::change_for_user(id, user_id)
            }
            E::MemberRolesChanged { user_id, roles, .. } => {
                let since = org.members.get(&user_id).map_or(at, |m| m.since);
                org.members.insert(user_id, MemberView { roles, since });
                Self::change_for_user(id, user_id)
            }
            E::MemberRemoved { user_id, .. } => {
                org.members.remove(&user_id);
                if let Some(orgs) = self.memberships.get_mut(&user_id) {
                    orgs.remove(&id);
                    if orgs.is_empty() {
                        self.memberships.remove(&user_id);
                    }
                }
                Self::change_for_user(id, user_id)
            }
            E::MemberInvited {
                invitation_id,
                address,
                invitee,
                roles,
                invited_by,
                expires_at,
                ..
            } => {
                org.invitations.insert(
                    invitation_id,
                    InvitationView {
                        invitation_id,
                        organization_id: id,
                        address,
                        invitee,
                        roles,
                        invited_by,
                        expires_at,
                        created_at: at,
                    },
                );
                if let Some(invitee) = invitee {
                    self.invitations_by_invitee
                        .entry(invitee)
                        .or_default()
                        .insert((id, invitation_id));
                }
                // Nobody's permissions change until the invitee accepts (the
                // `MemberAdded` that follows acceptance says so).
                Vec::new()
            }
            E::InvitationAccepted { invitation_id, .. }
            | E::InvitationDeclined { invitation_id, .. }
            | E::InvitationRevoked { invitation_id, .. } => {
                let ended = org.invitations.remove(&invitation_id);
                if let Some(invitee) = ended.and_then(|i| i.invitee) {
                    if let Some(pending) = self.invitations_by_invitee.get_mut(&invitee) {
                        pending.remove(&(id, invitation_id));
                        if pending.is_empty() {
                            self.invitations_by_invitee.remove(&invitee);
                        }
                    }
                }
                Vec::new()
            }
            E::OrganizationSuspended { .. } | E::OrganizationReactivated { .. } => {
                let suspended = matches!(event, E::OrganizationSuspended { .. });
                if org.suspended == suspended {
                    return Vec::new();
                }
                org.suspended = suspended;
                vec![EffectiveChange {
                    organization_id: id,
                    user_ids: org.members.keys().copied().collect(),
                    service_account_ids: org.service_accounts.clone(),
                }]
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect()
            }
        }
    }

    /// Everyone holding `role` in its organization.
    fn holders(&self, organization_id: Uuid, role: RoleRef) -> EffectiveChange {
        let Some(org) = self.organizations.get(&organization_id) else {
            return EffectiveChange {
                organization_id,
                ..EffectiveChange::default()
            };
        };
        EffectiveChange {
            organization_id,
            user_ids: org
                .members
                .iter()
                .filter(|(_, m)| m.roles.contains(&role))
                .map(|(id, _)| *id)
                .collect(),
            service_account_ids: org
                .service_accounts
                .iter()
                .filter(|sa| {
                    self.service_accounts
                        .get(sa)
                        .is_some_and(|sa| sa.roles.contains(&role))
                })
                .copied()
                .collect(),
        }
    }

    fn apply_role(
        &mut self,
        id: Uuid,
        event: RoleEvent,
        at: DateTime<Utc>,
    ) -> Vec<EffectiveChange> {
        match event {
            RoleEvent::RoleDefined {
                organization_id,
                name,
                permissions,
                ..
            } => {
                self.roles.entry(id).or_insert(RoleView {
                    role_id: id,
                    organization_id,
                    name: name.as_str().to_owned(),
                    permissions,
                    created_at: at,
                });
                if let Some(org) = self.organizations.get_mut(&organization_id) {
                    org.roles.insert(id);
                }
                Vec::new()
            }
            RoleEvent::RoleRenamed { name, .. } => {
                if let Some(role) = self.roles.get_mut(&id) {
                    role.name = name.as_str().to_owned();
                }
                Vec::new()
            }
            RoleEvent::PermissionUpdated { permissions, .. } => {
                let Some(role) = self.roles.get_mut(&id) else {
                    return Vec::new();
                };
                role.permissions = permissions;
                let org = role.organization_id;
                let change = self.holders(org, RoleRef::Custom(id));
                if change.is_empty() {
                    Vec::new()
                } else {
                    vec![change]
                }
            }
            RoleEvent::RoleDeleted { .. } => {
                let Some(role) = self.roles.remove(&id) else {
                    return Vec::new();
                };
                let org = role.organization_id;
                if let Some(view) = self.organizations.get_mut(&org) {
                    view.roles.remove(&id);
                }
                let change = self.holders(org, RoleRef::Custom(id));
                if change.is_empty() {
                    Vec::new()
                } else {
                    vec![change]
                }
            }
        }
    }

    fn apply_service_account(
        &mut self,
        id: Uuid,
        event: ServiceAccountEvent,
        at: DateTime<Utc>,
    ) -> Vec<EffectiveChange> {
        use ServiceAccountEvent as E;
        let organization_id = match &event {
            E::ServiceAccountCreated {
                organization_id,
                name,
                roles,
                ..
            } => {
                self.service_accounts
                    .entry(id)
                    .or_insert(ServiceAccountView {
                        service_account_id: id,
                        organization_id: *organization_id,
                        name: name.as_str().to_owned(),
                        roles: roles.clone(),
                        created_at: at,
                        secret_rotated_at: None,
                    });
                if let Some(org) = self.organizations.get_mut(organization_id) {
                    org.service_accounts.insert(id);
                }
                *organization_id
            }
            E::ServiceAccountRolesChanged { roles, .. } => {
                let Some(sa) = self.service_accounts.get_mut(&id) else {
                    return Vec::new();
                };
                sa.roles = roles.clone();
                sa.organization_id
            }
            E::ServiceAccountSecretRotated { at: rotated, .. } => {
                if let Some(sa) = self.service_accounts.get_mut(&id) {
                    sa.secret_rotated_at = Some(*rotated);
                }
                // Permissions are unchanged: nothing for `EffectivePermissionsChanged`.
                return Vec::new();
            }
            E::ServiceAccountDeleted { .. } => {
                let Some(sa) = self.service_accounts.remove(&id) else {
                    return Vec::new();
                };
                if let Some(org) = self.organizations.get_mut(&sa.organization_id) {
                    org.service_accounts.remove(&id);
                }
                sa.organization_id
            }
        };
        vec![EffectiveChange {
            organization_id,
            user_ids: BTreeSet::new(),
            service_account_ids: BTreeSet::from([id]),
        }]
    }
}

/// Folds events into `model` from `position` to the head of the feed.
pub(crate) async fn fold_until_head(
    model: &RwLock<AccessModel>,
    feed: &EventFeed,
    mut position: Position,
    upto: Option<Position>,
) -> Result<Position, FeedError> {
    loop {
        let batch = feed
            .read_after_keeping(position, BATCH, ACCESS_AGGREGATES)
            .await?;
        let full = batch.len() as i64 == BATCH;
        {
            let mut model = model.write().unwrap_or_else(|p| p.into_inner());
            for event in &batch {
                if upto.is_some_and(|limit| event.position > limit) {
                    return Ok(position);
                }
                model.apply(event)?;
                position = event.position;
            }
        }
        if !full {
            return Ok(position);
        }
    }
}

/// The live [`AccessModel`] of this node: in memory ([`InMemory`]), rebuilt at
/// start from the log.
#[derive(Clone)]
pub struct AccessView {
    model: Arc<RwLock<AccessModel>>,
    progress: watch::Receiver<Position>,
    feed: EventFeed,
    recent: Arc<RecentEvents>,
}

impl AccessView {
    /// Loads the whole access history, then follows the feed on `reader` (the
    /// node's feed reader). Returns once the initial load is done, so a node
    /// never answers `authorize` from a partial model.
    pub async fn join(reader: &mut FeedReader) -> Result<Self, FeedError> {
        let feed = reader.feed().clone();
        let model = Arc::new(RwLock::new(AccessModel::default()));
        let position = fold_until_head(&model, &feed, Position::START, None).await?;
        let (progress, rx) = watch::channel(position);
        reader.in_memory(Box::new(AccessFollower {
            model: model.clone(),
            progress,
        }));
        Ok(Self {
            model,
            progress: rx,
            feed,
            recent: reader.recent(),
        })
    }

    /// Runs `f` on the current model (a read lock held for the call only).
    pub fn read<R>(&self, f: impl FnOnce(&AccessModel) -> R) -> R {
        f(&self.model.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn position(&self) -> Position {
        *self.progress.borrow()
    }

    /// Waits until the model includes the given event; false after `timeout`.
    pub async fn wait_for(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        timeout: Duration,
    ) -> Result<bool, FeedError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(target) = self
            .recent
            .position_of(&self.feed, aggregate_type, aggregate_id, sequence)
            .await?
        else {
            return Ok(false);
        };
        let mut progress = self.progress.clone();
        let reached = tokio::time::timeout_at(deadline, progress.wait_for(|p| *p >= target)).await;
        Ok(matches!(reached, Ok(Ok(_))))
    }
}

/// Keeps an [`AccessView`] up to date.
struct AccessFollower {
    model: Arc<RwLock<AccessModel>>,
    progress: watch::Sender<Position>,
}

impl InMemory for AccessFollower {
    fn position(&self) -> Position {
        *self.progress.borrow()
    }

    fn apply(&mut self, events: &[StoredEvent]) -> Result<(), FeedError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut position = self.position();
        let result = {
            let mut model = self.model.write().unwrap_or_else(|p| p.into_inner());
            events.iter().try_for_each(|event| {
                if ACCESS_AGGREGATES.contains(&event.aggregate_type.as_str()) {
                    model.apply(event)?;
                }
                position = event.position;
                Ok(())
            })
        };
        if result.is_err() {
            metrics::counter!("keyledger_access_view_errors_total").increment(1);
        } else {
            debug_assert_eq!(position, last.position);
        }
        self.progress
            .send_if_modified(|cur| std::mem::replace(cur, position) != position);
        result
    }
}

#[cfg(test)]
mod tests {
    use keyledger_domain::organization::{OrganizationName, OrganizationSlug};
    use keyledger_domain::role::RoleName;
    use serde_json::Value;

    use super::*;

    struct Log {
        model: AccessModel,
        n: i64,
    }

    impl Log {
        fn new() -> Self {
            Self {
                model: AccessModel::default(),
                n: 0,
            }
        }

        fn push(&mut self, aggregate_type: &str, id: Uuid, payload: Value) -> Vec<EffectiveChange> {
            self.n += 1;
            let event = StoredEvent {
                position: Position {
                    tx_id: self.n,
                    global_position: self.n,
                },
                aggregate_type: aggregate_type.into(),
                aggregate_id: id.to_string(),
                sequence: 1,
                event_type: String::new(),
                event_version: "1.0".into(),
                payload,
                metadata: Value::Null,
                recorded_at: Utc::now(),
            };
            self.model.apply(&event).unwrap()
        }

        fn org(&mut self, org: Uuid, owner: Uuid) -> Vec<EffectiveChange> {
            let event = OrganizationEvent::OrganizationCreated {
                organization_id: org,
                slug: OrganizationSlug::parse(&format!("org-{}", self.n)).unwrap(),
                name: OrganizationName::parse("Acme").unwrap(),
                owner,
                at: Utc::now(),
            };
            self.push("organization", org, serde_json::to_value(event).unwrap())
        }

        fn organization(&mut self, org: Uuid, event: OrganizationEvent) -> Vec<EffectiveChange> {
            self.push("organization", org, serde_json::to_value(event).unwrap())
        }

        fn role(&mut self, role: Uuid, event: RoleEvent) -> Vec<EffectiveChange> {
            self.push("role", role, serde_json::to_value(event).unwrap())
        }

        fn user(&mut self, user: Uuid, event: UserEvent) -> Vec<EffectiveChange> {
            self.push("user", user, serde_json::to_value(event).unwrap())
        }
    }

    fn perm(raw: &str) -> Permission {
        Permission::parse(raw).unwrap()
    }

    fn perms(raw: &[&str]) -> PermissionSet {
        PermissionSet::parse(raw.iter().copied()).unwrap()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn an_invitation_changes_nobodys_permissions_and_reaches_only_its_invitee() {
        let mut log = Log::new();
        log.org(id(1), id(10));
        let member = BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Member)]);
        let invite = |invitation: u128, invitee: Option<Uuid>| OrganizationEvent::MemberInvited {
            invitation_id: id(invitation),
            address: InvitationAddress::UserId(id(20)),
            invitee,
            roles: member.clone(),
            invited_by: id(10),
            expires_at: Utc::now() + chrono::Duration::days(7),
            at: Utc::now(),
        };
        assert!(log
            .organization(id(1), invite(500, Some(id(20))))
            .is_empty());
        assert!(log.organization(id(1), invite(501, None)).is_empty());
        let org = |log: &Log| log.model.organization(&id(1)).unwrap().invitations.len();
        assert_eq!(org(&log), 2);
        let theirs: Vec<Uuid> = log
            .model
            .invitations_of(&id(20))
            .iter()
            .map(|i| i.invitation_id)
            .collect();
        assert_eq!(theirs, vec![id(500)]);
        assert!(log.model.roles_of(Subject::User(id(20)), &id(1)).is_none());

        let accepted = OrganizationEvent::InvitationAccepted {
            invitation_id: id(500),
            user_id: id(20),
            at: Utc::now(),
        };
        assert!(log.organization(id(1), accepted).is_empty());
        let changes = log.organization(
            id(1),
            OrganizationEvent::MemberAdded {
                user_id: id(20),
                roles: member.clone(),
                at: Utc::now(),
            },
        );
        assert_eq!(changes[0].user_ids, BTreeSet::from([id(20)]));
        assert!(log.model.invitations_of(&id(20)).is_empty());
        assert_eq!(org(&log), 1);
        let revoked = OrganizationEvent::InvitationRevoked {
            invitation_id: id(501),
            at: Utc::now(),
        };
        assert!(log.organization(id(1), revoked).is_empty());
        assert_eq!(org(&log), 0);
    }

    #[test]
    fn the_creator_owns_everything_and_outsiders_nothing() {
        let mut log = Log::new();
        let changes = log.org(id(1), id(10));
        assert_eq!(changes[0].user_ids, BTreeSet::from([id(10)]));
        let owner = log
            .model
            .decide(Subject::User(id(10)), &id(1), &perm("x:y"));
        assert!(owner.allowed);
        let outsider = log
            .model
            .decide(Subject::User(id(11)), &id(1), &perm("x:y"));
        assert_eq!(outsider, Decision::deny("not_a_member"));
        let unknown_org = log
            .model
            .decide(Subject::User(id(10)), &id(2), &perm("x:y"));
        assert_eq!(unknown_org, outsider);
    }

    #[test]
    fn a_custom_role_grants_until_its_permissions_change_and_names_its_holders() {
        let mut log = Log::new();
        log.org(id(1), id(10));
        log.role(
            id(5),
            RoleEvent::RoleDefined {
                role_id: id(5),
                organization_id: id(1),
                name: RoleName::parse("billing").unwrap(),
                permissions: perms(&["invoices:*"]),
                at: Utc::now(),
            },
        );
        let added = log.organization(
            id(1),
            OrganizationEvent::MemberAdded {
                user_id: id(20),
                roles: BTreeSet::from([RoleRef::Custom(id(5))]),
                at: Utc::now(),
            },
        );
        assert_eq!(added[0].user_ids, BTreeSet::from([id(20)]));
        let member = Subject::User(id(20));
        assert!(
            log.model
                .decide(member, &id(1), &perm("invoices:read"))
                .allowed
        );
        let changed = log.role(
            id(5),
            RoleEvent::PermissionUpdated {
                permissions: perms(&["invoices:read"]),
                added: perms(&["invoices:read"]),
                removed: perms(&["invoices:*"]),
                at: Utc::now(),
            },
        );
        assert_eq!(changed[0].user_ids, BTreeSet::from([id(20)]));
        assert!(
            log.model
                .decide(member, &id(1), &perm("invoices:read"))
                .allowed
        );
        assert_eq!(
            log.model.decide(member, &id(1), &perm("invoices:delete")),
            Decision::deny("permission_not_granted")
        );
        let deleted = log.role(id(5), RoleEvent::RoleDeleted { at: Utc::now() });
        assert_eq!(deleted[0].user_ids, BTreeSet::from([id(20)]));
        assert!(
            !log.model
                .decide(member, &id(1), &perm("invoices:read"))
                .allowed
        );
        assert_eq!(
            log.model.effective_permissions(member, &id(1)),
            Some(PermissionSet::default())
        );
    }

    #[test]
    fn a_role_of_another_organization_grants_nothing() {
        let mut log = Log::new();
        log.org(id(1), id(10));
        log.org(id(2), id(30));
        log.role(
            id(6),
            RoleEvent::RoleDefined {
                role_id: id(6),
                organization_id: id(2),
                name: RoleName::parse("other").unwrap(),
                permissions: perms(&["*"]),
                at: Utc::now(),
            },
        );
        log.organization(
            id(1),
            OrganizationEvent::MemberAdded {
                user_id: id(20),
                roles: BTreeSet::from([RoleRef::Custom(id(6))]),
                at: Utc::now(),
            },
        );
        assert!(
            !log.model
                .decide(Subject::User(id(20)), &id(1), &perm("x:y"))
                .allowed
        );
        assert!(log.model.role(&id(1), &id(6)).is_none());
    }

    #[test]
    fn suspending_a_user_or_an_organization_denies_and_names_those_affected() {
        let mut log = Log::new();
        log.org(id(1), id(10));
        log.org(id(2), id(10));
        let changes = log.user(
            id(10),
            UserEvent::UserSuspended {
                reason: "x".into(),
                at: Utc::now(),
            },
        );
        assert_eq!(changes.len(), 2, "one per organization");
        assert_eq!(
            log.model
                .decide(Subject::User(id(10)), &id(1), &perm("x:y")),
            Decision::deny("account_suspended")
        );
        log.user(id(10), UserEvent::UserReactivated { at: Utc::now() });
        let changes = log.organization(
            id(1),
            OrganizationEvent::OrganizationSuspended {
                reason: "unpaid".into(),
                at: Utc::now(),
            },
        );
        assert_eq!(changes[0].user_ids, BTreeSet::from([id(10)]));
        assert_eq!(
            log.model
                .decide(Subject::User(id(10)), &id(1), &perm("x:y")),
            Decision::deny("organization_suspended")
        );
        assert!(
            log.model
                .decide(Subject::User(id(10)), &id(2), &perm("x:y"))
                .allowed
        );
    }

    #[test]
    fn removing_a_member_forgets_the_membership() {
        let mut log = Log::new();
        log.org(id(1), id(10));
        log.organization(
            id(1),
            OrganizationEvent::MemberAdded {
                user_id: id(20),
                roles: BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Member)]),
                at: Utc::now(),
            },
        );
        assert_eq!(log.model.organizations_of(&id(20)).len(), 1);
        log.organization(
            id(1),
            OrganizationEvent::MemberRemoved {
                user_id: id(20),
                at: Utc::now(),
            },
        );
        assert!(log.model.organizations_of(&id(20)).is_empty());
        assert_eq!(
            log.model
                .decide(Subject::User(id(20)), &id(1), &perm("organization:read")),
            Decision::deny("not_a_member")
        );
    }
}
