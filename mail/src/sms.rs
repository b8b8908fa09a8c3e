//! Text messages (the codes of SMS second factors): handed to an HTTP webhook the
//! operator points at their SMS provider, or, without one, written as files into
//! an outbox directory (the embedded default, as for mail).
//!
//! The webhook gets `POST <url>` with `{"id", "to", "text"}` as JSON and two
//! headers that let it check the request came from this server and is fresh:
//! `X-Keyledger-Timestamp` (Unix seconds) and `X-Keyledger-Signature`
//! (`v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>` under the shared
//! secret). `Idempotency-Key` is the message id, the same on every retry. A 2xx
//! answer is delivery; 408, 429, 5xx and network failures are retried by the
//! caller; any other answer is final.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use uuid::Uuid;

/// Where text messages go.
#[derive(Clone)]
pub enum SmsDelivery {
    Webhook {
        client: reqwest::Client,
        url: String,
        secret: String,
    },
    /// One `<id>.json` file per message.
    Files { dir: PathBuf },
}

impl std::fmt::Debug for SmsDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A text message to send. `text` holds a code: never logged.
pub struct OutgoingSms {
    pub id: Uuid,
    /// E.164.
    pub to: String,
    pub text: String,
}

/// Why a message was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("the SMS webhook answered {status}")]
    Refused { status: u16 },
    #[error("the SMS webhook could not be reached: {0}")]
    Unreachable(String),
    #[error("the SMS outbox {path} cannot be written: {source}")]
    Outbox {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SmsError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused { status } => *status == 408 || *status == 429 || *status >= 500,
            Self::Unreachable(_) | Self::Outbox { .. } => true,
        }
    }
}

impl SmsDelivery {
    /// The webhook at `url` signing with `secret`, each request given at most
    /// `timeout`; or, without a URL, files in `outbox_dir` (created, private).
    pub fn open(
        webhook: Option<(&str, &str)>,
        timeout: Duration,
        outbox_dir: &Path,
    ) -> Result<Self, SmsError> {
        match webhook {
            Some((url, secret)) => {
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| SmsError::Unreachable(e.to_string()))?;
                Ok(Self::Webhook {
                    client,
                    url: url.to_owned(),
                    secret: secret.to_owned(),
                })
            }
            None => {
                crate::delivery::private_dir(outbox_dir).map_err(|source| SmsError::Outbox {
                    path: outbox_dir.to_owned(),
                    source,
                })?;
                Ok(Self::Files {
                    dir: outbox_dir.to_owned(),
                })
            }
        }
    }

    /// For the start-up report (never the secret).
    pub fn describe(&self) -> String {
        match self {
            Self::Webhook { url, .. } => format!("SMS webhook {url}"),
            Self::Files { dir } => format!(
                "no SMS webhook: text messages are written to {}",
                dir.display()
            ),
        }
    }

    pub async fn send(&self, message: &OutgoingSms) -> Result<(), SmsError> {
        let body = serde_json::json!({
            "id": message.id,
            "to": message.to,
            "text": message.text,
        })
        .to_string();
        match self {
            Self::Webhook {
                client,
                url,
                secret,
            } => {
                let timestamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    .to_string();
                let signature = signature(secret, &timestamp, &body);
                let answer = client
                    .post(url)
                    .header("Content-Type", "application/json")
                    .header("X-Keyledger-Timestamp", &timestamp)
                    .header("X-Keyledger-Signature", format!("v1={signature}"))
                    .header("Idempotency-Key", message.id.to_string())
                    .body(body)
                    .send()
                    .await
                    // Without the URL: reqwest's errors may quote it, and the
                    // error goes to the log.
                    .map_err(|e| SmsError::Unreachable(e.without_url().to_string()))?;
                let status = answer.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(SmsError::Refused {
                        status: status.as_u16(),
                    })
                }
            }
            Self::Files { dir } => {
                let path = dir.join(format!("{}.json", message.id));
                crate::delivery::write_then_rename(dir, &path, body.as_bytes())
                    .map_err(|source| SmsError::Outbox { path, source })
            }
        }
    }

    /// Removes the file of message `id`, if messages are files (an erased
    /// account's go with it).
    pub fn forget(&self, id: Uuid) -> std::io::Result<()> {
        if let Self::Files { dir } = self {
            match std::fs::remove_file(dir.join(format!("{id}.json"))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`: what the webhook checks.
pub fn signature(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_retryable_answers_are_transient() {
        for status in [408, 429, 500, 503] {
            assert!(SmsError::Refused { status }.is_transient(), "{status}");
        }
        for status in [400, 401, 404, 422] {
            assert!(!SmsError::Refused { status }.is_transient(), "{status}");
        }
    }

    #[tokio::test]
    async fn without_a_webhook_messages_are_files_that_erasure_removes() {
        let dir = std::env::temp_dir().join(format!("keyledger-sms-{}", Uuid::new_v4()));
        let delivery = SmsDelivery::open(None, Duration::from_secs(1), &dir).unwrap();
        let message = OutgoingSms {
            id: Uuid::new_v4(),
            to: "+4915112345678".into(),
            text: "code 123456".into(),
        };
        delivery.send(&message).await.unwrap();
        let path = dir.join(format!("{}.json", message.id));
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written["to"], "+4915112345678");
        delivery.forget(message.id).unwrap();
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
