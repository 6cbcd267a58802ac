//! Password hashing: Argon2id off the async workers, a bounded number at a
//! time.
//!
//! Hashing takes tens of milliseconds of CPU and 19 MiB of memory, so it runs
//! on a few dedicated threads (one per core): a burst of logins cannot starve
//! the async workers, it never runs inside a transaction (which would hold a
//! pooled connection), and its memory stays bounded. On tokio's blocking pool
//! every hash could land on a new thread, and the allocator keeps a
//! per-thread arena of each thread's 19 MiB: 100 registrations left the
//! process at over 600 MiB. With fixed threads the arenas are reused.
//! A failed login against an unknown user verifies against a decoy hash, so
//! it takes as long as one against a known user.

use std::sync::{mpsc, Arc, Mutex};

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::oneshot;

use crate::domain::Password;

type Job = Box<dyn FnOnce() + Send>;

/// Argon2id hashing off the async workers, on a fixed set of threads.
#[derive(Clone)]
pub struct Passwords {
    jobs: mpsc::Sender<Job>,
    /// A real hash to verify against when the user does not exist, so a
    /// failed login takes as long whether or not the username is known.
    decoy: Arc<str>,
}

impl Passwords {
    /// Starts `concurrency` hashing threads (at least one); they end when
    /// the last handle is dropped.
    pub fn new(concurrency: usize) -> Self {
        let salt =
            SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes is a valid salt");
        let decoy = Argon2::default()
            .hash_password(b"decoy password for unknown users", &salt)
            .expect("argon2 hashes")
            .to_string();
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..concurrency.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("chatpool-argon2-{n}"))
                .spawn(move || loop {
                    let job = queue.lock().map(|q| q.recv());
                    match job {
                        Ok(Ok(job)) => job(),
                        _ => return,
                    }
                })
                .expect("a hashing thread starts");
        }
        Self {
            jobs,
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
        let (reply, answer) = oneshot::channel();
        let span = tracing::Span::current();
        self.jobs
            .send(Box::new(move || {
                let _ = reply.send(span.in_scope(work));
            }))
            .ok()
            .context("password hashing is closed")?;
        answer.await.context("password hashing failed")?
    }
}
