//! The projection rules with no SQL: which row an event belongs to, what an
//! audit row says and what an erasure keeps. How each event changes a users or
//! sessions row is beside that row's columns, in [`super::users`] and
//! [`super::sessions`] (so a new column is one module), written against
//! [`RowRules`] here.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

/// How events change one read-model row: exactly what a per-event `INSERT ...
/// ON CONFLICT DO NOTHING` for the creating event and `UPDATE ... WHERE version
/// < $seq` for the others would do, applied in memory.
pub(crate) trait RowRules: Sized + Clone {
    type Event;
    /// The row an aggregate's first event creates (`None` for any other event,
    /// which, like an `UPDATE` matching nothing, leaves no row).
    fn create(version: i64, event: &Self::Event, texts: &mut Texts) -> Option<Self>;
    /// Applies a later event (the caller has checked the version guard).
    fn update(&mut self, version: i64, event: &Self::Event, texts: &mut Texts);
    fn version(&self) -> i64;
    /// True when no later event is expected to change the row (an ended
    /// session): such rows leave the in-memory cache first.
    fn settled(&self) -> bool;
}

/// Text that repeats across many rows (user agents, states, end reasons), held
/// once: a session row kept in memory is then mostly fixed-size. Bounded: starts
/// over when full (rows keep what they share).
#[derive(Default)]
pub(crate) struct Texts {
    set: HashSet<Arc<str>>,
}

impl Texts {
    const MAX: usize = 10_000;

    pub(crate) fn shared(&mut self, text: &str) -> Arc<str> {
        if let Some(held) = self.set.get(text) {
            return held.clone();
        }
        if self.set.len() >= Self::MAX {
            self.set.clear();
        }
        let held: Arc<str> = Arc::from(text);
        self.set.insert(held.clone());
        held
    }
}

/// What an audit row says happened, in the auditor's vocabulary.
pub(crate) fn outcome(event_type: &str) -> &'static str {
    match event_type {
        "LoginFailed" | "RefreshTokenReuseDetected" => "failure",
        "AccountLocked" => "locked",
        "UserSuspended" | "OrganizationSuspended" => "suspended",
        _ => "success",
    }
}

/// Whom an organization event is about: the member for membership changes (so that
/// a user's audit history shows being added to or removed from an organization),
/// the invitee for answers to an invitation, and for an invitation the id the
/// inviter typed (an invitation by address is about the organization: whether
/// the address names an account is nobody's business but the invitee's).
pub(crate) fn organization_subject(
    event: &keyledger_domain::organization::OrganizationEvent,
) -> Option<String> {
    use keyledger_domain::organization::{InvitationAddress, OrganizationEvent as E};
    match event {
        E::MemberAdded { user_id, .. }
        | E::MemberRemoved { user_id, .. }
        | E::MemberRolesChanged { user_id, .. }
        | E::InvitationAccepted { user_id, .. }
        | E::InvitationDeclined { user_id, .. }
        | E::MemberInvited {
            address: InvitationAddress::UserId(user_id),
            ..
        } => Some(user_id.to_string()),
        _ => None,
    }
}

/// What the read models keep of an erased person: nothing personal. Their users
/// row goes (the audit trail keeps the fact of the erasure); in their sessions,
/// in audit rows of requests they made and in the details of events about them,
/// every personal value becomes `[erased]` (times are not personal: they stay).
/// That is exactly what projecting the same events after the erasure gives (the
/// opener shows `[erased]` once the key is gone), so a rebuild compares equal to
/// the scrubbed tables. The statements are in [`super::audit::forget_erased`].
///
/// The keys of an audit row's `details` that hold personal data (when they hold
/// a string), which an erasure of its subject turns into `[erased]`.
/// `new_email` and `previous_email` are the addresses of an address change.
pub(crate) const PERSONAL_DETAILS: [&str; 6] = [
    "email",
    "display_name",
    "ip",
    "user_agent",
    "new_email",
    "previous_email",
];

/// What an erasure does to the `details` of an audit row about the erased person
/// (PostgreSQL applies the same rule in SQL): every personal key holding a
/// string holds `[erased]`. True when `details` has such a key.
pub(crate) fn scrub_details(details: &mut Value) -> bool {
    let Some(object) = details.as_object_mut() else {
        return false;
    };
    let mut scrubbed = false;
    for key in PERSONAL_DETAILS {
        if let Some(value @ Value::String(_)) = object.get_mut(key) {
            *value = Value::String(keyledger_domain::ERASED.to_owned());
            scrubbed = true;
        }
    }
    scrubbed
}
