//! Argon2id hashing in a bounded pool off the async executor.
//!
//! Each hash allocates `memory_kib` and burns a core for tens of milliseconds. Hashes
//! run on blocking threads, at most `max_concurrent` at once; at most `max_queued`
//! more may wait for a slot. Anything beyond is refused at once ([`HashError::Overloaded`],
//! a 503) rather than queued without bound, so a login flood degrades into refusals
//! instead of exhausting memory or starving other requests.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, PasswordHash as Phc, Version};
use keyledger_domain::PasswordHash;
use tokio::sync::Semaphore;

use crate::password::Password;

/// Argon2id parameters and pool bounds, from configuration.
#[derive(Debug, Clone)]
pub struct HasherSettings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub max_concurrent: usize,
    pub max_queued: usize,
}

impl Default for HasherSettings {
    /// OWASP's first Argon2id option (m=19 MiB, t=2, p=1).
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            max_concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_queued: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many password checks in progress")]
    Overloaded,
    #[error("invalid Argon2 parameters: {0}")]
    InvalidParams(String),
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// The result of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub matches: bool,
    /// The stored hash used other parameters than the current policy.
    pub needs_rehash: bool,
}

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    argon2: Argon2<'static>,
    params: Params,
    permits: Semaphore,
    waiting: AtomicUsize,
    verifications: AtomicU64,
    max_queued: usize,
    max_concurrent: usize,
    /// Verified when the account does not exist, so that answer takes as long as
    /// a wrong password for a real account.
    dummy: PasswordHash,
}

impl PasswordHasher {
    pub fn new(settings: &HasherSettings) -> Result<Self, HashError> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|e| HashError::InvalidParams(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let dummy = argon2
            .hash_password(b"keyledger timing equaliser")
            .map_err(|e| HashError::Internal(e.to_string()))?
            .to_string();
        Ok(Self {
            inner: Arc::new(Inner {
                argon2,
                params,
                permits: Semaphore::new(settings.max_concurrent.max(1)),
                waiting: AtomicUsize::new(0),
                verifications: AtomicU64::new(0),
                max_queued: settings.max_queued,
                max_concurrent: settings.max_concurrent.max(1),
                dummy: PasswordHash::new(dummy),
            }),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<PasswordHash, HashError> {
        let secret = password.expose().to_owned();
        self.run(move |argon2| {
            argon2
                .hash_password(secret.as_bytes())
                .map(|phc| PasswordHash::new(phc.to_string()))
                .map_err(|e| HashError::Internal(e.to_string()))
        })
        .await?
    }

    pub async fn verify(
        &self,
        password: &Password,
        stored: &PasswordHash,
    ) -> Result<Verification, HashError> {
        metrics::counter!("keyledger_password_verifications_total").increment(1);
        self.inner.verifications.fetch_add(1, Ordering::Relaxed);
        let secret = password.expose().to_owned();
        let phc = stored.expose_phc().to_owned();
        let matches = self
            .run(move |argon2| {
                argon2
                    .verify_password(secret.as_bytes(), phc.as_str())
                    .is_ok()
            })
            .await?;
        Ok(Verification {
            matches,
            needs_rehash: matches && self.is_outdated(stored),
        })
    }

    /// Password checks started by this hasher (real and dummy alike): the lockout
    /// tests count them, and it is how "no hash twice" is checked.
    pub fn verifications(&self) -> u64 {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    /// Spends the same work as [`Self::verify`] against a hash nobody owns.
    pub async fn verify_dummy(&self, password: &Password) -> Result<(), HashError> {
        let dummy = self.inner.dummy.clone();
        self.verify(password, &dummy).await.map(|_| ())
    }

    /// Whether a stored hash was made with other parameters than today's policy.
    pub fn is_outdated(&self, stored: &PasswordHash) -> bool {
        let Ok(parsed) = Phc::new(stored.expose_phc()) else {
            return true;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return true;
        };
        let current = &self.inner.params;
        parsed.algorithm.as_str() != "argon2id"
            || parsed.version != Some(0x13)
            || params.m_cost() != current.m_cost()
            || params.t_cost() != current.t_cost()
            || params.p_cost() != current.p_cost()
    }

    async fn run<T, F>(&self, work: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce(&Argon2<'static>) -> T + Send + 'static,
    {
        let inner = &self.inner;
        let waiting = inner.waiting.fetch_add(1, Ordering::AcqRel);
        let _queued = QueueSlot(&inner.waiting);
        if waiting >= inner.max_queued + inner.max_concurrent {
            metrics::counter!("keyledger_password_hash_rejected_total").increment(1);
            return Err(HashError::Overloaded);
        }
        let _permit = inner
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::Internal("hasher closed".into()))?;
        let argon2 = inner.argon2.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| work(&argon2)))
            .await
            .map_err(|e| HashError::Internal(e.to_string()))
    }
}

/// Gives back a queue place however the wait ends (success, error, cancellation).
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> HasherSettings {
        HasherSettings {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 2,
            max_queued: 4,
        }
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let hasher = PasswordHasher::new(&fast()).unwrap();
        let pw = Password::new("correct horse battery".into());
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(hash
            .expose_phc()
            .starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        let ok = hasher.verify(&pw, &hash).await.unwrap();
        assert_eq!(
            ok,
            Verification {
                matches: true,
                needs_rehash: false
            }
        );
        let wrong = hasher
            .verify(&Password::new("wrong horse battery".into()), &hash)
            .await
            .unwrap();
        assert!(!wrong.matches);
    }

    #[tokio::test]
    async fn a_hash_with_older_parameters_needs_rehash() {
        let old = PasswordHasher::new(&fast()).unwrap();
        let pw = Password::new("correct horse battery".into());
        let hash = old.hash(&pw).await.unwrap();
        let current = PasswordHasher::new(&HasherSettings {
            memory_kib: 2048,
            ..fast()
        })
        .unwrap();
        let v = current.verify(&pw, &hash).await.unwrap();
        assert!(v.matches && v.needs_rehash);
    }

    #[tokio::test]
    async fn hashes_of_one_password_differ_by_salt() {
        let hasher = PasswordHasher::new(&fast()).unwrap();
        let pw = Password::new("correct horse battery".into());
        let a = hasher.hash(&pw).await.unwrap();
        let b = hasher.hash(&pw).await.unwrap();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_flood_beyond_the_queue_is_refused() {
        let hasher = PasswordHasher::new(&HasherSettings {
            memory_kib: 8192,
            iterations: 3,
            max_concurrent: 1,
            max_queued: 1,
            ..fast()
        })
        .unwrap();
        let pw = Password::new("correct horse battery".into());
        let hash = hasher.hash(&pw).await.unwrap();
        let attempts = (0..16).map(|_| {
            let hasher = hasher.clone();
            let hash = hash.clone();
            async move {
                hasher
                    .verify(&Password::new("correct horse battery".into()), &hash)
                    .await
            }
        });
        let results = futures::future::join_all(attempts).await;
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(HashError::Overloaded)))
            .count();
        assert!(refused > 0, "no request was refused");
        assert!(results.iter().any(|r| r.is_ok()));
    }
}
