//! The per-client rate limit of `/v1/auth`: keyed on the real client address (behind
//! trusted proxies too; IPv6 clients by their /64) and answering in the API's JSON
//! error envelope.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_governor::governor::clock::{Clock, DefaultClock, QuantaInstant};
use actix_governor::governor::NotUntil;
use actix_governor::{KeyExtractor, SimpleKeyExtractionError};
use actix_web::dev::ServiceRequest;
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use tokio::task::JoinHandle;

use crate::client_address::{rate_limit_key, ClientAddressRule};
use crate::error::ApiError;

/// The limiter of the password routes, shared by every worker.
pub type GovernorConfig = actix_governor::GovernorConfig<
    ClientIpKeyExtractor,
    actix_governor::governor::middleware::NoOpMiddleware<QuantaInstant>,
>;

#[derive(Clone, Debug)]
pub struct ClientIpKeyExtractor {
    rule: Arc<ClientAddressRule>,
}

impl ClientIpKeyExtractor {
    pub fn new(rule: ClientAddressRule) -> Self {
        Self {
            rule: Arc::new(rule),
        }
    }
}

impl KeyExtractor for ClientIpKeyExtractor {
    type Key = IpAddr;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<Self::Key, Self::KeyExtractionError> {
        let peer = req
            .peer_addr()
            .map(|a| a.ip())
            .ok_or_else(|| SimpleKeyExtractionError::new("the client address is unknown"))?;
        Ok(rate_limit_key(self.rule.client_ip(peer, req.headers())))
    }

    fn exceed_rate_limit_response(
        &self,
        negative: &NotUntil<QuantaInstant>,
        _response: HttpResponseBuilder,
    ) -> HttpResponse {
        let retry_after = negative.wait_time_from(DefaultClock::default().now());
        ApiError::RateLimited {
            retry_after: retry_after.max(Duration::from_secs(1)),
        }
        .error_response()
    }
}

/// Forgets the buckets of clients that have been idle long enough for their bucket
/// to refill (they are indistinguishable from a new client then), every `every`.
/// Without this the limiter keeps one entry per address ever seen, and a client
/// rotating through source addresses (an IPv4 botnet, or a /64 after /64) grows it
/// without bound.
pub fn evict_idle_clients(config: &GovernorConfig, every: Duration) -> JoinHandle<()> {
    let limiter = config.limiter();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            limiter.retain_recent();
            limiter.shrink_to_fit();
            metrics::gauge!("keyledger_rate_limit_clients").set(limiter.len() as f64);
        }
    })
}

#[cfg(test)]
mod tests {
    use actix_governor::GovernorConfigBuilder;

    use super::*;

    #[tokio::test]
    async fn idle_clients_are_evicted_once_their_bucket_has_refilled() {
        let config: GovernorConfig = GovernorConfigBuilder::default()
            .milliseconds_per_request(10)
            .burst_size(2)
            .key_extractor(ClientIpKeyExtractor::new(ClientAddressRule::default()))
            .finish()
            .unwrap();
        let limiter = config.limiter();
        for i in 0..100u8 {
            let _ = limiter.check_key(&IpAddr::from([198, 51, 100, i]));
        }
        assert_eq!(limiter.len(), 100);
        let evictor = evict_idle_clients(&config, Duration::from_millis(50));
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
}
