//! Handing a mail over: to an SMTP server, or (without one) to a directory of
//! `.eml` files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::message::{MessageError, OutgoingMail};
use crate::settings::{MailSettings, SmtpSecurity, SmtpUrl};
use crate::MailError;

/// Where mails go: an SMTP server, or files in a directory. Cheap to share behind an
/// `Arc`; the SMTP transport keeps a small pool of connections.
pub struct Delivery {
    from: Mailbox,
    send_timeout: Duration,
    target: Target,
}

enum Target {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        url: SmtpUrl,
    },
    Files {
        dir: PathBuf,
    },
}

/// Why one mail was not handed over. [`SendError::is_transient`] says whether the
/// same mail may succeed later. No variant carries the mail's body, and none the
/// SMTP server's reply text (which may quote what was sent): codes and causes only.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the mail was not sent: {0}")]
    Message(#[from] MessageError),
    #[error("the SMTP server did not finish within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the SMTP server: {0}")]
    Connection(String),
    #[error("TLS with the SMTP server failed: {0}")]
    Tls(String),
    #[error("the SMTP server refused the mail for now (reply code {0})")]
    Deferred(String),
    #[error("the SMTP server rejected the mail (reply code {0})")]
    Rejected(String),
    #[error("the SMTP exchange failed: {0}")]
    Protocol(String),
    #[error("writing the mail to {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SendError {
    /// Whether sending the same mail again later may succeed: yes for an
    /// unreachable, slow or failing server, a TLS failure (the operator may fix the
    /// certificate), a 4xx reply and a file that could not be written; no for a 5xx
    /// reply or a mail that cannot be made (an invalid address).
    pub fn is_transient(&self) -> bool {
        !matches!(self, SendError::Message(_) | SendError::Rejected(_))
    }

    fn from_smtp(error: lettre::transport::smtp::Error) -> SendError {
        if error.is_permanent() {
            return SendError::Rejected(code(&error));
        }
        if error.is_transient() {
            return SendError::Deferred(code(&error));
        }
        // rustls hands its errors (an unknown issuer, a name mismatch) over as I/O
        // errors of kind InvalidData, which lettre reports as connection errors.
        if error.is_tls() || has_io_error(&error, std::io::ErrorKind::InvalidData) {
            return SendError::Tls(causes(&error));
        }
        if error.is_timeout() {
            return SendError::Connection("timed out".into());
        }
        // lettre's Display is "<kind>: <source>"; the source of a connection or
        // network error is an I/O error ("Connection refused (os error 111)").
        let text = error.to_string();
        if text.starts_with("Connection error") || text.starts_with("network error") {
            SendError::Connection(causes(&error))
        } else {
            SendError::Protocol(causes(&error))
        }
    }
}

fn has_io_error(error: &lettre::transport::smtp::Error, kind: std::io::ErrorKind) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == kind)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

fn code(error: &lettre::transport::smtp::Error) -> String {
    error
        .status()
        .map(|code| code.to_string())
        .unwrap_or_else(|| "?".into())
}

/// The error's chain of causes below lettre's own kind, which is enough to act on
/// (refused, reset, unknown issuer) and holds nothing that was sent.
fn causes(error: &lettre::transport::smtp::Error) -> String {
    let mut out = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        out.push(cause.to_string());
        source = cause.source();
    }
    if out.is_empty() {
        return error.to_string();
    }
    out.dedup();
    out.join(": ")
}

/// What [`Delivery::describe`] says: never a password.
impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Delivery({})", self.describe())
    }
}

impl Delivery {
    /// Checks the settings and prepares the transport (nothing is sent or connected
    /// yet): parses `from`, reads the extra root certificate, creates the outbox
    /// directory when there is no SMTP server. Call it inside a Tokio runtime: the
    /// SMTP connection pool starts its clean-up task here.
    pub fn open(settings: &MailSettings) -> Result<Delivery, MailError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|_| MailError::InvalidFrom(settings.from.clone()))?;
        let target = match &settings.smtp {
            None => {
                private_dir(&settings.outbox_dir).map_err(|source| MailError::Outbox {
                    path: settings.outbox_dir.clone(),
                    source,
                })?;
                Target::Files {
                    dir: settings.outbox_dir.clone(),
                }
            }
            Some(url) => Target::Smtp {
                transport: smtp_transport(url, settings)?,
                url: url.clone(),
            },
        };
        Ok(Delivery {
            from,
            send_timeout: settings.send_timeout,
            target,
        })
    }

    /// For the start-up report: `SMTP smtp+starttls://host:587 as Name <from@x>`
    /// (never the password) or `no SMTP server: mails are written to <dir>`.
    /// Removes the file of the mail `message_id`, if mails are files (an erased
    /// account's mails go with it); nothing to do for SMTP, whose mails left.
    pub async fn forget(&self, message_id: &str) -> std::io::Result<()> {
        let Target::Files { dir } = &self.target else {
            return Ok(());
        };
        let path = dir.join(format!("{}.eml", file_stem(message_id)));
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn describe(&self) -> String {
        match &self.target {
            Target::Smtp { url, .. } => format!("SMTP {url} as {}", self.from),
            Target::Files { dir } => {
                format!("no SMTP server: mails are written to {}", dir.display())
            }
        }
    }

    /// Hands one mail over, within the send timeout whatever the server does.
    pub async fn send(&self, mail: &OutgoingMail) -> Result<(), SendError> {
        let message = mail.to_message(&self.from)?;
        let attempt = async {
            match &self.target {
                Target::Smtp { transport, .. } => transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(SendError::from_smtp),
                Target::Files { dir } => {
                    write_file(dir.clone(), &mail.message_id, message.formatted()).await
                }
            }
        };
        tokio::time::timeout(self.send_timeout, attempt)
            .await
            .unwrap_or(Err(SendError::Timeout(self.send_timeout)))
    }
}

fn smtp_transport(
    url: &SmtpUrl,
    settings: &MailSettings,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let tls = match url.security() {
        SmtpSecurity::Plain => Tls::None,
        SmtpSecurity::StartTls => Tls::Required(tls_parameters(url, settings)?),
        SmtpSecurity::Implicit => Tls::Wrapper(tls_parameters(url, settings)?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(url.host())
        .port(url.port())
        .tls(tls)
        // Bounds connecting only (see `send` for the whole exchange).
        .timeout(Some(settings.send_timeout));
    if let Some((user, password)) = url.credentials() {
        builder = builder.credentials(Credentials::new(user.to_owned(), password.to_owned()));
    }
    Ok(builder.build())
}

fn tls_parameters(url: &SmtpUrl, settings: &MailSettings) -> Result<TlsParameters, MailError> {
    let mut builder = TlsParameters::builder(url.host().to_owned());
    if let Some(path) = &settings.extra_root_pem {
        let pem = std::fs::read(path).map_err(|source| MailError::RootCertRead {
            path: path.clone(),
            source,
        })?;
        let certificate = Certificate::from_pem(&pem).map_err(|e| MailError::RootCertInvalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build_rustls()
        .map_err(|e| MailError::Tls(e.to_string()))
}

/// `<outbox>/<message id>.eml`, written whole under a temporary name first and
/// renamed into place, so a reader never sees half a mail and the same Message-ID
/// twice leaves one file.
async fn write_file(dir: PathBuf, message_id: &str, bytes: Vec<u8>) -> Result<(), SendError> {
    let path = dir.join(format!("{}.eml", file_stem(message_id)));
    tokio::task::spawn_blocking(move || {
        write_then_rename(&dir, &path, &bytes).map_err(|source| SendError::File { path, source })
    })
    .await
    .unwrap_or_else(|e| {
        Err(SendError::File {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// Creates `dir` (and its parents) and makes it readable by this user only: the
/// mails in it carry working links.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

pub(crate) fn write_then_rename(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A dot file of its own per write: readers skip it, and two writes of the
    // same mail never share one.
    let temporary = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // The mail carries a working link: for this user's eyes only.
            options.mode(0o600);
        }
        let mut file = options.open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// The Message-ID without its brackets, every character but letters, digits and
/// `.-_@` replaced with `_`: a file name on any file system, never a path.
fn file_stem(message_id: &str) -> String {
    let inner = message_id.trim_start_matches('<').trim_end_matches('>');
    let stem: String = inner
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match stem.trim_start_matches('.') {
        "" => "_".into(),
        stem => stem.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(outbox: &Path) -> MailSettings {
        MailSettings {
            smtp: None,
            from: "Keyledger <no-reply@auth.example>".into(),
            send_timeout: Duration::from_secs(5),
            outbox_dir: outbox.to_owned(),
            templates_dir: None,
            extra_root_pem: None,
            product_name: "Keyledger".into(),
            support_address: "support@auth.example".into(),
            public_url: "https://auth.example".into(),
        }
    }

    fn mail(id: &str, text: &str) -> OutgoingMail {
        OutgoingMail {
            message_id: id.into(),
            to: "ada@example.com".into(),
            subject: "Your sign-in link".into(),
            text: text.into(),
            html: format!("<p>{text}</p>"),
        }
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            TempDir(std::env::temp_dir().join(format!("keyledger-mail-{}", uuid::Uuid::new_v4())))
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn the_file_outbox_keeps_one_file_per_message_id() {
        let dir = TempDir::new();
        let outbox = dir.0.join("outbox");
        let delivery = Delivery::open(&settings(&outbox)).unwrap();
        assert_eq!(
            delivery.describe(),
            format!("no SMTP server: mails are written to {}", outbox.display())
        );
        let id = "<4f1c/../x@auth.example>";
        delivery.send(&mail(id, "first")).await.unwrap();
        delivery.send(&mail(id, "second")).await.unwrap();
        delivery
            .send(&mail("<other@auth.example>", "third"))
            .await
            .unwrap();
        assert_eq!(
            files(&outbox),
            ["4f1c_.._x@auth.example.eml", "other@auth.example.eml"]
        );
        let raw = std::fs::read_to_string(outbox.join("4f1c_.._x@auth.example.eml")).unwrap();
        assert!(
            raw.contains("Message-ID: <4f1c/../x@auth.example>"),
            "{raw}"
        );
        assert!(raw.contains("second") && !raw.contains("first"), "{raw}");

        // Only this user reads them: they carry working links.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&outbox), 0o700);
            assert_eq!(mode(&outbox.join("other@auth.example.eml")), 0o600);
        }

        // An erased account's mail goes with it; forgetting twice is fine.
        delivery.forget("<other@auth.example>").await.unwrap();
        delivery.forget("<other@auth.example>").await.unwrap();
        assert_eq!(files(&outbox), ["4f1c_.._x@auth.example.eml"]);
    }

    #[tokio::test]
    async fn an_invalid_recipient_is_permanent() {
        let dir = TempDir::new();
        let delivery = Delivery::open(&settings(&dir.0)).unwrap();
        let mut bad = mail("<a@b>", "token-123");
        bad.to = "nobody".into();
        let error = delivery.send(&bad).await.unwrap_err();
        assert!(!error.is_transient(), "{error:?}");
        assert!(!format!("{error} {error:?}").contains("token-123"));
    }

    #[tokio::test]
    async fn settings_errors_are_caught_at_open() {
        let dir = TempDir::new();
        let mut bad = settings(&dir.0);
        bad.from = "not a mailbox".into();
        assert!(matches!(
            Delivery::open(&bad),
            Err(MailError::InvalidFrom(_))
        ));
        let mut bad = settings(&dir.0);
        bad.smtp = Some(SmtpUrl::parse("smtps://u:pw-secret@localhost:2465").unwrap());
        bad.extra_root_pem = Some(dir.0.join("missing.pem"));
        let error = Delivery::open(&bad).err().unwrap();
        assert!(matches!(error, MailError::RootCertRead { .. }), "{error}");
        bad.extra_root_pem = None;
        let delivery = Delivery::open(&bad).unwrap();
        assert_eq!(
            delivery.describe(),
            "SMTP smtps://u:***@localhost:2465 as Keyledger <no-reply@auth.example>"
        );
        assert!(!format!("{delivery:?}").contains("pw-secret"));
    }

    #[test]
    fn file_stems_are_names_not_paths() {
        assert_eq!(file_stem("<abc@host>"), "abc@host");
        assert_eq!(file_stem("<../../etc/passwd@x>"), "_.._etc_passwd@x");
        assert_eq!(file_stem("<..@x>"), "@x");
        assert_eq!(file_stem("<>"), "_");
    }
}
