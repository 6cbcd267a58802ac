//! Embedded schema migrations, applied under an advisory lock.
//!
//! Several instances may start at once against one database; the
//! `pg_advisory_lock` makes them take turns, and the second finds nothing to do.

use diesel::sql_types::BigInt;
use diesel_async::{AsyncMigrationHarness, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::{Db, PooledConn};

/// The migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory-lock key that serialises migrations across instances ("chatpool").
const LOCK_KEY: i64 = 0x0063_6861_7470_6f6f;

/// Applies pending migrations and returns the versions applied (empty when up to date).
///
/// Runs on a pooled connection, which keeps its pool slot throughout and goes
/// back to the pool afterwards, so the process never exceeds its connection
/// limit. Needs the multi-threaded tokio runtime (the harness blocks in place).
///
/// # Errors
/// Acquisition failures, a failing migration, or lock errors.
pub async fn run_pending(db: &Db) -> anyhow::Result<Vec<String>> {
    with_lock(db.acquire().await?, |h| {
        h.run_pending_migrations(MIGRATIONS)
            .map(|v| v.iter().map(ToString::to_string).collect())
    })
    .await
}

/// Reverts every migration (for tests of the down migrations).
///
/// # Errors
/// As [`run_pending`].
#[cfg(any(test, feature = "testkit"))]
pub async fn revert_all(db: &Db) -> anyhow::Result<Vec<String>> {
    with_lock(db.acquire().await?, |h| {
        h.revert_all_migrations(MIGRATIONS)
            .map(|v| v.iter().map(ToString::to_string).collect())
    })
    .await
}

type Harness = AsyncMigrationHarness<PooledConn>;
type MigrationResult = diesel::migration::Result<Vec<String>>;

async fn with_lock(
    conn: PooledConn,
    work: impl FnOnce(&mut Harness) -> MigrationResult,
) -> anyhow::Result<Vec<String>> {
    let mut conn = conn;
    // Waiting for another instance's migrations, and a migration itself, may
    // take longer than any request: no statement timeout until done.
    diesel::sql_query("SET statement_timeout = 0")
        .execute(&mut conn)
        .await?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(LOCK_KEY)
        .execute(&mut conn)
        .await?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let outcome = work(&mut harness).map_err(|e| anyhow::anyhow!("migration failed: {e}"));
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
