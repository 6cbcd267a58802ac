//! Settings parsing: defaults, precedence, the URL's pool parameters and
//! every refusal.

use super::*;
use std::collections::HashMap;

fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|k| map.get(k).cloned())
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
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
    assert!(parse_duration("ten").is_err());
    assert!(parse_duration("5 parsecs").is_err());
    // Too large to represent: refused, not wrapped to something small.
    assert!(parse_duration("99999999999999999999h").is_err());
    assert!(parse_duration("18446744073709551615d").is_err());
}

#[test]
fn token_ttl_is_a_duration_of_30_days_by_default() {
    assert_eq!(
        settings(&[]).unwrap().token_ttl,
        Duration::from_secs(30 * 86_400)
    );
    for (raw, secs) in [("12h", 43_200), ("90m", 5_400), ("5s", 5)] {
        let s = settings(&[("CHATPOOL_TOKEN_TTL", raw)]).unwrap();
        assert_eq!(s.token_ttl, Duration::from_secs(secs), "{raw}");
    }
    for bad in ["0s", "forever", "-1h", "1000y"] {
        let err = settings(&[("CHATPOOL_TOKEN_TTL", bad)]).unwrap_err();
        assert!(
            err.to_string().contains("CHATPOOL_TOKEN_TTL"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_heartbeat_over_an_hour_is_refused() {
    let err = settings(&[("CHATPOOL_HEARTBEAT_MS", "18446744073709551615")]).unwrap_err();
    assert!(err.to_string().contains("CHATPOOL_HEARTBEAT_MS"), "{err}");
    assert!(settings(&[("CHATPOOL_HEARTBEAT_MS", "3600000")]).is_ok());
}

#[test]
fn abuse_limits_default_to_the_spec_and_zero_is_off() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.abuse, crate::limits::AbuseSettings::default());
    assert_eq!(
        (
            s.abuse.send_rate,
            s.abuse.send_burst,
            s.abuse.register_rate,
            s.abuse.max_sockets_per_user
        ),
        (10, 30, 30, 20)
    );
    let s = settings(&[
        ("CHATPOOL_SEND_RATE", "0"),
        ("CHATPOOL_MAX_SOCKETS_PER_USER", "0"),
    ])
    .unwrap();
    assert_eq!((s.abuse.send_rate, s.abuse.max_sockets_per_user), (0, 0));
    let err = settings(&[("CHATPOOL_SEND_BURST", "-1")]).unwrap_err();
    assert!(err.to_string().contains("CHATPOOL_SEND_BURST"), "{err}");
}

#[test]
fn trusted_proxies_are_addresses_or_networks() {
    let s = settings(&[("CHATPOOL_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1")]).unwrap();
    let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
    assert!(settings(&[("CHATPOOL_TRUSTED_PROXIES", "10.0.0.0/33")]).is_err());
    assert!(settings(&[("CHATPOOL_TRUSTED_PROXIES", "proxy.local")]).is_err());
}

#[test]
fn the_seeds_prisma_url_works_unchanged() {
    let s = settings(&[(
        "DATABASE_URL",
        "postgresql://user:pass@host:5432/db?schema=public&connection_limit=10&pool_timeout=20&connect_timeout=10",
    )])
    .unwrap();
    let db = &s.database;
    assert_eq!(db.connection_limit, 10);
    assert_eq!(db.max_wait, Duration::from_secs(20));
    assert_eq!(db.connect_timeout, Duration::from_secs(10));
    assert_eq!(db.session.schema.as_deref(), Some("public"));
    assert!(db.session.statement_cache && !db.session.pgbouncer);
    assert_eq!(db.tls.mode, SslMode::Prefer);
}

#[test]
fn every_prisma_parameter_is_taken_with_its_meaning() {
    let s = settings(&[
        (
            "DATABASE_URL",
            "postgresql://u:p@bouncer:6432/db?pgbouncer=true&statement_cache_size=100&socket_timeout=7\
             &sslmode=require&sslcert=/etc/ca.pem&sslaccept=strict&application_name=crm\
             &options=-c%20work_mem%3D8MB&max_idle_connection_lifetime=30&max_connection_lifetime=600\
             &channel_binding=prefer",
        ),
        (
            "CHATPOOL_LISTENER_DATABASE_URL",
            "postgresql://u:p@db:5432/db?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
        ),
    ])
    .unwrap();
    let db = &s.database;
    assert!(db.session.pgbouncer);
    assert!(!db.session.statement_cache, "pgbouncer=true turns it off");
    assert_eq!(db.session.options.as_deref(), Some("-c work_mem=8MB"));
    // strict upgrades require to a verified certificate.
    assert_eq!(db.tls.mode, SslMode::VerifyFull);
    assert_eq!(
        db.tls.root_cert.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
    assert_eq!(db.idle_timeout, Duration::from_secs(30));
    assert_eq!(db.max_lifetime, Some(Duration::from_secs(600)));
    let DatabaseSource::Url(cfg) = &db.source else {
        panic!("a URL")
    };
    assert_eq!(db.tx_timeout, Duration::from_secs(7));
    assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
    let listener = db.listener.as_ref().expect("a listener target");
    assert_eq!(listener.tls.mode, SslMode::VerifyCa);
    assert_eq!(listener.driver.get_ports(), &[5432]);

    let s = settings(&[("DATABASE_URL", "postgres://u@h/d?statement_cache_size=0")]).unwrap();
    assert!(!s.database.session.statement_cache);
    // CHATPOOL_POOL_IDLE_TIMEOUT_MS wins over max_idle_connection_lifetime.
    let s = settings(&[
        (
            "DATABASE_URL",
            "postgres://u@h/d?max_idle_connection_lifetime=30",
        ),
        ("CHATPOOL_POOL_IDLE_TIMEOUT_MS", "5s"),
    ])
    .unwrap();
    assert_eq!(s.database.idle_timeout, Duration::from_secs(5));
}

#[test]
fn unknown_and_unsupported_url_parameters_are_refused_by_name() {
    for (url, param) in [
        ("postgres://u@h/d?conection_limit=5", "conection_limit"),
        ("postgres://u@h/d?sslidentity=id.p12", "sslidentity"),
        ("postgres://u@h/d?sslpassword=x", "sslpassword"),
        ("postgres://u@h/d?sslmode=allow", "sslmode"),
        ("postgres://u@h/d?sslaccept=maybe", "sslaccept"),
        (
            "postgres://u@h/d?sslmode=verify-full&sslaccept=accept_invalid_certs",
            "sslaccept",
        ),
        ("postgres://u@h/d?pgbouncer=yes", "pgbouncer"),
        (
            "postgres://u@h/d?statement_cache_size=-1",
            "statement_cache_size",
        ),
        ("postgres://u@h/d?schema=a%22b", "schema"),
        ("postgres://u@h/d?schema=a%20b", "schema"),
        ("postgres://u@h/d?schema=pg_catalog", "schema"),
        ("postgres://u@h/d?socket_timeout=0", "socket_timeout"),
        ("postgres://u@h/d?options=-Xfoo&pgbouncer=true", "options"),
        // LISTEN and migrations cannot go through PgBouncer.
        ("postgres://u@h/d?pgbouncer=true", "pgbouncer"),
    ] {
        let e = url_err(url);
        assert_eq!(e.param, param, "{url}: {e}");
        assert!(e.to_string().contains(param), "{e}");
    }
    let e = settings(&[("CHATPOOL_LISTENER_DATABASE_URL", "postgres://u@h/d")]).unwrap_err();
    assert_eq!(e.param, "CHATPOOL_LISTENER_DATABASE_URL");
}

#[test]
fn a_unix_socket_host_never_asks_for_tls() {
    let s = settings(&[(
        "DATABASE_URL",
        "postgres://u@%2Fvar%2Frun%2Fpostgresql/d?sslmode=require",
    )])
    .unwrap();
    let DatabaseSource::Url(cfg) = &s.database.source else {
        panic!("a URL")
    };
    assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
}

#[test]
fn cors_origins_are_off_any_or_a_list_of_origins() {
    assert_eq!(settings(&[]).unwrap().cors, CorsOrigins::Off);
    let any = settings(&[("CHATPOOL_CORS_ORIGINS", "*")]).unwrap();
    assert_eq!(any.cors, CorsOrigins::Any);
    let list = settings(&[(
        "CHATPOOL_CORS_ORIGINS",
        "https://crm.example.com, http://localhost:3000",
    )])
    .unwrap();
    assert_eq!(
        list.cors,
        CorsOrigins::List(vec![
            "https://crm.example.com".into(),
            "http://localhost:3000".into()
        ])
    );
    for bad in [
        "crm.example.com",
        "https://crm.example.com/app",
        "ftp://x",
        "https://x/",
    ] {
        let e = settings(&[("CHATPOOL_CORS_ORIGINS", bad)]).unwrap_err();
        assert_eq!(e.param, "CHATPOOL_CORS_ORIGINS", "{bad}");
    }
}

#[test]
fn millisecond_settings_take_humantime_durations_too() {
    let s = settings(&[
        ("CHATPOOL_TX_TIMEOUT_MS", "3s"),
        ("CHATPOOL_SHUTDOWN_TIMEOUT_MS", "1m"),
        ("CHATPOOL_TX_MAX_WAIT_MS", "250"),
        ("CHATPOOL_METRICS_LISTEN", "127.0.0.1:0"),
    ])
    .unwrap();
    assert_eq!(s.database.tx_timeout, Duration::from_secs(3));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(60));
    assert_eq!(s.database.max_wait, Duration::from_millis(250));
    assert_eq!(s.database.idle_timeout, Duration::from_secs(600));
    assert_eq!(s.metrics_listen, Some("127.0.0.1:0".parse().unwrap()));
}

#[test]
fn prisma_host_path_schema_names_and_socket_timeout_keep_prismas_meaning() {
    // `host` as a path: that socket only, so no TLS is asked of it.
    let s = settings(&[(
        "DATABASE_URL",
        "postgresql://u:p@localhost/db?host=/var/run/postgresql&sslmode=require",
    )])
    .unwrap();
    let DatabaseSource::Url(cfg) = &s.database.source else {
        panic!("a URL")
    };
    assert_eq!(
        cfg.get_hosts(),
        &[tokio_postgres::config::Host::Unix(
            "/var/run/postgresql".into()
        )]
    );
    assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    // Prisma's own example schema name.
    let s = settings(&[("DATABASE_URL", "postgresql://u@h/d?schema=hello-prisma")]).unwrap();
    assert_eq!(s.database.session.schema.as_deref(), Some("hello-prisma"));
    // socket_timeout bounds statements, unless CHATPOOL_TX_TIMEOUT_MS says.
    let s = settings(&[("DATABASE_URL", "postgresql://u@h/d?socket_timeout=2")]).unwrap();
    assert_eq!(s.database.tx_timeout, Duration::from_secs(2));
    let s = settings(&[
        ("DATABASE_URL", "postgresql://u@h/d?socket_timeout=2"),
        ("CHATPOOL_TX_TIMEOUT_MS", "700"),
    ])
    .unwrap();
    assert_eq!(s.database.tx_timeout, Duration::from_millis(700));
}

#[test]
fn behind_pgbouncer_the_urls_options_are_set_per_transaction() {
    let listener = ("CHATPOOL_LISTENER_DATABASE_URL", "postgres://u@db/d");
    let s = settings(&[
        (
            "DATABASE_URL",
            "postgres://u@bouncer/d?pgbouncer=true&options=-c%20work_mem%3D8MB%20--lock-timeout%3D2s",
        ),
        listener,
    ])
    .unwrap();
    assert_eq!(
        s.database.session.option_settings,
        [
            ("work_mem".to_owned(), "8MB".to_owned()),
            ("lock_timeout".to_owned(), "2s".to_owned())
        ]
    );
    // Options that cannot be taken apart are refused in that mode only.
    let odd = "postgres://u@bouncer/d?pgbouncer=true&options=-Xfoo";
    assert_eq!(
        settings(&[("DATABASE_URL", odd), listener])
            .unwrap_err()
            .param,
        "options"
    );
    assert!(settings(&[("DATABASE_URL", "postgres://u@db/d?options=-Xfoo")]).is_ok());
    // The listener's URL takes no pool parameter.
    for pool_only in ["connection_limit=5", "pgbouncer=true", "schema=crm"] {
        let e = settings(&[
            ("DATABASE_URL", "postgres://u@bouncer/d"),
            (
                "CHATPOOL_LISTENER_DATABASE_URL",
                &format!("postgres://u@db/d?{pool_only}"),
            ),
        ])
        .unwrap_err();
        assert_eq!(e.param, pool_only.split('=').next().unwrap(), "{e}");
    }
    let s = settings(&[
        ("DATABASE_URL", "postgres://u@bouncer/d"),
        (
            "CHATPOOL_LISTENER_DATABASE_URL",
            "postgres://u@db/d?connect_timeout=3",
        ),
    ])
    .unwrap();
    assert_eq!(
        s.database.listener.unwrap().connect_timeout,
        Duration::from_secs(3)
    );
}

#[test]
fn sslrootcert_system_means_the_system_roots_and_verify_full() {
    let s = settings(&[(
        "DATABASE_URL",
        "postgres://u@db.example/d?sslrootcert=system",
    )])
    .unwrap();
    assert_eq!(s.database.tls.mode, SslMode::VerifyFull);
    assert_eq!(s.database.tls.root_cert, None);
    // A Unix socket needs no TLS, so no roots either.
    let s = settings(&[(
        "DATABASE_URL",
        "postgres://u@%2Ftmp%2Fpg/d?sslmode=verify-full",
    )])
    .unwrap();
    assert_eq!(s.database.tls.mode, SslMode::Disable);
}
