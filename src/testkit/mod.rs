//! The test kit: everything `tests/` and `benches/` need to run the real
//! server against a real, throwaway PostgreSQL and to talk to it.
//!
//! It exists so that the integration tests and the load benchmark share one
//! implementation of each harness step (start a cluster, start the app, seed
//! data, open sockets, read `/proc`) instead of each keeping its own copy, and
//! so that they reach the server's internals only through the few small
//! functions here: the rest of the crate can then stay private to it.
//!
//! It is compiled only with the `testkit` cargo feature, which the package's
//! self dev-dependency turns on for `cargo test` and `cargo bench`; a release
//! build of the server contains none of it.
//!
//! Layout:
//! - [`cluster`]: throwaway PostgreSQL clusters and per-test databases;
//! - [`pg`]: raw PostgreSQL connections as the harness (never as the server);
//! - [`app`]: the server in this process ([`TestApp`]) or as the real binary;
//! - [`probe`]: what a test may look at or poke inside a running server;
//! - [`seed`]: users, tokens, roles, rooms and messages written straight to
//!   the database through the server's own pool;
//! - [`api`]: a typed client for the HTTP API; [`ws`]: a WebSocket client;
//! - [`process`]: resident memory and the open-files limit of this process;
//! - [`tls`]: a TLS-only cluster and a throwaway CA; [`pgbouncer`]: a real
//!   PgBouncer in transaction mode.

#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod app;
pub mod browser;
pub mod cluster;
pub mod pg;
pub mod pgbouncer;
pub mod probe;
pub mod process;
pub mod seed;
pub mod tls;
pub mod ws;

use std::time::Duration;

/// A user's role, as seeding and role changes take it.
pub use crate::domain::Role;
/// A message body that makes the send path panic in test builds (`faults`).
pub use crate::faults::PANIC_BODY;
pub use app::{spawn_app, AppOptions, BinaryServer, TestApp};
pub use cluster::{cluster, Cluster, ClusterOptions, TestDatabase};

/// Every test's overall bound, so a hung test fails instead of stalling the
/// suite; a test that needs longer says so itself.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `test` under [`TEST_TIMEOUT`], failing it when it takes longer.
pub async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time bound")
}
