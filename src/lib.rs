//! chatpool: a real-time chat backend whose WebSocket sessions and HTTP
//! handlers share one bounded PostgreSQL pool.
//!
//! Layout:
//! - [`cli`]: the `chatpool` command line; [`config`]: typed settings.
//! - [`startup`]: builds the [`state::AppState`] once and runs the server.
//! - [`db`]: the one pool and the one entry point for database work, with the
//!   wait limit, the transaction timeout and the error codes; [`schema`]: tables.
//! - [`embedded`]: the private PostgreSQL cluster used without `DATABASE_URL`.
//! - [`domain`]: typed values parsed at the edge and the SPEC's JSON objects;
//!   [`store`]: the queries; [`auth`]: tokens, passwords, the caller.
//! - [`chat`]: the one send path; [`hub`]: fan-out to sockets;
//!   [`listener`]: the LISTEN connection that feeds the hub every instance's commits.
//! - [`http`]: the HTTP API; [`error`]: the error every client sees.
//! - [`ws`]: the WebSocket protocol (upgrade, sessions, frames).
//! - [`shutdown`]: signals and the shutdown token/tracker.
//! - [`metrics`], [`telemetry`]: Prometheus metrics and logging.
//! - [`ratelimit`]: failed-login throttling; [`manage`]: the operator commands.

pub mod announce;
pub mod auth;
pub mod chat;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod events;
pub mod http;
pub mod hub;
pub mod ids;
pub mod listener;
pub mod manage;
pub mod metrics;
pub mod passwords;
pub mod ratelimit;
pub mod schema;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod ws;

pub use config::Settings;
pub use startup::Application;
