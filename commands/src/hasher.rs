//! Argon2id hashing on a fixed pool of threads of its own.
//!
//! Each hash needs `memory_kib` of working memory and a core for tens of
//! milliseconds. `max_concurrent` dedicated threads do all hashing, each reusing one
//! preallocated work area, so hashing memory is fixed at `max_concurrent ×
//! memory_kib` whatever the load (allocating it per call left glibc holding on to
//! hundreds of megabytes). At most `max_queued` more requests wait for a thread;
//! anything beyond is refused at once ([`HashError::Overloaded`], a 503) instead of
//! queueing without bound, so a login flood degrades into refusals rather than
//! exhausting memory or starving other requests. The async executor never runs a
//! hash.
//!
//! The pool is shared by everyone, so one client could still fill it (and its queue)
//! alone, and every other login would wait behind that client's. Each client address
//! may therefore have at most `max_per_client` hashes queued or running at once
//! ([`PasswordHasher::admit`]); beyond that it is refused at once
//! ([`HashError::ClientBusy`], a 429) while other clients keep their share.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash as Phc, Version};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use keyledger_domain::PasswordHash;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use unicode_normalization::UnicodeNormalization;

use crate::password::Password;

/// Argon2id parameters and pool bounds, from configuration.
#[derive(Debug, Clone)]
pub struct HasherSettings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub max_concurrent: usize,
    pub max_queued: usize,
    /// Hashes one client address may have queued or running at once.
    pub max_per_client: usize,
}

impl Default for HasherSettings {
    /// OWASP's first Argon2id option (m=19 MiB, t=2, p=1).
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            max_concurrent: cpus,
            max_queued: 256,
            max_per_client: default_per_client(cpus),
        }
    }
}

/// Half the pool (at least one): a single client never holds every thread.
pub fn default_per_client(max_concurrent: usize) -> usize {
    (max_concurrent / 2).max(1)
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many password checks in progress")]
    Overloaded,
    #[error("too many password checks in progress for this client")]
    ClientBusy,
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

/// Shared, cheap to clone; the pool's threads end when the last clone is dropped.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    jobs: SyncSender<Job>,
    verifications: AtomicU64,
    /// Hashes queued or running per client key (see [`client_key`]); a key is
    /// removed when its count drops to zero, so the map holds only clients with a
    /// hash in flight.
    in_flight: Mutex<HashMap<String, usize>>,
    max_per_client: usize,
    /// Verified when the account does not exist, so that answer takes as long as
    /// a wrong password for a real account.
    dummy: PasswordHash,
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<PasswordHash, HashError>>,
    },
    Verify {
        password: String,
        stored: String,
        reply: oneshot::Sender<Result<bool, HashError>>,
    },
}

/// Output length of new hashes (argon2's default, 256 bits).
const OUTPUT_LEN: usize = 32;
const SALT_LEN: usize = 16;

impl PasswordHasher {
    pub fn new(settings: &HasherSettings) -> Result<Self, HashError> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|e| HashError::InvalidParams(e.to_string()))?;
        let mut dummy_area = Workspace::new(&params);
        let dummy = dummy_area.hash(&params, "keyledger timing equaliser")?;
        drop(dummy_area);

        let (jobs, queue) = mpsc::sync_channel(settings.max_queued);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..settings.max_concurrent.max(1) {
            let queue = queue.clone();
            let params = params.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&queue, &params))
                .map_err(|e| HashError::Internal(e.to_string()))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                jobs,
                verifications: AtomicU64::new(0),
                in_flight: Mutex::new(HashMap::new()),
                max_per_client: settings.max_per_client.max(1),
                dummy,
            }),
        })
    }

    /// A turn for one more hash on behalf of `client` (its IP address, as recorded
    /// in the request context), held until the hash is done: refused with
    /// [`HashError::ClientBusy`] while that client already has its share of the pool
    /// queued or running. An IPv6 client counts by its /64, which one subscriber
    /// usually holds whole.
    pub fn admit(&self, client: Option<&str>) -> Result<HashTurn, HashError> {
        let key = client_key(client);
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = in_flight.entry(key.clone()).or_insert(0);
        if *count >= self.inner.max_per_client {
            metrics::counter!("keyledger_password_hash_client_refused_total").increment(1);
            return Err(HashError::ClientBusy);
        }
        *count += 1;
        Ok(HashTurn {
            inner: self.inner.clone(),
            key,
        })
    }

    /// Hashes the password's NFC form, so that it verifies however the user's
    /// keyboard or platform composes its characters next time (`é` typed as one
    /// code point or as `e` plus a combining accent).
    pub async fn hash(&self, password: &Password) -> Result<PasswordHash, HashError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash {
            password: nfc(password.expose()).into_owned(),
            reply,
        })?;
        answer
            .await
            .map_err(|_| HashError::Internal("hashing thread ended".into()))?
    }

    /// Checks the password's NFC form (what [`Self::hash`] hashes). A password that
    /// is not in NFC as typed is also checked as typed when its NFC form does not
    /// match: hashes made before passwords were normalised hold the raw form. Such
    /// a match asks for a rehash, which stores the NFC form. The second check runs
    /// against unknown accounts too ([`Self::verify_dummy`]), so it reveals nothing.
    pub async fn verify(
        &self,
        password: &Password,
        stored: &PasswordHash,
    ) -> Result<Verification, HashError> {
        let raw = password.expose();
        let normalised = nfc(raw);
        if self.verify_one(&normalised, stored).await? {
            return Ok(Verification {
                matches: true,
                needs_rehash: self.is_outdated(stored),
            });
        }
        let matches_raw = match normalised {
            Cow::Owned(_) => self.verify_one(raw, stored).await?,
            Cow::Borrowed(_) => false,
        };
        Ok(Verification {
            matches: matches_raw,
            needs_rehash: matches_raw,
        })
    }

    async fn verify_one(&self, password: &str, stored: &PasswordHash) -> Result<bool, HashError> {
        metrics::counter!("keyledger_password_verifications_total").increment(1);
        self.inner.verifications.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password: password.to_owned(),
            stored: stored.expose_phc().to_owned(),
            reply,
        })?;
        answer
            .await
            .map_err(|_| HashError::Internal("hashing thread ended".into()))?
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

    fn submit(&self, job: Job) -> Result<(), HashError> {
        match self.inner.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("keyledger_password_hash_rejected_total").increment(1);
                Err(HashError::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => {
                Err(HashError::Internal("hashing pool stopped".into()))
            }
        }
    }
}

/// A password's NFC form; borrowed (no allocation) when it is already NFC, as
/// every ASCII password is.
fn nfc(password: &str) -> Cow<'_, str> {
    if password.is_ascii()
        || unicode_normalization::is_nfc_quick(password.chars())
            == unicode_normalization::IsNormalized::Yes
    {
        Cow::Borrowed(password)
    } else {
        let normalised: String = password.nfc().collect();
        if normalised == password {
            Cow::Borrowed(password)
        } else {
            Cow::Owned(normalised)
        }
    }
}

/// A client's turn at the pool (see [`PasswordHasher::admit`]); dropping it gives
/// the turn back.
#[must_use = "the turn is given back when dropped"]
pub struct HashTurn {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for HashTurn {
    fn drop(&mut self) {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = in_flight.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

/// The key a client's hashes are counted under: its IPv4 address, its IPv6 /64, or
/// the text as given when it is no address (requests without one share a key).
fn client_key(client: Option<&str>) -> String {
    let Some(client) = client else {
        return String::new();
    };
    match client.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V6(v6)) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => client.to_owned(),
    }
}

/// One pool thread: takes jobs until every sender is gone.
fn work(queue: &Mutex<Receiver<Job>>, params: &Params) {
    let mut area = Workspace::new(params);
    loop {
        let job = {
            let Ok(queue) = queue.lock() else { return };
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(area.hash(params, &password));
            }
            Job::Verify {
                password,
                stored,
                reply,
            } => {
                let _ = reply.send(area.verify(&password, &stored));
            }
        }
    }
}

/// A thread's reusable Argon2 working memory.
struct Workspace {
    blocks: Vec<Block>,
}

impl Workspace {
    fn new(params: &Params) -> Self {
        Self {
            blocks: vec![Block::default(); params.block_count()],
        }
    }

    fn fill(
        &mut self,
        argon2: &Argon2<'_>,
        params: &Params,
        password: &str,
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), HashError> {
        let needed = params.block_count();
        let internal = |e: argon2::Error| HashError::Internal(e.to_string());
        if needed <= self.blocks.len() {
            argon2
                .hash_password_into_with_memory(
                    password.as_bytes(),
                    salt,
                    out,
                    &mut self.blocks[..needed],
                )
                .map_err(internal)
        } else {
            // A hash made with more memory than today's policy (a lowered policy):
            // a one-off area, not kept.
            let mut larger = vec![Block::default(); needed];
            argon2
                .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut larger)
                .map_err(internal)
        }
    }

    fn hash(&mut self, params: &Params, password: &str) -> Result<PasswordHash, HashError> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| HashError::Internal(e.to_string()))?;
        let mut out = [0u8; OUTPUT_LEN];
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        self.fill(&argon2, params, password, &salt, &mut out)?;
        Ok(PasswordHash::new(format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost(),
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(out),
        )))
    }

    /// Recomputes the stored hash's output with its own parameters and compares
    /// in constant time. A hash that does not parse never matches.
    /// An imported legacy hash (bcrypt, PBKDF2, scrypt; see `crate::legacy_hash`)
    /// is checked by its own algorithm on this same pool, and is always outdated
    /// ([`PasswordHasher::is_outdated`]), so its first match re-hashes it.
    fn verify(&mut self, password: &str, stored: &str) -> Result<bool, HashError> {
        if !crate::legacy_hash::is_argon2(stored) {
            return Ok(crate::legacy_hash::LegacyHash::parse(stored)
                .is_ok_and(|legacy| legacy.verify(password.as_bytes())));
        }
        let Ok(parsed) = Phc::new(stored) else {
            return Ok(false);
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return Ok(false);
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
            return Ok(false);
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(v)) => v,
            Some(Err(_)) => return Ok(false),
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return Ok(false);
        };
        let expected = expected.as_bytes();
        let mut out = vec![0u8; expected.len()];
        let argon2 = Argon2::new(algorithm, version, params.clone());
        self.fill(&argon2, &params, password, salt.as_ref(), &mut out)?;
        Ok(out.ct_eq(expected).into())
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
            max_per_client: 1,
        }
    }

    #[tokio::test]
    async fn an_imported_legacy_hash_matches_and_asks_for_an_argon2id_rehash() {
        let hasher = PasswordHasher::new(&fast()).unwrap();
        // PBKDF2-HMAC-SHA256("password", "salt", 1) in Werkzeug's form.
        let legacy = PasswordHash::new(
            "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
                .into(),
        );
        let right = hasher
            .verify(&Password::new("password".into()), &legacy)
            .await
            .unwrap();
        assert_eq!(
            right,
            Verification {
                matches: true,
                needs_rehash: true
            }
        );
        let wrong = hasher
            .verify(&Password::new("passwore".into()), &legacy)
            .await
            .unwrap();
        assert!(!wrong.matches);
    }

    #[tokio::test]
    async fn one_client_gets_its_share_of_the_pool_and_others_keep_theirs() {
        let hasher = PasswordHasher::new(&HasherSettings {
            max_per_client: 2,
            ..fast()
        })
        .unwrap();
        let first = hasher.admit(Some("203.0.113.5")).unwrap();
        let second = hasher.admit(Some("203.0.113.5")).unwrap();
        assert!(matches!(
            hasher.admit(Some("203.0.113.5")),
            Err(HashError::ClientBusy)
        ));
        // Another client is not held up by the first one's flood.
        let other = hasher.admit(Some("198.51.100.1")).unwrap();
        drop(first);
        let third = hasher.admit(Some("203.0.113.5")).unwrap();
        drop((second, third, other));
        assert!(hasher.inner.in_flight.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(
            client_key(Some("2001:db8:1:2::1")),
            client_key(Some("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_key(Some("2001:db8:1:2::1")),
            client_key(Some("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(Some("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(client_key(None), client_key(None));
    }

    #[test]
    fn by_default_a_client_gets_half_the_pool() {
        assert_eq!(default_per_client(1), 1);
        assert_eq!(default_per_client(2), 1);
        assert_eq!(default_per_client(8), 4);
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

    /// "café naïve 🔑", composed and decomposed.
    const COMPOSED: &str = "caf\u{E9} na\u{EF}ve \u{1F511}";
    const DECOMPOSED: &str = "cafe\u{301} nai\u{308}ve \u{1F511}";

    #[tokio::test]
    async fn a_password_verifies_however_its_characters_are_composed() {
        let hasher = PasswordHasher::new(&fast()).unwrap();
        for (hashed, typed) in [(COMPOSED, DECOMPOSED), (DECOMPOSED, COMPOSED)] {
            let hash = hasher.hash(&Password::new(hashed.into())).await.unwrap();
            let verification = hasher
                .verify(&Password::new(typed.into()), &hash)
                .await
                .unwrap();
            assert_eq!(
                verification,
                Verification {
                    matches: true,
                    needs_rehash: false
                }
            );
        }
    }

    #[tokio::test]
    async fn a_hash_of_a_password_as_typed_before_normalisation_still_verifies() {
        let hasher = PasswordHasher::new(&fast()).unwrap();
        // What an older version stored: the hash of the decomposed form as typed.
        let (reply, answer) = oneshot::channel();
        hasher
            .submit(Job::Hash {
                password: DECOMPOSED.into(),
                reply,
            })
            .unwrap();
        let legacy = answer.await.unwrap().unwrap();
        let typed = Password::new(DECOMPOSED.into());
        let verification = hasher.verify(&typed, &legacy).await.unwrap();
        assert_eq!(
            verification,
            Verification {
                matches: true,
                needs_rehash: true
            },
            "verified as typed, and rehashed as NFC"
        );
        let rehashed = hasher.hash(&typed).await.unwrap();
        let composed = Password::new(COMPOSED.into());
        assert!(hasher.verify(&composed, &rehashed).await.unwrap().matches);
        // A wrong password checks both forms, on a real account as on none.
        let wrong = Password::new("wrong\u{301} one".into());
        let before = hasher.verifications();
        assert!(!hasher.verify(&wrong, &legacy).await.unwrap().matches);
        assert_eq!(hasher.verifications() - before, 2);
        hasher.verify_dummy(&wrong).await.unwrap();
        assert_eq!(hasher.verifications() - before, 4);
        // An NFC password is checked once.
        let before = hasher.verifications();
        assert!(!hasher.verify(&composed, &legacy).await.unwrap().matches);
        assert_eq!(hasher.verifications() - before, 1);
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
    async fn hashes_interoperate_with_the_argon2_crates_own_format() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let hasher = PasswordHasher::new(&fast()).unwrap();
        let pw = Password::new("correct horse battery".into());
        // Ours, verified by the crate.
        let ours = hasher.hash(&pw).await.unwrap();
        let crate_argon2 = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        );
        assert!(crate_argon2
            .verify_password(b"correct horse battery", ours.expose_phc())
            .is_ok());
        // The crate's, verified by ours.
        let theirs = crate_argon2
            .hash_password(b"correct horse battery")
            .unwrap()
            .to_string();
        let v = hasher
            .verify(&pw, &PasswordHash::new(theirs))
            .await
            .unwrap();
        assert!(v.matches);
        // Garbage never matches and never panics.
        for junk in ["", "$argon2id$", "$argon2id$v=19$m=1,t=1,p=1$$", "plain"] {
            let v = hasher
                .verify(&pw, &PasswordHash::new(junk.into()))
                .await
                .unwrap();
            assert!(!v.matches, "{junk}");
        }
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
