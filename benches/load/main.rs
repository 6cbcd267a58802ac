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
//! - `idle`: server RSS growth per idle WebSocket joined to a room, at each count
//!   of `BENCH_IDLE` (`2000,5000`); the clients run in a child process (this
//!   binary re-executed with `CHATPOOL_BENCH_CHILD=idle`), so the RSS read is
//!   the server's alone.
//! - `history`: `GET /api/rooms/{id}/messages?limit=50` latest page and
//!   `before_seq` paging on a room of `BENCH_HISTORY_MESSAGES` (100000)
//!   messages with `BENCH_READERS` (50) concurrent readers, plus `EXPLAIN`.
//! - `fanout`: one room with `BENCH_FANOUT_SOCKETS` (1000) joined sockets,
//!   one sender at `BENCH_FANOUT_RATE` (100) messages/s for
//!   `BENCH_FANOUT_SECS` (10) s: commit → delivery latency, deliveries/s.
//! - `search`: `GET /api/search` on a room of `BENCH_SEARCH_MESSAGES`
//!   (100000) messages, `BENCH_SEARCHERS` (20) × `BENCH_SEARCHES` (100) per
//!   query kind, the generic plans, and the trigram alternative measured on
//!   the same rows.
//!
//! `send` also runs pgbench with the one-message send transaction on the same
//! database (`BENCH_PGBENCH_SECS`, 10) for the ceiling; PostgreSQL runs with
//! `pg_stat_statements`, so statements per ack and per request are counted.
//! chatpool has no abuse limits yet; when it does, the bench turns them off
//! (`0`), as any load test of a trusted client would.
//!
//! Run by `cargo test` (no `--bench` argument), the binary is a smoke test:
//! every scenario at a tiny size, no timing asserted, failing only when a
//! scenario cannot run.
//!
//! Each scenario runs on a fresh database of the one cluster and prints a
//! markdown block (what `docs/benchmarks.md` quotes). The cluster, the server,
//! seeding and the clients come from `chatpool::testkit`, as in the tests;
//! this binary only measures. All traffic goes to 127.0.0.1 and to
//! PostgreSQL's Unix socket; every loop is bounded in count and time.

/// The server's allocator, as in the `chatpool` binary (the server runs in
/// this process), so memory figures are the production ones.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod fanout;
mod history;
mod idle;
mod measure;
mod search;
mod send;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpool::testkit::pg::sql_client;
use chatpool::testkit::process::raise_open_files;
use chatpool::testkit::{AppOptions, Cluster, ClusterOptions, TestApp};

use crate::measure::{mem_total, rustc_version};

/// `application_name` of the bench's own PostgreSQL connections.
const BENCH_APP: &str = "chatpool-bench";
/// Name of the server runtime's threads: chatpool runs on a runtime of its
/// own (as many workers as cores, like the binary), the bench clients on
/// another, so CPU can be told apart per thread (`measure::Cpu`). The
/// server's hashing threads are `chatpool-argon2-N`; both start `chatpool-`.
const SERVER_THREADS: &str = "chatpool-srv";

/// The server runtime (see [`SERVER_THREADS`]); never dropped.
static SERVER_RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();

/// Bound on one whole scenario's traffic phase.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

fn main() {
    if let Err(e) = raise_open_files(16_384) {
        eprintln!("warning: {e}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if idle::is_child() {
        rt.block_on(idle::idle_child());
        return;
    }
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREADS)
        // Blocking threads live through the run, so none takes its CPU time away.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("server runtime");
    assert!(SERVER_RUNTIME.set(server_rt).is_ok(), "one server runtime");
    // `cargo bench` passes `--bench`; positional words pick scenarios.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    if smoke {
        smoke_sizes();
    }
    let picked: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    let all = [
        "send",
        "send-pressure",
        "idle",
        "history",
        "fanout",
        "search",
    ];
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
    if smoke && report.contains("- failure:") {
        eprintln!("smoke run: a scenario reported failures");
        std::process::exit(1);
    }
    if let Ok(path) = std::env::var("BENCH_REPORT") {
        std::fs::write(&path, &report).expect("write BENCH_REPORT");
        eprintln!("report written to {path}");
    }
}

/// Sizes for the smoke run under `cargo test`, unless set explicitly.
fn smoke_sizes() {
    for (name, value) in [
        ("BENCH_SOCKETS", "20"),
        ("BENCH_ROOMS", "4"),
        ("BENCH_MESSAGES", "5"),
        ("BENCH_IDLE", "20,40"),
        ("BENCH_HISTORY_MESSAGES", "2000"),
        ("BENCH_READERS", "4"),
        ("BENCH_PAGES", "3"),
        ("BENCH_FANOUT_SOCKETS", "20"),
        ("BENCH_FANOUT_RATE", "20"),
        ("BENCH_FANOUT_SECS", "1"),
        ("BENCH_PGBENCH_SECS", "1"),
        ("BENCH_SEARCH_MESSAGES", "2000"),
        ("BENCH_SEARCHERS", "2"),
        ("BENCH_SEARCHES", "3"),
    ] {
        if std::env::var_os(name).is_none() {
            // Single-threaded still: nothing else reads the environment yet.
            std::env::set_var(name, value);
        }
    }
    eprintln!("smoke run (no --bench): tiny sizes, nothing timed is asserted");
}

/// Starts PostgreSQL, runs the scenarios, stops PostgreSQL; returns the markdown.
async fn run_all(scenarios: &[&str]) -> String {
    let started = Instant::now();
    // PostgreSQL's own defaults, as a deployment would run it.
    let options = ClusterOptions {
        max_connections: 100,
        durable: true,
        settings: Vec::new(),
    };
    let cluster = Arc::new(
        tokio::task::spawn_blocking(move || Cluster::start(options))
            .await
            .expect("start task"),
    );
    let admin_url = cluster.url(Cluster::DEFAULT_DATABASE);
    // pg_stat_statements counts every statement chatpool runs (a restart
    // loads it).
    let admin = sql_client(&admin_url, BENCH_APP).await;
    let available: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'",
            &[],
        )
        .await
        .expect("list extensions")
        .get(0);
    let admin = if available > 0 {
        admin
            .batch_execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            .await
            .expect("preload pg_stat_statements");
        drop(admin);
        let restarting = cluster.clone();
        tokio::task::spawn_blocking(move || restarting.start_again())
            .await
            .expect("restart task");
        sql_client(&admin_url, BENCH_APP).await
    } else {
        admin
    };
    if let Err(e) = admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
    {
        eprintln!("warning: no pg_stat_statements, statement counts are n/a: {e}");
    }
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

    let send = send::SendParams::from_env();
    for scenario in scenarios {
        let t = Instant::now();
        eprintln!("== scenario {scenario}");
        let bench = Bench {
            cluster: &cluster,
            admin: &admin,
            admin_url: &admin_url,
        };
        let block = match *scenario {
            "send" => send::scenario_send(&bench, &send, 10).await,
            "send-pressure" => send::scenario_send(&bench, &send, 3).await,
            "idle" => idle::scenario_idle(&bench).await,
            "history" => history::scenario_history(&bench).await,
            "fanout" => fanout::scenario_fanout(&bench).await,
            "search" => search::scenario_search(&bench).await,
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
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .expect("stop task");
    out
}

/// What every scenario gets: the cluster and a connection to it.
struct Bench<'a> {
    cluster: &'a Cluster,
    /// A harness connection to the cluster's default database.
    admin: &'a tokio_postgres::Client,
    /// Its URL, for more such connections (the sampler's).
    admin_url: &'a str,
}

impl Bench<'_> {
    /// chatpool on a fresh database with `connection_limit`, once the previous
    /// scenario's connections are gone.
    async fn start_server(&self, connection_limit: u32) -> TestApp {
        measure::wait_no_chatpool_connections(self.admin).await;
        let db = Arc::new(self.cluster.create_database().await);
        let start = AppOptions::default()
            .database(db)
            .url_param("connection_limit", connection_limit)
            .spawn();
        // Built and run on the server runtime, so every task it spawns runs there.
        SERVER_RUNTIME
            .get()
            .expect("server runtime")
            .spawn(start)
            .await
            .expect("server start task")
    }
}

/// Graceful shutdown within 30 s; panics if it fails.
async fn shut_down(server: TestApp) {
    tokio::time::timeout(Duration::from_secs(30), server.shutdown())
        .await
        .expect("shutdown within 30 s")
        .expect("clean shutdown");
}
