//! Issue 2: configuration, the one bounded pool, the db entry point, migrations,
//! ops endpoints and the embedded cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpool::testkit::admin::{admin_count, wait_until_no_server_connections};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::probe::DbError;
use chatpool::testkit::{
    bounded, cluster, spawn_app, AppOptions, BinaryServer, Cluster, ClusterOptions,
};
use futures_util::future::join_all;
use nix::sys::signal::Signal;

use crate::binary;

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_answer() {
    bounded(async {
        let app = spawn_app().await;
        assert_eq!(app.get("/healthz").await.status(), 200);

        let ready = app.get("/readyz").await;
        assert_eq!(ready.status(), 200);
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"status": "ready"}));

        let metrics = app.get("/metrics").await.text().await.unwrap();
        for name in [
            "chatpool_db_pool_max_size",
            "chatpool_db_pool_size",
            "chatpool_db_pool_available",
            "chatpool_db_pool_waiting",
            "chatpool_db_pool_wait_seconds",
            "chatpool_db_pool_timeouts_total",
            "chatpool_ws_sessions",
            "chatpool_messages_total",
            "chatpool_http_requests_total",
        ] {
            assert!(
                metrics.contains(name),
                "{name} missing from /metrics:\n{metrics}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_get_json_errors() {
    bounded(async {
        let app = spawn_app().await;
        let response = app.get("/no/such/route").await;
        assert_eq!(response.status(), 404);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
        assert!(body["error"]["message"].is_string());

        let response = app.http.post(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 405);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"]["code"].is_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_limit_caps_the_servers_connections_under_concurrent_load() {
    bounded(async {
        let app = AppOptions::default()
            .url_param("connection_limit", 3)
            .env("CHATPOOL_TX_MAX_WAIT_MS", 10_000)
            .spawn()
            .await;
        assert_eq!(app.pool_status().max_size, 2);

        let done = tokio_util::sync::CancellationToken::new();
        let sampler = {
            let done = done.clone();
            let db = app.db.name.clone();
            tokio::spawn(async move {
                let mut max = 0;
                while !done.is_cancelled() {
                    max = max.max(cluster().connections_of(&db, "chatpool").await);
                }
                max
            })
        };

        // 50 HTTP requests that each use the database, and 50 transactions that
        // each hold a connection for a moment, all at once.
        let http = join_all((0..50).map(|_| app.get("/readyz")));
        let txs = join_all((0..50).map(|_| app.sleep_in_transaction(0.02)));
        let (responses, results) = tokio::join!(http, txs);
        done.cancel();
        let max = sampler.await.unwrap();

        assert!(responses.iter().all(|r| r.status() == 200));
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(max >= 1, "the sampler never saw the server's connections");
        assert!(max <= 3, "saw {max} connections with connection_limit=3");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_past_its_timeout_fails_with_db_timeout_and_leaves_nothing_open() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_TX_TIMEOUT_MS", 500)
            .spawn()
            .await;

        let started = Instant::now();
        let result = app.sleep_in_transaction(10.0).await;
        let elapsed = started.elapsed();
        assert!(matches!(result, Err(DbError::Timeout)), "{result:?}");
        assert!(
            elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(2000),
            "timed out after {elapsed:?}, limit 500 ms"
        );

        // The cancelled backend settles within moments; poll with a deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stuck = admin_count(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
                     AND application_name = 'chatpool' \
                     AND (state LIKE 'idle in transaction%' OR query LIKE '%pg_sleep%' AND state = 'active')",
                    app.db.name
            ))
            .await;
            if stuck == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{stuck} backends still busy or idle in transaction");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The connection was rolled back and returned, not replaced: the pool
        // never needed a second one, so the process never exceeded its limit.
        let status = app.pool_status();
        assert_eq!(status.size, 1, "{status:?}");
        assert_eq!(status.available, status.size, "{status:?}");
        for _ in 0..3 {
            app.sleep_in_transaction(0.0).await.expect("next transaction succeeds");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_connection_held_the_next_acquisition_fails_with_db_busy_after_the_wait_limit() {
    bounded(async {
        let app = AppOptions::default()
            .url_param("connection_limit", 3)
            .env("CHATPOOL_TX_MAX_WAIT_MS", 400)
            .spawn()
            .await;
        let held = [
            app.acquire_connection().await.unwrap(),
            app.acquire_connection().await.unwrap(),
        ];

        let started = Instant::now();
        let result = app.acquire_connection().await;
        let elapsed = started.elapsed();
        assert!(matches!(result, Err(DbError::Busy)), "{:?}", result.err());
        assert!(
            elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(700),
            "db_busy after {elapsed:?}, limit 400 ms"
        );

        drop(held);
        assert!(app.acquire_connection().await.is_ok());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_up_down_and_up_again() {
    bounded(async {
        let app = spawn_app().await;
        let table_exists = || app.table_exists("public.messages");
        assert!(table_exists().await, "serve applied the migrations");
        assert!(app.run_pending_migrations().await.unwrap().is_empty());

        let reverted = app.revert_all_migrations().await.unwrap();
        assert!(!reverted.is_empty());
        assert!(!table_exists().await, "down migrations removed the tables");

        let applied = app.run_pending_migrations().await.unwrap();
        assert_eq!(applied.len(), reverted.len());
        assert!(table_exists().await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_command_applies_once_and_is_a_noop_the_second_time() {
    bounded(async {
        let db = cluster().create_database().await;
        let run = |url: String| {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(binary())
                    .arg("migrate")
                    .env("DATABASE_URL", url)
                    .output()
                    .expect("binary runs")
            })
        };
        let first = run(db.url.clone()).await.unwrap();
        assert!(first.status.success(), "{first:?}");
        assert!(String::from_utf8_lossy(&first.stdout).contains("applied"));

        let second = run(db.url.clone()).await.unwrap();
        assert!(second.status.success(), "{second:?}");
        assert!(
            String::from_utf8_lossy(&second.stdout).contains("nothing to apply"),
            "{second:?}"
        );
        wait_until_no_server_connections(&db.name).await;
    })
    .await;
}

#[test]
fn bad_configuration_values_stop_startup_with_one_line_naming_the_parameter() {
    let base = "postgres://chatpool@127.0.0.1:1/nowhere";
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("DATABASE_URL", format!("{base}?connection_limit=abc"))],
            "connection_limit",
        ),
        (
            vec![("DATABASE_URL", format!("{base}?connection_limit=0"))],
            "connection_limit",
        ),
        (
            vec![("DATABASE_URL", format!("{base}?connection_limit=1"))],
            "connection_limit",
        ),
        (
            vec![("DATABASE_URL", format!("{base}?pool_timeout=-1"))],
            "pool_timeout",
        ),
        (
            vec![("DATABASE_URL", format!("{base}?connect_timeout=-5"))],
            "connect_timeout",
        ),
        (
            vec![("DATABASE_URL", "postgres://u@h:port/d".to_owned())],
            "DATABASE_URL",
        ),
        (
            vec![("DATABASE_URL", "::not a url::".to_owned())],
            "DATABASE_URL",
        ),
        (
            vec![("CHATPOOL_TX_TIMEOUT_MS", "-3".to_owned())],
            "CHATPOOL_TX_TIMEOUT_MS",
        ),
        (
            vec![("CHATPOOL_TX_MAX_WAIT_MS", "soon".to_owned())],
            "CHATPOOL_TX_MAX_WAIT_MS",
        ),
    ];
    for (env, param) in cases {
        let mut cmd = std::process::Command::new(binary());
        cmd.arg("serve")
            .env_remove("DATABASE_URL")
            .env("RUST_BACKTRACE", "1");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} was accepted");
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(param), "{env:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_without_database_url_runs_on_an_embedded_cluster_that_keeps_its_data() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        allow_traversal(dir.path());
        let data_dir = dir.path().join("data");
        let env = vec![("CHATPOOL_DATA_DIR", data_dir.display().to_string())];
        // The socket directory goes in the host part, percent-encoded.
        let socket_dir = data_dir.join("postgres").display().to_string().replace('/', "%2F");
        let socket_url = format!("postgres://chatpool@{socket_dir}:5432/chatpool");

        // First start: initialise, serve, store something, stop.
        let env1 = env.clone();
        let mut server = tokio::task::spawn_blocking(move || {
            BinaryServer::start(binary(), &env1, Duration::from_secs(90))
        })
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let ready = http.get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200, "{}", server.log());
        exec(
            &socket_url,
            "INSERT INTO users (username, display_name, password_hash) VALUES ('kept', 'Kept', 'x')",
        )
        .await;
        server.signal(Signal::SIGTERM);
        let status = tokio::task::spawn_blocking(move || {
            let s = server.wait_exit(Duration::from_secs(30));
            (s, server)
        })
        .await
        .unwrap();
        assert!(status.0.success(), "{}", status.1.log());
        assert!(!data_dir.join("postgres/postmaster.pid").exists(), "cluster left running");

        // Second start: same cluster, same data.
        let mut server = tokio::task::spawn_blocking(move || {
            BinaryServer::start(binary(), &env, Duration::from_secs(60))
        })
        .await
        .unwrap();
        let ready = http.get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let kept = query_count(&socket_url, "SELECT count(*) FROM users WHERE username = 'kept'").await;
        assert_eq!(kept, 1);
        server.signal(Signal::SIGTERM);
        let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(status.success());
        assert!(!data_dir.join("postgres/postmaster.pid").exists());
        assert!(
            !postgres_running_in(&data_dir),
            "a postgres process still runs for {}",
            data_dir.display()
        );
    })
    .await;
}

/// Whether any process's command line or working directory names `dir`
/// (a postmaster runs with its data directory as working directory).
fn postgres_running_in(dir: &std::path::Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let is_postgres = String::from_utf8_lossy(&cmdline).contains("postgres");
            let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
            is_postgres && cwd.starts_with(&dir)
        })
}

/// When tests run as root, the cluster runs as an unprivileged user that must
/// be able to enter the temporary directory.
fn allow_traversal(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

async fn exec(url: &str, sql: &str) {
    let client = sql_client(url, "chatpool-tests").await;
    client.batch_execute(sql).await.unwrap();
}

async fn query_count(url: &str, sql: &str) -> i64 {
    let client = sql_client(url, "chatpool-tests").await;
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_app_closes_every_connection_it_opened() {
    bounded(async {
        let app = spawn_app().await;
        let _ = join_all((0..10).map(|_| app.get("/readyz"))).await;
        assert!(app.server_connections().await >= 1);
        let name = app.db.name.clone();
        let db = app.db.clone();
        app.shutdown().await.expect("clean shutdown");
        wait_until_no_server_connections(&name).await;
        drop(db);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn while_postgres_is_down_requests_fail_fast_with_db_unavailable_and_recover_on_its_return() {
    use chatpool::{Application, Settings};

    bounded(async {
        // A private cluster: this test stops it.
        let options = ClusterOptions {
            max_connections: 20,
            durable: true,
            settings: Vec::new(),
        };
        let pg = Arc::new(
            tokio::task::spawn_blocking(move || Cluster::start(options))
                .await
                .unwrap(),
        );
        let url = pg.url(Cluster::DEFAULT_DATABASE);
        let settings = Settings::from_lookup(|k| match k {
            "DATABASE_URL" => Some(url.clone()),
            "CHATPOOL_LISTEN" => Some("127.0.0.1:0".into()),
            _ => None,
        })
        .unwrap();
        let app = Application::build(settings).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stop_rx.await;
        }));
        let http = reqwest::Client::new();
        let register: serde_json::Value = http
            .post(format!("{base}/api/auth/register"))
            .json(&serde_json::json!({"username": "dora", "password": "long enough password"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = register["token"].as_str().unwrap().to_owned();
        let me = || {
            http.get(format!("{base}/api/me"))
                .bearer_auth(&token)
                .send()
        };
        assert_eq!(me().await.unwrap().status(), 200);

        // Down: fast, clear failures; the process stays up.
        let down = pg.clone();
        tokio::task::spawn_blocking(move || down.stop())
            .await
            .unwrap();
        let started = Instant::now();
        let down = me().await.unwrap();
        assert_eq!(down.status(), 503);
        assert!(down.headers().contains_key("retry-after"));
        let body: serde_json::Value = down.json().await.unwrap();
        assert_eq!(body["error"]["code"], "db_unavailable", "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        assert_eq!(
            ready.json::<serde_json::Value>().await.unwrap()["status"],
            "db_unavailable"
        );
        assert_eq!(
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );

        // Back: serving again within seconds, without a restart.
        let up = pg.clone();
        tokio::task::spawn_blocking(move || up.start_again())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if me().await.unwrap().status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not serving 10 s after the database returned"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let _ = stop_tx.send(());
        server.await.unwrap().expect("clean shutdown");
        tokio::task::spawn_blocking(move || pg.stop())
            .await
            .unwrap();
    })
    .await;
}
