//! The write side against both back ends: organizations, service accounts,
//! suspension, erasure and organization-scoped tokens, plus the event log's
//! guarantees (conflicts, the hash chain, append-only). Every test runs twice,
//! as `<name>::postgres` (its own PostgreSQL database, created and dropped) and
//! `<name>::sqlite` (its own temporary data directory, removed afterwards).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use keyledger_commands::{
    AuthError, AuthService, AuthSettings, EmailClaims, EmailRegistry, EventRepository,
    HasherSettings, InvitationTarget, MembershipLookup, OrganizationError, OrganizationService,
    Password, PasswordHasher, PersonalDataSealer, RequestContext, SlugClaims, SlugRegistry,
    SubjectKind, TokenIssuer, TokenSettings,
};
use keyledger_domain::chain::{CanonicalEvent, Hash, ZERO_HASH};
use keyledger_domain::organization::{Organization, OrganizationSlug, RoleRef};
use keyledger_domain::permission::{BuiltInRole, PermissionSet};
use keyledger_domain::{Email, EmailIndexKey};
use keyledger_storage::testing::with_database;
use keyledger_storage::{on_both_back_ends, Backend, Database, Engine};
use uuid::Uuid;

/// A password login that must start a session (none of these accounts has a
/// second factor).
trait LoginComplete {
    fn login_complete(
        &self,
        email: &str,
        password: keyledger_commands::Password,
        ctx: &keyledger_commands::RequestContext,
    ) -> impl std::future::Future<
        Output = Result<keyledger_commands::LoginOutcome, keyledger_commands::AuthError>,
    >;
}

impl LoginComplete for keyledger_commands::AuthService {
    async fn login_complete(
        &self,
        email: &str,
        password: keyledger_commands::Password,
        ctx: &keyledger_commands::RequestContext,
    ) -> Result<keyledger_commands::LoginOutcome, keyledger_commands::AuthError> {
        match self.login(email, password, ctx).await? {
            keyledger_commands::SignIn::Complete(outcome) => Ok(outcome),
            keyledger_commands::SignIn::SecondFactorRequired(_) => {
                panic!("no account here has a second factor")
            }
        }
    }
}

fn tokens() -> Arc<TokenIssuer> {
    let (secret, _) = TokenIssuer::generate_key().unwrap();
    let settings = TokenSettings {
        issuer: "https://keyledger.test".into(),
        audience: "platform".into(),
        access_ttl: std::time::Duration::from_secs(900),
        verified_cache_entries: 1000,
    };
    Arc::new(TokenIssuer::new(&secret, &[], settings).unwrap())
}

/// The data keys personal fields are sealed with (decision 0009).
fn keys(storage: &Database) -> Arc<PersonalDataSealer> {
    Arc::new(PersonalDataSealer::for_storage(storage, wrapping()))
}

/// The one wrapping key of this test process (every sealer of a test must
/// unwrap the keys the others stored).
fn wrapping() -> Arc<keyledger_domain::DataKeyWrapping> {
    static WRAPPING: std::sync::LazyLock<Arc<keyledger_domain::DataKeyWrapping>> =
        std::sync::LazyLock::new(|| {
            Arc::new(keyledger_domain::DataKeyWrapping::new(
                keyledger_domain::DataKeyWrappingKey::generate(),
                Vec::new(),
            ))
        });
    WRAPPING.clone()
}

fn auth(storage: &Database, tokens: Arc<TokenIssuer>) -> AuthService {
    auth_with_index_key(storage, tokens, EmailIndexKey::generate())
}

fn auth_with_index_key(
    storage: &Database,
    tokens: Arc<TokenIssuer>,
    index_key: EmailIndexKey,
) -> AuthService {
    auth_with(storage, tokens, index_key, AuthSettings::default())
}

fn auth_with(
    storage: &Database,
    tokens: Arc<TokenIssuer>,
    index_key: EmailIndexKey,
    settings: AuthSettings,
) -> AuthService {
    let hasher = PasswordHasher::new(&HasherSettings {
        memory_kib: 1024,
        iterations: 1,
        ..HasherSettings::default()
    })
    .unwrap();
    AuthService::new(storage, hasher, tokens, settings, keys(storage), index_key)
}

fn ctx(actor: Option<Uuid>) -> RequestContext {
    RequestContext {
        request_id: Uuid::new_v4().to_string(),
        actor,
        ..RequestContext::default()
    }
}

fn roles(r: &[BuiltInRole]) -> BTreeSet<RoleRef> {
    r.iter().map(|r| RoleRef::BuiltIn(*r)).collect()
}

/// Straight SQL on whichever back end holds `storage` (through the readers on
/// SQLite).
async fn count(storage: &Database, sql: &str) -> i64 {
    match storage.engine() {
        Engine::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Engine::Sqlite(db) => sqlx::query_scalar(sql)
            .fetch_one(db.readers())
            .await
            .unwrap(),
    }
}

/// Sessions of `user` that were started and never ended, expired or not.
async fn sessions_not_ended(storage: &Database, user: Uuid) -> i64 {
    // `->` and `->>` with plain keys read the same on both back ends.
    const SQL: &str = "SELECT count(*) FROM events s
          WHERE s.event_type = 'SessionStarted'
            AND s.payload -> 'SessionStarted' ->> 'user_id' = $1
            AND NOT EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = 'session'
                               AND e.aggregate_id = s.aggregate_id
                               AND e.event_type IN ('SessionRevoked', 'UserLoggedOut'))";
    match storage.engine() {
        Engine::Postgres(pool) => sqlx::query_scalar(SQL)
            .bind(user.to_string())
            .fetch_one(pool)
            .await
            .unwrap(),
        Engine::Sqlite(db) => sqlx::query_scalar(SQL)
            .bind(user.to_string())
            .fetch_one(db.readers())
            .await
            .unwrap(),
    }
}

/// Events whose payload or metadata contains any of `needles`, case-sensitively.
async fn events_containing(storage: &Database, needles: &[&str]) -> i64 {
    let mut found = 0;
    for needle in needles {
        found += match storage.engine() {
            Engine::Postgres(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events
                  WHERE strpos(payload::text, $1) > 0 OR strpos(metadata::text, $1) > 0",
            )
            .bind(needle)
            .fetch_one(pool)
            .await
            .unwrap(),
            Engine::Sqlite(db) => sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events
                  WHERE instr(payload, $1) > 0 OR instr(metadata, $1) > 0",
            )
            .bind(needle)
            .fetch_one(db.readers())
            .await
            .unwrap(),
        };
    }
    found
}

/// The owner's row in `user_data_keys`: `Some(None)` is a tombstone.
async fn data_key_row(storage: &Database, owner: Uuid) -> Option<Option<Vec<u8>>> {
    const SQL: &str = "SELECT key FROM user_data_keys WHERE owner_id = $1";
    match storage.engine() {
        Engine::Postgres(pool) => sqlx::query_scalar(SQL)
            .bind(owner)
            .fetch_optional(pool)
            .await
            .unwrap(),
        Engine::Sqlite(db) => sqlx::query_scalar(SQL)
            .bind(owner.to_string())
            .fetch_optional(db.readers())
            .await
            .unwrap(),
    }
}

const PASSWORD: &str = "correct horse battery staple 42";

/// A membership view the test sets by hand.
#[derive(Default)]
struct Memberships(Mutex<HashMap<(Uuid, Uuid), Vec<String>>>);

impl MembershipLookup for Memberships {
    fn roles(&self, user_id: Uuid, organization_id: Uuid) -> Option<Vec<String>> {
        self.0
            .lock()
            .unwrap()
            .get(&(user_id, organization_id))
            .cloned()
    }

    fn requires_second_factor(&self, _: Uuid) -> bool {
        false
    }
}

on_both_back_ends! {
    async fn admins_manage_members_but_cannot_grant_what_they_do_not_hold(storage) {
        let orgs = OrganizationService::new(&storage, tokens(), keys(&storage));
        let (owner, admin, member) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let ctx = ctx(Some(owner));
        let (org, _) = orgs.create(owner, "Acme", "Acme Inc", &ctx).await.unwrap();
        assert!(matches!(
            orgs.create(admin, "acme", "Other", &ctx).await,
            Err(OrganizationError::SlugTaken)
        ));
        assert!(matches!(
            orgs.create(admin, "-bad-", "Other", &ctx).await,
            Err(OrganizationError::InvalidSlug)
        ));

        let as_owner = BuiltInRole::Owner.permissions();
        let as_admin = BuiltInRole::Admin.permissions();
        orgs.add_member(org, admin, roles(&[BuiltInRole::Admin]), &as_owner, &ctx)
            .await
            .unwrap();
        // An admin cannot make an owner, nor add twice.
        assert!(matches!(
            orgs.add_member(org, member, roles(&[BuiltInRole::Owner]), &as_admin, &ctx)
                .await,
            Err(OrganizationError::CannotGrant)
        ));
        orgs.add_member(org, member, roles(&[BuiltInRole::Member]), &as_admin, &ctx)
            .await
            .unwrap();
        assert!(matches!(
            orgs.add_member(org, member, roles(&[BuiltInRole::Member]), &as_admin, &ctx)
                .await,
            Err(OrganizationError::AlreadyMember)
        ));
        assert!(matches!(
            orgs.add_member(org, Uuid::new_v4(), BTreeSet::new(), &as_admin, &ctx)
                .await,
            Err(OrganizationError::NoRoles)
        ));
        // Nor demote or remove the owner.
        assert!(matches!(
            orgs.change_member_roles(org, owner, roles(&[BuiltInRole::Member]), &as_admin, &ctx)
                .await,
            Err(OrganizationError::CannotGrant)
        ));
        assert!(matches!(
            orgs.remove_member(org, owner, &as_admin, &ctx).await,
            Err(OrganizationError::CannotGrant)
        ));
        // The last owner stays, whoever asks.
        assert!(matches!(
            orgs.remove_member(org, owner, &as_owner, &ctx).await,
            Err(OrganizationError::LastOwner)
        ));
        assert!(orgs
            .change_member_roles(org, member, roles(&[BuiltInRole::Member]), &as_admin, &ctx)
            .await
            .unwrap()
            .is_none());

        // Custom roles: only within what the granter holds.
        assert!(matches!(
            orgs.define_role(org, "Billing", &["invoices:read".into()], &as_admin, &ctx)
                .await,
            Err(OrganizationError::CannotGrant)
        ));
        assert!(matches!(
            orgs.define_role(org, "admin", &[], &as_owner, &ctx).await,
            Err(OrganizationError::InvalidRoleName)
        ));
        assert!(matches!(
            orgs.define_role(org, "Bad", &["NOPE".into()], &as_owner, &ctx)
                .await,
            Err(OrganizationError::InvalidPermission)
        ));
        let (billing, _) = orgs
            .define_role(org, "Billing", &["invoices:read".into()], &as_owner, &ctx)
            .await
            .unwrap();
        let billing_ref = BTreeSet::from([RoleRef::Custom(billing)]);
        assert!(matches!(
            orgs.change_member_roles(org, member, billing_ref.clone(), &as_admin, &ctx)
                .await,
            Err(OrganizationError::CannotGrant)
        ));
        let with_invoices =
            PermissionSet::parse(as_admin.iter().map(|p| p.as_str()).chain(["invoices:*"]))
                .unwrap();
        assert!(orgs
            .change_member_roles(org, member, billing_ref.clone(), &with_invoices, &ctx)
            .await
            .unwrap()
            .is_some());
        // Widening the role is beyond that admin; then it protects its holder.
        assert!(matches!(
            orgs.update_role(
                org,
                billing,
                None,
                Some(&["*".into()]),
                &with_invoices,
                &ctx
            )
            .await,
            Err(OrganizationError::CannotGrant)
        ));
        orgs.update_role(org, billing, None, Some(&["*".into()]), &as_owner, &ctx)
            .await
            .unwrap()
            .unwrap();
        assert!(orgs
            .update_role(
                org,
                billing,
                Some("Billing"),
                Some(&["*".into()]),
                &as_owner,
                &ctx
            )
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            orgs.remove_member(org, member, &with_invoices, &ctx).await,
            Err(OrganizationError::CannotGrant)
        ));
        // A role of another organization is not found.
        let (other, _) = orgs
            .create(owner, "other-org", "Other", &ctx)
            .await
            .unwrap();
        assert!(matches!(
            orgs.add_member(other, admin, billing_ref.clone(), &as_owner, &ctx)
                .await,
            Err(OrganizationError::RoleNotFound)
        ));
        assert!(matches!(
            orgs.delete_role(other, billing, &as_owner, &ctx).await,
            Err(OrganizationError::RoleNotFound)
        ));
        // Once deleted, the role grants nothing: the admin may remove its holder.
        orgs.delete_role(org, billing, &as_owner, &ctx)
            .await
            .unwrap();
        assert!(matches!(
            orgs.add_member(org, Uuid::new_v4(), billing_ref, &as_owner, &ctx)
                .await,
            Err(OrganizationError::RoleNotFound)
        ));
        orgs.remove_member(org, member, &as_admin, &ctx)
            .await
            .unwrap();
        assert!(matches!(
            orgs.remove_member(org, member, &as_admin, &ctx).await,
            Err(OrganizationError::NotMember)
        ));

        // Settings and names.
        let settings = BTreeMap::from([("mfa.required".to_owned(), "true".to_owned())]);
        assert!(orgs
            .update(org, Some("Acme 2"), Some(settings.clone()), &ctx)
            .await
            .unwrap()
            .is_some());
        assert!(orgs
            .update(org, Some("Acme 2"), Some(settings), &ctx)
            .await
            .unwrap()
            .is_none());
        let bad = BTreeMap::from([("Bad Key".to_owned(), String::new())]);
        assert!(matches!(
            orgs.update(org, None, Some(bad), &ctx).await,
            Err(OrganizationError::InvalidSettings)
        ));
        assert!(matches!(
            orgs.update(Uuid::new_v4(), None, None, &ctx).await,
            Err(OrganizationError::NotFound)
        ));

        // Suspension freezes the organization; both directions are idempotent.
        assert!(orgs.suspend(org, "unpaid", &ctx).await.unwrap().is_some());
        assert!(orgs.suspend(org, "unpaid", &ctx).await.unwrap().is_none());
        assert!(matches!(
            orgs.add_member(
                org,
                Uuid::new_v4(),
                roles(&[BuiltInRole::Member]),
                &as_owner,
                &ctx
            )
            .await,
            Err(OrganizationError::Suspended)
        ));
        assert!(orgs.reactivate(org, &ctx).await.unwrap().is_some());
        assert!(orgs.reactivate(org, &ctx).await.unwrap().is_none());
        assert!(matches!(
            orgs.suspend(Uuid::new_v4(), "x", &ctx).await,
            Err(OrganizationError::NotFound)
        ));
    }
}

on_both_back_ends! {
    async fn service_accounts_trade_their_secret_for_a_scoped_token(storage) {
        let tokens = tokens();
        let orgs = OrganizationService::new(&storage, tokens.clone(), keys(&storage));
        let owner = Uuid::new_v4();
        let ctx = ctx(Some(owner));
        let as_owner = BuiltInRole::Owner.permissions();
        let as_admin = BuiltInRole::Admin.permissions();
        let (org, _) = orgs.create(owner, "acme", "Acme", &ctx).await.unwrap();
        let (reader, _) = orgs
            .define_role(org, "Reader", &["invoices:read".into()], &as_owner, &ctx)
            .await
            .unwrap();
        let account_roles = BTreeSet::from([
            RoleRef::BuiltIn(BuiltInRole::Auditor),
            RoleRef::Custom(reader),
        ]);
        assert!(matches!(
            orgs.create_service_account(org, "worker", account_roles.clone(), &as_admin, &ctx)
                .await,
            Err(OrganizationError::CannotGrant)
        ));
        let created = orgs
            .create_service_account(org, "worker", account_roles, &as_owner, &ctx)
            .await
            .unwrap();
        let id = created.service_account_id;
        let secret = created.client_secret.expose().to_owned();

        let token = orgs
            .client_credentials(&id.to_string(), &secret)
            .await
            .unwrap();
        assert_eq!(token.organization_id, org);
        let claims = tokens.verify(&token.access_token).unwrap();
        assert_eq!(claims.kind, SubjectKind::ServiceAccount);
        assert_eq!(claims.user_id, id);
        assert_eq!(claims.organization_id, Some(org));
        let mut expected = vec!["auditor".to_owned(), reader.to_string()];
        expected.sort();
        let mut got = claims.roles.clone();
        got.sort();
        assert_eq!(got, expected);

        // Every failure is the same answer.
        let other = orgs
            .create_service_account(org, "other", BTreeSet::new(), &as_owner, &ctx)
            .await
            .unwrap();
        for (client_id, client_secret) in [
            (id.to_string(), other.client_secret.expose().to_owned()),
            (other.service_account_id.to_string(), secret.clone()),
            (Uuid::new_v4().to_string(), secret.clone()),
            ("not-a-uuid".to_owned(), secret.clone()),
            (id.to_string(), "kls_short".to_owned()),
            (id.to_string(), String::new()),
        ] {
            assert!(matches!(
                orgs.client_credentials(&client_id, &client_secret).await,
                Err(OrganizationError::InvalidClient)
            ));
        }
        // A secret for an account that never existed.
        let ghost = keyledger_commands::ClientSecret::generate(Uuid::new_v4());
        assert!(matches!(
            orgs.client_credentials(&ghost.service_account_id().to_string(), ghost.expose())
                .await,
            Err(OrganizationError::InvalidClient)
        ));

        // A deleted custom role is no longer advertised.
        orgs.delete_role(org, reader, &as_owner, &ctx)
            .await
            .unwrap();
        let token = orgs
            .client_credentials(&id.to_string(), &secret)
            .await
            .unwrap();
        assert_eq!(token.roles, vec!["auditor".to_owned()]);

        // Rotation: the old secret stops working at once.
        let (rotated, _) = orgs
            .rotate_service_account_secret(org, id, &as_owner, &ctx)
            .await
            .unwrap();
        assert!(matches!(
            orgs.client_credentials(&id.to_string(), &secret).await,
            Err(OrganizationError::InvalidClient)
        ));
        orgs.client_credentials(&id.to_string(), rotated.expose())
            .await
            .unwrap();

        // Role changes follow the granter rule.
        assert!(orgs
            .change_service_account_roles(org, id, roles(&[BuiltInRole::Member]), &as_admin, &ctx)
            .await
            .unwrap()
            .is_some());
        assert!(orgs
            .change_service_account_roles(org, id, roles(&[BuiltInRole::Member]), &as_admin, &ctx)
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            orgs.change_service_account_roles(
                org,
                id,
                roles(&[BuiltInRole::Owner]),
                &as_admin,
                &ctx
            )
            .await,
            Err(OrganizationError::CannotGrant)
        ));

        // A suspended organization's accounts get nothing.
        orgs.suspend(org, "unpaid", &ctx).await.unwrap();
        assert!(matches!(
            orgs.client_credentials(&id.to_string(), rotated.expose())
                .await,
            Err(OrganizationError::InvalidClient)
        ));
        orgs.reactivate(org, &ctx).await.unwrap();
        orgs.client_credentials(&id.to_string(), rotated.expose())
            .await
            .unwrap();

        // Another organization cannot reach it; deletion ends it.
        let (elsewhere, _) = orgs.create(owner, "elsewhere", "E", &ctx).await.unwrap();
        assert!(matches!(
            orgs.delete_service_account(elsewhere, id, &as_owner, &ctx)
                .await,
            Err(OrganizationError::ServiceAccountNotFound)
        ));
        orgs.delete_service_account(org, id, &as_owner, &ctx)
            .await
            .unwrap();
        assert!(matches!(
            orgs.client_credentials(&id.to_string(), rotated.expose())
                .await,
            Err(OrganizationError::InvalidClient)
        ));
    }
}

on_both_back_ends! {
    async fn suspension_ends_sessions_and_blocks_login_only_for_the_right_password(storage) {
        let auth = auth(&storage, tokens());
        let anon = ctx(None);
        let registered = auth
            .register(
                "alice@example.com",
                Password::new(PASSWORD.into()),
                None,
                &anon,
            )
            .await
            .unwrap();
        let user = registered.user_id;
        assert_eq!(
            auth.find_user_id("Alice@Example.com").await.unwrap(),
            Some(user)
        );
        assert_eq!(auth.find_user_id("bob@example.com").await.unwrap(), None);
        assert!(auth.user_exists(user).await.unwrap());
        assert!(!auth.user_exists(Uuid::new_v4()).await.unwrap());

        let first = auth
            .login_complete("alice@example.com", Password::new(PASSWORD.into()), &anon)
            .await
            .unwrap();
        let second = auth
            .login_complete("alice@example.com", Password::new(PASSWORD.into()), &anon)
            .await
            .unwrap();
        auth.logout(user, second.tokens.session_id, &anon)
            .await
            .unwrap();

        let operator = ctx(Some(Uuid::new_v4()));
        let suspension = auth
            .suspend_user(user, "fraud\u{7}", &operator)
            .await
            .unwrap();
        assert_eq!(suspension.ended_sessions, vec![first.tokens.session_id]);
        assert_eq!(suspension.written.len(), 2);
        // Idempotent, and nothing left to end.
        let again = auth.suspend_user(user, "fraud", &operator).await.unwrap();
        assert!(again.ended_sessions.is_empty() && again.written.is_empty());

        assert!(matches!(
            auth.refresh(first.tokens.refresh_token.expose(), &anon)
                .await,
            Err(AuthError::InvalidRefreshToken)
        ));
        assert!(matches!(
            auth.login_complete("alice@example.com", Password::new(PASSWORD.into()), &anon)
                .await,
            Err(AuthError::AccountSuspended)
        ));
        assert!(matches!(
            auth.login_complete(
                "alice@example.com",
                Password::new("wrong one entirely".into()),
                &anon
            )
            .await,
            Err(AuthError::InvalidCredentials)
        ));

        assert!(auth
            .reactivate_user(user, &operator)
            .await
            .unwrap()
            .is_some());
        assert!(auth
            .reactivate_user(user, &operator)
            .await
            .unwrap()
            .is_none());
        auth.login_complete("alice@example.com", Password::new(PASSWORD.into()), &anon)
            .await
            .unwrap();

        assert!(auth
            .grant_platform_admin(user, &operator)
            .await
            .unwrap()
            .is_some());
        assert!(auth
            .grant_platform_admin(user, &operator)
            .await
            .unwrap()
            .is_none());
        // The platform keeps an active administrator: alice may step down only
        // once there is another.
        assert!(matches!(
            auth.revoke_platform_admin(user, &operator).await,
            Err(AuthError::LastAdmin)
        ));
        let bob = auth
            .register("bob@example.com", Password::new(PASSWORD.into()), None, &anon)
            .await
            .unwrap()
            .user_id;
        assert!(auth
            .grant_platform_admin(bob, &operator)
            .await
            .unwrap()
            .is_some());
        assert!(auth
            .revoke_platform_admin(user, &operator)
            .await
            .unwrap()
            .is_some());
        assert!(auth
            .revoke_platform_admin(user, &operator)
            .await
            .unwrap()
            .is_none());
        for result in [
            auth.grant_platform_admin(Uuid::new_v4(), &operator).await,
            auth.reactivate_user(Uuid::new_v4(), &operator).await,
        ] {
            assert!(matches!(result, Err(AuthError::UserNotFound)));
        }
        assert!(matches!(
            auth.suspend_user(Uuid::new_v4(), "x", &operator).await,
            Err(AuthError::UserNotFound)
        ));
    }
}

on_both_back_ends! {
    async fn a_session_scoped_to_an_organization_keeps_its_scope_while_a_member(storage) {
        let tokens = tokens();
        let auth = auth(&storage, tokens.clone());
        let anon = ctx(None);
        let user = auth
            .register(
                "carol@example.com",
                Password::new(PASSWORD.into()),
                None,
                &anon,
            )
            .await
            .unwrap()
            .user_id;
        let login = auth
            .login_complete("carol@example.com", Password::new(PASSWORD.into()), &anon)
            .await
            .unwrap();
        let session = login.tokens.session_id;
        let org = Uuid::new_v4();
        let me = ctx(Some(user));

        // Without a membership view nobody is a member.
        assert!(matches!(
            auth.select_organization(session, user, Some(org), &me)
                .await,
            Err(AuthError::OrganizationNotFound)
        ));
        let memberships = Arc::new(Memberships::default());
        auth.set_memberships(memberships.clone());
        memberships
            .0
            .lock()
            .unwrap()
            .insert((user, org), vec!["admin".into()]);

        let selected = auth
            .select_organization(session, user, Some(org), &me)
            .await
            .unwrap();
        assert!(selected.written.is_some());
        assert_eq!(selected.roles, vec!["admin".to_owned()]);
        let claims = tokens.verify(&selected.access_token).unwrap();
        assert_eq!(claims.organization_id, Some(org));
        assert_eq!(claims.session_id, session);
        assert_eq!(claims.roles, vec!["admin".to_owned()]);
        // Selecting it again writes nothing.
        assert!(auth
            .select_organization(session, user, Some(org), &me)
            .await
            .unwrap()
            .written
            .is_none());
        // Someone else's session is not found.
        assert!(matches!(
            auth.select_organization(session, Uuid::new_v4(), None, &me)
                .await,
            Err(AuthError::SessionNotFound)
        ));

        // Refresh keeps the scope with the current roles…
        memberships
            .0
            .lock()
            .unwrap()
            .insert((user, org), vec!["member".into()]);
        let refreshed = auth
            .refresh(login.tokens.refresh_token.expose(), &anon)
            .await
            .unwrap();
        let claims = tokens.verify(&refreshed.access_token).unwrap();
        assert_eq!(claims.organization_id, Some(org));
        assert_eq!(claims.roles, vec!["member".to_owned()]);
        // …and drops it, without failing, once the membership is gone.
        memberships.0.lock().unwrap().clear();
        let refreshed = auth
            .refresh(refreshed.refresh_token.expose(), &anon)
            .await
            .unwrap();
        let claims = tokens.verify(&refreshed.access_token).unwrap();
        assert_eq!(claims.organization_id, None);
        assert!(claims.roles.is_empty());

        // Unscoping, and an ended session.
        let cleared = auth
            .select_organization(session, user, None, &me)
            .await
            .unwrap();
        assert!(cleared.written.is_some());
        assert_eq!(
            tokens
                .verify(&cleared.access_token)
                .unwrap()
                .organization_id,
            None
        );
        auth.logout(user, session, &me).await.unwrap();
        assert!(matches!(
            auth.select_organization(session, user, None, &me).await,
            Err(AuthError::SessionNotFound)
        ));
    }
}

on_both_back_ends! {
    async fn no_session_outlives_an_erasure_even_when_logins_race_it(storage) {
        let auth = Arc::new(auth(&storage, tokens()));
        let from_a_browser = RequestContext {
            ip: Some("198.51.100.23".into()),
            user_agent: Some("RaceBrowser/1.0".into()),
            ..ctx(None)
        };
        let user = auth
            .register(
                "racer@example.com",
                Password::new(PASSWORD.into()),
                Some("Racer"),
                &from_a_browser,
            )
            .await
            .unwrap()
            .user_id;

        // Logins keep coming while an administrator erases the account.
        let logins: Vec<_> = (0..12)
            .map(|_| {
                let auth = auth.clone();
                let ctx = from_a_browser.clone();
                tokio::spawn(async move {
                    auth.login_complete("racer@example.com", Password::new(PASSWORD.into()), &ctx)
                        .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let erasure = auth
            .erase_user(user, &ctx(Some(Uuid::new_v4())))
            .await
            .unwrap();
        assert_eq!(erasure.written.first().map(|w| w.sequence > 0), Some(true));
        for login in logins {
            // Each either won before the erasure (and its session was swept) or
            // lost (refused like an unknown account, whose failures lock out like
            // anyone's, or beaten by the erasure).
            match login.await.unwrap() {
                Ok(_)
                | Err(AuthError::InvalidCredentials)
                | Err(AuthError::TooManyAttempts { .. })
                | Err(AuthError::Conflict) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        let alive = sessions_not_ended(&storage, user).await;
        assert_eq!(alive, 0, "a session outlived the erasure");
        assert!(matches!(
            auth.login_complete(
                "racer@example.com",
                Password::new(PASSWORD.into()),
                &from_a_browser
            )
            .await,
            Err(AuthError::InvalidCredentials | AuthError::TooManyAttempts { .. })
        ));
        assert_eq!(auth.find_user_id("racer@example.com").await.unwrap(), None);

        // Nothing the browser sent is in the log in clear, and the key is gone.
        let clear = events_containing(
            &storage,
            &["racer@", "Racer", "198.51.100.23", "RaceBrowser"],
        )
        .await;
        assert_eq!(clear, 0);
        let key = data_key_row(&storage, user).await.expect("a tombstone");
        assert_eq!(key, None);
        // An erased account has no password left to prove; erasing it again only
        // finishes the job and writes nothing.
        assert!(matches!(
            auth.reauthenticate(user, &Password::new(PASSWORD.into()), &ctx(Some(user)))
                .await,
            Err(AuthError::InvalidCredentials)
        ));
        let again = auth.erase_user(user, &ctx(None)).await.unwrap();
        assert!(again.written.is_empty() && again.ended_sessions.is_empty());
    }
}

on_both_back_ends! {
    async fn no_session_outlives_a_suspension_even_when_logins_race_it(storage) {
        let key = EmailIndexKey::generate();
        let tokens = tokens();
        let node = Arc::new(auth_with_index_key(&storage, tokens.clone(), key.clone()));
        let other_node = auth_with_index_key(&storage, tokens.clone(), key.clone());
        let anon = ctx(None);
        let user = node
            .register("racer@example.com", Password::new(PASSWORD.into()), None, &anon)
            .await
            .unwrap()
            .user_id;
        let login = |node: Arc<AuthService>| async move {
            node.login_complete("racer@example.com", Password::new(PASSWORD.into()), &ctx(None))
                .await
        };

        // This node knows the account as active; another node suspends it. The
        // next login here starts from the stale copy, checks the password, and
        // then loses the race for the account's sequence: its session is not
        // written with it, and the retry sees the suspension.
        let before = login(node.clone()).await.unwrap();
        let operator = ctx(Some(Uuid::new_v4()));
        let suspension = other_node.suspend_user(user, "fraud", &operator).await.unwrap();
        assert_eq!(suspension.ended_sessions, vec![before.tokens.session_id]);
        assert!(matches!(
            login(node.clone()).await,
            Err(AuthError::AccountSuspended)
        ));
        let started = count(
            &storage,
            "SELECT count(*) FROM events WHERE event_type = 'SessionStarted'",
        )
        .await;
        assert_eq!(started, 1, "a refused login wrote a session");
        assert_eq!(sessions_not_ended(&storage, user).await, 0);

        // Logins keep coming while a third node (which has not seen the account
        // yet) suspends it again.
        node.reactivate_user(user, &operator).await.unwrap();
        let third_node = auth_with_index_key(&storage, tokens, key);
        let logins: Vec<_> = (0..12)
            .map(|_| tokio::spawn(login(node.clone())))
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // An operator asks again while the logins keep winning the account's
        // next sequence (409 in the API).
        let suspension = loop {
            match third_node.suspend_user(user, "fraud", &operator).await {
                Err(AuthError::Conflict) => continue,
                other => break other.unwrap(),
            }
        };
        assert!(!suspension.written.is_empty());
        for login in logins {
            match login.await.unwrap() {
                Ok(_) | Err(AuthError::AccountSuspended) | Err(AuthError::Conflict) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            sessions_not_ended(&storage, user).await,
            0,
            "a session outlived the suspension"
        );
    }
}

on_both_back_ends! {
    async fn a_refusal_or_a_no_op_decided_on_a_stale_copy_is_confirmed_from_the_log(storage) {
        let key = EmailIndexKey::generate();
        let tokens = tokens();
        let node = auth_with_index_key(&storage, tokens.clone(), key.clone());
        let other_node = auth_with_index_key(&storage, tokens, key);
        let anon = ctx(None);
        let user = node
            .register("stale@example.com", Password::new(PASSWORD.into()), None, &anon)
            .await
            .unwrap()
            .user_id;
        let operator = ctx(Some(Uuid::new_v4()));
        let suspensions = "SELECT count(*) FROM events WHERE event_type = 'UserSuspended'";
        let reactivations = "SELECT count(*) FROM events WHERE event_type = 'UserReactivated'";

        // Given this node remembers the account suspended and another node
        // reactivated it,
        node.suspend_user(user, "fraud", &operator).await.unwrap();
        other_node.reactivate_user(user, &operator).await.unwrap();
        // when this node suspends it again, the suspension is written, not
        // answered as "already suspended" from the stale copy;
        node.suspend_user(user, "fraud again", &operator).await.unwrap();
        assert_eq!(count(&storage, suspensions).await, 2);
        // and the other node, which remembers it active, reactivates it for real.
        other_node.reactivate_user(user, &operator).await.unwrap();
        assert_eq!(count(&storage, reactivations).await, 2);

        // A login on the node that last saw a suspension is not refused by it.
        node.login_complete("stale@example.com", Password::new(PASSWORD.into()), &anon)
            .await
            .expect("the account is active");
    }
}

on_both_back_ends! {
    async fn opening_never_mints_a_key_and_an_erased_owner_gets_no_new_one(storage) {
        let sealer = PersonalDataSealer::for_storage(&storage, wrapping());
        let stranger = Uuid::new_v4();
        let sealed = keyledger_domain::DataKey::generate().seal(
            stranger,
            keyledger_domain::Field::Email,
            "stranger@example.com",
        );
        assert_eq!(
            sealer
                .open(&sealed, keyledger_domain::Field::Email)
                .await
                .unwrap(),
            keyledger_domain::ERASED
        );
        let rows = count(&storage, "SELECT count(*) FROM user_data_keys").await;
        assert_eq!(rows, 0, "opening created a key");

        // Sealing creates one; after erasure nothing is sealed for that owner again.
        let owner = Uuid::new_v4();
        let mine = sealer
            .seal(owner, keyledger_domain::Field::Ip, "192.0.2.7")
            .await
            .unwrap()
            .expect("a key on first use");
        assert_eq!(
            sealer
                .open(&mine, keyledger_domain::Field::Ip)
                .await
                .unwrap(),
            "192.0.2.7"
        );
        sealer.erase(owner).await.unwrap();
        assert_eq!(
            sealer
                .open(&mine, keyledger_domain::Field::Ip)
                .await
                .unwrap(),
            keyledger_domain::ERASED
        );
        let fresh = PersonalDataSealer::for_storage(&storage, wrapping());
        assert!(fresh
            .seal(owner, keyledger_domain::Field::Ip, "192.0.2.8")
            .await
            .unwrap()
            .is_none());
    }
}

on_both_back_ends! {
    async fn a_corrupt_data_key_is_an_error_not_an_erased_person(storage) {
        let owner = Uuid::new_v4();
        let sealed = PersonalDataSealer::for_storage(&storage, wrapping())
            .seal(owner, keyledger_domain::Field::Email, "kept@example.com")
            .await
            .unwrap()
            .expect("a key on first use");
        // The schema's CHECK keeps keys at 32 bytes; corruption below the
        // database (a restored file, a bad disk) does not ask it, so the test
        // goes around it.
        match storage.engine() {
            Engine::Postgres(pool) => {
                for sql in [
                    "ALTER TABLE user_data_keys DROP CONSTRAINT user_data_keys_key_check",
                    "UPDATE user_data_keys SET key = substring(key from 1 for 31)",
                ] {
                    sqlx::query(sql).execute(pool).await.unwrap();
                }
            }
            Engine::Sqlite(db) => {
                for sql in [
                    "PRAGMA ignore_check_constraints = ON",
                    "UPDATE user_data_keys SET key = substr(key, 1, 31)",
                    "PRAGMA ignore_check_constraints = OFF",
                ] {
                    sqlx::query(sql).execute(db.writer()).await.unwrap();
                }
            }
        }
        // A fresh sealer (nothing cached): read as erased, the field would open as
        // erased and new events would silently lose the person's fields.
        let sealer = PersonalDataSealer::for_storage(&storage, wrapping());
        let opened = sealer.open(&sealed, keyledger_domain::Field::Email).await;
        let error = opened.expect_err("a corrupt key opened something").to_string();
        assert!(error.contains("31 bytes"), "{error}");
        assert!(sealer
            .seal(owner, keyledger_domain::Field::Ip, "192.0.2.9")
            .await
            .is_err());
    }
}

/// `(sequence, global_position)` of every event of one aggregate, in sequence
/// order.
async fn events_of(storage: &Database, aggregate_type: &str, id: Uuid) -> Vec<(i64, i64)> {
    const SQL: &str = "SELECT sequence, global_position FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence";
    match storage.engine() {
        Engine::Postgres(pool) => sqlx::query_as(SQL)
            .bind(aggregate_type)
            .bind(id.to_string())
            .fetch_all(pool)
            .await
            .unwrap(),
        Engine::Sqlite(db) => sqlx::query_as(SQL)
            .bind(aggregate_type)
            .bind(id.to_string())
            .fetch_all(db.readers())
            .await
            .unwrap(),
    }
}

on_both_back_ends! {
    #[multi_thread]
    async fn sixteen_concurrent_commands_on_one_aggregate_either_commit_or_conflict(storage) {
        let orgs = Arc::new(OrganizationService::new(&storage, tokens(), keys(&storage)));
        let owner = Uuid::new_v4();
        let (org, _) = orgs
            .create(owner, "race", "Race", &ctx(Some(owner)))
            .await
            .unwrap();
        let before = events_of(&storage, "organization", org).await.len();

        let racers: Vec<_> = (0..16)
            .map(|i| {
                let orgs = orgs.clone();
                tokio::spawn(async move {
                    let name = format!("Name {i}");
                    orgs.update(org, Some(&name), None, &ctx(Some(owner))).await
                })
            })
            .collect();
        let mut won = BTreeSet::new();
        for racer in racers {
            match racer.await.unwrap() {
                Ok(Some(written)) => assert!(won.insert(written.sequence), "a sequence twice"),
                // Only a lost race may fail; never an unavailable store.
                Err(OrganizationError::Conflict) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(!won.is_empty(), "nobody won");

        // Every acknowledged command is stored, nothing else, with no gap.
        let events = events_of(&storage, "organization", org).await;
        assert_eq!(
            events.len(),
            before + won.len(),
            "an event was lost or invented"
        );
        let sequences: Vec<i64> = events.iter().map(|(sequence, _)| *sequence).collect();
        assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>());
        for sequence in &won {
            assert!(sequences.contains(&(*sequence as i64)));
        }
        assert!(
            events.windows(2).all(|w| w[0].1 < w[1].1),
            "positions follow sequences"
        );
    }
}

/// One stored event, as the chain hash covers it.
#[derive(sqlx::FromRow)]
struct StoredEvent {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
    recorded_at: i64,
    tx_id: i64,
    global_position: i64,
    chain_hash: Vec<u8>,
}

async fn stored_events(storage: &Database) -> Vec<StoredEvent> {
    match storage.engine() {
        Engine::Postgres(pool) => sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload::text AS payload, metadata::text AS metadata,
                    (extract(epoch FROM recorded_at) * 1000000)::bigint AS recorded_at,
                    tx_id::text::bigint AS tx_id, global_position, chain_hash
               FROM events ORDER BY aggregate_type, aggregate_id, sequence",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        Engine::Sqlite(db) => sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata, recorded_at, tx_id, global_position, chain_hash
               FROM events ORDER BY aggregate_type, aggregate_id, sequence",
        )
        .fetch_all(db.readers())
        .await
        .unwrap(),
    }
}

on_both_back_ends! {
    async fn every_stored_chain_hash_recomputes_from_its_columns_and_chains_per_aggregate(storage) {
        // A journey touching every aggregate type, with multi-event commits.
        let tokens = tokens();
        let auth = auth(&storage, tokens.clone());
        let orgs = OrganizationService::new(&storage, tokens, keys(&storage));
        let browser = RequestContext {
            ip: Some("192.0.2.1".into()),
            user_agent: Some("Chain/1.0".into()),
            ..ctx(None)
        };
        let user = auth
            .register(
                "chain@example.com",
                Password::new(PASSWORD.into()),
                Some("Chain"),
                &browser,
            )
            .await
            .unwrap()
            .user_id;
        let login = auth
            .login_complete(
                "chain@example.com",
                Password::new(PASSWORD.into()),
                &browser,
            )
            .await
            .unwrap();
        auth.refresh(login.tokens.refresh_token.expose(), &browser)
            .await
            .unwrap();
        let as_owner = BuiltInRole::Owner.permissions();
        let (org, _) = orgs
            .create(user, "chain", "Chain", &ctx(Some(user)))
            .await
            .unwrap();
        orgs.define_role(
            org,
            "Reader",
            &["invoices:read".into()],
            &as_owner,
            &ctx(Some(user)),
        )
        .await
        .unwrap();
        orgs.create_service_account(
            org,
            "worker",
            roles(&[BuiltInRole::Member]),
            &as_owner,
            &ctx(Some(user)),
        )
        .await
        .unwrap();
        orgs.suspend(org, "unpaid", &ctx(None)).await.unwrap();
        auth.erase_user(user, &ctx(None)).await.unwrap();

        let events = stored_events(&storage).await;
        assert!(events.len() >= 8, "{} events", events.len());
        let mut previous: Option<(&str, &str, i64, Hash)> = None;
        for event in &events {
            let before = match previous {
                Some((t, id, sequence, hash))
                    if t == event.aggregate_type && id == event.aggregate_id =>
                {
                    assert_eq!(event.sequence, sequence + 1, "a gap in {t} {id}");
                    hash
                }
                _ => {
                    assert_eq!(
                        event.sequence, 1,
                        "{} {}",
                        event.aggregate_type, event.aggregate_id
                    );
                    ZERO_HASH
                }
            };
            let expected = CanonicalEvent {
                aggregate_type: &event.aggregate_type,
                aggregate_id: &event.aggregate_id,
                sequence: event.sequence,
                event_type: &event.event_type,
                event_version: &event.event_version,
                payload: &event.payload,
                metadata: &event.metadata,
                recorded_at_micros: event.recorded_at,
                tx_id: event.tx_id,
                global_position: event.global_position,
            }
            .chain_hash(&before);
            assert_eq!(
                event.chain_hash.as_slice(),
                expected.as_slice(),
                "{} {} #{} does not recompute",
                event.aggregate_type,
                event.aggregate_id,
                event.sequence
            );
            previous = Some((
                &event.aggregate_type,
                &event.aggregate_id,
                event.sequence,
                expected,
            ));
        }

        if let Engine::Sqlite(_) = storage.engine() {
            // Embedded positions are handed out under the write lock: 1..=n with
            // no gap, tx_id always 0, and time never going back along them.
            let mut by_position: Vec<&StoredEvent> = events.iter().collect();
            by_position.sort_by_key(|e| e.global_position);
            let positions: Vec<i64> = by_position.iter().map(|e| e.global_position).collect();
            assert_eq!(positions, (1..=events.len() as i64).collect::<Vec<_>>());
            assert!(events.iter().all(|e| e.tx_id == 0));
            assert!(by_position
                .windows(2)
                .all(|w| w[0].recorded_at <= w[1].recorded_at));
        }
    }
}

on_both_back_ends! {
    async fn the_event_log_refuses_updates_and_deletes(storage) {
        let orgs = OrganizationService::new(&storage, tokens(), keys(&storage));
        let owner = Uuid::new_v4();
        orgs.create(owner, "append-only", "A", &ctx(Some(owner)))
            .await
            .unwrap();
        let stored = count(&storage, "SELECT count(*) FROM events").await;
        assert!(stored > 0);
        for statement in [
            "UPDATE events SET event_type = 'Forged'",
            "UPDATE events SET chain_hash = chain_hash",
            "DELETE FROM events",
        ] {
            let refused = match storage.engine() {
                Engine::Postgres(pool) => sqlx::query(statement).execute(pool).await.map(|_| ()),
                Engine::Sqlite(db) => sqlx::query(statement)
                    .execute(db.writer())
                    .await
                    .map(|_| ()),
            };
            let error = refused.expect_err(statement).to_string();
            assert!(error.contains("append-only"), "{statement}: {error}");
        }
        assert_eq!(count(&storage, "SELECT count(*) FROM events").await, stored);
        assert_eq!(
            count(
                &storage,
                "SELECT count(*) FROM events WHERE event_type = 'Forged'"
            )
            .await,
            0
        );
    }
}

on_both_back_ends! {
    async fn a_lost_race_or_a_gap_is_refused_and_writes_nothing(storage) {
        let repository = EventRepository::new(&storage);
        let id = Uuid::new_v4().to_string();
        let event = |sequence: usize| {
            SerializedEvent::new(
                id.clone(),
                sequence,
                "organization".into(),
                "Probe".into(),
                "1.0".into(),
                serde_json::json!({ "Probe": { "n": sequence, "text": "é \"quoted\"" } }),
                serde_json::json!({ "request_id": "probe" }),
            )
        };
        let mut signal = match storage.engine() {
            Engine::Sqlite(db) => Some(db.commits().subscribe()),
            Engine::Postgres(_) => None,
        };

        repository
            .persist::<Organization>(&[event(1), event(2)], None)
            .await
            .unwrap();
        if let Some(signal) = signal.as_mut() {
            assert!(signal.has_changed().unwrap(), "a commit wakes the feed");
            signal.borrow_and_update();
        }

        // Sequence 2 is taken: the whole commit is refused, its 3 included.
        match repository
            .persist::<Organization>(&[event(3), event(2)], None)
            .await
        {
            Err(PersistenceError::OptimisticLockError) => {}
            other => panic!("expected a conflict, got {other:?}"),
        }
        // Nothing to chain event 5 (nor a 0) to.
        for gap in [5, 0] {
            match repository
                .persist::<Organization>(&[event(gap)], None)
                .await
            {
                Err(PersistenceError::UnknownError(e)) => {
                    assert!(e.to_string().contains("no predecessor"), "{e}")
                }
                other => panic!("expected a refusal of {gap}, got {other:?}"),
            }
        }
        let stored = repository.get_events::<Organization>(&id).await.unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[1].payload, event(2).payload);
        assert_eq!(stored[1].metadata, event(2).metadata);
        assert!(
            repository
                .get_last_events::<Organization>(&id, 1)
                .await
                .unwrap()
                .len()
                == 1
        );

        if let Some(signal) = signal.as_ref() {
            assert!(
                !signal.has_changed().unwrap(),
                "a refused commit woke the feed"
            );
            // The embedded log keeps no snapshots and streams nothing (sqlite-es
            // streams unwrap errors in a spawned task).
            assert!(repository
                .persist::<Organization>(&[event(3)], Some((id.clone(), serde_json::json!({}), 1)))
                .await
                .is_err());
            assert!(repository.stream_events::<Organization>(&id).await.is_err());
            assert!(repository
                .stream_all_events::<Organization>()
                .await
                .is_err());
            assert_eq!(
                repository
                    .get_events::<Organization>(&id)
                    .await
                    .unwrap()
                    .len(),
                2
            );
        }

        // More events than one PostgreSQL statement carries (an import's, say)
        // still commit together and in order, each chained to the one before.
        let many: Vec<SerializedEvent> = (3..=150).map(event).collect();
        repository
            .persist::<Organization>(&many, None)
            .await
            .unwrap();
        let stored = repository.get_events::<Organization>(&id).await.unwrap();
        let sequences: Vec<usize> = stored.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=150).collect::<Vec<_>>());
        // Two aggregates' events committed together, the second part's
        // sequence taken behind seventy events of the first: none is written.
        let other = Uuid::new_v4().to_string();
        let fresh: Vec<SerializedEvent> = (1..=70)
            .map(|sequence| SerializedEvent {
                aggregate_id: other.clone(),
                ..event(sequence)
            })
            .collect();
        assert!(matches!(
            repository
                .persist_together(&[("organization", fresh), ("organization", vec![event(150)])])
                .await,
            Err(PersistenceError::OptimisticLockError)
        ));
        assert!(repository
            .get_events::<Organization>(&other)
            .await
            .unwrap()
            .is_empty());
    }
}

on_both_back_ends! {
    async fn concurrent_single_events_each_get_their_own_outcome(storage) {
        // On PostgreSQL single events of concurrent commands are committed
        // together: a lost race, or a gap, must still be told to its own
        // append only.
        let repository = Arc::new(EventRepository::new(&storage));
        let ids: Vec<String> = (0..40).map(|_| Uuid::new_v4().to_string()).collect();
        let event = |id: &str, sequence: usize| {
            SerializedEvent::new(
                id.to_owned(),
                sequence,
                "organization".into(),
                "Probe".into(),
                "1.0".into(),
                serde_json::json!({ "Probe": { "n": sequence } }),
                serde_json::json!({ "request_id": "group" }),
            )
        };
        for id in &ids {
            repository
                .persist::<Organization>(&[event(id, 1)], None)
                .await
                .unwrap();
        }
        // Every aggregate's second event, twice for every fourth one: of each
        // pair one is written and the other told it lost.
        let mut appends = tokio::task::JoinSet::new();
        for (n, id) in ids.iter().enumerate() {
            let copies = if n % 4 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                let (repository, event) = (repository.clone(), event(id, 2));
                appends.spawn(async move { repository.persist::<Organization>(&[event], None).await });
            }
        }
        let (mut written, mut lost) = (0, 0);
        while let Some(outcome) = appends.join_next().await {
            match outcome.unwrap() {
                Ok(()) => written += 1,
                Err(PersistenceError::OptimisticLockError) => lost += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((written, lost), (40, 10));

        // Every aggregate's third event, beside a gap (a fifth event) for one:
        // the gap is refused and nothing else.
        let mut appends = tokio::task::JoinSet::new();
        for (n, id) in ids.iter().enumerate() {
            let mut events = vec![event(id, 3)];
            if n == 1 {
                events.push(event(id, 5));
            }
            for event in events {
                let repository = repository.clone();
                appends.spawn(async move {
                    let sequence = event.sequence;
                    (sequence, repository.persist::<Organization>(&[event], None).await)
                });
            }
        }
        let (mut written, mut refused) = (0, 0);
        while let Some(outcome) = appends.join_next().await {
            match outcome.unwrap() {
                (3, Ok(())) => written += 1,
                (5, Err(PersistenceError::UnknownError(e))) => {
                    assert!(e.to_string().contains("no predecessor"), "{e}");
                    refused += 1;
                }
                (sequence, other) => panic!("event {sequence}: {other:?}"),
            }
        }
        assert_eq!((written, refused), (40, 1));
        for id in &ids {
            let stored = repository.get_events::<Organization>(id).await.unwrap();
            let sequences: Vec<usize> = stored.iter().map(|e| e.sequence).collect();
            assert_eq!(sequences, [1, 2, 3], "{id}");
        }
    }
}

/// Makes every email and slug claim look ten minutes old.
async fn age_claims(storage: &Database) {
    match storage.engine() {
        Engine::Postgres(pool) => {
            for table in ["email_claims", "organization_slugs"] {
                sqlx::query(&format!(
                    "UPDATE {table} SET claimed_at = now() - interval '10 minutes'"
                ))
                .execute(pool)
                .await
                .unwrap();
            }
        }
        Engine::Sqlite(db) => {
            let then = chrono::Utc::now() - chrono::Duration::minutes(10);
            for table in ["email_claims", "organization_slugs"] {
                sqlx::query(&format!("UPDATE {table} SET claimed_at = $1"))
                    .bind(then)
                    .execute(db.writer())
                    .await
                    .unwrap();
            }
        }
    }
}

on_both_back_ends! {
    async fn orphaned_email_and_slug_claims_are_taken_over_only_once_stale(storage) {
        let key = EmailIndexKey::generate();
        let claims = EmailClaims::new(&storage, key.clone());
        let slugs = SlugClaims::new(&storage);
        let email = Email::parse("orphan@example.com").unwrap();
        let slug = OrganizationSlug::parse("orphan").unwrap();
        // Claimed by a process that died before writing the account.
        assert!(claims.claim(&email, Uuid::new_v4()).await.unwrap());
        assert!(slugs.claim(&slug, Uuid::new_v4()).await.unwrap());

        // Fresh claims hold.
        let auth = auth_with_index_key(&storage, tokens(), key);
        let orgs = OrganizationService::new(&storage, tokens(), keys(&storage));
        assert!(matches!(
            auth.register(
                "orphan@example.com",
                Password::new(PASSWORD.into()),
                None,
                &ctx(None)
            )
            .await,
            Err(AuthError::EmailTaken)
        ));
        let owner = Uuid::new_v4();
        assert!(matches!(
            orgs.create(owner, "orphan", "Orphan", &ctx(Some(owner)))
                .await,
            Err(OrganizationError::SlugTaken)
        ));

        // Stale ones are taken over.
        age_claims(&storage).await;
        let user = auth
            .register(
                "orphan@example.com",
                Password::new(PASSWORD.into()),
                None,
                &ctx(None),
            )
            .await
            .unwrap()
            .user_id;
        assert_eq!(claims.lookup(&email).await.unwrap(), Some(user));
        let (org, _) = orgs
            .create(owner, "orphan", "Orphan", &ctx(Some(owner)))
            .await
            .unwrap();

        // A claim whose account or organization exists is never taken over.
        age_claims(&storage).await;
        assert!(!claims.claim(&email, Uuid::new_v4()).await.unwrap());
        assert!(!slugs.claim(&slug, Uuid::new_v4()).await.unwrap());
        assert_eq!(claims.lookup(&email).await.unwrap(), Some(user));
        // Only its holder can give a claim back.
        slugs.release(&slug, Uuid::new_v4()).await.unwrap();
        assert!(
            !slugs.claim(&slug, Uuid::new_v4()).await.unwrap(),
            "released by a stranger"
        );
        slugs.release(&slug, org).await.unwrap();
        assert!(slugs.claim(&slug, org).await.unwrap());

        // Erasure frees the address; nothing is left to convert.
        claims.release_account(user).await.unwrap();
        assert_eq!(claims.lookup(&email).await.unwrap(), None);
        assert_eq!(claims.convert_legacy_claims().await.unwrap(), 0);
    }
}

on_both_back_ends! {
    async fn expired_sessions_are_not_active_and_live_ones_are(storage) {
        let key = EmailIndexKey::generate();
        let tokens = tokens();
        let short = auth_with(
            &storage,
            tokens.clone(),
            key.clone(),
            AuthSettings {
                session_ttl: chrono::Duration::seconds(1),
                ..AuthSettings::default()
            },
        );
        let long = auth_with_index_key(&storage, tokens, key);
        let anon = ctx(None);
        let user = long
            .register(
                "expiry@example.com",
                Password::new(PASSWORD.into()),
                None,
                &anon,
            )
            .await
            .unwrap()
            .user_id;
        short
            .login_complete("expiry@example.com", Password::new(PASSWORD.into()), &anon)
            .await
            .unwrap();
        let live = long
            .login_complete("expiry@example.com", Password::new(PASSWORD.into()), &anon)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        // Only the live session is still active, so only it is ended.
        let suspension = long
            .suspend_user(user, "expiry", &ctx(Some(Uuid::new_v4())))
            .await
            .unwrap();
        assert_eq!(suspension.ended_sessions, vec![live.tokens.session_id]);
    }
}

/// PostgreSQL only by nature: clear-text claims predate migration 0004, and an
/// embedded database is created keyed (its `email_claims` has no `email`
/// column); the SQLite side's `convert_legacy_claims` answers 0 (see
/// `orphaned_email_and_slug_claims_are_taken_over_only_once_stale`).
#[tokio::test]
async fn legacy_clear_text_claims_are_converted_to_digests() {
    with_database(Backend::Postgres, |storage| async move {
        let pool = storage.postgres_pool().unwrap().clone();
        let user = Uuid::new_v4();
        sqlx::query("INSERT INTO email_claims (email, user_id) VALUES ('legacy@example.com', $1)")
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
        let claims = EmailClaims::new(&storage, EmailIndexKey::generate());
        assert_eq!(claims.convert_legacy_claims().await.unwrap(), 1);
        assert_eq!(claims.convert_legacy_claims().await.unwrap(), 0);
        let email = Email::parse("legacy@example.com").unwrap();
        assert_eq!(claims.lookup(&email).await.unwrap(), Some(user));
        assert_eq!(
            count(
                &storage,
                "SELECT count(*) FROM email_claims WHERE email IS NOT NULL"
            )
            .await,
            0
        );
    })
    .await;
}

on_both_back_ends! {
    #[multi_thread]
    async fn an_acceptance_racing_a_revocation_either_joins_or_is_refused_never_both(storage) {
        let orgs = Arc::new(OrganizationService::new(&storage, tokens(), keys(&storage)));
        let owner = Uuid::new_v4();
        let (org, _) = orgs
            .create(owner, "invite-race", "Race", &ctx(Some(owner)))
            .await
            .unwrap();
        let owner_permissions = BuiltInRole::Owner.permissions();
        for round in 0..8 {
            let invitee = Uuid::new_v4();
            let (invitation, _) = orgs
                .invite(
                    org,
                    &InvitationTarget::UserId(invitee),
                    Some(invitee),
                    roles(&[BuiltInRole::Member]),
                    &owner_permissions,
                    &ctx(Some(owner)),
                )
                .await
                .unwrap();
            let accepting = {
                let orgs = orgs.clone();
                tokio::spawn(async move {
                    orgs.accept_invitation(org, invitation, invitee, &ctx(Some(invitee)))
                        .await
                })
            };
            let revoking = {
                let orgs = orgs.clone();
                let granter = owner_permissions.clone();
                tokio::spawn(async move {
                    orgs.revoke_invitation(org, invitation, &granter, &ctx(Some(owner)))
                        .await
                })
            };
            let accepted = accepting.await.unwrap();
            let revoked = revoking.await.unwrap();
            match (&accepted, &revoked) {
                (Ok(_), Err(OrganizationError::InvitationNotFound))
                | (Err(OrganizationError::InvitationNotFound), Ok(_)) => {}
                other => panic!("round {round}: {other:?}"),
            }
            // The stored history agrees: the invitation, and the acceptance with its
            // MemberAdded exactly when the acceptance won.
            let naming = events_containing(&storage, &[&invitee.to_string()]).await;
            assert_eq!(naming, if accepted.is_ok() { 3 } else { 1 }, "round {round}");
        }
    }
}
