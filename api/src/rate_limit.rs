//! Rate limits with the shape of the traffic they guard, one budget per class of
//! route (see [`Class`]):
//!
//! - credential routes (login, register, password change, client credentials,
//!   refresh, logout, account erasure): per client address, and per account
//!   ([`AccountThrottle`]) so that guessing one account's password is slow from any
//!   number of addresses;
//! - token checks (`validate`, `authorize`, `permissions`, `keys`, the JWKS
//!   `/v1/oidc/jwks`): per client address, sized for a gateway checking every
//!   request it forwards;
//! - management routes (organizations, admin, audit, `me`, sessions, invitations):
//!   per subject of the bearer token, per address when anonymous.
//!
//! Client addresses are the real client's (behind trusted proxies too; IPv6 clients
//! by their /64). Every refusal answers 429 with `Retry-After` in the API's JSON
//! envelope and counts in `keyledger_rate_limited_total{class}`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_governor::governor::clock::{Clock, DefaultClock};
use actix_governor::governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::future::Future;

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::ResponseError;
use futures::future::{ready, Either};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::client_address::{rate_limit_key, ClientAddressRule};
use crate::error::ApiError;
use crate::settings::Settings;

/// Which budget a route draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Routes that check a secret or mint a session: few per address.
    Credentials,
    /// Read-only checks of a token a gateway makes for every request it forwards.
    TokenChecks,
    /// Administration and self-service reads and writes, per caller.
    Management,
}

impl Class {
    /// The `class` label of `keyledger_rate_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Credentials => "credentials",
            Self::TokenChecks => "token_checks",
            Self::Management => "management",
        }
    }

    /// The class of a request path; `None` for routes without a limit (health,
    /// metrics, the OpenAPI document and docs page, unknown paths).
    pub fn of(path: &str) -> Option<Self> {
        if path == "/v1/oidc/jwks" {
            // A public, cacheable read, like `/v1/auth/keys`.
            return Some(Self::TokenChecks);
        }
        if let Some(rest) = path.strip_prefix("/v1/auth/") {
            let first = rest.split('/').next().unwrap_or_default();
            return Some(match first {
                "validate" | "authorize" | "permissions" | "keys" => Self::TokenChecks,
                "me" | "sessions" => Self::Management,
                _ => Self::Credentials,
            });
        }
        if let Some(rest) = path.strip_prefix("/v1/mfa/") {
            // The login step checks codes; managing factors is account work.
            return Some(match rest {
                "verify" | "challenge" => Self::Credentials,
                _ => Self::Management,
            });
        }
        if let Some(rest) = path.strip_prefix("/v1/oidc/") {
            // The registry is administration; the key set is read like the token
            // keys; the protocol endpoints take credentials or codes.
            let first = rest.split('/').next().unwrap_or_default();
            return Some(match first {
                "clients" => Self::Management,
                "jwks" | "userinfo" | "introspect" => Self::TokenChecks,
                _ => Self::Credentials,
            });
        }
        if path == "/v1/users/me" {
            // Erasing one's account checks the password.
            return Some(Self::Credentials);
        }
        [
            "/v1/users/",
            "/v1/organizations",
            "/v1/admin/",
            "/v1/audit/",
            "/v1/passkeys",
        ]
        .iter()
        .any(|prefix| path.starts_with(prefix))
        .then_some(Self::Management)
    }
}

/// Who a management request is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The verified subject of the bearer token: one budget per user or service
    /// account, whichever address it calls from.
    Subject(Uuid),
    /// An anonymous caller (or one whose token is not valid), by address.
    Address(IpAddr),
}

/// Every limiter of the server, shared by every worker.
pub struct RateLimits {
    credentials: Option<DefaultKeyedRateLimiter<IpAddr>>,
    token_checks: Option<DefaultKeyedRateLimiter<IpAddr>>,
    management: Option<DefaultKeyedRateLimiter<Caller>>,
    /// The per-account budget of the credential routes (checked by the handlers,
    /// which know the account).
    pub accounts: AccountThrottle,
    rule: ClientAddressRule,
}

fn nonzero(n: u64) -> Option<NonZeroU32> {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))
}

/// `per_second` requests a second with bursts of `burst` (of `per_second` when
/// `burst` is 0); `None` when `per_second` is 0.
fn per_second<K: Hash + Eq + Clone>(
    per_second: u64,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = nonzero(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl RateLimits {
    pub fn new(settings: &Settings) -> Self {
        Self {
            credentials: per_second(settings.rate_limits.per_second, settings.rate_limits.burst),
            // A burst of one second's worth.
            token_checks: per_second(settings.rate_limits.token_checks_per_second, 0),
            management: per_second(settings.rate_limits.management_per_second, 0),
            accounts: AccountThrottle::new(settings.rate_limits.account_per_minute),
            rule: settings.client_address_rule(),
        }
    }

    /// The client address a limit counts, or `None` when unknown (a request
    /// without a peer address is not a network request: nothing to limit).
    fn address(&self, req: &ServiceRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        Some(rate_limit_key(self.rule.client_ip(peer, req.headers())))
    }

    /// Charges `req` to its class's budget; `Err` (429) when it is spent.
    pub fn check(&self, req: &ServiceRequest) -> Result<(), ApiError> {
        let class = Class::of(req.path()).or_else(|| {
            // A hosted page spends what its API twin spends: a form post that
            // checks a password or a code (or a page that takes a provider's
            // code) a credential route's, the account page's other changes a
            // management route's.
            let path = req.path();
            if crate::hosted::CREDENTIAL_PAGES.contains(&path) {
                return Some(Class::Credentials);
            }
            if req.method() != actix_web::http::Method::POST {
                return None;
            }
            if crate::hosted::FORM_PATHS.contains(&path) {
                Some(Class::Credentials)
            } else {
                path.starts_with("/account/").then_some(Class::Management)
            }
        });
        let Some(class) = class else {
            return Ok(());
        };
        let refused = match class {
            Class::Credentials => charge(self.credentials.as_ref(), || self.address(req)),
            Class::TokenChecks => charge(self.token_checks.as_ref(), || self.address(req)),
            Class::Management => charge(self.management.as_ref(), || {
                // Verified, so that a forged subject cannot open a fresh budget;
                // only management routes pay for this second verification.
                match crate::extract::bearer_claims(req.request()) {
                    Ok(Some(claims)) => Some(Caller::Subject(claims.user_id)),
                    _ => self.address(req).map(Caller::Address),
                }
            }),
        };
        match refused {
            None => Ok(()),
            Some(retry_after) => Err(refused_for(class.label(), retry_after)),
        }
    }

    /// Forgets the buckets of callers idle long enough for their bucket to refill
    /// (they are indistinguishable from a new caller then), every `every`. Without
    /// this the limiters keep one entry per key ever seen, and a client rotating
    /// through source addresses (an IPv4 botnet, or a /64 after /64) or account
    /// names grows them without bound.
    pub fn evict_idle(self: Arc<Self>, every: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let mut keys = 0;
                for limiter in [&self.credentials, &self.token_checks]
                    .into_iter()
                    .flatten()
                {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                    keys += limiter.len();
                }
                if let Some(limiter) = &self.management {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                    keys += limiter.len();
                }
                keys += self.accounts.evict_idle();
                metrics::gauge!("keyledger_rate_limit_clients").set(keys as f64);
            }
        })
    }
}

/// The limits, as handlers extract them (registered by `startup::http_server`).
pub type Limits = actix_web::web::Data<RateLimits>;

/// The middleware of every limit: a request over its class's budget is answered
/// 429 before it reaches its handler (and its body is never read).
pub fn limit<S>(
    req: ServiceRequest,
    service: &S,
    limits: &RateLimits,
) -> impl Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
    S::Future: 'static,
{
    match limits.check(&req) {
        Ok(()) => Either::Left(service.call(req)),
        Err(refused) => {
            let (request, _) = req.into_parts();
            Either::Right(ready(Ok(ServiceResponse::new(
                request,
                refused.error_response(),
            ))))
        }
    }
}

/// Charges one request to `key`'s bucket; how long to wait when it is empty.
fn charge<K: Hash + Eq + Clone>(
    limiter: Option<&DefaultKeyedRateLimiter<K>>,
    key: impl FnOnce() -> Option<K>,
) -> Option<Duration> {
    let limiter = limiter?;
    let key = key()?;
    limiter
        .check_key(&key)
        .err()
        .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

/// The 429 of class `label`, counted.
fn refused_for(label: &'static str, retry_after: Duration) -> ApiError {
    metrics::counter!("keyledger_rate_limited_total", "class" => label).increment(1);
    ApiError::RateLimited {
        retry_after: retry_after.max(Duration::from_secs(1)),
    }
}

/// The window the per-account budget counts failures in.
const ACCOUNT_WINDOW: Duration = Duration::from_secs(60);
/// How long an address that proved it knows an account's secret stays exempt
/// from that account's budget (in memory only: a restart forgets).
const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How many known addresses an account keeps (the least recent one goes).
const KNOWN_ADDRESSES_PER_ACCOUNT: usize = 8;

/// The per-account budget of the credential routes: at most `per_minute` failed
/// attempts on one account (an email, a client id, a user id) per minute, from
/// all addresses together.
///
/// Only failures are charged, and an address that succeeded for the account
/// before is exempt: an attacker spending a victim's budget from everywhere slows
/// the guessing down without locking the victim out of logging in from where it
/// usually does. (The lockout after repeated failures is a separate mechanism.)
///
/// Accounts are kept as a keyed SHA-256 digest of their canonical name (the key is
/// random per process), never the name itself, and never logged.
pub struct AccountThrottle {
    per_minute: u32,
    key: [u8; 16],
    accounts: Mutex<HashMap<[u8; 32], AccountWindow>>,
}

#[derive(Default)]
struct AccountWindow {
    started: Option<Instant>,
    failures: u32,
    known: Vec<(IpAddr, Instant)>,
}

impl AccountThrottle {
    /// `per_minute` 0 disables the budget.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            key: *Uuid::new_v4().as_bytes(),
            accounts: Mutex::default(),
        }
    }

    fn digest(&self, account: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update(account.trim().to_lowercase().as_bytes());
        hasher.finalize().into()
    }

    fn enabled(&self) -> bool {
        self.per_minute > 0
    }

    /// Whether `account` may be tried now from `client`: 429 (counted in class
    /// `account`) when its failures of the current minute are spent.
    pub fn check(&self, account: &str, client: Option<IpAddr>) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let digest = self.digest(account);
        let now = Instant::now();
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(window) = accounts.get(&digest) else {
            return Ok(());
        };
        let client = client.map(rate_limit_key);
        if client.is_some_and(|c| window.known.iter().any(|(k, _)| *k == c)) {
            return Ok(());
        }
        match window.started {
            Some(started) if window.failures >= self.per_minute => {
                let ends = started + ACCOUNT_WINDOW;
                if ends > now {
                    return Err(refused_for("account", ends - now));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Runs `attempt`, a check of `account`'s secret from `client`, within the
    /// account's budget: refused (429) while the budget is spent, charged when
    /// `wrong_secret` says the outcome is a wrong secret, and `client` remembered
    /// as known when it succeeds.
    pub async fn attempt<T, E>(
        &self,
        account: &str,
        client: Option<IpAddr>,
        wrong_secret: impl FnOnce(&E) -> bool,
        attempt: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ApiError>
    where
        ApiError: From<E>,
    {
        self.check(account, client)?;
        let outcome = attempt.await;
        match &outcome {
            Ok(_) => self.succeeded(account, client),
            Err(e) if wrong_secret(e) => self.failed(account),
            Err(_) => {}
        }
        Ok(outcome?)
    }

    /// Charges a failed attempt on `account`.
    pub fn failed(&self, account: &str) {
        if !self.enabled() {
            return;
        }
        let digest = self.digest(account);
        let now = Instant::now();
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let window = accounts.entry(digest).or_default();
        match window.started {
            Some(started) if now.duration_since(started) < ACCOUNT_WINDOW => {
                window.failures = window.failures.saturating_add(1);
            }
            _ => {
                window.started = Some(now);
                window.failures = 1;
            }
        }
    }

    /// Remembers that `client` knew `account`'s secret: its later attempts are not
    /// held back by failures from elsewhere.
    pub fn succeeded(&self, account: &str, client: Option<IpAddr>) {
        let Some(client) = client.filter(|_| self.enabled()) else {
            return;
        };
        let client = rate_limit_key(client);
        let digest = self.digest(account);
        let now = Instant::now();
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let window = accounts.entry(digest).or_default();
        window.known.retain(|(k, _)| *k != client);
        if window.known.len() >= KNOWN_ADDRESSES_PER_ACCOUNT {
            window.known.remove(0);
        }
        window.known.push((client, now));
    }

    /// Drops finished windows and expired known addresses; the number of
    /// accounts left.
    fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.retain(|_, window| {
            window
                .known
                .retain(|(_, seen)| now.duration_since(*seen) < KNOWN_ADDRESS_TTL);
            if window
                .started
                .is_some_and(|s| now.duration_since(s) >= ACCOUNT_WINDOW)
            {
                window.started = None;
                window.failures = 0;
            }
            window.started.is_some() || !window.known.is_empty()
        });
        accounts.shrink_to_fit();
        accounts.len()
    }
}

/// The client address of a request context (`RequestContext::ip`), for the
/// per-account budget.
pub fn context_address(ip: Option<&str>) -> Option<IpAddr> {
    ip.and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_clients_are_evicted_once_their_bucket_has_refilled() {
        let limits = Arc::new(RateLimits {
            credentials: Some(RateLimiter::keyed(
                Quota::with_period(Duration::from_millis(10))
                    .unwrap()
                    .allow_burst(NonZeroU32::new(2).unwrap()),
            )),
            token_checks: None,
            management: None,
            accounts: AccountThrottle::new(0),
            rule: ClientAddressRule::default(),
        });
        let limiter = limits.credentials.as_ref().unwrap();
        for i in 0..100u8 {
            let _ = limiter.check_key(&IpAddr::from([198, 51, 100, i]));
        }
        assert_eq!(limiter.len(), 100);
        let evictor = limits.clone().evict_idle(Duration::from_millis(50));
        let mut left = limiter.len();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = limiter.len();
            if left == 0 {
                break;
            }
        }
        evictor.abort();
        assert_eq!(left, 0, "idle keys were kept");
    }

    #[test]
    fn routes_fall_into_their_class() {
        for (path, class) in [
            ("/v1/auth/login", Some(Class::Credentials)),
            ("/v1/auth/register", Some(Class::Credentials)),
            ("/v1/auth/password", Some(Class::Credentials)),
            ("/v1/auth/token", Some(Class::Credentials)),
            ("/v1/auth/refresh", Some(Class::Credentials)),
            ("/v1/users/me", Some(Class::Credentials)),
            ("/v1/auth/validate", Some(Class::TokenChecks)),
            ("/v1/auth/authorize", Some(Class::TokenChecks)),
            ("/v1/auth/permissions/abc", Some(Class::TokenChecks)),
            ("/v1/auth/keys", Some(Class::TokenChecks)),
            ("/v1/oidc/jwks", Some(Class::TokenChecks)),
            ("/v1/auth/me", Some(Class::Management)),
            ("/v1/auth/sessions/abc", Some(Class::Management)),
            ("/v1/users/me/invitations", Some(Class::Management)),
            ("/v1/organizations", Some(Class::Management)),
            ("/v1/organizations/x/members", Some(Class::Management)),
            ("/v1/admin/users", Some(Class::Management)),
            ("/v1/audit/events", Some(Class::Management)),
            ("/v1/oidc/clients", Some(Class::Management)),
            ("/v1/oidc/clients/abc/secret", Some(Class::Management)),
            ("/v1/auth/me/consents", Some(Class::Management)),
            ("/v1/auth/me/consents/abc", Some(Class::Management)),
            ("/v1/oidc/jwks", Some(Class::TokenChecks)),
            ("/v1/oidc/authorize", Some(Class::Credentials)),
            ("/health", None),
            ("/openapi.json", None),
            ("/metrics", None),
        ] {
            assert_eq!(Class::of(path), class, "{path}");
        }
    }

    #[test]
    fn an_account_refuses_after_its_failures_except_from_a_known_address() {
        let throttle = AccountThrottle::new(3);
        let home: IpAddr = "192.0.2.7".parse().unwrap();
        let attacker: IpAddr = "203.0.113.1".parse().unwrap();
        throttle.succeeded("Victim@example.com", Some(home));
        for _ in 0..3 {
            assert!(throttle.check("victim@example.com", Some(attacker)).is_ok());
            throttle.failed("victim@example.com ");
        }
        let Err(ApiError::RateLimited { retry_after }) =
            throttle.check("VICTIM@example.com", Some(attacker))
        else {
            panic!("the fourth failure in a minute was let through");
        };
        assert!(retry_after <= ACCOUNT_WINDOW && retry_after > Duration::ZERO);
        // From elsewhere too, but not from where the account logged in before.
        assert!(throttle.check("victim@example.com", None).is_err());
        assert!(throttle.check("victim@example.com", Some(home)).is_ok());
        // Another account has its own budget.
        assert!(throttle.check("other@example.com", Some(attacker)).is_ok());
        // Nothing readable is kept.
        let accounts = throttle.accounts.lock().unwrap();
        assert_eq!(accounts.len(), 1);
    }
}
