//! Embedded schema migrations, applied under an advisory lock.
//!
//! Several instances may start at once against one database; an advisory
//! lock makes them take turns, and the second finds nothing to do.

use diesel::pg::Pg;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncMigrationHarness, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::Db;

/// The migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory-lock key that serialises migrations across instances ("chatpool").
const LOCK_KEY: i64 = 0x0063_6861_7470_6f6f;

/// Pause between attempts at the migration lock while another instance holds it.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

/// Applies pending migrations and returns the versions applied (empty when up to date).
///
/// Runs on a pooled connection, which keeps its pool slot throughout and goes
/// back to the pool afterwards, so the process never exceeds its connection
/// limit. Needs the multi-threaded tokio runtime (the harness blocks in place).
///
/// # Errors
/// Acquisition failures, a failing migration, or lock errors.
pub async fn run_pending(db: &Db) -> anyhow::Result<Vec<String>> {
    let work = Work::RunPending;
    match db.direct() {
        Some((driver, tls, limit)) => {
            let conn = super::pool::connect(driver, tls, *limit).await?;
            with_lock(conn, db.schema(), work).await
        }
        None => with_lock(db.acquire().await?, db.schema(), work).await,
    }
}

/// Reverts every migration (for tests of the down migrations).
///
/// # Errors
/// As [`run_pending`].
#[cfg(any(test, feature = "testkit"))]
pub async fn revert_all(db: &Db) -> anyhow::Result<Vec<String>> {
    with_lock(db.acquire().await?, db.schema(), Work::RevertAll).await
}

/// Reverts the latest `n` migrations (for tests of upgrades on a database
/// already holding data).
///
/// # Errors
/// As [`run_pending`].
#[cfg(any(test, feature = "testkit"))]
pub async fn revert_latest(db: &Db, n: usize) -> anyhow::Result<Vec<String>> {
    with_lock(db.acquire().await?, db.schema(), Work::RevertLatest(n)).await
}

/// What to do under the lock.
#[derive(Clone, Copy)]
enum Work {
    RunPending,
    #[cfg_attr(not(any(test, feature = "testkit")), allow(dead_code))]
    RevertAll,
    #[cfg_attr(not(any(test, feature = "testkit")), allow(dead_code))]
    RevertLatest(usize),
}

/// Runs `work` on `conn` under the advisory lock, in `schema` (created first
/// if missing).
async fn with_lock<C>(conn: C, schema: Option<&str>, work: Work) -> anyhow::Result<Vec<String>>
where
    C: AsyncConnection<Backend = Pg> + Send + 'static,
{
    let mut conn = conn;
    // Waiting for another instance's migrations, and a migration itself, may
    // take longer than any request: no statement timeout until done.
    diesel::sql_query("SET statement_timeout = 0")
        .execute(&mut conn)
        .await?;
    // Polled, not waited for: a session waiting in `pg_advisory_lock` is in
    // a statement and holds a snapshot, which a `CREATE INDEX CONCURRENTLY`
    // of the instance holding the lock would wait for: a deadlock.
    loop {
        let got: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind::<BigInt, _>(LOCK_KEY)
            .get_result(&mut conn)
            .await?;
        if got.locked {
            break;
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
    if let Some(schema) = schema {
        // A name made of letters, digits and `_` only (config checks it).
        diesel::sql_query(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut conn)
            .await?;
    }
    let mut harness = AsyncMigrationHarness::new(conn);
    let versions = match work {
        Work::RunPending => harness
            .run_pending_migrations(MIGRATIONS)
            .map(|v| v.iter().map(ToString::to_string).collect()),
        Work::RevertAll => harness
            .revert_all_migrations(MIGRATIONS)
            .map(|v| v.iter().map(ToString::to_string).collect()),
        Work::RevertLatest(n) => (0..n)
            .map(|_| {
                harness
                    .revert_last_migration(MIGRATIONS)
                    .map(|v| v.to_string())
            })
            .collect(),
    };
    let outcome = versions.map_err(|e| anyhow::anyhow!("migration failed: {e}"));
    let mut conn = harness.into_inner();
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(LOCK_KEY)
        .execute(&mut conn)
        .await?;
    diesel::sql_query("RESET statement_timeout")
        .execute(&mut conn)
        .await?;
    outcome
}
