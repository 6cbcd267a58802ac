//! Scenario d: history page latency on a large room, and the query plans
//! PostgreSQL picks for the server's page query.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chatpool::testkit::pg::sql_client;
use chatpool::testkit::seed::{bulk_messages_sql, seed_room, seed_users};
use chatpool::testkit::ws::FRAME_WAIT;
use chatpool::testkit::Role;
use serde_json::Value;

use crate::measure::{env_num, explain_into, request_cells, reset_statements, statements, Cpu};
use crate::{shut_down, Bench, BENCH_APP, PHASE_LIMIT};

/// Scenario d: history page latency on a large room, and its plan.
pub async fn scenario_history(bench: &Bench<'_>) -> String {
    let n: i64 = env_num("BENCH_HISTORY_MESSAGES", 100_000) as i64;
    let readers = env_num("BENCH_READERS", 50);
    // Long enough phases (10,000 requests each by default) for a rate that
    // holds from run to run; 2,000-request phases (under a second) did not.
    let per_reader = env_num("BENCH_PAGES", 200);
    let server = bench.start_server(10).await;
    // The harness's own connection to the scenario's database.
    let admin = sql_client(&server.db.url, BENCH_APP).await;
    let users = seed_users(&server, "histu", 2, Role::Member).await;
    let (author, token) = (users[0].id, users[0].token.clone());
    let room = seed_room(&server, author, &[users[1].id]).await;
    // A second, smaller room so the plan has to pick rows by room_id.
    let other = seed_room(&server, users[1].id, &[]).await;
    let t = Instant::now();
    bulk_messages_sql(&admin, room, author, n).await;
    bulk_messages_sql(&admin, other, users[1].id, 1000).await;
    let insert_secs = t.elapsed().as_secs_f64();
    admin
        .batch_execute("ANALYZE messages")
        .await
        .expect("analyze");

    // The server's statement (store::messages::visible_page: visibility, page
    // and last_seq at once), latest page and a before_seq page.
    let select = "SELECT m.id, m.room_id, m.seq, m.author_id, u.username, u.display_name, m.body, m.client_id, m.created_at \
                  FROM messages m JOIN users u ON u.id = m.author_id";
    let mut plans = String::new();
    for (label, filter) in [
        ("latest", "m.seq > 0".to_owned()),
        ("before_seq", format!("m.seq < {}", n / 2)),
    ] {
        let sql = format!(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) \
             SELECT r.last_seq, p.* FROM rooms r LEFT JOIN LATERAL ( \
               {select} WHERE m.room_id = r.id AND {filter} ORDER BY m.seq DESC LIMIT 51) p ON true \
             WHERE r.id = {room} AND ( \
               EXISTS (SELECT 1 FROM users vu WHERE vu.id = {author} AND vu.role = ANY(ARRAY['agent','admin'])) \
               OR EXISTS (SELECT 1 FROM room_members vm WHERE vm.room_id = r.id AND vm.user_id = {author}))"
        );
        let _ = writeln!(
            plans,
            "-- {label}: ... WHERE m.room_id = {room} AND {filter} ORDER BY m.seq DESC LIMIT 51"
        );
        explain_into(&admin, &sql, &mut plans).await;
    }
    // The generic plan of the prepared statement: the server's sessions use
    // `plan_cache_mode = force_generic_plan` (db::pool), so this is the plan
    // every page runs, planned once per connection.
    admin
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; \
             PREPARE bench_page(bigint, bigint, bigint, bigint, text[]) AS \
             SELECT r.last_seq, p.* FROM rooms r LEFT JOIN LATERAL ( \
               {select} WHERE m.room_id = r.id AND m.seq < $3 ORDER BY m.seq DESC LIMIT $2) p ON true \
             WHERE r.id = $1 AND ( \
               EXISTS (SELECT 1 FROM users vu WHERE vu.id = $4 AND vu.role = ANY($5)) \
               OR EXISTS (SELECT 1 FROM room_members vm WHERE vm.room_id = r.id AND vm.user_id = $4))"
        ))
        .await
        .expect("prepare");
    let _ = writeln!(
        plans,
        "-- generic plan of the prepared before_seq statement (plan_cache_mode = force_generic_plan)"
    );
    let generic = format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) \
         EXECUTE bench_page({room}, 51, {}, {author}, ARRAY['agent','admin'])",
        n / 2
    );
    explain_into(&admin, &generic, &mut plans).await;
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
    reset_statements(bench.admin).await;
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

    let latest_cpu = cpu.finish();
    let latest_statements = statements(bench.admin, &server.db.name).await;
    reset_statements(bench.admin).await;
    // before_seq paging: reader i walks back through its own slice of the
    // room, from its top again when it reaches the bottom.
    let cpu = Cpu::now();
    let slice = (n as usize / readers).max(50) as i64;
    let (paging, paging_secs, paging_fail) = run_readers(readers, |i| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let mut lat = Vec::with_capacity(per_reader);
            let top = n + 1 - i as i64 * slice;
            let mut before = top;
            for _ in 0..per_reader {
                if before - 50 < (top - slice).max(1) {
                    before = top;
                }
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
    let paging_cpu = cpu.finish();
    let paging_statements = statements(bench.admin, &server.db.name).await;
    drop(admin);
    shut_down(server).await;

    let mut s = format!(
        "### d. HTTP history read (connection_limit=10)\n\n\
         Room of {n} messages (bulk-inserted with one `INSERT ... SELECT generate_series` in {insert_secs:.2} s), \
         {readers} concurrent readers over keep-alive connections, `limit=50`.\n\n\
         | query | requests | p50 / p95 / p99 / max | requests/s | statements per request | CPU per request: chatpool / PostgreSQL | failures | CPU |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for (label, mut lat, secs, fail, cpu, stmts) in [
        (
            "latest page `?limit=50`",
            latest,
            latest_secs,
            latest_fail,
            latest_cpu,
            latest_statements,
        ),
        (
            "`?limit=50&before_seq=N` paging",
            paging,
            paging_secs,
            paging_fail,
            paging_cpu,
            paging_statements,
        ),
    ] {
        let (cpu, spent) = cpu;
        let (cells, notes) = request_cells(&mut lat, secs, stmts, &spent, &fail);
        let _ = writeln!(s, "| {label} | {cells} | {cpu} |{notes}");
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
