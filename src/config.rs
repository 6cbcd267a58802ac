//! Settings: flags, then environment, then `.env` (SPEC §1).
//!
//! Everything is parsed once at startup into a typed [`Settings`]. A bad value
//! is a [`ConfigError`] naming the parameter, so `main` can print one line and
//! exit non-zero instead of failing later under load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

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
    /// Whether `POST /api/auth/register` is open to anyone.
    pub registration_open: bool,
    /// Log output format.
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads settings from the process environment (after loading `.env`),
    /// with `listen_flag` (the `--listen` flag) taking precedence.
    ///
    /// # Errors
    /// A [`ConfigError`] for the first invalid value.
    pub fn from_env(listen_flag: Option<&str>) -> Result<Self, ConfigError> {
        // `.env` in the working directory only, and it never overrides what
        // the environment already has.
        if std::path::Path::new(".env").is_file() {
            let _ = dotenvy::from_path(".env");
        }
        Self::from_lookup(listen_flag, |name| std::env::var(name).ok())
    }

    /// Reads settings through `env`, so tests need not touch the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] for the first invalid value.
    pub fn from_lookup(
        listen_flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let listen = match listen_flag {
            Some(v) => parse_listen("--listen", v)?,
            None => match get("CHATPOOL_LISTEN") {
                Some(v) => parse_listen("CHATPOOL_LISTEN", &v)?,
                None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            },
        };

        let url = match get("DATABASE_URL") {
            Some(v) => Some(DatabaseUrl::parse(&v)?),
            None => None,
        };
        let env_wait = get("CHATPOOL_TX_MAX_WAIT_MS")
            .map(|v| parse_millis("CHATPOOL_TX_MAX_WAIT_MS", &v))
            .transpose()?;
        let tx_timeout = get("CHATPOOL_TX_TIMEOUT_MS")
            .map(|v| parse_millis("CHATPOOL_TX_TIMEOUT_MS", &v))
            .transpose()?
            .unwrap_or(Duration::from_millis(5000));
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

        let (source, connection_limit, url_wait, connect_timeout) = match url {
            Some(u) => (
                DatabaseSource::Url(Box::new(u.driver)),
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
        // CHATPOOL_TX_MAX_WAIT_MS wins over the URL's pool_timeout.
        let max_wait = env_wait.or(url_wait).unwrap_or(Duration::from_millis(2000));

        Ok(Settings {
            listen,
            database: DatabaseSettings {
                source,
                connection_limit,
                max_wait,
                connect_timeout,
                tx_timeout,
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
            registration_open,
            log_format,
        })
    }
}

/// `DATABASE_URL` split into chatpool's pool parameters and the driver's part.
#[derive(Debug, Clone)]
pub struct DatabaseUrl {
    /// What the driver gets: the URL without the parameters chatpool consumed.
    pub driver: tokio_postgres::Config,
    /// `connection_limit`, default 10, at least 2.
    pub connection_limit: u32,
    /// `pool_timeout` in seconds, when given.
    pub pool_timeout: Option<Duration>,
    /// `connect_timeout` in seconds, default 5.
    pub connect_timeout: Duration,
}

impl DatabaseUrl {
    /// Parses a `postgres://` URL, consuming Prisma's pool parameters.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `DATABASE_URL` or the parameter at fault.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let mut url = url::Url::parse(raw.trim())
            .map_err(|e| ConfigError::new("DATABASE_URL", format!("not a valid URL ({e})")))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::new(
                "DATABASE_URL",
                format!(
                    "scheme must be postgres:// or postgresql://, got {}://",
                    url.scheme()
                ),
            ));
        }

        let mut connection_limit = DEFAULT_CONNECTION_LIMIT;
        let mut pool_timeout = None;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        let mut rest = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "connection_limit" => {
                    connection_limit = value.trim().parse::<u32>().ok().filter(|n| *n >= 2).ok_or_else(|| {
                        ConfigError::new(
                            "connection_limit",
                            format!("in DATABASE_URL must be a whole number of at least 2 (one connection is reserved for the listener), got {value:?}"),
                        )
                    })?;
                }
                "pool_timeout" => pool_timeout = Some(parse_seconds("pool_timeout", &value)?),
                "connect_timeout" => connect_timeout = parse_seconds("connect_timeout", &value)?,
                _ => rest.push((key.into_owned(), value.into_owned())),
            }
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let mut driver = tokio_postgres::Config::from_str(url.as_str()).map_err(|e| {
            ConfigError::new("DATABASE_URL", format!("the driver cannot use it ({e})"))
        })?;
        driver.connect_timeout(connect_timeout);
        Ok(Self {
            driver,
            connection_limit,
            pool_timeout,
            connect_timeout,
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

fn parse_millis(param: &str, value: &str) -> Result<Duration, ConfigError> {
    parse_positive(param, value).map(Duration::from_millis)
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

/// Seconds as Prisma writes them; fractions allowed, zero (Prisma's "no limit") refused
/// because chatpool never waits without a bound.
fn parse_seconds(param: &str, value: &str) -> Result<Duration, ConfigError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            ConfigError::new(
                param,
                format!(
                    "in DATABASE_URL must be a number of seconds greater than 0, got {value:?}"
                ),
            )
        })
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
