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
        let heartbeat = get("CHATPOOL_HEARTBEAT_MS")
            .map(|v| parse_millis("CHATPOOL_HEARTBEAT_MS", &v))
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

/// Parses durations such as `10m`, `90s`, `1h`, `500ms` (used by `db reap --idle-for`).
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 10m, 90s or 1h, got {value:?}"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {value:?}: use ms, s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(None, |k| map.get(k).cloned())
    }

    fn url_err(url: &str) -> ConfigError {
        settings(&[("DATABASE_URL", url)]).unwrap_err()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(matches!(s.database.source, DatabaseSource::Embedded));
        assert_eq!(s.database.connection_limit, 10);
        assert_eq!(s.database.pool_max_size(), 9);
        assert_eq!(s.database.max_wait, Duration::from_millis(2000));
        assert_eq!(s.database.tx_timeout, Duration::from_millis(5000));
        assert_eq!(s.database.connect_timeout, Duration::from_secs(5));
        assert_eq!(s.shutdown_timeout, Duration::from_millis(10_000));
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.max_sockets, 10_000);
        assert_eq!(s.heartbeat, Duration::from_millis(30_000));
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert!(s.registration_open);
    }

    #[test]
    fn prisma_parameters_are_consumed_and_the_rest_reaches_the_driver() {
        let s = settings(&[(
            "DATABASE_URL",
            "postgres://app:secret@db.internal:6543/chat?connection_limit=3&pool_timeout=7&connect_timeout=2.5&sslmode=disable&application_name=x",
        )])
        .unwrap();
        let db = &s.database;
        assert_eq!(db.connection_limit, 3);
        assert_eq!(db.pool_max_size(), 2);
        assert_eq!(db.max_wait, Duration::from_secs(7));
        assert_eq!(db.connect_timeout, Duration::from_millis(2500));
        let DatabaseSource::Url(cfg) = &db.source else {
            panic!("expected a URL source")
        };
        assert_eq!(cfg.get_user(), Some("app"));
        assert_eq!(cfg.get_dbname(), Some("chat"));
        assert_eq!(cfg.get_ports(), &[6543]);
        assert_eq!(
            cfg.get_connect_timeout(),
            Some(&Duration::from_millis(2500))
        );
    }

    #[test]
    fn tx_max_wait_env_wins_over_pool_timeout() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://u@h/d?pool_timeout=9"),
            ("CHATPOOL_TX_MAX_WAIT_MS", "150"),
        ])
        .unwrap();
        assert_eq!(s.database.max_wait, Duration::from_millis(150));
    }

    #[test]
    fn flag_wins_over_environment_for_listen() {
        let s = Settings::from_lookup(Some("0.0.0.0:0"), |k| {
            (k == "CHATPOOL_LISTEN").then(|| "127.0.0.1:9999".to_owned())
        })
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:0".parse().unwrap());
    }

    #[test]
    fn connection_limit_must_be_a_number_of_at_least_two() {
        for bad in ["abc", "0", "1", "-4", "2.5", ""] {
            let e = url_err(&format!("postgres://u@h/d?connection_limit={bad}"));
            assert_eq!(e.param, "connection_limit", "value {bad:?}");
        }
    }

    #[test]
    fn timeouts_must_be_positive() {
        for (param, bad) in [
            ("pool_timeout", "-1"),
            ("pool_timeout", "0"),
            ("pool_timeout", "soon"),
            ("connect_timeout", "-3"),
            ("connect_timeout", "NaN"),
        ] {
            let e = url_err(&format!("postgres://u@h/d?{param}={bad}"));
            assert_eq!(e.param, param, "value {bad:?}");
        }
        for var in [
            "CHATPOOL_TX_MAX_WAIT_MS",
            "CHATPOOL_TX_TIMEOUT_MS",
            "CHATPOOL_SHUTDOWN_TIMEOUT_MS",
            "CHATPOOL_MAX_SOCKETS",
            "CHATPOOL_HEARTBEAT_MS",
        ] {
            for bad in ["-5", "0", "ten"] {
                let e = settings(&[(var, bad)]).unwrap_err();
                assert_eq!(e.param, var, "value {bad:?}");
            }
        }
    }

    #[test]
    fn unparsable_urls_are_refused() {
        assert_eq!(url_err("not a url").param, "DATABASE_URL");
        assert_eq!(url_err("mysql://u@h/d").param, "DATABASE_URL");
        assert_eq!(url_err("postgres://u@h:notaport/d").param, "DATABASE_URL");
    }

    #[test]
    fn other_values_are_checked() {
        assert_eq!(
            settings(&[("CHATPOOL_LISTEN", "nowhere")])
                .unwrap_err()
                .param,
            "CHATPOOL_LISTEN"
        );
        assert_eq!(
            settings(&[("CHATPOOL_LOG_FORMAT", "xml")])
                .unwrap_err()
                .param,
            "CHATPOOL_LOG_FORMAT"
        );
        assert_eq!(
            settings(&[("CHATPOOL_REGISTRATION", "maybe")])
                .unwrap_err()
                .param,
            "CHATPOOL_REGISTRATION"
        );
    }

    #[test]
    fn error_is_one_line_naming_the_parameter() {
        let e = url_err("postgres://u@h/d?connection_limit=abc");
        let line = e.to_string();
        assert!(line.starts_with("invalid configuration: connection_limit:"));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
