//! Serialising password checks per account, and throttling unknown accounts.
//!
//! The lockout rule lives in the User aggregate, but optimistic concurrency only
//! serialises *writes*: twenty parallel wrong passwords would all read "4 failures
//! so far", all spend a password check, and only then race to record it. Holding a
//! per-address lock from "read the lockout state" to "record the outcome" makes the
//! sixth attempt see the lock before any hash is computed.
//!
//! The lock is per process; with several API nodes behind one address, each node
//! can let one extra check through per node before the lockout event reaches it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use chrono::{DateTime, Utc};
use keyledger_domain::LockoutPolicy;
use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of async mutexes; an address maps to one of them. Two addresses
/// sharing a stripe merely wait for each other.
pub struct LoginGate {
    stripes: Vec<Mutex<()>>,
    /// Randomly keyed per process, so nobody can pick addresses that share a
    /// victim's stripe to slow its logins down.
    keys: RandomState,
}

impl LoginGate {
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(())).collect(),
            keys: RandomState::new(),
        }
    }

    pub async fn enter(&self, key: &str) -> MutexGuard<'_, ()> {
        let index = (self.keys.hash_one(key) % self.stripes.len() as u64) as usize;
        self.stripes[index].lock().await
    }
}

impl Default for LoginGate {
    fn default() -> Self {
        Self::new(1024)
    }
}

/// Failure counting for addresses that have no account, so that they are locked
/// out exactly like real ones and the answers reveal nothing. Kept in memory and
/// bounded: when full, expired entries are dropped, then the whole table.
pub struct UnknownAccountThrottle {
    entries: std::sync::Mutex<HashMap<String, Entry>>,
    capacity: usize,
}

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until: Option<DateTime<Utc>>,
    last_failure: DateTime<Utc>,
}

impl UnknownAccountThrottle {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: std::sync::Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The end of a lockout in force for `email` at `now`.
    pub fn locked_until(&self, email: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(email)
            .and_then(|e| e.locked_until)
            .filter(|until| *until > now)
    }

    /// Forgets the failures counted for `key` (a success ends the streak).
    pub fn forget(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(key);
    }

    /// Counts a failure; returns the lockout end if this failure started one.
    pub fn record_failure(
        &self,
        email: &str,
        now: DateTime<Utc>,
        policy: LockoutPolicy,
    ) -> Option<DateTime<Utc>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(email) {
            entries.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now) || e.last_failure + policy.duration > now
            });
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        let entry = entries.entry(email.to_owned()).or_insert(Entry {
            failures: 0,
            locked_until: None,
            last_failure: now,
        });
        if entry.locked_until.is_some_and(|u| u <= now) {
            entry.failures = 0;
            entry.locked_until = None;
        }
        entry.failures += 1;
        entry.last_failure = now;
        if entry.failures >= policy.max_failures {
            let until = now + policy.duration;
            entry.locked_until = Some(until);
            return Some(until);
        }
        None
    }
}

impl Default for UnknownAccountThrottle {
    fn default() -> Self {
        Self::new(100_000)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn unknown_addresses_lock_after_the_policy_count() {
        let throttle = UnknownAccountThrottle::default();
        let now = Utc::now();
        let policy = LockoutPolicy::default();
        for _ in 0..4 {
            assert_eq!(throttle.record_failure("x@y.z", now, policy), None);
        }
        let until = throttle.record_failure("x@y.z", now, policy).unwrap();
        assert_eq!(until, now + Duration::minutes(30));
        assert_eq!(throttle.locked_until("x@y.z", now), Some(until));
        assert_eq!(throttle.locked_until("x@y.z", until), None);
        assert_eq!(throttle.locked_until("other@y.z", now), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let throttle = UnknownAccountThrottle::new(10);
        let now = Utc::now();
        for i in 0..100 {
            throttle.record_failure(&format!("{i}@y.z"), now, LockoutPolicy::default());
        }
        assert!(throttle.entries.lock().unwrap().len() <= 10);
    }
}
