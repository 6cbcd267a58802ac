//! Issue 12: the OpenAPI document against the live server. `GET
//! /api/openapi.json` serves the document the handlers generate, and
//! schemathesis (from PyPI, installed by `.ci/schemathesis-venv`) fuzzes
//! every operation from it: no 5xx, and every response matches the document
//! (status, content type, headers, body schema), with bad input refused.

use std::process::{Command, Stdio};
use std::time::Duration;

use chatpool::testkit::{bounded, cluster, BinaryServer};
use serde_json::{json, Value};

use crate::binary;

/// Examples per operation and phase: enough to find a 5xx or a schema
/// mismatch, small enough for CI.
const MAX_EXAMPLES: &str = "25";

/// `CHATPOOL_SCHEMATHESIS`, else the venv `.ci/schemathesis-venv` makes,
/// made now (from PyPI) when missing.
fn schemathesis() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(path) = std::env::var_os("CHATPOOL_SCHEMATHESIS") {
        return path.into();
    }
    let path = root.join("target/schemathesis-venv/bin/schemathesis");
    if !path.is_file() {
        let status = Command::new("bash")
            .arg(root.join(".ci/schemathesis-venv"))
            .status()
            .expect("run .ci/schemathesis-venv");
        assert!(status.success(), ".ci/schemathesis-venv failed");
    }
    assert!(
        path.is_file(),
        "schemathesis is not installed at {}: run .ci/schemathesis-venv (as .ci/run does)",
        path.display()
    );
    path
}

/// The live server with an admin whose token schemathesis sends.
async fn server_with_admin() -> (BinaryServer, String, chatpool::testkit::TestDatabase) {
    let db = cluster().create_database().await;
    let url = db.url.clone();
    let mut add = Command::new(binary())
        .args([
            "user",
            "add",
            "fuzzadmin",
            "--role",
            "admin",
            "--password-stdin",
        ])
        .env("DATABASE_URL", &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("chatpool user add");
    {
        use std::io::Write;
        writeln!(add.stdin.take().unwrap(), "fuzz-admin-password").unwrap();
    }
    assert!(add.wait().unwrap().success());
    let server = tokio::task::spawn_blocking(move || {
        BinaryServer::start(
            binary(),
            &[
                ("DATABASE_URL", url),
                ("CHATPOOL_SEND_RATE", "0".into()),
                ("CHATPOOL_REGISTER_RATE", "0".into()),
                ("CHATPOOL_MAX_SOCKETS_PER_USER", "0".into()),
                ("RUST_LOG", "warn,chatpool::startup=info".into()),
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = http.post(server.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let login: Value = post(
        "/api/auth/login",
        None,
        json!({"username": "fuzzadmin", "password": "fuzz-admin-password"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = login["token"].as_str().expect("a token").to_owned();
    // Something for the `{id}` paths to find: room 1 with a message.
    let room: Value = post("/api/rooms", Some(&token), json!({"name": "fuzz"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = room["id"].as_i64().expect("a room");
    let sent = post(
        &format!("/api/rooms/{room}/messages"),
        Some(&token),
        json!({"body": "first"}),
    )
    .await
    .unwrap();
    assert_eq!(sent.status(), 201);
    (server, token, db)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_served_document_is_the_generated_one_and_schemathesis_finds_nothing() {
    let st = schemathesis();
    bounded(async {
        let (server, token, _db) = server_with_admin().await;
        let served: Value = reqwest::get(server.url("/api/openapi.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(served["openapi"], "3.1.0");
        assert_eq!(served, chatpool::testkit::probe::openapi_document());
        assert!(served["paths"]["/api/rooms/{id}/messages"]["post"].is_object());

        let schema = server.url("/api/openapi.json");
        let base = server.url("");
        let out = tokio::task::spawn_blocking(move || {
            // Its cache and reports go under target/, not into the tree.
            let workdir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
            Command::new(st)
                .current_dir(workdir)
                .args(["run", &schema, "--url", &base])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,\
                     response_headers_conformance,response_schema_conformance,\
                     negative_data_rejection,ignored_auth",
                ])
                // The upgrade is SPEC §3's, not HTTP's; logout would revoke the token.
                .args([
                    "--exclude-path",
                    "/ws",
                    "--exclude-path",
                    "/api/auth/logout",
                ])
                .args(["--phases", "examples,coverage,fuzzing"])
                .args([
                    "--max-examples",
                    MAX_EXAMPLES,
                    "--workers",
                    "2",
                    "--seed",
                    "1",
                ])
                .args(["--request-timeout", "10", "--generation-allow-x00", "false"])
                .args(["--suppress-health-check", "all"])
                .env("NO_COLOR", "1")
                .output()
                .expect("schemathesis runs")
        })
        .await
        .unwrap();
        let report = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // What it tried, for the log of a passing run too.
        eprintln!("{report}");
        assert!(
            report.contains("operations") || report.contains("Operations"),
            "no summary: {report}"
        );
        assert!(
            out.status.success(),
            "schemathesis found problems:\n{report}\nserver log:\n{}",
            server.log()
        );
    })
    .await;
}
