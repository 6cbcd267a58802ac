//! Issue 11 / SPEC §6 "Abuse limits": past a limit, HTTP 429
//! `rate_limited` with `Retry-After`, or a WebSocket `error` `rate_limited`
//! on a socket that stays open; `CHATPOOL_TRUSTED_PROXIES` for the address.

use std::time::Duration;

use chatpool::testkit::api::{collect, create_room, id_of, post, register, user_with_role, Reply};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::ws::{connect, try_connect};
use chatpool::testkit::{bounded, AppOptions, Role, TestApp};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn sends_past_the_rate_and_burst_are_refused_on_websocket_and_http_alike() {
    bounded(async {
        let app = AppOptions::default()
            .with_default_limits()
            .env("CHATPOOL_SEND_RATE", 2)
            .env("CHATPOOL_SEND_BURST", 5)
            .spawn()
            .await;
        let ann = register(&app, "ann").await;
        let room = id_of(&create_room(&app, &ann.token, "general", &[]).await);
        let mut ws = connect(&app, &ann.token).await;
        ws.join(room, None).await;
        // The burst of 5 goes through back to back...
        for i in 0..5 {
            let (ack, _) = ws.send_message(room, "hi", &format!("c{i}")).await;
            assert_eq!(ack["type"], "ack");
        }
        // ...the next is refused, with its client_id and ref, socket open.
        ws.send_json(json!({"type": "send", "room_id": room, "body": "too many", "client_id": "c5", "ref": "r5"}))
            .await;
        let (error, _) = ws.recv_until("error").await;
        assert_eq!(error["code"], "rate_limited", "{error}");
        assert_eq!((error["client_id"].as_str(), error["ref"].as_str()), (Some("c5"), Some("r5")));
        // HTTP shares the same budget.
        let path = format!("/api/rooms/{room}/messages");
        let reply = post(&app, &path, &ann.token, json!({"body": "over http"})).await;
        reply.expect_error(429, "rate_limited");
        let wait: u64 = reply.retry_after.as_deref().unwrap().parse().unwrap();
        assert!((1..=2).contains(&wait), "Retry-After {wait}");
        // Another user is not affected; and after Retry-After the same one may send again.
        let bob = register(&app, "bob").await;
        let room_b = id_of(&create_room(&app, &bob.token, "b", &[]).await);
        post(&app, &format!("/api/rooms/{room_b}/messages"), &bob.token, json!({"body": "fine"}))
            .await
            .expect(201);
        tokio::time::sleep(Duration::from_secs(wait)).await;
        post(&app, &path, &ann.token, json!({"body": "later"})).await.expect(201);
        assert!(ws.round_trip().await.iter().all(|f| f["type"] != "error"));
        // Nothing refused was stored: 5 + 1.
        let client = sql_client(&app.db.url, "tests").await;
        let stored: i64 = client
            .query_one("SELECT count(*) FROM messages WHERE room_id = $1", &[&room])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_are_limited_per_address_and_a_trusted_proxy_names_the_address() {
    bounded(async {
        // No trusted proxy: X-Forwarded-For is ignored, every request is 127.0.0.1.
        let app = AppOptions::default()
            .with_default_limits()
            .env("CHATPOOL_REGISTER_RATE", 3)
            .spawn()
            .await;
        for i in 0..3 {
            register_from(&app, &format!("user{i}"), "203.0.113.1")
                .await
                .expect(201);
        }
        let reply = register_from(&app, "user3", "203.0.113.2").await;
        reply.expect_error(429, "rate_limited");
        assert!(reply.retry_after.is_some());

        // Behind a trusted proxy, each forwarded address has its own budget,
        // and only the proxy's own (last) entry counts.
        let proxied = AppOptions::default()
            .with_default_limits()
            .env("CHATPOOL_REGISTER_RATE", 3)
            .env("CHATPOOL_TRUSTED_PROXIES", "127.0.0.0/8")
            .spawn()
            .await;
        for i in 0..3 {
            register_from(&proxied, &format!("aaa{i}"), "198.51.100.7, 203.0.113.1")
                .await
                .expect(201);
        }
        register_from(&proxied, "aaa3", "198.51.100.8, 203.0.113.1")
            .await
            .expect_error(429, "rate_limited");
        register_from(&proxied, "bbb0", "203.0.113.1, 203.0.113.2")
            .await
            .expect(201);
    })
    .await;
}

/// `POST /api/auth/register` with an `X-Forwarded-For` header.
async fn register_from(app: &TestApp, name: &str, forwarded: &str) -> Reply {
    let response = app
        .http
        .post(app.url("/api/auth/register"))
        .header("x-forwarded-for", forwarded)
        .json(&json!({"username": name, "password": "long enough password"}))
        .send()
        .await
        .unwrap();
    collect(response).await
}

#[tokio::test(flavor = "multi_thread")]
async fn members_room_creations_are_limited_but_agents_are_not() {
    bounded(async {
        let app = AppOptions::default()
            .with_default_limits()
            .env("CHATPOOL_REGISTER_RATE", 2)
            .spawn()
            .await;
        let ann = register(&app, "ann").await;
        for i in 0..2 {
            create_room(&app, &ann.token, &format!("room {i}"), &[]).await;
        }
        post(&app, "/api/rooms", &ann.token, json!({"name": "one more"}))
            .await
            .expect_error(429, "rate_limited");
        let agent = user_with_role(&app, "crm", Role::Agent).await;
        for i in 0..5 {
            create_room(&app, &agent.token, &format!("crm {i}"), &[]).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_past_the_socket_limit_gets_429_and_a_slot_frees_when_a_socket_closes() {
    bounded(async {
        let app = AppOptions::default()
            .with_default_limits()
            .env("CHATPOOL_MAX_SOCKETS_PER_USER", 2)
            .spawn()
            .await;
        let ann = register(&app, "ann").await;
        let bob = register(&app, "bob").await;
        let first = connect(&app, &ann.token).await;
        let _second = connect(&app, &ann.token).await;
        let refused = try_connect(&app, &ann.token).await.err().expect("refused");
        assert_eq!(refused.status, 429);
        assert_eq!(refused.body["error"]["code"], "rate_limited");
        let _bobs = connect(&app, &bob.token).await;
        first.close().await;
        // The slot frees once the server has seen the close.
        loop {
            match try_connect(&app, &ann.token).await {
                Ok(_) => break,
                Err(r) => assert_eq!(r.status, 429),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_joins_at_most_1000_rooms() {
    bounded(async {
        let app = AppOptions::default().spawn().await;
        let agent = user_with_role(&app, "agent", Role::Agent).await;
        let client = sql_client(&app.db.url, "tests").await;
        client
            .execute(
                "INSERT INTO rooms (name, created_by) SELECT 'r' || g, $1 FROM generate_series(1, 1001) g",
                &[&agent.id()],
            )
            .await
            .unwrap();
        let ids: Vec<i64> = client
            .query("SELECT id FROM rooms ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut ws = connect(&app, &agent.token).await;
        for id in &ids[..1000] {
            ws.send_json(json!({"type": "join", "room_id": id})).await;
        }
        for _ in 0..1000 {
            let (joined, _) = ws.recv_until("joined").await;
            assert_eq!(joined["type"], "joined");
        }
        ws.send_json(json!({"type": "join", "room_id": ids[1000], "ref": "last"})).await;
        let (error, _) = ws.recv_until("error").await;
        assert_eq!((error["code"].as_str(), error["ref"].as_str()), (Some("rate_limited"), Some("last")));
        // Rejoining a joined room is not a new room; leaving makes space.
        ws.send_json(json!({"type": "join", "room_id": ids[0]})).await;
        ws.recv_until("joined").await;
        ws.send_json(json!({"type": "leave", "room_id": ids[1]})).await;
        ws.recv_until("left").await;
        ws.send_json(json!({"type": "join", "room_id": ids[1000]})).await;
        let (joined, _) = ws.recv_until("joined").await;
        assert_eq!(joined["room_id"], ids[1000]);
    })
    .await;
}
