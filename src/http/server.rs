//! The accept loop and the drain gate.
//!
//! chatpool runs its own hyper accept loop instead of `axum::serve` so that
//! shutdown can be staged: once shutdown starts, the port still answers, but
//! every new request gets 503 `shutting_down` (and `/readyz` says so) while
//! in-flight requests and WebSocket sessions finish. Only then are the
//! listener and the remaining keep-alive connections closed.
//!
//! Open HTTP connections are capped (`CHATPOOL_MAX_HTTP_CONNECTIONS`): past
//! the cap a new connection gets one `503 server_busy` and is closed, so the
//! accept loop keeps running, `/healthz` keeps answering once a slot frees,
//! and file descriptors stay bounded. A connection leaves the count when it
//! upgrades: WebSocket sessions have their own cap. Headers must arrive
//! within [`HEADER_READ_TIMEOUT`] (hyper also applies it to a keep-alive
//! connection waiting for its next request) and a JSON body within
//! `CHATPOOL_BODY_TIMEOUT_MS` (see [`super::Json`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::metrics as m;
use crate::state::AppState;

/// A client must send its request headers within this time (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Routes that keep answering normally during the drain: operators and load
/// balancers need them most then.
const OPS_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Accepts connections and serves `router` on them until `close` is
/// cancelled; then stops accepting, lets each connection finish its current
/// request, and returns once all are closed. Upgraded (WebSocket) connections
/// leave this loop's care at the upgrade; their sessions are tracked by
/// [`crate::shutdown::Shutdown::tracker`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    close: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = close.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            connections.spawn(refuse_busy(stream));
            continue;
        };
        let router = router.clone();
        let close = close.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request.map(axum::body::Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = close.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The whole answer to a connection past the cap: the SPEC's error shape.
fn busy_response() -> Vec<u8> {
    let body = serde_json::json!({"error": {
        "code": "server_busy",
        "message": "too many connections; retry later",
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection past the cap with 503 `server_busy` and closes it
/// (bounded, so a peer that never reads cannot hold it). What the peer sent
/// is read and dropped for a moment first: closing a socket with unread
/// input resets it, and the peer might lose the answer.
async fn refuse_busy(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&busy_response()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// Middleware: counts every request as in flight for the drain, and once
/// shutdown has started refuses new ones (but the ops endpoints) with 503
/// `shutting_down`, new WebSocket upgrades included.
pub async fn drain_gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let shutdown = state.shutdown();
    if shutdown.is_triggered() && !OPS_PATHS.contains(&request.uri().path()) {
        return ApiError::ShuttingDown.into_response();
    }
    let _in_flight = InFlight::enter();
    shutdown.requests().track_future(next.run(request)).await
}

/// Keeps `chatpool_http_requests_in_flight` right even when a request's
/// future is dropped (a client that disconnects).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!(m::HTTP_REQUESTS_IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(m::HTTP_REQUESTS_IN_FLIGHT).decrement(1.0);
    }
}
