//! chatpool: a real-time chat backend whose WebSocket sessions and HTTP
//! handlers share one bounded PostgreSQL pool.
//!
//! The public surface is what a binary or an embedder needs: [`cli::main`]
//! (the `chatpool` command), [`Settings`] and [`Application`] (build, then
//! `run_until_stopped`), and, behind the `testkit` feature that only tests
//! and benches enable, the test kit. Everything else is private.
//!
//! Layout, edge to core (an arrow is "uses"; nothing points back up):
//!
//! - Edges: `cli` (the command line) → `manage` (operator commands);
//!   `http` (the HTTP API, ops endpoints, `/metrics`; `http::conversation`
//!   and `http::search`: SPEC §5; `http::console`: the page at `/` and the
//!   reference client, `console/` compiled in; `http::openapi`: the
//!   router and its OpenAPI document from one list; `http::cors`) and `ws` (upgrade,
//!   `ws::session`: the socket loop, `frames` (the pure per-frame rules) and
//!   `jobs` (join replay, gap fill, access re-check), `protocol`, `close`,
//!   `cursor`); `error`: the error every client sees.
//! - Wiring: `startup` builds the one `state::AppState` (pool, hub,
//!   committer, passwords, limits, shutdown) and runs the server; `shutdown`
//!   owns the signals and the staged stop; `config`: typed settings
//!   (`config::vars`: every setting's variable, flag and default, which the
//!   command line is built from; `config::database_url`: Prisma and libpq
//!   URLs).
//! - The send path and fan-out: `chat` (one send path; `chat::batch`: the
//!   group commit), `conversation` (after the send, SPEC §5: `reads`, the
//!   read markers; `edits`, edits and deletes), `announce` (commit, then
//!   announce: `NOTIFY` inside the transaction, local publish after it),
//!   `hub` (fan-out of committed events to sockets; knows events, not
//!   frames; `hub::conversation`: SPEC §5's events; `hub::presence`: who
//!   has a socket in which room here;
//!   `hub::recent`: the listener's copies of this instance's events told
//!   apart), `presence` (the task that stores this instance's share of
//!   presence, batched, under a lease, and announces who comes and goes),
//!   `listener` (the one `LISTEN` connection feeding the hub every
//!   instance's commits; `listener::senders`: who may announce), `events`.
//! - Who is calling: `auth` (bearer tokens), `tokens` (the token cache),
//!   `expiry` (expired tokens deleted and announced as revoked), `passwords`
//!   (Argon2id off the async workers), `ratelimit` (login failures),
//!   `limits` (the abuse limits: send, register, room and socket rates).
//! - Data: `db` (the one pool; `Db::transaction` and `Db::run` are the only
//!   ways in, with the wait limit, the time limit and the error codes;
//!   `db::migrations`; `db::channel`: the key that signs notifications;
//!   `db::tls`: rustls with libpq's `sslmode` meanings),
//!   `store` (every query, one module per table group: `search` is the
//!   full-text search, `presence` the leases), `schema`, `domain`
//!   (values parsed at the edge, the SPEC's objects), `ids` (id newtypes).
//! - `embedded`: the private PostgreSQL cluster used without `DATABASE_URL`
//!   (discovery, runner, data directory, init, adopt, server, log tail).
//! - `metrics` (names and the recorder), `telemetry` (logging), `faults`
//!   (a panic hook that only test builds arm).

mod announce;
mod auth;
mod chat;
pub mod cli;
mod config;
mod conversation;
mod db;
mod domain;
mod embedded;
mod error;
mod events;
mod expiry;
mod faults;
mod http;
mod hub;
mod ids;
mod limits;
mod listener;
mod manage;
mod metrics;
mod passwords;
mod presence;
mod ratelimit;
mod schema;
mod shutdown;
mod startup;
mod state;
mod store;
mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tokens;
mod ws;

pub use config::Settings;
pub use startup::Application;
