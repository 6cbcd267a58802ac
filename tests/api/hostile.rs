//! Issue 11: hostile input gets its documented answer and the server keeps
//! serving.

use std::time::Duration;

use chatpool::testkit::api::{collect, create_room, get, id_of, post, register, register_raw};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::seed::{seed_room, seed_user};
use chatpool::testkit::ws::*;
use chatpool::testkit::{bounded, cluster, spawn_app, AppOptions, BinaryServer, Role, PANIC_BODY};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::binary;

#[tokio::test(flavor = "multi_thread")]
async fn a_nul_character_is_a_400_over_http_and_an_error_frame_over_websocket() {
    bounded(async {
        let app = spawn_app().await;
        let ann = register(&app, "ann").await;
        let room = id_of(&create_room(&app, &ann.token, "general", &[]).await);

        register_raw(
            &app,
            json!({"username": "nully", "password": "long enough", "display_name": "a\u{0}b"}),
        )
        .await
        .expect_error(400, "bad_request");
        post(&app, "/api/rooms", &ann.token, json!({"name": "x\u{0}y"}))
            .await
            .expect_error(400, "bad_request");
        let path = format!("/api/rooms/{room}/messages");
        post(&app, &path, &ann.token, json!({"body": "hi\u{0}"}))
            .await
            .expect_error(400, "bad_request");
        post(
            &app,
            &path,
            &ann.token,
            json!({"body": "hi", "client_id": "c\u{0}"}),
        )
        .await
        .expect_error(400, "bad_request");
        get(&app, "/api/users?prefix=a%00", &ann.token)
            .await
            .expect_error(400, "bad_request");

        let bob = seed_user(&app, "bob", Role::Member).await;
        let room2 = seed_room(&app, bob.id, &[]).await;
        let mut ws = connect(&app, &bob.token).await;
        ws.send_json(json!({"type": "join", "room_id": room2}))
            .await;
        assert_eq!(ws.recv_json().await["type"], "joined");
        for frame in [
            json!({"type": "send", "room_id": room2, "body": "a\u{0}", "client_id": "c1"}),
            json!({"type": "send", "room_id": room2, "body": "a", "client_id": "c\u{0}"}),
        ] {
            ws.send_json(frame).await;
            let e = ws.recv_json().await;
            assert_eq!(
                (e["type"].as_str(), e["code"].as_str()),
                (Some("error"), Some("bad_request")),
                "{e}"
            );
        }
        // The socket is still open and the room still works.
        let (ack, _) = ws.send_message(room2, "fine", "c2").await;
        assert_eq!(ack["message"]["seq"], 1);
        post(&app, &path, &ann.token, json!({"body": "also fine"}))
            .await
            .expect(201);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_rust_log_trace_no_token_password_hash_or_body_reaches_the_log() {
    bounded(async {
        let db = cluster().create_database().await;
        let url = db.url.clone();
        let mut server = tokio::task::spawn_blocking(move || {
            BinaryServer::start(
                binary(),
                &[("DATABASE_URL", url), ("RUST_LOG", "trace".into())],
                Duration::from_secs(60),
            )
        })
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let send = |path: &str, token: Option<&str>, body: Value| {
            let mut request = http.post(server.url(path)).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        };
        let password = "correct horse battery";
        let (_, reg) = send(
            "/api/auth/register",
            None,
            json!({"username": "loggy", "password": password}),
        )
        .await;
        let token = reg["token"].as_str().expect("token").to_owned();
        // A password typed into the username field, with a forged log line.
        let typed = "Typed Secret\nINFO forged line";
        let (status, _) = send(
            "/api/auth/login",
            None,
            json!({"username": typed, "password": "whatever else"}),
        )
        .await;
        assert_eq!(status, 401);
        let (_, room) = send("/api/rooms", Some(&token), json!({"name": "logged room"})).await;
        let room = room["id"].as_i64().expect("room id");
        let (posted, _) = send(
            &format!("/api/rooms/{room}/messages"),
            Some(&token),
            json!({"body": "http-body-marker"}),
        )
        .await;
        assert_eq!(posted, 201);
        // Over WebSocket, with the token in the query string.
        let mut ws = open_joined(server.addr, &token, room)
            .await
            .expect("socket");
        let (ack, _) = ws.send_message(room, "ws-body-marker", "c1").await;
        assert_eq!(ack["message"]["seq"], 2);
        ws.close().await;

        let client = sql_client(&db.url, "log-test").await;
        let hash: String = client
            .query_one(
                "SELECT password_hash FROM users WHERE username = 'loggy'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        server.signal(Signal::SIGTERM);
        let log = tokio::task::spawn_blocking(move || {
            assert!(server.wait_exit(Duration::from_secs(30)).success());
            server.log()
        })
        .await
        .unwrap();
        assert!(
            log.contains("TRACE") || log.contains("DEBUG"),
            "RUST_LOG=trace took effect"
        );
        assert!(log.contains("logged in") || log.contains("user registered"));
        let token_hash = hex(&Sha256::digest(token.as_bytes()));
        for secret in [
            token.as_str(),
            password,
            hash.as_str(),
            "$argon2",
            token_hash.as_str(),
            "http-body-marker",
            "ws-body-marker",
            "Typed Secret",
            "forged line",
        ] {
            assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
        }
    })
    .await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_methods_do_not_mint_metric_series() {
    bounded(async {
        let app = spawn_app().await;
        for i in 0..50 {
            let method = reqwest::Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
            let status = app
                .http
                .request(method, app.url("/api/rooms"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 405);
        }
        let long = reqwest::Method::from_bytes("X".repeat(8000).as_bytes()).unwrap();
        let _ = app.http.request(long, app.url("/healthz")).send().await;
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let series: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("chatpool_http_requests_total{"))
            .collect();
        assert!(!metrics.contains("BREW"), "{series:#?}");
        assert!(!metrics.contains("XXXX"));
        assert!(
            series.iter().any(|l| l.contains("method=\"OTHER\"")),
            "{series:#?}"
        );
        // The recorder is shared by every test of this binary: check the
        // labels, not the count.
        let standard = [
            "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
        ];
        for line in &series {
            let method = line
                .split("method=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default();
            assert!(standard.contains(&method), "{line}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_cap_a_connection_gets_503_and_healthz_answers_once_one_frees() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_MAX_HTTP_CONNECTIONS", 5)
            .spawn()
            .await;
        // Five idle connections that never send a byte hold every slot.
        let mut idle = Vec::new();
        for _ in 0..5 {
            idle.push(TcpStream::connect(app.addr).await.unwrap());
        }
        // Each connection is counted once accepted: wait until the sixth is
        // refused rather than sleeping.
        let busy = loop {
            let reply = raw_request(app.addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
            if reply.starts_with("HTTP/1.1 503") {
                break reply;
            }
            tokio::task::yield_now().await;
        };
        assert!(busy.contains("server_busy"), "{busy}");
        assert!(
            busy.to_ascii_lowercase().contains("retry-after: 1"),
            "{busy}"
        );
        drop(idle.pop());
        let ok = loop {
            let reply = raw_request(
                app.addr,
                "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await;
            if reply.starts_with("HTTP/1.1 200") {
                break reply;
            }
            tokio::task::yield_now().await;
        };
        assert!(ok.contains("ok") || ok.contains("{"), "{ok}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_trickled_slower_than_the_body_timeout_gets_408() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_BODY_TIMEOUT_MS", 1000)
            .spawn()
            .await;
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(
            b"POST /api/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{",
        )
        .await
        .unwrap();
        // A byte every 300 ms: each arrives well within any per-read timeout.
        let started = std::time::Instant::now();
        let mut reply = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                read = tcp.read(&mut buf) => {
                    let n = read.unwrap();
                    reply.extend_from_slice(&buf[..n]);
                    if n == 0 || reply.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(300)) => {
                    let _ = tcp.write_all(b" ").await;
                }
            }
        }
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(started.elapsed() < Duration::from_secs(10));
    })
    .await;
}

/// Sends `request` on a fresh connection and returns everything read until
/// the server closes it or 2 s pass.
async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_one_handler_or_session_answers_500_or_1011_and_the_rest_keeps_serving() {
    bounded(async {
        let app = AppOptions::default()
            .url_param("connection_limit", 3)
            .spawn()
            .await;
        let ann = register(&app, "ann").await;
        let room = id_of(&create_room(&app, &ann.token, "general", &[]).await);
        let path = format!("/api/rooms/{room}/messages");
        let mut bystander = connect(&app, &ann.token).await;
        bystander.join(room, None).await;
        for _ in 0..5 {
            post(&app, &path, &ann.token, json!({"body": PANIC_BODY}))
                .await
                .expect_error(500, "internal");
        }
        let mut victim = connect(&app, &ann.token).await;
        victim.join(room, None).await;
        victim
            .send_json(
                json!({"type": "send", "room_id": room, "body": PANIC_BODY, "client_id": "p1"}),
            )
            .await;
        victim.expect_close(1011).await;
        // Everything else still works, the pool (3 connections) included.
        for i in 0..10 {
            post(
                &app,
                &path,
                &ann.token,
                json!({"body": format!("after {i}")}),
            )
            .await
            .expect(201);
        }
        let (ack, _) = bystander.send_message(room, "still here", "b1").await;
        assert_eq!(ack["message"]["seq"], 11);
        assert_eq!(app.get("/healthz").await.status(), 200);
    })
    .await;
}

/// A hostile request and its documented answer: (what, method, path,
/// content type, body, status, code).
type Case = (
    &'static str,
    reqwest::Method,
    String,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread")]
async fn hostile_http_and_websocket_inputs_get_their_documented_answers_and_the_server_keeps_serving(
) {
    bounded(async {
        let app = spawn_app().await;
        let ann = register(&app, "ann").await;
        let room = id_of(&create_room(&app, &ann.token, "general", &[]).await);
        let messages = format!("/api/rooms/{room}/messages");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let huge = format!("{{\"body\": \"{}\"}}", "x".repeat(1024 * 1024));
        // (what, method, path, content type, body, status, code)
        let cases: Vec<Case> = vec![
            (
                "invalid UTF-8",
                reqwest::Method::POST,
                messages.clone(),
                "application/json",
                b"{\"body\": \"\xff\xfe\"}".to_vec(),
                400,
                "bad_request",
            ),
            (
                "deep JSON",
                reqwest::Method::POST,
                messages.clone(),
                "application/json",
                deep.clone().into_bytes(),
                400,
                "bad_request",
            ),
            (
                "huge number in a body",
                reqwest::Method::POST,
                "/api/rooms".into(),
                "application/json",
                br#"{"name": "n", "member_ids": [1e400]}"#.to_vec(),
                400,
                "bad_request",
            ),
            (
                "huge number in a path",
                reqwest::Method::GET,
                "/api/rooms/99999999999999999999999/messages".into(),
                "",
                vec![],
                400,
                "bad_request",
            ),
            (
                "1 MB body",
                reqwest::Method::POST,
                messages.clone(),
                "application/json",
                huge.into_bytes(),
                413,
                "too_large",
            ),
            (
                "path traversal in an id",
                reqwest::Method::GET,
                "/api/rooms/..%2F..%2Fetc%2Fpasswd/messages".into(),
                "",
                vec![],
                400,
                "bad_request",
            ),
            (
                "path traversal in a route",
                reqwest::Method::GET,
                "/api/../../etc/passwd".into(),
                "",
                vec![],
                404,
                "not_found",
            ),
            (
                "not JSON at all",
                reqwest::Method::POST,
                messages.clone(),
                "text/plain",
                b"hello".to_vec(),
                400,
                "bad_request",
            ),
        ];
        for (what, method, path, content_type, body, status, code) in cases {
            let mut request = app
                .http
                .request(method, app.url(&path))
                .bearer_auth(&ann.token)
                .body(body);
            if !content_type.is_empty() {
                request = request.header("content-type", content_type);
            }
            let reply = collect(request.send().await.unwrap()).await;
            assert_eq!(reply.status, status, "{what}: {}", reply.text);
            let json: Value = serde_json::from_str(&reply.text).unwrap_or(Value::Null);
            assert_eq!(json["error"]["code"], code, "{what}: {}", reply.text);
            assert_eq!(app.get("/healthz").await.status(), 200, "after {what}");
        }
        // A header flood is refused by the HTTP layer (431), not served.
        let mut flood = app.http.get(app.url("/healthz"));
        for i in 0..200 {
            flood = flood.header(format!("x-flood-{i}"), "y".repeat(100));
        }
        let status = flood.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        assert!(
            status == 431 || status == 0,
            "header flood answered {status}"
        );
        // Unknown fields are ignored; SQL-looking text is stored verbatim.
        let sql = "'; DROP TABLE messages; -- \\ \" $1 %s";
        let posted = post(
            &app,
            &messages,
            &ann.token,
            json!({"body": sql, "extra": {"nested": true}}),
        )
        .await
        .expect(201);
        assert_eq!(posted["body"], sql);
        let page = get(&app, &messages, &ann.token).await.expect(200);
        assert_eq!(page["messages"][0]["body"], sql);

        // Over WebSocket: the same kinds of input are error frames on a
        // socket that stays open.
        let mut ws = connect(&app, &ann.token).await;
        for frame in [
            deep,
            r#"{"type": "join", "room_id": 1e400}"#.to_owned(),
            r#"{"type": "join", "room_id": 99999999999999999999999}"#.to_owned(),
            r#"{"type": "send", "room_id": "1; DROP TABLE rooms", "body": "x", "client_id": "c"}"#
                .to_owned(),
        ] {
            ws.send_raw(tokio_tungstenite::tungstenite::Message::text(frame.clone()))
                .await;
            let e = ws.recv_json().await;
            assert_eq!(
                (e["type"].as_str(), e["code"].as_str()),
                (Some("error"), Some("bad_request")),
                "{e}"
            );
        }
        assert!(ws.round_trip().await.is_empty());
        assert_eq!(app.get("/healthz").await.status(), 200);
    })
    .await;
}
