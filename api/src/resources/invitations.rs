//! Invitations: the only way an account joins an organization.
//!
//! An administrator invites an account id or an email address; the invitee sees
//! the invitation among their own (`/v1/users/me/invitations`) and accepts or
//! declines it. Until they accept, the organization learns nothing about them:
//! the answer to an invitation is the same whether or not the id or address
//! names an account (one that names none simply never becomes acceptable by
//! anyone), its listing shows only what the inviter typed, and an erased
//! account never counts as one.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_commands::{InvitationTarget, OrganizationError, SubjectKind};
use keyledger_domain::Email;
use keyledger_projections::{AccessModel, InvitationView};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Authenticated, Context};
use crate::openapi::endpoint;
use crate::openapi::{bearer, failures, json_body, unavailable};
use crate::resources::organizations::{
    authorize_in, invalid_roles, labels, organization_response, parse_roles, path_id, unknown_role,
    OrganizationResponse,
};
use crate::resources::Routes;
use crate::state::{AppState, State};

/// An invitation names exactly one of `user_id` and `email`.
pub fn invalid_invitee() -> ApiError {
    ApiError::bad_request("invalid_invitee", "name exactly one of user_id and email")
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The account to invite (or give `email`).
    user_id: Option<Uuid>,
    /// The address to invite (or give `user_id`): whoever holds an account with it
    /// now can accept.
    #[schema(example = "ada@example.com")]
    email: Option<String>,
    /// Built-in role names (`owner`, `admin`, `member`, `auditor`) or custom role
    /// ids, given on acceptance.
    #[schema(example = json!(["member"]))]
    roles: Vec<String>,
}

/// A pending invitation as the organization sees it: only what the inviter typed.
#[derive(Serialize, ToSchema)]
pub struct InvitationResponse {
    invitation_id: Uuid,
    /// The id typed by the inviter (`null` for an invitation by email).
    user_id: Option<Uuid>,
    /// The address typed by the inviter, normalised (`null` for an invitation by id).
    email: Option<String>,
    roles: Vec<String>,
    invited_by: Uuid,
    created_at: DateTime<Utc>,
    /// After this instant it can no longer be accepted.
    expires_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct InvitationList {
    invitations: Vec<InvitationResponse>,
}

/// An invitation as its invitee sees it.
#[derive(Serialize, ToSchema)]
pub struct MyInvitation {
    invitation_id: Uuid,
    organization_id: Uuid,
    organization_slug: String,
    organization_name: String,
    roles: Vec<String>,
    invited_by: Uuid,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct MyInvitationList {
    invitations: Vec<MyInvitation>,
}

async fn invitation_response(
    state: &AppState,
    view: &InvitationView,
) -> Result<InvitationResponse, ApiError> {
    let (user_id, email) = match state.organizations.typed_address(&view.address).await? {
        InvitationTarget::UserId(id) => (Some(id), None),
        InvitationTarget::Email(email) => (None, Some(email)),
    };
    Ok(InvitationResponse {
        invitation_id: view.invitation_id,
        user_id,
        email,
        roles: labels(&view.roles),
        invited_by: view.invited_by,
        created_at: view.created_at,
        expires_at: view.expires_at,
    })
}

/// The live account an invitation's target names, if any; an erased account names
/// nobody. An address costs the same work whatever the outcome: without an
/// account behind it, a stand-in account is loaded as the real one would be.
async fn resolve(state: &AppState, target: &InvitationTarget) -> Result<Option<Uuid>, ApiError> {
    Ok(match target {
        InvitationTarget::UserId(id) => state.auth.user_exists(*id).await?.then_some(*id),
        InvitationTarget::Email(raw) => {
            Email::parse(raw).map_err(|_| OrganizationError::InvalidEmail)?;
            let found = state.auth.find_user_id(raw).await?;
            if found.is_none() {
                state.auth.user_exists(Uuid::nil()).await?;
            }
            found
        }
    })
}

failures!(
    /// What `invite` can answer besides 201.
    pub InviteFailures = [
        json_body(),
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        invalid_invitee(),
        OrganizationError::InvalidEmail,
        unknown_role(),
        invalid_roles(),
        OrganizationError::NoRoles,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Invite someone
///
/// Needs `members:manage`, and the caller must hold every permission the roles grant.
/// The answer is the same whether or not the id or address belongs to an account;
/// only the account it names (now) can see and accept the invitation, which expires
/// after `KEYLEDGER_INVITATION_TTL_SECS`.
#[utoipa::path(
    post,
    path = "/{org_id}/invitations",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    request_body = InviteRequest,
    responses(
        (status = 201, description = "The invitation, as typed.", body = InvitationResponse),
        InviteFailures,
    )
)]
pub async fn invite(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
    body: web::Json<InviteRequest>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "members:manage")?;
    let body = body.into_inner();
    let target = match (body.user_id, body.email) {
        (Some(id), None) => InvitationTarget::UserId(id),
        (None, Some(email)) => InvitationTarget::Email(email),
        _ => return Err(invalid_invitee()),
    };
    let roles = state.access.read(|m| parse_roles(m, &org, &body.roles))?;
    let invitee = resolve(&state, &target).await?;
    let ctx = ctx.acting_as(&claims);
    let (invitation, written) = state
        .organizations
        .invite(org, &target, invitee, roles, &held, &ctx)
        .await?;
    state.settle_access([written]).await;
    let view = state
        .access
        .read(|m| pending_in(m, &org, &invitation).cloned())
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Created().json(invitation_response(&state, &view).await?))
}

/// A pending invitation of `org`.
fn pending_in<'m>(model: &'m AccessModel, org: &Uuid, id: &Uuid) -> Option<&'m InvitationView> {
    model.organization(org)?.invitations.get(id)
}

failures!(
    /// What `list_invitations` can answer besides 200.
    pub ListInvitationsFailures = [bearer(), ApiError::NotFound, ApiError::Forbidden, unavailable()]
);

/// The pending invitations of an organization
///
/// Needs `members:manage`. Shows only what each inviter typed, never anything of the
/// invitee; expired invitations are left out.
#[utoipa::path(
    get,
    path = "/{org_id}/invitations",
    tag = "organizations",
    security(("bearer" = [])),
    params(("org_id" = Uuid, Path, description = "An organization the caller belongs to.")),
    responses(
        (status = 200, description = "Invitations not yet answered, revoked or expired.", body = InvitationList),
        ListInvitationsFailures,
    )
)]
pub async fn list_invitations(
    state: State,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path)?;
    authorize_in(&state, &caller.0, &org, "members:manage")?;
    let now = Utc::now();
    let mut pending: Vec<InvitationView> = state.access.read(|m| {
        m.organization(&org)
            .map(|o| {
                o.invitations
                    .values()
                    .filter(|i| i.expires_at > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    });
    pending.sort_by_key(|i| (i.created_at, i.invitation_id));
    let mut invitations = Vec::with_capacity(pending.len());
    for view in &pending {
        invitations.push(invitation_response(&state, view).await?);
    }
    Ok(HttpResponse::Ok().json(InvitationList { invitations }))
}

failures!(
    /// What `revoke_invitation` can answer besides 204.
    pub RevokeInvitationFailures = [
        bearer(),
        ApiError::NotFound,
        ApiError::Forbidden,
        OrganizationError::CannotGrant,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Revoke an invitation
///
/// Needs `members:manage` and every permission the invitation would grant.
#[utoipa::path(
    delete,
    path = "/{org_id}/invitations/{invitation_id}",
    tag = "organizations",
    security(("bearer" = [])),
    params(
        ("org_id" = Uuid, Path, description = "An organization the caller belongs to."),
        ("invitation_id" = Uuid, Path, description = "A pending invitation of it; anything else answers 404."),
    ),
    responses(
        (status = 204, description = "Revoked; it can no longer be accepted."),
        RevokeInvitationFailures,
    )
)]
pub async fn revoke_invitation(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let org = path_id(&path.0)?;
    let claims = caller.0;
    let held = authorize_in(&state, &claims, &org, "members:manage")?;
    let invitation = path_id(&path.1)?;
    if state
        .access
        .read(|m| pending_in(m, &org, &invitation).is_none())
    {
        return Err(ApiError::NotFound);
    }
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .revoke_invitation(org, invitation, &held, &ctx)
        .await?;
    state.settle_access([written]).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Only people have invitations.
fn invitee_of(caller: &Authenticated) -> Result<Uuid, ApiError> {
    if caller.0.kind == SubjectKind::User {
        Ok(caller.0.user_id)
    } else {
        Err(ApiError::Forbidden)
    }
}

failures!(
    /// What `my_invitations` can answer besides 200.
    pub MyInvitationsFailures = [bearer(), ApiError::Forbidden]
);

/// My pending invitations
///
/// Every invitation addressed to the caller's account (by id, or by the address it
/// had when invited) that can still be accepted.
#[utoipa::path(
    get,
    path = "/me/invitations",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Pending invitations, oldest first.", body = MyInvitationList),
        MyInvitationsFailures,
    )
)]
pub async fn my_invitations(state: State, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let me = invitee_of(&caller)?;
    let now = Utc::now();
    let mut invitations: Vec<MyInvitation> = state.access.read(|m| {
        m.invitations_of(&me)
            .into_iter()
            .filter(|i| i.expires_at > now)
            .filter_map(|i| {
                let org = m.organization(&i.organization_id)?;
                Some(MyInvitation {
                    invitation_id: i.invitation_id,
                    organization_id: org.organization_id,
                    organization_slug: org.slug.clone(),
                    organization_name: org.name.clone(),
                    roles: labels(&i.roles),
                    invited_by: i.invited_by,
                    created_at: i.created_at,
                    expires_at: i.expires_at,
                })
            })
            .collect()
    });
    invitations.sort_by_key(|i| (i.created_at, i.invitation_id));
    Ok(HttpResponse::Ok().json(MyInvitationList { invitations }))
}

/// The organization of a pending invitation addressed to `me`; 404 for anyone
/// else's, and for an account that no longer counts.
async fn my_invitation(state: &AppState, me: Uuid, raw: &str) -> Result<Uuid, ApiError> {
    let invitation = path_id(raw)?;
    let org = state.access.read(|m| {
        m.invitations_of(&me)
            .into_iter()
            .find(|i| i.invitation_id == invitation)
            .map(|i| i.organization_id)
    });
    let org = org.ok_or(OrganizationError::InvitationNotFound)?;
    if !state.auth.user_exists(me).await? {
        return Err(OrganizationError::InvitationNotFound.into());
    }
    Ok(org)
}

failures!(
    /// What `accept_invitation` can answer besides 200.
    pub AcceptInvitationFailures = [
        bearer(),
        ApiError::Forbidden,
        OrganizationError::InvitationNotFound,
        OrganizationError::InvitationExpired,
        OrganizationError::AlreadyMember,
        OrganizationError::Suspended,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Accept an invitation
///
/// The caller becomes a member with the invited roles. Only the invitee can accept,
/// only while the invitation is pending and unexpired and the organization active.
#[utoipa::path(
    post,
    path = "/me/invitations/{invitation_id}/accept",
    tag = "users",
    security(("bearer" = [])),
    params(("invitation_id" = Uuid, Path, description = "One of the caller's pending invitations; any other answers 404.")),
    responses(
        (status = 200, description = "The organization the caller now belongs to.", body = OrganizationResponse),
        AcceptInvitationFailures,
    )
)]
pub async fn accept_invitation(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let me = invitee_of(&caller)?;
    let org = my_invitation(&state, me, &path).await?;
    let invitation = path_id(&path)?;
    let claims = caller.0;
    let ctx = ctx.acting_as(&claims);
    let written = state
        .organizations
        .accept_invitation(org, invitation, me, &ctx)
        .await?;
    state.settle_access([written]).await;
    let response = state
        .access
        .read(|m| organization_response(m, &claims, &org))
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(response))
}

failures!(
    /// What `decline_invitation` can answer besides 204.
    pub DeclineInvitationFailures = [
        bearer(),
        ApiError::Forbidden,
        OrganizationError::InvitationNotFound,
        OrganizationError::InvitationExpired,
        OrganizationError::Conflict,
        unavailable(),
    ]
);

/// Decline an invitation
#[utoipa::path(
    post,
    path = "/me/invitations/{invitation_id}/decline",
    tag = "users",
    security(("bearer" = [])),
    params(("invitation_id" = Uuid, Path, description = "One of the caller's pending invitations; any other answers 404.")),
    responses(
        (status = 204, description = "Declined; it can no longer be accepted."),
        DeclineInvitationFailures,
    )
)]
pub async fn decline_invitation(
    state: State,
    ctx: Context,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let me = invitee_of(&caller)?;
    let org = my_invitation(&state, me, &path).await?;
    let invitation = path_id(&path)?;
    let ctx = ctx.acting_as(&caller.0);
    let written = state
        .organizations
        .decline_invitation(org, invitation, me, &ctx)
        .await?;
    state.settle_access([written]).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Registers the invitations: an account holder's own in `/v1/users`, an
/// organization's in `/v1/organizations`.
pub(crate) fn routes(mut routes: Routes) -> Routes {
    routes.users = routes
        .users
        .service(endpoint!(self::my_invitations))
        .service(endpoint!(self::accept_invitation))
        .service(endpoint!(self::decline_invitation));
    routes.organizations = routes
        .organizations
        .service(endpoint!(self::invite, self::list_invitations))
        .service(endpoint!(self::revoke_invitation));
    routes
}
