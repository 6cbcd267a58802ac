//! Issue 3: accounts — register, login (and its rate limit), logout, me,
//! the user directory, secrets never leaving, and `chatpool user add`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatpool::testkit::api::{
    call, collect, get, login, register, register_raw, user_with_role, usernames, Session, PASSWORD,
};
use chatpool::testkit::pg::sql_client;
use chatpool::testkit::{bounded, spawn_app, AppOptions, Role};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::binary;

#[tokio::test(flavor = "multi_thread")]
async fn register_creates_a_member_and_returns_a_working_token() {
    bounded(async {
        let app = spawn_app().await;
        let body = register_raw(
            &app,
            json!({"username": "alice", "password": PASSWORD, "display_name": "  Alice A. "}),
        )
        .await
        .expect(201);
        let token = body["token"].as_str().unwrap();
        assert!(token.len() >= 32, "token too short for 128 bits: {token}");
        let user = &body["user"];
        assert_eq!(user["username"], "alice");
        assert_eq!(user["display_name"], "Alice A.");
        assert_eq!(user["role"], "member");
        let created = user["created_at"].as_str().unwrap();
        assert!(
            created.ends_with('Z') && created.len() == "2026-11-22T10:00:00.123Z".len(),
            "{created}"
        );
        let me = get(&app, "/api/me", token).await.expect(200);
        assert_eq!(&me, user);

        // display_name defaults to the username.
        let bob = register(&app, "bob").await;
        assert_eq!(bob.user["display_name"], "bob");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn register_rejects_invalid_fields_with_400_and_taken_names_with_409() {
    bounded(async {
        let app = spawn_app().await;
        for body in [
            json!({"username": "ab", "password": PASSWORD}),
            json!({"username": "Alice", "password": PASSWORD}),
            json!({"username": "a".repeat(33), "password": PASSWORD}),
            json!({"username": "alice", "password": "short"}),
            json!({"username": "alice", "password": "x".repeat(257)}),
            json!({"username": "alice", "password": PASSWORD, "display_name": "   "}),
            json!({"username": "alice", "password": PASSWORD, "display_name": "d".repeat(65)}),
            json!({"username": "alice"}),
            json!({"password": PASSWORD}),
            json!({"username": 42, "password": PASSWORD}),
            json!(["alice", PASSWORD]),
        ] {
            register_raw(&app, body)
                .await
                .expect_error(400, "bad_request");
        }
        register(&app, "alice").await;
        register_raw(
            &app,
            json!({"username": "alice", "password": "another password"}),
        )
        .await
        .expect_error(409, "conflict");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_closed_by_configuration_is_403_but_login_still_works() {
    bounded(async {
        let app = AppOptions::default()
            .env("CHATPOOL_REGISTRATION", "closed")
            .spawn()
            .await;
        register_raw(&app, json!({"username": "alice", "password": PASSWORD}))
            .await
            .expect_error(403, "forbidden");
        // An operator-created user can still log in.
        let status = Command::new(binary())
            .args([
                "user",
                "add",
                "carol",
                "--role",
                "agent",
                "--password-stdin",
            ])
            .env("DATABASE_URL", &app.db.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{PASSWORD}\n").as_bytes())?;
                child.wait()
            })
            .unwrap();
        assert!(status.success());
        let body = login(&app, "carol", PASSWORD).await.expect(200);
        assert_eq!(body["user"]["role"], "agent");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn login_returns_a_fresh_token_and_bad_credentials_get_401_invalid_credentials() {
    bounded(async {
        let app = spawn_app().await;
        let first = register(&app, "alice").await;
        let body = login(&app, "alice", PASSWORD).await.expect(200);
        let second = body["token"].as_str().unwrap();
        assert_ne!(second, first.token);
        assert_eq!(body["user"], first.user);
        // Both tokens work.
        get(&app, "/api/me", &first.token).await.expect(200);
        get(&app, "/api/me", second).await.expect(200);

        login(&app, "alice", "wrong password")
            .await
            .expect_error(401, "invalid_credentials");
        login(&app, "nobody", PASSWORD)
            .await
            .expect_error(401, "invalid_credentials");
        // Values that could never be valid are failed logins too, not 400s.
        login(&app, "NOT VALID", "x")
            .await
            .expect_error(401, "invalid_credentials");
        call(
            &app,
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"username": "alice"})),
        )
        .await
        .expect_error(400, "bad_request");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_login_failures_for_one_username_get_429_with_retry_after() {
    bounded(async {
        let app = spawn_app().await;
        register(&app, "alice").await;
        register(&app, "bob").await;
        for _ in 0..5 {
            login(&app, "alice", "wrong password")
                .await
                .expect_error(401, "invalid_credentials");
        }
        // Blocked now, even with the right password.
        for password in ["wrong password", PASSWORD] {
            let reply = login(&app, "alice", password).await;
            reply.expect_error(429, "rate_limited");
            let secs: u64 = reply.retry_after.as_deref().unwrap().parse().unwrap();
            assert!((1..=300).contains(&secs), "Retry-After {secs}");
        }
        // Another username from the same address is not.
        login(&app, "bob", PASSWORD).await.expect(200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_wrong_passwords_are_limited_like_sequential_ones() {
    bounded(async {
        let app = spawn_app().await;
        register(&app, "alice").await;
        // 150 guesses at once: each is counted before its password is checked,
        // so exactly the username's 5 failures get through to a 401.
        let statuses = join_all((0..150).map(|i| {
            let app = &app;
            async move {
                let reply = login(app, "alice", &format!("guess number {i}")).await;
                reply.status
            }
        }))
        .await;
        let unauthorized = statuses.iter().filter(|s| **s == 401).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!((unauthorized, limited), (5, 145), "{statuses:?}");
        login(&app, "alice", PASSWORD)
            .await
            .expect_error(429, "rate_limited");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_login_failures_from_one_address_get_429_across_usernames() {
    bounded(async {
        let app = spawn_app().await;
        register(&app, "alice").await;
        for i in 0..20 {
            login(&app, &format!("guess{i}"), "wrong password")
                .await
                .expect_error(401, "invalid_credentials");
        }
        let reply = login(&app, "alice", PASSWORD).await;
        reply.expect_error(429, "rate_limited");
        assert!(reply.retry_after.is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_exactly_that_token() {
    bounded(async {
        let app = spawn_app().await;
        let alice = register(&app, "alice").await;
        let other = login(&app, "alice", PASSWORD).await.expect(200);
        let other = other["token"].as_str().unwrap();

        let reply = call(
            &app,
            Method::POST,
            "/api/auth/logout",
            Some(&alice.token),
            None,
        )
        .await;
        assert_eq!(reply.status, 204);
        assert!(reply.text.is_empty());
        get(&app, "/api/me", &alice.token)
            .await
            .expect_error(401, "unauthorized");
        call(
            &app,
            Method::POST,
            "/api/auth/logout",
            Some(&alice.token),
            None,
        )
        .await
        .expect_error(401, "unauthorized");
        get(&app, "/api/me", other).await.expect(200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_malformed_or_unknown_tokens_get_401_unauthorized() {
    bounded(async {
        let app = spawn_app().await;
        register(&app, "alice").await;
        call(&app, Method::GET, "/api/me", None, None)
            .await
            .expect_error(401, "unauthorized");
        get(&app, "/api/me", &"0".repeat(64))
            .await
            .expect_error(401, "unauthorized");
        get(&app, "/api/me", &"x".repeat(5000))
            .await
            .expect_error(401, "unauthorized");
        let reply = app
            .http
            .get(app.url("/api/me"))
            .header("authorization", "Basic YWxpY2U6cGFzc3dvcmQ=")
            .send()
            .await
            .unwrap();
        collect(reply).await.expect_error(401, "unauthorized");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_are_searched_by_prefix_in_username_order_within_limits() {
    bounded(async {
        let app = spawn_app().await;
        let me = register(&app, "zed").await;
        for name in ["anna", "andy", "bert", "ann_x"] {
            register(&app, name).await;
        }
        let found = get(&app, "/api/users?prefix=an", &me.token)
            .await
            .expect(200);
        assert_eq!(usernames(&found), ["andy", "ann_x", "anna"]);
        // `_` is a literal, not a wildcard; uppercase input is lowercased.
        let found = get(&app, "/api/users?prefix=ANN_", &me.token)
            .await
            .expect(200);
        assert_eq!(usernames(&found), ["ann_x"]);
        let found = get(&app, "/api/users?prefix=an&limit=1", &me.token)
            .await
            .expect(200);
        assert_eq!(usernames(&found), ["andy"]);
        let all = get(&app, "/api/users", &me.token).await.expect(200);
        assert_eq!(usernames(&all), ["andy", "ann_x", "anna", "bert", "zed"]);
        for bad in ["limit=0", "limit=101", "limit=-1", "limit=abc", "limit=1.5"] {
            get(&app, &format!("/api/users?{bad}"), &me.token)
                .await
                .expect_error(400, "bad_request");
        }
        get(
            &app,
            &format!("/api/users?prefix={}", "a".repeat(33)),
            &me.token,
        )
        .await
        .expect_error(400, "bad_request");
        call(&app, Method::GET, "/api/users", None, None)
            .await
            .expect_error(401, "unauthorized");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_response_carries_a_password_or_hash_and_tokens_are_stored_hashed() {
    bounded(async {
        let app = spawn_app().await;
        let admin = user_with_role(&app, "admin1", Role::Admin).await;
        let alice = register(&app, "alice").await;
        let logged_in = login(&app, "alice", PASSWORD).await;
        let mut texts = vec![logged_in.text.clone()];
        for path in [
            "/api/me",
            "/api/users",
            "/api/admin/users",
            "/api/admin/stats",
            "/api/admin/connections",
        ] {
            texts.push(get(&app, path, &admin.token).await.expect_text(200));
        }
        texts.push(
            call(
                &app,
                Method::PATCH,
                &format!("/api/admin/users/{}", alice.id()),
                Some(&admin.token),
                Some(json!({"role": "agent"})),
            )
            .await
            .expect_text(200),
        );
        for text in &texts {
            assert!(!text.contains(PASSWORD), "password in {text}");
            assert!(!text.contains("argon2"), "hash in {text}");
            assert!(!text.contains("password"), "password field in {text}");
        }

        // The tokens table holds SHA-256 hashes of the tokens, nothing else.
        let db = sql_client(&app.db.url, "chatpool-tests").await;
        let rows = db
            .query("SELECT token_hash FROM auth_tokens", &[])
            .await
            .unwrap();
        let stored: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
        let tokens: Vec<String> = vec![
            admin.token.clone(),
            alice.token.clone(),
            logged_in.json()["token"].as_str().unwrap().to_owned(),
        ];
        assert_eq!(stored.len(), tokens.len());
        for token in &tokens {
            let hash = Sha256::digest(token.as_bytes()).to_vec();
            assert!(stored.contains(&hash), "no hash for a token");
            let plain = db
                .query_one(
                    "SELECT count(*) FROM auth_tokens WHERE position($1::bytea in token_hash) > 0 \
                     OR encode(token_hash, 'hex') = $2",
                    &[&token.as_bytes(), token],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            assert_eq!(plain, 0, "plaintext token stored");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_50_parallel_logins_completes_while_healthz_answers_quickly() {
    bounded(async {
        let app = spawn_app().await;
        let users: Vec<Session> =
            join_all((0..5).map(|i| register(&app, format!("burst{i}")))).await;
        // Argon2 is CPU-bound and unoptimised in test builds: the logins queue
        // for the hashing permits, so give them longer than the default client.
        let slow = reqwest::Client::builder()
            .timeout(Duration::from_secs(110))
            .build()
            .unwrap();
        let done = AtomicBool::new(false);
        let worst_micros = AtomicU64::new(0);
        let burst = async {
            let statuses = join_all((0..50).map(|i| {
                let name = users[i % users.len()].user["username"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let (app, slow) = (&app, &slow);
                async move {
                    slow.post(app.url("/api/auth/login"))
                        .json(&json!({"username": name, "password": PASSWORD}))
                        .send()
                        .await
                        .expect("login answered")
                        .status()
                        .as_u16()
                }
            }))
            .await;
            done.store(true, Ordering::SeqCst);
            statuses
        };
        let probe = async {
            let mut probes = 0;
            while probes == 0 || !done.load(Ordering::SeqCst) {
                let started = Instant::now();
                assert_eq!(app.get("/healthz").await.status(), 200);
                worst_micros.fetch_max(started.elapsed().as_micros() as u64, Ordering::SeqCst);
                probes += 1;
            }
            probes
        };
        let (statuses, probes) = tokio::join!(burst, probe);
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        let worst = Duration::from_micros(worst_micros.load(Ordering::SeqCst));
        assert!(
            worst < Duration::from_secs(1),
            "/healthz took {worst:?} during the login burst ({probes} probes)"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_prefix_search_is_an_index_range_under_the_plans_it_runs_with() {
    bounded(async {
        let app = spawn_app().await;
        let client = sql_client(&app.db.url, "tests").await;
        client
            .batch_execute(
                "INSERT INTO users (username, display_name, password_hash) \
                 SELECT 'user' || g, 'U', 'x' FROM generate_series(1, 20000) g; ANALYZE users; \
                 SET plan_cache_mode = force_custom_plan; \
                 PREPARE by_prefix(text, bigint) AS SELECT id FROM users \
                 WHERE username LIKE $1 ESCAPE '\\' ORDER BY username LIMIT $2",
            )
            .await
            .unwrap();
        let plan: Vec<String> = client
            .simple_query("EXPLAIN EXECUTE by_prefix('user123%', 20)")
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("Index Cond")
                && l.contains("username")
                && l.contains("user123")),
            "{plan:#?}"
        );
        let names = usernames(
            &get(
                &app,
                "/api/users?prefix=user1234&limit=100",
                &register(&app, "reader").await.token,
            )
            .await
            .expect(200),
        );
        assert_eq!(
            names,
            [
                "user1234",
                "user12340",
                "user12341",
                "user12342",
                "user12343",
                "user12344",
                "user12345",
                "user12346",
                "user12347",
                "user12348",
                "user12349"
            ]
        );
    })
    .await;
}
