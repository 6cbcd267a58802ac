//! Scenario f: `GET /api/search` on a room of 100,000 messages, the plans
//! PostgreSQL runs for it, and the alternative it was chosen over (trigram
//! indexes) measured on the same rows.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chatpool::testkit::pg::sql_client;
use chatpool::testkit::probe::search_sql;
use chatpool::testkit::seed::{seed_room, seed_users};
use chatpool::testkit::ws::FRAME_WAIT;
use chatpool::testkit::Role;
use serde_json::Value;

use crate::measure::{env_num, explain_into, request_cells, reset_statements, statements, Cpu};
use crate::{shut_down, Bench, BENCH_APP, PHASE_LIMIT};

/// The words messages are made of: Spanish and English, some accented.
const WORDS: &[&str] = &[
    "hola",
    "gracias",
    "reunión",
    "mañana",
    "café",
    "pedido",
    "envío",
    "factura",
    "cliente",
    "problema",
    "solución",
    "teléfono",
    "dirección",
    "número",
    "código",
    "cuenta",
    "pago",
    "tarjeta",
    "devolución",
    "garantía",
    "producto",
    "precio",
    "descuento",
    "oferta",
    "semana",
    "día",
    "hora",
    "minuto",
    "ayuda",
    "soporte",
    "agent",
    "order",
    "invoice",
    "refund",
    "shipping",
    "address",
    "password",
    "login",
    "error",
    "screen",
    "button",
    "payment",
    "card",
    "delivery",
    "tracking",
    "package",
    "return",
    "warranty",
    "product",
    "price",
    "discount",
    "week",
    "today",
    "tomorrow",
    "meeting",
    "call",
    "email",
    "phone",
    "thanks",
    "please",
    "sorry",
    "urgent",
    "status",
    "update",
    "account",
    "billing",
    "plan",
    "upgrade",
    "cancel",
    "renew",
    "support",
    "ticket",
    "issue",
    "bug",
    "feature",
    "request",
    "question",
    "answer",
    "help",
    "team",
    "manager",
    "office",
    "store",
    "online",
    "mobile",
    "app",
    "web",
    "version",
    "install",
    "download",
    "file",
    "photo",
    "image",
    "video",
    "audio",
    "message",
    "chat",
    "group",
    "room",
    "user",
];

/// One statement that appends `$3` messages of 6-12 words by `$2` to room
/// `$1`: word k of message s is picked by a fixed hash of (s, k), so every
/// run stores the same text.
const SEED: &str = "WITH r AS (UPDATE rooms SET last_seq = last_seq + $3 WHERE id = $1 RETURNING last_seq) \
     INSERT INTO messages (room_id, seq, author_id, body, created_at) \
     SELECT $1, s, $2, (SELECT string_agg(($4::text[])[(1 + (s * 7919 + k * 104729 + k * k * 31) % cardinality($4::text[]))::int], ' ') \
                        FROM generate_series(1, 6 + s % 7) k), now() \
     FROM r, generate_series(r.last_seq - $3 + 1, r.last_seq) s";

/// What the searchers ask, with what each query is.
const QUERIES: &[(&str, &str)] = &[
    ("rare word", "aguja"),
    ("common word", "café"),
    ("two words", "pedido factura"),
    ("phrase", "\"hola gracias\""),
    ("word -word", "refund -shipping"),
];

/// Scenario f: search latency and plans on a large room.
pub async fn scenario_search(bench: &Bench<'_>) -> String {
    let n: i64 = env_num("BENCH_SEARCH_MESSAGES", 100_000) as i64;
    let searchers = env_num("BENCH_SEARCHERS", 20);
    let per_searcher = env_num("BENCH_SEARCHES", 100);
    let server = bench.start_server(10).await;
    let admin = sql_client(&server.db.url, BENCH_APP).await;
    let users = seed_users(&server, "searchu", 2, Role::Member).await;
    let (author, token) = (users[0].id, users[0].token.clone());
    let room = seed_room(&server, author, &[]).await;
    // A room the searcher may not read, which the statement must filter out.
    let other = seed_room(&server, users[1].id, &[]).await;
    let words: Vec<String> = WORDS.iter().map(|w| (*w).to_owned()).collect();
    let t = Instant::now();
    admin
        .execute(SEED, &[&room, &author, &n, &words])
        .await
        .expect("seed messages");
    admin
        .execute(SEED, &[&other, &users[1].id, &(n / 10), &words])
        .await
        .expect("seed the other room");
    admin
        .execute(
            "UPDATE messages SET body = body || ' aguja' WHERE room_id = $1 AND seq = $2",
            &[&room, &(n / 2)],
        )
        .await
        .expect("the needle");
    let insert_secs = t.elapsed().as_secs_f64();
    admin
        .batch_execute("ANALYZE messages")
        .await
        .expect("analyze");
    let size = |index: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT pg_relation_size($1::text::regclass)", &[&index])
                .await
                .map(|r| r.get::<_, i64>(0) as f64 / 1024.0 / 1024.0)
                .unwrap_or(0.0)
        }
    };
    let fts_mib = size("messages_search_idx").await;

    // The plans of the server's statement, generic as its sessions run it.
    let mut plans = String::new();
    admin
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; \
             PREPARE bench_search(text, bigint, text[], bigint) AS {}; \
             PREPARE bench_search_room(text, bigint, text[], bigint, bigint) AS {}",
            search_sql(false),
            search_sql(true)
        ))
        .await
        .expect("prepare");
    for (label, call) in [
        (
            "common word, every readable room",
            format!("bench_search('café', {author}, ARRAY['agent','admin'], 20)"),
        ),
        (
            "rare word, every readable room",
            format!("bench_search('aguja', {author}, ARRAY['agent','admin'], 20)"),
        ),
        (
            "common word, room_id given",
            format!("bench_search_room('café', {author}, ARRAY['agent','admin'], 20, {room})"),
        ),
    ] {
        let _ = writeln!(plans, "-- {label}: EXECUTE {call}");
        let sql = format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) EXECUTE {call}");
        explain_into(&admin, &sql, &mut plans).await;
    }
    admin
        .batch_execute("DEALLOCATE ALL; RESET plan_cache_mode")
        .await
        .expect("deallocate");

    // The alternative: a trigram index (pg_trgm) on the lower-cased body,
    // queried with ILIKE, which neither folds accents nor ranks.
    let trigram = trigram_comparison(&admin, room).await;

    let http = reqwest::Client::builder()
        .timeout(FRAME_WAIT)
        .pool_max_idle_per_host(searchers * 2)
        .build()
        .expect("http client");
    let base = format!("http://{}/api/search", server.addr);
    for (_, q) in QUERIES {
        let _ = search(&http, &base, &token, q).await;
    }
    let mut s = format!(
        "### f. Search (connection_limit=10)\n\n\
         A room of {n} messages of 6-12 words from a {}-word Spanish and English vocabulary \
         (seeded in {insert_secs:.2} s with the index in place), plus a room of {} the searcher \
         may not read; {searchers} concurrent searchers × {per_searcher} searches each per query. \
         `messages_search_idx`: {fts_mib:.1} MiB.\n\n\
         | query | matches in the room | requests | p50 / p95 / p99 / max | requests/s | statements per request | CPU per request: chatpool / PostgreSQL | failures |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        WORDS.len(),
        n / 10,
    );
    for (label, q) in QUERIES {
        let matches: i64 = admin
            .query_one(
                "SELECT count(*) FROM messages WHERE room_id = $1 \
                 AND to_tsvector('chatpool_search', body) @@ websearch_to_tsquery('chatpool_search', $2)",
                &[&room, q],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        reset_statements(bench.admin).await;
        let cpu = Cpu::now();
        let started = Instant::now();
        let tasks: Vec<_> = (0..searchers)
            .map(|_| {
                let (http, base, token, q) = (http.clone(), base.clone(), token.clone(), *q);
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_searcher);
                    for _ in 0..per_searcher {
                        let t = Instant::now();
                        let hits = search(&http, &base, &token, q).await?;
                        lat.push(t.elapsed());
                        if hits.iter().any(|m| m["room_id"] != room) {
                            return Err("a hit from a room the searcher may not read".to_owned());
                        }
                        if matches > 0 && hits.is_empty() {
                            return Err(format!("no hits for {q:?}"));
                        }
                    }
                    Ok::<_, String>(lat)
                })
            })
            .collect();
        let (mut lat, mut failures): (Vec<Duration>, Vec<String>) = (Vec::new(), Vec::new());
        for t in tasks {
            match tokio::time::timeout(PHASE_LIMIT, t).await {
                Ok(Ok(Ok(l))) => lat.extend(l),
                Ok(Ok(Err(e))) => failures.push(e),
                Ok(Err(e)) => failures.push(format!("task: {e}")),
                Err(_) => failures.push("searcher over its time bound".into()),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let (_, spent) = cpu.finish();
        let stmts = statements(bench.admin, &server.db.name).await;
        let (cells, notes) = request_cells(&mut lat, secs, stmts, &spent, &failures);
        let _ = writeln!(s, "| {label} `{q}` | {matches} | {cells} |{notes}");
    }
    drop(admin);
    shut_down(server).await;
    let _ = writeln!(s, "\n{trigram}");
    let _ = writeln!(
        s,
        "`EXPLAIN` of the server's statement (generic plans):\n\n```\n{plans}```"
    );
    s
}

/// Builds a trigram index on the same rows and times one query of each kind
/// (median of 5), beside the full-text index's: the measured choice.
async fn trigram_comparison(admin: &tokio_postgres::Client, room: i64) -> String {
    if admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        .await
        .is_err()
    {
        return "(pg_trgm not available: no trigram comparison)".to_owned();
    }
    let t = Instant::now();
    admin
        .batch_execute(
            "CREATE INDEX bench_trgm_idx ON messages USING gin (lower(body) gin_trgm_ops)",
        )
        .await
        .expect("trigram index");
    let build = t.elapsed().as_secs_f64();
    let t = Instant::now();
    admin
        .batch_execute(
            "CREATE INDEX bench_fts_again_idx ON messages USING gin (to_tsvector('chatpool_search', body))",
        )
        .await
        .expect("full-text index again");
    let fts_build = t.elapsed().as_secs_f64();
    let mib = |name: &str| format!("pg_relation_size('{name}') / 1048576.0");
    let sizes = admin
        .query_one(
            &format!(
                "SELECT ({})::float8, ({})::float8",
                mib("bench_trgm_idx"),
                mib("bench_fts_again_idx")
            ),
            &[],
        )
        .await
        .expect("sizes");
    let (trgm_mib, fts_mib): (f64, f64) = (sizes.get(0), sizes.get(1));
    admin
        .batch_execute("DROP INDEX bench_fts_again_idx; ANALYZE messages")
        .await
        .expect("drop the copy");
    let mut timed = String::new();
    for (word, fts, trgm) in [
        ("café", "café", "%café%"),
        ("cafe (no accent)", "cafe", "%cafe%"),
        ("aguja", "aguja", "%aguja%"),
    ] {
        let fts_ms = median_ms(admin, &format!(
            "SELECT id FROM messages WHERE room_id = {room} AND to_tsvector('chatpool_search', body) @@ websearch_to_tsquery('chatpool_search', '{fts}') \
             ORDER BY ts_rank(to_tsvector('chatpool_search', body), websearch_to_tsquery('chatpool_search', '{fts}')) DESC LIMIT 20"
        )).await;
        let trgm_ms = median_ms(admin, &format!(
            "SELECT id FROM messages WHERE room_id = {room} AND lower(body) LIKE '{trgm}' ORDER BY id DESC LIMIT 20"
        )).await;
        let hits = |sql: String| async move {
            admin
                .query_one(&sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(-1)
        };
        let fts_hits = hits(format!("SELECT count(*) FROM messages WHERE room_id = {room} AND to_tsvector('chatpool_search', body) @@ websearch_to_tsquery('chatpool_search', '{fts}')")).await;
        let trgm_hits = hits(format!(
            "SELECT count(*) FROM messages WHERE room_id = {room} AND lower(body) LIKE '{trgm}'"
        ))
        .await;
        let _ = writeln!(
            timed,
            "| `{word}` | {fts_hits} / {fts_ms:.1} ms | {trgm_hits} / {trgm_ms:.1} ms |"
        );
    }
    admin
        .batch_execute("DROP INDEX bench_trgm_idx")
        .await
        .expect("drop trigram index");
    format!(
        "Full-text (`simple` + `unaccent`, chosen) against trigram (`pg_trgm`, `lower(body) LIKE`) on the same room, \
         one query at a time (median of 5, top 20; full-text ranked, trigram by id):\n\n\
         | | full-text | trigram |\n| --- | --- | --- |\n\
         | index size | {fts_mib:.1} MiB | {trgm_mib:.1} MiB |\n\
         | index build | {fts_build:.2} s | {build:.2} s |\n\
         {}\n(cells: matches in the room / query time)\n",
        timed.trim_end().replace("| `", "| query `")
    )
}

/// Median wall time of 5 runs of `sql`, in milliseconds.
async fn median_ms(admin: &tokio_postgres::Client, sql: &str) -> f64 {
    let mut runs = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        admin.simple_query(sql).await.expect("timed query");
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    runs[2]
}

async fn search(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    q: &str,
) -> Result<Vec<Value>, String> {
    let resp = http
        .get(base)
        .query(&[("q", q), ("limit", "20")])
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(body["messages"].as_array().cloned().unwrap_or_default())
}
