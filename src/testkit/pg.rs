//! Raw PostgreSQL connections as the harness, beside the server's pool.
//!
//! Tests and benches look at the database from outside the app: what was
//! stored, which connections exist, and they break things on purpose (revoke a
//! role's login, terminate a backend). These connections are tagged with an
//! `application_name` that is never `chatpool`, so they are never counted as
//! the server's own.

use std::time::Duration;

/// `application_name` of the harness's own connections.
pub(crate) const ADMIN_APP: &str = "chatpool-tests";
/// Longest a harness connection or statement may take.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

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
