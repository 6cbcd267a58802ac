//! Prometheus metrics: names in one place, the recorder installed once.
//!
//! Counters and histograms are recorded where the event happens; pool gauges
//! are read from the pool's own status when `/metrics` is scraped (see
//! `http::ops`), so they are never stale. This module knows names, not the
//! pool.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Pool capacity (`connection_limit - 1`).
pub const DB_POOL_MAX_SIZE: &str = "chatpool_db_pool_max_size";
/// Connections the pool currently holds.
pub const DB_POOL_SIZE: &str = "chatpool_db_pool_size";
/// Idle connections ready to hand out.
pub const DB_POOL_AVAILABLE: &str = "chatpool_db_pool_available";
/// Callers waiting for a connection.
pub const DB_POOL_WAITING: &str = "chatpool_db_pool_waiting";
/// Time spent waiting for a connection (histogram).
pub const DB_POOL_WAIT_SECONDS: &str = "chatpool_db_pool_wait_seconds";
/// Acquisitions that gave up after the wait limit (`db_busy`).
pub const DB_POOL_TIMEOUTS_TOTAL: &str = "chatpool_db_pool_timeouts_total";
/// Transactions rolled back for running past the time limit (`db_timeout`).
pub const DB_TX_TIMEOUTS_TOTAL: &str = "chatpool_db_tx_timeouts_total";
/// Open WebSocket sessions.
pub const WS_SESSIONS: &str = "chatpool_ws_sessions";
/// Messages stored.
pub const MESSAGES_TOTAL: &str = "chatpool_messages_total";
/// Sends per group-commit batch (histogram).
pub const SEND_BATCH_SIZE: &str = "chatpool_send_batch_size";
/// HTTP requests answered, by method, route and status.
pub const HTTP_REQUESTS_TOTAL: &str = "chatpool_http_requests_total";
/// Time to answer an HTTP request, by method and route (histogram).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "chatpool_http_request_duration_seconds";
/// 1, labelled with the running version.
pub const BUILD_INFO: &str = "chatpool_build_info";
/// HTTP requests being handled right now (what the shutdown drain waits for).
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "chatpool_http_requests_in_flight";
/// 1 while the cross-instance LISTEN connection is up, else 0.
pub const LISTENER_UP: &str = "chatpool_listener_up";
/// Times the LISTEN connection was re-established after a loss.
pub const LISTENER_RECONNECTS_TOTAL: &str = "chatpool_listener_reconnects_total";
/// Notifications received on the LISTEN connection.
pub const LISTENER_NOTIFICATIONS_TOTAL: &str = "chatpool_listener_notifications_total";
/// Notifications dropped: not signed by chatpool, or from a role that
/// cannot write its tables (SPEC §4).
pub const LISTENER_FORGED_TOTAL: &str = "chatpool_listener_forged_total";
/// Messages read back from the database after a reconnect.
pub const LISTENER_CATCH_UP_MESSAGES_TOTAL: &str = "chatpool_listener_catch_up_messages_total";

/// The process-wide Prometheus recorder. The `metrics` facade is global, so
/// several in-process servers (tests) share it; gauges are set per scrape.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(DB_POOL_WAIT_SECONDS.to_owned()),
                &[
                    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
                ],
            )
            .expect("bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.to_owned()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )
            .expect("bucket list is not empty")
            .set_buckets_for_metric(
                Matcher::Full(SEND_BATCH_SIZE.to_owned()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (e.g. by an embedding program).
        let _ = metrics::set_global_recorder(recorder);
        describe();
        register_all();
        handle
    })
}

/// Every series from the first scrape on (SPEC §6): counters at 0, gauges
/// at their resting value, histograms with empty buckets, and one series of
/// each labelled family, so dashboards and alerts see 0 rather than "no data".
fn register_all() {
    for counter in [
        DB_POOL_TIMEOUTS_TOTAL,
        DB_TX_TIMEOUTS_TOTAL,
        MESSAGES_TOTAL,
        LISTENER_RECONNECTS_TOTAL,
        LISTENER_NOTIFICATIONS_TOTAL,
        LISTENER_FORGED_TOTAL,
        LISTENER_CATCH_UP_MESSAGES_TOTAL,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for gauge in [WS_SESSIONS, HTTP_REQUESTS_IN_FLIGHT, LISTENER_UP] {
        metrics::gauge!(gauge).increment(0.0);
    }
    for histogram in [DB_POOL_WAIT_SECONDS, SEND_BATCH_SIZE] {
        drop(metrics::histogram!(histogram));
    }
    metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => "GET", "route" => "/healthz", "status" => "200")
        .increment(0);
    drop(
        metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => "GET", "route" => "/healthz"),
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    process_collector().describe();
}

/// The `process_*` series (CPU seconds, resident memory, open files,
/// threads, start time), refreshed at each scrape.
pub fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

fn describe() {
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request"
    );
    metrics::describe_gauge!(BUILD_INFO, "1, labelled with chatpool's version");
    metrics::describe_gauge!(DB_POOL_MAX_SIZE, "Pool capacity (connection_limit - 1)");
    metrics::describe_gauge!(DB_POOL_SIZE, "Connections the pool holds");
    metrics::describe_gauge!(DB_POOL_AVAILABLE, "Idle pooled connections");
    metrics::describe_gauge!(DB_POOL_WAITING, "Callers waiting for a pooled connection");
    metrics::describe_histogram!(
        DB_POOL_WAIT_SECONDS,
        "Time spent waiting for a pooled connection"
    );
    metrics::describe_counter!(
        DB_POOL_TIMEOUTS_TOTAL,
        "Acquisitions that failed with db_busy"
    );
    metrics::describe_counter!(
        DB_TX_TIMEOUTS_TOTAL,
        "Transactions that failed with db_timeout"
    );
    metrics::describe_gauge!(WS_SESSIONS, "Open WebSocket sessions");
    metrics::describe_counter!(MESSAGES_TOTAL, "Messages stored");
    metrics::describe_histogram!(SEND_BATCH_SIZE, "Sends per group-commit batch");
    metrics::describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered");
    metrics::describe_gauge!(HTTP_REQUESTS_IN_FLIGHT, "HTTP requests being handled");
    metrics::describe_gauge!(LISTENER_UP, "1 while the LISTEN connection is up");
    metrics::describe_counter!(
        LISTENER_RECONNECTS_TOTAL,
        "LISTEN connection re-established"
    );
    metrics::describe_counter!(LISTENER_NOTIFICATIONS_TOTAL, "Notifications received");
    metrics::describe_counter!(
        LISTENER_FORGED_TOTAL,
        "Notifications dropped: not signed with the database's notification key, or sent by a role that cannot write chatpool's tables"
    );
    metrics::describe_counter!(
        LISTENER_CATCH_UP_MESSAGES_TOTAL,
        "Messages read back after a reconnect"
    );
}
