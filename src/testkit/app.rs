//! The server under test, started the way production starts it.
//!
//! [`TestApp`] is the real [`crate::startup::Application`] running in this
//! process on port 0 and on a database of its own, so tests run in parallel
//! without sharing state and can look inside it (see `probe`).
//! [`BinaryServer`] is the real `chatpool` executable, for what only a
//! separate process shows: signals, exit codes, the log.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::startup::Application;
use crate::state::AppState;

use super::cluster::{cluster, TestDatabase};
use super::pg::with_params;

/// A chatpool server running in this process on port 0, on its own database.
pub struct TestApp {
    /// Bound address.
    pub addr: SocketAddr,
    /// The database (dropped when the last handle goes).
    pub db: Arc<TestDatabase>,
    /// An HTTP client with a 30 s timeout, for requests the typed API client
    /// does not cover (odd bodies, headers).
    pub http: reqwest::Client,
    pub(super) state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The SPEC §6 limits a [`TestApp`] turns off unless told otherwise
/// ([`AppOptions::env`]; [`AppOptions::with_default_limits`] keeps the SPEC's defaults).
pub const ABUSE_LIMITS: [&str; 3] = [
    "CHATPOOL_SEND_RATE",
    "CHATPOOL_REGISTER_RATE",
    "CHATPOOL_MAX_SOCKETS_PER_USER",
];

/// Builder for [`TestApp`]: environment overrides, `DATABASE_URL` parameters,
/// a shared database or a PostgreSQL role of its own.
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

    /// Keeps the SPEC's default abuse limits instead of turning them off.
    pub fn with_default_limits(mut self) -> Self {
        let defaults = crate::limits::AbuseSettings::default();
        for (name, value) in ABUSE_LIMITS.iter().zip([
            defaults.send_rate,
            defaults.register_rate,
            defaults.max_sockets_per_user,
        ]) {
            self.env.entry((*name).into()).or_insert(value.to_string());
        }
        self
    }

    /// Adds a `DATABASE_URL` query parameter (e.g. `connection_limit`).
    pub fn url_param(mut self, key: &str, value: impl ToString) -> Self {
        self.url_params.push((key.to_owned(), value.to_string()));
        self
    }

    /// Runs on `database` instead of a fresh one on the shared cluster:
    /// several instances on one database, or a database of another cluster.
    pub fn database(mut self, database: Arc<TestDatabase>) -> Self {
        self.database = Some(database);
        self
    }

    /// Connects as the PostgreSQL role `role` (see [`super::pg::create_role`]),
    /// so this instance's connections can be told apart in `pg_stat_activity`.
    pub fn role(mut self, role: &str) -> Self {
        self.role = Some(role.to_owned());
        self
    }

    /// Starts the app: settings from the options, `Application::build`
    /// (migrations included), serving until shut down or dropped.
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
        // A test that gives its own URL (TLS, PgBouncer) keeps it.
        env.entry("DATABASE_URL".into()).or_insert(url);
        env.entry("CHATPOOL_LISTEN".into())
            .or_insert_with(|| "127.0.0.1:0".into());
        // The abuse limits are off unless a test sets them: tests and benches
        // are trusted clients that send as fast as they can (SPEC §6: `0`).
        for limit in ABUSE_LIMITS {
            env.entry(limit.into()).or_insert_with(|| "0".into());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        start(env, db, http).await
    }
}

/// Settings from `env` alone, `Application::build`, and the server task.
async fn start(
    env: HashMap<String, String>,
    db: Arc<TestDatabase>,
    http: reqwest::Client,
) -> TestApp {
    let settings = Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings");
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
        http,
        state,
        stop: Some(tx),
        server: Some(server),
    }
}

/// A default app on a fresh database of the shared cluster: what most tests
/// start with.
pub async fn spawn_app() -> TestApp {
    AppOptions::default().spawn().await
}

impl TestApp {
    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET a path, for endpoints that need no token (`/healthz`, `/metrics`).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// The sum of the unlabelled samples of `name` on `/metrics` (a counter,
    /// or a histogram's `_sum` / `_count`), for measuring between two reads.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum()
    }

    /// Connections this app holds to its database right now (`pg_stat_activity`).
    pub async fn server_connections(&self) -> i64 {
        self.db.connections_of("chatpool").await
    }

    /// Runs the graceful shutdown and returns its outcome.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().expect("not yet stopped").send(());
        self.server
            .take()
            .expect("server task")
            .await
            .expect("server task")
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

impl BinaryServer {
    /// Starts `program serve --listen 127.0.0.1:0` with `env` and waits for its
    /// `listening on` line (up to `wait`). `program` is the built binary: an
    /// integration test has its path as `env!("CARGO_BIN_EXE_chatpool")`.
    pub fn start(program: &str, env: &[(&str, String)], wait: Duration) -> BinaryServer {
        let mut cmd = Command::new(program);
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
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let (eof_tx, eof) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    // Pretty or JSON: the address ends where its characters do.
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
                        .collect();
                    let _ = tx.send(addr);
                }
                sink.lock().expect("log lock").push(line);
            }
            let _ = eof_tx.send(());
        });
        let addr = match rx.recv_timeout(wait) {
            Ok(a) => a.parse().expect("address in log"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "binary did not report listening within {wait:?}; log:\n{}",
                    log.lock().expect("log lock").join("\n")
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

    /// Waits (up to `limit`) for a log line containing `needle` and returns it.
    pub async fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {needle:?} within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
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
