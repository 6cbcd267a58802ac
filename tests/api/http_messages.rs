//! Issue 3: sending over HTTP, history paging, and requests rejected at the edge.

use chatpool::testkit::api::{
    collect, create_room, history, id_of, post, post_message, register, seqs, user_with_role,
};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::{bounded, spawn_app, Role};
use futures_util::future::join_all;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_stored_and_returned_as_201_in_the_spec_shape() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[]).await);
        let m = post_message(&app, &alice.token, room, " hello\n", None)
            .await
            .expect(201);
        assert_eq!(m["room_id"], room);
        assert_eq!(m["seq"], 1);
        assert_eq!(m["body"], " hello\n");
        assert_eq!(m["client_id"], serde_json::Value::Null);
        assert_eq!(
            m["author"],
            json!({"id": alice.id(), "username": "alice", "display_name": "alice"})
        );
        assert!(m["created_at"].as_str().unwrap().ends_with('Z'));
        let page = history(&app, &alice.token, room, "").await.expect(200);
        assert_eq!(page["messages"], json!([m]));
        assert_eq!(page["has_more"], false);
        assert_eq!(page["last_seq"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_messages_are_400_and_store_nothing() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[]).await);
        let path = format!("/api/rooms/{room}/messages");
        for body in [
            json!({"body": ""}),
            json!({"body": " \n\t"}),
            json!({"body": "x".repeat(4001)}),
            json!({"body": "hi", "client_id": ""}),
            json!({"body": "hi", "client_id": "c".repeat(65)}),
            json!({"body": "hi", "client_id": 7}),
            json!({"body": 7}),
            json!({"client_id": "c1"}),
        ] {
            post(&app, &path, &alice.token, body)
                .await
                .expect_error(400, "bad_request");
        }
        // 4000 characters (not bytes) is fine.
        post_message(
            &app,
            &alice.token,
            room,
            &"ü".repeat(4000),
            Some(&"c".repeat(64)),
        )
        .await
        .expect(201);
        let page = history(&app, &alice.token, room, "").await.expect(200);
        assert_eq!(seqs(&page), [1]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_client_id_returns_the_original_and_stores_one_row_per_author() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[bob.id()]).await);

        let first = post_message(&app, &alice.token, room, "once", Some("k1"))
            .await
            .expect(201);
        let again = post_message(&app, &alice.token, room, "once (retry)", Some("k1"))
            .await
            .expect(200);
        assert_eq!(again, first);
        // The same key from another author is another message.
        let bobs = post_message(&app, &bob.token, room, "mine", Some("k1"))
            .await
            .expect(201);
        assert_ne!(id_of(&bobs), id_of(&first));
        assert_eq!(bobs["seq"], 2);

        let db = sql_client(&app.db.url, "chatpool-tests").await;
        let n: i64 = db
            .query_one("SELECT count(*) FROM messages WHERE client_id = 'k1'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        let page = history(&app, &alice.token, room, "").await.expect(200);
        assert_eq!(seqs(&page), [1, 2]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_senders_get_gapless_seqs_each_readable_after_its_201() {
    bounded(async {
        let app = spawn_app().await;
        let owner = register(&app, "owner").await;
        let senders = join_all((0..20).map(|i| register(&app, format!("sender{i:02}")))).await;
        let ids: Vec<i64> = senders.iter().map(|s| s.id()).collect();
        let room = id_of(&create_room(&app, &owner.token, "busy", &ids).await);
        const PER_SENDER: usize = 5;

        let sent = join_all(senders.iter().map(|s| {
            let app = &app;
            async move {
                let mut mine = Vec::new();
                for n in 0..PER_SENDER {
                    let m = post_message(
                        app,
                        &s.token,
                        room,
                        &format!("m{n}"),
                        Some(&format!("c{n}")),
                    )
                    .await
                    .expect(201);
                    let seq = m["seq"].as_i64().unwrap();
                    // Readable right away, by seq.
                    let page = history(
                        app,
                        &s.token,
                        room,
                        &format!("after_seq={}&limit=1", seq - 1),
                    )
                    .await
                    .expect(200);
                    assert_eq!(
                        page["messages"][0], m,
                        "message {seq} not readable after its 201"
                    );
                    mine.push(seq);
                }
                mine
            }
        }))
        .await;

        let total = (senders.len() * PER_SENDER) as i64;
        let mut all: Vec<i64> = sent.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (1..=total).collect::<Vec<_>>());
        let page = history(&app, &owner.token, room, "limit=200")
            .await
            .expect(200);
        assert_eq!(seqs(&page), (1..=total).collect::<Vec<_>>());
        assert_eq!(page["last_seq"], total);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_by_seq_in_both_directions_with_has_more() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let agent = user_with_role(&app, "agent1", Role::Agent).await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[]).await);
        for i in 1..=120 {
            post_message(&app, &alice.token, room, &format!("m{i}"), None)
                .await
                .expect(201);
        }
        let page = |q: &'static str| {
            let (app, token) = (&app, alice.token.clone());
            async move { history(app, &token, room, q).await.expect(200) }
        };
        let range = |a: i64, b: i64| (a..=b).collect::<Vec<i64>>();

        // No cursor: the latest 50, older ones exist.
        let latest = page("").await;
        assert_eq!(seqs(&latest), range(71, 120));
        assert_eq!(latest["has_more"], true);
        assert_eq!(latest["last_seq"], 120);
        let latest = page("limit=200").await;
        assert_eq!(seqs(&latest), range(1, 120));
        assert_eq!(latest["has_more"], false);

        // before_seq pages older.
        let older = page("before_seq=71").await;
        assert_eq!(seqs(&older), range(21, 70));
        assert_eq!(older["has_more"], true);
        let oldest = page("before_seq=21").await;
        assert_eq!(seqs(&oldest), range(1, 20));
        assert_eq!(oldest["has_more"], false);
        let nothing = page("before_seq=1").await;
        assert_eq!(seqs(&nothing), range(1, 0));
        assert_eq!(nothing["has_more"], false);

        // after_seq pages newer.
        let first = page("after_seq=0").await;
        assert_eq!(seqs(&first), range(1, 50));
        assert_eq!(first["has_more"], true);
        let last = page("after_seq=100&limit=20").await;
        assert_eq!(seqs(&last), range(101, 120));
        assert_eq!(last["has_more"], false);
        let past = page("after_seq=120").await;
        assert_eq!(seqs(&past), range(1, 0));
        assert_eq!(past["has_more"], false);
        assert_eq!(past["last_seq"], 120);
        let one = page("after_seq=119&limit=1").await;
        assert_eq!(seqs(&one), [120]);
        assert_eq!(one["has_more"], false);
        let one = page("after_seq=118&limit=1").await;
        assert_eq!(one["has_more"], true);

        // Staff read any room.
        let staff = history(&app, &agent.token, room, "limit=1")
            .await
            .expect(200);
        assert_eq!(seqs(&staff), [120]);

        for bad in [
            "limit=0",
            "limit=201",
            "limit=-1",
            "limit=abc",
            "limit=",
            "after_seq=-1",
            "before_seq=-5",
            "after_seq=abc",
            "before_seq=1.5",
            "after_seq=99999999999999999999",
            "after_seq=1&before_seq=5",
        ] {
            history(&app, &alice.token, room, bad)
                .await
                .expect_error(400, "bad_request");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_spec_errors_never_500() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[]).await);
        let url = app.url(&format!("/api/rooms/{room}/messages"));
        let send = |body: Vec<u8>, content_type: Option<&'static str>| {
            let mut request = app.http.post(&url).bearer_auth(&alice.token).body(body);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            async move { collect(request.send().await.unwrap()).await }
        };
        let json_ct = Some("application/json");
        // Malformed JSON, truncated JSON, wrong content type, no content type.
        send(b"{\"body\": ".to_vec(), json_ct)
            .await
            .expect_error(400, "bad_request");
        send(b"not json".to_vec(), json_ct)
            .await
            .expect_error(400, "bad_request");
        send(b"{\"body\":\"hi\"}".to_vec(), Some("text/plain"))
            .await
            .expect_error(400, "bad_request");
        send(b"{\"body\":\"hi\"}".to_vec(), None)
            .await
            .expect_error(400, "bad_request");
        send(Vec::new(), json_ct)
            .await
            .expect_error(400, "bad_request");
        // Over 64 KiB.
        let big = serde_json::to_vec(&json!({"body": "x".repeat(70 * 1024)})).unwrap();
        send(big, json_ct).await.expect_error(413, "too_large");
        // A body just under the limit but with an invalid message is a 400, not 413.
        let under = serde_json::to_vec(&json!({"body": "x".repeat(60 * 1024)})).unwrap();
        send(under, json_ct).await.expect_error(400, "bad_request");
        // Unknown routes.
        let reply = collect(app.http.get(app.url("/api/nope")).send().await.unwrap()).await;
        reply.expect_error(404, "not_found");
        // Still fine afterwards.
        post_message(&app, &alice.token, room, "ok", None)
            .await
            .expect(201);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_of_an_empty_room_is_an_empty_page_and_of_an_invisible_one_404() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let agent = user_with_role(&app, "agent1", Role::Agent).await;
        let room = id_of(&create_room(&app, &alice.token, "quiet", &[]).await);

        let page = history(&app, &alice.token, room, "").await.expect(200);
        assert_eq!(
            page,
            json!({"messages": [], "has_more": false, "last_seq": 0})
        );
        // Agents see every room without being members; others get 404.
        let page = history(&app, &agent.token, room, "?after_seq=0")
            .await
            .expect(200);
        assert_eq!(page["last_seq"], 0);
        history(&app, &bob.token, room, "")
            .await
            .expect_error(404, "not_found");
        history(&app, &alice.token, room + 1000, "")
            .await
            .expect_error(404, "not_found");
    })
    .await;
}
