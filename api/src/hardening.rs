//! What every answer and every request goes through for safety, whatever the route:
//! request bodies are never inflated, and responses carry the security headers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::ResponseError;
use futures::future::{ready, Either};

use crate::error::ApiError;

/// Whether a request's `Content-Encoding` (every line, every comma-separated coding)
/// is absent or only `identity`.
fn is_identity(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).all(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .map(str::trim)
                .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"))
        })
    })
}

/// Refuses any request with a `Content-Encoding` other than `identity` (415
/// `unsupported_content_encoding`), before its body is read.
///
/// The server is built without actix-web's `compress-*` features, so nothing would
/// inflate a compressed body anyway (it would reach the extractors raw and fail as
/// undecodable); this answers such a request clearly and at once, without reading a
/// byte of it. With decompression on, a 13 KB zstd body inflated to hundreds of MiB
/// before the body limit was checked.
pub fn refuse_encoded_bodies<S>(
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
    S::Future: 'static,
{
    if is_identity(req.headers()) {
        Either::Left(service.call(req))
    } else {
        // The payload is dropped unread.
        let (request, _) = req.into_parts();
        let response = ApiError::UnsupportedContentEncoding.error_response();
        Either::Right(ready(Ok(ServiceResponse::new(request, response))))
    }
}

/// The headers every answer carries unless its handler set its own (the docs page
/// has its own `Content-Security-Policy`, the public keys their own
/// `Cache-Control`). Built once from the settings, shared by the workers.
#[derive(Clone, Debug)]
pub struct SecurityHeaders(Arc<[(HeaderName, HeaderValue)]>);

impl SecurityHeaders {
    /// `hsts_max_age`: `Strict-Transport-Security` is sent only when set
    /// (KEYLEDGER_HSTS_MAX_AGE_SECS): TLS usually ends at a proxy in front, and
    /// HSTS on a plain-HTTP deployment would lock browsers out of it.
    pub fn new(hsts_max_age: Option<Duration>) -> Self {
        let mut headers = vec![
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // JSON answers load nothing and may not be framed.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            // Answers are per caller (tokens, accounts): no cache keeps them.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ];
        if let Some(max_age) = hsts_max_age {
            headers.push((
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_str(&format!("max-age={}", max_age.as_secs()))
                    .expect("digits are a valid header value"),
            ));
        }
        Self(headers.into())
    }

    fn fill(&self, headers: &mut HeaderMap) {
        for (name, value) in self.0.iter() {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Adds the [`SecurityHeaders`] to every answer, errors included (handlers'
/// errors, the router's 404 and the rate limit's 429 are all answers by then).
pub fn add_security_headers<S>(
    req: ServiceRequest,
    service: &S,
    headers: &SecurityHeaders,
) -> impl Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
    S::Future: 'static,
{
    let headers = headers.clone();
    let response = service.call(req);
    async move {
        let mut response = response.await?;
        headers.fill(response.headers_mut());
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn identity(values: &[&str]) -> bool {
        let mut request = TestRequest::default();
        for value in values {
            request = request.append_header((header::CONTENT_ENCODING, *value));
        }
        is_identity(request.to_http_request().headers())
    }

    #[test]
    fn only_an_absent_or_identity_content_encoding_is_accepted() {
        assert!(identity(&[]));
        assert!(identity(&["identity"]));
        assert!(identity(&["Identity, identity"]));
        assert!(!identity(&["gzip"]));
        assert!(!identity(&["identity, zstd"]));
        // Every line counts, not only the first.
        assert!(!identity(&["identity", "br"]));
        assert!(!identity(&["x-unknown"]));
    }
}
