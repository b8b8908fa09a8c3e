//! The one HTTP client every provider call goes through.

use std::future::Future;
use std::pin::Pin;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// Why a request got no usable answer: these are the failures the breaker counts.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("provider answered HTTP {0}")]
    ServerError(u16),
    #[error("bad request: {0}")]
    Build(String),
}

/// reqwest with no redirects (a provider's answer is never followed elsewhere: an endpoint
/// that redirects could point the server at internal addresses), a timeout per call, and a
/// `User-Agent` (GitHub refuses requests without one). Also the `openidconnect` HTTP client,
/// so a 5xx from a token or user-info endpoint is a transport failure (the breaker counts
/// it) rather than a parse error of an HTML error page.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
}

impl Http {
    pub(crate) fn new(timeout: std::time::Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent("keyledger")
            .build()?;
        Ok(Http { client })
    }
}

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request: reqwest::Request = request.try_into()?;
            let response = self.client.execute(request).await?;
            let status = response.status();
            if status.is_server_error() {
                return Err(TransportError::ServerError(status.as_u16()));
            }
            let mut builder = openidconnect::http::Response::builder().status(status.as_u16());
            for (name, value) in response.headers() {
                builder = builder.header(name.as_str(), value.as_bytes());
            }
            let body = response.bytes().await?.to_vec();
            builder
                .body(body)
                .map_err(|e| TransportError::Build(e.to_string()))
        })
    }
}
