//! Load benchmark for chatpool: throughput, latency and memory targets,
//! measured on a throwaway embedded PostgreSQL with chatpool in-process.
//!
//! ```sh
//! cargo bench --bench load                      # every scenario
//! cargo bench --bench load -- send idle         # only some of them
//! BENCH_REPORT=target/bench-load.md cargo bench --bench load   # also write the markdown
//! ```
//!
//! Scenarios (positional arguments; none means all, in this order):
//! - `send`: `BENCH_SOCKETS` (200) WebSockets in `BENCH_ROOMS` (20) rooms each
//!   send `BENCH_MESSAGES` (50) messages back-to-back (next after the ack,
//!   `db_busy` retried with the same `client_id`), `connection_limit=10`.
//! - `send-pressure`: the same with `connection_limit=3`.
//! - `idle`: server RSS growth per idle authenticated WebSocket, at each count
//!   of `BENCH_IDLE` (`2000,5000`); the clients run in a child process (this
//!   binary re-executed with `CHATPOOL_BENCH_CHILD=idle`), so the RSS read is
//!   the server's alone.
//! - `history`: `GET /api/rooms/{id}/messages?limit=50` latest page and
//!   `before_seq` paging on a room of `BENCH_HISTORY_MESSAGES` (100000)
//!   messages with `BENCH_READERS` (50) concurrent readers, plus `EXPLAIN`.
//!
//! Each scenario prints a markdown block (what `docs/benchmarks.md` quotes).
//! All traffic goes to 127.0.0.1 and to PostgreSQL's Unix socket; every loop
//! is bounded in count and time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpool::auth;
use chatpool::config::Settings;
use chatpool::embedded::{EmbeddedOptions, EmbeddedPostgres};
use chatpool::error::ApiError;
use chatpool::startup::Application;
use chatpool::state::AppState;
use chatpool::store;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Barrier, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// `application_name` of the bench's own PostgreSQL connections.
const BENCH_APP: &str = "chatpool-bench";
/// Longest wait for any one frame or HTTP response.
const FRAME_WAIT: Duration = Duration::from_secs(20);
/// Bound on one whole scenario's traffic phase.
const PHASE_LIMIT: Duration = Duration::from_secs(120);
/// Env var that turns this binary into the idle-socket client process.
const CHILD_ENV: &str = "CHATPOOL_BENCH_CHILD";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn main() {
    ensure_open_files(16_384);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if std::env::var(CHILD_ENV).as_deref() == Ok("idle") {
        rt.block_on(idle_child());
        return;
    }
    // `cargo bench` passes `--bench`; positional words pick scenarios.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = ["send", "send-pressure", "idle", "history"];
    for p in &picked {
        assert!(
            all.contains(&p.as_str()),
            "unknown scenario {p:?}; known: {all:?}"
        );
    }
    let run: Vec<&str> = all
        .iter()
        .copied()
        .filter(|s| picked.is_empty() || picked.iter().any(|p| p == s))
        .collect();
    let report = rt.block_on(run_all(&run));
    println!("{report}");
    if let Ok(path) = std::env::var("BENCH_REPORT") {
        std::fs::write(&path, &report).expect("write BENCH_REPORT");
        eprintln!("report written to {path}");
    }
}

/// Starts PostgreSQL, runs the scenarios, stops PostgreSQL; returns the markdown.
async fn run_all(scenarios: &[&str]) -> String {
    let dir = tempfile::Builder::new()
        .prefix("chatpool-bench-")
        .tempdir()
        .expect("tempdir");
    // As root PostgreSQL runs as `postgres`, which must traverse this directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let opts = EmbeddedOptions {
        data_dir: dir.path().join("data"),
        max_connections: 100,
    };
    let started = Instant::now();
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts))
        .await
        .expect("start task")
        .expect("embedded PostgreSQL starts");
    let pg_url = pg.url(EmbeddedPostgres::DATABASE);
    let admin = pg_connect(&pg_url).await;
    let version: String = admin
        .query_one("SHOW server_version", &[])
        .await
        .expect("version")
        .get(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Run\n\n- cores: {}, memory: {}, PostgreSQL {version} (embedded, default settings: fsync and synchronous_commit on), {}\n- PostgreSQL started in {:.1} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total(),
        rustc_version(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{out}");

    let send = SendParams::from_env();
    for scenario in scenarios {
        let t = Instant::now();
        eprintln!("== scenario {scenario}");
        let block = match *scenario {
            "send" => scenario_send(&pg_url, &admin, &send, 10).await,
            "send-pressure" => scenario_send(&pg_url, &admin, &send, 3).await,
            "idle" => scenario_idle(&pg_url, &admin).await,
            "history" => scenario_history(&pg_url, &admin).await,
            _ => unreachable!(),
        };
        let _ = writeln!(
            out,
            "{block}\n_(scenario wall time {:.1} s)_\n",
            t.elapsed().as_secs_f64()
        );
        eprintln!("{block}");
    }
    drop(admin);
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .expect("stop task")
        .expect("embedded PostgreSQL stops");
    drop(dir);
    out
}

// ---------------------------------------------------------------- server

/// chatpool running in this process, started as the tests start it.
struct Server {
    addr: SocketAddr,
    state: AppState,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// `Application::build` on `pg_url?connection_limit=N`, listening on 127.0.0.1:0.
    async fn start(pg_url: &str, connection_limit: u32) -> Server {
        let mut env = HashMap::new();
        env.insert(
            "DATABASE_URL".to_owned(),
            format!("{pg_url}?connection_limit={connection_limit}"),
        );
        env.insert("CHATPOOL_LISTEN".to_owned(), "127.0.0.1:0".to_owned());
        let settings = Settings::from_lookup(None, |k| env.get(k).cloned()).expect("settings");
        let app = Application::build(settings).await.expect("app builds");
        let addr = app.local_addr();
        let state = app.state().clone();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        Server {
            addr,
            state,
            stop,
            task,
        }
    }

    /// Graceful shutdown; panics if it fails.
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("shutdown within 30 s")
            .expect("server task")
            .expect("clean shutdown");
    }

    /// Users `{prefix}{i}` with one token each: `(id, token)`, 500 per transaction.
    async fn seed_users(&self, prefix: &str, n: usize) -> Vec<(i64, String)> {
        let mut out = Vec::with_capacity(n);
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        for chunk in names.chunks(500) {
            let chunk = chunk.to_vec();
            let rows = self
                .state
                .db()
                .transaction(move |conn| {
                    async move {
                        let mut rows = Vec::with_capacity(chunk.len());
                        for username in &chunk {
                            let user = store::users::insert(
                                conn,
                                &store::users::NewUser {
                                    username,
                                    display_name: username,
                                    role: chatpool::domain::Role::Member,
                                    password_hash: "not-a-hash",
                                },
                            )
                            .await?
                            .ok_or_else(|| ApiError::Conflict("username is taken".into()))?;
                            let (token, hash) = auth::new_token();
                            store::tokens::insert(conn, user.id, &hash).await?;
                            rows.push((user.id, token));
                        }
                        Ok::<_, ApiError>(rows)
                    }
                    .boxed()
                })
                .await
                .expect("users seeded");
            out.extend(rows);
        }
        out
    }

    /// A room of `creator` and `members`; its id.
    async fn seed_room(&self, creator: i64, members: Vec<i64>) -> i64 {
        self.state
            .db()
            .transaction(move |conn| {
                async move {
                    Ok::<_, ApiError>(
                        store::rooms::create(conn, "bench room", creator, &members).await?,
                    )
                }
                .boxed()
            })
            .await
            .expect("room seeded")
            .id
    }

    /// A counter or histogram `_sum`/`_count` from `/metrics` (unlabelled lines).
    async fn metric(&self, http: &reqwest::Client, name: &str) -> f64 {
        let text = http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum()
    }
}

/// A tokio-postgres connection tagged `application_name=chatpool-bench`.
async fn pg_connect(pg_url: &str) -> tokio_postgres::Client {
    let url = format!("{pg_url}?application_name={BENCH_APP}&connect_timeout=10");
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await
    .expect("connect within 30 s")
    .expect("bench connection");
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("bench connection: {e}");
        }
    });
    client
}

/// Connections tagged `application_name=chatpool` right now.
async fn chatpool_connections(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chatpool'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Waits (up to 10 s) until no chatpool connection is left from a previous scenario.
async fn wait_no_chatpool_connections(admin: &tokio_postgres::Client) {
    let until = Instant::now() + Duration::from_secs(10);
    while chatpool_connections(admin).await > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the `pg_stat_activity` sampler saw.
struct Sampled {
    /// Most `application_name=chatpool` connections at once.
    max: i64,
    /// Samples taken.
    samples: u64,
    /// Mean chatpool connections in a transaction (`active` or `idle in transaction`).
    mean_in_tx: f64,
    /// Mean chatpool connections waiting for a lock (`wait_event_type = 'Lock'`).
    mean_lock_wait: f64,
}

/// Samples chatpool's connections every 20 ms until stopped.
fn sample_connections(pg_url: &str, stop: Arc<AtomicBool>) -> JoinHandle<Sampled> {
    let pg_url = pg_url.to_owned();
    tokio::spawn(async move {
        let client = pg_connect(&pg_url).await;
        let (mut max, mut samples, mut in_tx, mut lock) = (0, 0u64, 0i64, 0i64);
        let until = Instant::now() + PHASE_LIMIT * 2;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            let row = client
                .query_one(
                    "SELECT count(*), \
                     count(*) FILTER (WHERE state IN ('active', 'idle in transaction') AND query NOT LIKE 'LISTEN%'), \
                     count(*) FILTER (WHERE wait_event_type = 'Lock') \
                     FROM pg_stat_activity WHERE application_name = 'chatpool'",
                    &[],
                )
                .await
                .expect("pg_stat_activity");
            max = max.max(row.get::<_, i64>(0));
            in_tx += row.get::<_, i64>(1);
            lock += row.get::<_, i64>(2);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let per = |n: i64| n as f64 / samples.max(1) as f64;
        Sampled {
            max,
            samples,
            mean_in_tx: per(in_tx),
            mean_lock_wait: per(lock),
        }
    })
}

/// CPU seconds used so far by this process and by all `postgres` processes.
#[derive(Clone, Copy)]
struct Cpu {
    at: Instant,
    this: f64,
    postgres: f64,
    /// Busy seconds of the whole machine (`/proc/stat`, all processes).
    machine: f64,
}

impl Cpu {
    fn now() -> Cpu {
        // /proc reports utime and stime in USER_HZ, 100 on Linux.
        let secs = |stat: &str| -> Option<(String, f64)> {
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some((comm, ticks / 100.0))
        };
        let this = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| secs(&s))
            .map_or(0.0, |(_, t)| t);
        let mut postgres = 0.0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if let Some((comm, t)) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| secs(&s))
            {
                if comm == "postgres" {
                    postgres += t;
                }
            }
        }
        // cpu  user nice system idle iowait irq softirq steal ...
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let f: Vec<f64> = s
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                Some(
                    [0, 1, 2, 5, 6, 7]
                        .iter()
                        .filter_map(|&i| f.get(i))
                        .sum::<f64>()
                        / 100.0,
                )
            })
            .unwrap_or(0.0);
        Cpu {
            at: Instant::now(),
            this,
            postgres,
            machine,
        }
    }

    /// `"bench process X% + postgres Y% of 2 cores"` since `self`.
    fn since(self) -> String {
        let end = Cpu::now();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = (end.at - self.at).as_secs_f64().max(1e-9);
        let pct = |d: f64| d / (wall * cores) * 100.0;
        format!(
            "chatpool + bench clients {:.0}%, PostgreSQL {:.0}%, whole machine {:.0}% of {cores} cores ({:.1} s wall)",
            pct(end.this - self.this),
            pct(end.postgres - self.postgres),
            pct(end.machine - self.machine),
            wall
        )
    }
}

// ---------------------------------------------------------------- WebSocket client

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

/// Connects to `/ws?token=` (retrying HTTP 503 up to 50 times) and reads `hello`.
async fn ws_connect(addr: SocketAddr, token: &str) -> Result<Ws, String> {
    let url = format!("ws://{addr}/ws?token={token}");
    for _ in 0..50 {
        let attempt = tokio::time::timeout(
            FRAME_WAIT,
            tokio_tungstenite::connect_async_with_config(&url, Some(client_config()), true),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?;
        match attempt {
            Ok((mut ws, _)) => {
                let hello = recv_json(&mut ws).await?;
                if hello["type"] != "hello" {
                    return Err(format!("first frame {hello}"));
                }
                return Ok(ws);
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("upgrade failed: {e}")),
        }
    }
    Err("upgrade still refused (503) after 50 attempts".into())
}

/// The next text frame as JSON (control frames skipped), within [`FRAME_WAIT`].
async fn recv_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let frame = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .map_err(|_| "no frame within 20 s".to_owned())?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).map_err(|e| e.to_string())
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return Err(format!("expected a text frame, got {other:?}")),
        }
    }
}

async fn send_json(ws: &mut Ws, value: &Value) -> Result<(), String> {
    ws.send(Message::text(value.to_string()))
        .await
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- a, b: send

/// Sizes of the send scenarios.
struct SendParams {
    sockets: usize,
    rooms: usize,
    messages: usize,
}

impl SendParams {
    fn from_env() -> Self {
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
        let mut ws = ws_connect(addr, &token).await?;
        send_json(&mut ws, &json!({"type": "join", "room_id": room})).await?;
        let joined = recv_json(&mut ws).await?;
        if joined["type"] != "joined" {
            return Err(format!("join answered {joined}"));
        }
        Ok(ws)
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
        send_json(&mut ws, &frame).await?;
        loop {
            if Instant::now() > deadline {
                return Err("send phase over its time bound".into());
            }
            let v = recv_json(&mut ws).await?;
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
                    send_json(&mut ws, &frame).await?;
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
        let v = recv_json(&mut ws).await?;
        if v["type"] == "message" {
            stats.deliveries += 1;
            stats.last_delivery = Some(Instant::now());
        }
    }
    let _ = ws.close(None).await;
    Ok(stats)
}

/// Scenarios a and b: WebSocket send throughput, ack latency and fan-out.
async fn scenario_send(
    pg_url: &str,
    admin: &tokio_postgres::Client,
    p: &SendParams,
    connection_limit: u32,
) -> String {
    wait_no_chatpool_connections(admin).await;
    let server = Server::start(pg_url, connection_limit).await;
    let users = server
        .seed_users(&format!("send{connection_limit}u"), p.sockets)
        .await;
    // Socket i is in room i % rooms; each room has sockets/rooms (±1) members.
    let mut rooms = Vec::with_capacity(p.rooms);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); p.rooms];
    for i in 0..p.sockets {
        members[i % p.rooms].push(i);
    }
    for group in &members {
        let ids: Vec<i64> = group.iter().map(|&i| users[i].0).collect();
        rooms.push(server.seed_room(ids[0], ids[1..].to_vec()).await);
    }
    let http = reqwest::Client::new();
    let wait_sum0 = server
        .metric(&http, "chatpool_db_pool_wait_seconds_sum")
        .await;
    let wait_cnt0 = server
        .metric(&http, "chatpool_db_pool_wait_seconds_count")
        .await;
    let busy0 = server
        .metric(&http, "chatpool_db_pool_timeouts_total")
        .await;

    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler = sample_connections(pg_url, stop_sampler.clone());
    let barrier = Arc::new(Barrier::new(p.sockets + 1));
    let connecting = Arc::new(Semaphore::new(50));
    let mut tasks = Vec::with_capacity(p.sockets);
    for (i, (_, token)) in users.iter().enumerate() {
        let room_idx = i % p.rooms;
        let expected = (members[room_idx].len() * p.messages) as u64;
        let (addr, token, room, barrier, m) = (
            server.addr,
            token.clone(),
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
    let cpu = cpu.since();
    stop_sampler.store(true, Ordering::Relaxed);
    let sampled = sampler.await.expect("sampler");
    let wait_sum = server
        .metric(&http, "chatpool_db_pool_wait_seconds_sum")
        .await
        - wait_sum0;
    let wait_cnt = server
        .metric(&http, "chatpool_db_pool_wait_seconds_count")
        .await
        - wait_cnt0;
    let busy = server
        .metric(&http, "chatpool_db_pool_timeouts_total")
        .await
        - busy0;
    let pool_max = server.state.db().pool().status().max_size;
    server.shutdown().await;

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
        failures.len(),
    );
    for f in failures.iter().take(5) {
        let _ = writeln!(s, "\n- failure: {f}");
    }
    s
}

// ---------------------------------------------------------------- c: idle memory

/// Scenario c: server RSS per idle authenticated WebSocket.
async fn scenario_idle(pg_url: &str, admin: &tokio_postgres::Client) -> String {
    let counts: Vec<usize> = std::env::var("BENCH_IDLE")
        .unwrap_or_else(|_| "2000,5000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("BENCH_IDLE: comma-separated counts")
        })
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0);
    wait_no_chatpool_connections(admin).await;
    let server = Server::start(pg_url, 10).await;
    let users = server.seed_users("idleu", max).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens_path = dir.path().join("tokens");
    let tokens: Vec<&str> = users.iter().map(|(_, t)| t.as_str()).collect();
    std::fs::write(&tokens_path, tokens.join("\n")).expect("tokens file");

    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(CHILD_ENV, "idle")
        .env("BENCH_ADDR", server.addr.to_string())
        .env("BENCH_TOKENS", &tokens_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("client process");
    let mut to_child = child.stdin.take().expect("stdin");
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Let the freshly started server settle (pool warm, allocator arenas in use).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib();
    let mut s = format!(
        "### c. Memory per idle WebSocket (connection_limit=10)\n\n\
         Idle authenticated sockets (`hello` received, nothing joined) held by a separate client \
         process; RSS is the server process's own `VmRSS` (chatpool in-process, no clients in it). \
         Baseline after start-up and seeding: {base} KiB.\n\n\
         | open sockets | server RSS | growth from baseline | per socket (from baseline) | per socket (from previous step) | client process RSS per socket | connect time |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    let (mut prev_n, mut prev_rss) = (0usize, base);
    let mut ok = true;
    for &n in &counts {
        let t = Instant::now();
        writeln!(to_child, "open {n}").expect("to child");
        to_child.flush().expect("flush");
        let reply = tokio::time::timeout(PHASE_LIMIT, line_rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "no reply".into());
        let connect_secs = t.elapsed().as_secs_f64();
        let parts: Vec<&str> = reply.split_whitespace().collect();
        let (Some(&"opened"), Some(child_rss)) = (parts.first(), parts.get(2)) else {
            let _ = writeln!(s, "\nclient process failed at {n}: {reply}");
            ok = false;
            break;
        };
        let child_rss: u64 = child_rss.parse().unwrap_or(0);
        let until = Instant::now() + Duration::from_secs(30);
        while server.state.hub().session_count() < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sessions = server.state.hub().session_count();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib();
        let _ = writeln!(
            s,
            "| {n} (server sessions: {sessions}) | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.1} KiB | {:.1} KiB | {connect_secs:.1} s |",
            rss as f64 / 1024.0,
            (rss as f64 - base as f64) / 1024.0,
            (rss as f64 - base as f64) / n as f64,
            (rss as f64 - prev_rss as f64) / (n - prev_n) as f64,
            child_rss as f64 / n as f64,
        );
        (prev_n, prev_rss) = (n, rss);
    }
    let _ = writeln!(to_child, "close");
    drop(to_child);
    let exited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("wait task");
    let until = Instant::now() + Duration::from_secs(30);
    while server.state.hub().session_count() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    let _ = writeln!(
        s,
        "\nAfter the client process exited ({}): {} sessions left, server RSS {:.1} MiB{}.",
        exited.map_or_else(|e| e.to_string(), |st| st.to_string()),
        server.state.hub().session_count(),
        after as f64 / 1024.0,
        if ok { "" } else { " (run incomplete)" }
    );
    server.shutdown().await;
    s
}

/// The idle-socket client process: opens sockets on command, reports its RSS.
///
/// stdin: `open N` (hold N sockets in total) or `close`; stdout: `opened N RSS_KIB`.
async fn idle_child() {
    let addr: SocketAddr = std::env::var("BENCH_ADDR")
        .expect("BENCH_ADDR")
        .parse()
        .expect("address");
    let tokens: Vec<String> =
        std::fs::read_to_string(std::env::var("BENCH_TOKENS").expect("BENCH_TOKENS"))
            .expect("tokens file")
            .lines()
            .map(str::to_owned)
            .collect();
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut held: Vec<JoinHandle<()>> = Vec::new();
    let limit = Arc::new(Semaphore::new(64));
    while let Some(cmd) = tokio::time::timeout(PHASE_LIMIT * 2, cmd_rx.recv())
        .await
        .ok()
        .flatten()
    {
        let Some(n) = cmd
            .strip_prefix("open ")
            .and_then(|n| n.trim().parse::<usize>().ok())
        else {
            break;
        };
        let failed = Arc::new(AtomicI64::new(0));
        let mut opening = Vec::new();
        for token in tokens.iter().take(n).skip(held.len()) {
            let (token, limit, failed) = (token.clone(), limit.clone(), failed.clone());
            opening.push(tokio::spawn(async move {
                let permit = limit.acquire_owned().await.expect("semaphore");
                let ws = ws_connect(addr, &token).await;
                drop(permit);
                match ws {
                    Ok(ws) => Some(ws),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("idle client: {e}");
                        }
                        None
                    }
                }
            }));
        }
        for t in opening {
            if let Ok(Some(mut ws)) = t.await {
                // Keep reading so pings are answered; otherwise idle.
                held.push(tokio::spawn(async move {
                    while let Some(Ok(_)) = ws.next().await {}
                }));
            }
        }
        let failures = failed.load(Ordering::Relaxed);
        if failures > 0 {
            println!("failed {failures}");
        } else {
            println!("opened {} {}", held.len(), rss_kib());
        }
        let _ = std::io::stdout().flush();
    }
    for h in held {
        h.abort();
    }
}

// ---------------------------------------------------------------- d: history

/// Scenario d: history page latency on a large room, and its plan.
async fn scenario_history(pg_url: &str, admin: &tokio_postgres::Client) -> String {
    let n: i64 = env_num("BENCH_HISTORY_MESSAGES", 100_000) as i64;
    let readers = env_num("BENCH_READERS", 50);
    let per_reader = env_num("BENCH_PAGES", 40);
    wait_no_chatpool_connections(admin).await;
    let server = Server::start(pg_url, 10).await;
    let users = server.seed_users("histu", 2).await;
    let (author, token) = users[0].clone();
    let room = server.seed_room(author, vec![users[1].0]).await;
    // A second, smaller room so the plan has to pick rows by room_id.
    let other = server.seed_room(users[1].0, vec![]).await;
    let t = Instant::now();
    let bulk = "WITH r AS (UPDATE rooms SET last_seq = last_seq + $3 WHERE id = $1 RETURNING last_seq) \
         INSERT INTO messages (room_id, seq, author_id, body, created_at) \
         SELECT $1, s, $2, 'bulk message ' || s, now() FROM r, generate_series(r.last_seq - $3 + 1, r.last_seq) s";
    admin
        .execute(bulk, &[&room, &author, &n])
        .await
        .expect("bulk insert");
    admin
        .execute(bulk, &[&other, &users[1].0, &1000i64])
        .await
        .expect("bulk insert");
    let insert_secs = t.elapsed().as_secs_f64();
    admin
        .batch_execute("ANALYZE messages")
        .await
        .expect("analyze");

    // The server's query (store::messages::page), latest page and a before_seq page.
    let select = "SELECT m.id, m.room_id, m.seq, m.author_id, u.username, u.display_name, m.body, m.client_id, m.created_at \
                  FROM messages m JOIN users u ON u.id = m.author_id";
    let mut plans = String::new();
    for (label, filter) in [
        ("latest", "m.seq > 0".to_owned()),
        ("before_seq", format!("m.seq < {}", n / 2)),
    ] {
        let sql = format!(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) {select} WHERE m.room_id = {room} AND {filter} ORDER BY m.seq DESC LIMIT 51"
        );
        let _ = writeln!(
            plans,
            "-- {label}: ... WHERE m.room_id = {room} AND {filter} ORDER BY m.seq DESC LIMIT 51"
        );
        for msg in admin.simple_query(&sql).await.expect("explain") {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
                let _ = writeln!(plans, "{}", row.get(0).unwrap_or_default());
            }
        }
    }
    // The generic plan of the prepared statement, as the server may use after 5 executions.
    admin
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; \
             PREPARE bench_page(bigint, bigint, bigint) AS {select} WHERE m.room_id = $1 AND m.seq < $3 ORDER BY m.seq DESC LIMIT $2"
        ))
        .await
        .expect("prepare");
    let _ = writeln!(
        plans,
        "-- generic plan of the prepared before_seq query (plan_cache_mode = force_generic_plan)"
    );
    for msg in admin
        .simple_query(&format!(
            "EXPLAIN (COSTS OFF) EXECUTE bench_page({room}, 51, {})",
            n / 2
        ))
        .await
        .expect("explain generic")
    {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
            let _ = writeln!(plans, "{}", row.get(0).unwrap_or_default());
        }
    }
    admin
        .batch_execute("DEALLOCATE bench_page; RESET plan_cache_mode")
        .await
        .expect("deallocate");

    let http = reqwest::Client::builder()
        .timeout(FRAME_WAIT)
        .pool_max_idle_per_host(readers * 2)
        .build()
        .expect("http client");
    let base = format!("http://{}/api/rooms/{room}/messages", server.addr);
    // Warm-up: connections, prepared statements, caches.
    for _ in 0..20 {
        let _ = get_page(&http, &base, &token, "limit=50").await;
    }

    // Latest page, `per_reader` times per reader.
    let cpu = Cpu::now();
    let (latest, latest_secs, latest_fail) = run_readers(readers, |_| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let mut lat = Vec::with_capacity(per_reader);
            for _ in 0..per_reader {
                let t = Instant::now();
                let page = get_page(&http, &base, &token, "limit=50").await?;
                lat.push(t.elapsed());
                check_page(&page, n + 1)?;
            }
            Ok(lat)
        }
    })
    .await;

    let latest_cpu = cpu.since();
    // before_seq paging: reader i walks back from its own slice of the room.
    let cpu = Cpu::now();
    let slice = (n as usize / readers).max(50);
    let pages = per_reader.min(slice / 50);
    let (paging, paging_secs, paging_fail) = run_readers(readers, |i| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let mut lat = Vec::with_capacity(pages);
            let mut before = n + 1 - (i * slice) as i64;
            for _ in 0..pages {
                let t = Instant::now();
                let page = get_page(
                    &http,
                    &base,
                    &token,
                    &format!("limit=50&before_seq={before}"),
                )
                .await?;
                lat.push(t.elapsed());
                check_page(&page, before)?;
                before -= 50;
            }
            Ok(lat)
        }
    })
    .await;
    let paging_cpu = cpu.since();
    server.shutdown().await;

    let mut s = format!(
        "### d. HTTP history read (connection_limit=10)\n\n\
         Room of {n} messages (bulk-inserted with one `INSERT ... SELECT generate_series` in {insert_secs:.2} s), \
         {readers} concurrent readers over keep-alive connections, `limit=50`.\n\n\
         | query | requests | p50 / p95 / p99 / max | requests/s | failures | CPU |\n| --- | --- | --- | --- | --- | --- |\n"
    );
    for (label, mut lat, secs, fail, cpu) in [
        (
            "latest page `?limit=50`",
            latest,
            latest_secs,
            latest_fail,
            latest_cpu,
        ),
        (
            "`?limit=50&before_seq=N` paging",
            paging,
            paging_secs,
            paging_fail,
            paging_cpu,
        ),
    ] {
        let count = lat.len();
        let p = Percentiles::of(&mut lat);
        let _ = writeln!(
            s,
            "| {label} | {count} | {} | {:.0} | {} | {cpu} |",
            p.row(),
            rate(count as f64, secs),
            fail.len()
        );
        for f in fail.iter().take(3) {
            let _ = writeln!(s, "\n- failure: {f}");
        }
    }
    let _ = writeln!(s, "\n`EXPLAIN` of the server's query:\n\n```\n{}```", plans);
    s
}

/// Runs `readers` tasks made by `make(i)`; all latencies, wall seconds, failures.
async fn run_readers<F, Fut>(readers: usize, make: F) -> (Vec<Duration>, f64, Vec<String>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>, String>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..readers).map(|i| tokio::spawn(make(i))).collect();
    let (mut all, mut failures) = (Vec::new(), Vec::new());
    for t in tasks {
        match tokio::time::timeout(PHASE_LIMIT, t).await {
            Ok(Ok(Ok(lat))) => all.extend(lat),
            Ok(Ok(Err(e))) => failures.push(e),
            Ok(Err(e)) => failures.push(format!("task: {e}")),
            Err(_) => failures.push("reader over its time bound".into()),
        }
    }
    (all, start.elapsed().as_secs_f64(), failures)
}

async fn get_page(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
) -> Result<Value, String> {
    let resp = http
        .get(format!("{base}?{query}"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(body)
}

/// A full page of 50 consecutive seqs ending just below `below`.
fn check_page(page: &Value, below: i64) -> Result<(), String> {
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .ok_or("no messages array")?
        .iter()
        .filter_map(|m| m["seq"].as_i64())
        .collect();
    let want: Vec<i64> = (below - 50..below).collect();
    if seqs != want {
        return Err(format!(
            "page below {below}: seqs {:?}..{:?}",
            seqs.first(),
            seqs.last()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- helpers

/// Nearest-rank percentiles of a latency sample.
struct Percentiles {
    p50: Duration,
    p95: Duration,
    p99: Duration,
    max: Duration,
}

impl Percentiles {
    fn of(sample: &mut [Duration]) -> Self {
        sample.sort_unstable();
        let at = |q: f64| {
            if sample.is_empty() {
                Duration::ZERO
            } else {
                let rank = ((q * sample.len() as f64).ceil() as usize).clamp(1, sample.len());
                sample[rank - 1]
            }
        };
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: sample.last().copied().unwrap_or_default(),
        }
    }

    fn row(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} ms",
            ms(self.p50),
            ms(self.p95),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn rate(count: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v:?}"))
        })
        .unwrap_or(default)
}

/// This process's resident memory in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<f64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
        )
}

fn rustc_version() -> String {
    Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "rustc unknown".into(), |s| s.trim().to_owned())
}

/// Raises the soft open-files limit towards `wanted` with `prlimit`, as
/// tests/api/ws_support.rs does (both ends of thousands of sockets need fds).
fn ensure_open_files(wanted: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let numbers: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [soft, hard, ..] = numbers[..] else {
        return;
    };
    if soft >= wanted {
        return;
    }
    let target = wanted.min(hard);
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{hard}"))
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("warning: open-files limit is {soft} and prlimit could not raise it to {target}");
    }
}
