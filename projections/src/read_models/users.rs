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
}

impl RowRules for UserRow {
    type Event = UserEvent;

    fn create(version: i64, event: &UserEvent, _: &mut Texts) -> Option<Self> {
        match event {
            UserEvent::UserRegistered {
                email,
                display_name,
                registered_at,
                ..
            } => Some(Self {
                email: email.as_str().to_owned(),
                display_name: display_name.as_ref().map(|n| n.as_str().to_owned()),
                created_at: *registered_at,
                last_login_at: None,
                consecutive_failures: 0,
                locked_until: None,
                suspended: false,
                platform_admin: false,
                version,
            }),
            _ => None,
        }
    }

    fn update(&mut self, version: i64, event: &UserEvent, _: &mut Texts) {
        match event {
            // Registration never updates an existing row.
            UserEvent::UserRegistered { .. } | UserEvent::UserImported { .. } => return,
            UserEvent::UserLoggedIn { at, .. } => {
                self.last_login_at = Some(*at);
                self.consecutive_failures = 0;
                self.locked_until = None;
            }
            UserEvent::LoginFailed {
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
            UserEvent::PasswordChanged { .. } | UserEvent::PasswordRehashed { .. } => {}
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
    }
}
