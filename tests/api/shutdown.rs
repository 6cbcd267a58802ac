//! Issue 5: graceful shutdown on real signals, sockets first, then the pool.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chatpool::testkit::admin::wait_until_no_server_connections;
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::seed::token_and_hash;
use chatpool::testkit::{bounded, cluster, BinaryServer, TestDatabase};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::binary;

/// A request whose body is only partly sent: in flight until [`HeldRequest::finish`].
struct HeldRequest {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldRequest {
    /// Starts `POST /api/auth/login` and sends all but the last byte of its body.
    async fn start(addr: std::net::SocketAddr) -> HeldRequest {
        let body = br#"{"username":"nobody-here","password":"wrong-password"}"#;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: chatpool\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..body.len() - 1]).await.unwrap();
        stream.flush().await.unwrap();
        wait_for_in_flight(addr).await;
        HeldRequest {
            stream,
            rest: body[body.len() - 1..].to_vec(),
        }
    }

    /// Sends the rest of the body and returns the response's status code.
    async fn finish(mut self) -> u16 {
        self.stream.write_all(&self.rest).await.unwrap();
        let mut response = Vec::new();
        self.stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"))
    }
}

/// Waits until the server counts a request in flight besides the `/metrics`
/// request asking: the held request has reached its handler.
async fn wait_for_in_flight(addr: std::net::SocketAddr) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let in_flight = text
            .lines()
            .find_map(|l| l.strip_prefix("chatpool_http_requests_in_flight "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if in_flight >= 2.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the held request never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn readyz(http: &reqwest::Client, server: &BinaryServer) -> (u16, Value) {
    let r = http.get(server.url("/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `/readyz` (new connection each time) until the drain has started.
async fn wait_for_drain(server: &BinaryServer) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if readyz(&http, server).await.0 == 503 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "drain never started; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start_binary(db: &TestDatabase, extra: &[(&str, String)]) -> BinaryServer {
    let mut env = vec![("DATABASE_URL", db.url.clone())];
    env.extend(extra.iter().cloned());
    BinaryServer::start(binary(), &env, Duration::from_secs(60))
}

async fn wait_exit(
    mut server: BinaryServer,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(limit);
        (status, server.log())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn during_the_drain_readyz_answers_503_shutting_down() {
    bounded(async {
        let db = cluster().create_database().await;
        let server = start_binary(&db, &[]);
        let http = reqwest::Client::new();
        assert_eq!(readyz(&http, &server).await.0, 200);

        // The held request keeps the drain from finishing while we look.
        let held = HeldRequest::start(server.addr).await;
        server.signal(Signal::SIGTERM);
        wait_for_drain(&server).await;
        let (status, body) = readyz(&http, &server).await;
        assert_eq!(status, 503);
        assert_eq!(body, json!({"status": "shutting_down"}));
        // New work is refused with the SPEC's error while draining.
        let refused = http.get(server.url("/api/me")).send().await.unwrap();
        assert_eq!(refused.status(), 503);
        assert!(refused.headers().contains_key("retry-after"));
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "shutting_down");

        assert_eq!(held.finish().await, 401);
        let (status, log) = wait_exit(server, Duration::from_secs(15)).await;
        assert!(status.success(), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_request_in_flight_when_the_signal_arrives_completes_with_its_normal_status() {
    bounded(async {
        let db = cluster().create_database().await;
        let server = start_binary(&db, &[]);
        let held = HeldRequest::start(server.addr).await;
        server.signal(Signal::SIGTERM);
        wait_for_drain(&server).await;
        // A wrong login is a 401 invalid_credentials, drain or not.
        assert_eq!(held.finish().await, 401);
        let (status, log) = wait_exit(server, Duration::from_secs(15)).await;
        assert!(status.success(), "{log}");
        assert!(log.contains("in-flight HTTP requests finished"), "{log}");
        assert!(log.contains("shutdown complete"), "{log}");
        wait_until_no_server_connections(&db.name).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_during_a_long_drain_exits_at_once() {
    bounded(async {
        let db = cluster().create_database().await;
        let server = start_binary(&db, &[("CHATPOOL_SHUTDOWN_TIMEOUT_MS", "60000".into())]);
        let _held = HeldRequest::start(server.addr).await;
        server.signal(Signal::SIGTERM);
        wait_for_drain(&server).await;
        let second = Instant::now();
        server.signal(Signal::SIGINT);
        let (status, log) = wait_exit(server, Duration::from_secs(5)).await;
        assert!(
            second.elapsed() < Duration::from_secs(3),
            "took {:?}",
            second.elapsed()
        );
        assert!(!status.success(), "{log}");
        assert!(!log.contains("shutdown complete"), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_cannot_finish_ends_by_the_deadline_with_a_non_zero_exit_and_the_pool_closed()
{
    bounded(async {
        let db = cluster().create_database().await;
        let server = start_binary(&db, &[("CHATPOOL_SHUTDOWN_TIMEOUT_MS", "2000".into())]);
        // Put a connection in the pool, then hold a request that never completes.
        let http = reqwest::Client::new();
        assert_eq!(readyz(&http, &server).await.0, 200);
        let _held = HeldRequest::start(server.addr).await;
        let signalled = Instant::now();
        server.signal(Signal::SIGTERM);
        let (status, log) = wait_exit(server, Duration::from_secs(10)).await;
        let took = signalled.elapsed();
        assert!(!status.success(), "{log}");
        assert!(
            took >= Duration::from_millis(1500),
            "exited after {took:?}: {log}"
        );
        assert!(
            took < Duration::from_millis(4000),
            "exited after {took:?}: {log}"
        );
        assert!(log.contains("deadline"), "{log}");
        assert!(log.contains("database pool closed"), "{log}");
        wait_until_no_server_connections(&db.name).await;
    })
    .await;
}

/// Seeds `n` users with tokens and `rooms` rooms they all belong to, directly
/// in the database (as the test harness, not the server).
async fn seed(db: &TestDatabase, users: usize, rooms: usize) -> (Vec<String>, Vec<i64>) {
    let client = sql_client(&db.url, "chatpool-tests").await;
    let mut tokens = Vec::new();
    let mut user_ids = Vec::new();
    for i in 0..users {
        let id: i64 = client
            .query_one(
                "INSERT INTO users (username, display_name, password_hash) VALUES ($1, $1, 'x') RETURNING id",
                &[&format!("user{i:03}")],
            )
            .await
            .unwrap()
            .get(0);
        let (token, hash) = token_and_hash();
        client
            .execute(
                "INSERT INTO auth_tokens (user_id, token_hash) VALUES ($1, $2)",
                &[&id, &hash.as_slice()],
            )
            .await
            .unwrap();
        tokens.push(token);
        user_ids.push(id);
    }
    let mut room_ids = Vec::new();
    for r in 0..rooms {
        let room: i64 = client
            .query_one(
                "INSERT INTO rooms (name, created_by) VALUES ($1, $2) RETURNING id",
                &[&format!("room {r}"), &user_ids[0]],
            )
            .await
            .unwrap()
            .get(0);
        client
            .execute(
                "INSERT INTO room_members (room_id, user_id) SELECT $1, unnest($2::bigint[])",
                &[&room, &user_ids],
            )
            .await
            .unwrap();
        room_ids.push(room);
    }
    (tokens, room_ids)
}

/// What one socket saw: the messages acked to it, and how it was closed.
struct SocketOutcome {
    acked: Vec<(i64, i64, i64)>,
    close_code: Option<u16>,
}

/// Joins `room`, then sends messages one after another (each after the
/// previous ack; a failed send is retried with its `client_id`) until the
/// server closes the socket.
async fn chatter(
    addr: std::net::SocketAddr,
    token: String,
    room: i64,
    socket: usize,
) -> SocketOutcome {
    let url = format!("ws://{addr}/ws?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let send_frame = |i: usize| {
        let frame = json!({
            "type": "send", "room_id": room, "body": format!("hello {i}"),
            "client_id": format!("{socket}-{i}"),
        });
        Message::text(frame.to_string())
    };
    let mut acked = Vec::new();
    let mut in_flight = 0usize;
    let mut close_code = None;
    let join = json!({"type": "join", "room_id": room}).to_string();
    ws.send(Message::text(join)).await.unwrap();
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(text)) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                let ours = v["client_id"] == format!("{socket}-{in_flight}");
                let next = match v["type"].as_str() {
                    Some("joined") => Some(send_frame(in_flight)),
                    Some("ack") if ours => {
                        let m = &v["message"];
                        acked.push((
                            m["id"].as_i64().unwrap(),
                            m["room_id"].as_i64().unwrap(),
                            m["seq"].as_i64().unwrap(),
                        ));
                        in_flight += 1;
                        Some(send_frame(in_flight))
                    }
                    Some("error") if ours => Some(send_frame(in_flight)),
                    _ => None,
                };
                if let Some(next) = next {
                    // Refused once the server is closing: keep reading for its Close.
                    let _ = ws.send(next).await;
                }
            }
            // Keep polling after a Close so the reply is sent and the stream ends.
            Ok(Message::Close(frame)) => close_code = frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    SocketOutcome { acked, close_code }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_every_socket_with_1001_keeps_every_acked_message_and_leaves_no_connection()
{
    bounded(async {
        let db = cluster().create_database().await;
        // The binary applies the migrations; seed after it is up.
        let server = start_binary(&db, &[("CHATPOOL_SHUTDOWN_TIMEOUT_MS", "10000".into())]);
        let (tokens, rooms) = seed(&db, 50, 5).await;

        let sockets: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                tokio::spawn(chatter(
                    server.addr,
                    token.clone(),
                    rooms[i % rooms.len()],
                    i,
                ))
            })
            .collect();
        // Let traffic flow until a good number of messages are committed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = sql_client(&db.url, "chatpool-tests").await;
        loop {
            let n: i64 = client
                .query_one("SELECT count(*) FROM messages", &[])
                .await
                .unwrap()
                .get(0);
            if n >= 200 {
                break;
            }
            assert!(Instant::now() < deadline, "only {n} messages after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let signalled = Instant::now();
        server.signal(Signal::SIGTERM);
        let mut outcomes = Vec::new();
        for s in sockets {
            outcomes.push(s.await.unwrap());
        }
        let (status, log) = wait_exit(server, Duration::from_secs(15)).await;
        assert!(status.success(), "{log}");
        assert!(signalled.elapsed() < Duration::from_secs(10));
        assert!(log.contains("shutdown complete"), "{log}");

        let codes: HashMap<Option<u16>, usize> =
            outcomes.iter().fold(HashMap::new(), |mut m, o| {
                *m.entry(o.close_code).or_default() += 1;
                m
            });
        assert_eq!(
            codes.get(&Some(u16::from(CloseCode::Away))),
            Some(&50),
            "close codes: {codes:?}"
        );

        let stored: std::collections::HashSet<(i64, i64, i64)> = client
            .query("SELECT id, room_id, seq FROM messages", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let acked: Vec<_> = outcomes
            .iter()
            .flat_map(|o| o.acked.iter().copied())
            .collect();
        assert!(acked.len() >= 200, "only {} acks", acked.len());
        for a in &acked {
            assert!(
                stored.contains(a),
                "acked message {a:?} is not in the database"
            );
        }
        wait_until_no_server_connections(&db.name).await;
    })
    .await;
}
