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

    /// Consecutive failures counted for `key` (0 once its lockout ran out).
    pub fn failures(&self, key: &str, now: DateTime<Utc>) -> u32 {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|e| e.locked_until.is_none_or(|u| u > now))
            .map_or(0, |e| e.failures)
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

/// When one client address tries the same password on many accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SprayPolicy {
    /// Distinct accounts (existing or not) failed with one password from one
    /// address within `window` that make it spraying; 0 turns detection off.
    pub accounts: usize,
    pub window: chrono::Duration,
}

impl Default for SprayPolicy {
    fn default() -> Self {
        Self {
            accounts: 20,
            window: chrono::Duration::minutes(15),
        }
    }
}

/// Password-spraying detection (one password, many accounts, one address).
///
/// Never holds a password or an address in clear beyond the call: each failure is
/// remembered as keyed hashes (HMAC-SHA256 under a random key that lives in this
/// process only and is never stored) of the password and of the account address,
/// for `window` at most. An address found spraying is throttled for one window.
/// Per process and bounded like [`UnknownAccountThrottle`].
pub struct SprayDetector {
    key: [u8; 32],
    policy: SprayPolicy,
    addresses: std::sync::Mutex<HashMap<String, Attempts>>,
    capacity: usize,
}

#[derive(Default)]
struct Attempts {
    /// (when, keyed hash of the password, keyed hash of the account address).
    failures: Vec<(DateTime<Utc>, [u8; 32], [u8; 32])>,
    throttled_until: Option<DateTime<Utc>>,
}

/// What crossing the threshold found (no password, no address: counts only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SprayDetected {
    pub accounts: usize,
    pub throttled_until: DateTime<Utc>,
}

impl SprayDetector {
    pub fn new(policy: SprayPolicy) -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source");
        Self {
            key,
            policy,
            addresses: std::sync::Mutex::new(HashMap::new()),
            capacity: 100_000,
        }
    }

    fn digest(&self, label: &[u8], value: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(label);
        mac.update(value);
        mac.finalize().into_bytes().into()
    }

    /// The end of the throttle on `address` in force at `now`.
    pub fn throttled_until(&self, address: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.policy.accounts == 0 {
            return None;
        }
        let addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        addresses
            .get(address)
            .and_then(|a| a.throttled_until)
            .filter(|until| *until > now)
    }

    /// Counts a failed login of `account` with `password` from `address`;
    /// answers when this failure makes the address a sprayer.
    pub fn record_failure(
        &self,
        address: &str,
        account: &str,
        password: &str,
        now: DateTime<Utc>,
    ) -> Option<SprayDetected> {
        if self.policy.accounts == 0 {
            return None;
        }
        let password = self.digest(b"password\0", password.as_bytes());
        let account = self.digest(b"account\0", account.as_bytes());
        let window = self.policy.window;
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if addresses.len() >= self.capacity && !addresses.contains_key(address) {
            addresses.retain(|_, a| {
                a.throttled_until.is_some_and(|u| u > now)
                    || a.failures.last().is_some_and(|f| f.0 + window > now)
            });
            if addresses.len() >= self.capacity {
                addresses.clear();
            }
        }
        let entry = addresses.entry(address.to_owned()).or_default();
        entry.failures.retain(|f| f.0 + window > now);
        // Bounded: enough to see the threshold crossed many times over.
        if entry.failures.len() >= self.policy.accounts * 8 {
            entry.failures.remove(0);
        }
        entry.failures.push((now, password, account));
        let mut accounts: Vec<[u8; 32]> = entry
            .failures
            .iter()
            .filter(|f| f.1 == password)
            .map(|f| f.2)
            .collect();
        accounts.sort_unstable();
        accounts.dedup();
        let already = entry.throttled_until.is_some_and(|u| u > now);
        if accounts.len() >= self.policy.accounts && !already {
            let until = now + window;
            entry.throttled_until = Some(until);
            return Some(SprayDetected {
                accounts: accounts.len(),
                throttled_until: until,
            });
        }
        None
    }
}

#[cfg(test)]
mod spray_tests {
    use super::*;

    fn policy() -> SprayPolicy {
        SprayPolicy {
            accounts: 3,
            window: chrono::Duration::minutes(1),
        }
    }

    #[test]
    fn one_password_on_many_accounts_from_one_address_is_spraying() {
        let spray = SprayDetector::new(policy());
        let now = Utc::now();
        assert_eq!(
            spray.record_failure("1.2.3.4", "a@x.y", "Summer2026", now),
            None
        );
        // The same account again, or other passwords, are not spraying.
        assert_eq!(
            spray.record_failure("1.2.3.4", "a@x.y", "Summer2026", now),
            None
        );
        assert_eq!(
            spray.record_failure("1.2.3.4", "b@x.y", "Winter2026", now),
            None
        );
        assert_eq!(
            spray.record_failure("5.6.7.8", "c@x.y", "Summer2026", now),
            None
        );
        assert_eq!(
            spray.record_failure("1.2.3.4", "b@x.y", "Summer2026", now),
            None
        );
        let detected = spray
            .record_failure("1.2.3.4", "c@x.y", "Summer2026", now)
            .unwrap();
        assert_eq!(detected.accounts, 3);
        assert_eq!(
            spray.throttled_until("1.2.3.4", now),
            Some(now + chrono::Duration::minutes(1))
        );
        assert_eq!(spray.throttled_until("5.6.7.8", now), None);
        // Reported once per throttle.
        assert_eq!(
            spray.record_failure("1.2.3.4", "d@x.y", "Summer2026", now),
            None
        );
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let spray = SprayDetector::new(policy());
        let now = Utc::now();
        spray.record_failure("1.2.3.4", "a@x.y", "pw", now);
        spray.record_failure("1.2.3.4", "b@x.y", "pw", now);
        let later = now + chrono::Duration::minutes(2);
        assert_eq!(spray.record_failure("1.2.3.4", "c@x.y", "pw", later), None);
    }

    #[test]
    fn zero_turns_detection_off() {
        let spray = SprayDetector::new(SprayPolicy {
            accounts: 0,
            window: chrono::Duration::minutes(1),
        });
        let now = Utc::now();
        for i in 0..50 {
            assert_eq!(
                spray.record_failure("1.2.3.4", &format!("{i}@x.y"), "pw", now),
                None
            );
        }
        assert_eq!(spray.throttled_until("1.2.3.4", now), None);
    }
}
