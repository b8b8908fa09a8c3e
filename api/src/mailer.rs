//! The mail sender: every node drains `mail_outbox` (see
//! `keyledger_projections::mail_outbox`), one due mail at a time.
//!
//! For each mail it reads the recipient's address from the account and derives
//! the link's token when it sends, so the queue holds neither; renders the
//! template; hands the mail over with its event id as `Message-ID` (a repeat is
//! recognisable); and records the outcome. A mail that fails for a reason that
//! may pass (the server is down, slow, or answers 4xx) is tried again after
//! `KEYLEDGER_MAIL_RETRY_SECS`, doubling, until `KEYLEDGER_MAIL_MAX_ATTEMPTS`;
//! then, or at once for a permanent refusal, it is marked failed, counted
//! (`keyledger_mail_failed_total`) and listed for operators. Never logged: the
//! address, the link, the body.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keyledger_commands::MailAddress;
use keyledger_domain::LinkPurpose;
use keyledger_mail::sms::{OutgoingSms, SmsDelivery};
use keyledger_mail::{Delivery, OutgoingMail, Template, Templates, Vars};
use keyledger_projections::{DueMail, IntegrationEvent, MailEnd, MailKind, MailOutbox};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::settings::MailConfig;
use crate::state::AppState;

/// How long a sender may hold a mail before another may take it: well past one
/// send's timeout.
fn lease(send_timeout: Duration) -> chrono::Duration {
    chrono::Duration::from_std(send_timeout * 3 + Duration::from_secs(30))
        .unwrap_or(chrono::Duration::minutes(5))
}

/// How often a sender looks for due mails without being woken: for retries that
/// came due and mails queued by another node.
const POLL: Duration = Duration::from_secs(5);

/// Where mails go and what they say, shared by the sender and by erasure.
pub struct Mailer {
    delivery: Delivery,
    /// Where text messages go (the codes of SMS second factors): they share the
    /// queue, the retries and the erasure of mails.
    sms: SmsDelivery,
    templates: Templates,
    config: MailConfig,
    /// The right-hand side of Message-IDs: the public URL's host.
    host: String,
}

impl Mailer {
    pub fn new(
        (delivery, sms): (Delivery, SmsDelivery),
        templates: Templates,
        config: MailConfig,
    ) -> Self {
        let host = message_id_host(&config.delivery.public_url);
        Self {
            delivery,
            sms,
            templates,
            config,
            host,
        }
    }

    fn message_id(&self, mail_id: Uuid) -> String {
        format!("<{mail_id}@{}>", self.host)
    }

    /// Forgets what was mailed to an erased account: the queue's rows and, where
    /// mails are files, the files (they hold the address and its links).
    pub async fn forget_user(&self, outbox: &MailOutbox, user_id: Uuid) -> Result<(), String> {
        let ids = outbox
            .mail_ids_of(user_id)
            .await
            .map_err(|e| e.to_string())?;
        for id in ids {
            self.delivery
                .forget(&self.message_id(id))
                .await
                .map_err(|e| e.to_string())?;
            self.sms.forget(id).map_err(|e| e.to_string())?;
        }
        outbox.forget_user(user_id).await.map_err(|e| e.to_string())
    }
}

/// Drains the queue (see the module docs).
pub struct MailSender {
    state: Arc<AppState>,
    outbox: MailOutbox,
    queued: Arc<Notify>,
}

impl MailSender {
    pub fn new(state: Arc<AppState>, queued: Arc<Notify>) -> Self {
        Self {
            outbox: MailOutbox::new(state.storage.clone()),
            state,
            queued,
        }
    }

    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.send_due().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, "mail sender: the queue cannot be read; retrying");
                    }
                }
                if let Ok(pending) = self.outbox.pending().await {
                    metrics::gauge!("keyledger_mail_pending").set(pending as f64);
                }
                let _ = tokio::time::timeout(POLL, self.queued.notified()).await;
            }
        })
    }

    /// Sends the mail due longest ago, if any; whether there was one.
    async fn send_due(&self) -> Result<bool, sqlx::Error> {
        let now = Utc::now();
        let Some(mail) = self
            .outbox
            .take_due(now, lease(self.state.mail.config.delivery.send_timeout))
            .await?
        else {
            return Ok(false);
        };
        match self.send(&mail).await {
            Outcome::Sent => {
                metrics::counter!("keyledger_mail_sent_total", "template" => mail.kind.name())
                    .increment(1);
                self.outbox
                    .end(mail.mail_id, MailEnd::Sent, Utc::now(), None)
                    .await?;
            }
            Outcome::Dropped(why) => {
                metrics::counter!("keyledger_mail_dropped_total", "template" => mail.kind.name())
                    .increment(1);
                tracing::info!(mail_id = %mail.mail_id, template = mail.kind.name(), why, "mail dropped");
                self.outbox
                    .end(mail.mail_id, MailEnd::Dropped, Utc::now(), Some(why))
                    .await?;
            }
            Outcome::Failed { error, transient } => {
                if transient && mail.attempts < self.state.mail.config.max_attempts {
                    let wait = self.state.mail.config.retry_delay(mail.attempts);
                    tracing::warn!(mail_id = %mail.mail_id, attempt = mail.attempts, %error,
                        retry_in_secs = wait.as_secs(), "mail not sent; will retry");
                    metrics::counter!("keyledger_mail_retries_total").increment(1);
                    let next = Utc::now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
                    self.outbox.retry_at(mail.mail_id, next, &error).await?;
                } else {
                    tracing::error!(mail_id = %mail.mail_id, template = mail.kind.name(),
                        attempts = mail.attempts, %error, "mail given up");
                    metrics::counter!("keyledger_mail_failed_total", "template" => mail.kind.name())
                        .increment(1);
                    self.outbox
                        .end(mail.mail_id, MailEnd::Failed, Utc::now(), Some(&error))
                        .await?;
                }
            }
        }
        Ok(true)
    }

    async fn send(&self, mail: &DueMail) -> Outcome {
        if mail.kind == MailKind::SecondFactorSms {
            return self.send_text(mail).await;
        }
        let (template, purpose) = template_of(mail.kind);
        if let Some((_, expires_at)) = mail.request {
            if expires_at <= Utc::now() {
                return Outcome::Dropped("the link expired before it could be sent");
            }
        }
        let link = purpose.zip(mail.request.map(|(id, _)| id));
        // The notice of an address change goes to the address the change left:
        // the `previous_email` of the event this mail is about (its id is the
        // mail's id).
        let user = mail.user_id.to_string();
        let is_event = |sequence: usize| {
            IntegrationEvent::event_id("user", &user, sequence as i64) == mail.mail_id
        };
        let to = match mail.kind {
            MailKind::EmailChangeVerify => MailAddress::PendingNewAddress,
            MailKind::EmailChangedNotice => MailAddress::PreviousAddress(&is_event),
            _ => MailAddress::Account,
        };
        let recipient = match self
            .state
            .auth
            .mail_recipient_at(mail.user_id, link, to)
            .await
        {
            Ok(Some(recipient)) => recipient,
            Ok(None) => {
                return Outcome::Dropped(
                    "no one to send it to (the account is gone, or the change superseded)",
                )
            }
            Err(e) => {
                return Outcome::Failed {
                    error: e.to_string(),
                    transient: true,
                }
            }
        };
        let delivery = &self.state.mail.config.delivery;
        let mut vars = Vars::new(
            &delivery.product_name,
            &delivery.support_address,
            &recipient.email,
        );
        if let (Some(token), Some(purpose)) = (&recipient.token, purpose) {
            vars = vars.link(format!(
                "{}{}?token={token}",
                delivery.public_url,
                link_path(purpose)
            ));
        } else if mail.kind == MailKind::RegistrationAttempt {
            // Where the owner can ask for a reset link (no token: they may not
            // have been the one who tried).
            vars = vars.link(format!("{}/forgot-password", delivery.public_url));
        }
        if let Some(code) = &recipient.code {
            vars = vars.code(code.as_str());
        }
        if let Some((_, expires_at)) = mail.request {
            vars = vars.expires_in(in_words(expires_at - Utc::now()));
        }
        let rendered = match self.state.mail.templates.render(template, &vars) {
            Ok(rendered) => rendered,
            Err(e) => {
                return Outcome::Failed {
                    error: e.to_string(),
                    transient: false,
                }
            }
        };
        let outgoing = OutgoingMail {
            message_id: self.state.mail.message_id(mail.mail_id),
            to: recipient.email,
            subject: rendered.subject,
            text: rendered.text,
            html: rendered.html,
        };
        match self.state.mail.delivery.send(&outgoing).await {
            Ok(()) => Outcome::Sent,
            Err(e) => Outcome::Failed {
                error: e.to_string(),
                transient: e.is_transient(),
            },
        }
    }
}

impl MailSender {
    /// A second factor's code by text message, to the number of the method the
    /// code was sent for (nothing once the code was superseded or used, or the
    /// account erased).
    async fn send_text(&self, mail: &DueMail) -> Outcome {
        let Some((request_id, expires_at)) = mail.request else {
            return Outcome::Dropped("no code to send");
        };
        if expires_at <= Utc::now() {
            return Outcome::Dropped("the code expired before it could be sent");
        }
        let recipient = match self
            .state
            .auth
            .text_recipient(mail.user_id, request_id)
            .await
        {
            Ok(Some(recipient)) => recipient,
            Ok(None) => {
                return Outcome::Dropped("no one to send it to (used, superseded or erased)")
            }
            Err(e) => {
                return Outcome::Failed {
                    error: e.to_string(),
                    transient: true,
                }
            }
        };
        let product = &self.state.mail.config.delivery.product_name;
        let text = format!(
            "{product} code: {}. Valid for {}. Never share it.",
            recipient.code,
            in_words(expires_at - Utc::now())
        );
        let message = OutgoingSms {
            id: mail.mail_id,
            to: recipient.phone,
            text,
        };
        match self.state.mail.sms.send(&message).await {
            Ok(()) => Outcome::Sent,
            Err(e) => Outcome::Failed {
                transient: e.is_transient(),
                error: e.to_string(),
            },
        }
    }
}

enum Outcome {
    Sent,
    Dropped(&'static str),
    Failed { error: String, transient: bool },
}

/// The template of a kind of mail, and the purpose of the link it carries.
fn template_of(kind: MailKind) -> (Template, Option<LinkPurpose>) {
    match kind {
        MailKind::VerifyEmail => (Template::VerifyEmail, Some(LinkPurpose::VerifyEmail)),
        MailKind::PasswordReset => (Template::PasswordReset, Some(LinkPurpose::ResetPassword)),
        MailKind::RegistrationAttempt => (Template::RegistrationAttempt, None),
        MailKind::PasswordChanged => (Template::PasswordChanged, None),
        MailKind::EmailChangeVerify => {
            (Template::EmailChangeVerify, Some(LinkPurpose::ChangeEmail))
        }
        MailKind::EmailChangedNotice => (Template::EmailChangedNotice, None),
        MailKind::AccountLocked => (Template::AccountLocked, Some(LinkPurpose::Unlock)),
        MailKind::EmailLogin => (Template::EmailLogin, Some(LinkPurpose::EmailLogin)),
        // Texts are not mails: `send_text` sends them.
        MailKind::SecondFactorCode | MailKind::SecondFactorSms => (
            Template::SecondFactorCode,
            Some(LinkPurpose::SecondFactorCode),
        ),
    }
}

/// Where a link of `purpose` points, under `KEYLEDGER_PUBLIC_URL`: the page that
/// takes the `token` query parameter and posts it to the API route of the same
/// name under `/v1/auth`.
fn link_path(purpose: LinkPurpose) -> &'static str {
    match purpose {
        // A change link proves the new address: the same page and route.
        LinkPurpose::VerifyEmail | LinkPurpose::ChangeEmail => "/verify-email",
        LinkPurpose::ResetPassword => "/reset-password",
        LinkPurpose::Unlock => "/unlock",
        LinkPurpose::EmailLogin => "/email-login",
        // Its mails carry no link.
        LinkPurpose::SecondFactorCode => "/",
    }
}

/// "15 minutes", "24 hours", "2 days": how long a link still works, rounded.
fn in_words(left: chrono::Duration) -> String {
    let minutes = ((left.num_seconds() + 30) / 60).max(1);
    let (n, unit) = if minutes < 120 {
        (minutes, "minute")
    } else if minutes < 48 * 60 {
        ((minutes + 30) / 60, "hour")
    } else {
        ((minutes + 720) / 1440, "day")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The host of `public_url` (`https://id.example.com:8443/x` → `id.example.com`).
fn message_id_host(public_url: &str) -> String {
    let rest = public_url
        .split_once("://")
        .map_or(public_url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    // A port follows the last colon, unless that colon is inside an IPv6
    // literal (kept in brackets, as a Message-ID's domain literal).
    let host = match authority.rsplit_once(':') {
        Some((host, _)) if !authority.ends_with(']') => host,
        _ => authority,
    };
    if host.is_empty() {
        "keyledger.invalid".to_owned()
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_links_lifetime_reads_in_round_words() {
        assert_eq!(in_words(chrono::Duration::seconds(899)), "15 minutes");
        assert_eq!(in_words(chrono::Duration::seconds(50)), "1 minute");
        assert_eq!(in_words(chrono::Duration::hours(24)), "24 hours");
        assert_eq!(in_words(chrono::Duration::days(3)), "3 days");
    }

    #[test]
    fn message_ids_take_the_public_urls_host() {
        assert_eq!(
            message_id_host("https://id.example.com:8443/x"),
            "id.example.com"
        );
        assert_eq!(message_id_host("http://127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(message_id_host("http://[::1]:8080"), "[::1]");
        assert_eq!(message_id_host("http://[::1]"), "[::1]");
    }
}
