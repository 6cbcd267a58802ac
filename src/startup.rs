//! Wiring: [`Application::build`] turns [`Settings`] into a bound, migrated
//! server; [`Application::run_until_stopped`] serves until the shutdown future
//! resolves and then runs the shutdown sequence. `main` and the tests use the
//! same two calls.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{DatabaseSource, Settings};
use crate::db::{migrations, Db, PoolSettings};
use crate::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::shutdown::Shutdown;
use crate::state::AppState;

/// `max_connections` of an embedded cluster: room for several instances plus psql.
const EMBEDDED_MAX_CONNECTIONS: u32 = 100;

/// The database a process uses: the pool, plus the embedded cluster when
/// chatpool started one (stopped only after the pool is closed).
pub struct Database {
    /// The process's one pool.
    pub db: Db,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Starts the embedded cluster if there is no `DATABASE_URL`, then builds the pool.
    ///
    /// # Errors
    /// When the embedded cluster cannot start or the URL cannot be used.
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let (driver, embedded) = match &settings.database.source {
            DatabaseSource::Url(cfg) => ((**cfg).clone(), None),
            DatabaseSource::Embedded => {
                let opts = EmbeddedOptions {
                    data_dir: settings.data_dir.clone(),
                    max_connections: EMBEDDED_MAX_CONNECTIONS,
                };
                let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
                    .await
                    .context("embedded PostgreSQL start panicked")??;
                let cfg = tokio_postgres::Config::from_str(&pg.url(EmbeddedPostgres::DATABASE))
                    .context("embedded PostgreSQL gave an unusable URL")?;
                (cfg, Some(pg))
            }
        };
        let s = &settings.database;
        let db = Db::new(&PoolSettings {
            driver,
            max_size: s.pool_max_size(),
            max_wait: s.max_wait,
            connect_timeout: s.connect_timeout,
            tx_timeout: s.tx_timeout,
        });
        Ok(Self { db, embedded })
    }

    /// Closes the pool, then stops the embedded cluster if chatpool started one.
    pub async fn close(self) {
        self.db.close();
        tracing::info!("database pool closed");
        if let Some(pg) = self.embedded {
            match tokio::task::spawn_blocking(move || pg.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "embedded PostgreSQL did not stop cleanly")
                }
                Err(e) => tracing::error!(error = %e, "embedded PostgreSQL stop panicked"),
            }
        }
    }
}

/// A bound, migrated server that has not started serving yet.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    database: Database,
}

impl Application {
    /// Opens the database, applies migrations and binds the listen address
    /// (port 0 picks a free port; see [`Application::local_addr`]).
    ///
    /// # Errors
    /// Database start-up, migration or bind failures.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let database = Database::open(&settings).await?;
        let prepared = async {
            let applied = migrations::run_pending(&database.db)
                .await
                .context("applying migrations")?;
            if !applied.is_empty() {
                tracing::info!(?applied, "migrations applied");
            }
            let listener = TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?;
            anyhow::Ok(listener)
        };
        let listener = match prepared.await {
            Ok(l) => l,
            Err(e) => {
                database.close().await;
                return Err(e);
            }
        };
        let addr = listener.local_addr()?;
        crate::metrics::handle();
        let state = AppState::new(settings, database.db.clone(), Shutdown::new());
        Ok(Self {
            listener,
            addr,
            state,
            database,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (tests use it to look at the pool).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `stop` resolves, then shuts down in order: stop accepting
    /// and fail readiness; close WebSocket sessions; let in-flight HTTP requests
    /// finish; close the pool; stop the embedded cluster. The whole sequence is
    /// bounded by `CHATPOOL_SHUTDOWN_TIMEOUT_MS`.
    ///
    /// # Errors
    /// When serving fails or the shutdown overran its deadline (after the pool
    /// was closed regardless).
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            addr,
            state,
            database,
        } = self;
        let shutdown = state.shutdown().clone();
        let deadline = state.settings().shutdown_timeout;
        let router = crate::http::router(state.clone());

        let token = shutdown.token();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        });
        tracing::info!("listening on http://{addr}");

        let trigger = shutdown.clone();
        tokio::select! {
            () = stop => {}
            () = trigger.cancelled() => {}
        }
        tracing::info!("shutdown started: no new connections, readiness off");
        shutdown.trigger();

        let drain = async {
            shutdown.tracker().close();
            shutdown.tracker().wait().await;
            tracing::info!("background tasks and sockets closed");
            let served = server.await;
            tracing::info!("in-flight HTTP requests finished");
            served
        };
        let outcome = tokio::time::timeout(deadline, drain).await;
        database.close().await;
        match outcome {
            Ok(Ok(Ok(()))) => {
                tracing::info!("shutdown complete");
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(anyhow::Error::new(e).context("HTTP server failed")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("HTTP server task panicked")),
            Err(_) => {
                let open = shutdown.tracker().len();
                tracing::error!(
                    deadline_ms = deadline.as_millis() as u64,
                    open_tasks = open,
                    "shutdown overran its deadline; forced closed"
                );
                Err(anyhow::anyhow!(
                    "shutdown overran its deadline of {} ms with {open} tasks still open",
                    deadline.as_millis()
                ))
            }
        }
    }
}
