//! The HTTP server: router, JSON extraction and the layers every request passes.
//!
//! Every error, including unknown routes and rejected bodies, leaves in the
//! SPEC's `{"error": {"code", "message"}}` shape.

mod accounts;
mod admin;
mod console;
mod conversation;
mod cors;
mod extract;
pub mod openapi;
mod ops;
mod rooms;
mod search;
pub mod server;

use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::metrics as m;
use crate::state::AppState;

/// Largest request body accepted (SPEC: 413 `too_large` above it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The router of `CHATPOOL_METRICS_LISTEN`: `/metrics` alone.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Builds the router with every route and layer. The routes come with
/// their OpenAPI documentation ([`openapi::api`]); `/metrics` is served here
/// unless `CHATPOOL_METRICS_LISTEN` gives it an address of its own.
pub fn router(state: AppState) -> Router {
    let metrics_here = state.settings().metrics_listen.is_none();
    let (routes, _) = openapi::api(metrics_here).split_for_parts();
    let document = axum::body::Bytes::from(
        openapi::document()
            .to_json()
            .expect("the OpenAPI document serialises"),
    );
    routes
        .route(
            "/api/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document,
                    )
                }
            }),
        )
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            server::drain_gate,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        // Inside the request id and the log, so preflights get both; outside
        // everything that answers, so every answer gets its headers.
        .layer(cors::layer(&state.settings().cors))
        .layer(middleware::from_fn(observe))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::map_request(drop_unusable_request_id))
        .with_state(state)
}

/// A handler that panicked: 500 `internal` in the SPEC's shape (the panic
/// itself is logged); the connection, the pool and every other request go on.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ApiError::Internal(anyhow::anyhow!("handler panicked: {what}")).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The span of a request: its method and route pattern, never the URI (a
/// `/ws?token=` query string carries a bearer token) or a raw path.
fn request_span(request: &Request) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = method_label(request.method()),
        route = route_label(request)
    )
}

/// A method as a metrics label or log field: the standard ones by name,
/// anything else as `OTHER`, so a client cannot mint label values.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The matched route pattern (`/api/rooms/{id}`), or `unmatched`.
fn route_label(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

/// Counts, times and logs every request: one `info` line with method, route
/// pattern, status, duration and request id (SPEC §6), never the URI, a
/// query string, a token or a body.
async fn observe(request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = route_label(&request);
    // Set (taken or made) by the outer request-id layer.
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::info!(
        target: "chatpool::http",
        method,
        route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        request_id,
        "request"
    );
    response
}

/// The request id header, taken from the request or made (SPEC §6).
const REQUEST_ID: &str = "x-request-id";

/// A request id from the client is kept only if it is 1 to 128 characters
/// of `A-Za-z0-9` and `-_.:`; anything else (a forged log line, a huge
/// value) is dropped and a fresh one made.
async fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = |v: &axum::http::HeaderValue| {
        let b = v.as_bytes();
        (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
    };
    let headers = request.headers_mut();
    if headers.get_all(REQUEST_ID).iter().count() > 1
        || headers.get(REQUEST_ID).is_some_and(|v| !usable(v))
    {
        headers.remove(REQUEST_ID);
    }
    request
}

/// `axum::Json` whose rejections are SPEC errors: 400 `bad_request` for bad
/// JSON, wrong content type or wrong fields, 413 `too_large` over the limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// The body must arrive within `CHATPOOL_BODY_TIMEOUT_MS` whatever its pace
/// (408 `request_timeout`): a body trickled a byte at a time would otherwise
/// hold its connection forever.
impl<T> FromRequest<AppState> for Json<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings().body_timeout;
        let read = axum::Json::<T>::from_request(req, state);
        match tokio::time::timeout(limit, read).await {
            Ok(Ok(axum::Json(value))) => Ok(Json(value)),
            Ok(Err(rejection)) => Err(json_rejection(rejection)),
            Err(_) => Err(ApiError::RequestTimeout(limit.as_secs().max(1))),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge
    } else {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// `axum::extract::Query` whose rejections are 400 `bad_request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}
