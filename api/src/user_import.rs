//! `keyledger users import`: moving existing accounts in from another system.
//!
//! The input is JSON lines, one account each:
//! `{"email": "...", "display_name": "...", "email_verified": true, "password_hash": "..."}`
//! (`display_name` and `email_verified` may be left out). Each line is imported on
//! its own through the write side ([`AuthService::import_user`]): either wholly
//! (address claimed, `UserRegistered` and `UserImported` written) or not at all.
//! A re-run skips every address already taken, so an interrupted import is resumed
//! by running it again on the same file. Blank lines are ignored.

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;

use keyledger_commands::{AuthService, ImportOutcome, ImportedAccount, RequestContext};
use keyledger_domain::Email;

/// One line that was not imported, and why (never any part of its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedLine {
    pub line: usize,
    pub reason: String,
}

/// What an import run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub imported: usize,
    /// Addresses already taken: imported by an earlier run, or registered.
    pub already_present: usize,
    pub failed: Vec<FailedLine>,
}

impl ImportSummary {
    pub fn lines(&self) -> usize {
        self.imported + self.already_present + self.failed.len()
    }
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "imported {}, skipped {} already present, failed {}",
            self.imported,
            self.already_present,
            self.failed.len()
        )?;
        for failed in &self.failed {
            writeln!(f, "line {}: {}", failed.line, failed.reason)?;
        }
        Ok(())
    }
}

/// Imports every line of `input`, calling `progress` after each with the summary
/// so far. Stops early only when the input cannot be read or storage fails.
pub async fn import_accounts(
    auth: &AuthService,
    input: impl BufRead,
    mut progress: impl FnMut(&ImportSummary),
) -> Result<ImportSummary, std::io::Error> {
    let ctx = RequestContext {
        request_id: "import".into(),
        ..Default::default()
    };
    let mut summary = ImportSummary::default();
    // Addresses seen in this run (normalised), to report a duplicate line as such
    // rather than as "already present" on the first run and a skip on the next.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let fail = |reason: String| FailedLine {
            line: number,
            reason,
        };
        let account: ImportedAccount = match serde_json::from_str(&line) {
            Ok(account) => account,
            Err(e) => {
                // serde_json's message names the field and position, never the value.
                summary
                    .failed
                    .push(fail(format!("not an account object: {}", json_reason(&e))));
                progress(&summary);
                continue;
            }
        };
        if let Ok(email) = Email::parse(&account.email) {
            if let Some(first) = seen.insert(email.as_str().to_owned(), number) {
                seen.insert(email.as_str().to_owned(), first);
                summary
                    .failed
                    .push(fail(format!("the same email as line {first}")));
                progress(&summary);
                continue;
            }
        }
        match auth.import_user(&account, &ctx).await {
            Ok(ImportOutcome::Imported(_)) => summary.imported += 1,
            Ok(ImportOutcome::AlreadyPresent) => summary.already_present += 1,
            Err(keyledger_commands::ImportError::Write(
                e @ keyledger_commands::AuthError::Unavailable(_),
            )) => {
                return Err(std::io::Error::other(format!(
                    "line {number}: {e} (nothing of this line was written; run again to resume)"
                )));
            }
            Err(e) => summary.failed.push(fail(e.to_string())),
        }
        progress(&summary);
    }
    Ok(summary)
}

/// serde_json's error without echoing input: its category and column.
fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        // "missing field `email`" and "unknown field `x`" name fields only;
        // "invalid type: string \"...\", expected ..." quotes the value, so only
        // what was expected is kept.
        Category::Data => {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            if message.starts_with("invalid") {
                match message.rsplit_once(", expected ") {
                    Some((_, expected)) => format!("a field is not {expected}"),
                    None => "a field has an invalid value".to_owned(),
                }
            } else {
                message.to_owned()
            }
        }
        Category::Syntax | Category::Eof | Category::Io => {
            format!("invalid JSON at column {}", e.column())
        }
    }
}
