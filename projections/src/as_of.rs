//! Time travel: one account as it was at a past instant, computed from events alone.
//!
//! Read models only know the present. To answer "what could this account do at
//! 14:02 last Tuesday?", the events that shaped the account are folded again with
//! the very code that decides today: the domain aggregates ([`User`], [`Session`])
//! for status, lockout and sessions, and [`AccessModel`] for roles and effective
//! permissions. So the past is judged by the same rules as the present, and the
//! answer cannot drift from what `authorize` would have said.
//!
//! Which events: the user aggregate, its sessions, the organization events that
//! name it (created by it, member added, removed, roles changed) plus the creation,
//! renaming and suspension events of those organizations, and every event of their
//! custom roles (a role edited by someone else changes this account's permissions
//! too). An event counts when its `occurred_at` (metadata) is at or before the
//! instant; events are folded in feed order.
//!
//! Nothing secret leaves: [`AccountAsOf`] names every field it shows, and none is a
//! hash or a token.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use keyledger_domain::organization::RoleRef;
use keyledger_domain::{DataKeyWrapping, Session, SessionEvent, SessionStatus, User, UserEvent};
use keyledger_storage::{with_readers, Backend, Database};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{AccessModel, Subject};
use crate::feed::{describe_payload_error, event_columns, FeedError, FeedOrder, StoredEvent};
use crate::personal::PersonalDataOpener;

/// Where an account stood at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Could log in.
    Active,
    /// Blocked by a platform administrator (wins over a lockout).
    Suspended,
    /// Locked out after consecutive failed logins, until `locked_until`.
    Locked,
    /// The account did not exist yet.
    NotYetRegistered,
    /// The person was forgotten (GDPR erasure); nothing personal remains.
    Erased,
}

impl AccountStatus {
    /// The status as it is serialized (`not_yet_registered`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Locked => "locked",
            Self::NotYetRegistered => "not_yet_registered",
            Self::Erased => "erased",
        }
    }
}

/// A session that was alive at the instant: started, not ended, not expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionAsOf {
    pub session_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The organization its access tokens were scoped to then, if any.
    pub organization_id: Option<Uuid>,
}

/// A membership at the instant, with what it granted then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrganizationAsOf {
    pub organization_id: Uuid,
    pub slug: String,
    pub name: String,
    /// A suspended organization grants nothing.
    pub suspended: bool,
    /// Built-in role names and custom role ids, as tokens carry them.
    pub roles: Vec<String>,
    /// The effective permissions: the union of the roles' permissions as they were
    /// defined then; empty while the account or the organization was suspended.
    pub permissions: Vec<String>,
}

/// One account at one instant (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountAsOf {
    pub user_id: Uuid,
    /// The instant asked about.
    pub at: DateTime<Utc>,
    /// Whether the account existed at `at`.
    pub registered: bool,
    pub email: Option<String>,
    pub status: AccountStatus,
    /// The end of the lockout in force at `at`, if any.
    pub locked_until: Option<DateTime<Utc>>,
    /// Failed logins in a row counting towards a lockout at `at`.
    pub consecutive_failures: u32,
    pub platform_admin: bool,
    /// Sessions alive at `at`, oldest first.
    pub sessions: Vec<SessionAsOf>,
    /// Organizations it belonged to at `at`, by slug.
    pub organizations: Vec<OrganizationAsOf>,
}

/// Folds an account's events (in feed order; those after `at` are skipped) into
/// its state at `at`. Pure: the loading is [`load_account_events`].
pub fn fold_account(
    user_id: Uuid,
    at: DateTime<Utc>,
    events: &[StoredEvent],
) -> Result<AccountAsOf, FeedError> {
    let mut user = User::default();
    let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
    let mut access = AccessModel::default();
    let user_key = user_id.to_string();
    for event in events.iter().filter(|e| e.occurred_at() <= at) {
        let corrupt = |e: serde_json::Error| FeedError::Corrupt {
            position: event.position,
            reason: describe_payload_error(&e),
        };
        match event.aggregate_type.as_str() {
            "user" if event.aggregate_id == user_key => {
                let payload: UserEvent =
                    serde_json::from_value(event.payload.clone()).map_err(corrupt)?;
                user.apply(payload);
                access.apply(event)?;
            }
            "session" => {
                let payload: SessionEvent =
                    serde_json::from_value(event.payload.clone()).map_err(corrupt)?;
                sessions
                    .entry(event.aggregate_id.clone())
                    .or_default()
                    .apply(payload);
            }
            "organization" | "role" => {
                access.apply(event)?;
            }
            _ => {}
        }
    }

    if !user.is_registered() {
        return Ok(AccountAsOf {
            user_id,
            at,
            registered: false,
            email: None,
            status: AccountStatus::NotYetRegistered,
            locked_until: None,
            consecutive_failures: 0,
            platform_admin: false,
            sessions: Vec::new(),
            organizations: Vec::new(),
        });
    }

    let locked_until = user.locked_at(at);
    let status = if user.erased {
        AccountStatus::Erased
    } else if user.suspended {
        AccountStatus::Suspended
    } else if locked_until.is_some() {
        AccountStatus::Locked
    } else {
        AccountStatus::Active
    };
    // A lockout that has run out starts a fresh count (as the aggregate decides).
    let consecutive_failures = if user.locked_until.is_some() && locked_until.is_none() {
        0
    } else {
        user.consecutive_failures
    };

    let mut alive: Vec<SessionAsOf> = sessions
        .values()
        .filter(|s| s.user_id == Some(user_id) && s.status == SessionStatus::Active)
        .filter_map(|s| {
            let (session_id, started_at, expires_at) =
                (s.session_id?, s.started_at?, s.expires_at?);
            (started_at <= at && expires_at > at).then(|| SessionAsOf {
                session_id,
                started_at,
                expires_at,
                ip: s.device.ip.as_ref().map(|p| p.as_str().to_owned()),
                user_agent: s.device.user_agent.as_ref().map(|p| p.as_str().to_owned()),
                organization_id: s.organization_id,
            })
        })
        .collect();
    alive.sort_by_key(|s| (s.started_at, s.session_id));

    let subject = Subject::User(user_id);
    let mut organizations: Vec<OrganizationAsOf> = access
        .organizations_of(&user_id)
        .into_iter()
        .map(|org| OrganizationAsOf {
            organization_id: org.organization_id,
            slug: org.slug.clone(),
            name: org.name.clone(),
            suspended: org.suspended,
            roles: access
                .roles_of(subject, &org.organization_id)
                .map(|roles| roles.iter().map(RoleRef::label).collect())
                .unwrap_or_default(),
            permissions: access
                .effective_permissions(subject, &org.organization_id)
                .map(|set| set.iter().map(|p| p.as_str().to_owned()).collect())
                .unwrap_or_default(),
        })
        .collect();
    organizations.sort_by(|a, b| a.slug.cmp(&b.slug));

    Ok(AccountAsOf {
        user_id,
        at,
        registered: true,
        email: user.email.as_ref().map(|e| e.as_str().to_owned()),
        status,
        locked_until,
        consecutive_failures,
        platform_admin: user.platform_admin,
        sessions: alive,
        organizations,
    })
}

/// Every event that shapes one account (see the module documentation), of all
/// time, in feed order. One statement, so one snapshot of the log.
pub async fn load_account_events(
    db: &Database,
    user_id: Uuid,
) -> Result<Vec<StoredEvent>, FeedError> {
    let sql = match db.backend() {
        Backend::Postgres => &*POSTGRES_ACCOUNT_EVENTS,
        Backend::Sqlite => &*SQLITE_ACCOUNT_EVENTS,
    };
    let events = with_readers!(db, |pool| {
        let rows = sqlx::query(sql)
            .bind(user_id.to_string())
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()?
    });
    Ok(events)
}

static POSTGRES_ACCOUNT_EVENTS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| account_events(Backend::Postgres));
static SQLITE_ACCOUNT_EVENTS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| account_events(Backend::Sqlite));

/// The selection, written once: the JSON paths as each back end's expression
/// indexes have them (on the embedded store, the sessions of a user are found
/// through the `SessionStarted` user index, `events_session_user_idx`); the
/// member condition of an organization's events takes the key from the row
/// (`payload -> event_type ->> 'user_id'` reads alike on both: SQLite's `->`
/// reads a text without `$` as a key). The live `events` table, whatever the
/// search path or attached databases say.
fn account_events(backend: Backend) -> String {
    let events = format!("{}.events", backend.live_schema());
    let columns = event_columns(backend);
    let member = backend.json_text("payload", &["MemberAdded", "user_id"]);
    let owner = backend.json_text("payload", &["OrganizationCreated", "owner"]);
    let session_user = backend.json_text("payload", &["SessionStarted", "user_id"]);
    let role_organization = backend.json_text("payload", &["RoleDefined", "organization_id"]);
    let order = FeedOrder::of(backend).order;
    format!(
        "WITH orgs AS (
             SELECT DISTINCT aggregate_id FROM {events}
              WHERE aggregate_type = 'organization' AND ({member} = $1 OR {owner} = $1)
         ),
         sessions AS (
             SELECT aggregate_id FROM {events}
              WHERE aggregate_type = 'session' AND event_type = 'SessionStarted'
                AND {session_user} = $1
         ),
         roles AS (
             SELECT aggregate_id FROM {events}
              WHERE aggregate_type = 'role' AND event_type = 'RoleDefined'
                AND {role_organization} IN (SELECT * FROM orgs)
         )
         SELECT {columns} FROM {events}
          WHERE (aggregate_type = 'user' AND aggregate_id = $1)
             OR (aggregate_type = 'session' AND aggregate_id IN (SELECT * FROM sessions))
             OR (aggregate_type = 'organization' AND aggregate_id IN (SELECT * FROM orgs)
                 AND (event_type IN ('OrganizationCreated', 'OrganizationRenamed',
                                     'OrganizationSuspended', 'OrganizationReactivated')
                      OR payload -> event_type ->> 'user_id' = $1))
             OR (aggregate_type = 'role' AND aggregate_id IN (SELECT * FROM roles))
          ORDER BY {order}"
    )
}

/// The account at `at`, or `None` when no account with this id was ever
/// registered (an account registered after `at` is an answer:
/// [`AccountStatus::NotYetRegistered`]).
pub async fn account_as_of(
    db: &Database,
    wrapping: &Arc<DataKeyWrapping>,
    user_id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<AccountAsOf>, FeedError> {
    let mut events = load_account_events(db, user_id).await?;
    if !events.iter().any(|e| e.aggregate_type == "user") {
        return Ok(None);
    }
    // Personal fields as they read today: clear, or `[erased]` once forgotten
    // (even "as of" a time before the erasure).
    PersonalDataOpener::new(db, wrapping.clone())
        .open(&mut events)
        .await?;
    fold_account(user_id, at, &events).map(Some)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::{Duration, TimeZone};
    use keyledger_domain::organization::{
        OrganizationEvent, OrganizationName, OrganizationSlug, RoleRef,
    };
    use keyledger_domain::permission::{BuiltInRole, PermissionSet};
    use keyledger_domain::role::{RoleEvent, RoleName};
    use keyledger_domain::values::{Device, PasswordHash, RevocationReason, TokenHash};
    use serde_json::{json, Value};

    use super::*;
    use crate::feed::Position;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minute)
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    const ALICE: u128 = 1;
    const OWNER: u128 = 2;
    const ORG: u128 = 10;
    const ROLE: u128 = 20;
    const S1: u128 = 30;
    const S2: u128 = 31;

    /// A log in feed order; `occurred_at` is the minute given.
    #[derive(Default)]
    struct Log(Vec<StoredEvent>);

    impl Log {
        fn push(&mut self, minute: i64, aggregate_type: &str, aggregate: u128, payload: Value) {
            let n = self.0.len() as i64 + 1;
            let event_type = payload
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap_or_default();
            self.0.push(StoredEvent {
                position: Position {
                    tx_id: n,
                    global_position: n,
                },
                aggregate_type: aggregate_type.into(),
                aggregate_id: id(aggregate).to_string(),
                sequence: n,
                event_type,
                event_version: "1.0".into(),
                payload,
                metadata: json!({"occurred_at": t(minute).to_rfc3339(), "actor": "anonymous"}),
                recorded_at: t(minute),
            });
        }

        fn user(&mut self, minute: i64, event: UserEvent) {
            self.push(minute, "user", ALICE, serde_json::to_value(event).unwrap());
        }

        fn session(&mut self, minute: i64, session: u128, event: SessionEvent) {
            self.push(
                minute,
                "session",
                session,
                serde_json::to_value(event).unwrap(),
            );
        }

        fn org(&mut self, minute: i64, event: OrganizationEvent) {
            self.push(
                minute,
                "organization",
                ORG,
                serde_json::to_value(event).unwrap(),
            );
        }

        fn role(&mut self, minute: i64, event: RoleEvent) {
            self.push(minute, "role", ROLE, serde_json::to_value(event).unwrap());
        }

        fn at(&self, minute: i64) -> AccountAsOf {
            fold_account(id(ALICE), t(minute), &self.0).unwrap()
        }
    }

    fn perms(raw: &[&str]) -> PermissionSet {
        PermissionSet::parse(raw.iter().copied()).unwrap()
    }

    fn started(session: u128, minute: i64, ua: &str) -> SessionEvent {
        SessionEvent::SessionStarted {
            session_id: id(session),
            user_id: id(ALICE),
            refresh_token_hash: TokenHash::from_bytes([7; 32]),
            device: Device::new(Some("192.0.2.1".into()), Some(ua.into())),
            factors: vec![],
            started_at: t(minute),
            expires_at: t(minute + 60),
        }
    }

    /// Minute 0 registered, 1 login (S1), 2 org + role `invoices:*` + member,
    /// 3 role narrowed to `invoices:read`, 4 logout S1, 5 login S2, 6 org suspended,
    /// 7 org reactivated, 8..9 five failures and a lockout (30 min),
    /// 10 account suspended (S2 revoked). S1 would have expired at minute 61.
    fn history() -> Log {
        let mut log = Log::default();
        log.user(
            0,
            UserEvent::UserRegistered {
                user_id: id(ALICE),
                email: keyledger_domain::PersonalData::clear("alice@example.com"),
                display_name: None,
                password_hash: Some(keyledger_domain::SealedPasswordHash::clear(
                    PasswordHash::new("$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA".into()),
                )),
                registered_at: t(0),
            },
        );
        log.user(
            1,
            UserEvent::UserLoggedIn {
                session_id: id(S1),
                factors: vec!["pwd".into()],
                at: t(1),
            },
        );
        log.session(1, S1, started(S1, 1, "agent-one"));
        log.org(
            2,
            OrganizationEvent::OrganizationCreated {
                organization_id: id(ORG),
                slug: OrganizationSlug::parse("acme").unwrap(),
                name: OrganizationName::parse("Acme").unwrap(),
                owner: id(OWNER),
                at: t(2),
            },
        );
        log.role(
            2,
            RoleEvent::RoleDefined {
                role_id: id(ROLE),
                organization_id: id(ORG),
                name: RoleName::parse("billing").unwrap(),
                permissions: perms(&["invoices:*"]),
                at: t(2),
            },
        );
        log.org(
            2,
            OrganizationEvent::MemberAdded {
                user_id: id(ALICE),
                roles: BTreeSet::from([
                    RoleRef::BuiltIn(BuiltInRole::Member),
                    RoleRef::Custom(id(ROLE)),
                ]),
                at: t(2),
            },
        );
        log.role(
            3,
            RoleEvent::PermissionUpdated {
                permissions: perms(&["invoices:read"]),
                added: perms(&["invoices:read"]),
                removed: perms(&["invoices:*"]),
                at: t(3),
            },
        );
        log.session(4, S1, SessionEvent::UserLoggedOut { at: t(4) });
        log.session(5, S2, started(S2, 5, "agent-two"));
        log.org(
            6,
            OrganizationEvent::OrganizationSuspended {
                reason: "unpaid".into(),
                at: t(6),
            },
        );
        log.org(7, OrganizationEvent::OrganizationReactivated { at: t(7) });
        for n in 1..=5 {
            log.user(
                8,
                UserEvent::LoginFailed {
                    consecutive_failures: n,
                    at: t(8),
                },
            );
        }
        log.user(
            9,
            UserEvent::AccountLocked {
                locked_until: t(39),
                failed_attempts: 5,
                unlock_request_id: None,
                at: t(9),
            },
        );
        log.user(
            10,
            UserEvent::UserSuspended {
                reason: "fraud".into(),
                at: t(10),
            },
        );
        log.session(
            10,
            S2,
            SessionEvent::SessionRevoked {
                reason: RevocationReason::Administrative,
                at: t(10),
            },
        );
        log
    }

    fn session_ids(account: &AccountAsOf) -> Vec<Uuid> {
        account.sessions.iter().map(|s| s.session_id).collect()
    }

    #[test]
    fn before_registration_the_account_is_not_yet_registered() {
        let before = history().at(-1);
        assert!(!before.registered);
        assert_eq!(before.status, AccountStatus::NotYetRegistered);
        assert_eq!(before.email, None);
        assert!(before.sessions.is_empty() && before.organizations.is_empty());
    }

    #[test]
    fn sessions_alive_at_an_instant_are_started_not_ended_and_not_expired() {
        let log = history();
        let registered = log.at(0);
        assert_eq!(registered.status, AccountStatus::Active);
        assert_eq!(registered.email.as_deref(), Some("alice@example.com"));
        assert!(registered.sessions.is_empty());

        let logged_in = log.at(1);
        assert_eq!(session_ids(&logged_in), [id(S1)]);
        let s1 = &logged_in.sessions[0];
        assert_eq!(s1.ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(s1.user_agent.as_deref(), Some("agent-one"));
        assert_eq!((s1.started_at, s1.expires_at), (t(1), t(61)));

        assert_eq!(session_ids(&log.at(4)), Vec::<Uuid>::new());
        assert_eq!(session_ids(&log.at(5)), [id(S2)]);
        assert_eq!(session_ids(&log.at(10)), Vec::<Uuid>::new());

        // Without the logout, S1 would still die of old age.
        let unended = Log(log.0[..3].to_vec());
        assert_eq!(session_ids(&unended.at(60)), [id(S1)]);
        assert!(unended.at(61).sessions.is_empty());
    }

    #[test]
    fn roles_and_permissions_follow_the_role_definitions_of_the_time() {
        let log = history();
        assert!(log.at(1).organizations.is_empty());
        let joined = log.at(2);
        let org = &joined.organizations[0];
        assert_eq!(
            (org.organization_id, org.slug.as_str(), org.name.as_str()),
            (id(ORG), "acme", "Acme")
        );
        assert_eq!(org.roles, ["member".to_owned(), id(ROLE).to_string()]);
        assert!(org.permissions.contains(&"invoices:*".to_owned()));
        assert!(org.permissions.contains(&"organization:read".to_owned()));

        let narrowed = &log.at(3).organizations[0];
        assert!(narrowed.permissions.contains(&"invoices:read".to_owned()));
        assert!(!narrowed.permissions.contains(&"invoices:*".to_owned()));

        let suspended = &log.at(6).organizations[0];
        assert!(suspended.suspended);
        assert!(suspended.permissions.is_empty());
        assert_eq!(
            suspended.roles.len(),
            2,
            "roles are kept, they grant nothing"
        );

        let reactivated = &log.at(7).organizations[0];
        assert!(!reactivated.suspended);
        assert!(reactivated
            .permissions
            .contains(&"invoices:read".to_owned()));
    }

    #[test]
    fn lockout_and_suspension_show_in_the_status() {
        let log = history();
        let failing = log.at(8);
        assert_eq!(failing.status, AccountStatus::Active);
        assert_eq!(failing.consecutive_failures, 5);

        let locked = log.at(9);
        assert_eq!(locked.status, AccountStatus::Locked);
        assert_eq!(locked.locked_until, Some(t(39)));

        let suspended = log.at(10);
        assert_eq!(suspended.status, AccountStatus::Suspended);
        assert_eq!(suspended.locked_until, Some(t(39)));
        assert!(suspended.organizations[0].permissions.is_empty());

        // Without the suspension, the lockout runs out and the count starts again.
        let unsuspended = Log(log.0[..log.0.len() - 2].to_vec());
        let expired = unsuspended.at(39);
        assert_eq!(expired.status, AccountStatus::Active);
        assert_eq!(expired.locked_until, None);
        assert_eq!(expired.consecutive_failures, 0);
    }

    #[test]
    fn leaving_an_organization_removes_it() {
        let mut log = history();
        log.org(
            11,
            OrganizationEvent::MemberRemoved {
                user_id: id(ALICE),
                at: t(11),
            },
        );
        assert_eq!(log.at(10).organizations.len(), 1);
        assert!(log.at(11).organizations.is_empty());
    }

    #[test]
    fn the_answer_carries_no_secret() {
        let log = history();
        for minute in -1..=11 {
            let text = serde_json::to_string(&log.at(minute)).unwrap();
            assert!(!text.contains("argon2"), "{text}");
            assert!(!text.contains("hash"), "{text}");
            assert!(!text.contains(&"07".repeat(32)), "{text}");
        }
        let json = serde_json::to_value(log.at(9)).unwrap();
        assert_eq!(json["status"], "locked");
        assert_eq!(json["user_id"], id(ALICE).to_string());
    }
}
