//! The failure chatpool exists to end, reproduced and beaten (README's
//! headline): a new PostgreSQL client per request runs the server out of
//! connections (`sorry, too many clients already`); the same database behind
//! chatpool takes HTTP and WebSocket load far wider than PostgreSQL's
//! `max_connections` and never holds more than `connection_limit`.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatpool::testkit::api::{history, post_message};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::seed::{seed_room, seed_users};
use chatpool::testkit::ws::connect;
use chatpool::testkit::{bounded, AppOptions, Cluster, ClusterOptions, Role};
use futures_util::future::join_all;

const MAX_CONNECTIONS: u32 = 20;
const CONNECTION_LIMIT: i64 = 10;

#[tokio::test(flavor = "multi_thread")]
async fn a_client_per_request_exhausts_postgres_and_the_same_load_through_chatpool_does_not() {
    bounded(async {
        let pg = Arc::new(
            tokio::task::spawn_blocking(|| {
                Cluster::start(ClusterOptions {
                    max_connections: MAX_CONNECTIONS,
                    durable: false,
                    settings: Vec::new(),
                })
            })
            .await
            .unwrap(),
        );
        let db = Arc::new(pg.create_database().await);

        // 1. The anti-pattern: every handler makes its own client and keeps
        // it (hot reloads, no pool, nothing closed).
        let mut leaked = Vec::new();
        let refusal = loop {
            match tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    client.simple_query("SELECT 1").await.unwrap();
                    leaked.push(client);
                    assert!(leaked.len() <= MAX_CONNECTIONS as usize, "never refused");
                }
                Err(e) => break e,
            }
        };
        let message = refusal
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_else(|| refusal.to_string());
        assert!(message.contains("too many clients"), "{message}");
        drop(leaked);
        let sampler = loop {
            // The server frees the slots a moment after the clients close.
            match tokio_postgres::connect(&pg.url(Cluster::DEFAULT_DATABASE), tokio_postgres::NoTls)
                .await
            {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    break client;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };

        // 2. The same database through chatpool: 60 WebSockets and 40 HTTP
        // clients at once, three times PostgreSQL's max_connections.
        let app = AppOptions::default()
            .database(db.clone())
            .url_param("connection_limit", CONNECTION_LIMIT)
            .spawn()
            .await;
        let users = seed_users(&app, "user", 100, Role::Member).await;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let room = seed_room(&app, ids[0], &ids[1..]).await;

        let done = Arc::new(AtomicBool::new(false));
        let max_seen = Arc::new(AtomicI64::new(0));
        let watch = {
            let (done, max_seen, name) = (done.clone(), max_seen.clone(), db.name.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    let n: i64 = sampler
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity \
                             WHERE datname = $1 AND application_name = 'chatpool'",
                            &[&name],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    max_seen.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };

        let sockets = users[..60].iter().enumerate().map(|(i, u)| {
            let app = &app;
            async move {
                let mut ws = connect(app, &u.token).await;
                ws.join(room, None).await;
                for n in 0..5 {
                    let (ack, _) = ws.send_message(room, "over ws", &format!("w{i}-{n}")).await;
                    assert_eq!(ack["type"], "ack", "{ack}");
                }
            }
        });
        let http = users[60..].iter().enumerate().map(|(i, u)| {
            let app = &app;
            async move {
                for n in 0..5 {
                    post_message(app, &u.token, room, "over http", Some(&format!("h{i}-{n}")))
                        .await
                        .expect(201);
                    history(app, &u.token, room, "limit=50").await.expect(200);
                }
            }
        });
        tokio::join!(join_all(sockets), join_all(http));
        done.store(true, Ordering::SeqCst);
        watch.await.unwrap();

        let stored: i64 = sql_client(&db.url, "tests")
            .await
            .query_one("SELECT count(*) FROM messages WHERE room_id = $1", &[&room])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 60 * 5 + 40 * 5, "every send stored once");
        let max = max_seen.load(Ordering::SeqCst);
        assert!(
            (1..=CONNECTION_LIMIT).contains(&max),
            "chatpool held {max} connections (limit {CONNECTION_LIMIT})"
        );
        app.shutdown().await.unwrap();
    })
    .await;
}
