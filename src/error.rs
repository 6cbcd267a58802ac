//! The error every client sees: a SPEC code, an HTTP status and a human message.
//!
//! Handlers and WebSocket sessions return [`ApiError`]; its wire shape is
//! `{"error": {"code", "message"}}` over HTTP and an `error` frame over
//! WebSocket. Internal causes are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::db::DbError;
use crate::domain::Invalid;

/// A failure reported to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, a missing or invalid field or query parameter.
    #[error("{0}")]
    BadRequest(String),
    /// No, invalid or revoked token.
    #[error("missing, invalid or revoked token")]
    Unauthorized,
    /// Wrong username or password at login.
    #[error("wrong username or password")]
    InvalidCredentials,
    /// Authenticated, but the role is too low (or registration is closed).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing, or one the caller may not see.
    #[error("{0}")]
    NotFound(String),
    /// A unique value is taken.
    #[error("{0}")]
    Conflict(String),
    /// A request body over the size limit.
    #[error("request body is larger than 64 KiB")]
    TooLarge,
    /// The request body did not arrive within the time allowed (408: the
    /// SPEC names no code for it; chatpool's is `request_timeout`).
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    /// Too many attempts; try again after the given seconds.
    #[error("too many attempts, retry in {0} s")]
    RateLimited(u64),
    /// A count limit reached (SPEC §6, e.g. rooms joined per socket): 429
    /// `rate_limited`, with the message saying which.
    #[error("{0}")]
    LimitReached(String),
    /// Known path, wrong method (405, with `Allow`).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The process is shutting down and takes no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A capacity limit of this process (e.g. `CHATPOOL_MAX_SOCKETS`) is reached.
    #[error("{0}")]
    ServerBusy(String),
    /// The database failed in one of the ways the SPEC names.
    #[error(transparent)]
    Db(DbError),
    /// A bug or an unexpected failure; the cause is logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<DbError> for ApiError {
    /// A closed pool means the process is shutting down: no database failed.
    fn from(e: DbError) -> Self {
        match e {
            DbError::Closed => ApiError::ShuttingDown,
            e => ApiError::Db(e),
        }
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

/// Body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// `code` and `message` of an error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// One of the SPEC's codes.
    #[schema(example = "not_found")]
    pub code: &'static str,
    /// Human text, safe to show.
    pub message: String,
}

impl ApiError {
    /// The SPEC code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge => "too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::RateLimited(_) | ApiError::LimitReached(_) => "rate_limited",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::ServerBusy(_) => "server_busy",
            ApiError::Db(DbError::Other(_)) | ApiError::Internal(_) => "internal",
            ApiError::Db(e) => e.code(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited(_) | ApiError::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ShuttingDown | ApiError::ServerBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Db(DbError::Other(_)) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a client should wait before retrying, for 429 and 503.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited(secs) => Some(*secs),
            ApiError::LimitReached(_) => Some(5),
            ApiError::Db(DbError::Busy | DbError::Timeout) => Some(1),
            ApiError::Db(DbError::Unavailable(_) | DbError::Closed)
            | ApiError::ShuttingDown
            | ApiError::ServerBusy(_) => Some(5),
            _ => None,
        }
    }

    /// Message safe to send: internal details stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Db(DbError::Unavailable(_)) => "the database is unavailable".to_owned(),
            ApiError::Db(DbError::Other(_)) | ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The wire body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.public_message(),
            },
        }
    }

    fn log(&self) {
        match self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            ApiError::Db(DbError::Other(e)) => tracing::error!(error = ?e, "database error"),
            ApiError::Db(e) => tracing::warn!(error = %e, code = e.code(), "database failure"),
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// What any route may answer, signed in or not (SPEC §2).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum PublicErrors {
    /// `bad_request`: malformed JSON, a missing or invalid field or parameter.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `too_large`: a body over 64 KiB.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// `rate_limited`.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    RateLimited(ErrorBody),
    /// `internal`: a bug (logged, never described).
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `db_busy`, `db_timeout`, `db_unavailable`, `shutting_down`, `server_busy`.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(ErrorBody),
}

/// `unauthorized`, which the routes that need a token add to [`PublicErrors`].
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AuthErrors {
    /// `unauthorized`: no token, or an invalid, revoked or expired one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
}
