//! Plain-text passwords and the policy they must meet.

use std::fmt;

/// A password as typed by the user. It never leaves memory: no `Debug`, no
/// `Display`, no `Serialize`, so it cannot reach a log, an event or a response.
pub struct Password(String);

impl Password {
    pub fn new(raw: String) -> Self {
        Self(raw)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Why a password was refused; every reason is safe to show the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the password is too weak")]
pub struct WeakPassword {
    /// In English, with the guess estimator's own advice (the API's `reasons`).
    pub reasons: Vec<String>,
    /// The same refusal by kind, for a reader in another language.
    pub refusals: Vec<Refusal>,
}

/// What a password was refused for, whatever the words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Shorter than the policy's minimum (its number of characters).
    TooShort(usize),
    /// Longer than the policy's maximum.
    TooLong(usize),
    /// Contains the account's email address or name.
    PersonalDetails,
    /// Too easy to guess (the estimator's advice is in `reasons`, in English).
    Guessable,
    /// Seen in a data breach.
    Breached,
}

/// NIST SP 800-63B style: length bounds, no composition rules, and a refusal of
/// guessable passwords (common ones, and ones built from the user's own details),
/// judged by zxcvbn's guess estimate.
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_chars: usize,
    pub max_chars: usize,
    /// zxcvbn score (0-4) a password must reach.
    pub min_score: u8,
    /// The breached-password range API, when configured (see [`PasswordPolicy::check_not_breached`]).
    pub breached: Option<BreachedPasswords>,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_chars: 8,
            max_chars: 128,
            min_score: 3,
            breached: None,
        }
    }
}

impl PasswordPolicy {
    /// `user_inputs` are the user's own details (email, its local part, display
    /// name): a password made from them is refused.
    pub fn check(&self, password: &Password, user_inputs: &[&str]) -> Result<(), WeakPassword> {
        let chars = password.expose().chars().count();
        if chars < self.min_chars {
            return Err(WeakPassword {
                reasons: vec![format!("must be at least {} characters", self.min_chars)],
                refusals: vec![Refusal::TooShort(self.min_chars)],
            });
        }
        if chars > self.max_chars {
            return Err(WeakPassword {
                reasons: vec![format!("must be at most {} characters", self.max_chars)],
                refusals: vec![Refusal::TooLong(self.max_chars)],
            });
        }
        let lowered = password.expose().to_lowercase();
        let mut reasons = Vec::new();
        let mut refusals = Vec::new();
        for input in user_inputs {
            let input = input.to_lowercase();
            if input.chars().count() >= 4 && lowered.contains(&input) {
                reasons.push("must not contain your email address or name".to_owned());
                refusals.push(Refusal::PersonalDetails);
                break;
            }
        }
        let estimate = zxcvbn::zxcvbn(password.expose(), user_inputs);
        if (estimate.score() as u8) < self.min_score {
            reasons.push("is too easy to guess".to_owned());
            refusals.push(Refusal::Guessable);
            if let Some(feedback) = estimate.feedback() {
                if let Some(warning) = feedback.warning() {
                    reasons.push(warning.to_string());
                }
                reasons.extend(feedback.suggestions().iter().map(ToString::to_string));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            reasons.dedup();
            Err(WeakPassword { reasons, refusals })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, inputs: &[&str]) -> Result<(), WeakPassword> {
        PasswordPolicy::default().check(&Password::new(raw.into()), inputs)
    }

    #[test]
    fn a_long_unusual_password_passes() {
        assert!(check("correct horse battery staple 42", &["alice@example.com"]).is_ok());
    }

    #[test]
    fn short_and_overlong_passwords_fail() {
        assert!(check("Xy7#pQ", &[]).is_err());
        assert!(check(&"Ab3$".repeat(33), &[]).is_err());
    }

    #[test]
    fn common_passwords_fail() {
        for common in [
            "password",
            "password123",
            "qwertyuiop",
            "iloveyou1",
            "12345678",
        ] {
            assert!(check(common, &[]).is_err(), "{common}");
        }
    }

    #[test]
    fn passwords_built_from_the_users_details_fail() {
        let err = check(
            "margaret.hamilton1936",
            &["margaret.hamilton@example.com", "margaret.hamilton"],
        )
        .unwrap_err();
        assert!(err
            .reasons
            .iter()
            .any(|r| r.contains("email address or name")));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let shown = format!("{:?}", Password::new("hunter2hunter2".into()));
        assert!(!shown.contains("hunter2"));
    }
}

/// Why [`PasswordPolicy::check_not_breached`] refused a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreachRefusal {
    /// The password is in the breach corpus (reason `breached`).
    Breached(WeakPassword),
    /// The range API did not answer in time or sensibly, and the policy fails
    /// closed.
    Unavailable,
}

/// The reason given for a breached password.
pub const BREACHED_REASON: &str =
    "breached: this password has appeared in a data breach, choose another";

/// What to do with a password when the range API cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreachCheckFailure {
    /// Accept it (the other rules of the policy still apply).
    Open,
    /// Refuse the request (503): no password is set unchecked.
    Closed,
}

/// A k-anonymity range API of breached passwords, the Have I Been Pwned shape:
/// `GET {base}/range/{first 5 hex of SHA-1}` answers `SUFFIX:COUNT` lines. Only
/// the 5-character prefix leaves the server; with `Add-Padding: true` the answer's
/// size does not tell which prefix either (padding lines have count 0). Neither
/// the password nor its full hash is ever logged.
#[derive(Debug, Clone)]
pub struct BreachedPasswords {
    base_url: String,
    client: reqwest::Client,
    on_failure: BreachCheckFailure,
}

impl BreachedPasswords {
    /// `timeout` bounds the whole exchange (connect, answer, body).
    pub fn new(
        base_url: &str,
        timeout: std::time::Duration,
        on_failure: BreachCheckFailure,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            on_failure,
        })
    }

    /// Whether `password` is in the corpus; `Err` when the API cannot tell.
    async fn is_breached(&self, password: &Password) -> Result<bool, reqwest::Error> {
        use sha1::{Digest, Sha1};
        let digest = Sha1::digest(password.expose().as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02X}")).collect();
        let (prefix, suffix) = hex.split_at(5);
        let body = self
            .client
            .get(format!("{}/range/{prefix}", self.base_url))
            .header("Add-Padding", "true")
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(body.lines().any(|line| {
            let mut parts = line.trim().splitn(2, ':');
            let listed = parts.next().unwrap_or_default();
            let count = parts.next().and_then(|c| c.trim().parse::<u64>().ok());
            listed.eq_ignore_ascii_case(suffix) && count.is_some_and(|c| c > 0)
        }))
    }
}

impl PasswordPolicy {
    /// The network part of the policy, after [`PasswordPolicy::check`]: refuses a
    /// password found in the breached-password range API, if one is configured.
    /// Every flow that sets a password (registration, change, reset) calls it.
    pub async fn check_not_breached(&self, password: &Password) -> Result<(), BreachRefusal> {
        let Some(breached) = &self.breached else {
            return Ok(());
        };
        match breached.is_breached(password).await {
            Ok(false) => Ok(()),
            Ok(true) => {
                metrics::counter!("keyledger_breached_passwords_refused_total").increment(1);
                Err(BreachRefusal::Breached(WeakPassword {
                    reasons: vec![BREACHED_REASON.to_owned()],
                    refusals: vec![Refusal::Breached],
                }))
            }
            Err(e) => {
                // The error names the URL, which holds only the public prefix.
                tracing::warn!(error = %e.without_url(), "breached-password check failed");
                metrics::counter!("keyledger_breached_password_check_errors_total").increment(1);
                match breached.on_failure {
                    BreachCheckFailure::Open => Ok(()),
                    BreachCheckFailure::Closed => Err(BreachRefusal::Unavailable),
                }
            }
        }
    }
}
