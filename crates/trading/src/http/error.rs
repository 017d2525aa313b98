//! The API's one error type: every failure a handler can have, mapped to a
//! status code and a JSON body `{"error": "..."}`.
//!
//! Internal details (SQL errors, Redis messages) are logged here and never
//! sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db::DbError;

/// What a handler returns on failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid session (401).
    #[error(
        "a valid session is required: log in with POST /api/sessions and send `Authorization: Bearer <token>`"
    )]
    Unauthorized,
    /// The session is valid but not for this resource (403).
    #[error("this session may not act for that user")]
    Forbidden,
    /// Too many requests; retry after this many seconds (429).
    #[error("too many requests; retry after {0} s")]
    TooManyRequests(u64),
    /// Well formed, but the business rules refuse it (422), e.g. an order
    /// the balance cannot pay for.
    #[error("{0}")]
    Unprocessable(String),
    /// The resource does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The write conflicts with existing data (409).
    #[error("{0}")]
    Conflict(String),
    /// The request body is over the limit (413).
    #[error("request body too large")]
    PayloadTooLarge,
    /// A dependency (the database) is down or too slow: retry later (503).
    #[error("service temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug (500).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable(e) => tracing::warn!(
                error = format!("{e:#}"),
                "request failed: dependency unavailable"
            ),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed: internal error")
            }
            _ => {}
        }
        let mut response =
            (self.status(), Json(json!({ "error": self.to_string() }))).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::TooManyRequests(secs) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Conflict(_) => ApiError::Conflict("conflicts with existing data".into()),
            e if e.is_unavailable() => ApiError::Unavailable(e.into()),
            e => ApiError::Internal(e.into()),
        }
    }
}

impl From<larder::Error> for ApiError {
    fn from(e: larder::Error) -> Self {
        match e {
            // The loader is a database query: classify its error.
            larder::Error::Loader(inner) | larder::Error::Persist(inner) => match inner
                .downcast_ref::<DbError>()
            {
                Some(DbError::Conflict(_)) => {
                    ApiError::Conflict("conflicts with existing data".into())
                }
                Some(db) if db.is_unavailable() => ApiError::Unavailable(anyhow::Error::new(inner)),
                _ => ApiError::Internal(anyhow::Error::new(inner)),
            },
            // Only writes report Redis failures (reads fall back): a write
            // that needs Redis cannot be taken now.
            e @ larder::Error::Redis { .. } => ApiError::Unavailable(e.into()),
            // The family's hard timeout: the database is too slow right now.
            e @ larder::Error::Timeout { .. } => ApiError::Unavailable(e.into()),
            other => ApiError::Internal(other.into()),
        }
    }
}
