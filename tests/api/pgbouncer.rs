//! Issue 12: chatpool behind a real PgBouncer in transaction mode (SPEC §6,
//! "Behind PgBouncer"): `pgbouncer=true` in the pool's URL, the one LISTEN
//! connection straight to PostgreSQL through `CHATPOOL_LISTENER_DATABASE_URL`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpool::testkit::admin::admin_count;
use chatpool::testkit::pgbouncer::PgBouncer;
use chatpool::testkit::seed::{count_client_id, seed_room, seed_user};
use chatpool::testkit::ws::connect;
use chatpool::testkit::{api, bounded, cluster, AppOptions, Role, TestApp, TestDatabase};
use futures_util::future::join_all;

/// An instance whose pool goes through `bouncer` and whose listener does not.
async fn behind(bouncer: &PgBouncer, db: &Arc<TestDatabase>) -> TestApp {
    AppOptions::default()
        .database(db.clone())
        .env(
            "DATABASE_URL",
            format!("{}&connection_limit=5", bouncer.url(db)),
        )
        .env("CHATPOOL_LISTENER_DATABASE_URL", &db.url)
        .spawn()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_behind_pgbouncer_send_read_dedupe_and_fan_out() {
    bounded(async {
        let bouncer = PgBouncer::start(cluster());
        let db = Arc::new(cluster().create_database().await);
        let (a, b) = (behind(&bouncer, &db).await, behind(&bouncer, &db).await);
        let alice = seed_user(&a, "alice", Role::Member).await;
        let bob = seed_user(&a, "bob", Role::Member).await;
        let room = seed_room(&a, alice.id, &[bob.id]).await;

        let mut on_b = connect(&b, &bob.token).await;
        on_b.join(room, Some(0)).await;
        let mut on_a = connect(&a, &alice.token).await;
        on_a.join(room, Some(0)).await;
        let (ack, _) = on_a.send_message(room, "through the bouncer", "c1").await;
        assert_eq!(ack["message"]["seq"], 1);
        // Across instances: B's listener, straight to PostgreSQL, hears it.
        let (frame, _) = tokio::time::timeout(Duration::from_secs(2), on_b.recv_until("message"))
            .await
            .expect("the message crosses to B within 2 s");
        assert_eq!(frame["message"]["body"], "through the bouncer");
        // The same client_id again: the same message, stored once.
        let (again, _) = on_a.send_message(room, "through the bouncer", "c1").await;
        assert_eq!(again["message"]["id"], ack["message"]["id"]);
        assert_eq!(count_client_id(&a, "c1").await, 1);

        // Many transactions at once on both instances, over PgBouncer's
        // shared server connections: no prepared statement collides.
        let bouncer = &bouncer;
        let calls = (0..40).map(|i| {
            let (app, token) = if i % 2 == 0 {
                (&a, &alice.token)
            } else {
                (&b, &bob.token)
            };
            async move {
                let path = format!("/api/rooms/{room}/messages");
                if i % 4 < 2 {
                    api::post(
                        app,
                        &path,
                        token,
                        serde_json::json!({"body": format!("m{i}")}),
                    )
                    .await
                    .expect(201);
                } else {
                    api::get(app, &path, token).await.expect(200);
                }
                let me = api::get(app, "/api/me", token).await;
                assert_eq!(me.status, 200, "{}\n{}", me.text, bouncer.log());
            }
        });
        join_all(calls).await;
        let history = api::get(
            &b,
            &format!("/api/rooms/{room}/messages?limit=100"),
            &bob.token,
        )
        .await
        .expect(200);
        assert_eq!(history["messages"].as_array().unwrap().len(), 21);

        // Each LISTEN connection is a backend of its own, not one of
        // PgBouncer's server connections.
        let listeners = admin_count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
             AND (query LIKE 'LISTEN %' OR query LIKE '/* chatpool listener */%')",
            db.name
        ))
        .await;
        assert_eq!(listeners, 2, "{}", bouncer.log());
        let server_pids = bouncer.server_pids().await;
        assert!(!server_pids.is_empty());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let through_bouncer = admin_count(&format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
                 AND (query LIKE 'LISTEN %' OR query LIKE '/* chatpool listener */%') AND pid = ANY('{{{}}}'::int[])",
                db.name,
                server_pids
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .await;
            if through_bouncer == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "a LISTEN went through PgBouncer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
