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
    pub reasons: Vec<String>,
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
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_chars: 8,
            max_chars: 128,
            min_score: 3,
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
            });
        }
        if chars > self.max_chars {
            return Err(WeakPassword {
                reasons: vec![format!("must be at most {} characters", self.max_chars)],
            });
        }
        let lowered = password.expose().to_lowercase();
        let mut reasons = Vec::new();
        for input in user_inputs {
            let input = input.to_lowercase();
            if input.chars().count() >= 4 && lowered.contains(&input) {
                reasons.push("must not contain your email address or name".to_owned());
                break;
            }
        }
        let estimate = zxcvbn::zxcvbn(password.expose(), user_inputs);
        if (estimate.score() as u8) < self.min_score {
            reasons.push("is too easy to guess".to_owned());
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
            Err(WeakPassword { reasons })
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
