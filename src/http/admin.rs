//! Admin endpoints: users and roles, and what the process and the database
//! are doing with their connections.

use axum::extract::State;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::accounts::{limit_in, UsersResponse};
use super::extract::{AdminUser, Path};
use super::{Json, Query};
use crate::announce::commit_and_announce;
use crate::domain::{Role, UserView};
use crate::error::{ApiError, AuthErrors, ErrorBody, PublicErrors};
use crate::events::Event;
use crate::ids::UserId;
use crate::state::AppState;
use crate::store;
use crate::store::activity::Connection;

/// `GET /api/admin/users` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminUsersQuery {
    /// Users with an id above this (the last id of the previous page).
    #[param(value_type = i64, required = false)]
    after_id: Option<UserId>,
    /// At most this many (default 50).
    #[param(value_type = i64, required = false, minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// Default and largest page of `GET /api/admin/users`.
const ADMIN_USERS_LIMIT: (i64, i64) = (50, 200);

/// `GET /api/admin/users?after_id=N&limit=L`: users by id above N (keyset
/// pagination: pass the last id of a page to get the next).
#[utoipa::path(get, path = "/api/admin/users", tag = "admin", operation_id = "admin_users",
    params(AdminUsersQuery),
    responses(
        (status = 200, description = "Users by id", body = UsersResponse),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn users(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<AdminUsersQuery>,
) -> Result<Json<UsersResponse>, ApiError> {
    let limit = limit_in(q.limit, ADMIN_USERS_LIMIT)?;
    let after_id = q.after_id.unwrap_or_default();
    if after_id.0 < 0 {
        return Err(ApiError::BadRequest("after_id must not be negative".into()));
    }
    let users = state
        .db()
        .run(move |c| store::users::after_id(c, after_id, limit).boxed())
        .await?;
    Ok(Json(UsersResponse {
        users: users.iter().map(|u| u.view()).collect(),
    }))
}

/// `PATCH /api/admin/users/{id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PatchUserRequest {
    #[schema(value_type = Role)]
    role: String,
}

/// `PATCH /api/admin/users/{id}`: changes a role. Every token of the user
/// sees it on its next request (tokens carry no role). When the new role no
/// longer sees every room, the user's open sockets on every instance re-check
/// their joined rooms at once and leave those they may no longer see.
#[utoipa::path(patch, path = "/api/admin/users/{id}", tag = "admin",
    params(("id" = i64, Path, description = "User id")),
    request_body = PatchUserRequest,
    responses(
        (status = 200, description = "The user with the new role", body = UserView),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: the last admin", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(admin_id = user.id.0, user_id = id.0))]
pub async fn patch_user(
    State(state): State<AppState>,
    AdminUser(user): AdminUser,
    Path(id): Path<UserId>,
    Json(body): Json<PatchUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    let role = Role::parse(&body.role)?;
    let updated = commit_and_announce(state.db(), state.hub(), move |conn, outbox| {
        async move {
            if role != Role::Admin {
                let admins = store::users::lock_admins(conn).await?;
                if admins == [id] {
                    return Err(ApiError::Conflict(
                        "cannot demote the last admin; promote another first".into(),
                    ));
                }
            }
            let updated = store::users::set_role(conn, id, role).await?;
            // Always: cached tokens of the user must see the new role; sockets
            // re-check their rooms (only a demotion can take any away).
            if updated.is_some() {
                outbox.announce(Event::AccessChanged { user_id: id });
            }
            Ok::<_, ApiError>(updated)
        }
        .boxed()
    })
    .await?
    .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
    tracing::info!(role = role.as_str(), "role changed");
    Ok(Json(updated.view()))
}

/// `pool` in `admin/stats`: this process's pool right now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoolStats {
    /// `connection_limit - 1`.
    pub max_size: usize,
    /// Connections the pool holds.
    pub size: usize,
    /// Idle connections ready to hand out.
    pub available: usize,
    /// Callers waiting for one.
    pub waiting: usize,
}

/// `database` in `admin/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatabaseStats {
    /// Server connections of this database, every client included.
    pub connections: i64,
    /// The server's `max_connections` (shared by all its databases).
    pub max_connections: i64,
}

/// `GET /api/admin/stats` body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Number of users.
    pub users: i64,
    /// Number of rooms.
    pub rooms: i64,
    /// Number of messages.
    pub messages: i64,
    /// WebSocket sessions open on this instance.
    pub ws_sessions: usize,
    /// This process's pool.
    pub pool: PoolStats,
    /// The database server's view.
    pub database: DatabaseStats,
}

/// `GET /api/admin/stats`: counts, this process's pool and the database's
/// connections, in one transaction.
#[utoipa::path(get, path = "/api/admin/stats", tag = "admin",
    responses(
        (status = 200, description = "Pool and database figures", body = Stats),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn stats(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Result<Json<Stats>, ApiError> {
    let (users, rooms, messages, connections, max_connections) = state
        .db()
        .transaction(move |conn| {
            async move {
                Ok::<_, ApiError>((
                    store::users::count(conn).await?,
                    store::rooms::count(conn).await?,
                    store::messages::count(conn).await?,
                    store::activity::connection_count(conn).await?,
                    store::activity::max_connections(conn).await?,
                ))
            }
            .boxed()
        })
        .await?;
    // Read after the transaction so this request's own connection is back.
    let status = state.db().pool().status();
    Ok(Json(Stats {
        users,
        rooms,
        messages,
        ws_sessions: state.hub().session_count(),
        pool: PoolStats {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        },
        database: DatabaseStats {
            connections,
            max_connections,
        },
    }))
}

/// `GET /api/admin/connections` body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionsResponse {
    /// This database's server connections.
    pub connections: Vec<Connection>,
}

/// `GET /api/admin/connections`: `pg_stat_activity` for this database;
/// `since` is when the connection entered its current state.
#[utoipa::path(get, path = "/api/admin/connections", tag = "admin",
    responses(
        (status = 200, description = "This database's server connections", body = ConnectionsResponse),
        (status = 403, description = "`forbidden`: not an admin", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn connections(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Result<Json<ConnectionsResponse>, ApiError> {
    let connections = state
        .db()
        .run(move |c| store::activity::connections(c).boxed())
        .await?;
    Ok(Json(ConnectionsResponse { connections }))
}
