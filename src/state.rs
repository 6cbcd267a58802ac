//! [`AppState`]: what every HTTP handler and WebSocket session shares.

use std::sync::Arc;

use crate::chat::{Committer, CommitterLimits};
use crate::config::Settings;
use crate::db::Db;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::passwords::Passwords;
use crate::ratelimit::LoginLimiter;
use crate::shutdown::Shutdown;

/// Built once at startup and cloned (cheaply) into the router and every session.
/// It holds the process's only pool.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    db: Db,
    shutdown: Shutdown,
    hub: Hub,
    committer: Committer,
    passwords: Passwords,
    login_limiter: LoginLimiter,
    limits: Limits,
}

impl AppState {
    /// Assembles the state; called once by [`crate::startup::Application::build`].
    pub fn new(settings: Settings, db: Db, shutdown: Shutdown) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let hub = Hub::new();
        let limits = CommitterLimits::for_pool(
            settings.database.pool_max_size(),
            settings.database.max_wait,
        );
        let committer = Committer::spawn(db.clone(), hub.clone(), limits);
        let limits = Limits::new(&settings.abuse);
        Self {
            inner: Arc::new(Inner {
                settings,
                db,
                shutdown,
                hub,
                committer,
                passwords: Passwords::new(cores),
                login_limiter: LoginLimiter::default(),
                limits,
            }),
        }
    }

    /// The configuration the process started with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The database: all queries go through [`Db::transaction`].
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Shutdown signal and task tracker.
    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }
}

impl AppState {
    /// Fan-out of committed messages and session events.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The group commit every send goes through.
    pub fn committer(&self) -> &Committer {
        &self.inner.committer
    }

    /// Password hashing, bounded in concurrency.
    pub fn passwords(&self) -> &Passwords {
        &self.inner.passwords
    }

    /// Failed-login counters of this instance (429 `rate_limited`).
    pub fn login_limiter(&self) -> &LoginLimiter {
        &self.inner.login_limiter
    }

    /// The abuse limits (SPEC §6).
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }
}
