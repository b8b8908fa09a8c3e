//! What mail delivery needs to know, as a plain typed struct (the server's settings
//! read the environment and build it), and the SMTP server's URL.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything [`Delivery::open`](crate::Delivery::open) and the mail templates need.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The SMTP server; `None` writes every mail as a file into `outbox_dir`.
    pub smtp: Option<SmtpUrl>,
    /// The `From` mailbox, `"Name <address>"`.
    pub from: String,
    /// The longest one send may take, connecting and greeting included.
    pub send_timeout: Duration,
    /// Where mails are written when there is no SMTP server.
    pub outbox_dir: PathBuf,
    /// A directory whose files replace built-in templates of the same name.
    pub templates_dir: Option<PathBuf>,
    /// A PEM file of one or more extra root certificates to trust for the SMTP
    /// server's TLS (besides the built-in web PKI roots): a private CA, or a test's
    /// self-signed certificate.
    pub extra_root_pem: Option<PathBuf>,
    /// The product's name as mails show it.
    pub product_name: String,
    /// Where a recipient can ask for help (may be empty).
    pub support_address: String,
    /// The server's public base URL, for the links in mails.
    pub public_url: String,
}

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://`: no TLS at all (a relay on the same host or network only).
    Plain,
    /// `smtp+starttls://`: plain connection upgraded with STARTTLS, which the server
    /// must offer (no silent fallback to plaintext).
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

impl SmtpSecurity {
    pub fn scheme(self) -> &'static str {
        match self {
            SmtpSecurity::Plain => "smtp",
            SmtpSecurity::StartTls => "smtp+starttls",
            SmtpSecurity::Implicit => "smtps",
        }
    }

    /// The port when the URL names none (25, 587, 465).
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Plain => 25,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Implicit => 465,
        }
    }
}

/// An SMTP server: `smtp://`, `smtp+starttls://` or `smtps://`, then optionally
/// `user:password@` (percent-encoded where needed), the host and optionally `:port`.
///
/// Neither `Debug` nor `Display` shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    security: SmtpSecurity,
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

/// Why an SMTP URL was refused. No variant repeats the URL: it may hold a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SmtpUrlError {
    #[error("an SMTP URL starts with smtp://, smtp+starttls:// or smtps://")]
    MissingScheme,
    #[error(
        "SMTP URL scheme {0:?} is not supported: use smtp:// (plain), smtp+starttls:// \
         (STARTTLS required) or smtps:// (implicit TLS)"
    )]
    UnsupportedScheme(String),
    #[error("the SMTP URL names no host")]
    MissingHost,
    #[error("the SMTP URL's port is not a number from 1 to 65535")]
    InvalidPort,
    #[error("the SMTP URL names a user without a password (write user:password@host)")]
    UserWithoutPassword,
    #[error("the SMTP URL's user or password has an invalid %-escape")]
    InvalidEscape,
    #[error("an SMTP URL has no path, query or fragment: scheme://[user:password@]host[:port]")]
    UnexpectedPath,
}

impl SmtpUrl {
    pub fn parse(url: &str) -> Result<SmtpUrl, SmtpUrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(SmtpUrlError::MissingScheme)?;
        let security = match scheme.to_ascii_lowercase().as_str() {
            "smtp" => SmtpSecurity::Plain,
            "smtp+starttls" => SmtpSecurity::StartTls,
            "smtps" => SmtpSecurity::Implicit,
            // A scheme is short and holds no secret; cap it anyway in case the
            // "://" came from inside a password.
            other => {
                return Err(SmtpUrlError::UnsupportedScheme(
                    other.chars().take(20).collect(),
                ))
            }
        };
        // The last '@' ends the user information, so an unescaped '@' in a password
        // still works.
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        if hostport.contains(['/', '?', '#']) {
            return Err(SmtpUrlError::UnexpectedPath);
        }
        let credentials = match userinfo {
            None => None,
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                    Some((percent_decode(user)?, percent_decode(password)?))
                }
                _ => return Err(SmtpUrlError::UserWithoutPassword),
            },
        };
        let (host, port) = split_host_port(hostport)?;
        let port = match port {
            None => security.default_port(),
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(SmtpUrlError::InvalidPort),
            },
        };
        if host.is_empty() {
            return Err(SmtpUrlError::MissingHost);
        }
        Ok(SmtpUrl {
            security,
            host: host.to_owned(),
            port,
            credentials,
        })
    }

    pub fn security(&self) -> SmtpSecurity {
        self.security
    }

    /// The host as written (an IPv6 address without its brackets). With TLS the
    /// server's certificate must name it.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn username(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(user, _)| user.as_str())
    }

    /// The user and password, for the SMTP client only.
    pub(crate) fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), SmtpUrlError> {
    if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(SmtpUrlError::MissingHost)?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(SmtpUrlError::InvalidPort),
            },
        };
    }
    Ok(match hostport.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    })
}

fn percent_decode(s: &str) -> Result<String, SmtpUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(SmtpUrlError::InvalidEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| SmtpUrlError::InvalidEscape)?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| SmtpUrlError::InvalidEscape)?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SmtpUrlError::InvalidEscape)
}

/// `smtp+starttls://user:***@host:587`: the URL with the password masked.
impl fmt::Display for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.security.scheme())?;
        if let Some((user, _)) = &self.credentials {
            write!(f, "{user}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_schemes_with_their_default_ports() {
        let url = SmtpUrl::parse("smtp://relay.internal").unwrap();
        assert_eq!(
            (url.security(), url.host(), url.port()),
            (SmtpSecurity::Plain, "relay.internal", 25)
        );
        let url = SmtpUrl::parse("smtp+starttls://mail.example.com").unwrap();
        assert_eq!((url.security(), url.port()), (SmtpSecurity::StartTls, 587));
        let url = SmtpUrl::parse("SMTPS://mail.example.com:2465").unwrap();
        assert_eq!((url.security(), url.port()), (SmtpSecurity::Implicit, 2465));
        assert_eq!(url.username(), None);
        let url = SmtpUrl::parse("smtp://[::1]:2525").unwrap();
        assert_eq!((url.host(), url.port()), ("::1", 2525));
        assert_eq!(url.to_string(), "smtp://[::1]:2525");
    }

    #[test]
    fn credentials_are_decoded_and_never_shown() {
        let url = SmtpUrl::parse("smtp+starttls://mailer%40x:s3cr%3At@pa55@mail.example.com:587")
            .unwrap();
        assert_eq!(url.credentials(), Some(("mailer@x", "s3cr:t@pa55")));
        assert_eq!(url.username(), Some("mailer@x"));
        let shown = format!("{url} {url:?} {:?}", Some(url.clone()));
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!shown.contains("pa55"), "{shown}");
        assert_eq!(
            url.to_string(),
            "smtp+starttls://mailer@x:***@mail.example.com:587"
        );
    }

    #[test]
    fn refusals_are_clear_and_never_repeat_the_password() {
        let cases = [
            ("http://u:hunter2@mail.example.com", "not supported"),
            ("smtp+ssl://u:hunter2@mail.example.com", "not supported"),
            ("mail.example.com:25", "starts with smtp://"),
            ("smtp://u:hunter2@", "no host"),
            ("smtp://u:hunter2@mail.example.com:99999", "port"),
            ("smtp://u:hunter2@mail.example.com:0", "port"),
            ("smtp://hunter2@mail.example.com", "without a password"),
            ("smtp://u:hunter2%zz@mail.example.com", "%-escape"),
            (
                "smtp://u:hunter2@mail.example.com/x?tls=required",
                "no path",
            ),
        ];
        for (url, expected) in cases {
            let error = SmtpUrl::parse(url).unwrap_err();
            let shown = format!("{error} {error:?}");
            assert!(shown.contains(expected), "{url}: {shown}");
            assert!(!shown.contains("hunter2"), "{url}: {shown}");
        }
    }
}
