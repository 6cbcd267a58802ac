//! All database work goes through here.
//!
//! [`Db`] owns the process's one pool. [`Db::transaction`] is the single entry
//! point: it acquires a connection within the wait limit, runs the closure in a
//! transaction bounded by the transaction timeout, and maps every failure to one
//! of the SPEC's codes ([`DbError`]). A connection whose transaction overran is
//! cancelled and rolled back (or, failing that, discarded); it is never
//! returned to the pool inside an open transaction.

pub mod channel;
pub mod migrations;
pub mod pool;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use futures_util::future::BoxFuture;

use crate::metrics as m;
pub use pool::{PgPool, PoolSettings};

/// A connection checked out of the pool; returned when dropped.
pub type PooledConn = Object<AsyncPgConnection>;

/// Why database work failed, in the terms clients see.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No pooled connection became free within the wait limit.
    #[error("no database connection became free within the wait limit")]
    Busy,
    /// The transaction ran past the transaction timeout and was rolled back.
    #[error("the database transaction ran past its time limit and was rolled back")]
    Timeout,
    /// PostgreSQL could not be reached or dropped the connection.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The pool is closed: the process is shutting down.
    #[error("the database pool is closed")]
    Closed,
    /// Anything else: a bug or an unexpected database error.
    #[error("database error: {0}")]
    Other(#[source] DieselError),
}

impl DbError {
    /// The SPEC error code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            DbError::Busy => "db_busy",
            DbError::Timeout => "db_timeout",
            DbError::Unavailable(_) => "db_unavailable",
            DbError::Closed => "shutting_down",
            DbError::Other(_) => "internal",
        }
    }
}

impl From<DieselError> for DbError {
    /// Classifies a diesel error: cancelled statements are timeouts, broken
    /// connections are outages, the rest is unexpected.
    fn from(e: DieselError) -> Self {
        match &e {
            DieselError::DatabaseError(kind, info) => {
                // 57014 query_canceled: our statement_timeout fired.
                if info.message().contains("statement timeout")
                    || info.message().contains("canceling statement")
                {
                    return DbError::Timeout;
                }
                match kind {
                    DatabaseErrorKind::ClosedConnection => DbError::Unavailable(e.to_string()),
                    DatabaseErrorKind::Unknown if is_connection_failure(info.message()) => {
                        DbError::Unavailable(e.to_string())
                    }
                    _ => DbError::Other(e),
                }
            }
            DieselError::BrokenTransactionManager => DbError::Unavailable(e.to_string()),
            _ => DbError::Other(e),
        }
    }
}

fn is_connection_failure(message: &str) -> bool {
    const SIGNS: [&str; 6] = [
        "connection closed",
        "terminating connection",
        "administrator command",
        "the database system is",
        "error communicating with the server",
        "connection reset",
    ];
    let lower = message.to_ascii_lowercase();
    SIGNS.iter().any(|s| lower.contains(s))
}

/// The unit of work [`Db::transaction`] runs: a closure over the connection.
pub type TxFn<'c, T, E> = BoxFuture<'c, Result<T, E>>;

/// The one query [`Db::run`] runs: a `store` call on the connection.
pub type QueryFn<'c, T> = BoxFuture<'c, diesel::QueryResult<T>>;

/// The process's database: one pool plus the limits every use of it obeys.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    max_wait: Duration,
    tx_timeout: Duration,
    /// What opens every transaction ([`PoolSettings::begin_sql`]).
    begin: Arc<str>,
    /// Behind a PgBouncer: every statement runs inside a transaction, even
    /// through [`Db::run`], since a session cannot be relied on in between.
    transactions_only: bool,
    /// For the cancel request after a timeout.
    tls: tls::Tls,
    /// Prisma's `schema`: where the tables live (migrations create it).
    schema: Option<Arc<str>>,
    /// Behind a PgBouncer: a direct session to PostgreSQL for migrations,
    /// which need a session-level advisory lock.
    direct: Option<Arc<(tokio_postgres::Config, tls::Tls, Duration)>>,
    /// The database's notification key: read at start-up (a random one
    /// until then, which no other instance would believe).
    channel: Arc<std::sync::RwLock<channel::ChannelKey>>,
}

impl Db {
    /// Builds the pool; no connection is opened until first use.
    pub fn new(settings: &PoolSettings) -> Self {
        Self {
            pool: pool::build(settings),
            max_wait: settings.max_wait,
            tx_timeout: settings.tx_timeout,
            begin: settings.begin_sql().into(),
            transactions_only: settings.session.pgbouncer,
            tls: settings.tls.clone(),
            schema: settings.session.schema.as_deref().map(Arc::from),
            direct: None,
            channel: Arc::new(std::sync::RwLock::new(channel::ChannelKey::random())),
        }
    }

    /// The key signing this database's notifications ([`channel`]).
    pub fn channel_key(&self) -> channel::ChannelKey {
        self.channel
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the notification key (start-up, after the migrations).
    pub fn set_channel_key(&self, key: channel::ChannelKey) {
        *self
            .channel
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = key;
    }

    /// Sends migrations over `direct` (a session to PostgreSQL itself, not
    /// through the PgBouncer); opened only while they run, before the
    /// listener takes the slot of `connection_limit` it uses.
    pub fn set_direct(&mut self, driver: tokio_postgres::Config, tls: tls::Tls, limit: Duration) {
        self.direct = Some(Arc::new((driver, tls, limit)));
    }

    /// The direct session for migrations, if the pool cannot serve them.
    pub fn direct(&self) -> Option<&(tokio_postgres::Config, tls::Tls, Duration)> {
        self.direct.as_deref()
    }

    /// The schema chatpool's tables live in, when not `public`.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The wait limit for a connection (`CHATPOOL_TX_MAX_WAIT_MS`).
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The pool, for status and shutdown. Queries go through [`Db::transaction`].
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks a connection out within the wait limit, recording the wait.
    ///
    /// # Errors
    /// [`DbError::Busy`] when none frees up in time, [`DbError::Unavailable`]
    /// when a new one cannot be opened, [`DbError::Closed`] once closed.
    pub async fn acquire(&self) -> Result<PooledConn, DbError> {
        self.acquire_within(self.max_wait).await
    }

    async fn acquire_within(&self, limit: Duration) -> Result<PooledConn, DbError> {
        use deadpool::managed::{PoolError, TimeoutType};
        let started = Instant::now();
        let result = match tokio::time::timeout(limit, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(PoolError::Timeout(TimeoutType::Wait))) => Err(DbError::Busy),
            // Out of time with room left in the pool: we were stuck opening a
            // connection (an unreachable server), not waiting for a free one.
            Err(_) if self.pool.status().size < self.pool.status().max_size => Err(
                DbError::Unavailable("no connection could be opened within the wait limit".into()),
            ),
            Err(_) => Err(DbError::Busy),
            Ok(Err(PoolError::Closed)) => Err(DbError::Closed),
            Ok(Err(e)) => Err(DbError::Unavailable(e.to_string())),
        };
        metrics::histogram!(m::DB_POOL_WAIT_SECONDS).record(started.elapsed().as_secs_f64());
        if matches!(result, Err(DbError::Busy)) {
            metrics::counter!(m::DB_POOL_TIMEOUTS_TOTAL).increment(1);
        }
        result
    }

    /// Runs `work` in a transaction on a pooled connection.
    ///
    /// The connection is acquired within the wait limit and released as soon as
    /// the transaction ends: never hold on to anything from inside `work` that
    /// needs the network. The transaction is bounded by the transaction timeout
    /// twice over: `SET LOCAL statement_timeout` on the server and a timer here.
    ///
    /// The transaction runs in its own task, so a caller that goes away (a
    /// client that disconnects mid-request) cannot abandon it half-way: it
    /// commits or rolls back, and the connection goes back to the pool clean.
    ///
    /// # Errors
    /// Whatever `work` returns, or a [`DbError`] (converted into `E`) for
    /// `db_busy`, `db_timeout`, `db_unavailable` and a closed pool.
    pub async fn transaction<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AsyncPgConnection) -> TxFn<'c, T, E> + Send + 'static,
        E: From<DbError> + From<DieselError> + Send + 'static,
        T: Send + 'static,
    {
        self.transaction_within(self.max_wait, work).await
    }

    /// [`Db::transaction`] with a shorter wait for the connection: for work
    /// that already waited elsewhere (a send queued for group commit), so its
    /// whole wait stays within the wait limit. A zero `wait` is `db_busy`.
    ///
    /// # Errors
    /// As [`Db::transaction`].
    pub async fn transaction_within<T, E, F>(&self, wait: Duration, work: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AsyncPgConnection) -> TxFn<'c, T, E> + Send + 'static,
        E: From<DbError> + From<DieselError> + Send + 'static,
        T: Send + 'static,
    {
        if wait.is_zero() {
            metrics::counter!(m::DB_POOL_TIMEOUTS_TOTAL).increment(1);
            return Err(DbError::Busy.into());
        }
        let conn = self.acquire_within(wait.min(self.max_wait)).await?;
        let limits = Limits {
            tx_timeout: self.tx_timeout,
            begin: self.begin.clone(),
            tls: self.tls.clone(),
        };
        let task = tokio::spawn(run_transaction(conn, limits, work));
        match task.await {
            Ok(result) => result,
            Err(e) => Err(E::from(DbError::Unavailable(format!(
                "transaction task failed: {e}"
            )))),
        }
    }

    /// Runs one `store` query, e.g.
    /// `db.run(move |c| store::users::by_id(c, id).boxed())`: for the many
    /// reads (and single writes) that are one statement. No `BEGIN`/`COMMIT`
    /// around it, so it costs one round trip; a single statement is atomic on
    /// its own. The limits are those of [`Db::transaction`]: the wait limit,
    /// and the time limit as the session's `statement_timeout` on the server
    /// plus a timer here (after which the statement is cancelled). Behind a
    /// PgBouncer it runs inside a transaction after all.
    ///
    /// # Errors
    /// As [`Db::transaction`], with the query's own failure as a [`DbError`].
    pub async fn run<T, F>(&self, query: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut AsyncPgConnection) -> QueryFn<'c, T> + Send + 'static,
        T: Send + 'static,
    {
        if self.transactions_only {
            return self
                .transaction(move |c| {
                    use futures_util::FutureExt;
                    query(c).map(|r| r.map_err(DbError::from)).boxed()
                })
                .await;
        }
        let mut conn = self.acquire().await?;
        let tx_timeout = self.tx_timeout;
        let tls = self.tls.clone();
        let task = tokio::spawn(async move {
            match tokio::time::timeout(tx_timeout, query(&mut conn)).await {
                Ok(result) => result.map_err(DbError::from),
                Err(_) => {
                    metrics::counter!(m::DB_TX_TIMEOUTS_TOTAL).increment(1);
                    tracing::warn!(
                        timeout_ms = tx_timeout.as_millis() as u64,
                        "statement ran past its time limit"
                    );
                    recover_after_timeout(conn, &tls).await;
                    Err(DbError::Timeout)
                }
            }
        });
        task.await
            .unwrap_or_else(|e| Err(DbError::Unavailable(format!("statement task failed: {e}"))))
    }

    /// Whether a connection can be had and answers, within `limit`.
    pub async fn ping(&self, limit: Duration) -> Result<(), DbError> {
        let check = async {
            let mut conn = self.acquire_within(limit).await?;
            conn.batch_execute("SELECT 1").await.map_err(DbError::from)
        };
        tokio::time::timeout(limit, check)
            .await
            .unwrap_or(Err(DbError::Busy))
    }

    /// Closes the idle pooled connections unused for `idle` or older than
    /// `max_lifetime` (SPEC §6, "Pool at rest"); returns how many. The pool
    /// opens new ones on demand.
    pub fn retire_idle(&self, idle: Duration, max_lifetime: Option<Duration>) -> usize {
        let removed = self
            .pool
            .retain(|_, m| m.last_used() < idle && max_lifetime.is_none_or(|l| m.age() < l))
            .removed;
        let n = removed.len();
        drop(removed);
        n
    }

    /// Closes the pool: waiting callers fail and idle connections are dropped;
    /// connections in use close when they are returned.
    pub fn close(&self) {
        self.pool.close();
    }
}

/// What bounds one transaction.
struct Limits {
    tx_timeout: Duration,
    begin: Arc<str>,
    tls: tls::Tls,
}

/// `BEGIN`, `SET LOCAL statement_timeout`, `work`, `COMMIT` (or `ROLLBACK`),
/// bounded by `tx_timeout`. Transaction control is plain SQL on the
/// connection, so after a timeout this function alone knows the state and can
/// put the connection back in order (see [`recover_after_timeout`]).
async fn run_transaction<T, E, F>(mut conn: PooledConn, limits: Limits, work: F) -> Result<T, E>
where
    F: for<'c> FnOnce(&'c mut AsyncPgConnection) -> TxFn<'c, T, E> + Send,
    E: From<DbError> + From<DieselError> + Send,
{
    let tx_timeout = limits.tx_timeout;
    let timeout_ms = tx_timeout.as_millis();
    let run = async {
        let c: &mut AsyncPgConnection = &mut conn;
        c.batch_execute(&limits.begin)
            .await
            .map_err(DbError::from)?;
        match work(c).await {
            Ok(value) => {
                c.batch_execute("COMMIT").await.map_err(DbError::from)?;
                Ok(value)
            }
            Err(e) => {
                // The caller's error is the interesting one. A failed rollback
                // means a broken connection, which the pool's check discards.
                let _ = c.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    };
    match tokio::time::timeout(tx_timeout, run).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!(m::DB_TX_TIMEOUTS_TOTAL).increment(1);
            tracing::warn!(
                timeout_ms = timeout_ms as u64,
                "transaction ran past its time limit"
            );
            recover_after_timeout(conn, &limits.tls).await;
            Err(DbError::Timeout.into())
        }
    }
}

/// After a timeout the transaction future was dropped mid-flight: the server
/// may still be running a statement inside the open transaction. Cancel it and
/// roll back on the same connection, which then goes back to the pool clean,
/// still holding its slot, so no replacement is opened while the old backend
/// lingers. If that fails the connection is taken out of the pool and closed:
/// never handed out again, never left "idle in transaction".
async fn recover_after_timeout(mut conn: PooledConn, tls: &tls::Tls) {
    const STEP_LIMIT: Duration = Duration::from_secs(1);
    let token = conn.cancel_token();
    let cancelled = tokio::time::timeout(STEP_LIMIT, token.cancel_query(tls.connector())).await;
    if !matches!(cancelled, Ok(Ok(()))) {
        tracing::warn!("could not cancel a timed-out statement");
    }
    let rolled_back = tokio::time::timeout(STEP_LIMIT, conn.batch_execute("ROLLBACK")).await;
    if !matches!(rolled_back, Ok(Ok(()))) {
        tracing::warn!("discarding a connection that could not be rolled back after a timeout");
        drop(Object::take(conn));
    }
}
