//! Password hashing: Argon2id off the async workers, a bounded number at a
//! time.
//!
//! Hashing takes tens of milliseconds of CPU, so it runs on the blocking pool
//! behind a semaphore: a burst of logins cannot starve the async workers, and
//! it never runs inside a transaction (which would hold a pooled connection).
//! A failed login against an unknown user verifies against a decoy hash, so
//! it takes as long as one against a known user.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::domain::Password;

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
    pub async fn hash(&self, password: Password) -> anyhow::Result<String> {
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
    pub async fn verify(&self, password: Password, stored: Option<String>) -> anyhow::Result<bool> {
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
    ) -> anyhow::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hashing is closed")?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .context("password hashing task failed")?
    }
}
