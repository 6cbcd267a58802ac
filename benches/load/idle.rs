//! Scenario c: server memory per idle joined WebSocket. The clients
//! live in a child process (this binary re-executed), so the server's RSS is
//! read without them.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpool::testkit::process::rss_kib;
use chatpool::testkit::seed::{seed_room, seed_users};
use chatpool::testkit::ws;
use chatpool::testkit::Role;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::{shut_down, Bench, PHASE_LIMIT};

/// Env var that turns this binary into the idle-socket client process.
const CHILD_ENV: &str = "CHATPOOL_BENCH_CHILD";

/// Whether this process is the idle-socket client (see [`idle_child`]).
pub fn is_child() -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok("idle")
}

/// Sockets per room in scenario c.
const ROOM_SIZE: usize = 100;

/// Scenario c: server RSS per idle joined WebSocket.
pub async fn scenario_idle(bench: &Bench<'_>) -> String {
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
    let server = bench.start_server(10).await;
    let users = seed_users(&server, "idleu", max, Role::Member).await;
    // Every socket joins its user's room: ROOM_SIZE users per room.
    let mut lines = Vec::with_capacity(users.len());
    for group in users.chunks(ROOM_SIZE) {
        let members: Vec<i64> = group[1..].iter().map(|u| u.id).collect();
        let room = seed_room(&server, group[0].id, &members).await;
        lines.extend(group.iter().map(|u| format!("{} {room}", u.token)));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens_path = dir.path().join("tokens");
    std::fs::write(&tokens_path, lines.join("\n")).expect("tokens file");

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
         Idle sockets, each joined to a room ({ROOM_SIZE} sockets per room, `joined` received), \
         held by a separate client process; RSS is the server process's own `VmRSS` (chatpool in-process, no clients in it). \
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
        while server.ws_sessions() < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sessions = server.ws_sessions();
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
    while server.ws_sessions() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    let _ = writeln!(
        s,
        "\nAfter the client process exited ({}): {} sessions left, server RSS {:.1} MiB{}.",
        exited.map_or_else(|e| e.to_string(), |st| st.to_string()),
        server.ws_sessions(),
        after as f64 / 1024.0,
        if ok { "" } else { " (run incomplete)" }
    );
    shut_down(server).await;
    s
}

/// The idle-socket client process: opens sockets on command, reports its RSS.
///
/// stdin: `open N` (hold N sockets in total) or `close`; stdout: `opened N RSS_KIB`.
pub async fn idle_child() {
    let addr: SocketAddr = std::env::var("BENCH_ADDR")
        .expect("BENCH_ADDR")
        .parse()
        .expect("address");
    let tokens: Vec<(String, i64)> =
        std::fs::read_to_string(std::env::var("BENCH_TOKENS").expect("BENCH_TOKENS"))
            .expect("tokens file")
            .lines()
            .filter_map(|line| {
                let (token, room) = line.split_once(' ')?;
                Some((token.to_owned(), room.parse().ok()?))
            })
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
        for (token, room) in tokens.iter().take(n).skip(held.len()) {
            let (token, room) = (token.clone(), *room);
            let (limit, failed) = (limit.clone(), failed.clone());
            opening.push(tokio::spawn(async move {
                let permit = limit.acquire_owned().await.expect("semaphore");
                let ws = ws::open_joined(addr, &token, room).await;
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
            if let Ok(Some(ws)) = t.await {
                // Keep reading so pings are answered; otherwise idle.
                held.push(tokio::spawn(ws.read_until_closed()));
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
