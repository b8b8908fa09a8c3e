//! What every hosted page shares: its language, its script nonce, the brand, the
//! signed-in session (if any), the form token its forms carry, and the answer
//! with the pages' security policy.

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, HttpResponseBuilder};
use base64::Engine;
use keyledger_commands::AccessClaims;

use super::i18n::{Language, LANGUAGE_COOKIE};
use crate::browser_session::{self, ACCESS_COOKIE};
use crate::error::ApiError;

/// The cookie of an anonymous form's token (double submit): sign-in, sign-up
/// and the email-link forms carry its value in their `csrf_token` field. A
/// signed-in page's forms carry the session's CSRF token instead, the one the
/// API takes in `X-CSRF-Token`.
pub const FORM_COOKIE: &str = "__Host-keyledger-form";

/// How the pages look and where they may lead, from `KEYLEDGER_PAGES_*` and
/// `KEYLEDGER_PRODUCT_NAME`; built once.
#[derive(Debug, Clone)]
pub struct PagesConfig {
    pub enabled: bool,
    pub product_name: String,
    /// Where the logo comes from (absolute, or a path on this server).
    pub logo_src: Option<String>,
    /// The logo's origin when it is another one (allowed for images).
    pub logo_origin: Option<String>,
    pub accent_color: String,
    /// App URLs the pages may send the browser back to, without their query.
    pub return_urls: Vec<url::Url>,
    /// This server's origin (`scheme://host[:port]`).
    pub own_origin: String,
}

impl PagesConfig {
    pub fn new(
        settings: &crate::settings::PagesSettings,
        product_name: &str,
        public: &url::Url,
    ) -> Self {
        let own_origin = browser_session::origin_of(public);
        let (logo_src, logo_origin) = match &settings.logo_url {
            // A path given as `/logo.svg`, kept under a reserved placeholder.
            Some(url) if url.as_str().starts_with(crate::settings::LOCAL_LOGO_BASE) => {
                (Some(url.path().to_owned()), None)
            }
            Some(url) => {
                let origin = browser_session::origin_of(url);
                (
                    Some(url.to_string()),
                    (origin != own_origin).then_some(origin),
                )
            }
            None => (None, None),
        };
        Self {
            enabled: settings.enabled,
            product_name: product_name.to_owned(),
            logo_src,
            logo_origin,
            accent_color: settings.accent_color.clone(),
            return_urls: settings.return_urls.clone(),
            own_origin,
        }
    }
}

/// A page being answered: built from the request by its handler's extractor.
pub struct Chrome {
    pub language: Language,
    /// Whether the reader used the language switch on this request (its cookie
    /// is set with the answer).
    language_chosen: bool,
    /// The nonce of this answer's scripts and style (128 random bits).
    pub nonce: String,
    pub config: Arc<PagesConfig>,
    /// The signed-in session, from the access cookie, if it is live.
    pub session: Option<AccessClaims>,
    /// The token this page's forms carry in `csrf_token`.
    pub form_token: String,
    /// Whether the anonymous form cookie is new (set with the answer).
    new_form_cookie: bool,
    /// The request's path and query, for the language switch's links.
    path_and_query: String,
    /// Origins a form on this page may lead to besides this one (an app's
    /// return URL after a form post: Chromium applies `form-action` to the
    /// redirect that follows the post).
    form_targets: Vec<String>,
}

impl FromRequest for Chrome {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Self::of(req))
    }
}

impl Chrome {
    fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        let state = req
            .app_data::<crate::state::State>()
            .ok_or_else(|| ApiError::Internal("state missing".into()))?;
        if !state.pages.enabled {
            return Err(ApiError::NotFound);
        }
        let (language, language_chosen) = Language::of_request(req);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let session = browser_session::cookie_value(req, ACCESS_COOKIE)
            .and_then(|token| crate::extract::live_claims(state, token));
        let (form_token, new_form_cookie) = match &session {
            Some(claims) => (state.auth.csrf_token(claims.session_id), false),
            None => match browser_session::cookie_value(req, FORM_COOKIE).filter(|v| v.len() == 43)
            {
                Some(value) => (value.to_owned(), false),
                None => (keyledger_commands::random_secret(), true),
            },
        };
        Ok(Self {
            language,
            language_chosen,
            nonce: base64::engine::general_purpose::STANDARD.encode(nonce),
            config: state.pages.clone(),
            session,
            form_token,
            new_form_cookie,
            path_and_query: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned()),
            form_targets: Vec::new(),
        })
    }

    /// Message `id` in the reader's language.
    pub fn t(&self, id: &str) -> String {
        self.language.text(id)
    }

    /// Message `id` with one argument.
    pub fn t1(&self, id: &str, name: &'static str, value: &str) -> String {
        self.language.text_with(id, &[(name, value)])
    }

    /// The message of an error code (`error-<code>` in the catalogue), or the
    /// generic one for a code the pages have no words for.
    pub fn error_text(&self, code: &str) -> String {
        let id = format!("error-{}", code.replace('_', "-"));
        let text = self.language.text(&id);
        if text == id {
            self.language.text("error-generic")
        } else {
            text
        }
    }

    pub fn lang(&self) -> &'static str {
        self.language.tag()
    }

    pub fn product_name(&self) -> &str {
        &self.config.product_name
    }

    pub fn accent_color(&self) -> &str {
        &self.config.accent_color
    }

    pub fn logo_src(&self) -> Option<&str> {
        self.config.logo_src.as_deref()
    }

    pub fn signed_in(&self) -> bool {
        self.session.is_some()
    }

    /// The languages the switch offers (all but the current one), each with
    /// the link to this page in it.
    pub fn other_languages(&self) -> Vec<(&'static str, &'static str, String)> {
        let (path, query) = self
            .path_and_query
            .split_once('?')
            .unwrap_or((&self.path_and_query, ""));
        let kept: Vec<(String, String)> =
            serde_urlencoded::from_str::<Vec<(String, String)>>(query)
                .unwrap_or_default()
                .into_iter()
                .filter(|(key, _)| key != super::i18n::LANGUAGE_PARAMETER && key != "token")
                .collect();
        Language::ALL
            .into_iter()
            .filter(|language| *language != self.language)
            .map(|language| {
                let mut pairs = kept.clone();
                pairs.push((
                    super::i18n::LANGUAGE_PARAMETER.to_owned(),
                    language.tag().to_owned(),
                ));
                let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
                (
                    language.tag(),
                    language.own_name(),
                    format!("{path}?{query}"),
                )
            })
            .collect()
    }

    /// Lets this page's forms lead to `origin` (see `form_targets`).
    pub fn allow_form_target(&mut self, origin: String) {
        if origin != self.config.own_origin && !self.form_targets.contains(&origin) {
            self.form_targets.push(origin);
        }
    }

    /// The pages' policy: scripts only with this answer's nonce (and what they
    /// load), styles from this server or with the nonce, images from this
    /// server (and the logo's origin), requests to this server only, forms to
    /// this server (and an app's return URL), never framed.
    pub fn content_security_policy(&self) -> String {
        let nonce = &self.nonce;
        let images = match &self.config.logo_origin {
            Some(origin) => format!("'self' data: {origin}"),
            None => "'self' data:".to_owned(),
        };
        let forms = std::iter::once("'self'".to_owned())
            .chain(self.form_targets.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "default-src 'none'; script-src 'nonce-{nonce}' 'strict-dynamic'; \
             style-src 'self' 'nonce-{nonce}'; img-src {images}; connect-src 'self'; \
             form-action {forms}; base-uri 'none'; frame-ancestors 'none'"
        )
    }

    /// An answer with this page's headers and cookies, its body still to set.
    pub fn answer(&self, status: StatusCode) -> HttpResponseBuilder {
        let mut answer = HttpResponse::build(status);
        answer.content_type("text/html; charset=utf-8");
        if let Ok(policy) = HeaderValue::from_str(&self.content_security_policy()) {
            answer.insert_header((header::CONTENT_SECURITY_POLICY, policy));
        }
        answer.insert_header((header::CACHE_CONTROL, "no-store"));
        // Not the API's `no-referrer`: under it a browser sends `Origin: null`
        // with a form post, even to the page's own origin, and the origin
        // check could not tell our forms from a sandboxed frame's. Other sites
        // still get no referrer.
        answer.insert_header((header::REFERRER_POLICY, "same-origin"));
        answer.insert_header((header::VARY, "Accept-Language, Cookie"));
        if self.language_chosen {
            let year = actix_web::cookie::time::Duration::days(365);
            answer.cookie(
                Cookie::build(LANGUAGE_COOKIE, self.language.tag())
                    .path("/")
                    .same_site(SameSite::Lax)
                    .secure(true)
                    .max_age(year)
                    .finish(),
            );
        }
        if self.new_form_cookie {
            answer.cookie(
                Cookie::build(FORM_COOKIE, self.form_token.clone())
                    .path("/")
                    .http_only(true)
                    .secure(true)
                    .same_site(SameSite::Strict)
                    .finish(),
            );
        }
        answer
    }

    /// Renders `page` as this request's answer.
    pub fn render(&self, status: StatusCode, page: &impl askama::Template) -> HttpResponse {
        match page.render() {
            Ok(html) => self.answer(status).body(html),
            Err(e) => {
                tracing::error!(error = %e, "a page failed to render");
                actix_web::ResponseError::error_response(&ApiError::Internal(
                    "a page failed to render".into(),
                ))
            }
        }
    }

    /// A "see other" to `location` with this page's cookies.
    pub fn redirect(&self, location: &str) -> HttpResponseBuilder {
        let mut answer = self.answer(StatusCode::SEE_OTHER);
        answer.insert_header((header::LOCATION, location.to_owned()));
        answer
    }
}
