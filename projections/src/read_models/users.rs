//! The `users` read model: one row per account, its columns, how each user
//! event changes it, and how it is read and written (once for both back ends).
//! A new column is a field here, in [`COLUMNS`], in `cells` and in a rule,
//! plus the tables' DDL.

use chrono::{DateTime, Utc};
use keyledger_domain::{SecondFactorKind, UserEvent};
use serde::{Deserialize, Serialize};
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
    column("second_factors", "text"),
];

/// One second factor as the row keeps it. `GET /v1/auth/me` lists the kinds of
/// the confirmed ones; the row keeps each method by id, with its kind from
/// `SecondFactorAdded` (which `SecondFactorConfirmed` does not repeat), so that
/// after a removal the kinds of the others are still known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FactorEntry {
    pub(crate) method_id: Uuid,
    pub(crate) kind: SecondFactorKind,
    pub(crate) confirmed: bool,
}

/// The kinds (`totp`) of the confirmed factors in a `second_factors` column,
/// each once, in a stable order: what `GET /v1/auth/me` shows.
pub fn confirmed_second_factor_kinds(column: &str) -> Vec<String> {
    let entries: Vec<FactorEntry> = serde_json::from_str(column).unwrap_or_default();
    let kinds: std::collections::BTreeSet<&'static str> = entries
        .iter()
        .filter(|e| e.confirmed)
        .map(|e| e.kind.as_str())
        .collect();
    kinds.into_iter().map(str::to_owned).collect()
}

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
    /// The account's second factors (pending and confirmed) as a JSON array of
    /// [`FactorEntry`]: method ids and kinds, nothing secret.
    pub(crate) second_factors: String,
}

/// An empty `second_factors` column.
const NO_FACTORS: &str = "[]";

impl UserRow {
    fn factors(&self) -> Vec<FactorEntry> {
        serde_json::from_str(&self.second_factors).unwrap_or_default()
    }

    fn set_factors(&mut self, factors: &[FactorEntry]) {
        self.second_factors = serde_json::to_string(factors).expect("entries serialize");
    }

    fn change_factors(&mut self, change: impl FnOnce(&mut Vec<FactorEntry>)) {
        let mut factors = self.factors();
        change(&mut factors);
        self.set_factors(&factors);
    }
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
            second_factors: NO_FACTORS.to_owned(),
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
            | UserEvent::BackupCodesRegenerated { .. }
            | UserEvent::BackupCodeUsed { .. }
            | UserEvent::SecondFactorUsed { .. }
            | UserEvent::SecondFactorRequired { .. }
            | UserEvent::SecondFactorCodeSent { .. } => {}
            UserEvent::SecondFactorAdded {
                method_id, kind, ..
            } => self.change_factors(|factors| {
                if !factors.iter().any(|f| f.method_id == *method_id) {
                    factors.push(FactorEntry {
                        method_id: *method_id,
                        kind: *kind,
                        confirmed: false,
                    });
                }
            }),
            UserEvent::SecondFactorConfirmed { method_id, .. } => self.change_factors(|factors| {
                for factor in factors.iter_mut().filter(|f| f.method_id == *method_id) {
                    factor.confirmed = true;
                }
            }),
            UserEvent::SecondFactorRemoved { method_id, .. } => {
                self.change_factors(|factors| factors.retain(|f| f.method_id != *method_id))
            }
            UserEvent::SecondFactorsReset { .. } => self.second_factors = NO_FACTORS.to_owned(),
            // Passkeys are listed with the second factors (they are one).
            UserEvent::PasskeyRegistered { passkey_id, .. } => self.change_factors(|factors| {
                if !factors.iter().any(|f| f.method_id == *passkey_id) {
                    factors.push(FactorEntry {
                        method_id: *passkey_id,
                        kind: SecondFactorKind::Passkey,
                        confirmed: true,
                    });
                }
            }),
            UserEvent::PasskeyRemoved { passkey_id, .. } => {
                self.change_factors(|factors| factors.retain(|f| f.method_id != *passkey_id))
            }
            UserEvent::PasskeyRenamed { .. }
            | UserEvent::PasskeyUsed { .. }
            | UserEvent::PasskeyCloneSuspected { .. }
            | UserEvent::ExternalIdentityLinked { .. }
            | UserEvent::ExternalIdentityUnlinked { .. }
            | UserEvent::OAuthConsentGranted { .. }
            | UserEvent::OAuthConsentRevoked { .. } => {}
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
                self.second_factors = NO_FACTORS.to_owned();
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
        out.text(Some(&self.second_factors));
    }
}

#[cfg(test)]
mod tests {
    use chrono::SubsecRound;
    use keyledger_domain::values::PasswordHash;
    use keyledger_domain::SealedPasswordHash;
    use keyledger_storage::on_both_back_ends;

    use super::super::tests::{
        apply_batch, dump, history, load, project, registered, t, user_log, BOB,
    };
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

    on_both_back_ends! {
        async fn the_users_table_knows_the_confirmed_second_factors_after_a_removal(db) {
            let (app, spare) = (Uuid::from_u128(0xf1), Uuid::from_u128(0xf2));
            let added = |method_id, n| UserEvent::SecondFactorAdded {
                method_id,
                phone: None,
                kind: SecondFactorKind::Totp,
                secret: None,
                at: t(n),
            };
            let confirmed = |method_id, n: i64| UserEvent::SecondFactorConfirmed {
                method_id,
                step: Some(n as u64),
                at: t(n),
            };
            let log = user_log(
                BOB,
                vec![
                    registered(BOB, "bob@example.com", None, 1),
                    added(app, 2),
                    confirmed(app, 3),
                    added(spare, 4),
                    UserEvent::SecondFactorRemoved {
                        method_id: app,
                        backup_codes_revoked: true,
                        at: t(5),
                    },
                    confirmed(spare, 6),
                    UserEvent::SecondFactorsReset { at: t(7) },
                ],
            );
            let kinds = || async {
                let rows = load::<UserRow>(&db, &[BOB]).await;
                confirmed_second_factor_kinds(&rows[0].1.second_factors)
            };
            // A confirmed app and a pending one: the kind once.
            project(&db, &[log[..4].to_vec()]).await;
            assert_eq!(kinds().await, ["totp"]);
            // The confirmed one removed, the pending one is not listed.
            apply_batch(&db, &log[4..5]).await;
            assert_eq!(kinds().await, Vec::<String>::new());
            // Confirmed later, in the same batch as nothing else.
            apply_batch(&db, &log[5..6]).await;
            assert_eq!(kinds().await, ["totp"]);
            apply_batch(&db, &log[6..]).await;
            assert_eq!(kinds().await, Vec::<String>::new());
            let rows = load::<UserRow>(&db, &[BOB]).await;
            assert_eq!(rows[0].1.second_factors, "[]");
        }
    }

    #[test]
    fn an_erased_account_keeps_no_second_factors() {
        let mut texts = Texts::default();
        let mut row =
            UserRow::create(1, &registered(BOB, "bob@example.com", None, 1), &mut texts).unwrap();
        let method_id = Uuid::from_u128(0xf1);
        row.update(
            2,
            &UserEvent::SecondFactorAdded {
                method_id,
                phone: None,
                kind: SecondFactorKind::Totp,
                secret: None,
                at: t(2),
            },
            &mut texts,
        );
        // Applied twice (an overlap): still one entry.
        row.update(
            2,
            &UserEvent::SecondFactorAdded {
                method_id,
                phone: None,
                kind: SecondFactorKind::Totp,
                secret: None,
                at: t(2),
            },
            &mut texts,
        );
        row.update(
            3,
            &UserEvent::SecondFactorConfirmed {
                method_id,
                step: Some(1),
                at: t(3),
            },
            &mut texts,
        );
        assert_eq!(row.factors().len(), 1);
        assert_eq!(confirmed_second_factor_kinds(&row.second_factors), ["totp"]);
        row.update(4, &UserEvent::UserErased { at: t(4) }, &mut texts);
        assert_eq!(
            confirmed_second_factor_kinds(&row.second_factors),
            Vec::<String>::new()
        );
    }
}
