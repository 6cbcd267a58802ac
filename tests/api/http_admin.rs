//! Issue 3: admin endpoints and the operator commands (`user add`, `db
//! connections`, `db reap`).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chatpool::testkit::api::{
    call, create_room, get, history, id_of, post_message, register, user_with_role, usernames,
    PASSWORD,
};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::{bounded, cluster, spawn_app, AppOptions, BinaryServer, Role, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

use crate::binary;

#[tokio::test(flavor = "multi_thread")]
async fn admin_users_pages_by_id_with_after_id_and_limit() {
    bounded(async {
        let app = spawn_app().await;
        let admin = user_with_role(&app, "admin1", Role::Admin).await;
        let mut ids = vec![admin.id()];
        for i in 0..6 {
            ids.push(register(&app, format!("user{i}")).await.id());
        }
        let all = get(&app, "/api/admin/users", &admin.token)
            .await
            .expect(200);
        let got: Vec<i64> = all["users"].as_array().unwrap().iter().map(id_of).collect();
        assert_eq!(got, ids);
        assert_eq!(all["users"][0]["role"], "admin");

        // Keyset: each page starts after the previous page's last id.
        let mut after = 0;
        let mut paged = Vec::new();
        loop {
            let page = get(
                &app,
                &format!("/api/admin/users?after_id={after}&limit=3"),
                &admin.token,
            )
            .await
            .expect(200);
            let page: Vec<i64> = page["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(id_of)
                .collect();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            after = *page.last().unwrap();
            paged.extend(page);
        }
        assert_eq!(paged, ids);
        for bad in [
            "limit=0",
            "limit=201",
            "limit=x",
            "after_id=-1",
            "after_id=1e3",
        ] {
            get(&app, &format!("/api/admin/users?{bad}"), &admin.token)
                .await
                .expect_error(400, "bad_request");
        }
        let page = get(&app, "/api/admin/users?limit=200", &admin.token)
            .await
            .expect(200);
        assert_eq!(usernames(&page).len(), ids.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_change_applies_at_once_to_existing_tokens() {
    bounded(async {
        let app = spawn_app().await;
        let admin = user_with_role(&app, "admin1", Role::Admin).await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let room = id_of(&create_room(&app, &bob.token, "private", &[]).await);
        let patch = |id: i64, body: Value| {
            let (app, token) = (&app, admin.token.clone());
            async move {
                call(
                    app,
                    Method::PATCH,
                    &format!("/api/admin/users/{id}"),
                    Some(&token),
                    Some(body),
                )
                .await
            }
        };

        get(&app, "/api/rooms?scope=all", &alice.token)
            .await
            .expect_error(403, "forbidden");
        post_message(&app, &alice.token, room, "hi", None)
            .await
            .expect_error(404, "not_found");

        let user = patch(alice.id(), json!({"role": "agent"}))
            .await
            .expect(200);
        assert_eq!(user["role"], "agent");
        assert_eq!(user["username"], "alice");
        // Same token, new powers.
        get(&app, "/api/rooms?scope=all", &alice.token)
            .await
            .expect(200);
        post_message(&app, &alice.token, room, "hi", None)
            .await
            .expect(201);
        let me = get(&app, "/api/me", &alice.token).await.expect(200);
        assert_eq!(me["role"], "agent");

        patch(alice.id(), json!({"role": "member"}))
            .await
            .expect(200);
        history_is_hidden(&app, &alice.token, room).await;

        patch(alice.id(), json!({"role": "root"}))
            .await
            .expect_error(400, "bad_request");
        patch(alice.id(), json!({}))
            .await
            .expect_error(400, "bad_request");
        patch(999_999, json!({"role": "agent"}))
            .await
            .expect_error(404, "not_found");
        patch(-3, json!({"role": "agent"}))
            .await
            .expect_error(404, "not_found");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_admin_cannot_be_demoted_even_by_two_admins_at_once() {
    bounded(async {
        let app = spawn_app().await;
        let a = user_with_role(&app, "admin1", Role::Admin).await;
        let b = user_with_role(&app, "admin2", Role::Admin).await;
        let set = |token: String, id: i64, role: &'static str| {
            let app = &app;
            async move {
                call(
                    app,
                    Method::PATCH,
                    &format!("/api/admin/users/{id}"),
                    Some(&token),
                    Some(json!({ "role": role })),
                )
                .await
            }
        };
        // Each demotes the other at the same moment: at most one wins.
        let (ab, ba) = tokio::join!(
            set(a.token.clone(), b.id(), "member"),
            set(b.token.clone(), a.id(), "member")
        );
        let statuses = [ab.status.as_u16(), ba.status.as_u16()];
        assert!(statuses.contains(&200), "{statuses:?}");
        assert!(
            statuses.contains(&409) || statuses.contains(&403),
            "{statuses:?}"
        );
        // Whoever is left is the last admin, and may not step down.
        let (last, last_id) = if ab.status == 200 {
            (&a, a.id())
        } else {
            (&b, b.id())
        };
        set(last.token.clone(), last_id, "agent")
            .await
            .expect_error(409, "conflict");
        let body = get(&app, "/api/admin/users", &last.token).await.expect(200);
        let admins = body["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| u["role"] == "admin")
            .count();
        assert_eq!(admins, 1, "{body}");
    })
    .await;
}

async fn history_is_hidden(app: &TestApp, token: &str, room: i64) {
    history(app, token, room, "")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_stats_report_counts_the_pool_and_the_database() {
    bounded(async {
        let app = AppOptions::default()
            .url_param("connection_limit", 5)
            .spawn()
            .await;
        let admin = user_with_role(&app, "admin1", Role::Admin).await;
        let alice = register(&app, "alice").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[]).await);
        for i in 0..3 {
            post_message(&app, &alice.token, room, &format!("m{i}"), None)
                .await
                .expect(201);
        }
        let stats = get(&app, "/api/admin/stats", &admin.token)
            .await
            .expect(200);
        assert_eq!(stats["users"], 2);
        assert_eq!(stats["rooms"], 1);
        assert_eq!(stats["messages"], 3);
        assert!(stats["ws_sessions"].as_u64().is_some());
        let pool = &stats["pool"];
        assert_eq!(pool["max_size"], 4);
        let size = pool["size"].as_u64().unwrap();
        assert!((1..=4).contains(&size), "{stats}");
        assert!(pool["available"].as_u64().unwrap() <= size);
        assert_eq!(pool["waiting"], 0);
        let connections = stats["database"]["connections"].as_i64().unwrap();
        assert!(connections >= 1, "{stats}");
        let max: i64 = sql_client(&app.db.url, "chatpool-tests")
            .await
            .query_one("SELECT current_setting('max_connections')::bigint", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stats["database"]["max_connections"], max);
        assert_eq!(
            stats.as_object().unwrap().keys().collect::<Vec<_>>(),
            [
                "database",
                "messages",
                "pool",
                "rooms",
                "users",
                "ws_sessions"
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_connections_list_this_databases_connections() {
    bounded(async {
        let app = spawn_app().await;
        let admin = user_with_role(&app, "admin1", Role::Admin).await;
        let _watcher = sql_client(&app.db.url, "watcher-app").await;
        let body = get(&app, "/api/admin/connections", &admin.token)
            .await
            .expect(200);
        let connections = body["connections"].as_array().unwrap();
        let names: Vec<&str> = connections
            .iter()
            .map(|c| c["application_name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"chatpool"), "{body}");
        assert!(names.contains(&"watcher-app"), "{body}");
        for c in connections {
            assert!(c["pid"].as_i64().is_some());
            assert!(c["since"].as_str().unwrap().ends_with('Z'));
            assert_eq!(c.as_object().unwrap().len(), 4, "{c}");
        }
        // The server's count agrees with pg_stat_activity.
        assert!(app.server_connections().await >= 1);
    })
    .await;
}

/// Runs the binary with `args` against `database_url`, feeding `stdin`.
fn run_cli(database_url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    // A command refused for its arguments exits before reading stdin: a
    // broken pipe here is expected then, and its exit status says the rest.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().expect("binary ran")
}

#[tokio::test(flavor = "multi_thread")]
async fn user_add_creates_a_user_from_stdin_and_refuses_a_taken_name() {
    bounded(async {
        // A fresh database: the command applies the migrations itself.
        let db = cluster().create_database().await;
        let url = db.url.clone();
        let args = ["user", "add", "root", "--role", "admin", "--password-stdin"];
        let out = tokio::task::spawn_blocking({
            let url = url.clone();
            move || run_cli(&url, &args, &format!("{PASSWORD}\r\nignored second line\n"))
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("root"));

        let again = tokio::task::spawn_blocking({
            let url = url.clone();
            move || run_cli(&url, &args, "another password\n")
        })
        .await
        .unwrap();
        assert!(!again.status.success());
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("taken"),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        for (args, stdin) in [
            (
                vec![
                    "user",
                    "add",
                    "Bad Name",
                    "--role",
                    "member",
                    "--password-stdin",
                ],
                "long enough password\n",
            ),
            (
                vec![
                    "user",
                    "add",
                    "shorty",
                    "--role",
                    "member",
                    "--password-stdin",
                ],
                "short\n",
            ),
            (
                vec![
                    "user",
                    "add",
                    "nopass",
                    "--role",
                    "member",
                    "--password-stdin",
                ],
                "",
            ),
            (
                vec![
                    "user",
                    "add",
                    "norole",
                    "--role",
                    "root",
                    "--password-stdin",
                ],
                "long enough password\n",
            ),
            (
                vec!["user", "add", "noflag", "--role", "member"],
                "long enough password\n",
            ),
        ] {
            let url = url.clone();
            let argv = args.clone();
            let out = tokio::task::spawn_blocking(move || run_cli(&url, &argv, stdin))
                .await
                .unwrap();
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(!out.stderr.is_empty(), "{args:?} said nothing");
        }

        // The user logs in to the real server on that database.
        let server = BinaryServer::start(
            binary(),
            &[("DATABASE_URL", url.clone())],
            Duration::from_secs(60),
        );
        let http = reqwest::Client::new();
        let body: Value = http
            .post(server.url("/api/auth/login"))
            .json(&json!({"username": "root", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["user"]["role"], "admin", "{body}");
        let stats = http
            .get(server.url("/api/admin/stats"))
            .bearer_auth(body["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(stats.status(), 200);
        let users: Value = stats.json().await.unwrap();
        assert_eq!(users["users"], 1);
        drop(server);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn db_connections_lists_and_db_reap_terminates_only_old_idle_ones() {
    bounded(async {
        let db = cluster().create_database().await;
        let idle = sql_client(&db.url, "idle-victim").await;
        idle.simple_query("SELECT 1").await.unwrap();
        let busy = sql_client(&db.url, "busy-bystander").await;
        let busy_pid: i32 = busy
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let running = tokio::spawn(async move {
            let _ = busy.simple_query("SELECT pg_sleep(60)").await;
            busy
        });

        let url = db.url.clone();
        let listed = tokio::task::spawn_blocking(move || run_cli(&url, &["db", "connections"], ""))
            .await
            .unwrap();
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let text = String::from_utf8_lossy(&listed.stdout).to_string();
        assert!(text.starts_with("PID"), "{text}");
        assert!(
            text.contains("idle-victim") && text.contains("busy-bystander"),
            "{text}"
        );

        // Idle for longer than the threshold: the only way to get there is to wait.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let url = db.url.clone();
        let reaped = tokio::task::spawn_blocking(move || {
            run_cli(&url, &["db", "reap", "--idle-for", "1s"], "")
        })
        .await
        .unwrap();
        let out = String::from_utf8_lossy(&reaped.stdout).to_string();
        // Exit 0 also shows the command's own backend survived its own query.
        assert!(
            reaped.status.success(),
            "{}",
            String::from_utf8_lossy(&reaped.stderr)
        );
        assert!(out.contains("terminated 1 connection"), "{out}");
        assert!(out.contains("idle-victim"), "{out}");
        assert!(!out.contains("chatpool "), "reaped its own backend: {out}");

        assert!(
            idle.simple_query("SELECT 1").await.is_err(),
            "idle connection survived"
        );
        let alive = cluster().connections_of(&db.name, "busy-bystander").await;
        assert_eq!(alive, 1, "an active connection was reaped");
        let admin = sql_client(&db.url, "chatpool-tests").await;
        admin
            .execute("SELECT pg_cancel_backend($1)", &[&busy_pid])
            .await
            .unwrap();
        let busy = running.await.unwrap();
        busy.simple_query("SELECT 1")
            .await
            .expect("bystander still connected");

        let bad = tokio::task::spawn_blocking(|| {
            run_cli(
                "postgres://unused",
                &["db", "reap", "--idle-for", "soon"],
                "",
            )
        })
        .await
        .unwrap();
        assert!(!bad.status.success());
    })
    .await;
}
