//! Superuser work on the shared test cluster: counting what only
//! cluster-wide views show, breaking things on purpose, waiting for the
//! server's connections to go.

use std::time::{Duration, Instant};

use super::cluster::cluster;
use super::pg::{sql_client, ADMIN_APP};

/// Runs a `SELECT count(*) …` (any single `bigint`) on the shared test
/// cluster as the harness: for `pg_stat_activity` and other cluster-wide views.
pub async fn admin_count(sql: &str) -> i64 {
    admin_client()
        .await
        .query_one(sql, &[])
        .await
        .expect("admin query")
        .get(0)
}

/// Runs statements on the shared test cluster as the harness: for what only
/// a superuser may do (`ALTER ROLE`, `pg_terminate_backend`).
pub async fn admin_exec(sql: &str) {
    admin_client()
        .await
        .batch_execute(sql)
        .await
        .expect("admin statement");
}

/// Creates a login role with a random name on the shared test cluster and
/// returns it, so one app's connections can be told apart from another's
/// (`usename` in `pg_stat_activity`). Roles are cluster-wide; each test makes
/// its own.
pub async fn create_role() -> String {
    let role = format!("r_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    admin_exec(&format!("CREATE ROLE {role} LOGIN SUPERUSER")).await;
    role
}

/// Waits (up to 5 s) until `database` on the shared test cluster has no
/// `application_name=chatpool` connections: a backend leaves
/// `pg_stat_activity` a moment after its client closed the socket, and
/// nothing announces it.
pub async fn wait_until_no_server_connections(database: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = cluster().connections_of(database, "chatpool").await;
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} chatpool connections still open on {database}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`sql_client`] to the shared cluster's `postgres` database.
async fn admin_client() -> tokio_postgres::Client {
    sql_client(&cluster().url("postgres"), ADMIN_APP).await
}
