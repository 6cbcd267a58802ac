//! Scenario e: wide fan-out. One room with `BENCH_FANOUT_SOCKETS` (1000)
//! joined sockets; one sender posts `BENCH_FANOUT_RATE` (100) messages/s for
//! `BENCH_FANOUT_SECS` (10) s. Each delivery's latency is measured from the
//! message's `created_at` (PostgreSQL's clock at insert, just before the
//! commit; the same machine's clock as the receiver's) to its arrival.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chatpool::testkit::seed::{seed_room, seed_users};
use chatpool::testkit::ws;
use chatpool::testkit::Role;
use serde_json::json;
use tokio::sync::{Barrier, Semaphore};

use crate::measure::{env_num, rate, Cpu, Percentiles};
use crate::{shut_down, Bench, PHASE_LIMIT};

/// The part of a server frame a receiver reads.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    message: Option<Stamp<'a>>,
}

/// A message's commit time.
#[derive(serde::Deserialize)]
struct Stamp<'a> {
    created_at: &'a str,
}

/// What one receiving socket saw.
struct Received {
    latencies: Vec<Duration>,
    last: Option<Instant>,
}

/// Scenario e: wide fan-out latency and delivery rate.
pub async fn scenario_fanout(bench: &Bench<'_>) -> String {
    let sockets = env_num("BENCH_FANOUT_SOCKETS", 1000);
    let per_sec = env_num("BENCH_FANOUT_RATE", 100).max(1);
    let secs = env_num("BENCH_FANOUT_SECS", 10);
    let total = per_sec * secs;
    let server = bench.start_server(10).await;
    let users = seed_users(&server, "fanu", sockets + 1, Role::Member).await;
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let room = seed_room(&server, ids[0], &ids[1..]).await;

    let barrier = Arc::new(Barrier::new(sockets + 1));
    let connecting = Arc::new(Semaphore::new(50));
    let mut receivers = Vec::with_capacity(sockets);
    for user in &users[1..] {
        let (addr, token, barrier, connecting) = (
            server.addr,
            user.token.clone(),
            barrier.clone(),
            connecting.clone(),
        );
        receivers.push(tokio::spawn(async move {
            let joined = async {
                let _permit = connecting
                    .acquire_owned()
                    .await
                    .map_err(|e| e.to_string())?;
                ws::open_joined(addr, &token, room).await
            }
            .await;
            barrier.wait().await;
            let mut ws = joined?;
            let mut got = Received {
                latencies: Vec::with_capacity(total),
                last: None,
            };
            let deadline = Instant::now() + PHASE_LIMIT;
            while got.latencies.len() < total && Instant::now() < deadline {
                let text = ws.try_recv_text().await?;
                let now = SystemTime::now();
                // Only what is measured is parsed (no tree of the whole
                // frame): 1,000 receivers share the 2 cores with chatpool.
                let frame: Frame<'_> =
                    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                let Some(message) = frame.message.filter(|_| frame.kind == "message") else {
                    continue;
                };
                let created = chrono::DateTime::parse_from_rfc3339(message.created_at)
                    .map_err(|e| format!("created_at: {e}"))?;
                let created: SystemTime = created.with_timezone(&chrono::Utc).into();
                got.latencies
                    .push(now.duration_since(created).unwrap_or_default());
                got.last = Some(Instant::now());
            }
            ws.close().await;
            Ok::<_, String>(got)
        }));
    }
    tokio::time::timeout(PHASE_LIMIT, barrier.wait())
        .await
        .expect("every receiver joined in time");

    let mut sender = ws::open(server.addr, &users[0].token)
        .await
        .expect("the sender connects");
    let start = Instant::now();
    let cpu = Cpu::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
    let mut send_failures = 0;
    for i in 0..total {
        ticks.tick().await;
        let frame = json!({"type": "send", "room_id": room, "body": format!("fan {i}"), "client_id": format!("fan-{i}")});
        // The sender joined nothing: its only frames are the acks.
        let acked = async {
            sender.try_send_json(&frame).await?;
            let ack = sender.try_recv_json().await?;
            if ack["type"] == "ack" {
                Ok(())
            } else {
                Err(format!("send answered {ack}"))
            }
        };
        if acked.await.is_err() {
            send_failures += 1;
        }
    }
    let mut latencies = Vec::with_capacity(sockets * total);
    let mut last = None;
    let mut failures = Vec::new();
    for r in receivers {
        match tokio::time::timeout(PHASE_LIMIT, r).await {
            Ok(Ok(Ok(got))) => {
                latencies.extend(got.latencies);
                last = last.max(got.last);
            }
            Ok(Ok(Err(e))) => failures.push(e),
            Ok(Err(e)) => failures.push(format!("task: {e}")),
            Err(_) => failures.push("receiver over its time bound".into()),
        }
    }
    let cpu = cpu.since();
    sender.close().await;
    shut_down(server).await;

    let delivered = latencies.len();
    let wall = last.map_or(0.0, |t| (t - start).as_secs_f64());
    let p = Percentiles::of(&mut latencies);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### e. Wide fan-out (connection_limit=10)\n\n\
         One room, {sockets} joined sockets, one sender at {per_sec} messages/s for {secs} s \
         ({total} messages, {} deliveries expected)\n\n\
         | metric | value |\n| --- | --- |\n\
         | deliveries | {delivered} |\n\
         | **commit → delivery p50 / p95 / p99 / max** | **{}** |\n\
         | deliveries/s (first send to last delivery, {wall:.2} s) | {:.0} |\n\
         | CPU | {cpu} |\n\
         | failures | {} receivers, {send_failures} sends |",
        sockets * total,
        p.row(),
        rate(delivered as f64, wall),
        failures.len(),
    );
    for f in failures.iter().take(3) {
        let _ = writeln!(s, "\n- failure: {f}");
    }
    s
}
