//! Issue 11 / SPEC §6 "Tokens expire": a token stops working
//! `CHATPOOL_TOKEN_TTL` after it was issued, its sockets close with 1008, its
//! row is deleted; `logout?all=true` revokes every token of the caller.

use std::time::{Duration, Instant};

use chatpool::testkit::api::{get, login, post, register, PASSWORD};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::ws::connect;
use chatpool::testkit::{bounded, AppOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_gets_401_its_sockets_close_with_1008_and_its_row_is_deleted() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_TOKEN_TTL", "3s")
            .spawn()
            .await;
        let issued = Instant::now();
        let alice = register(&app, "alice").await;
        get(&app, "/api/me", &alice.token).await.expect(200);
        let mut ws = connect(&app, &alice.token).await;

        // Valid until its TTL, refused from then on (the token cache included).
        loop {
            let reply = get(&app, "/api/me", &alice.token).await;
            if reply.status == 401 {
                break;
            }
            reply.expect(200);
            assert!(issued.elapsed() < Duration::from_secs(10), "still valid");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            issued.elapsed() >= Duration::from_millis(2900),
            "expired early: {:?}",
            issued.elapsed()
        );
        // The job (every 1.5 s at this TTL) deletes the row and closes the socket.
        ws.expect_close(1008).await;
        let client = sql_client(&app.db.url, "tests").await;
        let rows: i64 = client
            .query_one("SELECT count(*) FROM auth_tokens", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0);
        // A new login gets a new, working token.
        let fresh = login(&app, "alice", PASSWORD).await.expect(200);
        let token = fresh["token"].as_str().unwrap();
        get(&app, "/api/me", token).await.expect(200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_all_revokes_every_token_of_the_caller_and_only_theirs() {
    bounded(async {
        let app = AppOptions::default().spawn().await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let second = login(&app, "alice", PASSWORD).await.expect(200);
        let second = second["token"].as_str().unwrap().to_owned();
        let third = login(&app, "alice", PASSWORD).await.expect(200);
        let third = third["token"].as_str().unwrap().to_owned();
        let mut on_first = connect(&app, &alice.token).await;
        let mut on_second = connect(&app, &second).await;
        let mut bobs = connect(&app, &bob.token).await;

        post(&app, "/api/auth/logout?all=true", &third, json!({}))
            .await
            .expect(204);
        for token in [&alice.token, &second, &third] {
            get(&app, "/api/me", token)
                .await
                .expect_error(401, "unauthorized");
        }
        on_first.expect_close(1008).await;
        on_second.expect_close(1008).await;
        get(&app, "/api/me", &bob.token).await.expect(200);
        assert!(bobs.round_trip().await.is_empty());
    })
    .await;
}
