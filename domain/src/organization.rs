//! The Organization aggregate: a tenant, its members, the roles they hold in it, and
//! the invitations through which people become members.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::permission::BuiltInRole;
use crate::personal::PersonalData;

/// Why an organization value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrganizationValueError {
    #[error("a slug is 3 to 63 lower-case letters, digits and single hyphens, not at either end")]
    InvalidSlug,
    #[error("an organization name is 1 to 100 printable characters")]
    InvalidName,
}

/// The organization's unique, URL-safe handle (uniqueness is decided outside the
/// aggregate, like email addresses).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrganizationSlug(String);

impl OrganizationSlug {
    pub fn parse(raw: &str) -> Result<Self, OrganizationValueError> {
        let slug = raw.trim().to_ascii_lowercase();
        let valid = (3..=63).contains(&slug.len())
            && slug
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !slug.starts_with('-')
            && !slug.ends_with('-')
            && !slug.contains("--");
        if valid {
            Ok(Self(slug))
        } else {
            Err(OrganizationValueError::InvalidSlug)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A human-facing organization name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrganizationName(String);

impl OrganizationName {
    pub fn parse(raw: &str) -> Result<Self, OrganizationValueError> {
        let trimmed = raw.trim();
        let count = trimmed.chars().count();
        if count == 0 || count > 100 || trimmed.chars().any(char::is_control) {
            return Err(OrganizationValueError::InvalidName);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A role as assigned to a member: built in, or defined by the organization (a
/// Role aggregate's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleRef {
    BuiltIn(BuiltInRole),
    Custom(Uuid),
}

impl RoleRef {
    /// The role as clients and other modules name it: a built-in role's name, or a
    /// custom role's id.
    pub fn label(&self) -> String {
        match self {
            Self::BuiltIn(role) => role.name().to_owned(),
            Self::Custom(id) => id.to_string(),
        }
    }

    /// Reads [`RoleRef::label`] back: a built-in name or a role id.
    pub fn parse_label(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        BuiltInRole::ALL
            .into_iter()
            .find(|role| role.name() == raw)
            .map(Self::BuiltIn)
            .or_else(|| raw.parse().ok().map(Self::Custom))
    }
}

const OWNER: RoleRef = RoleRef::BuiltIn(BuiltInRole::Owner);

/// Whom an invitation is addressed to, exactly as the inviter typed it: what the
/// organization's administrators may see of an invitee before they accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvitationAddress {
    UserId(Uuid),
    /// The typed address, sealed with a data key of the invitation itself (never
    /// clear text in the log); the key is destroyed once the invitation is
    /// answered or revoked.
    Email(PersonalData),
}

/// An invitation waiting for its invitee's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingInvitation {
    /// The live account the address named when the invitation was made; `None`
    /// when it named none, and then nobody can ever accept it.
    pub invitee: Option<Uuid>,
    pub roles: BTreeSet<RoleRef>,
    pub expires_at: DateTime<Utc>,
    /// Addressed by email: the invitation holds a sealed address (and so has a
    /// data key of its own to destroy when it ends).
    #[serde(default)]
    pub by_email: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrganizationCommand {
    /// The creator becomes the first owner.
    Create {
        organization_id: Uuid,
        slug: OrganizationSlug,
        name: OrganizationName,
        creator: Uuid,
        at: DateTime<Utc>,
    },
    Rename {
        name: OrganizationName,
        at: DateTime<Utc>,
    },
    ChangeSettings {
        settings: BTreeMap<String, String>,
        at: DateTime<Utc>,
    },
    AddMember {
        user_id: Uuid,
        roles: BTreeSet<RoleRef>,
        at: DateTime<Utc>,
    },
    RemoveMember {
        user_id: Uuid,
        at: DateTime<Utc>,
    },
    ChangeMemberRoles {
        user_id: Uuid,
        roles: BTreeSet<RoleRef>,
        at: DateTime<Utc>,
    },
    /// Invites someone; membership begins only when they accept. Whether the
    /// address names an account (`invitee`) was decided by the write side.
    Invite {
        invitation_id: Uuid,
        address: InvitationAddress,
        invitee: Option<Uuid>,
        roles: BTreeSet<RoleRef>,
        invited_by: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// `user_id` (the caller) accepts: they become a member with the invited roles.
    AcceptInvitation {
        invitation_id: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    },
    DeclineInvitation {
        invitation_id: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    },
    RevokeInvitation {
        invitation_id: Uuid,
        at: DateTime<Utc>,
    },
    Suspend {
        reason: String,
        at: DateTime<Utc>,
    },
    Reactivate {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrganizationEvent {
    OrganizationCreated {
        organization_id: Uuid,
        slug: OrganizationSlug,
        name: OrganizationName,
        owner: Uuid,
        at: DateTime<Utc>,
    },
    OrganizationRenamed {
        name: OrganizationName,
        at: DateTime<Utc>,
    },
    OrganizationSettingsChanged {
        settings: BTreeMap<String, String>,
        at: DateTime<Utc>,
    },
    MemberAdded {
        user_id: Uuid,
        roles: BTreeSet<RoleRef>,
        at: DateTime<Utc>,
    },
    MemberRemoved {
        user_id: Uuid,
        at: DateTime<Utc>,
    },
    MemberRolesChanged {
        user_id: Uuid,
        roles: BTreeSet<RoleRef>,
        at: DateTime<Utc>,
    },
    /// `invitee` is the account `address` named then (or none): it decides who may
    /// accept, and is never published (an administrator must not learn from the
    /// invitation whether an address or id is an account).
    MemberInvited {
        invitation_id: Uuid,
        address: InvitationAddress,
        invitee: Option<Uuid>,
        roles: BTreeSet<RoleRef>,
        invited_by: Uuid,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Always followed, in the same commit, by the `MemberAdded` it causes.
    InvitationAccepted {
        invitation_id: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    },
    InvitationDeclined {
        invitation_id: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    },
    InvitationRevoked {
        invitation_id: Uuid,
        at: DateTime<Utc>,
    },
    OrganizationSuspended {
        reason: String,
        at: DateTime<Utc>,
    },
    OrganizationReactivated {
        at: DateTime<Utc>,
    },
}

impl OrganizationEvent {
    pub const TYPES: &'static [&'static str] = &[
        "OrganizationCreated",
        "OrganizationRenamed",
        "OrganizationSettingsChanged",
        "MemberAdded",
        "MemberRemoved",
        "MemberRolesChanged",
        "MemberInvited",
        "InvitationAccepted",
        "InvitationDeclined",
        "InvitationRevoked",
        "OrganizationSuspended",
        "OrganizationReactivated",
    ];
}

impl DomainEvent for OrganizationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OrganizationCreated { .. } => "OrganizationCreated",
            Self::OrganizationRenamed { .. } => "OrganizationRenamed",
            Self::OrganizationSettingsChanged { .. } => "OrganizationSettingsChanged",
            Self::MemberAdded { .. } => "MemberAdded",
            Self::MemberRemoved { .. } => "MemberRemoved",
            Self::MemberRolesChanged { .. } => "MemberRolesChanged",
            Self::MemberInvited { .. } => "MemberInvited",
            Self::InvitationAccepted { .. } => "InvitationAccepted",
            Self::InvitationDeclined { .. } => "InvitationDeclined",
            Self::InvitationRevoked { .. } => "InvitationRevoked",
            Self::OrganizationSuspended { .. } => "OrganizationSuspended",
            Self::OrganizationReactivated { .. } => "OrganizationReactivated",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrganizationError {
    #[error("the organization already exists")]
    AlreadyCreated,
    #[error("no such organization")]
    NotFound,
    #[error("the organization is suspended")]
    Suspended,
    #[error("the organization is not suspended")]
    NotSuspended,
    #[error("the user is already a member")]
    AlreadyMember,
    #[error("the user is not a member")]
    NotMember,
    #[error("a member needs at least one role")]
    NoRoles,
    #[error("the last owner cannot be removed or demoted")]
    LastOwner,
    /// Unknown, answered, revoked, or addressed to someone else: one answer, so
    /// nobody learns of invitations that are not theirs.
    #[error("no such invitation")]
    InvitationNotFound,
    #[error("the invitation has expired")]
    InvitationExpired,
}

/// The one settings key Keyledger interprets: with the value [`MFA_REQUIRED`] an
/// organization requires its members to have a second factor, and to have proved
/// it in the session, before a token is scoped to it. Every other key (and any
/// other value of this one) is the organization's own business.
pub const MFA_SETTING: &str = "mfa";

/// The value of [`MFA_SETTING`] that requires a second factor.
pub const MFA_REQUIRED: &str = "required";

/// Whether an organization with `settings` requires its members' sessions to
/// have proved a second factor.
pub fn requires_second_factor(settings: &BTreeMap<String, String>) -> bool {
    settings
        .get(MFA_SETTING)
        .is_some_and(|value| value == MFA_REQUIRED)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub organization_id: Option<Uuid>,
    pub slug: Option<OrganizationSlug>,
    pub name: Option<OrganizationName>,
    pub settings: BTreeMap<String, String>,
    pub members: BTreeMap<Uuid, BTreeSet<RoleRef>>,
    pub suspended: bool,
    /// Invitations not yet answered or revoked (expired ones included: they can
    /// still be revoked, but no longer accepted).
    #[serde(default)]
    pub invitations: BTreeMap<Uuid, PendingInvitation>,
}

impl Organization {
    pub fn owners(&self) -> impl Iterator<Item = &Uuid> {
        self.members
            .iter()
            .filter(|(_, roles)| roles.contains(&OWNER))
            .map(|(id, _)| id)
    }

    fn is_sole_owner(&self, user_id: &Uuid) -> bool {
        self.members
            .get(user_id)
            .is_some_and(|roles| roles.contains(&OWNER))
            && self.owners().count() == 1
    }

    fn ensure_active(&self) -> Result<(), OrganizationError> {
        if self.organization_id.is_none() {
            return Err(OrganizationError::NotFound);
        }
        if self.suspended {
            return Err(OrganizationError::Suspended);
        }
        Ok(())
    }

    /// The pending invitation `invitation_id` addressed to `user_id`, still open at
    /// `at`. Someone else's invitation is as absent as one that never existed.
    fn invitation_for(
        &self,
        invitation_id: &Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<&PendingInvitation, OrganizationError> {
        let invitation = self
            .invitations
            .get(invitation_id)
            .filter(|i| i.invitee == Some(user_id))
            .ok_or(OrganizationError::InvitationNotFound)?;
        if invitation.expires_at <= at {
            return Err(OrganizationError::InvitationExpired);
        }
        Ok(invitation)
    }
}

impl Aggregate for Organization {
    const TYPE: &'static str = "organization";
    type Command = OrganizationCommand;
    type Event = OrganizationEvent;
    type Error = OrganizationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OrganizationCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), OrganizationError> {
        use OrganizationCommand as C;
        use OrganizationEvent as E;
        let event = match command {
            C::Create {
                organization_id,
                slug,
                name,
                creator,
                at,
            } => {
                if self.organization_id.is_some() {
                    return Err(OrganizationError::AlreadyCreated);
                }
                E::OrganizationCreated {
                    organization_id,
                    slug,
                    name,
                    owner: creator,
                    at,
                }
            }
            C::Rename { name, at } => {
                self.ensure_active()?;
                E::OrganizationRenamed { name, at }
            }
            C::ChangeSettings { settings, at } => {
                self.ensure_active()?;
                E::OrganizationSettingsChanged { settings, at }
            }
            C::AddMember { user_id, roles, at } => {
                self.ensure_active()?;
                if self.members.contains_key(&user_id) {
                    return Err(OrganizationError::AlreadyMember);
                }
                if roles.is_empty() {
                    return Err(OrganizationError::NoRoles);
                }
                E::MemberAdded { user_id, roles, at }
            }
            C::RemoveMember { user_id, at } => {
                self.ensure_active()?;
                if !self.members.contains_key(&user_id) {
                    return Err(OrganizationError::NotMember);
                }
                if self.is_sole_owner(&user_id) {
                    return Err(OrganizationError::LastOwner);
                }
                E::MemberRemoved { user_id, at }
            }
            C::ChangeMemberRoles { user_id, roles, at } => {
                self.ensure_active()?;
                if !self.members.contains_key(&user_id) {
                    return Err(OrganizationError::NotMember);
                }
                if roles.is_empty() {
                    return Err(OrganizationError::NoRoles);
                }
                if self.is_sole_owner(&user_id) && !roles.contains(&OWNER) {
                    return Err(OrganizationError::LastOwner);
                }
                E::MemberRolesChanged { user_id, roles, at }
            }
            C::Invite {
                invitation_id,
                address,
                invitee,
                roles,
                invited_by,
                expires_at,
                at,
            } => {
                self.ensure_active()?;
                if roles.is_empty() {
                    return Err(OrganizationError::NoRoles);
                }
                if self.invitations.contains_key(&invitation_id) {
                    // A fresh id that exists: someone else got there first.
                    return Err(OrganizationError::AlreadyCreated);
                }
                E::MemberInvited {
                    invitation_id,
                    address,
                    invitee,
                    roles,
                    invited_by,
                    expires_at,
                    at,
                }
            }
            C::AcceptInvitation {
                invitation_id,
                user_id,
                at,
            } => {
                // Decided here, on the state the commit is conditional on: an
                // invitation revoked, an organization suspended or a membership
                // begun meanwhile cannot be accepted past.
                self.ensure_active()?;
                let roles = self
                    .invitation_for(&invitation_id, user_id, at)?
                    .roles
                    .clone();
                if self.members.contains_key(&user_id) {
                    return Err(OrganizationError::AlreadyMember);
                }
                sink.write(
                    E::InvitationAccepted {
                        invitation_id,
                        user_id,
                        at,
                    },
                    self,
                )
                .await;
                E::MemberAdded { user_id, roles, at }
            }
            C::DeclineInvitation {
                invitation_id,
                user_id,
                at,
            } => {
                // One may always say no, even to a suspended organization.
                if self.organization_id.is_none() {
                    return Err(OrganizationError::NotFound);
                }
                self.invitation_for(&invitation_id, user_id, at)?;
                E::InvitationDeclined {
                    invitation_id,
                    user_id,
                    at,
                }
            }
            C::RevokeInvitation { invitation_id, at } => {
                self.ensure_active()?;
                if !self.invitations.contains_key(&invitation_id) {
                    return Err(OrganizationError::InvitationNotFound);
                }
                E::InvitationRevoked { invitation_id, at }
            }
            C::Suspend { reason, at } => {
                self.ensure_active()?;
                E::OrganizationSuspended { reason, at }
            }
            C::Reactivate { at } => {
                if self.organization_id.is_none() {
                    return Err(OrganizationError::NotFound);
                }
                if !self.suspended {
                    return Err(OrganizationError::NotSuspended);
                }
                E::OrganizationReactivated { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: OrganizationEvent) {
        use OrganizationEvent as E;
        match event {
            E::OrganizationCreated {
                organization_id,
                slug,
                name,
                owner,
                ..
            } => {
                self.organization_id = Some(organization_id);
                self.slug = Some(slug);
                self.name = Some(name);
                self.members.insert(owner, BTreeSet::from([OWNER]));
            }
            E::OrganizationRenamed { name, .. } => self.name = Some(name),
            E::OrganizationSettingsChanged { settings, .. } => self.settings = settings,
            E::MemberAdded { user_id, roles, .. }
            | E::MemberRolesChanged { user_id, roles, .. } => {
                self.members.insert(user_id, roles);
            }
            E::MemberRemoved { user_id, .. } => {
                self.members.remove(&user_id);
            }
            E::MemberInvited {
                invitation_id,
                address,
                invitee,
                roles,
                expires_at,
                ..
            } => {
                self.invitations.insert(
                    invitation_id,
                    PendingInvitation {
                        invitee,
                        roles,
                        expires_at,
                        by_email: matches!(address, InvitationAddress::Email(_)),
                    },
                );
            }
            E::InvitationAccepted { invitation_id, .. }
            | E::InvitationDeclined { invitation_id, .. }
            | E::InvitationRevoked { invitation_id, .. } => {
                self.invitations.remove(&invitation_id);
            }
            E::OrganizationSuspended { .. } => self.suspended = true,
            E::OrganizationReactivated { .. } => self.suspended = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    type OrgTest = TestFramework<Organization>;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn created() -> OrganizationEvent {
        OrganizationEvent::OrganizationCreated {
            organization_id: id(100),
            slug: OrganizationSlug::parse("acme").unwrap(),
            name: OrganizationName::parse("Acme").unwrap(),
            owner: id(1),
            at: t(),
        }
    }

    fn roles(r: &[RoleRef]) -> BTreeSet<RoleRef> {
        r.iter().copied().collect()
    }

    fn member() -> RoleRef {
        RoleRef::BuiltIn(BuiltInRole::Member)
    }

    fn added(user: u128, r: &[RoleRef]) -> OrganizationEvent {
        OrganizationEvent::MemberAdded {
            user_id: id(user),
            roles: roles(r),
            at: t(),
        }
    }

    #[test]
    fn slugs_and_names_are_checked() {
        assert!(OrganizationSlug::parse("Acme-Corp").is_ok());
        for bad in [
            "ab",
            "-acme",
            "acme-",
            "ac--me",
            "acme corp",
            "äcme",
            &"a".repeat(64),
        ] {
            assert!(OrganizationSlug::parse(bad).is_err(), "{bad}");
        }
        assert!(OrganizationName::parse("").is_err());
        assert!(OrganizationName::parse(&"x".repeat(101)).is_err());
    }

    #[test]
    fn the_creator_becomes_the_owner() {
        OrgTest::with(())
            .given_no_previous_events()
            .when(OrganizationCommand::Create {
                organization_id: id(100),
                slug: OrganizationSlug::parse("acme").unwrap(),
                name: OrganizationName::parse("Acme").unwrap(),
                creator: id(1),
                at: t(),
            })
            .then_expect_events(vec![created()]);
        let mut org = Organization::default();
        org.apply(created());
        assert_eq!(org.owners().collect::<Vec<_>>(), vec![&id(1)]);
    }

    #[test]
    fn creating_twice_is_refused() {
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::Create {
                organization_id: id(100),
                slug: OrganizationSlug::parse("acme").unwrap(),
                name: OrganizationName::parse("Acme").unwrap(),
                creator: id(2),
                at: t(),
            })
            .then_expect_error(OrganizationError::AlreadyCreated);
    }

    #[test]
    fn members_are_added_once_with_at_least_one_role() {
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::AddMember {
                user_id: id(2),
                roles: roles(&[member()]),
                at: t(),
            })
            .then_expect_events(vec![added(2, &[member()])]);
        OrgTest::with(())
            .given(vec![created(), added(2, &[member()])])
            .when(OrganizationCommand::AddMember {
                user_id: id(2),
                roles: roles(&[member()]),
                at: t(),
            })
            .then_expect_error(OrganizationError::AlreadyMember);
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::AddMember {
                user_id: id(2),
                roles: BTreeSet::new(),
                at: t(),
            })
            .then_expect_error(OrganizationError::NoRoles);
    }

    #[test]
    fn the_last_owner_can_be_neither_removed_nor_demoted() {
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::RemoveMember {
                user_id: id(1),
                at: t(),
            })
            .then_expect_error(OrganizationError::LastOwner);
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::ChangeMemberRoles {
                user_id: id(1),
                roles: roles(&[member()]),
                at: t(),
            })
            .then_expect_error(OrganizationError::LastOwner);
    }

    #[test]
    fn an_owner_can_leave_once_there_is_another() {
        OrgTest::with(())
            .given(vec![created(), added(2, &[OWNER])])
            .when(OrganizationCommand::RemoveMember {
                user_id: id(1),
                at: t(),
            })
            .then_expect_events(vec![OrganizationEvent::MemberRemoved {
                user_id: id(1),
                at: t(),
            }]);
    }

    #[test]
    fn removing_or_changing_a_non_member_is_refused() {
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::RemoveMember {
                user_id: id(9),
                at: t(),
            })
            .then_expect_error(OrganizationError::NotMember);
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::ChangeMemberRoles {
                user_id: id(9),
                roles: roles(&[member()]),
                at: t(),
            })
            .then_expect_error(OrganizationError::NotMember);
    }

    #[test]
    fn a_suspended_organization_refuses_changes_until_reactivated() {
        let suspended = OrganizationEvent::OrganizationSuspended {
            reason: "unpaid".into(),
            at: t(),
        };
        OrgTest::with(())
            .given(vec![created(), suspended.clone()])
            .when(OrganizationCommand::Rename {
                name: OrganizationName::parse("New").unwrap(),
                at: t(),
            })
            .then_expect_error(OrganizationError::Suspended);
        OrgTest::with(())
            .given(vec![created(), suspended])
            .when(OrganizationCommand::Reactivate { at: t() })
            .then_expect_events(vec![OrganizationEvent::OrganizationReactivated { at: t() }]);
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::Reactivate { at: t() })
            .then_expect_error(OrganizationError::NotSuspended);
    }

    #[test]
    fn commands_on_a_missing_organization_are_refused() {
        OrgTest::with(())
            .given_no_previous_events()
            .when(OrganizationCommand::Rename {
                name: OrganizationName::parse("X").unwrap(),
                at: t(),
            })
            .then_expect_error(OrganizationError::NotFound);
    }

    fn later(hours: i64) -> DateTime<Utc> {
        t() + chrono::Duration::hours(hours)
    }

    fn invited(invitation: u128, invitee: Option<u128>) -> OrganizationEvent {
        OrganizationEvent::MemberInvited {
            invitation_id: id(invitation),
            address: InvitationAddress::UserId(id(invitee.unwrap_or(99))),
            invitee: invitee.map(id),
            roles: roles(&[member()]),
            invited_by: id(1),
            expires_at: later(24),
            at: t(),
        }
    }

    fn accept(invitation: u128, user: u128, at: DateTime<Utc>) -> OrganizationCommand {
        OrganizationCommand::AcceptInvitation {
            invitation_id: id(invitation),
            user_id: id(user),
            at,
        }
    }

    #[test]
    fn an_invitation_names_its_invitee_and_needs_a_role() {
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::Invite {
                invitation_id: id(500),
                address: InvitationAddress::UserId(id(2)),
                invitee: Some(id(2)),
                roles: roles(&[member()]),
                invited_by: id(1),
                expires_at: later(24),
                at: t(),
            })
            .then_expect_events(vec![invited(500, Some(2))]);
        OrgTest::with(())
            .given(vec![created()])
            .when(OrganizationCommand::Invite {
                invitation_id: id(500),
                address: InvitationAddress::UserId(id(2)),
                invitee: Some(id(2)),
                roles: BTreeSet::new(),
                invited_by: id(1),
                expires_at: later(24),
                at: t(),
            })
            .then_expect_error(OrganizationError::NoRoles);
    }

    #[test]
    fn accepting_makes_the_invitee_a_member_with_the_invited_roles() {
        OrgTest::with(())
            .given(vec![created(), invited(500, Some(2))])
            .when(accept(500, 2, later(1)))
            .then_expect_events(vec![
                OrganizationEvent::InvitationAccepted {
                    invitation_id: id(500),
                    user_id: id(2),
                    at: later(1),
                },
                OrganizationEvent::MemberAdded {
                    user_id: id(2),
                    roles: roles(&[member()]),
                    at: later(1),
                },
            ]);
    }

    #[test]
    fn only_the_invitee_can_accept_or_decline() {
        for command in [
            accept(500, 3, later(1)),
            OrganizationCommand::DeclineInvitation {
                invitation_id: id(500),
                user_id: id(3),
                at: later(1),
            },
        ] {
            OrgTest::with(())
                .given(vec![created(), invited(500, Some(2))])
                .when(command)
                .then_expect_error(OrganizationError::InvitationNotFound);
        }
    }

    #[test]
    fn an_invitation_to_no_account_can_be_accepted_by_nobody() {
        for user in [2, 99] {
            OrgTest::with(())
                .given(vec![created(), invited(500, None)])
                .when(accept(500, user, later(1)))
                .then_expect_error(OrganizationError::InvitationNotFound);
        }
    }

    #[test]
    fn an_expired_invitation_cannot_be_accepted_but_can_be_revoked() {
        OrgTest::with(())
            .given(vec![created(), invited(500, Some(2))])
            .when(accept(500, 2, later(24)))
            .then_expect_error(OrganizationError::InvitationExpired);
        OrgTest::with(())
            .given(vec![created(), invited(500, Some(2))])
            .when(OrganizationCommand::RevokeInvitation {
                invitation_id: id(500),
                at: later(48),
            })
            .then_expect_events(vec![OrganizationEvent::InvitationRevoked {
                invitation_id: id(500),
                at: later(48),
            }]);
    }

    #[test]
    fn an_answered_or_revoked_invitation_is_gone() {
        let declined = OrganizationEvent::InvitationDeclined {
            invitation_id: id(500),
            user_id: id(2),
            at: t(),
        };
        let revoked = OrganizationEvent::InvitationRevoked {
            invitation_id: id(500),
            at: t(),
        };
        let accepted = OrganizationEvent::InvitationAccepted {
            invitation_id: id(500),
            user_id: id(2),
            at: t(),
        };
        for ended in [declined, revoked, accepted] {
            OrgTest::with(())
                .given(vec![created(), invited(500, Some(2)), ended.clone()])
                .when(accept(500, 2, later(1)))
                .then_expect_error(OrganizationError::InvitationNotFound);
            OrgTest::with(())
                .given(vec![created(), invited(500, Some(2)), ended])
                .when(OrganizationCommand::RevokeInvitation {
                    invitation_id: id(500),
                    at: later(1),
                })
                .then_expect_error(OrganizationError::InvitationNotFound);
        }
    }

    #[test]
    fn a_suspended_organization_cannot_be_joined_but_can_be_declined() {
        let suspended = OrganizationEvent::OrganizationSuspended {
            reason: "unpaid".into(),
            at: t(),
        };
        OrgTest::with(())
            .given(vec![created(), invited(500, Some(2)), suspended.clone()])
            .when(accept(500, 2, later(1)))
            .then_expect_error(OrganizationError::Suspended);
        OrgTest::with(())
            .given(vec![created(), invited(500, Some(2)), suspended])
            .when(OrganizationCommand::DeclineInvitation {
                invitation_id: id(500),
                user_id: id(2),
                at: later(1),
            })
            .then_expect_events(vec![OrganizationEvent::InvitationDeclined {
                invitation_id: id(500),
                user_id: id(2),
                at: later(1),
            }]);
    }

    #[test]
    fn a_member_cannot_accept_a_second_membership() {
        OrgTest::with(())
            .given(vec![created(), invited(500, Some(2)), added(2, &[OWNER])])
            .when(accept(500, 2, later(1)))
            .then_expect_error(OrganizationError::AlreadyMember);
    }

    #[test]
    fn applying_any_event_twice_equals_applying_it_once() {
        let history = vec![
            created(),
            added(2, &[member()]),
            OrganizationEvent::MemberRolesChanged {
                user_id: id(2),
                roles: roles(&[OWNER]),
                at: t(),
            },
            OrganizationEvent::MemberRemoved {
                user_id: id(1),
                at: t(),
            },
            OrganizationEvent::OrganizationRenamed {
                name: OrganizationName::parse("Acme 2").unwrap(),
                at: t(),
            },
            OrganizationEvent::OrganizationSettingsChanged {
                settings: BTreeMap::from([("mfa".into(), "required".into())]),
                at: t(),
            },
            OrganizationEvent::OrganizationSuspended {
                reason: "x".into(),
                at: t(),
            },
            OrganizationEvent::OrganizationReactivated { at: t() },
            invited(500, Some(3)),
            OrganizationEvent::InvitationAccepted {
                invitation_id: id(500),
                user_id: id(3),
                at: t(),
            },
            invited(501, Some(4)),
            OrganizationEvent::InvitationRevoked {
                invitation_id: id(501),
                at: t(),
            },
        ];
        let mut once = Organization::default();
        let mut twice = Organization::default();
        for event in history {
            once.apply(event.clone());
            twice.apply(event.clone());
            twice.apply(event);
            assert_eq!(once, twice);
        }
    }

    #[test]
    fn only_mfa_required_requires_a_second_factor() {
        let settings = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(requires_second_factor(&settings(&[("mfa", "required")])));
        assert!(!requires_second_factor(&settings(&[])));
        assert!(!requires_second_factor(&settings(&[("mfa", "optional")])));
        assert!(!requires_second_factor(&settings(&[("mfa", "Required")])));
        assert!(!requires_second_factor(&settings(&[("theme", "required")])));
    }
}
