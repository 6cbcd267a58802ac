//! Issue 6: several instances on one database, fanned out through
//! PostgreSQL LISTEN/NOTIFY.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpool::testkit::admin::{admin_count, admin_exec, create_role};
use chatpool::testkit::api;
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::seed::{
    bulk_messages, seed_room, seed_user, seed_users, stored_seqs, two_in_a_room, Seeded,
};
use chatpool::testkit::ws::{connect, seq_of, WsClient};
use chatpool::testkit::{bounded, cluster, AppOptions, Role, TestApp};
use serde_json::{json, Value};

/// How fast a message must cross from one instance to another.
const CROSS_INSTANCE: Duration = Duration::from_secs(2);

/// Two instances on one fresh database, each connecting as its own role.
pub(crate) async fn two_instances(connection_limit: u32) -> (TestApp, TestApp, String, String) {
    let db = Arc::new(cluster().create_database().await);
    let (role_a, role_b) = (create_role().await, create_role().await);
    let a = AppOptions::default()
        .database(db.clone())
        .role(&role_a)
        .url_param("connection_limit", connection_limit)
        .spawn()
        .await;
    let b = AppOptions::default()
        .database(db)
        .role(&role_b)
        .url_param("connection_limit", connection_limit)
        .spawn()
        .await;
    (a, b, role_a, role_b)
}

/// The next `message` frame, within `limit`.
async fn next_message(ws: &mut WsClient, limit: Duration) -> Value {
    let frame = tokio::time::timeout(limit, ws.recv_until("message"))
        .await
        .expect("the message arrives in time")
        .0;
    frame["message"].clone()
}

/// The sender's own copy of its message: it may come before the `ack`
/// (among `before`) or after it.
async fn own_copy(ws: &mut WsClient, before: Vec<Value>) -> Value {
    match before.into_iter().find(|f| f["type"] == "message") {
        Some(frame) => frame["message"].clone(),
        None => next_message(ws, CROSS_INSTANCE).await,
    }
}

/// Connections of the role in `pg_stat_activity` on `database`.
async fn connections_of_role(database: &str, role: &str) -> i64 {
    admin_count(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND usename = '{role}' \
         AND application_name = 'chatpool'"
    ))
    .await
}

/// The pid of the role's LISTEN connection, once it is listening.
pub(crate) async fn listener_pid(database: &str, role: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid = admin_count(&format!(
            "SELECT coalesce(max(pid), 0)::bigint FROM pg_stat_activity WHERE datname = '{database}' \
             AND usename = '{role}' AND (query LIKE 'LISTEN %' OR query LIKE '/* chatpool listener */%')"
        ))
        .await;
        if pid != 0 {
            return pid;
        }
        assert!(Instant::now() < deadline, "{role} never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_sent_on_one_instance_reaches_a_socket_on_the_other_within_2_s() {
    bounded(async {
        let (a, b, _, _) = two_instances(10).await;
        let (alice, bob, room) = two_in_a_room(&a, "alice", "bob").await;

        let mut on_b = connect(&b, &bob.token).await;
        on_b.join(room, None).await;
        let mut on_a = connect(&a, &alice.token).await;
        on_a.join(room, None).await;

        // Over WebSocket: the ack on A and the delivery on B carry one message.
        let (ack, before) = on_a.send_message(room, "hello from A", "ws-1").await;
        let delivered = next_message(&mut on_b, CROSS_INSTANCE).await;
        assert_eq!(delivered, ack["message"]);
        assert_eq!(delivered["seq"], 1);
        assert_eq!(own_copy(&mut on_a, before).await, ack["message"]);

        // Over HTTP: the 201 on A and the delivery on B carry one message.
        let created = api::post(
            &a,
            &format!("/api/rooms/{room}/messages"),
            &alice.token,
            json!({"body": "posted on A", "client_id": "http-1"}),
        )
        .await
        .expect(201);
        let delivered = next_message(&mut on_b, CROSS_INSTANCE).await;
        assert_eq!(delivered, created);
        assert_eq!(delivered["seq"], 2);
        assert_eq!(next_message(&mut on_a, CROSS_INSTANCE).await, created);

        // And the other way round.
        let (ack, before) = on_b.send_message(room, "hello from B", "ws-2").await;
        assert_eq!(own_copy(&mut on_b, before).await, ack["message"]);
        let delivered = next_message(&mut on_a, CROSS_INSTANCE).await;
        assert_eq!(delivered, ack["message"]);
        assert_eq!(delivered["seq"], 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_instance_stays_within_its_own_connection_limit_under_load_listener_included() {
    bounded(async {
        let (a, b, role_a, role_b) = two_instances(3).await;
        let db = a.db.name.clone();
        let users = seed_users(&a, "user", 20, Role::Member).await;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let room = seed_room(&a, ids[0], &ids).await;

        let done = tokio_util::sync::CancellationToken::new();
        let sampler = {
            let (done, db, role_a, role_b) =
                (done.clone(), db.clone(), role_a.clone(), role_b.clone());
            tokio::spawn(async move {
                let (mut max_a, mut max_b) = (0, 0);
                while !done.is_cancelled() {
                    max_a = max_a.max(connections_of_role(&db, &role_a).await);
                    max_b = max_b.max(connections_of_role(&db, &role_b).await);
                }
                (max_a, max_b)
            })
        };

        // 20 sockets, half on each instance, each sending 10 messages.
        let senders = users.iter().enumerate().map(|(i, user)| {
            let app = if i % 2 == 0 { &a } else { &b };
            let token = user.token.clone();
            async move {
                let mut ws = connect(app, &token).await;
                for n in 0..10 {
                    let cid = format!("{i}-{n}");
                    loop {
                        ws.send_json(
                            json!({"type": "send", "room_id": room, "body": "x", "client_id": cid}),
                        )
                        .await;
                        let reply = loop {
                            let v = ws.recv_json().await;
                            if v["client_id"] == cid.as_str() {
                                break v;
                            }
                        };
                        if reply["type"] == "ack" {
                            break;
                        }
                        assert_eq!(reply["code"], "db_busy", "{reply}");
                    }
                }
            }
        });
        futures_util::future::join_all(senders).await;
        done.cancel();
        let (max_a, max_b) = sampler.await.unwrap();

        assert!(
            max_a <= 3,
            "instance A had {max_a} connections with connection_limit=3"
        );
        assert!(
            max_b <= 3,
            "instance B had {max_b} connections with connection_limit=3"
        );
        assert!(
            max_a >= 2 && max_b >= 2,
            "listener plus pool not seen: {max_a}, {max_b}"
        );
        let seqs = stored_seqs(&a, room).await;
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn when_its_listener_is_terminated_an_instance_reconnects_and_catches_up_on_what_it_missed() {
    bounded(async {
        let (a, b, _, role_b) = two_instances(10).await;
        let (alice, bob, room) = two_in_a_room(&a, "alice", "bob").await;
        let mut on_b = connect(&b, &bob.token).await;
        on_b.join(room, None).await;
        let mut on_a = connect(&a, &alice.token).await;
        let mut received = Vec::new();

        // 1..=20 live.
        for n in 1..=20 {
            on_a.send_message(room, &format!("m{n}"), &format!("c{n}"))
                .await;
        }
        received.extend(receive(&mut on_b, 20).await);

        // B loses its listener and cannot log in again: 21..=40 are committed
        // while it is deaf.
        let first_pid = listener_pid(&b.db.name, &role_b).await;
        admin_exec(&format!("ALTER ROLE {role_b} NOLOGIN")).await;
        admin_exec(&format!("SELECT pg_terminate_backend({first_pid})")).await;
        wait_until_gone(first_pid).await;
        for n in 21..=40 {
            on_a.send_message(room, &format!("m{n}"), &format!("c{n}"))
                .await;
        }

        // Once it can reconnect, its catch-up alone delivers 21..=40: nothing
        // newer is sent that could reveal the hole to the socket.
        admin_exec(&format!("ALTER ROLE {role_b} LOGIN")).await;
        received.extend(receive(&mut on_b, 40).await);
        let second_pid = listener_pid(&b.db.name, &role_b).await;
        assert_ne!(first_pid, second_pid, "B listens on a new connection");

        // And live delivery resumes.
        for n in 41..=60 {
            on_a.send_message(room, &format!("m{n}"), &format!("c{n}"))
                .await;
        }
        received.extend(receive(&mut on_b, 60).await);
        assert_eq!(
            received,
            (1..=60).collect::<Vec<_>>(),
            "in order, no gap, no duplicate"
        );
        assert!(
            on_b.round_trip().await.is_empty(),
            "nothing delivered twice"
        );
    })
    .await;
}

/// Reads `message` frames until seq `last` and returns their seqs.
async fn receive(ws: &mut WsClient, last: i64) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.last() != Some(&last) {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.recv_until("message"))
            .await
            .expect("every message reaches B")
            .0;
        seqs.push(seq_of(&frame));
    }
    seqs
}

/// Waits until backend `pid` has left `pg_stat_activity`.
pub(crate) async fn wait_until_gone(pid: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_count(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
    ))
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "backend {pid} still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_on_one_instance_closes_the_same_tokens_socket_on_the_other_with_1008() {
    bounded(async {
        let (a, b, _, _) = two_instances(10).await;
        let session = api::register(&a, "carol").await;
        let mut on_b = connect(&b, &session.token).await;
        assert_eq!(on_b.round_trip().await.len(), 0);

        let started = Instant::now();
        api::post(&a, "/api/auth/logout", &session.token, json!({}))
            .await
            .expect(204);
        on_b.expect_close(1008).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );

        // Neither instance accepts the token afterwards.
        api::get(&b, "/api/me", &session.token)
            .await
            .expect_error(401, "unauthorized");
        api::get(&a, "/api/me", &session.token)
            .await
            .expect_error(401, "unauthorized");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_for_a_message_a_socket_already_has_is_not_delivered_twice() {
    bounded(async {
        let app = AppOptions::default().spawn().await;
        let alice = seed_user(&app, "alice", Role::Member).await;
        let room = seed_room(&app, alice.id, &[]).await;
        bulk_messages(&app, room, alice.id, 3).await;

        let mut ws = connect(&app, &alice.token).await;
        ws.join(room, Some(0)).await;
        let replayed: Vec<Value> = {
            let mut out = Vec::new();
            for _ in 0..3 {
                out.push(next_message(&mut ws, CROSS_INSTANCE).await);
            }
            out
        };
        assert_eq!(
            replayed
                .iter()
                .map(|m| m["seq"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );

        // Announce seq 2 again, as another instance's late notification would.
        let payload = app.signed_notification(
            &json!({"t": "m", "room_id": room, "seq": 2, "message": replayed[1]}).to_string(),
        );
        let client = sql_client(&app.db.url, "chatpool-tests").await;
        client
            .execute("SELECT pg_notify('chatpool_events', $1)", &[&payload])
            .await
            .unwrap();

        // PostgreSQL delivers notifications in commit order: the duplicate is
        // handled before the next message's own notification.
        let (ack, before) = ws.send_message(room, "fourth", "c4").await;
        assert!(
            before
                .iter()
                .all(|f| f["type"] != "message" || f["message"]["seq"] == 4),
            "{before:?}"
        );
        let next = own_copy(&mut ws, before).await;
        assert_eq!(next, ack["message"]);
        assert_eq!(next["seq"], 4);
        assert!(ws.round_trip().await.is_empty(), "no second copy of seq 2");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logout_made_while_an_instance_is_not_listening_closes_its_sockets_once_it_listens_again()
{
    bounded(async {
        let (a, b, _, role_b) = two_instances(10).await;
        let session = api::register(&a, "erin").await;
        let mut on_b = connect(&b, &session.token).await;
        assert!(on_b.round_trip().await.is_empty());

        // B goes deaf and cannot log back in while A logs the token out.
        let pid = listener_pid(&b.db.name, &role_b).await;
        admin_exec(&format!("ALTER ROLE {role_b} NOLOGIN")).await;
        admin_exec(&format!("SELECT pg_terminate_backend({pid})")).await;
        wait_until_gone(pid).await;
        api::post(&a, "/api/auth/logout", &session.token, json!({}))
            .await
            .expect(204);
        // The revocation went to nobody on B: its socket still works.
        assert!(on_b.round_trip().await.is_empty());

        // Once B listens again it finds the token gone and closes the socket.
        admin_exec(&format!("ALTER ROLE {role_b} LOGIN")).await;
        on_b.expect_close(1008).await;
    })
    .await;
}

/// Asks `GET /api/me` on `app` until the token is served from its cache
/// (the listener is up and caught up), within 10 s.
/// Polls `GET /api/me` on `app` with `token` until `done(status, body)`,
/// within [`CROSS_INSTANCE`]: what another instance did reaches this one as
/// soon as its listener hears the notification, not before.
async fn until_on(app: &TestApp, token: &str, done: impl Fn(u16, &Value) -> bool) {
    let deadline = Instant::now() + CROSS_INSTANCE;
    loop {
        let reply = api::get(app, "/api/me", token).await;
        let body: Value = serde_json::from_str(&reply.text).unwrap_or(Value::Null);
        if done(reply.status.as_u16(), &body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not applied within {CROSS_INSTANCE:?}: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn until_cached(app: &TestApp, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        api::get(app, "/api/me", token).await.expect(200);
        if app.cached_tokens() > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the token was never cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_token_cache_on_a_logout_and_a_role_change_apply_on_both_instances_as_soon_as_heard(
) {
    bounded(async {
        let (a, b, _, _) = two_instances(5).await;
        let admin = api::user_with_role(&a, "admin1", Role::Admin).await;
        let alice = api::register(&a, "alice").await;
        let other = api::login(&b, "alice", api::PASSWORD).await.expect(200);
        let other = other["token"].as_str().unwrap().to_owned();
        until_cached(&a, &alice.token).await;
        until_cached(&b, &alice.token).await;
        until_cached(&b, &other).await;

        // A promotion on A: B's cached answer for both tokens is dropped.
        let path = format!("/api/admin/users/{}", alice.id());
        api::call(
            &a,
            reqwest::Method::PATCH,
            &path,
            Some(&admin.token),
            Some(json!({"role": "agent"})),
        )
        .await
        .expect(200);
        // As soon as B's listener hears it: poll, within the cross-instance bound.
        for token in [&alice.token, &other] {
            until_on(&b, token, |status, me| {
                status == 200 && me["role"] == "agent"
            })
            .await;
        }

        // A logout on A: the token stops working on A and on B at once; the
        // user's other token keeps working.
        until_cached(&b, &alice.token).await;
        api::post(&a, "/api/auth/logout", &alice.token, json!({}))
            .await
            .expect_text(204);
        api::get(&a, "/api/me", &alice.token)
            .await
            .expect_error(401, "unauthorized");
        until_on(&b, &alice.token, |status, _| status == 401).await;
        api::get(&b, "/api/me", &other).await.expect(200);
    })
    .await;
}

/// Sends a genuine notification (a revocation of a fresh user's token, from
/// chatpool's own role) and waits until the listener has acted on it: the
/// listener handles notifications in order, so everything sent before it
/// has been handled too (a shared counter cannot tell whose it counted).
async fn after_a_genuine_notification(app: &TestApp) {
    let bob = seed_user(
        app,
        &format!("sentinel{}", rand::random::<u32>()),
        Role::Member,
    )
    .await;
    let mut sentinel = connect(app, &bob.token).await;
    let genuine =
        app.signed_notification(&json!([{"t": "r", "token_id": bob.token_id}]).to_string());
    let owner = sql_client(&app.db.url, "chatpool-tests").await;
    owner
        .execute("SELECT pg_notify('chatpool_events', $1)", &[&genuine])
        .await
        .unwrap();
    sentinel.expect_close(1008).await;
}

/// A message for seq 1 of `room` and a revocation of `alice`'s token, as a
/// forger would announce them (unsigned bodies).
fn forgeries(room: i64, alice: &Seeded) -> (String, String) {
    let message = json!([{"t": "m", "room_id": room, "seq": 1, "message": {
        "id": 999, "room_id": room, "seq": 1,
        "author": {"id": alice.id, "username": "alice", "display_name": "alice"},
        "body": "forged", "client_id": null, "created_at": "2026-11-22T10:00:00.123Z"
    }}])
    .to_string();
    let revocation = json!([{"t": "r", "token_id": alice.token_id}]).to_string();
    (message, revocation)
}

/// After the forgeries were handled: at least `dropped` more were counted,
/// the real seq 1 is delivered (not taken for a duplicate of the fake), and
/// alice's token still works, on her socket and on a new one.
async fn nothing_was_forged(
    app: &TestApp,
    ws: &mut WsClient,
    room: i64,
    alice: &Seeded,
    counted_before: f64,
    dropped: f64,
) {
    after_a_genuine_notification(app).await;
    assert!(app.metric("chatpool_listener_forged_total").await >= counted_before + dropped);
    let (ack, frames) = ws.send_message(room, "real", "c1").await;
    assert_eq!(ack["message"]["seq"], 1);
    assert!(
        frames.iter().all(|f| f["message"]["body"] != "forged"),
        "{frames:?}"
    );
    assert_eq!(own_copy(ws, frames).await["body"], "real");
    assert!(ws.round_trip().await.is_empty());
    let mut again = connect(app, &alice.token).await;
    assert!(again.round_trip().await.is_empty());
}

/// An app with alice joined to her room, and a login role `{prefix}_…`
/// created with `grants` (`""`, or e.g. ` IN ROLE pg_read_all_data`),
/// connected as itself: the forger.
struct Scene {
    app: TestApp,
    alice: Seeded,
    room: i64,
    ws: WsClient,
    role: String,
    forger: tokio_postgres::Client,
}

async fn forgery_scene(prefix: &str, grants: &str) -> Scene {
    let app = AppOptions::default().spawn().await;
    let alice = seed_user(&app, "alice", Role::Member).await;
    let room = seed_room(&app, alice.id, &[]).await;
    let mut ws = connect(&app, &alice.token).await;
    ws.join(room, Some(0)).await;
    let role = format!("{prefix}_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    admin_exec(&format!("CREATE ROLE {role} LOGIN{grants}")).await;
    let url = app
        .db
        .url
        .replacen("postgres://chatpool@", &format!("postgres://{role}@"), 1);
    let forger = sql_client(&url, prefix).await;
    Scene {
        app,
        alice,
        room,
        ws,
        role,
        forger,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_cannot_read_chatpools_tables_can_neither_forge_a_message_nor_revoke_a_token() {
    bounded(async {
        // A login role with no privilege on chatpool's tables.
        let Scene {
            app,
            alice,
            room,
            mut ws,
            role,
            forger: intruder,
        } = forgery_scene("intruder", "").await;
        assert!(
            intruder
                .query("SELECT key FROM notify_key", &[])
                .await
                .is_err(),
            "the key is readable by others"
        );
        let (forged_message, forged_revocation) = forgeries(room, &alice);
        let before = app.metric("chatpool_listener_forged_total").await;
        for payload in [
            forged_message.clone(),
            forged_revocation.clone(),
            format!("{}.{forged_message}", "0".repeat(64)),
            format!("{}.{forged_revocation}", "ab".repeat(32)),
        ] {
            intruder
                .execute("SELECT pg_notify('chatpool_events', $1)", &[&payload])
                .await
                .unwrap();
        }
        nothing_was_forged(&app, &mut ws, room, &alice, before, 4.0).await;
        drop(intruder);
        admin_exec(&format!("DROP ROLE {role}")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_can_read_the_key_but_not_write_chatpools_tables_still_cannot_forge() {
    bounded(async {
        // A role that reads every table, the key included, and writes none.
        let Scene {
            app,
            alice,
            room,
            mut ws,
            role,
            forger: reader,
        } = forgery_scene("reader", " IN ROLE pg_read_all_data").await;
        let keys = reader
            .query("SELECT key FROM notify_key", &[])
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "the reader cannot read the key after all");

        // Payloads signed with that key, as the reader can sign them.
        let (forged_message, forged_revocation) = forgeries(room, &alice);
        let before = app.metric("chatpool_listener_forged_total").await;
        for body in [&forged_message, &forged_revocation] {
            let payload = app.signed_notification(body);
            reader
                .execute("SELECT pg_notify('chatpool_events', $1)", &[&payload])
                .await
                .unwrap();
        }
        nothing_was_forged(&app, &mut ws, room, &alice, before, 2.0).await;
        drop(reader);
        admin_exec(&format!("DROP ROLE {role}")).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_whose_sender_is_gone_is_checked_against_the_tables() {
    bounded(async {
        let app = AppOptions::default().spawn().await;
        let alice = seed_user(&app, "alice", Role::Member).await;
        let room = seed_room(&app, alice.id, &[]).await;
        let mut ws = connect(&app, &alice.token).await;
        ws.join(room, Some(0)).await;
        let (ack, _) = ws.send_message(room, "real", "c1").await;
        assert_eq!(ack["message"]["seq"], 1);
        // A token that does not exist (any more): its revocation stands.
        let gone_token = alice.token_id + 1000;

        let inline = |seq: i64, body: &str| {
            json!({"t": "m", "room_id": room, "seq": seq, "message": {
                "id": 999, "room_id": room, "seq": seq,
                "author": {"id": alice.id, "username": "alice", "display_name": "alice"},
                "body": body, "client_id": null, "created_at": "2026-11-22T10:00:00.123Z"
            }})
        };
        let body = json!([
            inline(1, "forged"),
            inline(2, "never sent"),
            {"t": "r", "token_id": alice.token_id},
            {"t": "r", "token_id": gone_token},
            {"t": "u", "user_id": alice.id},
        ])
        .to_string();
        assert_eq!(
            app.events_from_an_unknown_sender(&body).await,
            [
                "message 1 real".to_owned(),
                format!("revoked {gone_token}"),
                format!("access {}", alice.id),
            ]
        );
    })
    .await;
}
