//! What the bench measures beside the server's own answers: PostgreSQL's
//! connections over time, CPU time from `/proc`, latency percentiles, and the
//! machine the run was on.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatpool::testkit::pg::sql_client;
use tokio::task::JoinHandle;

use crate::{BENCH_APP, PHASE_LIMIT};

/// Connections tagged `application_name=chatpool` right now, on any database.
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
pub async fn wait_no_chatpool_connections(admin: &tokio_postgres::Client) {
    let until = Instant::now() + Duration::from_secs(10);
    while chatpool_connections(admin).await > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the `pg_stat_activity` sampler saw.
pub struct Sampled {
    /// Most `application_name=chatpool` connections at once.
    pub max: i64,
    /// Samples taken.
    pub samples: u64,
    /// Mean chatpool connections in a transaction (`active` or `idle in transaction`).
    pub mean_in_tx: f64,
    /// Mean chatpool connections waiting for a lock (`wait_event_type = 'Lock'`).
    pub mean_lock_wait: f64,
}

/// Samples chatpool's connections every 20 ms until stopped.
pub fn sample_connections(admin_url: &str, stop: Arc<AtomicBool>) -> JoinHandle<Sampled> {
    let admin_url = admin_url.to_owned();
    tokio::spawn(async move {
        let client = sql_client(&admin_url, BENCH_APP).await;
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
#[derive(Clone)]
pub struct Cpu {
    at: Instant,
    this: f64,
    /// CPU seconds of each of the server's own threads (`chatpool-*`, see
    /// `SERVER_THREADS`), by thread id: a thread that exits takes its time
    /// with it, so differences are taken per thread, never of sums.
    server: std::collections::HashMap<String, (String, f64)>,
    postgres: f64,
    /// Busy seconds of the whole machine (`/proc/stat`, all processes).
    machine: f64,
}

impl Cpu {
    pub fn now() -> Cpu {
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
        let server = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| {
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                let tid = task.file_name().to_string_lossy().into_owned();
                Some((tid, secs(&stat)?))
            })
            .filter(|(_, (comm, _))| comm.starts_with("chatpool-"))
            .collect();
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
            server,
            postgres,
            machine,
        }
    }

    /// `"chatpool X% (+ bench clients Y%), PostgreSQL Z% ..."` since `self`.
    pub fn since(self) -> String {
        self.finish().0
    }

    /// [`Cpu::since`] and the CPU seconds spent (see [`Spent`]), from one end sample.
    pub fn finish(self) -> (String, Spent) {
        let end = Cpu::now();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = (end.at - self.at).as_secs_f64().max(1e-9);
        let pct = |d: f64| d / (wall * cores) * 100.0;
        let server = end
            .server
            .iter()
            .map(|(tid, (_, t))| t - self.server.get(tid).map_or(0.0, |(_, t0)| *t0))
            .sum();
        let exited: Vec<&str> = self
            .server
            .iter()
            .filter(|(tid, _)| !end.server.contains_key(*tid))
            .map(|(_, (comm, _))| comm.as_str())
            .collect();
        let spent = Spent {
            this: end.this - self.this,
            server,
            postgres: end.postgres - self.postgres,
        };
        let exited = if exited.is_empty() {
            String::new()
        } else {
            format!("; server threads that exited meanwhile, not counted: {exited:?}")
        };
        let text = format!(
            "chatpool {:.0}% (+ bench clients {:.0}%), PostgreSQL {:.0}%, whole machine {:.0}% of {cores} cores ({:.1} s wall{exited})",
            pct(spent.server),
            pct(spent.this - spent.server),
            pct(spent.postgres),
            pct(end.machine - self.machine),
            wall
        );
        (text, spent)
    }
}

/// CPU seconds spent between two [`Cpu`] samples.
pub struct Spent {
    /// The whole bench process: the server and the bench clients.
    pub this: f64,
    /// The server's threads alone.
    pub server: f64,
    /// Every postgres process.
    pub postgres: f64,
}

/// Nearest-rank percentiles of a latency sample.
pub struct Percentiles {
    p50: Duration,
    p95: Duration,
    p99: Duration,
    max: Duration,
}

impl Percentiles {
    pub fn of(sample: &mut [Duration]) -> Self {
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

    pub fn row(&self) -> String {
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

/// `count` per second over `secs` (0 for no time).
pub fn rate(count: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

/// A size from the environment, or `default`.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v:?}"))
        })
        .unwrap_or(default)
}

/// Installed memory, for the report header.
pub fn mem_total() -> String {
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

/// The compiler, for the report header.
pub fn rustc_version() -> String {
    Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "rustc unknown".into(), |s| s.trim().to_owned())
}

/// Statements PostgreSQL ran for `database` (`pg_stat_statements`, utility
/// statements such as `BEGIN` included) since the last [`reset_statements`];
/// `None` when the extension is not loaded.
pub async fn statements(admin: &tokio_postgres::Client, database: &str) -> Option<f64> {
    admin
        .query_one(
            "SELECT coalesce(sum(s.calls), 0)::float8 FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
            &[&database],
        )
        .await
        .ok()
        .map(|row| row.get(0))
}

/// Zeroes `pg_stat_statements` (every database).
pub async fn reset_statements(admin: &tokio_postgres::Client) {
    let _ = admin
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await;
}

/// `a / b`, or "n/a" when either is missing or `b` is 0.
pub fn per(a: Option<f64>, b: f64) -> String {
    match a {
        Some(a) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_owned(),
    }
}

/// Runs `pgbench` (from PATH or next to the PostgreSQL binaries) with
/// `script` against `url` for `secs` with `clients` connections; its TPS,
/// or `None` when pgbench is missing or failed (the reason on stderr).
pub fn pgbench(url: &str, clients: usize, secs: u64, script: &str) -> Option<f64> {
    let program = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("bin")),
        )
        .map(|dir| dir.join("pgbench"))
        .find(|p| p.is_file())?;
    let file = std::env::temp_dir().join(format!("chatpool-pgbench-{}.sql", std::process::id()));
    std::fs::write(&file, script).ok()?;
    let output = std::process::Command::new(program)
        .args(["-n", "-j", "2", "-M", "prepared"])
        .arg(format!("-c{clients}"))
        .arg(format!("-T{secs}"))
        .arg("-f")
        .arg(&file)
        .arg(url)
        .output();
    let _ = std::fs::remove_file(&file);
    let output = output.ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok());
    if tps.is_none() {
        eprintln!(
            "pgbench gave no tps: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    tps
}

/// The cells of a request phase's table row: `requests | p50 / p95 / p99 /
/// max | requests/s | statements per request | CPU per request: chatpool /
/// PostgreSQL | failures`, and after the row up to three failures.
pub fn request_cells(
    lat: &mut [Duration],
    secs: f64,
    stmts: Option<f64>,
    spent: &Spent,
    failures: &[String],
) -> (String, String) {
    let count = lat.len();
    let p = Percentiles::of(lat);
    let ms = |secs: f64| secs * 1e3 / count.max(1) as f64;
    let cells = format!(
        "{count} | {} | {:.0} | {} | {:.3} / {:.3} ms | {}",
        p.row(),
        rate(count as f64, secs),
        per(stmts, count as f64),
        ms(spent.server),
        ms(spent.postgres),
        failures.len()
    );
    let notes = failures
        .iter()
        .take(3)
        .map(|f| format!("\n- failure: {f}\n"))
        .collect();
    (cells, notes)
}

/// Appends the plan `sql` (an `EXPLAIN …`) prints, a line per row, to `plans`.
pub async fn explain_into(admin: &tokio_postgres::Client, sql: &str, plans: &mut String) {
    use std::fmt::Write as _;
    for msg in admin.simple_query(sql).await.expect("explain") {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
            let _ = writeln!(plans, "{}", row.get(0).unwrap_or_default());
        }
    }
}
