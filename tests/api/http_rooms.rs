//! Issue 3: rooms and members.

use chatpool::testkit::api::{call, create_room, get, id_of, post, register, user_with_role};
use chatpool::testkit::{bounded, spawn_app, Role};
use reqwest::Method;
use serde_json::{json, Value};

fn room_ids(body: &Value) -> Vec<i64> {
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_a_room_makes_the_creator_and_member_ids_members() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let carol = register(&app, "carol").await;

        let room = create_room(&app, &alice.token, "  Support  ", &[bob.id(), bob.id()]).await;
        assert_eq!(room["name"], "Support");
        assert_eq!(room["created_by"], alice.id());
        assert_eq!(room["member_count"], 2);
        assert_eq!(room["last_seq"], 0);
        assert!(room["created_at"].as_str().unwrap().ends_with('Z'));

        let id = id_of(&room);
        assert_eq!(
            get(&app, &format!("/api/rooms/{id}"), &bob.token)
                .await
                .expect(200),
            room
        );
        get(&app, &format!("/api/rooms/{id}"), &carol.token)
            .await
            .expect_error(404, "not_found");

        // Without member_ids, only the creator.
        let solo = create_room(&app, &carol.token, "solo", &[]).await;
        assert_eq!(solo["member_count"], 1);
        let solo = post(&app, "/api/rooms", &carol.token, json!({"name": "solo2"}))
            .await
            .expect(201);
        assert_eq!(solo["member_count"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_a_room_rejects_bad_names_and_unknown_member_ids_with_400() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        for body in [
            json!({"name": ""}),
            json!({"name": "   "}),
            json!({"name": "n".repeat(101)}),
            json!({"name": 5}),
            json!({}),
            json!({"name": "ok", "member_ids": [999_999]}),
            json!({"name": "ok", "member_ids": ["1"]}),
            json!({"name": "ok", "member_ids": 1}),
        ] {
            post(&app, "/api/rooms", &alice.token, body)
                .await
                .expect_error(400, "bad_request");
        }
        let rooms = get(&app, "/api/rooms", &alice.token).await.expect(200);
        assert!(room_ids(&rooms).is_empty(), "a rejected room was created");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_rooms_shows_members_their_rooms_and_staff_every_room() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let agent = user_with_role(&app, "agent1", Role::Agent).await;
        let admin = user_with_role(&app, "admin1", Role::Admin).await;
        let a = id_of(&create_room(&app, &alice.token, "a", &[]).await);
        let b = id_of(&create_room(&app, &bob.token, "b", &[alice.id()]).await);
        let c = id_of(&create_room(&app, &bob.token, "c", &[]).await);

        let mine = get(&app, "/api/rooms", &alice.token).await.expect(200);
        assert_eq!(room_ids(&mine), [a, b]);
        let mine = get(&app, "/api/rooms?scope=mine", &bob.token)
            .await
            .expect(200);
        assert_eq!(room_ids(&mine), [b, c]);
        get(&app, "/api/rooms?scope=all", &alice.token)
            .await
            .expect_error(403, "forbidden");
        get(&app, "/api/rooms?scope=everything", &alice.token)
            .await
            .expect_error(400, "bad_request");
        for staff in [&agent, &admin] {
            let all = get(&app, "/api/rooms?scope=all", &staff.token)
                .await
                .expect(200);
            assert_eq!(room_ids(&all), [a, b, c]);
            // Staff are members of nothing by default.
            let theirs = get(&app, "/api/rooms", &staff.token).await.expect(200);
            assert!(room_ids(&theirs).is_empty());
            get(&app, &format!("/api/rooms/{c}"), &staff.token)
                .await
                .expect(200);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn members_add_anyone_leave_themselves_and_only_staff_remove_others() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let carol = register(&app, "carol").await;
        let agent = user_with_role(&app, "agent1", Role::Agent).await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[]).await);
        let members = format!("/api/rooms/{room}/members");
        let delete = |token: String, user: i64| {
            let app = &app;
            async move {
                call(
                    app,
                    Method::DELETE,
                    &format!("/api/rooms/{room}/members/{user}"),
                    Some(&token),
                    None,
                )
                .await
            }
        };

        // A member adds anyone; adding twice is fine; the new member sees the room.
        for _ in 0..2 {
            let reply = post(&app, &members, &alice.token, json!({"user_id": bob.id()})).await;
            assert_eq!(reply.status, 204, "{}", reply.text);
        }
        let r = get(&app, &format!("/api/rooms/{room}"), &bob.token)
            .await
            .expect(200);
        assert_eq!(r["member_count"], 2);
        post(&app, &members, &alice.token, json!({"user_id": 999_999}))
            .await
            .expect_error(404, "not_found");
        post(&app, &members, &alice.token, json!({"user_id": "2"}))
            .await
            .expect_error(400, "bad_request");
        post(&app, &members, &alice.token, json!({}))
            .await
            .expect_error(400, "bad_request");
        // A non-member can neither add nor remove.
        post(&app, &members, &carol.token, json!({"user_id": carol.id()}))
            .await
            .expect_error(404, "not_found");
        delete(carol.token.clone(), bob.id())
            .await
            .expect_error(404, "not_found");

        // A member may not remove someone else...
        delete(bob.token.clone(), alice.id())
            .await
            .expect_error(403, "forbidden");
        // ...but may leave, after which the room is gone for them.
        assert_eq!(delete(bob.token.clone(), bob.id()).await.status, 204);
        get(&app, &format!("/api/rooms/{room}"), &bob.token)
            .await
            .expect_error(404, "not_found");

        // Staff remove anyone; removing a non-member is a no-op; an unknown user is 404.
        post(&app, &members, &agent.token, json!({"user_id": carol.id()}))
            .await
            .expect(204);
        assert_eq!(delete(agent.token.clone(), carol.id()).await.status, 204);
        assert_eq!(delete(agent.token.clone(), carol.id()).await.status, 204);
        delete(agent.token.clone(), 999_999)
            .await
            .expect_error(404, "not_found");
        let r = get(&app, &format!("/api/rooms/{room}"), &alice.token)
            .await
            .expect(200);
        assert_eq!(r["member_count"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn path_ids_that_are_not_i64_are_400_and_unknown_ones_404() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[]).await);
        for id in ["99999999999999999999", "abc", "1.5", "%20"] {
            get(&app, &format!("/api/rooms/{id}"), &alice.token)
                .await
                .expect_error(400, "bad_request");
            get(&app, &format!("/api/rooms/{id}/messages"), &alice.token)
                .await
                .expect_error(400, "bad_request");
            call(
                &app,
                Method::DELETE,
                &format!("/api/rooms/{room}/members/{id}"),
                Some(&alice.token),
                None,
            )
            .await
            .expect_error(400, "bad_request");
        }
        for id in ["-1", "0", "424242", "9223372036854775807"] {
            get(&app, &format!("/api/rooms/{id}"), &alice.token)
                .await
                .expect_error(404, "not_found");
        }
        // Anonymous callers learn nothing, not even that the id is malformed.
        call(&app, Method::GET, "/api/rooms/abc", None, None)
            .await
            .expect_error(401, "unauthorized");
    })
    .await;
}
