//! Integration tests: one binary, one throwaway PostgreSQL cluster, a fresh
//! database per test, the real server on port 0 (all from `chatpool::testkit`).

mod authz;
mod compose;
mod console;
mod contract;
mod conversation;
mod foundation;
mod group_commit;
mod hostile;
mod http_accounts;
mod http_admin;
mod http_messages;
mod http_rooms;
mod instances;
mod limits;
mod operations;
mod pgbouncer;
mod presence;
mod seeds;
mod shutdown;
mod tls;
mod tokens;
mod ws_access;
mod ws_delivery;
mod ws_limits;
mod ws_protocol;

/// Path of the built `chatpool` binary, for the tests that run it as a
/// separate process (only an integration test knows it).
fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_chatpool")
}
