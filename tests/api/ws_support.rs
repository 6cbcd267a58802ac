//! WebSocket test support: users, tokens, rooms and messages seeded through
//! the library (independent of the HTTP API), and a small WebSocket client.

// Shared helper: not every test uses every item.
#![allow(dead_code)]

use std::time::Duration;

use chatpool::auth::{self, AuthUser};
use chatpool::domain::Role;
use chatpool::error::ApiError;
use chatpool::store;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::TestApp;

/// How long a test waits for any one frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// A seeded user with a valid token.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// User id.
    pub id: i64,
    /// Username.
    pub username: String,
    /// Bearer token.
    pub token: String,
    /// The token's row id (what logout revokes).
    pub token_id: i64,
    /// Role at creation.
    pub role: Role,
}

impl Seeded {
    /// The caller as the library sees it (for `chat::send_message`).
    pub fn auth(&self) -> AuthUser {
        AuthUser {
            id: self.id,
            username: self.username.clone(),
            display_name: self.username.clone(),
            role: self.role,
            token_id: self.token_id,
        }
    }
}

/// Creates users `{prefix}{i}` with one token each, in one transaction.
pub async fn seed_users(app: &TestApp, prefix: &str, n: usize, role: Role) -> Vec<Seeded> {
    let names = (0..n).map(|i| format!("{prefix}{i}")).collect();
    seed_named(app, names, role).await
}

/// Creates the named users with one token each, in one transaction.
pub async fn seed_named(app: &TestApp, names: Vec<String>, role: Role) -> Vec<Seeded> {
    app.state()
        .db()
        .transaction(move |conn| {
            async move {
                let mut out = Vec::with_capacity(names.len());
                for username in names {
                    let row = store::users::insert(
                        conn,
                        &store::users::NewUser {
                            username: &username,
                            display_name: &username,
                            role,
                            password_hash: "not-a-hash",
                        },
                    )
                    .await?
                    .ok_or_else(|| ApiError::Conflict("username is taken".into()))?;
                    let (token, hash) = auth::new_token();
                    let token_id = store::tokens::insert(conn, row.id, &hash).await?;
                    out.push(Seeded {
                        id: row.id,
                        username,
                        token,
                        token_id,
                        role,
                    });
                }
                Ok::<_, ApiError>(out)
            }
            .boxed()
        })
        .await
        .expect("users seeded")
}

/// One user with one token.
pub async fn seed_user(app: &TestApp, username: &str, role: Role) -> Seeded {
    seed_named(app, vec![username.to_owned()], role)
        .await
        .pop()
        .unwrap()
}

/// A second token for an existing user.
pub async fn new_token(app: &TestApp, user_id: i64) -> (String, i64) {
    app.state()
        .db()
        .transaction(move |conn| {
            async move {
                let (token, hash) = auth::new_token();
                let id = store::tokens::insert(conn, user_id, &hash).await?;
                Ok::<_, ApiError>((token, id))
            }
            .boxed()
        })
        .await
        .expect("token")
}

/// Deletes a token and tells the hub, as logout does.
pub async fn logout(app: &TestApp, token_id: i64) {
    app.state()
        .db()
        .transaction(move |conn| {
            async move { Ok::<_, ApiError>(store::tokens::delete(conn, token_id).await?) }.boxed()
        })
        .await
        .expect("token deleted");
    app.state().hub().revoke_token(token_id);
}

/// Changes a user's role in the database.
pub async fn set_role(app: &TestApp, user_id: i64, role: Role) {
    app.state()
        .db()
        .transaction(move |conn| {
            async move { Ok::<_, ApiError>(store::users::set_role(conn, user_id, role).await?) }
                .boxed()
        })
        .await
        .expect("role set")
        .expect("user exists");
}

/// A room created by `creator` with `members`; returns its id.
pub async fn seed_room(app: &TestApp, creator: i64, members: &[i64]) -> i64 {
    let members = members.to_vec();
    app.state()
        .db()
        .transaction(move |conn| {
            async move {
                Ok::<_, ApiError>(store::rooms::create(conn, "a room", creator, &members).await?)
            }
            .boxed()
        })
        .await
        .expect("room seeded")
        .id
}

/// Appends `n` messages by `author` to `room` straight in SQL (fast backlog).
pub async fn bulk_messages(app: &TestApp, room: i64, author: i64, n: i64) {
    app.state()
        .db()
        .transaction(move |conn| {
            async move {
                diesel::sql_query(
                    "WITH r AS (UPDATE rooms SET last_seq = last_seq + $3 WHERE id = $1 RETURNING last_seq) \
                     INSERT INTO messages (room_id, seq, author_id, body, created_at) \
                     SELECT $1, s, $2, 'bulk ' || s, now() FROM r, generate_series(r.last_seq - $3 + 1, r.last_seq) s",
                )
                .bind::<BigInt, _>(room)
                .bind::<BigInt, _>(author)
                .bind::<BigInt, _>(n)
                .execute(conn)
                .await?;
                Ok::<_, ApiError>(())
            }
            .boxed()
        })
        .await
        .expect("bulk messages");
}

/// The room's stored seqs, ascending.
pub async fn stored_seqs(app: &TestApp, room: i64) -> Vec<i64> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }
    app.state()
        .db()
        .transaction(move |conn| {
            async move {
                let rows: Vec<Row> =
                    diesel::sql_query("SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq")
                        .bind::<BigInt, _>(room)
                        .load(conn)
                        .await?;
                Ok::<_, ApiError>(rows.into_iter().map(|r| r.seq).collect())
            }
            .boxed()
        })
        .await
        .expect("seqs")
}

/// Messages stored under `client_id`.
pub async fn count_client_id(app: &TestApp, client_id: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let client_id = client_id.to_owned();
    app.state()
        .db()
        .transaction(move |conn| {
            async move {
                let row: Row =
                    diesel::sql_query("SELECT count(*) AS n FROM messages WHERE client_id = $1")
                        .bind::<diesel::sql_types::Text, _>(&client_id)
                        .get_result(conn)
                        .await?;
                Ok::<_, ApiError>(row.n)
            }
            .boxed()
        })
        .await
        .expect("count")
}

/// Client-side socket settings: small buffers so hundreds of test clients
/// stay cheap in the test process.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

/// The outcome of an upgrade attempt that was refused.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

/// A test WebSocket client; `hello` is the server's first frame.
pub struct WsClient {
    /// The socket.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `hello` frame.
    pub hello: Value,
}

/// `ws://ADDR/ws` with the token in the query string.
pub fn ws_url(app: &TestApp, token: &str) -> String {
    format!("ws://{}/ws?token={token}", app.addr)
}

/// Attempts an upgrade with `request`; the socket (after `hello`) or the refusal.
pub async fn try_connect_request(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<WsClient, Refused> {
    match tokio_tungstenite::connect_async_with_config(request, Some(client_config()), true).await {
        Ok((ws, _)) => {
            let mut client = WsClient {
                ws,
                hello: Value::Null,
            };
            client.hello = client.recv_json().await;
            assert_eq!(
                client.hello["type"], "hello",
                "first frame: {}",
                client.hello
            );
            Ok(client)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null),
        }),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// Attempts an upgrade with `?token=`.
pub async fn try_connect(app: &TestApp, token: &str) -> Result<WsClient, Refused> {
    try_connect_request(ws_url(app, token).into_client_request().unwrap()).await
}

/// Connects with `?token=` and reads `hello`.
pub async fn connect(app: &TestApp, token: &str) -> WsClient {
    try_connect(app, token)
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"))
}

/// Connects, retrying while the server answers 503 (pool busy under load).
pub async fn connect_retrying(app: &TestApp, token: &str) -> WsClient {
    for _ in 0..50 {
        match try_connect(app, token).await {
            Ok(c) => return c,
            Err(r) if r.status == 503 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(r) => panic!("upgrade refused: {r:?}"),
        }
    }
    panic!("upgrade still refused after 50 attempts");
}

/// Connects with `Authorization: Bearer`.
pub async fn connect_bearer(app: &TestApp, token: &str) -> WsClient {
    let mut request = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    try_connect_request(request)
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"))
}

impl WsClient {
    /// Sends a JSON frame.
    pub async fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("frame sent");
    }

    /// Sends any frame.
    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("frame sent");
    }

    /// The next text frame as JSON (pings and pongs skipped); panics on
    /// close or after [`FRAME_WAIT`].
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("a frame within the wait");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("server frames are JSON")
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads frames until one of type `kind`, returning the ones skipped too.
    pub async fn recv_until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let v = self.recv_json().await;
            if v["type"] == kind {
                return (v, skipped);
            }
            skipped.push(v);
        }
    }

    /// Reads frames until the server's Close, which must carry `code`;
    /// returns the text frames read before it.
    pub async fn expect_close(&mut self, code: u16) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let frame = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("the close within the wait");
            match frame {
                Some(Ok(Message::Close(Some(close)))) => {
                    assert_eq!(
                        u16::from(close.code),
                        code,
                        "close reason: {}",
                        close.reason
                    );
                    return before;
                }
                Some(Ok(Message::Text(text))) => {
                    before.push(serde_json::from_str(&text).expect("JSON"))
                }
                Some(Ok(_)) => {}
                other => panic!("expected Close {code}, got {other:?}"),
            }
        }
    }

    /// `ping` → `pong`: proves the socket still works, and (the server
    /// answers frames after delivering what was queued before them) that
    /// nothing else was pending. Returns the frames that came first.
    pub async fn round_trip(&mut self) -> Vec<Value> {
        self.send_json(json!({"type": "ping", "ref": "rt"})).await;
        let (pong, before) = self.recv_until("pong").await;
        assert_eq!(pong["ref"], "rt");
        before
    }

    /// `join` and its `joined`.
    pub async fn join(&mut self, room: i64, after_seq: Option<i64>) -> Value {
        let mut frame = json!({"type": "join", "room_id": room});
        if let Some(n) = after_seq {
            frame["after_seq"] = json!(n);
        }
        self.send_json(frame).await;
        let joined = self.recv_json().await;
        assert_eq!(joined["type"], "joined", "{joined}");
        joined
    }

    /// `send` and its `ack` (other frames before the ack are returned too).
    pub async fn send_message(
        &mut self,
        room: i64,
        body: &str,
        client_id: &str,
    ) -> (Value, Vec<Value>) {
        self.send_json(
            json!({"type": "send", "room_id": room, "body": body, "client_id": client_id}),
        )
        .await;
        let (ack, before) = self.recv_until("ack").await;
        assert_eq!(ack["client_id"], client_id);
        (ack, before)
    }
}

/// `seq` of a `message` frame.
pub fn seq_of(frame: &Value) -> i64 {
    assert_eq!(frame["type"], "message", "{frame}");
    frame["message"]["seq"].as_i64().expect("seq")
}

/// Raises the soft open-files limit towards `wanted` (sockets in the hundreds
/// need both ends in this process), using `prlimit` when the soft limit is low.
pub fn ensure_open_files(wanted: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files"));
    let numbers: Vec<u64> = line
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (soft, hard) = match numbers.as_slice() {
        [soft, hard, ..] => (*soft, *hard),
        _ => return,
    };
    if soft >= wanted {
        return;
    }
    let target = wanted.min(hard);
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{hard}"))
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "open-files limit is {soft} and prlimit could not raise it to {target}"
    );
}

/// This process's resident memory in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
