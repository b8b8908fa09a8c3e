//! The `sessions` read model: one row per session, its columns, how each
//! session event changes it, and how it is read and written (once for both
//! back ends).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyledger_domain::SessionEvent;
use keyledger_storage::Id;
use serde_json::Value;
use uuid::Uuid;

use super::rules::{RowRules, Texts};
use super::table::{column, Cells, Column, Table};

/// The columns, the key first; a row decodes by these names.
const COLUMNS: &[Column] = &[
    column("session_id", "uuid"),
    column("user_id", "uuid"),
    column("ip", "text"),
    column("user_agent", "text"),
    column("created_at", "timestamptz"),
    column("last_refreshed_at", "timestamptz"),
    column("expires_at", "timestamptz"),
    column("refresh_count", "int4"),
    column("state", "text"),
    column("ended_at", "timestamptz"),
    column("end_reason", "text"),
    column("organization_id", "uuid"),
    column("version", "int8"),
];

/// A session row in memory: the texts that repeat across sessions are shared
/// ([`Texts`]), so a rebuild can keep many rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionRow {
    pub(crate) user_id: Uuid,
    pub(crate) ip: Option<Arc<str>>,
    pub(crate) user_agent: Option<Arc<str>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) last_refreshed_at: Option<DateTime<Utc>>,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) refresh_count: i32,
    pub(crate) state: Arc<str>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    pub(crate) end_reason: Option<Arc<str>>,
    pub(crate) organization_id: Option<Uuid>,
    pub(crate) version: i64,
}

/// A session row as both back ends decode it.
#[derive(sqlx::FromRow)]
pub(crate) struct SessionRecord {
    user_id: Id,
    ip: Option<String>,
    user_agent: Option<String>,
    created_at: DateTime<Utc>,
    last_refreshed_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    refresh_count: i32,
    state: String,
    ended_at: Option<DateTime<Utc>>,
    end_reason: Option<String>,
    organization_id: Option<Id>,
    version: i64,
}

impl SessionRow {
    fn end(&mut self, state: Arc<str>, reason: Arc<str>, at: DateTime<Utc>) {
        self.state = state;
        self.end_reason = Some(reason);
        self.ended_at = Some(at);
    }
}

impl RowRules for SessionRow {
    type Event = SessionEvent;

    fn create(version: i64, event: &SessionEvent, texts: &mut Texts) -> Option<Self> {
        match event {
            SessionEvent::SessionStarted {
                user_id,
                device,
                started_at,
                expires_at,
                ..
            } => Some(Self {
                user_id: *user_id,
                ip: device.ip.as_ref().map(|p| Arc::from(p.as_str())),
                user_agent: device.user_agent.as_ref().map(|p| texts.shared(p.as_str())),
                created_at: *started_at,
                last_refreshed_at: None,
                expires_at: *expires_at,
                refresh_count: 0,
                state: texts.shared("active"),
                ended_at: None,
                end_reason: None,
                organization_id: None,
                version,
            }),
            _ => None,
        }
    }

    fn update(&mut self, version: i64, event: &SessionEvent, texts: &mut Texts) {
        match event {
            // A start never updates an existing row.
            SessionEvent::SessionStarted { .. } => return,
            SessionEvent::TokenRefreshed { generation, at, .. } => {
                self.last_refreshed_at = Some(*at);
                self.refresh_count = *generation as i32;
            }
            SessionEvent::RefreshTokenReuseDetected { .. }
            | SessionEvent::SessionReauthenticated { .. }
            | SessionEvent::SessionGrantedToClient { .. } => {}
            SessionEvent::SessionRevoked { reason, at } => {
                let reason = serde_json::to_value(reason).ok();
                let reason = texts.shared(reason.as_ref().and_then(Value::as_str).unwrap_or(""));
                self.end(texts.shared("revoked"), reason, *at);
            }
            SessionEvent::UserLoggedOut { at } => {
                self.end(texts.shared("logged_out"), texts.shared("logout"), *at)
            }
            SessionEvent::OrganizationSelected {
                organization_id, ..
            } => self.organization_id = *organization_id,
        }
        self.version = version;
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn settled(&self) -> bool {
        &*self.state != "active"
    }
}

impl Table for SessionRow {
    const TABLE: &'static str = "sessions";
    const COLUMNS: &'static [Column] = COLUMNS;
    type Record = SessionRecord;

    fn from_record(r: SessionRecord, texts: &mut Texts) -> Self {
        Self {
            user_id: r.user_id.0,
            ip: r.ip.map(Arc::from),
            user_agent: r.user_agent.map(|t| texts.shared(&t)),
            created_at: r.created_at,
            last_refreshed_at: r.last_refreshed_at,
            expires_at: r.expires_at,
            refresh_count: r.refresh_count,
            state: texts.shared(&r.state),
            ended_at: r.ended_at,
            end_reason: r.end_reason.map(|t| texts.shared(&t)),
            organization_id: r.organization_id.map(|id| id.0),
            version: r.version,
        }
    }

    fn cells<'a>(&'a self, id: Uuid, out: &mut impl Cells<'a>) {
        out.id(Some(id));
        out.id(Some(self.user_id));
        out.text(self.ip.as_deref());
        out.text(self.user_agent.as_deref());
        out.time(Some(self.created_at));
        out.time(self.last_refreshed_at);
        out.time(Some(self.expires_at));
        out.int4(self.refresh_count);
        out.text(Some(&self.state));
        out.time(self.ended_at);
        out.text(self.end_reason.as_deref());
        out.id(self.organization_id);
        out.int8(self.version);
    }
}
