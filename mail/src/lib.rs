//! Mail delivery for Keyledger: the templates of the mails the server sends, and
//! handing a mail to an SMTP server (or, without one, writing it to a directory).
//!
//! A mail is an effect of events that are already committed (a registration, a
//! reset asked for), never part of deciding them: the flows render a mail once the
//! event is stored, and a worker hands it over and retries transient failures
//! ([`SendError::is_transient`]). That is why this crate depends on no other
//! Keyledger crate and knows nothing of accounts.
//!
//! Mail bodies carry secrets: links with one-time tokens, sign-in codes. They are
//! never logged: `Debug` of [`OutgoingMail`], [`Rendered`] and [`Vars`] leaves them
//! out, no error carries them, and an [`SmtpUrl`]'s password is never shown.

mod delivery;
mod message;
mod settings;
pub mod sms;
mod templates;

use std::path::PathBuf;

pub use delivery::{Delivery, SendError};
pub use message::{MessageError, OutgoingMail};
pub use settings::{MailSettings, SmtpSecurity, SmtpUrl, SmtpUrlError};
pub use templates::{Rendered, Template, TemplateError, Templates, Vars};

/// Why mail delivery or the templates could not be set up (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the mail sender {0:?} is not a valid mailbox (write \"Name <address>\")")]
    InvalidFrom(String),
    #[error("reading the SMTP root certificate {path}: {source}")]
    RootCertRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the SMTP root certificate {path} is not a PEM certificate: {reason}")]
    RootCertInvalid { path: PathBuf, reason: String },
    #[error("TLS set-up for the SMTP server: {0}")]
    Tls(String),
    #[error("creating the mail outbox directory {path}: {source}")]
    Outbox {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
}
