//! Wiring: [`Application::build`] turns [`Settings`] into a bound, migrated
//! server; [`Application::run_until_stopped`] serves until the shutdown future
//! resolves and then runs the shutdown sequence. `main` and the tests use the
//! same two calls.

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseSource, SessionSettings, Settings};
use crate::db::tls::Tls;
use crate::db::{migrations, Db, PoolSettings};
use crate::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::hub::Hub;
use crate::listener::Listener;
use crate::shutdown::Shutdown;
use crate::state::AppState;

/// Connections the metrics address serves at once (scrapers, not clients).
const METRICS_CONNECTIONS: usize = 16;

/// `max_connections` of an embedded cluster: room for several instances plus psql.
const EMBEDDED_MAX_CONNECTIONS: u32 = 100;

/// The database a process uses: the pool, plus the embedded cluster when
/// chatpool started one (stopped only after the pool is closed).
pub struct Database {
    /// The process's one pool.
    pub db: Db,
    pool_settings: PoolSettings,
    /// Where the `LISTEN` connection (and, behind a PgBouncer, migrations) go.
    listener_target: (tokio_postgres::Config, Tls),
    listener: Option<Listener>,
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
                    settings: Vec::new(),
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
        let tls = if embedded.is_some() {
            Tls::plain()
        } else {
            Tls::new(&s.tls).context("DATABASE_URL's TLS settings")?
        };
        let pool_settings = PoolSettings {
            driver,
            tls,
            session: s.session.clone(),
            idle_timeout: s.idle_timeout,
            max_lifetime: s.max_lifetime,
            max_size: s.pool_max_size(),
            max_wait: s.max_wait,
            connect_timeout: s.connect_timeout,
            tx_timeout: s.tx_timeout,
        };
        // The listener's own address (PostgreSQL itself behind a PgBouncer),
        // else the pool's, with chatpool's session settings either way.
        let listener_target = match &s.listener {
            Some(target) => {
                let direct = PoolSettings {
                    driver: (*target.driver).clone(),
                    tls: Tls::new(&target.tls)
                        .context("CHATPOOL_LISTENER_DATABASE_URL's TLS settings")?,
                    session: SessionSettings {
                        pgbouncer: false,
                        options: target.options.clone().or(s.session.options.clone()),
                        ..s.session.clone()
                    },
                    connect_timeout: target.connect_timeout,
                    ..pool_settings.clone()
                };
                (direct.session_config(), direct.tls)
            }
            None => (pool_settings.session_config(), pool_settings.tls.clone()),
        };
        let mut db = Db::new(&pool_settings);
        if pool_settings.session.pgbouncer {
            let (driver, tls) = listener_target.clone();
            let limit = s
                .listener
                .as_ref()
                .map_or(pool_settings.connect_timeout, |t| t.connect_timeout);
            db.set_direct(driver, tls, limit);
        }
        Ok(Self {
            db,
            pool_settings,
            listener_target,
            listener: None,
            embedded,
        })
    }

    /// Starts the cross-instance listener feeding `hub`: the one connection
    /// outside the pool, in the slot of `connection_limit` the pool leaves free.
    pub fn start_listener(&mut self, hub: Hub) {
        self.listener = Some(Listener::spawn(
            self.listener_target.0.clone(),
            self.listener_target.1.clone(),
            self.listener_target
                .0
                .get_connect_timeout()
                .copied()
                .unwrap_or(self.pool_settings.connect_timeout),
            self.db.clone(),
            hub,
        ));
    }

    /// Closes the pool, then the listener connection, then stops the embedded
    /// cluster if chatpool started one.
    pub async fn close(self) {
        self.db.close();
        tracing::info!("database pool closed");
        if let Some(listener) = self.listener {
            listener.stop().await;
        }
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
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
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
            let candidate = crate::db::channel::ChannelKey::random();
            let key = database
                .db
                .run(move |c| {
                    async move { crate::store::events::load_key(c, &candidate).await }.boxed()
                })
                .await
                .context("reading the notification key")?;
            database.db.set_channel_key(key);
            let listener = TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?;
            let metrics = match settings.metrics_listen {
                Some(addr) => Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding {addr} (CHATPOOL_METRICS_LISTEN)"))?,
                ),
                None => None,
            };
            anyhow::Ok((listener, metrics))
        };
        let (listener, metrics_listener) = match prepared.await {
            Ok(l) => l,
            Err(e) => {
                database.close().await;
                return Err(e);
            }
        };
        let addr = listener.local_addr()?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        crate::metrics::handle();
        let mut database = database;
        let state = AppState::new(settings, database.db.clone(), Shutdown::new());
        database.start_listener(state.hub().clone());
        Ok(Self {
            listener,
            addr,
            metrics_listener,
            metrics_addr,
            state,
            database,
        })
    }

    /// The address `/metrics` is served on when `CHATPOOL_METRICS_LISTEN` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (tests use it to look at the pool).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `stop` resolves (or [`crate::shutdown::Shutdown::trigger`]
    /// is called), then shuts down in order:
    ///
    /// 1. refuse new work: `/readyz` and every new request answer 503
    ///    `shutting_down`, new upgrades included;
    /// 2. WebSocket sessions finish the frame in hand, send Close 1001 and end;
    ///    background tasks end;
    /// 3. in-flight HTTP requests finish with their normal response;
    /// 4. the listener and idle keep-alive connections close;
    /// 5. the pool closes; then the listener connection; then the embedded
    ///    cluster, if any, stops.
    ///
    /// All of it within `CHATPOOL_SHUTDOWN_TIMEOUT_MS`.
    ///
    /// # Errors
    /// When the drain overran the deadline: what was still open is logged,
    /// the pool is closed regardless, and the caller should exit non-zero.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            addr,
            metrics_listener,
            metrics_addr,
            state,
            database,
        } = self;
        let shutdown = state.shutdown().clone();
        let router = crate::http::router(state.clone());
        let close_http = CancellationToken::new();
        let mut server = tokio::spawn(crate::http::server::serve(
            listener,
            router,
            state.settings().max_http_connections,
            close_http.clone(),
        ));
        let mut metrics_server = metrics_listener.map(|l| {
            tokio::spawn(crate::http::server::serve(
                l,
                crate::http::metrics_router(state.clone()),
                METRICS_CONNECTIONS,
                close_http.clone(),
            ))
        });
        crate::expiry::spawn(&state);
        spawn_limits_pruner(&state);
        spawn_pool_reaper(&state);
        crate::presence::spawn(&state);
        tracing::info!("listening on http://{addr}");
        if let Some(metrics) = metrics_addr {
            tracing::info!("metrics on http://{metrics}/metrics");
        }

        tokio::select! {
            () = stop => {}
            () = shutdown.cancelled() => {}
        }
        let deadline = Instant::now() + state.settings().shutdown_timeout;
        shutdown.trigger();
        tracing::info!("shutdown started: readiness off, new requests and upgrades refused");

        // Leave a share of the deadline for closing the pool and stopping the
        // embedded cluster.
        let reserve = (state.settings().shutdown_timeout / 5).min(Duration::from_secs(3));
        let drain = async {
            shutdown.tracker().close();
            shutdown.tracker().wait().await;
            tracing::info!("WebSocket sessions and background tasks finished");
            shutdown.requests().close();
            shutdown.requests().wait().await;
            tracing::info!("in-flight HTTP requests finished");
            close_http.cancel();
            let _ = (&mut server).await;
            if let Some(metrics) = metrics_server.as_mut() {
                let _ = metrics.await;
            }
            tracing::info!("stopped accepting connections");
        };
        let drained = tokio::time::timeout_at((deadline - reserve).into(), drain)
            .await
            .is_ok();
        if !drained {
            tracing::error!(
                sessions_and_tasks = shutdown.tracker().len(),
                http_requests = shutdown.requests().len(),
                "shutdown deadline reached with work still open; closing it by force"
            );
            close_http.cancel();
            server.abort();
            if let Some(metrics) = &metrics_server {
                metrics.abort();
            }
        }

        let closed = tokio::time::timeout_at(deadline.into(), database.close()).await;
        match (drained, closed.is_ok()) {
            (true, true) => {
                tracing::info!("shutdown complete");
                Ok(())
            }
            (_, false) => Err(anyhow::anyhow!(
                "shutdown overran its deadline while stopping the database"
            )),
            (false, true) => Err(anyhow::anyhow!(
                "shutdown overran its deadline of {} ms; open work was closed by force",
                state.settings().shutdown_timeout.as_millis()
            )),
        }
    }
}

/// Forgets refilled rate-limit buckets every [`crate::limits::PRUNE_EVERY`],
/// on the shutdown tracker, until shutdown starts.
fn spawn_limits_pruner(state: &AppState) {
    let state = state.clone();
    let tracker = state.shutdown().tracker().clone();
    tracker.spawn(async move {
        let stop = state.shutdown().token();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(crate::limits::PRUNE_EVERY) => state.limits().prune(),
            }
        }
    });
}

/// Closes pooled connections idle past `CHATPOOL_POOL_IDLE_TIMEOUT_MS` (or
/// older than the URL's `max_connection_lifetime`), checking a few times per
/// timeout, until shutdown starts: a quiet server holds no pooled
/// connections, only the listener's.
fn spawn_pool_reaper(state: &AppState) {
    let state = state.clone();
    let tracker = state.shutdown().tracker().clone();
    let idle = state.settings().database.idle_timeout;
    let lifetime = state.settings().database.max_lifetime;
    let period = lifetime
        .map_or(idle, |l| l.min(idle))
        .div_f64(4.0)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
    tracker.spawn(async move {
        let stop = state.shutdown().token();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {
                    let closed = state.db().retire_idle(idle, lifetime);
                    if closed > 0 {
                        tracing::debug!(closed, "closed idle pooled connections");
                    }
                }
            }
        }
    });
}
