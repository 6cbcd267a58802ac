//! Tests of [`EmbeddedPostgres`] as a whole: its URL, and a real cluster
//! through init, stop, reuse, a stale pid file and adoption.
//!
//! The other files' tests sit next to their code; these need every part of
//! the module at once, so they have a file of their own.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::geteuid;

use super::adopt::{write_owner, OWNER_FILE};
use super::data_dir::INIT_TMP_DIR;
use super::discovery::installed_bin_dir;
use super::*;

#[test]
fn url_puts_the_socket_dir_in_the_host() {
    let url = format!(
        "postgres://{SUPERUSER}@{}:{PORT}/{}",
        percent_encode(b"/tmp/my data/postgres"),
        percent_encode(b"chatpool")
    );
    assert_eq!(
        url,
        "postgres://chatpool@%2Ftmp%2Fmy%20data%2Fpostgres:5432/chatpool"
    );
    let config: tokio_postgres::Config = url.parse().unwrap();
    assert_eq!(
        config.get_hosts(),
        [tokio_postgres::config::Host::Unix(PathBuf::from(
            "/tmp/my data/postgres"
        ))]
    );
    assert_eq!(config.get_ports(), [5432]);
    assert_eq!(config.get_dbname(), Some("chatpool"));
    assert_eq!(config.get_user(), Some("chatpool"));
    // The generic URL parser (used to strip pool parameters) accepts it too.
    let parsed = url::Url::parse(&format!("{url}?connection_limit=5")).unwrap();
    assert_eq!(parsed.path(), "/chatpool");
}

/// Query `sql` on the embedded server over its Unix socket.
fn query(pg: &EmbeddedPostgres, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("{}?connect_timeout=10", pg.url(EmbeddedPostgres::DATABASE));
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let rows = tokio::time::timeout(Duration::from_secs(30), client.simple_query(sql))
            .await
            .expect("query timed out")?;
        Ok(rows
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect())
    })
}

/// Starts a real cluster: init, data, clean stop, reuse, stale pid file,
/// adoption of a running server. Skipped when PostgreSQL is not installed.
#[test]
fn cluster_starts_stops_and_keeps_its_data() {
    if installed_bin_dir().is_err() {
        eprintln!("skipping: no PostgreSQL binaries on this machine");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    if geteuid().is_root() {
        // The unprivileged server user must be able to traverse it.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    }
    let opts = EmbeddedOptions {
        data_dir: tmp.path().join("data"),
        max_connections: 37,
        settings: Vec::new(),
    };

    // First run: initialise and start.
    let pg = EmbeddedPostgres::start(&opts).unwrap();
    assert!(pg.pgdata().join("PG_VERSION").is_file());
    assert!(!tmp.path().join("data").join(INIT_TMP_DIR).exists());
    assert!(pg.pgdata().join(format!(".s.PGSQL.{PORT}")).exists());
    query(
        &pg,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')",
    )
    .unwrap();
    assert_eq!(query(&pg, "SHOW max_connections").unwrap(), ["37"]);
    assert_eq!(query(&pg, "SHOW listen_addresses").unwrap(), [""]);
    assert_eq!(query(&pg, "SELECT current_user").unwrap(), ["chatpool"]);
    pg.stop().unwrap();
    pg.stop().unwrap(); // idempotent
    assert!(
        query(&pg, "SELECT 1").is_err(),
        "server still answers after stop"
    );
    drop(pg);

    // Second run: reuse, data preserved.
    let pg = EmbeddedPostgres::start(&opts).unwrap();
    assert_eq!(query(&pg, "SELECT v FROM t").unwrap(), ["kept"]);

    // A second start while it runs adopts the running server.
    let again = EmbeddedPostgres::start(&opts).unwrap();
    assert_eq!(query(&again, "SELECT v FROM t").unwrap(), ["kept"]);

    // ... and leaves it running when another live process owns it (pid 1 here).
    let owner_file = tmp.path().join("data").join(OWNER_FILE);
    fs::write(&owner_file, "1\n").unwrap();
    let guest = EmbeddedPostgres::start(&opts).unwrap();
    guest.stop().unwrap();
    drop(guest);
    assert_eq!(query(&pg, "SELECT v FROM t").unwrap(), ["kept"]);
    write_owner(&tmp.path().join("data")).unwrap();

    again.stop().unwrap();
    pg.stop().unwrap();
    drop((pg, again));

    // A stale pid file (its pid is this test process, not a postgres) is removed.
    let pgdata = tmp.path().join("data/postgres");
    fs::write(
        pgdata.join("postmaster.pid"),
        format!(
            "{}\n{}\n0\n{PORT}\n\n\n0 0\nready\n",
            std::process::id(),
            pgdata.display()
        ),
    )
    .unwrap();
    let pg = EmbeddedPostgres::start(&opts).unwrap();
    assert_eq!(query(&pg, "SELECT v FROM t").unwrap(), ["kept"]);
    pg.stop().unwrap();
    drop(pg);

    // A server that cannot start: the error quotes the log.
    let bad = EmbeddedOptions {
        max_connections: 0,
        settings: Vec::new(),
        ..opts
    };
    let err = EmbeddedPostgres::start(&bad).unwrap_err().to_string();
    assert!(err.contains("pg_ctl start failed"), "{err}");
    assert!(
        err.contains("Last lines of") && err.contains("max_connections"),
        "{err}"
    );
}

/// As root, a data directory holding anything but chatpool's own entries is
/// refused, not handed to the server's user.
#[test]
fn as_root_a_data_directory_with_foreign_content_is_refused_and_left_alone() {
    use std::os::unix::fs::MetadataExt;
    if !geteuid().is_root() || installed_bin_dir().is_err() {
        eprintln!("skipping: needs root and PostgreSQL binaries");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("shared");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("someone-elses.conf"), "x").unwrap();
    let opts = EmbeddedOptions {
        data_dir: data.clone(),
        max_connections: 10,
        settings: Vec::new(),
    };
    let Err(err) = EmbeddedPostgres::start(&opts) else {
        panic!("a directory with foreign content was used");
    };
    assert!(err.to_string().contains("not chatpool's"), "{err}");
    assert_eq!(
        fs::metadata(&data).unwrap().uid(),
        0,
        "the directory was handed over"
    );
    assert!(!data.join("postgres").exists());
}
