//! CORS for a browser CRM on another origin (SPEC §6, `CHATPOOL_CORS_ORIGINS`).
//!
//! Unset: no CORS headers at all (a browser on another origin is refused by
//! its own same-origin rule). A list: those origins exactly. `*`: any origin.
//! Credentials mode is never on: clients authenticate with a bearer token in
//! `Authorization`, not cookies. Preflights answer 200 with the methods of
//! the API and the `Authorization` and `Content-Type` headers, cached by the
//! browser for ten minutes; `Retry-After` and `x-request-id` are readable by
//! the page.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower::layer::util::Identity;
use tower::util::option_layer;
use tower::util::Either;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::config::CorsOrigins;

/// The CORS layer for `origins` (none when unset).
pub fn layer(origins: &CorsOrigins) -> Either<CorsLayer, Identity> {
    option_layer(build(origins))
}

fn build(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow = match origins {
        CorsOrigins::Off => return None,
        CorsOrigins::Any => AllowOrigin::from(Any),
        CorsOrigins::List(list) => AllowOrigin::list(
            list.iter()
                .map(|o| HeaderValue::from_str(o).expect("origins are checked at startup")),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
            .max_age(Duration::from_secs(600)),
    )
}
