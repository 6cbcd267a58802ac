//! Scenarios a and b: WebSocket send throughput, ack latency and fan-out,
//! with a comfortable pool and with one under pressure.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpool::testkit::seed::{seed_room, seed_users};
use chatpool::testkit::ws::{self, FRAME_WAIT};
use chatpool::testkit::Role;
use serde_json::json;
use tokio::sync::{Barrier, Semaphore};

use crate::measure::{
    env_num, per, pgbench, rate, reset_statements, sample_connections, statements, Cpu, Percentiles,
};
use crate::{shut_down, Bench, PHASE_LIMIT};

/// Sizes of the send scenarios.
pub struct SendParams {
    sockets: usize,
    rooms: usize,
    messages: usize,
}

impl SendParams {
    /// `BENCH_SOCKETS`, `BENCH_ROOMS` and `BENCH_MESSAGES`, or the defaults.
    pub fn from_env() -> Self {
        let p = SendParams {
            sockets: env_num("BENCH_SOCKETS", 200),
            rooms: env_num("BENCH_ROOMS", 20),
            messages: env_num("BENCH_MESSAGES", 50),
        };
        assert!(
            p.rooms >= 1 && p.sockets >= p.rooms,
            "need sockets >= rooms >= 1"
        );
        p
    }
}

/// What one sending socket saw.
#[derive(Default)]
struct SenderStats {
    latencies: Vec<Duration>,
    busy_retries: u64,
    deliveries: u64,
    last_ack: Option<Instant>,
    last_delivery: Option<Instant>,
}

/// One socket: join `room`, wait for everyone, send `m` messages one after the
/// other's ack, then read until all `expected` room messages have arrived.
#[allow(clippy::too_many_arguments)]
async fn sender(
    addr: SocketAddr,
    token: String,
    room: i64,
    idx: usize,
    m: usize,
    expected: u64,
    barrier: Arc<Barrier>,
    connecting: Arc<Semaphore>,
) -> Result<SenderStats, String> {
    let joined = async {
        // Bound concurrent handshakes (released once joined).
        let _permit = connecting
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        ws::open_joined(addr, &token, room).await
    }
    .await;
    // Everyone reaches the barrier, failed or not, so nobody waits forever.
    barrier.wait().await;
    let mut ws = joined?;
    let mut stats = SenderStats {
        latencies: Vec::with_capacity(m),
        ..SenderStats::default()
    };
    let deadline = Instant::now() + PHASE_LIMIT;
    for i in 0..m {
        let client_id = format!("b{idx}-{i}");
        let frame = json!({"type": "send", "room_id": room, "body": format!("message {i} from {idx}"), "client_id": client_id});
        let t0 = Instant::now();
        ws.try_send_json(&frame).await?;
        loop {
            if Instant::now() > deadline {
                return Err("send phase over its time bound".into());
            }
            let v = ws.try_recv_json().await?;
            match v["type"].as_str() {
                Some("message") => {
                    stats.deliveries += 1;
                    stats.last_delivery = Some(Instant::now());
                }
                Some("ack") if v["client_id"] == client_id.as_str() => {
                    let now = Instant::now();
                    stats.latencies.push(now - t0);
                    stats.last_ack = Some(now);
                    break;
                }
                Some("error") if v["code"] == "db_busy" && v["client_id"] == client_id.as_str() => {
                    stats.busy_retries += 1;
                    ws.try_send_json(&frame).await?;
                }
                _ => return Err(format!("unexpected frame {v}")),
            }
        }
    }
    while stats.deliveries < expected {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {expected} deliveries in time",
                stats.deliveries
            ));
        }
        let v = ws.try_recv_json().await?;
        if v["type"] == "message" {
            stats.deliveries += 1;
            stats.last_delivery = Some(Instant::now());
        }
    }
    ws.close().await;
    Ok(stats)
}

/// Scenarios a and b: WebSocket send throughput, ack latency and fan-out.
pub async fn scenario_send(bench: &Bench<'_>, p: &SendParams, connection_limit: u32) -> String {
    let server = bench.start_server(connection_limit).await;
    let users = seed_users(
        &server,
        &format!("send{connection_limit}u"),
        p.sockets,
        Role::Member,
    )
    .await;
    // Socket i is in room i % rooms; each room has sockets/rooms (±1) members.
    let mut rooms = Vec::with_capacity(p.rooms);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); p.rooms];
    for i in 0..p.sockets {
        members[i % p.rooms].push(i);
    }
    for group in &members {
        let ids: Vec<i64> = group.iter().map(|&i| users[i].id).collect();
        rooms.push(seed_room(&server, ids[0], &ids[1..]).await);
    }
    // An A/B knob: the send path without the search index's upkeep.
    if std::env::var_os("BENCH_SEND_NO_SEARCH_INDEX").is_some() {
        chatpool::testkit::pg::sql_client(&server.db.url, crate::BENCH_APP)
            .await
            .batch_execute("DROP INDEX messages_search_idx")
            .await
            .expect("drop the search index");
    }
    let wait_sum0 = server.metric("chatpool_db_pool_wait_seconds_sum").await;
    let wait_cnt0 = server.metric("chatpool_db_pool_wait_seconds_count").await;
    let busy0 = server.metric("chatpool_db_pool_timeouts_total").await;
    let db = server.db.clone();
    reset_statements(bench.admin).await;

    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler = sample_connections(bench.admin_url, stop_sampler.clone());
    let barrier = Arc::new(Barrier::new(p.sockets + 1));
    let connecting = Arc::new(Semaphore::new(50));
    let mut tasks = Vec::with_capacity(p.sockets);
    for (i, user) in users.iter().enumerate() {
        let room_idx = i % p.rooms;
        let expected = (members[room_idx].len() * p.messages) as u64;
        let (addr, token, room, barrier, m) = (
            server.addr,
            user.token.clone(),
            rooms[room_idx],
            barrier.clone(),
            p.messages,
        );
        let connecting = connecting.clone();
        tasks.push(tokio::spawn(sender(
            addr, token, room, i, m, expected, barrier, connecting,
        )));
    }
    tokio::time::timeout(PHASE_LIMIT, barrier.wait())
        .await
        .expect("every socket connected and joined in time");
    let start = Instant::now();
    let cpu = Cpu::now();
    let mut all = SenderStats::default();
    let mut failures = Vec::new();
    for t in tasks {
        match tokio::time::timeout(PHASE_LIMIT + FRAME_WAIT, t).await {
            Ok(Ok(Ok(s))) => {
                all.latencies.extend(s.latencies);
                all.busy_retries += s.busy_retries;
                all.deliveries += s.deliveries;
                all.last_ack = all.last_ack.max(s.last_ack);
                all.last_delivery = all.last_delivery.max(s.last_delivery);
            }
            Ok(Ok(Err(e))) => failures.push(e),
            Ok(Err(e)) => failures.push(format!("task: {e}")),
            Err(_) => failures.push("task over its time bound".into()),
        }
    }
    let (cpu, spent) = cpu.finish();
    let statements = statements(bench.admin, &db.name).await;
    stop_sampler.store(true, Ordering::Relaxed);
    let sampled = sampler.await.expect("sampler");
    let wait_sum = server.metric("chatpool_db_pool_wait_seconds_sum").await - wait_sum0;
    let wait_cnt = server.metric("chatpool_db_pool_wait_seconds_count").await - wait_cnt0;
    let busy = server.metric("chatpool_db_pool_timeouts_total").await - busy0;
    let pool_max = server.pool_status().max_size;
    shut_down(server).await;
    // The ceiling: the one-message send transaction chatpool ran before group
    // commit, straight from pgbench, on the same database and rooms, with as
    // many connections as the pool had.
    let secs = env_num("BENCH_PGBENCH_SECS", 10) as u64;
    let script = pgbench_script(p.rooms);
    let url = db.url.clone();
    let ceiling = tokio::task::spawn_blocking(move || pgbench(&url, pool_max, secs, &script))
        .await
        .expect("pgbench task");
    drop(db);

    let acked = all.latencies.len();
    let send_secs = all.last_ack.map_or(0.0, |t| (t - start).as_secs_f64());
    let fan_secs = all.last_delivery.map_or(0.0, |t| (t - start).as_secs_f64());
    let lat = Percentiles::of(&mut all.latencies);
    let expected_deliveries: usize = members.iter().map(|g| g.len() * g.len() * p.messages).sum();
    let mut s = String::new();
    let title = if connection_limit == 3 {
        "b. WebSocket send under pool pressure"
    } else {
        "a. WebSocket send throughput and ack latency"
    };
    let _ = writeln!(
        s,
        "### {title} (connection_limit={connection_limit})\n\n\
         {} sockets in {} rooms, {} messages each, sent back-to-back after each ack\n\n\
         | metric | value |\n| --- | --- |\n\
         | messages acked (committed) | {acked} of {} |\n\
         | send phase | {send_secs:.2} s |\n\
         | **throughput** | **{:.0} messages/s** |\n\
         | ack latency p50 / p95 / p99 / max | {} |\n\
         | `db_busy` retries | {} |\n\
         | fan-out deliveries | {} of {expected_deliveries} in {fan_secs:.2} s = **{:.0} deliveries/s** |\n\
         | pool waits (server `chatpool_db_pool_wait_seconds`) | {wait_cnt:.0}, mean {:.2} ms |\n\
         | server `db_busy` (`chatpool_db_pool_timeouts_total`) | {busy:.0} |\n\
         | max `application_name=chatpool` connections ({} samples of `pg_stat_activity`) | {} (limit {connection_limit}, pool max_size {pool_max}) |\n\
         | mean pooled connections in a transaction / of them waiting on a lock (the room row) | {:.1} / {:.1} |\n\
         | CPU during the send phase | {cpu} |\n\
         | **CPU per ack: chatpool alone** / chatpool + bench clients / PostgreSQL | **{:.3} ms** / {:.3} ms / {:.3} ms |\n\
         | statements per ack (`pg_stat_statements`, `BEGIN`/`COMMIT` included) | {} |\n\
         | pgbench ceiling: the one-message transaction, {pool_max} connections, {secs} s | {} |\n\
         | **acks/s ÷ pgbench ceiling** | **{}** |\n\
         | failures | {} |",
        p.sockets,
        p.rooms,
        p.messages,
        p.sockets * p.messages,
        rate(acked as f64, send_secs),
        lat.row(),
        all.busy_retries,
        all.deliveries,
        rate(all.deliveries as f64, fan_secs),
        if wait_cnt > 0.0 { wait_sum / wait_cnt * 1e3 } else { 0.0 },
        sampled.samples,
        sampled.max,
        sampled.mean_in_tx,
        sampled.mean_lock_wait,
        spent.server * 1e3 / (acked.max(1) as f64),
        spent.this * 1e3 / (acked.max(1) as f64),
        spent.postgres * 1e3 / (acked.max(1) as f64),
        per(statements, acked as f64),
        ceiling.map_or("n/a".to_owned(), |t| format!("{t:.0} TPS")),
        ceiling.map_or("n/a".to_owned(), |t| format!("{:.2}", rate(acked as f64, send_secs) / t)),
        failures.len(),
    );
    for f in failures.iter().take(5) {
        let _ = writeln!(s, "\n- failure: {f}");
    }
    s
}

/// The send transaction of a chatpool without group commit, as pgbench
/// runs it: visibility, the `client_id` lookup, the next seq and the insert,
/// the `NOTIFY`, in one transaction per message. Rooms `1..=rooms` are the
/// scenario's (a fresh database numbers them from 1); the author is each
/// room's creator, a member.
fn pgbench_script(rooms: usize) -> String {
    format!(
        "\\set r random(1, {rooms})\n\
         BEGIN;\n\
         SET LOCAL statement_timeout = 5000;\n\
         SELECT EXISTS (SELECT 1 FROM room_members m JOIN rooms r ON r.id = m.room_id \
             WHERE m.room_id = :r AND m.user_id = r.created_by);\n\
         SELECT id FROM messages WHERE author_id = (SELECT created_by FROM rooms WHERE id = :r) \
             AND client_id = 'pgbench-' || :client_id || '-' || random();\n\
         WITH bumped AS (UPDATE rooms SET last_seq = last_seq + 1 WHERE id = :r \
             RETURNING id, last_seq, created_by) \
             INSERT INTO messages (room_id, seq, author_id, body, created_at) \
             SELECT id, last_seq, created_by, 'pgbench message', clock_timestamp() FROM bumped;\n\
         SELECT pg_notify('chatpool_events', '[]');\n\
         COMMIT;\n"
    )
}
