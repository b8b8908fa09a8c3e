//! Browser sessions kept in cookies instead of tokens in JavaScript, with the
//! CSRF and CORS rules that makes safe.
//!
//! A client opts in per request with `X-Keyledger-Session: cookie` on a
//! sign-in, a second step, a social login's exchange or a refresh. The answer
//! then carries no token: the access token goes into `__Host-keyledger-access`
//! (every route), the refresh token into `__Secure-keyledger-refresh` (sent to
//! the refresh route only), both `HttpOnly`, `Secure`, `SameSite=Lax`; the CSRF
//! token goes into `__Host-keyledger-csrf`, readable by the page's script, and
//! into the answer. Bearer clients are unchanged.
//!
//! A state-changing request authenticated by a cookie must come from an allowed
//! origin (its `Origin`, else its `Sec-Fetch-Site`) **and** carry the session's
//! CSRF token in `X-CSRF-Token`; otherwise 403 `csrf_failed`. `SameSite=Lax`
//! alone would let a top-level cross-site form post through on some browsers,
//! and a sibling subdomain counts as same-site; the token is bound to the
//! session (an HMAC of its id), so a cookie planted by a sibling is useless.

use std::future::{ready, Future, Ready};

use actix_web::body::BoxBody;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::{FromRequest, HttpRequest, HttpResponse, HttpResponseBuilder};
use futures::future::Either;
use keyledger_commands::TokenPair;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The request header that asks for a cookie session.
pub const SESSION_HEADER: &str = "x-keyledger-session";
/// The request header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const ACCESS_COOKIE: &str = "__Host-keyledger-access";
pub const REFRESH_COOKIE: &str = "__Secure-keyledger-refresh";
pub const CSRF_COOKIE: &str = "__Host-keyledger-csrf";
/// The only path the refresh cookie is sent to.
pub const REFRESH_PATH: &str = "/v1/auth/refresh";

/// How a sign-in's tokens reach the client: in the answer (the default) or in
/// cookies (`X-Keyledger-Session: cookie`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Body,
    Cookies,
}

impl FromRequest for Delivery {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let cookies = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("cookie"));
        ready(Ok(if cookies { Self::Cookies } else { Self::Body }))
    }
}

/// The value of cookie `name` on the request, if any.
pub fn cookie_value<'r>(req: &'r HttpRequest, name: &str) -> Option<&'r str> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether `method` changes something (and so needs the CSRF checks).
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The CSRF checks of a request authenticated by a cookie of session
/// `session_id`: nothing to check for a safe method; otherwise an allowed
/// origin and the session's CSRF token.
pub fn check_csrf(state: &AppState, req: &HttpRequest, session_id: Uuid) -> Result<(), ApiError> {
    if !changes_state(req.method()) {
        return Ok(());
    }
    if !state.browser.same_origin_or_allowed(req) {
        return Err(ApiError::CsrfFailed);
    }
    let expected = state.auth.csrf_token(session_id);
    let given = req
        .headers()
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::CsrfFailed)
    }
}

fn session_cookie(name: &'static str, value: String, path: &'static str) -> Cookie<'static> {
    Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax)
        .finish()
}

/// Sets the cookies of a token pair on an answer; the CSRF token is returned
/// for the answer's body. The access cookie lives as long as its token, the
/// refresh cookie as long as its session may.
pub fn set_session_cookies(
    state: &AppState,
    answer: &mut HttpResponseBuilder,
    pair: &TokenPair,
) -> String {
    let csrf = state.auth.csrf_token(pair.session_id);
    let access_age = i64::try_from(pair.expires_in).unwrap_or(i64::MAX);
    let mut access = session_cookie(ACCESS_COOKIE, pair.access_token.clone(), "/");
    access.set_max_age(actix_web::cookie::time::Duration::seconds(access_age));
    let mut refresh = session_cookie(
        REFRESH_COOKIE,
        pair.refresh_token.expose().to_owned(),
        REFRESH_PATH,
    );
    refresh.set_max_age(actix_web::cookie::time::Duration::seconds(
        state.browser.session_ttl_secs,
    ));
    let mut csrf_cookie = session_cookie(CSRF_COOKIE, csrf.clone(), "/");
    // Read by the page's script, to send back in `X-CSRF-Token`.
    csrf_cookie.set_http_only(false);
    csrf_cookie.set_max_age(actix_web::cookie::time::Duration::seconds(
        state.browser.session_ttl_secs,
    ));
    answer.cookie(access).cookie(refresh).cookie(csrf_cookie);
    csrf
}

/// Clears the session's cookies (a logout).
pub fn clear_session_cookies(answer: &mut HttpResponseBuilder) {
    for (name, path) in [
        (ACCESS_COOKIE, "/"),
        (REFRESH_COOKIE, REFRESH_PATH),
        (CSRF_COOKIE, "/"),
    ] {
        let mut gone = session_cookie(name, String::new(), path);
        gone.make_removal();
        answer.cookie(gone);
    }
}

/// What browser sessions need to know: the origins browsers may call from
/// (this server's own, `KEYLEDGER_PUBLIC_URL`, and with credentials across
/// origins `KEYLEDGER_CORS_ORIGINS`), and how long cookies live.
#[derive(Debug, Clone)]
pub struct BrowserSessions {
    own: String,
    cors: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    pub max_age_secs: u64,
    /// How long the refresh and CSRF cookies live (the session's lifetime).
    pub session_ttl_secs: i64,
}

/// The origin (`scheme://host[:port]`) of a URL.
pub fn origin_of(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

impl BrowserSessions {
    pub fn new(
        own: &url::Url,
        cors: &[url::Url],
        max_age_secs: u64,
        session_ttl_secs: i64,
    ) -> Self {
        Self {
            own: origin_of(own),
            cors: cors.iter().map(origin_of).collect(),
            max_age_secs,
            session_ttl_secs,
        }
    }

    /// Whether `origin` may call with credentials (CORS).
    pub fn allows_cors(&self, origin: &str) -> bool {
        self.cors.iter().any(|allowed| allowed == origin)
    }

    /// Whether a request comes from this server's origin or an allowed one:
    /// by its `Origin` (`null` counts as same-origin only with
    /// `Sec-Fetch-Site: same-origin`); without one, by `Sec-Fetch-Site` (`same-origin`, or
    /// `none`: typed by the user); with neither it is no browser's, and only
    /// the CSRF token counts.
    fn same_origin_or_allowed(&self, req: &HttpRequest) -> bool {
        let value = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        match (value("origin"), value("sec-fetch-site")) {
            // Withheld (a page under `Referrer-Policy: no-referrer` sends
            // `Origin: null` with a same-origin POST): `Sec-Fetch-Site`, set
            // by the browser alone, still tells where it comes from.
            (Some("null"), site) => site == Some("same-origin"),
            (Some(origin), _) => origin == self.own || self.allows_cors(origin),
            (None, Some(site)) => matches!(site, "same-origin" | "none"),
            (None, None) => true,
        }
    }
}

/// The methods and request headers a listed origin may use.
const CORS_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const CORS_HEADERS: &str =
    "authorization, content-type, x-csrf-token, x-keyledger-session, idempotency-key";

/// CORS: a request from an origin of `KEYLEDGER_CORS_ORIGINS` gets
/// `Access-Control-Allow-Origin` (that origin, never `*`) with credentials, and
/// its preflight is answered here (204, cached for `KEYLEDGER_CORS_MAX_AGE_SECS`).
/// Any other origin gets no CORS header at all, and its preflight a 403, so the
/// browser lets its script read nothing. CORS only governs what a script may
/// read: state-changing requests are guarded by [`check_csrf`] besides.
pub fn cors<S>(
    req: ServiceRequest,
    service: &S,
    sessions: &BrowserSessions,
) -> impl Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
    S::Future: 'static,
{
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = origin
        .as_deref()
        .filter(|o| sessions.allows_cors(o))
        .map(str::to_owned);
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let answer = match &allowed {
            Some(origin) => HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.as_str()))
                .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, CORS_METHODS))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, CORS_HEADERS))
                .insert_header((
                    header::ACCESS_CONTROL_MAX_AGE,
                    sessions.max_age_secs.to_string(),
                ))
                .insert_header((header::VARY, "Origin"))
                .finish(),
            None => actix_web::ResponseError::error_response(&ApiError::OriginNotAllowed),
        };
        return Either::Left(ready(Ok(req.into_response(answer))));
    }
    let response = service.call(req);
    // Not boxed: this runs for every request, the hot paths included.
    Either::Right(async move {
        let mut response = response.await?;
        if let Some(origin) = allowed {
            let headers = response.headers_mut();
            if let Ok(value) = header::HeaderValue::from_str(&origin) {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    header::HeaderValue::from_static("true"),
                );
                headers.append(header::VARY, header::HeaderValue::from_static("Origin"));
            }
        }
        Ok(response)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> BrowserSessions {
        let own = url::Url::parse("https://id.example").unwrap();
        BrowserSessions::new(
            &own,
            &[url::Url::parse("https://app.example").unwrap()],
            600,
            60,
        )
    }

    fn request(origin: Option<&str>, site: Option<&str>) -> HttpRequest {
        let mut req = actix_web::test::TestRequest::post();
        if let Some(origin) = origin {
            req = req.insert_header(("origin", origin));
        }
        if let Some(site) = site {
            req = req.insert_header(("sec-fetch-site", site));
        }
        req.to_http_request()
    }

    #[test]
    fn a_withheld_origin_counts_as_ours_only_when_the_browser_says_same_origin() {
        let s = sessions();
        assert!(s.same_origin_or_allowed(&request(Some("null"), Some("same-origin"))));
        for site in [None, Some("cross-site"), Some("same-site"), Some("none")] {
            assert!(
                !s.same_origin_or_allowed(&request(Some("null"), site)),
                "{site:?}"
            );
        }
        assert!(s.same_origin_or_allowed(&request(Some("https://id.example"), None)));
        assert!(s.same_origin_or_allowed(&request(Some("https://app.example"), None)));
        assert!(
            !s.same_origin_or_allowed(&request(Some("https://evil.example"), Some("same-origin")))
        );
    }
}
