//! Issue 13 (SPEC §5): read markers and unread counts, edits and deletes,
//! search.

use chatpool::testkit::api::{
    call, create_room, get, history, id_of, post, post_message, register, user_with_role, Session,
};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::probe::search_sql;
use chatpool::testkit::seed::bulk_messages_sql;
use chatpool::testkit::ws::connect;
use chatpool::testkit::{bounded, spawn_app, Role, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// The caller's view of `room` in `GET /api/rooms` (`query`: `?scope=all` or "").
async fn listed(app: &TestApp, token: &str, room: i64, query: &str) -> Value {
    let body = get(app, &format!("/api/rooms{query}"), token)
        .await
        .expect(200);
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| id_of(r) == room)
        .cloned()
        .unwrap_or_else(|| panic!("room {room} not listed: {body}"))
}

/// `(last_read_seq, unread)` of `room` for `token`, from the list and from
/// `GET /api/rooms/{id}` (which must agree).
async fn marker(app: &TestApp, token: &str, room: i64) -> (i64, i64) {
    let one = get(app, &format!("/api/rooms/{room}"), token)
        .await
        .expect(200);
    let pair = (
        one["last_read_seq"].as_i64().unwrap(),
        one["unread"].as_i64().unwrap(),
    );
    assert_eq!(
        pair.1,
        one["last_seq"].as_i64().unwrap() - pair.0,
        "unread = last_seq - last_read_seq: {one}"
    );
    let listed = listed(app, token, room, "").await;
    assert_eq!(listed, one, "the list and the room agree");
    pair
}

async fn read(app: &TestApp, token: &str, room: i64, seq: i64) -> Value {
    post(
        app,
        &format!("/api/rooms/{room}/read"),
        token,
        json!({"seq": seq}),
    )
    .await
    .expect(200)
}

async fn send(app: &TestApp, who: &Session, room: i64, body: &str) -> Value {
    post_message(app, &who.token, room, body, None)
        .await
        .expect(201)
}

async fn edit(
    app: &TestApp,
    token: &str,
    room: i64,
    seq: i64,
    body: Value,
) -> chatpool::testkit::api::Reply {
    call(
        app,
        Method::PATCH,
        &format!("/api/rooms/{room}/messages/{seq}"),
        Some(token),
        Some(body),
    )
    .await
}

async fn delete(app: &TestApp, token: &str, room: i64, seq: i64) -> chatpool::testkit::api::Reply {
    call(
        app,
        Method::DELETE,
        &format!("/api/rooms/{room}/messages/{seq}"),
        Some(token),
        None,
    )
    .await
}

/// A fresh app; alice's room with bob in it; an agent who is in no room.
async fn alice_bob_and_an_agent() -> (TestApp, Session, Session, Session, i64) {
    let app = spawn_app().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let agent = user_with_role(&app, "agent", Role::Agent).await;
    let room = id_of(&create_room(&app, &alice.token, "r", &[bob.id()]).await);
    (app, alice, bob, agent, room)
}

#[tokio::test(flavor = "multi_thread")]
async fn unread_counts_follow_sends_reads_and_deletes_and_markers_never_go_back_or_past_last_seq() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[bob.id()]).await);
        assert_eq!(marker(&app, &bob.token, room).await, (0, 0));

        for i in 1..=3 {
            send(&app, &alice, room, &format!("m{i}")).await;
        }
        assert_eq!(
            marker(&app, &alice.token, room).await,
            (3, 0),
            "sending moves the sender's marker"
        );
        assert_eq!(marker(&app, &bob.token, room).await, (0, 3));

        assert_eq!(
            read(&app, &bob.token, room, 2).await,
            json!({"room_id": room, "last_read_seq": 2})
        );
        assert_eq!(marker(&app, &bob.token, room).await, (2, 1));
        assert_eq!(
            read(&app, &bob.token, room, 1).await["last_read_seq"],
            2,
            "never backwards"
        );
        assert_eq!(
            read(&app, &bob.token, room, 99).await["last_read_seq"],
            3,
            "never past last_seq"
        );
        assert_eq!(marker(&app, &bob.token, room).await, (3, 0));

        // A send by bob moves his marker to his seq; alice's stays.
        send(&app, &alice, room, "m4").await;
        send(&app, &bob, room, "m5").await;
        assert_eq!(marker(&app, &bob.token, room).await, (5, 0));
        assert_eq!(marker(&app, &alice.token, room).await, (4, 1));
        // A delete leaves a tombstone: seqs, and so unread counts, stay.
        send(&app, &bob, room, "m6").await;
        delete(&app, &bob.token, room, 6).await.expect(204);
        assert_eq!(marker(&app, &alice.token, room).await, (4, 2));

        // An agent reading every room has markers of their own.
        let agent = user_with_role(&app, "agent", Role::Agent).await;
        let all = listed(&app, &agent.token, room, "?scope=all").await;
        assert_eq!(
            (all["last_read_seq"].clone(), all["unread"].clone()),
            (json!(0), json!(6))
        );
        read(&app, &agent.token, room, 6).await;
        assert_eq!(
            listed(&app, &agent.token, room, "?scope=all").await["unread"],
            0
        );

        // Bad and invisible.
        let outsider = register(&app, "carol").await;
        post(
            &app,
            &format!("/api/rooms/{room}/read"),
            &outsider.token,
            json!({"seq": 1}),
        )
        .await
        .expect_error(404, "not_found");
        for body in [json!({"seq": -1}), json!({}), json!({"seq": "2"})] {
            post(&app, &format!("/api/rooms/{room}/read"), &bob.token, body)
                .await
                .expect_error(400, "bad_request");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_reaches_the_room_and_the_readers_other_sockets_once_and_the_reader_as_its_reply() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[bob.id()]).await);
        for i in 1..=3 {
            send(&app, &alice, room, &format!("m{i}")).await;
        }
        let mut alice_ws = connect(&app, &alice.token).await;
        alice_ws.join(room, None).await;
        let mut bob_joined = connect(&app, &bob.token).await;
        bob_joined.join(room, None).await;
        let mut bob_phone = connect(&app, &bob.token).await; // not joined

        bob_joined
            .send_json(json!({"type": "read", "room_id": room, "seq": 2, "ref": "r1"}))
            .await;
        let reply = bob_joined.recv_json().await;
        assert_eq!(
            reply,
            json!({"type": "read", "room_id": room, "user": {"id": bob.id(), "username": "bob"},
                   "last_read_seq": 2, "ref": "r1"})
        );
        let receipt = json!({"type": "read", "room_id": room,
                             "user": {"id": bob.id(), "username": "bob"}, "last_read_seq": 2});
        assert_eq!(alice_ws.recv_until("read").await.0, receipt);
        assert_eq!(bob_phone.recv_until("read").await.0, receipt);
        assert!(
            bob_joined.round_trip().await.is_empty(),
            "the reader got it once, as its reply"
        );

        // Over HTTP: a socket both joined and the reader's gets it once.
        read(&app, &bob.token, room, 3).await;
        let receipt = json!({"type": "read", "room_id": room,
                             "user": {"id": bob.id(), "username": "bob"}, "last_read_seq": 3});
        assert_eq!(bob_joined.recv_until("read").await.0, receipt);
        assert_eq!(bob_phone.recv_until("read").await.0, receipt);
        assert_eq!(alice_ws.recv_until("read").await.0, receipt);
        for ws in [&mut bob_joined, &mut bob_phone, &mut alice_ws] {
            assert!(ws.round_trip().await.is_empty(), "once per socket");
        }

        // A read that moves nothing is answered and announced to nobody.
        bob_phone
            .send_json(json!({"type": "read", "room_id": room, "seq": 1}))
            .await;
        assert_eq!(bob_phone.recv_json().await["last_read_seq"], 3);
        assert!(alice_ws.round_trip().await.is_empty());
        assert!(bob_joined.round_trip().await.is_empty());

        // Errors keep the socket open.
        bob_phone
            .send_json(json!({"type": "read", "room_id": room + 100, "seq": 1, "ref": "x"}))
            .await;
        let error = bob_phone.recv_json().await;
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some("not_found"))
        );
        assert_eq!(error["ref"], "x");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_author_edits_and_joined_sockets_get_message_updated_others_get_403_and_deleted_409() {
    bounded(async {
        let (app, alice, bob, agent, room) = alice_bob_and_an_agent().await;
        let original = send(&app, &alice, room, "helo").await;
        assert_eq!(
            (
                original["edited_at"].clone(),
                original["deleted_at"].clone()
            ),
            (Value::Null, Value::Null)
        );
        let mut bob_ws = connect(&app, &bob.token).await;
        bob_ws.join(room, None).await;

        let edited = edit(&app, &alice.token, room, 1, json!({"body": "hello"}))
            .await
            .expect(200);
        assert_eq!(edited["body"], "hello");
        assert_eq!(
            (edited["id"].clone(), edited["seq"].clone()),
            (original["id"].clone(), json!(1))
        );
        assert_eq!(edited["created_at"], original["created_at"]);
        assert!(edited["edited_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            bob_ws.recv_json().await,
            json!({"type": "message_updated", "message": edited})
        );
        let page = history(&app, &bob.token, room, "").await.expect(200);
        assert_eq!(page["messages"][0], edited);

        // 404 before 403 before 409.
        edit(&app, &bob.token, room, 1, json!({"body": "mine now"}))
            .await
            .expect_error(403, "forbidden");
        edit(&app, &agent.token, room, 1, json!({"body": "staff"}))
            .await
            .expect_error(403, "forbidden");
        edit(&app, &alice.token, room, 2, json!({"body": "x"}))
            .await
            .expect_error(404, "not_found");
        let outsider = register(&app, "carol").await;
        edit(&app, &outsider.token, room, 1, json!({"body": "x"}))
            .await
            .expect_error(404, "not_found");
        edit(&app, &alice.token, room, 1, json!({"body": "  "}))
            .await
            .expect_error(400, "bad_request");
        delete(&app, &alice.token, room, 1).await.expect(204);
        edit(&app, &bob.token, room, 1, json!({"body": "x"}))
            .await
            .expect_error(403, "forbidden");
        edit(&app, &alice.token, room, 1, json!({"body": "back"}))
            .await
            .expect_error(409, "conflict");
        assert!(bob_ws.recv_until("message_updated").await.0["message"]["deleted_at"].is_string());
        assert!(
            bob_ws.round_trip().await.is_empty(),
            "failed edits announce nothing"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_leaves_a_tombstone_erases_the_text_and_repeats_as_204() {
    bounded(async {
        let (app, alice, bob, agent, room) = alice_bob_and_an_agent().await;
        let first = post_message(&app, &alice.token, room, "my password is hunter2", Some("c-1"))
            .await
            .expect(201);
        send(&app, &bob, room, "second").await;
        let mut alice_ws = connect(&app, &alice.token).await;
        alice_ws.join(room, None).await;

        delete(&app, &bob.token, room, 1).await.expect_error(403, "forbidden");
        delete(&app, &bob.token, room, 9).await.expect_error(404, "not_found");
        delete(&app, &alice.token, room, 1).await.expect(204);
        let update = alice_ws.recv_until("message_updated").await.0["message"].clone();
        assert_eq!(update["body"], "");
        assert_eq!((update["id"].clone(), update["seq"].clone()), (first["id"].clone(), json!(1)));
        assert_eq!(update["author"], first["author"]);
        assert_eq!(update["created_at"], first["created_at"]);
        assert!(update["deleted_at"].as_str().unwrap().ends_with('Z'));
        delete(&app, &alice.token, room, 1).await.expect(204);
        assert!(alice_ws.round_trip().await.is_empty(), "deleting again announces nothing");
        // Agents and admins may delete anyone's message.
        delete(&app, &agent.token, room, 2).await.expect(204);

        let page = history(&app, &bob.token, room, "").await.expect(200);
        let seqs: Vec<i64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, [1, 2], "tombstones keep seqs gapless");
        assert_eq!(page["messages"][0], update);
        assert!(page["messages"].as_array().unwrap().iter().all(|m| m["body"] == ""));
        // A join replay shows the tombstone too.
        let mut bob_ws = connect(&app, &bob.token).await;
        bob_ws.join(room, Some(0)).await;
        assert_eq!(bob_ws.recv_json().await["message"], update);
        // Retrying the send answers with the tombstone, storing nothing.
        let retried = post_message(&app, &alice.token, room, "my password is hunter2", Some("c-1"))
            .await
            .expect(200);
        assert_eq!(retried, update);

        // The text is gone from the table, not hidden.
        let client = sql_client(&app.db.url, "chatpool-tests").await;
        let leftover: i64 = client
            .query_one(
                "SELECT count(*) FROM messages WHERE body LIKE '%hunter2%' OR (deleted_at IS NOT NULL AND body <> '')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(leftover, 0);
    })
    .await;
}

fn bodies(reply: &Value) -> Vec<String> {
    reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect()
}

async fn search(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let url = format!("/api/search?{}", serde_urlencoded_pair(query));
    bodies(&get(app, &url, token).await.expect(200))
}

fn serde_urlencoded_pair(query: &str) -> String {
    let mut out = String::new();
    for (i, part) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (k, v) = part.split_once('=').unwrap();
        out.push_str(k);
        out.push('=');
        out.push_str(&urlencoding(v));
    }
    out
}

fn urlencoding(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_finds_accented_words_phrases_and_exclusions_in_readable_rooms_only() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let carol = register(&app, "carol").await;
        let agent = user_with_role(&app, "agent", Role::Agent).await;
        let mine = id_of(&create_room(&app, &alice.token, "mine", &[]).await);
        let theirs = id_of(&create_room(&app, &carol.token, "theirs", &[]).await);
        send(&app, &alice, mine, "La reunión de mañana será en el café").await;
        send(&app, &alice, mine, "Pizza para todos después de la reunión").await;
        send(&app, &alice, mine, "café café café, siempre café").await;
        send(&app, &carol, theirs, "Otra reunión, en otra sala").await;

        // Accents: found by the accented word and by the plain one.
        let spanish = "La reunión de mañana será en el café";
        assert!(search(&app, &alice.token, "q=mañana")
            .await
            .contains(&spanish.to_owned()));
        assert_eq!(search(&app, &alice.token, "q=manana").await, [spanish]);
        assert_eq!(
            search(&app, &alice.token, "q=CAFÉ mañana").await,
            [spanish],
            "every word required"
        );
        // Best match first.
        assert_eq!(
            search(&app, &alice.token, "q=café").await[0],
            "café café café, siempre café"
        );
        // Phrases, exclusions, or.
        assert_eq!(
            search(&app, &alice.token, "q=\"reunión de mañana\"").await,
            [spanish]
        );
        assert!(search(&app, &alice.token, "q=\"mañana reunión\"")
            .await
            .is_empty());
        assert_eq!(
            search(&app, &alice.token, "q=reunión -café").await,
            ["Pizza para todos después de la reunión"]
        );
        let either = search(&app, &alice.token, "q=pizza or siempre").await;
        assert_eq!(either.len(), 2, "{either:?}");

        // Permissions: a member sees their rooms; an agent every room.
        assert_eq!(search(&app, &alice.token, "q=reunión").await.len(), 2);
        assert_eq!(
            search(&app, &carol.token, "q=reunión").await,
            ["Otra reunión, en otra sala"]
        );
        assert_eq!(search(&app, &agent.token, "q=reunión").await.len(), 3);
        assert_eq!(
            search(&app, &agent.token, &format!("q=reunión&room_id={theirs}")).await,
            ["Otra reunión, en otra sala"]
        );
        assert!(
            search(&app, &alice.token, &format!("q=reunión&room_id={theirs}"))
                .await
                .is_empty()
        );
        assert_eq!(
            search(&app, &agent.token, "q=reunión&limit=1").await.len(),
            1
        );

        // Edited messages match their new text; deleted ones never match.
        edit(
            &app,
            &alice.token,
            mine,
            2,
            json!({"body": "Helado para todos"}),
        )
        .await
        .expect(200);
        assert!(search(&app, &alice.token, "q=pizza").await.is_empty());
        assert_eq!(
            search(&app, &alice.token, "q=helado").await,
            ["Helado para todos"]
        );
        delete(&app, &alice.token, mine, 1).await.expect(204);
        assert!(search(&app, &alice.token, "q=mañana").await.is_empty());
        assert!(!search(&app, &agent.token, "q=reunión")
            .await
            .contains(&spanish.to_owned()));

        // The result objects are message objects.
        let hit = get(&app, "/api/search?q=helado", &alice.token)
            .await
            .expect(200);
        assert_eq!(hit["messages"][0]["seq"], 2);
        assert_eq!(hit["messages"][0]["author"]["username"], "alice");
        assert!(hit["messages"][0]["edited_at"].is_string());

        for bad in [
            "/api/search".to_owned(),
            "/api/search?q=".to_owned(),
            "/api/search?q=%20%20".to_owned(),
            format!("/api/search?q={}", "a".repeat(201)),
            "/api/search?q=x&limit=0".to_owned(),
            "/api/search?q=x&limit=101".to_owned(),
            "/api/search?q=x&room_id=abc".to_owned(),
        ] {
            get(&app, &bad, &alice.token)
                .await
                .expect_error(400, "bad_request");
        }
        // Punctuation only is a valid query that matches nothing.
        assert!(search(&app, &alice.token, "q=!!!").await.is_empty());
        get(
            &app,
            &format!("/api/search?q={}", "a".repeat(200)),
            &alice.token,
        )
        .await
        .expect(200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conversation_migrations_upgrade_a_database_already_holding_messages() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let room = id_of(&create_room(&app, &alice.token, "r", &[bob.id()]).await);
        for body in ["uno", "dos", "tres"] {
            send(&app, &alice, room, body).await;
        }
        let before = history(&app, &bob.token, room, "").await.expect(200);
        delete(&app, &alice.token, room, 3).await.expect(204);

        // Down, with a tombstone present: the old schema gets a placeholder.
        let reverted = app.revert_latest_migrations(2).await.unwrap();
        assert_eq!(reverted.len(), 2, "{reverted:?}");
        assert!(!app.table_exists("public.read_markers").await);
        let client = sql_client(&app.db.url, "chatpool-tests").await;
        let bodies: Vec<String> = client
            .query("SELECT body FROM messages ORDER BY seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(bodies, ["uno", "dos", "(deleted)"]);

        // Up again, on a database holding messages.
        let applied = app.run_pending_migrations().await.unwrap();
        assert_eq!(applied.len(), 2, "{applied:?}");
        let after = history(&app, &bob.token, room, "").await.expect(200);
        assert_eq!(after["messages"][0], before["messages"][0], "unchanged, neither edited nor deleted");
        assert_eq!(after["messages"][1], before["messages"][1]);
        assert_eq!(after["messages"][2]["body"], "(deleted)");
        // Members had read what was there before the upgrade.
        assert_eq!(marker(&app, &bob.token, room).await, (3, 0));
        // The concurrently built search index is valid and serves searches.
        let valid: bool = client
            .query_one(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = 'messages_search_idx'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(valid);
        assert_eq!(search(&app, &bob.token, "q=dos").await, ["dos"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_starting_at_once_on_a_fresh_database_migrate_once_and_both_serve() {
    bounded(async {
        let db = std::sync::Arc::new(chatpool::testkit::cluster().create_database().await);
        let (a, b) = tokio::join!(
            chatpool::testkit::AppOptions::default().database(db.clone()).spawn(),
            chatpool::testkit::AppOptions::default().database(db.clone()).spawn(),
        );
        let alice = register(&a, "alice").await;
        let room = id_of(&create_room(&a, &alice.token, "r", &[]).await);
        send(&a, &alice, room, "hola desde a").await;
        assert_eq!(search(&b, &alice.token, "q=hola").await, ["hola desde a"]);
        let client = sql_client(&db.url, "chatpool-tests").await;
        let (applied, valid): (i64, bool) = {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM __diesel_schema_migrations), \
                     (SELECT indisvalid FROM pg_index WHERE indexrelid = 'messages_search_idx'::regclass)",
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!(applied, 4);
        assert!(valid);
    })
    .await;
}

/// The plan PostgreSQL runs for a search: chatpool's sessions use generic
/// plans (`plan_cache_mode=force_generic_plan`), so this is the plan of
/// every search, whatever the words.
async fn search_plan(client: &tokio_postgres::Client, args: &str, in_room: bool) -> String {
    let types = if in_room {
        "text, bigint, text[], bigint, bigint"
    } else {
        "text, bigint, text[], bigint"
    };
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; \
             DEALLOCATE ALL; PREPARE search({types}) AS {}",
            search_sql(in_room)
        ))
        .await
        .unwrap();
    let rows = client
        .query(&format!("EXPLAIN EXECUTE search({args})"), &[])
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn search_never_scans_messages_sequentially_even_in_a_room_of_100k_messages() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let agent = user_with_role(&app, "agent", Role::Agent).await;
        let big = id_of(&create_room(&app, &alice.token, "big", &[]).await);
        let small = id_of(&create_room(&app, &alice.token, "small", &[]).await);
        let client = sql_client(&app.db.url, "chatpool-tests").await;
        bulk_messages_sql(&client, big, alice.id(), 100_000).await;
        send(&app, &alice, small, "una aguja en el pajar").await;
        client.batch_execute("ANALYZE messages").await.unwrap();

        for (who, in_room, args) in [
            (
                alice.id(),
                false,
                format!("'aguja', {}, ARRAY['agent','admin'], 20", alice.id()),
            ),
            (
                agent.id(),
                false,
                format!("'aguja', {}, ARRAY['agent','admin'], 20", agent.id()),
            ),
            (
                alice.id(),
                true,
                format!("'aguja', {}, ARRAY['agent','admin'], 20, {big}", alice.id()),
            ),
        ] {
            let plan = search_plan(&client, &args, in_room).await;
            assert!(
                plan.contains("messages_search_idx"),
                "caller {who}:\n{plan}"
            );
            assert!(
                !plan.contains("Seq Scan on messages"),
                "caller {who}:\n{plan}"
            );
        }
        assert_eq!(
            search(&app, &alice.token, "q=aguja").await,
            ["una aguja en el pajar"]
        );
    })
    .await;
}

/// The statements of `app`'s database that ran while `work` did, with how
/// often, whose text contains `needle`.
async fn statements_during<F: std::future::Future<Output = ()>>(
    app: &TestApp,
    needle: &str,
    work: F,
) -> Vec<(String, i64)> {
    let cluster = chatpool::testkit::cluster();
    let before = cluster.statement_calls(&app.db.name).await;
    work.await;
    let after = cluster.statement_calls(&app.db.name).await;
    chatpool::testkit::Cluster::statements_between(&before, &after)
        .into_iter()
        .filter(|(q, _)| q.contains(needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_room_list_with_unread_counts_is_one_statement_and_a_send_moves_the_marker_in_its_own()
{
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let mut rooms = Vec::new();
        for i in 0..30 {
            let room = id_of(&create_room(&app, &alice.token, &format!("r{i}"), &[bob.id()]).await);
            send(&app, &alice, room, "hi").await;
            rooms.push(room);
        }
        get(&app, "/api/rooms", &bob.token).await.expect(200); // warm: token cache, prepared statement

        let listed = statements_during(&app, "rooms", async {
            for _ in 0..3 {
                let body = get(&app, "/api/rooms", &bob.token).await.expect(200);
                assert_eq!(body["rooms"].as_array().unwrap().len(), 30);
                assert!(body["rooms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["unread"] == 1));
            }
        })
        .await;
        assert_eq!(listed.len(), 1, "one statement for 30 rooms: {listed:?}");
        assert_eq!(listed[0].1, 3, "once per request: {listed:?}");
        assert!(listed[0].0.contains("read_markers"), "{listed:?}");

        // Sending moves the sender's marker inside the batch statement: no
        // other statement touches the markers.
        let marked = statements_during(&app, "read_markers", async {
            send(&app, &bob, rooms[0], "reply").await;
        })
        .await;
        assert_eq!(marked.len(), 1, "{marked:?}");
        assert!(
            marked[0].0.contains("INSERT INTO messages"),
            "the send's own statement: {marked:?}"
        );
        assert_eq!(marker(&app, &bob.token, rooms[0]).await, (2, 0));
    })
    .await;
}
