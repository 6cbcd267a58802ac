//! A WebSocket client for the server's `/ws` protocol (SPEC §3).
//!
//! Tests want to say "join, send, expect this frame" and fail with a clear
//! message when a frame does not come: [`WsClient`] reads JSON frames with a
//! bound on every wait and skips control frames. Load runs want the same
//! client without panics, counting failures instead: the `try_` methods and
//! [`open`] return errors as text.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::app::TestApp;

/// How long a client waits for any one frame (or handshake).
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// Client-side socket settings: small buffers so hundreds of test clients
/// stay cheap in the test process.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}

/// What a refused upgrade answered, so a test can check the SPEC error.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

/// A WebSocket client that has read the server's `hello`.
pub struct WsClient {
    /// The socket itself, for what the methods do not cover (raw frames,
    /// pings, a handshake over a socket built by hand).
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `hello` frame (the user, the heartbeat interval).
    pub hello: Value,
    /// Whether `presence` frames are returned. Off by default: they arrive
    /// whenever anyone joins or leaves a room (SPEC §5), and only the tests
    /// of presence want them ([`WsClient::watch_presence`]).
    pub presence: bool,
}

/// `ws://ADDR/ws?token=…`, for handshakes a test builds itself.
pub fn ws_url(app: &TestApp, token: &str) -> String {
    format!("ws://{}/ws?token={token}", app.addr)
}

/// Attempts an upgrade with `request` (any headers, or no token at all); the
/// socket (after `hello`) or the refusal.
pub async fn try_connect_request(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<WsClient, Refused> {
    match tokio_tungstenite::connect_async_with_config(request, Some(client_config()), true).await {
        Ok((ws, _)) => {
            let mut client = WsClient {
                ws,
                hello: Value::Null,
                presence: false,
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

/// Connects to `ws://addr/ws?token=` and reads `hello`, retrying while the
/// server answers 503 (up to 50 times, 50 ms apart), each attempt within
/// [`FRAME_WAIT`]: for load clients, which report a failure rather than panic.
pub async fn open(addr: SocketAddr, token: &str) -> Result<WsClient, String> {
    let url = format!("ws://{addr}/ws?token={token}");
    for _ in 0..50 {
        let attempt = tokio::time::timeout(
            FRAME_WAIT,
            tokio_tungstenite::connect_async_with_config(&url, Some(client_config()), true),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?;
        match attempt {
            Ok((ws, _)) => {
                let mut client = WsClient {
                    ws,
                    hello: Value::Null,
                    presence: false,
                };
                client.hello = client.try_recv_json().await?;
                if client.hello["type"] != "hello" {
                    return Err(format!("first frame {}", client.hello));
                }
                return Ok(client);
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("upgrade failed: {e}")),
        }
    }
    Err("upgrade still refused (503) after 50 attempts".into())
}

/// [`open`], then `join` `room` and wait for `joined`; errors instead of
/// panics, for the bench's many sockets.
pub async fn open_joined(addr: SocketAddr, token: &str, room: i64) -> Result<WsClient, String> {
    let mut ws = open(addr, token).await?;
    ws.try_send_json(&serde_json::json!({"type": "join", "room_id": room}))
        .await?;
    let joined = ws.try_recv_json().await?;
    if joined["type"] != "joined" {
        return Err(format!("join answered {joined}"));
    }
    Ok(ws)
}

/// Attempts an upgrade with `?token=`, for tests that expect a refusal.
pub async fn try_connect(app: &TestApp, token: &str) -> Result<WsClient, Refused> {
    try_connect_request(ws_url(app, token).into_client_request().unwrap()).await
}

/// Connects with `?token=` and reads `hello`; panics when refused.
pub async fn connect(app: &TestApp, token: &str) -> WsClient {
    try_connect(app, token)
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"))
}

/// Connects, retrying while the server answers 503 (pool busy under load);
/// panics when it still cannot (see [`open`]).
pub async fn connect_retrying(app: &TestApp, token: &str) -> WsClient {
    open(app.addr, token)
        .await
        .unwrap_or_else(|e| panic!("upgrade refused: {e}"))
}

/// Connects with `Authorization: Bearer` instead of the query string.
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
    /// Returns `presence` frames from now on.
    pub fn watch_presence(&mut self) {
        self.presence = true;
    }

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

    /// Sends a JSON frame; the error as text.
    pub async fn try_send_json(&mut self, value: &Value) -> Result<(), String> {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next text frame as JSON (pings and pongs skipped); panics on
    /// close or after [`FRAME_WAIT`].
    pub async fn recv_json(&mut self) -> Value {
        self.try_recv_json().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`WsClient::recv_json`] that returns what went wrong instead of panicking.
    pub async fn try_recv_json(&mut self) -> Result<Value, String> {
        let text = self.try_recv_text().await?;
        serde_json::from_str(&text).map_err(|e| format!("server frames are JSON: {e}: {text}"))
    }

    /// The next text frame as sent (pings and pongs skipped), for load
    /// clients that parse only what they measure.
    pub async fn try_recv_text(&mut self) -> Result<Utf8Bytes, String> {
        loop {
            let frame = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .map_err(|_| format!("no frame within {FRAME_WAIT:?}"))?;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    if !self.presence && text.as_str().starts_with(r#"{"type":"presence""#) {
                        continue;
                    }
                    return Ok(text);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return Err(format!("expected a text frame, got {other:?}")),
            }
        }
    }

    /// Reads (answering pings) until the socket ends: how an idle client
    /// stays connected.
    pub async fn read_until_closed(mut self) {
        while let Some(Ok(_)) = self.ws.next().await {}
    }

    /// Closes the socket politely (Close frame), ignoring errors.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
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
                    let frame: Value = serde_json::from_str(&text).expect("JSON");
                    if self.presence || frame["type"] != "presence" {
                        before.push(frame);
                    }
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
