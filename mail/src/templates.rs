//! The mails' wording: built-in templates (in `mail/templates/`), each of which an
//! operator can replace with a file of the same name in a directory of their own.
//!
//! A template is text with `{{name}}` placeholders, nothing else (no conditions,
//! no loops). Everything is checked when the templates are loaded, at start-up: a
//! file that is not valid UTF-8, an unclosed `{{`, a placeholder the template cannot
//! have, a subject of more than one line. Rendering then only fails when a value the
//! template uses was not given. A line that uses a value given as empty (there is
//! no support address) is left out, so each optional sentence sits on a line (a
//! `<p>` in HTML) of its own.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::MailError;

/// One kind of mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Template {
    /// Confirm the address given at registration (`link`, `expires_in`).
    VerifyEmail,
    /// Someone tried to register with an address that already has an account
    /// (`link`: sign in or reset the password).
    RegistrationAttempt,
    /// A password reset was asked for (`link`, `expires_in`).
    PasswordReset,
    /// The password was changed.
    PasswordChanged,
    /// Confirm a new address (`link`, `expires_in`), sent to the new address.
    EmailChangeVerify,
    /// The address was changed, sent to the old address.
    EmailChangedNotice,
    /// The account was locked (`link` to unlock it, `expires_in`).
    AccountLocked,
    /// A sign-in link and a short code (`link`, `code`, `expires_in`).
    EmailLogin,
    /// A second factor's code (`code`, `expires_in`), no link.
    SecondFactorCode,
}

impl Template {
    pub const ALL: [Template; 9] = [
        Template::VerifyEmail,
        Template::RegistrationAttempt,
        Template::PasswordReset,
        Template::PasswordChanged,
        Template::EmailChangeVerify,
        Template::EmailChangedNotice,
        Template::AccountLocked,
        Template::EmailLogin,
        Template::SecondFactorCode,
    ];

    /// The name of its files: `<name>.subject.txt`, `<name>.txt`, `<name>.html`.
    pub fn name(self) -> &'static str {
        match self {
            Template::VerifyEmail => "verify_email",
            Template::RegistrationAttempt => "registration_attempt",
            Template::PasswordReset => "password_reset",
            Template::PasswordChanged => "password_changed",
            Template::EmailChangeVerify => "email_change_verify",
            Template::EmailChangedNotice => "email_changed_notice",
            Template::AccountLocked => "account_locked",
            Template::EmailLogin => "email_login",
            Template::SecondFactorCode => "second_factor_code",
        }
    }

    /// The placeholders this template may use: those of every template, and its own.
    pub fn placeholders(self) -> &'static [&'static str] {
        match self {
            Template::VerifyEmail
            | Template::PasswordReset
            | Template::EmailChangeVerify
            | Template::AccountLocked => &[
                "product_name",
                "support_address",
                "email",
                "link",
                "expires_in",
            ],
            Template::RegistrationAttempt => &["product_name", "support_address", "email", "link"],
            Template::PasswordChanged | Template::EmailChangedNotice => {
                &["product_name", "support_address", "email"]
            }
            Template::EmailLogin => &[
                "product_name",
                "support_address",
                "email",
                "link",
                "code",
                "expires_in",
            ],
            Template::SecondFactorCode => &[
                "product_name",
                "support_address",
                "email",
                "code",
                "expires_in",
            ],
        }
    }

    fn builtin(self) -> [&'static str; 3] {
        macro_rules! files {
            ($name:literal) => {
                [
                    include_str!(concat!("../templates/", $name, ".subject.txt")),
                    include_str!(concat!("../templates/", $name, ".txt")),
                    include_str!(concat!("../templates/", $name, ".html")),
                ]
            };
        }
        match self {
            Template::VerifyEmail => files!("verify_email"),
            Template::RegistrationAttempt => files!("registration_attempt"),
            Template::PasswordReset => files!("password_reset"),
            Template::PasswordChanged => files!("password_changed"),
            Template::EmailChangeVerify => files!("email_change_verify"),
            Template::EmailChangedNotice => files!("email_changed_notice"),
            Template::AccountLocked => files!("account_locked"),
            Template::EmailLogin => files!("email_login"),
            Template::SecondFactorCode => files!("second_factor_code"),
        }
    }
}

/// The values a template is rendered with. `link` and `code` are secrets: `Debug`
/// does not show them.
#[derive(Clone, Default)]
pub struct Vars {
    pub product_name: String,
    pub support_address: String,
    /// The recipient's address.
    pub email: String,
    pub link: Option<String>,
    pub code: Option<String>,
    /// How long the link or code stays valid, in words: "15 minutes".
    pub expires_in: Option<String>,
}

impl Vars {
    pub fn new(
        product_name: impl Into<String>,
        support_address: impl Into<String>,
        email: impl Into<String>,
    ) -> Vars {
        Vars {
            product_name: product_name.into(),
            support_address: support_address.into(),
            email: email.into(),
            ..Vars::default()
        }
    }

    pub fn link(mut self, link: impl Into<String>) -> Vars {
        self.link = Some(link.into());
        self
    }

    pub fn code(mut self, code: impl Into<String>) -> Vars {
        self.code = Some(code.into());
        self
    }

    pub fn expires_in(mut self, expires_in: impl Into<String>) -> Vars {
        self.expires_in = Some(expires_in.into());
        self
    }

    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "product_name" => Some(&self.product_name),
            "support_address" => Some(&self.support_address),
            "email" => Some(&self.email),
            "link" => self.link.as_deref(),
            "code" => self.code.as_deref(),
            "expires_in" => self.expires_in.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<hidden>");
        f.debug_struct("Vars")
            .field("product_name", &self.product_name)
            .field("support_address", &self.support_address)
            .field("email", &self.email)
            .field("link", &hidden(&self.link))
            .field("code", &hidden(&self.code))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// A rendered mail's subject and parts. The parts hold the secrets: `Debug` shows
/// only their length.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("subject", &self.subject)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("html", &format_args!("<{} bytes>", self.html.len()))
            .finish()
    }
}

/// What is wrong with a template file, named by its path (or `built-in <file>`).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("mail templates directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a mail template file (expected <name>.subject.txt, <name>.txt or \
         <name>.html with a name of: {known})"
    )]
    UnknownFile { path: String, known: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: `{{{{` without a closing `}}}}`")]
    Unclosed { path: String, line: usize },
    #[error(
        "{path}, line {line}: unknown placeholder {{{{{name}}}}} (this template may use: {allowed})"
    )]
    UnknownPlaceholder {
        path: String,
        line: usize,
        name: String,
        allowed: String,
    },
    #[error("{path}: a subject is one line")]
    MultilineSubject { path: String },
    #[error("template {template}: no value for {{{{{name}}}}}")]
    MissingValue {
        template: &'static str,
        name: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Value(&'static str),
}

#[derive(Debug, Clone)]
struct Parsed(Vec<Piece>);

#[derive(Debug, Clone)]
struct Loaded {
    subject: Parsed,
    text: Parsed,
    html: Parsed,
}

/// Every template, loaded and checked.
#[derive(Debug, Clone)]
pub struct Templates {
    loaded: Vec<(Template, Loaded)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Subject,
    Text,
    Html,
}

impl Part {
    const ALL: [Part; 3] = [Part::Subject, Part::Text, Part::Html];

    fn suffix(self) -> &'static str {
        match self {
            Part::Subject => ".subject.txt",
            Part::Text => ".txt",
            Part::Html => ".html",
        }
    }
}

impl Templates {
    /// The built-in templates, each replaced by `<override_dir>/<its file name>`
    /// where that file exists. Any problem in any template is an error here.
    pub fn load(override_dir: Option<&Path>) -> Result<Templates, MailError> {
        if let Some(dir) = override_dir {
            check_directory(dir)?;
        }
        let mut loaded = Vec::new();
        for template in Template::ALL {
            let builtin = template.builtin();
            let mut parts = Vec::new();
            for (part, builtin) in Part::ALL.into_iter().zip(builtin) {
                let file = format!("{}{}", template.name(), part.suffix());
                let overridden = override_dir
                    .map(|dir| dir.join(&file))
                    .filter(|p| p.exists());
                let (path, source) = match overridden {
                    Some(path) => {
                        let shown = path.display().to_string();
                        let source = std::fs::read_to_string(&path).map_err(|source| {
                            TemplateError::Read {
                                path: shown.clone(),
                                source,
                            }
                        })?;
                        (shown, source)
                    }
                    None => (format!("built-in {file}"), builtin.to_owned()),
                };
                parts.push(parse(template, part, &path, &source)?);
            }
            let [subject, text, html] = <[Parsed; 3]>::try_from(parts).expect("three parts");
            loaded.push((
                template,
                Loaded {
                    subject,
                    text,
                    html,
                },
            ));
        }
        Ok(Templates { loaded })
    }

    pub fn render(&self, template: Template, vars: &Vars) -> Result<Rendered, MailError> {
        let loaded = &self
            .loaded
            .iter()
            .find(|(t, _)| *t == template)
            .expect("every template is loaded")
            .1;
        let subject = fill(template, &loaded.subject, vars, |v| {
            v.replace(['\r', '\n'], " ")
        })?;
        let text = fill(template, &loaded.text, vars, str::to_owned)?;
        let html = fill(template, &loaded.html, vars, html_escape)?;
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }
}

fn check_directory(dir: &Path) -> Result<(), MailError> {
    let known: BTreeSet<String> = Template::ALL
        .iter()
        .flat_map(|t| Part::ALL.map(|p| format!("{}{}", t.name(), p.suffix())))
        .collect();
    let entries = std::fs::read_dir(dir).map_err(|source| TemplateError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| TemplateError::Directory {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only what looks like a template and is none is refused (a misspelt name
        // would otherwise be ignored silently); other files may sit beside them.
        let looks_like_one = name.ends_with(".txt") || name.ends_with(".html");
        if looks_like_one && !known.contains(&name) {
            let names: Vec<&str> = Template::ALL.iter().map(|t| t.name()).collect();
            return Err(TemplateError::UnknownFile {
                path: entry.path().display().to_string(),
                known: names.join(", "),
            }
            .into());
        }
    }
    Ok(())
}

fn parse(template: Template, part: Part, path: &str, source: &str) -> Result<Parsed, MailError> {
    let source = match part {
        Part::Subject => {
            let subject = source.trim();
            if subject.contains(['\r', '\n']) {
                return Err(TemplateError::MultilineSubject {
                    path: path.to_owned(),
                }
                .into());
            }
            subject
        }
        Part::Text | Part::Html => source,
    };
    let allowed = template.placeholders();
    let mut pieces = Vec::new();
    let mut rest = source;
    let line_of = |rest: &str| source[..source.len() - rest.len()].matches('\n').count() + 1;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Literal(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unclosed {
                path: path.to_owned(),
                line: line_of(&rest[start..]),
            }
            .into());
        };
        let name = after[..end].trim();
        let Some(known) = allowed.iter().find(|a| **a == name) else {
            return Err(TemplateError::UnknownPlaceholder {
                path: path.to_owned(),
                line: line_of(&rest[start..]),
                name: name.chars().take(40).collect(),
                allowed: allowed.join(", "),
            }
            .into());
        };
        pieces.push(Piece::Value(known));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    Ok(Parsed(pieces))
}

fn fill(
    template: Template,
    parsed: &Parsed,
    vars: &Vars,
    escape: impl Fn(&str) -> String,
) -> Result<String, MailError> {
    let mut out = String::new();
    let mut line = String::new();
    let mut drop_line = false;
    let mut dropped_any = false;
    for piece in &parsed.0 {
        match piece {
            Piece::Literal(text) => {
                // A line that uses an empty value (no support address configured)
                // is left out whole, rather than reading "write to ."
                let mut rest = text.as_str();
                while let Some(end) = rest.find('\n') {
                    line.push_str(&rest[..=end]);
                    if drop_line {
                        dropped_any = true;
                    } else {
                        out.push_str(&line);
                    }
                    line.clear();
                    drop_line = false;
                    rest = &rest[end + 1..];
                }
                line.push_str(rest);
            }
            Piece::Value(name) => {
                let value = vars.get(name).ok_or(TemplateError::MissingValue {
                    template: template.name(),
                    name,
                })?;
                drop_line |= value.trim().is_empty();
                line.push_str(&escape(value));
            }
        }
    }
    if drop_line {
        dropped_any = true;
    } else {
        out.push_str(&line);
    }
    if dropped_any {
        // No run of blank lines where a paragraph was left out.
        while out.contains("\n\n\n") {
            out = out.replace("\n\n\n", "\n\n");
        }
    }
    Ok(out)
}

fn html_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("keyledger-templates-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn all_vars() -> Vars {
        Vars::new("Keyledger", "help@auth.example", "ada@example.com")
            .link("https://auth.example/x?token=T0KEN&a=1")
            .code("123456")
            .expires_in("15 minutes")
    }

    #[test]
    fn every_built_in_template_renders_with_what_it_uses() {
        let templates = Templates::load(None).unwrap();
        for template in Template::ALL {
            let rendered = templates.render(template, &all_vars()).unwrap();
            assert!(!rendered.subject.is_empty(), "{template:?}");
            assert!(!rendered.subject.contains("{{"), "{template:?}");
            for part in [&rendered.text, &rendered.html] {
                assert!(!part.contains("{{"), "{template:?}: {part}");
                assert!(part.contains("Keyledger"), "{template:?}: {part}");
            }
            let uses_link = template.placeholders().contains(&"link");
            assert_eq!(
                rendered.text.contains("token=T0KEN&a=1"),
                uses_link,
                "{template:?}"
            );
            // The HTML part has the link escaped (in the href and the text).
            assert_eq!(
                rendered.html.contains("token=T0KEN&amp;a=1"),
                uses_link,
                "{template:?}"
            );
            assert!(!rendered.html.contains("token=T0KEN&a=1"), "{template:?}");
        }
        let login = templates.render(Template::EmailLogin, &all_vars()).unwrap();
        assert!(login.text.contains("123456") && login.html.contains("123456"));
        assert!(login.text.contains("15 minutes"));
    }

    #[test]
    fn values_are_html_escaped_in_the_html_part_only() {
        let templates = Templates::load(None).unwrap();
        let vars = Vars::new("<b>Acme & Co</b>", "", "o'hara@example.com");
        let rendered = templates.render(Template::PasswordChanged, &vars).unwrap();
        assert!(
            rendered.html.contains("&lt;b&gt;Acme &amp; Co&lt;/b&gt;"),
            "{}",
            rendered.html
        );
        assert!(!rendered.html.contains("<b>Acme"), "{}", rendered.html);
        assert!(
            rendered.text.contains("<b>Acme & Co</b>"),
            "{}",
            rendered.text
        );
    }

    #[test]
    fn a_line_with_an_empty_value_is_left_out() {
        let templates = Templates::load(None).unwrap();
        let vars = all_vars();
        let with = templates.render(Template::PasswordChanged, &vars).unwrap();
        assert!(
            with.text.contains("Write to help@auth.example."),
            "{}",
            with.text
        );
        assert!(with
            .html
            .contains("<p>Questions? Write to help@auth.example.</p>\n"));
        let without = Vars {
            support_address: String::new(),
            ..vars
        };
        let without = templates
            .render(Template::PasswordChanged, &without)
            .unwrap();
        assert!(!without.text.contains("Write to"), "{}", without.text);
        assert!(!without.text.contains("\n\n\n"), "{}", without.text);
        assert!(!without.html.contains("Write to"), "{}", without.html);
        assert!(
            without.html.contains("sign-in page.</p>\n<p>Keyledger</p>"),
            "{}",
            without.html
        );
    }

    #[test]
    fn a_missing_value_is_an_error_at_render_time() {
        let templates = Templates::load(None).unwrap();
        let vars = Vars::new("Keyledger", "", "ada@example.com");
        let error = templates
            .render(Template::PasswordReset, &vars)
            .unwrap_err();
        assert!(
            error.to_string().contains("no value for {{link}}"),
            "{error}"
        );
    }

    #[test]
    fn an_override_replaces_one_file_and_keeps_the_others() {
        let dir = TempDir::new();
        std::fs::write(
            dir.0.join("password_reset.subject.txt"),
            "{{ product_name }}: new password for {{email}}\n",
        )
        .unwrap();
        std::fs::write(dir.0.join("README.md"), "other files are fine").unwrap();
        let templates = Templates::load(Some(&dir.0)).unwrap();
        let rendered = templates
            .render(Template::PasswordReset, &all_vars())
            .unwrap();
        assert_eq!(
            rendered.subject,
            "Keyledger: new password for ada@example.com"
        );
        let builtin = Templates::load(None).unwrap();
        assert_eq!(
            rendered.text,
            builtin
                .render(Template::PasswordReset, &all_vars())
                .unwrap()
                .text
        );
    }

    #[test]
    fn malformed_overrides_are_errors_at_load() {
        let cases = [
            (
                "password_changed.txt",
                "Hello {{link}}",
                "unknown placeholder {{link}}",
            ),
            (
                "email_login.html",
                "<p>\n{{code</p>",
                "line 2: `{{` without a closing `}}`",
            ),
            (
                "verify_email.txt",
                "{{nope}}",
                "unknown placeholder {{nope}}",
            ),
            (
                "verify_email.subject.txt",
                "one\ntwo",
                "a subject is one line",
            ),
            ("pasword_reset.txt", "typo", "not a mail template file"),
        ];
        for (file, content, expected) in cases {
            let dir = TempDir::new();
            std::fs::write(dir.0.join(file), content).unwrap();
            let error = Templates::load(Some(&dir.0)).unwrap_err().to_string();
            assert!(error.contains(expected), "{file}: {error}");
            assert!(error.contains(file), "{file}: {error}");
        }
        let missing = std::env::temp_dir().join("keyledger-no-such-template-dir");
        assert!(Templates::load(Some(&missing)).is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let templates = Templates::load(None).unwrap();
        let rendered = templates.render(Template::EmailLogin, &all_vars()).unwrap();
        let shown = format!("{:?} {rendered:?}", all_vars());
        assert!(
            !shown.contains("T0KEN") && !shown.contains("123456"),
            "{shown}"
        );
    }
}
