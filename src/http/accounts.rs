//! Accounts: register, login, logout, the caller, and the user directory.
//!
//! Password hashing never runs inside a transaction: a transaction holds a
//! pooled connection, and argon2 takes tens of milliseconds of CPU.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::extract::ClientAddr;
use super::{Json, Query};
use crate::announce::commit_and_announce;
use crate::auth::{new_token, AuthUser};
use crate::domain::{DisplayName, Password, Role, UserView, Username};
use crate::error::{ApiError, AuthErrors, ErrorBody, PublicErrors};
use crate::events::Event;
use crate::state::AppState;
use crate::store;
use crate::store::users::NewUser;

/// `POST /api/auth/register` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    #[schema(pattern = "^[a-z0-9_.-]{3,32}$")]
    username: String,
    #[schema(min_length = 8, max_length = 256)]
    password: String,
    #[schema(min_length = 1, max_length = 64)]
    display_name: Option<String>,
}

/// `POST /api/auth/login` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    username: String,
    password: String,
}

/// A new token (shown only here) and its user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    token: String,
    user: UserView,
}

/// `POST /api/auth/register`: creates a member and logs them in (201).
///
/// At most `CHATPOOL_REGISTER_RATE` per client address per minute (429
/// past it, before any work). Nothing the client typed is logged: only the
/// new user's id.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered and logged in", body = TokenResponse),
        (status = 403, description = "`forbidden`: registration is closed", body = ErrorBody),
        (status = 409, description = "`conflict`: username taken", body = ErrorBody),
        PublicErrors,
    ))]
pub async fn register(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Json(body): Json<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.settings().registration_open {
        return Err(ApiError::Forbidden("registration is closed".into()));
    }
    if let Some(addr) = addr {
        state
            .limits()
            .register
            .check(&addr)
            .map_err(ApiError::RateLimited)?;
    }
    let username = Username::parse(&body.username)?;
    let password = Password::parse(&body.password)?;
    let display_name = match body.display_name.as_deref() {
        Some(raw) => DisplayName::parse(raw)?,
        None => DisplayName::parse(username.as_str())?,
    };
    let hash = state.passwords().hash(password).await?;
    let (token, token_hash) = new_token();
    let user = state
        .db()
        .transaction(move |conn| {
            async move {
                let new = NewUser {
                    username: username.as_str(),
                    display_name: display_name.as_str(),
                    role: Role::Member,
                    password_hash: &hash,
                };
                let user = store::users::insert(conn, &new)
                    .await?
                    .ok_or_else(|| ApiError::Conflict("username is taken".into()))?;
                store::tokens::insert(conn, user.id, &token_hash).await?;
                Ok::<_, ApiError>(user.view())
            }
            .boxed()
        })
        .await?;
    tracing::info!(user_id = user.id.0, "user registered");
    Ok((StatusCode::CREATED, Json(TokenResponse { token, user })))
}

/// `POST /api/auth/login`: a new token for a correct username and password.
///
/// Each attempt takes a place under the per-username and per-address limits
/// before the password is checked ([`crate::ratelimit`]); past the limit the
/// answer is 429 before any work is done. A username or password that could never be
/// valid is a failed login, not a 400, so the rules of the day do not lock out
/// older accounts or tell an attacker anything. The log names the user's id,
/// never what was typed (a password typed into the username field must not
/// end up in the log).
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A new token", body = TokenResponse),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
        PublicErrors,
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Json(body): Json<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let valid_name = Username::parse(&body.username).ok();
    let key = valid_name.as_ref().map(Username::as_str);
    let attempt = state
        .login_limiter()
        .begin(key, addr)
        .await
        .map_err(ApiError::RateLimited)?;
    let (Some(username), Ok(password)) = (valid_name.clone(), Password::parse(&body.password))
    else {
        attempt.failed();
        tracing::info!("login failed: no such user");
        return Err(ApiError::InvalidCredentials);
    };
    let name = username.as_str().to_owned();
    let user = state
        .db()
        .run(move |c| async move { store::users::by_username(c, &name).await }.boxed())
        .await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let matches = state.passwords().verify(password, stored).await?;
    let user = match user {
        Some(user) if matches => user,
        found => {
            attempt.failed();
            match found {
                Some(user) => tracing::info!(user_id = user.id.0, "login failed: wrong password"),
                None => tracing::info!("login failed: no such user"),
            }
            return Err(ApiError::InvalidCredentials);
        }
    };
    let (token, token_hash) = new_token();
    let user_id = user.id;
    state
        .db()
        .run(move |c| async move { store::tokens::insert(c, user_id, &token_hash).await }.boxed())
        .await?;
    attempt.succeeded();
    tracing::info!(user_id = user_id.0, "logged in");
    Ok(Json(TokenResponse {
        token,
        user: user.view(),
    }))
}

/// `POST /api/auth/logout` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogoutQuery {
    /// `true`: every token of the caller, not only this one.
    #[serde(default)]
    all: bool,
}

/// `POST /api/auth/logout[?all=true]`: deletes the caller's token (with
/// `all=true`, every token of the caller: every device) and closes their
/// sockets on every instance.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    params(LogoutQuery),
    responses((status = 204, description = "Logged out"), PublicErrors, AuthErrors),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(user_id = user.id.0))]
pub async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<LogoutQuery>,
) -> Result<StatusCode, ApiError> {
    let (token_id, user_id, all) = (user.token_id, user.id, q.all);
    commit_and_announce(state.db(), state.hub(), move |conn, outbox| {
        async move {
            let revoked = if all {
                store::tokens::delete_all_of(conn, user_id).await?
            } else {
                store::tokens::delete(conn, token_id).await?;
                vec![token_id]
            };
            for token_id in revoked {
                outbox.announce(Event::Revoked { token_id });
            }
            Ok::<_, ApiError>(())
        }
        .boxed()
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/me`: the caller's user object.
#[utoipa::path(get, path = "/api/me", tag = "auth",
    responses((status = 200, description = "The caller", body = UserView), PublicErrors, AuthErrors),
    security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<UserView>, ApiError> {
    let id = user.id;
    let found = state
        .db()
        .run(move |c| store::users::by_id(c, id).boxed())
        .await?;
    // The token was valid a moment ago; the user was deleted since.
    found.map(|u| Json(u.view())).ok_or(ApiError::Unauthorized)
}

/// `GET /api/users` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Usernames starting with this.
    #[param(value_type = String, required = false)]
    prefix: Option<String>,
    /// At most this many (default 20).
    #[param(value_type = i64, required = false, minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A list of users.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsersResponse {
    /// The users, in the endpoint's order.
    pub users: Vec<UserView>,
}

/// Default and largest page of `GET /api/users`.
const USERS_LIMIT: (i64, i64) = (20, 100);

/// `GET /api/users?prefix=P&limit=N`: users whose username starts with `P`
/// (lowercased; empty or absent = everyone), by username, at most N.
#[utoipa::path(get, path = "/api/users", tag = "users",
    params(UsersQuery),
    responses((status = 200, description = "Users by username", body = UsersResponse), PublicErrors, AuthErrors),
    security(("bearer" = [])))]
pub async fn users(
    State(state): State<AppState>,
    _user: AuthUser,
    Query(q): Query<UsersQuery>,
) -> Result<Json<UsersResponse>, ApiError> {
    let limit = limit_in(q.limit, USERS_LIMIT)?;
    let prefix = q.prefix.unwrap_or_default().trim().to_lowercase();
    crate::domain::no_nul("prefix", &prefix)?;
    if prefix.chars().count() > 32 {
        return Err(ApiError::BadRequest(
            "prefix must be at most 32 characters".into(),
        ));
    }
    let users = state
        .db()
        .transaction(move |c| {
            async move {
                store::users::custom_plans(c).await?;
                Ok::<_, ApiError>(store::users::with_prefix(c, &prefix, limit).await?)
            }
            .boxed()
        })
        .await?;
    Ok(Json(UsersResponse {
        users: users.iter().map(|u| u.view()).collect(),
    }))
}

/// `limit` checked against `(default, max)`: 1 ≤ limit ≤ max.
pub(super) fn limit_in(limit: Option<i64>, (default, max): (i64, i64)) -> Result<i64, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {max}"
        ))),
    }
}
