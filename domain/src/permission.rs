//! Permissions and the built-in roles: the vocabulary of "may this user do this?".
//!
//! A permission is `resource:action` (`invoices:read`, `members:manage`). A granted
//! permission may end in `*` to cover everything with that prefix (`invoices:*`, or
//! `*` for everything); a requested permission never does.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a permission string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a permission is `resource:action` (lower-case letters, digits, `_`, `-`, `.`), optionally ending in `*`, at most 100 characters")]
pub struct InvalidPermission;

/// One permission as granted (wildcards allowed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Permission(String);

impl Permission {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, InvalidPermission> {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidPermission);
        }
        let (body, wildcard) = match raw.strip_suffix('*') {
            Some(body) => (body, true),
            None => (raw, false),
        };
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.:".contains(c);
        if !body.chars().all(allowed) || body.contains('*') {
            return Err(InvalidPermission);
        }
        if !wildcard {
            // A concrete permission names a resource and an action.
            let Some((resource, action)) = body.split_once(':') else {
                return Err(InvalidPermission);
            };
            if resource.is_empty() || action.is_empty() || action.contains(':') {
                return Err(InvalidPermission);
            }
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.ends_with('*')
    }

    /// The part a wildcard matches on (`invoices:` for `invoices:*`).
    fn prefix(&self) -> &str {
        self.0.strip_suffix('*').unwrap_or(&self.0)
    }

    /// Whether this granted permission covers `other` (concrete or wildcard): a
    /// wildcard covers everything that starts with its prefix, including narrower
    /// wildcards.
    pub fn covers(&self, other: &Permission) -> bool {
        if self.is_wildcard() {
            other.0.starts_with(self.prefix())
        } else {
            !other.is_wildcard() && self.0 == other.0
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Permission {
    type Error = InvalidPermission;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Permission> for String {
    fn from(value: Permission) -> Self {
        value.0
    }
}

/// A set of granted permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PermissionSet(BTreeSet<Permission>);

impl PermissionSet {
    pub fn parse<'a>(raw: impl IntoIterator<Item = &'a str>) -> Result<Self, InvalidPermission> {
        raw.into_iter()
            .map(Permission::parse)
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Permission> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the holder may do `requested` (a concrete permission).
    pub fn allows(&self, requested: &Permission) -> bool {
        !requested.is_wildcard() && self.0.iter().any(|held| held.covers(requested))
    }

    /// Whether every permission of `grant` is covered by this set: an administrator
    /// may only hand out what they hold themselves.
    pub fn covers_all(&self, grant: &PermissionSet) -> bool {
        grant
            .0
            .iter()
            .all(|wanted| self.0.iter().any(|held| held.covers(wanted)))
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<T: IntoIterator<Item = Permission>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// The roles every organization has. Their permissions are fixed in code (and so
/// the same in every organization and at every point of the history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltInRole {
    /// Everything, including deleting the organization and managing owners.
    Owner,
    /// Runs the organization: members, roles, service accounts, settings; reads
    /// anyone's effective permissions.
    Admin,
    /// Belongs to the organization and sees who else does.
    Member,
    /// Reads everything (audit trail, members, roles, permissions), changes nothing.
    Auditor,
}

impl BuiltInRole {
    pub const ALL: [BuiltInRole; 4] = [Self::Owner, Self::Admin, Self::Member, Self::Auditor];

    pub fn name(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Auditor => "auditor",
        }
    }

    pub fn permissions(self) -> PermissionSet {
        let raw: &[&str] = match self {
            Self::Owner => &["*"],
            Self::Admin => &[
                "organization:read",
                "organization:update",
                "members:*",
                "roles:*",
                "service-accounts:*",
                "permissions:read",
                "audit:read",
            ],
            Self::Member => &["organization:read", "members:read", "roles:read"],
            Self::Auditor => &[
                "organization:read",
                "members:read",
                "roles:read",
                "service-accounts:read",
                "permissions:read",
                "audit:read",
            ],
        };
        PermissionSet::parse(raw.iter().copied()).expect("built-in permissions are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> Permission {
        Permission::parse(raw).unwrap()
    }

    fn set(raw: &[&str]) -> PermissionSet {
        PermissionSet::parse(raw.iter().copied()).unwrap()
    }

    #[test]
    fn permissions_are_resource_and_action_or_a_trailing_wildcard() {
        for ok in [
            "invoices:read",
            "members:manage",
            "a.b-c_d:e1",
            "invoices:*",
            "invoices*",
            "*",
        ] {
            assert!(Permission::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "invoices",
            "Invoices:read",
            ":read",
            "invoices:",
            "a:b:c",
            "inv*oices:read",
            "invoices:re ad",
            "**",
            &"a".repeat(101),
        ] {
            assert!(Permission::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_cover_their_prefix_only() {
        let held = set(&["invoices:*", "members:read"]);
        assert!(held.allows(&p("invoices:read")));
        assert!(held.allows(&p("invoices:delete")));
        assert!(held.allows(&p("members:read")));
        assert!(!held.allows(&p("members:manage")));
        assert!(!held.allows(&p("invoicesx:read")));
        assert!(set(&["*"]).allows(&p("anything:at_all")));
        // A request is never a wildcard.
        assert!(!set(&["*"]).allows(&p("invoices:*")));
    }

    #[test]
    fn an_administrator_can_only_grant_what_they_hold() {
        let admin = set(&["members:*", "invoices:read"]);
        assert!(admin.covers_all(&set(&["members:manage", "invoices:read"])));
        assert!(admin.covers_all(&set(&["members:*"])));
        assert!(!admin.covers_all(&set(&["invoices:*"])));
        assert!(!admin.covers_all(&set(&["*"])));
        assert!(!admin.covers_all(&set(&["invoices:write"])));
        assert!(set(&["*"]).covers_all(&set(&["*", "x:y"])));
    }

    #[test]
    fn built_in_roles_nest_as_expected() {
        let owner = BuiltInRole::Owner.permissions();
        for role in BuiltInRole::ALL {
            assert!(owner.covers_all(&role.permissions()), "{}", role.name());
        }
        let admin = BuiltInRole::Admin.permissions();
        assert!(admin.covers_all(&BuiltInRole::Member.permissions()));
        assert!(admin.covers_all(&BuiltInRole::Auditor.permissions()));
        assert!(!admin.covers_all(&owner));
    }

    #[test]
    fn permissions_round_trip_as_strings() {
        let s = set(&["b:x", "a:*"]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["a:*","b:x"]"#);
        assert_eq!(serde_json::from_str::<PermissionSet>(&json).unwrap(), s);
        assert!(serde_json::from_str::<PermissionSet>(r#"["NOPE"]"#).is_err());
    }
}
