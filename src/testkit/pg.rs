//! Raw PostgreSQL connections as the harness, beside the server's pool.
//!
//! Tests and benches look at the database from outside the app: what was
//! stored, which connections exist, and they break things on purpose (revoke a
//! role's login, terminate a backend). These connections are tagged with an
//! `application_name` that is never `chatpool`, so they are never counted as
//! the server's own.

use std::time::{Duration, Instant};

use super::cluster::{cluster, ADMIN_APP, ADMIN_TIMEOUT};

/// A connection to `url` as the harness, tagged `application_name` (never
/// `chatpool`, so never counted as the server's). It closes when the client
/// is dropped.
pub async fn sql_client(url: &str, application_name: &str) -> tokio_postgres::Client {
    let url = with_params(
        url,
        &[
            ("application_name".into(), application_name.into()),
            ("connect_timeout".into(), "10".into()),
        ],
    );
    connect(&url).await
}

/// Appends query parameters to a URL that may already have some (the app
/// reads its pool settings from `DATABASE_URL` parameters).
pub fn with_params(url: &str, params: &[(String, String)]) -> String {
    let mut out = url.to_owned();
    for (k, v) in params {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&format!("{k}={v}"));
    }
    out
}

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

/// Connects to `url` within [`ADMIN_TIMEOUT`], driving the connection on the
/// caller's runtime.
pub(crate) async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio::time::timeout(
        ADMIN_TIMEOUT,
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .expect("connecting to the test cluster timed out")
    .expect("harness connection");
    tokio::spawn(async move {
        // It ends with an error when a test terminates it on purpose.
        let _ = conn.await;
    });
    client
}
