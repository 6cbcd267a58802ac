//! Access that shrinks under an open socket: a role change or a removal from
//! a room takes joined rooms away at once, on every instance, with `left`.

use std::time::Duration;

use chatpool::testkit::admin::admin_exec;
use chatpool::testkit::api::call;
use chatpool::testkit::seed::{seed_room, seed_user};
use chatpool::testkit::ws::{connect, WsClient};
use chatpool::testkit::{bounded, spawn_app, Role, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

use crate::instances::{listener_pid, two_instances, wait_until_gone};

/// How fast a socket must learn that a room was taken away.
const TAKEN_AWAY: Duration = Duration::from_secs(2);

/// `PATCH /api/admin/users/{id}` `{"role"}` as `admin_token`.
async fn patch_role(app: &TestApp, admin_token: &str, user_id: i64, role: &str) {
    call(
        app,
        Method::PATCH,
        &format!("/api/admin/users/{user_id}"),
        Some(admin_token),
        Some(json!({"role": role})),
    )
    .await
    .expect(200);
}

/// `DELETE /api/rooms/{room}/members/{user_id}` as `token`.
async fn remove_member(app: &TestApp, token: &str, room: i64, user_id: i64) {
    call(
        app,
        Method::DELETE,
        &format!("/api/rooms/{room}/members/{user_id}"),
        Some(token),
        None,
    )
    .await
    .expect(204);
}

/// The `left` frame for `room`, within [`TAKEN_AWAY`]; the frames before it
/// must not be messages of that room.
async fn expect_left(ws: &mut WsClient, room: i64) {
    let (left, before) = tokio::time::timeout(TAKEN_AWAY, ws.recv_until("left"))
        .await
        .expect("`left` arrives in time");
    assert_eq!(left, json!({"type": "left", "room_id": room}));
    assert!(before.iter().all(|f| f["type"] != "message"), "{before:?}");
}

/// The next `message` frame, within [`TAKEN_AWAY`].
async fn next_message(ws: &mut WsClient) -> Value {
    tokio::time::timeout(TAKEN_AWAY, ws.recv_until("message"))
        .await
        .expect("the message arrives in time")
        .0["message"]
        .clone()
}

/// A `join` that must be refused as `not_found`.
async fn join_refused(ws: &mut WsClient, room: i64) {
    ws.send_json(json!({"type": "join", "room_id": room, "ref": "j"}))
        .await;
    let error = ws.recv_json().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "not_found", "{error}");
    assert_eq!(error["ref"], "j");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_demoted_to_member_loses_the_rooms_they_do_not_belong_to_at_once() {
    bounded(async {
        let app = spawn_app().await;
        let admin = seed_user(&app, "admin", Role::Admin).await;
        let agent = seed_user(&app, "agent", Role::Agent).await;
        let owner = seed_user(&app, "owner", Role::Member).await;
        let foreign = seed_room(&app, owner.id, &[]).await;
        let own = seed_room(&app, owner.id, &[agent.id]).await;

        let mut agent_ws = connect(&app, &agent.token).await;
        agent_ws.join(foreign, None).await;
        agent_ws.join(own, None).await;
        let mut owner_ws = connect(&app, &owner.token).await;
        owner_ws.send_message(foreign, "before", "b1").await;
        assert_eq!(next_message(&mut agent_ws).await["body"], "before");

        patch_role(&app, &admin.token, agent.id, "member").await;
        expect_left(&mut agent_ws, foreign).await;

        // Sent after the demotion: the hub has published both before the
        // acks, so a ping answered afterwards shows what the socket got.
        owner_ws.send_message(foreign, "after", "a1").await;
        let (kept, _) = owner_ws.send_message(own, "still yours", "a2").await;
        assert_eq!(next_message(&mut agent_ws).await, kept["message"]);
        let rest = agent_ws.round_trip().await;
        assert!(rest.is_empty(), "nothing else reached the socket: {rest:?}");

        // The socket keeps working, under the new role.
        join_refused(&mut agent_ws, foreign).await;
        let (ack, before) = agent_ws.send_message(own, "ok", "a3").await;
        let own_copy = match before.into_iter().find(|f| f["type"] == "message") {
            Some(frame) => frame["message"].clone(),
            None => next_message(&mut agent_ws).await,
        };
        assert_eq!(own_copy, ack["message"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_removed_from_a_room_gets_left_and_keeps_their_other_rooms() {
    bounded(async {
        let app = spawn_app().await;
        let agent = seed_user(&app, "agent", Role::Agent).await;
        let owner = seed_user(&app, "owner", Role::Member).await;
        let bob = seed_user(&app, "bob", Role::Member).await;
        let removed_from = seed_room(&app, owner.id, &[bob.id]).await;
        let other = seed_room(&app, owner.id, &[bob.id]).await;

        let mut bob_ws = connect(&app, &bob.token).await;
        bob_ws.join(removed_from, None).await;
        bob_ws.join(other, None).await;
        let mut owner_ws = connect(&app, &owner.token).await;

        remove_member(&app, &agent.token, removed_from, bob.id).await;
        expect_left(&mut bob_ws, removed_from).await;

        owner_ws.send_message(removed_from, "gone", "g1").await;
        let (kept, _) = owner_ws.send_message(other, "here", "h1").await;
        assert_eq!(next_message(&mut bob_ws).await, kept["message"]);
        let rest = bob_ws.round_trip().await;
        assert!(rest.is_empty(), "nothing else reached the socket: {rest:?}");
        join_refused(&mut bob_ws, removed_from).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rooms_that_stay_visible_are_untouched() {
    bounded(async {
        let app = spawn_app().await;
        let admin = seed_user(&app, "admin", Role::Admin).await;
        let agent = seed_user(&app, "agent", Role::Agent).await;
        let owner = seed_user(&app, "owner", Role::Member).await;
        let room = seed_room(&app, owner.id, &[agent.id]).await;
        let mine = seed_room(&app, owner.id, &[agent.id]).await;

        let mut agent_ws = connect(&app, &agent.token).await;
        agent_ws.join(room, None).await;
        agent_ws.join(mine, None).await;
        let mut owner_ws = connect(&app, &owner.token).await;
        owner_ws.send_message(mine, "one", "c1").await;
        assert_eq!(next_message(&mut agent_ws).await["body"], "one");

        // An agent removed from a room still sees it.
        remove_member(&app, &admin.token, room, agent.id).await;
        let (ack, _) = owner_ws.send_message(room, "two", "c2").await;
        assert_eq!(next_message(&mut agent_ws).await, ack["message"]);
        let rest = agent_ws.round_trip().await;
        assert!(rest.is_empty(), "no left: {rest:?}");

        // Demoted, they lose that room but keep the one they belong to,
        // without a replay or a duplicate.
        patch_role(&app, &admin.token, agent.id, "member").await;
        expect_left(&mut agent_ws, room).await;
        let (ack, _) = owner_ws.send_message(mine, "three", "c3").await;
        assert_eq!(next_message(&mut agent_ws).await, ack["message"]);
        let rest = agent_ws.round_trip().await;
        assert!(rest.is_empty(), "no replay, no duplicate: {rest:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_change_or_removal_on_one_instance_takes_the_room_away_on_the_other() {
    bounded(async {
        let (a, b, _, role_b) = two_instances(10).await;
        // B's notifications start once it listens.
        listener_pid(&b.db.name, &role_b).await;
        let admin = seed_user(&a, "admin", Role::Admin).await;
        let agent = seed_user(&a, "agent", Role::Agent).await;
        let owner = seed_user(&a, "owner", Role::Member).await;
        let bob = seed_user(&a, "bob", Role::Member).await;
        let room = seed_room(&a, owner.id, &[bob.id]).await;

        // Sockets on B; a watcher on B shows when B's hub has published.
        let mut agent_ws = connect(&b, &agent.token).await;
        agent_ws.join(room, None).await;
        let mut bob_ws = connect(&b, &bob.token).await;
        bob_ws.join(room, None).await;
        let mut watcher = connect(&b, &owner.token).await;
        watcher.join(room, None).await;
        let mut owner_on_a = connect(&a, &owner.token).await;

        // The changes are made on A.
        patch_role(&a, &admin.token, agent.id, "member").await;
        expect_left(&mut agent_ws, room).await;
        remove_member(&a, &admin.token, room, bob.id).await;
        expect_left(&mut bob_ws, room).await;

        let (ack, _) = owner_on_a.send_message(room, "after", "x1").await;
        assert_eq!(next_message(&mut watcher).await, ack["message"]);
        for ws in [&mut agent_ws, &mut bob_ws] {
            let rest = ws.round_trip().await;
            assert!(rest.is_empty(), "nothing reached the socket: {rest:?}");
            join_refused(ws, room).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_made_while_an_instance_is_not_listening_applies_once_it_listens_again() {
    bounded(async {
        let (a, b, _, role_b) = two_instances(10).await;
        let admin = seed_user(&a, "admin", Role::Admin).await;
        let agent = seed_user(&a, "agent", Role::Agent).await;
        let owner = seed_user(&a, "owner", Role::Member).await;
        let room = seed_room(&a, owner.id, &[]).await;
        let mut agent_ws = connect(&b, &agent.token).await;
        agent_ws.join(room, None).await;

        // B loses its listener and cannot log in again while A demotes.
        let first_pid = listener_pid(&b.db.name, &role_b).await;
        admin_exec(&format!("ALTER ROLE {role_b} NOLOGIN")).await;
        admin_exec(&format!("SELECT pg_terminate_backend({first_pid})")).await;
        wait_until_gone(first_pid).await;
        patch_role(&a, &admin.token, agent.id, "member").await;

        admin_exec(&format!("ALTER ROLE {role_b} LOGIN")).await;
        let (left, before) =
            tokio::time::timeout(Duration::from_secs(10), agent_ws.recv_until("left"))
                .await
                .expect("`left` once B listens again");
        assert_eq!(left, json!({"type": "left", "room_id": room}));
        assert!(before.is_empty(), "{before:?}");
        join_refused(&mut agent_ws, room).await;
    })
    .await;
}
