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

use super::tls::Tls;
use crate::config::SessionSettings;

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
    /// How connections are encrypted (the cancel request too).
    pub tls: Tls,
    /// Schema, PgBouncer mode, statement cache, the URL's `options`.
    pub session: SessionSettings,
    /// A pooled connection idle for longer is closed.
    pub idle_timeout: Duration,
    /// A pooled connection older than this is closed once idle.
    pub max_lifetime: Option<Duration>,
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
    ///
    /// Behind a PgBouncer (`pgbouncer=true`) nothing is set at startup: the
    /// session is not chatpool's. Every transaction sets what it needs
    /// instead ([`PoolSettings::begin_sql`]).
    pub fn session_config(&self) -> tokio_postgres::Config {
        let mut cfg = self.driver.clone();
        cfg.application_name(APPLICATION_NAME);
        if !self.session.pgbouncer {
            cfg.options(self.startup_options());
        }
        cfg.connect_timeout(self.connect_timeout);
        cfg
    }

    /// The server settings of every session opened directly: the URL's own
    /// `options` first, chatpool's after (so they win).
    pub fn startup_options(&self) -> String {
        let mut options = self.session.options.clone().unwrap_or_default();
        for (name, value) in self.session_settings() {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c {name}={value}"));
        }
        options
    }

    /// What starts every transaction: `BEGIN` and its `statement_timeout`
    /// (and, behind a PgBouncer, every session setting), in one round trip.
    pub fn begin_sql(&self) -> String {
        let mut sql = format!(
            "BEGIN; SET LOCAL statement_timeout = {}",
            self.tx_timeout.as_millis()
        );
        if self.session.pgbouncer {
            // The URL's own options first, chatpool's after (they win).
            for (name, value) in &self.session.option_settings {
                let quoted = value.replace('\'', "''");
                sql.push_str(&format!("; SET LOCAL {name} = '{quoted}'"));
            }
            for (name, value) in self.session_settings() {
                if name != "statement_timeout" {
                    sql.push_str(&format!("; SET LOCAL {name} = {value}"));
                }
            }
        }
        sql
    }

    fn session_settings(&self) -> Vec<(&'static str, String)> {
        let backstop = (self.tx_timeout * 2).max(Duration::from_secs(10));
        let mut settings = vec![
            ("statement_timeout", self.tx_timeout.as_millis().to_string()),
            (
                "idle_in_transaction_session_timeout",
                backstop.as_millis().to_string(),
            ),
            ("plan_cache_mode", "force_generic_plan".to_owned()),
        ];
        if let Some(schema) = &self.session.schema {
            settings.push(("search_path", format!("\"{schema}\"")));
        }
        settings
    }
}

/// Opens one connection with chatpool's session settings, within the connect timeout.
///
/// # Errors
/// The driver's error, or a timeout, as a [`ConnectionError`].
pub async fn connect(
    cfg: &tokio_postgres::Config,
    tls: &Tls,
    limit: Duration,
) -> Result<AsyncPgConnection, ConnectionError> {
    open(cfg, tls, limit, false).await
}

/// Opens one connection. `behind_pgbouncer`: diesel-async's own setup
/// statements (`SET TIME ZONE`, `SET CLIENT_ENCODING`, each a prepare and an
/// execute) run inside a transaction that is then rolled back, because in
/// PgBouncer's transaction mode the two halves of a statement outside a
/// transaction may reach different server connections ("prepared statement
/// does not exist"), and a session setting would leak to other clients.
/// chatpool reads times in binary, where the time zone does not matter.
async fn open(
    cfg: &tokio_postgres::Config,
    tls: &Tls,
    limit: Duration,
    behind_pgbouncer: bool,
) -> Result<AsyncPgConnection, ConnectionError> {
    let bad = |e: tokio_postgres::Error| {
        // The driver's message names the step ("error performing TLS
        // handshake"); the cause says why.
        let why = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        ConnectionError::BadConnection(format!("{e}{why}"))
    };
    let open = async {
        let (client, mut connection) = cfg.connect(tls.connector()).await.map_err(bad)?;
        if behind_pgbouncer {
            tokio::select! {
                begun = client.batch_execute("BEGIN") => begun.map_err(bad)?,
                ended = &mut connection => {
                    return Err(ConnectionError::BadConnection(format!(
                        "connection closed during setup: {ended:?}"
                    )))
                }
            }
        }
        let mut conn =
            AsyncPgConnection::try_from_client_and_connection(client, connection).await?;
        if behind_pgbouncer {
            use diesel_async::SimpleAsyncConnection;
            conn.batch_execute("ROLLBACK")
                .await
                .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
        }
        Ok(conn)
    };
    tokio::time::timeout(limit, open)
        .await
        .unwrap_or_else(|_| Err(ConnectionError::BadConnection("connect timed out".into())))
}

/// Builds the pool. Connections are opened lazily, up to `max_size`.
pub fn build(settings: &PoolSettings) -> PgPool {
    let cfg = settings.session_config();
    let tls = settings.tls.clone();
    let statement_cache = settings.session.statement_cache;
    let behind_pgbouncer = settings.session.pgbouncer;
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
        let (cfg, tls) = (cfg.clone(), tls.clone());
        async move {
            let mut conn = open(&cfg, &tls, connect_timeout, behind_pgbouncer).await?;
            if !statement_cache {
                use diesel_async::AsyncConnection;
                conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
            }
            Ok(conn)
        }
        .boxed()
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
