//! The server's view of its own connections: `pg_stat_activity` for this
//! database, `max_connections`, and reaping idle backends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::result::Error;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

/// One server connection of this database (SPEC §2 `admin/connections`).
#[derive(Debug, Clone, Serialize, QueryableByName, utoipa::ToSchema)]
pub struct Connection {
    /// Backend process id.
    #[diesel(sql_type = Integer)]
    pub pid: i32,
    /// The client's `application_name` (`chatpool` for chatpool's own).
    #[diesel(sql_type = Text)]
    pub application_name: String,
    /// `active`, `idle`, `idle in transaction`, … (null when unknown).
    #[diesel(sql_type = Nullable<Text>)]
    pub state: Option<String>,
    /// When the backend entered its current state (its start if unknown).
    #[diesel(sql_type = Timestamptz)]
    #[serde(serialize_with = "crate::domain::serialize_time")]
    pub since: DateTime<Utc>,
}

/// The connections of the current database, oldest state first.
pub async fn connections(conn: &mut AsyncPgConnection) -> Result<Vec<Connection>, Error> {
    diesel::sql_query(
        "SELECT pid, COALESCE(application_name, '') AS application_name, state, \
           COALESCE(state_change, backend_start) AS since \
         FROM pg_stat_activity WHERE datname = current_database() \
         ORDER BY since, pid",
    )
    .load(conn)
    .await
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many server connections the current database has.
pub async fn connection_count(conn: &mut AsyncPgConnection) -> Result<i64, Error> {
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()",
    )
    .get_result(conn)
    .await?;
    Ok(row.n)
}

/// The server's `max_connections` (for every database together).
pub async fn max_connections(conn: &mut AsyncPgConnection) -> Result<i64, Error> {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        max_connections: String,
    }
    let row: Setting = diesel::sql_query("SHOW max_connections")
        .get_result(conn)
        .await?;
    Ok(row.max_connections.trim().parse().unwrap_or(0))
}

/// A connection [`reap_idle`] terminated.
#[derive(Debug, Clone, QueryableByName)]
pub struct Reaped {
    /// Backend process id.
    #[diesel(sql_type = Integer)]
    pub pid: i32,
    /// Its `application_name`.
    #[diesel(sql_type = Text)]
    pub application_name: String,
    /// The idle state it was in.
    #[diesel(sql_type = Text)]
    pub state: String,
}

/// Terminates the current database's connections that have been idle (or
/// idle in a transaction) for longer than `idle_for`, never the caller's own
/// backend; returns those that were terminated.
pub async fn reap_idle(
    conn: &mut AsyncPgConnection,
    idle_for: Duration,
) -> Result<Vec<Reaped>, Error> {
    let millis = i64::try_from(idle_for.as_millis()).unwrap_or(i64::MAX);
    diesel::sql_query(
        "SELECT pid, application_name, state FROM ( \
           SELECT pid, COALESCE(application_name, '') AS application_name, state, \
                  pg_terminate_backend(pid) AS terminated \
           FROM pg_stat_activity \
           WHERE datname = current_database() \
             AND pid <> pg_backend_pid() \
             AND state IN ('idle', 'idle in transaction', 'idle in transaction (aborted)') \
             AND state_change < now() - make_interval(secs => $1::double precision / 1000) \
         ) t WHERE terminated ORDER BY pid",
    )
    .bind::<BigInt, _>(millis)
    .load(conn)
    .await
}
