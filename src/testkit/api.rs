//! A typed client for the HTTP API of SPEC §2.
//!
//! Tests check statuses and bodies, not HTTP mechanics: these calls return a
//! [`Reply`] with the status, `Retry-After` and body read, and assert the SPEC's
//! error shape in one place ([`Reply::expect_error`]).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::app::TestApp;
use super::seed::set_role;
use super::Role;

/// The password every user made by [`register`] has, so a test can log in
/// as them.
pub const PASSWORD: &str = "correct horse battery";

/// A registered user: their token and their user object as the API sent it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Bearer token.
    pub token: String,
    /// User object as the API returned it.
    pub user: Value,
}

impl Session {
    /// The user's id.
    pub fn id(&self) -> i64 {
        self.user["id"].as_i64().expect("user id")
    }
}

/// A response reduced to what tests look at, body already read.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
    /// The body as text (empty for 204).
    pub text: String,
}

impl Reply {
    /// The body as JSON (`Null` when empty).
    pub fn json(&self) -> Value {
        if self.text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.text)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
        }
    }

    /// Asserts the status and returns the JSON body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self.json()
    }

    /// Asserts the status and returns the body text.
    pub fn expect_text(&self, status: u16) -> String {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self.text.clone()
    }

    /// Asserts a SPEC error: status, `{"error": {"code", "message"}}` shape, code.
    pub fn expect_error(&self, status: u16, code: &str) {
        let body = self.expect(status);
        assert_eq!(body["error"]["code"], code, "body: {}", self.text);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without a message: {}",
            self.text
        );
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(1),
            "extra keys: {}",
            self.text
        );
    }
}

/// Sends a request (any method, token and JSON body optional) and collects
/// the reply: what every other call here is made of.
pub async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut request = app.http.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    collect(response).await
}

/// A reqwest response as a [`Reply`], for requests a test builds itself
/// (raw bodies, odd headers).
pub async fn collect(response: reqwest::Response) -> Reply {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.expect("body read");
    Reply {
        status,
        retry_after,
        text,
    }
}

/// GET with a token.
pub async fn get(app: &TestApp, path: &str, token: &str) -> Reply {
    call(app, Method::GET, path, Some(token), None).await
}

/// POST JSON with a token.
pub async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> Reply {
    call(app, Method::POST, path, Some(token), Some(body)).await
}

/// `POST /api/auth/register` with a raw body.
pub async fn register_raw(app: &TestApp, body: Value) -> Reply {
    call(app, Method::POST, "/api/auth/register", None, Some(body)).await
}

/// Registers `username` with [`PASSWORD`] and returns the session.
pub async fn register(app: &TestApp, username: impl AsRef<str>) -> Session {
    let username = username.as_ref();
    let body = register_raw(app, json!({"username": username, "password": PASSWORD}))
        .await
        .expect(201);
    Session {
        token: body["token"].as_str().expect("token").to_owned(),
        user: body["user"].clone(),
    }
}

/// Registers `username` and gives them `role` (through the app's own pool,
/// the way an admin's PATCH would): staff users without an admin to promote them.
pub async fn user_with_role(app: &TestApp, username: &str, role: Role) -> Session {
    let mut session = register(app, username).await;
    set_role(app, session.id(), role).await;
    session.user["role"] = json!(role.as_str());
    session
}

/// `POST /api/auth/login`.
pub async fn login(app: &TestApp, username: &str, password: &str) -> Reply {
    call(
        app,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"username": username, "password": password})),
    )
    .await
}

/// Creates a room and returns the room object.
pub async fn create_room(app: &TestApp, token: &str, name: &str, member_ids: &[i64]) -> Value {
    post(
        app,
        "/api/rooms",
        token,
        json!({"name": name, "member_ids": member_ids}),
    )
    .await
    .expect(201)
}

/// The id of a JSON object.
pub fn id_of(value: &Value) -> i64 {
    value["id"].as_i64().expect("id")
}

/// `POST /api/rooms/{room}/messages`.
pub async fn post_message(
    app: &TestApp,
    token: &str,
    room: i64,
    body: &str,
    client_id: Option<&str>,
) -> Reply {
    post(
        app,
        &format!("/api/rooms/{room}/messages"),
        token,
        json!({"body": body, "client_id": client_id}),
    )
    .await
}

/// `GET /api/rooms/{room}/messages?{query}`.
pub async fn history(app: &TestApp, token: &str, room: i64, query: &str) -> Reply {
    get(app, &format!("/api/rooms/{room}/messages?{query}"), token).await
}

/// The seqs of a history page.
pub fn seqs(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

/// The `username`s of a `{"users": [...]}` body, in order.
pub fn usernames(body: &serde_json::Value) -> Vec<String> {
    body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect()
}
