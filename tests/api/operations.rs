//! Issue 12: what an operator sees and sets. CORS, the request log and
//! request ids, metrics from the first scrape on a private address, the pool
//! at rest, one configuration surface (flags with their variables), and
//! Prisma's `schema`.

use std::time::{Duration, Instant};

use chatpool::testkit::ws::connect;
use chatpool::testkit::{api, bounded, cluster, AppOptions, BinaryServer, TestApp, TestDatabase};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use crate::binary;

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, app.url("/api/rooms"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map_or("", |v: &HeaderValue| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_answers_preflights_for_listed_origins_only() {
    bounded(async {
        let crm = "https://crm.example.com";
        let app = AppOptions::default()
            .env(
                "CHATPOOL_CORS_ORIGINS",
                format!("{crm},http://localhost:3000"),
            )
            .spawn()
            .await;
        let ok = preflight(&app, crm).await;
        assert!(matches!(ok.status().as_u16(), 200 | 204), "{}", ok.status());
        let h = ok.headers();
        assert_eq!(header(h, "access-control-allow-origin"), crm);
        let methods = header(h, "access-control-allow-methods").to_ascii_uppercase();
        for m in ["GET", "POST", "PATCH", "DELETE"] {
            assert!(methods.contains(m), "{methods}");
        }
        let allowed = header(h, "access-control-allow-headers").to_ascii_lowercase();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"));
        // An origin not listed gets no grant.
        let other = preflight(&app, "https://evil.example").await;
        assert_eq!(header(other.headers(), "access-control-allow-origin"), "");
        // An actual request (a 401 here) carries the grant too, and the page
        // may read Retry-After and the request id.
        let reply = reqwest::Client::new()
            .get(app.url("/api/me"))
            .header("Origin", crm)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 401);
        assert_eq!(header(reply.headers(), "access-control-allow-origin"), crm);
        let exposed = header(reply.headers(), "access-control-expose-headers").to_lowercase();
        assert!(exposed.contains("x-request-id") && exposed.contains("retry-after"));

        let any = AppOptions::default()
            .env("CHATPOOL_CORS_ORIGINS", "*")
            .spawn()
            .await;
        let ok = preflight(&any, "https://anyone.example").await;
        assert_eq!(header(ok.headers(), "access-control-allow-origin"), "*");

        // Unset: no CORS headers, and OPTIONS is just another method.
        let off = AppOptions::default().spawn().await;
        let refused = preflight(&off, crm).await;
        assert_eq!(refused.status(), 405);
        assert_eq!(header(refused.headers(), "access-control-allow-origin"), "");
    })
    .await;
}

/// The real binary on a fresh database, with `env` on top.
async fn binary_server(env: Vec<(&'static str, String)>) -> (BinaryServer, TestDatabase) {
    let db = cluster().create_database().await;
    let mut env = env;
    env.push(("DATABASE_URL", db.url.clone()));
    let server = tokio::task::spawn_blocking(move || {
        BinaryServer::start(binary(), &env, Duration::from_secs(60))
    })
    .await
    .unwrap();
    (server, db)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_a_request_id_and_one_info_log_line_without_its_query() {
    bounded(async {
        let (server, _db) = binary_server(vec![
            ("RUST_LOG", "info".into()),
            ("CHATPOOL_LOG_FORMAT", "json".into()),
        ])
        .await;
        let http = reqwest::Client::new();
        // Made by the server when the client sends none.
        let made = http.get(server.url("/healthz")).send().await.unwrap();
        let made_id = header(made.headers(), "x-request-id").to_owned();
        assert_eq!(made_id.len(), 36, "a UUID: {made_id}");
        // Taken from the client when usable.
        let given = http
            .get(server.url("/api/rooms/7/messages?before_seq=3&secret=hunter2"))
            .header("x-request-id", "crm-42.a")
            .send()
            .await
            .unwrap();
        assert_eq!(given.status(), 401);
        assert_eq!(header(given.headers(), "x-request-id"), "crm-42.a");
        // Replaced when not: too long, characters a log line must not hold,
        // or two of them.
        let long = "x".repeat(200);
        for bad in [long.as_str(), "a b", "<x>", "id\u{7f}", "caf\u{e9}"] {
            let Ok(value) = HeaderValue::from_bytes(bad.as_bytes()) else {
                continue;
            };
            let replaced = http
                .get(server.url("/healthz"))
                .header("x-request-id", value)
                .send()
                .await
                .unwrap();
            let replaced_id = header(replaced.headers(), "x-request-id");
            assert_eq!(replaced_id.len(), 36, "{bad:?} became {replaced_id}");
        }
        let twice = http
            .get(server.url("/healthz"))
            .header("x-request-id", "one")
            .header("x-request-id", "two")
            .send()
            .await
            .unwrap();
        assert_eq!(header(twice.headers(), "x-request-id").len(), 36);

        // The log: one `request` line per request, at info.
        let lines = |id: &str| -> Vec<Value> {
            server
                .log()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["message"] == "request" && v["request_id"] == id)
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines("crm-42.a").is_empty() {
            assert!(
                Instant::now() < deadline,
                "no request line:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let line = &lines("crm-42.a")[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "chatpool::http");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["route"], "/api/rooms/{id}/messages");
        assert_eq!(line["status"], 401);
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(lines(&made_id).len(), 1);
        let log = server.log();
        assert!(
            !log.contains("hunter2") && !log.contains("before_seq"),
            "{log}"
        );
    })
    .await;
}

/// The names of the series in a Prometheus text scrape.
fn series(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_scrape_has_every_series_on_the_private_metrics_address_only() {
    bounded(async {
        let (server, _db) =
            binary_server(vec![("CHATPOOL_METRICS_LISTEN", "127.0.0.1:0".into())]).await;
        let line = server
            .wait_for_line("metrics on http://", Duration::from_secs(10))
            .await;
        let metrics_addr = line
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap()
            .to_owned();
        let scrape = || async {
            reqwest::get(format!("http://{metrics_addr}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        // The very first request to this process: the scrape.
        let text = scrape().await;
        let names = series(&text);
        for expected in [
            "chatpool_http_requests_total",
            "chatpool_http_request_duration_seconds_bucket",
            "chatpool_db_pool_wait_seconds_bucket",
            "chatpool_send_batch_size_bucket",
            "chatpool_db_pool_timeouts_total",
            "chatpool_db_tx_timeouts_total",
            "chatpool_db_pool_size",
            "chatpool_db_pool_max_size",
            "chatpool_db_pool_available",
            "chatpool_db_pool_waiting",
            "chatpool_messages_total",
            "chatpool_ws_sessions",
            "chatpool_http_requests_in_flight",
            "chatpool_listener_up",
            "chatpool_listener_reconnects_total",
            "chatpool_listener_notifications_total",
            "chatpool_listener_forged_total",
            "chatpool_listener_catch_up_messages_total",
            "chatpool_build_info",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing:\n{text}"
            );
        }
        assert!(text.contains(&format!(
            "chatpool_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        // The public port does not serve them.
        let public = reqwest::get(server.url("/metrics")).await.unwrap();
        assert_eq!(public.status(), 404);
        // Requests are timed by route.
        reqwest::get(server.url("/healthz")).await.unwrap();
        let text = scrape().await;
        assert!(text.contains(
            "chatpool_http_request_duration_seconds_count{method=\"GET\",route=\"/healthz\"}"
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_pool_closes_its_connections_and_reopens_on_demand() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_POOL_IDLE_TIMEOUT_MS", 300)
            .spawn()
            .await;
        let alice = api::register(&app, "alice").await;
        let calls = (0..6).map(|_| api::get(&app, "/api/me", &alice.token));
        futures_util::future::join_all(calls).await;
        assert!(app.pool_status().size > 0);
        // At rest: the pool empties; only the listener's connection is left.
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.pool_status().size > 0 || app.server_connections().await > 1 {
            assert!(Instant::now() < deadline, "{:?}", app.pool_status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(app.metric("chatpool_db_pool_size").await, 0.0);
        // Work reopens what it needs.
        let mut ws = connect(&app, &alice.token).await;
        let room = api::post(&app, "/api/rooms", &alice.token, json!({"name": "r"}))
            .await
            .expect(201)["id"]
            .as_i64()
            .unwrap();
        ws.join(room, Some(0)).await;
        let (ack, _) = ws.send_message(room, "back", "c1").await;
        assert_eq!(ack["message"]["seq"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prisma_schema_puts_chatpools_tables_in_that_schema() {
    bounded(async {
        let app = AppOptions::default()
            .url_param("schema", "crm")
            .spawn()
            .await;
        let alice = api::register(&app, "alice").await;
        let room = api::post(&app, "/api/rooms", &alice.token, json!({"name": "r"}))
            .await
            .expect(201)["id"]
            .as_i64()
            .unwrap();
        api::post(
            &app,
            &format!("/api/rooms/{room}/messages"),
            &alice.token,
            json!({"body": "in crm"}),
        )
        .await
        .expect(201);
        let in_schema = |schema: &str| {
            format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' \
                 AND tablename IN ('messages', '__diesel_schema_migrations')"
            )
        };
        let client = chatpool::testkit::pg::sql_client(&app.db.url, "chatpool-tests").await;
        let count = |sql: String| {
            let client = &client;
            async move { client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        assert_eq!(count(in_schema("crm")).await, 2);
        assert_eq!(count(in_schema("public")).await, 0);
        let stored = count("SELECT count(*) FROM crm.messages WHERE body = 'in crm'".into()).await;
        assert_eq!(stored, 1);
    })
    .await;
}

#[test]
fn every_setting_is_a_flag_listed_in_help_with_its_variable_and_default() {
    let out = std::process::Command::new(binary())
        .args(["serve", "--help"])
        .output()
        .expect("chatpool serve --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Every variable of the README's configuration table.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("## Configuration")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut seen = 0;
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        for var in row
            .split('|')
            .nth(1)
            .unwrap()
            .split('`')
            .filter(|w| w.starts_with("CHATPOOL_") || *w == "DATABASE_URL")
        {
            seen += 1;
            let flag = format!(
                "--{}",
                var.trim_start_matches("CHATPOOL_")
                    .to_ascii_lowercase()
                    .replace('_', "-")
            );
            assert!(help.contains(&flag), "{flag} missing from --help:\n{help}");
            assert!(
                help.contains(&format!("[env: {var}")),
                "{var} missing:\n{help}"
            );
        }
    }
    assert!(seen >= 20, "only {seen} variables in the README table");
    assert!(help.contains("[default: 2000]"), "defaults shown");
    // The database URLs' values (passwords) never show.
    let out = std::process::Command::new(binary())
        .args(["serve", "--help"])
        .env("DATABASE_URL", "postgres://u:s3cret@h/d")
        .env(
            "CHATPOOL_LISTENER_DATABASE_URL",
            "postgres://u:l1stener@h/d",
        )
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        !help.contains("s3cret") && !help.contains("l1stener"),
        "{help}"
    );
    assert!(help.contains("[env: DATABASE_URL"), "{help}");
}

#[test]
fn a_flag_wins_over_its_variable() {
    // A bad value in the environment, a good one on the command line: the
    // flag is used, so the process gets as far as the database.
    let out = std::process::Command::new(binary())
        .args([
            "migrate",
            "--tx-timeout-ms",
            "3000",
            "--database-url",
            "postgres://u@127.0.0.1:1/d?connect_timeout=1",
        ])
        .env("CHATPOOL_TX_TIMEOUT_MS", "bogus")
        .env_remove("DATABASE_URL")
        .output()
        .expect("chatpool migrate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("CHATPOOL_TX_TIMEOUT_MS"), "{stderr}");
    assert!(!out.status.success());
    assert_ne!(
        out.status.code(),
        Some(2),
        "not a configuration error: {stderr}"
    );
    // And a bad flag is a configuration error naming it.
    let out = std::process::Command::new(binary())
        .args(["migrate", "--tx-timeout-ms", "soon"])
        .output()
        .expect("chatpool migrate");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CHATPOOL_TX_TIMEOUT_MS"));
}
