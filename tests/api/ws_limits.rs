//! Close codes and limits: 1003, 1009, 1008, 1013, 1001, max sockets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatpool::testkit::probe::QUEUE_CAPACITY;
use chatpool::testkit::process::rss_kib;
use chatpool::testkit::seed::{logout, new_token, seed_room, seed_user, two_in_a_room};
use chatpool::testkit::ws::*;
use chatpool::testkit::{bounded, spawn_app, AppOptions, Role};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn ws_a_binary_frame_closes_with_1003() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Member).await;
        let mut a = connect(&app, &ann.token).await;
        a.send_raw(Message::binary(vec![1u8, 2, 3])).await;
        a.expect_close(1003).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_a_frame_over_64_kib_closes_with_1009_and_64_kib_is_fine() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Member).await;

        // Exactly at the limit: parsed (and refused as bad JSON), socket open.
        let mut ok = connect(&app, &ann.token).await;
        ok.send_raw(Message::text("x".repeat(64 * 1024))).await;
        assert_eq!(ok.recv_json().await["code"], "bad_request");
        ok.round_trip().await;

        let mut a = connect(&app, &ann.token).await;
        let body = "y".repeat(70 * 1024);
        a.send_raw(Message::text(
            json!({"type": "send", "room_id": 1, "body": body, "client_id": "big"}).to_string(),
        ))
        .await;
        a.expect_close(1009).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_logout_closes_that_tokens_sockets_with_1008_only() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Member).await;
        let (other_token, _) = new_token(&app, ann.id).await;
        let mut a1 = connect(&app, &ann.token).await;
        let mut a2 = connect_bearer(&app, &ann.token).await;
        let mut other = connect(&app, &other_token).await;

        logout(&app, ann.token_id).await;
        a1.expect_close(1008).await;
        a2.expect_close(1008).await;
        other.round_trip().await;
        let refused = try_connect(&app, &ann.token).await.err().expect("refused");
        assert_eq!(refused.status, 401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_upgrades_past_max_sockets_get_503_until_one_closes() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_MAX_SOCKETS", 2)
            .spawn()
            .await;
        let ann = seed_user(&app, "ann", Role::Member).await;
        let a = connect(&app, &ann.token).await;
        let _b = connect(&app, &ann.token).await;
        let refused = try_connect(&app, &ann.token).await.err().expect("refused");
        assert_eq!(refused.status, 503);
        assert_eq!(refused.body["error"]["code"], "server_busy");

        drop(a);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while app.ws_sessions() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "closed socket still counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut c = connect(&app, &ann.token).await;
        c.round_trip().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_shutdown_closes_sockets_with_1001_and_refuses_new_upgrades() {
    bounded(async {
        let app = spawn_app().await;
        let ann = seed_user(&app, "ann", Role::Member).await;
        let room = seed_room(&app, ann.id, &[]).await;
        let mut a = connect(&app, &ann.token).await;
        a.join(room, None).await;

        app.begin_shutdown();
        a.expect_close(1001).await;
        let refused = try_connect(&app, &ann.token).await.err().expect("refused");
        assert_eq!(refused.status, 503);
        assert_eq!(refused.body["error"]["code"], "shutting_down");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_a_socket_that_never_reads_is_closed_with_1013_and_memory_stays_bounded() {
    bounded(async {
        let app = spawn_app().await;
        let (ann, flooder, room) = two_in_a_room(&app, "ann", "flood").await;

        // The slow client: a small receive buffer, joins, then stops reading.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(app.addr).await.unwrap();
        let request = ws_url(&app, &ann.token).into_client_request().unwrap();
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            request,
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
            Some(client_config()),
        )
        .await
        .expect("upgrade");
        let mut slow = WsClient {
            ws,
            hello: serde_json::Value::Null,
            presence: false,
        };
        assert_eq!(slow.recv_json().await["type"], "hello");
        slow.join(room, None).await;

        let rss_before = rss_kib();
        let peak = Arc::new(AtomicU64::new(rss_before));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        const MAX_FLOOD: u64 = 20_000;
        let body = "z".repeat(3900);
        let mut floods = Vec::new();
        for worker in 0..4 {
            let (sender, body) = (app.direct_sender(&flooder), body.clone());
            let (stop, sent, peak) = (stop.clone(), sent.clone(), peak.clone());
            floods.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < MAX_FLOOD {
                    let cid = format!("f{worker}-{i}");
                    if sender.send(room, &body, &cid).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                    if i.is_multiple_of(50) {
                        peak.fetch_max(rss_kib(), Ordering::Relaxed);
                    }
                }
            }));
        }
        // Wait for the server's own verdict.
        while app.hub_stats().slow_consumer_closes == 0 {
            assert!(
                sent.load(Ordering::Relaxed) < MAX_FLOOD,
                "{MAX_FLOOD} messages and the non-reading socket is still open"
            );
            peak.fetch_max(rss_kib(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for f in floods {
            f.await.unwrap();
        }
        let stats = app.hub_stats();
        assert!(stats.queue_high_water <= QUEUE_CAPACITY, "{stats:?}");
        let flooded = sent.load(Ordering::Relaxed);
        let growth_mib = (peak.load(Ordering::Relaxed).saturating_sub(rss_before)) / 1024;
        assert!(
            growth_mib < 128,
            "RSS grew by {growth_mib} MiB over {flooded} messages"
        );

        // Now read: what was already in flight, then Close 1013.
        let before = slow.expect_close(1013).await;
        let seqs: Vec<i64> = before.iter().map(seq_of).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "what was delivered is in order and gapless"
        );
        assert!((seqs.len() as u64) < flooded, "not everything was buffered");
        // The server is fine: new sessions work, the room resumes from the cursor.
        let mut again = connect(&app, &ann.token).await;
        let last = seqs.last().copied().unwrap_or(0);
        let joined = again.join(room, Some(last)).await;
        assert!(joined["last_seq"].as_i64().unwrap() >= flooded as i64);
        let first = seq_of(&again.recv_json().await);
        let expected = if joined["truncated"] == true {
            joined["last_seq"].as_i64().unwrap() - 999
        } else {
            last + 1
        };
        assert_eq!(first, expected);
    })
    .await;
}
