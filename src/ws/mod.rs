//! The WebSocket endpoint (SPEC §3): `GET /ws` upgrades on the same HTTP
//! server, then a [`session`] speaks the protocol of [`protocol`] and closes
//! with one of the codes of [`close`].
//!
//! Everything that can be refused is refused before the 101: a missing or bad
//! token (401), a request that is not a WebSocket handshake (400), a user
//! holding `CHATPOOL_MAX_SOCKETS_PER_USER` sessions already (429), a full
//! house or a server shutting down (503). The upgraded connection is handed to
//! tokio-tungstenite directly with a small-memory [`socket_config`].

pub mod close;
mod cursor;
pub mod protocol;
mod session;

use axum::extract::{Request, State};
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::auth;
use crate::error::ApiError;
use crate::state::AppState;

/// Largest frame and message a client may send; above it the socket is closed
/// with [`close::Close::TooBig`] (1009).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// tungstenite's defaults allocate a 128 KiB read buffer per socket (over
/// 1 GiB at 10,000 idle sockets). Every idle socket keeps its read buffer, so
/// it is 1 KiB (a larger frame is read in several steps; 4 KiB cost 2.7 KiB
/// more per idle socket, docs/benchmarks.md); the write buffer only fills
/// while frames go out, and is bounded so a stuck peer cannot grow it.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// `GET /ws`: checks everything, answers 101 and starts the session on the
/// shutdown tracker (the HTTP server stops caring once a connection upgrades).
#[utoipa::path(get, path = "/ws", tag = "websocket",
    params(("token" = String, Query, description = "A bearer token")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (SPEC §3)"),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade", body = crate::error::ErrorBody),
        (status = 401, description = "`unauthorized`", body = crate::error::ErrorBody),
        (status = 429, description = "`rate_limited`: sockets per user", body = crate::error::ErrorBody),
        (status = 503, description = "`server_busy`, `shutting_down`, `db_*`", body = crate::error::ErrorBody),
    ))]
pub async fn upgrade(State(state): State<AppState>, request: Request) -> Response {
    if state.shutdown().is_triggered() {
        return ApiError::ShuttingDown.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let Some(token) = token_of(&parts) else {
        return ApiError::Unauthorized.into_response();
    };
    let key = match handshake_key(&parts.headers) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let Some(mut admission) = state.hub().admit(state.settings().max_sockets) else {
        return ApiError::ServerBusy("too many WebSocket sessions; retry later".into())
            .into_response();
    };
    let (user, view) = match auth::authenticate_user(&state, &token).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    if let Some(max) = state.limits().sockets_per_user {
        if !admission.claim_user(user.id, max) {
            return ApiError::LimitReached(format!(
                "at most {max} WebSocket sessions per user; close one first"
            ))
            .into_response();
        }
    }
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::BadRequest("this connection cannot be upgraded".into()).into_response();
    };

    let session_state = state.clone();
    state.shutdown().tracker().spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
        };
        match into_tcp(upgraded) {
            Ok((tcp, buffered)) => {
                // Boxed: this step runs once, and inline it would enlarge the
                // task for the socket's whole life.
                let ws = Box::pin(WebSocketStream::from_partially_read(
                    tcp,
                    buffered,
                    Role::Server,
                    Some(socket_config()),
                ))
                .await;
                session::run(session_state, ws, user, view, admission).await;
            }
            Err(upgraded) => {
                Box::pin(async move {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(socket_config()),
                    )
                    .await;
                    session::run(session_state, ws, user, view, admission).await;
                })
                .await;
            }
        }
    });

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value"),
    );
    response
}

/// The TCP stream under the upgrade, with the bytes hyper read past the
/// request, so Nagle can be switched off: chat frames are small and latency
/// matters more than packet count.
fn into_tcp(upgraded: Upgraded) -> Result<(TcpStream, Vec<u8>), Upgraded> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>()?;
    let tcp = parts.io.into_inner();
    let _ = tcp.set_nodelay(true);
    Ok((tcp, parts.read_buf.to_vec()))
}

/// `Authorization: Bearer TOKEN`, else `?token=TOKEN` (browsers cannot set headers).
fn token_of(parts: &axum::http::request::Parts) -> Option<String> {
    if let Some(token) = auth::bearer(parts) {
        return Some(token.to_owned());
    }
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// The `Sec-WebSocket-Key` of a valid RFC 6455 handshake, else 400.
fn handshake_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name, wanted: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(wanted))
            })
        })
    };
    if !has_token(UPGRADE, "websocket") {
        return Err(ApiError::BadRequest(
            "expected a WebSocket upgrade (Upgrade: websocket)".into(),
        ));
    }
    if !has_token(CONNECTION, "upgrade") {
        return Err(ApiError::BadRequest("expected Connection: Upgrade".into()));
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ApiError::BadRequest(
            "only WebSocket version 13 is supported".into(),
        ));
    }
    match headers.get(SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()) {
        Some(key) if key.trim().len() == 24 => Ok(key.trim().to_owned()),
        _ => Err(ApiError::BadRequest(
            "missing or malformed Sec-WebSocket-Key".into(),
        )),
    }
}
