//! Throwaway PostgreSQL clusters, so tests and benches need no database
//! server set up beforehand and never touch anyone else's data.
//!
//! A [`Cluster`] is chatpool's own embedded cluster (see `crate::embedded`)
//! in a temporary directory. The tests share one, started on first use by
//! [`cluster()`], and give every test its own database on it
//! ([`Cluster::create_database`]), dropped again when the test's
//! [`TestDatabase`] goes out of scope. The benchmark starts its own with
//! PostgreSQL's durable defaults. Statics are never dropped, so each cluster
//! has a detached watchdog that stops it and removes its directory once this
//! process has exited, however it exits.
//!
//! Harness connections (CREATE/DROP DATABASE, counting connections) carry
//! `application_name=chatpool-tests`, so they are never mistaken for the
//! server's own (`application_name=chatpool`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::embedded::{EmbeddedOptions, EmbeddedPostgres};

use super::pg::{self, ADMIN_APP, ADMIN_TIMEOUT};

static SHARED: OnceLock<Cluster> = OnceLock::new();

/// The one cluster the tests of this process share, started on first use
/// (with [`ClusterOptions::for_tests`]), so a test binary runs `initdb` once.
///
/// Blocking on first call (a few seconds for `initdb`); safe to call from any
/// thread or tokio runtime, including from several tests at once.
pub fn cluster() -> &'static Cluster {
    SHARED.get_or_init(|| Cluster::start(ClusterOptions::for_tests()))
}

/// How a [`Cluster`] is set up: tests want speed, benchmarks want the
/// settings a real deployment would have.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The server's `max_connections`: above what every app and harness
    /// connection of the run may open at once.
    pub max_connections: u32,
    /// Keep PostgreSQL's durable defaults (`fsync`, `synchronous_commit`,
    /// `full_page_writes` on) instead of turning them off for speed.
    pub durable: bool,
    /// Server settings on its command line (TCP, TLS), after chatpool's own.
    pub settings: Vec<(String, String)>,
}

impl ClusterOptions {
    /// What the shared test cluster uses: room for many tests' pools at once,
    /// no fsync (test data need not survive an OS crash), and
    /// `pg_stat_statements`, so tests can count the statements a request
    /// costs ([`Cluster::statement_calls`]).
    pub fn for_tests() -> Self {
        ClusterOptions {
            max_connections: 300,
            durable: false,
            settings: vec![(
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            )],
        }
    }
}

/// A running embedded cluster in a temporary directory of its own.
pub struct Cluster {
    /// Declared first, so it is dropped (stopping the server) before `dir`.
    pg: Mutex<EmbeddedPostgres>,
    opts: EmbeddedOptions,
    /// Kept so the directory is not removed while the cluster runs; the
    /// watchdog removes it after the process exits (statics are never dropped).
    dir: tempfile::TempDir,
    /// Never waited for: it outlives this process on purpose.
    _watchdog: Child,
}

impl Cluster {
    /// The database every embedded cluster is created with ("chatpool"): for
    /// connections that are about the cluster, not one test's data.
    pub const DEFAULT_DATABASE: &'static str = EmbeddedPostgres::DATABASE;

    /// Initialises and starts a cluster in a fresh temporary directory.
    ///
    /// Blocking (a few seconds for `initdb`); it uses no tokio runtime, so it
    /// may run anywhere, `spawn_blocking` included. Panics when PostgreSQL
    /// cannot be started: nothing a test or bench does works without it.
    pub fn start(options: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("chatpool-tests-")
            .tempdir()
            .expect("create a temporary directory for the test cluster");
        // When root, PostgreSQL runs as an unprivileged user that must be able
        // to traverse this directory (tempdirs are created 0700).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the test cluster directory");
        let opts = EmbeddedOptions {
            data_dir: dir.path().join("data"),
            max_connections: options.max_connections,
            settings: options.settings.clone(),
        };
        let pg = EmbeddedPostgres::start(&opts)
            .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL cluster: {e}"));
        let watchdog = spawn_watchdog(dir.path(), pg.pgdata());
        let cluster = Cluster {
            pg: Mutex::new(pg),
            opts,
            dir,
            _watchdog: watchdog,
        };
        if options
            .settings
            .iter()
            .any(|(k, v)| k == "shared_preload_libraries" && v.contains("pg_stat_statements"))
        {
            cluster.admin_sync(&["CREATE EXTENSION IF NOT EXISTS pg_stat_statements"]);
        }
        if !options.durable {
            // ALTER SYSTEM cannot share a multi-statement query.
            cluster.admin_sync(&[
                "ALTER SYSTEM SET fsync = off",
                "ALTER SYSTEM SET synchronous_commit = off",
                "ALTER SYSTEM SET full_page_writes = off",
                "SELECT pg_reload_conf()",
            ]);
        }
        cluster
    }

    /// Creates a fresh database with a random name (`t_<16 hex>`), so a test
    /// sees only its own rows; it is dropped with the returned handle.
    pub async fn create_database(&self) -> TestDatabase {
        let name = format!("t_{:016x}", rand::random::<u64>());
        let client = pg::connect(&self.admin_url()).await;
        tokio::time::timeout(
            ADMIN_TIMEOUT,
            client.batch_execute(&format!("CREATE DATABASE \"{name}\"")),
        )
        .await
        .unwrap_or_else(|_| panic!("CREATE DATABASE {name} timed out"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TestDatabase {
            url: self.url(&name),
            admin_url: self.admin_url(),
            name,
        }
    }

    /// Driver URL for `database` on this cluster, as its superuser over the
    /// Unix socket: what `DATABASE_URL` or a harness connection needs.
    pub fn url(&self, database: &str) -> String {
        self.embedded().url(database)
    }

    /// How many server processes of `database` have `application_name`
    /// (from `pg_stat_activity`), e.g. to check chatpool never exceeds its
    /// connection limit.
    pub async fn connections_of(&self, database: &str, application_name: &str) -> i64 {
        count_connections(&self.admin_url(), database, application_name).await
    }

    /// Every statement `pg_stat_statements` has seen on `database`, with
    /// how often it ran (utility statements such as `BEGIN` included): take
    /// it before and after a request to count what the request ran.
    pub async fn statement_calls(&self, database: &str) -> Vec<(String, i64)> {
        let client = pg::connect(&self.admin_url()).await;
        client
            .query(
                "SELECT s.query, sum(s.calls)::bigint FROM pg_stat_statements s \
                 JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1 GROUP BY s.query",
                &[&database],
            )
            .await
            .expect("pg_stat_statements (loaded by the shared test cluster)")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// How many times each statement of `database` ran between two
    /// [`Cluster::statement_calls`] readings (only those that ran).
    pub fn statements_between(
        before: &[(String, i64)],
        after: &[(String, i64)],
    ) -> Vec<(String, i64)> {
        after
            .iter()
            .filter_map(|(query, calls)| {
                let was: i64 = before
                    .iter()
                    .filter(|(q, _)| q == query)
                    .map(|(_, c)| c)
                    .sum();
                (calls - was > 0).then(|| (query.clone(), calls - was))
            })
            .collect()
    }

    /// Stops the server (blocking), as an outage would: for tests of what
    /// the app does while its database is gone.
    pub fn stop(&self) {
        self.embedded().stop().expect("the test cluster stops");
    }

    /// Starts the server again on the same data (blocking) after [`Cluster::stop`]:
    /// the database comes back.
    pub fn start_again(&self) {
        let mut pg = self.embedded();
        pg.stop().expect("the test cluster is stopped first");
        *pg = EmbeddedPostgres::start(&self.opts)
            .unwrap_or_else(|e| panic!("cannot restart the test PostgreSQL cluster: {e}"));
    }

    /// The directory of the server's Unix socket (its data directory).
    pub fn socket_dir(&self) -> std::path::PathBuf {
        self.embedded().pgdata().to_path_buf()
    }

    /// The temporary directory holding the cluster and its log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn embedded(&self) -> std::sync::MutexGuard<'_, EmbeddedPostgres> {
        self.pg.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admin_url(&self) -> String {
        format!(
            "{}?application_name={ADMIN_APP}&connect_timeout=10",
            self.url("postgres")
        )
    }

    /// Runs each statement on an admin connection from a plain thread with its
    /// own runtime, so it works whether or not the caller is in a runtime.
    fn admin_sync(&self, statements: &[&str]) {
        let url = self.admin_url();
        let statements: Vec<String> = statements.iter().map(|s| s.to_string()).collect();
        let result = on_own_runtime(move || async move {
            let client = pg::connect(&url).await;
            for sql in &statements {
                tokio::time::timeout(ADMIN_TIMEOUT, client.batch_execute(sql))
                    .await
                    .map_err(|_| format!("timed out: {sql}"))?
                    .map_err(|e| format!("{sql}: {e}"))?;
            }
            Ok::<(), String>(())
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("test cluster admin command failed: {e}"),
            Err(()) => panic!("test cluster admin thread panicked"),
        }
    }
}

/// A fresh database on a [`Cluster`]; dropped (`WITH (FORCE)`) when this
/// handle is. Share it with `Arc` (several apps on one database).
pub struct TestDatabase {
    /// The database name (`t_<16 hex digits>`).
    pub name: String,
    /// Driver URL for it, as the cluster's superuser over the Unix socket.
    pub url: String,
    /// The cluster's admin URL, to drop the database and count connections.
    admin_url: String,
}

impl TestDatabase {
    /// How many server processes of this database have `application_name`
    /// right now (see [`Cluster::connections_of`]).
    pub async fn connections_of(&self, application_name: &str) -> i64 {
        count_connections(&self.admin_url, &self.name, application_name).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Never panic here (a panic while unwinding aborts the test binary).
        let url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let outcome = on_own_runtime(move || async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            tokio::time::timeout(ADMIN_TIMEOUT, client.batch_execute(&sql))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())
        });
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(()) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

async fn count_connections(admin_url: &str, database: &str, application_name: &str) -> i64 {
    let client = pg::connect(admin_url).await;
    let row = tokio::time::timeout(
        ADMIN_TIMEOUT,
        client.query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2",
            &[&database, &application_name],
        ),
    )
    .await
    .expect("counting connections timed out")
    .expect("count connections in pg_stat_activity");
    row.get(0)
}

/// Runs `work` to completion on a current-thread runtime in a plain thread:
/// usable from `Drop` and from inside or outside any runtime.
fn on_own_runtime<F, Fut, T>(work: F) -> Result<T, ()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a runtime for the test harness")
            .block_on(work())
    })
    .join()
    .map_err(|_| ())
}

/// Starts a detached `sh` that waits for this process to exit, then stops the
/// cluster immediately (SIGQUIT to the postmaster, like `pg_ctl stop -m
/// immediate`, which also works when the server runs as another user) and
/// removes the temporary directory.
///
/// It runs in its own process group so a Ctrl-C aimed at `cargo test` does
/// not kill it before it has cleaned up.
fn spawn_watchdog(dir: &Path, pgdata: &Path) -> Child {
    const SCRIPT: &str = r#"
        test_pid=$1; dir=$2; pgdata=$3
        while kill -0 "$test_pid" 2>/dev/null; do sleep 1; done
        pid=$(head -n 1 "$pgdata/postmaster.pid" 2>/dev/null)
        if [ -n "$pid" ]; then
            kill -QUIT "$pid" 2>/dev/null
            i=0
            while [ "$i" -lt 30 ] && kill -0 "$pid" 2>/dev/null; do sleep 1; i=$((i + 1)); done
            if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
        fi
        rm -rf "$dir"
    "#;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("chatpool-tests-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .arg(pgdata)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the test cluster watchdog")
}
