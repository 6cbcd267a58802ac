//! Issue 12: TLS to PostgreSQL with libpq's `sslmode` meanings (SPEC §6),
//! against a cluster that accepts TCP only over TLS, with a CA made here.

use std::time::{Duration, Instant};

use chatpool::testkit::probe::DbError;
use chatpool::testkit::tls::tls_cluster;
use chatpool::testkit::ws::connect;
use chatpool::testkit::{api, bounded, AppOptions, TestApp};
use chatpool::{Application, Settings};
use serde_json::json;

/// An app on a fresh database of the TLS cluster, reached with `params`
/// (and, when given, under a host name its certificate does not carry).
async fn app_over(params: &str) -> TestApp {
    app_named(None, params).await
}

async fn app_named(name: Option<&str>, params: &str) -> TestApp {
    let tls = tls_cluster();
    let db = std::sync::Arc::new(tls.cluster.create_database().await);
    let url = match name {
        Some(name) => tls.url_naming(name, &db, params),
        None => tls.url(&db, params),
    };
    AppOptions::default()
        .database(db)
        .env("DATABASE_URL", url)
        .env("CHATPOOL_TX_TIMEOUT_MS", 500)
        .spawn()
        .await
}

/// Why an app cannot start with `params`.
async fn refused(name: Option<&str>, params: &str) -> String {
    let tls = tls_cluster();
    let db = tls.cluster.create_database().await;
    let url = match name {
        Some(name) => tls.url_naming(name, &db, params),
        None => tls.url(&db, params),
    };
    let settings = Settings::from_lookup(|k| match k {
        "DATABASE_URL" => Some(url.clone()),
        "CHATPOOL_LISTEN" => Some("127.0.0.1:0".into()),
        "CHATPOOL_TX_MAX_WAIT_MS" => Some("1000".into()),
        _ => None,
    })
    .expect("settings");
    match Application::build(settings).await {
        Ok(_) => panic!("{params}: the app started"),
        Err(e) => format!("{e:#}"),
    }
}

/// Whether every chatpool connection to `app`'s database is encrypted, and
/// how many there are.
async fn encrypted_connections(app: &TestApp) -> (i64, i64) {
    let all = format!(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = '{}' AND a.application_name = 'chatpool'",
        app.db.name
    );
    let total = admin_count_on_tls(&all).await;
    let encrypted = admin_count_on_tls(&format!("{all} AND s.ssl")).await;
    (total, encrypted)
}

async fn admin_count_on_tls(sql: &str) -> i64 {
    let tls = tls_cluster();
    let client =
        chatpool::testkit::pg::sql_client(&tls.cluster.url("postgres"), "chatpool-tests").await;
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Registers, sends over WebSocket and reads history back.
async fn chat_works(app: &TestApp) {
    let alice = api::register(app, "alice").await;
    let room = api::post(app, "/api/rooms", &alice.token, json!({"name": "tls"}))
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    let mut ws = connect(app, &alice.token).await;
    ws.join(room, Some(0)).await;
    let (ack, _) = ws.send_message(room, "over tls", "t1").await;
    assert_eq!(ack["message"]["seq"], 1);
    let history = api::get(app, &format!("/api/rooms/{room}/messages"), &alice.token)
        .await
        .expect(200);
    assert_eq!(history["messages"][0]["body"], "over tls");
}

/// Waits (bounded) until both the pool and the listener are connected.
async fn until_listener_and_pool(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while encrypted_connections(app).await.0 < 2 {
        assert!(Instant::now() < deadline, "no pool + listener connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_with_the_ca_works_and_every_connection_is_encrypted() {
    bounded(async {
        let ca = tls_cluster().ca_file.display().to_string();
        let app = app_over(&format!("sslmode=verify-full&sslrootcert={ca}")).await;
        chat_works(&app).await;
        until_listener_and_pool(&app).await;
        let (total, encrypted) = encrypted_connections(&app).await;
        assert_eq!(
            total, encrypted,
            "{total} connections, {encrypted} encrypted"
        );
        // Prisma's spelling of the same: sslcert is the CA, strict verifies.
        let app = app_over(&format!("sslmode=require&sslcert={ca}&sslaccept=strict")).await;
        chat_works(&app).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn require_and_prefer_encrypt_without_checking_the_certificate() {
    bounded(async {
        for params in ["sslmode=require", "sslmode=prefer", "connect_timeout=5"] {
            let app = app_over(params).await;
            chat_works(&app).await;
            until_listener_and_pool(&app).await;
            let (total, encrypted) = encrypted_connections(&app).await;
            assert_eq!(total, encrypted, "{params}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_tcp_and_unverifiable_certificates_are_refused() {
    bounded(async {
        let tls = tls_cluster();
        let ca = tls.ca_file.display().to_string();
        let other = tls.other_ca_file.display().to_string();
        let why = refused(None, "sslmode=disable").await;
        assert!(
            why.contains("no encryption") || why.contains("pg_hba"),
            "{why}"
        );
        // A CA that did not sign the server's certificate.
        let why = refused(None, &format!("sslmode=verify-ca&sslrootcert={other}")).await;
        assert!(why.to_lowercase().contains("certificate"), "{why}");
        // The right CA, but a certificate for another name: verify-full
        // refuses, verify-ca does not look at the name.
        let wrong = Some("wrong.example");
        let why = refused(wrong, &format!("sslmode=verify-full&sslrootcert={ca}")).await;
        assert!(why.to_lowercase().contains("certificate"), "{why}");
        let app = app_named(wrong, &format!("sslmode=verify-ca&sslrootcert={ca}")).await;
        chat_works(&app).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_transaction_is_cancelled_over_tls() {
    bounded(async {
        let app = app_over("sslmode=require").await;
        let started = Instant::now();
        let outcome = app.sleep_past_the_server_timeout(30.0).await;
        assert!(matches!(outcome, Err(DbError::Timeout)), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The cancel request reached the server: the sleep is gone long
        // before its 30 s, and the connection went back to the pool.
        let sleeping = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
             AND state = 'active' AND query LIKE '%pg_sleep%'",
            app.db.name
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while admin_count_on_tls(&sleeping).await > 0 {
            assert!(Instant::now() < deadline, "the sleep was not cancelled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        chat_works(&app).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_prisma_url_works_unchanged_over_tcp() {
    bounded(async {
        let tls = tls_cluster();
        let db = std::sync::Arc::new(tls.cluster.create_database().await);
        // Exactly the URL the seeds' teams arrive with (their host and database).
        let url = format!(
            "postgresql://chatpool:pass@{}:5432/{}?schema=public&connection_limit=10&pool_timeout=20&connect_timeout=10",
            tls.host, db.name
        );
        let app = AppOptions::default()
            .database(db)
            .env("DATABASE_URL", url)
            .spawn()
            .await;
        assert_eq!(app.pool_status().max_size, 9);
        chat_works(&app).await;
    })
    .await;
}
