//! Settings: flags, then environment, then `.env` (SPEC §1).
//!
//! Everything is parsed once at startup into a typed [`Settings`]. A bad value
//! is a [`ConfigError`] naming the parameter, so `main` can print one line and
//! exit non-zero instead of failing later under load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod database_url;
pub mod vars;

pub use database_url::{DatabaseUrl, SessionSettings, SslMode, TlsSettings};

/// Default hard cap on the process's PostgreSQL connections (Prisma's default too).
pub const DEFAULT_CONNECTION_LIMIT: u32 = 10;
/// Default time to open one connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A configuration value chatpool cannot start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {param}: {reason}")]
pub struct ConfigError {
    /// The variable, flag or URL parameter at fault, as the operator wrote it.
    pub param: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

impl ConfigError {
    fn new(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            reason: reason.into(),
        }
    }
}

/// Log output format (`CHATPOOL_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Which browser origins may call the API (`CHATPOOL_CORS_ORIGINS`, SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Unset: no CORS headers at all.
    Off,
    /// `*`: any origin (bearer tokens, not cookies, so no credentials mode).
    Any,
    /// Exactly these origins (`https://crm.example.com`).
    List(Vec<String>),
}

impl CorsOrigins {
    fn parse(param: &str, value: &str) -> Result<Self, ConfigError> {
        let parts: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts == ["*"] {
            return Ok(Self::Any);
        }
        let mut origins = Vec::with_capacity(parts.len());
        for part in parts {
            let origin = url::Url::parse(part)
                .ok()
                .filter(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.path() == "/"
                        && u.query().is_none()
                        && !part.ends_with('/')
                })
                .ok_or_else(|| {
                    ConfigError::new(
                        param,
                        format!(
                            "expected `*` or origins such as https://crm.example.com \
                             (scheme, host, optional port; no path), got {part:?}"
                        ),
                    )
                })?;
            origins.push(origin.origin().ascii_serialization());
        }
        Ok(Self::List(origins))
    }
}

/// Where the database comes from.
#[derive(Debug, Clone)]
pub enum DatabaseSource {
    /// `DATABASE_URL` was given: connect there.
    Url(Box<tokio_postgres::Config>),
    /// No `DATABASE_URL`: run a private cluster in `CHATPOOL_DATA_DIR`.
    Embedded,
}

/// Database and pool settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// The server to use.
    pub source: DatabaseSource,
    /// Hard cap on this process's connections, listener included (at least 2).
    pub connection_limit: u32,
    /// Longest wait for a free pooled connection (`db_busy` after it).
    pub max_wait: Duration,
    /// Longest time to open one connection.
    pub connect_timeout: Duration,
    /// Longest time a transaction may run (`db_timeout` after it).
    pub tx_timeout: Duration,
    /// A pooled connection idle for longer is closed
    /// (`CHATPOOL_POOL_IDLE_TIMEOUT_MS`, default 10 minutes).
    pub idle_timeout: Duration,
    /// Prisma's `max_connection_lifetime`: a pooled connection older than
    /// this is closed once idle.
    pub max_lifetime: Option<Duration>,
    /// Schema, PgBouncer mode, statement cache, the URL's `options`.
    pub session: SessionSettings,
    /// How the pool's connections are encrypted.
    pub tls: TlsSettings,
    /// Where the `LISTEN` connection goes when not where the pool goes
    /// (`CHATPOOL_LISTENER_DATABASE_URL`: PostgreSQL behind a PgBouncer).
    pub listener: Option<ListenerTarget>,
}

/// The listener's own database address (`CHATPOOL_LISTENER_DATABASE_URL`).
#[derive(Debug, Clone)]
pub struct ListenerTarget {
    /// Driver configuration.
    pub driver: Box<tokio_postgres::Config>,
    /// Its own `sslmode`.
    pub tls: TlsSettings,
    /// Its own `connect_timeout`.
    pub connect_timeout: Duration,
    /// Its own `options`, if any (else `DATABASE_URL`'s).
    pub options: Option<String>,
}

impl DatabaseSettings {
    /// Connections the pool may hold: one slot is reserved for the LISTEN connection.
    pub fn pool_max_size(&self) -> usize {
        (self.connection_limit - 1) as usize
    }
}

/// Everything chatpool needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to accept HTTP and WebSocket connections on (port 0 picks one).
    pub listen: SocketAddr,
    /// Where `/metrics` is served instead of `listen`, if set
    /// (`CHATPOOL_METRICS_LISTEN`).
    pub metrics_listen: Option<SocketAddr>,
    /// Browser origins allowed to call the API (`CHATPOOL_CORS_ORIGINS`).
    pub cors: CorsOrigins,
    /// Database and pool limits.
    pub database: DatabaseSettings,
    /// Deadline for the whole graceful shutdown.
    pub shutdown_timeout: Duration,
    /// Directory of the embedded PostgreSQL cluster.
    pub data_dir: PathBuf,
    /// WebSocket sessions held at once.
    pub max_sockets: usize,
    /// HTTP connections open at once, not counting upgraded WebSockets
    /// (`CHATPOOL_MAX_HTTP_CONNECTIONS`, default 1024).
    pub max_http_connections: usize,
    /// The abuse limits (SPEC §6); `0` turns one off.
    pub abuse: crate::limits::AbuseSettings,
    /// Peers whose `X-Forwarded-For` names the client
    /// (`CHATPOOL_TRUSTED_PROXIES`: addresses or CIDRs, comma-separated).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a token stays valid after it was issued (`CHATPOOL_TOKEN_TTL`,
    /// default 30 days).
    pub token_ttl: Duration,
    /// Longest a request body may take to arrive, whatever its pace
    /// (`CHATPOOL_BODY_TIMEOUT_MS`, default 30 s); then 408.
    pub body_timeout: Duration,
    /// Interval of the server's WebSocket pings (`CHATPOOL_HEARTBEAT_MS`,
    /// default 30 s); a peer silent for three intervals is dropped.
    pub heartbeat: Duration,
    /// How long an instance's share of presence outlives its last renewal
    /// (`CHATPOOL_PRESENCE_LEASE_MS`, default 30 s, at most 40 s): a crashed
    /// instance's users go offline within a lease and a third.
    pub presence_lease: Duration,
    /// Whether `POST /api/auth/register` is open to anyone.
    pub registration_open: bool,
    /// Log output format.
    pub log_format: LogFormat,
}

impl Settings {
    /// Loads `.env` from the working directory into the environment, never
    /// overriding a variable already set: flags, then the environment, then
    /// `.env`. Called before the command line is parsed, so clap's `env`
    /// fallbacks see it.
    pub fn load_dotenv() {
        if std::path::Path::new(".env").is_file() {
            let _ = dotenvy::from_path(".env");
        }
    }

    /// Reads settings from the process environment (after [`Self::load_dotenv`]).
    ///
    /// # Errors
    /// A [`ConfigError`] for the first invalid value.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load_dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `env`, by variable name ([`vars::VARS`]): the
    /// command line resolves flag-or-variable into it, and tests need not
    /// touch the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] for the first invalid value.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let listen = match get("CHATPOOL_LISTEN") {
            Some(v) => parse_listen("CHATPOOL_LISTEN", &v)?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let metrics_listen = get("CHATPOOL_METRICS_LISTEN")
            .map(|v| parse_listen("CHATPOOL_METRICS_LISTEN", &v))
            .transpose()?;
        let listener_url = get("CHATPOOL_LISTENER_DATABASE_URL")
            .map(|v| DatabaseUrl::parse_listener(&v))
            .transpose()?;
        let pool_idle_timeout = get("CHATPOOL_POOL_IDLE_TIMEOUT_MS")
            .map(|v| parse_millis("CHATPOOL_POOL_IDLE_TIMEOUT_MS", &v))
            .transpose()?;
        let cors = get("CHATPOOL_CORS_ORIGINS")
            .map(|v| CorsOrigins::parse("CHATPOOL_CORS_ORIGINS", &v))
            .transpose()?
            .unwrap_or(CorsOrigins::Off);

        let url = match get("DATABASE_URL") {
            Some(v) => Some(DatabaseUrl::parse(&v)?),
            None => None,
        };
        let env_wait = get("CHATPOOL_TX_MAX_WAIT_MS")
            .map(|v| parse_millis("CHATPOOL_TX_MAX_WAIT_MS", &v))
            .transpose()?;
        let env_tx_timeout = get("CHATPOOL_TX_TIMEOUT_MS")
            .map(|v| parse_millis("CHATPOOL_TX_TIMEOUT_MS", &v))
            .transpose()?;
        let shutdown_timeout = get("CHATPOOL_SHUTDOWN_TIMEOUT_MS")
            .map(|v| parse_millis("CHATPOOL_SHUTDOWN_TIMEOUT_MS", &v))
            .transpose()?
            .unwrap_or(Duration::from_millis(10_000));
        let max_sockets = get("CHATPOOL_MAX_SOCKETS")
            .map(|v| parse_positive("CHATPOOL_MAX_SOCKETS", &v))
            .transpose()?
            .unwrap_or(10_000) as usize;
        let max_http_connections = get("CHATPOOL_MAX_HTTP_CONNECTIONS")
            .map(|v| parse_positive("CHATPOOL_MAX_HTTP_CONNECTIONS", &v))
            .transpose()?
            .unwrap_or(1024) as usize;
        let limit = |name: &str, default: u32| -> Result<u32, ConfigError> {
            get(name).map_or(Ok(default), |v| {
                v.trim().parse::<u32>().map_err(|_| {
                    ConfigError::new(
                        name,
                        format!("must be a whole number (0 turns the limit off), got {v:?}"),
                    )
                })
            })
        };
        let defaults = crate::limits::AbuseSettings::default();
        let abuse = crate::limits::AbuseSettings {
            send_rate: limit("CHATPOOL_SEND_RATE", defaults.send_rate)?,
            send_burst: limit("CHATPOOL_SEND_BURST", defaults.send_burst)?,
            register_rate: limit("CHATPOOL_REGISTER_RATE", defaults.register_rate)?,
            max_sockets_per_user: limit(
                "CHATPOOL_MAX_SOCKETS_PER_USER",
                defaults.max_sockets_per_user,
            )?,
        };
        let trusted_proxies = get("CHATPOOL_TRUSTED_PROXIES")
            .map(|v| parse_networks("CHATPOOL_TRUSTED_PROXIES", &v))
            .transpose()?
            .unwrap_or_default();
        let token_ttl = get("CHATPOOL_TOKEN_TTL")
            .map(|v| {
                parse_duration(&v)
                    .ok()
                    .filter(|d| !d.is_zero() && *d <= MAX_TOKEN_TTL)
                    .ok_or_else(|| {
                        ConfigError::new(
                            "CHATPOOL_TOKEN_TTL",
                            format!(
                                "must be a duration such as 12h, 90m or 5s, greater than 0 and \
                                 at most 100 years, got {v:?}"
                            ),
                        )
                    })
            })
            .transpose()?
            .unwrap_or(Duration::from_secs(30 * 86_400));
        let body_timeout = get("CHATPOOL_BODY_TIMEOUT_MS")
            .map(|v| parse_millis("CHATPOOL_BODY_TIMEOUT_MS", &v))
            .transpose()?
            .unwrap_or(Duration::from_secs(30));
        let heartbeat = get("CHATPOOL_HEARTBEAT_MS")
            .map(|v| parse_millis_at_most("CHATPOOL_HEARTBEAT_MS", &v, MAX_HEARTBEAT))
            .transpose()?
            .unwrap_or(Duration::from_millis(30_000));
        let presence_lease = get("CHATPOOL_PRESENCE_LEASE_MS")
            .map(|v| parse_millis_at_most("CHATPOOL_PRESENCE_LEASE_MS", &v, MAX_PRESENCE_LEASE))
            .transpose()?
            .unwrap_or(Duration::from_millis(30_000));
        if presence_lease < MIN_PRESENCE_LEASE {
            return Err(ConfigError::new(
                "CHATPOOL_PRESENCE_LEASE_MS",
                format!("must be at least {} ms", MIN_PRESENCE_LEASE.as_millis()),
            ));
        }
        let registration_open = get("CHATPOOL_REGISTRATION")
            .map(|v| match v.trim() {
                "open" => Ok(true),
                "closed" => Ok(false),
                other => Err(ConfigError::new(
                    "CHATPOOL_REGISTRATION",
                    format!("expected `open` or `closed`, got {other:?}"),
                )),
            })
            .transpose()?
            .unwrap_or(true);
        let log_format = match get("CHATPOOL_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "CHATPOOL_LOG_FORMAT",
                    format!("expected `pretty` or `json`, got {other:?}"),
                ))
            }
        };
        let data_dir = get("CHATPOOL_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("./data"));

        let embedded = url.is_none();
        let (source, connection_limit, url_wait, connect_timeout) = match &url {
            Some(u) => (
                DatabaseSource::Url(Box::new(u.driver.clone())),
                u.connection_limit,
                u.pool_timeout,
                u.connect_timeout,
            ),
            None => (
                DatabaseSource::Embedded,
                DEFAULT_CONNECTION_LIMIT,
                None,
                DEFAULT_CONNECT_TIMEOUT,
            ),
        };
        // CHATPOOL_POOL_IDLE_TIMEOUT_MS wins over the URL's
        // max_idle_connection_lifetime.
        let idle_timeout = pool_idle_timeout
            .or(url.as_ref().and_then(|u| u.idle_timeout))
            .unwrap_or(Duration::from_millis(600_000));
        // CHATPOOL_TX_TIMEOUT_MS wins over the URL's socket_timeout.
        let tx_timeout = env_tx_timeout
            .or(url.as_ref().and_then(|u| u.socket_timeout))
            .unwrap_or(Duration::from_millis(5000));
        let (session, tls, max_lifetime) = match url {
            Some(u) => (u.session, u.tls, u.max_lifetime),
            None => (SessionSettings::default(), TlsSettings::disabled(), None),
        };
        if session.pgbouncer && listener_url.is_none() {
            return Err(ConfigError::new(
                "pgbouncer",
                "pgbouncer=true needs CHATPOOL_LISTENER_DATABASE_URL: LISTEN and migrations \
                 need a session, so they go to PostgreSQL itself",
            ));
        }
        if listener_url.is_some() && embedded {
            return Err(ConfigError::new(
                "CHATPOOL_LISTENER_DATABASE_URL",
                "needs DATABASE_URL: the embedded PostgreSQL is reached directly",
            ));
        }
        // CHATPOOL_TX_MAX_WAIT_MS wins over the URL's pool_timeout.
        let max_wait = env_wait.or(url_wait).unwrap_or(Duration::from_millis(2000));

        Ok(Settings {
            listen,
            metrics_listen,
            cors,
            database: DatabaseSettings {
                source,
                connection_limit,
                max_wait,
                connect_timeout,
                tx_timeout,
                idle_timeout,
                max_lifetime,
                session,
                tls,
                listener: listener_url.map(|u| ListenerTarget {
                    driver: Box::new(u.driver),
                    tls: u.tls,
                    connect_timeout: u.connect_timeout,
                    options: u.session.options,
                }),
            },
            shutdown_timeout,
            data_dir,
            max_sockets,
            max_http_connections,
            abuse,
            trusted_proxies,
            token_ttl,
            body_timeout,
            heartbeat,
            presence_lease,
            registration_open,
            log_format,
        })
    }
}

fn parse_listen(param: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let value = value.trim();
    let value = value
        .strip_prefix("localhost:")
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| value.to_owned());
    value.parse().map_err(|_| {
        ConfigError::new(
            param,
            format!("expected HOST:PORT such as 127.0.0.1:8080 or 0.0.0.0:0, got {value:?}"),
        )
    })
}

fn parse_positive(param: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ConfigError::new(
                param,
                format!("must be a whole number greater than 0, got {value:?}"),
            )
        })
}

/// A bare number of milliseconds (`2000`), or a humantime duration (`2s`,
/// `10m`); greater than 0.
fn parse_millis(param: &str, value: &str) -> Result<Duration, ConfigError> {
    let value = value.trim();
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return parse_positive(param, value).map(Duration::from_millis);
    }
    humantime::parse_duration(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ConfigError::new(
                param,
                format!(
                    "must be a whole number of milliseconds or a duration such as 2s or 10m, \
                     greater than 0, got {value:?}"
                ),
            )
        })
}

/// Comma-separated addresses (`10.0.0.5`, `::1`) or networks (`10.0.0.0/8`).
fn parse_networks(param: &str, value: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<ipnet::IpNet>()
                .or_else(|_| part.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        param,
                        format!("expected addresses or CIDR networks, got {part:?}"),
                    )
                })
        })
        .collect()
}

/// Longest `CHATPOOL_TOKEN_TTL`: far beyond any use, short of overflowing a timestamp.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Longest `CHATPOOL_HEARTBEAT_MS`: an hour (a peer is dropped after three).
const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);

/// Longest presence lease: renewed every third of it, a crashed instance's
/// users go offline within a lease and a third (53 s at most), inside SPEC
/// §5's 60 s with room for a batch and timer drift.
const MAX_PRESENCE_LEASE: Duration = Duration::from_secs(40);
/// Shortest presence lease (each instance renews it every third of it).
const MIN_PRESENCE_LEASE: Duration = Duration::from_secs(1);

fn parse_millis_at_most(param: &str, value: &str, max: Duration) -> Result<Duration, ConfigError> {
    let d = parse_millis(param, value)?;
    if d > max {
        return Err(ConfigError::new(
            param,
            format!("must be at most {} ms, got {value:?}", max.as_millis()),
        ));
    }
    Ok(d)
}

/// Parses durations such as `10m`, `90s`, `1h`, `500ms`, `1d` or `1h 30m`
/// (humantime's syntax), or a bare number of seconds (used by
/// `db reap --idle-for` and `CHATPOOL_TOKEN_TTL`). A value too large to
/// represent is an error, never a wrapped-around smaller one.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    // A bare number is seconds, as it always was.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{value:?} is too many seconds"));
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("expected a duration like 10m, 90s or 1h, got {value:?}: {e}"))
}

#[cfg(test)]
mod tests;
