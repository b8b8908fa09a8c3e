//! One mail to send, and how it becomes a MIME message.

use std::fmt;

use lettre::message::{Mailbox, MultiPart};
use lettre::Message;

/// A mail ready to go: already rendered, with its own Message-ID (the same mail sent
/// again carries the same id, so a recipient's client and the file outbox can tell
/// a retry from a new mail).
///
/// `text` and `html` carry secrets (links with tokens, codes): `Debug` shows only
/// their length.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// `<unique@host>`, angle brackets included.
    pub message_id: String,
    /// The recipient's address.
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a mail could not be made into a message. Retrying never helps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("the recipient address is not a valid mailbox")]
    InvalidRecipient,
    #[error("a Message-ID is `<left@right>` in printable ASCII without spaces")]
    InvalidMessageId,
    #[error("the message could not be built: {0}")]
    Build(String),
}

impl fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("message_id", &self.message_id)
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .field("html", &format_args!("<{} bytes>", self.html.len()))
            .finish()
    }
}

impl OutgoingMail {
    /// The MIME message: From, To, Subject, Date, this Message-ID (lettre adds none
    /// of its own), and the text and HTML as multipart/alternative.
    pub fn to_message(&self, from: &Mailbox) -> Result<Message, MessageError> {
        if !valid_message_id(&self.message_id) {
            return Err(MessageError::InvalidMessageId);
        }
        let to: Mailbox = self
            .to
            .parse()
            .map_err(|_| MessageError::InvalidRecipient)?;
        Message::builder()
            .from(from.clone())
            .to(to)
            .subject(self.subject.as_str())
            .message_id(Some(self.message_id.clone()))
            .multipart(MultiPart::alternative_plain_html(
                self.text.clone(),
                self.html.clone(),
            ))
            // lettre's builder errors name a missing or duplicate header, never a body.
            .map_err(|e| MessageError::Build(e.to_string()))
    }
}

/// `<left@right>`: what RFC 5322 calls a msg-id, checked loosely (printable ASCII,
/// no spaces, one '@' inside the brackets), which also keeps header injection out.
pub(crate) fn valid_message_id(id: &str) -> bool {
    let Some(inner) = id.strip_prefix('<').and_then(|s| s.strip_suffix('>')) else {
        return false;
    };
    let Some((left, right)) = inner.split_once('@') else {
        return false;
    };
    !left.is_empty()
        && !right.is_empty()
        && inner
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>'))
        && !right.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail() -> OutgoingMail {
        OutgoingMail {
            message_id: "<0b6f7b1e-5c1a-4e39-9d3e-2f0c8a6e1b11@auth.example>".into(),
            to: "ada@example.com".into(),
            subject: "Reset your password".into(),
            text: "https://auth.example/reset?token=SECRET-TOKEN".into(),
            html: "<a href=\"https://auth.example/reset?token=SECRET-TOKEN\">reset</a>".into(),
        }
    }

    #[test]
    fn debug_never_shows_the_body() {
        let shown = format!("{:?}", mail());
        assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
        assert!(shown.contains("Reset your password"), "{shown}");
    }

    #[test]
    fn the_message_has_its_headers_and_both_parts() {
        let from: Mailbox = "Keyledger <no-reply@auth.example>".parse().unwrap();
        let raw = String::from_utf8(mail().to_message(&from).unwrap().formatted()).unwrap();
        for expected in [
            "From: Keyledger <no-reply@auth.example>",
            "To: ada@example.com",
            "Subject: Reset your password",
            "Message-ID: <0b6f7b1e-5c1a-4e39-9d3e-2f0c8a6e1b11@auth.example>",
            "multipart/alternative",
            "text/plain",
            "text/html",
        ] {
            assert!(raw.contains(expected), "{expected} missing in {raw}");
        }
    }

    #[test]
    fn bad_recipients_and_message_ids_are_refused() {
        let from: Mailbox = "Keyledger <no-reply@auth.example>".parse().unwrap();
        let mut bad = mail();
        bad.to = "not an address".into();
        assert_eq!(
            bad.to_message(&from).unwrap_err(),
            MessageError::InvalidRecipient
        );
        for id in [
            "no-brackets@x",
            "<no-at>",
            "<a@b>\r\nBcc: x@y",
            "<a b@c>",
            "<@c>",
            "<a@>",
        ] {
            let mut bad = mail();
            bad.message_id = id.into();
            assert_eq!(
                bad.to_message(&from).unwrap_err(),
                MessageError::InvalidMessageId,
                "{id:?}"
            );
        }
    }
}
