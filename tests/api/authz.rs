//! Issue 3: the authorization matrix — every endpoint of SPEC §2 called as
//! anonymous, a room member, a non-member, an agent and an admin.

use chatpool::testkit::api::{
    call, create_room, id_of, login, register, user_with_role, Session, PASSWORD,
};
use chatpool::testkit::{bounded, spawn_app, Role};
use reqwest::Method;
use serde_json::{json, Value};

/// The callers of the matrix, in column order.
const CALLERS: [&str; 5] = ["anonymous", "member", "non-member", "agent", "admin"];

/// One row: a request and the status each caller must get.
struct Row {
    method: Method,
    path: String,
    body: Option<Value>,
    expect: [u16; 5],
}

fn row(method: Method, path: String, body: Option<Value>, expect: [u16; 5]) -> Row {
    Row {
        method,
        path,
        body,
        expect,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_each_role_as_the_spec_says() {
    bounded(async {
        let app = spawn_app().await;
        let owner = register(&app, "owner").await;
        let member = register(&app, "member").await;
        let outsider = register(&app, "outsider").await;
        let agent = user_with_role(&app, "agent", Role::Agent).await;
        let admin = user_with_role(&app, "admin", Role::Admin).await;
        let victim = register(&app, "victim").await;
        let extra = register(&app, "extra").await;
        let room =
            id_of(&create_room(&app, &owner.token, "room", &[member.id(), victim.id()]).await);
        let sessions: [Option<&Session>; 5] = [
            None,
            Some(&member),
            Some(&outsider),
            Some(&agent),
            Some(&admin),
        ];

        use Method as M;
        let r = |p: &str| format!("/api/rooms/{room}{p}");
        let rows = vec![
            row(M::GET, "/api/me".into(), None, [401, 200, 200, 200, 200]),
            row(
                M::GET,
                "/api/users?prefix=o".into(),
                None,
                [401, 200, 200, 200, 200],
            ),
            row(
                M::POST,
                "/api/rooms".into(),
                Some(json!({"name": "new"})),
                [401, 201, 201, 201, 201],
            ),
            row(M::GET, "/api/rooms".into(), None, [401, 200, 200, 200, 200]),
            row(
                M::GET,
                "/api/rooms?scope=all".into(),
                None,
                [401, 403, 403, 200, 200],
            ),
            row(M::GET, r(""), None, [401, 200, 404, 200, 200]),
            row(
                M::POST,
                r("/members"),
                Some(json!({"user_id": extra.id()})),
                [401, 204, 404, 204, 204],
            ),
            row(
                M::DELETE,
                r(&format!("/members/{}", victim.id())),
                None,
                [401, 403, 404, 204, 204],
            ),
            row(M::GET, r("/messages"), None, [401, 200, 404, 200, 200]),
            row(
                M::POST,
                r("/messages"),
                Some(json!({"body": "hi"})),
                [401, 201, 404, 201, 201],
            ),
            row(
                M::GET,
                "/api/admin/users".into(),
                None,
                [401, 403, 403, 403, 200],
            ),
            row(
                M::PATCH,
                format!("/api/admin/users/{}", victim.id()),
                Some(json!({"role": "member"})),
                [401, 403, 403, 403, 200],
            ),
            // The role is checked before the query and the body.
            row(
                M::GET,
                "/api/admin/users?limit=abc".into(),
                None,
                [401, 403, 403, 403, 400],
            ),
            row(
                M::PATCH,
                format!("/api/admin/users/{}", victim.id()),
                Some(json!({"role": "root"})),
                [401, 403, 403, 403, 400],
            ),
            row(
                M::GET,
                "/api/admin/stats".into(),
                None,
                [401, 403, 403, 403, 200],
            ),
            row(
                M::GET,
                "/api/admin/connections".into(),
                None,
                [401, 403, 403, 403, 200],
            ),
            row(M::GET, "/healthz".into(), None, [200; 5]),
            row(M::GET, "/readyz".into(), None, [200; 5]),
            row(M::GET, "/metrics".into(), None, [200; 5]),
        ];

        let mut failures = Vec::new();
        let mut check = |what: &str, caller: usize, got: u16, want: u16, text: &str| {
            if got != want {
                failures.push(format!(
                    "{what} as {}: got {got}, want {want} ({text})",
                    CALLERS[caller]
                ));
            }
        };
        for row in &rows {
            for (i, session) in sessions.iter().enumerate() {
                let reply = call(
                    &app,
                    row.method.clone(),
                    &row.path,
                    session.map(|s| s.token.as_str()),
                    row.body.clone(),
                )
                .await;
                if reply.status.is_client_error() {
                    let body = reply.json();
                    assert!(
                        body["error"]["code"].is_string(),
                        "not a SPEC error: {}",
                        reply.text
                    );
                }
                check(
                    &format!("{} {}", row.method, row.path),
                    i,
                    reply.status.as_u16(),
                    row.expect[i],
                    &reply.text,
                );
                // Put the victim back for the next caller.
                if row.method == M::DELETE {
                    call(
                        &app,
                        M::POST,
                        &r("/members"),
                        Some(&owner.token),
                        Some(json!({"user_id": victim.id()})),
                    )
                    .await
                    .expect(204);
                }
            }
        }

        // Anyone may register and log in, with or without a token.
        for (i, session) in sessions.iter().enumerate() {
            let token = session.map(|s| s.token.as_str());
            let reply = call(
                &app,
                M::POST,
                "/api/auth/register",
                token,
                Some(json!({"username": format!("new{i}"), "password": PASSWORD})),
            )
            .await;
            check(
                "POST /api/auth/register",
                i,
                reply.status.as_u16(),
                201,
                &reply.text,
            );
            let reply = call(
                &app,
                M::POST,
                "/api/auth/login",
                token,
                Some(json!({"username": "victim", "password": PASSWORD})),
            )
            .await;
            check(
                "POST /api/auth/login",
                i,
                reply.status.as_u16(),
                200,
                &reply.text,
            );
        }

        // Logout: every user may end their own session (a fresh one each time).
        for (i, session) in sessions.iter().enumerate() {
            let token = match session {
                Some(s) => {
                    let fresh = login(&app, s.user["username"].as_str().unwrap(), PASSWORD)
                        .await
                        .expect(200);
                    Some(fresh["token"].as_str().unwrap().to_owned())
                }
                None => None,
            };
            let reply = call(&app, M::POST, "/api/auth/logout", token.as_deref(), None).await;
            let want = if session.is_some() { 204 } else { 401 };
            check(
                "POST /api/auth/logout",
                i,
                reply.status.as_u16(),
                want,
                &reply.text,
            );
        }

        assert!(
            failures.is_empty(),
            "authorization matrix:\n{}",
            failures.join("\n")
        );
    })
    .await;
}
