//! Shutdown coordination: one token every long-lived task watches, one
//! tracker every task registers with, and the OS signals that start it all.
//!
//! The sequence itself (refuse new work and fail readiness → close sockets
//! (1001) → drain in-flight HTTP → stop accepting → close the pool → stop
//! embedded PostgreSQL) is driven by
//! [`crate::startup::Application::run_until_stopped`].

use std::future::Future;

use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared shutdown state, cloned into every task.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    requests: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown: every task watching [`Shutdown::cancelled`] wakes.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started (then `/readyz` says `shutting_down`).
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has started; use in every `select!` of a long-lived loop.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// An owned token, for tasks that outlive a borrow.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The tracker for tasks shutdown must wait for (WebSocket sessions,
    /// background jobs): the HTTP server does not see upgraded sockets.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// In-flight HTTP requests (see [`crate::http::server::drain_gate`]).
    pub fn requests(&self) -> &TaskTracker {
        &self.requests
    }
}

/// Resolves on the first SIGINT or SIGTERM. A second signal afterwards ends the
/// process at once with status 130, whatever the drain is doing.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn signals() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut signals = signal_hook_tokio::Signals::new([SIGINT, SIGTERM])?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<i32>();
    tokio::spawn(async move {
        let Some(first) = signals.next().await else {
            return;
        };
        let _ = first_tx.send(first);
        if let Some(second) = signals.next().await {
            tracing::warn!(signal = second, "second signal: exiting at once");
            std::process::exit(130);
        }
    });
    Ok(async move {
        if let Ok(signal) = first_rx.await {
            let name = if signal == SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            tracing::info!(signal = name, "signal received, shutting down");
        }
    })
}
