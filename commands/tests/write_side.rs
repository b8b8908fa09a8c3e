//! The write side against a real PostgreSQL: organizations, service accounts,
//! suspension and organization-scoped tokens. Each test creates and drops its own
//! database.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use keyledger_commands::{
    AuthError, AuthService, AuthSettings, HasherSettings, MembershipLookup, OrganizationError,
    OrganizationService, Password, PasswordHasher, PersonalDataSealer, PgDataKeyStore,
    RequestContext, SubjectKind, TokenIssuer, TokenSettings,
};
use keyledger_domain::organization::RoleRef;
use keyledger_domain::permission::{BuiltInRole, PermissionSet};
use keyledger_domain::EmailIndexKey;
use sqlx::{Connection, Executor, PgPool};
use uuid::Uuid;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs `test` on a fresh, migrated database and drops it afterwards, also when
/// the test fails.
async fn with_database<F, Fut>(test: F)
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = format!(
        "keyledger_test_{}",
        &Uuid::new_v4().simple().to_string()[..16]
    );
    let mut admin = sqlx::PgConnection::connect(&format!("{SERVER}/postgres"))
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let pool = PgPool::connect(&format!("{SERVER}/{name}")).await.unwrap();
    sqlx::migrate!("../migrations").run(&pool).await.unwrap();
    let outcome = AssertUnwindSafe(test(pool.clone())).catch_unwind().await;
    pool.close().await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn tokens() -> Arc<TokenIssuer> {
    let (secret, _) = TokenIssuer::generate_key().unwrap();
    let settings = TokenSettings {
        issuer: "https://keyledger.test".into(),
        audience: "platform".into(),
        access_ttl: std::time::Duration::from_secs(900),
    };
    Arc::new(TokenIssuer::new(&secret, &[], settings).unwrap())
}

/// The data keys personal fields are sealed with (decision 0009).
fn keys(pool: &PgPool) -> Arc<PersonalDataSealer> {
    Arc::new(PersonalDataSealer::new(PgDataKeyStore::new(pool.clone())))
}

fn auth(pool: PgPool, tokens: Arc<TokenIssuer>) -> AuthService {
    let hasher = PasswordHasher::new(&HasherSettings {
        memory_kib: 1024,
        iterations: 1,
        ..HasherSettings::default()
    })
    .unwrap();
    AuthService::new(
        pool.clone(),
        hasher,
        tokens,
        AuthSettings::default(),
        keys(&pool),
        EmailIndexKey::generate(),
    )
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
}

#[tokio::test]
async fn admins_manage_members_but_cannot_grant_what_they_do_not_hold() {
    with_database(|pool| async move {
        let orgs = OrganizationService::new(pool.clone(), tokens(), keys(&pool));
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
    })
    .await;
}

#[tokio::test]
async fn service_accounts_trade_their_secret_for_a_scoped_token() {
    with_database(|pool| async move {
        let tokens = tokens();
        let orgs = OrganizationService::new(pool.clone(), tokens.clone(), keys(&pool));
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
    })
    .await;
}

#[tokio::test]
async fn suspension_ends_sessions_and_blocks_login_only_for_the_right_password() {
    with_database(|pool| async move {
        let auth = auth(pool, tokens());
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
            .login("alice@example.com", Password::new(PASSWORD.into()), &anon)
            .await
            .unwrap();
        let second = auth
            .login("alice@example.com", Password::new(PASSWORD.into()), &anon)
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
            auth.login("alice@example.com", Password::new(PASSWORD.into()), &anon)
                .await,
            Err(AuthError::AccountSuspended)
        ));
        assert!(matches!(
            auth.login(
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
        auth.login("alice@example.com", Password::new(PASSWORD.into()), &anon)
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
    })
    .await;
}

#[tokio::test]
async fn a_session_scoped_to_an_organization_keeps_its_scope_while_a_member() {
    with_database(|pool| async move {
        let tokens = tokens();
        let auth = auth(pool, tokens.clone());
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
            .login("carol@example.com", Password::new(PASSWORD.into()), &anon)
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
    })
    .await;
}

#[tokio::test]
async fn no_session_outlives_an_erasure_even_when_logins_race_it() {
    with_database(|pool| async move {
        let auth = Arc::new(auth(pool.clone(), tokens()));
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
                    auth.login("racer@example.com", Password::new(PASSWORD.into()), &ctx)
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
        let alive: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events s
              WHERE s.event_type = 'SessionStarted'
                AND s.payload -> 'SessionStarted' ->> 'user_id' = $1
                AND NOT EXISTS (SELECT 1 FROM events e
                                 WHERE e.aggregate_type = 'session'
                                   AND e.aggregate_id = s.aggregate_id
                                   AND e.event_type IN ('SessionRevoked', 'UserLoggedOut'))",
        )
        .bind(user.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(alive, 0, "a session outlived the erasure");
        assert!(matches!(
            auth.login(
                "racer@example.com",
                Password::new(PASSWORD.into()),
                &from_a_browser
            )
            .await,
            Err(AuthError::InvalidCredentials | AuthError::TooManyAttempts { .. })
        ));
        assert_eq!(auth.find_user_id("racer@example.com").await.unwrap(), None);

        // Nothing the browser sent is in the log in clear, and the key is gone.
        let clear: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events
              WHERE payload::text LIKE '%racer@%' OR payload::text LIKE '%Racer%'
                 OR metadata::text LIKE '%198.51.100.23%' OR metadata::text LIKE '%RaceBrowser%'
                 OR payload::text LIKE '%198.51.100.23%' OR payload::text LIKE '%RaceBrowser%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(clear, 0);
        let key: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT key FROM user_data_keys WHERE owner_id = $1")
                .bind(user)
                .fetch_one(&pool)
                .await
                .unwrap();
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
    })
    .await;
}

#[tokio::test]
async fn opening_never_mints_a_key_and_an_erased_owner_gets_no_new_one() {
    with_database(|pool| async move {
        let sealer = PersonalDataSealer::new(PgDataKeyStore::new(pool.clone()));
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
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM user_data_keys")
            .fetch_one(&pool)
            .await
            .unwrap();
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
        let fresh = PersonalDataSealer::new(PgDataKeyStore::new(pool.clone()));
        assert!(fresh
            .seal(owner, keyledger_domain::Field::Ip, "192.0.2.8")
            .await
            .unwrap()
            .is_none());
    })
    .await;
}
