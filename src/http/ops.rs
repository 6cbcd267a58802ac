//! Operations endpoints: liveness, readiness, metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

use crate::db::{Db, DbError};
use crate::metrics as m;
use crate::state::AppState;

/// Longest `/readyz` waits for the database.
const READY_CHECK_LIMIT: Duration = Duration::from_secs(1);

/// `GET /healthz`: 200 while the process runs; touches nothing else.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process runs", body = Status)))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when a pooled connection answers; 503 while shutting down
/// or when PostgreSQL is unreachable. A pool that is merely saturated counts as
/// ready: its connections are in use, so the database works, and pulling a busy
/// instance out of a load balancer would only move the load elsewhere.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "A pooled connection answers", body = Status),
        (status = 503, description = "`shutting_down` or `db_unavailable`", body = Status),
    ))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown().is_triggered() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        );
    }
    // An empty pool stays empty (SPEC §6, "Pool at rest"): while the
    // listener's connection to the same server is up, the database answers.
    // Behind a PgBouncer the pool's path differs, so it is pinged anyway.
    let database = &state.settings().database;
    let pool_empty = state.db().pool().status().size == 0;
    if pool_empty && state.hub().tokens().is_enabled() && database.listener.is_none() {
        return (StatusCode::OK, axum::Json(json!({"status": "ready"})));
    }
    let limit = READY_CHECK_LIMIT.min(database.max_wait);
    match state.db().ping(limit).await {
        Ok(()) | Err(DbError::Busy) if !state.shutdown().is_triggered() => {
            (StatusCode::OK, axum::Json(json!({"status": "ready"})))
        }
        Err(DbError::Closed) | Ok(()) | Err(DbError::Busy) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"status": "db_unavailable"})),
            )
        }
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(state.db()),
    )
}

/// The Prometheus text, with pool gauges read from `db` right now.
fn render_metrics(db: &Db) -> String {
    let status = db.pool().status();
    metrics::gauge!(m::DB_POOL_MAX_SIZE).set(status.max_size as f64);
    metrics::gauge!(m::DB_POOL_SIZE).set(status.size as f64);
    metrics::gauge!(m::DB_POOL_AVAILABLE).set(status.available as f64);
    metrics::gauge!(m::DB_POOL_WAITING).set(status.waiting as f64);
    m::process_collector().collect();
    m::handle().render()
}

/// `{"status": ...}` of `/healthz` and `/readyz`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Status {
    /// `ok`, `ready`, `shutting_down` or `db_unavailable`.
    status: String,
}
