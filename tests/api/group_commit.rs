//! Group commit: every guarantee of a single send holds for every send of a
//! batch (gapless seqs, idempotency, refusals one by one, the time limit,
//! the connection cap).

use chatpool::testkit::admin::admin_count;
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::seed::{count_client_id, seed_room, seed_user, seed_users, stored_seqs};
use chatpool::testkit::{bounded, AppOptions, Role, TestApp};
use futures_util::future::join_all;

use crate::instances::two_instances;

/// Sends `n` messages per sender, all senders at once, through each app's
/// own send path; every result.
async fn send_all(
    apps: &[&TestApp],
    senders: &[chatpool::testkit::seed::Seeded],
    room: i64,
    n: usize,
) -> Vec<Result<(), String>> {
    let mut tasks = Vec::new();
    for (i, user) in senders.iter().enumerate() {
        let sender = apps[i % apps.len()].direct_sender(user);
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::with_capacity(n);
            for k in 0..n {
                let cid = format!("u{}-{k}", i);
                results.push(sender.send(room, &format!("m {i} {k}"), &cid).await);
            }
            results
        }));
    }
    join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.expect("sender task"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_senders_on_two_instances_get_seqs_1_to_n_without_gaps_or_duplicates() {
    bounded(async {
        let (a, b, role_a, role_b) = two_instances(5).await;
        let users = seed_users(&a, "gc", 16, Role::Member).await;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let room = seed_room(&a, ids[0], &ids[1..]).await;

        let results = send_all(&[&a, &b], &users, room, 10).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let seqs = stored_seqs(&a, room).await;
        assert_eq!(seqs, (1..=160).collect::<Vec<_>>());
        // The connection cap held for both: the pool's size never passes its max.
        for (app, role) in [(&a, &role_a), (&b, &role_b)] {
            let status = app.pool_status();
            assert!(status.size <= status.max_size, "{status:?}");
            let held = admin_count(&format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = '{role}' AND application_name = 'chatpool'"
            ))
            .await;
            assert!(held <= 5, "{role} holds {held}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_client_id_sent_many_times_at_once_on_two_instances_stores_one_message() {
    bounded(async {
        let (a, b, _, _) = two_instances(5).await;
        let alice = seed_user(&a, "alice", Role::Member).await;
        let room = seed_room(&a, alice.id, &[]).await;
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let app = if i % 2 == 0 { &a } else { &b };
                let sender = app.direct_sender(&alice);
                tokio::spawn(async move { sender.send(room, "once", "the-one").await })
            })
            .collect();
        for result in join_all(tasks).await {
            assert_eq!(result.expect("task"), Ok(()));
        }
        assert_eq!(count_client_id(&a, "the-one").await, 1);
        assert_eq!(stored_seqs(&a, room).await, vec![1]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_send_fails_alone_and_the_sends_beside_it_commit() {
    bounded(async {
        // A pool of 2: one batch in flight, so concurrent sends share batches.
        let app = AppOptions::default()
            .url_param("connection_limit", 3)
            .spawn()
            .await;
        let users = seed_users(&app, "rf", 8, Role::Member).await;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let visible = seed_room(&app, ids[0], &ids[1..]).await;
        let outsider = seed_user(&app, "owner", Role::Member).await;
        let hidden = seed_room(&app, outsider.id, &[]).await;

        let mut tasks = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let sender = app.direct_sender(user);
            tasks.push(tokio::spawn(async move {
                let ok = sender.send(visible, "fine", &format!("v{i}")).await;
                let refused = sender.send(hidden, "nope", &format!("h{i}")).await;
                let again = sender.send(visible, "fine again", &format!("w{i}")).await;
                (ok, refused, again)
            }));
        }
        for result in join_all(tasks).await {
            let (ok, refused, again) = result.expect("task");
            assert_eq!(ok, Ok(()));
            assert_eq!(refused, Err("not_found".to_owned()));
            assert_eq!(again, Ok(()));
        }
        assert_eq!(
            stored_seqs(&app, visible).await,
            (1..=16).collect::<Vec<_>>()
        );
        assert!(stored_seqs(&app, hidden).await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_past_the_time_limit_fails_every_sender_with_db_timeout_and_stores_nothing() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_TX_TIMEOUT_MS", 500)
            .spawn()
            .await;
        let users = seed_users(&app, "to", 4, Role::Member).await;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let room = seed_room(&app, ids[0], &ids[1..]).await;

        // Another client holds the room's row: every batch for it must wait.
        let blocker = sql_client(&app.db.url, "group-commit-test").await;
        blocker
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM rooms WHERE id = {room} FOR UPDATE"
            ))
            .await
            .expect("lock the room");
        let results = send_all(&[&app], &users, room, 1).await;
        assert_eq!(results.len(), 4);
        for result in &results {
            assert_eq!(result, &Err("db_timeout".to_owned()));
        }
        blocker.batch_execute("ROLLBACK").await.expect("unlock");
        assert!(stored_seqs(&app, room).await.is_empty(), "nothing stored");

        // The same client_ids go through once the room is free.
        let retried = send_all(&[&app], &users, room, 1).await;
        assert!(retried.iter().all(Result::is_ok), "{retried:?}");
        assert_eq!(stored_seqs(&app, room).await, vec![1, 2, 3, 4]);
    })
    .await;
}
