//! The platform must always keep one active administrator: without one, nobody can
//! suspend an abusive account, erase on request, or appoint another administrator
//! (the first one comes from the command line, on the server's host).
//!
//! Whether a change leaves one is a question about several accounts at once, which
//! no single `User` aggregate can answer, so its optimistic concurrency does not
//! protect it: two administrators demoting each other at the same moment each see
//! the other still in office and both commit. Every change that can take an
//! administrator away (demotion, suspension, erasure) therefore runs in the
//! platform's one *admin turn*: the check (read from the event log, which has every
//! committed change, unlike the read models) and the write happen inside it, so the
//! second change sees the first. Changes that only add administrators need no turn.
//!
//! The turn itself is the storage layer's ([`Database::turn`]): an advisory lock
//! shared by every node on PostgreSQL, a mutex in the one process that owns an
//! embedded data directory.

use std::collections::BTreeMap;

use keyledger_storage::{with_readers, Database, Turn};
use uuid::Uuid;

/// Key of the turn (an arbitrary constant, "KLADMIN").
const ADMIN_TURN: i64 = 0x004B_4C41_444D_494E;

/// Portable SQL: every event that can make or unmake an active administrator, in
/// log order per account.
const ADMIN_EVENTS: &str = "SELECT aggregate_id, event_type FROM events
      WHERE aggregate_type = 'user'
        AND event_type IN ('PlatformAdminGranted', 'PlatformAdminRevoked',
                           'UserSuspended', 'UserReactivated', 'UserErased')
      ORDER BY aggregate_id, sequence";

/// Keeps the platform's last active administrator in office.
#[derive(Clone)]
pub(crate) struct PlatformAdminGuard {
    db: Database,
}

impl PlatformAdminGuard {
    pub(crate) fn new(db: &Database) -> Self {
        Self { db: db.clone() }
    }

    /// Waits for the admin turn; held while a change that may remove an
    /// administrator is checked and written.
    pub(crate) async fn turn(&self) -> Result<Turn, sqlx::Error> {
        self.db.turn(ADMIN_TURN).await
    }

    /// Whether `user_id` is the only active (granted, not suspended, not erased)
    /// platform administrator, as the event log has it now.
    pub(crate) async fn is_last_active_admin(&self, user_id: Uuid) -> Result<bool, sqlx::Error> {
        let rows: Vec<(String, String)> = with_readers!(self.db, |pool| {
            sqlx::query_as(ADMIN_EVENTS).fetch_all(pool).await?
        });
        let active = active_admins(rows.iter().map(|(id, t)| (id.as_str(), t.as_str())));
        Ok(active.len() == 1 && active.contains(&user_id))
    }
}

/// Folds admin events (in log order per account) into the active administrators.
fn active_admins<'a>(events: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<Uuid> {
    #[derive(Default)]
    struct Standing {
        admin: bool,
        suspended: bool,
        erased: bool,
    }
    let mut accounts: BTreeMap<&str, Standing> = BTreeMap::new();
    for (id, event_type) in events {
        let account = accounts.entry(id).or_default();
        match event_type {
            "PlatformAdminGranted" => account.admin = true,
            "PlatformAdminRevoked" => account.admin = false,
            "UserSuspended" => account.suspended = true,
            "UserReactivated" => account.suspended = false,
            "UserErased" => account.erased = true,
            _ => {}
        }
    }
    accounts
        .into_iter()
        .filter(|(_, s)| s.admin && !s.suspended && !s.erased)
        .filter_map(|(id, _)| id.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_unsuspended_unerased_accounts_are_active_admins() {
        let (a, b, c, d) = (
            Uuid::new_v4().to_string(),
            Uuid::new_v4().to_string(),
            Uuid::new_v4().to_string(),
            Uuid::new_v4().to_string(),
        );
        let events = [
            (a.as_str(), "PlatformAdminGranted"),
            (b.as_str(), "PlatformAdminGranted"),
            (b.as_str(), "UserSuspended"),
            (c.as_str(), "PlatformAdminGranted"),
            (c.as_str(), "PlatformAdminRevoked"),
            (d.as_str(), "PlatformAdminGranted"),
            (d.as_str(), "UserSuspended"),
            (d.as_str(), "UserReactivated"),
        ];
        let mut active = active_admins(events.into_iter());
        active.sort();
        let mut expected: Vec<Uuid> = [&a, &d].iter().map(|id| id.parse().unwrap()).collect();
        expected.sort();
        assert_eq!(active, expected);
        let erased = [
            (a.as_str(), "PlatformAdminGranted"),
            (a.as_str(), "UserErased"),
        ];
        assert!(active_admins(erased.into_iter()).is_empty());
    }
}
