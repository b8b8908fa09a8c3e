//! Organizations, their members, roles and service accounts.
//!
//! Isolation: every route under `/v1/organizations/{org_id}` first establishes the
//! caller's standing in that organization from the in-memory access view. Someone
//! who is not a member gets 404 `not_found` for the organization and for anything in
//! it (ids of another organization's roles, members or service accounts included),
//! exactly as if it did not exist; a member without the needed permission gets 403
//! `forbidden`. Platform administrators stand in every organization with `*`.

use std::collections::{BTreeMap, BTreeSet};

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::{AccessClaims, OrganizationError, SubjectKind};
use keyledger_domain::organization::RoleRef;
use keyledger_domain::permission::{BuiltInRole, Permission, PermissionSet};
use keyledger_projections::{AccessModel, Subject};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::endpoint;
use crate::openapi::{bearer, failures, json_body, unavailable};
use crate::resources::Routes;
use crate::state::{AppState, State};

/// Who the token speaks for, as the access view knows subjects.
pub fn subject_of(claims: &AccessClaims) -> Subject {
    match claims.kind {
        SubjectKind::User => Subject::User(claims.user_id),
        SubjectKind::ServiceAccount => Subject::ServiceAccount(claims.user_id),
    }
}

/// A path id; anything malformed is just another resource that does not exist.
pub fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// The caller's permissions in `org`: 404 unless a member (or platform admin); 403
/// when the caller's token is scoped to another organization.
///
/// Every route of an organization asks this, so this is where a token's scope is
/// enforced: a token scoped to one organization (handed to a module working there)
/// must not reach the subject's other organizations, as `authorize` already refuses
/// (`token_scoped_to_another_organization`). The scope is checked after the
/// membership, so someone who does not stand in `org` still learns nothing but 404.
pub fn standing(
    model: &AccessModel,
    claims: &AccessClaims,
    org: &Uuid,
) -> Result<PermissionSet, ApiError> {
    let held = unscoped_standing(model, claims, org)?;
    in_scope(claims, org)?;
    Ok(held)
}

/// 403 unless the token is unscoped or scoped to `org`.
pub fn in_scope(claims: &AccessClaims, org: &Uuid) -> Result<(), ApiError> {
    match claims.organization_id {
        Some(scoped) if scoped != *org => Err(ApiError::Forbidden),
        _ => Ok(()),
    }
}

fn unscoped_standing(
    model: &AccessModel,
    claims: &AccessClaims,
    org: &Uuid,
) -> Result<PermissionSet, ApiError> {
    let subject = subject_of(claims);
    if matches!(subject, Subject::User(id) if model.is_platform_admin(&id)) {
        if model.organization(org).is_none() {
            return Err(ApiError::NotFound);
        }
        return Ok(PermissionSet::parse(["*"]).expect("`*` is a permission"));
    }
    model
        .effective_permissions(subject, org)
        .ok_or(ApiError::NotFound)
}

/// 403 unless `held` allows `permission`.
pub fn require(held: &PermissionSet, permission: &str) -> Result<(), ApiError> {
    let wanted = Permission::parse(permission).expect("route permissions are valid");
    if held.allows(&wanted) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Takes an account out of every organization before it is erased, as it could
/// leave each itself, so that no organization keeps a member nobody can name. An
/// organization it is the last owner of must be given another owner first: the
/// erasure is refused (409 `last_owner`) before anything is written, as GitHub
/// refuses to delete the sole owner of an organization. Suspended organizations
/// accept no membership change and keep the membership (they grant nothing).
pub(crate) async fn leave_every_organization(
    state: &AppState,
    user: Uuid,
    ctx: &keyledger_commands::RequestContext,
) -> Result<(), ApiError> {
    let owner = RoleRef::BuiltIn(BuiltInRole::Owner);
    let memberships: Vec<(Uuid, PermissionSet)> = state.access.read(|m| {
        let mut leaving = Vec::new();
        for org in m.organizations_of(&user) {
            if org.suspended {
                continue;
            }
            let Some(member) = org.members.get(&user) else {
                continue;
            };
            let owners = org
                .members
                .values()
                .filter(|other| other.roles.contains(&owner))
                .count();
            if member.roles.contains(&owner) && owners == 1 {
                return Err(ApiError::Organization(OrganizationError::LastOwner));
            }
            let own = m.permissions_of_roles(&org.organization_id, &member.roles);
            leaving.push((org.organization_id, own));
        }
        Ok(leaving)
    })?;
    let mut written = Vec::with_capacity(memberships.len());
    for (org, own) in memberships {
        match state
            .organizations
            .remove_member(org, user, &own, ctx)
            .await
        {
            Ok(w) => written.push(w),
            // Left or suspended meanwhile.
            Err(OrganizationError::NotMember | OrganizationError::Suspended) => {}
            Err(e) => return Err(e.into()),
        }
    }
    state.settle_access(written).await;
    Ok(())
}

/// Checks the caller's standing and permission in one go, under one read lock.
pub(crate) fn authorize_in(
    state: &AppState,
    claims: &AccessClaims,
    org: &Uuid,
    permission: &str,
) -> Result<PermissionSet, ApiError> {
    let held = state.access.read(|m| standing(m, claims, org))?;
    require(&held, permission)?;
    Ok(held)
}

/// Role labels from a request: built-in names or custom role ids of this
/// organization (anything else is `unknown_role`).
pub(crate) fn parse_roles(
    model: &AccessModel,
    org: &Uuid,
    raw: &[String],
) -> Result<BTreeSet<RoleRef>, ApiError> {
    if raw.len() > 50 {
        return Err(invalid_roles());
    }
    raw.iter()
        .map(|label| {
            let role = RoleRef::parse_label(label).ok_or_else(|| {
                ApiError::bad_request(
                    "unknown_role",
                    "a role is a built-in name or a role id of this organization",
                )
            })?;
            match role {
                RoleRef::Custom(id) if model.role(org, &id).is_none() => {
                    Err(ApiError::bad_request(
                        "unknown_role",
                        "a role is a built-in name or a role id of this organization",
                    ))
                }
                _ => Ok(role),
            }
        })
        .collect()
}

pub(crate) fn labels(roles: &BTreeSet<RoleRef>) -> Vec<String> {
    roles.iter().map(RoleRef::label).collect()
}

// ---------------------------------------------------------------- organizations

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganizationRequest {
    /// Unique, 3 to 63 lower-case letters, digits and single hyphens.
    #[schema(example = "acme")]
    slug: String,
    /// 1 to 100 printable characters.
    #[schema(example = "Acme Corporation")]
    name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrganizationRequest {
    #[schema(example = "Acme Inc.")]
    name: Option<String>,
    /// Replaces all settings: up to 50 keys (`[a-z0-9_.-]`, ≤ 64 characters), values up
    /// to 1024 characters.
    settings: Option<BTreeMap<String, String>>,
}

/// An organization as its members see it.
#[derive(Serialize, ToSchema)]
pub struct OrganizationResponse {
    organization_id: Uuid,
    slug: String,
    name: String,
    settings: BTreeMap<String, String>,
    suspended: bool,
    created_at: DateTime<Utc>,
    /// The caller's roles in it (empty for a platform administrator who is not a member).
    my_roles: Vec<String>,
}

pub(crate) fn organization_response(
    model: &AccessModel,
    claims: &AccessClaims,
    org: &Uuid,
) -> Option<OrganizationResponse> {
    let view = model.organization(org)?;
    Some(OrganizationResponse {
        organization_id: view.organization_id,
        slug: view.slug.clone(),
        name: view.name.clone(),
        settings: view.settings.clone(),
        suspended: view.suspended,
        created_at: view.created_at,
        my_roles: model
            .roles_of(subject_of(claims), org)
            .map(labels)
            .unwrap_or_default(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct OrganizationList {
    organizations: Vec<OrganizationResponse>,
}

failures!(
    /// What `create_organization` can answer besides 201.
    pub CreateOrganizationFailures = [
        json_body(),
        bearer(),
        OrganizationError::InvalidSlug,
        OrganizationError::InvalidName,
        OrganizationError::SlugTaken,
        ApiError::Forbidden,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Create an organization
///
/// The caller becomes its first owner. Service accounts cannot create organizations.
#[utoipa::path(
    post,
    path = "",
    tag = "organizations",
    security(("bearer" = [])),
    request_body = CreateOrganizationRequest,
    responses(
        (status = 201, description = "Created; the caller is its owner.", body = OrganizationResponse),
        CreateOrganizationFailures,
    )
)]
pub async fn create_organization(
    state: State,
    ctx: Context,
    caller: Authenticated,
    body: web::Json<CreateOrganizationRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = caller.0;
    if claims.kind != SubjectKind::User {
        return Err(ApiError::Forbidden);
    }
    let ctx = ctx.acting_as(&claims);
    let (org, written) = state
        .organizations
        .create(claims.user_id, &body.slug, &body.name, &ctx)
        .await?;
    state.settle_access([written]).await;
    let response = state
        .access
        .read(|m| organization_response(m, &claims, &org));
    Ok(HttpResponse::Created().json(response))
}

failures!(
    /// What `list_organizations` can answer besides 200.
    pub ListOrganizationsFailures = [bearer()]
);

/// The caller's organizations
#[utoipa::path(
    get,
    path = "",
    tag = "organizations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every organization the caller belongs to.", body = OrganizationList),
        ListOrganizationsFailures,
    )
)]
pub async fn list_organizations(state: State, caller: Authenticated) -> HttpResponse {
    let claims = caller.0;
    let organizations = state.access.read(|m| {
        let ids: Vec<Uuid> = match subject_of(&claims) {
            Subject::User(id) => m
                .organizations_of(&id)
                .iter()
                .map(|o| o.organization_id)
                .collect(),
            Subject::ServiceAccount(id) => m
                .service_account_by_id(&id)
                .map(|sa| vec![sa.organization_id])
                .unwrap_or_default(),
        };
        // A scoped token sees its own organization only.
        let mut list: Vec<_> = ids
            .iter()
            .filter(|org| in_scope(&claims, org).is_ok())
            .filter_map(|org| organization_response(m, &claims, org))
            .collect();
        list.sort_by(|a, b| a.slug.cmp(&b.slug));
        list
    });
    HttpResponse::Ok().json(OrganizationList { organizations })
}

failures!(
    /// What `get_organization` can answer besides 200.
    pub GetOrganizationFailures = [bearer(), ApiError::NotFound, ApiError::Forbidden]
);

/// One organization
#[utoipa::path(
    get,
    path = "/{org_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to; any other answers 404.")),
    responses(
        (status = 200, description = "The organization.", body = OrganizationResponse),
        GetOrganizationFailures,
    )
)]
pub async fn get_organization(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    let claims = caller.0;
    authorize_in(&state, &claims, &org, "organization:read")?;
    let response = state
        .access
        .read(|m| organization_response(m, &claims, &org))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(response))
}

failures!(
    /// What `update_organization` can answer besides 200.
    pub UpdateOrganizationFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::InvalidName,
        OrganizationError::InvalidSettings,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Rename an organization or replace its settings
#[utoipa::path(
    patch,
    path = "/{org_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    request_body = UpdateOrganizationRequest,
    responses(
        (status = 200, description = "The organization after the change.", body = OrganizationResponse),
        UpdateOrganizationFailures,
    )
)]
pub async fn update_organization(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<UpdateOrganizationRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    let claims = caller.0;
    authorize_in(&state, &claims, &org, "organization:update")?;
    let body = body.into_inner();
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .update(org, body.name.as_deref(), body.settings, &ctx)
        .await?;
    state.settle_access(written).await;
    let response = state
        .access
        .read(|m| organization_response(m, &claims, &org))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(response))
}

// ---------------------------------------------------------------------- members

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// A live account.
    user_id: Uuid,
    /// Built-in role names (`owner`, `admin`, `member`, `auditor`) or custom role ids.
    #[schema(example = json!(["member"]))]
    roles: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRolesRequest {
    /// The member's new roles (replacing the old ones); at least one.
    #[schema(example = json!(["admin"]))]
    roles: Vec<String>,
}

/// A member of an organization.
#[derive(Serialize, ToSchema)]
pub struct MemberResponse {
    user_id: Uuid,
    email: Option<String>,
    display_name: Option<String>,
    roles: Vec<String>,
    /// When they joined.
    since: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberList {
    members: Vec<MemberResponse>,
}

/// Members with their names from the users read model (one query for all).
async fn members_of(
    state: &AppState,
    org: &Uuid,
    only: Option<Uuid>,
) -> Result<Vec<MemberResponse>, ApiError> {
    let members: Vec<(Uuid, Vec<String>, DateTime<Utc>)> = state.access.read(|m| {
        m.organization(org)
            .map(|o| {
                o.members
                    .iter()
                    .filter(|(id, _)| only.is_none_or(|u| u == **id))
                    .map(|(id, member)| (*id, labels(&member.roles), member.since))
                    .collect()
            })
            .unwrap_or_default()
    });
    let ids: Vec<Uuid> = members.iter().map(|(id, ..)| *id).collect();
    let names =
        state.queries.member_names(&ids).await.map_err(|e| {
            ApiError::Auth(keyledger_commands::AuthError::Unavailable(e.to_string()))
        })?;
    Ok(members
        .into_iter()
        .map(|(user_id, roles, since)| {
            let (email, display_name) = names
                .get(&user_id)
                .cloned()
                .map_or((None, None), |(e, n)| (Some(e), n));
            MemberResponse {
                user_id,
                email,
                display_name,
                roles,
                since,
            }
        })
        .collect())
}

failures!(
    /// What `add_member` can answer besides 201.
    pub AddMemberFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        unknown_role(),
        invalid_roles(),
        OrganizationError::UserNotFound,
        OrganizationError::AlreadyMember,
        OrganizationError::NoRoles,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// The answer to an oversized role list.
pub fn invalid_roles() -> ApiError {
    ApiError::bad_request("invalid_roles", "at most 50 roles")
}

/// The answer to a role label that names no role of this organization.
pub fn unknown_role() -> ApiError {
    ApiError::bad_request(
        "unknown_role",
        "a role is a built-in name or a role id of this organization",
    )
}

/// Add a member directly (platform administrators only)
///
/// For operators provisioning an organization: platform administrators can already
/// look up any account. Everyone else, organization owners and admins included, gets
/// 403 and invites instead (`POST /v1/organizations/{org_id}/invitations`), so that
/// nobody becomes a member, or is shown to an organization, without accepting. An
/// erased account is no account (422 `user_not_found`).
#[utoipa::path(
    post,
    path = "/{org_id}/members",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    request_body = AddMemberRequest,
    responses(
        (status = 201, description = "The new member.", body = MemberResponse),
        AddMemberFailures,
    )
)]
pub async fn add_member(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<AddMemberRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "members:manage")?;
    let operator = claims.kind == SubjectKind::User
        && state.access.read(|m| m.is_platform_admin(&claims.user_id));
    if !operator {
        return Err(ApiError::Forbidden);
    }
    let roles = state.access.read(|m| parse_roles(m, &org, &body.roles))?;
    if !state.auth.user_exists(body.user_id).await? {
        return Err(OrganizationError::UserNotFound.into());
    }
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .add_member(org, body.user_id, roles, &held, &ctx)
        .await?;
    state.settle_access([written]).await;
    let member = members_of(&state, &org, Some(body.user_id))
        .await?
        .pop()
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Created().json(member))
}

failures!(
    /// What `list_members` can answer besides 200.
    pub ListMembersFailures = [bearer(), ApiError::NotFound, ApiError::Forbidden, unavailable()]
);

/// The members of an organization
#[utoipa::path(
    get,
    path = "/{org_id}/members",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    responses(
        (status = 200, description = "Every member with their roles.", body = MemberList),
        ListMembersFailures,
    )
)]
pub async fn list_members(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    authorize_in(&state, &caller.0, &org, "members:read")?;
    let members = members_of(&state, &org, None).await?;
    Ok(HttpResponse::Ok().json(MemberList { members }))
}

failures!(
    /// What `remove_member` can answer besides 204.
    pub RemoveMemberFailures = [
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::LastOwner,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Remove a member
///
/// Needs `members:manage` and every permission the member holds; anyone may leave an
/// organization themselves. The last owner cannot be removed.
#[utoipa::path(
    delete,
    path = "/{org_id}/members/{user_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("user_id" = Uuid, Path, description = "A member of it; anyone else answers 404."),
    ),
    responses(
        (status = 204, description = "No longer a member."),
        RemoveMemberFailures,
    )
)]
pub async fn remove_member(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    let claims = caller.0;
    let held = state.access.read(|m| standing(m, &claims, &org))?;
    let user = path_id(&path.1)?;
    let (is_member, own_roles) = state.access.read(|m| {
        let roles = m.roles_of(Subject::User(user), &org).cloned();
        let own = m.permissions_of_roles(&org, &roles.clone().unwrap_or_default());
        (roles.is_some(), own)
    });
    let leaving = claims.kind == SubjectKind::User && claims.user_id == user;
    if !leaving {
        require(&held, "members:manage")?;
    }
    if !is_member {
        return Err(ApiError::NotFound);
    }
    // Leaving needs no permission: one can always give up what one holds.
    let granter = if leaving { own_roles } else { held };
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .remove_member(org, user, &granter, &ctx)
        .await?;
    state.settle_access([written]).await;
    Ok(HttpResponse::NoContent().finish())
}

failures!(
    /// What `set_member_roles` can answer besides 200.
    pub SetMemberRolesFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        unknown_role(),
        invalid_roles(),
        OrganizationError::NoRoles,
        OrganizationError::LastOwner,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Replace a member's roles
///
/// Needs `members:manage`, every permission the new roles grant and every permission
/// the member holds now. The last owner keeps the owner role.
#[utoipa::path(
    put,
    path = "/{org_id}/members/{user_id}/roles",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("user_id" = Uuid, Path, description = "A member of it; anyone else answers 404."),
    ),
    request_body = MemberRolesRequest,
    responses(
        (status = 200, description = "The member with the new roles.", body = MemberResponse),
        SetMemberRolesFailures,
    )
)]
pub async fn set_member_roles(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<(String, String)>,
    body: web::Json<MemberRolesRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "members:manage")?;
    let user = path_id(&path.1)?;
    let (is_member, roles) = state.access.read(|m| {
        (
            m.roles_of(Subject::User(user), &org).is_some(),
            parse_roles(m, &org, &body.roles),
        )
    });
    if !is_member {
        return Err(ApiError::NotFound);
    }
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .change_member_roles(org, user, roles?, &held, &ctx)
        .await?;
    state.settle_access(written).await;
    let member = members_of(&state, &org, Some(user))
        .await?
        .pop()
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(member))
}

// ------------------------------------------------------------------------ roles

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleRequest {
    #[schema(example = "billing")]
    name: String,
    /// `resource:action` strings; a trailing `*` covers a prefix.
    #[schema(example = json!(["invoices:read", "invoices:write"]))]
    permissions: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoleRequest {
    name: Option<String>,
    /// Replaces the role's permissions (`PermissionUpdated`).
    permissions: Option<Vec<String>>,
}

/// A role: built in (same everywhere, cannot change) or defined by the organization.
#[derive(Serialize, ToSchema)]
pub struct RoleResponse {
    /// The built-in name, or the custom role's id: what member role lists contain.
    role: String,
    role_id: Option<Uuid>,
    name: String,
    permissions: Vec<String>,
    built_in: bool,
    created_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct RoleList {
    roles: Vec<RoleResponse>,
}

/// The custom role of `org` a path names: by its id, or by its name when exactly
/// one role of the organization has that name (names are not unique: a shared
/// name is not found, and the role is reached by its id).
fn role_id_of(model: &AccessModel, org: &Uuid, raw: &str) -> Option<Uuid> {
    if let Ok(id) = raw.parse::<Uuid>() {
        return model.role(org, &id).map(|role| role.role_id);
    }
    let mut named = model
        .roles_of_organization(org)
        .into_iter()
        .filter(|role| role.name == raw);
    match (named.next(), named.next()) {
        (Some(role), None) => Some(role.role_id),
        _ => None,
    }
}

fn role_response(model: &AccessModel, org: &Uuid, role: &Uuid) -> Option<RoleResponse> {
    let view = model.role(org, role)?;
    Some(RoleResponse {
        role: view.role_id.to_string(),
        role_id: Some(view.role_id),
        name: view.name.clone(),
        permissions: view.permissions.iter().map(ToString::to_string).collect(),
        built_in: false,
        created_at: Some(view.created_at),
    })
}

failures!(
    /// What `create_role` can answer besides 201.
    pub CreateRoleFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::InvalidRoleName,
        OrganizationError::InvalidPermission,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Define a role
///
/// Needs `roles:manage` and every permission the role grants.
#[utoipa::path(
    post,
    path = "/{org_id}/roles",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    request_body = CreateRoleRequest,
    responses(
        (status = 201, description = "The new role.", body = RoleResponse),
        CreateRoleFailures,
    )
)]
pub async fn create_role(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<CreateRoleRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "roles:manage")?;
    let ctx = ctx.acting_as(&claims);
    let (role, written) = state
        .organizations
        .define_role(org, &body.name, &body.permissions, &held, &ctx)
        .await?;
    state.settle_access([written]).await;
    let response = state
        .access
        .read(|m| role_response(m, &org, &role))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Created().json(response))
}

failures!(
    /// What `list_roles` can answer besides 200.
    pub ListRolesFailures = [bearer(), ApiError::NotFound, ApiError::Forbidden]
);

/// The roles of an organization
///
/// The built-in roles first, then the organization's own.
#[utoipa::path(
    get,
    path = "/{org_id}/roles",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    responses(
        (status = 200, description = "Every role that can be assigned in it.", body = RoleList),
        ListRolesFailures,
    )
)]
pub async fn list_roles(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    authorize_in(&state, &caller.0, &org, "roles:read")?;
    let mut roles: Vec<RoleResponse> = BuiltInRole::ALL
        .into_iter()
        .map(|role| RoleResponse {
            role: role.name().to_owned(),
            role_id: None,
            name: role.name().to_owned(),
            permissions: role.permissions().iter().map(ToString::to_string).collect(),
            built_in: true,
            created_at: None,
        })
        .collect();
    let mut custom = state.access.read(|m| {
        m.roles_of_organization(&org)
            .iter()
            .filter_map(|r| role_response(m, &org, &r.role_id))
            .collect::<Vec<_>>()
    });
    custom.sort_by(|a, b| a.name.cmp(&b.name));
    roles.extend(custom);
    Ok(HttpResponse::Ok().json(RoleList { roles }))
}

failures!(
    /// What `get_role` can answer besides 200.
    pub GetRoleFailures = [bearer(), ApiError::NotFound, ApiError::Forbidden]
);

/// One custom role
#[utoipa::path(
    get,
    path = "/{org_id}/roles/{role_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("role_id" = String, Path, description = "A custom role of that organization, by its id or by its name (a name several of its roles share answers 404: use the id); any other answers 404."),
    ),
    responses(
        (status = 200, description = "The role.", body = RoleResponse),
        GetRoleFailures,
    )
)]
pub async fn get_role(
    state: State,
    caller: Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    authorize_in(&state, &caller.0, &org, "roles:read")?;
    let response = state
        .access
        .read(|m| role_id_of(m, &org, &path.1).and_then(|role| role_response(m, &org, &role)))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(response))
}

failures!(
    /// What `update_role` can answer besides 200.
    pub UpdateRoleFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::InvalidRoleName,
        OrganizationError::InvalidPermission,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Rename a role or replace its permissions
///
/// Needs `roles:manage` and every permission of the role, before and after. Everyone
/// holding the role is affected at once (`PermissionUpdated`, then
/// `EffectivePermissionsChanged` on NATS).
#[utoipa::path(
    patch,
    path = "/{org_id}/roles/{role_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("role_id" = String, Path, description = "A custom role of that organization, by its id or by its name (a name several of its roles share answers 404: use the id); any other answers 404."),
    ),
    request_body = UpdateRoleRequest,
    responses(
        (status = 200, description = "The role after the change.", body = RoleResponse),
        UpdateRoleFailures,
    )
)]
pub async fn update_role(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<(String, String)>,
    body: web::Json<UpdateRoleRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "roles:manage")?;
    let role = state
        .access
        .read(|m| role_id_of(m, &org, &path.1))
        .ok_or(ApiError::NotFound)?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .update_role(
            org,
            role,
            body.name.as_deref(),
            body.permissions.as_deref(),
            &held,
            &ctx,
        )
        .await?;
    state.settle_access(written).await;
    let response = state
        .access
        .read(|m| role_response(m, &org, &role))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(response))
}

failures!(
    /// What `delete_role` can answer besides 204.
    pub DeleteRoleFailures = [
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Delete a role
///
/// Needs `roles:manage` and every permission of the role. Members keep the role in
/// their list, but it grants nothing any more.
#[utoipa::path(
    delete,
    path = "/{org_id}/roles/{role_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("role_id" = String, Path, description = "A custom role of that organization, by its id or by its name (a name several of its roles share answers 404: use the id); any other answers 404."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        DeleteRoleFailures,
    )
)]
pub async fn delete_role(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "roles:manage")?;
    let role = state
        .access
        .read(|m| role_id_of(m, &org, &path.1))
        .ok_or(ApiError::NotFound)?;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .delete_role(org, role, &held, &ctx)
        .await?;
    state.settle_access([written]).await;
    Ok(HttpResponse::NoContent().finish())
}

// ------------------------------------------------------------- service accounts

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccountRequest {
    #[schema(example = "billing worker")]
    name: String,
    /// Built-in role names or custom role ids of this organization.
    #[schema(example = json!(["auditor"]))]
    roles: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountRolesRequest {
    roles: Vec<String>,
}

/// A machine identity of the organization.
#[derive(Serialize, ToSchema)]
pub struct ServiceAccountResponse {
    service_account_id: Uuid,
    /// The `client_id` for `POST /v1/auth/token`.
    client_id: String,
    name: String,
    roles: Vec<String>,
    created_at: DateTime<Utc>,
}

/// A service account with its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct ServiceAccountCredentials {
    #[serde(flatten)]
    account: ServiceAccountResponse,
    /// The `client_secret`; only its hash is kept, so it cannot be shown again.
    client_secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceAccountList {
    service_accounts: Vec<ServiceAccountResponse>,
}

fn service_account_response(
    model: &AccessModel,
    org: &Uuid,
    id: &Uuid,
) -> Option<ServiceAccountResponse> {
    let view = model.service_account(org, id)?;
    Some(ServiceAccountResponse {
        service_account_id: view.service_account_id,
        client_id: view.service_account_id.to_string(),
        name: view.name.clone(),
        roles: labels(&view.roles),
        created_at: view.created_at,
    })
}

failures!(
    /// What `create_service_account` can answer besides 201.
    pub CreateServiceAccountFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        unknown_role(),
        invalid_roles(),
        OrganizationError::InvalidName,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Create a service account
///
/// Needs `service-accounts:manage` and every permission its roles grant. The answer
/// carries the client secret, which is never shown again.
#[utoipa::path(
    post,
    path = "/{org_id}/service-accounts",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    request_body = CreateServiceAccountRequest,
    responses(
        (status = 201, description = "Created; `Cache-Control: no-store`.", body = ServiceAccountCredentials),
        CreateServiceAccountFailures,
    )
)]
pub async fn create_service_account(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<CreateServiceAccountRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "service-accounts:manage")?;
    let roles = state.access.read(|m| parse_roles(m, &org, &body.roles))?;
    let ctx = ctx.acting_as(&claims);
    let created = state
        .organizations
        .create_service_account(org, &body.name, roles, &held, &ctx)
        .await?;
    state.settle_access([created.written]).await;
    let account = state
        .access
        .read(|m| service_account_response(m, &org, &created.service_account_id))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(ServiceAccountCredentials {
            account,
            client_secret: created.client_secret.expose().to_owned(),
        }))
}

failures!(
    /// What `list_service_accounts` can answer besides 200.
    pub ListServiceAccountsFailures = [bearer(), ApiError::NotFound, ApiError::Forbidden]
);

/// The service accounts of an organization
#[utoipa::path(
    get,
    path = "/{org_id}/service-accounts",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    responses(
        (status = 200, description = "Every live service account (never a secret).", body = ServiceAccountList),
        ListServiceAccountsFailures,
    )
)]
pub async fn list_service_accounts(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    authorize_in(&state, &caller.0, &org, "service-accounts:read")?;
    let mut service_accounts = state.access.read(|m| {
        m.service_accounts_of(&org)
            .iter()
            .filter_map(|sa| service_account_response(m, &org, &sa.service_account_id))
            .collect::<Vec<_>>()
    });
    service_accounts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(HttpResponse::Ok().json(ServiceAccountList { service_accounts }))
}

failures!(
    /// What `get_service_account` can answer besides 200.
    pub GetServiceAccountFailures = [bearer(), ApiError::NotFound, ApiError::Forbidden]
);

/// One service account
#[utoipa::path(
    get,
    path = "/{org_id}/service-accounts/{service_account_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("service_account_id" = Uuid, Path, description = "One of its service accounts; any other answers 404."),
    ),
    responses(
        (status = 200, description = "The service account.", body = ServiceAccountResponse),
        GetServiceAccountFailures,
    )
)]
pub async fn get_service_account(
    state: State,
    caller: Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    authorize_in(&state, &caller.0, &org, "service-accounts:read")?;
    let id = path_id(&path.1)?;
    let response = state
        .access
        .read(|m| service_account_response(m, &org, &id))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(response))
}

failures!(
    /// What `set_service_account_roles` can answer besides 200.
    pub SetServiceAccountRolesFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        unknown_role(),
        invalid_roles(),
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Replace a service account's roles
#[utoipa::path(
    put,
    path = "/{org_id}/service-accounts/{service_account_id}/roles",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("service_account_id" = Uuid, Path, description = "One of its service accounts; any other answers 404."),
    ),
    request_body = ServiceAccountRolesRequest,
    responses(
        (status = 200, description = "The service account with its new roles.", body = ServiceAccountResponse),
        SetServiceAccountRolesFailures,
    )
)]
pub async fn set_service_account_roles(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<(String, String)>,
    body: web::Json<ServiceAccountRolesRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "service-accounts:manage")?;
    let id = path_id(&path.1)?;
    let (exists, roles) = state.access.read(|m| {
        (
            m.service_account(&org, &id).is_some(),
            parse_roles(m, &org, &body.roles),
        )
    });
    if !exists {
        return Err(ApiError::NotFound);
    }
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .change_service_account_roles(org, id, roles?, &held, &ctx)
        .await?;
    state.settle_access(written).await;
    let response = state
        .access
        .read(|m| service_account_response(m, &org, &id))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(response))
}

failures!(
    /// What `rotate_service_account_secret` can answer besides 200.
    pub RotateSecretFailures = [
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Issue a new client secret
///
/// The previous secret stops working at once, and so do the access tokens issued
/// with it (the secret may be rotated because it leaked). Tokens are dated in whole
/// seconds: those got right after the rotation are dated from the next second.
#[utoipa::path(
    post,
    path = "/{org_id}/service-accounts/{service_account_id}/secret",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("service_account_id" = Uuid, Path, description = "One of its service accounts; any other answers 404."),
    ),
    responses(
        (status = 200, description = "The new secret, shown once; `Cache-Control: no-store`.", body = ServiceAccountCredentials),
        RotateSecretFailures,
    )
)]
pub async fn rotate_service_account_secret(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "service-accounts:manage")?;
    let id = path_id(&path.1)?;
    let account = state
        .access
        .read(|m| service_account_response(m, &org, &id))
        .ok_or(ApiError::NotFound)?;
    let ctx = ctx.acting_as(&claims);
    let (secret, written) = state
        .organizations
        .rotate_service_account_secret(org, id, &held, &ctx)
        .await?;
    state.settle_access([written]).await;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(ServiceAccountCredentials {
            account,
            client_secret: secret.expose().to_owned(),
        }))
}

failures!(
    /// What `delete_service_account` can answer besides 204.
    pub DeleteServiceAccountFailures = [
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Delete a service account
///
/// Its secret stops working and its access tokens stop being accepted at once.
#[utoipa::path(
    delete,
    path = "/{org_id}/service-accounts/{service_account_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("service_account_id" = Uuid, Path, description = "One of its service accounts; any other answers 404."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        DeleteServiceAccountFailures,
    )
)]
pub async fn delete_service_account(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "service-accounts:manage")?;
    let id = path_id(&path.1)?;
    if state
        .access
        .read(|m| m.service_account(&org, &id).is_none())
    {
        return Err(ApiError::NotFound);
    }
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .delete_service_account(org, id, &held, &ctx)
        .await?;
    state.settle_access([written]).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the organization, member, role and service-account routes in
/// `/v1/organizations`. Operations sharing a path share one endpoint (see `Endpoint::also`).
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.organizations = routes
        .organizations
        .service(endpoint!(
            self::create_organization,
            self::list_organizations
        ))
        .service(endpoint!(self::get_organization, self::update_organization))
        .service(endpoint!(self::add_member, self::list_members))
        .service(endpoint!(self::remove_member))
        .service(endpoint!(self::set_member_roles))
        .service(endpoint!(self::create_role, self::list_roles))
        .service(endpoint!(
            self::get_role,
            self::update_role,
            self::delete_role
        ))
        .service(endpoint!(
            self::create_service_account,
            self::list_service_accounts
        ))
        .service(endpoint!(
            self::get_service_account,
            self::delete_service_account
        ))
        .service(endpoint!(self::set_service_account_roles))
        .service(endpoint!(self::rotate_service_account_secret));
    routes
}
