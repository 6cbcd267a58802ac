//! Delivery guarantees over WebSocket: the gapless join boundary,
//! idempotent sends, and hundreds of sockets on a three-connection budget.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatpool::testkit::process::ensure_open_files;
use chatpool::testkit::seed::{
    count_client_id, seed_room, seed_user, seed_users, stored_seqs, two_in_a_room,
};
use chatpool::testkit::ws::*;
use chatpool::testkit::{bounded, cluster, spawn_app, AppOptions, Role, TestApp};
use serde_json::{json, Value};

/// Error codes a client retries with the same `client_id`.
const RETRYABLE: [&str; 3] = ["db_busy", "db_timeout", "db_unavailable"];

/// Sends until acked, retrying retryable errors with the same `client_id`;
/// returns the ack and every `message` frame read meanwhile.
async fn send_until_acked(
    client: &mut WsClient,
    room: i64,
    body: &str,
    client_id: &str,
    messages: &mut Vec<i64>,
) -> Value {
    loop {
        client
            .send_json(
                json!({"type": "send", "room_id": room, "body": body, "client_id": client_id}),
            )
            .await;
        loop {
            let v = client.recv_json().await;
            match v["type"].as_str() {
                Some("message") => messages.push(seq_of(&v)),
                Some("ack") if v["client_id"] == client_id => return v,
                Some("error") if v["client_id"] == client_id => {
                    let code = v["code"].as_str().unwrap_or_default();
                    assert!(RETRYABLE.contains(&code), "send failed for good: {v}");
                    break;
                }
                _ => panic!("unexpected frame {v}"),
            }
        }
    }
}

/// Joins, retrying retryable errors; returns `joined`.
async fn join_retrying(client: &mut WsClient, room: i64, after_seq: Option<i64>) -> Value {
    loop {
        let mut frame = json!({"type": "join", "room_id": room});
        if let Some(n) = after_seq {
            frame["after_seq"] = json!(n);
        }
        client.send_json(frame).await;
        let v = client.recv_json().await;
        match v["type"].as_str() {
            Some("joined") => return v,
            Some("error") if RETRYABLE.contains(&v["code"].as_str().unwrap_or_default()) => {}
            _ => panic!("join failed: {v}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_rejoin_with_after_seq_is_gapless_and_duplicate_free_while_sends_race_the_join() {
    bounded(async {
        let app = spawn_app().await;
        let reader = seed_user(&app, "reader", Role::Member).await;
        let senders = seed_users(&app, "sender", 10, Role::Member).await;
        let ids: Vec<i64> = senders.iter().map(|s| s.id).collect();
        let room = seed_room(&app, reader.id, &ids).await;

        let mut a = connect(&app, &reader.token).await;
        a.join(room, None).await;
        let mut first = connect(&app, &senders[0].token).await;
        for i in 0..5 {
            first.send_message(room, "warm-up", &format!("w{i}")).await;
        }
        let mut seen: Vec<i64> = Vec::new();
        while seen.len() < 5 {
            seen.push(seq_of(&a.recv_json().await));
        }
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        let cursor = 5;
        a.send_json(json!({"type": "leave", "room_id": room})).await;
        a.recv_until("left").await;

        // 10 sockets × 20 messages, concurrently.
        let (progress, mut watch) = tokio::sync::watch::channel(0usize);
        let progress = Arc::new(progress);
        let mut tasks = Vec::new();
        for (n, sender) in senders.iter().enumerate() {
            let mut client = connect(&app, &sender.token).await;
            let progress = progress.clone();
            tasks.push(tokio::spawn(async move {
                let mut ignored = Vec::new();
                for i in 0..20 {
                    let cid = format!("s{n}-{i}");
                    send_until_acked(&mut client, room, "racing", &cid, &mut ignored).await;
                    progress.send_modify(|k| *k += 1);
                }
            }));
        }
        // Rejoin while a good part of the sends is still to come.
        watch.wait_for(|k| *k >= 60).await.unwrap();
        let joined = a.join(room, Some(cursor)).await;
        let last_at_join = joined["last_seq"].as_i64().unwrap();
        assert!(
            last_at_join >= 65 && joined.get("truncated").is_none(),
            "{joined}"
        );
        for t in tasks {
            t.await.unwrap();
        }
        let total = 5 + 200;
        let mut got = Vec::new();
        while got.last().copied().unwrap_or(cursor) < total {
            got.push(seq_of(&a.recv_json().await));
        }
        // Then live.
        first.send_message(room, "after the race", "live-1").await;
        got.push(seq_of(&a.recv_json().await));
        assert_eq!(got, ((cursor + 1)..=(total + 1)).collect::<Vec<_>>());
        assert!(
            a.round_trip().await.is_empty(),
            "no duplicate trails behind"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_two_sends_with_one_client_id_store_and_broadcast_one_message() {
    bounded(async {
        let app = spawn_app().await;
        let (ann, bob, room) = two_in_a_room(&app, "ann", "bob").await;
        let mut a = connect(&app, &ann.token).await;
        let mut b = connect(&app, &bob.token).await;
        a.join(room, None).await;
        b.join(room, None).await;

        let frame = json!({"type": "send", "room_id": room, "body": "once", "client_id": "dup-1"});
        a.send_json(frame.clone()).await;
        a.send_json(frame.clone()).await;
        let mut acks = Vec::new();
        let mut messages = Vec::new();
        while acks.len() < 2 {
            let v = a.recv_json().await;
            match v["type"].as_str() {
                Some("ack") => acks.push(v),
                Some("message") => messages.push(v),
                _ => panic!("unexpected {v}"),
            }
        }
        assert_eq!(acks[0]["message"], acks[1]["message"]);
        assert_eq!(acks[0]["message"]["seq"], 1);
        messages.extend(a.round_trip().await);
        assert_eq!(messages.len(), 1, "one broadcast: {messages:?}");
        let on_b = b.round_trip().await;
        assert_eq!(on_b.len(), 1, "one broadcast: {on_b:?}");
        assert_eq!(on_b[0]["message"], acks[0]["message"]);

        // Two sockets of the same author racing one client_id.
        let mut a2 = connect(&app, &ann.token).await;
        let mut a3 = connect(&app, &ann.token).await;
        let race = json!({"type": "send", "room_id": room, "body": "raced", "client_id": "dup-2"});
        a2.send_json(race.clone()).await;
        a3.send_json(race).await;
        let (x, _) = a2.recv_until("ack").await;
        let (y, _) = a3.recv_until("ack").await;
        assert_eq!(x["message"], y["message"]);

        // A retry after a reconnect: the original, no new broadcast.
        let mut again = connect(&app, &ann.token).await;
        let (z, _) = again.send_message(room, "once", "dup-1").await;
        assert_eq!(z["message"], acks[0]["message"]);

        assert_eq!(count_client_id(&app, "dup-1").await, 1);
        assert_eq!(count_client_id(&app, "dup-2").await, 1);
        assert_eq!(stored_seqs(&app, room).await, vec![1, 2]);
        let on_b = b.round_trip().await;
        assert_eq!(on_b.iter().map(seq_of).collect::<Vec<_>>(), vec![2]);
    })
    .await;
}

/// Samples the server's connections until `stop`; returns the maximum seen.
fn sample_connections(app: &TestApp, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    let db_name = app.db.name.clone();
    tokio::spawn(async move {
        let max = AtomicI64::new(0);
        while !stop.load(Ordering::Relaxed) {
            let n = cluster().connections_of(&db_name, "chatpool").await;
            max.fetch_max(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        max.load(Ordering::Relaxed)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_500_sockets_in_10_rooms_on_3_connections_all_acked_and_gapless() {
    const SOCKETS: usize = 500;
    const ROOMS: usize = 10;
    const PER_SOCKET: i64 = 4;
    bounded(async {
        ensure_open_files(4096);
        let app = AppOptions::default()
            .url_param("connection_limit", 3)
            .spawn()
            .await;
        let users = seed_users(&app, "user", SOCKETS, Role::Member).await;
        let mut rooms = Vec::new();
        for r in 0..ROOMS {
            let members: Vec<i64> = users.iter().skip(r).step_by(ROOMS).map(|u| u.id).collect();
            rooms.push(seed_room(&app, members[0], &members).await);
        }
        let per_room = (SOCKETS / ROOMS) as i64 * PER_SOCKET;

        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_connections(&app, stop.clone());
        let all_joined = Arc::new(tokio::sync::Barrier::new(SOCKETS));
        let app = Arc::new(app);
        let mut tasks = Vec::new();
        for (i, user) in users.into_iter().enumerate() {
            let room = rooms[i % ROOMS];
            let (app, all_joined) = (app.clone(), all_joined.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = connect_retrying(&app, &user.token).await;
                join_retrying(&mut client, room, None).await;
                all_joined.wait().await;
                let mut seqs = Vec::new();
                for k in 0..PER_SOCKET {
                    let cid = format!("{i}-{k}");
                    let ack = send_until_acked(&mut client, room, "load", &cid, &mut seqs).await;
                    assert_eq!(ack["message"]["room_id"], room);
                }
                while seqs.last().copied().unwrap_or(0) < per_room {
                    let v = client.recv_json().await;
                    seqs.push(seq_of(&v));
                }
                (room, seqs)
            }));
        }
        for t in tasks {
            let (room, seqs) = t.await.unwrap();
            assert_eq!(
                seqs,
                (1..=per_room).collect::<Vec<_>>(),
                "a socket of room {room} saw its room out of order or with gaps"
            );
        }
        stop.store(true, Ordering::Relaxed);
        let max_connections = sampler.await.unwrap();
        assert!(
            (1..=3).contains(&max_connections),
            "server held {max_connections} connections"
        );
        for room in rooms {
            assert_eq!(
                stored_seqs(&app, room).await,
                (1..=per_room).collect::<Vec<_>>()
            );
        }
    })
    .await;
}

/// Issue 11: overload. 2,000 sockets on five connections with a short wait
/// limit: every send acks, or fails fast with a retryable code and then acks
/// on a retry with the same `client_id`, each stored exactly once; `/healthz`
/// answers throughout; memory stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn ws_2000_sockets_on_5_connections_every_send_acks_once_and_healthz_answers() {
    const SOCKETS: usize = 2000;
    const ROOMS: usize = 20;
    bounded(async {
        ensure_open_files(8192);
        let app = AppOptions::default()
            .url_param("connection_limit", 5)
            .env("CHATPOOL_TX_MAX_WAIT_MS", 200)
            .spawn()
            .await;
        let users = seed_users(&app, "user", SOCKETS, Role::Member).await;
        let mut rooms = Vec::new();
        for r in 0..ROOMS {
            let members: Vec<i64> = users.iter().skip(r).step_by(ROOMS).map(|u| u.id).collect();
            rooms.push(seed_room(&app, members[0], &members).await);
        }
        let rss_before = chatpool::testkit::process::rss_kib();
        let app = Arc::new(app);
        let done = Arc::new(AtomicBool::new(false));
        let health = {
            let (app, done) = (app.clone(), done.clone());
            tokio::spawn(async move {
                let (mut probes, mut worst) = (0u32, Duration::ZERO);
                while !done.load(Ordering::Relaxed) {
                    let started = std::time::Instant::now();
                    assert_eq!(app.get("/healthz").await.status(), 200);
                    worst = worst.max(started.elapsed());
                    probes += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (probes, worst)
            })
        };
        let all_joined = Arc::new(tokio::sync::Barrier::new(SOCKETS));
        // Clients arrive a hundred at a time (the kernel's accept queue is
        // finite); once all are in, they all send at once.
        let arriving = Arc::new(tokio::sync::Semaphore::new(100));
        let tasks: Vec<_> = users
            .into_iter()
            .enumerate()
            .map(|(i, user)| {
                let room = rooms[i % ROOMS];
                let (app, all_joined, arriving) = (app.clone(), all_joined.clone(), arriving.clone());
                tokio::spawn(async move {
                    let permit = arriving.acquire_owned().await.unwrap();
                    let mut client = connect_retrying(&app, &user.token).await;
                    join_retrying(&mut client, room, None).await;
                    drop(permit);
                    all_joined.wait().await;
                    let mut seen = Vec::new();
                    send_until_acked(&mut client, room, "overload", &format!("o-{i}"), &mut seen)
                        .await;
                    client
                })
            })
            .collect();
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.unwrap());
        }
        done.store(true, Ordering::Relaxed);
        let (probes, worst) = health.await.unwrap();
        assert!(probes > 0);
        assert!(worst < Duration::from_secs(2), "/healthz took {worst:?} under load");
        let busy = app.metric("chatpool_db_pool_timeouts_total").await;
        eprintln!("overload: {busy} db_busy answers, {probes} health probes, worst {worst:?}");

        let client = chatpool::testkit::pg::sql_client(&app.db.url, "tests").await;
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT client_id) FROM messages WHERE client_id LIKE 'o-%'",
                &[],
            )
            .await
            .unwrap();
        let (stored, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!((stored, distinct), (SOCKETS as i64, SOCKETS as i64));
        // Server and 2,000 clients in this process: bounded, not per-message.
        let grown_mib = (chatpool::testkit::process::rss_kib().saturating_sub(rss_before)) / 1024;
        assert!(grown_mib < 512, "RSS grew {grown_mib} MiB");
        drop(clients);
    })
    .await;
}
