//! Who is calling: bearer tokens and the [`AuthUser`] they resolve to.
//!
//! Tokens are 256 random bits shown to the client once and stored only as a
//! SHA-256 hash. A request's token is resolved from the in-process cache
//! ([`crate::tokens`]) while the listener keeps it right, else with one
//! indexed query; either way a logout or a role change applies at once. Password hashing lives in
//! [`crate::passwords`]; the HTTP extractor in `http::extract`.

use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use std::time::Duration;

use futures_util::FutureExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{AuthorView, Role, UserView};
use crate::error::ApiError;
use crate::ids::{TokenId, UserId};
use crate::state::AppState;
use crate::store;

/// The authenticated caller of a request or a WebSocket session.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// User id.
    pub id: UserId,
    /// Login name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
    /// Role when the token was checked.
    pub role: Role,
    /// The token used, so logout can revoke exactly it.
    pub token_id: TokenId,
}

impl AuthUser {
    /// The caller `user`, authenticated by `token_id`.
    pub fn of(user: &UserView, token_id: TokenId) -> Self {
        AuthUser {
            id: user.id,
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            role: user.role,
            token_id,
        }
    }

    /// The author object of messages this user sends.
    pub fn author(&self) -> AuthorView {
        AuthorView {
            id: self.id,
            username: self.username.clone(),
            display_name: self.display_name.clone(),
        }
    }

    /// # Errors
    /// `forbidden` unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("admins only".into()))
        }
    }
}

/// A fresh token and the hash to store.
pub fn new_token() -> (String, [u8; 32]) {
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

/// SHA-256 of a token as presented.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Resolves a presented token to its user.
///
/// # Errors
/// `unauthorized` for an unknown, revoked or expired token (one issued more
/// than `CHATPOOL_TOKEN_TTL` ago); database errors as such.
pub async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    authenticate_user(state, token)
        .await
        .map(|(caller, _)| caller)
}

/// Resolves a presented token to its user, with the user object (the
/// WebSocket `hello` carries it), in one query.
///
/// # Errors
/// As [`authenticate`].
pub async fn authenticate_user(
    state: &AppState,
    token: &str,
) -> Result<(AuthUser, UserView), ApiError> {
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::Unauthorized);
    }
    let hash = hash_token(token);
    let cache = state.hub().tokens();
    if let Some((token_id, view)) = cache.get(&hash) {
        return Ok((AuthUser::of(&view, token_id), view));
    }
    let seen = cache.generation();
    let ttl = state.settings().token_ttl;
    let found = state
        .db()
        .run(move |c| async move { store::tokens::lookup(c, &hash, ttl).await }.boxed())
        .await?;
    match found {
        Some(found) if bool::from(found.hash.ct_eq(&hash)) => {
            let view = found.user.view();
            let expires_in = Duration::try_from_secs_f64(found.seconds_left).unwrap_or_default();
            cache.insert(hash, found.id, view.clone(), expires_in, seen);
            Ok((AuthUser::of(&view, found.id), view))
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// The token from `Authorization: Bearer TOKEN`, if present.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
