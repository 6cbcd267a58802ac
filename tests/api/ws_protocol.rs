//! SPEC §3, row by row: upgrade, hello, join/leave, send/ack/message,
//! typing, ping/pong, `ref`, error frames that keep the socket open,
//! heartbeats and role changes.

use std::time::Duration;

use chatpool::testkit::seed::{
    bulk_messages, logout, seed_room, seed_user, set_role, stored_seqs, two_in_a_room,
};
use chatpool::testkit::ws::*;
use chatpool::testkit::{bounded, spawn_app, AppOptions, Role};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn ws_hello_then_ping_pong_with_ref_over_bearer_or_query_token() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Agent).await;

        let mut a = connect_bearer(&app, &ann.token).await;
        let user = &a.hello["user"];
        assert_eq!(user["id"], ann.id);
        assert_eq!(user["username"], "ann");
        assert_eq!(user["display_name"], "ann");
        assert_eq!(user["role"], "agent");
        assert!(user["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        assert!(user.get("password_hash").is_none());
        assert_eq!(a.hello["heartbeat_ms"], 30000);

        a.send_json(json!({"type": "ping", "ref": "p-1"})).await;
        assert_eq!(a.recv_json().await, json!({"type": "pong", "ref": "p-1"}));
        a.send_json(json!({"type": "ping"})).await;
        assert_eq!(a.recv_json().await, json!({"type": "pong"}));

        let mut b = connect(&app, &ann.token).await;
        assert_eq!(b.hello["user"]["id"], ann.id);
        b.round_trip().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_upgrade_without_a_valid_token_is_401_and_a_bad_handshake_is_400() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Member).await;

        let no_token = try_connect_request(
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/ws", app.addr),
            )
            .unwrap(),
        )
        .await
        .err()
        .expect("refused");
        assert_eq!(no_token.status, 401);
        assert_eq!(no_token.body["error"]["code"], "unauthorized");

        let bad = try_connect(&app, "not-a-token")
            .await
            .err()
            .expect("refused");
        assert_eq!(bad.status, 401);
        assert_eq!(bad.body["error"]["code"], "unauthorized");

        // A revoked (deleted) token.
        logout(&app, ann.token_id).await;
        let revoked = try_connect(&app, &ann.token).await.err().expect("refused");
        assert_eq!(revoked.status, 401);

        // Not a WebSocket handshake at all.
        let other = seed_user(&app, "bob", Role::Member).await;
        let plain = app
            .http
            .get(app.url("/ws"))
            .bearer_auth(&other.token)
            .send()
            .await
            .unwrap();
        assert_eq!(plain.status(), 400);
        let body: serde_json::Value = plain.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
        let old_version = app
            .http
            .get(app.url("/ws"))
            .bearer_auth(&other.token)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "8")
            .send()
            .await
            .unwrap();
        assert_eq!(old_version.status(), 400);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_bad_frames_get_bad_request_and_the_socket_keeps_working() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Member).await;
        let room = seed_room(&app, ann.id, &[]).await;
        let mut a = connect(&app, &ann.token).await;

        a.send_raw(Message::text("{this is not json")).await;
        let e = a.recv_json().await;
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], "bad_request");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));

        a.send_json(json!({"type": "dance", "ref": "r1"})).await;
        let e = a.recv_json().await;
        assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("bad_request"), Some("r1")));

        a.send_json(json!({"type": "join", "ref": "r2"})).await;
        let e = a.recv_json().await;
        assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("bad_request"), Some("r2")));

        a.send_json(json!({"type": "send", "room_id": room, "body": "hi"})).await;
        assert_eq!(a.recv_json().await["code"], "bad_request", "client_id is required");

        a.send_json(json!({"type": "send", "room_id": room, "body": "   ", "client_id": "c-1", "ref": "r3"}))
            .await;
        let e = a.recv_json().await;
        assert_eq!(e["code"], "bad_request");
        assert_eq!(e["client_id"], "c-1");
        assert_eq!(e["ref"], "r3");

        a.send_json(json!({"type": "join", "room_id": room, "after_seq": -1})).await;
        assert_eq!(a.recv_json().await["code"], "bad_request");

        // Still fully usable.
        let (ack, _) = a.send_message(room, "works", "c-2").await;
        assert_eq!(ack["message"]["seq"], 1);
        a.round_trip().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_join_leave_send_ack_and_broadcast_to_every_joined_socket() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Member).await;
        let bob = seed_user(&app, "bob", Role::Member).await;
        let eve = seed_user(&app, "eve", Role::Member).await;
        let room = seed_room(&app, ann.id, &[bob.id]).await;
        let mut a = connect(&app, &ann.token).await;
        let mut b = connect(&app, &bob.token).await;
        let mut e = connect(&app, &eve.token).await;

        a.send_json(json!({"type": "join", "room_id": room, "ref": "j1"})).await;
        assert_eq!(
            a.recv_json().await,
            json!({"type": "joined", "room_id": room, "last_seq": 0, "ref": "j1"})
        );
        b.join(room, None).await;

        // Not visible → not_found, for a room that exists and one that does not.
        e.send_json(json!({"type": "join", "room_id": room, "ref": "j2"})).await;
        let err = e.recv_json().await;
        assert_eq!((err["code"].as_str(), err["ref"].as_str()), (Some("not_found"), Some("j2")));
        e.send_json(json!({"type": "join", "room_id": room + 1000})).await;
        assert_eq!(e.recv_json().await["code"], "not_found");
        e.send_json(json!({"type": "send", "room_id": room, "body": "x", "client_id": "e1", "ref": "s"}))
            .await;
        let err = e.recv_json().await;
        assert_eq!(err["code"], "not_found");
        assert_eq!(err["client_id"], "e1");

        a.send_json(json!({"type": "send", "room_id": room, "body": "hello", "client_id": "a-1", "ref": "s1"}))
            .await;
        let mut got = [a.recv_json().await, a.recv_json().await];
        got.sort_by_key(|v| v["type"].as_str().unwrap().to_owned());
        let (ack, own) = (&got[0], &got[1]);
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["ref"], "s1");
        assert_eq!(ack["client_id"], "a-1");
        let m = &ack["message"];
        assert_eq!(m["room_id"], room);
        assert_eq!(m["seq"], 1);
        assert_eq!(m["body"], "hello");
        assert_eq!(m["client_id"], "a-1");
        assert_eq!(
            m["author"],
            json!({"id": ann.id, "username": "ann", "display_name": "ann"})
        );
        let created = m["created_at"].as_str().unwrap();
        assert!(created.ends_with('Z') && created.len() == 24, "{created}");
        assert!(m["id"].as_i64().is_some());
        assert_eq!(own, &json!({"type": "message", "message": m.clone()}));
        assert_eq!(b.recv_json().await, json!({"type": "message", "message": m.clone()}));

        // Sending needs no join.
        let mut b2 = connect(&app, &bob.token).await;
        let (ack2, _) = b2.send_message(room, "from an unjoined socket", "b-1").await;
        assert_eq!(ack2["message"]["seq"], 2);
        assert_eq!(seq_of(&a.recv_json().await), 2);

        // Leave: left with ref, and nothing more is delivered.
        b.send_json(json!({"type": "leave", "room_id": room, "ref": "l1"})).await;
        let (left, _) = b.recv_until("left").await;
        assert_eq!(left, json!({"type": "left", "room_id": room, "ref": "l1"}));
        a.send_message(room, "after leave", "a-2").await;
        assert!(b.round_trip().await.is_empty(), "nothing delivered after leave");
        assert!(e.round_trip().await.is_empty(), "nothing delivered to a stranger");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_typing_reaches_the_others_only_and_is_rate_limited() {
    bounded(async {
        let app = spawn_app().await;
        let (ann, bob, room) = two_in_a_room(&app, "ann", "bob").await;
        let mut a = connect(&app, &ann.token).await;
        let mut b = connect(&app, &bob.token).await;

        a.send_json(json!({"type": "typing", "room_id": room, "ref": "t0"}))
            .await;
        let e = a.recv_json().await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("bad_request"), Some("t0"))
        );

        a.join(room, None).await;
        b.join(room, None).await;
        a.send_json(json!({"type": "typing", "room_id": room}))
            .await;
        assert_eq!(
            b.recv_json().await,
            json!({"type": "typing", "room_id": room, "user": {"id": ann.id, "username": "ann"}})
        );
        assert!(a.round_trip().await.is_empty(), "not echoed to the sender");

        // A burst: some pass, the rest are refused with rate_limited.
        for _ in 0..12 {
            a.send_json(json!({"type": "typing", "room_id": room}))
                .await;
        }
        let before = a.round_trip().await;
        assert!(!before.is_empty(), "a burst of 12 is rate limited");
        assert!(
            before.iter().all(|v| v["code"] == "rate_limited"),
            "{before:?}"
        );
        let delivered = b.round_trip().await;
        assert!(delivered.iter().all(|v| v["type"] == "typing"));
        assert_eq!(delivered.len() + before.len(), 12);

        // Nothing was stored.
        assert!(stored_seqs(&app, room).await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_join_with_after_seq_replays_in_order_and_truncates_past_1000() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Member).await;
        let room = seed_room(&app, ann.id, &[]).await;
        bulk_messages(&app, room, ann.id, 1005).await;
        let mut a = connect(&app, &ann.token).await;

        let joined = a.join(room, Some(0)).await;
        assert_eq!(joined["last_seq"], 1005);
        assert_eq!(joined["truncated"], true);
        let mut seqs = Vec::new();
        for _ in 0..1000 {
            seqs.push(seq_of(&a.recv_json().await));
        }
        assert_eq!(seqs, (6..=1005).collect::<Vec<_>>());

        // Re-join with a recent cursor: exactly what is missing, then live.
        let joined = a.join(room, Some(1001)).await;
        assert_eq!(joined["last_seq"], 1005);
        assert!(joined.get("truncated").is_none(), "{joined}");
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(seq_of(&a.recv_json().await));
        }
        assert_eq!(got, vec![1002, 1003, 1004, 1005]);
        let (ack, before) = a.send_message(room, "live", "a-live").await;
        let mut live: Vec<i64> = before.iter().map(seq_of).collect();
        if live.is_empty() {
            live.push(seq_of(&a.recv_json().await));
        }
        assert_eq!(live, vec![1006]);
        assert_eq!(ack["message"]["seq"], 1006);
        assert!(a.round_trip().await.is_empty());

        // Nothing missed: no replay at all.
        let joined = a.join(room, Some(1006)).await;
        assert_eq!(joined["last_seq"], 1006);
        assert!(a.round_trip().await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_a_role_change_applies_to_an_open_socket_at_once() {
    bounded(async {
        let app = spawn_app().await;
        let owner = seed_user(&app, "owner", Role::Member).await;
        let sam = seed_user(&app, "sam", Role::Member).await;
        let room = seed_room(&app, owner.id, &[]).await;
        let mut s = connect(&app, &sam.token).await;

        s.send_json(json!({"type": "join", "room_id": room})).await;
        assert_eq!(s.recv_json().await["code"], "not_found");

        set_role(&app, sam.id, Role::Agent).await;
        s.join(room, None).await;
        s.send_message(room, "agent here", "s-1").await;

        set_role(&app, sam.id, Role::Member).await;
        s.send_json(json!({"type": "send", "room_id": room, "body": "still?", "client_id": "s-2"}))
            .await;
        let (e, _) = s.recv_until("error").await;
        assert_eq!(e["code"], "not_found");
        assert_eq!(e["client_id"], "s-2");
        // The room it can no longer see stops delivering.
        let mut o = connect(&app, &owner.token).await;
        o.send_message(room, "private again", "o-1").await;
        assert!(s.round_trip().await.is_empty());
        s.send_json(json!({"type": "join", "room_id": room})).await;
        assert_eq!(s.recv_json().await["code"], "not_found");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_heartbeat_pings_and_drops_a_silent_peer() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_HEARTBEAT_MS", 150)
            .spawn()
            .await;
        let ann = seed_user(&app, "ann", Role::Member).await;

        let mut live = connect(&app, &ann.token).await;
        assert_eq!(live.hello["heartbeat_ms"], 150);
        let mut silent = connect(&app, &ann.token).await;

        // The live peer reads (so tungstenite answers each ping with a pong)
        // for well over three intervals and is kept.
        let mut pings = 0;
        while pings < 8 {
            match tokio::time::timeout(FRAME_WAIT, live.ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("expected pings, got {other:?}"),
            }
        }
        // Meanwhile the silent one (never read, never answered) was dropped.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while app.ws_sessions() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "silent peer still open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        live.round_trip().await;
        // The silent socket sees the pings it ignored, then the end, no Close frame.
        loop {
            match tokio::time::timeout(FRAME_WAIT, silent.ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) => panic!("a silent peer is dropped, not closed"),
                None | Some(Err(_)) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
}
