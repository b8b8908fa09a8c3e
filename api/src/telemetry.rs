//! Per-request observability: a request id on every log line and in the response,
//! and request counts and latencies per route.

use std::future::Future;
use std::time::Instant;

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::HttpMessage;
use tracing::Instrument;

use crate::extract::RequestId;

/// A caller-supplied `x-request-id` is kept when it is a short token of safe
/// characters (so it can be logged as is); anything else is replaced.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The `method` label of a request: the standard methods by name, anything else
/// (`FOO`, `X-ANYTHING`: actix accepts any token) as `other`. Labels are never taken
/// from input as is, or every invented method would add a series to `/metrics`
/// for good. (`route` is the matched pattern or `unmatched`, `status` one the server
/// chose: both are bounded by the code.)
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Wraps every request: assigns its id, opens the span that puts the id on every
/// log line written while serving it, and records metrics once it is answered.
pub fn observe_request<S>(
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
    S::Future: 'static,
{
    let started = Instant::now();
    let id = request_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = method_label(req.method());
    let span =
        tracing::info_span!("request", request_id = %id, method = %method, path = %req.path());
    let response = {
        let _entered = span.enter();
        service.call(req)
    };
    async move {
        let mut res = response.await?;
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let status = res.status();
        let elapsed = started.elapsed();
        metrics::counter!("keyledger_http_requests_total",
            "method" => method, "route" => route.clone(), "status" => status.as_u16().to_string())
        .increment(1);
        metrics::histogram!("keyledger_http_request_duration_seconds", "route" => route)
            .record(elapsed.as_secs_f64());
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "answered"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "answered"
            );
        }
        if let Ok(value) = HeaderValue::from_str(&id) {
            res.headers_mut()
                .insert(HeaderName::from_static("x-request-id"), value);
        }
        Ok(res)
    }
    .instrument(span)
}
