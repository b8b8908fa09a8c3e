//! A real SMTP server for tests: aiosmtpd (pinned by `.ci/install-aiosmtpd`) as a
//! process on a free loopback port, storing what it receives in a Maildir, plain,
//! with STARTTLS or with implicit TLS (a self-signed certificate made with the
//! `openssl` CLI for each server). [`SmtpServer::mails`] reads the received mails
//! with a MIME parser, so transfer encodings are decoded as a mail client would.
//!
//! aiosmtpd is required: without it a test fails, saying how to install it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, PartType};

const AIOSMTPD_VERSION: &str = "1.4.6";
const INSTALL: &str = "install it with `bash .ci/install-aiosmtpd` (the pinned version \
    from PyPI, into .ci/venv where the tests look), or set KEYLEDGER_TEST_AIOSMTPD to a \
    Python that has aiosmtpd 1.4.6 (`.ci/test` does both)";

/// How the test server protects connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// No TLS: `smtp://`.
    Plain,
    /// STARTTLS, which the server then requires: `smtp+starttls://`.
    StartTls,
    /// TLS from the first byte: `smtps://`.
    Implicit,
}

/// One aiosmtpd process and its directory (Maildir, certificate, log). Dropping it
/// kills the process and removes the directory.
pub struct SmtpServer {
    tls: SmtpTls,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// One received mail, decoded.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The `From` header's address.
    pub from: String,
    /// The `To` header's (first) address.
    pub to: String,
    pub subject: String,
    /// As in the header, angle brackets included: `<id@host>`.
    pub message_id: String,
    /// The text/plain part, decoded.
    pub text: String,
    /// The text/html part, decoded (`None` when the mail has none).
    pub html: Option<String>,
    /// The mail as received (with the headers aiosmtpd adds).
    pub raw: Vec<u8>,
}

impl SmtpServer {
    /// Starts a server on a free port of 127.0.0.1 and waits until it accepts
    /// connections.
    pub fn start(tls: SmtpTls) -> SmtpServer {
        let dir = std::env::temp_dir().join(format!("keyledger-smtp-{}", uuid::Uuid::new_v4()));
        // Not the Maildir itself: aiosmtpd makes it with its new/, cur/ and tmp/
        // only when it is missing.
        std::fs::create_dir_all(&dir).expect("SMTP test directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = SmtpServer {
            tls,
            port,
            dir,
            child: None,
        };
        if tls != SmtpTls::Plain {
            server.make_certificate();
        }
        server.spawn();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value for `KEYLEDGER_SMTP_URL`. With TLS the host is `localhost`, the
    /// name in the certificate.
    pub fn url(&self) -> String {
        match self.tls {
            SmtpTls::Plain => format!("smtp://127.0.0.1:{}", self.port),
            SmtpTls::StartTls => format!("smtp+starttls://localhost:{}", self.port),
            SmtpTls::Implicit => format!("smtps://localhost:{}", self.port),
        }
    }

    /// The self-signed certificate to trust (`KEYLEDGER_SMTP_ROOT_CERT_FILE`), for
    /// a TLS server; `None` for a plain one.
    pub fn root_pem_path(&self) -> Option<PathBuf> {
        (self.tls != SmtpTls::Plain).then(|| self.dir.join("cert.pem"))
    }

    /// Stops the server (connections to its port are refused until
    /// [`restart`](Self::restart)); what it received stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same Maildir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Every mail received so far, oldest first.
    /// The Maildir's `new/` folder, for a script reading mails itself.
    pub fn new_mail_dir(&self) -> PathBuf {
        self.dir.join("maildir/new")
    }

    pub fn mails(&self) -> Vec<ReceivedMail> {
        let new = self.dir.join("maildir/new");
        let Ok(entries) = std::fs::read_dir(&new) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (modified, e.path())
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, path)| {
                let raw = std::fs::read(&path).expect("a received mail");
                parse_mail(&raw).unwrap_or_else(|e| panic!("{}: not a mail ({e})", path.display()))
            })
            .collect()
    }

    /// Waits until at least `count` mails have arrived and returns them all; panics
    /// after `within`.
    pub async fn wait_for_mails(&self, count: usize, within: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mails = self.mails();
            if mails.len() >= count {
                return mails;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the SMTP server received {} mails in {within:?}, expected {count}; its log:\n{}",
                    mails.len(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn make_certificate(&self) {
        let openssl = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            // rustls refuses a CA certificate as the server's own
            // (CaUsedAsEndEntity), which is what plain `req -x509` makes.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(self.dir.join("key.pem"))
            .arg("-out")
            .arg(self.dir.join("cert.pem"))
            .output()
            .unwrap_or_else(|e| {
                panic!("the openssl CLI is required to make the test certificate ({e}); {INSTALL}")
            });
        assert!(
            openssl.status.success(),
            "openssl could not make a certificate: {}",
            String::from_utf8_lossy(&openssl.stderr)
        );
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("aiosmtpd.log")).expect("SMTP log file");
        let mut command = Command::new(aiosmtpd_python());
        command
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port));
        let (cert, key) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
        match self.tls {
            SmtpTls::Plain => {}
            SmtpTls::StartTls => {
                command
                    .arg("--tlscert")
                    .arg(&cert)
                    .arg("--tlskey")
                    .arg(&key);
            }
            SmtpTls::Implicit => {
                command
                    .arg("--smtpscert")
                    .arg(&cert)
                    .arg("--smtpskey")
                    .arg(&key);
            }
        }
        // `-c` last: what follows it goes to the handler (the Maildir).
        command
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.dir.join("maildir"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("SMTP log file"))
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting aiosmtpd: {e}; {INSTALL}"));
        self.child = Some(child);
        self.wait_until_listening();
    }

    fn wait_until_listening(&mut self) {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "aiosmtpd exited ({status}) before listening on port {}; its output:\n{}",
                    self.port,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "aiosmtpd did not listen on port {} within 20 s; its output:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What aiosmtpd printed (its errors, for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("aiosmtpd.log")).unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses one mail (as received, or an `.eml` file the mail outbox wrote) with a
/// MIME parser: headers decoded, parts decoded from quoted-printable or base64.
pub fn parse_mail(raw: &[u8]) -> Result<ReceivedMail, String> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or("not a MIME message")?;
    let first_address = |address: Option<&mail_parser::Address>| {
        address
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_owned)
    };
    let from = first_address(message.from()).ok_or("no From")?;
    let to = first_address(message.to()).ok_or("no To")?;
    let subject = message.subject().ok_or("no Subject")?.to_owned();
    let message_id = format!("<{}>", message.message_id().ok_or("no Message-ID")?);
    let mut text = None;
    let mut html = None;
    for part in &message.parts {
        match &part.body {
            PartType::Text(t) if text.is_none() => text = Some(t.to_string()),
            PartType::Html(h) if html.is_none() => html = Some(h.to_string()),
            _ => {}
        }
    }
    Ok(ReceivedMail {
        from,
        to,
        subject,
        message_id,
        text: text.ok_or("no text/plain part")?,
        html,
        raw: raw.to_vec(),
    })
}

/// The Python that runs aiosmtpd: `$KEYLEDGER_TEST_AIOSMTPD`, else the repository's
/// `.ci/venv`. Checked once; panics, naming `.ci/install-aiosmtpd`, when it is
/// missing or not the pinned version.
fn aiosmtpd_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/venv/bin/python");
        let python = match std::env::var_os("KEYLEDGER_TEST_AIOSMTPD") {
            Some(path) => PathBuf::from(path),
            None if venv.is_file() => venv,
            None => panic!(
                "aiosmtpd is required for the mail tests: KEYLEDGER_TEST_AIOSMTPD is not set \
                 and {} does not exist; {INSTALL}",
                venv.display()
            ),
        };
        let output = Command::new(&python)
            .args(["-c", "import aiosmtpd; print(aiosmtpd.__version__)"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "aiosmtpd is required ({}: {e}); {INSTALL}",
                    python.display()
                )
            });
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            output.status.success() && version == AIOSMTPD_VERSION,
            "aiosmtpd {AIOSMTPD_VERSION} is required, {} has {:?} ({}); {INSTALL}",
            python.display(),
            version,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        python
    })
}
