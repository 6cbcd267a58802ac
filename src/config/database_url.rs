//! `DATABASE_URL`: a libpq/Prisma connection URL split into what chatpool
//! consumes (pool limits, schema, PgBouncer mode, TLS) and what the driver
//! gets (SPEC §1 and §6).
//!
//! Every Prisma PostgreSQL parameter is accepted with Prisma's meaning, the
//! driver's own parameters pass through, and anything else stops the process
//! with a message naming the parameter: a typo must not silently become a
//! default.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{ConfigError, DEFAULT_CONNECTION_LIMIT, DEFAULT_CONNECT_TIMEOUT};

/// libpq's `sslmode`, as chatpool implements it with rustls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, without checking the certificate; plain
    /// otherwise (libpq's default).
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS with a certificate chain that verifies against the trusted roots;
    /// any host name.
    VerifyCa,
    /// `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the server's certificate is checked.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// How connections are encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert` (or Prisma's `sslcert`): the CA certificates to trust,
    /// PEM; the system's roots when unset.
    pub root_cert: Option<PathBuf>,
}

impl TlsSettings {
    /// No TLS (the embedded cluster's Unix socket).
    pub fn disabled() -> Self {
        Self {
            mode: SslMode::Disable,
            root_cert: None,
        }
    }
}

/// Session behaviour asked for in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// Prisma's `schema`: where chatpool's tables and migrations live
    /// (created if missing); `None` is `public`.
    pub schema: Option<String>,
    /// Prisma's `pgbouncer=true`: a PgBouncer in transaction mode sits in
    /// between, so nothing may rely on the session (no startup `options`, no
    /// prepared statement kept past a transaction, every statement inside a
    /// transaction).
    pub pgbouncer: bool,
    /// Prepared statements cached per connection (`statement_cache_size=0`
    /// or `pgbouncer=true` turn it off).
    pub statement_cache: bool,
    /// The URL's own `options` (server settings), applied before chatpool's.
    pub options: Option<String>,
    /// Those `options` as `(name, value)` pairs, which is how they are set
    /// behind a PgBouncer (`SET LOCAL` in every transaction).
    pub option_settings: Vec<(String, String)>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            schema: None,
            pgbouncer: false,
            statement_cache: true,
            options: None,
            option_settings: Vec::new(),
        }
    }
}

/// `DATABASE_URL` split into chatpool's parameters and the driver's part.
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
    /// Prisma's `socket_timeout`: the longest a statement may run, the same
    /// limit as `CHATPOOL_TX_TIMEOUT_MS` (which wins when both are given).
    pub socket_timeout: Option<Duration>,
    /// Prisma's `max_idle_connection_lifetime`, when given.
    pub idle_timeout: Option<Duration>,
    /// Prisma's `max_connection_lifetime`, when given.
    pub max_lifetime: Option<Duration>,
    /// Schema, PgBouncer mode, statement cache, `options`.
    pub session: SessionSettings,
    /// `sslmode`, `sslrootcert`.
    pub tls: TlsSettings,
}

/// Parameters the driver (tokio-postgres) understands, passed through as given.
const DRIVER_PARAMS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "channel_binding",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "tcp_user_timeout",
    "target_session_attrs",
    "load_balance_hosts",
];

impl DatabaseUrl {
    /// Parses `DATABASE_URL`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `DATABASE_URL` or the parameter at fault.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        Self::parse_as("DATABASE_URL", raw)
    }

    /// Parses `CHATPOOL_LISTENER_DATABASE_URL`: one session, so the pool's
    /// parameters have no meaning there and are refused by name.
    ///
    /// # Errors
    /// As [`DatabaseUrl::parse_as`], or a pool parameter.
    pub fn parse_listener(raw: &str) -> Result<Self, ConfigError> {
        const PARAM: &str = "CHATPOOL_LISTENER_DATABASE_URL";
        const POOL_ONLY: &[&str] = &[
            "connection_limit",
            "pool_timeout",
            "pgbouncer",
            "statement_cache_size",
            "socket_timeout",
            "max_idle_connection_lifetime",
            "max_connection_lifetime",
            "schema",
        ];
        let parsed = Self::parse_as(PARAM, raw)?;
        if let Ok(url) = url::Url::parse(raw.trim()) {
            if let Some((key, _)) = url
                .query_pairs()
                .find(|(k, _)| POOL_ONLY.contains(&k.as_ref()))
            {
                return Err(ConfigError::new(
                    key.as_ref(),
                    format!(
                        "has no meaning in {PARAM} (the one LISTEN session, straight to \
                         PostgreSQL): set it in DATABASE_URL"
                    ),
                ));
            }
        }
        Ok(parsed)
    }

    /// Parses a URL given as `param` (`DATABASE_URL`,
    /// `CHATPOOL_LISTENER_DATABASE_URL`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `param` or the URL parameter at fault.
    pub fn parse_as(param: &str, raw: &str) -> Result<Self, ConfigError> {
        let mut url = url::Url::parse(raw.trim())
            .map_err(|e| ConfigError::new(param, format!("not a valid URL ({e})")))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::new(
                param,
                format!(
                    "scheme must be postgres:// or postgresql://, got {}://",
                    url.scheme()
                ),
            ));
        }

        let mut connection_limit = DEFAULT_CONNECTION_LIMIT;
        let mut pool_timeout = None;
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        let mut idle_timeout = None;
        let mut max_lifetime = None;
        let mut socket_timeout = None;
        let mut session = SessionSettings::default();
        let mut cache_size: Option<u64> = None;
        let mut mode = None;
        let mut root_cert = None;
        let mut accept = None;
        let mut system_roots = false;
        let mut rest = Vec::new();
        let mut socket = None;
        for (key, value) in url.query_pairs() {
            let value = value.trim().to_owned();
            match key.as_ref() {
                "connection_limit" => {
                    connection_limit = value.parse::<u32>().ok().filter(|n| *n >= 2).ok_or_else(|| {
                        ConfigError::new(
                            "connection_limit",
                            format!("in {param} must be a whole number of at least 2 (one connection is reserved for the listener), got {value:?}"),
                        )
                    })?;
                }
                "pool_timeout" => pool_timeout = Some(seconds(param, "pool_timeout", &value)?),
                "connect_timeout" => connect_timeout = seconds(param, "connect_timeout", &value)?,
                "socket_timeout" => socket_timeout = Some(seconds(param, "socket_timeout", &value)?),
                "max_idle_connection_lifetime" => {
                    idle_timeout = Some(seconds(param, "max_idle_connection_lifetime", &value)?)
                }
                "max_connection_lifetime" => {
                    max_lifetime = Some(seconds(param, "max_connection_lifetime", &value)?)
                }
                "schema" => session.schema = Some(schema_name(&value)?),
                "pgbouncer" => session.pgbouncer = boolean("pgbouncer", &value)?,
                "statement_cache_size" => {
                    cache_size = Some(value.parse().map_err(|_| {
                        ConfigError::new(
                            "statement_cache_size",
                            format!("must be a whole number (0 turns the cache off), got {value:?}"),
                        )
                    })?)
                }
                "options" => session.options = Some(value).filter(|v| !v.is_empty()),
                // chatpool tags every connection `chatpool` (SPEC §1): the
                // connection promise is counted by that name.
                "application_name" => {}
                "sslmode" => {
                    mode = Some(SslMode::parse(&value).ok_or_else(|| {
                        ConfigError::new(
                            "sslmode",
                            format!("expected disable, prefer, require, verify-ca or verify-full, got {value:?}"),
                        )
                    })?)
                }
                // libpq's CA file, and Prisma's name for the same thing.
                // libpq's `system`: the system's roots, verify-full by default.
                "sslrootcert" if value == "system" => system_roots = true,
                "sslrootcert" | "sslcert" => root_cert = Some(PathBuf::from(value)),
                "sslaccept" => {
                    accept = Some(match value.as_str() {
                        "strict" => true,
                        "accept_invalid_certs" => false,
                        _ => {
                            return Err(ConfigError::new(
                                "sslaccept",
                                format!("expected strict or accept_invalid_certs, got {value:?}"),
                            ))
                        }
                    })
                }
                "sslidentity" | "sslpassword" | "sslkey" => {
                    return Err(ConfigError::new(
                        key.as_ref(),
                        "client certificates are not supported: authenticate with a password",
                    ))
                }
                // Prisma: a `host` that is a path means that Unix socket
                // only, whatever host the URL names.
                "host" if value.starts_with('/') => socket = Some(value),
                known if DRIVER_PARAMS.contains(&known) => {
                    rest.push((key.into_owned(), value));
                }
                other => {
                    return Err(ConfigError::new(
                        other,
                        format!("unknown parameter in {param}: neither a Prisma nor a libpq parameter chatpool supports"),
                    ))
                }
            }
        }
        session.statement_cache = !session.pgbouncer && cache_size != Some(0);
        if let Some(options) = &session.options {
            match option_settings(options) {
                Some(pairs) => session.option_settings = pairs,
                // Only behind a PgBouncer must they be taken apart.
                None if session.pgbouncer => {
                    return Err(ConfigError::new(
                        "options",
                        format!(
                            "with pgbouncer=true each option must be -c name=value (set per \
                             transaction), got {options:?}"
                        ),
                    ))
                }
                None => {}
            }
        }
        if system_roots && mode.is_none() {
            mode = Some(SslMode::VerifyFull);
        }
        let mut tls = tls_settings(mode, root_cert, accept)?;

        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        if let Some(dir) = socket {
            url.set_host(Some(&percent_encode(&dir))).map_err(|e| {
                ConfigError::new("host", format!("not a usable socket directory ({e})"))
            })?;
        }
        let mut driver = tokio_postgres::Config::from_str(url.as_str())
            .map_err(|e| ConfigError::new(param, format!("the driver cannot use it ({e})")))?;
        driver.connect_timeout(connect_timeout);
        // libpq ignores sslmode on a Unix socket; PostgreSQL offers no TLS there.
        let unix_only = driver
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        if unix_only {
            tls = TlsSettings::disabled();
        }
        driver.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok(Self {
            driver,
            connection_limit,
            pool_timeout,
            connect_timeout,
            socket_timeout,
            idle_timeout,
            max_lifetime,
            session,
            tls,
        })
    }
}

/// `sslmode` with Prisma's `sslaccept` folded in: `strict` asks for a
/// verified certificate (verify-full unless verify-ca was asked for), and
/// `accept_invalid_certs` cannot be combined with a verifying mode.
fn tls_settings(
    mode: Option<SslMode>,
    root_cert: Option<PathBuf>,
    accept: Option<bool>,
) -> Result<TlsSettings, ConfigError> {
    let mode = match (mode.unwrap_or(SslMode::Prefer), accept) {
        (SslMode::Disable, Some(true)) => {
            return Err(ConfigError::new(
                "sslaccept",
                "strict needs TLS, but sslmode is disable",
            ))
        }
        (SslMode::Prefer | SslMode::Require, Some(true)) => SslMode::VerifyFull,
        (m, Some(false)) if m.verifies() => {
            return Err(ConfigError::new(
                "sslaccept",
                "accept_invalid_certs contradicts sslmode=verify-ca/verify-full",
            ))
        }
        (m, _) => m,
    };
    Ok(TlsSettings { mode, root_cert })
}

/// Seconds as Prisma writes them; fractions allowed, zero (Prisma's "no
/// limit") refused because chatpool never waits without a bound.
fn seconds(url_param: &str, name: &str, value: &str) -> Result<Duration, ConfigError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            ConfigError::new(
                name,
                format!(
                    "in {url_param} must be a number of seconds greater than 0 and at most \
                     86400, got {value:?}"
                ),
            )
        })
}

fn boolean(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ConfigError::new(
            name,
            format!("expected true or false, got {value:?}"),
        )),
    }
}

/// A schema name chatpool can quote safely (it is always written as a
/// quoted identifier): at most 63 bytes, no `"`, `\\`, control character or
/// white space, not starting with `pg_` (PostgreSQL's own). Prisma's
/// `hello-prisma` is fine. `public` is the default.
fn schema_name(value: &str) -> Result<String, ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && !value
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control() || c.is_whitespace())
        && !value.starts_with("pg_");
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::new(
            "schema",
            format!(
                "expected a schema name of at most 63 bytes without quotes, backslashes or \
                 spaces, not starting with pg_, got {value:?}"
            ),
        ))
    }
}

/// `-c name=value` / `--name=value` options as pairs; `None` when any word is
/// something else, or a value needs quoting the server's option syntax has.
fn option_settings(options: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next()?
        } else {
            word.strip_prefix("--")
                .or_else(|| word.strip_prefix("-c"))?
        };
        let (name, value) = setting.split_once('=')?;
        let name = name.replace('-', "_");
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !name_ok || value.contains('\\') {
            return None;
        }
        pairs.push((name, value.to_owned()));
    }
    Some(pairs)
}

/// Percent-encodes everything but unreserved characters (a socket path as a URL host).
fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
