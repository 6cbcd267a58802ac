//! Who is calling: bearer tokens, password hashing, and the [`AuthUser`]
//! extractor.
//!
//! Tokens are 256 random bits shown to the client once and stored only as a
//! SHA-256 hash. Every request looks its token up (one indexed query), so a
//! logout or a role change applies at once. Argon2id hashing runs on the
//! blocking pool behind a semaphore, so a burst of logins cannot starve the
//! async workers or hold pooled connections while it hashes.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use futures_util::FutureExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::db::DbError;
use crate::domain::{AuthorView, Password, Role, UserView};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;

/// The authenticated caller of a request or a WebSocket session.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// User id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
    /// Role when the token was checked.
    pub role: Role,
    /// The token used, so logout can revoke exactly it.
    pub token_id: i64,
}

impl AuthUser {
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
/// `unauthorized` for an unknown or revoked token; database errors as such.
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
    let found = state
        .db()
        .transaction(move |conn| {
            async move { Ok::<_, DbError>(store::tokens::lookup(conn, &hash).await?) }.boxed()
        })
        .await?;
    match found {
        Some((token_id, stored, user)) if bool::from(stored.ct_eq(&hash)) => {
            let view = user.view();
            let caller = AuthUser {
                id: user.id,
                role: user.role(),
                username: user.username,
                display_name: user.display_name,
                token_id,
            };
            Ok((caller, view))
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

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        authenticate(state, token).await
    }
}

/// Argon2id hashing off the async workers, a bounded number at a time.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A real hash to verify against when the user does not exist, so a
    /// failed login takes as long whether or not the username is known.
    decoy: Arc<str>,
}

impl Passwords {
    /// At most `concurrency` hashes run at once.
    pub fn new(concurrency: usize) -> Self {
        let salt =
            SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes is a valid salt");
        let decoy = Argon2::default()
            .hash_password(b"decoy password for unknown users", &salt)
            .expect("argon2 hashes")
            .to_string();
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            decoy: decoy.into(),
        }
    }

    /// Hashes a password (PHC string).
    ///
    /// # Errors
    /// When the blocking task fails.
    pub async fn hash(&self, password: Password) -> Result<String, ApiError> {
        self.blocking(move || {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
            Argon2::default()
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
        })
        .await
    }

    /// Whether `password` matches `stored` (or the decoy when `stored` is `None`,
    /// which never matches).
    ///
    /// # Errors
    /// When the blocking task fails.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<bool, ApiError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.decoy.to_string());
        let matches = self
            .blocking(move || {
                let parsed =
                    PasswordHash::new(&stored).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
                Ok(Argon2::default()
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok())
            })
            .await?;
        Ok(known && matches)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(ApiError::Internal)
    }
}
