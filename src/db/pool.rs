//! The one deadpool pool of diesel-async connections.
//!
//! deadpool has no timeouts unless told: every one is set here, so no caller
//! can wait forever for a slot, a new connection or a health check.

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;

/// The process's pool type.
pub type PgPool = Pool<AsyncPgConnection>;

/// The `application_name` every chatpool connection carries, so operators can
/// find (and count) them in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "chatpool";

/// What the pool needs to know.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Driver configuration (host, user, database, ...).
    pub driver: tokio_postgres::Config,
    /// Connections the pool may hold (`connection_limit - 1`).
    pub max_size: usize,
    /// Longest wait for a free connection.
    pub max_wait: Duration,
    /// Longest time to open one connection.
    pub connect_timeout: Duration,
    /// Longest time a transaction may run.
    pub tx_timeout: Duration,
}

impl PoolSettings {
    /// The driver configuration with chatpool's session settings applied: the
    /// application name; `statement_timeout` = the transaction timeout, so a
    /// single statement run outside a transaction ([`crate::db::Db::run`]) is
    /// bounded by the server too; and an `idle_in_transaction_session_timeout`
    /// backstop, so the server ends a transaction a client abandoned even if
    /// chatpool could not; and `plan_cache_mode=force_generic_plan`, so a
    /// cached statement is planned once per connection. chatpool's statements
    /// are index lookups whose plan does not depend on their values, but
    /// PostgreSQL's default kept re-planning the history page on every
    /// execution (it prices a `LIMIT $n` generic plan at a tenth of the
    /// table), which cost more than running it (docs/benchmarks.md). The one
    /// exception, the username prefix search (`LIKE $1` becomes an index
    /// range only for a known pattern), asks for custom plans itself
    /// (`store::users::custom_plans`).
    pub fn session_config(&self) -> tokio_postgres::Config {
        let mut cfg = self.driver.clone();
        let backstop = (self.tx_timeout * 2).max(Duration::from_secs(10));
        cfg.application_name(APPLICATION_NAME);
        cfg.options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={} \
             -c plan_cache_mode=force_generic_plan",
            self.tx_timeout.as_millis(),
            backstop.as_millis()
        ));
        cfg.connect_timeout(self.connect_timeout);
        cfg
    }
}

/// Opens one connection with chatpool's session settings, within the connect timeout.
///
/// # Errors
/// The driver's error, or a timeout, as a [`ConnectionError`].
pub async fn connect(
    cfg: &tokio_postgres::Config,
    limit: Duration,
) -> Result<AsyncPgConnection, ConnectionError> {
    let open = async {
        let (client, connection) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    };
    tokio::time::timeout(limit, open)
        .await
        .unwrap_or_else(|_| Err(ConnectionError::BadConnection("connect timed out".into())))
}

/// Builds the pool. Connections are opened lazily, up to `max_size`.
pub fn build(settings: &PoolSettings) -> PgPool {
    let cfg = settings.session_config();
    let connect_timeout = settings.connect_timeout;
    let mut manager_config = ManagerConfig::default();
    // No test query on checkout: a connection whose socket closed, or that was
    // left in a transaction, is still discarded (diesel-async checks both), and
    // a dead peer is bounded by the transaction timer. A test query would cost
    // a round trip per transaction and, under CPU saturation, could exceed the
    // recycle timeout and make the pool replace a healthy connection while its
    // backend still exists: a brief excursion above `connection_limit`.
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |_url| {
        let cfg = cfg.clone();
        async move { connect(&cfg, connect_timeout).await }.boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        "postgres://chatpool (configured in code)",
        manager_config,
    );
    Pool::builder(manager)
        .max_size(settings.max_size)
        .wait_timeout(Some(settings.max_wait))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(Duration::from_secs(1)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a pool with a runtime and timeouts always builds")
}
