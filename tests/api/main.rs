//! Integration tests: one binary, one throwaway PostgreSQL cluster, a fresh
//! database per test, the real server on port 0.

mod cluster;
mod foundation;
mod helpers;
