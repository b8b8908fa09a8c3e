//! The per-IP rate limit of `/v1/auth`: keyed on the real client address (behind
//! trusted proxies too) and answering in the API's JSON error envelope.

use std::net::IpAddr;
use std::sync::Arc;

use actix_governor::governor::clock::{Clock, DefaultClock, QuantaInstant};
use actix_governor::governor::NotUntil;
use actix_governor::{KeyExtractor, SimpleKeyExtractionError};
use actix_web::dev::ServiceRequest;
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};

use crate::error::ApiError;
use crate::extract::client_ip;

#[derive(Clone, Debug)]
pub struct ClientIpKeyExtractor {
    trusted_proxies: Arc<Vec<IpAddr>>,
}

impl ClientIpKeyExtractor {
    pub fn new(trusted_proxies: Vec<IpAddr>) -> Self {
        Self {
            trusted_proxies: Arc::new(trusted_proxies),
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
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        Ok(client_ip(peer, forwarded, &self.trusted_proxies))
    }

    fn exceed_rate_limit_response(
        &self,
        negative: &NotUntil<QuantaInstant>,
        _response: HttpResponseBuilder,
    ) -> HttpResponse {
        let retry_after = negative.wait_time_from(DefaultClock::default().now());
        ApiError::RateLimited {
            retry_after: retry_after.max(std::time::Duration::from_secs(1)),
        }
        .error_response()
    }
}
