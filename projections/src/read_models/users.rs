//! The `users` read model: one row per account, its columns, how each user
//! event changes it, and how it is read and written (once for both back ends).
//! A new column is a field here, in [`COLUMNS`], in `cells` and in a rule,
//! plus the tables' DDL.

use chrono::{DateTime, Utc};
use keyledger_domain::UserEvent;
use uuid::Uuid;

use super::rules::{RowRules, Texts};
use super::table::{column, Cells, Column, Table};

/// The columns, the key first; a row decodes by these names.
const COLUMNS: &[Column] = &[
    column("user_id", "uuid"),
    column("email", "text"),
    column("display_name", "text"),
    column("created_at", "timestamptz"),
    column("last_login_at", "timestamptz"),
    column("consecutive_failures", "int4"),
    column("locked_until", "timestamptz"),
    column("suspended", "bool"),
    column("platform_admin", "bool"),
    column("version", "int8"),
    column("password_changed_at", "timestamptz"),
    column("email_verified", "bool"),
];

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct UserRow {
    pub(crate) email: String,
    pub(crate) display_name: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) last_login_at: Option<DateTime<Utc>>,
    pub(crate) consecutive_failures: i32,
    pub(crate) locked_until: Option<DateTime<Utc>>,
    pub(crate) suspended: bool,
    pub(crate) platform_admin: bool,
    pub(crate) version: i64,
    /// When the user last chose a new password (`None` before the first
    /// change); a rehash of the same password at login is not a change.
    pub(crate) password_changed_at: Option<DateTime<Utc>>,
    pub(crate) email_verified: bool,
}

impl RowRules for UserRow {
    type Event = UserEvent;

    fn create(version: i64, event: &UserEvent, _: &mut Texts) -> Option<Self> {
        // Only a registration creates a row.
        let UserEvent::UserRegistered {
            email,
            display_name,
            registered_at,
            ..
        } = event
        else {
            return None;
        };
        Some(Self {
            email: email.as_str().to_owned(),
            display_name: display_name.as_ref().map(|n| n.as_str().to_owned()),
            created_at: *registered_at,
            last_login_at: None,
            consecutive_failures: 0,
            locked_until: None,
            suspended: false,
            platform_admin: false,
            version,
            password_changed_at: None,
            email_verified: false,
        })
    }

    fn update(&mut self, version: i64, event: &UserEvent, _: &mut Texts) {
        match event {
            // Registration never updates an existing row.
            UserEvent::UserRegistered { .. } => return,
            UserEvent::UserImported { email_verified, .. } => {
                self.email_verified = *email_verified;
            }
            UserEvent::UserLoggedIn { at, .. } => {
                self.last_login_at = Some(*at);
                self.consecutive_failures = 0;
                self.locked_until = None;
            }
            UserEvent::LoginFailed {
                consecutive_failures,
                ..
            }
            | UserEvent::EmailLoginCodeRejected {
                consecutive_failures,
                ..
            }
            | UserEvent::SecondFactorFailed {
                consecutive_failures,
                ..
            } => {
                self.consecutive_failures = *consecutive_failures as i32;
                if *consecutive_failures == 1 {
                    self.locked_until = None;
                }
            }
            UserEvent::AccountLocked { locked_until, .. } => {
                self.locked_until = Some(*locked_until);
            }
            UserEvent::AccountUnlocked { .. } => {
                self.locked_until = None;
                self.consecutive_failures = 0;
            }
            UserEvent::UserSuspended { .. } => self.suspended = true,
            UserEvent::UserReactivated { .. } => self.suspended = false,
            UserEvent::PlatformAdminGranted { .. } => self.platform_admin = true,
            UserEvent::PlatformAdminRevoked { .. } => self.platform_admin = false,
            UserEvent::PasswordChanged { at, .. } => self.password_changed_at = Some(*at),
            UserEvent::PasswordRehashed { .. }
            | UserEvent::EmailVerificationRequested { .. }
            | UserEvent::PasswordResetRequested { .. }
            | UserEvent::EmailLoginRequested { .. }
            | UserEvent::RegistrationAttempted { .. }
            | UserEvent::SecondFactorAdded { .. }
            | UserEvent::SecondFactorConfirmed { .. }
            | UserEvent::SecondFactorRemoved { .. }
            | UserEvent::BackupCodesRegenerated { .. }
            | UserEvent::BackupCodeUsed { .. }
            | UserEvent::SecondFactorUsed { .. }
            | UserEvent::SecondFactorsReset { .. }
            | UserEvent::SecondFactorRequired { .. }
            | UserEvent::SecondFactorCodeSent { .. } => {}
            UserEvent::EmailVerified { .. } => self.email_verified = true,
            UserEvent::EmailChangeRequested { .. } => {}
            // Opened before it gets here, as `UserRegistered.email` is; the link
            // proved the new address.
            UserEvent::EmailChanged { email, .. } => {
                self.email = email.as_str().to_owned();
                self.email_verified = true;
            }
            UserEvent::PasswordReset { at, .. } => {
                self.password_changed_at = Some(*at);
                self.consecutive_failures = 0;
            }
            // The row is deleted once the batch is saved (see
            // `audit::forget_erased`); until then it holds nothing personal.
            UserEvent::UserErased { .. } => {
                self.email = keyledger_domain::ERASED.to_owned();
                self.display_name = None;
            }
        }
        self.version = version;
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn settled(&self) -> bool {
        false
    }
}

impl Table for UserRow {
    const TABLE: &'static str = "users";
    const COLUMNS: &'static [Column] = COLUMNS;
    type Record = Self;

    fn from_record(record: Self, _: &mut Texts) -> Self {
        record
    }

    fn cells<'a>(&'a self, id: Uuid, out: &mut impl Cells<'a>) {
        out.id(Some(id));
        out.text(Some(&self.email));
        out.text(self.display_name.as_deref());
        out.time(Some(self.created_at));
        out.time(self.last_login_at);
        out.int4(self.consecutive_failures);
        out.time(self.locked_until);
        out.bool(self.suspended);
        out.bool(self.platform_admin);
        out.int8(self.version);
        out.time(self.password_changed_at);
        out.bool(self.email_verified);
    }
}

#[cfg(test)]
mod tests {
    use chrono::SubsecRound;
    use keyledger_domain::values::PasswordHash;
    use keyledger_domain::SealedPasswordHash;
    use keyledger_storage::on_both_back_ends;

    use super::super::tests::{apply_batch, dump, history, project, registered, t, BOB};
    use super::*;

    #[test]
    fn only_a_password_change_sets_password_changed_at() {
        let mut texts = Texts::default();
        let mut row =
            UserRow::create(1, &registered(BOB, "bob@example.com", None, 1), &mut texts).unwrap();
        assert_eq!(row.password_changed_at, None);
        let hash = || SealedPasswordHash::clear(PasswordHash::new("$argon2id$v=19$x".into()));
        row.update(
            2,
            &UserEvent::PasswordRehashed {
                password_hash: hash(),
                at: t(2),
            },
            &mut texts,
        );
        assert_eq!(row.password_changed_at, None);
        row.update(
            3,
            &UserEvent::PasswordChanged {
                password_hash: hash(),
                at: t(3),
            },
            &mut texts,
        );
        assert_eq!(row.password_changed_at, Some(t(3)));
    }

    on_both_back_ends! {
        async fn the_users_table_holds_the_last_password_change(db) {
            let batches = history();
            project(&db, &batches[..2]).await;
            let bob = |dump: crate::read_models::tests::Dump| {
                dump.users.into_iter().find(|(id, _)| *id == BOB).unwrap().1
            };
            assert_eq!(bob(dump(&db).await).password_changed_at, None);
            // Bob changes his password in the last batch, at second 25.
            apply_batch(&db, &batches[2]).await;
            assert_eq!(
                bob(dump(&db).await).password_changed_at,
                Some(t(25).trunc_subsecs(6))
            );
        }
    }
}
