//! Form posts from the pages: their bodies, and the checks that they come from
//! this server's own pages (CSRF).

use actix_web::http::header;
use actix_web::HttpRequest;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::chrome::Chrome;

/// The largest form body a page sends (a sign-up with every field filled is
/// under 2 KiB).
pub const FORM_LIMIT: usize = 16 * 1024;

/// A form body, parsed; `None` for one that does not parse (the page answers
/// 400 with its form again).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    if body.len() > FORM_LIMIT {
        return None;
    }
    serde_urlencoded::from_bytes(body).ok()
}

/// Whether a form post comes from this server's page: from this origin (by
/// `Origin`, else `Sec-Fetch-Site`; a client sending neither is no browser,
/// which no other site can make post) **and** with the page's form token, the
/// session's CSRF token when signed in, else the form cookie's value. Another
/// site's form can send neither: its `Origin` differs, and it cannot read the
/// token.
pub fn is_own(chrome: &Chrome, req: &HttpRequest, token: &str) -> bool {
    let value = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let same_origin = match (
        value(header::ORIGIN),
        value(header::HeaderName::from_static("sec-fetch-site")),
    ) {
        // A browser that withholds the origin (`null`: a page under
        // `no-referrer`, or a sandboxed frame) still says where the request
        // comes from in `Sec-Fetch-Site`, which no page can forge.
        (Some("null"), site) => site == Some("same-origin"),
        (Some(origin), _) => origin == chrome.config.own_origin,
        (None, Some(site)) => site == "same-origin",
        (None, None) => true,
    };
    same_origin && bool::from(token.as_bytes().ct_eq(chrome.form_token.as_bytes()))
}

/// What every page form carries besides its own fields.
#[derive(serde::Deserialize)]
struct TokenField {
    #[serde(default)]
    csrf_token: String,
}

/// The fields of a form post, if it is one of this server's pages' own, checked
/// in this order: a form body (`application/x-www-form-urlencoded`; anything else
/// is no form of ours) that parses, else the error page 400 `invalid_form`; from
/// this server's page with its token ([`is_own`]), else 403 `csrf_failed`,
/// whatever else the body holds; then the form's own fields, else 400.
pub fn accept<T: DeserializeOwned>(
    chrome: &Chrome,
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, Box<actix_web::HttpResponse>> {
    use actix_web::http::StatusCode;
    let refuse = |status, code| Box::new(super::error_page(chrome, status, code));
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let token = if is_form {
        parse::<TokenField>(body)
    } else {
        None
    };
    let Some(token) = token else {
        return Err(refuse(StatusCode::BAD_REQUEST, "invalid_form"));
    };
    if !is_own(chrome, req, &token.csrf_token) {
        return Err(refuse(StatusCode::FORBIDDEN, "csrf_failed"));
    }
    parse::<T>(body).ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "invalid_form"))
}

/// Where the browser goes after signing in: `return_to` if it is a path on
/// this server (`/account`, not `//host`) or an app URL of
/// `KEYLEDGER_PAGES_RETURN_URLS` (equal but for the query), else the account
/// page.
pub fn return_to(chrome: &Chrome, requested: Option<&str>) -> String {
    allowed_return(&chrome.config, requested)
}

/// [`return_to`] by the pages' settings alone (for a route that is no page).
pub fn allowed_return(config: &super::PagesConfig, requested: Option<&str>) -> String {
    const DEFAULT: &str = "/account";
    let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        return DEFAULT.to_owned();
    };
    let local = requested.starts_with('/')
        && !requested.starts_with("//")
        && !requested.starts_with("/\\")
        && !requested.chars().any(|c| c.is_control() || c == '\\');
    if local {
        return requested.to_owned();
    }
    let Ok(mut url) = url::Url::parse(requested) else {
        return DEFAULT.to_owned();
    };
    if url.fragment().is_some() {
        return DEFAULT.to_owned();
    }
    url.set_query(None);
    let allowed = config.return_urls.iter().any(|allowed| {
        let mut allowed = allowed.clone();
        allowed.set_query(None);
        allowed == url
    });
    if allowed {
        requested.to_owned()
    } else {
        DEFAULT.to_owned()
    }
}
