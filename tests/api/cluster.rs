//! The throwaway PostgreSQL cluster shared by every test in this binary.
//!
//! One embedded cluster (see `chatpool::embedded`) is started on first use in a
//! temporary directory; each test gets its own database on it
//! ([`TestCluster::create_database`]), dropped again when the test's
//! [`TestDatabase`] goes out of scope. Statics are never dropped, so a detached
//! watchdog stops the cluster and removes its directory once this test process
//! has exited, however it exits.
//!
//! Harness connections (CREATE/DROP DATABASE, counting connections) carry
//! `application_name=chatpool-tests`, so they are never mistaken for the
//! server's own (`application_name=chatpool`).

// Shared helper: not every test uses every item.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chatpool::embedded::{EmbeddedOptions, EmbeddedPostgres};

/// `application_name` of the harness's own connections.
const ADMIN_APP: &str = "chatpool-tests";
/// Bound on any single harness operation against the cluster.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// The one throwaway cluster for this test binary, started on first use.
///
/// Blocking on first call (a few seconds for `initdb`); safe to call from any
/// thread or tokio runtime, including from several tests at once.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(TestCluster::start)
}

/// A running embedded cluster and the temporary directory that holds it.
pub struct TestCluster {
    pg: EmbeddedPostgres,
    /// Kept so the directory is not removed while the cluster runs; the
    /// watchdog removes it after the process exits (statics are never dropped).
    dir: tempfile::TempDir,
    /// Never waited for: it outlives this process on purpose.
    _watchdog: Child,
}

/// A fresh database on the test cluster; dropped (`WITH (FORCE)`) when the
/// last handle to it ([`TestDatabase::clone_handle`]) is dropped.
pub struct TestDatabase {
    /// The database name (`t_<16 hex digits>`).
    pub name: String,
    /// Driver URL for it, as chatpool's superuser over the Unix socket.
    pub url: String,
    guard: Arc<DropGuard>,
}

impl TestDatabase {
    /// Another handle to the same database, keeping it alive (e.g. to inspect
    /// it after the app that owned the first handle has been shut down).
    pub fn clone_handle(&self) -> TestDatabase {
        TestDatabase {
            name: self.name.clone(),
            url: self.url.clone(),
            guard: Arc::clone(&self.guard),
        }
    }
}

/// Drops the database when the last [`TestDatabase`] handle goes.
struct DropGuard {
    name: String,
}

impl TestCluster {
    fn start() -> TestCluster {
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
            max_connections: 300,
        };
        // `start` is blocking and uses no tokio runtime, so it may run right
        // here, even on a runtime worker thread.
        let pg = EmbeddedPostgres::start(&opts)
            .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL cluster: {e}"));
        let watchdog = spawn_watchdog(dir.path(), pg.pgdata());

        let cluster = TestCluster {
            pg,
            dir,
            _watchdog: watchdog,
        };
        // Test data need not survive an OS crash: skip fsync for speed.
        // (ALTER SYSTEM cannot share a multi-statement query.)
        cluster.admin_sync(&[
            "ALTER SYSTEM SET fsync = off",
            "ALTER SYSTEM SET synchronous_commit = off",
            "ALTER SYSTEM SET full_page_writes = off",
            "SELECT pg_reload_conf()",
        ]);
        cluster
    }

    /// Create a fresh database with a random name (`t_<16 hex>`) and return it.
    pub async fn create_database(&self) -> TestDatabase {
        let name = format!("t_{:016x}", rand::random::<u64>());
        let client = self.admin().await;
        tokio::time::timeout(
            ADMIN_TIMEOUT,
            client.batch_execute(&format!("CREATE DATABASE \"{name}\"")),
        )
        .await
        .unwrap_or_else(|_| panic!("CREATE DATABASE {name} timed out"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TestDatabase {
            url: self.url(&name),
            guard: Arc::new(DropGuard { name: name.clone() }),
            name,
        }
    }

    /// Driver URL for a database on this cluster.
    pub fn url(&self, database: &str) -> String {
        self.pg.url(database)
    }

    /// How many server processes of `database` have `application_name`
    /// (from `pg_stat_activity`), e.g. to check chatpool never exceeds its
    /// connection limit.
    pub async fn connections_of(&self, database: &str, application_name: &str) -> i64 {
        let client = self.admin().await;
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

    /// The embedded cluster itself (e.g. for its data directory).
    pub fn embedded(&self) -> &EmbeddedPostgres {
        &self.pg
    }

    /// The temporary directory holding the cluster and its log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// An admin connection to the `postgres` database on the caller's runtime.
    async fn admin(&self) -> tokio_postgres::Client {
        admin_connect(&self.admin_url()).await
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
        let result = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a runtime for the test harness");
            rt.block_on(async {
                let client = admin_connect(&url).await;
                for sql in &statements {
                    tokio::time::timeout(ADMIN_TIMEOUT, client.batch_execute(sql))
                        .await
                        .map_err(|_| format!("timed out: {sql}"))?
                        .map_err(|e| format!("{sql}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("test cluster admin command failed: {e}"),
            Err(_) => panic!("test cluster admin thread panicked"),
        }
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        // Never panic here (a panic while unwinding aborts the test binary).
        let Some(cluster) = CLUSTER.get() else {
            return;
        };
        let url = cluster.admin_url();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                tokio::time::timeout(ADMIN_TIMEOUT, client.batch_execute(&sql))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

async fn admin_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio::time::timeout(
        ADMIN_TIMEOUT,
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .expect("connecting to the test cluster timed out")
    .expect("connect to the test cluster");
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("test cluster admin connection: {e}");
        }
    });
    client
}

/// Starts a detached `sh` that waits for this process to exit, then stops the
/// cluster immediately (SIGQUIT to the postmaster, like `pg_ctl stop -m
/// immediate`, which also works when the server runs as another user) and
/// removes the temporary directory.
///
/// It runs in its own process group so a Ctrl-C aimed at `cargo test` does
/// not kill it before it has cleaned up.
fn spawn_watchdog(dir: &std::path::Path, pgdata: &std::path::Path) -> Child {
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
