//! Test helpers: an app per test on its own database, in-process or as the real binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpool::config::Settings;
use chatpool::startup::Application;
use chatpool::state::AppState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cluster::{cluster, TestDatabase};

/// Every test's overall bound; a test that needs longer says so itself.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A chatpool server running in this process on port 0, on a fresh database.
pub struct TestApp {
    /// Bound address.
    pub addr: SocketAddr,
    /// The database (dropped when the last handle goes).
    pub db: Arc<TestDatabase>,
    /// HTTP client.
    pub http: reqwest::Client,
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Builder for [`TestApp`]: environment overrides and URL parameters.
#[derive(Default)]
pub struct AppOptions {
    env: HashMap<String, String>,
    url_params: Vec<(String, String)>,
    database: Option<Arc<TestDatabase>>,
    role: Option<String>,
}

impl AppOptions {
    /// Sets an environment variable as the server would read it.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.insert(key.to_owned(), value.to_string());
        self
    }

    /// Adds a `DATABASE_URL` query parameter (e.g. `connection_limit`).
    pub fn url_param(mut self, key: &str, value: impl ToString) -> Self {
        self.url_params.push((key.to_owned(), value.to_string()));
        self
    }

    /// Runs on `database` instead of a fresh one: several instances, one database.
    pub fn database(mut self, database: Arc<TestDatabase>) -> Self {
        self.database = Some(database);
        self
    }

    /// Connects as the PostgreSQL role `role` (see [`create_role`]), so this
    /// instance's connections can be told apart in `pg_stat_activity`.
    pub fn role(mut self, role: &str) -> Self {
        self.role = Some(role.to_owned());
        self
    }

    /// Starts the app.
    pub async fn spawn(self) -> TestApp {
        let db = match self.database {
            Some(db) => db,
            None => Arc::new(cluster().create_database().await),
        };
        let mut url = with_params(&db.url, &self.url_params);
        if let Some(role) = &self.role {
            url = url.replacen("postgres://chatpool@", &format!("postgres://{role}@"), 1);
        }
        let mut env = self.env;
        env.insert("DATABASE_URL".into(), url);
        env.entry("CHATPOOL_LISTEN".into())
            .or_insert_with(|| "127.0.0.1:0".into());
        let settings = Settings::from_lookup(None, |k| env.get(k).cloned()).expect("test settings");
        let app = Application::build(settings).await.expect("app builds");
        let addr = app.local_addr();
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            db,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            state,
            stop: Some(tx),
            server: Some(server),
        }
    }
}

/// Appends query parameters to a URL that may already have some.
pub fn with_params(url: &str, params: &[(String, String)]) -> String {
    let mut out = url.to_owned();
    for (k, v) in params {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&format!("{k}={v}"));
    }
    out
}

/// A default app on a fresh database.
pub async fn spawn_app() -> TestApp {
    AppOptions::default().spawn().await
}

impl TestApp {
    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The server's state (pool, settings).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Connections this app holds to its database right now (`pg_stat_activity`).
    pub async fn server_connections(&self) -> i64 {
        cluster().connections_of(&self.db.name, "chatpool").await
    }

    /// Runs the graceful shutdown and returns its outcome.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().expect("not yet stopped").send(());
        self.server.take().unwrap().await.expect("server task")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.state.db().close();
    }
}

/// Runs `test` under [`TEST_TIMEOUT`].
pub async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time bound")
}

/// The real `chatpool` binary, with its log captured.
pub struct BinaryServer {
    /// The process, until it has been waited for.
    child: Option<Child>,
    /// The address it reported in `listening on http://…`.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// Signalled when the log pipe reaches its end.
    eof: std::sync::mpsc::Receiver<()>,
}

/// Path of the built binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_chatpool")
}

impl BinaryServer {
    /// Starts `chatpool serve --listen 127.0.0.1:0` with `env` and waits for its
    /// `listening on` line (up to `wait`).
    pub fn start(env: &[(&str, String)], wait: Duration) -> BinaryServer {
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info")
            .env("CHATPOOL_LOG_FORMAT", "pretty")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let (eof_tx, eof) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
            let _ = eof_tx.send(());
        });
        let addr = match rx.recv_timeout(wait) {
            Ok(a) => a.parse().expect("address in log"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "binary did not report listening within {wait:?}; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        BinaryServer {
            child: Some(child),
            addr,
            log,
            eof,
        }
    }

    /// `http://ADDR` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("process still running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .expect("signal sent");
    }

    /// Waits up to `limit` for the process to exit and returns its status
    /// (killing it and failing the test past the limit).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("process not yet waited for");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(status) => {
                // The last lines may still be in the pipe: read them before
                // anyone looks at the log.
                let _ = self.eof.recv_timeout(Duration::from_secs(5));
                status.expect("wait")
            }
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                panic!(
                    "process did not exit within {limit:?}; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A connection to `url` as the test harness, tagged `application_name`
/// (never `chatpool`, so never counted as the server's). It closes when the
/// client is dropped.
pub async fn sql_client(url: &str, application_name: &str) -> tokio_postgres::Client {
    let url = with_params(url, &[("application_name".into(), application_name.into())]);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("harness connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// [`sql_client`] to the cluster's `postgres` database.
async fn admin_client() -> tokio_postgres::Client {
    sql_client(&cluster().url("postgres"), "chatpool-tests").await
}

/// Runs a `SELECT count(*) …` (any single `bigint`) on the cluster as the harness.
pub async fn admin_count(sql: &str) -> i64 {
    admin_client()
        .await
        .query_one(sql, &[])
        .await
        .expect("admin query")
        .get(0)
}

/// Runs statements on the cluster as the harness.
pub async fn admin_exec(sql: &str) {
    admin_client()
        .await
        .batch_execute(sql)
        .await
        .expect("admin statement");
}

/// Waits (up to 5 s) until `database` has no `application_name=chatpool`
/// connections: a backend leaves `pg_stat_activity` a moment after its client
/// closed the socket, and nothing announces it.
pub async fn wait_until_no_server_connections(database: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = cluster().connections_of(database, "chatpool").await;
        if n == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} chatpool connections still open on {database}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a login role with a random name on the test cluster and returns it.
/// Roles are cluster-wide; each test makes its own.
pub async fn create_role() -> String {
    let role = format!("r_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    admin_exec(&format!("CREATE ROLE {role} LOGIN SUPERUSER")).await;
    role
}
