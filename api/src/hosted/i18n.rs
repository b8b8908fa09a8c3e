//! The pages' languages: every string a page shows comes from a Fluent message
//! catalogue (`api/locales/<language>/*.ftl`, compiled into the binary), in the
//! language the reader chose with the switch (kept in a cookie), else the first
//! their browser asks for (`Accept-Language`) that we have, else English.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::HttpRequest;
use fluent_templates::fluent_bundle::FluentValue;
use fluent_templates::{LanguageIdentifier, Loader};

fluent_templates::static_loader! {
    static LOCALES = {
        locales: "./locales",
        fallback_language: "en-US",
        // Unicode isolation marks around arguments would show in form values
        // and attributes; the pages' arguments are plain text.
        customise: |bundle| bundle.set_use_isolating(false),
    };
}

/// The cookie that keeps the language chosen with the switch.
pub const LANGUAGE_COOKIE: &str = "keyledger-lang";
/// The query parameter the switch sets.
pub const LANGUAGE_PARAMETER: &str = "lang";

static ENGLISH: LazyLock<LanguageIdentifier> = LazyLock::new(|| fluent_templates::langid!("en-US"));
static KOREAN: LazyLock<LanguageIdentifier> = LazyLock::new(|| fluent_templates::langid!("ko-KR"));

/// A language the pages are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    English,
    Korean,
}

impl Language {
    pub const ALL: [Language; 2] = [Language::English, Language::Korean];

    /// The BCP 47 tag the page declares (`<html lang>`) and the switch sends.
    pub fn tag(self) -> &'static str {
        match self {
            Self::English => "en",
            Self::Korean => "ko",
        }
    }

    /// The language's own name, for the switch.
    pub fn own_name(self) -> &'static str {
        match self {
            Self::English => "English",
            Self::Korean => "한국어",
        }
    }

    fn id(self) -> &'static LanguageIdentifier {
        match self {
            Self::English => &ENGLISH,
            Self::Korean => &KOREAN,
        }
    }

    /// The language of a tag (`ko`, `ko-KR`, `en-GB`), by its primary subtag.
    pub fn of_tag(tag: &str) -> Option<Self> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Self::English),
            "ko" => Some(Self::Korean),
            _ => None,
        }
    }

    /// The reader's language: the switch's parameter on this request, else its
    /// cookie, else the best of `Accept-Language` we have, else English. The
    /// second value says whether the switch was used now (its cookie is set).
    pub fn of_request(req: &HttpRequest) -> (Self, bool) {
        let chosen = req
            .uri()
            .query()
            .and_then(|query| {
                serde_urlencoded::from_str::<Vec<(String, String)>>(query)
                    .ok()?
                    .into_iter()
                    .find(|(key, _)| key == LANGUAGE_PARAMETER)
            })
            .and_then(|(_, value)| Self::of_tag(&value));
        if let Some(language) = chosen {
            return (language, true);
        }
        if let Some(language) =
            crate::browser_session::cookie_value(req, LANGUAGE_COOKIE).and_then(Self::of_tag)
        {
            return (language, false);
        }
        let accepted = req
            .headers()
            .get(actix_web::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        (Self::of_accept_language(accepted), false)
    }

    /// The best language of an `Accept-Language` value we have (by `q`, then
    /// order), else English.
    pub fn of_accept_language(value: &str) -> Self {
        let mut ranked: Vec<(u16, usize, Self)> = value
            .split(',')
            .enumerate()
            .filter_map(|(position, item)| {
                let mut parts = item.split(';');
                let language = Self::of_tag(parts.next()?)?;
                let quality = parts
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .map_or(Some(1000), |q| {
                        q.trim().parse::<f32>().ok().map(|q| (q * 1000.0) as u16)
                    })?;
                (quality > 0).then_some((quality, position, language))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.first().map_or(Self::English, |r| r.2)
    }

    /// The message `id` in this language (English when this one lacks it; the
    /// id itself when no catalogue has it, which the catalogue test forbids).
    pub fn text(self, id: &str) -> String {
        LOCALES
            .try_lookup(self.id(), id)
            .unwrap_or_else(|| id.to_owned())
    }

    /// The message `id` with its arguments.
    pub fn text_with(self, id: &str, args: &[(&'static str, &str)]) -> String {
        let args: HashMap<Cow<'static, str>, FluentValue> = args
            .iter()
            .map(|(name, value)| (Cow::Borrowed(*name), FluentValue::from(value.to_string())))
            .collect();
        LOCALES
            .try_lookup_with_args(self.id(), id, &args)
            .unwrap_or_else(|| id.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message of one catalogue is in the other: a page never shows
    /// English in the middle of Korean, nor a message id.
    #[test]
    fn both_catalogues_have_the_same_messages() {
        let ids = |language: &str| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("locales")
                .join(language);
            let mut ids = std::collections::BTreeSet::new();
            for file in std::fs::read_dir(&dir).expect("a catalogue folder") {
                let text = std::fs::read_to_string(file.expect("a file").path()).expect("text");
                for line in text.lines() {
                    let starts_message =
                        line.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
                    if let (true, Some((id, _))) = (starts_message, line.split_once('=')) {
                        assert!(ids.insert(id.trim().to_owned()), "{language}: {id} twice");
                    }
                }
            }
            ids
        };
        let english = ids("en-US");
        let korean = ids("ko-KR");
        assert!(!english.is_empty());
        let only_english: Vec<_> = english.difference(&korean).collect();
        let only_korean: Vec<_> = korean.difference(&english).collect();
        assert!(only_english.is_empty(), "not in Korean: {only_english:?}");
        assert!(only_korean.is_empty(), "not in English: {only_korean:?}");
    }

    #[test]
    fn a_message_comes_in_the_language_asked_for() {
        assert_eq!(Language::English.text("sign-in-title"), "Sign in");
        assert_eq!(Language::Korean.text("sign-in-title"), "로그인");
        assert_eq!(
            Language::English.text_with("signed-in-as", &[("email", "a@b.example")]),
            "Signed in as a@b.example"
        );
    }

    #[test]
    fn accept_language_picks_the_best_language_we_have() {
        assert_eq!(
            Language::of_accept_language("ko-KR,ko;q=0.9,en;q=0.8"),
            Language::Korean
        );
        assert_eq!(
            Language::of_accept_language("fr-FR,en;q=0.5,ko;q=0.7"),
            Language::Korean
        );
        assert_eq!(Language::of_accept_language("fr-FR"), Language::English);
        assert_eq!(Language::of_accept_language("ko;q=0,en"), Language::English);
        assert_eq!(Language::of_accept_language(""), Language::English);
        assert_eq!(Language::of_accept_language("ko;q=abc"), Language::English);
    }
}
