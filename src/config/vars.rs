//! Every setting, once: its environment variable, its flag, its default and
//! what it means. The command line is built from this table (each row a
//! global flag with clap's `env`, so `--help` lists them all with their
//! defaults and variables), and [`super::Settings::from_lookup`] reads the
//! values by variable name.

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    /// The environment variable.
    pub env: &'static str,
    /// The long flag, without `--`.
    pub flag: &'static str,
    /// The default, as `--help` shows it.
    pub default: &'static str,
    /// One line on what it does.
    pub help: &'static str,
}

const fn var(
    env: &'static str,
    flag: &'static str,
    default: &'static str,
    help: &'static str,
) -> Var {
    Var {
        env,
        flag,
        default,
        help,
    }
}

/// Every setting of `chatpool`, in the README's order.
pub const VARS: &[Var] = &[
    var(
        "DATABASE_URL",
        "database-url",
        "unset: embedded PostgreSQL",
        "postgres:// URL of the database; takes Prisma's parameters (connection_limit, \
         pool_timeout, connect_timeout, schema, pgbouncer, sslmode, ...)",
    ),
    var(
        "CHATPOOL_LISTENER_DATABASE_URL",
        "listener-database-url",
        "DATABASE_URL",
        "where the one LISTEN connection goes (PostgreSQL itself when DATABASE_URL is a PgBouncer)",
    ),
    var(
        "CHATPOOL_LISTEN",
        "listen",
        "127.0.0.1:8080",
        "HOST:PORT to serve HTTP and WebSocket on; port 0 picks a free port",
    ),
    var(
        "CHATPOOL_METRICS_LISTEN",
        "metrics-listen",
        "unset: /metrics on the main port",
        "HOST:PORT to serve /metrics on instead of the main port",
    ),
    var(
        "CHATPOOL_TX_MAX_WAIT_MS",
        "tx-max-wait-ms",
        "2000",
        "longest wait for a free pooled connection before db_busy (wins over pool_timeout)",
    ),
    var(
        "CHATPOOL_TX_TIMEOUT_MS",
        "tx-timeout-ms",
        "5000",
        "longest a transaction may run before it is rolled back with db_timeout",
    ),
    var(
        "CHATPOOL_POOL_IDLE_TIMEOUT_MS",
        "pool-idle-timeout-ms",
        "600000",
        "a pooled connection idle for longer is closed; the pool reopens on demand",
    ),
    var(
        "CHATPOOL_SHUTDOWN_TIMEOUT_MS",
        "shutdown-timeout-ms",
        "10000",
        "deadline for the whole graceful shutdown",
    ),
    var(
        "CHATPOOL_DATA_DIR",
        "data-dir",
        "./data",
        "directory of the embedded PostgreSQL cluster (unused with DATABASE_URL)",
    ),
    var(
        "CHATPOOL_MAX_SOCKETS",
        "max-sockets",
        "10000",
        "WebSocket sessions held at once; past it an upgrade gets 503",
    ),
    var(
        "CHATPOOL_MAX_HTTP_CONNECTIONS",
        "max-http-connections",
        "1024",
        "HTTP connections open at once; past it a new one gets 503 server_busy",
    ),
    var(
        "CHATPOOL_BODY_TIMEOUT_MS",
        "body-timeout-ms",
        "30000",
        "longest a request body may take to arrive; then 408 request_timeout",
    ),
    var(
        "CHATPOOL_HEARTBEAT_MS",
        "heartbeat-ms",
        "30000",
        "interval of the server's WebSocket pings; a peer silent for three is dropped",
    ),
    var(
        "CHATPOOL_PRESENCE_LEASE_MS",
        "presence-lease-ms",
        "30000",
        "an instance's presence outlives its last renewal this long (renewed every third; 1000-40000)",
    ),
    var(
        "CHATPOOL_SEND_RATE",
        "send-rate",
        "10",
        "messages per second per user, HTTP and WebSocket together (0: off)",
    ),
    var(
        "CHATPOOL_SEND_BURST",
        "send-burst",
        "30",
        "burst allowed above CHATPOOL_SEND_RATE (0: off)",
    ),
    var(
        "CHATPOOL_REGISTER_RATE",
        "register-rate",
        "30",
        "registrations per address and room creations per member, per minute (0: off)",
    ),
    var(
        "CHATPOOL_MAX_SOCKETS_PER_USER",
        "max-sockets-per-user",
        "20",
        "WebSocket sessions per user on one instance; past it 429 (0: off)",
    ),
    var(
        "CHATPOOL_TRUSTED_PROXIES",
        "trusted-proxies",
        "unset",
        "addresses or CIDRs of proxies whose last X-Forwarded-For entry names the client",
    ),
    var(
        "CHATPOOL_CORS_ORIGINS",
        "cors-origins",
        "unset: no CORS headers",
        "comma-separated origins allowed to call the API from a browser, or *",
    ),
    var(
        "CHATPOOL_TOKEN_TTL",
        "token-ttl",
        "30d",
        "how long a token works after it was issued (12h, 90m, 5s, ...)",
    ),
    var(
        "CHATPOOL_REGISTRATION",
        "registration",
        "open",
        "open: anyone may register; closed: registration answers 403",
    ),
    var(
        "CHATPOOL_LOG_FORMAT",
        "log-format",
        "pretty",
        "pretty or json, on stderr (the filter is RUST_LOG)",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_is_its_variable_in_lower_case() {
        for v in VARS {
            let expected = v
                .env
                .trim_start_matches("CHATPOOL_")
                .to_ascii_lowercase()
                .replace('_', "-");
            assert_eq!(v.flag, expected, "{}", v.env);
        }
    }
}
