//! Integration tests: one binary, one throwaway PostgreSQL cluster, a fresh
//! database per test, the real server on port 0.

mod api_client;
mod authz;
mod cluster;
mod foundation;
mod helpers;
mod http_accounts;
mod http_admin;
mod http_messages;
mod http_rooms;
mod instances;
mod shutdown;
mod ws_access;
mod ws_delivery;
mod ws_limits;
mod ws_protocol;
mod ws_support;
