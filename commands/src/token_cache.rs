//! Access tokens (PASETO and JWT alike) already verified, so that a token checked again (a gateway asks
//! `validate` for every request it forwards, each token many times) does not pay
//! for its signature again.
//!
//! Keyed by the SHA-256 of the token, never the token itself: the cache's memory
//! holds nothing that would authenticate. An entry is what [`TokenIssuer`]
//! proved once: the signature under key `kid`, issuer, audience and a lifetime
//! within bounds. What can change afterwards is checked again on every hit: the
//! token's expiry, and whether its key is still inside its window. Whether the
//! session or account behind it is still alive is never cached here: callers
//! check that on every request, as for a token verified the long way.
//!
//! Bounded: a fixed number of entries spread over shards, each shard evicting
//! expired entries first and then arbitrary ones, so a flood of distinct (valid)
//! tokens costs the memory of the bound and signature checks, nothing more.
//!
//! [`TokenIssuer`]: crate::tokens::TokenIssuer

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::tokens::AccessClaims;

const SHARDS: usize = 16;

/// The SHA-256 of a token: the cache's key.
pub(crate) type TokenDigest = [u8; 32];

pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// A verified token's claims and the key that signed it (its `kid`: PASETO keys
/// and EdDSA JWS keys share theirs, ES256 and RS256 keys have their own).
#[derive(Clone)]
pub(crate) struct Verified {
    pub(crate) claims: AccessClaims,
    pub(crate) kid: String,
}

/// Verified tokens by digest (see the module docs).
pub(crate) struct VerifiedTokens {
    shards: Vec<Mutex<HashMap<TokenDigest, Verified>>>,
    per_shard: usize,
    picker: RandomState,
}

impl VerifiedTokens {
    /// Room for about `entries` tokens; 0 keeps none (every check verifies).
    pub(crate) fn new(entries: usize) -> Self {
        let per_shard = entries.div_ceil(SHARDS);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
            picker: RandomState::new(),
        }
    }

    fn shard(&self, digest: &TokenDigest) -> &Mutex<HashMap<TokenDigest, Verified>> {
        let index = (self.picker.hash_one(digest) % SHARDS as u64) as usize;
        &self.shards[index]
    }

    /// The entry of `digest` while its token has not expired at `now`; an
    /// expired one is dropped.
    pub(crate) fn get(&self, digest: &TokenDigest, now: DateTime<Utc>) -> Option<Verified> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(digest).lock().unwrap_or_else(|e| e.into_inner());
        match shard.get(digest) {
            Some(entry) if entry.claims.expires_at > now => Some(entry.clone()),
            Some(_) => {
                shard.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Keeps `verified` under `digest`, making room if the shard is full.
    pub(crate) fn insert(&self, digest: TokenDigest, verified: Verified, now: DateTime<Utc>) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self
            .shard(&digest)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, entry| entry.claims.expires_at > now);
            if shard.len() >= self.per_shard {
                // Arbitrary (the map's order is random per process): cheaper than
                // tracking use, and a gateway's busy tokens come back at once.
                let victim = shard.keys().next().copied();
                if let Some(victim) = victim {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(digest, verified);
    }

    /// How many entries are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use uuid::Uuid;

    use super::*;
    use crate::tokens::SubjectKind;

    fn verified(expires_at: DateTime<Utc>) -> Verified {
        Verified {
            claims: AccessClaims {
                user_id: Uuid::new_v4(),
                session_id: Uuid::new_v4(),
                token_id: Uuid::new_v4(),
                issuer: "keyledger".into(),
                audience: "keyledger".into(),
                issued_at: expires_at - Duration::minutes(15),
                expires_at,
                authenticated_at: None,
                kind: SubjectKind::User,
                organization_id: None,
                roles: Vec::new(),
                email_verified: None,
                amr: Vec::new(),
                client_id: None,
                scope: None,
            },
            kid: "k4.pid.x".into(),
        }
    }

    #[test]
    fn an_entry_is_found_by_its_tokens_digest_until_the_token_expires() {
        let cache = VerifiedTokens::new(100);
        let now = Utc::now();
        let entry = verified(now + Duration::minutes(1));
        cache.insert(digest("v4.public.a"), entry.clone(), now);
        let found = cache.get(&digest("v4.public.a"), now).expect("cached");
        assert_eq!(found.claims, entry.claims);
        assert!(cache.get(&digest("v4.public.b"), now).is_none());
        assert!(cache
            .get(&digest("v4.public.a"), now + Duration::minutes(1))
            .is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped when met");
    }

    #[test]
    fn the_cache_never_holds_more_than_its_bound() {
        let cache = VerifiedTokens::new(64);
        let now = Utc::now();
        for n in 0..10_000 {
            cache.insert(
                digest(&format!("v4.public.{n}")),
                verified(now + Duration::minutes(1)),
                now,
            );
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        // Expired entries go first.
        let cache = VerifiedTokens::new(SHARDS);
        for n in 0..SHARDS * 4 {
            cache.insert(
                digest(&format!("old {n}")),
                verified(now + Duration::seconds(1)),
                now,
            );
        }
        let later = now + Duration::seconds(2);
        cache.insert(digest("new"), verified(later + Duration::minutes(1)), later);
        assert!(cache.get(&digest("new"), later).is_some());
    }

    #[test]
    fn a_cache_of_size_zero_keeps_nothing() {
        let cache = VerifiedTokens::new(0);
        let now = Utc::now();
        cache.insert(digest("t"), verified(now + Duration::minutes(1)), now);
        assert!(cache.get(&digest("t"), now).is_none());
        assert_eq!(cache.len(), 0);
    }
}
