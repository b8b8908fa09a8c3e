//! The ServiceAccount aggregate: a machine identity owned by one organization.
//!
//! Other modules of the platform authenticate as a service account with a client
//! secret (the OAuth client-credentials grant) and then carry roles like a member.
//! The secret is random and high-entropy, so, like a refresh token, only its SHA-256
//! hash is stored; it is shown to the creator once and never again.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::organization::{OrganizationName, RoleRef};
use crate::values::TokenHash;

#[derive(Debug, Clone, PartialEq)]
pub enum ServiceAccountCommand {
    Create {
        service_account_id: Uuid,
        organization_id: Uuid,
        name: OrganizationName,
        roles: BTreeSet<RoleRef>,
        secret_hash: TokenHash,
        at: DateTime<Utc>,
    },
    ChangeRoles {
        roles: BTreeSet<RoleRef>,
        at: DateTime<Utc>,
    },
    /// Replaces the secret: the previous one stops working at once.
    RotateSecret {
        secret_hash: TokenHash,
        at: DateTime<Utc>,
    },
    Delete {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServiceAccountEvent {
    ServiceAccountCreated {
        service_account_id: Uuid,
        organization_id: Uuid,
        name: OrganizationName,
        roles: BTreeSet<RoleRef>,
        secret_hash: TokenHash,
        at: DateTime<Utc>,
    },
    ServiceAccountRolesChanged {
        roles: BTreeSet<RoleRef>,
        at: DateTime<Utc>,
    },
    ServiceAccountSecretRotated {
        secret_hash: TokenHash,
        at: DateTime<Utc>,
    },
    ServiceAccountDeleted {
        at: DateTime<Utc>,
    },
}

impl ServiceAccountEvent {
    pub const TYPES: &'static [&'static str] = &[
        "ServiceAccountCreated",
        "ServiceAccountRolesChanged",
        "ServiceAccountSecretRotated",
        "ServiceAccountDeleted",
    ];
}

impl DomainEvent for ServiceAccountEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ServiceAccountCreated { .. } => "ServiceAccountCreated",
            Self::ServiceAccountRolesChanged { .. } => "ServiceAccountRolesChanged",
            Self::ServiceAccountSecretRotated { .. } => "ServiceAccountSecretRotated",
            Self::ServiceAccountDeleted { .. } => "ServiceAccountDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAccountError {
    #[error("the service account already exists")]
    AlreadyCreated,
    #[error("no such service account")]
    NotFound,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub service_account_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub name: Option<OrganizationName>,
    pub roles: BTreeSet<RoleRef>,
    pub secret_hash: Option<TokenHash>,
    pub created_at: Option<DateTime<Utc>>,
    pub deleted: bool,
    /// When the secret was last replaced; tokens issued before then are refused
    /// (see [`first_token_instant_after_rotation`]). Absent in snapshots taken
    /// before it existed, which the next rotation fills in.
    #[serde(default)]
    pub secret_rotated_at: Option<DateTime<Utc>>,
}

/// The earliest `iat` a service account's token may carry once its secret was
/// rotated at `rotated_at`: the next whole second.
///
/// A rotation ends the tokens got with the previous secret (it may have leaked), so
/// whoever accepts a token compares its `iat` with the rotation. Tokens carry `iat`
/// in whole seconds (PASETO recommends it), so a token issued in the second of the
/// rotation could be from either side of it; none is accepted from that second,
/// and tokens issued after the rotation are dated from the next one.
pub fn first_token_instant_after_rotation(rotated_at: DateTime<Utc>) -> DateTime<Utc> {
    let whole_second = DateTime::from_timestamp(rotated_at.timestamp(), 0).unwrap_or(rotated_at);
    whole_second + chrono::Duration::seconds(1)
}

impl ServiceAccount {
    pub fn is_live(&self) -> bool {
        self.service_account_id.is_some() && !self.deleted
    }

    /// Whether `presented` is the current secret's hash (constant time).
    pub fn secret_matches(&self, presented: &TokenHash) -> bool {
        self.is_live() && self.secret_hash.as_ref().is_some_and(|h| h == presented)
    }

    fn ensure_live(&self) -> Result<(), ServiceAccountError> {
        if self.is_live() {
            Ok(())
        } else {
            Err(ServiceAccountError::NotFound)
        }
    }
}

impl Aggregate for ServiceAccount {
    const TYPE: &'static str = "service_account";
    type Command = ServiceAccountCommand;
    type Event = ServiceAccountEvent;
    type Error = ServiceAccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ServiceAccountCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ServiceAccountError> {
        use ServiceAccountCommand as C;
        use ServiceAccountEvent as E;
        let event = match command {
            C::Create {
                service_account_id,
                organization_id,
                name,
                roles,
                secret_hash,
                at,
            } => {
                if self.service_account_id.is_some() {
                    return Err(ServiceAccountError::AlreadyCreated);
                }
                E::ServiceAccountCreated {
                    service_account_id,
                    organization_id,
                    name,
                    roles,
                    secret_hash,
                    at,
                }
            }
            C::ChangeRoles { roles, at } => {
                self.ensure_live()?;
                E::ServiceAccountRolesChanged { roles, at }
            }
            C::RotateSecret { secret_hash, at } => {
                self.ensure_live()?;
                E::ServiceAccountSecretRotated { secret_hash, at }
            }
            C::Delete { at } => {
                self.ensure_live()?;
                E::ServiceAccountDeleted { at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ServiceAccountEvent) {
        use ServiceAccountEvent as E;
        match event {
            E::ServiceAccountCreated {
                service_account_id,
                organization_id,
                name,
                roles,
                secret_hash,
                at,
            } => {
                self.service_account_id = Some(service_account_id);
                self.organization_id = Some(organization_id);
                self.name = Some(name);
                self.roles = roles;
                self.secret_hash = Some(secret_hash);
                self.created_at = Some(at);
            }
            E::ServiceAccountRolesChanged { roles, .. } => self.roles = roles,
            E::ServiceAccountSecretRotated { secret_hash, at } => {
                self.secret_hash = Some(secret_hash);
                self.secret_rotated_at = Some(at);
            }
            E::ServiceAccountDeleted { .. } => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::permission::BuiltInRole;

    type ServiceAccountTest = TestFramework<ServiceAccount>;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + chrono::Duration::minutes(minute)
    }

    fn roles() -> BTreeSet<RoleRef> {
        BTreeSet::from([RoleRef::BuiltIn(BuiltInRole::Auditor)])
    }

    fn created() -> ServiceAccountEvent {
        ServiceAccountEvent::ServiceAccountCreated {
            service_account_id: Uuid::from_u128(5),
            organization_id: Uuid::from_u128(1),
            name: OrganizationName::parse("billing worker").unwrap(),
            roles: roles(),
            secret_hash: TokenHash::from_bytes([1; 32]),
            at: t(0),
        }
    }

    #[test]
    fn create_records_the_secret_hash_and_roles() {
        ServiceAccountTest::with(())
            .given_no_previous_events()
            .when(ServiceAccountCommand::Create {
                service_account_id: Uuid::from_u128(5),
                organization_id: Uuid::from_u128(1),
                name: OrganizationName::parse("billing worker").unwrap(),
                roles: roles(),
                secret_hash: TokenHash::from_bytes([1; 32]),
                at: t(0),
            })
            .then_expect_events(vec![created()]);
        ServiceAccountTest::with(())
            .given(vec![created()])
            .when(ServiceAccountCommand::Create {
                service_account_id: Uuid::from_u128(5),
                organization_id: Uuid::from_u128(1),
                name: OrganizationName::parse("again").unwrap(),
                roles: roles(),
                secret_hash: TokenHash::from_bytes([2; 32]),
                at: t(1),
            })
            .then_expect_error(ServiceAccountError::AlreadyCreated);
    }

    #[test]
    fn rotating_replaces_the_secret() {
        let mut account = ServiceAccount::default();
        account.apply(created());
        assert!(account.secret_matches(&TokenHash::from_bytes([1; 32])));
        account.apply(ServiceAccountEvent::ServiceAccountSecretRotated {
            secret_hash: TokenHash::from_bytes([2; 32]),
            at: t(1),
        });
        assert!(!account.secret_matches(&TokenHash::from_bytes([1; 32])));
        assert!(account.secret_matches(&TokenHash::from_bytes([2; 32])));
    }

    #[test]
    fn a_deleted_account_accepts_nothing_and_matches_no_secret() {
        let deleted = ServiceAccountEvent::ServiceAccountDeleted { at: t(1) };
        for command in [
            ServiceAccountCommand::ChangeRoles {
                roles: BTreeSet::new(),
                at: t(2),
            },
            ServiceAccountCommand::RotateSecret {
                secret_hash: TokenHash::from_bytes([3; 32]),
                at: t(2),
            },
            ServiceAccountCommand::Delete { at: t(2) },
        ] {
            ServiceAccountTest::with(())
                .given(vec![created(), deleted.clone()])
                .when(command)
                .then_expect_error(ServiceAccountError::NotFound);
        }
        let mut account = ServiceAccount::default();
        account.apply(created());
        account.apply(deleted);
        assert!(!account.secret_matches(&TokenHash::from_bytes([1; 32])));
    }

    #[test]
    fn roles_can_change_while_live() {
        ServiceAccountTest::with(())
            .given(vec![created()])
            .when(ServiceAccountCommand::ChangeRoles {
                roles: BTreeSet::from([RoleRef::Custom(Uuid::from_u128(8))]),
                at: t(1),
            })
            .then_expect_events(vec![ServiceAccountEvent::ServiceAccountRolesChanged {
                roles: BTreeSet::from([RoleRef::Custom(Uuid::from_u128(8))]),
                at: t(1),
            }]);
    }

    #[test]
    fn applying_any_event_twice_equals_applying_it_once() {
        let history = vec![
            created(),
            ServiceAccountEvent::ServiceAccountRolesChanged {
                roles: BTreeSet::new(),
                at: t(1),
            },
            ServiceAccountEvent::ServiceAccountSecretRotated {
                secret_hash: TokenHash::from_bytes([2; 32]),
                at: t(2),
            },
            ServiceAccountEvent::ServiceAccountDeleted { at: t(3) },
        ];
        let (mut once, mut twice) = (ServiceAccount::default(), ServiceAccount::default());
        for event in history {
            once.apply(event.clone());
            twice.apply(event.clone());
            twice.apply(event);
            assert_eq!(once, twice);
        }
    }

    #[test]
    fn a_rotation_is_remembered_and_tokens_are_dated_from_the_next_whole_second() {
        let mut account = ServiceAccount::default();
        account.apply(created());
        assert_eq!(account.secret_rotated_at, None);
        let rotated = t(2) + chrono::Duration::milliseconds(250);
        account.apply(ServiceAccountEvent::ServiceAccountSecretRotated {
            secret_hash: TokenHash::from_bytes([2; 32]),
            at: rotated,
        });
        assert_eq!(account.secret_rotated_at, Some(rotated));
        // A token of the rotation's own second could be from before it: none is.
        let second = chrono::Duration::seconds(1);
        assert_eq!(first_token_instant_after_rotation(rotated), t(2) + second);
        assert_eq!(first_token_instant_after_rotation(t(2)), t(2) + second);
    }
}
