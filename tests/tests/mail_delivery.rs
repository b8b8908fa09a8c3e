//! keyledger-mail against a real SMTP server (aiosmtpd, see `keyledger_e2e::smtp`):
//! plain, STARTTLS and implicit TLS with a self-signed certificate, a server that
//! is down, one that never greets, scripted 4xx and 5xx replies, and the file
//! outbox. Each mail is read back with a MIME parser: Message-ID, From, To, Subject
//! and both parts must arrive as sent.
//!
//! Here rather than in mail/tests: the harness lives in keyledger-e2e (so the
//! end-to-end tests use the same one), and keyledger-e2e depends on the server,
//! which depends on keyledger-mail.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keyledger_e2e::smtp::{parse_mail, ReceivedMail, SmtpServer, SmtpTls};
use keyledger_mail::{
    Delivery, MailSettings, OutgoingMail, SendError, SmtpUrl, Template, Templates, Vars,
};

const TOKEN: &str = "tok3n-SECRET-e5d1";
const WAIT: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("keyledger-mail-test-{}", uuid::Uuid::new_v4())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(smtp: Option<&str>, outbox: &TempDir) -> MailSettings {
    MailSettings {
        smtp: smtp.map(|url| SmtpUrl::parse(url).expect("SMTP URL")),
        from: "Keyledger <no-reply@auth.example>".into(),
        send_timeout: Duration::from_secs(5),
        outbox_dir: outbox.0.clone(),
        templates_dir: None,
        extra_root_pem: None,
        product_name: "Keyledger".into(),
        support_address: "help@auth.example".into(),
        public_url: "https://auth.example".into(),
    }
}

fn server_settings(server: &SmtpServer, outbox: &TempDir) -> MailSettings {
    MailSettings {
        extra_root_pem: server.root_pem_path(),
        ..settings(Some(&server.url()), outbox)
    }
}

/// A rendered mail with a secret link, long lines and non-ASCII text (so lettre
/// picks a transfer encoding the parser must undo).
fn mail(to: &str) -> OutgoingMail {
    let templates = Templates::load(None).expect("built-in templates");
    let vars = Vars::new("Keyledger — Zürich", "help@auth.example", to)
        .link(format!(
            "https://auth.example/v1/password-reset?token={TOKEN}&next=%2Fhome"
        ))
        .expires_in("15 minutes");
    let rendered = templates
        .render(Template::PasswordReset, &vars)
        .expect("render");
    OutgoingMail {
        message_id: format!("<{}@auth.example>", uuid::Uuid::new_v4()),
        to: to.into(),
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
    }
}

fn assert_arrived(received: &ReceivedMail, sent: &OutgoingMail) {
    assert_eq!(received.message_id, sent.message_id);
    assert_eq!(received.from, "no-reply@auth.example");
    assert_eq!(received.to, sent.to);
    assert_eq!(received.subject, sent.subject);
    // Line endings are CRLF on the wire.
    let crlf = |s: &str| s.replace("\r\n", "\n");
    assert_eq!(crlf(&received.text), crlf(&sent.text));
    let html = received.html.as_deref().expect("an HTML part");
    assert_eq!(crlf(html), crlf(&sent.html));
    assert!(received.text.contains(TOKEN) && html.contains(TOKEN));
    assert!(received.text.contains("Keyledger — Zürich"));
}

fn assert_no_secret(error: &SendError) {
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(TOKEN), "the mail's body leaked: {shown}");
}

async fn sends_through(tls: SmtpTls) {
    let server = SmtpServer::start(tls);
    let outbox = TempDir::new();
    let delivery = Delivery::open(&server_settings(&server, &outbox)).expect("open");
    assert!(
        delivery.describe().starts_with("SMTP smtp"),
        "{}",
        delivery.describe()
    );
    let first = mail("ada@example.com");
    let second = mail("grace@example.com");
    for mail in [&first, &second] {
        if let Err(e) = delivery.send(mail).await {
            panic!("{tls:?}: {e}; the server's log:\n{}", server.log());
        }
    }
    let received = server.wait_for_mails(2, WAIT).await;
    assert_eq!(received.len(), 2);
    let by_id = |id: &str| received.iter().find(|m| m.message_id == id).expect("mail");
    assert_arrived(by_id(&first.message_id), &first);
    assert_arrived(by_id(&second.message_id), &second);
    assert!(!outbox.0.exists(), "SMTP delivery wrote files");
}

#[tokio::test]
async fn plain_smtp_delivers_headers_and_both_parts() {
    sends_through(SmtpTls::Plain).await;
}

#[tokio::test]
async fn starttls_with_a_self_signed_certificate() {
    sends_through(SmtpTls::StartTls).await;
}

#[tokio::test]
async fn smtps_with_a_self_signed_certificate() {
    sends_through(SmtpTls::Implicit).await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_nothing_is_sent() {
    for tls in [SmtpTls::StartTls, SmtpTls::Implicit] {
        let server = SmtpServer::start(tls);
        let outbox = TempDir::new();
        // The built-in roots only: the self-signed certificate is not among them.
        let delivery = Delivery::open(&settings(Some(&server.url()), &outbox)).expect("open");
        let error = delivery.send(&mail("ada@example.com")).await.unwrap_err();
        assert!(matches!(error, SendError::Tls(_)), "{tls:?}: {error:?}");
        assert!(error.is_transient(), "{tls:?}: {error}");
        assert_no_secret(&error);
        assert!(server.mails().is_empty(), "{tls:?}");
    }
}

#[tokio::test]
async fn plain_smtp_to_a_server_that_requires_starttls_sends_nothing() {
    let server = SmtpServer::start(SmtpTls::StartTls);
    let outbox = TempDir::new();
    let plain = format!("smtp://127.0.0.1:{}", server.port());
    let delivery = Delivery::open(&settings(Some(&plain), &outbox)).expect("open");
    let error = delivery.send(&mail("ada@example.com")).await.unwrap_err();
    // aiosmtpd answers 530 (must issue STARTTLS first).
    assert!(
        matches!(&error, SendError::Rejected(code) if code == "530"),
        "{error:?}"
    );
    assert!(!error.is_transient());
    assert_no_secret(&error);
    assert!(server.mails().is_empty());
}

#[tokio::test]
async fn a_server_that_is_down_is_transient_and_the_retry_arrives() {
    let mut server = SmtpServer::start(SmtpTls::Plain);
    let outbox = TempDir::new();
    let delivery = Delivery::open(&server_settings(&server, &outbox)).expect("open");
    // One mail first, so the pool holds a connection the outage breaks.
    let before = mail("grace@example.com");
    delivery.send(&before).await.expect("before the outage");
    let sent = mail("ada@example.com");
    server.stop();
    let error = delivery.send(&sent).await.unwrap_err();
    assert!(matches!(error, SendError::Connection(_)), "{error:?}");
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("refused"), "{error}");
    assert_no_secret(&error);
    server.restart();
    if let Err(e) = delivery.send(&sent).await {
        panic!("the retry: {e}; the server's log:\n{}", server.log());
    }
    let received = server.wait_for_mails(2, WAIT).await;
    assert_eq!(received.len(), 2);
    for mail in [&before, &sent] {
        let arrived = received.iter().find(|m| m.message_id == mail.message_id);
        assert_arrived(arrived.expect("the mail arrived"), mail);
    }
}

#[tokio::test]
async fn a_server_that_never_greets_times_out_within_the_send_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts, holds the connections open, never writes a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let outbox = TempDir::new();
    let settings = MailSettings {
        send_timeout: Duration::from_secs(1),
        ..settings(Some(&format!("smtp://127.0.0.1:{port}")), &outbox)
    };
    let delivery = Delivery::open(&settings).expect("open");
    let started = Instant::now();
    let error = delivery.send(&mail("ada@example.com")).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, SendError::Timeout(_)), "{error:?}");
    assert!(error.is_transient());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_no_secret(&error);
}

/// A scripted SMTP server on a free port: greets, accepts everything, and answers
/// RCPT TO with `rcpt_reply`. Enough to see how replies are classified.
fn scripted_server(rcpt_reply: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let _ = writer.write_all(b"220 scripted ESMTP\r\n");
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let command = line.to_ascii_uppercase();
                    let reply = if command.starts_with("EHLO") {
                        "250 scripted\r\n"
                    } else if command.starts_with("RCPT") {
                        rcpt_reply
                    } else if command.starts_with("QUIT") {
                        "221 bye\r\n"
                    } else {
                        "250 ok\r\n"
                    };
                    if writer.write_all(reply.as_bytes()).is_err() || command.starts_with("QUIT") {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_4xx_reply_is_transient_and_a_5xx_reply_is_permanent() {
    let outbox = TempDir::new();
    let cases = [
        (
            "450 4.2.1 mailbox busy, includes tok3n-SECRET-e5d1\r\n",
            "450",
            true,
        ),
        (
            "550 5.1.1 no such user, includes tok3n-SECRET-e5d1\r\n",
            "550",
            false,
        ),
    ];
    for (reply, code, transient) in cases {
        let port = scripted_server(reply);
        let url = format!("smtp://127.0.0.1:{port}");
        let delivery = Delivery::open(&settings(Some(&url), &outbox)).expect("open");
        let error = delivery.send(&mail("ada@example.com")).await.unwrap_err();
        assert_eq!(error.is_transient(), transient, "{error:?}");
        assert!(error.to_string().contains(code), "{error}");
        // The server's reply text is not repeated (it may quote what was sent).
        assert_no_secret(&error);
    }
}

#[tokio::test]
async fn the_file_outbox_writes_one_parseable_file_per_message_id() {
    let outbox = TempDir::new();
    let delivery = Delivery::open(&settings(None, &outbox)).expect("open");
    assert_eq!(
        delivery.describe(),
        format!(
            "no SMTP server: mails are written to {}",
            outbox.0.display()
        )
    );
    let sent = mail("ada@example.com");
    delivery.send(&sent).await.expect("first write");
    delivery.send(&sent).await.expect("the same mail again");
    let other = mail("grace@example.com");
    delivery.send(&other).await.expect("another mail");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&outbox.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        assert_eq!(file.extension().unwrap(), "eml");
        let received = parse_mail(&std::fs::read(file).unwrap()).expect("a mail");
        let expected = if received.message_id == sent.message_id {
            &sent
        } else {
            &other
        };
        assert_arrived(&received, expected);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            name,
            format!("{}.eml", expected.message_id.trim_matches(['<', '>']))
        );
    }
}
