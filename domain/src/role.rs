//! The Role aggregate: a named set of permissions an organization defines for
//! itself (the built-in roles live in [`crate::permission::BuiltInRole`]).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::permission::{BuiltInRole, PermissionSet};

/// A custom role's name: 1 to 50 characters, and not the name of a built-in role
/// (so `admin` always means the built-in one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoleName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a role name is 1 to 50 printable characters and not a built-in role's name")]
pub struct InvalidRoleName;

impl RoleName {
    pub fn parse(raw: &str) -> Result<Self, InvalidRoleName> {
        let trimmed = raw.trim();
        let count = trimmed.chars().count();
        let reserved = BuiltInRole::ALL
            .iter()
            .any(|r| r.name().eq_ignore_ascii_case(trimmed));
        if count == 0 || count > 50 || trimmed.chars().any(char::is_control) || reserved {
            return Err(InvalidRoleName);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoleCommand {
    Define {
        role_id: Uuid,
        organization_id: Uuid,
        name: RoleName,
        permissions: PermissionSet,
        at: DateTime<Utc>,
    },
    Rename {
        name: RoleName,
        at: DateTime<Utc>,
    },
    /// Replaces the permission set. Whether the actor may grant them is decided
    /// by the caller, who knows the actor's own permissions.
    UpdatePermissions {
        permissions: PermissionSet,
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RoleEvent {
    RoleDefined {
        role_id: Uuid,
        organization_id: Uuid,
        name: RoleName,
        permissions: PermissionSet,
        at: DateTime<Utc>,
    },
    RoleRenamed {
        name: RoleName,
        at: DateTime<Utc>,
    },
    /// Carries the whole new set (what applying sets) and what changed (what
    /// consumers react to).
    PermissionUpdated {
        permissions: PermissionSet,
        added: PermissionSet,
        removed: PermissionSet,
        at: DateTime<Utc>,
    },
    RoleDeleted {
        at: DateTime<Utc>,
    },
}

impl RoleEvent {
    pub const TYPES: &'static [&'static str] = &[
        "RoleDefined",
        "RoleRenamed",
        "PermissionUpdated",
        "RoleDeleted",
    ];
}

impl DomainEvent for RoleEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RoleDefined { .. } => "RoleDefined",
            Self::RoleRenamed { .. } => "RoleRenamed",
            Self::PermissionUpdated { .. } => "PermissionUpdated",
            Self::RoleDeleted { .. } => "RoleDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("the role already exists")]
    AlreadyDefined,
    #[error("no such role")]
    NotFound,
    #[error("the permissions are unchanged")]
    Unchanged,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub role_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub name: Option<RoleName>,
    pub permissions: PermissionSet,
    pub deleted: bool,
}

impl Role {
    fn ensure_live(&self) -> Result<(), RoleError> {
        if self.role_id.is_none() || self.deleted {
            Err(RoleError::NotFound)
        } else {
            Ok(())
        }
    }
}

impl Aggregate for Role {
    const TYPE: &'static str = "role";
    type Command = RoleCommand;
    type Event = RoleEvent;
    type Error = RoleError;
    type Services = ();

    async fn handle(
        &mut self,
        command: RoleCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), RoleError> {
        let event = match command {
            RoleCommand::Define {
                role_id,
                organization_id,
                name,
                permissions,
                at,
            } => {
                if self.role_id.is_some() {
                    return Err(RoleError::AlreadyDefined);
                }
                RoleEvent::RoleDefined {
                    role_id,
                    organization_id,
                    name,
                    permissions,
                    at,
                }
            }
            RoleCommand::Rename { name, at } => {
                self.ensure_live()?;
                RoleEvent::RoleRenamed { name, at }
            }
            RoleCommand::UpdatePermissions { permissions, at } => {
                self.ensure_live()?;
                if permissions == self.permissions {
                    return Err(RoleError::Unchanged);
                }
                let added = permissions
                    .iter()
                    .filter(|p| !self.permissions.iter().any(|q| q == *p))
                    .cloned()
                    .collect();
                let removed = self
                    .permissions
                    .iter()
                    .filter(|p| !permissions.iter().any(|q| q == *p))
                    .cloned()
                    .collect();
                RoleEvent::PermissionUpdated {
                    permissions,
                    added,
                    removed,
                    at,
                }
            }
            RoleCommand::Delete { at } => {
                self.ensure_live()?;
                RoleEvent::RoleDeleted { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: RoleEvent) {
        match event {
            RoleEvent::RoleDefined {
                role_id,
                organization_id,
                name,
                permissions,
                ..
            } => {
                self.role_id = Some(role_id);
                self.organization_id = Some(organization_id);
                self.name = Some(name);
                self.permissions = permissions;
            }
            RoleEvent::RoleRenamed { name, .. } => self.name = Some(name),
            RoleEvent::PermissionUpdated { permissions, .. } => self.permissions = permissions,
            RoleEvent::RoleDeleted { .. } => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    type RoleTest = TestFramework<Role>;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn perms(raw: &[&str]) -> PermissionSet {
        PermissionSet::parse(raw.iter().copied()).unwrap()
    }

    fn defined() -> RoleEvent {
        RoleEvent::RoleDefined {
            role_id: Uuid::from_u128(7),
            organization_id: Uuid::from_u128(100),
            name: RoleName::parse("Billing").unwrap(),
            permissions: perms(&["invoices:read"]),
            at: t(),
        }
    }

    #[test]
    fn built_in_names_are_reserved() {
        assert!(RoleName::parse("Billing").is_ok());
        for bad in ["", "admin", "Owner", " member ", &"x".repeat(51)] {
            assert!(RoleName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defining_a_role_records_its_permissions() {
        RoleTest::with(())
            .given_no_previous_events()
            .when(RoleCommand::Define {
                role_id: Uuid::from_u128(7),
                organization_id: Uuid::from_u128(100),
                name: RoleName::parse("Billing").unwrap(),
                permissions: perms(&["invoices:read"]),
                at: t(),
            })
            .then_expect_events(vec![defined()]);
    }

    #[test]
    fn defining_twice_is_refused() {
        RoleTest::with(())
            .given(vec![defined()])
            .when(RoleCommand::Define {
                role_id: Uuid::from_u128(7),
                organization_id: Uuid::from_u128(100),
                name: RoleName::parse("Other").unwrap(),
                permissions: PermissionSet::default(),
                at: t(),
            })
            .then_expect_error(RoleError::AlreadyDefined);
    }

    #[test]
    fn updating_permissions_records_what_changed() {
        RoleTest::with(())
            .given(vec![defined()])
            .when(RoleCommand::UpdatePermissions {
                permissions: perms(&["invoices:*", "customers:read"]),
                at: t(),
            })
            .then_expect_events(vec![RoleEvent::PermissionUpdated {
                permissions: perms(&["invoices:*", "customers:read"]),
                added: perms(&["invoices:*", "customers:read"]),
                removed: perms(&["invoices:read"]),
                at: t(),
            }]);
    }

    #[test]
    fn an_unchanged_update_is_refused() {
        RoleTest::with(())
            .given(vec![defined()])
            .when(RoleCommand::UpdatePermissions {
                permissions: perms(&["invoices:read"]),
                at: t(),
            })
            .then_expect_error(RoleError::Unchanged);
    }

    #[test]
    fn a_deleted_role_refuses_everything() {
        let deleted = RoleEvent::RoleDeleted { at: t() };
        for command in [
            RoleCommand::Rename {
                name: RoleName::parse("X").unwrap(),
                at: t(),
            },
            RoleCommand::UpdatePermissions {
                permissions: perms(&["a:b"]),
                at: t(),
            },
            RoleCommand::Delete { at: t() },
        ] {
            RoleTest::with(())
                .given(vec![defined(), deleted.clone()])
                .when(command)
                .then_expect_error(RoleError::NotFound);
        }
    }

    #[test]
    fn commands_on_a_missing_role_are_refused() {
        RoleTest::with(())
            .given_no_previous_events()
            .when(RoleCommand::Delete { at: t() })
            .then_expect_error(RoleError::NotFound);
    }

    #[test]
    fn applying_any_event_twice_equals_applying_it_once() {
        let history = vec![
            defined(),
            RoleEvent::RoleRenamed {
                name: RoleName::parse("Finance").unwrap(),
                at: t(),
            },
            RoleEvent::PermissionUpdated {
                permissions: perms(&["invoices:*"]),
                added: perms(&["invoices:*"]),
                removed: perms(&["invoices:read"]),
                at: t(),
            },
            RoleEvent::RoleDeleted { at: t() },
        ];
        let mut once = Role::default();
        let mut twice = Role::default();
        for event in history {
            once.apply(event.clone());
            twice.apply(event.clone());
            twice.apply(event);
            assert_eq!(once, twice);
        }
    }
}
