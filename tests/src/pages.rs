//! A browser for the hosted pages over plain HTTP: its own cookie jar (the
//! session cookies are `Secure`, which a cookie store keeps off `http://`),
//! no redirects followed, form posts with the page's own form token, and an
//! `Origin` like a browser's.

use std::collections::HashMap;

use reqwest::{Response, StatusCode};

use crate::TestApp;

/// A page as the browser got it.
pub struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub html: String,
}

impl Page {
    /// The value of hidden field `name` in the page's first form holding it.
    pub fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.html.find(&marker)? + marker.len();
        let end = self.html[start..].find('"')? + start;
        Some(unescape(&self.html[start..end]))
    }

    /// The page's form token (`csrf_token`).
    pub fn form_token(&self) -> String {
        self.field("csrf_token")
            .unwrap_or_else(|| panic!("no form token in the page:\n{}", self.html))
    }

    /// The `Location` of a redirect.
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{} has no Location:\n{}", self.status, self.html))
    }

    /// The `data-error` code the page shows, if any.
    pub fn error(&self) -> Option<String> {
        let marker = "data-error=\"";
        let start = self.html.find(marker)? + marker.len();
        let end = self.html[start..].find('"')? + start;
        Some(self.html[start..end].to_owned())
    }

    pub fn policy(&self) -> &str {
        self.headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

fn unescape(text: &str) -> String {
    text.replace("&#38;", "&")
        .replace("&amp;", "&")
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&#x2f;", "/")
        .replace("&#47;", "/")
}

/// One browser: a cookie jar and the origin it sends on posts.
pub struct PageBrowser<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    pub cookies: HashMap<String, String>,
    /// The `Origin` its posts carry (the server's own unless changed).
    pub origin: String,
    pub accept_language: Option<String>,
    /// The `Sec-Fetch-Site` its posts carry, if any (browsers send one).
    pub fetch_site: Option<String>,
}

impl<'a> PageBrowser<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client"),
            cookies: HashMap::new(),
            origin: app.address.trim_end_matches('/').to_owned(),
            accept_language: None,
            fetch_site: None,
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn take(&mut self, response: Response) -> Page {
        for line in response.headers().get_all("set-cookie") {
            let line = line.to_str().expect("ascii cookie");
            let pair = line.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            let removal = line.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
            if removal {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let html = response.text().await.expect("a body");
        Page {
            status,
            headers,
            html,
        }
    }

    /// GETs `path` (with its query).
    pub async fn get(&mut self, path: &str) -> Page {
        let mut request = self
            .client
            .get(self.app.url(path))
            .header("cookie", self.cookie_header());
        if let Some(language) = &self.accept_language {
            request = request.header("accept-language", language);
        }
        let response = request.send().await.expect("the page answers");
        self.take(response).await
    }

    /// Posts a form to `path`, as a browser does from a page of `self.origin`.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut request = self
            .client
            .post(self.app.url(path))
            .header("cookie", self.cookie_header())
            .header("origin", &self.origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(fields).expect("a form"));
        if let Some(site) = &self.fetch_site {
            request = request.header("sec-fetch-site", site);
        }
        if let Some(language) = &self.accept_language {
            request = request.header("accept-language", language);
        }
        let response = request.send().await.expect("the page answers");
        self.take(response).await
    }

    /// GETs `path`, then posts its form to `action` with `fields` and the
    /// page's form token.
    pub async fn submit(&mut self, path: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let page = self.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}:\n{}", page.html);
        let token = page.form_token();
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf_token", &token));
        self.post(action, &all).await
    }
}
